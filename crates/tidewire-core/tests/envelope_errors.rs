//! Every way an envelope is refused, one named test each: the error variant `verify` returns and
//! the message an operator reads (which must name the node, key, entry or field at fault and say
//! what is wrong). Also: hostile input (truncated, random, oversized bytes) is refused without a
//! panic, and a withheld or generalised field leaves no trace of its value or salt in the
//! envelope's bytes.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{CREATED_AT_MS, ORIGIN, contains, hop, node, origin_key, path_nodes, relay_key};
use prost::Message;
use prost::bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidewire_core::envelope::{self, Envelope, Substitution};
use tidewire_core::fields::PathPattern;
use tidewire_core::keys::{Roster, RosterKey, SigningKey};
use tidewire_core::{NotificationId, VerifyError, wire};

fn verify(env: &Envelope) -> Result<envelope::VerifiedView, VerifyError> {
    envelope::verify(env, &common::roster())
}

/// Asserts `result` failed with exactly `expected`, and that its message is `message`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, VerifyError>,
    expected: VerifyError,
    message: &str,
) {
    let err = result.expect_err("the envelope must be refused");
    assert_eq!(err, expected);
    assert_eq!(err.to_string(), message);
}

/// A roster of the origin alone, its one key given as roster TOML with a validity window.
fn roster_with_window(key: &SigningKey, window: &str) -> Roster {
    let text = format!(
        "[[node]]\nid = \"{ORIGIN}\"\ncountry = \"PT\"\norg = \"maoc-n\"\n\n\
         [[node.key]]\npublic = \"{}\"\n{window}\n",
        B64.encode(key.public().as_bytes())
    );
    Roster::parse(&text).expect("valid roster text")
}

/// The disclosed field at `path`.
fn field<'e>(env: &'e Envelope, path: &str) -> &'e wire::DisclosedField {
    env.fields
        .iter()
        .find(|f| f.path == path)
        .expect("the field is disclosed")
}

/// Appends a custody entry with `body` signed by `key` (which may not be the body's node's).
fn push_entry(env: &mut Envelope, body: wire::CustodyBody, key: &SigningKey) {
    let body = body.encode_to_vec();
    let signature = key.sign(envelope::CUSTODY_DOMAIN, &body).to_vec();
    env.custody.push(wire::CustodyEntry {
        body: body.into(),
        signature: signature.into(),
        round: None,
    });
}

#[test]
fn a_header_signed_by_a_key_outside_the_roster_is_an_unknown_key() {
    let stranger = SigningKey::from_seed([99; 32]);
    let env = envelope::seal(
        &common::sample(),
        &node(ORIGIN),
        &stranger,
        NotificationId::generate(),
        1,
        CREATED_AT_MS,
    );
    assert_refused(
        verify(&env),
        VerifyError::UnknownKey {
            node: ORIGIN.into(),
            key_id: stranger.key_id().into(),
        },
        &format!(
            "node `maoc-n` has no key `{}` in the roster",
            stranger.key_id()
        ),
    );
}

#[test]
fn a_signature_spliced_from_another_key_of_the_same_node_is_a_bad_origin_signature() {
    // The roster lists two keys of the origin; the header names the first, the signature is the
    // second's over the very same header bytes.
    let first = origin_key();
    let second = SigningKey::from_seed([2; 32]);
    let mut roster = common::roster();
    let mut entry = roster.get(ORIGIN).expect("origin listed").clone();
    entry.keys.push(RosterKey {
        key_id: second.key_id().into(),
        key: second.public(),
        not_before_ms: None,
        not_after_ms: None,
    });
    roster.upsert(entry);
    let mut env = common::seal(&common::sample());
    envelope::verify(&env, &roster).expect("the genuine envelope verifies");
    env.origin_signature = second
        .sign(envelope::HEADER_DOMAIN, &env.signed_header)
        .to_vec()
        .into();
    assert_ne!(first.key_id(), second.key_id());
    assert_refused(
        envelope::verify(&env, &roster),
        VerifyError::BadOriginSignature(ORIGIN.into()),
        "origin signature of `maoc-n` does not verify: the header was altered or signed by another key",
    );
}

