//! The agent's own gRPC service (`drover.v1.Agent`): container logs, streamed
//! from the runtime to droverctl (through whoever asks).

use std::pin::Pin;
use std::sync::Arc;

use drover_pki::authz::{self, AuthorizeLayer};
use drover_pki::Security;
use drover_proto::pb;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::error::AgentError;
use crate::runtime::{LogOptions, Runtime};

/// Serves `Agent.Logs` from a runtime.
pub struct AgentService<R> {
    runtime: Arc<R>,
}

impl<R> AgentService<R> {
    pub fn new(runtime: Arc<R>) -> AgentService<R> {
        AgentService { runtime }
    }
}

fn to_status(e: AgentError) -> Status {
    match e {
        AgentError::UnknownReplica(_) | AgentError::NoSuchContainer { .. } => {
            Status::not_found(e.to_string())
        }
        AgentError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<R: Runtime> pb::agent_server::Agent for AgentService<R> {
    type LogsStream = LogsStream;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        debug!(replica = %req.replica, follow = req.follow, tail = req.tail, "logs requested");
        let opts = LogOptions {
            follow: req.follow,
            tail: (req.tail > 0).then_some(req.tail),
        };
        let stream = self
            .runtime
            .logs(&req.replica, opts)
            .await
            .map_err(to_status)?;
        let stream = stream.map(|chunk| {
            chunk
                .map(|c| pb::LogChunk {
                    data: c.data,
                    stream: c.source.as_str().to_string(),
                })
                .map_err(to_status)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serve the Agent service on `incoming` until `shutdown`. When the node
/// certificate is renewed the server restarts on the same address with it
/// (connections being served finish on the old one).
pub async fn serve<R: Runtime>(
    runtime: Arc<R>,
    incoming: TcpIncoming,
    mut security: watch::Receiver<Security>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let address = incoming.local_addr().ok();
    let mut incoming = Some(incoming);
    loop {
        let current = security.borrow_and_update().clone();
        let listener = match incoming.take() {
            Some(l) => l,
            None => {
                let Some(addr) = address else {
                    return Err(AgentError::Config(
                        "the Agent service lost its listening address".into(),
                    ));
                };
                TcpIncoming::bind(addr)
                    .map_err(|e| AgentError::Config(format!("cannot listen on {addr} again: {e}")))?
                    .with_nodelay(Some(true))
            }
        };
        let mut builder = Server::builder();
        if let Security::Tls(material) = &current {
            let tls = material
                .server_config()
                .map_err(|e| AgentError::Config(format!("the node certificate: {e}")))?;
            builder = builder
                .tls_config(tls)
                .map_err(|e| AgentError::Config(format!("TLS for the Agent service: {e}")))?;
        }
        let stop = shutdown.clone();
        let mut changes = security.clone();
        let renewed = CancellationToken::new();
        let restart = renewed.clone();
        builder
            .layer(AuthorizeLayer::new(
                authz::agent_policy,
                !current.is_insecure(),
            ))
            .add_service(pb::agent_server::AgentServer::new(AgentService::new(
                runtime.clone(),
            )))
            .serve_with_incoming_shutdown(listener, async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = changes.changed() => {
                        if r.is_ok() {
                            restart.cancel();
                        } else {
                            stop.cancelled().await;
                        }
                    }
                }
            })
            .await
            .map_err(|e| AgentError::Config(format!("the Agent gRPC server failed: {e}")))?;
        if !renewed.is_cancelled() || shutdown.is_cancelled() {
            return Ok(());
        }
        debug!("restarting the Agent service with the renewed certificate");
    }
}
