//! The raft log and raft metadata on sled: raft-rs's [`Storage`] for this
//! member's `RawNode`.
//!
//! A controller keeps one sled [`Db`]: the state machine's trees (owned by the
//! store) and two trees owned here. Only the task that owns the `RawNode` writes
//! them; every method takes `&self` because sled does.
//!
//! ```text
//!  tree "raft_log"    key: index, u64 big-endian       value: eraftpb::Entry
//!
//!      ≤ truncated.index │ first_index │ first_index+1 │ ··· │ last_index │
//!        (compacted)     └────────────── contiguous, no holes ────────────┘
//!
//!      first_index = truncated.index + 1;  an empty log has last_index = truncated.index
//!
//!  tree "raft_meta"   "hard_state" → eraftpb::HardState         term, vote, commit
//!                     "conf_state" → eraftpb::ConfState         as last applied
//!                     "truncated"  → index ‖ term, u64 BE each  last entry dropped by
//!                                                               compaction or a snapshot
//!                     "snapshot"   → eraftpb::SnapshotMetadata  the snapshot below
//!
//!  file snapshots/state-INDEX.snap  the state machine encoded at the snapshot's
//!                                   index (INDEX zero-padded to 20 digits)
//! ```
//!
//! Invariants, on disk and in the in-memory copy alike:
//!
//! - the log holds exactly the entries `[first_index, last_index]`, and
//!   `first_index == truncated.index + 1`;
//! - once anything was truncated, `hard_state.commit >= truncated.index`: only
//!   applied (hence committed) entries are compacted, and a snapshot is committed;
//! - `truncated.index <= snapshot.index`: the snapshot and the log after it
//!   hold the whole state, so the log is never compacted past the snapshot;
//! - an update that touches several trees (compaction, saving or installing a
//!   snapshot) is one sled transaction, so a crash leaves the old layout or the
//!   new one: a snapshot from the leader lands with the log truncated to it,
//!   or not at all;
//! - the snapshot's data is a file of its own, out of sled (which would keep
//!   a copy in memory). It is written whole (a temporary name, fsync, a link)
//!   before the transaction that names its index, and the file it replaces is
//!   removed only once that transaction is on disk; so whichever metadata a
//!   crash leaves, its file is there. Files no metadata names are removed at
//!   open;
//! - the cached state changes only after its sled write succeeded, under the write
//!   lock, so readers never see a state that is not on disk (or in sled's buffers).
//!
//! Writes reach sled's buffers at once and the disk at the next [`SledStorage::flush`]
//! (or sled's background flush). The node must await `flush` before it sends
//! persisted messages or calls `advance`.
//!
//! The state machine lives in memory; its snapshot is its only copy on disk.
//! The node saves a new one every so many entries ([`SledStorage::save_snapshot`],
//! encoded off its task straight into the file, never whole in memory),
//! [`Storage::snapshot`] reads the saved one back for a follower that needs
//! it, and a restart decodes it and re-applies the log after it, starting
//! from the snapshot's conf state.

use std::cmp;
use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, NO_LIMIT};
use sled::transaction::{TransactionError, TransactionResult, Transactional};
use sled::{Batch, Db, Tree};

use super::terms::Terms;

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
/// Where drovers before the snapshot files kept the snapshot's data; moved
/// to its file at open.
const OLD_SNAPSHOT_TREE: &str = "raft_snapshot";
const OLD_SNAPSHOT_DATA_KEY: &str = "data";

const HARD_STATE_KEY: &str = "hard_state";
const CONF_STATE_KEY: &str = "conf_state";
const TRUNCATED_KEY: &str = "truncated";
const SNAPSHOT_KEY: &str = "snapshot";

/// The position of the snapshot a fresh cluster starts from (see
/// [`SledStorage::bootstrap`]).
const BOOTSTRAP_INDEX: u64 = 1;
const BOOTSTRAP_TERM: u64 = 1;

/// What went wrong in the raft storage.
///
/// Every variant is fatal for this member's raft: raft-rs cannot go on after a
/// storage failure. `AlreadyInitialized` and `InvalidVoters` are refusals of a
/// bootstrap request; the others mean a broken disk, corrupt data, or a caller that
/// broke the raft-rs contract.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled failed to read or write (I/O error, full disk, sled bug).
    #[error("raft storage: sled failed: {0}; check the disk under the data directory")]
    Sled(#[from] sled::Error),

    /// Persisted raft data does not decode, or breaks the layout's invariants.
    #[error(
        "raft storage is corrupt at {key}: {detail}; this member cannot trust its log: \
         remove it from the cluster, delete its data directory and add it again"
    )]
    Corrupt {
        /// The tree and key, e.g. `raft_log/42` or `raft_meta/hard_state`.
        key: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A raft message failed to encode.
    #[error("raft storage: cannot encode the {what}: {source}")]
    Encode {
        /// Which message.
        what: &'static str,
        /// The protobuf error.
        source: protobuf::ProtobufError,
    },

    /// `bootstrap` on a member that already holds raft state.
    #[error(
        "raft storage already holds raft state (term {term}, last index {last_index}, \
         conf state set: {initialized}); bootstrap only a fresh data directory"
    )]
    AlreadyInitialized {
        /// The stored term.
        term: u64,
        /// The last index of the stored log.
        last_index: u64,
        /// Whether a conf state is stored.
        initialized: bool,
    },

    /// `bootstrap` without voters, or with the reserved id 0.
    #[error("cannot bootstrap with voters {voters:?}: give at least one voter, none with id 0")]
    InvalidVoters {
        /// The voters asked for.
        voters: Vec<u64>,
    },

    /// `append` of entries that overlap the compacted part of the log.
    #[error("cannot append entry {index}: entries before {first_index} are compacted")]
    AppendCompacted {
        /// Index of the first entry to append.
        index: u64,
        /// The log's first index.
        first_index: u64,
    },

    /// `append` that would leave a hole in the log.
    #[error("the raft log must stay contiguous: expected entry {expected}, got entry {found}")]
    LogGap {
        /// The index that had to come next.
        expected: u64,
        /// The index that came.
        found: u64,
    },

    /// `compact` past the end of the log.
    #[error("cannot compact the raft log up to {compact_index}: it ends at {last_index}")]
    CompactBeyondLog {
        /// The index asked for.
        compact_index: u64,
        /// The log's last index.
        last_index: u64,
    },

    /// `entries` past the end of the log.
    #[error("raft entries [{low}, {high}) requested but the log ends at {last_index}")]
    EntriesOutOfRange {
        /// Start of the range.
        low: u64,
        /// End of the range (exclusive).
        high: u64,
        /// The log's last index.
        last_index: u64,
    },

    /// `apply_snapshot` of a snapshot older than the log.
    #[error("snapshot at index {index} is older than the raft log (first index {first_index})")]
    SnapshotOutOfDate {
        /// The snapshot's index.
        index: u64,
        /// The log's first index.
        first_index: u64,
    },

    /// The state machine's applied index is outside the log, so its term is unknown.
    #[error(
        "cannot build a snapshot: the state machine is at index {applied}, outside the raft \
         log [{truncated_index}, {last_index}]"
    )]
    SnapshotInconsistent {
        /// The applied index the store reported.
        applied: u64,
        /// The index of the last truncated entry.
        truncated_index: u64,
        /// The log's last index.
        last_index: u64,
    },

    /// The state machine failed to serialise itself for a snapshot.
    #[error("cannot build a snapshot: the state machine failed: {0}")]
    StateMachine(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A snapshot file could not be written, read or removed.
    #[error("raft storage: cannot {what} {}: {source}; check the disk under the data directory", path.display())]
    SnapshotFile {
        /// What was being done, e.g. "write the snapshot file".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// raft-rs sees our errors as `Error::Store(StorageError::Other(..))`, which it
/// treats as fatal; the contract errors it acts upon (`Compacted`, `Unavailable`,
/// `SnapshotTemporarilyUnavailable`) are returned as raft's own variants.
impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}

/// An entry's place in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    index: u64,
    term: u64,
}

