//! The raft member task: the single owner of `RawNode<SledStorage>`.
//!
//! ```text
//!   Handle (cloneable) ──Msg──▶ ┌──────────── node task ─────────────┐
//!   transport (peers) ──Msg──▶  │ tick · step · propose · read_index  │
//!                               │            on_ready():              │
//!                               │ 1 send leader messages              │──▶ Transport
//!                               │ 2 install snapshot (one transaction)│
//!                               │ 3 apply committed → store, replies  │──▶ waiting clients
//!                               │ 4 append entries, hard state; fsync │
//!                               │ 5 send persisted messages           │──▶ Transport
//!                               │ 6 advance; commit; apply the rest   │
//!                               └─────────────────────────────────────┘
//! ```
//!
//! The order in `on_ready` is raft-rs's documented one: a follower's votes and
//! append responses (the persisted messages) leave only after its log and hard
//! state are on disk. Clients wait on a proposal until its log index is
//! applied: if the entry applied there is theirs they get its result; if
//! another leader's entry took the index, theirs was dropped and they may retry.
//!
//! The state machine is in memory ([`Store`]). Every `snapshot_interval`
//! applied entries the node clones it (free), encodes and saves it on a
//! blocking thread, and once saved compacts the log behind it; a restart
//! decodes the saved snapshot and re-applies the log after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
    Snapshot, SnapshotMetadata,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use raft_proto::ConfChangeI;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::storage::SledStorage;
use super::transport::Transport;
use crate::store::{Command, Member, State, Store, Write, WriteError, WriteResult};

/// Raft timing and log-size settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub tick: Duration,
    /// Election timeout in ticks (randomised in [n, 2n)).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Save a snapshot of the state (and compact the log behind it) once this
    /// many entries were applied since the last one.
    pub snapshot_interval: u64,
    /// Entries kept behind the applied index at compaction, for slow followers.
    pub trailing_entries: u64,
    /// How long a proposal may wait for its entry to apply.
    pub write_timeout: Duration,
    /// How long a read waits for its ReadIndex answer before giving up.
    pub read_timeout: Duration,
}

impl NodeConfig {
    pub fn new(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_interval: 10_000,
            trailing_entries: 1_000,
            write_timeout: Duration::from_secs(8),
            // Short: a read that raft dropped silently (no leader yet, or a
            // new leader without a committed entry of its term) is retried soon.
            read_timeout: Duration::from_millis(250),
        }
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: 64 * 1024 * 1024,
            ..Default::default()
        }
    }
}

/// Why a request to the node did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("this controller is not the leader")]
    NotLeader { leader: Option<u64> },
    /// The write certainly did not commit; retrying is safe.
    #[error("the write was dropped before it committed ({0}); retry")]
    Dropped(String),
    /// The write may or may not have committed (timed out, or the leader that
    /// took it lost its leadership; zero duration for the latter).
    #[error(
        "the write was not confirmed (leadership changed or {} passed); it may still be applied",
        drover_proto::duration::short(*.0)
    )]
    Unconfirmed(Duration),
    #[error("no leader answered the read in time")]
    ReadTimeout,
    #[error("{0}")]
    Refused(String),
    #[error("the raft node has stopped")]
    Stopped,
    /// Too many requests are queued: nothing was proposed; retry shortly.
    #[error(
        "this controller is busy ({INBOX} requests are queued for raft); nothing was written: retry shortly"
    )]
    Busy,
}

/// raft-rs refuses a proposal with `ProposalDropped` while a leadership
/// transfer or a step-down is under way, or when this member was removed:
/// nothing was written, so the write is retried elsewhere, not failed.
fn proposal_error(e: raft::Error) -> NodeError {
    match e {
        raft::Error::ProposalDropped => {
            NodeError::Dropped("this controller is handing over or giving up its leadership".into())
        }
        other => NodeError::Refused(other.to_string()),
    }
}

/// What a member knows about itself, for `cluster status`.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub state_hash: String,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Why this member stopped applying the log (empty: it applies).
    pub stalled: String,
}

/// The leadership view published on every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leadership {
    pub leader_id: u64,
    pub term: u64,
    pub is_leader: bool,
}

type WriteReply = oneshot::Sender<Result<Result<WriteResult, WriteError>, NodeError>>;

