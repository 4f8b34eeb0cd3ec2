//! `rerank_topk(query, id, doc, k)`: an aggregate that reranks the rows of any candidate
//! subquery and returns the ids of the best k, best first; `rerank_topk_scores` with the
//! same arguments returns their scores. Written side by side in one SELECT, the two share
//! one transition state (same transition function, same arguments), so the model runs
//! once for both.

use super::{check_doc_count, clip_text, null_query, rank, score};
use crate::error::{raise, report};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{AnyArray, AnyElement, FromDatum, Internal, PgMemoryContexts, PgSqlErrorCode};
use std::ffi::c_char;

struct TopkState {
    query: String,
    k: i32,
    /// The model (None: pg_rerank.model) and the lowest score kept, of the 6-argument form.
    model: Option<String>,
    min_score: Option<f32>,
    elem: pg_sys::Oid,
    typlen: i16,
    typbyval: bool,
    typalign: c_char,
    /// Ids copied into the aggregate's memory context.
    ids: Vec<pg_sys::Datum>,
    /// Documents (cut at MAX_TEXT_CHARS) copied into the aggregate's memory context:
    /// Postgres accounts for them and fails cleanly when memory runs out.
    docs: Vec<(*const u8, usize)>,
    /// Best k as (row, score), computed by the first final function that runs.
    ranked: Option<Vec<(usize, f32)>>,
}

pub(super) fn agg_context(fcinfo: pg_sys::FunctionCallInfo, what: &str) -> pg_sys::MemoryContext {
    let mut ctx: pg_sys::MemoryContext = std::ptr::null_mut();
    // SAFETY: fcinfo is the live call's; AggCheckCallContext only reads it.
    if unsafe { pg_sys::AggCheckCallContext(fcinfo, &mut ctx) } == 0 {
        raise(report(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{what} must be called as part of an aggregate"),
        ));
    }
    ctx
}

pub(super) fn check_k(k: Option<i32>) -> Result<i32, ErrorReport> {
    match k {
        Some(k) if k > 0 => Ok(k),
        Some(k) => Err(report(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("k must be positive, not {k}"))),
        None => Err(report(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "k must not be null")),
    }
}

/// Transition function shared by `rerank_topk` and `rerank_topk_scores`. Rows whose id or
/// doc is NULL are skipped.
#[pg_extern(stable, parallel_safe)]
fn rerank_topk_sfunc(
    state: Internal,
    query: Option<&str>,
    id: Option<AnyElement>,
    doc: Option<&str>,
    k: Option<i32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    transition(state, query, id, doc, k, None, None, fcinfo)
}

/// Transition function of the forms with a model and a lowest score kept.
#[allow(clippy::too_many_arguments)]
#[pg_extern(stable, parallel_safe, name = "rerank_topk_sfunc")]
fn rerank_topk_sfunc_with(
    state: Internal,
    query: Option<&str>,
    id: Option<AnyElement>,
    doc: Option<&str>,
    k: Option<i32>,
    model: Option<&str>,
    min_score: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    transition(state, query, id, doc, k, model, min_score, fcinfo)
}

