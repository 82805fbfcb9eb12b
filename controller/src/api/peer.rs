//! `drover.v1.Raft`: raft messages, forwarded writes and status between members.
//!
//! Raft messages are rust-protobuf 2 bytes; that decoder has known recursion
//! issues on hostile input (RUSTSEC-2024-0437), so only peers may reach it:
//! the listener's [`AuthorizeLayer`](drover_pki::authz::AuthorizeLayer)
//! refuses every `drover.v1.Raft` call whose client certificate is not a
//! controller's before the request body is read, and [`PeerService::step`]
//! checks again before decoding. A message that fails to decode is refused and
//! logged, never stepped.
//!
//! A controller certificate alone is not enough: `Step`, `StepStream` and
//! `Forward` are accepted only from a current member whose certificate name
//! is its member id (a stream checks membership again for every batch), and
//! raft messages only those that member sent (`from`). Message types
//! raft uses only inside one node (`MsgHup`, `MsgBeat`, ...) are dropped: a
//! peer has no business sending them. A `MsgPropose` is a follower's relayed
//! write: stepped only when it holds at least one entry (an empty one panics
//! raft-rs) and every entry is a command this controller can apply.

use std::net::SocketAddr;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use drover_pki::authz::Caller;
use drover_pki::Role;
use drover_proto::pb;

use crate::cluster::{node_error, Cluster};
use crate::raft::core::{check_relayed, Inbound};
use crate::store::Write;

pub struct PeerService {
    pub cluster: Cluster,
}

impl PeerService {
    /// The member id of a verified controller caller that is a current member
    /// (None when the server runs `--insecure`); anyone else is refused.
    ///
    /// A controller that has no members yet (a joiner waiting for its first
    /// snapshot) accepts any controller whose certificate name is a member id:
    /// it cannot know the membership before the leader sends it.
    fn member_caller<T>(&self, request: &Request<T>, what: &str) -> Result<Option<u64>, Status> {
        let member = caller_member_id(request, what)?;
        if let Some(member) = member {
            self.check_member(member, what, request.remote_addr())?;
        }
        Ok(member)
    }

    /// Refuses a caller that is not (or no longer) a member.
    fn check_member(
        &self,
        member: u64,
        what: &str,
        remote: Option<SocketAddr>,
    ) -> Result<(), Status> {
        let members = self.cluster.store.members();
        if members.is_empty() || members.iter().any(|m| m.id == member) {
            Ok(())
        } else {
            warn!(remote = ?remote, member, "refusing {what} from a controller that is not a member");
            Err(Status::permission_denied(format!(
                "{what} are accepted from current members only, and member {member} is not one"
            )))
        }
    }

    /// Checks one batch from `sender` (the caller's member id; None when
    /// `--insecure`) and steps its messages.
    fn deliver(
        &self,
        sender: Option<u64>,
        remote: Option<SocketAddr>,
        batch: pb::RaftBatch,
    ) -> Result<(), Status> {
        if let Some(sender) = sender {
            if sender != batch.from {
                warn!(remote = ?remote, member = sender, from = batch.from, "refusing raft messages sent in another member's name");
                return Err(Status::permission_denied(format!(
                    "member {sender} may not send raft messages as member {}",
                    batch.from
                )));
            }
        }
        let me = self.cluster.handle.id();
        let mut msgs = Vec::with_capacity(batch.messages.len());
        let mut relayed = Vec::new();
        for bytes in &batch.messages {
            match Message::parse_from_bytes(bytes) {
                Ok(m) if m.from != batch.from => {
                    warn!(
                        from = batch.from,
                        message_from = m.from,
                        "refusing a raft message in another member's name"
                    );
                    return Err(Status::permission_denied(format!(
                        "a raft message from member {} arrived in a batch from member {}",
                        m.from, batch.from
                    )));
                }
                Ok(m) if m.get_msg_type() == MessageType::MsgPropose => {
                    // A follower's write relayed through raft: appended only
                    // if every entry is a command this controller applies.
                    let checked: Result<Vec<_>, _> = if m.entries.is_empty() {
                        // raft-rs panics on an empty one.
                        Err("it holds no entry".to_string())
                    } else {
                        m.entries.iter().map(check_relayed).collect()
                    };
                    match checked {
                        Ok(proposals) if m.to == me => {
                            relayed.extend(proposals);
                            msgs.push(m);
                        }
                        Ok(_) => warn!(
                            from = batch.from,
                            to = m.to,
                            "dropped a relayed write addressed to another member"
                        ),
                        Err(why) => {
                            warn!(from = batch.from, reason = %why, "dropped a relayed write")
                        }
                    }
                }
                Ok(m) if is_local_only(m.get_msg_type()) => {
                    warn!(from = batch.from, kind = ?m.get_msg_type(), "dropped a raft message of a local-only type from a peer");
                }
                Ok(m) if m.to == me => msgs.push(m),
                Ok(m) => {
                    warn!(
                        from = batch.from,
                        to = m.to,
                        "refusing a raft message addressed to another member"
                    );
                    return Err(Status::invalid_argument(format!(
                        "raft message addressed to member {}, this is member {me}",
                        m.to
                    )));
                }
                Err(e) => {
                    warn!(remote = ?remote, error = %e, "refusing an undecodable raft message");
                    return Err(Status::invalid_argument("undecodable raft message"));
                }
            }
        }
        self.cluster
            .transport
            .learn(batch.from, &batch.from_address);
        self.cluster.handle.step_inbound(Inbound {
            messages: msgs,
            relayed,
        });
        Ok(())
    }
}

