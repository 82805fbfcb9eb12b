//! Liveness and readiness probes with the process runtime and real child
//! processes: exec probes gated on a file, a liveness failure restarting the
//! process, and tcpSocket / httpGet probes against listeners this test opens.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, shell};
use drover_agent::assignment::Assignment;
use drover_agent::backoff::{ANNOTATION_INITIAL, ANNOTATION_MAX};
use drover_agent::fixtures;
use drover_agent::runtime::{ProcessRuntime, Runtime};
use drover_agent::status::StatusMap;
use drover_agent::supervisor::{Supervisor, SupervisorConfig, SupervisorHandle};
use drover_manifest::{ContainerPort, HttpHeader, HttpScheme, PortRef, Probe, ProbeHandler};
use drover_pki as pki;
use drover_proto::pb::{ReplicaState, ReplicaStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(20);

/// A supervisor over a process runtime in a temporary directory; kills what
/// it started when dropped.
struct Node {
    rt: Arc<ProcessRuntime>,
    sup: SupervisorHandle,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = Arc::new(ProcessRuntime::open(&dir.path().join("agent"), "n1").expect("open"));
        let shutdown = CancellationToken::new();
        let (sup, _task) =
            Supervisor::start(rt.clone(), SupervisorConfig::default(), shutdown.clone())
                .await
                .expect("supervisor");
        Node {
            rt,
            sup,
            shutdown,
            dir,
        }
    }

    /// A file path private to this test.
    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn assign(&self, a: &Assignment) {
        self.sup
            .assign(vec![fixtures::to_pb(a)])
            .await
            .expect("assign");
    }

    /// Wait until the replica's status satisfies `ok`; return it.
    async fn wait_for(
        &self,
        what: &str,
        replica: &str,
        ok: impl Fn(&ReplicaStatus) -> bool,
    ) -> ReplicaStatus {
        let statuses: watch::Receiver<Arc<StatusMap>> = self.sup.statuses();
        eventually(what, LIMIT, || {
            let s = statuses.borrow().get(replica).map(|s| (**s).clone());
            let found = s.filter(|s| ok(s));
            async move { found }
        })
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let rt = self.rt.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                for o in rt.list().await.unwrap_or_default() {
                    let _ = rt.remove(&o.container_id).await;
                }
            })
        });
    }
}

fn probe(handler: ProbeHandler, failure_threshold: u32) -> Probe {
    Probe {
        handler,
        initial_delay_seconds: 0,
        period_seconds: 1,
        timeout_seconds: 1,
        failure_threshold,
        success_threshold: 1,
    }
}

fn file_exists(path: &str) -> ProbeHandler {
    ProbeHandler::Exec {
        command: vec!["test".into(), "-f".into(), path.into()],
    }
}

