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
    Command, NodeCondition, ObjectRef, ReplicaRecord, Resources, RolloutRecord, Store, StoreError,
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
            let task = tokio::spawn(loops(cluster.clone(), cfg.clone(), token.clone()));
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

async fn loops(cluster: Cluster, cfg: LoopConfig, token: CancellationToken) {
    let leading_since = Instant::now();
    // The state is current once a ReadIndex round succeeds: the leader has
    // committed an entry of its term and applied everything before it.
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            r = cluster.read_barrier(None) => if r.is_ok() { break },
        }
    }
    tokio::spawn(monitor(cluster.clone(), cfg, leading_since, token.clone()));
    let mut applied = cluster.handle.applied();
    loop {
        if let Err(e) = round(&cluster).await {
            warn!(error = %e, "control loop round failed");
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
    cluster: Cluster,
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
        let observed: Vec<nodes::Observed> = match cluster.store.nodes() {
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
            if let Err(e) = cluster.write(Write::Command(command)).await {
                warn!(verdict = ?verdict, error = %e.message(), "node monitor could not commit a node condition");
            }
        }
    }
}

/// One pass of the orchestrator and then the scheduler.
async fn round(cluster: &Cluster) -> Result<(), String> {
    let store = &cluster.store;
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
    record_progress(cluster, &deployments, &replicas, &draining, now).await?;
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
        let write = Write::Command(Command::Reconcile {
            create: plan.create,
            remove: plan.remove,
            now_unix_ms: now_unix_ms(),
        });
        cluster
            .write(write)
            .await
            .map_err(|s| s.message().to_string())?;
    }
    let (place, unschedulable) = schedule(store).map_err(|e| e.to_string())?;
    if !place.is_empty() || !unschedulable.is_empty() {
        debug!(
            place = place.len(),
            unschedulable = unschedulable.len(),
            "scheduler"
        );
        let write = Write::Command(Command::Schedule {
            place,
            unschedulable,
            now_unix_ms: now_unix_ms(),
        });
        cluster
            .write(write)
            .await
            .map_err(|s| s.message().to_string())?;
    }
    Ok(())
}

/// Record rollout progress and failures (progress deadline) in one entry,
/// then roll failed rollouts back when their deployment asks for it. A
/// failure recorded by an earlier leader whose rollback never committed is
/// rolled back here too.
async fn record_progress(
    cluster: &Cluster,
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
        cluster
            .write(Write::Command(Command::RolloutProgress {
                records,
                now_unix_ms: now_unix_ms(),
            }))
            .await
            .map_err(|s| s.message().to_string())?;
    }
    for (target, revision, reason) in rollbacks {
        info!(deployment = %target, "rollout failed: rolling back to the previous revision");
        let write = Write::Command(Command::Undo {
            target,
            to_revision: None,
            reason: Some(format!(
                "rolled back from revision {revision} by {}: {reason}",
                rollout::AUTO_ROLLBACK_ANNOTATION
            )),
            now_unix_ms: now,
        });
        cluster
            .write(write)
            .await
            .map_err(|s| s.message().to_string())?;
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
        let Some(d) = deployments.get(&(r.namespace.clone(), r.deployment.clone())) else {
            continue;
        };
        // Each replica is placed and booked with its own revision's template:
        // during a rollout the old replicas still hold the old ports and
        // requests, not the new ones.
        let pod = d
            .revision_by_hash(&r.revision)
            .map_or(&d.deployment.spec.template.spec, |rev| &rev.template.spec);
        let requests = pod
            .containers
            .iter()
            .fold(Resources::default(), |acc, c| Resources {
                cpu_millis: acc.cpu_millis + c.resources.requests.cpu_millis.unwrap_or(0),
                memory_bytes: acc.memory_bytes + c.resources.requests.memory_bytes.unwrap_or(0),
            });
        let host_ports = pod
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter_map(|p| p.host_port.map(|h| (h, p.protocol)))
            .collect();
        let deployment = format!("{}/{}", r.namespace, r.deployment);
        match &r.node {
            Some(node) => placed.push(Placed {
                node: node.clone(),
                deployment,
                requests,
                host_ports,
            }),
            None => {
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
                    requests,
                    node_selector: pod.node_selector.clone(),
                    host_ports,
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
