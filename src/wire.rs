//! The layout of one request in its DSM segment. The backend writes the header and the
//! texts; the worker writes the scores, or an error, and the statistics. The slot's state
//! change (release/acquire) orders these writes for the reader.
//!
//! ```text
//! Header (80 bytes, below)
//! scores       pairs x f32, padded to 8 bytes
//! index        pairs x PairIndex (offsets of each pair's query and document)
//! error text   ERROR_TEXT bytes: message, then detail
//! texts        model directory, model name, then each query once for a run of pairs
//!              that share it, followed by the documents of that run
//! ```
//!
//! Segments are page-aligned, so the typed views below never fail on alignment; a segment
//! that does not hold a request of this layout reads as None.

use bytemuck::{Pod, Zeroable};
use pg_rerank_engine::{EngineError, ErrorKind, ScoreStats};

const MAGIC: u32 = 0x5052_4b31;
/// Bumped with every change of the layout.
const VERSION: u32 = 2;
const ERROR_TEXT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Status {
    Pending = 0,
    Scored = 1,
    Failed = 2,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Header {
    magic: u32,
    version: u32,
    request: u64,
    pairs: u32,
    raw: u32,
    dir_len: u32,
    model_len: u32,
    status: u32,
    error_kind: u32,
    message_len: u32,
    detail_len: u32,
    stat_pairs: u64,
    stat_tokens: u64,
    stat_truncated: u64,
    stat_batches: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PairIndex {
    query_at: u64,
    query_len: u64,
    doc_at: u64,
    doc_len: u64,
}

const HEADER: usize = std::mem::size_of::<Header>();

struct Layout {
    n: usize,
}

impl Layout {
    fn scores(&self) -> std::ops::Range<usize> {
        HEADER..HEADER + 4 * self.n
    }
    fn index(&self) -> std::ops::Range<usize> {
        let at = HEADER + 4 * self.n.next_multiple_of(2);
        at..at + std::mem::size_of::<PairIndex>() * self.n
    }
    fn error(&self) -> std::ops::Range<usize> {
        let at = self.index().end;
        at..at + ERROR_TEXT
    }
    fn texts(&self) -> usize {
        self.error().end
    }
}

fn header(b: &[u8]) -> Option<&Header> {
    let h: &Header = bytemuck::try_from_bytes(b.get(..HEADER)?).ok()?;
    (h.magic == MAGIC && h.version == VERSION).then_some(h)
}

fn header_mut(b: &mut [u8]) -> Option<&mut Header> {
    let h: &mut Header = bytemuck::try_from_bytes_mut(b.get_mut(..HEADER)?).ok()?;
    (h.magic == MAGIC && h.version == VERSION).then_some(h)
}

/// The layout of a segment whose header says it holds `pairs` pairs, if it is that big.
fn layout(b: &[u8]) -> Option<Layout> {
    let l = Layout { n: header(b)?.pairs as usize };
    (b.len() >= l.texts()).then_some(l)
}

/// Pairs whose query is the same as the previous pair's share one copy of it.
fn new_query(pairs: &[(&str, &str)], i: usize) -> bool {
    i == 0 || pairs[i - 1].0 != pairs[i].0
}

/// Bytes a request needs.
pub fn size(dir: &str, model: &str, pairs: &[(&str, &str)]) -> usize {
    let queries: usize = (0..pairs.len()).filter(|&i| new_query(pairs, i)).map(|i| pairs[i].0.len()).sum();
    Layout { n: pairs.len() }.texts()
        + dir.len()
        + model.len()
        + queries
        + pairs.iter().map(|(_, d)| d.len()).sum::<usize>()
}

/// Writes a request into `b` (exactly `size(...)` bytes, 8-byte aligned).
pub fn write_request(b: &mut [u8], request: u64, raw: bool, dir: &str, model: &str, pairs: &[(&str, &str)]) {
    let n = pairs.len();
    let l = Layout { n };
    let h = Header {
        magic: MAGIC,
        version: VERSION,
        request,
        pairs: n as u32,
        raw: u32::from(raw),
        dir_len: dir.len() as u32,
        model_len: model.len() as u32,
        status: Status::Pending as u32,
        ..Zeroable::zeroed()
    };
    b[..HEADER].copy_from_slice(bytemuck::bytes_of(&h));
    let mut at = l.texts();
    let mut put_text = |b: &mut [u8], s: &str| {
        b[at..at + s.len()].copy_from_slice(s.as_bytes());
        at += s.len();
        (at - s.len()) as u64
    };
    put_text(b, dir);
    put_text(b, model);
    let mut index = Vec::with_capacity(n);
    let mut query_at = 0;
    for (i, (q, d)) in pairs.iter().enumerate() {
        if new_query(pairs, i) {
            query_at = put_text(b, q);
        }
        let doc_at = put_text(b, d);
        index.push(PairIndex { query_at, query_len: q.len() as u64, doc_at, doc_len: d.len() as u64 });
    }
    b[l.index()].copy_from_slice(bytemuck::cast_slice(&index));
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

fn text(b: &[u8], at: u64, len: u64) -> Option<&str> {
    let at = usize::try_from(at).ok()?;
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    std::str::from_utf8(b.get(at..end)?).ok()
}

/// Reads a request; None when the segment is not a request of this layout.
pub fn read_request(b: &[u8]) -> Option<Request<'_>> {
    let h = header(b)?;
    let l = layout(b)?;
    let at = l.texts() as u64;
    let dir = text(b, at, u64::from(h.dir_len))?;
    let model = text(b, at + u64::from(h.dir_len), u64::from(h.model_len))?;
    let index: &[PairIndex] = bytemuck::try_cast_slice(&b[l.index()]).ok()?;
    let pairs = index
        .iter()
        .map(|e| Some((text(b, e.query_at, e.query_len)?, text(b, e.doc_at, e.doc_len)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Request { request: h.request, raw: h.raw != 0, dir, model, pairs })
}

/// The pairs `from..to` of a request (read by `read_request` before), checking only their
/// texts: the worker tokenizes a long request a slice at a time.
pub fn read_pairs(b: &[u8], from: usize, to: usize) -> Option<Vec<(&str, &str)>> {
    let l = layout(b)?;
    let index: &[PairIndex] = bytemuck::try_cast_slice(&b[l.index()]).ok()?;
    index
        .get(from..to)?
        .iter()
        .map(|e| Some((text(b, e.query_at, e.query_len)?, text(b, e.doc_at, e.doc_len)?)))
        .collect()
}

/// Worker: the request is scored. False when the segment is not a request.
pub fn put_done(b: &mut [u8], scores: &[f32], stats: &ScoreStats) -> bool {
    let Some(l) = layout(b) else { return false };
    if scores.len() != l.n {
        return false;
    }
    let Ok(out) = bytemuck::try_cast_slice_mut::<u8, f32>(&mut b[l.scores()]) else { return false };
    out.copy_from_slice(scores);
    let Some(h) = header_mut(b) else { return false };
    h.stat_pairs = stats.pairs as u64;
    h.stat_tokens = stats.tokens as u64;
    h.stat_truncated = stats.truncated as u64;
    h.stat_batches = stats.batches as u64;
    h.status = Status::Scored as u32;
    true
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
pub(crate) fn clip(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// Worker: the request failed with `e`. False when the segment is not a request.
pub fn put_error(b: &mut [u8], e: &EngineError) -> bool {
    let Some(l) = layout(b) else { return false };
    let at = l.error().start;
    let msg = clip(&e.message, ERROR_TEXT / 2);
    let detail = clip(e.detail.as_deref().unwrap_or(""), ERROR_TEXT - msg.len());
    b[at..at + msg.len()].copy_from_slice(msg.as_bytes());
    b[at + msg.len()..at + msg.len() + detail.len()].copy_from_slice(detail.as_bytes());
    let Some(h) = header_mut(b) else { return false };
    h.error_kind = kind_code(e.kind);
    h.message_len = msg.len() as u32;
    h.detail_len = detail.len() as u32;
    h.status = Status::Failed as u32;
    true
}

/// Backend: the scores and statistics, or the worker's error.
pub fn read_response(b: &[u8]) -> Result<(Vec<f32>, ScoreStats), EngineError> {
    let unreadable = || EngineError::new(ErrorKind::Inference, "the pg_rerank worker returned no result");
    let (Some(h), Some(l)) = (header(b), layout(b)) else { return Err(unreadable()) };
    match h.status {
        s if s == Status::Scored as u32 => {
            let scores: &[f32] = bytemuck::try_cast_slice(&b[l.scores()]).map_err(|_| unreadable())?;
            let stats = ScoreStats {
                pairs: h.stat_pairs as usize,
                tokens: h.stat_tokens as usize,
                truncated: h.stat_truncated as usize,
                batches: h.stat_batches as usize,
            };
            Ok((scores.to_vec(), stats))
        }
        s if s == Status::Failed as u32 => {
            let at = l.error().start as u64;
            let (ml, dl) = (u64::from(h.message_len), u64::from(h.detail_len));
            let msg = text(b, at, ml).unwrap_or("the pg_rerank worker failed");
            let mut e = EngineError::new(code_kind(h.error_kind), msg);
            if let Some(d) = text(b, at + ml, dl).filter(|d| !d.is_empty()) {
                e = e.with_detail(d);
            }
            Err(e)
        }
        _ => Err(unreadable()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8-byte aligned buffer, as a DSM segment is.
    fn segment(size: usize) -> Vec<u64> {
        vec![0u64; size.div_ceil(8)]
    }

    fn bytes(v: &mut [u64], size: usize) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(v)[..size]
    }

    #[test]
    fn a_request_round_trips_and_queries_are_shared() {
        let pairs = [("q1", "doc a"), ("q1", "é doc b"), ("q2", ""), ("q1", "d")];
        let size = size("/models", "tiny/bert", &pairs);
        let mut seg = segment(size);
        let b = bytes(&mut seg, size);
        write_request(b, 42, true, "/models", "tiny/bert", &pairs);
        let r = read_request(b).expect("a request");
        assert_eq!((r.request, r.raw, r.dir, r.model), (42, true, "/models", "tiny/bert"));
        assert_eq!(r.pairs, pairs.to_vec());
        assert_eq!(read_pairs(b, 1, 3), Some(pairs[1..3].to_vec()));
        assert_eq!(read_pairs(b, 3, 5), None);
        // "q1" is written twice (runs 1 and 3), not four times.
        let texts: usize = "/models".len() + "tiny/bert".len() + 2 + 2 + 2 + "doc a".len() + "é doc b".len() + 1;
        assert_eq!(size, Layout { n: 4 }.texts() + texts);
    }

    #[test]
    fn scores_and_errors_reach_the_backend() {
        let pairs = [("q", "a"), ("q", "b"), ("q", "c")];
        let size = size("", "m", &pairs);
        let mut seg = segment(size);
        let b = bytes(&mut seg, size);
        write_request(b, 1, false, "", "m", &pairs);
        assert!(read_response(b).is_err(), "pending is no result");
        let stats = ScoreStats { pairs: 3, tokens: 12, truncated: 1, batches: 2 };
        assert!(put_done(b, &[0.5, f32::NAN, -1.0], &stats));
        let (scores, got) = read_response(b).expect("scored");
        assert_eq!((scores[0], scores[2], got), (0.5, -1.0, stats));
        assert!(scores[1].is_nan());
        assert!(!put_done(b, &[1.0], &stats), "a wrong count is refused");
        let e = EngineError::new(ErrorKind::ModelNotFound, "model \"m\" does not exist").with_detail("d".repeat(9000));
        assert!(put_error(b, &e));
        let back = read_response(b).expect_err("failed");
        assert_eq!((back.kind, back.message.as_str()), (ErrorKind::ModelNotFound, "model \"m\" does not exist"));
        assert!(back.detail.is_some_and(|d| d.len() < ERROR_TEXT));
    }

    #[test]
    fn anything_else_is_not_a_request() {
        let mut seg = segment(8192);
        let b = bytes(&mut seg, 8192);
        assert!(read_request(b).is_none());
        assert!(!put_error(b, &EngineError::new(ErrorKind::Inference, "x")));
        let pairs = [("q", "a")];
        let size = size("", "m", &pairs);
        write_request(b, 7, false, "", "m", &pairs);
        assert!(read_request(&b[..size]).is_some());
        // Cut short: the last text is missing.
        assert!(read_request(&b[..size - 1]).is_none());
        // A header claiming more pairs than the segment holds.
        b[16..20].copy_from_slice(&1_000_000u32.to_ne_bytes());
        assert!(read_request(b).is_none());
        // A misaligned view is refused, never read.
        assert!(read_request(&b[1..]).is_none());
    }
}
