//! Liveness and readiness probes: a pure state machine per probe, and the
//! runner that feeds it.
//!
//! ```text
//!   container started ──▶ ProbeState::new(kind, timing, started)
//!                              │
//!            ┌─────────────────▼──────────────────┐
//!            │ next_due(): started + initialDelay, │◀── worker sleeps until then
//!            │   then every periodSeconds          │
//!            └─────────────────┬──────────────────┘
//!                              │ check::run (exec | httpGet | tcpSocket),
//!                              │ cut off after timeoutSeconds
//!            ┌─────────────────▼──────────────────┐
//!            │ observe(start, finish, result)      │── Some(Change) ─▶ supervisor
//!            │   failureThreshold failures in a row │   (readiness → READY,
//!            │   → Failure; successThreshold        │    liveness failure → kill,
//!            │   successes in a row → Success       │    restart with backoff)
//!            └────────────────────────────────────┘
//! ```
//!
//! The rules are Kubernetes' (kubelet `prober/worker.go`): nothing is probed
//! before `initialDelaySeconds`; a result that took longer than
//! `timeoutSeconds` is a failure; the verdict flips only after the threshold
//! of consecutive opposite results; readiness starts *not ready* and liveness
//! starts *healthy*. A container without a readiness probe is ready as soon
//! as it runs (that is decided in [`crate::status`], not here).
//!
//! [`ProbeState`] reads no clock: every time is an argument, so the unit tests
//! below replay exact sequences. [`worker`] is the thin async loop around it
//! and [`check`] carries out one probe against a runtime.

pub mod check;
mod insecure_tls;
pub mod worker;

use drover_manifest::Probe;

use crate::runtime::UnixMs;

/// Which probe: they differ in their initial verdict and in what a failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// As kubelet words it in events: `"Liveness"`, `"Readiness"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// The standing conclusion of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
}

/// What one probe attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    /// Why it failed, in one phrase ("HTTP probe failed with statuscode: 500").
    Failure(String),
}

/// A probe's schedule and thresholds, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay_ms: i64,
    pub period_ms: i64,
    pub timeout_ms: i64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

impl Timing {
    /// From the manifest's probe. Values the controller should have refused
    /// (a zero period, timeout or threshold) are raised to 1 rather than
    /// making the probe spin or never conclude.
    pub fn from_probe(p: &Probe) -> Timing {
        let secs = |s: u32| i64::from(s) * 1000;
        Timing {
            initial_delay_ms: secs(p.initial_delay_seconds),
            period_ms: secs(p.period_seconds.max(1)),
            timeout_ms: secs(p.timeout_seconds.max(1)),
            failure_threshold: p.failure_threshold.max(1),
            success_threshold: p.success_threshold.max(1),
        }
    }

    /// `timeoutSeconds` as a duration, for the runner's cut-off.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.max(0) as u64)
    }
}

/// The verdict flipped, or was reached for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub verdict: Verdict,
    /// The failure that decided it (empty for a success).
    pub message: String,
}

/// One probe of one container, from its start until it is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    kind: ProbeKind,
    timing: Timing,
    started_ms: UnixMs,
    verdict: Verdict,
    /// Whether a threshold was ever reached: until then the verdict is only
    /// the starting assumption, and reaching it counts as a change (so a
    /// readiness probe that never passed still reports why).
    decided: bool,
    /// The last result and how many times in a row it came.
    last: Option<Verdict>,
    run: u32,
    next_due_ms: UnixMs,
}

impl ProbeState {
    /// The probe of a container that started at `started_ms`.
    pub fn new(kind: ProbeKind, timing: Timing, started_ms: UnixMs) -> ProbeState {
        ProbeState {
            kind,
            timing,
            started_ms,
            verdict: match kind {
                ProbeKind::Liveness => Verdict::Success,
                ProbeKind::Readiness => Verdict::Failure,
            },
            decided: false,
            last: None,
            run: 0,
            next_due_ms: started_ms.saturating_add(timing.initial_delay_ms),
        }
    }

    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// The standing verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// When the next probe should start.
    pub fn next_due(&self) -> UnixMs {
        self.next_due_ms
    }

