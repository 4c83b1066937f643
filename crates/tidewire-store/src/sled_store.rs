//! The sled implementation. All spaces live in one sled tree, keyed `space byte ‖ key`, so that
//! a batch is one record of the store's log, atomic across spaces.
//!
//! **The store's log comes first.** Every batch is appended to the store's own log
//! (`DIR/blob-log/*.seg`, see `blob.rs`) before sled applies it, and a durable batch is
//! `fdatasync`ed there: one sync of one file per group commit. sled's files are synced only at a
//! checkpoint ([`Store::checkpoint`], every second from the [`crate::Committer`] and when the
//! store closes): sled's `flush()`, which ends in `sync_file_range` and so is not an fsync (no
//! drive cache flush, no metadata), then `sync_all` on handles kept open on sled's data file and
//! directory, then the log position up to which sled now holds everything, in
//! `blob-log/CHECKPOINT`. At open, the batches after that position are applied to sled again,
//! in order: what sled had not yet written when the process died (or the power went) comes back
//! from the log.
//!
//! Large values of the spaces whose values all go in the end ([`TRANSIENT_SPACES`]) do not go
//! into sled: sled copies whole leaf nodes, large values included, on every insert. A value of
//! at least [`SledOptions::blob_threshold`] bytes is written once, as a value record right behind
//! its batch in the log, and sled stores a 17-byte pointer to it instead. Values that are never
//! deleted (ledger records) stay in sled whatever their size, so that no pointer holds a segment
//! for ever. The log has a directory of its own: `DIR/blobs` belongs to sled, which at every
//! start removes the files there whose names parse as numbers above its stable log position
//! (and warns about every other one). Stores written when the log lived there are moved at open.
//! Every sled value starts with a tag byte: `1` = the value follows inline, `2` = a pointer
//! (segment u32 ‖ offset u64 ‖ length u32, big-endian) follows. A store written before the tag
//! existed has no format marker and is refused at open; one written before the log was a
//! write-ahead log (format 2) is taken over at open (sled was synced at every commit then).
//!
//! **Crash-safety invariant: a pointer never becomes durable before the bytes it points to.**
//! A batch that puts large values is synced in the log before sled applies it, durable or not;
//! a blob segment is deleted only by a checkpoint that began after the batch which removed its
//! last pointer. Log bytes that no pointer reaches (a crash between the two steps) are harmless.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Instant;

use crate::blob::{self, BlobLog, BlobRef, Position, REF_LEN, Usage};
use crate::filter::KeyFilter;
use crate::{Entry, Op, Space, Store, StoreError};

/// Values of at least this many bytes go to the blob log by default; smaller ones stay in sled.
pub const BLOB_THRESHOLD: usize = 512;

/// By default, a blob segment is closed once the next record would take it past this size.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// sled's page cache by default (a node's `limits.store_cache_mib`).
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Tag byte of a sled value holding the value itself.
const TAG_INLINE: u8 = 1;
/// Tag byte of a sled value holding a [`BlobRef`].
const TAG_BLOB: u8 = 2;
/// Key, in sled's default tree, of the on-disk format version.
const FORMAT_KEY: &[u8] = b"tidewire-store-format";
/// The on-disk format this version writes: tagged values, and a log that is written ahead of
/// sled (replayed at open from its checkpoint).
const FORMAT: u8 = 3;
/// The format before it: the same values, a log of large values only, sled synced at every
/// commit (nothing to replay). Read, and taken over at open.
const FORMAT_SLED_SYNCED: u8 = 2;

/// Operation kinds in a batch record's body: `kind ‖ key length (u32 BE) ‖ key`, then for an
/// inline put `value length (u32 BE) ‖ value`. A put of a large value has its value in the next
/// value record behind the batch record.
const OP_DELETE: u8 = 0;
const OP_INLINE: u8 = 1;
const OP_BLOB: u8 = 2;

fn encode_op(body: &mut Vec<u8>, kind: u8, key: &[u8], value: Option<&[u8]>) {
    body.push(kind);
    body.extend_from_slice(&(key.len() as u32).to_be_bytes());
    body.extend_from_slice(key);
    if let Some(v) = value {
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v);
    }
}

/// A batch's writes to sled, in key order: a key and its new sled value, or `None` to remove it.
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A batch record's body as the writes it makes to sled, in key order (the last operation on a
/// key wins), the large values' pointers taken in order from `refs`. `None` if the body is
/// malformed or does not put exactly `refs.len()` large values.
fn decode_batch(body: &[u8], refs: &[BlobRef]) -> Option<Writes> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    let mut b = body;
    let mut refs = refs.iter();
    let mut batch: Writes = Vec::new();
    while let Some(&kind) = b.first() {
        b = &b[1..];
        let klen = len(&mut b)?;
        let key = take(&mut b, klen)?;
        match kind {
            OP_DELETE => batch.push((key.to_vec(), None)),
            OP_INLINE => {
                let vlen = len(&mut b)?;
                let value = take(&mut b, vlen)?;
                let mut v = Vec::with_capacity(1 + vlen);
                v.push(TAG_INLINE);
                v.extend_from_slice(value);
                batch.push((key.to_vec(), Some(v)));
            }
            OP_BLOB => {
                let r = *refs.next()?;
                let mut v = Vec::with_capacity(1 + REF_LEN);
                v.push(TAG_BLOB);
                r.encode_into(&mut v);
                batch.push((key.to_vec(), Some(v)));
            }
            _ => return None,
        }
    }
    if refs.next().is_some() {
        return None;
    }
    // Stable: of a key's operations the last stays last, and its write replaces the earlier
    // ones' (`dedup_by` keeps the first of a run, so it takes the later one's value).
    batch.sort_by(|a, b| a.0.cmp(&b.0));
    batch.dedup_by(|later, kept| {
        later.0 == kept.0 && {
            std::mem::swap(later, kept);
            true
        }
    });
    Some(batch)
}

/// What applying writes changed in the pointers into the log.
#[derive(Debug, Default)]
struct PointerChange {
    /// Pointers put.
    added: Vec<BlobRef>,
    /// Pointers overwritten or removed.
    removed: Vec<BlobRef>,
}

/// Applies a batch's writes to sled one by one, in key order.
///
/// Not as a `sled::Batch`: `apply_batch` switches on a lock global to the process, which from
/// then on every read of every tree takes, and holds it exclusively while the batch is applied.
/// A group commit's batch takes milliseconds to apply, and every read on every thread (a
/// tokio worker checking the seen-set, a feed scan) waited for it. The store needs no more
/// from sled than each write's own atomicity:
/// - a crash: the log is the record. sled's files hold everything up to the checkpoint, and
///   an open applies every batch after it again, in order, whatever part of it sled had kept;
/// - readers: keys appear in key order. A space's new keys are numbered upwards in the order
///   their batches are submitted, so a cursor that has seen a key has seen the ones before it;
///   and across spaces the lower space byte goes first, so a stored copy (space 1) is there
///   before the seen mark, outbox item, feed entry or idempotency key that leads to it.
///
/// Notes in `change` the pointers that the writes applied put and replace (sled hands back each
/// key's old value), also when a write fails part of the way.
fn apply_writes(
    tree: &sled::Tree,
    writes: Writes,
    change: &mut PointerChange,
) -> Result<(), StoreError> {
    for (k, v) in writes {
        let put = v.as_deref().and_then(decode).and_then(|s| match s {
            Stored::Blob(r) => Some(r),
            Stored::Inline(_) => None,
        });
        let old = match v {
            Some(v) => tree.insert(k, v),
            None => tree.remove(k),
        }
        .map_err(io)?;
        change.added.extend(put);
        if let Some(old) = old
            && let Some(Stored::Blob(r)) = decode(&old)
        {
            change.removed.push(r);
        }
    }
    Ok(())
}

/// The spaces whose large values a node keeps in the log rather than in sled: those whose every
/// value is deleted in the end. Stored copies go at their expiry, with the retention or by
/// recall; expiry entries with the copies they list; outbox items when acknowledged or dropped;
/// feed entries with the retention.
///
/// Only these: a log segment is reclaimed once no live pointer leads into it, and a value that
/// is never deleted (a record of the ledger, which is kept whole) would hold its 64 MiB segment,
/// and so all the content written around it, for ever. The other spaces keep even their large
/// values in sled.
pub const TRANSIENT_SPACES: &[Space] = &[
    Space::Notifications,
    Space::Outbox,
    Space::Feed,
    Space::Expiry,
];

