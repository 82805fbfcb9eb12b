//! Replica start overhead on Docker: drover against plain `docker run -d`,
//! same image, same command, same engine, alternating rounds.
//!
//! ```text
//!  round k = 1..=3:
//!    baseline  N × `docker run -d` at once ─▶ every one returned (= started) ─▶ docker rm -f
//!    drover    Apply(N replicas) ─▶ ListReplicas every 50 ms ─▶ N Running
//!              ─▶ delete ─▶ replicas and containers gone
//!  drover side: 3 controllers + 2 agents (--runtime docker) as processes
//! ```
//!
//! Everything this benchmark creates is named or labelled so a leak is
//! obvious and removable: baseline containers are `drover-bench-baseline-*`,
//! drover's carry `drover.node=bench-docker-{1,2}`. Both are swept before the
//! first round and again when the benchmark ends, however it ends.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use drover_proto::pb;
use drover_tests::Cluster;
use tokio::task::JoinSet;

use super::measure::{cores, median, ms, poll_until};
use super::{apply_worker, client, list_replicas, ready_nodes, Progress, IMAGE, WORKER_SCRIPT};

/// Node names of the benchmark's agents (and their containers' `drover.node`).
const AGENTS: [&str; 2] = ["bench-docker-1", "bench-docker-2"];
/// Name prefix of the baseline's containers.
const BASELINE_PREFIX: &str = "drover-bench-baseline-";
/// drover's start time over docker's, as the issue asks.
const TARGET_RATIO: f64 = 1.2;
/// How often the drover side looks at its replicas.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

pub struct Config {
    pub replicas: u32,
    pub rounds: usize,
    /// For one side of one round.
    pub timeout: Duration,
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let version = engine_version().await?;
    ensure_image().await?;
    // Dropped last (after the cluster has killed its agents), so it also
    // sweeps up after an error or a panic.
    let _sweep = Sweep::now();
    println!(
        "drover docker-start benchmark: {} replicas of the worker ({IMAGE}), Docker {version}, \
         {} alternating rounds, {} cores",
        cfg.replicas,
        cfg.rounds,
        cores()
    );
    // The first container start after idle pays for cold caches; neither side should.
    docker(&["run", "--rm", IMAGE, "true"]).await?;

    let mut c = Cluster::start(3).await?;
    for name in AGENTS {
        c.start_agent(name, "docker", &["--cpu", "8", "--memory", "8Gi"])?;
    }
    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    let api = client(&c.controllers[leader].address, &c.security).await?;
    poll_until("both agents Ready", SAMPLE_EVERY, cfg.timeout, || {
        let mut api = api.clone();
        async move {
            match ready_nodes(&mut api, false).await? {
                (ready, _) if ready == AGENTS.len() => Ok(()),
                (ready, all) => Err(format!("{ready} Ready of {all} registered")),
            }
        }
    })
    .await?;

    let mut baseline = Vec::new();
    let mut drover = Vec::new();
    for round in 1..=cfg.rounds {
        let b = run_baseline(round, cfg.replicas).await?;
        println!(
            "  round {round}: {} × docker run -d in parallel: {}",
            cfg.replicas,
            ms(b)
        );
        baseline.push(b);
        let (d, gone) = run_drover(&c, round, cfg.replicas, cfg.timeout).await?;
        println!(
            "  round {round}: drover apply → {} replicas Running: {}  (delete → containers gone: {})",
            cfg.replicas,
            ms(d),
            ms(gone)
        );
        drover.push(d);
    }
    let (b, d) = (median(&baseline), median(&drover));
    let ratio = d.as_secs_f64() / b.as_secs_f64();
    println!(
        "docker run -d × {} in parallel, until every one returned (started): median {} over {} rounds",
        cfg.replicas,
        ms(b),
        cfg.rounds
    );
    println!(
        "drover apply → {} replicas Running on {} agents: median {} over {} rounds",
        cfg.replicas,
        AGENTS.len(),
        ms(d),
        cfg.rounds
    );
    println!(
        "drover/docker start time ratio: {ratio:.2} (target ≤ {TARGET_RATIO}: {})",
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "missed"
        }
    );
    Ok(())
}

/// `replicas` × `docker run -d` at once; the wall time until the last one
/// returned. The containers are removed afterwards (untimed).
async fn run_baseline(round: usize, replicas: u32) -> anyhow::Result<Duration> {
    let names: Vec<String> = (1..=replicas)
        .map(|i| format!("{BASELINE_PREFIX}{}-r{round}-{i}", std::process::id()))
        .collect();
    let t = Instant::now();
    let mut runs = JoinSet::new();
    for name in &names {
        let args = [
            "run",
            "-d",
            "--name",
            name,
            "--label",
            "drover.bench=baseline",
            IMAGE,
            "sh",
            "-c",
            WORKER_SCRIPT,
        ]
        .map(String::from);
        runs.spawn(async move { docker_output(&args).await });
    }
    let mut failed = None;
    while let Some(done) = runs.join_next().await {
        let result = done.map_err(|e| anyhow!("a docker run task failed: {e}"))?;
        if let Err(e) = result {
            failed.get_or_insert(e);
        }
    }
    let took = t.elapsed();
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    let removed = docker(&rm).await;
    if let Some(e) = failed {
        return Err(e.context("docker run -d"));
    }
    removed.context("removing the baseline containers")?;
    Ok(took)
}

