//! The layout of one request in its DSM segment. The backend writes the header and the
//! texts; the worker writes the scores, or an error, and the statistics. The slot's state
//! change (release/acquire) orders these writes for the reader.
//!
//! ```text
//! 0   magic u32 | raw u32 | request u64 | pairs u32 | model len u32 | unused u32
//! 28  status u32 (0 pending, 1 scored, 2 error) | error kind u32 | message len u32
//! 40  detail len u32 | model dir len u32 | pairs u64 | tokens u64 | truncated u64 | batches u64
//! 80  scores: pairs x f32, then pairs x (query offset u64, query length u64, document
//!     offset u64, document length u64), then the error text (ERROR_TEXT bytes), then the
//!     model directory, the model name, and the texts: each query once for a run of pairs
//!     that share it, followed by the documents of that run
//! ```

use pg_rerank_engine::{EngineError, ErrorKind, ScoreStats};

const MAGIC: u32 = 0x5052_4b31;
const HEADER: usize = 80;
const ERROR_TEXT: usize = 4096;
const PENDING: u32 = 0;
const SCORED: u32 = 1;
const FAILED: u32 = 2;

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn scores_at() -> usize {
    HEADER
}
fn index_at(n: usize) -> usize {
    HEADER + 4 * n.next_multiple_of(2)
}
const INDEX_ENTRY: usize = 32;

fn error_at(n: usize) -> usize {
    index_at(n) + INDEX_ENTRY * n
}
fn texts_at(n: usize) -> usize {
    error_at(n) + ERROR_TEXT
}

/// Pairs whose query is the same as the previous pair's share one copy of it.
fn new_query(pairs: &[(&str, &str)], i: usize) -> bool {
    i == 0 || pairs[i - 1].0 != pairs[i].0
}

/// Bytes a request needs.
pub fn size(dir: &str, model: &str, pairs: &[(&str, &str)]) -> usize {
    let queries: usize = (0..pairs.len()).filter(|&i| new_query(pairs, i)).map(|i| pairs[i].0.len()).sum();
    texts_at(pairs.len()) + dir.len() + model.len() + queries + pairs.iter().map(|(_, d)| d.len()).sum::<usize>()
}

/// Writes a request into `b` (exactly `size(...)` bytes).
pub fn write_request(b: &mut [u8], request: u64, raw: bool, dir: &str, model: &str, pairs: &[(&str, &str)]) {
    let n = pairs.len();
    b[..HEADER].fill(0);
    put32(b, 0, MAGIC);
    put32(b, 4, u32::from(raw));
    put64(b, 8, request);
    put32(b, 16, n as u32);
    put32(b, 20, model.len() as u32);
    put32(b, 28, PENDING);
    put32(b, 44, dir.len() as u32);
    let mut at = texts_at(n);
    let mut put_text = |b: &mut [u8], s: &str| {
        b[at..at + s.len()].copy_from_slice(s.as_bytes());
        at += s.len();
        (at - s.len()) as u64
    };
    put_text(b, dir);
    put_text(b, model);
    let mut query_at = 0;
    for (i, (q, d)) in pairs.iter().enumerate() {
        if new_query(pairs, i) {
            query_at = put_text(b, q);
        }
        let doc_at = put_text(b, d);
        let e = index_at(n) + INDEX_ENTRY * i;
        put64(b, e, query_at);
        put64(b, e + 8, q.len() as u64);
        put64(b, e + 16, doc_at);
        put64(b, e + 24, d.len() as u64);
    }
}

/// A request as the worker sees it, borrowing the segment.
pub struct Request<'a> {
    pub request: u64,
    pub raw: bool,
    /// The requesting session's pg_rerank.model_dir (only a superuser can change it).
    pub dir: &'a str,
    pub model: &'a str,
    /// (query, document) pairs.
    pub pairs: Vec<(&'a str, &'a str)>,
}

fn text(b: &[u8], at: usize, len: usize) -> Option<&str> {
    std::str::from_utf8(b.get(at..at.checked_add(len)?)?).ok()
}

