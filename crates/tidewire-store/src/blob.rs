//! The store's log: a write-ahead log of every batch, which also keeps large values (sled holds
//! only a small pointer, [`BlobRef`], to each).
//!
//! Layout: `DIR/00000001.seg`, `00000002.seg`, … (the store's `DIR` is `store/blob-log`), and
//! `DIR/CHECKPOINT`. Records are appended to the highest numbered (active) segment; a new segment
//! starts when a batch would take the active one past its size limit (64 MiB by default), and at
//! every open. A record is
//!
//! ```text
//! crc32 (u32 BE) ‖ key length (u32 BE) ‖ value length (u32 BE) ‖ key ‖ value
//! ```
//!
//! with the CRC32 over everything after it (both lengths, the key and the value). The key is the
//! full sled key (space byte ‖ key), so a read checks both that the bytes are intact and that the
//! pointer leads to the record of the key it was found under: a torn tail or a misdirected
//! pointer is a [`StoreError::Corrupt`], never wrong data.
//!
//! Each batch the store applies is one *batch record* (key length `u32::MAX`; its value is the
//! number of value records that follow, u32 BE, then the batch's operations, encoded by the
//! caller) followed by a value record per large value it puts, all in one write. The log is
//! written, and `fdatasync`ed when the batch must be durable, *before* sled applies the batch:
//! so one sync per group commit makes it durable, and sled's own files are synced only at a
//! checkpoint ([`write_checkpoint`]): after sled's flush and `fsync`, the file `CHECKPOINT`
//! names the log position up to which sled holds everything. At open, [`replay`] applies to
//! sled every complete batch after that position, in log order. Re-applying a batch sled
//! already holds changes nothing, since operations are puts and deletes of whole values applied
//! in the same order; a batch whose records are incomplete (a crash while writing it, so never
//! acknowledged) ends the replay of its segment.
//!
//! **Crash-safety invariant: a pointer never becomes durable before the bytes it points to.**
//! A batch that puts large values is always synced before sled applies it, whatever its
//! caller asked, so sled's background flush can never write a pointer ahead of its bytes.
//!
//! Space reclamation: the log keeps, in memory, how many live pointers lead into each segment
//! (rebuilt at open from the values in sled). A segment that is not the active one and has no
//! live pointer is *dead*, but it is deleted only by the next checkpoint that began after it
//! died ([`BlobLog::take_dead`] before it, [`BlobLog::remove`] after it): until sled's sync, a
//! crash could bring back the durable pointers that the deleting batch removed, and a segment
//! before the checkpoint is never replayed again. A dead segment never comes back to life,
//! because new records only go to the active segment.
//!
//! Readers hold a shared gate ([`BlobLog::read_gate`]) for the whole of "look up the pointer in
//! sled, read the bytes". Deletion first takes the gate exclusively for an instant, a barrier:
//! reads still in progress may hold pointers into the dead segment, reads that begin later
//! cannot (the pointers are gone from sled), so once the barrier is passed the file can go. If
//! the gate is busy, deletion is put off to a later checkpoint rather than wait (at most a few
//! times in a row, then it waits).

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, TryLockError};

use crate::StoreError;

/// Bytes before the key in a record: CRC32, key length, value length.
const HEADER: usize = 12;
/// How many syncs in a row may put off deleting dead segments because readers hold the gate
/// before one waits for them.
const MAX_DEFERRALS: u32 = 8;
/// Length of an encoded [`BlobRef`].
pub(crate) const REF_LEN: usize = 16;
/// The key length that marks a batch record.
const BATCH_MARK: u32 = u32::MAX;
/// Name of the checkpoint file in the log's directory.
const CHECKPOINT: &str = "CHECKPOINT";
/// First bytes of the checkpoint file.
const CHECKPOINT_MAGIC: &[u8; 4] = b"TWCP";
/// Length of the checkpoint file: magic, segment u32, offset u64, CRC32 of the rest.
const CHECKPOINT_LEN: usize = 20;

