//! An in-process fake of the controller's Dispatcher service: each accepted
//! session is handed to the test as a [`Conn`] to read from and write to, and
//! sessions can be refused with a chosen gRPC status.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

/// One session, seen from the controller's side.
pub struct Conn {
    pub from_agent: mpsc::UnboundedReceiver<pb::AgentMessage>,
    pub to_agent: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
}

impl Conn {
    /// The next message from the agent, within `limit`.
    pub async fn recv(&mut self, limit: Duration) -> pb::AgentMessage {
        tokio::time::timeout(limit, self.from_agent.recv())
            .await
            .expect("a message from the agent in time")
            .expect("the agent's stream is open")
    }

    /// The Hello that opens every session.
    pub async fn hello(&mut self) -> pb::Hello {
        match self.recv(Duration::from_secs(5)).await.kind {
            Some(pb::agent_message::Kind::Hello(h)) => h,
            other => panic!("expected Hello first, got {other:?}"),
        }
    }

    /// Send a full assignment set.
    pub async fn assign(&self, version: u64, assignments: Vec<pb::Assignment>) {
        self.assign_set(version, assignments, Vec::new()).await;
    }

    /// Send a full assignment set naming replicas being stopped.
    pub async fn assign_set(
        &self,
        version: u64,
        assignments: Vec<pb::Assignment>,
        terminating: Vec<String>,
    ) {
        let msg = pb::ControllerMessage {
            kind: Some(pb::controller_message::Kind::Assignments(
                pb::AssignmentSet {
                    version,
                    assignments,
                    terminating,
                    ..Default::default()
                },
            )),
        };
        self.to_agent.send(Ok(msg)).await.expect("agent connected");
    }
}

#[derive(Clone)]
pub struct Fake {
    conns: mpsc::UnboundedSender<Conn>,
    refuse: Arc<Mutex<Option<(Code, String)>>>,
    pub refused: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for Fake {
    type SessionStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let refusal = self.refuse.lock().expect("lock").clone();
        if let Some((code, message)) = refusal {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Status::new(code, message));
        }
        let mut inbound = request.into_inner();
        let (atx, arx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if atx.send(m).is_err() {
                    break;
                }
            }
        });
        let (tx, rx) = mpsc::channel(16);
        let _ = self.conns.send(Conn {
            from_agent: arx,
            to_agent: tx,
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A running fake controller.
pub struct FakeController {
    pub addr: SocketAddr,
    pub conns: mpsc::UnboundedReceiver<Conn>,
    pub fake: Fake,
    stop: CancellationToken,
}

impl FakeController {
    pub async fn start() -> FakeController {
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = incoming.local_addr().expect("local addr");
        let (tx, conns) = mpsc::unbounded_channel();
        let fake = Fake {
            conns: tx,
            refuse: Arc::new(Mutex::new(None)),
            refused: Arc::new(AtomicUsize::new(0)),
        };
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(pb::dispatcher_server::DispatcherServer::new(fake.clone()));
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = server
                .serve_with_incoming_shutdown(incoming, async move { s.cancelled().await })
                .await;
        });
        FakeController {
            addr,
            conns,
            fake,
            stop,
        }
    }

    /// Refuse every session with this status until [`FakeController::accept`].
    pub fn refuse(&self, code: Code, message: impl Into<String>) {
        *self.fake.refuse.lock().expect("lock") = Some((code, message.into()));
    }

    pub fn accept(&self) {
        *self.fake.refuse.lock().expect("lock") = None;
    }

    pub fn refused(&self) -> usize {
        self.fake.refused.load(Ordering::SeqCst)
    }

    /// The next session an agent opens, within `limit`.
    pub async fn next_conn(&mut self, limit: Duration) -> Conn {
        tokio::time::timeout(limit, self.conns.recv())
            .await
            .expect("an agent session in time")
            .expect("server running")
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
