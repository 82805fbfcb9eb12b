//! One agent host in the simulator: the production agent's decisions over a
//! deterministic container model.
//!
//! ```text
//!   session (agent end)                 supervisor state               container model
//!   Hello: every status ─▶ dispatcher   assignments · records · busy   containers by id
//!   set ─▶ session::HeldSet::take ───▶  reconcile::reconcile(now) ──▶ tasks: Start, Stop,
//!          session::resend              Record::{started, backed_off,    Remove finish after
//!   acked heartbeat, set ─▶ Fence       removed} bookkeeping             a seeded delay
//!   Fence::deadline passed ─▶ fence     status::status_map ──▶ status::changed ──▶ reports
//! ```
//!
//! What decides is production code (`drover_agent`): the reconcile's
//! decision table, the records' bookkeeping, the status derivation, the
//! session's whole-set and re-report rules and the fencing rule. What is
//! simulated is the runtime: a task's steps all take effect when it
//! finishes, a seeded 5-300 ms after it was started; containers crash and
//! fail their readiness probe when the world says so. Two clocks, as on a
//! real host: the wall clock (`unix_ms`, which a clock jump moves) is the
//! reconcile's `now` (backoffs, exits, statuses); the monotonic one (the
//! simulated time, as tokio's `Instant`) is the fence's.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Add;
use std::time::Duration;

use drover_agent::assignment::{Assignment, Templates};
use drover_agent::fence::Fence;
use drover_agent::reconcile::{self, Action, Busy, Failure, Record};
use drover_agent::runtime::{ContainerState, Exit, Observed, UnixMs};
use drover_agent::session;
use drover_agent::status::{self, Readiness, StatusMap};
use drover_controller::dispatcher::Sent;
use drover_proto::pb;
use rand::rngs::StdRng;
use rand::Rng;

use crate::world::WriteRx;

/// The longest a kill (a Stop with no grace) takes in the container model:
/// a fenced agent runs nothing once this has passed after its deadline.
pub const KILL_MAX_US: u64 = 100_000;
/// The wall clock of every host before any jump, an hour into the run (so
/// a jump back stays after it): as the controllers' `unix_ms`.
const EPOCH_UNIX_MS: i64 = 1_700_000_000_000;
const HOUR_US: i64 = 3_600_000_000;

/// The simulated time as the fence's monotonic clock, µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SimInstant(pub u64);

impl Add<Duration> for SimInstant {
    type Output = SimInstant;
    fn add(self, d: Duration) -> SimInstant {
        SimInstant(self.0.saturating_add(d.as_micros() as u64))
    }
}

/// One host's agent, with its containers.
pub struct SimAgent {
    pub name: String,
    pub up: bool,
    pub incarnation: u64,
    /// `--stop-after-disconnect`, when this seed fences.
    pub limit: Option<Duration>,
    /// The wall clock's offset from the simulated time, µs (clock jumps).
    skew_us: i64,
    /// Bumped at each crash: work scheduled by an older life is ignored.
    pub life: u32,
    pub session: Option<Session>,
    /// Over the simulated (monotonic) time, µs.
    fence: Fence<SimInstant>,
    // The supervisor's state, as `Supervisor` keeps it.
    assignments: Option<BTreeMap<String, Assignment>>,
    invalid: BTreeMap<String, Failure>,
    /// The templates of the assignments, each decoded once.
    templates: Templates,
    terminating: BTreeSet<String>,
    fencing: bool,
    stop_grace: BTreeMap<String, Duration>,
    records: BTreeMap<String, Record>,
    busy: BTreeMap<String, Busy>,
    statuses: StatusMap,
    // The container model.
    containers: BTreeMap<String, Observed>,
    tasks: BTreeMap<String, Task>,
    /// When each container's start finished, simulated µs.
    started_us: BTreeMap<String, u64>,
    /// Readiness probe verdicts: replica → (container, failing until µs).
    unready: BTreeMap<String, (String, u64)>,
    next_container: u64,
    /// When the next supervisor step is already due (a wake-up scheduled).
    pub wake_at_us: Option<u64>,
    /// Replicas running here that also run on another host (for counting
    /// each overlap once).
    pub overlapping: BTreeSet<String>,
}

