//! ConfigMaps, Secrets and volumes through the supervisor, on both real
//! runtimes: a replica whose Secret is missing shows
//! CreateContainerConfigError and starts by itself once the Secret arrives;
//! env values and mounted files arrive; a ConfigMap change reaches the
//! mounted file within the bound; an emptyDir survives a container restart
//! and goes with the replica; a planted secret value is in no log line,
//! status or state file.
//!
//! The Docker half is gated like `docker.rs`: without the socket it prints
//! a note and passes, unless `DROVER_REQUIRE_DOCKER=1`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use common::eventually;
use drover_agent::assignment::Assignment;
use drover_agent::backoff::{ANNOTATION_INITIAL, ANNOTATION_MAX};
use drover_agent::fixtures;
use drover_agent::resolve::Fields;
use drover_agent::runtime::docker::DockerConfig;
use drover_agent::runtime::{labels, DockerRuntime, ProcessRuntime, Runtime};
use drover_agent::supervisor::{Supervisor, SupervisorConfig, SupervisorHandle};
use drover_manifest::{
    EnvVar, EnvVarSource, FieldPathRef, KeyRef, ProjectedObject, StorageMedium, Volume,
    VolumeMount, VolumeSource,
};
use drover_proto::pb::{self, ReplicaState};
use tokio_util::sync::CancellationToken;

/// The value that must never show up where it should not.
const PLANTED: &str = "planted-Secret-9f3c2a";

/// How long a ConfigMap change may take to reach a mounted file once the
/// agent has the new assignment set (documented in docs/manifests.md).
const UPDATE_BOUND: Duration = Duration::from_secs(2);

// ----- every log line of this test binary --------------------------------

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a subscriber keeping every agent log line at every level.
fn logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("drover_agent=trace,info")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
        captured
    })
    .clone()
}

