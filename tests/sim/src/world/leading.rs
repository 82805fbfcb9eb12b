//! The work around raft: the leader's control loops.
//!
//! ```text
//!   LeaderWork (every 50 ms), on each member that leads:
//!     new term ─▶ ReadIndex barrier ─▶ rounds:
//!       Orchestration::next ─▶ decision_commands ─▶ propose one by one
//!       ─▶ schedule_command on the state after them ─▶ propose
//!     every 300 ms: monitor_commands (heartbeats this member heard) ─▶ propose
//! ```
//!
//! The leader proposes what the production loops propose, from the same
//! pure functions (`leader::decision_commands`, `schedule_command`,
//! `monitor_commands`), one entry at a time and only while it still leads
//! the term it started in. The agents and the dispatcher's end of their
//! sessions are in [`super::dispatch`] and [`crate::agent`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_controller::leader::{self, Orchestration};
use drover_controller::orchestrator::rollout;
use drover_controller::store::history::Since;
use drover_controller::store::objects::parse_agent_id;
use drover_controller::store::{
    Command, NodeCondition, ObjectRef, ReplicaRecord, State, Touched, Write,
};
use tokio::sync::oneshot;

use super::{Checked, World, WriteRx};

/// The node timeout the leader's monitor uses (production default: 3 s).
pub(super) const NODE_TIMEOUT: Duration = Duration::from_secs(3);
const MONITOR_EVERY_US: u64 = 300_000;
const ROUND_EVERY_US: u64 = 100_000;

/// One leadership's loops on one member.
pub(super) struct LeaderLoop {
    term: u64,
    leading_since: Instant,
    /// The node monitor's memory: when the mass silence it holds began.
    held_since: Option<Instant>,
    barrier: Option<oneshot::Receiver<Result<(), drover_controller::raft::node::NodeError>>>,
    ready: bool,
    orchestration: Orchestration,
    /// The round's entries still to propose; `scheduled` once the
    /// scheduler's was decided.
    queue: Vec<Command>,
    scheduled: bool,
    in_round: bool,
    inflight: Option<WriteRx>,
    last_round_us: u64,
    monitor_queue: Vec<Command>,
    monitor_inflight: Option<WriteRx>,
    last_monitor_us: u64,
}

impl LeaderLoop {
    /// Its ReadIndex barrier passed: the state holds everything committed
    /// before this term, and the dispatcher's book may serve sets.
    pub(super) fn ready(&self) -> bool {
        self.ready
    }
}

/// What a write's answer says, if it came.
pub(super) fn answered(rx: &mut WriteRx) -> Option<bool> {
    match rx.try_recv() {
        Ok(Ok(Ok(_))) => Some(true),
        Ok(_) => Some(false),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => Some(false),
    }
}

impl World {
    pub(super) fn unix_ms(&self, m: usize) -> i64 {
        let hour: i64 = 3_600_000_000;
        1_700_000_000_000 + (hour + self.now_us as i64 + self.members[m].skew_us) / 1000
    }

    /// Propose `command` on member `m` for the world's own loops.
    pub(super) fn propose_internal(&mut self, m: usize, command: Command) -> Checked<WriteRx> {
        let (tx, rx) = oneshot::channel();
        let now = self.member_now(m);
        if let Some(core) = self.members[m].core.as_mut() {
            core.propose(Write::Command(command), tx, now);
        }
        self.drive(m)?;
        Ok(rx)
    }

    /// The leader loops of every member that leads.
    pub(super) fn leader_work(&mut self) -> Checked<()> {
        for m in 0..self.members.len() {
            if self.members[m].core.is_none() || self.members[m].flushing.is_some() {
                continue;
            }
            self.leader_loop(m)?;
        }
        Ok(())
    }

