//! Retrieval metrics of one query's run against its relevance judgments (qrels), with
//! trec_eval's conventions, so that the figures equal pytrec_eval's and ir-measures':
//!
//! - the run is ordered by score, highest first; equal scores are ordered by document id,
//!   **descending** (byte order), as trec_eval does. A run given as ranks is a run with
//!   score = -rank.
//! - a document is relevant when its grade is above 0; documents absent from the qrels
//!   have grade 0.
//! - nDCG@k: gain = grade, discount log2(rank + 1) (rank 1 undiscounted), divided by the
//!   DCG of the ideal ranking of all judged documents of the query (trec_eval's
//!   `ndcg_cut_k`); 0 when the query has no relevant document.
//! - reciprocal rank: 1 / the rank of the first relevant document, 0 when none is retrieved
//!   (`recip_rank`; its mean over queries is MRR).
//! - recall@k: relevant documents in the top k / relevant documents judged (0 when none;
//!   `recall_k`); precision@k: relevant documents in the top k / k, also when fewer than k
//!   were retrieved (`P_k`).
//!
//! The input is one row per document of a FULL JOIN of the run and the qrels: a row with a
//! score was retrieved, a row with a grade was judged. A query with no retrieved row or no
//! judged row has no value (None), as trec_eval evaluates only the queries of both, so
//! that an average over queries that skips None is trec_eval's mean.

use crate::diversity::{bad, InputError};
use std::collections::HashSet;

/// One document of a query: retrieved with `score` (None: not retrieved), judged with
/// `grade` (None: not in the qrels, grade 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged<'a> {
    pub doc: &'a str,
    pub score: Option<f64>,
    pub grade: Option<f64>,
}

/// A metric, with its cut-off where it has one (k > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Ndcg(usize),
    ReciprocalRank,
    Recall(usize),
    Precision(usize),
}

