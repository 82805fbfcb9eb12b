//! Agents with the Docker runtime, end to end: real controllers, real agents,
//! real containers on this machine's Docker engine.
//!
//! Gated on a Docker socket: skipped (with a note) when there is none, unless
//! `DROVER_REQUIRE_DOCKER=1`, which CI sets so the suite cannot silently skip.
//! Every container a test makes carries its agents' unique node names and is
//! removed at the end, even when the test fails.

use std::collections::BTreeMap;
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use drover_tests::cluster::{containers_of, ok};
use drover_tests::docker::{available as docker_available, unique, Containers};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(90);

fn inspect(id: &str) -> serde_json::Value {
    let out = Command::new("docker")
        .args(["inspect", id])
        .output()
        .expect("docker inspect");
    assert!(
        out.status.success(),
        "docker inspect {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect json");
    v[0].clone()
}

fn web(name: &str, replicas: u32, host_port: Option<u16>) -> String {
    let ports = match host_port {
        Some(p) => {
            format!("        ports:\n        - containerPort: 8080\n          hostPort: {p}\n")
        }
        None => "        ports:\n        - containerPort: 8080\n".to_string(),
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: httpd
        image: drover/busybox:1
        command: ["sh", "-c"]
        args: ["mkdir -p /www && echo hello-$GREETING > /www/index.html && exec httpd -f -p 8080 -h /www"]
        env:
        - name: GREETING
          value: drover
{ports}        resources:
          requests: {{cpu: 50m, memory: 16Mi}}
          limits: {{cpu: 250m, memory: 32Mi}}
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 1
"#
    )
}