    fn leader_loop(&mut self, m: usize) -> Checked<()> {
        let id = self.members[m].id;
        let Some(view) = self.members[m].core.as_ref().map(|c| c.leadership()) else {
            return Ok(());
        };
        let leads = view.is_leader;
        let current = self.members[m].leader.as_ref().map(|l| l.term);
        let ended = !leads || current.is_some_and(|t| t != view.term);
        if ended && self.members[m].leader.take().is_some() {
            self.trace(format!("m{id} leader loops stop"));
        }
        if !leads {
            return Ok(());
        }
        if self.members[m].leader.is_none() {
            let orchestration = Orchestration::new(&self.members[m].store);
            self.members[m].leader = Some(LeaderLoop {
                term: view.term,
                leading_since: self.member_now(m),
                held_since: None,
                barrier: None,
                ready: false,
                orchestration,
                queue: Vec::new(),
                scheduled: false,
                in_round: false,
                inflight: None,
                last_round_us: 0,
                monitor_queue: Vec::new(),
                monitor_inflight: None,
                last_monitor_us: 0,
            });
            self.trace(format!("m{id} leader loops start, term {}", view.term));
        }
        // The state is current once a ReadIndex round succeeds.
        let ready = self.members[m].leader.as_ref().is_some_and(|l| l.ready);
        if !ready {
            let barrier = self.members[m]
                .leader
                .as_mut()
                .and_then(|l| l.barrier.as_mut())
                .map(|rx| rx.try_recv());
            match barrier {
                Some(Ok(Ok(()))) => {
                    if let Some(l) = self.members[m].leader.as_mut() {
                        l.ready = true;
                        l.barrier = None;
                    }
                }
                Some(Err(oneshot::error::TryRecvError::Empty)) => return Ok(()),
                _ => {
                    let (tx, rx) = oneshot::channel();
                    let now = self.member_now(m);
                    if let Some(core) = self.members[m].core.as_mut() {
                        core.read(tx, now);
                    }
                    if let Some(l) = self.members[m].leader.as_mut() {
                        l.barrier = Some(rx);
                    }
                    return self.drive(m);
                }
            }
        }
        self.round_step(m)?;
        self.monitor_step(m)
    }

    /// Advance the orchestrator/scheduler round by at most one proposal.
    fn round_step(&mut self, m: usize) -> Checked<()> {
        let now_us = self.now_us;
        let Some(l) = self.members[m].leader.as_mut() else {
            return Ok(());
        };
        if let Some(rx) = l.inflight.as_mut() {
            match answered(rx) {
                None => return Ok(()),
                Some(true) => l.inflight = None,
                Some(false) => {
                    // A failed round: what it did not get to is looked at again.
                    l.inflight = None;
                    l.queue.clear();
                    l.in_round = false;
                    l.orchestration.retry_all();
                    return Ok(());
                }
            }
        }
        if !l.in_round {
            if now_us < l.last_round_us + ROUND_EVERY_US {
                return Ok(());
            }
            l.last_round_us = now_us;
            let now_ms = self.unix_ms(m);
            let store = self.members[m].store.clone();
            let Some(l) = self.members[m].leader.as_mut() else {
                return Ok(());
            };
            let decisions = l.orchestration.next(&store, now_ms);
            let Some(l) = self.members[m].leader.as_mut() else {
                return Ok(());
            };
            l.queue = leader::decision_commands(decisions, now_ms);
            l.queue.reverse();
            l.scheduled = false;
            l.in_round = true;
        }
        let Some(l) = self.members[m].leader.as_mut() else {
            return Ok(());
        };
        let next = match l.queue.pop() {
            Some(command @ Command::Reconcile { .. }) => {
                let state = self.members[m].store.snapshot();
                let command = leader::bind_creations(&state, command);
                placements_fit(&state, &command)?;
                Some(command)
            }
            Some(command) => Some(command),
            None if !l.scheduled => {
                l.scheduled = true;
                let state = self.members[m].store.snapshot();
                let command = leader::schedule_command(&state, self.unix_ms(m));
                if let Some(command) = &command {
                    placements_fit(&state, command)?;
                }
                command
            }
            None => None,
        };
        let Some(command) = next else {
            if let Some(l) = self.members[m].leader.as_mut() {
                l.in_round = false;
            }
            return Ok(());
        };
        let id = self.members[m].id;
        self.trace(format!("m{id} leader proposes {}", command_name(&command)));
        let rx = self.propose_internal(m, command)?;
        if let Some(l) = self.members[m].leader.as_mut() {
            l.inflight = Some(rx);
        }
        Ok(())
    }

