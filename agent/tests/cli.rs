//! The `drover-agent` binary as a person runs it: exit codes and one-sentence
//! errors, SIGTERM leaving replicas running, and a restarted agent adopting
//! them (same container ids, nothing restarted).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fake::FakeController;
use drover_agent::fixtures;
use drover_agent::runtime::{ProcessRuntime, Runtime};
use drover_proto::pb;
use drover_proto::pb::ReplicaState;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_drover-agent");

fn agent(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    // The fake controllers here speak plaintext.
    // Metrics off: agents started at once by parallel tests would all
    // want the default 127.0.0.1:9465.
    cmd.args(args)
        .arg("--insecure")
        .arg("--metrics-listen=")
        .env("DROVER_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn wait_exit(child: Child, limit: Duration) -> std::process::Output {
    tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the agent exits in time")
    .expect("join")
    .expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_not_running_exits_2_with_one_sentence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_string_lossy().to_string();
    let child = agent(&[
        "--name",
        "n1",
        "--controllers",
        "127.0.0.1:1",
        "--runtime",
        "docker",
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
    ])
    .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    .spawn()
    .expect("spawn");
    let out = wait_exit(child, Duration::from_secs(15)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("error: cannot reach the Docker engine at /nonexistent/docker.sock ("),
        "{stderr}"
    );
    assert!(
        stderr.contains("start Docker or use --runtime process"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_node_name_exits_1_with_the_controllers_sentence() {
    let ctl = FakeController::start().await;
    let sentence = "node name n1 is held by a live agent at 10.0.0.9:7101; choose another --name";
    ctl.refuse(Code::AlreadyExists, sentence);
    let addr = ctl.addr.to_string();
    let child = agent(&[
        "--name",
        "n1",
        "--controllers",
        &addr,
        "--runtime",
        "sim",
        "--data-dir",
        "/tmp",
        "--listen",
        "127.0.0.1:0",
    ])
    .spawn()
    .expect("spawn");
    let out = wait_exit(child, Duration::from_secs(15)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.trim(), format!("error: {sentence}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_refused_clearly() {
    let out = agent(&[
        "--controllers",
        "127.0.0.1:1",
        "--name",
        "Bad_Name",
        "--runtime",
        "sim",
    ])
    .output()
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with("error: node name \"Bad_Name\" is invalid"),
        "{stderr}"
    );

    let out = agent(&[
        "--controllers",
        "127.0.0.1:1",
        "--memory",
        "12XB",
        "--runtime",
        "sim",
        "--name",
        "n1",
    ])
    .output()
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("--memory \"12XB\": invalid quantity"),
        "{stderr}"
    );
}

fn sleeper(replica: &str) -> pb::Assignment {
    let mut a = common::shell(replica, "exec sleep 30");
    a.template_mut().spec.termination_grace_period_seconds = 2;
    fixtures::to_pb(&a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_replicas_running_and_a_new_agent_adopts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_string_lossy().to_string();
    let mut ctl = FakeController::start().await;
    let addr = ctl.addr.to_string();
    let args = [
        "--name",
        "n1",
        "--controllers",
        addr.as_str(),
        "--runtime",
        "process",
        "--data-dir",
        data.as_str(),
        "--listen",
        "127.0.0.1:0",
        "--heartbeat-ms",
        "100",
    ];

    let first = agent(&args).spawn().expect("spawn");
    let mut conn = ctl.next_conn(Duration::from_secs(10)).await;
    conn.hello().await;
    conn.assign(1, vec![sleeper("web-r-0")]).await;
    let id = loop {
        if let Some(pb::agent_message::Kind::Status(r)) =
            conn.recv(Duration::from_secs(10)).await.kind
        {
            if let Some(s) = r
                .replicas
                .iter()
                .find(|s| s.state() == ReplicaState::Running)
            {
                break s.container_id.clone();
            }
        }
    };

    let pid = nix::unistd::Pid::from_raw(first.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let out = wait_exit(first, Duration::from_secs(15)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The second life finds the replica running and reports it in Hello;
    // the same set then changes nothing.
    let second = agent(&args).spawn().expect("spawn again");
    let mut conn = ctl.next_conn(Duration::from_secs(10)).await;
    let hello = conn.hello().await;
    assert_eq!(hello.replicas.len(), 1);
    assert_eq!(hello.replicas[0].container_id, id);
    assert_eq!(hello.replicas[0].state(), ReplicaState::Running);
    conn.assign(1, vec![sleeper("web-r-0")]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    while let Ok(msg) = conn.from_agent.try_recv() {
        if let Some(pb::agent_message::Kind::Status(r)) = msg.kind {
            for s in r.replicas {
                assert_eq!(s.container_id, id, "adopted, not restarted: {s:?}");
            }
        }
    }

    // Two signals: the second forces the exit.
    let pid = nix::unistd::Pid::from_raw(second.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let out = wait_exit(second, Duration::from_secs(15)).await;
    assert!(out.status.code().is_some());

    let rt = ProcessRuntime::open(dir.path(), "n1").expect("runtime");
    let listed = rt.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].is_running(), "the replica outlived both agents");
    for o in listed {
        rt.remove(&o.container_id).await.expect("cleanup");
    }
}
