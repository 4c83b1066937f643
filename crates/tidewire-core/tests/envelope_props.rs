//! Property tests of signing that survives redaction (DESIGN.md, "Signing that survives
//! redaction").
//!
//! For random notifications (random field trees of nested objects, arrays, unicode strings,
//! numbers, booleans and null), random fields withheld at the origin (`withhold_matching` with
//! exact paths) and by 0-3 relays with distinct roster keys (`relay`, withholding and generalising
//! values, sometimes withholding a value an earlier relay generalised), this suite proves:
//!
//! - what remains verifies, the verified fields are exactly the disclosed ones (same paths, same
//!   values, in envelope order, each generalised value attributed to the relay that made it), and
//!   the withheld count is the number of fields removed, each attributed to whoever removed it;
//! - changing any single byte of anything signed or committed makes `verify` fail with the error
//!   that names what was changed. The accepted errors, per place changed:
//!   - signed header: `Malformed` (it no longer decodes or validates) or `BadOriginSignature`; and
//!     `UnknownOrigin` / `UnknownKey` only when the change rewrote the origin or key id it names
//!     (no signature can be checked without a key);
//!   - origin signature, or its round proof (the origin signs headers in rounds of 1–5, at a
//!     random place in the round): `BadOriginSignature`;
//!   - a disclosed value or salt: `TamperedField` naming that field;
//!   - a custody entry's body, or a transformation inside it: `BadCustodySignature` for that entry,
//!     `BrokenCustodyChain` for that entry when the body no longer decodes, and `UnknownRelay` /
//!     `UnknownKey` only when the change rewrote the relay or key id it names;
//!   - a custody entry's signature: `BadCustodySignature` for that entry;
//!   - a custody entry's round proof (relays sign their entries in rounds of 1–5 envelopes, at a
//!     random place in the round): `BadCustodySignature` for that entry, or `BrokenCustodyChain`
//!     for it when the proof no longer has the shape of one.

mod common;

use std::collections::BTreeMap;

use common::{flip, path_nodes, relay_key, roster};
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use serde_json::{Map, Value};
use tidewire_core::envelope::{self, Envelope, Hop, Substitution};
use tidewire_core::fields::PathPattern;
use tidewire_core::{Notification, NotificationId, VerifyError, wire};

/// A scalar leaf: null, bool, integers, finite floats, unicode strings.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("json numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::collection::vec(any::<char>(), 0..16)
            .prop_map(|c| Value::String(c.into_iter().collect())),
    ]
}

/// A field name: letters, digits, `_` and `-`.
fn key() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,6}"
}

/// A field tree: scalars, arrays and objects nested up to 4 levels.
fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A notification body whose first leaf is always `ref`.
fn body() -> impl Strategy<Value = Map<String, Value>> {
    (scalar(), prop::collection::btree_map(key(), tree(), 0..5)).prop_map(|(first, rest)| {
        let mut m = Map::new();
        m.insert("ref".into(), first);
        m.extend(rest.into_iter().filter(|(k, _)| k != "ref"));
        m
    })
}

/// What happens to one notification on its way.
#[derive(Debug, Clone)]
struct Plan {
    body: Map<String, Value>,
    /// How many relays it crosses.
    hops: usize,
    /// The fate of leaf `i` is `fates[i % len]` (see [`run`]).
    fates: Vec<u8>,
    /// Generalised values, used in turn.
    substitutes: Vec<Value>,
    /// The origin signs its header in a round of `rounds[0].0` headers (1: alone), the plan's at
    /// place `rounds[0].1 % rounds[0].0`; relay `h` its custody entry likewise by `rounds[h + 1]`.
    rounds: Vec<(usize, usize)>,
}

