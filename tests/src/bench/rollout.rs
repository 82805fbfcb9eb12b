//! Rolling update time: drover with the process runtime, drover with Docker,
//! and Docker Swarm's `docker service update --image` of the same size on the
//! same engine, with the same parallelism (maxSurge 25 % = start-first
//! batches of ⌈N/4⌉, maxUnavailable 0).
//!
//! ```text
//!  per side: N replicas of the worker running (untimed)
//!            ─▶ t0: change the image tag (drover: apply; swarm: service update)
//!            ─▶ drover: GetDeployment every 100 ms until every replica is
//!               updated and available and no old one is left
//!               swarm: `docker service update --detach=false` returns (converged)
//!  drover sides: 1 controller + 2 agents as processes (--runtime process | docker)
//! ```
//!
//! Both image tags are the same local image (`drover/busybox:1` and a
//! `drover/busybox:rollout-bench` tag made for the run), so no side pulls.
//! Swarm is turned on for its side only (`docker swarm init`) and off again
//! (`docker swarm leave --force`) however the run ends; an engine already in
//! a swarm is left alone and that side is skipped with the reason. drover's
//! containers carry `drover.node=bench-roll-*`, Swarm's service is
//! `drover-bench-roll`; all are removed at the end.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use drover_proto::pb;
use drover_tests::Cluster;

use super::measure::{cores, secs};
use super::{client, IMAGE, WORKER_SCRIPT};

/// The second tag of the workload image.
const NEXT_IMAGE: &str = "drover/busybox:rollout-bench";
const AGENTS: [&str; 2] = ["bench-roll-1", "bench-roll-2"];
const SERVICE: &str = "drover-bench-roll";
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

pub struct Config {
    pub replicas: u32,
    pub timeout: Duration,
    /// Skip the Docker and Swarm sides (process runtime only).
    pub process_only: bool,
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let n = cfg.replicas;
    let batch = n.div_ceil(4);
    println!(
        "drover rollout benchmark: {n} replicas, maxSurge 25% ({batch}), maxUnavailable 0, {} cores",
        cores()
    );
    let process = drover_side("process", &cfg).await?;
    println!(
        "drover (process runtime): apply → rollout complete: {}",
        secs(process)
    );
    if cfg.process_only {
        return Ok(());
    }
    let _sweep = Sweep::now();
    docker(&["tag", IMAGE, NEXT_IMAGE])
        .await
        .context("tagging the workload image (build it with deploy/images/build.sh)")?;
    let on_docker = drover_side("docker", &cfg).await?;
    println!(
        "drover (Docker): apply → rollout complete: {}",
        secs(on_docker)
    );
    match swarm_side(n, batch).await {
        Ok(swarm) => {
            println!(
                "docker service update --image ({n} tasks, --update-parallelism {batch} --update-order start-first): {}",
                secs(swarm)
            );
            println!(
                "drover (Docker) / Swarm rollout time ratio: {:.2}",
                on_docker.as_secs_f64() / swarm.as_secs_f64()
            );
        }
        Err(e) => println!("Swarm side not measured: {e:#}"),
    }
    Ok(())
}

fn manifest(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: bench-roll
spec:
  replicas: {replicas}
  strategy:
    rollingUpdate: {{maxSurge: 25%, maxUnavailable: 0}}
  selector:
    matchLabels: {{app: bench-roll}}
  template:
    metadata:
      labels: {{app: bench-roll}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: worker
        image: {image}
        command: ["sh", "-c", "{WORKER_SCRIPT}"]
        resources:
          requests: {{cpu: 10m, memory: 8Mi}}
"#
    )
}

/// One drover run: `replicas` on `runtime`, then the image change, timed.
async fn drover_side(runtime: &str, cfg: &Config) -> anyhow::Result<Duration> {
    let mut c = Cluster::start(1).await?;
    for name in AGENTS {
        c.start_agent(name, runtime, &["--cpu", "8", "--memory", "8Gi"])?;
    }
    let mut api = client(&c.controllers[0].address, &c.security).await?;
    apply(&mut api, IMAGE, cfg.replicas).await?;
    eprintln!(
        "{runtime}: waiting for {} replicas of the first image",
        cfg.replicas
    );
    complete(&mut api, 1, cfg.timeout).await?;
    let t = Instant::now();
    apply(&mut api, NEXT_IMAGE, cfg.replicas).await?;
    complete(&mut api, 2, cfg.timeout).await?;
    let took = t.elapsed();
    drop(c);
    Ok(took)
}

