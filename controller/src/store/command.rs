//! Commands: the writes that go through the raft log, and what applying them
//! does to the state.
//!
//! A [`Write`] is what a client asks for; the raft node turns membership writes
//! into raft configuration changes and everything else into a [`Command`]
//! entry. Applying a command is a pure function of the current state and the
//! command: refusals (`WriteError`) are decided the same way on every member,
//! and a refused command writes nothing.
//!
//! Commands run against a [`View`]: the store plus the command's own pending
//! writes, so a command reads what it wrote earlier (two replicas created in
//! one entry see each other) and lands as one atomic sled batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use drover_proto::manifest::Deployment;

use super::objects::{
    node_key, replica_key, NodeCondition, NodeRecord, ReplicaObserved, ReplicaRecord, Resources,
    REPLICA_PREFIX,
};
use super::{
    deploy_key, from_json, to_json, Revision, RolloutState, Store, StoreError, StoredDeployment,
};
use crate::orchestrator::revision;

/// The annotation `rollout history` shows as CHANGE-CAUSE.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

/// A namespaced object name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What an agent says about itself when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub address: String,
    pub runtime: String,
    pub agent_version: String,
    pub incarnation: String,
}

/// A state-machine command, as stored in a raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or update deployments, all in one entry (all or nothing).
    Apply {
        deployments: Vec<Deployment>,
        now_unix_ms: i64,
    },
    /// Delete deployments; with `ignore_not_found` false, one missing name
    /// refuses the whole command.
    Delete {
        refs: Vec<ObjectRef>,
        ignore_not_found: bool,
    },
    Scale {
        target: ObjectRef,
        replicas: u32,
        now_unix_ms: i64,
    },
    /// An agent (re)connected: create or refresh its node, mark it Ready.
    RegisterNode {
        node: NodeRegistration,
        now_unix_ms: i64,
    },
    /// The node monitor saw no heartbeat for the node timeout: mark the node
    /// NotReady and unbind its replicas so they are scheduled elsewhere.
    NodeDown { node: String, now_unix_ms: i64 },
    /// A NotReady node's agent is heard from again.
    NodeUp { node: String, now_unix_ms: i64 },
    /// Cordon (no new replicas) or uncordon a node. Uncordon also ends a drain.
    Cordon { node: String, cordoned: bool },
    /// Cordon a node and have its replicas replaced elsewhere.
    Drain { node: String },
    /// `rollout undo`: make an earlier revision's template current again
    /// (the previous one when `to_revision` is `None`).
    /// An automatic rollback carries the failure that caused it.
    Undo {
        target: ObjectRef,
        to_revision: Option<u64>,
        reason: Option<String>,
        now_unix_ms: i64,
    },
    /// `rollout pause` / `rollout resume` (which restarts the progress clock).
    PauseRollout {
        target: ObjectRef,
        paused: bool,
        now_unix_ms: i64,
    },
    /// The leader's records of rollouts' progress, one entry for all the
    /// deployments that changed in a round.
    RolloutProgress { records: Vec<RolloutRecord> },
    /// The orchestrator's decisions: replicas to create and to remove.
    /// Creating a replica whose deployment slot is taken, or removing one that
    /// is gone, is skipped, so a decision made on slightly old state is harmless.
    Reconcile {
        create: Vec<ReplicaRecord>,
        remove: Vec<ObjectRef>,
    },
    /// The scheduler's decisions for unbound replicas.
    Schedule {
        place: Vec<(ObjectRef, String)>,
        unschedulable: Vec<(ObjectRef, String)>,
    },
    /// Statuses agents reported, batched: `(node, replica, status)`. A status
    /// counts only for a replica bound to that node: an agent speaks for its
    /// own node only.
    ReportStatus {
        reports: Vec<(String, ObjectRef, ReplicaObserved)>,
        now_unix_ms: i64,
    },
}

/// A rollout's progress as the leader saw it: when it last progressed, how
/// many updated replicas were available then, and why it failed (once its
/// progress deadline passed). It is about one revision of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub target: ObjectRef,
    pub revision: String,
    pub progress_unix_ms: i64,
    pub available_updated: u32,
    pub failed: Option<String>,
}

/// What a client may ask the cluster to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    Command(Command),
    AddMember { id: u64, address: String },
    RemoveMember { id: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

/// The result of an applied write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    Applied(Vec<(ObjectRef, ApplyOutcome, u64)>),
    Deleted(Vec<ObjectRef>),
    Scaled {
        previous: u32,
        replicas: u32,
        generation: u64,
    },
    MembershipChanged,
    /// `rollout undo`: the revision now current, and whether anything changed.
    RolledBack {
        revision: u64,
        changed: bool,
    },
    /// Cluster-internal commands: how many objects changed.
    Changed(usize),
}

