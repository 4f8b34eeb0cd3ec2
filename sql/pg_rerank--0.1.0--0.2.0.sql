-- pg_rerank 0.1.0 -> 0.2.0
-- New: embed(), embed_batch(), rrf(), rerank_cascade(), rerank(..., min_score), the six-argument
-- rerank_topk / rerank_topk_scores (model, min_score), pg_rerank_progress.
-- Changed columns: pg_rerank_stats, pg_rerank_worker(), rerank_models().
-- Functions whose arguments or result columns changed are dropped and created again:
-- views of your own that use rerank(), rerank_models(), pg_rerank_worker() or
-- pg_rerank_stats must be dropped before the update and created again after it.
\echo Use "ALTER EXTENSION pg_rerank UPDATE TO '0.2.0'" to load this file. \quit

DROP VIEW pg_rerank_stats;
DROP FUNCTION pg_rerank_model_stats();
DROP FUNCTION pg_rerank_worker();
DROP FUNCTION rerank(text, text[], text, integer, boolean);
DROP FUNCTION rerank_models();

CREATE FUNCTION rrf(a anyarray, b anyarray, k integer DEFAULT 60)
RETURNS TABLE(id anyelement, score double precision)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT u.id, sum(1.0 / (k + u.r))::double precision AS score
    FROM (SELECT x, r FROM unnest(a) WITH ORDINALITY AS t(x, r)
          UNION ALL
          SELECT x, r FROM unnest(b) WITH ORDINALITY AS t(x, r)) AS u(id, r)
    WHERE u.id IS NOT NULL
    GROUP BY u.id
    ORDER BY score DESC, min(u.r), u.id
$$;
COMMENT ON FUNCTION rrf(anyarray, anyarray, integer) IS
'Reciprocal rank fusion of two ranked id lists (best first): each id scores the sum of 1 / (k + its 1-based rank) over the lists it is in; rows come best first.';

CREATE FUNCTION "embed"(
	"text" TEXT,
	"model" TEXT DEFAULT NULL,
	"kind" TEXT DEFAULT 'query'
) RETURNS real[]
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'embed_wrapper';

CREATE FUNCTION "embed_batch"(
	"texts" TEXT[],
	"model" TEXT DEFAULT NULL,
	"kind" TEXT DEFAULT 'document'
) RETURNS TABLE (
	"idx" INT, 
	"embedding" real[] 
)
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'embed_batch_wrapper';

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
	"cancelled" bigint 
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_rerank_model_stats_wrapper';

CREATE FUNCTION "pg_rerank_progress_raw"() RETURNS TABLE (
	"pid" INT, 
	"model" TEXT, 
	"priority" TEXT, 
	"state" TEXT, 
	"pairs_total" bigint, 
	"pairs_scored" bigint, 
	"queued_epoch" double precision, 
	"started_epoch" double precision 
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_rerank_progress_raw_wrapper';

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
	"status" TEXT 
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_rerank_worker_wrapper';

CREATE FUNCTION "rerank"(
	"query" TEXT,
	"docs" TEXT[],
	"model" TEXT DEFAULT NULL,
	"top_n" INT DEFAULT NULL,
	"raw" bool DEFAULT false,
	"min_score" real DEFAULT NULL
) RETURNS TABLE (
	"idx" INT, 
	"score" real 
)
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_wrapper';

CREATE FUNCTION "rerank_cascade"(
	"query" TEXT,
	"docs" TEXT[],
	"first_model" TEXT,
	"first_k" INT,
	"model" TEXT DEFAULT NULL,
	"top_n" INT DEFAULT NULL,
	"raw" bool DEFAULT false,
	"min_score" real DEFAULT NULL
) RETURNS TABLE (
	"idx" INT,
	"score" real
)
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_cascade_wrapper';

CREATE FUNCTION "rerank_models"() RETURNS TABLE (
	"name" TEXT, 
	"kind" TEXT, 
	"family" TEXT, 
	"max_length" INT, 
	"dimensions" INT, 
	"path" TEXT, 
	"loaded" bool 
)
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_models_wrapper';

CREATE FUNCTION "rerank_topk_sfunc"(
	"state" internal,
	"query" TEXT,
	"id" anyelement,
	"doc" TEXT,
	"k" INT,
	"model" TEXT,
	"min_score" real
) RETURNS internal
STABLE PARALLEL SAFE 
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_topk_sfunc_with_wrapper';

CREATE FUNCTION "rerank_topk_final"(
	"state" internal,
	"query" TEXT,
	"id" anyelement,
	"doc" TEXT,
	"k" INT,
	"_model" TEXT,
	"_min_score" real
) RETURNS anyarray
STABLE PARALLEL SAFE 
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_topk_final_with_wrapper';

CREATE FUNCTION "rerank_topk_scores_final"(
	"state" internal,
	"query" TEXT,
	"id" anyelement,
	"doc" TEXT,
	"k" INT,
	"_model" TEXT,
	"_min_score" real
) RETURNS real[]
STABLE PARALLEL SAFE 
LANGUAGE c
AS 'MODULE_PATHNAME', 'rerank_topk_scores_final_with_wrapper';

CREATE VIEW pg_rerank_stats AS SELECT * FROM pg_rerank_model_stats();
COMMENT ON VIEW pg_rerank_stats IS 'Per-model statistics of the pg_rerank background worker';
CREATE VIEW pg_rerank_progress AS
    SELECT pid, model, priority, state, pairs_total, pairs_scored,
           to_timestamp(queued_epoch) AS queued_at, to_timestamp(started_epoch) AS started_at
    FROM pg_rerank_progress_raw();
COMMENT ON VIEW pg_rerank_progress IS 'Requests waiting for or running in the pg_rerank background worker';

CREATE AGGREGATE rerank_topk(query text, id anyelement, doc text, k integer, model text, min_score real) (
    SFUNC = rerank_topk_sfunc,
    STYPE = internal,
    FINALFUNC = rerank_topk_final,
    FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = SHAREABLE,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE rerank_topk(text, anyelement, text, integer, text, real) IS
'rerank_topk with a model (NULL: pg_rerank.model) and the lowest score kept (NULL: none): fewer than k ids when fewer score that high.';

CREATE AGGREGATE rerank_topk_scores(query text, id anyelement, doc text, k integer, model text, min_score real) (
    SFUNC = rerank_topk_sfunc,
    STYPE = internal,
    FINALFUNC = rerank_topk_scores_final,
    FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = SHAREABLE,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE rerank_topk_scores(text, anyelement, text, integer, text, real) IS
'The scores matching rerank_topk with the same six arguments, best first.';
