//! Debugging sessions on the Agent service: `droverctl exec` (and `cp`,
//! which is tar through an exec) and `droverctl port-forward`.
//!
//! ```text
//!  droverctl ══ ExecInput: Start, stdin…, close, resize ═══▶ drive_exec ──▶ Runtime::exec_session
//!            ◀═ ExecOutput: stdout/stderr…, Exit{code} ════   │  ends on: the command's exit,
//!                 or an error status ───────────────────────  │  the replica stopping (runtime
//!                                                             │  events), idling, the client leaving
//!  droverctl ══ PortForwardInput: Start, data… ═══▶ drive_forward ──TCP──▶ the replica's port
//!            ◀═ PortForwardOutput: data… ═══════              (Runtime::probe_address: container
//!                                                               IP, or loopback for processes)
//! ```
//!
//! Every session holds a permit of the agent's [`SessionLimits::max`] for its
//! whole life and ends after [`SessionLimits::idle`] without a byte either
//! way. Each one writes an audit line when it starts and when it ends (target
//! `audit`: who, which replica, which command or port, how it ended; never
//! the data).

use std::sync::Arc;
use std::time::Duration;

use drover_pki::authz::Caller;
use drover_proto::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::info;

use crate::runtime::{
    ExecInput, ExecSession, ExecSpec, LogChunk, LogSource, Runtime, RuntimeEvent, WindowSize,
};

/// How many debugging sessions an agent runs at once and how long one may idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Exec sessions and forwarded connections together.
    pub max: usize,
    /// A session with no input or output for this long is closed.
    pub idle: Duration,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            max: 32,
            idle: Duration::from_secs(15 * 60),
        }
    }
}

/// The agent's admission of debugging sessions.
#[derive(Debug, Clone)]
pub struct Sessions {
    permits: Arc<Semaphore>,
    limits: SessionLimits,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            permits: Arc::new(Semaphore::new(limits.max)),
            limits,
        }
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this agent already runs {} exec and port-forward sessions, the most it allows (--max-debug-sessions): end one and try again",
                self.limits.max
            ))
        })
    }
}

/// Who made a call, for the audit line.
pub fn who(caller: &Caller) -> String {
    match caller {
        Caller::Insecure => "anyone (insecure agent)".to_string(),
        Caller::Anonymous => "anonymous".to_string(),
        Caller::Verified(id) => id.to_string(),
    }
}

/// `<namespace>.<name>` → `<name>`, for sentences.
fn short(replica: &str) -> &str {
    replica.split_once('.').map_or(replica, |(_, name)| name)
}

/// The first message of a stream, within the idle limit.
async fn first<T>(inbound: &mut Streaming<T>, idle: Duration, what: &str) -> Result<T, Status> {
    match tokio::time::timeout(idle, inbound.message()).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(Status::invalid_argument(format!(
            "the {what} stream ended before its start message"
        ))),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no {what} start message within {}",
            drover_proto::duration::short(idle)
        ))),
    }
}

pub type ExecReply = mpsc::Receiver<Result<pb::ExecOutput, Status>>;

