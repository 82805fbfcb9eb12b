//! The agent's settings: its command line, and what is resolved from it and
//! from the host (capacity from `/proc/meminfo` and the CPU count).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use drover_manifest::quantity::{parse_cpu_millis, parse_memory_bytes};
use drover_pki::{self as pki, Role, Security, TlsDir, TlsMaterial};
use drover_proto::{names, pb};

use crate::debugging::SessionLimits;
use crate::error::{AgentError, Result};
use crate::join::JoinPlan;
use drover_pki::exposition::MetricsListen;

/// Where an agent serves /metrics unless told otherwise (beside a
/// controller's 9464 on the same host).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9465";

/// Which runtime runs the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// Docker containers through the local engine (default).
    Docker,
    /// Plain child processes running the container's command (raw_exec).
    Process,
    /// Hollow replicas for scale benchmarks: nothing runs.
    Sim,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
            RuntimeKind::Sim => "sim",
        }
    }
}

/// drover-agent: runs the replicas the cluster assigns to this host.
#[derive(Debug, Clone, Parser)]
#[command(name = "drover-agent", version = drover_proto::VERSION)]
pub struct AgentConfig {
    /// This node's name, unique in the cluster (DNS-1123 subdomain).
    /// Default: the host name.
    #[arg(long, env = "DROVER_NODE")]
    pub name: Option<String>,

