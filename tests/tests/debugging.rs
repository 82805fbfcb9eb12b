//! Debugging a replica as a Docker user would (issue 19), end to end on both
//! runtimes: `droverctl exec` (pipes, stdin, a terminal opened by the test
//! with a resize, the exit code, a viewer refused, the replica killed under
//! an open exec), `logs --previous` after a crash, `port-forward` to a
//! replica without hostPort, and `cp` both ways, byte for byte.
//!
//! Real controllers, real agents and real replicas: child processes on the
//! process runtime, containers on this machine's Docker engine (skipped with
//! a note when there is none, unless `DROVER_REQUIRE_DOCKER=1`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_pki::Role;
use drover_tests::cluster::{containers_of, err, ok};
use drover_tests::docker::{available as docker_available, unique, Containers};
use drover_tests::Cluster;
use nix::pty::{openpty, Winsize};
use nix::sys::termios::{tcgetattr, LocalFlags};

const T: Duration = Duration::from_secs(90);

/// Where the replicas of a test run, and what differs between runtimes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runtime {
    Process,
    Docker,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Docker => "docker",
        }
    }

    /// A scratch path inside the replica (relative: the process runtime's
    /// replicas share the host's /tmp with every other test).
    fn scratch(self, file: &str) -> String {
        match self {
            Runtime::Process => file.to_string(),
            Runtime::Docker => format!("/tmp/{file}"),
        }
    }
}

/// A cluster of one controller and one agent of `runtime`, plus the guard
/// that removes the Docker containers its node made.
async fn cluster(runtime: Runtime) -> (Cluster, Containers, String) {
    let node = unique(&format!("dbg-{}", &runtime.name()[..4]));
    let guard = Containers(vec![node.clone()]);
    let c = Cluster::with_agents(1, runtime.name(), std::slice::from_ref(&node))
        .await
        .expect("cluster");
    (c, guard, node)
}

/// Apply a one-replica deployment running `script` with `sh -c`; its
/// replica's name once it runs.
async fn deploy(c: &Cluster, name: &str, script: &str) -> String {
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations:
    drover.io/restart-backoff-initial: 500ms
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", {script:?}]
        resources:
          requests: {{cpu: 50m, memory: 16Mi}}
"#
    );
    let file = c.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).expect("manifest");
    ok(&c.ctl().run(&["apply", "-f", &file.to_string_lossy()]));
    let placed = c
        .wait_for(&format!("{name} running"), T, || {
            c.running_placements(name, 1)
        })
        .await
        .expect("replica runs");
    placed.into_keys().next().expect("one replica")
}

/// stdout and stderr of a droverctl run as text, and its exit code.
fn outcome(out: &std::process::Output) -> (String, String, Option<i32>) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

fn exec_runs_commands(c: &Cluster, replica: &str) {
    // Output on both streams, and the command's exit code as droverctl's.
    let out = c.ctl().run(&[
        "exec",
        replica,
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 3",
    ]);
    let (stdout, stderr, code) = outcome(&out);
    assert_eq!(stdout, "to-stdout\n");
    assert_eq!(stderr, "to-stderr\n");
    assert_eq!(code, Some(3));
    // The replica's environment.
    let out = ok(&c
        .ctl()
        .run(&["exec", replica, "--", "sh", "-c", "echo $HOSTNAME"]));
    assert_eq!(out.trim(), replica);
    // -i: stdin reaches the command, and its end ends it.
    let out = c.ctl().run_with_stdin(
        &["exec", "-i", replica, "--", "wc", "-c"],
        Some(&[b'x'; 100_000]),
    );
    assert_eq!(ok(&out).trim(), "100000");
    // A command that does not exist: failure naming it, not a hang.
    let out = c
        .ctl()
        .run(&["exec", replica, "--", "no-such-command-here"]);
    let (stdout, stderr, code) = outcome(&out);
    assert_ne!(code, Some(0));
    assert!(
        format!("{stdout}{stderr}").contains("no-such-command-here"),
        "{stdout}{stderr}"
    );
}

fn viewers_are_refused(c: &Cluster, replica: &str) {
    let pki = c.pki.as_ref().expect("a secure cluster");
    let viewer = c
        .ctl()
        .as_identity(&pki.client(Role::Viewer, "ann").expect("viewer"));
    let file = c.dir.path().join("viewer.txt");
    std::fs::write(&file, "not for viewers").expect("write");
    let (file, dest) = (file.to_string_lossy(), format!("{replica}:x"));
    for args in [
        vec!["exec", replica, "--", "true"],
        vec!["cp", &file, &dest],
    ] {
        let e = err(&viewer.run(&args));
        assert_eq!(e.lines().count(), 1, "one sentence: {e}");
        assert!(
            e.contains("viewer \"ann\" may not call Exec (it needs role admin)"),
            "{args:?}: {e}"
        );
    }
    // Logs stay open to viewers.
    ok(&viewer.run(&["logs", replica]));
}