/// Admit, start and then drive one exec session.
pub async fn exec<R: Runtime>(
    runtime: Arc<R>,
    sessions: &Sessions,
    who: String,
    mut inbound: Streaming<pb::ExecInput>,
) -> Result<ExecReply, Status> {
    let permit = sessions.admit()?;
    let idle = sessions.limits.idle;
    let message = first(&mut inbound, idle, "exec").await?;
    let Some(pb::exec_input::Kind::Start(start)) = message.kind else {
        return Err(Status::invalid_argument(
            "the first message of an exec must be its ExecStart",
        ));
    };
    if start.command.is_empty() || start.command[0].is_empty() {
        return Err(Status::invalid_argument(
            "exec needs a command to run (droverctl exec REPLICA -- COMMAND ARGS...)",
        ));
    }
    let tty = start.tty.then(|| window(start.size.as_ref()));
    let spec = ExecSpec {
        command: start.command.clone(),
        stdin: start.stdin,
        tty,
    };
    // Subscribed before the start: a stop right after it is not missed.
    let events = runtime.events();
    let session = runtime
        .exec_session(&start.replica, spec)
        .await
        .map_err(crate::server::to_status)?;
    info!(target: "audit", who = %who, replica = %start.replica, command = ?start.command,
        stdin = start.stdin, tty = start.tty, "exec session started");
    let (tx, rx) = mpsc::channel(16);
    let run = ExecRun {
        replica: start.replica,
        who,
        idle,
        started: Instant::now(),
    };
    tokio::spawn(async move {
        let _permit = permit;
        let ending = run.drive(session, inbound, &tx, events).await;
        info!(target: "audit", who = %run.who, replica = %run.replica,
            seconds = run.started.elapsed().as_secs(), ending = %ending, "exec session ended");
    });
    Ok(rx)
}

/// A terminal size from the wire; 0 (unknown) becomes the classic 80×24.
fn window(size: Option<&pb::WindowSize>) -> WindowSize {
    let cell = |v: u32, default: u16| match u16::try_from(v) {
        Ok(0) | Err(_) => default,
        Ok(v) => v,
    };
    WindowSize {
        cols: cell(size.map_or(0, |s| s.cols), 80),
        rows: cell(size.map_or(0, |s| s.rows), 24),
    }
}

struct ExecRun {
    replica: String,
    who: String,
    idle: Duration,
    started: Instant,
}

impl ExecRun {
    fn stopped(&self) -> Status {
        Status::aborted(format!(
            "replica {} stopped: the exec session ended with it",
            short(&self.replica)
        ))
    }

