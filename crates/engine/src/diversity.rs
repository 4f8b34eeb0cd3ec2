//! Diversifying a reranked list: maximal marginal relevance (Carbonell and Goldstein,
//! 1998) and near-duplicate collapse.
//!
//! A cross-encoder scores each candidate alone, so near-copies of one document get nearly
//! the same score and sit side by side in the top k. MMR picks the k results one at a
//! time, each time the candidate with the best
//!
//! ```text
//! lambda * relevance(d) - (1 - lambda) * max over picked p of similarity(d, p)
//! ```
//!
//! - **relevance** is the cross-encoder's score, min-max normalised within the candidate
//!   list to [0, 1] (best candidate 1, worst 0; all equal: all 1). Cross-encoder logits
//!   have no fixed scale (one model gives -11..11, another 0..1), and similarity is in
//!   [-1, 1]: normalising makes lambda mean the same for every model and every query.
//! - **similarity** is the cosine of the candidates' embeddings ([`Items::Vectors`]), or,
//!   where there are no vectors, the Jaccard similarity of the texts' word bigrams
//!   ([`Items::Texts`], see [`text_similarity`]).
//! - **lambda** points as in Elasticsearch's `diversify` retriever: 1 is relevance only
//!   (the reranked order unchanged), 0 is diversity only. (OpenSearch and Qdrant point
//!   the other way: their 0 is relevance only.) [`DEFAULT_LAMBDA`] comes from the
//!   measurements in docs/diversity.md.
//!
//! Near-duplicate collapse: with a threshold, a candidate whose similarity to a result
//! already picked is at least the threshold is dropped (fewer than k results when too
//! few candidates remain). With lambda = 1 this keeps the reranked order and only removes
//! the copies.
//!
//! Ties (equal MMR value) go to the candidate with the higher score, then to the one that
//! came first in the input.

use std::collections::HashSet;
use std::fmt;

/// The default lambda: the most diverse of 1.0, 0.9, ..., 0.5 that loses at most 0.01
/// NDCG@10 against the reranked order on the dev queries (docs/diversity.md).
pub const DEFAULT_LAMBDA: f32 = 0.7;

/// What is wrong with the input of a diversity or evaluation call. The extension raises
/// them as invalid parameter values (22023).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

pub(crate) fn bad(msg: impl Into<String>) -> InputError {
    InputError(msg.into())
}

/// How the results are picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmrOptions {
    /// How many results at most (> 0).
    pub k: usize,
    /// 1 = relevance only, 0 = diversity only; in [0, 1].
    pub lambda: f32,
    /// Drop a candidate whose similarity to a picked result is at least this (None: keep all).
    pub duplicate_threshold: Option<f32>,
}

impl Default for MmrOptions {
    fn default() -> Self {
        Self { k: 10, lambda: DEFAULT_LAMBDA, duplicate_threshold: None }
    }
}

/// What the similarity of two candidates is computed from.
#[derive(Debug, Clone, Copy)]
pub enum Items<'a> {
    /// One embedding per candidate, all of one dimension: cosine similarity.
    Vectors(&'a [&'a [f32]]),
    /// One text per candidate: Jaccard similarity of word bigrams.
    Texts(&'a [&'a str]),
}

impl Items<'_> {
    fn len(&self) -> usize {
        match self {
            Items::Vectors(v) => v.len(),
            Items::Texts(t) => t.len(),
        }
    }
}

/// The cosine of two vectors of one dimension; 0 when either is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

