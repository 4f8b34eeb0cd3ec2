//! Paths shared by the engine's integration tests.
#![allow(dead_code)]

use pg_rerank_engine::{registry, runtime, Model, SessionOptions};
use std::path::{Path, PathBuf};

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
    load_from(&shared().join("models"), name)
}

/// The model directory that `scripts/test.sh` builds with `scripts/quantize_static.py`:
/// `minilm-debian/` with the statically quantised `model_int8s.onnx` beside links to the
/// shared model's files. Required: these tests fail, never skip, without it.
pub fn static_int8_root() -> PathBuf {
    let Some(dir) = std::env::var_os("PG_RERANK_STATIC_INT8_DIR") else {
        panic!(
            "PG_RERANK_STATIC_INT8_DIR is not set: run the engine tests through scripts/test.sh, which builds \
             the statically quantised model, or build it by hand (.venv/bin/python scripts/quantize_static.py \
             ../shared/models/minilm-debian DIR/minilm-debian --link --corpus ../shared/data/debian/corpus.jsonl \
             --exclude ../shared/data/debian/dev_reference.tsv ../shared/data/debian/qrels_dev.tsv) and set it to DIR"
        )
    };
    let dir = PathBuf::from(dir);
    let file = dir.join("minilm-debian/model_int8s.onnx");
    assert!(file.is_file(), "PG_RERANK_STATIC_INT8_DIR={}: no {}", dir.display(), file.display());
    dir
}

/// Loads model `name` from the model directory `root`.
pub fn load_from(root: &Path, name: &str) -> Model {
    let env = runtime::init(&ort_lib()).expect("ONNX Runtime loads");
    let at = registry::resolve(root, name).expect("model exists");
    let opts = SessionOptions { intra_threads: 2, onnx_file: at.onnx_file, ..Default::default() };
    Model::load(env, name, &at.dir, &opts).expect("model loads")
}
