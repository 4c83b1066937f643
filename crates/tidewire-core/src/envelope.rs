//! Sealing, withholding, relaying and verifying envelopes: signing that survives redaction.
//!
//! The origin commits to every body field separately (`SHA-256(salt ‖ len ‖ path ‖ value)`), puts
//! the sorted digests into the [`wire::SignedHeader`], encodes that header once and signs the
//! bytes. Relays remove disclosed fields (withholding) or replace them with committed generalised
//! values (transformations), and sign a custody entry that chains onto everything before it.
//! [`verify`] checks the whole envelope as it arrived, never re-encoding anything it checks.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use prost::Message;
use prost::bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, VerifyError};
use crate::fields::{FieldPath, PathPattern};
use crate::keys::{Roster, SigningKey};
use crate::merkle;
use crate::model::{AudienceEntry, Grading, Handling, Kind, NodeId, NotificationId, Route};
use crate::notification::Notification;
use crate::timefmt;
use crate::wire;

pub use crate::wire::Envelope;

/// Domain separator for origin signatures.
pub const HEADER_DOMAIN: &[u8] = b"tidewire/v1/header\0";
/// Domain separator for custody signatures.
pub const CUSTODY_DOMAIN: &[u8] = b"tidewire/v1/custody\0";
/// Domain separator for a signature over a round's Merkle root ([`crate::merkle`]); the signed
/// message goes on with the domain of what the round's leaves are.
pub const ROUND_DOMAIN: &[u8] = b"tidewire/v1/round\0";
/// Most messages one round signature covers: a path of at most six hashes (192 bytes per
/// signature), and one signature to verify per 64 envelopes of a receive batch.
pub const SIGNING_ROUND: usize = 64;
/// The largest encoded envelope accepted.
pub const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;
/// The most custody entries (hops) an envelope may carry.
pub const MAX_CUSTODY: usize = 32;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;

/// Hashes a SHA-256 digest by its first eight bytes: digests are already uniformly random, so
/// SipHash would only cost time in the per-field maps of [`verify`].
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

type DigestMap<V> = HashMap<[u8; 32], V, BuildHasherDefault<DigestHasher>>;

/// The commitment to one field value.
pub fn digest(salt: &[u8], path: &str, value: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update((path.len() as u32).to_be_bytes());
    h.update(path.as_bytes());
    h.update(value);
    h.finalize().into()
}

/// Encodes an envelope to bytes.
pub fn encode(env: &Envelope) -> Vec<u8> {
    env.encode_to_vec()
}

/// How many bytes [`encode`] would give, without encoding.
pub fn encoded_len(env: &Envelope) -> usize {
    env.encoded_len()
}

/// Decodes envelope bytes, refusing oversized input. The envelope's byte fields share one copy
/// of `bytes`: one allocation for the envelope instead of one per field, digest and signature,
/// and nothing keeps the buffer `bytes` came in (a whole receive frame) alive.
pub fn decode(bytes: &[u8]) -> Result<Envelope, VerifyError> {
    refuse_oversized(bytes.len())?;
    decode_shared(Bytes::copy_from_slice(bytes))
}

/// [`decode`] without a copy: the envelope's byte fields are slices of `bytes`.
pub fn decode_shared(bytes: Bytes) -> Result<Envelope, VerifyError> {
    refuse_oversized(bytes.len())?;
    Envelope::decode(bytes).map_err(|e| VerifyError::Malformed(e.to_string()))
}

fn refuse_oversized(size: usize) -> Result<(), VerifyError> {
    if size > MAX_ENVELOPE_BYTES {
        return Err(VerifyError::TooLarge {
            size,
            limit: MAX_ENVELOPE_BYTES,
        });
    }
    Ok(())
}

/// The header fields, typed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Notification id.
    pub id: NotificationId,
    /// Origin node.
    pub origin: NodeId,
    /// Per-origin sequence number.
    pub origin_seq: u64,
    /// Creation time (Unix ms).
    pub created_at_ms: i64,
    /// Expiry (Unix ms).
    pub expires_at_ms: Option<i64>,
    /// Kind.
    pub kind: Kind,
    /// Routes.
    pub routes: Vec<Route>,
    /// Handling code.
    pub handling: Handling,
    /// Grading.
    pub grading: Grading,
    /// Audience.
    pub audience: Vec<AudienceEntry>,
    /// Onward transfer allowed.
    pub onward_transfer: bool,
    /// Purposes.
    pub purposes: Vec<String>,
    /// Case reference.
    pub case_ref: String,
    /// Response deadline (Unix ms).
    pub response_deadline_ms: Option<i64>,
    /// The notification a recall withdraws.
    pub recalls: Option<NotificationId>,
    /// The origin key id.
    pub key_id: String,
    /// How many fields the origin committed to.
    pub field_count: usize,
}

