//! The shared memory between backends and the background worker, present only when
//! pg_rerank is in shared_preload_libraries: worker status, a fixed table of request
//! slots, and per-model statistics. Every field is an atomic, so nothing here takes a
//! lock; the request texts and the scores travel in a DSM segment per request (`wire`).
//!
//! A slot moves FREE -> CLAIMED -> QUEUED (backend) -> RUNNING (worker) -> DONE (worker)
//! -> FREE (backend). A backend that gives up moves QUEUED -> FREE itself, or RUNNING ->
//! CANCELLED, and the worker then frees the slot. Whoever frees a slot subtracts its pairs
//! from `queued_pairs`, so the count stays exact.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

pub const SLOTS: usize = 1024;
pub const MODELS: usize = 16;
const NAME_LEN: usize = 120;
const STATUS_LEN: usize = 1024;
const BUCKETS: usize = 128;

pub const FREE: u32 = 0;
pub const CLAIMED: u32 = 1;
pub const QUEUED: u32 = 2;
pub const RUNNING: u32 = 3;
pub const DONE: u32 = 4;
pub const CANCELLED: u32 = 5;

/// Worker states.
pub const W_NONE: u32 = 0;
pub const W_STARTING: u32 = 1;
pub const W_READY: u32 = 2;
pub const W_STOPPED: u32 = 3;

pub fn worker_state_name(s: u32) -> &'static str {
    match s {
        W_STARTING => "starting",
        W_READY => "ready",
        W_STOPPED => "stopped",
        W_NONE => "not started",
        _ => "unknown",
    }
}

#[repr(C)]
pub struct Slot {
    pub state: AtomicU32,
    /// PGPROC number of the backend, whose latch the worker sets when done.
    pub procno: AtomicI32,
    pub dsm: AtomicU32,
    pub pairs: AtomicU32,
    pub request: AtomicU64,
    pub submitted_us: AtomicI64,
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
    pub requests: AtomicU64,
    pub pairs: AtomicU64,
    pub tokens: AtomicU64,
    pub truncated: AtomicU64,
    pub batches: AtomicU64,
    pub batched_pairs: AtomicU64,
    /// Batches holding pairs of more than one request.
    pub shared_batches: AtomicU64,
    pub errors: AtomicU64,
    pub cancelled: AtomicU64,
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
        // Written once, before `used` became 2 (release), never changed after.
        let bytes = unsafe { &(&*self.name.get())[..len] };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    pub fn reset(&self) {
        for c in [
            &self.requests,
            &self.pairs,
            &self.tokens,
            &self.truncated,
            &self.batches,
            &self.batched_pairs,
            &self.shared_batches,
            &self.errors,
            &self.cancelled,
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
    pub worker_pid: AtomicI32,
    pub worker_procno: AtomicI32,
    pub worker_state: AtomicU32,
    /// Times the worker has started since the server (or its shared memory) started.
    pub worker_starts: AtomicU64,
    /// Configuration reloads (SIGHUP) the worker has applied.
    pub reloads: AtomicU64,
    pub next_request: AtomicU64,
    pub queued_pairs: AtomicU64,
    /// Seqlock over `status`: odd while the worker writes it.
    status_seq: AtomicU64,
    status: UnsafeCell<[u8; STATUS_LEN]>,
    pub models: [ModelStats; MODELS],
    pub slots: [Slot; SLOTS],
}

// Every field is atomic or guarded by a protocol documented on it.
unsafe impl Sync for Shared {}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// The shared state, when pg_rerank was preloaded.
pub fn get() -> Option<&'static Shared> {
    let p = SHARED.load(Ordering::Acquire);
    // Set once per shared-memory lifetime, in the postmaster, before any fork.
    unsafe { p.as_ref() }
}

/// Asks for the shared memory; called from `_PG_init` during shared_preload_libraries.
pub fn install_hooks() {
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_hook);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_hook);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request_hook() {
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup_hook() {
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let size = std::mem::size_of::<Shared>();
        let p = pg_sys::ShmemInitStruct(c"pg_rerank".as_ptr(), size, &mut found).cast::<Shared>();
        if !found {
            // All-zero is a valid value of every field: free slots, no worker.
            std::ptr::write_bytes(p.cast::<u8>(), 0, size);
            (*p).worker_procno.store(-1, Ordering::Relaxed);
            for m in &(*p).models {
                m.device.store(-2, Ordering::Relaxed);
            }
        }
        pg_sys::LWLockRelease(lock);
        SHARED.store(p, Ordering::Release);
    }
}

/// Microseconds since the Unix epoch: comparable across processes, callable from any thread.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Sleeps on this process's latch for up to `ms` (or until it is set), then resets it.
pub fn wait_latch(ms: i64) {
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms.max(1) as _,
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
    unsafe {
        let procs = (*pg_sys::ProcGlobal).allProcs;
        pg_sys::SetLatch(&raw mut (*procs.add(procno as usize)).procLatch);
    }
}

impl Shared {
    pub fn worker_running(&self) -> bool {
        self.worker_pid.load(Ordering::Acquire) != 0
    }

    pub fn status(&self) -> String {
        loop {
            let before = self.status_seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let bytes = unsafe { *self.status.get() };
            if self.status_seq.load(Ordering::Acquire) == before {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(STATUS_LEN);
                return String::from_utf8_lossy(&bytes[..end]).into_owned();
            }
        }
    }

    /// Worker only: the last problem it wants users to see ("" when none).
    pub fn set_status(&self, s: &str) {
        self.status_seq.fetch_add(1, Ordering::AcqRel);
        let mut bytes = [0u8; STATUS_LEN];
        let mut n = s.len().min(STATUS_LEN - 1);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
        unsafe { *self.status.get() = bytes };
        self.status_seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The statistics entry of `name`, if it has one.
    pub fn find_stats(&self, name: &str) -> Option<&ModelStats> {
        self.models.iter().find(|m| m.name().is_some_and(|n| n == name))
    }

    /// Worker only: the statistics entry of `name`, registering it on first use.
    pub fn model_stats(&self, name: &str) -> Option<&ModelStats> {
        let mut n = name.len().min(NAME_LEN);
        while !name.is_char_boundary(n) {
            n -= 1;
        }
        let key = &name.as_bytes()[..n];
        for m in &self.models {
            match m.used.load(Ordering::Acquire) {
                2 if m.name().is_some_and(|have| have.as_bytes() == key) => return Some(m),
                0 => {
                    m.used.store(1, Ordering::Relaxed);
                    unsafe { (&mut *m.name.get())[..n].copy_from_slice(key) };
                    m.name_len.store(n as u32, Ordering::Relaxed);
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
        s.state.store(FREE, Ordering::Release);
    }
}
