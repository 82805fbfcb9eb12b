//! The `droverctl` binary against an in-process fake controller: exact stdout,
//! stderr and exit codes for what users type. (Real controllers are exercised
//! by the workspace's `tests` crate.)
//!
//! ```text
//!  #[test] ──std::process::Command──▶ droverctl ──gRPC──▶ FakeController (own thread + runtime)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use drover_proto::manifest::{self, ParseOptions};
use drover_proto::pb;
use drover_proto::pb::control_server::{Control, ControlServer};
use tonic::{Request, Response, Status};

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
        resources:
          limits: {cpu: 500m, memory: 128Mi}
";

#[derive(Default)]
struct State {
    deployments: BTreeMap<(String, String), pb::Deployment>,
}

/// A controller that keeps deployments in memory and parses with the real parser.
#[derive(Clone, Default)]
struct FakeController {
    id: u64,
    state: Arc<Mutex<State>>,
    applies: Arc<AtomicU32>,
    /// Answer this many calls with `Unavailable` ("no leader") first.
    unavailable_first: Arc<AtomicU32>,
}

impl FakeController {
    fn gate(&self) -> Result<(), Status> {
        let left = self.unavailable_first.load(Ordering::SeqCst);
        if left > 0 {
            self.unavailable_first.store(left - 1, Ordering::SeqCst);
            return Err(Status::unavailable("no leader elected yet; retry shortly"));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn not_found(ns: &str, name: &str) -> Status {
    Status::not_found(format!("deployment {name:?} not found in namespace {ns:?}"))
}

#[tonic::async_trait]
impl Control for FakeController {
    async fn apply(
        &self,
        r: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        self.gate()?;
        self.applies.fetch_add(1, Ordering::SeqCst);
        let r = r.into_inner();
        let files: Vec<(String, String)> =
            r.files.into_iter().map(|f| (f.name, f.content)).collect();
        let opts = ParseOptions {
            lenient: r.lenient,
            skip_unsupported_kinds: r.skip_unsupported_kinds,
            ..ParseOptions::default()
        };
        let parsed = manifest::parse_files(&files, &opts)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut state = self.lock();
        let mut results = Vec::new();
        for d in parsed.deployments {
            let key = (d.metadata.namespace.clone(), d.metadata.name.clone());
            let spec_json =
                serde_json::to_string(&d).map_err(|e| Status::internal(e.to_string()))?;
            let (outcome, generation) = match state.deployments.get(&key) {
                None => (pb::ApplyOutcome::Created, 1),
                Some(old) if old.spec_json == spec_json => {
                    (pb::ApplyOutcome::Unchanged, old.generation)
                }
                Some(old) => (pb::ApplyOutcome::Configured, old.generation + 1),
            };
            if !r.dry_run {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let created = state
                    .deployments
                    .get(&key)
                    .map_or(now - 45_000, |o| o.created_unix_ms);
                state.deployments.insert(
                    key.clone(),
                    pb::Deployment {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        spec_json,
                        generation,
                        created_unix_ms: created,
                        updated_unix_ms: now,
                        status: Some(pb::DeploymentStatus {
                            replicas: d.spec.replicas,
                            ready: 1,
                            updated: d.spec.replicas,
                            available: 1,
                        }),
                    },
                );
            }
            results.push(pb::ApplyResult {
                namespace: key.0,
                name: key.1,
                outcome: outcome as i32,
                generation,
            });
        }
        Ok(Response::new(pb::ApplyResponse {
            results,
            warnings: parsed.warnings,
        }))
    }

    async fn list_deployments(
        &self,
        r: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        self.gate()?;
        let ns = r.into_inner().namespace;
        let deployments = self
            .lock()
            .deployments
            .values()
            .filter(|d| ns.is_empty() || d.namespace == ns)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments,
            applied_index: 1,
        }))
    }

    async fn get_deployment(
        &self,
        r: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        self.gate()?;
        let r = r.into_inner();
        let key = (r.namespace, r.name);
        match self.lock().deployments.get(&key) {
            Some(d) => Ok(Response::new(d.clone())),
            None => Err(not_found(&key.0, &key.1)),
        }
    }

    async fn delete_deployments(
        &self,
        r: Request<pb::DeleteDeploymentsRequest>,
    ) -> Result<Response<pb::DeleteDeploymentsResponse>, Status> {
        self.gate()?;
        let r = r.into_inner();
        let mut state = self.lock();
        if !r.ignore_not_found {
            if let Some(missing) = r.deployments.iter().find(|d| {
                !state
                    .deployments
                    .contains_key(&(d.namespace.clone(), d.name.clone()))
            }) {
                return Err(not_found(&missing.namespace, &missing.name));
            }
        }
        let deleted = r
            .deployments
            .into_iter()
            .filter(|d| {
                state
                    .deployments
                    .remove(&(d.namespace.clone(), d.name.clone()))
                    .is_some()
            })
            .collect();
        Ok(Response::new(pb::DeleteDeploymentsResponse { deleted }))
    }

