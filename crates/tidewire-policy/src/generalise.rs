//! Generalisers: the coarser value a destination gets instead of the original (a position to
//! the degree, a date of birth to the year). Each one refuses values it does not understand, and
//! a refusal redacts the field: a policy never sends more than it meant to.

use serde_json::{Number, Value};
use tidewire_core::fields::{FieldPath, Segment};

/// The generaliser names, for error messages.
pub(crate) const GENERALISER_HELP: &str = "use round:N, year, prefix:N or country-only";

/// A parsed generaliser.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Generaliser {
    /// The method as written (`round:0.1`); recorded in transformations and explanations.
    text: String,
    kind: Method,
}

#[derive(Debug, Clone, PartialEq)]
enum Method {
    /// Round a number to the nearest multiple of `step`; `decimals` as written in the step.
    Round { step: f64, decimals: usize },
    /// An ISO date or datetime to its year.
    Year,
    /// A string to its first N characters.
    Prefix(usize),
    /// An address to its country.
    CountryOnly,
}

/// What a generaliser made of one value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Send this value instead.
    Value(Value),
    /// Send the original unchanged (`country-only` on a `country` leaf).
    Keep,
    /// The generaliser does not apply; redact, for this reason.
    Refuse(String),
}

impl Generaliser {
    /// Parses `round:N`, `year`, `prefix:N` or `country-only`.
    pub(crate) fn parse(s: &str) -> Result<Generaliser, String> {
        let kind = match s.split_once(':') {
            None if s == "year" => Method::Year,
            None if s == "country-only" => Method::CountryOnly,
            Some(("round", n)) => {
                let bad = || {
                    format!(
                        "generaliser `{s}`: the step must be a positive decimal number, e.g. round:1 or round:0.1"
                    )
                };
                if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit() || c == '.') {
                    return Err(bad());
                }
                let step: f64 = n.parse().map_err(|_| bad())?;
                if !step.is_finite() || step <= 0.0 {
                    return Err(bad());
                }
                let decimals = n.split_once('.').map_or(0, |(_, d)| d.len());
                Method::Round { step, decimals }
            }
            Some(("prefix", n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => Method::Prefix(n),
                _ => {
                    return Err(format!(
                        "generaliser `{s}`: N must be a whole number of characters above 0, e.g. prefix:3"
                    ));
                }
            },
            _ => return Err(format!("unknown generaliser `{s}`; {GENERALISER_HELP}")),
        };
        Ok(Generaliser {
            text: s.to_owned(),
            kind,
        })
    }

    /// The method as written, e.g. `round:1`.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// Generalises `value` at `path`; `pattern_depth` is the number of steps of the pattern that
    /// selected it (so `country-only` knows whether it sits on the address or under it).
    pub(crate) fn apply(&self, path: &FieldPath, pattern_depth: usize, value: &Value) -> Outcome {
        match &self.kind {
            Method::Round { step, decimals } => round(value, *step, *decimals),
            Method::Year => match value.as_str() {
                Some(s) if is_iso_date(s) => Outcome::Value(Value::String(s[..4].to_owned())),
                _ => Outcome::Refuse("`year` needs an iso date string such as 1979-03-02".into()),
            },
            Method::Prefix(n) => match value.as_str() {
                Some(s) => Outcome::Value(Value::String(s.chars().take(*n).collect())),
                None => Outcome::Refuse(format!("`{}` needs a string", self.text)),
            },
            Method::CountryOnly => country_only(path, pattern_depth, value),
        }
    }
}

/// `YYYY`, `YYYY-...`: four digits, then the end or a dash.
fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit) && (b.len() == 4 || b[4] == b'-')
}

fn round(value: &Value, step: f64, decimals: usize) -> Outcome {
    let Some(v) = value.as_f64() else {
        return Outcome::Refuse("`round` needs a number".into());
    };
    let q = (v / step).round() * step;
    if !q.is_finite() {
        return Outcome::Refuse("`round` gave no finite number".into());
    }
    if decimals == 0 && q.abs() < 9.0e15 {
        // A whole step gives a whole number: `6`, not `6.0`.
        return Outcome::Value(Value::from(q as i64));
    }
    // Cut binary noise (56 * 0.1 = 5.6000000000000005) to the decimals of the step.
    let cut: f64 = format!("{q:.decimals$}").parse().unwrap_or(q);
    let cut = if cut == 0.0 { 0.0 } else { cut };
    match Number::from_f64(cut) {
        Some(n) => Outcome::Value(Value::Number(n)),
        None => Outcome::Refuse("`round` gave no finite number".into()),
    }
}

fn country_only(path: &FieldPath, pattern_depth: usize, value: &Value) -> Outcome {
    let last_is_country = matches!(path.0.last(), Some(Segment::Key(k)) if k == "country");
    if path.0.len() > pattern_depth {
        // A leaf under a structured address: keep `country`, redact the rest.
        return if last_is_country {
            Outcome::Keep
        } else {
            Outcome::Refuse("`country-only` keeps only the `country` leaf of an address".into())
        };
    }
    if let Some(s) = value.as_str()
        && let Some((_, last)) = s.rsplit_once(',')
        && !last.trim().is_empty()
    {
        return Outcome::Value(Value::String(last.trim().to_owned()));
    }
    if last_is_country {
        return Outcome::Keep;
    }
    Outcome::Refuse(
        "`country-only` needs a comma-separated address ending in the country, or a `country` leaf"
            .into(),
    )
}