fn plan(hops: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Plan> {
    (
        body(),
        hops,
        prop::collection::vec(any::<u8>(), 1..32),
        prop::collection::vec(scalar(), 1..8),
        prop::collection::vec((1usize..=5, any::<usize>()), 4),
    )
        .prop_map(|(body, hops, fates, substitutes, rounds)| Plan {
            body,
            hops,
            fates,
            substitutes,
            rounds,
        })
}

/// What a plan forces on the first leaf (`ref`), so that a property has something to work on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Force {
    Nothing,
    /// `ref` stays disclosed as the origin wrote it.
    Disclosed,
    /// The first relay generalises `ref` (the plan has at least one hop).
    Generalised,
}

/// What a leaf's journey does to it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Keep,
    /// Withheld at the origin with `withhold_matching`.
    Redact,
    /// Withheld by relay `h`.
    WithheldBy(usize),
    /// Generalised by relay `h`.
    GeneralisedBy(usize),
    /// Generalised by relay `h`, then withheld by relay `h + 1`.
    GeneralisedThenWithheld(usize),
}

fn fate(plan: &Plan, leaf: usize, force: Force) -> Fate {
    match (leaf, force) {
        (0, Force::Disclosed) => return Fate::Keep,
        (0, Force::Generalised) => return Fate::GeneralisedBy(0),
        _ => {}
    }
    let b = plan.fates[leaf % plan.fates.len()];
    let h = if plan.hops == 0 {
        0
    } else {
        (b / 8) as usize % plan.hops
    };
    match b % 8 {
        0..=3 => Fate::Keep,
        4 => Fate::Redact,
        _ if plan.hops == 0 => Fate::Keep,
        5 => Fate::WithheldBy(h),
        6 => Fate::GeneralisedBy(h),
        _ if h + 1 < plan.hops => Fate::GeneralisedThenWithheld(h),
        _ => Fate::GeneralisedBy(h),
    }
}

/// A disclosed field as the receiver should see it: path, value, the relay that generalised it.
type Expected = (String, Value, Option<String>);

/// The outcome of a plan: the envelope that arrives and what verifying it must show.
struct Outcome {
    env: Envelope,
    /// The disclosed fields, in envelope order.
    expected: Vec<Expected>,
    /// How many fields the origin committed to.
    committed: usize,
    /// How many fields each node withheld (`None`: withheld at the origin, unattributed).
    withheld_by: BTreeMap<Option<String>, usize>,
}

/// The scalar leaves of a JSON body, in document order, with their paths (written here
/// independently of the crate's own flattening).
fn leaves(v: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(c, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                leaves(c, &format!("{path}[{i}]"), out);
            }
        }
        scalar => out.push((path.to_owned(), scalar.clone())),
    }
}

