//! What SQL sees.

mod bulk;
mod catalog;
mod rerank;
mod stats;
mod topk;

use crate::error::{engine, report, SqlResult};
use crate::guc::{self, Execution};
use crate::{client, models};
use pg_rerank_engine::ScoreOptions;
use pgrx::PgSqlErrorCode;

/// Pairs per request to the worker: a bulk call is sent in requests of this size, one
/// after the other, so it never needs more room in the queue than this.
const WORKER_REQUEST_PAIRS: usize = 4096;

/// Scores `docs` against `query` with `model` (None: pg_rerank.model).
pub(crate) fn score(model: Option<&str>, query: &str, docs: &[&str], raw: bool) -> SqlResult<Vec<f32>> {
    let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (query, *d)).collect();
    score_pairs(model, &pairs, raw)
}

/// Scores (query, document) pairs with `model` (None: pg_rerank.model), in the background
/// worker or in this backend as pg_rerank.execution says. Both check for query cancel and
/// statement_timeout while they work.
pub(crate) fn score_pairs(model: Option<&str>, pairs: &[(&str, &str)], raw: bool) -> SqlResult<Vec<f32>> {
    let name = models::model_name(model)?;
    let in_worker = match guc::execution() {
        Execution::Backend => false,
        Execution::Worker => true,
        Execution::Auto => client::worker_available(),
    };
    if !in_worker {
        return score_here(&name, pairs, raw);
    }
    let mut scores = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(WORKER_REQUEST_PAIRS) {
        scores.extend(client::score(&name, chunk, raw)?.0);
    }
    Ok(scores)
}

/// Scores in this backend, on its own thread: ONNX Runtime's and the tokenizer's threads
/// only compute, they never call into Postgres.
fn score_here(name: &str, pairs: &[(&str, &str)], raw: bool) -> SqlResult<Vec<f32>> {
    let model = models::get(name)?;
    let opts = ScoreOptions { limits: guc::batch_limits(model.device()), raw, tokenize_threads: guc::threads() };
    let (scores, _stats) = model
        .score_pairs(pairs, opts, &mut || {
            pgrx::check_for_interrupts!();
            Ok(())
        })
        .map_err(engine)?;
    Ok(scores)
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
