//! One simulated cluster run: controllers (production [`Core`] + [`Store`])
//! over [`SimDisk`]s and a simulated network, clients writing and reading,
//! and faults, all drawn from one seed and stepped on one thread.
//!
//! ```text
//!   queue of events ordered by (time µs, seq) ──pop──▶ dispatch
//!     Tick(m) · Deliver(m, msg) · Report(m) · FlushDone(m) · SnapshotDone(m)
//!     Write · Read · Fault · Restart(m) · Check · EndChaos
//!   a member flushing its disk is awaiting (as the tokio node is): events
//!   for it wait in its `deferred` queue until FlushDone.
//! ```
//!
//! After every event the world drains the network outbox (messages the
//! cores sent; each gets a seeded fate: delay, drop, duplicate), polls the
//! clients' reply channels, and checks the invariants that hold at every
//! step. Any violation stops the run with the step it happened at.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use drover_controller::raft::core::{check_relayed, Core, Inbound, SnapshotJob, Unflushed};
use drover_controller::raft::node::{NodeConfig, NodeError};
use drover_controller::raft::transport::Transport;
use drover_controller::store::{ObjectRef, State, Store, WriteError, WriteResult};
use raft::prelude::{Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::disk::SimDisk;

mod dispatch;
mod leading;
mod workload;

use crate::agent::SimAgent;
use dispatch::Dispatch;
use leading::LeaderLoop;

pub(crate) type WriteRx = oneshot::Receiver<Result<Result<WriteResult, WriteError>, NodeError>>;

/// What a run does, beyond its seed.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Keep every trace line (for the determinism test and `--seed --trace`
    /// replays, failed or not); otherwise only the last [`TRACE_TAIL`] lines.
    pub full_trace: bool,
    /// Simulated time with faults.
    pub chaos: Duration,
    /// Simulated time after the faults stop, for the cluster to converge.
    pub settle: Duration,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            full_trace: false,
            chaos: Duration::from_secs(6),
            settle: Duration::from_secs(8),
        }
    }
}

/// Trace lines kept for a failure report.
pub const TRACE_TAIL: usize = 300;

/// What a run that passed did.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub members: usize,
    pub steps: u64,
    pub writes_acked: usize,
    pub writes_proposed: usize,
    pub reads_answered: usize,
    pub crashes: u32,
    pub lost_writes_on_crash: usize,
    /// Faults and network events that happened, by kind.
    pub counts: BTreeMap<&'static str, u64>,
    pub terms: u64,
    pub applied: u64,
    /// SHA-256 of the whole trace.
    pub trace_hash: String,
    /// The whole trace, with `full_trace`.
    pub trace: Vec<String>,
}

/// A violated invariant: where, and the trace that led there.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub time_us: u64,
    pub what: String,
    pub trace_tail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {} (t={}): {}",
            self.seed,
            self.step,
            fmt_time(self.time_us),
            self.what
        )?;
        writeln!(
            f,
            "replay: cargo run -p drover-sim --bin sim -- --seed {}",
            self.seed
        )?;
        writeln!(f, "last {} trace lines:", self.trace_tail.len())?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

fn fmt_time(us: u64) -> String {
    format!("{}.{:06}s", us / 1_000_000, us % 1_000_000)
}

/// The seeded shape of a run: cluster size and how hostile it is.
#[derive(Debug, Clone)]
struct Profile {
    members: u64,
    agents: usize,
    drop_p: f64,
    dup_p: f64,
    max_delay_us: u64,
    disk_us: (u64, u64),
    slow_disk_us: (u64, u64),
    fault_every_us: u64,
    write_every_us: u64,
    read_every_us: u64,
}

impl Profile {
    fn draw(rng: &mut StdRng) -> Profile {
        Profile {
            members: if rng.gen_bool(0.25) { 5 } else { 3 },
            agents: rng.gen_range(3..=4),
            drop_p: if rng.gen_bool(0.3) {
                0.0
            } else {
                rng.gen_range(0.0..0.15)
            },
            dup_p: if rng.gen_bool(0.5) {
                0.0
            } else {
                rng.gen_range(0.0..0.05)
            },
            max_delay_us: rng.gen_range(200..30_000),
            disk_us: (50, rng.gen_range(100..2_000)),
            slow_disk_us: (5_000, rng.gen_range(10_000..120_000)),
            fault_every_us: rng.gen_range(150_000..1_500_000),
            write_every_us: rng.gen_range(20_000..120_000),
            read_every_us: rng.gen_range(20_000..150_000),
        }
    }
}

enum Ev {
    Tick {
        m: usize,
        epoch: u32,
    },
    Deliver {
        m: usize,
        msg: Message,
    },
    ReportSnapshot {
        m: usize,
        to: u64,
        ok: bool,
    },
    ReportUnreachable {
        m: usize,
        to: u64,
    },
    FlushDone {
        m: usize,
        epoch: u32,
    },
    SnapshotDone {
        m: usize,
        epoch: u32,
        job: SnapshotJob<SimDisk>,
    },
    Propose {
        m: usize,
        op: u64,
    },
    ReadAt {
        m: usize,
        read: u64,
    },
    Write,
    Read,
    Fault,
    Restart {
        m: usize,
    },
    LeaderWork,
    AgentBeat {
        a: usize,
    },
    AgentRestart {
        a: usize,
    },
    /// An agent's supervisor step, in the agent life it was scheduled in.
    AgentWork {
        a: usize,
        life: u32,
    },
    Check,
    EndChaos,
}

