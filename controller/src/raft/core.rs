//! The raft member's logic, synchronous: [`Core`] owns the `RawNode`, the
//! writes and reads waiting on it, the stall state and the leadership and
//! applied-index publication. It never reads a clock and never awaits: the
//! caller passes `now`, and the one wait (the disk flush) splits the Ready
//! handling in two.
//!
//! ```text
//!   driver                               Core
//!   ──────                               ────
//!   tick(now) · step(msgs) ·     ──▶     raft input; requests wait with
//!   propose(w, reply, now) ·             deadlines computed from `now`
//!   read(reply, now)
//!
//!   persist()                    ──▶     1 send leader messages
//!                                        2 install a snapshot
//!                                        3 apply committed → store, replies
//!                                        4 append entries, hard state
//!        ◀── Unflushed { must_flush }
//!   flush the disk (if must_flush)        (the only wait)
//!   after_flush(unflushed)        ──▶    5 send persisted messages
//!                                        6 advance; commit; apply the rest;
//!                                          answer reads; decide a snapshot
//!        ◀── Option<SnapshotJob>
//!   run the job off the loop, then snapshot_saved(index)
//! ```
//!
//! The order is raft-rs's documented one: a follower's votes and append
//! responses (the persisted messages) leave only after its log and hard
//! state are on disk. Clients wait on a proposal until its log index is
//! applied: if the entry applied there is theirs they get its result; if
//! another leader's entry took the index, theirs was dropped and they may retry.
//! A follower relays a command to the leader inside raft (`MsgPropose`) and
//! waits by proposal id instead (it never learns the index): answered when
//! it applies the entry, unconfirmed when the leader changes before that.
//!
//! An entry's command is decoded from its JSON once per member at most: the
//! member that proposed it keeps the command it encoded (the leader by the
//! entry's index and term, a relaying follower by proposal id and the
//! entry's bytes), and a leader keeps the commands of the relayed writes it
//! decoded to check them ([`check_relayed`]); applying the entry takes the
//! command from there. Debug builds decode the entry anyway and compare.
//!
//! Two drivers use this one code path: the tokio [`super::node::Node`] (a
//! select loop over inboxes and a ticker, `flush().await`, `spawn_blocking`
//! for snapshot jobs) and the deterministic simulator (`tests/sim`), which
//! steps several cores on one thread over a simulated disk and network.
//! Determinism is why randomness comes from the caller's RNG (proposal ids,
//! ReadIndex contexts, and the randomized election timeout that raft-rs
//! would otherwise draw from its thread RNG), and why the maps whose order
//! reaches replies are `BTreeMap`s.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    HardState, Message, MessageType, Ready, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use raft_proto::ConfChangeI;
use rand::{Rng as _, RngCore};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use super::node::{Leadership, NodeConfig, NodeError, NodeStatus};
use super::storage::{SledStorage, StorageError};
use super::transport::Transport;
use crate::store::{Command, Member, State, Store, Write, WriteError, WriteResult};

