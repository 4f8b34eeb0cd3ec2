//! The worker's queue: requests of many callers in, batches out, each request answered
//! the moment its last pair is scored. Plain code with no threads, clocks or I/O, so every
//! policy below is unit-tested with a fake model (see the tests at the end).
//!
//! In the spirit of text-embeddings-inference's `core/src/queue.rs` (batches cut under a
//! budget of padded tokens and pairs, requests whose caller is gone dropped), plus what a
//! database server shared by many sessions needs:
//!
//! - **Continuous batching.** Requests join between batches: the caller asks for one batch
//!   at a time ([`Scheduler::next_batch`]), reports its scores ([`Scheduler::complete`]),
//!   and gets back the requests that this completed. Nobody waits for a "round".
//! - **Two priority classes.** Interactive requests (a search waiting on its result) go
//!   ahead of bulk ones (a table being scored), but while both wait bulk is guaranteed
//!   `bulk_share` of the padded tokens, so it never starves.
//! - **Order inside a class.** Interactive: the request with the fewest pairs left first
//!   (ties: first come), so a 20-document search is not stuck behind a 1,000-document one;
//!   with ageing, so that a large request is never passed by more pairs of others than it
//!   has left itself. Bulk: first come, first served, so each job finishes as early as it
//!   can.
//! - **Length-sorted batches.** A request's pairs are handed out longest first, so a batch
//!   holds pairs of similar length; a batch not filled by one request is topped up with the
//!   next requests of the same class and model (that is how requests share batches).
//! - **Error isolation.** A batch holding pairs of several requests that fails is not
//!   blamed on all of them: each request's pairs are run again in a batch of their own, and
//!   only a request whose own batch fails gets the error. Scores are written by (request,
//!   pair), never by position in a batch, so nothing can shift.

use crate::batch::BatchLimits;
use crate::error::EngineError;
use std::collections::HashMap;

/// A request's identity, chosen by the caller and unique while it is queued.
pub type RequestId = u64;

/// Which batches a request may share: requests of the same group run the same model.
pub type Group = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// A caller waits on the result to answer a user: rerank(), rerank_score(), rerank_topk.
    Interactive,
    /// Throughput work: rerank_pairs(), or any call under pg_rerank.priority = bulk.
    Bulk,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Share of the padded tokens that bulk requests get while interactive ones wait too,
    /// from 0 (bulk runs only when no interactive pair waits) to 1.
    pub bulk_share: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { bulk_share: 0.2 }
    }
}

/// One pair of one request, placed in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    pub request: RequestId,
    /// Index of the pair in its request.
    pub pair: usize,
}

/// Rows to run together on one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub group: Group,
    pub priority: Priority,
    pub rows: Vec<Row>,
    /// Rows x the longest row: what the batch costs.
    pub padded_tokens: usize,
    /// Rerun of one request's pairs after a shared batch failed: a failure here is its own.
    pub isolated: bool,
}

impl Batch {
    /// Whether the batch holds pairs of more than one request.
    pub fn shared(&self) -> bool {
        self.rows.iter().any(|r| r.request != self.rows[0].request)
    }
}

/// A request that is over: all its scores, in pair order, or its error.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub id: RequestId,
    pub result: Result<Vec<f32>, EngineError>,
    /// Batches that held pairs of this request.
    pub batches: usize,
}

#[derive(Debug)]
struct Pending {
    group: Group,
    priority: Priority,
    /// Arrival order.
    seq: u64,
    lengths: Vec<usize>,
    /// Pair indices, longest first; `order[next..]` are not handed out yet.
    order: Vec<usize>,
    next: usize,
    /// Pairs of a failed shared batch, to run again on their own.
    isolate: Vec<usize>,
    scores: Vec<f32>,
    /// Pairs not scored yet (waiting or in a batch).
    left: usize,
    batches: usize,
    /// Pairs of other requests of its class that were handed out while it waited.
    passed: usize,
}

impl Pending {
    fn waiting(&self) -> usize {
        self.order.len() - self.next + self.isolate.len()
    }

