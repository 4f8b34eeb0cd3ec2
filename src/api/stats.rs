//! `pg_rerank_stats` (the view over `pg_rerank_model_stats()`), `pg_rerank_stats_reset()`
//! and `pg_rerank_worker()`: what the background worker is doing.

use crate::guc;
use crate::shmem;
use pgrx::prelude::*;
use std::sync::atomic::Ordering;

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
#[pg_extern(volatile, parallel_safe)]
fn pg_rerank_model_stats() -> TableIterator<
    'static,
    (
        name!(model, String),
        name!(device, Option<String>),
        name!(worker_state, String),
        name!(loads, i64),
        name!(requests, i64),
        name!(pairs, i64),
        name!(tokens, i64),
        name!(truncated, i64),
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
    ),
> {
    let Some(sh) = shmem::get() else { return TableIterator::new(Vec::new()) };
    let state = shmem::worker_state_name(sh.worker_state.load(Ordering::Acquire)).to_string();
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
            requests,
            get(&m.pairs),
            get(&m.tokens),
            get(&m.truncated),
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
        ));
    }
    TableIterator::new(rows)
}

/// Zeroes the worker's statistics (the models stay loaded).
#[pg_extern(volatile)]
fn pg_rerank_stats_reset() {
    if let Some(sh) = shmem::get() {
        sh.models.iter().for_each(|m| m.reset());
    }
}

/// The background worker: state (not started, starting, ready, stopped), pid, how many
/// times it started and reloaded its configuration, the device setting, queued pairs, and
/// its last problem.
#[pg_extern(volatile, parallel_safe)]
fn pg_rerank_worker() -> TableIterator<
    'static,
    (
        name!(state, String),
        name!(pid, Option<i32>),
        name!(starts, i64),
        name!(reloads, i64),
        name!(device, String),
        name!(queued_pairs, i64),
        name!(status, Option<String>),
    ),
> {
    let Some(sh) = shmem::get() else {
        return TableIterator::once((
            "not preloaded".to_string(),
            None,
            0,
            0,
            guc::device(),
            0,
            Some("pg_rerank is not in shared_preload_libraries".to_string()),
        ));
    };
    let pid = sh.worker_pid.load(Ordering::Acquire);
    let status = sh.status();
    TableIterator::once((
        shmem::worker_state_name(sh.worker_state.load(Ordering::Acquire)).to_string(),
        (pid != 0).then_some(pid),
        sh.worker_starts.load(Ordering::Acquire) as i64,
        sh.reloads.load(Ordering::Acquire) as i64,
        guc::device(),
        sh.queued_pairs.load(Ordering::Acquire) as i64,
        (!status.is_empty()).then_some(status),
    ))
}

extension_sql!(
    r#"
CREATE VIEW pg_rerank_stats AS SELECT * FROM pg_rerank_model_stats();
COMMENT ON VIEW pg_rerank_stats IS 'Per-model statistics of the pg_rerank background worker';
REVOKE EXECUTE ON FUNCTION pg_rerank_stats_reset() FROM PUBLIC;
"#,
    name = "stats_view",
    requires = [pg_rerank_model_stats, pg_rerank_stats_reset]
);