/// What the core needs from its log storage, beyond raft-rs's [`raft::Storage`]
/// reads. Every write reaches the disk at the next flush, which the driver
/// does (see [`Unflushed::must_flush`]); [`LogStore::save_snapshot`] is
/// durable when it returns. [`SledStorage`] is the production one; the
/// simulator's disk keeps a durable and a volatile part.
pub trait LogStore: raft::Storage + Clone {
    /// Append entries, replacing any at or after the first one's index.
    fn append(&self, entries: &[Entry]) -> Result<(), StorageError>;
    fn set_hard_state(&self, hs: &HardState) -> Result<(), StorageError>;
    /// Only the commit index (from `LightReady::commit_index`).
    fn set_commit(&self, commit: u64) -> Result<(), StorageError>;
    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StorageError>;
    fn conf_state(&self) -> ConfState;
    /// Install a leader's snapshot: its data, the log truncated to it, the
    /// hard and conf state, all or nothing.
    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError>;
    /// Save a snapshot of this member's own state, `write` encoding it
    /// (streamed, never whole in memory); an older one than the saved one
    /// is ignored (`Ok(false)`).
    fn save_snapshot(
        &self,
        meta: &SnapshotMetadata,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<bool, StorageError>;
    /// The saved snapshot: metadata and encoded state.
    fn saved_snapshot(&self) -> Result<Option<(SnapshotMetadata, Vec<u8>)>, StorageError>;
    /// Whether a follower needed a newer snapshot since the last call.
    fn take_snapshot_wanted(&self) -> bool;
    /// Drop the entries below `compact_index`, never past the saved snapshot.
    fn compact(&self, compact_index: u64) -> Result<(), StorageError>;
    /// The index of the last truncated entry.
    fn snapshot_index(&self) -> u64;
    /// At start: raise the persisted commit index to `applied` (raft-rs#392).
    fn repair_commit(&self, applied: u64) -> Result<(), StorageError>;
}

impl LogStore for SledStorage {
    fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        SledStorage::append(self, entries)
    }
    fn set_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        SledStorage::set_hard_state(self, hs)
    }
    fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        SledStorage::set_commit(self, commit)
    }
    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StorageError> {
        SledStorage::set_conf_state(self, cs)
    }
    fn conf_state(&self) -> ConfState {
        SledStorage::conf_state(self)
    }
    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError> {
        SledStorage::apply_snapshot(self, snap)
    }
    fn save_snapshot(
        &self,
        meta: &SnapshotMetadata,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<bool, StorageError> {
        SledStorage::save_snapshot(self, meta, write)
    }
    fn saved_snapshot(&self) -> Result<Option<(SnapshotMetadata, Vec<u8>)>, StorageError> {
        SledStorage::saved_snapshot(self)
    }
    fn take_snapshot_wanted(&self) -> bool {
        SledStorage::take_snapshot_wanted(self)
    }
    fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        SledStorage::compact(self, compact_index)
    }
    fn snapshot_index(&self) -> u64 {
        SledStorage::snapshot_index(self)
    }
    fn repair_commit(&self, applied: u64) -> Result<(), StorageError> {
        SledStorage::repair_commit(self, applied)
    }
}

/// The answer to a write: the state machine's result, or why there is none.
pub type WriteReply = oneshot::Sender<Result<Result<WriteResult, WriteError>, NodeError>>;
/// The answer to a read barrier.
pub type ReadReply = oneshot::Sender<Result<(), NodeError>>;

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

/// The command format this controller writes, and the newest it applies
/// (its history is with the commands, in the store).
pub use crate::store::COMMAND_FORMAT;

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

/// A relayed entry's proposal as [`check_relayed`] decoded it, handed to
/// the raft thread with the message ([`Inbound`]) so that the leader does
/// not decode the entry again when it applies it.
pub struct Checked(Proposal);

/// Raft messages from a peer, and the proposals of the relayed writes among
/// them ([`check_relayed`]), in the order of those messages' entries.
#[derive(Default)]
pub struct Inbound {
    pub messages: Vec<Message>,
    pub relayed: Vec<Checked>,
}

/// Whether an entry a follower relayed (`MsgPropose` from a peer) may go
/// into the log: a normal entry holding a command this controller can
/// apply. Anything else would stop every member at the entry (or, a
/// configuration change, skip the checks of `Write::AddMember` and the
/// rest), so the leader drops it rather than appending it; the follower's
/// write then times out unconfirmed.
pub fn check_relayed(entry: &Entry) -> Result<Checked, String> {
    if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
        return Err(
            "only a command may be relayed, not a configuration change or an empty entry".into(),
        );
    }
    decode_proposal(&entry.data).map(Checked)
}

/// A command this member proposed or checked, kept for its entry's apply.
struct Known {
    /// The term of the entry that holds it (with the index, which keys it,
    /// names one entry on every member: raft's log matching).
    term: u64,
    proposal: Proposal,
}

/// The proposal id of an entry this controller wrote, read from the head of
/// its JSON (`{"format":F,"id":N,`, the order `Proposal`'s fields are
/// written in) without decoding the rest; `None` for any other head. Only a
/// hint: whoever uses it compares the entry's bytes as well.
fn written_id(data: &[u8]) -> Option<u64> {
    fn digits(bytes: &[u8]) -> usize {
        bytes.iter().take_while(|b| b.is_ascii_digit()).count()
    }
    let rest = data.strip_prefix(b"{\"format\":")?;
    let rest = rest[digits(rest)..].strip_prefix(b",\"id\":")?;
    std::str::from_utf8(&rest[..digits(rest)])
        .ok()?
        .parse()
        .ok()
}