    /// Controller addresses, HOST:PORT,... Any member will do: followers
    /// redirect the agent to the leader.
    #[arg(
        long,
        env = "DROVER_CONTROLLERS",
        value_delimiter = ',',
        required = true
    )]
    pub controllers: Vec<String>,

    /// Node labels, KEY=VALUE,... (matched by nodeSelector).
    #[arg(long, env = "DROVER_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// How replicas run.
    #[arg(long, env = "DROVER_RUNTIME", value_enum, default_value = "docker")]
    pub runtime: RuntimeKind,

    /// Directory for the agent's state (process runtime state and logs).
    #[arg(long, env = "DROVER_DATA_DIR", default_value = "/var/lib/drover/agent")]
    pub data_dir: PathBuf,

    /// Address the agent's gRPC service (logs) binds.
    #[arg(long, env = "DROVER_LISTEN", default_value = "127.0.0.1:7101")]
    pub listen: SocketAddr,

    /// Address controllers and droverctl use to reach this agent (default: --listen).
    #[arg(long, env = "DROVER_ADVERTISE")]
    pub advertise: Option<String>,

    /// CPU offered to the cluster, as a quantity (2, 1500m). Default: the host's CPUs.
    #[arg(long)]
    pub cpu: Option<String>,

    /// Memory offered to the cluster, as a quantity (4Gi, 512Mi). Default: the host's memory.
    #[arg(long)]
    pub memory: Option<String>,

    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub heartbeat_ms: u64,

    /// Kill this node's replicas after this long without an acknowledged
    /// heartbeat (e.g. 2s): no replica runs on two hosts during a partition,
    /// at the price of downtime. It must beat the controllers' node timeout
    /// by 500 ms (at most 2500ms with the default 3 s), or they refuse the
    /// agent. Off by default: replicas keep running while the control plane
    /// is unreachable.
    #[arg(long, value_name = "DURATION", value_parser = drover_proto::duration::parse)]
    pub stop_after_disconnect: Option<Duration>,

    /// How this node makes Services reachable: `nftables` loads kernel DNAT
    /// rules for every Service's cluster IP and node ports into its own
    /// table `ip drover-services` (needs root and `nft`; removed when the
    /// agent stops). `off` (the default) leaves the node's network alone.
    #[arg(long, value_enum, default_value = "off", env = "DROVER_SERVICE_PROXY")]
    pub service_proxy: crate::services::ServiceProxy,

    /// Serve Service names (`NAME`, `NAME.NAMESPACE`,
    /// `NAME.NAMESPACE.svc.cluster.local`) on this address, port 53, and
    /// point every Docker container's resolver at it: the Docker bridge's
    /// gateway (e.g. 172.17.0.1). Process replicas use their host's resolver
    /// and the service variables instead. Off by default.
    #[arg(long, value_name = "IP", env = "DROVER_SERVICE_DNS")]
    pub service_dns: Option<std::net::Ipv4Addr>,

    /// With `--service-dns`: where names outside `cluster.local` are
    /// forwarded (`IP` or `IP:PORT`, repeatable). Default: the nameservers
    /// of this host's /etc/resolv.conf, except loopback ones.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_upstream)]
    pub service_dns_upstream: Vec<std::net::SocketAddr>,

    /// An image pull taking longer fails the start with ErrImagePull (seconds).
    #[arg(long, default_value_t = 120)]
    pub image_pull_timeout_secs: u64,

    /// The most exec and port-forward sessions this agent runs at once.
    #[arg(long, default_value_t = 32)]
    pub max_debug_sessions: usize,

    /// Process runtime: the largest a replica's log file grows before it is
    /// rotated, per stream (bytes, or with k, m, g: KiB, MiB, GiB; as Docker's
    /// json-file max-size). Docker replicas keep Docker's 10m.
    #[arg(long, value_name = "SIZE", default_value = "10m", value_parser = parse_log_size)]
    pub log_max_size: u64,

    /// Process runtime: how many log files a replica keeps per stream, the
    /// current one included (as Docker's json-file max-file).
    #[arg(long, value_name = "N", default_value_t = crate::runtime::log_files::DEFAULT_MAX_FILES)]
    pub log_max_file: u32,

    /// An exec or forwarded connection with no traffic for this long is
    /// closed (e.g. 15m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = drover_proto::duration::parse_positive)]
    pub debug_idle_timeout: Duration,

    /// Address of the plaintext, read-only Prometheus listener (GET /metrics);
    /// an empty value turns it off. It carries counts and timings only.
    #[arg(
        long,
        env = "DROVER_METRICS_LISTEN",
        value_name = "IP:PORT",
        default_value = DEFAULT_METRICS_LISTEN
    )]
    pub metrics_listen: MetricsListen,

    /// How often CPU and memory in use are sampled and sent to the leader
    /// (droverctl top), e.g. 5s.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = drover_proto::duration::parse_positive)]
    pub usage_interval: Duration,

    /// Log format on stderr: text or json (filter with DROVER_LOG).
    #[arg(long, default_value = "text")]
    pub log_format: String,

    /// Directory holding this node's ca.crt, tls.crt and tls.key.
    /// Default: DATA_DIR/tls (where --join-token stores them).
    #[arg(long, env = "DROVER_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Talk to the controllers and serve logs in plaintext, with no
    /// authentication (only for a cluster whose controllers run --insecure).
    #[arg(long, conflicts_with_all = ["tls_dir", "join_token"])]
    pub insecure: bool,

    /// Join the cluster with this token (from droverctl token create) when the
    /// tls dir holds no certificate yet; later starts need no token.
    #[arg(
        long,
        env = "DROVER_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub join_token: Option<drover_pki::token::TokenText>,

    /// The cluster's CA certificate, to check the controllers when joining
    /// (the token pins its fingerprint). Default: the tls dir's ca.crt.
    #[arg(long, env = "DROVER_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// `10m`, `512k`, `1g`, `4096` (binary units, as Docker's `max-size`; `Ki`,