pub enum Msg {
    Propose {
        write: Write,
        reply: WriteReply,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Status {
        reply: oneshot::Sender<(NodeStatus, Arc<State>)>,
    },
    /// A snapshot of the state at `index` was saved (or a newer one was
    /// there already): the log behind it may go.
    SnapshotSaved {
        index: u64,
    },
    ReportSnapshot {
        to: u64,
        ok: bool,
    },
    ReportUnreachable {
        to: u64,
    },
}

/// Cloneable access to a running node.
#[derive(Clone)]
pub struct Handle {
    id: u64,
    tx: mpsc::Sender<Msg>,
    /// Peers' raft messages, on their own queue: client load cannot crowd
    /// out heartbeats and votes.
    peers: mpsc::Sender<Vec<Message>>,
    /// The state hash of the last status, by applied index: the hash encodes
    /// the whole state, so it is computed once per index.
    hash_cache: Arc<Mutex<(u64, String)>>,
    leadership: watch::Receiver<Leadership>,
    applied: watch::Receiver<u64>,
}

impl Handle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Propose a write on this member. Fails with `NotLeader` on a follower:
    /// forwarding to the leader is the API layer's job.
    ///
    /// A full queue is answered at once with [`NodeError::Busy`] (the caller
    /// backs off and retries) rather than waiting into a timeout.
    pub async fn propose(
        &self,
        write: Write,
    ) -> Result<Result<WriteResult, WriteError>, NodeError> {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Msg::Propose { write, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => NodeError::Busy,
                mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
            })?;
        let result = rx.await.map_err(|_| NodeError::Stopped)?;
        crate::metrics::get().proposal(started, &result);
        result
    }

    /// Linearizable read barrier (raft ReadIndex): returns once this member has
    /// applied everything committed when the read was issued.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::ReadIndex { reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// This member's status. The state hash is computed here, off the node's
    /// task, from the state as of the status.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Status { reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        let (mut status, state) = rx.await.map_err(|_| NodeError::Stopped)?;
        let applied = state.applied().0;
        let cached = {
            let cache = self
                .hash_cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (cache.0 == applied && !cache.1.is_empty()).then(|| cache.1.clone())
        };
        status.state_hash = match cached {
            Some(hash) => hash,
            None => {
                let hash = tokio::task::spawn_blocking(move || state.state_hash())
                    .await
                    .unwrap_or_else(|e| format!("error: {e}"));
                *self
                    .hash_cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = (applied, hash.clone());
                hash
            }
        };
        Ok(status)
    }

    /// Hand messages from a peer to the node. Drops them when the node is
    /// overloaded: raft tolerates lost messages, and a peer must not be able
    /// to block us.
    pub fn step(&self, msgs: Vec<Message>) {
        if let Err(e) = self.peers.try_send(msgs) {
            debug!(error = %e, "raft peer inbox full; dropping peer messages");
        }
    }

    pub fn report(&self, msg: Msg) {
        let _ = self.tx.try_send(msg);
    }

    pub fn leadership(&self) -> Leadership {
        *self.leadership.borrow()
    }

    /// The applied index, updated after every batch of applied entries: wait
    /// on it to react to changes of the replicated state.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Leadership changes, to wait on.
    pub fn leadership_watch(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// Wait until some leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<Leadership> {
        let mut rx = self.leadership.clone();
        let found = tokio::time::timeout(timeout, rx.wait_for(|l| l.leader_id != 0)).await;
        match found {
            Ok(Ok(l)) => Some(*l),
            _ => None,
        }
    }

    /// Wait until the leadership view differs from `seen`, up to `timeout`.
    pub async fn wait_for_change(&self, seen: Leadership, timeout: Duration) {
        let mut rx = self.leadership.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|l| *l != seen)).await;
    }
}

/// The other end of a [`Handle::detached`]: what a node would receive and
/// publish, for tests that play the node.
#[cfg(test)]
pub struct Detached {
    pub inbox: mpsc::Receiver<Msg>,
    pub leadership: watch::Sender<Leadership>,
    pub applied: watch::Sender<u64>,
}

#[cfg(test)]
impl Handle {
    /// A handle with no raft node behind it: the test answers its messages
    /// and sets its leadership, to drive a loop through the exact interface
    /// a node serves.
    pub fn detached(id: u64) -> (Handle, Detached) {
        let (tx, inbox) = channel();
        let (peers, _) = mpsc::channel(1);
        let (leadership_tx, leadership) = watch::channel(Leadership::default());
        let (applied_tx, applied) = watch::channel(0);
        let handle = Handle {
            id,
            tx,
            peers,
            hash_cache: Arc::default(),
            leadership,
            applied,
        };
        let detached = Detached {
            inbox,
            leadership: leadership_tx,
            applied: applied_tx,
        };
        (handle, detached)
    }
}

