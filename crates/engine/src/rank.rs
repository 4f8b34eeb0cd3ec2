//! Ordering scores into a ranking.

/// Orders (index, score) best first. Equal scores keep their input order, and NaN (a model
/// that produced no number for a pair) ranks after every real score, never first.
pub fn rank(scores: &[f32]) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| a.1.is_nan().cmp(&b.1.is_nan()).then(b.1.total_cmp(&a.1)).then(a.0.cmp(&b.0)));
    ranked
}

#[cfg(test)]
mod tests {
    use super::rank;

    #[test]
    fn best_first_ties_in_input_order() {
        let r = rank(&[0.2, 0.9, 0.2, -1.0]);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 0, 2, 3]);
    }

    #[test]
    fn nan_ranks_last_whatever_its_sign() {
        let r = rank(&[f32::NAN, 0.5, -f32::NAN, f32::NEG_INFINITY, f32::INFINITY]);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![4, 1, 3, 0, 2]);
    }
}
