//! The process runtime: a replica's `command` + `args` run as a plain child
//! process of the agent (like Nomad's raw_exec), for hosts without Docker and
//! for lab hosts that are themselves containers.
//!
//! ```text
//!   <data-dir>/process/
//!     state.json                  every container: pid, start time, labels,
//!                                 exit (written before each answer)
//!     logs/<container>.stdout     written by the container's log shims, one
//!     logs/<container>.stderr     per stream, rotated (.1, .2: log_files.rs);
//!                                 shims outlive an agent restart, as replicas do
//!     work/<replica>/             working directory unless workingDir is set
//! ```
//!
//! Each child leads its own process group, so a stop signals the whole tree
//! (SIGTERM, then SIGKILL after the grace period) and a Ctrl-C aimed at the
//! agent's terminal does not reach it. Exits of the agent's own children come
//! from `wait()`; after an agent restart the children are orphans the agent
//! cannot wait for, so adopted processes are watched through `/proc` (pid and
//! kernel start time, to rule out pid reuse) and their exit code is unknown
//! (-1). Images, host ports and resource limits do not apply here.
//!
//! A replica's environment is built from nothing: `HOSTNAME` (the replica),
//! `PATH` (the agent's, else the usual default) and the manifest's `env`,
//! which may override both. Nothing else of the agent's own environment
//! (`DROVER_JOIN_TOKEN`, ...) reaches a replica, nor an `exec` in it. The
//! state file (0600) holds values that came from Secrets empty; an exec in
//! a process adopted after an agent restart reads them back from the
//! process's own `/proc/<pid>/environ`.
//!
//! Volumes: a process cannot have another root, so each `volumeMounts[]`
//! entry is a symlink in its working directory to the volume's directory on
//! the host (`mountPath: /etc/app` is `./etc/app`); `readOnly` is not
//! enforced; a `workingDir` of the host's cannot be combined with mounts.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::log_files::{self, LogLimits};
use super::previous::{PreviousLogs, Record};
use super::{
    now_unix_ms, tail_lines, Consumed, ContainerState, ExecInput, ExecOutput, ExecSession,
    ExecSpec, Exit, LogChunk, LogOptions, LogSource, LogStream, Observed, Runtime, RuntimeEvent,
    UnixMs, WindowSize, EVENT_CAPACITY, PREVIOUS_LOG_BYTES,
};
use crate::assignment::Assignment;
use crate::error::{AgentError, Result};

/// How often adopted processes and followed logs are polled.
const POLL: Duration = Duration::from_millis(200);
/// After SIGKILL, how long to wait for the kernel to reap the group.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Only this much of a log file is read for a tail.
const TAIL_WINDOW: u64 = 16 * 1024 * 1024;

/// One process "container" as written to the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    container_id: String,
    replica: String,
    namespace: String,
    deployment: String,
    revision: String,
    #[serde(default)]
    spec_hash: String,
    image: String,
    restarts: u32,
    /// Also the process group id.
    pid: i32,
    /// Field 22 of /proc/<pid>/stat: tells the process from a later one that
    /// reused its pid.
    start_ticks: u64,
    started_unix_ms: UnixMs,
    env: Vec<(String, String)>,
    /// Variables whose values came from Secrets: the state file holds them
    /// empty, and an adopted process's are read back from
    /// `/proc/<pid>/environ` when an exec needs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secret_env: Vec<String>,
    working_dir: PathBuf,
    /// terminationGracePeriodSeconds of the replica.
    #[serde(default)]
    grace_secs: Option<u64>,
    exit: Option<ExitRecord>,
    /// The log shims writing its stdout and stderr: (pid, start ticks).
    #[serde(default)]
    shims: Vec<(i32, u64)>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct ExitRecord {
    code: i64,
    finished_unix_ms: UnixMs,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    node: String,
    containers: Vec<Entry>,
}

struct Inner {
    dir: PathBuf,
    node: String,
    logs: LogLimits,
    /// The drover-agent binary, run as `__log-shim` for each log stream.
    shim: PathBuf,
    /// By container id.
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Held while the state file is written: concurrent writers would share
    /// its temp file (one rename then fails) and could put an older snapshot
    /// over a newer one.
    persisting: Mutex<()>,
    events: broadcast::Sender<RuntimeEvent>,
    cancel: CancellationToken,
}

/// Runs replicas as child processes.
pub struct ProcessRuntime {
    inner: Arc<Inner>,
    _watchers: DropGuard,
}

impl ProcessRuntime {
    /// Open (or create) the runtime's state under `data_dir/process` and
    /// adopt the processes it lists that still run; logs rotate with
    /// Docker's defaults (10 MiB × 3).
    pub fn open(data_dir: &Path, node: &str) -> Result<ProcessRuntime> {
        ProcessRuntime::open_with(data_dir, node, LogLimits::default())
    }

    /// [`ProcessRuntime::open`] with the agent's `--log-max-size` and
    /// `--log-max-file`.
    pub fn open_with(data_dir: &Path, node: &str, logs: LogLimits) -> Result<ProcessRuntime> {
        let shim = shim_program()?;
        let dir = data_dir.join("process");
        for sub in ["logs", "work"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| AgentError::io(format!("creating {}", dir.join(sub).display()), e))?;
        }
        let state_path = dir.join("state.json");
        let state: StateFile = match std::fs::read(&state_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    let aside = dir.join("state.json.corrupt");
                    warn!(path = %state_path.display(), error = %e, aside = %aside.display(),
                        "process runtime state is unreadable; starting empty");
                    let _ = std::fs::rename(&state_path, &aside);
                    StateFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => {
                return Err(AgentError::io(
                    format!("reading {}", state_path.display()),
                    e,
                ))
            }
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let cancel = CancellationToken::new();
        let mut entries = BTreeMap::new();
        let mut adopted = Vec::new();
        for mut e in state.containers {
            if e.exit.is_none() {
                if is_alive(e.pid, e.start_ticks) {
                    adopted.push(e.container_id.clone());
                } else {
                    // It ended while no agent was watching.
                    e.exit = Some(ExitRecord {
                        code: -1,
                        finished_unix_ms: now_unix_ms(),
                    });
                }
            }
            entries.insert(e.container_id.clone(), e);
        }
        let inner = Arc::new(Inner {
            dir,
            node: node.to_string(),
            logs,
            shim,
            entries: Mutex::new(entries),
            persisting: Mutex::new(()),
            events,
            cancel: cancel.clone(),
        });
        inner.persist()?;
        for id in adopted {
            info!(container = %id, "adopting a running process");
            tokio::spawn(watch_adopted(inner.clone(), id));
        }
        Ok(ProcessRuntime {
            inner,
            _watchers: cancel.drop_guard(),
        })
    }