    fn monitor_step(&mut self, m: usize) -> Checked<()> {
        let now_us = self.now_us;
        let Some(l) = self.members[m].leader.as_mut() else {
            return Ok(());
        };
        if let Some(rx) = l.monitor_inflight.as_mut() {
            if answered(rx).is_none() {
                return Ok(());
            }
            l.monitor_inflight = None;
        }
        if l.monitor_queue.is_empty() {
            if now_us < l.last_monitor_us + MONITOR_EVERY_US {
                return Ok(());
            }
            l.last_monitor_us = now_us;
            let leading_since = l.leading_since;
            let mut held_since = l.held_since;
            let state = self.members[m].store.snapshot();
            let now = self.member_now(m);
            let now_ms = self.unix_ms(m);
            let heartbeats = &self.members[m].heartbeats;
            let mut commands: Vec<Command> = leader::monitor_commands(
                &state,
                |node| heartbeats.get(node).copied(),
                leading_since,
                now,
                NODE_TIMEOUT,
                now_ms,
                &mut held_since,
            )
            .into_iter()
            .map(|(_, c)| c)
            .collect();
            commands.reverse();
            if let Some(l) = self.members[m].leader.as_mut() {
                l.monitor_queue = commands;
                l.held_since = held_since;
            }
        }
        let Some(command) = self.members[m]
            .leader
            .as_mut()
            .and_then(|l| l.monitor_queue.pop())
        else {
            return Ok(());
        };
        let id = self.members[m].id;
        self.trace(format!(
            "m{id} node monitor proposes {}",
            command_name(&command)
        ));
        let rx = self.propose_internal(m, command)?;
        if let Some(l) = self.members[m].leader.as_mut() {
            l.monitor_inflight = Some(rx);
        }
        Ok(())
    }

    /// The checks on what each applied entry did, on every member, for the
    /// entries applied since the last step ([`World::check_entry`]): the
    /// store's history holds the state after each entry that changed
    /// something, so an entry is judged on its own even when a member
    /// catching up applies dozens in one step. After a start or a snapshot
    /// install the state jumped: its first state is only looked at.
    pub(super) fn check_surge(&mut self) -> Checked<()> {
        for m in 0..self.members.len() {
            if self.members[m].core.is_none() {
                continue;
            }
            let store = self.members[m].store.clone();
            let applied = store.applied().0;
            let checked = self.members[m].surge_checked_at;
            if applied == checked {
                continue;
            }
            self.members[m].surge_checked_at = applied;
            let versions: Vec<(Arc<State>, Option<Touched>)> =
                match store.since(checked, usize::MAX) {
                    Since::Versions { after, .. } if checked > 0 => after
                        .into_iter()
                        .map(|v| (v.state, Some(v.touched)))
                        .collect(),
                    _ => {
                        self.members[m].live_seen.clear();
                        self.members[m].placed_seen = None;
                        vec![(store.snapshot(), None)]
                    }
                };
            for (state, touched) in versions {
                self.check_entry(m, &state, touched.as_ref())?;
            }
        }
        Ok(())
    }

    /// What one applied entry left on member `m`, looking at what it
    /// `touched` (everything when `None`):
    /// - **never beyond desired + maxSurge**: an entry that created replicas
    ///   leaves each deployment at most desired + maxSurge live units
    ///   ([`units`]); no allowance for a decision made on an older state
    ///   (the state machine refuses a creation beyond the current bound from
    ///   command format 8 on);
    /// - **a host port once per node**: never two replicas of a host-port
    ///   deployment bound to one node (terminating ones hold the port too);
    /// - **a cordoned node gets no new replicas**.
    fn check_entry(&mut self, m: usize, state: &State, touched: Option<&Touched>) -> Checked<()> {
        let id = self.members[m].id;
        let at = state.applied().0;
        let touched = touched.filter(|t| !t.all);
        let replicas: Vec<ObjectRef> = match touched {
            Some(t) => t.replicas.iter().map(|k| ObjectRef::clone(k)).collect(),
            None => state.replicas(None).map(|r| r.key()).collect(),
        };
        // Nothing to compare with on a first look.
        let first_look = self.members[m].placed_seen.is_none();
        for key in replicas {
            let replica = state.replica(&key.namespace, &key.name);
            let node = replica.and_then(|r| r.node.clone());
            let seen = self.members[m]
                .placed_seen
                .get_or_insert_with(BTreeMap::new);
            let before = match &node {
                Some(n) => seen.insert(key.clone(), n.clone()),
                None => seen.remove(&key),
            };
            let (Some(r), Some(node)) = (replica, node) else {
                continue;
            };
            let newly = !first_look && before.as_deref() != Some(node.as_str());
            if newly && state.node(&node).is_some_and(|n| n.cordoned) {
                return Err(format!(
                    "placed on a cordoned node: controller {id} binds {} to {node} at entry {at}",
                    r.name
                ));
            }
            let op = r
                .deployment
                .strip_prefix("op-")
                .and_then(|n| n.parse::<u64>().ok());
            if !op.is_some_and(|op| self.host_ports.contains_key(&op)) {
                continue;
            }
            let same = state
                .replicas_on(&node)
                .filter(|o| o.namespace == r.namespace && o.deployment == r.deployment)
                .count();
            if same > 1 {
                return Err(format!(
                    "host port taken twice: controller {id} binds two replicas of {} (one host \
                     port) to node {node} at entry {at}",
                    r.deployment
                ));
            }
        }
        let draining: BTreeSet<&str> = state
            .nodes()
            .filter(|n| n.draining)
            .map(|n| n.name.as_str())
            .collect();
        // A node's drain starting or ending changes its deployments' units.
        let deployments: Vec<ObjectRef> = match touched {
            Some(t) if t.node_records.is_empty() => t.deployments.iter().cloned().collect(),
            _ => state
                .deployments(None)
                .map(|d| ObjectRef {
                    namespace: d.deployment.metadata.namespace.clone(),
                    name: d.deployment.metadata.name.clone(),
                })
                .collect(),
        };
        for target in deployments {
            let Some(d) = state.deployment(&target.namespace, &target.name) else {
                self.members[m].live_seen.remove(&target);
                continue;
            };
            let (live, replicas) = units(state.replicas_of(&target).map(|r| r.as_ref()), &draining);
            let spec = &d.deployment.spec;
            let bound = rollout::max_units(&spec.strategy, spec.replicas);
            let before = self.members[m]
                .live_seen
                .insert(target.clone(), (live, replicas));
            // Units grow without a creation when a drain ends (a drained
            // replica and its replacement count apart again): only an entry
            // that created replicas is judged.
            let Some((live_before, replicas_before)) = before else {
                continue;
            };
            if replicas > replicas_before && live > live_before && live > bound {
                return Err(format!(
                    "{target} grew from {live_before} to {live} live replicas on controller \
                     {id} at entry {at} (desired {}: at most {bound} with maxSurge)",
                    spec.replicas
                ));
            }
        }
        Ok(())
    }

