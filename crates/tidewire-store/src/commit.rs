//! Group commit: many writers, one fsync.
//!
//! Writers hand a batch to the [`Committer`] and await its answer. A dedicated thread takes every
//! batch waiting, applies each atomically, syncs once, then answers them all. Under load one fsync
//! covers dozens of batches; alone, a batch waits only for its own fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{Op, Store, StoreError};

/// A batch, whether its submitter needs it durable before the answer, where to answer, and a
/// flag to raise once it is durable.
type Job = (
    Vec<Op>,
    bool,
    oneshot::Sender<Result<(), String>>,
    Option<Arc<AtomicBool>>,
);

/// A submitted batch, to await with [`Committer::wait`].
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Result<(), String>>);

/// A group commit that syncs for this long or longer is counted and logged as slow: every
/// publish and acknowledgement in it waited that long for the disk.
pub const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// How long slow commits keep quiet after one is logged (they are still counted).
const SLOW_LOG_EVERY: Duration = Duration::from_secs(10);

/// The upper bounds, in microseconds, of the buckets that synced commits are counted in by how
/// long they took ([`CommitStats::within`]); longer ones are in no bucket.
pub const COMMIT_BUCKETS_US: [u64; 12] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    5_000_000,
];

/// What the commit thread has seen of the disk since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Group commits that synced.
    pub synced: u64,
    /// Of those, the ones that took [`SLOW_COMMIT`] or longer.
    pub slow: u64,
    /// The longest, in microseconds.
    pub longest_us: u64,
    /// All of them together, in microseconds.
    pub total_us: u64,
    /// How many took at most each bound of [`COMMIT_BUCKETS_US`] and more than the one before.
    pub within: [u64; COMMIT_BUCKETS_US.len()],
}

impl CommitStats {
    /// The smallest bucket bound that at least `fraction` of the synced commits stayed within
    /// (0.99: the 99th percentile, rounded up to a bucket), or the longest commit if that is
    /// shorter or the fraction reaches past the last bucket. None before the first commit.
    pub fn quantile_us(&self, fraction: f64) -> Option<u64> {
        if self.synced == 0 {
            return None;
        }
        let wanted = (fraction * self.synced as f64).ceil() as u64;
        let mut seen = 0;
        for (bound, n) in COMMIT_BUCKETS_US.iter().zip(self.within) {
            seen += n;
            if seen >= wanted {
                return Some((*bound).min(self.longest_us));
            }
        }
        Some(self.longest_us)
    }
}

/// [`CommitStats`], kept by the commit thread.
#[derive(Debug, Default)]
struct Tally {
    synced: AtomicU64,
    slow: AtomicU64,
    longest_us: AtomicU64,
    total_us: AtomicU64,
    within: [AtomicU64; COMMIT_BUCKETS_US.len()],
}