    /// The directory holding the state file, logs and work directories.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert or field write): keep going.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the state file (atomically: temp file, then rename).
    fn persist(&self) -> Result<()> {
        let _writing = self.persisting.lock().unwrap_or_else(|p| p.into_inner());
        let state = StateFile {
            node: self.node.clone(),
            containers: self.lock().values().map(Entry::without_secrets).collect(),
        };
        self.write_state(&state)
    }

    /// Mode 0600 (it holds replicas' env values), through a temp file
    /// created exclusively and renamed over the old state.
    fn write_state(&self, state: &StateFile) -> Result<()> {
        let path = self.dir.join("state.json");
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| AgentError::io("encoding the process state", std::io::Error::other(e)))?;
        drover_pki::write_secret(&path, &text).map_err(|e| {
            AgentError::io(
                "writing the process state",
                std::io::Error::other(e.to_string()),
            )
        })
    }

    fn previous(&self) -> PreviousLogs {
        PreviousLogs::new(self.dir.join("previous"))
    }

    /// Whether the container's process and its log shims are all gone:
    /// nothing more will be written to its logs.
    fn finished(&self, container_id: &str) -> bool {
        match self.lock().get(container_id) {
            None => true,
            Some(e) => {
                e.exit.is_some() && e.shims.iter().all(|(pid, ticks)| !is_alive(*pid, *ticks))
            }
        }
    }

    /// Until the container's log shims have written everything (they end
    /// once the last writer of their pipe is gone), for at most `limit`.
    async fn logs_written(&self, container_id: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.finished(container_id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_paths(&self, container_id: &str) -> (PathBuf, PathBuf) {
        let logs = self.dir.join("logs");
        (
            logs.join(format!("{container_id}.stdout")),
            logs.join(format!("{container_id}.stderr")),
        )
    }

    /// Record an exit (once) and tell subscribers.
    fn on_exit(&self, container_id: &str, exit: Exit) {
        let replica = {
            let mut entries = self.lock();
            let Some(e) = entries.get_mut(container_id) else {
                return;
            };
            if e.exit.is_some() {
                return;
            }
            e.exit = Some(ExitRecord {
                code: exit.code,
                finished_unix_ms: exit.finished_unix_ms,
            });
            e.replica.clone()
        };
        if let Err(e) = self.persist() {
            warn!(error = %e, "could not record a process exit in the state file");
        }
        debug!(container = container_id, replica = %replica, code = exit.code, "process exited");
        let _ = self.events.send(RuntimeEvent::Exited {
            replica,
            container_id: container_id.to_string(),
            exit,
        });
    }

    fn exited(&self, container_id: &str) -> bool {
        self.lock()
            .get(container_id)
            .is_none_or(|e| e.exit.is_some())
    }

    /// The replica's newest container.
    fn newest(&self, replica: &str) -> Option<Entry> {
        self.lock()
            .values()
            .filter(|e| e.replica == replica)
            .max_by_key(|e| (e.exit.is_none(), e.started_unix_ms))
            .cloned()
    }
}

impl Entry {
    /// The entry as the state file holds it: Secret-derived values blank.
    fn without_secrets(&self) -> Entry {
        let mut e = self.clone();
        for (name, value) in e.env.iter_mut() {
            if e.secret_env.contains(name) {
                value.clear();
            }
        }
        e
    }

    /// Put back the Secret-derived values an adopted entry lost, from the
    /// running process's own environment.
    fn restore_secrets(&mut self) {
        let lost = self
            .env
            .iter()
            .any(|(name, value)| value.is_empty() && self.secret_env.contains(name));
        if !lost {
            return;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{}/environ", self.pid)) else {
            return;
        };
        if !is_alive(self.pid, self.start_ticks) {
            return;
        }
        let live: BTreeMap<String, String> = raw
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let text = String::from_utf8_lossy(kv);
                text.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        for (name, value) in self.env.iter_mut() {
            if value.is_empty() && self.secret_env.contains(name) {
                if let Some(v) = live.get(name) {
                    value.clone_from(v);
                }
            }
        }
    }

    fn observed(&self) -> Observed {
        Observed {
            replica: self.replica.clone(),
            namespace: self.namespace.clone(),
            deployment: self.deployment.clone(),
            revision: self.revision.clone(),
            spec_hash: self.spec_hash.clone(),
            container_id: self.container_id.clone(),
            image: self.image.clone(),
            restarts: self.restarts,
            started_unix_ms: self.started_unix_ms,
            grace: self.grace_secs.map(Duration::from_secs),
            published_ports: Vec::new(),
            state: match self.exit {
                None => ContainerState::Running,
                Some(x) => ContainerState::Exited(Exit {
                    code: x.code,
                    oom_killed: false,
                    finished_unix_ms: x.finished_unix_ms,
                }),
            },
        }
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn list(&self) -> Result<Vec<Observed>> {
        let mut out: Vec<Observed> = self.inner.lock().values().map(Entry::observed).collect();
        out.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(out)
    }

    async fn start(&self, assignment: &Assignment, restarts: u32) -> Result<Observed> {
        let c = assignment.container();
        let argv: Vec<String> = c.command.iter().chain(c.args.iter()).cloned().collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(AgentError::InvalidSpec(
                "the process runtime needs the container's command or args (there is no image to take them from)".into(),
            ));
        };
        if c.working_dir.is_some() && !assignment.mounts().is_empty() {
            return Err(AgentError::InvalidSpec(
                "the process runtime maps volumeMounts under the replica's own working directory; \
                 drop workingDir to use volumes"
                    .into(),
            ));
        }
        let working_dir = match &c.working_dir {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if !dir.is_dir() {
                    return Err(AgentError::StartFailed(format!(
                        "working directory {} does not exist on this host",
                        dir.display()
                    )));
                }
                dir
            }
            None => {
                let dir = self.inner.dir.join("work").join(&assignment.replica);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| AgentError::io(format!("creating {}", dir.display()), e))?;
                link_mounts(&dir, assignment.mounts())?;
                dir
            }
        };
        let container_id = format!("proc-{:016x}", rand::random::<u64>());
        let (out_path, err_path) = self.inner.log_paths(&container_id);
        // Each stream goes through a pipe to its shim; the shims start first
        // so the replica never writes into a pipe nobody reads.
        let (out_read, stdout) = log_pipe()?;
        let (err_read, stderr) = log_pipe()?;
        let shims = [
            spawn_shim(&self.inner, &out_path, out_read)?,
            spawn_shim(&self.inner, &err_path, err_read)?,
        ];
        let resolved = assignment.env();
        let secret_env: Vec<String> = resolved
            .iter()
            .filter(|e| e.secret)
            .map(|e| e.name.clone())
            .collect();
        let env = replica_env(
            assignment.hostname(),
            resolved.into_iter().map(|e| (e.name, e.value)),
        );
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            // Its own group: stop signals the tree; terminal signals miss it.
            .process_group(0)
            // Replicas outlive the agent (they are adopted on restart).
            .kill_on_drop(false);
        let spawned = cmd.spawn();
        // The pipes' write ends now belong to the child alone: the shims
        // see the end of their input when its process tree is gone.
        drop(cmd);
        let mut child = spawned.map_err(|e| {
            log_files::remove_all(&out_path, self.inner.logs.max_files);
            log_files::remove_all(&err_path, self.inner.logs.max_files);
            if e.kind() == std::io::ErrorKind::NotFound {
                AgentError::StartFailed(format!("cannot run {program:?}: no such file or command"))
            } else {
                AgentError::StartFailed(format!("cannot run {program:?}: {e}"))
            }
        })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| AgentError::StartFailed(format!("{program:?} exited at once")))?;
        let entry = Entry {
            container_id: container_id.clone(),
            replica: assignment.replica.clone(),
            namespace: assignment.namespace.clone(),
            deployment: assignment.deployment.clone(),
            revision: assignment.revision.clone(),
            spec_hash: assignment.spec_hash.clone(),
            image: c.image.clone(),
            restarts,
            pid,
            start_ticks: stat(pid).map(|s| s.start_ticks).unwrap_or(0),
            started_unix_ms: now_unix_ms(),
            env,
            secret_env,
            working_dir,
            grace_secs: Some(assignment.grace().as_secs()),
            exit: None,
            shims: shims.to_vec(),
        };
        let observed = entry.observed();
        self.inner.lock().insert(container_id.clone(), entry);
        info!(replica = %assignment.replica, container = %container_id, pid, "process started");
        // Wait for it before anything can fail: the process runs from here on.
        let inner = self.inner.clone();
        let waited_id = container_id.clone();
        tokio::spawn(async move {
            let container_id = waited_id;
            let exit = match child.wait().await {
                Ok(status) => Exit {
                    code: status
                        .code()
                        .map(i64::from)
                        .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
                        .unwrap_or(-1),
                    oom_killed: false,
                    finished_unix_ms: now_unix_ms(),
                },
                Err(e) => {
                    warn!(container = %container_id, error = %e, "waiting for a child failed");
                    Exit {
                        code: -1,
                        oom_killed: false,
                        finished_unix_ms: now_unix_ms(),
                    }
                }
            };
            inner.on_exit(&container_id, exit);
        });
        // The process runs and is tracked in memory: a failed write of the
        // state file only risks losing it across an agent restart, so it is
        // a warning, not a failed start (which would start it a second time).
        if let Err(e) = self.inner.persist() {
            warn!(container = %container_id, error = %e, "cannot write the process state file");
        }
        Ok(observed)
    }

    async fn stop(&self, container_id: &str, grace: Duration) -> Result<()> {
        let leader = {
            let entries = self.inner.lock();
            let e = entries
                .get(container_id)
                .ok_or_else(|| AgentError::NoSuchContainer {
                    id: container_id.to_string(),
                })?;
            if e.exit.is_some() {
                return Ok(());
            }
            (e.pid, e.start_ticks)
        };
        signal_group(leader, Signal::SIGTERM);
        if wait_exited(&self.inner, container_id, grace).await {
            return Ok(());
        }
        info!(
            container = container_id,
            ?grace,
            "grace period over; killing the process group"
        );
        signal_group(leader, Signal::SIGKILL);
        if wait_exited(&self.inner, container_id, KILL_WAIT).await {
            Ok(())
        } else {
            Err(AgentError::Timeout {
                what: format!("stopping process container {container_id}"),
                after: grace + KILL_WAIT,
            })
        }
    }

    async fn remove(&self, container_id: &str) -> Result<()> {
        let Some(entry) = self.inner.lock().remove(container_id) else {
            return Ok(());
        };
        // Reaches stragglers of this container's own group even after its
        // leader exited (a pid is not reused while a group with that id
        // exists), and nobody else's group (see `signal_group`).
        signal_group((entry.pid, entry.start_ticks), Signal::SIGKILL);
        let (out, err) = self.inner.log_paths(container_id);
        log_files::remove_all(&out, self.inner.logs.max_files);
        log_files::remove_all(&err, self.inner.logs.max_files);
        let default_dir = self.inner.dir.join("work").join(&entry.replica);
        let replica_left = self
            .inner
            .lock()
            .values()
            .any(|e| e.replica == entry.replica);
        if entry.working_dir == default_dir && !replica_left {
            let _ = std::fs::remove_dir_all(&default_dir);
        }
        self.inner.persist()
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn logs(&self, replica: &str, opts: LogOptions) -> Result<LogStream> {
        if opts.previous {
            let chunks = self.inner.previous().read(replica, &opts).await?;
            return Ok(Box::pin(futures_util::stream::iter(
                chunks.into_iter().map(Ok),
            )));
        }
        if opts.timestamps || opts.since_unix_ms.is_some() {
            return Err(AgentError::Unsupported(
                "the process runtime does not record when each line was written: --since and --timestamps need the docker runtime".into(),
            ));
        }
        let entry = self
            .inner
            .newest(replica)
            .ok_or_else(|| AgentError::UnknownReplica(replica.to_string()))?;
        let (out, err) = self.inner.log_paths(&entry.container_id);
        let max_files = self.inner.logs.max_files;
        // A few chunks in flight at most: a slow reader holds the agent to
        // about 2 MiB per stream, whatever the log's size.
        let (tx, rx) = mpsc::channel(8);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let files = [(LogSource::Stdout, out), (LogSource::Stderr, err)];
            let mut followers = Vec::with_capacity(2);
            for (source, path) in &files {
                // Every file of the log is opened before any is read, so a
                // rotation while they are read neither skips nor repeats a
                // byte (the handles keep their files whatever their names).
                let mut segments = match open_segments(path, max_files).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let current = match segments.last() {
                    Some((p, _)) if p == path => segments.pop().map(|(_, f)| f),
                    _ => None,
                };
                let mut current = current;
                let sent = match opts.tail {
                    // The whole log, in bounded chunks: never one message
                    // (nor one buffer) as large as the file.
                    None => {
                        let mut all: Vec<&mut tokio::fs::File> =
                            segments.iter_mut().map(|(_, f)| f).collect();
                        if let Some(f) = current.as_mut() {
                            all.push(f);
                        }
                        send_files(all, *source, &tx).await
                    }
                    Some(n) => {
                        let mut all: Vec<&mut tokio::fs::File> =
                            segments.iter_mut().map(|(_, f)| f).collect();
                        if let Some(f) = current.as_mut() {
                            all.push(f);
                        }
                        match read_tail(all, n).await {
                            Ok(data) if data.is_empty() => true,
                            Ok(data) => tx
                                .send(Ok(LogChunk {
                                    source: *source,
                                    data,
                                }))
                                .await
                                .is_ok(),
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                false
                            }
                        }
                    }
                };
                if !sent {
                    return;
                }
                followers.push(Follower::new(path.clone(), max_files, *source, current).await);
            }
            if !opts.follow {
                return;
            }
            loop {
                // Read what is there first, then stop if the process and its
                // shims are gone: the last lines it wrote are not lost.
                let done = inner.finished(&entry.container_id);
                if !inner.lock().contains_key(&entry.container_id) {
                    // Removed while following: the stream simply ends.
                    return;
                }
                let mut any = false;
                for f in followers.iter_mut() {
                    match f.next().await {
                        Ok(data) if !data.is_empty() => {
                            any = true;
                            if tx
                                .send(Ok(LogChunk {
                                    source: f.source,
                                    data,
                                }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
                if done && !any {
                    return;
                }
                if !any {
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn exec(
        &self,
        replica: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let mut entry = self
            .inner
            .newest(replica)
            .filter(|e| e.exit.is_none())
            .ok_or_else(|| AgentError::UnknownReplica(replica.to_string()))?;
        entry.restore_secrets();
        let Some((program, args)) = command.split_first() else {
            return Err(AgentError::InvalidSpec("the exec command is empty".into()));
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(entry.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&entry.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| AgentError::StartFailed(format!("cannot run {program:?}: {e}")))?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                let mut output = out.stdout;
                output.extend_from_slice(&out.stderr);
                Ok(ExecOutput {
                    exit_code: out
                        .status
                        .code()
                        .map(i64::from)
                        .or_else(|| out.status.signal().map(|s| 128 + i64::from(s)))
                        .unwrap_or(-1),
                    output,
                })
            }
            Ok(Err(e)) => Err(AgentError::io(format!("running {program:?}"), e)),
            Err(_) => Err(AgentError::Timeout {
                what: format!("exec in replica {replica}"),
                after: timeout,
            }),
        }
    }

    async fn exec_session(&self, replica: &str, spec: ExecSpec) -> Result<ExecSession> {
        let mut entry = self
            .inner
            .newest(replica)
            .ok_or_else(|| AgentError::UnknownReplica(replica.to_string()))?;
        entry.restore_secrets();
        if entry.exit.is_some() {
            return Err(AgentError::Unsupported(format!(
                "replica {replica} is not running (its process exited); exec needs a running replica"
            )));
        }
        exec::start(&entry, spec)
    }

    async fn keep_previous(&self, replica: &str, container_id: &str) -> Result<()> {
        // The shims write the last lines a moment after the process exits.
        self.inner
            .logs_written(container_id, Duration::from_secs(2))
            .await;
        let (out, err) = self.inner.log_paths(container_id);
        let mut records = Vec::new();
        for (source, path) in [(LogSource::Stdout, out), (LogSource::Stderr, err)] {
            let segments = open_segments(&path, self.inner.logs.max_files).await?;
            let data = read_last(
                segments.into_iter().map(|(_, f)| f).collect(),
                PREVIOUS_LOG_BYTES,
            )
            .await
            .map_err(|e| AgentError::io(format!("reading {}", path.display()), e))?;
            if !data.is_empty() {
                records.push(Record {
                    source,
                    at: None,
                    data,
                });
            }
        }
        self.inner.previous().keep(replica, records).await
    }

    fn forget_previous(&self, replica: &str) {
        self.inner.previous().forget(replica)
    }

    /// Processes share the host's network: the port is on loopback.
    async fn probe_address(&self, replica: &str, port: u16) -> Result<SocketAddr> {
        self.inner
            .newest(replica)
            .filter(|e| e.exit.is_none())
            .ok_or_else(|| AgentError::UnknownReplica(replica.to_string()))?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Each running replica's process group, summed from /proc: every process
    /// whose group is the one its leader made (children a replica forks are
    /// in it), with the CPU time of children they already reaped.
    async fn usage(&self) -> Result<BTreeMap<String, Consumed>> {
        let groups: Vec<(String, i32, u64)> = self
            .inner
            .lock()
            .values()
            .filter(|e| e.exit.is_none())
            .map(|e| (e.replica.clone(), e.pid, e.start_ticks))
            .collect();
        tokio::task::spawn_blocking(move || group_usage(&groups))
            .await
            .map_err(|e| AgentError::io("reading /proc", std::io::Error::other(e.to_string())))
    }
}

/// One process's figures from /proc/<pid>/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcFigures {
    pgrp: i32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
    rss_pages: u64,
}

/// Fields of /proc/<pid>/stat after `comm`: state is 3, pgrp 5, utime 14,
/// stime 15, cutime 16, cstime 17, rss 24 (proc(5), counting from 1).
fn proc_figures(text: &str) -> Option<ProcFigures> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| -> Option<u64> { f.get(i - 3)?.parse().ok() };
    Some(ProcFigures {
        pgrp: f.get(5 - 3)?.parse().ok()?,
        ticks: [n(14)?, n(15)?, n(16)?, n(17)?]
            .into_iter()
            .fold(0u64, u64::saturating_add),
        rss_pages: n(24)?,
    })
}

/// Sum every live process of each `(replica, group leader pid, start
/// ticks)` group in one pass over /proc. A group whose leader is gone or was
/// replaced (pid reuse) is left out.
fn group_usage(groups: &[(String, i32, u64)]) -> BTreeMap<String, Consumed> {
    let live: HashMap<i32, &str> = groups
        .iter()
        .filter(|(_, pid, start)| is_alive(*pid, *start))
        .map(|(replica, pid, _)| (*pid, replica.as_str()))
        .collect();
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    if live.is_empty() {
        return BTreeMap::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // exited meanwhile
        };
        let Some(fig) = proc_figures(&text) else {
            continue;
        };
        if let Some(replica) = live.get(&fig.pgrp) {
            let sum = sums.entry(replica.to_string()).or_default();
            sum.0 = sum.0.saturating_add(fig.ticks);
            sum.1 = sum.1.saturating_add(fig.rss_pages);
        }
    }
    // SAFETY: sysconf only reads a configuration value.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096);
    sums.into_iter()
        .map(|(replica, (ticks, pages))| {
            (
                replica,
                Consumed {
                    cpu_ns: crate::usage::ticks_to_ns(ticks),
                    memory_bytes: pages * page,
                },
            )
        })
        .collect()
}

/// Wait until the container's exit is recorded, up to `limit`.
async fn wait_exited(inner: &Inner, container_id: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if inner.exited(container_id) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll an adopted (non-child) process until it is gone.
async fn watch_adopted(inner: Arc<Inner>, container_id: String) {
    let (pid, start_ticks) = match inner.lock().get(&container_id) {
        Some(e) => (e.pid, e.start_ticks),
        None => return,
    };
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        if !is_alive(pid, start_ticks) {
            inner.on_exit(
                &container_id,
                Exit {
                    code: -1,
                    oom_killed: false,
                    finished_unix_ms: now_unix_ms(),
                },
            );
            return;
        }
    }
}

/// Signal the process group a container's leader `(pid, start_ticks)` made,
/// if it may still exist. A live process with that pid but another start time
/// means the pid was reused, which the kernel does only once no group with
/// that id is left: the container's group is gone, and the one with that id
/// now is someone else's (a later replica, a daemon) and is left alone.
fn signal_group((pgid, start_ticks): (i32, u64), signal: Signal) {
    if pgid <= 1 {
        return;
    }
    if let Some(s) = stat(pgid) {
        if start_ticks != 0 && s.start_ticks != start_ticks {
            debug!(
                pgid,
                ?signal,
                "the container's process group is gone and its id reused; not signalled"
            );
            return;
        }
    }
    if let Err(e) = killpg(Pid::from_raw(pgid), signal) {
        if e != nix::errno::Errno::ESRCH {
            warn!(pgid, ?signal, error = %e, "could not signal a process group");
        }
    }
}

struct Stat {
    state: char,
    start_ticks: u64,
}

/// The state and start time of a process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) may hold spaces and parentheses: fields resume after
    // the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` still is the process that was started (not a zombie, not a
/// later process that reused the pid).
fn is_alive(pid: i32, start_ticks: u64) -> bool {
    match stat(pid) {
        Some(s) => {
            !matches!(s.state, 'Z' | 'X' | 'x')
                && (start_ticks == 0 || s.start_ticks == start_ticks)
        }
        None => false,
    }
}

/// The largest chunk a log stream sends (and the agent holds per read).
pub const LOG_CHUNK_BYTES: u64 = 256 * 1024;

/// The files of a log that exist, oldest first (the current one last), each
/// opened at its start.
async fn open_segments(path: &Path, max_files: u32) -> Result<Vec<(PathBuf, tokio::fs::File)>> {
    let mut out = Vec::new();
    for p in log_files::segments(path, max_files) {
        match tokio::fs::File::open(&p).await {
            Ok(f) => out.push((p, f)),
            // Rotated away between listing and opening: older than what
            // the next file holds, and gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::io(format!("opening {}", p.display()), e)),
        }
    }
    Ok(out)
}

/// At most [`LOG_CHUNK_BYTES`] from where `file` is.
async fn read_chunk(file: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    file.take(LOG_CHUNK_BYTES).read_to_end(&mut data).await?;
    Ok(data)
}

/// Send each file to its end, chunk by chunk; false when the stream ended
/// (receiver gone, or a read failed and was reported).
async fn send_files(
    files: Vec<&mut tokio::fs::File>,
    source: LogSource,
    tx: &mpsc::Sender<Result<LogChunk>>,
) -> bool {
    for file in files {
        loop {
            match read_chunk(file).await {
                Ok(data) if data.is_empty() => break,
                Ok(data) => {
                    if tx.send(Ok(LogChunk { source, data })).await.is_err() {
                        return false;
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(AgentError::io("reading a replica's log", e)))
                        .await;
                    return false;
                }
            }
        }
    }
    true
}

/// The last `limit` bytes of the files taken as one log (oldest first),
/// each file left at its end.
async fn read_last(mut files: Vec<tokio::fs::File>, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut left = limit;
    for file in files.iter_mut().rev() {
        let len = file.metadata().await?.len();
        let take = len.min(left);
        file.seek(std::io::SeekFrom::Start(len - take)).await?;
        let mut data = Vec::new();
        (&mut *file).take(take).read_to_end(&mut data).await?;
        left -= data.len() as u64;
        parts.push(data);
        if left == 0 {
            break;
        }
    }
    parts.reverse();
    Ok(parts.concat())
}

/// The last `n` lines of the files taken as one log, from at most the last
/// [`TAIL_WINDOW`] bytes of it.
async fn read_tail(files: Vec<&mut tokio::fs::File>, n: u32) -> Result<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut left = TAIL_WINDOW;
    let mut lines = 0usize;
    let io = |e| AgentError::io("reading a replica's log", e);
    for file in files.into_iter().rev() {
        let len = file.metadata().await.map_err(io)?.len();
        let take = len.min(left);
        file.seek(std::io::SeekFrom::Start(len - take))
            .await
            .map_err(io)?;
        let mut data = Vec::new();
        (&mut *file)
            .take(take)
            .read_to_end(&mut data)
            .await
            .map_err(io)?;
        // Leave the current file at its end for following.
        file.seek(std::io::SeekFrom::Start(len)).await.map_err(io)?;
        left -= data.len() as u64;
        lines += data.iter().filter(|b| **b == b'\n').count();
        parts.push(data);
        if left == 0 || lines > n as usize {
            break;
        }
    }
    parts.reverse();
    Ok(tail_lines(&parts.concat(), n).to_vec())
}

/// Follows one stream's log across rotations: reads the file it holds to
/// its end, then, once the name points at a newer file (the shim rotated),
/// goes on from the start of the file that came after it: `PATH.k-1` when
/// the one held is now `PATH.k`. The shim renames a file only after its last
/// write, so the held file, read once more after the rename is seen, is
/// complete when it is left, and nothing is skipped unless the reader falls
/// `max_files` files behind the writer.
struct Follower {
    path: PathBuf,
    max_files: u32,
    source: LogSource,
    file: Option<tokio::fs::File>,
    inode: Option<u64>,
}

/// The inode `path` names now, if it exists.
async fn inode_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    tokio::fs::metadata(path).await.ok().map(|m| m.ino())
}

impl Follower {
    async fn new(
        path: PathBuf,
        max_files: u32,
        source: LogSource,
        file: Option<tokio::fs::File>,
    ) -> Follower {
        let inode = match &file {
            Some(f) => f.metadata().await.ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            }),
            None => None,
        };
        Follower {
            path,
            max_files,
            source,
            file,
            inode,
        }
    }

    /// What was appended since the last call (at most one chunk).
    async fn next(&mut self) -> std::io::Result<Vec<u8>> {
        if let Some(f) = self.file.as_mut() {
            let data = read_chunk(f).await?;
            if !data.is_empty() {
                return Ok(data);
            }
        }
        self.after_end().await
    }

    /// At the end of the file held, as a read found it a moment ago: has the
    /// name moved on to a new one? Then what comes next.
    async fn after_end(&mut self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::MetadataExt;
        let Some(now) = inode_of(&self.path).await else {
            // Between a rename and the next file's creation, or removed.
            return Ok(Vec::new());
        };
        if Some(now) == self.inode {
            return Ok(Vec::new());
        }
        // The name moved on, so the held file had its last write; but that
        // write may have come after the read above found the end. Finish
        // the held file before leaving it.
        if let Some(f) = self.file.as_mut() {
            let data = read_chunk(f).await?;
            if !data.is_empty() {
                return Ok(data);
            }
        }
        // The file after the one held: found again after opening it, so a
        // rotation in between is noticed (and the search repeated).
        for _ in 0..4 {
            let mut k = 0;
            for i in 1..self.max_files {
                if self.inode.is_some()
                    && inode_of(&log_files::rotated(&self.path, i)).await == self.inode
                {
                    k = i;
                    break;
                }
            }
            let next = match (k, self.inode) {
                (0, Some(_)) => {
                    // Dropped as the oldest before it was left: the reader
                    // fell behind; go on from the oldest file kept.
                    log_files::segments(&self.path, self.max_files)
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| self.path.clone())
                }
                _ => log_files::rotated(&self.path, k.saturating_sub(1)),
            };
            let Ok(mut f) = tokio::fs::File::open(&next).await else {
                continue;
            };
            if k > 0 && inode_of(&log_files::rotated(&self.path, k)).await != self.inode {
                continue;
            }
            self.inode = Some(f.metadata().await?.ino());
            let data = read_chunk(&mut f).await?;
            self.file = Some(f);
            return Ok(data);
        }
        Ok(Vec::new())
    }
}