/// A write the state machine refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("deployment {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
    #[error("node {0:?} not found")]
    NodeNotFound(String),
    #[error("{}", no_revision(.name, .revision))]
    NoRevision { name: String, revision: Option<u64> },
}

fn no_revision(name: &str, revision: &Option<u64>) -> String {
    match revision {
        Some(n) => format!(
            "deployment {name:?} has no revision {n}: see `droverctl rollout history deployment {name}`"
        ),
        None => format!("deployment {name:?} has no previous revision to roll back to"),
    }
}

/// The store as one command sees it: committed state plus its own writes.
pub(super) struct View<'a> {
    store: &'a Store,
    writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl<'a> View<'a> {
    pub(super) fn new(store: &'a Store) -> View<'a> {
        View {
            store,
            writes: BTreeMap::new(),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.writes.get(key) {
            Some(Some(v)) => from_json(key, v).map(Some),
            Some(None) => Ok(None),
            None => match self.store.get_raw(key)? {
                Some(v) => from_json(key, &v).map(Some),
                None => Ok(None),
            },
        }
    }

    fn put<T: Serialize>(&mut self, key: String, value: &T) -> Result<(), StoreError> {
        self.writes.insert(key, Some(to_json(value)?));
        Ok(())
    }

    fn remove(&mut self, key: String) {
        self.writes.insert(key, None);
    }

    /// Committed keys under `prefix` (this command's own writes are not listed).
    fn committed_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.store
            .tree
            .scan_prefix(prefix.as_bytes())
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    pub(super) fn into_batch(self, batch: &mut sled::Batch) {
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k.as_bytes(), v),
                None => batch.remove(k.as_bytes()),
            }
        }
    }
}

pub(super) fn execute(
    view: &mut View<'_>,
    command: &Command,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    match command {
        Command::Apply {
            deployments,
            now_unix_ms,
        } => apply(view, deployments, *now_unix_ms),
        Command::Delete {
            refs,
            ignore_not_found,
        } => delete(view, refs, *ignore_not_found),
        Command::Scale {
            target,
            replicas,
            now_unix_ms,
        } => scale(view, target, *replicas, *now_unix_ms),
        Command::RegisterNode { node, now_unix_ms } => register_node(view, node, *now_unix_ms),
        Command::NodeDown { node, now_unix_ms } => {
            node_condition(view, node, NodeCondition::NotReady, *now_unix_ms)
        }
        Command::NodeUp { node, now_unix_ms } => {
            node_condition(view, node, NodeCondition::Ready, *now_unix_ms)
        }
        Command::Cordon { node, cordoned } => cordon(view, node, *cordoned, false),
        Command::Drain { node } => cordon(view, node, true, true),
        Command::Undo {
            target,
            to_revision,
            reason,
            now_unix_ms,
        } => undo(view, target, *to_revision, reason, *now_unix_ms),
        Command::PauseRollout {
            target,
            paused,
            now_unix_ms,
        } => pause(view, target, *paused, *now_unix_ms),
        Command::RolloutProgress { records } => rollout_progress(view, records),
        Command::Reconcile { create, remove } => reconcile(view, create, remove),
        Command::Schedule {
            place,
            unschedulable,
        } => schedule(view, place, unschedulable),
        Command::ReportStatus {
            reports,
            now_unix_ms,
        } => report_status(view, reports, *now_unix_ms),
    }
}

fn apply(
    view: &mut View<'_>,
    deployments: &[Deployment],
    now: i64,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let mut results = Vec::with_capacity(deployments.len());
    for d in deployments {
        let target = ObjectRef {
            namespace: d.metadata.namespace.clone(),
            name: d.metadata.name.clone(),
        };
        let key = deploy_key(&target.namespace, &target.name);
        let (mut stored, outcome) = match view.get::<StoredDeployment>(&key)? {
            None => (
                StoredDeployment {
                    deployment: d.clone(),
                    generation: 1,
                    created_unix_ms: now,
                    updated_unix_ms: now,
                    revisions: Vec::new(),
                    rollout: RolloutState::default(),
                },
                ApplyOutcome::Created,
            ),
            Some(old) if old.deployment == *d => {
                results.push((target, ApplyOutcome::Unchanged, old.generation));
                continue;
            }
            Some(old) => (
                StoredDeployment {
                    deployment: d.clone(),
                    generation: old.generation + 1,
                    created_unix_ms: old.created_unix_ms,
                    updated_unix_ms: now,
                    revisions: old.revisions,
                    rollout: old.rollout,
                },
                ApplyOutcome::Configured,
            ),
        };
        let in_use = revisions_in_use(view, &target)?;
        record_revision(&mut stored, now, &in_use);
        view.put(key, &stored)?;
        results.push((target, outcome, stored.generation));
    }
    Ok(Ok(WriteResult::Applied(results)))
}