/// `Mi`, `Gi` too).
fn parse_log_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 10m, 512k, 1g)"))?;
    let shift = match unit.to_ascii_lowercase().trim_end_matches('b') {
        "" => 0,
        "k" | "ki" => 10,
        "m" | "mi" => 20,
        "g" | "gi" => 30,
        _ => return Err(format!("{s:?} is not a size (e.g. 10m, 512k, 1g)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_label(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("label {s:?} has an empty key"));
    }
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Everything the agent needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub controllers: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub capacity: pb::Resources,
    pub data_dir: PathBuf,
    pub advertise: String,
    pub heartbeat: Duration,
    pub stop_after_disconnect: Option<Duration>,
    /// `--service-proxy`.
    pub service_proxy: crate::services::ServiceProxy,
    /// `--service-dns`.
    pub service_dns: Option<std::net::Ipv4Addr>,
    /// `--service-dns-upstream`.
    pub service_dns_upstream: Vec<std::net::SocketAddr>,
    /// How the agent connects to controllers and serves logs (before a
    /// pending join: plaintext, unused).
    pub security: Security,
    /// A join to do before starting (`--join-token`, no certificate yet).
    pub join: Option<JoinPlan>,
    /// Where the node certificate lives, to renew it; None: no renewal.
    pub tls_dir: Option<TlsDir>,
    /// Bounds of exec and port-forward sessions.
    pub debug_sessions: SessionLimits,
    /// Rotation of the process runtime's log files.
    pub logs: crate::runtime::log_files::LogLimits,
    /// How often usage is sampled for `droverctl top`.
    pub usage_interval: Duration,
}

impl AgentConfig {
    /// Resolve defaults (host name, capacity) and check every value.
    pub fn settings(&self, listen: SocketAddr) -> Result<Settings> {
        let node = match &self.name {
            Some(n) => n.clone(),
            None => host_name()?,
        };
        check_node_name(&node)?;
        let controllers: Vec<String> = self
            .controllers
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        if controllers.is_empty() {
            return Err(AgentError::Config(
                "--controllers needs at least one HOST:PORT".into(),
            ));
        }
        if self.max_debug_sessions == 0 {
            return Err(AgentError::Config(
                "--max-debug-sessions must be 1 or more".into(),
            ));
        }
        if self.heartbeat_ms == 0 {
            return Err(AgentError::Config("--heartbeat-ms must be above 0".into()));
        }
        if !self.service_dns_upstream.is_empty() && self.service_dns.is_none() {
            return Err(AgentError::Config(
                "--service-dns-upstream says where the agent's name server forwards: add --service-dns IP".into(),
            ));
        }
        let logs = crate::runtime::log_files::LogLimits::new(self.log_max_size, self.log_max_file)
            .map_err(AgentError::Config)?;
        let (security, join) = self.security(&node)?;
        let tls_dir = (!self.insecure).then(|| self.tls_dir());
        Ok(Settings {
            node,
            controllers,
            labels: self.labels.iter().cloned().collect(),
            capacity: capacity(self.cpu.as_deref(), self.memory.as_deref())?,
            data_dir: self.data_dir.clone(),
            advertise: self.advertise.clone().unwrap_or_else(|| listen.to_string()),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            stop_after_disconnect: self.stop_after_disconnect,
            service_proxy: self.service_proxy,
            service_dns: self.service_dns,
            service_dns_upstream: self.service_dns_upstream.clone(),
            security,
            join,
            tls_dir,
            debug_sessions: SessionLimits {
                max: self.max_debug_sessions,
                idle: self.debug_idle_timeout,
            },
            logs,
            usage_interval: self.usage_interval,
        })
    }
}

impl AgentConfig {
    /// The tls dir: --tls-dir, else DATA_DIR/tls.
    pub fn tls_dir(&self) -> TlsDir {
        TlsDir::new(
            self.tls_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("tls")),
        )
    }

    fn security(&self, node: &str) -> Result<(Security, Option<JoinPlan>)> {
        if self.insecure {
            return Ok((Security::Insecure, None));
        }
        let dir = self.tls_dir();
        if !dir.has_identity() {
            if let Some(token) = &self.join_token {
                let ca_path = self.ca.clone().unwrap_or_else(|| dir.ca_cert());
                let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| {
                    AgentError::Config(format!(
                        "joining needs the cluster's CA certificate: cannot read {} ({e}); pass --ca FILE",
                        ca_path.display()
                    ))
                })?;
                let plan = JoinPlan::new(
                    token.as_str(),
                    ca_pem,
                    &ca_path.display().to_string(),
                    dir.clone(),
                )?;
                return Ok((Security::Insecure, Some(plan)));
            }
            return Err(AgentError::Config(format!(
                "no node certificate in {}: join with --join-token (from droverctl token create --role agent), issue one (droverctl pki client --dir PKI_DIR --role agent --name {node} --out {}), or pass --insecure for a cluster without TLS",
                dir.path.display(),
                dir.path.display()
            )));
        }
        Ok((load_node_tls(&dir, node)?, None))
    }
}