/// A pipe for one log stream: (read end for the shim, write end for the
/// replica), both close-on-exec so no other child inherits them.
fn log_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| AgentError::io("creating a log pipe", std::io::Error::from(e)))
}

/// Start the log shim copying `input` into the rotating log at `path`.
/// Its own process group, cwd `/`, no environment: stopping the replica
/// leaves it to drain the pipe, and it holds nothing of the agent's.
fn spawn_shim(inner: &Inner, path: &Path, input: std::os::fd::OwnedFd) -> Result<(i32, u64)> {
    let mut cmd = tokio::process::Command::new(&inner.shim);
    cmd.arg(log_files::SHIM_ARG)
        .arg(path)
        .arg(inner.logs.max_size.to_string())
        .arg(inner.logs.max_files.to_string())
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(input))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn().map_err(|e| {
        AgentError::StartFailed(format!(
            "cannot start the log shim {}: {e}",
            inner.shim.display()
        ))
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| AgentError::StartFailed("the log shim exited at once".into()))?;
    // Dropped, the child is reaped by tokio in the background when it exits.
    Ok((pid, stat(pid).map(|s| s.start_ticks).unwrap_or(0)))
}

/// The drover-agent binary that serves as log shim: this process's own
/// executable, or (for tests, whose executable is the test harness in
/// `target/<profile>/deps`) the `drover-agent` cargo built beside it.
fn shim_program() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| AgentError::io("finding the agent's own executable", e))?;
    if exe.file_name().is_some_and(|n| n == "drover-agent") {
        return Ok(exe);
    }
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("drover-agent"));
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    Err(AgentError::Config(format!(
        "the process runtime runs replicas' logs through `drover-agent {}`, but {} is not drover-agent and none is beside it",
        log_files::SHIM_ARG,
        exe.display()
    )))
}