/// Seals the plan's notification, redacts at the origin and relays it, modelling what the
/// receiver must see.
fn run(plan: &Plan, force: Force) -> Outcome {
    let body = Value::Object(plan.body.clone());
    let n = Notification::from_value(&common::notification_json(body.clone()))
        .expect("generated notifications are valid");
    let mut all = Vec::new();
    leaves(&body, "", &mut all);
    let crate_paths: Vec<String> = n.fields.iter().map(|l| l.path.to_string()).collect();
    let our_paths: Vec<String> = all.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        crate_paths, our_paths,
        "the crate flattens the body as written"
    );

    let fates: Vec<Fate> = (0..all.len()).map(|i| fate(plan, i, force)).collect();
    let mut model: Vec<Expected> = all.into_iter().map(|(p, v)| (p, v, None)).collect();
    let committed = model.len();
    let mut withheld_by: BTreeMap<Option<String>, usize> = BTreeMap::new();

    // The origin signs this header in a round with others it sealed at the same time.
    let (size, place) = plan.rounds[0];
    let place = place % size;
    let mut sealed: Vec<Envelope> = (0..size)
        .map(|j| {
            let id = NotificationId::generate();
            let seq = 7 + j as u64;
            let origin = common::node(common::ORIGIN);
            envelope::seal_unsigned(
                &n,
                &origin,
                &common::origin_key(),
                id,
                seq,
                common::CREATED_AT_MS,
            )
        })
        .collect();
    envelope::sign_origin_round(&common::origin_key(), &mut sealed);
    let mut env = sealed.swap_remove(place);
    assert_eq!(env.origin_round.is_some(), size > 1);

    let mut redact: Vec<String> = model
        .iter()
        .zip(&fates)
        .filter(|(_, f)| **f == Fate::Redact)
        .map(|(e, _)| e.0.clone())
        .collect();
    let patterns: Vec<PathPattern> = redact
        .iter()
        .map(|p| p.parse().expect("a field path is a pattern"))
        .collect();
    let mut removed = envelope::withhold_matching(&mut env, &patterns);
    removed.sort();
    redact.sort();
    assert_eq!(
        removed, redact,
        "withhold_matching removes exactly the paths"
    );
    *withheld_by.entry(None).or_default() += redact.len();

    let nodes = path_nodes();
    for h in 0..plan.hops {
        let key = relay_key(h);
        let mut withhold = Vec::new();
        let mut substitute = Vec::new();
        for (i, (e, f)) in model.iter().zip(&fates).enumerate() {
            match *f {
                Fate::WithheldBy(x) if x == h => withhold.push(e.0.clone()),
                Fate::GeneralisedThenWithheld(x) if x + 1 == h => withhold.push(e.0.clone()),
                Fate::GeneralisedBy(x) | Fate::GeneralisedThenWithheld(x) if x == h => {
                    substitute.push(Substitution {
                        path: e.0.clone(),
                        value: plan.substitutes[i % plan.substitutes.len()].clone(),
                        rule_id: format!("rule-{h}"),
                        method: "test:replace".into(),
                    });
                }
                _ => {}
            }
        }
        for e in model.iter_mut() {
            if let Some(s) = substitute.iter().find(|s| s.path == e.0) {
                e.1 = s.value.clone();
                e.2 = Some(nodes[h].to_string());
            }
        }
        *withheld_by.entry(Some(nodes[h].to_string())).or_default() += withhold.len();
        let hop = Hop {
            node: &nodes[h],
            key: &key,
            to: &nodes[h + 1],
            at_ms: common::CREATED_AT_MS + 1_000 * (h as i64 + 1),
            policy_version: "policy-v1",
            withhold: withhold
                .iter()
                .map(|p| (p.clone(), format!("rule-{h}")))
                .collect(),
            substitute,
        };
        // The relay signs this envelope's entry in a round with others it sends (here, the same
        // envelope relayed at other times).
        let (size, place) = plan.rounds[h + 1];
        let place = place % size;
        let mut round: Vec<Envelope> = (0..size)
            .map(|j| {
                let at_ms = hop.at_ms + j as i64 - place as i64;
                envelope::relay_unsigned(
                    &env,
                    Hop {
                        at_ms,
                        ..hop.clone()
                    },
                )
            })
            .collect();
        envelope::sign_custody_round(&key, &mut round);
        env = round.swap_remove(place);
        assert_eq!(env.custody[h].round.is_some(), size > 1);
    }
    // Keep only what is still disclosed, in the original (envelope) order.
    let gone: Vec<bool> = fates
        .iter()
        .map(|f| {
            matches!(
                f,
                Fate::Redact | Fate::WithheldBy(_) | Fate::GeneralisedThenWithheld(_)
            )
        })
        .collect();
    let expected = model
        .into_iter()
        .zip(gone)
        .filter(|(_, g)| !g)
        .map(|(e, _)| e)
        .collect();
    withheld_by.retain(|_, n| *n > 0);
    Outcome {
        env,
        expected,
        committed,
        withheld_by,
    }
}

fn view_fields(view: &envelope::VerifiedView) -> Vec<Expected> {
    view.fields
        .iter()
        .map(|f| {
            (
                f.path.clone(),
                f.value(),
                f.transformed.as_ref().map(|t| t.by.clone()),
            )
        })
        .collect()
}

fn verify(env: &Envelope) -> Result<envelope::VerifiedView, VerifyError> {
    envelope::verify(env, &roster())
}

