-- Every bad input gets an error with its SQLSTATE, and the backend lives on.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
SET pg_rerank.model = 'minilm-debian';

CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT pg_temp.err($$SELECT * FROM rerank(NULL, ARRAY['a'])$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], top_n => 0)$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], model => 'no-such-model')$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], model => '../data')$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], model => '/etc')$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], model => 'tiny')$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], model => 'tiny/qwen3/../bert')$$);

-- Too many documents.
SET pg_rerank.max_docs = 2;
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a', 'b', 'c'])$$);
SELECT pg_temp.err($$SELECT rerank_topk('q', i, 'doc', 1) FROM generate_series(1, 3) i$$);
RESET pg_rerank.max_docs;

-- rerank_topk arguments.
SELECT pg_temp.err($$SELECT rerank_topk('q', i, 'doc', 0) FROM generate_series(1, 3) i$$);
SELECT pg_temp.err($$SELECT rerank_topk('q', i, 'doc', NULL) FROM generate_series(1, 3) i$$);
SELECT pg_temp.err($$SELECT rerank_topk(NULL, i, 'doc', 1) FROM generate_series(1, 3) i$$);
SELECT pg_temp.err($$SELECT rerank_topk('q' || i, i, 'doc', 1) FROM generate_series(1, 3) i$$);

-- No model selected, and model_dir unset.
RESET pg_rerank.model;
SET pg_rerank.model = '';
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'])$$);
SET pg_rerank.model = 'minilm-debian';
SET pg_rerank.model_dir = '';
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'])$$);
SELECT pg_temp.err($$SELECT * FROM rerank_models()$$);
RESET pg_rerank.model_dir;

-- Only a superuser may point the server at model files.
CREATE ROLE rerank_regress_user;
SET ROLE rerank_regress_user;
SELECT pg_temp.err($$SET pg_rerank.model_dir = '/tmp'$$);
SELECT pg_temp.err($$SET pg_rerank.onnxruntime = '/tmp/lib.so'$$);
RESET ROLE;
DROP ROLE rerank_regress_user;

-- The backend is still fine.
SELECT count(*) FROM rerank('q', ARRAY['a', 'b']);

-- rerank_pairs needs arrays of the same length; variants must exist.
SELECT pg_temp.err($$SELECT rerank_pairs(ARRAY['q', 'q'], ARRAY['a'])$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], model => 'minilm-debian:fp16')$$);
SELECT pg_temp.err($$SELECT * FROM rerank('q', ARRAY['a'], model => 'minilm-debian:../x')$$);