/// A place in the log: a segment and an offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
}

/// Where one value lives: segment, offset of its record, and the value's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobRef {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl BlobRef {
    /// `segment u32 BE ‖ offset u64 BE ‖ length u32 BE`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    /// The inverse of [`BlobRef::encode_into`]; `None` unless `b` is exactly [`REF_LEN`] bytes.
    pub(crate) fn decode(b: &[u8]) -> Option<BlobRef> {
        if b.len() != REF_LEN {
            return None;
        }
        Some(BlobRef {
            segment: u32::from_be_bytes(b[0..4].try_into().ok()?),
            offset: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..16].try_into().ok()?),
        })
    }
}

fn segment_name(id: u32) -> String {
    format!("{id:08}.seg")
}

fn parse_segment_name(name: &str) -> Option<u32> {
    let id: u32 = name.strip_suffix(".seg")?.parse().ok()?;
    (segment_name(id) == name).then_some(id)
}

fn io_at(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

/// A record header's checksum, key length (or [`BATCH_MARK`]) and value length.
fn header_fields(h: &[u8]) -> (u32, u32, u32) {
    let field = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    (field(0), field(4), field(8))
}

/// Appends a batch record: the number of value records that follow, then `body`.
fn encode_batch(buf: &mut Vec<u8>, values: u32, body: &[u8]) {
    encode(
        buf,
        BATCH_MARK,
        (4 + body.len()) as u32,
        &[&values.to_be_bytes(), body],
    );
}

/// Appends one record for `key` and `value` to `buf`.
fn encode_record(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    encode(buf, key.len() as u32, value.len() as u32, &[key, value]);
}

/// Appends a record: its header (the CRC of everything after it, then the two length fields)
/// and `parts`.
fn encode(buf: &mut Vec<u8>, klen: u32, vlen: u32, parts: &[&[u8]]) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&klen.to_be_bytes());
    buf.extend_from_slice(&vlen.to_be_bytes());
    for p in parts {
        buf.extend_from_slice(p);
    }
    let crc = crc32fast::hash(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The pointers into one segment found at open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// How many.
    pub(crate) refs: u64,
    /// The end of the furthest record they reach.
    pub(crate) end: u64,
}

impl Usage {
    /// Counts one pointer, found under `key` (the full key).
    pub(crate) fn add(&mut self, r: BlobRef, key: &[u8]) {
        self.refs += 1;
        self.end = self
            .end
            .max(r.offset + (HEADER + key.len()) as u64 + u64::from(r.len));
    }
}

/// The writer's side, behind one mutex.
#[derive(Debug)]
struct State {
    /// The segment new records go to; always the highest id in use.
    active: u32,
    /// Write handle on the active segment, opened (or created) on first use.
    file: Option<File>,
    /// Where the next record of the active segment starts.
    len: u64,
    /// A write or fdatasync on the active segment failed: start a new one before the next write.
    broken: bool,
    /// The active segment holds writes not yet `fdatasync`ed.
    unsynced: bool,
    /// Segment files that exist.
    segments: BTreeSet<u32>,
    /// Live pointers into each segment.
    live: HashMap<u32, u64>,
    /// Segments that stopped being active and await a liveness check.
    retired: Vec<u32>,
    /// Dead segments: not active, no live pointer; delete after the next checkpoint.
    dead: BTreeSet<u32>,
    /// Reused record buffer.
    buf: Vec<u8>,
    /// Deletions put off in a row because readers held the gate.
    deferrals: u32,
}

/// The segment files of one store.
#[derive(Debug)]
pub(crate) struct BlobLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    gate: RwLock<()>,
}

