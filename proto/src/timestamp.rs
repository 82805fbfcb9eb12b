//! Wall-clock times on the wire are Unix milliseconds (`*_unix_ms`); this
//! module turns them into the text forms Kubernetes and Docker use, with the
//! [`time`] crate doing the calendar work.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

fn utc(unix_ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)).ok()
}

/// `2024-06-01T12:00:00Z`, as Kubernetes writes `creationTimestamp`.
pub fn rfc3339(unix_ms: i64) -> String {
    utc(unix_ms)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_ms} (unix ms)"))
}

/// `Sat, 01 Jun 2024 12:00:00 +0000`, as `kubectl describe` shows times.
pub fn rfc1123z(unix_ms: i64) -> String {
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] +0000"
    );
    utc(unix_ms)
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{unix_ms} (unix ms)"))
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (any offset, any
/// fraction), or `None` for text that is not one or for a time before 1970
/// (Docker's `0001-01-01T00:00:00Z` means "never").
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()?;
    (ms >= 0).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-06-01T12:00:00Z, a Saturday.
    const T0: i64 = 1_717_243_200_000;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(rfc3339(T0), "2024-06-01T12:00:00Z");
        assert_eq!(rfc3339(T0 + 999), "2024-06-01T12:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc1123z(T0 + 1_999), "Sat, 01 Jun 2024 12:00:01 +0000");
        assert_eq!(rfc1123z(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc3339(i64::MAX), format!("{} (unix ms)", i64::MAX));
    }

    #[test]
    fn docker_times_parse_to_milliseconds() {
        assert_eq!(parse_rfc3339_ms("2024-06-01T12:00:00Z"), Some(T0));
        assert_eq!(
            parse_rfc3339_ms("2024-06-01T12:00:00.123456789Z"),
            Some(T0 + 123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-06-01T14:00:00.5+02:00"),
            Some(T0 + 500)
        );
        assert_eq!(parse_rfc3339_ms("0001-01-01T00:00:00Z"), None);
        for bad in ["", "yesterday", "2024-06-01", "2024-13-01T00:00:00Z"] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }
}
