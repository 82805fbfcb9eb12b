//! State-machine tests: determinism, all-or-nothing commands, snapshots.

use super::*;
use crate::fixtures::deployment;

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(8 * 1024 * 1024)
        .open()
        .expect("open sled");
    let store = Store::open(&db).expect("open store");
    (dir, store)
}

fn apply(names: &[(&str, u32)], now: i64) -> Command {
    Command::Apply {
        deployments: names.iter().map(|(n, r)| deployment(n, *r)).collect(),
        now_unix_ms: now,
    }
}

fn r(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

/// A log exercising every command kind, including refusals.
fn sample_log() -> Vec<Command> {
    vec![
        apply(&[("web", 3), ("api", 2)], 1_000),
        apply(&[("web", 3)], 2_000),
        apply(&[("web", 5)], 3_000),
        Command::Scale {
            target: r("api"),
            replicas: 7,
            now_unix_ms: 4_000,
        },
        Command::Delete {
            refs: vec![r("api"), r("missing")],
            ignore_not_found: false,
        },
        Command::Delete {
            refs: vec![r("api"), r("missing")],
            ignore_not_found: true,
        },
        apply(&[("worker", 1)], 5_000),
    ]
}

#[test]
fn same_log_gives_same_state_hash_on_every_member() {
    let members: Vec<_> = (0..3).map(|_| temp_store()).collect();
    for (_dir, store) in &members {
        for (i, c) in sample_log().iter().enumerate() {
            let _ = store.apply(i as u64 + 2, 1, c).expect("apply");
        }
    }
    let hashes: Vec<String> = members
        .iter()
        .map(|(_, s)| s.state_hash().expect("hash"))
        .collect();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "hashes differ: {hashes:?}"
    );
    let (_, first) = &members[0];
    assert_eq!(first.applied().expect("applied"), (8, 1));
    let names: Vec<String> = first
        .deployments(None)
        .expect("list")
        .into_iter()
        .map(|d| d.deployment.metadata.name)
        .collect();
    assert_eq!(names, ["web", "worker"]);
}

#[test]
fn apply_reports_created_unchanged_configured_and_bumps_generation() {
    let (_dir, store) = temp_store();
    let outcomes = |res: Result<WriteResult, WriteError>| match res {
        Ok(WriteResult::Applied(v)) => v.into_iter().map(|(_, o, g)| (o, g)).collect::<Vec<_>>(),
        other => panic!("unexpected {other:?}"),
    };
    let first = store.apply(2, 1, &apply(&[("web", 3)], 10)).expect("apply");
    assert_eq!(outcomes(first), [(ApplyOutcome::Created, 1)]);
    let same = store.apply(3, 1, &apply(&[("web", 3)], 20)).expect("apply");
    assert_eq!(outcomes(same), [(ApplyOutcome::Unchanged, 1)]);
    let changed = store.apply(4, 1, &apply(&[("web", 4)], 30)).expect("apply");
    assert_eq!(outcomes(changed), [(ApplyOutcome::Configured, 2)]);
    let stored = store
        .deployment("default", "web")
        .expect("get")
        .expect("exists");
    assert_eq!((stored.created_unix_ms, stored.updated_unix_ms), (10, 30));
}

#[test]
fn delete_with_a_missing_name_changes_nothing() {
    let (_dir, store) = temp_store();
    let _ = store.apply(2, 1, &apply(&[("web", 1)], 1)).expect("apply");
    let before = store.state_hash().expect("hash");
    let res = store
        .apply(
            3,
            1,
            &Command::Delete {
                refs: vec![r("web"), r("nope")],
                ignore_not_found: false,
            },
        )
        .expect("apply");
    assert!(matches!(res, Err(WriteError::NotFound { ref name, .. }) if name == "nope"));
    assert_eq!(store.state_hash().expect("hash"), before);
    assert!(store.deployment("default", "web").expect("get").is_some());
    assert_eq!(
        store.applied().expect("applied").0,
        3,
        "a refused command still advances applied"
    );
}

#[test]
fn scale_of_missing_deployment_is_refused() {
    let (_dir, store) = temp_store();
    let res = store
        .apply(
            2,
            1,
            &Command::Scale {
                target: r("ghost"),
                replicas: 3,
                now_unix_ms: 1,
            },
        )
        .expect("apply");
    assert!(matches!(res, Err(WriteError::NotFound { .. })));
}

