//! Properties of evaluation over random notifications and random policies:
//! (a) a field the decision redacts never appears in the explanation's view;
//! (b) intersect is commutative and never less restrictive than either side;
//! (c) evaluation is deterministic;
//! (d) a deny rule that applies always yields a deny, whatever the rule order.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tidewire_core::envelope::{self, Header, VerifiedField};
use tidewire_core::fields::{FieldPath, Segment};
use tidewire_core::keys::SigningKey;
use tidewire_core::{Notification, NotificationId};
use tidewire_policy::{Decision, FieldAction, Party, Policy, explain};

// ----- random notifications -----

const KINDS: [&str; 8] = [
    "alert",
    "seizure",
    "vessel_of_interest",
    "interdiction_request",
    "interdiction_response",
    "asset_trace",
    "route_update",
    "request_for_information",
];
const ROUTES: [&str; 4] = [
    "atlantic.south-america.west-africa",
    "atlantic.west-africa.gh",
    "air.aircop.lfw",
    "vessel.imo.9387421",
];
const PURPOSES: [&str; 3] = ["interdiction", "investigation", "asset-recovery"];

#[derive(Debug, Clone)]
struct Person {
    name: bool,
    dob: Option<String>,
    nationality: bool,
    address: Option<u8>, // 0 = comma string, 1 = plain string, 2 = structured
    passport: bool,
}

#[derive(Debug, Clone)]
struct Body {
    vessel_name: bool,
    imo: bool,
    position: Option<(f64, f64)>,
    cargo_kg: Option<i64>,
    persons: Vec<Person>,
    narrative: bool,
}

fn person() -> impl Strategy<Value = Person> {
    (
        any::<bool>(),
        prop::option::of(prop_oneof![
            Just("1979-03-02".to_owned()),
            Just("02/03/1979".to_owned()),
            Just("1985".to_owned()),
        ]),
        any::<bool>(),
        prop::option::of(0u8..3),
        any::<bool>(),
    )
        .prop_map(|(name, dob, nationality, address, passport)| Person {
            name,
            dob,
            nationality,
            address,
            passport,
        })
}

fn body() -> impl Strategy<Value = Body> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::option::of((-90.0f64..90.0, -180.0f64..180.0)),
        prop::option::of(0i64..100_000),
        prop::collection::vec(person(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(vessel_name, imo, position, cargo_kg, persons, narrative)| Body {
                vessel_name,
                imo,
                position,
                cargo_kg,
                persons,
                narrative,
            },
        )
}

/// Renders a body with unique, fixed-width string tokens (`T000001`), so that a token found in
/// a view can only have come from its own field.
fn render(b: &Body) -> Value {
    let mut n = 0;
    let mut tok = || {
        n += 1;
        Value::String(format!("T{n:06}"))
    };
    let mut root = Map::new();
    let mut vessel = Map::new();
    if b.vessel_name {
        vessel.insert("name".into(), tok());
    }
    if b.imo {
        vessel.insert("imo".into(), tok());
    }
    if let Some((lat, lon)) = b.position {
        vessel.insert("position".into(), json!({"lat": lat, "lon": lon}));
    }
    if !vessel.is_empty() {
        root.insert("vessel".into(), Value::Object(vessel));
    }
    if let Some(kg) = b.cargo_kg {
        root.insert(
            "cargo".into(),
            json!({"estimated_kg": kg, "suspected": tok()}),
        );
    }
    let persons: Vec<Value> = b
        .persons
        .iter()
        .map(|p| {
            let mut m = Map::new();
            m.insert("role".into(), tok());
            if p.name {
                m.insert("name".into(), tok());
            }
            if let Some(d) = &p.dob {
                m.insert("dob".into(), Value::String(d.clone()));
            }
            if p.nationality {
                m.insert("nationality".into(), Value::String("CO".into()));
            }
            match p.address {
                Some(0) => {
                    m.insert(
                        "address".into(),
                        json!(format!("{}, Lisboa, PT", tok().as_str().unwrap())),
                    );
                }
                Some(1) => {
                    m.insert("address".into(), tok());
                }
                Some(_) => {
                    m.insert("address".into(), json!({"street": tok(), "country": "PT"}));
                }
                None => {}
            }
            if p.passport {
                m.insert("passport".into(), tok());
            }
            Value::Object(m)
        })
        .collect();
    if !persons.is_empty() {
        root.insert("persons".into(), Value::Array(persons));
    }
    if b.narrative {
        root.insert("narrative".into(), tok());
    }
    Value::Object(root)
}

