//! Typed identifiers and the closed vocabularies of a case notification.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::wire;

/// Why a value could not be parsed; the caller adds where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn perr(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// A node id such as `maoc-n`: 1–63 lowercase letters, digits and `-`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(NodeId(s.to_owned()))
        } else {
            Err(perr(format!(
                "`{s}` is not a node id: use 1-63 lowercase letters, digits and `-`, starting with a letter (e.g. `maoc-n`)"
            )))
        }
    }
}

impl TryFrom<String> for NodeId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// An ISO 3166 alpha-2 country code, upper case (`SN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for CountryCode {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let b = s.as_bytes();
        if b.len() == 2 && b.iter().all(|c| c.is_ascii_uppercase()) {
            Ok(CountryCode([b[0], b[1]]))
        } else {
            Err(perr(format!(
                "`{s}` is not an ISO 3166 alpha-2 country code: use two upper-case letters (e.g. `SN`)"
            )))
        }
    }
}

impl TryFrom<String> for CountryCode {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<CountryCode> for String {
    fn from(c: CountryCode) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Checks an organisation name: 1–63 lowercase letters, digits and `-`.
pub fn check_org(s: &str) -> Result<(), ParseError> {
    if !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Ok(())
    } else {
        Err(perr(format!(
            "`{s}` is not an organisation name: use 1-63 lowercase letters, digits and `-` (e.g. `europol`)"
        )))
    }
}

/// A notification id: 16 bytes, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NotificationId(pub [u8; 16]);

impl NotificationId {
    /// A fresh id: the time in milliseconds since the Unix epoch (48 bits, big-endian), then 80
    /// random bits, as in a version 7 UUID. Ids made later sort later, so a store's index of
    /// copies and seen marks takes new ones at its end instead of anywhere in it; and 80 random
    /// bits keep ids made in the same millisecond apart (even a billion of them collide with a
    /// chance of about 4 in 10 million). The time is the one the header carries anyway, so the
    /// id tells no one anything more.
    pub fn generate() -> Self {
        Self::generate_at(crate::timefmt::now_ms())
    }

    /// [`NotificationId::generate`] for a notification created at `created_at_ms` (Unix ms, as
    /// its header says; a time before 1970 counts as 0).
    pub fn generate_at(created_at_ms: i64) -> Self {
        let ms = u64::try_from(created_at_ms).unwrap_or(0);
        let mut id: [u8; 16] = rand::random();
        id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        NotificationId(id)
    }

    /// Reads an id from its 16 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self, ParseError> {
        <[u8; 16]>::try_from(b)
            .map(NotificationId)
            .map_err(|_| perr(format!("a notification id has 16 bytes, not {}", b.len())))
    }
}

impl FromStr for NotificationId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bytes = hex::decode(s)
            .map_err(|_| perr(format!("`{s}` is not a notification id (32 hex digits)")))?;
        Self::from_slice(&bytes)
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&hex::encode(self.0))
    }
}

impl fmt::Debug for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotificationId({self})")
    }
}

