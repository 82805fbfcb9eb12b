//! `droverctl lab`, run as a user runs it: real network namespaces, a bridge,
//! iptables partitions, controllers with TLS, agents joining with a token,
//! and the seeded chaos runner. Needs root (CI runs as root); without root
//! every test says so and returns.
//!
//! Every test owns a lab in its own temp dir and a [`LabGuard`] that runs
//! `lab down` when the test ends, passed or failed.
//!
//! `DROVER_CHAOS_SOAK=ROUNDS` (and optionally `DROVER_CHAOS_SEED=S`) turns on
//! the long soak.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use drover_tests::bin;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A lab in a temp dir, removed with `lab down` on drop.
struct LabGuard {
    tmp: tempfile::TempDir,
}

impl LabGuard {
    fn new() -> LabGuard {
        LabGuard {
            tmp: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("lab")
    }

    fn config(&self) -> PathBuf {
        self.tmp.path().join("config.yaml")
    }

    /// `droverctl ARGS` with this lab's config file.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("droverctl"))
            .args(args)
            .env("DROVERCONFIG", self.config())
            .env_remove("DROVER_SERVER")
            .output()
            .expect("running droverctl")
    }

    /// `droverctl lab VERB ARGS --dir DIR`, which must succeed.
    fn lab(&self, verb: &str, args: &[&str]) -> String {
        let out = self.lab_output(verb, args);
        assert!(
            out.status.success(),
            "lab {verb} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn lab_output(&self, verb: &str, args: &[&str]) -> Output {
        let dir = self.dir().display().to_string();
        let mut all = vec!["lab", verb];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--dir", &dir]);
        self.ctl(&all)
    }

    fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir().join("lab.json")).expect("lab.json");
        serde_json::from_str(&text).expect("lab.json is JSON")
    }

    fn host(&self, name: &str) -> serde_json::Value {
        self.state()["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no host {name}"))
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // lab down removes the dir: keep the state file and logs.
            let keep =
                std::env::temp_dir().join(format!("drover-lab-failed-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            if let Ok(entries) = std::fs::read_dir(self.dir()) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".log") || name == "lab.json" {
                        let _ = std::fs::copy(e.path(), keep.join(&name));
                    }
                }
            }
            eprintln!("the lab's logs are kept in {}", keep.display());
        }
        if self.dir().join("lab.json").exists() {
            let out = self.lab_output("down", &[]);
            if !out.status.success() {
                eprintln!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// `ip netns exec NS timeout SECS bash -c 'exec 3<>/dev/tcp/IP/PORT'`: Some(true)
/// connected, Some(false) refused or unreachable, None timed out.
fn tcp_connect(ns: Option<&str>, ip: &str, port: u16, secs: u32) -> Option<bool> {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "timeout"]);
            c
        }
        None => Command::new("timeout"),
    };
    let status = cmd
        .arg(secs.to_string())
        .args(["bash", "-c", &script])
        .status()
        .expect("running bash");
    match status.code() {
        Some(0) => Some(true),
        Some(124) => None,
        _ => Some(false),
    }
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A live process (a zombie waiting for init to reap it is dead).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after
                .split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn up_then_down_leaves_no_process_namespace_bridge_or_veth() {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return;
    }
    let lab = LabGuard::new();
    let out = lab.lab("up", &["--controllers", "3", "--agents", "2"]);
    assert!(out.contains("next:"), "{out}");

    // The context works for plain droverctl.
    let nodes = lab.ctl(&["get", "nodes"]);
    let text = String::from_utf8_lossy(&nodes.stdout);
    assert!(nodes.status.success(), "{text}");
    assert!(text.contains("n1") && text.contains("n2"), "{text}");
    let members = lab.ctl(&["cluster", "status"]);
    assert!(members.status.success());

    // A second up in the same dir is refused, pointing at down.
    let again = lab.lab_output("up", &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("lab down"), "{err}");

    // Unknown hosts are named.
    let bad = lab.lab_output("kill", &["c9"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no host \"c9\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // kill, start, stop, start of one host.
    lab.lab("kill", &["c2"]);
    assert!(lab.lab("status", &[]).contains("stopped"));
    lab.lab("start", &["c2"]);
    lab.lab("stop", &["n2"]);
    lab.lab("start", &["n2"]);
    lab.lab("pause", &["n1"]);
    assert!(lab.lab("status", &[]).contains("paused"));
    lab.lab("resume", &["n1"]);

    let state = lab.state();
    let id = state["id"].as_u64().expect("id");
    let bridge = state["bridge"].as_str().expect("bridge").to_string();
    let hosts: Vec<serde_json::Value> = state["hosts"].as_array().expect("hosts").clone();
    let pids: Vec<u64> = hosts.iter().filter_map(|h| h["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 5, "every host runs a daemon: {hosts:?}");
    assert!(link_exists(&bridge));

    lab.lab("down", &[]);
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} survived lab down");
    }
    let left = netns_list();
    assert!(
        !left.contains(&format!("drv{id}-")),
        "namespaces left: {left}"
    );
    assert!(!link_exists(&bridge), "bridge {bridge} left");
    for h in &hosts {
        let veth = h["veth"].as_str().expect("veth");
        assert!(!link_exists(veth), "veth {veth} left");
    }
    assert!(!lab.dir().exists(), "lab dir left");
    let config = std::fs::read_to_string(lab.config()).unwrap_or_default();
    assert!(!config.contains("name: lab"), "context left: {config}");
}

#[test]
fn partition_drops_traffic_both_ways_and_heal_restores_it() {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return;
    }
    let lab = LabGuard::new();
    lab.lab("up", &["--controllers", "1", "--agents", "2"]);
    let n1 = lab.host("n1");
    let n2 = lab.host("n2");
    let (ns1, ip1) = (n1["ns"].as_str().unwrap(), n1["ip"].as_str().unwrap());
    let (ns2, ip2) = (n2["ns"].as_str().unwrap(), n2["ip"].as_str().unwrap());
    // The agents serve Agent.Logs on :7101.
    assert_eq!(tcp_connect(Some(ns1), ip2, 7101, 10), Some(true));
    assert_eq!(tcp_connect(Some(ns2), ip1, 7101, 10), Some(true));

    let bad = lab.lab_output("partition", &["n7"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no host \"n7\""));

    lab.lab("partition", &["n1", "--from", "n2"]);
    assert!(lab.lab("status", &[]).contains("n2"));
    // Both directions time out (dropped, not refused).
    assert_eq!(tcp_connect(Some(ns1), ip2, 7101, 3), None);
    assert_eq!(tcp_connect(Some(ns2), ip1, 7101, 3), None);
    // This machine (droverctl) still reaches both.
    assert_eq!(tcp_connect(None, ip1, 7101, 10), Some(true));

    lab.lab("heal", &[]);
    assert_eq!(tcp_connect(Some(ns1), ip2, 7101, 10), Some(true));
    assert_eq!(tcp_connect(Some(ns2), ip1, 7101, 10), Some(true));
}

