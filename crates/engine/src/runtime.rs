//! The process-wide ONNX Runtime environment, loaded from a shared library at run time.
//!
//! ONNX Runtime allows one library and one environment per process, so the first
//! successful `init` wins; a later call with another path is an error that says so.

use crate::error::{EngineError, ErrorKind, Result};
use once_cell::sync::OnceCell;
use ort::environment::Environment;
use std::path::{Path, PathBuf};

struct Loaded {
    path: PathBuf,
    env: Environment,
}

static RUNTIME: OnceCell<Loaded> = OnceCell::new();

/// Loads `libonnxruntime.so` from `path` once per process and returns the environment.
pub fn init(path: &Path) -> Result<&'static Environment> {
    if let Some(l) = RUNTIME.get() {
        if l.path != path {
            return Err(EngineError::new(
                ErrorKind::Runtime,
                format!(
                    "ONNX Runtime is already loaded from \"{}\" in this process; \"{}\" takes effect in a new session",
                    l.path.display(),
                    path.display()
                ),
            ));
        }
        return Ok(&l.env);
    }
    let loaded = RUNTIME.get_or_try_init(|| {
        if !path.is_file() {
            return Err(EngineError::new(
                ErrorKind::Runtime,
                format!("ONNX Runtime library \"{}\" does not exist", path.display()),
            ));
        }
        let builder = ort::init_from(path).map_err(|e| {
            EngineError::new(ErrorKind::Runtime, format!("could not load ONNX Runtime from \"{}\"", path.display()))
                .with_detail(e.to_string())
        })?;
        let env = builder.with_name("pg_rerank").with_telemetry(false).build().map_err(|e| {
            EngineError::new(ErrorKind::Runtime, "could not start ONNX Runtime").with_detail(e.to_string())
        })?;
        Ok(Loaded { path: path.to_path_buf(), env })
    })?;
    Ok(&loaded.env)
}

/// Whether the loaded ONNX Runtime library was built with the CUDA execution provider
/// (the onnxruntime-gpu wheel's is; the CPU wheel's is not). Call after [`init`].
pub fn cuda_available() -> bool {
    use ort::ep::ExecutionProvider;
    RUNTIME.get().is_some() && ort::ep::CUDA::is_available().unwrap_or(false)
}
