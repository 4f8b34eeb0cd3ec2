//! The shared memory between backends and the background worker, present only when
//! pg_rerank is in shared_preload_libraries: worker status, a fixed table of request
//! slots, and per-model statistics. Every field is an atomic or guarded by a protocol
//! written beside it, so nothing here takes a lock; the request texts and the scores
//! travel in a DSM segment per request (`wire`).
//!
//! A slot moves Free -> Claimed -> Queued (owner) -> Running (worker) -> Done (worker)
//! -> Free (owner). An owner that gives up moves Queued or Claimed -> Free itself, or
//! Running -> Cancelled, and the worker then frees the slot. Whoever frees a slot
//! subtracts its pairs from `queued_pairs`, so the count stays exact. Each slot records
//! its owner (pid and PGPROC number): the owner's exit callback releases it even when the
//! owner dies of FATAL (which does not unwind), and the worker reaps slots whose owner is
//! gone all the same.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::UnsafeCell;
use std::marker::PhantomData;
use pg_rerank_engine::score_cache::{self, ScoreCache};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

pub const SLOTS: usize = 1024;
pub const MODELS: usize = 16;
/// A model's statistics entry and a request slot hold its whole name: a name clipped
/// here would miss its own entry (which is found by the full name) and share one with
/// every name of the same beginning.
const NAME_LEN: usize = pg_rerank_engine::registry::MAX_NAME_LEN;
const SLOT_NAME_LEN: usize = pg_rerank_engine::registry::MAX_NAME_LEN;
const STATUS_LEN: usize = 1024;
const BUCKETS: usize = 128;

/// Changes whenever the layout below changes: a library of another layout refuses to
/// use a segment it did not make (a server restart is needed after an upgrade anyway,
/// since the library is preloaded).
const MAGIC: u32 = 0x5052_4b53; // "PRKS"
pub const LAYOUT_VERSION: u32 = 6;

/// The named LWLock tranche (of one lock) that serialises the initialisation of the
/// segment: requested by name instead of indexing `MainLWLockArray` with
/// `AddinShmemInitLock`'s number, which is a macro bindgen cannot see and whose position
/// is PostgreSQL's to change.
const LOCK_TRANCHE: &std::ffi::CStr = c"pg_rerank";

/// A state machine stored in an `AtomicU32`.
pub trait StateCode: Copy + PartialEq {
    fn code(self) -> u32;
    fn from_code(c: u32) -> Self;
}

#[repr(transparent)]
pub struct AtomicState<T: StateCode>(AtomicU32, PhantomData<T>);