/// Steps of a pattern as written (`persons[*].address` has three).
pub(crate) fn pattern_depth(pattern: &str) -> usize {
    pattern.split('.').map(|p| 1 + p.matches('[').count()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn g(s: &str) -> Generaliser {
        Generaliser::parse(s).unwrap()
    }
    fn p(s: &str) -> FieldPath {
        s.parse().unwrap()
    }
    fn apply(gen_: &str, path: &str, pattern: &str, v: Value) -> Outcome {
        g(gen_).apply(&p(path), pattern_depth(pattern), &v)
    }

    #[test]
    fn round_to_whole_and_decimal_steps() {
        let lat = p("vessel.position.lat");
        assert_eq!(
            g("round:1").apply(&lat, 2, &json!(5.61)),
            Outcome::Value(json!(6))
        );
        assert_eq!(
            g("round:1").apply(&lat, 2, &json!(-0.19)),
            Outcome::Value(json!(0))
        );
        assert_eq!(
            g("round:0.1").apply(&lat, 2, &json!(5.61)),
            Outcome::Value(json!(5.6))
        );
        assert_eq!(
            g("round:0.1").apply(&lat, 2, &json!(-0.19)),
            Outcome::Value(json!(-0.2))
        );
        assert_eq!(
            g("round:0.5").apply(&lat, 2, &json!(5.8)),
            Outcome::Value(json!(6.0))
        );
        assert_eq!(
            g("round:10").apply(&lat, 2, &json!(214)),
            Outcome::Value(json!(210))
        );
        assert_eq!(
            g("round:0.25").apply(&lat, 2, &json!(1.3)),
            Outcome::Value(json!(1.25))
        );
    }

    #[test]
    fn round_refuses_non_numbers() {
        for v in [json!("5.61"), json!(true), json!(null)] {
            assert!(
                matches!(g("round:1").apply(&p("a"), 1, &v), Outcome::Refuse(_)),
                "{v}"
            );
        }
    }

    #[test]
    fn year_cuts_iso_dates_and_refuses_others() {
        for d in ["1979-03-02", "1979-03-02T10:00:00Z", "1979"] {
            assert_eq!(
                apply("year", "dob", "dob", json!(d)),
                Outcome::Value(json!("1979"))
            );
        }
        for v in [
            json!("02/03/1979"),
            json!("79-03-02"),
            json!(1979),
            json!("19790302"),
        ] {
            assert!(
                matches!(apply("year", "dob", "dob", v.clone()), Outcome::Refuse(_)),
                "{v}"
            );
        }
    }

    #[test]
    fn prefix_keeps_the_first_characters() {
        assert_eq!(
            apply("prefix:3", "imo", "imo", json!("9387421")),
            Outcome::Value(json!("938"))
        );
        assert_eq!(
            apply("prefix:3", "n", "n", json!("Zé")),
            Outcome::Value(json!("Zé"))
        );
        assert_eq!(
            apply("prefix:2", "n", "n", json!("Ñandú")),
            Outcome::Value(json!("Ña"))
        );
        assert!(matches!(
            apply("prefix:3", "n", "n", json!(9387421)),
            Outcome::Refuse(_)
        ));
    }

    #[test]
    fn country_only_on_strings_and_structured_addresses() {
        assert_eq!(
            apply(
                "country-only",
                "persons[0].address",
                "persons[*].address",
                json!("12 Rua X, Lisboa, PT")
            ),
            Outcome::Value(json!("PT"))
        );
        assert!(matches!(
            apply(
                "country-only",
                "persons[0].address",
                "persons[*].address",
                json!("Lisboa")
            ),
            Outcome::Refuse(_)
        ));
        assert!(matches!(
            apply(
                "country-only",
                "persons[0].address",
                "persons[*].address",
                json!("Lisboa, ")
            ),
            Outcome::Refuse(_)
        ));
        assert_eq!(
            apply(
                "country-only",
                "persons[0].address.country",
                "persons[*].address",
                json!("PT")
            ),
            Outcome::Keep
        );
        assert!(matches!(
            apply(
                "country-only",
                "persons[0].address.street",
                "persons[*].address",
                json!("12 Rua X, Lisboa")
            ),
            Outcome::Refuse(_)
        ));
        assert!(matches!(
            apply(
                "country-only",
                "persons[0].address.city",
                "persons[*].address",
                json!("Lisboa")
            ),
            Outcome::Refuse(_)
        ));
    }

    #[test]
    fn unknown_and_malformed_generalisers_are_refused_with_the_list() {
        let e = Generaliser::parse("rnd:1").unwrap_err();
        assert_eq!(
            e,
            "unknown generaliser `rnd:1`; use round:N, year, prefix:N or country-only"
        );
        for bad in [
            "round:0",
            "round:-1",
            "round:x",
            "round:",
            "round:1e3",
            "round:inf",
        ] {
            assert!(
                Generaliser::parse(bad).unwrap_err().contains("positive"),
                "{bad}"
            );
        }
        for bad in ["prefix:0", "prefix:x", "prefix:-2"] {
            assert!(
                Generaliser::parse(bad).unwrap_err().contains("prefix:3"),
                "{bad}"
            );
        }
        assert!(
            Generaliser::parse("year:2")
                .unwrap_err()
                .contains("unknown generaliser")
        );
        assert!(Generaliser::parse("Year").is_err());
    }

    #[test]
    fn pattern_depth_counts_steps() {
        assert_eq!(pattern_depth("narrative"), 1);
        assert_eq!(pattern_depth("persons[*].address"), 3);
        assert_eq!(pattern_depth("a[0][1].b.c"), 5);
    }
}