/// The in-memory copy of everything in "raft_meta" that raft reads often, plus
/// the log's last index.
#[derive(Debug, Clone, Default)]
struct LogState {
    hard_state: HardState,
    conf_state: ConfState,
    /// The last entry dropped from the log; (0, 0) for a log never truncated.
    truncated: Position,
    /// The last entry in the log, or `truncated.index` when the log is empty.
    last_index: u64,
    /// The terms of the entries written since the open (or the last
    /// snapshot install): `term` answers from here rather than decoding
    /// the entry.
    terms: Terms,
}

impl LogState {
    fn first_index(&self) -> u64 {
        self.truncated.index + 1
    }

    fn is_initialized(&self) -> bool {
        self.conf_state != ConfState::default()
    }
}

/// Whether a saved snapshot can be sent to member `to`, which raft asks for
/// at `request_index`: not one older than that (raft asks again, and a newer
/// one is saved), and not one whose conf state lacks `to` (raft-rs restores
/// only a snapshot whose conf state holds the member, so a member added after
/// it would refuse it).
pub fn snapshot_serves(meta: &SnapshotMetadata, request_index: u64, to: u64) -> bool {
    let cs = meta.get_conf_state();
    let knows = [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ]
    .iter()
    .any(|ids| ids.contains(&to));
    meta.index >= request_index && knows
}

/// raft-rs's [`Storage`] on sled. Cloning is cheap; clones share the cached state.
#[derive(Clone)]
pub struct SledStorage {
    db: Db,
    log: Tree,
    meta: Tree,
    /// The snapshot files' directory.
    snapshots: Arc<Path>,
    state: Arc<RwLock<LogState>>,
    /// Set when a follower needs a snapshot the saved one cannot be (it
    /// predates the follower's membership): the node saves a new one soon.
    wanted: Arc<AtomicBool>,
}

impl fmt::Debug for SledStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.read();
        f.debug_struct("SledStorage")
            .field("first_index", &state.first_index())
            .field("last_index", &state.last_index)
            .field("hard_state", &state.hard_state)
            .field("conf_state", &state.conf_state)
            .finish_non_exhaustive()
    }
}

impl SledStorage {
    /// Opens the raft trees of `db` (creating them when absent), with the
    /// snapshot files in the directory `snapshots` (created when absent), and
    /// loads the metadata. Fails with `Corrupt` when the stored data is
    /// inconsistent.
    ///
    /// The conf state raft starts from is the snapshot's: the node re-applies
    /// the log after the snapshot, conf changes included, in their order.
    pub fn open(db: &Db, snapshots: &Path) -> Result<Self, StorageError> {
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        std::fs::create_dir_all(snapshots).map_err(|source| StorageError::SnapshotFile {
            what: "create the snapshot directory",
            path: snapshots.to_path_buf(),
            source,
        })?;

        let hard_state: HardState = read_meta(&meta, HARD_STATE_KEY)?.unwrap_or_default();
        let snapshot_meta: Option<SnapshotMetadata> = read_meta(&meta, SNAPSHOT_KEY)?;
        let conf_state: ConfState = match &snapshot_meta {
            Some(m) => m.get_conf_state().clone(),
            None => read_meta(&meta, CONF_STATE_KEY)?.unwrap_or_default(),
        };
        let current = snapshot_meta.as_ref().map(|m| m.index);
        if let Some(index) = current {
            move_old_snapshot(db, snapshots, index)?;
            if !snapshot_file(snapshots, index).exists() {
                return Err(corrupt(
                    snapshot_file(snapshots, index).display().to_string(),
                    "the snapshot's data is missing".into(),
                ));
            }
        }
        // Nothing writes yet: every file but the current one is left over.
        remove_snapshot_files(snapshots, |index, _| Some(index) != current)?;
        let truncated = match meta.get(TRUNCATED_KEY)? {
            Some(bytes) => decode_position(&bytes)?,
            None => Position::default(),
        };

        // Only the ends are checked here; a hole inside the log shows up as
        // `Corrupt` when raft reads it.
        let last_index = match (log.first()?, log.last()?) {
            (Some((first, _)), Some((last, _))) => {
                let (first, last) = (decode_log_key(&first)?, decode_log_key(&last)?);
                if first != truncated.index + 1 {
                    return Err(corrupt(
                        log_key_name(first),
                        format!(
                            "the log starts at {first}, but the truncated index {} says {}",
                            truncated.index,
                            truncated.index + 1
                        ),
                    ));
                }
                last
            }
            _ => truncated.index,
        };

        let state = LogState {
            hard_state,
            conf_state,
            truncated,
            last_index,
            terms: Terms::starting_at(last_index + 1),
        };
        if state.hard_state != HardState::default()
            && (state.hard_state.commit < truncated.index || state.hard_state.commit > last_index)
        {
            return Err(corrupt(
                meta_key_name(HARD_STATE_KEY),
                format!(
                    "commit {} is outside the log [{}, {}]",
                    state.hard_state.commit, truncated.index, last_index
                ),
            ));
        }
        if state.is_initialized() && last_index == 0 {
            return Err(corrupt(
                meta_key_name(CONF_STATE_KEY),
                "a conf state is stored but the log is empty and was never truncated".into(),
            ));
        }

        tracing::debug!(
            first_index = state.first_index(),
            last_index,
            term = state.hard_state.term,
            commit = state.hard_state.commit,
            "opened raft storage"
        );
        Ok(Self {
            db: db.clone(),
            log,
            meta,
            snapshots: snapshots.into(),
            state: Arc::new(RwLock::new(state)),
            wanted: Arc::new(AtomicBool::new(false)),
        })
    }

    /// True once a ConfState has been stored (bootstrap done or a snapshot
    /// installed).
    pub fn is_initialized(&self) -> bool {
        self.read().is_initialized()
    }

    /// Fresh cluster: writes a snapshot at index 1, term 1 with the given voters,
    /// so that every initial voter starts identical and a member added later must
    /// catch up by snapshot (its first index is 2, and index 1 exists only as a
    /// snapshot). Refuses a member that already holds raft state.
    ///
    /// `data` is the state machine at index 1 (every initial voter must use the
    /// same `data`).
    pub fn bootstrap(&self, voters: &[u64], data: &[u8]) -> Result<(), StorageError> {
        let mut state = self.write();
        if state.is_initialized()
            || state.last_index > 0
            || state.hard_state != HardState::default()
        {
            return Err(StorageError::AlreadyInitialized {
                term: state.hard_state.term,
                last_index: state.last_index,
                initialized: state.is_initialized(),
            });
        }
        if voters.is_empty() || voters.contains(&0) {
            return Err(StorageError::InvalidVoters {
                voters: voters.to_vec(),
            });
        }

        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = BOOTSTRAP_INDEX;
        metadata.term = BOOTSTRAP_TERM;
        metadata.mut_conf_state().voters = voters.to_vec();
        self.install_snapshot(&mut state, snapshot.get_metadata(), data)?;
        tracing::info!(?voters, "bootstrapped raft storage");
        Ok(())
    }

    /// Appends entries, first removing any existing entries at or after
    /// `entries[0].index` (raft-rs#428: a follower's conflicting tail is replaced,
    /// and a shorter replacement must not leave stale entries behind it).
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let (Some(head), Some(tail)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let mut state = self.write();
        if head.index < state.first_index() {
            return Err(StorageError::AppendCompacted {
                index: head.index,
                first_index: state.first_index(),
            });
        }
        if head.index > state.last_index + 1 {
            return Err(StorageError::LogGap {
                expected: state.last_index + 1,
                found: head.index,
            });
        }

        // One entry at the end of the log (every Ready of a lightly loaded
        // member): a plain insert is as atomic as a batch, and costs one
        // buffer write at the next flush. A sled batch first seals the
        // current buffer to write its manifest, and that write goes through
        // sled's thread pool: one more hand-off and `sync_file_range` on the
        // path of every write.
        if entries.len() == 1 && tail.index > state.last_index {
            self.log
                .insert(&log_key(head.index)[..], encode(head, "raft entry")?)?;
            state.last_index = tail.index;
            state.terms.record([(head.index, head.term)]);
            return Ok(());
        }
        let mut batch = Batch::default();
        for (expected, entry) in (head.index..).zip(entries) {
            if entry.index != expected {
                return Err(StorageError::LogGap {
                    expected,
                    found: entry.index,
                });
            }
            batch.insert(&log_key(entry.index)[..], encode(entry, "raft entry")?);
        }
        // Entries in [head.index, tail.index] are overwritten by the inserts; the
        // old tail after tail.index goes.
        for index in tail.index + 1..=state.last_index {
            batch.remove(&log_key(index)[..]);
        }
        self.log.apply_batch(batch)?;
        state.last_index = tail.index;
        state
            .terms
            .record(entries.iter().map(|e| (e.index, e.term)));
        Ok(())
    }

