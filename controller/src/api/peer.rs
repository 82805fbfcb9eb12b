//! `drover.v1.Raft`: raft messages, forwarded writes and status between members.
//!
//! Raft messages are rust-protobuf 2 bytes; that decoder has known recursion
//! issues on hostile input (RUSTSEC-2024-0437), so only peers may reach it:
//! the listener's [`AuthorizeLayer`](drover_pki::authz::AuthorizeLayer)
//! refuses every `drover.v1.Raft` call whose client certificate is not a
//! controller's before the request body is read, and [`PeerService::step`]
//! checks again before decoding. A message that fails to decode is refused and
//! logged, never stepped.

use protobuf::Message as _;
use raft::prelude::Message;
use tonic::{Request, Response, Status};
use tracing::warn;

use drover_pki::authz::Caller;
use drover_pki::Role;
use drover_proto::pb;

use crate::cluster::{node_error, Cluster};
use crate::store::Write;

pub struct PeerService {
    pub cluster: Cluster,
}

#[tonic::async_trait]
impl pb::raft_server::Raft for PeerService {
    async fn step(&self, request: Request<pb::RaftBatch>) -> Result<Response<pb::StepAck>, Status> {
        let remote = request.remote_addr();
        // The layer already refused non-controllers; this keeps the decoder
        // safe even if the service is ever mounted without it.
        match Caller::of(&request) {
            Caller::Insecure => {}
            Caller::Verified(id) if id.role == Role::Controller => {}
            other => {
                warn!(remote = ?remote, caller = ?other, "refusing raft messages from a non-controller");
                return Err(Status::permission_denied(
                    "raft messages are accepted from controllers only",
                ));
            }
        }
        let batch = request.into_inner();
        let me = self.cluster.handle.id();
        let mut msgs = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            match Message::parse_from_bytes(bytes) {
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
        self.cluster.handle.step(msgs);
        Ok(Response::new(pb::StepAck {}))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
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
}
