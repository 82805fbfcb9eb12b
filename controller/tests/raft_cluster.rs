//! In-process raft clusters over the in-memory transport: real sled files,
//! real `RawNode`s, partitions by cutting links in the router.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_controller::raft::node::{self, Handle, Node, NodeConfig, NodeError};
use drover_controller::raft::storage::SledStorage;
use drover_controller::raft::transport::MemRouter;
use drover_controller::store::{Command, ObjectRef, Store, Write, WriteResult};
use tokio_util::sync::CancellationToken;

struct Member {
    id: u64,
    dir: tempfile::TempDir,
    running: Option<Running>,
}

struct Running {
    handle: Handle,
    store: Store,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

struct TestCluster {
    router: MemRouter,
    members: Vec<Member>,
    cfg: fn(u64) -> NodeConfig,
}

fn fast(id: u64) -> NodeConfig {
    NodeConfig {
        tick: Duration::from_millis(10),
        write_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_millis(300),
        ..NodeConfig::new(id)
    }
}

fn fast_small_log(id: u64) -> NodeConfig {
    NodeConfig {
        snapshot_interval: 50,
        trailing_entries: 10,
        ..fast(id)
    }
}

/// Entries far below the interval, but a byte bound that 30 applies pass.
fn fast_byte_bounded_log(id: u64) -> NodeConfig {
    NodeConfig {
        snapshot_interval: 1_000_000,
        snapshot_log_bytes: 8 << 10,
        trailing_entries: 10,
        ..fast(id)
    }
}

impl TestCluster {
    async fn start(n: u64, cfg: fn(u64) -> NodeConfig) -> TestCluster {
        let mut c = TestCluster {
            router: MemRouter::default(),
            members: (1..=n)
                .map(|id| Member {
                    id,
                    dir: tempfile::tempdir().expect("tempdir"),
                    running: None,
                })
                .collect(),
            cfg,
        };
        let voters: Vec<u64> = (1..=n).collect();
        for i in 0..c.members.len() {
            c.boot(i, &voters).await;
        }
        c
    }

