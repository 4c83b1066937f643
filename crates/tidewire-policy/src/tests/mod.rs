//! Unit tests of the language and its semantics, with shared fixtures.

mod errors;
mod examples;
mod explain;
mod semantics;

use serde_json::{Value, json};
use tidewire_core::envelope::{self, Header, VerifiedField};
use tidewire_core::keys::SigningKey;
use tidewire_core::{Notification, NotificationId};

use crate::{Decision, FieldAction, Party, Policy};

/// Seals a notification written as JSON at `maoc-n` and returns what a node holds of it.
pub(crate) fn sealed(json: Value) -> (Header, Vec<VerifiedField>) {
    let n = Notification::from_value(&json).expect("test notification is valid");
    let key = SigningKey::from_seed([7; 32]);
    let env = envelope::seal(
        &n,
        &"maoc-n".parse().unwrap(),
        &key,
        NotificationId([1; 16]),
        1,
        1_780_000_000_000,
    );
    let view = envelope::inspect(&env).expect("sealed envelope inspects");
    (view.header, view.fields)
}

/// The notification of DESIGN.md with a body to taste.
pub(crate) fn vessel(kind: &str, handling: &str, fields: Value) -> (Header, Vec<VerifiedField>) {
    sealed(json!({
        "kind": kind,
        "case_ref": "MAOC-2026-0142",
        "routes": ["atlantic.south-america.west-africa", "vessel.imo.9387421"],
        "handling": handling,
        "grading": { "source": "B", "information": "2" },
        "audience": ["node:accra", "country:SN"],
        "purposes": ["interdiction", "investigation"],
        "fields": fields,
    }))
}

/// The DESIGN.md body: vessel with position, one person, narrative.
pub(crate) fn design_body() -> Value {
    json!({
        "vessel": { "name": "MV Example", "imo": "9387421", "flag": "TG",
                    "position": { "lat": 5.61, "lon": -0.19 } },
        "persons": [ { "name": "J. Doe", "nationality": "CO", "dob": "1979-03-02", "role": "master" } ],
        "narrative": "Mother ship suspected of transhipment off the Bijagos."
    })
}

pub(crate) fn peer(node: &str, cc: &str, org: &str) -> Party {
    Party::peer(node.parse().unwrap(), cc.parse().unwrap(), org)
}

pub(crate) fn subscriber(node: &str, cc: &str, org: &str, role: &str) -> Party {
    Party::subscriber(node.parse().unwrap(), cc.parse().unwrap(), org, role)
}

pub(crate) fn maoc() -> Party {
    peer("maoc-n", "PT", "maoc-n")
}
pub(crate) fn dakar() -> Party {
    peer("dakar", "SN", "ocrtis")
}
pub(crate) fn accra() -> Party {
    peer("accra", "GH", "nacoc")
}
pub(crate) fn europol() -> Party {
    peer("europol", "NL", "europol")
}
pub(crate) fn jiatf() -> Party {
    peer("jiatf-s", "US", "jiatf-s")
}

pub(crate) fn policy(text: &str) -> Policy {
    Policy::parse(text).unwrap_or_else(|e| panic!("policy should parse: {e}\n{text}"))
}

/// The action for `path` in an allow decision (panics on deny or unknown path).
pub(crate) fn action<'a>(d: &'a Decision, path: &str) -> &'a FieldAction {
    match d {
        Decision::Allow { fields, .. } => {
            &fields
                .iter()
                .find(|f| f.path == path)
                .unwrap_or_else(|| panic!("no decision for {path}: {d:?}"))
                .action
        }
        Decision::Deny { .. } => panic!("expected allow, got {d:?}"),
    }
}

pub(crate) fn generalised(value: Value, method: &str) -> FieldAction {
    FieldAction::Generalise {
        method: method.into(),
        value,
    }
}
