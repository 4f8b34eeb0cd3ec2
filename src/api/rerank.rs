//! `rerank(query, docs[])` and `rerank_score(query, doc)`.

use super::{check_doc_count, null_query, rank, score, score_with};
use crate::error::{report, SqlResult};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Scores each element of `docs` against `query` and returns one row per non-NULL
/// document: `idx` is its 1-based position in `docs`, rows come best first (ties in input
/// order). `top_n` keeps the best n, `min_score` those scoring at least that (on the
/// scale returned: probability, or logit when `raw`). NULL elements of `docs` are skipped;
/// NULL or empty `docs` gives no rows; a NULL query is an error. Scores are probabilities
/// (sigmoid of the logit) unless `raw` is true. `instruction` replaces an
/// instruction-following reranker's own (an error for other models).
#[pg_extern(stable, parallel_safe)]
#[allow(clippy::too_many_arguments)]
fn rerank(
    query: Option<&str>,
    docs: Option<Array<&str>>,
    model: default!(Option<&str>, "NULL"),
    top_n: default!(Option<i32>, "NULL"),
    raw: default!(Option<bool>, "false"),
    min_score: default!(Option<f32>, "NULL"),
    instruction: default!(Option<&str>, "NULL"),
) -> Result<TableIterator<'static, (name!(idx, i32), name!(score, f32))>, ErrorReport> {
    let query = query.ok_or_else(null_query)?;
    let top_n = positive("top_n", top_n)?;
    let Some(docs) = docs else { return Ok(TableIterator::new(Vec::new())) };
    let (positions, texts) = present(docs.iter())?;
    let rows = ranked(model, instruction, query, &positions, &texts, raw.unwrap_or(false))?;
    Ok(TableIterator::new(cut(rows, min_score, top_n)))
}

/// A cascade: every document is scored with `first_model` (fast: a small or int8
/// model), the best `first_k` of them again with `model` (strong; NULL: pg_rerank.model),
/// and those come back ordered by the strong model's score, as `rerank` would give them
/// for those documents alone. `top_n`, `raw` and `min_score` apply to the strong scores.
#[pg_extern(stable, parallel_safe)]
#[allow(clippy::too_many_arguments)]
fn rerank_cascade(
    query: Option<&str>,
    docs: Option<Array<&str>>,
    first_model: Option<&str>,
    first_k: Option<i32>,
    model: default!(Option<&str>, "NULL"),
    top_n: default!(Option<i32>, "NULL"),
    raw: default!(Option<bool>, "false"),
    min_score: default!(Option<f32>, "NULL"),
) -> Result<TableIterator<'static, (name!(idx, i32), name!(score, f32))>, ErrorReport> {
    let query = query.ok_or_else(null_query)?;
    let first_model = first_model.ok_or_else(|| {
        report(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "first_model must not be null")
            .set_hint("Name the fast model of the first stage, for example 'minilm-debian:int8'.")
    })?;
    let first_k = positive("first_k", first_k)?
        .ok_or_else(|| report(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "first_k must not be null"))?;
    let top_n = positive("top_n", top_n)?;
    let Some(docs) = docs else { return Ok(TableIterator::new(Vec::new())) };
    let (positions, texts) = present(docs.iter())?;
    if texts.is_empty() {
        return Ok(TableIterator::new(Vec::new()));
    }
    // The first stage ranks by logits: the same order, without the sigmoid.
    let mut first = rank(&score(Some(first_model), query, &texts, true)?);
    first.truncate(first_k);
    // Back in input order, so the strong model's ties keep the input order as in rerank().
    first.sort_unstable_by_key(|&(i, _)| i);
    let keep: Vec<i32> = first.iter().map(|&(i, _)| positions[i]).collect();
    let kept: Vec<&str> = first.iter().map(|&(i, _)| texts[i]).collect();
    let rows = ranked(model, None, query, &keep, &kept, raw.unwrap_or(false))?;
    Ok(TableIterator::new(cut(rows, min_score, top_n)))
}

/// A positive count argument (None stays None).
fn positive(name: &str, n: Option<i32>) -> SqlResult<Option<usize>> {
    match n {
        Some(n) if n <= 0 => {
            let error = report(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("{name} must be positive, not {n}"));
            Err(if name == "top_n" { error.set_hint("Pass NULL to keep every document.") } else { error })
        }
        n => Ok(n.map(|n| n as usize)),
    }
}

/// The non-NULL documents with their 1-based positions, after the max_docs check.
fn present<'a>(docs: impl ExactSizeIterator<Item = Option<&'a str>>) -> SqlResult<(Vec<i32>, Vec<&'a str>)> {
    check_doc_count(docs.len())?;
    Ok(docs.enumerate().filter_map(|(i, d)| d.map(|d| (i as i32 + 1, d))).unzip())
}

/// (position, score) best first (ties in input order).
fn ranked(
    model: Option<&str>,
    instruction: Option<&str>,
    query: &str,
    positions: &[i32],
    texts: &[&str],
    raw: bool,
) -> SqlResult<Vec<(i32, f32)>> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let scores = score_with(model, instruction, query, texts, raw)?;
    Ok(rank(&scores).into_iter().map(|(i, s)| (positions[i], s)).collect())
}

/// Keeps the rows scoring at least `min_score`, then the best `top_n`.
fn cut(mut rows: Vec<(i32, f32)>, min_score: Option<f32>, top_n: Option<usize>) -> Vec<(i32, f32)> {
    if let Some(min) = min_score {
        // Best first: the rows below the threshold (and NaN, ranked last) are the tail.
        rows.truncate(rows.partition_point(|&(_, s)| s >= min));
    }
    if let Some(n) = top_n {
        rows.truncate(n);
    }
    rows
}

/// The score of one (query, document) pair; NULL when either is NULL. `instruction` as
/// for `rerank`.
#[pg_extern(stable, parallel_safe)]
fn rerank_score(
    query: Option<&str>,
    doc: Option<&str>,
    model: default!(Option<&str>, "NULL"),
    raw: default!(Option<bool>, "false"),
    instruction: default!(Option<&str>, "NULL"),
) -> Result<Option<f32>, ErrorReport> {
    let (Some(query), Some(doc)) = (query, doc) else { return Ok(None) };
    Ok(score_with(model, instruction, query, &[doc], raw.unwrap_or(false))?.first().copied())
}
