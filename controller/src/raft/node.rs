//! The raft member task: a tokio driver over the synchronous [`Core`], run
//! on a thread of its own (`server::spawn_node`).
//!
//! ```text
//!   Handle (cloneable) ──Msg──▶ ┌──────────── node task ─────────────┐
//!   transport (peers) ──Msg──▶  │ wake on ticker, peers or inbox;     │
//!                               │ then every iteration, in order:     │
//!                               │ peers  → core.step(msgs)  (all)     │
//!                               │ inbox  → core.propose / read / ...  │
//!                               │ ticker → core.tick(now)  (if due)   │
//!                               │ core.persist()                      │
//!                               │ storage.flush().await  (group fsync)│
//!                               │ core.after_flush() → snapshot job   │──▶ spawn_blocking
//!                               └─────────────────────────────────────┘
//! ```
//!
//! All raft logic (the Ready order, applying, replies, snapshots) is in
//! [`super::core`]; this task only batches its inboxes, reads the clock,
//! awaits the flush and runs snapshot jobs on a blocking thread. The
//! deterministic simulator drives the same `Core` without tokio.
//!
//! The state machine is in memory ([`Store`]). Every `snapshot_interval`
//! applied entries (or `snapshot_log_bytes` of them, whichever comes first)
//! the core clones it (free), this task encodes and saves it
//! on a blocking thread, and once saved the core compacts the log behind it;
//! a restart decodes the saved snapshot and re-applies the log after it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use raft::prelude::Message;
use rand::SeedableRng as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

pub use super::core::{load_state, WriteReply, COMMAND_FORMAT};
use super::core::{Core, Inbound};
use super::storage::SledStorage;
use super::transport::Transport;
use crate::store::{State, Store, Write, WriteError, WriteResult};

/// Raft timing and log-size settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub tick: Duration,
    /// Election timeout in ticks (randomised in [n, 2n)).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Save a snapshot of the state (and compact the log behind it) once this
    /// many entries were applied since the last one...
    pub snapshot_interval: u64,
    /// ... or once the entries applied since the last one hold this many
    /// bytes. sled keeps the log's entries in memory until they are
    /// compacted, so this bounds the log's memory: at 100,000 replicas a
    /// status batch is tens of kilobytes, and 10,000 of them held 300 MB.
    pub snapshot_log_bytes: u64,
    /// Entries kept behind the applied index at compaction, for slow followers...
    pub trailing_entries: u64,
    /// ... but no more than this many bytes of them: what they keep in
    /// memory is bounded too.
    pub trailing_bytes: u64,
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
            snapshot_log_bytes: 16 << 20,
            trailing_entries: 1_000,
            trailing_bytes: 4 << 20,
            write_timeout: Duration::from_secs(8),
            // Short: a read that raft dropped silently (no leader yet, or a
            // new leader without a committed entry of its term) is retried soon.
            read_timeout: Duration::from_millis(250),
        }
    }

    pub(super) fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            // What a follower may have queued, decoded, while its raft
            // thread is busy: in flight × size per message. 256 × 1 MiB let
            // a follower hold 105 MB of appends at 100,000 replicas
            // (heaptrack); 32 MiB still keeps a follower that acknowledges
            // within a few milliseconds streaming.
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 32,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: 64 * 1024 * 1024,
            // Committed entries handed out per Ready: the raft thread
            // applies them before it ticks again. Unbounded, a member that
            // fell behind (or a leader with a backlog) applied tens of MiB
            // of entries in one go, past the election timeout, and its
            // peers started elections. At least one entry is always given.
            max_committed_size_per_ready: MAX_APPLY_PER_READY,
            ..Default::default()
        }
    }
}

