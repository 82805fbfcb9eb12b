//! The simulated runtime: hollow replicas that "run" the instant they are
//! started and never use a CPU cycle (kubemark's hollow nodes). Used by scale
//! benchmarks, where a thousand agents live in one process, and by tests that
//! need to crash a replica on cue ([`SimRuntime::crash`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;

use super::{
    now_unix_ms, ContainerState, ExecOutput, ExecSession, ExecSpec, Exit, LogChunk, LogOptions,
    LogSource, LogStream, Observed, Runtime, RuntimeEvent, EVENT_CAPACITY,
};
use crate::assignment::Assignment;
use crate::error::{AgentError, Result};

/// Runs nothing, convincingly.
pub struct SimRuntime {
    /// By container id.
    containers: Mutex<BTreeMap<String, Observed>>,
    next_id: AtomicU64,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Default for SimRuntime {
    fn default() -> Self {
        SimRuntime::new()
    }
}

impl SimRuntime {
    pub fn new() -> SimRuntime {
        SimRuntime {
            containers: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            events: broadcast::channel(EVENT_CAPACITY).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Observed>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the replica's running container exit with `code`, as if it had
    /// crashed. Returns false when it runs no container.
    pub fn crash(&self, replica: &str, code: i64, oom_killed: bool) -> bool {
        let exit = Exit {
            code,
            oom_killed,
            finished_unix_ms: now_unix_ms(),
        };
        let id = {
            let mut containers = self.lock();
            let Some(c) = containers
                .values_mut()
                .find(|c| c.replica == replica && c.is_running())
            else {
                return false;
            };
            c.state = ContainerState::Exited(exit);
            c.container_id.clone()
        };
        let _ = self.events.send(RuntimeEvent::Exited {
            replica: replica.to_string(),
            container_id: id,
            exit,
        });
        true
    }
}

impl Runtime for SimRuntime {
    fn kind(&self) -> &'static str {
        "sim"
    }

    async fn list(&self) -> Result<Vec<Observed>> {
        let mut out: Vec<Observed> = self.lock().values().cloned().collect();
        out.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(out)
    }

    async fn start(&self, a: &Assignment, restarts: u32) -> Result<Observed> {
        let id = format!("sim-{:08}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let observed = Observed {
            replica: a.replica.clone(),
            namespace: a.namespace.clone(),
            deployment: a.deployment.clone(),
            revision: a.revision.clone(),
            spec_hash: a.spec_hash.clone(),
            container_id: id.clone(),
            image: a.container().image.clone(),
            restarts,
            started_unix_ms: now_unix_ms(),
            state: ContainerState::Running,
            grace: Some(a.grace()),
            published_ports: Vec::new(),
        };
        self.lock().insert(id, observed.clone());
        Ok(observed)
    }

    async fn stop(&self, container_id: &str, _grace: Duration) -> Result<()> {
        let mut containers = self.lock();
        let c = containers
            .get_mut(container_id)
            .ok_or_else(|| AgentError::NoSuchContainer {
                id: container_id.to_string(),
            })?;
        if c.is_running() {
            c.state = ContainerState::Exited(Exit {
                code: 143,
                oom_killed: false,
                finished_unix_ms: now_unix_ms(),
            });
        }
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<()> {
        self.lock().remove(container_id);
        Ok(())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn logs(&self, replica: &str, _opts: LogOptions) -> Result<LogStream> {
        if !self.lock().values().any(|c| c.replica == replica) {
            return Err(AgentError::UnknownReplica(replica.to_string()));
        }
        let line = LogChunk {
            source: LogSource::Stdout,
            data: format!("{replica} is a simulated replica: it writes no output\n").into_bytes(),
        };
        Ok(Box::pin(futures_util::stream::iter([Ok(line)])))
    }

    async fn exec(
        &self,
        replica: &str,
        _command: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput> {
        if !self
            .lock()
            .values()
            .any(|c| c.replica == replica && c.is_running())
        {
            return Err(AgentError::UnknownReplica(replica.to_string()));
        }
        Ok(ExecOutput {
            exit_code: 0,
            output: Vec::new(),
        })
    }

    async fn exec_session(&self, replica: &str, _spec: ExecSpec) -> Result<ExecSession> {
        Err(AgentError::Unsupported(format!(
            "replica {replica} is simulated: there is nothing to run a command in"
        )))
    }

    async fn keep_previous(&self, _replica: &str, _container_id: &str) -> Result<()> {
        Ok(())
    }

    fn forget_previous(&self, _replica: &str) {}

    /// Simulated replicas have no network: httpGet and tcpSocket probes
    /// against them fail with this error (exec probes pass).
    async fn probe_address(&self, replica: &str, _port: u16) -> Result<SocketAddr> {
        Err(AgentError::StartFailed(format!(
            "replica {replica} is simulated and listens on no port"
        )))
    }
}