/// Which of the names a signed header carries a changed header rewrote: (origin, key id).
fn header_names_changed(original: &[u8], changed: &[u8]) -> (bool, bool) {
    let before = wire::SignedHeader::decode(original).expect("the sealed header decodes");
    match wire::SignedHeader::decode(changed) {
        Ok(after) => (after.origin != before.origin, after.key_id != before.key_id),
        Err(_) => (false, false),
    }
}

/// Which of the names a custody body carries a changed body rewrote: (node, key id).
fn custody_names_changed(original: &[u8], changed: &[u8]) -> (bool, bool) {
    let before = wire::CustodyBody::decode(original).expect("the relayed body decodes");
    match wire::CustodyBody::decode(changed) {
        Ok(after) => (after.node != before.node, after.key_id != before.key_id),
        Err(_) => (false, false),
    }
}

/// Whether `err` is an accepted failure for a change to custody entry `at`'s body.
fn custody_body_error_accepted(err: &VerifyError, at: usize, names: (bool, bool)) -> bool {
    let (node_changed, key_changed) = names;
    match err {
        VerifyError::BadCustodySignature { index, .. } => *index == at,
        VerifyError::BrokenCustodyChain { index, .. } => *index == at,
        VerifyError::UnknownRelay { index, .. } => *index == at && node_changed,
        VerifyError::UnknownKey { .. } => node_changed || key_changed,
        _ => false,
    }
}

