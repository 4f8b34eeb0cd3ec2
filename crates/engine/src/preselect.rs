//! Window preselection: of a long document's windows, only the few that share the most
//! with the query are given to the cross-encoder. A document's score is its best window's,
//! and the best window nearly always holds the query's words; reading every window costs
//! a model pass per window, reading them lexically costs microseconds.
//!
//! The lexical score is BM25 (k1 = 1.2, b = 0.75) over the document's own windows as the
//! collection: a query term found in every window tells the windows nothing and weighs
//! almost nothing, a term found in one weighs most. Terms are lowercased runs of letters
//! and digits without a plural "s", compared on their first [`STEM`] characters, so that
//! "image" finds "images" and "compression" finds "compressed". Ties (and windows with no
//! query term at all) go to the earlier window: the beginning of a text says most about it.

use std::collections::HashMap;

/// Characters a term is compared on: a crude stem.
pub const STEM: usize = 6;

const K1: f64 = 1.2;
const B: f64 = 0.75;

/// The terms of `text`: lowercased runs of letters and digits, without a final "s" (not
/// "ss", and only in words of four letters or more), cut to [`STEM`] characters.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| {
        let mut t: String = w.chars().flat_map(char::to_lowercase).collect();
        if t.len() >= 4 && t.ends_with('s') && !t.ends_with("ss") {
            t.pop();
        }
        t.chars().take(STEM).collect()
    })
}

/// The BM25 score of each window for `query`, with the windows as the collection.
pub fn scores(query: &str, windows: &[&str]) -> Vec<f64> {
    let mut query_terms: Vec<String> = terms(query).collect();
    query_terms.sort_unstable();
    query_terms.dedup();
    if query_terms.is_empty() || windows.is_empty() {
        return vec![0.0; windows.len()];
    }
    let index: HashMap<&str, usize> = query_terms.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    // Term frequencies of the query's terms in each window, and each window's length.
    let mut tf = vec![vec![0u32; query_terms.len()]; windows.len()];
    let mut len = vec![0usize; windows.len()];
    for (w, text) in windows.iter().enumerate() {
        for t in terms(text) {
            len[w] += 1;
            if let Some(&i) = index.get(t.as_str()) {
                tf[w][i] += 1;
            }
        }
    }
    let n = windows.len() as f64;
    let avg = (len.iter().sum::<usize>() as f64 / n).max(1.0);
    let idf: Vec<f64> = (0..query_terms.len())
        .map(|i| {
            let df = tf.iter().filter(|f| f[i] > 0).count() as f64;
            (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
        })
        .collect();
    tf.iter()
        .zip(&len)
        .map(|(f, &l)| {
            let norm = K1 * (1.0 - B + B * l as f64 / avg);
            f.iter().zip(&idf).map(|(&c, w)| if c == 0 { 0.0 } else { w * f64::from(c) * (K1 + 1.0) / (f64::from(c) + norm) }).sum()
        })
        .collect()
}

/// The windows to score, in document order: all of them when there are at most `keep`
/// (or `keep` is 0), else the `keep` with the best lexical score for `query`.
pub fn select(query: &str, windows: &[&str], keep: usize) -> Vec<usize> {
    if keep == 0 || windows.len() <= keep {
        return (0..windows.len()).collect();
    }
    let s = scores(query, windows);
    let mut order: Vec<usize> = (0..windows.len()).collect();
    // Best first; the earlier window wins a tie (the sort is stable).
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    let mut kept = order[..keep].to_vec();
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_lowercased_stems_of_letters_and_digits() {
        let t: Vec<String> = terms("Image-viewers, for the TERMINAL (x11) über images glass").collect();
        assert_eq!(t, ["image", "viewer", "for", "the", "termin", "x11", "über", "image", "glass"]);
    }

    #[test]
    fn few_windows_are_all_kept() {
        assert_eq!(select("q", &["a", "b"], 2), vec![0, 1]);
        assert_eq!(select("q", &["a", "b", "c"], 0), vec![0, 1, 2]);
        assert_eq!(select("q", &[], 3), Vec::<usize>::new());
    }

    #[test]
    fn the_windows_that_hold_the_query_are_kept_in_document_order() {
        let windows = [
            "a desktop toy for children",
            "terminal image viewer that draws pictures with sixel",
            "a library for testing on the JVM",
            "viewer of images",
            "another unrelated paragraph about fonts",
        ];
        assert_eq!(select("image viewer for the terminal", &windows, 2), vec![1, 3]);
        assert_eq!(select("image viewer for the terminal", &windows, 1), vec![1]);
    }

    #[test]
    fn rare_terms_weigh_more_than_common_ones() {
        // "the" is in every window: the window with "sixel" wins.
        let windows = ["the the the the", "the sixel", "the the"];
        let s = scores("the sixel", &windows);
        assert!(s[1] > s[0] && s[1] > s[2], "{s:?}");
    }

    #[test]
    fn without_a_match_the_first_windows_are_kept() {
        assert_eq!(select("zebra", &["a", "b", "c", "d"], 2), vec![0, 1]);
        assert_eq!(select("", &["a", "b", "c"], 1), vec![0]);
        assert_eq!(select("!!!", &["a", "b", "c"], 1), vec![0]);
    }

    #[test]
    fn longer_windows_do_not_win_by_length_alone() {
        let long = "sixel ".to_string() + &"filler ".repeat(200);
        let windows = [long.as_str(), "sixel graphics"];
        assert_eq!(select("sixel", &windows, 1), vec![1]);
    }
}
