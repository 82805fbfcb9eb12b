//! The container runtime behind the agent: one trait, three implementations.
//!
//! ```text
//!                    ┌──────────── Runtime ────────────┐
//!   Supervisor ────▶ │ list · start · stop · remove     │
//!   Agent service ─▶ │ logs · exec · exec_session ·     │
//!                    │ probe_address · keep_previous    │
//!                    │ events() ─▶ Exited / Removed /   │──▶ Supervisor
//!                    │             Resync               │
//!                    └──────┬───────────┬──────────┬────┘
//!                       DockerRuntime  Process   Sim
//!                        (bollard)    (children) (hollow)
//! ```
//!
//! A runtime knows nothing of assignments beyond starting one: deciding what
//! to start, stop or restart is the reconcile's job. Every container a runtime
//! makes carries the replica's identity (Docker labels `drover.replica`,
//! `drover.deployment`, `drover.node`, …; the process runtime's state file), so
//! [`Runtime::list`] after an agent restart finds the same containers again and
//! the agent adopts them instead of starting new ones.
//!
//! Events are a broadcast: a subscriber that falls behind gets `Lagged` from
//! the channel and must re-list, which [`RuntimeEvent::Resync`] also asks for
//! (e.g. after the Docker event stream reconnects).

pub mod docker;
pub mod log_files;
pub mod previous;
pub mod process;
pub mod sim;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::broadcast;

use crate::assignment::Assignment;
use crate::error::Result;

pub use docker::DockerRuntime;
pub use process::ProcessRuntime;
pub use sim::SimRuntime;

/// Milliseconds since the Unix epoch (wall clock, as reported to controllers).
pub type UnixMs = i64;

/// Labels (Docker) and state-file fields (process) naming a replica's container.
pub mod labels {
    pub const REPLICA: &str = "drover.replica";
    pub const DEPLOYMENT: &str = "drover.deployment";
    pub const NODE: &str = "drover.node";
    pub const NAMESPACE: &str = "drover.namespace";
    pub const REVISION: &str = "drover.revision";
    /// SHA-256 of the pod template (hex): "same spec" is decided on it, not
    /// on the short revision in the replica's name.
    pub const SPEC_HASH: &str = "drover.spec-sha256";
    pub const SLOT: &str = "drover.slot";
    /// How many times the agent had restarted the replica when it made this
    /// container: keeps the RESTARTS count across agent restarts.
    pub const RESTARTS: &str = "drover.restarts";
}

/// The container name drover gives a replica on a node:
/// `drover-<namespace>.<replica>_<node>`. The node is part of it because
/// agents of a lab may share one Docker engine: a replica moved off a dead
/// node must not collide with the dead node's leftover container. `_` never
/// occurs in namespace, replica or node names, so the parts stay apart.
pub fn container_name(replica: &str, node: &str) -> String {
    format!("drover-{replica}_{node}")
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code; 128+N for death by signal N. -1 when unknown (a process
    /// adopted after an agent restart is no child of the agent).
    pub code: i64,
    pub oom_killed: bool,
    pub finished_unix_ms: UnixMs,
}

impl Exit {
    /// Kubernetes' `lastState.terminated.reason`.
    pub fn reason(&self) -> &'static str {
        if self.oom_killed {
            "OOMKilled"
        } else if self.code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// What a container is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created but never started (the agent stopped between create and start).
    Created,
    Running,
    Exited(Exit),
}

/// One container drover made on this node, as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub replica: String,
    pub namespace: String,
    pub deployment: String,
    pub revision: String,
    /// SHA-256 of the pod template it was made from (empty for a container
    /// made by an agent from before this was recorded).
    pub spec_hash: String,
    pub container_id: String,
    pub image: String,
    /// The replica's restart count when this container was made.
    pub restarts: u32,
    /// 0 when it never started.
    pub started_unix_ms: UnixMs,
    pub state: ContainerState,
    /// The stop grace period it was created with (its replica's
    /// `terminationGracePeriodSeconds`), used when the assignment is gone.
    pub grace: Option<Duration>,
    /// Where its container ports are published on the node while it runs
    /// (Docker; empty for plain processes, which listen on the node itself).
    pub published_ports: Vec<PublishedPort>,
}

/// A container port published on a host port of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    pub container_port: u16,
    pub protocol: drover_manifest::Protocol,
    pub host_port: u16,
}

impl Observed {
    pub fn is_running(&self) -> bool {
        self.state == ContainerState::Running
    }

    /// The agent killed it: a running container is known to have stopped
    /// (SIGTERM's 143) even before the runtime reports the exit.
    pub fn killed(&mut self, now: UnixMs) {
        if self.is_running() {
            self.state = ContainerState::Exited(Exit {
                code: 143,
                oom_killed: false,
                finished_unix_ms: now,
            });
        }
    }
}

/// What a replica has used: CPU time so far (a counter) and memory now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Consumed {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use now (resident, without page cache where the runtime
    /// can tell them apart).
    pub memory_bytes: u64,
}

/// Something that happened to a container without the agent asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The container's main process ended.
    Exited {
        replica: String,
        container_id: String,
        exit: Exit,
    },
    /// The container disappeared (e.g. `docker rm -f` by a person).
    Removed {
        replica: String,
        container_id: String,
    },
    /// Events may have been missed: list everything again.
    Resync,
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    Stdout,
    Stderr,
}

impl LogSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
        }
    }
}

/// A piece of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub source: LogSource,
    pub data: Vec<u8>,
}

