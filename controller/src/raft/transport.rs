//! Carrying raft messages between members.
//!
//! ```text
//!  node ──send(msgs)──┬─▶ bulk queue ───▶ sender task ══Raft.StepStream══▶ peer
//!                     │   (appends, snapshots; bounded; full → drop)
//!                     └─▶ urgent queue ─▶ sender task ══Raft.StepStream══▶ peer
//!                         (heartbeats, votes, responses; own connection)
//! ```
//!
//! Each lane keeps one long-lived stream open and writes its batches into
//! it as they come: a batch never waits for the answer to the one before.
//! With a call per batch (`Raft.Step`), a write's append to a follower
//! often waited for the previous call's answer (the commit broadcast of
//! the previous write), and each call cost a request's setup on both
//! sides: two such hops were 0.3–0.4 ms of a 1.3 ms write on loopback. A
//! stream that fails (the peer is down, refuses a batch, or misses its
//! HTTP/2 keep-alive pings) reports the peer unreachable and is opened
//! again for the next batch.
//!
//! Two lanes per peer, each with its own connection: a heartbeat or a vote
//! never waits behind megabytes of log entries being encoded, encrypted and
//! sent (at 100,000 replicas an append batch is tens of MiB), so a busy
//! leader keeps its followers' election timers reset and hears their
//! answers in time for its quorum check.
//!
//! Raft tolerates lost, duplicated and reordered messages, so the transport
//! never blocks the node: a full queue or a failed call drops messages. The
//! one thing the node must hear about is the fate of a snapshot it sent, so
//! every path that loses one (no address, full queue, failed call) reports
//! `ReportSnapshot` back; an unreachable peer is reported too. The
//! controller's certificate may be renewed while it runs: each sender
//! connects again with the new one before its next batch.
//! [`MemTransport`] is the in-process implementation for tests, with partitions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use drover_pki::{self as pki, Security};
use drover_proto::pb;
use drover_proto::pb::raft_client::RaftClient;
use drover_proto::pb::RaftBatch;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::node::{Handle, Msg};

/// Where a member's outgoing raft messages go.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<Message>);
    /// Learn or update a member's address.
    fn set_peer(&self, id: u64, address: String);
    fn remove_peer(&self, id: u64);
}

/// The node's handle, once it exists: the transport reports back through it.
pub type NodeSlot = Arc<RwLock<Option<Handle>>>;

const PEER_QUEUE: usize = 8192;
const MAX_BATCH: usize = 512;
/// A batch stops taking messages once their entries hold this many bytes.
/// A stream keeps its encoding buffer for as long as it is open, at the
/// size of the largest batch it carried: unbounded, a leader's bulk lanes
/// at 100,000 replicas took whole windows of appends (32 × 1 MiB) into one
/// batch and kept about 100 MB of buffers (heaptrack).
const MAX_BATCH_BYTES: usize = 2 << 20;
/// Batches waiting to go out on one stream; beyond it the peer is not
/// reading (flow control stopped the stream) and batches are dropped.
const STREAM_QUEUE: usize = 64;

/// Raft over gRPC (`drover.v1.Raft/StepStream`).
pub struct GrpcTransport {
    self_id: u64,
    self_address: String,
    node: NodeSlot,
    peers: Mutex<HashMap<u64, Peer>>,
    /// This controller's current client credentials (renewed in place).
    security: watch::Receiver<Security>,
    /// The runtime peer senders run on: the one this transport was made on,
    /// not the raft node's own (which may learn a new peer).
    runtime: tokio::runtime::Handle,
}

struct Peer {
    address: String,
    bulk: mpsc::Sender<Message>,
    urgent: mpsc::Sender<Message>,
}

impl Peer {
    /// The lane a message travels in: log entries, snapshots and writes a
    /// follower relays to the leader in bulk, everything small and
    /// time-critical apart.
    fn lane(&self, m: &Message) -> &mpsc::Sender<Message> {
        match m.get_msg_type() {
            MessageType::MsgAppend | MessageType::MsgSnapshot | MessageType::MsgPropose => {
                &self.bulk
            }
            _ => &self.urgent,
        }
    }
}

impl GrpcTransport {
    pub fn new(
        self_id: u64,
        self_address: String,
        node: NodeSlot,
        security: watch::Receiver<Security>,
    ) -> GrpcTransport {
        GrpcTransport {
            self_id,
            self_address,
            node,
            peers: Mutex::new(HashMap::new()),
            security,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The address a member is known at.
    pub fn address_of(&self, id: u64) -> Option<String> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&id).map(|p| p.address.clone())
    }

    /// Learn a sender's address from an incoming batch unless already known.
    pub fn learn(&self, id: u64, address: &str) {
        if id == self.self_id || address.is_empty() || self.address_of(id).is_some() {
            return;
        }
        self.set_peer(id, address.to_string());
    }

