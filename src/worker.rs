//! The background worker: one model session per model for the whole server, fed with the
//! pairs of every waiting backend.
//!
//! Each round takes every queued request (after waiting up to pg_rerank.batch_wait for
//! more), tokenizes their pairs on worker threads, sorts all pairs of a model by length
//! and cuts them into batches under pg_rerank.max_batch_tokens / max_batch_pairs, like
//! text-embeddings-inference's queue. A request is answered as soon as its last pair is
//! scored; pairs of requests withdrawn meanwhile are skipped. Only this process's main
//! thread calls into Postgres: tokenizer and ONNX Runtime threads only compute.

use crate::guc;
use crate::shmem::{self, ModelStats, Shared, CANCELLED, DONE, QUEUED, RUNNING, SLOTS};
use crate::wire;
use parking_lot::Mutex;
use pg_rerank_engine::{
    batch, finish, registry, runtime, Device, EngineError, ErrorKind, Model, ScoreStats, SessionOptions,
};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a model that failed to load answers with that error before it is tried again.
const RETRY_LOAD: Duration = Duration::from_secs(10);

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

/// A request taken from its slot for this round.
struct Taken {
    slot: usize,
    seg: *mut pg_sys::dsm_segment,
    buf: &'static mut [u8],
    submitted_us: i64,
    taken_us: i64,
}

/// Slots of the requests this process holds, for the exit callback.
static IN_FLIGHT: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// A loaded model, or why it failed to load and when.
type Loaded = Result<Arc<Model>, (EngineError, Instant)>;

struct Worker {
    shared: &'static Shared,
    /// Keyed by (model directory, name).
    models: HashMap<(String, String), Loaded>,
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_rerank_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(shared) = shmem::get() else {
        log!("pg_rerank worker: no shared memory (pg_rerank is not in shared_preload_libraries)");
        return;
    };
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    shared.worker_state.store(shmem::W_STARTING, Ordering::Release);
    shared.worker_procno.store(unsafe { (*pg_sys::MyProc).pgprocno }, Ordering::Release);
    shared.worker_pid.store(unsafe { pg_sys::MyProcPid }, Ordering::Release);
    shared.worker_starts.fetch_add(1, Ordering::AcqRel);
    // A previous worker that died left cancelled slots behind: nobody else frees them.
    for i in 0..SLOTS {
        if shared.slots[i].state.load(Ordering::Acquire) == CANCELLED {
            shared.free_slot(i);
        }
    }

    let mut w = Worker { shared, models: HashMap::new() };
    w.preload();
    shared.worker_state.store(shmem::W_READY, Ordering::Release);
    log!("pg_rerank worker ready: device {}, {} threads", guc::device(), guc::worker_threads());

    loop {
        if BackgroundWorker::sigterm_received() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            w.models.clear();
            w.preload();
            shared.reloads.fetch_add(1, Ordering::AcqRel);
            log!("pg_rerank worker reloaded its settings and models: device {}", guc::device());
        }
        let mut round = w.take();
        if round.is_empty() {
            shmem::wait_latch(1000);
            continue;
        }
        let wait_ms = guc::batch_wait_ms();
        if wait_ms > 0 {
            let deadline = shmem::now_us() + wait_ms * 1000;
            // Gather until a full batch is queued, for the configured device.
            let device = Device::parse(&guc::device()).unwrap_or(Device::Cpu);
            let max_pairs = guc::batch_limits(device).max_pairs;
            loop {
                let pairs: usize =
                    round.iter().map(|t| shared.slots[t.slot].pairs.load(Ordering::Relaxed) as usize).sum();
                let left_ms = (deadline - shmem::now_us()) / 1000;
                if pairs >= max_pairs || left_ms <= 0 {
                    break;
                }
                shmem::wait_latch(left_ms);
                round.extend(w.take());
            }
        }
        w.serve(round);
    }
    unsafe { pg_sys::proc_exit(1) };
}