    /// Account for a probe that ran from `started_at` to `finished_at`.
    /// Returns the change when the verdict flips.
    pub fn observe(
        &mut self,
        started_at: UnixMs,
        finished_at: UnixMs,
        result: ProbeResult,
    ) -> Option<Change> {
        if started_at < self.started_ms.saturating_add(self.timing.initial_delay_ms) {
            // Too early to count (kubelet skips probes inside the initial
            // delay); the first due time stays the end of the delay.
            return None;
        }
        // Like kubelet's ticker, a slow probe skips the ticks it overran.
        let period = self.timing.period_ms.max(1);
        let base = started_at.max(self.next_due_ms);
        let overran = (finished_at - base).max(0);
        self.next_due_ms = base + (overran / period + 1) * period;
        let (outcome, message) = if finished_at - started_at > self.timing.timeout_ms {
            (
                Verdict::Failure,
                format!(
                    "probe timed out after {}s",
                    self.timing.timeout_ms.div_euclid(1000)
                ),
            )
        } else {
            match result {
                ProbeResult::Success => (Verdict::Success, String::new()),
                ProbeResult::Failure(m) => (Verdict::Failure, m),
            }
        };
        if self.last == Some(outcome) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(outcome);
            self.run = 1;
        }
        let threshold = match outcome {
            Verdict::Success => self.timing.success_threshold,
            Verdict::Failure => self.timing.failure_threshold,
        };
        if self.run < threshold || (self.decided && self.verdict == outcome) {
            return None;
        }
        self.decided = true;
        self.verdict = outcome;
        Some(Change {
            verdict: outcome,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_manifest::ProbeHandler;

    const T0: UnixMs = 1_700_000_000_000;

    fn timing(delay: u32, period: u32, timeout: u32, fail: u32, succeed: u32) -> Timing {
        Timing::from_probe(&Probe {
            handler: ProbeHandler::Exec {
                command: vec!["true".into()],
            },
            initial_delay_seconds: delay,
            period_seconds: period,
            timeout_seconds: timeout,
            failure_threshold: fail,
            success_threshold: succeed,
        })
    }

    fn ok() -> ProbeResult {
        ProbeResult::Success
    }

    fn bad(m: &str) -> ProbeResult {
        ProbeResult::Failure(m.into())
    }

    /// Run one probe at its due time, taking `took` ms; return the change.
    fn step(p: &mut ProbeState, took: i64, r: ProbeResult) -> Option<Change> {
        let at = p.next_due();
        p.observe(at, at + took, r)
    }

    #[test]
    fn readiness_starts_not_ready_and_liveness_healthy() {
        let t = timing(0, 10, 1, 3, 1);
        assert_eq!(
            ProbeState::new(ProbeKind::Readiness, t, T0).verdict(),
            Verdict::Failure
        );
        assert_eq!(
            ProbeState::new(ProbeKind::Liveness, t, T0).verdict(),
            Verdict::Success
        );
    }

    #[test]
    fn first_probe_waits_for_the_initial_delay_then_follows_the_period() {
        let mut p = ProbeState::new(ProbeKind::Readiness, timing(5, 2, 1, 3, 1), T0);
        assert_eq!(p.next_due(), T0 + 5_000);
        assert_eq!(
            step(&mut p, 30, ok()),
            Some(Change {
                verdict: Verdict::Success,
                message: String::new()
            })
        );
        assert_eq!(p.next_due(), T0 + 7_000);
        step(&mut p, 30, ok());
        assert_eq!(p.next_due(), T0 + 9_000);
    }

    #[test]
    fn a_probe_inside_the_initial_delay_does_not_count() {
        let mut p = ProbeState::new(ProbeKind::Readiness, timing(5, 1, 1, 3, 1), T0);
        assert_eq!(p.observe(T0 + 1_000, T0 + 1_010, ok()), None);
        assert_eq!(p.verdict(), Verdict::Failure);
        // It is not rescheduled earlier than the delay.
        assert_eq!(p.next_due(), T0 + 5_000);
    }

    #[test]
    fn no_initial_delay_probes_at_once() {
        let p = ProbeState::new(ProbeKind::Liveness, timing(0, 10, 1, 3, 1), T0);
        assert_eq!(p.next_due(), T0);
    }

    #[test]
    fn liveness_fails_only_after_failure_threshold_consecutive_failures() {
        let mut p = ProbeState::new(ProbeKind::Liveness, timing(0, 1, 1, 3, 1), T0);
        assert_eq!(step(&mut p, 10, bad("exit 1")), None);
        assert_eq!(step(&mut p, 10, bad("exit 1")), None);
        assert_eq!(p.verdict(), Verdict::Success);
        let change = step(&mut p, 10, bad("exit 2")).expect("third failure flips");
        assert_eq!(change.verdict, Verdict::Failure);
        assert_eq!(change.message, "exit 2");
        assert_eq!(p.verdict(), Verdict::Failure);
        // Further failures are not new changes.
        assert_eq!(step(&mut p, 10, bad("exit 1")), None);
    }

    #[test]
    fn a_success_in_between_resets_the_failure_count() {
        let mut p = ProbeState::new(ProbeKind::Liveness, timing(0, 1, 1, 3, 1), T0);
        step(&mut p, 10, bad("x"));
        step(&mut p, 10, bad("x"));
        step(&mut p, 10, ok());
        assert_eq!(step(&mut p, 10, bad("x")), None);
        assert_eq!(step(&mut p, 10, bad("x")), None);
        assert_eq!(p.verdict(), Verdict::Success);
        assert!(step(&mut p, 10, bad("x")).is_some());
    }

    #[test]
    fn readiness_needs_success_threshold_consecutive_successes() {
        let mut p = ProbeState::new(ProbeKind::Readiness, timing(0, 1, 1, 3, 3), T0);
        assert_eq!(step(&mut p, 10, ok()), None);
        assert_eq!(step(&mut p, 10, ok()), None);
        // A failure restarts the count even though the verdict stays.
        assert_eq!(step(&mut p, 10, bad("refused")), None);
        assert_eq!(step(&mut p, 10, ok()), None);
        assert_eq!(step(&mut p, 10, ok()), None);
        assert_eq!(p.verdict(), Verdict::Failure);
        assert_eq!(
            step(&mut p, 10, ok()).map(|c| c.verdict),
            Some(Verdict::Success)
        );
    }

    #[test]
    fn a_flapping_readiness_probe_follows_its_thresholds() {
        // failureThreshold 2, successThreshold 2: single blips never flip.
        let mut p = ProbeState::new(ProbeKind::Readiness, timing(0, 1, 1, 2, 2), T0);
        let mut verdicts = Vec::new();
        let sequence = [
            true, false, true, true, false, true, false, false, true, false, true, true,
        ];
        for up in sequence {
            let r = if up { ok() } else { bad("503") };
            step(&mut p, 5, r);
            verdicts.push(p.verdict() == Verdict::Success);
        }
        assert_eq!(
            verdicts,
            [false, false, false, true, true, true, true, false, false, false, false, true]
        );
    }

    #[test]
    fn the_first_decision_is_reported_even_when_it_matches_the_start() {
        // Readiness starts failed; reaching failureThreshold still reports
        // the failure once, so the status can say why it is not ready.
        let mut p = ProbeState::new(ProbeKind::Readiness, timing(0, 1, 1, 2, 1), T0);
        assert_eq!(step(&mut p, 10, bad("refused")), None);
        let first = step(&mut p, 10, bad("refused")).expect("first decision");
        assert_eq!(
            (first.verdict, first.message.as_str()),
            (Verdict::Failure, "refused")
        );
        assert_eq!(step(&mut p, 10, bad("refused")), None);
        // Liveness starts healthy: its first success is reported once too.
        let mut l = ProbeState::new(ProbeKind::Liveness, timing(0, 1, 1, 3, 1), T0);
        assert!(step(&mut l, 10, ok()).is_some());
        assert_eq!(step(&mut l, 10, ok()), None);
    }

    #[test]
    fn a_result_later_than_the_timeout_is_a_failure() {
        let mut p = ProbeState::new(ProbeKind::Readiness, timing(0, 10, 2, 1, 1), T0);
        assert_eq!(
            step(&mut p, 1_999, ok()).map(|c| c.verdict),
            Some(Verdict::Success)
        );
        let change = step(&mut p, 2_500, ok()).expect("a timeout fails");
        assert_eq!(change.verdict, Verdict::Failure);
        assert_eq!(change.message, "probe timed out after 2s");
    }

    #[test]
    fn a_probe_slower_than_the_period_skips_the_ticks_it_overran() {
        let mut p = ProbeState::new(ProbeKind::Liveness, timing(0, 1, 5, 3, 1), T0);
        p.observe(T0, T0 + 2_500, ok());
        assert_eq!(p.next_due(), T0 + 3_000);
        // Exactly on a tick: the next one.
        p.observe(T0 + 3_000, T0 + 4_000, ok());
        assert_eq!(p.next_due(), T0 + 5_000);
    }

    #[test]
    fn zero_values_are_raised_to_one() {
        let t = timing(0, 0, 0, 0, 0);
        assert_eq!(
            (
                t.period_ms,
                t.timeout_ms,
                t.failure_threshold,
                t.success_threshold
            ),
            (1_000, 1_000, 1, 1)
        );
    }
}