impl<T: StateCode> AtomicState<T> {
    pub fn load(&self) -> T {
        T::from_code(self.0.load(Ordering::Acquire))
    }
    pub fn store(&self, v: T) {
        self.0.store(v.code(), Ordering::Release);
    }
    /// Moves `from` -> `to`; false when the state was not `from`.
    pub fn cas(&self, from: T, to: T) -> bool {
        self.0.compare_exchange(from.code(), to.code(), Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Free,
    /// Taken by its owner, who is writing the request.
    Claimed,
    /// Waiting for the worker.
    Queued,
    /// The worker holds it.
    Running,
    /// Answered: the owner reads the result and frees it.
    Done,
    /// Withdrawn by its owner while running: the worker frees it.
    Cancelled,
}

impl StateCode for SlotState {
    fn code(self) -> u32 {
        self as u32
    }
    fn from_code(c: u32) -> Self {
        match c {
            1 => Self::Claimed,
            2 => Self::Queued,
            3 => Self::Running,
            4 => Self::Done,
            5 => Self::Cancelled,
            _ => Self::Free,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    NotStarted,
    Starting,
    Ready,
    Stopped,
}

impl StateCode for WorkerState {
    fn code(self) -> u32 {
        self as u32
    }
    fn from_code(c: u32) -> Self {
        match c {
            1 => Self::Starting,
            2 => Self::Ready,
            3 => Self::Stopped,
            _ => Self::NotStarted,
        }
    }
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            Self::NotStarted => "not started",
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopped => "stopped",
        }
    }
}

/// How a Done slot was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The result is in the request's segment.
    InSegment,
    /// The worker could not attach the segment: nothing was written to it.
    Lost,
}

impl StateCode for Outcome {
    fn code(self) -> u32 {
        self as u32
    }
    fn from_code(c: u32) -> Self {
        if c == 1 {
            Self::Lost
        } else {
            Self::InSegment
        }
    }
}

#[repr(C)]
pub struct Slot {
    pub state: AtomicState<SlotState>,
    /// 0 interactive, 1 bulk (`pg_rerank_engine::Priority`).
    pub priority: AtomicU32,
    pub owner_pid: AtomicI32,
    /// PGPROC number of the owner, whose latch the worker sets when done.
    pub owner_procno: AtomicI32,
    /// The owner's current role (Oid) when it claimed the slot: pg_rerank_progress shows
    /// a request to that role and to pg_read_all_stats only.
    pub owner_role: AtomicU32,
    /// The worker generation (`Shared::worker_starts`) that took the request.
    pub generation: AtomicU64,
    pub dsm: AtomicU32,
    /// Pairs counted in `queued_pairs` for this slot.
    pub pairs: AtomicU32,
    /// Pairs of this request scored so far (progress).
    pub scored: AtomicU32,
    pub outcome: AtomicState<Outcome>,
    /// Unique request number, also written in the segment.
    pub request: AtomicU64,
    /// Pairs of the whole SQL call this request is part of, and pairs of that call
    /// answered before it (a bulk call is sent in several requests).
    pub call_pairs: AtomicU64,
    pub call_done: AtomicU64,
    /// Monotonic microseconds when queued (comparable across processes).
    pub submitted_us: AtomicI64,
    /// Unix microseconds when queued and when the worker took it (0: not yet), for display.
    pub queued_at: AtomicI64,
    pub started_at: AtomicI64,
    model_len: AtomicU32,
    /// Written by the owner while Claimed, read by the progress view.
    model: UnsafeCell<[u8; SLOT_NAME_LEN]>,
}

impl Slot {
    /// Owner only, while the slot is Claimed: records the model name for the progress view.
    pub fn set_model(&self, name: &str) {
        let key = crate::wire::clip(name, SLOT_NAME_LEN).as_bytes();
        // SAFETY: only the owner writes `model`, and only while the slot is Claimed;
        // readers (the progress view) tolerate a torn name and check `request` around it.
        unsafe { (&mut *self.model.get())[..key.len()].copy_from_slice(key) };
        self.model_len.store(key.len() as u32, Ordering::Release);
    }

    pub fn model(&self) -> String {
        let len = (self.model_len.load(Ordering::Acquire) as usize).min(SLOT_NAME_LEN);
        // SAFETY: plain bytes; a concurrent rewrite can only give another name's bytes,
        // which the caller detects by `request` changing.
        let bytes = unsafe { (&(*self.model.get()))[..len].to_vec() };
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether the process that owns the slot is still alive.
    pub fn owner_alive(&self) -> bool {
        process_alive(self.owner_pid.load(Ordering::Acquire), self.owner_procno.load(Ordering::Acquire))
    }
}

/// Whether the process `pid`, whose PGPROC number was `procno`, is still alive: its PGPROC
/// still carries its pid and the pid still exists.
pub fn process_alive(pid: i32, procno: i32) -> bool {
    if pid <= 0 || procno < 0 {
        return false;
    }
    // SAFETY: ProcGlobal is set up before any backend runs; procno is checked against
    // allProcCount; reading a PGPROC's pid is a plain load.
    let same = unsafe {
        let global = pg_sys::ProcGlobal;
        (procno as u32) < (*global).allProcCount && (*(*global).allProcs.add(procno as usize)).pid == pid
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM };
    same && exists
}

/// Latency histogram: bucket i holds values up to 2^(i/4) microseconds (19% apart).
#[repr(C)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        if us <= 1 {
            return 0;
        }
        ((us as f64).log2() * 4.0).ceil().min((BUCKETS - 1) as f64) as usize
    }

    pub fn record(&self, us: u64) {
        self.buckets[Self::bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound, in milliseconds, of the bucket holding quantile `q`.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(2f64.powf(i as f64 / 4.0) / 1000.0);
            }
        }
        None
    }

    fn reset(&self) {
        self.buckets.iter().for_each(|b| b.store(0, Ordering::Relaxed));
    }
}

