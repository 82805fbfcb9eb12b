//! The way into the running controller that every service and loop shares.
//!
//! A [`Cluster`] commits writes through raft (proposed here, or forwarded to
//! the leader) and gates reads (after a ReadIndex barrier); the functions
//! beside it turn store and raft errors into gRPC statuses, and [`wire`]
//! converts replica status between the store and the wire. Used by `api`,
//! `dispatcher`, `leader` and `server`; uses only `raft` and `store`.

pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_pki::{self as pki, Security};
use drover_proto::pb;
use drover_proto::pb::raft_client::RaftClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::debug;

use crate::raft::node::{Handle, NodeError, NodeStatus};
use crate::raft::transport::GrpcTransport;
use crate::store::services::ServiceRange;
use crate::store::{Command, Store, Write, WriteError, WriteResult};

/// What the services need from the running controller.
#[derive(Clone)]
pub struct Cluster {
    pub handle: Handle,
    pub store: Store,
    pub transport: Arc<GrpcTransport>,
    pub self_address: String,
    /// How long writes and linearizable reads wait for a leader.
    pub leader_wait: Duration,
    pub max_replicas: u32,
    /// `--service-cluster-ip-range`: where new Services get their address.
    pub service_range: ServiceRange,
    pub started: Instant,
    /// Channels to other members, and the credentials they were made with.
    channels: Arc<Mutex<(Security, HashMap<String, Channel>)>>,
    /// How this controller connects to its peers (renewed in place).
    pub security: watch::Receiver<Security>,
}

impl Cluster {
    pub fn new(
        handle: Handle,
        store: Store,
        transport: Arc<GrpcTransport>,
        self_address: String,
        leader_wait: Duration,
        max_replicas: u32,
        security: watch::Receiver<Security>,
    ) -> Cluster {
        let initial = security.borrow().clone();
        Cluster {
            handle,
            store,
            transport,
            self_address,
            leader_wait,
            max_replicas,
            service_range: ServiceRange::default(),
            started: Instant::now(),
            channels: Arc::new(Mutex::new((initial, HashMap::new()))),
            security,
        }
    }

    /// Commit a write through raft, from any member: proposed here when this
    /// member leads, forwarded to the leader otherwise. Waits up to
    /// `leader_wait` for a leader to exist.
    pub async fn write(&self, write: Write) -> Result<WriteResult, Status> {
        self.write_ref(&write).await
    }

