//! The models this backend has loaded. A backend loads a model once, on first use, and
//! keeps it; changing pg_rerank.threads or pg_rerank.model_dir loads it afresh.

use crate::error::{engine, report, SqlResult};
use crate::guc;
use parking_lot::Mutex;
use pg_rerank_engine::registry::{self, Location};
use pg_rerank_engine::{runtime, Embedder, Model, SessionOptions, Splitter};
use pgrx::PgSqlErrorCode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Hash, PartialEq, Eq, Clone)]
struct Key {
    at: Location,
    threads: usize,
}

static LOADED: Mutex<Option<HashMap<Key, Arc<Model>>>> = Mutex::new(None);

/// The model directory setting, or an error saying how to set it.
pub fn model_dir() -> SqlResult<PathBuf> {
    guc::model_dir().map(PathBuf::from).ok_or_else(|| {
        report(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "pg_rerank.model_dir is not set").set_hint(
            "A superuser sets it in postgresql.conf or with ALTER SYSTEM SET pg_rerank.model_dir = '/path/to/models'.",
        )
    })
}

/// The model to use: the argument when given, else pg_rerank.model.
pub fn model_name(arg: Option<&str>) -> SqlResult<String> {
    match arg {
        Some(m) => Ok(m.to_string()),
        None => guc::model().ok_or_else(|| {
            report(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "no model selected")
                .set_detail("The call names no model and pg_rerank.model is not set.")
                .set_hint("SET pg_rerank.model = 'name', or pass the model argument; SELECT name FROM rerank_models() lists them.")
        }),
    }
}

/// Loads (or returns the already loaded) model `name`.
pub fn get(name: &str) -> SqlResult<Arc<Model>> {
    let root = model_dir()?;
    let at = registry::resolve(&root, name).map_err(engine)?;
    let key = Key { at, threads: guc::threads() };
    if let Some(m) = LOADED.lock().as_ref().and_then(|c| c.get(&key)) {
        return Ok(Arc::clone(m));
    }
    if pg_rerank_engine::is_bi_encoder(&key.at.dir) {
        return Err(engine(registry::wrong_kind(name, true)));
    }
    let env = runtime::init(Path::new(&guc::onnxruntime().unwrap_or_default())).map_err(engine)?;
    let opts = SessionOptions { intra_threads: key.threads, onnx_file: key.at.onnx_file.clone(), ..Default::default() };
    let model = Arc::new(Model::load(env, name, &key.at.dir, &opts).map_err(engine)?);
    let mut guard = LOADED.lock();
    let cache = guard.get_or_insert_with(HashMap::new);
    // One session per model file: a new thread count replaces the old session.
    cache.retain(|k, _| k.at != key.at);
    cache.insert(key, Arc::clone(&model));
    Ok(model)
}

/// Whether this backend holds the model at `at`.
pub fn is_loaded(at: &Location) -> bool {
    LOADED.lock().as_ref().is_some_and(|c| c.keys().any(|k| &k.at == at))
}

static SPLITTERS: Mutex<Option<HashMap<Location, Arc<Splitter>>>> = Mutex::new(None);

/// The splitter of model `name`: the loaded model's when this backend holds it, else one
/// read from its tokenizer alone (a backend whose calls go to the worker loads no session).
pub fn splitter(name: &str) -> SqlResult<Arc<Splitter>> {
    let root = model_dir()?;
    let at = registry::resolve(&root, name).map_err(engine)?;
    if let Some(s) = SPLITTERS.lock().as_ref().and_then(|c| c.get(&at)) {
        return Ok(Arc::clone(s));
    }
    let loaded = LOADED.lock().as_ref().and_then(|c| c.iter().find(|(k, _)| k.at == at).map(|(_, m)| Arc::clone(m)));
    let splitter = Arc::new(match loaded {
        Some(m) => m.splitter().clone(),
        None => Splitter::load(name, &at.dir).map_err(engine)?,
    });
    SPLITTERS.lock().get_or_insert_with(HashMap::new).insert(at, Arc::clone(&splitter));
    Ok(splitter)
}

static EMBEDDERS: Mutex<Option<HashMap<Key, Arc<Embedder>>>> = Mutex::new(None);

