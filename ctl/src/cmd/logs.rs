//! `droverctl logs REPLICA [-f|--follow] [--tail N] [-p|--previous] [--since D] [--timestamps]`
//!
//! ```text
//!  ListReplicas(namespace) ──▶ the replica ──not scheduled / no node address──▶ error
//!                                   │
//!                                   ▼ node_address
//!  drover.v1.Agent/Logs{replica: "<namespace>.<name>", follow, tail, previous, since, timestamps}
//!                                   on its node's agent
//!                                   │
//!                                   ▼ LogChunk…
//!  "stdout" chunks → stdout, "stderr" chunks → stderr, until the stream ends or Ctrl-C
//! ```
//!
//! The controllers only say where the replica runs; its output comes straight
//! from the agent of its node ([`ReplicaAgent`] finds it, for exec, cp and
//! port-forward too). Ctrl-C while streaming ends the command with
//! exit code 130, as a shell reports an interrupted command.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail};
use drover_pki::{self as pki, Security};
use drover_proto::pb;
use drover_proto::pb::agent_client::AgentClient;
use tonic::transport::Channel;
use tonic::Status;

use super::get::{list_replicas, not_found};
use super::Env;
use crate::cli::LogsArgs;
use crate::client::{
    error_chain_reason, is_transport_failure, status_sentence, transport_reason, CONNECT_TIMEOUT,
};
use crate::resource::ResourceKind;
use crate::Interrupted;

/// HTTP/2 ping interval and how long a ping may go unanswered: a node that
/// dies while `-f` waits for output is noticed within seconds.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Largest log chunk accepted from an agent.
const MAX_CHUNK_BYTES: usize = 64 * 1024 * 1024;

pub async fn run(env: &Env, args: LogsArgs) -> anyhow::Result<()> {
    let tail = tail_lines(args.tail)?;
    if args.previous && args.follow {
        bail!("--previous cannot be combined with -f: the previous run has ended");
    }
    let since_unix_ms = match args.since {
        Some(d) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|n| n.as_millis() as i64)
                .unwrap_or(0);
            now.saturating_sub(d.as_millis() as i64).max(1)
        }
        None => 0,
    };
    let target = ReplicaAgent::find(env, "logs", &args.replica).await?;
    let request = pb::LogsRequest {
        replica: target.id.clone(),
        follow: args.follow,
        tail,
        previous: args.previous,
        since_unix_ms,
        timestamps: args.timestamps,
    };
    stream_logs(
        &target.node,
        &target.address,
        request,
        env.global.request_timeout.0,
        &target.security,
    )
    .await
}

/// The agent that runs a replica, as found through the controllers.
pub struct ReplicaAgent {
    /// The replica's name, as `get replicas` shows it.
    pub name: String,
    /// `<namespace>.<name>`: the name the agent knows it by.
    pub id: String,
    pub node: String,
    pub address: String,
    pub security: Security,
}

impl ReplicaAgent {
    /// Ask the controllers where replica `arg` runs (`verb` names the command in errors).
    pub async fn find(env: &Env, verb: &str, arg: &str) -> anyhow::Result<ReplicaAgent> {
        let name = replica_name_for(verb, arg)?;
        let (mut client, settings) = env.client()?;
        let namespace = settings.namespace;
        let replicas = list_replicas(&mut client, &namespace, "", None).await?;
        let Some(replica) = replicas.into_iter().find(|r| r.name == name) else {
            bail!(not_found(ResourceKind::Replica, &name, &namespace));
        };
        let (node, address) = log_source(&replica)?;
        Ok(ReplicaAgent {
            id: agent_id(&replica),
            name,
            node,
            address,
            security: client.security().clone(),
        })
    }

    /// A connection to the agent, within `timeout` (the connect timeout at most).
    pub async fn connect(&self, timeout: Option<Duration>) -> anyhow::Result<AgentClient<Channel>> {
        let wait = timeout.map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
        connect(&self.node, &self.address, wait, &self.security).await
    }