/// Reads a request; None when the segment is not a request of ours.
pub fn read_request(b: &[u8]) -> Option<Request<'_>> {
    if b.len() < HEADER || get32(b, 0) != MAGIC {
        return None;
    }
    let n = get32(b, 16) as usize;
    let (ml, dl) = (get32(b, 20) as usize, get32(b, 44) as usize);
    let at = texts_at(n);
    let dir = text(b, at, dl)?;
    let model = text(b, at + dl, ml)?;
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let e = index_at(n) + INDEX_ENTRY * i;
        let q = text(b, get64(b, e) as usize, get64(b, e + 8) as usize)?;
        let d = text(b, get64(b, e + 16) as usize, get64(b, e + 24) as usize)?;
        pairs.push((q, d));
    }
    Some(Request { request: get64(b, 8), raw: get32(b, 4) != 0, dir, model, pairs })
}

/// Worker: one score.
pub fn put_score(b: &mut [u8], i: usize, score: f32) {
    let at = scores_at() + 4 * i;
    b[at..at + 4].copy_from_slice(&score.to_ne_bytes());
}

fn put_stats(b: &mut [u8], s: &ScoreStats) {
    put64(b, 48, s.pairs as u64);
    put64(b, 56, s.tokens as u64);
    put64(b, 64, s.truncated as u64);
    put64(b, 72, s.batches as u64);
}

/// Worker: the request is scored.
pub fn put_done(b: &mut [u8], stats: &ScoreStats) {
    put_stats(b, stats);
    put32(b, 28, SCORED);
}

fn kind_code(k: ErrorKind) -> u32 {
    match k {
        ErrorKind::Runtime => 1,
        ErrorKind::InvalidName => 2,
        ErrorKind::ModelNotFound => 3,
        ErrorKind::MissingFile => 4,
        ErrorKind::Corrupt => 5,
        ErrorKind::Unsupported => 6,
        ErrorKind::Tokenize => 7,
        ErrorKind::Inference => 8,
        ErrorKind::Cancelled => 9,
        ErrorKind::Device => 10,
    }
}

fn code_kind(c: u32) -> ErrorKind {
    match c {
        1 => ErrorKind::Runtime,
        2 => ErrorKind::InvalidName,
        3 => ErrorKind::ModelNotFound,
        4 => ErrorKind::MissingFile,
        5 => ErrorKind::Corrupt,
        6 => ErrorKind::Unsupported,
        7 => ErrorKind::Tokenize,
        9 => ErrorKind::Cancelled,
        10 => ErrorKind::Device,
        _ => ErrorKind::Inference,
    }
}

/// The first `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// Worker: the request failed with `e`.
pub fn put_error(b: &mut [u8], e: &EngineError) {
    let n = get32(b, 16) as usize;
    let at = error_at(n);
    let msg = clip(&e.message, ERROR_TEXT / 2);
    let detail = clip(e.detail.as_deref().unwrap_or(""), ERROR_TEXT - msg.len());
    b[at..at + msg.len()].copy_from_slice(msg.as_bytes());
    b[at + msg.len()..at + msg.len() + detail.len()].copy_from_slice(detail.as_bytes());
    put32(b, 32, kind_code(e.kind));
    put32(b, 36, msg.len() as u32);
    put32(b, 40, detail.len() as u32);
    put32(b, 28, FAILED);
}

/// Backend: the scores and statistics, or the worker's error.
pub fn read_response(b: &[u8]) -> Result<(Vec<f32>, ScoreStats), EngineError> {
    let n = get32(b, 16) as usize;
    match get32(b, 28) {
        SCORED => {
            let scores = (0..n)
                .map(|i| {
                    f32::from_ne_bytes(b[scores_at() + 4 * i..scores_at() + 4 * i + 4].try_into().unwrap_or_default())
                })
                .collect();
            let stats = ScoreStats {
                pairs: get64(b, 48) as usize,
                tokens: get64(b, 56) as usize,
                truncated: get64(b, 64) as usize,
                batches: get64(b, 72) as usize,
            };
            Ok((scores, stats))
        }
        FAILED => {
            let at = error_at(n);
            let (ml, dl) = (get32(b, 36) as usize, get32(b, 40) as usize);
            let msg = text(b, at, ml).unwrap_or("the pg_rerank worker failed");
            let mut e = EngineError::new(code_kind(get32(b, 32)), msg);
            if let Some(d) = text(b, at + ml, dl).filter(|d| !d.is_empty()) {
                e = e.with_detail(d);
            }
            Err(e)
        }
        _ => Err(EngineError::new(ErrorKind::Inference, "the pg_rerank worker returned no result")),
    }
}