    /// Pump the session until it ends; returns how it ended (for the audit).
    async fn drive(
        &self,
        mut session: ExecSession,
        mut inbound: Streaming<pb::ExecInput>,
        tx: &mpsc::Sender<Result<pb::ExecOutput, Status>>,
        mut events: broadcast::Receiver<RuntimeEvent>,
    ) -> String {
        let container = session.container_id.clone();
        let mut deadline = Instant::now() + self.idle;
        let mut input_open = true;
        let mut output_open = true;
        let mut events_open = true;
        // A chunk of the other stream met while batching, sent next.
        let mut held: Option<LogChunk> = None;
        loop {
            tokio::select! {
                message = inbound.message(), if input_open => {
                    deadline = Instant::now() + self.idle;
                    let input = match message {
                        Ok(Some(m)) => match m.kind {
                            Some(pb::exec_input::Kind::Stdin(data)) => ExecInput::Stdin(data),
                            Some(pb::exec_input::Kind::CloseStdin(_)) => ExecInput::CloseStdin,
                            Some(pb::exec_input::Kind::Resize(size)) => {
                                ExecInput::Resize(window(Some(&size)))
                            }
                            Some(pb::exec_input::Kind::Start(_)) | None => continue,
                        },
                        Ok(None) => {
                            input_open = false;
                            ExecInput::CloseStdin
                        }
                        // The client is gone: dropping the session ends the command.
                        Err(_) => return "the client went away".into(),
                    };
                    let _ = session.input.send(input).await;
                }
                chunk = next_output(&mut session.output, &mut held), if output_open => match chunk {
                    Some(mut chunk) => {
                        deadline = Instant::now() + self.idle;
                        // Whatever else is already there goes in the same
                        // message (tar writes 512-byte blocks: one message
                        // each would cap a copy at a few tens of MiB/s).
                        while held.is_none() && chunk.data.len() < BATCH_BYTES {
                            match session.output.try_recv() {
                                Ok(more) if more.source == chunk.source => {
                                    chunk.data.extend_from_slice(&more.data)
                                }
                                Ok(other) => held = Some(other),
                                Err(_) => break,
                            }
                        }
                        let kind = match chunk.source {
                            LogSource::Stdout => pb::exec_output::Kind::Stdout(chunk.data),
                            LogSource::Stderr => pb::exec_output::Kind::Stderr(chunk.data),
                        };
                        if tx.send(Ok(pb::ExecOutput { kind: Some(kind) })).await.is_err() {
                            return "the client went away".into();
                        }
                    }
                    None => output_open = false,
                },
                code = &mut session.exit, if !output_open => {
                    let code = match code {
                        Ok(code) => code,
                        Err(e) => {
                            let _ = tx.send(Err(crate::server::to_status(e))).await;
                            return "the runtime lost the command".into();
                        }
                    };
                    // Killed (or unknown): was it the replica stopping?
                    if !(0..128).contains(&code) && stopped_soon(&mut events, &container).await {
                        let _ = tx.send(Err(self.stopped())).await;
                        return "the replica stopped".into();
                    }
                    let exit = pb::exec_output::Kind::Exit(pb::ExecExit {
                        code: i32::try_from(code).unwrap_or(-1),
                    });
                    let _ = tx.send(Ok(pb::ExecOutput { kind: Some(exit) })).await;
                    return format!("exit code {code}");
                }
                event = events.recv(), if events_open => match event {
                    Ok(e) if ends(&e, &container) => {
                        let _ = tx.send(Err(self.stopped())).await;
                        return "the replica stopped".into();
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // The runtime is going away with the agent.
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
                () = tokio::time::sleep_until(deadline) => {
                    let _ = tx.send(Err(Status::deadline_exceeded(format!(
                        "the exec session was idle for {} and was closed",
                        drover_proto::duration::short(self.idle)
                    )))).await;
                    return "idle".into();
                }
                () = tx.closed() => return "the client went away".into(),
            }
        }
    }
}

/// The most output one exec message carries when more is waiting.
const BATCH_BYTES: usize = 256 * 1024;

/// The held-back chunk first, else the next one from the runtime.
async fn next_output(
    output: &mut mpsc::Receiver<LogChunk>,
    held: &mut Option<LogChunk>,
) -> Option<LogChunk> {
    match held.take() {
        Some(chunk) => Some(chunk),
        None => output.recv().await,
    }
}

/// Whether `event` says the container stopped or vanished.
fn ends(event: &RuntimeEvent, container: &str) -> bool {
    match event {
        RuntimeEvent::Exited { container_id, .. } | RuntimeEvent::Removed { container_id, .. } => {
            container_id == container
        }
        RuntimeEvent::Resync => false,
    }
}

/// A killed command's container reports its own stop within moments when
/// the stop is what killed it.
async fn stopped_soon(events: &mut broadcast::Receiver<RuntimeEvent>, container: &str) -> bool {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) if ends(&e, container) => return true,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return false,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), wait)
        .await
        .unwrap_or(false)
}

pub type ForwardReply = mpsc::Receiver<Result<pb::PortForwardOutput, Status>>;