    /// Persists the hard state.
    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        let mut state = self.write();
        self.meta
            .insert(HARD_STATE_KEY, encode(hs, "hard state")?)?;
        state.hard_state = hs.clone();
        Ok(())
    }

    /// Persists only the commit index (from `LightReady::commit_index`).
    pub fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut state = self.write();
        let mut hs = state.hard_state.clone();
        hs.commit = commit;
        self.meta
            .insert(HARD_STATE_KEY, encode(&hs, "hard state")?)?;
        state.hard_state = hs;
        Ok(())
    }

    /// Persists the conf state, as returned by `RawNode::apply_conf_change`.
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), StorageError> {
        let mut state = self.write();
        self.meta
            .insert(CONF_STATE_KEY, encode(cs, "conf state")?)?;
        state.conf_state = cs.clone();
        Ok(())
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }

    /// The persisted conf state.
    pub fn conf_state(&self) -> ConfState {
        self.read().conf_state.clone()
    }

    /// The metadata of the last snapshot installed (or written by `bootstrap`), if
    /// any.
    pub fn snapshot_metadata(&self) -> Result<Option<SnapshotMetadata>, StorageError> {
        read_meta(&self.meta, SNAPSHOT_KEY)
    }

    /// Whether a follower asked for a newer snapshot than the saved one since
    /// the last call.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::Relaxed)
    }

    /// The saved snapshot (metadata and the encoded state, read from its
    /// file), if any.
    pub fn saved_snapshot(&self) -> Result<Option<(SnapshotMetadata, Vec<u8>)>, StorageError> {
        let Some(metadata) = self.snapshot_metadata()? else {
            return Ok(None);
        };
        let data = self.read_snapshot_file(&metadata)?;
        Ok(Some((metadata, data)))
    }

    /// The data of the snapshot `metadata` names. A newer snapshot saved
    /// meanwhile may have removed that file: then the newer one's metadata
    /// is read again, and its file.
    fn read_snapshot_file(&self, metadata: &SnapshotMetadata) -> Result<Vec<u8>, StorageError> {
        let mut index = metadata.index;
        loop {
            let path = snapshot_file(&self.snapshots, index);
            match std::fs::read(&path) {
                Ok(data) => return Ok(data),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match self.snapshot_metadata()? {
                        Some(now) if now.index != index => index = now.index,
                        _ => {
                            return Err(corrupt(
                                path.display().to_string(),
                                "the snapshot's data is missing".into(),
                            ))
                        }
                    }
                }
                Err(source) => {
                    return Err(StorageError::SnapshotFile {
                        what: "read the snapshot file",
                        path,
                        source,
                    })
                }
            }
        }
    }

    /// Save a snapshot this member built of its own state at `metadata.index`
    /// (an applied index, so in the log or at its truncated end): `write`
    /// encodes the state into its file, streamed. An older one than the saved
    /// snapshot is ignored: a snapshot from the leader may have landed
    /// meanwhile. Returns whether it was saved. Safe to call from any thread.
    pub fn save_snapshot(
        &self,
        metadata: &SnapshotMetadata,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<bool, StorageError> {
        let encoded = encode(metadata, "snapshot metadata")?;
        let outdated = |saved: Option<&[u8]>, truncated: Option<&[u8]>| {
            let saved = saved.map_or(0, |bytes| {
                SnapshotMetadata::parse_from_bytes(bytes).map_or(u64::MAX, |m| m.index)
            });
            let truncated = truncated.map_or(0, |bytes| {
                decode_position(bytes).map_or(u64::MAX, |p| p.index)
            });
            metadata.index <= saved || metadata.index < truncated
        };
        if outdated(
            self.meta.get(SNAPSHOT_KEY)?.as_deref(),
            self.meta.get(TRUNCATED_KEY)?.as_deref(),
        ) {
            return Ok(false);
        }
        let bytes = write_snapshot_file(&self.snapshots, metadata.index, write)?;
        // Checked again and written in one transaction, without the log's
        // lock: the node goes on appending meanwhile, and a snapshot from the
        // leader that lands first (a newer one, with the log truncated to it)
        // wins. The file written stays until a newer snapshot's clean-up or
        // the next open.
        let result: TransactionResult<bool, Infallible> = self.meta.transaction(|meta| {
            if outdated(
                meta.get(SNAPSHOT_KEY)?.as_deref(),
                meta.get(TRUNCATED_KEY)?.as_deref(),
            ) {
                return Ok(false);
            }
            meta.insert(SNAPSHOT_KEY, encoded.as_slice())?;
            Ok(true)
        });
        let saved = result.map_err(|e| match e {
            TransactionError::Storage(e) => StorageError::Sled(e),
            TransactionError::Abort(never) => match never {},
        })?;
        if !saved {
            return Ok(false);
        }
        self.db.flush()?;
        self.remove_replaced_snapshots()?;
        tracing::info!(
            index = metadata.index,
            term = metadata.term,
            bytes,
            "saved state snapshot"
        );
        Ok(true)
    }

    /// Once a snapshot's metadata is on disk: remove the files of the older
    /// ones (not the temporary ones: another thread may be writing one).
    fn remove_replaced_snapshots(&self) -> Result<(), StorageError> {
        let current = self.snapshot_metadata()?.map_or(0, |m| m.index);
        remove_snapshot_files(&self.snapshots, |index, temporary| {
            !temporary && index < current
        })
    }

    /// Installing a snapshot received from the leader: stores its data, drops
    /// every entry up to its index, sets truncated = (index, term),
    /// `hs.commit = max(hs.commit, index)`, `hs.term = max(hs.term, term)`, and the
    /// conf state from the metadata, all in one transaction.
    ///
    /// Entries after the snapshot are kept only if the log agrees with the snapshot
    /// at its index (same term). raft-rs installs only snapshots that do not match
    /// the log (`RaftLog::restore`, raft-rs#430), and by the Log Matching property
    /// every entry after a mismatch belongs to another history, so in practice the
    /// whole log goes.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError> {
        let mut state = self.write();
        self.install_snapshot(&mut state, snap.get_metadata(), snap.get_data())?;
        tracing::info!(
            index = snap.get_metadata().index,
            term = snap.get_metadata().term,
            "installed raft snapshot"
        );
        Ok(())
    }

    fn install_snapshot(
        &self,
        state: &mut LogState,
        metadata: &SnapshotMetadata,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let snapshot = Position {
            index: metadata.index,
            term: metadata.term,
        };
        let first_index = state.first_index();
        if snapshot.index < first_index {
            return Err(StorageError::SnapshotOutOfDate {
                index: snapshot.index,
                first_index,
            });
        }

        let keep_tail = snapshot.index < state.last_index
            && self.entry_term(state, snapshot.index)? == snapshot.term;
        let last_removed = if keep_tail {
            snapshot.index
        } else {
            state.last_index
        };
        let mut log_batch = Batch::default();
        for index in first_index..=last_removed {
            log_batch.remove(&log_key(index)[..]);
        }

        let mut hard_state = state.hard_state.clone();
        hard_state.commit = cmp::max(hard_state.commit, snapshot.index);
        hard_state.term = cmp::max(hard_state.term, snapshot.term);
        let conf_state = metadata.get_conf_state().clone();

        let mut meta_batch = Batch::default();
        meta_batch.insert(HARD_STATE_KEY, encode(&hard_state, "hard state")?);
        meta_batch.insert(CONF_STATE_KEY, encode(&conf_state, "conf state")?);
        meta_batch.insert(TRUNCATED_KEY, &encode_position(snapshot)[..]);
        meta_batch.insert(SNAPSHOT_KEY, encode(metadata, "snapshot metadata")?);
        write_snapshot_file(&self.snapshots, metadata.index, |out| out.write_all(data))?;
        self.apply_to_all(&log_batch, &meta_batch)?;
        self.db.flush()?;
        self.remove_replaced_snapshots()?;

        let terms = if keep_tail {
            let mut kept = std::mem::take(&mut state.terms);
            kept.forget_before(snapshot.index + 1);
            kept
        } else {
            Terms::starting_at(snapshot.index + 1)
        };
        *state = LogState {
            hard_state,
            conf_state,
            truncated: snapshot,
            last_index: if keep_tail {
                state.last_index
            } else {
                snapshot.index
            },
            terms,
        };
        Ok(())
    }

    /// Removes the entries with index < `compact_index`, recording the index and
    /// term of the last one removed. Never past the saved snapshot (the entries
    /// after it are the only record of the state after it): `compact_index` is
    /// lowered to the snapshot's index + 1. A `compact_index` past
    /// `last_index + 1` is refused, one at or below the first index is a no-op.
    pub fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        let mut state = self.write();
        if compact_index > state.last_index + 1 {
            return Err(StorageError::CompactBeyondLog {
                compact_index,
                last_index: state.last_index,
            });
        }
        let saved = self.snapshot_metadata()?.map_or(0, |m| m.index);
        let compact_index = cmp::min(compact_index, saved + 1);
        let first_index = state.first_index();
        if compact_index <= first_index {
            return Ok(());
        }

        let last_removed = Position {
            index: compact_index - 1,
            term: self.entry_term(&state, compact_index - 1)?,
        };
        let mut log_batch = Batch::default();
        for index in first_index..compact_index {
            log_batch.remove(&log_key(index)[..]);
        }
        let mut meta_batch = Batch::default();
        meta_batch.insert(TRUNCATED_KEY, &encode_position(last_removed)[..]);
        // Compacted entries were applied, hence committed. The persisted commit can
        // lag the applied index (raft-rs#392); raise it so that a restart does not
        // find the commit index below the first index.
        let mut hard_state = state.hard_state.clone();
        if hard_state.commit < last_removed.index {
            hard_state.commit = last_removed.index;
            meta_batch.insert(HARD_STATE_KEY, encode(&hard_state, "hard state")?);
        }
        self.apply_to_all(&log_batch, &meta_batch)?;

        tracing::debug!(
            compact_index,
            truncated_term = last_removed.term,
            "compacted raft log"
        );
        state.truncated = last_removed;
        state.hard_state = hard_state;
        state.terms.forget_before(compact_index);
        Ok(())
    }

    /// Fsyncs everything written so far (sled flushes the whole `Db`). Await it
    /// before the node sends persisted messages or advances.
    ///
    /// On a multi-threaded runtime the fsync runs in place (a few hundred
    /// microseconds): `flush_async` hands it to sled's own thread pool, and
    /// under load the hand-offs cost more than the fsync itself.
    pub async fn flush(&self) -> Result<(), StorageError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let in_place =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if in_place {
            tokio::task::block_in_place(|| self.db.flush())?;
        } else {
            self.db.flush_async().await?;
        }
        Ok(())
    }

    /// The same fsync, blocking the calling thread: for a caller with a
    /// thread of its own (the raft node's), which would only wait for the
    /// answer anyway. `flush_async` first hands the flush to sled's thread
    /// pool (whose queue wakes every idle thread on each hand-off), which
    /// in turn hands the write to it again: one hop more per fsync.
    pub fn flush_now(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    /// The first index in the log (truncated index + 1).
    pub fn first_index_cached(&self) -> u64 {
        self.read().first_index()
    }

    /// The last index in the log, or the truncated index when it is empty.
    pub fn last_index_cached(&self) -> u64 {
        self.read().last_index
    }

    /// The index of the last truncated entry (compaction or snapshot).
    pub fn snapshot_index(&self) -> u64 {
        self.read().truncated.index
    }

    /// At restart: the applied index the store persisted may be above `hs.commit`
    /// (raft-rs#392: entries can be applied before the hard state carrying their
    /// commit index reaches disk). Raises `hs.commit` to `applied`, bounded by the
    /// last index, so that `RawNode::new` with `Config::applied = applied` does not
    /// panic. Never lowers it.
    pub fn repair_commit(&self, applied: u64) -> Result<(), StorageError> {
        let mut state = self.write();
        let commit = cmp::min(applied, state.last_index);
        if commit < applied {
            tracing::warn!(
                applied,
                last_index = state.last_index,
                "the state machine is ahead of the raft log; commit raised only to the last index"
            );
        }
        if commit <= state.hard_state.commit {
            return Ok(());
        }
        let mut hs = state.hard_state.clone();
        tracing::info!(
            from = hs.commit,
            to = commit,
            "raised persisted commit index to the applied index"
        );
        hs.commit = commit;
        self.meta
            .insert(HARD_STATE_KEY, encode(&hs, "hard state")?)?;
        state.hard_state = hs;
        Ok(())
    }

    /// Applies a batch to the log and meta trees, atomically.
    fn apply_to_all(&self, log_batch: &Batch, meta_batch: &Batch) -> Result<(), StorageError> {
        // No reads and no side effects in the closure, so sled may re-run it on a
        // conflict.
        let result: TransactionResult<(), Infallible> =
            (&self.log, &self.meta).transaction(|(log, meta)| {
                log.apply_batch(log_batch)?;
                meta.apply_batch(meta_batch)?;
                Ok(())
            });
        result.map_err(|e| match e {
            TransactionError::Storage(e) => StorageError::Sled(e),
            TransactionError::Abort(never) => match never {},
        })
    }

    /// The term of entry `index`, which the caller has checked is in the
    /// log: from the kept terms, or else read from the entry.
    fn entry_term(&self, state: &LogState, index: u64) -> Result<u64, StorageError> {
        match state.terms.get(index) {
            Some(term) => Ok(term),
            None => Ok(self.read_entry(index)?.term),
        }
    }

    fn read_entry(&self, index: u64) -> Result<Entry, StorageError> {
        let bytes = self
            .log
            .get(log_key(index))?
            .ok_or_else(|| corrupt(log_key_name(index), "entry is missing from the log".into()))?;
        decode_entry(index, &bytes)
    }

    /// Reads `[low, high)`, which the caller has checked is inside the log, up to
    /// `max_size` bytes but at least one entry.
    fn read_entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        let mut entries = Vec::new();
        let mut size = 0u64;
        for item in self.log.range(log_key(low)..log_key(high)) {
            let (key, bytes) = item?;
            let expected = low + entries.len() as u64;
            let index = decode_log_key(&key)?;
            if index != expected {
                return Err(corrupt(
                    log_key_name(expected),
                    format!("entry is missing from the log (the next one is {index})"),
                ));
            }
            // The encoded length is the entry's `compute_size`, the measure
            // `raft::util::limit_size` uses.
            size = size.saturating_add(bytes.len() as u64);
            if !entries.is_empty() && size > max_size {
                return Ok(entries);
            }
            entries.push(decode_entry(index, &bytes)?);
        }
        let end = low + entries.len() as u64;
        if end < high {
            return Err(corrupt(
                log_key_name(end),
                "entry is missing from the log".into(),
            ));
        }
        Ok(entries)
    }

    /// The cached state. It is replaced only after a successful sled write, by
    /// assignments that cannot panic, so a poisoned lock still guards a state
    /// that matches the disk.
    fn read(&self) -> RwLockReadGuard<'_, LogState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, LogState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self.read();
        Ok(RaftState::new(
            state.hard_state.clone(),
            state.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(NO_LIMIT);
        // Held while reading so that no compaction or snapshot moves the log.
        let state = self.read();
        if low < state.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        // raft-rs documents a panic here; a fatal error says the same and leaves
        // the reporting to the node.
        if low > high || high > state.last_index + 1 {
            return Err(StorageError::EntriesOutOfRange {
                low,
                high,
                last_index: state.last_index,
            }
            .into());
        }
        Ok(self.read_entries(low, high, max_size)?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let state = self.read();
        if idx == state.truncated.index {
            return Ok(state.truncated.term);
        }
        if idx < state.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > state.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entry_term(&state, idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_cached())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_cached())
    }

    /// The saved snapshot. One older than `request_index` is not there yet:
    /// raft asks again, and the node saves a newer one soon.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let Some(metadata) = self.snapshot_metadata()? else {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        if !snapshot_serves(&metadata, request_index, to) {
            tracing::debug!(
                saved = metadata.index,
                request_index,
                to,
                "the saved snapshot is too old for this follower; saving a new one"
            );
            self.wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let data = self.read_snapshot_file(&metadata)?;
        tracing::info!(
            to,
            index = metadata.index,
            term = metadata.term,
            bytes = data.len(),
            "sending the saved snapshot"
        );
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        snapshot.set_data(data.into());
        Ok(snapshot)
    }
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_log_key(key: &[u8]) -> Result<u64, StorageError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| {
            corrupt(
                format!("{LOG_TREE}/{key:02x?}"),
                format!("key is {} bytes, expected an 8-byte index", key.len()),
            )
        })
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    let entry: Entry = decode(bytes, || log_key_name(index))?;
    if entry.index != index {
        return Err(corrupt(
            log_key_name(index),
            format!("holds entry {}", entry.index),
        ));
    }
    Ok(entry)
}

