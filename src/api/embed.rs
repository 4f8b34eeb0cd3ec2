//! `embed(text)` and `embed_batch(texts[])`: sentence embeddings from a
//! sentence-transformers bi-encoder, as `real[]` (which pgvector casts to `vector`).

use super::{clip_text, WORKER_REQUEST_PAIRS};
use crate::client::{self, CallProgress};
use crate::error::{engine, report, SqlResult};
use crate::guc::{self, Execution, PrioritySetting};
use crate::models;
use pg_rerank_engine::{Priority, TextKind};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// The `kind` argument: which of the model's prompts goes before the text.
fn text_kind(kind: Option<&str>) -> SqlResult<TextKind> {
    let hint = "Pass kind => 'query' for a search query or kind => 'document' for a text to be searched; each gets the model's prompt for it.";
    match kind {
        Some("query") => Ok(TextKind::Query),
        Some("document") => Ok(TextKind::Document),
        Some(other) => {
            Err(report(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid embedding kind \"{other}\""))
                .set_hint(hint))
        }
        None => Err(report(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "kind must not be null").set_hint(hint)),
    }
}

/// Embeds `texts` of `kind` with `model` (None: pg_rerank.embedding_model), in the
/// background worker or in this backend as pg_rerank.execution says (the same choice as
/// for scoring), at priority `class` (or bulk, when the session says pg_rerank.priority =
/// bulk). Vectors come back in the order of `texts`. Both check for query cancel and
/// statement_timeout between batches.
pub(crate) fn embed_texts(
    model: Option<&str>,
    texts: &[&str],
    kind: TextKind,
    class: Priority,
) -> SqlResult<Vec<Vec<f32>>> {
    let started = std::time::Instant::now();
    let vectors = embed_texts_in(model, texts, kind, class)?;
    crate::stages::record(crate::stages::Stage::Embed, started.elapsed(), texts.len() as u64, 0, 0);
    Ok(vectors)
}

fn embed_texts_in(model: Option<&str>, texts: &[&str], kind: TextKind, class: Priority) -> SqlResult<Vec<Vec<f32>>> {
    let name = models::embedding_model_name(model)?;
    let in_worker = match guc::execution() {
        Execution::Backend => false,
        Execution::Worker => true,
        Execution::Auto => client::preloaded(),
    };
    if !in_worker {
        return embed_here(&name, texts, kind);
    }
    let priority = match guc::priority() {
        PrioritySetting::Bulk => Priority::Bulk,
        PrioritySetting::Auto => class,
    };
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(WORKER_REQUEST_PAIRS) {
        let clipped: Vec<&str> = chunk.iter().map(|t| clip_text(t)).collect();
        let call = CallProgress { total: texts.len() as u64, done: vectors.len() as u64 };
        vectors.extend(client::embed(&name, &clipped, kind, priority, call)?.0);
    }
    Ok(vectors)
}

/// Embeds in this backend: tokenizer and ONNX Runtime only compute; interrupts are
/// checked on this thread between batches.
fn embed_here(name: &str, texts: &[&str], kind: TextKind) -> SqlResult<Vec<Vec<f32>>> {
    let embedder = models::embedder(name)?;
    let limits = guc::batch_limits(embedder.device());
    let (vectors, _stats) = embedder
        .embed(texts, kind, limits, &mut || {
            pgrx::check_for_interrupts!();
            Ok(())
        })
        .map_err(engine)?;
    Ok(vectors)
}

/// The embedding of `text` with the bi-encoder `model` (default pg_rerank.embedding_model),
/// as `real[]`; `embed(...)::vector` gives a pgvector vector. `kind` is 'query' (a search
/// query, the default) or 'document' (a text to be searched): models with prompts put a
/// different one before each. NULL text gives NULL. An interactive call in the worker.
#[pg_extern(stable, parallel_safe)]
fn embed(
    text: Option<&str>,
    model: default!(Option<&str>, "NULL"),
    kind: default!(Option<&str>, "'query'"),
) -> Result<Option<Vec<f32>>, ErrorReport> {
    let kind = text_kind(kind)?;
    let Some(text) = text else { return Ok(None) };
    Ok(embed_texts(model, &[text], kind, Priority::Interactive)?.into_iter().next())
}

/// Embeds every element of `texts` (of `kind`, 'document' by default) in one call, batched
/// by length: one row per element, `idx` its 1-based position, in order; a NULL element
/// gives a NULL embedding. NULL or empty `texts` gives no rows. At most pg_rerank.max_pairs
/// elements: embed a table in chunks of rows. A bulk call in the worker.
#[pg_extern(stable, parallel_safe)]
fn embed_batch(
    texts: Option<Array<&str>>,
    model: default!(Option<&str>, "NULL"),
    kind: default!(Option<&str>, "'document'"),
) -> Result<TableIterator<'static, (name!(idx, i32), name!(embedding, Option<Vec<f32>>))>, ErrorReport> {
    let kind = text_kind(kind)?;
    let Some(texts) = texts else { return Ok(TableIterator::new(Vec::new())) };
    let max = guc::max_pairs();
    if texts.len() > max {
        return Err(report(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("too many texts to embed: {}, the limit is {max}", texts.len()),
        )
        .set_hint(
            "Embed the table in chunks of rows (GROUP BY id / 10000), or have a superuser raise pg_rerank.max_pairs.",
        ));
    }
    let (positions, present): (Vec<usize>, Vec<&str>) =
        texts.iter().enumerate().filter_map(|(i, t)| Some((i, t?))).unzip();
    let mut out: Vec<(i32, Option<Vec<f32>>)> = (0..texts.len()).map(|i| (i as i32 + 1, None)).collect();
    if !present.is_empty() {
        let vectors = embed_texts(model, &present, kind, Priority::Bulk)?;
        for (i, v) in positions.into_iter().zip(vectors) {
            out[i].1 = Some(v);
        }
    }
    Ok(TableIterator::new(out))
}
