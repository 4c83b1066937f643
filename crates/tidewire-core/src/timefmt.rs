//! RFC 3339 timestamps as Unix milliseconds, the one time representation on the wire.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses an RFC 3339 timestamp (`2027-05-28T00:00:00Z`) into Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        format!("`{text}` is not an RFC 3339 time such as 2027-05-28T00:00:00Z ({e})")
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Formats Unix milliseconds as RFC 3339 in UTC.
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339() {
        let ms = parse_rfc3339_ms("2027-05-28T00:00:00Z").unwrap();
        assert_eq!(ms, 1_811_462_400_000);
        assert_eq!(format_ms(ms), "2027-05-28T00:00:00Z");
    }

    #[test]
    fn rejects_garbage_with_example() {
        let err = parse_rfc3339_ms("tomorrow").unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }
}