    async fn scale(
        &self,
        r: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ScaleResponse>, Status> {
        self.gate()?;
        let r = r.into_inner();
        let mut state = self.lock();
        let Some(d) = state
            .deployments
            .get_mut(&(r.namespace.clone(), r.name.clone()))
        else {
            return Err(not_found(&r.namespace, &r.name));
        };
        let mut model: manifest::Deployment =
            serde_json::from_str(&d.spec_json).map_err(|e| Status::internal(e.to_string()))?;
        let previous = model.spec.replicas;
        model.spec.replicas = r.replicas;
        d.spec_json = serde_json::to_string(&model).map_err(|e| Status::internal(e.to_string()))?;
        d.generation += 1;
        Ok(Response::new(pb::ScaleResponse {
            previous,
            replicas: r.replicas,
            generation: d.generation,
        }))
    }

    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.gate()?;
        let member = |id: u64, role: &str, applied: u64| pb::MemberStatus {
            id,
            address: format!("127.0.0.{id}:7001"),
            reachable: true,
            role: role.into(),
            term: 7,
            leader_id: 2,
            commit_index: 900,
            applied_index: applied,
            voter: true,
            ..Default::default()
        };
        let mut down = member(3, "", 0);
        down.reachable = false;
        down.error = "connection refused".into();
        Ok(Response::new(pb::ClusterStatusResponse {
            leader_id: 2,
            term: 7,
            members: vec![member(1, "follower", 900), member(2, "leader", 900), down],
            answered_by: self.id,
        }))
    }

    async fn add_member(
        &self,
        r: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.gate()?;
        let r = r.into_inner();
        if r.id == 1 {
            return Err(Status::already_exists("member 1 already exists"));
        }
        Ok(Response::new(pb::MembershipResponse { members: vec![] }))
    }

    async fn remove_member(
        &self,
        _: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.gate()?;
        Ok(Response::new(pb::MembershipResponse { members: vec![] }))
    }

    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        self.gate()?;
        Ok(Response::new(pb::VersionResponse {
            version: drover_proto::VERSION.into(),
            id: self.id,
        }))
    }
}

/// Serve `fake` on a free loopback port from a thread of its own.
fn serve(fake: FakeController) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(ControlServer::new(fake))
                .serve_with_incoming(incoming)
                .await;
        });
    });
    addr
}

/// A port nothing listens on.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run droverctl with a private HOME and no drover environment.
fn droverctl(home: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    droverctl_env(home, args, stdin, &[])
}

/// Like [`droverctl`], with some environment variables set.
fn droverctl_env(home: &Path, args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_droverctl"));
    cmd.args(args)
        .env("HOME", home)
        .env_remove("DROVER_SERVER")
        .env_remove("DROVERCONFIG")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn droverctl");
    if let Some(mut pipe) = child.stdin.take() {
        use std::io::Write;
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("stdin");
        }
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("droverctl ran");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn setup() -> (tempfile::TempDir, FakeController, String) {
    let home = tempfile::tempdir().expect("tempdir");
    let fake = FakeController {
        id: 2,
        ..FakeController::default()
    };
    let addr = serve(fake.clone()).to_string();
    (home, fake, addr)
}

#[test]
fn apply_get_scale_delete_round_trip() {
    let (home, _fake, server) = setup();
    let h = home.path();
    std::fs::write(h.join("web.yaml"), WEB).unwrap();
    let file = h.join("web.yaml").to_string_lossy().into_owned();

    let r = droverctl(h, &["--server", &server, "apply", "-f", &file], None);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "deployment.apps/web created\n", "")
    );
    let r = droverctl(h, &["apply", "-f", &file, "--server", &server], None);
    assert_eq!(r.stdout, "deployment.apps/web unchanged\n");

    let r = droverctl(h, &["get", "deployments", "--server", &server], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE\nweb    1/3     3            1           45s\n"
    );
    let r = droverctl(
        h,
        &["get", "deploy", "web", "-o", "name", "--server", &server],
        None,
    );
    assert_eq!(r.stdout, "deployment.apps/web\n");
    let r = droverctl(
        h,
        &["get", "deploy/web", "-o", "json", "--server", &server],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["kind"], "Deployment");
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "128Mi"
    );
    assert_eq!(v["status"]["readyReplicas"], 1);

    let r = droverctl(
        h,
        &["get", "deploy", "web", "nope", "--server", &server],
        None,
    );
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("NAME "), "{}", r.stdout);
    assert_eq!(
        r.stderr,
        "error: deployment \"nope\" not found in namespace \"default\"\n"
    );

    let r = droverctl(
        h,
        &[
            "scale",
            "deployment/web",
            "--replicas",
            "5",
            "--server",
            &server,
        ],
        None,
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "deployment.apps/web scaled\n")
    );
    let r = droverctl(h, &["describe", "deploy", "web", "--server", &server], None);
    assert!(
        r.stdout.contains("Replicas:               5 desired |"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("      memory:  128Mi"), "{}", r.stdout);

    let r = droverctl(h, &["delete", "-f", &file, "--server", &server], None);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "deployment.apps \"web\" deleted\n")
    );
    let r = droverctl(h, &["delete", "deploy", "web", "--server", &server], None);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: deployment \"web\" not found in namespace \"default\"\n"
    );
    let r = droverctl(
        h,
        &[
            "delete",
            "deploy",
            "web",
            "--ignore-not-found",
            "--server",
            &server,
        ],
        None,
    );
    assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (0, "", ""));

    let r = droverctl(h, &["get", "deploy", "--server", &server], None);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""));
    assert_eq!(r.stderr, "No resources found in default namespace.\n");
}

