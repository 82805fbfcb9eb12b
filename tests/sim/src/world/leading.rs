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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_controller::leader::{self, Orchestration};
use drover_controller::orchestrator::rollout;
use drover_controller::store::objects::parse_agent_id;
use drover_controller::store::{Command, NodeCondition, ObjectRef, Write};
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
            // The desired counts this round creates replicas for: its
            // Reconcile may apply after a scale-down, even in a later term
            // (see `check_surge`).
            let state = store.snapshot();
            for r in &decisions.plan.create {
                let Some(d) = state.deployment(&r.namespace, &r.deployment) else {
                    continue;
                };
                let target = ObjectRef {
                    namespace: r.namespace.clone(),
                    name: r.deployment.clone(),
                };
                let desired = d.deployment.spec.replicas;
                let most = self.decided_on.entry(target).or_default();
                *most = (*most).max(desired);
            }
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
            Some(command) => Some(command),
            None if !l.scheduled => {
                l.scheduled = true;
                let state = self.members[m].store.snapshot();
                leader::schedule_command(&state, self.unix_ms(m))
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

    /// Replicas are never created beyond desired + maxSurge. Checked on
    /// every member after each step that applied entries: a deployment
    /// whose live replicas grew must stay within desired + maxSurge, for the
    /// larger of the desired counts before and after (a scale-down applied
    /// in the same step as the creations it follows is not a surge).
    pub(super) fn check_surge(&mut self) -> Checked<()> {
        for m in 0..self.members.len() {
            if self.members[m].core.is_none() {
                continue;
            }
            let state = self.members[m].store.snapshot();
            let applied = state.applied().0;
            if applied == self.members[m].surge_checked_at {
                continue;
            }
            // After a start or a snapshot install the state jumped: look afresh.
            let first_look = self.members[m].surge_checked_at == 0;
            self.members[m].surge_checked_at = applied;
            if first_look {
                self.members[m].live_seen.clear();
            }
            // A host port is held on its node until its replica is gone:
            // never two replicas of a host-port deployment on one node.
            let mut held: BTreeMap<(&str, &str), usize> = BTreeMap::new();
            for r in state.replicas(None) {
                let op = r
                    .deployment
                    .strip_prefix("op-")
                    .and_then(|n| n.parse::<u64>().ok());
                if !op.is_some_and(|op| self.host_ports.contains_key(&op)) {
                    continue;
                }
                let Some(node) = r.node.as_deref() else {
                    continue;
                };
                let n = held.entry((node, r.deployment.as_str())).or_default();
                *n += 1;
                if *n > 1 {
                    return Err(format!(
                        "host port taken twice: controller {} binds two replicas of {} (one \
                         host port) to node {node}",
                        self.members[m].id, r.deployment
                    ));
                }
            }
            for d in state.deployments(None) {
                let target = ObjectRef {
                    namespace: d.deployment.metadata.namespace.clone(),
                    name: d.deployment.metadata.name.clone(),
                };
                let live = state
                    .replicas_of(&target)
                    .filter(|r| !r.is_terminating())
                    .count() as u32;
                let desired = d.deployment.spec.replicas;
                let before = self.members[m]
                    .live_seen
                    .insert(target.clone(), (live, desired));
                let Some((live_before, desired_before)) = before else {
                    continue;
                };
                if first_look || live <= live_before {
                    continue;
                }
                let most = desired.max(desired_before);
                let bound = most + rollout::bounds(&d.deployment.spec.strategy, most).surge;
                // A Reconcile decided on a larger desired count than a Scale
                // committed before it (by this leader or one of an earlier
                // term whose entry a later leader committed): drover's state
                // machine creates the replicas anyway (it skips only taken
                // slots), and the next round removes them. Known, counted, not
                // a failure; a creation beyond what any Reconcile was decided
                // for is.
                let decided = self.decided_on.get(&target).copied().unwrap_or(0);
                let stale = decided.max(most);
                let stale_bound = stale + rollout::bounds(&d.deployment.spec.strategy, stale).surge;
                if live > bound && live <= stale_bound {
                    let id = self.members[m].id;
                    self.count("stale Reconcile beyond desired + maxSurge");
                    self.trace(format!(
                        "m{id}: {target} at {live} live replicas, desired {desired}: a Reconcile \
                         decided on {decided} desired applied after a scale-down"
                    ));
                    continue;
                }
                if live > bound {
                    return Err(format!(
                        "{target} grew from {live_before} to {live} live replicas on controller \
                         {} (desired {desired_before} then {desired}: at most {bound} with \
                         maxSurge)",
                        self.members[m].id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Once settled: every deployment has exactly its desired replicas, each
    /// bound to a Ready, schedulable node whose agent runs it and reported
    /// it ready; no agent runs anything not bound to it.
    pub(super) fn check_converged(&self) -> Checked<()> {
        let state = self.members[0].store.snapshot();
        for d in state.deployments(None) {
            let target = ObjectRef {
                namespace: d.deployment.metadata.namespace.clone(),
                name: d.deployment.metadata.name.clone(),
            };
            let live: Vec<_> = state
                .replicas_of(&target)
                .filter(|r| !r.is_terminating())
                .collect();
            let desired = d.deployment.spec.replicas as usize;
            if live.len() != desired {
                return Err(format!(
                    "not converged: {target} has {} live replicas, desired {desired}",
                    live.len()
                ));
            }
            for r in &live {
                let Some(node) = r.node.as_deref() else {
                    return Err(format!("not converged: {} is not placed", r.name));
                };
                let ready_node = state
                    .node(node)
                    .is_some_and(|n| n.condition == NodeCondition::Ready && !n.cordoned);
                if !ready_node {
                    return Err(format!(
                        "not converged: {} is on node {node}, not Ready",
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
