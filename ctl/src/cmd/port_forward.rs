//! `droverctl port-forward REPLICA [LOCAL:]REMOTE...`
//!
//! ```text
//!  listen on --address:LOCAL ──accept──▶ drover.v1.Agent/PortForward (one call per connection)
//!     local bytes ──▶ PortForwardInput{data}…, end ──▶ the agent half-closes
//!     local socket ◀── PortForwardOutput{data}… ◀── the agent ◀──TCP── replica:REMOTE
//! ```
//!
//! All calls share one HTTP/2 connection to the replica's agent. It runs
//! until Ctrl-C (exit 130); a connection that fails is reported on stderr
//! and the others go on, as kubectl does.

use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use drover_proto::pb;
use drover_proto::pb::agent_client::AgentClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::exec::ended;
use super::logs::ReplicaAgent;
use super::Env;
use crate::Interrupted;

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// The replica (as `get replicas` names it), or replica/NAME
    #[arg(value_name = "REPLICA")]
    pub replica: String,

    /// Ports: REMOTE (same local port), LOCAL:REMOTE, or :REMOTE (any free local port)
    #[arg(value_name = "[LOCAL:]REMOTE", required = true)]
    pub ports: Vec<String>,

    /// The local address to listen on
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    pub address: IpAddr,
}

/// A local port (0: any free one) and the replica's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPair {
    pub local: u16,
    pub remote: u16,
}

/// `8080`, `9000:8080` or `:8080`.
pub fn parse_ports(spec: &str) -> anyhow::Result<PortPair> {
    let port = |text: &str, which: &str, zero_ok: bool| -> anyhow::Result<u16> {
        match text.parse::<u16>() {
            Ok(0) if !zero_ok => bail!("the {which} port in {spec:?} must be from 1 to 65535"),
            Ok(p) => Ok(p),
            Err(_) => bail!("{spec:?} is not [LOCAL:]REMOTE: {which} port {text:?} is not a number from 1 to 65535"),
        }
    };
    match spec.split_once(':') {
        None => {
            let p = port(spec, "remote", false)?;
            Ok(PortPair {
                local: p,
                remote: p,
            })
        }
        Some(("", remote)) => Ok(PortPair {
            local: 0,
            remote: port(remote, "remote", false)?,
        }),
        Some((local, remote)) => Ok(PortPair {
            local: port(local, "local", true)?,
            remote: port(remote, "remote", false)?,
        }),
    }
}

pub async fn run(env: &Env, args: PortForwardArgs) -> anyhow::Result<()> {
    let pairs = args
        .ports
        .iter()
        .map(|p| parse_ports(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let target = std::sync::Arc::new(ReplicaAgent::find(env, "port-forward", &args.replica).await?);
    let agent = target.connect(env.global.request_timeout.0).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for pair in pairs {
        let addr = SocketAddr::new(args.address, pair.local);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for port-forward"))?;
        let bound = listener.local_addr()?;
        println!("Forwarding from {bound} -> {}", pair.remote);
        let (agent, target) = (agent.clone(), target.clone());
        tasks.spawn(accept(listener, agent, target, pair.remote));
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            Err(Interrupted.into())
        }
        Some(done) = tasks.join_next() => match done {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow!("port-forward stopped listening")),
        },
    }
}

async fn accept(
    listener: TcpListener,
    agent: AgentClient<Channel>,
    target: std::sync::Arc<ReplicaAgent>,
    remote: u16,
) -> anyhow::Result<()> {
    loop {
        let (socket, _) = listener
            .accept()
            .await
            .context("accepting a connection to forward")?;
        let _ = socket.set_nodelay(true);
        let (agent, target) = (agent.clone(), target.clone());
        tokio::spawn(async move {
            if let Err(e) = tunnel(socket, agent, &target, remote).await {
                crate::print_error(&format!(
                    "forwarding a connection to port {remote} of replica {:?}: {e:#}",
                    target.name
                ));
            }
        });
    }
}

/// One connection: its bytes to the replica's port and back, until either side ends.
async fn tunnel(
    socket: TcpStream,
    mut agent: AgentClient<Channel>,
    target: &ReplicaAgent,
    remote: u16,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(16);
    let start = pb::PortForwardInput {
        kind: Some(pb::port_forward_input::Kind::Start(pb::PortForwardStart {
            replica: target.id.clone(),
            port: remote.into(),
        })),
    };
    tx.send(start)
        .await
        .map_err(|_| anyhow!("the forward's input closed before it started"))?;
    let mut replies = agent
        .port_forward(ReceiverStream::new(rx))
        .await
        .map_err(|s| target.refused(&format!("forward to port {remote}"), &s))?
        .into_inner();
    let (mut rd, mut wr) = socket.into_split();
    let upload = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                // Dropping the sender ends the input: the agent half-closes.
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = pb::PortForwardInput {
                        kind: Some(pb::port_forward_input::Kind::Data(buf[..n].to_vec())),
                    };
                    if tx.send(data).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let result = loop {
        match replies.message().await {
            Ok(Some(out)) => {
                if wr.write_all(&out.data).await.is_err() {
                    break Ok(());
                }
            }
            Ok(None) => {
                let _ = wr.shutdown().await;
                break Ok(());
            }
            Err(status) => break Err(ended(target, &status)),
        }
    };
    upload.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_follow_kubectl() {
        assert_eq!(
            parse_ports("8080").unwrap(),
            PortPair {
                local: 8080,
                remote: 8080
            }
        );
        assert_eq!(
            parse_ports("9000:80").unwrap(),
            PortPair {
                local: 9000,
                remote: 80
            }
        );
        assert_eq!(
            parse_ports(":80").unwrap(),
            PortPair {
                local: 0,
                remote: 80
            }
        );
        assert_eq!(
            parse_ports("80:0").unwrap_err().to_string(),
            "the remote port in \"80:0\" must be from 1 to 65535"
        );
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("1:2:3").is_err());
    }
}
