//! The Service data path on this node: kernel DNAT rules (nftables) that
//! send a connection to `CLUSTER-IP:PORT`, or to `<this node>:NODE-PORT`, to
//! one ready endpoint, chosen at random per connection. UDP rides on the
//! same rules (conntrack keeps a flow on its endpoint).
//!
//! ```text
//!  controller ── AssignmentSet.services (changes) ──▶ session ──watch──▶ run()
//!                                                                        │ ruleset(table, node ip)   (pure)
//!                                                                        ▼
//!                                      nft -f -   (the whole table replaced in one transaction)
//! ```
//!
//! The agent owns one table, `ip drover-services`, and nothing else:
//! - every change replaces the whole table atomically (`table; delete
//!   table; table {...}` in one `nft -f` transaction), so a rule is never
//!   duplicated, also after an agent restart, and no half-written table is
//!   ever seen;
//! - a Service with no ready endpoint rejects (TCP reset, ICMP for UDP)
//!   instead of letting the packet wander off on the default route;
//! - the agent deletes the table when it stops. Connections already open
//!   keep their endpoint (conntrack), new ones get no translation.
//!
//! Packets DNATed here whose source is not this node (a Docker container, a
//! NodePort client) are masqueraded, so the endpoint's reply comes back
//! through this node to be translated back.
//!
//! `127.0.0.1:NODE-PORT` works as on a kube-proxy node: the output chain
//! DNATs it like any local address, the agent turns on `route_localnet`
//! (else the kernel refuses to route a packet from 127.0.0.1 off the
//! loopback device) and masquerades it, and, as kube-proxy does since
//! CVE-2020-8558, drops packets that arrive for 127.0.0.0/8 from elsewhere
//! unless they were DNATed here. The agent puts `route_localnet` back when
//! it stops, if it was off.
//!
//! Endpoints are `node-address:port` (`controller/src/endpoints/`): the
//! target port of a process replica, the host port a Docker replica's
//! container port is published on (its `hostPort`, or the ephemeral port
//! its engine assigned; docs/services.md).

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use drover_proto::pb;

/// The nftables table this agent owns.
pub const TABLE: &str = "drover-services";

/// How the agent makes Services reachable (`--service-proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceProxy {
    /// No data path (the default: the node's network is left alone).
    Off,
    /// Kernel DNAT with nftables (needs root and `nft`).
    Nftables,
}

/// The whole table for `routes`, as one `nft -f` transaction. `node_ip` is
/// this node's address (traffic from it is not masqueraded). Pure: the same
/// routes give the same text, so an unchanged table is not reloaded.
pub fn ruleset(routes: &[pb::ServiceRoute], node_ip: &str) -> String {
    let mut services = String::new();
    let mut node_ports = String::new();
    let mut rejects = String::new();
    for r in routes {
        if r.cluster_ip.parse::<std::net::Ipv4Addr>().is_err() {
            continue; // headless, or not an IPv4 address: no rule
        }
        for p in &r.ports {
            let proto = match p.protocol.as_str() {
                "UDP" => "udp",
                "TCP" => "tcp",
                _ => continue,
            };
            let endpoints: Vec<(&str, u16)> = p
                .endpoints
                .iter()
                .filter_map(|e| {
                    let (ip, port) = e.rsplit_once(':')?;
                    ip.parse::<std::net::Ipv4Addr>().ok()?;
                    Some((ip, port.parse().ok()?))
                })
                .collect();
            let matcher = format!("ip daddr {} {proto} dport {}", r.cluster_ip, p.port);
            let node_matcher = (p.node_port != 0).then(|| format!("{proto} dport {}", p.node_port));
            if endpoints.is_empty() {
                let reject = if proto == "tcp" {
                    "reject with tcp reset"
                } else {
                    "reject"
                };
                let _ = writeln!(rejects, "    {matcher} {reject}");
                if let Some(m) = &node_matcher {
                    let _ = writeln!(rejects, "    fib daddr type local {m} {reject}");
                }
                continue;
            }
            let target = dnat(&endpoints);
            let _ = writeln!(services, "    {matcher} {target}");
            if let Some(m) = node_matcher {
                let _ = writeln!(node_ports, "    {m} {target}");
            }
        }
    }
    format!(
        "table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  chain services {{
{services}  }}
  chain node-ports {{
{node_ports}  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
    fib daddr type local jump node-ports
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    jump services
    fib daddr type local jump node-ports
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ct original ip saddr != {node_ip} masquerade
  }}
  chain no-endpoints {{
    type filter hook output priority filter; policy accept;
{rejects}  }}
  chain no-endpoints-forward {{
    type filter hook forward priority filter; policy accept;
{rejects}  }}
  chain no-endpoints-input {{
    type filter hook input priority filter; policy accept;
    ip saddr != 127.0.0.0/8 ip daddr 127.0.0.0/8 ct state != {{ established, related }} ct status & dnat == 0 drop
{rejects}  }}
}}
"
    )
}