    /// Interactive order: pairs left, less the pairs it has been passed by (ageing).
    fn urgency(&self) -> usize {
        self.waiting().saturating_sub(self.passed)
    }
}

/// The queue. See the module documentation for its policies.
#[derive(Debug, Default)]
pub struct Scheduler {
    policy: Policy,
    requests: HashMap<RequestId, Pending>,
    next_seq: u64,
    /// Padded tokens handed out per class, decayed batch by batch (see `account`).
    served_interactive: f64,
    served_bulk: f64,
}

impl Scheduler {
    pub fn new(policy: Policy) -> Self {
        Scheduler { policy, ..Default::default() }
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Queues a request whose pairs have these token lengths. A request of no pairs is
    /// finished at once and returned.
    pub fn submit(&mut self, id: RequestId, group: Group, priority: Priority, lengths: Vec<usize>) -> Option<Finished> {
        if lengths.is_empty() {
            return Some(Finished { id, result: Ok(Vec::new()), batches: 0 });
        }
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        // Stable: equal lengths keep their input order.
        order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
        let n = lengths.len();
        self.next_seq += 1;
        self.requests.insert(
            id,
            Pending {
                group,
                priority,
                seq: self.next_seq,
                lengths,
                order,
                next: 0,
                isolate: Vec::new(),
                scores: vec![0.0; n],
                left: n,
                batches: 0,
                passed: 0,
            },
        );
        None
    }

    /// Drops a request (its caller is gone). Its rows still in a batch are ignored when
    /// that batch completes. Returns whether it was queued.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.requests.remove(&id).is_some()
    }

    /// Whether the request is queued (waiting or running).
    pub fn contains(&self, id: RequestId) -> bool {
        self.requests.contains_key(&id)
    }

    /// Queued requests.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Pairs waiting for a batch (not counting those in a batch now).
    pub fn waiting_pairs(&self) -> usize {
        self.requests.values().map(Pending::waiting).sum()
    }

    /// Ids of the queued requests of `group`.
    pub fn ids_in(&self, group: Group) -> Vec<RequestId> {
        self.requests.iter().filter(|(_, p)| p.group == group).map(|(id, _)| *id).collect()
    }

    /// The class whose turn it is, among those with pairs waiting (in `only`, if given).
    /// While both wait, bulk goes when its part of the recent padded tokens is below its
    /// share. "Recent" decays batch by batch (see `account`), so the accounting neither
    /// forgets the past when one class is briefly empty nor lets an idle spell of one
    /// class build up credit without bound.
    fn class(&self, only: Option<Group>) -> Option<Priority> {
        let has = |c: Priority| {
            self.requests.values().any(|p| p.priority == c && p.waiting() > 0 && only.is_none_or(|g| p.group == g))
        };
        match (has(Priority::Interactive), has(Priority::Bulk)) {
            (false, false) => None,
            (true, true) => {
                let total = self.served_interactive + self.served_bulk;
                if self.served_bulk < self.policy.bulk_share * total {
                    Some(Priority::Bulk)
                } else {
                    Some(Priority::Interactive)
                }
            }
            (i, _) => Some(if i { Priority::Interactive } else { Priority::Bulk }),
        }
    }

    /// Counts a batch's padded tokens for its class, after decaying both counts by 1/64:
    /// the share is kept over roughly the last 64 batches.
    fn account(&mut self, class: Priority, tokens: usize) {
        const KEEP: f64 = 1.0 - 1.0 / 64.0;
        self.served_interactive *= KEEP;
        self.served_bulk *= KEEP;
        match class {
            Priority::Interactive => self.served_interactive += tokens as f64,
            Priority::Bulk => self.served_bulk += tokens as f64,
        }
    }

    /// Requests of `class` (and `only`, if given) with pairs waiting, in the class's order.
    fn candidates(&self, class: Priority, only: Option<Group>) -> Vec<RequestId> {
        let mut ids: Vec<(&RequestId, &Pending)> = self
            .requests
            .iter()
            .filter(|(_, p)| p.priority == class && p.waiting() > 0 && only.is_none_or(|g| p.group == g))
            .collect();
        match class {
            Priority::Interactive => ids.sort_by_key(|(_, p)| (p.urgency(), p.seq)),
            Priority::Bulk => ids.sort_by_key(|(_, p)| p.seq),
        }
        ids.into_iter().map(|(id, _)| *id).collect()
    }

