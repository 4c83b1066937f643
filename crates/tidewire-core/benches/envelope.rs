//! Seal, redact and verify a 40-field (~1 KiB) notification.
//!
//! `cargo bench -p tidewire-core --bench envelope`; figures in docs/BENCHMARKS.md.

/// The binary's allocator, so the figures match what a node does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tidewire_core::envelope::{self, Envelope, Hop};
use tidewire_core::fields::PathPattern;
use tidewire_core::keys::{Roster, RosterNode, SigningKey};
use tidewire_core::{NodeId, Notification, NotificationId};

fn forty_fields() -> Notification {
    let mut persons = Vec::new();
    for i in 0..6 {
        persons.push(serde_json::json!({
            "name": format!("Person {i}"), "nationality": "CO", "dob": "1979-03-02",
            "role": "crew", "passport": format!("P{i:07}")
        }));
    }
    let json = serde_json::json!({
        "kind": "vessel_of_interest", "case_ref": "MAOC-2026-0142",
        "routes": ["atlantic.south-america.west-africa", "vessel.imo.9387421"],
        "handling": "H1", "grading": {"source": "B", "information": "2"},
        "audience": ["node:accra", "country:SN"], "purposes": ["interdiction"],
        "fields": {
            "vessel": {"name": "MV Example", "imo": "9387421", "flag": "TG", "mmsi": "671234000",
                       "position": {"lat": 5.61, "lon": -0.19}},
            "cargo": {"declared": "fishing gear", "suspected": "cocaine", "estimated_kg": 1200},
            "persons": persons,
            "narrative": "Mother ship suspected of transhipment off the Bijagos; rendezvous with fast boats expected."
        }
    });
    let n = Notification::from_value(&json).unwrap();
    assert_eq!(n.fields.len(), 40);
    n
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_seed([7; 32]);
    let relay_key = SigningKey::from_seed([8; 32]);
    let origin: NodeId = "maoc-n".parse().unwrap();
    let relay: NodeId = "dakar".parse().unwrap();
    let accra: NodeId = "accra".parse().unwrap();
    let mut roster = Roster::default();
    roster.upsert(RosterNode::new(
        origin.clone(),
        "PT".parse().unwrap(),
        "maoc-n".into(),
        key.public(),
    ));
    roster.upsert(RosterNode::new(
        relay.clone(),
        "SN".parse().unwrap(),
        "dakar".into(),
        relay_key.public(),
    ));
    let n = forty_fields();
    let sealed = envelope::seal(
        &n,
        &origin,
        &key,
        NotificationId::generate(),
        1,
        1_800_000_000_000,
    );
    let bytes = envelope::encode(&sealed);
    eprintln!("envelope size: {} bytes", bytes.len());
    let pattern: Vec<PathPattern> = vec!["persons[*].name".parse().unwrap()];
    // Dakar's hop to Accra, withholding what it is given.
    let hop = |withhold: Vec<(String, String)>| Hop {
        node: &relay,
        key: &relay_key,
        to: &accra,
        at_ms: 1_800_000_000_001,
        policy_version: "p1",
        withhold,
        substitute: vec![],
    };
    let relayed = envelope::relay(&sealed, hop(vec![("persons[0].dob".into(), "r".into())]));
    let relayed_bytes = envelope::encode(&relayed);

    let mut g = c.benchmark_group("envelope-40-fields");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal", |b| {
        b.iter(|| {
            envelope::seal(
                black_box(&n),
                &origin,
                &key,
                NotificationId::generate(),
                1,
                1_800_000_000_000,
            )
        })
    });
    g.bench_function("redact", |b| {
        b.iter(|| {
            let mut e = sealed.clone();
            envelope::withhold_matching(&mut e, black_box(&pattern))
        })
    });
    g.bench_function("verify", |b| {
        b.iter(|| envelope::verify_bytes(black_box(&bytes), &roster).unwrap())
    });
    g.bench_function("verify-with-one-custody-hop", |b| {
        b.iter(|| envelope::verify_bytes(black_box(&relayed_bytes), &roster).unwrap())
    });
    // What local delivery does last: the subscriber's JSON body from the verified fields.
    let view = envelope::verify_bytes(&bytes, &roster).unwrap().1;
    g.bench_function(
        "body-json-by-tree (parse paths, unflatten, serialise)",
        |b| {
            b.iter(|| {
                let parsed: Vec<(tidewire_core::fields::FieldPath, serde_json::Value)> = view
                    .fields
                    .iter()
                    .map(|f| (f.path.parse().unwrap(), f.value()))
                    .collect();
                tidewire_core::fields::unflatten(parsed.iter().map(|(p, v)| (p, v.clone())))
                    .unwrap()
                    .to_string()
            })
        },
    );
    g.bench_function("body-json-written-in-order", |b| {
        b.iter(|| {
            tidewire_core::fields::write_in_order(
                black_box(&view.fields)
                    .iter()
                    .map(|f| (f.path.as_str(), &f.json[..])),
            )
            .unwrap()
        })
    });
    g.finish();

    // The floor: one ed25519 signature over a header-sized message, nothing else.
    let header_len = sealed.signed_header.len();
    let msg = vec![7u8; header_len];
    let sig = key.sign(b"", &msg);
    let roster_key = &roster.get("maoc-n").unwrap().keys[0];
    c.bench_function("ed25519-verify-alone (header-sized message)", |b| {
        b.iter(|| assert!(roster_key.verify(b"", black_box(&msg), &sig)))
    });

    // A link's receive batch: 64 envelopes from different origins' seal, one batch verification.
    let many: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            envelope::encode(&envelope::seal(
                &n,
                &origin,
                &key,
                NotificationId::generate(),
                i,
                1_800_000_000_000,
            ))
        })
        .collect();
    let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    let mut g = c.benchmark_group("envelope-40-fields-batch");
    g.throughput(Throughput::Elements(64));
    g.bench_function("verify-many-64", |b| {
        b.iter(|| {
            let out = envelope::verify_many(black_box(&refs), &roster);
            assert!(out.iter().all(Result::is_ok));
        })
    });

    // The same batch as a link now receives it: the 64 headers sealed as one publish round, and
    // relayed by dakar as one send round, so two signatures cover 128.
    let seal_round = |n: &Notification| {
        let mut envs: Vec<Envelope> = (0..64)
            .map(|i| {
                envelope::seal_unsigned(
                    n,
                    &origin,
                    &key,
                    NotificationId::generate(),
                    i,
                    1_800_000_000_000,
                )
            })
            .collect();
        envelope::sign_origin_round(&key, &mut envs);
        envs
    };
    let round = seal_round(&n);
    let mut relayed_round: Vec<Envelope> = round
        .iter()
        .map(|e| envelope::relay_unsigned(e, hop(vec![])))
        .collect();
    envelope::sign_custody_round(&relay_key, &mut relayed_round);
    let many_rounds: Vec<Vec<u8>> = relayed_round.iter().map(envelope::encode).collect();
    let refs: Vec<&[u8]> = many_rounds.iter().map(Vec::as_slice).collect();
    g.bench_function("verify-many-64-signed-in-rounds-with-one-hop", |b| {
        b.iter(|| {
            let out = envelope::verify_many(black_box(&refs), &roster);
            assert!(out.iter().all(Result::is_ok));
        })
    });
    g.bench_function("seal-64-as-one-round", |b| {
        b.iter(|| seal_round(black_box(&n)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
