//! `diversify(id, score, embedding, k [, lambda, duplicate_threshold])`: an aggregate that
//! picks k of its rows by maximal marginal relevance (the engine's `diversity` module) and
//! returns their ids in the order picked. With a text in place of the embedding, the
//! similarity of two rows is that of their word bigrams. Pure arithmetic on its input:
//! IMMUTABLE, no model involved.

use super::check_doc_count;
use super::topk::{agg_context, check_k, datum_copy, id_array};
use crate::error::report;
use pg_rerank_engine::diversity::{mmr, InputError, Items, MmrOptions, DEFAULT_LAMBDA};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{AnyArray, AnyElement, Array, Internal, PgMemoryContexts, PgSqlErrorCode};
use std::ffi::c_char;

pub(super) fn input_error(e: InputError) -> ErrorReport {
    report(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.0)
}

struct DiversifyState {
    k: i32,
    lambda: Option<f32>,
    threshold: Option<f32>,
    elem: pg_sys::Oid,
    typlen: i16,
    typbyval: bool,
    typalign: c_char,
    /// Ids copied into the aggregate's memory context.
    ids: Vec<pg_sys::Datum>,
    scores: Vec<f32>,
    /// One per row, of the forms with embeddings.
    vectors: Vec<Vec<f32>>,
    /// One per row, of the forms with texts.
    texts: Vec<String>,
}

