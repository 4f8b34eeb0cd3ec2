-- rerank_cascade: a fast model on every document, the strong one on the best first_k.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
SET pg_rerank.model = 'minilm-debian';

CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE TEMP TABLE c (q text, docs text[]);
INSERT INTO c VALUES ('lossless data compression library', ARRAY[
    'GNU Chess is a chess-playing program',
    'zlib is a library implementing the deflate compression method found in gzip',
    NULL,
    'XZ Utils: free general-purpose data compression software with a high compression ratio',
    'a collection of desktop wallpapers',
    'bzip2 is a freely available high-quality block-sorting file compressor',
    'liblz4: fast lossless compression algorithm library',
    'the GNU C library',
    'Zstandard: a fast lossless compression algorithm']);

-- The same rows as the two stages run by hand: rerank with the int8 model, keep the best
-- 4, rerank those with the fp32 model, and map the positions back.
WITH cascade AS (
    SELECT r.idx, r.score FROM c, rerank_cascade(c.q, c.docs, 'minilm-debian:int8', 4) r
), first AS (
    SELECT array_agg(f.idx ORDER BY f.idx) AS keep
    FROM c, rerank(c.q, c.docs, 'minilm-debian:int8', top_n => 4) f
), by_hand AS (
    SELECT first.keep[s.idx] AS idx, s.score
    FROM c, first, rerank(c.q, ARRAY(SELECT c.docs[i] FROM unnest(first.keep) i)) s
)
SELECT (SELECT count(*) FROM cascade) AS rows,
       (SELECT array_agg(idx ORDER BY score DESC) FROM cascade)
           = (SELECT array_agg(idx ORDER BY score DESC) FROM by_hand) AS same_order,
       NOT EXISTS (SELECT * FROM cascade EXCEPT SELECT * FROM by_hand) AS same_scores;

-- The best documents of the cascade, with top_n and min_score on the strong scores.
SELECT r.idx, left(c.docs[r.idx], 30) AS doc
FROM c, rerank_cascade(c.q, c.docs, 'minilm-debian:int8', 4, top_n => 2) r;
SELECT count(*) AS above_half
FROM c, rerank_cascade(c.q, c.docs, 'minilm-debian:int8', 8, min_score => 0.5) r;
-- first_k at least the number of documents: the strong model ranks them all, like rerank().
SELECT (SELECT array_agg(idx) FROM c, rerank_cascade(c.q, c.docs, 'minilm-debian:int8', 100))
     = (SELECT array_agg(idx) FROM c, rerank(c.q, c.docs)) AS same_as_rerank;
-- raw => true: strong logits.
SELECT bool_and(r.score = s.score) AS raw_logits
FROM c, rerank_cascade(c.q, c.docs, 'minilm-debian:int8', 3, raw => true) r,
     LATERAL rerank_score(c.q, c.docs[r.idx], raw => true) s(score);

-- Empty and NULL inputs.
SELECT count(*) FROM rerank_cascade('q', ARRAY[]::text[], 'minilm-debian:int8', 3);
SELECT count(*) FROM rerank_cascade('q', NULL, 'minilm-debian:int8', 3);
SELECT count(*) FROM rerank_cascade('q', ARRAY[NULL, NULL]::text[], 'minilm-debian:int8', 3);
SELECT pg_temp.err($$SELECT * FROM rerank_cascade(NULL, ARRAY['a'], 'minilm-debian:int8', 3)$$);
SELECT pg_temp.err($$SELECT * FROM rerank_cascade('q', ARRAY['a'], NULL, 3)$$);
SELECT pg_temp.err($$SELECT * FROM rerank_cascade('q', ARRAY['a'], 'minilm-debian:int8', NULL)$$);
SELECT pg_temp.err($$SELECT * FROM rerank_cascade('q', ARRAY['a'], 'minilm-debian:int8', 0)$$);
SELECT pg_temp.err($$SELECT * FROM rerank_cascade('q', ARRAY['a'], 'minilm-debian:int8', 3, top_n => -1)$$);
SELECT pg_temp.err($$SELECT * FROM rerank_cascade('q', ARRAY['a'], 'no-such-model', 3)$$);
SELECT pg_temp.err($$SELECT * FROM rerank_cascade('q', ARRAY['a'], 'minilm-debian:int8', 3, model => 'all-minilm-l6-v2')$$);