    /// Once settled: every deployment has exactly its desired replicas, all
    /// of its newest revision (its rollout finished), each bound to a Ready
    /// node that is not being drained (a cordoned one keeps what it ran)
    /// whose agent runs it and reported it ready; a deleted deployment has
    /// no live replica left; no agent runs anything not bound to it.
    pub(super) fn check_converged(&self) -> Checked<()> {
        let state = self.members[0].store.snapshot();
        for r in state.replicas(None) {
            if !r.is_terminating() && state.deployment(&r.namespace, &r.deployment).is_none() {
                return Err(format!(
                    "not converged: {} of deleted deployment {} is still live",
                    r.name, r.deployment
                ));
            }
        }
        for d in state.deployments(None) {
            let target = ObjectRef {
                namespace: d.deployment.metadata.namespace.clone(),
                name: d.deployment.metadata.name.clone(),
            };
            let newest = d.current_revision_hash();
            let live: Vec<_> = state
                .replicas_of(&target)
                .filter(|r| !r.is_terminating())
                .collect();
            let desired = d.deployment.spec.replicas as usize;
            if live.len() != desired {
                let all: Vec<String> = state
                    .replicas_of(&target)
                    .map(|r| {
                        format!(
                            "{} on {:?} ready={} terminating={}",
                            r.name,
                            r.node,
                            r.is_ready(),
                            r.is_terminating()
                        )
                    })
                    .collect();
                return Err(format!(
                    "not converged: {target} has {} live replicas, desired {desired} (strategy \
                     {:?}, newest revision {newest}, rollout {:?}): {}",
                    live.len(),
                    d.deployment.spec.strategy,
                    d.rollout,
                    all.join("; ")
                ));
            }
            for r in &live {
                if r.revision != newest {
                    return Err(format!(
                        "not converged: {} runs revision {}, not {target}'s newest ({newest})",
                        r.name, r.revision
                    ));
                }
                let Some(node) = r.node.as_deref() else {
                    return Err(format!("not converged: {} is not placed", r.name));
                };
                let ready_node = state
                    .node(node)
                    .is_some_and(|n| n.condition == NodeCondition::Ready && !n.draining);
                if !ready_node {
                    return Err(format!(
                        "not converged: {} is on node {node}, not Ready or being drained",
                        r.name
                    ));
                }
                let agent = self.agents.iter().find(|x| x.name == node);
                if !agent.is_some_and(|x| x.runs(&r.agent_id())) {
                    return Err(format!(
                        "not converged: {} is bound to {node} but its agent does not run it",
                        r.name
                    ));
                }
                if !r.current_status().is_some_and(|o| o.ready) {
                    return Err(format!(
                        "not converged: {} on {node} is not reported ready (its last report: \
                         {:?} ready={} from node {:?}; its agent says {})",
                        r.name,
                        r.observed.phase,
                        r.observed.ready,
                        r.observed.node,
                        agent.map_or_else(|| "nothing".into(), |x| x.describe(&r.agent_id()))
                    ));
                }
            }
        }
        for agent in &self.agents {
            for r in agent.running() {
                let bound = parse_agent_id(r)
                    .and_then(|(namespace, name)| state.replica(namespace, name))
                    .is_some_and(|x| x.node.as_deref() == Some(agent.name.as_str()));
                if !bound {
                    return Err(format!(
                        "agent {} runs {r}, which is not bound to it",
                        agent.name
                    ));
                }
            }
        }
        Ok(())
    }
}