/// The kind of a case notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A general alert.
    Alert,
    /// A seizure report.
    Seizure,
    /// A vessel of interest.
    VesselOfInterest,
    /// A boarding / flag-state request under art. 17 of the 1988 Convention (has a deadline).
    InterdictionRequest,
    /// The answer to an interdiction request.
    InterdictionResponse,
    /// An asset-recovery request.
    AssetTrace,
    /// A change in a trafficking route.
    RouteUpdate,
    /// A request for information.
    RequestForInformation,
    /// Withdraws an earlier notification.
    Recall,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 9] = [
        Kind::Alert,
        Kind::Seizure,
        Kind::VesselOfInterest,
        Kind::InterdictionRequest,
        Kind::InterdictionResponse,
        Kind::AssetTrace,
        Kind::RouteUpdate,
        Kind::RequestForInformation,
        Kind::Recall,
    ];

    /// The snake_case name used in JSON and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alert => "alert",
            Kind::Seizure => "seizure",
            Kind::VesselOfInterest => "vessel_of_interest",
            Kind::InterdictionRequest => "interdiction_request",
            Kind::InterdictionResponse => "interdiction_response",
            Kind::AssetTrace => "asset_trace",
            Kind::RouteUpdate => "route_update",
            Kind::RequestForInformation => "request_for_information",
            Kind::Recall => "recall",
        }
    }

    /// The protobuf value.
    pub fn to_wire(self) -> wire::Kind {
        match self {
            Kind::Alert => wire::Kind::Alert,
            Kind::Seizure => wire::Kind::Seizure,
            Kind::VesselOfInterest => wire::Kind::VesselOfInterest,
            Kind::InterdictionRequest => wire::Kind::InterdictionRequest,
            Kind::InterdictionResponse => wire::Kind::InterdictionResponse,
            Kind::AssetTrace => wire::Kind::AssetTrace,
            Kind::RouteUpdate => wire::Kind::RouteUpdate,
            Kind::RequestForInformation => wire::Kind::RequestForInformation,
            Kind::Recall => wire::Kind::Recall,
        }
    }

    /// From the protobuf value; `None` for unspecified or unknown values.
    pub fn from_wire(v: i32) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.to_wire() as i32 == v)
    }
}

impl FromStr for Kind {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                perr(format!(
                    "unknown kind `{s}`: use one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The provider's handling code; higher is more restrictive in what recipients may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Handling {
    /// Law-enforcement use only.
    H0,
    /// Not for judicial proceedings without the provider's consent.
    H1,
    /// No onward dissemination without the provider's consent.
    H2,
    /// Other restrictions, stated in the text.
    H3(String),
}

impl Handling {
    /// `H0`..`H3`.
    pub fn code(&self) -> &'static str {
        match self {
            Handling::H0 => "H0",
            Handling::H1 => "H1",
            Handling::H2 => "H2",
            Handling::H3(_) => "H3",
        }
    }

    /// 0..=3, for clearance comparisons.
    pub fn level(&self) -> u8 {
        match self {
            Handling::H0 => 0,
            Handling::H1 => 1,
            Handling::H2 => 2,
            Handling::H3(_) => 3,
        }
    }

    /// The restriction text of H3.
    pub fn restriction(&self) -> Option<&str> {
        match self {
            Handling::H3(t) => Some(t),
            _ => None,
        }
    }

    /// Parses a bare code (`H0`..`H3`) with an optional restriction for H3.
    pub fn parse(code: &str, restriction: Option<&str>) -> Result<Handling, ParseError> {
        match (code, restriction) {
            ("H0", None) => Ok(Handling::H0),
            ("H1", None) => Ok(Handling::H1),
            ("H2", None) => Ok(Handling::H2),
            ("H3", Some(t)) if !t.trim().is_empty() => Ok(Handling::H3(t.to_owned())),
            ("H3", _) => Err(perr(
                "H3 needs its restriction text: add `handling_restriction`",
            )),
            ("H0" | "H1" | "H2", Some(_)) => Err(perr(format!(
                "`handling_restriction` goes only with H3, not {code}"
            ))),
            _ => Err(perr(format!(
                "unknown handling code `{code}`: use H0, H1, H2 or H3"
            ))),
        }
    }

    /// Parses a level only (`H0`..`H3`), e.g. a clearance.
    pub fn parse_level(code: &str) -> Result<u8, ParseError> {
        match code {
            "H0" => Ok(0),
            "H1" => Ok(1),
            "H2" => Ok(2),
            "H3" => Ok(3),
            _ => Err(perr(format!(
                "unknown handling code `{code}`: use H0, H1, H2 or H3"
            ))),
        }
    }

    /// The protobuf value.
    pub fn to_wire(&self) -> wire::Handling {
        match self {
            Handling::H0 => wire::Handling::H0,
            Handling::H1 => wire::Handling::H1,
            Handling::H2 => wire::Handling::H2,
            Handling::H3(_) => wire::Handling::H3,
        }
    }

    /// From the protobuf value and restriction text.
    pub fn from_wire(v: i32, restriction: &str) -> Result<Handling, ParseError> {
        let r = (!restriction.is_empty()).then_some(restriction);
        let code = match wire::Handling::try_from(v) {
            Ok(wire::Handling::H0) => "H0",
            Ok(wire::Handling::H1) => "H1",
            Ok(wire::Handling::H2) => "H2",
            Ok(wire::Handling::H3) => "H3",
            _ => return Err(perr(format!("unknown handling value {v}"))),
        };
        Handling::parse(code, r)
    }
}

impl fmt::Display for Handling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handling::H3(t) => write!(f, "H3 ({t})"),
            other => f.write_str(other.code()),
        }
    }
}