/// `dnat` to one endpoint, or to one of several at random.
fn dnat(endpoints: &[(&str, u16)]) -> String {
    match endpoints {
        [(ip, port)] => format!("dnat ip to {ip}:{port}"),
        _ => {
            let map: Vec<String> = endpoints
                .iter()
                .enumerate()
                .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
                .collect();
            format!(
                "dnat ip addr . port to numgen random mod {} map {{ {} }}",
                endpoints.len(),
                map.join(", ")
            )
        }
    }
}

async fn nft(input: &str) -> Result<(), String> {
    nft_with(&["-f", "-"], input).await
}

/// `nft ARGS` with `input` on its stdin; its error output when it fails.
async fn nft_with(args: &[&str], input: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (is nftables installed?): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Remove this agent's table (nothing when there is none).
pub async fn remove() -> Result<(), String> {
    nft(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n")).await
}

/// The sysctl that lets a packet from 127.0.0.0/8 be routed off the
/// loopback device (this network namespace's, for every interface).
const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// Turn `route_localnet` on; `Ok(true)` when this call turned it on (so
/// stopping turns it off again).
fn enable_route_localnet() -> Result<bool, String> {
    let was = std::fs::read_to_string(ROUTE_LOCALNET)
        .map_err(|e| format!("reading {ROUTE_LOCALNET}: {e}"))?;
    if was.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(ROUTE_LOCALNET, "1").map_err(|e| format!("writing {ROUTE_LOCALNET}: {e}"))?;
    Ok(true)
}

/// Keep the table in step with `routes` until `shutdown`, then remove it.
/// A failed load is logged and retried at the next change (or in 5 s).
pub async fn run(
    mut routes: watch::Receiver<Arc<Vec<pb::ServiceRoute>>>,
    node_ip: String,
    shutdown: CancellationToken,
) {
    let turned_on = match enable_route_localnet() {
        Ok(on) => on,
        Err(e) => {
            warn!(error = %e, "node ports will not answer on 127.0.0.1");
            false
        }
    };
    let mut loaded: Option<String> = None;
    loop {
        let text = ruleset(&routes.borrow_and_update(), &node_ip);
        if loaded.as_deref() != Some(text.as_str()) {
            match nft(&text).await {
                Ok(()) => {
                    debug!(bytes = text.len(), "service rules loaded");
                    loaded = Some(text);
                }
                Err(e) => warn!(error = %e, "loading the service rules failed; retrying"),
            }
        }
        let retry = loaded.is_none();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = routes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)), if retry => {}
        }
    }
    match remove().await {
        Ok(()) => info!("service rules removed"),
        Err(e) => warn!(error = %e, "removing the service rules failed"),
    }
    if turned_on {
        if let Err(e) = std::fs::write(ROUTE_LOCALNET, "0") {
            warn!(error = %e, path = ROUTE_LOCALNET, "could not turn route_localnet off again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ip: &str, proto: &str, port: u32, node_port: u32, eps: &[&str]) -> pb::ServiceRoute {
        pb::ServiceRoute {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ip: ip.into(),
            ports: vec![pb::ServiceRoutePort {
                protocol: proto.into(),
                port,
                node_port,
                endpoints: eps.iter().map(|e| e.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn one_rule_per_service_port_balanced_over_its_endpoints() {
        let text = ruleset(
            &[
                route(
                    "10.96.0.10",
                    "TCP",
                    80,
                    30080,
                    &["10.213.1.101:8080", "10.213.2.101:8080"],
                ),
                route("10.96.0.11", "UDP", 53, 0, &["10.213.1.101:5353"]),
                route("", "TCP", 80, 0, &["10.213.1.101:8080"]),
            ],
            "10.213.1.101",
        );
        assert!(text.contains(
            "    ip daddr 10.96.0.10 tcp dport 80 dnat ip addr . port to numgen random mod 2 map { 0 : 10.213.1.101 . 8080, 1 : 10.213.2.101 . 8080 }\n"
        ), "{text}");
        assert!(
            text.contains("    tcp dport 30080 dnat ip addr . port to numgen random mod 2"),
            "{text}"
        );
        assert!(
            text.contains("    ip daddr 10.96.0.11 udp dport 53 dnat ip to 10.213.1.101:5353\n"),
            "{text}"
        );
        assert_eq!(
            text.matches(" dnat ip ").count(),
            3,
            "no rule for a headless Service: {text}"
        );
        assert!(text.starts_with("table ip drover-services\ndelete table ip drover-services\n"));
        assert!(text.contains("ct original ip saddr != 10.213.1.101 masquerade"));
        assert!(
            text.contains("ip saddr != 127.0.0.0/8 ip daddr 127.0.0.0/8 ct state != { established, related } ct status & dnat == 0 drop"),
            "127.0.0.0/8 reached from outside only through a DNAT (CVE-2020-8558): {text}"
        );
    }

    #[test]
    fn a_service_without_ready_endpoints_rejects() {
        let text = ruleset(
            &[route("10.96.0.12", "TCP", 80, 30081, &[])],
            "10.213.1.101",
        );
        assert!(!text.contains(" dnat ip "), "{text}");
        assert_eq!(
            text.matches("ip daddr 10.96.0.12 tcp dport 80 reject with tcp reset")
                .count(),
            3,
            "output, forward and input: {text}"
        );
        assert!(text.contains("fib daddr type local tcp dport 30081 reject with tcp reset"));
    }

    #[test]
    fn garbage_from_the_wire_makes_no_rule() {
        let text = ruleset(
            &[
                route("10.96.0.13; flush ruleset", "TCP", 80, 0, &["10.0.0.1:80"]),
                route("10.96.0.14", "SCTP", 80, 0, &["10.0.0.1:80"]),
                route("10.96.0.15", "TCP", 80, 0, &["10.0.0.1:80; drop", "x:y"]),
            ],
            "10.213.1.101",
        );
        assert!(
            !text.contains("flush") && !text.contains("; drop"),
            "{text}"
        );
        assert!(!text.contains(" dnat ip "), "{text}");
    }

    /// The kernel accepts the whole table (`nft -c`: checked, not
    /// committed, so the machine's network is untouched). Needs root and
    /// `nft`; skipped without them.
    #[tokio::test]
    async fn the_kernel_accepts_the_generated_table() {
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        if !root
            || std::process::Command::new("nft")
                .arg("--version")
                .output()
                .is_err()
        {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let text = ruleset(
            &[
                route(
                    "10.96.0.10",
                    "TCP",
                    80,
                    30080,
                    &["10.213.1.101:8080", "10.213.2.101:49153"],
                ),
                route("10.96.0.11", "UDP", 53, 30053, &["10.213.1.101:5353"]),
                route("10.96.0.12", "TCP", 81, 30081, &[]),
            ],
            "10.213.1.101",
        );
        let checked = nft_with(&["-c", "-f", "-"], &text).await;
        assert_eq!(checked, Ok(()), "{text}");
    }
}