impl Ev {
    /// The member an event is for, when it must wait while that member flushes.
    fn member(&self) -> Option<usize> {
        match self {
            Ev::Tick { m, .. }
            | Ev::Deliver { m, .. }
            | Ev::ReportSnapshot { m, .. }
            | Ev::ReportUnreachable { m, .. }
            | Ev::SnapshotDone { m, .. }
            | Ev::Propose { m, .. }
            | Ev::ReadAt { m, .. } => Some(*m),
            _ => None,
        }
    }
}

/// The simulated network: every core sends into one outbox, which the world
/// drains after each event (so the fate of each message is drawn in order).
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<Vec<(u64, Message)>>>);

struct Port {
    from: u64,
    outbox: Outbox,
}

impl Transport for Port {
    fn send(&self, msgs: Vec<Message>) {
        let mut out = self.outbox.0.lock().unwrap_or_else(PoisonError::into_inner);
        out.extend(msgs.into_iter().map(|m| (self.from, m)));
    }
    fn set_peer(&self, _id: u64, _address: String) {}
    fn remove_peer(&self, _id: u64) {}
}

struct SimMember {
    id: u64,
    disk: SimDisk,
    core: Option<Core<SimDisk>>,
    store: Store,
    /// Bumped at each crash: events of an older life are ignored.
    epoch: u32,
    flushing: Option<Unflushed>,
    deferred: VecDeque<Ev>,
    /// This member's clock offset from the simulated time, µs (a clock jump
    /// changes it).
    skew_us: i64,
    /// Tick period, µs: clocks drift apart.
    tick_us: u64,
    slow_disk: bool,
    /// The last applied index whose hash was recorded.
    hashed_at: u64,
    leader_view: (u64, u64, bool),
    /// The leader loops, while this member leads.
    leader: Option<LeaderLoop>,
    /// Agents' last heartbeats as this member heard them (its dispatcher's
    /// memory: lost with it).
    heartbeats: BTreeMap<String, Instant>,
    /// Its dispatcher's status batcher and assignment book (lost with it).
    dispatch: Dispatch,
    /// Each deployment's live (units, replicas) after the last entry
    /// checked, where each replica was bound then, and that entry's index
    /// (0: not looked at since the start or a snapshot install).
    live_seen: BTreeMap<ObjectRef, (u32, u32)>,
    placed_seen: Option<BTreeMap<ObjectRef, String>>,
    surge_checked_at: u64,
}

struct InflightWrite {
    op: u64,
    m: usize,
    rx: oneshot::Receiver<Result<Result<WriteResult, WriteError>, NodeError>>,
}

struct InflightRead {
    read: u64,
    m: usize,
    /// How many writes were acknowledged when the read started: the read
    /// must see all of them.
    acked_before: usize,
    rx: oneshot::Receiver<Result<(), NodeError>>,
}

pub struct World {
    opts: Options,
    profile: Profile,
    rng: StdRng,
    now_us: u64,
    base: Instant,
    seq: u64,
    step: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    outbox: Outbox,
    members: Vec<SimMember>,
    /// Directed links that drop everything: (from id, to id).
    cut: BTreeSet<(u64, u64)>,
    agents: Vec<SimAgent>,
    /// Agents cut off from every controller.
    agent_cut: BTreeSet<String>,
    chaos: bool,
    // Clients.
    next_op: u64,
    proposed: BTreeMap<u64, String>,
    /// The ops that were `Apply`s of their own deployment.
    creates: BTreeSet<u64>,
    /// The host port of those that have one.
    host_ports: BTreeMap<u64, u16>,
    /// Deployments some op asked to delete (never applied again).
    deleting: BTreeSet<String>,
    /// Acknowledged writes: (op, deployment, the generation it returned).
    acked: Vec<(u64, String, u64)>,
    writes: Vec<InflightWrite>,
    reads: Vec<InflightRead>,
    next_read: u64,
    reads_answered: usize,
    // Invariants.
    leaders: BTreeMap<u64, u64>,
    /// A state seen at each applied index (the last 256), by whom, and its
    /// hash once computed.
    states_at: BTreeMap<u64, (Arc<State>, u64, Option<String>)>,
    crashes: u32,
    lost_on_crash: usize,
    counts: BTreeMap<&'static str, u64>,
    // Trace.
    trace_tail: VecDeque<String>,
    trace_full: Vec<String>,
    trace_hasher: Sha256,
}

type Checked<T> = Result<T, String>;

