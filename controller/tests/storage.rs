//! `SledStorage` under real raft: three `RawNode<SledStorage>`s on sled files,
//! wired by an in-memory loop that delivers every message (or drops those of an
//! isolated member). Each member handles its `Ready` in raft-rs's documented order,
//! with `flush` before persisted messages go out.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use drover_controller::raft::storage::SledStorage;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{Config, GetEntriesContext, RawNode, StateRole, Storage};
use tempfile::TempDir;

/// A state machine that records the proposals applied, in order.
#[derive(Default)]
struct Machine(Mutex<Applied>);

#[derive(Debug, Default, Clone, PartialEq)]
struct Applied {
    index: u64,
    values: Vec<u64>,
}

impl Machine {
    fn lock(&self) -> MutexGuard<'_, Applied> {
        self.0.lock().expect("machine lock")
    }

    fn applied(&self) -> Applied {
        self.lock().clone()
    }

    fn apply(&self, entry: &Entry) {
        let mut applied = self.lock();
        assert_eq!(
            entry.index,
            applied.index + 1,
            "entries apply in order, once"
        );
        assert_eq!(entry.get_entry_type(), EntryType::EntryNormal);
        // Empty entries are the ones new leaders append.
        if !entry.data.is_empty() {
            applied.values.push(decode_value(&entry.data));
        }
        applied.index = entry.index;
    }

    fn restore(&self, data: &[u8], index: u64) {
        *self.lock() = Applied {
            index,
            values: data.chunks(8).map(decode_value).collect(),
        };
    }
}

impl Machine {
    /// The state encoded for a snapshot, and the index it reflects.
    fn encode(&self) -> (Vec<u8>, u64) {
        let applied = self.lock();
        let data = applied
            .values
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        (data, applied.index)
    }
}

fn decode_value(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("an 8-byte proposal"))
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn open_db(path: &Path) -> sled::Db {
    drover_controller::fixtures::open_test_db(path, 16)
}

fn config(id: u64, applied: u64) -> Config {
    let config = Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        applied,
        ..Default::default()
    };
    config.validate().expect("valid raft config");
    config
}

struct Member {
    id: u64,
    node: RawNode<SledStorage>,
    machine: Arc<Machine>,
    db: sled::Db,
    dir: TempDir,
}

impl Member {
    fn bootstrap(id: u64, voters: &[u64]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path());
        let machine = Arc::new(Machine::default());
        let storage =
            SledStorage::open(&db, &dir.path().join("raft-snapshots")).expect("open storage");
        // Every initial voter starts from the same (empty) state machine at index 1.
        machine.restore(&[], 1);
        storage.bootstrap(voters, &[]).expect("bootstrap");
        let node = RawNode::new(&config(id, 1), storage, &logger()).expect("raw node");
        Member {
            id,
            node,
            machine,
            db,
            dir,
        }
    }

    fn storage(&self) -> &SledStorage {
        self.node.store()
    }

    /// Drops the node and every handle on its database, then starts it again from
    /// its files: the state machine from the saved snapshot, the rest re-applied
    /// from the log.
    fn restart(self) -> Self {
        let Member {
            id,
            node,
            machine,
            db,
            dir,
        } = self;
        drop(node);
        drop(db);
        let db = open_db(dir.path());
        let storage =
            SledStorage::open(&db, &dir.path().join("raft-snapshots")).expect("reopen storage");
        let (snapshot, data) = storage
            .saved_snapshot()
            .expect("read snapshot")
            .expect("a snapshot");
        machine.restore(&data, snapshot.index);
        let applied = snapshot.index;
        storage.repair_commit(applied).expect("repair commit");
        let node = RawNode::new(&config(id, applied), storage, &logger()).expect("raw node");
        Member {
            id,
            node,
            machine,
            db,
            dir,
        }
    }

    /// One `Ready`, in the order of raft-rs's `lib.rs` and five_mem_node.
    async fn handle_ready(&mut self, outbox: &mut Vec<Message>) {
        if !self.node.has_ready() {
            return;
        }
        let mut rd = self.node.ready();
        outbox.extend(rd.take_messages());

        if !rd.snapshot().is_empty() {
            let snapshot = rd.snapshot();
            self.machine
                .restore(&snapshot.data, snapshot.get_metadata().index);
            self.storage()
                .apply_snapshot(snapshot)
                .expect("install snapshot");
        }
        for entry in rd.take_committed_entries() {
            self.machine.apply(&entry);
        }
        let storage = self.node.store();
        storage.append(rd.entries()).expect("append");
        if let Some(hs) = rd.hs() {
            storage.set_hard_state(hs).expect("hard state");
        }
        if rd.must_sync() {
            storage.flush().await.expect("flush");
        }
        outbox.extend(rd.take_persisted_messages());

        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.storage().set_commit(commit).expect("commit");
        }
        outbox.extend(light.take_messages());
        for entry in light.take_committed_entries() {
            self.machine.apply(&entry);
        }
        self.node.advance_apply();
    }

    /// The whole log, read back from sled.
    fn log_on_disk(&self) -> Vec<Entry> {
        let storage = self.storage();
        storage
            .entries(
                storage.first_index_cached(),
                storage.last_index_cached() + 1,
                None,
                GetEntriesContext::empty(false),
            )
            .expect("read log")
    }
}

