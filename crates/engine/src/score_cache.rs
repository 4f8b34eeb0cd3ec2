//! A cache of scores that several processes share: a fixed table in memory they all map
//! (the extension puts it in Postgres shared memory), so nothing here allocates, and every
//! field is an atomic.
//!
//! The table is set-associative: a key's first hash word picks a set of [`WAYS`] entries,
//! and the least recently used entry of a full set makes room. A short spin lock per set
//! guards its entries; the critical sections are a few loads and stores, with no call out,
//! so a lock is never held across anything that can fail or wait.
//!
//! A key is 128 bits of SipHash over everything that decides a score (the model, the
//! settings that change a score, the query and the document), each part length-prefixed.
//! Two different inputs share a key with probability about 2^-128 per pair of entries, so
//! the cache stores no texts.
//!
//! Invalidation is by epoch: the table is emptied at once by advancing the header's epoch
//! (entries of older epochs count as empty). A process reads the epoch before it asks for
//! scores and inserts with that epoch; an insert whose epoch is no longer the table's is
//! dropped, so a score computed by a model that was replaced meanwhile never enters.

use std::hash::Hasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Entries per set.
pub const WAYS: usize = 8;

/// A 128-bit key (see the module note).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key([u64; 2]);

impl Key {
    /// The key of `parts`, in order. Each part is length-prefixed, so ("ab", "c") and
    /// ("a", "bc") differ.
    pub fn new(parts: &[&[u8]]) -> Key {
        let hash = |seed: u8| {
            // DefaultHasher::new() hashes with fixed keys: the same in every process
            // running this library, which is all that shares a table.
            let mut h = std::hash::DefaultHasher::new();
            h.write_u8(seed);
            for p in parts {
                h.write_u64(p.len() as u64);
                h.write(p);
            }
            h.finish()
        };
        Key([hash(0x5a), hash(0xa5)])
    }

    /// The key's 16 bytes: a key of parts shared by many keys (hashed once) can be one
    /// part of each of them.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.0[0].to_le_bytes());
        out[8..].copy_from_slice(&self.0[1].to_le_bytes());
        out
    }
}

#[repr(C)]
#[derive(Default)]
struct Entry {
    key0: AtomicU64,
    key1: AtomicU64,
    /// The table epoch it was stored in; any other epoch means empty.
    epoch: AtomicU64,
    /// The score's bits (`f32::to_bits`): a hit gives back exactly what was stored.
    score: AtomicU32,
    /// The set's clock when last used.
    used: AtomicU32,
}

/// One set of entries and its lock. All zero is an empty, unlocked set.
#[repr(C)]
#[derive(Default)]
pub struct Set {
    lock: AtomicU32,
    clock: AtomicU32,
    entries: [Entry; WAYS],
}

/// The table's header. All zero, then [`Header::init`], is an empty table.
#[repr(C)]
#[derive(Default)]
pub struct Header {
    epoch: AtomicU64,
    sets: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
}

impl Header {
    /// Makes a zeroed header describe an empty table of `sets` sets.
    pub fn init(&self, sets: usize) {
        self.sets.store(sets as u64, Ordering::Relaxed);
        self.epoch.store(1, Ordering::Release);
    }
}

/// Sets that fit in `bytes` beside the header.
pub fn sets_for(bytes: usize) -> usize {
    bytes.saturating_sub(std::mem::size_of::<Header>()) / std::mem::size_of::<Set>()
}

/// Bytes of a table of `sets` sets, header included.
pub fn bytes_for(sets: usize) -> usize {
    std::mem::size_of::<Header>() + sets * std::mem::size_of::<Set>()
}

/// Counters of a table, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheCounts {
    pub capacity: u64,
    pub evictions: u64,
    pub invalidations: u64,
}

/// A view of a table: its header and its sets.
#[derive(Clone, Copy)]
pub struct ScoreCache<'a> {
    header: &'a Header,
    sets: &'a [Set],
}

/// Holds a set's lock; dropping it unlocks.
struct Locked<'a>(&'a Set);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.0.lock.store(0, Ordering::Release);
    }
}

impl Set {
    fn lock(&self) -> Locked<'_> {
        let mut spins = 0u32;
        while self.lock.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // The holder was descheduled: let it run.
                std::thread::yield_now();
            }
        }
        Locked(self)
    }

    fn tick(&self) -> u32 {
        self.clock.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }
}