impl Header {
    /// Whether the notification has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|t| now_ms >= t)
    }

    fn from_wire(h: &wire::SignedHeader) -> Result<Header, VerifyError> {
        let m = |what: &str, e: &dyn std::fmt::Display| {
            VerifyError::Malformed(format!("header {what}: {e}"))
        };
        if h.version != 1 {
            return Err(m("version", &format!("unsupported version {}", h.version)));
        }
        let opt = |t: i64| (t != 0).then_some(t);
        Ok(Header {
            id: NotificationId::from_slice(&h.id).map_err(|e| m("id", &e))?,
            origin: h.origin.parse().map_err(|e| m("origin", &e))?,
            origin_seq: h.origin_seq,
            created_at_ms: h.created_at_ms,
            expires_at_ms: opt(h.expires_at_ms),
            kind: Kind::from_wire(h.kind).ok_or_else(|| m("kind", &h.kind))?,
            routes: h
                .routes
                .iter()
                .map(|r| r.parse().map_err(|e| m("routes", &e)))
                .collect::<Result<_, _>>()?,
            handling: Handling::from_wire(h.handling, &h.handling_restriction)
                .map_err(|e| m("handling", &e))?,
            grading: Grading::new(&h.grading_source, &h.grading_information)
                .map_err(|e| m("grading", &e))?,
            audience: h
                .audience
                .iter()
                .map(|a| a.parse().map_err(|e| m("audience", &e)))
                .collect::<Result<_, _>>()?,
            onward_transfer: h.onward_transfer,
            purposes: h.purposes.clone(),
            case_ref: h.case_ref.clone(),
            response_deadline_ms: opt(h.response_deadline_ms),
            recalls: if h.recalls.is_empty() {
                None
            } else {
                Some(NotificationId::from_slice(&h.recalls).map_err(|e| m("recalls", &e))?)
            },
            key_id: h.key_id.clone(),
            field_count: h.field_digests.len(),
        })
    }
}

/// Seals a notification at its origin: salts and commits every field, signs the header bytes.
/// Every field is disclosed; withhold afterwards.
pub fn seal(
    n: &Notification,
    origin: &NodeId,
    key: &SigningKey,
    id: NotificationId,
    origin_seq: u64,
    created_at_ms: i64,
) -> Envelope {
    let mut env = seal_unsigned(n, origin, key, id, origin_seq, created_at_ms);
    sign_origin_round(key, std::slice::from_mut(&mut env));
    env
}

/// [`seal`] without the origin signature, for [`sign_origin_round`] to sign with others sealed
/// at the same time. `key` names the key that will sign.
pub fn seal_unsigned(
    n: &Notification,
    origin: &NodeId,
    key: &SigningKey,
    id: NotificationId,
    origin_seq: u64,
    created_at_ms: i64,
) -> Envelope {
    seal_parts(n, origin, key, id, origin_seq, created_at_ms).0
}

/// [`seal_unsigned`], with the view [`inspect`] would give of the envelope, built from what
/// sealing already holds instead of decoding and re-hashing it: the origin's own copy. Once the
/// envelope is signed, call [`VerifiedView::signed_in`] to record its round.
pub fn seal_unsigned_viewed(
    n: &Notification,
    origin: &NodeId,
    key: &SigningKey,
    id: NotificationId,
    origin_seq: u64,
    created_at_ms: i64,
) -> Result<(Envelope, VerifiedView), VerifyError> {
    let (env, h) = seal_parts(n, origin, key, id, origin_seq, created_at_ms);
    let header = Header::from_wire(&h)?;
    let fields = env
        .fields
        .iter()
        .map(|f| VerifiedField {
            // The text is the leaf's canonical JSON (`fields::canonical`), one JSON value.
            path: f.path.clone(),
            json: f.value.clone(),
            transformed: None,
        })
        .collect();
    let view = VerifiedView {
        header,
        fields,
        withheld: Vec::new(),
        custody: Vec::new(),
        origin_round: None,
        signatures_checked: false,
    };
    Ok((env, view))
}

