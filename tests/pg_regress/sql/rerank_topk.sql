-- rerank_topk and rerank_topk_scores over candidate subqueries, for several id types.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
SET pg_rerank.model = 'minilm-debian';

CREATE TEMP TABLE pkg (id int, body text);
INSERT INTO pkg VALUES
    (10, 'GNU Chess is a chess-playing program'),
    (20, 'zlib is a library implementing the deflate compression method found in gzip'),
    (30, 'a collection of desktop wallpapers'),
    (40, 'XZ Utils: free general-purpose data compression software with a high compression ratio'),
    (50, NULL);

-- Best 2 ids with their scores, in one statement, one model run.
SELECT rerank_topk('data compression', id, body, 2) AS ids,
       rerank_topk_scores('data compression', id, body, 2)::numeric(6,4)[] AS scores
FROM pkg;

-- Every id type: int, bigint, text, uuid.
SELECT rerank_topk('data compression', id::bigint, body, 2) FROM pkg;
SELECT rerank_topk('data compression', 'pkg-' || id, body, 2) FROM pkg;
SELECT rerank_topk('data compression', ('00000000-0000-0000-0000-0000000000' || id)::uuid, body, 2) FROM pkg;

-- k larger than the candidates returns them all; no rows gives NULL.
SELECT rerank_topk('data compression', id, body, 100) FROM pkg;
SELECT rerank_topk('data compression', id, body, 3) IS NULL AS no_rows FROM pkg WHERE false;

-- Per group: one rerank per query.
SELECT q, rerank_topk(q, id, body, 1)
FROM pkg, (VALUES ('chess'), ('wallpaper')) v(q)
GROUP BY q ORDER BY q;

-- Joining the ranked ids back to their rows.
SELECT r.rank, p.id, left(p.body, 30)
FROM (SELECT rerank_topk('data compression', id, body, 3) AS ids FROM pkg) t,
     unnest(t.ids) WITH ORDINALITY AS r(id, rank)
JOIN pkg p ON p.id = r.id
ORDER BY r.rank;

-- With a model and a lowest score kept: fewer than k ids when fewer score that high.
SELECT rerank_topk('data compression', id, body, 3, 'minilm-debian', 0.5),
       rerank_topk_scores('data compression', id, body, 3, 'minilm-debian', 0.5) IS NOT NULL AS scored
FROM pkg;
SELECT rerank_topk('data compression', id, body, 3, NULL, NULL) = rerank_topk('data compression', id, body, 3)
       AS same_as_four_arguments
FROM pkg;
SELECT rerank_topk('data compression', id, body, 3, NULL, 2.0) FROM pkg;
-- terse: the detail names the model directory, which differs between checkouts.
\set VERBOSITY terse
SELECT rerank_topk('data compression', id, body, 3, 'no-such-model', NULL) FROM pkg;
\set VERBOSITY default
SELECT rerank_topk('data compression', id, body, 3, NULL, CASE WHEN id = 10 THEN 0.1 END) FROM pkg;