async fn apply(
    api: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    image: &str,
    replicas: u32,
) -> anyhow::Result<()> {
    api.apply(pb::ApplyRequest {
        files: vec![pb::ManifestFile {
            name: "bench-roll.yaml".into(),
            content: manifest(image, replicas),
        }],
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow!("applying bench-roll: {}", s.message()))?;
    Ok(())
}

/// Wait until revision `revision` is rolled out completely.
async fn complete(
    api: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    revision: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    super::measure::poll_until("rollout complete", SAMPLE_EVERY, timeout, || {
        let mut api = api.clone();
        async move {
            let d = api
                .get_deployment(pb::GetDeploymentRequest {
                    namespace: "default".into(),
                    name: "bench-roll".into(),
                    read: None,
                })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let s = d.status.unwrap_or_default();
            if s.revision == revision && s.complete {
                Ok(())
            } else {
                Err(format!(
                    "revision {}: {} replicas, {} updated, {} updated available",
                    s.revision, s.replicas, s.updated, s.updated_available
                ))
            }
        }
    })
    .await
}

/// Swarm on this engine for the length of one service update.
async fn swarm_side(replicas: u32, batch: u32) -> anyhow::Result<Duration> {
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).await?;
    if state.trim() != "inactive" {
        bail!(
            "this engine is already in a swarm ({}); the benchmark only uses a swarm it made itself",
            state.trim()
        );
    }
    docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])
        .await
        .context("docker swarm init")?;
    let _leave = LeaveSwarm;
    let replicas = replicas.to_string();
    let batch = batch.to_string();
    eprintln!("swarm: creating {replicas} tasks of the first image");
    docker(&[
        "service",
        "create",
        "--detach=false",
        "--quiet",
        "--no-resolve-image",
        "--name",
        SERVICE,
        "--replicas",
        &replicas,
        "--stop-grace-period",
        "0s",
        "--update-parallelism",
        &batch,
        "--update-order",
        "start-first",
        "--update-delay",
        "0s",
        "--update-monitor",
        "1ms",
        IMAGE,
        "sh",
        "-c",
        WORKER_SCRIPT,
    ])
    .await
    .context("docker service create")?;
    let t = Instant::now();
    docker(&[
        "service",
        "update",
        "--detach=false",
        "--quiet",
        "--no-resolve-image",
        "--image",
        NEXT_IMAGE,
        SERVICE,
    ])
    .await
    .context("docker service update")?;
    Ok(t.elapsed())
}

/// Leaves the swarm this benchmark made (which removes its service and
/// tasks), however the Swarm side ends.
struct LeaveSwarm;

impl Drop for LeaveSwarm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["service", "rm", SERVICE])
            .output();
        match std::process::Command::new("docker")
            .args(["swarm", "leave", "--force"])
            .output()
        {
            Ok(out) if out.status.success() => {}
            _ => eprintln!("could not leave the swarm: run `docker swarm leave --force`"),
        }
    }
}

/// Removes drover's benchmark containers and the extra image tag, at the
/// start (leftovers of a run that died) and at the end.
struct Sweep;

impl Sweep {
    fn now() -> Sweep {
        Sweep::remove_all();
        Sweep
    }

    fn remove_all() {
        let mut ids = Vec::new();
        for node in AGENTS {
            if let Ok(out) = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=drover.node={node}"),
                ])
                .output()
            {
                ids.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(String::from),
                );
            }
        }
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        Sweep::remove_all();
        let _ = std::process::Command::new("docker")
            .args(["rmi", NEXT_IMAGE])
            .output();
    }
}

/// Run the docker CLI; its stdout, or an error with its last stderr line.
async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("running the docker command (is it installed?)")?;
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
        args.iter().take(2).copied().collect::<Vec<_>>().join(" "),
        reason.trim()
    )
}
