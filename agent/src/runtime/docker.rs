//! The Docker runtime (bollard 0.21): the default.
//!
//! ```text
//!   start:  image present? ──no──▶ pull (per imagePullPolicy, with a timeout)
//!             └─▶ create "drover-<replica>_<node>" (labels, env, cmd, ports, limits,
//!                 restart policy "no") ─▶ start ─▶ inspect
//!           a start that fails removes what it created
//!   events: GET /events {type=container, label=drover.node=<node>,
//!                        event=oom|die|destroy}  ─▶ inspect (exit code, OOM)
//!           the stream ends when the daemon restarts: reconnect with `since`
//!           and ask the supervisor to re-list (Resync)
//! ```
//!
//! Mapping from a Kubernetes container is Kubernetes' own: `command` replaces
//! the image's ENTRYPOINT and `args` its CMD; limits become `nano_cpus` and
//! `memory` (swap pinned to the same value, so the limit is the limit); the
//! restart policy is always "no" because the agent owns restarts and their
//! backoff. Engine answers are mapped to [`AgentError`] variants: 404 →
//! `NoSuchContainer`, 409 → `Conflict`, a taken host port → `PortInUse`, a
//! failed pull → `ImagePull` with Docker's message.
//!
//! Volumes are bind mounts of the directories [`crate::volumes`] prepared on
//! the host. Env values resolved from Secrets are in the container's config,
//! so `docker inspect` shows them to whoever may use the Docker socket (as on
//! a Kubernetes node); drover itself never logs them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerStatsResponse, EventMessage, HostConfig, HostConfigLogConfig, Mount, MountType,
    PortBinding, PortMap, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StatsOptionsBuilder, StopContainerOptions,
};
use bollard::Docker;
use drover_manifest::{Protocol, PullPolicy};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::previous::{Collector, PreviousLogs, Record};
use super::{
    container_name, labels, Consumed, ContainerState, ExecInput, ExecOutput, ExecSession, ExecSpec,
    Exit, LogChunk, LogOptions, LogSource, LogStream, Observed, PublishedPort, Runtime,
    RuntimeEvent, UnixMs, EVENT_CAPACITY,
};
use crate::assignment::Assignment;
use crate::error::{AgentError, Result};

/// bollard's default wait for response headers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings of the Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The node name written into every container's `drover.node` label; only
    /// containers with this label are listed, so several agents may share one
    /// engine (a lab on one host).
    pub node: String,
    /// A pull that takes longer fails the start with `ErrImagePull`.
    pub pull_timeout: Duration,
    /// How long the start-up ping may take.
    pub connect_timeout: Duration,
    /// The agent's data directory: replicas' previous runs are kept in its
    /// `previous/` (None: `logs --previous` is not available).
    pub data_dir: Option<std::path::PathBuf>,
    /// The agent's name server (`--service-dns`): every container resolves
    /// through it, with Kubernetes' search list for its namespace.
    pub dns: Option<std::net::Ipv4Addr>,
}

impl DockerConfig {
    pub fn new(node: impl Into<String>) -> DockerConfig {
        DockerConfig {
            node: node.into(),
            pull_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            data_dir: None,
            dns: None,
        }
    }
}

/// Runs replicas as Docker containers.
pub struct DockerRuntime {
    docker: Docker,
    cfg: DockerConfig,
    events: broadcast::Sender<RuntimeEvent>,
    /// Stops the event watcher when the runtime is dropped.
    _watcher: DropGuard,
}

/// Where `connect_with_local_defaults` looks, for error messages.
fn socket_description() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_string(),
        _ => "/var/run/docker.sock".to_string(),
    }
}

