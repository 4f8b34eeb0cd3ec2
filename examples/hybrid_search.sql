-- Hybrid retrieval reranked in SQL: pgvector ANN + full-text search, fused with
-- reciprocal rank fusion (k = 60), top 100 candidates reranked by the cross-encoder.
-- Parameters: :'query' (text) and :'query_emb' (a vector literal of the query embedding).
-- The HNSW scan returns at most hnsw.ef_search rows (default 40): set it to 100 or more
-- (scripts/load_corpus.py does so for its database) to get 100 dense candidates.
WITH dense AS (
    SELECT id, row_number() OVER (ORDER BY emb <=> :'query_emb'::vector) AS r
    FROM packages ORDER BY emb <=> :'query_emb'::vector LIMIT 100
), sparse AS (
    SELECT id, row_number() OVER (ORDER BY ts_rank_cd(tsv, q) DESC) AS r
    FROM packages, websearch_to_tsquery('english', :'query') q
    WHERE tsv @@ q ORDER BY ts_rank_cd(tsv, q) DESC LIMIT 100
), fused AS (
    SELECT id, sum(1.0 / (60 + r)) AS rrf
    FROM (SELECT * FROM dense UNION ALL SELECT * FROM sparse) u
    GROUP BY id ORDER BY rrf DESC LIMIT 100
), candidates AS (
    SELECT p.id, p.body, f.rrf FROM fused f JOIN packages p USING (id)
)
SELECT r.rank, c.id, round(r.score::numeric, 4) AS score, left(c.body, 70) AS description
FROM (SELECT rerank_topk(:'query', id, body, 10) AS ids,
             rerank_topk_scores(:'query', id, body, 10) AS scores
      FROM candidates) t,
     unnest(t.ids, t.scores) WITH ORDINALITY AS r(id, score, rank)
JOIN candidates c ON c.id = r.id
ORDER BY r.rank;
