//! Restart backoff: how long a crashed (or unstartable) replica waits before
//! the agent tries again.
//!
//! ```text
//!   exit ─▶ delay = initial            (first crash, or it ran ≥ reset_after)
//!   exit ─▶ delay = min(2 × previous, max)
//!
//!   defaults: 1s, 2s, 4s, 8s, 16s, 30s, 30s, …   reset after 60 s running
//! ```
//!
//! A deployment may override `initial` and `max` with the annotations
//! `drover.io/restart-backoff-initial` and `drover.io/restart-backoff-max`
//! (Go-style durations: `500ms`, `2s`, `1m`, `1m30s`). An unusable value falls
//! back to the default and produces a warning for the log. Everything here is
//! pure: the caller passes in how long the container ran.

use drover_proto::duration;
use std::collections::BTreeMap;
use std::time::Duration;

/// Annotation overriding the first restart delay.
pub const ANNOTATION_INITIAL: &str = "drover.io/restart-backoff-initial";
/// Annotation overriding the largest restart delay.
pub const ANNOTATION_MAX: &str = "drover.io/restart-backoff-max";

/// The SPEC's defaults: 1 s doubling to 30 s, reset after 60 s running.
pub const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(60);

/// Longest delay an annotation may ask for; beyond it a typo (`1h` for `1m`)
/// would silently park a replica for hours.
const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// A deployment's restart backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// A container that ran at least this long starts over at `initial`.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: DEFAULT_INITIAL,
            max: DEFAULT_MAX,
            reset_after: DEFAULT_RESET_AFTER,
        }
    }
}

impl BackoffPolicy {
    /// The policy a deployment's annotations ask for, with one warning per
    /// annotation that could not be honoured.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> (BackoffPolicy, Vec<String>) {
        let mut policy = BackoffPolicy::default();
        let mut warnings = Vec::new();
        let mut read = |key: &str, default: Duration| -> Duration {
            let Some(text) = annotations.get(key) else {
                return default;
            };
            match duration::parse(text) {
                Ok(d) if d.is_zero() => {
                    warnings.push(format!(
                        "annotation {key}={text:?} must be longer than zero; using {}",
                        duration::short(default)
                    ));
                    default
                }
                Ok(d) if d > LONGEST => {
                    warnings.push(format!(
                        "annotation {key}={text:?} is longer than 24h; using {}",
                        duration::short(default)
                    ));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    warnings.push(format!(
                        "annotation {key}={text:?}: {e}; using {}",
                        duration::short(default)
                    ));
                    default
                }
            }
        };
        policy.initial = read(ANNOTATION_INITIAL, DEFAULT_INITIAL);
        policy.max = read(ANNOTATION_MAX, DEFAULT_MAX);
        if policy.max < policy.initial {
            warnings.push(format!(
                "restart backoff max {} is below initial {}; using {} for both",
                duration::short(policy.max),
                duration::short(policy.initial),
                duration::short(policy.initial)
            ));
            policy.max = policy.initial;
        }
        (policy, warnings)
    }

    /// The delay before the next attempt.
    ///
    /// `previous` is the delay used before the last attempt (None: there was
    /// none); `ran_for` is how long the last container ran (None: it never
    /// started, e.g. the image could not be pulled).
    pub fn next_delay(&self, previous: Option<Duration>, ran_for: Option<Duration>) -> Duration {
        let reset = ran_for.is_some_and(|r| r >= self.reset_after);
        match previous {
            Some(prev) if !reset => prev.saturating_mul(2).clamp(self.initial, self.max),
            _ => self.initial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(pairs: &[(&str, &str)]) -> (BackoffPolicy, Vec<String>) {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BackoffPolicy::from_annotations(&map)
    }

    #[test]
    fn default_schedule_doubles_from_one_second_to_thirty() {
        let p = BackoffPolicy::default();
        let mut delays = Vec::new();
        let mut prev = None;
        for _ in 0..8 {
            let d = p.next_delay(prev, Some(ms(100)));
            delays.push(d.as_secs());
            prev = Some(d);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn sixty_seconds_of_running_resets_the_delay() {
        let p = BackoffPolicy::default();
        assert_eq!(
            p.next_delay(Some(ms(16_000)), Some(Duration::from_secs(60))),
            ms(1000)
        );
        assert_eq!(
            p.next_delay(Some(ms(16_000)), Some(Duration::from_secs(59))),
            ms(30_000)
        );
    }

    #[test]
    fn a_start_that_never_ran_keeps_doubling() {
        let p = BackoffPolicy::default();
        assert_eq!(p.next_delay(None, None), ms(1000));
        assert_eq!(p.next_delay(Some(ms(1000)), None), ms(2000));
    }

    #[test]
    fn annotations_override_initial_and_max() {
        let (p, warnings) = policy(&[(ANNOTATION_INITIAL, "500ms"), (ANNOTATION_MAX, "2s")]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(p.initial, ms(500));
        assert_eq!(p.max, ms(2000));
        let d1 = p.next_delay(None, None);
        let d2 = p.next_delay(Some(d1), None);
        let d3 = p.next_delay(Some(d2), None);
        let d4 = p.next_delay(Some(d3), None);
        assert_eq!([d1, d2, d3, d4], [ms(500), ms(1000), ms(2000), ms(2000)]);
    }

    #[test]
    fn invalid_annotations_fall_back_with_a_warning() {
        let (p, warnings) = policy(&[(ANNOTATION_INITIAL, "fast"), (ANNOTATION_MAX, "10x")]);
        assert_eq!(p, BackoffPolicy::default());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains(ANNOTATION_INITIAL), "{warnings:?}");
        assert!(warnings[1].contains("unknown unit"), "{warnings:?}");

        let (p, warnings) = policy(&[(ANNOTATION_INITIAL, "0s")]);
        assert_eq!(p.initial, DEFAULT_INITIAL);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn max_below_initial_is_raised_to_initial() {
        let (p, warnings) = policy(&[(ANNOTATION_INITIAL, "1m"), (ANNOTATION_MAX, "2s")]);
        assert_eq!(p.initial, Duration::from_secs(60));
        assert_eq!(p.max, Duration::from_secs(60));
        assert_eq!(warnings.len(), 1);
    }
}
