//! `pg_rerank_stages()`: where this session's last statement that used pg_rerank spent
//! its time (see `crate::stages`).

use pgrx::prelude::*;

/// One row per stage the last statement of this session that used pg_rerank went
/// through, in order: `embed` (query embeddings), `cache` (score cache lookups and stores;
/// items: pairs it answered), `split` (long documents split into windows and preselected;
/// items: documents split), `queue` (waiting for the background worker to take a
/// request), `worker` (its tokenizing and inference for this session's requests) or
/// `backend` (this backend's own, without the worker), then `sql` (the rest of the
/// statement until the last stage ended: first-stage scans, fusion, the SQL around the
/// calls) and `statement` (the whole of that time). Call it after the statement, in the
/// same session. Empty before the session's first call.
#[pg_extern(volatile, parallel_restricted)]
fn pg_rerank_stages() -> TableIterator<
    'static,
    (
        name!(stage, String),
        name!(calls, i64),
        name!(items, i64),
        name!(ms, f64),
        name!(detail, Option<String>),
    ),
> {
    TableIterator::new(
        crate::stages::rows().into_iter().map(|r| (r.stage.to_string(), r.calls, r.items, r.ms, r.detail)),
    )
}
