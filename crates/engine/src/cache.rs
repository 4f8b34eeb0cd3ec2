//! The worker's model cache: loaded models kept under a memory budget, the least recently
//! used one evicted first; load failures remembered for a while, in bounded number.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

struct Entry<K, V> {
    key: K,
    value: V,
    bytes: u64,
    last_used: u64,
}

/// Values under a budget of bytes, evicted least recently used first.
pub struct Lru<K, V> {
    entries: Vec<Entry<K, V>>,
    budget: u64,
    clock: u64,
}

impl<K: PartialEq + Clone, V> Lru<K, V> {
    pub fn new(budget: u64) -> Self {
        Lru { entries: Vec::new(), budget, clock: 0 }
    }

    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    /// The value of `key`, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.iter_mut().find(|e| &e.key == key).map(|e| {
            e.last_used = clock;
            &e.value
        })
    }

    /// Adds `value` of `bytes`, first evicting the least recently used values that are not
    /// `pinned` until it fits in the budget. A value that does not fit even then is added
    /// anyway (the caller needs it now) and is the first evicted later. Returns the keys
    /// evicted.
    pub fn insert(&mut self, key: K, value: V, bytes: u64, pinned: &dyn Fn(&K) -> bool) -> Vec<K> {
        self.remove(&key);
        let mut evicted = Vec::new();
        while self.bytes() + bytes > self.budget {
            let victim = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !pinned(&e.key))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            let Some(i) = victim else { break };
            evicted.push(self.entries.swap_remove(i).key);
        }
        self.clock += 1;
        self.entries.push(Entry { key, value, bytes, last_used: self.clock });
        evicted
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.entries.iter().position(|e| &e.key == key)?;
        Some(self.entries.swap_remove(i).value)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Recent load failures: at most `cap`, each for `ttl`, so a broken model answers with its
/// error without being loaded again on every call, and a flood of bad names cannot grow it.
pub struct Failures<K, E> {
    entries: VecDeque<(K, E, Instant)>,
    cap: usize,
    ttl: Duration,
}

impl<K: PartialEq, E: Clone> Failures<K, E> {
    pub fn new(cap: usize, ttl: Duration) -> Self {
        Failures { entries: VecDeque::new(), cap: cap.max(1), ttl }
    }

    /// The remembered error of `key`, if it failed less than `ttl` before `now`.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<E> {
        self.entries.retain(|(_, _, at)| now.saturating_duration_since(*at) < self.ttl);
        self.entries.iter().find(|(k, _, _)| k == key).map(|(_, e, _)| e.clone())
    }

    pub fn insert(&mut self, key: K, error: E, now: Instant) {
        self.entries.retain(|(k, _, _)| k != &key);
        if self.entries.len() >= self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back((key, error, now));
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first_and_pinned_stays() {
        let mut c: Lru<&str, u32> = Lru::new(300);
        assert!(c.insert("a", 1, 100, &|_| false).is_empty());
        assert!(c.insert("b", 2, 100, &|_| false).is_empty());
        assert!(c.insert("c", 3, 100, &|_| false).is_empty());
        assert_eq!(c.get(&"a"), Some(&1)); // b is now the least recently used
        assert_eq!(c.insert("d", 4, 100, &|_| false), vec!["b"]);
        // c is pinned (requests wait for it): a goes instead.
        assert_eq!(c.insert("e", 5, 150, &|k| *k == "c"), vec!["a", "d"]);
        assert_eq!(c.bytes(), 250);
        assert!(c.get(&"c").is_some() && c.get(&"e").is_some());
    }

    #[test]
    fn a_value_over_the_budget_still_loads_alone() {
        let mut c: Lru<&str, u32> = Lru::new(100);
        c.insert("a", 1, 50, &|_| false);
        assert_eq!(c.insert("big", 2, 500, &|_| false), vec!["a"]);
        assert_eq!(c.len(), 1);
        assert_eq!(c.insert("a", 1, 50, &|_| false), vec!["big"]);
    }

    #[test]
    fn failures_expire_and_stay_bounded() {
        let t0 = Instant::now();
        let mut f: Failures<String, &str> = Failures::new(3, Duration::from_secs(10));
        for i in 0..400 {
            f.insert(format!("m{i}"), "broken", t0);
        }
        assert_eq!(f.len(), 3);
        assert_eq!(f.get(&"m399".to_string(), t0), Some("broken"));
        assert_eq!(f.get(&"m0".to_string(), t0), None);
        assert_eq!(f.get(&"m399".to_string(), t0 + Duration::from_secs(11)), None);
        assert!(f.is_empty());
    }
}
