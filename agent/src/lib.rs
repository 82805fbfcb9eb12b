//! drover-agent: runs the replicas the cluster assigns to one host.
//!
//! ```text
//!   controllers ◀──── session (Hello, heartbeats, status) ────┐
//!        │                                                    │
//!        └── AssignmentSet (Δ) ─────▶ supervisor ── reconcile ─┤
//!                                        │  ▲                  │ statuses
//!                                        ▼  │ events           │
//!                                      Runtime (docker | process | sim)
//!                                        ▲
//!   droverctl logs ──▶ Agent service ────┘
//! ```
//!
//! - [`session`]: the stream to the leader, reconnects, leader redirects.
//! - [`supervisor`]: the task that owns replica state and runs actions;
//!   [`containers`]: its cache of the node's containers, by replica too.
//! - [`reconcile`] and [`backoff`]: pure decisions, unit-tested.
//! - [`resolve`]: a replica's env and volume contents from the ConfigMaps and
//!   Secrets sent with the assignment set (pure); [`volumes`]: their
//!   directories on the host.
//! - [`runtime`]: the trait and its Docker, process and simulated runtimes.
//! - [`probe`]: liveness/readiness probes: a pure state machine, checks, workers.
//! - [`status`]: replica status derived from the same state, diffed for reports.
//! - [`server`]: the Agent gRPC service (logs).
//!
//! **Crates it may depend on:** `drover-proto` (wire types, names,
//! quantities), `drover-manifest` (the container spec types it runs) and
//! `drover-pki` (its node certificate, joins, the authorization layer); never
//! the controller or droverctl: it speaks to them only over gRPC.

pub mod assignment;
pub mod backoff;
pub mod config;
pub mod containers;
pub mod debugging;
pub mod error;
pub mod fence;
pub mod fixtures;
pub mod join;
pub mod metrics;
pub mod names;
pub mod probe;
pub mod reconcile;
pub mod resolve;
pub mod runtime;
pub mod server;
pub mod services;
pub mod session;
pub mod status;
pub mod supervisor;
pub mod usage;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use drover_pki::Security;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

pub use crate::config::{AgentConfig, RuntimeKind, Settings};
pub use crate::error::{AgentError, Result};
use crate::runtime::docker::DockerConfig;
use crate::runtime::{DockerRuntime, ProcessRuntime, Runtime, SimRuntime};
use crate::session::SessionConfig;
use crate::supervisor::{Supervisor, SupervisorConfig};

/// Run the agent as configured on the command line until `shutdown`.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    let incoming = TcpIncoming::bind(cfg.listen)
        .map_err(|e| AgentError::Config(format!("cannot listen on {}: {e}", cfg.listen)))?
        .with_nodelay(Some(true));
    // With --listen HOST:0 the advertised address is the port actually bound.
    let bound = incoming.local_addr().unwrap_or(cfg.listen);
    let mut settings = cfg.settings(bound)?;
    if let Some(plan) = settings.join.take() {
        settings.security = join::join(
            &plan,
            &settings.node,
            &settings.advertise,
            &settings.controllers,
            &shutdown,
        )
        .await?;
    } else if cfg.join_token.is_some() && !settings.security.is_insecure() {
        info!("this node already has a certificate: --join-token is not needed and was not used");
    }
    if cfg.metrics_listen.0.is_none() {
        metrics::set_enabled(false);
    }
    if let Some(addr) = cfg.metrics_listen.0 {
        let listener = drover_pki::exposition::bind(addr)
            .await
            .map_err(AgentError::Config)?;
        info!(metrics = %addr, "serving metrics");
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = drover_pki::exposition::serve(
                listener,
                || async { metrics::encode() },
                async move { stop.cancelled().await },
            )
            .await;
            if let Err(e) = served {
                warn!(error = %e, "the metrics listener failed");
            }
        });
    }
    if settings.security.is_insecure() {
        warn!("--insecure: the session with the controllers and the logs service are plaintext and unauthenticated");
    }
    // Owner-only: it holds the node's key, replicas' env values and logs.
    drover_pki::create_private_dir(&settings.data_dir).map_err(|e| {
        AgentError::io(
            format!(
                "creating the data directory {} (choose another with --data-dir)",
                settings.data_dir.display()
            ),
            std::io::Error::other(e.to_string()),
        )
    })?;
    if cfg.listen.ip().is_unspecified() && cfg.advertise.is_none() {
        warn!(listen = %cfg.listen, "listening on all addresses without --advertise: controllers cannot reach this agent's logs");
    }
    match cfg.runtime {
        RuntimeKind::Docker => {
            let mut docker = DockerConfig::new(settings.node.clone());
            docker.pull_timeout = Duration::from_secs(cfg.image_pull_timeout_secs);
            docker.data_dir = Some(settings.data_dir.clone());
            docker.dns = settings.service_dns;
            let runtime = DockerRuntime::connect(docker).await?;
            run_with(Arc::new(runtime), settings, incoming, shutdown).await
        }
        RuntimeKind::Process => {
            let runtime =
                ProcessRuntime::open_with(&settings.data_dir, &settings.node, settings.logs)?;
            run_with(Arc::new(runtime), settings, incoming, shutdown).await
        }
        RuntimeKind::Sim => {
            run_with(Arc::new(SimRuntime::new()), settings, incoming, shutdown).await
        }
    }
}

