//! The disclosure ledger: an append-only, hash-chained record of every transfer, refusal and
//! administrative change. Each entry's hash covers the previous hash and the entry itself, so an
//! edit anywhere breaks every later link ([`verify`]).
//!
//! **Storage.** The entries that one batch appends are stored as one record of up to
//! [`GROUP_MAX`] entries, keyed by the big-endian `seq` of its first entry, its value the
//! entries' JSON separated by newlines (JSON escapes every newline inside a string, so the
//! separator cannot occur in an entry). A send round or a publish batch of 64 notifications thus
//! costs the store one write for its records instead of 64. A record of one entry is exactly
//! that entry's JSON, which is also how ledgers written before grouping store every entry: they
//! read and verify unchanged.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tidewire_store::{Op, Space, Store, StoreError};

/// One ledger record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position, from 1.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// `published`, `transfer`, `received`, `delivered`, `refused`, `denied`, `held`,
    /// `consent_requested`, `consent_granted`, `consent_refused`, `released`, `dropped`,
    /// `expired`, `purged` (retention), `recalled`, `subscription_ended` (idle),
    /// `policy_applied`, `user_added`, `user_revoked`.
    pub event: String,
    /// Notification id (hex), if any.
    #[serde(default)]
    pub notification: String,
    /// Destination or counterpart (`node:accra`, `role:liaison`, a user), if any.
    #[serde(default)]
    pub destination: String,
    /// Policy content hash in force.
    #[serde(default)]
    pub policy_version: String,
    /// Rule that decided.
    #[serde(default)]
    pub rule: String,
    /// Event-specific detail (withheld paths, reasons).
    #[serde(default)]
    pub detail: serde_json::Value,
    /// Hash of the previous entry (hex); empty for the first.
    pub prev: String,
    /// This entry's hash (hex).
    pub hash: String,
}

impl LedgerEntry {
    /// A new unchained entry.
    pub fn new(event: &str) -> LedgerEntry {
        LedgerEntry {
            seq: 0,
            at_ms: tidewire_core::timefmt::now_ms(),
            event: event.to_owned(),
            notification: String::new(),
            destination: String::new(),
            policy_version: String::new(),
            rule: String::new(),
            detail: serde_json::Value::Null,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// The hash this entry should have: over the previous hash and the entry's JSON with
    /// `hash` empty.
    fn compute_hash(&self) -> String {
        if self.hash.is_empty() {
            return chain(&self.prev, &serde_json::to_vec(self).unwrap_or_default());
        }
        let mut copy = self.clone();
        copy.hash = String::new();
        chain(&self.prev, &serde_json::to_vec(&copy).unwrap_or_default())
    }
}

/// An entry's hash: over the previous hash and the entry's JSON with `hash` empty.
fn chain(prev: &str, unhashed: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(unhashed);
    hex::encode(h.finalize())
}

/// How the JSON of an entry whose `hash` is empty ends (`hash` is the last field).
const UNHASHED_END: &[u8] = b"\"hash\":\"\"}";

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// At most this many entries share one stored record: a batch that appends more (a purge, a
/// large send round) is stored as several. Records stay in sled (the ledger is never trimmed,
/// so they must not hold a segment of the store's log), and sled copies a leaf's values on
/// every insert: 16 entries keep a record to about 6 KiB.
pub const GROUP_MAX: usize = 16;

/// The entries of one stored record, in order.
fn decode_group(value: &[u8]) -> Result<Vec<LedgerEntry>, String> {
    value
        .split(|b| *b == b'\n')
        .map(|line| serde_json::from_slice(line).map_err(|e| e.to_string()))
        .collect()
}

/// The first sequence number a stored record's key names.
fn key_seq(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().unwrap_or([0; 8]))
}

/// The chain head: the last sequence number and hash.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// Last seq written.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

impl Head {
    /// Reads the head from the store.
    pub fn load(store: &dyn Store) -> Result<Head, StoreError> {
        match store.last(Space::Ledger, b"")? {
            Some((k, v)) => {
                let e = decode_group(&v)
                    .ok()
                    .and_then(|mut g| g.pop())
                    .ok_or_else(|| {
                        StoreError::Io(format!(
                            "the ledger's last record (entries from {}) does not decode: the \
                             data directory is damaged; restore it from a backup",
                            key_seq(&k)
                        ))
                    })?;
                Ok(Head {
                    seq: e.seq,
                    hash: e.hash,
                })
            }
            None => Ok(Head::default()),
        }
    }

    /// Chains `entries` onto the head and returns the ops that write them: one per
    /// [`GROUP_MAX`] entries.
    pub fn append_all(&mut self, entries: Vec<LedgerEntry>) -> Vec<Op> {
        let mut ops = Vec::with_capacity(entries.len().div_ceil(GROUP_MAX));
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let first = self.seq + 1;
            let mut value = Vec::new();
            for e in entries.by_ref().take(GROUP_MAX) {
                if !value.is_empty() {
                    value.push(b'\n');
                }
                value.extend_from_slice(&self.chain_onto(e));
            }
            ops.push(Op::put(Space::Ledger, key(first).to_vec(), value));
        }
        ops
    }

