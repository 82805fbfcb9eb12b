//! The agent's Prometheus metrics: one registry and typed families, updated
//! with one line where things happen, served on `--metrics-listen`.
//!
//! ```text
//!   supervisor ── replicas by state (each publish), restarts, start/stop/remove time
//!   probe worker ── probe results by type and outcome
//!   docker runtime ── image pull time
//!   session ── session state, heartbeats sent / acknowledged
//!   usage sampler ── CPU and memory of the node and each replica
//!            │
//!            ▼
//!   metrics::get() ── GET /metrics ──▶ encode (Prometheus text 0.0.4)
//! ```
//!
//! Every family lives as long as the process: one agent per process (the
//! simulated fleets of `bench placement` share one, which they do not read).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use drover_proto::pb::{self, ReplicaState};

use crate::probe::{ProbeKind, ProbeResult};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Runtime operations and pulls: 1 ms to about 4.5 min (doubling).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

/// Every replica state, as the `state` label spells it.
pub const STATES: [&str; 6] = [
    "Pending",
    "Running",
    "CrashLoopBackOff",
    "Failed",
    "Terminating",
    "Gone",
];

/// Replicas per state, in [`STATES`]' order.
pub type StateCounts = [i64; STATES.len()];

/// Where a replica with this status is counted in [`StateCounts`].
pub fn state_slot(s: &pb::ReplicaStatus) -> usize {
    match s.state() {
        ReplicaState::Unspecified | ReplicaState::Pending => 0,
        ReplicaState::Running => 1,
        ReplicaState::CrashLoopBackOff => 2,
        ReplicaState::Failed => 3,
        ReplicaState::Terminating => 4,
        ReplicaState::Gone => 5,
    }
}

/// The replicas of `statuses` per state.
pub fn state_counts(statuses: &crate::status::StatusMap) -> StateCounts {
    let mut counts = StateCounts::default();
    for s in statuses.values() {
        counts[state_slot(s)] += 1;
    }
    counts
}

/// Where the session with the leader stands, as the `state` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Connecting, or waiting to reconnect.
    Disconnected,
    /// The stream is open; no assignment set yet.
    Opening,
    /// Assignments arrived: the leader knows this node.
    Established,
}

impl SessionState {
    const ALL: [SessionState; 3] = [
        SessionState::Disconnected,
        SessionState::Opening,
        SessionState::Established,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SessionState::Disconnected => "disconnected",
            SessionState::Opening => "opening",
            SessionState::Established => "established",
        }
    }
}

/// Every agent metric (names without the `drover_agent_` prefix).
pub struct Metrics {
    registry: Registry,
    enabled: AtomicBool,
    replicas: Family<Labels1, Gauge>,
    restarts: Counter,
    probe_results: Family<Labels2, Counter>,
    runtime_operation_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    image_pull_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    session_state: Family<Labels1, Gauge>,
    sessions: Counter,
    heartbeats_sent: Counter,
    heartbeats_acknowledged: Counter,
    node_cpu_cores: Gauge<f64, std::sync::atomic::AtomicU64>,
    node_memory_bytes: Gauge,
    replica_cpu_cores:
        Family<Vec<(&'static str, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>,
    replica_memory_bytes: Family<Vec<(&'static str, String)>, Gauge>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Turn metrics on or off for this process (on by default). An agent
/// started with an empty `--metrics-listen` turns them off: with nothing
/// served, nothing is recorded (the benches' "off" column).
pub fn set_enabled(on: bool) {
    get().enabled.store(on, Ordering::Relaxed);
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("drover_agent"),
            enabled: AtomicBool::new(true),
            replicas: Family::default(),
            restarts: Counter::default(),
            probe_results: Family::default(),
            runtime_operation_seconds: Family::new_with_constructor(seconds),
            image_pull_seconds: Family::new_with_constructor(seconds),
            session_state: Family::default(),
            sessions: Counter::default(),
            heartbeats_sent: Counter::default(),
            heartbeats_acknowledged: Counter::default(),
            node_cpu_cores: Gauge::default(),
            node_memory_bytes: Gauge::default(),
            replica_cpu_cores: Family::default(),
            replica_memory_bytes: Family::default(),
        };
        for state in STATES {
            let _ = m.replicas.get_or_create(&[("state", state)]);
        }
        for kind in ["liveness", "readiness"] {
            for outcome in ["success", "failure"] {
                let _ = m
                    .probe_results
                    .get_or_create(&[("probe", kind), ("outcome", outcome)]);
            }
        }
        for op in ["start", "stop", "remove", "pull"] {
            let _ = m
                .runtime_operation_seconds
                .get_or_create(&[("operation", op)]);
        }
        for outcome in ["success", "failure"] {
            let _ = m.image_pull_seconds.get_or_create(&[("outcome", outcome)]);
        }
        m.session(SessionState::Disconnected);
        let r = &mut m.registry;
        r.register("replicas", "Replicas on this node by state (Pending, Running, CrashLoopBackOff, Failed, Terminating, Gone)", m.replicas.clone());
        r.register(
            "restarts",
            "Containers that exited and are restarted after a backoff",
            m.restarts.clone(),
        );
        r.register(
            "probe_results",
            "Probe checks by probe type (liveness, readiness) and outcome (success, failure)",
            m.probe_results.clone(),
        );
        r.register(
            "runtime_operation_seconds",
            "Time of runtime operations by operation (start, including a pull; stop; remove; pull)",
            m.runtime_operation_seconds.clone(),
        );
        r.register(
            "image_pull_seconds",
            "Time of image pulls by outcome",
            m.image_pull_seconds.clone(),
        );
        r.register("session_state", "1 for the state the session with the leader is in (disconnected, opening, established), 0 for the others", m.session_state.clone());
        r.register(
            "sessions",
            "Sessions opened with a leader",
            m.sessions.clone(),
        );
        r.register(
            "heartbeats_sent",
            "Heartbeats sent to the leader",
            m.heartbeats_sent.clone(),
        );
        r.register(
            "heartbeats_acknowledged",
            "Heartbeats the leader acknowledged",
            m.heartbeats_acknowledged.clone(),
        );
        r.register(
            "node_cpu_cores",
            "CPU in use on the host, in cores (averaged over the last usage interval)",
            m.node_cpu_cores.clone(),
        );
        r.register(
            "node_memory_bytes",
            "Memory in use on the host (total minus available)",
            m.node_memory_bytes.clone(),
        );
        r.register(
            "replica_cpu_cores",
            "CPU in use by a replica, in cores (averaged over the last usage interval)",
            m.replica_cpu_cores.clone(),
        );
        r.register(
            "replica_memory_bytes",
            "Memory in use by a replica",
            m.replica_memory_bytes.clone(),
        );
        m
    }

    /// The replicas per state, as the supervisor just published them.
    pub fn replicas(&self, counts: &StateCounts) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        for (state, n) in STATES.iter().zip(counts) {
            self.replicas.get_or_create(&[("state", state)]).set(*n);
        }
    }