/// Entry payload of a normal (command) entry. A field this controller does
/// not know means a newer writer: refused, never ignored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Proposal {
    /// The command format this entry was written in ([`COMMAND_FORMAT`]).
    #[serde(default = "first_format")]
    format: u32,
    id: u64,
    command: Command,
}

/// The format of the commands this controller writes, and the newest it can
/// apply. Bump it with every change to [`Command`] (or the types inside it)
/// that an older controller would not apply exactly as this one does: an
/// older member then stops applying at the first newer entry, with a
/// sentence in `cluster status`, instead of skipping or misreading it.
/// Format 3 added `ApplyIf` and `ChangeNodeMeta` (issue 21); format 5
/// `DeleteNodes` (issue 12), `ApplyConfig` and `DeleteConfig` (issue 16);
/// format 6 `ApplyConfig.services` and `.service_range`, and `DeleteServices`
/// (issue 15); format 7 `ReplicaObserved.published_ports` in `ReportStatus`
/// (issue 15: an older member would drop them and compute other endpoints).
pub const COMMAND_FORMAT: u32 = 7;

/// Entries written before formats were numbered.
fn first_format() -> u32 {
    1
}

/// Only the format number of an entry, readable whatever the rest holds.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default = "first_format")]
    format: u32,
}

/// Context of a configuration-change entry.
#[derive(Serialize, Deserialize)]
struct ConfContext {
    id: u64,
    member: Option<Member>,
}

/// A membership change, as `propose_membership` takes it.
enum Change {
    /// Join as a learner, at this address.
    Add(String),
    /// A learner becomes a voter.
    Promote,
    Remove,
}

/// Where and why applying stopped.
struct Stall {
    index: u64,
    reason: String,
}

/// A normal entry's proposal, or why this controller cannot apply it.
fn decode_proposal(data: &[u8]) -> Result<Proposal, String> {
    let format = serde_json::from_slice::<Envelope>(data)
        .map_err(|e| format!("it is not a drover command ({e})"))?
        .format;
    if format > COMMAND_FORMAT {
        return Err(format!(
            "it was written by a newer drover (command format {format}; this controller \
             applies up to {COMMAND_FORMAT})"
        ));
    }
    serde_json::from_slice::<Proposal>(data)
        .map_err(|e| format!("its command cannot be decoded ({e})"))
}

struct PendingWrite {
    id: u64,
    reply: WriteReply,
    deadline: Instant,
}

struct PendingRead {
    reply: oneshot::Sender<Result<(), NodeError>>,
    deadline: Instant,
}

pub struct Node {
    cfg: NodeConfig,
    raw: RawNode<SledStorage>,
    store: Store,
    transport: Arc<dyn Transport>,
    inbox: mpsc::Receiver<Msg>,
    /// Peers' raft messages, served before anything in `inbox`.
    peer_inbox: mpsc::Receiver<Vec<Message>>,
    /// The inbox's sender, for the snapshot saver to report back.
    tx: mpsc::Sender<Msg>,
    /// The applied index of the newest snapshot saved or being saved.
    snapshot_at: u64,
    leadership: watch::Sender<Leadership>,
    applied: watch::Sender<u64>,
    /// Set when a committed entry could not be applied: why. Nothing after
    /// it is applied until this controller is upgraded and restarted.
    stalled: Option<Stall>,
    /// Proposals waiting for their log index to apply, by index.
    writes: HashMap<u64, PendingWrite>,
    /// Reads asked for since the last ReadIndex round: they share the next.
    read_batch: Vec<PendingRead>,
    /// ReadIndex rounds waiting for the leader's answer, by request context:
    /// every read that arrived together shares one round.
    reads: HashMap<Vec<u8>, Vec<PendingRead>>,
    /// Reads whose index is known, waiting for apply to catch up (which may
    /// never happen if the leader that answered died), by index.
    ready_reads: Vec<(u64, PendingRead)>,
}

/// Channel capacity of the node inbox.
const INBOX: usize = 4096;

/// Create the node's inbox before the node itself, so the transport can report
/// back to it.
pub fn channel() -> (mpsc::Sender<Msg>, mpsc::Receiver<Msg>) {
    mpsc::channel(INBOX)
}