/// The session with a leader, both ends: the agent's (the set it holds,
/// the statuses it last sent) and the dispatcher's (`Sent`, and the
/// `RegisterNode` the session waits on before it serves).
pub struct Session {
    pub m: usize,
    pub hello: Option<WriteRx>,
    /// What the Hello said, reported once the session serves.
    pub hello_statuses: Vec<pb::ReplicaStatus>,
    pub sent: Sent,
    held: session::HeldSet,
    last_version: u64,
    last_sent: StatusMap,
    /// It delivered an assignment set.
    productive: bool,
}

/// Runtime work for one replica, as the supervisor's task runs it.
struct Task {
    done_at_us: u64,
    steps: Vec<Step>,
}

enum Step {
    Stop {
        container_id: String,
    },
    Remove {
        container_id: String,
    },
    Start {
        assignment: Box<Assignment>,
        restarts: u32,
    },
}

/// What a supervisor step did, for the world's trace and counts.
#[derive(Default)]
pub struct Stepped {
    pub trace: Vec<String>,
    pub counts: Vec<&'static str>,
    /// When it must run again (a task finishing, a backoff, a probe, the
    /// fence's deadline), simulated µs.
    pub wake_at_us: Option<u64>,
}

impl SimAgent {
    pub fn new(name: String, limit: Option<Duration>, now_us: u64) -> SimAgent {
        SimAgent {
            name,
            up: true,
            incarnation: 1,
            limit,
            skew_us: 0,
            life: 0,
            session: None,
            fence: Fence::new(limit, SimInstant(now_us)),
            assignments: None,
            invalid: BTreeMap::new(),
            templates: Templates::default(),
            terminating: BTreeSet::new(),
            fencing: false,
            stop_grace: BTreeMap::new(),
            records: BTreeMap::new(),
            busy: BTreeMap::new(),
            statuses: StatusMap::new(),
            containers: BTreeMap::new(),
            tasks: BTreeMap::new(),
            started_us: BTreeMap::new(),
            unready: BTreeMap::new(),
            next_container: 0,
            wake_at_us: None,
            overlapping: BTreeSet::new(),
        }
    }

    /// The host died: the agent and every container with it.
    pub fn crash(&mut self) {
        let (name, limit, incarnation, skew, life, next) = (
            std::mem::take(&mut self.name),
            self.limit,
            self.incarnation,
            self.skew_us,
            self.life,
            self.next_container,
        );
        *self = SimAgent::new(name, limit, 0);
        self.up = false;
        self.incarnation = incarnation;
        self.skew_us = skew;
        self.life = life + 1;
        self.next_container = next;
    }

    /// The host is back: a new agent process, no containers.
    pub fn restart(&mut self, now_us: u64) {
        self.up = true;
        self.incarnation += 1;
        self.fence = Fence::new(self.limit, SimInstant(now_us));
    }

    /// This host's wall clock at simulated time `now_us`.
    pub fn unix_ms(&self, now_us: u64) -> UnixMs {
        EPOCH_UNIX_MS + (HOUR_US + now_us as i64 + self.skew_us) / 1000
    }

    pub fn jump_clock(&mut self, us: i64) {
        self.skew_us += us;
    }

    /// Replicas (agent ids) with a running container here, and when that
    /// container's start finished (simulated µs).
    pub fn running_since(&self) -> impl Iterator<Item = (&str, u64)> {
        self.containers
            .values()
            .filter(|c| c.is_running())
            .map(|c| {
                let since = self.started_us.get(&c.container_id).copied();
                (c.replica.as_str(), since.unwrap_or_default())
            })
    }

    /// The fence's deadline as it stood at the last contact: L after it.
    pub fn fence_deadline_us(&self) -> Option<u64> {
        self.limit
            .map(|l| (SimInstant(self.fence.last_contact().0) + l).0)
    }

    /// Replicas (agent ids) with a running container here.
    pub fn running(&self) -> impl Iterator<Item = &str> {
        self.containers
            .values()
            .filter(|c| c.is_running())
            .map(|c| c.replica.as_str())
    }