/// This node's certificate from its tls dir, checked to name this node.
pub fn load_node_tls(dir: &TlsDir, node: &str) -> Result<Security> {
    let material = TlsMaterial::read_dir(dir)
        .map_err(|e| AgentError::Config(format!("cannot load the node certificate: {e}")))?;
    let (cert, _) = material
        .identity
        .as_ref()
        .ok_or_else(|| AgentError::Config("no node certificate".into()))?;
    let info = pki::cert_info(cert)
        .map_err(|e| AgentError::Config(format!("{}: {e}", dir.cert().display())))?;
    match info.identity {
        Some(id) if id.role == Role::Agent && id.name == node => Ok(Security::tls(material)),
        other => Err(AgentError::Config(format!(
            "{} is not this node's certificate (it names {}, this is agent {node:?}): remove it and join again, or pass --name",
            dir.cert().display(),
            other.map_or("no drover identity".to_string(), |i| i.to_string())
        ))),
    }
}

/// The capacity offered: the flags where given, else the host's.
pub fn capacity(cpu: Option<&str>, memory: Option<&str>) -> Result<pb::Resources> {
    let cpu_millis = match cpu {
        Some(q) => {
            parse_cpu_millis(q).map_err(|e| AgentError::Config(format!("--cpu {q:?}: {e}")))?
        }
        None => {
            std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1)
                * 1000
        }
    };
    let memory_bytes = match memory {
        Some(q) => {
            parse_memory_bytes(q).map_err(|e| AgentError::Config(format!("--memory {q:?}: {e}")))?
        }
        None => host_memory(Path::new("/proc/meminfo"))?,
    };
    Ok(pb::Resources {
        cpu_millis,
        memory_bytes,
    })
}

/// `MemTotal` from a meminfo file, in bytes.
pub fn host_memory(meminfo: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(meminfo).map_err(|e| {
        AgentError::Config(format!(
            "cannot read {} to learn the host's memory ({e}); pass --memory",
            meminfo.display()
        ))
    })?;
    parse_meminfo(&text).ok_or_else(|| {
        AgentError::Config(format!(
            "{} has no MemTotal line; pass --memory",
            meminfo.display()
        ))
    })
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        _ => None,
    }
}

fn host_name() -> Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| AgentError::Config("cannot read the host name; pass --name".into()))
}

/// A node name follows the one name rule ([`names::check_name`], a DNS-1123
/// subdomain like a Kubernetes node name) and must leave the agent's
/// certificate server name `<node>.agent.drover` a DNS name, so a bad name
/// fails at start-up, not at the join or the first `droverctl logs`.
pub fn check_node_name(name: &str) -> Result<()> {
    names::check_name("node name", name).map_err(|e| AgentError::Config(e.to_string()))?;
    pki::agent_server_name(name).map_err(|e| AgentError::Config(e.to_string()))?;
    Ok(())
}