impl Tally {
    /// Counts a synced group that took `took`; whether it was slow.
    fn synced(&self, took: Duration) -> bool {
        let us = took.as_micros() as u64;
        self.synced.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.longest_us.fetch_max(us, Ordering::Relaxed);
        if let Some(i) = COMMIT_BUCKETS_US.iter().position(|bound| us <= *bound) {
            self.within[i].fetch_add(1, Ordering::Relaxed);
        }
        let slow = took >= SLOW_COMMIT;
        if slow {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
        slow
    }
}

/// The group-commit writer of one store.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    healthy: Arc<AtomicBool>,
    tally: Arc<Tally>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

/// The most batches one fsync covers.
const MAX_GROUP: usize = 512;

/// How often the store folds its log into its long-term form ([`Store::checkpoint`]).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl Committer {
    /// Starts the writer thread for `store`. It stops when every `Committer` clone is dropped.
    pub fn start(store: Arc<dyn Store>) -> Committer {
        let (tx, rx) = mpsc::channel::<Job>();
        let healthy = Arc::new(AtomicBool::new(true));
        let health = healthy.clone();
        let tally = Arc::new(Tally::default());
        let tallied = tally.clone();
        // Dropped when the commit thread ends, which ends the checkpoint thread.
        let (stop, stopped) = mpsc::channel::<()>();
        let span = tracing::info_span!("store");
        let checkpoints = store.clone();
        let checkpoint_span = span.clone();
        std::thread::Builder::new()
            .name("tidewire-checkpoint".into())
            .spawn(move || {
                let _span = checkpoint_span.enter();
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = checkpoints.checkpoint() {
                        tracing::warn!(error = %e, "store checkpoint failed; will retry");
                    }
                }
            })
            .expect("spawn checkpoint thread");
        std::thread::Builder::new()
            .name("tidewire-commit".into())
            .spawn(move || {
                let _span = span.enter();
                let _stop = stop;
                // When a slow commit was last logged, and how many have gone unlogged since.
                let mut slow_logged: Option<Instant> = None;
                let mut unlogged = 0u64;
                while let Ok(first) = rx.recv() {
                    let mut jobs: Vec<Job> = vec![first];
                    while jobs.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    // One batch for the whole group (one record of the store's log): each job's
                    // atomicity is preserved, since a group is all-or-nothing.
                    let ops: Vec<Op> = jobs
                        .iter_mut()
                        .flat_map(|(ops, ..)| std::mem::take(ops))
                        .collect();
                    // A group of lazy batches only is applied without a sync: the next sync
                    // (any durable batch's, or the final one at shutdown) covers it, since the
                    // store persists in application order.
                    let durable = jobs.iter().any(|(_, d, ..)| *d);
                    let started = Instant::now();
                    let synced = if durable {
                        store.apply_durable(&ops)
                    } else {
                        store.apply(&ops)
                    }
                    .map_err(|e| e.to_string());
                    let took = started.elapsed();
                    if durable && synced.is_ok() && tallied.synced(took) {
                        if slow_logged.is_none_or(|at| at.elapsed() >= SLOW_LOG_EVERY) {
                            tracing::warn!(
                                elapsed_ms = took.as_millis() as u64,
                                batches = jobs.len(),
                                not_logged_since = unlogged,
                                "store commit was slow: the disk took that long to sync, and every publish and acknowledgement in it waited"
                            );
                            slow_logged = Some(Instant::now());
                            unlogged = 0;
                        } else {
                            unlogged += 1;
                        }
                    }
                    health.store(synced.is_ok(), Ordering::Relaxed);
                    tracing::trace!(batches = jobs.len(), durable, "group commit");
                    for (_, _, reply, flag) in jobs {
                        if let Some(flag) = flag.filter(|_| durable && synced.is_ok()) {
                            flag.store(true, Ordering::Release);
                        }
                        let _ = reply.send(synced.clone());
                    }
                }
            })
            .expect("spawn commit thread");
        Committer { tx, healthy, tally }
    }

    /// Whether the last group was applied (and, if durable, synced) without error.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// How long group commits have taken to sync, since the committer started.
    pub fn stats(&self) -> CommitStats {
        CommitStats {
            synced: self.tally.synced.load(Ordering::Relaxed),
            slow: self.tally.slow.load(Ordering::Relaxed),
            longest_us: self.tally.longest_us.load(Ordering::Relaxed),
            total_us: self.tally.total_us.load(Ordering::Relaxed),
            within: std::array::from_fn(|i| self.tally.within[i].load(Ordering::Relaxed)),
        }
    }

    /// Applies `ops` atomically and returns once they are durable.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        Self::wait(self.submit(ops)).await
    }

    /// Queues `ops` now (batches are applied in submission order) and returns the receipt to
    /// await with [`Committer::wait`].
    pub fn submit(&self, ops: Vec<Op>) -> Receipt {
        self.submit_as(ops, true, None)
    }

    /// [`Committer::submit`], also raising `durable` once the batch is durable, from the commit
    /// thread: for whoever must know it is on disk without holding the receipt. A batch that
    /// fails leaves it down.
    pub fn submit_flagged(&self, ops: Vec<Op>, durable: Arc<AtomicBool>) -> Receipt {
        self.submit_as(ops, true, Some(durable))
    }

    /// Queues `ops` to be applied in order like [`Committer::submit`], but its receipt answers
    /// once they are applied, without waiting for a sync of their own: they become durable with
    /// the next durable batch (or the final sync at shutdown). For writes whose loss in a crash
    /// only repeats work that is idempotent, such as removing acknowledged outbox items.
    pub fn submit_lazy(&self, ops: Vec<Op>) -> Receipt {
        self.submit_as(ops, false, None)
    }

    fn submit_as(&self, ops: Vec<Op>, durable: bool, flag: Option<Arc<AtomicBool>>) -> Receipt {
        let (tx, rx) = oneshot::channel();
        if ops.is_empty() {
            if let Some(flag) = flag {
                flag.store(true, Ordering::Release);
            }
            let _ = tx.send(Ok(()));
        } else if let Err(mpsc::SendError((_, _, tx, _))) = self.tx.send((ops, durable, tx, flag)) {
            let _ = tx.send(Err(StoreError::Closed.to_string()));
        }
        Receipt(rx)
    }

    /// Waits until a submitted batch is durable (applied, for a lazy one).
    pub async fn wait(receipt: Receipt) -> Result<(), StoreError> {
        receipt
            .0
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SledStore, Space};

    #[tokio::test]
    async fn concurrent_commits_are_all_durable_and_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::start(store.clone());
        let mut tasks = Vec::new();
        for i in 0u32..200 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.commit(vec![Op::put(Space::Feed, i.to_be_bytes(), b"x".to_vec())])
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.count(Space::Feed, b"").unwrap(), 200);
    }

    /// A store that counts syncs, to see which groups pay for one, and whose next sync can be
    /// made to stall like a disk that holds a flush up.
    #[derive(Default)]
    struct CountingStore {
        inner: crate::MemStore,
        syncs: std::sync::atomic::AtomicU64,
        stall_next_sync: AtomicBool,
    }

    impl Store for CountingStore {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(space, key)
        }
        fn scan(
            &self,
            space: Space,
            prefix: &[u8],
            from: &[u8],
            limit: usize,
        ) -> Result<Vec<crate::Entry>, StoreError> {
            self.inner.scan(space, prefix, from, limit)
        }
        fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<crate::Entry>, StoreError> {
            self.inner.last(space, prefix)
        }
        fn floor(
            &self,
            space: Space,
            prefix: &[u8],
            at: &[u8],
        ) -> Result<Option<crate::Entry>, StoreError> {
            self.inner.floor(space, prefix, at)
        }
        fn count(&self, space: Space, prefix: &[u8]) -> Result<u64, StoreError> {
            self.inner.count(space, prefix)
        }
        fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
            self.inner.apply(ops)
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.stall_next_sync.swap(false, Ordering::SeqCst) {
                std::thread::sleep(SLOW_COMMIT + Duration::from_millis(20));
            }
            self.inner.sync()
        }
    }

    #[tokio::test]
    async fn a_commit_the_disk_holds_up_is_counted_slow_and_the_longest_is_kept() {
        let store = Arc::new(CountingStore::default());
        let c = Committer::start(store.clone());
        let put = |k: &str| vec![Op::put(Space::Feed, k.as_bytes().to_vec(), b"v".to_vec())];
        c.commit(put("1")).await.unwrap();
        let quick = c.stats();
        assert_eq!((quick.synced, quick.slow), (1, 0));
        assert!(quick.longest_us < SLOW_COMMIT.as_micros() as u64);

        store.stall_next_sync.store(true, Ordering::SeqCst);
        c.commit(put("2")).await.unwrap();
        let stalled = c.stats();
        assert_eq!((stalled.synced, stalled.slow), (2, 1));
        assert!(stalled.longest_us >= SLOW_COMMIT.as_micros() as u64);
        assert!(stalled.total_us >= stalled.longest_us + quick.total_us);

        // Each is in the bucket of its duration: the stalled one at 100 ms or more.
        assert_eq!(stalled.within.iter().sum::<u64>(), 2);
        let slow_from = COMMIT_BUCKETS_US
            .iter()
            .position(|b| *b > SLOW_COMMIT.as_micros() as u64)
            .unwrap();
        assert_eq!(stalled.within[slow_from..].iter().sum::<u64>(), 1);
        assert!(stalled.quantile_us(0.5).unwrap() < SLOW_COMMIT.as_micros() as u64);
        assert_eq!(stalled.quantile_us(1.0), Some(stalled.longest_us));

        // A lazy group syncs nothing of its own, and is not counted.
        Committer::wait(c.submit_lazy(put("3"))).await.unwrap();
        assert_eq!(c.stats().synced, 2);
    }

    #[test]
    fn the_commit_quantile_is_the_bucket_bound_the_fraction_reaches() {
        let mut s = CommitStats::default();
        assert_eq!(s.quantile_us(0.99), None, "nothing committed yet");
        // 98 commits within 1 ms, one within 10 ms, one of 300 ms.
        s.within[1] = 98;
        s.within[4] = 1;
        s.within[9] = 1;
        s.synced = 100;
        s.longest_us = 300_000;
        assert_eq!(s.quantile_us(0.5), Some(1_000));
        assert_eq!(s.quantile_us(0.98), Some(1_000));
        assert_eq!(s.quantile_us(0.99), Some(10_000));
        assert_eq!(s.quantile_us(1.0), Some(300_000), "never above the longest");
        // One beyond the last bucket: the longest stands for it.
        s.within[9] = 0;
        s.longest_us = 9_000_000;
        assert_eq!(s.quantile_us(1.0), Some(9_000_000));
    }

    #[tokio::test]
    async fn a_flagged_batch_raises_its_flag_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::start(store.clone());
        let flag = Arc::new(AtomicBool::new(false));
        let receipt = c.submit_flagged(
            vec![Op::put(Space::Feed, 1u64.to_be_bytes(), b"x".to_vec())],
            flag.clone(),
        );
        Committer::wait(receipt).await.unwrap();
        assert!(flag.load(Ordering::Acquire), "durable, so the flag is up");
        assert!(
            store
                .get(Space::Feed, &1u64.to_be_bytes())
                .unwrap()
                .is_some()
        );

        // A lazy batch never raises one: it is not durable when it is applied.
        let lazy = Arc::new(AtomicBool::new(false));
        let r = c.submit_as(
            vec![Op::put(Space::Feed, 2u64.to_be_bytes(), b"y".to_vec())],
            false,
            Some(lazy.clone()),
        );
        Committer::wait(r).await.unwrap();
        assert!(!lazy.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_lazy_batch_is_applied_in_order_without_a_sync_of_its_own() {
        let store = Arc::new(CountingStore::default());
        let c = Committer::start(store.clone());
        Committer::wait(c.submit_lazy(vec![Op::put(Space::Outbox, b"a".to_vec(), b"1".to_vec())]))
            .await
            .unwrap();
        assert_eq!(store.get(Space::Outbox, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.syncs.load(std::sync::atomic::Ordering::SeqCst), 0);
        // A durable batch after it syncs (and so covers the lazy one).
        c.commit(vec![Op::delete(Space::Outbox, b"a".to_vec())])
            .await
            .unwrap();
        assert_eq!(store.get(Space::Outbox, b"a").unwrap(), None);
        assert_eq!(store.syncs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn sled_store_survives_reopen_and_scans_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.apply(&[
                Op::put(Space::Outbox, b"b\x00\x02".to_vec(), b"2".to_vec()),
                Op::put(Space::Outbox, b"b\x00\x01".to_vec(), b"1".to_vec()),
                Op::put(Space::Outbox, b"c\x00\x01".to_vec(), b"x".to_vec()),
                Op::put(Space::Feed, b"b".to_vec(), b"other space".to_vec()),
            ])
            .unwrap();
            s.sync().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let got = s.scan(Space::Outbox, b"b\x00", b"b\x00", 10).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, b"1");
        assert_eq!(s.last(Space::Outbox, b"b\x00").unwrap().unwrap().1, b"2");
        assert_eq!(s.count(Space::Outbox, b"").unwrap(), 3);
        let from_second = s.scan(Space::Outbox, b"b\x00", b"b\x00\x02", 10).unwrap();
        assert_eq!(from_second.len(), 1);
    }

    #[test]
    fn mem_store_matches_sled_semantics() {
        let m = crate::MemStore::default();
        m.apply(&[
            Op::put(Space::Feed, vec![1], vec![1]),
            Op::put(Space::Feed, vec![2], vec![2]),
        ])
        .unwrap();
        assert_eq!(m.scan(Space::Feed, b"", &[2], 10).unwrap().len(), 1);
        assert_eq!(m.last(Space::Feed, b"").unwrap().unwrap().0, vec![2]);
        m.apply(&[Op::delete(Space::Feed, vec![1])]).unwrap();
        assert_eq!(m.count(Space::Feed, b"").unwrap(), 1);
    }
}