/// Tunables of a [`SledStore`]. [`Default`] is what a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledOptions {
    /// Values of at least this many bytes, in the spaces of `blob_spaces`, are kept in the log,
    /// others in sled. Only writes look at it: a store reads values of either kind whatever the
    /// threshold.
    pub blob_threshold: usize,
    /// The spaces whose large values go to the log ([`TRANSIENT_SPACES`] by default).
    pub blob_spaces: &'static [Space],
    /// The active blob segment is closed once the next record would take it past this size.
    pub segment_bytes: u64,
    /// Bytes of memory for sled's page cache.
    pub cache_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> SledOptions {
        SledOptions {
            blob_threshold: BLOB_THRESHOLD,
            blob_spaces: TRANSIENT_SPACES,
            segment_bytes: SEGMENT_BYTES,
            cache_bytes: CACHE_BYTES,
        }
    }
}

/// The blob log's directory, inside the store's.
const BLOB_DIR: &str = "blob-log";

/// Where earlier versions kept the blob log: sled's own `blobs` directory. It only ever held
/// the log's segments (sled keeps its own blobs there only for values far larger than the
/// ones this store gives it), so the directory moves whole.
const OLD_BLOB_DIR: &str = "blobs";

/// Moves a blob log from sled's `blobs` directory to its own, before sled opens: one atomic
/// rename of the directory, made durable by an fsync of the store's. A crash leaves either
/// layout, and the next open finishes the move.
fn move_old_blob_log(dir: &Path) -> std::io::Result<()> {
    let (old, new) = (dir.join(OLD_BLOB_DIR), dir.join(BLOB_DIR));
    let holds_segments = std::fs::read_dir(&old).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
    });
    if new.exists() || !holds_segments {
        return Ok(());
    }
    std::fs::rename(&old, &new)?;
    File::open(dir)?.sync_all()?;
    tracing::info!(from = %old.display(), to = %new.display(), "blob log moved to its own directory");
    Ok(())
}

/// A store in a directory on disk.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    files: Mutex<Vec<File>>,
    dir: PathBuf,
    blobs: BlobLog,
    opts: SledOptions,
    /// Serializes [`Store::apply`]: batches reach the log and sled in the same order, and the
    /// pointer counts follow the values sled hands back.
    writer: Mutex<()>,
    /// Where the last checkpoint put the start of replay, and when (`None` before the first).
    checkpointed: Mutex<Option<(Position, Instant)>>,
    /// What the open replayed from the log.
    replayed: blob::Replayed,
    /// Every key of the [`FILTERED`] spaces that sled holds (and some it no longer does), so
    /// that a lookup of one it does not hold mostly skips sled. Built at open from what sled
    /// holds, and given every put to those spaces before sled applies it.
    filter: RwLock<KeyFilter>,
}

/// The spaces with a [`KeyFilter`] in front: the seen-set, which a node asks about every
/// notification it receives, nearly all of them new, and publishers' idempotency keys, looked up
/// at every publish that has one, nearly all of them new too.
const FILTERED: &[Space] = &[Space::Seen, Space::Idempotency];

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .finish()
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn full_key(space: Space, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(space as u8);
    k.extend_from_slice(key);
    k
}

/// A sled value, decoded.
enum Stored<'a> {
    Inline(&'a [u8]),
    Blob(BlobRef),
}

fn decode(v: &[u8]) -> Option<Stored<'_>> {
    match v.split_first()? {
        (&TAG_INLINE, rest) => Some(Stored::Inline(rest)),
        (&TAG_BLOB, rest) => BlobRef::decode(rest).map(Stored::Blob),
        _ => None,
    }
}

fn malformed(full_key: &[u8], v: &[u8]) -> StoreError {
    StoreError::Malformed {
        key: full_key.iter().map(|b| format!("{b:02x}")).collect(),
        problem: match v.first() {
            None => "empty, without a format tag".into(),
            Some(&TAG_BLOB) => format!("a blob pointer of {} bytes", v.len() - 1),
            Some(t) => format!("unknown format tag {t}"),
        },
    }
}

