//! The dispatcher: agent sessions on the leader.
//!
//! ```text
//!  agent ──Hello, Heartbeat, StatusReport──▶ Session ──┬─▶ RegisterNode (raft)
//!        ◀── AssignmentSet (whole, then changes) ────┐ ├─▶ heartbeats (leader memory)
//!                                                    │ └─▶ StatusBatcher ─100 ms─▶ ReportStatus (raft)
//!                          AssignmentBook ◀─applied─┘
//!                    (node → assignments, rebuilt once per applied change)
//! ```
//!
//! Only the leader serves sessions; a follower refuses with
//! FAILED_PRECONDITION naming `leader=<address>` so the agent moves. When this
//! controller loses leadership every session ends and agents reconnect to the
//! new leader, which rebuilds everything from the store. Heartbeat times are
//! the only state kept in memory.

mod book;
pub mod config;
mod pending;
pub mod services;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use drover_pki::authz::Caller;
use drover_pki::Role;
use drover_proto::pb::agent_message::Kind;
use drover_proto::{names, pb};

use crate::cluster::wire::observed_from_pb;
use crate::cluster::{now_unix_ms, Cluster};
use crate::store::{Command, NodeRegistration, Resources, Write};

pub use book::{AssignmentBook, Assignments, NodeSet};
pub use pending::{Pending, Report};

/// How long status reports are collected before one raft entry carries
/// them, from the first report of a batch: changes that follow each other
/// quickly reach the store as their last state. A container that starts and
/// exits at once is one `Error` report, not a `Running` and ready replica
/// for a moment: with a 10 ms wait after a lone report (tried in session
/// 17) such a replica counted as available between its restarts, and `lab
/// up` saw a deployment that cannot run as 1 of 2 available. The
/// simulator's batcher waits the same.
pub const STATUS_BATCH: Duration = Duration::from_millis(100);

/// When each node's agent was last heard from (leader memory only).
#[derive(Clone, Default)]
pub struct Heartbeats(Arc<Mutex<HashMap<String, Instant>>>);

impl Heartbeats {
    pub fn beat(&self, node: &str) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A known node's time is overwritten in place: 2,000 beats a second
        // from 1,000 agents allocate nothing.
        match map.get_mut(node) {
            Some(last) => *last = now,
            None => {
                map.insert(node.to_string(), now);
            }
        }
    }

    pub fn last(&self, node: &str) -> Option<Instant> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(node).copied()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

struct LiveSession {
    incarnation: String,
    id: u64,
}

/// The `drover.v1.Dispatcher` service.
#[derive(Clone)]
pub struct Dispatcher {
    cluster: Cluster,
    book: AssignmentBook,
    sessions: Arc<Mutex<HashMap<String, LiveSession>>>,
    pub heartbeats: Heartbeats,
    reports: Arc<Pending>,
    next_session: Arc<AtomicU64>,
    /// The leader marks a node NotReady after this long without a heartbeat.
    node_timeout: Duration,
}