fn read_meta<M: protobuf::Message>(meta: &Tree, key: &str) -> Result<Option<M>, StorageError> {
    meta.get(key)?
        .map(|bytes| decode(&bytes, || meta_key_name(key)))
        .transpose()
}

/// `index ‖ term`, both big-endian: one big-endian u128.
fn encode_position(position: Position) -> [u8; 16] {
    ((u128::from(position.index) << 64) | u128::from(position.term)).to_be_bytes()
}

fn decode_position(bytes: &[u8]) -> Result<Position, StorageError> {
    let bytes = <[u8; 16]>::try_from(bytes).map_err(|_| {
        corrupt(
            meta_key_name(TRUNCATED_KEY),
            format!("value is {} bytes, expected 16", bytes.len()),
        )
    })?;
    let value = u128::from_be_bytes(bytes);
    Ok(Position {
        index: (value >> 64) as u64,
        term: value as u64,
    })
}

fn encode<M: protobuf::Message>(message: &M, what: &'static str) -> Result<Vec<u8>, StorageError> {
    message
        .write_to_bytes()
        .map_err(|source| StorageError::Encode { what, source })
}

fn decode<M: protobuf::Message>(
    bytes: &[u8],
    key: impl FnOnce() -> String,
) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|e| corrupt(key(), format!("does not decode: {e}")))
}