/// The metric's value for one query (see the module's documentation), or None when the
/// query has no retrieved or no judged document. Errors: k = 0, a NaN score or grade, a
/// document id that appears twice (twice in the run, or twice in the qrels).
pub fn evaluate(rows: &[Judged], metric: Metric) -> Result<Option<f64>, InputError> {
    if let Metric::Ndcg(0) | Metric::Recall(0) | Metric::Precision(0) = metric {
        return Err(bad("k must be positive"));
    }
    let mut seen = HashSet::with_capacity(rows.len());
    for r in rows {
        if r.score.is_some_and(f64::is_nan) {
            return Err(bad(format!("score of document \"{}\" is NaN", r.doc)));
        }
        if r.grade.is_some_and(f64::is_nan) {
            return Err(bad(format!("grade of document \"{}\" is NaN", r.doc)));
        }
        if !seen.insert(r.doc) {
            return Err(bad(format!("document \"{}\" appears more than once for one query", r.doc)));
        }
    }
    if !rows.iter().any(|r| r.score.is_some()) || !rows.iter().any(|r| r.grade.is_some()) {
        return Ok(None);
    }
    let mut run: Vec<(f64, &str, f64)> =
        rows.iter().filter_map(|r| r.score.map(|s| (s, r.doc, r.grade.unwrap_or(0.0).max(0.0)))).collect();
    run.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(a.1)));
    let relevant = rows.iter().filter(|r| r.grade.is_some_and(|g| g > 0.0)).count();
    let hits = |k: usize| run.iter().take(k).filter(|r| r.2 > 0.0).count() as f64;
    Ok(Some(match metric {
        Metric::Ndcg(k) => {
            let dcg = |gains: &mut dyn Iterator<Item = f64>| -> f64 {
                gains.take(k).enumerate().map(|(i, g)| g / ((i + 2) as f64).log2()).sum()
            };
            let mut ideal: Vec<f64> = rows.iter().filter_map(|r| r.grade).filter(|&g| g > 0.0).collect();
            ideal.sort_by(|a, b| b.total_cmp(a));
            let idcg = dcg(&mut ideal.into_iter());
            if idcg > 0.0 {
                dcg(&mut run.iter().map(|r| r.2)) / idcg
            } else {
                0.0
            }
        }
        Metric::ReciprocalRank => run.iter().position(|r| r.2 > 0.0).map_or(0.0, |i| 1.0 / (i + 1) as f64),
        Metric::Recall(k) => {
            if relevant == 0 {
                0.0
            } else {
                hits(k) / relevant as f64
            }
        }
        Metric::Precision(k) => hits(k) / k as f64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(doc: &str, score: Option<f64>, grade: Option<f64>) -> Judged<'_> {
        Judged { doc, score, grade }
    }

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("a value");
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    // Retrieved: a (grade 0), b (2), c (not judged), d (1); e (grade 1) not retrieved.
    fn sample() -> Vec<Judged<'static>> {
        vec![
            j("a", Some(4.0), Some(0.0)),
            j("b", Some(3.0), Some(2.0)),
            j("c", Some(2.0), None),
            j("d", Some(1.0), Some(1.0)),
            j("e", None, Some(1.0)),
        ]
    }

    #[test]
    fn ndcg_by_hand() {
        let dcg = 2.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        close(evaluate(&sample(), Metric::Ndcg(10)).expect("valid input"), dcg / idcg);
        // At 2 only b counts, and the ideal stops at two documents.
        close(
            evaluate(&sample(), Metric::Ndcg(2)).expect("valid input"),
            (2.0 / 3f64.log2()) / (2.0 + 1.0 / 3f64.log2()),
        );
    }

    #[test]
    fn rr_recall_precision_by_hand() {
        close(evaluate(&sample(), Metric::ReciprocalRank).expect("valid input"), 0.5);
        close(evaluate(&sample(), Metric::Recall(2)).expect("valid input"), 1.0 / 3.0);
        close(evaluate(&sample(), Metric::Recall(10)).expect("valid input"), 2.0 / 3.0);
        close(evaluate(&sample(), Metric::Precision(2)).expect("valid input"), 0.5);
        // Precision divides by k even when fewer were retrieved (trec_eval's P_k).
        close(evaluate(&sample(), Metric::Precision(10)).expect("valid input"), 0.2);
    }

    #[test]
    fn ties_by_document_id_descending() {
        // Equal scores: "b" ranks before "a" (trec_eval orders ties by docno, descending).
        let rows = [j("a", Some(1.0), Some(1.0)), j("b", Some(1.0), Some(0.0))];
        close(evaluate(&rows, Metric::ReciprocalRank).expect("valid input"), 0.5);
        let rows = [j("b", Some(1.0), Some(1.0)), j("a", Some(1.0), Some(0.0))];
        close(evaluate(&rows, Metric::ReciprocalRank).expect("valid input"), 1.0);
    }

    #[test]
    fn no_relevant_document_gives_zero() {
        let rows = [j("a", Some(1.0), Some(0.0)), j("b", Some(0.5), None)];
        for m in [Metric::Ndcg(10), Metric::ReciprocalRank, Metric::Recall(10), Metric::Precision(10)] {
            close(evaluate(&rows, m).expect("valid input"), 0.0);
        }
    }

    #[test]
    fn queries_not_in_both_have_no_value() {
        assert_eq!(evaluate(&[], Metric::Ndcg(10)).expect("valid input"), None);
        // In the qrels, not in the run.
        assert_eq!(evaluate(&[j("a", None, Some(1.0))], Metric::Ndcg(10)).expect("valid input"), None);
        // In the run, not in the qrels.
        assert_eq!(evaluate(&[j("a", Some(1.0), None)], Metric::ReciprocalRank).expect("valid input"), None);
    }

    #[test]
    fn negative_grades_count_as_zero() {
        let rows = [j("a", Some(2.0), Some(-1.0)), j("b", Some(1.0), Some(1.0))];
        close(evaluate(&rows, Metric::Ndcg(10)).expect("valid input"), 1.0 / 3f64.log2());
        close(evaluate(&rows, Metric::ReciprocalRank).expect("valid input"), 0.5);
    }

    #[test]
    fn bad_input() {
        let e = |r: Result<Option<f64>, InputError>| r.expect_err("an error").0;
        for m in [Metric::Ndcg(0), Metric::Recall(0), Metric::Precision(0)] {
            assert_eq!(e(evaluate(&sample(), m)), "k must be positive");
        }
        let rows = [j("a", Some(f64::NAN), Some(1.0))];
        assert_eq!(e(evaluate(&rows, Metric::ReciprocalRank)), "score of document \"a\" is NaN");
        let rows = [j("a", Some(1.0), Some(f64::NAN))];
        assert_eq!(e(evaluate(&rows, Metric::ReciprocalRank)), "grade of document \"a\" is NaN");
        let rows = [j("a", Some(1.0), Some(1.0)), j("a", Some(0.5), None)];
        assert_eq!(e(evaluate(&rows, Metric::Ndcg(10))), "document \"a\" appears more than once for one query");
    }

    #[test]
    fn equals_pytrec_eval_on_ties_and_grades() {
        // pytrec_eval-terrier 0.5.11 on qrels {a: 1, b: 0, e: 1, z: 2} and run {a: 1, b: 1,
        // c: 1, z: 0.5}: ndcg_cut_10 0.4348079399079101, recip_rank 1/3, recall_10 2/3, P_10
        // 0.2 (the tie a, b, c is ranked c, b, a).
        let rows = [
            j("a", Some(1.0), Some(1.0)),
            j("b", Some(1.0), Some(0.0)),
            j("c", Some(1.0), None),
            j("z", Some(0.5), Some(2.0)),
            j("e", None, Some(1.0)),
        ];
        close(evaluate(&rows, Metric::Ndcg(10)).expect("valid input"), 0.4348079399079101);
        close(evaluate(&rows, Metric::ReciprocalRank).expect("valid input"), 1.0 / 3.0);
        close(evaluate(&rows, Metric::Recall(10)).expect("valid input"), 2.0 / 3.0);
        close(evaluate(&rows, Metric::Precision(10)).expect("valid input"), 0.2);
    }

    #[test]
    fn infinite_scores_rank_at_the_ends() {
        let rows = [j("a", Some(f64::NEG_INFINITY), Some(1.0)), j("b", Some(f64::INFINITY), Some(0.0))];
        close(evaluate(&rows, Metric::ReciprocalRank).expect("valid input"), 0.5);
    }
}
