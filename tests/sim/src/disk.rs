//! A simulated disk for one controller: raft-rs's [`Storage`] and drover's
//! [`LogStore`], with a durable part and a volatile part, as FoundationDB's
//! simulated files.
//!
//! ```text
//!   write (append, hard state, compact, install snapshot ...)
//!        └─▶ current state  +  pending ops ──flush──▶ durable state
//!   crash:  current := durable + a prefix of the pending ops (sled recovers
//!           a prefix of its writes; the prefix length comes from the seed)
//! ```
//!
//! Each write is validated and applied to the current state exactly as
//! `SledStorage` does it (same errors, same layout invariants), then queued;
//! `flush` replays the queue onto the durable state. `save_snapshot` is
//! durable when it returns, as `SledStorage::save_snapshot` (it flushes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use drover_controller::raft::core::LogStore;
use drover_controller::raft::storage::{snapshot_serves, StorageError};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};

/// The layout `SledStorage` keeps, in memory.
#[derive(Clone, Default)]
struct DiskState {
    entries: BTreeMap<u64, Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    /// The last entry dropped: (index, term).
    truncated: (u64, u64),
    snapshot: Option<(SnapshotMetadata, Vec<u8>)>,
}

#[derive(Clone)]
enum Op {
    Append(Vec<Entry>),
    HardState(HardState),
    Commit(u64),
    ConfState(ConfState),
    Install(SnapshotMetadata, Vec<u8>),
    Save(SnapshotMetadata, Vec<u8>),
    Compact(u64),
}

impl DiskState {
    fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn last_index(&self) -> u64 {
        self.entries
            .last_key_value()
            .map_or(self.truncated.0, |(i, _)| *i)
    }

    fn term_of(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        self.entries
            .get(&index)
            .map(|e| e.term)
            .ok_or_else(|| missing(index))
    }

    /// Apply one write, or refuse it with `SledStorage`'s error, changing nothing.
    fn apply(&mut self, op: &Op) -> Result<bool, StorageError> {
        match op {
            Op::Append(entries) => {
                let (Some(head), Some(tail)) = (entries.first(), entries.last()) else {
                    return Ok(true);
                };
                if head.index < self.first_index() {
                    return Err(StorageError::AppendCompacted {
                        index: head.index,
                        first_index: self.first_index(),
                    });
                }
                if head.index > self.last_index() + 1 {
                    return Err(StorageError::LogGap {
                        expected: self.last_index() + 1,
                        found: head.index,
                    });
                }
                for (expected, e) in (head.index..).zip(entries) {
                    if e.index != expected {
                        return Err(StorageError::LogGap {
                            expected,
                            found: e.index,
                        });
                    }
                }
                let _ = self.entries.split_off(&head.index);
                for e in entries {
                    self.entries.insert(e.index, e.clone());
                }
                debug_assert_eq!(self.last_index(), tail.index);
            }
            Op::HardState(hs) => self.hard_state = hs.clone(),
            Op::Commit(c) => self.hard_state.commit = *c,
            Op::ConfState(cs) => self.conf_state = cs.clone(),
            Op::Install(meta, data) => {
                let (index, term) = (meta.index, meta.term);
                if index < self.first_index() {
                    return Err(StorageError::SnapshotOutOfDate {
                        index,
                        first_index: self.first_index(),
                    });
                }
                let keep_tail = index < self.last_index() && self.term_of(index)? == term;
                if keep_tail {
                    self.entries = self.entries.split_off(&(index + 1));
                } else {
                    self.entries.clear();
                }
                self.hard_state.commit = self.hard_state.commit.max(index);
                self.hard_state.term = self.hard_state.term.max(term);
                self.conf_state = meta.get_conf_state().clone();
                self.truncated = (index, term);
                self.snapshot = Some((meta.clone(), data.clone()));
            }
            Op::Save(meta, data) => {
                let saved = self.snapshot.as_ref().map_or(0, |(m, _)| m.index);
                if meta.index <= saved || meta.index < self.truncated.0 {
                    return Ok(false);
                }
                self.snapshot = Some((meta.clone(), data.clone()));
            }
            Op::Compact(compact_index) => {
                let compact_index = *compact_index;
                if compact_index > self.last_index() + 1 {
                    return Err(StorageError::CompactBeyondLog {
                        compact_index,
                        last_index: self.last_index(),
                    });
                }
                let saved = self.snapshot.as_ref().map_or(0, |(m, _)| m.index);
                let compact_index = compact_index.min(saved + 1);
                if compact_index <= self.first_index() {
                    return Ok(true);
                }
                let last_removed = (compact_index - 1, self.term_of(compact_index - 1)?);
                self.entries = self.entries.split_off(&compact_index);
                self.truncated = last_removed;
                if self.hard_state.commit < last_removed.0 {
                    self.hard_state.commit = last_removed.0;
                }
            }
        }
        Ok(true)
    }
}

