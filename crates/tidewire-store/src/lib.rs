//! Durable storage for a node, behind the [`Store`] trait so that no sled type leaks out.
//!
//! The store is a set of key spaces ([`Space`]) in one ordered key-value map. [`Store::apply`]
//! applies a batch of operations atomically across spaces; [`Store::sync`] makes everything
//! applied so far durable (fsync'd), and [`Store::apply_durable`] does both. [`Committer`] groups
//! concurrent batches so that many writers share one fsync (group commit). The sled store writes
//! every batch to its own log before sled, so one `fdatasync` of that log is a commit; sled's
//! files are synced at checkpoints, and the log replayed from the last one at open.
#![forbid(unsafe_code)]

mod blob;
mod commit;
mod filter;
mod mem;
mod sled_store;

pub use commit::{COMMIT_BUCKETS_US, CommitStats, Committer, Receipt, SLOW_COMMIT};
pub use mem::MemStore;
pub use sled_store::{
    BLOB_THRESHOLD, CACHE_BYTES, SEGMENT_BYTES, SledOptions, SledStore, TRANSIENT_SPACES,
};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed.
    #[error("store i/o failed: {0}")]
    Io(String),
    /// The store was opened by another process or is unreadable.
    #[error("cannot open store at {path}: {reason}")]
    Open {
        /// The data directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The committer has stopped (shutdown).
    #[error("store is shutting down")]
    Closed,
    /// A large value's record in the blob log does not match the pointer that leads to it
    /// (checksum, lengths or key), or the pointer leads outside its segment: the file was
    /// damaged or edited. Only the entry read is affected.
    #[error(
        "blob segment {segment} is damaged at offset {offset}: {problem}; this entry cannot be \
         read (other entries are unaffected): restore the store directory from a backup, or \
         delete the entry"
    )]
    Corrupt {
        /// Path of the segment file.
        segment: String,
        /// Offset of the record in it.
        offset: u64,
        /// What does not match.
        problem: String,
    },
    /// A value in the store's index is not in the format this version writes.
    #[error(
        "stored value of key {key} is malformed: {problem}; the store index is damaged: restore \
         the store directory from a backup, or delete the entry"
    )]
    Malformed {
        /// The key (space byte first), in hex.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// The logical key spaces of a node's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Space {
    /// Notification id → stored envelope and metadata.
    Notifications = 1,
    /// Notification id → delivery state (the seen-set).
    Seen = 2,
    /// peer ‖ seq → outbox item.
    Outbox = 3,
    /// feed seq → local feed item.
    Feed = 4,
    /// ledger seq → ledger entry.
    Ledger = 5,
    /// Node metadata (sequence counters, policy, link-state).
    Meta = 6,
    /// Publisher idempotency key → notification id.
    Idempotency = 7,
    /// Consent requests.
    Consent = 8,
    /// Users (client identities) and their clearance.
    Users = 9,
    /// Durable subscription cursors.
    Cursors = 10,
    /// Notifications held for consent.
    Held = 11,
    /// Origins' consent grants, by notification and destination.
    Grants = 12,
    /// Expiry index: when the earliest of some copies stored together goes (Unix ms,
    /// big-endian u64) ‖ its notification key → each of those copies (and a publish's
    /// idempotency key) with when and why it goes. What the purge deletes, and when, without
    /// reading every stored copy.
    Expiry = 13,
}

impl Space {
    /// Every space, in the order of its byte.
    pub const ALL: [Space; 13] = [
        Space::Notifications,
        Space::Seen,
        Space::Outbox,
        Space::Feed,
        Space::Ledger,
        Space::Meta,
        Space::Idempotency,
        Space::Consent,
        Space::Users,
        Space::Cursors,
        Space::Held,
        Space::Grants,
        Space::Expiry,
    ];

    /// The space whose byte is `b`.
    pub fn from_byte(b: u8) -> Option<Space> {
        Space::ALL.into_iter().find(|s| *s as u8 == b)
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put {
        /// Key space.
        space: Space,
        /// Key within the space.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove.
    Delete {
        /// Key space.
        space: Space,
        /// Key within the space.
        key: Vec<u8>,
    },
}

impl Op {
    /// A put.
    pub fn put(space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            space,
            key: key.into(),
            value: value.into(),
        }
    }

    /// A delete.
    pub fn delete(space: Space, key: impl Into<Vec<u8>>) -> Op {
        Op::Delete {
            space,
            key: key.into(),
        }
    }
}

/// The state of a store's log, for `tidewire status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Segment files of the log.
    pub log_segments: u32,
    /// Their bytes on disk.
    pub log_bytes: u64,
    /// How long since sled's files last held the whole log (the last checkpoint, or the last
    /// one that found nothing to do), if writes came after (`None` when they hold everything:
    /// nothing would be replayed). Under a second while checkpoints run.
    pub since_checkpoint: Option<std::time::Duration>,
    /// Batches replayed from the log into sled when the store was opened.
    pub replayed_at_open: u64,
}

/// A key-value pair read from the store.
pub type Entry = (Vec<u8>, Vec<u8>);

/// What a node needs from durable storage.
pub trait Store: Send + Sync + 'static {
    /// Reads one value.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether `key` is present. A store that keeps large values apart answers without reading
    /// the value.
    fn contains(&self, space: Space, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(space, key)?.is_some())
    }
    /// Reads up to `limit` entries of `space` whose keys start with `prefix` and are `>= from`
    /// (`from` includes the prefix), in key order.
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// The entry with the greatest key starting with `prefix`.
    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// The entry with the greatest key starting with `prefix` that is `<= at` (`at` includes
    /// the prefix): where a record that covers a range of keys from its own begins.
    fn floor(&self, space: Space, prefix: &[u8], at: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// How many entries start with `prefix`.
    fn count(&self, space: Space, prefix: &[u8]) -> Result<u64, StoreError>;
    /// Applies all operations atomically (all or none survive a crash), not yet durable.
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes everything applied so far durable: on return it is on stable storage.
    fn sync(&self) -> Result<(), StoreError>;
    /// Applies all operations atomically and makes them, and everything applied before, durable.
    /// A store with a write-ahead log does this with one sync of the log.
    fn apply_durable(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.apply(ops)?;
        self.sync()
    }
    /// What an operator sees of the store ([`StoreStats`]). A store without a log has nothing
    /// to report.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
    /// Folds what the store has made durable into its long-term form, so that an open has
    /// less to recover and space held only for recovery can be reclaimed. Durability never
    /// waits for it: [`crate::Committer`] calls it every second and a store calls it when it
    /// closes.
    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
