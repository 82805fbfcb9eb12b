//! The `droverctl` binary against an in-process fake controller: exact stdout,
//! stderr and exit codes for what users type. (Real controllers are exercised
//! by the workspace's `tests` crate.)
//!
//! ```text
//!  #[test] ──std::process::Command──▶ droverctl ──gRPC──▶ FakeController (own thread + runtime)
//!                                         └──────gRPC──▶ FakeAgent (logs; own thread + runtime)
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use drover_manifest::{self as manifest, ParseOptions};
use drover_proto::pb;
use drover_proto::pb::agent_server::{Agent, AgentServer};
use drover_proto::pb::control_server::{Control, ControlServer};
use drover_proto::pb::ReplicaState;
use tokio_stream::wrappers::TcpListenerStream;
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
    /// What ListNodes answers, as set by a test.
    nodes: Vec<pb::Node>,
    /// What ListReplicas answers (filtered by namespace and deployment), as set by a test.
    replicas: Vec<pb::Replica>,
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
                            ..Default::default()
                        }),
                    },
                );
            }
            results.push(pb::ApplyResult {
                namespace: key.0,
                name: key.1,
                outcome: outcome as i32,
                generation,
                kind: "Deployment".into(),
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
            ..Default::default()
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

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.gate()?;
        let nodes = self.lock().nodes.clone();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn list_replicas(
        &self,
        r: Request<pb::ListReplicasRequest>,
    ) -> Result<Response<pb::ListReplicasResponse>, Status> {
        self.gate()?;
        let r = r.into_inner();
        let replicas = self
            .lock()
            .replicas
            .iter()
            .filter(|x| r.namespace.is_empty() || x.namespace == r.namespace)
            .filter(|x| r.deployment.is_empty() || x.deployment == r.deployment)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListReplicasResponse {
            replicas,
            ..Default::default()
        }))
    }

    async fn drain_node(
        &self,
        _: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        Err(Status::unimplemented("the fake controller does not drain"))
    }

    async fn rollout_undo(
        &self,
        _: Request<pb::RolloutUndoRequest>,
    ) -> Result<Response<pb::RolloutUndoResponse>, Status> {
        Err(Status::unimplemented(
            "the fake controller keeps no revisions",
        ))
    }

    async fn rollout_pause(
        &self,
        _: Request<pb::RolloutPauseRequest>,
    ) -> Result<Response<pb::RolloutPauseResponse>, Status> {
        Err(Status::unimplemented("the fake controller has no rollouts"))
    }

    async fn cordon_node(
        &self,
        r: Request<pb::CordonNodeRequest>,
    ) -> Result<Response<pb::CordonNodeResponse>, Status> {
        self.gate()?;
        let r = r.into_inner();
        let mut state = self.lock();
        let Some(node) = state.nodes.iter_mut().find(|n| n.name == r.node) else {
            return Err(Status::not_found(format!("node {:?} not found", r.node)));
        };
        let changed = node.cordoned != r.cordoned;
        node.cordoned = r.cordoned;
        Ok(Response::new(pb::CordonNodeResponse { changed }))
    }

    async fn delete_nodes(
        &self,
        r: Request<pb::DeleteNodesRequest>,
    ) -> Result<Response<pb::DeleteNodesResponse>, Status> {
        self.gate()?;
        let r = r.into_inner();
        let mut state = self.lock();
        if let Some(missing) = r
            .nodes
            .iter()
            .find(|n| !state.nodes.iter().any(|x| &x.name == *n))
        {
            return Err(Status::not_found(format!("node {missing:?} not found")));
        }
        state.nodes.retain(|n| !r.nodes.contains(&n.name));
        Ok(Response::new(pb::DeleteNodesResponse { deleted: r.nodes }))
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

    /// Usage from the nodes a test set: each at a quarter of its capacity.
    async fn top(&self, _: Request<pb::TopRequest>) -> Result<Response<pb::TopResponse>, Status> {
        self.gate()?;
        let nodes = self
            .lock()
            .nodes
            .iter()
            .map(|n| pb::NodeTop {
                name: n.name.clone(),
                sampled: true,
                usage: Some(pb::ResourceUsage {
                    cpu_millis: n.cpu_millis / 4,
                    memory_bytes: n.memory_bytes / 4,
                }),
                capacity: Some(pb::ResourceUsage {
                    cpu_millis: n.cpu_millis,
                    memory_bytes: n.memory_bytes,
                }),
            })
            .collect();
        Ok(Response::new(pb::TopResponse {
            nodes,
            replicas: vec![],
        }))
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
    async fn list_events(
        &self,
        _: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        self.gate()?;
        Ok(Response::new(pb::ListEventsResponse::default()))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<pb::ListEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented(
            "this test server keeps no events; the end-to-end suites watch real ones",
        ))
    }

    async fn change_node_meta(
        &self,
        _: Request<pb::ChangeNodeMetaRequest>,
    ) -> Result<Response<pb::ChangeNodeMetaResponse>, Status> {
        Err(Status::unimplemented(
            "this test server keeps no nodes' metadata; the end-to-end suites label real nodes",
        ))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        Err(Status::unimplemented(
            "this test server never changes; the end-to-end suites watch real clusters",
        ))
    }

    type WatchChangesStream = ChangeStream;

    async fn watch_changes(
        &self,
        _: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        Err(Status::unimplemented(
            "this test server never changes; the end-to-end suites wait on real clusters",
        ))
    }

    async fn list_config_maps(
        &self,
        _: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        Err(Status::unimplemented(CONFIG_ELSEWHERE))
    }

    async fn list_secrets(
        &self,
        _: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        Err(Status::unimplemented(CONFIG_ELSEWHERE))
    }

    async fn reveal_secrets(
        &self,
        _: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        Err(Status::unimplemented(CONFIG_ELSEWHERE))
    }

    async fn delete_config_objects(
        &self,
        _: Request<pb::DeleteConfigRequest>,
    ) -> Result<Response<pb::DeleteConfigResponse>, Status> {
        Err(Status::unimplemented(CONFIG_ELSEWHERE))
    }

    async fn list_services(
        &self,
        _: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        Err(Status::unimplemented(SERVICES_ELSEWHERE))
    }

    async fn list_endpoints(
        &self,
        _: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        Err(Status::unimplemented(SERVICES_ELSEWHERE))
    }

    async fn delete_services(
        &self,
        _: Request<pb::DeleteConfigRequest>,
    ) -> Result<Response<pb::DeleteConfigResponse>, Status> {
        Err(Status::unimplemented(SERVICES_ELSEWHERE))
    }
}

