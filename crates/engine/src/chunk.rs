//! Long documents scored by their best window. A document longer than the room the
//! model's window leaves beside the query is split into windows that each fit, every
//! window is scored as its own pair, and the document gets the best window's score.
//!
//! Windows start where the text has structure (a blank line, then a line break, then a
//! sentence end) rather than at an arbitrary token, and overlap the window before, so a
//! passage cut at one window's end is read whole at the next one's start. The policy is
//! [`plan`], a pure function of the tokens' boundary strengths; [`Splitter`] feeds it from
//! the model's tokenizer and maps token windows back to text.

use crate::config::{ModelConfig, Prompt};
use crate::error::{EngineError, ErrorKind, Result};
use std::ops::Range;
use std::path::Path;
use tokenizers::Tokenizer;

/// How a long document is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Most windows per document; a document that needs more is scored on its first
    /// `max_chunks` windows.
    pub max_chunks: usize,
    /// Most tokens a window shares with the one before it (at most half a window).
    pub overlap: usize,
    /// Windows per document given to the model: a document with more is scored on the
    /// `select` that share the most with the query ([`crate::preselect`]); 0: every window.
    pub select: usize,
}

/// The default of [`ChunkOptions::select`] (and of `pg_rerank.chunk_select`).
pub const DEFAULT_SELECT: usize = 2;

impl Default for ChunkOptions {
    fn default() -> Self {
        Self { max_chunks: 16, overlap: 64, select: DEFAULT_SELECT }
    }
}

/// Where a token may start a window: how strong a boundary lies just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Boundary {
    /// Inside a word: never a window start.
    None,
    Word,
    Sentence,
    Line,
    Paragraph,
}

/// A window narrower than this many tokens reads too little to score: the query leaves
/// no real room, so the document is scored once, truncated, as without chunking.
pub const MIN_WINDOW: usize = 32;

/// Splits `strength.len()` tokens into windows of at most `width` tokens, so that a unit
/// of structure that fits in a window is read whole by one.
///
/// The text is cut into paragraphs; a paragraph wider than a window into lines, a line into
/// sentences, a sentence into words, and a word wider than a window (a base64 blob) into
/// pieces of `width` tokens. Windows take as many of these units in a row as fit, within
/// one paragraph: only short paragraphs in a row (each under [`MIN_WINDOW`] tokens or a
/// quarter window) share a window, whole. A window
/// that continues the paragraph of the one before starts by rereading that one's last units,
/// up to `overlap` tokens, so that a passage cut at one window's end is read whole at the
/// next one's start; a window that starts a paragraph starts with it. Returns the windows
/// and whether text was left out because of `max_chunks`.
#[allow(clippy::single_range_in_vec_init)]
pub fn plan(strength: &[Boundary], width: usize, opts: ChunkOptions) -> (Vec<Range<usize>>, bool) {
    let n = strength.len();
    let width = width.max(1);
    if n <= width {
        return (vec![0..n], false);
    }
    let overlap = opts.overlap.min(width / 2);
    let mut units = Vec::new();
    split(strength, 0..n, Boundary::Paragraph, width, &mut units);
    // The paragraph of each unit, and where each paragraph ends.
    let mut para = Vec::with_capacity(units.len());
    let mut para_end: Vec<usize> = Vec::new();
    for u in &units {
        if strength[u.start] >= Boundary::Paragraph || para_end.is_empty() {
            para_end.push(u.end);
        }
        *para_end.last_mut().expect("a paragraph") = u.end;
        para.push(para_end.len() - 1);
    }
    let short = MIN_WINDOW.min(width / 4).max(1);
    let mut out = Vec::new();
    let mut first = 0;
    loop {
        let start = units[first].start;
        let starts_paragraph = strength[start] >= Boundary::Paragraph;
        let all_short = starts_paragraph && para_end[para[first]] - start < short;
        let mut last = first;
        while last + 1 < units.len() && units[last + 1].end - start <= width {
            let next = last + 1;
            if para[next] == para[last] {
                last = next;
            } else if starts_paragraph
                && para_end[para[next]] - start <= width
                && all_short
                && para_end[para[next]] - units[next].start < short
            {
                // Short paragraphs in a row (list items, a heading and its subheading)
                // share a window, whole. Any other paragraph has windows of its own: text
                // from another would only blur its score (a short passage scored with the
                // unrelated paragraph after it scores low), and a part of one never shares.
                last = units.iter().rposition(|u| u.end == para_end[para[next]]).expect("its last unit");
            } else {
                break;
            }
        }
        let units_end = units[last].end;
        let next = last + 1;
        // A window that stops inside a paragraph fills up with the words of the unit that
        // did not fit (so the beginning of a long paragraph reads as it would truncated);
        // the next window starts at that unit and reads it whole.
        let mut end = units_end;
        if next < units.len() && para[next] == para[last] {
            let limit = (start + width).min(units[next].end);
            if let Some(cut) = (units_end + 1..=limit).rev().find(|&t| strength[t] >= Boundary::Word) {
                end = cut;
            }
        }
        out.push(start..end);
        if next == units.len() {
            return (out, false);
        }
        if out.len() >= opts.max_chunks.max(1) {
            return (out, true);
        }
        let mut next = next;
        if strength[units[next].start] < Boundary::Paragraph {
            while next - 1 > first && units_end - units[next - 1].start <= overlap {
                next -= 1;
            }
        }
        first = next;
    }
}