fn log_key_name(index: u64) -> String {
    format!("{LOG_TREE}/{index}")
}

fn meta_key_name(key: &str) -> String {
    format!("{META_TREE}/{key}")
}

fn corrupt(key: String, detail: String) -> StorageError {
    StorageError::Corrupt { key, detail }
}

fn snapshot_file_name(index: u64) -> String {
    format!("state-{index:020}.snap")
}

/// The file holding the data of the snapshot at `index`.
fn snapshot_file(dir: &Path, index: u64) -> PathBuf {
    dir.join(snapshot_file_name(index))
}

/// Remove the snapshot files in `dir` that `gone` picks by their index and
/// whether they are temporary (being written, or left by a crash).
fn remove_snapshot_files(dir: &Path, gone: impl Fn(u64, bool) -> bool) -> Result<(), StorageError> {
    let failed = |source| StorageError::SnapshotFile {
        what: "list the snapshot directory",
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(failed)? {
        let path = entry.map_err(failed)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(index) = name
            .strip_prefix("state-")
            .and_then(|rest| rest.get(..20))
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            continue;
        };
        if !gone(index, name.contains(".tmp-")) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            // Another clean-up (a save and an install at once) was first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StorageError::SnapshotFile {
                    what: "remove the snapshot file",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Write the snapshot file for `index` whole: under a temporary name,
/// fsynced, then linked to its own name and the directory fsynced.
/// Returns its size. A file already there for `index` is kept (a state
/// at one index is one state: this member's own or the leader's).
fn write_snapshot_file(
    dir: &Path,
    index: u64,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<u64, StorageError> {
    static TEMPORARY: AtomicU64 = AtomicU64::new(0);
    let path = snapshot_file(dir, index);
    let temporary = dir.join(format!(
        "{}.tmp-{}-{}",
        snapshot_file_name(index),
        std::process::id(),
        TEMPORARY.fetch_add(1, Ordering::Relaxed)
    ));
    let failed = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::SnapshotFile { what, path, source }
    };
    let written = (|| {
        let file = std::fs::File::create(&temporary)?;
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        file.metadata().map(|m| m.len())
    })();
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(failed("write the snapshot file", &temporary)(e));
        }
    };
    let linked = match std::fs::hard_link(&temporary, &path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    };
    let _ = std::fs::remove_file(&temporary);
    linked.map_err(failed("name the snapshot file", &path))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed("sync the snapshot directory", dir))?;
    Ok(bytes)
}

