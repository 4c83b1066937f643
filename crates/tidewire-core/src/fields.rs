//! The field tree of a notification body, addressed by path (`persons[0].dob`).
//!
//! Only scalar leaves (strings, numbers, booleans, null) are committed and disclosed one by one;
//! objects and arrays are structure, rebuilt from the paths on the receiving side.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::model::ParseError;

/// The most fields a notification body may have.
pub const MAX_FIELDS: usize = 1024;
/// The deepest a field path may nest.
pub const MAX_DEPTH: usize = 16;
/// The largest canonical value of one field, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// An object key: letters, digits, `_` and `-`.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A field path such as `vessel.position.lat` or `persons[0].dob`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<Segment>);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A pattern step: a concrete step, `*` (any one key or index) or `[*]` (any index).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatSeg {
    Key(String),
    Index(usize),
    AnyStep,
    AnyIndex,
}

/// A path pattern (`persons[*].name`, `vessel.*`). A pattern matches a path when it matches the
/// path's first steps: `vessel` selects `vessel.position.lat` too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    text: String,
    segs: Vec<PatSeg>,
}

impl PathPattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern selects `path` (the path itself or something under it).
    pub fn matches(&self, path: &FieldPath) -> bool {
        if self.segs.len() > path.0.len() {
            return false;
        }
        self.segs.iter().zip(&path.0).all(|(p, s)| match (p, s) {
            (PatSeg::AnyStep, _) => true,
            (PatSeg::AnyIndex, Segment::Index(_)) => true,
            (PatSeg::Key(a), Segment::Key(b)) => a == b,
            (PatSeg::Index(a), Segment::Index(b)) => a == b,
            _ => false,
        })
    }

    /// Like [`PathPattern::matches`], on a path's text, without parsing or allocating. A
    /// malformed path matches nothing.
    pub fn matches_str(&self, path: &str) -> bool {
        self.matches_iter(Steps {
            rest: path.as_bytes(),
            first: true,
        })
    }

    /// Like [`PathPattern::matches`], on a path split once with [`PathSteps::new`] (the policy
    /// engine's hot loop: one split per field, many patterns).
    pub fn matches_steps(&self, path: &PathSteps<'_>) -> bool {
        self.segs.len() <= path.0.len() && self.matches_iter(path.0.iter().copied())
    }

    fn matches_iter<'a>(&self, mut steps: impl Iterator<Item = Step<'a>>) -> bool {
        for p in &self.segs {
            let Some(step) = steps.next() else {
                return false;
            };
            let ok = match (p, step) {
                (PatSeg::AnyStep, _) => true,
                (PatSeg::AnyIndex, Step::Index(_)) => true,
                (PatSeg::Key(a), Step::Key(b)) => a.as_bytes() == b,
                (PatSeg::Index(a), Step::Index(b)) => Some(*a) == b,
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// How many steps the pattern has, with wildcards counting less than names, so that a more
    /// specific pattern wins when several match.
    pub fn specificity(&self) -> u32 {
        self.segs
            .iter()
            .map(|s| match s {
                PatSeg::Key(_) | PatSeg::Index(_) => 4,
                PatSeg::AnyIndex => 2,
                PatSeg::AnyStep => 1,
            })
            .sum()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text)
    }
}

/// A path's text split into steps once, for matching against many patterns. Paths of up to
/// eight steps (every field of the notifications centres write) are split without allocating.
#[derive(Debug, Clone)]
pub struct PathSteps<'a>(SmallVec<[Step<'a>; 8]>);

impl<'a> PathSteps<'a> {
    /// Splits `path`, borrowing the text.
    pub fn new(path: &'a str) -> PathSteps<'a> {
        PathSteps(
            Steps {
                rest: path.as_bytes(),
                first: true,
            }
            .collect(),
        )
    }
}

/// One step of a path's text.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a [u8]),
    /// `None` when the index is not a number.
    Index(Option<usize>),
}

/// Walks the steps of a path's text without allocating.
struct Steps<'a> {
    rest: &'a [u8],
    first: bool,
}

impl<'a> Iterator for Steps<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest[0] == b'[' {
            let close = self.rest.iter().position(|b| *b == b']')?;
            let inner = std::str::from_utf8(&self.rest[1..close]).ok()?;
            self.rest = &self.rest[close + 1..];
            self.first = false;
            return Some(Step::Index(inner.parse().ok()));
        }
        if !self.first {
            if self.rest[0] != b'.' {
                return None;
            }
            self.rest = &self.rest[1..];
        }
        self.first = false;
        let end = self
            .rest
            .iter()
            .position(|b| *b == b'.' || *b == b'[')
            .unwrap_or(self.rest.len());
        let (key, rest) = self.rest.split_at(end);
        self.rest = rest;
        (!key.is_empty()).then_some(Step::Key(key))
    }
}