/// Run the agent over an already built runtime: the supervisor, the Agent
/// service on `incoming`, and the session, until `shutdown` (or until the
/// controllers refuse the node name). Containers are left running.
pub async fn run_with<R: Runtime>(
    runtime: Arc<R>,
    settings: Settings,
    incoming: TcpIncoming,
    shutdown: CancellationToken,
) -> Result<()> {
    if settings.join.is_some() {
        return Err(AgentError::Config(
            "join the cluster before starting the agent (drover_agent::join::join)".into(),
        ));
    }
    let stop = shutdown.child_token();
    let (security_tx, security) = tokio::sync::watch::channel(settings.security.clone());
    if let (Some(dir), Security::Tls(_)) = (&settings.tls_dir, &settings.security) {
        tokio::spawn(join::keep_renewed(
            dir.clone(),
            settings.node.clone(),
            settings.advertise.clone(),
            settings.controllers.clone(),
            security_tx,
            stop.clone(),
        ));
    }
    let supervisor_cfg = SupervisorConfig {
        fields: resolve::Fields {
            node: settings.node.clone(),
            pod_ip: pod_ip(&settings.advertise),
        },
        data_dir: Some(settings.data_dir.clone()),
        ..SupervisorConfig::default()
    };
    let (supervisor, supervisor_task) =
        Supervisor::start(runtime.clone(), supervisor_cfg, stop.clone()).await?;
    let (usage_tx, usage_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(usage::run(
        runtime.clone(),
        settings.usage_interval,
        usage_tx,
        stop.clone(),
    ));
    let server = tokio::spawn(server::serve(
        runtime.clone(),
        debugging::Sessions::new(settings.debug_sessions),
        incoming,
        security.clone(),
        stop.clone(),
    ));
    let (routes_tx, routes_rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    let data_path = match settings.service_proxy {
        services::ServiceProxy::Off => None,
        services::ServiceProxy::Nftables => Some(tokio::spawn(services::run(
            routes_rx,
            pod_ip(&settings.advertise),
            stop.clone(),
        ))),
    };
    let names = settings.service_dns.map(|ip| {
        let listen = std::net::SocketAddr::from((ip, 53));
        let system = std::fs::read("/etc/resolv.conf")
            .map(|text| names::resolv_conf_name_servers(&text))
            .unwrap_or_default();
        let upstreams = names::upstreams(&settings.service_dns_upstream, &system, listen);
        tokio::spawn(names::run(
            routes_tx.subscribe(),
            listen,
            upstreams,
            stop.clone(),
        ))
    });
    let session_cfg = SessionConfig {
        services: Some(Arc::new(routes_tx)),
        labels: settings.labels.clone(),
        capacity: settings.capacity,
        address: settings.advertise.clone(),
        runtime: runtime.kind().to_string(),
        heartbeat: settings.heartbeat,
        stop_after_disconnect: settings.stop_after_disconnect,
        security,
        usage: usage_rx,
        ..SessionConfig::new(settings.node.clone(), settings.controllers.clone())
    };
    info!(
        node = %settings.node,
        runtime = runtime.kind(),
        controllers = %settings.controllers.join(","),
        address = %settings.advertise,
        cpu_millis = settings.capacity.cpu_millis,
        memory_bytes = settings.capacity.memory_bytes,
        "agent starting"
    );
    let result = session::run(session_cfg, supervisor, stop.clone()).await;
    stop.cancel();
    if let Err(e) = supervisor_task.await {
        warn!(error = %e, "the supervisor task failed");
    }
    if let Some(task) = names {
        if let Err(e) = task.await {
            warn!(error = %e, "the name server task failed");
        }
    }
    // The service rules go with the agent (removed by the task on `stop`).
    if let Some(task) = data_path {
        if let Err(e) = task.await {
            warn!(error = %e, "the service data path task failed");
        }
    }
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "the Agent service stopped with an error"),
        Err(e) => warn!(error = %e, "the Agent service task failed"),
        Ok(Ok(())) => {}
    }
    info!("agent stopped; containers keep running");
    result
}

/// The address a replica's `status.podIP` reads: the host part of the
/// agent's advertised address. Replicas are reached through their node's
/// address (host ports, Services); a Docker container's bridge address is
/// private to its host.
fn pod_ip(advertise: &str) -> String {
    match advertise.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => advertise
            .rsplit_once(':')
            .map_or(advertise, |(host, _)| host)
            .trim_matches(|c| c == '[' || c == ']')
            .to_string(),
    }
}
