//! The work around raft: the leader's control loops and the agents.
//!
//! ```text
//!   LeaderWork (every 50 ms), on each member that leads:
//!     new term ─▶ ReadIndex barrier ─▶ rounds:
//!       Orchestration::next ─▶ decision_commands ─▶ propose one by one
//!       ─▶ schedule_command on the state after them ─▶ propose
//!     every 300 ms: monitor_commands (heartbeats this member heard) ─▶ propose
//!   AgentBeat (every 250-350 ms), per agent:
//!     not connected to a leader ─▶ find one ─▶ RegisterNode (Hello) + every status
//!     connected ─▶ heartbeat; run what is bound to its node in the leader's
//!     state, stop what is not; report changes as one ReportStatus
//! ```
//!
//! The leader proposes what the production loops propose, from the same
//! pure functions (`leader::decision_commands`, `schedule_command`,
//! `monitor_commands`), one entry at a time and only while it still leads
//! the term it started in. Agents are simulated: their replicas start after
//! a seeded delay, fail their probes for a while, and die with their host.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_controller::leader::{self, Orchestration};
use drover_controller::orchestrator::rollout;
use drover_controller::store::history::Since;
use drover_controller::store::{
    Command, NodeCondition, NodeRegistration, ObjectRef, ReplicaObserved, ReplicaPhase,
    ReplicaRecord, Resources, State, Touched, Write,
};
use rand::Rng;
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

/// One simulated agent host.
pub(super) struct SimAgent {
    pub(super) name: String,
    pub(super) up: bool,
    pub(super) incarnation: u64,
    /// The member its session is with.
    connected: Option<usize>,
    /// Replicas it runs: name → (started at µs, reported ready, unready until µs).
    running: BTreeMap<ObjectRef, Running>,
    /// Statuses not yet committed.
    unreported: BTreeMap<ObjectRef, ReplicaObserved>,
    hello_inflight: Option<WriteRx>,
    report_inflight: Option<(WriteRx, Vec<(ObjectRef, ReplicaObserved)>)>,
}

#[derive(Clone)]
struct Running {
    start_at_us: u64,
    reported_ready: Option<bool>,
    unready_until_us: u64,
    restarts: u32,
}

impl SimAgent {
    pub(super) fn new(name: String) -> SimAgent {
        SimAgent {
            name,
            up: true,
            incarnation: 1,
            connected: None,
            running: BTreeMap::new(),
            unreported: BTreeMap::new(),
            hello_inflight: None,
            report_inflight: None,
        }
    }

    /// The host died: its replicas with it.
    pub(super) fn crash(&mut self) {
        self.up = false;
        self.connected = None;
        self.running.clear();
        self.unreported.clear();
        self.hello_inflight = None;
        self.report_inflight = None;
    }

    pub(super) fn restart(&mut self) {
        self.up = true;
        self.incarnation += 1;
    }

    /// The replicas it runs.
    pub(super) fn runs(&self) -> impl Iterator<Item = &ObjectRef> {
        self.running.keys()
    }
}