/// A pseudo-terminal the test holds, as a terminal emulator would.
struct Terminal {
    master: OwnedFd,
    /// Kept open so the terminal's settings can be read after droverctl exits.
    slave: OwnedFd,
    screen: Arc<Mutex<String>>,
}

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, Winsize);

impl Terminal {
    fn open(cols: u16, rows: u16) -> Terminal {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).expect("openpty");
        let mut reader = std::fs::File::from(pty.master.try_clone().expect("dup"));
        let screen = Arc::new(Mutex::new(String::new()));
        let shared = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&text);
            }
        });
        Terminal {
            master: pty.master,
            slave: pty.slave,
            screen,
        }
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().expect("dup"))
    }

    fn type_line(&self, line: &str) {
        let mut w = std::fs::File::from(self.master.try_clone().expect("dup"));
        w.write_all(line.as_bytes()).expect("type");
        w.write_all(b"\r").expect("type");
    }

    /// The kernel tells the terminal's foreground process (droverctl) with SIGWINCH.
    fn resize(&self, cols: u16, rows: u16) {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one Winsize from a live value.
        unsafe { set_window_size(self.master.as_raw_fd(), &size) }.expect("resize");
    }

    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + T;
        loop {
            let screen = self
                .screen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if screen.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} never appeared on the terminal:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn exec_it_drives_a_shell(c: &Cluster, replica: &str) {
    let term = Terminal::open(97, 31);
    // setsid -c: droverctl leads a session whose controlling terminal is
    // this one, as in a terminal emulator (so resizes reach it as SIGWINCH).
    let ctl = c.ctl().command(&["exec", "-it", replica, "--", "sh"]);
    let mut cmd = Command::new("setsid");
    cmd.arg("-c")
        .arg(ctl.get_program())
        .args(ctl.get_args())
        .envs(ctl.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdin(term.stdio())
        .stdout(term.stdio())
        .stderr(term.stdio());
    let mut child = cmd.spawn().expect("droverctl exec -it starts");
    // The shell computes what is checked: the typed line itself (echoed by
    // the terminal) never contains the expected text.
    term.type_line("echo size-$(stty size | tr ' ' x)");
    term.wait_for("size-31x97");
    term.resize(120, 40);
    // Wait inside the shell until the resize has arrived, then report it.
    term.type_line(
        "while [ \"$(stty size)\" != '40 120' ]; do sleep 0.1; done; echo now-$(stty size | tr ' ' x)",
    );
    term.wait_for("now-40x120");
    term.type_line("exit 7");
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "droverctl exec -it did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(7), "the shell's exit code");
    // The terminal is back in its normal (cooked, echoing) mode.
    let settings = tcgetattr(&term.slave).expect("tcgetattr");
    assert!(
        settings
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO),
        "raw mode was not restored: {:?}",
        settings.local_flags
    );
}

/// Kill the replica's main process as a crash or an operator would.
fn kill_replica(runtime: Runtime, c: &Cluster, node: &str, replica: &str) {
    match runtime {
        Runtime::Docker => {
            let ids = containers_of(node, false);
            assert_eq!(ids.len(), 1, "one running container: {ids:?}");
            let out = Command::new("docker")
                .args(["kill", &ids[0]])
                .output()
                .expect("docker kill");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Runtime::Process => {
            let state = c.agents[0].data_dir.join("process/state.json");
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&state).expect("state")).expect("json");
            let pid = v["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .find(|e| e["replica"] == format!("default.{replica}") && e["exit"].is_null())
                .and_then(|e| e["pid"].as_i64())
                .expect("the replica's pid");
            let out = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output()
                .expect("kill");
            assert!(out.status.success());
        }
    }
}