fn missing(index: u64) -> StorageError {
    StorageError::Corrupt {
        key: format!("sim/raft_log/{index}"),
        detail: "entry is missing from the log".into(),
    }
}

struct Inner {
    durable: DiskState,
    current: DiskState,
    pending: Vec<Op>,
}

/// One controller's disk. Clones share it (the core and its snapshot jobs).
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<Inner>>,
    wanted: Arc<AtomicBool>,
}

impl SimDisk {
    /// A fresh cluster's disk: the snapshot at index 1, term 1 with these
    /// voters and the initial state (as `SledStorage::bootstrap`), durable.
    pub fn bootstrap(voters: &[u64], data: Vec<u8>) -> SimDisk {
        let mut meta = SnapshotMetadata {
            index: 1,
            term: 1,
            ..Default::default()
        };
        meta.mut_conf_state().voters = voters.to_vec();
        let mut state = DiskState::default();
        // A fresh disk accepts any snapshot.
        let _ = state.apply(&Op::Install(meta, data));
        SimDisk {
            inner: Arc::new(Mutex::new(Inner {
                durable: state.clone(),
                current: state,
                pending: Vec::new(),
            })),
            wanted: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, op: Op) -> Result<bool, StorageError> {
        let mut inner = self.lock();
        let done = inner.current.apply(&op)?;
        inner.pending.push(op);
        Ok(done)
    }

    /// Writes not yet durable.
    pub fn unflushed(&self) -> usize {
        self.lock().pending.len()
    }

    /// Make every write so far durable.
    pub fn flush(&self) {
        let mut inner = self.lock();
        let pending = std::mem::take(&mut inner.pending);
        for op in &pending {
            // Each op succeeded on `current`, which is `durable` + the ops
            // before it: it succeeds here the same way.
            let _ = inner.durable.apply(op);
        }
    }

    /// The machine died: the first `keep` un-flushed writes made it to the
    /// platter (sled recovers a prefix), the rest are lost. Returns how many
    /// were lost.
    pub fn crash(&self, keep: usize) -> usize {
        let mut inner = self.lock();
        let pending = std::mem::take(&mut inner.pending);
        let keep = keep.min(pending.len());
        for op in &pending[..keep] {
            let _ = inner.durable.apply(op);
        }
        inner.current = inner.durable.clone();
        self.wanted.store(false, Ordering::Relaxed);
        pending.len() - keep
    }

    /// The durable log's (last index, commit), for traces.
    pub fn durable_summary(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.durable.last_index(), inner.durable.hard_state.commit)
    }
}

impl LogStore for SimDisk {
    fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.write(Op::Append(entries.to_vec())).map(|_| ())
    }
    fn set_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        self.write(Op::HardState(hs.clone())).map(|_| ())
    }
    fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        self.write(Op::Commit(commit)).map(|_| ())
    }
    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StorageError> {
        self.write(Op::ConfState(cs.clone())).map(|_| ())
    }
    fn conf_state(&self) -> ConfState {
        self.lock().current.conf_state.clone()
    }
    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError> {
        self.write(Op::Install(
            snap.get_metadata().clone(),
            snap.get_data().to_vec(),
        ))
        .map(|_| ())
    }
    fn save_snapshot(
        &self,
        meta: &SnapshotMetadata,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<bool, StorageError> {
        let mut data = Vec::new();
        write(&mut data).map_err(|e| StorageError::StateMachine(Box::new(e)))?;
        let saved = self.write(Op::Save(meta.clone(), data))?;
        // As sled's: a saved snapshot is flushed, with everything before it.
        self.flush();
        Ok(saved)
    }
    fn saved_snapshot(&self) -> Result<Option<(SnapshotMetadata, Vec<u8>)>, StorageError> {
        Ok(self.lock().current.snapshot.clone())
    }
    fn take_snapshot_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::Relaxed)
    }
    fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        self.write(Op::Compact(compact_index)).map(|_| ())
    }
    fn snapshot_index(&self) -> u64 {
        self.lock().current.truncated.0
    }
    fn repair_commit(&self, applied: u64) -> Result<(), StorageError> {
        let commit = {
            let inner = self.lock();
            let commit = applied.min(inner.current.last_index());
            if commit <= inner.current.hard_state.commit {
                return Ok(());
            }
            commit
        };
        self.write(Op::Commit(commit)).map(|_| ())
    }
}