/// The 4x4 grading: source reliability (A, B, C, X) and information assessment (1–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grading {
    /// `A`, `B`, `C` or `X`.
    pub source: char,
    /// `1`..`4`.
    pub information: char,
}

impl Grading {
    /// Validates both parts.
    pub fn new(source: &str, information: &str) -> Result<Grading, ParseError> {
        let s = match source {
            "A" | "B" | "C" | "X" => source.chars().next().unwrap_or('X'),
            _ => {
                return Err(perr(format!(
                    "source reliability `{source}`: use A, B, C or X"
                )));
            }
        };
        let i = match information {
            "1" | "2" | "3" | "4" => information.chars().next().unwrap_or('4'),
            _ => {
                return Err(perr(format!(
                    "information assessment `{information}`: use 1, 2, 3 or 4"
                )));
            }
        };
        Ok(Grading {
            source: s,
            information: i,
        })
    }

    /// Ungraded: X4 (reliability cannot be judged, truth unknown).
    pub fn unknown() -> Grading {
        Grading {
            source: 'X',
            information: '4',
        }
    }
}

impl fmt::Display for Grading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.source, self.information)
    }
}

fn check_segment(seg: &str, whole: &str) -> Result<(), ParseError> {
    if seg.is_empty()
        || seg.len() > 64
        || !seg
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(perr(format!(
            "`{whole}`: route segments are 1-64 lowercase letters, digits, `-` or `_`, separated by dots (e.g. `atlantic.west-africa`)"
        )));
    }
    Ok(())
}

/// A route: a dot-separated topic (`atlantic.south-america.west-africa`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Route(String);

impl Route {
    /// The route as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Route {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.len() > 255 {
            return Err(perr("a route is at most 255 characters"));
        }
        for seg in s.split('.') {
            check_segment(seg, s)?;
        }
        Ok(Route(s.to_owned()))
    }
}

