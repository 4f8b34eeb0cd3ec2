//! Every setting of pg_rerank, with its default and the trade-off behind it.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::{CStr, CString};

/// Directory holding the models, one subdirectory each. Only a superuser may change it:
/// it decides which files the server reads. Unset by default.
static MODEL_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Model used when a call names none. Any user may set it per session.
static MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Path of `libonnxruntime.so`. Superuser only; read once per backend, at first use.
static ONNXRUNTIME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(DEFAULT_ORT));

/// ONNX Runtime intra-op threads per backend. 1 keeps a busy server predictable; raise it
/// for few, large reranks. Takes effect when a backend next loads the model.
static THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// Token budget of one batch: rows x padded length. Larger batches amortise overhead but
/// hold more memory while they run.
static MAX_BATCH_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(16384);

/// Most pairs in one batch.
static MAX_BATCH_PAIRS: GucSetting<i32> = GucSetting::<i32>::new(256);

/// Most documents one call may rerank: a guard against accidentally scoring a table.
static MAX_DOCS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Where `scripts/setup.sh` installs the library.
const DEFAULT_ORT: &CStr = c"/usr/local/lib/onnxruntime/libonnxruntime.so.1.32.0";

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
        c"pg_rerank.onnxruntime",
        c"Path of the ONNX Runtime shared library (libonnxruntime.so).",
        c"Loaded once per server process, on the first call that needs a model.",
        &ONNXRUNTIME,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.threads",
        c"ONNX Runtime threads per backend for one inference.",
        c"Applies when a backend next loads a model.",
        &THREADS,
        1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.max_batch_tokens",
        c"Token budget of one inference batch (pairs x padded length).",
        c"Pairs are sorted by length and cut into batches under this budget.",
        &MAX_BATCH_TOKENS,
        64,
        1 << 20,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_rerank.max_batch_pairs",
        c"Most pairs in one inference batch.",
        c"",
        &MAX_BATCH_PAIRS,
        1,
        4096,
        GucContext::Userset,
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

pub fn onnxruntime() -> Option<String> {
    string(&ONNXRUNTIME)
}

pub fn threads() -> usize {
    THREADS.get().max(1) as usize
}

pub fn batch_limits() -> pg_rerank_engine::BatchLimits {
    pg_rerank_engine::BatchLimits {
        max_tokens: MAX_BATCH_TOKENS.get().max(1) as usize,
        max_pairs: MAX_BATCH_PAIRS.get().max(1) as usize,
    }
}

pub fn max_docs() -> usize {
    MAX_DOCS.get().max(1) as usize
}
