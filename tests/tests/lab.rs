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
    assert!(
        stderr.contains(" on n1: CrashLoopBackOff: exit 127"),
        "{stderr}"
    );
    assert!(stderr.contains("logs broken-"), "{stderr}");
    assert!(stderr.contains("describe deployment broken"), "{stderr}");
    // The lab stays up for the post-mortem the message points at.
    assert!(lab.dir().join("lab.json").exists());
}