    pub fn runs(&self, replica: &str) -> bool {
        self.running().any(|r| r == replica)
    }

    /// The status this agent last derived for `replica`, in one phrase.
    pub fn describe(&self, replica: &str) -> String {
        match self.statuses.get(replica) {
            Some(s) => format!("{:?} ready={}", s.state(), s.ready),
            None => "no status".into(),
        }
    }

    /// How long since a controller last confirmed contact, µs.
    pub fn out_of_contact_us(&self, now_us: u64) -> u64 {
        now_us.saturating_sub(self.fence.last_contact().0)
    }

    /// A session opens with member `m`, waiting on its `RegisterNode`:
    /// the Hello carries every status.
    pub fn open_session(&mut self, m: usize, hello: WriteRx) {
        let statuses = self.statuses.clone();
        self.session = Some(Session {
            m,
            hello: Some(hello),
            hello_statuses: statuses
                .values()
                .map(|s| pb::ReplicaStatus::clone(s))
                .collect(),
            sent: Sent::default(),
            held: session::HeldSet::default(),
            last_version: 0,
            last_sent: statuses,
            productive: false,
        });
    }

    /// The session ended (its controller went away, stepped down, or this
    /// host was cut off).
    pub fn end_session(&mut self, now_us: u64) {
        if self.session.take().is_some_and(|s| s.productive) {
            self.fence.session_ended(SimInstant(now_us));
        }
    }

    /// The leader acknowledged a heartbeat.
    pub fn heartbeat_acked(&mut self, now_us: u64) {
        self.fence.acked = true;
        self.fence.contact(SimInstant(now_us));
    }

    /// An assignment set (whole or a change) arrived: the session's rules,
    /// then the supervisor's `assign_set`. Returns the statuses to send
    /// again (replicas newly assigned here), or why the session must end.
    pub fn receive_set(
        &mut self,
        msg: pb::AssignmentSet,
        now_us: u64,
    ) -> Result<Vec<pb::ReplicaStatus>, String> {
        let Some(s) = self.session.as_mut() else {
            return Ok(Vec::new());
        };
        if msg.version < s.last_version {
            return Ok(Vec::new());
        }
        let taken = s.held.take(msg)?;
        let set = s.held.to_set();
        s.last_version = set.version;
        s.productive = true;
        self.fence.contact(SimInstant(now_us));
        let fresh = session::resend(&taken.fresh, s.held.terminating(), &s.last_sent);
        self.assign_set(set);
        Ok(fresh)
    }

    /// As `Supervisor`'s `Msg::Assign`.
    fn assign_set(&mut self, set: pb::AssignmentSet) {
        self.fencing = false;
        self.terminating = set.terminating.into_iter().collect();
        self.stop_grace = set
            .terminating_grace_seconds
            .into_iter()
            .map(|(replica, s)| (replica, Duration::from_secs(u64::from(s))))
            .collect();
        let mut previous = self.assignments.take().unwrap_or_default();
        let mut next = BTreeMap::new();
        self.invalid.clear();
        for a in set.assignments {
            let before = previous.remove(&a.replica);
            match Assignment::from_pb_after(a, before, &mut self.templates) {
                Ok(a) => {
                    next.insert(a.replica.clone(), a);
                }
                Err((replica, e)) => {
                    self.invalid.insert(replica, Failure::from_error(&e, ""));
                }
            }
        }
        self.assignments = Some(next);
        drop(previous);
        self.templates.prune();
    }

    /// What the session sends now: every status that changed since it last
    /// sent (none before its Hello committed).
    pub fn status_changes(&mut self) -> Vec<pb::ReplicaStatus> {
        let Some(s) = self.session.as_mut().filter(|s| s.hello.is_none()) else {
            return Vec::new();
        };
        let changed = status::changed(&s.last_sent, &self.statuses);
        s.last_sent = self.statuses.clone();
        changed
    }