/// Services are tested against real controllers (tests/tests/services.rs).
const SERVICES_ELSEWHERE: &str = "services are tested against real clusters";

/// ConfigMaps and Secrets are tested against real controllers (tests/).
const CONFIG_ELSEWHERE: &str = "configmaps and secrets are tested against real clusters";

type ChangeStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Change, Status>> + Send>>;

type WatchStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchBatch, Status>> + Send>>;

type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Serve `fake` on a free loopback port from a thread of its own.
fn serve(fake: FakeController) -> SocketAddr {
    serve_on_thread(move |incoming| async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ControlServer::new(fake))
            .serve_with_incoming(incoming)
            .await;
    })
}

/// Bind a free loopback port and run `server` on it from a thread of its own.
fn serve_on_thread<F, Fut>(server: F) -> SocketAddr
where
    F: FnOnce(TcpListenerStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
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
            server(TcpListenerStream::new(listener)).await;
        });
    });
    addr
}

/// An agent's Logs service that answers every request with two chunks, one
/// per stream (and then, when following, stays open without more output),
/// and remembers the requests.
#[derive(Clone, Default)]
struct FakeAgent {
    requests: Arc<Mutex<Vec<pb::LogsRequest>>>,
}

type ChunkStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Agent for FakeAgent {
    type LogsStream = ChunkStream;
    type ExecStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExecOutput, Status>> + Send + 'static>>;
    type PortForwardStream = Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<pb::PortForwardOutput, Status>> + Send + 'static,
        >,
    >;

    /// Only logs are faked here; exec and port-forward run against real
    /// agents in tests/tests/debugging.rs.
    async fn exec(
        &self,
        _: Request<tonic::Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(Status::unimplemented("the fake agent serves logs only"))
    }

    async fn port_forward(
        &self,
        _: Request<tonic::Streaming<pb::PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        Err(Status::unimplemented("the fake agent serves logs only"))
    }

    async fn logs(
        &self,
        r: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = r.into_inner();
        let known = r.replica == "default.web-7f9c2-0";
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r.clone());
        if !known {
            return Err(Status::not_found(format!(
                "no replica {:?} on this node",
                r.replica
            )));
        }
        let chunks = vec![
            Ok(pb::LogChunk {
                data: b"hello from web\n".to_vec(),
                stream: "stdout".into(),
            }),
            Ok(pb::LogChunk {
                data: b"warning: low disk\n".to_vec(),
                stream: "stderr".into(),
            }),
        ];
        let chunks = tokio_stream::iter(chunks);
        if r.follow {
            use tokio_stream::StreamExt as _;
            return Ok(Response::new(Box::pin(
                chunks.chain(tokio_stream::pending()),
            )));
        }
        Ok(Response::new(Box::pin(chunks)))
    }
}

