//! Service names for Docker replicas: a DNS server the agent serves (with
//! `hickory-server`, no hand-written codec), authoritative for
//! `cluster.local`, answering from the Service table of the assignment
//! sets, and forwarding every other name to the host's resolvers.
//!
//! ```text
//!  session ──watch(routes)──▶ run() ── records(routes) (pure) ──▶ Catalog (rebuilt, swapped)
//!                                                                  │ cluster.local.  in memory
//!                                                                  │ .  (the rest)   forwarder ──▶ upstreams
//!  container resolv.conf: nameserver <--service-dns>, search NS.svc.cluster.local
//!  svc.cluster.local cluster.local, ndots:5 ──────────── UDP/TCP :53 ─┘
//! ```
//!
//! - `NAME.NAMESPACE.svc.cluster.local` → the cluster IP (a headless
//!   Service: each ready endpoint's address); `NAME` and `NAME.NAMESPACE`
//!   resolve through the search list the Docker runtime writes into every
//!   container (`runtime/docker.rs`). A name under `cluster.local` that is
//!   no Service is answered NXDOMAIN here, never forwarded.
//! - Every other name goes to the upstream resolvers ([`upstreams`]):
//!   `--service-dns-upstream`, else the nameservers of the host's
//!   `/etc/resolv.conf` except loopback ones (on a host running
//!   systemd-resolved or dnsmasq they would be this machine, not a resolver
//!   a container can use through us) and the server's own address. With
//!   none, outside names are refused (REFUSED), as before.
//! - Process replicas share their host's resolver, which drover does not
//!   touch: they use the service variables.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverOpts,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use drover_proto::pb;

/// The zone the agent answers for.
pub const ZONE: &str = "cluster.local.";
/// Answers are fresh for this long: endpoints change, so keep it short.
const TTL: u32 = 5;

/// Every name the table defines, with its addresses (sorted, deduplicated).
/// Pure. A route whose namespace or name does not make a DNS label is left
/// out (the controller never sends one).
pub fn records(routes: &[pb::ServiceRoute]) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut out: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for r in routes {
        let label_ok = |s: &str| drover_proto::names::dns1123_label(s).is_ok();
        if !label_ok(&r.name) || !label_ok(&r.namespace) {
            continue;
        }
        let name = format!("{}.{}.svc.{ZONE}", r.name, r.namespace);
        let addresses: Vec<Ipv4Addr> = match r.cluster_ip.parse::<Ipv4Addr>() {
            Ok(ip) => vec![ip],
            // Headless: the ready endpoints' addresses.
            Err(_) => r
                .ports
                .iter()
                .flat_map(|p| &p.endpoints)
                .filter_map(|e| e.rsplit_once(':')?.0.parse().ok())
                .collect(),
        };
        let entry = out.entry(name).or_default();
        entry.extend(addresses);
        entry.sort();
        entry.dedup();
    }
    out
}

/// Where names outside [`ZONE`] are forwarded: `configured`
/// (`--service-dns-upstream`) when given, else `system` (the host's
/// `/etc/resolv.conf` nameservers) on port 53 without loopback addresses;
/// never the server's own address (`listen`), which would loop. Pure.
pub fn upstreams(
    configured: &[SocketAddr],
    system: &[IpAddr],
    listen: SocketAddr,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = if configured.is_empty() {
        system
            .iter()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect()
    } else {
        configured.to_vec()
    };
    out.retain(|a| *a != listen);
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(*a));
    out
}

/// The nameservers of resolv.conf text (`/etc/resolv.conf`'s), in order;
/// nothing when it does not parse.
pub fn resolv_conf_name_servers(text: &[u8]) -> Vec<IpAddr> {
    match hickory_server::resolver::system_conf::parse_resolv_conf(text) {
        Ok((config, _)) => {
            let mut ips: Vec<IpAddr> = Vec::new();
            for ns in config.name_servers() {
                if !ips.contains(&ns.ip) {
                    ips.push(ns.ip);
                }
            }
            ips
        }
        Err(e) => {
            warn!(error = %e, "cannot read the host's resolvers");
            Vec::new()
        }
    }
}

/// A zone handler for the root that forwards to `upstreams` (UDP, then
/// TCP for a truncated answer), with the answers' own TTLs cached. The
/// host's `/etc/hosts` is not consulted: a container gets what DNS says.
fn forwarder(upstreams: &[SocketAddr]) -> anyhow_lite::Result<Arc<dyn ZoneHandler>> {
    let name_servers = upstreams
        .iter()
        .map(|a| {
            let mut udp = ConnectionConfig::udp();
            udp.port = a.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = a.port();
            NameServerConfig::new(a.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    let handler = ForwardZoneHandler::builder_tokio(ForwardConfig {
        name_servers,
        options: Some(options),
    })
    .build()?;
    Ok(Arc::new(handler))
}

/// An authoritative zone `origin` holding `records` (names under it).
fn zone(
    origin: &str,
    records: &BTreeMap<String, Vec<Ipv4Addr>>,
    serial: u32,
) -> anyhow_lite::Result<InMemoryZoneHandler<TokioRuntimeProvider>> {
    let origin = Name::from_str(origin).map_err(|e| e.to_string())?;
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        Name::from_str("ns.dns")
            .and_then(|n| n.append_domain(&origin))
            .map_err(|e| e.to_string())?,
        Name::from_str("hostmaster")
            .and_then(|n| n.append_domain(&origin))
            .map_err(|e| e.to_string())?,
        serial,
        60,
        10,
        3600,
        TTL,
    );
    zone.upsert_mut(
        Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)),
        serial,
    );
    for (name, addresses) in records {
        let Ok(name) = Name::from_str(name) else {
            continue;
        };
        for ip in addresses {
            zone.upsert_mut(
                Record::from_rdata(name.clone(), TTL, RData::A(A(*ip))),
                serial,
            );
        }
    }
    Ok(zone)
}