impl BlobLog {
    /// Opens (or creates) the log in `dir`, given the live pointers into each segment found in
    /// sled. Segments without live pointers (other than the one that becomes active) are dead:
    /// they go after the first sync.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        usage: HashMap<u32, Usage>,
    ) -> Result<BlobLog, StoreError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io_at("cannot create", dir, e))?;
            if let Some(parent) = dir.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_at("cannot sync directory", parent, e))?;
            }
        }
        let mut segments = BTreeSet::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_at("cannot list", dir, e))? {
            let entry = entry.map_err(|e| io_at("cannot list", dir, e))?;
            if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
                segments.insert(id);
            }
        }
        let size = |segment: u32| {
            let path = dir.join(segment_name(segment));
            std::fs::metadata(&path)
                .map(|m| m.len())
                .map_err(|e| io_at("cannot stat", &path, e))
        };
        // Damage found here makes reads of the values concerned fail; the rest is usable.
        for (&segment, u) in &usage {
            let path = dir.join(segment_name(segment));
            if !segments.contains(&segment) {
                tracing::warn!(
                    segment = %path.display(),
                    refs = u.refs,
                    "blob segment is missing; the values that point into it cannot be read"
                );
            } else if size(segment)? < u.end {
                tracing::warn!(
                    segment = %path.display(),
                    refs = u.refs,
                    needed = u.end,
                    "blob segment is shorter than the pointers into it; some values cannot be read"
                );
            }
        }
        // Every open starts a new segment, past every pointer (even one into a missing
        // segment) so that no new record takes an old pointer's place. Whatever the last one
        // ends with (a record torn by a crash, say) stays behind the checkpoint the open writes,
        // and replay, which stops at a segment's first incomplete record, never looks past it.
        let last_file = segments.last().copied().unwrap_or(0);
        let last_ref = usage.keys().max().copied().unwrap_or(0);
        let (active, len) = (last_file.max(last_ref) + 1, 0);
        let live: HashMap<u32, u64> = usage.into_iter().map(|(s, u)| (s, u.refs)).collect();
        let dead: BTreeSet<u32> = segments
            .iter()
            .copied()
            .filter(|s| *s != active && live.get(s).copied().unwrap_or(0) == 0)
            .collect();
        tracing::debug!(
            dir = %dir.display(),
            segments = segments.len(),
            active,
            dead = dead.len(),
            "blob log opened"
        );
        Ok(BlobLog {
            dir: dir.to_owned(),
            segment_bytes,
            state: Mutex::new(State {
                active,
                file: None,
                len,
                broken: false,
                unsynced: false,
                segments,
                live,
                retired: Vec::new(),
                dead,
                buf: Vec::new(),
                deferrals: 0,
            }),
            readers: RwLock::new(HashMap::new()),
            gate: RwLock::new(()),
        })
    }

    fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(segment_name(segment))
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Io("blob log lock poisoned".into()))
    }

    /// Appends one batch: its batch record (`body`, the batch's operations as the caller
    /// encodes them), then one value record per `(key, value)` of `values`, in one write, and
    /// `fdatasync`s it when `sync`. Returns the values' pointers in the same order. The caller
    /// applies the batch to sled only after this returns.
    pub(crate) fn append(
        &self,
        body: &[u8],
        values: &[(&[u8], &[u8])],
        sync: bool,
    ) -> Result<Vec<BlobRef>, StoreError> {
        let too_large = |len: usize| {
            StoreError::Io(format!(
                "a value or batch of {len} bytes is too large to store (limit 4 GiB)"
            ))
        };
        let count = u32::try_from(values.len()).map_err(|_| too_large(values.len()))?;
        let mut size = (HEADER + 4 + body.len()) as u64;
        u32::try_from(4 + body.len()).map_err(|_| too_large(body.len()))?;
        for (key, value) in values {
            u32::try_from(key.len()).map_err(|_| too_large(key.len()))?;
            u32::try_from(value.len()).map_err(|_| too_large(value.len()))?;
            size += (HEADER + key.len() + value.len()) as u64;
        }
        let mut st = self.lock()?;
        let st = &mut *st;
        // A batch never spans segments: replay finds its values right behind it.
        if st.broken || (st.len > 0 && st.len + size > self.segment_bytes) {
            self.rotate(st)?;
        }
        st.buf.clear();
        encode_batch(&mut st.buf, count, body);
        let mut refs = Vec::with_capacity(values.len());
        for (key, value) in values {
            refs.push(BlobRef {
                segment: st.active,
                offset: st.len + st.buf.len() as u64,
                len: value.len() as u32,
            });
            encode_record(&mut st.buf, key, value);
        }
        self.write_out(st, sync)?;
        Ok(refs)
    }

    /// Makes every write so far durable (`fdatasync` of the active segment; a segment is
    /// synced before it stops being active).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.sync_active(&mut *self.lock()?)
    }

    /// `fdatasync`s the active segment if it holds unsynced writes; a failure gives it up.
    fn sync_active(&self, st: &mut State) -> Result<(), StoreError> {
        if !st.unsynced {
            return Ok(());
        }
        if let Some(f) = &st.file
            && let Err(e) = f.sync_data()
        {
            st.broken = true;
            st.file = None;
            return Err(io_at("cannot sync blob segment", &self.path(st.active), e));
        }
        st.unsynced = false;
        Ok(())
    }

    /// The segment files and their bytes on disk.
    pub(crate) fn disk_usage(&self) -> Result<(u32, u64), StoreError> {
        let segments: Vec<u32> = self.lock()?.segments.iter().copied().collect();
        let bytes = segments
            .iter()
            .filter_map(|s| std::fs::metadata(self.path(*s)).ok())
            .map(|m| m.len())
            .sum();
        Ok((segments.len() as u32, bytes))
    }

    /// Where the next batch goes.
    pub(crate) fn position(&self) -> Result<Position, StoreError> {
        let st = self.lock()?;
        Ok(Position {
            segment: st.active,
            offset: st.len,
        })
    }

    /// Writes the buffer at the end of the active segment, synced if `sync`; on failure the
    /// segment is given up (the next write starts a new one).
    fn write_out(&self, st: &mut State, sync: bool) -> Result<(), StoreError> {
        if st.buf.is_empty() {
            return Ok(());
        }
        let result = self.write_out_inner(st, sync);
        if result.is_err() {
            // The state of the file is unknown after a failed write or fdatasync: leave it.
            st.broken = true;
            st.file = None;
        }
        result
    }

    fn write_out_inner(&self, st: &mut State, sync: bool) -> Result<(), StoreError> {
        let path = self.path(st.active);
        if st.file.is_none() {
            let existed = st.segments.contains(&st.active);
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io_at("cannot open blob segment", &path, e))?;
            if !existed {
                // The new file's name must be durable before any pointer into it.
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_at("cannot sync directory", &self.dir, e))?;
                st.segments.insert(st.active);
                tracing::debug!(segment = %path.display(), "blob segment created");
            }
            st.file = Some(f);
        }
        if let Some(f) = &st.file {
            f.write_all_at(&st.buf, st.len)
                .map_err(|e| io_at("cannot write blob segment", &path, e))?;
            if sync {
                f.sync_data()
                    .map_err(|e| io_at("cannot sync blob segment", &path, e))?;
            }
        }
        st.unsynced = !sync;
        st.len += st.buf.len() as u64;
        st.buf.clear();
        Ok(())
    }

    /// Starts the next segment (created on first write), syncing the one it leaves.
    fn rotate(&self, st: &mut State) -> Result<(), StoreError> {
        self.sync_active(st)?;
        st.retired.push(st.active);
        st.active += 1;
        st.file = None;
        st.len = 0;
        st.broken = false;
        st.unsynced = false;
        Ok(())
    }

    /// Records the outcome of a batch that sled applied: `added` pointers became live,
    /// `removed` ones died. Segments left without live pointers become dead.
    pub(crate) fn commit(&self, added: &[BlobRef], removed: &[BlobRef]) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        if added.is_empty() && removed.is_empty() && st.retired.is_empty() {
            return Ok(());
        }
        let st = &mut *st;
        for r in added {
            *st.live.entry(r.segment).or_insert(0) += 1;
        }
        let mut check: Vec<u32> = std::mem::take(&mut st.retired);
        for r in removed {
            match st.live.get_mut(&r.segment) {
                Some(n) if *n > 0 => *n -= 1,
                _ => tracing::warn!(
                    segment = r.segment,
                    offset = r.offset,
                    "blob pointer removed from a segment with no live pointers counted"
                ),
            }
            check.push(r.segment);
        }
        for s in check {
            if s != st.active
                && st.live.get(&s).copied().unwrap_or(0) == 0
                && st.segments.contains(&s)
                && st.dead.insert(s)
            {
                st.live.remove(&s);
                tracing::debug!(
                    segment = s,
                    "blob segment dead, to be deleted after next sync"
                );
            }
        }
        Ok(())
    }

    /// Live pointers counted, over all segments.
    #[cfg(test)]
    pub(crate) fn live_pointers(&self) -> u64 {
        self.lock().map_or(0, |st| st.live.values().sum())
    }

    /// The dead segments, taken before a sync: [`BlobLog::remove`] them once it has succeeded,
    /// or give them back with [`BlobLog::restore`] if it failed.
    pub(crate) fn take_dead(&self) -> Result<Vec<u32>, StoreError> {
        Ok(std::mem::take(&mut self.lock()?.dead).into_iter().collect())
    }

    /// Gives back dead segments that could not be deleted yet.
    pub(crate) fn restore(&self, dead: Vec<u32>) -> Result<(), StoreError> {
        self.lock()?.dead.extend(dead);
        Ok(())
    }

    /// Deletes dead segments; call only after a sync that began after [`BlobLog::take_dead`].
    /// A segment that cannot be deleted stays dead and is tried again after the next sync.
    pub(crate) fn remove(&self, dead: Vec<u32>) -> Result<(), StoreError> {
        if dead.is_empty() {
            return Ok(());
        }
        let poisoned = || StoreError::Io("blob read gate poisoned".into());
        // A barrier: every read that may still hold a pointer into a dead segment began before
        // the batch that removed the pointer, and has ended once the gate was free; later reads
        // cannot find such a pointer. Waiting for a long scan would stall the sync (and, as
        // std's RwLock prefers writers, every new reader): put the deletion off to a later sync
        // instead, up to `MAX_DEFERRALS` times in a row.
        match self.gate.try_write() {
            Ok(g) => drop(g),
            Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            Err(TryLockError::WouldBlock) => {
                let mut st = self.lock()?;
                if st.deferrals < MAX_DEFERRALS {
                    st.deferrals += 1;
                    st.dead.extend(dead);
                    return Ok(());
                }
                drop(st);
                drop(self.gate.write().map_err(|_| poisoned())?);
            }
        }
        {
            let mut readers = self
                .readers
                .write()
                .map_err(|_| StoreError::Io("blob reader cache lock poisoned".into()))?;
            for s in &dead {
                readers.remove(s);
            }
        }
        let mut failed = Vec::new();
        let mut removed = Vec::new();
        for s in dead {
            let path = self.path(s);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(segment = %path.display(), "dead blob segment deleted");
                    removed.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed.push(s),
                Err(e) => {
                    tracing::warn!(
                        segment = %path.display(),
                        error = %e,
                        "cannot delete dead blob segment; will retry after the next sync"
                    );
                    failed.push(s);
                }
            }
        }
        let mut st = self.lock()?;
        st.deferrals = 0;
        for s in removed {
            st.segments.remove(&s);
        }
        st.dead.extend(failed);
        Ok(())
    }

    /// Held from looking up a pointer until its bytes are read, so that its segment is not
    /// deleted in between.
    pub(crate) fn read_gate(&self) -> Result<RwLockReadGuard<'_, ()>, StoreError> {
        self.gate
            .read()
            .map_err(|_| StoreError::Io("blob read gate poisoned".into()))
    }

    /// The cached read handle on `segment`; `None` if the file does not exist.
    fn reader(&self, segment: u32) -> Result<Option<Arc<File>>, StoreError> {
        let poisoned = || StoreError::Io("blob reader cache lock poisoned".into());
        if let Some(f) = self.readers.read().map_err(|_| poisoned())?.get(&segment) {
            return Ok(Some(f.clone()));
        }
        let mut readers = self.readers.write().map_err(|_| poisoned())?;
        if let Some(f) = readers.get(&segment) {
            return Ok(Some(f.clone()));
        }
        let path = self.path(segment);
        let f = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at("cannot open blob segment", &path, e)),
        };
        readers.insert(segment, f.clone());
        Ok(Some(f))
    }

    fn corrupt(&self, segment: u32, offset: u64, problem: String) -> StoreError {
        StoreError::Corrupt {
            segment: self.path(segment).display().to_string(),
            offset,
            problem,
        }
    }

    /// Reads the value that `r` points to, checking that the record is intact and belongs to
    /// `key`. The caller holds [`BlobLog::read_gate`] since it found `r`.
    pub(crate) fn read(&self, r: BlobRef, key: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some(f) = self.reader(r.segment)? else {
            return Err(self.corrupt(
                r.segment,
                r.offset,
                "the segment file does not exist".into(),
            ));
        };
        let total = HEADER + key.len() + r.len as usize;
        let mut buf = vec![0u8; total];
        if let Err(e) = f.read_exact_at(&mut buf, r.offset) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                return Err(self.corrupt(
                    r.segment,
                    r.offset,
                    format!(
                        "the record ({total} bytes) runs past the end of the segment ({size} bytes)"
                    ),
                ));
            }
            return Err(io_at("cannot read blob segment", &self.path(r.segment), e));
        }
        let (crc, klen, vlen) = header_fields(&buf);
        let klen = klen as usize;
        if klen != key.len() || vlen != r.len {
            return Err(self.corrupt(
                r.segment,
                r.offset,
                format!(
                    "the record header says key {klen} and value {vlen} bytes, the pointer \
                     expects {} and {}",
                    key.len(),
                    r.len
                ),
            ));
        }
        let actual = crc32fast::hash(&buf[4..]);
        if actual != crc {
            return Err(self.corrupt(
                r.segment,
                r.offset,
                format!("checksum mismatch (stored {crc:08x}, computed {actual:08x})"),
            ));
        }
        if &buf[HEADER..HEADER + klen] != key {
            return Err(self.corrupt(
                r.segment,
                r.offset,
                "the record belongs to another key".into(),
            ));
        }
        buf.drain(..HEADER + klen);
        Ok(buf)
    }
}