impl DockerRuntime {
    /// Connect to the local engine and check it answers. Fails with
    /// [`AgentError::DockerUnavailable`] when it does not.
    pub async fn connect(cfg: DockerConfig) -> Result<DockerRuntime> {
        let socket = socket_description();
        let unavailable = |reason: String| AgentError::DockerUnavailable {
            socket: socket.clone(),
            reason,
        };
        let docker =
            Docker::connect_with_local_defaults().map_err(|e| unavailable(e.to_string()))?;
        match tokio::time::timeout(cfg.connect_timeout, docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {}",
                    drover_proto::duration::short(cfg.connect_timeout)
                )))
            }
        }
        // Needed once pinned API versions reach the wire (INTEGRATION.md §3);
        // harmless with 0.21.1, which sends requests unversioned.
        let docker = match docker.clone().negotiate_version().await {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, "Docker API version negotiation failed; using defaults");
                docker
            }
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let cancel = CancellationToken::new();
        tokio::spawn(watch_events(
            docker.clone(),
            cfg.node.clone(),
            events.clone(),
            cancel.clone(),
        ));
        info!(node = %cfg.node, socket = %socket, "connected to the Docker engine");
        Ok(DockerRuntime {
            docker,
            cfg,
            events,
            _watcher: cancel.drop_guard(),
        })
    }

    fn previous(&self) -> Result<PreviousLogs> {
        match &self.cfg.data_dir {
            Some(dir) => Ok(PreviousLogs::new(dir.join("previous"))),
            None => Err(AgentError::Unsupported(
                "this agent runs without a data directory and keeps no previous runs".into(),
            )),
        }
    }

    /// The bollard client, for tests and tools that inspect what the agent made.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn node_filter(&self, extra: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut label = vec![format!("{}={}", labels::NODE, self.cfg.node)];
        label.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        HashMap::from([("label".to_string(), label)])
    }

    /// The replica's newest container id, running or not.
    async fn replica_container(&self, replica: &str) -> Result<String> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.node_filter(&[(labels::REPLICA, replica)])),
            ..Default::default()
        };
        let mut found = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| map_error("listing containers", replica, e))?;
        found.sort_by_key(|c| std::cmp::Reverse(c.created.unwrap_or(0)));
        found
            .into_iter()
            .find_map(|c| c.id)
            .ok_or_else(|| AgentError::UnknownReplica(replica.to_string()))
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse> {
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(|e| map_error("inspecting the container", id, e))
    }

    /// Make sure the image is on this host, pulling per the policy.
    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<()> {
        let present = match self.docker.inspect_image(image).await {
            Ok(_) => true,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(e) => return Err(map_error("inspecting the image", image, e)),
        };
        match policy {
            PullPolicy::Never if present => Ok(()),
            PullPolicy::Never => Err(AgentError::ImagePull {
                image: image.to_string(),
                message: format!(
                    "image {image} is not present on the node and imagePullPolicy is Never"
                ),
            }),
            PullPolicy::IfNotPresent if present => Ok(()),
            PullPolicy::IfNotPresent => self.pull(image).await,
            PullPolicy::Always => match self.pull(image).await {
                Ok(()) => Ok(()),
                // Lab clusters build images locally and reach no registry:
                // like Swarm, run the local copy rather than refuse.
                Err(e) if present => {
                    warn!(image, error = %e, "pull failed; using the image already on this node");
                    Ok(())
                }
                Err(e) => Err(e),
            },
        }
    }

    async fn pull(&self, image: &str) -> Result<()> {
        let (from_image, tag) = split_image_ref(image);
        let opts = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            ..Default::default()
        };
        info!(image, "pulling image");
        let pull = async {
            let mut progress = self.docker.create_image(Some(opts), None, None);
            while let Some(item) = progress.next().await {
                item.map_err(|e| AgentError::ImagePull {
                    image: image.to_string(),
                    message: docker_message(&e),
                })?;
            }
            Ok(())
        };
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.cfg.pull_timeout, pull).await {
            Ok(result) => result,
            Err(_) => Err(AgentError::ImagePull {
                image: image.to_string(),
                message: format!(
                    "pulling {image} did not finish within {}",
                    drover_proto::duration::short(self.cfg.pull_timeout)
                ),
            }),
        };
        crate::metrics::get().pull(started, result.is_ok());
        result
    }

    /// Create the container; a stale, stopped container of the same replica
    /// on this node (left by a crash between create and bookkeeping) is
    /// removed and the create retried once.
    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String> {
        for attempt in 0..2 {
            let opts = CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            };
            match self.docker.create_container(Some(opts), body.clone()).await {
                Ok(created) => {
                    for w in &created.warnings {
                        warn!(container = name, warning = %w, "Docker warning on create");
                    }
                    return Ok(created.id);
                }
                Err(BollardError::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) => {
                    if attempt == 0 && self.is_stale_own(name).await {
                        info!(
                            container = name,
                            "removing a stale container of this replica"
                        );
                        self.remove(name).await?;
                        continue;
                    }
                    return Err(AgentError::Conflict {
                        name: name.to_string(),
                        message,
                    });
                }
                Err(BollardError::DockerResponseServerError {
                    status_code: 404,
                    message,
                }) => {
                    return Err(AgentError::ImagePull {
                        image: body.image.clone().unwrap_or_default(),
                        message,
                    })
                }
                Err(e) => return Err(map_start_error("creating the container", name, e)),
            }
        }
        Err(AgentError::Conflict {
            name: name.to_string(),
            message: "the name stayed in use after removing the stale container".into(),
        })
    }

    /// Whether `name` is a non-running container this node made.
    async fn is_stale_own(&self, name: &str) -> bool {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => {
                let ours = c
                    .config
                    .as_ref()
                    .and_then(|cfg| cfg.labels.as_ref())
                    .and_then(|l| l.get(labels::NODE))
                    .is_some_and(|n| *n == self.cfg.node);
                let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                ours && !running
            }
            Err(_) => false,
        }
    }
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn list(&self) -> Result<Vec<Observed>> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.node_filter(&[])),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| map_error("listing containers", &self.cfg.node, e))?;
        let ids: Vec<String> = summaries.into_iter().filter_map(|c| c.id).collect();
        let inspected: Vec<Result<ContainerInspectResponse>> = futures_util::stream::iter(ids)
            .map(|id: String| async move { self.inspect(&id).await })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut out = Vec::with_capacity(inspected.len());
        for r in inspected {
            match r {
                Ok(c) => out.extend(observed_from_inspect(&c)),
                // Removed between the list and the inspect.
                Err(AgentError::NoSuchContainer { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(out)
    }

    /// Docker's stats for each running container of this node (one-shot, as
    /// `docker stats --no-stream` reads them): CPU time from the cgroup,
    /// memory as the CLI shows it (usage minus inactive page cache).
    async fn usage(&self) -> Result<BTreeMap<String, Consumed>> {
        let opts = ListContainersOptions {
            all: false,
            filters: Some(self.node_filter(&[])),
            ..Default::default()
        };
        let running = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| map_error("listing containers", &self.cfg.node, e))?;
        let targets: Vec<(String, String)> = running
            .into_iter()
            .filter_map(|c| Some((c.labels?.get(labels::REPLICA)?.clone(), c.id?)))
            .collect();
        let stats: Vec<Option<(String, Consumed)>> = futures_util::stream::iter(targets)
            .map(|(replica, id)| async move {
                let opts = StatsOptionsBuilder::new()
                    .stream(false)
                    .one_shot(true)
                    .build();
                let mut stream = self.docker.stats(&id, Some(opts));
                match stream.next().await {
                    Some(Ok(s)) => Some((replica, consumed_from_stats(&s)?)),
                    Some(Err(e)) => {
                        debug!(container = %id, error = %e, "no stats for a container");
                        None
                    }
                    None => None,
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        Ok(stats.into_iter().flatten().collect())
    }

    async fn start(&self, assignment: &Assignment, restarts: u32) -> Result<Observed> {
        let container = assignment.container();
        if container.image.is_empty() {
            return Err(AgentError::InvalidSpec("the container has no image".into()));
        }
        self.ensure_image(&container.image, container.image_pull_policy)
            .await?;
        let name = container_name(&assignment.replica, &self.cfg.node);
        let mut body = container_body(assignment, &self.cfg.node, restarts);
        if let (Some(dns), Some(host)) = (self.cfg.dns, body.host_config.as_mut()) {
            cluster_dns(host, dns, &assignment.namespace);
        }
        let id = self.create(&name, body).await?;
        if let Err(e) = self.docker.start_container(&id, None).await {
            let err = map_start_error("starting the container", &name, e);
            // Leave nothing behind: the next attempt creates it afresh.
            if let Err(rm) = self.remove(&id).await {
                warn!(container = %name, error = %rm, "could not remove a container that failed to start");
            }
            return Err(err);
        }
        let inspected = self.inspect(&id).await?;
        observed_from_inspect(&inspected).ok_or_else(|| AgentError::Docker {
            action: "inspecting the new container".into(),
            message: format!("container {id} has no drover labels"),
        })
    }

    async fn stop(&self, container_id: &str, grace: Duration) -> Result<()> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        // The request returns only once the container stopped: give the
        // client more than the grace period.
        let docker = self
            .docker
            .clone()
            .with_timeout(grace + Duration::from_secs(60));
        let opts = StopContainerOptions {
            t: Some(t),
            signal: None,
        };
        docker
            .stop_container(container_id, Some(opts))
            .await
            .map_err(|e| map_error("stopping the container", container_id, e))
    }

    async fn remove(&self, container_id: &str) -> Result<()> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(container_id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_error("removing the container", container_id, e)),
        }
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn logs(&self, replica: &str, opts: LogOptions) -> Result<LogStream> {
        if opts.previous {
            let chunks = self.previous()?.read(replica, &opts).await?;
            return Ok(Box::pin(futures_util::stream::iter(
                chunks.into_iter().map(Ok),
            )));
        }
        let id = self.replica_container(replica).await?;
        let options = LogsOptions {
            follow: opts.follow,
            stdout: true,
            stderr: true,
            timestamps: opts.timestamps,
            // Docker takes whole seconds: round down, never losing a line.
            since: opts
                .since_unix_ms
                .map(|ms| i32::try_from(ms.div_euclid(1000)).unwrap_or(i32::MAX))
                .unwrap_or(0),
            tail: opts
                .tail
                .map(|n| n.to_string())
                .unwrap_or_else(|| "all".into()),
            ..Default::default()
        };
        let replica = replica.to_string();
        let stream = self.docker.logs(&id, Some(options)).map(move |item| {
            item.map(|out| {
                let source = match &out {
                    bollard::container::LogOutput::StdErr { .. } => LogSource::Stderr,
                    _ => LogSource::Stdout,
                };
                LogChunk {
                    source,
                    data: out.into_bytes().to_vec(),
                }
            })
            .map_err(|e| map_error("reading logs", &replica, e))
        });
        Ok(Box::pin(stream))
    }

    async fn exec(
        &self,
        replica: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let id = self.replica_container(replica).await?;
        let run = async {
            let created = self
                .docker
                .create_exec(
                    &id,
                    CreateExecOptions::<String> {
                        cmd: Some(command.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| map_error("creating an exec", &id, e))?;
            let mut output = Vec::new();
            match self
                .docker
                .start_exec(&created.id, None)
                .await
                .map_err(|e| map_error("starting an exec", &id, e))?
            {
                StartExecResults::Attached {
                    output: mut stream, ..
                } => {
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.map_err(|e| map_error("reading exec output", &id, e))?;
                        output.extend_from_slice(chunk.as_ref());
                    }
                }
                StartExecResults::Detached => {}
            }
            let inspected = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(|e| map_error("inspecting an exec", &id, e))?;
            Ok(ExecOutput {
                exit_code: inspected.exit_code.unwrap_or(-1),
                output,
            })
        };
        // Docker has no exec-kill: a hung probe keeps running in the container.
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| AgentError::Timeout {
                what: format!("exec in replica {replica}"),
                after: timeout,
            })?
    }

    async fn exec_session(&self, replica: &str, spec: ExecSpec) -> Result<ExecSession> {
        let id = self.replica_container(replica).await?;
        let inspected = self.inspect(&id).await?;
        if !inspected
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false)
        {
            return Err(AgentError::Unsupported(format!(
                "replica {replica} is not running (its container exited); exec needs a running replica"
            )));
        }
        let created = self
            .docker
            .create_exec(
                &id,
                CreateExecOptions::<String> {
                    cmd: Some(spec.command.clone()),
                    attach_stdin: Some(spec.stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(spec.tty.is_some()),
                    env: spec.tty.map(|_| vec!["TERM=xterm".to_string()]),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| map_error("creating an exec", &id, e))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: spec.tty.is_some(),
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(|e| map_error("starting an exec", &id, e))?;
        let StartExecResults::Attached {
            output: mut stream,
            input: mut stdin,
        } = started
        else {
            return Err(AgentError::Docker {
                action: "starting an exec".into(),
                message: "the engine did not attach the exec's streams".into(),
            });
        };
        if let Some(size) = spec.tty {
            resize_exec(&self.docker, &created.id, size).await;
        }
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<ExecInput>(16);
        let output_done = CancellationToken::new();
        let done = output_done.clone();
        tokio::spawn(async move {
            let _done = done.drop_guard();
            while let Some(Ok(out)) = stream.next().await {
                let source = match &out {
                    bollard::container::LogOutput::StdErr { .. } => LogSource::Stderr,
                    _ => LogSource::Stdout,
                };
                let chunk = LogChunk {
                    source,
                    data: out.into_bytes().to_vec(),
                };
                if out_tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        let docker = self.docker.clone();
        let exec_id = created.id.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut open = true;
            while let Some(input) = in_rx.recv().await {
                match input {
                    ExecInput::Stdin(data) if open => {
                        if stdin.write_all(&data).await.is_err() {
                            open = false;
                        }
                    }
                    ExecInput::Stdin(_) => {}
                    ExecInput::CloseStdin => {
                        if open {
                            let _ = stdin.shutdown().await;
                            open = false;
                        }
                    }
                    ExecInput::Resize(size) => resize_exec(&docker, &exec_id, size).await,
                }
            }
        });
        let docker = self.docker.clone();
        let exec_id = created.id;
        Ok(ExecSession {
            container_id: id.clone(),
            input: in_tx,
            output: out_rx,
            exit: Box::pin(async move {
                output_done.cancelled().await;
                // The engine records the exit code just after the output ends.
                for _ in 0..50 {
                    let inspected = docker
                        .inspect_exec(&exec_id)
                        .await
                        .map_err(|e| map_error("inspecting an exec", &id, e))?;
                    if inspected.running != Some(true) {
                        return Ok(inspected.exit_code.unwrap_or(-1));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(-1)
            }),
        })
    }

    async fn keep_previous(&self, replica: &str, container_id: &str) -> Result<()> {
        let previous = self.previous()?;
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: "all".into(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(container_id, Some(options));
        let mut kept = Collector::default();
        while let Some(item) = stream.next().await {
            let out = item.map_err(|e| map_error("reading logs", container_id, e))?;
            let source = match &out {
                bollard::container::LogOutput::StdErr { .. } => LogSource::Stderr,
                _ => LogSource::Stdout,
            };
            let line = out.into_bytes();
            // `2024-06-01T12:00:00.123456789Z text`: the time Docker stamped it.
            let (at, data) = match line.iter().position(|b| *b == b' ') {
                Some(space) => match std::str::from_utf8(&line[..space])
                    .ok()
                    .and_then(drover_proto::timestamp::parse_rfc3339_ms)
                {
                    Some(at) => (Some(at), line[space + 1..].to_vec()),
                    None => (None, line.to_vec()),
                },
                None => (None, line.to_vec()),
            };
            kept.push(Record {
                source,
                // A line Docker did not stamp cannot be placed in time:
                // it counts as written when the run ended, never dropped.
                at: at.or_else(|| Some(super::now_unix_ms())),
                data,
            });
        }
        previous.keep(replica, kept.into_records()).await
    }

    fn forget_previous(&self, replica: &str) {
        if let Ok(previous) = self.previous() {
            previous.forget(replica);
        }
    }

    async fn probe_address(&self, replica: &str, port: u16) -> Result<SocketAddr> {
        let id = self.replica_container(replica).await?;
        let inspected = self.inspect(&id).await?;
        probe_address_of(&inspected, port).ok_or_else(|| AgentError::Docker {
            action: format!("finding an address for port {port} of replica {replica}"),
            message: "the container has no IP address and no host port for it".into(),
        })
    }
}

async fn resize_exec(docker: &Docker, exec_id: &str, size: super::WindowSize) {
    let options = bollard::exec::ResizeExecOptions {
        height: size.rows,
        width: size.cols,
    };
    if let Err(e) = docker.resize_exec(exec_id, options).await {
        debug!(error = %e, "could not resize an exec's terminal");
    }
}

/// Where a probe reaches `port` of an inspected container: its IP on its
/// (first, by name) network; else the host port mapped to it, on loopback;
/// else loopback itself (host networking).
fn probe_address_of(inspected: &ContainerInspectResponse, port: u16) -> Option<SocketAddr> {
    let settings = inspected.network_settings.as_ref();
    let mut networks: Vec<_> = settings
        .and_then(|n| n.networks.as_ref())
        .map(|n| n.iter().collect())
        .unwrap_or_default();
    networks.sort_by(|a, b| a.0.cmp(b.0));
    let ip = networks
        .iter()
        .filter_map(|(_, e)| e.ip_address.as_deref())
        .find_map(|ip| ip.parse::<IpAddr>().ok());
    if let Some(ip) = ip {
        return Some(SocketAddr::new(ip, port));
    }
    let mapped = settings
        .and_then(|n| n.ports.as_ref())
        .and_then(|ports| ports.get(&format!("{port}/tcp")))
        .and_then(|b| b.as_ref())
        .and_then(|b| {
            b.iter()
                .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
        });
    let mode = inspected
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref());
    match (mapped, mode) {
        (Some(host_port), _) => Some(SocketAddr::from(([127, 0, 0, 1], host_port))),
        (None, Some("host")) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        _ => None,
    }
}

/// Resolve through the agent's name server at `dns`, with Kubernetes' search
/// list and `ndots:5` (so `backend` and `backend.default` are tried as
/// Service names first).
pub fn cluster_dns(host: &mut HostConfig, dns: std::net::Ipv4Addr, namespace: &str) {
    host.dns = Some(vec![dns.to_string()]);
    host.dns_search = Some(vec![
        format!("{namespace}.svc.cluster.local"),
        "svc.cluster.local".to_string(),
        "cluster.local".to_string(),
    ]);
    host.dns_options = Some(vec!["ndots:5".to_string()]);
}

/// The create body for a replica: Kubernetes' container semantics on Docker.
pub fn container_body(assignment: &Assignment, node: &str, restarts: u32) -> ContainerCreateBody {
    let c = assignment.container();
    let labels = HashMap::from([
        (labels::REPLICA.to_string(), assignment.replica.clone()),
        (
            labels::DEPLOYMENT.to_string(),
            assignment.deployment.clone(),
        ),
        (labels::NODE.to_string(), node.to_string()),
        (labels::NAMESPACE.to_string(), assignment.namespace.clone()),
        (labels::REVISION.to_string(), assignment.revision.clone()),
        (labels::SPEC_HASH.to_string(), assignment.spec_hash.clone()),
        (labels::SLOT.to_string(), assignment.slot.to_string()),
        (labels::RESTARTS.to_string(), restarts.to_string()),
    ]);
    let env: Vec<String> = assignment
        .env()
        .iter()
        .map(|e| format!("{}={}", e.name, e.value))
        .collect();
    // Every volume is a bind mount of its host directory (a Memory emptyDir
    // is a tmpfs the agent mounted there, so it outlives container restarts).
    let mounts: Vec<Mount> = assignment
        .mounts()
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let mut exposed = Vec::new();
    let mut bindings: PortMap = HashMap::new();
    for p in &c.ports {
        let key = format!(
            "{}/{}",
            p.container_port,
            p.protocol.as_str().to_lowercase()
        );
        exposed.push(key.clone());
        // A hostPort is bound as the manifest says. Every other TCP or UDP
        // port is published on an ephemeral port of the node's IPv4
        // addresses (Docker picks it, `-p 0.0.0.0::PORT`): the container's
        // bridge address is private to this host, the published port is
        // how other hosts reach it as a Service endpoint. IPv4 only, so
        // there is one port to read back (an ephemeral binding on 0.0.0.0
        // and on :: may get two different ports).
        let binding = match (p.host_port, p.protocol) {
            (Some(host_port), _) => PortBinding {
                host_ip: None,
                host_port: Some(host_port.to_string()),
            },
            (None, Protocol::Tcp | Protocol::Udp) => PortBinding {
                host_ip: Some("0.0.0.0".to_string()),
                host_port: Some(String::new()),
            },
            (None, Protocol::Sctp) => continue,
        };
        let list = bindings.entry(key).or_insert_with(|| Some(Vec::new()));
        let list = list.get_or_insert_with(Vec::new);
        if !list.contains(&binding) {
            list.push(binding);
        }
    }
    let limits = c.resources.limits;
    let memory = limits
        .memory_bytes
        .map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    let host_config = HostConfig {
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        nano_cpus: limits
            .cpu_millis
            .map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        memory,
        // No swap beyond the limit: the limit is what the replica gets.
        memory_swap: memory,
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        // Logs are rotated: a chatty replica cannot fill the host's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_string()),
            config: Some(HashMap::from([
                ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                ("max-file".to_string(), LOG_MAX_FILES.to_string()),
            ])),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        // The replica's name, as Kubernetes names a pod's host.
        hostname: Some(assignment.hostname().to_string()),
        image: Some(c.image.clone()),
        // Kubernetes: `command` replaces ENTRYPOINT, `args` replaces CMD. An
        // explicit entrypoint also drops the image's CMD (Docker's merge rule),
        // which is what Kubernetes does when only `command` is given.
        entrypoint: (!c.command.is_empty()).then(|| c.command.clone()),
        cmd: (!c.args.is_empty()).then(|| c.args.clone()),
        env: (!env.is_empty()).then_some(env),
        working_dir: c.working_dir.clone(),
        labels: Some(labels),
        // The container carries its grace period: a stop after the
        // assignment is gone still honours it.
        stop_timeout: Some(i64::from(
            assignment.template.spec.termination_grace_period_seconds,
        )),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Docker's `json-file` rotation for every replica: each file at most this
/// large (`docker run --log-opt max-size`)...
pub const LOG_MAX_SIZE: &str = "10m";
/// ...and at most this many files (`--log-opt max-file`).
pub const LOG_MAX_FILES: &str = "3";

/// What the agent needs from an inspected container; None when it carries
/// no `drover.replica` label.
/// CPU time and memory in use from one stats answer (cgroup v2 names the
/// page cache `inactive_file`, v1 `total_inactive_file`).
fn consumed_from_stats(s: &ContainerStatsResponse) -> Option<Consumed> {
    let cpu_ns = s.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage?;
    let memory = s.memory_stats.as_ref();
    let usage = memory.and_then(|m| m.usage).unwrap_or(0);
    let cache = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| {
            st.get("inactive_file")
                .or_else(|| st.get("total_inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    Some(Consumed {
        cpu_ns,
        memory_bytes: usage.saturating_sub(cache),
    })
}

fn observed_from_inspect(c: &ContainerInspectResponse) -> Option<Observed> {
    let config = c.config.as_ref()?;
    let l = config.labels.as_ref()?;
    let label = |k: &str| l.get(k).cloned().unwrap_or_default();
    let replica = l.get(labels::REPLICA)?.clone();
    let state = c.state.as_ref();
    let started = state
        .and_then(|s| s.started_at.as_deref())
        .and_then(drover_proto::timestamp::parse_rfc3339_ms)
        .unwrap_or(0);
    let status = state.and_then(|s| s.status);
    let container_state = match status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::RESTARTING,
        ) => ContainerState::Running,
        _ => ContainerState::Exited(Exit {
            code: state.and_then(|s| s.exit_code).unwrap_or(-1),
            oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
            finished_unix_ms: state
                .and_then(|s| s.finished_at.as_deref())
                .and_then(drover_proto::timestamp::parse_rfc3339_ms)
                .unwrap_or(0),
        }),
    };
    Some(Observed {
        replica,
        namespace: label(labels::NAMESPACE),
        deployment: label(labels::DEPLOYMENT),
        revision: label(labels::REVISION),
        spec_hash: label(labels::SPEC_HASH),
        container_id: c.id.clone().unwrap_or_default(),
        image: config.image.clone().unwrap_or_default(),
        restarts: label(labels::RESTARTS).parse().unwrap_or(0),
        started_unix_ms: started,
        state: container_state,
        grace: config
            .stop_timeout
            .and_then(|t| u64::try_from(t).ok())
            .map(Duration::from_secs),
        published_ports: published_ports(c),
    })
}

/// Where the container's ports are published on the node, as the engine
/// assigned them (inspect's `NetworkSettings.Ports`, filled while it runs):
/// per container port, the IPv4 binding (the one endpoints use) or else
/// the first. Keys or ports the engine should never give are skipped.
fn published_ports(c: &ContainerInspectResponse) -> Vec<PublishedPort> {
    let Some(ports) = c.network_settings.as_ref().and_then(|n| n.ports.as_ref()) else {
        return Vec::new();
    };
    let mut out: Vec<PublishedPort> = ports
        .iter()
        .filter_map(|(key, bindings)| {
            let (port, proto) = key.split_once('/')?;
            let protocol = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => return None,
            };
            let bindings = bindings.as_ref()?;
            let host_port = |b: &PortBinding| b.host_port.as_deref()?.parse::<u16>().ok();
            let is_v4 = |b: &&PortBinding| {
                b.host_ip
                    .as_deref()
                    .is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            };
            let host_port = bindings
                .iter()
                .filter(is_v4)
                .chain(bindings.iter())
                .find_map(host_port)
                .filter(|p| *p != 0)?;
            Some(PublishedPort {
                container_port: port.parse().ok().filter(|p| *p != 0)?,
                protocol,
                host_port,
            })
        })
        .collect();
    out.sort();
    out
}

/// Follow the engine's container events for this node until cancelled.
async fn watch_events(
    docker: Docker,
    node: String,
    tx: broadcast::Sender<RuntimeEvent>,
    cancel: CancellationToken,
) {
    let mut since: Option<i64> = None;
    // Containers with an `oom` event not yet followed by their `die`.
    let mut oomed: HashSet<String> = HashSet::new();
    loop {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("{}={}", labels::NODE, node)],
            ),
            (
                "event".to_string(),
                vec!["oom".to_string(), "die".to_string(), "destroy".to_string()],
            ),
        ]);
        let opts = EventsOptions {
            since: since.map(|s| s.to_string()),
            filters: Some(filters),
            ..Default::default()
        };
        let mut stream = docker.events(Some(opts));
        if since.is_some() {
            // Anything between the old stream's end and `since` is replayed,
            // but a re-list also covers a daemon that lost its event log.
            let _ = tx.send(RuntimeEvent::Resync);
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                item = stream.next() => match item {
                    Some(Ok(msg)) => {
                        if let Some(t) = msg.time {
                            since = Some(t);
                        }
                        if let Some(ev) = event_from_message(&docker, msg, &mut oomed).await {
                            let _ = tx.send(ev);
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "Docker event stream failed; reconnecting");
                        break;
                    }
                    None => {
                        debug!("Docker event stream ended; reconnecting");
                        break;
                    }
                }
            }
        }
        since.get_or_insert_with(|| super::now_unix_ms() / 1000);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn event_from_message(
    docker: &Docker,
    msg: EventMessage,
    oomed: &mut HashSet<String>,
) -> Option<RuntimeEvent> {
    let actor = msg.actor?;
    let container_id = actor.id?;
    let attrs = actor.attributes.unwrap_or_default();
    let replica = attrs.get(labels::REPLICA)?.clone();
    match msg.action.as_deref()? {
        "oom" => {
            oomed.insert(container_id);
            None
        }
        "die" => {
            let event_ms: UnixMs = msg
                .time_nano
                .map(|n| n / 1_000_000)
                .or(msg.time.map(|s| s * 1000))
                .unwrap_or_else(super::now_unix_ms);
            // The daemon logs `die` before it records the stopped state:
            // inspect until the state shows the exit (code, finish time).
            let mut exit = None;
            for _ in 0..20 {
                match docker.inspect_container(&container_id, None).await {
                    Ok(c) => {
                        if let Some(ContainerState::Exited(e)) =
                            observed_from_inspect(&c).map(|o| o.state)
                        {
                            exit = Some(e);
                            break;
                        }
                    }
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let mut exit = exit.unwrap_or_else(|| exit_from_attributes(&attrs, event_ms));
            // The `oom` event comes first and is the reliable signal.
            exit.oom_killed |= oomed.remove(&container_id);
            Some(RuntimeEvent::Exited {
                replica,
                container_id,
                exit,
            })
        }
        "destroy" => {
            oomed.remove(&container_id);
            Some(RuntimeEvent::Removed {
                replica,
                container_id,
            })
        }
        _ => None,
    }
}

fn exit_from_attributes(attrs: &HashMap<String, String>, at: UnixMs) -> Exit {
    Exit {
        code: attrs
            .get("exitCode")
            .and_then(|c| c.parse().ok())
            .unwrap_or(-1),
        oom_killed: false,
        finished_unix_ms: at,
    }
}

/// The daemon's own words for an error.
fn docker_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Map an engine error on a named object to the agent's variants.
fn map_error(action: &str, id: &str, e: BollardError) -> AgentError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => AgentError::NoSuchContainer { id: id.to_string() },
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => AgentError::Conflict {
            name: id.to_string(),
            message,
        },
        BollardError::RequestTimeoutError => AgentError::Timeout {
            what: format!("{action} ({id})"),
            after: CLIENT_TIMEOUT,
        },
        other => AgentError::Docker {
            action: action.to_string(),
            message: docker_message(&other),
        },
    }
}

/// Like [`map_error`], but recognises a taken host port.
fn map_start_error(action: &str, name: &str, e: BollardError) -> AgentError {
    let message = docker_message(&e);
    if is_port_in_use(&message) {
        return AgentError::PortInUse { message };
    }
    match map_error(action, name, e) {
        AgentError::Docker { message, .. } => AgentError::StartFailed(message),
        other => other,
    }
}

/// Docker says "port is already allocated" when another container holds the
/// port and "address already in use" when another process does.
pub fn is_port_in_use(message: &str) -> bool {
    message.contains("port is already allocated") || message.contains("address already in use")
}

/// Split an image reference into `fromImage` and `tag` for a pull: an
/// untagged reference means `latest` (an empty tag would pull every tag); a
/// digest reference is pulled as is.
pub fn split_image_ref(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let name_start = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[name_start..].rfind(':') {
        Some(i) => {
            let at = name_start + i;
            (image[..at].to_string(), Some(image[at + 1..].to_string()))
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use drover_manifest::{ContainerPort, EnvVar, Protocol};

    #[test]
    fn labels_name_the_replica_node_and_revision() {
        let mut a = fixtures::assignment("web-abc12-0");
        a.spec_hash = "5".repeat(64);
        let body = container_body(&a, "n1", 3);
        let l = body.labels.expect("labels");
        assert_eq!(l[labels::REPLICA], "web-abc12-0");
        assert_eq!(l[labels::DEPLOYMENT], "web");
        assert_eq!(l[labels::NODE], "n1");
        assert_eq!(l[labels::REVISION], a.revision);
        assert_eq!(l[labels::SPEC_HASH], a.spec_hash);
        assert_eq!(l[labels::RESTARTS], "3");
        assert_eq!(body.image.as_deref(), Some("drover/busybox:1"));
        assert_eq!(body.stop_timeout, Some(30), "terminationGracePeriodSeconds");
    }

    #[test]
    fn command_maps_to_entrypoint_and_args_to_cmd() {
        let mut a = fixtures::assignment("web-abc12-0");
        let c = &mut a.template_mut().spec.containers[0];
        c.command = vec!["sh".into(), "-c".into()];
        c.args = vec!["echo hi".into()];
        let body = container_body(&a, "n1", 0);
        assert_eq!(body.entrypoint, Some(vec!["sh".into(), "-c".into()]));
        assert_eq!(body.cmd, Some(vec!["echo hi".into()]));

        // Only args: the image's entrypoint stays, args replace CMD.
        let c = &mut a.template_mut().spec.containers[0];
        c.command.clear();
        let body = container_body(&a, "n1", 0);
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, Some(vec!["echo hi".into()]));

        // Neither: the image decides.
        a.template_mut().spec.containers[0].args.clear();
        let body = container_body(&a, "n1", 0);
        assert_eq!((body.entrypoint, body.cmd), (None, None));
    }

    #[test]
    fn env_working_dir_ports_and_limits_map_to_docker() {
        let mut a = fixtures::assignment("web-abc12-0");
        let c = &mut a.template_mut().spec.containers[0];
        c.env = vec![
            EnvVar {
                name: "GREETING".into(),
                value: "hello world".into(),
                value_from: None,
            },
            EnvVar {
                name: "EMPTY".into(),
                value: String::new(),
                value_from: None,
            },
        ];
        c.working_dir = Some("/var/www".into());
        c.ports = vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: 80,
                host_port: Some(8080),
                protocol: Protocol::Tcp,
            },
            ContainerPort {
                name: None,
                container_port: 53,
                host_port: None,
                protocol: Protocol::Udp,
            },
        ];
        c.resources.limits.cpu_millis = Some(250);
        c.resources.limits.memory_bytes = Some(64 * 1024 * 1024);
        let body = container_body(&a, "n1", 0);
        assert_eq!(
            body.env,
            Some(vec!["GREETING=hello world".into(), "EMPTY=".into()])
        );
        assert_eq!(body.working_dir.as_deref(), Some("/var/www"));
        assert_eq!(
            body.exposed_ports,
            Some(vec!["80/tcp".into(), "53/udp".into()])
        );
        let hc = body.host_config.expect("host config");
        let bindings = hc.port_bindings.expect("bindings");
        assert_eq!(bindings.len(), 2, "every TCP and UDP port is published");
        assert_eq!(
            bindings["80/tcp"],
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some("8080".into())
            }])
        );
        assert_eq!(
            bindings["53/udp"],
            Some(vec![PortBinding {
                host_ip: Some("0.0.0.0".into()),
                host_port: Some(String::new())
            }]),
            "an ephemeral port on IPv4 without a hostPort"
        );
        assert_eq!(hc.nano_cpus, Some(250_000_000));
        assert_eq!(hc.memory, Some(67_108_864));
        assert_eq!(hc.memory_swap, Some(67_108_864));
        assert_eq!(
            hc.restart_policy.and_then(|r| r.name),
            Some(RestartPolicyNameEnum::NO)
        );
        // Issue 12 item 5: logs are rotated.
        let log = hc.log_config.expect("log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let opts = log.config.expect("log options");
        assert_eq!(opts["max-size"], LOG_MAX_SIZE);
        assert_eq!(opts["max-file"], LOG_MAX_FILES);
    }

    #[test]
    fn the_cluster_resolver_is_the_agents_with_kubernetes_search_list() {
        let a = fixtures::assignment("web-abc12-0");
        let mut hc = container_body(&a, "n1", 0)
            .host_config
            .expect("host config");
        assert_eq!(hc.dns, None, "Docker's default without --service-dns");
        cluster_dns(&mut hc, std::net::Ipv4Addr::new(172, 17, 0, 1), "shop");
        assert_eq!(hc.dns, Some(vec!["172.17.0.1".to_string()]));
        assert_eq!(
            hc.dns_search,
            Some(vec![
                "shop.svc.cluster.local".to_string(),
                "svc.cluster.local".to_string(),
                "cluster.local".to_string()
            ])
        );
        assert_eq!(hc.dns_options, Some(vec!["ndots:5".to_string()]));
    }

    #[test]
    fn quantities_from_the_manifest_become_nano_cpus_and_bytes() {
        use drover_manifest::quantity::{parse_cpu_millis, parse_memory_bytes};
        let mut a = fixtures::assignment("web-abc12-0");
        let limits = &mut a.template_mut().spec.containers[0].resources.limits;
        limits.cpu_millis = Some(parse_cpu_millis("0.5").expect("cpu"));
        limits.memory_bytes = Some(parse_memory_bytes("1G").expect("memory"));
        let hc = container_body(&a, "n1", 0)
            .host_config
            .expect("host config");
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.memory, Some(1_000_000_000));

        limits_absent_means_unlimited();
    }

    fn limits_absent_means_unlimited() {
        let a = fixtures::assignment("web-abc12-0");
        let hc = container_body(&a, "n1", 0)
            .host_config
            .expect("host config");
        assert_eq!(
            (hc.nano_cpus, hc.memory, hc.port_bindings),
            (None, None, None)
        );
    }

    #[test]
    fn image_references_split_into_repository_and_tag() {
        let s = |r: &str| split_image_ref(r);
        assert_eq!(
            s("drover/busybox:1"),
            ("drover/busybox".into(), Some("1".into()))
        );
        assert_eq!(s("busybox"), ("busybox".into(), Some("latest".into())));
        assert_eq!(
            s("localhost:5000/app"),
            ("localhost:5000/app".into(), Some("latest".into()))
        );
        assert_eq!(
            s("localhost:5000/app:v2"),
            ("localhost:5000/app".into(), Some("v2".into()))
        );
        assert_eq!(s("app@sha256:abcd"), ("app@sha256:abcd".into(), None));
    }

    #[test]
    fn port_conflicts_are_recognised_in_both_wordings() {
        assert!(is_port_in_use(
            "driver failed programming external connectivity on endpoint drover-x: \
             Bind for 0.0.0.0:8080 failed: port is already allocated"
        ));
        assert!(is_port_in_use(
            "Error starting userland proxy: listen tcp4 0.0.0.0:8080: bind: address already in use"
        ));
        assert!(!is_port_in_use("No such image: x"));
    }
}