/// Cuts `range` at boundaries of strength `level` or more, and each part wider than
/// `width` at the next weaker level, appending the parts in order.
fn split(strength: &[Boundary], range: Range<usize>, level: Boundary, width: usize, out: &mut Vec<Range<usize>>) {
    if range.len() <= width {
        out.push(range);
        return;
    }
    let finer = match level {
        Boundary::Paragraph => Boundary::Line,
        Boundary::Line => Boundary::Sentence,
        Boundary::Sentence => Boundary::Word,
        Boundary::Word => Boundary::None,
        Boundary::None => {
            let mut at = range.start;
            while at < range.end {
                out.push(at..(at + width).min(range.end));
                at += width;
            }
            return;
        }
    };
    let mut from = range.start;
    for at in range.start + 1..range.end {
        if strength[at] >= level {
            split(strength, from..at, finer, width, out);
            from = at;
        }
    }
    split(strength, from..range.end, finer, width, out);
}

/// The boundary before each token of `text`, from the tokens' byte offsets. Only a token
/// after whitespace starts a window: never a word piece or punctuation glued to a word.
pub fn boundaries(text: &str, offsets: &[(usize, usize)]) -> Vec<Boundary> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut prev_end = 0;
    for (i, &(start, end)) in offsets.iter().enumerate() {
        if i == 0 {
            out.push(Boundary::Paragraph);
            prev_end = end;
            continue;
        }
        // The text between the tokens, and any whitespace the token's own offsets take in
        // (SentencePiece marks a word start by a leading space).
        let gap = if start >= prev_end { &text[prev_end..start] } else { "" };
        let own = &text[start..end.max(start)];
        let lead = &own[..own.len() - own.trim_start().len()];
        let b = if gap.contains(char::is_whitespace) || !lead.is_empty() {
            let newlines = gap.matches('\n').count() + lead.matches('\n').count();
            if newlines >= 2 {
                Boundary::Paragraph
            } else if newlines == 1 {
                Boundary::Line
            } else if text[..prev_end.min(start)].trim_end().ends_with(['.', '!', '?', ':', ';']) {
                Boundary::Sentence
            } else {
                Boundary::Word
            }
        } else {
            Boundary::None
        };
        out.push(b);
        prev_end = prev_end.max(end);
    }
    out
}

/// A document split for scoring: its windows' texts, and whether some of it was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows<'d> {
    pub texts: Vec<&'d str>,
    pub truncated: bool,
}

/// Splits documents with a model's tokenizer, so windows fit its maximum length beside
/// the query. Cheap to hold: only the tokenizer, no session.
#[derive(Clone)]
pub struct Splitter {
    tokenizer: Tokenizer,
    max_length: usize,
    prompt: Option<Prompt>,
}

/// Tokens kept free in each window: a window's text tokenized alone may give a token or
/// two more than it had inside the document.
const MARGIN: usize = 4;

impl Splitter {
    /// Whether the model reads an instruction (an LLM reranker with a prompt template).
    pub fn takes_instruction(&self) -> bool {
        self.prompt.is_some()
    }