/// Reads the checkpoint in the log's directory `dir`: where replay starts. `None` if there is
/// none (a new store, or one whose first checkpoint was never written). The error says what is
/// wrong with the file and what to do.
pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Position>, String> {
    let path = dir.join(CHECKPOINT);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let damaged = |problem: &str| {
        format!(
            "{}: {problem}; it says where the replay of the store's log starts: delete the \
             file to start from sled's own state (writes of the last second before the node \
             stopped may then be missing), or restore the store directory from a backup",
            path.display()
        )
    };
    if bytes.len() != CHECKPOINT_LEN || &bytes[..4] != CHECKPOINT_MAGIC {
        return Err(damaged(
            "the checkpoint file is not one this version writes",
        ));
    }
    let crc = u32::from_be_bytes(bytes[16..20].try_into().unwrap_or_default());
    if crc32fast::hash(&bytes[..16]) != crc {
        return Err(damaged("the checkpoint file's checksum does not match"));
    }
    Ok(Some(Position {
        segment: u32::from_be_bytes(bytes[4..8].try_into().unwrap_or_default()),
        offset: u64::from_be_bytes(bytes[8..16].try_into().unwrap_or_default()),
    }))
}

/// Durably records that replay starts at `at`: a new file, synced, renamed over the old one,
/// and the directory synced. A crash leaves the old checkpoint or the new one, whole.
pub(crate) fn write_checkpoint(dir: &Path, at: Position) -> Result<(), StoreError> {
    let mut bytes = Vec::with_capacity(CHECKPOINT_LEN);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&at.segment.to_be_bytes());
    bytes.extend_from_slice(&at.offset.to_be_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    let (tmp, path) = (dir.join("CHECKPOINT.tmp"), dir.join(CHECKPOINT));
    let write = || -> std::io::Result<()> {
        let f = File::create(&tmp)?;
        f.write_all_at(&bytes, 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| io_at("cannot write checkpoint", &path, e))
}

/// What [`replay`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Complete batches handed to the caller.
    pub(crate) batches: u64,
    /// Bytes of log read.
    pub(crate) bytes: u64,
    /// Segments that ended in an incomplete batch (a crash while writing it).
    pub(crate) torn: u32,
}