    /// Cuts the next batch under `limits_of(group)`, or None when no pair waits.
    pub fn next_batch(&mut self, limits_of: &dyn Fn(Group) -> BatchLimits) -> Option<Batch> {
        self.cut(limits_of, None)
    }

    /// The next batch of `group` alone (to run beside a batch of the same model), or None
    /// when none of its pairs waits.
    pub fn next_batch_in(&mut self, group: Group, limits: BatchLimits) -> Option<Batch> {
        self.cut(&|_| limits, Some(group))
    }

    fn cut(&mut self, limits_of: &dyn Fn(Group) -> BatchLimits, only: Option<Group>) -> Option<Batch> {
        let class = self.class(only)?;
        let order = self.candidates(class, only);
        let head = *order.first()?;
        let (group, isolated) = {
            let p = &self.requests[&head];
            (p.group, !p.isolate.is_empty())
        };
        let limits = limits_of(group);
        let (max_tokens, max_pairs) = (limits.max_tokens.max(1), limits.max_pairs.max(1));
        let mut rows = Vec::new();
        let mut width = 0usize;
        // Whether `len` still fits beside the rows taken (a first row always does).
        let fits = |rows: &Vec<Row>, width: usize, len: usize| {
            rows.is_empty() || (rows.len() < max_pairs && (rows.len() + 1) * width.max(len.max(1)) <= max_tokens)
        };
        if isolated {
            let p = self.requests.get_mut(&head).expect("head is queued");
            while let Some(&pair) = p.isolate.last() {
                if !fits(&rows, width, p.lengths[pair]) {
                    break;
                }
                p.isolate.pop();
                width = width.max(p.lengths[pair].max(1));
                rows.push(Row { request: head, pair });
            }
        } else {
            for id in order {
                let p = self.requests.get_mut(&id).expect("candidate is queued");
                if p.group != group || !p.isolate.is_empty() {
                    continue;
                }
                while p.next < p.order.len() {
                    let pair = p.order[p.next];
                    if !fits(&rows, width, p.lengths[pair]) {
                        break;
                    }
                    p.next += 1;
                    width = width.max(p.lengths[pair].max(1));
                    rows.push(Row { request: id, pair });
                }
                if rows.len() >= max_pairs || p.next < p.order.len() {
                    break; // full, or this request's next pair does not fit
                }
            }
        }
        let padded_tokens = rows.len() * width;
        self.account(class, padded_tokens);
        let mut owners: Vec<RequestId> = rows.iter().map(|r| r.request).collect();
        owners.sort_unstable();
        owners.dedup();
        for (id, p) in self.requests.iter_mut() {
            if owners.contains(id) {
                p.batches += 1;
            } else if p.priority == class && p.waiting() > 0 {
                p.passed += rows.len();
            }
        }
        Some(Batch { group, priority: class, rows, padded_tokens, isolated })
    }

    /// Reports a batch's outcome: one score per row, in row order, or the error that
    /// stopped it. Returns the requests this finished, successful or failed.
    pub fn complete(&mut self, batch: &Batch, result: Result<Vec<f32>, EngineError>) -> Vec<Finished> {
        let mut done = Vec::new();
        match result {
            Ok(scores) if scores.len() == batch.rows.len() => {
                for (row, score) in batch.rows.iter().zip(scores) {
                    let Some(p) = self.requests.get_mut(&row.request) else { continue }; // cancelled or failed
                    p.scores[row.pair] = score;
                    p.left -= 1;
                    if p.left == 0 {
                        let p = self.requests.remove(&row.request).expect("present");
                        done.push(Finished { id: row.request, result: Ok(p.scores), batches: p.batches });
                    }
                }
            }
            Ok(scores) => {
                let e = EngineError::new(
                    crate::ErrorKind::Inference,
                    format!("the model returned {} scores for a batch of {} pairs", scores.len(), batch.rows.len()),
                );
                return self.complete(batch, Err(e));
            }
            Err(e) => {
                let mut owners: Vec<RequestId> = batch.rows.iter().map(|r| r.request).collect();
                owners.sort_unstable();
                owners.dedup();
                if batch.isolated || owners.len() == 1 {
                    // The request's own batch failed: the error is its own.
                    for id in owners {
                        if let Some(p) = self.requests.remove(&id) {
                            done.push(Finished { id, result: Err(e.clone()), batches: p.batches });
                        }
                    }
                } else {
                    // Not known whose pair broke the batch: each request runs its pairs again alone.
                    for row in &batch.rows {
                        if let Some(p) = self.requests.get_mut(&row.request) {
                            p.isolate.push(row.pair);
                        }
                    }
                }
            }
        }
        done
    }