/// Checks the format marker, writing it into a new store, and returns the store's format;
/// refuses a store of a format this version does not read.
fn check_format(db: &sled::Db, tree: &sled::Tree) -> Result<u8, String> {
    match db.get(FORMAT_KEY).map_err(|e| e.to_string())? {
        Some(v) if v.as_ref() == [FORMAT] => Ok(FORMAT),
        Some(v) if v.as_ref() == [FORMAT_SLED_SYNCED] => Ok(FORMAT_SLED_SYNCED),
        Some(v) => Err(format!(
            "it is in store format {v:?} and this version reads formats {FORMAT_SLED_SYNCED} \
             and {FORMAT} only; use the tidewire version that wrote it"
        )),
        None if tree.is_empty() => {
            db.insert(FORMAT_KEY, &[FORMAT])
                .map_err(|e| e.to_string())?;
            db.flush().map_err(|e| e.to_string())?;
            Ok(FORMAT)
        }
        None => Err(format!(
            "it was written by an older tidewire (values without a format tag, no blob log) and \
             this version reads formats {FORMAT_SLED_SYNCED} and {FORMAT} only; move the \
             directory away to start with an empty store, or drain it with the older version \
             first"
        )),
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, with the default [`SledOptions`].
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, SledOptions::default())
    }

    /// Opens (or creates) the store in `dir`. Reads every value once, to count the live
    /// pointers into each blob segment.
    pub fn open_with(dir: &Path, opts: SledOptions) -> Result<SledStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        // What a node stores is for its own account alone: a new store directory is 0700.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| open_err(e.to_string()))?;
        move_old_blob_log(dir).map_err(|e| {
            open_err(format!(
                "cannot move the blob log out of sled's directory: {e}"
            ))
        })?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| open_err(format!("{e} (is another node using this data directory?)")))?;
        let tree = db
            .open_tree("tidewire")
            .map_err(|e| open_err(e.to_string()))?;
        let format = check_format(&db, &tree).map_err(open_err)?;
        let log_dir = dir.join(BLOB_DIR);

        let started = Instant::now();
        let checkpoint = blob::read_checkpoint(&log_dir).map_err(open_err)?;
        let replayed = if format == FORMAT {
            blob::replay(&log_dir, checkpoint.unwrap_or_default(), |body, refs| {
                let batch = decode_batch(body, refs).ok_or_else(|| StoreError::Corrupt {
                    segment: log_dir.display().to_string(),
                    offset: refs.first().map_or(0, |r| r.offset),
                    problem: "a batch record's operations cannot be decoded though its \
                              checksum matches"
                        .into(),
                })?;
                // Pointer counts are taken from sled's values once the replay is done.
                apply_writes(&tree, batch, &mut PointerChange::default())
            })?
        } else {
            blob::Replayed::default()
        };
        if replayed.batches > 0 || replayed.torn > 0 {
            tracing::info!(
                dir = %dir.display(),
                batches = replayed.batches,
                bytes = replayed.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store log replayed into sled"
            );
        }

        let mut usage: HashMap<u32, Usage> = HashMap::new();
        let (mut entries, mut pointers, mut bad) = (0u64, 0u64, 0u64);
        // Values in the log that belong in sled (see TRANSIENT_SPACES): ledger records written
        // by earlier versions, which would hold their segments for ever.
        let mut misplaced: Vec<(Space, Vec<u8>)> = Vec::new();
        // The hashes of the filtered spaces' keys, for the filter built once they are counted.
        let mut filtered: Vec<u64> = Vec::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| open_err(e.to_string()))?;
            entries += 1;
            let space = k.first().copied().and_then(Space::from_byte);
            if space.is_some_and(|s| FILTERED.contains(&s)) {
                filtered.push(crate::filter::hash(&k));
            }
            match decode(&v) {
                Some(Stored::Blob(r)) => {
                    pointers += 1;
                    usage.entry(r.segment).or_default().add(r, &k);
                    if let Some(space) = space
                        && !opts.blob_spaces.contains(&space)
                    {
                        misplaced.push((space, k[1..].to_vec()));
                    }
                }
                Some(Stored::Inline(_)) => {}
                None => bad += 1,
            }
        }
        if bad > 0 {
            tracing::warn!(
                dir = %dir.display(),
                malformed = bad,
                "store holds values without a valid format tag; reading them fails"
            );
        }
        // Sized for twice the keys held now before it first grows.
        let mut filter = KeyFilter::with_capacity(2 * filtered.len() as u64);
        for h in filtered {
            filter.insert_hash(h);
        }
        let blobs = BlobLog::open(&log_dir, opts.segment_bytes, usage)
            .map_err(|e| open_err(e.to_string()))?;
        tracing::info!(
            dir = %dir.display(),
            entries,
            blob_values = pointers,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store opened"
        );
        let store = SledStore {
            db,
            tree,
            files: Mutex::new(Vec::new()),
            dir: dir.to_owned(),
            blobs,
            opts,
            writer: Mutex::new(()),
            checkpointed: Mutex::new(None),
            replayed,
            filter: RwLock::new(filter),
        };
        store.refresh_files()?;
        store.move_into_sled(misplaced)?;
        // Everything replayed (or moved) is now in sled's files, and the log starts afresh.
        store.checkpoint()?;
        if format != FORMAT {
            store.db.insert(FORMAT_KEY, &[FORMAT]).map_err(io)?;
            store.sync_sled()?;
            tracing::info!(dir = %dir.display(), from = format, to = FORMAT, "store format upgraded");
        }
        Ok(store)
    }

    /// Writes the values of `keys` again, which puts those of spaces outside
    /// [`SledOptions::blob_spaces`] into sled, and lets the log segments that held them go.
    fn move_into_sled(&self, keys: Vec<(Space, Vec<u8>)>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let moved = keys.len();
        for chunk in keys.chunks(256) {
            let mut ops = Vec::with_capacity(chunk.len());
            for (space, key) in chunk {
                if let Some(value) = self.get(*space, key)? {
                    ops.push(Op::put(*space, key.clone(), value));
                }
            }
            self.write(&ops, false)?;
        }
        tracing::info!(
            dir = %self.dir.display(),
            values = moved,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "values that are never deleted moved from the log into sled"
        );
        Ok(())
    }

    /// Opens the handles that a checkpoint fsyncs.
    fn refresh_files(&self) -> Result<(), StoreError> {
        // sled creates its `db` file on open; the directory handle covers new snapshot files.
        let files = vec![
            File::open(self.dir.join("db")).map_err(io)?,
            File::open(&self.dir).map_err(io)?,
        ];
        *self
            .files
            .lock()
            .map_err(|_| StoreError::Io("file handle lock poisoned".into()))? = files;
        Ok(())
    }

    fn writer(&self) -> Result<MutexGuard<'_, ()>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Io("store writer lock poisoned".into()))
    }

    /// The value a sled value stands for. The caller holds the blob read gate.
    fn resolve(&self, full_key: &[u8], v: &[u8]) -> Result<Vec<u8>, StoreError> {
        match decode(v) {
            Some(Stored::Inline(b)) => Ok(b.to_vec()),
            Some(Stored::Blob(r)) => self.blobs.read(r, full_key),
            None => Err(malformed(full_key, v)),
        }
    }

    /// sled's flush, then a real fsync of its files.
    fn sync_sled(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        let files = self
            .files
            .lock()
            .map_err(|_| StoreError::Io("file handle lock poisoned".into()))?;
        for f in files.iter() {
            f.sync_all().map_err(io)?;
        }
        Ok(())
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = full_key(space, key);
        if !self.may_hold(space, &k) {
            return Ok(None);
        }
        let _gate = self.blobs.read_gate()?;
        match self.tree.get(&k).map_err(io)? {
            Some(v) => Ok(Some(self.resolve(&k, &v)?)),
            None => Ok(None),
        }
    }

    fn contains(&self, space: Space, key: &[u8]) -> Result<bool, StoreError> {
        let k = full_key(space, key);
        if !self.may_hold(space, &k) {
            return Ok(false);
        }
        self.tree.contains_key(k).map_err(io)
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let start = full_key(space, from.max(prefix));
        let mut out = Vec::new();
        let _gate = self.blobs.read_gate()?;
        for item in self.tree.range(start..) {
            let (k, v) = item.map_err(io)?;
            if !k.starts_with(&p) || out.len() >= limit {
                break;
            }
            out.push((k[1..].to_vec(), self.resolve(&k, &v)?));
        }
        Ok(out)
    }

    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let _gate = self.blobs.read_gate()?;
        match self.tree.scan_prefix(&p).next_back() {
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                Ok(Some((k[1..].to_vec(), self.resolve(&k, &v)?)))
            }
            None => Ok(None),
        }
    }

    fn floor(&self, space: Space, prefix: &[u8], at: &[u8]) -> Result<Option<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let _gate = self.blobs.read_gate()?;
        match self.tree.range(..=full_key(space, at)).next_back() {
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                if !k.starts_with(&p) {
                    return Ok(None);
                }
                Ok(Some((k[1..].to_vec(), self.resolve(&k, &v)?)))
            }
            None => Ok(None),
        }
    }

    fn count(&self, space: Space, prefix: &[u8]) -> Result<u64, StoreError> {
        Ok(self.tree.scan_prefix(full_key(space, prefix)).count() as u64)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(ops, false)
    }

    fn apply_durable(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(ops, true)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.blobs.sync()
    }

    fn stats(&self) -> crate::StoreStats {
        let (log_segments, log_bytes) = self.blobs.disk_usage().unwrap_or_default();
        // Only writes the last checkpoint does not cover make its age worth showing.
        let end = self.blobs.position().ok();
        let since_checkpoint = self.checkpointed.lock().ok().and_then(|c| {
            c.filter(|(p, _)| Some(*p) != end)
                .map(|(_, at)| at.elapsed())
        });
        crate::StoreStats {
            log_segments,
            log_bytes,
            since_checkpoint,
            replayed_at_open: self.replayed.batches,
        }
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        // Under the writer lock, every batch before `at` is applied to sled.
        let (at, dead) = {
            let _writer = self.writer()?;
            (self.blobs.position()?, self.blobs.take_dead()?)
        };
        let mut last = self
            .checkpointed
            .lock()
            .map_err(|_| StoreError::Io("checkpoint lock poisoned".into()))?;
        if last.is_some_and(|(p, _)| p == at) && dead.is_empty() {
            // sled's files still hold the whole log: as of now.
            *last = Some((at, Instant::now()));
            return Ok(());
        }
        let done = self
            .blobs
            .sync()
            .and_then(|()| self.sync_sled())
            .and_then(|()| blob::write_checkpoint(&self.dir.join(BLOB_DIR), at));
        match done {
            Ok(()) => {
                *last = Some((at, Instant::now()));
                self.blobs.remove(dead)
            }
            Err(e) => {
                self.blobs.restore(dead)?;
                Err(e)
            }
        }
    }
}

impl SledStore {
    /// False only if sled certainly does not hold `full` (a key of `space`, space byte first).
    fn may_hold(&self, space: Space, full: &[u8]) -> bool {
        !FILTERED.contains(&space)
            || self
                .filter
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .may_contain(full)
    }