/// A process sees its volumes through symlinks in its working directory:
/// mount path `/etc/app` is `./etc/app` (it cannot have another root).
/// `readOnly` cannot be enforced on a process of the agent's own user.
fn link_mounts(work: &Path, mounts: &[crate::volumes::HostMount]) -> Result<()> {
    for m in mounts {
        let link = work.join(m.target.trim_start_matches('/'));
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| AgentError::io(format!("creating {}", parent.display()), e))?;
        }
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&link),
            Ok(_) => std::fs::remove_file(&link),
            Err(_) => Ok(()),
        }
        .map_err(|e| AgentError::io(format!("replacing {}", link.display()), e))?;
        std::os::unix::fs::symlink(&m.source, &link)
            .map_err(|e| AgentError::io(format!("linking {}", link.display()), e))?;
    }
    Ok(())
}

/// PATH when the agent itself has none (Docker's default for images).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A replica's whole environment: `HOSTNAME` (the replica's name, as a
/// container's would be), `PATH`, then the manifest's variables, which may
/// override both. Nothing is inherited from the agent.
fn replica_env(
    hostname: &str,
    manifest: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    [
        ("HOSTNAME".to_string(), hostname.to_string()),
        ("PATH".to_string(), path),
    ]
    .into_iter()
    .chain(manifest)
    .collect()
}

