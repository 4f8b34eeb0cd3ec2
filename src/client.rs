//! A backend's side of the background worker: queue a request, wait for its scores (or
//! embeddings).
//!
//! The wait is on the backend's own latch, which the worker sets when the request is
//! done and Postgres sets on cancel or statement_timeout, so an interrupt is seen at
//! once. A backend that stops waiting drops its request: on an error the `Ticket` is
//! dropped while unwinding; on FATAL (pg_terminate_backend, a parallel worker stopped by
//! its leader), which does not unwind, the `before_shmem_exit` callback releases the slot.
//! The worker drops the pairs it has not scored yet, and reaps the slot of an owner that is
//! gone without either.

use crate::error::{engine, report, SqlResult};
use crate::guc;
use crate::shmem::{self, Outcome, Shared, SlotState, SLOTS};
use crate::wire;
use parking_lot::Mutex;
use crate::stages::{self, Stage};
use pg_rerank_engine::{registry, Priority, ScoreStats, TextKind};
use std::time::Duration;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Polling period while waiting, for what no latch announces (a worker that restarted).
const POLL_MS: i64 = 50;

const NO_SLOT: usize = usize::MAX;

/// The slot this process holds, for the exit callback (one request at a time per process).
static MY_SLOT: AtomicUsize = AtomicUsize::new(NO_SLOT);

/// Whether the library was preloaded, so that the worker serves `auto` execution. While
/// the worker starts or restarts, requests wait for it (up to pg_rerank.queue_timeout)
/// instead of loading a private copy of the model in this backend.
pub fn preloaded() -> bool {
    shmem::get().is_some()
}

fn not_preloaded() -> pgrx::pg_sys::panic::ErrorReport {
    report(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "the pg_rerank background worker is not available")
        .set_detail("pg_rerank.execution is worker, but pg_rerank is not in shared_preload_libraries.")
        .set_hint(
            "Add pg_rerank to shared_preload_libraries and restart the server, or SET pg_rerank.execution = auto.",
        )
}

/// Waits on this backend's latch for up to `ms`, then handles interrupts (which may raise
/// an error and unwind through the caller's guard, or end the process).
fn wait(ms: i64) {
    shmem::wait_latch(ms);
    pgrx::check_for_interrupts!();
}

/// Gives up this process's claim on `slot`: a claimed, queued or answered request is freed
/// at once, a running one is marked cancelled for the worker to free. Does nothing when
/// the slot is no longer ours. Safe to call twice.
fn release(sh: &Shared, slot: usize) {
    let s = &sh.slots[slot];
    if s.owner_pid.load(Ordering::Acquire) != shmem::my_proc().1 {
        return;
    }
    loop {
        match s.state.load() {
            SlotState::Claimed | SlotState::Done => return sh.free_slot(slot),
            SlotState::Queued => {
                if s.state.cas(SlotState::Queued, SlotState::Claimed) {
                    return sh.free_slot(slot);
                }
            }
            SlotState::Running => {
                if s.state.cas(SlotState::Running, SlotState::Cancelled) {
                    shmem::wake(sh.worker_procno.load(Ordering::Acquire));
                    return;
                }
            }
            SlotState::Free | SlotState::Cancelled => return,
        }
    }
}

/// Runs at process exit, FATAL included (which skips Drop): releases the slot held.
#[pg_guard]
unsafe extern "C-unwind" fn release_at_exit(_code: i32, _arg: pg_sys::Datum) {
    let slot = MY_SLOT.swap(NO_SLOT, Ordering::AcqRel);
    if let (Some(sh), true) = (shmem::get(), slot != NO_SLOT) {
        release(sh, slot);
    }
}

fn register_exit_callback() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if !REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: called from the backend's main thread; the callback only touches our
        // shared memory, which outlives before_shmem_exit callbacks.
        unsafe { pg_sys::before_shmem_exit(Some(release_at_exit), pg_sys::Datum::from(0)) };
    }
}

/// Our claim on a slot. Dropping it (also while unwinding from an error) releases it.
struct Ticket {
    shared: &'static Shared,
    slot: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        release(self.shared, self.slot);
        MY_SLOT.store(NO_SLOT, Ordering::Release);
    }
}

fn queue_full(n: u64, waited_ms: i64, queued: u64, max: u64) -> pgrx::pg_sys::panic::ErrorReport {
    report(PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES, "the pg_rerank worker's queue is full")
        .set_detail(format!(
            "This request of {n} pairs waited {waited_ms} ms; {queued} pairs are queued and pg_rerank.max_queued_pairs is {max}."
        ))
        .set_hint("Retry later, raise pg_rerank.queue_timeout or pg_rerank.max_queued_pairs, or rerank fewer candidates.")
}