impl TryFrom<String> for Route {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<Route> for String {
    fn from(r: Route) -> String {
        r.0
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A route pattern: `*` matches one segment, a final `>` matches one or more remaining segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoutePattern(String);

impl RoutePattern {
    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `route` matches this pattern.
    pub fn matches(&self, route: &Route) -> bool {
        let mut pat = self.0.split('.');
        let mut segs = route.0.split('.');
        loop {
            match (pat.next(), segs.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether some route matches both this pattern and `other`.
    pub fn overlaps(&self, other: &RoutePattern) -> bool {
        self.intersection(other).is_some()
    }

    /// The pattern of exactly the routes that match both this pattern and `other`, if any do
    /// (`atlantic.>` and `*.west-africa` give `atlantic.west-africa`): what a subscription to
    /// one can receive when its user may follow the other.
    pub fn intersection(&self, other: &RoutePattern) -> Option<RoutePattern> {
        fn meet<'a>(a: &[&'a str], b: &[&'a str], out: &mut Vec<&'a str>) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                // `>` takes one or more segments: whatever the other side still asks for.
                (Some(&">"), Some(_)) => {
                    out.extend_from_slice(b);
                    true
                }
                (Some(_), Some(&">")) => {
                    out.extend_from_slice(a);
                    true
                }
                (Some(&x), Some(&y)) if x == "*" || y == "*" || x == y => {
                    out.push(if x == "*" { y } else { x });
                    meet(&a[1..], &b[1..], out)
                }
                _ => false,
            }
        }
        let a: Vec<&str> = self.0.split('.').collect();
        let b: Vec<&str> = other.0.split('.').collect();
        let mut out = Vec::with_capacity(a.len().max(b.len()));
        meet(&a, &b, &mut out).then(|| RoutePattern(out.join(".")))
    }

    /// Whether every route this pattern matches is also matched by `other` (used to aggregate
    /// interest announcements).
    pub fn is_covered_by(&self, other: &RoutePattern) -> bool {
        let a: Vec<&str> = self.0.split('.').collect();
        let b: Vec<&str> = other.0.split('.').collect();
        for (i, pb) in b.iter().enumerate() {
            match (*pb, a.get(i).copied()) {
                (">", Some(_)) => return true,
                ("*", Some(pa)) if pa != ">" => {}
                (pb, Some(pa)) if pb == pa && pa != "*" && pa != ">" => {}
                _ => return false,
            }
        }
        a.len() == b.len()
    }
}

impl FromStr for RoutePattern {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.len() > 255 {
            return Err(perr("a route pattern is at most 255 characters"));
        }
        let segs: Vec<&str> = s.split('.').collect();
        for (i, seg) in segs.iter().enumerate() {
            match *seg {
                "*" => {}
                ">" if i + 1 == segs.len() => {}
                ">" => {
                    return Err(perr(format!(
                        "`{s}`: `>` may only be the last segment of a route pattern"
                    )));
                }
                other => check_segment(other, s)?,
            }
        }
        Ok(RoutePattern(s.to_owned()))
    }
}

impl TryFrom<String> for RoutePattern {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<RoutePattern> for String {
    fn from(r: RoutePattern) -> String {
        r.0
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// One entry of an audience, or of a policy's destination selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AudienceEntry {
    /// `node:accra`
    Node(NodeId),
    /// `node:*`: every node of the federation.
    AnyNode,
    /// `country:SN`
    Country(CountryCode),
    /// `country:*`
    AnyCountry,
    /// `org:europol`
    Org(String),
}

impl AudienceEntry {
    /// Whether a node with this id, country and organisation is covered by this entry.
    pub fn covers(&self, node: &NodeId, country: CountryCode, org: &str) -> bool {
        match self {
            AudienceEntry::Node(n) => n == node,
            AudienceEntry::AnyNode | AudienceEntry::AnyCountry => true,
            AudienceEntry::Country(c) => *c == country,
            AudienceEntry::Org(o) => o == org,
        }
    }
}

impl FromStr for AudienceEntry {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (scope, value) = s.split_once(':').ok_or_else(|| {
            perr(format!(
                "`{s}` is not an audience entry: write `node:ID`, `country:CC` or `org:NAME`"
            ))
        })?;
        match (scope, value) {
            ("node", "*") => Ok(AudienceEntry::AnyNode),
            ("node", v) => Ok(AudienceEntry::Node(v.parse()?)),
            ("country", "*") => Ok(AudienceEntry::AnyCountry),
            ("country", v) => Ok(AudienceEntry::Country(v.parse()?)),
            ("org", v) => {
                check_org(v)?;
                Ok(AudienceEntry::Org(v.to_owned()))
            }
            _ => Err(perr(format!(
                "`{s}`: unknown audience scope `{scope}`; use node:, country: or org:"
            ))),
        }
    }
}

impl TryFrom<String> for AudienceEntry {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<AudienceEntry> for String {
    fn from(a: AudienceEntry) -> String {
        a.to_string()
    }
}

impl fmt::Display for AudienceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudienceEntry::Node(n) => write!(f, "node:{n}"),
            AudienceEntry::AnyNode => f.write_str("node:*"),
            AudienceEntry::Country(c) => write!(f, "country:{c}"),
            AudienceEntry::AnyCountry => f.write_str("country:*"),
            AudienceEntry::Org(o) => write!(f, "org:{o}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Route {
        s.parse().unwrap()
    }
    fn p(s: &str) -> RoutePattern {
        s.parse().unwrap()
    }

    #[test]
    fn names_honour_width_and_alignment_in_tables() {
        let id: NodeId = "accra".parse().unwrap();
        let cc: CountryCode = "GH".parse().unwrap();
        assert_eq!(format!("[{id:<8}][{cc:>3}]"), "[accra   ][ GH]");
        assert_eq!(format!("[{:<10}]", Kind::Alert), "[alert     ]");
        assert_eq!(format!("[{:<10}]", r("a.b")), "[a.b       ]");
        assert_eq!(format!("[{:<10}]", p("a.>")), "[a.>       ]");
    }

