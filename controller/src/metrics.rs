//! The controller's Prometheus metrics: one registry, typed families, and
//! the scrape that fills the gauges describing the state.
//!
//! ```text
//!   instrumentation points ──one line each──▶ metrics::get().<family>
//!     raft::node (proposals), cluster (ReadIndex), leader (rounds,
//!     placements), dispatcher (sessions, status batches), api (apply)
//!
//!   GET /metrics ──▶ scrape(sources) ──┬─ raft status (term, indexes, leader)
//!                                      ├─ state_counts(store)  ◀── the ONE read of the state
//!                                      ├─ sled size on disk
//!                                      └─ encode the registry (Prometheus text 0.0.4)
//! ```
//!
//! **Two kinds of metric.** Events (a proposal committed, a round ran) are
//! counters and histograms updated where they happen, through the
//! process-wide [`get`]: a lock-free atomic add, or one short mutex for a
//! histogram bucket. State (objects by kind, replicas by phase, pending
//! replicas, raft indexes) is read at scrape time, so it is never stale.
//! [`state_counts`] is the only function that reads the replicated state for
//! metrics.
//!
//! **Cost.** A scrape reads counts the state keeps (replicas per phase are
//! counted as records change, an array update per write) and walks only the
//! nodes and members; `bench store` and `bench placement` run with metrics on
//! and off side by side (docs/performance.md).
//!
//! **Switch.** [`set_enabled`] turns the event metrics off (the benches'
//! "off" column): every update then returns after one relaxed atomic load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::raft::node::{Handle, NodeError};
use crate::store::{ReplicaPhase, Store, WriteError, WriteResult};

/// One label, e.g. `[("outcome", "committed")]`.
type Label = [(&'static str, &'static str); 1];
type HistogramFamily = Family<Label, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.5 ms to about 16 s (doubling), for raft commits,
/// reads and loop rounds alike.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Statuses per committed batch: 1 to 4096.
fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Every controller metric. Fields are the families instrumentation points
/// update; their names are the exposition names without the `drover_` prefix.
pub struct Metrics {
    registry: Registry,
    enabled: AtomicBool,

    // raft (scrape time)
    raft_term: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_last_index: Gauge,
    raft_snapshot_index: Gauge,
    raft_leader: Gauge,
    // raft (events)
    pub raft_leader_changes: Counter,
    raft_proposals: Family<Label, Counter>,
    raft_proposal_commit_seconds: Histogram,
    raft_read_index_seconds: Histogram,
    raft_snapshots: Family<Label, Counter>,
    raft_snapshot_bytes: Gauge,
    sled_size_bytes: Gauge,

    // the replicated state (scrape time)
    objects: Family<Label, Gauge>,
    replicas: Family<Label, Gauge>,
    replicas_pending: Gauge,

    // leader loops
    scheduler_placements: Counter,
    scheduler_unschedulable: Counter,
    scheduler_seconds: Histogram,
    round_seconds: HistogramFamily,

    // dispatcher
    dispatcher_sessions: Gauge,
    dispatcher_status_batches: Counter,
    dispatcher_status_batch_size: Histogram,

