//! Agents with the process runtime, end to end: three controllers and three
//! agents as real processes; replicas are real child processes on the agents.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_tests::cluster::{apply, ok};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(60);

fn per_node(replicas: &BTreeMap<String, (String, String)>) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for (node, _) in replicas.values() {
        *count.entry(node.clone()).or_default() += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_scale_and_survive_a_leader_kill() {
    let mut c = Cluster::start(3).await.expect("cluster");
    for name in ["n1", "n2", "n3"] {
        c.start_agent(name, "process", &["--cpu", "4", "--memory", "4Gi"])
            .expect("agent");
    }
    c.wait_for("3 nodes Ready", T, || async {
        let out = c.ctl().run(&["get", "nodes", "-o", "name"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.lines().count() == 3 {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .expect("nodes");

    let mut client = c.client(1).await.expect("client");
    apply(&mut client, "worker", 6).await.expect("apply");
    let six = c
        .wait_for("6 running", T, || c.running_placements("worker", 6))
        .await
        .expect("6 replicas");
    assert_eq!(
        per_node(&six).values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "spread evenly: {six:?}"
    );

    apply(&mut client, "worker", 9).await.expect("scale up");
    let nine = c
        .wait_for("9 running", T, || c.running_placements("worker", 9))
        .await
        .expect("9");
    assert_eq!(
        per_node(&nine).values().copied().collect::<Vec<_>>(),
        [3, 3, 3]
    );
    for (name, placed) in &six {
        assert_eq!(
            nine.get(name),
            Some(placed),
            "scale-up must not touch existing replica {name}"
        );
    }

    // Kill the leader: agents move to the new one, and nothing is restarted.
    let leader = c.wait_for_leader(T).await.expect("leader");
    c.kill(leader);
    c.wait_for_leader(T).await.expect("new leader");
    let survivor = (leader + 1) % 3;
    let mut client = c.client(survivor).await.expect("client");
    apply(&mut client, "worker", 3)
        .await
        .expect("scale down through the new leader");
    let three = c
        .wait_for("3 running", T, || c.running_placements("worker", 3))
        .await
        .expect("3");
    for (name, placed) in &three {
        assert_eq!(
            nine.get(name),
            Some(placed),
            "replica {name} was restarted or moved"
        );
    }
    let out = ok(&c.ctl().run(&["get", "replicas"]));
    assert_eq!(out.lines().count(), 4, "header + 3 replicas:\n{out}");

    ok(&c.ctl().run(&["delete", "deployment", "worker"]));
    c.wait_for("all gone", T, || async {
        let out = c.ctl().run(&["get", "replicas", "-o", "name"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.trim().is_empty() {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .expect("replicas removed");
    // And the replicas' processes are really gone from the hosts.
    c.wait_for("no replica processes left", T, || async {
        match drover_tests::cluster::processes_under(c.dir.path()) {
            0 => Ok(()),
            n => Err(format!("{n} processes still run in the agents' work dirs")),
        }
    })
    .await
    .expect("processes stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_agent_with_the_same_name_is_refused() {
    let mut c = Cluster::start(3).await.expect("cluster");
    c.start_agent("twin", "process", &[]).expect("agent");
    c.wait_for("node registered", T, || async {
        let out = c.ctl().run(&["get", "nodes", "-o", "name"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.trim() == "node/twin" {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .expect("first agent registered");

    // Even with a valid certificate for the name (copied from the first host).
    c.agent_security("twin", &c.dir.path().join("impostor/tls"))
        .expect("certificate");
    let out = std::process::Command::new(drover_tests::bin("drover-agent"))
        .args([
            "--name",
            "twin",
            "--controllers",
            &c.servers(),
            "--runtime",
            "process",
        ])
        .arg("--data-dir")
        .arg(c.dir.path().join("impostor"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen="])
        .output()
        .expect("second agent runs");
    assert_eq!(out.status.code(), Some(1), "the impostor must exit 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another live agent"), "{stderr}");
    // The first agent is unaffected.
    let nodes = ok(&c.ctl().run(&["get", "nodes"]));
    assert!(nodes.contains("twin") && nodes.contains("Ready"), "{nodes}");
}

/// A leader change is routine: agents follow the new leader within the node
/// timeout, so no node is ever marked NotReady and no replica moves or
/// restarts, kill after kill (the redirect backoff once grew past the node
/// timeout after a few leader changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_leader_kills_mark_no_node_not_ready() {
    let mut c = Cluster::start(3).await.expect("cluster");
    for name in ["n1", "n2"] {
        c.start_agent(name, "process", &[]).expect("agent");
    }
    c.wait_nodes_ready(2, T).await.expect("nodes");
    let mut client = c.client(0).await.expect("client");
    apply(&mut client, "steady", 2).await.expect("apply");
    let before = c
        .wait_for("2 running", T, || c.running_placements("steady", 2))
        .await
        .expect("running");

    for kill in 1..=20 {
        let leader = c.wait_for_leader(T).await.expect("leader");
        c.kill(leader);
        c.wait_for_leader(T)
            .await
            .unwrap_or_else(|e| panic!("kill {kill}: no new leader: {e}"));
        c.restart(leader).expect("restart");
        c.wait_converged(T)
            .await
            .unwrap_or_else(|e| panic!("kill {kill}: {e}"));
    }

    let out = ok(&c.ctl().run(&["get", "events", "-o", "json"]));
    for reason in ["NodeNotReady", "NodeLost"] {
        assert!(
            !out.contains(&format!("\"{reason}\"")),
            "no {reason} event after 20 leader kills:\n{out}"
        );
    }
    let after = c
        .wait_for("2 running", T, || c.running_placements("steady", 2))
        .await
        .expect("running");
    assert_eq!(after, before, "no replica moved or restarted");
}
