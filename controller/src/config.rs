//! The controller's settings, from its command line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use drover_pki::exposition::MetricsListen;

use crate::raft::node::NodeConfig;

/// Where a controller serves /metrics unless told otherwise (9464 is the
/// port OpenTelemetry's Prometheus exporter made customary).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// drover-controller: one member of drover's raft-replicated control plane.
#[derive(Debug, Clone, Parser)]
#[command(name = "drover-controller", version = drover_proto::VERSION)]
pub struct ControllerConfig {
    /// This member's raft id (unique, ≥ 1).
    #[arg(long, env = "DROVER_ID")]
    pub id: u64,

    /// Address the gRPC listener binds (droverctl, peers and agents all use it).
    #[arg(long, env = "DROVER_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,

    /// Address peers should use to reach this member (default: --listen).
    #[arg(long, env = "DROVER_ADVERTISE")]
    pub advertise: Option<String>,

    /// Directory holding this member's sled database (raft log and state).
    #[arg(
        long,
        env = "DROVER_DATA_DIR",
        default_value = "/var/lib/drover/controller"
    )]
    pub data_dir: PathBuf,

    /// The initial members as ID=HOST:PORT,... (used only to bootstrap a new cluster).
    #[arg(long, env = "DROVER_PEERS", value_parser = parse_peers, default_value = "")]
    pub peers: Peers,

    /// Join an existing cluster: start empty and wait for the leader's snapshot
    /// (first run `droverctl cluster add --id ID --address HOST:PORT`).
    #[arg(long)]
    pub join: bool,

    /// Raft tick in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub tick_ms: u64,

    /// Election timeout in ticks (randomised between N and 2N).
    #[arg(long, default_value_t = 10)]
    pub election_ticks: usize,

    /// Leader heartbeat interval in ticks.
    #[arg(long, default_value_t = 2)]
    pub heartbeat_ticks: usize,

    /// Compact the raft log every N applied entries...
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_interval: u64,

    /// ... or once the entries applied since the last snapshot hold this
    /// many MiB, whichever comes first (the log is in memory until then).
    #[arg(long, default_value_t = 16)]
    pub snapshot_log_mib: u64,

    /// Entries kept behind the applied index when compacting, for slow
    /// followers...
    #[arg(long, default_value_t = 1_000)]
    pub trailing_entries: u64,

    /// ... but no more than this many MiB of them.
    #[arg(long, default_value_t = 4)]
    pub trailing_log_mib: u64,

    /// How long a write waits for a leader before failing with "no leader".
    #[arg(long, default_value_t = 5_000)]
    pub leader_wait_ms: u64,

    /// How long a write waits to be committed and applied.
    #[arg(long, default_value_t = 8_000)]
    pub write_timeout_ms: u64,

    /// A node whose agent was not heard from for this long is NotReady and its
    /// replicas are rescheduled (a new leader first grants one full timeout).
    #[arg(long, default_value_t = 3_000)]
    pub node_timeout_ms: u64,

    /// Largest spec.replicas accepted.
    #[arg(long, default_value_t = drover_manifest::DEFAULT_MAX_REPLICAS)]
    pub max_replicas: u32,

    /// Where new Services get their cluster IP (IPv4, /12 to /30). Addresses
    /// already allocated keep theirs when this changes.
    #[arg(long, default_value = crate::store::services::DEFAULT_SERVICE_RANGE)]
    pub service_cluster_ip_range: crate::store::services::ServiceRange,

    /// sled page cache size in MiB.
    #[arg(long, default_value_t = 64)]
    pub cache_mb: u64,

    /// How many recent changes of the state this controller keeps for
    /// `get -w`: a watch that resumes here from an older index lists again
    /// (each kept change holds the state it made; they share what is equal).
    #[arg(long, default_value_t = crate::store::history::KEPT_VERSIONS)]
    pub watch_history: usize,

    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,

    /// Directory holding this controller's ca.crt, tls.crt and tls.key (from
    /// `droverctl pki init`), and ca.key to sign agents' certificates.
    #[arg(long, env = "DROVER_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Serve and connect in plaintext, with no authentication at all (a lab on
    /// a private network only).
    #[arg(long, conflicts_with = "tls_dir")]
    pub insecure: bool,

    /// Get this controller's certificate with a join token (from
    /// `droverctl token create --role controller`) when --tls-dir holds none
    /// yet; needs --join-via. Such a controller has no CA key: it cannot sign.
    #[arg(
        long,
        env = "DROVER_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub join_token: Option<drover_pki::token::TokenText>,

    /// Running controllers to present the join token to, HOST:PORT,...
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub join_via: Vec<String>,

    /// The cluster's CA certificate for --join-token (its fingerprint must be
    /// the token's). Default: --tls-dir's ca.crt.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Address of the plaintext, read-only Prometheus listener (GET /metrics);
    /// an empty value turns it off. It carries counts and timings only.
    #[arg(
        long,
        env = "DROVER_METRICS_LISTEN",
        value_name = "IP:PORT",
        default_value = DEFAULT_METRICS_LISTEN
    )]
    pub metrics_listen: MetricsListen,

    /// How long the node certificates this controller signs for agents are valid.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = drover_proto::duration::parse_positive)]
    pub node_cert_validity: Duration,
}