/// Admit, connect and then drive one forwarded connection.
pub async fn port_forward<R: Runtime>(
    runtime: Arc<R>,
    sessions: &Sessions,
    who: String,
    mut inbound: Streaming<pb::PortForwardInput>,
) -> Result<ForwardReply, Status> {
    let permit = sessions.admit()?;
    let idle = sessions.limits.idle;
    let message = first(&mut inbound, idle, "port-forward").await?;
    let Some(pb::port_forward_input::Kind::Start(start)) = message.kind else {
        return Err(Status::invalid_argument(
            "the first message of a port-forward must be its PortForwardStart",
        ));
    };
    let port = match u16::try_from(start.port) {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(Status::invalid_argument(format!(
                "port {} is not a TCP port (1-65535)",
                start.port
            )))
        }
    };
    let addr = runtime
        .probe_address(&start.replica, port)
        .await
        .map_err(crate::server::to_status)?;
    let name = short(&start.replica).to_string();
    let stream = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Status::unavailable(format!(
                "cannot connect to port {port} of replica {name} ({addr}): {e}"
            )))
        }
        Err(_) => {
            return Err(Status::unavailable(format!(
                "cannot connect to port {port} of replica {name} ({addr}): timed out"
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    info!(target: "audit", who = %who, replica = %start.replica, port, "port-forward connection opened");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let _permit = permit;
        let started = Instant::now();
        let (ending, sent, received) = forward(stream, inbound, &tx, idle).await;
        info!(target: "audit", who = %who, replica = %start.replica, port,
            seconds = started.elapsed().as_secs(), bytes_in = sent, bytes_out = received,
            ending = %ending, "port-forward connection closed");
    });
    Ok(rx)
}

/// Copy bytes both ways until the replica closes the connection, the
/// client leaves or the connection idles. Returns how it ended and the
/// byte counts (to the replica, from it).
async fn forward(
    stream: tokio::net::TcpStream,
    mut inbound: Streaming<pb::PortForwardInput>,
    tx: &mpsc::Sender<Result<pb::PortForwardOutput, Status>>,
    idle: Duration,
) -> (&'static str, u64, u64) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; 256 * 1024];
    let mut deadline = Instant::now() + idle;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut input_open = true;
    loop {
        tokio::select! {
            message = inbound.message(), if input_open => {
                deadline = Instant::now() + idle;
                match message {
                    Ok(Some(m)) => {
                        if let Some(pb::port_forward_input::Kind::Data(data)) = m.kind {
                            sent += data.len() as u64;
                            if wr.write_all(&data).await.is_err() {
                                return ("the replica closed the connection", sent, received);
                            }
                        }
                    }
                    // The client's end of input: half-close towards the replica.
                    Ok(None) => {
                        input_open = false;
                        let _ = wr.shutdown().await;
                    }
                    Err(_) => return ("the client went away", sent, received),
                }
            }
            read = rd.read(&mut buf) => match read {
                Ok(0) => return ("the replica closed the connection", sent, received),
                Ok(n) => {
                    deadline = Instant::now() + idle;
                    received += n as u64;
                    let out = pb::PortForwardOutput { data: buf[..n].to_vec() };
                    if tx.send(Ok(out)).await.is_err() {
                        return ("the client went away", sent, received);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::unavailable(format!(
                        "the connection to the replica failed: {e}"
                    )))).await;
                    return ("the connection failed", sent, received);
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                let _ = tx.send(Err(Status::deadline_exceeded(format!(
                    "the forwarded connection was idle for {} and was closed",
                    drover_proto::duration::short(idle)
                )))).await;
                return ("idle", sent, received);
            }
            () = tx.closed() => return ("the client went away", sent, received),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes_default_to_eighty_by_twenty_four() {
        assert_eq!(window(None), WindowSize { cols: 80, rows: 24 });
        let size = pb::WindowSize { cols: 132, rows: 0 };
        assert_eq!(
            window(Some(&size)),
            WindowSize {
                cols: 132,
                rows: 24
            }
        );
        let huge = pb::WindowSize {
            cols: 70_000,
            rows: 50,
        };
        assert_eq!(window(Some(&huge)), WindowSize { cols: 80, rows: 50 });
    }

    #[test]
    fn the_cap_refuses_one_session_too_many_with_a_sentence() {
        let sessions = Sessions::new(SessionLimits {
            max: 1,
            idle: Duration::from_secs(1),
        });
        let held = sessions.admit().expect("first admitted");
        let refused = sessions.admit().expect_err("second refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--max-debug-sessions"));
        drop(held);
        assert!(sessions.admit().is_ok());
    }

    #[test]
    fn only_the_sessions_container_ends_it() {
        let exited = RuntimeEvent::Removed {
            replica: "default.web-1".into(),
            container_id: "c1".into(),
        };
        assert!(ends(&exited, "c1"));
        assert!(!ends(&exited, "c2"));
        assert!(!ends(&RuntimeEvent::Resync, "c1"));
        assert_eq!(short("default.web-7f9c2-0"), "web-7f9c2-0");
    }
}
