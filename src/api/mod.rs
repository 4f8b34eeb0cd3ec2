//! What SQL sees.

mod bulk;
mod catalog;
mod diversity;
mod embed;
mod evaluate;
mod fusion;
mod rerank;
mod stats;
mod timing;
mod topk;

use crate::client::{self, CallProgress};
use crate::error::{engine, report, SqlResult};
use crate::guc::{self, Execution, LongDocuments, PrioritySetting};
use crate::models;
use pg_rerank_engine::chunk;
use pg_rerank_engine::score_cache::{Key, ScoreCache};
use pg_rerank_engine::{Priority, ScoreOptions};
use pgrx::PgSqlErrorCode;
use crate::stages::{self, Stage};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Pairs per request to the worker: a larger call is sent in requests of this size, one
/// after the other, so it never needs more room in the queue than this, and the worker
/// tokenizes a bounded amount between two batches.
const WORKER_REQUEST_PAIRS: usize = 1024;

/// Texts longer than this many characters are cut before they are sent to the worker or
/// kept by an aggregate. The engine cuts a text at 32 characters per token of the model's
/// maximum length anyway, so no model of up to 8192 tokens sees a difference; this bounds
/// memory for huge documents.
pub(crate) const MAX_TEXT_CHARS: usize = 32 * 8192;

/// The first MAX_TEXT_CHARS characters of `s`.
pub(crate) fn clip_text(s: &str) -> &str {
    pg_rerank_engine::model::cut_chars(s, MAX_TEXT_CHARS).0
}

/// Scores `docs` against `query` with `model` (None: pg_rerank.model), as an interactive call.
pub(crate) fn score(model: Option<&str>, query: &str, docs: &[&str], raw: bool) -> SqlResult<Vec<f32>> {
    score_with(model, None, query, docs, raw)
}

/// [`score`] with `instruction` in place of an LLM reranker's own.
pub(crate) fn score_with(
    model: Option<&str>,
    instruction: Option<&str>,
    query: &str,
    docs: &[&str],
    raw: bool,
) -> SqlResult<Vec<f32>> {
    let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (query, *d)).collect();
    score_pairs(model, instruction, &pairs, raw, Priority::Interactive)
}

/// What decides how a call's pairs are scored, besides the pairs.
#[derive(Clone, Copy)]
struct Scoring<'a> {
    model: &'a str,
    /// Replaces an LLM reranker's own instruction.
    instruction: Option<&'a str>,
    raw: bool,
    class: Priority,
    in_worker: bool,
}

/// Scores (query, document) pairs with `model` (None: pg_rerank.model), in the background
/// worker or in this backend as pg_rerank.execution says, at priority `class` (or bulk,
/// when the session says pg_rerank.priority = bulk). Under pg_rerank.long_documents =
/// chunk, a document longer than the model's window is scored in windows and gets the
/// best window's score. Both check for query cancel and statement_timeout while they work.
/// In the worker, the score cache answers the pairs it holds (unless the session SETs
/// pg_rerank.cache = off); a backend scoring by itself has no cache. `instruction`
/// replaces an LLM reranker's own; any other model refuses one.
pub(crate) fn score_pairs(
    model: Option<&str>,
    instruction: Option<&str>,
    pairs: &[(&str, &str)],
    raw: bool,
    class: Priority,
) -> SqlResult<Vec<f32>> {
    // First of all: an over-long instruction fails at once, before any work per pair.
    pg_rerank_engine::model::check_instruction(instruction).map_err(engine)?;
    let name = models::model_name(model)?;
    if instruction.is_some() && !models::splitter(&name)?.takes_instruction() {
        return Err(engine(pg_rerank_engine::model::no_instruction(&name)));
    }
    let in_worker = match guc::execution() {
        Execution::Backend => false,
        Execution::Worker => true,
        Execution::Auto => client::preloaded(),
    };
    let how = Scoring { model: &name, instruction, raw, class, in_worker };
    match crate::shmem::cache().filter(|_| in_worker && guc::cache()) {
        Some(cache) => score_cached(cache, how, pairs),
        None => score_documents(how, pairs),
    }
}

