//! Wiring one controller together: sled, store, raft storage, transport, the
//! raft node task and the gRPC server, with an orderly shutdown.
//!
//! ```text
//!  sled::Db ── raft trees ── SledStorage ─ Node ─┬─ Store (the state, in memory)
//!                                               └── Cluster ── Control, Raft services
//!                      GrpcTransport ◀──────────────┘
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info, warn};

use drover_pki::authz::{self, AuthorizeLayer};
use drover_pki::token::JoinToken;
use drover_pki::{self as pki, Ca, Identity, Role, Security, TlsDir, TlsMaterial};

use drover_proto::pb;

use crate::api::control::ControlService;
use crate::api::peer::PeerService;
use crate::api::security::{SecurityService, Signer};
use crate::cluster::Cluster;
use crate::config::ControllerConfig;
use crate::raft::node::{self, Node};
use crate::raft::storage::SledStorage;
use crate::raft::transport::{GrpcTransport, NodeSlot, Transport};
use crate::store::Store;

/// Open (or create) the controller's sled database in `dir`.
pub fn open_db(dir: &std::path::Path, cache_mb: u64) -> anyhow::Result<sled::Db> {
    fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting data dir {} to its owner", dir.display()))?;
    }
    sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(cache_mb * 1024 * 1024)
        .flush_every_ms(Some(500))
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io) if io.to_string().contains("lock") => anyhow::anyhow!(
                "data dir {} is in use by another drover-controller (sled holds a lock on it)",
                dir.display()
            ),
            other => anyhow::anyhow!("opening the database in {}: {other}", dir.display()),
        })
}

