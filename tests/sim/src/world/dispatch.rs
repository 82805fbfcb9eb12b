//! The controller's end of the agents' sessions, and the glue that steps
//! the agents ([`crate::agent`]).
//!
//! ```text
//!   AgentBeat (every 250-350 ms), per agent:
//!     no session ─▶ Hello to the leader: RegisterNode; its commit opens the
//!                   session and the Hello's statuses go to the batcher
//!     session ─▶ heartbeat (the leader's memory; acknowledged: fence contact)
//!             ─▶ Sent::next(book) ─▶ the agent's set (whole, then changes)
//!             ─▶ status changes ─▶ Pending ─100 ms─▶ ReportStatus (LeaderWork)
//!   AgentWork (when a task finishes, a backoff or the fence is due):
//!     the agent's supervisor step; its status changes go out at once
//! ```
//!
//! The dispatcher's pieces are the production ones where they are pure:
//! the assignment book (`Assignments::build`), the per-session `Sent`
//! (whole set, then `NodeSet::changes_since`), `Pending` (newest status per
//! node and replica; a failed batch restored while leading), and
//! `observed_from_pb`. The book is built from the state at each applied
//! index a session looks at, for that session's node (not from the change
//! feed); it serves sets only once the leader loops passed their ReadIndex
//! barrier, as the production book's term does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use drover_controller::cluster::wire::observed_from_pb;
use drover_controller::dispatcher::{Assignments, Pending, Report, FENCING_MARGIN, STATUS_BATCH};
use drover_controller::store::{Command, NodeRegistration, Resources, Touched};
use drover_proto::pb;
use rand::Rng;

use super::leading::{answered, NODE_TIMEOUT};
use super::{Checked, Ev, World, WriteRx};
use crate::agent::KILL_MAX_US;

/// How long status reports are collected before one entry carries them
/// (the dispatcher's `STATUS_BATCH`), on the simulator's clock.
const STATUS_BATCH_US: u64 = STATUS_BATCH.as_micros() as u64;

/// Out of contact for longer than a heartbeat or so: cut off, not merely
/// between two beats.
const CUT_OFF_US: u64 = 400_000;

/// How long an agent fencing with `limit` may run its replicas after its
/// last contact: its limit, at most what the cluster accepts (the node
/// timeout less the dispatcher's margin: the controller replaces a silent
/// node's replicas only after the node timeout), plus the longest kill.
fn fencing_window_us(limit: Duration) -> u64 {
    let accepted = NODE_TIMEOUT.saturating_sub(FENCING_MARGIN);
    limit.min(accepted).as_micros() as u64 + KILL_MAX_US
}

/// One controller's dispatcher memory: lost with it.
#[derive(Default)]
pub(super) struct Dispatch {
    pending: Pending,
    batch_due_us: Option<u64>,
    inflight: Option<(WriteRx, Vec<Report>)>,
    /// Per node, the book with that node's set as of an applied index.
    book: BTreeMap<String, (u64, Arc<Assignments>)>,
}

impl World {
    /// One agent's beat: its session with the leader.
    pub(super) fn agent_beat(&mut self, a: usize) -> Checked<()> {
        if !self.agents[a].up {
            return Ok(());
        }
        let name = self.agents[a].name.clone();
        let now_us = self.now_us;
        if self.chaos && self.rng.gen_bool(0.05) {
            if let Some(what) = self.agents[a].container_fault(now_us, &mut self.rng) {
                let kind = if what.contains("crashes") {
                    "container crash"
                } else {
                    "probe failure"
                };
                self.count(kind);
                self.trace(format!("agent {name}: {what}"));
            }
        }
        // The session holds while its controller is up, reachable, and leads.
        if let Some(m) = self.agents[a].session.as_ref().map(|s| s.m) {
            let leads = self.members[m].core.is_some() && self.members[m].leader_view.2;
            if !leads || self.agent_cut.contains(&name) {
                self.agents[a].end_session(now_us);
                self.trace(format!("agent {name}: session lost"));
            }
        }
        if self.agent_cut.contains(&name) {
            return self.agent_work(a);
        }
        let Some(m) = self.agents[a].session.as_ref().map(|s| s.m) else {
            self.agent_hello(a)?;
            return self.agent_work(a);
        };
        if self.members[m].flushing.is_some() {
            return Ok(());
        }
        // The session serves once its RegisterNode committed; then the
        // Hello's statuses are reported.
        let hello = self.agents[a]
            .session
            .as_mut()
            .and_then(|s| s.hello.as_mut())
            .map(answered);
        match hello {
            Some(None) => return Ok(()),
            Some(Some(false)) => {
                self.agents[a].end_session(now_us);
                self.trace(format!("agent {name}: Hello not committed"));
                return Ok(());
            }
            Some(Some(true)) => {
                let statuses = self.agents[a]
                    .session
                    .as_mut()
                    .map(|s| {
                        s.hello = None;
                        std::mem::take(&mut s.hello_statuses)
                    })
                    .unwrap_or_default();
                self.report(m, &name, statuses);
            }
            None => {}
        }
        let now = self.member_now(m);
        self.members[m].heartbeats.insert(name.clone(), now);
        self.agents[a].heartbeat_acked(now_us);
        let serves = self.members[m].leader.as_ref().is_some_and(|l| l.ready());
        if serves {
            let book = self.book(m, &name);
            let msg = self.agents[a]
                .session
                .as_mut()
                .and_then(|s| s.sent.next(&book, &name, true));
            if let Some(msg) = msg {
                let (version, n) = (msg.version, msg.assignments.len());
                match self.agents[a].receive_set(msg, now_us) {
                    Ok(fresh) => {
                        self.trace(format!(
                            "agent {name}: set {version} ({n} assignments changed)"
                        ));
                        if !fresh.is_empty() {
                            self.count("statuses sent again for a replica assigned anew");
                        }
                        self.report(m, &name, fresh);
                    }
                    Err(why) => {
                        self.agents[a].end_session(now_us);
                        self.trace(format!("agent {name}: session ends: {why}"));
                    }
                }
            }
        }
        self.agent_work(a)
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
        // An agent that says Hello is alive: it counts from now.
        let now = self.member_now(m);
        self.members[m].heartbeats.insert(name.clone(), now);
        self.agents[a].open_session(m, rx);
        let id = self.members[m].id;
        self.trace(format!("agent {name}: hello to m{id}"));
        Ok(())
    }

