//! Group commit: many writers, one fsync.
//!
//! Writers hand a batch to the [`Committer`] and await its answer. A dedicated thread takes every
//! batch waiting, applies each atomically, syncs once, then answers them all. Under load one fsync
//! covers dozens of batches; alone, a batch waits only for its own fsync.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::{Op, Store, StoreError};

type Job = (Vec<Op>, oneshot::Sender<Result<(), String>>);

/// A submitted batch, to await with [`Committer::wait`].
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Result<(), String>>);

/// The group-commit writer of one store.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

/// The most batches one fsync covers.
const MAX_GROUP: usize = 512;

impl Committer {
    /// Starts the writer thread for `store`. It stops when every `Committer` clone is dropped.
    pub fn start(store: Arc<dyn Store>) -> Committer {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tidewire-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs: Vec<Job> = vec![first];
                    while jobs.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    // One atomic batch for the whole group: each job's atomicity is preserved
                    // (a group is all-or-nothing), and sled pays its per-batch cost once.
                    let ops: Vec<Op> = jobs
                        .iter_mut()
                        .flat_map(|(ops, _)| std::mem::take(ops))
                        .collect();
                    let synced = store
                        .apply(&ops)
                        .and_then(|()| store.sync())
                        .map_err(|e| e.to_string());
                    tracing::trace!(batches = jobs.len(), "group commit");
                    for (_, reply) in jobs {
                        let _ = reply.send(synced.clone());
                    }
                }
            })
            .expect("spawn commit thread");
        Committer { tx }
    }

    /// Applies `ops` atomically and returns once they are durable.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        Self::wait(self.submit(ops)).await
    }

    /// Queues `ops` now (batches are applied in submission order) and returns the receipt to
    /// await with [`Committer::wait`].
    pub fn submit(&self, ops: Vec<Op>) -> Receipt {
        let (tx, rx) = oneshot::channel();
        if ops.is_empty() {
            let _ = tx.send(Ok(()));
        } else if let Err(mpsc::SendError((_, tx))) = self.tx.send((ops, tx)) {
            let _ = tx.send(Err(StoreError::Closed.to_string()));
        }
        Receipt(rx)
    }

    /// Waits until a submitted batch is durable.
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
