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

/// Formats Unix milliseconds as RFC 3339 in UTC: whole seconds as `2027-05-28T00:00:00Z`,
/// others always with three digits of milliseconds (`…T14:40:55.210Z`), so that times line up
/// in a column.
pub fn format_ms(ms: i64) -> String {
    let Some(t) = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok() else {
        return format!("@{ms}ms");
    };
    let Some(whole) = t
        .replace_nanosecond(0)
        .ok()
        .and_then(|w| w.format(&Rfc3339).ok())
    else {
        return format!("@{ms}ms");
    };
    match ms.rem_euclid(1000) {
        0 => whole,
        frac => format!("{}.{frac:03}Z", whole.trim_end_matches('Z')),
    }
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
        assert_eq!(format_ms(ms + 210), "2027-05-28T00:00:00.210Z");
        assert_eq!(format_ms(ms + 5), "2027-05-28T00:00:00.005Z");
        assert_eq!(
            parse_rfc3339_ms("2027-05-28T00:00:00.210Z").unwrap(),
            ms + 210
        );
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rejects_garbage_with_example() {
        let err = parse_rfc3339_ms("tomorrow").unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }
}
