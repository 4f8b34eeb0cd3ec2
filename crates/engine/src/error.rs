//! One error type for the engine. The extension maps each kind to a SQLSTATE.

use std::fmt;

/// What went wrong, coarse enough for the caller to pick an error code and a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The ONNX Runtime shared library could not be loaded or initialised.
    Runtime,
    /// The model name is not valid (empty, absolute, `..`, odd characters).
    InvalidName,
    /// No model directory of that name.
    ModelNotFound,
    /// The model directory lacks a required file (`model.onnx`, `tokenizer.json`).
    MissingFile,
    /// A model file exists but cannot be read or parsed (corrupt ONNX, bad JSON).
    Corrupt,
    /// The model loads but its inputs or outputs are not those of a reranker.
    Unsupported,
    /// Tokenization of an input failed.
    Tokenize,
    /// ONNX Runtime failed while running a batch.
    Inference,
    /// The requested execution device (CUDA) could not be used.
    Device,
    /// The caller asked to stop (query cancel, statement timeout).
    Cancelled,
    /// A model of the other kind: a bi-encoder asked to rerank, a cross-encoder to embed.
    WrongModelKind,
    /// An instruction for a model that reads none (not an instruction-following reranker).
    NoInstruction,
    /// An instruction longer than [`crate::model::MAX_INSTRUCTION_BYTES`].
    InstructionTooLong,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
    pub detail: Option<String>,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), detail: None }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EngineError {}

pub type Result<T> = std::result::Result<T, EngineError>;

#[cfg(test)]
thread_local! {
    /// Test hook: the next guarded tokenizer call on this thread panics.
    pub(crate) static PANIC_NEXT_TOKENIZE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a call into the tokenizers crate, turning a panic inside it (a bug it has on some
/// input) into a [`ErrorKind::Tokenize`] error: the caller may be the background worker's
/// main thread, which serves every backend and must not die of one request's text. The
/// tokenizer is only read (`&self`), so nothing is left half-changed by the unwind.
pub(crate) fn guard_tokenizer<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let run = || {
        #[cfg(test)]
        if PANIC_NEXT_TOKENIZE.with(|p| p.replace(false)) {
            panic!("the tokenizer test hook panics");
        }
        f()
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            Err(EngineError::new(ErrorKind::Tokenize, "the tokenizer failed on this text")
                .with_detail(format!("The tokenizers library panicked: {why}")))
        }
    }
}
