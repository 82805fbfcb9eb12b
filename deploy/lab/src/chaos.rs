//! `droverctl lab chaos --rounds N --seed S`: writes interleaved with faults,
//! and a check of drover's guarantees after every round.
//!
//! ```text
//!  seed ──StdRng──▶ plan: [Round{op, fault, hold}]   (pure: same seed, same plan)
//!                      │
//!  per round:  inject fault ─▶ do op (ack? record it, like a Jepsen client)
//!              ─▶ hold ─▶ heal (resume, start, un-partition) ─▶ check:
//!     1 every acknowledged write is on every controller (stale local reads)
//!     2 never two leaders in one term (every member's status, sampled all along)
//!     3 each deployment has exactly its desired Running replicas within the
//!       bound, and no replica runs on two hosts (the agents' own process lists)
//!     4 the same applied index always has the same state hash
//! ```
//!
//! The checks are pure functions of what was observed ([`History::record`]
//! for 2 and 4, [`check_views`] for 1, [`check_running`] for 3), tested with
//! fabricated histories that break and keep each property; the runner only
//! gathers the observations.
//!
//! A write that failed or timed out is indeterminate (it may still commit):
//! its deployment's expectation becomes unknown until the next acknowledged
//! write to it, or until the check after the heal reads what the cluster
//! decided.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use drover_proto::pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{sys, HostState, Lab};

/// Deployments the runner writes: chaos-0 .. chaos-(N-1).
pub const DEPLOYMENTS: usize = 3;
/// Replica counts it asks for.
pub const MAX_REPLICAS: u32 = 4;

#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: u32,
    pub seed: u64,
    /// How long after the heal a deployment may take to converge.
    pub converge_within: Duration,
}

/// A write the runner sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Apply { name: String, replicas: u32 },
    Scale { name: String, replicas: u32 },
    Delete { name: String },
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Apply { name, replicas } => write!(f, "apply {name} ({replicas} replicas)"),
            Op::Scale { name, replicas } => write!(f, "scale {name} to {replicas}"),
            Op::Delete { name } => write!(f, "delete {name}"),
        }
    }
}

/// A fault; hosts are named where the seed picks them, the leader and a
/// follower are found when the round runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    KillLeader,
    KillFollower,
    RestartController(String),
    PartitionController(String),
    PartitionAgent(String),
    KillAgent(String),
    PauseAgent(String),
    CrashContainers(String),
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::RestartController(_) => "restart-controller",
            Fault::PartitionController(_) => "partition-controller",
            Fault::PartitionAgent(_) => "partition-agent",
            Fault::KillAgent(_) => "kill-agent-host",
            Fault::PauseAgent(_) => "pause-agent",
            Fault::CrashContainers(_) => "crash-containers",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub op: Op,
    pub fault: Fault,
    /// How long the fault lasts before the heal.
    pub hold: Duration,
}

/// The schedule for a seed: a pure function of its inputs.
pub fn plan(seed: u64, rounds: u32, controllers: &[String], agents: &[String]) -> Vec<Round> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut exists = [false; DEPLOYMENTS];
    let mut out = Vec::new();
    for _ in 0..rounds {
        let k = rng.gen_range(0..DEPLOYMENTS);
        let name = format!("chaos-{k}");
        let op = if !exists[k] {
            exists[k] = true;
            Op::Apply {
                name,
                replicas: rng.gen_range(1..=MAX_REPLICAS),
            }
        } else {
            match rng.gen_range(0..10) {
                0..=3 => Op::Scale {
                    name,
                    replicas: rng.gen_range(0..=MAX_REPLICAS),
                },
                4..=6 => Op::Apply {
                    name,
                    replicas: rng.gen_range(1..=MAX_REPLICAS),
                },
                _ => {
                    exists[k] = false;
                    Op::Delete { name }
                }
            }
        };
        let pick = |rng: &mut StdRng, from: &[String]| from[rng.gen_range(0..from.len())].clone();
        let mut kinds = vec![0, 1, 2, 3];
        if !agents.is_empty() {
            kinds.extend([4, 5, 6, 7]);
        }
        let fault = match kinds[rng.gen_range(0..kinds.len())] {
            0 => Fault::KillLeader,
            1 => Fault::KillFollower,
            2 => Fault::RestartController(pick(&mut rng, controllers)),
            3 => Fault::PartitionController(pick(&mut rng, controllers)),
            4 => Fault::PartitionAgent(pick(&mut rng, agents)),
            5 => Fault::KillAgent(pick(&mut rng, agents)),
            6 => Fault::PauseAgent(pick(&mut rng, agents)),
            _ => Fault::CrashContainers(pick(&mut rng, agents)),
        };
        let hold = Duration::from_millis(rng.gen_range(500..=4_000));
        out.push(Round { op, fault, hold });
    }
    out
}