/// Scores through the worker's score cache: the pairs it holds for this model and these
/// settings come from it, the others are scored by the worker and then stored. The key is
/// everything that decides a score: the model directory and name, the instruction, `raw`,
/// the long-document mode with its chunking settings, and the texts as they are sent.
fn score_cached(cache: ScoreCache<'static>, how: Scoring, pairs: &[(&str, &str)]) -> SqlResult<Vec<f32>> {
    // Read before anything is scored: a model (re)loaded after this point empties the
    // cache, and the scores computed here are then not stored.
    let epoch = cache.epoch();
    let started = Instant::now();
    let dir = models::model_dir()?;
    let raw = how.raw;
    let settings = match guc::long_documents() {
        LongDocuments::Truncate => format!("raw={raw} truncate"),
        LongDocuments::Chunk => {
            let c = guc::chunk_options();
            format!("raw={raw} chunk max_chunks={} overlap={} select={}", c.max_chunks, c.overlap, c.select)
        }
    };
    // What every pair of the call shares is hashed once, and its key is a part of each
    // pair's key. A leading byte tells no instruction from an empty one.
    let (has, instruction) = match how.instruction {
        Some(i) => (&b"i"[..], i.as_bytes()),
        None => (&b"-"[..], &b""[..]),
    };
    let call = Key::new(&[dir.as_os_str().as_encoded_bytes(), how.model.as_bytes(), has, instruction, settings.as_bytes()])
        .to_bytes();
    let keys: Vec<Key> = pairs
        .iter()
        .map(|(q, d)| {
            pgrx::check_for_interrupts!();
            Key::new(&[&call, clip_text(q).as_bytes(), clip_text(d).as_bytes()])
        })
        .collect();
    let found: Vec<Option<f32>> = keys.iter().map(|k| cache.get(k)).collect();
    let missing: Vec<usize> = (0..pairs.len()).filter(|&i| found[i].is_none()).collect();
    let mut scores: Vec<f32> = found.into_iter().map(|s| s.unwrap_or(f32::NAN)).collect();
    let mut in_cache = started.elapsed();
    if !missing.is_empty() {
        let asked: Vec<(&str, &str)> = missing.iter().map(|&i| pairs[i]).collect();
        let got = score_documents(how, &asked)?;
        let storing = Instant::now();
        for (&i, s) in missing.iter().zip(got) {
            scores[i] = s;
            cache.insert(&keys[i], s, epoch);
        }
        in_cache += storing.elapsed();
    }
    stages::record(Stage::Cache, in_cache, (pairs.len() - missing.len()) as u64, 0, 0);
    // Counted once the worker has scored: a model's statistics entry appears when it loads.
    if let Some(st) = crate::shmem::get().and_then(|sh| sh.find_stats(how.model)) {
        st.cache_hits.fetch_add((pairs.len() - missing.len()) as u64, Ordering::Relaxed);
        st.cache_misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
    }
    Ok(scores)
}

/// Scores the pairs in the worker or here, each document whole or by its best window as
/// pg_rerank.long_documents says.
fn score_documents(how: Scoring, pairs: &[(&str, &str)]) -> SqlResult<Vec<f32>> {
    if guc::long_documents() == LongDocuments::Truncate {
        return score_windows(how, pairs);
    }
    let started = Instant::now();
    let splitter = models::splitter(how.model)?;
    let clipped: Vec<(&str, &str)> = pairs.iter().map(|(q, d)| (clip_text(q), clip_text(d))).collect();
    let expanded = chunk::expand_with(&splitter, &clipped, guc::chunk_options(), how.instruction, &mut || {
        pgrx::check_for_interrupts!();
        Ok(())
    })
    .map_err(engine)?;
    let scored = expanded.windows - expanded.skipped;
    stages::record(Stage::Split, started.elapsed(), expanded.split as u64, expanded.windows as u64, scored as u64);
    let scores = score_windows(how, &expanded.pairs)?;
    if expanded.split > 0 || expanded.truncated > 0 {
        if let Some(st) = crate::shmem::get().filter(|_| how.in_worker).and_then(|sh| sh.find_stats(how.model)) {
            st.split_documents.fetch_add(expanded.split as u64, Ordering::Relaxed);
            st.windows.fetch_add((expanded.pairs.len() - pairs.len() + expanded.split) as u64, Ordering::Relaxed);
            // Documents with text beyond pg_rerank.max_chunks windows were not read whole.
            st.truncated.fetch_add(expanded.truncated as u64, Ordering::Relaxed);
        }
    }
    Ok(chunk::fold(&expanded.spans, &scores))
}

/// Scores the pairs as they are (the model truncates what does not fit).
fn score_windows(how: Scoring, pairs: &[(&str, &str)]) -> SqlResult<Vec<f32>> {
    if !how.in_worker {
        return score_here(how, pairs);
    }
    let priority = match guc::priority() {
        PrioritySetting::Bulk => Priority::Bulk,
        PrioritySetting::Auto => how.class,
    };
    let mut scores = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(WORKER_REQUEST_PAIRS) {
        let clipped: Vec<(&str, &str)> = chunk.iter().map(|(q, d)| (clip_text(q), clip_text(d))).collect();
        let call = CallProgress { total: pairs.len() as u64, done: scores.len() as u64 };
        let (got, st) = client::score(how.model, how.instruction, &clipped, how.raw, priority, call)?;
        stages::count(Stage::Worker, st.tokens as u64, st.batches as u64);
        scores.extend(got);
    }
    Ok(scores)
}

/// Scores in this backend, on its own thread: ONNX Runtime's and the tokenizer's threads
/// only compute, they never call into Postgres.
fn score_here(how: Scoring, pairs: &[(&str, &str)]) -> SqlResult<Vec<f32>> {
    let model = models::get(how.model)?;
    let opts =
        ScoreOptions { limits: guc::batch_limits(model.device()), raw: how.raw, tokenize_threads: guc::threads() };
    let started = Instant::now();
    let (scores, st) = model
        .score_pairs_with(pairs, opts, how.instruction, &mut || {
            pgrx::check_for_interrupts!();
            Ok(())
        })
        .map_err(engine)?;
    stages::record(Stage::Backend, started.elapsed(), pairs.len() as u64, st.tokens as u64, st.batches as u64);
    Ok(scores)
}

pub(crate) fn check_doc_count(n: usize) -> SqlResult<()> {
    let max = guc::max_docs();
    if n > max {
        return Err(report(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("too many documents to rerank: {n}, the limit is {max}"),
        )
        .set_hint("Rerank fewer candidates (LIMIT the first stage), or have a superuser raise pg_rerank.max_docs."));
    }
    Ok(())
}

pub(crate) fn null_query() -> pgrx::pg_sys::panic::ErrorReport {
    report(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "query must not be null")
}

pub(crate) use pg_rerank_engine::rank;