fn chaos(rounds: u32, seed: u64) {
    chaos_with("process", rounds, seed);
}

fn chaos_with(runtime: &str, rounds: u32, seed: u64) {
    let lab = LabGuard::new();
    lab.lab(
        "up",
        &["--controllers", "3", "--agents", "3", "--runtime", runtime],
    );
    let out = lab.lab_output(
        "chaos",
        &["--rounds", &rounds.to_string(), "--seed", &seed.to_string()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "chaos seed {seed} found violations:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("no violations"), "{stdout}");
    assert!(stdout.contains(&format!("{rounds} round(s)")), "{stdout}");
}

#[test]
fn a_short_seeded_chaos_run_finds_no_violation() {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return;
    }
    chaos(15, 20261129);
}

/// A few rounds with replicas as Docker containers: agent host kills take
/// their containers with them, and counts still converge exactly. Seed 3's
/// first three rounds kill a follower, kill an agent host and partition an
/// agent.
#[test]
fn a_short_docker_chaos_run_finds_no_violation() {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return;
    }
    if !drover_tests::docker::available() {
        return;
    }
    chaos_with("docker", 3, 3);
}

#[test]
fn chaos_soak() {
    let Some(rounds) = std::env::var("DROVER_CHAOS_SOAK")
        .ok()
        .and_then(|r| r.parse().ok())
    else {
        eprintln!("skipped: set DROVER_CHAOS_SOAK=ROUNDS for the long soak");
        return;
    };
    assert!(is_root(), "the chaos soak needs root");
    let seed = std::env::var("DROVER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    chaos(rounds, seed);
}

/// The workspace's root, where `deploy/examples` lives.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A newcomer's machine without busybox: `lab up --apply` of the web example
/// refuses at once, naming the package, and makes nothing (no lab, so no
/// deployment that could never run).
#[test]
fn up_apply_without_busybox_refuses_at_once_naming_the_package() {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return;
    }
    let lab = LabGuard::new();
    let empty = tempfile::tempdir().expect("temp dir");
    let web = repo_root().join("deploy/examples/web.yaml");
    let dir = lab.dir().display().to_string();
    let started = std::time::Instant::now();
    let out = Command::new(bin("droverctl"))
        .args(["lab", "up", "--controllers", "1", "--agents", "1"])
        .arg("--apply")
        .arg(&web)
        .args(["--dir", &dir])
        .env("DROVERCONFIG", lab.config())
        .env("DROVER_LAB_BUSYBOX_PATH", empty.path())
        .env_remove("DROVER_SERVER")
        .output()
        .expect("running droverctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "lab up succeeded:\n{stdout}\n{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the refusal took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("busybox-static"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    assert!(!stdout.contains("started"), "{stdout}");
    assert!(!lab.dir().join("lab.json").exists(), "a lab was made");
    let config = std::fs::read_to_string(lab.config()).unwrap_or_default();
    assert!(
        !config.contains("name: lab"),
        "a context was written: {config}"
    );
}

/// A deployment that can never become available: `lab up --apply` gives up
/// after its bound, exits non-zero naming each replica and its reason, and
/// says what to run next.
#[test]
fn up_apply_of_a_deployment_that_cannot_run_fails_naming_replicas_and_reason() {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return;
    }
    let lab = LabGuard::new();
    // The manifest calls no applet: a stand-in busybox keeps this test from
    // installing one.
    let tools = tempfile::tempdir().expect("temp dir");
    let stub = tools.path().join("busybox");
    std::fs::write(&stub, "#!/bin/sh\nexit 1\n").expect("writing the stub");
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the stub");
    let manifest = tools.path().join("broken.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: broken\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: broken\n  template:\n    metadata:\n      labels:\n        app: broken\n    spec:\n      containers:\n      - name: main\n        image: drover/busybox:1\n        command: [\"sh\", \"-c\", \"exec no-such-binary-here\"]\n",
    )
    .expect("writing the manifest");
    let dir = lab.dir().display().to_string();
    let started = std::time::Instant::now();
    let out = Command::new(bin("droverctl"))
        .args(["lab", "up", "--controllers", "1", "--agents", "1"])
        .arg("--apply")
        .arg(&manifest)
        .args(["--timeout", "15s", "--dir", &dir])
        .env("DROVERCONFIG", lab.config())
        .env("DROVER_LAB_BUSYBOX_PATH", tools.path())
        .env_remove("DROVER_SERVER")
        .output()
        .expect("running droverctl");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "lab up succeeded:\n{stdout}\n{stderr}"
    );
    // Lab start-up (a leader, an agent Ready) plus the 15 s bound.
    assert!(took < std::time::Duration::from_secs(90), "took {took:?}");
    assert!(
        stdout.contains("waiting for broken 0/2 available"),
        "{stdout}"
    );
    assert!(
        stderr.contains("not available after 15s (broken: 0 of 2 available)"),
        "{stderr}"
    );
    assert!(stderr.contains("broken-"), "{stderr}");
    // Between restarts the replica waits in CrashLoopBackOff; right after
    // an exit (the restarts back off 1, 2, 4, 8 s: one falls near the 15 s
    // bound) it shows Error for as long as the restart takes. Either way
    // the reason is the exit code.
    assert!(
        stderr.contains(" on n1: CrashLoopBackOff: exit 127")
            || stderr.contains(" on n1: Error: exit 127"),
        "{stderr}"
    );
    assert!(stderr.contains("logs broken-"), "{stderr}");
    assert!(stderr.contains("describe deployment broken"), "{stderr}");
    // The lab stays up for the post-mortem the message points at.
    assert!(lab.dir().join("lab.json").exists());
}

// ---- Docker-runtime labs: one Docker engine per agent host (issue 20) ----

/// Whether this machine can run the Docker-runtime lab tests (root and a
/// Docker engine with the workload image); says why when not.
fn docker_lab_possible() -> bool {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return false;
    }
    drover_tests::docker::available()
}