    /// One sentence for a call the agent refused or could not take.
    pub fn refused(&self, what: &str, status: &Status) -> anyhow::Error {
        let (node, address) = (&self.node, &self.address);
        if is_transport_failure(status) {
            return anyhow!(
                "cannot reach the agent of node {node:?} at {address}: {}",
                transport_reason(status)
            );
        }
        if let Some(reason) = crate::client::not_grpc(status) {
            let reason = reason.replace("not a drover controller", "not a drover agent");
            return anyhow!("cannot {what} on node {node:?} at {address}: {reason}");
        }
        anyhow!(
            "the agent of node {node:?} at {address} refused to {what}: {}",
            status_sentence(status)
        )
    }
}

/// `web-7f9c2-3` or `replica/web-7f9c2-3` (any spelling of the type).
pub fn replica_name(arg: &str) -> anyhow::Result<String> {
    replica_name_for("logs", arg)
}

/// [`replica_name`] for the verb `verb` (named in the error).
pub fn replica_name_for(verb: &str, arg: &str) -> anyhow::Result<String> {
    let name = match arg.split_once('/') {
        None => arg,
        Some((ty, name)) => {
            if ResourceKind::parse(ty)? != ResourceKind::Replica {
                bail!(
                    "droverctl {verb} takes a replica (e.g. droverctl {verb} web-7f9c2-0), not {arg:?}"
                );
            }
            name
        }
    };
    if name.is_empty() || name.contains('/') {
        bail!("a replica name may not be empty or contain \"/\" (in {arg:?})");
    }
    Ok(name.to_string())
}

/// `--tail N` as the agent takes it: -1 (all) is 0.
pub fn tail_lines(tail: i64) -> anyhow::Result<u32> {
    match tail {
        -1 => Ok(0),
        0 => bail!("--tail 0 is not supported, as the agent cannot skip all earlier output; use --tail 1 or more, or -1 for all"),
        n => u32::try_from(n).map_err(|_| anyhow!("--tail must be -1 or from 1 to {}", u32::MAX)),
    }
}

/// The id the agent knows a replica by: `<namespace>.<name>`.
pub fn agent_id(r: &pb::Replica) -> String {
    format!("{}.{}", r.namespace, r.name)
}

/// The replica's node and the address its agent serves logs on, or why there is none.
pub fn log_source(r: &pb::Replica) -> anyhow::Result<(String, String)> {
    if r.node.is_empty() {
        let reason = crate::output::one_line(&r.pending_reason);
        if reason.is_empty() {
            bail!("replica {:?} is not scheduled to a node yet", r.name);
        }
        bail!(
            "replica {:?} is not scheduled to a node yet ({reason})",
            r.name
        );
    }
    if r.node_address.is_empty() {
        bail!(
            "replica {:?} is on node {:?}, whose agent has not registered an address to fetch logs from",
            r.name,
            r.node
        );
    }
    Ok((r.node.clone(), r.node_address.clone()))
}

/// Connect to the agent, ask for the logs and copy every chunk out.
async fn stream_logs(
    node: &str,
    address: &str,
    request: pb::LogsRequest,
    timeout: Option<Duration>,
    security: &Security,
) -> anyhow::Result<()> {
    let wait = timeout.map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
    let mut agent = connect(node, address, wait, security).await?;
    let call = agent.logs(request);
    let answer = match timeout {
        Some(t) => tokio::time::timeout(t, call).await.map_err(|_| {
            anyhow!(
                "the agent of node {node:?} at {address} did not answer within {}s",
                t.as_secs_f64()
            )
        })?,
        None => call.await,
    };
    let mut stream = match answer {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(call_error(node, address, &status)),
    };

    let interrupted = async {
        // Without a Ctrl-C handler (never expected), wait for the stream alone.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = &mut interrupted => return Err(Interrupted.into()),
        };
        match message {
            Ok(Some(chunk)) => write_chunk(&chunk)?,
            Ok(None) => return Ok(()),
            Err(status) if is_transport_failure(&status) => {
                bail!(
                    "the log stream from node {node:?} at {address} broke: {}",
                    transport_reason(&status)
                )
            }
            Err(status) => bail!(
                "the agent of node {node:?} at {address} ended the log stream: {}",
                status_sentence(&status)
            ),
        }
    }
}