/// Seals: the envelope, and the header it signs (already encoded into it).
fn seal_parts(
    n: &Notification,
    origin: &NodeId,
    key: &SigningKey,
    id: NotificationId,
    origin_seq: u64,
    created_at_ms: i64,
) -> (Envelope, wire::SignedHeader) {
    // Every salt and value goes into one buffer and every digest into another, which the
    // fields slice: two allocations for all of them instead of three per field.
    let count = n.fields.len();
    let mut buf = vec![0u8; count * SALT_LEN];
    rand::Rng::fill(&mut rand::thread_rng(), &mut buf[..]);
    for leaf in &n.fields {
        buf.extend_from_slice(&leaf.value);
    }
    let buf = Bytes::from(buf);
    let mut digest_buf = Vec::with_capacity(count * 32);
    let mut fields = Vec::with_capacity(count);
    let mut at = count * SALT_LEN;
    for (i, leaf) in n.fields.iter().enumerate() {
        let salt = buf.slice(i * SALT_LEN..(i + 1) * SALT_LEN);
        let value = buf.slice(at..at + leaf.value.len());
        at += leaf.value.len();
        let path = leaf.path.to_string();
        digest_buf.extend_from_slice(&digest(&salt, &path, &value));
        fields.push(wire::DisclosedField { path, value, salt });
    }
    let digest_buf = Bytes::from(digest_buf);
    let mut digests: Vec<Bytes> = (0..count)
        .map(|i| digest_buf.slice(i * 32..(i + 1) * 32))
        .collect();
    digests.sort();
    let header = wire::SignedHeader {
        version: 1,
        id: Bytes::copy_from_slice(&id.0),
        origin: origin.to_string(),
        origin_seq,
        created_at_ms,
        expires_at_ms: n.expires_at_ms.unwrap_or(0),
        kind: n.kind.to_wire() as i32,
        routes: n.routes.iter().map(|r| r.to_string()).collect(),
        handling: n.handling.to_wire() as i32,
        handling_restriction: n.handling.restriction().unwrap_or_default().to_owned(),
        grading_source: n.grading.source.to_string(),
        grading_information: n.grading.information.to_string(),
        audience: n.audience.iter().map(|a| a.to_string()).collect(),
        onward_transfer: n.onward_transfer,
        purposes: n.purposes.clone(),
        case_ref: n.case_ref.clone(),
        response_deadline_ms: n.response_deadline_ms.unwrap_or(0),
        recalls: n
            .recalls
            .map(|r| Bytes::copy_from_slice(&r.0))
            .unwrap_or_default(),
        key_id: key.key_id().to_owned(),
        field_digests: digests,
    };
    let env = Envelope {
        signed_header: header.encode_to_vec().into(),
        origin_signature: Bytes::new(),
        origin_round: None,
        fields,
        custody: Vec::new(),
    };
    (env, header)
}

/// Removes disclosed fields whose path matches any pattern, without a custody entry (the
/// `tidewire envelope redact` case). Returns the withheld paths.
pub fn withhold_matching(env: &mut Envelope, patterns: &[PathPattern]) -> Vec<String> {
    let mut removed = Vec::new();
    env.fields.retain(|f| {
        let hit = f
            .path
            .parse::<FieldPath>()
            .map(|p| patterns.iter().any(|pat| pat.matches(&p)))
            .unwrap_or(false);
        if hit {
            removed.push(f.path.clone());
        }
        !hit
    });
    removed
}

/// A generalised value a relay substitutes for a disclosed one.
#[derive(Debug, Clone)]
pub struct Substitution {
    /// Path of the disclosed field.
    pub path: String,
    /// The new value.
    pub value: Value,
    /// The rule that asked for it.
    pub rule_id: String,
    /// The generaliser (`round:1`).
    pub method: String,
}

/// What a relaying node does to an envelope at one hop.
#[derive(Debug, Clone)]
pub struct Hop<'a> {
    /// This node.
    pub node: &'a NodeId,
    /// This node's signing key.
    pub key: &'a SigningKey,
    /// Where the envelope goes next.
    pub to: &'a NodeId,
    /// Now (Unix ms).
    pub at_ms: i64,
    /// The content hash of the policy applied.
    pub policy_version: &'a str,
    /// Paths to withhold, each with the rule that withheld it.
    pub withhold: Vec<(String, String)>,
    /// Values to generalise.
    pub substitute: Vec<Substitution>,
}

/// Hash over the signed header, origin signature and custody entries so far.
fn chain_hash(env: &Envelope, upto: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u32).to_be_bytes());
        h.update(b);
    };
    part(&env.signed_header);
    part(&env.origin_signature);
    if let Some(r) = &env.origin_round {
        round_parts(&mut part, r);
    }
    for c in &env.custody[..upto] {
        part(&c.body);
        part(&c.signature);
        // Entries signed alone hash as they always have; a round's proof is chained too.
        if let Some(r) = &c.round {
            round_parts(&mut part, r);
        }
    }
    h.finalize().into()
}

fn round_parts(part: &mut impl FnMut(&[u8]), r: &wire::RoundProof) {
    part(&r.index.to_be_bytes());
    part(&r.size.to_be_bytes());
    for p in &r.path {
        part(p);
    }
}

/// Applies one hop: withholds and substitutes disclosed fields and appends this node's signed
/// custody entry. Paths that are not disclosed are ignored (nothing to withhold).
pub fn relay(env: &Envelope, hop: Hop<'_>) -> Envelope {
    let key = hop.key;
    let mut out = relay_unsigned(env, hop);
    sign_custody_round(key, std::slice::from_mut(&mut out));
    out
}