fn serve_agent(agent: FakeAgent) -> SocketAddr {
    serve_on_thread(move |incoming| async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AgentServer::new(agent))
            .serve_with_incoming(incoming)
            .await;
    })
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
    // The fake controller and agents here speak plaintext.
    cmd.args(args)
        .arg("--insecure")
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

/// A follower answers `top` UNAVAILABLE (only the leader holds the
/// samples): droverctl asks again and prints kubectl's columns.
#[test]
fn top_nodes_retries_past_a_controller_without_the_samples() {
    let (home, fake, server) = setup();
    fake.lock().nodes = vec![pb::Node {
        name: "n1".into(),
        cpu_millis: 2000,
        memory_bytes: 4 << 30,
        ..Default::default()
    }];
    fake.unavailable_first.store(1, Ordering::SeqCst);
    let r = droverctl(home.path(), &["top", "nodes", "--server", &server], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "NAME   CPU(cores)   CPU%   MEMORY(bytes)   MEMORY%\n\
         n1     500m         25%    1024Mi          25%\n"
    );
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

/// The script verbs refuse bad input with one sentence, before any call.
#[test]
fn script_verbs_refuse_bad_input_with_one_sentence() {
    let home = tempfile::tempdir().unwrap();
    let dead = dead_addr();
    let cases: &[(&[&str], &str)] = &[
        (
            &["wait", "deploy/web", "--for=ready"],
            "error: --for=\"ready\" is not condition=NAME[=VALUE], delete or jsonpath={PATH}[=VALUE]\n",
        ),
        (
            &["wait", "deploy", "--for=delete"],
            "error: name the objects, or select them with -l / --field-selector or --all (e.g. droverctl wait deployment/web --for=condition=Available)\n",
        ),
        (
            &["wait", "events", "--all", "--for=delete"],
            "error: events cannot be waited for; wait for deployments, replicas or nodes\n",
        ),
        (
            &["get", "replicas", "-l", "app in (a", "--server", &dead],
            "error: label selector \"app in (a\": a '(' without its ')'\n",
        ),
        (
            &["get", "deploy", "web", "-l", "app=web", "--server", &dead],
            "error: give names or a selector (-l, --field-selector), not both\n",
        ),
        (
            &["patch", "deploy/web", "--type", "strategic", "-p", "{}", "--server", &dead],
            "error: --type strategic is not supported: drover has no strategic merge; use --type merge or --type json\n",
        ),
        (
            &["delete", "deploy", "web", "--grace-period=0"],
            "error: --grace-period=0 needs --force (kubectl's immediate deletion)\n",
        ),
        (
            &["label", "deploy/web", "bad key=x"],
            "error: invalid label key \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc'), with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')\n",
        ),
        (
            &["set", "image", "deploy/web", "web=Bad Image"],
            "",
        ),
        (
            &["explain", "replicas"],
            "",
        ),
    ];
    for (args, want) in cases {
        let r = droverctl(home.path(), args, None);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{args:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("error: "), "{args:?}: {}", r.stderr);
        if !want.is_empty() {
            assert_eq!(r.stderr, *want, "{args:?}");
        }
    }
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let home = tempfile::tempdir().unwrap();
    let r = droverctl(home.path(), &["get", "ingresses"], None);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("error: unknown resource type \"ingresses\""),
        "{}",
        r.stderr
    );
    let r = droverctl(
        home.path(),
        &["get", "replicas", "--output-watch-events"],
        None,
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: --output-watch-events only applies to a watch (-w or --watch-only)\n"
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Twenty minutes ago: prints as `20m` however long the test takes.
fn twenty_minutes_ago() -> i64 {
    now_ms() - 20 * 60 * 1000 - 500
}

fn node(name: &str, labels: &[(&str, &str)]) -> pb::Node {
    pb::Node {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        condition: "Ready".into(),
        condition_since_unix_ms: twenty_minutes_ago(),
        cordoned: false,
        cpu_millis: 2000,
        memory_bytes: 4 << 30,
        allocated_cpu_millis: 500,
        allocated_memory_bytes: 64 << 20,
        replicas: 1,
        address: "127.0.0.1:7101".into(),
        runtime: "process".into(),
        agent_version: "0.1.0".into(),
        registered_unix_ms: twenty_minutes_ago(),
        ..Default::default()
    }
}

fn replica(namespace: &str, name: &str, slot: u32, node: &str, state: ReplicaState) -> pb::Replica {
    let deployment = name.split('-').next().unwrap_or_default().to_string();
    pb::Replica {
        namespace: namespace.into(),
        name: name.into(),
        deployment,
        slot,
        revision: "7f9c2".into(),
        node: node.into(),
        pending_reason: String::new(),
        created_unix_ms: twenty_minutes_ago(),
        status: Some(pb::ReplicaStatus {
            replica: format!("{namespace}.{name}"),
            state: state as i32,
            ready: state == ReplicaState::Running,
            image: "drover/busybox:1".into(),
            revision: "7f9c2".into(),
            ..Default::default()
        }),
        node_address: if node.is_empty() {
            String::new()
        } else {
            "127.0.0.1:7101".into()
        },
        host_ports: vec![8080],
        labels: Default::default(),
    }
}

const PENDING_REASON: &str =
    "0/2 nodes are available: 1 insufficient memory, 1 node(s) were cordoned";

/// A fake with two nodes and three replicas: a running one with restarts, an
/// unscheduled one in "default", and one in "prod".
fn setup_cluster() -> (tempfile::TempDir, FakeController, String) {
    let (home, fake, server) = setup();
    {
        let mut state = fake.lock();
        let mut n2 = node("n2", &[]);
        n2.cordoned = true;
        n2.condition = "NotReady".into();
        n2.allocated_cpu_millis = 0;
        n2.allocated_memory_bytes = 0;
        n2.replicas = 0;
        state.nodes = vec![n2, node("n1", &[("zone", "a"), ("disk", "ssd")])];
        let mut running = replica("default", "web-7f9c2-0", 0, "n1", ReplicaState::Running);
        if let Some(s) = running.status.as_mut() {
            s.restarts = 2;
            s.last_exit_code = Some(1);
            s.finished_unix_ms = twenty_minutes_ago();
            s.container_id = format!("0123456789ab{}", "e".repeat(52));
        }
        let mut pending = replica("default", "web-7f9c2-1", 1, "", ReplicaState::Pending);
        pending.pending_reason = PENDING_REASON.into();
        let mut api = replica("prod", "api-1a2b3-0", 0, "n1", ReplicaState::Failed);
        api.host_ports.clear();
        if let Some(s) = api.status.as_mut() {
            s.reason = "ErrImagePull".into();
            s.ready = false;
        }
        state.replicas = vec![pending, api, running];
    }
    (home, fake, server)
}

#[test]
fn get_nodes_shows_status_capacity_and_allocation() {
    let (home, _fake, server) = setup_cluster();
    let h = home.path();
    let r = droverctl(h, &["get", "nodes", "--server", &server], None);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    let expected = [
        "NAME   STATUS                        AGE   LABELS            CPU   MEMORY   ALLOCATED",
        "n1     Ready                         20m   disk=ssd,zone=a   2     4Gi      cpu 500m (25%), mem 64Mi (1%)",
        "n2     NotReady,SchedulingDisabled   20m   <none>            2     4Gi      cpu 0 (0%), mem 0 (0%)",
    ];
    assert_eq!(r.stdout, expected.join("\n") + "\n");

    let r = droverctl(
        h,
        &["get", "no", "n1", "-o", "wide", "--server", &server],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let expected = [
        "NAME   STATUS   AGE   LABELS            CPU   MEMORY   ALLOCATED                       ADDRESS          RUNTIME   VERSION   REPLICAS",
        "n1     Ready    20m   disk=ssd,zone=a   2     4Gi      cpu 500m (25%), mem 64Mi (1%)   127.0.0.1:7101   process   0.1.0     1",
    ];
    assert_eq!(r.stdout, expected.join("\n") + "\n");

    let r = droverctl(
        h,
        &["get", "node/n2", "-o", "name", "--server", &server],
        None,
    );
    assert_eq!(r.stdout, "node/n2\n");
    let r = droverctl(
        h,
        &["get", "nodes", "-o", "json", "--server", &server],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"][0]["metadata"]["name"], "n1");
    assert_eq!(v["items"][1]["spec"]["unschedulable"], true);
    assert_eq!(v["items"][1]["status"]["conditions"][0]["status"], "False");

    let r = droverctl(h, &["get", "node", "n1", "nope", "--server", &server], None);
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("NAME "), "{}", r.stdout);
    assert_eq!(r.stderr, "error: node \"nope\" not found\n");
}

#[test]
fn get_replicas_plain_wide_and_across_namespaces() {
    let (home, _fake, server) = setup_cluster();
    let h = home.path();
    let r = droverctl(h, &["get", "po", "--server", &server], None);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    let expected = [
        "NAME          READY   STATUS    RESTARTS      AGE   NODE     PORTS",
        "web-7f9c2-0   1/1     Running   2 (20m ago)   20m   n1       8080/TCP",
        "web-7f9c2-1   0/1     Pending   0             20m   <none>   8080/TCP",
    ];
    assert_eq!(r.stdout, expected.join("\n") + "\n");

    let r = droverctl(
        h,
        &["get", "replicas", "-o", "wide", "--server", &server],
        None,
    );
    let expected = [
        "NAME          READY   STATUS    RESTARTS      AGE   NODE     PORTS      CONTAINER-ID   IMAGE              REVISION",
        "web-7f9c2-0   1/1     Running   2 (20m ago)   20m   n1       8080/TCP   0123456789ab   drover/busybox:1   7f9c2",
        "web-7f9c2-1   0/1     Pending   0             20m   <none>   8080/TCP   <none>         drover/busybox:1   7f9c2",
    ];
    assert_eq!(r.stdout, expected.join("\n") + "\n");

    let r = droverctl(h, &["get", "pods", "-A", "--server", &server], None);
    let expected = [
        "NAMESPACE   NAME          READY   STATUS         RESTARTS      AGE   NODE     PORTS",
        "default     web-7f9c2-0   1/1     Running        2 (20m ago)   20m   n1       8080/TCP",
        "default     web-7f9c2-1   0/1     Pending        0             20m   <none>   8080/TCP",
        "prod        api-1a2b3-0   0/1     ErrImagePull   0             20m   n1       <none>",
    ];
    assert_eq!(r.stdout, expected.join("\n") + "\n");

    let r = droverctl(
        h,
        &[
            "get",
            "replicas",
            "--deployment",
            "api",
            "-n",
            "prod",
            "-o",
            "name",
            "--server",
            &server,
        ],
        None,
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "replica/api-1a2b3-0\n"));
    let r = droverctl(
        h,
        &[
            "get",
            "replicas",
            "--deployment",
            "nope",
            "--server",
            &server,
        ],
        None,
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", "No resources found in default namespace.\n")
    );

    let r = droverctl(
        h,
        &[
            "get",
            "replica",
            "web-7f9c2-1",
            "gone-1",
            "--server",
            &server,
        ],
        None,
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    assert_eq!(
        r.stderr,
        "error: replica \"gone-1\" not found in namespace \"default\"\n"
    );
    let r = droverctl(
        h,
        &["get", "deploy", "--deployment", "web", "--server", &server],
        None,
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("error: --deployment only applies to replicas"),
        "{}",
        r.stderr
    );
}

#[test]
fn describe_a_pending_replica_and_a_node() {
    let (home, _fake, server) = setup_cluster();
    let h = home.path();
    let r = droverctl(
        h,
        &["describe", "replica", "web-7f9c2-1", "--server", &server],
        None,
    );
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "Name:           web-7f9c2-1");
    assert!(lines.contains(&"Node:           <none>"), "{}", r.stdout);
    assert!(lines.contains(&"Status:         Pending"), "{}", r.stdout);
    assert!(lines.contains(&"Ready:          False"), "{}", r.stdout);
    assert_eq!(
        lines[lines.len() - 4..],
        [
            "Events:",
            "  Type     Reason            Message",
            "  ----     ------            -------",
            &format!("  Warning  FailedScheduling  {PENDING_REASON}"),
        ]
    );

    let r = droverctl(h, &["describe", "no", "n1", "--server", &server], None);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    assert!(
        r.stdout
            .contains("Labels:             disk=ssd\n                    zone=a\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("  cpu       500m (25%)\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.ends_with(
            "Replicas:  (2 in total)\n\
             \x20 NAMESPACE  NAME         STATUS        READY  RESTARTS     AGE\n\
             \x20 ---------  ----         ------        -----  --------     ---\n\
             \x20 default    web-7f9c2-0  Running       1/1    2 (20m ago)  20m\n\
             \x20 prod       api-1a2b3-0  ErrImagePull  0/1    0            20m\n\
             Events:  <none>\n"
        ),
        "{}",
        r.stdout
    );

    let r = droverctl(
        h,
        &["describe", "replica", "nope", "--server", &server],
        None,
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "error: replica \"nope\" not found in namespace \"default\"\n"
    );
}

#[test]
fn logs_of_an_unscheduled_replica_say_why() {
    let (home, _fake, server) = setup_cluster();
    let r = droverctl(
        home.path(),
        &["logs", "web-7f9c2-1", "--server", &server],
        None,
    );
    assert_eq!((r.code, r.stdout.as_str()), (1, ""));
    assert_eq!(
        r.stderr,
        format!(
            "error: replica \"web-7f9c2-1\" is not scheduled to a node yet ({PENDING_REASON})\n"
        )
    );
    let r = droverctl(home.path(), &["logs", "nope", "--server", &server], None);
    assert_eq!(
        r.stderr,
        "error: replica \"nope\" not found in namespace \"default\"\n"
    );
}

#[test]
fn logs_stream_from_the_agent_of_the_replicas_node() {
    let (home, fake, server) = setup_cluster();
    let agent = FakeAgent::default();
    let agent_addr = serve_agent(agent.clone()).to_string();
    for r in fake.lock().replicas.iter_mut() {
        if !r.node.is_empty() {
            r.node_address = agent_addr.clone();
        }
    }
    let r = droverctl(
        home.path(),
        &["logs", "web-7f9c2-0", "--tail", "5", "--server", &server],
        None,
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "hello from web\n", "warning: low disk\n")
    );
    let requests = agent
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        requests,
        [pb::LogsRequest {
            replica: "default.web-7f9c2-0".into(),
            follow: false,
            tail: 5,
            ..Default::default()
        }]
    );

    // The agent's own refusal is passed on in one sentence.
    let r = droverctl(
        home.path(),
        &["logs", "api-1a2b3-0", "-n", "prod", "--server", &server],
        None,
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!("error: the agent of node \"n1\" at {agent_addr} refused the logs request: no replica \"prod.api-1a2b3-0\" on this node\n")
    );
}

#[cfg(unix)]
#[test]
fn logs_follow_streams_until_ctrl_c() {
    use std::io::{BufRead, BufReader};

    let (home, fake, server) = setup_cluster();
    let agent = FakeAgent::default();
    let agent_addr = serve_agent(agent.clone()).to_string();
    for r in fake.lock().replicas.iter_mut() {
        r.node_address = agent_addr.clone();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_droverctl"))
        .args([
            "logs",
            "replica/web-7f9c2-0",
            "-f",
            "--server",
            &server,
            "--insecure",
        ])
        .env("HOME", home.path())
        .env_remove("DROVER_SERVER")
        .env_remove("DROVERCONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn droverctl");
    // The first line of each stream, read as it comes.
    let first_line = |pipe: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading so nothing blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        rx
    };
    let stdout = first_line(Box::new(child.stdout.take().expect("stdout")));
    let stderr = first_line(Box::new(child.stderr.take().expect("stderr")));
    let wait = std::time::Duration::from_secs(10);
    let (out, err) = (stdout.recv_timeout(wait), stderr.recv_timeout(wait));
    // The stream stays open: the command is still running.
    let still_running = child.try_wait().expect("try_wait").is_none();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().expect("droverctl ran");
    assert_eq!(out.as_deref(), Ok("hello from web\n"));
    assert_eq!(err.as_deref(), Ok("warning: low disk\n"));
    assert!(still_running);
    assert_eq!(status.code(), Some(130));
    let requests = agent
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        requests,
        [pb::LogsRequest {
            replica: "default.web-7f9c2-0".into(),
            follow: true,
            tail: 0,
            ..Default::default()
        }]
    );
}

