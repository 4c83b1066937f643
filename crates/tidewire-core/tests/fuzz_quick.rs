//! A quick, seeded, in-suite fuzz run of envelope verification (the long-running fuzzer is the
//! cargo-fuzz target `fuzz/fuzz_targets/envelope_verify.rs`).
//!
//! 20,000 mutations of valid envelope bytes (bit flips, byte overwrites, truncations, insertions,
//! deletions, duplicated chunks and splices of two envelopes, alone or stacked), each run through
//! `verify_bytes` and `inspect`, prove that hostile bytes never panic, and that whatever still
//! verifies discloses nothing but (path, value) pairs some genuine envelope disclosed: mutation
//! can drop fields or hops, never forge a value.

mod common;

use std::collections::BTreeSet;

use common::{hop, path_nodes, relay_key};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidewire_core::Notification;
use tidewire_core::envelope::{self, Substitution};

const ROUNDS: usize = 20_000;

/// Genuine envelopes to mutate: a sealed one, one relayed twice (withheld and generalised
/// fields), and a different notification relayed once.
fn bases() -> Vec<Vec<u8>> {
    let nodes = path_nodes();
    let (k0, k1) = (relay_key(0), relay_key(1));
    let sealed = common::seal(&common::sample());

    let mut h = hop(0, &nodes, &k0, &["persons[0].name"]);
    h.substitute = vec![Substitution {
        path: "vessel.position.lat".into(),
        value: 5.into(),
        rule_id: "round".into(),
        method: "round:0".into(),
    }];
    let relayed = envelope::relay(&sealed, h);
    let relayed = envelope::relay(&relayed, hop(1, &nodes, &k1, &["narrative"]));

    let other = Notification::from_value(&common::notification_json(serde_json::json!({
        "seizure": {"kg": 1200.5, "substance": "cocaïne", "bales": [40, 41, null, true]},
        "port": "Praia", "note": "Δ ✓ 🚢"
    })))
    .expect("valid");
    let other = envelope::relay(
        &common::seal(&other),
        hop(0, &nodes, &k0, &["seizure.bales[1]"]),
    );
    [sealed, relayed, other]
        .iter()
        .map(envelope::encode)
        .collect()
}

/// Applies one random mutation.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>, bases: &[Vec<u8>]) {
    let at = |rng: &mut StdRng, len: usize| rng.gen_range(0..=len);
    match rng.gen_range(0..7) {
        0 => {
            for _ in 0..rng.gen_range(1..=4) {
                if !bytes.is_empty() {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] ^= 1 << rng.gen_range(0..8);
                }
            }
        }
        1 => {
            for _ in 0..rng.gen_range(1..=4) {
                if !bytes.is_empty() {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] = rng.r#gen();
                }
            }
        }
        2 => {
            let n = at(rng, bytes.len());
            bytes.truncate(n);
        }
        3 => {
            let i = at(rng, bytes.len());
            let mut junk = vec![0u8; rng.gen_range(1..=16)];
            rng.fill(&mut junk[..]);
            bytes.splice(i..i, junk);
        }
        4 => {
            let i = at(rng, bytes.len());
            let j = (i + rng.gen_range(1..=64)).min(bytes.len());
            bytes.drain(i..j);
        }
        5 => {
            let i = at(rng, bytes.len());
            let j = (i + rng.gen_range(1..=64)).min(bytes.len());
            let chunk = bytes[i..j].to_vec();
            let k = at(rng, bytes.len());
            bytes.splice(k..k, chunk);
        }
        _ => {
            let other = &bases[rng.gen_range(0..bases.len())];
            let i = at(rng, bytes.len());
            let j = at(rng, other.len());
            bytes.truncate(i);
            bytes.extend_from_slice(&other[j..]);
        }
    }
}

#[test]
fn mutated_envelopes_never_panic_and_never_forge_a_field() {
    let roster = common::roster();
    let bases = bases();
    // Every (path, canonical value) a genuine envelope discloses, originals included.
    let mut genuine: BTreeSet<(String, Vec<u8>)> = BTreeSet::new();
    for b in &bases {
        let env = envelope::decode(b).expect("decodes");
        for f in &env.fields {
            genuine.insert((f.path.clone(), f.value.to_vec()));
        }
        let (_, view) = envelope::verify_bytes(b, &roster).expect("genuine envelopes verify");
        for f in &view.fields {
            genuine.insert((f.path.clone(), f.json.to_vec()));
        }
    }
    let sealed = envelope::decode(&bases[0]).expect("decodes");
    for f in &sealed.fields {
        genuine.insert((f.path.clone(), f.value.to_vec()));
    }

    let mut rng = StdRng::seed_from_u64(0x5eed_f022);
    let (mut verified, mut inspected) = (0usize, 0usize);
    for round in 0..ROUNDS {
        let mut bytes = bases[rng.gen_range(0..bases.len())].clone();
        for _ in 0..rng.gen_range(1..=3) {
            mutate(&mut rng, &mut bytes, &bases);
        }
        if let Ok((_, view)) = envelope::verify_bytes(&bytes, &roster) {
            verified += 1;
            assert!(view.signatures_checked);
            for f in &view.fields {
                assert!(
                    genuine.contains(&(f.path.clone(), f.json.to_vec())),
                    "round {round}: a mutated envelope verified with a forged `{}` = {}",
                    f.path,
                    f.value()
                );
            }
            let _ = (view.body(), view.path());
        }
        if let Ok(env) = envelope::decode(&bytes)
            && let Ok(view) = envelope::inspect(&env)
        {
            inspected += 1;
            let _ = (view.body(), view.path());
        }
    }
    eprintln!("{ROUNDS} mutations: {verified} still verified, {inspected} passed inspect");
    assert!(verified < ROUNDS / 2, "most mutations must be refused");
}
