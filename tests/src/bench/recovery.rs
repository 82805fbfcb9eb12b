//! Recovery after a host failure: how long from SIGKILL of a whole agent host
//! (the agent and everything it ran) until the cluster noticed (node NotReady)
//! and until every replica is Running again elsewhere.
//!
//! ```text
//!  3 controllers, A agents (process runtime by default), one deployment of R
//!  replicas. Per trial:  pick the node running the most replicas
//!    t0  SIGKILL its agent + its replicas (processes, or `docker kill` of its containers)
//!    ├── poll every 20 ms (linearizable ListNodes / ListReplicas)
//!    │     detect  = first sample with the node NotReady
//!    │     recover = first sample with R replicas Running, none on that node
//!    └── restart the agent, wait until it is Ready and R replicas run
//! ```
//!
//! With `--lab` the cluster is a `droverctl lab` instead of the test
//! harness's loopback one: every agent a host of its own (network
//! namespace), with `--runtime docker` its own Docker engine, and a kill is
//! `lab kill` (agent, engine and containers at once, a power loss); the
//! agent's restart is `lab start` (engine, then agent).
//!
//! Defaults match the cluster's: node timeout 3 s, heartbeat 500 ms. The
//! target is a median recovery ≤ node timeout + 1 s; the anchors are the
//! default failure-to-reschedule times of Kubernetes, Swarm and Nomad.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drover_proto::pb;
use drover_proto::pb::control_client::ControlClient;
use drover_tests::cluster::containers_of;
use drover_tests::Cluster;
use tonic::transport::Channel;

use super::measure::{cores, median, percentile, poll_until, secs, Poll};
use super::{apply_worker, client, list_replicas};

/// How often the clock samples the cluster.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The controllers' default node timeout.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
const DEPLOYMENT: &str = "recovery";

pub struct Config {
    pub agents: usize,
    pub replicas: u32,
    pub kills: usize,
    /// `process` or `docker`.
    pub runtime: String,
    /// For each wait.
    pub timeout: Duration,
    /// Run on a `droverctl lab` (needs root) rather than the harness's cluster.
    pub lab: bool,
}

/// The cluster under test: the harness's, or a lab (removed on drop).
enum Target {
    Harness(Box<Cluster>),
    Lab {
        lab: drover_lab::Lab,
        /// Holds the lab's dir; removed after `lab down`.
        _tmp: tempfile::TempDir,
    },
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Target::Lab { lab, .. } = self {
            if let Err(e) = drover_lab::down(&lab.dir) {
                eprintln!("lab down failed: {e:#}");
            }
        }
    }
}

const AGENT_FLAGS: [&str; 4] = ["--cpu", "16", "--memory", "16Gi"];

impl Target {
    async fn client(&self) -> anyhow::Result<ControlClient<Channel>> {
        match self {
            Target::Harness(c) => c.client(0).await,
            Target::Lab { lab, .. } => {
                drover_lab::cluster::connect(&lab.servers()[0], &lab.security()?).await
            }
        }
    }

    /// SIGKILL agent host `name`; how many processes/containers died.
    fn kill(&mut self, i: usize, name: &str) -> anyhow::Result<usize> {
        match self {
            Target::Harness(c) => Ok(c.kill_agent_host(i)),
            Target::Lab { lab, .. } => lab.kill(name),
        }
    }

    fn restart(&mut self, i: usize, name: &str) -> anyhow::Result<()> {
        match self {
            Target::Harness(c) => c.restart_agent(i, &AGENT_FLAGS),
            Target::Lab { lab, .. } => lab.start(name).map(|_| ()),
        }
    }
}