/// What a logs request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new output until the container stops.
    pub follow: bool,
    /// Only the last N lines (None: everything).
    pub tail: Option<u32>,
    /// The replica's previous run (what [`Runtime::keep_previous`] kept)
    /// instead of its current container.
    pub previous: bool,
    /// Only output written at or after this time.
    pub since_unix_ms: Option<UnixMs>,
    /// Prefix every line with the RFC 3339 time it was written.
    pub timestamps: bool,
}

/// The most of a replica's previous run that is kept, per stream: the
/// Docker log cap of one file (`max-size`), so keeping it never holds more
/// than the running container's own log may.
pub const PREVIOUS_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// A terminal's size, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u16,
    pub rows: u16,
}

/// What `droverctl exec` runs in a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Program and arguments (no shell in between).
    pub command: Vec<String>,
    /// Whether stdin is attached (else the command reads end-of-file).
    pub stdin: bool,
    /// A pseudo-terminal of this size, or plain pipes.
    pub tty: Option<WindowSize>,
}

/// Input to a running exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    Stdin(Vec<u8>),
    /// End of stdin: the command reads end-of-file.
    CloseStdin,
    Resize(WindowSize),
}

/// A command running inside a replica for a person. The output channel
/// closes when the command has closed its output; `exit` then gives its
/// code. Dropping the session ends the command where the runtime can (a
/// process is killed; Docker has no exec-kill, its exec ends with its
/// container or its own input).
pub struct ExecSession {
    /// The container the command runs in: the session ends when it stops.
    pub container_id: String,
    pub input: tokio::sync::mpsc::Sender<ExecInput>,
    /// Output in arrival order; with a tty everything is `Stdout`.
    pub output: tokio::sync::mpsc::Receiver<LogChunk>,
    pub exit: Pin<Box<dyn Future<Output = Result<i64>> + Send>>,
}

/// A stream of log chunks; it ends when the output is exhausted (or, when
/// following, when the container stops).
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk>> + Send>>;

/// The result of running a command inside a replica (probes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// stdout and stderr, in the order they arrived where the runtime knows it.
    pub output: Vec<u8>,
}

/// A container runtime: what the agent needs from Docker, plain processes or
/// the hollow simulator.
pub trait Runtime: Send + Sync + 'static {
    /// `"docker"`, `"process"` or `"sim"` (reported in Hello).
    fn kind(&self) -> &'static str;

    /// Every container drover made on this node, running or not.
    fn list(&self) -> impl Future<Output = Result<Vec<Observed>>> + Send;

    /// Create and start the replica's container; `restarts` is recorded on it.
    /// The image is fetched first when the runtime has images.
    fn start(
        &self,
        assignment: &Assignment,
        restarts: u32,
    ) -> impl Future<Output = Result<Observed>> + Send;

    /// Ask the container to stop (SIGTERM), SIGKILL it after `grace`, and
    /// return once it has stopped. Stopping a stopped container is fine.
    fn stop(&self, container_id: &str, grace: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Delete a stopped container and what belongs to it (logs included).
    /// A running one is killed first.
    fn remove(&self, container_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Subscribe to exits and removals that the agent did not ask for.
    fn events(&self) -> broadcast::Receiver<RuntimeEvent>;

    /// The output of the replica's current (newest) container.
    fn logs(
        &self,
        replica: &str,
        opts: LogOptions,
    ) -> impl Future<Output = Result<LogStream>> + Send;

    /// Run a command inside the replica (exec probes), killed after `timeout`
    /// where the runtime can.
    fn exec(
        &self,
        replica: &str,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;

    /// Start a command in the replica for a person (`droverctl exec`, `cp`),
    /// its input and output streamed.
    fn exec_session(
        &self,
        replica: &str,
        spec: ExecSpec,
    ) -> impl Future<Output = Result<ExecSession>> + Send;

    /// Keep the output of `container_id`, the replica's run that just ended,
    /// as its previous run (`logs --previous`), before the container and its
    /// logs are removed for a restart. Replaces the run kept before.
    fn keep_previous(
        &self,
        replica: &str,
        container_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Delete what [`Runtime::keep_previous`] kept of a replica that left
    /// this node.
    fn forget_previous(&self, replica: &str);

    /// Where the agent connects to reach the replica's container port `port`
    /// (httpGet and tcpSocket probes): the container's address on its
    /// network, a mapped host port, or loopback for plain processes.
    fn probe_address(
        &self,
        replica: &str,
        port: u16,
    ) -> impl Future<Output = Result<SocketAddr>> + Send;

    /// What each running replica has used, by replica id (`droverctl top`).
    /// A runtime that runs nothing real (the simulator) reports nothing.
    fn usage(&self) -> impl Future<Output = Result<BTreeMap<String, Consumed>>> + Send {
        async { Ok(BTreeMap::new()) }
    }
}

/// Capacity of every runtime's event channel.
pub(crate) const EVENT_CAPACITY: usize = 1024;

/// The wall clock now, in Unix milliseconds. Only runners call this; the
/// reconcile and backoff take `now` as an argument.
pub fn now_unix_ms() -> UnixMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Keep the last `n` lines of `data` (a final line without newline counts).
pub(crate) fn tail_lines(data: &[u8], n: u32) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0u32;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\nc\n", 5), b"a\nb\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc\n", 0), b"");
        assert_eq!(tail_lines(b"", 3), b"");
    }

    #[test]
    fn exit_reasons_follow_kubernetes() {
        let exit = |code, oom_killed| Exit {
            code,
            oom_killed,
            finished_unix_ms: 0,
        };
        assert_eq!(exit(0, false).reason(), "Completed");
        assert_eq!(exit(1, false).reason(), "Error");
        assert_eq!(exit(137, true).reason(), "OOMKilled");
    }
}
