//! A rolling update with real Docker containers keeps serving: the busybox
//! httpd goes from one page to another with maxUnavailable 0 on two nodes,
//! while every container of the deployment is asked for its page every few
//! hundred milliseconds. At no sample may fewer than `desired` containers
//! answer.
//!
//! Gated on a Docker socket like the other Docker suites (skipped with a
//! note, unless `DROVER_REQUIRE_DOCKER=1`). Containers carry their agents'
//! unique node names and are removed at the end, even when the test fails.

use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use drover_tests::cluster::ok;
use drover_tests::docker::{available as docker_available, unique, Containers};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(120);

fn web(name: &str, page: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 4
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      # httpd as PID 1 ignores SIGTERM: old containers would wait out 30 s.
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: drover/busybox:1
        command: ["sh", "-c"]
        args: ["mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports:
        - containerPort: 8080
        resources:
          requests: {{cpu: 50m, memory: 16Mi}}
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 1
"#
    )
}

fn page(ip: &str) -> Option<String> {
    let address = format!("{ip}:8080").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    (body.starts_with("HTTP/1.") && body.lines().next().is_some_and(|l| l.contains(" 200 ")))
        .then(|| body.lines().last().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_rolling_update_with_max_unavailable_zero_keeps_every_replica_serving() {
    if !docker_available() {
        return;
    }
    let nodes = [unique("ro-a"), unique("ro-b")];
    let containers = Containers(nodes.to_vec());
    let c = Cluster::with_agents(1, "docker", &nodes)
        .await
        .expect("cluster");
    let name = unique("roll");
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, web(&name, "one")).expect("manifest");
    let file = file.to_string_lossy().into_owned();
    ok(&c
        .ctl()
        .run(&["apply", "-f", &file, "--wait", "--timeout", "120s"]));

    std::fs::write(&file, web(&name, "two")).expect("manifest");
    let ctl = c.ctl();
    let update = std::thread::spawn({
        let file = file.clone();
        move || ctl.run(&["apply", "-f", &file, "--wait", "--timeout", "120s"])
    });
    let (mut samples, mut lowest, mut failed_requests) = (0, usize::MAX, 0);
    let mut pages = std::collections::BTreeSet::new();
    while !update.is_finished() {
        let addresses = containers.addresses();
        let mut serving = 0;
        for ip in &addresses {
            match page(ip) {
                Some(p) => {
                    serving += 1;
                    pages.insert(p);
                }
                None => failed_requests += 1,
            }
        }
        samples += 1;
        lowest = lowest.min(serving);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = update.join().expect("apply thread");
    let out = ok(&out);
    assert!(out.contains("successfully rolled out"), "{out}");
    eprintln!(
        "{samples} samples; fewest containers serving: {lowest}; requests to starting or stopping containers that failed: {failed_requests}; pages seen: {pages:?}"
    );
    assert!(
        samples >= 5,
        "the update was too quick to sample ({samples})"
    );
    assert!(
        lowest >= 4,
        "only {lowest} of 4 replicas served at one point"
    );
    assert!(pages.contains("one") && pages.contains("two"), "{pages:?}");
    // Removed replicas' containers stop after the rollout is complete in the store.
    c.wait_for("only the 4 new containers left", T, || async {
        let pages: Vec<Option<String>> = containers.addresses().iter().map(|ip| page(ip)).collect();
        if pages.len() == 4 && pages.iter().all(|p| p.as_deref() == Some("two")) {
            Ok(())
        } else {
            Err(format!("{pages:?}"))
        }
    })
    .await
    .expect("old containers stopped");
    drop(c);
}