/// `droverctl exec` in a process replica: the command runs on the host in
/// the replica's working directory, with its environment, inside its
/// process group (so stopping the replica signals it too), on pipes or on a
/// pseudo-terminal.
mod exec {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, OwnedFd};

    use nix::pty::{openpty, Winsize};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, Winsize);

    fn winsize(size: WindowSize) -> Winsize {
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }

    fn resize(master: &OwnedFd, size: WindowSize) {
        // SAFETY: TIOCSWINSZ reads one Winsize through the pointer, which
        // points at a live value for the duration of the call.
        if let Err(e) = unsafe { set_window_size(master.as_raw_fd(), &winsize(size)) } {
            debug!(error = %e, "could not resize an exec's terminal");
        }
    }

    fn exit_code(status: std::process::ExitStatus) -> i64 {
        status
            .code()
            .map(i64::from)
            .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
            .unwrap_or(-1)
    }

    fn command(entry: &Entry, spec: &ExecSpec, group: bool) -> Result<tokio::process::Command> {
        let Some((program, args)) = spec.command.split_first() else {
            return Err(AgentError::InvalidSpec("the exec command is empty".into()));
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(entry.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&entry.working_dir)
            .kill_on_drop(true);
        if spec.tty.is_some() && !entry.env.iter().any(|(k, _)| k == "TERM") {
            cmd.env("TERM", "xterm");
        }
        // The replica's group, so a stop of the replica reaches the exec
        // too; an adopted replica leads a group in the previous agent's
        // session, which no child of this agent may join: then its own.
        cmd.process_group(if group { entry.pid } else { 0 });
        Ok(cmd)
    }

    fn spawn(
        entry: &Entry,
        spec: &ExecSpec,
        stdio: impl Fn(&mut tokio::process::Command) -> Result<()>,
    ) -> Result<tokio::process::Child> {
        let program = spec.command.first().cloned().unwrap_or_default();
        let mut last = None;
        for group in [true, false] {
            let mut cmd = command(entry, spec, group)?;
            stdio(&mut cmd)?;
            match cmd.spawn() {
                Ok(child) => return Ok(child),
                Err(e) if group && e.raw_os_error() == Some(nix::libc::EPERM) => last = Some(e),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(AgentError::StartFailed(format!(
                        "cannot run {program:?}: no such file or command"
                    )))
                }
                Err(e) => {
                    return Err(AgentError::StartFailed(format!(
                        "cannot run {program:?}: {e}"
                    )))
                }
            }
        }
        Err(AgentError::StartFailed(format!(
            "cannot run {program:?}: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    pub(super) fn start(entry: &Entry, spec: ExecSpec) -> Result<ExecSession> {
        match spec.tty {
            Some(size) => start_tty(entry, &spec, size),
            None => start_pipes(entry, &spec),
        }
    }

    fn start_pipes(entry: &Entry, spec: &ExecSpec) -> Result<ExecSession> {
        let mut child = spawn(entry, spec, |cmd| {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            Ok(())
        })?;
        let (out_tx, out_rx) = mpsc::channel(16);
        let (in_tx, mut in_rx) = mpsc::channel::<ExecInput>(16);
        let pipes = [
            (
                LogSource::Stdout,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
            (
                LogSource::Stderr,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
        ];
        for (source, pipe) in pipes {
            let Some(mut pipe) = pipe else { continue };
            let tx = out_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match pipe.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let chunk = LogChunk {
                                source,
                                data: buf[..n].to_vec(),
                            };
                            if tx.send(chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        let mut stdin = child.stdin.take();
        tokio::spawn(async move {
            while let Some(input) = in_rx.recv().await {
                match input {
                    ExecInput::Stdin(data) => {
                        if let Some(pipe) = stdin.as_mut() {
                            if pipe.write_all(&data).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    ExecInput::CloseStdin => stdin = None,
                    ExecInput::Resize(_) => {}
                }
            }
        });
        Ok(ExecSession {
            container_id: entry.container_id.clone(),
            input: in_tx,
            output: out_rx,
            exit: Box::pin(async move {
                let status = child
                    .wait()
                    .await
                    .map_err(|e| AgentError::io("waiting for an exec", e))?;
                Ok(exit_code(status))
            }),
        })
    }

    fn start_tty(entry: &Entry, spec: &ExecSpec, size: WindowSize) -> Result<ExecSession> {
        let pty = openpty(Some(&winsize(size)), None)
            .map_err(|e| AgentError::io("opening a pseudo-terminal", e.into()))?;
        let master = pty.master;
        let slave = pty.slave;
        let mut child = spawn(entry, spec, |cmd| {
            let io = |e: std::io::Error| AgentError::io("setting up a pseudo-terminal", e);
            cmd.stdin(Stdio::from(slave.try_clone().map_err(io)?))
                .stdout(Stdio::from(slave.try_clone().map_err(io)?))
                .stderr(Stdio::from(slave.try_clone().map_err(io)?));
            Ok(())
        })?;
        // Only the child holds the terminal now: its end reads as EIO here.
        drop(slave);
        let io = |e: std::io::Error| AgentError::io("setting up a pseudo-terminal", e);
        let mut reader = std::fs::File::from(master.try_clone().map_err(io)?);
        let writer = std::fs::File::from(master.try_clone().map_err(io)?);
        let (out_tx, out_rx) = mpsc::channel(16);
        let (in_tx, mut in_rx) = mpsc::channel::<ExecInput>(16);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let chunk = LogChunk {
                            source: LogSource::Stdout,
                            data: buf[..n].to_vec(),
                        };
                        if out_tx.blocking_send(chunk).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            let writer = Arc::new(Mutex::new(writer));
            while let Some(input) = in_rx.recv().await {
                let data = match input {
                    ExecInput::Stdin(data) => data,
                    // A terminal's end of input is its EOF character.
                    ExecInput::CloseStdin => vec![0x04],
                    ExecInput::Resize(size) => {
                        resize(&master, size);
                        continue;
                    }
                };
                let w = writer.clone();
                let written = tokio::task::spawn_blocking(move || {
                    w.lock().unwrap_or_else(|p| p.into_inner()).write_all(&data)
                })
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    return;
                }
            }
        });
        Ok(ExecSession {
            container_id: entry.container_id.clone(),
            input: in_tx,
            output: out_rx,
            exit: Box::pin(async move {
                let status = child
                    .wait()
                    .await
                    .map_err(|e| AgentError::io("waiting for an exec", e))?;
                Ok(exit_code(status))
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `comm` may hold spaces and parentheses; the fields resume after the
    /// last `)`.
    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        let line = "4242 (a) (b c) R 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    70 30 5 5 20 0 1 0 123456 1000000 256 18446744073709551615";
        assert_eq!(
            proc_figures(line),
            Some(ProcFigures {
                pgrp: 4242,
                ticks: 70 + 30 + 5 + 5,
                rss_pages: 256,
            })
        );
        assert_eq!(proc_figures("4242 (truncated"), None);
    }

    /// A real process group: every process of it counts (a busy shell and its sleeping child), and a
    /// group whose leader is gone counts for nothing.
    #[test]
    fn a_process_group_is_summed_from_proc() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & while :; do :; done"])
            .process_group(0)
            .spawn()
            .expect("sh");
        let pid = child.id() as i32;
        let start = stat(pid).expect("stat").start_ticks;
        let groups = vec![("default.busy".to_string(), pid, start)];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let used = loop {
            let u = group_usage(&groups);
            let used = u.get("default.busy").copied().unwrap_or_default();
            if used.cpu_ns >= 100_000_000 || std::time::Instant::now() > deadline {
                break used;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(used.cpu_ns >= 100_000_000, "{used:?}");
        assert!(used.memory_bytes > 0, "{used:?}");
        signal_group((pid, start), Signal::SIGKILL);
        let _ = child.wait();
        assert!(group_usage(&groups).is_empty(), "the group is gone");
    }

    /// Regression (CI, stop 28): the reader found the held file's end, the
    /// shim wrote its last bytes there and rotated, and the reader went on
    /// to the new file without them. Those bytes come first.
    #[tokio::test]
    async fn a_follower_finishes_the_held_file_when_it_sees_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.stdout");
        std::fs::write(&path, b"one\n").expect("write");
        let file = tokio::fs::File::open(&path).await.expect("open");
        let mut follower = Follower::new(path.clone(), 3, LogSource::Stdout, Some(file)).await;
        assert_eq!(follower.next().await.expect("read"), b"one\n");
        assert_eq!(follower.next().await.expect("read"), b"");
        // The shim's last write to the held file, then its rotation.
        let mut held = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        std::io::Write::write_all(&mut held, b"two\n").expect("write");
        std::fs::rename(&path, log_files::rotated(&path, 1)).expect("rename");
        std::fs::write(&path, b"three\n").expect("write");
        // The follower found the end before that write.
        let mut seen = follower.after_end().await.expect("read");
        for _ in 0..4 {
            seen.extend(follower.next().await.expect("read"));
        }
        assert_eq!(String::from_utf8_lossy(&seen), "two\nthree\n");
    }

    /// Regression (found by `droverctl lab chaos`): concurrent writers of
    /// the state file shared one temp file, so one's rename failed.
    #[test]
    fn concurrent_state_writes_all_succeed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let inner = Arc::new(Inner {
            dir: dir.path().to_path_buf(),
            node: "n1".into(),
            logs: LogLimits::default(),
            shim: PathBuf::from("/nonexistent/drover-agent"),
            entries: Mutex::new(BTreeMap::new()),
            persisting: Mutex::new(()),
            events,
            cancel: CancellationToken::new(),
        });
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let inner = inner.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .map(|_| inner.persist().map_err(|e| e.to_string()))
                        .collect::<std::result::Result<Vec<()>, String>>()
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("every write succeeds");
        }
    }

    #[test]
    fn a_reused_group_id_is_never_signalled() {
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        let s = stat(pid).expect("stat");
        // Recorded with another start time: a container whose group is long
        // gone, its id now this unrelated group's.
        signal_group((pid, s.start_ticks + 1), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(100));
        assert!(child.try_wait().expect("wait").is_none(), "left alone");
        // Its own start time: signalled.
        signal_group((pid, s.start_ticks), Signal::SIGKILL);
        let status = child.wait().expect("wait");
        assert!(!status.success());
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("stat of self");
        assert_ne!(s.state, 'Z');
        assert!(is_alive(me, s.start_ticks));
        assert!(!is_alive(me, s.start_ticks + 1));
        assert!(!is_alive(i32::MAX, 0));
    }
}