#[derive(Debug, Clone)]
struct Note {
    kind: usize,
    handling: usize,
    source: usize,
    information: usize,
    routes: Vec<usize>,
    purposes: Vec<usize>,
    body: Body,
}

fn note() -> impl Strategy<Value = Note> {
    (
        0..KINDS.len(),
        0usize..4,
        0usize..4,
        0usize..4,
        prop::collection::btree_set(0..ROUTES.len(), 1..3),
        prop::collection::btree_set(0..PURPOSES.len(), 0..3),
        body(),
    )
        .prop_map(
            |(kind, handling, source, information, routes, purposes, body)| Note {
                kind,
                handling,
                source,
                information,
                routes: routes.into_iter().collect(),
                purposes: purposes.into_iter().collect(),
                body,
            },
        )
}

fn seal(n: &Note) -> (Header, Vec<VerifiedField>) {
    let handling = ["H0", "H1", "H2", "H3"][n.handling];
    let source = ["A", "B", "C", "X"][n.source];
    let information = ["1", "2", "3", "4"][n.information];
    let mut j = json!({
        "kind": KINDS[n.kind],
        "routes": n.routes.iter().map(|&i| ROUTES[i]).collect::<Vec<_>>(),
        "handling": handling,
        "grading": {"source": source, "information": information},
        "purposes": n.purposes.iter().map(|&i| PURPOSES[i]).collect::<Vec<_>>(),
        "response_deadline": "2030-01-01T00:00:00Z",
        "fields": render(&n.body),
    });
    if n.handling == 3 {
        j["handling_restriction"] = json!("no use in court");
    }
    let n = Notification::from_value(&j).expect("generated notification is valid");
    let key = SigningKey::from_seed([3; 32]);
    let env = envelope::seal(
        &n,
        &"maoc-n".parse().unwrap(),
        &key,
        NotificationId([9; 16]),
        1,
        0,
    );
    let view = envelope::inspect(&env).expect("inspects");
    (view.header, view.fields)
}

// ----- random policies -----

const SELECTORS: [&str; 10] = [
    "node:*",
    "node:accra",
    "node:dakar",
    "country:GH",
    "country:SN",
    "country:*",
    "org:europol",
    "role:*",
    "role:analyst",
    "country:PT",
];
const PATTERNS: [&str; 17] = [
    "*",
    "vessel",
    "vessel.*",
    "vessel.name",
    "vessel.position",
    "vessel.position.lat",
    "persons",
    "persons[*]",
    "persons[0]",
    "persons[*].name",
    "persons[*].dob",
    "persons[*].address",
    "persons[*].nationality",
    "*.name",
    "cargo",
    "narrative",
    "persons[*].passport",
];
const GENERALISERS: [&str; 6] = [
    "round:1",
    "round:0.1",
    "year",
    "prefix:3",
    "country-only",
    "prefix:1",
];

#[derive(Debug, Clone)]
struct RuleSpec {
    to: Vec<usize>,
    unless_to: Vec<usize>,
    kinds: Option<Vec<usize>>,
    handling: Option<Vec<usize>>,
    deny: bool,
    allow: Vec<usize>,
    redact: Vec<usize>,
    generalise: Vec<(usize, usize)>,
    drop_if: Vec<usize>,
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    (
        prop::collection::vec(0..SELECTORS.len(), 1..3),
        prop::collection::vec(0..SELECTORS.len(), 0..2),
        prop::option::of(prop::collection::vec(0..KINDS.len(), 1..4)),
        prop::option::of(prop::collection::vec(0usize..4, 1..3)),
        prop::bool::weighted(0.2),
        prop::collection::vec(0..PATTERNS.len(), 0..5),
        prop::collection::vec(0..PATTERNS.len(), 0..3),
        prop::collection::vec((0..PATTERNS.len(), 0..GENERALISERS.len()), 0..3),
        prop::collection::vec(0..PATTERNS.len(), 0..2),
    )
        .prop_map(
            |(to, unless_to, kinds, handling, deny, allow, redact, generalise, drop_if)| RuleSpec {
                to,
                unless_to,
                kinds,
                handling,
                deny,
                allow,
                redact,
                generalise,
                // drop_if rarely: otherwise most allows become denies
                drop_if: drop_if.into_iter().filter(|&p| p >= 16).collect(),
            },
        )
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", v.join(", "))
}