    /// A splitter for the model whose tokenizer and configuration these are.
    pub fn new(tokenizer: &Tokenizer, config: &ModelConfig) -> Result<Self> {
        let mut tokenizer = tokenizer.clone();
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| {
            EngineError::new(ErrorKind::Tokenize, "could not set up the tokenizer").with_detail(e.to_string())
        })?;
        Ok(Self { tokenizer, max_length: config.max_length, prompt: config.prompt.clone() })
    }

    /// The splitter of model `name` in `dir` (its `tokenizer.json` and configuration
    /// only), with the errors [`crate::Model::load`] gives for a missing model or file.
    pub fn load(name: &str, dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(EngineError::new(ErrorKind::ModelNotFound, format!("model \"{name}\" does not exist"))
                .with_detail(format!("no directory \"{}\"", dir.display())));
        }
        let path = dir.join("tokenizer.json");
        let corrupt = |e: &dyn std::fmt::Display| {
            EngineError::new(ErrorKind::Corrupt, format!("could not load \"{}\"", path.display()))
                .with_detail(e.to_string())
        };
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::new(ErrorKind::MissingFile, format!("model \"{name}\" has no tokenizer.json"))
                    .with_detail(format!("\"{}\" does not exist", path.display()))
            } else {
                corrupt(&e)
            }
        })?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(&e))?;
        let config = ModelConfig::discover(dir, &json)?;
        let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| corrupt(&e))?;
        Self::new(&tokenizer, &config)
    }

    fn count(&self, input: tokenizers::EncodeInput<'_>) -> Result<usize> {
        crate::error::guard_tokenizer(|| self.tokenizer.encode(input, true).map(|e| e.len()).map_err(tokenize_failed))
    }

    /// No tokenizer gives more tokens than bytes: a document this short fits beside any
    /// query that leaves half the window, and is not tokenized to find out.
    fn surely_fits(&self, doc: &str) -> bool {
        doc.len() + MARGIN <= self.max_length / 2
    }

    /// Tokens of document that fit in one window beside `query`.
    pub fn room(&self, query: &str) -> Result<usize> {
        self.room_with(query, None)
    }

    /// Tokens of document that fit in one window beside `query`, with `instruction` in
    /// place of the model's own (LLM rerankers).
    pub fn room_with(&self, query: &str, instruction: Option<&str>) -> Result<usize> {
        crate::model::check_instruction(instruction)?;
        let fixed = match &self.prompt {
            Some(p) => self.count(p.render_with(instruction, query, "").as_str().into())?,
            None => self.count((query, "").into())?,
        };
        Ok(self.max_length.saturating_sub(fixed + MARGIN))
    }

    /// The windows `doc` is scored in beside `query`: the whole document when it fits (or
    /// when the query leaves less than [`MIN_WINDOW`] tokens), else windows of structure.
    pub fn windows<'d>(&self, query: &str, doc: &'d str, opts: ChunkOptions) -> Result<Windows<'d>> {
        if self.surely_fits(doc) {
            return Ok(Windows { texts: vec![doc], truncated: false });
        }
        self.windows_in(self.room(query)?, doc, opts)
    }

    /// The windows of `doc` where `room` tokens of it fit beside the query.
    fn windows_in<'d>(&self, room: usize, doc: &'d str, opts: ChunkOptions) -> Result<Windows<'d>> {
        let whole = Windows { texts: vec![doc], truncated: false };
        if doc.len() <= room || room < MIN_WINDOW {
            return Ok(whole);
        }
        // Beyond what max_chunks windows can read, nothing is tokenized.
        let bound = room.saturating_mul(opts.max_chunks.max(1) + 1).saturating_mul(32).max(4096);
        let (text, cut) = crate::model::cut_chars(doc, bound);
        let enc = crate::error::guard_tokenizer(|| self.tokenizer.encode(text, false).map_err(tokenize_failed))?;
        let offsets = enc.get_offsets();
        if offsets.len() <= room && !cut {
            return Ok(whole);
        }
        let strength = boundaries(text, offsets);
        let (plan, left_out) = plan(&strength, room, opts);
        let texts = plan
            .iter()
            .map(|w| {
                let from = offsets[w.start].0;
                let to = if w.end == offsets.len() { text.len() } else { offsets[w.end].0 };
                text[from..to].trim()
            })
            .collect();
        Ok(Windows { texts, truncated: left_out || cut })
    }
}

fn tokenize_failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::new(ErrorKind::Tokenize, "could not tokenize").with_detail(e.to_string())
}

/// Pairs expanded into the windows to score, and how to fold their scores back.
#[derive(Debug, Default)]
pub struct Expanded<'a> {
    /// (query, window) pairs, the windows of each input pair next to each other.
    pub pairs: Vec<(&'a str, &'a str)>,
    /// For each input pair, its range in `pairs`.
    pub spans: Vec<Range<usize>>,
    /// Input pairs that were split, and input pairs with text left out (beyond
    /// `max_chunks` windows).
    pub split: usize,
    pub truncated: usize,
    /// Windows of split documents, and those of them that preselection left unscored.
    pub windows: usize,
    pub skipped: usize,
}

