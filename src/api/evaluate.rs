//! Retrieval metrics in SQL: the aggregates `ndcg_at_k(doc_id, score, grade, k)`,
//! `recall_at_k`, `precision_at_k` (same arguments) and `reciprocal_rank(doc_id, score,
//! grade)`, over the rows of one query of a run FULL JOINed to its qrels (the engine's
//! `evaluate` module: trec_eval's conventions). Pure arithmetic: IMMUTABLE.

use super::diversity::input_error;
use super::topk::{agg_context, check_k};
use crate::error::report;
use pg_rerank_engine::evaluate::{evaluate, Judged, Metric};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{Internal, PgMemoryContexts, PgSqlErrorCode};

struct EvalState {
    /// None for reciprocal_rank.
    k: Option<i32>,
    rows: Vec<(String, Option<f64>, Option<f64>)>,
}

fn transition(
    state: Internal,
    doc_id: Option<&str>,
    score: Option<f64>,
    grade: Option<f64>,
    k: Option<Option<i32>>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    let ctx = agg_context(fcinfo, "pg_rerank_eval_sfunc");
    let k = k.map(check_k).transpose()?;
    let mut state = state;
    // SAFETY: the state is only ever an EvalState made below.
    let st = match unsafe { state.get_mut::<EvalState>() } {
        Some(st) => st,
        None => {
            let ptr = PgMemoryContexts::For(ctx).leak_and_drop_on_delete(EvalState { k, rows: Vec::new() });
            state = Internal::from(Some(pg_sys::Datum::from(ptr)));
            // SAFETY: just stored an EvalState.
            unsafe { state.get_mut::<EvalState>() }.expect("state just set")
        }
    };
    if st.k != k {
        return Err(report(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "k must be the same for every row"));
    }
    let Some(doc_id) = doc_id else { return Ok(state) };
    if score.is_none() && grade.is_none() {
        return Ok(state);
    }
    st.rows.push((doc_id.to_string(), score, grade));
    Ok(state)
}

fn finish(mut state: Internal, metric: fn(usize) -> Metric) -> Result<Option<f64>, ErrorReport> {
    // SAFETY: the state is only ever an EvalState.
    let Some(st) = (unsafe { state.get_mut::<EvalState>() }) else { return Ok(None) };
    let rows: Vec<Judged> =
        st.rows.iter().map(|(doc, score, grade)| Judged { doc, score: *score, grade: *grade }).collect();
    evaluate(&rows, metric(st.k.unwrap_or(1) as usize)).map_err(|e| {
        input_error(e).set_hint(
            "Each query's run and qrels must name a document at most once; scores and grades must be numbers.",
        )
    })
}

/// Transition function of the metrics with a cut-off.
#[pg_extern(immutable, parallel_safe)]
fn pg_rerank_eval_sfunc(
    state: Internal,
    doc_id: Option<&str>,
    score: Option<f64>,
    grade: Option<f64>,
    k: Option<i32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    transition(state, doc_id, score, grade, Some(k), fcinfo)
}

/// Transition function of `reciprocal_rank`.
#[pg_extern(immutable, parallel_safe, name = "pg_rerank_eval_sfunc")]
fn pg_rerank_eval_sfunc_rr(
    state: Internal,
    doc_id: Option<&str>,
    score: Option<f64>,
    grade: Option<f64>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    transition(state, doc_id, score, grade, None, fcinfo)
}

#[pg_extern(immutable, parallel_safe)]
fn ndcg_at_k_final(state: Internal) -> Result<Option<f64>, ErrorReport> {
    finish(state, Metric::Ndcg)
}

#[pg_extern(immutable, parallel_safe)]
fn recall_at_k_final(state: Internal) -> Result<Option<f64>, ErrorReport> {
    finish(state, Metric::Recall)
}

#[pg_extern(immutable, parallel_safe)]
fn precision_at_k_final(state: Internal) -> Result<Option<f64>, ErrorReport> {
    finish(state, Metric::Precision)
}

#[pg_extern(immutable, parallel_safe)]
fn reciprocal_rank_final(state: Internal) -> Result<Option<f64>, ErrorReport> {
    finish(state, |_| Metric::ReciprocalRank)
}

extension_sql!(
    r#"
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
"#,
    name = "evaluation_aggregates",
    requires = [
        pg_rerank_eval_sfunc,
        pg_rerank_eval_sfunc_rr,
        ndcg_at_k_final,
        recall_at_k_final,
        precision_at_k_final,
        reciprocal_rank_final
    ],
);
