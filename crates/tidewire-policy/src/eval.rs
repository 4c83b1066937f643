//! Evaluation: deciding, for one notification and one destination, whether it goes and with
//! which fields in clear, generalised or redacted.

use tidewire_core::envelope::{Header, VerifiedField};
use tidewire_core::fields::FieldPath;

use crate::decision::{Decision, FieldAction, FieldDecision};
use crate::generalise::Outcome;
use crate::party::Party;
use crate::policy::{Action, FieldRule, Policy, Rule, Treatment};

impl Policy {
    /// Decides what `dest` may receive of a notification (its verified `header` and the
    /// `fields` this node holds in clear) that `origin` wrote.
    ///
    /// Deny overrides: the first applicable rule (file order) that denies, or whose `drop_if`
    /// matches a present field, makes the decision a deny. Otherwise the first applicable allow
    /// rule decides every field; with none, the policy default does. Pure and deterministic:
    /// the same inputs always give the same decision.
    pub fn evaluate(
        &self,
        header: &Header,
        origin: &Party,
        fields: &[VerifiedField],
        dest: &Party,
    ) -> Decision {
        let mut decider: Option<&Rule> = None;
        for rule in &self.rules {
            if !rule.applies(header, origin, dest) {
                continue;
            }
            match rule.action {
                Action::Deny => {
                    return Decision::Deny {
                        rule: Some(rule.id.clone()),
                        reason: format!(
                            "rule `{}` denies {} notifications to {dest}",
                            rule.id, header.kind
                        ),
                    };
                }
                Action::Allow => {
                    if !rule.drop_if.is_empty() {
                        let hit = fields.iter().find_map(|f| {
                            rule.drop_if
                                .iter()
                                .find(|d| d.matches_str(&f.path))
                                .map(|d| (f, d))
                        });
                        if let Some((f, d)) = hit {
                            return Decision::Deny {
                                rule: Some(rule.id.clone()),
                                reason: format!(
                                    "rule `{}`: field `{}` matches drop_if `{d}`, so nothing goes to {dest}",
                                    rule.id, f.path
                                ),
                            };
                        }
                    }
                    decider.get_or_insert(rule);
                }
            }
        }
        match decider {
            Some(rule) => Decision::Allow {
                rule: rule.id.clone(),
                fields: fields.iter().map(|f| decide_field(rule, f)).collect(),
            },
            None if self.default_allow => Decision::Allow {
                rule: "default".into(),
                fields: fields
                    .iter()
                    .map(|f| FieldDecision {
                        path: f.path.clone(),
                        action: FieldAction::Clear,
                        rule: "default".into(),
                        pattern: None,
                        note: Some("no rule applies; the policy default is allow".into()),
                    })
                    .collect(),
            },
            None => Decision::Deny {
                rule: None,
                reason: format!(
                    "no rule allows {} notifications to {dest}, and the policy default is deny",
                    header.kind
                ),
            },
        }
    }
}

/// The deciding rule's treatment of one field: the most specific matching pattern, ties to the
/// most restrictive; no match means redact.
fn decide_field(rule: &Rule, field: &VerifiedField) -> FieldDecision {
    let steps = tidewire_core::fields::PathSteps::new(&field.path);
    let decision = |action, pattern: Option<&FieldRule>, note: Option<String>| FieldDecision {
        path: field.path.clone(),
        action,
        rule: rule.id.clone(),
        pattern: pattern.map(|p| p.pattern.as_str().to_owned()),
        note,
    };

    let mut best: Option<&FieldRule> = None;
    let mut conflict: Option<&FieldRule> = None;
    for fr in rule
        .fields
        .iter()
        .filter(|fr| fr.pattern.matches_steps(&steps))
    {
        let Some(b) = best else {
            best = Some(fr);
            continue;
        };
        let key = (fr.specificity, fr.treatment.rank());
        let best_key = (b.specificity, b.treatment.rank());
        if key > best_key {
            best = Some(fr);
            conflict = None;
        } else if key == best_key && fr.treatment != b.treatment && conflict.is_none() {
            // Only two different generalisers can tie at the same rank.
            conflict = Some(fr);
        }
    }
    let Some(best) = best else {
        return decision(
            FieldAction::Redact,
            None,
            Some(format!(
                "no pattern of rule `{}` selects this field: withheld by default",
                rule.id
            )),
        );
    };
    if let Some(other) = conflict {
        return decision(
            FieldAction::Redact,
            Some(best),
            Some(format!(
                "patterns `{}` and `{}` generalise it differently: redacted",
                best.pattern, other.pattern
            )),
        );
    }
    match &best.treatment {
        Treatment::Clear => decision(FieldAction::Clear, Some(best), None),
        Treatment::Redact => decision(FieldAction::Redact, Some(best), None),
        Treatment::Generalise(g) => match field
            .path
            .parse::<FieldPath>()
            .map(|path| g.apply(&path, best.depth, &field.value()))
            .unwrap_or(Outcome::Refuse("not a valid field path".into()))
        {
            Outcome::Value(value) => decision(
                FieldAction::Generalise {
                    method: g.as_str().to_owned(),
                    value,
                },
                Some(best),
                None,
            ),
            Outcome::Keep => decision(
                FieldAction::Clear,
                Some(best),
                Some(format!("`{}` keeps this leaf as it is", g.as_str())),
            ),
            Outcome::Refuse(why) => decision(
                FieldAction::Redact,
                Some(best),
                Some(format!("{why}: redacted")),
            ),
        },
    }
}
