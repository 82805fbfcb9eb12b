//! The benchmarks behind `bench <subcommand>`: each prints one line per
//! figure and asserts nothing.
//!
//! - [`store`]: the replicated store alone (commit latency, throughput, failover).
//! - [`placement`]: a thousand simulated agents in this process; time from
//!   apply to every replica Running, and the controllers' memory.
//! - [`docker_start`]: replica start through drover against plain
//!   `docker run -d`, on the same Docker engine.
//! - [`recovery`]: kill a whole agent host, again and again; time until the
//!   node is NotReady and until every replica runs elsewhere.
//! - [`rollout`]: a rolling update of 50 replicas with the process runtime and
//!   Docker, beside `docker service update --image` on the same engine.
//! - [`debugging`]: `port-forward` and `cp` throughput beside a direct
//!   GET to the container and `docker cp`.
//! - [`endpoints`]: the leader's Service table at 100,000 replicas, in
//!   this process: a status batch's update beside a full recompute.
//! - [`measure`]: the polling clock, percentiles and `/proc` memory they share.

pub mod debugging;
pub mod docker_start;
pub mod endpoints;
pub mod measure;
pub mod placement;
pub mod recovery;
pub mod rollout;
pub mod services;
pub mod store;

use anyhow::Context;
use drover_proto::pb;
use drover_proto::pb::control_client::ControlClient;
pub use drover_tests::cluster::list_replicas;
use tonic::transport::Channel;

/// The workload image (`deploy/images/build.sh` builds it).
pub const IMAGE: &str = "drover/busybox:1";

/// The worker's command: a line a second, forever.
pub const WORKER_SCRIPT: &str = "while true; do echo tick; sleep 1; done";

/// Largest list answer a benchmark reads (10,000 replicas are a few MB; the
/// controller encodes up to 64 MiB).
const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;

/// A Control client that accepts list answers of any size a controller sends.
pub async fn client(
    address: &str,
    security: &drover_pki::Security,
) -> anyhow::Result<ControlClient<Channel>> {
    Ok(drover_tests::cluster::connect(address, security)
        .await?
        .max_decoding_message_size(MAX_LIST_BYTES))
}

/// A Prometheus stand-in for the metrics-on side of a comparison: scrapes
/// every controller's /metrics once a second until stopped.
pub struct Scraper {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

pub fn scrape_every_second(c: &drover_tests::Cluster) -> Scraper {
    let targets: Vec<String> = c.controllers.iter().map(|x| x.metrics.clone()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut scrapes = 0u64;
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(scrapes),
                _ = tick.tick() => {}
            }
            for t in &targets {
                drover_tests::metrics::scrape(t)
                    .await
                    .with_context(|| format!("scraping {t}"))?;
                scrapes += 1;
            }
        }
    });
    Scraper { stop, task }
}

impl Scraper {
    /// Stop; the number of scrapes, or the first that failed.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.cancel();
        self.task.await.context("the scraper task failed")?
    }
}

/// The worker Deployment: `replicas` copies of [`WORKER_SCRIPT`] in `image`
/// with small requests, killed at once on delete (a shell as PID 1 ignores
/// SIGTERM, so any grace period would only be waited out). Another image is
/// a new template: applying it starts a rolling update (maxSurge and
/// maxUnavailable 25 %, Kubernetes' defaults).
pub fn worker_manifest(name: &str, replicas: u32, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: worker
        image: {image}
        command: ["sh", "-c", "{WORKER_SCRIPT}"]
        resources:
          requests:
            cpu: 10m
            memory: 8Mi
"#
    )
}

/// Apply [`worker_manifest`] of [`IMAGE`] through the API, as droverctl would.
pub async fn apply_worker(
    client: &mut ControlClient<Channel>,
    name: &str,
    replicas: u32,
) -> anyhow::Result<()> {
    apply_worker_of(client, name, replicas, IMAGE).await
}

/// Apply [`worker_manifest`] of `image` through the API.
pub async fn apply_worker_of(
    client: &mut ControlClient<Channel>,
    name: &str,
    replicas: u32,
    image: &str,
) -> anyhow::Result<()> {
    client
        .apply(pb::ApplyRequest {
            files: vec![pb::ManifestFile {
                name: format!("{name}.yaml"),
                content: worker_manifest(name, replicas, image),
            }],
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("applying deployment {name}"))?;
    Ok(())
}

/// Nodes whose condition is Ready, out of all registered.
pub async fn ready_nodes(
    client: &mut ControlClient<Channel>,
    stale: bool,
) -> Result<(usize, usize), String> {
    let nodes = client
        .list_nodes(pb::ListNodesRequest {
            read: Some(pb::ReadOptions { stale }),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("listing nodes: {}", s.message()))?
        .into_inner()
        .nodes;
    let ready = nodes.iter().filter(|n| n.condition == "Ready").count();
    Ok((ready, nodes.len()))
}

/// How far a set of replicas has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    /// Bound to a node.
    pub scheduled: usize,
    /// Reported Running by their agent.
    pub running: usize,
}

impl Progress {
    pub fn of(replicas: &[pb::Replica]) -> Progress {
        Progress {
            total: replicas.len(),
            scheduled: replicas.iter().filter(|r| !r.node.is_empty()).count(),
            running: replicas
                .iter()
                .filter(|r| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.state() == pb::ReplicaState::Running)
                })
                .count(),
        }
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} replicas, {} scheduled, {} running",
            self.total, self.scheduled, self.running
        )
    }
}
