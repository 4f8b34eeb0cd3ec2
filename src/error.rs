//! Errors as PostgreSQL sees them: a SQLSTATE, a message in Postgres style (lower case,
//! no final period), a detail and a hint where one helps.

use pg_rerank_engine::{EngineError, ErrorKind};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub type SqlResult<T> = Result<T, ErrorReport>;

pub fn report(code: PgSqlErrorCode, message: impl Into<String>) -> ErrorReport {
    ErrorReport::new(code, message.into(), "pg_rerank")
}

/// Raises the error now. For callers that cannot return a `Result` (aggregate support
/// functions that must leave Postgres state consistent use this too).
pub fn raise(e: ErrorReport) -> ! {
    e.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) returned")
}

pub fn engine(e: EngineError) -> ErrorReport {
    use PgSqlErrorCode::*;
    let (code, hint) = match e.kind {
        ErrorKind::Runtime => (
            ERRCODE_SYSTEM_ERROR,
            Some("Set pg_rerank.onnxruntime to the path of libonnxruntime.so (README.md, \"Install\")."),
        ),
        ErrorKind::InvalidName => (ERRCODE_INVALID_NAME, Some("Model names are paths relative to pg_rerank.model_dir, such as minilm or tiny/bert, optionally with a variant such as minilm:int8.")),
        ErrorKind::ModelNotFound => (ERRCODE_UNDEFINED_OBJECT, Some("SELECT name FROM rerank_models() lists the models in pg_rerank.model_dir.")),
        ErrorKind::MissingFile => (ERRCODE_UNDEFINED_FILE, Some("A model directory needs model.onnx and tokenizer.json; the variant name:v needs model_v.onnx beside them.")),
        ErrorKind::Corrupt => (ERRCODE_DATA_CORRUPTED, Some("Replace the file with a complete export of the model.")),
        ErrorKind::Unsupported => (
            ERRCODE_FEATURE_NOT_SUPPORTED,
            Some("pg_rerank runs sequence-classification cross-encoders exported to ONNX (inputs input_ids, attention_mask and optionally token_type_ids; output logits [batch, 1 or 2]) and sentence-transformers bi-encoders (output last_hidden_state or sentence_embedding)."),
        ),
        ErrorKind::Tokenize => (ERRCODE_DATA_EXCEPTION, None),
        ErrorKind::Inference => (ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, None),
        ErrorKind::Cancelled => (ERRCODE_QUERY_CANCELED, None),
        ErrorKind::WrongModelKind => (
            ERRCODE_WRONG_OBJECT_TYPE,
            Some("rerank() and the other rerank functions take cross-encoders, embed() and embed_batch() take bi-encoders; SELECT name, kind FROM rerank_models() lists them."),
        ),
        ErrorKind::Device => (
            ERRCODE_CONFIG_FILE_ERROR,
            Some("Set pg_rerank.device = cpu or pg_rerank.device_fallback = on and reload, or install the GPU runtime (README.md, \"GPU\"), point pg_rerank.onnxruntime at it and restart."),
        ),
    };
    let mut r = report(code, e.message);
    if let Some(d) = e.detail {
        r = r.set_detail(d);
    }
    if let Some(h) = hint {
        r = r.set_hint(h);
    }
    r
}
