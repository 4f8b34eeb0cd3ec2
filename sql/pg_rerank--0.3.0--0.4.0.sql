-- pg_rerank 0.3.0 -> 0.4.0
\echo Use "ALTER EXTENSION pg_rerank UPDATE TO '0.4.0'" to load this file. \quit

-- issue 19: diversify() (MMR and near-duplicate collapse) and retrieval metrics
-- (ndcg_at_k, recall_at_k, precision_at_k, reciprocal_rank).

CREATE FUNCTION "diversify_sfunc"(
	"state" internal,
	"id" anyelement,
	"score" real,
	"embedding" real[],
	"k" INT
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diversify_sfunc_wrapper';

CREATE FUNCTION "diversify_sfunc"(
	"state" internal,
	"id" anyelement,
	"score" real,
	"embedding" real[],
	"k" INT,
	"lambda" real,
	"duplicate_threshold" real
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diversify_sfunc_with_wrapper';

CREATE FUNCTION "diversify_sfunc"(
	"state" internal,
	"id" anyelement,
	"score" real,
	"doc" TEXT,
	"k" INT
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diversify_sfunc_text_wrapper';

CREATE FUNCTION "diversify_sfunc"(
	"state" internal,
	"id" anyelement,
	"score" real,
	"doc" TEXT,
	"k" INT,
	"lambda" real,
	"duplicate_threshold" real
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diversify_sfunc_text_with_wrapper';

CREATE FUNCTION "diversify_final"(
	"state" internal,
	"_id" anyelement,
	"_score" real,
	"_embedding" real[],
	"_k" INT
) RETURNS anyarray
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diversify_final_wrapper';

CREATE FUNCTION "diversify_final"(
	"state" internal,
	"_id" anyelement,
	"_score" real,
	"_embedding" real[],
	"_k" INT,
	"_lambda" real,
	"_duplicate_threshold" real
) RETURNS anyarray
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diversify_final_with_wrapper';

CREATE FUNCTION "diversify_final"(
	"state" internal,
	"_id" anyelement,
	"_score" real,
	"_doc" TEXT,
	"_k" INT
) RETURNS anyarray
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diversify_final_text_wrapper';

CREATE FUNCTION "diversify_final"(
	"state" internal,
	"_id" anyelement,
	"_score" real,
	"_doc" TEXT,
	"_k" INT,
	"_lambda" real,
	"_duplicate_threshold" real
) RETURNS anyarray
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diversify_final_text_with_wrapper';

CREATE AGGREGATE diversify(id anyelement, score real, embedding real[], k integer) (
    SFUNC = diversify_sfunc,
    STYPE = internal,
    FINALFUNC = diversify_final,
    FINALFUNC_EXTRA,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE diversify(anyelement, real, real[], integer) IS
'Picks k rows by maximal marginal relevance (relevance: score, min-max normalised; similarity: cosine of the embeddings; lambda 0.7) and returns their ids in the order picked. A pgvector column is passed as embedding::real[].';

CREATE AGGREGATE diversify(id anyelement, score real, embedding real[], k integer, lambda real, duplicate_threshold real) (
    SFUNC = diversify_sfunc,
    STYPE = internal,
    FINALFUNC = diversify_final,
    FINALFUNC_EXTRA,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE diversify(anyelement, real, real[], integer, real, real) IS
'diversify with lambda (1 = relevance only, 0 = diversity only; NULL: 0.7) and a similarity at or above which a row is dropped as a near-duplicate of one picked before (NULL: none).';

CREATE AGGREGATE diversify(id anyelement, score real, doc text, k integer) (
    SFUNC = diversify_sfunc,
    STYPE = internal,
    FINALFUNC = diversify_final,
    FINALFUNC_EXTRA,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE diversify(anyelement, real, text, integer) IS
'diversify without embeddings: the similarity of two rows is the Jaccard similarity of their texts'' word bigrams.';

CREATE AGGREGATE diversify(id anyelement, score real, doc text, k integer, lambda real, duplicate_threshold real) (
    SFUNC = diversify_sfunc,
    STYPE = internal,
    FINALFUNC = diversify_final,
    FINALFUNC_EXTRA,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE diversify(anyelement, real, text, integer, real, real) IS
'diversify on texts, with lambda (NULL: 0.7) and a near-duplicate threshold (NULL: none).';

CREATE FUNCTION "pg_rerank_eval_sfunc"(
	"state" internal,
	"doc_id" TEXT,
	"score" double precision,
	"grade" double precision,
	"k" INT
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_rerank_eval_sfunc_wrapper';

CREATE FUNCTION "pg_rerank_eval_sfunc"(
	"state" internal,
	"doc_id" TEXT,
	"score" double precision,
	"grade" double precision
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_rerank_eval_sfunc_rr_wrapper';

CREATE FUNCTION "ndcg_at_k_final"(
	"state" internal
) RETURNS double precision
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'ndcg_at_k_final_wrapper';

CREATE FUNCTION "recall_at_k_final"(
	"state" internal
) RETURNS double precision
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'recall_at_k_final_wrapper';

CREATE FUNCTION "precision_at_k_final"(
	"state" internal
) RETURNS double precision
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'precision_at_k_final_wrapper';

CREATE FUNCTION "reciprocal_rank_final"(
	"state" internal
) RETURNS double precision
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'reciprocal_rank_final_wrapper';

CREATE AGGREGATE ndcg_at_k(doc_id text, score double precision, grade double precision, k integer) (
    SFUNC = pg_rerank_eval_sfunc,
    STYPE = internal,
    FINALFUNC = ndcg_at_k_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE ndcg_at_k(text, double precision, double precision, integer) IS
'nDCG@k of one query (trec_eval ndcg_cut_k: gain = grade, log2 discount, ties by doc_id descending) over its run FULL JOINed to its qrels: score NULL = not retrieved, grade NULL = not judged (0). NULL when the query has no retrieved or no judged row.';

CREATE AGGREGATE recall_at_k(doc_id text, score double precision, grade double precision, k integer) (
    SFUNC = pg_rerank_eval_sfunc,
    STYPE = internal,
    FINALFUNC = recall_at_k_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE recall_at_k(text, double precision, double precision, integer) IS
'Recall@k of one query (trec_eval recall_k): relevant (grade > 0) documents in the top k over the relevant documents judged; rows as for ndcg_at_k.';

CREATE AGGREGATE precision_at_k(doc_id text, score double precision, grade double precision, k integer) (
    SFUNC = pg_rerank_eval_sfunc,
    STYPE = internal,
    FINALFUNC = precision_at_k_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE precision_at_k(text, double precision, double precision, integer) IS
'Precision@k of one query (trec_eval P_k): relevant (grade > 0) documents in the top k over k; rows as for ndcg_at_k.';

CREATE AGGREGATE reciprocal_rank(doc_id text, score double precision, grade double precision) (
    SFUNC = pg_rerank_eval_sfunc,
    STYPE = internal,
    FINALFUNC = reciprocal_rank_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE reciprocal_rank(text, double precision, double precision) IS
'1 / the rank of the first relevant (grade > 0) document of one query, 0 when none is retrieved (trec_eval recip_rank; avg() over queries is MRR); rows as for ndcg_at_k.';
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