fn http_get(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_with_their_spec_survive_an_agent_restart_and_are_removed() {
    if !docker_available() {
        return;
    }
    let nodes = [unique("dk-a"), unique("dk-b")];
    let containers = Containers(nodes.to_vec());
    let mut c = Cluster::with_agents(3, "docker", &nodes)
        .await
        .expect("cluster");
    let name = unique("web");
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, web(&name, 3, None)).expect("manifest");
    ok(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));
    let placed = c
        .wait_for("3 running", T, || c.running_placements(&name, 3))
        .await
        .expect("3 replicas");
    let ids = containers.ids();
    assert_eq!(ids.len(), 3, "one container per replica: {ids:?}");

    for (replica, (node, id)) in &placed {
        let v = inspect(id);
        let labels = &v["Config"]["Labels"];
        assert_eq!(labels["drover.node"], node.as_str(), "{replica}");
        assert_eq!(labels["drover.deployment"], name.as_str());
        assert_eq!(labels["drover.replica"], format!("default.{replica}"));
        assert_eq!(
            v["Config"]["Hostname"],
            replica.as_str(),
            "named like a pod"
        );
        let env: Vec<String> =
            serde_json::from_value(v["Config"]["Env"].clone()).unwrap_or_default();
        assert!(env.contains(&"GREETING=drover".to_string()), "{env:?}");
        assert_eq!(v["HostConfig"]["Memory"], 32 * 1024 * 1024);
        assert_eq!(v["HostConfig"]["NanoCpus"], 250_000_000);
        assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "no");
        assert_eq!(v["State"]["Running"], true);
    }

    // Restart one agent: it adopts its containers; nothing is recreated.
    let started: BTreeMap<String, serde_json::Value> = placed
        .values()
        .map(|(_, id)| (id.clone(), inspect(id)["State"]["StartedAt"].clone()))
        .collect();
    c.restart_agent(0, &["--cpu", "4", "--memory", "4Gi"])
        .expect("restart agent");
    c.wait_for("agent back", T, || async {
        let out = c.ctl().run(&["get", "nodes"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.matches("Ready").count() == 2 {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .expect("agent reconnected");
    let after = c
        .wait_for("still 3 running", T, || c.running_placements(&name, 3))
        .await
        .expect("3 replicas");
    assert_eq!(
        after, placed,
        "same replicas, nodes and container ids after the agent restart"
    );
    for (id, at) in &started {
        assert_eq!(
            &inspect(id)["State"]["StartedAt"],
            at,
            "container {id} was restarted"
        );
    }

    ok(&c.ctl().run(&["delete", "-f", &file.to_string_lossy()]));
    c.wait_for("containers removed", T, || async {
        match containers.ids().len() {
            0 => Ok(()),
            n => Err(format!("{n} containers left")),
        }
    })
    .await
    .expect("containers removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_serves_and_a_missing_image_is_reported() {
    if !docker_available() {
        return;
    }
    let node = unique("dk-p");
    let _containers = Containers(vec![node.clone()]);
    let mut c = Cluster::start(3).await.expect("cluster");
    c.start_agent(&node, "docker", &["--cpu", "4", "--memory", "4Gi"])
        .expect("agent");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let name = unique("web");
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, web(&name, 1, Some(port))).expect("manifest");
    ok(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));
    c.wait_for("running", T, || c.running_placements(&name, 1))
        .await
        .expect("running");
    let body = c
        .wait_for("httpd answers", T, || async {
            http_get(port).and_then(|b| {
                if b.contains("hello-drover") {
                    Ok(b)
                } else {
                    Err(b)
                }
            })
        })
        .await
        .expect("httpd on its host port");
    assert!(body.starts_with("HTTP/1."), "{body}");
    // The httpGet readiness probe passes against the httpd: READY 1/1.
    c.wait_for("READY 1/1", T, || async {
        let out = c.ctl().run(&["get", "deployment", &name]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(" 1/1 ") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .expect("readiness gates READY");

    // An image no registry has: reported as ErrImagePull, not a hang.
    let missing = unique("ghost");
    let manifest = web(&missing, 1, None).replace("drover/busybox:1", "drover/no-such-image:9");
    let file = c.dir.path().join("ghost.yaml");
    std::fs::write(&file, manifest).expect("manifest");
    ok(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));
    let reason = c
        .wait_for("ErrImagePull", T, || async {
            let out = c.ctl().run(&["get", "replicas", "--deployment", &missing]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("ErrImagePull") {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await
        .expect("the missing image is reported");
    assert!(reason.contains("0/1"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_readiness_probe_keeps_a_running_container_not_ready() {
    if !docker_available() {
        return;
    }
    let node = unique("dk-r");
    let _containers = Containers(vec![node.clone()]);
    let mut c = Cluster::start(3).await.expect("cluster");
    c.start_agent(&node, "docker", &["--cpu", "4", "--memory", "4Gi"])
        .expect("agent");
    let name = unique("noready");
    // The httpd serves nothing at /healthz: 404, never ready.
    let manifest = web(&name, 1, None).replace(
        "httpGet: {path: /, port: 8080}",
        "httpGet: {path: /healthz, port: 8080}",
    );
    let file = c.dir.path().join("noready.yaml");
    std::fs::write(&file, manifest).expect("manifest");
    ok(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));
    c.wait_for("running", T, || c.running_placements(&name, 1))
        .await
        .expect("running");
    let text = c
        .wait_for("probe failure reported", T, || async {
            let out = c
                .ctl()
                .run(&["get", "replicas", "--deployment", &name, "-o", "json"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("Readiness probe failed") {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await
        .expect("readiness failure in the status");
    assert!(text.contains("404"), "{text}");
    let deployments = ok(&c.ctl().run(&["get", "deployment", &name]));
    assert!(deployments.contains(" 0/1 "), "{deployments}");
}

/// The crasher in a container: restarted with growing waits, CrashLoopBackOff
/// and its exit code shown, as with the process runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_container_is_restarted_with_growing_backoff() {
    if !docker_available() {
        return;
    }
    let node = unique("dk-crash");
    let _containers = Containers(vec![node.clone()]);
    let mut c = Cluster::start(3).await.expect("cluster");
    c.start_agent(&node, "docker", &[]).expect("agent");
    let seen = drover_tests::scenarios::crash_loop(&c, 4, T).await;
    assert!(seen.restarts.len() >= 4, "restarts seen: {seen:?}");
    assert!(seen.backoff_seen, "CrashLoopBackOff was never reported");
    assert_eq!(seen.exit_code_in_backoff, Some(1), "{seen:?}");
    assert!(seen.gaps_grow(), "gaps not growing: {:?}", seen.gaps());
}

/// A Docker host fails (its agent and its containers are killed): its
/// replicas run on the other node within the node timeout plus a little; when
/// it returns, its dead containers are removed and nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_docker_hosts_replicas_move_and_its_return_leaves_no_duplicates() {
    if !docker_available() {
        return;
    }
    let nodes = [unique("dk-a"), unique("dk-b")];
    let containers = Containers(nodes.to_vec());
    // Both nodes are Ready before the apply, or every replica would land on
    // the first to register and the host failure would move nothing.
    let mut c = Cluster::with_agents(3, "docker", &nodes)
        .await
        .expect("cluster");
    let name = unique("web");
    let file = c.dir.path().join("web.yaml");
    std::fs::write(&file, web(&name, 4, None)).expect("manifest");
    ok(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));
    let placed = c
        .wait_for("4 running on both nodes", T, || async {
            let p = c.running_placements(&name, 4).await?;
            if p.values().any(|(n, _)| *n == nodes[0]) {
                Ok(p)
            } else {
                Err(format!("nothing on {}: {p:?}", nodes[0]))
            }
        })
        .await
        .expect("4 replicas");

    let killed = std::time::Instant::now();
    let dead = c.kill_agent_host(0);
    let on_a = placed.values().filter(|(n, _)| *n == nodes[0]).count();
    assert_eq!(dead, on_a, "every container of {} was killed", nodes[0]);
    let moved = c
        .wait_for("replicas moved off the dead host", T, || async {
            let p = c.running_placements(&name, 4).await?;
            if p.values().all(|(n, _)| *n == nodes[1]) {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        })
        .await
        .expect("rescheduled");
    eprintln!(
        "docker host failure → 4 replicas Running on {} in {:?}",
        nodes[1],
        killed.elapsed()
    );

    // The host returns: its agent removes the dead containers it finds.
    c.restart_agent(0, &["--cpu", "4", "--memory", "4Gi"])
        .expect("restart");
    c.wait_for("dead host's containers removed", T, || async {
        match containers_of(&nodes[0], true) {
            ids if ids.is_empty() => Ok(()),
            ids => Err(format!("{} containers left on {}", ids.len(), nodes[0])),
        }
    })
    .await
    .expect("cleaned up");
    let after = c
        .wait_for("still 4 running", T, || c.running_placements(&name, 4))
        .await
        .expect("4 replicas");
    assert_eq!(after, moved, "nothing moved back or doubled");
    assert_eq!(containers_of(&nodes[1], false).len(), 4, "4 containers run");
    drop(containers);
}