/// `--peers`: member id → address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<u64, String>);

fn parse_peers(s: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {part:?}: id {id:?} is not a positive number"))?;
        if id == 0 {
            return Err(format!("peer {part:?}: ids start at 1"));
        }
        validate_address(addr.trim()).map_err(|e| format!("peer {part:?}: {e}"))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("peer id {id} appears twice"));
        }
    }
    Ok(Peers(peers))
}

/// Check a `HOST:PORT` address.
pub fn validate_address(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("address {addr:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("address {addr:?} has an invalid port")),
    }
}

impl ControllerConfig {
    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            tick: Duration::from_millis(self.tick_ms.max(1)),
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            snapshot_interval: self.snapshot_interval.max(1),
            snapshot_log_bytes: self.snapshot_log_mib.max(1) << 20,
            trailing_entries: self.trailing_entries,
            trailing_bytes: self.trailing_log_mib << 20,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            ..NodeConfig::new(self.id)
        }
    }

    /// Refuse settings that cannot work, in one sentence each.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id must be 1 or more".into());
        }
        if self.watch_history == 0 {
            return Err("--watch-history must be 1 or more".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(
                "--election-ticks must be larger than --heartbeat-ticks, which must be at least 1"
                    .into(),
            );
        }
        if let Some(a) = &self.advertise {
            validate_address(a).map_err(|e| format!("--advertise: {e}"))?;
        }
        if !self.join && !self.peers.0.is_empty() && !self.peers.0.contains_key(&self.id) {
            return Err(format!(
                "--peers does not list this controller's own id {}",
                self.id
            ));
        }
        if self.join && !self.peers.0.is_empty() {
            return Err("--join and --peers exclude each other: a joining controller learns the members from the leader".into());
        }
        if self.join_token.is_some() && (self.tls_dir.is_none() || self.join_via.is_empty()) {
            return Err("--join-token needs --tls-dir (where the certificate goes) and --join-via (controllers to ask)".into());
        }
        for a in &self.join_via {
            validate_address(a).map_err(|e| format!("--join-via: {e}"))?;
        }
        if self.tls_dir.is_none() && !self.insecure {
            return Err("pass --tls-dir DIR (a directory made by droverctl pki init) to serve over mutual TLS, or --insecure to run without TLS or authentication".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "--log-format must be text or json, not {:?}",
                self.log_format
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 12: Debug output never carries the join token.
    #[test]
    fn debug_output_hides_the_join_token() {
        let cfg = ControllerConfig::try_parse_from([
            "drover-controller",
            "--id",
            "2",
            "--join-token",
            "drover-1-secret-in-debug",
        ])
        .expect("parses");
        let text = format!("{cfg:?}");
        assert!(!text.contains("secret-in-debug"), "{text}");
    }

    #[test]
    fn peers_parse_and_refuse_bad_input() {
        let p = parse_peers("1=127.0.0.1:7001, 2=127.0.0.2:7001").expect("valid");
        assert_eq!(p.0.get(&2).map(String::as_str), Some("127.0.0.2:7001"));
        assert!(parse_peers("").expect("empty is fine").0.is_empty());
        for bad in [
            "1",
            "x=1.2.3.4:1",
            "0=a:1",
            "1=a:1,1=b:2",
            "1=a",
            "1=a:0",
            "1=:80",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad} should be refused");
        }
    }
}