    /// The world's faults on this host's containers: one running container
    /// crashes (exit 1) or fails its readiness probe for 0.2-2 s.
    pub fn container_fault(&mut self, now_us: u64, rng: &mut StdRng) -> Option<String> {
        let running: Vec<(String, String)> = self
            .containers
            .values()
            .filter(|c| c.is_running())
            .map(|c| (c.container_id.clone(), c.replica.clone()))
            .collect();
        if running.is_empty() {
            return None;
        }
        let (id, replica) = running[rng.gen_range(0..running.len())].clone();
        if rng.gen_bool(0.5) {
            let finished = self.unix_ms(now_us);
            if let Some(c) = self.containers.get_mut(&id) {
                c.state = ContainerState::Exited(Exit {
                    code: 1,
                    oom_killed: false,
                    finished_unix_ms: finished,
                });
            }
            Some(format!("{replica} crashes (container {id})"))
        } else {
            let until = now_us + rng.gen_range(200_000..2_000_000);
            self.unready.insert(replica.clone(), (id, until));
            Some(format!("{replica} fails its readiness probe"))
        }
    }

    /// One turn of the supervisor loop: finished runtime work, the fence,
    /// the reconcile and its actions, then the statuses.
    pub fn supervise(&mut self, now_us: u64, rng: &mut StdRng) -> Stepped {
        let mut out = Stepped::default();
        if !self.up {
            return out;
        }
        let now = self.unix_ms(now_us);
        let done: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.done_at_us <= now_us)
            .map(|(r, _)| r.clone())
            .collect();
        for replica in done {
            if let Some(task) = self.tasks.remove(&replica) {
                let starts = task.steps.iter().any(|s| matches!(s, Step::Start { .. }));
                if starts && self.fence.is_fenced() {
                    out.counts
                        .push("a start in flight at the fence finished after it");
                    out.trace.push(format!(
                        "agent {}: {replica} started after the fence (its start was in flight)",
                        self.name
                    ));
                }
                self.finish(&replica, task, now, now_us);
            }
        }
        if self.fence.deadline().is_some_and(|d| d.0 <= now_us) {
            // As the session's fence and `Msg::Fence`.
            self.fence.fenced();
            self.fencing = true;
            self.terminating.clear();
            self.stop_grace.clear();
            self.invalid.clear();
            self.assignments = Some(BTreeMap::new());
            out.counts.push("agent fenced");
            out.trace.push(format!(
                "agent {}: no contact for --stop-after-disconnect: fenced",
                self.name
            ));
            // As the production session does after fencing in a session
            // (`Ended::Lost`): the next session brings the whole set, which
            // ends the fencing. A session kept open past its fence would
            // leave the node's replicas killed until its set next changed.
            if self.session.is_some() {
                self.end_session(now_us);
                out.trace
                    .push(format!("agent {}: session ends: fenced", self.name));
            }
        }
        self.reconcile(now_us, now, rng, &mut out);
        self.publish(now_us);
        let tasks = self.tasks.values().map(|t| t.done_at_us);
        let probes = self
            .unready
            .values()
            .map(|(_, until)| *until)
            .filter(|t| *t > now_us);
        let backoff = reconcile::sleep_for(&self.records, &self.busy, now, now)
            .map(|d| now_us + d.as_micros() as u64);
        out.wake_at_us = tasks
            .chain(probes)
            .chain(backoff)
            .chain(self.fence.deadline().map(|d| d.0))
            .min();
        out
    }

    /// A task's steps take effect, and the supervisor's outcome bookkeeping.
    fn finish(&mut self, replica: &str, task: Task, now: UnixMs, now_us: u64) {
        self.busy.remove(replica);
        for step in task.steps {
            match step {
                Step::Stop { container_id } => {
                    if let Some(c) = self.containers.get_mut(&container_id) {
                        c.killed(now);
                    }
                }
                Step::Remove { container_id } => {
                    self.containers.remove(&container_id);
                    self.started_us.remove(&container_id);
                    if let Some(r) = self.records.get_mut(replica) {
                        r.removed(&container_id);
                    }
                }
                Step::Start {
                    assignment,
                    restarts,
                } => {
                    self.next_container += 1;
                    let id = format!("{}-c{}", self.name, self.next_container);
                    let a = *assignment;
                    self.started_us.insert(id.clone(), now_us);
                    self.records
                        .entry(replica.to_string())
                        .or_default()
                        .started(&id, restarts);
                    self.containers.insert(
                        id.clone(),
                        Observed {
                            replica: a.replica.clone(),
                            namespace: a.namespace.clone(),
                            deployment: a.deployment.clone(),
                            revision: a.revision.clone(),
                            spec_hash: a.spec_hash.clone(),
                            container_id: id,
                            image: a.container().image.clone(),
                            restarts,
                            started_unix_ms: now,
                            state: ContainerState::Running,
                            grace: Some(a.grace()),
                            published_ports: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    /// As `Supervisor::reconcile`: decide, keep the books, and start one
    /// task per replica with runtime work.
    fn reconcile(&mut self, now_us: u64, now: UnixMs, rng: &mut StdRng, out: &mut Stepped) {
        let Some(assignments) = &self.assignments else {
            return;
        };
        let actions = reconcile::reconcile(
            assignments,
            self.containers.values(),
            &self.records,
            &self.busy,
            now,
        );
        for (replica, actions) in reconcile::per_replica(actions, self.fencing, &self.stop_grace) {
            let mut steps = Vec::new();
            let mut busy = Busy::Stopping;
            let mut kill = false;
            for action in actions {
                reconcile::keep_books(&mut self.records, &action);
                match action {
                    Action::Adopt { .. } => {}
                    Action::BackOff { exit, delay, .. } => {
                        out.counts.push("container backed off");
                        out.trace.push(format!(
                            "agent {}: {replica} exited ({}), restart in {delay:?}",
                            self.name, exit.code
                        ));
                    }
                    Action::Forget { .. } => {
                        self.unready.remove(&replica);
                    }
                    Action::Stop {
                        container_id,
                        grace,
                        ..
                    } => {
                        kill |= grace.is_zero();
                        steps.push(Step::Stop { container_id });
                    }
                    Action::Remove { container_id, .. } => {
                        steps.push(Step::Remove { container_id })
                    }
                    Action::Start { restarts, .. } => {
                        if let Some(a) = assignments.get(&replica) {
                            busy = Busy::Starting;
                            steps.push(Step::Start {
                                assignment: Box::new(a.clone()),
                                restarts,
                            });
                        }
                    }
                    Action::Restart {
                        container_id,
                        restarts,
                        ..
                    } => {
                        if let Some(a) = assignments.get(&replica) {
                            busy = Busy::Starting;
                            steps.push(Step::Remove { container_id });
                            steps.push(Step::Start {
                                assignment: Box::new(a.clone()),
                                restarts,
                            });
                        }
                    }
                }
            }
            if steps.is_empty() {
                continue;
            }
            let took = if kill {
                rng.gen_range(5_000..=KILL_MAX_US)
            } else {
                rng.gen_range(5_000..=300_000)
            };
            let what: Vec<&str> = steps
                .iter()
                .map(|s| match s {
                    Step::Stop { .. } => "stop",
                    Step::Remove { .. } => "remove",
                    Step::Start { .. } => "start",
                })
                .collect();
            out.trace.push(format!(
                "agent {}: {replica}: {} (done in {took}µs)",
                self.name,
                what.join(", ")
            ));
            self.busy.insert(replica.clone(), busy);
            self.tasks.insert(
                replica,
                Task {
                    done_at_us: now_us + took,
                    steps,
                },
            );
        }
    }

    /// As `Supervisor::publish`: every status, derived.
    fn publish(&mut self, now_us: u64) {
        let node = status::Node {
            assignments: self.assignments.as_ref(),
            invalid: &self.invalid,
            terminating: &self.terminating,
            records: &self.records,
            busy: &self.busy,
        };
        let unready = &self.unready;
        self.statuses = status::status_map(&node, self.containers.values(), |name| {
            unready.get(name).map(|(id, until)| Readiness {
                container_id: id,
                ready: now_us >= *until,
                message: Some("HTTP probe failed with statuscode: 503"),
            })
        });
    }
}