/// Run one controller until `shutdown` fires or its raft node fails.
pub async fn run(cfg: ControllerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let advertise = cfg.advertise_address();
    let db = open_db(&cfg.data_dir, cfg.cache_mb)?;
    let store = Store::with_history(cfg.watch_history);
    let storage = SledStorage::open(&db, &cfg.data_dir.join("snapshots"))?;

    if !storage.is_initialized() {
        if cfg.join {
            info!(
                id = cfg.id,
                "joining an existing cluster: waiting for the leader to send a snapshot"
            );
        } else {
            if cfg.peers.0.is_empty() {
                bail!("this data dir is empty: pass --peers ID=HOST:PORT,... to bootstrap a new cluster, or --join to join one");
            }
            bootstrap(&storage, &cfg.peers.0)?;
            db.flush_async().await?;
        }
    } else if !cfg.peers.0.is_empty() {
        info!("data dir already holds a cluster: --peers is ignored (membership comes from the replicated log)");
    }

    if let (Some(token), Some(dir)) = (&cfg.join_token, &cfg.tls_dir) {
        let dir = TlsDir::new(dir);
        if dir.has_identity() {
            info!("this controller already has a certificate: --join-token is not needed and was not used");
        } else {
            join_pki(&cfg, token.as_str(), &dir, &advertise).await?;
        }
    }
    let (security, signer) = tls(&cfg)?;
    // The credentials in use: replaced when the certificate is renewed.
    let (security_tx, security_rx) = watch::channel(security.clone());
    let slot: NodeSlot = Arc::new(RwLock::new(None));
    let transport = Arc::new(GrpcTransport::new(
        cfg.id,
        advertise.clone(),
        slot.clone(),
        security_rx.clone(),
    ));
    for (id, address) in cfg.peers.0.iter() {
        transport.set_peer(*id, address.clone());
    }

    let (tx, rx) = node::channel();
    let transport_dyn: Arc<dyn Transport> = transport.clone();
    let (node, handle) = Node::new(
        cfg.node_config(),
        storage,
        store.clone(),
        transport_dyn,
        tx,
        rx,
    )?;
    for (id, address) in store.member_addresses() {
        transport.set_peer(id, address);
    }
    *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(handle.clone());

    let mut cluster = Cluster::new(
        handle,
        store,
        transport,
        advertise.clone(),
        std::time::Duration::from_millis(cfg.leader_wait_ms),
        cfg.max_replicas,
        security_rx.clone(),
    );
    cluster.service_range = cfg.service_cluster_ip_range;

    // One socket for the controller's life: each certificate generation's
    // server accepts on a clone of it, so a renewal never closes the port.
    let listener = std::net::TcpListener::bind(cfg.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let metrics_listener = match cfg.metrics_listen.0 {
        Some(addr) => Some(
            drover_pki::exposition::bind(addr)
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => {
            crate::metrics::set_enabled(false);
            None
        }
    };
    info!(id = cfg.id, listen = %cfg.listen, advertise = %advertise, metrics = %cfg.metrics_listen, data_dir = %cfg.data_dir.display(), "controller serving");

    let node_stop = shutdown.child_token();
    let node_task = spawn_node(node, node_stop.clone())?;
    tokio::spawn(crate::stalls::watch(shutdown.clone(), crate::stalls::warn));
    tokio::spawn(crate::memory::trim_every(shutdown.clone()));
    tokio::spawn(crate::metrics::watch_leadership(
        cluster.handle.clone(),
        shutdown.clone(),
    ));
    if let Some(listener) = metrics_listener {
        let sources = crate::metrics::Sources {
            handle: cluster.handle.clone(),
            store: cluster.store.clone(),
            db: db.clone(),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = drover_pki::exposition::serve(
                listener,
                move || {
                    let sources = sources.clone();
                    async move { crate::metrics::scrape(&sources).await }
                },
                async move { stop.cancelled().await },
            )
            .await;
            if let Err(e) = served {
                error!(error = %e, "the metrics listener failed");
            }
        });
    }
    if let (Some(dir), Security::Tls(_)) = (&cfg.tls_dir, &security) {
        tokio::spawn(crate::renewal::keep_renewed(
            cluster.clone(),
            TlsDir::new(dir),
            security_tx,
            shutdown.clone(),
        ));
    }

    let control = pb::control_server::ControlServer::new(ControlService {
        cluster: cluster.clone(),
    })
    .max_decoding_message_size(drover_proto::MAX_REQUEST_BYTES + 64 * 1024)
    .max_encoding_message_size(64 * 1024 * 1024);
    let dispatcher = crate::dispatcher::Dispatcher::start(
        cluster.clone(),
        std::time::Duration::from_millis(cfg.node_timeout_ms),
        shutdown.clone(),
    );
    let loops = crate::leader::LoopConfig {
        node_timeout: std::time::Duration::from_millis(cfg.node_timeout_ms),
        heartbeats: dispatcher.heartbeats.clone(),
    };
    tokio::spawn(crate::leader::run(
        cluster.handle.clone(),
        cluster.store.clone(),
        loops,
        shutdown.clone(),
    ));
    let dispatcher = pb::dispatcher_server::DispatcherServer::new(dispatcher)
        .max_decoding_message_size(drover_proto::MAX_REQUEST_BYTES)
        .max_encoding_message_size(drover_proto::MAX_ASSIGNMENT_BYTES);
    let security_service = pb::security_server::SecurityServer::new(SecurityService {
        cluster: cluster.clone(),
        signer,
        join_limit: Default::default(),
    })
    .max_decoding_message_size(crate::api::security::MAX_JOIN_REQUEST_BYTES);
    let peer = pb::raft_server::RaftServer::new(PeerService { cluster })
        .max_decoding_message_size(drover_proto::MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(drover_proto::MAX_RAFT_MESSAGE_BYTES);

    // No per-request timeout: agent sessions are long-lived streams; unary
    // handlers bound their own waits (leader wait, write timeout).
    let serving = shutdown.clone();
    let server = async move {
        let shutdown = serving;
        let mut security = security_rx;
        // Servers of earlier certificates, finishing their connections.
        let mut draining = tokio::task::JoinSet::new();
        loop {
            let current = security.borrow_and_update().clone();
            let incoming = listener
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
                .map(|l| TcpIncoming::from(l).with_nodelay(Some(true)))
                .context("sharing the listening socket")?;
            let mut builder = pki::server_builder();
            if let Security::Tls(material) = &current {
                builder = builder
                    .tls_config(material.server_config()?)
                    .context("configuring TLS for the listener")?;
            }
            let stop = shutdown.clone();
            let mut changes = security.clone();
            let renewed = CancellationToken::new();
            let restart = renewed.clone();
            // Keep-alives only clear away dead connections (node liveness
            // is judged by heartbeats): a peer may take 10 s to answer a
            // ping. With 3 s, a client or agent process starved of CPU for
            // a moment lost its connection and everything in flight on it,
            // and the reconnections' TLS handshakes loaded the machine
            // further (at 100,000 replicas: thousands of agent sessions and
            // most progress listings cut).
            let generation = builder
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(2)))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
                .layer(AuthorizeLayer::new(
                    authz::controller_policy,
                    !current.is_insecure(),
                ))
                .add_service(control.clone())
                .add_service(dispatcher.clone())
                .add_service(peer.clone())
                .add_service(security_service.clone())
                .serve_with_incoming_shutdown(
                    pki::limit::limit_connections(incoming, pki::limit::MAX_CONNECTIONS),
                    async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            r = changes.changed() => match r {
                                Ok(()) => restart.cancel(),
                                Err(_) => stop.cancelled().await,
                            },
                        }
                    },
                );
            let mut task = tokio::spawn(generation);
            tokio::select! {
                // A renewal first: it also ends the old generation, and a
                // loaded runtime may see both at once; taking the ending as
                // the server's end stopped the whole controller.
                biased;
                _ = renewed.cancelled() => {
                    // New connections (and clients' reconnects after the old
                    // server's GOAWAY) get the new certificate at once.
                    info!("serving with the renewed certificate");
                    draining.spawn(async move {
                        let _ = task.await;
                    });
                }
                ended = &mut task => {
                    return match ended {
                        Ok(r) => r.context("gRPC server failed"),
                        Err(e) => Err(anyhow::anyhow!("gRPC server task failed: {e}")),
                    };
                }
            }
        }
    };

    let mut node_task = node_task;
    let mut node_ended = false;
    let result = tokio::select! {
        r = server => r,
        r = &mut node_task => {
            // The node stopped on its own: storage failed.
            node_ended = true;
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.context("raft node failed")),
                Err(_) => Err(anyhow::anyhow!("raft node thread panicked")),
            }
        }
    };
    shutdown.cancel();
    if !node_ended {
        match node_task.await {
            Ok(Err(e)) => error!(error = %e, "raft node failed while stopping"),
            Err(_) => error!("raft node thread panicked"),
            Ok(Ok(())) => {}
        }
    }
    db.flush_async().await?;
    info!("controller stopped");
    result
}