/// The bi-encoder to use: the argument when given, else pg_rerank.embedding_model.
pub fn embedding_model_name(arg: Option<&str>) -> SqlResult<String> {
    match arg {
        Some(m) => Ok(m.to_string()),
        None => guc::embedding_model().ok_or_else(|| {
            report(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "no embedding model selected")
                .set_detail("The call names no model and pg_rerank.embedding_model is not set.")
                .set_hint("SET pg_rerank.embedding_model = 'name', or pass the model argument; SELECT name FROM rerank_models() WHERE kind = 'bi-encoder' lists them.")
        }),
    }
}

/// Loads (or returns the already loaded) bi-encoder `name`.
pub fn embedder(name: &str) -> SqlResult<Arc<Embedder>> {
    let root = model_dir()?;
    let at = registry::resolve(&root, name).map_err(engine)?;
    let key = Key { at, threads: guc::threads() };
    if let Some(m) = EMBEDDERS.lock().as_ref().and_then(|c| c.get(&key)) {
        return Ok(Arc::clone(m));
    }
    // A directory without model.onnx is not a cross-encoder either: Embedder::load says
    // what is missing.
    if !pg_rerank_engine::is_bi_encoder(&key.at.dir) && key.at.dir.join(&key.at.onnx_file).is_file() {
        return Err(engine(registry::wrong_kind(name, false)));
    }
    let env = runtime::init(Path::new(&guc::onnxruntime().unwrap_or_default())).map_err(engine)?;
    let opts = SessionOptions { intra_threads: key.threads, onnx_file: key.at.onnx_file.clone(), ..Default::default() };
    let embedder = Arc::new(Embedder::load(env, name, &key.at.dir, &opts).map_err(engine)?);
    let mut guard = EMBEDDERS.lock();
    let cache = guard.get_or_insert_with(HashMap::new);
    cache.retain(|k, _| k.at != key.at);
    cache.insert(key, Arc::clone(&embedder));
    Ok(embedder)
}

/// The bi-encoder at `at`, when this backend holds it.
pub fn loaded_embedder(at: &Location) -> Option<Arc<Embedder>> {
    EMBEDDERS.lock().as_ref().and_then(|c| c.iter().find(|(k, _)| &k.at == at).map(|(_, e)| Arc::clone(e)))
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// What a sentence-transformers directory states without loading its graph: the width of
/// its vectors (the Pooling module's word_embedding_dimension, unless a module after it
/// may change the width) and its max_seq_length. None for what the files do not say.
pub fn stated_bi_encoder(dir: &Path) -> (Option<usize>, Option<usize>) {
    use serde_json::Value;
    let Some(modules) = read_json(&dir.join("modules.json")).and_then(|v| v.as_array().cloned()) else {
        return (None, None);
    };
    let ty =
        |m: &Value| m.get("type").and_then(Value::as_str).and_then(|t| t.rsplit('.').next()).unwrap_or("").to_string();
    let path = |m: &Value| dir.join(m.get("path").and_then(Value::as_str).unwrap_or(""));
    let plain = modules.iter().all(|m| ["Transformer", "Pooling", "Normalize"].contains(&ty(m).as_str()));
    let number = |v: Option<Value>, key: &str| v?.get(key)?.as_u64().map(|n| n as usize).filter(|n| *n > 0);
    let pooling = modules.iter().find(|m| ty(m) == "Pooling").filter(|_| plain);
    let dim = number(pooling.and_then(|m| read_json(&path(m).join("config.json"))), "word_embedding_dimension");
    let transformer = modules.iter().find(|m| ty(m) == "Transformer").map_or_else(|| dir.to_path_buf(), path);
    let config = read_json(&transformer.join("sentence_bert_config.json"))
        .or_else(|| read_json(&dir.join("sentence_bert_config.json")));
    (dim, number(config, "max_seq_length"))
}

/// The width of bi-encoder `name`'s vectors as its files state it, if they do.
pub fn stated_dim(root: &Path, name: &str) -> Option<usize> {
    let at = registry::resolve(root, name).ok()?;
    stated_bi_encoder(&at.dir).0
}