    /// Appends `ops` to the log (synced if `durable`), then applies them to sled.
    fn write(&self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let _writer = self.writer()?;
        let keys: Vec<Vec<u8>> = ops
            .iter()
            .map(|op| match op {
                Op::Put { space, key, .. } | Op::Delete { space, key } => full_key(*space, key),
            })
            .collect();
        // Only the last operation on a key counts: earlier ones neither write blobs nor move
        // pointer counts.
        let mut effective: Vec<usize> = {
            let mut seen = HashSet::with_capacity(keys.len());
            (0..ops.len())
                .rev()
                .filter(|&i| seen.insert(keys[i].as_slice()))
                .collect()
        };
        effective.reverse();
        let threshold = self.opts.blob_threshold;

        // The log first (synced if the batch must be durable or puts large values), then
        // sled: the same operations, the large values as pointers into the log.
        let mut body = Vec::new();
        let mut values: Vec<(&[u8], &[u8])> = Vec::new();
        for &i in &effective {
            let key = keys[i].as_slice();
            match &ops[i] {
                Op::Put { space, value, .. }
                    if value.len() >= threshold && self.opts.blob_spaces.contains(space) =>
                {
                    encode_op(&mut body, OP_BLOB, key, None);
                    values.push((key, value));
                }
                Op::Put { value, .. } => encode_op(&mut body, OP_INLINE, key, Some(value)),
                Op::Delete { .. } => encode_op(&mut body, OP_DELETE, key, None),
            }
        }
        let refs = self
            .blobs
            .append(&body, &values, durable || !values.is_empty())?;
        drop(values);
        let batch = decode_batch(&body, &refs).ok_or_else(|| {
            StoreError::Io("a batch record does not decode to its own operations".into())
        })?;
        // The filter learns every key of its spaces before sled holds it, so that it never
        // answers "absent" for a key sled has. (A poisoned lock still guards whole bits.)
        let mut filter = None;
        for (i, op) in ops.iter().enumerate() {
            if let Op::Put { space, .. } = op
                && FILTERED.contains(space)
            {
                filter
                    .get_or_insert_with(|| self.filter.write().unwrap_or_else(|p| p.into_inner()))
                    .insert(&keys[i]);
            }
        }
        drop(filter);
        // If sled fails here, the batch is in the log but not (wholly) in sled: the caller gets
        // the error, and the replay of a restart applies it. A failed commit's outcome is
        // unknown to its caller either way (its log write may or may not have reached the
        // disk). What was applied is counted either way, so that no segment a live pointer
        // leads into is ever taken for dead.
        let mut change = PointerChange::default();
        let applied = apply_writes(&self.tree, batch, &mut change);
        let counted = self.blobs.commit(&change.added, &change.removed);
        applied.and(counted)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "closing checkpoint failed; the next open replays the log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Small segments, so that a few 3 KB values rotate them.
    const SMALL: SledOptions = SledOptions {
        blob_threshold: BLOB_THRESHOLD,
        blob_spaces: &Space::ALL,
        segment_bytes: 16 * 1024,
        cache_bytes: CACHE_BYTES,
    };

    /// The node's options, but with large values of every space in the log.
    fn any_space() -> SledOptions {
        SledOptions {
            blob_spaces: &Space::ALL,
            ..SledOptions::default()
        }
    }

    /// Opens the store, retrying (bounded) while a store dropped just before still holds
    /// sled's file lock: sled releases it from a background thread shortly after the drop.
    fn open_retrying(dir: &Path, opts: SledOptions) -> SledStore {
        let mut tries = 0;
        loop {
            match SledStore::open_with(dir, opts) {
                Ok(s) => return s,
                Err(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("store did not reopen within 5 s: {e}"),
            }
        }
    }

    /// `sled::open`, retrying like [`open_retrying`].
    fn sled_retrying(dir: &Path) -> sled::Db {
        for _ in 0..100 {
            if let Ok(db) = sled::open(dir) {
                return db;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        sled::open(dir).expect("sled did not reopen within 5 s")
    }

    /// A value of `len` bytes, all equal to `fill`.
    fn val(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    fn key(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    /// Segment file names in the store's blob directory, sorted.
    fn segments(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(BLOB_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        v.sort();
        v
    }

    fn blob_bytes(dir: &Path) -> u64 {
        segments(dir)
            .iter()
            .map(|n| std::fs::metadata(dir.join(BLOB_DIR).join(n)).unwrap().len())
            .sum()
    }

    /// Bytes of one record in the blob log for a key of `key_len` bytes (space byte excluded).
    fn record(key_len: usize, value_len: usize) -> u64 {
        (12 + 1 + key_len + value_len) as u64
    }

    /// Bytes of a batch record whose operations take `body` bytes.
    fn batch(body: usize) -> u64 {
        (12 + 4 + body) as u64
    }

    /// Bytes of one operation in a batch record's body, for the 4-byte keys of [`key`]: a put
    /// of a large value or a delete (kind, key length, key) ...
    const OP: usize = 1 + 4 + 5;

    /// ... and a put of a small value of `len` bytes (its length and itself as well).
    fn inline_op(len: usize) -> usize {
        OP + 4 + len
    }

    /// Whether sled holds a pointer into the log for `key`, rather than the value itself.
    fn in_log(s: &SledStore, space: Space, k: &[u8]) -> bool {
        let v = s.tree.get(full_key(space, k)).unwrap().unwrap();
        matches!(decode(&v), Some(Stored::Blob(_)))
    }

    /// The filter answers for what sled holds: every key put is found, before and
    /// after a reopen (which builds it again from sled, replayed log included), a key never put
    /// is not, and a deleted one is not either (sled is asked).
    #[test]
    fn the_filter_never_hides_a_seen_set_or_idempotency_key_sled_holds() {
        let dir = tempfile::tempdir().unwrap();
        let key = |i: u32| i.to_be_bytes().to_vec();
        let cp = dir.path().join(BLOB_DIR).join("CHECKPOINT");
        {
            let s = SledStore::open(dir.path()).unwrap();
            let start = std::fs::read(&cp).unwrap();
            let puts: Vec<Op> = (0..5_000)
                .map(|i| Op::put(Space::Seen, key(i), Vec::new()))
                .collect();
            s.apply_durable(&puts).unwrap();
            s.apply_durable(&[Op::delete(Space::Seen, key(7))]).unwrap();
            assert!(
                (0..5_000)
                    .filter(|i| *i != 7)
                    .all(|i| s.contains(Space::Seen, &key(i)).unwrap())
            );
            assert!(!s.contains(Space::Seen, &key(7)).unwrap(), "deleted");
            assert_eq!(s.get(Space::Seen, &key(8)).unwrap(), Some(Vec::new()));
            assert_eq!(s.get(Space::Seen, &key(9_999)).unwrap(), None);
            s.apply_durable(&[
                Op::put(Space::Seen, key(10_000), Vec::new()),
                Op::put(Space::Idempotency, b"cli:abc".to_vec(), b"id".to_vec()),
            ])
            .unwrap();
            assert_eq!(
                s.get(Space::Idempotency, b"cli:abc").unwrap(),
                Some(b"id".to_vec())
            );
            assert_eq!(s.get(Space::Idempotency, b"cli:abd").unwrap(), None);
            drop(s);
            // Back to the checkpoint of the open: the reopen replays every batch from the log.
            std::fs::write(&cp, start).unwrap();
        }
        let s = open_retrying(dir.path(), SledOptions::default());
        assert_eq!(s.replayed.batches, 3, "the reopen replayed the log");
        assert!(
            (0..5_000)
                .filter(|i| *i != 7)
                .all(|i| s.contains(Space::Seen, &key(i)).unwrap())
        );
        assert!(s.contains(Space::Seen, &key(10_000)).unwrap(), "replayed");
        assert!(
            s.contains(Space::Idempotency, b"cli:abc").unwrap(),
            "replayed"
        );
        assert!(!s.contains(Space::Seen, &key(7)).unwrap());
        let absent = (20_000..30_000)
            .filter(|i| {
                s.filter
                    .read()
                    .unwrap()
                    .may_contain(&full_key(Space::Seen, &key(*i)))
            })
            .count();
        assert!(
            absent < 500,
            "{absent} of 10,000 keys never put pass the filter"
        );
        // Other spaces are not filtered.
        s.apply_durable(&[Op::put(Space::Feed, key(1), b"x".to_vec())])
            .unwrap();
        assert!(s.contains(Space::Feed, &key(1)).unwrap());
    }

    #[test]
    fn a_batch_reaches_sled_in_key_order_with_the_last_operation_on_a_key_winning() {
        let mut body = Vec::new();
        // Out of key order, a key written twice, a delete, and a large value's put.
        encode_op(&mut body, OP_INLINE, &[4, 9], Some(b"feed"));
        encode_op(&mut body, OP_INLINE, &[2, 7], Some(b"first"));
        encode_op(&mut body, OP_BLOB, &[1, 5], None);
        encode_op(&mut body, OP_DELETE, &[3, 1], None);
        encode_op(&mut body, OP_INLINE, &[2, 7], Some(b"second"));
        let r = BlobRef {
            segment: 1,
            offset: 40,
            len: 9,
        };
        let writes = decode_batch(&body, &[r]).unwrap();
        let keys: Vec<&[u8]> = writes.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            keys,
            [&[1u8, 5][..], &[2, 7], &[3, 1], &[4, 9]],
            "lower space bytes first, each key once"
        );
        assert_eq!(writes[1].1.as_deref(), Some(&b"\x01second"[..]));
        assert_eq!(writes[2].1, None, "a delete removes");
        assert!(matches!(decode(writes[0].1.as_deref().unwrap()), Some(Stored::Blob(p)) if p == r));
        assert!(
            decode_batch(&body, &[]).is_none(),
            "a large value without its record"
        );
    }

    #[test]
    fn floor_finds_the_greatest_key_at_or_before_within_its_prefix_in_both_stores() {
        let dir = tempfile::tempdir().unwrap();
        let sled = open_retrying(dir.path(), any_space());
        let mem = crate::MemStore::default();
        for s in [&sled as &dyn Store, &mem] {
            s.apply(&[
                Op::put(Space::Ledger, key(1), vec![7u8; 3]),
                Op::put(Space::Ledger, key(5), vec![8u8; BLOB_THRESHOLD + 1]),
                Op::put(Space::Outbox, b"b\x00\x01".to_vec(), b"x".to_vec()),
                Op::put(Space::Feed, key(2), b"f".to_vec()),
            ])
            .unwrap();
            let at = |k: u32| s.floor(Space::Ledger, b"", &key(k)).unwrap().map(|e| e.0);
            assert_eq!(at(0), None, "nothing of the space at or before it");
            assert_eq!(at(1), Some(key(1)), "an exact key is its own floor");
            assert_eq!(at(4), Some(key(1)));
            assert_eq!(at(5), Some(key(5)));
            assert_eq!(at(99), Some(key(5)), "past the end: the last key");
            let large = s.floor(Space::Ledger, b"", &key(6)).unwrap().unwrap().1;
            assert_eq!(
                large,
                vec![8u8; BLOB_THRESHOLD + 1],
                "a value in the blob log"
            );
            assert_eq!(
                s.floor(Space::Outbox, b"c", b"c\x09").unwrap(),
                None,
                "a key of another prefix is not a floor"
            );
            assert_eq!(
                s.floor(Space::Outbox, b"b", b"b\x09").unwrap().unwrap().0,
                b"b\x00\x01".to_vec()
            );
        }
    }

    #[test]
    fn a_new_store_directory_is_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data").join("store");
        drop(open_retrying(&dir, any_space()));
        for d in [dir.parent().unwrap(), &dir] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    #[test]
    fn small_and_large_values_round_trip_through_get_scan_and_last() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), any_space());
        let sizes = [0usize, 10, BLOB_THRESHOLD - 1, BLOB_THRESHOLD, 3600, 70_000];
        let ops: Vec<Op> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Op::put(Space::Notifications, key(i as u32), val(n, i as u8 + 1)))
            .chain([Op::put(Space::Feed, key(0), val(4000, 9))])
            .collect();
        s.apply(&ops).unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(
                s.get(Space::Notifications, &key(i as u32)).unwrap(),
                Some(val(n, i as u8 + 1)),
                "value of {n} bytes"
            );
        }
        let all = s.scan(Space::Notifications, b"", b"", 100).unwrap();
        let expected: Vec<Entry> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (key(i as u32), val(n, i as u8 + 1)))
            .collect();
        assert_eq!(all, expected);
        let from_third = s.scan(Space::Notifications, b"", &key(3), 2).unwrap();
        assert_eq!(from_third, expected[3..5].to_vec());
        assert_eq!(
            s.last(Space::Notifications, b"").unwrap(),
            Some((key(5), val(70_000, 6)))
        );
        assert_eq!(
            s.last(Space::Feed, b"").unwrap(),
            Some((key(0), val(4000, 9)))
        );
        assert_eq!(
            s.count(Space::Notifications, b"").unwrap(),
            sizes.len() as u64
        );
        // Exactly the values of at least the threshold went to the log as values of their own;
        // the others are in the batch record, and in sled.
        for (i, &n) in sizes.iter().enumerate() {
            let k = key(i as u32);
            assert_eq!(
                in_log(&s, Space::Notifications, &k),
                n >= BLOB_THRESHOLD,
                "{n} bytes"
            );
        }
        let body: usize = sizes
            .iter()
            .map(|&n| {
                if n >= BLOB_THRESHOLD {
                    OP
                } else {
                    inline_op(n)
                }
            })
            .sum::<usize>()
            + OP;
        let large: u64 = sizes
            .iter()
            .filter(|&&n| n >= BLOB_THRESHOLD)
            .map(|&n| record(4, n))
            .sum::<u64>()
            + record(4, 4000);
        assert_eq!(blob_bytes(dir.path()), batch(body) + large);
    }

