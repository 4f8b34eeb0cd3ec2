//! The layout of one request in its DSM segment. The backend writes the header and the
//! texts; the worker writes the scores (or the embeddings), or an error, and the
//! statistics. The slot's state change (release/acquire) orders these writes for the
//! reader.
//!
//! ```text
//! Header (96 bytes, below)
//! output       pairs x width f32, padded to 8 bytes: a score per pair (width 1), or an
//!              embedding per text (width: the room the backend reserved for each)
//! index        pairs x PairIndex (offsets of each pair's query and document)
//! error text   ERROR_TEXT bytes: message, then detail
//! texts        model directory, model name, the instruction (LLM rerankers; none: empty
//!              and no INSTRUCTION flag), then each query once for a run of pairs that
//!              share it, followed by the documents of that run
//! ```
//!
//! An embedding request carries its texts as pairs with an empty query. The backend does
//! not know the model's width before the worker has loaded it: when the room it reserved
//! is too small, the worker answers `Resize` with the width, and the backend asks again.
//!
//! Segments are page-aligned, so the typed views below never fail on alignment; a segment
//! that does not hold a request of this layout reads as None.

use bytemuck::{Pod, Zeroable};
use pg_rerank_engine::{EngineError, ErrorKind, ScoreStats, TextKind};

const MAGIC: u32 = 0x5052_4b31;
/// Bumped with every change of the layout.
const VERSION: u32 = 4;
const ERROR_TEXT: usize = 4096;

/// Header flags.
const RAW: u32 = 1;
const EMBED: u32 = 2;
const DOCUMENT: u32 = 4;
const INSTRUCTION: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Status {
    Pending = 0,
    Scored = 1,
    Failed = 2,
    /// An embedding request reserved less room per text than the model's width (`dim`).
    Resize = 3,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A score per (query, document) pair; `raw`: the logit rather than the probability.
    Score { raw: bool },
    /// An embedding per text (the pair's document), with room for `width` floats each.
    Embed { kind: TextKind, width: usize },
}

impl Kind {
    fn flags(self) -> u32 {
        match self {
            Kind::Score { raw } => u32::from(raw) * RAW,
            Kind::Embed { kind: TextKind::Query, .. } => EMBED,
            Kind::Embed { kind: TextKind::Document, .. } => EMBED | DOCUMENT,
        }
    }

    /// Floats of output per pair.
    fn width(self) -> usize {
        match self {
            Kind::Score { .. } => 1,
            Kind::Embed { width, .. } => width,
        }
    }