impl LabGuard {
    /// `docker -H <host's engine> ARGS`.
    fn docker(&self, host: &str, args: &[&str]) -> Output {
        let engine = self.host(host)["engine"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{host} has no engine of its own"))
            .to_string();
        let socket = format!("unix:///run/drover-lab/{engine}/docker.sock");
        Command::new("docker")
            .args(["-H", &socket])
            .args(args)
            .output()
            .expect("running docker")
    }

    /// Names of the running containers of `host`'s engine.
    fn containers(&self, host: &str) -> Vec<String> {
        let out = self.docker(host, &["ps", "--format", "{{.Names}}"]);
        assert!(
            out.status.success(),
            "docker ps on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// (replica, status, node) of every replica, from `get replicas -o wide`.
    fn replicas(&self) -> Vec<(String, String, String)> {
        let out = self.ctl(&["get", "replicas", "-o", "wide"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(2)?.to_string(),
                    f.get(5)?.to_string(),
                ))
            })
            .collect()
    }
}

/// Poll `f` every 100 ms until it returns Some, or panic naming `what`.
fn wait_for<T>(limit: std::time::Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `GET http://IP:PORT/` from this machine (the root namespace): the body,
/// or None when the connection or the answer does not come within 3 s.
fn http_get(ip: &str, port: u16) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().ok()?;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .ok()?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
}

/// `lab up --runtime docker --apply web.yaml` as the README has it (with
/// one controller): three replicas with `hostPort: 8080` run side by side,
/// one per host, each on its host's own engine, and `curl <host>:8080`
/// answers from that host's replica. This machine's engine runs none of them.
#[test]
fn docker_hosts_each_bind_host_port_8080_on_their_own_address() {
    if !docker_lab_possible() {
        return;
    }
    let lab = LabGuard::new();
    let web = repo_root().join("deploy/examples/web.yaml");
    let started = std::time::Instant::now();
    let out = lab.lab(
        "up",
        &[
            "--controllers",
            "1",
            "--agents",
            "3",
            "--runtime",
            "docker",
            "--apply",
            &web.display().to_string(),
        ],
    );
    eprintln!("lab up --apply took {:?}:\n{out}", started.elapsed());
    assert!(out.contains("started 3 Docker engines"), "{out}");
    let replicas = lab.replicas();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    for host in ["n1", "n2", "n3"] {
        let ip = lab.host(host)["ip"].as_str().expect("ip").to_string();
        let (replica, status, _) = replicas
            .iter()
            .find(|(_, _, node)| node == host)
            .unwrap_or_else(|| panic!("no replica on {host}: {replicas:?}"));
        assert_eq!(status, "Running");
        // The `next:` lines point at each host's address.
        assert!(out.contains(&format!("curl http://{ip}:8080/")), "{out}");
        let body = http_get(&ip, 8080).unwrap_or_else(|| panic!("{ip}:8080 did not answer"));
        assert_eq!(body, format!("hello from {replica}"), "{host} at {ip}");
        let containers = lab.containers(host);
        assert!(
            containers.iter().any(|c| c.contains(replica.as_str())),
            "{replica} is not a container of {host}'s engine: {containers:?}"
        );
        assert!(
            drover_lab::sys::docker_containers(host).is_empty(),
            "this machine's engine runs a container of {host}"
        );
    }
}

/// A replica with host port 8080 on each of n1 and n2. `lab partition n1
/// --from n2` drops traffic between n2 (the host and its containers) and
/// n1's containers, both ways, while this machine still reaches n1: "reaches"
/// meaning a TCP connection from the root namespace to n1's agent port and
/// an HTTP answer from n1's replica on n1's address. `lab heal` restores it;
/// `lab pause n1` then freezes n1's replica too, `lab resume` thaws it.
#[test]
fn a_partition_cuts_a_docker_hosts_containers_off_both_ways_and_pause_freezes_them() {
    if !docker_lab_possible() {
        return;
    }
    let lab = LabGuard::new();
    let manifest = lab.tmp.path().join("web2.yaml");
    let web =
        std::fs::read_to_string(repo_root().join("deploy/examples/web.yaml")).expect("web.yaml");
    std::fs::write(&manifest, web.replace("replicas: 3", "replicas: 2")).expect("manifest");
    lab.lab(
        "up",
        &[
            "--controllers",
            "1",
            "--agents",
            "2",
            "--runtime",
            "docker",
            "--apply",
            &manifest.display().to_string(),
        ],
    );
    let ip = |h: &str| lab.host(h)["ip"].as_str().expect("ip").to_string();
    let (ip1, ip2) = (ip("n1"), ip("n2"));
    let ns2 = lab.host("n2")["ns"].as_str().expect("ns").to_string();
    let replicas = lab.replicas();
    let container = |host: &str| {
        let name = &replicas
            .iter()
            .find(|(_, _, n)| n == host)
            .unwrap_or_else(|| panic!("no replica on {host}: {replicas:?}"))
            .0;
        lab.containers(host)
            .into_iter()
            .find(|c| c.contains(name.as_str()))
            .unwrap_or_else(|| panic!("no container of {name} on {host}"))
    };
    let (c1, c2) = (container("n1"), container("n2"));
    // From inside `host`'s container, GET http://ip:8080/ (busybox wget).
    let fetch = |host: &str, c: &str, ip: &str| {
        lab.docker(
            host,
            &[
                "exec",
                c,
                "timeout",
                "3",
                "wget",
                "-qO-",
                &format!("http://{ip}:8080/"),
            ],
        )
        .status
        .success()
    };
    assert!(fetch("n1", &c1, &ip2), "n1's container cannot reach n2's");
    assert!(fetch("n2", &c2, &ip1), "n2's container cannot reach n1's");
    assert_eq!(tcp_connect(Some(&ns2), &ip1, 8080, 10), Some(true));

    lab.lab("partition", &["n1", "--from", "n2"]);
    // n2 (the host) to n1's container: dropped, not refused.
    assert_eq!(tcp_connect(Some(&ns2), &ip1, 8080, 3), None);
    // Container to container, both ways.
    assert!(!fetch("n2", &c2, &ip1), "n2's container still reaches n1's");
    assert!(!fetch("n1", &c1, &ip2), "n1's container still reaches n2's");
    // This machine still reaches n1: its agent, and its replica's host port.
    assert_eq!(tcp_connect(None, &ip1, 7101, 10), Some(true));
    let body = http_get(&ip1, 8080).expect("n1:8080 answers this machine");
    assert!(body.starts_with("hello from web-"), "{body}");

    lab.lab("heal", &[]);
    assert!(fetch("n1", &c1, &ip2), "after heal: n1's container to n2's");
    assert!(fetch("n2", &c2, &ip1), "after heal: n2's container to n1's");

    // Pause freezes the host's containers with it (the cgroup freezer):
    // its replica's port accepts nothing, as on a frozen machine.
    lab.lab("pause", &["n1"]);
    assert!(lab.lab("status", &[]).contains("paused"));
    assert_eq!(
        http_get(&ip1, 8080),
        None,
        "a paused host's replica answered"
    );
    lab.lab("resume", &["n1"]);
    let body = http_get(&ip1, 8080).expect("n1:8080 answers after resume");
    assert!(body.starts_with("hello from web-"), "{body}");
}

/// `lab kill n1` is a power loss: n1's engine and containers die with its
/// agent; its replicas run on the other hosts within the node timeout plus
/// slack, and after `lab start n1` (engine first, which finds its dead
/// containers) exactly the desired count runs across all engines.
#[test]
fn killing_a_docker_host_moves_its_replicas_and_start_keeps_the_count_exact() {
    if !docker_lab_possible() {
        return;
    }
    let lab = LabGuard::new();
    let manifest = lab.tmp.path().join("sleepers.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: sleepers\nspec:\n  replicas: 6\n  selector:\n    matchLabels:\n      app: sleepers\n  template:\n    metadata:\n      labels:\n        app: sleepers\n    spec:\n      containers:\n      - name: main\n        image: drover/busybox:1\n        command: [\"sleep\", \"100000\"]\n",
    )
    .expect("manifest");
    lab.lab(
        "up",
        &[
            "--controllers",
            "1",
            "--agents",
            "3",
            "--runtime",
            "docker",
            "--apply",
            &manifest.display().to_string(),
        ],
    );
    let running_containers = || -> usize {
        ["n1", "n2", "n3"]
            .iter()
            .map(|h| {
                lab.containers(h)
                    .iter()
                    .filter(|c| c.contains("sleepers-"))
                    .count()
            })
            .sum()
    };
    assert_eq!(running_containers(), 6);
    let on_n1 = lab.replicas().iter().filter(|(_, _, n)| n == "n1").count();
    assert!(on_n1 > 0, "nothing was placed on n1: {:?}", lab.replicas());
    let engine_pid = |what: &str| lab.host("n1")["engine"][what].as_u64();
    let (containerd, dockerd) = (
        engine_pid("containerd_pid").expect("containerd pid"),
        engine_pid("dockerd_pid").expect("dockerd pid"),
    );

    let killed_at = std::time::Instant::now();
    lab.lab("kill", &["n1"]);
    assert!(
        !alive(containerd) && !alive(dockerd),
        "n1's engine survived"
    );
    // Node timeout (3 s) + scheduling + container start on the others.
    wait_for(
        std::time::Duration::from_secs(60),
        "6 replicas Running, none on n1",
        || {
            let r = lab.replicas();
            (r.len() == 6 && r.iter().all(|(_, s, n)| s == "Running" && n != "n1")).then_some(())
        },
    );
    eprintln!(
        "n1's {on_n1} replica(s) ran elsewhere {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    let started_at = std::time::Instant::now();
    lab.lab("start", &["n1"]);
    eprintln!(
        "lab start n1 (engine + agent) took {:.1}s",
        started_at.elapsed().as_secs_f64()
    );
    wait_for(std::time::Duration::from_secs(60), "n1 Ready again", || {
        let out = lab.ctl(&["get", "nodes"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("n1 ") && l.contains(" Ready"))
            .then_some(())
    });
    // n1's engine came back with its dead containers; the agent removes
    // them (or at least never runs them): exactly 6 run, all on n2 and n3.
    wait_for(
        std::time::Duration::from_secs(30),
        "n1's engine holds no sleepers container",
        || {
            let out = lab.docker("n1", &["ps", "-a", "--format", "{{.Names}}"]);
            (out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("sleepers-"))
                .then_some(())
        },
    );
    assert_eq!(running_containers(), 6);
    let r = lab.replicas();
    assert_eq!(r.len(), 6, "{r:?}");
    assert!(r.iter().all(|(_, s, _)| s == "Running"), "{r:?}");
}

/// `lab down --id N` removes a Docker lab whose state file was lost:
/// engines, mounts, cgroups, namespaces, bridge.
#[test]
fn down_by_id_removes_a_docker_lab_whose_state_file_is_lost() {
    if !docker_lab_possible() {
        return;
    }
    let lab = LabGuard::new();
    lab.lab(
        "up",
        &["--controllers", "1", "--agents", "1", "--runtime", "docker"],
    );
    let state = lab.state();
    let id = state["id"].as_u64().expect("id");
    let bridge = state["bridge"].as_str().expect("bridge").to_string();
    let engine = lab.host("n1")["engine"]["name"]
        .as_str()
        .expect("engine")
        .to_string();
    let dockerd = lab.host("n1")["engine"]["dockerd_pid"]
        .as_u64()
        .expect("dockerd pid");
    // Lose the state file (the lab's directory stays, as after a bad rm).
    std::fs::remove_file(lab.dir().join("lab.json")).expect("rm lab.json");
    let out = lab.ctl(&["lab", "down", "--id", &id.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("removed the engine {engine}")),
        "{stdout}"
    );
    assert!(!alive(dockerd), "dockerd survived");
    assert!(!netns_list().contains(&format!("drv{id}-")));
    assert!(!link_exists(&bridge));
    assert!(!Path::new("/run/drover-lab").join(&engine).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = lab.dir().display().to_string();
    assert!(!mounts.contains(&dir), "mounts left under {dir}");
    // Nothing is left to remove: said in one sentence.
    let again = lab.ctl(&["lab", "down", "--id", &id.to_string()]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("nothing of lab {id}")),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// Every replica process of the lab, by replica name, with the hosts it
/// runs on now (from each process's working directory:
/// `<lab>/<host>/process/work/default.<replica>`).
fn replicas_by_host(
    lab_dir: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut found: std::collections::BTreeMap<_, std::collections::BTreeSet<_>> =
        Default::default();
    for (_, cwd) in drover_lab::sys::cwds_under(lab_dir) {
        let Ok(rest) = cwd.strip_prefix(lab_dir) else {
            continue;
        };
        let parts: Vec<String> = rest
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if let [host, process, work, replica, ..] = parts.as_slice() {
            if let (true, Some(name)) = (
                process == "process" && work == "work",
                replica.strip_prefix("default."),
            ) {
                found
                    .entry(name.to_string())
                    .or_default()
                    .insert(host.clone());
            }
        }
    }
    found
}

/// SPEC guarantee 9: with `--stop-after-disconnect`, a partitioned host kills
/// its replicas before the cluster starts them elsewhere. The hosts' real
/// processes are sampled every 100 ms through the partition and the heal: no
/// replica ever runs on two hosts at once, and afterwards each runs once.
#[test]
fn with_fencing_no_replica_runs_on_two_hosts_through_a_partition() {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return;
    }
    let lab = LabGuard::new();
    let manifest = lab.tmp.path().join("steady.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: steady
spec:
  replicas: 6
  selector:
    matchLabels:
      app: steady
  template:
    metadata:
      labels:
        app: steady
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#,
    )
    .expect("manifest");
    lab.lab(
        "up",
        &[
            "--controllers",
            "3",
            "--agents",
            "3",
            "--stop-after-disconnect",
            "2s",
            "--apply",
            &manifest.display().to_string(),
        ],
    );
    let dir = lab.dir();
    let settle = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let now = replicas_by_host(&dir);
        if now.len() == 6 && now.values().all(|h| h.len() == 1) {
            break now;
        }
        assert!(
            Instant::now() < settle,
            "6 replicas never ran once each: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let on_n1: Vec<String> = before
        .iter()
        .filter(|(_, hosts)| hosts.contains("n1"))
        .map(|(r, _)| r.clone())
        .collect();
    assert!(!on_n1.is_empty(), "n1 runs some replicas: {before:?}");

    lab.lab("partition", &["n1"]);
    let cut = Instant::now();
    let mut moved_at = None;
    let mut samples = 0;
    loop {
        let now = replicas_by_host(&dir);
        samples += 1;
        for (replica, hosts) in &now {
            assert!(
                hosts.len() <= 1,
                "{replica} runs on {hosts:?} at once, {:?} into the partition",
                cut.elapsed()
            );
        }
        let moved = on_n1.iter().all(|r| {
            now.get(r)
                .is_some_and(|h| h.len() == 1 && !h.contains("n1"))
        });
        if moved && moved_at.is_none() {
            moved_at = Some(cut.elapsed());
        }
        // Keep watching a while after they moved.
        if moved_at.is_some_and(|t| cut.elapsed() > t + Duration::from_secs(3)) {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "n1's replicas never ran elsewhere: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "n1's replicas ran elsewhere {:?} into the partition ({samples} samples)",
        moved_at.unwrap_or_default()
    );

    lab.lab("heal", &[]);
    let healed = Instant::now();
    loop {
        let now = replicas_by_host(&dir);
        for (replica, hosts) in &now {
            assert!(
                hosts.len() <= 1,
                "{replica} runs on {hosts:?} after the heal"
            );
        }
        if now.len() == 6 && healed.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(60),
            "not 6 replicas after the heal: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The frontend's output lines.
fn frontend_lines(lab: &LabGuard, replica: &str) -> Vec<String> {
    let out = lab.ctl(&["logs", replica]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not reached within {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// (name, node) of the replicas of `deployment`, once `want` are Running.
fn placed(lab: &LabGuard, deployment: &str, want: usize) -> Vec<(String, String)> {
    wait_until(
        &format!("{want} {deployment} replicas running"),
        Duration::from_secs(90),
        || {
            let out = lab.ctl(&[
                "get",
                "replicas",
                "-l",
                &format!("app={deployment}"),
                "-o",
                "json",
            ]);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let running: Vec<(String, String)> = items
                .iter()
                .filter(|i| i["status"]["state"] == "Running")
                .map(|i| {
                    (
                        i["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        i["spec"]["nodeName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect();
            if running.len() == want && items.len() == want {
                Ok(running)
            } else {
                Err(format!("{v}"))
            }
        },
    )
}

fn nft_tables(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "tables"])
        .output()
        .expect("nft list tables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// deploy/examples/services.yaml (no hostPort) in a lab with the process
/// runtime: the frontend replica reaches both backends, on two hosts,
/// through the cluster IP, its page answers on the NodePort of every host
/// (from this machine, and on 127.0.0.1 inside each host), a UDP Service
/// answers through its cluster IP, a killed backend host costs only the
/// requests sent before its node is declared down, and the rules leave with
/// the Services and with the agent.
#[test]
fn a_frontend_reaches_its_backend_through_the_cluster_ip_across_a_host_loss() {
    if !is_root() {
        eprintln!("skipped: lab needs root");
        return;
    }
    services_across_a_host_loss("process");
}

/// The same with the Docker runtime: containers reach the cluster IP from
/// their host's docker0, backends (no hostPort) are reached on the
/// ephemeral host ports their engines published, the UDP Service's replica
/// is a container, and Service names and an outside name (from a resolver
/// this test serves on this machine: the lab has no internet) resolve
/// inside the frontend container.
#[test]
fn docker_containers_reach_their_backend_through_the_cluster_ip_across_a_host_loss() {
    if !docker_lab_possible() {
        eprintln!("skipped: a Docker lab needs root and a Docker engine");
        return;
    }
    services_across_a_host_loss("docker");
}

fn services_across_a_host_loss(runtime: &str) {
    let lab = LabGuard::new();
    let upstream = (runtime == "docker").then(Upstream::start);
    let dns_upstream = upstream.as_ref().map(|u| u.addr.to_string());
    let mut up = vec!["--controllers", "1", "--agents", "3", "--runtime", runtime];
    if let Some(addr) = &dns_upstream {
        up.extend(["--dns-upstream", addr.as_str()]);
    }
    lab.lab("up", &up);
    // The example, as its comments say to run it.
    let app = repo_root().join("deploy/examples/services.yaml");
    let applied = lab.ctl(&["apply", "-f", &app.display().to_string()]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let backends = placed(&lab, "backend", 2);
    let frontend = placed(&lab, "frontend", 1).remove(0);
    assert_ne!(backends[0].1, backends[1].1, "the backends on two hosts");
    assert!(
        backends.iter().any(|(_, node)| *node != frontend.1),
        "a backend on another host than the frontend: {backends:?} {frontend:?}"
    );
    if runtime == "docker" {
        // Endpoints are node address : published (ephemeral) host port.
        wait_until(
            "both backends as endpoints",
            Duration::from_secs(60),
            || {
                let ep = String::from_utf8_lossy(&lab.ctl(&["get", "ep", "backend"]).stdout)
                    .into_owned();
                let ports: Vec<&str> = ep
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|w| w.starts_with("10.213."))
                    .collect();
                if ports.len() == 2 && ports.iter().all(|p| !p.ends_with(":8081")) {
                    Ok(())
                } else {
                    Err(ep.clone())
                }
            },
        );
    }

    // Both backends answer through the cluster IP.
    let lines = wait_until(
        "answers from both backends",
        Duration::from_secs(60),
        || {
            let lines = frontend_lines(&lab, &frontend.0);
            let both = backends
                .iter()
                .all(|(name, _)| lines.iter().any(|l| l == &format!("ok backend {name}")));
            if both {
                Ok(lines)
            } else {
                Err(lines.join("\n"))
            }
        },
    );
    assert!(lines.iter().any(|l| l.starts_with("ok backend")));

    // The frontend's page through its NodePort, from this machine, on every host's address.
    for name in ["n1", "n2", "n3"] {
        let ip = lab.host(name)["ip"].as_str().expect("ip").to_string();
        let script = format!(
            "exec 3<>/dev/tcp/{ip}/30081 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        );
        // The frontend joins its Service's endpoints once its readiness probe passes.
        wait_until(
            &format!("the NodePort on {name} ({ip})"),
            Duration::from_secs(30),
            || {
                let out = Command::new("timeout")
                    .args(["5", "bash", "-c", &script])
                    .output()
                    .expect("bash");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains("ok backend ") {
                    Ok(())
                } else {
                    Err(text)
                }
            },
        );
    }

    // The NodePort on 127.0.0.1 inside every host (route_localnet).
    for name in ["n1", "n2", "n3"] {
        let ns = lab.host(name)["ns"].as_str().expect("ns").to_string();
        let script = "exec 3<>/dev/tcp/127.0.0.1/30081 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3";
        wait_until(
            &format!("the NodePort on 127.0.0.1 inside {name}"),
            Duration::from_secs(30),
            || {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "timeout", "5", "bash", "-c", script])
                    .output()
                    .expect("bash");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains("ok backend ") {
                    Ok(())
                } else {
                    Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
                }
            },
        );
    }

    udp_through_a_cluster_ip(&lab, runtime);
    if runtime == "docker" {
        names_resolve_in_containers(&lab, &frontend.0);
    }

    // Kill the host of a backend the frontend does not run on; requests keep succeeding.
    let (victim_replica, victim) = backends
        .iter()
        .find(|(_, node)| *node != frontend.1)
        .cloned()
        .expect("a backend on another host");
    let before = frontend_lines(&lab, &frontend.0).len();
    lab.lab("kill", &[&victim]);
    let killed_at = Instant::now();
    // Once the controller knows (node timeout), every request succeeds again.
    let after = wait_until(
        "ten successes in a row after the loss",
        Duration::from_secs(60),
        || {
            let lines = frontend_lines(&lab, &frontend.0);
            let tail: Vec<&String> = lines.iter().rev().take(10).collect();
            if lines.len() >= before + 10 && tail.iter().all(|l| l.starts_with("ok backend")) {
                Ok(lines)
            } else {
                Err(lines[before.min(lines.len())..].join("\n"))
            }
        },
    );
    let failures = after[before..].iter().filter(|l| *l == "fail").count();
    let requests = after.len() - before;
    eprintln!(
        "{runtime}: host {victim} ({victim_replica}) killed: {failures} of {requests} requests \
         failed, all succeeding again {:.1} s later",
        killed_at.elapsed().as_secs_f64()
    );
    let endpoints =
        String::from_utf8_lossy(&lab.ctl(&["get", "ep", "backend"]).stdout).into_owned();
    let victim_ip = lab.host(&victim)["ip"].as_str().expect("ip").to_string();
    assert!(!endpoints.contains(&victim_ip), "{endpoints}");

    // The rules go with the Service and with the agent.
    let ns1 = lab.host(&frontend.1)["ns"]
        .as_str()
        .expect("ns")
        .to_string();
    assert!(nft_tables(&ns1).contains("drover-services"));
    let cluster_ip = {
        let out = lab.ctl(&["get", "svc", "backend", "-o", "jsonpath={.spec.clusterIP}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let rules = |ns: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "nft",
                "list",
                "table",
                "ip",
                "drover-services",
            ])
            .output()
            .expect("nft list table");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(rules(&ns1).contains(&cluster_ip), "{}", rules(&ns1));
    // An agent restart rebuilds its table, every rule once.
    lab.lab("stop", &[&frontend.1]);
    assert!(
        !nft_tables(&ns1).contains("drover-services"),
        "a stopped agent leaves no table: {}",
        nft_tables(&ns1)
    );
    lab.lab("start", &[&frontend.1]);
    let rule = format!("ip daddr {cluster_ip} tcp dport 80 ");
    wait_until(
        "the rules rebuilt after a restart",
        Duration::from_secs(30),
        || {
            let r = rules(&ns1);
            if r.matches(&rule).count() == 1 {
                Ok(())
            } else {
                Err(r)
            }
        },
    );
    let deleted = lab.ctl(&["delete", "svc", "backend", "frontend"]);
    assert!(deleted.status.success());
    wait_until(
        "the Service's rules removed",
        Duration::from_secs(10),
        || {
            let r = rules(&ns1);
            if r.contains(&cluster_ip) || r.contains("30081") {
                Err(r)
            } else {
                Ok(())
            }
        },
    );
    lab.lab("stop", &[&frontend.1]);
    assert!(
        !nft_tables(&ns1).contains("drover-services"),
        "a stopped agent leaves no table: {}",
        nft_tables(&ns1)
    );
}

/// A UDP echo replica behind a UDP Service port, asked from every host
/// through the cluster IP. Busybox has no UDP server, so the replica runs
/// the host's python3: directly with the process runtime; with Docker,
/// inside its container (its own network, its port published on an
/// ephemeral host port) from the host's root mounted read-only.
fn udp_through_a_cluster_ip(lab: &LabGuard, runtime: &str) {
    const SERVER: &str = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 5353))\nwhile True:\n    d, a = s.recvfrom(2048)\n    s.sendto(b'echo ' + d, a)\n";
    let container = if runtime == "docker" {
        format!(
            r#"      containers:
      - name: echo
        image: drover/busybox:1
        command: ["chroot", "/host", "/usr/bin/python3", "-c", {SERVER:?}]
        ports:
        - {{containerPort: 5353, protocol: UDP}}
        volumeMounts:
        - {{name: host, mountPath: /host, readOnly: true}}
      volumes:
      - {{name: host, hostPath: {{path: /, type: Directory}}}}
"#
        )
    } else {
        format!(
            r#"      containers:
      - name: echo
        image: drover/busybox:1
        command: ["/usr/bin/python3", "-c", {SERVER:?}]
"#
        )
    };
    const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      terminationGracePeriodSeconds: 1
CONTAINER"#;
    let manifest = SERVICE.replace("CONTAINER", &container);
    let file = lab.tmp.path().join("echo.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let applied = lab.ctl(&["apply", "-f", &file.display().to_string()]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let out = lab.ctl(&["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let client = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(1)\ns.sendto(b'hi', ('{ip}', 53))\nprint(s.recvfrom(2048)[0].decode())\n"
    );
    for name in ["n1", "n2", "n3"] {
        let ns = lab.host(name)["ns"].as_str().expect("ns").to_string();
        wait_until(
            &format!("a UDP answer through {ip}:53 from {name}"),
            Duration::from_secs(60),
            || {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "python3", "-c", &client])
                    .output()
                    .expect("python3");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.trim() == "echo hi" {
                    Ok(())
                } else {
                    Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
                }
            },
        );
    }
    let deleted = lab.ctl(&["delete", "-f", &file.display().to_string()]);
    assert!(deleted.status.success());
}

/// Service names from inside a Docker replica, through its agent's name
/// server: the short name, with the namespace, and in full; and a name
/// outside the cluster, which the agent forwards to [`Upstream`].
fn names_resolve_in_containers(lab: &LabGuard, replica: &str) {
    for name in [
        "backend",
        "backend.default",
        "backend.default.svc.cluster.local",
    ] {
        let script = format!("timeout 3 wget -qO- http://{name}/");
        wait_until(
            &format!("{name} answering inside {replica}"),
            Duration::from_secs(30),
            || {
                let out = lab.ctl(&["exec", replica, "--", "sh", "-c", &script]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains("backend ") {
                    Ok(())
                } else {
                    Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
                }
            },
        );
    }
    wait_until(
        &format!("{OUTSIDE_NAME} resolving inside {replica}"),
        Duration::from_secs(30),
        || {
            let out = lab.ctl(&["exec", replica, "--", "nslookup", OUTSIDE_NAME]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains(OUTSIDE_ADDRESS) {
                Ok(())
            } else {
                Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            }
        },
    );
}

/// The name [`Upstream`] answers, and its address.
const OUTSIDE_NAME: &str = "www.outside.test";
const OUTSIDE_ADDRESS: &str = "198.51.100.7";

/// A DNS server on this machine's address, authoritative for
/// `outside.test`: the resolver the Docker lab's agents forward outside
/// names to (`lab up --dns-upstream`), standing in for the internet the lab
/// hosts do not have. Lab hosts reach it through their default route (the
/// lab bridge on this machine). Serves until dropped.
struct Upstream {
    addr: std::net::SocketAddr,
    _server: hickory_server::Server<hickory_server::zone_handler::Catalog>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    fn start() -> Upstream {
        use hickory_server::net::runtime::TokioRuntimeProvider;
        use hickory_server::proto::rr::rdata::{A, SOA};
        use hickory_server::proto::rr::{LowerName, Name, RData, Record};
        use hickory_server::store::in_memory::InMemoryZoneHandler;
        use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
        use std::str::FromStr as _;

        let ip = this_machine_address();
        let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind the upstream resolver");
        socket.set_nonblocking(true).expect("non-blocking");
        let addr = socket.local_addr().expect("its address");
        let origin = Name::from_str("outside.test.").expect("origin");
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            Name::from_str("ns.outside.test.").expect("name"),
            Name::from_str("hostmaster.outside.test.").expect("name"),
            1,
            60,
            10,
            3600,
            5,
        );
        zone.upsert_mut(Record::from_rdata(origin.clone(), 5, RData::SOA(soa)), 1);
        let address: std::net::Ipv4Addr = OUTSIDE_ADDRESS.parse().expect("address");
        zone.upsert_mut(
            Record::from_rdata(
                Name::from_str(&format!("{OUTSIDE_NAME}.")).expect("name"),
                5,
                RData::A(A(address)),
            ),
            1,
        );
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![std::sync::Arc::new(zone)]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let server = runtime.block_on(async move {
            let mut server = hickory_server::Server::new(catalog);
            server.register_socket(tokio::net::UdpSocket::from_std(socket).expect("tokio socket"));
            server
        });
        Upstream {
            addr,
            _server: server,
            _runtime: runtime,
        }
    }
}

/// An IPv4 address of this machine that is no lab's, Docker's or
/// loopback (`ip -4 -o addr show scope global`).
fn this_machine_address() -> std::net::Ipv4Addr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f.get(1)?;
            if dev.starts_with("docker") || dev.starts_with("drv") || dev.starts_with("br-") {
                return None;
            }
            f.get(3)?.split('/').next()?.parse().ok()
        })
        .next()
        .unwrap_or_else(|| panic!("no global IPv4 address on this machine: {text}"))
}