impl Dispatcher {
    /// Start the dispatcher's background tasks (assignment book, status batcher).
    pub fn start(
        cluster: Cluster,
        node_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Dispatcher {
        let book = AssignmentBook::start(cluster.clone(), shutdown.clone());
        let reports = Arc::new(Pending::default());
        tokio::spawn(batch_statuses(cluster.clone(), reports.clone(), shutdown));
        Dispatcher {
            cluster,
            book,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            heartbeats: Heartbeats::default(),
            reports,
            next_session: Arc::new(AtomicU64::new(1)),
            node_timeout,
        }
    }

    fn not_leader(&self) -> Status {
        let l = self.cluster.handle.leadership();
        match self.cluster.transport.address_of(l.leader_id) {
            Some(address) if l.leader_id != 0 => Status::failed_precondition(format!(
                "controller {} is not the leader; leader={address}",
                self.cluster.handle.id()
            )),
            _ => Status::unavailable("no leader elected yet; retry shortly"),
        }
    }

    fn report(&self, node: &str, statuses: Vec<pb::ReplicaStatus>) {
        for s in statuses {
            let Some((target, observed)) = observed_from_pb(&s) else {
                debug!(node, replica = %s.replica, "ignoring a status for an unknown replica id");
                continue;
            };
            self.reports.push((node.to_string(), target, observed));
        }
    }

    /// Take the name for this session, refusing a second live agent.
    fn claim(&self, node: &str, incarnation: &str) -> Result<u64, Status> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = sessions.get(node) {
            if live.incarnation != incarnation {
                return Err(Status::already_exists(format!(
                    "node name {node:?} is in use by another live agent; give this agent another --name, \
                     or stop the other one"
                )));
            }
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        sessions.insert(
            node.to_string(),
            LiveSession {
                incarnation: incarnation.to_string(),
                id,
            },
        );
        Ok(id)
    }

    fn release(&self, node: &str, id: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(node).is_some_and(|s| s.id == id) {
            sessions.remove(node);
        }
    }
}

/// Node labels under this prefix are set by admins only, never reported by
/// an agent: a compromised agent cannot claim them to attract workloads whose
/// `nodeSelector` is meant for another node.
pub const RESERVED_LABEL_PREFIX: &str = "node-restriction.drover.io/";

fn reserved_labels(hello: &pb::Hello) -> Result<(), Status> {
    match hello
        .labels
        .keys()
        .find(|k| k.starts_with(RESERVED_LABEL_PREFIX))
    {
        None => Ok(()),
        Some(key) => {
            warn!(node = %hello.node, "refused an agent session reporting a reserved label");
            Err(Status::permission_denied(format!(
                "node label {key:?} uses the reserved prefix {RESERVED_LABEL_PREFIX}, which agents may not report"
            )))
        }
    }
}

/// An agent speaks only for the node its certificate names (Kubernetes'
/// NodeRestriction): its registration, heartbeats and status reports all ride
/// on a session bound to that node.
fn node_restriction(caller: &Caller, node: &str) -> Result<(), Status> {
    match caller {
        Caller::Insecure => Ok(()),
        Caller::Verified(id) if id.role == Role::Agent && id.name == node => Ok(()),
        Caller::Verified(id) => {
            warn!(caller = %id, node = %node, "refused an agent session for another node");
            Err(Status::permission_denied(format!(
                "this certificate belongs to {id}; it cannot open a session as node {node:?}"
            )))
        }
        Caller::Anonymous => Err(Status::unauthenticated(
            "an agent session needs the node's certificate",
        )),
    }
}

/// How much sooner than the node timeout a fencing agent must kill its
/// replicas: the replacements start only after the timeout, a monitor tick and
/// a scheduling round, but the agent's kill and the network take time too.
pub const FENCING_MARGIN: Duration = Duration::from_millis(500);

/// Refuse an agent whose `--stop-after-disconnect` could not kill its
/// replicas before this cluster replaces them elsewhere: with it, a partition
/// would run a replica on two hosts at once (SPEC guarantee 9).
fn fencing_limit(hello: &pb::Hello, node_timeout: Duration) -> Result<(), Status> {
    let limit = Duration::from_millis(hello.stop_after_disconnect_ms);
    let most = node_timeout.saturating_sub(FENCING_MARGIN);
    if limit.is_zero() || limit <= most {
        return Ok(());
    }
    warn!(node = %hello.node, ?limit, ?node_timeout, "refused an agent whose fencing limit the node timeout beats");
    Err(Status::invalid_argument(format!(
        "--stop-after-disconnect {} cannot stop node {}'s replicas before this cluster's node \
         timeout ({}) replaces them elsewhere; use at most {}",
        drover_proto::duration::short(limit),
        hello.node,
        drover_proto::duration::short(node_timeout),
        drover_proto::duration::short(most),
    )))
}

fn registration(hello: &pb::Hello) -> NodeRegistration {
    let capacity = hello.capacity.unwrap_or_default();
    NodeRegistration {
        name: hello.node.clone(),
        labels: hello.labels.clone().into_iter().collect(),
        capacity: Resources {
            cpu_millis: capacity.cpu_millis,
            memory_bytes: capacity.memory_bytes,
        },
        address: hello.address.clone(),
        runtime: hello.runtime.clone(),
        agent_version: hello.version.clone(),
        incarnation: hello.incarnation.clone(),
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

/// What a session queues for its agent, boxed: a channel allocates its
/// slots 32 at a time, and a `ControllerMessage` or a `Status` is about
/// 200 bytes, so unboxed every session's queue held 6.7 KB (6.7 MB on a
/// leader with 1,000 agents).
type Outgoing = Result<Box<pb::ControllerMessage>, Box<Status>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for Dispatcher {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        if !self.cluster.handle.leadership().is_leader {
            return Err(self.not_leader());
        }
        let caller = Caller::of(&request);
        let cert = crate::cluster::peer_cert(&request);
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage {
                kind: Some(Kind::Hello(h)),
            }))) => h,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ))
            }
        };
        names::check_name("node name", &hello.node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        node_restriction(&caller, &hello.node)?;
        if let Some(der) = &cert {
            crate::cluster::check_not_revoked(&self.cluster.store, &hello.node, der)?;
        }
        reserved_labels(&hello)?;
        fencing_limit(&hello, self.node_timeout)?;
        if hello.incarnation.is_empty() {
            return Err(Status::invalid_argument("Hello.incarnation is empty"));
        }
        let node = hello.node.clone();
        let session_id = self.claim(&node, &hello.incarnation)?;
        // An agent that says Hello is alive: it counts from now, not from
        // when its registration commits (under load, or with a thousand
        // agents moving to a new leader at once, that can take longer than
        // the node timeout).
        self.heartbeats.beat(&node);
        let registered = self
            .cluster
            .write(Write::Command(Command::RegisterNode {
                node: registration(&hello),
                now_unix_ms: now_unix_ms(),
            }))
            .await;
        if let Err(e) = registered {
            self.release(&node, session_id);
            return Err(e);
        }
        info!(node = %node, address = %hello.address, runtime = %hello.runtime, "agent session opened");
        crate::metrics::get().session(1);
        self.report(&node, hello.replicas);

        let (tx, rx) = mpsc::channel::<Outgoing>(8);
        let this = self.clone();
        let changes = hello.accepts_changes;
        tokio::spawn(async move {
            let reason = this.serve(&node, changes, &mut inbound, &tx).await;
            this.release(&node, session_id);
            crate::metrics::get().session(-1);
            info!(node = %node, reason = %reason, "agent session closed");
        });
        let outgoing = ReceiverStream::new(rx).map(|m| m.map(|m| *m).map_err(|e| *e));
        Ok(Response::new(Box::pin(outgoing)))
    }
}

