//! The models this backend has loaded. A backend loads a model once, on first use, and
//! keeps it; changing pg_rerank.threads or pg_rerank.model_dir loads it afresh.

use crate::error::{engine, report, SqlResult};
use crate::guc;
use parking_lot::Mutex;
use pg_rerank_engine::registry::{self, Location};
use pg_rerank_engine::{runtime, Model, SessionOptions};
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
