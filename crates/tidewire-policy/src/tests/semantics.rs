//! One test per semantic rule of docs/POLICY.md.

use serde_json::json;

use super::*;
use crate::FieldDecision;

const WEST_AFRICA: &str = r#"
version = 7
default = "deny"

[[rule]]
id = "west-africa-vessels"
to = ["country:SN", "country:GH"]
when = { kinds = ["vessel_of_interest", "seizure"], handling = ["H0", "H1", "H2"] }
allow = ["vessel.*", "cargo.*", "narrative"]
redact = ["persons[*].name", "persons[*].dob"]
generalise = { "vessel.position" = "round:1" }

[[rule]]
id = "no-asset-traces-outside-eu"
to = ["country:*"]
unless_to = ["org:europol"]
when = { kinds = ["asset_trace"] }
action = "deny"
"#;

fn allow_rule(d: &Decision) -> &str {
    match d {
        Decision::Allow { rule, .. } => rule,
        Decision::Deny { .. } => panic!("expected allow, got {d:?}"),
    }
}

fn deny_rule(d: &Decision) -> Option<&str> {
    match d {
        Decision::Deny { rule, .. } => rule.as_deref(),
        Decision::Allow { .. } => panic!("expected deny, got {d:?}"),
    }
}

#[test]
fn design_example_policy_decides_every_field() {
    let p = policy(WEST_AFRICA);
    let (h, f) = vessel("vessel_of_interest", "H2", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(allow_rule(&d), "west-africa-vessels");
    assert_eq!(action(&d, "vessel.name"), &FieldAction::Clear);
    assert_eq!(
        action(&d, "vessel.position.lat"),
        &generalised(json!(6), "round:1")
    );
    assert_eq!(
        action(&d, "vessel.position.lon"),
        &generalised(json!(0), "round:1")
    );
    assert_eq!(action(&d, "persons[0].name"), &FieldAction::Redact);
    assert_eq!(action(&d, "persons[0].dob"), &FieldAction::Redact);
    assert_eq!(action(&d, "narrative"), &FieldAction::Clear);
    // one decision per field, in the order given
    let paths: Vec<_> = d.fields().iter().map(|f| f.path.as_str()).collect();
    let given: Vec<_> = f.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, given);
}

#[test]
fn to_selects_by_node_country_org_and_role() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "by-node"
to = ["node:accra"]
allow = ["*"]
[[rule]]
id = "by-country"
to = ["country:SN"]
allow = ["*"]
[[rule]]
id = "by-org"
to = ["org:europol"]
allow = ["*"]
[[rule]]
id = "by-role"
to = ["role:duty-officer"]
allow = ["*"]
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let rule = |dest: &Party| p.evaluate(&h, &maoc(), &f, dest).rule().map(str::to_owned);
    assert_eq!(rule(&accra()).as_deref(), Some("by-node"));
    assert_eq!(rule(&dakar()).as_deref(), Some("by-country"));
    assert_eq!(rule(&europol()).as_deref(), Some("by-org"));
    assert_eq!(
        rule(&subscriber("maoc-n", "PT", "maoc-n", "duty-officer")).as_deref(),
        Some("by-role")
    );
    // a role rule never covers a peer node, and another role does not match
    assert_eq!(rule(&jiatf()), None);
    assert_eq!(rule(&subscriber("maoc-n", "PT", "maoc-n", "analyst")), None);
}

#[test]
fn node_selectors_cover_local_subscribers_of_that_node() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "ghana"
to = ["country:GH"]
allow = ["vessel"]
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(
        &h,
        &maoc(),
        &f,
        &subscriber("accra", "GH", "nacoc", "analyst"),
    );
    assert_eq!(d.rule(), Some("ghana"));
}

#[test]
fn wildcards_and_any_role() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "subscribers"
to = ["role:*"]
allow = ["*"]
[[rule]]
id = "everyone-else"
to = ["node:*"]
allow = ["narrative"]
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let sub = subscriber("maoc-n", "PT", "maoc-n", "anything");
    assert_eq!(
        p.evaluate(&h, &maoc(), &f, &sub).rule(),
        Some("subscribers")
    );
    assert_eq!(
        p.evaluate(&h, &maoc(), &f, &jiatf()).rule(),
        Some("everyone-else")
    );
}

