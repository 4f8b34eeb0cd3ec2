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
        ErrorKind::NoInstruction => (
            ERRCODE_INVALID_PARAMETER_VALUE,
            Some("Only instruction-following rerankers (a reranker_prompt.json beside the model) take an instruction; pass NULL for other models."),
        ),
        ErrorKind::InstructionTooLong => (
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            Some("An instruction says in a sentence or two what makes a document relevant: give one of at most 16384 bytes."),
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

/// An error when the SQL declaration of the running function returns another number of
/// columns than this library gives: a declaration of an older version, between installing
/// the new library and ALTER EXTENSION pg_rerank UPDATE. Postgres would read the library's
/// values by the declared columns' types, which can crash the server.
pub fn check_columns(fcinfo: pgrx::pg_sys::FunctionCallInfo, columns: usize, function: &str) -> SqlResult<()> {
    use pgrx::pg_sys;
    let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
    // SAFETY: fcinfo is the live call's, handed over by pgrx's wrapper; get_call_result_type
    // only reads it and the catalogs, and the tuple descriptor it gives is read at once.
    let declared = unsafe {
        let class = pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc);
        if class != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || tupdesc.is_null() {
            return Ok(());
        }
        (*tupdesc).natts as usize
    };
    if declared == columns {
        return Ok(());
    }
    Err(report(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("the SQL declaration of {function}() is from another version of pg_rerank"),
    )
    .set_detail(format!("It returns {declared} columns; the installed library returns {columns}."))
    .set_hint("Run ALTER EXTENSION pg_rerank UPDATE in this database."))
}