/// What a write's answer says, if it came.
fn answered(rx: &mut WriteRx) -> Option<bool> {
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
    fn propose_internal(&mut self, m: usize, command: Command) -> Checked<WriteRx> {
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
            Some(t) => t.replicas.iter().cloned().collect(),
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

    /// One agent's beat: connect, heartbeat, run and stop replicas, report.
    pub(super) fn agent_beat(&mut self, a: usize) -> Checked<()> {
        if !self.agents[a].up {
            return Ok(());
        }
        let name = self.agents[a].name.clone();
        // The session holds while its controller is up, reachable, and leads.
        if let Some(m) = self.agents[a].connected {
            let leads = self.members[m].core.is_some() && self.members[m].leader_view.2;
            if !leads || self.agent_cut.contains(&name) {
                self.agents[a].connected = None;
                self.agents[a].hello_inflight = None;
                self.agents[a].report_inflight = None;
                self.trace(format!("agent {name}: session lost"));
            }
        }
        if self.agent_cut.contains(&name) {
            return Ok(());
        }
        let Some(m) = self.agents[a].connected else {
            return self.agent_hello(a);
        };
        if self.members[m].flushing.is_some() {
            return Ok(());
        }
        // The Hello must have committed before the session serves.
        if let Some(rx) = self.agents[a].hello_inflight.as_mut() {
            match answered(rx) {
                None => return Ok(()),
                Some(true) => self.agents[a].hello_inflight = None,
                Some(false) => {
                    self.agents[a].connected = None;
                    self.agents[a].hello_inflight = None;
                    return Ok(());
                }
            }
        }
        let now = self.member_now(m);
        self.members[m].heartbeats.insert(name.clone(), now);
        self.agent_reconcile(a, m);
        self.agent_report(a, m)
    }

    fn agent_hello(&mut self, a: usize) -> Checked<()> {
        let leader = (0..self.members.len()).find(|m| {
            self.members[*m].core.is_some()
                && self.members[*m].leader_view.2
                && self.members[*m].flushing.is_none()
        });
        let Some(m) = leader else {
            return Ok(());
        };
        let agent = &self.agents[a];
        let registration = NodeRegistration {
            name: agent.name.clone(),
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: 8_000,
                memory_bytes: 16 << 30,
            },
            address: format!("10.0.0.{}", a + 1),
            runtime: "sim".into(),
            agent_version: "sim".into(),
            incarnation: format!("{}", agent.incarnation),
        };
        let name = agent.name.clone();
        let now_ms = self.unix_ms(m);
        let rx = self.propose_internal(
            m,
            Command::RegisterNode {
                node: registration,
                now_unix_ms: now_ms,
            },
        )?;
        let now = self.member_now(m);
        self.members[m].heartbeats.insert(name.clone(), now);
        let agent = &mut self.agents[a];
        agent.connected = Some(m);
        agent.hello_inflight = Some(rx);
        // The Hello carries every status afresh.
        for (r, run) in agent.running.iter_mut() {
            run.reported_ready = None;
            agent
                .unreported
                .insert(r.clone(), ReplicaObserved::default());
        }
        let id = self.members[m].id;
        self.trace(format!("agent {name}: hello to m{id}"));
        Ok(())
    }

    /// Run what the leader's state binds to this node; stop the rest.
    fn agent_reconcile(&mut self, a: usize, m: usize) {
        let state = self.members[m].store.snapshot();
        let name = self.agents[a].name.clone();
        let now_us = self.now_us;
        let mut assigned = BTreeMap::new();
        // What the state says this node last reported, per replica.
        let mut recorded = BTreeMap::new();
        for r in state.replicas_on(&name) {
            assigned.insert(r.key(), r.is_terminating());
            recorded.insert(r.key(), r.current_status().map(|o| o.ready));
        }
        // Stop what is not assigned, or terminating: Gone once stopped.
        let running: Vec<ObjectRef> = self.agents[a].running.keys().cloned().collect();
        for r in running {
            match assigned.get(&r) {
                Some(false) => {}
                Some(true) => {
                    self.agents[a].running.remove(&r);
                    let gone = ReplicaObserved {
                        phase: ReplicaPhase::Gone,
                        ..Default::default()
                    };
                    self.agents[a].unreported.insert(r, gone);
                }
                None => {
                    self.agents[a].running.remove(&r);
                }
            }
        }
        for (r, terminating) in &assigned {
            if *terminating {
                if !self.agents[a].running.contains_key(r) {
                    let gone = ReplicaObserved {
                        phase: ReplicaPhase::Gone,
                        ..Default::default()
                    };
                    self.agents[a].unreported.insert(r.clone(), gone);
                }
                continue;
            }
            if !self.agents[a].running.contains_key(r) {
                let delay = self.rng.gen_range(50_000..400_000);
                self.agents[a].running.insert(
                    r.clone(),
                    Running {
                        start_at_us: now_us + delay,
                        reported_ready: None,
                        unready_until_us: 0,
                        restarts: 0,
                    },
                );
            }
        }
        // Probe failures and container crashes, from the seed.
        if self.chaos && !self.agents[a].running.is_empty() && self.rng.gen_bool(0.05) {
            let n = self.agents[a].running.len();
            let i = self.rng.gen_range(0..n);
            let crash = self.rng.gen_bool(0.5);
            let until = now_us + self.rng.gen_range(200_000..2_000_000);
            if let Some((r, run)) = self.agents[a].running.iter_mut().nth(i) {
                run.unready_until_us = until;
                if crash {
                    run.restarts += 1;
                }
                let what = if crash {
                    "crashes"
                } else {
                    "fails its readiness probe"
                };
                let line = format!("agent {name}: {}/{} {what}", r.namespace, r.name);
                self.count(if crash {
                    "container crash"
                } else {
                    "probe failure"
                });
                self.trace(line);
            }
        }
        // What changed since the last report.
        let started = self.unix_ms(m);
        let mut self_counts = Vec::new();
        let agent = &mut self.agents[a];
        for (r, run) in agent.running.iter_mut() {
            if now_us < run.start_at_us {
                continue;
            }
            let ready = now_us >= run.unready_until_us;
            // A report can be lost to a race: committed while the replica
            // was unbound (its node briefly NotReady), then the replica is
            // placed back here. Report again whatever the state does not say.
            let said = recorded.get(r).copied().flatten();
            if run.reported_ready == Some(ready) && said == Some(ready) {
                continue;
            }
            if run.reported_ready == Some(ready) {
                self_counts.push("status reported again");
            }
            run.reported_ready = Some(ready);
            let observed = ReplicaObserved {
                phase: ReplicaPhase::Running,
                ready,
                restarts: run.restarts,
                container_id: format!("{}-{}", r.name, run.restarts),
                image: "drover/busybox:1".into(),
                started_unix_ms: started,
                ..Default::default()
            };
            agent.unreported.insert(r.clone(), observed);
        }
        for what in self_counts {
            self.count(what);
        }
    }

    /// Commit what changed, one ReportStatus entry at a time (as the
    /// dispatcher's batcher); a failed batch is reported again.
    fn agent_report(&mut self, a: usize, m: usize) -> Checked<()> {
        if let Some((rx, _)) = self.agents[a].report_inflight.as_mut() {
            match answered(rx) {
                None => return Ok(()),
                Some(true) => self.agents[a].report_inflight = None,
                Some(false) => {
                    if let Some((_, lost)) = self.agents[a].report_inflight.take() {
                        for (r, o) in lost {
                            self.agents[a].unreported.entry(r).or_insert(o);
                        }
                    }
                }
            }
        }
        if self.agents[a].unreported.is_empty() {
            return Ok(());
        }
        let name = self.agents[a].name.clone();
        let batch: Vec<(ObjectRef, ReplicaObserved)> =
            std::mem::take(&mut self.agents[a].unreported)
                .into_iter()
                .collect();
        let reports = batch
            .iter()
            .filter(|(_, o)| o.phase != ReplicaPhase::Pending)
            .map(|(r, o)| (name.clone(), r.clone(), o.clone()))
            .collect::<Vec<_>>();
        if reports.is_empty() {
            return Ok(());
        }
        let now_ms = self.unix_ms(m);
        let rx = self.propose_internal(
            m,
            Command::ReportStatus {
                reports,
                now_unix_ms: now_ms,
            },
        )?;
        self.agents[a].report_inflight = Some((rx, batch));
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
                if !agent.is_some_and(|x| x.running.contains_key(&r.key())) {
                    return Err(format!(
                        "not converged: {} is bound to {node} but its agent does not run it",
                        r.name
                    ));
                }
                if !r.current_status().is_some_and(|o| o.ready) {
                    let run = agent.and_then(|x| x.running.get(&r.key()));
                    return Err(format!(
                        "not converged: {} on {node} is not reported ready (its last report: \
                         {:?} ready={} from node {:?}; its agent runs it since {:?}µs, last \
                         reported ready={:?})",
                        r.name,
                        r.observed.phase,
                        r.observed.ready,
                        r.observed.node,
                        run.map(|x| x.start_at_us),
                        run.and_then(|x| x.reported_ready)
                    ));
                }
            }
        }
        for agent in &self.agents {
            for r in agent.runs() {
                let bound = state
                    .replica(&r.namespace, &r.name)
                    .is_some_and(|x| x.node.as_deref() == Some(agent.name.as_str()));
                if !bound {
                    return Err(format!(
                        "agent {} runs {}/{}, which is not bound to it",
                        agent.name, r.namespace, r.name
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

/// Every placement in a `Schedule`, applied to the state it was decided
/// on, is taken. The state machine re-checks each placement (the node is
/// Ready, the booking and host ports fit) because a decision may be applied
/// on a newer state; on its own state a refusal is a scheduler that placed
/// where nothing fits. Safety never sees it (the replica is placed again
/// elsewhere), so only this check does.
fn placements_fit(state: &State, command: &Command) -> Checked<()> {
    let Command::Schedule { place, .. } = command else {
        return Ok(());
    };
    let mut after = state.clone();
    let (index, term) = state.applied();
    // A refusal leaves the state as it was, and is itself a failure below.
    let _ = after.apply(index + 1, term, command);
    for (r, node) in place {
        let bound = after
            .replica(&r.namespace, &r.name)
            .and_then(|x| x.node.clone());
        if bound.as_deref() != Some(node.as_str()) {
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