#[test]
fn logs_from_an_unreachable_agent_name_the_node_and_address() {
    let (home, fake, server) = setup_cluster();
    let dead = dead_addr();
    for r in fake.lock().replicas.iter_mut() {
        r.node_address = if r.node.is_empty() {
            String::new()
        } else {
            dead.clone()
        };
    }
    let r = droverctl(
        home.path(),
        &["logs", "web-7f9c2-0", "--server", &server],
        None,
    );
    assert_eq!((r.code, r.stdout.as_str()), (1, ""));
    assert_eq!(
        r.stderr,
        format!("error: cannot reach the agent of node \"n1\" at {dead}: connection refused\n")
    );
}

#[test]
fn replicas_and_nodes_cannot_be_deleted_or_scaled() {
    let (home, _fake, server) = setup_cluster();
    let r = droverctl(
        home.path(),
        &["delete", "po", "web-7f9c2-0", "--server", &server],
        None,
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "error: droverctl cannot delete replicas; scale or delete their deployment instead\n"
        )
    );
    let r = droverctl(
        home.path(),
        &["scale", "node/n1", "--replicas", "2", "--server", &server],
        None,
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("error: only deployments can be scaled, not nodes"),
        "{}",
        r.stderr
    );
}

/// Issue 12 item 13: `--insecure` warns a person at a terminal (scripts
/// reading stderr through a pipe are spared the line).
#[test]
fn insecure_warns_on_a_terminal() {
    let home = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_droverctl");
    // `script` gives droverctl a pseudo-terminal, as a person's shell would.
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!("{bin} --insecure --server 127.0.0.1:1 get nodes"))
        .arg("/dev/null")
        .env("HOME", home.path())
        .env_remove("DROVER_SERVER")
        .env_remove("DROVERCONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: --insecure: droverctl talks to the cluster in plaintext"),
        "{text}"
    );
    // Through a pipe: no warning, the error alone.
    let r = droverctl(
        home.path(),
        &["--server", "127.0.0.1:1", "get", "nodes"],
        None,
    );
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}