impl Node {
    /// Open the node over an already opened storage: `store` is set to the
    /// saved snapshot's state, and raft re-applies the log after it. `storage`
    /// must be initialised (bootstrapped or joined) by the caller; a joining
    /// member with an empty `ConfState` waits for the leader's snapshot.
    pub fn new(
        cfg: NodeConfig,
        storage: SledStorage,
        store: Store,
        transport: Arc<dyn Transport>,
        tx: mpsc::Sender<Msg>,
        inbox: mpsc::Receiver<Msg>,
    ) -> anyhow::Result<(Node, Handle)> {
        let state = load_state(&storage)?;
        let (applied, _) = state.applied();
        store.replace(state);
        // Entries can be applied before the hard state carrying their commit
        // index reaches disk (raft-rs#392), and a snapshot saved: raft must
        // not start with its commit index below the applied one.
        storage.repair_commit(applied)?;
        let logger = slog::Logger::root(slog::Drain::fuse(slog_stdlog::StdLog), slog::o!());
        let raw = RawNode::new(&cfg.raft_config(applied), storage, &logger)?;
        let (leadership, rx) = watch::channel(Leadership::default());
        let (applied_tx, applied_rx) = watch::channel(applied);
        let (peers, peer_inbox) = mpsc::channel(INBOX);
        let handle = Handle {
            id: cfg.id,
            tx: tx.clone(),
            peers,
            hash_cache: Arc::default(),
            leadership: rx,
            applied: applied_rx,
        };
        let node = Node {
            cfg,
            raw,
            store,
            transport,
            inbox,
            peer_inbox,
            tx,
            snapshot_at: applied,
            leadership,
            applied: applied_tx,
            stalled: None,
            writes: HashMap::new(),
            read_batch: Vec::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
        };
        Ok((node, handle))
    }