/// The shingles of a text: its lowercased alphanumeric words, as bigrams (single words
/// for a text of one word).
fn shingles(text: &str) -> HashSet<String> {
    let words: Vec<String> =
        text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    if words.len() < 2 {
        return words.into_iter().collect();
    }
    words.windows(2).map(|w| format!("{} {}", w[0], w[1])).collect()
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f32 {
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    let inter = a.intersection(b).count();
    inter as f32 / (a.len() + b.len() - inter) as f32
}

/// The similarity of two texts where there are no embeddings: the Jaccard similarity of
/// their sets of word bigrams (lowercased runs of letters and digits; a one-word text is
/// its word), in [0, 1]. Two empty texts have similarity 0.
pub fn text_similarity(a: &str, b: &str) -> f32 {
    jaccard(&shingles(a), &shingles(b))
}

/// Picks up to `opts.k` candidates by MMR (see the module's documentation) and returns
/// their indices in the order picked. `scores` are the cross-encoder's, one per candidate,
/// finite. Errors: k = 0, lambda outside [0, 1], a threshold that is NaN, a score that is
/// not finite, embeddings of different dimensions or with a non-finite component, or
/// not one item per score.
pub fn mmr(scores: &[f32], items: Items, opts: MmrOptions) -> Result<Vec<usize>, InputError> {
    if opts.k == 0 {
        return Err(bad("k must be positive"));
    }
    if !(0.0..=1.0).contains(&opts.lambda) {
        return Err(bad(format!("lambda must be between 0 and 1, not {}", opts.lambda)));
    }
    if opts.duplicate_threshold.is_some_and(f32::is_nan) {
        return Err(bad("duplicate_threshold must not be NaN"));
    }
    if items.len() != scores.len() {
        return Err(bad(format!("{} scores but {} items to compare", scores.len(), items.len())));
    }
    if let Some(s) = scores.iter().find(|s| !s.is_finite()) {
        return Err(bad(format!("scores must be finite numbers, not {s}")));
    }
    if let Items::Vectors(v) = items {
        if let Some(first) = v.first() {
            if first.is_empty() {
                return Err(bad("embeddings must not be empty"));
            }
            for (i, e) in v.iter().enumerate() {
                if e.len() != first.len() {
                    return Err(bad(format!(
                        "embeddings of different dimensions: {} and {} (candidate {})",
                        first.len(),
                        e.len(),
                        i + 1
                    )));
                }
                if e.iter().any(|x| !x.is_finite()) {
                    return Err(bad(format!("embedding of candidate {} has a component that is not finite", i + 1)));
                }
            }
        }
    }
    let n = scores.len();
    let (lo, hi) = scores.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    let relevance: Vec<f64> = scores
        .iter()
        .map(|&s| if hi > lo { (f64::from(s) - f64::from(lo)) / (f64::from(hi) - f64::from(lo)) } else { 1.0 })
        .collect();
    let texts: Vec<HashSet<String>> = match items {
        Items::Texts(t) => t.iter().map(|t| shingles(t)).collect(),
        Items::Vectors(_) => Vec::new(),
    };
    let sim = |i: usize, j: usize| -> f64 {
        f64::from(match items {
            Items::Vectors(v) => cosine(v[i], v[j]),
            Items::Texts(_) => jaccard(&texts[i], &texts[j]),
        })
    };
    let lambda = f64::from(opts.lambda);
    // Per candidate: its largest similarity to a picked result so far (None: none picked).
    let mut max_sim: Vec<Option<f64>> = vec![None; n];
    let mut left: Vec<bool> = vec![true; n];
    let mut picked = Vec::with_capacity(opts.k.min(n));
    while picked.len() < opts.k {
        let mut best: Option<(usize, f64)> = None;
        for i in (0..n).filter(|&i| left[i]) {
            let value = lambda * relevance[i] - (1.0 - lambda) * max_sim[i].unwrap_or(0.0);
            let better = match best {
                None => true,
                Some((b, bv)) => value > bv || (value == bv && scores[i] > scores[b]),
            };
            if better {
                best = Some((i, value));
            }
        }
        let Some((p, _)) = best else { break };
        left[p] = false;
        picked.push(p);
        for i in 0..n {
            if !left[i] {
                continue;
            }
            let s = sim(i, p);
            max_sim[i] = Some(max_sim[i].map_or(s, |m| m.max(s)));
            if opts.duplicate_threshold.is_some_and(|t| s >= f64::from(t)) {
                left[i] = false;
            }
        }
    }
    Ok(picked)
}

/// Pairs among `picked` (indices into `items`) whose similarity is at least `threshold`:
/// the near-duplicates a list still holds.
pub fn near_duplicate_pairs(picked: &[usize], items: Items, threshold: f32) -> usize {
    let mut count = 0;
    for (a, &i) in picked.iter().enumerate() {
        for &j in &picked[a + 1..] {
            let s = match items {
                Items::Vectors(v) => cosine(v[i], v[j]),
                Items::Texts(t) => text_similarity(t[i], t[j]),
            };
            if s >= threshold {
                count += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(k: usize, lambda: f32) -> MmrOptions {
        MmrOptions { k, lambda, duplicate_threshold: None }
    }

    // Candidates 0 and 1 are near-copies (cosine ~0.995); 2 is different.
    const V: [&[f32]; 3] = [&[1.0, 0.0], &[0.995, 0.1], &[0.0, 1.0]];
    // V and a fourth candidate opposite the first, scored far below the others.
    const W: [&[f32]; 4] = [&[1.0, 0.0], &[0.995, 0.1], &[0.0, 1.0], &[-1.0, 0.0]];

    #[test]
    fn lambda_one_is_the_reranked_order() {
        let scores = [3.0, 2.9, 1.0, -4.0];
        let v: [&[f32]; 4] = [&[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0], &[0.7, 0.7]];
        assert_eq!(mmr(&scores, Items::Vectors(&v), opts(4, 1.0)).expect("valid input"), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_near_copy_waits_behind_a_different_candidate() {
        // Normalised relevance [1, 0.967, 0.933, 0]: the copy (0.7 * 0.967 - 0.3 * 0.995)
        // loses to the different candidate (0.7 * 0.933 - 0), then beats the last one.
        let scores = [3.0, 2.9, 2.8, 0.0];
        assert_eq!(mmr(&scores, Items::Vectors(&W), opts(4, 0.7)).expect("valid input"), vec![0, 2, 1, 3]);
        // Relevance only keeps the copy second.
        assert_eq!(mmr(&scores, Items::Vectors(&W), opts(4, 1.0)).expect("valid input"), vec![0, 1, 2, 3]);
    }

    #[test]
    fn matches_the_formula_by_hand() {
        // Normalised relevance: [1, 0.9, 0]; lambda 0.5. Second pick: candidate 1 has
        // 0.5 * 0.9 - 0.5 * cos(0, 1), candidate 2 has 0.5 * 0 - 0.5 * 0 = 0.
        let scores = [2.0, 1.9, 1.0];
        let c01 = f64::from(cosine(V[0], V[1]));
        assert!(0.5 * 0.9 - 0.5 * c01 < 0.0);
        assert_eq!(mmr(&scores, Items::Vectors(&V), opts(2, 0.5)).expect("valid input"), vec![0, 2]);
        // At lambda 0.9 relevance wins: 0.9 * 0.9 - 0.1 * 0.995 > 0.
        assert_eq!(mmr(&scores, Items::Vectors(&V), opts(2, 0.9)).expect("valid input"), vec![0, 1]);
    }

    #[test]
    fn scale_free_scores() {
        let a = mmr(&[3.0, 2.9, 2.8, 0.0], Items::Vectors(&W), opts(4, 0.7)).expect("valid input");
        let b = mmr(&[300.0, 290.0, 280.0, 0.0], Items::Vectors(&W), opts(4, 0.7)).expect("valid input");
        let c = mmr(&[-7.0, -7.1, -7.2, -10.0], Items::Vectors(&W), opts(4, 0.7)).expect("valid input");
        assert_eq!(a, vec![0, 2, 1, 3]);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn collapse_drops_near_copies() {
        let scores = [3.0, 2.9, 2.0];
        let o = MmrOptions { k: 3, lambda: 1.0, duplicate_threshold: Some(0.9) };
        assert_eq!(mmr(&scores, Items::Vectors(&V), o).expect("valid input"), vec![0, 2]);
        let o = MmrOptions { k: 3, lambda: 1.0, duplicate_threshold: Some(0.999) };
        assert_eq!(mmr(&scores, Items::Vectors(&V), o).expect("valid input"), vec![0, 1, 2]);
    }

    #[test]
    fn text_fallback() {
        let t = [
            "SIXEL image viewer for the terminal",
            "sixel image viewer for the terminal (plugins)",
            "Command line JSON processor",
        ];
        assert!(text_similarity(t[0], t[1]) > 0.6);
        assert_eq!(text_similarity(t[0], t[2]), 0.0);
        assert_eq!(text_similarity(t[0], t[0]), 1.0);
        assert_eq!(text_similarity("", ""), 0.0);
        assert_eq!(text_similarity("word", "Word!"), 1.0);
        assert_eq!(mmr(&[3.0, 2.9, 2.0], Items::Texts(&t), opts(3, 0.3)).expect("valid input"), vec![0, 2, 1]);
        assert_eq!(mmr(&[3.0, 2.9, 2.0], Items::Texts(&t), opts(3, 1.0)).expect("valid input"), vec![0, 1, 2]);
        let o = MmrOptions { k: 3, lambda: 1.0, duplicate_threshold: Some(0.6) };
        assert_eq!(mmr(&[3.0, 2.9, 2.0], Items::Texts(&t), o).expect("valid input"), vec![0, 2]);
    }

    #[test]
    fn ties_go_to_the_higher_score_then_the_input_order() {
        let v: [&[f32]; 3] = [&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0]];
        assert_eq!(mmr(&[1.0, 1.0, 1.0], Items::Vectors(&v), opts(3, 0.7)).expect("valid input"), vec![0, 1, 2]);
        assert_eq!(mmr(&[1.0, 2.0, 1.0], Items::Vectors(&v), opts(3, 0.0)).expect("valid input"), vec![1, 0, 2]);
    }

    #[test]
    fn k_larger_than_the_list_and_empty_input() {
        assert_eq!(mmr(&[1.0, 0.0], Items::Vectors(&V[..2]), opts(10, 0.7)).expect("valid input").len(), 2);
        assert_eq!(mmr(&[], Items::Vectors(&[]), opts(10, 0.7)).expect("valid input"), Vec::<usize>::new());
        assert_eq!(mmr(&[], Items::Texts(&[]), opts(10, 0.7)).expect("valid input"), Vec::<usize>::new());
    }

    #[test]
    fn zero_vectors_are_similar_to_nothing() {
        let v: [&[f32]; 2] = [&[0.0, 0.0], &[0.0, 0.0]];
        assert_eq!(cosine(v[0], v[1]), 0.0);
        assert_eq!(mmr(&[1.0, 0.5], Items::Vectors(&v), opts(2, 0.5)).expect("valid input"), vec![0, 1]);
    }

    #[test]
    fn bad_input() {
        let e = |r: Result<Vec<usize>, InputError>| r.expect_err("an error").0;
        assert_eq!(e(mmr(&[1.0], Items::Vectors(&V[..1]), opts(0, 0.5))), "k must be positive");
        assert!(e(mmr(&[1.0], Items::Vectors(&V[..1]), opts(1, 1.5))).contains("between 0 and 1"));
        assert!(e(mmr(&[1.0], Items::Vectors(&V[..1]), opts(1, f32::NAN))).contains("between 0 and 1"));
        assert!(e(mmr(&[f32::NAN, 1.0], Items::Vectors(&V[..2]), opts(1, 0.5))).contains("finite"));
        assert!(e(mmr(&[f32::INFINITY, 1.0], Items::Vectors(&V[..2]), opts(1, 0.5))).contains("finite"));
        let mixed: [&[f32]; 2] = [&[1.0, 0.0], &[1.0, 0.0, 0.0]];
        assert_eq!(
            e(mmr(&[1.0, 0.5], Items::Vectors(&mixed), opts(2, 0.5))),
            "embeddings of different dimensions: 2 and 3 (candidate 2)"
        );
        let nan: [&[f32]; 2] = [&[1.0, 0.0], &[f32::NAN, 0.0]];
        assert!(e(mmr(&[1.0, 0.5], Items::Vectors(&nan), opts(2, 0.5))).contains("not finite"));
        let empty: [&[f32]; 1] = [&[]];
        assert!(e(mmr(&[1.0], Items::Vectors(&empty), opts(1, 0.5))).contains("empty"));
        assert!(e(mmr(&[1.0, 2.0], Items::Vectors(&V[..1]), opts(1, 0.5))).contains("2 scores but 1"));
        let o = MmrOptions { k: 1, lambda: 0.5, duplicate_threshold: Some(f32::NAN) };
        assert!(e(mmr(&[1.0], Items::Vectors(&V[..1]), o)).contains("NaN"));
    }

    #[test]
    fn duplicate_candidates_are_collapsed_or_kept_apart() {
        // The same document twice (identical vectors): MMR at a low lambda ranks the copy
        // after a different candidate; the threshold removes it.
        let v: [&[f32]; 3] = [&[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0]];
        assert_eq!(mmr(&[2.0, 2.0, 1.0], Items::Vectors(&v), opts(3, 0.3)).expect("valid input"), vec![0, 2, 1]);
        let o = MmrOptions { k: 3, lambda: 0.7, duplicate_threshold: Some(1.0) };
        assert_eq!(mmr(&[2.0, 2.0, 1.0], Items::Vectors(&v), o).expect("valid input"), vec![0, 2]);
    }

    #[test]
    fn counts_near_duplicate_pairs() {
        assert_eq!(near_duplicate_pairs(&[0, 1, 2], Items::Vectors(&V), 0.9), 1);
        assert_eq!(near_duplicate_pairs(&[0, 2], Items::Vectors(&V), 0.9), 0);
    }
}
