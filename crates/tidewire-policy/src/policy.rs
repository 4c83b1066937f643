//! Reading a policy file: the TOML shape, and its validation into rules ready to evaluate.
//!
//! Parsing is strict on purpose: unknown keys, empty lists, unknown kinds, selectors, patterns
//! and generalisers are refused with their line and column, because a policy that silently
//! means something else than its author thought is a data-protection incident.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use sha2::{Digest, Sha256};
use tidewire_core::envelope::Header;
use tidewire_core::fields::PathPattern;
use tidewire_core::model::{Handling, Kind, RoutePattern};
use toml::Spanned;

use crate::error::PolicyError;
use crate::generalise::{Generaliser, pattern_depth};
use crate::party::{Party, SELECTOR_HELP, Selector};

type Str = Spanned<String>;
type List = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    #[serde(default)]
    default: Option<Str>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    standing_consent: Vec<RawConsent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Str,
    #[serde(default)]
    description: Option<String>,
    to: List,
    #[serde(default)]
    unless_to: Option<List>,
    #[serde(default)]
    when: Option<RawWhen>,
    #[serde(default)]
    action: Option<Str>,
    #[serde(default)]
    allow: Option<List>,
    #[serde(default)]
    redact: Option<List>,
    #[serde(default)]
    generalise: Option<Spanned<Pairs>>,
    #[serde(default)]
    drop_if: Option<List>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsent {
    id: Str,
    #[serde(default)]
    description: Option<String>,
    to: List,
    #[serde(default)]
    unless_to: Option<List>,
    #[serde(default)]
    when: Option<RawWhen>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    #[serde(default)]
    kinds: Option<List>,
    #[serde(default)]
    handling: Option<List>,
    #[serde(default)]
    routes: Option<List>,
    #[serde(default)]
    origin: Option<List>,
    #[serde(default)]
    source: Option<List>,
    #[serde(default)]
    information: Option<List>,
    #[serde(default)]
    purposes: Option<List>,
}

/// The `generalise` table in file order, values kept raw so that an unquoted dotted key (which
/// TOML reads as a nested table) gets a helpful error rather than a type error.
struct Pairs(Vec<(Str, Spanned<toml::Value>)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of \"pattern\" = \"generaliser\"")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = m.next_entry::<Str, Spanned<toml::Value>>()? {
                    out.push(pair);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What an applicable rule does with the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send it, with the rule's field treatments.
    Allow,
    /// Do not send it.
    Deny,
}

/// What happens to a field a pattern selects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Treatment {
    /// In clear (`allow`).
    Clear,
    /// Replaced by a coarser value (`generalise`).
    Generalise(Generaliser),
    /// Withheld (`redact`).
    Redact,
}

impl Treatment {
    /// Restrictiveness, for ties: redact > generalise > clear.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Treatment::Clear => 0,
            Treatment::Generalise(_) => 1,
            Treatment::Redact => 2,
        }
    }
}

/// One pattern of a rule's `allow`, `redact` or `generalise`.
#[derive(Debug, Clone)]
pub(crate) struct FieldRule {
    pub(crate) pattern: PathPattern,
    pub(crate) specificity: u32,
    pub(crate) depth: usize,
    pub(crate) treatment: Treatment,
}

/// The conditions of a rule on the notification; `None` = no condition.
#[derive(Debug, Clone, Default)]
pub(crate) struct When {
    kinds: Option<Vec<Kind>>,
    handling: Option<Vec<u8>>,
    routes: Option<Vec<RoutePattern>>,
    origin: Option<Vec<Selector>>,
    source: Option<Vec<char>>,
    information: Option<Vec<char>>,
    purposes: Option<Vec<String>>,
}

impl When {
    /// Whether every condition holds (each list is any-of). `origin` is `None` for standing
    /// consents, which refuse `when.origin` at parse time.
    pub(crate) fn holds(&self, h: &Header, origin: Option<&Party>) -> bool {
        fn any<T>(cond: &Option<Vec<T>>, f: impl Fn(&T) -> bool) -> bool {
            cond.as_ref().is_none_or(|items| items.iter().any(f))
        }
        any(&self.kinds, |k| *k == h.kind)
            && any(&self.handling, |l| *l == h.handling.level())
            && any(&self.routes, |p| h.routes.iter().any(|r| p.matches(r)))
            && any(&self.origin, |s| origin.is_some_and(|o| s.matches(o)))
            && any(&self.source, |c| *c == h.grading.source)
            && any(&self.information, |c| *c == h.grading.information)
            && any(&self.purposes, |p| h.purposes.iter().any(|x| x == p))
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) id: String,
    pub(crate) description: Option<String>,
    pub(crate) to: Vec<Selector>,
    pub(crate) unless_to: Vec<Selector>,
    pub(crate) when: When,
    pub(crate) action: Action,
    pub(crate) fields: Vec<FieldRule>,
    pub(crate) drop_if: Vec<PathPattern>,
}