fn render_rule(id: &str, r: &RuleSpec) -> String {
    let mut s = format!(
        "[[rule]]\nid = \"{id}\"\nto = {}\n",
        list(r.to.iter().map(|&i| SELECTORS[i].to_owned()))
    );
    if !r.unless_to.is_empty() {
        s += &format!(
            "unless_to = {}\n",
            list(r.unless_to.iter().map(|&i| SELECTORS[i].to_owned()))
        );
    }
    let mut when = Vec::new();
    if let Some(k) = &r.kinds {
        when.push(format!(
            "kinds = {}",
            list(k.iter().map(|&i| KINDS[i].to_owned()))
        ));
    }
    if let Some(h) = &r.handling {
        when.push(format!(
            "handling = {}",
            list(h.iter().map(|&i| format!("H{i}")))
        ));
    }
    if !when.is_empty() {
        s += &format!("when = {{ {} }}\n", when.join(", "));
    }
    if r.deny {
        s += "action = \"deny\"\n";
        return s;
    }
    let mut used = std::collections::HashSet::new();
    let allow: Vec<String> = r
        .allow
        .iter()
        .filter(|&&p| used.insert(p))
        .map(|&p| PATTERNS[p].to_owned())
        .collect();
    let redact: Vec<String> = r
        .redact
        .iter()
        .filter(|&&p| used.insert(p))
        .map(|&p| PATTERNS[p].to_owned())
        .collect();
    let generalise: Vec<String> = r
        .generalise
        .iter()
        .filter(|(p, _)| used.insert(*p))
        .map(|&(p, g)| format!("{:?} = {:?}", PATTERNS[p], GENERALISERS[g]))
        .collect();
    s += &format!("allow = {}\nredact = {}\n", list(allow), list(redact));
    if !generalise.is_empty() {
        s += &format!("generalise = {{ {} }}\n", generalise.join(", "));
    }
    if !r.drop_if.is_empty() {
        s += &format!(
            "drop_if = {}\n",
            list(r.drop_if.iter().map(|&i| PATTERNS[i].to_owned()))
        );
    }
    s
}

fn render_policy(default_allow: bool, rules: &[(String, RuleSpec)]) -> String {
    let mut s = format!(
        "version = 1\ndefault = \"{}\"\n",
        if default_allow { "allow" } else { "deny" }
    );
    for (id, r) in rules {
        s += "\n";
        s += &render_rule(id, r);
    }
    s
}

fn named(rules: Vec<RuleSpec>) -> Vec<(String, RuleSpec)> {
    rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("r{i}"), r))
        .collect()
}

fn policy_text() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(rule_spec(), 0..8))
        .prop_map(|(default_allow, rules)| render_policy(default_allow, &named(rules)))
}

fn parties() -> Vec<Party> {
    let p = |n: &str, c: &str, o: &str, r: Option<&str>| Party {
        node: n.parse().unwrap(),
        country: c.parse().unwrap(),
        org: o.into(),
        role: r.map(str::to_owned),
    };
    vec![
        p("accra", "GH", "nacoc", None),
        p("dakar", "SN", "ocrtis", None),
        p("europol", "NL", "europol", None),
        p("jiatf-s", "US", "jiatf-s", None),
        p("maoc-n", "PT", "maoc-n", Some("analyst")),
        p("accra", "GH", "nacoc", Some("navy")),
    ]
}

fn party() -> impl Strategy<Value = Party> {
    prop::sample::select(parties())
}

/// Every notification is written at MAOC-N.
fn origin() -> Party {
    Party::peer("maoc-n".parse().unwrap(), "PT".parse().unwrap(), "maoc-n")
}

