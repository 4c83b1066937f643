//! The node's shared state and its three paths: publish (origin), ingest (from a peer) and the
//! one egress path ([`Node::prepare_egress`]) that every byte leaving the node goes through.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidewire_core::envelope::{self, Header, Hop, Substitution};
use tidewire_core::keys::{Roster, SigningKey};
use tidewire_core::model::{NodeId, Route, RoutePattern};
use tidewire_core::{Notification, NotificationId, VerifiedView, timefmt};
use tidewire_policy::{Decision, FieldAction, Party, Policy};
use tidewire_proto::v1 as pb;
use tidewire_store::{Committer, Op, Receipt, Space, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::ledger::{self, LedgerEntry};
use crate::routing::Routing;
use crate::tls::TlsMaterial;
use crate::users::Users;

/// Monotonic counters, shown by `tidewire status` and on the metrics port.
#[derive(Debug, Default)]
pub struct Counters {
    /// Notifications published here.
    pub published: AtomicU64,
    /// Envelopes received from peers.
    pub received: AtomicU64,
    /// Envelopes that verified.
    pub verified: AtomicU64,
    /// Envelopes handed to a peer and acknowledged.
    pub forwarded: AtomicU64,
    /// Copies sent as prepared by the commit that stored and queued them (a publish here or a
    /// relay's ingest), their transfer recorded in it (see [`Node::take_ahead`]).
    pub sent_ahead: AtomicU64,
    /// Deliveries to local subscribers prepared by the commit that stored the notification,
    /// their records written in it (see [`crate::subscribe::LiveSubs`]).
    pub delivered_ahead: AtomicU64,
    /// Notifications delivered into the local feed.
    pub delivered: AtomicU64,
    /// Duplicates dropped by the seen-set.
    pub duplicates: AtomicU64,
    /// Copies the policy denied.
    pub denied: AtomicU64,
    /// Fields withheld on egress.
    pub withheld_fields: AtomicU64,
    /// Expired notifications dropped.
    pub expired: AtomicU64,
    /// Copies refused on arrival because they were created longer ago than the retention.
    pub past_retention: AtomicU64,
    /// Consent answers received for requests this node holds (or held).
    pub consent_answers: AtomicU64,
    /// Refusals by reason.
    pub refused: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    /// Counts a refusal.
    pub fn refuse(&self, reason: &str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// Every counter by name.
    pub fn snapshot(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut m = BTreeMap::new();
        m.insert("published".into(), l(&self.published));
        m.insert("received".into(), l(&self.received));
        m.insert("verified".into(), l(&self.verified));
        m.insert("forwarded".into(), l(&self.forwarded));
        m.insert("sent_ahead".into(), l(&self.sent_ahead));
        m.insert("delivered_ahead".into(), l(&self.delivered_ahead));
        m.insert("delivered".into(), l(&self.delivered));
        m.insert("duplicates".into(), l(&self.duplicates));
        m.insert("denied".into(), l(&self.denied));
        m.insert("withheld_fields".into(), l(&self.withheld_fields));
        m.insert("expired".into(), l(&self.expired));
        m.insert("past_retention".into(), l(&self.past_retention));
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        m.insert("refused".into(), refused.values().sum());
        (m, refused)
    }
}

/// What is kept with a stored envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMeta {
    /// Origin node.
    pub origin: String,
    /// Kind.
    pub kind: String,
    /// Case reference.
    pub case_ref: String,
    /// Routes.
    pub routes: Vec<String>,
    /// Created (Unix ms).
    pub created_at_ms: i64,
    /// Expires (Unix ms), 0 = never.
    pub expires_at_ms: i64,
    /// The peer it came from; empty when published here.
    pub from: String,
    /// When it arrived.
    pub received_at_ms: i64,
}

/// Encodes a stored notification: `u32 meta length ‖ meta JSON ‖ envelope bytes`.
pub fn encode_stored(meta: &StoredMeta, envelope: &[u8]) -> Vec<u8> {
    let m = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + m.len() + envelope.len());
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(envelope);
    out
}

/// Decodes a stored notification.
pub fn decode_stored(v: &[u8]) -> Option<(StoredMeta, &[u8])> {
    let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(v.get(4..4 + len)?).ok()?;
    Some((meta, v.get(4 + len..)?))
}

/// The header of a stored notification (this node verified or sealed it when it stored it),
/// without inspecting its fields. None when the stored value does not decode.
pub fn stored_header(v: &[u8]) -> Option<Header> {
    let (_, bytes) = decode_stored(v)?;
    envelope::header(&envelope::decode(bytes).ok()?).ok()
}

/// Store key of a held envelope copy: the id and the node it is held for.
pub fn note_key(id: &NotificationId, holder: &NodeId) -> Vec<u8> {
    let mut k = id.0.to_vec();
    k.extend_from_slice(holder.as_str().as_bytes());
    k
}

impl StoredMeta {
    /// When this copy goes, and why: its `expires_at`, or `retention_ms` after it was created
    /// or received (whichever is later), whichever comes first. Counting from the later of the
    /// two means a copy that goes for retention was created more than `retention_ms` before:
    /// ingest refuses such a copy, so its seen-set entries can go with it.
    pub fn purge_at(&self, retention_ms: i64) -> (i64, PurgeReason) {
        let kept = self
            .created_at_ms
            .max(self.received_at_ms)
            .saturating_add(retention_ms);
        if self.expires_at_ms > 0 && self.expires_at_ms <= kept {
            (self.expires_at_ms, PurgeReason::Expired)
        } else {
            (kept, PurgeReason::Retention)
        }
    }
}

/// Why a copy is purged, as its [`Space::Expiry`] entry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PurgeReason {
    /// The origin's `expires_at` passed.
    Expired,
    /// The node's `limits.retention_hours` passed.
    Retention,
    /// An entry that is not a copy: a publish's idempotency key (its key in
    /// [`Space::Idempotency`]), kept as long as the origin's copy of the notification.
    Key,
}

impl PurgeReason {
    /// The byte stored in the index.
    pub fn byte(self) -> u8 {
        match self {
            PurgeReason::Expired => 0,
            PurgeReason::Retention => 1,
            PurgeReason::Key => 2,
        }
    }

    /// The reason an index value stands for (an empty value, from an older index: expired).
    pub fn from_value(v: &[u8]) -> PurgeReason {
        match v.first() {
            Some(1) => PurgeReason::Retention,
            Some(2) => PurgeReason::Key,
            _ => PurgeReason::Expired,
        }
    }
}

/// Expiry index key (see [`Space::Expiry`]): when, then which copy (the earliest of an
/// entry's copies).
pub fn expiry_key(at_ms: i64, note: &[u8]) -> Vec<u8> {
    let mut k = (at_ms.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(note);
    k
}

/// One stored copy in the expiry index: when it goes, why, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// When (Unix ms).
    pub at_ms: i64,
    /// Why.
    pub why: PurgeReason,
    /// The copy's key in [`Space::Notifications`].
    pub note: Vec<u8>,
}

impl Due {
    /// When and why the copy stored under `note` with `meta` goes.
    pub fn of(note: &[u8], meta: &StoredMeta, retention_ms: i64) -> Due {
        let (at_ms, why) = meta.purge_at(retention_ms);
        Due {
            at_ms,
            why,
            note: note.to_vec(),
        }
    }
}

/// First byte of an expiry index value that lists its copies.
const DUE_LIST: u8 = 2;

/// The expiry index entry for copies stored together (one publish, one receive batch): one
/// write however many copies, keyed by the earliest, listing each (`2 ‖ (at ms, why, key
/// length u16, key)*`). None for no copies.
pub fn expiry_entry(dues: &[Due]) -> Option<Op> {
    let first = dues.iter().min_by_key(|d| d.at_ms)?;
    let mut v = Vec::with_capacity(1 + dues.iter().map(|d| 11 + d.note.len()).sum::<usize>());
    v.push(DUE_LIST);
    for d in dues {
        let len = u16::try_from(d.note.len()).ok()?;
        v.extend_from_slice(&d.at_ms.to_be_bytes());
        v.push(d.why.byte());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&d.note);
    }
    Some(Op::put(
        Space::Expiry,
        expiry_key(first.at_ms, &first.note),
        v,
    ))
}

/// The copies an expiry index entry lists. An entry written before lists existed names one
/// copy in its key (`at ‖ key → why`).
pub fn decode_expiry(key: &[u8], value: &[u8]) -> Vec<Due> {
    if value.len() <= 1 {
        let (Some(at), Some(note)) = (key.get(..8), key.get(8..)) else {
            return Vec::new();
        };
        return vec![Due {
            at_ms: i64::try_from(be_u64(at)).unwrap_or(i64::MAX),
            why: PurgeReason::from_value(value),
            note: note.to_vec(),
        }];
    }
    let mut out = Vec::new();
    let mut rest = &value[1..];
    while rest.len() >= 11 {
        let at_ms = i64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
        let why = PurgeReason::from_value(&rest[8..9]);
        let len = usize::from(u16::from_be_bytes([rest[9], rest[10]]));
        let Some(note) = rest.get(11..11 + len) else {
            break;
        };
        out.push(Due {
            at_ms,
            why,
            note: note.to_vec(),
        });
        rest = &rest[11 + len..];
    }
    out
}

/// Stores a copy under `key` and notes when it goes in `dues` (written by the caller with
/// [`expiry_entry`], in the same batch).
fn put_copy(
    ops: &mut Vec<Op>,
    dues: &mut Vec<Due>,
    key: Vec<u8>,
    meta: &StoredMeta,
    envelope: &[u8],
    retention_ms: i64,
) {
    dues.push(Due::of(&key, meta, retention_ms));
    ops.push(Op::put(
        Space::Notifications,
        key,
        encode_stored(meta, envelope),
    ));
}

/// Hands every entry of `space` to `f`, in key order, `page` entries at a time: a whole space
/// read in bounded memory.
fn each_page(
    store: &dyn Store,
    space: Space,
    page: usize,
    mut f: impl FnMut(Vec<tidewire_store::Entry>) -> Result<(), NodeError>,
) -> Result<(), NodeError> {
    let mut from = Vec::new();
    loop {
        let batch = store.scan(space, b"", &from, page)?;
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        from = [last.as_slice(), &[0]].concat();
        f(batch)?;
    }
}

/// Builds the expiry index for `retention_ms`, unless it was built for it: once for a store
/// written before the index existed, and again whenever `limits.retention_hours` changes. The
/// idempotency keys of `me`'s publishes go with `me`'s copies (at once, if the copy is gone).
fn index_expiry(store: &dyn Store, me: &NodeId, retention_ms: i64) -> Result<(), NodeError> {
    const DONE: &[u8] = b"expiry_indexed";
    let mark = retention_ms.to_be_bytes();
    let built_for = store.get(Space::Meta, DONE)?;
    if built_for.as_deref() == Some(&mark[..]) {
        return Ok(());
    }
    if store.scan(Space::Notifications, b"", b"", 1)?.is_empty()
        && store.scan(Space::Expiry, b"", b"", 1)?.is_empty()
        && store.scan(Space::Idempotency, b"", b"", 1)?.is_empty()
    {
        // Nothing stored yet (a new node): nothing to index.
        store.apply(&[Op::put(Space::Meta, DONE.to_vec(), mark.to_vec())])?;
        return Ok(());
    }
    tracing::info!(
        retention_ms,
        because = if built_for.is_some() {
            "limits.retention_hours changed"
        } else {
            "the store has none yet"
        },
        "building the expiry index: reading every stored copy"
    );
    let started = std::time::Instant::now();
    loop {
        let old = store.scan(Space::Expiry, b"", b"", 4096)?;
        if old.is_empty() {
            break;
        }
        let ops: Vec<Op> = old
            .into_iter()
            .map(|(k, _)| Op::delete(Space::Expiry, k))
            .collect();
        store.apply(&ops)?;
    }
    let mut indexed = 0u64;
    let mut pages = 0u64;
    each_page(store, Space::Notifications, 1024, |batch| {
        let dues: Vec<Due> = batch
            .iter()
            .filter_map(|(k, v)| Some(Due::of(k, &decode_stored(v)?.0, retention_ms)))
            .collect();
        indexed += dues.len() as u64;
        store.apply(&expiry_entry(&dues).into_iter().collect::<Vec<_>>())?;
        // Every stored copy is read: on a large store this takes a while, so say how far.
        pages += 1;
        if pages.is_multiple_of(64) {
            tracing::info!(
                indexed,
                ms = started.elapsed().as_millis() as u64,
                "building the expiry index"
            );
        }
        Ok(())
    })?;
    each_page(store, Space::Idempotency, 1024, |batch| {
        let mut dues = Vec::with_capacity(batch.len());
        for (key, v) in &batch {
            let Some(id) = v.get(..16) else { continue };
            let copy = note_key(&NotificationId(id.try_into().unwrap_or_default()), me);
            let at_ms = match store.get(Space::Notifications, &copy)? {
                Some(stored) => decode_stored(&stored)
                    .map_or(0, |(meta, _)| Due::of(&copy, &meta, retention_ms).at_ms),
                None => 0,
            };
            dues.push(Due {
                at_ms,
                why: PurgeReason::Key,
                note: key.clone(),
            });
        }
        indexed += dues.len() as u64;
        store.apply(&expiry_entry(&dues).into_iter().collect::<Vec<_>>())?;
        Ok(())
    })?;
    store.apply(&[Op::put(Space::Meta, DONE.to_vec(), mark.to_vec())])?;
    store.sync()?;
    if indexed > 0 {
        tracing::info!(
            indexed,
            retention_ms,
            ms = started.elapsed().as_millis() as u64,
            "expiry index built for this retention"
        );
    }
    Ok(())
}

/// Seen-set key for forwarding responsibility towards `dest`.
fn seen_fwd_key(id: &NotificationId, dest: &NodeId) -> Vec<u8> {
    let mut k = id.0.to_vec();
    k.push(0);
    k.extend_from_slice(dest.as_str().as_bytes());
    k
}

/// Outbox key: `dest ‖ 0 ‖ seq`.
pub fn outbox_key(dest: &NodeId, seq: u64) -> Vec<u8> {
    let mut k = dest.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The destination and sequence number of an [`outbox_key`].
pub(crate) fn parse_outbox_key(key: &[u8]) -> Option<(NodeId, u64)> {
    let (dest, seq) = key.split_at_checked(key.len().checked_sub(9)?)?;
    let dest = std::str::from_utf8(dest).ok()?.parse().ok()?;
    (seq[0] == 0).then(|| (dest, be_u64(&seq[1..])))
}

/// An outbox item: which copy to send and with what hop budget.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// The notification.
    pub id: NotificationId,
    /// Remaining hops after the next one.
    pub hops_left: u32,
    /// Whose copy to send (`note_key(id, holder)`).
    pub holder: NodeId,
}

