//! The example policies of docs/examples parse, and behave as docs/POLICY.md says they do.

use serde_json::json;

use super::*;
use crate::explain;

const MAOC_N: &str = include_str!("../../../../docs/examples/policy-maoc-n.toml");
const DAKAR: &str = include_str!("../../../../docs/examples/policy-dakar.toml");
const ACCRA: &str = include_str!("../../../../docs/examples/policy-accra.toml");

fn ceclad() -> Party {
    peer("ceclad-m", "FR", "ceclad-m")
}

#[test]
fn the_example_policies_parse() {
    for (name, text, version) in [
        ("maoc-n", MAOC_N, 12),
        ("dakar", DAKAR, 4),
        ("accra", ACCRA, 2),
    ] {
        let p = Policy::parse(text).unwrap_or_else(|e| panic!("policy-{name}.toml: {e}"));
        assert_eq!(p.version(), version, "{name}");
        assert!(p.rule_ids().count() >= 5, "{name}");
        assert!(p.consent_ids().count() >= 1, "{name}");
        assert!(!p.default_allows(), "{name}");
    }
}

#[test]
fn maoc_n_shares_vessels_with_west_africa_without_persons() {
    let p = policy(MAOC_N);
    let (h, f) = vessel("vessel_of_interest", "H2", design_body());
    for dest in [dakar(), accra()] {
        let d = p.evaluate(&h, &maoc(), &f, &dest);
        assert_eq!(d.rule(), Some("west-africa-vessels"));
        assert_eq!(action(&d, "vessel.imo"), &FieldAction::Clear);
        assert_eq!(
            action(&d, "vessel.position.lat"),
            &generalised(json!(6), "round:1")
        );
        assert_eq!(action(&d, "persons[0].name"), &FieldAction::Redact);
        assert_eq!(action(&d, "persons[0].dob"), &FieldAction::Redact);
        assert_eq!(action(&d, "persons[0].nationality"), &FieldAction::Clear);
        assert_eq!(action(&d, "persons[0].role"), &FieldAction::Clear);
    }
    // the worked example of docs/POLICY.md
    let e = explain(&p.evaluate(&h, &maoc(), &f, &accra()), &h, &f);
    assert_eq!(
        e.view,
        json!({
            "vessel": { "name": "MV Example", "imo": "9387421", "flag": "TG",
                        "position": { "lat": 6, "lon": 0 } },
            "persons": [ { "nationality": "CO", "role": "master" } ],
            "narrative": "Mother ship suspected of transhipment off the Bijagos."
        })
    );
}

#[test]
fn maoc_n_h3_and_informants_do_not_go_to_west_africa() {
    let p = policy(MAOC_N);
    let (h, f) = sealed(json!({
        "kind": "vessel_of_interest", "routes": ["atlantic.west-africa"],
        "handling": "H3", "handling_restriction": "not for court without consent",
        "fields": {"vessel": {"name": "MV Example"}}
    }));
    assert_eq!(p.evaluate(&h, &maoc(), &f, &dakar()).rule(), None);
    let mut body = design_body();
    body["informant"] = json!({"handler": "PJ-17"});
    let (h, f) = vessel("vessel_of_interest", "H1", body);
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert!(!d.is_allow());
    assert_eq!(d.rule(), Some("west-africa-vessels"));
    assert!(
        p.evaluate(&h, &maoc(), &f, &ceclad()).is_allow(),
        "EU partners get it"
    );
}

#[test]
fn maoc_n_rounds_positions_for_non_eu_partners_and_keeps_h2_from_them() {
    let p = policy(MAOC_N);
    let (h, f) = vessel("vessel_of_interest", "H1", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &jiatf());
    assert_eq!(d.rule(), Some("non-eu-partners"));
    assert_eq!(
        action(&d, "vessel.position.lat"),
        &generalised(json!(5.6), "round:0.1")
    );
    assert_eq!(
        action(&d, "persons[0].dob"),
        &generalised(json!("1979"), "year")
    );
    assert_eq!(action(&d, "persons[0].name"), &FieldAction::Clear);
    let d = p.evaluate(&h, &maoc(), &f, &ceclad());
    assert_eq!(d.rule(), Some("eu-partners"));
    assert!(d.fields().iter().all(|f| f.action == FieldAction::Clear));
    let (h, f) = vessel("vessel_of_interest", "H2", design_body());
    assert!(!p.evaluate(&h, &maoc(), &f, &jiatf()).is_allow());
}