async fn connect(
    node: &str,
    address: &str,
    wait: Duration,
    security: &Security,
) -> anyhow::Result<AgentClient<Channel>> {
    // The agent must prove it is the node the controllers named.
    let endpoint = security
        .endpoint(address, &pki::Server::agent(node)?)
        .map_err(|_| anyhow!("node {node:?} has an invalid agent address {address:?}"))?
        .connect_timeout(wait)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    let reason =
        match tokio::time::timeout(wait + Duration::from_millis(100), endpoint.connect()).await {
            Ok(Ok(channel)) => {
                return Ok(AgentClient::new(channel).max_decoding_message_size(MAX_CHUNK_BYTES))
            }
            Ok(Err(e)) => error_chain_reason(&e),
            Err(_) => "timed out".to_string(),
        };
    bail!("cannot reach the agent of node {node:?} at {address}: {reason}")
}

/// One sentence for a failed Logs call.
fn call_error(node: &str, address: &str, status: &Status) -> anyhow::Error {
    if is_transport_failure(status) {
        return anyhow!(
            "cannot reach the agent of node {node:?} at {address}: {}",
            transport_reason(status)
        );
    }
    if let Some(reason) = crate::client::not_grpc(status) {
        let reason = reason.replace("not a drover controller", "not a drover agent");
        return anyhow!("cannot get logs from node {node:?} at {address}: {reason}");
    }
    anyhow!(
        "the agent of node {node:?} at {address} refused the logs request: {}",
        status_sentence(status)
    )
}

/// Copy one chunk to stdout, or stderr for the container's stderr.
fn write_chunk(chunk: &pb::LogChunk) -> std::io::Result<()> {
    if chunk.stream == "stderr" {
        let mut err = std::io::stderr().lock();
        err.write_all(&chunk.data)?;
        err.flush()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(&chunk.data)?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::replicas::fixtures::replica;
    use drover_proto::pb::ReplicaState;

    #[test]
    fn replica_names_take_the_type_prefix_too() {
        assert_eq!(replica_name("web-7f9c2-0").unwrap(), "web-7f9c2-0");
        assert_eq!(replica_name("po/web-7f9c2-0").unwrap(), "web-7f9c2-0");
        assert_eq!(replica_name("replica/web-7f9c2-0").unwrap(), "web-7f9c2-0");
        assert_eq!(
            replica_name("deploy/web").unwrap_err().to_string(),
            "droverctl logs takes a replica (e.g. droverctl logs web-7f9c2-0), not \"deploy/web\""
        );
        assert!(replica_name("replica/").is_err());
        assert!(replica_name("").is_err());
    }

    #[test]
    fn previous_since_and_timestamps_take_kubectl_forms() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "droverctl",
            "logs",
            "-p",
            "--since",
            "5m",
            "--timestamps",
            "web-1",
        ])
        .expect("parses");
        let Command::Logs(l) = cli.command else {
            panic!("not logs")
        };
        assert!(l.previous && l.timestamps);
        assert_eq!(l.since, Some(Duration::from_secs(300)));
        assert!(Cli::try_parse_from(["droverctl", "logs", "--since", "0s", "web-1"]).is_err());
        assert!(Cli::try_parse_from(["droverctl", "logs", "--since", "soon", "web-1"]).is_err());
    }

    #[test]
    fn tail_minus_one_means_all() {
        assert_eq!(tail_lines(-1).unwrap(), 0);
        assert_eq!(tail_lines(20).unwrap(), 20);
        assert!(tail_lines(0).is_err());
    }

    #[test]
    fn unscheduled_or_addressless_replicas_are_refused_clearly() {
        let mut r = replica(3, "", ReplicaState::Pending, 1);
        r.pending_reason = "0/3 nodes are available: 3 insufficient memory".into();
        assert_eq!(
            log_source(&r).unwrap_err().to_string(),
            "replica \"web-7f9c2-3\" is not scheduled to a node yet (0/3 nodes are available: 3 insufficient memory)"
        );
        r.pending_reason.clear();
        assert_eq!(
            log_source(&r).unwrap_err().to_string(),
            "replica \"web-7f9c2-3\" is not scheduled to a node yet"
        );
        let mut r = replica(1, "n1", ReplicaState::Running, 1);
        assert_eq!(
            log_source(&r).unwrap(),
            ("n1".to_string(), "127.0.0.1:7101".to_string())
        );
        assert_eq!(agent_id(&r), "default.web-7f9c2-1");
        r.node_address.clear();
        assert_eq!(
            log_source(&r).unwrap_err().to_string(),
            "replica \"web-7f9c2-1\" is on node \"n1\", whose agent has not registered an address to fetch logs from"
        );
    }
}
