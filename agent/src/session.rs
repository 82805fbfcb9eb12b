//! The agent's session with the leader: one bidirectional `Dispatcher.Session`
//! stream at a time, re-opened for as long as the agent runs.
//!
//! ```text
//!   ┌─▶ pick an address: the leader a follower named, else the next controller
//!   │     connect ──fail──────────────────────────────┐
//!   │     send Hello{node, labels, capacity, address,  │
//!   │                incarnation, replicas: all}       │
//!   │     ┌─ every 500 ms ─▶ Heartbeat                  │
//!   │     ├─ status change ─▶ StatusReport{changed only}│
//!   │     └─ AssignmentSet ─▶ supervisor.assign(full set)
//!   │     stream ends / error:                          │
//!   │       FAILED_PRECONDITION "…leader=H:P…" ─▶ go to H:P at once
//!   │       ALREADY_EXISTS (name held by a live agent) ─▶ exit with its sentence
//!   │       anything else ─▶ wait (100 ms doubling to 5 s, jittered) ◀┘
//!   └────────────────────────────────────────────────────────────┘
//! ```
//!
//! Every set is the full assignment list, so a cut stream needs no replay:
//! the next session's first set is reconciled like any other. While no
//! controller answers, the supervisor keeps its last set and the containers
//! keep running. A session that delivered at least one set resets the
//! reconnect delay, so a leader change costs one short pause.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_pki::{self as pki, Security};
use drover_proto::pb;
use drover_proto::pb::dispatcher_client::DispatcherClient;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, info, instrument, warn};

use crate::error::{AgentError, Result};
use crate::fence::Fence;
use crate::metrics::SessionState;
use crate::status::{self, StatusMap};
use crate::supervisor::SupervisorHandle;

/// Who this agent is and how it talks to the controllers.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub node: String,
    /// Controller addresses (host:port), tried in turn.
    pub controllers: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub capacity: pb::Resources,
    /// Where this agent's Agent service (logs) is reachable.
    pub address: String,
    /// "docker", "process" or "sim".
    pub runtime: String,
    /// Random per agent process.
    pub incarnation: String,
    pub heartbeat: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Fencing: kill every local replica after this long without contact
    /// (an acknowledged heartbeat or an assignment set).
    pub stop_after_disconnect: Option<Duration>,
    /// Mutual TLS with the node certificate (renewed: each connection takes
    /// the latest), or plaintext (`--insecure`).
    pub security: watch::Receiver<Security>,
    /// The latest CPU and memory sample ([`crate::usage`]), sent with the
    /// status whenever a new one is taken.
    pub usage: watch::Receiver<Option<pb::Usage>>,
    /// Where the Service table of each assignment set goes (the data path).
    pub services: Option<Arc<watch::Sender<Arc<Vec<pb::ServiceRoute>>>>>,
}

impl SessionConfig {
    /// Defaults for everything but identity and addresses.
    pub fn new(node: impl Into<String>, controllers: Vec<String>) -> SessionConfig {
        SessionConfig {
            node: node.into(),
            controllers,
            labels: BTreeMap::new(),
            capacity: pb::Resources::default(),
            address: String::new(),
            runtime: String::new(),
            incarnation: format!("{:016x}", rand::random::<u64>()),
            heartbeat: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            stop_after_disconnect: None,
            security: watch::channel(Security::Insecure).1,
            usage: watch::channel(None).1,
            services: None,
        }
    }
}

/// How one session ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Shutdown,
    /// A follower named the leader; `productive` if this session delivered
    /// an assignment set first (a leader that stepped down redirects too).
    Redirect {
        leader: String,
        productive: bool,
    },
    /// Refused for good (the node name is held by another live agent, or a
    /// setting cannot work in this cluster).
    Refused(String),
    /// Connection failed or the stream broke; `productive` if it delivered
    /// an assignment set first.
    Lost {
        reason: String,
        productive: bool,
    },
}