/// Claims a free slot, then room for `n` pairs in the queue, waiting up to
/// pg_rerank.queue_timeout for both.
fn admit(sh: &'static Shared, n: u64) -> SqlResult<Ticket> {
    register_exit_callback();
    let max = guc::max_queued_pairs();
    let timeout = guc::queue_timeout_ms();
    let start = shmem::now_us();
    let waited = || (shmem::now_us() - start) / 1000;
    let (procno, pid) = shmem::my_proc();
    let ticket = loop {
        if let Some(i) = (0..SLOTS).find(|&i| sh.slots[i].state.cas(SlotState::Free, SlotState::Claimed)) {
            let s = &sh.slots[i];
            s.owner_procno.store(procno, Ordering::Release);
            // SAFETY: GetUserId only reads this backend's current role.
            s.owner_role.store(u32::from(unsafe { pgrx::pg_sys::GetUserId() }), Ordering::Release);
            s.owner_pid.store(pid, Ordering::Release);
            s.pairs.store(0, Ordering::Release);
            MY_SLOT.store(i, Ordering::Release);
            break Ticket { shared: sh, slot: i };
        }
        if waited() >= timeout {
            return Err(queue_full(n, waited(), sh.queued_pairs.load(Ordering::Acquire), max));
        }
        wait(10.min(timeout - waited()));
    };
    loop {
        let queued = sh.queued_pairs.load(Ordering::Acquire);
        // A request larger than the whole queue runs alone, when the queue is empty.
        let fits = queued + n <= max || queued == 0;
        // No interrupt can come between the two stores below (only CHECK_FOR_INTERRUPTS
        // ends a backend), so the slot always records what it added to queued_pairs.
        if fits && sh.queued_pairs.compare_exchange(queued, queued + n, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            sh.slots[ticket.slot].pairs.store(n as u32, Ordering::Release);
            return Ok(ticket);
        }
        if waited() >= timeout {
            return Err(queue_full(n, waited(), queued, max));
        }
        wait(10.min(timeout - waited()));
    }
}

/// The part of one SQL call that a request carries: the call's pairs in all, and how many
/// of them earlier requests answered (for pg_rerank_progress).
#[derive(Clone, Copy)]
pub struct CallProgress {
    pub total: u64,
    pub done: u64,
}

/// Scores (query, document) pairs with `model` in the background worker, as one request;
/// `instruction` replaces an LLM reranker's own.
pub fn score(
    model: &str,
    instruction: Option<&str>,
    pairs: &[(&str, &str)],
    raw: bool,
    priority: Priority,
    call: CallProgress,
) -> SqlResult<(Vec<f32>, ScoreStats)> {
    let dir = crate::models::model_dir()?;
    let target = Target { dir: &dir.to_string_lossy(), model, instruction };
    send(target, pairs, wire::Kind::Score { raw }, priority, call, wire::read_response)
}

/// Which model a request is for: the session's model directory, the name, and the
/// instruction for an LLM reranker (None: the model's own).
#[derive(Clone, Copy)]
struct Target<'a> {
    dir: &'a str,
    model: &'a str,
    instruction: Option<&'a str>,
}

/// Width of each model's vectors, as the worker last said: (model directory, model name).
static WIDTHS: Mutex<Option<HashMap<(String, String), usize>>> = Mutex::new(None);