/// Run the raft node on a thread of its own (with a runtime of its own),
/// apart from the runtime that serves agents and clients. Applying a large
/// entry takes the node tens of milliseconds at 100,000 replicas; on a shared
/// runtime that held a worker from the agent sessions, whose heartbeats then
/// waited (SPEC guarantee 8), and the node's own ticks waited behind
/// requests. As a thread, the node and the sessions share the cores through
/// the kernel's scheduler instead. The receiver answers with how the node
/// ended (an error when the sender is dropped: the thread panicked).
fn spawn_node(
    node: Node,
    stop: CancellationToken,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("raft-node".into())
        .spawn(move || {
            let ended = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(node.run_on_own_thread(stop)),
                Err(e) => Err(anyhow::Error::from(e).context("starting the raft node's runtime")),
            };
            let _ = tx.send(ended);
        })
        .context("starting the raft node's thread")?;
    Ok(rx)
}

/// The security for outgoing links and the listener, and the signer.
type Tls = (Security, Option<Arc<Signer>>);

fn tls(cfg: &ControllerConfig) -> anyhow::Result<Tls> {
    let Some(dir) = &cfg.tls_dir else {
        warn!("--insecure: every link is plaintext and unauthenticated; anyone who can reach this port can change the cluster");
        return Ok((Security::Insecure, None));
    };
    let dir = TlsDir::new(dir);
    let material = TlsMaterial::read_dir(&dir).map_err(|e| {
        anyhow::anyhow!("cannot load this controller's certificates from --tls-dir: {e}")
    })?;
    let (cert, _) = material.identity.as_ref().context("no certificate")?;
    match drover_pki::cert_info(cert).ok().and_then(|i| i.identity) {
        Some(id) if id.role == Role::Controller => {
            info!(name = %id.name, tls_dir = %dir.path.display(), signs_agents = dir.can_sign(), "mutual TLS on every link")
        }
        other => bail!(
            "{} is not a controller certificate (it names {}): use the one droverctl pki init made for this controller",
            dir.cert().display(),
            other.map_or("no drover identity".to_string(), |i| i.to_string())
        ),
    }
    // Checked now, so a bad key fails the start rather than the listener.
    material.server_config()?;
    let signer = if dir.can_sign() {
        let ca = Ca::read_from(&dir.path)
            .map_err(|e| anyhow::anyhow!("cannot load the CA from --tls-dir: {e}"))?;
        Some(Arc::new(Signer {
            fingerprint: drover_pki::ca_fingerprint(ca.cert_pem())?,
            ca,
            node_validity: cfg.node_cert_validity,
        }))
    } else {
        None
    };
    Ok((Security::tls(material), signer))
}