/// A lab of 3 controllers and `agents` agents `n1`..`nA`.
async fn lab(cfg: &Config) -> anyhow::Result<(Target, Vec<String>)> {
    let tmp = tempfile::tempdir()?;
    let opts = drover_lab::UpOptions {
        dir: tmp.path().join("lab"),
        controllers: 3,
        agents: u32::try_from(cfg.agents)?,
        runtime: cfg.runtime.clone(),
        controller_bin: drover_lab::built_binary("drover-controller")?,
        agent_bin: drover_lab::built_binary("drover-agent")?,
        controller_args: Vec::new(),
        agent_args: AGENT_FLAGS.iter().map(|s| s.to_string()).collect(),
        busybox_path: None,
    };
    let started = Instant::now();
    let lab = drover_lab::up(&opts, &mut |line| eprintln!("  lab: {line}")).await?;
    println!(
        "lab up ({} runtime, 3 controllers, {} agents): {}",
        cfg.runtime,
        cfg.agents,
        secs(started.elapsed())
    );
    let names = lab.agents().map(|h| h.name.clone()).collect();
    Ok((Target::Lab { lab, _tmp: tmp }, names))
}

/// Removes the Docker containers of the bench's nodes when dropped.
struct Sweep(Vec<String>);

impl Drop for Sweep {
    fn drop(&mut self) {
        let ids: Vec<String> = self.0.iter().flat_map(|n| containers_of(n, true)).collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if !["process", "docker"].contains(&cfg.runtime.as_str()) {
        bail!("--runtime must be process or docker, not {:?}", cfg.runtime);
    }
    if cfg.agents < 2 {
        bail!("--agents must be at least 2: replicas need somewhere to go");
    }
    println!(
        "drover recovery benchmark: {} agents ({} runtime{}), {} replicas, {} host kills, \
         node timeout {} (default), {} cores",
        cfg.agents,
        cfg.runtime,
        if cfg.lab {
            if cfg.runtime == "docker" {
                ", a lab: each agent a host with its own Docker engine"
            } else {
                ", a lab: each agent a host"
            }
        } else {
            ""
        },
        cfg.replicas,
        cfg.kills,
        secs(NODE_TIMEOUT),
        cores()
    );
    let mut _sweep = Sweep(Vec::new());
    let (mut c, names) = if cfg.lab {
        lab(&cfg).await?
    } else {
        let names: Vec<String> = (1..=cfg.agents)
            .map(|i| format!("recovery-{}-{i}", std::process::id()))
            .collect();
        if cfg.runtime == "docker" {
            _sweep = Sweep(names.clone());
        }
        let mut c = Cluster::start(3).await?;
        for name in &names {
            c.start_agent(name, &cfg.runtime, &AGENT_FLAGS)?;
        }
        let leader = c.wait_for_leader(cfg.timeout).await?;
        let mut api = client(&c.controllers[leader].address, &c.security).await?;
        apply_worker(&mut api, DEPLOYMENT, cfg.replicas).await?;
        (Target::Harness(Box::new(c)), names)
    };
    if cfg.lab {
        let mut api = c.client().await?;
        apply_worker(&mut api, DEPLOYMENT, cfg.replicas).await?;
    }
    let want = cfg.replicas as usize;
    settled(&c, want, None, cfg.timeout).await?;

    let mut detect = Vec::new();
    let mut recover = Vec::new();
    for trial in 1..=cfg.kills {
        let per_node = settled(&c, want, None, cfg.timeout).await?;
        let (victim, on_victim) = busiest(&names, &per_node);
        let t0 = Instant::now();
        let killed = c.kill(victim, &names[victim])?;
        let (d, r) = time_recovery(&c, t0, &names[victim], want, cfg.timeout)
            .await
            .with_context(|| format!("trial {trial}"))?;
        detect.push(d);
        recover.push(r);
        println!(
            "  trial {trial:2}: killed {} ({on_victim} replicas, {killed} processes/containers): \
             NotReady after {}, all {want} Running after {}",
            names[victim],
            secs(d),
            secs(r)
        );
        c.restart(victim, &names[victim])?;
        settled(&c, want, Some(&names[victim]), cfg.timeout).await?;
    }
    let (mut d, mut r) = (detect.clone(), recover.clone());
    d.sort();
    r.sort();
    println!(
        "host kill → node NotReady: median {}, p99 {} over {} kills",
        secs(median(&detect)),
        secs(percentile(&d, 0.99)),
        d.len()
    );
    let target = NODE_TIMEOUT + Duration::from_secs(1);
    let met = median(&recover) <= target;
    println!(
        "host kill → all {want} replicas Running again: median {}, p99 {} over {} kills \
         (target median ≤ node timeout + 1 s = {}: {})",
        secs(median(&recover)),
        secs(percentile(&r, 0.99)),
        r.len(),
        secs(target),
        if met { "met" } else { "missed" }
    );
    println!(
        "anchors (defaults): Kubernetes ≈ 5 min 45 s (40 s node-monitor grace + 5 min eviction), \
         Swarm ≈ 15 s, Nomad ≥ 20 s"
    );
    Ok(())
}

/// The node index running the most replicas (the first of equals), and how many.
fn busiest(names: &[String], per_node: &BTreeMap<String, usize>) -> (usize, usize) {
    let mut best = (0, 0);
    for (i, name) in names.iter().enumerate() {
        let n = per_node.get(name).copied().unwrap_or(0);
        if n > best.1 {
            best = (i, n);
        }
    }
    best
}

/// Wait until every node is Ready (and `returning` is back) and exactly
/// `want` replicas run; returns replicas per node.
async fn settled(
    c: &Target,
    want: usize,
    returning: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, usize>> {
    poll_until(
        "cluster settled",
        Duration::from_millis(100),
        timeout,
        || async {
            let nodes = nodes(c).await?;
            if let Some(n) = nodes.iter().find(|n| n.condition != "Ready") {
                return Err(format!("node {} is {}", n.name, n.condition));
            }
            if let Some(name) = returning {
                if !nodes.iter().any(|n| n.name == name) {
                    return Err(format!("{name} not registered"));
                }
            }
            running(c, want, None).await
        },
    )
    .await
}

/// (kill → NotReady, kill → all Running elsewhere) from the kill at `t0`,
/// sampled every 20 ms.
async fn time_recovery(
    c: &Target,
    t0: Instant,
    victim: &str,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let mut poll = Poll::new(SAMPLE_EVERY, timeout);
    let mut detected = None;
    let mut last = String::new();
    while poll.next().await {
        if detected.is_none() {
            // A failed sample is simply not a detection; the next one retries.
            let down = nodes(c).await.is_ok_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n.name == victim && n.condition == "NotReady")
            });
            if down {
                detected = Some(t0.elapsed());
            }
        }
        match running(c, want, Some(victim)).await {
            Ok(_) => {
                let done = t0.elapsed();
                return Ok((detected.unwrap_or(done), done));
            }
            Err(e) => last = e,
        }
    }
    bail!("replicas not back within {timeout:?}; last: {last}")
}

async fn nodes(c: &Target) -> Result<Vec<pb::Node>, String> {
    let mut api = c.client().await.map_err(|e| e.to_string())?;
    Ok(api
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner()
        .nodes)
}

/// Replicas per node once exactly `want` are Running, none on `not_on`.
async fn running(
    c: &Target,
    want: usize,
    not_on: Option<&str>,
) -> Result<BTreeMap<String, usize>, String> {
    let mut api = c.client().await.map_err(|e| e.to_string())?;
    let replicas = list_replicas(&mut api, DEPLOYMENT, false).await?;
    let mut per_node = BTreeMap::new();
    for r in &replicas {
        let up = r
            .status
            .as_ref()
            .is_some_and(|s| s.state() == pb::ReplicaState::Running);
        if !up || Some(r.node.as_str()) == not_on {
            return Err(format!("{} is not Running elsewhere yet", r.name));
        }
        *per_node.entry(r.node.clone()).or_default() += 1;
    }
    if replicas.len() != want {
        return Err(format!("{} of {want} replicas", replicas.len()));
    }
    Ok(per_node)
}