    /// A container exited and will be restarted.
    pub fn restart(&self) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        self.restarts.inc();
    }

    /// One probe check's result.
    pub fn probe(&self, kind: ProbeKind, result: &ProbeResult) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let outcome = match result {
            ProbeResult::Success => "success",
            ProbeResult::Failure(_) => "failure",
        };
        self.probe_results
            .get_or_create(&[("probe", kind.as_str()), ("outcome", outcome)])
            .inc();
    }

    /// Time a runtime operation (`start`, `stop`, `remove`).
    pub async fn time<T>(
        &self,
        operation: &'static str,
        op: impl std::future::Future<Output = T>,
    ) -> T {
        if !self.enabled.load(Ordering::Relaxed) {
            return op.await;
        }
        let started = Instant::now();
        let out = op.await;
        self.runtime_operation_seconds
            .get_or_create(&[("operation", operation)])
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// An image pull that took since `started`.
    pub fn pull(&self, started: Instant, ok: bool) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let secs = started.elapsed().as_secs_f64();
        let outcome = if ok { "success" } else { "failure" };
        self.image_pull_seconds
            .get_or_create(&[("outcome", outcome)])
            .observe(secs);
        self.runtime_operation_seconds
            .get_or_create(&[("operation", "pull")])
            .observe(secs);
    }

    /// The session moved to `state`.
    pub fn session(&self, state: SessionState) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        for s in SessionState::ALL {
            self.session_state
                .get_or_create(&[("state", s.as_str())])
                .set(i64::from(s == state));
        }
        if state == SessionState::Opening {
            self.sessions.inc();
        }
    }

    pub fn heartbeat_sent(&self) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        self.heartbeats_sent.inc();
    }

    pub fn heartbeat_acknowledged(&self) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        self.heartbeats_acknowledged.inc();
    }

    /// The latest usage sample.
    pub fn usage(&self, usage: &pb::Usage) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let node = usage.node.unwrap_or_default();
        self.node_cpu_cores.set(node.cpu_millis as f64 / 1000.0);
        self.node_memory_bytes
            .set(i64::try_from(node.memory_bytes).unwrap_or(i64::MAX));
        self.replica_cpu_cores.clear();
        self.replica_memory_bytes.clear();
        for r in &usage.replicas {
            let u = r.usage.unwrap_or_default();
            let labels = vec![("replica", r.replica.clone())];
            self.replica_cpu_cores
                .get_or_create(&labels)
                .set(u.cpu_millis as f64 / 1000.0);
            self.replica_memory_bytes
                .get_or_create(&labels)
                .set(i64::try_from(u.memory_bytes).unwrap_or(i64::MAX));
        }
    }
}

/// The registry in the Prometheus text format (version 0.0.4).
pub fn encode() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &get().registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_exposed_under_drover_agent_with_zeros_from_the_start() {
        let text = encode();
        for line in [
            "# TYPE drover_agent_restarts_total counter",
            "drover_agent_probe_results_total{probe=\"liveness\",outcome=\"failure\"} ",
            "# TYPE drover_agent_runtime_operation_seconds histogram",
            "drover_agent_session_state{state=\"disconnected\"} ",
            "drover_agent_replicas{state=\"Running\"} ",
            "# TYPE drover_agent_heartbeats_acknowledged_total counter",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