/// Keep a session with the leader until `shutdown`. Returns an error only
/// when continuing is pointless (the node name is taken).
pub async fn run(
    cfg: SessionConfig,
    supervisor: SupervisorHandle,
    shutdown: CancellationToken,
) -> Result<()> {
    if cfg.controllers.is_empty() {
        return Err(AgentError::Config("no controller addresses given".into()));
    }
    let mut next = 0usize;
    let mut redirect: Option<String> = None;
    let mut backoff = Reconnect::new(&cfg);
    // For telling a person, now and then, that no controller answers.
    let mut failures = 0u32;
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut fence = Fence::new(cfg.stop_after_disconnect, tokio::time::Instant::now());
    loop {
        let addr = match redirect.take() {
            Some(leader) => leader,
            None => {
                let a = cfg.controllers[next % cfg.controllers.len()].clone();
                next = next.wrapping_add(1);
                a
            }
        };
        let ended = session(&cfg, &addr, &supervisor, &mut fence, &shutdown).await;
        crate::metrics::get().session(SessionState::Disconnected);
        // Whatever ended a session that delivered assignments, the backoff
        // starts over.
        let productive = matches!(
            ended,
            Ended::Redirect {
                productive: true,
                ..
            } | Ended::Lost {
                productive: true,
                ..
            }
        );
        if productive {
            fence.session_ended(tokio::time::Instant::now());
            failures = 0;
        }
        let wait = match ended {
            Ended::Shutdown => return Ok(()),
            Ended::Refused(message) => return Err(AgentError::Refused(message)),
            Ended::Redirect { leader, productive } => {
                info!(controller = %addr, leader = %leader, "redirected to the leader");
                redirect = Some(leader);
                jitter(backoff.after(End::Redirect, productive))
            }
            Ended::Lost { reason, productive } => {
                if productive {
                    info!(controller = %addr, reason = %reason, "session ended; reconnecting");
                } else {
                    failures += 1;
                    let quiet = last_warning.is_some_and(|t| t.elapsed() < Duration::from_secs(30));
                    if failures >= cfg.controllers.len() as u32 && !quiet {
                        warn!(controller = %addr, reason = %reason, attempts = failures,
                            "no controller accepts a session; replicas keep running; retrying");
                        last_warning = Some(tokio::time::Instant::now());
                    } else {
                        debug!(controller = %addr, reason = %reason, "no session");
                    }
                }
                jitter(backoff.after(End::Lost, productive))
            }
        };
        let mut wait = wait;
        if let Some(deadline) = fence.deadline() {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                if fence_now(&mut fence, &supervisor).await.is_err() {
                    return Ok(());
                }
            } else {
                // Wake up in time to fence.
                wait = wait.min(deadline - now);
            }
        }
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// How a session that is not the last one ended, for [`Reconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Redirect,
    Lost,
}

/// The wait between sessions: a pure decision from how each one ended.
///
/// - A session that delivered assignments resets everything, whatever ended
///   it (a broken stream, or a redirect from a leader that stepped down), so
///   routine leader changes never pile up waits: an agent that waited up to
///   `reconnect_max` per redirect after a few elections missed the node
///   timeout, and its replicas were duplicated elsewhere.
/// - A redirect is followed at once, twice in a row; a longer chain (an
///   election in progress) backs off like a failure.
/// - Failures double the wait from `reconnect_min` up to `reconnect_max`.
#[derive(Debug)]
struct Reconnect {
    min: Duration,
    max: Duration,
    delay: Duration,
    redirects_in_a_row: u32,
}

impl Reconnect {
    fn new(cfg: &SessionConfig) -> Reconnect {
        Reconnect {
            min: cfg.reconnect_min,
            max: cfg.reconnect_max,
            delay: cfg.reconnect_min,
            redirects_in_a_row: 0,
        }
    }

    /// The wait (before jitter) after a session ended this way.
    fn after(&mut self, end: End, productive: bool) -> Duration {
        if productive {
            self.delay = self.min;
            self.redirects_in_a_row = 0;
        }
        match end {
            End::Redirect => {
                self.redirects_in_a_row += 1;
                if self.redirects_in_a_row <= 2 {
                    return Duration::ZERO;
                }
            }
            End::Lost => self.redirects_in_a_row = 0,
        }
        let d = self.delay;
        self.delay = (d * 2).min(self.max);
        d
    }
}

/// A random duration in [d/2, d]: agents that lost the same leader do not
/// all come back in the same millisecond.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    if ms < 2 {
        return d;
    }
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