/// The member id a verified controller caller's certificate names (None
/// when the server runs `--insecure`); anyone else is refused.
fn caller_member_id<T>(request: &Request<T>, what: &str) -> Result<Option<u64>, Status> {
    let remote = request.remote_addr();
    let id = match Caller::of(request) {
        Caller::Insecure => return Ok(None),
        Caller::Verified(id) if id.role == Role::Controller => id,
        other => {
            warn!(remote = ?remote, caller = ?other, "refusing {what} from a non-controller");
            return Err(Status::permission_denied(format!(
                "{what} are accepted from controllers only"
            )));
        }
    };
    match id.name.parse::<u64>() {
        Ok(member) => Ok(Some(member)),
        Err(_) => {
            warn!(remote = ?remote, caller = %id, "refusing {what} from a controller certificate that names no member id");
            Err(Status::permission_denied(format!(
                "{what} are accepted from members only, and {id} names no member id"
            )))
        }
    }
}

/// Message types raft-rs only creates inside one node; never stepped from a
/// peer. (`MsgPropose` crosses members only as a follower's relayed write,
/// checked entry by entry in `deliver`.)
fn is_local_only(kind: MessageType) -> bool {
    matches!(
        kind,
        MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
    )
}

#[tonic::async_trait]
impl pb::raft_server::Raft for PeerService {
    async fn step(&self, request: Request<pb::RaftBatch>) -> Result<Response<pb::StepAck>, Status> {
        let remote = request.remote_addr();
        // The layer already refused non-controllers; this keeps the decoder
        // safe even if the service is ever mounted without it.
        let sender = self.member_caller(&request, "raft messages")?;
        self.deliver(sender, remote, request.into_inner())?;
        Ok(Response::new(pb::StepAck {}))
    }

    /// Batches on one stream, each checked as `step` checks one. Membership
    /// is checked again per batch: a member removed while its stream is
    /// open is refused from then on. A refused batch ends the stream.
    async fn step_stream(
        &self,
        request: Request<Streaming<pb::RaftBatch>>,
    ) -> Result<Response<pb::StepAck>, Status> {
        let remote = request.remote_addr();
        let sender = self.member_caller(&request, "raft messages")?;
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            if let Some(sender) = sender {
                self.check_member(sender, "raft messages", remote)?;
            }
            self.deliver(sender, remote, batch)?;
        }
        Ok(Response::new(pb::StepAck {}))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        self.member_caller(&request, "forwarded writes")?;
        let write: Write = serde_json::from_slice(&request.into_inner().write)
            .map_err(|e| Status::invalid_argument(format!("undecodable forwarded write: {e}")))?;
        let result = self
            .cluster
            .handle
            .propose(write)
            .await
            .map_err(node_error)?;
        let body = serde_json::to_vec(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ForwardResponse { result: body }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::MemberStatus>, Status> {
        Ok(Response::new(self.cluster.local_status().await?))
    }

    /// A MsgSnapshot in chunks: the same checks as `step` on the first chunk
    /// (a member, in its own name, a snapshot for this member), then the data
    /// up to the announced size (at most [`drover_proto::MAX_SNAPSHOT_BYTES`]),
    /// then one step.
    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::StepAck>, Status> {
        let remote = request.remote_addr();
        let sender = self.member_caller(&request, "raft snapshots")?;
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        if let Some(sender) = sender {
            if sender != first.from {
                warn!(remote = ?remote, member = sender, from = first.from, "refusing a raft snapshot sent in another member's name");
                return Err(Status::permission_denied(format!(
                    "member {sender} may not send raft snapshots as member {}",
                    first.from
                )));
            }
        }
        let mut m = Message::parse_from_bytes(&first.message).map_err(|e| {
            warn!(remote = ?remote, error = %e, "refusing an undecodable raft snapshot message");
            Status::invalid_argument("undecodable raft snapshot message")
        })?;
        let me = self.cluster.handle.id();
        if m.get_msg_type() != MessageType::MsgSnapshot || m.from != first.from || m.to != me {
            warn!(remote = ?remote, from = first.from, kind = ?m.get_msg_type(), to = m.to, "refusing a snapshot stream that does not carry a snapshot from its sender to this member");
            return Err(Status::invalid_argument(
                "a snapshot stream must carry a MsgSnapshot from its sender to this member",
            ));
        }
        if first.data_size > drover_proto::MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "a snapshot of {} bytes is above the {} accepted",
                first.data_size,
                drover_proto::MAX_SNAPSHOT_BYTES
            )));
        }
        let size = usize::try_from(first.data_size)
            .map_err(|_| Status::resource_exhausted("snapshot too large for this machine"))?;
        let mut data = Vec::with_capacity(size.min(64 << 20));
        data.extend_from_slice(&first.data);
        while let Some(chunk) = chunks.message().await? {
            if data.len() + chunk.data.len() > size {
                return Err(Status::invalid_argument(format!(
                    "the snapshot stream carries more than the {size} bytes it announced"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() != size {
            return Err(Status::invalid_argument(format!(
                "the snapshot stream ended after {} of the {size} bytes it announced",
                data.len()
            )));
        }
        m.mut_snapshot().set_data(data.into());
        self.cluster
            .transport
            .learn(first.from, &first.from_address);
        self.cluster.handle.step(vec![m]);
        Ok(Response::new(pb::StepAck {}))
    }
}