fn captured_text(c: &Captured) -> String {
    String::from_utf8_lossy(&c.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

// ----- the scenario ---------------------------------------------------------

fn object(
    kind: pb::ConfigKind,
    name: &str,
    data: &[(&str, &str)],
    version: u64,
) -> pb::ConfigObject {
    pb::ConfigObject {
        kind: kind as i32,
        namespace: "default".into(),
        name: name.into(),
        data: data
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        version,
    }
}

fn config_map(greeting: &str, version: u64) -> pb::ConfigObject {
    object(
        pb::ConfigKind::ConfigMap,
        "app",
        &[("greeting", greeting), ("level", "3")],
        version,
    )
}

fn secret() -> pb::ConfigObject {
    object(pb::ConfigKind::Secret, "db", &[("password", PLANTED)], 1)
}

/// A replica reading everything: env from both kinds and a field, a
/// configMap, a secret and an emptyDir volume, fast restarts.
fn configured(replica: &str) -> Assignment {
    let mut a = fixtures::with_command(replica, &["sh", "-c", "echo started; exec sleep 300"]);
    a.annotations = BTreeMap::from([
        (ANNOTATION_INITIAL.to_string(), "200ms".to_string()),
        (ANNOTATION_MAX.to_string(), "400ms".to_string()),
    ]);
    a.template_mut().spec.termination_grace_period_seconds = 1;
    let key = |name: &str, key: &str| KeyRef {
        name: name.into(),
        key: key.into(),
        optional: false,
    };
    let var = |name: &str, source| EnvVar {
        name: name.into(),
        value: String::new(),
        value_from: Some(source),
    };
    let c = &mut a.template_mut().spec.containers[0];
    c.env = vec![
        var(
            "GREETING",
            EnvVarSource::ConfigMapKeyRef(key("app", "greeting")),
        ),
        var(
            "DB_PASSWORD",
            EnvVarSource::SecretKeyRef(key("db", "password")),
        ),
        var(
            "NODE",
            EnvVarSource::FieldRef {
                field_path: FieldPathRef::SpecNodeName,
            },
        ),
    ];
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: false,
        sub_path: String::new(),
    };
    c.volume_mounts = vec![
        mount("config", "/etc/app"),
        mount("creds", "/run/db"),
        mount("scratch", "/data"),
    ];
    let projected = |name: &str, mode| ProjectedObject {
        name: name.into(),
        items: vec![],
        default_mode: mode,
        optional: false,
    };
    a.template_mut().spec.volumes = vec![
        Volume {
            name: "config".into(),
            source: VolumeSource::ConfigMap(projected("app", 0o644)),
        },
        Volume {
            name: "creds".into(),
            source: VolumeSource::Secret(projected("db", 0o400)),
        },
        Volume {
            name: "scratch".into(),
            source: VolumeSource::EmptyDir {
                medium: StorageMedium::Disk,
                size_limit_bytes: None,
            },
        },
    ];
    a
}

async fn send(sup: &SupervisorHandle, a: &Assignment, objects: Vec<pb::ConfigObject>) {
    sup.assign_set(pb::AssignmentSet {
        assignments: vec![fixtures::to_pb(a)],
        config_objects: objects,
        ..Default::default()
    })
    .await
    .expect("assign");
}

fn status(sup: &SupervisorHandle, replica: &str) -> Option<pb::ReplicaStatus> {
    sup.statuses().borrow().get(replica).map(|s| (**s).clone())
}

/// `sh -c SCRIPT` in the replica, its output trimmed.
async fn run<R: Runtime>(rt: &R, replica: &str, script: &str) -> String {
    let cmd = ["sh".to_string(), "-c".to_string(), script.to_string()];
    match rt.exec(replica, &cmd, Duration::from_secs(10)).await {
        Ok(out) => String::from_utf8_lossy(&out.output).trim().to_string(),
        Err(e) => format!("exec failed: {e}"),
    }
}

/// The whole story on one runtime. `root` is where the replica sees `/`
/// (`""` in a container, `"."` for a process: mounts are under its
/// working directory).
async fn scenario<R: Runtime>(rt: Arc<R>, data_dir: &Path, replica: &str, root: &str) {
    let logs = logs();
    let shutdown = CancellationToken::new();
    let cfg = SupervisorConfig {
        fields: Fields {
            node: "n1".into(),
            pod_ip: "10.1.2.3".into(),
        },
        data_dir: Some(data_dir.to_path_buf()),
        ..SupervisorConfig::default()
    };
    let (sup, task) = Supervisor::start(rt.clone(), cfg, shutdown.clone())
        .await
        .expect("supervisor");
    let a = configured(replica);

    // 1. The Secret is missing: nothing starts, and the status says why.
    send(&sup, &a, vec![config_map("hello", 1)]).await;
    let waiting = eventually(
        "CreateContainerConfigError",
        Duration::from_secs(10),
        || {
            let s = status(&sup, replica);
            async move { s.filter(|s| s.reason == "CreateContainerConfigError") }
        },
    )
    .await;
    assert_eq!(waiting.message, "secret \"db\" not found");
    assert!(
        rt.list().await.expect("list").is_empty(),
        "no container was made"
    );

    // 2. It arrives: the replica starts by itself.
    send(&sup, &a, vec![config_map("hello", 1), secret()]).await;
    let running = eventually("running", Duration::from_secs(30), || {
        let s = status(&sup, replica);
        async move { s.filter(|s| s.state() == ReplicaState::Running) }
    })
    .await;
    assert_eq!(running.restarts, 0);

    // 3. Env and files arrive.
    let env = run(&*rt, replica, "echo $GREETING $DB_PASSWORD $NODE").await;
    assert_eq!(env, format!("hello {PLANTED} n1"));
    let files = run(
        &*rt,
        replica,
        &format!("cat {root}/etc/app/greeting {root}/etc/app/level {root}/run/db/password"),
    )
    .await;
    assert_eq!(files, format!("hello3{PLANTED}"));
    let host = data_dir.join("volumes").join(replica);
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    };
    assert_eq!(
        mode(&host.join("creds/password")),
        0o400,
        "secret files 0400"
    );
    assert_eq!(mode(&host.join("creds")), 0o700, "in 0700 directories");
    assert_eq!(mode(&host), 0o700);

    // 4. A ConfigMap change reaches the mounted file within the bound; the
    //    env keeps its value until a restart, as in Kubernetes.
    let changed_at = Instant::now();
    send(&sup, &a, vec![config_map("bonjour", 2), secret()]).await;
    eventually("the new greeting", UPDATE_BOUND, || {
        let rt = rt.clone();
        async move {
            let text = run(&*rt, replica, &format!("cat {root}/etc/app/greeting")).await;
            (text == "bonjour").then_some(())
        }
    })
    .await;
    println!(
        "configmap change reached the mounted file in {:?} (bound {UPDATE_BOUND:?})",
        changed_at.elapsed()
    );
    assert_eq!(run(&*rt, replica, "echo $GREETING").await, "hello");

    // 5. emptyDir data survives a container restart; the new container has
    //    the new env.
    let wrote = run(
        &*rt,
        replica,
        &format!("echo kept > {root}/data/kept && echo ok"),
    )
    .await;
    assert_eq!(wrote, "ok");
    let first = rt.list().await.expect("list")[0].container_id.clone();
    rt.stop(&first, Duration::from_secs(1)).await.expect("stop");
    eventually("restarted", Duration::from_secs(30), || {
        let s = status(&sup, replica).filter(|s| {
            s.state() == ReplicaState::Running && s.restarts >= 1 && s.container_id != first
        });
        async move { s }
    })
    .await;
    assert_eq!(
        run(&*rt, replica, &format!("cat {root}/data/kept")).await,
        "kept"
    );
    assert_eq!(run(&*rt, replica, "echo $GREETING").await, "bonjour");

    // 6. The replica leaves the node: its volumes go with it.
    sup.assign_set(pb::AssignmentSet::default())
        .await
        .expect("assign");
    eventually("volumes removed", Duration::from_secs(30), || {
        let gone = !host.exists();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(rt.list().await.expect("list").is_empty());

    // 7. The planted value is in no log line, and no status ever carried it.
    let text = captured_text(&logs);
    assert!(text.contains(replica), "the capture saw this test's logs");
    assert!(
        !text.contains(PLANTED),
        "a secret value was logged:\n{text}"
    );
    assert!(!format!("{waiting:?}{running:?}").contains(PLANTED));

    shutdown.cancel();
    task.await.expect("supervisor task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_and_volumes_on_the_process_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Arc::new(ProcessRuntime::open(dir.path(), "n1").expect("open"));
    scenario(rt.clone(), dir.path(), "cfg-r-0", ".").await;
    // The state file never held the secret in clear (checked while running
    // inside the scenario's restart too: it is rewritten at every start).
    let state = std::fs::read_to_string(rt.dir().join("state.json")).unwrap_or_default();
    assert!(!state.contains(PLANTED), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_state_file_holds_secret_values_empty_and_exec_still_sees_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Arc::new(ProcessRuntime::open(dir.path(), "n1").expect("open"));
    let shutdown = CancellationToken::new();
    let cfg = SupervisorConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..SupervisorConfig::default()
    };
    let (sup, task) = Supervisor::start(rt.clone(), cfg, shutdown.clone())
        .await
        .expect("supervisor");
    let mut a = configured("state-r-0");
    a.template_mut().spec.volumes.clear();
    a.template_mut().spec.containers[0].volume_mounts.clear();
    send(&sup, &a, vec![config_map("hello", 1), secret()]).await;
    eventually("running", Duration::from_secs(30), || {
        let s = status(&sup, "state-r-0");
        async move { s.filter(|s| s.state() == ReplicaState::Running) }
    })
    .await;
    let state = std::fs::read_to_string(rt.dir().join("state.json")).expect("state");
    assert!(state.contains("DB_PASSWORD"), "{state}");
    assert!(!state.contains(PLANTED), "{state}");
    // An agent restart: a new runtime adopts the process from the state
    // file, and an exec in it still gets the value (from /proc).
    shutdown.cancel();
    task.await.expect("supervisor task");
    let again = ProcessRuntime::open(dir.path(), "n1").expect("reopen");
    assert_eq!(run(&again, "state-r-0", "echo $DB_PASSWORD").await, PLANTED);
    // Cleanup. The first runtime still lives in this test process (a real
    // agent restart has none) and its wait task writes the state file as
    // the child dies, racing this one's write: only the kill matters here.
    for o in again.list().await.expect("list") {
        let _ = again.remove(&o.container_id).await;
    }
}

// ----- Docker -----------------------------------------------------------------

const SOCKET: &str = "/var/run/docker.sock";

fn docker_or_skip(test: &str) -> bool {
    if Path::new(SOCKET).exists() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/images/build.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .expect("run build.sh");
        assert!(out.status.success(), "{script} failed");
        return true;
    }
    if std::env::var("DROVER_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("DROVER_REQUIRE_DOCKER=1 but {SOCKET} is missing: start Docker");
    }
    eprintln!("note: skipping {test}: {SOCKET} is missing");
    false
}

/// Removes every container of the test's node when dropped.
struct NodeCleanup(String);

impl Drop for NodeCleanup {
    fn drop(&mut self) {
        let node = self.0.clone();
        let _ = std::thread::spawn(move || {
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
                for c in list.into_iter().filter_map(|c| c.id) {
                    let opts = RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_container(&c, Some(opts)).await;
                }
                Some(())
            })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_and_volumes_on_docker() {
    if !docker_or_skip("configuration_and_volumes_on_docker") {
        return;
    }
    let id = format!("{:08x}", rand::random::<u32>());
    let node = format!("drover-test-{id}");
    let _cleanup = NodeCleanup(node.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Arc::new(
        DockerRuntime::connect(DockerConfig::new(node.clone()))
            .await
            .expect("connect to Docker"),
    );
    scenario(rt, dir.path(), &format!("test-{id}-cfg-r-0"), "").await;
}