#[test]
fn unless_to_excludes_destinations() {
    let p = policy(WEST_AFRICA);
    let (h, f) = vessel("asset_trace", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(deny_rule(&d), Some("no-asset-traces-outside-eu"));
    // Europol is excluded from the deny; no other rule applies, so the default decides
    let d = p.evaluate(&h, &maoc(), &f, &europol());
    assert_eq!(deny_rule(&d), None);
    let Decision::Deny { reason, .. } = &d else {
        unreachable!()
    };
    assert!(reason.contains("no rule allows asset_trace"), "{reason}");
    assert!(reason.contains("default is deny"), "{reason}");
}

#[test]
fn when_kinds_and_handling_narrow_a_rule() {
    let p = policy(WEST_AFRICA);
    let (h, f) = vessel("alert", "H0", design_body());
    assert_eq!(deny_rule(&p.evaluate(&h, &maoc(), &f, &accra())), None);
    let (h, f) = sealed(json!({
        "kind": "seizure", "routes": ["atlantic.west-africa"],
        "handling": "H3", "handling_restriction": "not for court",
        "fields": {"vessel": {"name": "x"}}
    }));
    assert_eq!(deny_rule(&p.evaluate(&h, &maoc(), &f, &accra())), None);
    let (h, f) = vessel("seizure", "H1", design_body());
    assert_eq!(
        allow_rule(&p.evaluate(&h, &maoc(), &f, &accra())),
        "west-africa-vessels"
    );
}

fn one_condition(when: &str) -> Policy {
    policy(&format!(
        "version = 1\n[[rule]]\nid = \"r\"\nto = [\"node:*\"]\nwhen = {{ {when} }}\nallow = [\"*\"]\n"
    ))
}

fn applies(p: &Policy, h: &Header, f: &[VerifiedField]) -> bool {
    p.evaluate(h, &maoc(), f, &accra()).is_allow()
}

#[test]
fn when_routes_match_route_patterns() {
    let (h, f) = vessel("alert", "H0", design_body());
    assert!(applies(
        &one_condition(r#"routes = ["atlantic.>"]"#),
        &h,
        &f
    ));
    assert!(applies(
        &one_condition(r#"routes = ["air.>", "vessel.imo.*"]"#),
        &h,
        &f
    ));
    assert!(!applies(&one_condition(r#"routes = ["air.>"]"#), &h, &f));
    assert!(!applies(
        &one_condition(r#"routes = ["atlantic.*"]"#),
        &h,
        &f
    ));
}

#[test]
fn when_origin_matches_the_origin_party() {
    let (h, f) = vessel("alert", "H0", design_body());
    for yes in [
        r#"origin = ["node:maoc-n"]"#,
        r#"origin = ["country:PT"]"#,
        r#"origin = ["org:maoc-n", "node:dakar"]"#,
    ] {
        assert!(applies(&one_condition(yes), &h, &f), "{yes}");
    }
    for no in [
        r#"origin = ["node:dakar"]"#,
        r#"origin = ["country:SN"]"#,
        r#"origin = ["org:x"]"#,
    ] {
        assert!(!applies(&one_condition(no), &h, &f), "{no}");
    }
}

#[test]
fn when_grading_source_and_information() {
    let (h, f) = vessel("alert", "H0", design_body()); // graded B2
    assert!(applies(&one_condition(r#"source = ["A", "B"]"#), &h, &f));
    assert!(!applies(&one_condition(r#"source = ["A"]"#), &h, &f));
    assert!(applies(
        &one_condition(r#"information = ["1", "2"]"#),
        &h,
        &f
    ));
    assert!(!applies(
        &one_condition(r#"information = ["3", "4"]"#),
        &h,
        &f
    ));
    assert!(applies(
        &one_condition(r#"source = ["B"], information = ["2"]"#),
        &h,
        &f
    ));
    assert!(!applies(
        &one_condition(r#"source = ["B"], information = ["1"]"#),
        &h,
        &f
    ));
}

#[test]
fn when_purposes_match_if_any_is_shared() {
    let (h, f) = vessel("alert", "H0", design_body()); // interdiction, investigation
    assert!(applies(
        &one_condition(r#"purposes = ["interdiction"]"#),
        &h,
        &f
    ));
    assert!(applies(
        &one_condition(r#"purposes = ["asset-recovery", "investigation"]"#),
        &h,
        &f
    ));
    assert!(!applies(
        &one_condition(r#"purposes = ["asset-recovery"]"#),
        &h,
        &f
    ));
}

#[test]
fn every_when_condition_must_hold() {
    let (h, f) = vessel("alert", "H0", design_body());
    assert!(applies(
        &one_condition(r#"kinds = ["alert"], handling = ["H0"], source = ["B"]"#),
        &h,
        &f
    ));
    assert!(!applies(
        &one_condition(r#"kinds = ["alert"], handling = ["H1"], source = ["B"]"#),
        &h,
        &f
    ));
    assert!(
        applies(&one_condition(""), &h, &f),
        "an empty `when` always holds"
    );
}

#[test]
fn deny_overrides_an_earlier_allow() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "all-to-ghana"
to = ["country:GH"]
allow = ["*"]
[[rule]]
id = "no-h2-abroad"
to = ["country:*"]
unless_to = ["country:PT"]
when = { handling = ["H2"] }
action = "deny"
"#,
    );
    let (h, f) = vessel("alert", "H2", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(deny_rule(&d), Some("no-h2-abroad"));
    let Decision::Deny { reason, .. } = d else {
        unreachable!()
    };
    assert!(
        reason.contains("rule `no-h2-abroad` denies alert notifications to node:accra"),
        "{reason}"
    );
    let (h, f) = vessel("alert", "H1", design_body());
    assert_eq!(
        p.evaluate(&h, &maoc(), &f, &accra()).rule(),
        Some("all-to-ghana")
    );
}

#[test]
fn first_applicable_allow_rule_decides_the_fields() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "not-applicable"
to = ["country:SN"]
allow = ["*"]
[[rule]]
id = "narrow"
to = ["country:GH"]
allow = ["narrative"]
[[rule]]
id = "broad"
to = ["node:*"]
allow = ["*"]
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(allow_rule(&d), "narrow");
    assert_eq!(action(&d, "narrative"), &FieldAction::Clear);
    assert_eq!(
        action(&d, "vessel.name"),
        &FieldAction::Redact,
        "a later, broader rule does not add fields"
    );
}

#[test]
fn drop_if_denies_when_a_matching_field_is_present() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "vessels"
to = ["node:*"]
allow = ["*"]
drop_if = ["persons[*].passport"]
"#,
    );
    let mut body = design_body();
    let (h, f) = vessel("alert", "H0", body.clone());
    assert!(
        p.evaluate(&h, &maoc(), &f, &accra()).is_allow(),
        "absent field: no drop"
    );
    body["persons"][0]["passport"] = json!("P1234567");
    let (h, f) = vessel("alert", "H0", body);
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(deny_rule(&d), Some("vessels"));
    let Decision::Deny { reason, .. } = d else {
        unreachable!()
    };
    assert!(
        reason.contains("`persons[0].passport` matches drop_if `persons[*].passport`"),
        "{reason}"
    );
}

#[test]
fn drop_if_of_any_applicable_rule_denies_even_if_another_rule_decides() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "first"
to = ["node:*"]
allow = ["*"]
[[rule]]
id = "guard"
to = ["country:GH"]
drop_if = ["persons"]
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    assert_eq!(
        deny_rule(&p.evaluate(&h, &maoc(), &f, &accra())),
        Some("guard")
    );
    assert_eq!(allow_rule(&p.evaluate(&h, &maoc(), &f, &dakar())), "first");
}

#[test]
fn default_deny_names_no_rule() {
    let p = policy("version = 1\n");
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(deny_rule(&d), None);
    assert!(!d.is_allow());
}

#[test]
fn default_allow_sends_everything_in_clear_under_rule_default() {
    let p = policy("version = 1\ndefault = \"allow\"\n");
    assert!(p.default_allows());
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(allow_rule(&d), "default");
    assert_eq!(d.fields().len(), f.len());
    for fd in d.fields() {
        assert_eq!(fd.action, FieldAction::Clear);
        assert_eq!(fd.rule, "default");
        assert_eq!(fd.pattern, None);
    }
}

#[test]
fn the_most_specific_pattern_wins() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "r"
to = ["node:*"]
redact = ["vessel"]
allow = ["vessel.name", "persons[*].nationality", "persons"]
generalise = { "persons[0].dob" = "year" }
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(action(&d, "vessel.name"), &FieldAction::Clear);
    assert_eq!(action(&d, "vessel.imo"), &FieldAction::Redact);
    assert_eq!(
        action(&d, "persons[0].dob"),
        &generalised(json!("1979"), "year")
    );
    assert_eq!(action(&d, "persons[0].name"), &FieldAction::Clear);
    let fd = d.fields().iter().find(|f| f.path == "vessel.name").unwrap();
    assert_eq!(fd.pattern.as_deref(), Some("vessel.name"));
    assert_eq!(fd.rule, "r");
}

#[test]
fn ties_go_to_the_most_restrictive() {
    // `vessel.*` and `*.name` have the same specificity
    let p = policy(
        r#"
version = 1
[[rule]]
id = "r"
to = ["node:*"]
allow = ["vessel.*"]
redact = ["*.name"]
generalise = { "*.imo" = "prefix:3" }
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(action(&d, "vessel.name"), &FieldAction::Redact);
    assert_eq!(
        action(&d, "vessel.imo"),
        &generalised(json!("938"), "prefix:3")
    );
    assert_eq!(action(&d, "vessel.flag"), &FieldAction::Clear);
}

#[test]
fn tied_generalisers_that_disagree_redact() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "r"
to = ["node:*"]
generalise = { "vessel.*.lat" = "round:1", "*.position.lat" = "round:0.1" }
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(action(&d, "vessel.position.lat"), &FieldAction::Redact);
    let fd = d
        .fields()
        .iter()
        .find(|f| f.path == "vessel.position.lat")
        .unwrap();
    assert!(
        fd.note.as_deref().unwrap().contains("differently"),
        "{fd:?}"
    );
}

#[test]
fn a_field_no_pattern_selects_is_redacted_and_says_so() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "narrative-only"
to = ["node:*"]
allow = ["narrative"]
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    let fd: &FieldDecision = d.fields().iter().find(|f| f.path == "vessel.imo").unwrap();
    assert_eq!(fd.action, FieldAction::Redact);
    assert_eq!(fd.pattern, None);
    assert_eq!(fd.rule, "narrative-only");
    assert!(
        fd.note.as_deref().unwrap().contains("withheld by default"),
        "{fd:?}"
    );
}

#[test]
fn a_generaliser_that_does_not_apply_redacts_and_says_so() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "r"
to = ["node:*"]
generalise = { "vessel.name" = "round:1", "persons[*].role" = "year", "vessel.position" = "prefix:2" }
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    for path in ["vessel.name", "persons[0].role", "vessel.position.lat"] {
        let fd = d.fields().iter().find(|f| f.path == path).unwrap();
        assert_eq!(fd.action, FieldAction::Redact, "{path}");
        let note = fd.note.as_deref().unwrap();
        assert!(
            note.contains("needs") && note.ends_with("redacted"),
            "{note}"
        );
    }
}

#[test]
fn generalisers_in_evaluation() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "r"
to = ["node:*"]
generalise = { "vessel.position" = "round:0.1", "persons[*].dob" = "year", "vessel.imo" = "prefix:3", "persons[*].address" = "country-only", "persons[*].home" = "country-only" }
"#,
    );
    let (h, f) = vessel(
        "alert",
        "H0",
        json!({
            "vessel": {"imo": "9387421", "position": {"lat": 5.61, "lon": -0.19}},
            "persons": [{"dob": "1979-03-02", "address": "12 Rua X, Lisboa, PT",
                         "home": {"street": "1 Main St", "country": "CO"}}]
        }),
    );
    let d = p.evaluate(&h, &maoc(), &f, &accra());
    assert_eq!(
        action(&d, "vessel.position.lat"),
        &generalised(json!(5.6), "round:0.1")
    );
    assert_eq!(
        action(&d, "vessel.position.lon"),
        &generalised(json!(-0.2), "round:0.1")
    );
    assert_eq!(
        action(&d, "persons[0].dob"),
        &generalised(json!("1979"), "year")
    );
    assert_eq!(
        action(&d, "vessel.imo"),
        &generalised(json!("938"), "prefix:3")
    );
    assert_eq!(
        action(&d, "persons[0].address"),
        &generalised(json!("PT"), "country-only")
    );
    assert_eq!(action(&d, "persons[0].home.country"), &FieldAction::Clear);
    assert_eq!(action(&d, "persons[0].home.street"), &FieldAction::Redact);
}

#[test]
fn standing_consent_matches_destination_and_conditions() {
    let p = policy(
        r#"
version = 1
[[standing_consent]]
id = "h2-vessels-to-ghana"
to = ["country:GH"]
when = { kinds = ["vessel_of_interest"], handling = ["H2"] }

[[standing_consent]]
id = "h2-to-europol"
to = ["org:europol"]
unless_to = ["role:*"]
"#,
    );
    assert_eq!(
        p.consent_ids().collect::<Vec<_>>(),
        ["h2-vessels-to-ghana", "h2-to-europol"]
    );
    let (h, _) = vessel("vessel_of_interest", "H2", design_body());
    assert_eq!(
        p.standing_consent(&h, &accra()),
        Some("h2-vessels-to-ghana")
    );
    assert_eq!(p.standing_consent(&h, &dakar()), None);
    assert_eq!(p.standing_consent(&h, &europol()), Some("h2-to-europol"));
    let europol_user = subscriber("europol", "NL", "europol", "analyst");
    assert_eq!(p.standing_consent(&h, &europol_user), None);
    let (h, _) = vessel("seizure", "H2", design_body());
    assert_eq!(p.standing_consent(&h, &accra()), None);
}

#[test]
fn identity_version_hash_and_ids() {
    let p = policy(WEST_AFRICA);
    assert_eq!(p.version(), 7);
    assert_eq!(
        p.rule_ids().collect::<Vec<_>>(),
        ["west-africa-vessels", "no-asset-traces-outside-eu"]
    );
    let hash = p.content_hash();
    assert!(
        hash.starts_with("sha256:") && hash.len() == 7 + 16,
        "{hash}"
    );
    assert_eq!(
        policy(WEST_AFRICA).content_hash(),
        hash,
        "same text, same hash"
    );
    let edited = WEST_AFRICA.replace("round:1", "round:0.5");
    assert_ne!(policy(&edited).content_hash(), hash);
    // the expected digest, computed independently
    use sha2::Digest;
    let full = hex::encode(sha2::Sha256::digest("version = 1\n".as_bytes()));
    assert_eq!(
        policy("version = 1\n").content_hash(),
        format!("sha256:{}", &full[..16])
    );
}

#[test]
fn descriptions_are_kept() {
    let p = policy(
        "version = 1\n[[rule]]\nid = \"r\"\ndescription = \"why we share\"\nto = [\"node:*\"]\n",
    );
    assert_eq!(p.rule_description("r"), Some("why we share"));
    assert_eq!(p.rule_description("x"), None);
}

#[test]
fn evaluation_is_deterministic() {
    let p = policy(WEST_AFRICA);
    let (h, f) = vessel("vessel_of_interest", "H1", design_body());
    let a = p.evaluate(&h, &maoc(), &f, &dakar());
    for _ in 0..10 {
        assert_eq!(p.evaluate(&h, &maoc(), &f, &dakar()), a);
    }
}

#[test]
fn load_reads_a_file_and_errors_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, WEST_AFRICA).unwrap();
    let p = Policy::load(&path).unwrap();
    assert_eq!(p.version(), 7);

    std::fs::write(&path, "version = 1\nrulez = []\n").unwrap();
    let e = Policy::load(&path).unwrap_err();
    assert_eq!(e.file.as_deref(), Some(path.as_path()));
    assert_eq!((e.line, e.column), (Some(2), Some(1)));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: line 2, column 1: ", path.display())),
        "{e}"
    );

    let missing = dir.path().join("nope.toml");
    let e = Policy::load(&missing).unwrap_err();
    assert!(
        e.to_string().contains("nope.toml") && e.to_string().contains("cannot read"),
        "{e}"
    );
    assert_eq!(e.line, None);
}

// ----- intersect -----

fn fd(path: &str, action: FieldAction, rule: &str) -> FieldDecision {
    FieldDecision {
        path: path.into(),
        action,
        rule: rule.into(),
        pattern: None,
        note: None,
    }
}

fn allow(rule: &str, fields: Vec<FieldDecision>) -> Decision {
    Decision::Allow {
        rule: rule.into(),
        fields,
    }
}

#[test]
fn intersect_any_deny_denies() {
    let a = allow("a", vec![fd("x", FieldAction::Clear, "a")]);
    let d = Decision::Deny {
        rule: Some("d".into()),
        reason: "no".into(),
    };
    assert_eq!(a.clone().intersect(d.clone()), d);
    assert_eq!(d.clone().intersect(a), d);
    let d2 = Decision::Deny {
        rule: None,
        reason: "default".into(),
    };
    let both = d.clone().intersect(d2.clone());
    assert_eq!(both, d2.intersect(d));
    assert_eq!(both.rule(), Some("d"));
}

#[test]
fn intersect_takes_the_most_restrictive_per_field() {
    let round = generalised(json!(6), "round:1");
    let b = allow(
        "to-b",
        vec![
            fd("a", FieldAction::Clear, "to-b"),
            fd("b", FieldAction::Clear, "to-b"),
            fd("c", round.clone(), "to-b"),
            fd("d", FieldAction::Redact, "to-b"),
        ],
    );
    let c = allow(
        "to-c",
        vec![
            fd("a", FieldAction::Clear, "to-c"),
            fd("b", round.clone(), "to-c"),
            fd("c", FieldAction::Redact, "to-c"),
            fd("d", FieldAction::Clear, "to-c"),
        ],
    );
    let i = b.clone().intersect(c.clone());
    assert_eq!(i, c.intersect(b), "commutative");
    assert_eq!(i.rule(), Some("to-b+to-c"));
    assert_eq!(action(&i, "a"), &FieldAction::Clear);
    assert_eq!(action(&i, "b"), &round);
    assert_eq!(action(&i, "c"), &FieldAction::Redact);
    assert_eq!(action(&i, "d"), &FieldAction::Redact);
    let a = i.fields().iter().find(|f| f.path == "a").unwrap();
    assert_eq!(a.rule, "to-b+to-c", "equal treatments name both rules");
    let c = i.fields().iter().find(|f| f.path == "c").unwrap();
    assert_eq!(c.rule, "to-c", "the stricter side names its rule");
}

#[test]
fn intersect_two_different_generalisations_redact() {
    let b = allow("b", vec![fd("lat", generalised(json!(6), "round:1"), "b")]);
    let c = allow(
        "c",
        vec![fd("lat", generalised(json!(5.6), "round:0.1"), "c")],
    );
    let i = b.clone().intersect(c.clone());
    assert_eq!(action(&i, "lat"), &FieldAction::Redact);
    assert_eq!(i, c.intersect(b));
    let same = allow("b", vec![fd("lat", generalised(json!(6), "round:1"), "b")]);
    let i = same.clone().intersect(same);
    assert_eq!(action(&i, "lat"), &generalised(json!(6), "round:1"));
    assert_eq!(i.rule(), Some("b"), "rule ids are a set");
}

#[test]
fn intersect_redacts_a_field_only_one_side_knows() {
    let b = allow(
        "b",
        vec![
            fd("x", FieldAction::Clear, "b"),
            fd("y", FieldAction::Clear, "b"),
        ],
    );
    let c = allow("c", vec![fd("x", FieldAction::Clear, "c")]);
    let i = b.clone().intersect(c.clone());
    assert_eq!(i, c.intersect(b));
    assert_eq!(action(&i, "x"), &FieldAction::Clear);
    assert_eq!(action(&i, "y"), &FieldAction::Redact);
}

#[test]
fn intersect_of_real_decisions_for_next_hop_and_final_destination() {
    let p = policy(
        r#"
version = 1
[[rule]]
id = "to-dakar"
to = ["node:dakar"]
allow = ["*"]
generalise = { "vessel.position" = "round:0.1" }
[[rule]]
id = "to-accra"
to = ["node:accra"]
allow = ["vessel", "narrative"]
redact = ["persons"]
"#,
    );
    let (h, f) = vessel("alert", "H0", design_body());
    let i = p
        .evaluate(&h, &maoc(), &f, &dakar())
        .intersect(p.evaluate(&h, &maoc(), &f, &accra()));
    assert_eq!(i.rule(), Some("to-accra+to-dakar"));
    assert_eq!(
        action(&i, "vessel.position.lat"),
        &generalised(json!(5.6), "round:0.1")
    );
    assert_eq!(action(&i, "persons[0].nationality"), &FieldAction::Redact);
    assert_eq!(action(&i, "narrative"), &FieldAction::Clear);
}

#[test]
fn decisions_serialise_for_the_ledger() {
    let d = allow("r", vec![fd("lat", generalised(json!(6), "round:1"), "r")]);
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(
        v,
        json!({"decision": "allow", "rule": "r", "fields": [
            {"path": "lat", "action": "generalise", "method": "round:1", "value": 6, "rule": "r", "pattern": null}
        ]})
    );
    let back: Decision = serde_json::from_value(v).unwrap();
    assert_eq!(back, d);
}

#[test]
fn policies_and_decisions_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone + std::fmt::Debug>() {}
    shareable::<Policy>();
    shareable::<Decision>();
    shareable::<Party>();
    shareable::<crate::PolicyError>();
}