/// The address in a follower's refusal: `… leader=HOST:PORT …`.
pub fn leader_hint(message: &str) -> Option<String> {
    let rest = &message[message.find("leader=")? + "leader=".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | ';' | ')' | ']' | '"' | '\''))
        .collect();
    let addr = addr.trim_end_matches('.').to_string();
    (!addr.is_empty() && addr.contains(':')).then_some(addr)
}

/// An error and its sources, `outer: inner: root` (tonic's transport error
/// alone says only "transport error").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn classify(status: &tonic::Status, productive: bool) -> Ended {
    match status.code() {
        Code::FailedPrecondition => match leader_hint(status.message()) {
            Some(leader) => Ended::Redirect { leader, productive },
            None => Ended::Lost {
                reason: format!("not the leader and no leader known: {}", status.message()),
                productive,
            },
        },
        Code::AlreadyExists | Code::InvalidArgument => Ended::Refused(status.message().to_string()),
        code => Ended::Lost {
            reason: format!("{}: {}", code.description(), status.message()),
            productive,
        },
    }
}

/// Fence now: kill this node's replicas (see [`crate::fence`]).
async fn fence_now(
    fence: &mut Fence<tokio::time::Instant>,
    supervisor: &SupervisorHandle,
) -> Result<(), AgentError> {
    warn!(without_controller = ?fence.last_contact().elapsed(),
        "no contact with a controller for --stop-after-disconnect: killing this node's replicas");
    fence.fenced();
    supervisor.fence().await
}

/// The statuses to send again when a set arrives:
/// - for the replicas it newly gives this node ([`Taken::fresh`]), or gives
///   it again with another `bound_at`. Such a replica may already run here
///   (it was moved away while this node looked dead, and back, perhaps
///   before this node saw a set without it): the controller ignored what
///   this node said meanwhile, and an unchanged status is otherwise never
///   resent. A session starts with nothing held, so its first set repeats
///   every status it knows;
/// - `Gone` for each replica the set still lists as terminating here
///   (`terminating`, the held set's) that this node last reported gone. A
///   name can come back as a new replica (a slot freed and taken again)
///   that is bound here and removed before this node sees a set assigning
///   it: the node then sees the same name stay terminating, and without
///   this its one `Gone` (sent for the replica before) was all the
///   controller got, so the new one stayed terminating for good.
pub fn resend(
    fresh: &[String],
    terminating: &[String],
    last_sent: &StatusMap,
) -> Vec<pb::ReplicaStatus> {
    let gone = terminating.iter().filter(|id| {
        last_sent
            .get(id.as_str())
            .is_some_and(|s| s.state() == pb::ReplicaState::Gone)
    });
    let mut ids: Vec<&String> = fresh.iter().chain(gone).collect();
    ids.sort();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| {
            last_sent
                .get(id.as_str())
                .map(|s| pb::ReplicaStatus::clone(s))
        })
        .collect()
}

/// Whether `a` is new to this node: not held before, or held from another
/// binding (`bound_at`: the replica was moved away and placed back here, and
/// the controllers ignored what this node said about it meanwhile).
fn is_fresh(before: Option<&pb::Assignment>, a: &pb::Assignment) -> bool {
    before.is_none_or(|b| b.bound_at != a.bound_at)
}

/// The assignment set a session holds: the last whole set with every change
/// since applied to it, kept by replica so that taking a change costs the
/// change's size, not the node's.
#[derive(Debug, Clone, Default)]
pub struct HeldSet {
    version: u64,
    assignments: BTreeMap<String, pb::Assignment>,
    /// By `namespace/name`.
    services: BTreeMap<String, pb::ServiceRoute>,
    terminating: Vec<String>,
    terminating_grace_seconds: std::collections::HashMap<String, u32>,
    config_objects: Vec<pb::ConfigObject>,
}

/// What taking one message changed in a [`HeldSet`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Taken {
    /// A whole set: `upserts` is every assignment, and whatever the set held
    /// before and `upserts` lacks is gone.
    pub whole: bool,
    /// Assignments added or replaced.
    pub upserts: Vec<pb::Assignment>,
    /// Replicas no longer assigned (a change's; empty for a whole set).
    pub removed: Vec<String>,
    /// Replicas the held set did not have before this message, or had from
    /// another binding ([`pb::Assignment::bound_at`]), sorted.
    pub fresh: Vec<String>,
    /// Whether the Service table may differ.
    pub services_changed: bool,
}