struct Cluster {
    members: Vec<Member>,
    isolated: HashSet<u64>,
}

impl Cluster {
    fn bootstrap(size: u64) -> Self {
        let voters: Vec<u64> = (1..=size).collect();
        Cluster {
            members: voters
                .iter()
                .map(|&id| Member::bootstrap(id, &voters))
                .collect(),
            isolated: HashSet::new(),
        }
    }

    fn member(&mut self, id: u64) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .find(|m| m.node.raft.state == StateRole::Leader && !self.isolated.contains(&m.id))
            .map(|m| m.id)
    }

    /// One tick everywhere, then readies and deliveries until no message is left.
    async fn round(&mut self) {
        for member in &mut self.members {
            member.node.tick();
        }
        loop {
            let mut outbox = Vec::new();
            for member in &mut self.members {
                member.handle_ready(&mut outbox).await;
            }
            if outbox.is_empty() {
                return;
            }
            for msg in outbox {
                if self.isolated.contains(&msg.from) || self.isolated.contains(&msg.to) {
                    continue;
                }
                self.member(msg.to).node.step(msg).expect("step");
            }
        }
    }

    /// Runs rounds until `done` holds; fails the test after `max_rounds`.
    async fn run_until(&mut self, what: &str, max_rounds: usize, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..max_rounds {
            if done(self) {
                return;
            }
            self.round().await;
        }
        assert!(done(self), "not reached after {max_rounds} rounds: {what}");
    }

    async fn elect(&mut self) -> u64 {
        self.run_until("a leader is elected", 500, |c| c.leader().is_some())
            .await;
        self.leader().expect("leader")
    }

    /// Proposes `values` on the leader, ten per round.
    async fn propose(&mut self, values: std::ops::Range<u64>) {
        let values: Vec<u64> = values.collect();
        for chunk in values.chunks(10) {
            let leader = self.elect().await;
            for value in chunk {
                self.member(leader)
                    .node
                    .propose(vec![], value.to_be_bytes().to_vec())
                    .expect("propose");
            }
            self.round().await;
        }
    }

    async fn wait_applied(&mut self, ids: &[u64], values: &[u64]) {
        let what = format!("members {ids:?} applied {} values", values.len());
        self.run_until(&what, 500, |c| {
            ids.iter()
                .all(|&id| c.members[(id - 1) as usize].machine.applied().values == values)
        })
        .await;
    }
}

