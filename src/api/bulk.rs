//! `rerank_pairs(queries[], docs[])`: bulk scoring of (query, document) pairs, for
//! analytics and dbt models that score relevance over whole tables.

use super::score_pairs;
use crate::error::report;
use crate::guc;
use pg_rerank_engine::Priority;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Scores the pairs (queries[i], docs[i]) and returns their scores in input order:
/// element i is the score of pair i, NULL where the query or the document is NULL. Pairs
/// of all queries are batched together by length, so one call over many rows runs the
/// model on full batches. Both arrays must have the same number of elements; a NULL array
/// gives NULL. At most pg_rerank.max_pairs elements (a superuser setting): score a table
/// in chunks of rows. In the background worker these are bulk pairs, which wait behind
/// interactive calls (with a guaranteed share, pg_rerank.bulk_share). statement_timeout
/// and cancel stop it between batches. `instruction` replaces an instruction-following
/// reranker's own (an error for other models).
#[pg_extern(stable, parallel_safe)]
fn rerank_pairs(
    queries: Option<Array<&str>>,
    docs: Option<Array<&str>>,
    model: default!(Option<&str>, "NULL"),
    raw: default!(Option<bool>, "false"),
    instruction: default!(Option<&str>, "NULL"),
) -> Result<Option<Vec<Option<f32>>>, ErrorReport> {
    let (Some(queries), Some(docs)) = (queries, docs) else { return Ok(None) };
    if queries.len() != docs.len() {
        return Err(report(
            PgSqlErrorCode::ERRCODE_ARRAY_ELEMENT_ERROR,
            "queries and docs must have the same number of elements",
        )
        .set_detail(format!("queries has {} elements, docs has {}.", queries.len(), docs.len())));
    }
    let max = guc::max_pairs();
    if queries.len() > max {
        return Err(report(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("too many pairs to score: {}, the limit is {max}", queries.len()),
        )
        .set_hint(
            "Score the table in chunks of rows (GROUP BY id / 10000), or have a superuser raise pg_rerank.max_pairs.",
        ));
    }
    let (positions, pairs): (Vec<usize>, Vec<(&str, &str)>) =
        queries.iter().zip(docs.iter()).enumerate().filter_map(|(i, (q, d))| Some((i, (q?, d?)))).unzip();
    let mut out = vec![None; queries.len()];
    if pairs.is_empty() {
        return Ok(Some(out));
    }
    let scores = score_pairs(model, instruction, &pairs, raw.unwrap_or(false), Priority::Bulk)?;
    for (i, s) in positions.into_iter().zip(scores) {
        out[i] = Some(s);
    }
    Ok(Some(out))
}