    /// [`Cluster::write`] for a caller that keeps the write (to retry it).
    pub async fn write_ref(&self, write: &Write) -> Result<WriteResult, Status> {
        let deadline = Instant::now() + self.leader_wait;
        // Apply and scale set absolute values, so repeating one whose fate is
        // unknown is harmless; delete and membership changes are not repeated.
        let idempotent = matches!(
            write,
            Write::Command(Command::Apply { .. } | Command::Scale { .. })
        );
        loop {
            let seen = self.handle.leadership();
            match self.handle.propose(write.clone()).await {
                Ok(result) => return result.map_err(write_error),
                Err(NodeError::NotLeader {
                    leader: Some(leader),
                }) => match self.forward(leader, write).await {
                    Forwarded::Done(result) => return result,
                    Forwarded::Retry => {}
                    Forwarded::Unknown(status) if !idempotent => return Err(status),
                    Forwarded::Unknown(_) => {}
                },
                Err(NodeError::NotLeader { leader: None }) | Err(NodeError::Dropped(_)) => {}
                Err(NodeError::Unconfirmed(_)) if idempotent => {}
                Err(e) => return Err(node_error(e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.no_leader());
            }
            self.handle
                .wait_for_change(seen, (deadline - now).min(Duration::from_millis(100)))
                .await;
        }
    }

    async fn forward(&self, leader: u64, write: &Write) -> Forwarded {
        let Some(address) = self.transport.address_of(leader) else {
            return Forwarded::Retry;
        };
        let body = match serde_json::to_vec(write) {
            Ok(b) => b,
            Err(e) => {
                return Forwarded::Done(Err(Status::internal(format!("encoding the write: {e}"))))
            }
        };
        let mut client = match self.client(&address) {
            Ok(c) => c,
            Err(status) => return Forwarded::Done(Err(status)),
        };
        match client.forward(pb::ForwardRequest { write: body }).await {
            Ok(resp) => {
                let decoded: Result<Result<WriteResult, WriteError>, _> =
                    serde_json::from_slice(&resp.into_inner().result);
                match decoded {
                    Ok(r) => Forwarded::Done(r.map_err(write_error)),
                    Err(e) => Forwarded::Done(Err(Status::internal(format!(
                        "the leader's answer could not be decoded ({e}); are all controllers the same version?"
                    )))),
                }
            }
            // The leader says it is not (or no longer) leader, or dropped it.
            Err(s) if s.code() == Code::Aborted => Forwarded::Retry,
            // The leader took it but could not confirm it.
            Err(s) if s.code() == Code::DeadlineExceeded => Forwarded::Unknown(s),
            Err(s) if s.code() == Code::Unavailable => {
                debug!(leader, address = %address, error = %s.message(), "forwarding to the leader failed");
                Forwarded::Unknown(Status::unavailable(format!(
                    "the leader (controller {leader} at {address}) stopped answering while handling the write; \
                     it may or may not have been applied — check with droverctl get"
                )))
            }
            Err(s) => Forwarded::Done(Err(s)),
        }
    }

    pub(crate) fn client(&self, address: &str) -> Result<RaftClient<Channel>, Status> {
        let current = self.security.borrow().clone();
        let mut guard = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let (made_with, channels) = &mut *guard;
        if !current.same_as(made_with) {
            // The certificate was renewed: new connections, with the new one.
            channels.clear();
            *made_with = current.clone();
        }
        let channel = match channels.get(address) {
            Some(c) => c.clone(),
            None => {
                let endpoint = current
                    .endpoint(address, &pki::Server::Controller)
                    .map_err(|e| Status::internal(format!("member address: {e}")))?
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(15))
                    .tcp_nodelay(true);
                let c = endpoint.connect_lazy();
                channels.insert(address.to_string(), c.clone());
                c
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(drover_proto::MAX_REQUEST_BYTES * 2)
            .max_encoding_message_size(drover_proto::MAX_REQUEST_BYTES * 2))
    }

    /// Wait until this member may serve a linearizable read (ReadIndex), or
    /// return at once for a stale read.
    pub async fn read_barrier(&self, read: Option<&pb::ReadOptions>) -> Result<(), Status> {
        if read.is_some_and(|r| r.stale) {
            return Ok(());
        }
        let deadline = Instant::now() + self.leader_wait;
        let started = Instant::now();
        loop {
            match self.handle.read_barrier().await {
                Ok(()) => {
                    crate::metrics::get().read_index(started);
                    return Ok(());
                }
                Err(NodeError::ReadTimeout) if Instant::now() < deadline => {}
                Err(NodeError::ReadTimeout) => return Err(self.no_leader()),
                Err(e) => return Err(node_error(e)),
            }
        }
    }

    fn no_leader(&self) -> Status {
        Status::unavailable(format!(
            "no leader: controller {} at {} cannot reach a majority of the cluster; \
             retry once most controllers are up (use --stale to read this controller's possibly old state)",
            self.handle.id(),
            self.self_address
        ))
    }

    /// This member's own status, in wire form.
    pub async fn local_status(&self) -> Result<pb::MemberStatus, Status> {
        let s = self.handle.status().await.map_err(node_error)?;
        Ok(member_status(
            &s,
            &self.self_address,
            self.started.elapsed(),
        ))
    }
}

enum Forwarded {
    Done(Result<WriteResult, Status>),
    /// Certainly not applied: try again (perhaps with a new leader).
    Retry,
    /// Sent, but its fate is unknown.
    Unknown(Status),
}

pub(crate) fn member_status(s: &NodeStatus, address: &str, uptime: Duration) -> pb::MemberStatus {
    pb::MemberStatus {
        id: s.id,
        address: address.to_string(),
        reachable: true,
        error: String::new(),
        role: s.role.clone(),
        term: s.term,
        leader_id: s.leader_id,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_index: s.last_index,
        snapshot_index: s.snapshot_index,
        state_hash: s.state_hash.clone(),
        voter: s.voters.contains(&s.id),
        uptime_ms: uptime.as_millis() as u64,
        stalled: s.stalled.clone(),
    }
}

/// Refuse a node certificate (the caller's, DER) issued before node `name`
/// was last deleted: `droverctl delete node` revokes the certificates of the
/// name (their serial carries an older epoch). Read from this member's store:
/// callers that need it current read it after a barrier.
pub(crate) fn check_not_revoked(
    store: &crate::store::Store,
    name: &str,
    der: &[u8],
) -> Result<(), Status> {
    let current = store.node_epoch(name);
    let held = drover_pki::serial_epoch(der).unwrap_or(0);
    if held >= current {
        return Ok(());
    }
    tracing::warn!(node = %name, epoch = held, current, "refused a revoked node certificate");
    Err(Status::permission_denied(format!(
        "the certificate of node {name} was revoked when the node was deleted (droverctl delete node): join again with a join token"
    )))
}

/// The verified client certificate of a request (DER), if any.
pub(crate) fn peer_cert<T>(request: &tonic::Request<T>) -> Option<Vec<u8>> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
}

pub(crate) fn write_error(e: WriteError) -> Status {
    match e {
        WriteError::NotFound { .. }
        | WriteError::NodeNotFound(_)
        | WriteError::TokenNotFound(_)
        | WriteError::ConfigNotFound { .. }
        | WriteError::ServiceNotFound { .. } => Status::not_found(e.to_string()),
        WriteError::Service { .. } => Status::invalid_argument(e.to_string()),
        WriteError::Immutable { .. } => Status::failed_precondition(e.to_string()),
        WriteError::TokenExists(_) => Status::already_exists(e.to_string()),
        WriteError::NoRevision { .. } | WriteError::NodeReady(_) => {
            Status::failed_precondition(e.to_string())
        }
        WriteError::Conflict { .. } => Status::aborted(e.to_string()),
        WriteError::TokenRole(_) => Status::permission_denied(e.to_string()),
    }
}

pub(crate) fn node_error(e: NodeError) -> Status {
    match e {
        NodeError::NotLeader { .. } | NodeError::Dropped(_) => Status::aborted(e.to_string()),
        NodeError::Unconfirmed(_) => {
            Status::deadline_exceeded(format!("{e} — check with droverctl get before retrying"))
        }
        NodeError::ReadTimeout => Status::unavailable(e.to_string()),
        NodeError::Refused(m) => Status::failed_precondition(m),
        NodeError::Stopped => Status::unavailable("this controller is shutting down; use another"),
        // Unavailable: droverctl backs off and retries.
        NodeError::Busy => Status::unavailable(e.to_string()),
    }
}

/// Wall-clock time for commands (chosen by the proposer, never read in apply).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