/// A seed from the clock, for runs without `--seed` (printed, to replay).
pub fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000)
        .unwrap_or(1)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub round: u32,
    pub property: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub rounds_done: u32,
    pub faults: BTreeMap<&'static str, u32>,
    pub ops: BTreeMap<&'static str, u32>,
    pub acknowledged: u32,
    pub indeterminate: u32,
    pub violations: Vec<Violation>,
    pub interrupted: bool,
    /// The longest time a round took to converge after its heal.
    pub slowest_convergence: Duration,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "seed {}: {} round(s){}; writes: {} acknowledged, {} indeterminate ({})\nfaults: {}\nslowest convergence after a heal: {:.1}s\n",
            self.seed,
            self.rounds_done,
            if self.interrupted { " (interrupted)" } else { "" },
            self.acknowledged,
            self.indeterminate,
            join_counts(&self.ops),
            join_counts(&self.faults),
            self.slowest_convergence.as_secs_f64()
        );
        if self.violations.is_empty() {
            s.push_str("no violations\n");
        }
        for v in &self.violations {
            s.push_str(&format!(
                "VIOLATION seed {} round {}: {}: {}\n",
                self.seed, v.round, v.property, v.detail
            ));
        }
        s
    }
}

fn join_counts(m: &BTreeMap<&'static str, u32>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the runner knows a deployment should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Present(u32),
    Absent,
    /// A write to it was not acknowledged: either outcome is legal.
    Unknown,
}

/// Observations gathered over the whole run: the history checked for
/// properties 2 and 4.
#[derive(Debug, Default)]
pub struct History {
    /// term → leader ids seen in it.
    leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// applied index → (state hash, member that reported it).
    hashes: BTreeMap<u64, (String, u64)>,
}

impl History {
    /// Record members' statuses; returns the violations they reveal
    /// (property, detail): two leaders in one term, two state hashes at one
    /// applied index.
    pub fn record(&mut self, members: &[pb::MemberStatus]) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for m in members {
            let leader = if m.role == "leader" {
                m.id
            } else {
                m.leader_id
            };
            if leader != 0 {
                let seen = self.leaders.entry(m.term).or_default();
                seen.insert(leader);
                if seen.len() > 1 {
                    let ids: Vec<String> = seen.iter().map(u64::to_string).collect();
                    out.push((
                        "two leaders in one term",
                        format!("term {} has leaders {}", m.term, ids.join(", ")),
                    ));
                }
            }
            if m.applied_index > 0 && !m.state_hash.is_empty() {
                match self.hashes.get(&m.applied_index) {
                    None => {
                        self.hashes
                            .insert(m.applied_index, (m.state_hash.clone(), m.id));
                    }
                    Some((hash, id)) if *hash != m.state_hash => out.push((
                        "state hashes differ at one index",
                        format!(
                            "applied index {}: member {} has state hash {}, member {} has {}",
                            m.applied_index, id, hash, m.id, m.state_hash
                        ),
                    )),
                    Some(_) => {}
                }
            }
        }
        out
    }
}

/// One controller's own (stale-read) view: deployment → desired replicas.
pub type View = BTreeMap<String, u32>;

/// replica → (its deployment, hosts where a live process runs it).
pub type Running = BTreeMap<String, (String, BTreeSet<String>)>;

