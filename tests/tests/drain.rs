//! `droverctl drain` end to end with the process runtime: every replica
//! moves off the node, each replacement running before its original stops,
//! and `uncordon` makes the node schedulable again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_tests::cluster::{apply, err, ok};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_everything_off_a_node_new_before_old() {
    let c = Cluster::with_agents(1, "process", &["n1", "n2", "n3"])
        .await
        .expect("cluster");
    let mut client = c.client(0).await.expect("client");
    apply(&mut client, "worker", 6).await.expect("apply");
    let before = c
        .wait_for("6 running", T, || c.placement("worker", 6))
        .await
        .expect("6 running");
    let on_n1 = before.get("n1").copied().unwrap_or(0);
    assert!(on_n1 > 0, "n1 runs some replicas: {before:?}");

    // Ready replicas, sampled every 100 ms through the drain.
    let stop = Arc::new(AtomicBool::new(false));
    let lowest = Arc::new(Mutex::new(u32::MAX));
    let sampler = tokio::spawn({
        let (stop, lowest, address) = (stop.clone(), lowest.clone(), c.addresses()[0].clone());
        let security = c.security.clone();
        async move {
            let mut client = drover_tests::cluster::connect(&address, &security)
                .await
                .expect("client");
            while !stop.load(Ordering::SeqCst) {
                let request = drover_proto::pb::GetDeploymentRequest {
                    namespace: "default".into(),
                    name: "worker".into(),
                    read: None,
                };
                if let Ok(d) = client.get_deployment(request).await {
                    let s = d.into_inner().status.unwrap_or_default();
                    let mut low = lowest.lock().expect("lowest");
                    *low = (*low).min(s.ready);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    let out = ok(&c.ctl().run(&["drain", "n1", "--timeout", "60s"]));
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    assert!(out.starts_with("node/n1 cordoned\n"), "{out}");
    assert!(out.trim_end().ends_with("node/n1 drained"), "{out}");
    assert_eq!(
        out.matches("moving replica default/worker-").count(),
        on_n1,
        "{out}"
    );
    let after = c
        .wait_for("6 running elsewhere", T, || c.placement("worker", 6))
        .await
        .expect("6 running");
    assert_eq!(after.get("n1"), None, "{after:?}");
    assert_eq!(
        *lowest.lock().expect("lowest"),
        6,
        "a replica stopped before its replacement was ready"
    );
    c.wait_for("n1 runs nothing", T, || async {
        match drover_tests::cluster::processes_under(&c.agents[0].data_dir) {
            0 => Ok(()),
            n => Err(format!("{n} processes")),
        }
    })
    .await
    .expect("n1 empty");
    let nodes = ok(&c.ctl().run(&["get", "nodes"]));
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("n1 ") && l.contains("SchedulingDisabled")),
        "{nodes}"
    );

    // Uncordon ends the drain: n1 takes replicas again.
    ok(&c.ctl().run(&["uncordon", "n1"]));
    let out = ok(&c
        .ctl()
        .run(&["scale", "deployment", "worker", "--replicas", "12"]));
    assert!(out.contains("scaled"), "{out}");
    let spread = c
        .wait_for("12 running", T, || c.placement("worker", 12))
        .await
        .expect("12 running");
    assert!(spread.get("n1").is_some_and(|n| *n > 0), "{spread:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_an_unknown_node_is_refused_and_an_unplaceable_replica_goes_without_replacement() {
    let c = Cluster::with_agents(1, "process", &["n1", "n2", "n3"])
        .await
        .expect("cluster");
    let e = err(&c.ctl().run(&["drain", "n9"]));
    assert!(e.contains("node \"n9\" not found"), "{e}");

    // Nowhere else to go: a host port only one replica per node can hold.
    let manifest = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: pinned
spec:
  replicas: 3
  selector:
    matchLabels:
      app: pinned
  template:
    metadata:
      labels:
        app: pinned
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "while true; do sleep 1; done"]
        ports:
        - containerPort: 8080
          hostPort: 18080
"#;
    ok(&c
        .ctl()
        .run_with_stdin(&["apply", "-f", "-"], Some(manifest.as_bytes())));
    c.wait_for("3 running", T, || c.placement("pinned", 3))
        .await
        .expect("3 running");
    let out = c.ctl().run(&["drain", "n2", "--timeout", "20s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The replica that cannot be replaced is removed without one (as the
    // planner says), so the drain finishes; a node only ever empties.
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("node/n2 drained"), "{stdout}");
    let replicas = ok(&c.ctl().run(&["get", "replicas"]));
    assert!(!replicas.contains(" n2 "), "{replicas}");
}