/// Expands `pairs` into windows with `splitter`. `check` runs before every document that
/// is tokenized to be split (and every 256 short ones) and may stop the work by returning
/// an error (cancellation).
pub fn expand<'a>(
    splitter: &Splitter,
    pairs: &[(&'a str, &'a str)],
    opts: ChunkOptions,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Expanded<'a>> {
    expand_with(splitter, pairs, opts, None, check)
}

/// [`expand`] for a model reading `instruction` in place of its own (the instruction takes
/// room in each window's prompt).
pub fn expand_with<'a>(
    splitter: &Splitter,
    pairs: &[(&'a str, &'a str)],
    opts: ChunkOptions,
    instruction: Option<&str>,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Expanded<'a>> {
    crate::model::check_instruction(instruction)?;
    let mut out = Expanded { pairs: Vec::with_capacity(pairs.len()), ..Default::default() };
    // The room a query leaves, tokenized once for the run of pairs that share it.
    let mut room: Option<(&str, usize)> = None;
    for (i, &(q, d)) in pairs.iter().enumerate() {
        let w = if splitter.surely_fits(d) {
            // Short documents cost nothing each: a glance for a cancel every 256.
            if i % 256 == 0 {
                check()?;
            }
            Windows { texts: vec![d], truncated: false }
        } else {
            // A long one is tokenized whole (up to what max_chunks windows read): a cancel
            // is seen before each.
            check()?;
            let r = match room {
                Some((rq, r)) if rq == q => r,
                _ => splitter.room_with(q, instruction)?,
            };
            room = Some((q, r));
            splitter.windows_in(r, d, opts)?
        };
        let from = out.pairs.len();
        if w.texts.len() > 1 {
            out.split += 1;
            out.windows += w.texts.len();
            let kept = crate::preselect::select(q, &w.texts, opts.select);
            out.skipped += w.texts.len() - kept.len();
            out.pairs.extend(kept.into_iter().map(|i| (q, w.texts[i])));
        } else {
            out.pairs.extend(w.texts.into_iter().map(|t| (q, t)));
        }
        out.truncated += usize::from(w.truncated);
        out.spans.push(from..out.pairs.len());
    }
    Ok(out)
}

