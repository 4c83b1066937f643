//! The one error type of the crate: a policy that was refused, with where and what to fix.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Why a policy was refused. Administrators edit policies by hand under pressure, so every error
/// carries the line and column (1-based) of the offending value where one is known, names the
/// key, and says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy file, when the policy was loaded from one ([`crate::Policy::load`]).
    pub file: Option<PathBuf>,
    /// 1-based line of the offending key or value.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending key or value.
    pub column: Option<usize>,
    /// What is wrong and how to fix it; lowercase, no trailing period.
    pub message: String,
}

impl PolicyError {
    /// An error at a byte range of `text` (as reported by `toml::Spanned`).
    pub(crate) fn at(text: &str, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let (line, column) = line_col(text, span.start);
        PolicyError {
            file: None,
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }

    /// An error with no position (I/O).
    pub(crate) fn plain(message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: None,
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// Translates a TOML syntax or shape error, keeping its position and saying "key" rather
    /// than serde's "field" (a policy has keys; notifications have fields).
    pub(crate) fn from_toml(text: &str, err: &toml::de::Error) -> PolicyError {
        let mut message = err
            .message()
            .trim()
            .replace("unknown field", "unknown key")
            .replace("missing field", "missing key")
            .replace("expected i64", "expected an integer");
        if let Some(hint) = tidewire_core::tomlfile::nearest_key(&message) {
            message.push_str(&format!("; did you mean `{hint}`?"));
        }
        let at = err.span().and_then(|s| text.get(s.start..)).unwrap_or("");
        if message.ends_with("expected a sequence") {
            if at.starts_with('[') && !at.starts_with("[[") {
                message.push_str("; write `[[rule]]` or `[[standing_consent]]` with double brackets, once per entry");
            } else {
                message.push_str("; write a list in brackets, e.g. [\"narrative\"]");
            }
        } else if message == "missing key `version`" {
            message.push_str("; add `version = 1` at the top and raise it on every change");
        } else if message.ends_with("expected a string") {
            message.push_str("; put the value in quotes");
        }
        match err.span() {
            Some(span) => PolicyError::at(text, span, message),
            None => PolicyError::plain(message),
        }
    }

    /// The same error, attributed to a file.
    pub(crate) fn in_file(mut self, file: PathBuf) -> PolicyError {
        self.file = Some(file);
        self
    }
}

use tidewire_core::tomlfile::line_col;

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for PolicyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_the_house_format() {
        let e = PolicyError {
            file: None,
            line: Some(12),
            column: Some(3),
            message:
                "rule `x`: unknown generaliser `rnd:1`; use round:N, year, prefix:N or country-only"
                    .into(),
        };
        assert_eq!(
            e.to_string(),
            "line 12, column 3: rule `x`: unknown generaliser `rnd:1`; use round:N, year, prefix:N or country-only"
        );
        let e = e.in_file("/etc/tidewire/policy.toml".into());
        assert!(
            e.to_string()
                .starts_with("/etc/tidewire/policy.toml: line 12, column 3: ")
        );
        assert_eq!(PolicyError::plain("x").to_string(), "x");
    }
}
