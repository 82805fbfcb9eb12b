//! The compose lab of deploy/compose.yaml, end to end: the image built by
//! deploy/images/build-drover.sh from this test profile's binaries, three
//! controllers and three agents as containers under a project name of their
//! own, droverctl on the host talking to them through the published ports,
//! a deployment running on this machine's Docker engine, and `down -v`
//! leaving nothing of the project behind.
//!
//! ```text
//!  test ──build-drover.sh──▶ drover/drover:compose-test-PID (stripped binaries + libs)
//!       ──docker-compose -p droverPID up -d──▶ pki (one-shot) → c1 c2 c3 → token (one-shot) → n1 n2 n3 (join)
//!       ──droverctl --server 127.0.0.1:P1,P2,P3──▶ get nodes · apply · get replicas
//!       ──docker-compose run --rm ctl logs R──▶ (inside the network: reaches the agent)
//!       ──down -v──▶ no container, network or volume labelled with the project
//! ```
//!
//! Gated on Docker like agents_docker.rs: skipped with a note when there is no
//! engine (or no docker-compose), a failure under `DROVER_REQUIRE_DOCKER=1`.
//! The guard brings the project down, removes replica containers of its nodes
//! and the image even when the test fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use drover_tests::bin;
use drover_tests::cluster::containers_of;

const T: Duration = Duration::from_secs(90);

