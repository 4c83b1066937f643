//! Destinations (and origins) of a notification, and the selectors rules use to name them.

use std::fmt;

use serde::{Deserialize, Serialize};
use tidewire_core::keys::RosterNode;
use tidewire_core::model::{AudienceEntry, CountryCode, NodeId};

/// Who a copy goes to (or, for [`crate::Policy::evaluate`]'s `origin`, who wrote it). Policies
/// decide per destination, and a destination is either a peer node or one local subscriber of
/// this node; both are described by the node they sit at, so that country and organisation rules
/// cover them alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Party {
    /// The node: the peer itself, or this node for a local subscriber.
    pub node: NodeId,
    /// The node's country.
    pub country: CountryCode,
    /// The node's organisation.
    pub org: String,
    /// `Some(role)` for a local subscriber of the node, `None` for a peer node.
    pub role: Option<String>,
}

impl Party {
    /// A peer node (no role), the usual destination of a relay.
    pub fn peer(node: NodeId, country: CountryCode, org: impl Into<String>) -> Party {
        Party {
            node,
            country,
            org: org.into(),
            role: None,
        }
    }

    /// A local subscriber with `role`, at node `node`.
    pub fn subscriber(
        node: NodeId,
        country: CountryCode,
        org: impl Into<String>,
        role: impl Into<String>,
    ) -> Party {
        Party {
            node,
            country,
            org: org.into(),
            role: Some(role.into()),
        }
    }

    /// A peer node as the roster describes it, so the node never re-types country and org.
    pub fn from_roster(node: &RosterNode) -> Party {
        Party::peer(node.id.clone(), node.country, node.org.clone())
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(role) = &self.role {
            write!(f, "role:{role} at ")?;
        }
        write!(
            f,
            "node:{} (country {}, org {})",
            self.node, self.country, self.org
        )
    }
}

/// One entry of `to`, `unless_to` or `when.origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selector {
    /// `node:ID`, `node:*`, `country:CC`, `country:*`, `org:NAME`: match the node part.
    Node(AudienceEntry),
    /// `role:NAME`: a local subscriber with exactly that role.
    Role(String),
    /// `role:*`: any local subscriber.
    AnyRole,
}

/// The selectors a policy accepts, for error messages.
pub(crate) const SELECTOR_HELP: &str =
    "use node:ID, node:*, country:CC, country:*, org:NAME, role:NAME or role:*";

/// Checks a role name: 1-63 lowercase letters, digits, `-` and `_`.
pub(crate) fn valid_role(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Selector {
    /// Parses a selector; `roles` says whether `role:` is allowed here.
    pub(crate) fn parse(s: &str, roles: bool) -> Result<Selector, String> {
        if let Some(role) = s.strip_prefix("role:") {
            if !roles {
                return Err(format!(
                    "`{s}`: an origin is a node, not a local subscriber; use node:ID, country:CC or org:NAME"
                ));
            }
            return match role {
                "*" => Ok(Selector::AnyRole),
                r if valid_role(r) => Ok(Selector::Role(r.to_owned())),
                _ => Err(format!(
                    "`{s}`: a role name is 1-63 lowercase letters, digits, `-` or `_` (e.g. `role:duty-officer`)"
                )),
            };
        }
        match s.split_once(':') {
            Some(("node" | "country" | "org", _)) => s
                .parse::<AudienceEntry>()
                .map(Selector::Node)
                .map_err(|e| e.0),
            _ => Err(format!(
                "`{s}` is not a destination selector; {}",
                if roles {
                    SELECTOR_HELP
                } else {
                    "use node:ID, node:*, country:CC, country:* or org:NAME"
                }
            )),
        }
    }

    /// Whether the selector covers `p`.
    pub(crate) fn matches(&self, p: &Party) -> bool {
        match self {
            Selector::Node(entry) => entry.covers(&p.node, p.country, &p.org),
            Selector::Role(r) => p.role.as_deref() == Some(r.as_str()),
            Selector::AnyRole => p.role.is_some(),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Node(e) => write!(f, "{e}"),
            Selector::Role(r) => write!(f, "role:{r}"),
            Selector::AnyRole => f.write_str("role:*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, cc: &str, org: &str) -> Party {
        Party::peer(node.parse().unwrap(), cc.parse().unwrap(), org)
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s, true).unwrap()
    }

    #[test]
    fn node_country_org_selectors_match_the_node_part() {
        let accra = peer("accra", "GH", "nacoc");
        let analyst = Party {
            role: Some("analyst".into()),
            ..accra.clone()
        };
        for s in [
            "node:accra",
            "node:*",
            "country:GH",
            "country:*",
            "org:nacoc",
        ] {
            assert!(sel(s).matches(&accra), "{s}");
            assert!(
                sel(s).matches(&analyst),
                "{s} also covers local subscribers"
            );
        }
        for s in ["node:dakar", "country:SN", "org:europol"] {
            assert!(!sel(s).matches(&accra), "{s}");
        }
    }

    #[test]
    fn role_selectors_match_only_local_subscribers() {
        let accra = peer("accra", "GH", "nacoc");
        let analyst = Party {
            role: Some("analyst".into()),
            ..accra.clone()
        };
        assert!(sel("role:analyst").matches(&analyst));
        assert!(!sel("role:duty-officer").matches(&analyst));
        assert!(sel("role:*").matches(&analyst));
        assert!(!sel("role:*").matches(&accra));
        assert!(!sel("role:analyst").matches(&accra));
    }

    #[test]
    fn bad_selectors_say_what_to_write() {
        let e = Selector::parse("team:x", true).unwrap_err();
        assert!(e.contains("role:NAME"), "{e}");
        let e = Selector::parse("role:Bad Role", true).unwrap_err();
        assert!(e.contains("role name"), "{e}");
        let e = Selector::parse("role:x", false).unwrap_err();
        assert!(e.contains("origin"), "{e}");
        let e = Selector::parse("country:sn", true).unwrap_err();
        assert!(e.contains("`SN`"), "{e}");
        assert!(Selector::parse("org:*", true).is_err());
    }

    #[test]
    fn parties_display_for_reasons() {
        let p = peer("accra", "GH", "nacoc");
        assert_eq!(p.to_string(), "node:accra (country GH, org nacoc)");
        let s = Party::subscriber(p.node.clone(), p.country, "nacoc", "analyst");
        assert_eq!(
            s.to_string(),
            "role:analyst at node:accra (country GH, org nacoc)"
        );
    }
}
