//! Where this session's last statement spent its time in pg_rerank, stage by stage, for
//! `pg_rerank_stages()`: the query embedding, the score cache, splitting long documents,
//! the wait in the worker's queue, the worker's tokenizing and inference (or this
//! backend's own), and the statement's time around them (its scans, fusion and the rest
//! of the SQL). Kept per backend: a backend runs one statement at a time on one thread,
//! and only that thread records.

use pgrx::pg_sys;
use std::cell::RefCell;
use std::time::Duration;

/// A stage of a call, in the order a reranking statement goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    /// embed() and embed_batch(): items are texts.
    Embed,
    /// Looking pairs up in the score cache and storing new scores: items are hits.
    Cache,
    /// Splitting long documents into windows and preselecting them: items are documents split.
    Split,
    /// Waiting in the worker's queue until it took a request: items are pairs.
    Queue,
    /// The worker tokenizing and running the model for this session's requests: items are pairs.
    Worker,
    /// This backend tokenizing and running the model itself: items are pairs.
    Backend,
}

/// Every stage with its name, in order: entry i is the stage whose discriminant is i.
const STAGES: [(Stage, &str); 6] = [
    (Stage::Embed, "embed"),
    (Stage::Cache, "cache"),
    (Stage::Split, "split"),
    (Stage::Queue, "queue"),
    (Stage::Worker, "worker"),
    (Stage::Backend, "backend"),
];
const _: () = {
    let mut i = 0;
    while i < STAGES.len() {
        assert!(STAGES[i].0 as usize == i, "STAGES is in the order of Stage's discriminants");
        i += 1;
    }
};

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    calls: u64,
    items: u64,
    us: u64,
    /// Second counts: windows for Split, tokens for Worker and Backend.
    more: u64,
    /// Third counts: windows scored for Split, batches for Worker and Backend.
    most: u64,
}

#[derive(Debug, Default)]
struct Record {
    /// The statement these figures are for (its start, GetCurrentStatementStartTimestamp).
    statement: i64,
    /// When the last recorded stage ended, in the statement's clock (µs since 2000).
    last_end: i64,
    totals: [Totals; STAGES.len()],
}

thread_local! {
    static RECORD: RefCell<Record> = RefCell::new(Record::default());
}

fn now() -> i64 {
    // SAFETY: reads the clock; callable in any backend state.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Adds one call of `stage` that took `took` and handled `items` (plus the stage's second
/// and third counts) to the current statement's record, starting a new record when the
/// statement is a new one.
pub fn record(stage: Stage, took: Duration, items: u64, more: u64, most: u64) {
    // SAFETY: reads a timestamp Postgres sets at the start of each statement.
    let statement = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    let end = now();
    RECORD.with_borrow_mut(|r| {
        if r.statement != statement {
            *r = Record { statement, ..Default::default() };
        }
        r.last_end = r.last_end.max(end);
        let t = &mut r.totals[stage as usize];
        t.calls += 1;
        t.items += items;
        t.us += took.as_micros() as u64;
        t.more += more;
        t.most += most;
    });
}

/// Adds second and third counts to `stage` without a call (what a worker's answer tells
/// after the call was recorded).
pub fn count(stage: Stage, more: u64, most: u64) {
    RECORD.with_borrow_mut(|r| {
        r.totals[stage as usize].more += more;
        r.totals[stage as usize].most += most;
    });
}

/// One row of `pg_rerank_stages()`.
pub struct Row {
    pub stage: &'static str,
    pub calls: i64,
    pub items: i64,
    pub ms: f64,
    pub detail: Option<String>,
}

/// The rows of the last statement that used pg_rerank in this session: the stages it went
/// through, then `sql`: the rest of the statement from its start until its last stage
/// ended (first-stage scans, fusion, the SQL around the calls), and `statement`: that
/// whole time.
pub fn rows() -> Vec<Row> {
    RECORD.with_borrow(|r| {
        if r.statement == 0 {
            return Vec::new();
        }
        let mut rows: Vec<Row> = STAGES
            .iter()
            .zip(&r.totals)
            .filter(|(_, t)| t.calls > 0)
            .map(|((stage, name), t)| Row {
                stage: name,
                calls: t.calls as i64,
                items: t.items as i64,
                ms: t.us as f64 / 1000.0,
                detail: match stage {
                    Stage::Split => {
                        Some(format!("documents split: {}; windows: {}; windows scored: {}", t.items, t.more, t.most))
                    }
                    Stage::Worker | Stage::Backend => {
                        Some(format!("pairs: {}; tokens: {}; batches: {}", t.items, t.more, t.most))
                    }
                    Stage::Cache => Some(format!("pairs answered: {}", t.items)),
                    _ => None,
                },
            })
            .collect();
        let total = (r.last_end - r.statement).max(0) as f64 / 1000.0;
        let inside: f64 = rows.iter().map(|x| x.ms).sum();
        rows.push(Row { stage: "sql", calls: 1, items: 0, ms: (total - inside).max(0.0), detail: None });
        rows.push(Row { stage: "statement", calls: 1, items: 0, ms: total, detail: None });
        rows
    })
}