impl Rule {
    /// Whether the rule applies to this notification for this destination.
    pub(crate) fn applies(&self, h: &Header, origin: &Party, dest: &Party) -> bool {
        self.to.iter().any(|s| s.matches(dest))
            && !self.unless_to.iter().any(|s| s.matches(dest))
            && self.when.holds(h, Some(origin))
    }
}

/// One `[[standing_consent]]`.
#[derive(Debug, Clone)]
pub(crate) struct Consent {
    pub(crate) id: String,
    pub(crate) to: Vec<Selector>,
    pub(crate) unless_to: Vec<Selector>,
    pub(crate) when: When,
}

/// A node's data-protection policy, parsed and validated: what may go to whom, and how. Cheap
/// to clone and shareable across threads, so the node can swap in a new version atomically
/// while in-flight evaluations finish on the old one.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) version: i64,
    pub(crate) default_allow: bool,
    pub(crate) hash: String,
    pub(crate) rules: Vec<Rule>,
    pub(crate) consents: Vec<Consent>,
}

impl Policy {
    /// Parses and validates policy text. Errors carry the line and column of what to fix.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::from_toml(text, &e))?;
        Ctx { text }.build(raw)
    }

    /// Reads and parses a policy file; errors name the file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PolicyError::plain(format!("cannot read the policy file: {e}")).in_file(path.to_owned())
        })?;
        Policy::parse(&text).map_err(|e| e.in_file(path.to_owned()))
    }

    /// The administrator's version number, recorded with every transfer.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// `sha256:` and the first 16 hex digits of the SHA-256 of the policy text: identifies the
    /// exact text that decided a transfer, even if someone forgot to raise the version.
    pub fn content_hash(&self) -> &str {
        &self.hash
    }

    /// Whether a notification no rule covers goes out in clear (`default = "allow"`).
    pub fn default_allows(&self) -> bool {
        self.default_allow
    }

    /// The `[[rule]]` ids in file order (for `tidewire policy show` and checks on the ledger).
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// The `[[standing_consent]]` ids in file order.
    pub fn consent_ids(&self) -> impl Iterator<Item = &str> {
        self.consents.iter().map(|c| c.id.as_str())
    }

    /// A rule's description, if it has one (for explanations and `policy show`).
    pub fn rule_description(&self, id: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.description.as_deref())
    }

    /// The id of the first standing consent of this (origin) node that pre-approves onward
    /// transfer of `header`'s notification to `dest`, if any. The node asks this before sending
    /// a consent request for an H2 (or `onward_transfer = false`) notification it originated.
    pub fn standing_consent(&self, header: &Header, dest: &Party) -> Option<&str> {
        self.consents
            .iter()
            .find(|c| {
                c.to.iter().any(|s| s.matches(dest))
                    && !c.unless_to.iter().any(|s| s.matches(dest))
                    && c.when.holds(header, None)
            })
            .map(|c| c.id.as_str())
    }
}

/// Where the rule ids were first defined, to report duplicates.
type Seen = HashMap<String, usize>;