/// What a row brings to compare it with the others.
enum Item<'a> {
    Vector(Option<Array<'a, f32>>),
    Text(Option<&'a str>),
}

#[allow(clippy::too_many_arguments)]
fn transition(
    state: Internal,
    id: Option<AnyElement>,
    score: Option<f32>,
    item: Item,
    k: Option<i32>,
    lambda: Option<f32>,
    threshold: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    let ctx = agg_context(fcinfo, "diversify_sfunc");
    let k = check_k(k)?;
    let mut state = state;
    // SAFETY: the state is only ever a DiversifyState made below.
    let st = match unsafe { state.get_mut::<DiversifyState>() } {
        Some(st) => st,
        None => {
            let fresh = DiversifyState {
                k,
                lambda,
                threshold,
                elem: pg_sys::InvalidOid,
                typlen: 0,
                typbyval: false,
                typalign: 0,
                ids: Vec::new(),
                scores: Vec::new(),
                vectors: Vec::new(),
                texts: Vec::new(),
            };
            let ptr = PgMemoryContexts::For(ctx).leak_and_drop_on_delete(fresh);
            state = Internal::from(Some(pg_sys::Datum::from(ptr)));
            // SAFETY: just stored a DiversifyState.
            unsafe { state.get_mut::<DiversifyState>() }.expect("state just set")
        }
    };
    if st.k != k
        || st.lambda.map(f32::to_bits) != lambda.map(f32::to_bits)
        || st.threshold.map(f32::to_bits) != threshold.map(f32::to_bits)
    {
        return Err(report(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "k, lambda and duplicate_threshold must be the same for every row of diversify",
        ));
    }
    let (Some(id), Some(score)) = (id, score) else { return Ok(state) };
    match item {
        Item::Vector(None) => {
            return Err(report(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "embedding must not be null").set_hint(
                "Filter out rows without an embedding, or pass the text instead: diversify(id, score, doc, k).",
            ))
        }
        Item::Vector(Some(v)) => {
            let mut e = Vec::with_capacity(v.len());
            for x in v.iter() {
                e.push(x.ok_or_else(|| {
                    report(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "embedding must not contain nulls")
                })?);
            }
            st.vectors.push(e);
        }
        Item::Text(t) => st.texts.push(super::clip_text(t.unwrap_or_default()).to_string()),
    }
    check_doc_count(st.ids.len() + 1)?;
    if st.elem == pg_sys::InvalidOid {
        st.elem = id.oid();
        // SAFETY: plain catalog lookups of a valid type oid.
        unsafe { pg_sys::get_typlenbyvalalign(st.elem, &mut st.typlen, &mut st.typbyval, &mut st.typalign) };
    }
    // SAFETY: copies a datum of the declared type into the aggregate's context.
    let copied = unsafe { PgMemoryContexts::For(ctx).switch_to(|_| datum_copy(id.datum(), st.typbyval, st.typlen)) };
    st.ids.push(copied);
    st.scores.push(score);
    Ok(state)
}

/// The ids picked by MMR, in order, as an array of the ids' type.
fn finish(mut state: Internal, fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<AnyArray>, ErrorReport> {
    agg_context(fcinfo, "diversify_final");
    // SAFETY: the state is only ever a DiversifyState.
    let Some(st) = (unsafe { state.get_mut::<DiversifyState>() }) else { return Ok(None) };
    if st.ids.is_empty() {
        return Ok(None);
    }
    let opts =
        MmrOptions { k: st.k as usize, lambda: st.lambda.unwrap_or(DEFAULT_LAMBDA), duplicate_threshold: st.threshold };
    let picked = if st.vectors.is_empty() {
        let texts: Vec<&str> = st.texts.iter().map(String::as_str).collect();
        mmr(&st.scores, Items::Texts(&texts), opts)
    } else {
        let vectors: Vec<&[f32]> = st.vectors.iter().map(Vec::as_slice).collect();
        mmr(&st.scores, Items::Vectors(&vectors), opts)
    }
    .map_err(input_error)?;
    let datums: Vec<pg_sys::Datum> = picked.iter().map(|&i| st.ids[i]).collect();
    // SAFETY: the ids were copied as values of st.elem, whose storage properties these are.
    Ok(unsafe { id_array(datums, st.elem, st.typlen, st.typbyval, st.typalign) })
}

/// Transition function of `diversify(id, score, embedding real[], k)`.
#[pg_extern(immutable, parallel_safe)]
fn diversify_sfunc(
    state: Internal,
    id: Option<AnyElement>,
    score: Option<f32>,
    embedding: Option<Array<f32>>,
    k: Option<i32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    transition(state, id, score, Item::Vector(embedding), k, None, None, fcinfo)
}

/// Transition function of `diversify(id, score, embedding real[], k, lambda, duplicate_threshold)`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe, name = "diversify_sfunc")]
fn diversify_sfunc_with(
    state: Internal,
    id: Option<AnyElement>,
    score: Option<f32>,
    embedding: Option<Array<f32>>,
    k: Option<i32>,
    lambda: Option<f32>,
    duplicate_threshold: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    transition(state, id, score, Item::Vector(embedding), k, lambda, duplicate_threshold, fcinfo)
}

/// Transition function of `diversify(id, score, doc text, k)`.
#[pg_extern(immutable, parallel_safe, name = "diversify_sfunc")]
fn diversify_sfunc_text(
    state: Internal,
    id: Option<AnyElement>,
    score: Option<f32>,
    doc: Option<&str>,
    k: Option<i32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    transition(state, id, score, Item::Text(doc), k, None, None, fcinfo)
}

/// Transition function of `diversify(id, score, doc text, k, lambda, duplicate_threshold)`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe, name = "diversify_sfunc")]
fn diversify_sfunc_text_with(
    state: Internal,
    id: Option<AnyElement>,
    score: Option<f32>,
    doc: Option<&str>,
    k: Option<i32>,
    lambda: Option<f32>,
    duplicate_threshold: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    transition(state, id, score, Item::Text(doc), k, lambda, duplicate_threshold, fcinfo)
}

/// Final function of `diversify(id, score, embedding real[], k)`.
#[pg_extern(immutable, parallel_safe)]
fn diversify_final(
    state: Internal,
    _id: Option<AnyElement>,
    _score: Option<f32>,
    _embedding: Option<Array<f32>>,
    _k: Option<i32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Option<AnyArray>, ErrorReport> {
    finish(state, fcinfo)
}

/// Final function of `diversify(id, score, embedding real[], k, lambda, duplicate_threshold)`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe, name = "diversify_final")]
fn diversify_final_with(
    state: Internal,
    _id: Option<AnyElement>,
    _score: Option<f32>,
    _embedding: Option<Array<f32>>,
    _k: Option<i32>,
    _lambda: Option<f32>,
    _duplicate_threshold: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Option<AnyArray>, ErrorReport> {
    finish(state, fcinfo)
}

/// Final function of `diversify(id, score, doc text, k)`.
#[pg_extern(immutable, parallel_safe, name = "diversify_final")]
fn diversify_final_text(
    state: Internal,
    _id: Option<AnyElement>,
    _score: Option<f32>,
    _doc: Option<&str>,
    _k: Option<i32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Option<AnyArray>, ErrorReport> {
    finish(state, fcinfo)
}

/// Final function of `diversify(id, score, doc text, k, lambda, duplicate_threshold)`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe, name = "diversify_final")]
fn diversify_final_text_with(
    state: Internal,
    _id: Option<AnyElement>,
    _score: Option<f32>,
    _doc: Option<&str>,
    _k: Option<i32>,
    _lambda: Option<f32>,
    _duplicate_threshold: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Option<AnyArray>, ErrorReport> {
    finish(state, fcinfo)
}

extension_sql!(
    r#"
CREATE AGGREGATE diversify(id anyelement, score real, embedding real[], k integer) (
    SFUNC = diversify_sfunc,
    STYPE = internal,
    FINALFUNC = diversify_final,
    FINALFUNC_EXTRA,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE diversify(anyelement, real, real[], integer) IS
'Picks k rows by maximal marginal relevance (relevance: score, min-max normalised; similarity: cosine of the embeddings; lambda 0.7) and returns their ids in the order picked. A pgvector column is passed as embedding::real[].';

CREATE AGGREGATE diversify(id anyelement, score real, embedding real[], k integer, lambda real, duplicate_threshold real) (
    SFUNC = diversify_sfunc,
    STYPE = internal,
    FINALFUNC = diversify_final,
    FINALFUNC_EXTRA,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE diversify(anyelement, real, real[], integer, real, real) IS
'diversify with lambda (1 = relevance only, 0 = diversity only; NULL: 0.7) and a similarity at or above which a row is dropped as a near-duplicate of one picked before (NULL: none).';

CREATE AGGREGATE diversify(id anyelement, score real, doc text, k integer) (
    SFUNC = diversify_sfunc,
    STYPE = internal,
    FINALFUNC = diversify_final,
    FINALFUNC_EXTRA,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE diversify(anyelement, real, text, integer) IS
'diversify without embeddings: the similarity of two rows is the Jaccard similarity of their texts'' word bigrams.';

CREATE AGGREGATE diversify(id anyelement, score real, doc text, k integer, lambda real, duplicate_threshold real) (
    SFUNC = diversify_sfunc,
    STYPE = internal,
    FINALFUNC = diversify_final,
    FINALFUNC_EXTRA,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE diversify(anyelement, real, text, integer, real, real) IS
'diversify on texts, with lambda (NULL: 0.7) and a near-duplicate threshold (NULL: none).';
"#,
    name = "diversify_aggregates",
    requires = [
        diversify_sfunc,
        diversify_sfunc_with,
        diversify_sfunc_text,
        diversify_sfunc_text_with,
        diversify_final,
        diversify_final_with,
        diversify_final_text,
        diversify_final_text_with
    ],
);