/// Counters of one model in the worker. Only the worker registers entries and adds to
/// them; any backend may read or reset them.
#[repr(C)]
pub struct ModelStats {
    /// 0 free, 1 being named by the worker, 2 in use.
    used: AtomicU32,
    name_len: AtomicU32,
    name: UnsafeCell<[u8; NAME_LEN]>,
    /// -1: CPU; n >= 0: CUDA device n; -2: not loaded.
    pub device: AtomicI32,
    pub loads: AtomicU64,
    pub evictions: AtomicU64,
    pub requests: AtomicU64,
    pub interactive_requests: AtomicU64,
    pub bulk_requests: AtomicU64,
    pub pairs: AtomicU64,
    pub tokens: AtomicU64,
    pub truncated: AtomicU64,
    /// Documents longer than the window that were scored in windows, and the windows
    /// (counted by the backends that split them; each window is one of `pairs`).
    pub split_documents: AtomicU64,
    pub windows: AtomicU64,
    pub batches: AtomicU64,
    pub batched_pairs: AtomicU64,
    /// Batches holding pairs of more than one request.
    pub shared_batches: AtomicU64,
    pub errors: AtomicU64,
    pub cancelled: AtomicU64,
    /// Documents answered from the score cache, and those it did not hold (counted by the
    /// backends that asked).
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub queue_wait_us: AtomicU64,
    /// From taking a request to its last score, tokenization included.
    pub inference_us: AtomicU64,
    /// Time the worker spent tokenizing.
    pub tokenize_us: AtomicU64,
    pub queue_wait: Histogram,
    pub inference: Histogram,
}

impl ModelStats {
    pub fn name(&self) -> Option<String> {
        if self.used.load(Ordering::Acquire) != 2 {
            return None;
        }
        let len = (self.name_len.load(Ordering::Relaxed) as usize).min(NAME_LEN);
        // SAFETY: written once, before `used` became 2 (release), never changed after.
        let bytes = unsafe { &(&*self.name.get())[..len] };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    pub fn reset(&self) {
        for c in [
            &self.requests,
            &self.interactive_requests,
            &self.bulk_requests,
            &self.pairs,
            &self.tokens,
            &self.truncated,
            &self.split_documents,
            &self.windows,
            &self.batches,
            &self.batched_pairs,
            &self.shared_batches,
            &self.errors,
            &self.cancelled,
            &self.cache_hits,
            &self.cache_misses,
            &self.queue_wait_us,
            &self.inference_us,
            &self.tokenize_us,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.queue_wait.reset();
        self.inference.reset();
    }
}

#[repr(C)]
pub struct Shared {
    magic: u32,
    layout_version: u32,
    pub worker_pid: AtomicI32,
    pub worker_procno: AtomicI32,
    pub worker_state: AtomicState<WorkerState>,
    /// Times the worker has started since the server (or its shared memory) started: the
    /// worker generation that slots record.
    pub worker_starts: AtomicU64,
    /// Configuration reloads (SIGHUP) the worker has applied.
    pub reloads: AtomicU64,
    pub next_request: AtomicU64,
    pub queued_pairs: AtomicU64,
    /// The worker's model cache: models held, their estimated bytes, remembered failures.
    pub models_loaded: AtomicU32,
    pub model_bytes: AtomicU64,
    pub failures_cached: AtomicU32,
    /// Slots freed by the worker because their owner was gone.
    pub reaped: AtomicU64,
    /// Seqlock over `status`: odd while the worker writes it.
    status_seq: AtomicU64,
    status: UnsafeCell<[u8; STATUS_LEN]>,
    pub models: [ModelStats; MODELS],
    pub slots: [Slot; SLOTS],
}

// SAFETY: every field is atomic or guarded by a protocol documented on it.
unsafe impl Sync for Shared {}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
/// The score cache's table (header, then its sets), when pg_rerank.cache_size > 0.
static CACHE: AtomicPtr<score_cache::Header> = AtomicPtr::new(std::ptr::null_mut());
static CACHE_SETS: AtomicUsize = AtomicUsize::new(0);
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// The shared state, when pg_rerank was preloaded.
pub fn get() -> Option<&'static Shared> {
    let p = SHARED.load(Ordering::Acquire);
    // SAFETY: set once per shared-memory lifetime, in the postmaster before any fork (or
    // in this process's startup hook), to a segment that lives as long as the process.
    unsafe { p.as_ref() }
}

/// The score cache, when pg_rerank was preloaded with pg_rerank.cache_size > 0.
pub fn cache() -> Option<ScoreCache<'static>> {
    let header = CACHE.load(Ordering::Acquire);
    let sets = CACHE_SETS.load(Ordering::Acquire);
    if header.is_null() || sets == 0 {
        return None;
    }
    // SAFETY: set once per shared-memory lifetime by the startup hook, to a table of
    // `bytes_for(sets)` bytes it initialised: the header, then `sets` sets right after it
    // (both 8-byte aligned: ShmemInitStruct gives MAXALIGN'd memory and the header's size
    // is a multiple of 8). Every field of both is atomic.
    let table = unsafe {
        let first = header.add(1).cast::<score_cache::Set>();
        (&*header, std::slice::from_raw_parts(first, sets))
    };
    ScoreCache::new(table.0, table.1)
}