struct Ctx<'a> {
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::at(self.text, span, message)
    }

    fn build(&self, raw: RawPolicy) -> Result<Policy, PolicyError> {
        let version = *raw.version.get_ref();
        if version < 1 {
            return Err(self.err(
                raw.version.span(),
                format!("`version` is {version}: use a positive integer, raised on every change"),
            ));
        }
        let default_allow = match &raw.default {
            None => false,
            Some(d) => match d.get_ref().as_str() {
                "deny" => false,
                "allow" => true,
                other => {
                    return Err(self.err(
                        d.span(),
                        format!("`default` is `{other}`: use \"deny\" or \"allow\""),
                    ));
                }
            },
        };
        let mut seen = Seen::new();
        let rules = raw
            .rule
            .into_iter()
            .map(|r| self.rule(r, &mut seen))
            .collect::<Result<Vec<_>, _>>()?;
        let consents = raw
            .standing_consent
            .into_iter()
            .map(|c| self.consent(c, &mut seen))
            .collect::<Result<Vec<_>, _>>()?;
        let digest = Sha256::digest(self.text.as_bytes());
        Ok(Policy {
            version,
            default_allow,
            hash: format!("sha256:{}", &hex::encode(digest)[..16]),
            rules,
            consents,
        })
    }

    fn id(&self, what: &str, id: &Str, seen: &mut Seen) -> Result<String, PolicyError> {
        let s = id.get_ref();
        let valid = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            return Err(self.err(
                id.span(),
                format!(
                    "{what} id `{s}`: use 1-63 lowercase letters, digits, `-` or `_` (e.g. `west-africa-vessels`)"
                ),
            ));
        }
        if s == "default" {
            return Err(self.err(
                id.span(),
                format!("{what} id `default` is reserved for the policy default; pick another"),
            ));
        }
        let line = PolicyError::at(self.text, id.span(), "").line.unwrap_or(0);
        if let Some(first) = seen.insert(s.clone(), line) {
            return Err(self.err(
                id.span(),
                format!(
                    "duplicate id `{s}` (first used on line {first}); rule and consent ids must be unique"
                ),
            ));
        }
        Ok(s.clone())
    }

    fn selectors(
        &self,
        who: &str,
        key: &str,
        list: &List,
        roles: bool,
        non_empty: bool,
    ) -> Result<Vec<Selector>, PolicyError> {
        if non_empty && list.get_ref().is_empty() {
            return Err(self.err(
                list.span(),
                format!("{who}: `{key}` is empty; name at least one destination ({SELECTOR_HELP})"),
            ));
        }
        list.get_ref()
            .iter()
            .map(|s| {
                Selector::parse(s.get_ref(), roles)
                    .map_err(|e| self.err(s.span(), format!("{who}: `{key}`: {e}")))
            })
            .collect()
    }

    /// Parses each item of a `when` list, refusing an empty list (it would match nothing).
    fn when_list<T>(
        &self,
        who: &str,
        key: &str,
        list: &Option<List>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        if list.get_ref().is_empty() {
            return Err(self.err(
                list.span(),
                format!("{who}: `when.{key}` is empty and would match nothing; list at least one value or remove the key"),
            ));
        }
        list.get_ref()
            .iter()
            .map(|s| {
                parse(s.get_ref())
                    .map_err(|e| self.err(s.span(), format!("{who}: `when.{key}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn when(&self, who: &str, raw: Option<RawWhen>, consent: bool) -> Result<When, PolicyError> {
        let raw = raw.unwrap_or_default();
        if consent && let Some(origin) = &raw.origin {
            return Err(self.err(
                origin.span(),
                format!("{who}: `when.origin` does not apply: a standing consent covers this node's own notifications; remove it"),
            ));
        }
        Ok(When {
            kinds: self.when_list(who, "kinds", &raw.kinds, |s| {
                s.parse::<Kind>().map_err(|e| e.0)
            })?,
            handling: self.when_list(who, "handling", &raw.handling, |s| {
                Handling::parse_level(s).map_err(|e| e.0)
            })?,
            routes: self.when_list(who, "routes", &raw.routes, |s| {
                s.parse::<RoutePattern>().map_err(|e| e.0)
            })?,
            origin: self.when_list(who, "origin", &raw.origin, |s| Selector::parse(s, false))?,
            source: self.when_list(who, "source", &raw.source, |s| match s {
                "A" | "B" | "C" | "X" => Ok(s.chars().next().unwrap_or('X')),
                _ => Err(format!("source reliability `{s}`: use A, B, C or X")),
            })?,
            information: self.when_list(who, "information", &raw.information, |s| match s {
                "1" | "2" | "3" | "4" => Ok(s.chars().next().unwrap_or('4')),
                _ => Err(format!(
                    "information assessment `{s}`: use \"1\", \"2\", \"3\" or \"4\""
                )),
            })?,
            purposes: self.when_list(who, "purposes", &raw.purposes, |s| {
                if s.is_empty() || s.chars().count() > 64 {
                    Err("a purpose is 1-64 characters".to_owned())
                } else {
                    Ok(s.to_owned())
                }
            })?,
        })
    }

    fn patterns(
        &self,
        who: &str,
        key: &str,
        list: &List,
    ) -> Result<Vec<(PathPattern, Range<usize>)>, PolicyError> {
        list.get_ref()
            .iter()
            .map(|s| {
                s.get_ref()
                    .parse::<PathPattern>()
                    .map(|p| (p, s.span()))
                    .map_err(|e| self.err(s.span(), format!("{who}: `{key}`: {}", e.0)))
            })
            .collect()
    }

    fn rule(&self, raw: RawRule, seen: &mut Seen) -> Result<Rule, PolicyError> {
        let id = self.id("rule", &raw.id, seen)?;
        let who = format!("rule `{id}`");
        let to = self.selectors(&who, "to", &raw.to, true, true)?;
        let unless_to = match &raw.unless_to {
            Some(l) => self.selectors(&who, "unless_to", l, true, false)?,
            None => Vec::new(),
        };
        let when = self.when(&who, raw.when, false)?;
        let action = match &raw.action {
            None => Action::Allow,
            Some(a) => match a.get_ref().as_str() {
                "allow" => Action::Allow,
                "deny" => Action::Deny,
                other => {
                    return Err(self.err(
                        a.span(),
                        format!("{who}: `action` is `{other}`: use \"allow\" or \"deny\""),
                    ));
                }
            },
        };
        if action == Action::Deny {
            let field_keys = [
                ("allow", raw.allow.as_ref().map(|l| l.span())),
                ("redact", raw.redact.as_ref().map(|l| l.span())),
                ("generalise", raw.generalise.as_ref().map(|g| g.span())),
                ("drop_if", raw.drop_if.as_ref().map(|l| l.span())),
            ];
            if let Some((key, Some(span))) = field_keys.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.err(
                    span,
                    format!("{who}: a deny rule sends nothing, so `{key}` means nothing here; remove it, or make the rule action = \"allow\""),
                ));
            }
        }

        let mut fields = Vec::new();
        let mut listed: HashMap<String, &str> = HashMap::new();
        let mut add = |pattern: PathPattern,
                       span: Range<usize>,
                       key: &'static str,
                       treatment: Treatment| {
            if let Some(first) = listed.insert(pattern.as_str().to_owned(), key) {
                return Err(self.err(
                    span,
                    if first == key {
                        format!("{who}: pattern `{pattern}` is listed twice in `{key}`; keep one")
                    } else {
                        format!("{who}: pattern `{pattern}` is in both `{first}` and `{key}`; keep the one you mean")
                    },
                ));
            }
            fields.push(FieldRule {
                specificity: pattern.specificity(),
                depth: pattern_depth(pattern.as_str()),
                pattern,
                treatment,
            });
            Ok(())
        };
        if let Some(l) = &raw.allow {
            for (p, span) in self.patterns(&who, "allow", l)? {
                add(p, span, "allow", Treatment::Clear)?;
            }
        }
        if let Some(l) = &raw.redact {
            for (p, span) in self.patterns(&who, "redact", l)? {
                add(p, span, "redact", Treatment::Redact)?;
            }
        }
        if let Some(g) = &raw.generalise {
            for (key, value) in &g.get_ref().0 {
                let generaliser = match value.get_ref() {
                    toml::Value::String(s) => Generaliser::parse(s)
                        .map_err(|e| self.err(value.span(), format!("{who}: {e}")))?,
                    toml::Value::Table(_) => {
                        return Err(self.err(
                            key.span(),
                            format!("{who}: `generalise.{}` is a table: quote dotted patterns, e.g. \"vessel.position\" = \"round:1\"", key.get_ref()),
                        ));
                    }
                    other => {
                        return Err(self.err(
                            value.span(),
                            format!("{who}: `generalise` values are generaliser names, not {}; use round:N, year, prefix:N or country-only", other.type_str()),
                        ));
                    }
                };
                let pattern = key
                    .get_ref()
                    .parse::<PathPattern>()
                    .map_err(|e| self.err(key.span(), format!("{who}: `generalise`: {}", e.0)))?;
                add(
                    pattern,
                    key.span(),
                    "generalise",
                    Treatment::Generalise(generaliser),
                )?;
            }
        }
        let drop_if = match &raw.drop_if {
            Some(l) => self
                .patterns(&who, "drop_if", l)?
                .into_iter()
                .map(|(p, _)| p)
                .collect(),
            None => Vec::new(),
        };
        Ok(Rule {
            id,
            description: raw.description,
            to,
            unless_to,
            when,
            action,
            fields,
            drop_if,
        })
    }

    fn consent(&self, raw: RawConsent, seen: &mut Seen) -> Result<Consent, PolicyError> {
        let id = self.id("standing consent", &raw.id, seen)?;
        let who = format!("standing consent `{id}`");
        let _ = raw.description; // for people reading the file; nothing evaluates it
        Ok(Consent {
            to: self.selectors(&who, "to", &raw.to, true, true)?,
            unless_to: match &raw.unless_to {
                Some(l) => self.selectors(&who, "unless_to", l, true, false)?,
                None => Vec::new(),
            },
            when: self.when(&who, raw.when, true)?,
            id,
        })
    }
}