/// Splits `a.b[0][*].c` into raw steps; `allow_wild` admits `*` and `[*]`.
fn split_steps(s: &str, allow_wild: bool) -> Result<Vec<PatSeg>, ParseError> {
    let bad = |why: &str| {
        ParseError(format!(
            "`{s}` is not a field path: {why} (write e.g. `vessel.imo` or `persons[0].dob`)"
        ))
    };
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut out = Vec::new();
    for (i, part) in s.split('.').enumerate() {
        let (name, mut rest) = match part.find('[') {
            Some(p) => (&part[..p], &part[p..]),
            None => (part, ""),
        };
        if name.is_empty() {
            if i == 0 && !rest.is_empty() {
                return Err(bad("it must start with a field name"));
            }
            return Err(bad("a step between dots is empty"));
        }
        if name == "*" {
            if !allow_wild {
                return Err(bad("`*` is only allowed in patterns"));
            }
            out.push(PatSeg::AnyStep);
        } else if valid_key(name) {
            out.push(PatSeg::Key(name.to_owned()));
        } else {
            return Err(bad("names use letters, digits, `_` and `-`"));
        }
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(|| bad("a `[` is not closed"))?;
            let inner = &rest[1..close];
            if inner == "*" {
                if !allow_wild {
                    return Err(bad("`[*]` is only allowed in patterns"));
                }
                out.push(PatSeg::AnyIndex);
            } else {
                let n: usize = inner
                    .parse()
                    .map_err(|_| bad("an index must be a number"))?;
                out.push(PatSeg::Index(n));
            }
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(bad("`]` must be followed by `.`, `[` or the end"));
            }
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(bad("it nests too deep"));
    }
    Ok(out)
}

impl FromStr for FieldPath {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let steps = split_steps(s, false)?
            .into_iter()
            .map(|p| match p {
                PatSeg::Key(k) => Segment::Key(k),
                PatSeg::Index(n) => Segment::Index(n),
                PatSeg::AnyStep | PatSeg::AnyIndex => unreachable!("wildcards refused above"),
            })
            .collect();
        Ok(FieldPath(steps))
    }
}

impl FromStr for PathPattern {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Ok(PathPattern {
            text: s.to_owned(),
            segs: split_steps(s, true)?,
        })
    }
}

/// One scalar leaf of the body: its path and canonical JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Where it sits.
    pub path: FieldPath,
    /// Canonical JSON text of the scalar (`"MV Example"`, `5.61`, `true`).
    pub value: Vec<u8>,
}