/// Sets of the score cache that pg_rerank.cache_size pays for.
fn cache_sets() -> usize {
    score_cache::sets_for(crate::guc::cache_size_bytes())
}

/// Asks for the shared memory; called from `_PG_init` during shared_preload_libraries.
pub fn install_hooks() {
    // SAFETY: the hooks are process globals that Postgres reads only in the postmaster,
    // single-threaded, after _PG_init; chaining keeps other libraries' hooks.
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_hook);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_hook);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request_hook() {
    // SAFETY: called by Postgres in the shmem request phase, where this is allowed.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
        if cache_sets() > 0 {
            pg_sys::RequestAddinShmemSpace(score_cache::bytes_for(cache_sets()));
        }
        pg_sys::RequestNamedLWLockTranche(LOCK_TRANCHE.as_ptr(), 1);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup_hook() {
    // SAFETY: called by Postgres once shared memory exists; the segments we get have the
    // sizes we requested (the score cache's from the same setting, which only changes at
    // server start), and the lock of our named tranche (requested in request_hook,
    // allocated before this hook runs) serialises its initialisation.
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
        let lock = &raw mut (*pg_sys::GetNamedLWLockTranche(LOCK_TRANCHE.as_ptr())).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let size = std::mem::size_of::<Shared>();
        let p = pg_sys::ShmemInitStruct(c"pg_rerank".as_ptr(), size, &mut found).cast::<Shared>();
        if !found {
            // All-zero is a valid value of every field: free slots, no worker.
            std::ptr::write_bytes(p.cast::<u8>(), 0, size);
            (*p).magic = MAGIC;
            (*p).layout_version = LAYOUT_VERSION;
            (*p).worker_procno.store(-1, Ordering::Relaxed);
            for m in &(*p).models {
                m.device.store(-2, Ordering::Relaxed);
            }
        }
        let sets = cache_sets();
        let mut cache = std::ptr::null_mut();
        if sets > 0 {
            let size = score_cache::bytes_for(sets);
            let mut found = false;
            cache = pg_sys::ShmemInitStruct(c"pg_rerank score cache".as_ptr(), size, &mut found)
                .cast::<score_cache::Header>();
            if !found {
                // All zero is a table of empty sets; init makes the header's epoch live.
                std::ptr::write_bytes(cache.cast::<u8>(), 0, size);
                (*cache).init(sets);
            }
        }
        pg_sys::LWLockRelease(lock);
        if (*p).magic != MAGIC || (*p).layout_version != LAYOUT_VERSION {
            warning!(
                "pg_rerank: shared memory has layout {} but this library uses {}: restart the server",
                (*p).layout_version,
                LAYOUT_VERSION
            );
            return;
        }
        CACHE_SETS.store(sets, Ordering::Release);
        CACHE.store(cache, Ordering::Release);
        SHARED.store(p, Ordering::Release);
    }
}

/// Monotonic microseconds: comparable across the processes of this machine, never going
/// back when the wall clock is set, callable from any thread.
pub fn now_us() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000 + ts.tv_nsec / 1000
}

