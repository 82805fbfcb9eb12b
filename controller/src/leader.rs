//! The control loops only the leader runs: orchestrator, scheduler and node
//! monitor.
//!
//! ```text
//!  leadership ──is_leader──▶ start loops ──(ReadIndex: state is current)──▶
//!      loop { wait for an applied change ─▶ rollout::progress        ─▶ RolloutProgress (+ Undo)
//!             (or 2 s: minReadySeconds,  ─▶ orchestrator::reconcile ─▶ Reconcile entry
//!              progress deadlines)       ─▶ scheduler::schedule      ─▶ Schedule entry }
//!      loop { every node-timeout/10      ─▶ nodes::assess           ─▶ NodeDown / NodeUp }
//!  leadership lost ─▶ cancel
//! ```
//!
//! Everything is rebuilt from the store each round: a new leader needs nothing
//! from the old one, and continues a rollout or a drain where it stands (the
//! times a rollout is judged by are in the store, stamped by the leader that
//! proposed them). Decisions go through raft like any write; the state
//! machine skips those that became stale (a slot taken, a replica gone).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::{now_unix_ms, Cluster};
use crate::dispatcher::Heartbeats;
use crate::nodes::{self, Verdict};
use crate::orchestrator::{self, rollout};
use crate::scheduler::{self, Decision, NodeInfo, Pending, Placed};
use crate::store::{
    Booking, Command, NodeCondition, ObjectRef, ReplicaRecord, RolloutRecord, Store, StoreError,
    StoredDeployment, Write,
};

/// Shortest pause between two rounds, so a stream of status batches does not
/// make the loops spin.
const MIN_ROUND: Duration = Duration::from_millis(20);
/// A round runs at least this often even when nothing was applied.
const MAX_ROUND: Duration = Duration::from_secs(2);

/// Settings of the leader loops.
#[derive(Clone)]
pub struct LoopConfig {
    /// No heartbeat for this long: the node is NotReady and its replicas move.
    pub node_timeout: Duration,
    pub heartbeats: Heartbeats,
}

/// Run the leader loops whenever this controller leads, until `shutdown`.
pub async fn run(cluster: Cluster, cfg: LoopConfig, shutdown: CancellationToken) {
    let mut leadership = cluster.handle.leadership_watch();
    loop {
        let view = *leadership.borrow_and_update();
        if view.is_leader {
            let token = shutdown.child_token();
            let leading = Leading {
                cluster: cluster.clone(),
                term: view.term,
            };
            let task = tokio::spawn(loops(leading, cfg.clone(), token.clone()));
            info!(term = view.term, "leading: control loops started");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => { token.cancel(); let _ = task.await; return; }
                    r = leadership.changed() => {
                        if r.is_err() { token.cancel(); return; }
                        let now = *leadership.borrow_and_update();
                        if !now.is_leader || now.term != view.term { break; }
                    }
                }
            }
            token.cancel();
            let _ = task.await;
            info!("no longer leading: control loops stopped");
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = leadership.changed() => if r.is_err() { return },
        }
    }
}

/// The leader loops' way into raft: only as the leader of `term`.
///
/// A loop's decisions are made on this leader's view (its heartbeats, its
/// round's reads); once leadership is lost they must not reach the log, so
/// they are proposed here only, never forwarded to a new leader or retried
/// into a later term.
#[derive(Clone)]
struct Leading {
    cluster: Cluster,
    term: u64,
}

