//! The notification a centre writes (the JSON of DESIGN.md), parsed and validated.

use serde_json::{Map, Value, json};

use crate::error::CoreError;
use crate::fields::{self, Leaf};
use crate::model::{AudienceEntry, Grading, Handling, Kind, NotificationId, Route};
use crate::timefmt;

/// The largest notification JSON accepted, in bytes.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// A validated notification before sealing: what the origin will sign.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// What it is.
    pub kind: Kind,
    /// The provider's case reference.
    pub case_ref: String,
    /// Topics it is filed under.
    pub routes: Vec<Route>,
    /// Handling code.
    pub handling: Handling,
    /// 4x4 grading.
    pub grading: Grading,
    /// Who may receive it.
    pub audience: Vec<AudienceEntry>,
    /// Whether the audience may pass it on (subject to their own policy).
    pub onward_transfer: bool,
    /// Purposes the provider allows.
    pub purposes: Vec<String>,
    /// Expiry (Unix ms), if any.
    pub expires_at_ms: Option<i64>,
    /// Response deadline of an interdiction request (Unix ms).
    pub response_deadline_ms: Option<i64>,
    /// The notification a recall withdraws.
    pub recalls: Option<NotificationId>,
    /// The body, flattened to scalar leaves.
    pub fields: Vec<Leaf>,
}

const KEYS: [&str; 13] = [
    "kind",
    "case_ref",
    "routes",
    "handling",
    "handling_restriction",
    "grading",
    "audience",
    "onward_transfer",
    "purposes",
    "expires_at",
    "response_deadline",
    "recalls",
    "fields",
];

fn bad(path: &str, why: impl std::fmt::Display) -> CoreError {
    CoreError::Notification {
        path: path.to_owned(),
        reason: why.to_string(),
    }
}

fn string_at<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CoreError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(key, "expected a string")),
    }
}

fn strings_at(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, CoreError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(&format!("{key}[{i}]"), "expected a string"))
            })
            .collect(),
        Some(_) => Err(bad(key, "expected an array of strings")),
    }
}

impl Notification {
    /// Parses notification JSON text; errors name the offending path (or line and column for
    /// JSON syntax).
    pub fn from_json(text: &[u8]) -> Result<Notification, CoreError> {
        if text.len() > MAX_JSON_BYTES {
            return Err(bad(
                "",
                format!(
                    "it is {} bytes, over the limit of {MAX_JSON_BYTES}; send less in one notification",
                    text.len()
                ),
            ));
        }
        let value: Value = serde_json::from_slice(text).map_err(|e| CoreError::Json {
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })?;
        Self::from_value(&value)
    }