impl HeldSet {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Take a message: a whole set replaces what is held; a change applies
    /// to it, and must be of the held version (else nothing changes and the
    /// error says why).
    pub fn take(&mut self, msg: pb::AssignmentSet) -> std::result::Result<Taken, String> {
        let route_key = |r: &pb::ServiceRoute| format!("{}/{}", r.namespace, r.name);
        let mut taken = Taken::default();
        if msg.base_version == 0 {
            let before = std::mem::take(&mut self.assignments);
            for a in &msg.assignments {
                if is_fresh(before.get(&a.replica), a) {
                    taken.fresh.push(a.replica.clone());
                }
                self.assignments.insert(a.replica.clone(), a.clone());
            }
            taken.fresh.sort();
            taken.fresh.dedup();
            taken.whole = true;
            taken.upserts = msg.assignments;
            self.services = msg
                .services
                .into_iter()
                .map(|r| (route_key(&r), r))
                .collect();
            taken.services_changed = true;
        } else {
            if msg.base_version != self.version {
                return Err(format!(
                    "a change to assignment set {} arrived, but this agent holds set {}",
                    msg.base_version, self.version
                ));
            }
            for id in &msg.removed {
                self.assignments.remove(id);
            }
            for a in &msg.assignments {
                let before = self.assignments.insert(a.replica.clone(), a.clone());
                if is_fresh(before.as_ref(), a) {
                    taken.fresh.push(a.replica.clone());
                }
            }
            taken.fresh.sort();
            taken.upserts = msg.assignments;
            taken.removed = msg.removed;
            taken.services_changed = !msg.removed_services.is_empty() || !msg.services.is_empty();
            for key in &msg.removed_services {
                self.services.remove(key);
            }
            for r in msg.services {
                self.services.insert(route_key(&r), r);
            }
        }
        self.version = msg.version;
        self.terminating = msg.terminating;
        self.terminating_grace_seconds = msg.terminating_grace_seconds;
        self.config_objects = msg.config_objects;
        Ok(taken)
    }

    /// The replicas the held set lists as terminating here.
    pub fn terminating(&self) -> &[String] {
        &self.terminating
    }

    /// The Service table, sorted by namespace and name.
    pub fn services(&self) -> Vec<pb::ServiceRoute> {
        self.services.values().cloned().collect()
    }

    /// The whole set held, as one message.
    pub fn to_set(&self) -> pb::AssignmentSet {
        pb::AssignmentSet {
            version: self.version,
            assignments: self.assignments.values().cloned().collect(),
            terminating: self.terminating.clone(),
            terminating_grace_seconds: self.terminating_grace_seconds.clone(),
            base_version: 0,
            removed: Vec::new(),
            config_objects: self.config_objects.clone(),
            services: self.services(),
            removed_services: Vec::new(),
        }
    }

    /// What the supervisor takes: the message's changes (or the whole
    /// set), with the lists every message carries whole.
    pub fn for_supervisor(&self, taken: Taken) -> crate::supervisor::SetChange {
        crate::supervisor::SetChange {
            whole: taken.whole,
            upserts: taken.upserts,
            removed: taken.removed,
            terminating: self.terminating.clone(),
            terminating_grace_seconds: self.terminating_grace_seconds.clone(),
            config_objects: self.config_objects.clone(),
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn hello(cfg: &SessionConfig, replicas: &StatusMap) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            node: cfg.node.clone(),
            labels: cfg.labels.clone().into_iter().collect(),
            capacity: Some(cfg.capacity),
            address: cfg.address.clone(),
            runtime: cfg.runtime.clone(),
            version: drover_proto::VERSION.to_string(),
            incarnation: cfg.incarnation.clone(),
            replicas: replicas
                .values()
                .map(|s| pb::ReplicaStatus::clone(s))
                .collect(),
            stop_after_disconnect_ms: cfg
                .stop_after_disconnect
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            accepts_changes: true,
        })),
    }
}