impl World {
    pub fn new(opts: Options) -> World {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let profile = Profile::draw(&mut rng);
        let n = profile.members;
        let voters: Vec<u64> = (1..=n).collect();
        let addresses: BTreeMap<u64, String> =
            voters.iter().map(|v| (*v, format!("sim:{v}"))).collect();
        let initial = drover_controller::store::state::initial(&addresses)
            .encode()
            .unwrap_or_default();
        let members = voters
            .iter()
            .map(|id| SimMember {
                id: *id,
                disk: SimDisk::bootstrap(&voters, initial.clone()),
                core: None,
                store: Store::default(),
                epoch: 0,
                flushing: None,
                deferred: VecDeque::new(),
                skew_us: 0,
                tick_us: 50_000 + rng.gen_range(0..5_000),
                slow_disk: false,
                hashed_at: 0,
                leader_view: (0, 0, false),
                leader: None,
                heartbeats: BTreeMap::new(),
                dispatch: Dispatch::default(),
                live_seen: BTreeMap::new(),
                placed_seen: None,
                surge_checked_at: 0,
            })
            .collect();
        // A third of the seeds run their agents with --stop-after-disconnect,
        // at most 2.5 s (the dispatcher refuses more with a 3 s node timeout).
        let limit = rng
            .gen_bool(1.0 / 3.0)
            .then(|| Duration::from_millis(rng.gen_range(1_000..=2_500)));
        let agents = (1..=profile.agents)
            .map(|i| SimAgent::new(format!("n{i}"), limit, 0))
            .collect();
        World {
            opts,
            profile,
            rng,
            now_us: 0,
            base: Instant::now(),
            seq: 0,
            step: 0,
            queue: BTreeMap::new(),
            outbox: Outbox::default(),
            members,
            cut: BTreeSet::new(),
            agents,
            agent_cut: BTreeSet::new(),
            chaos: true,
            next_op: 1,
            proposed: BTreeMap::new(),
            creates: BTreeSet::new(),
            host_ports: BTreeMap::new(),
            deleting: BTreeSet::new(),
            acked: Vec::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            next_read: 1,
            reads_answered: 0,
            leaders: BTreeMap::new(),
            states_at: BTreeMap::new(),
            crashes: 0,
            lost_on_crash: 0,
            counts: BTreeMap::new(),
            trace_tail: VecDeque::new(),
            trace_full: Vec::new(),
            trace_hasher: Sha256::new(),
        }
    }

    fn node_config(id: u64) -> NodeConfig {
        NodeConfig {
            snapshot_interval: 60,
            trailing_entries: 5,
            write_timeout: Duration::from_secs(3),
            ..NodeConfig::new(id)
        }
    }