/// Apply a `replicas`-replica worker; the time until every replica is
/// Running, then delete it and the time until its containers are gone.
async fn run_drover(
    c: &Cluster,
    round: usize,
    replicas: u32,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let name = format!("bench-worker-r{round}");
    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    let mut api = client(&c.controllers[leader].address, &c.security).await?;
    let want = replicas as usize;

    let t = Instant::now();
    apply_worker(&mut api, &name, replicas).await?;
    poll_until("every replica Running", SAMPLE_EVERY, timeout, || {
        let (mut api, name) = (api.clone(), name.clone());
        async move {
            let p = Progress::of(&list_replicas(&mut api, &name, false).await?);
            if p.total == want && p.running == want {
                Ok(())
            } else {
                Err(p.to_string())
            }
        }
    })
    .await?;
    let started = t.elapsed();

    let t = Instant::now();
    api.delete_deployments(pb::DeleteDeploymentsRequest {
        deployments: vec![pb::DeploymentRef {
            namespace: "default".into(),
            name: name.clone(),
        }],
        ignore_not_found: false,
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow!("deleting deployment {name}: {}", s.message()))?;
    poll_until(
        "replicas and containers gone",
        SAMPLE_EVERY,
        timeout,
        || {
            let (mut api, name) = (api.clone(), name.clone());
            async move {
                let left = list_replicas(&mut api, &name, false).await?.len();
                let containers = agent_containers().await.map_err(|e| format!("{e:#}"))?;
                if left == 0 && containers.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{left} replicas, {} containers left",
                        containers.len()
                    ))
                }
            }
        },
    )
    .await?;
    Ok((started, t.elapsed()))
}

/// Ids of containers made by the benchmark's agents.
async fn agent_containers() -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for node in AGENTS {
        let filter = format!("label=drover.node={node}");
        ids.extend(lines(&docker(&["ps", "-aq", "--filter", &filter]).await?));
    }
    Ok(ids)
}

/// The engine's version, or one sentence saying Docker is not reachable.
async fn engine_version() -> anyhow::Result<String> {
    let out = docker(&["version", "--format", "{{.Server.Version}}"])
        .await
        .map_err(|e| {
            anyhow!("Docker is not reachable ({e:#}); start the Docker engine and retry")
        })?;
    Ok(out.trim().to_string())
}

/// Build the workload image with `deploy/images/build.sh` when it is missing.
async fn ensure_image() -> anyhow::Result<()> {
    if docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .await
        .is_ok()
    {
        return Ok(());
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/images/build.sh");
    eprintln!("{IMAGE} is missing: building it with {script}");
    let status = tokio::process::Command::new(script)
        .status()
        .await
        .with_context(|| format!("running {script}"))?;
    if !status.success() {
        bail!("{script} could not build {IMAGE} ({status}); see its message above");
    }
    Ok(())
}

/// Run the docker CLI; its stdout, or an error with its stderr.
async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    docker_output(&args).await
}

async fn docker_output(args: &[String]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("running the docker command (is it installed?)")?;
    checked(out, args)
}

fn checked(out: Output, args: &[String]) -> anyhow::Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    bail!(
        "docker {} failed: {}",
        args.first().map(String::as_str).unwrap_or(""),
        reason.trim()
    )
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Removes every container this benchmark could have made: on creation
/// (leftovers of an earlier run that died) and on drop (this run, however it
/// ended). Blocking calls, since drop may run while a panic unwinds.
struct Sweep;

impl Sweep {
    fn now() -> Sweep {
        let n = Sweep::remove_all();
        if n > 0 {
            eprintln!("removed {n} containers left over by an earlier benchmark run");
        }
        Sweep
    }

    fn remove_all() -> usize {
        let mut filters = vec![format!("name={BASELINE_PREFIX}")];
        filters.extend(AGENTS.iter().map(|n| format!("label=drover.node={n}")));
        let mut ids = Vec::new();
        for filter in &filters {
            let args = ["ps", "-aq", "--filter", filter.as_str()].map(String::from);
            if let Ok(out) = std::process::Command::new("docker").args(&args).output() {
                if let Ok(text) = checked(out, &args) {
                    ids.extend(lines(&text));
                }
            }
        }
        ids.sort();
        ids.dedup();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
        ids.len()
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let n = Sweep::remove_all();
        if n > 0 {
            eprintln!("removed {n} benchmark containers on the way out");
        }
    }
}