/// [`relay`] without the signature: the custody entry is appended with an empty one, for
/// [`sign_custody_round`] to sign together with the rest of a send round.
pub fn relay_unsigned(env: &Envelope, hop: Hop<'_>) -> Envelope {
    let mut out = env.clone();
    let mut withheld = Vec::new();
    let mut transformations = Vec::new();
    for (path, rule) in &hop.withhold {
        if let Some(pos) = out.fields.iter().position(|f| &f.path == path) {
            let f = out.fields.remove(pos);
            withheld.push(wire::Withholding {
                digest: Bytes::copy_from_slice(&digest(&f.salt, &f.path, &f.value)),
                rule_id: rule.clone(),
            });
        }
    }
    for sub in &hop.substitute {
        if let Some(f) = out.fields.iter_mut().find(|f| f.path == sub.path) {
            let old = digest(&f.salt, &f.path, &f.value);
            let salt: [u8; SALT_LEN] = rand::random();
            let value = crate::fields::canonical(&sub.value);
            let new = digest(&salt, &f.path, &value);
            f.value = value.into();
            f.salt = Bytes::copy_from_slice(&salt);
            transformations.push(wire::Transformation {
                path: sub.path.clone(),
                replaces: Bytes::copy_from_slice(&old),
                new_digest: Bytes::copy_from_slice(&new),
                rule_id: sub.rule_id.clone(),
                method: sub.method.clone(),
            });
        }
    }
    let body = wire::CustodyBody {
        node: hop.node.to_string(),
        key_id: hop.key.key_id().to_owned(),
        at_ms: hop.at_ms,
        policy_version: hop.policy_version.to_owned(),
        chain_hash: Bytes::copy_from_slice(&chain_hash(&out, out.custody.len())),
        withheld,
        transformations,
        to: hop.to.to_string(),
    }
    .encode_to_vec();
    out.custody.push(wire::CustodyEntry {
        body: body.into(),
        signature: Bytes::new(),
        round: None,
    });
    out
}

/// Signs the last custody entry of each envelope (appended by [`relay_unsigned`]) with `key`,
/// in rounds ([`sign_rounds`]): a receiver verifies one signature per round.
pub fn sign_custody_round(key: &SigningKey, envs: &mut [Envelope]) {
    let bodies: Vec<&[u8]> = envs
        .iter()
        .map(|e| e.custody.last().map_or(&[][..], |c| c.body.as_ref()))
        .collect();
    let signed = sign_rounds(key, CUSTODY_DOMAIN, &bodies);
    for (e, (signature, round)) in envs.iter_mut().zip(signed) {
        if let Some(c) = e.custody.last_mut() {
            c.signature = Bytes::copy_from_slice(&signature);
            c.round = round;
        }
    }
}

/// Signs the headers of envelopes sealed with [`seal_unsigned`] as their origin, in rounds
/// ([`sign_rounds`]).
pub fn sign_origin_round(key: &SigningKey, envs: &mut [Envelope]) {
    let headers: Vec<&[u8]> = envs.iter().map(|e| e.signed_header.as_ref()).collect();
    let signed = sign_rounds(key, HEADER_DOMAIN, &headers);
    for (e, (signature, round)) in envs.iter_mut().zip(signed) {
        e.origin_signature = Bytes::copy_from_slice(&signature);
        e.origin_round = round;
    }
}

/// Signs each of `messages` (all of the kind `domain` names) with `key`. One alone gets a
/// signature over `domain ‖ message`. More are signed in rounds of up to [`SIGNING_ROUND`]: one
/// signature over `ROUND_DOMAIN ‖ domain ‖ u32 size ‖ root`, where root is the Merkle root
/// ([`merkle`]) of the round's leaves `SHA-256(0x00 ‖ domain ‖ message)`, and each message gets
/// its [`wire::RoundProof`].
pub fn sign_rounds(
    key: &SigningKey,
    domain: &[u8],
    messages: &[&[u8]],
) -> Vec<([u8; 64], Option<wire::RoundProof>)> {
    let mut out = Vec::with_capacity(messages.len());
    for round in messages.chunks(SIGNING_ROUND) {
        if let [one] = round {
            out.push((key.sign(domain, one), None));
            continue;
        }
        let leaves: Vec<merkle::Hash> = round.iter().map(|m| leaf(domain, m)).collect();
        let (root, paths) = merkle::build(&leaves);
        let size = leaves.len() as u32;
        let signature = key.sign(ROUND_DOMAIN, &round_message(domain, size, &root));
        out.extend(paths.into_iter().enumerate().map(|(i, path)| {
            let proof = wire::RoundProof {
                index: i as u32,
                size,
                path: path
                    .into_iter()
                    .map(|h| Bytes::copy_from_slice(&h))
                    .collect(),
            };
            (signature, Some(proof))
        }));
    }
    out
}

fn leaf(domain: &[u8], message: &[u8]) -> merkle::Hash {
    merkle::leaf_hash(&[domain, message])
}

/// What a round signature signs, after [`ROUND_DOMAIN`]: the leaves' domain, the round's size
/// and its root.
fn round_message(domain: &[u8], size: u32, root: &merkle::Hash) -> Vec<u8> {
    [domain, &size.to_be_bytes(), root].concat()
}

/// What a signature over `message` (of the kind `domain` names) must verify over: the message
/// itself, or the root its round proof leads it to. The error says what is wrong with the proof.
fn signed_message(
    domain: &[u8],
    message: &[u8],
    round: Option<&wire::RoundProof>,
) -> Result<Vec<u8>, String> {
    let Some(r) = round else {
        return Ok([domain, message].concat());
    };
    if r.size < 2 {
        return Err("its signing round has fewer than two members".into());
    }
    if r.path.len() > merkle::MAX_PATH {
        return Err("its round proof is too long".into());
    }
    let mut path = Vec::with_capacity(r.path.len());
    for p in &r.path {
        path.push(
            <merkle::Hash>::try_from(p.as_ref())
                .map_err(|_| "a hash of its round proof is not 32 bytes".to_owned())?,
        );
    }
    let root = merkle::root_from_path(r.index.into(), r.size.into(), &leaf(domain, message), &path)
        .ok_or_else(|| "its round proof does not fit its place in the round".to_owned())?;
    Ok([ROUND_DOMAIN, &round_message(domain, r.size, &root)].concat())
}

