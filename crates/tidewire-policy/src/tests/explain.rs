//! Explanations show exactly what would be sent, and why.

use serde_json::json;

use super::*;
use crate::explain;

const POLICY: &str = r#"
version = 3
[[rule]]
id = "west-africa-vessels"
to = ["country:SN", "country:GH"]
allow = ["vessel.*", "narrative"]
redact = ["persons[*].name"]
generalise = { "vessel.position" = "round:1", "persons[*].dob" = "year" }
"#;

#[test]
fn the_view_is_exactly_what_the_destination_receives() {
    let p = policy(POLICY);
    let (h, f) = vessel("vessel_of_interest", "H2", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    let e = explain(&d, &h, &f);
    assert_eq!(e.decision, "allow");
    assert_eq!(e.rule.as_deref(), Some("west-africa-vessels"));
    assert_eq!(
        e.view,
        json!({
            "vessel": { "name": "MV Example", "imo": "9387421", "flag": "TG",
                        "position": { "lat": 6, "lon": 0 } },
            "persons": [ { "dob": "1979" } ],
            "narrative": "Mother ship suspected of transhipment off the Bijagos."
        })
    );
}

#[test]
fn every_field_is_explained_with_rule_pattern_and_note() {
    let p = policy(POLICY);
    let (h, f) = vessel("vessel_of_interest", "H2", design_body());
    let e = explain(&p.evaluate(&h, &maoc(), &f, &accra()), &h, &f);
    assert_eq!(e.fields.len(), f.len());
    let get = |path: &str| e.fields.iter().find(|x| x.path == path).unwrap();
    assert_eq!(get("vessel.name").decision, "clear");
    assert_eq!(get("vessel.name").pattern.as_deref(), Some("vessel.*"));
    assert_eq!(get("vessel.position.lat").decision, "generalise:round:1");
    assert_eq!(
        get("vessel.position.lat").pattern.as_deref(),
        Some("vessel.position")
    );
    assert_eq!(get("persons[0].name").decision, "redact");
    assert_eq!(
        get("persons[0].name").rule.as_deref(),
        Some("west-africa-vessels")
    );
    let role = get("persons[0].role");
    assert_eq!(role.decision, "redact");
    assert_eq!(role.pattern, None);
    assert!(
        role.note
            .as_deref()
            .unwrap()
            .contains("withheld by default")
    );
    assert!(
        e.notification
            .contains("vessel_of_interest H2 from maoc-n, case MAOC-2026-0142"),
        "{}",
        e.notification
    );
}

#[test]
fn withheld_array_slots_keep_their_indices() {
    let p =
        policy("version = 1\n[[rule]]\nid = \"r\"\nto = [\"node:*\"]\nallow = [\"persons[1]\"]\n");
    let (h, f) = vessel(
        "alert",
        "H0",
        json!({"persons": [{"name": "A"}, {"name": "B"}]}),
    );
    let e = explain(&p.evaluate(&h, &maoc(), &f, &accra()), &h, &f);
    assert_eq!(e.view, json!({"persons": [null, {"name": "B"}]}));
}

#[test]
fn a_deny_explains_that_nothing_is_sent() {
    let p = policy("version = 1\n");
    let (h, f) = vessel("alert", "H0", design_body());
    let e = explain(&p.evaluate(&h, &maoc(), &f, &accra()), &h, &f);
    assert_eq!(e.decision, "deny");
    assert_eq!(e.rule, None);
    assert!(e.fields.is_empty());
    assert_eq!(e.view, serde_json::Value::Null);
    let text = e.render_text();
    assert!(text.contains("DENY (rule none (policy default))"), "{text}");
    assert!(text.contains("nothing is sent"), "{text}");
    assert!(
        text.contains("no rule allows alert notifications to node:accra"),
        "{text}"
    );
}

#[test]
fn fields_the_decision_does_not_cover_are_withheld() {
    let (h, f) = vessel("alert", "H0", json!({"a": 1, "b": 2}));
    let d = Decision::Allow {
        rule: "r".into(),
        fields: vec![crate::FieldDecision {
            path: "a".into(),
            action: FieldAction::Clear,
            rule: "r".into(),
            pattern: Some("a".into()),
            note: None,
        }],
    };
    let e = explain(&d, &h, &f);
    assert_eq!(e.view, json!({"a": 1}));
    assert_eq!(e.fields[1].decision, "redact");
}

#[test]
fn text_rendering_is_a_table_followed_by_the_body() {
    let p = policy(POLICY);
    let (h, f) = vessel("vessel_of_interest", "H2", design_body());
    let text = explain(&p.evaluate(&h, &maoc(), &f, &dakar()), &h, &f).render_text();
    assert!(
        text.contains("decision:     ALLOW (rule west-africa-vessels)"),
        "{text}"
    );
    let header = text.lines().find(|l| l.starts_with("FIELD")).unwrap();
    for col in ["DECISION", "RULE", "PATTERN", "NOTE"] {
        assert!(header.contains(col), "{header}");
    }
    let lat = text
        .lines()
        .find(|l| l.starts_with("vessel.position.lat"))
        .unwrap();
    assert!(
        lat.contains("generalise:round:1") && lat.contains("vessel.position"),
        "{lat}"
    );
    // columns line up: DECISION starts at the same offset on every row
    let at = header.find("DECISION").unwrap();
    assert_eq!(&lat[at..at + "generalise".len()], "generalise");
    assert!(text.contains("sent:\n{"), "{text}");
}

#[test]
fn json_rendering_has_every_part() {
    let p = policy(POLICY);
    let (h, f) = vessel("vessel_of_interest", "H2", design_body());
    let e = explain(&p.evaluate(&h, &maoc(), &f, &dakar()), &h, &f);
    let j = e.to_json();
    assert_eq!(j["decision"], "allow");
    assert_eq!(j["rule"], "west-africa-vessels");
    assert_eq!(j["view"], e.view);
    assert_eq!(j["fields"][0]["path"], "vessel.name");
    assert_eq!(j["fields"][0]["decision"], "clear");
    assert_eq!(j["fields"][0]["pattern"], "vessel.*");
}
