//! `rerank(query, docs[])` and `rerank_score(query, doc)`.

use super::{check_doc_count, null_query, rank, score};
use crate::error::report;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Scores each element of `docs` against `query` and returns one row per non-NULL
/// document: `idx` is its 1-based position in `docs`, rows come best first (ties in input
/// order). `top_n` keeps the best n, `min_score` those scoring at least that (on the
/// scale returned: probability, or logit when `raw`). NULL elements of `docs` are skipped;
/// NULL or empty `docs` gives no rows; a NULL query is an error. Scores are probabilities
/// (sigmoid of the logit) unless `raw` is true.
#[pg_extern(stable, parallel_safe)]
fn rerank(
    query: Option<&str>,
    docs: Option<Array<&str>>,
    model: default!(Option<&str>, "NULL"),
    top_n: default!(Option<i32>, "NULL"),
    raw: default!(Option<bool>, "false"),
    min_score: default!(Option<f32>, "NULL"),
) -> Result<TableIterator<'static, (name!(idx, i32), name!(score, f32))>, ErrorReport> {
    let query = query.ok_or_else(null_query)?;
    if let Some(n) = top_n {
        if n <= 0 {
            return Err(report(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("top_n must be positive, not {n}"),
            )
            .set_hint("Pass NULL to keep every document."));
        }
    }
    let Some(docs) = docs else { return Ok(TableIterator::new(Vec::new())) };
    check_doc_count(docs.len())?;
    let (positions, texts): (Vec<i32>, Vec<&str>) =
        docs.iter().enumerate().filter_map(|(i, d)| d.map(|d| (i as i32 + 1, d))).unzip();
    if texts.is_empty() {
        return Ok(TableIterator::new(Vec::new()));
    }
    let scores = score(model, query, &texts, raw.unwrap_or(false))?;
    let mut rows: Vec<(i32, f32)> = rank(&scores).into_iter().map(|(i, s)| (positions[i], s)).collect();
    if let Some(min) = min_score {
        // Best first: the rows below the threshold (and NaN, ranked last) are the tail.
        rows.truncate(rows.partition_point(|&(_, s)| s >= min));
    }
    if let Some(n) = top_n {
        rows.truncate(n as usize);
    }
    Ok(TableIterator::new(rows))
}

/// The score of one (query, document) pair; NULL when either is NULL.
#[pg_extern(stable, parallel_safe)]
fn rerank_score(
    query: Option<&str>,
    doc: Option<&str>,
    model: default!(Option<&str>, "NULL"),
    raw: default!(Option<bool>, "false"),
) -> Result<Option<f32>, ErrorReport> {
    let (Some(query), Some(doc)) = (query, doc) else { return Ok(None) };
    Ok(score(model, query, &[doc], raw.unwrap_or(false))?.first().copied())
}
