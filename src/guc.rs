//! Every setting of pg_rerank, with its default and the trade-off behind it.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::{CStr, CString};

/// Where a call's pairs are scored.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Execution {
    /// The background worker when it is running, else this backend.
    #[name = c"auto"]
    Auto,
    /// Always this backend, with its own model session.
    #[name = c"backend"]
    Backend,
    /// Always the background worker; an error when it is not running.
    #[name = c"worker"]
    Worker,
}

static EXECUTION: GucSetting<Execution> = GucSetting::<Execution>::new(Execution::Auto);

/// Device of the worker's sessions: cpu, cuda or cuda:N. Backends always use the CPU.
static DEVICE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"cpu"));

/// Whether the worker runs a model on the CPU when its CUDA session cannot start.
static DEVICE_FALLBACK: GucSetting<bool> = GucSetting::<bool>::new(false);

/// ONNX Runtime threads of the worker's sessions (0: one per CPU core).
static WORKER_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// How long the worker waits for more requests before it starts a round that is not full.
static BATCH_WAIT: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Most pairs queued for or running in the worker at once.
static MAX_QUEUED_PAIRS: GucSetting<i32> = GucSetting::<i32>::new(20000);

/// How long a request waits for room in the worker's queue (or for the worker to start).
static QUEUE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Directory holding the models, one subdirectory each. Only a superuser may change it:
/// it decides which files the server reads. Unset by default.
static MODEL_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Model used when a call names none. Any user may set it per session.
static MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Bi-encoder used by embed() and embed_batch() when a call names none. Any user.
static EMBEDDING_MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Path of `libonnxruntime.so`. Server start only when preloaded (a process loads one
/// library once and cannot swap it); superuser only otherwise.
static ONNXRUNTIME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(DEFAULT_ORT));

/// ONNX Runtime intra-op threads per backend. 1 keeps a busy server predictable; raise it
/// for few, large reranks. Takes effect when a backend next loads the model. Superuser:
/// every thread is a core taken from the other sessions.
static THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// Token budget of one batch: rows x padded length. Larger batches amortise overhead but
/// hold more memory while they run (attention grows with the square of the length), so
/// only a superuser sets it.
static MAX_BATCH_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Most pairs in one batch.
static MAX_BATCH_PAIRS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Most documents one call may rerank: a guard against accidentally scoring a table.
static MAX_DOCS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Most pairs one rerank_pairs() call may score: bulk calls are meant for chunks of a
/// table (the dbt example sends 10,000 rows a call), not a whole table in one array.
static MAX_PAIRS: GucSetting<i32> = GucSetting::<i32>::new(100_000);

/// Priority of this session's calls in the worker.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum PrioritySetting {
    /// rerank(), rerank_score() and rerank_topk are interactive; rerank_pairs() is bulk.
    #[name = c"auto"]
    Auto,
    /// Every call of this session is bulk (a batch job that uses rerank()).
    #[name = c"bulk"]
    Bulk,
}

static PRIORITY: GucSetting<PrioritySetting> = GucSetting::<PrioritySetting>::new(PrioritySetting::Auto);

/// Percent of the worker's model time that bulk calls get while interactive ones wait.
static BULK_SHARE: GucSetting<i32> = GucSetting::<i32>::new(20);

/// Memory budget of the worker's loaded models, in MB; least recently used go first.
static WORKER_MEMORY: GucSetting<i32> = GucSetting::<i32>::new(2048);

/// How a document longer than the model's window is scored.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum LongDocuments {
    /// Split into windows that each fit beside the query; the best window's score counts.
    #[name = c"chunk"]
    Chunk,
    /// Cut at the window: only the beginning is read.
    #[name = c"truncate"]
    Truncate,
}

static LONG_DOCUMENTS: GucSetting<LongDocuments> = GucSetting::<LongDocuments>::new(LongDocuments::Chunk);

/// Most windows one document is scored in: each is a pair for the model, so this bounds
/// what one long document costs. Superuser: it protects the server.
static MAX_CHUNKS: GucSetting<i32> = GucSetting::<i32>::new(16);

/// Tokens a window rereads of the one before it, when it goes on in the same paragraph.
static CHUNK_OVERLAP: GucSetting<i32> = GucSetting::<i32>::new(64);

/// Windows of a long document the model reads: the best by lexical overlap with the query
/// (0: every window). A document with no more windows scores as with 0.
static CHUNK_SELECT: GucSetting<i32> = GucSetting::<i32>::new(pg_rerank_engine::chunk::DEFAULT_SELECT as i32);

/// Shared memory for the score cache, in kB (0: no cache). Server start when preloaded:
/// the table is made once, when the server starts (without preload there is no cache).
static CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);