fn killing_the_replica_ends_an_open_exec(runtime: Runtime, c: &Cluster, node: &str, replica: &str) {
    let mut exec = c.ctl().spawn(&[
        "exec",
        replica,
        "--",
        "sh",
        "-c",
        "echo session-open; sleep 600",
    ]);
    let deadline = Instant::now() + T;
    while !exec.output().contains("session-open") {
        assert!(
            Instant::now() < deadline,
            "exec never started: {}",
            exec.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_replica(runtime, c, node, replica);
    let status = loop {
        if let Some(s) = exec.exited() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "exec outlived its replica: {}",
            exec.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let out = exec.output();
    assert!(
        out.contains(&format!(
            "error: replica {replica} stopped: the exec session ended with it"
        )),
        "{out}"
    );
}

async fn exec_suite(runtime: Runtime) {
    let (c, _containers, node) = cluster(runtime).await;
    let replica = deploy(&c, "box", "echo ready; while true; do sleep 1; done").await;
    exec_runs_commands(&c, &replica);
    viewers_are_refused(&c, &replica);
    exec_it_drives_a_shell(&c, &replica);
    killing_the_replica_ends_an_open_exec(runtime, &c, &node, &replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_the_process_runtime() {
    exec_suite(Runtime::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_the_docker_runtime() {
    if !docker_available() {
        return;
    }
    exec_suite(Runtime::Docker).await;
}

/// A crash: the replica writes its last words when the test asks, exits 3,
/// and its next run waits (the trigger file does not survive the restart).
async fn logs_previous_shows_the_crashed_run(runtime: Runtime, c: &Cluster) {
    let replica = deploy(
        c,
        "crasher",
        "echo run-started; while [ ! -e crash-now ]; do sleep 0.1; done; echo last words of the crashed run; exit 3",
    )
    .await;
    let e = err(&c.ctl().run(&["logs", "--previous", &replica]));
    assert!(e.contains("has no previous run"), "{e}");
    ok(&c.ctl().run(&["exec", &replica, "--", "touch", "crash-now"]));
    let previous = c
        .wait_for("a previous run", T, || async {
            let out = c.ctl().run(&["logs", "--previous", &replica]);
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        })
        .await
        .expect("logs --previous");
    assert_eq!(previous, "run-started\nlast words of the crashed run\n");
    let tail = ok(&c
        .ctl()
        .run(&["logs", "--previous", "--tail", "1", &replica]));
    assert_eq!(tail, "last words of the crashed run\n");
    // The current run has not crashed.
    c.wait_for("the next run", T, || async {
        // Between the crashed run's removal and the next start there is
        // no current run to show.
        let out = c.ctl().run(&["logs", &replica]);
        let (stdout, stderr, _) = outcome(&out);
        if out.status.success() && stdout == "run-started\n" {
            Ok(())
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    })
    .await
    .expect("current logs");
    if runtime == Runtime::Docker {
        let timed = ok(&c
            .ctl()
            .run(&["logs", "--timestamps", "--since", "10m", &replica]));
        let (stamp, rest) = timed.trim_end().split_once(' ').expect("a stamp");
        assert!(
            drover_proto::timestamp::parse_rfc3339_ms(stamp).is_some(),
            "{timed}"
        );
        assert_eq!(rest, "run-started");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn try_http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(T))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn http_get(port: u16) -> String {
    try_http_get(port).expect("GET through port-forward")
}

async fn port_forward_serves_http(runtime: Runtime, c: &Cluster) {
    // No hostPort: on Docker the port is only on the container's network.
    let port = match runtime {
        Runtime::Docker => 8080,
        Runtime::Process => free_port(),
    };
    let httpd = match runtime {
        Runtime::Docker => "httpd -f -p 8080 -h www",
        Runtime::Process => &format!("busybox httpd -f -p 127.0.0.1:{port} -h www"),
    };
    let script =
        format!("mkdir -p www && echo hello-through-the-tunnel > www/index.html && exec {httpd}");
    let replica = deploy(c, "web", &script).await;
    let mut forward = c
        .ctl()
        .spawn(&["port-forward", &replica, &format!(":{port}")]);
    let deadline = Instant::now() + T;
    let local: u16 = loop {
        let out = forward.output();
        if let Some(line) = out.lines().find(|l| l.starts_with("Forwarding from ")) {
            let addr = line["Forwarding from ".len()..]
                .split(" -> ")
                .next()
                .expect("address");
            break addr
                .rsplit(':')
                .next()
                .expect("port")
                .parse()
                .expect("port");
        }
        assert!(Instant::now() < deadline, "no Forwarding line: {out}");
        assert!(forward.exited().is_none(), "port-forward exited: {out}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The replica runs once its process does; httpd listens a moment later.
    c.wait_for("httpd answering through the tunnel", T, || async {
        match try_http_get(local) {
            Ok(body) if body.contains(" 200 OK\r\n") => Ok(()),
            Ok(body) => Err(body),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("httpd answers");
    for _ in 0..3 {
        let body = http_get(local);
        assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
        assert!(body.contains("hello-through-the-tunnel"), "{body}");
    }
}

fn cp_round_trips_a_file(runtime: Runtime, c: &Cluster, replica: &str) {
    let dir = c.dir.path();
    let original = dir.join("blob.bin");
    // Every byte value, and a size that is no multiple of any chunk.
    let data: Vec<u8> = (0..3_000_017u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&original, &data).expect("write");
    let remote = format!("{replica}:{}", runtime.scratch("blob.bin"));
    ok(&c.ctl().run(&["cp", &original.to_string_lossy(), &remote]));
    let out = ok(&c.ctl().run(&[
        "exec",
        replica,
        "--",
        "wc",
        "-c",
        &runtime.scratch("blob.bin"),
    ]));
    assert!(out.trim().starts_with(&data.len().to_string()), "{out}");
    let back = dir.join("blob.back");
    ok(&c.ctl().run(&["cp", &remote, &back.to_string_lossy()]));
    assert!(
        std::fs::read(&back).expect("read") == data,
        "cp changed the bytes"
    );
    // A directory tree, there and back.
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("top.txt"), "top\n").expect("write");
    std::fs::write(tree.join("sub/deep.txt"), "deep\n").expect("write");
    let remote_tree = format!("{replica}:{}", runtime.scratch("tree"));
    ok(&c.ctl().run(&["cp", &tree.to_string_lossy(), &remote_tree]));
    let tree_back = dir.join("tree.back");
    ok(&c
        .ctl()
        .run(&["cp", &remote_tree, &tree_back.to_string_lossy()]));
    assert_eq!(
        std::fs::read_to_string(tree_back.join("sub/deep.txt")).expect("deep"),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree_back.join("top.txt")).expect("top"),
        "top\n"
    );
    // A missing file is one sentence from tar.
    let missing = format!("{replica}:{}", runtime.scratch("no-such-file"));
    let e = err(&c.ctl().run(&["cp", &missing, &back.to_string_lossy()]));
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("no-such-file"), "{e}");
}

async fn files_ports_and_crashes_suite(runtime: Runtime) {
    let (c, _containers, _node) = cluster(runtime).await;
    logs_previous_shows_the_crashed_run(runtime, &c).await;
    port_forward_serves_http(runtime, &c).await;
    let replica = c
        .wait_for("web running", T, || c.running_placements("web", 1))
        .await
        .expect("web")
        .into_keys()
        .next()
        .expect("one");
    cp_round_trips_a_file(runtime, &c, &replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_previous_port_forward_and_cp_on_the_process_runtime() {
    files_ports_and_crashes_suite(Runtime::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_previous_port_forward_and_cp_on_the_docker_runtime() {
    if !docker_available() {
        return;
    }
    files_ports_and_crashes_suite(Runtime::Docker).await;
}

/// An agent bounds its sessions: a cap on how many run at once, an idle
/// timeout; and each one leaves an audit line without its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_closed_when_idle_and_audited() {
    let mut c = Cluster::start(1).await.expect("cluster");
    let node = unique("dbg-cap");
    c.start_agent(
        &node,
        "process",
        &[
            "--cpu",
            "4",
            "--memory",
            "4Gi",
            "--max-debug-sessions",
            "1",
            "--debug-idle-timeout",
            "2s",
        ],
    )
    .expect("agent");
    c.wait_nodes_ready(1, T).await.expect("node");
    let replica = deploy(&c, "box", "while true; do sleep 1; done").await;

    // A busy session holds the only place.
    let held = c.ctl().spawn(&[
        "exec",
        &replica,
        "--",
        "sh",
        "-c",
        "while true; do echo secret-tick; sleep 0.2; done",
    ]);
    let deadline = Instant::now() + T;
    while !held.output().contains("secret-tick") {
        assert!(Instant::now() < deadline, "no output: {}", held.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = err(&c.ctl().run(&["exec", &replica, "--", "true"]));
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("the most it allows (--max-debug-sessions)"),
        "{e}"
    );
    // Its client gone, the place is free again.
    drop(held);
    c.wait_for("the session's place freed", T, || async {
        let out = c.ctl().run(&["exec", &replica, "--", "true"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await
    .expect("admitted again");

    // A session with no traffic either way is closed.
    let out = c.ctl().run(&["exec", &replica, "--", "sleep", "60"]);
    let (_, stderr, code) = outcome(&out);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: the exec session was idle for 2s and was closed\n"
    );

    // Audit lines: who, which replica, which command; never the data.
    let log = std::fs::read_to_string(&c.agents[0].log).expect("agent log");
    let audit: Vec<&str> = log.lines().filter(|l| l.contains(" audit: ")).collect();
    let started = audit
        .iter()
        .find(|l| l.contains("exec session started") && l.contains("secret-tick"))
        .expect("the busy session's start is audited");
    assert!(started.contains("who=admin"), "{started}");
    assert!(
        started.contains(&format!("replica=default.{replica}")),
        "{started}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("exec session ended") && l.contains("ending=idle")),
        "{audit:#?}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("secret-tick") && !l.contains("command=")),
        "session data reached the agent's log"
    );
}