/// A message to the controller: a full or stuck stream ends the session.
async fn send(tx: &mpsc::Sender<pb::AgentMessage>, msg: pb::AgentMessage) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tx.send(msg)).await,
        Ok(Ok(()))
    )
}

/// One session with `addr`, from connect to the end of the stream.
#[instrument(skip_all, fields(node = %cfg.node, controller = %addr))]
async fn session(
    cfg: &SessionConfig,
    addr: &str,
    supervisor: &SupervisorHandle,
    fence: &mut Fence<tokio::time::Instant>,
    shutdown: &CancellationToken,
) -> Ended {
    let lost = |reason: String| Ended::Lost {
        reason,
        productive: false,
    };
    let security = cfg.security.borrow().clone();
    let endpoint = match security.endpoint(addr, &pki::Server::Controller) {
        Ok(e) => e
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true)
            // A leader that vanishes without closing TCP is noticed in seconds.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true),
        Err(e) => return lost(format!("invalid controller address {addr:?}: {e}")),
    };
    let channel = tokio::select! {
        _ = shutdown.cancelled() => return Ended::Shutdown,
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return lost(format!("cannot connect: {}", error_chain(&e))),
        },
    };
    // The controller sends assignment sets up to this size (tonic's default
    // of 4 MiB would cut off a node with a few large templates).
    let mut client = DispatcherClient::new(channel)
        .max_decoding_message_size(drover_proto::MAX_ASSIGNMENT_BYTES);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let mut statuses = supervisor.statuses();
    let mut last_sent: Arc<StatusMap> = statuses.borrow_and_update().clone();
    if !send(&tx, hello(cfg, &last_sent)).await {
        return lost("could not queue Hello".into());
    }
    let opened = tokio::select! {
        _ = shutdown.cancelled() => return Ended::Shutdown,
        r = tokio::time::timeout(cfg.connect_timeout * 2, client.session(ReceiverStream::new(rx))) => r,
    };
    let mut inbound = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return classify(&status, false),
        Err(_) => return lost("the controller did not answer the session".into()),
    };
    debug!(controller = %addr, node = %cfg.node, "session open");
    crate::metrics::get().session(SessionState::Opening);
    let mut usage = cfg.usage.clone();
    // A sender that is gone (no sampler) is not an end of the session.
    let mut sampling = true;

    // The first heartbeat goes at once: until one is acknowledged, silence
    // in an open session does not count toward fencing (below), and a
    // partition in the first interval of an agent's first session left its
    // replicas running until the stream broke, while the controllers moved
    // them after their node timeout (two hosts ran one replica).
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut productive = false;
    let mut last_version = 0u64;
    // The whole set as of `last_version`, that changes apply to. A session
    // starts with it empty, so its first set repeats every status it knows.
    let mut held = HeldSet::default();
    loop {
        // While the controller acknowledges heartbeats, silence in an open
        // session counts too: a partition may keep the stream looking open
        // for seconds after the last contact.
        let deadline = fence.deadline().filter(|_| fence.acked);
        tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            _ = sleep_until(deadline), if deadline.is_some() => {
                if fence_now(fence, supervisor).await.is_err() {
                    return Ended::Shutdown;
                }
                // A new session brings the full set again once contact is back.
                return Ended::Lost { reason: "no acknowledged heartbeat for --stop-after-disconnect".into(), productive };
            }
            _ = heartbeat.tick() => {
                let msg = pb::AgentMessage { kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {})) };
                if !send(&tx, msg).await {
                    return Ended::Lost { reason: "the controller stopped reading".into(), productive };
                }
                crate::metrics::get().heartbeat_sent();
            }
            changed = usage.changed(), if sampling => {
                if changed.is_err() {
                    sampling = false;
                    continue;
                }
                let sample = usage.borrow_and_update().clone();
                if let Some(sample) = sample {
                    let msg = pb::AgentMessage {
                        kind: Some(pb::agent_message::Kind::Status(pb::StatusReport { replicas: vec![], usage: Some(sample) })),
                    };
                    if !send(&tx, msg).await {
                        return Ended::Lost { reason: "the controller stopped reading".into(), productive };
                    }
                }
            }
            changed = statuses.changed() => {
                if changed.is_err() {
                    // The supervisor is gone: the agent is shutting down.
                    return Ended::Shutdown;
                }
                let next = statuses.borrow_and_update().clone();
                let replicas = status::changed(&last_sent, &next);
                last_sent = next;
                if !replicas.is_empty() {
                    debug!(replicas = replicas.len(), "reporting status");
                    let msg = pb::AgentMessage {
                        kind: Some(pb::agent_message::Kind::Status(pb::StatusReport { replicas, usage: None })),
                    };
                    if !send(&tx, msg).await {
                        return Ended::Lost { reason: "the controller stopped reading".into(), productive };
                    }
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(pb::ControllerMessage { kind: Some(pb::controller_message::Kind::Assignments(set)) })) => {
                    if set.version < last_version {
                        debug!(version = set.version, last = last_version, "ignoring an older assignment set");
                        continue;
                    }
                    let taken = match held.take(set) {
                        Ok(taken) => taken,
                        Err(why) => {
                            warn!(controller = %addr, reason = %why, "assignment change out of order; reconnecting for a whole set");
                            return Ended::Lost { reason: why, productive };
                        }
                    };
                    if let (Some(routes), true) = (&cfg.services, taken.services_changed) {
                        let services = held.services();
                        routes.send_if_modified(|now| {
                            let changed = **now != services;
                            if changed {
                                *now = Arc::new(services);
                            }
                            changed
                        });
                    }
                    if !productive {
                        info!(controller = %addr, node = %cfg.node, "session established");
                        crate::metrics::get().session(SessionState::Established);
                    }
                    last_version = held.version();
                    productive = true;
                    fence.contact(tokio::time::Instant::now());
                    debug!(version = last_version, whole = taken.whole, upserts = taken.upserts.len(),
                        removed = taken.removed.len(), "assignment set");
                    let fresh = resend(&taken.fresh, held.terminating(), &last_sent);
                    if !fresh.is_empty() {
                        let msg = pb::AgentMessage {
                            kind: Some(pb::agent_message::Kind::Status(pb::StatusReport { replicas: fresh, usage: None })),
                        };
                        if !send(&tx, msg).await {
                            return Ended::Lost { reason: "the controller stopped reading".into(), productive };
                        }
                    }
                    if supervisor.change_set(held.for_supervisor(taken)).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Ok(Some(pb::ControllerMessage { kind: Some(pb::controller_message::Kind::HeartbeatAck(_)) })) => {
                    crate::metrics::get().heartbeat_acknowledged();
                    fence.acked = true;
                    fence.contact(tokio::time::Instant::now());
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ended::Lost { reason: "the controller closed the session".into(), productive },
                Err(status) => {
                    let ended = classify(&status, productive);
                    if let Ended::Lost { reason, .. } = &ended {
                        warn!(controller = %addr, reason = %reason, "session broke");
                    }
                    return ended;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_assigned_anew_has_its_last_status_sent_again() {
        let status = |id: &str| pb::ReplicaStatus {
            replica: id.into(),
            ready: true,
            ..Default::default()
        };
        let last_sent: StatusMap = [
            ("a".to_string(), status::Shared::new(status("a"))),
            ("b".to_string(), status::Shared::new(status("b"))),
        ]
        .into_iter()
        .collect();
        let set = |ids: &[&str]| pb::AssignmentSet {
            version: 1,
            assignments: ids.iter().map(|id| assignment(id, "r1")).collect(),
            ..Default::default()
        };
        let change = |version: u64, add: &[&str], removed: &[&str]| pb::AssignmentSet {
            version,
            base_version: version - 1,
            assignments: add.iter().map(|id| assignment(id, "r1")).collect(),
            removed: removed.iter().map(|id| id.to_string()).collect(),
            ..Default::default()
        };
        // A session's first set repeats what it knows.
        let mut held = HeldSet::default();
        let mut take = |msg| resend_after(&mut held, msg, &last_sent);
        assert_eq!(take(set(&["a", "b"])), [status("a"), status("b")]);
        // Unchanged: nothing; moved away: nothing; back: its status again,
        // by a change as by a whole set.
        assert!(take(set(&["a", "b"])).is_empty());
        assert!(take(change(2, &[], &["b"])).is_empty());
        assert_eq!(take(change(3, &["b"], &[])), [status("b")]);
        assert!(take(change(4, &["b"], &[])).is_empty());
        assert!(take(set(&["a"])).is_empty());
        assert_eq!(take(set(&["a", "b"])), [status("b")]);
    }

    #[test]
    fn a_replica_still_terminating_here_after_this_node_said_gone_is_said_gone_again() {
        let status = |id: &str, state: pb::ReplicaState| pb::ReplicaStatus {
            replica: id.into(),
            state: state as i32,
            ..Default::default()
        };
        // "old" was reported gone; "stopping" is still being stopped here.
        let last_sent: StatusMap = [
            ("old", pb::ReplicaState::Gone),
            ("stopping", pb::ReplicaState::Running),
            ("a", pb::ReplicaState::Running),
        ]
        .into_iter()
        .map(|(id, state)| (id.to_string(), status::Shared::new(status(id, state))))
        .collect();
        let set = |version: u64, terminating: &[&str]| pb::AssignmentSet {
            version,
            assignments: vec![assignment("a", "r1")],
            terminating: terminating.iter().map(|id| id.to_string()).collect(),
            ..Default::default()
        };
        let mut held = HeldSet::default();
        let mut take = |msg| resend_after(&mut held, msg, &last_sent);
        // The first set: "a" is fresh; "old" is still listed as terminating
        // (the name may be a new replica's): its Gone goes again. A replica
        // being stopped keeps its own reports.
        assert_eq!(
            take(set(1, &["old", "stopping"])),
            [
                status("a", pb::ReplicaState::Running),
                status("old", pb::ReplicaState::Gone)
            ]
        );
        // Every set that still lists it repeats it; once it is no longer
        // listed, nothing.
        assert_eq!(
            take(set(2, &["old"])),
            [status("old", pb::ReplicaState::Gone)]
        );
        assert!(take(set(3, &[])).is_empty());
    }

    #[test]
    fn a_replica_placed_back_here_has_its_status_said_again() {
        let running = pb::ReplicaStatus {
            replica: "a".into(),
            state: pb::ReplicaState::Running as i32,
            ready: true,
            ..Default::default()
        };
        let last_sent: StatusMap = [("a".to_string(), status::Shared::new(running.clone()))]
            .into_iter()
            .collect();
        let bound = |at: u64| pb::Assignment {
            bound_at: at,
            ..assignment("a", "r1")
        };
        let mut held = HeldSet::default();
        let whole = |version: u64, at: u64| pb::AssignmentSet {
            version,
            assignments: vec![bound(at)],
            ..Default::default()
        };
        assert_eq!(
            resend_after(&mut held, whole(1, 5), &last_sent),
            std::slice::from_ref(&running)
        );
        // The same binding again, whole or as a change: nothing to say.
        assert!(resend_after(&mut held, whole(2, 5), &last_sent).is_empty());
        let change = |version: u64, at: u64| pb::AssignmentSet {
            version,
            base_version: version - 1,
            assignments: vec![bound(at)],
            ..Default::default()
        };
        assert!(resend_after(&mut held, change(3, 5), &last_sent).is_empty());
        // Moved away and placed back before this node saw a set without it:
        // another binding, so its status goes again (as a change or whole).
        assert_eq!(
            resend_after(&mut held, change(4, 9), &last_sent),
            std::slice::from_ref(&running)
        );
        assert_eq!(resend_after(&mut held, whole(5, 12), &last_sent), [running]);
    }

    /// What the session resends on taking `msg` into `held`.
    fn resend_after(
        held: &mut HeldSet,
        msg: pb::AssignmentSet,
        last_sent: &StatusMap,
    ) -> Vec<pb::ReplicaStatus> {
        let fresh = held.take(msg).expect("applies").fresh;
        resend(&fresh, held.terminating(), last_sent)
    }

    fn assignment(id: &str, revision: &str) -> pb::Assignment {
        pb::Assignment {
            replica: id.into(),
            revision: revision.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_change_applies_to_the_set_of_its_base_version_only() {
        let whole = pb::AssignmentSet {
            version: 1,
            assignments: vec![assignment("a", "1"), assignment("b", "1")],
            ..Default::default()
        };
        let mut held = HeldSet::default();
        held.take(whole).expect("whole");
        let change = pb::AssignmentSet {
            version: 2,
            base_version: 1,
            assignments: vec![assignment("b", "2"), assignment("c", "1")],
            removed: vec!["a".into()],
            terminating: vec!["x".into()],
            ..Default::default()
        };
        held.take(change.clone()).expect("applies");
        let next = held.to_set();
        assert_eq!(next.version, 2);
        assert_eq!(
            next.assignments,
            vec![assignment("b", "2"), assignment("c", "1")]
        );
        assert_eq!(next.terminating, ["x"]);
        // The same change again is not of the set now held: refused.
        let refused = held.take(change).expect_err("out of order");
        assert!(refused.contains("holds set 2"), "{refused}");
    }

    #[test]
    fn leader_hints_are_parsed_from_follower_messages() {
        assert_eq!(
            leader_hint("not the leader; leader=127.0.0.2:7001"),
            Some("127.0.0.2:7001".into())
        );
        assert_eq!(
            leader_hint("this controller is a follower (leader=10.0.0.3:7001), retry there"),
            Some("10.0.0.3:7001".into())
        );
        assert_eq!(
            leader_hint("leader=host-a.lab:7001."),
            Some("host-a.lab:7001".into())
        );
        assert_eq!(leader_hint("not the leader; leader= unknown"), None);
        assert_eq!(leader_hint("no leader elected"), None);
    }

    #[test]
    fn refusals_are_classified() {
        let s = tonic::Status::failed_precondition("follower; leader=127.0.0.3:7001");
        assert_eq!(
            classify(&s, false),
            Ended::Redirect {
                leader: "127.0.0.3:7001".into(),
                productive: false
            }
        );
        assert!(matches!(
            classify(&s, true),
            Ended::Redirect {
                productive: true,
                ..
            }
        ));
        let s = tonic::Status::already_exists("node n1 is held by a live agent");
        assert_eq!(
            classify(&s, true),
            Ended::Refused("node n1 is held by a live agent".into())
        );
        assert!(matches!(
            classify(&tonic::Status::unavailable("x"), true),
            Ended::Lost {
                productive: true,
                ..
            }
        ));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn reconnect_delays_double_to_the_cap() {
        let cfg = SessionConfig::new("n1", vec!["127.0.0.1:1".into()]);
        let mut r = Reconnect::new(&cfg);
        let waits: Vec<u64> = (0..8)
            .map(|_| r.after(End::Lost, false).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        for d in [ms(1), ms(100), ms(5000)] {
            let j = jitter(d);
            assert!(
                j >= d / 2 && j <= d,
                "{j:?} not within [{:?}, {d:?}]",
                d / 2
            );
        }
    }

    #[test]
    fn redirects_are_followed_at_once_twice_then_back_off() {
        let cfg = SessionConfig::new("n1", vec!["127.0.0.1:1".into()]);
        let mut r = Reconnect::new(&cfg);
        assert_eq!(r.after(End::Redirect, false), Duration::ZERO);
        assert_eq!(r.after(End::Redirect, false), Duration::ZERO);
        assert_eq!(r.after(End::Redirect, false), ms(100));
        assert_eq!(r.after(End::Redirect, false), ms(200));
        // A failure ends the chain, but not the backoff.
        assert_eq!(r.after(End::Lost, false), ms(400));
        assert_eq!(r.after(End::Redirect, false), Duration::ZERO);
    }

    /// Routine elections: each time, the agent's productive session ends with
    /// the stepped-down leader's redirect, and the new leader is found through
    /// one more redirect. The waits must not grow from election to election.
    #[test]
    fn productive_sessions_reset_the_backoff_whatever_ended_them() {
        let cfg = SessionConfig::new("n1", vec!["127.0.0.1:1".into()]);
        let mut r = Reconnect::new(&cfg);
        // Start-up: a few failures while the controllers come up.
        for _ in 0..5 {
            r.after(End::Lost, false);
        }
        for _election in 0..20 {
            assert_eq!(r.after(End::Redirect, true), Duration::ZERO, "step-down");
            assert_eq!(r.after(End::Redirect, false), Duration::ZERO, "follower");
            assert_eq!(r.after(End::Lost, false), ms(100), "old leader gone");
        }
        assert_eq!(r.after(End::Lost, true), ms(100));
    }
}