/// `--service-dns-upstream`: `IP` (port 53) or `IP:PORT`.
fn parse_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    s.parse::<std::net::SocketAddr>().map_err(|_| {
        format!("{s:?} is not a resolver address: give an IP address, optionally with :PORT")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_flags_parse_as_kubernetes_quantities() {
        let r = capacity(Some("2"), Some("4Gi")).expect("capacity");
        assert_eq!(r.cpu_millis, 2000);
        assert_eq!(r.memory_bytes, 4 * 1024 * 1024 * 1024);
        let r = capacity(Some("1500m"), Some("512M")).expect("capacity");
        assert_eq!((r.cpu_millis, r.memory_bytes), (1500, 512_000_000));
        let e = capacity(Some("two"), None).expect_err("invalid cpu");
        assert!(e.to_string().contains("--cpu"), "{e}");
    }

    #[test]
    fn host_capacity_is_detected() {
        let r = capacity(None, None).expect("host capacity");
        assert!(r.cpu_millis >= 1000);
        assert!(r.memory_bytes > 64 * 1024 * 1024);
    }

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let text = "MemTotal:       24583856 kB\nMemFree:        20000000 kB\n";
        assert_eq!(parse_meminfo(text), Some(24_583_856 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn node_names_follow_dns_1123() {
        assert!(check_node_name("n1").is_ok());
        assert!(check_node_name("rack-2.host-3").is_ok());
        assert!(check_node_name("N1").is_err());
        assert!(check_node_name("-a").is_err());
        assert!(check_node_name("").is_err());
        assert!(check_node_name("a_b").is_err());
        assert!(check_node_name(&"a".repeat(63)).is_ok());
        // Valid names that would not leave `<node>.agent.drover` a DNS name.
        assert!(check_node_name(&"a".repeat(64)).is_err());
        assert!(check_node_name(&vec!["a".repeat(60); 4].join(".")).is_err());
    }

    #[test]
    fn dns_upstreams_parse_and_need_the_name_server() {
        let parse = |args: &[&str]| {
            let mut argv = vec![
                "drover-agent",
                "--controllers",
                "127.0.0.1:7001",
                "--insecure",
            ];
            argv.extend(args);
            AgentConfig::try_parse_from(argv)
        };
        let cfg = parse(&[
            "--service-dns",
            "172.17.0.1",
            "--service-dns-upstream",
            "10.0.0.2",
            "--service-dns-upstream",
            "10.0.0.3:5353",
        ])
        .expect("parses");
        assert_eq!(
            cfg.service_dns_upstream,
            [
                SocketAddr::from(([10, 0, 0, 2], 53)),
                SocketAddr::from(([10, 0, 0, 3], 5353))
            ]
        );
        let e = parse(&["--service-dns-upstream", "resolver.example"])
            .expect_err("not an address")
            .to_string();
        assert!(e.contains("is not a resolver address"), "{e}");
        let alone = parse(&["--service-dns-upstream", "10.0.0.2"]).expect("parses");
        let e = alone
            .settings(SocketAddr::from(([127, 0, 0, 1], 7101)))
            .expect_err("needs --service-dns")
            .to_string();
        assert!(e.contains("add --service-dns"), "{e}");
    }

    /// Issue 12 item 12: Debug output never carries the join token.
    #[test]
    fn debug_output_hides_the_join_token() {
        let cfg = AgentConfig::try_parse_from([
            "drover-agent",
            "--controllers",
            "127.0.0.1:7001",
            "--join-token",
            "drover-1-secret-in-debug",
        ])
        .expect("parses");
        let text = format!("{cfg:?}");
        assert!(!text.contains("secret-in-debug"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn flags_parse() {
        let cfg = AgentConfig::try_parse_from([
            "drover-agent",
            "--name",
            "n1",
            "--controllers",
            "127.0.0.1:7001,127.0.0.2:7001",
            "--labels",
            "zone=a,disk=ssd",
            "--runtime",
            "process",
            "--cpu",
            "2",
            "--memory",
            "4Gi",
            "--insecure",
        ])
        .expect("flags");
        assert_eq!(cfg.runtime, RuntimeKind::Process);
        let s = cfg.settings(cfg.listen).expect("settings");
        assert_eq!(s.controllers, vec!["127.0.0.1:7001", "127.0.0.2:7001"]);
        assert_eq!(s.labels["zone"], "a");
        assert_eq!(s.labels["disk"], "ssd");
        assert_eq!(s.advertise, "127.0.0.1:7101");
        assert_eq!(s.capacity.cpu_millis, 2000);
    }
}