#[allow(clippy::too_many_arguments)]
fn transition(
    state: Internal,
    query: Option<&str>,
    id: Option<AnyElement>,
    doc: Option<&str>,
    k: Option<i32>,
    model: Option<&str>,
    min_score: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Internal, ErrorReport> {
    let ctx = agg_context(fcinfo, "rerank_topk_sfunc");
    let query = query.ok_or_else(null_query)?;
    let k = check_k(k)?;
    let mut state = state;
    // SAFETY: the state is only ever a TopkState made below.
    let st = match unsafe { state.get_mut::<TopkState>() } {
        Some(st) => st,
        None => {
            let fresh = TopkState {
                query: query.to_string(),
                k,
                model: model.map(str::to_string),
                min_score,
                elem: pg_sys::InvalidOid,
                typlen: 0,
                typbyval: false,
                typalign: 0,
                ids: Vec::new(),
                docs: Vec::new(),
                ranked: None,
            };
            let ptr = PgMemoryContexts::For(ctx).leak_and_drop_on_delete(fresh);
            state = Internal::from(Some(pg_sys::Datum::from(ptr)));
            // SAFETY: just stored a TopkState.
            unsafe { state.get_mut::<TopkState>() }.expect("state just set")
        }
    };
    if st.query != query {
        return Err(report(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "query must be the same for every row of rerank_topk",
        ));
    }
    if st.k != k {
        return Err(report(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "k must be the same for every row of rerank_topk",
        ));
    }
    if st.model.as_deref() != model || st.min_score.map(f32::to_bits) != min_score.map(f32::to_bits) {
        return Err(report(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "model and min_score must be the same for every row of rerank_topk",
        ));
    }
    let (Some(id), Some(doc)) = (id, doc) else { return Ok(state) };
    check_doc_count(st.ids.len() + 1)?;
    if st.elem == pg_sys::InvalidOid {
        st.elem = id.oid();
        // SAFETY: plain catalog lookups of a valid type oid.
        unsafe { pg_sys::get_typlenbyvalalign(st.elem, &mut st.typlen, &mut st.typbyval, &mut st.typalign) };
    }
    // SAFETY: copies a datum of the declared type into the aggregate's context.
    let copied = unsafe { PgMemoryContexts::For(ctx).switch_to(|_| datum_copy(id.datum(), st.typbyval, st.typlen)) };
    st.ids.push(copied);
    let doc = clip_text(doc);
    // SAFETY: palloc in the aggregate's context (it raises an error rather than return
    // null) and a copy of exactly doc.len() bytes into it.
    let text = unsafe {
        PgMemoryContexts::For(ctx).switch_to(|_| {
            let p = pg_sys::palloc(doc.len().max(1)).cast::<u8>();
            std::ptr::copy_nonoverlapping(doc.as_ptr(), p, doc.len());
            p.cast_const()
        })
    };
    st.docs.push((text, doc.len()));
    st.ranked = None;
    Ok(state)
}

/// Copies a datum into the current memory context (Postgres' datumCopy, which the
/// bindings lack); varlena values are detoasted on the way.
///
/// # Safety
/// `d` must be a valid datum of a type with the given `byval` and `len`.
pub(super) unsafe fn datum_copy(d: pg_sys::Datum, byval: bool, len: i16) -> pg_sys::Datum {
    if byval {
        return d;
    }
    // SAFETY: per the contract, d points to a value of this type's storage.
    unsafe {
        match len {
            -1 => pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(d.cast_mut_ptr())),
            -2 => pg_sys::Datum::from(pg_sys::pstrdup(d.cast_mut_ptr())),
            n => {
                let n = n as usize;
                let p = pg_sys::palloc(n) as *mut u8;
                std::ptr::copy_nonoverlapping(d.cast_mut_ptr::<u8>(), p, n);
                pg_sys::Datum::from(p)
            }
        }
    }
}

/// An array of the element type `elem` (an aggregate's id type) holding `datums`, as the
/// final functions of `rerank_topk` and `diversify` return their ids.
///
/// # Safety
/// Every datum must be a valid value of `elem`, whose storage properties are `typlen`,
/// `typbyval` and `typalign`.
pub(super) unsafe fn id_array(
    mut datums: Vec<pg_sys::Datum>,
    elem: pg_sys::Oid,
    typlen: i16,
    typbyval: bool,
    typalign: c_char,
) -> Option<AnyArray> {
    // SAFETY: per the contract; construct_array copies the values into a new array.
    unsafe {
        let arr = pg_sys::construct_array(datums.as_mut_ptr(), datums.len() as i32, elem, typlen as i32, typbyval, typalign);
        AnyArray::from_polymorphic_datum(pg_sys::Datum::from(arr), false, pg_sys::get_array_type(elem))
    }
}

/// The state and its best k rows as (row, score), best first, for a final function.
/// Scores the rows on the first call and keeps the ranking in the state, so the second
/// final function sharing the state does not run the model again. None when no row was
/// aggregated.
fn best<'a>(
    state: &'a mut Internal,
    fcinfo: pg_sys::FunctionCallInfo,
    what: &str,
) -> Result<Option<(&'a TopkState, &'a [(usize, f32)])>, ErrorReport> {
    agg_context(fcinfo, what);
    // SAFETY: the state is only ever a TopkState.
    let Some(st) = (unsafe { state.get_mut::<TopkState>() }) else { return Ok(None) };
    if st.ids.is_empty() {
        return Ok(None);
    }
    if st.ranked.is_none() {
        let docs: Vec<&str> = st
            .docs
            .iter()
            // SAFETY: each entry is a copy of a &str (cut at a character boundary), held in
            // the aggregate's context, which outlives this call.
            .map(|&(p, n)| unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(p, n)) })
            .collect();
        let mut ranked = rank(&score(st.model.as_deref(), &st.query, &docs, false)?);
        if let Some(min) = st.min_score {
            ranked.truncate(ranked.partition_point(|&(_, s)| s >= min));
        }
        ranked.truncate(st.k as usize);
        st.ranked = Some(ranked);
    }
    let st: &TopkState = st;
    Ok(Some((st, st.ranked.as_deref().unwrap_or_default())))
}