    /// An agent's supervisor step, its status changes sent, and the
    /// fencing checks.
    pub(super) fn agent_work(&mut self, a: usize) -> Checked<()> {
        let now_us = self.now_us;
        if self.agents[a].wake_at_us.is_some_and(|w| w <= now_us) {
            self.agents[a].wake_at_us = None;
        }
        let stepped = self.agents[a].supervise(now_us, &mut self.rng);
        for what in stepped.counts {
            self.count(what);
        }
        for line in stepped.trace {
            self.trace(line);
        }
        if let Some(at) = stepped.wake_at_us.filter(|at| *at > now_us) {
            if self.agents[a].wake_at_us.is_none_or(|w| at < w) {
                self.agents[a].wake_at_us = Some(at);
                let life = self.agents[a].life;
                self.at(at - now_us, Ev::AgentWork { a, life });
            }
        }
        // A session is a reliable stream: while its link is cut, what the
        // agent sends waits (and the changes coalesce) until the link heals
        // or the session ends (then the next Hello repeats every status).
        let m = self.agents[a].session.as_ref().map(|s| s.m);
        if let Some(m) = m {
            let name = self.agents[a].name.clone();
            let reachable = self.members[m].core.is_some() && !self.agent_cut.contains(&name);
            if reachable {
                let changes = self.agents[a].status_changes();
                self.report(m, &name, changes);
            }
        }
        self.check_fencing()
    }

    /// The dispatcher takes statuses from a session (`Dispatcher::report`).
    fn report(&mut self, m: usize, node: &str, statuses: Vec<pb::ReplicaStatus>) {
        if statuses.is_empty() || self.members[m].core.is_none() {
            return;
        }
        let now = self.member_now(m);
        self.members[m].heartbeats.insert(node.to_string(), now);
        for s in statuses {
            if let Some((target, observed)) = observed_from_pb(&s) {
                self.members[m]
                    .dispatch
                    .pending
                    .push((node.to_string(), target, observed));
            }
        }
        let due = self.now_us + STATUS_BATCH_US;
        self.members[m].dispatch.batch_due_us.get_or_insert(due);
    }

    /// Every controller's status batcher (`batch_statuses`): one
    /// ReportStatus entry at a time; a batch that did not commit goes back
    /// while this controller leads, and is dropped once it does not (the
    /// agents' Hello to the next leader carries every status afresh).
    pub(super) fn dispatch_work(&mut self) -> Checked<()> {
        let now_us = self.now_us;
        for m in 0..self.members.len() {
            if self.members[m].core.is_none() || self.members[m].flushing.is_some() {
                continue;
            }
            let d = &mut self.members[m].dispatch;
            if let Some((rx, _)) = d.inflight.as_mut() {
                match answered(rx) {
                    None => continue,
                    Some(true) => d.inflight = None,
                    Some(false) => {
                        let leads = self.members[m]
                            .core
                            .as_ref()
                            .is_some_and(|c| c.leadership().is_leader);
                        let d = &mut self.members[m].dispatch;
                        if let Some((_, reports)) = d.inflight.take() {
                            if leads {
                                d.pending.restore(reports);
                                d.batch_due_us.get_or_insert(now_us + STATUS_BATCH_US);
                            } else {
                                self.count("status batch dropped: leadership lost");
                            }
                        }
                    }
                }
            }
            let d = &mut self.members[m].dispatch;
            if d.inflight.is_some() || d.batch_due_us.is_none_or(|t| t > now_us) {
                continue;
            }
            d.batch_due_us = None;
            let reports = d.pending.take();
            if reports.is_empty() {
                continue;
            }
            let now_ms = self.unix_ms(m);
            let command = Command::ReportStatus {
                reports: reports.clone(),
                now_unix_ms: now_ms,
            };
            let rx = self.propose_internal(m, command)?;
            self.members[m].dispatch.inflight = Some((rx, reports));
        }
        Ok(())
    }

