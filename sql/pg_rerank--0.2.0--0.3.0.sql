-- pg_rerank 0.2.0 -> 0.3.0
-- New: the score cache (pg_rerank.cache_size, pg_rerank.cache), pg_rerank_cache_reset();
-- an instruction argument on rerank(), rerank_score() and rerank_pairs().
-- Changed columns: pg_rerank_stats (cache_hits, cache_misses), pg_rerank_worker()
-- (cache_capacity, cache_evictions, cache_invalidations).
-- Functions whose arguments or result columns changed are dropped and created again:
-- views of your own that use rerank(), rerank_score(), rerank_pairs(), pg_rerank_worker()
-- or pg_rerank_stats must be dropped before the update and created again after it.
\echo Use "ALTER EXTENSION pg_rerank UPDATE TO '0.3.0'" to load this file. \quit

DROP VIEW pg_rerank_stats;
DROP FUNCTION pg_rerank_model_stats();
DROP FUNCTION pg_rerank_worker();
DROP FUNCTION rerank(text, text[], text, integer, boolean, real);
DROP FUNCTION rerank_score(text, text, text, boolean);
DROP FUNCTION rerank_pairs(text[], text[], text, boolean);

CREATE FUNCTION "rerank"(
	"query" TEXT,
	"docs" TEXT[],
	"model" TEXT DEFAULT NULL,
	"top_n" INT DEFAULT NULL,
	"raw" bool DEFAULT false,
	"min_score" real DEFAULT NULL,
	"instruction" TEXT DEFAULT NULL
) RETURNS TABLE (
	"idx" INT,
	"score" real
)
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_wrapper';

CREATE FUNCTION "rerank_score"(
	"query" TEXT,
	"doc" TEXT,
	"model" TEXT DEFAULT NULL,
	"raw" bool DEFAULT false,
	"instruction" TEXT DEFAULT NULL
) RETURNS real
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_score_wrapper';

CREATE FUNCTION "rerank_pairs"(
	"queries" TEXT[],
	"docs" TEXT[],
	"model" TEXT DEFAULT NULL,
	"raw" bool DEFAULT false,
	"instruction" TEXT DEFAULT NULL
) RETURNS real[]
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_pairs_wrapper';

CREATE FUNCTION "pg_rerank_cache_reset"() RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_rerank_cache_reset_wrapper';
REVOKE EXECUTE ON FUNCTION pg_rerank_cache_reset() FROM PUBLIC;

CREATE FUNCTION "pg_rerank_model_stats"() RETURNS TABLE (
	"model" TEXT,
	"device" TEXT,
	"worker_state" TEXT,
	"loads" bigint,
	"evictions" bigint,
	"requests" bigint,
	"interactive_requests" bigint,
	"bulk_requests" bigint,
	"pairs" bigint,
	"tokens" bigint,
	"truncated" bigint,
	"split_documents" bigint,
	"windows" bigint,
	"batches" bigint,
	"mean_batch_pairs" double precision,
	"shared_batches" bigint,
	"queue_wait_mean_ms" double precision,
	"queue_wait_p99_ms" double precision,
	"inference_mean_ms" double precision,
	"inference_p99_ms" double precision,
	"tokenize_mean_ms" double precision,
	"errors" bigint,
	"cancelled" bigint,
	"cache_hits" bigint,
	"cache_misses" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_rerank_model_stats_wrapper';

CREATE VIEW pg_rerank_stats AS SELECT * FROM pg_rerank_model_stats();
COMMENT ON VIEW pg_rerank_stats IS 'Per-model statistics of the pg_rerank background worker';

CREATE FUNCTION "pg_rerank_worker"() RETURNS TABLE (
	"state" TEXT,
	"pid" INT,
	"starts" bigint,
	"reloads" bigint,
	"device" TEXT,
	"queued_pairs" bigint,
	"models_loaded" INT,
	"models_mb" double precision,
	"failures_cached" INT,
	"reaped_slots" bigint,
	"cache_capacity" bigint,
	"cache_evictions" bigint,
	"cache_invalidations" bigint,
	"status" TEXT
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_rerank_worker_wrapper';