#[test]
fn invalid_manifests_are_refused_locally_one_error_per_line() {
    let (home, fake, server) = setup();
    let bad = WEB
        .replace("replicas: 3", "replicas: -1")
        .replace("128Mi", "12XB");
    let r = droverctl(
        home.path(),
        &["apply", "-f", "-", "--server", &server],
        Some(&bad),
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(lines.len() >= 2, "{}", r.stderr);
    assert!(
        lines.iter().all(|l| l.starts_with("error: -[0]: spec.")),
        "{}",
        r.stderr
    );
    assert_eq!(
        fake.applies.load(Ordering::SeqCst),
        0,
        "nothing may be sent"
    );
}

#[test]
fn client_dry_run_needs_no_server() {
    let home = tempfile::tempdir().unwrap();
    let dead = dead_addr();
    let r = droverctl(
        home.path(),
        &["apply", "-f", "-", "--dry-run=client", "--server", &dead],
        Some(WEB),
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "deployment.apps/web created (dry run)\n", "")
    );
}

#[test]
fn server_dry_run_stores_nothing() {
    let (home, _fake, server) = setup();
    let r = droverctl(
        home.path(),
        &["apply", "-f", "-", "--dry-run=server", "--server", &server],
        Some(WEB),
    );
    assert_eq!(r.stdout, "deployment.apps/web created (server dry run)\n");
    let r = droverctl(
        home.path(),
        &["get", "deploy", "-o", "name", "--server", &server],
        None,
    );
    assert_eq!(r.stdout, "");
}

#[test]
fn a_dead_first_server_fails_over_to_the_next() {
    let (home, _fake, server) = setup();
    let dead = dead_addr();
    let list = format!("{dead},{server}");
    let r = droverctl(home.path(), &["version", "--server", &list], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "Client Version: v{v}\nServer Version: v{v} (controller 2 at {server})\n",
            v = drover_proto::VERSION
        )
    );
}

#[test]
fn no_leader_yet_is_retried_until_one_answers() {
    let (home, fake, server) = setup();
    fake.unavailable_first.store(2, Ordering::SeqCst);
    let r = droverctl(home.path(), &["get", "deploy", "--server", &server], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr, "No resources found in default namespace.\n");
}

#[test]
fn no_leader_ever_ends_with_the_controllers_sentence() {
    let (home, fake, server) = setup();
    fake.unavailable_first.store(1000, Ordering::SeqCst);
    let r = droverctl(
        home.path(),
        &["get", "deploy", "--server", &server, "--request-timeout=1s"],
        None,
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "error: no leader elected yet; retry shortly\n");
}

#[test]
fn nothing_reachable_says_which_servers_and_why() {
    let home = tempfile::tempdir().unwrap();
    let (a, b) = (dead_addr(), dead_addr());
    let list = format!("{a},{b}");
    for args in [vec!["get", "deploy"], vec!["version"]] {
        let mut args = args;
        args.extend(["--server", &list]);
        let r = droverctl(home.path(), &args, None);
        assert_eq!(r.code, 1);
        assert_eq!(
            r.stderr,
            format!("error: no controller reachable at {a}, {b} (connection refused); is the cluster up?\n")
        );
    }
    // With no flag, no env and no config: the default server.
    let r = droverctl(home.path(), &["version", "--client"], None);
    assert_eq!((r.code, r.stdout.lines().count()), (0, 1));
}

