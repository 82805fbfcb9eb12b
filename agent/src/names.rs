//! Service names for Docker replicas: a DNS server the agent serves (with
//! `hickory-server`, no hand-written codec), authoritative for
//! `cluster.local`, answering from the Service table of the assignment sets.
//!
//! ```text
//!  session ──watch(routes)──▶ run() ── records(routes) (pure) ──▶ Catalog (rebuilt, swapped)
//!                                                                    ▲
//!  container resolv.conf: nameserver <--service-dns>, search NS.svc.cluster.local
//!  svc.cluster.local cluster.local, ndots:5 ──────────── UDP/TCP :53 ─┘
//! ```
//!
//! - `NAME.NAMESPACE.svc.cluster.local` → the cluster IP (a headless
//!   Service: each ready endpoint's address); `NAME` and `NAME.NAMESPACE`
//!   resolve through the search list the Docker runtime writes into every
//!   container (`runtime/docker.rs`).
//! - Names outside `cluster.local` are refused: a replica that needs outside
//!   names does not get them from this server (docs/services.md).
//! - Process replicas share their host's resolver, which drover does not
//!   touch: they use the service variables.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
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

/// A catalog answering for [`ZONE`] with `records`.
fn catalog(records: &BTreeMap<String, Vec<Ipv4Addr>>, serial: u32) -> anyhow_lite::Result<Catalog> {
    let origin = Name::from_str(ZONE).map_err(|e| e.to_string())?;
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        Name::from_str(&format!("ns.dns.{ZONE}")).map_err(|e| e.to_string())?,
        Name::from_str(&format!("hostmaster.{ZONE}")).map_err(|e| e.to_string())?,
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
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
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

/// Serve names on `listen` (UDP and TCP) from `routes` until `shutdown`.
/// Binding is retried every 2 s: the address may be a bridge that appears
/// after the agent starts (a Docker engine's docker0).
pub async fn run(
    mut routes: watch::Receiver<Arc<Vec<pb::ServiceRoute>>>,
    listen: SocketAddr,
    shutdown: CancellationToken,
) {
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
            match catalog(&now, serial) {
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
        assert!(catalog(&r, 1).is_ok());
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
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(rx, listen, stop.clone()));
        // A minimal query for backend.default.svc.cluster.local A, encoded
        // with hickory's own message type.
        use hickory_server::proto::op::{Message, Query};
        use hickory_server::proto::rr::RecordType;
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_str("backend.default.svc.cluster.local.").expect("name"),
            RecordType::A,
        ));
        let bytes = query.to_vec().expect("encodes");
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut answer = None;
        for _ in 0..50 {
            client.send_to(&bytes, listen).await.expect("send");
            let mut buf = [0u8; 512];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), client.recv_from(&mut buf)).await
            {
                let msg = Message::from_vec(&buf[..n]).expect("decodes");
                if !msg.answers.is_empty() {
                    answer = Some(msg);
                    break;
                }
            }
        }
        let msg = answer.expect("an answer");
        assert_eq!(
            msg.answers[0].data,
            RData::A(A(Ipv4Addr::new(10, 96, 0, 7)))
        );
        drop(tx);
        stop.cancel();
        let _ = task.await;
    }
}
