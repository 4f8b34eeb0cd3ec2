//! A backend's side of the background worker: queue a request, wait for its scores.
//!
//! The wait is on the backend's own latch, which the worker sets when the request is
//! done and Postgres sets on cancel or statement_timeout, so an interrupt is seen at
//! once. A backend that stops waiting (cancel, timeout, error) drops its request: the
//! worker skips pairs it has not scored yet.

use crate::error::{engine, report, SqlResult};
use crate::guc;
use crate::shmem::{self, Shared, CANCELLED, CLAIMED, DONE, FREE, QUEUED, RUNNING, SLOTS};
use crate::wire;
use pg_rerank_engine::ScoreStats;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use std::sync::atomic::Ordering;

/// Texts longer than this are cut before they are sent to the worker. The engine cuts a
/// text at 32 characters per token of the model's maximum length anyway, so no model of up
/// to 8192 tokens sees a difference; this bounds the segment for huge documents.
const MAX_TEXT_CHARS: usize = 32 * 8192;

/// Polling period while waiting, for the checks no latch announces (worker restarts).
const POLL_MS: i64 = 50;

/// Whether `auto` execution would use the worker now.
pub fn worker_available() -> bool {
    shmem::get().is_some_and(|s| s.worker_running() && s.worker_state.load(Ordering::Acquire) == shmem::W_READY)
}

fn not_preloaded() -> pgrx::pg_sys::panic::ErrorReport {
    report(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "the pg_rerank background worker is not available")
        .set_detail("pg_rerank.execution is worker, but pg_rerank is not in shared_preload_libraries.")
        .set_hint(
            "Add pg_rerank to shared_preload_libraries and restart the server, or SET pg_rerank.execution = auto.",
        )
}

fn clip(s: &str) -> &str {
    if s.len() <= MAX_TEXT_CHARS {
        return s;
    }
    match s.char_indices().nth(MAX_TEXT_CHARS) {
        Some((b, _)) => &s[..b],
        None => s,
    }
}

/// Waits on this backend's latch for up to `ms`, then handles interrupts (which may raise
/// an error and unwind through the caller's guard).
fn wait(ms: i64) {
    shmem::wait_latch(ms);
    pgrx::check_for_interrupts!();
}

