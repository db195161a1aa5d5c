//! Times as every JSON route writes them: RFC 3339 in UTC, to the second
//! (`2026-12-07T03:25:00Z`), as the platforms Cairn's users come from write ISO 8601.

use time::OffsetDateTime;
use time::macros::format_description;

/// `ms` (milliseconds since the Unix epoch, as the log stamps times) in RFC 3339.
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// A time a caller sent: RFC 3339 (`2026-12-07T03:25:00Z`, any offset) or Unix seconds; in
/// milliseconds since the epoch. `None` when it is neither.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok().map(|v| v.saturating_mul(1000));
    }
    let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_612_700_999), "2026-12-07T03:05:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        // Beyond the calendar the time crate knows: the epoch, never a panic.
        assert_eq!(rfc3339(u64::MAX), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn callers_may_send_rfc3339_or_unix_seconds() {
        assert_eq!(parse_time("2026-12-07T03:05:00Z"), Some(1_796_612_700_000));
        assert_eq!(
            parse_time("2026-12-07T04:05:00+01:00"),
            Some(1_796_612_700_000)
        );
        assert_eq!(parse_time("1796612700"), Some(1_796_612_700_000));
        assert_eq!(
            parse_time(&rfc3339(1_796_612_700_000)),
            Some(1_796_612_700_000)
        );
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "-5", "1e9"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        // Before the epoch: not a time the log can hold.
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), None);
    }
}