/// Each input pair's score: the best of its windows' (NaN only when all are NaN).
pub fn fold(spans: &[Range<usize>], scores: &[f32]) -> Vec<f32> {
    spans.iter().map(|s| scores[s.clone()].iter().copied().fold(f32::NAN, f32::max)).collect()
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use Boundary::*;

    fn words(n: usize) -> Vec<Boundary> {
        let mut v = vec![Word; n];
        v[0] = Paragraph;
        v
    }

    fn opts(max_chunks: usize, overlap: usize) -> ChunkOptions {
        ChunkOptions { max_chunks, overlap, select: 0 }
    }

    #[test]
    fn a_document_that_fits_is_one_window() {
        assert_eq!(plan(&words(10), 10, opts(8, 2)), (vec![0..10], false));
        assert_eq!(plan(&words(3), 10, opts(8, 2)), (vec![0..3], false));
        assert_eq!(plan(&[], 10, opts(8, 2)), (vec![0..0], false));
    }

    #[test]
    fn plain_words_get_full_windows_that_overlap() {
        let (w, cut) = plan(&words(100), 20, opts(100, 5));
        assert!(!cut);
        assert_eq!(w[0], 0..20);
        assert_eq!(w[1], 15..35);
        assert!(w.windows(2).all(|p| p[0].end - p[1].start == 5), "{w:?}");
        assert_eq!(w.last().map(|r| r.end), Some(100));
    }

    #[test]
    fn one_token_over_gives_two_windows() {
        let (w, cut) = plan(&words(11), 10, opts(8, 2));
        assert!(!cut);
        assert_eq!(w, vec![0..10, 8..11]);
    }

    #[test]
    fn a_paragraph_that_fits_is_read_whole_by_one_window() {
        // 0..30 a long paragraph of sentences of 6 tokens, then paragraphs 30..45 and 45..70.
        let mut s = words(70);
        for i in (6..30).step_by(6) {
            s[i] = Sentence;
        }
        s[30] = Paragraph;
        s[45] = Paragraph;
        let (w, cut) = plan(&s, 20, opts(10, 6));
        assert!(!cut);
        // Cut inside the first paragraph (filled up with the words of the sentence that
        // did not fit), the next window rereads that sentence and the one before; the paragraph at 30 has a window of its own, without the start of
        // the next.
        assert_eq!(w[0], 0..20);
        assert_eq!(w[1], 12..30);
        assert_eq!(w[2], 30..45);
        assert_eq!(w[3], 45..65);
        assert!(w.iter().all(|r| r.len() <= 20));
        assert_eq!(w.last().map(|r| r.end), Some(70));
    }

    #[test]
    fn short_paragraphs_share_a_window_longer_ones_do_not() {
        // Paragraphs of 5 tokens, under a quarter of a 40-token window, share windows.
        let mut s = words(60);
        for i in (5..60).step_by(5) {
            s[i] = Paragraph;
        }
        assert_eq!(plan(&s, 40, opts(10, 4)).0, vec![0..40, 40..60]);
        // Paragraphs of 12 tokens each get a window of their own.
        let mut s = words(60);
        for i in (12..60).step_by(12) {
            s[i] = Paragraph;
        }
        assert_eq!(plan(&s, 40, opts(10, 4)).0, vec![0..12, 12..24, 24..36, 36..48, 48..60]);
        // A short paragraph before or after a long one does not join it.
        let mut s = words(50);
        for i in [3, 23, 26] {
            s[i] = Paragraph;
        }
        assert_eq!(plan(&s, 40, opts(10, 4)).0, vec![0..3, 3..23, 23..26, 26..50]);
    }

    #[test]
    fn lines_are_cut_before_sentences() {
        let mut s = words(40);
        s[8] = Sentence;
        s[12] = Line;
        s[16] = Sentence;
        let mut units = Vec::new();
        split(&s, 0..40, Paragraph, 16, &mut units);
        // The line 0..12 fits and stays whole; the line 12..40 does not and is cut at its
        // sentence end, then its sentence 16..40 at its words.
        assert_eq!(units[..3], [0..12, 12..16, 16..17]);
        assert_eq!(units.len(), 3 + 23);
    }

    #[test]
    fn windows_never_start_inside_a_word() {
        let mut s = words(50);
        for b in s.iter_mut().skip(1).step_by(2) {
            *b = None;
        }
        let (w, _) = plan(&s, 10, opts(50, 3));
        assert!(w.iter().all(|r| s[r.start] != None), "{w:?}");
        assert_eq!(w.last().map(|r| r.end), Some(50));
    }

    #[test]
    fn a_word_wider_than_a_window_is_cut_in_pieces() {
        let mut s = vec![None; 25];
        s[0] = Paragraph;
        let (w, cut) = plan(&s, 10, opts(10, 4));
        assert!(!cut);
        assert_eq!(w, vec![0..10, 10..20, 20..25]);
    }

    #[test]
    fn max_chunks_caps_the_windows_and_says_so() {
        let (w, cut) = plan(&words(1000), 10, opts(4, 2));
        assert_eq!(w.len(), 4);
        assert!(cut);
    }

    #[test]
    fn overlap_is_at_most_half_a_window_and_windows_always_advance() {
        let (w, cut) = plan(&words(200), 10, opts(1000, 50));
        assert!(!cut);
        assert!(w.windows(2).all(|p| p[1].start > p[0].start && p[0].end - p[1].start == 5), "{w:?}");
        let (w, _) = plan(&words(5), 1, opts(1000, 0));
        assert_eq!(w.len(), 5);
    }

    #[test]
    fn boundaries_from_text() {
        let text = "One two. Three\nfour\n\nfive";
        let offsets = [(0, 3), (4, 7), (7, 8), (9, 14), (15, 19), (21, 25)];
        assert_eq!(boundaries(text, &offsets), vec![Paragraph, Word, None, Sentence, Line, Paragraph]);
        // SentencePiece-style offsets that take in the space before a word.
        let text = "Hi there. Bye";
        let offsets = [(0, 2), (2, 8), (8, 9), (9, 13)];
        assert_eq!(boundaries(text, &offsets), vec![Paragraph, Word, None, Sentence]);
    }

    #[test]
    fn fold_takes_the_best_window() {
        let spans = vec![0..1, 1..4, 4..6];
        let scores = [0.5, 0.1, 0.9, 0.3, f32::NAN, 0.2];
        assert_eq!(fold(&spans, &scores), vec![0.5, 0.9, 0.2]);
        assert!(fold(&[0..1], &[f32::NAN])[0].is_nan());
    }
}