    /// Validates an already-parsed JSON value.
    pub fn from_value(value: &Value) -> Result<Notification, CoreError> {
        let obj = value
            .as_object()
            .ok_or_else(|| bad("", "a notification is a JSON object"))?;
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(
                k,
                format!("unknown key; known keys are {}", KEYS.join(", ")),
            ));
        }
        let kind: Kind = string_at(obj, "kind")?
            .ok_or_else(|| bad("kind", "missing; e.g. \"vessel_of_interest\""))?
            .parse()
            .map_err(|e| bad("kind", e))?;
        let case_ref = string_at(obj, "case_ref")?.unwrap_or_default().to_owned();
        if case_ref.len() > 128 {
            return Err(bad("case_ref", "longer than 128 characters"));
        }
        let routes = strings_at(obj, "routes")?
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.parse::<Route>()
                    .map_err(|e| bad(&format!("routes[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if routes.is_empty() {
            return Err(bad(
                "routes",
                "give at least one route, e.g. \"atlantic.west-africa\"",
            ));
        }
        if routes.len() > 32 {
            return Err(bad("routes", "at most 32 routes"));
        }
        let handling_code = string_at(obj, "handling")?
            .ok_or_else(|| bad("handling", "missing; use H0, H1, H2 or H3"))?;
        let handling = Handling::parse(handling_code, string_at(obj, "handling_restriction")?)
            .map_err(|e| bad("handling", e))?;
        let grading = match obj.get("grading") {
            None | Some(Value::Null) => Grading::unknown(),
            Some(Value::Object(g)) => {
                if let Some(k) = g.keys().find(|k| *k != "source" && *k != "information") {
                    return Err(bad(
                        &format!("grading.{k}"),
                        "unknown key; use source and information",
                    ));
                }
                let s = string_at(g, "source")?.unwrap_or("X");
                let i = match g.get("information") {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => s.clone(),
                    None | Some(Value::Null) => "4".to_owned(),
                    Some(_) => return Err(bad("grading.information", "expected \"1\"..\"4\"")),
                };
                Grading::new(s, &i).map_err(|e| bad("grading", e))?
            }
            Some(_) => {
                return Err(bad(
                    "grading",
                    "expected {\"source\": \"B\", \"information\": \"2\"}",
                ));
            }
        };
        let audience = strings_at(obj, "audience")?
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<AudienceEntry>()
                    .map_err(|e| bad(&format!("audience[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let onward_transfer = match obj.get("onward_transfer") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("onward_transfer", "expected true or false")),
        };
        let purposes = strings_at(obj, "purposes")?;
        for (i, p) in purposes.iter().enumerate() {
            if p.is_empty() || p.len() > 64 {
                return Err(bad(
                    &format!("purposes[{i}]"),
                    "a purpose is 1-64 characters",
                ));
            }
        }
        let time_at = |key: &str| -> Result<Option<i64>, CoreError> {
            string_at(obj, key)?
                .map(|t| timefmt::parse_rfc3339_ms(t).map_err(|e| bad(key, e)))
                .transpose()
        };
        let expires_at_ms = time_at("expires_at")?;
        let response_deadline_ms = time_at("response_deadline")?;
        if kind == Kind::InterdictionRequest && response_deadline_ms.is_none() {
            return Err(bad(
                "response_deadline",
                "an interdiction_request needs a response deadline (RFC 3339 time)",
            ));
        }
        let recalls = string_at(obj, "recalls")?
            .map(|t| t.parse::<NotificationId>().map_err(|e| bad("recalls", e)))
            .transpose()?;
        if kind == Kind::Recall && recalls.is_none() {
            return Err(bad(
                "recalls",
                "a recall names the id of the notification it withdraws",
            ));
        }
        let fields = match obj.get("fields") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(f)) => fields::flatten(f).map_err(|e| bad("fields", e))?,
            Some(_) => return Err(bad("fields", "expected an object of fields")),
        };
        Ok(Notification {
            kind,
            case_ref,
            routes,
            handling,
            grading,
            audience,
            onward_transfer,
            purposes,
            expires_at_ms,
            response_deadline_ms,
            recalls,
            fields,
        })
    }

    /// The notification as JSON in the DESIGN.md shape.
    pub fn to_json(&self) -> Value {
        let body = fields::unflatten(self.fields.iter().map(|l| {
            (
                &l.path,
                serde_json::from_slice(&l.value).unwrap_or(Value::Null),
            )
        }))
        .unwrap_or(Value::Null);
        let mut out = json!({
            "kind": self.kind.as_str(),
            "case_ref": self.case_ref,
            "routes": self.routes.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "handling": self.handling.code(),
            "grading": {"source": self.grading.source.to_string(), "information": self.grading.information.to_string()},
            "audience": self.audience.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "onward_transfer": self.onward_transfer,
            "purposes": self.purposes,
            "fields": body,
        });
        let o = out.as_object_mut().expect("object literal");
        if let Some(t) = self.handling.restriction() {
            o.insert("handling_restriction".into(), t.into());
        }
        if let Some(t) = self.expires_at_ms {
            o.insert("expires_at".into(), timefmt::format_ms(t).into());
        }
        if let Some(t) = self.response_deadline_ms {
            o.insert("response_deadline".into(), timefmt::format_ms(t).into());
        }
        if let Some(id) = self.recalls {
            o.insert("recalls".into(), id.to_string().into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const DESIGN_EXAMPLE: &str = r#"{
      "kind": "vessel_of_interest",
      "case_ref": "MAOC-2026-0142",
      "routes": ["atlantic.south-america.west-africa", "vessel.imo.9387421"],
      "handling": "H2",
      "grading": { "source": "B", "information": "2" },
      "audience": ["node:accra", "country:SN"],
      "onward_transfer": false,
      "purposes": ["interdiction", "investigation"],
      "expires_at": "2027-05-28T00:00:00Z",
      "fields": {
        "vessel": { "name": "MV Example", "imo": "9387421", "flag": "TG",
                    "position": { "lat": 5.61, "lon": -0.19 } },
        "persons": [ { "name": "J. Doe", "nationality": "CO", "dob": "1979-03-02", "role": "master" } ],
        "narrative": "Mother ship suspected of transhipment off the Bijagos."
      }
    }"#;

    #[test]
    fn parses_the_design_example() {
        let n = Notification::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(n.kind, Kind::VesselOfInterest);
        assert_eq!(n.handling, Handling::H2);
        assert_eq!(n.grading.to_string(), "B2");
        assert_eq!(n.fields.len(), 10);
        assert_eq!(n.fields[0].path.to_string(), "vessel.name");
        let again = Notification::from_value(&n.to_json()).unwrap();
        assert_eq!(again, n);
    }

    #[test]
    fn errors_name_the_path() {
        let e = Notification::from_json(
            br#"{"kind":"alert","routes":["a"],"handling":"H0","audience":["node:X"]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("audience[0]"), "{e}");
        let e = Notification::from_json(br#"{"kind":"alert","routes":["a"],"handling":"H9"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("handling"), "{e}");
        let e = Notification::from_json(
            br#"{"kind":"alert","routes":["a"],"handling":"H0","colour":1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = Notification::from_json(b"{\n \"kind\": }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        // The whole notification: no empty path.
        let e = Notification::from_json(b"[1]").unwrap_err().to_string();
        assert_eq!(e, "notification: a notification is a JSON object");
        let huge = vec![b' '; MAX_JSON_BYTES + 1];
        let e = Notification::from_json(&huge).unwrap_err().to_string();
        assert!(
            e.starts_with("notification: it is ") && e.ends_with("send less in one notification"),
            "{e}"
        );
    }

    #[test]
    fn interdiction_requests_need_a_deadline() {
        let e = Notification::from_json(
            br#"{"kind":"interdiction_request","routes":["a"],"handling":"H0"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("response_deadline"), "{e}");
    }
}