    /// Member `m`'s assignment book with `node`'s set as of its state now:
    /// `Assignments::build` told that only this node changed rebuilds its
    /// set alone (keeping its `Arc` when equal, which `Sent::next` relies
    /// on); the other nodes' sets are left as they were and not read.
    fn book(&mut self, m: usize, node: &str) -> Arc<Assignments> {
        let state = self.members[m].store.snapshot();
        let applied = state.applied().0;
        let d = &mut self.members[m].dispatch;
        if let Some((at, book)) = d.book.get(node) {
            if *at == applied {
                return book.clone();
            }
        }
        let previous = d.book.get(node).map(|(_, b)| b.clone()).unwrap_or_default();
        let changes = Touched {
            nodes: [node.to_string()].into(),
            ..Touched::default()
        };
        let book = Arc::new(Assignments::build(&state, &previous, &changes));
        d.book.insert(node.to_string(), (applied, book.clone()));
        book
    }

    /// Fencing (SPEC guarantee 9), in seeds whose agents run with
    /// `--stop-after-disconnect L`. The controller replaces a node's
    /// replicas only once it has not heard the node for the node timeout T
    /// (then a monitor tick, a scheduling round and a start), and the agent
    /// counts L from the acknowledgement of its last heartbeat, with
    /// L ≤ T − 500 ms: the kill comes first. The check: an agent out of
    /// contact for longer than [`fencing_window_us`] runs nothing, so no
    /// replica runs both on a cut-off node past its window and where it was
    /// moved. Every replica seen on two hosts at once is counted by cause
    /// (no fencing; both hosts in contact, as a move while a leader's clock
    /// jumped; one host cut off but within its window).
    fn check_fencing(&mut self) -> Checked<()> {
        let now_us = self.now_us;
        let mut hosts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (a, agent) in self.agents.iter().enumerate() {
            if !agent.up {
                continue;
            }
            let past = agent
                .limit
                .is_some_and(|l| agent.out_of_contact_us(now_us) > fencing_window_us(l));
            for (r, since) in agent.running_since() {
                // Fencing cancels no runtime work: a start in flight at the
                // deadline finishes, and the kill follows it.
                let in_flight = agent.fence_deadline_us().is_some_and(|d| since > d)
                    && now_us - since <= KILL_MAX_US;
                if past && !in_flight {
                    return Err(format!(
                        "fencing: agent {} has had no contact for {}µs (--stop-after-disconnect \
                         {:?}) and still runs {r}",
                        agent.name,
                        agent.out_of_contact_us(now_us),
                        agent.limit.unwrap_or_default()
                    ));
                }
                hosts.entry(r.to_string()).or_default().push(a);
            }
        }
        for a in 0..self.agents.len() {
            let now: BTreeSet<String> = hosts
                .iter()
                .filter(|(_, on)| on.len() > 1 && on.contains(&a))
                .map(|(r, _)| r.clone())
                .collect();
            let new: Vec<String> = now
                .difference(&self.agents[a].overlapping)
                .cloned()
                .collect();
            self.agents[a].overlapping = now;
            for r in new {
                let Some(on) = hosts.get(&r) else { continue };
                // Each overlap once, by the first host that has it.
                if on.first() != Some(&a) {
                    continue;
                }
                let cut: Vec<String> = on
                    .iter()
                    .filter(|h| self.agents[**h].out_of_contact_us(now_us) > CUT_OFF_US)
                    .map(|h| self.agents[*h].name.clone())
                    .collect();
                let fencing = self.agents[a].limit.is_some();
                let kind = match (fencing, cut.is_empty()) {
                    (false, _) => "replica on two hosts (no fencing)",
                    (true, true) => "replica on two hosts, both in contact (fencing)",
                    (true, false) => {
                        "replica on two hosts, one cut off within its window (fencing)"
                    }
                };
                let names: Vec<String> = on.iter().map(|h| self.agents[*h].name.clone()).collect();
                self.count(kind);
                self.trace(format!("{kind}: {r} on {names:?}, cut off: {cut:?}"));
            }
        }
        Ok(())
    }
}
