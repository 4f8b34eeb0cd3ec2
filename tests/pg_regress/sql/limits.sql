-- Limits that protect the server belong to the superuser: an ordinary user can neither
-- raise them in a session nor change the worker's, and a bulk call is capped.
CREATE EXTENSION IF NOT EXISTS pg_rerank;
CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE ROLE rerank_limits_user;
GRANT pg_read_all_settings TO rerank_limits_user;
SET ROLE rerank_limits_user;
-- Session settings that take memory or cores: superuser only (42501).
SELECT pg_temp.err($$SET pg_rerank.threads = 64$$);
SELECT pg_temp.err($$SET pg_rerank.max_batch_tokens = 1048576$$);
SELECT pg_temp.err($$SET pg_rerank.max_batch_pairs = 4096$$);
SELECT pg_temp.err($$SET pg_rerank.execution = backend$$);
SELECT pg_temp.err($$SET pg_rerank.max_docs = 10000000$$);
SELECT pg_temp.err($$SET pg_rerank.max_pairs = 100000000$$);
SELECT pg_temp.err($$SET pg_rerank.model_dir = '/tmp'$$);
-- The worker's settings come from the server configuration (55P02).
SELECT pg_temp.err($$SET pg_rerank.worker_threads = 256$$);
SELECT pg_temp.err($$SET pg_rerank.worker_memory = '100GB'$$);
SELECT pg_temp.err($$SET pg_rerank.max_queued_pairs = 10000000$$);
SELECT pg_temp.err($$SET pg_rerank.bulk_share = 100$$);
SELECT pg_temp.err($$SET pg_rerank.onnxruntime = '/tmp/lib.so'$$);
SELECT pg_temp.err($$SET pg_rerank.cache_size = '1GB'$$);
-- A user may lower a session's priority, choose a model and a queue timeout, and turn
-- the score cache off.
SELECT pg_temp.err($$SET pg_rerank.priority = bulk$$);
SELECT pg_temp.err($$SET pg_rerank.priority = interactive$$);
SELECT pg_temp.err($$SET pg_rerank.model = 'tiny/bert'$$);
SELECT pg_temp.err($$SET pg_rerank.queue_timeout = '1s'$$);
SELECT pg_temp.err($$SET pg_rerank.cache = off$$);
-- pg_rerank_stats_reset() and pg_rerank_cache_reset() are the superuser's.
SELECT pg_temp.err($$SELECT pg_rerank_stats_reset()$$);
SELECT pg_temp.err($$SELECT pg_rerank_cache_reset()$$);
RESET ROLE;
DROP OWNED BY rerank_limits_user;
DROP ROLE rerank_limits_user;

-- rerank_pairs is capped by pg_rerank.max_pairs (54000).
SET pg_rerank.max_pairs = 3;
SELECT pg_temp.err($$SELECT rerank_pairs(array_fill('q'::text, ARRAY[4]), array_fill('d'::text, ARRAY[4]))$$);
SELECT cardinality(rerank_pairs(array_fill('q'::text, ARRAY[3]), array_fill('d'::text, ARRAY[3]), model => 'tiny/bert'));
RESET pg_rerank.max_pairs;

-- NULL pairs, an empty array, and a bulk session still score.
SET pg_rerank.priority = bulk;
SELECT rerank_pairs(ARRAY['q', NULL], ARRAY['d', 'e'], model => 'tiny/bert') IS NOT NULL AS scored;
SELECT rerank_pairs(ARRAY[]::text[], ARRAY[]::text[]);
RESET pg_rerank.priority;

-- Nothing is left waiting in the worker.
SELECT count(*) AS waiting FROM pg_rerank_progress;
SELECT queued_pairs FROM pg_rerank_worker();