fn running(s: &ReplicaStatus) -> bool {
    s.state() == ReplicaState::Running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_readiness_probe_gates_ready_until_the_file_appears() {
    let node = Node::start().await;
    let ready_file = node.file("ready");
    let mut a = shell("web-r-0", "exec sleep 60");
    a.template_mut().spec.containers[0].readiness_probe = Some(probe(file_exists(&ready_file), 1));
    node.assign(&a).await;

    let s = node
        .wait_for("running", "web-r-0", |s| {
            running(s) && !s.container_id.is_empty()
        })
        .await;
    assert!(!s.ready, "not ready before any probe passed: {s:?}");
    // Several probe periods pass without the file: still not ready.
    let failed = node
        .wait_for("a failed readiness probe", "web-r-0", |s| {
            s.message.contains("Readiness probe failed")
        })
        .await;
    assert!(!failed.ready && running(&failed), "{failed:?}");

    std::fs::write(&ready_file, b"").expect("write ready file");
    let s = node.wait_for("ready", "web-r-0", |s| s.ready).await;
    assert!(running(&s) && s.message.is_empty(), "{s:?}");

    // Readiness can be lost again without a restart.
    std::fs::remove_file(&ready_file).expect("remove ready file");
    let s = node
        .wait_for("not ready again", "web-r-0", |s| !s.ready)
        .await;
    assert!(running(&s), "{s:?}");
    assert_eq!(s.restarts, 0, "readiness failures never restart: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_process() {
    let node = Node::start().await;
    let alive_file = node.file("alive");
    std::fs::write(&alive_file, b"").expect("write alive file");
    let mut a = shell("web-r-0", "exec sleep 60");
    a.annotations = BTreeMap::from([
        (ANNOTATION_INITIAL.to_string(), "200ms".to_string()),
        (ANNOTATION_MAX.to_string(), "400ms".to_string()),
    ]);
    a.template_mut().spec.termination_grace_period_seconds = 2;
    a.template_mut().spec.containers[0].liveness_probe = Some(probe(file_exists(&alive_file), 2));
    node.assign(&a).await;

    let first = node
        .wait_for("running and ready", "web-r-0", |s| running(s) && s.ready)
        .await;
    assert_eq!(first.restarts, 0);

    std::fs::remove_file(&alive_file).expect("remove alive file");
    let unhealthy = node
        .wait_for("killed as unhealthy", "web-r-0", |s| {
            s.reason == "Unhealthy"
        })
        .await;
    assert!(
        unhealthy.message.contains("Liveness probe failed"),
        "{unhealthy:?}"
    );
    // Healthy again: the restarted process stays up.
    std::fs::write(&alive_file, b"").expect("write alive file");
    let restarted = node
        .wait_for("restarted", "web-r-0", |s| {
            running(s) && s.restarts >= 1 && s.container_id != first.container_id
        })
        .await;
    assert_eq!(restarted.reason, "Unhealthy", "{restarted:?}");
    let running_now: Vec<_> = node
        .rt
        .list()
        .await
        .expect("list")
        .into_iter()
        .filter(|o| o.is_running())
        .collect();
    assert_eq!(running_now.len(), 1, "exactly one process: {running_now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_socket_readiness_probe_on_a_named_port_follows_the_listener() {
    let node = Node::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepting = tokio::spawn(async move {
        loop {
            if listener.accept().await.is_err() {
                return;
            }
        }
    });

    let mut a = shell("web-r-0", "exec sleep 60");
    let c = &mut a.template_mut().spec.containers[0];
    c.ports = vec![ContainerPort {
        name: Some("web".into()),
        container_port: port,
        host_port: None,
        protocol: Default::default(),
    }];
    c.readiness_probe = Some(probe(
        ProbeHandler::TcpSocket {
            port: PortRef::Name("web".into()),
        },
        1,
    ));
    node.assign(&a).await;
    node.wait_for("ready", "web-r-0", |s| running(s) && s.ready)
        .await;

    // Closing the listener makes connects fail: not ready.
    accepting.abort();
    let _ = accepting.await;
    let s = node.wait_for("not ready", "web-r-0", |s| !s.ready).await;
    assert!(
        s.message.contains("Readiness probe failed"),
        "the status says why: {s:?}"
    );
}

/// A tiny HTTP server answering every request with the current `status` and
/// keeping the requests it saw.
async fn http_server(status: Arc<AtomicU16>, seen: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let status = status.load(Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if let Ok(mut seen) = seen.lock() {
                    seen.push(String::from_utf8_lossy(&buf).into_owned());
                }
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_get_readiness_probe_needs_a_2xx_or_3xx_answer_and_sends_headers() {
    let node = Node::start().await;
    let status = Arc::new(AtomicU16::new(503));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = http_server(status.clone(), seen.clone()).await;

    let mut a = shell("web-r-0", "exec sleep 60");
    a.template_mut().spec.containers[0].readiness_probe = Some(probe(
        ProbeHandler::HttpGet {
            path: "/healthz".into(),
            port: PortRef::Number(port),
            scheme: HttpScheme::Http,
            http_headers: vec![HttpHeader {
                name: "X-Probe".into(),
                value: "drover".into(),
            }],
        },
        1,
    ));
    node.assign(&a).await;

    let s = node
        .wait_for("a 503 failure", "web-r-0", |s| {
            s.message.contains("statuscode: 503")
        })
        .await;
    assert!(running(&s) && !s.ready, "{s:?}");
    status.store(302, Ordering::SeqCst);
    node.wait_for("ready on 302", "web-r-0", |s| s.ready).await;

    let requests = seen.lock().expect("seen").clone();
    let first = requests.first().expect("a request was made");
    assert!(first.starts_with("GET /healthz HTTP/1.1\r\n"), "{first}");
    assert!(first.contains("X-Probe: drover\r\n"), "{first}");
}

/// An HTTPS server with a certificate nobody trusts (a fresh CA's), answering 200.
async fn https_server() -> u16 {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{crypto, ServerConfig};

    let (ca, _) = pki::Ca::generate("probe-test").expect("ca");
    let issued = ca
        .issue(&pki::CertRequest {
            identity: pki::Identity::new(pki::Role::Agent, "replica"),
            hosts: vec!["127.0.0.1".into()],
            validity: std::time::Duration::from_secs(3600),
        })
        .expect("cert");
    let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("cert der");
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key der");
    let config = ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = acceptor.accept(conn).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probes_speak_tls_without_checking_the_certificate() {
    let node = Node::start().await;
    let https = https_server().await;
    let status = Arc::new(AtomicU16::new(200));
    let plain = http_server(status, Arc::new(Mutex::new(Vec::new()))).await;
    let https_probe = |port| {
        probe(
            ProbeHandler::HttpGet {
                path: "/".into(),
                port: PortRef::Number(port),
                scheme: HttpScheme::Https,
                http_headers: vec![],
            },
            1,
        )
    };
    let mut a = shell("web-r-0", "exec sleep 60");
    a.template_mut().spec.containers[0].readiness_probe = Some(https_probe(https));
    node.assign(&a).await;
    node.wait_for("ready over HTTPS", "web-r-0", |s| running(s) && s.ready)
        .await;

    // HTTPS against a plaintext server never completes a handshake: not ready.
    let mut b = shell("web-r-1", "exec sleep 60");
    b.template_mut().spec.containers[0].readiness_probe = Some(https_probe(plain));
    node.assign(&b).await;
    let s = node
        .wait_for("a failed HTTPS probe", "web-r-1", |s| {
            running(s) && s.message.contains("Readiness probe failed")
        })
        .await;
    assert!(!s.ready, "{s:?}");
}
