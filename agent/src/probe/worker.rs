//! The probe worker: one task per probe of one running container, driving a
//! [`ProbeState`] with the wall clock and telling the supervisor when the
//! verdict flips.
//!
//! ```text
//!   loop { sleep until next_due ─▶ check::run ─▶ observe ─▶ flip? ─▶ ProbeReport }
//! ```
//!
//! The supervisor cancels the worker when the container stops or is replaced;
//! the next container gets fresh workers, so probing starts over (initial
//! delay included). A liveness worker stops by itself once it reports a
//! failure: the container is about to be killed.

use std::sync::Arc;

use drover_manifest::{Container, Probe};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{check, ProbeKind, ProbeState, Timing, Verdict};
use crate::runtime::{now_unix_ms, Runtime, UnixMs};

/// A probe's verdict flipped for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub replica: String,
    pub container_id: String,
    pub kind: ProbeKind,
    pub verdict: Verdict,
    /// Why the probe failed (empty on success).
    pub message: String,
}

/// What a worker probes.
#[derive(Debug, Clone)]
pub struct Target {
    pub replica: String,
    pub container_id: String,
    pub started_unix_ms: UnixMs,
    pub container: Container,
}

/// Start probing `target` until `cancel`; flips go to `reports`.
pub fn spawn<R: Runtime>(
    runtime: Arc<R>,
    target: Target,
    kind: ProbeKind,
    probe: Probe,
    reports: mpsc::Sender<ProbeReport>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = run(runtime, target, kind, probe, reports) => {}
        }
    });
}

async fn run<R: Runtime>(
    runtime: Arc<R>,
    target: Target,
    kind: ProbeKind,
    probe: Probe,
    reports: mpsc::Sender<ProbeReport>,
) {
    let timing = Timing::from_probe(&probe);
    let mut state = ProbeState::new(kind, timing, target.started_unix_ms);
    loop {
        let wait = (state.next_due() - now_unix_ms()).max(0);
        tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
        let started = now_unix_ms();
        let result = check::run(
            runtime.as_ref(),
            &target.replica,
            &target.container,
            &probe.handler,
            timing.timeout(),
        )
        .await;
        let finished = now_unix_ms();
        crate::metrics::get().probe(kind, &result);
        debug!(replica = %target.replica, probe = kind.as_str(), ?result, "probed");
        let Some(change) = state.observe(started, finished, result) else {
            continue;
        };
        info!(replica = %target.replica, container = %target.container_id, probe = kind.as_str(),
            verdict = ?change.verdict, message = %change.message, "probe verdict changed");
        let report = ProbeReport {
            replica: target.replica.clone(),
            container_id: target.container_id.clone(),
            kind,
            verdict: change.verdict,
            message: change.message,
        };
        if reports.send(report).await.is_err() {
            return;
        }
        if kind == ProbeKind::Liveness && change.verdict == Verdict::Failure {
            return;
        }
    }
}