/// A field the receiver got, verified against a commitment.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedField {
    /// Its path.
    pub path: String,
    /// Its value as the JSON text committed to, checked to be one JSON value that
    /// [`VerifiedField::value`] parses. Kept as text (a slice of the envelope), not as a parsed
    /// tree: most fields are only matched by path and passed on, and a feed writes the text as
    /// it is.
    pub json: Bytes,
    /// Set when a relay generalised it.
    pub transformed: Option<TransformInfo>,
}

impl VerifiedField {
    /// Its value, parsed from [`VerifiedField::json`] (`null` for a field that did not come
    /// from [`verify`], [`inspect`] or sealing and is not JSON).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

/// Who generalised a value, how, under which rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformInfo {
    /// The relay.
    pub by: String,
    /// Its rule.
    pub rule_id: String,
    /// The generaliser.
    pub method: String,
}

/// A commitment without a disclosed value.
#[derive(Debug, Clone, PartialEq)]
pub struct WithheldField {
    /// The digest (hex).
    pub digest: String,
    /// The node that withheld it, when it said so in its custody entry.
    pub by: Option<String>,
    /// The rule it gave.
    pub rule_id: Option<String>,
}

/// One hop of the custody chain, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct CustodyHop {
    /// The relay.
    pub node: String,
    /// Where it sent the envelope.
    pub to: String,
    /// When (Unix ms).
    pub at_ms: i64,
    /// Policy version it applied.
    pub policy_version: String,
    /// How many fields it withheld.
    pub withheld: usize,
    /// How many values it generalised.
    pub transformed: usize,
    /// `(index, size)` when the relay signed this entry as one of a round of entries.
    pub round: Option<(u32, u32)>,
}

/// What a receiver may rely on after [`verify`]: every field here is the origin's, or a
/// generalisation signed by the named relay.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedView {
    /// The header.
    pub header: Header,
    /// Fields in clear, in envelope order.
    pub fields: Vec<VerifiedField>,
    /// Commitments not disclosed.
    pub withheld: Vec<WithheldField>,
    /// The custody chain.
    pub custody: Vec<CustodyHop>,
    /// `(index, size)` when the origin signed the header as one of a round of headers.
    pub origin_round: Option<(u32, u32)>,
    /// Whether signatures were checked (false for [`inspect`]).
    pub signatures_checked: bool,
}

impl VerifiedView {
    /// Records the round `env` was signed in (for a view from [`seal_unsigned_viewed`], once
    /// [`sign_origin_round`] has signed its envelope).
    pub fn signed_in(&mut self, env: &Envelope) {
        self.origin_round = env.origin_round.as_ref().map(|r| (r.index, r.size));
    }

    /// The body as a JSON tree (withheld array slots show as `null`).
    pub fn body(&self) -> Value {
        let mut parsed: Vec<(FieldPath, Value)> = self
            .fields
            .iter()
            .filter_map(|f| f.path.parse().ok().map(|p| (p, f.value())))
            .collect();
        crate::fields::unflatten(parsed.iter_mut().map(|(p, v)| (&*p, v.take())))
            .unwrap_or(Value::Null)
    }

