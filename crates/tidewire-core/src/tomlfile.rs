//! TOML errors as a user fixes them: one line, with the line and column of the problem, "key"
//! rather than serde's "field", and the nearest known key for a misspelt one.

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Describes a TOML syntax or shape error in `text`: `line 5, column 1: unknown key `listne`,
/// expected one of …; did you mean `listen`?`.
pub fn describe(text: &str, err: &toml::de::Error) -> String {
    let mut message = err
        .message()
        .trim()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key");
    if let Some(hint) = nearest_key(&message) {
        message.push_str(&format!("; did you mean `{hint}`?"));
    }
    match err.span() {
        // A key missing from the top level: the "place" is the whole file.
        Some(span) if span.start == 0 && message.starts_with("missing key") => message,
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// For "unknown key `x`, expected one of `a`, `b`": the expected key closest to `x`, if it is
/// near enough to be a misspelling.
pub fn nearest_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown key `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected")?.1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (distance(unknown, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_owned())
}

/// Levenshtein distance, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        listen: String,
        data_dir: String,
    }

    fn err(text: &str) -> String {
        describe(text, &toml::from_str::<Shape>(text).expect_err("refused"))
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_place_and_the_key_meant() {
        let text = "data_dir = \"d\"\nlistne = \"x\"\n";
        assert_eq!(
            err(text),
            "line 2, column 1: unknown key `listne`, expected `listen` or `data_dir`; did you mean `listen`?"
        );
    }

    #[test]
    fn an_unrelated_key_gets_no_guess_and_syntax_errors_keep_their_place() {
        assert!(!err("data_dir = \"d\"\nlisten = \"x\"\nport = 1\n").contains("did you mean"));
        assert!(err("data_dir = \"d\"\nlisten = [\"x\"\n").starts_with("line 2, column "));
        assert_eq!(err("listen = \"x\"\n"), "missing key `data_dir`");
    }

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "ab\ncdé\nxyz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        let x = text.find('x').unwrap();
        assert_eq!(line_col(text, x), (3, 1));
        assert_eq!(line_col(text, x + 1), (3, 2));
        // 'é' is two bytes but one column; an offset inside it counts from its start.
        assert_eq!(line_col(text, text.find('é').unwrap() + 2), (2, 4));
        assert_eq!(line_col(text, text.find('é').unwrap() + 1), (2, 3));
    }
}
