//! Commands: the writes that go through the raft log, and what applying them
//! does to the state.
//!
//! A [`Write`] is what a client asks for; the raft node turns membership writes
//! into raft configuration changes and everything else into a [`Command`]
//! entry. Applying a command is a pure function of the current state and the
//! command: refusals (`WriteError`) are decided the same way on every member,
//! and a refused command writes nothing.
//!
//! Commands change the [`State`] in place; a command reads what it wrote
//! earlier (two replicas created in one entry see each other), and
//! [`State::apply`] puts the state back when it is refused.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use drover_manifest::Deployment;

use crate::orchestrator::rollout;

use super::events::{name_list, InvolvedObject, NewEvent};
use super::objects::{
    Booking, NodeCondition, NodeRecord, ReplicaObserved, ReplicaPhase, ReplicaRecord, Resources,
    TokenRecord,
};
use super::state::{Held, State};
use super::{revision, Revision, RolloutState, StoredDeployment};

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

/// The format of the commands this controller writes, and the newest it can
/// apply. Bump it with every change to [`Command`] (or the types inside it)
/// that an older controller would not apply exactly as this one does: an
/// older member then stops applying at the first newer entry, with a
/// sentence in `cluster status`, instead of skipping or misreading it.
/// Format 3 added `ApplyIf` and `ChangeNodeMeta` (issue 21); format 5
/// `DeleteNodes` (issue 12), `ApplyConfig` and `DeleteConfig` (issue 16);
/// format 6 `ApplyConfig.services` and `.service_range`, and `DeleteServices`
/// (issue 15); format 7 `ReplicaObserved.published_ports` in `ReportStatus`
/// (issue 15: an older member would drop them and compute other endpoints);
/// format 8 changes how `Reconcile` and `Schedule` apply
/// ([`DECISIONS_RECHECKED`]); format 9 leaves a replica record's and its
/// observed status's fields out at their defaults (`objects.rs`: an older
/// member would refuse them as missing, so it must stop, not misread).
/// Snapshots carry the same records: a member older than format 9 cannot
/// install a newer one's snapshot, which the upgrade order (followers
/// first, `docs/operations.md`) never asks of it. Format 10 lets a
/// `Reconcile` bind the replicas it creates ([`CREATES_BOUND`]); format 11
/// numbers each binding ([`BINDINGS_NUMBERED`]).
pub const COMMAND_FORMAT: u32 = 11;

/// The first format whose leader decisions are re-checked against the state
/// they apply to, not only the one they were decided on: a `Reconcile`
/// creates no replica beyond the deployment's current desired count +
/// maxSurge, and a `Schedule` places nothing on a cordoned node. An entry of
/// an older format applies as it did when it was written (a stale one may
/// overshoot, or bind to a node cordoned meanwhile), so a log replays to the
/// same state whatever version replays it.
pub const DECISIONS_RECHECKED: u32 = 8;

/// The first format in which a `Reconcile`'s new replica may carry the node
/// the leader's scheduler chose for it, so that creating and binding it is
/// one entry instead of two (half the entries, records written and watch
/// events of a placement). The node is checked as a `Schedule`'s placement
/// is; a replica the node can no longer take is created unbound, for the
/// next scheduler pass. An older format's creation is stored as written.
pub const CREATES_BOUND: u32 = 10;

/// The first format in which binding a replica to a node (a `Schedule`'s
/// placement, a `Reconcile`'s bound creation) records the entry's log index
/// in the replica (`ReplicaRecord::bound_at`), and unbinding it clears it.
/// Agents get it with each assignment: a replica moved off a node (it was
/// NotReady for a moment) and placed back there before the node saw a set
/// without it is a new assignment to the agent, which says its status
/// again; else the store, which ignored what the agent said while the
/// replica was elsewhere, kept it Pending for good (simulator seeds 7734
/// and 9105).
pub const BINDINGS_NUMBERED: u32 = 11;