    /// The custody path: origin first, then every relay that handed it on.
    pub fn path(&self) -> Vec<String> {
        let mut p: Vec<String> = self.custody.iter().map(|c| c.node.clone()).collect();
        if p.first().map(String::as_str) != Some(self.header.origin.as_str()) {
            p.insert(0, self.header.origin.to_string());
        }
        p
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// Available in clear (origin commitment, or a transformation's new value by custody idx).
    Open(Option<usize>),
    /// Withheld by custody idx.
    Withheld(usize),
    /// Replaced by a transformation in custody idx.
    Replaced(usize),
}

/// The signed parts of an envelope, decoded but not yet trusted: enough to find the signers' keys.
/// [`verify`] checks every signature over them before [`parse`] interprets any commitment, so
/// that a failure names what was altered (not a consequence of the alteration) and nothing an
/// unauthenticated custody entry claims is reported as a relay's act.
struct Parts {
    h: wire::SignedHeader,
    header: Header,
    bodies: Vec<wire::CustodyBody>,
}

/// The signed header, as sent and typed.
fn decode_header(env: &Envelope) -> Result<(wire::SignedHeader, Header), VerifyError> {
    let h = wire::SignedHeader::decode(env.signed_header.clone())
        .map_err(|e| VerifyError::Malformed(format!("signed header: {e}")))?;
    let header = Header::from_wire(&h)?;
    Ok((h, header))
}

fn decode_parts(env: &Envelope) -> Result<Parts, VerifyError> {
    let (h, header) = decode_header(env)?;
    if env.origin_signature.len() != 64 {
        return Err(VerifyError::Malformed(
            "origin signature is not 64 bytes".into(),
        ));
    }
    if env.custody.len() > MAX_CUSTODY {
        return Err(VerifyError::Malformed(format!(
            "more than {MAX_CUSTODY} custody entries"
        )));
    }
    let mut bodies = Vec::with_capacity(env.custody.len());
    for (i, entry) in env.custody.iter().enumerate() {
        let broken = |reason: String| VerifyError::BrokenCustodyChain { index: i, reason };
        let body = wire::CustodyBody::decode(entry.body.clone())
            .map_err(|e| broken(format!("body does not decode: {e}")))?;
        if entry.signature.len() != 64 {
            return Err(broken("signature is not 64 bytes".into()));
        }
        bodies.push(body);
    }
    Ok(Parts { h, header, bodies })
}

fn parse(env: &Envelope, parts: Parts) -> Result<VerifiedView, VerifyError> {
    let Parts { h, header, bodies } = parts;
    let mut state: DigestMap<State> =
        DigestMap::with_capacity_and_hasher(h.field_digests.len(), Default::default());
    let mut prev: Option<&[u8]> = None;
    for d in &h.field_digests {
        let d32 = <[u8; 32]>::try_from(d.as_ref())
            .map_err(|_| VerifyError::Malformed("a field digest is not 32 bytes".into()))?;
        if prev.is_some_and(|p| p >= d.as_ref()) {
            return Err(VerifyError::Malformed(
                "field digests are not sorted and unique".into(),
            ));
        }
        prev = Some(d);
        state.insert(d32, State::Open(None));
    }

    let mut hops = Vec::with_capacity(env.custody.len());
    let mut attributions: DigestMap<(usize, String)> = DigestMap::default();
    let mut transforms: DigestMap<(usize, String, String)> = DigestMap::default();
    for (i, body) in bodies.iter().enumerate() {
        let broken = |reason: String| VerifyError::BrokenCustodyChain { index: i, reason };
        if body.chain_hash.as_ref() != chain_hash(env, i) {
            return Err(broken(
                "it does not sign the envelope that preceded it".into(),
            ));
        }
        if let Some(p) = i.checked_sub(1).map(|j| &bodies[j].to)
            && *p != body.node
        {
            return Err(broken(format!(
                "`{}` relayed it, but the previous hop sent it to `{p}`",
                body.node
            )));
        }
        for w in &body.withheld {
            let d = <[u8; 32]>::try_from(w.digest.as_ref())
                .map_err(|_| broken("a withheld digest is not 32 bytes".into()))?;
            match state.get(&d) {
                Some(State::Open(_)) => {
                    state.insert(d, State::Withheld(i));
                    attributions.insert(d, (i, w.rule_id.clone()));
                }
                _ => {
                    return Err(broken(
                        "it withholds a digest it never received in clear".into(),
                    ));
                }
            }
        }
        for t in &body.transformations {
            let bad = |reason: &str| VerifyError::InvalidTransformation {
                index: i,
                path: t.path.clone(),
                reason: reason.to_owned(),
            };
            let old = <[u8; 32]>::try_from(t.replaces.as_ref())
                .map_err(|_| bad("names a malformed digest"))?;
            let new = <[u8; 32]>::try_from(t.new_digest.as_ref())
                .map_err(|_| bad("has a malformed digest"))?;
            match state.get(&old) {
                Some(State::Open(_)) => {}
                _ => return Err(bad("replaces a value its author never received in clear")),
            }
            if state.contains_key(&new) {
                return Err(bad("reuses an existing digest"));
            }
            state.insert(old, State::Replaced(i));
            state.insert(new, State::Open(Some(i)));
            transforms.insert(new, (i, t.rule_id.clone(), t.method.clone()));
        }
        hops.push(CustodyHop {
            node: body.node.clone(),
            to: body.to.clone(),
            at_ms: body.at_ms,
            policy_version: body.policy_version.clone(),
            withheld: body.withheld.len(),
            transformed: body.transformations.len(),
            round: env.custody[i].round.as_ref().map(|r| (r.index, r.size)),
        });
    }

    let mut fields = Vec::with_capacity(env.fields.len());
    let mut disclosed: DigestMap<()> =
        DigestMap::with_capacity_and_hasher(env.fields.len(), Default::default());
    for f in &env.fields {
        let tampered = || VerifyError::TamperedField {
            path: f.path.clone(),
        };
        if f.salt.len() != SALT_LEN {
            return Err(tampered());
        }
        let d = digest(&f.salt, &f.path, &f.value);
        let transformed = match state.get(&d) {
            Some(State::Open(None)) => None,
            Some(State::Open(Some(_))) => {
                transforms.get(&d).map(|(i, rule, method)| TransformInfo {
                    by: bodies[*i].node.clone(),
                    rule_id: rule.clone(),
                    method: method.clone(),
                })
            }
            Some(State::Withheld(i) | State::Replaced(i)) => {
                return Err(VerifyError::Widened {
                    path: f.path.clone(),
                    by: bodies[*i].node.clone(),
                });
            }
            None => return Err(tampered()),
        };
        if disclosed.insert(d, ()).is_some() {
            return Err(VerifyError::Malformed(format!(
                "field `{}` is disclosed twice",
                f.path
            )));
        }
        if !crate::fields::is_json_value(&f.value) {
            return Err(tampered());
        }
        fields.push(VerifiedField {
            path: f.path.clone(),
            json: f.value.clone(),
            transformed,
        });
    }

    let mut withheld: Vec<WithheldField> = state
        .iter()
        .filter(|(d, s)| match s {
            State::Open(_) => !disclosed.contains_key(*d),
            State::Withheld(_) => true,
            State::Replaced(_) => false,
        })
        .map(|(d, _)| {
            let attr = attributions.get(d);
            WithheldField {
                digest: hex::encode(d),
                by: attr.map(|(i, _)| bodies[*i].node.clone()),
                rule_id: attr.map(|(_, r)| r.clone()),
            }
        })
        .collect();
    withheld.sort_by(|a, b| a.digest.cmp(&b.digest));

    Ok(VerifiedView {
        header,
        fields,
        withheld,
        custody: hops,
        origin_round: env.origin_round.as_ref().map(|r| (r.index, r.size)),
        signatures_checked: false,
    })
}

/// Decodes and checks an envelope's structure and field commitments without checking any
/// signature (for `tidewire envelope inspect`). Do not trust the result.
pub fn inspect(env: &Envelope) -> Result<VerifiedView, VerifyError> {
    parse(env, decode_parts(env)?)
}

/// The envelope's header alone, decoded and validated but checked against no signature and no
/// field: what a copy this node stored is about, without [`inspect`]ing every field. Do not
/// trust it for anything received.
pub fn header(env: &Envelope) -> Result<Header, VerifyError> {
    decode_header(env).map(|(_, header)| header)
}

fn roster_key<'r>(
    roster: &'r Roster,
    node: &str,
    key_id: &str,
    at_ms: i64,
) -> Result<&'r VerifyingKey, VerifyError> {
    let entry = roster
        .get(node)
        .ok_or_else(|| VerifyError::UnknownOrigin(node.to_owned()))?;
    let key = entry
        .keys
        .iter()
        .find(|k| k.key_id == key_id)
        .ok_or_else(|| VerifyError::UnknownKey {
            node: node.to_owned(),
            key_id: key_id.to_owned(),
        })?;
    if !key.valid_at(at_ms) {
        return Err(VerifyError::KeyNotValid {
            node: node.to_owned(),
            key_id: key_id.to_owned(),
            at: timefmt::format_ms(at_ms),
            window: key.window(),
        });
    }
    Ok(&key.key)
}