/// Docker (with the workload image) and docker-compose, or a skip with a note.
fn docker_available() -> bool {
    if !drover_tests::docker::available() {
        return false;
    }
    let compose = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !compose {
        assert!(
            !drover_tests::docker::required(),
            "DROVER_REQUIRE_DOCKER=1 but docker-compose is not installed (Debian: apt-get install docker-compose)"
        );
        eprintln!("skipping: docker-compose is not installed");
        return false;
    }
    true
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `docker <args>`, stdout when it succeeds.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One compose project: its settings, and everything it made, removed on drop.
struct Lab {
    project: String,
    image: String,
    prefix: String,
    ports: [u16; 3],
    dir: tempfile::TempDir,
    down: bool,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        Lab {
            project: format!("drovercompose{pid}"),
            image: format!("drover/drover:compose-test-{pid}"),
            prefix: format!("cmp{pid}-"),
            ports: [free_port(), free_port(), free_port()],
            dir: tempfile::tempdir().expect("tempdir"),
            down: false,
        }
    }

    fn nodes(&self) -> Vec<String> {
        (1..=3).map(|i| format!("{}n{i}", self.prefix)).collect()
    }

    fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-f")
            .arg(repo().join("deploy/compose.yaml"))
            .arg("-p")
            .arg(&self.project)
            .args(args)
            .env("DROVER_IMAGE", &self.image)
            .env("DROVER_COMPOSE_DIR", self.dir.path())
            .env("DROVER_NODE_PREFIX", &self.prefix);
        for (i, port) in self.ports.iter().enumerate() {
            cmd.env(format!("DROVER_PORT_{}", i + 1), port.to_string());
        }
        cmd.output().expect("run docker-compose")
    }

    /// droverctl on the host, as the admin whose certificate the PKI step made.
    fn ctl(&self, args: &[&str]) -> Output {
        let admin = self.dir.path().join("pki/admin-admin");
        let servers = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        Command::new(bin("droverctl"))
            .arg("--server")
            .arg(servers)
            .arg("--ca")
            .arg(admin.join("ca.crt"))
            .arg("--cert")
            .arg(admin.join("tls.crt"))
            .arg("--key")
            .arg(admin.join("tls.key"))
            .args(args)
            .env("HOME", self.dir.path())
            .env(
                "DROVERCONFIG",
                self.dir.path().join("droverctl-config.yaml"),
            )
            .env_remove("DROVER_SERVER")
            .output()
            .expect("run droverctl")
    }

    /// Poll `check` until it returns Some, or fail with the last thing seen.
    fn wait_for<R>(&self, what: &str, mut check: impl FnMut() -> Result<R, String>) -> R {
        let deadline = Instant::now() + T;
        loop {
            match check() {
                Ok(r) => return r,
                Err(last) if Instant::now() > deadline => {
                    panic!("timed out after {T:?} waiting for {what}; last seen:\n{last}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    fn replica_containers(&self) -> Vec<String> {
        self.nodes()
            .iter()
            .flat_map(|n| containers_of(n, true))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail", "40"]);
            eprintln!(
                "compose logs of {}:\n{}",
                self.project,
                String::from_utf8_lossy(&logs.stdout)
            );
        }
        if !self.down {
            let _ = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
        }
        // Replicas outlive their agents by design.
        let ids = self.replica_containers();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
        let _ = Command::new("docker").args(["rmi", &self.image]).output();
    }
}

/// Every file under `path` (or `path` itself) whose name ends with `.key`.
fn key_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        if path.extension().is_some_and(|x| x == "key") {
            out.push(path.to_path_buf());
        }
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for e in entries.flatten() {
        key_files(&e.path(), out);
    }
}

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: compose-smoke
spec:
  replicas: 3
  selector:
    matchLabels:
      app: compose-smoke
  template:
    metadata:
      labels:
        app: compose-smoke
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: tick
        image: drover/busybox:1
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do echo tick; sleep 1; done"]
        resources:
          requests:
            cpu: 10m
            memory: 8Mi
"#;

#[test]
fn compose_lab_comes_up_runs_a_deployment_and_goes_down_without_a_trace() {
    if !docker_available() {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new();

    let bin_dir = bin("droverctl")
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    let built = Command::new(repo().join("deploy/images/build-drover.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--tag")
        .arg(&lab.image)
        .output()
        .expect("run deploy/images/build-drover.sh");
    assert!(built.status.success(), "build-drover.sh: {}", text(&built));
    eprintln!("image built in {:?}", started.elapsed());

    let up = lab.compose(&["up", "-d"]);
    assert!(up.status.success(), "docker-compose up: {}", text(&up));
    eprintln!("compose up in {:?}", started.elapsed());

    // Three Ready agents, named by this lab's prefix.
    let nodes = lab.nodes();
    lab.wait_for("3 Ready agents in `droverctl get nodes`", || {
        let out = lab.ctl(&["get", "nodes"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let ready = stdout
            .lines()
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 2 && nodes.iter().any(|n| n == cols[0]) && cols[1] == "Ready"
            })
            .count();
        if out.status.success() && ready == 3 {
            Ok(())
        } else {
            Err(text(&out))
        }
    });
    eprintln!("3 agents Ready after {:?}", started.elapsed());

    // Issue 12 item 12: the agents joined with a token and hold no CA key or
    // admin key: nothing they mount from the host is a private key.
    for service in ["n1", "n2", "n3"] {
        let id = String::from_utf8_lossy(&lab.compose(&["ps", "-q", service]).stdout)
            .trim()
            .to_string();
        assert!(!id.is_empty(), "no container for {service}");
        let mounts = docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{if eq .Type \"bind\"}}{{.Source}}\n{{end}}{{end}}",
            &id,
        ]);
        for source in mounts.lines().filter(|l| !l.is_empty()) {
            let mut keys = Vec::new();
            key_files(Path::new(source), &mut keys);
            assert!(
                keys.is_empty(),
                "{service} mounts {source}, which holds {keys:?}"
            );
        }
        let logs = lab.compose(&["logs", "--no-color", service]);
        assert!(
            String::from_utf8_lossy(&logs.stdout).contains("joined the cluster"),
            "{service} did not join with the token: {}",
            text(&logs)
        );
    }

    let manifest = lab.dir.path().join("smoke.yaml");
    std::fs::write(&manifest, MANIFEST).expect("write the manifest");
    let applied = lab.ctl(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    assert!(applied.status.success(), "apply: {}", text(&applied));

    let replicas: Vec<String> = lab.wait_for("3 Running replicas", || {
        let out = lab.ctl(&["get", "replicas"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let running: Vec<String> = stdout
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(2) == Some("Running"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        if out.status.success() && running.len() == 3 {
            Ok(running)
        } else {
            Err(text(&out))
        }
    });
    eprintln!("3 replicas Running after {:?}", started.elapsed());
    // They are real containers on this host's engine, made by the lab's agents.
    let running: usize = nodes.iter().map(|n| containers_of(n, false).len()).sum();
    assert_eq!(running, 3, "replica containers of {nodes:?} on this engine");

    // Inside the network droverctl reaches the agents too: logs work.
    lab.wait_for("a replica's output through the ctl service", || {
        let out = lab.compose(&[
            "run",
            "--rm",
            "-T",
            "ctl",
            "logs",
            &replicas[0],
            "--tail",
            "1",
        ]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("tick") {
            Ok(())
        } else {
            Err(text(&out))
        }
    });

    // Delete first so the agents remove their containers, then take it down.
    let deleted = lab.ctl(&["delete", "deployment", "compose-smoke"]);
    assert!(deleted.status.success(), "delete: {}", text(&deleted));
    lab.wait_for("the replica containers to be removed", || {
        let ids = lab.replica_containers();
        if ids.is_empty() {
            Ok(())
        } else {
            Err(format!("containers left: {ids:?}"))
        }
    });

    let down = lab.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
    assert!(
        down.status.success(),
        "docker-compose down: {}",
        text(&down)
    );
    lab.down = true;
    eprintln!("down after {:?}", started.elapsed());

    let label = format!("label=com.docker.compose.project={}", lab.project);
    let containers = docker(&["ps", "-aq", "--filter", &label]);
    assert!(
        containers.trim().is_empty(),
        "containers of {} left after down: {containers}",
        lab.project
    );
    let networks = docker(&["network", "ls", "-q", "--filter", &label]);
    assert!(
        networks.trim().is_empty(),
        "networks of {} left after down: {networks}",
        lab.project
    );
    let volumes = docker(&["volume", "ls", "-q", "--filter", &label]);
    assert!(
        volumes.trim().is_empty(),
        "volumes of {} left after down -v: {volumes}",
        lab.project
    );
}