/// A catalog answering for [`ZONE`] with `records`, and for every other
/// name through `forward` (when there is one). The catalog picks the
/// longest matching zone, so nothing under [`ZONE`] is ever forwarded.
fn catalog(
    records: &BTreeMap<String, Vec<Ipv4Addr>>,
    serial: u32,
    forward: Option<&Arc<dyn ZoneHandler>>,
) -> anyhow_lite::Result<Catalog> {
    let origin = Name::from_str(ZONE).map_err(|e| e.to_string())?;
    let mut catalog = Catalog::new();
    catalog.upsert(
        LowerName::new(&origin),
        vec![Arc::new(zone(ZONE, records, serial)?)],
    );
    if let Some(forward) = forward {
        catalog.upsert(LowerName::new(&Name::root()), vec![forward.clone()]);
    }
    Ok(catalog)
}

/// Small local alias: errors here are one sentence.
mod anyhow_lite {
    pub type Result<T> = std::result::Result<T, String>;
}

/// The server's handler: the current catalog, swapped whole on a change.
#[derive(Clone)]
struct Names(Arc<RwLock<Arc<Catalog>>>);

#[async_trait::async_trait]
impl RequestHandler for Names {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let current = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        current
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// Serve names on `listen` (UDP and TCP) from `routes` until `shutdown`,
/// forwarding the rest to `upstreams` (none: refused).
/// Binding is retried every 2 s: the address may be a bridge that appears
/// after the agent starts (a Docker engine's docker0).
pub async fn run(
    mut routes: watch::Receiver<Arc<Vec<pb::ServiceRoute>>>,
    listen: SocketAddr,
    upstreams: Vec<SocketAddr>,
    shutdown: CancellationToken,
) {
    let forward = if upstreams.is_empty() {
        warn!("no upstream resolver: names outside {ZONE} are refused to containers");
        None
    } else {
        match forwarder(&upstreams) {
            Ok(f) => {
                let list: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
                info!(upstreams = %list.join(","), "forwarding names outside {ZONE}");
                Some(f)
            }
            Err(e) => {
                warn!(error = %e, "cannot forward names outside {ZONE}: they are refused");
                None
            }
        }
    };
    let names = Names(Arc::new(RwLock::new(Arc::new(Catalog::new()))));
    let mut server = Server::new(names.clone());
    loop {
        let udp = tokio::net::UdpSocket::bind(listen).await;
        let tcp = tokio::net::TcpListener::bind(listen).await;
        match (udp, tcp) {
            (Ok(udp), Ok(tcp)) => {
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 4096);
                info!(%listen, "serving service names");
                break;
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(%listen, error = %e, "cannot serve service names yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
    let mut serial = 0u32;
    let mut served = None;
    loop {
        let now = records(&routes.borrow_and_update());
        if served.as_ref() != Some(&now) {
            serial = serial.wrapping_add(1);
            match catalog(&now, serial, forward.as_ref()) {
                Ok(c) => {
                    *names.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
                    served = Some(now);
                }
                Err(e) => warn!(error = %e, "building the service names failed"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = routes.changed() => if changed.is_err() { break },
        }
    }
    if let Err(e) = server.shutdown_gracefully().await {
        warn!(error = %e, "stopping the name server");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ns: &str, name: &str, ip: &str, eps: &[&str]) -> pb::ServiceRoute {
        pb::ServiceRoute {
            namespace: ns.into(),
            name: name.into(),
            cluster_ip: ip.into(),
            ports: vec![pb::ServiceRoutePort {
                protocol: "TCP".into(),
                port: 80,
                node_port: 0,
                endpoints: eps.iter().map(|e| e.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn services_resolve_to_their_address_headless_ones_to_their_endpoints() {
        let r = records(&[
            route("default", "backend", "10.96.0.7", &["10.213.1.101:8081"]),
            route(
                "shop",
                "db",
                "",
                &["10.213.1.102:5432", "10.213.1.101:5432"],
            ),
            route("default", "Bad_Name", "10.96.0.8", &[]),
        ]);
        let expected: BTreeMap<String, Vec<Ipv4Addr>> = [
            (
                "backend.default.svc.cluster.local.".to_string(),
                vec![Ipv4Addr::new(10, 96, 0, 7)],
            ),
            (
                "db.shop.svc.cluster.local.".to_string(),
                vec![
                    Ipv4Addr::new(10, 213, 1, 101),
                    Ipv4Addr::new(10, 213, 1, 102),
                ],
            ),
        ]
        .into();
        assert_eq!(r, expected);
        assert!(catalog(&r, 1, None).is_ok());
    }

    /// A free UDP port on loopback.
    fn free_listen() -> SocketAddr {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        ([127, 0, 0, 1], port).into()
    }

    /// Ask `server` for `name`'s A records over UDP until it answers with
    /// something other than SERVFAIL (it may still be binding).
    async fn ask(server: SocketAddr, name: &str) -> hickory_server::proto::op::Message {
        use hickory_server::proto::op::{Message, Query, ResponseCode};
        use hickory_server::proto::rr::RecordType;
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(
            Name::from_str(name).expect("name"),
            RecordType::A,
        ));
        let bytes = query.to_vec().expect("encodes");
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        for _ in 0..50 {
            client.send_to(&bytes, server).await.expect("send");
            let mut buf = [0u8; 4096];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await
            {
                let msg = Message::from_vec(&buf[..n]).expect("decodes");
                if msg.metadata.response_code != ResponseCode::ServFail {
                    return msg;
                }
            }
        }
        panic!("no answer from {server} for {name}");
    }

    /// A real query over UDP to a real server on loopback.
    #[tokio::test]
    async fn the_server_answers_a_query_for_a_service() {
        let (tx, rx) = watch::channel(Arc::new(vec![route(
            "default",
            "backend",
            "10.96.0.7",
            &[],
        )]));
        let listen = free_listen();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(rx, listen, Vec::new(), stop.clone()));
        let msg = ask(listen, "backend.default.svc.cluster.local.").await;
        assert_eq!(
            msg.answers[0].data,
            RData::A(A(Ipv4Addr::new(10, 96, 0, 7)))
        );
        drop(tx);
        stop.cancel();
        let _ = task.await;
    }

    #[test]
    fn upstreams_are_the_flag_else_the_hosts_resolvers_without_loopback_or_ourselves() {
        let listen: SocketAddr = ([172, 17, 0, 1], 53).into();
        let system = resolv_conf_name_servers(
            b"# systemd-resolved and a real one\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n\
              nameserver 172.17.0.1\nnameserver ::1\nnameserver 10.255.255.53\nsearch example.org\n",
        );
        assert_eq!(
            upstreams(&[], &system, listen),
            [SocketAddr::from(([10, 255, 255, 53], 53))]
        );
        let flag: SocketAddr = ([10, 213, 1, 1], 5353).into();
        assert_eq!(upstreams(&[flag, listen], &system, listen), [flag]);
        assert!(upstreams(
            &[],
            &resolv_conf_name_servers(b"nameserver 127.0.0.53\n"),
            listen
        )
        .is_empty());
        assert!(resolv_conf_name_servers(b"\xff\xfe not a resolv.conf").is_empty());
    }

    /// Outside names go to the upstream, a real DNS server on loopback
    /// serving `outside.test`; names under cluster.local never do, even
    /// when the upstream would answer them.
    #[tokio::test]
    async fn names_outside_the_cluster_are_forwarded_upstream() {
        use hickory_server::proto::op::ResponseCode;
        let upstream_addr = free_listen();
        let mut upstream_catalog = Catalog::new();
        for (origin, name, ip) in [
            ("outside.test.", "www.outside.test.", [192, 0, 2, 7]),
            (
                "cluster.local.",
                "ghost.default.svc.cluster.local.",
                [192, 0, 2, 9],
            ),
        ] {
            let records = BTreeMap::from([(name.to_string(), vec![Ipv4Addr::from(ip)])]);
            upstream_catalog.upsert(
                LowerName::new(&Name::from_str(origin).expect("origin")),
                vec![Arc::new(zone(origin, &records, 1).expect("zone"))],
            );
        }
        let mut upstream = Server::new(upstream_catalog);
        upstream.register_socket(
            tokio::net::UdpSocket::bind(upstream_addr)
                .await
                .expect("bind the upstream"),
        );

        let (tx, rx) = watch::channel(Arc::new(vec![route(
            "default",
            "backend",
            "10.96.0.7",
            &[],
        )]));
        let listen = free_listen();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(rx, listen, vec![upstream_addr], stop.clone()));
        let msg = ask(listen, "backend.default.svc.cluster.local.").await;
        assert_eq!(
            msg.answers[0].data,
            RData::A(A(Ipv4Addr::new(10, 96, 0, 7)))
        );
        let msg = ask(listen, "www.outside.test.").await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            msg.answers
                .iter()
                .map(|r| r.data.clone())
                .collect::<Vec<_>>(),
            [RData::A(A(Ipv4Addr::new(192, 0, 2, 7)))],
            "{msg:?}"
        );
        let msg = ask(listen, "ghost.default.svc.cluster.local.").await;
        assert_eq!(
            msg.metadata.response_code,
            ResponseCode::NXDomain,
            "cluster.local is ours alone: {msg:?}"
        );
        drop(tx);
        stop.cancel();
        let _ = task.await;
        let _ = upstream.shutdown_gracefully().await;
    }
}
