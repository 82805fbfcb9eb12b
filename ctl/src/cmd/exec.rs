//! `droverctl exec [-i] [-t] REPLICA -- COMMAND [ARGS...]`
//!
//! ```text
//!  ListReplicas ──▶ the replica's node and agent address (as for logs)
//!  drover.v1.Agent/Exec, a bidirectional stream straight to that agent:
//!    ▶ ExecStart{replica, command, stdin, tty, size}
//!    ▶ stdin bytes… (a thread reads stdin), StdinClose at its end, WindowSize on SIGWINCH
//!    ◀ stdout / stderr bytes… ◀ ExecExit{code}   (or an error status: replica stopped, idle)
//!  exit code = the command's
//! ```
//!
//! With `-t` on a terminal, the local terminal is in raw mode for the whole
//! session (a [`RawMode`] guard restores it on every way out), so keys such
//! as Ctrl-C reach the remote command. Without `-t`, Ctrl-C ends droverctl
//! (exit 130) and the agent ends the command with the session.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use drover_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::logs::ReplicaAgent;
use super::Env;
use crate::client::{is_transport_failure, status_sentence, transport_reason};
use crate::terminal::{self, RawMode};
use crate::{CommandExit, Interrupted};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Pass stdin to the command
    #[arg(short = 'i', long)]
    pub stdin: bool,

    /// Allocate a terminal for the command (with -i: an interactive shell)
    #[arg(short = 't', long)]
    pub tty: bool,

    /// The replica (as `get replicas` names it), or replica/NAME
    #[arg(value_name = "REPLICA")]
    pub replica: String,

    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Largest message accepted from an agent.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// An exec call in progress: send input, read output.
pub struct ExecCall {
    pub input: mpsc::Sender<pb::ExecInput>,
    pub output: Streaming<pb::ExecOutput>,
}

impl ExecCall {
    /// Start `start` on the replica's agent.
    pub async fn open(
        target: &ReplicaAgent,
        start: pb::ExecStart,
        timeout: Option<Duration>,
        what: &str,
    ) -> anyhow::Result<ExecCall> {
        let mut agent = target
            .connect(timeout)
            .await?
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (input, rx) = mpsc::channel(16);
        let begin = pb::ExecInput {
            kind: Some(pb::exec_input::Kind::Start(start)),
        };
        input
            .send(begin)
            .await
            .map_err(|_| anyhow!("the exec input closed before it started"))?;
        let call = agent.exec(ReceiverStream::new(rx));
        let answer = match timeout {
            Some(t) => tokio::time::timeout(t, call).await.map_err(|_| {
                anyhow!(
                    "the agent of node {:?} at {} did not answer within {}s",
                    target.node,
                    target.address,
                    t.as_secs_f64()
                )
            })?,
            None => call.await,
        };
        match answer {
            Ok(response) => Ok(ExecCall {
                input,
                output: response.into_inner(),
            }),
            Err(status) => Err(target.refused(what, &status)),
        }
    }
}

/// One sentence for a session that ended with an error status.
pub fn ended(target: &ReplicaAgent, status: &tonic::Status) -> anyhow::Error {
    if is_transport_failure(status) {
        return anyhow!(
            "the connection to the agent of node {:?} at {} broke: {}",
            target.node,
            target.address,
            transport_reason(status)
        );
    }
    anyhow!("{}", status_sentence(status))
}

pub async fn run(env: &Env, args: ExecArgs) -> anyhow::Result<()> {
    let mut tty = args.tty;
    if tty && !terminal::stdin_is_terminal() {
        eprintln!("Unable to use a TTY - input is not a terminal");
        tty = false;
    }
    let target = ReplicaAgent::find(env, "exec", &args.replica).await?;
    let size = if tty { terminal::size() } else { None };
    let start = pb::ExecStart {
        replica: target.id.clone(),
        command: args.command.clone(),
        stdin: args.stdin,
        tty,
        size: size.map(|(cols, rows)| pb::WindowSize {
            cols: cols.into(),
            rows: rows.into(),
        }),
    };
    let call = ExecCall::open(
        &target,
        start,
        env.global.request_timeout.0,
        &format!("run a command in replica {:?}", target.name),
    )
    .await?;
    // Raw only once the session runs: errors before it print as usual.
    let raw = if tty && args.stdin {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let code = session(&target, call, args.stdin, tty).await;
    drop(raw);
    match code? {
        0 => Ok(()),
        code => match u8::try_from(code) {
            Ok(c) => Err(CommandExit(c).into()),
            Err(_) => bail!("the command's exit status is unknown (the agent reported {code})"),
        },
    }
}

/// Pump stdin, window sizes and output until the command ends; its exit code.
async fn session(
    target: &ReplicaAgent,
    call: ExecCall,
    stdin: bool,
    tty: bool,
) -> anyhow::Result<i64> {
    let ExecCall { input, mut output } = call;
    if stdin {
        spawn_stdin_reader(input.clone());
    }
    let mut winch = if tty {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };
    let interrupted = async {
        if tty && stdin {
            // Ctrl-C is a key for the remote command in raw mode.
            std::future::pending::<()>().await;
        }
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    let mut code = None;
    loop {
        let message = tokio::select! {
            m = output.message() => m,
            () = &mut interrupted => return Err(Interrupted.into()),
            Some(()) = async {
                match winch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((cols, rows)) = terminal::size() {
                    let resize = pb::ExecInput {
                        kind: Some(pb::exec_input::Kind::Resize(pb::WindowSize {
                            cols: cols.into(),
                            rows: rows.into(),
                        })),
                    };
                    let _ = input.send(resize).await;
                }
                continue;
            }
        };
        match message {
            Ok(Some(out)) => match out.kind {
                Some(pb::exec_output::Kind::Stdout(data)) => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&data)?;
                    o.flush()?;
                }
                Some(pb::exec_output::Kind::Stderr(data)) => {
                    let mut e = std::io::stderr().lock();
                    e.write_all(&data)?;
                    e.flush()?;
                }
                Some(pb::exec_output::Kind::Exit(exit)) => code = Some(i64::from(exit.code)),
                None => {}
            },
            Ok(None) => {
                return code.ok_or_else(|| {
                    anyhow!(
                        "the agent of node {:?} ended the exec without the command's exit code",
                        target.node
                    )
                })
            }
            Err(status) => return Err(ended(target, &status)),
        }
    }
}

/// Read stdin on a thread of its own (a blocked read cannot be cancelled,
/// and must not keep droverctl from exiting) and send it as exec input;
/// its end becomes `StdinClose`.
pub fn spawn_stdin_reader(input: mpsc::Sender<pb::ExecInput>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let kind = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => pb::exec_input::Kind::CloseStdin(pb::StdinClose {}),
                Ok(n) => pb::exec_input::Kind::Stdin(buf[..n].to_vec()),
            };
            let last = matches!(kind, pb::exec_input::Kind::CloseStdin(_));
            if input
                .blocking_send(pb::ExecInput { kind: Some(kind) })
                .is_err()
                || last
            {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn exec_takes_the_command_after_a_double_dash() {
        let cli = Cli::try_parse_from(["droverctl", "exec", "-it", "web-1", "--", "sh", "-c", "x"])
            .expect("parses");
        let Command::Exec(e) = cli.command else {
            panic!("not exec")
        };
        assert!(e.stdin && e.tty);
        assert_eq!(e.replica, "web-1");
        assert_eq!(e.command, ["sh", "-c", "x"]);
        assert!(Cli::try_parse_from(["droverctl", "exec", "web-1"]).is_err());
    }
}