impl<'a> ScoreCache<'a> {
    /// The table made of `header` (initialised) and `sets`. None when it has no set.
    pub fn new(header: &'a Header, sets: &'a [Set]) -> Option<Self> {
        (!sets.is_empty() && header.sets.load(Ordering::Relaxed) == sets.len() as u64)
            .then_some(ScoreCache { header, sets })
    }

    /// The current epoch: read it before computing the scores to insert.
    pub fn epoch(&self) -> u64 {
        self.header.epoch.load(Ordering::Acquire)
    }

    /// Empties the table (at once, for every process).
    pub fn invalidate(&self) {
        self.header.epoch.fetch_add(1, Ordering::AcqRel);
        self.header.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    fn set(&self, key: &Key) -> &Set {
        &self.sets[(key.0[0] % self.sets.len() as u64) as usize]
    }

    /// The score stored for `key` in the current epoch, marked as just used.
    pub fn get(&self, key: &Key) -> Option<f32> {
        let set = self.set(key);
        let _held = set.lock();
        let epoch = self.epoch();
        let e = set.entries.iter().find(|e| {
            e.epoch.load(Ordering::Relaxed) == epoch
                && e.key0.load(Ordering::Relaxed) == key.0[0]
                && e.key1.load(Ordering::Relaxed) == key.0[1]
        })?;
        e.used.store(set.tick(), Ordering::Relaxed);
        Some(f32::from_bits(e.score.load(Ordering::Relaxed)))
    }

    /// Stores `score` for `key`, computed after `epoch` was read. Dropped (false) when the
    /// table was invalidated since. Makes room in a full set by evicting its least
    /// recently used entry.
    pub fn insert(&self, key: &Key, score: f32, epoch: u64) -> bool {
        let set = self.set(key);
        let _held = set.lock();
        if self.epoch() != epoch {
            return false;
        }
        let now = set.tick();
        let live = |e: &Entry| e.epoch.load(Ordering::Relaxed) == epoch;
        let same = set
            .entries
            .iter()
            .find(|e| live(e) && e.key0.load(Ordering::Relaxed) == key.0[0] && e.key1.load(Ordering::Relaxed) == key.0[1]);
        let slot = same.or_else(|| set.entries.iter().find(|e| !live(e))).unwrap_or_else(|| {
            self.header.evictions.fetch_add(1, Ordering::Relaxed);
            // The oldest use: the largest distance back from now on the wrapping clock.
            set.entries.iter().max_by_key(|e| now.wrapping_sub(e.used.load(Ordering::Relaxed))).expect("WAYS > 0")
        });
        slot.key0.store(key.0[0], Ordering::Relaxed);
        slot.key1.store(key.0[1], Ordering::Relaxed);
        slot.score.store(score.to_bits(), Ordering::Relaxed);
        slot.used.store(now, Ordering::Relaxed);
        slot.epoch.store(epoch, Ordering::Relaxed);
        true
    }

    pub fn counts(&self) -> CacheCounts {
        CacheCounts {
            capacity: (self.sets.len() * WAYS) as u64,
            evictions: self.header.evictions.load(Ordering::Relaxed),
            invalidations: self.header.invalidations.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(sets: usize) -> (Header, Vec<Set>) {
        let header = Header::default();
        header.init(sets);
        (header, (0..sets).map(|_| Set::default()).collect())
    }

    fn key(i: u32) -> Key {
        Key::new(&[b"model", b"query", &i.to_le_bytes()])
    }

    #[test]
    fn a_hit_gives_back_the_exact_bits() {
        let (h, s) = table(4);
        let c = ScoreCache::new(&h, &s).expect("a table");
        let values = [0.123_456_79f32, -0.0, f32::MIN_POSITIVE / 2.0, f32::NAN, f32::INFINITY, -3.5e-12];
        for (i, v) in values.iter().enumerate() {
            assert!(c.insert(&key(i as u32), *v, c.epoch()));
        }
        for (i, v) in values.iter().enumerate() {
            assert_eq!(c.get(&key(i as u32)).map(f32::to_bits), Some(v.to_bits()));
        }
        assert_eq!(c.get(&key(99)), None);
    }

    #[test]
    fn keys_separate_their_parts() {
        assert_ne!(Key::new(&[b"ab", b"c"]), Key::new(&[b"a", b"bc"]));
        assert_ne!(Key::new(&[b"q", b"d"]), Key::new(&[b"d", b"q"]));
        assert_eq!(Key::new(&[b"q", b"d"]), Key::new(&[b"q", b"d"]));
        assert_ne!(Key::new(&[b"", b"x"]), Key::new(&[b"x"]));
    }

    #[test]
    fn a_full_set_evicts_its_least_recently_used_entry() {
        let (h, s) = table(1);
        let c = ScoreCache::new(&h, &s).expect("a table");
        let e = c.epoch();
        for i in 0..WAYS as u32 {
            assert!(c.insert(&key(i), i as f32, e));
        }
        // Use all but entry 3, so 3 is the least recently used.
        for i in (0..WAYS as u32).filter(|&i| i != 3) {
            assert_eq!(c.get(&key(i)), Some(i as f32));
        }
        assert!(c.insert(&key(100), 100.0, e));
        assert_eq!(c.get(&key(3)), None, "the least recently used entry goes");
        for i in (0..WAYS as u32).filter(|&i| i != 3) {
            assert_eq!(c.get(&key(i)), Some(i as f32));
        }
        assert_eq!(c.get(&key(100)), Some(100.0));
        assert_eq!(c.counts().evictions, 1);
        // Re-inserting a present key replaces its score and evicts nothing.
        assert!(c.insert(&key(100), 7.0, e));
        assert_eq!(c.get(&key(100)), Some(7.0));
        assert_eq!(c.counts().evictions, 1);
    }

    #[test]
    fn a_small_table_holds_at_most_its_capacity() {
        let (h, s) = table(3);
        let c = ScoreCache::new(&h, &s).expect("a table");
        let n = 1000u32;
        for i in 0..n {
            assert!(c.insert(&key(i), i as f32, c.epoch()));
        }
        let held = (0..n).filter(|&i| c.get(&key(i)).is_some()).count();
        assert!(held <= 3 * WAYS && held > 0, "{held}");
        // The last key inserted is always there, with its own score.
        assert_eq!(c.get(&key(n - 1)), Some((n - 1) as f32));
        assert_eq!(c.counts().evictions, u64::from(n) - c.counts().capacity);
    }

    #[test]
    fn invalidation_empties_the_table_and_drops_late_inserts() {
        let (h, s) = table(8);
        let c = ScoreCache::new(&h, &s).expect("a table");
        let before = c.epoch();
        assert!(c.insert(&key(1), 1.0, before));
        c.invalidate();
        assert_eq!(c.get(&key(1)), None);
        // A score computed before the invalidation (by the replaced model) is dropped.
        assert!(!c.insert(&key(2), 2.0, before));
        assert_eq!(c.get(&key(2)), None);
        // Stale entries are room for new ones.
        assert!(c.insert(&key(1), 3.0, c.epoch()));
        assert_eq!(c.get(&key(1)), Some(3.0));
        assert_eq!(c.counts().invalidations, 1);
    }

    #[test]
    fn a_table_needs_a_set_and_an_initialised_header() {
        let (h, s) = table(2);
        assert!(ScoreCache::new(&h, &s[..0]).is_none());
        assert!(ScoreCache::new(&Header::default(), &s).is_none());
        assert_eq!(sets_for(bytes_for(5)), 5);
        assert_eq!(sets_for(10), 0);
    }

    #[test]
    fn threads_sharing_a_table_read_only_what_was_written() {
        let (h, s) = table(16);
        let c = ScoreCache::new(&h, &s).expect("a table");
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                scope.spawn(move || {
                    for round in 0..2000u32 {
                        let i = (round * 7 + t) % 300;
                        // The score of key i is always i: any other value would be a torn
                        // or misplaced entry.
                        if let Some(v) = c.get(&key(i)) {
                            assert_eq!(v, i as f32);
                        } else {
                            c.insert(&key(i), i as f32, c.epoch());
                        }
                        if round % 500 == 499 && t == 0 {
                            c.invalidate();
                        }
                    }
                });
            }
        });
    }
}