impl Dispatcher {
    /// Run one session until it ends; returns why it ended.
    /// An agent that `accepts_changes` gets its whole set first, then only
    /// what changes.
    ///
    /// Reading the agent never waits for writing to it: a heartbeat counts
    /// the moment it arrives, even while an agent that is slow to read has
    /// assignment sets queued (SPEC guarantee 8: load never makes a live node
    /// look silent). A set is built when the stream has room for it, from the
    /// book as it is then, so a slow agent gets the newest set (or the changes
    /// up to it) rather than every set in between.
    async fn serve(
        &self,
        node: &str,
        accepts_changes: bool,
        inbound: &mut Streaming<pb::AgentMessage>,
        tx: &mpsc::Sender<Outgoing>,
    ) -> String {
        let mut book = self.book.subscribe();
        let mut leadership = self.cluster.handle.leadership_watch();
        let term = leadership.borrow_and_update().term;
        let mut sent = Sent::default();
        // The book may hold something the agent does not have yet.
        let mut behind = true;
        loop {
            tokio::select! {
                biased;
                msg = inbound.message() => match msg {
                    Ok(Some(pb::AgentMessage { kind: Some(Kind::Heartbeat(_)) })) => {
                        self.heartbeats.beat(node);
                        let ack = pb::ControllerMessage {
                            kind: Some(pb::controller_message::Kind::HeartbeatAck(pb::HeartbeatAck {})),
                        };
                        // A full stream already carries the agent's next
                        // contact (an assignment set): the ack can go.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(Box::new(ack))) {
                            return "agent went away".into();
                        }
                    }
                    Ok(Some(pb::AgentMessage { kind: Some(Kind::Status(report)) })) => {
                        self.heartbeats.beat(node);
                        crate::usage::record(node, report.usage.as_ref());
                        self.report(node, report.replicas);
                    }
                    Ok(Some(_)) => {
                        let refusal = Status::invalid_argument("Hello may only be sent once per session");
                        let _ = tx.send(Err(Box::new(refusal))).await;
                        return "protocol error".into();
                    }
                    Ok(None) => return "agent closed the stream".into(),
                    Err(e) => return format!("stream error: {}", e.message()),
                },
                r = leadership.changed() => {
                    if r.is_err() {
                        return "controller stopping".into();
                    }
                    let now = *leadership.borrow_and_update();
                    if !now.is_leader || now.term != term {
                        let _ = tx.send(Err(Box::new(self.not_leader()))).await;
                        return "leadership moved".into();
                    }
                }
                permit = tx.reserve(), if behind => {
                    let Ok(permit) = permit else {
                        return "agent went away".into();
                    };
                    behind = false;
                    let b = book.borrow_and_update();
                    // Only a book built in this term is sent.
                    if b.term == term {
                        if let Some(set) = sent.next(&b, node, accepts_changes) {
                            permit.send(Ok(Box::new(pb::ControllerMessage {
                                kind: Some(pb::controller_message::Kind::Assignments(set)),
                            })));
                        }
                    }
                }
                changed = book.changed() => {
                    if changed.is_err() {
                        return "controller stopping".into();
                    }
                    behind = true;
                }
            }
        }
    }
}