#[test]
fn snapshot_restores_identical_state() {
    let (_a, source) = temp_store();
    for (i, c) in sample_log().iter().enumerate() {
        let _ = source.apply(i as u64 + 2, 3, c).expect("apply");
    }
    source
        .apply_membership(
            20,
            3,
            Some(&Member {
                id: 4,
                address: "127.0.0.4:7001".into(),
            }),
            None,
        )
        .expect("membership");
    let (data, index) = source.snapshot_data().expect("snapshot");
    assert_eq!(index, 20);

    let (_b, target) = temp_store();
    let _ = target
        .apply(2, 1, &apply(&[("stale", 1)], 1))
        .expect("apply");
    target.restore(&data, 20, 3, b"meta").expect("restore");
    assert_eq!(
        target.state_hash().expect("hash"),
        source.state_hash().expect("hash")
    );
    assert_eq!(target.applied().expect("applied"), (20, 3));
    assert!(target
        .deployment("default", "stale")
        .expect("get")
        .is_none());
    assert_eq!(target.members().expect("members").len(), 1);
    assert_eq!(
        target.snapshot_meta().expect("meta").as_deref(),
        Some(&b"meta"[..])
    );
}

#[test]
fn corrupt_snapshot_is_an_error_not_a_panic() {
    let (_dir, store) = temp_store();
    for bad in [
        &b""[..],
        b"DRS1",
        b"DRS1\0\0\0\0\0\0\0\x05",
        b"XXXX\0\0\0\0\0\0\0\0",
        b"DRS1\0\0\0\0\0\0\0\x01\0\0\0\x09ab",
    ] {
        assert!(
            store.restore(bad, 5, 1, b"").is_err(),
            "{bad:?} should be refused"
        );
    }
}

fn replica(name: &str, deployment: &str, slot: u32) -> ReplicaRecord {
    ReplicaRecord {
        namespace: "default".into(),
        name: name.into(),
        deployment: deployment.into(),
        slot,
        revision: "abcde".into(),
        node: None,
        pending_reason: String::new(),
        created_unix_ms: 1,
        observed: ReplicaObserved::default(),
    }
}

fn node_registration(name: &str) -> Command {
    Command::RegisterNode {
        node: NodeRegistration {
            name: name.into(),
            labels: Default::default(),
            capacity: Resources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
            },
            address: "127.0.1.1:7101".into(),
            runtime: "process".into(),
            agent_version: "0.1.0".into(),
            incarnation: "i1".into(),
        },
        now_unix_ms: 5,
    }
}

#[test]
fn reconcile_skips_taken_slots_and_one_entry_sees_its_own_writes() {
    let (_dir, store) = temp_store();
    let create = Command::Reconcile {
        create: vec![
            replica("web-a-0", "web", 0),
            replica("web-a-1", "web", 1),
            replica("web-b-1", "web", 1),
        ],
        remove: vec![],
    };
    let _ = store.apply(2, 1, &create).expect("apply");
    let names: Vec<String> = store
        .replicas(None)
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        ["web-a-0", "web-a-1"],
        "slot 1 was taken earlier in the same entry"
    );
    // Remove and re-create a slot in one entry.
    let swap = Command::Reconcile {
        create: vec![replica("web-c-1", "web", 1)],
        remove: vec![r("web-a-1")],
    };
    let _ = store.apply(3, 1, &swap).expect("apply");
    let names: Vec<String> = store
        .replicas(None)
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["web-a-0", "web-c-1"]);
}

#[test]
fn an_agent_reports_only_for_replicas_bound_to_its_own_node() {
    let (_dir, store) = temp_store();
    let _ = store.apply(2, 1, &node_registration("n1")).expect("apply");
    let _ = store.apply(3, 1, &node_registration("n2")).expect("apply");
    let _ = store
        .apply(
            4,
            1,
            &Command::Reconcile {
                create: vec![replica("web-a-0", "web", 0)],
                remove: vec![],
            },
        )
        .expect("apply");
    let _ = store
        .apply(
            5,
            1,
            &Command::Schedule {
                place: vec![(r("web-a-0"), "n1".into())],
                unschedulable: vec![],
            },
        )
        .expect("apply");
    let running = ReplicaObserved {
        phase: ReplicaPhase::Running,
        ready: true,
        ..Default::default()
    };
    let report = Command::ReportStatus {
        reports: vec![("n2".into(), r("web-a-0"), running.clone())],
        now_unix_ms: 9,
    };
    let _ = store.apply(6, 1, &report).expect("apply");
    let rec = store.replicas(None).expect("list").remove(0);
    assert_eq!(
        rec.observed.phase,
        ReplicaPhase::Pending,
        "n2 cannot report for n1's replica"
    );
    let report = Command::ReportStatus {
        reports: vec![("n1".into(), r("web-a-0"), running)],
        now_unix_ms: 9,
    };
    let _ = store.apply(7, 1, &report).expect("apply");
    let rec = store.replicas(None).expect("list").remove(0);
    assert_eq!(
        (rec.observed.phase, rec.observed.reported_unix_ms),
        (ReplicaPhase::Running, 9)
    );
}

