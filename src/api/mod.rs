//! What SQL sees.

mod catalog;
mod rerank;
mod topk;

use crate::error::{engine, report, SqlResult};
use crate::{guc, models};
use pg_rerank_engine::{Model, ScoreOptions};
use pgrx::PgSqlErrorCode;

/// Scores `docs` against `query` with `model`, checking for query cancel and
/// statement_timeout between batches. Runs on the backend's own thread: ONNX Runtime's
/// threads only compute, they never call into Postgres.
pub(crate) fn score(model: &Model, query: &str, docs: &[&str], raw: bool) -> SqlResult<Vec<f32>> {
    let opts = ScoreOptions { limits: guc::batch_limits(), raw };
    let (scores, _stats) = model
        .score(query, docs, opts, &mut || {
            pgrx::check_for_interrupts!();
            Ok(())
        })
        .map_err(engine)?;
    Ok(scores)
}

pub(crate) fn load(model: Option<&str>) -> SqlResult<std::sync::Arc<Model>> {
    models::get(&models::model_name(model)?)
}

pub(crate) fn check_doc_count(n: usize) -> SqlResult<()> {
    let max = guc::max_docs();
    if n > max {
        return Err(report(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("too many documents to rerank: {n}, the limit is {max}"),
        )
        .set_hint("Rerank fewer candidates (LIMIT the first stage), or have a superuser raise pg_rerank.max_docs."));
    }
    Ok(())
}

pub(crate) fn null_query() -> pgrx::pg_sys::panic::ErrorReport {
    report(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "query must not be null")
}

/// Orders (index, score) best first; equal scores keep their input order.
pub(crate) fn rank(scores: &[f32]) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
}