/// A state-machine command, as stored in a raft entry. A change to its shape
/// that an older controller would not apply exactly the same way bumps
/// [`COMMAND_FORMAT`]; an unknown field is refused, not ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Command {
    /// Create or update deployments, all in one entry (all or nothing).
    Apply {
        deployments: Vec<Deployment>,
        now_unix_ms: i64,
    },
    /// A read-modify-write verb's apply (`set image`, `label`, `patch`,
    /// `edit`...): refused unless the deployment exists with
    /// `expected_generation`, so two concurrent edits cannot lose one.
    ApplyIf {
        deployment: Box<Deployment>,
        expected_generation: u64,
        now_unix_ms: i64,
    },
    /// `droverctl label|annotate node`: an admin's changes to a node's
    /// labels and annotations, kept over the agent's own labels.
    ChangeNodeMeta {
        node: String,
        change: super::node_meta::NodeMetaChange,
        now_unix_ms: i64,
    },
    /// Delete deployments; with `ignore_not_found` false, one missing name
    /// refuses the whole command.
    Delete {
        refs: Vec<ObjectRef>,
        ignore_not_found: bool,
        #[serde(default)]
        now_unix_ms: i64,
        /// `delete --grace-period`: the deployments' replicas terminate at
        /// once, each given this long to stop instead of its template's
        /// grace period.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_period_seconds: Option<u32>,
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
    Cordon {
        node: String,
        cordoned: bool,
        #[serde(default)]
        now_unix_ms: i64,
    },
    /// Cordon a node and have its replicas replaced elsewhere.
    Drain {
        node: String,
        #[serde(default)]
        now_unix_ms: i64,
    },
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
    RolloutProgress {
        records: Vec<RolloutRecord>,
        #[serde(default)]
        now_unix_ms: i64,
    },
    /// The orchestrator's decisions: replicas to create and to remove.
    /// Creating a replica whose deployment slot is taken, or removing one that
    /// is gone, is skipped, so a decision made on slightly old state is harmless.
    /// From format [`DECISIONS_RECHECKED`] on, so is a creation that would take
    /// its deployment beyond its current desired count + maxSurge (a `Scale`
    /// down or a `Delete` committed after the decision), or of a deployment
    /// that is gone. From format [`CREATES_BOUND`] on, a creation that
    /// names a node is bound to it if the node can take it as a `Schedule`
    /// placement would be taken, and created unbound otherwise.
    Reconcile {
        create: Vec<ReplicaRecord>,
        remove: Vec<ObjectRef>,
        #[serde(default)]
        now_unix_ms: i64,
    },
    /// The scheduler's decisions for unbound replicas. A placement on a node
    /// that is gone, not Ready or too full by now is skipped (the next round
    /// places the replica again); from format [`DECISIONS_RECHECKED`] on, so
    /// is one on a node cordoned since.
    Schedule {
        place: Vec<(ObjectRef, String)>,
        unschedulable: Vec<(ObjectRef, String)>,
        #[serde(default)]
        now_unix_ms: i64,
    },
    /// Statuses agents reported, batched: `(node, replica, status)`. A status
    /// counts only for a replica bound to that node: an agent speaks for its
    /// own node only.
    ReportStatus {
        reports: Vec<(String, ObjectRef, ReplicaObserved)>,
        now_unix_ms: i64,
    },
    /// An apply holding ConfigMaps, Secrets or Services: those and the
    /// deployments in one entry, all or nothing (`config_objects.rs`,
    /// `services.rs`). Services get their addresses from `service_range`,
    /// the proposing controller's `--service-cluster-ip-range` (so every
    /// member allocates the same, whatever its own flag).
    ApplyConfig {
        deployments: Vec<Deployment>,
        config_maps: Vec<drover_manifest::ConfigMap>,
        secrets: Vec<drover_manifest::Secret>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<drover_manifest::Service>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_range: Option<super::services::ServiceRange>,
        now_unix_ms: i64,
    },
    /// Delete ConfigMaps or Secrets (`config_objects.rs`).
    DeleteConfig {
        kind: super::config_objects::ConfigKind,
        refs: Vec<ObjectRef>,
        ignore_not_found: bool,
    },
    /// Delete Services (`services.rs`); with `ignore_not_found` false, one
    /// missing name refuses the whole command.
    DeleteServices {
        refs: Vec<ObjectRef>,
        ignore_not_found: bool,
    },
    /// A new join token (an id taken already is refused).
    CreateToken { token: TokenRecord },
    /// Revoke a join token: joins with it are refused from now on.
    RevokeToken { id: String },
    /// `droverctl delete node`: forget nodes, all or none. A Ready node is
    /// refused unless `force`. Their replicas are unbound (to be scheduled
    /// elsewhere), their admin labels go with them, their names' epochs go
    /// up (revoking their certificates) and their names become free for a
    /// join token.
    DeleteNodes {
        nodes: Vec<String>,
        force: bool,
        now_unix_ms: i64,
    },
}