#[tokio::test]
async fn three_members_replicate_100_proposals_and_restart_from_disk() {
    let mut cluster = Cluster::bootstrap(3);
    for member in &cluster.members {
        assert_eq!(member.storage().first_index_cached(), 2);
    }
    cluster.elect().await;
    cluster.propose(0..100).await;
    let want: Vec<u64> = (0..100).collect();
    cluster.wait_applied(&[1, 2, 3], &want).await;

    // Every member holds the same log on disk, and a hard state that covers what
    // it applied.
    let log = cluster.members[0].log_on_disk();
    assert_eq!(log.first().map(|e| e.index), Some(2));
    assert!(
        log.len() >= 101,
        "100 proposals and a leader entry: {}",
        log.len()
    );
    for member in &cluster.members {
        assert_eq!(member.log_on_disk(), log, "member {}", member.id);
        let hs = member.storage().hard_state();
        assert!(
            hs.commit >= member.machine.applied().index,
            "member {}: {hs:?}",
            member.id
        );
        assert_eq!(member.storage().conf_state().voters, vec![1, 2, 3]);
    }

    // A follower restarts from its files with the hard state it persisted.
    let follower = cluster
        .members
        .iter()
        .find(|m| m.node.raft.state != StateRole::Leader)
        .expect("a follower")
        .id;
    let index = (follower - 1) as usize;
    let hs = cluster.members[index].storage().hard_state();
    let last_index = cluster.members[index].storage().last_index_cached();
    let member = cluster.members.remove(index).restart();
    assert_eq!(member.storage().hard_state(), hs);
    assert_eq!(member.node.raft.hard_state(), hs);
    assert_eq!(member.node.raft.raft_log.committed, hs.commit);
    assert_eq!(member.node.raft.raft_log.last_index(), last_index);
    assert_eq!(member.log_on_disk(), log);
    cluster.members.insert(index, member);

    // And it keeps replicating.
    cluster.propose(100..110).await;
    let want: Vec<u64> = (0..110).collect();
    cluster.wait_applied(&[1, 2, 3], &want).await;
}

#[tokio::test]
async fn a_member_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::bootstrap(3);
    let leader = cluster.elect().await;
    let lagging = (1..=3).find(|&id| id != leader).expect("a follower");
    let others: Vec<u64> = (1..=3).filter(|&id| id != lagging).collect();

    cluster.isolated.insert(lagging);
    cluster.propose(0..50).await;
    let want: Vec<u64> = (0..50).collect();
    cluster.wait_applied(&others, &want).await;

    // Save a snapshot and compact up to it everywhere the log has it.
    for &id in &others {
        let member = cluster.member(id);
        let (data, applied) = member.machine.encode();
        let meta = raft::eraftpb::SnapshotMetadata {
            index: applied,
            term: member.storage().term(applied).expect("term"),
            conf_state: Some(member.storage().conf_state()).into(),
            ..Default::default()
        };
        assert!(member
            .storage()
            .save_snapshot(&meta, |out| out.write_all(&data))
            .expect("save"));
        member.storage().compact(applied).expect("compact");
        assert_eq!(member.storage().first_index_cached(), applied);
    }
    let compacted_to = cluster.member(leader).storage().snapshot_index();
    assert!(cluster.member(lagging).storage().last_index_cached() < compacted_to);

    cluster.isolated.clear();
    cluster.wait_applied(&[lagging], &want).await;
    let storage = cluster.member(lagging).storage();
    assert!(
        storage.snapshot_index() >= compacted_to,
        "caught up by snapshot: truncated at {}",
        storage.snapshot_index()
    );
    assert_eq!(storage.first_index_cached(), storage.snapshot_index() + 1);
    assert_eq!(storage.conf_state().voters, vec![1, 2, 3]);

    // The log goes on after the snapshot, across a restart too.
    cluster.propose(50..60).await;
    let want: Vec<u64> = (0..60).collect();
    cluster.wait_applied(&[1, 2, 3], &want).await;
    let index = (lagging - 1) as usize;
    let member = cluster.members.remove(index).restart();
    assert_eq!(
        member.log_on_disk().last().map(|e| e.index),
        Some(member.storage().last_index_cached())
    );
    cluster.members.insert(index, member);
    // It starts from its snapshot and re-applies the log after it.
    cluster.wait_applied(&[lagging], &want).await;
    cluster.propose(60..70).await;
    let want: Vec<u64> = (0..70).collect();
    cluster.wait_applied(&[1, 2, 3], &want).await;
}