/// Final function of `rerank_topk`: the ids of the best k rows, best first.
#[pg_extern(stable, parallel_safe)]
fn rerank_topk_final(
    mut state: Internal,
    _query: Option<&str>,
    _id: Option<AnyElement>,
    _doc: Option<&str>,
    _k: Option<i32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Option<AnyArray>, ErrorReport> {
    let Some((st, ranked)) = best(&mut state, fcinfo, "rerank_topk_final")? else { return Ok(None) };
    let datums: Vec<pg_sys::Datum> = ranked.iter().map(|(i, _)| st.ids[*i]).collect();
    // SAFETY: the ids were copied as values of st.elem, whose storage properties these are.
    Ok(unsafe { id_array(datums, st.elem, st.typlen, st.typbyval, st.typalign) })
}

/// `rerank_topk_final` of the forms with a model and a lowest score kept.
#[allow(clippy::too_many_arguments)]
#[pg_extern(stable, parallel_safe, name = "rerank_topk_final")]
fn rerank_topk_final_with(
    state: Internal,
    query: Option<&str>,
    id: Option<AnyElement>,
    doc: Option<&str>,
    k: Option<i32>,
    _model: Option<&str>,
    _min_score: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Option<AnyArray>, ErrorReport> {
    rerank_topk_final(state, query, id, doc, k, fcinfo)
}

/// `rerank_topk_scores_final` of the forms with a model and a lowest score kept.
#[allow(clippy::too_many_arguments)]
#[pg_extern(stable, parallel_safe, name = "rerank_topk_scores_final")]
fn rerank_topk_scores_final_with(
    state: Internal,
    query: Option<&str>,
    id: Option<AnyElement>,
    doc: Option<&str>,
    k: Option<i32>,
    _model: Option<&str>,
    _min_score: Option<f32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Option<Vec<f32>>, ErrorReport> {
    rerank_topk_scores_final(state, query, id, doc, k, fcinfo)
}

/// Final function of `rerank_topk_scores`: the scores of the best k rows, best first.
#[pg_extern(stable, parallel_safe)]
fn rerank_topk_scores_final(
    mut state: Internal,
    _query: Option<&str>,
    _id: Option<AnyElement>,
    _doc: Option<&str>,
    _k: Option<i32>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<Option<Vec<f32>>, ErrorReport> {
    let Some((_, ranked)) = best(&mut state, fcinfo, "rerank_topk_scores_final")? else { return Ok(None) };
    Ok(Some(ranked.iter().map(|(_, s)| *s).collect()))
}

extension_sql!(
    r#"
CREATE AGGREGATE rerank_topk(query text, id anyelement, doc text, k integer) (
    SFUNC = rerank_topk_sfunc,
    STYPE = internal,
    FINALFUNC = rerank_topk_final,
    FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = SHAREABLE,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE rerank_topk(text, anyelement, text, integer) IS
'Reranks the rows of a candidate set against query and returns the ids of the best k, best first (pg_rerank.model scores them).';

CREATE AGGREGATE rerank_topk_scores(query text, id anyelement, doc text, k integer) (
    SFUNC = rerank_topk_sfunc,
    STYPE = internal,
    FINALFUNC = rerank_topk_scores_final,
    FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = SHAREABLE,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE rerank_topk_scores(text, anyelement, text, integer) IS
'The scores matching rerank_topk with the same arguments, best first; written in the same SELECT, both share one model run.';

CREATE AGGREGATE rerank_topk(query text, id anyelement, doc text, k integer, model text, min_score real) (
    SFUNC = rerank_topk_sfunc,
    STYPE = internal,
    FINALFUNC = rerank_topk_final,
    FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = SHAREABLE,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE rerank_topk(text, anyelement, text, integer, text, real) IS
'rerank_topk with a model (NULL: pg_rerank.model) and the lowest score kept (NULL: none): fewer than k ids when fewer score that high.';

CREATE AGGREGATE rerank_topk_scores(query text, id anyelement, doc text, k integer, model text, min_score real) (
    SFUNC = rerank_topk_sfunc,
    STYPE = internal,
    FINALFUNC = rerank_topk_scores_final,
    FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = SHAREABLE,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE rerank_topk_scores(text, anyelement, text, integer, text, real) IS
'The scores matching rerank_topk with the same six arguments, best first.';
"#,
    name = "rerank_topk_aggregates",
    requires = [
        rerank_topk_sfunc,
        rerank_topk_final,
        rerank_topk_scores_final,
        rerank_topk_sfunc_with,
        rerank_topk_final_with,
        rerank_topk_scores_final_with
    ],
);