    /// Drive raft until `shutdown` fires. Returns an error only when storage
    /// fails, which a controller cannot survive.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Raft's own traffic first: heartbeats and votes are never
                // starved by client writes (which wait in `inbox`).
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.expire(Instant::now());
                }
                msgs = self.peer_inbox.recv() => {
                    let Some(msgs) = msgs else { break };
                    self.step_all(msgs);
                    while let Ok(msgs) = self.peer_inbox.try_recv() {
                        self.step_all(msgs);
                    }
                }
                msg = self.inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    // Take everything already queued before writing to disk:
                    // one fsync then covers many proposals (group commit).
                    let mut n = 0;
                    while n < INBOX {
                        match self.inbox.try_recv() {
                            Ok(msg) => self.handle(msg),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
            }
            self.start_read_round();
            self.on_ready().await?;
        }
        info!("raft node stopping");
        self.raw.store().flush().await?;
        Ok(())
    }

    fn step_all(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if let Err(e) = self.raw.step(m) {
                debug!(error = %e, "raft refused a peer message");
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Propose { write, reply } => self.propose(write, reply),
            Msg::ReadIndex { reply } => self.read_batch.push(PendingRead {
                reply,
                deadline: Instant::now() + self.cfg.read_timeout,
            }),
            Msg::Status { reply } => {
                let _ = reply.send((self.status(), self.store.snapshot()));
            }
            Msg::SnapshotSaved { index } => self.compact_behind(index),
            Msg::ReportSnapshot { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Msg::ReportUnreachable { to } => self.raw.report_unreachable(to),
        }
    }

    /// One ReadIndex round for every read that arrived since the last one.
    fn start_read_round(&mut self) {
        if self.read_batch.is_empty() {
            return;
        }
        let ctx = rand::random::<u64>().to_be_bytes().to_vec();
        self.raw.read_index(ctx.clone());
        self.reads.insert(ctx, std::mem::take(&mut self.read_batch));
    }

    fn propose(&mut self, write: Write, reply: WriteReply) {
        if self.raw.raft.state != StateRole::Leader {
            let leader = self.raw.raft.leader_id;
            let _ = reply.send(Err(NodeError::NotLeader {
                leader: (leader != 0).then_some(leader),
            }));
            return;
        }
        if matches!(write, Write::RemoveMember { id } if id == self.cfg.id) {
            let answer = self
                .hand_over_leadership()
                .map_or_else(NodeError::Refused, NodeError::Dropped);
            let _ = reply.send(Err(answer));
            return;
        }
        let id = rand::random::<u64>();
        let result = match write {
            Write::Command(command) => match serde_json::to_vec(&Proposal {
                format: COMMAND_FORMAT,
                id,
                command,
            }) {
                Ok(data) => self.raw.propose(vec![], data).map_err(proposal_error),
                Err(e) => Err(NodeError::Refused(e.to_string())),
            },
            Write::AddMember {
                id: member,
                address,
            } => self.propose_membership(id, member, Change::Add(address)),
            Write::PromoteMember { id: member } => {
                self.propose_membership(id, member, Change::Promote)
            }
            Write::RemoveMember { id: member } => {
                self.propose_membership(id, member, Change::Remove)
            }
        };
        if let Err(e) = result {
            let _ = reply.send(Err(e));
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        self.writes.insert(
            index,
            PendingWrite {
                id,
                reply,
                deadline: Instant::now() + self.cfg.write_timeout,
            },
        );
    }

    /// A leader never removes itself: raft-rs 0.7 keeps a leader that applied
    /// its own removal as leader, and it then drops every proposal. It hands
    /// its leadership to the most caught-up other voter instead and answers
    /// with a retryable error; the retried removal reaches the new leader,
    /// which removes this controller as a follower. `Err` when there is no
    /// one to hand over to.
    fn hand_over_leadership(&mut self) -> Result<String, String> {
        let me = self.cfg.id;
        let conf = self.raw.raft.prs().conf().to_conf_state();
        if !conf.voters.contains(&me) {
            return Err(format!("controller {me} is not a voting member"));
        }
        let target = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && conf.voters.contains(*id))
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        let Some(target) = target else {
            return Err("cannot remove the last member of the cluster".into());
        };
        info!(
            to = target,
            "handing leadership over before this controller is removed"
        );
        self.raw.transfer_leader(target);
        Ok(format!(
            "controller {me} is the leader; it hands leadership to controller {target} before it is removed"
        ))
    }

    /// Add (`address` is `Some`) or remove a member: one change at a time.
    fn propose_membership(
        &mut self,
        id: u64,
        member: u64,
        change: Change,
    ) -> Result<(), NodeError> {
        let refuse = |reason: String| Err(NodeError::Refused(reason));
        if member == 0 {
            return refuse("member id 0 is not allowed; ids start at 1".into());
        }
        if self.raw.raft.pending_conf_index > self.raw.raft.raft_log.applied {
            return refuse(
                "another membership change is still in progress; retry when it completes".into(),
            );
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let is_voter = conf.voters.contains(&member);
        let is_learner = conf.learners.contains(&member);
        let (change, ctx) = match change {
            Change::Add(address) => {
                if is_voter || is_learner {
                    return refuse(format!("controller {member} is already a member"));
                }
                (
                    ConfChangeType::AddLearnerNode,
                    ConfContext {
                        id,
                        member: Some(Member {
                            id: member,
                            address,
                        }),
                    },
                )
            }
            Change::Promote => {
                if !is_learner {
                    return refuse(format!("controller {member} is not a learner"));
                }
                (ConfChangeType::AddNode, ConfContext { id, member: None })
            }
            Change::Remove => {
                if !is_voter && !is_learner {
                    return refuse(format!("controller {member} is not a member"));
                }
                if is_voter && conf.voters.len() == 1 {
                    return refuse("cannot remove the last member of the cluster".into());
                }
                (ConfChangeType::RemoveNode, ConfContext { id, member: None })
            }
        };
        let mut single = ConfChangeSingle {
            node_id: member,
            ..Default::default()
        };
        single.set_change_type(change);
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let ctx = serde_json::to_vec(&ctx).map_err(|e| NodeError::Refused(e.to_string()))?;
        self.raw
            .propose_conf_change(ctx, cc)
            .map_err(proposal_error)
    }

    fn status(&self) -> NodeStatus {
        let r = &self.raw.raft;
        let mut conf = r.prs().conf().to_conf_state();
        conf.voters.sort_unstable();
        conf.learners.sort_unstable();
        let store = self.raw.store();
        NodeStatus {
            id: self.cfg.id,
            role: role_name(r.state).to_string(),
            term: r.term,
            leader_id: r.leader_id,
            commit_index: r.raft_log.committed,
            applied_index: self.applied_index(),
            last_index: r.raft_log.last_index(),
            snapshot_index: store.snapshot_index(),
            state_hash: String::new(),
            voters: conf.voters,
            learners: conf.learners,
            stalled: self
                .stalled
                .as_ref()
                .map(|s| s.reason.clone())
                .unwrap_or_default(),
        }
    }

    /// The last entry the state machine holds: raft's applied index, or the
    /// one before a stall (raft moves on; the state does not).
    fn applied_index(&self) -> u64 {
        match &self.stalled {
            Some(s) => s.index - 1,
            None => self.raw.raft.raft_log.applied,
        }
    }

    /// Fail requests whose deadline passed.
    fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.write_timeout;
        let expired: Vec<u64> = self
            .writes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(i, _)| *i)
            .collect();
        for index in expired {
            if let Some(p) = self.writes.remove(&index) {
                let _ = p.reply.send(Err(NodeError::Unconfirmed(timeout)));
            }
        }
        // A round's reads share one deadline: the first's.
        let expired: Vec<Vec<u8>> = self
            .reads
            .iter()
            .filter(|(_, batch)| batch.first().is_none_or(|r| r.deadline <= now))
            .map(|(ctx, _)| ctx.clone())
            .collect();
        for ctx in expired {
            for r in self.reads.remove(&ctx).into_iter().flatten() {
                let _ = r.reply.send(Err(NodeError::ReadTimeout));
            }
        }
        let (late, waiting): (Vec<_>, Vec<_>) = self
            .ready_reads
            .drain(..)
            .partition(|(_, r)| r.deadline <= now);
        self.ready_reads = waiting;
        for (_, r) in late {
            let _ = r.reply.send(Err(NodeError::ReadTimeout));
        }
    }

    async fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            self.publish_leadership(ss.leader_id, ss.raft_state);
        }
        self.transport.send(rd.take_messages());

        let mut must_flush = rd.must_sync();
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
            must_flush = true;
        }
        self.apply_committed(rd.take_committed_entries())?;
        for rs in rd.take_read_states() {
            self.read_state(rs);
        }
        if !rd.entries().is_empty() {
            self.raw.store().append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            self.raw.store().set_hard_state(hs)?;
        }
        if must_flush {
            self.raw.store().flush().await?;
        }
        self.transport.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply_committed(light.take_committed_entries())?;
        self.raw.advance_apply();
        let applied = self.applied_index();
        self.applied.send_if_modified(|a| {
            let now = applied;
            let changed = *a != now;
            *a = now;
            changed
        });
        self.serve_ready_reads();
        self.maybe_snapshot();
        Ok(())
    }

    fn publish_leadership(&mut self, leader_id: u64, role: StateRole) {
        let view = Leadership {
            leader_id,
            term: self.raw.raft.term,
            is_leader: role == StateRole::Leader,
        };
        if !view.is_leader && !self.writes.is_empty() {
            // A deposed leader cannot tell whether its uncommitted entries will
            // be kept by the next leader: say so now rather than at the timeout.
            for (_, p) in self.writes.drain() {
                let _ = p.reply.send(Err(NodeError::Unconfirmed(Duration::ZERO)));
            }
        }
        info!(
            leader = leader_id,
            term = view.term,
            role = role_name(role),
            "raft role changed"
        );
        self.leadership.send_replace(view);
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> anyhow::Result<()> {
        let meta = snap.get_metadata();
        info!(
            index = meta.index,
            term = meta.term,
            bytes = snap.get_data().len(),
            "installing snapshot from the leader"
        );
        let state = State::decode(snap.get_data())?;
        // Data, log and metadata in one transaction: a crash leaves this
        // member before the snapshot or after it.
        self.raw.store().apply_snapshot(&snap)?;
        self.store.replace(state);
        self.snapshot_at = meta.index;
        crate::metrics::get().snapshot("installed", snap.get_data().len());
        for m in self.store.members() {
            self.transport.set_peer(m.id, m.address);
        }
        // Any proposal still waiting at or below the snapshot lost track of
        // its entry: whether it committed is unknown.
        let covered: Vec<u64> = self
            .writes
            .keys()
            .copied()
            .filter(|i| *i <= meta.index)
            .collect();
        for index in covered {
            if let Some(p) = self.writes.remove(&index) {
                let _ = p.reply.send(Err(NodeError::Unconfirmed(Duration::ZERO)));
            }
        }
        Ok(())
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        for entry in entries {
            if self.stalled.is_some() {
                return Ok(());
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&entry)?,
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)?
                }
            }
        }
        Ok(())
    }

    fn apply_normal(&mut self, entry: &Entry) -> anyhow::Result<()> {
        if entry.data.is_empty() {
            // A new leader's empty entry.
            self.store
                .update(|s| s.apply_nothing(entry.index, entry.term));
            self.finish(entry.index, None, Ok(WriteResult::MembershipChanged));
            return Ok(());
        }
        match decode_proposal(&entry.data) {
            Ok(p) => {
                let result = self.store.apply(entry.index, entry.term, &p.command);
                self.finish(entry.index, Some(p.id), result);
            }
            Err(why) => self.stall(entry.index, why),
        }
        Ok(())
    }

    /// Stop applying at `index`: skipping the entry would make this member's
    /// state differ from the others' for good. Raft goes on (this member
    /// still stores the log and votes); reads here wait, and the entry is
    /// applied after an upgrade and restart.
    fn stall(&mut self, index: u64, why: String) {
        let reason = format!(
            "stopped applying the log at entry {index}: {why}; upgrade this controller \
             (it applies from there after a restart)"
        );
        error!(index, "{reason}");
        self.finish_with(index, None, Err(NodeError::Refused(reason.clone())));
        self.stalled = Some(Stall { index, reason });
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> anyhow::Result<()> {
        let cc = match entry.get_entry_type() {
            EntryType::EntryConfChange => {
                ConfChange::parse_from_bytes(&entry.data).map(|c| c.into_v2())
            }
            _ => ConfChangeV2::parse_from_bytes(&entry.data),
        };
        let cc = match cc {
            Ok(cc) => cc,
            Err(e) => {
                self.stall(
                    entry.index,
                    format!("its configuration change cannot be decoded ({e})"),
                );
                return Ok(());
            }
        };
        let ctx: Option<ConfContext> = serde_json::from_slice(&entry.context).ok();
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                self.raw.store().set_conf_state(&cs)?;
                let added = ctx.as_ref().and_then(|c| c.member.clone());
                let removed = cc
                    .changes
                    .iter()
                    .find(|c| c.get_change_type() == ConfChangeType::RemoveNode)
                    .map(|c| c.node_id);
                self.store.update(|s| {
                    s.apply_membership(entry.index, entry.term, added.as_ref(), removed)
                });
                if let Some(m) = added {
                    info!(member = m.id, address = %m.address, "controller added to the cluster");
                    self.transport.set_peer(m.id, m.address);
                }
                if let Some(id) = removed {
                    info!(member = id, "controller removed from the cluster");
                    if id == self.cfg.id {
                        warn!("this controller was removed from the cluster; it no longer votes or serves writes");
                    } else {
                        self.transport.remove_peer(id);
                    }
                }
                self.finish(
                    entry.index,
                    ctx.map(|c| c.id),
                    Ok(WriteResult::MembershipChanged),
                );
            }
            Err(e) => {
                warn!(index = entry.index, error = %e, "configuration change rejected");
                self.store
                    .update(|s| s.apply_nothing(entry.index, entry.term));
                // Only the change's own proposer hears of the refusal; another
                // write waiting at this index (a new leader's) was dropped.
                let refused = NodeError::Refused(e.to_string());
                self.finish_with(entry.index, ctx.map(|c| c.id), Err(refused));
            }
        }
        Ok(())
    }

    /// Answer the proposal waiting at `index`, if any: with the result when the
    /// applied entry is the one it proposed, as dropped otherwise.
    fn finish(&mut self, index: u64, id: Option<u64>, result: Result<WriteResult, WriteError>) {
        self.finish_with(index, id, Ok(result));
    }

    /// Answer the write waiting at `index` with `answer` if it proposed the
    /// applied entry (`id`); any other write there was dropped (a previous
    /// leader's entry took its index) and may be retried.
    fn finish_with(
        &mut self,
        index: u64,
        id: Option<u64>,
        answer: Result<Result<WriteResult, WriteError>, NodeError>,
    ) {
        let Some(p) = self.writes.remove(&index) else {
            return;
        };
        if id == Some(p.id) {
            let _ = p.reply.send(answer);
        } else {
            let _ = p
                .reply
                .send(Err(NodeError::Dropped("leadership changed".into())));
        }
    }

    fn read_state(&mut self, rs: ReadState) {
        for r in self.reads.remove(&rs.request_ctx).into_iter().flatten() {
            self.ready_reads.push((rs.index, r));
        }
    }

    fn serve_ready_reads(&mut self) {
        let applied = self.applied_index();
        let mut waiting = Vec::new();
        for (index, read) in self.ready_reads.drain(..) {
            if index <= applied {
                let _ = read.reply.send(Ok(()));
            } else {
                waiting.push((index, read));
            }
        }
        self.ready_reads = waiting;
    }

    /// Once `snapshot_interval` entries were applied since the last snapshot,
    /// save a new one: the state is cloned here (free) and encoded and saved
    /// on a blocking thread, so the node goes on meanwhile; the saver reports
    /// back with [`Msg::SnapshotSaved`].
    fn maybe_snapshot(&mut self) {
        let state = self.store.snapshot();
        let (index, term) = state.applied();
        let due = index >= self.snapshot_at + self.cfg.snapshot_interval;
        let wanted = index > self.snapshot_at && self.raw.store().take_snapshot_wanted();
        if !due && !wanted {
            return;
        }
        self.snapshot_at = index;
        let meta = SnapshotMetadata {
            index,
            term,
            conf_state: Some(self.raw.store().conf_state()).into(),
            ..Default::default()
        };
        let storage = self.raw.store().clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let saved = state
                .encode()
                .map_err(anyhow::Error::from)
                .and_then(|data| Ok(storage.save_snapshot(&meta, &data)?));
            match saved {
                Ok(_) => {
                    let _ = tx.blocking_send(Msg::SnapshotSaved { index });
                }
                // The log stays uncompacted; the next interval tries again.
                Err(e) => error!(index, error = %e, "could not save a state snapshot"),
            }
        });
    }

    /// A snapshot at `index` is saved: drop the log behind it, keeping
    /// `trailing_entries` for slow followers (storage never compacts past the
    /// saved snapshot).
    fn compact_behind(&mut self, index: u64) {
        let compact_to = index.saturating_sub(self.cfg.trailing_entries);
        match self.raw.store().compact(compact_to) {
            Ok(()) => info!(
                snapshot = index,
                compacted_below = compact_to,
                "raft log compacted"
            ),
            Err(e) => error!(error = %e, "could not compact the raft log"),
        }
    }
}