impl OutboxItem {
    /// Encodes an outbox value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.id.0.to_vec();
        v.extend_from_slice(&self.hops_left.to_be_bytes());
        v.extend_from_slice(self.holder.as_str().as_bytes());
        v
    }

    /// Decodes an outbox value.
    pub fn decode(v: &[u8]) -> Option<OutboxItem> {
        Some(OutboxItem {
            id: NotificationId::from_slice(v.get(..16)?).ok()?,
            hops_left: u32::from_be_bytes(v.get(16..20)?.try_into().ok()?),
            holder: std::str::from_utf8(v.get(20..)?).ok()?.parse().ok()?,
        })
    }
}

/// A publish validated and sealed, its origin signature still to make.
#[derive(Debug)]
struct Sealed {
    n: Notification,
    env: envelope::Envelope,
    /// The origin's own view of `env`, built while sealing it.
    view: envelope::VerifiedView,
    id: NotificationId,
    seq: u64,
    now: i64,
    idempotency_key: String,
    /// [`content_digest`], when there is an idempotency key.
    content: [u8; 32],
    by: String,
    key_guard: Option<KeyInFlight>,
}

/// `Meta` key of the highest feed sequence number trimmed by retention.
pub(crate) const FEED_TRIMMED: &str = "feed_trimmed";

/// What identifies a notification's content for its idempotency key: SHA-256 over its header
/// values in a fixed order, then its field values with their paths, in path order. A retry
/// that writes the same notification with its keys in another order, or its numbers in another
/// form, has the same content.
fn content_digest(n: &Notification) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u32).to_be_bytes());
        h.update(bytes);
    };
    part(n.kind.as_str().as_bytes());
    part(n.case_ref.as_bytes());
    for r in &n.routes {
        part(r.as_str().as_bytes());
    }
    part(b"|");
    part(n.handling.to_string().as_bytes());
    part(n.grading.to_string().as_bytes());
    for a in &n.audience {
        part(a.to_string().as_bytes());
    }
    part(b"|");
    part(&[u8::from(n.onward_transfer)]);
    for p in &n.purposes {
        part(p.as_bytes());
    }
    part(b"|");
    for t in [n.expires_at_ms, n.response_deadline_ms] {
        part(&t.map_or([0xff; 8], |t| t.to_be_bytes()));
    }
    part(&n.recalls.map_or([0; 16], |id| id.0));
    let mut fields: Vec<(String, &[u8])> = n
        .fields
        .iter()
        .map(|l| (l.path.to_string(), l.value.as_slice()))
        .collect();
    fields.sort_unstable();
    for (path, value) in &fields {
        part(path.as_bytes());
        part(value);
    }
    h.finalize().into()
}

/// The refusal of an idempotency key already used for another notification.
fn key_reused(key: &str, id: &NotificationId) -> NodeError {
    NodeError::Conflict(format!(
        "idempotency key `{key}` was already used for another notification ({id}); a retry must \
         send the same notification, and a new notification needs a new key"
    ))
}

enum Sealing {
    /// The idempotency key was seen: the earlier publish's id and origin seq.
    Duplicate(NotificationId, u64),
    /// A publish with the same idempotency key is not durable yet: its id and origin seq, and
    /// what says whether it became durable.
    InFlight(NotificationId, u64, watch::Receiver<Option<bool>>),
    Sealed(Box<Sealed>),
}

/// Idempotency keys of publishes not yet durable: (id, origin seq, content digest, whether it
/// became durable).
type InFlightKeys =
    Arc<Mutex<HashMap<String, (NotificationId, u64, [u8; 32], watch::Receiver<Option<bool>>)>>>;

/// An idempotency key in flight; dropping it takes the key out of the map and tells every
/// retry that waited whether the publish became durable.
struct KeyInFlight {
    map: InFlightKeys,
    key: String,
    done: watch::Sender<Option<bool>>,
    durable: bool,
}

impl std::fmt::Debug for KeyInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyInFlight")
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl Drop for KeyInFlight {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        self.done.send_replace(Some(self.durable));
    }
}

/// What a publish answers once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The notification's id.
    pub id: NotificationId,
    /// Its per-origin sequence number.
    pub seq: u64,
    /// Whether this answers a retry of an earlier publish with the same idempotency key.
    pub duplicate: bool,
    /// The nodes it was queued for (empty for a retry).
    pub destinations: Vec<NodeId>,
    /// Audience entries that match no node of the roster (empty for a retry).
    pub unmatched_audience: Vec<String>,
    /// Of `destinations`, those no route reaches when it was published: their copies wait
    /// here until one opens.
    pub unrouted: Vec<NodeId>,
}

impl Published {
    /// The answer to a retry of a publish that is durable: the same id and sequence number.
    fn retry(id: NotificationId, seq: u64) -> Published {
        Published {
            id,
            seq,
            duplicate: true,
            destinations: Vec::new(),
            unmatched_audience: Vec::new(),
            unrouted: Vec::new(),
        }
    }
}

/// A retry of a publish still in flight: the same answer once that one is durable, or an
/// error to retry again if it failed.
async fn in_flight(
    id: NotificationId,
    seq: u64,
    mut done: watch::Receiver<Option<bool>>,
) -> Result<Published, NodeError> {
    match done.wait_for(Option::is_some).await.map(|v| *v) {
        Ok(Some(true)) => Ok(Published::retry(id, seq)),
        _ => Err(NodeError::Aborted(
            "the first publish with this idempotency key failed; retry with the same key".into(),
        )),
    }
}

/// A batch submitted to the group commit ([`Node::submit_numbered`]), to await with
/// [`Node::wait_commit`].
#[derive(Debug)]
pub struct Submitted {
    receipt: Receipt,
    change: IndexChange,
}

/// What a submitted batch changed in the in-memory outbox index before it was durable.
#[derive(Debug, Default, PartialEq)]
struct IndexChange {
    added: Vec<(NodeId, u64)>,
    removed: Vec<(NodeId, u64)>,
}

/// Takes `seq` out of `dest`'s queue in the outbox index (dropping the queue when it empties);
/// whether it was there.
fn unqueue(index: &mut HashMap<NodeId, BTreeSet<u64>>, dest: &NodeId, seq: u64) -> bool {
    let Some(queued) = index.get_mut(dest) else {
        return false;
    };
    let was = queued.remove(&seq);
    if queued.is_empty() {
        index.remove(dest);
    }
    was
}

impl IndexChange {
    /// Undoes the change on `index`.
    fn revert(&self, index: &mut HashMap<NodeId, BTreeSet<u64>>) {
        for (dest, seq) in &self.added {
            unqueue(index, dest, *seq);
        }
        for (dest, seq) in &self.removed {
            index.entry(dest.clone()).or_default().insert(*seq);
        }
    }
}

/// A publish whose writes are queued for the group commit.
#[derive(Debug)]
pub struct PendingPublish {
    receipt: Submitted,
    id: NotificationId,
    seq: u64,
    kind: tidewire_core::Kind,
    destinations: Vec<NodeId>,
    unmatched_audience: Vec<String>,
    key_guard: Option<KeyInFlight>,
}

/// One notification's outcome in [`Node::publish_batch`], to await with
/// [`Node::publish_outcome`].
#[derive(Debug)]
pub enum PublishOutcome {
    /// Answered already: a duplicate or an error.
    Done(Result<Published, NodeError>),
    /// A retry of a publish still in flight: answered when that one is durable.
    InFlight(NotificationId, u64, watch::Receiver<Option<bool>>),
    /// Queued; durable when its commit is.
    Pending(PendingPublish),
}

/// A copy ready to go to a peer once its custody entry is signed ([`Node::sign_round`]), with its
/// ledger record.
#[derive(Debug)]
pub struct Prepared {
    /// The envelope after policy, its custody entry appended but not yet signed.
    pub env: envelope::Envelope,
    /// The origin's consent, when the destination is outside the audience.
    pub grant: Vec<u8>,
    /// The `transfer` ledger entry.
    pub entry: LedgerEntry,
    /// How many fields the policy withheld (counted by [`Node::tally_sent`] when it is sent).
    pub withheld: u64,
}

/// Why an outbox item was not sent; it is resolved (removed) with this ledger entry.
#[derive(Debug)]
pub struct Skipped {
    /// The ledger entry recording why. `None`: nothing was decided, because the copy could not
    /// be read (a store error that may pass); the item stays queued ([`Skipped::keeps_item`]).
    pub entry: Option<Box<LedgerEntry>>,
    /// The counter it adds to (see [`Node::tally_skipped`]).
    pub tally: Option<SkipTally>,
}

impl Skipped {
    /// Whether the outbox item must stay queued and be tried again, rather than be resolved.
    pub fn keeps_item(&self) -> bool {
        self.entry.is_none()
    }
}

/// The counter a skipped outbox item adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipTally {
    /// The notification expired.
    Expired,
    /// The policy, the audience or a missing consent denied it.
    Denied,
    /// Larger than the next hop accepts.
    TooLargeForPeer,
}

/// The reason recorded, and counted under `refused`, for a copy larger than its next hop accepts.
pub const TOO_LARGE_FOR_PEER: &str = "too_large_for_peer";

/// What signing a custody round adds to a prepared envelope at most (signature, key id, round
/// place and proof), counted when checking a copy against its next hop's size limit.
const SIGNING_SLACK: usize = 1024;

/// At most this many copies wait, prepared ahead, for their send loop (see [`Node::take_ahead`]).
const AHEAD_MAX: usize = 1024;

/// Copies are prepared ahead only while fewer than this many items are queued for their
/// destination: that is when the commit saved is most of the latency. Under a backlog the send
/// loop prepares whole rounds, and one commit records each round.
const AHEAD_QUEUE_MAX: usize = 64;

/// Something prepared ahead whose commit is not durable after this long (a failing disk) is
/// dropped, and the work done as usual.
const GATE_MAX: Duration = Duration::from_secs(30);

/// A copy prepared ahead that no send loop took within this long is dropped when room is needed.
const AHEAD_STALE: Duration = Duration::from_secs(60);

/// Something prepared ahead of the commit that records it (a copy for a next hop, a delivery
/// to a live subscription), usable once the commit thread raises that commit's flag: what it
/// carries leaves only after its record is on disk.
#[derive(Debug)]
pub(crate) struct Gated<T> {
    value: T,
    durable: Arc<AtomicBool>,
    since: Instant,
}

impl<T> Gated<T> {
    pub(crate) fn new(value: T, durable: Arc<AtomicBool>) -> Gated<T> {
        Gated {
            value,
            durable,
            since: Instant::now(),
        }
    }

    /// What its taker does with it, if it still `wants` it.
    fn verdict(&self, wanted: bool) -> Verdict {
        if !wanted {
            Verdict::Drop
        } else if self.durable.load(Ordering::Acquire) {
            Verdict::Take
        } else if self.since.elapsed() < GATE_MAX {
            Verdict::Wait
        } else {
            Verdict::Drop
        }
    }
}

/// A copy prepared ahead for its next hop, with that hop.
type AheadCopy = Gated<(NodeId, Prepared)>;

/// What a taker does with something prepared ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Use it: its record is durable.
    Take,
    /// Not yet: its record is not durable.
    Wait,
    /// Do the work afresh: it is not wanted any more (a copy for another peer), or its commit
    /// never became durable.
    Drop,
}

/// What a loop finds prepared ahead for its next item (see [`take_gated`]).
#[derive(Debug)]
pub enum Taken<T> {
    /// Nothing prepared: do the work and record it.
    None,
    /// Prepared, but its record is not durable yet: wait and look again.
    Pending,
    /// Prepared and recorded: use it.
    Ready(Box<T>),
}

/// Takes what `map` holds prepared ahead under `key`, if its record is durable and `wanted`
/// says it still serves, counting it in `taken`; drops it if it no longer serves or its commit
/// never became durable.
pub(crate) fn take_gated<K: std::hash::Hash + Eq, T>(
    map: &mut HashMap<K, Gated<T>>,
    key: &K,
    wanted: impl FnOnce(&T) -> bool,
    taken: &AtomicU64,
) -> Taken<T> {
    let Some(g) = map.get(key) else {
        return Taken::None;
    };
    match g.verdict(wanted(&g.value)) {
        Verdict::Wait => Taken::Pending,
        Verdict::Drop => {
            map.remove(key);
            Taken::None
        }
        Verdict::Take => match map.remove(key) {
            Some(g) => {
                taken.fetch_add(1, Ordering::Relaxed);
                Taken::Ready(Box::new(g.value))
            }
            None => Taken::None,
        },
    }
}

/// The outcome of one incoming transfer.
#[derive(Debug, Clone)]
pub enum Received {
    /// Stored (or a duplicate), acknowledged.
    Accepted,
    /// Refused with a reason label and detail; acknowledged so it is not resent.
    Refused(String, String),
}

/// A consent request as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// Request id.
    pub id: String,
    /// Notification id.
    pub notification: String,
    /// The relay asking.
    pub requester: String,
    /// The destination outside the audience.
    pub destination: String,
    /// At the origin: pending, granted, refused. At the relay: held, released, refused,
    /// expired, or dropped (its destination left the federation).
    pub state: String,
    /// Kind.
    pub kind: String,
    /// Case reference.
    pub case_ref: String,
    /// When asked.
    pub at_ms: i64,
    /// At the relay: the origin asked (to re-send the request until it answers).
    #[serde(default)]
    pub origin: String,
    /// At the relay: the reason given, sent again with every retry.
    #[serde(default)]
    pub reason: String,
}