#[test]
fn cluster_status_and_members() {
    let (home, _fake, server) = setup();
    let r = droverctl(
        home.path(),
        &["cluster", "status", "--server", &server],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let expected = [
        "leader: 2   term: 7",
        "ID   ADDRESS          ROLE       TERM   COMMIT   APPLIED   HEALTH",
        "1    127.0.0.1:7001   follower   7      900      900       ok",
        "2    127.0.0.2:7001   leader     7      900      900       ok",
        "3    127.0.0.3:7001   -          -      -        -         unreachable: connection refused",
    ];
    assert_eq!(r.stdout, expected.join("\n") + "\n");
    let r = droverctl(
        home.path(),
        &["cluster", "members", "--server", &server],
        None,
    );
    assert!(
        r.stdout
            .starts_with("ID   ADDRESS          VOTER\n1    127.0.0.1:7001   true\n"),
        "{}",
        r.stdout
    );
    let r = droverctl(
        home.path(),
        &[
            "cluster",
            "add",
            "--id",
            "1",
            "--address",
            "127.0.0.1:7001",
            "--server",
            &server,
        ],
        None,
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "error: member 1 already exists\n")
    );
    let r = droverctl(
        home.path(),
        &["cluster", "remove", "3", "--server", &server],
        None,
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "member 3 removed\n"));
}

#[test]
fn contexts_pick_the_servers_and_namespace() {
    let (home, _fake, server) = setup();
    let h = home.path();
    let dead = dead_addr();
    let r = droverctl(
        h,
        &[
            "config",
            "set-context",
            "lab",
            "--server",
            &format!("{dead},{server}"),
            "-n",
            "team",
        ],
        None,
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Context \"lab\" created.\n"),
        "{}",
        r.stderr
    );
    let r = droverctl(h, &["config", "use-context", "lab"], None);
    assert_eq!(r.stdout, "Switched to context \"lab\".\n");
    let r = droverctl(h, &["config", "use-context", "nope"], None);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "error: no context exists with the name: \"nope\"\n")
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = h.join(".config/drover/config.yaml");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // The context's namespace is used: nothing in "team" yet.
    let r = droverctl(h, &["get", "deploy"], None);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (0, "No resources found in team namespace.\n")
    );
    let r = droverctl(h, &["config", "get-contexts"], None);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("CURRENT   NAME   SERVERS"),
        "{}",
        r.stdout
    );
    let servers = format!("{dead},{server}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["*", "lab", servers.as_str(), "team"]
    );
}

#[test]
fn oversized_and_missing_files_are_refused_before_reading() {
    let home = tempfile::tempdir().unwrap();
    let big = home.path().join("web.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(50 * 1024 * 1024)
        .unwrap();
    let big = big.to_string_lossy().into_owned();
    let r = droverctl(home.path(), &["apply", "-f", &big], None);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!("error: {big} is 50.0 MiB; one apply accepts at most 4 MiB\n")
    );
    let r = droverctl(home.path(), &["apply", "-f", "nope.yaml"], None);
    assert_eq!(r.stderr, "error: the path \"nope.yaml\" does not exist\n");
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let home = tempfile::tempdir().unwrap();
    let r = droverctl(home.path(), &["get", "pods"], None);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("error: droverctl does not handle \"pods\" yet"),
        "{}",
        r.stderr
    );
    let r = droverctl(home.path(), &["frobnicate"], None);
    assert_eq!(r.code, 1);
    let r = droverctl(home.path(), &["--help"], None);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("apply"));
    let r = droverctl(home.path(), &["completion", "bash"], None);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("droverctl"));
}

#[test]
fn a_controller_that_accepts_but_never_answers_is_skipped() {
    let (home, _fake, server) = setup();
    // Listening but never accepting: TCP connects, HTTP/2 never starts.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_addr = hung.local_addr().unwrap().to_string();
    let list = format!("{hung_addr},{server}");
    let started = std::time::Instant::now();
    let r = droverctl(home.path(), &["version", "--server", &list], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&format!("at {server})")), "{}", r.stdout);
    assert!(started.elapsed() < std::time::Duration::from_secs(9));
    drop(hung);
}

#[test]
fn drover_server_env_beats_the_context_and_the_flag_beats_both() {
    let (home, _fake, server) = setup();
    let h = home.path();
    let dead = dead_addr();
    let r = droverctl(
        h,
        &["config", "set-context", "lab", "--server", &dead],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    droverctl(h, &["config", "use-context", "lab"], None);
    let r = droverctl_env(h, &["version"], None, &[("DROVER_SERVER", &server)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = droverctl_env(
        h,
        &["version", "--server", &dead],
        None,
        &[("DROVER_SERVER", &server)],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(&dead), "{}", r.stderr);
    // DROVERCONFIG points at another (empty) config: the default server is used.
    let other = h.join("other.yaml");
    let r = droverctl_env(
        h,
        &["config", "get-contexts"],
        None,
        &[("DROVERCONFIG", other.to_str().unwrap())],
    );
    assert_eq!(r.stdout, "CURRENT   NAME   SERVERS   NAMESPACE\n");
}