    #[test]
    fn route_patterns_match_star_and_tail() {
        assert!(p("atlantic.>").matches(&r("atlantic.west-africa")));
        assert!(p("atlantic.>").matches(&r("atlantic.west-africa.gh")));
        assert!(!p("atlantic.>").matches(&r("atlantic")));
        assert!(p("vessel.imo.*").matches(&r("vessel.imo.9387421")));
        assert!(!p("vessel.imo.*").matches(&r("vessel.imo.9387421.x")));
        assert!(p("air.aircop.lfw").matches(&r("air.aircop.lfw")));
        assert!(!p("air.aircop.lfw").matches(&r("air.aircop")));
        assert!(p(">").matches(&r("anything.at.all")));
    }

    #[test]
    fn pattern_coverage_is_conservative() {
        assert!(p("atlantic.>").overlaps(&p(">")));
        assert!(p("atlantic.>").overlaps(&p("*.west-africa")));
        assert!(p("vessel.imo.*").overlaps(&p("vessel.>")));
        assert!(!p("caribbean.>").overlaps(&p("atlantic.>")));
        assert!(
            !p("atlantic").overlaps(&p("atlantic.>")),
            "`>` needs a segment"
        );
        assert!(!p("a.*").overlaps(&p("a.*.c")));
        let meet = |a: &str, b: &str| p(a).intersection(&p(b)).map(|x| x.to_string());
        assert_eq!(
            meet("atlantic.>", "*.west-africa").as_deref(),
            Some("atlantic.west-africa")
        );
        assert_eq!(meet(">", "atlantic.>").as_deref(), Some("atlantic.>"));
        assert_eq!(meet("a.*.>", "*.b").as_deref(), None);
        assert_eq!(meet("a.*", "*.b.>").as_deref(), None);
        assert_eq!(meet("a.>", "*.*.c").as_deref(), Some("a.*.c"));
        assert!(p("atlantic.west-africa.>").is_covered_by(&p("atlantic.>")));
        assert!(p("atlantic.*").is_covered_by(&p("atlantic.>")));
        assert!(p("a.b").is_covered_by(&p("a.*")));
        assert!(!p("atlantic.>").is_covered_by(&p("atlantic.*")));
        assert!(!p("a.*").is_covered_by(&p("a.b")));
    }

    #[test]
    fn ids_made_later_sort_later_and_ids_of_one_millisecond_differ() {
        let t = 1_795_000_000_000i64;
        let (a, b) = (
            NotificationId::generate_at(t),
            NotificationId::generate_at(t),
        );
        assert_ne!(a, b);
        assert_eq!(a.0[..6], t.to_be_bytes()[2..]);
        for _ in 0..100 {
            assert!(NotificationId::generate_at(t) < NotificationId::generate_at(t + 1));
        }
        let now = NotificationId::generate();
        assert!(
            NotificationId::generate_at(t) < now,
            "the clock is past {t}"
        );
        assert_eq!(now.to_string().parse::<NotificationId>().unwrap(), now);
    }

    #[test]
    fn rejects_bad_ids_with_examples() {
        assert!("MAOC".parse::<NodeId>().unwrap_err().0.contains("maoc-n"));
        assert!("sn".parse::<CountryCode>().is_err());
        assert!("atlantic.>.x".parse::<RoutePattern>().is_err());
        assert!("atlantic..x".parse::<Route>().is_err());
        assert!(
            "team:x"
                .parse::<AudienceEntry>()
                .unwrap_err()
                .0
                .contains("node:")
        );
    }

    #[test]
    fn handling_h3_needs_text() {
        assert!(Handling::parse("H3", None).is_err());
        assert_eq!(
            Handling::parse("H3", Some("no use in court"))
                .unwrap()
                .restriction(),
            Some("no use in court")
        );
        assert!(Handling::parse("H1", Some("x")).is_err());
    }
}