/// Our claim on a slot. Dropping it (also while unwinding from an error) withdraws the
/// request: a queued one is freed at once, a running one is marked cancelled for the
/// worker to free.
struct Ticket {
    shared: &'static Shared,
    slot: usize,
    /// Pairs counted in `queued_pairs` but not yet attached to the slot.
    reserved: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let sh = self.shared;
        sh.queued_pairs.fetch_sub(self.reserved, Ordering::AcqRel);
        if self.slot == usize::MAX {
            return;
        }
        let state = &sh.slots[self.slot].state;
        loop {
            match state.load(Ordering::Acquire) {
                CLAIMED | DONE => return sh.free_slot(self.slot),
                QUEUED => {
                    if state.compare_exchange(QUEUED, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return sh.free_slot(self.slot);
                    }
                }
                RUNNING => {
                    if state.compare_exchange(RUNNING, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        shmem::wake(sh.worker_procno.load(Ordering::Acquire));
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

/// Reserves room for `n` pairs in the queue and a free slot, waiting up to
/// pg_rerank.queue_timeout.
fn admit(sh: &'static Shared, n: u64) -> SqlResult<Ticket> {
    let max = guc::max_queued_pairs();
    let timeout = guc::queue_timeout_ms();
    let start = shmem::now_us();
    let mut ticket = Ticket { shared: sh, slot: usize::MAX, reserved: 0 };
    loop {
        if ticket.reserved == 0 {
            let queued = sh.queued_pairs.load(Ordering::Acquire);
            // A request larger than the whole queue runs alone, when the queue is empty.
            let fits = queued + n <= max || queued == 0;
            if fits && sh.queued_pairs.compare_exchange(queued, queued + n, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                ticket.reserved = n;
            }
        }
        if ticket.reserved > 0 {
            if let Some(i) = (0..SLOTS).find(|&i| {
                sh.slots[i].state.compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            }) {
                ticket.slot = i;
                return Ok(ticket);
            }
        }
        let waited_ms = (shmem::now_us() - start) / 1000;
        if waited_ms >= timeout {
            let queued = sh.queued_pairs.load(Ordering::Acquire);
            return Err(report(PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES, "the pg_rerank worker's queue is full")
                .set_detail(format!(
                    "This request of {n} pairs waited {waited_ms} ms; {queued} pairs are queued and pg_rerank.max_queued_pairs is {max}."
                ))
                .set_hint("Retry later, raise pg_rerank.queue_timeout or pg_rerank.max_queued_pairs, or rerank fewer candidates."));
        }
        wait(10.min(timeout - waited_ms));
    }
}

/// Scores (query, document) pairs with `model` in the background worker, as one request.
pub fn score(model: &str, pairs: &[(&str, &str)], raw: bool) -> SqlResult<(Vec<f32>, ScoreStats)> {
    let sh = shmem::get().ok_or_else(not_preloaded)?;
    let dir = crate::models::model_dir()?;
    let dir = dir.to_string_lossy();
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(q, d)| (clip(q), clip(d))).collect();
    let n = pairs.len();
    let mut ticket = admit(sh, n as u64)?;
    let slot = &sh.slots[ticket.slot];

    let size = wire::size(&dir, model, &pairs);
    // Owned by the current resource owner: an error before we detach frees it.
    let seg = unsafe { pg_sys::dsm_create(size, 0) };
    let buf = unsafe { std::slice::from_raw_parts_mut(pg_sys::dsm_segment_address(seg).cast::<u8>(), size) };
    let request = sh.next_request.fetch_add(1, Ordering::AcqRel) + 1;
    wire::write_request(buf, request, raw, &dir, model, &pairs);

    slot.procno.store(unsafe { (*pg_sys::MyProc).pgprocno }, Ordering::Relaxed);
    slot.dsm.store(unsafe { pg_sys::dsm_segment_handle(seg) }, Ordering::Relaxed);
    slot.request.store(request, Ordering::Relaxed);
    slot.submitted_us.store(shmem::now_us(), Ordering::Relaxed);
    slot.pairs.store(n as u32, Ordering::Relaxed);
    ticket.reserved = 0;
    slot.state.store(QUEUED, Ordering::Release);
    shmem::wake(sh.worker_procno.load(Ordering::Acquire));

    let timeout = guc::queue_timeout_ms();
    let mut idle_since: Option<i64> = None;
    loop {
        match slot.state.load(Ordering::Acquire) {
            DONE => break,
            state => {
                // A worker that exits clears its pid and wakes us; a queued request waits
                // for the next worker up to queue_timeout.
                if state == RUNNING && !sh.worker_running() {
                    return Err(worker_gone());
                }
                if state == QUEUED && !sh.worker_running() {
                    let since = *idle_since.get_or_insert_with(shmem::now_us);
                    if (shmem::now_us() - since) / 1000 >= timeout {
                        return Err(report(
                            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                            "the pg_rerank background worker is not running",
                        )
                        .set_detail(format!("The request waited {timeout} ms (pg_rerank.queue_timeout) for it to start."))
                        .set_hint("The server log tells why it stopped; SET pg_rerank.execution = backend scores in this backend."));
                    }
                } else {
                    idle_since = None;
                }
                wait(POLL_MS);
            }
        }
    }
    let result = wire::read_response(buf);
    unsafe { pg_sys::dsm_detach(seg) };
    drop(ticket); // frees the DONE slot
    result.map_err(engine)
}

fn worker_gone() -> pgrx::pg_sys::panic::ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
        "the pg_rerank background worker exited before it finished this request",
    )
    .set_hint("The postmaster restarts it; retry the call. The server log tells why it exited.")
}