/// Unix microseconds, for timestamps shown to users.
pub fn wall_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Sleeps on this process's latch for up to `ms` (or until it is set), then resets it.
/// Exits the process if the postmaster died.
pub fn wait_latch(ms: i64) {
    // SAFETY: MyLatch is this process's latch; WaitLatch and ResetLatch are called from
    // the process's main thread.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms.clamp(1, i64::from(i32::MAX)) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Sets the latch of the process with PGPROC number `procno`.
pub fn wake(procno: i32) {
    if procno < 0 {
        return;
    }
    // SAFETY: procno indexes ProcGlobal->allProcs (checked against allProcCount); setting
    // another process's latch is how Postgres processes wake each other.
    unsafe {
        let global = pg_sys::ProcGlobal;
        if (procno as u32) < (*global).allProcCount {
            pg_sys::SetLatch(&raw mut (*(*global).allProcs.add(procno as usize)).procLatch);
        }
    }
}

/// This process's PGPROC number and pid.
pub fn my_proc() -> (i32, i32) {
    // PostgreSQL 17 replaced PGPROC's pgprocno by the global MyProcNumber (the same
    // index into ProcGlobal->allProcs).
    #[cfg(feature = "pg15")]
    let procno = {
        // SAFETY: MyProc is set for every backend, background worker and parallel worker
        // before any of our code runs; reading it is a plain load.
        unsafe { (*pg_sys::MyProc).pgprocno }
    };
    #[cfg(not(feature = "pg15"))]
    let procno = {
        // SAFETY: MyProcNumber is set together with MyProc, before any of our code runs.
        unsafe { pg_sys::MyProcNumber }
    };
    // SAFETY: MyProcPid is set at process start; reading it is a plain load.
    (procno, unsafe { pg_sys::MyProcPid })
}

impl Shared {
    pub fn worker_running(&self) -> bool {
        self.worker_pid.load(Ordering::Acquire) != 0
    }

    pub fn generation(&self) -> u64 {
        self.worker_starts.load(Ordering::Acquire)
    }

    pub fn status(&self) -> String {
        loop {
            let before = self.status_seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: a plain copy; the sequence check below discards a torn read.
            let bytes = unsafe { *self.status.get() };
            std::sync::atomic::fence(Ordering::Acquire);
            if self.status_seq.load(Ordering::Relaxed) == before {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(STATUS_LEN);
                return String::from_utf8_lossy(&bytes[..end]).into_owned();
            }
        }
    }

    /// Worker only: the last problem it wants users to see ("" when none).
    pub fn set_status(&self, s: &str) {
        self.status_seq.fetch_add(1, Ordering::AcqRel);
        let mut bytes = [0u8; STATUS_LEN];
        let key = crate::wire::clip(s, STATUS_LEN - 1).as_bytes();
        bytes[..key.len()].copy_from_slice(key);
        // SAFETY: the worker is the only writer; the odd sequence number tells readers
        // to retry.
        unsafe { *self.status.get() = bytes };
        self.status_seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The statistics entry of `name`, if it has one.
    pub fn find_stats(&self, name: &str) -> Option<&ModelStats> {
        self.models.iter().find(|m| m.name().is_some_and(|n| n == name))
    }

    /// Worker only: the statistics entry of `name`, registering it on first use.
    pub fn model_stats(&self, name: &str) -> Option<&ModelStats> {
        let key = crate::wire::clip(name, NAME_LEN).as_bytes();
        for m in &self.models {
            match m.used.load(Ordering::Acquire) {
                2 if m.name().is_some_and(|have| have.as_bytes() == key) => return Some(m),
                0 => {
                    m.used.store(1, Ordering::Relaxed);
                    // SAFETY: only the worker registers entries, and no reader looks at
                    // the name before `used` becomes 2 below.
                    unsafe { (&mut *m.name.get())[..key.len()].copy_from_slice(key) };
                    m.name_len.store(key.len() as u32, Ordering::Relaxed);
                    m.reset();
                    m.used.store(2, Ordering::Release);
                    return Some(m);
                }
                _ => {}
            }
        }
        None
    }

    /// Frees a slot and gives its pairs back to the queue budget.
    pub fn free_slot(&self, i: usize) {
        let s = &self.slots[i];
        let pairs = u64::from(s.pairs.swap(0, Ordering::AcqRel));
        self.queued_pairs.fetch_sub(pairs, Ordering::AcqRel);
        s.owner_pid.store(0, Ordering::Release);
        s.state.store(SlotState::Free);
    }
}