/// Revision hashes that replicas of a deployment run now.
fn revisions_in_use(view: &View<'_>, target: &ObjectRef) -> Result<Vec<String>, StoreError> {
    let prefix = format!("{REPLICA_PREFIX}{}/{}-", target.namespace, target.name);
    let mut hashes = Vec::new();
    for key in view.committed_keys(&prefix)? {
        if let Some(r) = view.get::<ReplicaRecord>(&key)? {
            if r.deployment == target.name && !hashes.contains(&r.revision) {
                hashes.push(r.revision);
            }
        }
    }
    Ok(hashes)
}

/// Make the deployment's current template its newest revision. A template
/// seen before (a rollback, or re-applying an old file) moves its revision to
/// the next number, as Kubernetes does; scaling never gets here with a new
/// template. Old revisions beyond `revisionHistoryLimit` are dropped unless a
/// replica still runs them.
fn record_revision(stored: &mut StoredDeployment, now: i64, in_use: &[String]) {
    let template = &stored.deployment.spec.template;
    let hash = revision(template);
    let change_cause = stored
        .deployment
        .metadata
        .annotations
        .get(CHANGE_CAUSE_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let revisions = &mut stored.revisions;
    if let Some(last) = revisions.last_mut() {
        if last.hash == hash {
            if !change_cause.is_empty() {
                last.change_cause = change_cause;
            }
            return;
        }
    }
    let number = revisions.iter().map(|r| r.number).max().unwrap_or(0) + 1;
    revisions.retain(|r| r.hash != hash);
    revisions.push(Revision {
        number,
        hash,
        template: template.clone(),
        created_unix_ms: now,
        change_cause,
    });
    // A new template is a new rollout: it starts progressing now.
    stored.rollout.progress_unix_ms = now;
    stored.rollout.available_updated = 0;
    stored.rollout.failed = None;
    stored.rollout.rolled_back = None;
    let limit = stored.deployment.spec.revision_history_limit as usize;
    let current = revisions.len() - 1;
    let mut kept_old = 0;
    let mut keep = vec![true; revisions.len()];
    for i in (0..current).rev() {
        if kept_old < limit {
            kept_old += 1;
        } else if !in_use.contains(&revisions[i].hash) {
            keep[i] = false;
        }
    }
    let mut flags = keep.into_iter();
    revisions.retain(|_| flags.next().unwrap_or(true));
}

fn delete(
    view: &mut View<'_>,
    refs: &[ObjectRef],
    ignore_not_found: bool,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let mut deleted = Vec::new();
    for r in refs {
        let key = deploy_key(&r.namespace, &r.name);
        if view.get::<StoredDeployment>(&key)?.is_some() {
            view.remove(key);
            deleted.push(r.clone());
        } else if !ignore_not_found && !deleted.contains(r) {
            return Ok(Err(WriteError::NotFound {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            }));
        }
    }
    Ok(Ok(WriteResult::Deleted(deleted)))
}

fn scale(
    view: &mut View<'_>,
    target: &ObjectRef,
    replicas: u32,
    now: i64,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let key = deploy_key(&target.namespace, &target.name);
    let Some(mut stored) = view.get::<StoredDeployment>(&key)? else {
        return Ok(Err(WriteError::NotFound {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        }));
    };
    let previous = stored.deployment.spec.replicas;
    if previous != replicas {
        stored.deployment.spec.replicas = replicas;
        stored.generation += 1;
        stored.updated_unix_ms = now;
        view.put(key, &stored)?;
    }
    Ok(Ok(WriteResult::Scaled {
        previous,
        replicas,
        generation: stored.generation,
    }))
}

fn register_node(
    view: &mut View<'_>,
    node: &NodeRegistration,
    now: i64,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let key = node_key(&node.name);
    let existing = view.get::<NodeRecord>(&key)?;
    let record = NodeRecord {
        name: node.name.clone(),
        labels: node.labels.clone(),
        capacity: node.capacity,
        address: node.address.clone(),
        runtime: node.runtime.clone(),
        agent_version: node.agent_version.clone(),
        incarnation: node.incarnation.clone(),
        registered_unix_ms: existing.as_ref().map_or(now, |n| n.registered_unix_ms),
        condition: NodeCondition::Ready,
        condition_since_unix_ms: match &existing {
            Some(n) if n.condition == NodeCondition::Ready => n.condition_since_unix_ms,
            _ => now,
        },
        cordoned: existing.as_ref().is_some_and(|n| n.cordoned),
        draining: existing.as_ref().is_some_and(|n| n.draining),
    };
    if existing.as_ref() == Some(&record) {
        return Ok(Ok(WriteResult::Changed(0)));
    }
    view.put(key, &record)?;
    Ok(Ok(WriteResult::Changed(1)))
}

fn node_condition(
    view: &mut View<'_>,
    name: &str,
    condition: NodeCondition,
    now: i64,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let key = node_key(name);
    let Some(mut node) = view.get::<NodeRecord>(&key)? else {
        return Ok(Err(WriteError::NodeNotFound(name.to_string())));
    };
    if node.condition == condition {
        return Ok(Ok(WriteResult::Changed(0)));
    }
    node.condition = condition;
    node.condition_since_unix_ms = now;
    view.put(key, &node)?;
    let mut changed = 1;
    if condition == NodeCondition::NotReady {
        for key in view.committed_keys(REPLICA_PREFIX)? {
            let Some(mut r) = view.get::<ReplicaRecord>(&key)? else {
                continue;
            };
            if r.node.as_deref() == Some(name) {
                // The last report stays, tagged with its node: it counts again
                // only if the replica is placed back there.
                r.node = None;
                view.put(key, &r)?;
                changed += 1;
            }
        }
    }
    Ok(Ok(WriteResult::Changed(changed)))
}

/// Cordon, uncordon (which also ends a drain) or drain a node.
fn cordon(
    view: &mut View<'_>,
    name: &str,
    cordoned: bool,
    draining: bool,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let key = node_key(name);
    let Some(mut node) = view.get::<NodeRecord>(&key)? else {
        return Ok(Err(WriteError::NodeNotFound(name.to_string())));
    };
    // Cordoning a draining node leaves the drain running.
    let draining = draining || (cordoned && node.draining);
    if node.cordoned == cordoned && node.draining == draining {
        return Ok(Ok(WriteResult::Changed(0)));
    }
    node.cordoned = cordoned;
    node.draining = draining;
    view.put(key, &node)?;
    Ok(Ok(WriteResult::Changed(1)))
}

fn stored_deployment(
    view: &View<'_>,
    target: &ObjectRef,
) -> Result<Result<(String, StoredDeployment), WriteError>, StoreError> {
    let key = deploy_key(&target.namespace, &target.name);
    Ok(match view.get::<StoredDeployment>(&key)? {
        Some(d) => Ok((key, d)),
        None => Err(WriteError::NotFound {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        }),
    })
}

fn undo(
    view: &mut View<'_>,
    target: &ObjectRef,
    to_revision: Option<u64>,
    reason: &Option<String>,
    now: i64,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let (key, mut stored) = match stored_deployment(view, target)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let current = stored.current_revision_number();
    let wanted = match to_revision {
        Some(n) => stored.revisions.iter().find(|r| r.number == n),
        None => stored.revisions.iter().rev().nth(1),
    };
    let Some(wanted) = wanted.cloned() else {
        return Ok(Err(WriteError::NoRevision {
            name: target.name.clone(),
            revision: to_revision,
        }));
    };
    if wanted.number == current {
        return Ok(Ok(WriteResult::RolledBack {
            revision: current,
            changed: false,
        }));
    }
    stored.deployment.spec.template = wanted.template;
    stored.generation += 1;
    stored.updated_unix_ms = now;
    let in_use = revisions_in_use(view, target)?;
    record_revision(&mut stored, now, &in_use);
    stored.rollout.rolled_back = reason.clone();
    let revision = stored.current_revision_number();
    view.put(key, &stored)?;
    Ok(Ok(WriteResult::RolledBack {
        revision,
        changed: true,
    }))
}

fn pause(
    view: &mut View<'_>,
    target: &ObjectRef,
    paused: bool,
    now: i64,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let (key, mut stored) = match stored_deployment(view, target)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    if stored.rollout.paused == paused {
        return Ok(Ok(WriteResult::Changed(0)));
    }
    stored.rollout.paused = paused;
    // A paused rollout does not time out; resumed, its deadline starts over.
    if !paused {
        stored.rollout.progress_unix_ms = now;
    }
    view.put(key, &stored)?;
    Ok(Ok(WriteResult::Changed(1)))
}

/// A record is skipped (no error) when its deployment is gone or its
/// template changed since the leader looked: it is about one revision.
fn rollout_progress(
    view: &mut View<'_>,
    records: &[RolloutRecord],
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let mut changed = 0;
    for record in records {
        let Ok((key, mut stored)) = stored_deployment(view, &record.target)? else {
            continue;
        };
        if revision(&stored.deployment.spec.template) != record.revision {
            continue;
        }
        let next = RolloutState {
            progress_unix_ms: record.progress_unix_ms,
            available_updated: record.available_updated,
            failed: record.failed.clone(),
            ..stored.rollout.clone()
        };
        if stored.rollout == next {
            continue;
        }
        stored.rollout = next;
        view.put(key, &stored)?;
        changed += 1;
    }
    Ok(Ok(WriteResult::Changed(changed)))
}

fn reconcile(
    view: &mut View<'_>,
    create: &[ReplicaRecord],
    remove: &[ObjectRef],
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let mut changed = 0;
    for r in remove {
        let key = replica_key(&r.namespace, &r.name);
        if view.get::<ReplicaRecord>(&key)?.is_some() {
            view.remove(key);
            changed += 1;
        }
    }
    if create.is_empty() {
        return Ok(Ok(WriteResult::Changed(changed)));
    }
    // Slots already taken per deployment revision, from committed state and
    // this command. A rollout runs two revisions side by side, so the same
    // slot number may exist once per revision.
    let mut taken: BTreeMap<(String, String, String), Vec<u32>> = BTreeMap::new();
    for key in view.committed_keys(REPLICA_PREFIX)? {
        if let Some(r) = view.get::<ReplicaRecord>(&key)? {
            taken
                .entry((r.namespace, r.deployment, r.revision))
                .or_default()
                .push(r.slot);
        }
    }
    for r in create {
        let slots = taken
            .entry((
                r.namespace.clone(),
                r.deployment.clone(),
                r.revision.clone(),
            ))
            .or_default();
        if slots.contains(&r.slot) || view.get::<ReplicaRecord>(&r.key())?.is_some() {
            continue;
        }
        slots.push(r.slot);
        view.put(r.key(), r)?;
        changed += 1;
    }
    Ok(Ok(WriteResult::Changed(changed)))
}

fn schedule(
    view: &mut View<'_>,
    place: &[(ObjectRef, String)],
    unschedulable: &[(ObjectRef, String)],
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let mut changed = 0;
    for (r, node) in place {
        let key = replica_key(&r.namespace, &r.name);
        let Some(mut replica) = view.get::<ReplicaRecord>(&key)? else {
            continue;
        };
        if replica.node.is_some() || view.get::<NodeRecord>(&node_key(node))?.is_none() {
            continue;
        }
        replica.node = Some(node.clone());
        replica.pending_reason.clear();
        view.put(key, &replica)?;
        changed += 1;
    }
    for (r, reason) in unschedulable {
        let key = replica_key(&r.namespace, &r.name);
        let Some(mut replica) = view.get::<ReplicaRecord>(&key)? else {
            continue;
        };
        if replica.node.is_some() || replica.pending_reason == *reason {
            continue;
        }
        replica.pending_reason = reason.clone();
        view.put(key, &replica)?;
        changed += 1;
    }
    Ok(Ok(WriteResult::Changed(changed)))
}

fn report_status(
    view: &mut View<'_>,
    reports: &[(String, ObjectRef, ReplicaObserved)],
    now: i64,
) -> Result<Result<WriteResult, WriteError>, StoreError> {
    let mut changed = 0;
    for (node, r, observed) in reports {
        let key = replica_key(&r.namespace, &r.name);
        let Some(mut replica) = view.get::<ReplicaRecord>(&key)? else {
            continue;
        };
        if replica.node.as_deref() != Some(node.as_str()) {
            continue;
        }
        let mut observed = observed.clone();
        observed.reported_unix_ms = now;
        observed.node = node.clone();
        observed.ready_since_unix_ms = match replica.current_status() {
            _ if !observed.ready => 0,
            Some(previous) if previous.ready => previous.ready_since_unix_ms,
            _ => now,
        };
        replica.observed = observed;
        view.put(key, &replica)?;
        changed += 1;
    }
    Ok(Ok(WriteResult::Changed(changed)))
}