    #[test]
    fn overwrite_and_delete_of_large_values() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), any_space());
        s.apply(&[
            Op::put(Space::Notifications, key(1), val(3600, 1)),
            Op::put(Space::Notifications, key(2), val(3600, 2)),
            Op::put(Space::Notifications, key(3), val(3600, 3)),
        ])
        .unwrap();
        s.apply(&[
            // large over large, small over large, large over small-to-be
            Op::put(Space::Notifications, key(1), val(5000, 11)),
            Op::put(Space::Notifications, key(2), val(7, 12)),
            Op::delete(Space::Notifications, key(3)),
        ])
        .unwrap();
        assert_eq!(
            s.get(Space::Notifications, &key(1)).unwrap(),
            Some(val(5000, 11))
        );
        assert_eq!(
            s.get(Space::Notifications, &key(2)).unwrap(),
            Some(val(7, 12))
        );
        assert_eq!(s.get(Space::Notifications, &key(3)).unwrap(), None);
        s.apply(&[
            Op::put(Space::Notifications, key(2), val(3600, 22)),
            Op::delete(Space::Notifications, key(1)),
        ])
        .unwrap();
        assert_eq!(s.get(Space::Notifications, &key(1)).unwrap(), None);
        assert_eq!(
            s.get(Space::Notifications, &key(2)).unwrap(),
            Some(val(3600, 22))
        );
        assert_eq!(
            s.scan(Space::Notifications, b"", b"", 10).unwrap(),
            vec![(key(2), val(3600, 22))]
        );
        assert_eq!(s.count(Space::Notifications, b"").unwrap(), 1);
        // Presence, for large values (a pointer) as for none.
        assert!(s.contains(Space::Notifications, &key(2)).unwrap());
        assert!(!s.contains(Space::Notifications, &key(1)).unwrap());
        assert!(!s.contains(Space::Feed, &key(2)).unwrap());
        // The counts of live pointers followed the values sled handed back: one live, and
        // deleting it leaves nothing live.
        assert_eq!(s.blobs.live_pointers(), 1);
        s.apply(&[Op::delete(Space::Notifications, key(2))])
            .unwrap();
        assert_eq!(s.blobs.live_pointers(), 0);
    }

    #[test]
    fn repeated_key_in_one_batch_keeps_the_last_operation_and_writes_no_dead_blob() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), any_space());
        s.apply(&[
            Op::put(Space::Notifications, key(1), val(3600, 1)),
            Op::put(Space::Notifications, key(1), val(3600, 2)),
            Op::put(Space::Notifications, key(1), val(5, 3)),
            Op::put(Space::Notifications, key(2), val(3600, 4)),
            Op::delete(Space::Notifications, key(2)),
        ])
        .unwrap();
        assert_eq!(
            s.get(Space::Notifications, &key(1)).unwrap(),
            Some(val(5, 3))
        );
        assert_eq!(s.get(Space::Notifications, &key(2)).unwrap(), None);
        // The batch record holds the two operations that count, and no value of its own.
        let first = batch(inline_op(5) + OP);
        assert_eq!(blob_bytes(dir.path()), first);
        s.apply(&[
            Op::put(Space::Notifications, key(1), val(3600, 5)),
            Op::put(Space::Notifications, key(1), val(3601, 6)),
        ])
        .unwrap();
        assert_eq!(
            s.get(Space::Notifications, &key(1)).unwrap(),
            Some(val(3601, 6))
        );
        assert_eq!(blob_bytes(dir.path()), first + batch(OP) + record(4, 3601));
    }

    #[test]
    fn reopen_after_drop_keeps_small_and_large_values() {
        let dir = tempfile::tempdir().unwrap();
        let expected: Vec<Entry> = (0..40u32)
            .map(|i| (key(i), val(if i % 2 == 0 { 3600 } else { 30 }, i as u8)))
            .collect();
        {
            let s = open_retrying(dir.path(), any_space());
            let ops: Vec<Op> = expected
                .iter()
                .map(|(k, v)| Op::put(Space::Outbox, k.clone(), v.clone()))
                .collect();
            s.apply(&ops).unwrap();
            s.sync().unwrap();
        }
        {
            let s = open_retrying(dir.path(), any_space());
            assert_eq!(s.scan(Space::Outbox, b"", b"", 100).unwrap(), expected);
            assert_eq!(s.get(Space::Outbox, &key(4)).unwrap(), Some(val(3600, 4)));
            assert_eq!(
                s.last(Space::Outbox, b"").unwrap(),
                expected.last().cloned()
            );
            // Dropped without a sync: the store still comes back whole after a clean drop.
            s.apply(&[Op::put(Space::Outbox, key(100), val(3600, 100))])
                .unwrap();
        }
        let s = open_retrying(dir.path(), any_space());
        assert_eq!(s.count(Space::Outbox, b"").unwrap(), 41);
        assert_eq!(
            s.get(Space::Outbox, &key(100)).unwrap(),
            Some(val(3600, 100))
        );
        assert_eq!(s.scan(Space::Outbox, b"", b"", 40).unwrap(), expected);
    }

    #[test]
    fn a_blob_log_in_sleds_directory_moves_to_its_own_and_every_value_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let expected: Vec<Entry> = (0..20u32).map(|i| (key(i), val(3600, i as u8))).collect();
        {
            let s = open_retrying(dir.path(), any_space());
            let ops: Vec<Op> = expected
                .iter()
                .map(|(k, v)| Op::put(Space::Notifications, k.clone(), v.clone()))
                .collect();
            s.apply(&ops).unwrap();
            s.sync().unwrap();
        }
        // The layout of earlier versions: the log's segments in sled's `blobs` directory.
        let (old, new) = (dir.path().join(OLD_BLOB_DIR), dir.path().join(BLOB_DIR));
        std::fs::remove_dir_all(&old).unwrap();
        std::fs::rename(&new, &old).unwrap();
        assert!(old.join("00000001.seg").is_file());

        let s = open_retrying(dir.path(), any_space());
        assert_eq!(
            s.scan(Space::Notifications, b"", b"", 100).unwrap(),
            expected
        );
        assert!(
            new.join("00000001.seg").is_file(),
            "moved to its own directory"
        );
        let left: Vec<_> = std::fs::read_dir(&old)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "sled's directory holds none of the log: {left:?}"
        );
        // New values go to the new place, and a reopen finds everything.
        s.apply(&[Op::put(Space::Notifications, key(99), val(3600, 99))])
            .unwrap();
        s.sync().unwrap();
        drop(s);
        let s = open_retrying(dir.path(), any_space());
        assert_eq!(s.count(Space::Notifications, b"").unwrap(), 21);
        assert_eq!(
            s.get(Space::Notifications, &key(99)).unwrap(),
            Some(val(3600, 99))
        );
    }

    #[test]
    fn segments_rotate_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), SMALL);
        // A batch of 5 values of 3017 bytes each fits in 16 KiB, two do not.
        for b in 0..4u32 {
            let ops: Vec<Op> = (0..5)
                .map(|i| Op::put(Space::Notifications, key(b * 5 + i), val(3000, b as u8)))
                .collect();
            s.apply(&ops).unwrap();
        }
        // A batch larger than a segment gets a segment of its own.
        s.apply(&[Op::put(Space::Notifications, key(100), val(40_000, 7))])
            .unwrap();
        s.apply(&[Op::put(Space::Notifications, key(101), val(3000, 8))])
            .unwrap();
        assert_eq!(
            segments(dir.path()),
            [1, 2, 3, 4, 5, 6].map(|i| format!("{i:08}.seg")).to_vec()
        );
        for (i, name) in segments(dir.path()).iter().enumerate() {
            let len = std::fs::metadata(dir.path().join(BLOB_DIR).join(name))
                .unwrap()
                .len();
            let want = match i {
                0..=3 => batch(5 * OP) + 5 * record(4, 3000),
                4 => batch(OP) + record(4, 40_000),
                _ => batch(OP) + record(4, 3000),
            };
            assert_eq!(len, want, "{name}");
        }
        for i in 0..20u32 {
            assert_eq!(
                s.get(Space::Notifications, &key(i)).unwrap(),
                Some(val(3000, (i / 5) as u8))
            );
        }
        assert_eq!(
            s.get(Space::Notifications, &key(100)).unwrap(),
            Some(val(40_000, 7))
        );
    }

    #[test]
    fn dead_segment_is_deleted_only_by_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), SMALL);
        for b in 0..3u32 {
            let ops: Vec<Op> = (0..5)
                .map(|i| Op::put(Space::Notifications, key(b * 5 + i), val(3000, b as u8)))
                .collect();
            s.apply(&ops).unwrap();
        }
        s.sync().unwrap();
        let names = |ids: &[u32]| {
            ids.iter()
                .map(|i| format!("{i:08}.seg"))
                .collect::<Vec<_>>()
        };
        assert_eq!(segments(dir.path()), names(&[1, 2, 3]));
        // Kill every value of segment 1 (deletes and overwrites); segment 2 keeps one. The new
        // large value of key 4 starts segment 4.
        let mut ops: Vec<Op> = (0..3)
            .map(|i| Op::delete(Space::Notifications, key(i)))
            .collect();
        ops.push(Op::put(Space::Notifications, key(3), val(10, 1)));
        ops.push(Op::put(Space::Notifications, key(4), val(3000, 1)));
        ops.extend((5..9).map(|i| Op::delete(Space::Notifications, key(i))));
        s.apply(&ops).unwrap();
        // The deleting batch may not be in sled's files yet, so the file stays, even once the
        // batch is durable in the log.
        assert_eq!(segments(dir.path()), names(&[1, 2, 3, 4]));
        s.sync().unwrap();
        assert_eq!(segments(dir.path()), names(&[1, 2, 3, 4]));
        s.checkpoint().unwrap();
        assert_eq!(segments(dir.path()), names(&[2, 3, 4]));
        assert_eq!(
            s.get(Space::Notifications, &key(9)).unwrap(),
            Some(val(3000, 1))
        );
        assert_eq!(
            s.get(Space::Notifications, &key(4)).unwrap(),
            Some(val(3000, 1))
        );
        assert_eq!(
            s.get(Space::Notifications, &key(3)).unwrap(),
            Some(val(10, 1))
        );

        // Across a reopen: the live counts are rebuilt from sled, and a segment whose last
        // pointer died before the drop goes with the checkpoint of the open.
        s.apply(&[Op::delete(Space::Notifications, key(9))])
            .unwrap();
        drop(s);
        let s = open_retrying(dir.path(), SMALL);
        assert_eq!(segments(dir.path()), names(&[3, 4]));
        assert_eq!(
            s.get(Space::Notifications, &key(10)).unwrap(),
            Some(val(3000, 2))
        );
        // The active segment (the open started segment 5) stays even with nothing live in it.
        let ops: Vec<Op> = (0..15)
            .filter(|&i| i != 3)
            .map(|i| Op::delete(Space::Notifications, key(i)))
            .collect();
        s.apply(&ops).unwrap();
        s.checkpoint().unwrap();
        assert_eq!(segments(dir.path()), names(&[5]));
        assert_eq!(
            s.scan(Space::Notifications, b"", b"", 10).unwrap(),
            vec![(key(3), val(10, 1))]
        );
    }

    /// Small segments, and large values only for the spaces a node puts in the log.
    const NODE_SMALL: SledOptions = SledOptions {
        blob_threshold: BLOB_THRESHOLD,
        blob_spaces: TRANSIENT_SPACES,
        segment_bytes: 16 * 1024,
        cache_bytes: CACHE_BYTES,
    };

    /// Three batches as a node writes them: five copies (keys 0..15) and a large ledger
    /// record (keys 0..3) each.
    fn content_and_ledger(s: &SledStore) {
        for b in 0..3u32 {
            let mut ops: Vec<Op> = (0..5)
                .map(|i| Op::put(Space::Notifications, key(b * 5 + i), val(3000, b as u8)))
                .collect();
            ops.push(Op::put(Space::Ledger, key(b), val(3000, 0xee)));
            s.apply_durable(&ops).unwrap();
        }
    }

    /// Deletes the copies of [`content_and_ledger`] (the retention; the ledger stays whole) and
    /// checks that the checkpoint then leaves only the active segment, and every ledger record.
    fn content_goes_and_only_the_active_segment_stays(s: &SledStore, dir: &Path) {
        let written = segments(dir);
        let ops: Vec<Op> = (0..15)
            .map(|i| Op::delete(Space::Notifications, key(i)))
            .collect();
        s.apply_durable(&ops).unwrap();
        s.checkpoint().unwrap();
        let left = segments(dir);
        assert!(
            left.len() == 1 && left[0] >= written[written.len() - 1],
            "only the active segment is left: {left:?} of {written:?}"
        );
        for b in 0..3u32 {
            assert_eq!(
                s.get(Space::Ledger, &key(b)).unwrap(),
                Some(val(3000, 0xee))
            );
        }
    }

    #[test]
    fn a_ledger_record_stays_in_sled_and_never_keeps_a_segment_from_being_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), NODE_SMALL);
        content_and_ledger(&s);
        assert!(
            in_log(&s, Space::Notifications, &key(0)),
            "content goes to the log"
        );
        assert!(
            !in_log(&s, Space::Ledger, &key(0)),
            "a ledger record stays in sled"
        );
        content_goes_and_only_the_active_segment_stays(&s, dir.path());
    }

    #[test]
    fn ledger_records_an_earlier_version_put_in_the_log_move_into_sled_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), SMALL);
        content_and_ledger(&s);
        assert!(in_log(&s, Space::Ledger, &key(0)));
        drop(s);

        let s = open_retrying(dir.path(), NODE_SMALL);
        for b in 0..3u32 {
            assert!(!in_log(&s, Space::Ledger, &key(b)), "record {b} is in sled");
        }
        assert!(in_log(&s, Space::Notifications, &key(0)), "content stays");
        content_goes_and_only_the_active_segment_stays(&s, dir.path());
        drop(s);
        let s = open_retrying(dir.path(), NODE_SMALL);
        assert_eq!(
            s.get(Space::Ledger, &key(1)).unwrap(),
            Some(val(3000, 0xee))
        );
    }

    #[test]
    fn corrupted_blob_gives_an_error_naming_segment_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open_retrying(dir.path(), any_space());
            s.apply(&[
                Op::put(Space::Notifications, key(1), val(3600, 1)),
                Op::put(Space::Notifications, key(2), val(3600, 2)),
            ])
            .unwrap();
            s.sync().unwrap();
        }
        let seg = dir.path().join(BLOB_DIR).join("00000001.seg");
        let mut bytes = std::fs::read(&seg).unwrap();
        // A byte inside the first record's value.
        bytes[100] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();

        let s = open_retrying(dir.path(), any_space());
        // The first value's record follows its batch's.
        let first = batch(2 * OP);
        let is_corrupt_first = |e: &StoreError| {
            matches!(e, StoreError::Corrupt { segment, offset, problem }
                if segment.ends_with("00000001.seg") && *offset == first
                    && problem.contains("checksum"))
        };
        let err = s.get(Space::Notifications, &key(1)).unwrap_err();
        assert!(is_corrupt_first(&err), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("00000001.seg") && msg.contains(&format!("offset {first}")),
            "{msg}"
        );
        let err = s.scan(Space::Notifications, b"", b"", 10).unwrap_err();
        assert!(is_corrupt_first(&err), "{err}");
        // The record after it is intact.
        assert_eq!(
            s.get(Space::Notifications, &key(2)).unwrap(),
            Some(val(3600, 2))
        );
        assert_eq!(
            s.last(Space::Notifications, b"").unwrap(),
            Some((key(2), val(3600, 2)))
        );
        // A cut-off segment: the pointer runs past its end.
        drop(s);
        std::fs::write(&seg, &bytes[..bytes.len() - 10]).unwrap();
        let s = open_retrying(dir.path(), any_space());
        let err = s.last(Space::Notifications, b"").unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { offset, problem, .. }
                if *offset == batch(2 * OP) + record(4, 3600) && problem.contains("past the end")),
            "{err}"
        );
        // New records do not go where the cut-off one was expected: every open starts a fresh
        // segment.
        s.apply(&[Op::put(Space::Notifications, key(3), val(3600, 3))])
            .unwrap();
        assert_eq!(segments(dir.path()), ["00000001.seg", "00000002.seg"]);
        assert_eq!(
            s.get(Space::Notifications, &key(3)).unwrap(),
            Some(val(3600, 3))
        );
    }

    #[test]
    fn torn_tail_after_the_last_record_does_not_disturb_reopen_or_appends() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open_retrying(dir.path(), any_space());
            s.apply(&[
                Op::put(Space::Notifications, key(1), val(3600, 1)),
                Op::put(Space::Notifications, key(2), val(20, 2)),
            ])
            .unwrap();
            s.sync().unwrap();
        }
        // A record that was being written when the machine stopped: a header and part of a
        // value, never referenced.
        let seg = dir.path().join(BLOB_DIR).join("00000001.seg");
        let before = std::fs::metadata(&seg).unwrap().len();
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 5, 0, 0, 14, 16, 1, 2, 3])
            .unwrap();
        drop(f);
        {
            let s = open_retrying(dir.path(), any_space());
            assert_eq!(
                s.get(Space::Notifications, &key(1)).unwrap(),
                Some(val(3600, 1))
            );
            s.apply(&[Op::put(Space::Notifications, key(3), val(3600, 3))])
                .unwrap();
            assert_eq!(
                s.get(Space::Notifications, &key(3)).unwrap(),
                Some(val(3600, 3))
            );
            s.sync().unwrap();
        }
        // The new batch went to the segment the open started; the garbage stays behind the
        // checkpoint, never replayed again.
        assert_eq!(segments(dir.path()), ["00000001.seg", "00000002.seg"]);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), before + 15);
        let s = open_retrying(dir.path(), any_space());
        assert_eq!(
            s.scan(Space::Notifications, b"", b"", 10).unwrap(),
            vec![
                (key(1), val(3600, 1)),
                (key(2), val(20, 2)),
                (key(3), val(3600, 3))
            ]
        );
    }

    #[test]
    fn a_checkpoint_past_the_end_of_a_cut_segment_replays_nothing_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join(BLOB_DIR).join("CHECKPOINT");
        let segment = dir.path().join(BLOB_DIR).join("00000001.seg");
        {
            let s = open_retrying(dir.path(), any_space());
            s.apply_durable(&[Op::put(Space::Feed, key(1), val(20, 1))])
                .unwrap();
            s.checkpoint().unwrap();
            // The checkpoint points past what the segment will still hold.
            let at = std::fs::read(&cp).unwrap();
            drop(s);
            std::fs::write(&cp, at).unwrap();
        }
        let len = std::fs::metadata(&segment).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let s = open_retrying(dir.path(), any_space());
        assert_eq!(s.replayed, blob::Replayed::default());
        assert_eq!(s.get(Space::Feed, &key(1)).unwrap(), Some(val(20, 1)));
    }

    #[test]
    fn stats_show_the_log_and_whether_the_checkpoint_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), any_space());
        let fresh = s.stats();
        assert_eq!(
            fresh.since_checkpoint, None,
            "the open's checkpoint covers everything"
        );
        assert_eq!(fresh.replayed_at_open, 0);
        s.apply_durable(&[Op::put(Space::Feed, key(1), val(3600, 1))])
            .unwrap();
        let written = s.stats();
        assert!(written.since_checkpoint.is_some(), "a write after it");
        assert_eq!(written.log_segments, 1);
        assert_eq!(written.log_bytes, batch(OP) + record(4, 3600));
        s.checkpoint().unwrap();
        assert_eq!(s.stats().since_checkpoint, None);
    }

    /// Set in the child process of [`a_store_whose_process_died_comes_back_from_its_log`]: the
    /// store directory to write to before dying.
    const CRASH_CHILD: &str = "TIDEWIRE_STORE_CRASH_CHILD";

    #[test]
    fn a_store_whose_process_died_comes_back_from_its_log() {
        let value = |i: u32| val(if i.is_multiple_of(2) { 3600 } else { 40 }, i as u8);
        if let Ok(dir) = std::env::var(CRASH_CHILD) {
            let s = SledStore::open(Path::new(&dir)).unwrap();
            for i in 0..50u32 {
                s.apply_durable(&[
                    Op::put(Space::Notifications, key(i), value(i)),
                    Op::put(Space::Feed, key(i), key(i)),
                ])
                .unwrap();
            }
            s.apply_durable(&[Op::delete(Space::Feed, key(7))]).unwrap();
            // Dies as a killed process does: no destructor, sled's buffers never written, no
            // checkpoint after the open's.
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sled_store::tests::a_store_whose_process_died_comes_back_from_its_log",
                "--nocapture",
            ])
            .env(CRASH_CHILD, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "the child aborts: {status}");

        let s = open_retrying(dir.path(), any_space());
        assert_eq!(
            s.replayed.batches, 51,
            "every batch after the open's checkpoint"
        );
        assert_eq!(s.replayed.torn, 0);
        for i in 0..50u32 {
            assert_eq!(
                s.get(Space::Notifications, &key(i)).unwrap(),
                Some(value(i))
            );
        }
        assert_eq!(s.count(Space::Feed, b"").unwrap(), 49);
        assert_eq!(s.get(Space::Feed, &key(7)).unwrap(), None);
        // The replay is folded into sled's files at once: the next open has nothing to do.
        drop(s);
        let s = open_retrying(dir.path(), any_space());
        assert_eq!(s.replayed, blob::Replayed::default());
        assert_eq!(s.count(Space::Notifications, b"").unwrap(), 50);
    }

    /// One operation of [`replaying_the_whole_log_again_leaves_the_store_as_the_batches_made_it`]
    /// over a small key space, so that keys are overwritten and deleted: `(key, None)` deletes,
    /// `(key, Some(len))` puts a value of `len` bytes, small or large.
    fn op_strategy() -> impl proptest::strategy::Strategy<Value = (u32, Option<usize>)> {
        use proptest::prelude::*;
        (
            0u32..12,
            prop_oneof![Just(None), (0usize..1200).prop_map(Some)],
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(24))]

        /// Replay must be harmless on a store that already holds what it replays: whatever
        /// sled wrote before a crash, re-applying every batch after the checkpoint in log order
        /// gives the state the batches made. Here the whole log is replayed onto the final
        /// state, and the store must still match a model of the batches. When the log is cut
        /// anywhere (a crash while writing), the replay applies exactly the batches wholly
        /// before the cut.
        #[test]
        fn replaying_the_log_again_leaves_the_store_as_the_batches_made_it(
            batches in proptest::collection::vec(
                (proptest::collection::vec(op_strategy(), 1..6), proptest::bool::ANY),
                1..25,
            ),
            cut in proptest::option::of(0.0f64..1.0),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let cp = dir.path().join(BLOB_DIR).join("CHECKPOINT");
            let segment = dir.path().join(BLOB_DIR).join("00000001.seg");
            let mut model = std::collections::BTreeMap::new();
            let mut ends = Vec::new();
            {
                let s = open_retrying(dir.path(), any_space());
                let start = std::fs::read(&cp).unwrap();
                for (round, (ops, durable)) in batches.iter().enumerate() {
                    let ops: Vec<Op> = ops
                        .iter()
                        .map(|&(k, v)| match v {
                            Some(len) => Op::put(Space::Outbox, key(k), val(len, round as u8)),
                            None => Op::delete(Space::Outbox, key(k)),
                        })
                        .collect();
                    for op in &ops {
                        match op {
                            Op::Put { key, value, .. } => model.insert(key.clone(), value.clone()),
                            Op::Delete { key, .. } => model.remove(key),
                        };
                    }
                    if *durable {
                        s.apply_durable(&ops).unwrap();
                    } else {
                        s.apply(&ops).unwrap();
                    }
                    ends.push(s.blobs.position().unwrap().offset);
                }
                drop(s);
                // Back to the checkpoint of the open: all of the log is after it. (One segment
                // holds it all, so the closing checkpoint deleted none.)
                std::fs::write(&cp, start).unwrap();
            }
            let (mut whole, mut torn) = (batches.len(), false);
            if let Some(f) = cut {
                let len = std::fs::metadata(&segment).unwrap().len();
                let at = (len as f64 * f) as u64;
                let f = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
                f.set_len(at).unwrap();
                whole = ends.iter().filter(|&&end| end <= at).count();
                // Bytes of a batch left behind the last whole one.
                torn = at > whole.checked_sub(1).map_or(0, |i| ends[i]);
            }
            let s = open_retrying(dir.path(), any_space());
            proptest::prop_assert_eq!(s.replayed.batches, whole as u64);
            proptest::prop_assert_eq!(s.replayed.torn, u32::from(torn));
            if cut.is_some() {
                // sled holds every batch here, values the cut removed included: a loss no crash
                // makes (the log is synced before sled sees a batch), so the state is not checked.
                return Ok(());
            }
            let stored: Vec<Entry> = s.scan(Space::Outbox, b"", b"", 100).unwrap();
            let expected: Vec<Entry> = model.into_iter().collect();
            proptest::prop_assert_eq!(stored, expected);
        }
    }

    #[test]
    fn a_store_of_the_format_before_the_write_ahead_log_is_taken_over_without_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open_retrying(dir.path(), any_space());
            s.apply_durable(&[
                Op::put(Space::Notifications, key(1), val(3600, 1)),
                Op::put(Space::Feed, key(1), val(3, 1)),
            ])
            .unwrap();
        }
        // What the version before left: format 2, no checkpoint.
        {
            let db = sled_retrying(dir.path());
            db.insert(FORMAT_KEY, &[FORMAT_SLED_SYNCED]).unwrap();
            db.flush().unwrap();
        }
        std::fs::remove_file(dir.path().join(BLOB_DIR).join("CHECKPOINT")).unwrap();
        let s = open_retrying(dir.path(), any_space());
        assert_eq!(
            s.replayed.batches, 0,
            "sled was synced at every commit then"
        );
        assert_eq!(
            s.get(Space::Notifications, &key(1)).unwrap(),
            Some(val(3600, 1))
        );
        assert_eq!(s.db.get(FORMAT_KEY).unwrap().unwrap().as_ref(), [FORMAT]);
        assert!(dir.path().join(BLOB_DIR).join("CHECKPOINT").is_file());
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_at_open_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_retrying(dir.path(), any_space()));
        let cp = dir.path().join(BLOB_DIR).join("CHECKPOINT");
        let mut bytes = std::fs::read(&cp).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&cp, &bytes).unwrap();
        // Retried (bounded) while sled still holds the dropped store's lock.
        let mut err = String::new();
        for _ in 0..100 {
            match SledStore::open(dir.path()) {
                Err(StoreError::Open { reason, .. }) if reason.contains("CHECKPOINT") => {
                    err = reason;
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                Ok(_) => panic!("a damaged checkpoint was accepted"),
            }
        }
        assert!(
            err.contains("checksum") && err.contains("delete the file"),
            "{err}"
        );
        // Following the advice opens the store.
        std::fs::remove_file(&cp).unwrap();
        drop(open_retrying(dir.path(), any_space()));
    }

    #[test]
    fn old_format_store_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled_retrying(dir.path());
            let tree = db.open_tree("tidewire").unwrap();
            tree.insert([Space::Feed as u8, 1], b"untagged".to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Open { reason, .. } if reason.contains("older tidewire")),
            "{err}"
        );
    }

    #[test]
    fn malformed_value_is_an_error_on_read_not_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open_retrying(dir.path(), any_space());
            s.apply(&[Op::put(Space::Feed, key(1), val(5, 1))]).unwrap();
            s.sync().unwrap();
        }
        {
            let db = sled_retrying(dir.path());
            let tree = db.open_tree("tidewire").unwrap();
            tree.insert(full_key(Space::Feed, &key(2)), vec![9u8, 1, 2])
                .unwrap();
            db.flush().unwrap();
        }
        let s = open_retrying(dir.path(), any_space());
        assert_eq!(s.get(Space::Feed, &key(1)).unwrap(), Some(val(5, 1)));
        let err = s.get(Space::Feed, &key(2)).unwrap_err();
        assert!(
            matches!(&err, StoreError::Malformed { key, problem }
                if key == "0400000002" && problem.contains("tag 9")),
            "{err}"
        );
    }

    #[test]
    fn concurrent_reads_never_fail_while_segments_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(open_retrying(dir.path(), SMALL));
        let keys = 8u32;
        s.apply(
            &(0..keys)
                .map(|i| Op::put(Space::Notifications, key(i), val(3000, 0)))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (s, done) = (s.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        for i in 0..keys {
                            let v = s.get(Space::Notifications, &key(i)).unwrap().unwrap();
                            assert_eq!(v.len(), 3000);
                            assert!(v.iter().all(|b| *b == v[0]), "torn value");
                        }
                        let all = s.scan(Space::Notifications, b"", b"", 100).unwrap();
                        assert_eq!(all.len(), keys as usize);
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for round in 1..=60u32 {
            let ops: Vec<Op> = (0..keys)
                .map(|i| Op::put(Space::Notifications, key(i), val(3000, round as u8)))
                .collect();
            s.apply(&ops).unwrap();
            s.checkpoint().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        // 60 rounds of 8 × 3 KB wrote ~120 segments; once no reader holds deletion off, only
        // the live ones remain.
        s.checkpoint().unwrap();
        let left = segments(dir.path()).len();
        assert!(left <= 3, "{left} segments left");
    }

    #[test]
    fn a_cursor_reader_never_passes_a_key_and_always_finds_the_copy_it_leads_to() {
        // Writers number feed entries upwards and store each entry's copy in the same batch;
        // sled applies a batch key by key, so a reader sees part of a batch. Key order must
        // keep that invisible to a cursor: no feed key appears before a lower one, nor before
        // its copy (space 1 goes before space 4).
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(open_retrying(dir.path(), any_space()));
        let total = 3000u32;
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut next = 0u32;
                let mut empty_scans = 0u64;
                while next < total {
                    let page = s.scan(Space::Feed, b"", &key(next), 64).unwrap();
                    if page.is_empty() {
                        empty_scans += 1;
                        assert!(empty_scans < 50_000_000, "the writer stopped at {next}");
                        std::thread::yield_now();
                        continue;
                    }
                    for (k, note) in page {
                        assert_eq!(k, key(next), "a feed key was passed");
                        let copy = s.get(Space::Notifications, &note).unwrap();
                        assert!(copy.is_some(), "feed entry {next} before its copy");
                        next += 1;
                    }
                }
            })
        };
        let mut seq = 0u32;
        while seq < total {
            // Batches of 1 to 7 entries, the copies' keys random-ish so that they are not in
            // the feed's order.
            let n = (seq % 7 + 1).min(total - seq);
            let mut ops = Vec::new();
            for i in seq..seq + n {
                let note = (i.wrapping_mul(2_654_435_761)).to_be_bytes().to_vec();
                ops.push(Op::put(Space::Feed, key(i), note.clone()));
                ops.push(Op::put(Space::Notifications, note, val(600, i as u8)));
            }
            s.apply(&ops).unwrap();
            seq += n;
        }
        reader.join().unwrap();
    }

    #[test]
    fn segment_deletion_is_put_off_while_a_read_is_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_retrying(dir.path(), SMALL);
        let fill = |s: &SledStore, fill: u8| {
            let ops: Vec<Op> = (0..5)
                .map(|i| Op::put(Space::Notifications, key(i), val(3000, fill)))
                .collect();
            s.apply(&ops).unwrap();
        };
        fill(&s, 1);
        fill(&s, 2);
        let seg1 = dir.path().join(BLOB_DIR).join("00000001.seg");
        assert!(seg1.exists());
        {
            // A reader between looking up a pointer and reading its bytes.
            let _reading = s.blobs.read_gate().unwrap();
            s.checkpoint().unwrap();
            assert!(seg1.exists(), "deleted under a reader");
        }
        s.checkpoint().unwrap();
        assert!(!seg1.exists(), "not deleted once the reader was done");
        assert_eq!(
            s.get(Space::Notifications, &key(0)).unwrap(),
            Some(val(3000, 2))
        );
    }
}