/// A proposal as an entry's data.
fn encode_proposal(proposal: &Proposal) -> Result<Vec<u8>, NodeError> {
    serde_json::to_vec(proposal).map_err(|e| NodeError::Refused(e.to_string()))
}

/// A command under a fresh proposal `id`, in this controller's format.
fn proposal(id: u64, command: Command) -> Proposal {
    Proposal {
        format: COMMAND_FORMAT,
        id,
        command,
    }
}

/// A normal entry's proposal, or why this controller cannot apply it. The
/// entry is parsed once; only one that does not decode is read again for
/// its format, to say why.
fn decode_proposal(data: &[u8]) -> Result<Proposal, String> {
    let newer = |format: u32| {
        format!(
            "it was written by a newer drover (command format {format}; this controller \
             applies up to {COMMAND_FORMAT})"
        )
    };
    match serde_json::from_slice::<Proposal>(data) {
        Ok(p) if p.format > COMMAND_FORMAT => Err(newer(p.format)),
        Ok(p) => Ok(p),
        Err(e) => {
            let format = serde_json::from_slice::<Envelope>(data)
                .map_err(|e| format!("it is not a drover command ({e})"))?
                .format;
            if format > COMMAND_FORMAT {
                Err(newer(format))
            } else {
                Err(format!("its command cannot be decoded ({e})"))
            }
        }
    }
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

struct PendingWrite {
    id: u64,
    reply: WriteReply,
    deadline: Instant,
}

struct RelayedWrite {
    /// The leader it was relayed to.
    to: u64,
    reply: WriteReply,
    deadline: Instant,
    /// The entry's data and its proposal, until the entry is applied: the
    /// proposal is taken for the apply if the applied entry's data is this.
    sent: Option<(Vec<u8>, Proposal)>,
}

/// Remove and return, in key order, the values of `map` that `gone` picks.
fn take_where<V>(map: &mut BTreeMap<u64, V>, gone: impl Fn(u64, &V) -> bool) -> Vec<V> {
    let keys: Vec<u64> = map
        .iter()
        .filter(|(k, v)| gone(**k, v))
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter().filter_map(|k| map.remove(&k)).collect()
}

/// Writes a follower relays at once; beyond, it answers `Busy`. A relayed
/// write the leader drops (its uncommitted log over `max_uncommitted_size`,
/// a leadership transfer) is only noticed at its deadline, so this bounds
/// what can wait that long.
const MAX_RELAYED: usize = 1024;

struct PendingRead {
    reply: ReadReply,
    deadline: Instant,
}

/// The first half of a Ready's handling is done (entries and hard state
/// written, not yet flushed): flush the disk if `must_flush`, then hand it
/// to [`Core::after_flush`].
pub struct Unflushed {
    ready: Ready,
    pub must_flush: bool,
}

/// A snapshot to encode and save off the driver's loop: [`SnapshotJob::run`]
/// then [`Core::snapshot_saved`] with its index.
pub struct SnapshotJob<S> {
    pub index: u64,
    state: Arc<State>,
    meta: SnapshotMetadata,
    storage: S,
}

impl<S: LogStore> SnapshotJob<S> {
    /// Encode the state into the storage and save it. `Ok` also when a
    /// newer snapshot was saved meanwhile: either way the log behind `index`
    /// may go.
    pub fn run(self) -> anyhow::Result<u64> {
        let state = &self.state;
        self.storage.save_snapshot(&self.meta, |out| {
            state.encode_to(out).map_err(std::io::Error::other)
        })?;
        Ok(self.index)
    }
}

pub struct Core<S: LogStore> {
    cfg: NodeConfig,
    raw: RawNode<S>,
    store: Store,
    transport: Arc<dyn Transport>,
    /// Proposal ids, ReadIndex contexts, election timeouts.
    rng: Box<dyn RngCore + Send>,
    /// raft's randomized election timeout range, in ticks: `[min, max)`.
    election_range: (usize, usize),
    /// The term, role and randomized election timeout when this core last
    /// drew one; raft-rs drawing another (from its thread RNG) is noticed
    /// and replaced.
    election_seen: (u64, StateRole, usize),
    /// The applied index of the newest snapshot saved or being saved.
    snapshot_at: u64,
    /// Bytes of the entries applied since `snapshot_at`.
    applied_bytes: u64,
    /// The index and size of each of the last `trailing_entries` entries
    /// applied, oldest first: compaction keeps no more than
    /// `trailing_bytes` of them.
    recent: VecDeque<(u64, u64)>,
    leadership: watch::Sender<Leadership>,
    applied: watch::Sender<u64>,
    /// Set when a committed entry could not be applied: why. Nothing after
    /// it is applied until this controller is upgraded and restarted.
    stalled: Option<Stall>,
    /// Proposals waiting for their log index to apply, by index.
    writes: BTreeMap<u64, PendingWrite>,
    /// Commands this member appended as the leader (its own, and relayed
    /// ones it checked), by log index: applied without decoding the entry.
    known: BTreeMap<u64, Known>,
    /// Writes proposed while following, which raft carried to the leader
    /// (`MsgPropose`), by proposal id: answered when this member applies the
    /// entry holding their id, failed as unconfirmed when the leader they
    /// went to is no longer the leader, or at their deadline.
    relayed: BTreeMap<u64, RelayedWrite>,
    /// Reads asked for since the last ReadIndex round: they share the next.
    read_batch: Vec<PendingRead>,
    /// ReadIndex rounds waiting for the leader's answer, by request context:
    /// every read that arrived together shares one round.
    reads: BTreeMap<Vec<u8>, Vec<PendingRead>>,
    /// Reads whose index is known, waiting for apply to catch up (which may
    /// never happen if the leader that answered died), by index.
    ready_reads: Vec<(u64, PendingRead)>,
}

impl<S: LogStore> Core<S> {
    /// Open the core over an already opened storage: `store` is set to the
    /// saved snapshot's state, and raft re-applies the log after it. `storage`
    /// must be initialised (bootstrapped or joined) by the caller; a joining
    /// member with an empty `ConfState` waits for the leader's snapshot.
    pub fn new(
        cfg: NodeConfig,
        storage: S,
        store: Store,
        transport: Arc<dyn Transport>,
        rng: Box<dyn RngCore + Send>,
    ) -> anyhow::Result<Core<S>> {
        let state = load_state(&storage)?;
        let (applied, _) = state.applied();
        store.replace(state);
        // Entries can be applied before the hard state carrying their commit
        // index reaches disk (raft-rs#392), and a snapshot saved: raft must
        // not start with its commit index below the applied one.
        storage.repair_commit(applied)?;
        let logger = slog::Logger::root(slog::Drain::fuse(slog_stdlog::StdLog), slog::o!());
        let raft_cfg = cfg.raft_config(applied);
        let election_range = (raft_cfg.min_election_tick(), raft_cfg.max_election_tick());
        let raw = RawNode::new(&raft_cfg, storage, &logger)?;
        let (leadership, _) = watch::channel(Leadership::default());
        let (applied_tx, _) = watch::channel(applied);
        let mut core = Core {
            cfg,
            raw,
            store,
            transport,
            rng,
            election_range,
            election_seen: (0, StateRole::Follower, 0),
            snapshot_at: applied,
            applied_bytes: 0,
            recent: VecDeque::new(),
            leadership,
            applied: applied_tx,
            stalled: None,
            writes: BTreeMap::new(),
            known: BTreeMap::new(),
            relayed: BTreeMap::new(),
            read_batch: Vec::new(),
            reads: BTreeMap::new(),
            ready_reads: Vec::new(),
        };
        core.redraw_election_timeout();
        Ok(core)
    }

    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The log storage (the driver flushes it).
    pub fn storage(&self) -> &S {
        self.raw.store()
    }

    /// Leadership changes, to wait on.
    pub fn leadership_watch(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// The applied index, updated after every batch of applied entries.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The leadership view last published.
    pub fn leadership(&self) -> Leadership {
        *self.leadership.borrow()
    }

    /// The state machine as of now.
    pub fn state(&self) -> Arc<State> {
        self.store.snapshot()
    }

    /// raft-rs draws a new randomized election timeout from its thread RNG
    /// whenever it resets (a new term, a role change). Replace it with one
    /// from this core's RNG, from the same range: the same distribution, and
    /// a simulated run is a function of its seed.
    ///
    /// A reset is recognised by the term or the role changing (every reset
    /// but one comes with either) or by the timeout changing: whether the
    /// core draws must not depend on the thread RNG's value, or the core's
    /// RNG would drift between two runs of one seed. (The one reset with
    /// neither, a follower stepping back at a campaign while a membership
    /// change is pending, is noticed only if the thread RNG drew another
    /// value: such a run may not replay exactly.)
    fn redraw_election_timeout(&mut self) {
        let seen = (
            self.raw.raft.term,
            self.raw.raft.state,
            self.raw.raft.randomized_election_timeout(),
        );
        let (term, role, drawn) = self.election_seen;
        if seen.0 == term && seen.1 == role && seen.2 == drawn {
            return;
        }
        let (min, max) = self.election_range;
        let drawn = self.rng.gen_range(min..max);
        self.raw.raft.set_randomized_election_timeout(drawn);
        self.election_seen = (seen.0, seen.1, drawn);
    }

    /// One raft tick, then fail the requests whose deadline passed.
    pub fn tick(&mut self, now: Instant) {
        self.raw.tick();
        self.redraw_election_timeout();
        self.expire(now);
    }

    /// Peers' raft messages.
    pub fn step(&mut self, messages: Vec<Message>) {
        self.step_inbound(Inbound {
            messages,
            relayed: Vec::new(),
        });
    }

    /// Peers' raft messages, with the proposals of the relayed writes among
    /// them as the API checked them: a leader that appends those entries
    /// keeps their commands for the apply.
    pub fn step_inbound(&mut self, inbound: Inbound) {
        let mut relayed = inbound.relayed.into_iter();
        for m in inbound.messages {
            let count = m.entries.len();
            let checked: Vec<Checked> = if m.get_msg_type() == MessageType::MsgPropose {
                relayed.by_ref().take(count).collect()
            } else {
                Vec::new()
            };
            let before = self.raw.raft.raft_log.last_index();
            if let Err(e) = self.raw.step(m) {
                debug!(error = %e, "raft refused a peer message");
                continue;
            }
            // A leader appends a proposal's entries after its last one, in
            // its term, or drops them all.
            let appended = self.raw.raft.state == StateRole::Leader
                && checked.len() == count
                && self.raw.raft.raft_log.last_index() == before + count as u64;
            if appended {
                let term = self.raw.raft.term;
                for (index, Checked(proposal)) in (before + 1..).zip(checked) {
                    self.known.insert(index, Known { term, proposal });
                }
            }
        }
        self.redraw_election_timeout();
    }

    /// A linearizable read barrier: `reply` is answered once this member
    /// has applied everything committed when the read was issued (raft
    /// ReadIndex, one round for every read asked for before the next
    /// [`Core::persist`]).
    pub fn read(&mut self, reply: ReadReply, now: Instant) {
        self.read_batch.push(PendingRead {
            reply,
            deadline: now + self.cfg.read_timeout,
        });
    }

    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// One ReadIndex round for every read that arrived since the last one.
    fn start_read_round(&mut self) {
        if self.read_batch.is_empty() {
            return;
        }
        let ctx = self.rng.next_u64().to_be_bytes().to_vec();
        self.raw.read_index(ctx.clone());
        self.reads.insert(ctx, std::mem::take(&mut self.read_batch));
    }

    /// Propose a write. On a follower that knows its leader, a command
    /// goes to the leader inside raft (`MsgPropose`, batched with the rest of
    /// raft's traffic) and is answered when this member applies it; anything
    /// else fails at once with `NotLeader` (through `reply`), and the API
    /// layer forwards it.
    pub fn propose(&mut self, write: Write, reply: WriteReply, now: Instant) {
        if self.raw.raft.state != StateRole::Leader {
            let leader = self.raw.raft.leader_id;
            match write {
                Write::Command(command)
                    if leader != 0 && self.raw.raft.state == StateRole::Follower =>
                {
                    self.relay(command, leader, reply, now);
                }
                _ => {
                    let _ = reply.send(Err(NodeError::NotLeader {
                        leader: (leader != 0).then_some(leader),
                    }));
                }
            }
            return;
        }
        if matches!(write, Write::RemoveMember { id } if id == self.cfg.id) {
            let answer = self
                .hand_over_leadership()
                .map_or_else(NodeError::Refused, NodeError::Dropped);
            let _ = reply.send(Err(answer));
            return;
        }
        let id = self.rng.next_u64();
        let mut kept = None;
        let result = match write {
            Write::Command(command) => {
                let proposal = proposal(id, command);
                encode_proposal(&proposal).and_then(|data| {
                    kept = Some(proposal);
                    self.raw.propose(vec![], data).map_err(proposal_error)
                })
            }
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
        if let Some(proposal) = kept {
            let term = self.raw.raft.term;
            self.known.insert(index, Known { term, proposal });
        }
        self.writes.insert(
            index,
            PendingWrite {
                id,
                reply,
                deadline: now + self.cfg.write_timeout,
            },
        );
    }

    /// A follower's command, to the leader through raft. The entry carries
    /// the proposal's id, which is how this member knows it when it applies
    /// it (a follower never learns the entry's index).
    fn relay(&mut self, command: Command, leader: u64, reply: WriteReply, now: Instant) {
        if self.relayed.len() >= MAX_RELAYED {
            let _ = reply.send(Err(NodeError::Busy));
            return;
        }
        let id = self.rng.next_u64();
        let proposal = proposal(id, command);
        let data = match encode_proposal(&proposal) {
            Ok(data) => data,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if self.raw.propose(vec![], data.clone()).is_err() {
            // raft-rs refuses when it cannot forward: let the API layer.
            let _ = reply.send(Err(NodeError::NotLeader {
                leader: Some(leader),
            }));
            return;
        }
        self.relayed.insert(
            id,
            RelayedWrite {
                to: leader,
                reply,
                deadline: now + self.cfg.write_timeout,
                sent: Some((data, proposal)),
            },
        );
    }

    /// Relayed writes sent to a member that is no longer the leader: they
    /// may or may not commit. Called once a Ready's committed entries are
    /// applied, so a write committed in the same Ready is answered first.
    fn fail_relayed_elsewhere(&mut self) {
        let leader = self.raw.raft.leader_id;
        let following = self.raw.raft.state == StateRole::Follower;
        for r in take_where(&mut self.relayed, |_, r| r.to != leader || !following) {
            let _ = r.reply.send(Err(NodeError::Unconfirmed(Duration::ZERO)));
        }
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

    /// What this member knows about itself (the state hash is left empty:
    /// computing it encodes the whole state).
    pub fn status(&self) -> NodeStatus {
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
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.write_timeout;
        for p in take_where(&mut self.writes, |_, p| p.deadline <= now) {
            let _ = p.reply.send(Err(NodeError::Unconfirmed(timeout)));
        }
        for r in take_where(&mut self.relayed, |_, r| r.deadline <= now) {
            let _ = r.reply.send(Err(NodeError::Unconfirmed(timeout)));
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

    /// The first half of the Ready handling: leader messages out, a
    /// snapshot installed, committed entries applied, new entries and the
    /// hard state written (not flushed). `None` when raft has nothing to do.
    /// Starts a ReadIndex round first for the reads asked for since the last.
    pub fn persist(&mut self) -> anyhow::Result<Option<Unflushed>> {
        self.redraw_election_timeout();
        self.start_read_round();
        if !self.raw.has_ready() {
            return Ok(None);
        }
        let mut rd = self.raw.ready();
        let moved = rd.ss().is_some();
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
        if moved {
            self.fail_relayed_elsewhere();
        }
        for rs in rd.take_read_states() {
            self.read_state(rs);
        }
        if !rd.entries().is_empty() {
            self.raw.store().append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            self.raw.store().set_hard_state(hs)?;
        }
        Ok(Some(Unflushed {
            ready: rd,
            must_flush,
        }))
    }

    /// The second half, once the disk is flushed (when it had to be): the
    /// persisted messages out (votes and append responses only now), advance,
    /// the commit index, the rest applied, reads answered. Returns a snapshot
    /// to save when one is due.
    pub fn after_flush(&mut self, unflushed: Unflushed) -> anyhow::Result<Option<SnapshotJob<S>>> {
        let mut rd = unflushed.ready;
        self.transport.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply_committed(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.redraw_election_timeout();
        let applied = self.applied_index();
        self.applied.send_if_modified(|a| {
            let now = applied;
            let changed = *a != now;
            *a = now;
            changed
        });
        self.serve_ready_reads();
        Ok(self.maybe_snapshot())
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
            for (_, p) in std::mem::take(&mut self.writes) {
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
        self.applied_bytes = 0;
        self.recent.clear();
        crate::metrics::get().snapshot("installed", snap.get_data().len());
        for m in self.store.members() {
            self.transport.set_peer(m.id, m.address);
        }
        // Any proposal still waiting at or below the snapshot lost track of
        // its entry: whether it committed is unknown.
        for p in take_where(&mut self.writes, |index, _| index <= meta.index) {
            let _ = p.reply.send(Err(NodeError::Unconfirmed(Duration::ZERO)));
        }
        self.known.clear();
        // So may every relayed write (they are known by id, not index).
        for (_, r) in std::mem::take(&mut self.relayed) {
            let _ = r.reply.send(Err(NodeError::Unconfirmed(Duration::ZERO)));
        }
        Ok(())
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        for entry in entries {
            if self.stalled.is_some() {
                return Ok(());
            }
            self.applied_bytes += entry.data.len() as u64;
            self.recent
                .push_back((entry.index, entry.data.len() as u64));
            if self.recent.len() as u64 > self.cfg.trailing_entries {
                self.recent.pop_front();
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
        match self
            .take_known(entry)
            .map_or_else(|| decode_proposal(&entry.data), Ok)
        {
            Ok(p) => {
                let result = self
                    .store
                    .apply_entry(entry.index, entry.term, p.format, &p.command);
                self.finish(entry.index, Some(p.id), result);
            }
            Err(why) => self.stall(entry.index, why),
        }
        Ok(())
    }

    /// The proposal of `entry` if this member kept it (it proposed or
    /// checked the entry), forgetting those of the entries before it: they
    /// were applied or replaced.
    fn take_known(&mut self, entry: &Entry) -> Option<Proposal> {
        while let Some(first) = self.known.first_entry() {
            if *first.key() >= entry.index {
                break;
            }
            first.remove();
        }
        let proposal = match self.known.remove(&entry.index) {
            Some(known) if known.term == entry.term => Some(known.proposal),
            _ => self.take_relayed(entry),
        };
        #[cfg(debug_assertions)]
        if let Some(kept) = &proposal {
            let decoded = decode_proposal(&entry.data);
            let same = decoded.as_ref().is_ok_and(|d| {
                d.format == kept.format && d.id == kept.id && d.command == kept.command
            });
            assert!(
                same,
                "the command kept for entry {} is not its entry's: {:?} against {:?}",
                entry.index,
                kept.command,
                decoded.map(|d| d.command)
            );
        }
        proposal
    }

    /// The proposal of `entry` if this member relayed it as a follower.
    fn take_relayed(&mut self, entry: &Entry) -> Option<Proposal> {
        if self.relayed.is_empty() {
            return None;
        }
        let write = self.relayed.get_mut(&written_id(&entry.data)?)?;
        match write.sent.take() {
            Some((data, proposal)) if data[..] == entry.data[..] => Some(proposal),
            other => {
                write.sent = other;
                None
            }
        }
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
        if let Some(r) = id.and_then(|id| self.relayed.remove(&id)) {
            // This member relayed it as a follower. A write it proposed as a
            // leader at this index lost the index to it.
            if let Some(p) = self.writes.remove(&index) {
                let _ = p
                    .reply
                    .send(Err(NodeError::Dropped("leadership changed".into())));
            }
            let _ = r.reply.send(answer);
            return;
        }
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

    /// Once `snapshot_interval` entries, or `snapshot_log_bytes` of them, were
    /// applied since the last snapshot (or a follower needs a newer one), a
    /// snapshot job: the state is cloned
    /// here (free); the driver encodes and saves it off its loop, so the node
    /// goes on meanwhile, and reports back with [`Core::snapshot_saved`].
    fn maybe_snapshot(&mut self) -> Option<SnapshotJob<S>> {
        let state = self.store.snapshot();
        let (index, term) = state.applied();
        let due = index >= self.snapshot_at + self.cfg.snapshot_interval
            || (index > self.snapshot_at && self.applied_bytes >= self.cfg.snapshot_log_bytes);
        let wanted = index > self.snapshot_at && self.raw.store().take_snapshot_wanted();
        if !due && !wanted {
            return None;
        }
        self.snapshot_at = index;
        self.applied_bytes = 0;
        let meta = SnapshotMetadata {
            index,
            term,
            conf_state: Some(self.raw.store().conf_state()).into(),
            ..Default::default()
        };
        Some(SnapshotJob {
            index,
            state,
            meta,
            storage: self.raw.store().clone(),
        })
    }

    /// A snapshot at `index` is saved: drop the log behind it, keeping
    /// `trailing_entries` (no more than `trailing_bytes` of them) for slow
    /// followers (storage never compacts past the saved snapshot).
    pub fn snapshot_saved(&mut self, index: u64) {
        let compact_to = compact_below(
            &self.recent,
            index,
            self.cfg.trailing_entries,
            self.cfg.trailing_bytes,
        );
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

/// The first log index kept when compacting behind a snapshot at `index`:
/// at most `max_entries` entries before it, and only as many of those as fit
/// in `max_bytes` (the entry at `index` itself is always kept). `recent`
/// holds the index and size of the entries applied last, oldest first; an
/// entry older than it is bounded by `max_entries` alone.
///
/// Why bytes too: at 100,000 replicas an entry is tens of kilobytes, and
/// 1,000 trailing entries kept 40 MB of log in memory on every member.
fn compact_below(
    recent: &VecDeque<(u64, u64)>,
    index: u64,
    max_entries: u64,
    max_bytes: u64,
) -> u64 {
    let by_count = index.saturating_sub(max_entries);
    let mut bytes = 0u64;
    for &(i, size) in recent.iter().rev().skip_while(|(i, _)| *i > index) {
        if i < by_count {
            break;
        }
        bytes = bytes.saturating_add(size);
        if bytes > max_bytes {
            return (i + 1).min(index);
        }
    }
    by_count
}

/// The state as the saved snapshot holds it (empty for a member that has
/// none yet: it joins and gets the leader's).
pub fn load_state<S: LogStore>(storage: &S) -> anyhow::Result<State> {
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
    fn a_written_entry_names_its_proposal_id_in_its_head() {
        let scale = Command::Scale {
            target: crate::store::ObjectRef {
                namespace: "default".into(),
                name: "web".into(),
            },
            replicas: 2,
            now_unix_ms: 1,
        };
        let data = encode_proposal(&proposal(u64::MAX, scale)).unwrap_or_default();
        assert_eq!(written_id(&data), Some(u64::MAX));
        // Entries written before formats were numbered, or not JSON at all,
        // have no such head: decoded as any other entry.
        assert_eq!(written_id(br#"{"id":7,"command":{}}"#), None);
        assert_eq!(written_id(br#"{"format":11,"id":"7"}"#), None);
        assert_eq!(
            written_id(br#"{"format":11,"id":99999999999999999999}"#),
            None
        );
        assert_eq!(written_id(b"\x00garbage"), None);
    }

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
    fn compaction_keeps_trailing_entries_up_to_their_bytes() {
        // Entries 1..=100 of 10 bytes each, the last 50 remembered.
        let recent: VecDeque<(u64, u64)> = (51..=100).map(|i| (i, 10)).collect();
        // The count bounds when the bytes allow it: 20 behind 100.
        assert_eq!(compact_below(&recent, 100, 20, 1_000), 80);
        // 95 bytes hold 9 entries: 92..=100 kept.
        assert_eq!(compact_below(&recent, 100, 20, 95), 92);
        // Entries applied after the snapshot's index do not count.
        assert_eq!(compact_below(&recent, 90, 20, 95), 82);
        // Entries older than those remembered: only the count bounds them.
        assert_eq!(compact_below(&recent, 100, 80, 10_000), 20);
        // An entry larger than the bound: the snapshot's own entry stays.
        let big: VecDeque<(u64, u64)> = [(7, 5), (8, 1_000)].into_iter().collect();
        assert_eq!(compact_below(&big, 8, 5, 100), 8);
        // Nothing remembered (just restarted) or no trailing entries wanted.
        assert_eq!(compact_below(&VecDeque::new(), 100, 20, 0), 80);
        assert_eq!(compact_below(&recent, 100, 0, 1_000), 100);
        assert_eq!(compact_below(&recent, 5, 20, 1_000), 0);
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