/// Property 1 over every controller's view: each acknowledged write is
/// there. An indeterminate write (`Unknown`) is settled to what the
/// controllers agree on, or Err while they disagree. Err(why) while not
/// settled; an "acknowledged write missing: ..." reason is a violation once
/// the bound passes.
pub fn check_views(
    expect: &mut BTreeMap<String, Expect>,
    views: &[(String, View)],
) -> Result<(), String> {
    let first = views.first().map(|(_, v)| v.clone()).unwrap_or_default();
    let unknown: Vec<String> = expect
        .iter()
        .filter(|(_, e)| **e == Expect::Unknown)
        .map(|(n, _)| n.clone())
        .collect();
    for name in unknown {
        if views.iter().all(|(_, v)| v.get(&name) == first.get(&name)) {
            let e = match first.get(&name) {
                Some(r) => Expect::Present(*r),
                None => Expect::Absent,
            };
            expect.insert(name, e);
        } else {
            return Err(format!(
                "controllers disagree on {name} (still replicating)"
            ));
        }
    }
    for (server, view) in views {
        for (name, e) in expect.iter() {
            match (e, view.get(name)) {
                (Expect::Present(r), Some(got)) if got == r => {}
                (Expect::Present(r), Some(got)) => {
                    return Err(format!(
                        "acknowledged write missing: {name} should have {r} replicas on controller {server}, it has {got}"
                    ))
                }
                (Expect::Present(r), None) => {
                    return Err(format!(
                        "acknowledged write missing: {name} should have {r} replicas on controller {server}, it does not exist there"
                    ))
                }
                (Expect::Absent, None) => {}
                (Expect::Absent, Some(_)) => {
                    return Err(format!(
                        "acknowledged write missing: {name} was deleted but controller {server} still has it"
                    ))
                }
                (Expect::Unknown, _) => {}
            }
        }
    }
    Ok(())
}

/// Property 3 over what really runs: no replica on two hosts, and each
/// chaos deployment runs exactly its expected count. Err(why) while not.
pub fn check_running(expect: &BTreeMap<String, Expect>, running: &Running) -> Result<(), String> {
    let mut per_deployment: BTreeMap<String, u32> = BTreeMap::new();
    for (replica, (deployment, hosts)) in running {
        if hosts.len() > 1 {
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            return Err(format!(
                "replica {replica} runs on {} hosts: {}",
                hosts.len(),
                hosts.join(", ")
            ));
        }
        if deployment.starts_with("chaos-") {
            *per_deployment.entry(deployment.clone()).or_default() += 1;
        }
    }
    for (name, e) in expect {
        let want = match e {
            Expect::Present(r) => *r,
            _ => 0,
        };
        let got = per_deployment.get(name).copied().unwrap_or(0);
        if got != want {
            let which: Vec<String> = running
                .iter()
                .filter(|(_, (d, _))| d == name)
                .map(|(r, (_, hosts))| {
                    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                    format!("{r} on {}", hosts.join(","))
                })
                .collect();
            return Err(format!(
                "{name}: {got} replicas run, {want} desired ({})",
                which.join(", ")
            ));
        }
    }
    for (name, got) in &per_deployment {
        if !expect.contains_key(name) {
            return Err(format!(
                "{name}: {got} replicas run of a deployment never written"
            ));
        }
    }
    Ok(())
}

struct Runner<'a> {
    lab: Lab,
    opts: Options,
    report: Report,
    expect: BTreeMap<String, Expect>,
    history: History,
    log: &'a mut dyn FnMut(&str),
    round: u32,
}