/// The most committed entry bytes applied between two ticks.
pub const MAX_APPLY_PER_READY: u64 = 1024 * 1024;

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
    peers: mpsc::Sender<Inbound>,
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

    /// Propose a write on this member. A follower that knows its leader
    /// relays a command through raft and answers once it applied it itself
    /// (so a read on this member then sees it); a membership change, or a
    /// member that knows no leader, fails with `NotLeader`, and forwarding
    /// is the API layer's job.
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
        let (mut status, state) = self.status_and_state().await?;
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

    /// This member's status without the state hash, which at 100,000
    /// replicas costs an encoding of the whole state (metrics scrape this
    /// every few seconds).
    pub async fn raft_status(&self) -> Result<NodeStatus, NodeError> {
        self.status_and_state().await.map(|(status, _)| status)
    }

    async fn status_and_state(&self) -> Result<(NodeStatus, Arc<State>), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Status { reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Hand messages from a peer to the node. Drops them when the node is
    /// overloaded: raft tolerates lost messages, and a peer must not be able
    /// to block us.
    pub fn step(&self, messages: Vec<Message>) {
        self.step_inbound(Inbound {
            messages,
            relayed: Vec::new(),
        });
    }

    /// [`Handle::step`], with the proposals of the relayed writes among the
    /// messages as the API checked them (the leader keeps them to apply).
    pub fn step_inbound(&self, inbound: Inbound) {
        if let Err(e) = self.peers.try_send(inbound) {
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

pub struct Node {
    core: Core<SledStorage>,
    inbox: mpsc::Receiver<Msg>,
    /// Peers' raft messages, served before anything in `inbox`.
    peer_inbox: mpsc::Receiver<Inbound>,
    /// The inbox's sender, for the snapshot saver to report back.
    tx: mpsc::Sender<Msg>,
    /// Whether this task has a thread of its own ([`Node::run_on_own_thread`]):
    /// then it fsyncs in place instead of handing the flush to sled's pool.
    own_thread: bool,
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
        let id = cfg.id;
        let rng = Box::new(rand::rngs::StdRng::from_entropy());
        let core = Core::new(cfg, storage, store, transport, rng)?;
        let (peers, peer_inbox) = mpsc::channel(INBOX);
        let handle = Handle {
            id,
            tx: tx.clone(),
            peers,
            hash_cache: Arc::default(),
            leadership: core.leadership_watch(),
            applied: core.applied_watch(),
        };
        let node = Node {
            core,
            inbox,
            peer_inbox,
            tx,
            own_thread: false,
        };
        Ok((node, handle))
    }

    /// [`Node::run`] on a runtime whose thread runs nothing else: the fsync
    /// of each Ready blocks that thread in place, which waiting for it would
    /// do anyway, and saves a hop through sled's thread pool on the path of
    /// every write (leader and follower alike).
    pub async fn run_on_own_thread(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.own_thread = true;
        self.run(shutdown).await
    }

    /// Drive raft until `shutdown` fires. Returns an error only when storage
    /// fails, which a controller cannot survive.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.core_tick());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut ticked = false;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => ticked = true,
                inbound = self.peer_inbox.recv() => {
                    let Some(inbound) = inbound else { break };
                    self.core.step_inbound(inbound);
                }
                msg = self.inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                }
            }
            // Whichever branch woke the loop, everything already queued is
            // taken before the next Ready: raft's own traffic first, then
            // client requests (one fsync then covers many proposals: group
            // commit). Taking only the woken branch starved both once an
            // iteration outlasted a tick (large applies under load): the
            // ticker was ready every time, heartbeats and votes waited until
            // elections fired, and client writes until the load fell.
            while let Ok(inbound) = self.peer_inbox.try_recv() {
                self.core.step_inbound(inbound);
            }
            let mut n = 0;
            while n < INBOX {
                match self.inbox.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
                n += 1;
            }
            // The tick after the messages: a leader's quorum check counts
            // the answers that are already here.
            if ticked {
                self.core.tick(Instant::now());
            }
            self.on_ready().await?;
        }
        info!("raft node stopping");
        self.core.storage().flush().await?;
        Ok(())
    }

    fn core_tick(&self) -> Duration {
        self.core.config().tick
    }

    async fn on_ready(&mut self) -> anyhow::Result<()> {
        let Some(unflushed) = self.core.persist()? else {
            return Ok(());
        };
        if unflushed.must_flush {
            if self.own_thread {
                self.core.storage().flush_now()?;
            } else {
                self.core.storage().flush().await?;
            }
        }
        if let Some(job) = self.core.after_flush(unflushed)? {
            let tx = self.tx.clone();
            let index = job.index;
            let spawned = std::thread::Builder::new()
                .name("raft-snapshot".into())
                .spawn(move || {
                    lower_this_threads_priority();
                    match job.run() {
                        Ok(index) => {
                            let _ = tx.blocking_send(Msg::SnapshotSaved { index });
                        }
                        // The log stays uncompacted; the next interval tries again.
                        Err(e) => error!(index, error = %e, "could not save a state snapshot"),
                    }
                });
            if let Err(e) = spawned {
                error!(index, error = %e, "could not start a thread to save a state snapshot");
            }
        }
        Ok(())
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Propose { write, reply } => self.core.propose(write, reply, Instant::now()),
            Msg::ReadIndex { reply } => self.core.read(reply, Instant::now()),
            Msg::Status { reply } => {
                let _ = reply.send((self.core.status(), self.core.state()));
            }
            Msg::SnapshotSaved { index } => self.core.snapshot_saved(index),
            Msg::ReportSnapshot { to, ok } => self.core.report_snapshot(to, ok),
            Msg::ReportUnreachable { to } => self.core.report_unreachable(to),
        }
    }
}

/// Encoding a snapshot of 100,000 replicas takes a core for a second or two,
/// and every member takes its snapshot at about the same index: on a small
/// machine the three encodes together starved the runtimes that answer
/// agents' keep-alives and heartbeats, and hundreds of nodes went NotReady
/// at each snapshot. At nice 10 the encode gets what the serving threads
/// leave (a snapshot is never urgent: the log only grows meanwhile).
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its arguments; on Linux `who` 0 with
    // PRIO_PROCESS names the calling thread.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, 10) != 0 {
            debug!("could not lower the snapshot thread's priority");
        }
    }
}
