//! The agent's own gRPC service (`drover.v1.Agent`): container logs, streamed
//! from the runtime to droverctl (through whoever asks), and the debugging
//! sessions of [`crate::debugging`] (exec, port-forward).

use std::pin::Pin;
use std::sync::Arc;

use drover_pki::authz::{self, AuthorizeLayer, Caller};
use drover_pki::Security;
use drover_proto::pb;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::debugging::{self, Sessions};
use crate::error::AgentError;
use crate::runtime::{LogOptions, Runtime};

/// Serves the Agent service from a runtime.
pub struct AgentService<R> {
    runtime: Arc<R>,
    sessions: Sessions,
}

impl<R> AgentService<R> {
    pub fn new(runtime: Arc<R>, sessions: Sessions) -> AgentService<R> {
        AgentService { runtime, sessions }
    }
}

pub(crate) fn to_status(e: AgentError) -> Status {
    match e {
        AgentError::UnknownReplica(_)
        | AgentError::NoSuchContainer { .. }
        | AgentError::NoPreviousRun(_) => Status::not_found(e.to_string()),
        AgentError::Unsupported(_) | AgentError::StartFailed(_) => {
            Status::failed_precondition(e.to_string())
        }
        AgentError::InvalidSpec(_) => Status::invalid_argument(e.to_string()),
        AgentError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send + 'static>>;
type ExecStream = ReceiverStream<Result<pb::ExecOutput, Status>>;
type PortForwardStream = ReceiverStream<Result<pb::PortForwardOutput, Status>>;

#[tonic::async_trait]
impl<R: Runtime> pb::agent_server::Agent for AgentService<R> {
    type LogsStream = LogsStream;
    type ExecStream = ExecStream;
    type PortForwardStream = PortForwardStream;

    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let who = debugging::who(&Caller::of(&request));
        let rx = debugging::exec(
            self.runtime.clone(),
            &self.sessions,
            who,
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn port_forward(
        &self,
        request: Request<Streaming<pb::PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let who = debugging::who(&Caller::of(&request));
        let rx = debugging::port_forward(
            self.runtime.clone(),
            &self.sessions,
            who,
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        debug!(replica = %req.replica, follow = req.follow, tail = req.tail,
            previous = req.previous, "logs requested");
        if req.previous && req.follow {
            return Err(Status::invalid_argument(
                "--previous cannot be followed: the previous run has ended (drop -f)",
            ));
        }
        let opts = LogOptions {
            follow: req.follow,
            tail: (req.tail > 0).then_some(req.tail),
            previous: req.previous,
            since_unix_ms: (req.since_unix_ms > 0).then_some(req.since_unix_ms),
            timestamps: req.timestamps,
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
/// certificate is renewed the server starts again on the same address with
/// it at once; the old one stops accepting and finishes its connections in
/// the background (a `logs -f` whose client vanished may hold one for long,
/// but never keeps the listener closed). Stopping the agent ends them all.
pub async fn serve<R: Runtime>(
    runtime: Arc<R>,
    sessions: Sessions,
    incoming: TcpIncoming,
    mut security: watch::Receiver<Security>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let address = incoming.local_addr().ok();
    let mut incoming = Some(incoming);
    // Earlier generations, draining their connections.
    let mut draining = tokio::task::JoinSet::new();
    let result = loop {
        let current = security.borrow_and_update().clone();
        let listener = match incoming.take() {
            Some(l) => l,
            None => {
                let Some(addr) = address else {
                    break Err(AgentError::Config(
                        "the Agent service lost its listening address".into(),
                    ));
                };
                match bind_again(addr, &shutdown).await {
                    Ok(Some(l)) => l,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        };
        let mut builder = drover_pki::server_builder();
        if let Security::Tls(material) = &current {
            let tls = match material.server_config() {
                Ok(t) => t,
                Err(e) => break Err(AgentError::Config(format!("the node certificate: {e}"))),
            };
            builder = match builder.tls_config(tls) {
                Ok(b) => b,
                Err(e) => {
                    break Err(AgentError::Config(format!(
                        "TLS for the Agent service: {e}"
                    )))
                }
            };
        }
        let stop = shutdown.clone();
        let mut changes = security.clone();
        let renewed = CancellationToken::new();
        let restart = renewed.clone();
        let server = builder
            .layer(AuthorizeLayer::new(
                authz::agent_policy,
                !current.is_insecure(),
            ))
            .add_service(pb::agent_server::AgentServer::new(AgentService::new(
                runtime.clone(),
                sessions.clone(),
            )))
            .serve_with_incoming_shutdown(
                drover_pki::limit::limit_connections(listener, drover_pki::limit::MAX_CONNECTIONS),
                async move {
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
                },
            );
        let mut task = tokio::spawn(server);
        tokio::select! {
            _ = shutdown.cancelled() => {
                task.abort();
                break Ok(());
            }
            ended = &mut task => {
                break match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(AgentError::Config(format!("the Agent gRPC server failed: {e}"))),
                    Err(e) => Err(AgentError::Config(format!("the Agent gRPC server stopped: {e}"))),
                };
            }
            _ = renewed.cancelled() => {
                debug!("restarting the Agent service with the renewed certificate");
                draining.spawn(async move {
                    let _ = task.await;
                });
            }
        }
    };
    draining.abort_all();
    result
}

/// Bind `addr` again once the previous server has let go of it (it closes
/// its listener as soon as it sees the renewal). None: stopped meanwhile.
async fn bind_again(
    addr: std::net::SocketAddr,
    shutdown: &CancellationToken,
) -> Result<Option<TcpIncoming>, AgentError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match TcpIncoming::bind(addr) {
            Ok(l) => return Ok(Some(l.with_nodelay(Some(true)))),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(AgentError::Config(format!(
                    "cannot listen on {addr} again: {e}"
                )))
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
        }
    }
}