/// Hands every complete batch after `from`, in log order, to `apply` (its body and the pointers
/// to its values). A segment's replay ends at its first incomplete or damaged record: a crash
/// while writing leaves such a tail, and the next open starts a new segment after it.
pub(crate) fn replay(
    dir: &Path,
    from: Position,
    mut apply: impl FnMut(&[u8], &[BlobRef]) -> Result<(), StoreError>,
) -> Result<Replayed, StoreError> {
    let mut done = Replayed::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(done);
    };
    let mut segments: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_segment_name))
        .filter(|&s| s >= from.segment)
        .collect();
    segments.sort_unstable();
    for segment in segments {
        let path = dir.join(segment_name(segment));
        let start = if segment == from.segment {
            from.offset
        } else {
            0
        };
        let mut reader = SegmentReader::open(&path, start)?;
        // A segment shorter than the checkpoint says (cut by damage) is read from its end.
        let start = reader.offset;
        loop {
            let next = reader
                .next_batch(segment)
                .map_err(|e| io_at("cannot read blob segment", &path, e))?;
            match next {
                Next::Batch(body, refs) => {
                    apply(&body, &refs)?;
                    done.batches += 1;
                }
                Next::End => break,
                Next::Torn(at) => {
                    done.torn += 1;
                    tracing::info!(
                        segment = %path.display(),
                        offset = at,
                        "log segment ends in an incomplete batch (written when the node \
                         stopped, never acknowledged); replay goes on with the next segment"
                    );
                    break;
                }
            }
        }
        done.bytes += reader.offset - start;
    }
    Ok(done)
}