    // API
    apply_requests: Family<Label, Counter>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics (one controller per process).
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Turn event metrics on or off for this process (on by default). A
/// controller started with an empty `--metrics-listen` turns them off: with
/// nothing served, nothing is recorded (the benches' "off" column).
pub fn set_enabled(on: bool) {
    get().enabled.store(on, Ordering::Relaxed);
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("drover"),
            enabled: AtomicBool::new(true),
            raft_term: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_last_index: Gauge::default(),
            raft_snapshot_index: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_leader_changes: Counter::default(),
            raft_proposals: Family::default(),
            raft_proposal_commit_seconds: latency(),
            raft_read_index_seconds: latency(),
            raft_snapshots: Family::default(),
            raft_snapshot_bytes: Gauge::default(),
            sled_size_bytes: Gauge::default(),
            objects: Family::default(),
            replicas: Family::default(),
            replicas_pending: Gauge::default(),
            scheduler_placements: Counter::default(),
            scheduler_unschedulable: Counter::default(),
            scheduler_seconds: latency(),
            round_seconds: Family::new_with_constructor(latency),
            dispatcher_sessions: Gauge::default(),
            dispatcher_status_batches: Counter::default(),
            dispatcher_status_batch_size: batch_sizes(),
            apply_requests: Family::default(),
        };
        // Every known label value exists from the start, at zero, so a rate
        // or an increase over the first event is right.
        for outcome in ["committed", "rejected", "not_leader", "failed"] {
            let _ = m.raft_proposals.get_or_create(&[("outcome", outcome)]);
        }
        let _ = m.raft_snapshots.get_or_create(&[("kind", "installed")]);
        let _ = m.round_seconds.get_or_create(&[("loop", "orchestrator")]);
        for outcome in ["applied", "unchanged", "dry_run", "invalid", "failed"] {
            let _ = m.apply_requests.get_or_create(&[("outcome", outcome)]);
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "raft_term",
            "This member's current raft term",
            self.raft_term.clone(),
        );
        r.register(
            "raft_commit_index",
            "Highest log index known committed",
            self.raft_commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Highest log index applied to the state",
            self.raft_applied_index.clone(),
        );
        r.register(
            "raft_last_index",
            "Highest log index in this member's log",
            self.raft_last_index.clone(),
        );
        r.register(
            "raft_snapshot_index",
            "Log index of the latest snapshot (the log starts after it)",
            self.raft_snapshot_index.clone(),
        );
        r.register(
            "raft_leader",
            "1 while this member is the leader, else 0",
            self.raft_leader.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Times this member saw a new leader",
            self.raft_leader_changes.clone(),
        );
        r.register("raft_proposals", "Writes proposed on this member, by outcome (committed, rejected by the state machine, not_leader, failed)", self.raft_proposals.clone());
        r.register(
            "raft_proposal_commit_seconds",
            "Time from proposing a write on the leader to its being committed and applied",
            self.raft_proposal_commit_seconds.clone(),
        );
        r.register(
            "raft_read_index_seconds",
            "Time a linearizable read waited for its ReadIndex round",
            self.raft_read_index_seconds.clone(),
        );
        r.register(
            "raft_snapshots",
            "Snapshots installed from the leader (kind=installed)",
            self.raft_snapshots.clone(),
        );
        r.register(
            "raft_snapshot_bytes",
            "Size of the last snapshot installed",
            self.raft_snapshot_bytes.clone(),
        );
        r.register(
            "sled_size_bytes",
            "Size on disk of this member's sled database",
            self.sled_size_bytes.clone(),
        );
        r.register(
            "objects",
            "Objects in the replicated state, by kind",
            self.objects.clone(),
        );
        r.register(
            "replicas",
            "Replicas by phase (Pending, Running, CrashLoopBackOff, Failed, Terminating, Gone)",
            self.replicas.clone(),
        );
        r.register(
            "replicas_pending",
            "Replicas not bound to any node (waiting for the scheduler, or unschedulable)",
            self.replicas_pending.clone(),
        );
        r.register(
            "scheduler_placements",
            "Replicas the leader's scheduler bound to a node",
            self.scheduler_placements.clone(),
        );
        r.register(
            "scheduler_unschedulable",
            "Scheduling decisions that found no node for a replica",
            self.scheduler_unschedulable.clone(),
        );
        r.register(
            "scheduler_seconds",
            "Time of one scheduling pass (reading the view and deciding placements)",
            self.scheduler_seconds.clone(),
        );
        r.register("leader_round_seconds", "Time of one leader loop round, by loop (orchestrator: reconcile and schedule, with their commits)", self.round_seconds.clone());
        r.register(
            "dispatcher_sessions",
            "Agent sessions open on this member (the leader)",
            self.dispatcher_sessions.clone(),
        );
        r.register(
            "dispatcher_status_batches",
            "Raft entries carrying agents' replica statuses",
            self.dispatcher_status_batches.clone(),
        );
        r.register(
            "dispatcher_status_batch_size",
            "Replica statuses per batch",
            self.dispatcher_status_batch_size.clone(),
        );
        r.register(
            "apply_requests",
            "droverctl apply requests, by outcome (applied, unchanged, invalid, failed)",
            self.apply_requests.clone(),
        );
        self
    }

    fn on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A proposal's fate, timed from `started` (instrumentation:
    /// `raft::node::Handle::propose`).
    pub fn proposal(
        &self,
        started: Instant,
        result: &Result<Result<WriteResult, WriteError>, NodeError>,
    ) {
        if !self.on() {
            return;
        }
        let outcome = match result {
            Ok(Ok(_)) => "committed",
            Ok(Err(_)) => "rejected",
            Err(NodeError::NotLeader { .. }) => "not_leader",
            Err(_) => "failed",
        };
        self.raft_proposals
            .get_or_create(&[("outcome", outcome)])
            .inc();
        if result.is_ok() {
            self.raft_proposal_commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// A ReadIndex round that succeeded (instrumentation: `cluster`).
    pub fn read_index(&self, started: Instant) {
        if self.on() {
            self.raft_read_index_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// A snapshot installed from the leader (`"installed"`).
    pub fn snapshot(&self, kind: &'static str, bytes: usize) {
        if self.on() {
            self.raft_snapshots.get_or_create(&[("kind", kind)]).inc();
            self.raft_snapshot_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Time a scheduling pass (instrumentation: `leader::round`).
    pub fn time_scheduler<T>(&self, pass: impl FnOnce() -> T) -> T {
        if !self.on() {
            return pass();
        }
        let started = Instant::now();
        let out = pass();
        self.scheduler_seconds
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// Placements (and unschedulable verdicts) the leader committed.
    pub fn scheduled(&self, placed: usize, unschedulable: usize) {
        if self.on() {
            self.scheduler_placements.inc_by(placed as u64);
            self.scheduler_unschedulable.inc_by(unschedulable as u64);
        }
    }

    /// Start timing a leader round of `loop_name`; the time is recorded
    /// when the returned guard is dropped (however the round ends).
    pub fn round(&'static self, loop_name: &'static str) -> RoundTimer {
        RoundTimer {
            metrics: self,
            loop_name,
            started: Instant::now(),
        }
    }

    /// An agent session opened (+1) or closed (-1) on this member.
    pub fn session(&self, delta: i64) {
        if self.on() {
            self.dispatcher_sessions.inc_by(delta);
        }
    }

    /// A batch of `n` replica statuses went to raft.
    pub fn status_batch(&self, n: usize) {
        if self.on() {
            self.dispatcher_status_batches.inc();
            self.dispatcher_status_batch_size.observe(n as f64);
        }
    }

    /// An apply request answered with `outcome`.
    pub fn apply(&self, outcome: &'static str) {
        if !self.on() {
            return;
        }
        self.apply_requests
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }
}

/// Records a leader round's duration when dropped.
pub struct RoundTimer {
    metrics: &'static Metrics,
    loop_name: &'static str,
    started: Instant,
}

impl Drop for RoundTimer {
    fn drop(&mut self) {
        if self.metrics.on() {
            self.metrics
                .round_seconds
                .get_or_create(&[("loop", self.loop_name)])
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// What [`state_counts`] finds in the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Objects by kind: `deployment`, `replica`, `node`, `member`, `event`.
    pub objects: BTreeMap<&'static str, u64>,
    /// Replicas by phase; every phase is present, zeros included.
    pub replicas: BTreeMap<&'static str, u64>,
    /// Replicas bound to no node (and not being removed).
    pub pending: u64,
}

/// Every replica phase (the `phase` label: [`phase_label`]).
const PHASES: [ReplicaPhase; 6] = [
    ReplicaPhase::Pending,
    ReplicaPhase::Running,
    ReplicaPhase::CrashLoopBackOff,
    ReplicaPhase::Failed,
    ReplicaPhase::Terminating,
    ReplicaPhase::Gone,
];

/// Count the replicated state for the scrape: the ONE function that reads
/// the store for metrics (rewire it, and only it, when the state moves).
///
/// A replica's phase is what its node last reported, `Terminating` once it
/// was removed from its deployment, and `Pending` while unbound or not yet
/// reported by the node it is bound to (as `get replicas` shows it).
/// Cost: O(1): the state keeps its replicas per phase as records change
/// ([`crate::store::State::phase_count`]).
pub fn state_counts(store: &Store) -> StateCounts {
    let state = store.snapshot();
    let mut counts = StateCounts::default();
    counts
        .objects
        .insert("deployment", state.deployment_count() as u64);
    counts
        .objects
        .insert("replica", state.replica_count() as u64);
    counts.objects.insert("node", state.nodes().count() as u64);
    counts
        .objects
        .insert("member", state.members().count() as u64);
    for phase in PHASES {
        counts
            .replicas
            .insert(phase_label(phase), state.phase_count(phase));
    }
    // Unbound replicas are never terminating (one no node runs is removed
    // at once).
    counts.pending = state.unbound_count() as u64;
    counts
}

fn phase_label(phase: ReplicaPhase) -> &'static str {
    match phase {
        ReplicaPhase::Pending => "Pending",
        ReplicaPhase::Running => "Running",
        ReplicaPhase::CrashLoopBackOff => "CrashLoopBackOff",
        ReplicaPhase::Failed => "Failed",
        ReplicaPhase::Terminating => "Terminating",
        ReplicaPhase::Gone => "Gone",
    }
}

/// What a scrape reads besides the registry.
#[derive(Clone)]
pub struct Sources {
    pub handle: Handle,
    pub store: Store,
    pub db: sled::Db,
}

/// One scrape: refresh the state gauges, then encode everything.
pub async fn scrape(sources: &Sources) -> String {
    let m = get();
    match sources.handle.raft_status().await {
        Ok(s) => {
            m.raft_term.set(clamp(s.term));
            m.raft_commit_index.set(clamp(s.commit_index));
            m.raft_applied_index.set(clamp(s.applied_index));
            m.raft_last_index.set(clamp(s.last_index));
            m.raft_snapshot_index.set(clamp(s.snapshot_index));
            m.raft_leader
                .set(i64::from(s.leader_id == s.id && s.leader_id != 0));
        }
        Err(e) => warn!(error = %e, "metrics: the raft node did not answer its status"),
    }
    let counts = state_counts(&sources.store);
    m.objects.clear();
    for (kind, n) in &counts.objects {
        m.objects.get_or_create(&[("kind", kind)]).set(clamp(*n));
    }
    m.replicas.clear();
    for (phase, n) in &counts.replicas {
        m.replicas.get_or_create(&[("phase", phase)]).set(clamp(*n));
    }
    m.replicas_pending.set(clamp(counts.pending));
    match sources.db.size_on_disk() {
        Ok(bytes) => {
            m.sled_size_bytes.set(clamp(bytes));
        }
        Err(e) => warn!(error = %e, "metrics: could not read the database size"),
    }
    encode()
}

/// The registry in the Prometheus text format (version 0.0.4).
pub fn encode() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &get().registry);
    text
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Count leader changes as this member sees them: each time a leader other
/// than the last one known is elected (a member that restarts counts its
/// first leader).
pub async fn watch_leadership(handle: Handle, shutdown: tokio_util::sync::CancellationToken) {
    let mut rx = handle.leadership_watch();
    let mut last = 0u64;
    loop {
        let now = rx.borrow_and_update().leader_id;
        if now != 0 && now != last {
            get().raft_leader_changes.inc();
            last = now;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::fixtures::deployment;
    use crate::orchestrator;
    use crate::store::{Command, NodeRegistration, ReplicaObserved, Resources};

    #[test]
    fn every_family_is_exposed_with_its_type_and_drover_prefix() {
        get().apply("applied");
        let text = encode();
        for line in [
            "# TYPE drover_raft_term gauge",
            "# TYPE drover_raft_leader_changes_total counter",
            "# TYPE drover_raft_proposal_commit_seconds histogram",
            "# TYPE drover_leader_round_seconds histogram",
            "drover_apply_requests_total{outcome=\"applied\"}",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    /// Three replicas, one node with room for two: two bound (Pending
    /// until their node reports), one unschedulable; a report makes one Running.
    #[test]
    fn state_counts_reads_phases_and_pending_from_the_store() {
        let store = Store::new(crate::store::State::default());
        let mut index = 1;
        let mut apply = |command: Command| {
            index += 1;
            let result = store.apply(index, 1, &command);
            assert!(result.is_ok(), "{command:?}: {result:?}");
        };
        apply(Command::RegisterNode {
            node: NodeRegistration {
                name: "n1".into(),
                labels: Default::default(),
                capacity: Resources {
                    cpu_millis: 200,
                    memory_bytes: 1 << 30,
                },
                address: "127.0.0.1:1".into(),
                runtime: "process".into(),
                agent_version: "test".into(),
                incarnation: "i1".into(),
            },
            now_unix_ms: 1,
        });
        let mut web = deployment("web", 3);
        web.spec.template.spec.containers[0]
            .resources
            .requests
            .cpu_millis = Some(100);
        apply(Command::Apply {
            deployments: vec![web],
            now_unix_ms: 1,
        });
        let plan = orchestrator::reconcile(
            &store.deployments(None),
            &store.replicas(None),
            &HashSet::new(),
            10,
        );
        apply(Command::Reconcile {
            create: plan.create,
            remove: plan.remove,
            now_unix_ms: 10,
        });
        let (place, unschedulable) = crate::leader::schedule(&store.snapshot());
        assert_eq!((place.len(), unschedulable.len()), (2, 1));
        let running = place[0].0.clone();
        apply(Command::Schedule {
            place,
            unschedulable,
            now_unix_ms: 10,
        });
        apply(Command::ReportStatus {
            reports: vec![(
                "n1".into(),
                running,
                ReplicaObserved {
                    phase: ReplicaPhase::Running,
                    node: "n1".into(),
                    ..Default::default()
                },
            )],
            now_unix_ms: 11,
        });

        let counts = state_counts(&store);
        assert_eq!(counts.objects.get("deployment"), Some(&1));
        assert_eq!(counts.objects.get("replica"), Some(&3));
        assert_eq!(counts.objects.get("node"), Some(&1));
        assert_eq!(counts.replicas.get("Running"), Some(&1));
        assert_eq!(counts.replicas.get("Pending"), Some(&2));
        assert_eq!(counts.replicas.get("Failed"), Some(&0));
        assert_eq!(counts.pending, 1, "the unschedulable one");
    }
}
