-- embed() and embed_batch() on the sentence-transformers bi-encoder all-MiniLM-L6-v2.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
SET pg_rerank.embedding_model = 'all-minilm-l6-v2';

CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE FUNCTION pg_temp.cosine(a real[], b real[]) RETURNS float8 LANGUAGE sql AS $$
    SELECT sum(x::float8 * y) / sqrt(sum(x::float8 * x) * sum(y::float8 * y)) FROM unnest(a, b) u(x, y)
$$;

-- 384 dimensions, unit length.
SELECT array_length(e, 1) AS dims, round(sqrt((SELECT sum(x::float8 * x) FROM unnest(e) x))::numeric, 4) AS norm
FROM (SELECT embed('zlib compression library') AS e) s;

-- NULL text gives NULL (even with an unknown model: nothing is loaded).
SELECT embed(NULL) IS NULL AS null_in_null_out, embed(NULL, 'no-such-model') IS NULL AS not_loaded;

-- The model argument names the same model as the setting; this model has no prompts,
-- so a query and a document of the same text get the same vector.
SELECT pg_temp.cosine(embed('zlib'), embed('zlib', 'all-minilm-l6-v2')) > 0.99999 AS same_model,
       pg_temp.cosine(embed('zlib', kind => 'query'), embed('zlib', kind => 'document')) > 0.99999 AS same_kind;

-- Related texts are closer than unrelated ones.
SELECT pg_temp.cosine(embed('compression library'),
                      embed('zlib is a library implementing the deflate compression method'))
     > pg_temp.cosine(embed('compression library'), embed('GNU Chess is a chess-playing program')) AS closer;

-- embed_batch: a row per element in order, NULL for a NULL element, the vectors of embed().
WITH t(texts) AS (SELECT ARRAY['GNU Chess', NULL, 'zlib compression', ''])
SELECT b.idx, b.embedding IS NULL AS is_null, array_length(b.embedding, 1) AS dims,
       round(pg_temp.cosine(b.embedding, embed(t.texts[b.idx], kind => 'document'))::numeric, 4) AS cos
FROM t, embed_batch(t.texts) b ORDER BY b.idx;
SELECT count(*) FROM embed_batch(NULL);
SELECT count(*) FROM embed_batch(ARRAY[]::text[]);
SELECT count(*) FROM embed_batch(ARRAY[NULL, NULL]::text[]) WHERE embedding IS NULL;

-- Bad arguments.
SELECT pg_temp.err($$SELECT embed('x', kind => 'passage')$$);
SELECT pg_temp.err($$SELECT embed('x', kind => NULL)$$);
SELECT pg_temp.err($$SELECT * FROM embed_batch(ARRAY['x'], kind => 'Query')$$);
SELECT pg_temp.err($$SELECT embed('x', 'no-such-model')$$);
SELECT pg_temp.err($$SELECT embed('x', '../etc')$$);
SELECT pg_temp.err($$SELECT embed('x', 'tiny')$$);

-- A model of the other kind: a cross-encoder cannot embed, a bi-encoder cannot rerank.
SELECT pg_temp.err($$SELECT embed('x', 'minilm-debian')$$);
SELECT pg_temp.err($$SELECT * FROM embed_batch(ARRAY['x'], 'minilm-debian:int8')$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], model => 'all-minilm-l6-v2')$$);
SELECT pg_temp.err($$SELECT rerank_pairs(ARRAY['q'], ARRAY['a'], model => 'all-minilm-l6-v2')$$);

-- At most pg_rerank.max_pairs texts a call.
SET pg_rerank.max_pairs = 2;
SELECT pg_temp.err($$SELECT * FROM embed_batch(ARRAY['a', 'b', 'c'])$$);
RESET pg_rerank.max_pairs;

-- No model selected.
RESET pg_rerank.embedding_model;
SHOW pg_rerank.embedding_model;
SELECT pg_temp.err($$SELECT embed('x')$$);
SELECT pg_temp.err($$SELECT * FROM embed_batch(ARRAY['x'])$$);

-- The kind of each model.
SELECT name, kind, max_length, dimensions FROM rerank_models() ORDER BY name;

-- Volatility: embeddings depend on the model files, so STABLE, and safe in parallel workers.
SELECT proname, provolatile, proparallel, proisstrict FROM pg_proc
WHERE proname IN ('embed', 'embed_batch') ORDER BY proname;
