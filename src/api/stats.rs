//! `pg_rerank_stats` (the view over `pg_rerank_model_stats()`), `pg_rerank_stats_reset()`
//! and `pg_rerank_worker()`: what the background worker is doing.

use crate::error::check_columns;
use crate::guc;
use crate::shmem::{self, SlotState};
use pgrx::pg_sys::panic::ErrorReport;
use pg_rerank_engine::score_cache::CacheCounts;
use pgrx::prelude::*;
use std::sync::atomic::Ordering;

/// Whether the current role reads every role's rows, by pg_stat_activity's rule: a member
/// of pg_read_all_stats (superusers have every role's privileges).
fn reads_all_stats() -> bool {
    // SAFETY: has_privs_of_role reads the catalogs in the current transaction (a SQL
    // function runs in one); GetUserId reads this backend's current role.
    unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS)) }
}

/// Whether the current role may see a row of `owner`: its own role's (or one whose
/// privileges it has), or any with pg_read_all_stats.
fn may_see(owner: u32, all: bool) -> bool {
    // SAFETY: as in reads_all_stats.
    all || unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), pg_sys::Oid::from(owner)) }
}

fn device_name(code: i32) -> Option<String> {
    match code {
        -1 => Some("cpu".into()),
        n if n >= 0 => Some(format!("cuda:{n}")),
        _ => None,
    }
}

/// One row per model the background worker has been asked for since the server started
/// (or the statistics were reset). Empty without shared_preload_libraries. The p99
/// columns are upper bounds of histogram buckets 19% wide. `inference_*` runs from the
/// worker taking a request to its last score, tokenization included; `tokenize_mean_ms`
/// is the worker's tokenizing time per request (requests taken together share it).
/// `cache_hits` and `cache_misses` count documents looked up in the score cache.
#[pg_extern(volatile, parallel_safe)]
fn pg_rerank_model_stats(fcinfo: pg_sys::FunctionCallInfo) -> Result<
    TableIterator<
    'static,
    (
        name!(model, String),
        name!(device, Option<String>),
        name!(worker_state, String),
        name!(loads, i64),
        name!(evictions, i64),
        name!(requests, i64),
        name!(interactive_requests, i64),
        name!(bulk_requests, i64),
        name!(pairs, i64),
        name!(tokens, i64),
        name!(truncated, i64),
        name!(split_documents, i64),
        name!(windows, i64),
        name!(batches, i64),
        name!(mean_batch_pairs, Option<f64>),
        name!(shared_batches, i64),
        name!(queue_wait_mean_ms, Option<f64>),
        name!(queue_wait_p99_ms, Option<f64>),
        name!(inference_mean_ms, Option<f64>),
        name!(inference_p99_ms, Option<f64>),
        name!(tokenize_mean_ms, Option<f64>),
        name!(errors, i64),
        name!(cancelled, i64),
        name!(cache_hits, i64),
        name!(cache_misses, i64),
    ),
    >,
    ErrorReport,
> {
    check_columns(fcinfo, 25, "pg_rerank_model_stats")?;
    let Some(sh) = shmem::get() else { return Ok(TableIterator::new(Vec::new())) };
    let state = sh.worker_state.load().name().to_string();
    let mut rows = Vec::new();
    for m in &sh.models {
        let Some(name) = m.name() else { continue };
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as i64;
        let requests = get(&m.requests);
        let batches = get(&m.batches);
        let mean = |sum: i64| (requests > 0).then(|| sum as f64 / requests as f64 / 1000.0);
        rows.push((
            name,
            device_name(m.device.load(Ordering::Relaxed)),
            state.clone(),
            get(&m.loads),
            get(&m.evictions),
            requests,
            get(&m.interactive_requests),
            get(&m.bulk_requests),
            get(&m.pairs),
            get(&m.tokens),
            get(&m.truncated),
            get(&m.split_documents),
            get(&m.windows),
            batches,
            (batches > 0).then(|| get(&m.batched_pairs) as f64 / batches as f64),
            get(&m.shared_batches),
            mean(get(&m.queue_wait_us)),
            m.queue_wait.quantile_ms(0.99),
            mean(get(&m.inference_us)),
            m.inference.quantile_ms(0.99),
            mean(get(&m.tokenize_us)),
            get(&m.errors),
            get(&m.cancelled),
            get(&m.cache_hits),
            get(&m.cache_misses),
        ));
    }
    Ok(TableIterator::new(rows))
}

/// Empties the score cache (for every session at once). Reloading the configuration or
/// the worker loading a model does the same.
#[pg_extern(volatile)]
fn pg_rerank_cache_reset() {
    if let Some(cache) = shmem::cache() {
        cache.invalidate();
    }
}

/// Zeroes the worker's statistics (the models stay loaded).
#[pg_extern(volatile)]
fn pg_rerank_stats_reset() {
    if let Some(sh) = shmem::get() {
        sh.models.iter().for_each(|m| m.reset());
    }
}

/// The background worker: state (not started, starting, ready, stopped), pid, how many
/// times it started and reloaded its configuration, the device setting, queued pairs, its
/// model cache (models loaded, their estimated MB, load failures remembered), slots it
/// reaped from owners that died without releasing them, the score cache (how many scores
/// it holds at most, 0 without one; scores evicted to make room; times it was emptied),
/// and its last problem (which names server files: '<insufficient privilege>' unless the
/// role is a member of pg_read_all_stats or a superuser).
#[pg_extern(volatile, parallel_safe)]
fn pg_rerank_worker(fcinfo: pg_sys::FunctionCallInfo) -> Result<
    TableIterator<
    'static,
    (
        name!(state, String),
        name!(pid, Option<i32>),
        name!(starts, i64),
        name!(reloads, i64),
        name!(device, String),
        name!(queued_pairs, i64),
        name!(models_loaded, i32),
        name!(models_mb, f64),
        name!(failures_cached, i32),
        name!(reaped_slots, i64),
        name!(cache_capacity, i64),
        name!(cache_evictions, i64),
        name!(cache_invalidations, i64),
        name!(status, Option<String>),
    ),
    >,
    ErrorReport,