impl Leading {
    async fn write(&self, command: Command) -> Result<(), String> {
        let now = self.cluster.handle.leadership();
        if !now.is_leader || now.term != self.term {
            return Err(format!("leadership of term {} lost", self.term));
        }
        match self.cluster.handle.propose(Write::Command(command)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn loops(leading: Leading, cfg: LoopConfig, token: CancellationToken) {
    let cluster = &leading.cluster;
    let leading_since = Instant::now();
    // The state is current once a ReadIndex round succeeds: the leader has
    // committed an entry of its term and applied everything before it.
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            r = cluster.read_barrier(None) => if r.is_ok() { break },
        }
    }
    tokio::spawn(monitor(leading.clone(), cfg, leading_since, token.clone()));
    let mut applied = cluster.handle.applied();
    loop {
        // A round in flight when leadership is lost is abandoned there.
        tokio::select! {
            _ = token.cancelled() => return,
            r = round(&leading) => if let Err(e) = r {
                warn!(error = %e, "control loop round failed");
            },
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(MAX_ROUND) => {}
        }
        tokio::time::sleep(MIN_ROUND).await;
    }
}

/// The node monitor: turn heartbeat silence into NotReady (and back).
async fn monitor(
    leading: Leading,
    cfg: LoopConfig,
    leading_since: Instant,
    token: CancellationToken,
) {
    let period =
        (cfg.node_timeout / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let observed: Vec<nodes::Observed> = match leading.cluster.store.nodes() {
            Ok(list) => list
                .into_iter()
                .map(|n| nodes::Observed {
                    last_heartbeat: cfg.heartbeats.last(&n.name),
                    name: n.name,
                    condition: n.condition,
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "node monitor could not read nodes");
                continue;
            }
        };
        for verdict in nodes::assess(&observed, leading_since, Instant::now(), cfg.node_timeout) {
            let command = match &verdict {
                Verdict::Down(node) => {
                    warn!(node = %node, timeout = ?cfg.node_timeout, "node NotReady: no heartbeat; moving its replicas");
                    Command::NodeDown {
                        node: node.clone(),
                        now_unix_ms: now_unix_ms(),
                    }
                }
                Verdict::Up(node) => {
                    info!(node = %node, "node Ready again");
                    Command::NodeUp {
                        node: node.clone(),
                        now_unix_ms: now_unix_ms(),
                    }
                }
            };
            let written = tokio::select! {
                _ = token.cancelled() => return,
                r = leading.write(command) => r,
            };
            if let Err(e) = written {
                warn!(verdict = ?verdict, error = %e, "node monitor could not commit a node condition");
            }
        }
    }
}

/// One pass of the orchestrator and then the scheduler.
async fn round(leading: &Leading) -> Result<(), String> {
    let _timer = crate::metrics::get().round("orchestrator");
    let store = &leading.cluster.store;
    let now = now_unix_ms();
    let deployments = store.deployments(None).map_err(|e| e.to_string())?;
    let replicas = store.replicas(None).map_err(|e| e.to_string())?;
    let draining: HashSet<String> = store
        .nodes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| n.draining)
        .map(|n| n.name)
        .collect();
    record_progress(leading, &deployments, &replicas, &draining, now).await?;
    let plan = orchestrator::reconcile(&deployments, &replicas, &draining, now);
    for r in &plan.dropped_without_replacement {
        warn!(replica = %r, "draining: no other node can take this replica; removing it without a replacement");
    }
    if !plan.is_empty() {
        debug!(
            create = plan.create.len(),
            remove = plan.remove.len(),
            "orchestrator"
        );
        let command = Command::Reconcile {
            create: plan.create,
            remove: plan.remove,
            now_unix_ms: now_unix_ms(),
        };
        leading.write(command).await?;
    }
    let (place, unschedulable) = crate::metrics::get()
        .time_scheduler(|| schedule(store))
        .map_err(|e| e.to_string())?;
    if !place.is_empty() || !unschedulable.is_empty() {
        let decided = (place.len(), unschedulable.len());
        debug!(
            place = place.len(),
            unschedulable = unschedulable.len(),
            "scheduler"
        );
        let command = Command::Schedule {
            place,
            unschedulable,
            now_unix_ms: now_unix_ms(),
        };
        leading.write(command).await?;
        crate::metrics::get().scheduled(decided.0, decided.1);
    }
    Ok(())
}