/// Whether this session's calls read and fill the score cache.
static CACHE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Where `scripts/setup.sh` installs the library.
const DEFAULT_ORT: &CStr = c"/usr/local/lib/onnxruntime/libonnxruntime.so.1.32.0";

/// A server-start setting when the library is preloaded. Postgres allows no such setting
/// to a library loaded later (it ends the session), so there it is the superuser's.
fn server_start_context() -> GucContext {
    // SAFETY: a plain read of a flag Postgres sets while it loads preloaded libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        GucContext::Postmaster
    } else {
        GucContext::Suset
    }
}

pub fn init() {
    GucRegistry::define_string_guc(
        c"pg_rerank.model_dir",
        c"Directory holding the reranker models, one subdirectory each.",
        c"A model is a directory with model.onnx and tokenizer.json; nested names such as tiny/bert are allowed. Nothing outside this directory can be loaded.",
        &MODEL_DIR,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_rerank.model",
        c"Model used when a call names none.",
        c"A name relative to pg_rerank.model_dir.",
        &MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_rerank.embedding_model",
        c"Bi-encoder used by embed() and embed_batch() when a call names none.",
        c"A sentence-transformers model relative to pg_rerank.model_dir.",
        &EMBEDDING_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_rerank.onnxruntime",
        c"Path of the ONNX Runtime shared library (libonnxruntime.so).",
        c"Set at server start; loaded once per server process, on the first call that needs a model.",
        &ONNXRUNTIME,
        server_start_context(),
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.threads",
        c"ONNX Runtime threads per backend for one inference.",
        c"Applies when a backend next loads a model.",
        &THREADS,
        1,
        64,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.max_batch_tokens",
        c"Token budget of one inference batch (pairs x padded length); 0 chooses by device.",
        c"Pairs are sorted by length and cut into batches under this budget. 0: 2048 on the CPU, 16384 on a GPU.",
        &MAX_BATCH_TOKENS,
        0,
        1 << 20,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.max_batch_pairs",
        c"Most pairs in one inference batch; 0 chooses by device.",
        c"0: 4 on the CPU, 256 on a GPU.",
        &MAX_BATCH_PAIRS,
        0,
        4096,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.max_docs",
        c"Most documents one call may rerank.",
        c"Calls with more documents fail instead of running for a long time.",
        &MAX_DOCS,
        1,
        10_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_rerank.execution",
        c"Where pairs are scored: auto, backend or worker.",
        c"auto uses the background worker when it is running (shared_preload_libraries) and the calling backend otherwise.",
        &EXECUTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_rerank.device",
        c"Device of the background worker's model sessions: cpu, cuda or cuda:N.",
        c"CUDA needs the onnxruntime-gpu library in pg_rerank.onnxruntime (README.md, \"GPU\"). Backends always score on the CPU.",
        &DEVICE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_rerank.device_fallback",
        c"Whether the worker falls back to the CPU when its CUDA session cannot start.",
        c"Off: calls fail with the reason until the GPU works.",
        &DEVICE_FALLBACK,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.worker_threads",
        c"ONNX Runtime threads of the background worker (0: one per CPU core).",
        c"Also the number of threads that tokenize a round of requests.",
        &WORKER_THREADS,
        0,
        256,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.batch_wait",
        c"How long the worker gathers requests before it scores a round that is not full.",
        c"A few milliseconds let concurrent requests share batches.",
        &BATCH_WAIT,
        0,
        1000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.max_queued_pairs",
        c"Most pairs waiting for or being scored by the background worker.",
        c"A request that does not fit waits up to pg_rerank.queue_timeout, then fails. A request larger than this runs only when the queue is empty.",
        &MAX_QUEUED_PAIRS,
        1,
        10_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.queue_timeout",
        c"How long a request waits for room in the worker's queue.",
        c"Then it fails with SQLSTATE 53000. It also bounds the wait for a worker that is restarting.",
        &QUEUE_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.max_pairs",
        c"Most pairs one rerank_pairs() call may score.",
        c"Calls with more pairs fail with SQLSTATE 54000; score a table in chunks of rows.",
        &MAX_PAIRS,
        1,
        100_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_rerank.priority",
        c"Priority of this session's calls in the background worker: auto or bulk.",
        c"auto: rerank(), rerank_score() and rerank_topk go ahead of rerank_pairs(); bulk: every call waits behind interactive ones.",
        &PRIORITY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.bulk_share",
        c"Percent of the worker's model time guaranteed to bulk calls while interactive calls wait.",
        c"0: bulk runs only when no interactive pair waits; 100: bulk goes first.",
        &BULK_SHARE,
        0,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.worker_memory",
        c"Memory budget of the models the background worker keeps loaded.",
        c"Estimated from the model files (the graph once per session); the least recently used model is unloaded first. A model larger than the budget still loads, alone.",
        &WORKER_MEMORY,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_enum_guc(
        c"pg_rerank.long_documents",
        c"How a document longer than the model's window is scored: chunk or truncate.",
        c"chunk: split into windows that fit beside the query, starting at paragraphs, lines and sentences, and take the best window's score; truncate: read only the beginning.",
        &LONG_DOCUMENTS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.max_chunks",
        c"Most windows a long document is scored in.",
        c"Each window is one pair for the model; text beyond this many windows is not read.",
        &MAX_CHUNKS,
        1,
        1024,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.chunk_overlap",
        c"Tokens a window rereads of the window before it.",
        c"Only where the window goes on inside the same paragraph; at most half a window.",
        &CHUNK_OVERLAP,
        0,
        4096,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.chunk_select",
        c"Windows of a long document the model scores: those that share the most words with the query (0: every window).",
        c"A document split into more windows is scored on this many, chosen by BM25 over its own windows; one with no more scores as with 0. Fewer windows cost fewer model passes.",
        &CHUNK_SELECT,
        0,
        1024,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.cache_size",
        c"Shared memory for the background worker's score cache (0: no cache).",
        c"Set at server start. Each cached score takes 33 bytes; the least recently used go first.",
        &CACHE_SIZE,
        0,
        i32::MAX,
        server_start_context(),
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_bool_guc(
        c"pg_rerank.cache",
        c"Whether this session's calls use the score cache.",
        c"Only calls scored by the background worker use it; a cached score is the one the worker computed.",
        &CACHE,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init in the process's main thread, as Postgres expects.
    unsafe {
        pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_rerank".as_ptr());
    }
}

fn string(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get().map(|c| c.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
}

pub fn model_dir() -> Option<String> {
    string(&MODEL_DIR)
}

pub fn model() -> Option<String> {
    string(&MODEL)
}

pub fn embedding_model() -> Option<String> {
    string(&EMBEDDING_MODEL)
}

pub fn onnxruntime() -> Option<String> {
    string(&ONNXRUNTIME)
}

pub fn threads() -> usize {
    THREADS.get().max(1) as usize
}

/// Batch limits for a model on `device`: the settings, or where they are 0 the engine's
/// limits for that device.
pub fn batch_limits(device: pg_rerank_engine::Device) -> pg_rerank_engine::BatchLimits {
    let auto = pg_rerank_engine::BatchLimits::for_device(device);
    let pick = |v: i32, default: usize| if v > 0 { v as usize } else { default };
    pg_rerank_engine::BatchLimits {
        max_tokens: pick(MAX_BATCH_TOKENS.get(), auto.max_tokens),
        max_pairs: pick(MAX_BATCH_PAIRS.get(), auto.max_pairs),
    }
}

pub fn max_docs() -> usize {
    MAX_DOCS.get().max(1) as usize
}

pub fn execution() -> Execution {
    EXECUTION.get()
}

/// The device setting as written (parsed by the worker, which reports a bad value).
pub fn device() -> String {
    string(&DEVICE).unwrap_or_else(|| "cpu".to_string())
}

pub fn device_fallback() -> bool {
    DEVICE_FALLBACK.get()
}

pub fn worker_threads() -> usize {
    match WORKER_THREADS.get() {
        n if n > 0 => n as usize,
        _ => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }
}

pub fn batch_wait_ms() -> i64 {
    i64::from(BATCH_WAIT.get().max(0))
}

pub fn max_queued_pairs() -> u64 {
    MAX_QUEUED_PAIRS.get().max(1) as u64
}

pub fn queue_timeout_ms() -> i64 {
    i64::from(QUEUE_TIMEOUT.get().max(0))
}

pub fn max_pairs() -> usize {
    MAX_PAIRS.get().max(1) as usize
}

pub fn priority() -> PrioritySetting {
    PRIORITY.get()
}

pub fn bulk_share() -> f64 {
    f64::from(BULK_SHARE.get().clamp(0, 100)) / 100.0
}

pub fn worker_memory_bytes() -> u64 {
    u64::try_from(WORKER_MEMORY.get().max(1)).unwrap_or(1) << 20
}

pub fn long_documents() -> LongDocuments {
    LONG_DOCUMENTS.get()
}

pub fn chunk_options() -> pg_rerank_engine::ChunkOptions {
    pg_rerank_engine::ChunkOptions {
        max_chunks: MAX_CHUNKS.get().max(1) as usize,
        overlap: CHUNK_OVERLAP.get().max(0) as usize,
        select: CHUNK_SELECT.get().max(0) as usize,
    }
}

/// Bytes of shared memory for the score cache.
pub fn cache_size_bytes() -> usize {
    usize::try_from(CACHE_SIZE.get().max(0)).unwrap_or(0) << 10
}

pub fn cache() -> bool {
    CACHE.get()
}
