//! One destination decision: a 50-rule policy, a 40-field notification (target ≤ 20 µs).
//!
//! `cargo bench -p tidewire-policy --bench evaluate`; figures in docs/BENCHMARKS.md.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tidewire_core::envelope::{self, Header, VerifiedField};
use tidewire_core::keys::SigningKey;
use tidewire_core::{NodeId, Notification, NotificationId};
use tidewire_policy::{Party, Policy, explain};

/// A 40-field vessel notification: 6 vessel, 3 cargo, 6 persons x 5, narrative.
fn forty_fields() -> (Header, Vec<VerifiedField>) {
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
            "vessel": {"name": "MV Example", "imo": "9387421", "flag": "TG",
                       "position": {"lat": 5.61, "lon": -0.19}, "course": 214},
            "cargo": {"declared": "fishing gear", "suspected": "cocaine", "estimated_kg": 1200},
            "persons": persons,
            "narrative": "Mother ship suspected of transhipment off the Bijagos; rendezvous with fast boats expected."
        }
    });
    let n = Notification::from_value(&json).unwrap();
    assert_eq!(n.fields.len(), 40);
    let origin: NodeId = "maoc-n".parse().unwrap();
    let env = envelope::seal(
        &n,
        &origin,
        &SigningKey::from_seed([7; 32]),
        NotificationId([1; 16]),
        1,
        1_780_000_000_000,
    );
    let view = envelope::inspect(&env).unwrap();
    (view.header, view.fields)
}

/// 50 rules: 47 that do not apply to Accra (other destinations, kinds, routes), two deny rules
/// that do not apply, and the deciding rule last but one, so every rule is looked at.
fn fifty_rules() -> String {
    let mut s = String::from("version = 1\ndefault = \"deny\"\n");
    let countries = [
        "ES", "FR", "IE", "IT", "NL", "GB", "US", "CO", "BR", "CV", "SN", "MA",
    ];
    for i in 0..47 {
        let cc = countries[i % countries.len()];
        let when = match i % 4 {
            0 => "when = { kinds = [\"seizure\", \"alert\"] }".to_owned(),
            1 => "when = { routes = [\"air.>\"], handling = [\"H0\", \"H1\"] }".to_owned(),
            2 => format!("when = {{ purposes = [\"asset-recovery\"], source = [\"A\"] }} # {i}"),
            _ => String::new(),
        };
        let to = if i % 3 == 0 {
            format!("[\"country:{cc}\", \"role:analyst-{i}\"]")
        } else {
            format!("[\"node:peer-{i}\", \"org:org-{i}\"]")
        };
        let _ = write!(
            s,
            "\n[[rule]]\nid = \"rule-{i}\"\nto = {to}\n{when}\nallow = [\"vessel.*\", \"cargo\", \"narrative\"]\nredact = [\"persons[*].name\", \"persons[*].passport\"]\ngeneralise = {{ \"vessel.position\" = \"round:1\", \"persons[*].dob\" = \"year\" }}\n"
        );
    }
    s += "\n[[rule]]\nid = \"no-asset-traces\"\nto = [\"country:*\"]\nunless_to = [\"org:europol\"]\nwhen = { kinds = [\"asset_trace\"] }\naction = \"deny\"\n";
    s += "\n[[rule]]\nid = \"west-africa-vessels\"\nto = [\"country:SN\", \"country:GH\"]\nwhen = { kinds = [\"vessel_of_interest\", \"seizure\"], handling = [\"H0\", \"H1\", \"H2\"], routes = [\"atlantic.>\"] }\nallow = [\"vessel\", \"cargo\", \"narrative\", \"persons[*].nationality\", \"persons[*].role\"]\nredact = [\"persons[*].name\", \"persons[*].passport\"]\ngeneralise = { \"vessel.position\" = \"round:1\", \"persons[*].dob\" = \"year\" }\ndrop_if = [\"informant\"]\n";
    s += "\n[[rule]]\nid = \"no-h3\"\nto = [\"node:*\"]\nwhen = { handling = [\"H3\"] }\naction = \"deny\"\n";
    s
}

fn bench(c: &mut Criterion) {
    let text = fifty_rules();
    let policy = Policy::parse(&text).unwrap();
    assert_eq!(policy.rule_ids().count(), 50);
    let (header, fields) = forty_fields();
    let origin = Party::peer("maoc-n".parse().unwrap(), "PT".parse().unwrap(), "maoc-n");
    let accra = Party::peer("accra".parse().unwrap(), "GH".parse().unwrap(), "nacoc");
    let d = policy.evaluate(&header, &origin, &fields, &accra);
    assert_eq!(d.rule(), Some("west-africa-vessels"));
    assert_eq!(d.fields().len(), 40);

    c.bench_function("evaluate 50 rules x 40 fields, one destination", |b| {
        b.iter(|| {
            black_box(policy.evaluate(
                black_box(&header),
                black_box(&origin),
                black_box(&fields),
                black_box(&accra),
            ))
        })
    });
    c.bench_function("parse a 50-rule policy", |b| {
        b.iter(|| black_box(Policy::parse(black_box(&text)).unwrap()))
    });
    c.bench_function("explain one decision (40 fields)", |b| {
        b.iter(|| black_box(explain(black_box(&d), &header, &fields)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
