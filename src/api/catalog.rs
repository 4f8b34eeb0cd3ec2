//! `rerank_models()`: what pg_rerank.model_dir holds.

use crate::models;
use pg_rerank_engine::config::ConfigCache;
use pg_rerank_engine::{is_bi_encoder, registry};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

thread_local! {
    /// The configurations rerank_models() read in this backend.
    static CONFIGS: std::cell::RefCell<ConfigCache> = std::cell::RefCell::default();
}

/// The models under pg_rerank.model_dir, variants (`name:variant`, the graph
/// `model_<variant>.onnx` beside `model.onnx`) included: name, kind ('cross-encoder' for
/// rerank(), 'bi-encoder' for embed(): a sentence-transformers directory), family, maximum
/// length in tokens, the width of a bi-encoder's vectors (NULL for cross-encoders), the
/// ONNX file's path, and whether this backend has loaded it. Family, max_length and
/// dimensions are NULL when the model's files do not say.
#[pg_extern]
fn rerank_models(fcinfo: pgrx::pg_sys::FunctionCallInfo) -> Result<
    TableIterator<
        'static,
        (
            name!(name, String),
            name!(kind, String),
            name!(family, Option<String>),
            name!(max_length, Option<i32>),
            name!(dimensions, Option<i32>),
            name!(path, String),
            name!(loaded, bool),
        ),
    >,
    ErrorReport,
> {
    crate::error::check_columns(fcinfo, 7, "rerank_models")?;
    let root = models::model_dir()?;
    let listed = registry::list(&root);
    let rows: Vec<_> = listed
        .iter()
        .cloned()
        .map(|(name, at)| {
            // Parsed once per backend, and again only when the model's files change.
            let config = CONFIGS.with_borrow_mut(|c| c.get(&at.dir));
            let bi_encoder = is_bi_encoder(&at.dir);
            let mut max_length = config.as_ref().map(|c| c.max_length);
            let mut dimensions = None;
            let mut loaded = models::is_loaded(&at);
            if bi_encoder {
                // What embed() uses: the loaded model's, else what its files state.
                match models::loaded_embedder(&at) {
                    Some(e) => {
                        (max_length, dimensions, loaded) = (Some(e.max_length()), Some(e.dim()), true);
                    }
                    None => {
                        let (dim, max_seq_length) = models::stated_bi_encoder(&at.dir);
                        max_length = max_seq_length.or(max_length);
                        dimensions = dim;
                    }
                }
            }
            (
                name,
                if bi_encoder { "bi-encoder" } else { "cross-encoder" }.to_string(),
                config.as_ref().map(|c| c.family.name().to_string()),
                max_length.map(|n| n as i32),
                dimensions.map(|n| n as i32),
                at.dir.join(&at.onnx_file).to_string_lossy().into_owned(),
                loaded,
            )
        })
        .collect();
    CONFIGS.with_borrow_mut(|c| c.retain(|dir| listed.iter().any(|(_, at)| at.dir == dir)));
    Ok(TableIterator::new(rows))
}