#[test]
fn maoc_n_sends_asset_traces_only_to_europol() {
    let p = policy(MAOC_N);
    let (h, f) = vessel(
        "asset_trace",
        "H0",
        json!({"accounts": [{"iban": "PT50000201231234567890154"}]}),
    );
    for dest in [dakar(), accra(), jiatf(), ceclad()] {
        let d = p.evaluate(&h, &maoc(), &f, &dest);
        assert_eq!(d.rule(), Some("asset-traces-only-to-europol"), "{dest}");
        assert!(!d.is_allow());
    }
    let d = p.evaluate(&h, &maoc(), &f, &europol());
    assert_eq!(d.rule(), Some("asset-traces-to-europol"));
    assert!(d.is_allow());
    let duty = subscriber("maoc-n", "PT", "maoc-n", "duty-officer");
    assert_eq!(
        p.evaluate(&h, &maoc(), &f, &duty).rule(),
        Some("local-duty-officers")
    );
}

#[test]
fn maoc_n_local_liaison_officers_do_not_see_passports() {
    let p = policy(MAOC_N);
    let mut body = design_body();
    body["persons"][0]["passport"] = json!("P1234567");
    let (h, f) = vessel("vessel_of_interest", "H2", body);
    let lo = subscriber("maoc-n", "PT", "maoc-n", "liaison-officer");
    let d = p.evaluate(&h, &maoc(), &f, &lo);
    assert_eq!(action(&d, "persons[0].passport"), &FieldAction::Redact);
    assert_eq!(action(&d, "persons[0].name"), &FieldAction::Clear);
}

#[test]
fn maoc_n_standing_consent_covers_h2_vessels_within_west_africa() {
    let p = policy(MAOC_N);
    let (h, _) = vessel("vessel_of_interest", "H2", design_body());
    assert_eq!(
        p.standing_consent(&h, &accra()),
        Some("h2-vessels-within-west-africa")
    );
    assert_eq!(p.standing_consent(&h, &jiatf()), None);
    let (h, _) = vessel("seizure", "H2", design_body());
    assert_eq!(p.standing_consent(&h, &accra()), None);
}

