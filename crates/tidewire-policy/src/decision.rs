//! What a policy decided for one destination, and how two decisions combine.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The outcome of [`crate::Policy::evaluate`] for one destination. It is what the node applies
/// at its single egress point and what the ledger records, so it names the deciding rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Nothing goes to this destination.
    Deny {
        /// The rule that denied it; `None` when no rule allowed it and the default is deny.
        rule: Option<String>,
        /// Why, in words an administrator can act on.
        reason: String,
    },
    /// The notification goes, with one treatment per field.
    Allow {
        /// The deciding rule (`default` under `default = "allow"`; `a+b` for an intersection).
        rule: String,
        /// One entry per field, in the order the fields were given.
        fields: Vec<FieldDecision>,
    },
}

/// What happens to one field, and which rule and pattern said so (the ledger and `explain`
/// must be able to answer "why was this disclosed?" for every field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDecision {
    /// The field path, e.g. `persons[0].dob`.
    pub path: String,
    /// Clear, redact or generalise.
    #[serde(flatten)]
    pub action: FieldAction,
    /// The rule that decided it.
    pub rule: String,
    /// The pattern that selected it; `None` when no pattern did (default deny per field) or
    /// under `default = "allow"`.
    pub pattern: Option<String>,
    /// Why, when the action is not simply what the pattern says: no pattern matched, a
    /// generaliser did not apply, patterns conflicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The treatment of one field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FieldAction {
    /// Sent as received (it still verifies against the origin's digest).
    Clear,
    /// Withheld; the receiver sees only that a field with this digest exists.
    Redact,
    /// Replaced by `value`, which the node signs as a transformation.
    Generalise {
        /// The generaliser as written in the policy, e.g. `round:1`.
        method: String,
        /// The value sent instead of the original.
        value: Value,
    },
}

impl FieldAction {
    /// `clear`, `redact` or `generalise:METHOD`, as shown in explanations.
    pub fn label(&self) -> String {
        match self {
            FieldAction::Clear => "clear".into(),
            FieldAction::Redact => "redact".into(),
            FieldAction::Generalise { method, .. } => format!("generalise:{method}"),
        }
    }

    /// Restrictiveness: redact (2) > generalise (1) > clear (0).
    pub fn rank(&self) -> u8 {
        match self {
            FieldAction::Clear => 0,
            FieldAction::Generalise { .. } => 1,
            FieldAction::Redact => 2,
        }
    }
}

impl Decision {
    /// Whether anything is sent.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The deciding rule id, if any (the ledger records it).
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Deny { rule, .. } => rule.as_deref(),
            Decision::Allow { rule, .. } => Some(rule),
        }
    }

    /// The per-field decisions (empty for a deny).
    pub fn fields(&self) -> &[FieldDecision] {
        match self {
            Decision::Deny { .. } => &[],
            Decision::Allow { fields, .. } => fields,
        }
    }

    /// The decision for a copy that several destinations will see (next hop B and final
    /// destination C), so that a relay never sends B what C may not have (relays narrow, never
    /// widen). Any deny gives a deny; per field the most restrictive treatment wins (redact >
    /// generalise > clear, two different generalisations give redact, a field only one side
    /// knows is redacted); rule ids are joined with `+`, sorted, so the result does not depend
    /// on the order of the operands.
    pub fn intersect(self, other: Decision) -> Decision {
        match (self, other) {
            (
                Decision::Deny {
                    rule: r1,
                    reason: s1,
                },
                Decision::Deny {
                    rule: r2,
                    reason: s2,
                },
            ) => Decision::Deny {
                rule: join(r1.as_deref(), r2.as_deref()),
                reason: join_text(Some(s1), Some(s2)).unwrap_or_default(),
            },
            (deny @ Decision::Deny { .. }, Decision::Allow { .. })
            | (Decision::Allow { .. }, deny @ Decision::Deny { .. }) => deny,
            (
                Decision::Allow {
                    rule: r1,
                    fields: f1,
                },
                Decision::Allow {
                    rule: r2,
                    fields: f2,
                },
            ) => Decision::Allow {
                rule: join(Some(&r1), Some(&r2)).unwrap_or_default(),
                fields: intersect_fields(f1, f2),
            },
        }
    }
}

/// Joins labels (rule ids, patterns) that may themselves be joins, as a sorted `+` set.
fn join(a: Option<&str>, b: Option<&str>) -> Option<String> {
    let set: BTreeSet<&str> = a.into_iter().chain(b).flat_map(|s| s.split('+')).collect();
    (!set.is_empty()).then(|| set.into_iter().collect::<Vec<_>>().join("+"))
}

/// Joins two free texts (reasons, notes) in sorted order, once if equal.
fn join_text(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) if a == b => Some(a),
        (Some(a), Some(b)) if a < b => Some(format!("{a}; {b}")),
        (Some(a), Some(b)) => Some(format!("{b}; {a}")),
        (a, b) => a.or(b),
    }
}

fn intersect_fields(f1: Vec<FieldDecision>, f2: Vec<FieldDecision>) -> Vec<FieldDecision> {
    let same_order = f1.len() == f2.len() && f1.iter().zip(&f2).all(|(a, b)| a.path == b.path);
    if same_order {
        return f1.into_iter().zip(f2).map(|(a, b)| meet(a, b)).collect();
    }
    // Different field sets (not produced by one evaluation): fail closed and sort by path so
    // that the result is the same whichever side came first.
    let mut by_path: HashMap<String, (Option<FieldDecision>, Option<FieldDecision>)> =
        HashMap::new();
    for f in f1 {
        let key = f.path.clone();
        by_path.entry(key).or_default().0 = Some(f);
    }
    for f in f2 {
        let key = f.path.clone();
        by_path.entry(key).or_default().1 = Some(f);
    }
    let mut out: Vec<FieldDecision> = by_path
        .into_values()
        .map(|pair| match pair {
            (Some(a), Some(b)) => meet(a, b),
            (Some(one), None) | (None, Some(one)) => FieldDecision {
                action: FieldAction::Redact,
                note: Some("only one of the intersected decisions covers this field".into()),
                ..one
            },
            (None, None) => unreachable!("every entry has at least one side"),
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The more restrictive of two decisions for the same field.
fn meet(a: FieldDecision, b: FieldDecision) -> FieldDecision {
    use std::cmp::Ordering;
    match a.action.rank().cmp(&b.action.rank()) {
        Ordering::Greater => a,
        Ordering::Less => b,
        Ordering::Equal => {
            let conflict = matches!(
                (&a.action, &b.action),
                (FieldAction::Generalise { method: m1, value: v1 },
                 FieldAction::Generalise { method: m2, value: v2 }) if m1 != m2 || v1 != v2
            );
            let note = if conflict {
                let (l1, l2) = (a.action.label(), b.action.label());
                let (first, second) = if l1 <= l2 { (l1, l2) } else { (l2, l1) };
                Some(format!(
                    "two different generalisations ({first} and {second}): redacted"
                ))
            } else {
                join_text(a.note.clone(), b.note.clone())
            };
            FieldDecision {
                path: a.path,
                action: if conflict {
                    FieldAction::Redact
                } else {
                    a.action
                },
                rule: join(Some(&a.rule), Some(&b.rule)).unwrap_or_default(),
                pattern: join(a.pattern.as_deref(), b.pattern.as_deref()),
                note,
            }
        }
    }
}