    fn of(h: &Header) -> Kind {
        if h.flags & EMBED == 0 {
            Kind::Score { raw: h.flags & RAW != 0 }
        } else {
            let kind = if h.flags & DOCUMENT != 0 { TextKind::Document } else { TextKind::Query };
            Kind::Embed { kind, width: h.width as usize }
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Header {
    magic: u32,
    version: u32,
    request: u64,
    pairs: u32,
    flags: u32,
    dir_len: u32,
    model_len: u32,
    instruction_len: u32,
    _reserved: u32,
    status: u32,
    error_kind: u32,
    message_len: u32,
    detail_len: u32,
    /// Floats of output reserved per pair (1 for scores), and written per pair by the
    /// worker (an embedding's width; under `Resize`, the width it needs).
    width: u32,
    dim: u32,
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
    /// Floats of output per pair.
    width: usize,
}

impl Layout {
    fn output(&self) -> std::ops::Range<usize> {
        HEADER..HEADER + 4 * self.n * self.width
    }
    fn index(&self) -> std::ops::Range<usize> {
        let at = HEADER + 4 * (self.n * self.width).next_multiple_of(2);
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
    let h = header(b)?;
    let (n, width) = (h.pairs as usize, Kind::of(h).width());
    // A header claiming more than the segment holds is not one of ours (checked without
    // overflow: the layout's own arithmetic below is then safe).
    let floats = n.checked_mul(width)?;
    let need = floats
        .checked_add(floats % 2)?
        .checked_mul(4)?
        .checked_add(n.checked_mul(std::mem::size_of::<PairIndex>())?)?
        .checked_add(HEADER + ERROR_TEXT)?;
    let l = Layout { n, width };
    (b.len() >= need).then_some(l)
}

/// Pairs whose query is the same as the previous pair's share one copy of it.
fn new_query(pairs: &[(&str, &str)], i: usize) -> bool {
    i == 0 || pairs[i - 1].0 != pairs[i].0
}

/// Bytes a request needs.
pub fn size(kind: Kind, dir: &str, model: &str, instruction: Option<&str>, pairs: &[(&str, &str)]) -> usize {
    let queries: usize = (0..pairs.len()).filter(|&i| new_query(pairs, i)).map(|i| pairs[i].0.len()).sum();
    Layout { n: pairs.len(), width: kind.width() }.texts()
        + dir.len()
        + model.len()
        + instruction.map_or(0, str::len)
        + queries
        + pairs.iter().map(|(_, d)| d.len()).sum::<usize>()
}

/// Writes a request into `b` (exactly `size(...)` bytes, 8-byte aligned).
pub fn write_request(
    b: &mut [u8],
    request: u64,
    kind: Kind,
    dir: &str,
    model: &str,
    instruction: Option<&str>,
    pairs: &[(&str, &str)],
) {
    let n = pairs.len();
    let l = Layout { n, width: kind.width() };
    let h = Header {
        magic: MAGIC,
        version: VERSION,
        request,
        pairs: n as u32,
        flags: kind.flags() | if instruction.is_some() { INSTRUCTION } else { 0 },
        width: kind.width() as u32,
        dir_len: dir.len() as u32,
        model_len: model.len() as u32,
        instruction_len: instruction.map_or(0, str::len) as u32,
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
    put_text(b, instruction.unwrap_or(""));
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
    pub kind: Kind,
    /// The requesting session's pg_rerank.model_dir (only a superuser can change it).
    pub dir: &'a str,
    pub model: &'a str,
    /// The instruction for an LLM reranker, in place of the model's own.
    pub instruction: Option<&'a str>,
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
    let instruction = text(b, at + u64::from(h.dir_len) + u64::from(h.model_len), u64::from(h.instruction_len))?;
    let instruction = (h.flags & INSTRUCTION != 0).then_some(instruction);
    let index: &[PairIndex] = bytemuck::try_cast_slice(&b[l.index()]).ok()?;
    let pairs = index
        .iter()
        .map(|e| Some((text(b, e.query_at, e.query_len)?, text(b, e.doc_at, e.doc_len)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Request { request: h.request, kind: Kind::of(h), dir, model, instruction, pairs })
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

/// Worker: the request is scored. False when the segment is not a score request.
pub fn put_done(b: &mut [u8], scores: &[f32], stats: &ScoreStats) -> bool {
    let Some(l) = layout(b) else { return false };
    if scores.len() != l.n || header(b).is_none_or(|h| h.flags & EMBED != 0) {
        return false;
    }
    let Ok(out) = bytemuck::try_cast_slice_mut::<u8, f32>(&mut b[l.output()]) else { return false };
    out.copy_from_slice(scores);
    finish_header(b, 1, stats)
}

fn finish_header(b: &mut [u8], dim: usize, stats: &ScoreStats) -> bool {
    let Some(h) = header_mut(b) else { return false };
    h.dim = dim as u32;
    h.stat_pairs = stats.pairs as u64;
    h.stat_tokens = stats.tokens as u64;
    h.stat_truncated = stats.truncated as u64;
    h.stat_batches = stats.batches as u64;
    h.status = Status::Scored as u32;
    true
}

/// Worker: the embedding of text `i` of an embedding request. False when the segment is
/// not one, `i` is out of range, or the vector is wider than the room reserved.
pub fn put_vector(b: &mut [u8], i: usize, v: &[f32]) -> bool {
    let Some(l) = layout(b) else { return false };
    if i >= l.n || v.len() > l.width || header(b).is_none_or(|h| h.flags & EMBED == 0) {
        return false;
    }
    let Ok(out) = bytemuck::try_cast_slice_mut::<u8, f32>(&mut b[l.output()]) else { return false };
    out[i * l.width..i * l.width + v.len()].copy_from_slice(v);
    true
}

/// Worker: every text of an embedding request has its vector of `dim` floats
/// (`put_vector`). False when the segment is not an embedding request with that room.
pub fn put_embedded(b: &mut [u8], dim: usize, stats: &ScoreStats) -> bool {
    let Some(l) = layout(b) else { return false };
    if dim > l.width || header(b).is_none_or(|h| h.flags & EMBED == 0) {
        return false;
    }
    finish_header(b, dim, stats)
}

/// Worker: the model's vectors are `dim` wide, more than the request has room for.
pub fn put_resize(b: &mut [u8], dim: usize) -> bool {
    let Some(h) = header_mut(b) else { return false };
    if h.flags & EMBED == 0 {
        return false;
    }
    h.dim = dim as u32;
    h.status = Status::Resize as u32;
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
        ErrorKind::WrongModelKind => 11,
        ErrorKind::NoInstruction => 12,
        ErrorKind::InstructionTooLong => 13,
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
        11 => ErrorKind::WrongModelKind,
        12 => ErrorKind::NoInstruction,
        13 => ErrorKind::InstructionTooLong,
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

fn unreadable() -> EngineError {
    EngineError::new(ErrorKind::Inference, "the pg_rerank worker returned no result")
}

/// The worker's error, for a segment whose status is Failed.
fn error_of(b: &[u8], h: &Header, l: &Layout) -> EngineError {
    let at = l.error().start as u64;
    let (ml, dl) = (u64::from(h.message_len), u64::from(h.detail_len));
    let msg = text(b, at, ml).unwrap_or("the pg_rerank worker failed");
    let mut e = EngineError::new(code_kind(h.error_kind), msg);
    if let Some(d) = text(b, at + ml, dl).filter(|d| !d.is_empty()) {
        e = e.with_detail(d);
    }
    e
}

fn stats_of(h: &Header) -> ScoreStats {
    ScoreStats {
        pairs: h.stat_pairs as usize,
        tokens: h.stat_tokens as usize,
        truncated: h.stat_truncated as usize,
        batches: h.stat_batches as usize,
    }
}

/// Backend: the scores and statistics, or the worker's error.
pub fn read_response(b: &[u8]) -> Result<(Vec<f32>, ScoreStats), EngineError> {
    let (Some(h), Some(l)) = (header(b), layout(b)) else { return Err(unreadable()) };
    match h.status {
        s if s == Status::Scored as u32 && l.width == 1 => {
            let scores: &[f32] = bytemuck::try_cast_slice(&b[l.output()]).map_err(|_| unreadable())?;
            Ok((scores.to_vec(), stats_of(h)))
        }
        s if s == Status::Failed as u32 => Err(error_of(b, h, &l)),
        _ => Err(unreadable()),
    }
}

/// What the worker answered an embedding request.
#[derive(Debug, Clone, PartialEq)]
pub enum Embedded {
    /// One vector per text, in order.
    Vectors(Vec<Vec<f32>>, ScoreStats),
    /// The model's vectors are this wide: ask again with that much room.
    Resize(usize),
}

/// Backend: the embeddings and statistics, the width to ask again with, or the worker's
/// error.
pub fn read_embedded(b: &[u8]) -> Result<Embedded, EngineError> {
    let (Some(h), Some(l)) = (header(b), layout(b)) else { return Err(unreadable()) };
    if h.flags & EMBED == 0 {
        return Err(unreadable());
    }
    let dim = h.dim as usize;
    match h.status {
        s if s == Status::Scored as u32 && dim <= l.width => {
            let out: &[f32] = bytemuck::try_cast_slice(&b[l.output()]).map_err(|_| unreadable())?;
            let vectors = (0..l.n).map(|i| out[i * l.width..i * l.width + dim].to_vec()).collect();
            Ok(Embedded::Vectors(vectors, stats_of(h)))
        }
        s if s == Status::Resize as u32 && dim > l.width => Ok(Embedded::Resize(dim)),
        s if s == Status::Failed as u32 => Err(error_of(b, h, &l)),
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
        let kind = Kind::Score { raw: true };
        let size = size(kind, "/models", "tiny/bert", None, &pairs);
        let mut seg = segment(size);
        let b = bytes(&mut seg, size);
        write_request(b, 42, kind, "/models", "tiny/bert", None, &pairs);
        let r = read_request(b).expect("a request");
        assert_eq!((r.request, r.kind, r.dir, r.model), (42, kind, "/models", "tiny/bert"));
        assert_eq!(r.pairs, pairs.to_vec());
        assert_eq!(read_pairs(b, 1, 3), Some(pairs[1..3].to_vec()));
        assert_eq!(read_pairs(b, 3, 5), None);
        // "q1" is written twice (runs 1 and 3), not four times.
        let texts: usize = "/models".len() + "tiny/bert".len() + 2 + 2 + 2 + "doc a".len() + "é doc b".len() + 1;
        assert_eq!(size, Layout { n: 4, width: 1 }.texts() + texts);
    }

    #[test]
    fn an_instruction_travels_and_an_empty_one_is_not_none() {
        let pairs = [("q", "d")];
        let kind = Kind::Score { raw: false };
        for instruction in [None, Some(""), Some("Find the package that does this")] {
            let size = size(kind, "/m", "tiny/qwen3", instruction, &pairs);
            let mut seg = segment(size);
            let b = bytes(&mut seg, size);
            write_request(b, 3, kind, "/m", "tiny/qwen3", instruction, &pairs);
            let r = read_request(b).expect("a request");
            assert_eq!((r.model, r.instruction, r.pairs.clone()), ("tiny/qwen3", instruction, pairs.to_vec()));
        }
    }

    #[test]
    fn scores_and_errors_reach_the_backend() {
        let pairs = [("q", "a"), ("q", "b"), ("q", "c")];
        let kind = Kind::Score { raw: false };
        let size = size(kind, "", "m", None, &pairs);
        let mut seg = segment(size);
        let b = bytes(&mut seg, size);
        write_request(b, 1, kind, "", "m", None, &pairs);
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
        let kind = Kind::Score { raw: false };
        let size = size(kind, "", "m", None, &pairs);
        write_request(b, 7, kind, "", "m", None, &pairs);
        assert!(read_request(&b[..size]).is_some());
        // Cut short: the last text is missing.
        assert!(read_request(&b[..size - 1]).is_none());
        // A header claiming more pairs than the segment holds.
        b[16..20].copy_from_slice(&1_000_000u32.to_ne_bytes());
        assert!(read_request(b).is_none());
        // A misaligned view is refused, never read.
        assert!(read_request(&b[1..]).is_none());
        // A header claiming an absurd width per pair.
        let kind = Kind::Embed { kind: TextKind::Query, width: 4 };
        let need = super::size(kind, "", "m", None, &pairs);
        write_request(b, 8, kind, "", "m", None, &pairs);
        assert!(read_request(&b[..need]).is_some());
        b[size_of_width()..size_of_width() + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(read_request(b).is_none());
    }

    /// Offset of `width` in the header.
    fn size_of_width() -> usize {
        std::mem::offset_of!(Header, width)
    }

    #[test]
    fn embeddings_round_trip() {
        let texts = [("", "first text"), ("", ""), ("", "third é")];
        let kind = Kind::Embed { kind: TextKind::Document, width: 3 };
        let size = size(kind, "/m", "bi", None, &texts);
        let mut seg = segment(size);
        let b = bytes(&mut seg, size);
        write_request(b, 5, kind, "/m", "bi", None, &texts);
        let r = read_request(b).expect("a request");
        assert_eq!((r.kind, r.pairs.clone()), (kind, texts.to_vec()));
        assert!(read_embedded(b).is_err(), "pending is no result");
        assert!(!put_done(b, &[1.0, 2.0, 3.0], &ScoreStats::default()), "no scores for an embedding request");
        assert!(!put_vector(b, 0, &[1.0; 4]), "wider than the room reserved");
        assert!(!put_vector(b, 3, &[1.0; 2]), "no such text");
        for i in 0..3 {
            assert!(put_vector(b, i, &[i as f32, 0.5]));
        }
        let stats = ScoreStats { pairs: 3, tokens: 9, truncated: 0, batches: 1 };
        assert!(!put_embedded(b, 4, &stats));
        assert!(put_embedded(b, 2, &stats));
        let want = vec![vec![0.0, 0.5], vec![1.0, 0.5], vec![2.0, 0.5]];
        assert_eq!(read_embedded(b), Ok(Embedded::Vectors(want, stats)));
        assert!(read_response(b).is_err(), "not scores");
        // Too little room: the worker says how much it needs.
        assert!(put_resize(b, 384));
        assert_eq!(read_embedded(b), Ok(Embedded::Resize(384)));
        let e = EngineError::new(ErrorKind::WrongModelKind, "model \"m\" is a cross-encoder, not a bi-encoder");
        assert!(put_error(b, &e));
        assert_eq!(read_embedded(b).expect_err("failed").kind, ErrorKind::WrongModelKind);
        // A score request is no embedding request.
        let pairs = [("q", "a")];
        let kind = Kind::Score { raw: false };
        let size = super::size(kind, "", "m", None, &pairs);
        let mut seg = segment(size);
        let b = bytes(&mut seg, size);
        write_request(b, 6, kind, "", "m", None, &pairs);
        assert!(!put_vector(b, 0, &[1.0]) && !put_resize(b, 2) && !put_embedded(b, 1, &stats));
        assert!(read_embedded(b).is_err());
    }
}