impl Command {
    /// Whether applying it can end in a [`WriteError`] (after changing some
    /// of the state, which is then put back). The leader's own commands,
    /// the hot path, skip over what became stale instead and never fail.
    pub(super) fn may_be_refused(&self) -> bool {
        match self {
            Command::Apply { .. }
            | Command::RegisterNode { .. }
            | Command::RolloutProgress { .. }
            | Command::Reconcile { .. }
            | Command::Schedule { .. }
            | Command::ReportStatus { .. } => false,
            Command::ApplyIf { .. }
            | Command::ChangeNodeMeta { .. }
            | Command::Delete { .. }
            | Command::Scale { .. }
            | Command::NodeDown { .. }
            | Command::NodeUp { .. }
            | Command::Cordon { .. }
            | Command::Drain { .. }
            | Command::Undo { .. }
            | Command::PauseRollout { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::DeleteNodes { .. }
            | Command::ApplyConfig { .. }
            | Command::DeleteConfig { .. }
            | Command::DeleteServices { .. } => true,
        }
    }
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
    /// Add a controller as a learner: it receives the log but does not vote,
    /// so a wrong address or a slow start costs the cluster nothing.
    AddMember {
        id: u64,
        address: String,
    },
    /// Make a learner that caught up a voter.
    PromoteMember {
        id: u64,
    },
    RemoveMember {
        id: u64,
    },
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
    /// An `ApplyConfig`: its ConfigMaps and Secrets, then its deployments
    /// (and its Services).
    AppliedConfig {
        config: Vec<super::config_objects::ConfigResult>,
        deployments: Vec<(ObjectRef, ApplyOutcome, u64)>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<super::services::ServiceResult>,
    },
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
    #[error("deployment {name:?} in namespace {namespace:?} was changed meanwhile (generation {actual}, not {expected}); read it again and retry")]
    Conflict {
        namespace: String,
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("{}", no_revision(.name, .revision))]
    NoRevision { name: String, revision: Option<u64> },
    #[error("join token {0:?} not found (droverctl token list shows them)")]
    TokenNotFound(String),
    #[error("join token id {0:?} is taken")]
    TokenExists(String),
    #[error("a join token's role is agent or controller, not {0:?}")]
    TokenRole(String),
    #[error("node {0:?} is Ready: drain it (droverctl drain {0}) and stop its agent first, or delete it anyway with --force (its agent's certificate is revoked with it)")]
    NodeReady(String),
    #[error("{kind} {name:?} in namespace {namespace:?} is immutable: its data cannot change; delete it and apply it again")]
    Immutable {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("{} {name:?} not found in namespace {namespace:?}", .kind.to_lowercase())]
    ConfigNotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    /// A Service the cluster cannot take as it is: `path` names the field.
    #[error("service {name:?} in namespace {namespace:?}: {path}: {message}")]
    Service {
        namespace: String,
        name: String,
        path: String,
        message: String,
    },
    #[error("service {name:?} not found in namespace {namespace:?}")]
    ServiceNotFound { namespace: String, name: String },
}

fn no_revision(name: &str, revision: &Option<u64>) -> String {
    match revision {
        Some(n) => format!(
            "deployment {name:?} has no revision {n}: see `droverctl rollout history deployment {name}`"
        ),
        None => format!("deployment {name:?} has no previous revision to roll back to"),
    }
}

pub(super) fn execute(
    state: &mut State,
    command: &Command,
    index: u64,
    format: u32,
) -> Result<WriteResult, WriteError> {
    // What a binding by this entry records ([`BINDINGS_NUMBERED`]).
    let bound_at = if format >= BINDINGS_NUMBERED {
        index
    } else {
        0
    };
    match command {
        Command::Apply {
            deployments,
            now_unix_ms,
        } => apply(state, deployments, *now_unix_ms),
        Command::ChangeNodeMeta { node, change, .. } => {
            super::node_meta::change(state, node, change)
        }
        Command::ApplyConfig {
            deployments,
            config_maps,
            secrets,
            services,
            service_range,
            now_unix_ms,
        } => {
            let config = super::config_objects::apply(state, config_maps, secrets, *now_unix_ms)?;
            let services = super::services::apply(
                state,
                services,
                &service_range.unwrap_or_default(),
                *now_unix_ms,
            )?;
            let deployments = match apply(state, deployments, *now_unix_ms)? {
                WriteResult::Applied(d) => d,
                _ => Vec::new(),
            };
            Ok(WriteResult::AppliedConfig {
                config,
                deployments,
                services,
            })
        }
        Command::DeleteServices {
            refs,
            ignore_not_found,
        } => super::services::delete(state, refs, *ignore_not_found).map(WriteResult::Deleted),
        Command::DeleteConfig {
            kind,
            refs,
            ignore_not_found,
        } => super::config_objects::delete(state, *kind, refs, *ignore_not_found)
            .map(WriteResult::Deleted),
        Command::ApplyIf {
            deployment,
            expected_generation,
            now_unix_ms,
        } => {
            let m = &deployment.metadata;
            let Some(old) = state.deployment(&m.namespace, &m.name) else {
                return Err(WriteError::NotFound {
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                });
            };
            if old.generation != *expected_generation {
                return Err(WriteError::Conflict {
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                    expected: *expected_generation,
                    actual: old.generation,
                });
            }
            apply(state, std::slice::from_ref(&**deployment), *now_unix_ms)
        }
        Command::Delete {
            refs,
            ignore_not_found,
            now_unix_ms,
            grace_period_seconds,
        } => delete(
            state,
            refs,
            *ignore_not_found,
            *now_unix_ms,
            *grace_period_seconds,
        ),
        Command::Scale {
            target,
            replicas,
            now_unix_ms,
        } => scale(state, target, *replicas, *now_unix_ms),
        Command::RegisterNode { node, now_unix_ms } => register_node(state, node, *now_unix_ms),
        Command::NodeDown { node, now_unix_ms } => {
            node_condition(state, node, NodeCondition::NotReady, *now_unix_ms)
        }
        Command::NodeUp { node, now_unix_ms } => {
            node_condition(state, node, NodeCondition::Ready, *now_unix_ms)
        }
        Command::Cordon {
            node,
            cordoned,
            now_unix_ms,
        } => cordon(state, node, *cordoned, false, *now_unix_ms),
        Command::Drain { node, now_unix_ms } => cordon(state, node, true, true, *now_unix_ms),
        Command::Undo {
            target,
            to_revision,
            reason,
            now_unix_ms,
        } => undo(state, target, *to_revision, reason, *now_unix_ms),
        Command::PauseRollout {
            target,
            paused,
            now_unix_ms,
        } => pause(state, target, *paused, *now_unix_ms),
        Command::RolloutProgress {
            records,
            now_unix_ms,
        } => rollout_progress(state, records, *now_unix_ms),
        Command::Reconcile {
            create,
            remove,
            now_unix_ms,
        } => {
            let rechecked = format >= DECISIONS_RECHECKED;
            let bind = (format >= CREATES_BOUND).then_some(bound_at);
            reconcile(state, create, remove, rechecked, bind, *now_unix_ms)
        }
        Command::Schedule {
            place,
            unschedulable,
            now_unix_ms,
        } => {
            let rechecked = format >= DECISIONS_RECHECKED;
            schedule(
                state,
                place,
                unschedulable,
                rechecked,
                bound_at,
                *now_unix_ms,
            )
        }
        Command::ReportStatus {
            reports,
            now_unix_ms,
        } => report_status(state, reports, *now_unix_ms),
        Command::CreateToken { token } => {
            // Whoever proposed it (a forwarded write from any controller
            // included): joins issue agent and controller certificates only.
            if !matches!(token.role.as_str(), "agent" | "controller") {
                return Err(WriteError::TokenRole(token.role.clone()));
            }
            if state.token(&token.id).is_some() {
                return Err(WriteError::TokenExists(token.id.clone()));
            }
            state.put_token(token.clone());
            Ok(WriteResult::Changed(1))
        }
        Command::DeleteNodes {
            nodes,
            force,
            now_unix_ms,
        } => delete_nodes(state, nodes, *force, *now_unix_ms),
        Command::RevokeToken { id } => {
            let Some(mut token) = state.token(id).cloned() else {
                return Err(WriteError::TokenNotFound(id.clone()));
            };
            let changed = usize::from(!token.revoked);
            token.revoked = true;
            state.put_token(token);
            Ok(WriteResult::Changed(changed))
        }
    }
}

fn not_found(target: &ObjectRef) -> WriteError {
    WriteError::NotFound {
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    }
}

fn apply(
    state: &mut State,
    deployments: &[Deployment],
    now: i64,
) -> Result<WriteResult, WriteError> {
    let mut results = Vec::with_capacity(deployments.len());
    for d in deployments {
        let target = ObjectRef {
            namespace: d.metadata.namespace.clone(),
            name: d.metadata.name.clone(),
        };
        let (mut stored, outcome) = match state.deployment(&target.namespace, &target.name) {
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
                    revisions: old.revisions.clone(),
                    rollout: old.rollout.clone(),
                },
                ApplyOutcome::Configured,
            ),
        };
        let in_use = revisions_in_use(state, &target);
        record_revision(&mut stored, now, &in_use);
        let generation = stored.generation;
        state.put_deployment(stored);
        results.push((target, outcome, generation));
    }
    Ok(WriteResult::Applied(results))
}