/// What one session sent its agent last: the node's set and the Service
/// table, and the version they carried.
#[derive(Default)]
pub struct Sent {
    set: Option<Arc<NodeSet>>,
    services: Option<Arc<Vec<services::Route>>>,
    version: u64,
}

impl Sent {
    /// The message that brings the agent from what it was sent to `book`:
    /// the whole set the first time (or always, for an agent that does not
    /// take changes), then the changes; `None` when nothing differs.
    pub fn next(
        &mut self,
        book: &Assignments,
        node: &str,
        accepts_changes: bool,
    ) -> Option<pb::AssignmentSet> {
        let current = book.for_node(node);
        let routes = book.services.clone();
        // The Service table changed: send a set even if the node's did not.
        let services_changed = self
            .services
            .as_ref()
            .is_none_or(|old| !Arc::ptr_eq(old, &routes) && !services::same(old, &routes));
        // The book keeps a node's Arc while its set is unchanged: a
        // different Arc is (nearly always) a different set.
        let set_changed = self
            .set
            .as_ref()
            .is_none_or(|s| !Arc::ptr_eq(s, &current) && **s != *current);
        if !services_changed && !set_changed {
            return None;
        }
        self.version += 1;
        let version = self.version;
        let set = match self.set.as_deref().filter(|_| accepts_changes) {
            Some(before) => {
                let (assignments, removed) = current.changes_since(before);
                let (changed_services, removed_services) = services::changes_since(
                    &routes,
                    self.services.as_deref().map_or(&[][..], |s| &s[..]),
                );
                pb::AssignmentSet {
                    services: changed_services,
                    removed_services,
                    version,
                    base_version: version - 1,
                    assignments,
                    removed,
                    terminating: current.terminating.clone(),
                    terminating_grace_seconds: current.terminating_grace_seconds.clone(),
                    config_objects: current.config_objects.clone(),
                }
            }
            None => pb::AssignmentSet {
                version,
                services: routes.iter().map(|r| pb::ServiceRoute::clone(r)).collect(),
                assignments: current.assignments_pb(),
                terminating: current.terminating.clone(),
                terminating_grace_seconds: current.terminating_grace_seconds.clone(),
                config_objects: current.config_objects.clone(),
                ..Default::default()
            },
        };
        self.set = Some(current);
        self.services = Some(routes);
        Some(set)
    }
}

/// Collect agents' status reports and commit them as one entry at a time,
/// [`STATUS_BATCH`] after the first report of each.
async fn batch_statuses(cluster: Cluster, pending: Arc<Pending>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pending.wait() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(STATUS_BATCH) => {}
        }
        let reports = pending.take();
        if reports.is_empty() {
            continue;
        }
        let n = reports.len();
        crate::metrics::get().status_batch(n);
        let write = Write::Command(Command::ReportStatus {
            reports,
            now_unix_ms: now_unix_ms(),
        });
        let Err(e) = cluster.write_ref(&write).await else {
            continue;
        };
        if let Write::Command(Command::ReportStatus { reports, .. }) = write {
            // Agents report changes only, so a dropped batch would stay lost
            // while this controller leads. Once it does not, the agents'
            // Hello to the new leader carries every status afresh, and these
            // older ones must not land after it.
            if cluster.handle.leadership().is_leader {
                debug!(error = %e.message(), statuses = n, "could not commit replica statuses; retrying");
                pending.restore(reports);
            } else {
                debug!(
                    statuses = n,
                    "leadership lost; the agents resend their statuses to the new leader"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(limit_ms: u64) -> pb::Hello {
        pb::Hello {
            node: "n1".into(),
            stop_after_disconnect_ms: limit_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_fencing_limit_the_node_timeout_would_beat_is_refused_with_the_most_that_works() {
        let timeout = Duration::from_secs(3);
        assert!(fencing_limit(&hello(0), timeout).is_ok(), "fencing off");
        assert!(fencing_limit(&hello(2_000), timeout).is_ok());
        assert!(fencing_limit(&hello(2_500), timeout).is_ok());
        let refused = fencing_limit(&hello(3_000), timeout).expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            refused.message(),
            "--stop-after-disconnect 3s cannot stop node n1's replicas before this cluster's \
             node timeout (3s) replaces them elsewhere; use at most 2500ms"
        );
    }
}