impl ConsentRecord {
    /// The write that stores this record in `space` (`Held` at a relay, `Consent` at the
    /// origin), keyed by its id.
    pub fn put(&self, space: Space) -> Op {
        Op::put(
            space,
            self.id.as_bytes().to_vec(),
            serde_json::to_vec(self).unwrap_or_default(),
        )
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::ConsentItem {
        pb::ConsentItem {
            id: self.id.clone(),
            notification: self.notification.clone(),
            requester: self.requester.clone(),
            destination: self.destination.clone(),
            state: self.state.clone(),
            kind: self.kind.clone(),
            case_ref: self.case_ref.clone(),
            at_ms: self.at_ms,
        }
    }
}

/// What a roster must hold for this node to run on it: this node, with the signing key it
/// signs with; every node it has a `[[link]]` to; and a pin for this node's own TLS
/// certificate (or, unpinned, a certificate naming this node). Checked at start and before a
/// reloaded roster replaces the one in force.
fn check_roster(
    cfg: &NodeConfig,
    links: &[NodeId],
    roster: &Roster,
    key: &SigningKey,
    tls: &TlsMaterial,
) -> Result<(), NodeError> {
    let entry = roster.get(cfg.id.as_str()).ok_or_else(|| {
        NodeError::Config(format!(
            "{}: node `{}` is not in the roster; add it with `tidewire keys generate`",
            cfg.roster.display(),
            cfg.id
        ))
    })?;
    if !entry.keys.iter().any(|k| k.key_id == key.key_id()) {
        return Err(NodeError::Config(format!(
            "{}: the signing key {} is not one of node `{}`'s keys in the roster {}",
            cfg.signing_key.display(),
            key.key_id(),
            cfg.id,
            cfg.roster.display()
        )));
    }
    // A link to a node the roster does not have could never come up: its certificate and
    // announcements would be refused.
    if let Some(peer) = links.iter().find(|p| roster.get(p.as_str()).is_none()) {
        let known: Vec<&str> = roster
            .nodes()
            .map(|n| n.id.as_str())
            .filter(|n| *n != cfg.id.as_str())
            .collect();
        return Err(NodeError::Config(format!(
            "a [[link]] names `{peer}`, which is not in the roster {} (it has {}); add the \
             node to the roster or remove the link",
            cfg.roster.display(),
            known.join(", ")
        )));
    }
    // This node's own certificate, as its peers check it: by the roster's pin if there is
    // one, else by the name it carries. Another would have every link refused.
    if let Some(der) = crate::tls::pem_cert_der(&tls.cert_pem) {
        match entry.tls_cert_sha256 {
            Some(pin) if pin != crate::tls::cert_sha256(&der) => {
                return Err(NodeError::Config(format!(
                    "{}: not the certificate the roster {} pins for `{}`; use the one issued \
                     for this node, or update the roster's tls_cert_sha256 on every node",
                    cfg.tls_cert.display(),
                    cfg.roster.display(),
                    cfg.id
                )));
            }
            Some(_) => {}
            None => {
                let own = crate::tls::node_dns_name(cfg.id.as_str());
                let named = crate::tls::cert_dns_name(&der);
                if named.as_deref() != Some(own.as_str()) {
                    return Err(NodeError::Config(format!(
                        "{}: this certificate names {}, not `{own}`; use the certificate \
                         issued for node `{}`",
                        cfg.tls_cert.display(),
                        named.map_or("no node".to_owned(), |n| format!("`{n}`")),
                        cfg.id
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Shared state of a running node.
pub struct Node {
    /// Configuration.
    pub cfg: NodeConfig,
    /// This node as a policy party.
    pub me: Party,
    key: SigningKey,
    /// The federation roster, replaced whole by [`Node::reload_roster`].
    roster: RwLock<Arc<Roster>>,
    /// TLS material.
    pub tls: TlsMaterial,
    /// The store.
    pub store: Arc<dyn Store>,
    committer: Committer,
    /// Idempotency keys of publishes not yet durable.
    idempotent: InFlightKeys,
    policy: RwLock<Option<(Arc<Policy>, Arc<str>)>>,
    /// Routing view.
    pub routing: Mutex<Routing>,
    /// Link state per configured or connected peer.
    pub links: Mutex<BTreeMap<NodeId, LinkInfo>>,
    /// Bumped when outboxes gain items or routes change.
    pub outbox_changed: watch::Sender<u64>,
    /// Bumped when the local feed grows.
    pub feed_changed: watch::Sender<u64>,
    /// Counters.
    pub counters: Counters,
    origin_seq: AtomicU64,
    outbox_seq: AtomicU64,
    /// Next local feed sequence number.
    pub feed_seq: AtomicU64,
    ledger: Mutex<ledger::Head>,
    /// Last link-state sequence number announced.
    pub ls_seq: AtomicU64,
    started: Instant,
    /// Root of the shutdown tree.
    pub shutdown: CancellationToken,
    /// Fired before `shutdown` on a graceful stop: links send nothing new and wait for the
    /// acknowledgements of what they sent (see `server::Running::stop`).
    pub draining: CancellationToken,
    /// Transfers sent on every link and not yet acknowledged.
    pub in_flight: AtomicU64,
    /// Every spawned task.
    pub tracker: TaskTracker,
    /// The user table.
    pub users: Users,
    publish_bucket: Mutex<(Instant, f64)>,
    /// Live link sessions.
    pub sessions: crate::link::Sessions,
    /// The dial loop of each link this node dials, to stop when the link goes or moves.
    pub(crate) dials: Mutex<HashMap<NodeId, CancellationToken>>,
    /// Route patterns of live subscriptions, with reference counts.
    pub live_interests: Mutex<BTreeMap<String, usize>>,
    /// Durable subscriptions connected now (by cursor key), with how many streams each has:
    /// these are never ended for idleness.
    pub live_durables: Mutex<BTreeMap<Vec<u8>, usize>>,
    /// The stream that currently reads each durable subscription, to end it when a newer
    /// stream takes the subscription over or the subscription is ended.
    pub durable_readers: Mutex<HashMap<Vec<u8>, Arc<crate::subscribe::DurableReader>>>,
    /// Held by a durable subscription while it connects (registers, reads its cursor, records
    /// its interest) and by the idle expiry while it decides and commits: a subscriber that
    /// connects as its subscription is being ended either keeps it or starts a new one, never
    /// a half-ended one.
    pub durable_turn: tokio::sync::Mutex<()>,
    /// The route interests carried by the last link-state announcement sent to every session.
    pub announced_interests: Mutex<Vec<String>>,
    /// Ids of routed control messages already handled.
    pub routed_seen: Mutex<std::collections::HashSet<Vec<u8>>>,
    /// When each held consent request last reached the next hop towards its origin.
    pub consent_sent: Mutex<std::collections::HashMap<String, Instant>>,
    /// Seen-set keys claimed by ingests whose commit is still in flight (see [`Claims`]).
    claimed: Mutex<HashSet<Vec<u8>>>,
    /// Recently stored copies, decoded (see [`CopyCache`]).
    copies: CopyCache,
    /// What each role may see of recent copies (see [`Node::filtered_for`]).
    filtered: Mutex<FilteredCache>,
    /// The outbox sequence numbers queued per destination, kept in step with the store where
    /// outbox writes are submitted, so that a status call counts a backlog without reading it.
    outbox_index: Mutex<HashMap<NodeId, BTreeSet<u64>>>,
    /// Copies prepared ahead for their next hop (with that hop), by (destination, outbox
    /// sequence number).
    ahead: Mutex<HashMap<(NodeId, u64), AheadCopy>>,
    /// Live subscriptions, and deliveries prepared ahead for them.
    pub(crate) live_subs: Mutex<crate::subscribe::LiveSubs>,
}

/// What the policy lets subscribers with one role at this node see of one copy: the same for
/// all of them, so it is computed once per (copy, role) and policy.
#[derive(Debug)]
pub struct Filtered {
    /// The policy (content hash) that decided.
    pub policy_hash: String,
    /// The rule that allowed it.
    pub rule: String,
    /// The body the role may see, as JSON.
    pub fields_json: String,
    /// What the role does not see: withheld on the way, or redacted here.
    pub withheld: Vec<pb::WithheldInfo>,
    /// The custody path.
    pub path: Vec<String>,
}

/// (copy key, role) → what that role may see of the copy.
type FilteredCache = HashMap<(Vec<u8>, String), Arc<Filtered>>;

/// How many (copy, role) views [`Node::filtered_for`] keeps before it starts again.
const FILTERED_CAPACITY: usize = 8_192;

/// A stored copy, decoded and inspected once.
#[derive(Debug)]
pub struct Copy {
    /// The envelope as stored.
    pub env: envelope::Envelope,
    /// Its view (signatures were checked when it was received or sealed here).
    pub view: envelope::VerifiedView,
    /// When this node received it from a peer (Unix ms), or published it.
    pub received_at_ms: i64,
}

/// One destination's queue on this node (see [`Node::queues`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// The destination.
    pub dest: NodeId,
    /// Copies queued for it.
    pub queued: u64,
    /// The peer the routing table sends them to; None when no route reaches the destination.
    pub next_hop: Option<NodeId>,
    /// When the one queued first reached this node (Unix ms), if it can be read.
    pub oldest_ms: Option<i64>,
}

/// The copies this node stored most recently, decoded, keyed like [`Space::Notifications`].
/// Egress and local delivery read a copy within milliseconds of storing it; this spares them
/// the store read, the decoding and the digest recomputation. It is only a cache of the store:
/// every delete of a stored copy (recall, expiry, retention) goes through
/// [`Node::submit_numbered`], which evicts the key before the delete is queued, and a miss
/// falls back to the store.
#[derive(Debug, Default)]
struct CopyCache {
    inner: Mutex<CopyMap>,
}

/// Why [`Node::stored_copy`] has no copy to give.
#[derive(Debug)]
pub enum NoCopy {
    /// Not stored (never, or deleted: recalled, expired, retention).
    Missing,
    /// Stored but does not decode.
    Corrupt,
    /// The store could not be read.
    Store(tidewire_store::StoreError),
}

/// Copies by key, and keys in insertion order (the oldest is evicted first).
type CopyMap = (
    std::collections::HashMap<Vec<u8>, Arc<Copy>>,
    std::collections::VecDeque<Vec<u8>>,
);

/// How many decoded copies [`CopyCache`] keeps (about 10 KiB each for a 40-field notification).
const COPY_CACHE: usize = 4096;

impl CopyCache {
    fn insert(&self, key: Vec<u8>, copy: Arc<Copy>) {
        let mut evicted = Vec::new();
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let (map, order) = &mut *g;
            if map.insert(key.clone(), copy).is_none() {
                order.push_back(key);
            }
            while order.len() > COPY_CACHE {
                if let Some(old) = order.pop_front() {
                    evicted.extend(map.remove(&old));
                }
            }
        }
        // Freeing a decoded copy (a hundred allocations or so) is done without the lock held.
        drop(evicted);
    }

    fn get(&self, key: &[u8]) -> Option<Arc<Copy>> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(key).cloned()
    }

    fn evict(&self, key: &[u8]) {
        let old = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .remove(key);
        drop(old);
    }
}

/// Seen-set keys one ingest claimed; released when it is dropped (after its commit, or on
/// failure). While a key is claimed, a concurrent ingest of the same notification from another
/// peer treats it as a duplicate: without this, two copies arriving at once over two links both
/// passed the seen-set check before either was committed, and both were delivered.
struct Claims {
    node: Arc<Node>,
    keys: Vec<Vec<u8>>,
}

impl Claims {
    /// Whether `key` is already seen (on disk) or claimed.
    fn seen(&self, key: &[u8]) -> Result<bool, NodeError> {
        let claimed = self.node.claimed.lock().unwrap_or_else(|p| p.into_inner());
        Ok(claimed.contains(key) || self.node.store.contains(Space::Seen, key)?)
    }

    /// Claims `key` unless it is already seen (on disk) or claimed; returns whether it was new.
    fn claim(&mut self, key: Vec<u8>) -> Result<bool, NodeError> {
        let mut claimed = self.node.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if claimed.contains(&key) || self.node.store.contains(Space::Seen, &key)? {
            return Ok(false);
        }
        claimed.insert(key.clone());
        self.keys.push(key);
        Ok(true)
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mut claimed = self.node.claimed.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            claimed.remove(k);
        }
    }
}

/// A verified receive batch whose writes are queued for the group commit (see
/// [`Node::ingest_submit`]). Its seen-set claims hold until it is durable.
#[must_use = "a pending ingest must be finished before it is acknowledged"]
pub struct PendingIngest {
    receipt: Submitted,
    claims: Claims,
    out: Vec<Received>,
    delivered: u64,
    queued: bool,
}

impl std::fmt::Debug for PendingIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingIngest")
            .field("transfers", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl PendingIngest {
    /// Waits until the batch is durable; returns one outcome per transfer, in order.
    pub async fn finish(self) -> Result<Vec<Received>, NodeError> {
        let PendingIngest {
            receipt,
            claims,
            out,
            delivered,
            queued,
        } = self;
        let node = claims.node.clone();
        node.wait_commit(receipt).await?;
        drop(claims);
        if delivered > 0 {
            node.counters
                .delivered
                .fetch_add(delivered, Ordering::Relaxed);
            node.feed_changed.send_modify(|v| *v += 1);
        }
        if queued {
            node.bump_outbox();
        }
        Ok(out)
    }
}

/// Outbox items and feed entries of one commit, whose keys are numbered when it is submitted
/// (see [`Node::commit_numbered`]). Every write to the outbox or the feed goes through this.
#[derive(Debug, Default)]
pub struct Numbered {
    /// (destination, item) for the outbox.
    pub outbox: Vec<(NodeId, OutboxItem)>,
    /// Stored-notification keys for the local feed.
    pub feed: Vec<Vec<u8>>,
    /// Copies prepared ahead: (index into `outbox`, next hop, the copy). Their
    /// `transfer` records are among the batch's ledger entries.
    pub(crate) ahead: Vec<(usize, NodeId, Prepared)>,
    /// Deliveries to live subscriptions prepared ahead for `feed`; their `delivered` records
    /// are among the batch's ledger entries.
    pub(crate) feed_ahead: Vec<crate::subscribe::PendingDelivery>,
}

/// One link's state, for status.
#[derive(Debug, Clone, Default)]
pub struct LinkInfo {
    /// Connected now.
    pub up: bool,
    /// Last error.
    pub last_error: String,
    /// Configured URL (empty for links the peer dials).
    pub url: String,
    /// The largest envelope the peer accepts, from its hello (0: not said).
    pub max_message_bytes: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.me.node)
            .finish_non_exhaustive()
    }
}

pub(crate) fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap_or([0; 8]))
}

/// Who publishes: the label its ledger entries carry and the route patterns it may publish on.
#[derive(Debug, Clone, PartialEq)]
pub struct Author {
    /// `user:NAME` for a client, or what an in-process caller names itself.
    pub label: String,
    /// The route patterns every route of its notifications must match; `None`: any route.
    pub routes: Option<Vec<RoutePattern>>,
}

impl Author {
    /// An author who may publish on any route (in-process callers, tools).
    pub fn anyone(label: impl Into<String>) -> Author {
        Author {
            label: label.into(),
            routes: None,
        }
    }

    /// A client of the user table: on the routes its entry allows.
    pub fn user(u: &crate::users::User) -> Author {
        Author {
            label: format!("user:{}", u.name),
            routes: Some(u.routes.clone()),
        }
    }

    /// Refuses a notification with a route none of this author's patterns matches.
    fn may_publish_on(&self, routes: &[Route]) -> Result<(), NodeError> {
        let Some(allowed) = &self.routes else {
            return Ok(());
        };
        match routes
            .iter()
            .find(|r| !allowed.iter().any(|p| p.matches(r)))
        {
            None => Ok(()),
            Some(r) => Err(NodeError::PermissionDenied(format!(
                "{} may publish only on the routes {}, and `{r}` is not one of them; publish \
                 on those routes, or have this node's administrator widen the client's routes \
                 in users.toml",
                self.label,
                allowed
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// What [`Node::reload_roster`] changed: node ids added, removed, and changed (keys,
/// certificate pin, country or organisation). All empty: the roster was the one in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RosterReload {
    /// Nodes new to the roster.
    pub added: Vec<String>,
    /// Nodes no longer in it.
    pub removed: Vec<String>,
    /// Nodes whose entry changed.
    pub changed: Vec<String>,
    /// Link sessions ended, to be opened again under the new roster.
    pub sessions_ended: usize,
}

impl RosterReload {
    /// Whether anything changed.
    pub fn is_change(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

impl Node {
    /// Loads keys, roster, TLS material, policy and users, then opens the store with
    /// `open_store`: a file that is wrong is reported before anything is written to disk.
    pub fn open(
        cfg: NodeConfig,
        open_store: impl FnOnce() -> Result<Arc<dyn Store>, NodeError>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Node>, NodeError> {
        let key = SigningKey::load(&cfg.signing_key)?;
        let roster = Roster::load(&cfg.roster)?;
        let tls = TlsMaterial::load(&cfg.tls_ca, &cfg.tls_cert, &cfg.tls_key)?;
        let peers: Vec<NodeId> = cfg.links.iter().map(|(p, _)| p.clone()).collect();
        check_roster(&cfg, &peers, &roster, &key, &tls)?;
        let policy = match &cfg.policy {
            Some(p) => {
                let pol = Policy::load(p).map_err(|e| NodeError::Config(e.to_string()))?;
                let text = std::fs::read_to_string(p).unwrap_or_default();
                Some((Arc::new(pol), text))
            }
            None => {
                tracing::warn!("no policy configured: every egress is denied (default deny)");
                None
            }
        };
        let users = Users::open(cfg.users.clone())?;
        let store = open_store()?;
        let meta_u64 = |k: &str| -> Result<u64, NodeError> {
            Ok(store
                .get(Space::Meta, k.as_bytes())?
                .map(|v| be_u64(&v))
                .unwrap_or(0))
        };
        let origin_seq = meta_u64("origin_seq")?;
        // After the last entry, or after the last one trimmed if retention took them all.
        let feed_seq = store
            .last(Space::Feed, b"")?
            .map(|(k, _)| be_u64(&k))
            .unwrap_or(0)
            .max(meta_u64(FEED_TRIMMED)?);
        // Outbox queues are per destination (`dest ‖ 0 ‖ seq`). Their keys, read a page at a
        // time, give the outbox index, and its greatest number the one to continue from.
        let mut outbox_index: HashMap<NodeId, BTreeSet<u64>> = HashMap::new();
        let indexing = Instant::now();
        each_page(store.as_ref(), Space::Outbox, 4096, |page| {
            for (dest, seq) in page.iter().filter_map(|(k, _)| parse_outbox_key(k)) {
                outbox_index.entry(dest).or_default().insert(seq);
            }
            Ok(())
        })?;
        let outbox_seq = outbox_index
            .values()
            .filter_map(|q| q.last().copied())
            .max()
            .unwrap_or(0);
        let backlog: usize = outbox_index.values().map(BTreeSet::len).sum();
        if backlog > 0 {
            tracing::info!(
                backlog,
                ms = indexing.elapsed().as_millis() as u64,
                "outbox backlog indexed"
            );
        }
        index_expiry(store.as_ref(), &cfg.id, cfg.retention_ms())?;
        let head = ledger::Head::load(store.as_ref())?;
        let committer = Committer::start(store.clone());
        let me = Party::peer(cfg.id.clone(), cfg.country, cfg.org.clone());
        let mut links = BTreeMap::new();
        for (peer, url) in &cfg.links {
            links.insert(
                peer.clone(),
                LinkInfo {
                    url: url.clone(),
                    ..Default::default()
                },
            );
        }
        Ok(Arc::new(Node {
            routing: Mutex::new(Routing::new(cfg.id.clone())),
            me,
            key,
            roster: RwLock::new(Arc::new(roster)),
            tls,
            store,
            committer,
            idempotent: InFlightKeys::default(),
            policy: RwLock::new(policy.map(|(p, t): (Arc<Policy>, String)| (p, Arc::from(t)))),
            links: Mutex::new(links),
            outbox_changed: watch::channel(0).0,
            feed_changed: watch::channel(0).0,
            counters: Counters::default(),
            origin_seq: AtomicU64::new(origin_seq),
            outbox_seq: AtomicU64::new(outbox_seq),
            feed_seq: AtomicU64::new(feed_seq),
            ledger: Mutex::new(head),
            ls_seq: AtomicU64::new(timefmt::now_ms() as u64),
            started: Instant::now(),
            shutdown,
            draining: CancellationToken::new(),
            in_flight: AtomicU64::new(0),
            tracker: TaskTracker::new(),
            users,
            publish_bucket: Mutex::new((Instant::now(), 0.0)),
            sessions: crate::link::Sessions::default(),
            dials: Mutex::new(HashMap::new()),
            announced_interests: Mutex::new(Vec::new()),
            routed_seen: Mutex::new(std::collections::HashSet::new()),
            consent_sent: Mutex::new(std::collections::HashMap::new()),
            live_interests: Mutex::new(BTreeMap::new()),
            live_durables: Mutex::new(BTreeMap::new()),
            durable_readers: Mutex::new(HashMap::new()),
            durable_turn: tokio::sync::Mutex::new(()),
            claimed: Mutex::new(HashSet::new()),
            copies: CopyCache::default(),
            outbox_index: Mutex::new(outbox_index),
            ahead: Mutex::new(HashMap::new()),
            live_subs: Mutex::new(crate::subscribe::LiveSubs::default()),
            filtered: Mutex::new(HashMap::new()),
            cfg,
        }))
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.me.node
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The view `role` may have of the copy stored under `note`, decided under the policy whose
    /// content hash is `policy_hash`: computed by `compute` at most once per (copy, role) and
    /// policy, so that a hundred subscribers sharing a role cost one policy evaluation and one
    /// body, not a hundred. `None` when the policy denies the role.
    pub fn filtered_for(
        &self,
        note: &[u8],
        role: &str,
        policy_hash: &str,
        compute: impl FnOnce() -> Option<Filtered>,
    ) -> Option<Arc<Filtered>> {
        let key = (note.to_vec(), role.to_owned());
        if let Some(f) = self
            .filtered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|f| f.policy_hash == policy_hash)
        {
            return Some(f.clone());
        }
        let f = Arc::new(compute()?);
        let mut cache = self.filtered.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= FILTERED_CAPACITY {
            cache.clear();
        }
        cache.insert(key, f.clone());
        Some(f)
    }

    /// Whether the store's last group commit succeeded: false while writes are failing (disk
    /// full, I/O errors), when nothing can be accepted durably.
    pub fn store_writable(&self) -> bool {
        self.committer.healthy()
    }

    /// How long the store's group commits have taken to sync since the node started.
    pub fn commit_stats(&self) -> tidewire_store::CommitStats {
        self.committer.stats()
    }

    /// Seconds since start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The policy in force and its text.
    pub fn policy(&self) -> Option<(Arc<Policy>, Arc<str>)> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts the policy `text` in force, recording it (and the one it replaces) on the ledger.
    /// Returns the new policy and the one it replaced, if any.
    pub async fn apply_policy(
        &self,
        text: &str,
        by: &str,
    ) -> Result<(Arc<Policy>, Option<Arc<Policy>>), NodeError> {
        let pol = Arc::new(Policy::parse(text).map_err(|e| {
            NodeError::Invalid(format!("policy refused, the old one stays in force: {e}"))
        })?);
        let mut e = LedgerEntry::new("policy_applied");
        e.policy_version = pol.content_hash().to_owned();
        e.destination = by.to_owned();
        // Swap first so that no transfer after the ledger record uses the old policy.
        let old = self
            .policy
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace((pol.clone(), Arc::from(text)))
            .map(|(p, _)| p);
        e.detail = serde_json::json!({"version": pol.version()});
        if let Some(o) = &old {
            e.detail["replaces"] =
                serde_json::json!({"version": o.version(), "policy_version": o.content_hash()});
        }
        self.commit(Vec::new(), vec![e]).await?;
        tracing::info!(
            version = pol.version(),
            hash = pol.content_hash(),
            replaces = old.as_ref().map(|o| o.version()),
            "policy applied"
        );
        if let Some(o) = old
            .as_ref()
            .filter(|o| o.version() >= pol.version() && o.content_hash() != pol.content_hash())
        {
            tracing::warn!(
                version = pol.version(),
                replaces = o.version(),
                "the policy applied has a version not above the one it replaces; raise `version` on every change"
            );
        }
        self.bump_outbox();
        Ok((pol, old))
    }

    /// Commits `ops` plus ledger entries, durably, keeping the ledger chain in order.
    pub async fn commit(&self, ops: Vec<Op>, entries: Vec<LedgerEntry>) -> Result<(), NodeError> {
        self.commit_numbered(ops, Numbered::default(), entries)
            .await
    }

    /// [`Node::commit`], also writing outbox items and feed entries whose sequence numbers are
    /// taken here, under the lock that orders submissions. Outbox senders and subscriptions read
    /// with a cursor ("everything after the last key I saw"), so keys must become visible in key
    /// order: numbered earlier and committed later, an entry fell behind a cursor and was never
    /// sent or delivered (until the link reconnected, or never, for a feed).
    pub async fn commit_numbered(
        &self,
        ops: Vec<Op>,
        numbered: Numbered,
        entries: Vec<LedgerEntry>,
    ) -> Result<(), NodeError> {
        let receipt = self.submit_numbered(ops, numbered, entries);
        self.wait_commit(receipt).await
    }

    /// The first half of [`Node::commit_numbered`]: numbers and queues the batch now, so that
    /// batches are applied in the order they were submitted, and returns the receipt to await
    /// with [`Node::wait_commit`]. Lets a caller prepare its next batch while this one syncs.
    pub fn submit_numbered(
        &self,
        mut ops: Vec<Op>,
        mut numbered: Numbered,
        mut entries: Vec<LedgerEntry>,
    ) -> Submitted {
        self.prepare_ahead_of_commit(&mut numbered, &mut entries);
        let mut change = self.forget_deleted(&ops);
        let mut head = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = (!numbered.outbox.is_empty())
            .then(|| self.outbox_index.lock().unwrap_or_else(|p| p.into_inner()));
        let flag = (!numbered.ahead.is_empty() || !numbered.feed_ahead.is_empty())
            .then(|| Arc::new(AtomicBool::new(false)));
        let mut ahead = numbered.ahead.into_iter().peekable();
        let mut filed = flag
            .is_some()
            .then(|| self.ahead.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, (dest, item)) in numbered.outbox.into_iter().enumerate() {
            let oseq = self.outbox_seq.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(index) = index.as_mut() {
                index.entry(dest.clone()).or_default().insert(oseq);
                change.added.push((dest.clone(), oseq));
            }
            if let (Some((_, peer, prepared)), Some(filed), Some(flag)) = (
                ahead.next_if(|(at, ..)| *at == i),
                filed.as_mut(),
                flag.as_ref(),
            ) {
                filed.insert(
                    (dest.clone(), oseq),
                    Gated::new((peer, prepared), flag.clone()),
                );
            }
            ops.push(Op::put(
                Space::Outbox,
                outbox_key(&dest, oseq),
                item.encode(),
            ));
        }
        let mut feed_seqs = Vec::with_capacity(numbered.feed.len());
        for note in numbered.feed {
            let feed = self.feed_seq.fetch_add(1, Ordering::SeqCst) + 1;
            feed_seqs.push(feed);
            ops.push(Op::put(Space::Feed, feed.to_be_bytes().to_vec(), note));
        }
        drop(filed);
        if let Some(flag) = &flag {
            crate::subscribe::file_deliveries_ahead(self, numbered.feed_ahead, &feed_seqs, flag);
        }
        ops.extend(head.append_all(entries));
        let receipt = match flag {
            Some(flag) => self.committer.submit_flagged(ops, flag),
            None => self.committer.submit(ops),
        };
        Submitted { receipt, change }
    }

    /// Applies `ops` (which carry no ledger entries) in order with every other write, without
    /// waiting for a sync of their own: the next durable commit covers them. Only for writes
    /// whose loss in a crash merely repeats idempotent work (see [`Committer::submit_lazy`]).
    pub async fn commit_lazy(&self, ops: Vec<Op>) -> Result<(), NodeError> {
        let change = self.forget_deleted(&ops);
        if let Err(e) = Committer::wait(self.committer.submit_lazy(ops)).await {
            self.revert_index(&change);
            return Err(e.into());
        }
        Ok(())
    }

    /// Undoes a failed batch's changes to the outbox index: what it queued was never written,
    /// what it removed is still there.
    fn revert_index(&self, change: &IndexChange) {
        let mut index = self.outbox_index.lock().unwrap_or_else(|p| p.into_inner());
        change.revert(&mut index);
    }

    /// Drops the decoded copies that `ops` delete from the store, and the outbox items they
    /// delete from the outbox index. Removal is idempotent: an item acknowledged twice (sent
    /// again after a reconnect, before the first removal was applied) is counted once.
    fn forget_deleted(&self, ops: &[Op]) -> IndexChange {
        let mut change = IndexChange::default();
        let mut index = None;
        let mut gone = Vec::new();
        let mut feed = HashSet::new();
        for op in ops {
            match op {
                Op::Delete {
                    space: Space::Notifications,
                    key,
                } => self.copies.evict(key),
                Op::Delete {
                    space: Space::Outbox,
                    key,
                } => {
                    let Some((dest, seq)) = parse_outbox_key(key) else {
                        continue;
                    };
                    gone.push((dest.clone(), seq));
                    let index = index.get_or_insert_with(|| {
                        self.outbox_index.lock().unwrap_or_else(|p| p.into_inner())
                    });
                    if unqueue(index, &dest, seq) {
                        change.removed.push((dest, seq));
                    }
                }
                Op::Delete {
                    space: Space::Feed,
                    key,
                } => {
                    feed.insert(be_u64(key));
                }
                _ => {}
            }
        }
        // Copies and deliveries prepared ahead for items recalled, purged or resolved go with
        // them (after the index lock is released: `submit_numbered` takes the two in the other
        // order).
        drop(index);
        if !gone.is_empty() {
            let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            if !ahead.is_empty() {
                for k in &gone {
                    ahead.remove(k);
                }
            }
        }
        if !feed.is_empty() {
            crate::subscribe::forget_deliveries_ahead(self, &feed);
        }
        change
    }

    /// The second half of [`Node::commit_numbered`]: waits until the batch is durable.
    pub async fn wait_commit(&self, submitted: Submitted) -> Result<(), NodeError> {
        if let Err(e) = Committer::wait(submitted.receipt).await {
            // Nothing of the batch landed: rewind the ledger head to what is on disk, so the
            // chain has no gap (skipped outbox and feed numbers are harmless), and take its
            // outbox items out of the index (and its removals back in), so that `status` does
            // not count phantoms.
            {
                let mut head = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
                if let Ok(h) = ledger::Head::load(self.store.as_ref()) {
                    *head = h;
                }
            }
            self.revert_index(&submitted.change);
            return Err(e.into());
        }
        Ok(())
    }

    /// What the send loop towards `peer` finds prepared ahead for outbox item `seq` of `dest`.
    ///
    /// A ready copy is sent as it was decided and recorded, even if a policy was applied since:
    /// like a send round whose records are written, its decision was taken and is on the
    /// ledger (and the ledger must not name a transfer that never happened). A copy prepared
    /// for another peer (the route changed meanwhile) is dropped and prepared afresh, and so is
    /// one whose commit is still not durable after [`GATE_MAX`].
    pub fn take_ahead(&self, peer: &NodeId, dest: &NodeId, seq: u64) -> Taken<Prepared> {
        let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        match take_gated(
            &mut ahead,
            &(dest.clone(), seq),
            |(p, _)| p == peer,
            &self.counters.sent_ahead,
        ) {
            Taken::Ready(copy) => Taken::Ready(Box::new(copy.1)),
            Taken::Pending => Taken::Pending,
            Taken::None => Taken::None,
        }
    }

    /// Prepares ahead what a batch queues and appends to the feed (every numbered batch, before
    /// the ledger lock is taken): the copies for next hops (see [`Node::prepare_ahead`]) and the deliveries to live
    /// subscriptions (see [`crate::subscribe::LiveSubs`]), recording their transfers and
    /// deliveries with the batch's own ledger entries.
    fn prepare_ahead_of_commit(&self, numbered: &mut Numbered, entries: &mut Vec<LedgerEntry>) {
        for (i, (d, item)) in numbered.outbox.iter().enumerate() {
            if let Some((peer, prepared)) = self.prepare_ahead(d, item) {
                entries.push(prepared.entry.clone());
                numbered.ahead.push((i, peer, prepared));
            }
        }
        numbered.feed_ahead =
            crate::subscribe::prepare_deliveries_ahead(self, &numbered.feed, entries);
    }

    /// Prepares the copy of a notification being published or relayed for `dest` ahead, when
    /// its next hop is connected and few items wait before it ([`AHEAD_QUEUE_MAX`]): its
    /// transfer is then recorded in the commit that stores and queues it, and its send loop
    /// signs and sends it without a commit of its own. Returns the next hop and the copy, or
    /// `None` to leave it to the send loop.
    fn prepare_ahead(&self, dest: &NodeId, item: &OutboxItem) -> Option<(NodeId, Prepared)> {
        let peer = self
            .routing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_hop(dest)?
            .clone();
        let up = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .is_some_and(|l| l.up);
        let queued = self
            .outbox_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dest)
            .map_or(0, BTreeSet::len);
        if !up || queued >= AHEAD_QUEUE_MAX || !self.room_ahead() {
            return None;
        }
        let prepared = self.prepare_egress(&peer, dest, item).ok()?;
        Some((peer, prepared))
    }

    /// Whether another copy may be prepared ahead. Copies nobody came for (their outbox item
    /// was purged or recalled first, or their commit failed) are dropped after a minute.
    fn room_ahead(&self) -> bool {
        let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        if ahead.len() >= AHEAD_MAX {
            ahead.retain(|_, g| g.since.elapsed() < AHEAD_STALE);
        }
        ahead.len() < AHEAD_MAX
    }

    /// Counts a copy sent: the fields its policy withheld.
    pub fn tally_sent(&self, p: &Prepared) {
        self.counters
            .withheld_fields
            .fetch_add(p.withheld, Ordering::Relaxed);
    }

    /// Counts an outbox item resolved without sending it.
    pub fn tally_skipped(&self, s: &Skipped) {
        let c = match s.tally {
            Some(SkipTally::Expired) => &self.counters.expired,
            Some(SkipTally::Denied) => &self.counters.denied,
            Some(SkipTally::TooLargeForPeer) => {
                self.counters.refuse(TOO_LARGE_FOR_PEER);
                return;
            }
            None => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes the largest envelope `peer` accepts, from its hello (0: it did not say).
    pub fn note_peer_limit(&self, peer: &NodeId, max_message_bytes: u64) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = links.get_mut(peer) {
            l.max_message_bytes = max_message_bytes;
        }
    }

    /// The largest envelope `peer` accepts, if it said.
    pub fn peer_limit(&self, peer: &NodeId) -> Option<usize> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .get(peer)
            .map(|l| l.max_message_bytes)
            .filter(|b| *b > 0)
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
    }

    /// Wakes every link sender.
    pub fn bump_outbox(&self) {
        self.outbox_changed.send_modify(|v| *v += 1);
    }

    /// The roster in force.
    pub fn roster(&self) -> Arc<Roster> {
        self.roster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The roster in force, identified as the policy is: `sha256:` and the first 16 hex
    /// digits of the SHA-256 of its canonical text.
    pub fn roster_sha256(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.roster().to_toml());
        format!("sha256:{}", hex::encode(&digest[..8]))
    }

    /// Reads the roster file again and, if it changed and this node can run on it (the checks
    /// of a start: this node with its signing key, every `[[link]]` peer, this node's
    /// certificate pin), puts it in force without a restart: a rotated key, a re-issued
    /// certificate or a new centre is recognised from the next message on. Every link
    /// session is then ended and opened again, so that a peer re-offers copies this node
    /// refused for a key or node it did not know yet, and a node taken out of the roster
    /// loses its link. A roster that fails a check changes nothing.
    pub fn reload_roster(&self) -> Result<RosterReload, NodeError> {
        let peers: Vec<NodeId> = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        self.reload_roster_for(&peers)
    }

    /// [`Node::reload_roster`], checked against the link peers `links` (those of a `node.toml`
    /// read again with it) instead of the links in force: a centre that leaves the federation
    /// goes from the roster and from its peers' `[[link]]`s in one reload.
    pub fn reload_roster_for(&self, links: &[NodeId]) -> Result<RosterReload, NodeError> {
        let new = Roster::load(&self.cfg.roster)?;
        check_roster(&self.cfg, links, &new, &self.key, &self.tls)?;
        let old = self.roster();
        let mut r = RosterReload::default();
        for n in new.nodes() {
            match old.get(n.id.as_str()) {
                None => r.added.push(n.id.to_string()),
                Some(o) if o != n => r.changed.push(n.id.to_string()),
                Some(_) => {}
            }
        }
        let gone: Vec<&NodeId> = old
            .nodes()
            .map(|o| &o.id)
            .filter(|id| new.get(id.as_str()).is_none())
            .collect();
        r.removed = gone.iter().map(|id| id.to_string()).collect();
        if r.is_change() {
            let mut routing = self.routing.lock().unwrap_or_else(|p| p.into_inner());
            for id in gone {
                routing.forget(id);
            }
            drop(routing);
            *self.roster.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
            r.sessions_ended = self.sessions.end_all();
        }
        Ok(r)
    }

    /// Drops the queued copies whose destination is no longer in the roster in force (a
    /// centre that left the federation): they could never be routed, and would stay in the
    /// backlog for ever. Copies held for consent to go to such a node are closed too. Each is
    /// recorded on the ledger as `dropped`, with the reason. Runs at start and after every
    /// roster reload; returns how many went.
    pub async fn drop_queued_for_departed(&self) -> Result<usize, NodeError> {
        let roster = self.roster();
        let departed: Vec<NodeId> = self
            .backlog_by_dest()
            .into_keys()
            .filter(|d| roster.get(d.as_str()).is_none())
            .collect();
        let dropped_entry = |id: &str, dest: &str| {
            let mut e = LedgerEntry::new("dropped");
            e.notification = id.to_owned();
            e.destination = format!("node:{dest}");
            e.detail = serde_json::json!({
                "reason": format!("`{dest}` is no longer in the federation roster"),
            });
            e
        };
        let mut total = 0;
        for dest in departed {
            let mut dropped = 0;
            let mut prefix = dest.as_str().as_bytes().to_vec();
            prefix.push(0);
            loop {
                let items = self.store.scan(Space::Outbox, &prefix, &prefix, 1024)?;
                if items.is_empty() {
                    break;
                }
                let mut ops = Vec::with_capacity(items.len());
                let mut entries = Vec::with_capacity(items.len());
                for (key, value) in items {
                    if let Some(item) = OutboxItem::decode(&value) {
                        entries.push(dropped_entry(&item.id.to_string(), dest.as_str()));
                    }
                    ops.push(Op::delete(Space::Outbox, key));
                }
                dropped += ops.len();
                self.commit(ops, entries).await?;
            }
            tracing::warn!(destination = %dest, dropped, "queued copies for a node no longer in the roster dropped");
            total += dropped;
        }
        // Copies held for the origin's consent to pass them on to such a node: closed, as a
        // refusal would close them, so that a late grant does not queue them again.
        for mut rec in self.held_items()? {
            if rec.state != "held" || roster.get(&rec.destination).is_some() {
                continue;
            }
            rec.state = "dropped".into();
            let e = dropped_entry(&rec.notification, &rec.destination);
            self.commit(vec![rec.put(Space::Held)], vec![e]).await?;
            total += 1;
        }
        Ok(total)
    }

    /// The roster nodes an audience covers, other than this node.
    pub fn audience_nodes(&self, header: &Header) -> BTreeSet<NodeId> {
        self.roster()
            .nodes()
            .filter(|n| n.id != self.me.node)
            .filter(|n| {
                header
                    .audience
                    .iter()
                    .any(|a| a.covers(&n.id, n.country, &n.org))
            })
            .map(|n| n.id.clone())
            .collect()
    }

    /// Whether this node is in the audience.
    pub fn in_audience(&self, header: &Header) -> bool {
        header
            .audience
            .iter()
            .any(|a| a.covers(&self.me.node, self.me.country, &self.me.org))
    }

    fn party(&self, node: &NodeId) -> Option<Party> {
        self.roster().get(node.as_str()).map(Party::from_roster)
    }

    fn take_publish_token(&self) -> bool {
        let rate = self.cfg.limits.publish_rate_per_s as f64;
        let mut b = self
            .publish_bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let tokens = (b.1 + now.duration_since(b.0).as_secs_f64() * rate).min(rate.max(1.0));
        if tokens < 1.0 {
            *b = (now, tokens);
            return false;
        }
        *b = (now, tokens - 1.0);
        true
    }

    /// Publishes a notification as origin: validate, seal, store durably, queue for every
    /// destination in its audience. Returns (id, origin seq, duplicate).
    pub async fn publish(
        &self,
        json: &str,
        idempotency_key: &str,
        by: &Author,
    ) -> Result<Published, NodeError> {
        let mut sealed = match self.publish_seal(json, idempotency_key, by)? {
            Sealing::Duplicate(id, seq) => return Ok(Published::retry(id, seq)),
            Sealing::InFlight(id, seq, done) => return in_flight(id, seq, done).await,
            Sealing::Sealed(s) => s,
        };
        envelope::sign_origin_round(&self.key, std::slice::from_mut(&mut sealed.env));
        let pending = self.publish_submit(sealed)?;
        self.publish_finish(pending).await
    }

    /// Publishes a stream's batch (a bulk publisher's notifications that arrived together): each
    /// is validated and sealed as [`Node::publish`] does, their headers are signed as one round
    /// ([`envelope::sign_origin_round`]: one signature, which every receiver verifies once), and
    /// their writes are queued for the group commit in the batch's order, which is the order
    /// they go out in. Returns one outcome per notification, in order, each to await.
    pub fn publish_batch(&self, reqs: &[(String, String)], by: &Author) -> Vec<PublishOutcome> {
        /// A notification of the batch: answered already, or sealed and waiting for the round.
        enum Slot {
            Answered(PublishOutcome),
            Sealed(Box<Sealed>),
        }
        let mut slots: Vec<Slot> = reqs
            .iter()
            .map(|(json, key)| match self.publish_seal(json, key, by) {
                Ok(Sealing::Duplicate(id, seq)) => {
                    Slot::Answered(PublishOutcome::Done(Ok(Published::retry(id, seq))))
                }
                Ok(Sealing::InFlight(id, seq, done)) => {
                    Slot::Answered(PublishOutcome::InFlight(id, seq, done))
                }
                Ok(Sealing::Sealed(s)) => Slot::Sealed(s),
                Err(e) => Slot::Answered(PublishOutcome::Done(Err(e))),
            })
            .collect();
        let mut envs: Vec<envelope::Envelope> = slots
            .iter_mut()
            .filter_map(|slot| match slot {
                Slot::Sealed(s) => Some(std::mem::take(&mut s.env)),
                Slot::Answered(_) => None,
            })
            .collect();
        envelope::sign_origin_round(&self.key, &mut envs);
        let mut signed = envs.into_iter();
        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Answered(o) => o,
                Slot::Sealed(mut s) => {
                    s.env = signed.next().expect("one signed envelope per sealed one");
                    match self.publish_submit(s) {
                        Ok(p) => PublishOutcome::Pending(p),
                        Err(e) => PublishOutcome::Done(Err(e)),
                    }
                }
            })
            .collect()
    }

    /// Awaits a [`PublishOutcome`]: the publish's answer once it is durable.
    pub async fn publish_outcome(&self, o: PublishOutcome) -> Result<Published, NodeError> {
        match o {
            PublishOutcome::Done(r) => r,
            PublishOutcome::InFlight(id, seq, done) => in_flight(id, seq, done).await,
            PublishOutcome::Pending(p) => self.publish_finish(p).await,
        }
    }

    /// The first step of a publish: checks the idempotency key, the rate and the author's
    /// routes, validates the JSON and seals it (unsigned).
    fn publish_seal(
        &self,
        json: &str,
        idempotency_key: &str,
        by: &Author,
    ) -> Result<Sealing, NodeError> {
        if idempotency_key.len() > 256 {
            return Err(NodeError::Invalid(
                "idempotency key is longer than 256 bytes".into(),
            ));
        }
        let n = Notification::from_json(json.as_bytes())?;
        by.may_publish_on(&n.routes)?;
        let content = (!idempotency_key.is_empty()).then(|| content_digest(&n));
        // Held while this publish is sealed: a retry that arrives meanwhile finds it in flight.
        let mut inflight = (!idempotency_key.is_empty())
            .then(|| self.idempotent.lock().unwrap_or_else(|p| p.into_inner()));
        if let (Some(map), Some(content)) = (inflight.as_ref(), content) {
            if let Some((id, seq, first, done)) = map.get(idempotency_key) {
                if *first != content {
                    return Err(key_reused(idempotency_key, id));
                }
                return Ok(Sealing::InFlight(*id, *seq, done.clone()));
            }
            if let Some(v) = self
                .store
                .get(Space::Idempotency, idempotency_key.as_bytes())?
            {
                let id = NotificationId::from_slice(&v[..16])
                    .map_err(|e| NodeError::Internal(e.to_string()))?;
                // Records from before content digests (24 bytes) are taken on trust.
                if v.len() >= 56 && v[24..56] != content {
                    return Err(key_reused(idempotency_key, &id));
                }
                return Ok(Sealing::Duplicate(id, be_u64(&v[16..24])));
            }
        }
        if !self.take_publish_token() {
            return Err(NodeError::RateLimited(format!(
                "publish rate limit of {}/s reached; retry with the same idempotency key",
                self.cfg.limits.publish_rate_per_s
            )));
        }
        let seq = self.origin_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let now = timefmt::now_ms();
        // The id's time is the header's creation time.
        let id = NotificationId::generate_at(now);
        let (env, view) = envelope::seal_unsigned_viewed(&n, self.id(), &self.key, id, seq, now)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let key_guard = inflight.as_mut().map(|map| {
            let (done, waiting) = watch::channel(None);
            let content = content.unwrap_or_default();
            map.insert(idempotency_key.to_owned(), (id, seq, content, waiting));
            KeyInFlight {
                map: self.idempotent.clone(),
                key: idempotency_key.to_owned(),
                done,
                durable: false,
            }
        });
        Ok(Sealing::Sealed(Box::new(Sealed {
            n,
            env,
            view,
            id,
            seq,
            now,
            idempotency_key: idempotency_key.to_owned(),
            content: content.unwrap_or_default(),
            by: by.label.clone(),
            key_guard,
        })))
    }

    /// The second step: stores the signed envelope and queues it for every destination, in one
    /// batch submitted to the group commit now (so publishes go out in submission order).
    fn publish_submit(&self, s: Box<Sealed>) -> Result<PendingPublish, NodeError> {
        let Sealed {
            n,
            env,
            mut view,
            id,
            seq,
            now,
            idempotency_key,
            content,
            by,
            key_guard,
        } = *s;
        let idempotency_key = idempotency_key.as_str();
        let bytes = envelope::encode(&env);
        view.signed_in(&env);
        let header = view.header.clone();
        let meta = StoredMeta {
            origin: self.id().to_string(),
            kind: n.kind.to_string(),
            case_ref: n.case_ref.clone(),
            routes: n.routes.iter().map(|r| r.to_string()).collect(),
            created_at_ms: now,
            expires_at_ms: n.expires_at_ms.unwrap_or(0),
            from: String::new(),
            received_at_ms: now,
        };
        let mut ops = Vec::with_capacity(8);
        let mut dues = Vec::with_capacity(1);
        put_copy(
            &mut ops,
            &mut dues,
            note_key(&id, self.id()),
            &meta,
            &bytes,
            self.cfg.retention_ms(),
        );
        if !idempotency_key.is_empty() {
            // The key goes with the origin's copy: a retry after that is a new publish.
            dues.push(Due {
                at_ms: dues.first().map_or(0, |d| d.at_ms),
                why: PurgeReason::Key,
                note: idempotency_key.as_bytes().to_vec(),
            });
        }
        ops.extend(expiry_entry(&dues));
        ops.extend([
            Op::put(Space::Seen, id.0.to_vec(), Vec::new()),
            Op::put(
                Space::Meta,
                b"origin_seq".to_vec(),
                seq.to_be_bytes().to_vec(),
            ),
        ]);
        if !idempotency_key.is_empty() {
            let mut v = id.0.to_vec();
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(&content);
            ops.push(Op::put(
                Space::Idempotency,
                idempotency_key.as_bytes().to_vec(),
                v,
            ));
        }
        let mut numbered = Numbered::default();
        numbered.feed.push(note_key(&id, self.id()));
        let dests = self.destinations(&header);
        for d in &dests {
            let item = OutboxItem {
                id,
                hops_left: self.cfg.limits.hop_budget,
                holder: self.id().clone(),
            };
            numbered.outbox.push((d.clone(), item));
            ops.push(Op::put(Space::Seen, seen_fwd_key(&id, d), Vec::new()));
        }
        let mut e = LedgerEntry::new("published");
        e.notification = id.to_string();
        e.destination = by.to_owned();
        e.detail = serde_json::json!({
            "kind": n.kind.as_str(), "case_ref": n.case_ref, "seq": seq,
            "destinations": dests.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        });
        let mut entries = vec![e];
        if let Some(target) = n.recalls.filter(|_| n.kind == tidewire_core::Kind::Recall) {
            // The origin's own copy goes too.
            ops.extend(self.recall_ops(&target, self.id(), &mut entries)?);
        }
        self.copies.insert(
            note_key(&id, self.id()),
            Arc::new(Copy {
                env,
                view,
                received_at_ms: now,
            }),
        );
        let receipt = self.submit_numbered(ops, numbered, entries);
        Ok(PendingPublish {
            receipt,
            id,
            seq,
            kind: n.kind,
            unmatched_audience: self.unmatched_audience(&header),
            destinations: dests.into_iter().collect(),
            key_guard,
        })
    }

    /// The last step: waits until the publish is durable, then lets the feed and links know.
    async fn publish_finish(&self, p: PendingPublish) -> Result<Published, NodeError> {
        let mut key_guard = p.key_guard;
        self.wait_commit(p.receipt).await?;
        if let Some(g) = key_guard.as_mut() {
            g.durable = true;
        }
        drop(key_guard);
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(id = %p.id, kind = %p.kind, destinations = p.destinations.len(), "published");
        if !p.unmatched_audience.is_empty() {
            tracing::info!(
                id = %p.id,
                unmatched = ?p.unmatched_audience,
                "audience entries match no node of the roster"
            );
        }
        self.feed_changed.send_modify(|v| *v += 1);
        if !p.destinations.is_empty() {
            self.bump_outbox();
        }
        let unrouted = if p.destinations.is_empty() {
            Vec::new()
        } else {
            let routing = self.routing.lock().unwrap_or_else(|p| p.into_inner());
            p.destinations
                .iter()
                .filter(|d| routing.next_hop(d).is_none())
                .cloned()
                .collect()
        };
        Ok(Published {
            id: p.id,
            seq: p.seq,
            duplicate: false,
            destinations: p.destinations,
            unmatched_audience: p.unmatched_audience,
            unrouted,
        })
    }

    /// Verifies and durably stores a batch of transfers from `peer`. Returns one outcome per
    /// transfer, in order; the caller acknowledges them all after this returns.
    pub async fn ingest(
        self: &Arc<Self>,
        peer: &NodeId,
        transfers: Vec<pb::Transfer>,
    ) -> Result<Vec<Received>, NodeError> {
        self.ingest_submit(peer, transfers)?.finish().await
    }

    /// The first half of [`Node::ingest`]: verifies the batch and queues its writes for the
    /// group commit, in order. A link calls this for its next receive batch while the previous
    /// one is still syncing, and acknowledges each when its [`PendingIngest::finish`] returns.
    pub fn ingest_submit(
        self: &Arc<Self>,
        peer: &NodeId,
        transfers: Vec<pb::Transfer>,
    ) -> Result<PendingIngest, NodeError> {
        let now = timefmt::now_ms();
        let mut ops = Vec::new();
        let mut entries = Vec::new();
        let mut out = Vec::with_capacity(transfers.len());
        let mut claims = Claims {
            node: self.clone(),
            keys: Vec::new(),
        };
        let mut numbered = Numbered::default();
        let mut dues = Vec::new();
        let mut delivered = 0u64;
        let mut queued = false;
        // One batch signature verification for the whole receive batch.
        let max = self.cfg.limits.max_message_bytes;
        let inputs: Vec<&[u8]> = transfers
            .iter()
            .map(|t| {
                if t.envelope.len() > max {
                    &[][..]
                } else {
                    t.envelope.as_ref()
                }
            })
            .collect();
        let mut verified = envelope::verify_many(&inputs, &self.roster()).into_iter();
        for t in transfers.iter() {
            let checked = verified.next();
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let refuse = |label: &str, detail: String, entries: &mut Vec<LedgerEntry>| {
                self.counters.refuse(label);
                tracing::warn!(peer = %peer, reason = label, detail = %detail, "envelope refused");
                let mut e = LedgerEntry::new("refused");
                e.destination = format!("node:{peer}");
                e.detail = serde_json::json!({"reason": label, "detail": detail});
                entries.push(e);
                Received::Refused(label.to_owned(), detail)
            };
            if t.envelope.len() > self.cfg.limits.max_message_bytes {
                out.push(refuse(
                    "too_large",
                    format!("{} bytes", t.envelope.len()),
                    &mut entries,
                ));
                continue;
            }
            let (env, view) = match checked.expect("one result per transfer") {
                Ok(v) => v,
                Err(e) => {
                    out.push(refuse(e.label(), e.to_string(), &mut entries));
                    continue;
                }
            };
            let last = view.custody.last();
            if last.is_none_or(|c| c.node != peer.as_str() || c.to != self.id().as_str()) {
                out.push(refuse(
                    "broken_custody",
                    format!(
                        "the last custody entry must be `{peer}` handing to `{}`",
                        self.id()
                    ),
                    &mut entries,
                ));
                continue;
            }
            self.counters.verified.fetch_add(1, Ordering::Relaxed);
            let copy = Arc::new(Copy {
                env,
                view,
                received_at_ms: now,
            });
            let view = &copy.view;
            let h = &view.header;
            if h.expired(now) {
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
                out.push(Received::Accepted);
                continue;
            }
            // Older than this node keeps anything: acknowledged, not kept. This is also what
            // lets the purge forget such a notification's seen-set entries (`purge_at`).
            if h.created_at_ms < now.saturating_sub(self.cfg.retention_ms()) {
                self.counters.past_retention.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %peer, id = %h.id, "copy older than the retention not kept");
                out.push(Received::Accepted);
                continue;
            }
            let audience = self.audience_nodes(h);
            let onward_ok = h.onward_transfer && h.handling != tidewire_core::Handling::H2;
            let mut requested: BTreeSet<NodeId> = BTreeSet::new();
            for d in &t.destinations {
                let Ok(d) = d.parse::<NodeId>() else { continue };
                let inside = if d == *self.id() {
                    self.in_audience(h)
                } else {
                    audience.contains(&d)
                };
                let consented = !t.consent_grant.is_empty()
                    && self.grant_valid(&t.consent_grant, &h.id, &h.origin, &d);
                if inside || onward_ok || consented {
                    if consented && !inside {
                        ops.push(Op::put(
                            Space::Grants,
                            crate::consent::grant_key(&h.id, &d),
                            t.consent_grant.to_vec(),
                        ));
                    }
                    requested.insert(d);
                }
            }
            let meta = StoredMeta {
                origin: h.origin.to_string(),
                kind: h.kind.to_string(),
                case_ref: h.case_ref.clone(),
                routes: h.routes.iter().map(|r| r.to_string()).collect(),
                created_at_ms: h.created_at_ms,
                expires_at_ms: h.expires_at_ms.unwrap_or(0),
                from: peer.to_string(),
                received_at_ms: now,
            };
            for d in requested {
                if d == *self.id() {
                    let seen = h.id.0.to_vec();
                    if !claims.claim(seen.clone())? {
                        self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let key = note_key(&h.id, &d);
                    self.keep_copy(&mut ops, &mut dues, key, &meta, &t.envelope, &copy);
                    ops.push(Op::put(Space::Seen, seen, Vec::new()));
                    numbered.feed.push(note_key(&h.id, &d));
                    if h.kind == tidewire_core::Kind::Recall
                        && let Some(target) = h.recalls
                    {
                        ops.extend(self.recall_ops(&target, &h.origin, &mut entries)?);
                    }
                    let mut e = LedgerEntry::new("received");
                    e.notification = h.id.to_string();
                    e.destination = format!("node:{peer}");
                    e.detail = serde_json::json!({
                        "origin": h.origin.as_str(),
                        "path": view.path(),
                        "withheld": view.withheld.len(),
                    });
                    entries.push(e);
                    delivered += 1;
                } else {
                    let seen = seen_fwd_key(&h.id, &d);
                    if t.hops_left == 0 {
                        if claims.seen(&seen)? {
                            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.counters.refuse("hop_budget");
                        }
                        continue;
                    }
                    if !claims.claim(seen.clone())? {
                        self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let key = note_key(&h.id, &d);
                    self.keep_copy(&mut ops, &mut dues, key, &meta, &t.envelope, &copy);
                    ops.push(Op::put(Space::Seen, seen, Vec::new()));
                    let item = OutboxItem {
                        id: h.id,
                        hops_left: t.hops_left - 1,
                        holder: d.clone(),
                    };
                    numbered.outbox.push((d.clone(), item));
                    queued = true;
                }
            }
            out.push(Received::Accepted);
        }
        ops.extend(expiry_entry(&dues));
        let receipt = self.submit_numbered(ops, numbered, entries);
        Ok(PendingIngest {
            receipt,
            claims,
            out,
            delivered,
            queued,
        })
    }

    /// Stores a received copy under `key` as the bytes that arrived (noting when it goes in
    /// `dues`) and keeps it decoded for egress and local delivery.
    fn keep_copy(
        &self,
        ops: &mut Vec<Op>,
        dues: &mut Vec<Due>,
        key: Vec<u8>,
        meta: &StoredMeta,
        received: &[u8],
        copy: &Arc<Copy>,
    ) {
        put_copy(
            ops,
            dues,
            key.clone(),
            meta,
            received,
            self.cfg.retention_ms(),
        );
        self.copies.insert(key, copy.clone());
    }

    /// Deletes every copy of `target` held here if `origin` wrote it.
    fn recall_ops(
        &self,
        target: &NotificationId,
        origin: &NodeId,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<Vec<Op>, NodeError> {
        let mut ops = Vec::new();
        for (k, v) in self
            .store
            .scan(Space::Notifications, &target.0, &target.0, usize::MAX)?
        {
            if decode_stored(&v).is_some_and(|(m, _)| m.origin == origin.as_str()) {
                ops.push(Op::delete(Space::Notifications, k));
            }
        }
        if !ops.is_empty() {
            let mut e = LedgerEntry::new("recalled");
            e.notification = target.to_string();
            e.destination = format!("node:{origin}");
            entries.push(e);
        }
        Ok(ops)
    }

    /// A stored copy (`key` as in [`Space::Notifications`]), decoded: from the cache of recent
    /// copies, else read from the store and inspected.
    pub fn stored_copy(&self, key: &[u8]) -> Result<Arc<Copy>, NoCopy> {
        if let Some(c) = self.copies.get(key) {
            return Ok(c);
        }
        let stored = match self.store.get(Space::Notifications, key) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(NoCopy::Missing),
            // Damage on disk does not heal by reading again: the copy is lost, and said so.
            Err(e @ tidewire_store::StoreError::Corrupt { .. }) => {
                tracing::error!(error = %e, "a stored copy is damaged");
                return Err(NoCopy::Corrupt);
            }
            Err(e) => return Err(NoCopy::Store(e)),
        };
        let (meta, bytes) = decode_stored(&stored).ok_or(NoCopy::Corrupt)?;
        // The envelope is the value's tail: its fields are slices of the value read, not a copy.
        let at = stored.len() - bytes.len();
        let env = envelope::decode_shared(prost::bytes::Bytes::from(stored).slice(at..))
            .map_err(|_| NoCopy::Corrupt)?;
        let view = envelope::inspect(&env).map_err(|_| NoCopy::Corrupt)?;
        // Not cached: a delete queued meanwhile would leave a stale entry.
        Ok(Arc::new(Copy {
            env,
            view,
            received_at_ms: meta.received_at_ms,
        }))
    }

    /// THE egress path towards peers: applies this node's policy for the next hop and, when the
    /// copy is for a node behind it, for that destination too (relays narrow, never widen), then
    /// appends this node's custody entry, which [`Node::sign_round`] signs with the rest of the
    /// send round. Nothing reaches a peer any other way.
    pub fn prepare_egress(
        &self,
        peer: &NodeId,
        dest: &NodeId,
        item: &OutboxItem,
    ) -> Result<Prepared, Skipped> {
        let skip = |event: &str, rule: Option<String>, detail: serde_json::Value| {
            let mut e = LedgerEntry::new(event);
            e.notification = item.id.to_string();
            e.destination = format!("node:{dest}");
            e.rule = rule.unwrap_or_default();
            e.detail = detail;
            Skipped {
                tally: match event {
                    "expired" => Some(SkipTally::Expired),
                    "denied" => Some(SkipTally::Denied),
                    _ => None,
                },
                entry: Some(Box::new(e)),
            }
        };
        let copy = match self.stored_copy(&note_key(&item.id, &item.holder)) {
            Ok(c) => c,
            Err(NoCopy::Missing) => {
                return Err(skip(
                    "dropped",
                    None,
                    serde_json::json!({"reason": "content deleted (recalled or expired)"}),
                ));
            }
            Err(NoCopy::Corrupt) => {
                return Err(skip(
                    "dropped",
                    None,
                    serde_json::json!({"reason": "stored copy is corrupt"}),
                ));
            }
            Err(NoCopy::Store(e)) => {
                tracing::error!(error = %e, "store read failed on egress; the copy stays queued");
                return Err(Skipped {
                    entry: None,
                    tally: None,
                });
            }
        };
        let (env, view) = (&copy.env, &copy.view);
        let now = timefmt::now_ms();
        if view.header.expired(now) {
            return Err(skip(
                "expired",
                None,
                serde_json::json!({"expires_at": view.header.expires_at_ms.map(timefmt::format_ms)}),
            ));
        }
        let mut grant = Vec::new();
        if !self.audience_nodes(&view.header).contains(dest) {
            let onward_ok =
                view.header.onward_transfer && view.header.handling != tidewire_core::Handling::H2;
            match self
                .store
                .get(Space::Grants, &crate::consent::grant_key(&item.id, dest))
            {
                Ok(Some(g)) if self.grant_valid(&g, &item.id, &view.header.origin, dest) => {
                    grant = g
                }
                _ if onward_ok => {}
                _ => {
                    return Err(skip(
                        "denied",
                        None,
                        serde_json::json!({"reason": "destination is outside the origin's audience and no consent was granted"}),
                    ));
                }
            }
        }
        let Some((policy, _)) = self.policy() else {
            return Err(skip(
                "denied",
                None,
                serde_json::json!({"reason": "no policy is configured (default deny)"}),
            ));
        };
        let decision = match self.decide(&policy, view, peer, dest) {
            Ok(d) => d,
            Err(reason) => {
                return Err(skip("denied", None, serde_json::json!({"reason": reason})));
            }
        };
        let (rule, fields) = match decision {
            Decision::Deny { rule, reason } => {
                let mut s = skip(
                    "denied",
                    rule,
                    serde_json::json!({"reason": reason, "via": peer.as_str()}),
                );
                if let Some(e) = s.entry.as_mut() {
                    e.policy_version = policy.content_hash().to_owned();
                }
                return Err(s);
            }
            Decision::Allow { rule, fields } => (rule, fields),
        };
        let mut withhold = Vec::new();
        let mut substitute = Vec::new();
        let mut withheld_paths = Vec::new();
        let mut generalised = Vec::new();
        for f in fields {
            match f.action {
                FieldAction::Clear => {}
                FieldAction::Redact => {
                    withheld_paths.push(serde_json::json!({"path": f.path, "rule": f.rule}));
                    withhold.push((f.path, f.rule));
                }
                FieldAction::Generalise { method, value } => {
                    generalised.push(
                        serde_json::json!({"path": f.path, "rule": f.rule, "method": method}),
                    );
                    substitute.push(Substitution {
                        path: f.path,
                        value,
                        rule_id: f.rule,
                        method,
                    });
                }
            }
        }
        let withheld = withhold.len() as u64;
        let out = envelope::relay_unsigned(
            env,
            Hop {
                node: self.id(),
                key: &self.key,
                to: peer,
                at_ms: now,
                policy_version: policy.content_hash(),
                withhold,
                substitute,
            },
        );
        // A copy the next hop would reject for its size would break the link at every attempt
        // (the frame fails to decode there): it is resolved here instead, and recorded.
        if let Some(limit) = self.peer_limit(peer) {
            let bytes = envelope::encoded_len(&out) + SIGNING_SLACK;
            if bytes > limit {
                let mut s = skip(
                    "dropped",
                    None,
                    serde_json::json!({
                        "reason": TOO_LARGE_FOR_PEER,
                        "detail": format!("about {bytes} bytes signed; `{peer}` accepts envelopes of up to {limit} bytes (its limits.max_message_bytes)"),
                        "via": peer.as_str(),
                    }),
                );
                s.tally = Some(SkipTally::TooLargeForPeer);
                return Err(s);
            }
        }
        let mut e = LedgerEntry::new("transfer");
        e.notification = item.id.to_string();
        e.destination = format!("node:{dest}");
        e.policy_version = policy.content_hash().to_owned();
        e.rule = rule;
        // Built by hand: `json!` would copy the two lists (it serialises every value it is given).
        let mut detail = serde_json::Map::with_capacity(5);
        detail.insert("via".into(), peer.as_str().into());
        detail.insert("origin".into(), view.header.origin.as_str().into());
        detail.insert("withheld".into(), serde_json::Value::Array(withheld_paths));
        detail.insert("generalised".into(), serde_json::Value::Array(generalised));
        e.detail = serde_json::Value::Object(detail);
        if !grant.is_empty() {
            e.detail["consent"] = serde_json::json!("granted by origin");
        }
        Ok(Prepared {
            env: out,
            grant,
            entry: e,
            withheld,
        })
    }

    /// Signs the custody entries of a send round's prepared copies (one signature per
    /// [`envelope::SIGNING_ROUND`] of them) and encodes them.
    pub fn sign_round(&self, mut envs: Vec<envelope::Envelope>) -> Vec<Vec<u8>> {
        envelope::sign_custody_round(&self.key, &mut envs);
        envs.iter().map(envelope::encode).collect()
    }

    /// The policy decision for a copy seen by `peer` and meant for `dest`.
    fn decide(
        &self,
        policy: &Policy,
        view: &VerifiedView,
        peer: &NodeId,
        dest: &NodeId,
    ) -> Result<Decision, String> {
        let origin = self
            .party(&view.header.origin)
            .ok_or_else(|| format!("origin `{}` is not in the roster", view.header.origin))?;
        let to_peer = self
            .party(peer)
            .ok_or_else(|| format!("peer `{peer}` is not in the roster"))?;
        let mut d = policy.evaluate(&view.header, &origin, &view.fields, &to_peer);
        if dest != peer {
            let to_dest = self
                .party(dest)
                .ok_or_else(|| format!("destination `{dest}` is not in the roster"))?;
            d = d.intersect(policy.evaluate(&view.header, &origin, &view.fields, &to_dest));
        }
        Ok(d)
    }

    /// Backlog towards each destination.
    pub fn backlog_by_dest(&self) -> BTreeMap<NodeId, u64> {
        self.outbox_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(d, q)| (d.clone(), q.len() as u64))
            .collect()
    }

    /// What waits to go on each link, by peer: the queued copies whose destination the
    /// routing table sends through that peer, and, while a link is down, those for the peer
    /// itself (it may have no route then). `status` and the metrics page show these.
    pub fn link_backlogs(&self) -> BTreeMap<NodeId, u64> {
        self.per_link(&self.backlog_by_dest())
            .into_iter()
            .map(|(peer, queued)| (peer, queued.iter().sum()))
            .collect()
    }

    /// Every destination with copies queued here, in name order: how many, where the routing
    /// table sends them (None: no route reaches it), and when the oldest reached this node.
    pub fn queues(&self) -> Vec<Queue> {
        let firsts: Vec<(NodeId, u64, u64)> = self
            .outbox_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(d, q)| q.first().map(|seq| (d.clone(), q.len() as u64, *seq)))
            .collect();
        let table = self
            .routing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .table();
        let mut queues: Vec<Queue> = firsts
            .into_iter()
            .map(|(dest, queued, first)| Queue {
                next_hop: table.get(&dest).map(|(hop, _)| hop.clone()),
                oldest_ms: self.queued_since(&dest, first),
                dest,
                queued,
            })
            .collect();
        queues.sort_by(|a, b| a.dest.cmp(&b.dest));
        queues
    }

    /// For each link with copies waiting on it (as [`Node::link_backlogs`] counts them), when
    /// the one that has waited longest reached this node (Unix ms; received, or published
    /// here), from `queues` ([`Node::queues`]). Each destination's queue goes in order, so its
    /// first item is its oldest.
    pub fn link_oldest_waiting(&self, queues: &[Queue]) -> BTreeMap<NodeId, i64> {
        let by_dest: BTreeMap<NodeId, i64> = queues
            .iter()
            .filter_map(|q| Some((q.dest.clone(), q.oldest_ms?)))
            .collect();
        self.per_link(&by_dest)
            .into_iter()
            .filter_map(|(peer, since)| Some((peer, since.into_iter().min()?)))
            .collect()
    }

    /// When outbox item `seq` of `dest`'s copy reached this node; None if it cannot be read.
    fn queued_since(&self, dest: &NodeId, seq: u64) -> Option<i64> {
        let item = self
            .store
            .get(Space::Outbox, &outbox_key(dest, seq))
            .ok()??;
        let item = OutboxItem::decode(&item)?;
        let key = note_key(&item.id, &item.holder);
        if let Some(copy) = self.copies.get(&key) {
            return Some(copy.received_at_ms);
        }
        let stored = self.store.get(Space::Notifications, &key).ok()??;
        decode_stored(&stored).map(|(meta, _)| meta.received_at_ms)
    }

    /// A figure per destination gathered by the link its copies wait on: the destinations the
    /// routing table sends through that peer and, while the link is down, the peer itself.
    fn per_link<T: std::marker::Copy>(
        &self,
        by_dest: &BTreeMap<NodeId, T>,
    ) -> BTreeMap<NodeId, Vec<T>> {
        let table = self
            .routing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .table();
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(peer, l)| {
                let values = by_dest
                    .iter()
                    .filter(|(d, _)| {
                        table.get(*d).is_some_and(|(hop, _)| hop == peer) || (*d == peer && !l.up)
                    })
                    .map(|(_, v)| *v)
                    .collect();
                (peer.clone(), values)
            })
            .collect()
    }

    /// Route patterns this node's subscribers follow, aggregated for link-state announcements.
    /// Every pattern a live or durable subscription follows, with those covered by a broader
    /// one removed (`atlantic.west-africa.>` goes when `atlantic.>` is there).
    pub fn interests(&self) -> Vec<String> {
        let mut all: Vec<RoutePattern> = self
            .live_interests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter_map(|p| p.parse().ok())
            .collect();
        if let Ok(durable) = self.store.scan(
            Space::Meta,
            crate::subscribe::INTEREST,
            crate::subscribe::INTEREST,
            usize::MAX,
        ) {
            for (_, v) in durable {
                if let Ok(list) = serde_json::from_slice::<Vec<String>>(&v) {
                    all.extend(list.iter().filter_map(|p| p.parse().ok()));
                }
            }
        }
        all.sort();
        all.dedup();
        let kept: Vec<String> = all
            .iter()
            .filter(|p| !all.iter().any(|q| q != *p && p.is_covered_by(q)))
            .map(|p| p.to_string())
            .collect();
        kept
    }

    /// Registers a live subscription's patterns (announce with [`crate::link::announce_interests`]).
    pub fn add_interest(&self, patterns: &[String]) {
        let mut live = self
            .live_interests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for p in patterns {
            *live.entry(p.clone()).or_insert(0) += 1;
        }
    }

    /// Removes a live subscription's patterns (announce with [`crate::link::announce_interests`]).
    pub fn remove_interest(&self, patterns: &[String]) {
        let mut live = self
            .live_interests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for p in patterns {
            if let Some(c) = live.get_mut(p) {
                *c -= 1;
                if *c == 0 {
                    live.remove(p);
                }
            }
        }
    }

    /// The audience entries naming a node, country or organisation that no node of the roster
    /// (this one included) is: what a publisher most likely mistyped.
    pub fn unmatched_audience(&self, header: &Header) -> Vec<String> {
        header
            .audience
            .iter()
            .filter(|a| {
                !matches!(
                    a,
                    tidewire_core::AudienceEntry::AnyNode
                        | tidewire_core::AudienceEntry::AnyCountry
                )
            })
            .filter(|a| {
                !self
                    .roster()
                    .nodes()
                    .any(|n| a.covers(&n.id, n.country, &n.org))
            })
            .map(|a| a.to_string())
            .collect()
    }

    /// Where a notification published here goes: every roster node an explicit audience entry
    /// names (`node:accra`, `country:SN`, `org:europol`), and, for the wildcards `node:*` and
    /// `country:*`, only nodes whose subscribers announced interest in one of its routes.
    pub fn destinations(&self, header: &Header) -> BTreeSet<NodeId> {
        let interested = self
            .routing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .interested(&header.routes);
        self.roster()
            .nodes()
            .filter(|n| n.id != self.me.node)
            .filter(|n| {
                header.audience.iter().any(|a| {
                    a.covers(&n.id, n.country, &n.org)
                        && (!matches!(
                            a,
                            tidewire_core::AudienceEntry::AnyNode
                                | tidewire_core::AudienceEntry::AnyCountry
                        ) || interested.contains(&n.id))
                })
            })
            .map(|n| n.id.clone())
            .collect()
    }

    /// Consent requests known to this node.
    pub fn consent_items(&self) -> Result<Vec<pb::ConsentItem>, NodeError> {
        let mut out = Vec::new();
        for (_, v) in self.store.scan(Space::Consent, b"", b"", usize::MAX)? {
            if let Ok(item) = serde_json::from_slice::<ConsentRecord>(&v) {
                out.push(item.to_pb());
            }
        }
        for item in self.held_items()? {
            out.push(item.to_pb());
        }
        Ok(out)
    }

    /// Grants or refuses a pending consent request.
    pub async fn decide_consent(
        &self,
        id: &str,
        grant: bool,
        by: &str,
    ) -> Result<pb::ConsentItem, NodeError> {
        let v = self
            .store
            .get(Space::Consent, id.as_bytes())?
            .ok_or_else(|| {
                NodeError::NotFound(format!(
                    "no consent request `{id}`; list them with `tidewire consent list`"
                ))
            })?;
        let mut rec: ConsentRecord =
            serde_json::from_slice(&v).map_err(|e| NodeError::Internal(e.to_string()))?;
        if rec.state != "pending" {
            return Err(NodeError::Invalid(format!(
                "consent request `{id}` is already {}",
                rec.state
            )));
        }
        rec.state = if grant { "granted" } else { "refused" }.into();
        let mut e = LedgerEntry::new(if grant {
            "consent_granted"
        } else {
            "consent_refused"
        });
        e.notification = rec.notification.clone();
        e.destination = rec.destination.clone();
        e.detail = serde_json::json!({"requester": rec.requester, "by": by});
        self.commit(vec![rec.put(Space::Consent)], vec![e]).await?;
        if let Err(err) = self.answer_consent(&rec, grant, by) {
            tracing::warn!(error = %err, requester = %rec.requester, "consent decided but the answer could not be sent yet");
        }
        Ok(rec.to_pb())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewire_store::MemStore;

    fn meta(expires_at_ms: i64) -> StoredMeta {
        StoredMeta {
            origin: "maoc-n".into(),
            kind: "alert".into(),
            case_ref: String::new(),
            routes: vec!["atlantic.west-africa".into()],
            created_at_ms: 1,
            expires_at_ms,
            from: String::new(),
            received_at_ms: 1,
        }
    }

    #[test]
    fn a_failed_batch_leaves_the_outbox_index_as_it_was() {
        let dakar: NodeId = "dakar".parse().unwrap();
        let accra: NodeId = "accra".parse().unwrap();
        let mut index = HashMap::from([
            (dakar.clone(), BTreeSet::from([1, 2, 3])),
            (accra.clone(), BTreeSet::from([7])),
        ]);
        let before = index.clone();
        // The batch queued 4 for dakar and 8 for accra, and removed dakar's 2 and accra's 7
        // (its last), as `submit_numbered` and `forget_deleted` do before the commit.
        index.get_mut(&dakar).unwrap().insert(4);
        index.get_mut(&accra).unwrap().insert(8);
        index.get_mut(&dakar).unwrap().remove(&2);
        index.get_mut(&accra).unwrap().remove(&7);
        let change = IndexChange {
            added: vec![(dakar.clone(), 4), (accra.clone(), 8)],
            removed: vec![(dakar.clone(), 2), (accra.clone(), 7)],
        };
        change.revert(&mut index);
        assert_eq!(index, before);
        // Only what a batch queued goes: a destination it emptied is dropped, not left empty.
        let mut only_new = HashMap::from([(dakar.clone(), BTreeSet::from([9]))]);
        IndexChange {
            added: vec![(dakar, 9)],
            removed: Vec::new(),
        }
        .revert(&mut only_new);
        assert!(only_new.is_empty(), "{only_new:?}");
    }

    #[test]
    fn a_copy_prepared_ahead_goes_only_once_durable_and_only_to_its_peer() {
        let dakar: NodeId = "dakar".parse().unwrap();
        let accra: NodeId = "accra".parse().unwrap();
        let taken = AtomicU64::new(0);
        let durable = Arc::new(AtomicBool::new(false));
        let copy = || (dakar.clone(), "copy");
        let mut map = HashMap::from([(1, Gated::new(copy(), durable.clone()))]);
        let to = |peer: &NodeId| {
            let peer = peer.clone();
            move |(p, _): &(NodeId, &str)| *p == peer
        };
        assert!(
            matches!(take_gated(&mut map, &1, to(&dakar), &taken), Taken::Pending),
            "its record is not durable yet"
        );
        assert!(
            matches!(take_gated(&mut map, &1, to(&accra), &taken), Taken::None),
            "the route moved to another peer"
        );
        assert!(map.is_empty(), "dropped, to be prepared afresh");
        map.insert(1, Gated::new(copy(), durable.clone()));
        durable.store(true, Ordering::Release);
        assert!(matches!(
            take_gated(&mut map, &1, to(&dakar), &taken),
            Taken::Ready(c) if *c == copy()
        ));
        assert_eq!(taken.load(Ordering::Relaxed), 1);
        assert!(matches!(
            take_gated(&mut map, &1, to(&dakar), &taken),
            Taken::None
        ));
        // A commit that never became durable: after a while the item is prepared afresh.
        durable.store(false, Ordering::Release);
        let mut late = Gated::new(copy(), durable);
        late.since = Instant::now() - GATE_MAX;
        map.insert(1, late);
        assert!(matches!(
            take_gated(&mut map, &1, to(&dakar), &taken),
            Taken::None
        ));
        assert!(map.is_empty());
        assert_eq!(taken.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn outbox_keys_parse_back_to_destination_and_sequence() {
        let dest: NodeId = "jiatf-s".parse().unwrap();
        for seq in [0, 1, 255, 256, u64::MAX] {
            assert_eq!(
                parse_outbox_key(&outbox_key(&dest, seq)),
                Some((dest.clone(), seq))
            );
        }
        assert_eq!(parse_outbox_key(b"short"), None);
        assert_eq!(parse_outbox_key(b"dakar\x01\0\0\0\0\0\0\0\x01"), None);
    }

    #[test]
    fn a_copy_goes_at_its_expiry_or_after_the_retention_whichever_is_first() {
        let mut m = meta(0);
        m.created_at_ms = 1_000;
        m.received_at_ms = 3_000;
        // Counted from the later of created and received.
        assert_eq!(m.purge_at(10_000), (13_000, PurgeReason::Retention));
        m.expires_at_ms = 5_000;
        assert_eq!(m.purge_at(10_000), (5_000, PurgeReason::Expired));
        m.expires_at_ms = 20_000;
        assert_eq!(m.purge_at(10_000), (13_000, PurgeReason::Retention));
        // A clock ahead at the origin: created after received here.
        m.created_at_ms = 4_000;
        assert_eq!(m.purge_at(10_000), (14_000, PurgeReason::Retention));
        assert_eq!(
            PurgeReason::from_value(&[PurgeReason::Retention.byte()]),
            PurgeReason::Retention
        );
        assert_eq!(PurgeReason::from_value(&[]), PurgeReason::Expired);
    }

    /// Every copy the expiry index lists: when, why, which.
    fn index(store: &MemStore) -> Vec<(i64, PurgeReason, Vec<u8>)> {
        let mut all: Vec<_> = store
            .scan(Space::Expiry, b"", b"", usize::MAX)
            .unwrap()
            .iter()
            .flat_map(|(k, v)| decode_expiry(k, v))
            .map(|d| (d.at_ms, d.why, d.note))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn copies_stored_together_share_one_index_entry_and_old_entries_still_read() {
        let a = note_key(&NotificationId([1; 16]), &"dakar".parse().unwrap());
        let b = note_key(&NotificationId([2; 16]), &"accra".parse().unwrap());
        let dues = [
            Due {
                at_ms: 9_000,
                why: PurgeReason::Retention,
                note: a.clone(),
            },
            Due {
                at_ms: 4_000,
                why: PurgeReason::Expired,
                note: b.clone(),
            },
        ];
        let Some(Op::Put { space, key, value }) = expiry_entry(&dues) else {
            panic!("one put");
        };
        assert_eq!(space, Space::Expiry);
        assert_eq!(key, expiry_key(4_000, &b), "keyed by the earliest copy");
        assert_eq!(decode_expiry(&key, &value), dues);
        assert!(expiry_entry(&[]).is_none());
        // An entry from before lists: one copy, named by its key.
        for (value, why) in [
            (vec![], PurgeReason::Expired),
            (vec![1], PurgeReason::Retention),
        ] {
            assert_eq!(
                decode_expiry(&expiry_key(5_000, &a), &value),
                [Due {
                    at_ms: 5_000,
                    why,
                    note: a.clone()
                }]
            );
        }
        // A truncated list yields what it holds, and nothing past the cut.
        assert_eq!(decode_expiry(&key, &value[..value.len() - 3]), dues[..1]);
    }

    #[test]
    fn a_rebuilt_expiry_index_lets_idempotency_keys_go_with_the_origins_copy() {
        let store = MemStore::default();
        let me: NodeId = "maoc-n".parse().unwrap();
        let (held, gone) = (NotificationId([3; 16]), NotificationId([4; 16]));
        let record = |id: &NotificationId| {
            let mut v = id.0.to_vec();
            v.extend_from_slice(&1u64.to_be_bytes());
            v
        };
        store
            .apply(&[
                Op::put(
                    Space::Notifications,
                    note_key(&held, &me),
                    encode_stored(&meta(0), b"env"),
                ),
                Op::put(Space::Idempotency, b"cli:kept".to_vec(), record(&held)),
                // Its copy already purged: the key is due at once.
                Op::put(Space::Idempotency, b"cli:stale".to_vec(), record(&gone)),
            ])
            .unwrap();
        index_expiry(&store, &me, 100_000).unwrap();
        assert_eq!(
            index(&store),
            [
                (0, PurgeReason::Key, b"cli:stale".to_vec()),
                (100_001, PurgeReason::Retention, note_key(&held, &me)),
                (100_001, PurgeReason::Key, b"cli:kept".to_vec()),
            ]
        );
    }

    #[test]
    fn the_expiry_index_is_built_once_per_retention() {
        let store = MemStore::default();
        let expiring = note_key(&NotificationId([1; 16]), &"dakar".parse().unwrap());
        let lasting = note_key(&NotificationId([2; 16]), &"dakar".parse().unwrap());
        // A store from before the index: copies, and no mark.
        store
            .apply(&[
                Op::put(
                    Space::Notifications,
                    expiring.clone(),
                    encode_stored(&meta(5_000), b"env"),
                ),
                Op::put(
                    Space::Notifications,
                    lasting.clone(),
                    encode_stored(&meta(0), b"env"),
                ),
            ])
            .unwrap();
        index_expiry(&store, &"dakar".parse().unwrap(), 100_000).unwrap();
        assert_eq!(
            index(&store),
            [
                (5_000, PurgeReason::Expired, expiring.clone()),
                (100_001, PurgeReason::Retention, lasting.clone()),
            ]
        );
        // Built once: an entry removed since (purged) is not indexed again on the next open.
        store
            .apply(&[Op::delete(Space::Expiry, expiry_key(5_000, &expiring))])
            .unwrap();
        index_expiry(&store, &"dakar".parse().unwrap(), 100_000).unwrap();
        assert!(index(&store).is_empty());
        // A new retention rebuilds it: now both copies go for retention, the expiring one
        // before its expiry.
        index_expiry(&store, &"dakar".parse().unwrap(), 1_000).unwrap();
        assert_eq!(
            index(&store),
            [
                (1_001, PurgeReason::Retention, expiring),
                (1_001, PurgeReason::Retention, lasting),
            ]
        );
    }
}