/// Says the worker is gone, then wakes the backends waiting on the requests it held:
/// they see it gone and fail with `client::worker_gone` (58000), and the next worker frees
/// their slots.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    let Some(sh) = shmem::get() else { return };
    sh.worker_state.store(shmem::W_STOPPED, Ordering::Release);
    sh.worker_procno.store(-1, Ordering::Release);
    sh.worker_pid.store(0, Ordering::Release);
    for slot in IN_FLIGHT.lock().drain(..) {
        shmem::wake(sh.slots[slot].procno.load(Ordering::Acquire));
    }
}

/// Answers a request and hands its slot back (or frees it, if it was withdrawn).
fn finish_request(sh: &Shared, slot: usize, buf: &mut [u8], result: Result<&ScoreStats, &EngineError>) {
    let s = &sh.slots[slot];
    match result {
        Ok(stats) => wire::put_done(buf, stats),
        Err(e) => wire::put_error(buf, e),
    }
    if s.state.compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        shmem::wake(s.procno.load(Ordering::Acquire));
    } else {
        sh.free_slot(slot);
    }
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

    /// Loads the default model so the first call does not wait for it.
    fn preload(&mut self) {
        if let (Some(dir), Some(name)) = (guc::model_dir(), guc::model()) {
            if let Err(e) = self.model(&dir, &name) {
                warning!("pg_rerank worker could not load model \"{name}\": {e}");
            }
        }
    }

    fn load(&self, root: &str, name: &str) -> Result<Arc<Model>, EngineError> {
        let at = registry::resolve(Path::new(root), name)?;
        let env = runtime::init(Path::new(&guc::onnxruntime().unwrap_or_default()))?;
        let opts = SessionOptions { onnx_file: at.onnx_file, ..Self::options()? };
        let dir = at.dir;
        match Model::load(env, name, &dir, &opts) {
            Err(e) if e.kind == ErrorKind::Device && guc::device_fallback() => {
                let msg = format!("model \"{name}\" runs on the CPU: {e}");
                warning!("pg_rerank worker: {msg}");
                self.shared.set_status(&msg);
                Ok(Arc::new(Model::load(env, name, &dir, &SessionOptions { device: Device::Cpu, ..opts })?))
            }
            other => other.map(Arc::new),
        }
    }

    fn model(&mut self, root: &str, name: &str) -> Result<Arc<Model>, EngineError> {
        let key = (root.to_string(), name.to_string());
        if let Some(l) = self.models.get(&key) {
            match l {
                Ok(m) => return Ok(Arc::clone(m)),
                Err((e, at)) if at.elapsed() < RETRY_LOAD => return Err(e.clone()),
                Err(_) => {}
            }
        }
        let result = self.load(root, name);
        // Only models that load get a statistics entry: typos must not use them up.
        let stats = if result.is_ok() { self.shared.model_stats(name) } else { None };
        match &result {
            Ok(m) => {
                if let Some(st) = stats {
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
            Err(e) => self.shared.set_status(&format!("model \"{name}\": {e}")),
        }
        let model = result.map_err(|e| (e, Instant::now()));
        self.models.insert(key, model.clone());
        model.map_err(|(e, _)| e)
    }

    /// Takes every queued request.
    fn take(&self) -> Vec<Taken> {
        let mut out = Vec::new();
        for i in 0..SLOTS {
            let s = &self.shared.slots[i];
            if s.state.load(Ordering::Acquire) != QUEUED
                || s.state.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err()
            {
                continue;
            }
            let seg = unsafe { pg_sys::dsm_attach(s.dsm.load(Ordering::Acquire)) };
            if seg.is_null() {
                // The backend gave up and its segment is gone.
                self.withdraw(i);
                continue;
            }
            let len = unsafe { pg_sys::dsm_segment_map_length(seg) };
            let buf = unsafe { std::slice::from_raw_parts_mut(pg_sys::dsm_segment_address(seg).cast::<u8>(), len) };
            IN_FLIGHT.lock().push(i);
            out.push(Taken {
                slot: i,
                seg,
                buf,
                submitted_us: s.submitted_us.load(Ordering::Relaxed),
                taken_us: shmem::now_us(),
            });
        }
        out
    }

    /// A request in RUNNING that we will not answer: hand it back as cancelled.
    fn withdraw(&self, slot: usize) {
        let s = &self.shared.slots[slot];
        if s.state.compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            shmem::wake(s.procno.load(Ordering::Acquire));
        } else {
            self.shared.free_slot(slot);
        }
    }

    fn cancelled(&self, slot: usize) -> bool {
        self.shared.slots[slot].state.load(Ordering::Acquire) == CANCELLED
    }

    fn serve(&mut self, round: Vec<Taken>) {
        // Group by model; parse each request (borrowing its segment).
        let mut by_model: HashMap<(String, String), Vec<usize>> = HashMap::new();
        let mut reqs = Vec::with_capacity(round.len());
        for (k, t) in round.iter().enumerate() {
            // The request id guards against a segment handle reused since it was queued.
            let expected = self.shared.slots[t.slot].request.load(Ordering::Acquire);
            match wire::read_request(t.buf).filter(|r| r.request == expected) {
                Some(r) => {
                    by_model.entry((r.dir.to_string(), r.model.to_string())).or_default().push(k);
                    reqs.push(Some(r));
                }
                None => reqs.push(None),
            }
        }
        let mut outcome: Vec<Option<Result<ScoreStats, EngineError>>> = vec![None; round.len()];
        for (k, r) in reqs.iter().enumerate() {
            if r.is_none() {
                outcome[k] = Some(Err(EngineError::new(
                    ErrorKind::Inference,
                    "the pg_rerank worker could not read the request",
                )));
            }
        }
        let mut writes: Vec<Vec<(usize, f32)>> = vec![Vec::new(); round.len()];
        for ((dir, name), members) in &by_model {
            let model = match self.model(dir, name) {
                Ok(m) => m,
                Err(e) => {
                    if let Some(st) = self.shared.find_stats(name) {
                        st.errors.fetch_add(members.len() as u64, Ordering::Relaxed);
                    }
                    for &k in members {
                        outcome[k] = Some(Err(e.clone()));
                    }
                    continue;
                }
            };
            let stats = self.shared.model_stats(name);
            self.run_model(&model, stats, members, &round, &reqs, &mut outcome, &mut writes);
        }
        drop(reqs);
        for (k, t) in round.into_iter().enumerate() {
            let Taken { slot, seg, buf, .. } = t;
            for &(i, s) in &writes[k] {
                wire::put_score(buf, i, s);
            }
            IN_FLIGHT.lock().retain(|&s| s != slot);
            match outcome[k].take() {
                Some(Ok(st)) => finish_request(self.shared, slot, buf, Ok(&st)),
                Some(Err(e)) => finish_request(self.shared, slot, buf, Err(&e)),
                None => self.withdraw(slot),
            }
            unsafe { pg_sys::dsm_detach(seg) };
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_model(
        &self,
        model: &Model,
        stats: Option<&ModelStats>,
        members: &[usize],
        round: &[Taken],
        reqs: &[Option<wire::Request<'_>>],
        outcome: &mut [Option<Result<ScoreStats, EngineError>>],
        writes: &mut [Vec<(usize, f32)>],
    ) {
        // Every pair of the model's requests: (request, doc index).
        let mut owner = Vec::new();
        let mut texts = Vec::new();
        for &k in members {
            let r = reqs[k].as_ref().expect("parsed");
            for (i, pair) in r.pairs.iter().enumerate() {
                owner.push((k, i));
                texts.push(*pair);
            }
        }
        let threads = guc::worker_threads();
        let tokenize_start = shmem::now_us();
        let encoded = model.encode_many(&texts, threads);
        if let Some(st) = stats {
            st.tokenize_us.fetch_add((shmem::now_us() - tokenize_start).max(0) as u64, Ordering::Relaxed);
        }
        let mut per_req: HashMap<usize, ScoreStats> = HashMap::new();
        let mut remaining: HashMap<usize, usize> = HashMap::new();
        let mut failed: HashMap<usize, EngineError> = HashMap::new();
        let mut ok_idx = Vec::new();
        for (p, e) in encoded.iter().enumerate() {
            let k = owner[p].0;
            match e {
                Ok(e) => {
                    let st = per_req.entry(k).or_default();
                    st.pairs += 1;
                    st.tokens += e.ids.len();
                    st.truncated += usize::from(e.truncated);
                    *remaining.entry(k).or_default() += 1;
                    ok_idx.push(p);
                }
                Err(err) => {
                    failed.entry(k).or_insert_with(|| err.clone());
                }
            }
        }
        for &k in members {
            if let Some(e) = failed.remove(&k) {
                outcome[k] = Some(Err(e));
                remaining.remove(&k);
            } else if !remaining.contains_key(&k) {
                outcome[k] = Some(Ok(ScoreStats::default()));
            }
        }
        let live: Vec<usize> = ok_idx.into_iter().filter(|p| remaining.contains_key(&owner[*p].0)).collect();
        let lengths: Vec<usize> = live.iter().map(|&p| encoded[p].as_ref().map_or(0, |e| e.ids.len())).collect();
        let limits = guc::batch_limits(model.device());
        let mut done_at: HashMap<usize, i64> = HashMap::new();
        let plan = batch::plan(&lengths, limits);
        // As many batches at once as the model has sessions.
        for wave in plan.chunks(model.parallel()) {
            let wave: Vec<Vec<usize>> = wave
                .iter()
                .map(|rows| {
                    rows.iter()
                        .map(|&r| live[r])
                        .filter(|&p| {
                            let k = owner[p].0;
                            remaining.contains_key(&k) && outcome[k].is_none() && !self.cancelled(round[k].slot)
                        })
                        .collect::<Vec<usize>>()
                })
                .filter(|rows| !rows.is_empty())
                .collect();
            let batches: Vec<Vec<_>> =
                wave.iter().map(|rows| rows.iter().filter_map(|&p| encoded[p].as_ref().ok()).collect()).collect();
            let results = model.run_many(&batches);
            for (rows, result) in wave.into_iter().zip(results) {
                let mut owners: Vec<usize> = rows.iter().map(|&p| owner[p].0).collect();
                owners.dedup();
                if let Some(st) = stats {
                    st.batches.fetch_add(1, Ordering::Relaxed);
                    st.batched_pairs.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    if owners.iter().any(|&k| k != owners[0]) {
                        st.shared_batches.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match result {
                    Ok(scores) => {
                        for (&p, s) in rows.iter().zip(scores) {
                            let (k, i) = owner[p];
                            let raw = reqs[k].as_ref().is_some_and(|r| r.raw);
                            writes[k].push((i, finish(s, raw)));
                            // A batch of the same wave may have failed the request already.
                            let Some(left) = remaining.get_mut(&k) else {
                                continue;
                            };
                            *left -= 1;
                            if *left == 0 {
                                remaining.remove(&k);
                                done_at.insert(k, shmem::now_us());
                                outcome[k] = Some(Ok(per_req.get(&k).copied().unwrap_or_default()));
                            }
                        }
                        for k in owners {
                            if let Some(st) = per_req.get_mut(&k) {
                                st.batches += 1;
                            }
                        }
                    }
                    Err(e) => {
                        for k in owners {
                            if remaining.remove(&k).is_some() {
                                outcome[k] = Some(Err(e.clone()));
                            }
                        }
                    }
                }
            }
        }
        // A request with no outcome was withdrawn by its backend.
        let now = shmem::now_us();
        for &k in members {
            let t = &round[k];
            let Some(st) = stats else { continue };
            match &outcome[k] {
                Some(Ok(s)) => {
                    st.requests.fetch_add(1, Ordering::Relaxed);
                    st.pairs.fetch_add(s.pairs as u64, Ordering::Relaxed);
                    st.tokens.fetch_add(s.tokens as u64, Ordering::Relaxed);
                    st.truncated.fetch_add(s.truncated as u64, Ordering::Relaxed);
                    let wait = (t.taken_us - t.submitted_us).max(0) as u64;
                    let run = (done_at.get(&k).copied().unwrap_or(now) - t.taken_us).max(0) as u64;
                    st.queue_wait_us.fetch_add(wait, Ordering::Relaxed);
                    st.inference_us.fetch_add(run, Ordering::Relaxed);
                    st.queue_wait.record(wait);
                    st.inference.record(run);
                }
                Some(Err(_)) => {
                    st.errors.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    st.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn device_code(d: Device) -> i32 {
    match d {
        Device::Cpu => -1,
        Device::Cuda(n) => n,
    }
}
