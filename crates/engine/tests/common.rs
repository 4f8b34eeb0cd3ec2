//! Paths shared by the engine's integration tests.
#![allow(dead_code)]

use pg_rerank_engine::{registry, runtime, Model, SessionOptions};
use std::path::PathBuf;

/// `../shared` beside the checkout, or `PG_RERANK_SHARED`.
pub fn shared() -> PathBuf {
    match std::env::var_os("PG_RERANK_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else where `scripts/setup.sh` installs it.
pub fn ort_lib() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("/usr/local/lib/onnxruntime/libonnxruntime.so.1.32.0"),
    }
}

/// Loads a shared model by name (variants such as `minilm-debian:int8` included).
pub fn load(name: &str) -> Model {
    let env = runtime::init(&ort_lib()).expect("ONNX Runtime loads");
    let at = registry::resolve(&shared().join("models"), name).expect("model exists");
    let opts = SessionOptions { intra_threads: 2, onnx_file: at.onnx_file, ..Default::default() };
    Model::load(env, name, &at.dir, &opts).expect("model loads")
}