fn pointer(path: &str) -> String {
    let p: FieldPath = path.parse().unwrap();
    p.0.iter()
        .map(|s| match s {
            Segment::Key(k) => format!("/{k}"),
            Segment::Index(i) => format!("/{i}"),
        })
        .collect()
}

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cfg())]

    /// (a) What the decision redacts is absent from the view; what it clears or generalises is
    /// there with the value the decision says.
    #[test]
    fn redacted_fields_never_appear_in_the_view(text in policy_text(), n in note(), dest in party()) {
        let policy = Policy::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let (h, fields) = seal(&n);
        let d = policy.evaluate(&h, &origin(), &fields, &dest);
        let e = explain(&d, &h, &fields);
        let rendered = serde_json::to_string(&e.view).unwrap();
        match &d {
            Decision::Deny { .. } => prop_assert_eq!(&e.view, &Value::Null),
            Decision::Allow { fields: fds, .. } => {
                prop_assert_eq!(fds.len(), fields.len());
                for (fd, f) in fds.iter().zip(&fields) {
                    let at = e.view.pointer(&pointer(&fd.path));
                    match &fd.action {
                        FieldAction::Redact => {
                            prop_assert!(at.is_none() || at == Some(&Value::Null), "{} leaked: {}", fd.path, rendered);
                            if let Some(s) = f.value().as_str().map(str::to_owned).filter(|s| s.starts_with('T')) {
                                prop_assert!(!rendered.contains(&format!("\"{s}\"")), "{} leaked: {}", fd.path, rendered);
                            }
                        }
                        FieldAction::Clear => prop_assert_eq!(at, Some(&f.value())),
                        FieldAction::Generalise { value, .. } => prop_assert_eq!(at, Some(value)),
                    }
                }
            }
        }
    }

    /// (b) Intersection is commutative and never less restrictive than either side.
    #[test]
    fn intersect_is_commutative_and_narrows(text in policy_text(), n in note(), b in party(), c in party()) {
        let policy = Policy::parse(&text).unwrap();
        let (h, fields) = seal(&n);
        let db = policy.evaluate(&h, &origin(), &fields, &b);
        let dc = policy.evaluate(&h, &origin(), &fields, &c);
        let i = db.clone().intersect(dc.clone());
        prop_assert_eq!(&i, &dc.clone().intersect(db.clone()));
        if !db.is_allow() || !dc.is_allow() {
            prop_assert!(!i.is_allow());
            return Ok(());
        }
        prop_assert!(i.is_allow());
        for ((fi, fb), fc) in i.fields().iter().zip(db.fields()).zip(dc.fields()) {
            prop_assert_eq!(&fi.path, &fb.path);
            prop_assert!(fi.action.rank() >= fb.action.rank() && fi.action.rank() >= fc.action.rank(),
                "{:?} is less restrictive than {:?} or {:?}", fi, fb, fc);
            match &fi.action {
                FieldAction::Clear => {
                    prop_assert_eq!(&fb.action, &FieldAction::Clear);
                    prop_assert_eq!(&fc.action, &FieldAction::Clear);
                }
                FieldAction::Generalise { .. } => {
                    for side in [&fb.action, &fc.action] {
                        prop_assert!(side == &FieldAction::Clear || side == &fi.action);
                    }
                }
                FieldAction::Redact => {}
            }
        }
        // intersecting with itself changes nothing but nothing
        let same = db.clone().intersect(db.clone());
        prop_assert_eq!(same.fields(), db.fields());
    }

    /// (c) The same policy text, notification and destination always give the same decision.
    #[test]
    fn evaluation_is_deterministic(text in policy_text(), n in note(), dest in party()) {
        let p1 = Policy::parse(&text).unwrap();
        let p2 = Policy::parse(&text).unwrap();
        prop_assert_eq!(p1.content_hash(), p2.content_hash());
        let (h, fields) = seal(&n);
        let d = p1.evaluate(&h, &origin(), &fields, &dest);
        prop_assert_eq!(&d, &p1.evaluate(&h, &origin(), &fields, &dest));
        prop_assert_eq!(&d, &p2.evaluate(&h, &origin(), &fields, &dest));
        prop_assert_eq!(&d, &p1.clone().evaluate(&h, &origin(), &fields, &dest));
    }

    /// (d) Whatever the other rules and their order, an applicable deny rule denies.
    #[test]
    fn an_applicable_deny_rule_always_denies(
        rules in prop::collection::vec(rule_spec(), 0..8).prop_shuffle(),
        at in any::<prop::sample::Index>(),
        n in note(),
        dest in party(),
        by_kind in any::<bool>(),
        default_allow in any::<bool>(),
    ) {
        let (h, fields) = seal(&n);
        // a deny rule that applies to this destination and this notification
        let deny = RuleSpec {
            to: vec![if dest.role.is_some() { 7 } else { 0 }], // role:* or node:*
            unless_to: vec![],
            kinds: by_kind.then(|| vec![n.kind]),
            handling: Some(vec![n.handling]),
            deny: true,
            allow: vec![], redact: vec![], generalise: vec![], drop_if: vec![],
        };
        let mut all = named(rules);
        let pos = at.index(all.len() + 1);
        all.insert(pos, ("the-deny".into(), deny));
        let text = render_policy(default_allow, &all);
        let policy = Policy::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let d = policy.evaluate(&h, &origin(), &fields, &dest);
        prop_assert!(!d.is_allow(), "{:?}\n{}", d, text);
        prop_assert!(d.rule().is_some(), "a rule, not the default, denied: {:?}", d);
        // and reversing the whole file does not change that
        all.reverse();
        let policy = Policy::parse(&render_policy(default_allow, &all)).unwrap();
        prop_assert!(!policy.evaluate(&h, &origin(), &fields, &dest).is_allow());
    }
}
