//! `rerank_models()`: what pg_rerank.model_dir holds.

use crate::models;
use pg_rerank_engine::{registry, ModelConfig};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// The models under pg_rerank.model_dir, variants (`name:variant`, the graph
/// `model_<variant>.onnx` beside `model.onnx`) included: name, family, maximum length in
/// tokens, the ONNX file's path, and whether this backend has loaded it. Family and
/// max_length are NULL when the model's configuration files cannot be read.
#[pg_extern]
fn rerank_models() -> Result<
    TableIterator<
        'static,
        (
            name!(name, String),
            name!(family, Option<String>),
            name!(max_length, Option<i32>),
            name!(path, String),
            name!(loaded, bool),
        ),
    >,
    ErrorReport,
> {
    let root = models::model_dir()?;
    let rows: Vec<_> = registry::list(&root)
        .into_iter()
        .map(|(name, at)| {
            let config = std::fs::read(at.dir.join("tokenizer.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .and_then(|tok| ModelConfig::discover(&at.dir, &tok).ok());
            let loaded = models::is_loaded(&at);
            (
                name,
                config.as_ref().map(|c| c.family.name().to_string()),
                config.as_ref().map(|c| c.max_length as i32),
                at.dir.join(&at.onnx_file).to_string_lossy().into_owned(),
                loaded,
            )
        })
        .collect();
    Ok(TableIterator::new(rows))
}