/// Revision hashes that replicas of a deployment run now.
fn revisions_in_use(state: &State, target: &ObjectRef) -> Vec<String> {
    let mut hashes: Vec<String> = Vec::new();
    for r in state.replicas_of(target) {
        if !hashes.contains(&r.revision) {
            hashes.push(r.revision.clone());
        }
    }
    hashes
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
    state: &mut State,
    refs: &[ObjectRef],
    ignore_not_found: bool,
    now: i64,
    grace_period_seconds: Option<u32>,
) -> Result<WriteResult, WriteError> {
    let mut deleted = Vec::new();
    for r in refs {
        if state.remove_deployment(r).is_some() {
            state.record(
                now,
                NewEvent::normal(
                    "Deleted",
                    InvolvedObject::deployment(&r.namespace, &r.name),
                    "Deployment deleted; its replicas will be stopped".into(),
                ),
            );
            if let Some(grace) = grace_period_seconds {
                terminate_replicas_of(state, r, grace, now);
            }
            deleted.push(r.clone());
        } else if !ignore_not_found && !deleted.contains(r) {
            return Err(not_found(r));
        }
    }
    Ok(WriteResult::Deleted(deleted))
}

/// A deployment deleted with its own grace period: its replicas terminate
/// now (rather than when the orchestrator gets to them) with that grace; the
/// unbound ones go at once.
fn terminate_replicas_of(state: &mut State, deployment: &ObjectRef, grace: u32, now: i64) {
    for key in state.replica_keys_of(deployment) {
        let Some(r) = state.replica(&key.namespace, &key.name) else {
            continue;
        };
        if r.node.is_none() {
            state.remove_replica(&key);
            continue;
        }
        let mut r = ReplicaRecord::clone(r);
        if !r.is_terminating() {
            r.terminating_since_unix_ms = now.max(1);
        }
        r.stop_grace_seconds = Some(grace);
        state.put_replica(r);
    }
}

fn scale(
    state: &mut State,
    target: &ObjectRef,
    replicas: u32,
    now: i64,
) -> Result<WriteResult, WriteError> {
    let mut stored = stored_deployment(state, target)?;
    let previous = stored.deployment.spec.replicas;
    let generation = if previous != replicas {
        stored.deployment.spec.replicas = replicas;
        stored.generation += 1;
        stored.updated_unix_ms = now;
        let generation = stored.generation;
        state.put_deployment(stored);
        state.record(
            now,
            NewEvent::normal(
                "Scaled",
                InvolvedObject::deployment(&target.namespace, &target.name),
                format!("Scaled from {previous} to {replicas} replicas"),
            ),
        );
        generation
    } else {
        stored.generation
    };
    Ok(WriteResult::Scaled {
        previous,
        replicas,
        generation,
    })
}