/// What a [`SegmentReader`] read next.
enum Next {
    /// A whole batch: its body and its values' pointers.
    Batch(Vec<u8>, Vec<BlobRef>),
    /// The segment ends cleanly.
    End,
    /// An incomplete or damaged record starts at this offset.
    Torn(u64),
}

/// Reads one segment's records in order.
struct SegmentReader {
    reader: std::io::BufReader<File>,
    offset: u64,
    size: u64,
}

impl SegmentReader {
    fn open(path: &Path, start: u64) -> Result<SegmentReader, StoreError> {
        use std::io::{Seek, SeekFrom};
        let mut f = File::open(path).map_err(|e| io_at("cannot open blob segment", path, e))?;
        let size = f
            .metadata()
            .map_err(|e| io_at("cannot stat", path, e))?
            .len();
        f.seek(SeekFrom::Start(start.min(size)))
            .map_err(|e| io_at("cannot read blob segment", path, e))?;
        Ok(SegmentReader {
            reader: std::io::BufReader::with_capacity(1 << 20, f),
            offset: start.min(size),
            size,
        })
    }

    /// Reads one record: its key length (or [`BATCH_MARK`]) and everything after its header;
    /// `None` if the bytes left do not hold a whole record with a matching checksum. Reading
    /// within the file's size, a failed read is a disk error, not a torn tail.
    fn record(&mut self) -> std::io::Result<Option<(u32, Vec<u8>)>> {
        use std::io::Read;
        let mut header = [0u8; HEADER];
        if self.size - self.offset < HEADER as u64 {
            return Ok(None);
        }
        self.reader.read_exact(&mut header)?;
        let (crc, klen, vlen) = header_fields(&header);
        let len = if klen == BATCH_MARK {
            u64::from(vlen)
        } else {
            u64::from(klen) + u64::from(vlen)
        };
        if self.size - self.offset - (HEADER as u64) < len {
            return Ok(None);
        }
        let mut rest = vec![0u8; len as usize];
        self.reader.read_exact(&mut rest)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[4..]);
        hasher.update(&rest);
        if hasher.finalize() != crc {
            return Ok(None);
        }
        self.offset += HEADER as u64 + len;
        Ok(Some((klen, rest)))
    }

    fn next_batch(&mut self, segment: u32) -> std::io::Result<Next> {
        loop {
            if self.offset == self.size {
                return Ok(Next::End);
            }
            let at = self.offset;
            let Some((klen, rest)) = self.record()? else {
                return Ok(Next::Torn(at));
            };
            if klen != BATCH_MARK {
                // A value record outside any batch: written by a version before the log was a
                // write-ahead log. Nothing to apply.
                continue;
            }
            if rest.len() < 4 {
                return Ok(Next::Torn(at));
            }
            let count = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let mut refs = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let offset = self.offset;
                match self.record()? {
                    Some((klen, value)) if klen != BATCH_MARK => refs.push(BlobRef {
                        segment,
                        offset,
                        len: (value.len() - klen as usize) as u32,
                    }),
                    _ => return Ok(Next::Torn(at)),
                }
            }
            let mut body = rest;
            body.drain(..4);
            return Ok(Next::Batch(body, refs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_others() {
        assert_eq!(segment_name(1), "00000001.seg");
        assert_eq!(parse_segment_name("00000001.seg"), Some(1));
        assert_eq!(parse_segment_name("1.seg"), None);
        assert_eq!(parse_segment_name("00000001.seg.tmp"), None);
    }

    #[test]
    fn blob_ref_encoding_round_trips() {
        let r = BlobRef {
            segment: 7,
            offset: 1 << 40,
            len: 3600,
        };
        let mut v = Vec::new();
        r.encode_into(&mut v);
        assert_eq!(v.len(), REF_LEN);
        assert_eq!(BlobRef::decode(&v), Some(r));
        assert_eq!(BlobRef::decode(&v[1..]), None);
    }

    #[test]
    fn misdirected_pointer_is_detected_by_key_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let log = BlobLog::open(&dir.path().join("blobs"), 1 << 20, HashMap::new()).unwrap();
        let refs = log
            .append(
                b"",
                &[(b"\x01a", &[1u8; 600][..]), (b"\x01b", &[2u8; 600][..])],
                true,
            )
            .unwrap();
        assert_eq!(log.read(refs[1], b"\x01b").unwrap(), vec![2u8; 600]);
        // The pointer of one key used with another key of the same length.
        let err = log.read(refs[0], b"\x01b").unwrap_err();
        let another_key = matches!(&err, StoreError::Corrupt { offset, problem, .. }
            if *offset == refs[0].offset && problem.contains("another key"));
        assert!(another_key, "{err}");
        // A pointer into the middle of a record.
        let off = BlobRef {
            offset: refs[0].offset + 5,
            ..refs[0]
        };
        assert!(matches!(
            log.read(off, b"\x01a"),
            Err(StoreError::Corrupt { offset, .. }) if offset == refs[0].offset + 5
        ));
        // A pointer past the end of the segment.
        let past = BlobRef {
            offset: refs[1].offset + 100,
            ..refs[1]
        };
        let err = log.read(past, b"\x01b").unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { problem, .. } if problem.contains("past the end")),
            "{err}"
        );
        // A pointer into a segment that does not exist.
        let missing = BlobRef {
            segment: 9,
            ..refs[0]
        };
        let err = log.read(missing, b"\x01a").unwrap_err();
        let names_it = matches!(&err, StoreError::Corrupt { segment, .. }
            if segment.ends_with("00000009.seg"));
        assert!(names_it, "{err}");
    }
}