    /// Chains `entry` onto the head and returns the op that writes it on its own.
    pub fn append(&mut self, entry: LedgerEntry) -> Op {
        let seq = self.seq + 1;
        Op::put(Space::Ledger, key(seq).to_vec(), self.chain_onto(entry))
    }

    /// Chains `entry` onto the head and returns its JSON, hash included.
    fn chain_onto(&mut self, mut entry: LedgerEntry) -> Vec<u8> {
        entry.seq = self.seq + 1;
        entry.prev = std::mem::take(&mut self.hash);
        entry.hash = String::new();
        // Serialised once: the hash is taken over these bytes, then written into their
        // empty `hash` field, which gives exactly the JSON of the entry with its hash.
        let mut bytes = serde_json::to_vec(&entry).unwrap_or_default();
        let hash = chain(&entry.prev, &bytes);
        if bytes.ends_with(UNHASHED_END) {
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(hash.as_bytes());
            bytes.extend_from_slice(b"\"}");
        } else {
            entry.hash = hash.clone();
            bytes = serde_json::to_vec(&entry).unwrap_or_default();
        }
        self.seq = entry.seq;
        self.hash = hash;
        bytes
    }
}

/// Reads entries after `after`, at most `limit`.
pub fn read(store: &dyn Store, after: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
    // The record holding entry `after + 1` may begin before it.
    let mut from = match store.floor(Space::Ledger, b"", &key(after + 1))? {
        Some((k, _)) => k,
        None => key(after + 1).to_vec(),
    };
    let mut out = Vec::new();
    while out.len() < limit {
        let records = store.scan(Space::Ledger, b"", &from, limit.div_ceil(GROUP_MAX) + 1)?;
        let Some((last, _)) = records.last() else {
            break;
        };
        from = key(key_seq(last) + 1).to_vec();
        for (k, v) in records {
            let group = decode_group(&v).map_err(|e| {
                StoreError::Io(format!(
                    "ledger record {} does not decode ({e}): `tidewire audit verify` names the \
                     first damaged entry",
                    key_seq(&k)
                ))
            })?;
            out.extend(group.into_iter().filter(|e| e.seq > after));
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChainCheck {
    /// Entries checked.
    pub entries: u64,
    /// Head hash.
    pub head: String,
    /// The first problem found, if any.
    pub problem: Option<String>,
}

/// Walks the whole chain and checks every link.
pub fn verify(store: &dyn Store) -> Result<ChainCheck, StoreError> {
    let mut prev = String::new();
    let mut expected = 1u64;
    loop {
        let batch = store.scan(Space::Ledger, b"", &key(expected), 64)?;
        if batch.is_empty() {
            break;
        }
        for (k, v) in batch {
            let first = key_seq(&k);
            let problem = |expected: u64, prev: &str, p: String| ChainCheck {
                entries: expected - 1,
                head: prev.to_owned(),
                problem: Some(p),
            };
            if first != expected {
                return Ok(problem(
                    expected,
                    &prev,
                    format!("entry {expected} is missing (found {first})"),
                ));
            }
            let Ok(group) = decode_group(&v) else {
                return Ok(problem(
                    expected,
                    &prev,
                    format!("the record of entries from {first} does not decode"),
                ));
            };
            for e in group {
                let seq = expected;
                if e.seq != seq {
                    return Ok(problem(
                        seq,
                        &prev,
                        format!("entry {seq} is missing (found {})", e.seq),
                    ));
                }
                if e.prev != prev {
                    return Ok(problem(
                        seq,
                        &prev,
                        format!("entry {seq} does not chain onto entry {}", seq - 1),
                    ));
                }
                if e.compute_hash() != e.hash {
                    return Ok(problem(
                        seq,
                        &prev,
                        format!("entry {seq} was altered: its hash does not match its content"),
                    ));
                }
                prev = e.hash;
                expected += 1;
            }
        }
    }
    Ok(ChainCheck {
        entries: expected - 1,
        head: prev,
        problem: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewire_store::MemStore;

    #[test]
    fn chain_verifies_and_detects_an_edit() {
        let store = MemStore::default();
        let mut head = Head::default();
        for i in 0..5 {
            let mut e = LedgerEntry::new("transfer");
            e.notification = format!("n{i}");
            store.apply(&[head.append(e)]).unwrap();
        }
        let ok = verify(&store).unwrap();
        assert_eq!(ok.entries, 5);
        assert!(ok.problem.is_none());
        assert_eq!(Head::load(&store).unwrap().hash, head.hash);

        let mut e: LedgerEntry =
            serde_json::from_slice(&store.get(Space::Ledger, &key(3)).unwrap().unwrap()).unwrap();
        e.destination = "node:somewhere-else".into();
        store
            .apply(&[Op::put(
                Space::Ledger,
                key(3).to_vec(),
                serde_json::to_vec(&e).unwrap(),
            )])
            .unwrap();
        let bad = verify(&store).unwrap();
        assert!(bad.problem.unwrap().contains("entry 3 was altered"));
    }

    fn entry(i: usize) -> LedgerEntry {
        let mut e = LedgerEntry::new("transfer");
        e.notification = format!("n{i}");
        e.detail = serde_json::json!({"note": "line one\nline two"});
        e
    }

    /// A store whose ledger holds `n` entries appended in one batch.
    fn ledger_of(n: usize) -> MemStore {
        let store = MemStore::default();
        store
            .apply(&Head::default().append_all((0..n).map(entry).collect()))
            .unwrap();
        store
    }

    #[test]
    fn entries_appended_together_are_stored_as_records_of_at_most_group_max() {
        let store = MemStore::default();
        let mut head = Head::default();
        // A ledger written one entry per record (as before grouping), then grouped batches.
        for i in 0..3 {
            store.apply(&[head.append(entry(i))]).unwrap();
        }
        let batch: Vec<LedgerEntry> = (3..3 + 2 * GROUP_MAX + 5).map(entry).collect();
        let ops = head.append_all(batch);
        assert_eq!(ops.len(), 3, "two full records and one of five");
        store.apply(&ops).unwrap();
        store.apply(&head.append_all(vec![entry(999)])).unwrap();
        let total = (3 + 2 * GROUP_MAX + 5 + 1) as u64;
        assert_eq!(store.count(Space::Ledger, b"").unwrap(), 3 + 3 + 1);

        let ok = verify(&store).unwrap();
        assert_eq!(ok.problem, None);
        assert_eq!(ok.entries, total);
        let loaded = Head::load(&store).unwrap();
        assert_eq!((loaded.seq, loaded.hash), (total, head.hash.clone()));

        // Read from every point, including inside a record and across record boundaries.
        for after in 0..=total {
            for limit in [1, 7, GROUP_MAX, 1000] {
                let got: Vec<u64> = read(&store, after, limit)
                    .unwrap()
                    .iter()
                    .map(|e| e.seq)
                    .collect();
                let want: Vec<u64> = (after + 1..=total).take(limit).collect();
                assert_eq!(got, want, "read after {after}, limit {limit}");
            }
        }
        let back = read(&store, 3, 1).unwrap();
        assert_eq!(back[0].detail["note"], "line one\nline two");
    }

    #[test]
    fn an_edit_inside_a_grouped_record_is_found() {
        let store = ledger_of(10);
        let record = store.get(Space::Ledger, &key(1)).unwrap().unwrap();
        let edited = String::from_utf8(record)
            .unwrap()
            .replacen("\"n6\"", "\"n66\"", 1);
        store
            .apply(&[Op::put(Space::Ledger, key(1).to_vec(), edited)])
            .unwrap();
        let bad = verify(&store).unwrap();
        assert_eq!(
            bad.problem.as_deref(),
            Some("entry 7 was altered: its hash does not match its content")
        );
        assert_eq!(bad.entries, 6, "the entries before it check out");
    }

    #[test]
    fn a_damaged_last_record_stops_the_head_from_loading_with_a_clear_error() {
        let store = ledger_of(3);
        store
            .apply(&[Op::put(
                Space::Ledger,
                key(4).to_vec(),
                b"{\"seq\":4,".to_vec(),
            )])
            .unwrap();
        let e = Head::load(&store).unwrap_err().to_string();
        assert!(
            e.contains("last record (entries from 4) does not decode") && e.contains("damaged"),
            "{e}"
        );
        let e = read(&store, 0, 10).unwrap_err().to_string();
        assert!(e.contains("ledger record 4 does not decode"), "{e}");
        assert_eq!(
            verify(&store).unwrap().problem.as_deref(),
            Some("the record of entries from 4 does not decode")
        );
    }

    #[test]
    fn an_appended_entry_is_written_as_its_own_json_with_its_hash() {
        let mut head = Head::default();
        for detail in [
            serde_json::Value::Null,
            serde_json::json!({"withheld": [{"path": "persons[0].dob", "rule": "r\"1"}]}),
        ] {
            let mut e = LedgerEntry::new("transfer");
            e.notification = "0a".repeat(16);
            e.destination = "node:accra".into();
            e.detail = detail;
            let Op::Put { value, .. } = head.append(e) else {
                panic!("a put");
            };
            let written: LedgerEntry = serde_json::from_slice(&value).unwrap();
            assert_eq!(written.hash, head.hash);
            assert_eq!(written.compute_hash(), written.hash);
            assert_eq!(
                serde_json::to_vec(&written).unwrap(),
                value,
                "the bytes are the entry's own JSON"
            );
        }
    }
}