/// Get this controller's certificate from a running controller with a join
/// token, and store it in `dir`. Retries for a minute while no controller
/// answers or none has a quorum (a join reads the token linearizably).
async fn join_pki(
    cfg: &ControllerConfig,
    token: &str,
    dir: &TlsDir,
    advertise: &str,
) -> anyhow::Result<()> {
    let token = JoinToken::parse(token)?;
    let ca_path = cfg.ca.clone().unwrap_or_else(|| dir.ca_cert());
    let ca_pem = fs::read_to_string(&ca_path).map_err(|e| {
        anyhow::anyhow!(
            "--join-token needs the cluster's CA certificate: cannot read {} ({e}); pass --ca FILE",
            ca_path.display()
        )
    })?;
    if pki::ca_fingerprint(&ca_pem)? != token.ca_fingerprint {
        bail!(
            "the CA in {} is not the one the join token was made for: use the cluster's ca.crt",
            ca_path.display()
        );
    }
    let name = cfg.id.to_string();
    let (csr, key_pem) = pki::new_csr(&Identity::new(Role::Controller, name.clone()))?;
    let anonymous = Security::tls(TlsMaterial {
        ca_pem: ca_pem.clone(),
        identity: None,
    });
    let request = pb::JoinRequest {
        token: token.reveal(),
        node: name,
        csr_pem: csr,
        address: advertise.to_string(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = String::new();
    loop {
        for addr in &cfg.join_via {
            let endpoint = anonymous
                .endpoint(addr, &pki::Server::Controller)?
                .connect_timeout(std::time::Duration::from_secs(2));
            let channel = match endpoint.connect().await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            };
            let answer = pb::security_client::SecurityClient::new(channel)
                .join(request.clone())
                .await;
            match answer {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let issued = pki::Issued {
                        cert_pem: resp.cert_pem,
                        key_pem,
                    };
                    // The CA stays the one the token pinned, whatever the answer says.
                    dir.write(&ca_pem, &issued, None)?;
                    info!(token = %token.id, tls_dir = %dir.path.display(), "joined with a token: controller certificate stored (no CA key: this controller does not sign)");
                    return Ok(());
                }
                // No quorum right now, or a controller stopping: ask again.
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    last = format!("{addr}: {}", s.message());
                }
                Err(s) => bail!(
                    "the cluster refused this controller's join: {}",
                    s.message()
                ),
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!("could not join: no controller in --join-via answered within 60s (last: {last})");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A new cluster: every initial member writes the same snapshot at index 1,
/// term 1, holding the voters and their addresses.
pub fn bootstrap(storage: &SledStorage, members: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    let voters: Vec<u64> = members.keys().copied().collect();
    let data = crate::store::state::initial(members).encode()?;
    storage.bootstrap(&voters, &data)?;
    info!(voters = ?voters, "bootstrapped a new cluster");
    Ok(())
}