/// Run the schedule for `opts.seed` against the lab. Ctrl-C stops it after
/// healing; the report says how many rounds completed.
pub async fn run(lab: Lab, opts: Options, log: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let controllers: Vec<String> = lab.controllers().map(|h| h.name.clone()).collect();
    let agents: Vec<String> = lab.agents().map(|h| h.name.clone()).collect();
    let schedule = plan(opts.seed, opts.rounds, &controllers, &agents);
    let mut runner = Runner {
        lab,
        report: Report {
            seed: opts.seed,
            ..Report::default()
        },
        opts,
        expect: BTreeMap::new(),
        history: History::default(),
        log,
        round: 0,
    };
    (runner.log)(&format!(
        "chaos: seed {}, {} rounds, {} controllers, {} agents ({} runtime)",
        runner.opts.seed,
        runner.opts.rounds,
        controllers.len(),
        agents.len(),
        runner.lab.runtime
    ));
    // Start from a clean slate: no partition, every host running, no chaos-*
    // deployment left from an earlier run.
    runner.heal_all().await?;
    for k in 0..DEPLOYMENTS {
        let name = format!("chaos-{k}");
        if !runner.write(&Op::Delete { name: name.clone() }).await {
            anyhow::bail!(
                "cannot delete {name} before the run: is the lab up? (droverctl lab status)"
            );
        }
    }
    runner.report = Report {
        seed: runner.opts.seed,
        ..Report::default()
    };
    runner.check().await?;
    if let Some(v) = runner.report.violations.first() {
        anyhow::bail!("the lab did not settle before the run: {}", v.detail);
    }
    for (i, round) in schedule.into_iter().enumerate() {
        runner.round = i as u32 + 1;
        let outcome = tokio::select! {
            r = runner.play(&round) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        };
        match outcome {
            Some(Ok(())) => runner.report.rounds_done += 1,
            Some(Err(e)) => {
                let _ = runner.heal_all().await;
                return Err(e.context(format!(
                    "chaos round {} of seed {}",
                    runner.round, runner.opts.seed
                )));
            }
            None => {
                (runner.log)(&format!(
                    "interrupted during round {}: healing the lab (seed {}, {} round(s) completed)",
                    runner.round, runner.opts.seed, runner.report.rounds_done
                ));
                runner.heal_all().await?;
                runner.report.interrupted = true;
                break;
            }
        }
    }
    Ok(runner.report)
}