    fn spawn_peer(&self, id: u64, address: String) -> mpsc::Sender<Message> {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let sender = PeerSender {
            from: self.self_id,
            from_address: self.self_address.clone(),
            to: id,
            address,
            node: self.node.clone(),
            security: self.security.clone(),
        };
        self.runtime.spawn(sender.run(rx));
        tx
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        for m in msgs {
            let Some(peer) = peers.get(&m.to) else {
                debug!(to = m.to, "no address for raft peer; dropping message");
                dropped(&self.node, &m);
                continue;
            };
            if let Err(e) = peer.lane(&m).try_send(m) {
                debug!(to = peer.address, "raft peer queue full; dropping message");
                let (mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) = e;
                dropped(&self.node, &m);
            }
        }
    }

    fn set_peer(&self, id: u64, address: String) {
        if id == self.self_id {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(&id).is_some_and(|p| p.address == address) {
            return;
        }
        // Dropping the old queues ends the old sender tasks.
        let bulk = self.spawn_peer(id, address.clone());
        let urgent = self.spawn_peer(id, address.clone());
        peers.insert(
            id,
            Peer {
                address,
                bulk,
                urgent,
            },
        );
    }

    fn remove_peer(&self, id: u64) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.remove(&id);
    }
}

/// What a message's entries hold, in bytes.
fn entry_bytes(m: &Message) -> usize {
    m.get_entries()
        .iter()
        .map(|e| e.get_data().len() + e.get_context().len())
        .sum()
}

struct PeerSender {
    from: u64,
    from_address: String,
    to: u64,
    address: String,
    node: NodeSlot,
    security: watch::Receiver<Security>,
}

/// A peer's two raft clients: one for the lanes' streams, with HTTP/2
/// keep-alive pings (a stream has no deadline), and one for snapshots
/// (their deadline grows with their size, see `send_snapshot`).
fn raft_clients(
    security: &Security,
    address: &str,
) -> Result<(RaftClient<Channel>, RaftClient<Channel>), pki::PkiError> {
    let endpoint = security
        .endpoint(address, &pki::Server::Controller)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true);
    // The keep-alive pings are what notice a peer that is gone without
    // closing its connection (a partition).
    let client = RaftClient::new(
        endpoint
            .clone()
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect_lazy(),
    )
    .max_decoding_message_size(drover_proto::MAX_RAFT_MESSAGE_BYTES)
    .max_encoding_message_size(drover_proto::MAX_RAFT_MESSAGE_BYTES);
    Ok((client, RaftClient::new(endpoint.connect_lazy())))
}

impl PeerSender {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let current = self.security.borrow_and_update().clone();
        let (mut client, mut snapshot_client) = match raft_clients(&current, &self.address) {
            Ok(c) => c,
            Err(e) => {
                warn!(peer = self.to, address = %self.address, error = %e, "invalid raft peer address");
                return;
            }
        };
        let mut stream: Option<mpsc::Sender<RaftBatch>> = None;
        while let Some(first) = rx.recv().await {
            // A renewed certificate: connect again with it.
            if self.security.has_changed().unwrap_or(false) {
                let renewed = self.security.borrow_and_update().clone();
                if let Ok((c, s)) = raft_clients(&renewed, &self.address) {
                    debug!(peer = self.to, "raft clients use the renewed certificate");
                    (client, snapshot_client) = (c, s);
                    stream = None;
                }
            }
            let mut bytes = entry_bytes(&first);
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        bytes += entry_bytes(&m);
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            let (snapshots, batch): (Vec<Message>, Vec<Message>) = batch
                .into_iter()
                .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            for m in snapshots {
                let to = m.to;
                let ok = self.send_snapshot(&mut snapshot_client, m).await;
                if !ok {
                    self.report(Msg::ReportUnreachable { to });
                }
                self.report(Msg::ReportSnapshot { to, ok });
            }
            if batch.is_empty() {
                continue;
            }
            let mut encoded = Vec::with_capacity(batch.len());
            for m in &batch {
                match m.write_to_bytes() {
                    Ok(b) => encoded.push(b),
                    Err(e) => warn!(error = %e, "could not encode a raft message"),
                }
            }
            let request = RaftBatch {
                from: self.from,
                from_address: self.from_address.clone(),
                messages: encoded,
            };
            let open = match stream.take() {
                Some(tx) if !tx.is_closed() => tx,
                _ => self.open_stream(client.clone()),
            };
            match open.try_send(request) {
                Ok(()) => stream = Some(open),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    debug!(peer = self.to, "raft stream full; dropping a batch");
                    self.report(Msg::ReportUnreachable { to: self.to });
                    stream = Some(open);
                }
                // The stream ended (its task reported why); the next batch
                // opens another.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Opens a stream to the peer: the batches sent into the returned queue
    /// go out as they come. When the call ends with an error (the peer is
    /// unreachable or refused a batch) the peer is reported unreachable and
    /// the queue closes.
    fn open_stream(&self, mut client: RaftClient<Channel>) -> mpsc::Sender<RaftBatch> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let node = self.node.clone();
        let (to, address) = (self.to, self.address.clone());
        tokio::spawn(async move {
            match client
                .step_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(_) => debug!(peer = to, "raft stream closed"),
                Err(status) => {
                    debug!(peer = to, address = %address, error = %status.message(), "raft stream to peer ended");
                    report(&node, Msg::ReportUnreachable { to });
                }
            }
        });
        tx
    }

    /// Stream one MsgSnapshot to the peer: the message without its data
    /// first, then the data in [`drover_proto::SNAPSHOT_CHUNK_BYTES`] pieces,
    /// within 10 s plus 1 s per MiB. Whether the peer took it.
    async fn send_snapshot(&self, client: &mut RaftClient<Channel>, mut m: Message) -> bool {
        let data = m.mut_snapshot().take_data();
        let header = match m.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "could not encode a raft snapshot message");
                return false;
            }
        };
        let size = data.len();
        let first = pb::SnapshotChunk {
            from: self.from,
            from_address: self.from_address.clone(),
            message: header,
            data_size: size as u64,
            data: Vec::new(),
        };
        // Pieces are cut as the stream is read, not all at once.
        const CHUNK: usize = drover_proto::SNAPSHOT_CHUNK_BYTES;
        let pieces = (0..size.div_ceil(CHUNK)).map(move |i| pb::SnapshotChunk {
            data: data[i * CHUNK..((i + 1) * CHUNK).min(size)].to_vec(),
            ..Default::default()
        });
        let budget = Duration::from_secs(10 + (size as u64 >> 20));
        let call =
            client.install_snapshot(tokio_stream::iter(std::iter::once(first).chain(pieces)));
        match tokio::time::timeout(budget, call).await {
            Ok(Ok(_)) => {
                debug!(peer = self.to, bytes = size, "raft snapshot sent");
                true
            }
            Ok(Err(status)) => {
                warn!(peer = self.to, bytes = size, error = %status.message(), "raft snapshot not taken");
                false
            }
            Err(_) => {
                warn!(
                    peer = self.to,
                    bytes = size,
                    ?budget,
                    "raft snapshot not sent in time"
                );
                false
            }
        }
    }

    fn report(&self, msg: Msg) {
        report(&self.node, msg);
    }
}

