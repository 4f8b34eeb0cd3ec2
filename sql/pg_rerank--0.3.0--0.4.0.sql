-- pg_rerank 0.3.0 -> 0.4.0
\echo Use "ALTER EXTENSION pg_rerank UPDATE TO '0.4.0'" to load this file. \quit

-- issue 18: pg_rerank_stages() (where the session's last statement spent its time) and
-- the setting pg_rerank.chunk_select (window preselection; a setting, no SQL object).
CREATE FUNCTION "pg_rerank_stages"() RETURNS TABLE (
	"stage" TEXT,
	"calls" bigint,
	"items" bigint,
	"ms" double precision,
	"detail" TEXT
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_rerank_stages_wrapper';
