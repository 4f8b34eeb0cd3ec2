-- Hybrid retrieval reranked in SQL, in one statement: the query text is embedded in the
-- database (embed() with all-MiniLM-L6-v2, the bi-encoder that embedded the corpus),
-- pgvector's HNSW index and full-text search each return their top 100, rrf() fuses the
-- two lists (reciprocal rank fusion, k = 60), and the cross-encoder reranks the fused top
-- 100. Parameter: :'query' (text).
-- The candidates are the best recipe of docs/recipes.md for 100 pairs: full text matches
-- any of the query's words (an OR of its lexemes; websearch_to_tsquery's AND finds almost
-- nothing for a query of several words), and the dense list makes up for ts_rank_cd's lack
-- of IDF. The query vector is a scalar subquery, computed once (inline, embed() would run
-- for every row returned).
-- The HNSW scan returns at most hnsw.ef_search rows (default 40): set it to 100 or more
-- (scripts/load_corpus.py does so for its database) to get 100 dense candidates.
WITH dense AS (
    SELECT array_agg(id ORDER BY dist) AS ids
    FROM (SELECT id, emb <=> (SELECT embed(:'query', 'all-minilm-l6-v2')::vector) AS dist
          FROM packages
          ORDER BY emb <=> (SELECT embed(:'query', 'all-minilm-l6-v2')::vector)
          LIMIT 100) d
), sparse AS (
    SELECT array_agg(id ORDER BY rank DESC, id) AS ids
    FROM (SELECT id, ts_rank_cd(tsv, q) AS rank
          FROM packages,
               (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery AS q
                FROM unnest(to_tsvector('english', :'query'))) words
          WHERE tsv @@ q
          ORDER BY rank DESC, id
          LIMIT 100) s
), candidates AS (
    SELECT p.id, p.body
    FROM dense, sparse, rrf(dense.ids, sparse.ids) f
    JOIN packages p ON p.id = f.id
    ORDER BY f.score DESC
    LIMIT 100
)
SELECT r.rank, c.id, round(r.score::numeric, 4) AS score, left(c.body, 70) AS description
FROM (SELECT rerank_topk(:'query', id, body, 10) AS ids,
             rerank_topk_scores(:'query', id, body, 10) AS scores
      FROM candidates) t,
     unnest(t.ids, t.scores) WITH ORDINALITY AS r(id, score, rank)
JOIN candidates c ON c.id = r.id
ORDER BY r.rank;
