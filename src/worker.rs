//! The background worker: one model session per model for the whole server, fed with the
//! pairs of every waiting backend (and the texts to embed: a bi-encoder's requests run
//! through the same queue, batches and limits, their vectors written straight into each
//! request's segment).
//!
//! This file only moves bytes between shared memory and the engine: it takes queued
//! requests from their slots, tokenizes them, hands them to `pg_rerank_engine::Scheduler`
//! (which decides what runs next: interactive before bulk with a guaranteed share for bulk,
//! batches cut under the token and pair budget, new requests joining between batches),
//! runs the batches it cuts, and answers each request the moment its last pair is scored.
//! Between batches it drops requests whose owner withdrew or died, and frees slots whose
//! owner is gone. Only this process's main thread calls into Postgres: tokenizer and ONNX
//! Runtime threads only compute.

use crate::guc;
use crate::shmem::{self, ModelStats, Outcome, Shared, SlotState, WorkerState, SLOTS};
use crate::wire;
use parking_lot::Mutex;
use pg_rerank_engine::cache::{Failures, Lru};
use pg_rerank_engine::scheduler::{Group, RequestId};
use pg_rerank_engine::{
    finish, is_bi_encoder, registry, runtime, Batch, BatchLimits, Device, Embedder, Encoded, EncodedText, EngineError,
    ErrorKind, Finished, Model, Policy, Priority, Scheduler, ScoreStats, SessionOptions,
};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long a model that failed to load answers with that error before it is tried again.
const RETRY_LOAD: Duration = Duration::from_secs(10);
/// Most load failures remembered (names that do not exist are never remembered).
const MAX_FAILURES: usize = 32;
/// Pairs of searches tokenized between two rounds of the main loop (a few tens of
/// milliseconds), and pairs of bulk requests at least.
const TOKENIZE_SLICE: usize = 256;
const TOKENIZE_SLICE_BULK: usize = 64;
/// How long the worker waits for a batch's scores before it looks at its slots again (new
/// requests, cancels): the inference threads cannot set its latch (they never call into
/// Postgres), so a short wait keeps both prompt.
const COLLECT_WAIT: Duration = Duration::from_millis(2);
/// How often every slot is checked for an owner that is gone.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Registers the worker; called from `_PG_init` during shared_preload_libraries.
pub fn register() {
    BackgroundWorkerBuilder::new("pg_rerank worker")
        .set_type("pg_rerank worker")
        .set_library("pg_rerank")
        .set_function("pg_rerank_worker_main")
        .set_start_time(BgWorkerStartTime::PostmasterStart)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// Slots of the requests this process holds, for the exit callback.
static IN_FLIGHT: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Inference threads alive: the process waits for them before it exits (ONNX Runtime must
/// not be torn down under a running batch).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// How long the worker waits for running batches at exit or reload: far beyond any batch.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// (model directory, model name).
type Key = (String, String);

/// A loaded model: a cross-encoder scores pairs, a bi-encoder embeds texts.
#[derive(Clone)]
enum Loaded {
    Reranker(Arc<Model>),
    Embedder(Arc<Embedder>),
}

impl Loaded {
    fn device(&self) -> Device {
        match self {
            Loaded::Reranker(m) => m.device(),
            Loaded::Embedder(e) => e.device(),
        }
    }

    fn memory_bytes(&self) -> u64 {
        match self {
            Loaded::Reranker(m) => m.memory_bytes(),
            Loaded::Embedder(e) => e.memory_bytes(),
        }
    }

    /// The error for a request of `kind` that this model cannot serve, if any.
    fn refuses(&self, name: &str, kind: wire::Kind) -> Option<EngineError> {
        match (self, kind) {
            (Loaded::Embedder(_), wire::Kind::Score { .. }) => Some(registry::wrong_kind(name, true)),
            (Loaded::Reranker(_), wire::Kind::Embed { .. }) => Some(registry::wrong_kind(name, false)),
            _ => None,
        }
    }
}

/// A request's rows tokenized so far: pairs to score, or texts to embed.
enum Rows {
    Pairs(Vec<Encoded>),
    Texts(Vec<EncodedText>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Pairs(v) => v.len(),
            Rows::Texts(v) => v.len(),
        }
    }

    /// Token count and truncation of each row.
    fn lengths(&self) -> Vec<(usize, bool)> {
        match self {
            Rows::Pairs(v) => v.iter().map(|e| (e.ids.len(), e.truncated)).collect(),
            Rows::Texts(v) => v.iter().map(|e| (e.ids.len(), e.truncated)).collect(),
        }
    }
}

/// What an inference thread runs: copies of its rows, and the model.
enum Job {
    Score(Arc<Model>, Vec<Encoded>),
    Embed(Arc<Embedder>, Vec<EncodedText>),
}

/// What a batch gives back: a score per pair, or a vector per text.
enum Output {
    Scores(Vec<f32>),
    Vectors(Vec<Vec<f32>>),
}

type BatchResult = (u64, Result<Output, EngineError>);

/// A request the worker has taken from its slot.
struct Live {
    slot: usize,
    seg: *mut pg_sys::dsm_segment,
    buf: &'static mut [u8],
    kind: wire::Kind,
    /// The instruction an LLM reranker reads in place of its own.
    instruction: Option<String>,
    /// Width of the vectors of an embedding request (the model's, when it was taken).
    dim: usize,
    priority: Priority,
    group: Group,
    /// Pairs (or texts) of the request, and those tokenized so far.
    pairs: usize,
    encoded: Rows,
    stats: ScoreStats,
    model_stats: Option<&'static ModelStats>,
    submitted_us: i64,
    taken_us: i64,
}

struct Worker {
    shared: &'static Shared,
    generation: u64,
    sched: Scheduler,
    /// Every request taken from its slot: being tokenized, or in the scheduler.
    live: HashMap<RequestId, Live>,
    /// Taken requests not yet handed to the scheduler, in the order they came.
    tokenizing: Vec<RequestId>,
    /// Batches running on inference threads, and where their scores come back.
    running: HashMap<u64, Batch>,
    next_batch_id: u64,
    results_tx: mpsc::Sender<BatchResult>,
    results_rx: mpsc::Receiver<BatchResult>,
    models: Lru<Key, Loaded>,
    failures: Failures<Key, EngineError>,
    /// Batch-sharing group of each model that has loaded, and back.
    groups: HashMap<Key, Group>,
    keys: HashMap<Group, Key>,
    /// Device of each group's loaded model (batch limits follow it).
    devices: HashMap<Group, Device>,
    last_reap: Instant,
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_rerank_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(shared) = shmem::get() else {
        log!("pg_rerank worker: no shared memory (pg_rerank is not in shared_preload_libraries)");
        return;
    };
    // SAFETY: registered from the worker's main thread before it takes any request.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    shared.worker_state.store(WorkerState::Starting);
    let (procno, pid) = shmem::my_proc();
    shared.worker_procno.store(procno, Ordering::Release);
    let generation = shared.worker_starts.fetch_add(1, Ordering::AcqRel) + 1;
    shared.worker_pid.store(pid, Ordering::Release);

    let (results_tx, results_rx) = mpsc::channel();
    let mut w = Worker {
        shared,
        generation,
        sched: Scheduler::new(policy()),
        live: HashMap::new(),
        tokenizing: Vec::new(),
        running: HashMap::new(),
        next_batch_id: 0,
        results_tx,
        results_rx,
        models: Lru::new(guc::worker_memory_bytes()),
        failures: Failures::new(MAX_FAILURES, RETRY_LOAD),
        groups: HashMap::new(),
        keys: HashMap::new(),
        devices: HashMap::new(),
        last_reap: Instant::now(),
    };
    // Models load afresh: what an earlier worker cached may come from other files.
    if let Some(cache) = shmem::cache() {
        cache.invalidate();
    }
    // Slots an earlier worker left behind whose owners are gone or gave up.
    w.reap_all();
    w.preload();
    shared.worker_state.store(WorkerState::Ready);
    log!("pg_rerank worker ready: device {}, {} threads", guc::device(), guc::worker_threads());

    loop {
        if BackgroundWorker::sigterm_received() {
            // The batches running are answered; `on_exit` then waits for their threads.
            w.finish_running(DRAIN_LIMIT);
            break;
        }
        if BackgroundWorker::sighup_received() {
            w.reload();
        }
        let check_owners = w.last_reap.elapsed() >= REAP_EVERY;
        w.drop_withdrawn(check_owners);
        if check_owners {
            w.reap_all();
        }
        let was_idle = w.live.is_empty();
        w.admit();
        if w.live.is_empty() {
            shmem::wait_latch(REAP_EVERY.as_millis() as i64);
            continue;
        }
        if was_idle {
            w.gather();
        }
        // A slice of tokenizing between batches: a search that arrives is never held up
        // by a long request being tokenized, and signals and withdrawn requests are seen
        // every few milliseconds.
        w.tokenize();
        w.dispatch();
        // Scores of the batches running; while a request is still being tokenized, only
        // a glance, so that it goes on at once.
        let wait = if w.tokenizing.is_empty() { COLLECT_WAIT } else { Duration::ZERO };
        w.collect(wait);
    }
    // SAFETY: ends the worker the Postgres way, running the exit callbacks.
    unsafe { pg_sys::proc_exit(1) };
}

fn policy() -> Policy {
    Policy { bulk_share: guc::bulk_share() }
}

/// Says the worker is gone, then wakes the backends waiting on the requests it held:
/// they see it gone and fail with `client::worker_gone` (58000), and free their slots.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    let Some(sh) = shmem::get() else { return };
    sh.worker_state.store(WorkerState::Stopped);
    sh.worker_procno.store(-1, Ordering::Release);
    sh.worker_pid.store(0, Ordering::Release);
    for slot in IN_FLIGHT.lock().drain(..) {
        shmem::wake(sh.slots[slot].owner_procno.load(Ordering::Acquire));
    }
    // Also on ERROR and FATAL paths: let the inference threads end before exit() runs the
    // libraries' destructors under them.
    let start = Instant::now();
    while THREADS.load(Ordering::Acquire) > 0 && start.elapsed() < DRAIN_LIMIT {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn device_code(d: Device) -> i32 {
    match d {
        Device::Cpu => -1,
        Device::Cuda(n) => n,
    }
}

/// Attaches a request's segment; None when it is gone.
fn attach(handle: u32) -> Option<(*mut pg_sys::dsm_segment, &'static mut [u8])> {
    // SAFETY: dsm_attach returns null for a segment that no longer exists; a mapping we
    // got stays valid until we detach it, and only this thread touches it meanwhile (the
    // owner waits for Done before it reads).
    unsafe {
        let seg = pg_sys::dsm_attach(handle);
        if seg.is_null() {
            return None;
        }
        let len = pg_sys::dsm_segment_map_length(seg);
        Some((seg, std::slice::from_raw_parts_mut(pg_sys::dsm_segment_address(seg).cast::<u8>(), len)))
    }
}

fn detach(seg: *mut pg_sys::dsm_segment) {
    // SAFETY: seg was attached by this process and is detached once.
    unsafe { pg_sys::dsm_detach(seg) };
}

impl Worker {
    fn options() -> Result<SessionOptions, EngineError> {
        let device = Device::parse(&guc::device()).ok_or_else(|| {
            EngineError::new(ErrorKind::Device, format!("invalid pg_rerank.device \"{}\"", guc::device()))
                .with_detail("Valid values are cpu, cuda and cuda:N.")
        })?;
        // On the CPU, one single-threaded session per thread, running batches side by side;
        // a GPU gets one session.
        let threads = guc::worker_threads();
        let (intra_threads, sessions) = match device {
            Device::Cpu => (1, threads),
            Device::Cuda(_) => (threads, 1),
        };
        Ok(SessionOptions { intra_threads, sessions, device, ..Default::default() })
    }

    /// Loads the default models (pg_rerank.model, pg_rerank.embedding_model) so the first
    /// call does not wait for them.
    fn preload(&mut self) {
        let Some(dir) = guc::model_dir() else { return };
        for name in [guc::model(), guc::embedding_model()].into_iter().flatten() {
            if let Err(e) = self.model(&(dir.clone(), name.clone())) {
                warning!("pg_rerank worker could not load model \"{name}\": {e}");
            }
        }
    }

    fn reload(&mut self) {
        // SAFETY: re-reads the configuration file, from the worker's main thread.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        // The old sessions go before the new ones load (a GPU may not hold both).
        self.finish_running(DRAIN_LIMIT);
        self.models.clear();
        // The files may have changed: nothing cached is served until models load again.
        if let Some(cache) = shmem::cache() {
            cache.invalidate();
        }
        self.failures.clear();
        self.devices.clear();
        self.models.set_budget(guc::worker_memory_bytes());
        self.sched.set_policy(policy());
        self.publish_cache();
        self.preload();
        self.shared.reloads.fetch_add(1, Ordering::AcqRel);
        log!("pg_rerank worker reloaded its settings and models: device {}", guc::device());
    }

    /// Loads the model at `name`: a bi-encoder when its directory is a sentence-transformers
    /// one, else a cross-encoder.
    fn load(&self, root: &str, name: &str) -> Result<Loaded, EngineError> {
        let at = registry::resolve(Path::new(root), name)?;
        let env = runtime::init(Path::new(&guc::onnxruntime().unwrap_or_default()))?;
        let opts = SessionOptions { onnx_file: at.onnx_file, ..Self::options()? };
        let dir = at.dir;
        let bi_encoder = is_bi_encoder(&dir);
        let load = |opts: &SessionOptions| -> Result<Loaded, EngineError> {
            Ok(if bi_encoder {
                Loaded::Embedder(Arc::new(Embedder::load(env, name, &dir, opts)?))
            } else {
                Loaded::Reranker(Arc::new(Model::load(env, name, &dir, opts)?))
            })
        };
        match load(&opts) {
            Err(e) if e.kind == ErrorKind::Device && guc::device_fallback() => {
                let msg = format!("model \"{name}\" runs on the CPU: {e}");
                warning!("pg_rerank worker: {msg}");
                self.shared.set_status(&msg);
                load(&SessionOptions { device: Device::Cpu, ..opts })
            }
            other => other,
        }
    }

    fn publish_cache(&self) {
        self.shared.models_loaded.store(self.models.len() as u32, Ordering::Relaxed);
        self.shared.model_bytes.store(self.models.bytes(), Ordering::Relaxed);
        self.shared.failures_cached.store(self.failures.len() as u32, Ordering::Relaxed);
    }

    /// The loaded model of `key`, loading it (and evicting others past the memory budget)
    /// if needed. The name is checked before anything touches the disk; names that do not
    /// exist are not remembered, other failures for RETRY_LOAD.
    fn model(&mut self, key: &Key) -> Result<Loaded, EngineError> {
        registry::validate_name(&key.1)?;
        if let Some(m) = self.models.get(key) {
            return Ok(m.clone());
        }
        if let Some(e) = self.failures.get(key, Instant::now()) {
            return Err(e);
        }
        let result = self.load(&key.0, &key.1);
        match &result {
            Ok(m) => {
                // Scores cached so far may come from other files than the ones just
                // loaded (swapped on disk before a reload or an eviction): none of them
                // is served again, and scores of requests read before this never enter.
                if let Some(cache) = shmem::cache() {
                    cache.invalidate();
                }
                let next = self.groups.len() as Group;
                let group = *self.groups.entry(key.clone()).or_insert(next);
                self.keys.insert(group, key.clone());
                self.devices.insert(group, m.device());
                // Models of taken requests (tokenizing or queued) stay.
                let busy: std::collections::HashSet<Group> = self.live.values().map(|l| l.group).collect();
                let groups = &self.groups;
                let pinned = |k: &Key| groups.get(k).is_some_and(|g| busy.contains(g));
                for old in self.models.insert(key.clone(), m.clone(), m.memory_bytes(), &pinned) {
                    log!("pg_rerank worker unloaded model \"{}\" (pg_rerank.worker_memory)", old.1);
                    if let Some(st) = self.shared.find_stats(&old.1) {
                        st.evictions.fetch_add(1, Ordering::Relaxed);
                        st.device.store(-2, Ordering::Relaxed);
                    }
                }
                // Only models that load get a statistics entry: typos must not use them up.
                if let Some(st) = self.shared.model_stats(&key.1) {
                    st.loads.fetch_add(1, Ordering::Relaxed);
                    st.device.store(device_code(m.device()), Ordering::Relaxed);
                }
                // After a fallback to the CPU, the status keeps saying why.
                let fell_back =
                    m.device() == Device::Cpu && matches!(Self::options().map(|o| o.device), Ok(Device::Cuda(_)));
                if !fell_back {
                    self.shared.set_status("");
                }
            }
            Err(e) if matches!(e.kind, ErrorKind::ModelNotFound | ErrorKind::InvalidName) => {}
            Err(e) => {
                self.shared.set_status(&format!("model \"{}\": {e}", key.1));
                self.failures.insert(key.clone(), e.clone(), Instant::now());
            }
        }
        self.publish_cache();
        result
    }

    fn limits(devices: &HashMap<Group, Device>, group: Group) -> BatchLimits {
        guc::batch_limits(devices.get(&group).copied().unwrap_or(Device::Cpu))
    }

    /// Takes every queued request, or answers it at once when it cannot run (unreadable,
    /// bad or unknown model). Taken requests wait in `tokenizing` until `tokenize` hands
    /// them to the scheduler.
    fn admit(&mut self) {
        let sh = self.shared;
        for i in 0..SLOTS {
            let s = &sh.slots[i];
            if s.state.load() != SlotState::Queued || !s.state.cas(SlotState::Queued, SlotState::Running) {
                continue;
            }
            s.generation.store(self.generation, Ordering::Release);
            s.started_at.store(shmem::wall_us(), Ordering::Relaxed);
            let Some((seg, buf)) = attach(s.dsm.load(Ordering::Acquire)) else {
                // The segment is gone: never write to it. Its owner, if alive, gets an error.
                self.lost(i);
                continue;
            };
            IN_FLIGHT.lock().push(i);
            let request = s.request.load(Ordering::Acquire);
            let priority = if s.priority.load(Ordering::Relaxed) == 1 { Priority::Bulk } else { Priority::Interactive };
            // The request id guards against a segment handle reused since it was queued.
            let parsed = wire::read_request(buf)
                .filter(|r| r.request == request)
                .map(|r| ((r.dir.to_string(), r.model.to_string()), r.kind, r.instruction.map(str::to_string), r.pairs.len()));
            let Some((key, kind, instruction, pairs)) = parsed else {
                detach(seg);
                IN_FLIGHT.lock().retain(|&x| x != i);
                self.lost(i);
                continue;
            };
            let mut live = Live {
                slot: i,
                seg,
                buf,
                kind,
                instruction,
                dim: 0,
                priority,
                group: 0,
                pairs,
                encoded: match kind {
                    wire::Kind::Score { .. } => Rows::Pairs(Vec::with_capacity(pairs)),
                    wire::Kind::Embed { .. } => Rows::Texts(Vec::with_capacity(pairs)),
                },
                stats: ScoreStats::default(),
                model_stats: None,
                submitted_us: s.submitted_us.load(Ordering::Relaxed),
                taken_us: shmem::now_us(),
            };
            // Backends refuse an over-long instruction before they send it; never render one
            // into every pair's prompt here all the same.
            if let Err(e) = pg_rerank_engine::model::check_instruction(live.instruction.as_deref()) {
                self.answer(live, Err(e), 0);
                continue;
            }
            match self.model(&key) {
                Ok(m) => {
                    live.model_stats = self.shared.model_stats(&key.1);
                    if let Some(e) = m.refuses(&key.1, kind) {
                        self.answer(live, Err(e), 0);
                        continue;
                    }
                    if let (Loaded::Embedder(e), wire::Kind::Embed { width, .. }) = (&m, kind) {
                        if e.dim() > width {
                            // Not counted: the backend asks again at once, with room.
                            let written = wire::put_resize(live.buf, e.dim());
                            self.hand_back(live, written);
                            continue;
                        }
                        live.dim = e.dim();
                    }
                    live.group = self.groups[&key];
                    self.live.insert(request, live);
                    self.tokenizing.push(request);
                }
                Err(e) => {
                    live.model_stats = self.shared.find_stats(&key.1);
                    self.answer(live, Err(e), 0);
                }
            }
        }
    }

    /// Tokenizes a slice of the taken requests (searches first) and hands each fully
    /// tokenized one to the scheduler.
    fn tokenize(&mut self) {
        // Requests withdrawn meanwhile are gone from `live`.
        self.tokenizing.retain(|id| self.live.contains_key(id));
        // Searches first, fewest pairs left first; then bulk, first come first served.
        let mut order = self.tokenizing.clone();
        order.sort_by_key(|id| {
            let l = &self.live[id];
            match l.priority {
                Priority::Interactive => (0, l.pairs - l.encoded.len(), l.taken_us),
                Priority::Bulk => (1, 0, l.taken_us),
            }
        });
        let mut left = TOKENIZE_SLICE;
        let mut bulk_left = TOKENIZE_SLICE_BULK;
        for id in order {
            let budget = match self.live[&id].priority {
                Priority::Interactive => &mut left,
                // Bulk gets at least its own slice, so searches cannot hold it off.
                Priority::Bulk => {
                    bulk_left = bulk_left.max(left);
                    &mut bulk_left
                }
            };
            if *budget == 0 {
                continue;
            }
            let group = self.live[&id].group;
            let key = self.keys[&group].clone();
            let model = match self.model(&key) {
                Ok(m) => m,
                Err(e) => {
                    self.withdraw_tokenizing(id, Err(e));
                    continue;
                }
            };
            let live = self.live.get_mut(&id).expect("tokenizing requests are live");
            // The model may have been reloaded as another kind or width since admit.
            if let Some(e) = model.refuses(&key.1, live.kind) {
                self.withdraw_tokenizing(id, Err(e));
                continue;
            }
            if let (Loaded::Embedder(e), wire::Kind::Embed { width, .. }) = (&model, live.kind) {
                if e.dim() > width {
                    let e = EngineError::new(
                        ErrorKind::Inference,
                        format!("model \"{}\" was reloaded with wider vectors", key.1),
                    )
                    .with_detail("Retry the call.");
                    self.withdraw_tokenizing(id, Err(e));
                    continue;
                }
                live.dim = e.dim();
            }
            let from = live.encoded.len();
            let to = live.pairs.min(from.saturating_add(*budget));
            *budget -= to - from;
            let started = shmem::now_us();
            let read = wire::read_pairs(live.buf, from, to);
            let encoded: Result<(), EngineError> = match (read, &model, &mut live.encoded, live.kind) {
                (None, ..) => {
                    Err(EngineError::new(ErrorKind::Inference, "the pg_rerank worker could not read the request"))
                }
                (Some(pairs), Loaded::Reranker(m), Rows::Pairs(rows), _) => m
                    .encode_many_with(&pairs, guc::worker_threads(), live.instruction.as_deref())
                    .into_iter()
                    .collect::<Result<Vec<Encoded>, EngineError>>()
                    .map(|more| rows.extend(more)),
                (Some(pairs), Loaded::Embedder(e), Rows::Texts(rows), wire::Kind::Embed { kind, .. }) => pairs
                    .iter()
                    .map(|(_, text)| e.encode(text, kind))
                    .collect::<Result<Vec<EncodedText>, EngineError>>()
                    .map(|more| rows.extend(more)),
                _ => Err(EngineError::new(ErrorKind::Inference, "the pg_rerank worker mixed up a request's kind")),
            };
            if let Some(st) = live.model_stats {
                st.tokenize_us.fetch_add((shmem::now_us() - started).max(0) as u64, Ordering::Relaxed);
            }
            match encoded {
                // One bad pair fails its own request, never a neighbour's.
                Err(e) => self.withdraw_tokenizing(id, Err(e)),
                Ok(()) => {
                    if live.encoded.len() < live.pairs {
                        continue;
                    }
                    let rows = live.encoded.lengths();
                    live.stats = ScoreStats {
                        pairs: rows.len(),
                        tokens: rows.iter().map(|r| r.0).sum(),
                        truncated: rows.iter().filter(|r| r.1).count(),
                        batches: 0,
                    };
                    let lengths = rows.iter().map(|r| r.0).collect();
                    let priority = live.priority;
                    self.tokenizing.retain(|&x| x != id);
                    if let Some(f) = self.sched.submit(id, group, priority, lengths) {
                        self.finished(f);
                    }
                }
            }
        }
    }

    /// Answers a request that was still being tokenized.
    fn withdraw_tokenizing(&mut self, id: RequestId, result: Result<Vec<f32>, EngineError>) {
        self.tokenizing.retain(|&x| x != id);
        if let Some(live) = self.live.remove(&id) {
            self.answer(live, result, 0);
        }
    }

    /// A request whose segment could not be read: never written; its owner, if alive, is
    /// told, else the slot is freed.
    fn lost(&self, slot: usize) {
        let s = &self.shared.slots[slot];
        s.outcome.store(Outcome::Lost);
        if s.owner_alive() && s.state.cas(SlotState::Running, SlotState::Done) {
            shmem::wake(s.owner_procno.load(Ordering::Acquire));
        } else {
            self.shared.free_slot(slot);
        }
    }

    /// After a start with nothing to do, waits up to pg_rerank.batch_wait for more requests,
    /// until a batch for every session waits.
    fn gather(&mut self) {
        let wait_ms = guc::batch_wait_ms();
        if wait_ms == 0 {
            return;
        }
        let deadline = shmem::now_us() + wait_ms * 1000;
        // One full batch per session of the model first in line.
        let full = self.live.values().next().map_or(0, |l| {
            let device = self.devices.get(&l.group).copied().unwrap_or(Device::Cpu);
            let sessions = if device == Device::Cpu { guc::worker_threads() } else { 1 };
            guc::batch_limits(device).max_pairs * sessions
        });
        while self.live.values().map(|l| l.pairs).sum::<usize>() < full {
            let left_ms = (deadline - shmem::now_us()) / 1000;
            if left_ms <= 0 {
                break;
            }
            shmem::wait_latch(left_ms);
            self.admit();
        }
    }

    /// Batches that may run at once: one per session (CPU: `worker_threads`; a GPU: one),
    /// and as many more waiting for a session, so that a session never idles between two
    /// batches while this thread is busy.
    fn capacity(&self) -> usize {
        let sessions = match Device::parse(&guc::device()) {
            Some(Device::Cuda(_)) => 1,
            _ => guc::worker_threads(),
        };
        2 * sessions
    }

    /// Starts the batches the scheduler cuts, each on an inference thread of its own that
    /// only runs the model and sends the scores back, until `capacity` run.
    fn dispatch(&mut self) {
        let capacity = self.capacity();
        while self.running.len() < capacity {
            let devices = &self.devices;
            let Some(batch) = self.sched.next_batch(&|g| Self::limits(devices, g)) else { return };
            let key = self.keys[&batch.group].clone();
            let model = match self.model(&key) {
                Ok(m) => m,
                Err(e) => {
                    // The model was reloaded and broke meanwhile: fail its requests.
                    for f in self.sched.complete(&batch, Err(e.clone())) {
                        self.finished(f);
                    }
                    for id in self.sched.ids_in(batch.group) {
                        if let Some(f) = self.sched.fail(id, e.clone()) {
                            self.finished(f);
                        }
                    }
                    continue;
                }
            };
            // The thread owns copies of its rows: a request may be answered (and its
            // tokens dropped) while a batch holding some of its rows still runs.
            let job = match self.job(&batch, model, &key.1) {
                Ok(job) => job,
                Err(e) => {
                    for f in self.sched.complete(&batch, Err(e)) {
                        self.finished(f);
                    }
                    continue;
                }
            };
            self.next_batch_id += 1;
            let (id, tx) = (self.next_batch_id, self.results_tx.clone());
            THREADS.fetch_add(1, Ordering::AcqRel);
            let spawned = std::thread::Builder::new().name("pg_rerank inference".into()).spawn(move || {
                // Every batch reports back, even one whose thread panicked: its requests
                // get an error instead of waiting for ever.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &job {
                    Job::Score(model, rows) => model.run_rows(&rows.iter().collect::<Vec<_>>()).map(Output::Scores),
                    Job::Embed(model, rows) => model.run_rows(&rows.iter().collect::<Vec<_>>()).map(Output::Vectors),
                }))
                .unwrap_or_else(|_| Err(EngineError::new(ErrorKind::Inference, "an inference thread panicked")));
                // The model (perhaps its last reference, after a reload) goes before the
                // thread says it is done: the process never exits under ONNX Runtime.
                drop(job);
                // The receiver lives as long as the worker process.
                let _ = tx.send((id, result));
                THREADS.fetch_sub(1, Ordering::AcqRel);
            });
            match spawned {
                Ok(_) => {
                    self.running.insert(id, batch);
                }
                Err(e) => {
                    THREADS.fetch_sub(1, Ordering::AcqRel);
                    let e = EngineError::new(ErrorKind::Inference, "could not start an inference thread")
                        .with_detail(e.to_string());
                    for f in self.sched.complete(&batch, Err(e)) {
                        self.finished(f);
                    }
                    return;
                }
            }
        }
    }

    /// What an inference thread runs for `batch` on `model`: copies of its rows. An error
    /// when the model is not of the kind the rows were tokenized for (it was reloaded as
    /// the other kind meanwhile).
    fn job(&self, batch: &Batch, model: Loaded, name: &str) -> Result<Job, EngineError> {
        match model {
            Loaded::Reranker(m) => {
                let rows = batch
                    .rows
                    .iter()
                    .map(|r| match &self.live[&r.request].encoded {
                        Rows::Pairs(v) => Ok(v[r.pair].clone()),
                        Rows::Texts(_) => Err(registry::wrong_kind(name, false)),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Job::Score(m, rows))
            }
            Loaded::Embedder(e) => {
                let rows = batch
                    .rows
                    .iter()
                    .map(|r| match &self.live[&r.request].encoded {
                        Rows::Texts(v) => Ok(v[r.pair].clone()),
                        Rows::Pairs(_) => Err(registry::wrong_kind(name, true)),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Job::Embed(e, rows))
            }
        }
    }

    /// Writes the vectors of an embedding batch into their requests' segments (rows of
    /// requests withdrawn meanwhile are skipped) and returns a placeholder score per row:
    /// the scheduler only counts rows, the vectors never pass through it. A batch whose
    /// vectors are not as wide as its requests expect fails.
    fn place_vectors(&mut self, batch: &Batch, vectors: Vec<Vec<f32>>) -> Result<Vec<f32>, EngineError> {
        if vectors.len() == batch.rows.len() {
            for (row, v) in batch.rows.iter().zip(&vectors) {
                if let Some(l) = self.live.get(&row.request).filter(|l| l.dim != v.len()) {
                    return Err(EngineError::new(
                        ErrorKind::Inference,
                        format!("the model returned vectors of {} dimensions instead of {}", v.len(), l.dim),
                    ));
                }
            }
            for (row, v) in batch.rows.iter().zip(&vectors) {
                if let Some(l) = self.live.get_mut(&row.request) {
                    if !wire::put_vector(l.buf, row.pair, v) {
                        return Err(EngineError::new(
                            ErrorKind::Inference,
                            "the pg_rerank worker could not write a vector",
                        ));
                    }
                }
            }
        }
        // A wrong count is reported by the scheduler.
        Ok(vec![0.0; vectors.len()])
    }

    /// Takes the scores of finished batches, waiting up to `wait` for the first, and
    /// answers every request they complete.
    fn collect(&mut self, wait: Duration) {
        let mut next = if self.running.is_empty() { None } else { self.results_rx.recv_timeout(wait).ok() };
        while let Some((id, result)) = next {
            if let Some(batch) = self.running.remove(&id) {
                let result = match result {
                    Ok(Output::Scores(scores)) => Ok(scores),
                    Ok(Output::Vectors(vectors)) => self.place_vectors(&batch, vectors),
                    Err(e) => Err(e),
                };
                let scored = result.as_ref().is_ok_and(|v| v.len() == batch.rows.len());
                self.count_batch(&batch, scored);
                for f in self.sched.complete(&batch, result) {
                    self.finished(f);
                }
            }
            next = self.results_rx.try_recv().ok();
        }
    }

    /// Collects the batches running, for up to `limit`.
    fn finish_running(&mut self, limit: Duration) {
        let start = Instant::now();
        while !self.running.is_empty() && start.elapsed() < limit {
            self.collect(Duration::from_millis(100));
        }
    }

    fn count_batch(&self, batch: &Batch, scored: bool) {
        // Any request of the batch still taken names the model (all are of one model).
        let stats = batch.rows.iter().find_map(|r| self.live.get(&r.request)).and_then(|l| l.model_stats);
        if let Some(st) = stats {
            st.batches.fetch_add(1, Ordering::Relaxed);
            st.batched_pairs.fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
            if batch.shared() {
                st.shared_batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Progress counts pairs scored; a failed batch runs again (its pairs alone).
        for row in batch.rows.iter().filter(|_| scored) {
            if let Some(l) = self.live.get(&row.request) {
                self.shared.slots[l.slot].scored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn finished(&mut self, f: Finished) {
        if let Some(live) = self.live.remove(&f.id) {
            self.answer(live, f.result, f.batches);
        }
    }

    /// Writes a request's result into its segment and hands the slot back (or frees it,
    /// if the owner withdrew meanwhile).
    fn answer(&mut self, live: Live, result: Result<Vec<f32>, EngineError>, batches: usize) {
        let now = shmem::now_us();
        if let Some(st) = live.model_stats {
            match &result {
                Ok(_) => {
                    st.requests.fetch_add(1, Ordering::Relaxed);
                    match live.priority {
                        Priority::Interactive => st.interactive_requests.fetch_add(1, Ordering::Relaxed),
                        Priority::Bulk => st.bulk_requests.fetch_add(1, Ordering::Relaxed),
                    };
                    st.pairs.fetch_add(live.stats.pairs as u64, Ordering::Relaxed);
                    st.tokens.fetch_add(live.stats.tokens as u64, Ordering::Relaxed);
                    st.truncated.fetch_add(live.stats.truncated as u64, Ordering::Relaxed);
                    let wait = (live.taken_us - live.submitted_us).max(0) as u64;
                    let run = (now - live.taken_us).max(0) as u64;
                    st.queue_wait_us.fetch_add(wait, Ordering::Relaxed);
                    st.inference_us.fetch_add(run, Ordering::Relaxed);
                    st.queue_wait.record(wait);
                    st.inference.record(run);
                }
                Err(_) => {
                    st.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let stats = ScoreStats { batches, ..live.stats };
        let written = match (result, live.kind) {
            (Ok(raw_scores), wire::Kind::Score { raw }) => {
                let scores: Vec<f32> = raw_scores.into_iter().map(|s| finish(s, raw)).collect();
                wire::put_done(live.buf, &scores, &stats)
            }
            // The vectors are in the segment already (`place_vectors`).
            (Ok(_), wire::Kind::Embed { .. }) => wire::put_embedded(live.buf, live.dim, &stats),
            (Err(e), _) => wire::put_error(live.buf, &e),
        };
        self.hand_back(live, written);
    }

    /// Hands an answered request's slot back to its owner (or frees it, if the owner
    /// withdrew meanwhile); `written`: the answer is in the segment.
    fn hand_back(&self, live: Live, written: bool) {
        let s = &self.shared.slots[live.slot];
        if !written {
            s.outcome.store(Outcome::Lost);
        }
        detach(live.seg);
        IN_FLIGHT.lock().retain(|&x| x != live.slot);
        if s.state.cas(SlotState::Running, SlotState::Done) {
            shmem::wake(s.owner_procno.load(Ordering::Acquire));
        } else {
            self.shared.free_slot(live.slot);
        }
    }

    /// Drops the requests whose owner withdrew them (cancel, timeout, error) or, when
    /// `check_owners`, died: their pairs are not scored, their slots are freed.
    fn drop_withdrawn(&mut self, check_owners: bool) {
        let gone: Vec<RequestId> = self
            .live
            .iter()
            .filter(|(_, l)| {
                let s = &self.shared.slots[l.slot];
                s.state.load() == SlotState::Cancelled || (check_owners && !s.owner_alive())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.sched.cancel(id);
            let Some(live) = self.live.remove(&id) else { continue };
            if let Some(st) = live.model_stats {
                st.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            detach(live.seg);
            IN_FLIGHT.lock().retain(|&x| x != live.slot);
            self.shared.free_slot(live.slot);
        }
    }

    /// Frees the slots that nobody will free: cancelled ones an earlier worker held, and
    /// any whose owner is gone without releasing it.
    fn reap_all(&mut self) {
        self.last_reap = Instant::now();
        let mine: Vec<usize> = self.live.values().map(|l| l.slot).collect();
        for i in 0..SLOTS {
            let s = &self.shared.slots[i];
            let state = s.state.load();
            if state == SlotState::Free || mine.contains(&i) {
                continue;
            }
            let orphan = match state {
                // Withdrawn from an earlier worker: its owner is done with it.
                SlotState::Cancelled => true,
                _ => {
                    // Pid 0: its owner is claiming it or freeing it right now. Otherwise the
                    // slot is an orphan only if that very owner is dead: read the pid once,
                    // and again after the check, so that a slot freed and claimed by another
                    // backend meanwhile is never taken from it.
                    let pid = s.owner_pid.load(Ordering::Acquire);
                    pid != 0
                        && !shmem::process_alive(pid, s.owner_procno.load(Ordering::Acquire))
                        && s.owner_pid.load(Ordering::Acquire) == pid
                        && s.state.load() == state
                }
            };
            // Take the slot from the state we saw, so a live owner's move wins.
            if orphan && s.state.cas(state, SlotState::Claimed) {
                self.shared.free_slot(i);
                self.shared.reaped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