/// Verifies a whole envelope against the roster: the origin signature over the header bytes as
/// received, every custody signature and its chaining, and every disclosed field's commitment.
/// Signatures are checked first: nothing the header or a custody entry says is acted on before it
/// is known to be signed.
pub fn verify(env: &Envelope, roster: &Roster) -> Result<VerifiedView, VerifyError> {
    let parts = decode_parts(env)?;
    let sc = collect_signatures(env, &parts, roster)?;
    let ok = if sc.keys.len() == 1 {
        sc.keys[0].verify(&sc.messages[0], &sc.sigs[0]).is_ok()
    } else {
        let refs: Vec<&[u8]> = sc.messages.iter().map(Vec::as_slice).collect();
        ed25519_dalek::verify_batch(&refs, &sc.sigs, &sc.keys).is_ok()
    };
    if !ok {
        return Err(find_bad_signature(&parts, &sc));
    }
    let mut view = parse(env, parts)?;
    view.signatures_checked = true;
    Ok(view)
}

/// The signatures of one envelope with the roster keys that must have made them.
struct SigCheck {
    keys: Vec<VerifyingKey>,
    messages: Vec<Vec<u8>>,
    sigs: Vec<Signature>,
}

fn collect_signatures(
    env: &Envelope,
    parts: &Parts,
    roster: &Roster,
) -> Result<SigCheck, VerifyError> {
    let origin = parts.header.origin.as_str();
    let origin_key = roster_key(
        roster,
        origin,
        &parts.header.key_id,
        parts.header.created_at_ms,
    )?;
    let mut keys = vec![*origin_key];
    for (i, body) in parts.bodies.iter().enumerate() {
        let key =
            roster_key(roster, &body.node, &body.key_id, body.at_ms).map_err(|e| match e {
                VerifyError::UnknownOrigin(node) => VerifyError::UnknownRelay { index: i, node },
                other => other,
            })?;
        keys.push(*key);
    }
    let mut messages: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
    messages.push(
        signed_message(HEADER_DOMAIN, &env.signed_header, env.origin_round.as_ref())
            .map_err(|_| VerifyError::BadOriginSignature(origin.to_owned()))?,
    );
    for (i, c) in env.custody.iter().enumerate() {
        messages.push(
            signed_message(CUSTODY_DOMAIN, &c.body, c.round.as_ref())
                .map_err(|reason| VerifyError::BrokenCustodyChain { index: i, reason })?,
        );
    }
    let mut sigs = Vec::with_capacity(keys.len());
    sigs.push(
        Signature::from_slice(&env.origin_signature)
            .map_err(|_| VerifyError::BadOriginSignature(origin.to_owned()))?,
    );
    for (i, c) in env.custody.iter().enumerate() {
        sigs.push(Signature::from_slice(&c.signature).map_err(|_| {
            VerifyError::BadCustodySignature {
                index: i,
                node: parts.bodies[i].node.clone(),
            }
        })?);
    }
    Ok(SigCheck {
        keys,
        messages,
        sigs,
    })
}