/// The state as the saved snapshot holds it (empty for a member that has
/// none yet: it joins and gets the leader's).
pub fn load_state(storage: &SledStorage) -> anyhow::Result<State> {
    let Some((meta, data)) = storage.saved_snapshot()? else {
        return Ok(State::default());
    };
    let state = State::decode(&data)?;
    if state.applied().0 != meta.index {
        anyhow::bail!(
            "the saved snapshot's state is at index {}, its metadata says {}: \
             this member's data directory is corrupt",
            state.applied().0,
            meta.index
        );
    }
    Ok(state)
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_by_format_and_newer_or_unknown_ones_are_refused_with_why() {
        let scale = r#"{"Scale":{"target":{"namespace":"default","name":"web"},"replicas":2,"now_unix_ms":1}}"#;
        let unnumbered = format!(r#"{{"id":1,"command":{scale}}}"#);
        assert_eq!(
            decode_proposal(unnumbered.as_bytes()).map(|p| p.format),
            Ok(1),
            "entries from before formats were numbered are format 1"
        );
        let current = format!(r#"{{"format":{COMMAND_FORMAT},"id":1,"command":{scale}}}"#);
        assert!(decode_proposal(current.as_bytes()).is_ok());

        let newer = format!(
            r#"{{"format":{},"id":1,"command":{scale}}}"#,
            COMMAND_FORMAT + 1
        );
        let why = decode_proposal(newer.as_bytes()).err().unwrap_or_default();
        assert!(why.contains("written by a newer drover"), "{why}");

        let unknown_field = r#"{"format":2,"id":1,"command":{"Scale":{"target":{"namespace":"default","name":"web"},"replicas":2,"now_unix_ms":1,"surge":3}}}"#;
        let why = decode_proposal(unknown_field.as_bytes())
            .err()
            .unwrap_or_default();
        assert!(
            why.contains("cannot be decoded") && why.contains("surge"),
            "{why}"
        );

        let why = decode_proposal(b"\x00garbage").err().unwrap_or_default();
        assert!(why.contains("not a drover command"), "{why}");
    }

    #[test]
    fn a_dropped_proposal_is_retryable_and_other_refusals_are_not() {
        assert!(matches!(
            proposal_error(raft::Error::ProposalDropped),
            NodeError::Dropped(_)
        ));
        assert!(matches!(
            proposal_error(raft::Error::StepLocalMsg),
            NodeError::Refused(_)
        ));
        // The retry loop in `cluster::write` retries Dropped, and the API
        // answers it as Aborted, which droverctl and followers retry too.
        assert_eq!(
            crate::cluster::node_error(NodeError::Dropped("x".into())).code(),
            tonic::Code::Aborted
        );
    }
}
