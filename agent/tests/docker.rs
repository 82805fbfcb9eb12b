//! The Docker runtime against the real engine.
//!
//! Gated: without `/var/run/docker.sock` every test prints a note and passes,
//! unless `DROVER_REQUIRE_DOCKER=1` (CI), which makes them fail instead. The
//! image `drover/busybox:1` is built with `deploy/images/build.sh` when
//! missing. Every test runs as its own node `drover-test-<random>`, names its
//! replicas `test-<random>-…` (containers `drover-test-<random>-…`), and a
//! guard removes every container carrying that node label when the test ends,
//! panics included.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use common::{collect_logs, eventually, next_exit};
use drover_agent::assignment::Assignment;
use drover_agent::fixtures;
use drover_agent::runtime::docker::DockerConfig;
use drover_agent::runtime::{labels, ContainerState, DockerRuntime, LogOptions, Runtime};
use drover_agent::supervisor::{Supervisor, SupervisorConfig, SupervisorHandle};
use drover_agent::AgentError;
use drover_manifest::{ContainerPort, EnvVar, Protocol};
use drover_proto::pb::ReplicaState;
use tokio_util::sync::CancellationToken;

const SOCKET: &str = "/var/run/docker.sock";
const IMAGE: &str = "drover/busybox:1";

/// Whether to run: the socket exists, or the test must fail because CI
/// requires Docker.
fn docker_or_skip(test: &str) -> bool {
    if std::path::Path::new(SOCKET).exists() {
        ensure_image();
        return true;
    }
    if std::env::var("DROVER_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("DROVER_REQUIRE_DOCKER=1 but {SOCKET} is missing: start Docker");
    }
    eprintln!(
        "note: skipping {test}: {SOCKET} is missing (DROVER_REQUIRE_DOCKER=1 makes this fail)"
    );
    false
}

/// Build drover/busybox:1 once per test binary (the script skips an existing image).
fn ensure_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/images/build.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .map_err(|e| format!("cannot run {script}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{script} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// One test's node: a unique name, and removal of all its containers on drop.
struct TestNode {
    node: String,
    prefix: String,
}

impl TestNode {
    fn new() -> TestNode {
        let id = format!("{:08x}", rand::random::<u32>());
        TestNode {
            node: format!("drover-test-{id}"),
            prefix: format!("test-{id}"),
        }
    }

    fn replica(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    async fn runtime(&self) -> DockerRuntime {
        let mut cfg = DockerConfig::new(self.node.clone());
        cfg.pull_timeout = Duration::from_secs(60);
        DockerRuntime::connect(cfg)
            .await
            .expect("connect to Docker")
    }

    /// This node's runtime, and a supervisor over it (an agent's life).
    async fn supervised(
        &self,
    ) -> (
        Arc<DockerRuntime>,
        CancellationToken,
        SupervisorHandle,
        tokio::task::JoinHandle<()>,
    ) {
        let rt = Arc::new(self.runtime().await);
        let stop = CancellationToken::new();
        let (sup, task) = Supervisor::start(rt.clone(), SupervisorConfig::default(), stop.clone())
            .await
            .expect("supervisor");
        (rt, stop, sup, task)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // A thread with its own runtime works during a panic and inside any
        // tokio flavour.
        let node = self.node.clone();
        let cleaned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let docker = Docker::connect_with_local_defaults().ok()?;
                let filters = HashMap::from([(
                    "label".to_string(),
                    vec![format!("{}={node}", labels::NODE)],
                )]);
                let list = docker
                    .list_containers(Some(ListContainersOptions {
                        all: true,
                        filters: Some(filters),
                        ..Default::default()
                    }))
                    .await
                    .ok()?;
                for c in list {
                    if let Some(id) = c.id {
                        let _ = docker
                            .remove_container(
                                &id,
                                Some(RemoveContainerOptions {
                                    force: true,
                                    v: true,
                                    ..Default::default()
                                }),
                            )
                            .await;
                    }
                }
                Some(())
            })
        })
        .join();
        if !matches!(cleaned, Ok(Some(()))) {
            eprintln!("warning: could not clean up containers of {}", self.node);
        }
    }
}

