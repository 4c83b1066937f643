//! Shared fixtures of the envelope test suites: fixed keys, a roster, a sample notification and
//! small byte helpers. Every key comes from a fixed seed, so failures reproduce.
#![allow(dead_code)]

pub mod mutate;

use sha2::{Digest, Sha256};
use tidewire_core::envelope::{self, Envelope, Hop};
use tidewire_core::keys::{Roster, RosterNode, SigningKey};
use tidewire_core::{NodeId, Notification, NotificationId};

/// The origin of every sealed notification.
pub const ORIGIN: &str = "maoc-n";
/// Relays, in the order a notification crosses them.
pub const RELAYS: [&str; 3] = ["dakar", "accra", "jiatf-s"];
/// Where the last relay sends the envelope (not in the roster: it only receives).
pub const RECEIVER: &str = "lisbon";
/// Creation time of every sealed notification (2027-01-15T08:00:00Z).
pub const CREATED_AT_MS: i64 = 1_800_000_000_000;

/// The origin's signing key.
pub fn origin_key() -> SigningKey {
    SigningKey::from_seed([1; 32])
}

/// The signing key of relay `i` (0-based).
pub fn relay_key(i: usize) -> SigningKey {
    SigningKey::from_seed([10 + i as u8; 32])
}

/// A node id.
pub fn node(id: &str) -> NodeId {
    id.parse().expect("valid node id")
}

/// The roster every suite verifies against: the origin and the three relays, open-ended keys.
pub fn roster() -> Roster {
    let mut r = Roster::default();
    r.upsert(RosterNode::new(
        node(ORIGIN),
        "PT".parse().unwrap(),
        "maoc-n".into(),
        origin_key().public(),
    ));
    for (i, id) in RELAYS.iter().enumerate() {
        r.upsert(RosterNode::new(
            node(id),
            "SN".parse().unwrap(),
            (*id).into(),
            relay_key(i).public(),
        ));
    }
    r
}

/// Seals a notification at [`ORIGIN`] with [`origin_key`].
pub fn seal(n: &Notification) -> Envelope {
    envelope::seal(
        n,
        &node(ORIGIN),
        &origin_key(),
        NotificationId::generate(),
        7,
        CREATED_AT_MS,
    )
}

/// The notification JSON with `fields` as its body.
pub fn notification_json(fields: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "kind": "vessel_of_interest",
        "case_ref": "MAOC-2026-0142",
        "routes": ["atlantic.south-america.west-africa"],
        "handling": "H1",
        "grading": {"source": "B", "information": "2"},
        "audience": ["node:accra", "country:SN"],
        "purposes": ["interdiction"],
        "fields": fields,
    })
}

/// The DESIGN.md example notification, with distinctive person names.
pub fn sample() -> Notification {
    Notification::from_value(&notification_json(serde_json::json!({
        "vessel": {"name": "MV Example", "imo": "9387421", "flag": "TG",
                   "position": {"lat": 5.61, "lon": -0.19}},
        "persons": [
            {"name": "J. Doe UNIQUE-MARKER-12345", "nationality": "CO", "dob": "1979-03-02"},
            {"name": "R. Roe UNIQUE-MARKER-67890", "nationality": "VE", "dob": "1984-11-20"}
        ],
        "narrative": "Mother ship suspected of transhipment off the Bijagos."
    })))
    .expect("valid sample notification")
}

/// One hop by relay `i` to the next relay (or to [`RECEIVER`] after the last).
pub fn hop<'a>(
    i: usize,
    nodes: &'a [NodeId; 4],
    key: &'a SigningKey,
    withhold: &[&str],
) -> Hop<'a> {
    Hop {
        node: &nodes[i],
        key,
        to: &nodes[i + 1],
        at_ms: CREATED_AT_MS + 1_000 * (i as i64 + 1),
        policy_version: "policy-v1",
        withhold: withhold
            .iter()
            .map(|p| ((*p).to_owned(), "test-rule".to_owned()))
            .collect(),
        substitute: Vec::new(),
    }
}

/// The relays followed by the receiver: `nodes[i]` hands on to `nodes[i + 1]`.
pub fn path_nodes() -> [NodeId; 4] {
    [
        node(RELAYS[0]),
        node(RELAYS[1]),
        node(RELAYS[2]),
        node(RECEIVER),
    ]
}

/// Whether `needle` occurs anywhere in `haystack` (an empty needle always does).
/// Flips the bits `mask` of byte `i` (wire bytes are shared and immutable: this replaces them).
pub fn flip(bytes: &mut prost::bytes::Bytes, i: usize, mask: u8) {
    let mut v = bytes.to_vec();
    v[i] ^= mask;
    *bytes = v.into();
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The position of the first occurrence of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The chain hash a custody entry at position `upto` must carry (the rule of envelope.proto:
/// SHA-256 over the signed header, the origin signature and every earlier entry's body and
/// signature, each prefixed with its u32 big-endian length).
pub fn chain_hash(env: &Envelope, upto: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u32).to_be_bytes());
        h.update(b);
    };
    part(&env.signed_header);
    part(&env.origin_signature);
    for c in &env.custody[..upto] {
        part(&c.body);
        part(&c.signature);
    }
    h.finalize().into()
}