fn report(node: &NodeSlot, msg: Msg) {
    let node = node.read().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = node.as_ref() {
        h.report(msg);
    }
}

/// A message that never left: raft must hear of a lost snapshot, or the
/// follower waits for it (paused) until the leader changes.
fn dropped(node: &NodeSlot, m: &Message) {
    if m.get_msg_type() == MessageType::MsgSnapshot {
        report(
            node,
            Msg::ReportSnapshot {
                to: m.to,
                ok: false,
            },
        );
    }
    report(node, Msg::ReportUnreachable { to: m.to });
}

/// In-process transport for tests: delivers straight into other nodes' inboxes,
/// and can cut links to simulate partitions.
#[derive(Clone, Default)]
pub struct MemRouter {
    inner: Arc<RwLock<MemRouterInner>>,
}

#[derive(Default)]
struct MemRouterInner {
    nodes: HashMap<u64, Handle>,
    /// Directed links that drop everything: (from, to).
    cut: HashSet<(u64, u64)>,
    /// Snapshots still to be lost on their way, as a lossy network would.
    lose_snapshots: u32,
}

impl MemRouter {
    pub fn register(&self, handle: Handle) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.nodes.insert(handle.id(), handle);
    }

    pub fn unregister(&self, id: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.nodes.remove(&id);
    }

    /// Cut `id` off from every other node, both directions.
    pub fn isolate(&self, id: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let others: Vec<u64> = inner.nodes.keys().copied().filter(|o| *o != id).collect();
        for o in others {
            inner.cut.insert((id, o));
            inner.cut.insert((o, id));
        }
    }

    /// Lose the next `n` snapshots sent by anyone (the sender hears of it,
    /// as from a failed call).
    pub fn lose_snapshots(&self, n: u32) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.lose_snapshots = n;
    }

    pub fn heal(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.cut.clear();
    }

    /// The transport one node sends through.
    pub fn transport(&self, from: u64) -> Arc<dyn Transport> {
        Arc::new(MemTransport {
            from,
            router: self.clone(),
        })
    }
}

struct MemTransport {
    from: u64,
    router: MemRouter,
}

impl Transport for MemTransport {
    fn send(&self, msgs: Vec<Message>) {
        let mut inner = self.router.inner.write().unwrap_or_else(|e| e.into_inner());
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let lost = is_snapshot && inner.lose_snapshots > 0;
            if lost {
                inner.lose_snapshots -= 1;
            }
            let reachable = !inner.cut.contains(&(self.from, to)) && !lost;
            let delivered = match inner.nodes.get(&to) {
                Some(h) if reachable => {
                    h.step(vec![m]);
                    true
                }
                _ => false,
            };
            if let Some(me) = inner.nodes.get(&self.from) {
                if is_snapshot {
                    me.report(Msg::ReportSnapshot { to, ok: delivered });
                }
                if !delivered {
                    me.report(Msg::ReportUnreachable { to });
                }
            }
        }
    }

    fn set_peer(&self, _id: u64, _address: String) {}

    fn remove_peer(&self, _id: u64) {}
}