#[test]
fn scheduling_onto_an_unknown_node_or_twice_is_skipped() {
    let (_dir, store) = temp_store();
    let _ = store.apply(2, 1, &node_registration("n1")).expect("apply");
    let create = Command::Reconcile {
        create: vec![replica("web-a-0", "web", 0)],
        remove: vec![],
    };
    let _ = store.apply(3, 1, &create).expect("apply");
    let to_ghost = Command::Schedule {
        place: vec![(r("web-a-0"), "ghost".into())],
        unschedulable: vec![],
    };
    let _ = store.apply(4, 1, &to_ghost).expect("apply");
    assert_eq!(store.replicas(None).expect("list")[0].node, None);
    let place = |node: &str| Command::Schedule {
        place: vec![(r("web-a-0"), node.into())],
        unschedulable: vec![],
    };
    let _ = store.apply(5, 1, &place("n1")).expect("apply");
    let _ = store.apply(6, 1, &node_registration("n2")).expect("apply");
    let _ = store.apply(7, 1, &place("n2")).expect("apply");
    assert_eq!(
        store.replicas(None).expect("list")[0].node.as_deref(),
        Some("n1"),
        "bound replicas stay"
    );
}

#[test]
fn a_report_counts_only_while_the_replica_is_on_the_node_that_made_it() {
    let (_dir, store) = temp_store();
    for (i, n) in ["n1", "n2"].iter().enumerate() {
        let _ = store
            .apply(2 + i as u64, 1, &node_registration(n))
            .expect("apply");
    }
    let create = Command::Reconcile {
        create: vec![replica("web-a-0", "web", 0)],
        remove: vec![],
    };
    let _ = store.apply(4, 1, &create).expect("apply");
    let place = |node: &str| Command::Schedule {
        place: vec![(r("web-a-0"), node.into())],
        unschedulable: vec![],
    };
    let _ = store.apply(5, 1, &place("n1")).expect("apply");
    let running = ReplicaObserved {
        phase: ReplicaPhase::Running,
        ready: true,
        ..Default::default()
    };
    let report = Command::ReportStatus {
        reports: vec![("n1".into(), r("web-a-0"), running)],
        now_unix_ms: 9,
    };
    let _ = store.apply(6, 1, &report).expect("apply");
    let get = || store.replicas(None).expect("list").remove(0);
    assert!(get()
        .current_status()
        .is_some_and(|o| o.phase == ReplicaPhase::Running));

    let down = Command::NodeDown {
        node: "n1".into(),
        now_unix_ms: 10,
    };
    let _ = store.apply(7, 1, &down).expect("apply");
    assert_eq!(get().node, None);
    assert!(
        get().current_status().is_none(),
        "an unbound replica has no current status"
    );
    // Back onto n1 within the same breath: n1's report holds again, even if
    // its agent never saw the replica leave and so never reports it anew.
    let _ = store
        .apply(
            8,
            1,
            &Command::NodeUp {
                node: "n1".into(),
                now_unix_ms: 11,
            },
        )
        .expect("apply");
    let _ = store.apply(9, 1, &place("n1")).expect("apply");
    assert!(get()
        .current_status()
        .is_some_and(|o| o.phase == ReplicaPhase::Running));
    // Moved to n2 instead: Pending until n2 reports.
    let _ = store.apply(10, 1, &down).expect("apply");
    let _ = store.apply(11, 1, &place("n2")).expect("apply");
    assert!(get().current_status().is_none());
}

#[test]
fn join_tokens_are_stored_as_hashes_and_revoked_once() {
    let (_dir, store) = temp_store();
    let token = TokenRecord {
        id: "0a1b2c3d".into(),
        role: "agent".into(),
        secret_sha256: "ab".repeat(32),
        created_unix_ms: 1_000,
        expires_unix_ms: 2_000,
        revoked: false,
    };
    let create = Command::CreateToken {
        token: token.clone(),
    };
    assert!(store.apply(2, 1, &create).expect("apply").is_ok());
    assert_eq!(
        store.apply(3, 1, &create).expect("apply"),
        Err(WriteError::TokenExists("0a1b2c3d".into()))
    );
    let revoke = |id: &str| Command::RevokeToken { id: id.into() };
    assert_eq!(
        store.apply(4, 1, &revoke("ffffffff")).expect("apply"),
        Err(WriteError::TokenNotFound("ffffffff".into()))
    );
    assert_eq!(
        store.apply(5, 1, &revoke("0a1b2c3d")).expect("apply"),
        Ok(WriteResult::Changed(1))
    );
    assert_eq!(
        store.apply(6, 1, &revoke("0a1b2c3d")).expect("apply"),
        Ok(WriteResult::Changed(0))
    );
    let stored = store.token("0a1b2c3d").expect("read").expect("present");
    assert!(stored.revoked);
    assert_eq!(stored.secret_sha256, token.secret_sha256);
    assert_eq!(store.tokens().expect("list").len(), 1);
}