/// Embeds `texts` of `kind` with the bi-encoder `model` in the background worker, as one
/// request. The first request for a model reserves room for the width its files state
/// (or none); when that is too little, the worker answers with the width and the request
/// is sent again.
pub fn embed(
    model: &str,
    texts: &[&str],
    kind: TextKind,
    priority: Priority,
    call: CallProgress,
) -> SqlResult<(Vec<Vec<f32>>, ScoreStats)> {
    let dir = crate::models::model_dir()?;
    let key = (dir.to_string_lossy().into_owned(), model.to_string());
    let pairs: Vec<(&str, &str)> = texts.iter().map(|t| ("", *t)).collect();
    let known = WIDTHS.lock().as_ref().and_then(|w| w.get(&key).copied());
    let mut width = known.unwrap_or_else(|| crate::models::stated_dim(&dir, model).unwrap_or(0));
    // A model replaced by a wider one between two tries asks once more; more is a bug.
    for _ in 0..3 {
        let target = Target { dir: &key.0, model, instruction: None };
        let embedded = send(target, &pairs, wire::Kind::Embed { kind, width }, priority, call, wire::read_embedded)?;
        match embedded {
            wire::Embedded::Vectors(v, stats) => {
                if let Some(dim) = v.first().map(Vec::len) {
                    WIDTHS.lock().get_or_insert_with(HashMap::new).insert(key, dim);
                }
                return Ok((v, stats));
            }
            wire::Embedded::Resize(dim) => width = dim,
        }
    }
    Err(report(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the pg_rerank worker kept asking for room for wider vectors"))
}

/// Sends one request of `kind` to the worker, waits for it, and reads the answer with `read`.
fn send<T>(
    Target { dir, model, instruction }: Target<'_>,
    pairs: &[(&str, &str)],
    kind: wire::Kind,
    priority: Priority,
    call: CallProgress,
    read: impl FnOnce(&[u8]) -> Result<T, pg_rerank_engine::EngineError>,
) -> SqlResult<T> {
    let sh = shmem::get().ok_or_else(not_preloaded)?;
    // Bad names fail here, without a trip to the worker (which checks again).
    registry::validate_name(model).map_err(engine)?;
    let n = pairs.len();
    let ticket = admit(sh, n as u64)?;
    let slot = &sh.slots[ticket.slot];

    let size = wire::size(kind, dir, model, instruction, pairs);
    // SAFETY: dsm_create raises an error rather than return null (flags 0); the segment is
    // owned by the current resource owner, so an error before we detach frees it. Its
    // mapping is `size` bytes, page-aligned.
    let (seg, addr) = unsafe {
        let seg = pg_sys::dsm_create(size, 0);
        (seg, pg_sys::dsm_segment_address(seg).cast::<u8>())
    };
    let request = sh.next_request.fetch_add(1, Ordering::AcqRel) + 1;
    // SAFETY: the segment is ours alone until the slot is queued below; this borrow ends
    // before that.
    let segment = unsafe { std::slice::from_raw_parts_mut(addr, size) };
    wire::write_request(segment, request, kind, dir, model, instruction, pairs);

    slot.set_model(model);
    // SAFETY: seg is the live segment created above.
    slot.dsm.store(unsafe { pg_sys::dsm_segment_handle(seg) }, Ordering::Relaxed);
    slot.request.store(request, Ordering::Relaxed);
    slot.priority.store(u32::from(priority == Priority::Bulk), Ordering::Relaxed);
    slot.call_pairs.store(call.total, Ordering::Relaxed);
    slot.call_done.store(call.done, Ordering::Relaxed);
    slot.scored.store(0, Ordering::Relaxed);
    slot.generation.store(0, Ordering::Relaxed); // the worker that takes it writes its own
    slot.outcome.store(Outcome::InSegment);
    slot.started_at.store(0, Ordering::Relaxed);
    slot.queued_at.store(shmem::wall_us(), Ordering::Relaxed);
    slot.submitted_us.store(shmem::now_us(), Ordering::Relaxed);
    slot.state.store(SlotState::Queued);
    shmem::wake(sh.worker_procno.load(Ordering::Acquire));

    let timeout = guc::queue_timeout_ms();
    let mut idle_since: Option<i64> = None;
    loop {
        match slot.state.load() {
            SlotState::Done => break,
            // The worker that took the request is gone (it exited, or a new one runs):
            // nobody will answer it.
            SlotState::Running => {
                let taken_by = slot.generation.load(Ordering::Acquire);
                if !sh.worker_running() || (taken_by != 0 && taken_by != sh.generation()) {
                    return Err(worker_gone());
                }
                idle_since = None;
            }
            // A queued request waits for a (re)starting worker, up to queue_timeout.
            SlotState::Queued if !sh.worker_running() => {
                let since = *idle_since.get_or_insert_with(shmem::now_us);
                if (shmem::now_us() - since) / 1000 >= timeout {
                    return Err(report(
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        "the pg_rerank background worker is not running",
                    )
                    .set_detail(format!("The request waited {timeout} ms (pg_rerank.queue_timeout) for it to start."))
                    .set_hint("The server log tells why it stopped; a superuser can SET pg_rerank.execution = backend to score in this backend."));
                }
            }
            SlotState::Queued => idle_since = None,
            state => {
                return Err(report(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("pg_rerank request slot in unexpected state {state:?}"),
                ))
            }
        }
        wait(POLL_MS);
    }
    let result = match slot.outcome.load() {
        Outcome::Lost => {
            Err(report(PgSqlErrorCode::ERRCODE_SYSTEM_ERROR, "the pg_rerank worker could not read this request")
                .set_hint("Retry the call; the server log may tell more."))
        }
        // SAFETY: Done (acquire) orders the worker's writes before this read, and the worker
        // no longer touches the segment.
        Outcome::InSegment => read(unsafe { std::slice::from_raw_parts(addr, size) }).map_err(engine),
    };
    // SAFETY: the worker is done with the segment (Done); we created it and detach once.
    unsafe { pg_sys::dsm_detach(seg) };
    if let wire::Kind::Score { .. } = kind {
        // The wait in the queue, and the worker's time on the request (both wall clock).
        let (queued, started) = (slot.queued_at.load(Ordering::Relaxed), slot.started_at.load(Ordering::Relaxed));
        let started = if started > 0 { started } else { queued };
        let done = shmem::wall_us();
        let us = |a: i64, b: i64| Duration::from_micros(b.saturating_sub(a).max(0) as u64);
        stages::record(Stage::Queue, us(queued, started), n as u64, 0, 0);
        stages::record(Stage::Worker, us(started, done), n as u64, 0, 0);
    }
    drop(ticket); // frees the Done slot
    result
}

fn worker_gone() -> pgrx::pg_sys::panic::ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
        "the pg_rerank background worker exited before it finished this request",
    )
    .set_hint("The postmaster restarts it; retry the call. The server log tells why it exited.")
}
