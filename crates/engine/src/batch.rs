//! Length-sorted batching under a token budget.
//!
//! Pairs are sorted by token length (longest first), then cut into batches whose padded
//! size `rows x longest` stays within `max_tokens` and whose row count stays within
//! `max_pairs`. Each batch is padded only to its own longest row, so short pairs never pay
//! for long ones. A single pair longer than the budget forms a batch of its own.

use crate::model::Device;

/// Limits for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_tokens: usize,
    pub max_pairs: usize,
}

impl BatchLimits {
    /// Small batches for the CPU: 4 pairs and 2,048 tokens keep each layer's activations
    /// and attention scores in cache. On 2 cores this ran MiniLM-L6 at twice the pairs/s
    /// of batches of 64 to 256 pairs (docs/performance.md, "Batch size").
    pub const CPU: BatchLimits = BatchLimits { max_tokens: 2048, max_pairs: 4 };
    /// Large batches for a GPU, which needs many rows to fill its cores.
    pub const GPU: BatchLimits = BatchLimits { max_tokens: 16384, max_pairs: 256 };

    /// The limits that suit the device a model runs on.
    pub fn for_device(device: Device) -> BatchLimits {
        match device {
            Device::Cpu => Self::CPU,
            Device::Cuda(_) => Self::GPU,
        }
    }
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self::CPU
    }
}

/// Groups item indices into batches. `lengths[i]` is the token length of item i. The
/// returned batches hold indices into `lengths`; every index appears exactly once.
pub fn plan(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let max_tokens = limits.max_tokens.max(1);
    let max_pairs = limits.max_pairs.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable sort: equal lengths keep their input order, so plans are deterministic.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));

    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lengths[i].max(1);
        let width = longest.max(len);
        if !current.is_empty() && (current.len() >= max_pairs || (current.len() + 1) * width > max_tokens) {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_and_budget_kept() {
        let lengths: Vec<usize> = (0..500).map(|i| (i * 37) % 250 + 3).collect();
        let limits = BatchLimits { max_tokens: 2000, max_pairs: 64 };
        let batches = plan(&lengths, limits);
        let mut seen = vec![false; lengths.len()];
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            assert!(b.len() <= 64);
            assert!(b.len() == 1 || b.len() * longest <= 2000, "batch over budget");
            for &i in b {
                assert!(!seen[i], "index twice");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn sorted_longest_first_and_oversized_alone() {
        let lengths = vec![10, 5000, 20, 30];
        let batches = plan(&lengths, BatchLimits { max_tokens: 100, max_pairs: 8 });
        assert_eq!(batches[0], vec![1]);
        assert_eq!(batches[1], vec![3, 2, 0]);
    }

    #[test]
    fn empty_input_no_batches() {
        assert!(plan(&[], BatchLimits::default()).is_empty());
    }
}