/// Checks one by one, strictly, to name the signature that failed.
fn find_bad_signature(parts: &Parts, sc: &SigCheck) -> VerifyError {
    let origin = parts.header.origin.as_str();
    if sc.keys[0]
        .verify_strict(&sc.messages[0], &sc.sigs[0])
        .is_err()
    {
        return VerifyError::BadOriginSignature(origin.to_owned());
    }
    for i in 1..sc.keys.len() {
        if sc.keys[i].verify(&sc.messages[i], &sc.sigs[i]).is_err() {
            return VerifyError::BadCustodySignature {
                index: i - 1,
                node: parts.bodies[i - 1].node.clone(),
            };
        }
    }
    VerifyError::BadOriginSignature(origin.to_owned())
}

/// How many envelopes one ed25519 batch verification covers. Larger batches gain little speed
/// (64 already amortises the shared multiscalar multiplication) but need megabyte-sized
/// transient tables that cost more in page faults than they save; and a bad envelope sends only
/// its own batch through the one-by-one fallback.
const VERIFY_BATCH: usize = 64;

/// Verifies many envelopes at once (a link's receive batch): every signature of every envelope
/// of a batch of [`VERIFY_BATCH`] goes into one ed25519 batch verification, which costs about
/// half of checking them one by one. If a batch fails, each of its envelopes is verified on its
/// own so that only the bad ones are refused, each with its precise error.
pub fn verify_many(
    inputs: &[&[u8]],
    roster: &Roster,
) -> Vec<Result<(Envelope, VerifiedView), VerifyError>> {
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(VERIFY_BATCH) {
        out.extend(verify_batch_of(chunk, roster));
    }
    out
}

fn verify_batch_of(
    inputs: &[&[u8]],
    roster: &Roster,
) -> Vec<Result<(Envelope, VerifiedView), VerifyError>> {
    let mut prepared: Vec<Result<(Envelope, Parts, SigCheck), VerifyError>> = inputs
        .iter()
        .map(|bytes| {
            let env = decode(bytes)?;
            let parts = decode_parts(&env)?;
            let sc = collect_signatures(&env, &parts, roster)?;
            Ok((env, parts, sc))
        })
        .collect();
    let (mut msgs, mut sigs, mut keys): (Vec<&[u8]>, Vec<Signature>, Vec<VerifyingKey>) =
        (Vec::new(), Vec::new(), Vec::new());
    // A round signature appears once per entry of its round: each distinct (key, message,
    // signature) goes into the batch once.
    let mut distinct: HashMap<([u8; 32], [u8; 64]), &[u8]> = HashMap::new();
    for (_, _, sc) in prepared.iter().flatten() {
        for ((m, s), k) in sc.messages.iter().zip(&sc.sigs).zip(&sc.keys) {
            let first = match distinct.entry((k.to_bytes(), s.to_bytes())) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(m);
                    true
                }
                // The same signature claimed for another message: checked too, so that the
                // batch fails and the one-by-one fallback names the envelope.
                std::collections::hash_map::Entry::Occupied(o) => *o.get() != m.as_slice(),
            };
            if first {
                msgs.push(m);
                sigs.push(*s);
                keys.push(*k);
            }
        }
    }
    let all_ok = !sigs.is_empty() && ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok();
    prepared
        .drain(..)
        .map(|p| {
            let (env, parts, sc) = p?;
            if !all_ok {
                let single_ok = if sc.keys.len() == 1 {
                    sc.keys[0].verify(&sc.messages[0], &sc.sigs[0]).is_ok()
                } else {
                    let refs: Vec<&[u8]> = sc.messages.iter().map(Vec::as_slice).collect();
                    ed25519_dalek::verify_batch(&refs, &sc.sigs, &sc.keys).is_ok()
                };
                if !single_ok {
                    return Err(find_bad_signature(&parts, &sc));
                }
            }
            let mut view = parse(&env, parts)?;
            view.signatures_checked = true;
            Ok((env, view))
        })
        .collect()
}

/// Decodes bytes and verifies them; the one entry point for untrusted input.
pub fn verify_bytes(
    bytes: &[u8],
    roster: &Roster,
) -> Result<(Envelope, VerifiedView), VerifyError> {
    let env = decode(bytes)?;
    let view = verify(&env, roster)?;
    Ok((env, view))
}

/// Reads envelope bytes from a file with a clear error.
pub fn read_file(path: &std::path::Path) -> Result<Envelope, CoreError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CoreError::Decode(format!("cannot read {}: {e}", path.display())))?;
    decode_shared(Bytes::from(bytes))
        .map_err(|e| CoreError::Decode(format!("{}: {e}", path.display())))
}