/// A data directory of a drover before the snapshot files holds the
/// snapshot at `index` in a sled tree: write it to its file, then drop it
/// from sled.
fn move_old_snapshot(db: &Db, dir: &Path, index: u64) -> Result<(), StorageError> {
    if !db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == OLD_SNAPSHOT_TREE.as_bytes())
    {
        return Ok(());
    }
    let old = db.open_tree(OLD_SNAPSHOT_TREE)?;
    if let Some(data) = old.get(OLD_SNAPSHOT_DATA_KEY)? {
        if !snapshot_file(dir, index).exists() {
            write_snapshot_file(dir, index, |out| out.write_all(&data))?;
            tracing::info!(index, "moved the saved snapshot out of sled into its file");
        }
    }
    drop(old);
    db.drop_tree(OLD_SNAPSHOT_TREE)?;
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The raft-rs storage contract, after `MemStorage`'s own tests
    //! (raft-0.7.0/src/storage.rs), on real sled files; then what MemStorage does
    //! not have: bootstrap, persistence across a reopen, commit repair, corruption.

    use protobuf::Message as _;
    use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
    use raft::{GetEntriesContext, Storage};
    use tempfile::TempDir;

    use super::{SledStorage, StorageError};

    struct Fixture {
        storage: SledStorage,
        db: sled::Db,
        dir: TempDir,
    }

    fn open_db(path: &std::path::Path) -> sled::Db {
        crate::fixtures::open_test_db(path, 16)
    }

    fn snapshots(dir: &TempDir) -> std::path::PathBuf {
        dir.path().join("raft-snapshots")
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = open_db(dir.path());
            let storage = SledStorage::open(&db, &snapshots(&dir)).expect("open storage");
            Fixture { storage, db, dir }
        }

        /// A log holding `entries` (contiguous), compacted just below the first
        /// one: truncated = (first - 1, first - 1).
        fn with_entries(entries: &[Entry]) -> Self {
            let fixture = Fixture::new();
            let first = entries[0].index;
            if first > 1 {
                fixture
                    .storage
                    .apply_snapshot(&new_snapshot(first - 1, first - 1, vec![]))
                    .unwrap();
            }
            fixture.storage.append(entries).unwrap();
            fixture
        }

        /// Drops every handle on the database and opens it again from its files.
        fn reopen(self) -> Self {
            let Fixture { storage, db, dir } = self;
            drop(storage);
            drop(db);
            let db = open_db(dir.path());
            let storage = SledStorage::open(&db, &snapshots(&dir)).expect("reopen storage");
            Fixture { storage, db, dir }
        }

        /// Save a snapshot at `index` (in the log), so compaction may reach it.
        fn save_snapshot_at(&self, index: u64) {
            let meta = raft::eraftpb::SnapshotMetadata {
                index,
                term: self.storage.term(index).unwrap(),
                conf_state: Some(self.storage.conf_state()).into(),
                ..Default::default()
            };
            assert!(self
                .storage
                .save_snapshot(&meta, |out| out.write_all(b"state"))
                .unwrap());
        }

        fn all_entries(&self) -> Vec<Entry> {
            let s = &self.storage;
            s.entries(
                s.first_index().unwrap(),
                s.last_index().unwrap() + 1,
                None,
                GetEntriesContext::empty(false),
            )
            .unwrap()
        }
    }

    fn new_entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn new_snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().mut_conf_state().voters = voters;
        s
    }

    fn compacted<T>() -> raft::Result<T> {
        Err(raft::Error::Store(raft::StorageError::Compacted))
    }

    /// The `StorageError` inside `raft::Error::Store(Other(..))`.
    fn ours<T: std::fmt::Debug>(result: raft::Result<T>) -> StorageError {
        match result {
            Err(raft::Error::Store(raft::StorageError::Other(e))) => {
                match e.downcast::<StorageError>() {
                    Ok(e) => *e,
                    Err(e) => panic!("not a drover StorageError: {e}"),
                }
            }
            other => panic!("expected a fatal storage error, got {other:?}"),
        }
    }

    fn ents_3_4_5() -> Vec<Entry> {
        vec![new_entry(3, 3), new_entry(4, 4), new_entry(5, 5)]
    }

    #[test]
    fn term_answers_from_the_truncated_index_to_the_last_index() {
        let f = Fixture::with_entries(&ents_3_4_5());
        let s = &f.storage;
        assert_eq!(s.term(1), compacted());
        assert_eq!(s.term(2), Ok(2), "the truncated entry keeps its term");
        assert_eq!(s.term(3), Ok(3));
        assert_eq!(s.term(4), Ok(4));
        assert_eq!(s.term(5), Ok(5));
        assert_eq!(
            s.term(6),
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        );
    }

    #[test]
    fn fresh_storage_is_empty_and_uninitialized() {
        let f = Fixture::new();
        let s = &f.storage;
        assert!(!s.is_initialized());
        assert_eq!(s.first_index(), Ok(1));
        assert_eq!(s.last_index(), Ok(0));
        assert_eq!(s.term(0), Ok(0));
        let state = s.initial_state().unwrap();
        assert_eq!(state.hard_state, HardState::default());
        assert!(!state.initialized());
    }

    #[test]
    fn entries_honours_range_and_size_limit() {
        let ents = vec![
            new_entry(3, 3),
            new_entry(4, 4),
            new_entry(5, 5),
            new_entry(6, 6),
        ];
        let size = |i: usize| u64::from(ents[i].compute_size());
        let max = u64::MAX;
        let cases = vec![
            (2, 6, max, compacted()),
            (3, 4, max, Ok(vec![new_entry(3, 3)])),
            (4, 5, max, Ok(vec![new_entry(4, 4)])),
            (4, 6, max, Ok(vec![new_entry(4, 4), new_entry(5, 5)])),
            (
                4,
                7,
                max,
                Ok(vec![new_entry(4, 4), new_entry(5, 5), new_entry(6, 6)]),
            ),
            // even if max_size is zero, the first entry is returned
            (4, 7, 0, Ok(vec![new_entry(4, 4)])),
            (
                4,
                7,
                size(1) + size(2),
                Ok(vec![new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                4,
                7,
                size(1) + size(2) + size(3) / 2,
                Ok(vec![new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                4,
                7,
                size(1) + size(2) + size(3) - 1,
                Ok(vec![new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                4,
                7,
                size(1) + size(2) + size(3),
                Ok(vec![new_entry(4, 4), new_entry(5, 5), new_entry(6, 6)]),
            ),
            (4, 4, max, Ok(vec![])),
        ];
        let f = Fixture::with_entries(&ents);
        for (i, (low, high, max_size, want)) in cases.into_iter().enumerate() {
            let got = f
                .storage
                .entries(low, high, max_size, GetEntriesContext::empty(false));
            assert_eq!(got, want, "case #{i}: entries({low}, {high}, {max_size})");
        }
        // No limit at all.
        let got = f
            .storage
            .entries(3, 7, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, ents);
    }

    #[test]
    fn entries_past_the_last_index_is_an_error_not_a_panic() {
        let f = Fixture::with_entries(&ents_3_4_5());
        let err = ours(
            f.storage
                .entries(4, 7, None, GetEntriesContext::empty(false)),
        );
        assert!(
            matches!(
                err,
                StorageError::EntriesOutOfRange {
                    low: 4,
                    high: 7,
                    last_index: 5
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn last_index_follows_appends() {
        let f = Fixture::with_entries(&ents_3_4_5());
        assert_eq!(f.storage.last_index(), Ok(5));
        f.storage.append(&[new_entry(6, 5)]).unwrap();
        assert_eq!(f.storage.last_index(), Ok(6));
        assert_eq!(f.storage.last_index_cached(), 6);
    }

    #[test]
    fn first_index_follows_compaction() {
        let f = Fixture::with_entries(&ents_3_4_5());
        f.save_snapshot_at(5);
        assert_eq!(f.storage.first_index(), Ok(3));
        f.storage.compact(4).unwrap();
        assert_eq!(f.storage.first_index(), Ok(4));
        assert_eq!(f.storage.first_index_cached(), 4);
        assert_eq!(f.storage.snapshot_index(), 3);
    }

    #[test]
    fn compact_drops_the_prefix_and_keeps_the_last_removed_term() {
        // (compact index, first index, term at first index, entries left)
        let cases = [(2, 3, 3, 3), (3, 3, 3, 3), (4, 4, 4, 2), (5, 5, 5, 1)];
        for (i, (idx, windex, wterm, wlen)) in cases.into_iter().enumerate() {
            let f = Fixture::with_entries(&ents_3_4_5());
            f.save_snapshot_at(5);
            let s = &f.storage;
            s.compact(idx).unwrap();
            assert_eq!(s.first_index(), Ok(windex), "case #{i}");
            assert_eq!(s.term(windex), Ok(wterm), "case #{i}");
            assert_eq!(
                s.term(windex - 1),
                Ok(windex - 1),
                "case #{i}: truncated term"
            );
            assert_eq!(f.all_entries().len(), wlen, "case #{i}");
            if windex > 3 {
                assert_eq!(s.term(windex - 2), compacted(), "case #{i}");
            }
        }
    }

    #[test]
    fn compact_to_the_end_empties_the_log() {
        let f = Fixture::with_entries(&ents_3_4_5());
        f.save_snapshot_at(5);
        let s = &f.storage;
        s.compact(6).unwrap();
        assert_eq!(s.first_index(), Ok(6));
        assert_eq!(
            s.last_index(),
            Ok(5),
            "an empty log ends at the truncated index"
        );
        assert_eq!(s.term(5), Ok(5));
        assert_eq!(
            s.entries(6, 6, None, GetEntriesContext::empty(false)),
            Ok(vec![])
        );
        s.append(&[new_entry(6, 6)]).unwrap();
        assert_eq!(f.all_entries(), vec![new_entry(6, 6)]);
    }

    #[test]
    fn compact_refuses_to_go_past_the_log() {
        let f = Fixture::with_entries(&ents_3_4_5());
        f.save_snapshot_at(5);
        let err = f.storage.compact(7).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::CompactBeyondLog {
                    compact_index: 7,
                    last_index: 5
                }
            ),
            "{err}"
        );
        assert_eq!(f.storage.first_index(), Ok(3), "nothing was removed");
    }

    #[test]
    fn compact_raises_a_lagging_commit_to_the_truncated_index() {
        let f = Fixture::with_entries(&ents_3_4_5());
        f.save_snapshot_at(5);
        let hs = hard_state(5, 0, 2);
        f.storage.set_hard_state(&hs).unwrap();
        f.storage.compact(5).unwrap();
        assert_eq!(f.storage.hard_state().commit, 4);
    }

    /// The names in the snapshot directory, sorted.
    fn snapshot_files(f: &Fixture) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(snapshots(&f.dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The snapshot's data is a file of its own: one per saved snapshot,
    /// the one replaced removed once the new one is named, leftovers of a
    /// crash removed at open, and a missing one refused.
    #[test]
    fn the_snapshot_is_a_file_and_only_the_saved_one_is_kept() {
        let f = Fixture::with_entries(&ents_3_4_5());
        assert_eq!(snapshot_files(&f), ["state-00000000000000000002.snap"]);
        f.save_snapshot_at(4);
        assert_eq!(snapshot_files(&f), ["state-00000000000000000004.snap"]);
        let dir = snapshots(&f.dir);
        assert_eq!(
            std::fs::read(dir.join("state-00000000000000000004.snap")).unwrap(),
            b"state"
        );
        // A crash while writing a newer one, and after writing one whose
        // metadata never landed.
        std::fs::write(dir.join("state-00000000000000000005.snap.tmp-1-0"), b"st").unwrap();
        std::fs::write(dir.join("state-00000000000000000005.snap"), b"state").unwrap();
        let f = f.reopen();
        assert_eq!(snapshot_files(&f), ["state-00000000000000000004.snap"]);
        assert_eq!(f.storage.saved_snapshot().unwrap().unwrap().1, b"state");
        // A file the writer failed on is not left behind.
        let meta = raft::eraftpb::SnapshotMetadata {
            index: 5,
            term: 5,
            ..Default::default()
        };
        let failed = f
            .storage
            .save_snapshot(&meta, |_| Err(std::io::Error::other("disk full")));
        assert!(
            matches!(&failed, Err(StorageError::SnapshotFile { .. })),
            "{failed:?}"
        );
        assert!(failed.unwrap_err().to_string().contains("disk full"));
        assert_eq!(snapshot_files(&f), ["state-00000000000000000004.snap"]);

        std::fs::remove_file(dir.join("state-00000000000000000004.snap")).unwrap();
        let Fixture { storage, db, dir } = f;
        drop(storage);
        match SledStorage::open(&db, &snapshots(&dir)) {
            Err(StorageError::Corrupt { key, detail }) => {
                assert!(key.ends_with("state-00000000000000000004.snap"), "{key}");
                assert_eq!(detail, "the snapshot's data is missing");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    /// A data directory written before the snapshot files keeps the data in
    /// sled: opening it moves the data to its file.
    #[test]
    fn a_snapshot_kept_in_sled_moves_to_its_file_at_open() {
        let f = Fixture::with_entries(&ents_3_4_5());
        f.save_snapshot_at(4);
        std::fs::remove_file(snapshots(&f.dir).join("state-00000000000000000004.snap")).unwrap();
        f.db.open_tree("raft_snapshot")
            .unwrap()
            .insert("data", &b"old state"[..])
            .unwrap();
        let f = f.reopen();
        let (meta, data) = f.storage.saved_snapshot().unwrap().unwrap();
        assert_eq!((meta.index, data.as_slice()), (4, b"old state".as_slice()));
        assert!(!f
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"raft_snapshot"));
        assert_eq!(snapshot_files(&f), ["state-00000000000000000004.snap"]);
    }

    #[test]
    fn the_saved_snapshot_is_sent_and_an_older_one_never_replaces_it() {
        let f = Fixture::with_entries(&ents_3_4_5());
        let voters = vec![1, 2, 3];
        let meta = |index: u64| {
            let mut s = new_snapshot(index, index, voters.clone());
            s.take_metadata()
        };
        // The fixture's truncation at 2 is a snapshot with empty data and no
        // members: no follower can take it, and asking says a new one is wanted.
        assert_eq!(f.storage.saved_snapshot().unwrap().unwrap().0.index, 2);
        assert!(f.storage.snapshot(0, 2).is_err());
        assert!(f.storage.take_snapshot_wanted());
        assert!(!f.storage.take_snapshot_wanted());
        assert!(f
            .storage
            .save_snapshot(&meta(4), |out| out.write_all(b"state at 4"))
            .unwrap());
        assert!(!f
            .storage
            .save_snapshot(&meta(3), |out| out.write_all(b"state at 3"))
            .unwrap());
        assert!(!f
            .storage
            .save_snapshot(&meta(4), |out| out.write_all(b"again"))
            .unwrap());

        let mut want = new_snapshot(4, 4, voters.clone());
        want.set_data(b"state at 4".to_vec().into());
        assert_eq!(f.storage.snapshot(0, 2), Ok(want.clone()));
        assert_eq!(f.storage.snapshot(4, 2), Ok(want));
        assert_eq!(
            f.storage.snapshot(5, 2),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        // It survives a reopen, and raft starts from its conf state.
        let f = f.reopen();
        let (saved, data) = f.storage.saved_snapshot().unwrap().unwrap();
        assert_eq!(
            (saved.index, data.as_slice()),
            (4, b"state at 4".as_slice())
        );
        assert_eq!(f.storage.conf_state().voters, voters);
    }

    #[test]
    fn the_log_is_never_compacted_past_the_saved_snapshot() {
        let f = Fixture::with_entries(&ents_3_4_5());
        f.storage.compact(6).unwrap();
        assert_eq!(f.storage.first_index().unwrap(), 3, "no snapshot past 2");
        let mut snap = new_snapshot(4, 4, vec![1]);
        f.storage
            .save_snapshot(&snap.take_metadata(), |out| out.write_all(b"state at 4"))
            .unwrap();
        f.storage.compact(6).unwrap();
        assert_eq!(f.storage.first_index().unwrap(), 5);
        assert_eq!(f.storage.term(4), Ok(4));
    }

    #[test]
    fn append_replaces_a_conflicting_tail() {
        let cases = vec![
            (ents_3_4_5(), Some(ents_3_4_5())),
            (
                vec![new_entry(3, 3), new_entry(4, 6), new_entry(5, 6)],
                Some(vec![new_entry(3, 3), new_entry(4, 6), new_entry(5, 6)]),
            ),
            (
                vec![
                    new_entry(3, 3),
                    new_entry(4, 4),
                    new_entry(5, 5),
                    new_entry(6, 5),
                ],
                Some(vec![
                    new_entry(3, 3),
                    new_entry(4, 4),
                    new_entry(5, 5),
                    new_entry(6, 5),
                ]),
            ),
            // overwriting compacted entries is refused
            (
                vec![new_entry(2, 3), new_entry(3, 3), new_entry(4, 5)],
                None,
            ),
            // a shorter replacement drops the old tail (raft-rs#428)
            (
                vec![new_entry(4, 5)],
                Some(vec![new_entry(3, 3), new_entry(4, 5)]),
            ),
            // one entry replacing the last one (a batch, not the plain insert)
            (
                vec![new_entry(5, 6)],
                Some(vec![new_entry(3, 3), new_entry(4, 4), new_entry(5, 6)]),
            ),
            // direct append (one entry at the end: a plain insert)
            (
                vec![new_entry(6, 6)],
                Some(vec![
                    new_entry(3, 3),
                    new_entry(4, 4),
                    new_entry(5, 5),
                    new_entry(6, 6),
                ]),
            ),
            // a hole after the log is refused
            (vec![new_entry(7, 6)], None),
            // so is a hole inside the batch
            (vec![new_entry(6, 6), new_entry(8, 6)], None),
        ];
        for (i, (entries, want)) in cases.into_iter().enumerate() {
            let f = Fixture::with_entries(&ents_3_4_5());
            let result = f.storage.append(&entries);
            match want {
                Some(want) => {
                    result.unwrap();
                    assert_eq!(f.all_entries(), want, "case #{i}");
                    let f = f.reopen();
                    assert_eq!(f.all_entries(), want, "case #{i} after reopen");
                }
                None => {
                    let err = result.unwrap_err();
                    assert!(
                        matches!(
                            err,
                            StorageError::AppendCompacted { .. } | StorageError::LogGap { .. }
                        ),
                        "case #{i}: {err}"
                    );
                    assert_eq!(f.all_entries(), ents_3_4_5(), "case #{i}: log untouched");
                }
            }
        }
    }

    #[test]
    fn apply_snapshot_replaces_the_log_and_refuses_an_older_one() {
        let f = Fixture::new();
        let s = &f.storage;
        s.apply_snapshot(&new_snapshot(4, 4, vec![1, 2, 3]))
            .unwrap();
        assert_eq!(s.first_index(), Ok(5));
        assert_eq!(s.last_index(), Ok(4));
        assert_eq!(s.term(4), Ok(4));
        assert_eq!(s.hard_state().commit, 4);
        assert_eq!(s.hard_state().term, 4);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert!(s.is_initialized());
        assert_eq!(
            s.snapshot_metadata().unwrap().map(|m| (m.index, m.term)),
            Some((4, 4))
        );

        let err = s
            .apply_snapshot(&new_snapshot(3, 3, vec![1, 2, 3]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::SnapshotOutOfDate {
                    index: 3,
                    first_index: 5
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn apply_snapshot_drops_a_diverged_log_but_keeps_a_matching_tail() {
        let ents = vec![
            new_entry(3, 3),
            new_entry(4, 4),
            new_entry(5, 5),
            new_entry(6, 6),
        ];

        // The log agrees with the snapshot at index 4: entries 5 and 6 stay.
        let f = Fixture::with_entries(&ents);
        f.storage
            .apply_snapshot(&new_snapshot(4, 4, vec![1]))
            .unwrap();
        assert_eq!(f.storage.first_index(), Ok(5));
        assert_eq!(f.all_entries(), vec![new_entry(5, 5), new_entry(6, 6)]);

        // The log has another term at index 4: everything goes.
        let f = Fixture::with_entries(&ents);
        f.storage
            .apply_snapshot(&new_snapshot(4, 9, vec![1]))
            .unwrap();
        assert_eq!(f.storage.first_index(), Ok(5));
        assert_eq!(f.storage.last_index(), Ok(4));
        assert_eq!(f.storage.term(4), Ok(9));
        assert_eq!(f.storage.hard_state().term, 9);

        // A snapshot past the end of the log.
        let f = Fixture::with_entries(&ents);
        f.storage
            .apply_snapshot(&new_snapshot(10, 7, vec![1]))
            .unwrap();
        assert_eq!(f.storage.first_index(), Ok(11));
        assert_eq!(f.storage.last_index(), Ok(10));
        assert_eq!(f.storage.hard_state().commit, 10);
        let f = f.reopen();
        assert_eq!(f.storage.first_index(), Ok(11));
        assert_eq!(f.storage.last_index(), Ok(10));
        assert_eq!(f.storage.term(10), Ok(7));
    }

    #[test]
    fn bootstrap_starts_from_a_snapshot_at_index_one() {
        let f = Fixture::new();
        f.storage.bootstrap(&[1, 2, 3], b"empty").unwrap();
        let check = |s: &SledStorage| {
            assert!(s.is_initialized());
            let state = s.initial_state().unwrap();
            assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
            assert_eq!(state.hard_state.term, 1);
            assert_eq!(state.hard_state.commit, 1);
            assert_eq!(state.hard_state.vote, 0);
            assert_eq!(s.first_index(), Ok(2));
            assert_eq!(s.last_index(), Ok(1));
            assert_eq!(s.term(1), Ok(1));
            assert_eq!(s.term(0), compacted());
        };
        check(&f.storage);
        let f = f.reopen();
        check(&f.storage);

        let err = f.storage.bootstrap(&[1, 2, 3], &[]).unwrap_err();
        assert!(
            matches!(err, StorageError::AlreadyInitialized { .. }),
            "{err}"
        );
    }

    #[test]
    fn bootstrap_refuses_bad_voters_and_used_storage() {
        let f = Fixture::new();
        for voters in [&[][..], &[1, 0][..]] {
            let err = f.storage.bootstrap(voters, &[]).unwrap_err();
            assert!(matches!(err, StorageError::InvalidVoters { .. }), "{err}");
        }
        assert!(!f.storage.is_initialized());

        // A member that joined empty and already voted is not fresh either.
        let hs = hard_state(3, 2, 0);
        f.storage.set_hard_state(&hs).unwrap();
        let err = f.storage.bootstrap(&[1], &[]).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::AlreadyInitialized {
                    term: 3,
                    initialized: false,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn everything_survives_a_reopen() {
        let f = Fixture::new();
        f.storage.bootstrap(&[1, 2, 3], &[]).unwrap();
        let entries: Vec<Entry> = (2..=10).map(|i| new_entry(i, 2)).collect();
        f.storage.append(&entries).unwrap();
        let mut hs = hard_state(2, 3, 6);
        f.storage.set_hard_state(&hs).unwrap();
        f.storage.set_commit(8).unwrap();
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        f.storage.set_conf_state(&cs).unwrap();
        f.save_snapshot_at(8);
        f.storage.compact(5).unwrap();
        let before = f.all_entries();

        let f = f.reopen();
        let s = &f.storage;
        hs.commit = 8;
        assert_eq!(s.hard_state(), hs);
        assert_eq!(s.conf_state(), cs);
        assert_eq!(s.first_index(), Ok(5));
        assert_eq!(s.last_index(), Ok(10));
        assert_eq!(s.snapshot_index(), 4);
        assert_eq!(s.term(4), Ok(2));
        assert_eq!(s.term(3), compacted());
        assert_eq!(f.all_entries(), before);
        assert_eq!(before.first().map(|e| e.index), Some(5));
    }

    #[test]
    fn repair_commit_raises_commit_to_applied_within_the_log() {
        let f = Fixture::with_entries(&ents_3_4_5());
        let hs = hard_state(5, 0, 3);
        f.storage.set_hard_state(&hs).unwrap();

        f.storage.repair_commit(4).unwrap();
        assert_eq!(f.storage.hard_state().commit, 4);
        f.storage.repair_commit(2).unwrap();
        assert_eq!(f.storage.hard_state().commit, 4, "never lowered");
        f.storage.repair_commit(9).unwrap();
        assert_eq!(
            f.storage.hard_state().commit,
            5,
            "bounded by the last index"
        );
        assert_eq!(f.storage.hard_state().term, 5);

        let f = f.reopen();
        assert_eq!(f.storage.hard_state().commit, 5);
    }

    #[test]
    fn corrupt_entries_are_reported_not_panicked_on() {
        let f = Fixture::with_entries(&ents_3_4_5());
        f.db.open_tree("raft_log")
            .unwrap()
            .insert(4u64.to_be_bytes(), &b"\xff\xff\xff"[..])
            .unwrap();
        // The member that wrote entry 4 knows its term without reading it;
        // a restarted one reads it.
        assert_eq!(f.storage.term(4), Ok(4));
        let f = f.reopen();
        let log = f.db.open_tree("raft_log").unwrap();

        for err in [
            ours(f.storage.term(4)),
            ours(
                f.storage
                    .entries(3, 6, None, GetEntriesContext::empty(false)),
            ),
        ] {
            match &err {
                StorageError::Corrupt { key, .. } => assert_eq!(key, "raft_log/4"),
                other => panic!("expected Corrupt, got {other}"),
            }
            assert!(err.to_string().contains("raft_log/4"), "{err}");
        }
        // Entries before the damage are still readable.
        assert_eq!(
            f.storage
                .entries(3, 4, None, GetEntriesContext::empty(false)),
            Ok(vec![new_entry(3, 3)])
        );

        // A hole in the log.
        log.remove(4u64.to_be_bytes()).unwrap();
        match ours(
            f.storage
                .entries(3, 6, None, GetEntriesContext::empty(false)),
        ) {
            StorageError::Corrupt { key, .. } => assert_eq!(key, "raft_log/4"),
            other => panic!("expected Corrupt, got {other}"),
        }
    }

    #[test]
    fn corrupt_metadata_fails_open() {
        let f = Fixture::with_entries(&ents_3_4_5());
        let meta = f.db.open_tree("raft_meta").unwrap();
        meta.insert("truncated", &b"short"[..]).unwrap();
        match SledStorage::open(&f.db, &snapshots(&f.dir)) {
            Err(StorageError::Corrupt { key, .. }) => assert_eq!(key, "raft_meta/truncated"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        meta.insert("truncated", &[0u8; 16][..]).unwrap();
        match SledStorage::open(&f.db, &snapshots(&f.dir)) {
            Err(StorageError::Corrupt { key, .. }) => assert_eq!(key, "raft_log/3"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        meta.insert("hard_state", &b"\xff\xff"[..]).unwrap();
        match SledStorage::open(&f.db, &snapshots(&f.dir)) {
            Err(StorageError::Corrupt { key, .. }) => assert_eq!(key, "raft_meta/hard_state"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn flush_is_sendable_and_succeeds() {
        fn assert_send<T: Send>(t: T) -> T {
            t
        }
        let f = Fixture::with_entries(&ents_3_4_5());
        let storage = assert_send(f.storage.clone());
        tokio::spawn(async move { assert_send(storage.flush()).await })
            .await
            .unwrap()
            .unwrap();
    }
}
