//! The disclosure ledger: an append-only, hash-chained record of every transfer, refusal and
//! administrative change. Each entry's hash covers the previous hash and the entry itself, so an
//! edit anywhere breaks every later link ([`verify`]).

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
            Some((_, v)) => {
                let e: LedgerEntry = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Io(format!("ledger entry does not decode: {e}")))?;
                Ok(Head {
                    seq: e.seq,
                    hash: e.hash,
                })
            }
            None => Ok(Head::default()),
        }
    }

    /// Chains `entry` onto the head and returns the op that writes it.
    pub fn append(&mut self, mut entry: LedgerEntry) -> Op {
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
        Op::put(Space::Ledger, key(entry.seq).to_vec(), bytes)
    }
}

/// Reads entries after `after`, at most `limit`.
pub fn read(store: &dyn Store, after: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
    store
        .scan(Space::Ledger, b"", &key(after + 1), limit)?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v)
                .map_err(|e| StoreError::Io(format!("ledger entry does not decode: {e}")))
        })
        .collect()
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
        let batch = store.scan(Space::Ledger, b"", &key(expected), 1024)?;
        if batch.is_empty() {
            break;
        }
        for (k, v) in batch {
            let seq = u64::from_be_bytes(k.as_slice().try_into().unwrap_or([0; 8]));
            let problem = |p: String| ChainCheck {
                entries: expected - 1,
                head: prev.clone(),
                problem: Some(p),
            };
            let Ok(e) = serde_json::from_slice::<LedgerEntry>(&v) else {
                return Ok(problem(format!("entry {seq} does not decode")));
            };
            if seq != expected || e.seq != expected {
                return Ok(problem(format!(
                    "entry {expected} is missing (found {seq})"
                )));
            }
            if e.prev != prev {
                return Ok(problem(format!(
                    "entry {seq} does not chain onto entry {}",
                    seq - 1
                )));
            }
            if e.compute_hash() != e.hash {
                return Ok(problem(format!(
                    "entry {seq} was altered: its hash does not match its content"
                )));
            }
            prev = e.hash;
            expected += 1;
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