fn register_node(
    state: &mut State,
    node: &NodeRegistration,
    now: i64,
) -> Result<WriteResult, WriteError> {
    let existing = state.node(&node.name).cloned();
    let record = NodeRecord {
        name: node.name.clone(),
        labels: super::node_meta::registered_labels(state, &node.name, &node.labels),
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
    if existing.as_deref() == Some(&record) {
        return Ok(WriteResult::Changed(0));
    }
    let object = InvolvedObject::node(&node.name);
    match &existing {
        None => state.record(
            now,
            NewEvent::normal(
                "RegisteredNode",
                object,
                format!(
                    "Node {} registered (runtime {}, agent at {})",
                    node.name, node.runtime, node.address
                ),
            ),
        ),
        Some(old) => {
            if old.incarnation != record.incarnation {
                state.record(
                    now,
                    NewEvent::normal(
                        "AgentStarted",
                        object.clone(),
                        format!("The agent on node {} (re)started and connected", node.name),
                    ),
                );
            }
            if old.condition != NodeCondition::Ready {
                state.record(now, node_ready_event(&node.name));
            }
        }
    }
    state.put_node(record);
    Ok(WriteResult::Changed(1))
}

/// `droverctl delete node`: every named node must exist, and be NotReady
/// unless `force`; otherwise nothing changes. Each node's record and admin
/// labels are removed, so a host joining later under the name starts clean
/// (reserved labels included), and the name's epoch goes up, which revokes
/// the certificates issued for it so far. Its replicas are handled as when it goes
/// NotReady: terminating ones are gone with it, the others are unbound for
/// the scheduler. Cost: one scan of the replicas per node.
fn delete_nodes(
    state: &mut State,
    names: &[String],
    force: bool,
    now: i64,
) -> Result<WriteResult, WriteError> {
    for name in names {
        match state.node(name) {
            None => return Err(WriteError::NodeNotFound(name.clone())),
            Some(n) if n.condition == NodeCondition::Ready && !force => {
                return Err(WriteError::NodeReady(name.clone()))
            }
            Some(_) => {}
        }
    }
    let mut changed = 0;
    for name in names {
        if state.node(name).is_none() {
            continue; // named twice
        }
        let (released, unbound) = release_replicas_on(state, name);
        changed += released;
        let unbound = unbound.len();
        // Revokes every certificate issued for the name so far.
        state.remove_node(name);
        changed += 1;
        state.record(
            now,
            NewEvent::normal(
                "RemovingNode",
                InvolvedObject::node(name),
                format!("Node {name} deleted; rescheduling its {unbound} replica(s)"),
            ),
        );
    }
    Ok(WriteResult::Changed(changed))
}

fn node_ready_event(name: &str) -> NewEvent {
    NewEvent::normal(
        "NodeReady",
        InvolvedObject::node(name),
        format!("Node {name} status is now: Ready"),
    )
}

fn node_condition(
    state: &mut State,
    name: &str,
    condition: NodeCondition,
    now: i64,
) -> Result<WriteResult, WriteError> {
    let Some(node) = state.node(name) else {
        return Err(WriteError::NodeNotFound(name.to_string()));
    };
    if node.condition == condition {
        return Ok(WriteResult::Changed(0));
    }
    let mut node = NodeRecord::clone(node);
    node.condition = condition;
    node.condition_since_unix_ms = now;
    state.put_node(node);
    let mut changed = 1;
    if condition == NodeCondition::Ready {
        state.record(now, node_ready_event(name));
        return Ok(WriteResult::Changed(changed));
    }
    let (released, moved) = release_replicas_on(state, name);
    changed += released;
    state.record(
        now,
        NewEvent::warning(
            "NodeNotReady",
            InvolvedObject::node(name),
            format!(
                "Node {name} status is now: NotReady (no heartbeat from its agent); \
                 rescheduling its {} replica(s)",
                moved.len()
            ),
        ),
    );
    for (namespace, replica) in moved {
        state.record(
            now,
            NewEvent::warning(
                "NodeLost",
                InvolvedObject::replica(&namespace, &replica),
                format!("Node {name} is NotReady; rescheduling the replica to another node"),
            ),
        );
    }
    Ok(WriteResult::Changed(changed))
}

/// A lost or deleted node's replicas: the terminating ones go (nobody will
/// report them stopped, and what they held goes with the node), the others
/// are unbound so the scheduler places them elsewhere. The last report
/// stays, tagged with its node: it counts again only if the replica is
/// placed back there. Returns how many replicas changed, and the unbound
/// ones' `(namespace, name)`.
fn release_replicas_on(state: &mut State, node: &str) -> (usize, Vec<(String, String)>) {
    let mut changed = 0;
    let mut unbound = Vec::new();
    for key in state.replica_keys_on(node) {
        let Some(r) = state.replica(&key.namespace, &key.name) else {
            continue;
        };
        changed += 1;
        if r.is_terminating() {
            state.remove_replica(&key);
            continue;
        }
        let mut r = ReplicaRecord::clone(r);
        r.node = None;
        r.bound_at = 0;
        unbound.push((r.namespace.clone(), r.name.clone()));
        state.put_replica(r);
    }
    (changed, unbound)
}

/// Cordon, uncordon (which also ends a drain) or drain a node.
fn cordon(
    state: &mut State,
    name: &str,
    cordoned: bool,
    draining: bool,
    now: i64,
) -> Result<WriteResult, WriteError> {
    let Some(node) = state.node(name) else {
        return Err(WriteError::NodeNotFound(name.to_string()));
    };
    // Cordoning a draining node leaves the drain running.
    let draining = draining || (cordoned && node.draining);
    if node.cordoned == cordoned && node.draining == draining {
        return Ok(WriteResult::Changed(0));
    }
    let mut node = NodeRecord::clone(node);
    node.cordoned = cordoned;
    node.draining = draining;
    state.put_node(node);
    let (reason, status) = match (cordoned, draining) {
        (true, true) => (
            "NodeDraining",
            "NotSchedulable (draining: its replicas are replaced elsewhere)",
        ),
        (true, false) => ("NodeNotSchedulable", "NotSchedulable (cordoned)"),
        (false, _) => ("NodeSchedulable", "Schedulable"),
    };
    state.record(
        now,
        NewEvent::normal(
            reason,
            InvolvedObject::node(name),
            format!("Node {name} status is now: {status}"),
        ),
    );
    Ok(WriteResult::Changed(1))
}

/// A copy of the stored deployment, to change and put back.
fn stored_deployment(state: &State, target: &ObjectRef) -> Result<StoredDeployment, WriteError> {
    state
        .deployment(&target.namespace, &target.name)
        .map(|d| StoredDeployment::clone(d))
        .ok_or_else(|| not_found(target))
}

fn undo(
    state: &mut State,
    target: &ObjectRef,
    to_revision: Option<u64>,
    reason: &Option<String>,
    now: i64,
) -> Result<WriteResult, WriteError> {
    let mut stored = stored_deployment(state, target)?;
    let current = stored.current_revision_number();
    let wanted = match to_revision {
        Some(n) => stored.revisions.iter().find(|r| r.number == n),
        None => stored.revisions.iter().rev().nth(1),
    };
    let Some(wanted) = wanted.cloned() else {
        return Err(WriteError::NoRevision {
            name: target.name.clone(),
            revision: to_revision,
        });
    };
    if wanted.number == current {
        return Ok(WriteResult::RolledBack {
            revision: current,
            changed: false,
        });
    }
    stored.deployment.spec.template = wanted.template.clone();
    stored.generation += 1;
    stored.updated_unix_ms = now;
    let in_use = revisions_in_use(state, target);
    record_revision(&mut stored, now, &in_use);
    stored.rollout.rolled_back = reason.clone();
    let revision = stored.current_revision_number();
    state.put_deployment(stored);
    let object = InvolvedObject::deployment(&target.namespace, &target.name);
    let message = format!(
        "Rolled back to the template of revision {} (now revision {revision})",
        wanted.number
    );
    state.record(
        now,
        match reason {
            Some(why) => NewEvent::warning("RolledBack", object, format!("{why}; {message}")),
            None => NewEvent::normal("RolledBack", object, message),
        },
    );
    Ok(WriteResult::RolledBack {
        revision,
        changed: true,
    })
}

fn pause(
    state: &mut State,
    target: &ObjectRef,
    paused: bool,
    now: i64,
) -> Result<WriteResult, WriteError> {
    let mut stored = stored_deployment(state, target)?;
    if stored.rollout.paused == paused {
        return Ok(WriteResult::Changed(0));
    }
    stored.rollout.paused = paused;
    // A paused rollout does not time out; resumed, its deadline starts over.
    if !paused {
        stored.rollout.progress_unix_ms = now;
    }
    state.put_deployment(stored);
    let (reason, message) = if paused {
        (
            "RolloutPaused",
            "Rollout paused: no replicas are replaced until it is resumed",
        )
    } else {
        ("RolloutResumed", "Rollout resumed")
    };
    state.record(
        now,
        NewEvent::normal(
            reason,
            InvolvedObject::deployment(&target.namespace, &target.name),
            message.into(),
        ),
    );
    Ok(WriteResult::Changed(1))
}

/// A record is skipped (no error) when its deployment is gone or its
/// template changed since the leader looked: it is about one revision.
fn rollout_progress(
    state: &mut State,
    records: &[RolloutRecord],
    now: i64,
) -> Result<WriteResult, WriteError> {
    let mut changed = 0;
    for record in records {
        let Some(current) = state.deployment(&record.target.namespace, &record.target.name) else {
            continue;
        };
        if current.current_revision_hash() != record.revision {
            continue;
        }
        let next = RolloutState {
            progress_unix_ms: record.progress_unix_ms,
            available_updated: record.available_updated,
            failed: record.failed.clone(),
            ..current.rollout.clone()
        };
        if current.rollout == next {
            continue;
        }
        if let (None, Some(why)) = (&current.rollout.failed, &next.failed) {
            let why = why.clone();
            state.record(
                now,
                NewEvent::warning(
                    "ProgressDeadlineExceeded",
                    InvolvedObject::deployment(&record.target.namespace, &record.target.name),
                    why,
                ),
            );
        }
        let Ok(mut stored) = stored_deployment(state, &record.target) else {
            continue;
        };
        stored.rollout = next;
        state.put_deployment(stored);
        changed += 1;
    }
    Ok(WriteResult::Changed(changed))
}

fn reconcile(
    state: &mut State,
    create: &[ReplicaRecord],
    remove: &[ObjectRef],
    capped: bool,
    bind: Option<u64>,
    now: i64,
) -> Result<WriteResult, WriteError> {
    let mut changed = 0;
    let mut bound = Vec::new();
    // Names per deployment, for one event each way.
    let mut removed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut created: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in remove {
        let Some(old) = state.replica(&r.namespace, &r.name) else {
            continue;
        };
        if old.is_terminating() {
            continue;
        }
        let old = ReplicaRecord::clone(old);
        removed
            .entry((old.namespace.clone(), old.deployment.clone()))
            .or_default()
            .push(old.name.clone());
        // A replica no node runs goes at once; one a node runs stays, as
        // Terminating, holding its node's resources and ports until the
        // agent reports it stopped and removed (or the node is lost).
        if old.node.is_some() {
            let mut old = old;
            old.terminating_since_unix_ms = now.max(1);
            state.put_replica(old);
        } else {
            state.remove_replica(r);
        }
        changed += 1;
    }
    if !create.is_empty() {
        changed += create_replicas(state, create, capped, bind, &mut created, &mut bound);
    }
    for (verb, reason, names) in [
        ("Created", "SuccessfulCreate", created),
        ("Deleted", "SuccessfulDelete", removed),
    ] {
        for ((namespace, deployment), names) in names {
            state.record(
                now,
                NewEvent::normal(
                    reason,
                    InvolvedObject::deployment(&namespace, &deployment),
                    format!("{verb} replica(s): {}", name_list(&names)),
                ),
            );
        }
    }
    for (r, node) in bound {
        record_scheduled(state, &r, &node, now);
    }
    Ok(WriteResult::Changed(changed))
}

/// Create replicas whose slot is free; returns how many were created.
/// A rollout runs two revisions side by side, so the same slot number may
/// exist once per revision. `capped` (format [`DECISIONS_RECHECKED`] on): only
/// within the deployment's current bounds too ([`Room`]). `bind` (format
/// [`CREATES_BOUND`] on): a creation naming a node is bound there if
/// [`placeable`], with this `bound_at` (0 before [`BINDINGS_NUMBERED`]),
/// unbound otherwise; the ones bound are added to `bound`.
///
/// Cost: each deployment's taken slots (and room) are read once per entry,
/// O(its replicas), then each creation is O(log n). (Checking each creation
/// against every replica of its deployment made a 10,000-replica
/// `Reconcile` 50 million map lookups, on every member.)
fn create_replicas(
    state: &mut State,
    create: &[ReplicaRecord],
    capped: bool,
    bind: Option<u64>,
    created: &mut BTreeMap<(String, String), Vec<String>>,
    bound: &mut Vec<(ObjectRef, String)>,
) -> usize {
    let mut taken: HashMap<ObjectRef, HashSet<(String, u32)>> = HashMap::new();
    let draining: HashSet<String> = if capped {
        state
            .nodes()
            .filter(|n| n.draining)
            .map(|n| n.name.clone())
            .collect()
    } else {
        HashSet::new()
    };
    // Worked out once per deployment, at its first creation (after the
    // entry's removals), then counted along.
    let mut rooms: BTreeMap<ObjectRef, Option<Room>> = BTreeMap::new();
    let mut changed = 0;
    for r in create {
        let deployment = ObjectRef {
            namespace: r.namespace.clone(),
            name: r.deployment.clone(),
        };
        let slots = taken.entry(deployment.clone()).or_insert_with_key(|d| {
            state
                .replicas_of(d)
                .map(|o| (o.revision.clone(), o.slot))
                .collect()
        });
        let slot = (r.revision.clone(), r.slot);
        if slots.contains(&slot) || state.replica(&r.namespace, &r.name).is_some() {
            continue;
        }
        if capped {
            let room = rooms
                .entry(deployment.clone())
                .or_insert_with(|| Room::of(state, &deployment, &draining));
            if !room
                .as_mut()
                .is_some_and(|room| room.take(state, r, &draining))
            {
                continue;
            }
        }
        slots.insert(slot);
        let mut record = r.clone();
        record.bound_at = 0;
        if let Some(bound_at) = bind {
            record.node = record
                .node
                .take()
                .filter(|n| placeable(state, &record, n, true));
            if let Some(node) = &record.node {
                record.bound_at = bound_at;
                bound.push((r.key(), node.clone()));
            }
        }
        state.put_replica(record);
        created
            .entry((r.namespace.clone(), r.deployment.clone()))
            .or_default()
            .push(r.name.clone());
        changed += 1;
    }
    changed
}

/// What a deployment may still create in one `Reconcile`: at most
/// desired + maxSurge units as its spec stands now (`rollout::max_units`),
/// counted as the planner counts them (`rollout::unit_count`: a replica on a
/// draining node and its replacement are one unit). The leader decides its
/// `Reconcile` on the state it read; a `Scale` down or a `Delete` committed
/// before the entry (or an older term's entry committed by a newer leader)
/// would otherwise start replicas that the next round stops again.
///
/// Cost: O(the deployment's replicas) once, then O(1) per creation.
struct Room {
    units: u32,
    max: u32,
    /// Replicas some replica replaces (terminating ones included, as the
    /// planner has it): a new replacement for one of them is a unit of its own.
    replaced: HashSet<String>,
}

impl Room {
    /// `None` for a deployment that is gone: no room at all.
    fn of(state: &State, deployment: &ObjectRef, draining: &HashSet<String>) -> Option<Room> {
        let d = state.deployment(&deployment.namespace, &deployment.name)?;
        let spec = &d.deployment.spec;
        let replicas: Vec<&ReplicaRecord> =
            state.replicas_of(deployment).map(|o| o.as_ref()).collect();
        Some(Room {
            units: rollout::unit_count(&replicas, draining),
            max: rollout::max_units(&spec.strategy, spec.replicas),
            replaced: replicas.iter().filter_map(|o| o.replaces.clone()).collect(),
        })
    }

    /// Whether creating `r` stays within the room; counts it if so. A
    /// replacement for a live replica on a draining node that nothing
    /// replaces yet adds no unit, so it always fits.
    fn take(&mut self, state: &State, r: &ReplicaRecord, draining: &HashSet<String>) -> bool {
        let pairs = r.replaces.as_deref().is_some_and(|old| {
            !self.replaced.contains(old)
                && state.replica(&r.namespace, old).is_some_and(|o| {
                    o.deployment == r.deployment
                        && !o.is_terminating()
                        && o.node.as_ref().is_some_and(|n| draining.contains(n))
                })
        });
        if !pairs {
            if self.units >= self.max {
                return false;
            }
            self.units += 1;
        }
        if let Some(old) = &r.replaces {
            self.replaced.insert(old.clone());
        }
        true
    }
}

fn schedule(
    state: &mut State,
    place: &[(ObjectRef, String)],
    unschedulable: &[(ObjectRef, String)],
    rechecked: bool,
    bound_at: u64,
    now: i64,
) -> Result<WriteResult, WriteError> {
    let mut changed = 0;
    for (r, node) in place {
        let Some(replica) = state.replica(&r.namespace, &r.name) else {
            continue;
        };
        if replica.node.is_some() || !placeable(state, replica, node, rechecked) {
            continue;
        }
        let mut replica = ReplicaRecord::clone(replica);
        replica.node = Some(node.clone());
        replica.bound_at = bound_at;
        replica.pending_reason.clear();
        state.put_replica(replica);
        record_scheduled(state, r, node, now);
        changed += 1;
    }
    for (r, reason) in unschedulable {
        let Some(replica) = state.replica(&r.namespace, &r.name) else {
            continue;
        };
        if replica.node.is_some() || replica.pending_reason == *reason {
            continue;
        }
        let mut replica = ReplicaRecord::clone(replica);
        replica.pending_reason = reason.clone();
        state.put_replica(replica);
        state.record(
            now,
            NewEvent::warning(
                "FailedScheduling",
                InvolvedObject::replica(&r.namespace, &r.name),
                reason.clone(),
            ),
        );
        changed += 1;
    }
    Ok(WriteResult::Changed(changed))
}

/// Whether `node` can take `replica` now. The scheduler decided on slightly
/// older state: the node may have gone NotReady, filled up or (`rechecked`,
/// format [`DECISIONS_RECHECKED`] on) been cordoned since. Such a placement
/// is skipped (the next round places the replica again), never
/// over-committed.
fn placeable(state: &State, replica: &ReplicaRecord, node: &str, rechecked: bool) -> bool {
    let Some(record) = state.node(node) else {
        return false;
    };
    let (no_booking, nothing) = (Booking::default(), Held::default());
    let booking = replica.booking.as_ref().unwrap_or(&no_booking);
    let fits = state
        .held(node)
        .unwrap_or(&nothing)
        .fits(booking, &record.capacity);
    record.condition == NodeCondition::Ready && fits && !(rechecked && record.cordoned)
}

fn record_scheduled(state: &mut State, r: &ObjectRef, node: &str, now: i64) {
    state.record(
        now,
        NewEvent::normal(
            "Scheduled",
            InvolvedObject::replica(&r.namespace, &r.name),
            format!("Successfully assigned {r} to {node}"),
        ),
    );
}

fn report_status(
    state: &mut State,
    reports: &[(String, ObjectRef, ReplicaObserved)],
    now: i64,
) -> Result<WriteResult, WriteError> {
    let mut changed = 0;
    for (node, r, observed) in reports {
        let Some(replica) = state.replica(&r.namespace, &r.name) else {
            continue;
        };
        if replica.node.as_deref() != Some(node.as_str()) {
            continue;
        }
        if observed.phase == ReplicaPhase::Gone {
            // Only a replica being stopped may go; an assigned one that its
            // agent does not have (yet) keeps its last status.
            if replica.is_terminating() {
                state.remove_replica(r);
                state.record(
                    now,
                    NewEvent::normal(
                        "Stopped",
                        InvolvedObject::replica(&r.namespace, &r.name),
                        format!("Stopped and removed from node {node}"),
                    ),
                );
                changed += 1;
            }
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
        let before = replica.current_status().cloned().unwrap_or_default();
        let events = status_events(replica, &before, &observed, now);
        let mut replica = ReplicaRecord::clone(replica);
        replica.observed = observed;
        state.put_replica(replica);
        for event in events {
            state.record(now, event);
        }
        changed += 1;
    }
    Ok(WriteResult::Changed(changed))
}

/// The lifecycle events one status report implies, against the last report
/// from the same node. Reports are batched, so several steps may arrive at
/// once (an exit and the back-off after it): each gets its event.
fn status_events(
    replica: &ReplicaRecord,
    before: &ReplicaObserved,
    after: &ReplicaObserved,
    now: i64,
) -> Vec<NewEvent> {
    let object = || InvolvedObject::replica(&replica.namespace, &replica.name);
    let mut events = Vec::new();
    if after.finished_unix_ms > 0 && after.finished_unix_ms != before.finished_unix_ms {
        let code = after
            .last_exit_code
            .map_or_else(|| "an unknown code".to_string(), |c| c.to_string());
        let why = if after.reason.is_empty() || after.reason == "CrashLoopBackOff" {
            String::new()
        } else {
            format!(" ({})", after.reason)
        };
        let message = format!("Container exited with code {code}{why}");
        events.push(match after.last_exit_code {
            Some(0) => NewEvent::normal("Completed", object(), message),
            _ => NewEvent::warning("Exited", object(), message),
        });
    }
    if after.phase == ReplicaPhase::CrashLoopBackOff
        && before.phase != ReplicaPhase::CrashLoopBackOff
    {
        let wait = if after.next_restart_unix_ms > now {
            format!(" in {}s", (after.next_restart_unix_ms - now + 999) / 1000)
        } else {
            String::new()
        };
        events.push(NewEvent::warning(
            "BackOff",
            object(),
            format!("Back-off restarting failed container{wait}"),
        ));
    }
    if after.phase == ReplicaPhase::Failed && before.phase != ReplicaPhase::Failed {
        let message = if after.message.is_empty() {
            after.reason.clone()
        } else {
            after.message.clone()
        };
        events.push(NewEvent::warning("Failed", object(), message));
    }
    if after.phase == ReplicaPhase::Running
        && after.started_unix_ms > 0
        && after.started_unix_ms != before.started_unix_ms
    {
        let on = if after.image.is_empty() {
            String::new()
        } else {
            format!(" ({})", after.image)
        };
        events.push(NewEvent::normal(
            "Started",
            object(),
            format!("Started container on node {}{on}", after.node),
        ));
    }
    if after.phase == ReplicaPhase::Running && before.ready && !after.ready {
        let message = if after.message.is_empty() {
            "Readiness probe failed".to_string()
        } else {
            after.message.clone()
        };
        events.push(NewEvent::warning("Unhealthy", object(), message));
    }
    events
}
