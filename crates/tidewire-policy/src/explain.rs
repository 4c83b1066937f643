//! Explanations: what a destination would receive and why, field by field, for
//! `tidewire policy explain` and the Admin service.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;
use tidewire_core::envelope::{Header, VerifiedField};
use tidewire_core::fields::{FieldPath, unflatten};

use crate::decision::{Decision, FieldAction};

/// A decision made readable: the verdict, every field's treatment with the rule and pattern
/// behind it, and the exact body the destination would receive. Administrators use it to check
/// a policy before applying it and to answer "why did they get this?".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: String,
    /// The deciding rule (`None` for a default deny).
    pub rule: Option<String>,
    /// Why a deny denied (`None` for an allow).
    pub reason: Option<String>,
    /// The notification, in one line: id, kind, handling, origin, case reference.
    pub notification: String,
    /// One entry per field, in the order given (empty for a deny: nothing is sent).
    pub fields: Vec<FieldExplanation>,
    /// Exactly the body the destination would receive (withheld array slots show as `null`);
    /// `null` for a deny.
    pub view: Value,
}

/// How one field is treated, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldExplanation {
    /// The field path.
    pub path: String,
    /// `clear`, `redact` or `generalise:METHOD`.
    pub decision: String,
    /// The rule that decided it.
    pub rule: Option<String>,
    /// The pattern that selected it.
    pub pattern: Option<String>,
    /// Why, when it is not just what the pattern says.
    pub note: Option<String>,
}

/// Explains `decision` for the notification with `header` and `fields` (the same fields the
/// decision was made on). A field the decision does not mention is treated as redacted, so the
/// view never shows more than the node would send.
pub fn explain(decision: &Decision, header: &Header, fields: &[VerifiedField]) -> Explanation {
    let mut notification = format!(
        "{} {} {} from {}",
        header.id, header.kind, header.handling, header.origin
    );
    if !header.case_ref.is_empty() {
        let _ = write!(notification, ", case {}", header.case_ref);
    }
    match decision {
        Decision::Deny { rule, reason } => Explanation {
            decision: "deny".into(),
            rule: rule.clone(),
            reason: Some(reason.clone()),
            notification,
            fields: Vec::new(),
            view: Value::Null,
        },
        Decision::Allow { rule, fields: fds } => {
            let by_path: HashMap<&str, _> = fds.iter().map(|d| (d.path.as_str(), d)).collect();
            let mut out = Vec::with_capacity(fields.len());
            let mut sent: Vec<(FieldPath, Value)> = Vec::new();
            for f in fields {
                let Some(d) = by_path.get(f.path.as_str()) else {
                    out.push(FieldExplanation {
                        path: f.path.clone(),
                        decision: "redact".into(),
                        rule: None,
                        pattern: None,
                        note: Some("the decision does not cover this field: withheld".into()),
                    });
                    continue;
                };
                let value = match &d.action {
                    FieldAction::Clear => Some(f.value()),
                    FieldAction::Generalise { value, .. } => Some(value.clone()),
                    FieldAction::Redact => None,
                };
                if let (Some(v), Ok(p)) = (value, f.path.parse::<FieldPath>()) {
                    sent.push((p, v));
                }
                out.push(FieldExplanation {
                    path: f.path.clone(),
                    decision: d.action.label(),
                    rule: Some(d.rule.clone()),
                    pattern: d.pattern.clone(),
                    note: d.note.clone(),
                });
            }
            let view = unflatten(sent.iter().map(|(p, v)| (p, v.clone())))
                .unwrap_or_else(|_| Value::Object(Default::default()));
            Explanation {
                decision: "allow".into(),
                rule: Some(rule.clone()),
                reason: None,
                notification,
                fields: out,
                view,
            }
        }
    }
}

impl Explanation {
    /// The explanation as JSON (for `--json` and the Admin service).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A human-readable report: the verdict, a table of fields, and the body that would be sent.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let rule = self.rule.as_deref().unwrap_or("none (policy default)");
        let _ = writeln!(s, "notification: {}", self.notification);
        if self.decision == "deny" {
            let _ = writeln!(s, "decision:     DENY (rule {rule})");
            let _ = writeln!(s, "reason:       {}", self.reason.as_deref().unwrap_or(""));
            let _ = writeln!(s, "nothing is sent");
            return s;
        }
        let _ = writeln!(s, "decision:     ALLOW (rule {rule})");
        let _ = writeln!(s);
        let headers = ["FIELD", "DECISION", "RULE", "PATTERN", "NOTE"];
        let rows: Vec<[String; 5]> = self
            .fields
            .iter()
            .map(|f| {
                [
                    f.path.clone(),
                    f.decision.clone(),
                    f.rule.clone().unwrap_or_else(|| "-".into()),
                    f.pattern.clone().unwrap_or_else(|| "-".into()),
                    f.note.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let mut widths = headers.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut line = |cells: [&str; 5]| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    let _ = write!(l, "{cell:<w$}  ");
                }
            }
            let _ = writeln!(s, "{}", l.trim_end());
        };
        line(headers);
        for row in &rows {
            line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "sent:");
        let _ = writeln!(
            s,
            "{}",
            serde_json::to_string_pretty(&self.view).unwrap_or_default()
        );
        s
    }
}