/// `sh -c SCRIPT` with a 1 s grace period (PID 1 ignores SIGTERM, so every
/// stop waits the full grace).
fn shell(replica: &str, script: &str) -> Assignment {
    let mut a = fixtures::with_command(replica, &["sh", "-c", script]);
    a.template_mut().spec.termination_grace_period_seconds = 1;
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_docker_start_maps_the_spec_and_stop_remove_clean_up() {
    if !docker_or_skip("integration_docker_start_maps_the_spec_and_stop_remove_clean_up") {
        return;
    }
    let t = TestNode::new();
    let rt = t.runtime().await;
    let mut events = rt.events();
    let port = free_port();
    let replica = t.replica("web-0");
    let mut a = fixtures::with_command(&replica, &["sh", "-c"]);
    let c = &mut a.template_mut().spec.containers[0];
    c.args = vec!["echo \"hi $GREETING\"; pwd; exec sleep 30".into()];
    c.env = vec![EnvVar {
        name: "GREETING".into(),
        value: "from drover".into(),
        value_from: None,
    }];
    c.working_dir = Some("/tmp".into());
    c.ports = vec![ContainerPort {
        name: Some("http".into()),
        container_port: 80,
        host_port: Some(port),
        protocol: Protocol::Tcp,
    }];
    c.resources.limits.cpu_millis = Some(250);
    c.resources.limits.memory_bytes = Some(64 * 1024 * 1024);
    a.template_mut().spec.termination_grace_period_seconds = 1;

    let started = Instant::now();
    let o = rt.start(&a, 0).await.expect("start");
    eprintln!("start took {:?}", started.elapsed());
    assert_eq!(o.state, ContainerState::Running);
    assert_eq!(o.replica, replica);
    assert_eq!(o.image, IMAGE);

    let inspected = rt
        .client()
        .inspect_container(&o.container_id, None)
        .await
        .expect("inspect");
    assert_eq!(
        inspected.name.as_deref(),
        Some(format!("/drover-{replica}_{}", t.node).as_str()),
        "the node is part of the name: agents sharing an engine never collide"
    );
    let config = inspected.config.expect("config");
    let l = config.labels.expect("labels");
    assert_eq!(l[labels::REPLICA], replica);
    assert_eq!(l[labels::DEPLOYMENT], a.deployment);
    assert_eq!(l[labels::NODE], t.node);
    assert_eq!(l[labels::REVISION], "rev1");
    assert!(config
        .env
        .expect("env")
        .contains(&"GREETING=from drover".to_string()));
    assert_eq!(config.entrypoint, Some(vec!["sh".into(), "-c".into()]));
    assert_eq!(config.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(
        config.stop_timeout,
        Some(1),
        "terminationGracePeriodSeconds"
    );
    let hc = inspected.host_config.expect("host config");
    assert_eq!(hc.nano_cpus, Some(250_000_000));
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(
        hc.restart_policy
            .and_then(|r| r.name)
            .map(|n| n.to_string()),
        Some("no".to_string())
    );
    let bindings = hc.port_bindings.expect("port bindings");
    let b = bindings["80/tcp"].as_ref().expect("80/tcp bound");
    assert_eq!(b[0].host_port.as_deref(), Some(port.to_string().as_str()));

    let (out, _) = eventually("container output", Duration::from_secs(10), || async {
        let logs = rt.logs(&replica, LogOptions::default()).await.ok()?;
        let out = collect_logs(logs).await;
        out.0.contains("/tmp").then_some(out)
    })
    .await;
    assert_eq!(out, "hi from drover\n/tmp\n");
    let exec = rt
        .exec(
            &replica,
            &["sh".into(), "-c".into(), "echo $GREETING".into()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(exec.exit_code, 0);
    assert_eq!(exec.output, b"from drover\n");

    // PID 1 without a SIGTERM handler ignores SIGTERM: Docker kills it when
    // the 1 s grace period is over.
    let stopping = Instant::now();
    rt.stop(&o.container_id, a.grace()).await.expect("stop");
    assert!(
        stopping.elapsed() >= Duration::from_millis(900),
        "grace honoured"
    );
    let exit = next_exit(&mut events, &o.container_id, Duration::from_secs(30)).await;
    assert_eq!(exit.code, 137, "SIGKILL after the grace period");
    assert!(!exit.oom_killed);
    // Stopping again is fine.
    rt.stop(&o.container_id, a.grace())
        .await
        .expect("stop again");
    rt.remove(&o.container_id).await.expect("remove");
    assert!(rt.list().await.expect("list").is_empty());
    rt.remove(&o.container_id)
        .await
        .expect("removing twice is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_docker_missing_image_fails_fast_with_err_image_pull() {
    if !docker_or_skip("integration_docker_missing_image_fails_fast_with_err_image_pull") {
        return;
    }
    let t = TestNode::new();
    let rt = t.runtime().await;
    let mut a = shell(&t.replica("ghost-0"), "true");
    a.template_mut().spec.containers[0].image = "drover-test/does-not-exist:1".into();
    let started = Instant::now();
    let err = rt.start(&a, 0).await.expect_err("no such image");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.reason(), "ErrImagePull", "{err:?}");
    assert!(!err.status_message().is_empty());
    eprintln!("ErrImagePull message: {}", err.status_message());
    assert!(rt.list().await.expect("list").is_empty());

    a.template_mut().spec.containers[0].image_pull_policy = drover_manifest::PullPolicy::Never;
    let err = rt.start(&a, 0).await.expect_err("never pull");
    assert!(
        matches!(&err, AgentError::ImagePull { message, .. } if message.contains("Never")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_docker_taken_host_port_fails_with_port_in_use() {
    if !docker_or_skip("integration_docker_taken_host_port_fails_with_port_in_use") {
        return;
    }
    let t = TestNode::new();
    let rt = t.runtime().await;
    let port = free_port();
    let with_port = |name: &str| {
        let mut a = shell(&t.replica(name), "exec sleep 30");
        a.template_mut().spec.containers[0].ports = vec![ContainerPort {
            name: None,
            container_port: 8080,
            host_port: Some(port),
            protocol: Protocol::Tcp,
        }];
        a
    };
    let first = rt.start(&with_port("a-0"), 0).await.expect("first start");
    let err = rt
        .start(&with_port("b-0"), 0)
        .await
        .expect_err("port taken");
    assert!(matches!(err, AgentError::PortInUse { .. }), "{err:?}");
    assert_eq!(err.reason(), "PortInUse");
    eprintln!("PortInUse message: {}", err.status_message());
    let listed = rt.list().await.expect("list");
    assert_eq!(
        listed.len(),
        1,
        "the failed container was removed: {listed:?}"
    );
    assert_eq!(listed[0].container_id, first.container_id);
}

/// The usual manifest (containerPort only): every TCP and UDP port is
/// published on an ephemeral host port, read back from the engine at start
/// and again by `list` (what an adopting agent reports), and the replica
/// answers there on the node's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_docker_ports_without_host_port_are_published_on_ephemeral_ports() {
    if !docker_or_skip(
        "integration_docker_ports_without_host_port_are_published_on_ephemeral_ports",
    ) {
        return;
    }
    let t = TestNode::new();
    let rt = t.runtime().await;
    let replica = t.replica("web-0");
    let mut a = shell(
        &replica,
        "mkdir -p /www && echo published > /www/index.html && exec httpd -f -p 8081 -h /www",
    );
    a.template_mut().spec.containers[0].ports = vec![
        ContainerPort {
            name: Some("http".into()),
            container_port: 8081,
            host_port: None,
            protocol: Protocol::Tcp,
        },
        ContainerPort {
            name: Some("dns".into()),
            container_port: 5353,
            host_port: None,
            protocol: Protocol::Udp,
        },
    ];
    let o = rt.start(&a, 0).await.expect("start");
    let mut published = o.published_ports.clone();
    published.sort_by_key(|p| p.container_port);
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(
        (published[0].container_port, published[0].protocol),
        (5353, Protocol::Udp)
    );
    assert_eq!(
        (published[1].container_port, published[1].protocol),
        (8081, Protocol::Tcp)
    );
    assert!(published.iter().all(|p| p.host_port != 0));
    let listed = rt.list().await.expect("list");
    assert_eq!(
        listed[0].published_ports, o.published_ports,
        "list reads the same ports back"
    );
    let http = published[1].host_port;
    let page = eventually(
        "the page on the published port",
        Duration::from_secs(20),
        || async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
                .await
                .ok()?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.ok()?;
            out.contains("published").then_some(out)
        },
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    rt.remove(&o.container_id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_docker_restarted_agent_adopts_the_same_containers() {
    if !docker_or_skip("integration_docker_restarted_agent_adopts_the_same_containers") {
        return;
    }
    let t = TestNode::new();
    let set: Vec<Assignment> = (0..2)
        .map(|i| shell(&t.replica(&format!("web-{i}")), "exec sleep 30"))
        .collect();
    let wire: Vec<_> = set.iter().map(fixtures::to_pb).collect();

    // First agent life: the supervisor starts both.
    let (rt, stop, sup, task) = t.supervised().await;
    sup.assign(wire.clone()).await.expect("assign");
    let statuses = sup.statuses();
    let first_ids = eventually("both running", Duration::from_secs(30), || {
        let map = statuses.borrow().clone();
        let names: Vec<String> = set.iter().map(|a| a.replica.clone()).collect();
        async move {
            let ids: Vec<String> = names
                .iter()
                .map(|name| map.get(name).filter(|s| s.state() == ReplicaState::Running))
                .map(|s| s.map(|s| s.container_id.clone()))
                .collect::<Option<_>>()?;
            Some(ids)
        }
    })
    .await;
    stop.cancel();
    task.await.expect("supervisor");
    drop(sup);
    drop(rt);

    // Second life: a new runtime lists the same containers and the
    // supervisor adopts them without restarting anything.
    let rt = Arc::new(t.runtime().await);
    let listed = rt.list().await.expect("list");
    let mut listed_ids: Vec<String> = listed.iter().map(|o| o.container_id.clone()).collect();
    listed_ids.sort();
    let mut expected = first_ids.clone();
    expected.sort();
    assert_eq!(listed_ids, expected);
    assert!(listed.iter().all(|o| o.is_running()));

    let stop = CancellationToken::new();
    let (sup, task) = Supervisor::start(rt.clone(), SupervisorConfig::default(), stop.clone())
        .await
        .expect("supervisor");
    sup.assign(wire).await.expect("assign");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let map = sup.statuses().borrow().clone();
    for (a, id) in set.iter().zip(&first_ids) {
        let s = &map[&a.replica];
        assert_eq!(s.state(), ReplicaState::Running);
        assert_eq!(&s.container_id, id, "adopted, not restarted");
        assert_eq!(s.restarts, 0);
    }
    // And an unassigned replica is removed.
    sup.assign(vec![]).await.expect("assign");
    eventually("containers removed", Duration::from_secs(60), || {
        let rt = rt.clone();
        async move { rt.list().await.ok()?.is_empty().then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.expect("supervisor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_docker_crash_is_restarted_with_backoff() {
    if !docker_or_skip("integration_docker_crash_is_restarted_with_backoff") {
        return;
    }
    let t = TestNode::new();
    let (rt, stop, sup, task) = t.supervised().await;
    let mut a = shell(&t.replica("crasher-0"), "exit 2");
    a.annotations.insert(
        drover_agent::backoff::ANNOTATION_INITIAL.into(),
        "300ms".into(),
    );
    sup.assign(vec![fixtures::to_pb(&a)]).await.expect("assign");
    let statuses = sup.statuses();
    let s = eventually("two restarts", Duration::from_secs(60), || {
        let s = statuses.borrow().get(&a.replica).cloned();
        async move { s.filter(|s| s.restarts >= 2) }
    })
    .await;
    assert_eq!(s.last_exit_code, Some(2));
    assert_eq!(s.reason, "Error");
    // Each restart is a new container; only one exists at a time.
    let listed = rt.list().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    stop.cancel();
    task.await.expect("supervisor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_docker_memory_limit_kill_is_reported_as_oom() {
    if !docker_or_skip("integration_docker_memory_limit_kill_is_reported_as_oom") {
        return;
    }
    let t = TestNode::new();
    let rt = t.runtime().await;
    let mut events = rt.events();
    // A shell variable growing past a 16 MiB limit with swap pinned to it.
    let mut a = shell(&t.replica("hog-0"), "x=a; while true; do x=\"$x$x\"; done");
    a.template_mut().spec.containers[0]
        .resources
        .limits
        .memory_bytes = Some(16 * 1024 * 1024);
    let o = rt.start(&a, 0).await.expect("start");
    let exit = next_exit(&mut events, &o.container_id, Duration::from_secs(30)).await;
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.reason(), "OOMKilled");
    assert_eq!(exit.code, 137);
}

/// A container already stopping with its template's 60 s (unassigned, as a
/// rollout replaces it) is stopped again when the controller gives it a
/// shorter grace (`delete --grace-period=1`): the engine takes a second
/// `stop` with a shorter timeout on a container it is still stopping, so the
/// container is gone in about a second, not after the first stop's 60.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_docker_a_shorter_grace_reaches_a_stop_already_under_way() {
    if !docker_or_skip("integration_docker_a_shorter_grace_reaches_a_stop_already_under_way") {
        return;
    }
    let t = TestNode::new();
    let (rt, stop, sup, task) = t.supervised().await;
    // It says so at each SIGTERM and goes on.
    let replica = t.replica("stubborn-0");
    let mut a = shell(
        &replica,
        "trap 'echo TERM' TERM; echo up; while true; do sleep 1; done",
    );
    a.template_mut().spec.termination_grace_period_seconds = 60;
    sup.assign(vec![fixtures::to_pb(&a)]).await.expect("assign");
    let mut statuses = sup.statuses();
    eventually("running", Duration::from_secs(30), || {
        let running = statuses
            .borrow_and_update()
            .get(&replica)
            .is_some_and(|s| s.state() == ReplicaState::Running);
        async move { running.then_some(()) }
    })
    .await;
    let said = |line: &'static str| {
        let (rt, replica) = (rt.clone(), replica.clone());
        async move {
            let logs = rt.logs(&replica, LogOptions::default()).await.ok()?;
            collect_logs(logs).await.0.contains(line).then_some(())
        }
    };
    eventually("its trap set", Duration::from_secs(10), || said("up")).await;

    // Unassigned: its stop begins, with 60 s.
    sup.change_set(drover_agent::supervisor::SetChange {
        removed: vec![replica.clone()],
        terminating: vec![replica.clone()],
        ..Default::default()
    })
    .await
    .expect("unassign");
    eventually("the 60 s stop's SIGTERM", Duration::from_secs(10), || {
        said("TERM")
    })
    .await;
    assert_eq!(rt.list().await.expect("list").len(), 1, "still stopping");

    let hurried = Instant::now();
    sup.change_set(drover_agent::supervisor::SetChange {
        terminating: vec![replica.clone()],
        terminating_grace_seconds: HashMap::from([(replica.clone(), 1)]),
        ..Default::default()
    })
    .await
    .expect("shorter grace");
    eventually("gone", Duration::from_secs(30), || {
        let rt = rt.clone();
        async move { rt.list().await.ok()?.is_empty().then_some(()) }
    })
    .await;
    assert!(
        hurried.elapsed() < Duration::from_secs(20),
        "the shorter grace was used: {:?}",
        hurried.elapsed()
    );
    stop.cancel();
    task.await.expect("supervisor");
}