    fn trace(&mut self, line: String) {
        let line = format!("{} {line}", fmt_time(self.now_us));
        self.trace_hasher.update(line.as_bytes());
        self.trace_hasher.update(b"\n");
        if self.opts.full_trace {
            self.trace_full.push(line.clone());
        }
        if self.trace_tail.len() == TRACE_TAIL {
            self.trace_tail.pop_front();
        }
        self.trace_tail.push_back(line);
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn at(&mut self, delay_us: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now_us + delay_us, self.seq), ev);
    }

    fn member_now(&self, m: usize) -> Instant {
        let hour: i64 = 3_600_000_000;
        let us = (hour + self.now_us as i64 + self.members[m].skew_us).max(0) as u64;
        self.base + Duration::from_micros(us)
    }

    fn fail(&self, what: String) -> Failure {
        Failure {
            seed: self.opts.seed,
            step: self.step,
            time_us: self.now_us,
            what,
            trace_tail: if self.opts.full_trace {
                self.trace_full.clone()
            } else {
                self.trace_tail.iter().cloned().collect()
            },
        }
    }

    /// Run to the end: chaos, then settling, then the final checks.
    pub fn run(mut self) -> Result<Report, Failure> {
        let p = self.profile.clone();
        self.trace(format!("seed {} profile {:?}", self.opts.seed, p));
        for m in 0..self.members.len() {
            if let Err(e) = self.start(m) {
                return Err(self.fail(e));
            }
        }
        let chaos_us = self.opts.chaos.as_micros() as u64;
        let end_us = chaos_us + self.opts.settle.as_micros() as u64;
        self.at(p.write_every_us, Ev::Write);
        self.at(p.read_every_us, Ev::Read);
        self.at(p.fault_every_us, Ev::Fault);
        self.at(200_000, Ev::Check);
        self.at(50_000, Ev::LeaderWork);
        for a in 0..self.agents.len() {
            let first = self.rng.gen_range(10_000..300_000);
            self.at(first, Ev::AgentBeat { a });
        }
        self.at(chaos_us, Ev::EndChaos);
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > end_us {
                break;
            }
            self.now_us = t;
            self.step += 1;
            // A panic in production code (raft-rs asserts its invariants)
            // is a failure of this seed like any other.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.dispatch(ev).and_then(|()| self.after_event())
            }));
            let result = stepped.unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(no message)".into());
                Err(format!("panicked: {why}"))
            });
            if let Err(what) = result {
                return Err(self.fail(what));
            }
        }
        self.now_us = end_us;
        if let Err(what) = self.final_checks() {
            return Err(self.fail(what));
        }
        let terms = self.leaders.keys().last().copied().unwrap_or(0);
        let applied = self.members[0].store.applied().0;
        Ok(Report {
            seed: self.opts.seed,
            members: self.members.len(),
            steps: self.step,
            writes_acked: self.acked.len(),
            writes_proposed: self.proposed.len(),
            reads_answered: self.reads_answered,
            crashes: self.crashes,
            lost_writes_on_crash: self.lost_on_crash,
            counts: self.counts,
            terms,
            applied,
            trace_hash: format!("{:x}", self.trace_hasher.finalize()),
            trace: self.trace_full,
        })
    }

    fn start(&mut self, m: usize) -> Checked<()> {
        let id = self.members[m].id;
        let port: Arc<dyn Transport> = Arc::new(Port {
            from: id,
            outbox: self.outbox.clone(),
        });
        let store = Store::default();
        let rng = Box::new(StdRng::seed_from_u64(self.rng.next_u64()));
        let core = Core::new(
            Self::node_config(id),
            self.members[m].disk.clone(),
            store.clone(),
            port,
            rng,
        )
        .map_err(|e| format!("controller {id} cannot start: {e:#}"))?;
        let member = &mut self.members[m];
        member.core = Some(core);
        member.store = store;
        member.hashed_at = 0;
        member.leader_view = (0, 0, false);
        member.leader = None;
        member.heartbeats.clear();
        member.dispatch = Dispatch::default();
        member.live_seen.clear();
        member.surge_checked_at = 0;
        let (epoch, tick) = (member.epoch, member.tick_us);
        let applied = member.store.applied().0;
        self.trace(format!("m{id} start applied={applied}"));
        self.at(tick, Ev::Tick { m, epoch });
        Ok(())
    }

    fn dispatch(&mut self, ev: Ev) -> Checked<()> {
        if let Some(m) = ev.member() {
            if self.members[m].core.is_none() {
                return Ok(()); // down: lost
            }
            if self.members[m].flushing.is_some() {
                self.members[m].deferred.push_back(ev);
                return Ok(());
            }
        }
        match ev {
            Ev::Tick { m, epoch } => {
                if epoch != self.members[m].epoch {
                    return Ok(());
                }
                let now = self.member_now(m);
                if let Some(core) = self.members[m].core.as_mut() {
                    core.tick(now);
                }
                let tick = self.members[m].tick_us;
                self.at(tick, Ev::Tick { m, epoch });
                self.drive(m)?;
            }
            Ev::Deliver { m, msg } => {
                let id = self.members[m].id;
                if self.cut.contains(&(msg.from, id)) {
                    self.trace(format!("lost {}→{} {}", msg.from, id, describe(&msg)));
                    return Ok(());
                }
                self.trace(format!("deliver {}→{} {}", msg.from, id, describe(&msg)));
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    self.count("snapshot delivered");
                    // The state may jump over many entries: the surge
                    // check looks afresh.
                    self.members[m].surge_checked_at = 0;
                }
                // As the peer service does: a relayed write's entries are
                // checked, and go to the core decoded with the message.
                let relayed = if msg.get_msg_type() == MessageType::MsgPropose {
                    match msg.entries.iter().map(check_relayed).collect() {
                        Ok(relayed) => relayed,
                        Err(why) => {
                            self.trace(format!("dropped a relayed write: {why}"));
                            return Ok(());
                        }
                    }
                } else {
                    Vec::new()
                };
                if let Some(core) = self.members[m].core.as_mut() {
                    core.step_inbound(Inbound {
                        messages: vec![msg],
                        relayed,
                    });
                }
                self.drive(m)?;
            }
            Ev::ReportSnapshot { m, to, ok } => {
                if let Some(core) = self.members[m].core.as_mut() {
                    core.report_snapshot(to, ok);
                }
                self.drive(m)?;
            }
            Ev::ReportUnreachable { m, to } => {
                if let Some(core) = self.members[m].core.as_mut() {
                    core.report_unreachable(to);
                }
                self.drive(m)?;
            }
            Ev::FlushDone { m, epoch } => {
                if epoch != self.members[m].epoch {
                    return Ok(());
                }
                self.finish_flush(m)?;
            }
            Ev::SnapshotDone { m, epoch, job } => {
                if epoch != self.members[m].epoch {
                    return Ok(());
                }
                let id = self.members[m].id;
                match job.run() {
                    Ok(index) => {
                        self.count("snapshot saved");
                        self.trace(format!("m{id} snapshot saved at {index}"));
                        if let Some(core) = self.members[m].core.as_mut() {
                            core.snapshot_saved(index);
                        }
                    }
                    Err(e) => {
                        return Err(format!("controller {id} could not save a snapshot: {e:#}"))
                    }
                }
                self.drive(m)?;
            }
            Ev::Propose { m, op } => {
                let write = self.command_for(op, m);
                let (tx, rx) = oneshot::channel();
                let now = self.member_now(m);
                if let Some(core) = self.members[m].core.as_mut() {
                    core.propose(write, tx, now);
                }
                self.writes.push(InflightWrite { op, m, rx });
                self.drive(m)?;
            }
            Ev::ReadAt { m, read } => {
                let (tx, rx) = oneshot::channel();
                let now = self.member_now(m);
                if let Some(core) = self.members[m].core.as_mut() {
                    core.read(tx, now);
                }
                self.reads.push(InflightRead {
                    read,
                    m,
                    acked_before: self.acked.len(),
                    rx,
                });
                self.drive(m)?;
            }
            Ev::Write => {
                let op = self.next_op;
                self.next_op += 1;
                let m = self.pick_member();
                let name = format!("op-{op}");
                let id = self.members[m].id;
                self.trace(format!("client write op {op} ({name}) to m{id}"));
                self.proposed.insert(op, name);
                self.at(0, Ev::Propose { m, op });
                if self.chaos || self.now_us < self.opts.chaos.as_micros() as u64 + 1_000_000 {
                    let every = self.profile.write_every_us;
                    let next = self.rng.gen_range(every / 2..every * 3 / 2 + 1);
                    self.at(next, Ev::Write);
                }
            }
            Ev::Read => {
                let read = self.next_read;
                self.next_read += 1;
                let m = self.rng.gen_range(0..self.members.len());
                let id = self.members[m].id;
                self.trace(format!("client read {read} at m{id}"));
                self.at(0, Ev::ReadAt { m, read });
                let every = self.profile.read_every_us;
                let next = self.rng.gen_range(every / 2..every * 3 / 2 + 1);
                self.at(next, Ev::Read);
            }
            Ev::Fault => {
                if self.chaos {
                    self.fault()?;
                    let every = self.profile.fault_every_us;
                    let next = self.rng.gen_range(every / 4..every * 7 / 4 + 1);
                    self.at(next, Ev::Fault);
                }
            }
            Ev::Restart { m } => {
                if self.members[m].core.is_none() {
                    self.start(m)?;
                }
            }
            Ev::LeaderWork => {
                self.leader_work()?;
                self.dispatch_work()?;
                self.at(50_000, Ev::LeaderWork);
            }
            Ev::AgentBeat { a } => {
                self.agent_beat(a)?;
                let next = self.rng.gen_range(250_000..350_000);
                self.at(next, Ev::AgentBeat { a });
            }
            Ev::AgentRestart { a } => {
                if !self.agents[a].up {
                    self.agents[a].restart(self.now_us);
                    let name = self.agents[a].name.clone();
                    self.trace(format!("agent {name} restarts"));
                }
            }
            Ev::AgentWork { a, life } => {
                if self.agents[a].life == life {
                    self.agent_work(a)?;
                }
            }
            Ev::Check => {
                self.check_hashes()?;
                self.at(2_000_000, Ev::Check);
            }
            Ev::EndChaos => {
                self.chaos = false;
                self.cut.clear();
                self.agent_cut.clear();
                for a in 0..self.agents.len() {
                    if !self.agents[a].up {
                        self.agents[a].restart(self.now_us);
                    }
                }
                for m in 0..self.members.len() {
                    self.members[m].slow_disk = false;
                    if self.members[m].core.is_none() {
                        self.start(m)?;
                    }
                }
                self.trace("faults stop: network healed, every controller and agent up".into());
            }
        }
        Ok(())
    }

    /// Clients mostly find the leader (as droverctl does, by retrying), and
    /// sometimes hit a follower (which relays a command to its leader
    /// through raft, and refuses a membership change with NotLeader).
    fn pick_member(&mut self) -> usize {
        let leader = (0..self.members.len()).rev().max_by_key(|m| {
            let (_, term, is_leader) = self.members[*m].leader_view;
            (is_leader && self.members[*m].core.is_some(), term)
        });
        match leader {
            Some(m) if self.rng.gen_bool(0.85) => m,
            _ => self.rng.gen_range(0..self.members.len()),
        }
    }

    fn fault(&mut self) -> Checked<()> {
        let n = self.members.len();
        let m = self.rng.gen_range(0..n);
        let id = self.members[m].id;
        match self.rng.gen_range(0..100) {
            0..=19 => {
                // Symmetric: isolate one member.
                for o in 1..=n as u64 {
                    if o != id {
                        self.cut.insert((id, o));
                        self.cut.insert((o, id));
                    }
                }
                self.count("isolate");
                self.trace(format!("fault: isolate m{id}"));
            }
            20..=29 => {
                // One-way: m can send to o but not hear from it.
                let o = self.rng.gen_range(1..=n as u64);
                if o != id {
                    self.cut.insert((o, id));
                    self.count("one-way cut");
                    self.trace(format!("fault: one-way cut m{o}→m{id}"));
                }
            }
            30..=39 => {
                // Split the cluster in two at random.
                let mut side = BTreeSet::new();
                for o in 1..=n as u64 {
                    if self.rng.gen_bool(0.5) {
                        side.insert(o);
                    }
                }
                for a in 1..=n as u64 {
                    for b in 1..=n as u64 {
                        if side.contains(&a) != side.contains(&b) {
                            self.cut.insert((a, b));
                        }
                    }
                }
                self.count("partition");
                self.trace(format!("fault: partition {side:?} from the rest"));
            }
            40..=54 => {
                self.cut.clear();
                self.trace("fault: heal the network".into());
            }
            55..=74 => {
                // Half the crashes hit a member in the middle of a flush, if
                // one is: the moment a write is on its way to the platter.
                let flushing: Vec<usize> = (0..n)
                    .filter(|x| self.members[*x].flushing.is_some())
                    .collect();
                let victim = if !flushing.is_empty() && self.rng.gen_bool(0.5) {
                    flushing[self.rng.gen_range(0..flushing.len())]
                } else {
                    m
                };
                self.crash(victim);
            }
            75..=79 => {
                let a = self.rng.gen_range(0..self.agents.len());
                let name = self.agents[a].name.clone();
                if self.agents[a].up {
                    self.agents[a].crash();
                    self.count("agent host crash");
                    self.trace(format!(
                        "fault: agent host {name} crashes with its replicas"
                    ));
                    let after = self.rng.gen_range(500_000..4_000_000);
                    self.at(after, Ev::AgentRestart { a });
                }
            }
            80..=84 => {
                let a = self.rng.gen_range(0..self.agents.len());
                let name = self.agents[a].name.clone();
                if self.agent_cut.remove(&name) {
                    self.trace(format!("fault: agent {name} reachable again"));
                } else {
                    self.count("agent cut off");
                    self.trace(format!("fault: agent {name} cut off from the controllers"));
                    self.agent_cut.insert(name);
                }
            }
            88..=89 => {
                let a = self.rng.gen_range(0..self.agents.len());
                let jump: i64 = self.rng.gen_range(-2_000_000..10_000_000);
                self.agents[a].jump_clock(jump);
                let name = self.agents[a].name.clone();
                self.count("agent clock jump");
                self.trace(format!("fault: clock of agent {name} jumps {jump}µs"));
            }
            85..=87 => {
                let jump: i64 = self.rng.gen_range(-2_000_000..10_000_000);
                self.members[m].skew_us += jump;
                self.count("clock jump");
                self.trace(format!("fault: clock of m{id} jumps {jump}µs"));
            }
            _ => {
                let slow = !self.members[m].slow_disk;
                self.members[m].slow_disk = slow;
                self.count("slow disk");
                self.trace(format!("fault: disk of m{id} slow={slow}"));
            }
        }
        Ok(())
    }

    fn crash(&mut self, m: usize) {
        let id = self.members[m].id;
        if self.members[m].core.is_none() {
            return;
        }
        let pending = self.members[m].disk.unflushed();
        let keep = self.rng.gen_range(0..=pending);
        let lost = self.members[m].disk.crash(keep);
        self.lost_on_crash += lost;
        self.crashes += 1;
        if self.members[m].flushing.is_some() {
            self.count("crash during a flush");
        }
        let member = &mut self.members[m];
        member.core = None;
        member.leader = None;
        member.heartbeats.clear();
        member.flushing = None;
        member.deferred.clear();
        member.epoch += 1;
        let (last, commit) = member.disk.durable_summary();
        self.trace(format!(
            "fault: crash m{id} (flushing or not), {lost} of {pending} unflushed writes lost; \
             durable last={last} commit={commit}"
        ));
        let after = self.rng.gen_range(100_000..3_000_000);
        self.at(after, Ev::Restart { m });
    }

    /// The Ready loop, as `Node::on_ready`: persist; flush (a later event,
    /// after a seeded delay); after_flush.
    fn drive(&mut self, m: usize) -> Checked<()> {
        let id = self.members[m].id;
        let Some(core) = self.members[m].core.as_mut() else {
            return Ok(());
        };
        let unflushed = core
            .persist()
            .map_err(|e| format!("controller {id}: raft storage failed: {e:#}"))?;
        let Some(unflushed) = unflushed else {
            return Ok(());
        };
        if unflushed.must_flush {
            let (lo, hi) = if self.members[m].slow_disk {
                self.profile.slow_disk_us
            } else {
                self.profile.disk_us
            };
            let delay = self.rng.gen_range(lo..=hi);
            let epoch = self.members[m].epoch;
            self.members[m].flushing = Some(unflushed);
            self.at(delay, Ev::FlushDone { m, epoch });
            return Ok(());
        }
        self.after_flush(m, unflushed)
    }

    fn finish_flush(&mut self, m: usize) -> Checked<()> {
        let Some(unflushed) = self.members[m].flushing.take() else {
            return Ok(());
        };
        self.members[m].disk.flush();
        self.after_flush(m, unflushed)?;
        // What waited for the flush runs now, in its order.
        let deferred = std::mem::take(&mut self.members[m].deferred);
        for ev in deferred {
            self.at(0, ev);
        }
        Ok(())
    }

    fn after_flush(&mut self, m: usize, unflushed: Unflushed) -> Checked<()> {
        let id = self.members[m].id;
        let Some(core) = self.members[m].core.as_mut() else {
            return Ok(());
        };
        let job = core
            .after_flush(unflushed)
            .map_err(|e| format!("controller {id}: raft storage failed: {e:#}"))?;
        if let Some(job) = job {
            let epoch = self.members[m].epoch;
            self.trace(format!("m{id} snapshot job at {}", job.index));
            let delay = self.rng.gen_range(100..5_000);
            self.at(delay, Ev::SnapshotDone { m, epoch, job });
        }
        Ok(())
    }

    /// After every event: the network takes what was sent, clients hear
    /// their answers, and the per-step invariants are checked.
    fn after_event(&mut self) -> Checked<()> {
        self.route();
        self.poll_clients()?;
        self.check_leaders()?;
        self.check_surge()
    }

    fn route(&mut self) {
        let sent =
            std::mem::take(&mut *self.outbox.0.lock().unwrap_or_else(PoisonError::into_inner));
        for (from, msg) in sent {
            let to = msg.to;
            let Some(dest) = self.members.iter().position(|x| x.id == to) else {
                continue;
            };
            let Some(src) = self.members.iter().position(|x| x.id == from) else {
                continue;
            };
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let cut = self.cut.contains(&(from, to));
            let lossy = self.chaos && self.rng.gen_bool(self.profile.drop_p);
            if is_snapshot {
                self.count("snapshot sent");
            }
            if cut || lossy {
                self.count(if cut {
                    "dropped by partition"
                } else {
                    "dropped by loss"
                });
                self.trace(format!(
                    "drop {from}→{to} {} ({})",
                    describe(&msg),
                    if cut { "partition" } else { "loss" }
                ));
                // As the gRPC transport: a failed call reports the peer
                // unreachable, and a lost snapshot as failed.
                let later = self.rng.gen_range(1_000..50_000);
                if is_snapshot {
                    self.at(
                        later,
                        Ev::ReportSnapshot {
                            m: src,
                            to,
                            ok: false,
                        },
                    );
                }
                self.at(later, Ev::ReportUnreachable { m: src, to });
                continue;
            }
            let delay = self.rng.gen_range(100..=self.profile.max_delay_us);
            if self.chaos && self.rng.gen_bool(self.profile.dup_p) {
                self.count("duplicated");
                let again = self.rng.gen_range(100..=self.profile.max_delay_us * 2);
                self.at(
                    again,
                    Ev::Deliver {
                        m: dest,
                        msg: msg.clone(),
                    },
                );
            }
            if is_snapshot {
                self.at(
                    delay,
                    Ev::ReportSnapshot {
                        m: src,
                        to,
                        ok: true,
                    },
                );
            }
            self.at(delay, Ev::Deliver { m: dest, msg });
        }
    }

    fn poll_clients(&mut self) -> Checked<()> {
        let mut i = 0;
        while i < self.writes.len() {
            let answer = match self.writes[i].rx.try_recv() {
                Ok(answer) => Some(answer),
                Err(oneshot::error::TryRecvError::Empty) => None,
                // The controller crashed with the write waiting: unknown.
                Err(oneshot::error::TryRecvError::Closed) => {
                    Some(Err(NodeError::Unconfirmed(Duration::ZERO)))
                }
            };
            let Some(answer) = answer else {
                i += 1;
                continue;
            };
            let w = self.writes.swap_remove(i);
            let name = self.proposed.get(&w.op).cloned().unwrap_or_default();
            let id = self.members[w.m].id;
            match answer {
                Ok(result) => {
                    let outcome = match &result {
                        Ok(_) => "applied".to_string(),
                        Err(e) => format!("refused: {e}"),
                    };
                    self.trace(format!("ack op {} ({name}) from m{id}: {outcome}", w.op));
                    // What committed is looked for on every member from now on.
                    if let Ok(result) = &result {
                        self.acknowledge(w.op, result);
                    }
                }
                Err(e) => {
                    self.trace(format!("op {} from m{id} not acknowledged: {e}", w.op));
                }
            }
        }
        let mut i = 0;
        while i < self.reads.len() {
            let answer = match self.reads[i].rx.try_recv() {
                Ok(answer) => Some(answer),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(NodeError::Stopped)),
            };
            let Some(answer) = answer else {
                i += 1;
                continue;
            };
            let r = self.reads.swap_remove(i);
            let id = self.members[r.m].id;
            match answer {
                Ok(()) => {
                    self.reads_answered += 1;
                    if self.members[r.m].leader_view.0 != self.members[r.m].id {
                        self.count("read answered by a follower");
                    }
                    let state = self.members[r.m].store.snapshot();
                    self.trace(format!(
                        "read {} at m{id} answered at applied {}",
                        r.read,
                        state.applied().0
                    ));
                    if let Some(missing) = self.missing_write(&state, &self.acked[..r.acked_before])
                    {
                        return Err(format!(
                            "stale read: read {} at controller {id} (applied {}) does not see \
                             {missing}, acknowledged before the read started",
                            r.read,
                            state.applied().0
                        ));
                    }
                    self.check_only_proposed(r.m)?;
                }
                Err(e) => self.trace(format!("read {} at m{id} failed: {e}", r.read)),
            }
        }
        Ok(())
    }

    /// Nothing that was never proposed is in a member's state.
    fn check_only_proposed(&self, m: usize) -> Checked<()> {
        let state = self.members[m].store.snapshot();
        for d in state.deployments(None) {
            let name = d.deployment.metadata.name.as_str();
            let op = name.strip_prefix("op-").and_then(|n| n.parse::<u64>().ok());
            if !op.is_some_and(|op| self.creates.contains(&op)) {
                return Err(format!(
                    "controller {} holds deployment {name}, which no client proposed",
                    self.members[m].id
                ));
            }
        }
        Ok(())
    }

    /// At most one leader per term, and leadership changes traced.
    fn check_leaders(&mut self) -> Checked<()> {
        for m in 0..self.members.len() {
            let Some(core) = self.members[m].core.as_ref() else {
                continue;
            };
            let l = core.leadership();
            let view = (l.leader_id, l.term, l.is_leader);
            if view == self.members[m].leader_view {
                continue;
            }
            self.members[m].leader_view = view;
            let id = self.members[m].id;
            self.trace(format!(
                "m{id} leadership: leader={} term={} self={}",
                l.leader_id, l.term, l.is_leader
            ));
            if l.is_leader {
                let first = *self.leaders.entry(l.term).or_insert(id);
                if first != id {
                    return Err(format!(
                        "two leaders in term {}: controllers {first} and {id}",
                        l.term
                    ));
                }
            }
        }
        Ok(())
    }

    /// The same state hash at the same applied index on every member. The
    /// first member seen at an index leaves its state (a cheap persistent
    /// copy); the hash is computed only when another member is seen at the
    /// same index, since encoding a whole state is the costly part.
    fn check_hashes(&mut self) -> Checked<()> {
        for m in 0..self.members.len() {
            if self.members[m].core.is_none() {
                continue;
            }
            let state = self.members[m].store.snapshot();
            let applied = state.applied().0;
            if applied == self.members[m].hashed_at {
                continue;
            }
            self.members[m].hashed_at = applied;
            let id = self.members[m].id;
            let Some(first) = self.states_at.get_mut(&applied) else {
                self.states_at.insert(applied, (state, id, None));
                if self.states_at.len() > 256 {
                    self.states_at.pop_first();
                }
                continue;
            };
            if first.1 == id {
                continue;
            }
            let theirs = first.2.get_or_insert_with(|| first.0.state_hash()).clone();
            let other = first.1;
            let mine = state.state_hash();
            self.count("state hashes compared");
            if mine != theirs {
                return Err(format!(
                    "diverged: at applied index {applied} controller {id} has state hash \
                     {mine}, controller {other} had {theirs}"
                ));
            }
        }
        Ok(())
    }

    /// Once healed and settled: every member up, at the same applied index
    /// with the same state, holding every acknowledged write and nothing
    /// never proposed.
    fn final_checks(&mut self) -> Checked<()> {
        self.check_hashes()?;
        let mut seen: Option<(u64, String, u64)> = None;
        for m in 0..self.members.len() {
            let id = self.members[m].id;
            if self.members[m].core.is_none() {
                return Err(format!(
                    "controller {id} is not running after the settle time"
                ));
            }
            let state = self.members[m].store.snapshot();
            let applied = state.applied().0;
            let hash = state.state_hash();
            if let Some((a, h, other)) = &seen {
                if *a != applied || *h != hash {
                    return Err(format!(
                        "not converged after settling: controller {other} at applied {a} \
                         (hash {h}), controller {id} at {applied} (hash {hash})"
                    ));
                }
            } else {
                seen = Some((applied, hash, id));
            }
            if let Some(missing) = self.missing_write(&state, &self.acked) {
                return Err(format!(
                    "lost write: {missing} was acknowledged but controller {id} (applied \
                     {applied}) does not hold it"
                ));
            }
            self.check_only_proposed(m)?;
        }
        if !self.members.iter().any(|x| x.leader_view.2) {
            return Err("no leader after settling".into());
        }
        self.check_converged()?;
        let mut summary = String::new();
        let _ = write!(
            summary,
            "end: {} acked of {} proposed, {} reads, {} crashes",
            self.acked.len(),
            self.proposed.len(),
            self.reads_answered,
            self.crashes
        );
        self.trace(summary);
        Ok(())
    }
}

/// A raft message in one short line.
fn describe(m: &Message) -> String {
    let kind = format!("{:?}", m.get_msg_type());
    let kind = kind.strip_prefix("Msg").unwrap_or(&kind).to_string();
    let mut s = format!("{kind} t{}", m.term);
    match m.get_msg_type() {
        MessageType::MsgAppend => {
            let _ = write!(
                s,
                " prev={}/{} n={} commit={}",
                m.index,
                m.log_term,
                m.entries.len(),
                m.commit
            );
        }
        MessageType::MsgAppendResponse => {
            let _ = write!(s, " index={} reject={}", m.index, m.reject);
        }
        MessageType::MsgSnapshot => {
            let meta = m.get_snapshot().get_metadata();
            let _ = write!(s, " at={}/{}", meta.index, meta.term);
        }
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => {
            let _ = write!(s, " last={}/{}", m.index, m.log_term);
        }
        MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse => {
            let _ = write!(s, " reject={}", m.reject);
        }
        MessageType::MsgHeartbeat => {
            let _ = write!(s, " commit={}", m.commit);
        }
        _ => {}
    }
    s
}
