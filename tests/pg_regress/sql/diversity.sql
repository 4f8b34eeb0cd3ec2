-- diversify(): maximal marginal relevance over (id, score, embedding) rows; no model.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
-- 1 and 2 are near-copies (cosine 0.995), 3 points elsewhere, 4 is opposite 1 and scores
-- far below. Relevance only (lambda 1) keeps the score order; lambda 0.7 moves the copy
-- behind 3; the default lambda is 0.7.
CREATE TEMP TABLE cands(id int, score real, emb real[], body text);
INSERT INTO cands VALUES
    (1, 3.0, '{1, 0}', 'SIXEL image viewer for the terminal'),
    (2, 2.9, '{0.995, 0.1}', 'sixel image viewer for the terminal (plugins)'),
    (3, 2.8, '{0, 1}', 'command line JSON processor'),
    (4, 0.0, '{-1, 0}', 'a game of chess');
SELECT diversify(id, score, emb, 4, 1.0, NULL) FROM cands;
SELECT diversify(id, score, emb, 4, 0.7, NULL) FROM cands;
SELECT diversify(id, score, emb, 4) FROM cands;
SELECT diversify(id, score, emb, 2) FROM cands;
-- The scores' scale does not matter (min-max normalised within the candidates).
SELECT diversify(id, (score * 100 - 7)::real, emb, 4) FROM cands;
-- Near-duplicate collapse: 2 is dropped, so fewer than k ids come back.
SELECT diversify(id, score, emb, 4, 1.0, 0.9) FROM cands;
-- Without embeddings: the texts' word bigrams (2 shares 5 of 6 with 1).
SELECT diversify(id, score, body, 4, 0.3, NULL) FROM cands;
SELECT diversify(id, score, body, 4, 1.0, 0.6) FROM cands;
SELECT diversify(id, score, body, 4) FROM cands;
-- Any id type; rows with a NULL id or score are skipped; no row gives NULL.
SELECT diversify('doc' || id, score, emb, 2) FROM cands;
SELECT diversify(id, CASE WHEN id = 1 THEN NULL ELSE score END, emb, 4) FROM cands;
SELECT diversify(id, score, emb, 4) FROM cands WHERE false;
-- A lambda of NULL is the default.
SELECT diversify(id, score, emb, 4, NULL, NULL) FROM cands;
-- Per group, with GROUP BY.
SELECT id % 2 AS parity, diversify(id, score, emb, 1) FROM cands GROUP BY 1 ORDER BY 1;
-- Errors.
SELECT diversify(id, score, emb, 0) FROM cands;
SELECT diversify(id, score, emb, NULL) FROM cands;
SELECT diversify(id, score, emb, 4, 1.5, NULL) FROM cands;
SELECT diversify(id, score, CASE WHEN id = 2 THEN '{1, 0, 0}' ELSE emb END, 4) FROM cands;
SELECT diversify(id, score, CASE WHEN id = 2 THEN NULL ELSE emb END, 4) FROM cands;
SELECT diversify(id, score, CASE WHEN id = 2 THEN '{1, NULL}' ELSE emb END, 4) FROM cands;
SELECT diversify(id, score, CASE WHEN id = 1 THEN '{}' ELSE emb END, 4) FROM cands;
SELECT diversify(id, CASE WHEN id = 2 THEN 'NaN' ELSE score END, emb, 4) FROM cands;
SELECT diversify(id, score, emb, id) FROM cands;