fn command_name(c: &Command) -> String {
    match c {
        Command::Reconcile { create, remove, .. } => {
            format!("Reconcile(+{} -{})", create.len(), remove.len())
        }
        Command::Schedule {
            place,
            unschedulable,
            ..
        } => format!(
            "Schedule({} placed, {} unschedulable)",
            place.len(),
            unschedulable.len()
        ),
        Command::RolloutProgress { records, .. } => format!("RolloutProgress({})", records.len()),
        Command::Undo { target, .. } => format!("Undo({target})"),
        Command::NodeDown { node, .. } => format!("NodeDown({node})"),
        Command::NodeUp { node, .. } => format!("NodeUp({node})"),
        other => {
            let debug = format!("{other:?}");
            debug
                .split([' ', '{', '('])
                .next()
                .unwrap_or("?")
                .to_string()
        }
    }
}

/// Every placement in a `Schedule`, and every creation a `Reconcile` binds
/// and makes, applied to the state it was decided on, is taken. The state
/// machine re-checks each placement (the node is Ready, the booking and
/// host ports fit) because a decision may be applied on a newer state; on
/// its own state a refusal is a scheduler that placed where nothing fits.
/// Safety never sees it (the replica is placed again elsewhere), so only
/// this check does. A creation the entry does not make (its slot taken, or
/// beyond its deployment's room) places nothing, so it is not counted.
fn placements_fit(state: &State, command: &Command) -> Checked<()> {
    let (place, created): (Vec<(ObjectRef, String)>, bool) = match command {
        Command::Schedule { place, .. } => (place.clone(), false),
        // Creations bound in their entry (`leader::bind_creations`).
        Command::Reconcile { create, .. } => (
            create
                .iter()
                .filter(|r| state.replica(&r.namespace, &r.name).is_none())
                .filter_map(|r| Some((r.key(), r.node.clone()?)))
                .collect(),
            true,
        ),
        _ => return Ok(()),
    };
    let mut after = state.clone();
    let (index, term) = state.applied();
    // A refusal leaves the state as it was, and is itself a failure below.
    let _ = after.apply(index + 1, term, command);
    for (r, node) in &place {
        let Some(replica) = after.replica(&r.namespace, &r.name) else {
            if created {
                continue;
            }
            return Err(format!("scheduler: {r} placed on {node} is gone"));
        };
        if replica.node.as_deref() != Some(node.as_str()) {
            return Err(format!(
                "scheduler: {r} placed on {node}, which the state it was decided on (applied \
                 {index}) refuses"
            ));
        }
    }
    Ok(())
}

/// Live replicas counted as the rollout planner counts units, and as
/// replicas: a live replica on a draining node that some replica replaces
/// (a terminating one too, as the planner has it) is one unit with it.
/// Terminating replicas count for nothing. Written here from the rule, not
/// taken from `rollout`, so the check does not share the code it checks.
fn units<'a>(
    replicas: impl Iterator<Item = &'a ReplicaRecord>,
    draining: &BTreeSet<&str>,
) -> (u32, u32) {
    let all: Vec<&ReplicaRecord> = replicas.collect();
    let live: Vec<&ReplicaRecord> = all
        .iter()
        .copied()
        .filter(|r| !r.is_terminating())
        .collect();
    let replaced = live
        .iter()
        .filter(|r| r.node.as_deref().is_some_and(|n| draining.contains(n)))
        .filter(|r| {
            all.iter()
                .any(|o| o.replaces.as_deref() == Some(r.name.as_str()))
        })
        .count();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (count(live.len() - replaced), count(live.len()))
}