    /// Fails a queued request at once (its model could not be loaded, say).
    pub fn fail(&mut self, id: RequestId, e: EngineError) -> Option<Finished> {
        let p = self.requests.remove(&id)?;
        Some(Finished { id, result: Err(e), batches: p.batches })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const CPU: BatchLimits = BatchLimits { max_tokens: 2048, max_pairs: 4 };

    /// A fake model: the score of pair `i` of request `id` is `id * 1000 + i`; a batch
    /// holding a pair of length 666 fails, as a model fails on an input it cannot take.
    fn run(batch: &Batch, lengths: &HashMap<RequestId, Vec<usize>>) -> Result<Vec<f32>, EngineError> {
        if batch.rows.iter().any(|r| lengths[&r.request][r.pair] == 666) {
            return Err(EngineError::new(ErrorKind::Inference, "poisoned"));
        }
        Ok(batch.rows.iter().map(|r| (r.request * 1000 + r.pair as u64) as f32).collect())
    }

    struct Harness {
        s: Scheduler,
        lengths: HashMap<RequestId, Vec<usize>>,
        finished: Vec<Finished>,
        batches: Vec<Batch>,
    }

    impl Harness {
        fn new(bulk_share: f64) -> Self {
            Harness {
                s: Scheduler::new(Policy { bulk_share }),
                lengths: HashMap::new(),
                finished: Vec::new(),
                batches: Vec::new(),
            }
        }
        fn submit(&mut self, id: RequestId, group: Group, pri: Priority, lengths: Vec<usize>) {
            self.lengths.insert(id, lengths.clone());
            if let Some(f) = self.s.submit(id, group, pri, lengths) {
                self.finished.push(f);
            }
        }
        /// Runs one batch; false when none was waiting.
        fn step(&mut self) -> bool {
            let Some(b) = self.s.next_batch(&|_| CPU) else { return false };
            let r = run(&b, &self.lengths);
            self.finished.extend(self.s.complete(&b, r));
            self.batches.push(b);
            true
        }
        fn drain(&mut self) {
            while self.step() {}
        }
        fn order(&self) -> Vec<RequestId> {
            self.finished.iter().map(|f| f.id).collect()
        }
        fn result(&self, id: RequestId) -> &Result<Vec<f32>, EngineError> {
            &self.finished.iter().find(|f| f.id == id).expect("finished").result
        }
    }

    fn expected(id: RequestId, n: usize) -> Vec<f32> {
        (0..n).map(|i| (id * 1000 + i as u64) as f32).collect()
    }

    #[test]
    fn every_pair_scored_once_in_its_place_under_the_budget() {
        let mut h = Harness::new(0.2);
        let sizes = [(1, 7), (2, 50), (3, 1), (4, 13)];
        for (id, n) in sizes {
            let lengths = (0..n).map(|i| 10 + (i * 37 + id as usize * 11) % 300).collect();
            h.submit(id, 0, Priority::Interactive, lengths);
        }
        h.drain();
        for (id, n) in sizes {
            assert_eq!(h.result(id), &Ok(expected(id, n)), "request {id}");
        }
        for b in &h.batches {
            let longest = b.rows.iter().map(|r| h.lengths[&r.request][r.pair]).max().unwrap_or(0);
            assert!(b.rows.len() <= 4 && (b.rows.len() == 1 || b.rows.len() * longest <= 2048));
            assert_eq!(b.padded_tokens, b.rows.len() * longest);
        }
        assert!(h.s.is_empty());
        let rows: usize = h.batches.iter().map(|b| b.rows.len()).sum();
        assert_eq!(rows, 71);
    }

    #[test]
    fn a_request_is_answered_when_its_last_pair_is_scored() {
        let mut h = Harness::new(0.2);
        h.submit(1, 0, Priority::Bulk, vec![20; 40]);
        h.submit(2, 0, Priority::Bulk, vec![20; 4]);
        // 10 batches for request 1, then request 2's one batch: request 1 is answered after
        // its tenth batch, not at the end of a round.
        for _ in 0..10 {
            assert!(h.step());
        }
        assert_eq!(h.order(), vec![1]);
        h.drain();
        assert_eq!(h.order(), vec![1, 2]);
        assert_eq!(h.finished[0].batches, 10);
    }

    #[test]
    fn interactive_goes_ahead_of_bulk_that_came_first() {
        let mut h = Harness::new(0.2);
        h.submit(1, 0, Priority::Bulk, vec![30; 2048]);
        for _ in 0..3 {
            h.step();
        }
        // A search arrives while the bulk job runs: it joins between batches.
        h.submit(2, 0, Priority::Interactive, vec![30; 20]);
        let before = h.batches.len();
        while !h.order().contains(&2) {
            h.step();
        }
        let took = h.batches.len() - before;
        // 5 batches of its own, plus bulk's guaranteed share (at most 1 in 5 tokens here).
        assert!(took <= 7, "the search took {took} batches");
        assert!(h.s.contains(1), "bulk is still running");
        h.drain();
        assert_eq!(h.result(1), &Ok(expected(1, 2048)));
        assert_eq!(h.result(2), &Ok(expected(2, 20)));
    }

    #[test]
    fn bulk_keeps_its_share_and_never_starves() {
        for share in [0.1, 0.2, 0.5] {
            let mut h = Harness::new(share);
            h.submit(1, 0, Priority::Bulk, vec![32; 100_000]);
            let mut next = 100;
            // Interactive requests keep arriving so that one always waits.
            for _ in 0..2000 {
                if h.s.requests.values().filter(|p| p.priority == Priority::Interactive).count() < 2 {
                    h.submit(next, 0, Priority::Interactive, vec![32; 20]);
                    next += 1;
                }
                h.step();
            }
            let tokens =
                |c: Priority| -> usize { h.batches.iter().filter(|b| b.priority == c).map(|b| b.padded_tokens).sum() };
            let bulk = tokens(Priority::Bulk) as f64 / (tokens(Priority::Bulk) + tokens(Priority::Interactive)) as f64;
            assert!((bulk - share).abs() < 0.02, "share {share}: bulk got {bulk:.3}");
        }
    }

    #[test]
    fn zero_share_runs_bulk_only_when_no_search_waits() {
        let mut h = Harness::new(0.0);
        h.submit(1, 0, Priority::Bulk, vec![32; 8]);
        h.submit(2, 0, Priority::Interactive, vec![32; 8]);
        h.drain();
        let classes: Vec<Priority> = h.batches.iter().map(|b| b.priority).collect();
        assert_eq!(classes, [Priority::Interactive, Priority::Interactive, Priority::Bulk, Priority::Bulk]);
    }

    #[test]
    fn small_interactive_requests_pass_large_ones_bulk_stays_first_come() {
        let mut h = Harness::new(0.0);
        h.submit(1, 0, Priority::Interactive, vec![16; 400]);
        h.submit(2, 0, Priority::Interactive, vec![16; 8]);
        h.submit(3, 0, Priority::Bulk, vec![16; 400]);
        h.submit(4, 0, Priority::Bulk, vec![16; 8]);
        h.drain();
        assert_eq!(h.order(), vec![2, 1, 3, 4]);
    }

    #[test]
    fn a_large_search_is_passed_by_at_most_its_own_size() {
        let mut h = Harness::new(0.2);
        h.submit(1, 0, Priority::Interactive, vec![16; 200]);
        let mut next = 100;
        // Small searches keep arriving, one always waiting.
        while !h.order().contains(&1) {
            if !h.s.requests.keys().any(|&id| id >= 100) {
                h.submit(next, 0, Priority::Interactive, vec![16; 8]);
                next += 1;
            }
            assert!(h.step());
            assert!(h.batches.len() < 200, "the large search starves");
        }
        let others: usize = h.batches.iter().flat_map(|b| &b.rows).filter(|r| r.request != 1).count();
        assert!(others <= 200 + 8, "passed by {others} pairs");
        assert_eq!(h.result(1), &Ok(expected(1, 200)));
    }

    #[test]
    fn the_bulk_share_holds_across_models() {
        // Searches on one model, a bulk job on another, 2 or 8 batches per wave (the CPU),
        // a new search arriving whenever none waits.
        for (search_pairs, per_wave) in [(4, 2), (20, 8), (40, 8), (40, 2)] {
            let mut s = Scheduler::new(Policy { bulk_share: 0.2 });
            s.submit(1, 9, Priority::Bulk, vec![32; 1_000_000]);
            let (mut tokens, mut next) = ([0usize; 2], 100);
            for _ in 0..2000 {
                if !s.requests.keys().any(|&id| id >= 100) {
                    s.submit(next, 3, Priority::Interactive, vec![32; search_pairs]);
                    next += 1;
                }
                let first = s.next_batch(&|_| CPU).expect("work");
                let mut wave = vec![first];
                while wave.len() < per_wave {
                    match s.next_batch_in(wave[0].group, CPU) {
                        Some(b) => wave.push(b),
                        None => break,
                    }
                }
                for b in wave {
                    tokens[usize::from(b.priority == Priority::Bulk)] += b.padded_tokens;
                    s.complete(&b, Ok(vec![0.0; b.rows.len()]));
                }
            }
            let bulk = tokens[1] as f64 / (tokens[0] + tokens[1]) as f64;
            // A guaranteed minimum; a wave of one model's batches may give bulk more.
            assert!(bulk >= 0.18, "searches of {search_pairs}, {per_wave} per wave: bulk got {bulk:.3}");
            assert!(tokens[0] > 0);
        }
    }

    #[test]
    fn batches_are_shared_across_requests_but_never_across_models() {
        let mut h = Harness::new(0.2);
        for id in 1..=4 {
            h.submit(id, 0, Priority::Interactive, vec![10; 3]);
        }
        h.submit(9, 7, Priority::Interactive, vec![10; 3]);
        h.drain();
        assert!(h.batches.iter().any(Batch::shared), "pairs of several requests share batches");
        for b in &h.batches {
            assert!(b.rows.iter().all(|r| (r.request == 9) == (b.group == 7)), "a batch mixed models: {b:?}");
        }
        for id in [1, 2, 3, 4, 9] {
            assert_eq!(h.result(id), &Ok(expected(id, 3)));
        }
    }

    #[test]
    fn a_batch_of_one_model_beside_another() {
        let mut s = Scheduler::new(Policy::default());
        s.submit(1, 3, Priority::Interactive, vec![10; 2]);
        s.submit(2, 4, Priority::Interactive, vec![10; 9]);
        assert_eq!(s.next_batch_in(4, CPU).map(|b| b.group), Some(4));
        assert_eq!(s.next_batch_in(3, CPU).map(|b| b.rows.len()), Some(2));
        assert!(s.next_batch_in(3, CPU).is_none());
        assert_eq!(s.ids_in(4), vec![2]);
    }

    #[test]
    fn pairs_are_handed_out_longest_first() {
        let mut h = Harness::new(0.2);
        h.submit(1, 0, Priority::Interactive, vec![5, 700, 50, 600, 40, 300, 30, 200]);
        h.step();
        let first: Vec<usize> = h.batches[0].rows.iter().map(|r| r.pair).collect();
        assert_eq!(first, vec![1, 3]); // 700 and 600 (3 x 700 is over 2,048)
        h.drain();
        assert_eq!(h.result(1), &Ok(expected(1, 8)));
    }

    #[test]
    fn a_new_request_joins_the_next_batch() {
        let mut h = Harness::new(0.2);
        h.submit(1, 0, Priority::Interactive, vec![10; 2]);
        h.submit(2, 0, Priority::Interactive, vec![10; 1]);
        h.step();
        assert_eq!(h.batches[0].rows.len(), 3, "both requests in one batch");
        h.submit(3, 0, Priority::Interactive, vec![10; 6]);
        h.step();
        assert!(h.batches[1].rows.iter().all(|r| r.request == 3));
    }

    #[test]
    fn cancel_drops_waiting_and_running_pairs_and_spares_the_others() {
        let mut h = Harness::new(0.2);
        h.submit(1, 0, Priority::Interactive, vec![10; 2]);
        h.submit(2, 0, Priority::Interactive, vec![10; 6]);
        let b = h.s.next_batch(&|_| CPU).expect("batch");
        assert!(b.shared());
        // Request 2's caller goes away while its pairs are in the batch.
        assert!(h.s.cancel(2));
        assert!(!h.s.cancel(2));
        let r = run(&b, &h.lengths);
        h.finished.extend(h.s.complete(&b, r));
        h.drain();
        assert_eq!(h.order(), vec![1]);
        assert_eq!(h.result(1), &Ok(expected(1, 2)));
        assert!(h.s.is_empty() && h.s.waiting_pairs() == 0);
    }

    #[test]
    fn a_failing_pair_fails_only_its_own_request() {
        let mut h = Harness::new(0.2);
        h.submit(1, 0, Priority::Interactive, vec![10, 10]);
        h.submit(2, 0, Priority::Interactive, vec![10, 666]); // its second pair breaks any batch
        h.submit(3, 0, Priority::Interactive, vec![10, 10, 10, 10, 10]);
        h.drain();
        assert_eq!(h.result(1), &Ok(expected(1, 2)));
        assert_eq!(h.result(3), &Ok(expected(3, 5)));
        match h.result(2) {
            Err(e) => assert_eq!(e.message, "poisoned"),
            Ok(s) => panic!("request 2 got scores {s:?}"),
        }
        assert!(h.batches.iter().any(|b| b.isolated));
        assert!(h.s.is_empty());
    }

    #[test]
    fn a_wrong_number_of_scores_is_an_error_not_a_shift() {
        let mut s = Scheduler::new(Policy::default());
        s.submit(1, 0, Priority::Interactive, vec![10; 3]);
        let b = s.next_batch(&|_| CPU).expect("batch");
        let done = s.complete(&b, Ok(vec![1.0, 2.0]));
        assert_eq!(done.len(), 1);
        assert!(done[0].result.is_err());
    }

    #[test]
    fn progress_empty_requests_and_failures() {
        let mut s = Scheduler::new(Policy::default());
        assert_eq!(s.submit(5, 0, Priority::Bulk, Vec::new()).map(|f| f.result), Some(Ok(Vec::new())));
        s.submit(1, 0, Priority::Bulk, vec![10; 6]);
        assert_eq!(s.waiting_pairs(), 6);
        let b = s.next_batch(&|_| CPU).expect("batch");
        assert!(s.complete(&b, Ok(vec![0.5; 4])).is_empty());
        assert_eq!((s.waiting_pairs(), s.len()), (2, 1));
        assert_eq!(s.ids_in(0), vec![1]);
        let f = s.fail(1, EngineError::new(ErrorKind::ModelNotFound, "gone")).expect("queued");
        assert!(f.result.is_err());
        assert!(s.next_batch(&|_| CPU).is_none());
    }

    #[test]
    fn an_oversized_pair_runs_alone() {
        let mut h = Harness::new(0.2);
        h.submit(1, 0, Priority::Interactive, vec![5000, 10, 10]);
        h.drain();
        assert_eq!(h.batches[0].rows.len(), 1);
        assert_eq!(h.result(1), &Ok(expected(1, 3)));
    }
}
