//! Durations as people type and read them, one grammar for every binary.
//!
//! Flags (`--timeout 90s`, `--node-timeout 3s`) and annotations
//! (`drover.io/restart-backoff-max: 1m30s`) are parsed here with
//! [`humantime`]'s grammar: numbers with units, fractions and spaces allowed
//! (`500ms`, `1.5s`, `1m30s`, `2h`, `1d`). A bare number counts as seconds, as
//! kubectl's `--request-timeout` and `--timeout=0` have it.

use std::time::Duration;

/// Parse `text` as a duration, or say in one sentence what is wrong with it.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration (expected e.g. 500ms, 10s, 1m30s)".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| {
        let why = match e {
            humantime::DurationError::InvalidCharacter(_) => "an unexpected character".to_string(),
            humantime::DurationError::NumberExpected(_) => "a unit without a number".to_string(),
            humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                "a number without a unit".to_string()
            }
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("the unknown unit {unit:?}")
            }
            humantime::DurationError::NumberOverflow => "a number too large".to_string(),
            humantime::DurationError::Empty => "nothing in it".to_string(),
        };
        format!("invalid duration {s:?}: it has {why} (expected e.g. 500ms, 10s, 1m30s)")
    })
}

/// [`parse`], refusing zero: validities, TTLs and wait bounds (`365d`, `12h`).
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    match parse(text)? {
        d if d.is_zero() => Err(format!(
            "{:?} is zero; give a duration longer than zero",
            text.trim()
        )),
        d => Ok(d),
    }
}

/// `2s` or `250ms`: how drover's own messages show a configured wait.
pub fn short(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_parse_like_kubectl_flags() {
        assert_eq!(parse("10s"), Ok(ms(10_000)));
        assert_eq!(parse("500ms"), Ok(ms(500)));
        assert_eq!(parse("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse("1m 30s"), Ok(ms(90_000)));
        assert_eq!(parse("1.5s"), Ok(ms(1500)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse(" 250ms "), Ok(ms(250)));
        assert_eq!(parse("3"), Ok(ms(3000)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert_eq!(
            parse("10x").unwrap_err(),
            "invalid duration \"10x\": it has the unknown unit \"x\" (expected e.g. 500ms, 10s, 1m30s)"
        );
        assert!(parse("1.5")
            .unwrap_err()
            .contains("a number without a unit"));
        assert!(parse("s").unwrap_err().contains("a unit without a number"));
        for bad in ["", "-1s", "abc", "1e999s", "99999999999999999999999s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn validities_must_be_longer_than_zero() {
        assert_eq!(
            parse_positive("365d"),
            Ok(Duration::from_secs(365 * 86_400))
        );
        assert_eq!(parse_positive("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(
            parse_positive("0s").unwrap_err(),
            "\"0s\" is zero; give a duration longer than zero"
        );
        assert!(parse_positive("soon").is_err());
    }

    #[test]
    fn short_shows_seconds_or_milliseconds() {
        assert_eq!(short(ms(2000)), "2s");
        assert_eq!(short(ms(250)), "250ms");
        assert_eq!(short(ms(1500)), "1500ms");
    }
}
