-- The hybrid query of examples/hybrid_search.sql with a diversified top 10: the same
-- candidates (pgvector HNSW + full text, fused with rrf()) and the same cross-encoder
-- scores, then diversify() picks 10 of the 100 by maximal marginal relevance, so that
-- near-copies (the four SIXEL viewers of "image viewer for the terminal") do not fill the
-- page. Rows come in the order picked; the score is the cross-encoder's. Parameter:
-- :'query' (text). lambda 1 would give examples/hybrid_search.sql's top 10; a sixth
-- argument (duplicate_threshold, e.g. 0.9) drops near-copies outright.
-- diversify(id, score, embedding real[], k [, lambda, duplicate_threshold]): a pgvector
-- column is passed as emb::real[]; ORDER BY inside the call fixes the order in which
-- ties go. See docs/diversity.md.
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
    SELECT p.id, p.body, p.emb
    FROM dense, sparse, rrf(dense.ids, sparse.ids) f
    JOIN packages p ON p.id = f.id
    ORDER BY f.score DESC
    LIMIT 100
), reranked AS (
    -- Every candidate's cross-encoder score, best first (the same model run as
    -- examples/hybrid_search.sql, only k = 100).
    SELECT r.id, r.score, r.ord
    FROM (SELECT rerank_topk(:'query', id, body, 100) AS ids,
                 rerank_topk_scores(:'query', id, body, 100) AS scores
          FROM candidates) t,
         unnest(t.ids, t.scores) WITH ORDINALITY AS r(id, score, ord)
), picked AS (
    -- MMR: lambda 0.7 (the default, docs/diversity.md), cosine of the pgvector embeddings.
    SELECT diversify(r.id, r.score, c.emb::real[], 10 ORDER BY r.ord) AS ids
    FROM reranked r JOIN candidates c ON c.id = r.id
)
SELECT d.rank, c.id, round(r.score::numeric, 4) AS score, left(c.body, 70) AS description
FROM picked, unnest(picked.ids) WITH ORDINALITY AS d(id, rank)
JOIN reranked r ON r.id = d.id
JOIN candidates c ON c.id = d.id
ORDER BY d.rank;