> {
    check_columns(fcinfo, 14, "pg_rerank_worker")?;
    let Some(sh) = shmem::get() else {
        return Ok(TableIterator::once((
            "not preloaded".to_string(),
            None,
            0,
            0,
            guc::device(),
            0,
            0,
            0.0,
            0,
            0,
            0,
            0,
            0,
            Some("pg_rerank is not in shared_preload_libraries".to_string()),
        )));
    };
    let pid = sh.worker_pid.load(Ordering::Acquire);
    // The last problem names files and directories of the server: shown to
    // pg_read_all_stats only, as pg_stat_activity shows other roles' queries.
    let status = match sh.status() {
        s if s.is_empty() || reads_all_stats() => s,
        _ => "<insufficient privilege>".to_string(),
    };
    let cache = shmem::cache().map(|c| c.counts());
    let count = |f: fn(&CacheCounts) -> u64| cache.as_ref().map_or(0, |c| f(c) as i64);
    Ok(TableIterator::once((
        sh.worker_state.load().name().to_string(),
        (pid != 0).then_some(pid),
        sh.worker_starts.load(Ordering::Acquire) as i64,
        sh.reloads.load(Ordering::Acquire) as i64,
        guc::device(),
        sh.queued_pairs.load(Ordering::Acquire) as i64,
        sh.models_loaded.load(Ordering::Relaxed) as i32,
        sh.model_bytes.load(Ordering::Relaxed) as f64 / (1u64 << 20) as f64,
        sh.failures_cached.load(Ordering::Relaxed) as i32,
        sh.reaped.load(Ordering::Relaxed) as i64,
        count(|c| c.capacity),
        count(|c| c.evictions),
        count(|c| c.invalidations),
        (!status.is_empty()).then_some(status),
    )))
}

/// One row per request waiting for or running in the background worker, like
/// pg_stat_progress_* (and by its rule: a role sees its own requests, a member of
/// pg_read_all_stats or a superuser every one): the backend's pid, the model, the priority (interactive or bulk),
/// queued or running, the pairs of the whole SQL call and how many are scored (a large
/// call is sent in requests of 1,024 pairs), and when the request was queued and taken.
#[pg_extern(volatile, parallel_safe)]
fn pg_rerank_progress_raw(fcinfo: pg_sys::FunctionCallInfo) -> Result<
    TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(model, String),
        name!(priority, String),
        name!(state, String),
        name!(pairs_total, i64),
        name!(pairs_scored, i64),
        name!(queued_epoch, f64),
        name!(started_epoch, Option<f64>),
    ),
    >,
    ErrorReport,
> {
    check_columns(fcinfo, 8, "pg_rerank_progress_raw")?;
    let Some(sh) = shmem::get() else { return Ok(TableIterator::new(Vec::new())) };
    let all = reads_all_stats();
    let mut rows = Vec::new();
    for s in &sh.slots {
        let request = s.request.load(Ordering::Acquire);
        let state = match s.state.load() {
            SlotState::Queued => "queued",
            SlotState::Running => "running",
            _ => continue,
        };
        let row = (
            s.owner_pid.load(Ordering::Relaxed),
            s.model(),
            if s.priority.load(Ordering::Relaxed) == 1 { "bulk" } else { "interactive" }.to_string(),
            state.to_string(),
            s.call_pairs.load(Ordering::Relaxed) as i64,
            (s.call_done.load(Ordering::Relaxed) + u64::from(s.scored.load(Ordering::Relaxed))) as i64,
            s.queued_at.load(Ordering::Relaxed) as f64 / 1e6,
            Some(s.started_at.load(Ordering::Relaxed)).filter(|&t| t > 0).map(|t| t as f64 / 1e6),
        );
        // A slot reused while we read it describes another request: skip it (a new owner
        // writes the model while Claimed, then a new request number, then Queued).
        let still = matches!(s.state.load(), SlotState::Queued | SlotState::Running);
        let owner = s.owner_role.load(Ordering::Acquire);
        if still && s.request.load(Ordering::Acquire) == request && row.0 != 0 && may_see(owner, all) {
            rows.push(row);
        }
    }
    Ok(TableIterator::new(rows))
}

extension_sql!(
    r#"
CREATE VIEW pg_rerank_stats AS SELECT * FROM pg_rerank_model_stats();
COMMENT ON VIEW pg_rerank_stats IS 'Per-model statistics of the pg_rerank background worker';
CREATE VIEW pg_rerank_progress AS
    SELECT pid, model, priority, state, pairs_total, pairs_scored,
           to_timestamp(queued_epoch) AS queued_at, to_timestamp(started_epoch) AS started_at
    FROM pg_rerank_progress_raw();
COMMENT ON VIEW pg_rerank_progress IS 'Requests waiting for or running in the pg_rerank background worker';
REVOKE EXECUTE ON FUNCTION pg_rerank_stats_reset() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_rerank_cache_reset() FROM PUBLIC;
"#,
    name = "stats_view",
    requires = [pg_rerank_model_stats, pg_rerank_stats_reset, pg_rerank_cache_reset, pg_rerank_progress_raw]
);
