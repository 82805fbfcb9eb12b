//! Self-healing end to end with the process runtime: a host dies and its
//! replicas run elsewhere; it returns and its stale copies are stopped;
//! cordoned nodes get no new replicas.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_proto::pb;
use drover_tests::cluster::{apply, ok};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(60);

/// Node name → replicas Running there, once exactly `want` run in total.
async fn placement(
    c: &Cluster,
    deployment: &str,
    want: usize,
) -> Result<BTreeMap<String, usize>, String> {
    let up = (0..c.controllers.len())
        .find(|i| c.controllers[*i].is_running())
        .ok_or("no controller")?;
    let mut client = c.client(up).await.map_err(|e| e.to_string())?;
    let list = client
        .list_replicas(pb::ListReplicasRequest {
            namespace: "default".into(),
            deployment: deployment.into(),
            read: None,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut per_node = BTreeMap::new();
    for r in &list.replicas {
        let state = r.status.as_ref().map(|s| s.state()).unwrap_or_default();
        if state != pb::ReplicaState::Running {
            return Err(format!("{} is {state:?} on {:?}", r.name, r.node));
        }
        *per_node.entry(r.node.clone()).or_default() += 1;
    }
    if list.replicas.len() == want {
        Ok(per_node)
    } else {
        Err(format!("{} replicas, want {want}", list.replicas.len()))
    }
}

async fn three_agents() -> Cluster {
    let mut c = Cluster::start(3).await.expect("cluster");
    for name in ["n1", "n2", "n3"] {
        c.start_agent(name, "process", &["--cpu", "4", "--memory", "4Gi"])
            .expect("agent");
    }
    c.wait_for("3 nodes Ready", T, || async {
        let out = c.ctl().run(&["get", "nodes"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.matches(" Ready ").count() == 3 {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .expect("nodes");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_replicas_move_and_its_return_leaves_no_duplicates() {
    let mut c = three_agents().await;
    let mut client = c.client(0).await.expect("client");
    apply(&mut client, "worker", 6).await.expect("apply");
    c.wait_for("6 running", T, || placement(&c, "worker", 6))
        .await
        .expect("6 running");

    let killed = Instant::now();
    let processes = c.kill_agent_host(0);
    assert!(
        processes >= 2,
        "n1 ran its share of replicas ({processes} processes)"
    );
    let moved = c
        .wait_for("replicas moved off n1", T, || async {
            let p = placement(&c, "worker", 6).await?;
            if p.contains_key("n1") {
                Err(format!("{p:?}"))
            } else {
                Ok(p)
            }
        })
        .await
        .expect("replicas rescheduled");
    let took = killed.elapsed();
    eprintln!("host failure → all 6 replicas Running elsewhere in {took:?} ({moved:?})");
    let out = ok(&c.ctl().run(&["get", "nodes"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("n1 ") && l.contains("NotReady")),
        "{out}"
    );

    // The host comes back: it is Ready again, gets nothing back, runs nothing.
    c.restart_agent(0, &["--cpu", "4", "--memory", "4Gi"])
        .expect("restart");
    c.wait_for("n1 Ready", T, || async {
        let out = c.ctl().run(&["get", "nodes"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text
            .lines()
            .any(|l| l.starts_with("n1 ") && l.contains(" Ready "))
        {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .expect("n1 back");
    let after = c
        .wait_for("6 running", T, || placement(&c, "worker", 6))
        .await
        .expect("still 6");
    assert_eq!(after, moved, "no replica moved back or doubled");
    assert_eq!(
        drover_tests::cluster::processes_under(&c.agents[0].data_dir),
        0,
        "n1 runs no stale copies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_node_gets_no_new_replicas() {
    let c = three_agents().await;
    assert_eq!(
        ok(&c.ctl().run(&["cordon", "n3"])).trim(),
        "node/n3 cordoned"
    );
    assert_eq!(
        ok(&c.ctl().run(&["cordon", "n3"])).trim(),
        "node/n3 already cordoned"
    );
    let nodes = ok(&c.ctl().run(&["get", "nodes"]));
    assert!(nodes.contains("Ready,SchedulingDisabled"), "{nodes}");
    let mut client = c.client(0).await.expect("client");
    apply(&mut client, "worker", 4).await.expect("apply");
    let p = c
        .wait_for("4 running", T, || placement(&c, "worker", 4))
        .await
        .expect("4 running");
    assert_eq!(p.get("n3"), None, "cordoned n3 got replicas: {p:?}");
    assert_eq!(
        ok(&c.ctl().run(&["uncordon", "node/n3"])).trim(),
        "node/n3 uncordoned"
    );
    apply(&mut client, "worker", 6).await.expect("scale");
    let p = c
        .wait_for("6 running", T, || placement(&c, "worker", 6))
        .await
        .expect("6 running");
    assert_eq!(
        p.get("n3"),
        Some(&2),
        "uncordoned n3 takes the new replicas: {p:?}"
    );
    let e = drover_tests::cluster::err(&c.ctl().run(&["cordon", "ghost"]));
    assert!(e.contains("not found"), "{e}");
}