impl Storage for SimDisk {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.lock();
        Ok(RaftState::new(
            inner.current.hard_state.clone(),
            inner.current.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let inner = self.lock();
        let s = &inner.current;
        if low < s.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if low > high || high > s.last_index() + 1 {
            return Err(StorageError::EntriesOutOfRange {
                low,
                high,
                last_index: s.last_index(),
            }
            .into());
        }
        let mut out: Vec<Entry> = s.entries.range(low..high).map(|(_, e)| e.clone()).collect();
        if out.len() as u64 != high - low {
            return Err(missing(low + out.len() as u64).into());
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let inner = self.lock();
        let s = &inner.current;
        if idx == s.truncated.0 {
            return Ok(s.truncated.1);
        }
        if idx < s.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > s.last_index() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(s.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.lock().current.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.lock().current.last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let Some((meta, data)) = self.lock().current.snapshot.clone() else {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        if !snapshot_serves(&meta, request_index, to) {
            self.wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta);
        snapshot.set_data(data.into());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn disk() -> SimDisk {
        SimDisk::bootstrap(&[1, 2, 3], b"state".to_vec())
    }

    #[test]
    fn a_crash_keeps_the_flushed_writes_and_loses_the_rest() {
        let d = disk();
        d.append(&[entry(2, 1), entry(3, 1)])
            .unwrap_or_else(|e| panic!("{e}"));
        d.flush();
        d.append(&[entry(4, 2)]).unwrap_or_else(|e| panic!("{e}"));
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 3,
            ..Default::default()
        };
        d.set_hard_state(&hs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.last_index().ok(), Some(4));
        assert_eq!(d.unflushed(), 2);

        assert_eq!(d.crash(0), 2, "both unflushed writes are lost");
        assert_eq!(d.last_index().ok(), Some(3));
        assert_eq!(d.term(3).ok(), Some(1));
        let state = d.initial_state().unwrap_or_else(|e| panic!("{e}"));
        // The bootstrap snapshot's, not the lost one.
        assert_eq!((state.hard_state.term, state.hard_state.commit), (1, 1));
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn a_crash_may_keep_a_prefix_of_the_unflushed_writes() {
        let d = disk();
        d.append(&[entry(2, 1)]).unwrap_or_else(|e| panic!("{e}"));
        d.append(&[entry(3, 1)]).unwrap_or_else(|e| panic!("{e}"));
        d.append(&[entry(4, 1)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.crash(2), 1);
        assert_eq!(d.last_index().ok(), Some(3));
    }

    #[test]
    fn writes_are_checked_as_sled_storage_checks_them() {
        let d = disk();
        assert!(matches!(
            d.append(&[entry(5, 1)]),
            Err(StorageError::LogGap {
                expected: 2,
                found: 5
            })
        ));
        assert!(matches!(
            d.append(&[entry(1, 1)]),
            Err(StorageError::AppendCompacted { .. })
        ));
        d.append(&[entry(2, 1), entry(3, 1), entry(4, 1)])
            .unwrap_or_else(|e| panic!("{e}"));
        // A conflicting shorter tail replaces the old one.
        d.append(&[entry(3, 2)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.last_index().ok(), Some(3));
        assert_eq!(d.term(3).ok(), Some(2));
        assert!(matches!(
            d.compact(9),
            Err(StorageError::CompactBeyondLog { .. })
        ));
        assert_eq!(d.unflushed(), 2, "refused writes are not queued");
    }

    #[test]
    fn compaction_stops_at_the_saved_snapshot_and_a_saved_snapshot_is_durable() {
        let d = disk();
        d.append(&[entry(2, 1), entry(3, 1), entry(4, 1)])
            .unwrap_or_else(|e| panic!("{e}"));
        d.compact(4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            d.first_index().ok(),
            Some(2),
            "only the bootstrap snapshot is saved"
        );
        let mut meta = SnapshotMetadata {
            index: 3,
            term: 1,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1, 2, 3];
        assert_eq!(
            d.save_snapshot(&meta, |out| out.write_all(b"at 3")).ok(),
            Some(true)
        );
        assert_eq!(
            d.save_snapshot(&meta, |out| out.write_all(b"again")).ok(),
            Some(false)
        );
        assert_eq!(d.crash(0), 0, "saving flushed everything");
        d.compact(4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.first_index().ok(), Some(4));
        assert_eq!(d.term(3).ok(), Some(1));
        let snap = d.snapshot(3, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snap.get_data(), b"at 3");
        // A follower needing a newer one makes the owner save one soon.
        assert!(d.snapshot(4, 2).is_err());
        assert!(d.take_snapshot_wanted());
    }
}