/// Changes one part of a round proof: its index (`what` 0), its size (1) or a byte of one of
/// its path's hashes (2).
fn damage(r: &mut wire::RoundProof, what: u8, at: Index, mask: u32) {
    match what {
        0 => r.index ^= mask,
        1 => r.size ^= mask,
        _ => {
            let k = at.index(r.path.len());
            let path = &mut r.path[k];
            let i = at.index(path.len());
            flip(path, i, mask as u8);
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(64)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn what_remains_verifies_and_equals_exactly_the_disclosed_fields(p in plan(0..=3)) {
        let out = run(&p, Force::Nothing);
        let view = verify(&out.env).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(view.signatures_checked);
        prop_assert_eq!(view_fields(&view), out.expected.clone());
        prop_assert_eq!(view.header.field_count, out.committed);
        prop_assert_eq!(view.withheld.len(), out.committed - out.expected.len());
        let mut by: BTreeMap<Option<String>, usize> = BTreeMap::new();
        for w in &view.withheld {
            *by.entry(w.by.clone()).or_default() += 1;
        }
        prop_assert_eq!(by, out.withheld_by);
        prop_assert_eq!(view.custody.len(), p.hops);

        // The same through bytes, and `inspect` sees the same fields without signatures.
        let bytes = envelope::encode(&out.env);
        let (_, again) = envelope::verify_bytes(&bytes, &roster())
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(&again, &view);
        let inspected = envelope::inspect(&out.env)
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(!inspected.signatures_checked);
        prop_assert_eq!(view_fields(&inspected), out.expected);
    }

    #[test]
    fn the_view_sealed_with_an_envelope_is_what_inspecting_it_gives(
        body in body(), size in 1usize..=5, place in any::<Index>(),
    ) {
        let n = Notification::from_value(&common::notification_json(Value::Object(body)))
            .expect("generated notifications are valid");
        let origin = common::node(common::ORIGIN);
        let mut sealed: Vec<(Envelope, envelope::VerifiedView)> = (0..size)
            .map(|j| {
                envelope::seal_unsigned_viewed(
                    &n,
                    &origin,
                    &common::origin_key(),
                    NotificationId::generate(),
                    7 + j as u64,
                    common::CREATED_AT_MS,
                )
                .expect("a valid notification seals")
            })
            .collect();
        let mut envs: Vec<Envelope> = sealed.iter_mut().map(|(e, _)| std::mem::take(e)).collect();
        envelope::sign_origin_round(&common::origin_key(), &mut envs);
        let at = place.index(size);
        let (_, mut view) = sealed.swap_remove(at);
        let env = envs.swap_remove(at);
        view.signed_in(&env);
        let inspected = envelope::inspect(&env).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(&view, &inspected);
        let verified = verify(&env).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(view.fields, verified.fields);
    }

    #[test]
    fn flipping_a_signed_header_byte_fails_as_malformed_or_bad_origin_signature(
        p in plan(0..=3), at in any::<Index>(), mask in 1u8..=255,
    ) {
        let out = run(&p, Force::Nothing);
        let mut bad = out.env.clone();
        let i = at.index(bad.signed_header.len());
        flip(&mut bad.signed_header, i, mask);
        let err = verify(&bad).expect_err("a changed header must not verify");
        let (origin_changed, key_changed) =
            header_names_changed(&out.env.signed_header, &bad.signed_header);
        let accepted = match &err {
            VerifyError::Malformed(_) | VerifyError::BadOriginSignature(_) => true,
            VerifyError::UnknownOrigin(_) => origin_changed,
            VerifyError::UnknownKey { .. } => origin_changed || key_changed,
            _ => false,
        };
        prop_assert!(accepted, "header byte {} ^ {:#04x}: {:?}", i, mask, err);
    }

    #[test]
    fn flipping_the_origin_signature_fails_as_bad_origin_signature(
        p in plan(0..=3), at in any::<Index>(), mask in 1u8..=255,
    ) {
        let out = run(&p, Force::Nothing);
        let mut bad = out.env.clone();
        let i = at.index(bad.origin_signature.len());
        flip(&mut bad.origin_signature, i, mask);
        let err = verify(&bad).expect_err("a changed origin signature must not verify");
        prop_assert_eq!(err, VerifyError::BadOriginSignature(common::ORIGIN.into()));
    }

    #[test]
    fn changing_the_origin_round_proof_fails_as_bad_origin_signature(
        p in plan(0..=3), what in 0u8..3, at in any::<Index>(), mask in 1u32..=255,
    ) {
        let out = run(&p, Force::Nothing);
        let mut bad = out.env.clone();
        let Some(r) = bad.origin_round.as_mut() else {
            return Ok(());
        };
        damage(r, what, at, mask);
        let err = verify(&bad).expect_err("a changed origin round proof must not verify");
        prop_assert_eq!(err, VerifyError::BadOriginSignature(common::ORIGIN.into()));
    }

    #[test]
    fn flipping_a_disclosed_value_fails_as_tampered_field(
        p in plan(0..=3), field in any::<Index>(), at in any::<Index>(), mask in 1u8..=255,
    ) {
        let out = run(&p, Force::Disclosed);
        let mut bad = out.env.clone();
        let f = field.index(bad.fields.len());
        let i = at.index(bad.fields[f].value.len());
        flip(&mut bad.fields[f].value, i, mask);
        let err = verify(&bad).expect_err("a changed value must not verify");
        prop_assert_eq!(err, VerifyError::TamperedField { path: bad.fields[f].path.clone() });
    }

    #[test]
    fn flipping_a_disclosed_salt_fails_as_tampered_field(
        p in plan(0..=3), field in any::<Index>(), at in any::<Index>(), mask in 1u8..=255,
    ) {
        let out = run(&p, Force::Disclosed);
        let mut bad = out.env.clone();
        let f = field.index(bad.fields.len());
        let i = at.index(bad.fields[f].salt.len());
        flip(&mut bad.fields[f].salt, i, mask);
        let err = verify(&bad).expect_err("a changed salt must not verify");
        prop_assert_eq!(err, VerifyError::TamperedField { path: bad.fields[f].path.clone() });
    }

    #[test]
    fn flipping_a_generalised_value_or_salt_fails_as_tampered_field(
        p in plan(1..=3), salt in any::<bool>(), at in any::<Index>(), mask in 1u8..=255,
    ) {
        let out = run(&p, Force::Generalised);
        let mut bad = out.env.clone();
        let f = bad.fields.iter().position(|f| f.path == "ref").expect("ref is disclosed");
        let bytes = if salt { &mut bad.fields[f].salt } else { &mut bad.fields[f].value };
        let i = at.index(bytes.len());
        flip(bytes, i, mask);
        let err = verify(&bad).expect_err("a changed generalised value must not verify");
        prop_assert_eq!(err, VerifyError::TamperedField { path: "ref".into() });
    }

    #[test]
    fn flipping_a_transformation_fails_as_a_bad_custody_entry(
        p in plan(1..=3), which in any::<Index>(), at in any::<Index>(), mask in 1u8..=255,
    ) {
        let out = run(&p, Force::Generalised);
        // Every entry with transformations; the first relay generalised `ref`, so there is one.
        let candidates: Vec<(usize, Vec<u8>)> = out
            .env
            .custody
            .iter()
            .enumerate()
            .flat_map(|(c, e)| {
                let body = wire::CustodyBody::decode(e.body.as_ref()).expect("body decodes");
                body.transformations
                    .iter()
                    .map(|t| (c, t.encode_to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        prop_assert!(!candidates.is_empty());
        let (c, t) = &candidates[which.index(candidates.len())];
        let start = common::find(&out.env.custody[*c].body, t)
            .expect("a transformation is encoded inside its custody body");
        let mut bad = out.env.clone();
        let i = start + at.index(t.len());
        flip(&mut bad.custody[*c].body, i, mask);
        let err = verify(&bad).expect_err("a changed transformation must not verify");
        let names = custody_names_changed(&out.env.custody[*c].body, &bad.custody[*c].body);
        prop_assert!(
            custody_body_error_accepted(&err, *c, names),
            "entry {} transformation byte {} ^ {:#04x}: {:?}", c, i, mask, err
        );
    }

    #[test]
    fn flipping_a_custody_body_byte_fails_as_a_bad_custody_entry(
        p in plan(1..=3), entry in any::<Index>(), at in any::<Index>(), mask in 1u8..=255,
    ) {
        let out = run(&p, Force::Nothing);
        let mut bad = out.env.clone();
        let c = entry.index(bad.custody.len());
        let i = at.index(bad.custody[c].body.len());
        flip(&mut bad.custody[c].body, i, mask);
        let err = verify(&bad).expect_err("a changed custody body must not verify");
        let names = custody_names_changed(&out.env.custody[c].body, &bad.custody[c].body);
        prop_assert!(
            custody_body_error_accepted(&err, c, names),
            "entry {} body byte {} ^ {:#04x}: {:?}", c, i, mask, err
        );
    }

    #[test]
    fn changing_a_round_proof_fails_as_a_bad_custody_entry(
        p in plan(1..=3), entry in any::<Index>(), what in 0u8..3, at in any::<Index>(), mask in 1u32..=255,
    ) {
        let out = run(&p, Force::Nothing);
        let mut bad = out.env.clone();
        let c = entry.index(bad.custody.len());
        let Some(r) = bad.custody[c].round.as_mut() else {
            return Ok(());
        };
        damage(r, what, at, mask);
        let err = verify(&bad).expect_err("a changed round proof must not verify");
        prop_assert!(
            matches!(
                &err,
                VerifyError::BadCustodySignature { index, .. } | VerifyError::BrokenCustodyChain { index, .. }
                    if *index == c
            ),
            "entry {} proof part {} ^ {:#04x}: {:?}", c, what, mask, err
        );
    }

    #[test]
    fn flipping_a_custody_signature_fails_as_bad_custody_signature(
        p in plan(1..=3), entry in any::<Index>(), at in any::<Index>(), mask in 1u8..=255,
    ) {
        let out = run(&p, Force::Nothing);
        let mut bad = out.env.clone();
        let c = entry.index(bad.custody.len());
        let i = at.index(bad.custody[c].signature.len());
        flip(&mut bad.custody[c].signature, i, mask);
        let err = verify(&bad).expect_err("a changed custody signature must not verify");
        prop_assert_eq!(
            err,
            VerifyError::BadCustodySignature { index: c, node: common::RELAYS[c].into() }
        );
    }
}