/// Record rollout progress and failures (progress deadline) in one entry,
/// then roll failed rollouts back when their deployment asks for it. A
/// failure recorded by an earlier leader whose rollback never committed is
/// rolled back here too.
async fn record_progress(
    leading: &Leading,
    deployments: &[StoredDeployment],
    replicas: &[ReplicaRecord],
    draining: &HashSet<String>,
    now: i64,
) -> Result<(), String> {
    let by_deployment = orchestrator::group(replicas);
    let mut records = Vec::new();
    let mut rollbacks = Vec::new();
    for d in deployments {
        let meta = &d.deployment.metadata;
        let target = ObjectRef {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        };
        let mine = by_deployment
            .get(&(meta.namespace.as_str(), meta.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let counts = rollout::counts(d, mine, draining, now);
        let mut failed = d.rollout.failed.clone();
        if let Some((progress_unix_ms, available_updated, now_failed)) =
            rollout::progress(d, &counts, now)
        {
            if let Some(reason) = &now_failed {
                warn!(deployment = %target, reason = %reason, "rollout failed");
            }
            failed = now_failed.clone();
            records.push(RolloutRecord {
                target: target.clone(),
                revision: crate::store::revision(&d.deployment.spec.template),
                progress_unix_ms,
                available_updated,
                failed: now_failed,
            });
        }
        if let Some(reason) = failed.filter(|_| rollout::wants_auto_rollback(d)) {
            rollbacks.push((target, d.current_revision_number(), reason));
        }
    }
    if !records.is_empty() {
        leading
            .write(Command::RolloutProgress {
                records,
                now_unix_ms: now_unix_ms(),
            })
            .await?;
    }
    for (target, revision, reason) in rollbacks {
        info!(deployment = %target, "rollout failed: rolling back to the previous revision");
        let command = Command::Undo {
            target,
            to_revision: None,
            reason: Some(format!(
                "rolled back from revision {revision} by {}: {reason}",
                rollout::AUTO_ROLLBACK_ANNOTATION
            )),
            now_unix_ms: now,
        };
        leading.write(command).await?;
    }
    Ok(())
}

type Placements = (Vec<(ObjectRef, String)>, Vec<(ObjectRef, String)>);

/// Feed the store's view to the pure scheduler; keep only decisions that
/// change something (an unchanged pending reason is not rewritten).
pub fn schedule(store: &Store) -> Result<Placements, StoreError> {
    let deployments = store.deployments_by_key(None)?;
    let nodes: Vec<NodeInfo> = store
        .nodes()?
        .into_iter()
        .map(|n| NodeInfo {
            name: n.name,
            labels: n.labels,
            allocatable: n.capacity,
            ready: n.condition == NodeCondition::Ready,
            cordoned: n.cordoned,
        })
        .collect();
    let replicas = store.replicas(None)?;
    let mut pending = Vec::new();
    let mut placed = Vec::new();
    let mut reasons: HashMap<String, (&ReplicaRecord, ObjectRef)> = HashMap::new();
    for r in &replicas {
        let d = deployments.get(&(r.namespace.clone(), r.deployment.clone()));
        // Each replica is placed and booked with its own revision's template
        // (during a rollout the old replicas still hold the old ports and
        // requests, not the new ones), as recorded when it was made; a
        // terminating replica of a deleted deployment holds its node to the end.
        let pod = d.map(|d| {
            d.revision_by_hash(&r.revision)
                .map_or(&d.deployment.spec.template.spec, |rev| &rev.template.spec)
        });
        let Some(booking) = r.booking.clone().or_else(|| pod.map(Booking::of)) else {
            continue;
        };
        let deployment = format!("{}/{}", r.namespace, r.deployment);
        match (&r.node, pod) {
            (Some(node), _) => placed.push(Placed {
                node: node.clone(),
                deployment,
                requests: booking.requests,
                host_ports: booking.host_ports,
            }),
            // Replicas of a deleted deployment are not placed.
            (None, None) => {}
            (None, Some(pod)) => {
                let id = r.agent_id();
                reasons.insert(
                    id.clone(),
                    (
                        r,
                        ObjectRef {
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                        },
                    ),
                );
                pending.push(Pending {
                    replica: id,
                    deployment,
                    requests: booking.requests,
                    node_selector: pod.node_selector.clone(),
                    host_ports: booking.host_ports,
                });
            }
        }
    }
    let mut place = Vec::new();
    let mut unschedulable = Vec::new();
    for decision in scheduler::schedule(&pending, &nodes, &placed) {
        match decision {
            Decision::Place { replica, node } => {
                if let Some((_, target)) = reasons.get(&replica) {
                    place.push((target.clone(), node));
                }
            }
            Decision::Unschedulable { replica, reason } => {
                if let Some((record, target)) = reasons.get(&replica) {
                    if record.pending_reason != reason {
                        unschedulable.push((target.clone(), reason));
                    }
                }
            }
        }
    }
    Ok((place, unschedulable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{deployment, open_test_db};
    use crate::store::{NodeRegistration, ReplicaObserved, ReplicaPhase, Resources};
    use drover_manifest::{ContainerPort, Protocol};

    struct Db {
        _dir: tempfile::TempDir,
        store: Store,
        index: u64,
    }

    impl Db {
        fn new() -> Db {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = open_test_db(dir.path(), 8);
            let store = Store::open(&db).expect("store");
            Db {
                _dir: dir,
                store,
                index: 1,
            }
        }

        fn apply(&mut self, command: Command) {
            self.index += 1;
            let result = self.store.apply(self.index, 1, &command).expect("apply");
            assert!(result.is_ok(), "{command:?}: {result:?}");
        }

        /// One orchestrator pass and one scheduler pass, as a leader round.
        fn round(&mut self) -> Placements {
            let plan = orchestrator::reconcile(
                &self.store.deployments(None).expect("deployments"),
                &self.store.replicas(None).expect("replicas"),
                &HashSet::new(),
                10,
            );
            self.apply(Command::Reconcile {
                create: plan.create,
                remove: plan.remove,
                now_unix_ms: 10,
            });
            let (place, unschedulable) = schedule(&self.store).expect("schedule");
            self.apply(Command::Schedule {
                place: place.clone(),
                unschedulable: unschedulable.clone(),
                now_unix_ms: 10,
            });
            (place, unschedulable)
        }
    }

    fn on_host_port(name: &str, port: u16) -> drover_manifest::Deployment {
        let mut d = deployment(name, 1);
        d.spec.template.spec.containers[0].ports = vec![ContainerPort {
            name: None,
            container_port: port,
            host_port: Some(port),
            protocol: Protocol::Tcp,
        }];
        d
    }

    #[test]
    fn a_terminating_replica_of_a_deleted_deployment_keeps_its_host_port_to_the_end() {
        let mut db = Db::new();
        db.apply(Command::RegisterNode {
            node: NodeRegistration {
                name: "n1".into(),
                labels: Default::default(),
                capacity: Resources {
                    cpu_millis: 2000,
                    memory_bytes: 1 << 30,
                },
                address: "127.0.0.1:1".into(),
                runtime: "process".into(),
                agent_version: "test".into(),
                incarnation: "i1".into(),
            },
            now_unix_ms: 1,
        });
        db.apply(Command::Apply {
            deployments: vec![on_host_port("old", 8080)],
            now_unix_ms: 1,
        });
        let (place, _) = db.round();
        assert_eq!(place.len(), 1);
        let old = place[0].0.clone();

        db.apply(Command::Delete {
            refs: vec![ObjectRef {
                namespace: "default".into(),
                name: "old".into(),
            }],
            ignore_not_found: false,
            now_unix_ms: 2,
            grace_period_seconds: None,
        });
        db.apply(Command::Apply {
            deployments: vec![on_host_port("new", 8080)],
            now_unix_ms: 2,
        });
        let (place, unschedulable) = db.round();
        assert!(place.is_empty(), "8080 is still held on n1: {place:?}");
        assert_eq!(unschedulable.len(), 1);
        assert!(
            unschedulable[0].1.contains("free ports"),
            "{unschedulable:?}"
        );

        // The agent reports the old replica gone: the port is free.
        db.apply(Command::ReportStatus {
            reports: vec![(
                "n1".into(),
                old,
                ReplicaObserved {
                    phase: ReplicaPhase::Gone,
                    ..Default::default()
                },
            )],
            now_unix_ms: 3,
        });
        let (place, _) = db.round();
        assert_eq!(place.len(), 1, "placed once the old one is gone");
    }
}