    async fn boot(&mut self, i: usize, voters: &[u64]) {
        let m = &mut self.members[i];
        let db = drover_controller::fixtures::open_test_db(m.dir.path(), 8);
        let store = Store::default();
        let storage =
            SledStorage::open(&db, &m.dir.path().join("raft-snapshots")).expect("storage");
        if !storage.is_initialized() && !voters.is_empty() {
            let addrs: BTreeMap<u64, String> =
                voters.iter().map(|v| (*v, format!("mem:{v}"))).collect();
            drover_controller::server::bootstrap(&storage, &addrs).expect("bootstrap");
        }
        let (tx, rx) = node::channel();
        let (node, handle) = Node::new(
            (self.cfg)(m.id),
            storage,
            store.clone(),
            self.router.transport(m.id),
            tx,
            rx,
        )
        .expect("node");
        self.router.register(handle.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(node.run(stop.clone()));
        m.running = Some(Running {
            handle,
            store,
            stop,
            task,
        });
    }

    async fn stop(&mut self, i: usize) {
        let id = self.members[i].id;
        self.router.unregister(id);
        if let Some(r) = self.members[i].running.take() {
            r.stop.cancel();
            r.task.await.expect("join").expect("node ran cleanly");
            // The store and handle hold the sled db; drop them so it can reopen.
            drop(r.store);
            drop(r.handle);
        }
    }

    fn handle(&self, i: usize) -> &Handle {
        &self.members[i].running.as_ref().expect("running").handle
    }

    fn store(&self, i: usize) -> &Store {
        &self.members[i].running.as_ref().expect("running").store
    }

    /// Index of the member that leads with the highest term, waiting for one.
    async fn leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut best: Option<(u64, usize)> = None;
            for &i in among {
                let s = self.handle(i).status().await.expect("status");
                if s.role == "leader" && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, i));
                }
            }
            if let Some((_, i)) = best {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader elected within 10s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every member in `among` applied the same index with the same state hash.
    async fn converged(&self, among: &[usize]) -> (u64, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut seen = Vec::new();
            for &i in among {
                let s = self.handle(i).status().await.expect("status");
                seen.push((s.applied_index, s.state_hash));
            }
            if seen.windows(2).all(|w| w[0] == w[1]) {
                return seen.swap_remove(0);
            }
            assert!(
                Instant::now() < deadline,
                "members did not converge: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn apply(name: &str, replicas: u32) -> Write {
    let d = drover_controller::fixtures::deployment(name, replicas);
    Write::Command(Command::Apply {
        deployments: vec![d],
        now_unix_ms: 1,
    })
}

async fn write_ok(h: &Handle, w: Write) -> WriteResult {
    h.propose(w).await.expect("committed").expect("accepted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_replicate_and_every_member_reaches_the_same_state() {
    let c = TestCluster::start(3, fast).await;
    let l = c.leader(&[0, 1, 2]).await;
    for i in 0..20 {
        write_ok(c.handle(l), apply(&format!("app-{i}"), i)).await;
    }
    let (applied, _) = c.converged(&[0, 1, 2]).await;
    assert!(applied >= 22);
    for i in 0..3 {
        assert_eq!(c.store(i).deployments(None).len(), 20);
    }
    // A follower refuses a membership change and names the leader.
    let f = (l + 1) % 3;
    match c.handle(f).propose(Write::PromoteMember { id: 9 }).await {
        Err(NodeError::NotLeader { leader: Some(id) }) => assert_eq!(id, c.members[l].id),
        other => panic!("follower membership change: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_relays_a_write_and_answers_once_it_applied_it() {
    let c = TestCluster::start(3, fast).await;
    let l = c.leader(&[0, 1, 2]).await;
    let f = (l + 1) % 3;
    let result = write_ok(c.handle(f), apply("relayed", 2)).await;
    assert!(
        matches!(result, WriteResult::Applied(_)),
        "the follower answers with the apply's own result: {result:?}"
    );
    // Answered after it applied the entry itself: a read on it sees the write.
    assert!(
        c.store(f).deployment("default", "relayed").is_some(),
        "the follower that answered has the write"
    );
    // Many at once, from both followers, each answered with its own result.
    let mut writes = Vec::new();
    for i in 0..40 {
        let h = c.handle((l + 1 + i % 2) % 3).clone();
        writes.push(tokio::spawn(async move {
            h.propose(apply(&format!("r-{i}"), 1)).await
        }));
    }
    for w in writes {
        let answer = w.await.expect("task");
        assert!(
            matches!(answer, Ok(Ok(WriteResult::Applied(_)))),
            "relayed write: {answer:?}"
        );
    }
    c.converged(&[0, 1, 2]).await;
    for i in 0..3 {
        assert_eq!(c.store(i).deployments(None).len(), 41, "member {i}");
    }
}

/// Three members, a write ("before") applied on all of them, then the
/// leader cut off from the other two: the cluster and the old leader.
async fn with_the_leader_cut_off() -> (TestCluster, usize) {
    let c = TestCluster::start(3, fast).await;
    let old = c.leader(&[0, 1, 2]).await;
    write_ok(c.handle(old), apply("before", 1)).await;
    c.converged(&[0, 1, 2]).await;
    c.router.isolate(c.members[old].id);
    (c, old)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_relayed_to_a_leader_that_is_cut_off_is_unconfirmed_when_the_leader_changes() {
    let (c, old) = with_the_leader_cut_off().await;
    // The follower still follows the old leader: the write goes to it and
    // is lost. It is answered when the survivors elect a new leader (not at
    // its deadline: an unconfirmed answer after a leader change says zero).
    let f = (old + 1) % 3;
    let answer = c.handle(f).propose(apply("lost", 1)).await;
    assert!(
        matches!(answer, Err(NodeError::Unconfirmed(d)) if d.is_zero()),
        "a relayed write whose leader is gone: {answer:?}"
    );
    let rest: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = c.leader(&rest).await;
    assert_ne!(new, old);
    // And the retry, once the follower knows the new leader, commits.
    c.handle(f)
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("the follower learns the new leader");
    write_ok(c.handle(f), apply("lost", 1)).await;
    c.router.heal();
    c.converged(&[0, 1, 2]).await;
    for i in 0..3 {
        assert!(
            c.store(i).deployment("default", "lost").is_some(),
            "member {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_minority_cannot_commit_and_the_majority_can() {
    let (c, old) = with_the_leader_cut_off().await;
    // The cut-off leader may still accept the proposal, but it must never commit.
    let stranded = c.handle(old).propose(apply("stranded", 1)).await;
    assert!(
        matches!(
            stranded,
            Err(NodeError::Unconfirmed(_) | NodeError::NotLeader { .. } | NodeError::Dropped(_))
        ),
        "minority write must not commit: {stranded:?}"
    );
    let rest: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = c.leader(&rest).await;
    write_ok(c.handle(new), apply("after", 1)).await;
    // A linearizable read on the isolated member cannot be served.
    assert!(c.handle(old).read_barrier().await.is_err());

    c.router.heal();
    c.converged(&[0, 1, 2]).await;
    for i in 0..3 {
        let names: Vec<String> = c
            .store(i)
            .deployments(None)
            .into_iter()
            .map(|d| d.deployment.metadata.name)
            .collect();
        assert_eq!(names, ["after", "before"], "member {i}");
    }
}

/// With one member stopped, `writes` applies at the leader must compact
/// the log past `compacted_past` (`why` says by what); the member then
/// catches up from the snapshot.
async fn compacts_and_a_lagging_member_catches_up(
    cfg: fn(u64) -> NodeConfig,
    writes: usize,
    compacted_past: u64,
    why: &str,
) {
    let mut c = TestCluster::start(3, cfg).await;
    let l = c.leader(&[0, 1, 2]).await;
    let lagging = (l + 1) % 3;
    c.stop(lagging).await;
    for i in 0..writes {
        write_ok(c.handle(l), apply(&format!("app-{i}"), 1)).await;
    }
    // Snapshots are saved on a thread of their own and the log is compacted
    // once one is saved: wait for it rather than read the status once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.handle(l).status().await.expect("status");
        if s.snapshot_index > compacted_past {
            break;
        }
        assert!(Instant::now() < deadline, "{why}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.boot(lagging, &[]).await;
    c.converged(&[0, 1, 2]).await;
    assert_eq!(c.store(lagging).deployments(None).len(), writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_catches_up_from_a_snapshot_after_compaction() {
    compacts_and_a_lagging_member_catches_up(
        fast_small_log,
        200,
        100,
        "leader should have compacted",
    )
    .await;
}

/// The log's bytes bound it too: large entries are compacted long before the
/// entry count is reached, and a member that missed them catches up from
/// the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_large_entries_is_compacted_by_its_bytes() {
    compacts_and_a_lagging_member_catches_up(
        fast_byte_bounded_log,
        60,
        20,
        "60 entries of a few hundred bytes each pass the 8 KiB bound",
    )
    .await;
}

/// The first snapshot sent to the lagging member is lost on the way: the
/// leader hears of it, sends another, and the member catches up under the
/// same leader (before, it stayed paused until the leadership changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_snapshot_is_sent_again_without_a_leader_change() {
    let mut c = TestCluster::start(3, fast_small_log).await;
    let l = c.leader(&[0, 1, 2]).await;
    let term = c.handle(l).status().await.expect("status").term;
    let lagging = (l + 1) % 3;
    c.stop(lagging).await;
    for i in 0..200 {
        write_ok(c.handle(l), apply(&format!("app-{i}"), 1)).await;
    }
    c.router.lose_snapshots(1);
    c.boot(lagging, &[]).await;
    c.converged(&[0, 1, 2]).await;
    assert_eq!(c.store(lagging).deployments(None).len(), 200);
    let s = c.handle(l).status().await.expect("status");
    assert!(
        s.role == "leader" && s.term == term,
        "same leader, same term: {s:?}"
    );
}

/// A member that meets a committed entry written by a newer drover (as an
/// old member does during a rolling upgrade) stops applying there, says so
/// in its status, and never skips it: nothing after it is applied either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_from_a_newer_drover_stops_applying_with_a_sentence_never_skips() {
    let mut c = TestCluster::start(1, fast).await;
    c.leader(&[0]).await;
    write_ok(c.handle(0), apply("before", 1)).await;
    c.stop(0).await;

    // A newer leader's entry, committed, as the log would hold it.
    let (newer, last) = {
        let db = drover_controller::fixtures::open_test_db(c.members[0].dir.path(), 8);
        let storage = SledStorage::open(&db, &c.members[0].dir.path().join("raft-snapshots"))
            .expect("storage");
        let last = storage.last_index_cached();
        let entry = raft::prelude::Entry {
            index: last + 1,
            term: storage.hard_state().term,
            data: br#"{"format":99,"id":7,"command":{"Future":{}}}"#.to_vec().into(),
            ..Default::default()
        };
        storage.append(&[entry]).expect("append");
        storage.set_commit(last + 1).expect("commit");
        db.flush().expect("flush");
        (last + 1, last)
    };
    c.boot(0, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = c.handle(0).status().await.expect("status");
        if !s.stalled.is_empty() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        s.stalled
            .contains(&format!("stopped applying the log at entry {newer}"))
            && s.stalled.contains("newer drover (command format 99"),
        "{s:?}"
    );
    assert_eq!(s.applied_index, last, "the state stops before the entry");

    // Later writes commit (this member still keeps the log) but are not
    // applied, and reads are not served from the stale state.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        c.handle(0).propose(apply("after", 1)),
    )
    .await;
    let names: Vec<String> = c
        .store(0)
        .deployments(None)
        .into_iter()
        .map(|d| d.deployment.metadata.name)
        .collect();
    assert_eq!(names, ["before"]);
    assert!(c.handle(0).read_barrier().await.is_err());
}

/// A snapshot from the leader lands in one transaction with the log
/// truncated to it: this member's own divergent, uncommitted entries at and
/// past its index are gone, and after a restart it runs from the snapshot's
/// state, never applying an entry of the other history on top of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_replaces_a_divergent_log_at_once_and_survives_a_restart() {
    use raft::prelude::{ConfState, Snapshot, SnapshotMetadata};

    let mut c = TestCluster::start(1, fast).await;
    c.leader(&[0]).await;
    for name in ["a", "b", "c"] {
        write_ok(c.handle(0), apply(name, 1)).await;
    }
    c.stop(0).await;

    {
        let db = drover_controller::fixtures::open_test_db(c.members[0].dir.path(), 8);
        let storage = SledStorage::open(&db, &c.members[0].dir.path().join("raft-snapshots"))
            .expect("storage");
        let last = storage.last_index_cached();
        // This member's last two entries were never committed (they are the
        // tail of a history the cluster went past).
        let mut hs = storage.hard_state();
        hs.commit = last - 2;
        storage.set_hard_state(&hs).expect("hard state");
        // The leader's snapshot: another history, holding only deployment
        // "x", at an index this member's log has, with a newer term.
        let meta = SnapshotMetadata {
            index: last - 1,
            term: storage.hard_state().term + 1,
            conf_state: Some(ConfState {
                voters: vec![1],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let other = Store::new(drover_controller::store::state::initial(
            &[(1, "mem:1".to_string())].into_iter().collect(),
        ));
        let Write::Command(x) = apply("x", 1) else {
            unreachable!("apply() builds a command")
        };
        let _ = other.apply(meta.index, meta.term, &x);
        let mut snap = Snapshot::default();
        snap.set_data(other.snapshot().encode().expect("encode").into());
        snap.set_metadata(meta);
        storage.apply_snapshot(&snap).expect("install");
        assert_eq!(
            storage.last_index_cached(),
            last - 1,
            "the divergent tail is gone"
        );
        db.flush().expect("flush");
    }
    c.boot(0, &[]).await;
    c.leader(&[0]).await;
    write_ok(c.handle(0), apply("after", 1)).await;
    let names: Vec<String> = c
        .store(0)
        .deployments(None)
        .into_iter()
        .map(|d| d.deployment.metadata.name)
        .collect();
    assert_eq!(names, ["after", "x"], "nothing of the other history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_restart_from_their_sled_files() {
    let mut c = TestCluster::start(3, fast).await;
    let l = c.leader(&[0, 1, 2]).await;
    for i in 0..10 {
        write_ok(c.handle(l), apply(&format!("app-{i}"), 2)).await;
    }
    let delete = Write::Command(Command::Delete {
        refs: vec![ObjectRef {
            namespace: "default".into(),
            name: "app-3".into(),
        }],
        ignore_not_found: false,
        now_unix_ms: 0,
        grace_period_seconds: None,
    });
    write_ok(c.handle(l), delete).await;
    let (_, hash) = c.converged(&[0, 1, 2]).await;
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in 0..3 {
        c.boot(i, &[]).await;
    }
    let l = c.leader(&[0, 1, 2]).await;
    write_ok(c.handle(l), apply("after-restart", 1)).await;
    let (_, new_hash) = c.converged(&[0, 1, 2]).await;
    assert_ne!(hash, new_hash);
    for i in 0..3 {
        let list = c.store(i).deployments(None);
        assert_eq!(list.len(), 10, "9 survivors + 1 new on member {i}");
        assert!(list.iter().all(|d| d.deployment.metadata.name != "app-3"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_add_and_remove_a_member() {
    let mut c = TestCluster::start(3, fast).await;
    let l = c.leader(&[0, 1, 2]).await;
    write_ok(c.handle(l), apply("web", 1)).await;
    // Member 4 starts empty and learns everything from the leader's snapshot.
    c.members.push(Member {
        id: 4,
        dir: tempfile::tempdir().expect("tempdir"),
        running: None,
    });
    c.boot(3, &[]).await;
    let added = c
        .handle(l)
        .propose(Write::AddMember {
            id: 4,
            address: "mem:4".into(),
        })
        .await;
    assert!(
        matches!(added, Ok(Ok(WriteResult::MembershipChanged))),
        "{added:?}"
    );
    c.converged(&[0, 1, 2, 3]).await;
    let s = c.handle(3).status().await.expect("status");
    assert_eq!(
        (s.voters.clone(), s.learners.clone()),
        (vec![1, 2, 3], vec![4]),
        "it joins as a learner"
    );
    assert_eq!(c.store(3).deployments(None).len(), 1);
    let promoted = c.handle(l).propose(Write::PromoteMember { id: 4 }).await;
    assert!(matches!(promoted, Ok(Ok(_))), "{promoted:?}");
    c.converged(&[0, 1, 2, 3]).await;
    let s = c.handle(3).status().await.expect("status");
    assert_eq!((s.voters, s.learners), (vec![1, 2, 3, 4], vec![]));
    let again = c.handle(l).propose(Write::PromoteMember { id: 4 }).await;
    assert!(matches!(again, Err(NodeError::Refused(_))), "{again:?}");

    let again = c
        .handle(l)
        .propose(Write::AddMember {
            id: 4,
            address: "mem:4".into(),
        })
        .await;
    assert!(matches!(again, Err(NodeError::Refused(_))), "{again:?}");

    let victim = (l + 1) % 3;
    let removed = c
        .handle(l)
        .propose(Write::RemoveMember {
            id: c.members[victim].id,
        })
        .await;
    assert!(matches!(removed, Ok(Ok(_))), "{removed:?}");
    let rest: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    c.converged(&rest).await;
    let s = c.handle(l).status().await.expect("status");
    assert_eq!(s.voters.len(), 3);
    assert!(!s.voters.contains(&c.members[victim].id));
}
