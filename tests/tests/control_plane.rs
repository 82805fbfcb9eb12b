//! The control plane end to end: three real controller processes on
//! 127.0.0.1/.2/.3, SIGKILLed and restarted for real, driven through the gRPC
//! API and through droverctl as a user would.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_proto::pb;
use drover_tests::cluster::{apply, connect, err, list_replicas, manifest, names, ok};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(30);

/// Index of a running controller other than `not`.
fn other(c: &Cluster, not: usize) -> usize {
    (0..c.controllers.len())
        .find(|i| *i != not && c.controllers[*i].is_running())
        .expect("another running controller")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_through_a_follower_and_read_from_every_controller() {
    let c = Cluster::start(3).await.expect("cluster");
    let leader = c.wait_for_leader(T).await.expect("leader");
    let follower = other(&c, leader);

    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, manifest("web", 3)).expect("write manifest");
    let file = file.to_string_lossy().into_owned();
    let out = ok(&c.ctl_at(follower).run(&["apply", "-f", &file]));
    assert_eq!(out.trim(), "deployment.apps/web created");
    let again = ok(&c.ctl_at(follower).run(&["apply", "-f", &file]));
    assert_eq!(again.trim(), "deployment.apps/web unchanged");

    for i in 0..3 {
        let out = ok(&c.ctl_at(i).run(&["get", "deployments", "-o", "name"]));
        assert_eq!(
            out.trim(),
            "deployment.apps/web",
            "linearizable read from controller {}",
            i + 1
        );
    }
    c.wait_converged(T).await.expect("converged");
    for i in 0..3 {
        let mut client = c.client(i).await.expect("client");
        assert_eq!(names(&mut client, true).await.expect("stale list"), ["web"]);
    }

    let out = ok(&c
        .ctl()
        .run(&["scale", "deployment", "web", "--replicas", "5"]));
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let yaml = ok(&c
        .ctl_at(follower)
        .run(&["get", "deployment", "web", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&yaml).expect("json output");
    assert_eq!(v["spec"]["replicas"], 5);

    let out = ok(&c.ctl().run(&["delete", "deployment", "web"]));
    assert!(out.contains("deleted"), "{out}");
    let e = err(&c.ctl().run(&["get", "deployment", "web"]));
    assert!(e.contains("not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_elects_another_and_loses_nothing() {
    let mut c = Cluster::start(3).await.expect("cluster");
    let leader = c.wait_for_leader(T).await.expect("leader");
    let mut client = c.client(other(&c, leader)).await.expect("client");
    for i in 0..10 {
        apply(&mut client, &format!("before-{i}"), 1)
            .await
            .expect("acknowledged");
    }
    c.kill(leader);
    let new_leader = c.wait_for_leader(T).await.expect("a new leader");
    assert_ne!(new_leader, leader);
    for i in 0..10 {
        apply(&mut client, &format!("after-{i}"), 1)
            .await
            .expect("acknowledged after failover");
    }
    let got: BTreeSet<String> = names(&mut client, false)
        .await
        .expect("list")
        .into_iter()
        .collect();
    assert_eq!(got.len(), 20, "{got:?}");

    c.restart(leader).expect("restart");
    let (_, _) = c
        .wait_converged(T)
        .await
        .expect("the restarted controller caught up");
    let mut back = c.client(leader).await.expect("client");
    assert_eq!(names(&mut back, true).await.expect("list").len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_from_sled_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(3).await.expect("cluster");
    let mut client = c.client(0).await.expect("client");
    // Zero replicas: with no agents the control loops would otherwise keep
    // writing (replicas, pending reasons) while the hashes are compared.
    for i in 0..15 {
        apply(&mut client, &format!("app-{i}"), 0)
            .await
            .expect("acknowledged");
    }
    let (_, hash) = c.wait_converged(T).await.expect("converged");
    // SIGKILL, not a clean stop: nothing gets a chance to flush on the way out.
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i).expect("restart");
    }
    c.wait_for_leader(T).await.expect("leader after restart");
    let (_, after) = c.wait_converged(T).await.expect("converged after restart");
    assert_eq!(hash, after, "state changed across a restart");
    let mut client = c.client(2).await.expect("client");
    assert_eq!(names(&mut client, false).await.expect("list").len(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_during_a_leader_kill_are_all_kept() {
    let mut c = Cluster::start(3).await.expect("cluster");
    let addresses = c.addresses();
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = tokio::task::JoinSet::new();
    for client_no in 0..8 {
        let addresses = addresses.clone();
        let acknowledged = acknowledged.clone();
        let security = c.security.clone();
        clients.spawn(async move {
            let mut server = client_no % addresses.len();
            for n in 0..25 {
                let name = format!("c{client_no}-n{n}");
                // Each apply is tried once per controller at most; an error is
                // "not acknowledged", which is allowed, a lost ack is not.
                for _ in 0..addresses.len() {
                    let Ok(mut client) = connect(&addresses[server], &security).await else {
                        server = (server + 1) % addresses.len();
                        continue;
                    };
                    if apply(&mut client, &name, 1).await.is_ok() {
                        acknowledged.lock().expect("lock").push(name.clone());
                        break;
                    }
                    server = (server + 1) % addresses.len();
                }
            }
        });
    }
    // Kill the leader once the applies are under way.
    let leader = c.wait_for_leader(T).await.expect("leader");
    let start = Instant::now();
    while acknowledged.lock().expect("lock").len() < 40 && start.elapsed() < T {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill(leader);
    while clients.join_next().await.is_some() {}
    c.restart(leader).expect("restart");
    c.wait_for_leader(T).await.expect("leader");
    c.wait_converged(T).await.expect("converged");

    let acked = acknowledged.lock().expect("lock").clone();
    assert!(
        acked.len() >= 150,
        "too few applies acknowledged: {}",
        acked.len()
    );
    for i in 0..3 {
        let mut client = c.client(i).await.expect("client");
        let present: BTreeSet<String> = names(&mut client, true)
            .await
            .expect("list")
            .into_iter()
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(*n)).collect();
        assert!(
            lost.is_empty(),
            "controller {} lost acknowledged applies: {lost:?}",
            i + 1
        );
    }
    eprintln!(
        "{} of 200 applies acknowledged, all present on all 3 controllers",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_quorum_fails_with_a_clear_error_in_bounded_time() {
    let mut c = Cluster::start(3).await.expect("cluster");
    c.kill(1);
    c.kill(2);
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, manifest("web", 1)).expect("write manifest");
    let started = Instant::now();
    let e = err(&c.ctl_at(0).run(&["apply", "-f", &file.to_string_lossy()]));
    let took = started.elapsed();
    assert!(e.contains("no leader"), "{e}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(e.trim().lines().count(), 1, "one sentence: {e}");
    // Reads say the same, and --stale still answers from local state.
    let e = err(&c.ctl_at(0).run(&["get", "deployments"]));
    assert!(e.contains("no leader"), "{e}");
    ok(&c.ctl_at(0).run(&["get", "deployments", "--stale"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let c = Cluster::start(3).await.expect("cluster");
    let mut client = c.client(0).await.expect("client");
    // Zero replicas, so the control loops have nothing to write meanwhile.
    apply(&mut client, "keep", 0).await.expect("apply");
    let (_, before) = c.wait_converged(T).await.expect("converged");

    // Invalid documents sent straight to the API (droverctl would stop them first).
    let bad = [
        ("garbage.yaml", "{{{ not yaml".to_string()),
        (
            "kind.yaml",
            manifest("svc", 1).replace("kind: Deployment", "kind: Service"),
        ),
        (
            "api.yaml",
            manifest("old", 1).replace("apps/v1", "extensions/v1beta1"),
        ),
        ("name.yaml", manifest("Bad_Name", 1)),
        (
            "replicas.yaml",
            manifest("neg", 1).replace("replicas: 1", "replicas: -3"),
        ),
        (
            "huge.yaml",
            manifest("huge", 1).replace("replicas: 1", "replicas: 100000000"),
        ),
        (
            "qty.yaml",
            manifest("qty", 1).replace("memory: 16Mi", "memory: 12XB"),
        ),
        (
            "selector.yaml",
            manifest("sel", 1).replacen("app: sel", "app: other", 2),
        ),
    ];
    for (name, content) in bad {
        // Each bad document beside a good one: all or nothing.
        let status = client
            .apply(pb::ApplyRequest {
                files: vec![
                    pb::ManifestFile {
                        name: "good.yaml".into(),
                        content: manifest("good", 1),
                    },
                    pb::ManifestFile {
                        name: name.into(),
                        content,
                    },
                ],
                ..Default::default()
            })
            .await
            .expect_err(name);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name}: {status:?}"
        );
        assert!(
            status.message().starts_with(name),
            "{name}: error should name the file: {}",
            status.message()
        );
    }

    // A request over the 4 MiB limit is refused by the server itself.
    let big = "#".repeat(5 * 1024 * 1024);
    let status = client
        .apply(pb::ApplyRequest {
            files: vec![pb::ManifestFile {
                name: "big.yaml".into(),
                content: big,
            }],
            ..Default::default()
        })
        .await
        .expect_err("oversized");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );

    // A 50 MB file through droverctl: refused before anything is sent.
    let file = c.dir.path().join("fifty.yaml");
    let mut f = std::fs::File::create(&file).expect("create");
    let line = format!("# {}\n", "x".repeat(1022));
    for _ in 0..(50 * 1024) {
        f.write_all(line.as_bytes()).expect("write");
    }
    drop(f);
    let e = err(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));
    assert!(e.contains("fifty.yaml") && e.contains("MiB"), "{e}");

    // Garbage bytes on every controller's port: refused, nobody dies.
    for ctl in &c.controllers {
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0xffu8; 4096][..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x08\x00\x00\x00\x00\x00garbage",
        ] {
            if let Ok(mut s) = TcpStream::connect(&ctl.address) {
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(junk);
            }
        }
    }
    for i in 0..3 {
        c.member_status(i)
            .await
            .expect("still serving after garbage");
    }
    let (_, after) = c.wait_converged(T).await.expect("converged");
    assert_eq!(before, after, "refused requests changed the state");
    assert_eq!(names(&mut client, false).await.expect("list"), ["keep"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_controller_joins_and_a_member_is_removed() {
    let mut c = Cluster::start(3).await.expect("cluster");
    let mut client = c.client(0).await.expect("client");
    apply(&mut client, "web", 2).await.expect("apply");

    let joiner = c.spawn_joiner(4).expect("spawn joiner");
    let address = c.controllers[joiner].address.clone();
    let out = ok(&c
        .ctl_at(1)
        .run(&["cluster", "add", "--id", "4", "--address", &address]));
    assert!(out.contains('4'), "{out}");
    c.wait_converged(T).await.expect("the new member caught up");
    let mut new_client = c.client(joiner).await.expect("client");
    assert_eq!(names(&mut new_client, false).await.expect("list"), ["web"]);

    let status = ok(&c.ctl().run(&["cluster", "status"]));
    assert_eq!(
        status.lines().filter(|l| l.contains("127.0.0.")).count(),
        4,
        "{status}"
    );

    ok(&c.ctl_at(joiner).run(&["cluster", "remove", "2"]));
    c.kill(1);
    let mut client = c.client(joiner).await.expect("client");
    apply(&mut client, "after-remove", 1)
        .await
        .expect("3 of 3 remaining members commit");
    let status = ok(&c.ctl_at(0).run(&["cluster", "status"]));
    assert_eq!(
        status.lines().filter(|l| l.contains("127.0.0.")).count(),
        3,
        "{status}"
    );
}

/// A new member catches up from a snapshot several times larger than one
/// `InstallSnapshot` chunk (1 MiB), streamed over mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_catches_up_from_a_snapshot_streamed_in_chunks() {
    let mut c = Cluster::start(3).await.expect("cluster");
    let mut client = c.client(0).await.expect("client");
    // About 3 MiB of state: 20 deployments with a 150 kB annotation each.
    let note = "x".repeat(150_000);
    for i in 0..20 {
        drover_tests::cluster::apply_noted(&mut client, &format!("big-{i}"), 0, &note)
            .await
            .expect("apply");
    }
    let joiner = c.spawn_joiner(4).expect("spawn joiner");
    let address = c.controllers[joiner].address.clone();
    ok(&c
        .ctl_at(1)
        .run(&["cluster", "add", "--id", "4", "--address", &address]));
    c.wait_converged(T).await.expect("the new member caught up");
    let log = std::fs::read_to_string(&c.controllers[joiner].log).unwrap_or_default();
    assert!(
        log.contains("installing snapshot from the leader"),
        "it caught up by snapshot"
    );
    let mut new_client = c.client(joiner).await.expect("client");
    assert_eq!(names(&mut new_client, false).await.expect("list").len(), 20);
}

/// `cluster add` at an address where nothing answers: the new member stays a
/// learner (it never votes), the add fails with a sentence that says so and
/// what to do, and the cluster keeps committing even after one more voter
/// dies. A voter added at once would have made 2 of 4 too few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_at_a_wrong_address_stays_a_learner_and_the_cluster_commits() {
    let mut c = Cluster::start(3).await.expect("cluster");
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let out = c
        .ctl()
        .run(&["cluster", "add", "--id", "4", "--address", &nobody]);
    assert!(!out.status.success());
    let e = err(&out);
    assert!(
        e.contains(&format!(
            "controller 4 at {nobody} did not catch up within 20s"
        )) && e.contains("added as a learner, which does not vote"),
        "{e}"
    );

    let leader = c.wait_for_leader(T).await.expect("leader");
    c.kill((leader + 1) % 3);
    let mut client = c.client(leader).await.expect("client");
    apply(&mut client, "after", 1)
        .await
        .expect("2 of the 3 voters commit");
    let status = ok(&c.ctl_at(leader).run(&["cluster", "status", "-o", "json"]));
    let json: serde_json::Value = serde_json::from_str(&status).expect("json");
    let four = json["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == 4))
        .cloned()
        .unwrap_or_default();
    assert_eq!(four["voter"], false, "{status}");
}

/// `get deployments -A -o yaml` is a backup: its `kind: List` applies back,
/// every deployment as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_yaml_output_applies_back_as_a_backup() {
    let c = Cluster::start(3).await.expect("cluster");
    let file = c.dir.path().join("two.yaml");
    let two = format!(
        "{}---\n{}",
        manifest("web", 2),
        manifest("api", 3).replace("name: api\n", "name: api\n  namespace: prod\n")
    );
    std::fs::write(&file, two).expect("write");
    ok(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));
    let backup = ok(&c.ctl().run(&["get", "deployments", "-A", "-o", "yaml"]));
    assert!(backup.contains("kind: List"), "{backup}");
    let saved = c.dir.path().join("backup.yaml");
    std::fs::write(&saved, &backup).expect("write backup");

    ok(&c.ctl().run(&["delete", "-f", &file.to_string_lossy()]));
    let out = ok(&c.ctl().run(&["apply", "-f", &saved.to_string_lossy()]));
    assert_eq!(
        out, "deployment.apps/web created\ndeployment.apps/api created\n",
        "both come back"
    );
    let listed = ok(&c.ctl().run(&["get", "deployments", "-A", "-o", "yaml"]));
    let specs = |text: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_norway::from_str(text).expect("yaml");
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|d| {
                serde_json::json!([d["metadata"]["namespace"], d["metadata"]["name"], d["spec"]])
            })
            .collect()
    };
    assert_eq!(specs(&listed), specs(&backup), "the same specs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_n_puts_a_manifest_without_a_namespace_into_that_namespace() {
    let c = Cluster::start(1).await.expect("cluster");
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, manifest("web", 1)).expect("write");
    let file = file.to_string_lossy().into_owned();

    let out = ok(&c.ctl().run(&["-n", "foo", "apply", "-f", &file]));
    assert_eq!(out, "deployment.apps/web created\n");
    let listed = ok(&c.ctl().run(&["get", "deployments", "-A", "-o", "name"]));
    assert_eq!(listed, "deployment.apps/web\n", "one deployment");
    let in_foo = ok(&c
        .ctl()
        .run(&["-n", "foo", "get", "deployments", "-o", "name"]));
    assert_eq!(in_foo, "deployment.apps/web\n", "and it is in foo");
    let in_default = ok(&c.ctl().run(&["get", "deployments", "-o", "name"]));
    assert_eq!(in_default, "", "nothing went to default");

    // diff -n compares against the object in foo: the same spec, exit 0.
    let same = c.ctl().run(&["-n", "foo", "diff", "-f", &file]);
    assert!(same.status.success(), "{}", err(&same));

    // A manifest that names another namespace is refused, naming both, and changes nothing.
    let prod = c.dir.path().join("prod.yaml");
    std::fs::write(
        &prod,
        manifest("api", 1).replace("name: api\n", "name: api\n  namespace: prod\n"),
    )
    .expect("write");
    let prod = prod.to_string_lossy().into_owned();
    for verb in ["apply", "diff", "delete"] {
        let refused = c.ctl().run(&["-n", "foo", verb, "-f", &prod]);
        assert!(!refused.status.success(), "{verb} must refuse");
        let e = err(&refused);
        assert!(
            e.contains("the namespace from the provided object \"prod\" does not match the namespace \"foo\""),
            "{verb}: {e}"
        );
    }
    let listed = ok(&c.ctl().run(&["get", "deployments", "-A", "-o", "name"]));
    assert_eq!(listed, "deployment.apps/web\n", "nothing changed");

    // delete -n -f removes it from foo.
    let out = ok(&c.ctl().run(&["-n", "foo", "delete", "-f", &file]));
    assert_eq!(out, "deployment.apps \"web\" deleted\n");
    let listed = ok(&c.ctl().run(&["get", "deployments", "-A", "-o", "name"]));
    assert_eq!(listed, "", "gone");
}

/// `cluster remove <leader>`: the leader hands its leadership over first, so
/// the survivors keep committing (raft-rs would otherwise keep the removed
/// leader as leader and drop every proposal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_hands_leadership_over_and_writes_go_on() {
    let c = Cluster::start(3).await.expect("cluster");
    let leader = c.wait_for_leader(T).await.expect("leader");
    let leader_id = c.controllers[leader].id.to_string();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // Through a follower, so the removal is forwarded to the leader itself.
    let out = ok(&c
        .ctl_at(survivors[0])
        .run(&["cluster", "remove", &leader_id]));
    assert!(!out.contains(&format!("127.0.0.{}", leader + 1)), "{out}");

    // Every survivor takes writes, and they agree on a leader among themselves.
    for (n, i) in survivors.iter().enumerate() {
        let mut client = c.client(*i).await.expect("client");
        apply(&mut client, &format!("after-{n}"), 1)
            .await
            .unwrap_or_else(|e| panic!("apply through controller {i}: {e}"));
    }
    for i in &survivors {
        let s = c.member_status(*i).await.expect("status");
        assert_ne!(
            s.leader_id.to_string(),
            leader_id,
            "the removed member still leads"
        );
        assert!(s.leader_id != 0, "controller {i} knows no leader");
    }
    let status = ok(&c.ctl_at(survivors[1]).run(&["cluster", "status"]));
    assert_eq!(
        status.lines().filter(|l| l.contains("127.0.0.")).count(),
        2,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lists_come_in_pages_and_droverctl_reads_them_all() {
    let c = Cluster::start(3).await.expect("cluster");
    let leader = c.wait_for_leader(T).await.expect("leader");
    let mut api = c.client(leader).await.expect("client");
    // No agents: every replica stays Pending, and the count is exact.
    for (name, replicas) in [("big", 1_201), ("mid", 40), ("small", 2)] {
        apply(&mut api, name, replicas).await.expect("apply");
    }
    let total = 1_243;
    c.wait_for("every replica created", Duration::from_secs(60), || {
        let mut api = api.clone();
        async move {
            let n = list_replicas(&mut api, "", false).await?.len();
            (n == total).then_some(()).ok_or(format!("{n} replicas"))
        }
    })
    .await
    .expect("created");

    // The API: pages of 500 in key order, each name once, the last page
    // without a continue token.
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_replicas(pb::ListReplicasRequest {
                limit: 500,
                continue_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        sizes.push(page.replicas.len());
        seen.extend(page.replicas.into_iter().map(|r| r.name));
        if page.continue_token.is_empty() {
            break;
        }
        token = page.continue_token;
    }
    assert_eq!(sizes, [500, 500, 243]);
    let sorted: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(sorted.len(), total, "each replica once");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in key order");

    // One deployment's replicas page through its index the same way.
    let page = api
        .list_replicas(pb::ListReplicasRequest {
            namespace: "default".into(),
            deployment: "mid".into(),
            limit: 30,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.replicas.len(), 30);
    let rest = api
        .list_replicas(pb::ListReplicasRequest {
            namespace: "default".into(),
            deployment: "mid".into(),
            limit: 30,
            continue_token: page.continue_token,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(rest.replicas.len(), 10);
    assert!(rest.replicas.iter().all(|r| r.deployment == "mid"));

    // Deployments too.
    let first = api
        .list_deployments(pb::ListDeploymentsRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let names: Vec<_> = first.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["big", "mid"]);
    assert_eq!(
        first.deployments[0].status.as_ref().map(|s| s.replicas),
        Some(1_201)
    );
    let last = api
        .list_deployments(pb::ListDeploymentsRequest {
            limit: 2,
            continue_token: first.continue_token,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(last.deployments.len(), 1);
    assert!(last.continue_token.is_empty());

    // droverctl reads every page: a row per replica under one header.
    let out = ok(&c.ctl().run(&["get", "replicas"]));
    assert_eq!(
        out.lines().count(),
        total + 1,
        "{}",
        &out[..200.min(out.len())]
    );
    let out = ok(&c.ctl().run(&["get", "replicas", "-o", "name"]));
    assert_eq!(out.lines().collect::<BTreeSet<_>>().len(), total);

    // A token no controller gave is refused with a sentence.
    let refused = api
        .list_replicas(pb::ListReplicasRequest {
            limit: 10,
            continue_token: "not a token".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("continue token"),
        "{}",
        refused.message()
    );
}