#[test]
fn dakar_relays_to_accra_with_persons_redacted() {
    let p = policy(DAKAR);
    let (h, f) = vessel("vessel_of_interest", "H1", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(d.rule(), Some("relay-to-accra"));
    assert_eq!(action(&d, "persons[0].name"), &FieldAction::Redact);
    assert_eq!(action(&d, "persons[0].dob"), &FieldAction::Redact);
    assert_eq!(action(&d, "persons[0].nationality"), &FieldAction::Clear);
    assert_eq!(
        action(&d, "vessel.position.lon"),
        &generalised(json!(0), "round:1")
    );
    // a notification written by JIATF-S is not relayed to Accra
    assert_eq!(p.evaluate(&h, &jiatf(), &f, &accra()).rule(), None);
    // everything goes back to MAOC-N
    let d = p.evaluate(&h, &maoc(), &f, &maoc());
    assert_eq!(d.rule(), Some("to-maoc-n"));
}

#[test]
fn dakar_keeps_h3_for_local_subscribers() {
    let p = policy(DAKAR);
    let (h, f) = sealed(json!({
        "kind": "alert", "routes": ["atlantic.west-africa"],
        "handling": "H3", "handling_restriction": "no use in court",
        "fields": {"narrative": "x"}
    }));
    let d = p.evaluate(&h, &maoc(), &f, &maoc());
    assert_eq!(d.rule(), Some("h3-stays-here"));
    assert!(!d.is_allow());
    let analyst = subscriber("dakar", "SN", "ocrtis", "analyst");
    assert_eq!(
        p.evaluate(&h, &maoc(), &f, &analyst).rule(),
        Some("local-analysts")
    );
}

#[test]
fn dakar_standing_consents_for_its_own_h2() {
    let p = policy(DAKAR);
    let (h, _) = vessel("vessel_of_interest", "H2", design_body());
    assert_eq!(p.standing_consent(&h, &maoc()), Some("h2-onward-to-maoc-n"));
    assert_eq!(
        p.standing_consent(&h, &accra()),
        Some("h2-onward-within-ghana")
    );
    let (h, _) = vessel("seizure", "H2", design_body());
    assert_eq!(p.standing_consent(&h, &accra()), None);
    assert_eq!(p.standing_consent(&h, &jiatf()), None);
}

#[test]
fn relaying_through_dakar_carries_only_what_maoc_n_would_send_to_both() {
    // MAOC-N sends to its next hop Dakar what it would send to both Dakar and Accra.
    let p = policy(MAOC_N);
    let (h, f) = vessel("vessel_of_interest", "H1", design_body());
    let d = p
        .evaluate(&h, &maoc(), &f, &dakar())
        .intersect(p.evaluate(&h, &maoc(), &f, &accra()));
    assert_eq!(d.rule(), Some("west-africa-vessels"));
    assert_eq!(action(&d, "persons[0].name"), &FieldAction::Redact);
    // and a destination MAOC-N would refuse makes the whole copy a deny
    let (h, f) = vessel("asset_trace", "H0", json!({"accounts": [{"iban": "x"}]}));
    let d = p
        .evaluate(&h, &maoc(), &f, &europol())
        .intersect(p.evaluate(&h, &maoc(), &f, &dakar()));
    assert_eq!(d.rule(), Some("asset-traces-only-to-europol"));
}

#[test]
fn accra_shares_well_graded_information_with_dakar() {
    let p = policy(ACCRA);
    let mut body = design_body();
    body["persons"][0]["address"] = json!("4 Ring Road, Tema, GH");
    let (h, f) = vessel("seizure", "H1", body); // graded B2
    let d = p.evaluate(&h, &accra(), &f, &dakar());
    assert_eq!(d.rule(), Some("to-dakar"));
    assert_eq!(
        action(&d, "persons[0].dob"),
        &generalised(json!("1979"), "year")
    );
    assert_eq!(
        action(&d, "persons[0].address"),
        &generalised(json!("GH"), "country-only")
    );
    assert_eq!(action(&d, "persons[0].name"), &FieldAction::Redact);
    let (h, f) = sealed(json!({
        "kind": "seizure", "routes": ["atlantic.west-africa"], "handling": "H1",
        "grading": {"source": "C", "information": "3"}, "fields": {"narrative": "x"}
    }));
    assert_eq!(
        p.evaluate(&h, &accra(), &f, &dakar()).rule(),
        None,
        "C3 stays in Accra"
    );
}

#[test]
fn accra_answers_interdiction_requests_but_does_not_relay_them() {
    let p = policy(ACCRA);
    let (h, f) = sealed(json!({
        "kind": "interdiction_request", "routes": ["atlantic.west-africa"], "handling": "H1",
        "purposes": ["interdiction"], "response_deadline": "2026-06-01T12:00:00Z",
        "fields": design_body()
    }));
    for dest in [dakar(), maoc()] {
        assert_eq!(
            p.evaluate(&h, &maoc(), &f, &dest).rule(),
            Some("interdiction-requests-stay-here")
        );
    }
    let navy = subscriber("accra", "GH", "nacoc", "navy");
    let d = p.evaluate(&h, &maoc(), &f, &navy);
    assert_eq!(d.rule(), Some("local-navy"));
    assert_eq!(action(&d, "vessel.position.lat"), &FieldAction::Clear);
    assert_eq!(action(&d, "persons[0].name"), &FieldAction::Redact);
}

#[test]
fn accra_never_sends_witness_details_abroad() {
    let p = policy(ACCRA);
    let mut body = design_body();
    body["witnesses"] = json!([{"name": "W"}]);
    let (h, f) = vessel("seizure", "H1", body);
    let d = p.evaluate(&h, &accra(), &f, &maoc());
    assert_eq!(d.rule(), Some("to-maoc-n"));
    assert!(!d.is_allow());
    assert_eq!(
        p.standing_consent(&h, &dakar()),
        Some("h2-seizures-to-senegal")
    );
    assert_eq!(p.standing_consent(&h, &maoc()), None);
}
