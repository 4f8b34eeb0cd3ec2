//! `rerank_models()`: what pg_rerank.model_dir holds.

use crate::models;
use pg_rerank_engine::{registry, ModelConfig};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// The models under pg_rerank.model_dir: name, family, maximum length in tokens, path,
/// and whether this backend has loaded it. Family and max_length are NULL when the
/// model's configuration files cannot be read.
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
    >, ErrorReport> {
    let root = models::model_dir()?;
    let rows: Vec<_> = registry::list(&root)
        .into_iter()
        .map(|(name, dir)| {
            let config = std::fs::read(dir.join("tokenizer.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .and_then(|tok| ModelConfig::discover(&dir, &tok).ok());
            let loaded = models::is_loaded(&dir);
            (
                name,
                config.as_ref().map(|c| c.family.name().to_string()),
                config.as_ref().map(|c| c.max_length as i32),
                dir.to_string_lossy().into_owned(),
                loaded,
            )
        })
        .collect();
    Ok(TableIterator::new(rows))
}
