//! Every refusal of the parser, with its line and column.

use crate::{Policy, PolicyError};

/// A one-rule policy: `body` starts on line 5, column 1.
fn rule(body: &str) -> String {
    format!("version = 1\n[[rule]]\nid = \"a\"\nto = [\"node:*\"]\n{body}\n")
}

#[track_caller]
fn refused(text: &str, line: usize, column: usize, needles: &[&str]) -> PolicyError {
    let e = match Policy::parse(text) {
        Ok(_) => panic!("policy should be refused:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(
        (e.line, e.column),
        (Some(line), Some(column)),
        "position of: {e}\n{text}"
    );
    for n in needles {
        assert!(e.message.contains(n), "`{n}` not in: {e}");
    }
    assert_eq!(
        e.to_string(),
        format!("line {line}, column {column}: {}", e.message)
    );
    let first = e.message.chars().next().unwrap();
    assert!(!first.is_uppercase(), "messages are lowercase: {e}");
    assert!(!e.message.ends_with('.'), "no trailing period: {e}");
    e
}

#[test]
fn unknown_top_level_key_is_refused_with_the_known_ones() {
    refused(
        "version = 1\nrulez = []\n",
        2,
        1,
        &["unknown key `rulez`", "`rule`", "`standing_consent`"],
    );
}

#[test]
fn unknown_rule_key_is_refused() {
    refused(
        &rule("alow = [\"x\"]"),
        5,
        1,
        &["unknown key `alow`", "did you mean `allow`?"],
    );
    refused(
        &rule("generalize = {}"),
        5,
        1,
        &["unknown key `generalize`", "did you mean `generalise`?"],
    );
}

#[test]
fn unknown_when_key_is_refused() {
    refused(
        &rule("when = { kind = [\"alert\"] }"),
        5,
        10,
        &["unknown key `kind`", "did you mean `kinds`?"],
    );
}

#[test]
fn unknown_standing_consent_key_is_refused() {
    refused(
        "version = 1\n[[standing_consent]]\nid = \"c\"\nto = [\"node:*\"]\nallow = [\"*\"]\n",
        5,
        1,
        &["unknown key `allow`"],
    );
}

#[test]
fn missing_keys_are_named() {
    refused(
        "version = 1\n[[rule]]\nid = \"a\"\n",
        2,
        1,
        &["missing key `to`"],
    );
    refused(
        "version = 1\n[[rule]]\nto = [\"node:*\"]\n",
        2,
        1,
        &["missing key `id`"],
    );
    let e = Policy::parse("default = \"deny\"\n").unwrap_err();
    assert!(e.message.contains("missing key `version`"), "{e}");
}

#[test]
fn wrong_types_are_refused() {
    refused("version = \"7\"\n", 1, 11, &["invalid type", "integer"]);
    refused(
        &rule("when = { information = [1] }"),
        5,
        25,
        &["invalid type", "in quotes"],
    );
    refused(
        &rule("allow = \"vessel\""),
        5,
        9,
        &["invalid type", "list in brackets"],
    );
}

#[test]
fn toml_syntax_errors_carry_the_line() {
    let e = Policy::parse("version = 1\n[[rule]]\nid = \"a\nto = []\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.column.is_some());
}

#[test]
fn version_must_be_positive() {
    refused(
        "version = 0\n",
        1,
        11,
        &["`version` is 0", "positive integer"],
    );
}

#[test]
fn default_must_be_deny_or_allow() {
    refused(
        "version = 1\ndefault = \"permit\"\n",
        2,
        11,
        &["`default` is `permit`", "\"deny\" or \"allow\""],
    );
}

#[test]
fn action_must_be_allow_or_deny() {
    refused(
        &rule("action = \"drop\""),
        5,
        10,
        &["rule `a`", "`action` is `drop`", "\"allow\" or \"deny\""],
    );
}

#[test]
fn bad_selectors_are_refused_with_the_list() {
    refused(
        "version = 1\n[[rule]]\nid = \"a\"\nto = [\"node:*\", \"team:x\"]\n",
        4,
        17,
        &["rule `a`", "`to`", "`team:x`", "role:NAME", "country:CC"],
    );
    refused(
        &rule("unless_to = [\"country:sn\"]"),
        5,
        14,
        &["`unless_to`", "`SN`"],
    );
    refused(
        &rule("unless_to = [\"role:Duty Officer\"]"),
        5,
        14,
        &["role name"],
    );
}

#[test]
fn empty_to_is_refused() {
    refused(
        "version = 1\n[[rule]]\nid = \"a\"\nto = []\n",
        4,
        6,
        &["`to` is empty", "node:ID"],
    );
}

#[test]
fn when_origin_takes_no_roles() {
    refused(
        &rule("when = { origin = [\"role:analyst\"] }"),
        5,
        20,
        &["`when.origin`", "origin is a node"],
    );
}

#[test]
fn empty_when_lists_are_refused() {
    refused(
        &rule("when = { kinds = [] }"),
        5,
        18,
        &["`when.kinds` is empty", "remove the key"],
    );
}

#[test]
fn unknown_kind_is_refused_with_the_kinds() {
    refused(
        &rule("when = { kinds = [\"alert\", \"boat\"] }"),
        5,
        28,
        &["`when.kinds`", "unknown kind `boat`", "vessel_of_interest"],
    );
}

#[test]
fn bad_handling_grading_routes_and_purposes_are_refused() {
    refused(
        &rule("when = { handling = [\"H4\"] }"),
        5,
        22,
        &["`when.handling`", "H0, H1, H2 or H3"],
    );
    refused(
        &rule("when = { source = [\"D\"] }"),
        5,
        20,
        &["`when.source`", "A, B, C or X"],
    );
    refused(
        &rule("when = { information = [\"5\"] }"),
        5,
        25,
        &["`when.information`", "\"1\""],
    );
    refused(
        &rule("when = { routes = [\"atlantic.>.x\"] }"),
        5,
        20,
        &["`when.routes`", "last segment"],
    );
    refused(
        &rule("when = { purposes = [\"\"] }"),
        5,
        22,
        &["`when.purposes`", "1-64"],
    );
}

#[test]
fn bad_field_patterns_are_refused() {
    refused(
        &rule("allow = [\"vessel..name\"]"),
        5,
        10,
        &["`allow`", "not a field path"],
    );
    refused(
        &rule("redact = [\"persons[x]\"]"),
        5,
        11,
        &["`redact`", "index must be a number"],
    );
    refused(
        &rule("drop_if = [\"[0]\"]"),
        5,
        12,
        &["`drop_if`", "start with a field name"],
    );
    refused(
        &rule("generalise = { \"a..b\" = \"year\" }"),
        5,
        16,
        &["`generalise`", "not a field path"],
    );
}

#[test]
fn unknown_generaliser_is_refused_with_the_valid_ones() {
    let e = refused(
        &rule("generalise = { \"vessel.position\" = \"rnd:1\" }"),
        5,
        36,
        &[],
    );
    assert_eq!(
        e.to_string(),
        "line 5, column 36: rule `a`: unknown generaliser `rnd:1`; use round:N, year, prefix:N or country-only"
    );
}

#[test]
fn generaliser_arguments_are_checked() {
    refused(
        &rule("generalise = { \"vessel.position\" = \"round:0\" }"),
        5,
        36,
        &["positive", "round:0.1"],
    );
    refused(
        &rule("generalise = { \"vessel.imo\" = \"prefix:0\" }"),
        5,
        31,
        &["prefix:3"],
    );
    refused(
        &rule("generalise = { \"vessel.position\" = 1 }"),
        5,
        36,
        &["not integer", "round:N"],
    );
}

#[test]
fn unquoted_dotted_generalise_keys_get_a_hint() {
    refused(
        &rule("generalise = { vessel.position = \"round:1\" }"),
        5,
        16,
        &["`generalise.vessel` is a table", "quote dotted patterns"],
    );
}

#[test]
fn rule_ids_are_checked() {
    refused(
        "version = 1\n[[rule]]\nid = \"West Africa\"\nto = [\"node:*\"]\n",
        3,
        6,
        &["rule id `West Africa`", "lowercase"],
    );
    refused(
        "version = 1\n[[rule]]\nid = \"\"\nto = [\"node:*\"]\n",
        3,
        6,
        &["rule id ``"],
    );
    refused(
        "version = 1\n[[rule]]\nid = \"default\"\nto = [\"node:*\"]\n",
        3,
        6,
        &["reserved"],
    );
}

#[test]
fn duplicate_ids_are_refused_with_the_first_line() {
    let text = "version = 1\n[[rule]]\nid = \"a\"\nto = [\"node:*\"]\n[[rule]]\nid = \"a\"\nto = [\"node:*\"]\n";
    refused(text, 6, 6, &["duplicate id `a` (first used on line 3)"]);
    let text = "version = 1\n[[rule]]\nid = \"a\"\nto = [\"node:*\"]\n[[standing_consent]]\nid = \"a\"\nto = [\"node:*\"]\n";
    refused(
        text,
        6,
        6,
        &["duplicate id `a`", "rule and consent ids must be unique"],
    );
}

#[test]
fn deny_rules_take_no_field_lists() {
    refused(
        &rule("action = \"deny\"\nallow = [\"*\"]"),
        6,
        9,
        &["deny rule", "`allow`", "action = \"allow\""],
    );
    refused(
        &rule("action = \"deny\"\ngeneralise = { \"a\" = \"year\" }"),
        6,
        14,
        &["`generalise`"],
    );
    refused(
        &rule("action = \"deny\"\ndrop_if = [\"a\"]"),
        6,
        11,
        &["`drop_if`"],
    );
}

#[test]
fn a_pattern_listed_twice_is_refused() {
    refused(
        &rule("allow = [\"vessel\"]\nredact = [\"vessel\"]"),
        6,
        11,
        &["pattern `vessel` is in both `allow` and `redact`"],
    );
    refused(
        &rule("allow = [\"vessel\", \"vessel\"]"),
        5,
        20,
        &["listed twice in `allow`"],
    );
    refused(
        &rule("redact = [\"a\"]\ngeneralise = { \"a\" = \"year\" }"),
        6,
        16,
        &["in both `redact` and `generalise`"],
    );
}

#[test]
fn standing_consents_refuse_when_origin() {
    refused(
        "version = 1\n[[standing_consent]]\nid = \"c\"\nto = [\"country:GH\"]\nwhen = { origin = [\"node:dakar\"] }\n",
        5,
        19,
        &["standing consent `c`", "`when.origin`", "own notifications"],
    );
}

#[test]
fn standing_consent_selectors_and_conditions_are_checked() {
    refused(
        "version = 1\n[[standing_consent]]\nid = \"c\"\nto = []\n",
        4,
        6,
        &["standing consent `c`", "`to` is empty"],
    );
    refused(
        "version = 1\n[[standing_consent]]\nid = \"c\"\nto = [\"country:GH\"]\nwhen = { kinds = [\"boat\"] }\n",
        5,
        19,
        &["standing consent `c`", "unknown kind"],
    );
}

#[test]
fn a_single_rule_table_instead_of_an_array_is_refused() {
    let e = Policy::parse("version = 1\n[rule]\nid = \"a\"\nto = [\"node:*\"]\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("double brackets"), "{e}");
}