impl Runner<'_> {
    fn violation(&mut self, property: &'static str, detail: String) {
        (self.log)(&format!(
            "VIOLATION seed {} round {}: {property}: {detail}",
            self.opts.seed, self.round
        ));
        let v = Violation {
            round: self.round,
            property,
            detail,
        };
        if !self.report.violations.contains(&v) {
            self.report.violations.push(v);
        }
    }

    async fn play(&mut self, round: &Round) -> anyhow::Result<()> {
        let target = self.inject(&round.fault).await?;
        *self.report.faults.entry(round.fault.kind()).or_default() += 1;
        let acked = self.write(&round.op).await;
        (self.log)(&format!(
            "round {}: {} {} + {} ({}) for {:.1}s",
            self.round,
            round.fault.kind(),
            target,
            round.op,
            if acked {
                "acknowledged"
            } else {
                "indeterminate"
            },
            round.hold.as_secs_f64()
        ));
        // Sample leaders while the fault holds.
        let until = Instant::now() + round.hold;
        while Instant::now() < until {
            self.sample().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.heal_all().await?;
        self.check().await
    }

    /// Inject a fault; returns the host it hit.
    async fn inject(&mut self, fault: &Fault) -> anyhow::Result<String> {
        Ok(match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let leader = self.leader().await;
                let controllers: Vec<String> =
                    self.lab.controllers().map(|h| h.name.clone()).collect();
                let host = match (fault, leader) {
                    (Fault::KillLeader, Some(l)) => format!("c{l}"),
                    (_, Some(l)) => controllers
                        .iter()
                        .find(|c| **c != format!("c{l}"))
                        .cloned()
                        .unwrap_or_else(|| controllers[0].clone()),
                    // No leader now: any controller is "the leader's" stand-in.
                    (_, None) => controllers[0].clone(),
                };
                self.lab.kill(&host)?;
                host
            }
            Fault::RestartController(h) => {
                self.lab.stop(h)?;
                self.lab.start(h)?;
                h.clone()
            }
            Fault::PartitionController(h) | Fault::PartitionAgent(h) => {
                self.lab.partition(h, &[])?;
                h.clone()
            }
            Fault::KillAgent(h) => {
                self.lab.kill(h)?;
                h.clone()
            }
            Fault::PauseAgent(h) => {
                self.lab.pause(h, true)?;
                h.clone()
            }
            Fault::CrashContainers(h) => {
                let host = self.lab.host(h)?.clone();
                if let Some(engine) = &host.engine {
                    let ids = engine
                        .docker(&["ps", "-q", "--filter", &format!("label=drover.node={h}")])
                        .unwrap_or_default();
                    let ids: Vec<&str> = ids.split_whitespace().collect();
                    if !ids.is_empty() {
                        let mut args = vec!["kill"];
                        args.extend(ids);
                        let _ = engine.docker(&args);
                    }
                } else if self.lab.runtime == "docker" {
                    let ids = sys::docker_containers(h);
                    if !ids.is_empty() {
                        let mut args = vec!["kill"];
                        args.extend(ids.iter().map(String::as_str));
                        let _ = sys::run("docker", &args);
                    }
                } else {
                    let replicas: Vec<u32> = sys::netns_pids(&host.ns)
                        .into_iter()
                        .filter(|p| Some(*p) != host.pid)
                        .collect();
                    sys::signal(sys::Signal::SIGKILL, &replicas);
                }
                h.clone()
            }
        })
    }

    /// Resume, start and un-partition every host.
    async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.lab.heal()?;
        let names: Vec<String> = self.lab.hosts.iter().map(|h| h.name.clone()).collect();
        for name in names {
            let host = self.lab.host(&name)?.clone();
            match self.lab.state(&host) {
                HostState::Running => {}
                HostState::Paused => self.lab.pause(&name, false)?,
                HostState::Stopped => {
                    self.lab.start(&name)?;
                }
            }
        }
        Ok(())
    }

    /// The workload: a shell that ends on SIGTERM (a `sleep` as a
    /// container's PID 1 ignores it, so every stop would wait out the 30 s
    /// grace period and a scale-down would look like slow convergence).
    fn manifest(name: &str, replicas: u32) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: main\n        image: drover/busybox:1\n        command: [\"sh\", \"-c\", \"trap \x27kill $! 2>/dev/null; exit 0\x27 TERM; sleep 100000 & wait\"]\n        resources:\n          requests:\n            cpu: 10m\n            memory: 4Mi\n"
        )
    }

    /// Send one write through every controller in turn; true when acknowledged.
    async fn write(&mut self, op: &Op) -> bool {
        let Ok(mut client) = self.lab.client(self.lab.servers(), Duration::from_secs(10)) else {
            return false;
        };
        let (kind, name, outcome) = match op {
            Op::Apply { name, replicas } => {
                let content = Self::manifest(name, *replicas);
                let r = client
                    .call(|mut c| {
                        let req = pb::ApplyRequest {
                            files: vec![pb::ManifestFile {
                                name: format!("{name}.yaml"),
                                content: content.clone(),
                            }],
                            ..Default::default()
                        };
                        async move { c.apply(req).await }
                    })
                    .await;
                ("apply", name, r.map(|_| Expect::Present(*replicas)))
            }
            Op::Scale { name, replicas } => {
                let r = client
                    .call(|mut c| {
                        let req = pb::ScaleRequest {
                            namespace: "default".into(),
                            name: name.clone(),
                            replicas: *replicas,
                        };
                        async move { c.scale(req).await }
                    })
                    .await;
                ("scale", name, r.map(|_| Expect::Present(*replicas)))
            }
            Op::Delete { name } => {
                let r = client
                    .call(|mut c| {
                        let req = pb::DeleteDeploymentsRequest {
                            deployments: vec![pb::DeploymentRef {
                                namespace: "default".into(),
                                name: name.clone(),
                            }],
                            ignore_not_found: true,
                            ..Default::default()
                        };
                        async move { c.delete_deployments(req).await }
                    })
                    .await;
                ("delete", name, r.map(|_| Expect::Absent))
            }
        };
        *self.report.ops.entry(kind).or_default() += 1;
        match outcome {
            Ok(e) => {
                self.report.acknowledged += 1;
                self.expect.insert(name.clone(), e);
                true
            }
            Err(e) => {
                // A scale of a deployment the cluster says does not exist is a
                // definite answer, not an indeterminate one.
                if e.to_string().contains("not found") {
                    self.report.acknowledged += 1;
                    return true;
                }
                self.report.indeterminate += 1;
                self.expect.insert(name.clone(), Expect::Unknown);
                false
            }
        }
    }

    /// Every controller's view of every member, one call each.
    async fn statuses(&mut self) -> Vec<pb::MemberStatus> {
        let mut out = Vec::new();
        for server in self.lab.servers() {
            let Ok(mut client) = self.lab.client(vec![server], Duration::from_secs(2)) else {
                continue;
            };
            if let Ok(s) = client
                .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
                .await
            {
                out.extend(s.members.into_iter().filter(|m| m.reachable));
            }
        }
        out
    }

    /// Record leaders per term and hashes per applied index; report conflicts.
    async fn sample(&mut self) -> Vec<pb::MemberStatus> {
        let members = self.statuses().await;
        for (property, detail) in self.history.record(&members) {
            self.violation(property, detail);
        }
        members
    }

    async fn leader(&mut self) -> Option<u64> {
        self.sample()
            .await
            .iter()
            .find(|m| m.role == "leader")
            .map(|m| m.id)
    }

    /// After the heal: properties 1, 3 (and 2, 4 through the samples).
    async fn check(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let deadline = started + self.opts.converge_within;
        let mut last;
        loop {
            self.sample().await;
            match self.converged().await {
                Ok(()) => break,
                Err(why) => last = why,
            }
            if Instant::now() >= deadline {
                let property = if last.starts_with("acknowledged") {
                    "acknowledged write missing"
                } else {
                    "no convergence"
                };
                let detail = format!(
                    "not settled {}s after the heal: {last}",
                    self.opts.converge_within.as_secs()
                );
                self.violation(property, detail);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let took = started.elapsed();
        self.report.slowest_convergence = self.report.slowest_convergence.max(took);
        (self.log)(&format!(
            "round {}: converged {:.1}s after the heal",
            self.round,
            took.as_secs_f64()
        ));
        Ok(())
    }

    /// Err(why) while the cluster is not in the expected state.
    async fn converged(&mut self) -> Result<(), String> {
        // Property 1: every controller's own state (stale local reads).
        let mut views: Vec<(String, View)> = Vec::new();
        for server in self.lab.servers() {
            let mut client = self
                .lab
                .client(vec![server.clone()], Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            let resp = client
                .call(|mut c| async move {
                    c.list_deployments(pb::ListDeploymentsRequest {
                        namespace: "default".into(),
                        read: Some(pb::ReadOptions { stale: true }),
                        ..Default::default()
                    })
                    .await
                })
                .await
                .map_err(|e| format!("controller {server} does not answer: {e}"))?;
            let mut view = BTreeMap::new();
            for d in resp.deployments {
                if d.name.starts_with("chaos-") {
                    view.insert(d.name.clone(), spec_replicas(&d.spec_json));
                }
            }
            views.push((server, view));
        }
        check_views(&mut self.expect, &views)?;
        // Property 3: what really runs, from the agents' own process tables.
        let running = self.running_replicas().map_err(|e| format!("{e:#}"))?;
        check_running(&self.expect, &running)
    }

    /// replica → (its deployment, hosts where a live process runs it), from
    /// each agent's `process/state.json` (process runtime) or the running
    /// containers' labels (docker).
    fn running_replicas(&self) -> anyhow::Result<Running> {
        let mut out = Running::new();
        for h in self.lab.agents() {
            if self.lab.runtime == "docker" {
                let args = [
                    "ps",
                    "--filter",
                    &format!("label=drover.node={}", h.name),
                    "--format",
                    "{{.Label \"drover.replica\"}} {{.Label \"drover.deployment\"}}",
                ];
                let text = match &h.engine {
                    // A killed host's engine is down: nothing runs there.
                    Some(e) if !e.running() => String::new(),
                    Some(e) => e.docker(&args)?,
                    None => sys::run("docker", &args)?,
                };
                for line in text.lines() {
                    if let Some((replica, deployment)) = line.split_once(' ') {
                        out.entry(replica.to_string())
                            .or_insert_with(|| (deployment.to_string(), BTreeSet::new()))
                            .1
                            .insert(h.name.clone());
                    }
                }
                continue;
            }
            let path = self.lab.dir.join(&h.name).join("process/state.json");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let state: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            for c in state["containers"].as_array().into_iter().flatten() {
                let (Some(replica), Some(deployment), Some(pid)) = (
                    c["replica"].as_str(),
                    c["deployment"].as_str(),
                    c["pid"].as_u64(),
                ) else {
                    continue;
                };
                if !c["exit"].is_null() {
                    continue;
                }
                if sys::process_state(pid as u32, &h.ns).is_some() {
                    out.entry(replica.to_string())
                        .or_insert_with(|| (deployment.to_string(), BTreeSet::new()))
                        .1
                        .insert(h.name.clone());
                }
            }
        }
        Ok(out)
    }
}

/// `spec.replicas` of a deployment's stored model.
fn spec_replicas(spec_json: &str) -> u32 {
    serde_json::from_str::<serde_json::Value>(spec_json)
        .ok()
        .and_then(|v| v["spec"]["replicas"].as_u64())
        .unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &str, n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("{p}{i}")).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = plan(42, 50, &names("c", 3), &names("n", 3));
        let b = plan(42, 50, &names("c", 3), &names("n", 3));
        assert_eq!(a, b);
        assert_ne!(a, plan(43, 50, &names("c", 3), &names("n", 3)));
    }

    #[test]
    fn a_schedule_uses_every_kind_of_fault() {
        let p = plan(7, 200, &names("c", 3), &names("n", 3));
        let kinds: BTreeSet<&str> = p.iter().map(|r| r.fault.kind()).collect();
        assert_eq!(kinds.len(), 8, "{kinds:?}");
    }

    fn member(id: u64, role: &str, term: u64, leader_id: u64) -> pb::MemberStatus {
        pb::MemberStatus {
            id,
            role: role.into(),
            term,
            leader_id,
            reachable: true,
            ..Default::default()
        }
    }

    fn applied(id: u64, index: u64, hash: &str) -> pb::MemberStatus {
        pb::MemberStatus {
            id,
            role: "follower".into(),
            applied_index: index,
            state_hash: hash.into(),
            ..Default::default()
        }
    }

    fn view(server: &str, deployments: &[(&str, u32)]) -> (String, View) {
        (
            server.into(),
            deployments
                .iter()
                .map(|(n, r)| (n.to_string(), *r))
                .collect(),
        )
    }

    fn expect(pairs: &[(&str, Expect)]) -> BTreeMap<String, Expect> {
        pairs.iter().map(|(n, e)| (n.to_string(), *e)).collect()
    }

    fn running(replicas: &[(&str, &str, &[&str])]) -> Running {
        replicas
            .iter()
            .map(|(r, d, hosts)| {
                (
                    r.to_string(),
                    (d.to_string(), hosts.iter().map(|h| h.to_string()).collect()),
                )
            })
            .collect()
    }

    #[test]
    fn one_leader_per_term_holds_across_samples() {
        let mut h = History::default();
        // Followers that name the leader, and a later term with another one.
        assert!(h
            .record(&[
                member(1, "leader", 3, 0),
                member(2, "follower", 3, 1),
                member(3, "candidate", 4, 0),
            ])
            .is_empty());
        assert!(h.record(&[member(2, "leader", 5, 0)]).is_empty());
        assert!(h.record(&[member(1, "follower", 5, 2)]).is_empty());
    }

    #[test]
    fn two_leaders_in_one_term_are_a_violation_even_in_separate_samples() {
        let mut h = History::default();
        assert!(h.record(&[member(1, "leader", 7, 0)]).is_empty());
        let v = h.record(&[member(3, "follower", 7, 2)]);
        assert_eq!(
            v,
            vec![(
                "two leaders in one term",
                "term 7 has leaders 1, 2".to_string()
            )]
        );
    }

    #[test]
    fn the_same_applied_index_must_have_the_same_state_hash() {
        let mut h = History::default();
        assert!(h
            .record(&[
                applied(1, 10, "aa"),
                applied(2, 10, "aa"),
                applied(3, 11, "bb")
            ])
            .is_empty());
        // Index 0 and an empty hash are not evidence.
        assert!(h
            .record(&[applied(2, 0, "zz"), applied(3, 10, "")])
            .is_empty());
        let v = h.record(&[applied(3, 11, "cc")]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "state hashes differ at one index");
        assert!(
            v[0].1
                .contains("applied index 11: member 3 has state hash bb, member 3 has cc"),
            "{}",
            v[0].1
        );
    }

    #[test]
    fn acknowledged_writes_must_be_on_every_controller() {
        let mut e = expect(&[("chaos-0", Expect::Present(2)), ("chaos-1", Expect::Absent)]);
        let good = [view("c1", &[("chaos-0", 2)]), view("c2", &[("chaos-0", 2)])];
        assert_eq!(check_views(&mut e, &good), Ok(()));

        let stale = [view("c1", &[("chaos-0", 2)]), view("c2", &[("chaos-0", 1)])];
        let why = check_views(&mut e, &stale).unwrap_err();
        assert!(why.starts_with("acknowledged write missing: chaos-0 should have 2 replicas on controller c2, it has 1"), "{why}");

        let lost = [view("c1", &[("chaos-0", 2)]), view("c2", &[])];
        let why = check_views(&mut e, &lost).unwrap_err();
        assert!(why.contains("does not exist there"), "{why}");

        let undeleted = [view("c1", &[("chaos-0", 2), ("chaos-1", 3)])];
        let why = check_views(&mut e, &undeleted).unwrap_err();
        assert!(
            why.starts_with("acknowledged write missing: chaos-1 was deleted"),
            "{why}"
        );
    }

    #[test]
    fn an_indeterminate_write_settles_to_what_every_controller_agrees_on() {
        let mut e = expect(&[("chaos-0", Expect::Unknown), ("chaos-1", Expect::Unknown)]);
        let split = [view("c1", &[("chaos-0", 3)]), view("c2", &[])];
        let why = check_views(&mut e, &split).unwrap_err();
        assert!(why.contains("disagree on chaos-0"), "{why}");
        assert_eq!(e["chaos-0"], Expect::Unknown);

        let agreed = [view("c1", &[("chaos-0", 3)]), view("c2", &[("chaos-0", 3)])];
        assert_eq!(check_views(&mut e, &agreed), Ok(()));
        assert_eq!(e["chaos-0"], Expect::Present(3));
        assert_eq!(e["chaos-1"], Expect::Absent);
    }

    #[test]
    fn converged_means_exactly_the_desired_replicas_each_on_one_host() {
        let e = expect(&[("chaos-0", Expect::Present(2)), ("chaos-1", Expect::Absent)]);
        let ok = running(&[
            ("chaos-0-a", "chaos-0", &["n1"]),
            ("chaos-0-b", "chaos-0", &["n2"]),
            ("web-a", "web", &["n3"]),
        ]);
        assert_eq!(check_running(&e, &ok), Ok(()));

        let short = running(&[("chaos-0-a", "chaos-0", &["n1"])]);
        let why = check_running(&e, &short).unwrap_err();
        assert_eq!(why, "chaos-0: 1 replicas run, 2 desired (chaos-0-a on n1)");

        let leftover = running(&[
            ("chaos-0-a", "chaos-0", &["n1"]),
            ("chaos-0-b", "chaos-0", &["n2"]),
            ("chaos-1-a", "chaos-1", &["n3"]),
        ]);
        let why = check_running(&e, &leftover).unwrap_err();
        assert!(
            why.starts_with("chaos-1: 1 replicas run, 0 desired"),
            "{why}"
        );

        let stray = running(&[
            ("chaos-0-a", "chaos-0", &["n1"]),
            ("chaos-0-b", "chaos-0", &["n2"]),
            ("chaos-2-a", "chaos-2", &["n3"]),
        ]);
        let why = check_running(&e, &stray).unwrap_err();
        assert_eq!(why, "chaos-2: 1 replicas run of a deployment never written");
    }

    #[test]
    fn a_replica_on_two_hosts_is_never_converged() {
        let e = expect(&[("chaos-0", Expect::Present(2))]);
        let twice = running(&[
            ("chaos-0-a", "chaos-0", &["n1", "n3"]),
            ("chaos-0-b", "chaos-0", &["n2"]),
        ]);
        let why = check_running(&e, &twice).unwrap_err();
        assert_eq!(why, "replica chaos-0-a runs on 2 hosts: n1, n3");
    }
}