#[test]
fn a_key_used_after_its_not_after_is_key_not_valid() {
    let key = origin_key();
    let roster = roster_with_window(&key, "not_after = \"2026-12-31T23:59:59Z\"");
    let env = common::seal(&common::sample());
    assert_refused(
        envelope::verify(&env, &roster),
        VerifyError::KeyNotValid {
            node: ORIGIN.into(),
            key_id: key.key_id().into(),
            at: "2027-01-15T08:00:00Z".into(),
            window: "… to 2026-12-31T23:59:59Z".into(),
        },
        &format!(
            "key `{}` of node `maoc-n` was not valid at 2027-01-15T08:00:00Z: valid … to 2026-12-31T23:59:59Z",
            key.key_id()
        ),
    );
}

#[test]
fn a_key_used_before_its_not_before_is_key_not_valid() {
    let key = origin_key();
    let roster = roster_with_window(
        &key,
        "not_before = \"2027-02-01T00:00:00Z\"\nnot_after = \"2028-02-01T00:00:00Z\"",
    );
    let env = common::seal(&common::sample());
    let err = envelope::verify(&env, &roster).expect_err("refused");
    assert!(matches!(err, VerifyError::KeyNotValid { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "key `{}` of node `maoc-n` was not valid at 2027-01-15T08:00:00Z: valid 2027-02-01T00:00:00Z to 2028-02-01T00:00:00Z",
            key.key_id()
        )
    );
    // The same key inside its window verifies.
    let open = roster_with_window(&key, "not_before = \"2027-01-15T08:00:00Z\"");
    envelope::verify(&env, &open).expect("valid from the very millisecond it was signed");
}

#[test]
fn an_origin_missing_from_the_roster_is_unknown_origin() {
    let env = envelope::seal(
        &common::sample(),
        &node("ameripol"),
        &SigningKey::from_seed([42; 32]),
        NotificationId::generate(),
        1,
        CREATED_AT_MS,
    );
    assert_refused(
        verify(&env),
        VerifyError::UnknownOrigin("ameripol".into()),
        "unknown origin node `ameripol`: it is not in the roster",
    );
}

#[test]
fn a_relay_missing_from_the_roster_is_unknown_relay() {
    let nodes = path_nodes();
    let k0 = relay_key(0);
    let rogue = node("accra-bis");
    let rogue_key = SigningKey::from_seed([77; 32]);
    // dakar (listed) hands it to accra-bis (not listed), which relays it on.
    let mut h = hop(0, &nodes, &k0, &[]);
    h.to = &rogue;
    let env = envelope::relay(&common::seal(&common::sample()), h);
    let mut h = hop(1, &nodes, &rogue_key, &[]);
    h.node = &rogue;
    let env = envelope::relay(&env, h);
    assert_refused(
        verify(&env),
        VerifyError::UnknownRelay {
            index: 1,
            node: "accra-bis".into(),
        },
        "custody entry 1: unknown node `accra-bis`: it is not in the roster",
    );
}

#[test]
fn a_relay_key_outside_the_roster_is_an_unknown_key() {
    let nodes = path_nodes();
    let impostor = SigningKey::from_seed([55; 32]);
    let env = envelope::relay(
        &common::seal(&common::sample()),
        hop(0, &nodes, &impostor, &[]),
    );
    assert_refused(
        verify(&env),
        VerifyError::UnknownKey {
            node: "dakar".into(),
            key_id: impostor.key_id().into(),
        },
        &format!(
            "node `dakar` has no key `{}` in the roster",
            impostor.key_id()
        ),
    );
}

#[test]
fn a_changed_disclosed_value_is_a_tampered_field_naming_it() {
    let mut env = common::seal(&common::sample());
    let f = env
        .fields
        .iter_mut()
        .find(|f| f.path == "vessel.imo")
        .expect("disclosed");
    f.value = b"\"9999999\"".to_vec().into();
    assert_refused(
        verify(&env),
        VerifyError::TamperedField {
            path: "vessel.imo".into(),
        },
        "field `vessel.imo` does not match any signed commitment: its value or salt was altered",
    );
}

/// An origin that signs a value which is not one JSON value (a number out of range, two values,
/// text that is not UTF-8) gets its envelope refused: receivers keep values as text and parse
/// them only when they read them, so the text is checked on arrival.
#[test]
fn a_signed_value_that_is_not_one_json_value_is_a_tampered_field() {
    for text in [
        &b"1e400"[..],
        b"\"a\" \"b\"",
        b"\"\xff\"",
        b"\"\\ud800\"",
        b"{\"a\":}",
    ] {
        let mut n = common::sample();
        let leaf = n
            .fields
            .iter_mut()
            .find(|l| l.path.to_string() == "vessel.imo")
            .expect("the sample has vessel.imo");
        leaf.value = text.to_vec();
        let env = common::seal(&n);
        assert_eq!(
            verify(&env).map(|_| ()),
            Err(VerifyError::TamperedField {
                path: "vessel.imo".into(),
            }),
            "{}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn a_changed_field_digest_in_the_header_is_a_bad_origin_signature_not_a_tampered_field() {
    // Regression: commitments were interpreted before the origin signature was checked, so an
    // altered digest list blamed an intact field.
    let mut env = common::seal(&common::sample());
    let mut header = wire::SignedHeader::decode(env.signed_header.clone()).expect("decodes");
    let last = header.field_digests[0].len() - 1;
    common::flip(&mut header.field_digests[0], last, 1);
    env.signed_header = header.encode_to_vec().into();
    assert_refused(
        verify(&env),
        VerifyError::BadOriginSignature(ORIGIN.into()),
        "origin signature of `maoc-n` does not verify: the header was altered or signed by another key",
    );
}

#[test]
fn a_forged_custody_entry_is_a_bad_custody_signature_not_an_act_of_the_relay_it_names() {
    // Regression: a forged entry claiming `accra` withheld a disclosed field was reported as
    // `Widened { by: "accra" }`, blaming an honest node for bytes it never signed.
    let mut env = common::seal(&common::sample());
    let f = field(&env, "vessel.name").clone();
    let body = wire::CustodyBody {
        node: "accra".into(),
        key_id: relay_key(1).key_id().into(),
        at_ms: CREATED_AT_MS + 1,
        policy_version: String::new(),
        chain_hash: common::chain_hash(&env, 0).to_vec().into(),
        withheld: vec![wire::Withholding {
            digest: envelope::digest(&f.salt, &f.path, &f.value).to_vec().into(),
            rule_id: "forged".into(),
        }],
        transformations: Vec::new(),
        to: "lisbon".into(),
    };
    push_entry(&mut env, body, &SigningKey::from_seed([66; 32]));
    assert_refused(
        verify(&env),
        VerifyError::BadCustodySignature {
            index: 0,
            node: "accra".into(),
        },
        "custody entry 0 (node `accra`): signature does not verify",
    );
}

#[test]
fn a_relay_disclosing_a_field_withheld_upstream_is_widened() {
    let nodes = path_nodes();
    let (k0, k1) = (relay_key(0), relay_key(1));
    let sealed = common::seal(&common::sample());
    let mut env = envelope::relay(&sealed, hop(0, &nodes, &k0, &["persons[0].name"]));
    verify(&env).expect("withholding verifies");
    // accra puts back the value dakar withheld (it had it from elsewhere) and relays on.
    env.fields.push(field(&sealed, "persons[0].name").clone());
    let env = envelope::relay(&env, hop(1, &nodes, &k1, &[]));
    assert_refused(
        verify(&env),
        VerifyError::Widened {
            path: "persons[0].name".into(),
            by: "dakar".into(),
        },
        "field `persons[0].name` is disclosed after dakar withheld or replaced it",
    );
}

#[test]
fn a_relay_disclosing_the_original_of_a_generalised_value_is_widened() {
    let nodes = path_nodes();
    let (k0, k1) = (relay_key(0), relay_key(1));
    let sealed = common::seal(&common::sample());
    let mut h = hop(0, &nodes, &k0, &[]);
    h.substitute = vec![Substitution {
        path: "persons[0].dob".into(),
        value: "1979".into(),
        rule_id: "dob-year".into(),
        method: "year".into(),
    }];
    let mut env = envelope::relay(&sealed, h);
    // accra discloses the full date of birth instead of dakar's generalisation.
    let at = env
        .fields
        .iter()
        .position(|f| f.path == "persons[0].dob")
        .expect("generalised value disclosed");
    env.fields[at] = field(&sealed, "persons[0].dob").clone();
    let env = envelope::relay(&env, hop(1, &nodes, &k1, &[]));
    assert_refused(
        verify(&env),
        VerifyError::Widened {
            path: "persons[0].dob".into(),
            by: "dakar".into(),
        },
        "field `persons[0].dob` is disclosed after dakar withheld or replaced it",
    );
}

#[test]
fn a_transformation_of_a_value_withheld_upstream_is_invalid() {
    let nodes = path_nodes();
    let k0 = relay_key(0);
    let sealed = common::seal(&common::sample());
    let mut env = envelope::relay(&sealed, hop(0, &nodes, &k0, &["persons[0].dob"]));
    // accra, with its genuine key, "generalises" the value dakar withheld from it.
    let old = field(&sealed, "persons[0].dob");
    let salt = [5u8; envelope::SALT_LEN];
    let body = wire::CustodyBody {
        node: "accra".into(),
        key_id: relay_key(1).key_id().into(),
        at_ms: CREATED_AT_MS + 2_000,
        policy_version: "policy-v1".into(),
        chain_hash: common::chain_hash(&env, 1).to_vec().into(),
        withheld: Vec::new(),
        transformations: vec![wire::Transformation {
            path: "persons[0].dob".into(),
            replaces: envelope::digest(&old.salt, &old.path, &old.value)
                .to_vec()
                .into(),
            new_digest: envelope::digest(&salt, "persons[0].dob", b"\"1979\"")
                .to_vec()
                .into(),
            rule_id: "dob-year".into(),
            method: "year".into(),
        }],
        to: "jiatf-s".into(),
    };
    push_entry(&mut env, body, &relay_key(1));
    env.fields.push(wire::DisclosedField {
        path: "persons[0].dob".into(),
        value: b"\"1979\"".to_vec().into(),
        salt: salt.to_vec().into(),
    });
    assert_refused(
        verify(&env),
        VerifyError::InvalidTransformation {
            index: 1,
            path: "persons[0].dob".into(),
            reason: "replaces a value its author never received in clear".into(),
        },
        "custody entry 1: transformation of `persons[0].dob` replaces a value its author never received in clear",
    );
}

#[test]
fn removing_a_custody_entry_from_the_middle_breaks_the_chain() {
    let nodes = path_nodes();
    let keys = [relay_key(0), relay_key(1), relay_key(2)];
    let mut env = common::seal(&common::sample());
    for (i, k) in keys.iter().enumerate() {
        env = envelope::relay(&env, hop(i, &nodes, k, &[]));
    }
    verify(&env).expect("the whole chain verifies");
    env.custody.remove(1);
    assert_refused(
        verify(&env),
        VerifyError::BrokenCustodyChain {
            index: 1,
            reason: "it does not sign the envelope that preceded it".into(),
        },
        "custody entry 1: broken chain: it does not sign the envelope that preceded it",
    );
}

#[test]
fn a_hop_that_was_not_sent_to_the_next_relay_breaks_the_chain() {
    let nodes = path_nodes();
    let (k0, k2) = (relay_key(0), relay_key(2));
    let env = envelope::relay(&common::seal(&common::sample()), hop(0, &nodes, &k0, &[]));
    // dakar sent it to accra; jiatf-s signs the next hop as if it had received it.
    let env = envelope::relay(&env, hop(2, &nodes, &k2, &[]));
    assert_refused(
        verify(&env),
        VerifyError::BrokenCustodyChain {
            index: 1,
            reason: "`jiatf-s` relayed it, but the previous hop sent it to `accra`".into(),
        },
        "custody entry 1: broken chain: `jiatf-s` relayed it, but the previous hop sent it to `accra`",
    );
}

#[test]
fn every_truncation_of_an_envelope_is_refused_or_a_lawful_subset() {
    let nodes = path_nodes();
    let (k0, k1) = (relay_key(0), relay_key(1));
    let sealed = common::seal(&common::sample());
    let env = envelope::relay(&sealed, hop(0, &nodes, &k0, &["persons[0].name"]));
    let env = envelope::relay(&env, hop(1, &nodes, &k1, &["narrative"]));
    let bytes = envelope::encode(&env);
    let original: Vec<(String, Vec<u8>)> = sealed
        .fields
        .iter()
        .map(|f| (f.path.clone(), f.value.to_vec()))
        .collect();
    // Whole top-level messages (header, signature, each field, each entry) are the only places a
    // prefix can end and still decode; until the origin signature is complete, it is malformed.
    let unsigned = common::find(&bytes, &env.origin_signature).expect("signature in bytes")
        + env.origin_signature.len();
    let mut verified = 0;
    for len in 0..bytes.len() {
        match envelope::verify_bytes(&bytes[..len], &common::roster()) {
            Ok((_, view)) => {
                verified += 1;
                assert!(len >= unsigned, "a {len}-byte prefix verified");
                for f in &view.fields {
                    let value = serde_json::to_vec(&f.value()).expect("json");
                    assert!(
                        original.contains(&(f.path.clone(), value)),
                        "prefix of {len} bytes discloses `{}` differently",
                        f.path
                    );
                }
            }
            Err(VerifyError::Malformed(_)) if len < unsigned => {}
            Err(e) => assert!(len >= unsigned, "{len}: {e:?}"),
        }
        if let Ok(e) = envelope::decode(&bytes[..len]) {
            let _ = envelope::inspect(&e);
        }
    }
    assert!(
        verified <= env.fields.len() + env.custody.len() + 1,
        "{verified} of {} prefixes verified",
        bytes.len()
    );
    assert!(
        envelope::verify_bytes(&bytes[..bytes.len() - 1], &common::roster()).is_err(),
        "losing the last byte is refused"
    );
}

#[test]
fn random_bytes_are_refused_without_panicking() {
    let mut rng = StdRng::seed_from_u64(0x7de_517e);
    let roster = common::roster();
    for _ in 0..5_000 {
        let mut bytes = vec![0u8; rng.gen_range(0..400)];
        rng.fill(&mut bytes[..]);
        let err = envelope::verify_bytes(&bytes, &roster).expect_err("random bytes never verify");
        assert!(!err.to_string().is_empty());
        if let Ok(env) = envelope::decode(&bytes) {
            let _ = envelope::inspect(&env);
        }
    }
}

#[test]
fn empty_input_is_malformed() {
    assert_refused(
        envelope::verify_bytes(&[], &common::roster()),
        VerifyError::Malformed("header version: unsupported version 0".into()),
        "malformed envelope: header version: unsupported version 0",
    );
}

#[test]
fn an_oversized_input_is_too_large() {
    let limit = envelope::MAX_ENVELOPE_BYTES;
    let bytes = vec![0u8; limit + 1];
    assert_refused(
        envelope::verify_bytes(&bytes, &common::roster()),
        VerifyError::TooLarge {
            size: limit + 1,
            limit,
        },
        "envelope is 4194305 bytes; the limit is 4194304",
    );
    // At the limit it is read (and refused for what it is).
    let err = envelope::verify_bytes(&bytes[..limit], &common::roster()).expect_err("zeros");
    assert!(matches!(err, VerifyError::Malformed(_)), "{err:?}");
}

/// The canonical value and salt of `path` in a sealed envelope.
fn secret(env: &Envelope, path: &str) -> (Vec<u8>, Vec<u8>) {
    let f = field(env, path);
    (f.value.to_vec(), f.salt.to_vec())
}

/// Asserts that nothing of `path`'s value or salt is in `bytes`, but its commitment is.
fn assert_no_trace(bytes: &[u8], sealed: &Envelope, path: &str, marker: &str) {
    let (value, salt) = secret(sealed, path);
    let f = field(sealed, path);
    assert!(
        !contains(bytes, &value),
        "the value of `{path}` is in the bytes"
    );
    assert!(
        !contains(bytes, marker.as_bytes()),
        "`{marker}` is in the bytes"
    );
    assert!(
        !contains(bytes, &salt),
        "the salt of `{path}` is in the bytes"
    );
    let digest = envelope::digest(&f.salt, &f.path, &f.value);
    assert!(contains(bytes, &digest), "the commitment of `{path}` stays");
}

#[test]
fn a_field_withheld_at_the_origin_leaves_no_trace_of_its_value_or_salt() {
    let sealed = common::seal(&common::sample());
    let mut env = sealed.clone();
    let pattern: PathPattern = "persons[*].name".parse().expect("pattern");
    let removed = envelope::withhold_matching(&mut env, &[pattern]);
    assert_eq!(removed, ["persons[0].name", "persons[1].name"]);
    let bytes = envelope::encode(&env);
    assert_no_trace(&bytes, &sealed, "persons[0].name", "UNIQUE-MARKER-12345");
    assert_no_trace(&bytes, &sealed, "persons[1].name", "UNIQUE-MARKER-67890");
    assert!(contains(&bytes, b"MV Example"), "the check can see values");
    let view = envelope::verify_bytes(&bytes, &common::roster())
        .expect("verifies")
        .1;
    assert_eq!(view.withheld.len(), 2);
}

#[test]
fn a_field_withheld_by_a_relay_leaves_no_trace_of_its_value_or_salt() {
    let nodes = path_nodes();
    let (k0, k1) = (relay_key(0), relay_key(1));
    let sealed = common::seal(&common::sample());
    let env = envelope::relay(&sealed, hop(0, &nodes, &k0, &["persons[0].name"]));
    let env = envelope::relay(&env, hop(1, &nodes, &k1, &["persons[1].name"]));
    let bytes = envelope::encode(&env);
    assert_no_trace(&bytes, &sealed, "persons[0].name", "UNIQUE-MARKER-12345");
    assert_no_trace(&bytes, &sealed, "persons[1].name", "UNIQUE-MARKER-67890");
    assert!(contains(&bytes, b"MV Example"), "the check can see values");
    let view = envelope::verify_bytes(&bytes, &common::roster())
        .expect("verifies")
        .1;
    let by: Vec<Option<&str>> = view.withheld.iter().map(|w| w.by.as_deref()).collect();
    assert_eq!(by.len(), 2);
    assert!(by.contains(&Some("dakar")) && by.contains(&Some("accra")));
}

#[test]
fn a_generalised_field_leaves_no_trace_of_its_original_value_or_salt() {
    let nodes = path_nodes();
    let k0 = relay_key(0);
    let sealed = common::seal(&common::sample());
    let mut h = hop(0, &nodes, &k0, &[]);
    h.substitute = vec![Substitution {
        path: "persons[0].name".into(),
        value: "J. D.".into(),
        rule_id: "initials".into(),
        method: "initials".into(),
    }];
    let env = envelope::relay(&sealed, h);
    let bytes = envelope::encode(&env);
    assert_no_trace(&bytes, &sealed, "persons[0].name", "UNIQUE-MARKER-12345");
    let view = envelope::verify_bytes(&bytes, &common::roster())
        .expect("verifies")
        .1;
    let f = view
        .fields
        .iter()
        .find(|f| f.path == "persons[0].name")
        .expect("generalised value disclosed");
    assert_eq!(f.value(), "J. D.");
    assert_eq!(f.transformed.as_ref().map(|t| t.by.as_str()), Some("dakar"));
}

/// Batch verification gives every envelope the same verdict as verifying it alone: the good ones
/// pass, each bad one fails with its own precise error.
#[test]
fn verify_many_refuses_only_the_bad_envelopes_with_their_own_errors() {
    use tidewire_core::envelope;
    let roster = common::roster();
    let good: Vec<Vec<u8>> = (0..5)
        .map(|_| envelope::encode(&common::seal(&common::sample())))
        .collect();
    let mut tampered_value = common::seal(&common::sample());
    tampered_value.fields[0].value = [&tampered_value.fields[0].value[..], b" "].concat().into();
    let mut bad_sig = common::seal(&common::sample());
    common::flip(&mut bad_sig.origin_signature, 3, 1);
    let inputs: Vec<Vec<u8>> = vec![
        good[0].clone(),
        envelope::encode(&tampered_value),
        good[1].clone(),
        envelope::encode(&bad_sig),
        b"garbage".to_vec(),
        good[2].clone(),
    ];
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let out = envelope::verify_many(&refs, &roster);
    for (i, (r, input)) in out.iter().zip(&inputs).enumerate() {
        let alone = envelope::verify_bytes(input, &roster);
        match (r, &alone) {
            (Ok((_, a)), Ok((_, b))) => assert_eq!(a, b, "input {i}"),
            (Err(a), Err(b)) => assert_eq!(a, b, "input {i}"),
            _ => panic!("input {i}: batch {r:?} but alone {alone:?}"),
        }
    }
    assert!(out[0].is_ok() && out[2].is_ok() && out[5].is_ok());
    assert!(matches!(
        out[1],
        Err(tidewire_core::VerifyError::TamperedField { .. })
    ));
    assert!(matches!(
        out[3],
        Err(tidewire_core::VerifyError::BadOriginSignature(_))
    ));
}

#[test]
fn a_round_signed_batch_verifies_as_one_and_a_forged_member_is_refused_alone() {
    let roster = common::roster();
    let nodes = path_nodes();
    let key = relay_key(0);
    // A send round of 70 copies: one full round of 64 entries under one signature, and a
    // second round of 6.
    let mut round: Vec<Envelope> = (0..70)
        .map(|_| {
            let env = common::seal(&common::sample());
            envelope::relay_unsigned(&env, hop(0, &nodes, &key, &[]))
        })
        .collect();
    envelope::sign_custody_round(&key, &mut round);
    assert_eq!(
        round[0].custody[0].signature,
        round[63].custody[0].signature
    );
    assert_ne!(
        round[63].custody[0].signature,
        round[64].custody[0].signature
    );
    assert_eq!(round[69].custody[0].round.as_ref().map(|r| r.size), Some(6));

    // A relay that signs a body it never put in the round: the round's signature with another
    // entry's proof does not make it valid.
    let mut forged = round[5].clone();
    let mut body = wire::CustodyBody::decode(forged.custody[0].body.clone()).unwrap();
    body.policy_version = "policy-v2".into();
    forged.custody[0].body = body.encode_to_vec().into();
    round[5] = forged;

    let inputs: Vec<Vec<u8>> = round.iter().map(envelope::encode).collect();
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let out = envelope::verify_many(&refs, &roster);
    for (i, r) in out.iter().enumerate() {
        if i == 5 {
            assert_eq!(
                r.as_ref().err(),
                Some(&VerifyError::BadCustodySignature {
                    index: 0,
                    node: common::RELAYS[0].into()
                })
            );
        } else {
            let (_, view) = r.as_ref().unwrap_or_else(|e| panic!("copy {i}: {e}"));
            assert!(view.signatures_checked);
            assert_eq!(view.custody.len(), 1, "copy {i}");
        }
    }
}

#[test]
fn decode_shared_slices_the_input_instead_of_copying_fields() {
    let env = common::seal(&common::sample());
    let input = Bytes::from(envelope::encode(&env));
    let range = input.as_ptr_range();
    let inside = |b: &Bytes| b.is_empty() || range.contains(&b.as_ptr());
    let decoded = envelope::decode_shared(input.clone()).expect("decodes");
    assert_eq!(decoded, env);
    assert!(inside(&decoded.signed_header) && inside(&decoded.origin_signature));
    assert!(
        decoded
            .fields
            .iter()
            .all(|f| inside(&f.value) && inside(&f.salt)),
        "every disclosed value and salt is a slice of the received bytes"
    );
    let copied = envelope::decode(&input).expect("decodes");
    assert_eq!(copied, env);
    assert!(!inside(&copied.signed_header), "decode makes its own copy");
}