/// Canonical JSON text of a scalar: serde_json's compact form (shortest round-trip floats).
pub fn canonical(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Whether `text` is exactly one JSON value that `serde_json::Value` parses (numbers in range,
/// strings valid UTF-8 with valid escapes, nothing after it), checked without building the
/// value: a receiver checks every field it is handed this way and parses only the few it reads.
pub fn is_json_value(text: &[u8]) -> bool {
    serde_json::from_slice::<JsonCheck>(text).is_ok()
}

/// Accepts what `serde_json::Value` accepts, keeping nothing.
struct JsonCheck;

impl<'de> serde::Deserialize<'de> for JsonCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonCheck)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck {
    type Value = JsonCheck;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_i64<E>(self, _: i64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_u64<E>(self, _: u64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_f64<E>(self, _: f64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_str<E>(self, _: &str) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_unit<E>(self) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonCheck, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonCheck, A::Error> {
        while map.next_entry::<JsonCheck, JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
}

/// Flattens a body object into its scalar leaves, in document order. Errors name the path.
pub fn flatten(body: &Map<String, Value>) -> Result<Vec<Leaf>, ParseError> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk_obj(body, &mut path, &mut out)?;
    Ok(out)
}

fn walk(value: &Value, path: &mut Vec<Segment>, out: &mut Vec<Leaf>) -> Result<(), ParseError> {
    if path.len() > MAX_DEPTH {
        return Err(ParseError(format!(
            "fields.{}: nests deeper than {MAX_DEPTH} levels",
            FieldPath(path.clone())
        )));
    }
    match value {
        Value::Object(map) => walk_obj(map, path, out),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                walk(item, path, out)?;
                path.pop();
            }
            Ok(())
        }
        scalar => {
            let value = canonical(scalar);
            let p = FieldPath(path.clone());
            if value.len() > MAX_VALUE_BYTES {
                return Err(ParseError(format!(
                    "fields.{p}: value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                    value.len()
                )));
            }
            if out.len() >= MAX_FIELDS {
                return Err(ParseError(format!(
                    "fields: more than {MAX_FIELDS} fields; split the notification"
                )));
            }
            out.push(Leaf { path: p, value });
            Ok(())
        }
    }
}

fn walk_obj(
    map: &Map<String, Value>,
    path: &mut Vec<Segment>,
    out: &mut Vec<Leaf>,
) -> Result<(), ParseError> {
    for (k, v) in map {
        if !valid_key(k) {
            let mut p = path.clone();
            p.push(Segment::Key(k.clone()));
            return Err(ParseError(format!(
                "fields: the name `{k}` (under `{}`) may only use letters, digits, `_` and `-`",
                FieldPath(path.clone())
            )));
        }
        path.push(Segment::Key(k.clone()));
        walk(v, path, out)?;
        path.pop();
    }
    Ok(())
}

/// Rebuilds a JSON object from leaves. Array positions not present (withheld) become `null`
/// so that indices keep their meaning; a conflicting shape is reported, not guessed.
pub fn unflatten<'a>(
    leaves: impl IntoIterator<Item = (&'a FieldPath, Value)>,
) -> Result<Value, ParseError> {
    let mut root = Value::Object(Map::new());
    for (path, value) in leaves {
        insert(&mut root, &path.0, value)
            .map_err(|why| ParseError(format!("field `{path}`: {why}")))?;
    }
    Ok(root)
}

fn insert(node: &mut Value, path: &[Segment], value: Value) -> Result<(), &'static str> {
    let Some((first, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    match first {
        Segment::Key(k) => {
            if node.is_null() {
                *node = Value::Object(Map::new());
            }
            let map = node
                .as_object_mut()
                .ok_or("conflicts with an array or value")?;
            let child = map.entry(k.clone()).or_insert(Value::Null);
            insert(child, rest, value)
        }
        Segment::Index(i) => {
            if node.is_null() {
                *node = Value::Array(Vec::new());
            }
            let arr = node
                .as_array_mut()
                .ok_or("conflicts with an object or value")?;
            if *i > MAX_FIELDS {
                return Err("index out of range");
            }
            while arr.len() <= *i {
                arr.push(Value::Null);
            }
            insert(&mut arr[*i], rest, value)
        }
    }
}

/// The JSON text of the object [`unflatten`] builds from `leaves`, written straight out without
/// building the tree, when the leaves come in document order (as [`flatten`] lists them and as
/// relays keep them: each container's members together, array indices rising). `None` when they
/// do not (a container revisited, an index going back, a path that is also a container, a path
/// that does not parse): build the tree with [`unflatten`] then, which resolves those cases.
///
/// Each leaf's value is given as its JSON text (one JSON value, as [`is_json_value`] checks and
/// `VerifiedField::json` holds), and written as it is.
pub fn write_in_order<'a>(leaves: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Option<String> {
    /// An open container: its kind, the keys it has (objects) or the next index (arrays), and
    /// whether it has a member yet.
    struct Open<'a> {
        array: bool,
        keys: Vec<&'a [u8]>,
        next: usize,
        any: bool,
    }
    fn close(out: &mut Vec<u8>, open: &mut Vec<Open<'_>>, path: &mut Vec<Step<'_>>, depth: usize) {
        while open.len() > depth + 1 {
            let c = open.pop().expect("more than depth + 1 frames");
            out.push(if c.array { b']' } else { b'}' });
            path.pop();
        }
    }
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    out.push(b'{');
    let mut open = vec![Open {
        array: false,
        keys: Vec::new(),
        next: 0,
        any: false,
    }];
    // The steps that opened `open[1..]`.
    let mut at: Vec<Step<'a>> = Vec::new();
    for (path, value) in leaves {
        let mut walk = Steps {
            rest: path.as_bytes(),
            first: true,
        };
        let steps: Vec<Step<'a>> = walk.by_ref().collect();
        let valid = |s: &Step<'_>| match s {
            Step::Key(k) => std::str::from_utf8(k).is_ok_and(valid_key),
            Step::Index(i) => i.is_some_and(|i| i <= MAX_FIELDS),
        };
        if !walk.rest.is_empty() || steps.is_empty() || !steps.iter().all(valid) {
            return None;
        }
        let same = |a: &Step<'_>, b: &Step<'_>| match (a, b) {
            (Step::Key(x), Step::Key(y)) => x == y,
            (Step::Index(x), Step::Index(y)) => x == y,
            _ => false,
        };
        let common = at
            .iter()
            .zip(&steps[..steps.len() - 1])
            .take_while(|(a, b)| same(a, b))
            .count();
        close(&mut out, &mut open, &mut at, common);
        for (d, step) in steps.iter().enumerate().skip(common) {
            let parent = open.last_mut().expect("the root stays open");
            if parent.any {
                out.push(b',');
            }
            match (*step, parent.array) {
                (Step::Key(k), false) => {
                    if parent.keys.contains(&k) {
                        return None;
                    }
                    parent.keys.push(k);
                    // Keys are letters, digits, `_` and `-` (checked above): nothing to escape.
                    out.push(b'"');
                    out.extend_from_slice(k);
                    out.extend_from_slice(b"\":");
                }
                (Step::Index(Some(i)), true) => {
                    if i < parent.next {
                        return None;
                    }
                    for _ in parent.next..i {
                        out.extend_from_slice(b"null,");
                    }
                    parent.next = i + 1;
                }
                _ => return None,
            }
            parent.any = true;
            match steps.get(d + 1) {
                Some(next) => {
                    let array = matches!(next, Step::Index(_));
                    out.push(if array { b'[' } else { b'{' });
                    open.push(Open {
                        array,
                        keys: Vec::new(),
                        next: 0,
                        any: false,
                    });
                    at.push(*step);
                }
                None => out.extend_from_slice(value),
            }
        }
    }
    close(&mut out, &mut open, &mut at, 0);
    out.push(b'}');
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_round_trip() {
        for s in ["vessel.imo", "persons[0].dob", "a[1][2].b", "narrative"] {
            assert_eq!(s.parse::<FieldPath>().unwrap().to_string(), s);
        }
        assert!("persons[*].name".parse::<FieldPath>().is_err());
        assert!("a..b".parse::<FieldPath>().is_err());
        assert!("a[x]".parse::<FieldPath>().is_err());
        assert!("[0]".parse::<FieldPath>().is_err());
    }

    #[test]
    fn patterns_select_subtrees_and_wildcards() {
        let p = |s: &str| s.parse::<PathPattern>().unwrap();
        let f = |s: &str| s.parse::<FieldPath>().unwrap();
        assert!(p("persons[*].name").matches(&f("persons[3].name")));
        assert!(!p("persons[*].name").matches(&f("persons[3].dob")));
        assert!(p("vessel.*").matches(&f("vessel.position.lat")));
        assert!(p("vessel").matches(&f("vessel.imo")));
        assert!(!p("vessel.imo").matches(&f("vessel")));
        assert!(p("*").matches(&f("narrative")));
        assert!(p("vessel.imo").specificity() > p("vessel.*").specificity());
    }

    #[test]
    fn matching_on_text_agrees_with_matching_parsed_paths() {
        let pats = [
            "persons[*].name",
            "vessel.*",
            "vessel",
            "*",
            "a[1].b",
            "a[*]",
            "x.y.z",
        ];
        let paths = [
            "persons[3].name",
            "persons[3].dob",
            "vessel.position.lat",
            "vessel",
            "a[1].b",
            "a[2].b",
            "a[1]",
            "x.y",
            "narrative",
        ];
        for p in pats {
            let pat: PathPattern = p.parse().unwrap();
            for f in paths {
                let parsed: FieldPath = f.parse().unwrap();
                assert_eq!(pat.matches_str(f), pat.matches(&parsed), "{p} vs {f}");
                assert_eq!(
                    pat.matches_steps(&PathSteps::new(f)),
                    pat.matches(&parsed),
                    "{p} vs {f}"
                );
            }
        }
    }

    #[test]
    fn flatten_and_unflatten_agree() {
        let body = json!({
            "vessel": {"name": "MV Example", "position": {"lat": 5.61, "lon": -0.19}},
            "persons": [{"name": "J. Doe", "dob": "1979-03-02"}],
            "narrative": "x"
        });
        let leaves = flatten(body.as_object().unwrap()).unwrap();
        assert_eq!(leaves.len(), 6);
        let back = unflatten(
            leaves
                .iter()
                .map(|l| (&l.path, serde_json::from_slice(&l.value).unwrap())),
        )
        .unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn flatten_names_bad_keys() {
        let body = json!({"vessel": {"bad key": 1}});
        let err = flatten(body.as_object().unwrap()).unwrap_err();
        assert!(
            err.0.contains("bad key") && err.0.contains("vessel"),
            "{err}"
        );
    }

    fn body() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z \"\\\\é]{0,6}".prop_map(Value::from),
        ];
        let tree = scalar.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]{1,2}", inner, 1..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[a-d]{1,2}", tree, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest::proptest! {
        #[test]
        fn writing_in_order_gives_exactly_what_unflatten_builds(
            body in body(), keep in proptest::collection::vec(proptest::bool::weighted(0.7), 64),
            swap in proptest::option::of((0usize..64, 0usize..64)),
        ) {
            let leaves = flatten(body.as_object().unwrap()).unwrap();
            let values: Vec<(String, Value, &[u8])> = leaves
                .iter()
                .map(|l| (l.path.to_string(), serde_json::from_slice(&l.value).unwrap(), &l.value[..]))
                .collect();
            // Some withheld (array slots become nulls), and sometimes two out of order.
            let mut kept: Vec<&(String, Value, &[u8])> = values
                .iter()
                .enumerate()
                .filter(|(i, _)| keep[i % keep.len()])
                .map(|(_, v)| v)
                .collect();
            if let Some((a, b)) = swap.filter(|_| !kept.is_empty()) {
                let n = kept.len();
                kept.swap(a % n, b % n);
            }
            let parsed: Vec<(FieldPath, Value)> = kept
                .iter()
                .map(|(p, v, _)| (p.parse().unwrap(), v.clone()))
                .collect();
            let tree = unflatten(parsed.iter().map(|(p, v)| (p, v.clone())));
            let written = write_in_order(kept.iter().map(|(p, _, text)| (p.as_str(), *text)));
            if swap.is_none() {
                proptest::prop_assert!(written.is_some(), "document order is written: {:?}", kept);
            }
            if let Some(text) = written {
                proptest::prop_assert_eq!(Some(text), tree.ok().map(|t| t.to_string()));
            }
        }
    }

    #[test]
    fn the_json_check_accepts_exactly_what_a_value_parses() {
        for ok in [
            &b"1"[..],
            b"-0.5e3",
            b"\"a\\u00e9\\n\"",
            b"null",
            b"true",
            b" [1, {\"a\": [null]}] ",
            b"\"\xc3\xa9\"",
            b"{}",
            b"[]",
            b"18446744073709551615",
            b"-9223372036854775808",
        ] {
            assert!(is_json_value(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"1e400",
            b"1 2",
            b"\"a",
            b"\"\xff\"",
            b"\"\\ud800\"",
            b"\"\\x\"",
            b"{\"a\"}",
            b"[1,]",
            b"nul",
            b"01",
            b"{1:2}",
        ] {
            assert!(!is_json_value(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn the_json_check_agrees_with_parsing_a_value(
            text in proptest::collection::vec(proptest::sample::select(
                b" \t\n{}[]:,\"\\/0123456789-+.eEtrufalsnbu\xc3\xa9\xff".to_vec()), 0..24),
            body in body(),
        ) {
            proptest::prop_assert_eq!(
                is_json_value(&text),
                serde_json::from_slice::<Value>(&text).is_ok(),
                "{}", String::from_utf8_lossy(&text)
            );
            let whole = serde_json::to_vec(&body).unwrap();
            proptest::prop_assert!(is_json_value(&whole));
        }
    }

    #[test]
    fn out_of_order_or_conflicting_leaves_are_left_to_unflatten() {
        let w = |paths: &[&'static str]| write_in_order(paths.iter().map(|p| (*p, &b"1"[..])));
        assert_eq!(w(&["a.x", "b", "a.y"]), None, "a revisited");
        assert_eq!(w(&["a[1]", "a[0]"]), None, "an index going back");
        assert_eq!(w(&["a.b", "a"]), None, "a leaf that is also a container");
        assert_eq!(w(&["a.b", "a[0]"]), None, "an object used as an array");
        assert_eq!(w(&["a..b"]), None, "not a path");
        assert_eq!(w(&["[0]"]), None, "not a path");
        assert_eq!(
            w(&["a[2].x", "a[3]", "b.c.d"]).as_deref(),
            Some(r#"{"a":[null,null,{"x":1},1],"b":{"c":{"d":1}}}"#)
        );
        assert_eq!(w(&[]).as_deref(), Some("{}"));
    }
}
