//! drover's cluster launcher: a real multi-host drover cluster on one Linux
//! machine (`droverctl lab` is a thin verb over this crate), and the pieces
//! every launcher shares (the test harness's loopback clusters use them too).
//!
//! - this file: a lab's hosts in network namespaces, its state file, faults
//!   (kill, stop, start, pause, partition, heal), `up` and `down`;
//! - [`cluster`]: connect, member status, wait for a leader / Ready nodes,
//!   join tokens; [`pki`]: a new cluster's CA and certificates;
//! - [`available`]: `up --apply` waiting for deployments;
//! - [`chaos`]: the seeded chaos runner and its history checker;
//! - [`engine`]: a Docker-runtime agent host's own Docker engine, its
//!   cgroup (pause, power-loss kill) and images from this machine's engine;
//! - [`sys`]: `ip`, `iptables`, `docker`, `apt-get`, signals and `/proc`.
//!
//! ```text
//!  root namespace: droverctl ── bridge drv<ID> 10.213.<ID>.1/24
//!                                 │ veth drv<ID>-c1 … drv<ID>-n3
//!        ┌────────────────────────┼──────────────────────────┐
//!   netns drv<ID>-c1         netns drv<ID>-c2   …       netns drv<ID>-n1
//!   eth0 10.213.<ID>.11      eth0 .12                   eth0 10.213.<ID>.101
//!   drover-controller :7001  drover-controller          drover-agent :7101
//!                                                         └─ replicas (process runtime)
//!                                                       or containerd + dockerd of its
//!                                                         own, containers on its docker0
//!                                                         (docker runtime: [`engine`])
//! ```
//!
//! Every controller and agent is its own host: a network namespace with one
//! address, joined to a bridge by a veth pair, so a replica's host port is
//! per host and a partition (iptables DROP inside the namespaces, both
//! directions) really drops packets. The lab's directory (`--dir`, default
//! `.drover-lab`) holds `lab.json` (what was made: ids, names, pids,
//! partitions), the cluster's PKI, each host's data dir and log. `lab down`
//! works from that file alone, so it cleans up even after every process died.
//!
//! The controllers run with mutual TLS from the first start (a CA made like
//! `pki init`); agents join with a join token as on real hosts.

pub mod available;
pub mod chaos;
pub mod cluster;
pub mod engine;
pub mod pki;
pub mod sys;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_client::Client;
use drover_pki::{Security, TlsDir};
use serde::{Deserialize, Serialize};
use sys::Signal;

/// The state file inside the lab directory.
pub const STATE_FILE: &str = "lab.json";
/// The lab's /24 networks are 10.213.<ID>.0/24.
pub const NET_PREFIX: &str = "10.213";
pub const CONTROLLER_PORT: u16 = 7001;
pub const AGENT_PORT: u16 = 7101;
/// Each controller host's /metrics port (on its own address).
pub const CONTROLLER_METRICS_PORT: u16 = 9464;
/// Each agent host's /metrics port (on its own address).
pub const AGENT_METRICS_PORT: u16 = 9465;
/// The droverctl context `lab up` writes (droverctl writes it from the lab).
pub const CONTEXT: &str = "lab";
pub const MAX_CONTROLLERS: u32 = 7;
pub const MAX_AGENTS: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Controller,
    Agent,
}

/// One host: a namespace, its address, and the daemon it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub role: Role,
    pub ip: String,
    pub ns: String,
    pub veth: String,
    /// The daemon's pid while started by the lab (None: stopped or killed).
    pub pid: Option<u32>,
    /// The daemon's command line, to start it again with the same data dir.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    /// A Docker-runtime agent's own Docker engine (see [`engine`]).
    #[serde(default)]
    pub engine: Option<engine::Engine>,
}

impl Host {
    /// `IP:PORT` of its daemon.
    pub fn address(&self) -> String {
        let port = match self.role {
            Role::Controller => CONTROLLER_PORT,
            Role::Agent => AGENT_PORT,
        };
        format!("{}:{port}", self.ip)
    }

    /// `IP:PORT` of its daemon's /metrics listener, reachable from this
    /// machine (the host's own address, not loopback in its namespace).
    pub fn metrics_address(&self) -> String {
        let port = match self.role {
            Role::Controller => CONTROLLER_METRICS_PORT,
            Role::Agent => AGENT_METRICS_PORT,
        };
        format!("{}:{port}", self.ip)
    }
}

/// A host cut off from others, both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub host: String,
    pub from: Vec<String>,
}

/// What a host's daemon is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostState::Running => "running",
            HostState::Paused => "paused",
            HostState::Stopped => "stopped",
        })
    }
}

/// A lab as its state file records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lab {
    pub id: u32,
    /// Absolute path of the lab directory.
    pub dir: PathBuf,
    pub bridge: String,
    /// The bridge's FORWARD accept rule was added (Docker's policy is DROP).
    #[serde(default)]
    pub forward_rule: bool,
    /// `10.213.<ID>`: the lab's /24 without the last byte.
    pub net: String,
    pub runtime: String,
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// The config file whose context `lab` was written, to remove it on down
    /// (recorded by droverctl, which writes and removes it).
    #[serde(default)]
    pub config: Option<PathBuf>,
}

/// What `lab up` was asked for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dir: PathBuf,
    pub controllers: u32,
    pub agents: u32,
    pub runtime: String,
    pub controller_bin: PathBuf,
    pub agent_bin: PathBuf,
    /// Extra flags for every controller (e.g. faster elections in tests).
    pub controller_args: Vec<String>,
    /// Extra flags for every agent.
    pub agent_args: Vec<String>,
    /// Where to look for busybox (PATH syntax) instead of PATH; when set,
    /// `up` installs nothing and refuses if busybox is not there.
    pub busybox_path: Option<std::ffi::OsString>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Whether `dir` holds a lab.
pub fn exists(dir: &Path) -> bool {
    state_path(dir).exists()
}

/// Environment variable: the directory holding drover's binaries, searched first.
pub const BIN_DIR_ENV: &str = "DROVER_BIN_DIR";

/// A drover binary (`drover-controller`, `drover-agent`, `droverctl`) as
/// built with the running executable: in `DROVER_BIN_DIR` when set, else
/// beside the running executable (or above it, for test binaries in
/// `target/<profile>/deps`). The test harness uses this lookup alone, so a
/// stale installed binary is never tested by mistake.
pub fn built_binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let path = PathBuf::from(dir).join(name);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{name} is not in {} ({BIN_DIR_ENV}): build it first with `cargo build --workspace`",
            path.parent().unwrap_or(Path::new(".")).display()
        );
    }
    let exe = std::env::current_exe().context("cannot tell where this program is")?;
    if let Some(dir) = exe.parent() {
        let beside = dir.join(name);
        if beside.is_file() {
            return Ok(beside);
        }
        // Test binaries live in target/<profile>/deps.
        if dir.ends_with("deps") {
            if let Some(up) = dir.parent() {
                if up.join(name).is_file() {
                    return Ok(up.join(name));
                }
            }
        }
    }
    bail!(
        "{name} is not beside {}: build it first with `cargo build --workspace`",
        exe.display()
    )
}

/// [`built_binary`], else `name` on PATH (an installed drover).
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = built_binary(name) {
        return Ok(path);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("{name} is neither beside droverctl nor on PATH: build it first with `cargo build --release` and run target/release/droverctl")
}

impl Lab {
    /// Read the lab in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Lab> {
        let path = state_path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no lab in {}: start one with droverctl lab up (or pass --dir; a lab whose state file was lost is removed with droverctl lab down --id N)",
                dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a lab state file; remove the directory by hand if nothing runs from it",
                path.display()
            )
        })
    }

    /// Write the state file (temp file, then rename), readable by its owner
    /// only: it holds the agents' join token.
    pub fn save(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = state_path(&self.dir);
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self)?;
        // A leftover temp file (a crash mid-save) may have other modes or be
        // a planted link: start from nothing, and never follow a link.
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The host named `name`, or an error listing the lab's hosts.
    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            anyhow::anyhow!(
                "no host {name:?} in this lab (hosts: {})",
                self.hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    fn host_mut(&mut self, name: &str) -> anyhow::Result<&mut Host> {
        self.host(name)?;
        Ok(self
            .hosts
            .iter_mut()
            .find(|h| h.name == name)
            .expect("checked above"))
    }

    pub fn controllers(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.role == Role::Controller)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.role == Role::Agent)
    }

    /// Every controller's `IP:PORT`.
    pub fn servers(&self) -> Vec<String> {
        self.controllers().map(Host::address).collect()
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The admin's tls dir (`ca.crt`, `tls.crt`, `tls.key`), which the
    /// `lab` context names.
    pub fn admin_tls(&self) -> TlsDir {
        TlsDir::new(self.pki_dir().join("admin-admin"))
    }

    /// How the admin connects.
    pub fn security(&self) -> anyhow::Result<Security> {
        pki::security(&self.admin_tls())
    }

    /// A client for the lab's controllers with the admin's certificate.
    pub fn client(&self, servers: Vec<String>, timeout: Duration) -> anyhow::Result<Client> {
        Ok(Client::new(servers, Some(timeout), self.security()?))
    }

    /// What the host's daemon is doing.
    pub fn state(&self, host: &Host) -> HostState {
        let frozen = || {
            host.engine
                .as_ref()
                .and_then(|e| e.cgroup().ok())
                .is_some_and(|c| c.frozen())
        };
        match host.pid.and_then(|pid| sys::process_state(pid, &host.ns)) {
            None => HostState::Stopped,
            Some(_) if frozen() => HostState::Paused,
            Some('T') | Some('t') => HostState::Paused,
            Some(_) => HostState::Running,
        }
    }

    /// The partitions this host is on either side of.
    pub fn partitions_of(&self, host: &str) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.partitions {
            if p.host == host {
                out.extend(p.from.iter().cloned());
            } else if p.from.iter().any(|f| f == host) {
                out.push(p.host.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Start the host's daemon (again); an error if it runs. A host with
    /// its own Docker engine gets the engine started first when it is down
    /// (after a kill: with a reboot's cleanup), and the workload image
    /// loaded if its data root lacks it.
    pub fn start(&mut self, name: &str) -> anyhow::Result<u32> {
        let host = self.host(name)?.clone();
        match self.state(&host) {
            HostState::Stopped => {}
            HostState::Running => match host.pid {
                Some(pid) => bail!("{name} is already running (pid {pid})"),
                None => bail!("{name} is already running"),
            },
            HostState::Paused => {
                bail!("{name} is paused: resume it with droverctl lab resume {name}")
            }
        }
        let pid = match host.engine.clone() {
            None => sys::spawn_detached(&host.ns, &host.argv, &host.env, &host.log)?,
            Some(mut engine) => {
                if !engine.running() || !engine.answers() {
                    // A half-dead engine goes down whole, as on a power loss.
                    engine.cgroup()?.kill_all(Duration::from_secs(10))?;
                    let started = engine.start(&host.ns);
                    self.host_mut(name)?.engine = Some(engine.clone());
                    self.save()?;
                    started?;
                }
                if engine
                    .docker(&["image", "inspect", WORKLOAD_IMAGE])
                    .is_err()
                {
                    engine.load_image(WORKLOAD_IMAGE, &engine::cache_image(WORKLOAD_IMAGE)?)?;
                }
                let cgroup = engine.cgroup()?;
                sys::spawn_in_cgroup(
                    &host.ns,
                    &cgroup.daemons_procs(),
                    &host.argv,
                    &host.env,
                    &host.log,
                )?
            }
        };
        self.host_mut(name)?.pid = Some(pid);
        self.save()?;
        // The pid is the daemon's once setsid and nsenter (or ip netns exec)
        // have exec'd into it: until then it is not in the namespace and
        // would look stopped to the next `pause` or `status`.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sys::process_state(pid, &host.ns).is_none() && Instant::now() < deadline {
            if !engine::alive(pid) {
                bail!(
                    "{name}'s daemon exited at its start: see {}",
                    host.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(pid)
    }

    /// SIGKILL every process of the host (its daemon and, for an agent, its
    /// replicas: processes in its namespace; with its own Docker engine the
    /// whole cgroup, engine and containers included, as a power loss).
    pub fn kill(&mut self, name: &str) -> anyhow::Result<usize> {
        let host = self.host(name)?.clone();
        let mut killed = 0;
        if let Some(engine) = &host.engine {
            // Agent, engine, shims and containers at once: a power loss.
            killed += engine.cgroup()?.kill_all(Duration::from_secs(10))?;
            let e = self.host_mut(name)?.engine.as_mut().expect("cloned above");
            e.containerd_pid = None;
            e.dockerd_pid = None;
        }
        let pids = sys::netns_pids(&host.ns);
        // A stopped process cannot die until continued.
        sys::signal(Signal::SIGKILL, &pids);
        sys::signal(Signal::SIGCONT, &pids);
        killed += pids.len();
        if host.role == Role::Agent && self.runtime == "docker" && host.engine.is_none() {
            let ids = sys::docker_containers(&host.name);
            if !ids.is_empty() {
                let mut args = vec!["kill"];
                args.extend(ids.iter().map(String::as_str));
                let _ = sys::run("docker", &args);
                killed += ids.len();
            }
        }
        self.wait_gone(&host, Duration::from_secs(10));
        self.host_mut(name)?.pid = None;
        self.save()?;
        Ok(killed)
    }

    /// SIGTERM the daemon and wait for it to exit (SIGKILL after 20 s).
    pub fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let host = self.host(name)?.clone();
        if let Some(engine) = &host.engine {
            // A frozen agent cannot act on SIGTERM: the host is resumed
            // first; its engine keeps running, as a host's does when its
            // agent service stops.
            engine.cgroup()?.freeze(false)?;
        }
        if let Some(pid) = host.pid {
            if self.state(&host) != HostState::Stopped {
                sys::signal(Signal::SIGTERM, &[pid]);
                sys::signal(Signal::SIGCONT, &[pid]);
                if !self.wait_gone(&host, Duration::from_secs(20)) {
                    sys::signal(Signal::SIGKILL, &[pid]);
                    self.wait_gone(&host, Duration::from_secs(5));
                }
            }
        }
        self.host_mut(name)?.pid = None;
        self.save()
    }

    fn wait_gone(&self, host: &Host, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.state(host) == HostState::Stopped {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGSTOP (`pause`) or SIGCONT (`resume`) every process of the host;
    /// a host with its own Docker engine is frozen (thawed) by its cgroup.
    pub fn pause(&mut self, name: &str, pause: bool) -> anyhow::Result<()> {
        let host = self.host(name)?.clone();
        if self.state(&host) == HostState::Stopped {
            bail!("{name} is not running: start it with droverctl lab start {name}");
        }
        if let Some(engine) = &host.engine {
            // The freezer: agent, engine and containers alike, which a
            // SIGSTOP to the namespace's processes would not reach.
            return engine.cgroup()?.freeze(pause);
        }
        let pids = sys::netns_pids(&host.ns);
        sys::signal(
            if pause {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            },
            &pids,
        );
        // Signals are delivered asynchronously (late on a busy machine):
        // return once the daemon shows it, so what is said next is true.
        let want = if pause {
            HostState::Paused
        } else {
            HostState::Running
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.state(&host) != want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// Drop every packet between `name` and `from` (default: every other
    /// host), both directions. The root namespace (droverctl) stays reachable.
    pub fn partition(&mut self, name: &str, from: &[String]) -> anyhow::Result<Vec<String>> {
        let host = self.host(name)?.clone();
        let others: Vec<Host> = if from.is_empty() {
            self.hosts
                .iter()
                .filter(|h| h.name != name)
                .cloned()
                .collect()
        } else {
            let mut v = Vec::new();
            for f in from {
                if f == name {
                    bail!("cannot partition {name} from itself");
                }
                v.push(self.host(f)?.clone());
            }
            v
        };
        for other in &others {
            drop_between(&host, &other.ip)?;
            drop_between(other, &host.ip)?;
        }
        let names: Vec<String> = others.iter().map(|h| h.name.clone()).collect();
        self.partitions.push(Partition {
            host: name.to_string(),
            from: names.clone(),
        });
        self.save()?;
        Ok(names)
    }

    /// Remove every partition.
    pub fn heal(&mut self) -> anyhow::Result<usize> {
        for h in &self.hosts {
            if sys::netns_exists(&h.ns) {
                // A namespace never partitioned has no chain to flush.
                if sys::in_ns(
                    &h.ns,
                    "iptables",
                    &["-t", "raw", "-L", PARTITION_CHAIN, "-n"],
                )
                .is_ok()
                {
                    sys::in_ns(&h.ns, "iptables", &["-t", "raw", "-F", PARTITION_CHAIN])?;
                }
            }
        }
        let n = self.partitions.len();
        self.partitions.clear();
        self.save()?;
        Ok(n)
    }
}

/// The raw-table chain holding a host's partition rules.
const PARTITION_CHAIN: &str = "DROVER-PARTITION";

/// In `host`'s namespace, drop everything arriving from `ip`: in the raw
/// table's PREROUTING, before connection tracking and Docker's DNAT, so a
/// packet for one of the host's containers is dropped as surely as one for
/// the host (and Docker, which rewrites FORWARD and nat, never touches it).
/// What the host's containers send leaves with the host's address
/// (masquerade) and is dropped by the same rule on the other side. The rules
/// live in a chain of their own, jumped to first from PREROUTING, so `heal`
/// flushes them and nothing of Docker's (dockerd 28 adds raw rules too).
fn drop_between(host: &Host, ip: &str) -> anyhow::Result<()> {
    let raw = |args: &[&str]| {
        let mut all = vec!["-t", "raw"];
        all.extend_from_slice(args);
        sys::in_ns(&host.ns, "iptables", &all)
    };
    if raw(&["-L", PARTITION_CHAIN, "-n"]).is_err() {
        raw(&["-N", PARTITION_CHAIN])?;
    }
    if raw(&["-C", "PREROUTING", "-j", PARTITION_CHAIN]).is_err() {
        raw(&["-I", "PREROUTING", "1", "-j", PARTITION_CHAIN])?;
    }
    raw(&["-A", PARTITION_CHAIN, "-s", ip, "-j", "DROP"])?;
    Ok(())
}

/// Create the namespaces, bridge and veths, the PKI; start controllers with
/// TLS, then agents with a join token. Returns the lab (droverctl then
/// writes its `lab` context); progress lines go to `progress`. On failure everything made so far is removed.
pub async fn up(opts: &UpOptions, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Lab> {
    if exists(&opts.dir) {
        bail!(
            "a lab already exists in {}: remove it first with droverctl lab down{}",
            opts.dir.display(),
            dir_flag(&opts.dir)
        );
    }
    if let Some(missing) = sys::missing_prerequisite() {
        bail!(missing);
    }
    if opts.controllers == 0 || opts.controllers > MAX_CONTROLLERS {
        bail!("--controllers must be between 1 and {MAX_CONTROLLERS}");
    }
    if opts.agents > MAX_AGENTS {
        bail!("--agents must be at most {MAX_AGENTS}");
    }
    if opts.runtime == "docker" {
        // Every agent host runs its own engine: no silent fallback to this
        // machine's shared one.
        if let Some(missing) = engine::missing_prerequisite() {
            bail!(missing);
        }
    }
    // What the examples need, before anything is made: a lab whose
    // replicas cannot start is worse than no lab.
    let busybox = if opts.runtime == "docker" {
        ensure_image(progress)?;
        None
    } else {
        Some(ensure_busybox(opts.busybox_path.as_deref(), progress)?)
    };
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    let mut lab = claim_network(&dir, opts)?;
    if opts.runtime == "docker" {
        let (driver, why) = engine::storage_driver(&dir);
        progress(&format!(
            "each agent host runs its own Docker engine (storage driver {driver}: {why})"
        ));
        let id = lab.id;
        for h in lab.hosts.iter_mut().filter(|h| h.role == Role::Agent) {
            h.engine = Some(engine::Engine::new(
                format!("drv{id}-{}", h.name),
                dir.join(&h.name),
                &dir,
                &h.name,
                &driver,
            ));
        }
    }
    lab.save()?;
    match build(&mut lab, opts, busybox.as_deref(), progress).await {
        Ok(()) => Ok(lab),
        Err(e) => {
            progress(&format!("lab up failed ({e:#}); removing what it made"));
            let _ = down(&dir);
            Err(e)
        }
    }
}

fn dir_flag(dir: &Path) -> String {
    if dir == Path::new(".drover-lab") {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    }
}

/// Pick the first free lab id (no route into its /24, no bridge, no
/// namespaces of that name) and claim it by creating the bridge.
fn claim_network(dir: &Path, opts: &UpOptions) -> anyhow::Result<Lab> {
    let routes = sys::ip(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
    for id in 1..=250u32 {
        let net = format!("{NET_PREFIX}.{id}");
        let bridge = format!("drv{id}");
        // An engine left by a lab whose state was lost keeps its id taken
        // until `lab down --id` removes it.
        if routes.contains(&format!("{net}."))
            || sys::link_exists(&bridge)
            || !engine::engines_of_lab(id).is_empty()
        {
            continue;
        }
        let mut hosts = Vec::new();
        for i in 1..=opts.controllers {
            hosts.push(new_host(id, &net, dir, Role::Controller, i));
        }
        for i in 1..=opts.agents {
            hosts.push(new_host(id, &net, dir, Role::Agent, i));
        }
        if hosts
            .iter()
            .any(|h| sys::netns_exists(&h.ns) || sys::link_exists(&h.veth))
        {
            continue;
        }
        // Creating the bridge is the claim: a concurrent `lab up` fails here.
        if sys::ip(&["link", "add", &bridge, "type", "bridge"]).is_err() {
            continue;
        }
        return Ok(Lab {
            id,
            dir: dir.to_path_buf(),
            bridge,
            forward_rule: false,
            net,
            runtime: opts.runtime.clone(),
            hosts,
            partitions: Vec::new(),
            config: None,
        });
    }
    bail!("no free lab network: 10.213.1.0/24 to 10.213.250.0/24 are all in use (remove old labs with droverctl lab down)")
}

fn new_host(id: u32, net: &str, dir: &Path, role: Role, i: u32) -> Host {
    let (name, last) = match role {
        Role::Controller => (format!("c{i}"), 10 + i),
        Role::Agent => (format!("n{i}"), 100 + i),
    };
    Host {
        ns: format!("drv{id}-{name}"),
        veth: format!("drv{id}-{name}"),
        ip: format!("{net}.{last}"),
        log: dir.join(format!("{name}.log")),
        name,
        role,
        pid: None,
        argv: Vec::new(),
        env: Vec::new(),
        engine: None,
    }
}

async fn build(
    lab: &mut Lab,
    opts: &UpOptions,
    busybox: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let gateway = format!("{}.1", lab.net);
    sys::ip(&["addr", "add", &format!("{gateway}/24"), "dev", &lab.bridge])?;
    sys::ip(&["link", "set", &lab.bridge, "up"])?;
    // Docker sets the FORWARD policy to DROP and makes bridged traffic pass
    // iptables: let the lab's hosts talk.
    if sys::run(
        "iptables",
        &[
            "-I",
            "FORWARD",
            "-i",
            &lab.bridge,
            "-o",
            &lab.bridge,
            "-j",
            "ACCEPT",
        ],
    )
    .is_ok()
    {
        lab.forward_rule = true;
    }
    lab.save()?;
    for h in lab.hosts.clone() {
        let peer = format!("{}p", h.veth);
        sys::ip(&["netns", "add", &h.ns])?;
        sys::ip(&[
            "link", "add", &h.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        sys::ip(&["link", "set", &peer, "netns", &h.ns])?;
        sys::ip(&["-n", &h.ns, "link", "set", &peer, "name", "eth0"])?;
        sys::ip(&[
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{}/24", h.ip),
            "dev",
            "eth0",
        ])?;
        sys::ip(&["-n", &h.ns, "link", "set", "eth0", "up"])?;
        sys::ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
        sys::ip(&["-n", &h.ns, "route", "add", "default", "via", &gateway])?;
        sys::ip(&["link", "set", &h.veth, "master", &lab.bridge, "up"])?;
    }
    progress(&format!(
        "created {} hosts on bridge {} ({}.0/24)",
        lab.hosts.len(),
        lab.bridge,
        lab.net
    ));
    // Engines start while the controllers elect a leader; the agents wait for them.
    let engines_started = Instant::now();
    let engine_hosts: Vec<String> = lab
        .agents()
        .filter(|h| h.engine.is_some())
        .map(|h| h.name.clone())
        .collect();
    for name in &engine_hosts {
        let host = lab.host_mut(name)?;
        let ns = host.ns.clone();
        let e = host.engine.as_mut().expect("filtered above");
        e.spawn_containerd(&ns)?;
    }
    lab.save()?;
    for name in &engine_hosts {
        let host = lab.host_mut(name)?;
        let ns = host.ns.clone();
        let e = host.engine.as_mut().expect("filtered above");
        e.wait_containerd(engine::START_LIMIT)?;
        e.spawn_dockerd(&ns)?;
    }
    lab.save()?;

    // PKI: a CA, one certificate per controller (for its address), the admin's.
    let controllers: Vec<(String, String)> = lab
        .controllers()
        .map(|h| (h.name.trim_start_matches('c').to_string(), h.ip.clone()))
        .collect();
    let validity = Duration::from_secs(365 * 24 * 3600);
    let ca = pki::ClusterPki::create(&lab.pki_dir(), validity)?;
    for (name, ip) in &controllers {
        ca.issue_controller(name, ip, validity)?;
    }
    let peers = lab
        .controllers()
        .map(|h| format!("{}={}", h.name.trim_start_matches('c'), h.address()))
        .collect::<Vec<_>>()
        .join(",");
    let names: Vec<String> = lab.controllers().map(|h| h.name.clone()).collect();
    let pki = lab.pki_dir();
    for name in &names {
        let id = name.trim_start_matches('c').to_string();
        let host = lab.host_mut(name)?;
        let data = lab_dir_of(&host.log, name);
        let mut argv = vec![
            opts.controller_bin.display().to_string(),
            "--id".into(),
            id.clone(),
            "--listen".into(),
            host.address(),
            "--metrics-listen".into(),
            host.metrics_address(),
            "--data-dir".into(),
            data.display().to_string(),
            "--peers".into(),
            peers.clone(),
            "--tls-dir".into(),
            pki::controller_dir(&pki, &id).path.display().to_string(),
        ];
        argv.extend(opts.controller_args.iter().cloned());
        host.argv = argv;
        host.env = vec![(
            "DROVER_LOG".into(),
            "info,raft=info,sled=warn,h2=warn".into(),
        )];
        lab.start(name)?;
    }
    progress(&format!(
        "started {} controllers with mutual TLS: {}",
        names.len(),
        lab.servers().join(", ")
    ));
    wait_for_leader(lab, Duration::from_secs(60)).await?;

    if !engine_hosts.is_empty() {
        let cached = engine::cache_image(WORKLOAD_IMAGE)?;
        let engines: Vec<engine::Engine> = engine_hosts
            .iter()
            .filter_map(|n| lab.host(n).ok().and_then(|h| h.engine.clone()))
            .collect();
        let loaded_at = Instant::now();
        std::thread::scope(|s| {
            let runs: Vec<_> = engines
                .iter()
                .map(|e| {
                    s.spawn(|| {
                        e.wait_dockerd(engine::START_LIMIT)?;
                        e.load_image(WORKLOAD_IMAGE, &cached)
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    r.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("an engine's start panicked")))
                })
                .collect::<anyhow::Result<Vec<bool>>>()
        })?;
        progress(&format!(
            "started {} Docker engines ({:.1}s after their start; {WORKLOAD_IMAGE} {} and loaded into each in {:.1}s)",
            engines.len(),
            engines_started.elapsed().as_secs_f64(),
            if cached.saved { "saved from this machine's engine" } else { "taken from the cache" },
            loaded_at.elapsed().as_secs_f64(),
        ));
    }

    // Agents join with a token, as on real hosts.
    if lab.agents().next().is_some() {
        let token = cluster::create_token(&lab.servers(), &lab.security()?, "agent").await?;
        let ca = lab.pki_dir().join("ca.crt");
        let servers = lab.servers().join(",");
        let toolbox = match busybox {
            Some(busybox) => Some(toolbox(&lab.dir, busybox)?),
            None => None,
        };
        let names: Vec<String> = lab.agents().map(|h| h.name.clone()).collect();
        for name in &names {
            let runtime = lab.runtime.clone();
            let runtime_is_docker = runtime == "docker";
            let host = lab.host_mut(name)?;
            let data = lab_dir_of(&host.log, name);
            let mut argv = vec![
                opts.agent_bin.display().to_string(),
                "--name".into(),
                name.clone(),
                "--controllers".into(),
                servers.clone(),
                "--runtime".into(),
                runtime,
                "--listen".into(),
                host.address(),
                "--metrics-listen".into(),
                host.metrics_address(),
                "--data-dir".into(),
                data.display().to_string(),
                "--ca".into(),
                ca.display().to_string(),
                // Each lab host is its own network namespace: its agent owns
                // the Service rules there (docs/services.md).
                "--service-proxy".into(),
                "nftables".into(),
            ];
            // A Docker host's containers resolve Service names through
            // their agent, listening on the engine's docker0 gateway.
            if runtime_is_docker {
                argv.extend(["--service-dns".into(), "172.17.0.1".into()]);
            }
            argv.extend(opts.agent_args.iter().cloned());
            host.argv = argv;
            let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
            // The token goes in the environment, not argv: `ps` shows argv
            // to every user of the machine.
            host.env = vec![
                ("DROVER_LOG".into(), "info,h2=warn".into()),
                ("DROVER_JOIN_TOKEN".into(), token.clone()),
                match &toolbox {
                    Some(dir) => ("PATH".into(), format!("{path}:{}", dir.display())),
                    None => ("PATH".into(), path),
                },
            ];
            if let Some(e) = &host.engine {
                host.env.push(("DOCKER_HOST".into(), e.docker_host()));
            }
            lab.start(name)?;
        }
        progress(&format!(
            "started {} agents ({} runtime{}), joining with a token",
            names.len(),
            lab.runtime,
            if engine_hosts.is_empty() {
                ""
            } else {
                ", each on its host's engine"
            }
        ));
        wait_for_nodes(lab, names.len(), Duration::from_secs(60)).await?;
    }

    Ok(())
}

/// `<lab dir>/<host>`: the host's data dir.
fn lab_dir_of(log: &Path, name: &str) -> PathBuf {
    log.parent().unwrap_or(Path::new(".")).join(name)
}

/// The examples' workload image, built locally on first use.
pub const WORKLOAD_IMAGE: &str = "drover/busybox:1";

/// The Debian package that provides a static busybox (what
/// `deploy/images/build.sh` installs too).
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Environment variable: directories (PATH syntax) where `lab up` looks for
/// busybox instead of PATH.
pub const BUSYBOX_PATH_ENV: &str = "DROVER_LAB_BUSYBOX_PATH";

/// The applets the examples run, linked into `<lab dir>/bin`.
const APPLETS: [&str; 3] = ["httpd", "nc", "wget"];

/// With Docker, the workload image, built on first use by
/// `deploy/images/build.sh` (no registry needed; the script installs
/// busybox-static itself when the host lacks it).
fn ensure_image(progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    if !sys::docker_available() {
        bail!("--runtime docker needs a running Docker engine (docker info failed); use --runtime process");
    }
    if sys::run("docker", &["image", "inspect", WORKLOAD_IMAGE]).is_ok() {
        return Ok(());
    }
    let Some(script) = build_script() else {
        bail!(
            "the image {WORKLOAD_IMAGE} is missing and deploy/images/build.sh is not here to build it: run lab up from drover's source tree"
        );
    };
    progress(&format!(
        "building the workload image {WORKLOAD_IMAGE} ({}), once",
        script.display()
    ));
    let script = script.display().to_string();
    sys::run(&script, &[]).map(|_| ())
}

/// `busybox` in the first of `dirs` (PATH syntax) that has it.
pub fn find_busybox(dirs: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(dirs)
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
}

/// With the process runtime, the busybox whose applets the examples run
/// (httpd, nc, wget): found in `lookup` (default: PATH), else installed with
/// apt-get (`busybox-static`, as `deploy/images/build.sh` does). An explicit
/// `lookup` is where busybox must be: nothing is installed then.
fn ensure_busybox(
    lookup: Option<&std::ffi::OsStr>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<PathBuf> {
    let default_path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let dirs = lookup.unwrap_or(&default_path);
    if let Some(found) = find_busybox(dirs) {
        return Ok(found);
    }
    if let Some(lookup) = lookup {
        bail!(
            "lab up needs busybox for the examples' httpd, nc and wget and there is none in {} (--busybox-path, {BUSYBOX_PATH_ENV}): install the {BUSYBOX_PACKAGE} package (apt-get install {BUSYBOX_PACKAGE}) or point --busybox-path at a directory holding busybox",
            lookup.to_string_lossy()
        );
    }
    if sys::run("apt-get", &["--version"]).is_err() {
        bail!(
            "lab up needs busybox for the examples' httpd, nc and wget and this machine has neither busybox nor apt-get: install the {BUSYBOX_PACKAGE} package (or any busybox on PATH) and run lab up again"
        );
    }
    progress(&format!(
        "busybox is missing (the examples run its httpd, nc and wget): installing {BUSYBOX_PACKAGE} with apt-get, once"
    ));
    sys::apt_install(BUSYBOX_PACKAGE).with_context(|| {
        format!("lab up needs busybox and could not install it: install the {BUSYBOX_PACKAGE} package by hand and run lab up again")
    })?;
    let installed =
        std::ffi::OsString::from(format!("{}:/usr/bin:/bin", default_path.to_string_lossy()));
    find_busybox(&installed).ok_or_else(|| {
        anyhow::anyhow!(
            "apt-get installed {BUSYBOX_PACKAGE} but no busybox appeared on PATH: install a busybox by hand and run lab up again"
        )
    })
}

/// `deploy/images/build.sh` of this source tree: under the current directory,
/// or two levels above droverctl (`target/release/droverctl`).
fn build_script() -> Option<PathBuf> {
    let relative = Path::new("deploy/images/build.sh");
    let mut candidates = vec![relative.to_path_buf()];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join(relative));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// For the process runtime: the busybox applets the examples call, as links
/// in `<lab dir>/bin`, appended to the agents' PATH.
fn toolbox(dir: &Path, busybox: &Path) -> anyhow::Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for applet in APPLETS {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink(busybox, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(bin)
}

/// Wait until the lab's controllers agree on an elected leader; its id.
pub async fn wait_for_leader(lab: &Lab, limit: Duration) -> anyhow::Result<u64> {
    cluster::wait_for_leader(&lab.servers(), &lab.security()?, limit)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; see the logs in {}", lab.dir.display()))
}

/// Wait until `n` agents are Ready.
pub async fn wait_for_nodes(lab: &Lab, n: usize, limit: Duration) -> anyhow::Result<()> {
    cluster::wait_for_nodes(&lab.servers(), &lab.security()?, n, limit)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; see the n*.log files in {}", lab.dir.display()))
}

/// Remove everything the lab in `dir` made: processes, engines (their
/// containers, mounts, cgroups and run dirs), namespaces (and so their veth
/// ends, bridges and iptables rules), veths, the bridge, its FORWARD rule
/// and the directory (droverctl removes the context it wrote). Works from
/// the state file alone; every step is tried even when an earlier one
/// fails. Returns what it removed.
pub fn down(dir: &Path) -> anyhow::Result<Vec<String>> {
    let lab = Lab::load(dir)?;
    let what = Leftovers {
        hosts: lab
            .hosts
            .iter()
            .map(|h| (h.name.clone(), h.ns.clone(), h.veth.clone()))
            .collect(),
        engines: lab
            .hosts
            .iter()
            .filter_map(|h| h.engine.as_ref())
            .map(|e| (e.name.clone(), Some(e.host_dir.clone())))
            .collect(),
        shared_engine_nodes: if lab.runtime == "docker" {
            // Labs made before every host had its own engine.
            lab.agents()
                .filter(|h| h.engine.is_none())
                .map(|h| h.name.clone())
                .collect()
        } else {
            Vec::new()
        },
        bridge: lab.bridge.clone(),
        forward_rule: lab.forward_rule,
    };
    let mut done = what.remove()?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    done.push(format!("removed {}", dir.display()));
    Ok(done)
}

/// Remove lab `id` when its state file is lost: every namespace, veth,
/// engine (processes, containers, mounts, cgroups, run dir) named
/// `drv<ID>-…`, the bridge `drv<ID>` and its FORWARD rule. The lab's
/// directory, wherever it was, is left for `rm -r`.
pub fn down_orphan(id: u32) -> anyhow::Result<Vec<String>> {
    let prefix = format!("drv{id}-");
    let list = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let namespaces = list("/run/netns");
    let veths: Vec<String> = list("/sys/class/net")
        .into_iter()
        .filter(|v| !v.ends_with('p'))
        .collect();
    let mut hosts: Vec<(String, String, String)> = namespaces
        .iter()
        .map(|ns| (ns[prefix.len()..].to_string(), ns.clone(), ns.clone()))
        .collect();
    for v in veths {
        if !hosts.iter().any(|(_, _, veth)| *veth == v) {
            hosts.push((v[prefix.len()..].to_string(), v.clone(), v));
        }
    }
    let bridge = format!("drv{id}");
    let engines: Vec<(String, Option<PathBuf>)> = engine::engines_of_lab(id)
        .into_iter()
        .map(|n| (n, None))
        .collect();
    if hosts.is_empty() && engines.is_empty() && !sys::link_exists(&bridge) {
        bail!("nothing of lab {id} is left on this machine (no namespace, veth or engine named {prefix}…, no bridge {bridge})");
    }
    Leftovers {
        hosts,
        engines,
        shared_engine_nodes: Vec::new(),
        bridge,
        forward_rule: true,
    }
    .remove()
}

/// What a lab made on this machine, to remove.
struct Leftovers {
    /// (host name, namespace, veth).
    hosts: Vec<(String, String, String)>,
    /// (engine name, its host dir if known).
    engines: Vec<(String, Option<PathBuf>)>,
    /// Node names whose containers are on this machine's engine.
    shared_engine_nodes: Vec<String>,
    bridge: String,
    forward_rule: bool,
}

impl Leftovers {
    fn remove(&self) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        let mut failures = Vec::new();
        for (name, _) in &self.engines {
            match engine::Cgroup::named(name).and_then(|c| c.kill_all(Duration::from_secs(10))) {
                Ok(0) => {}
                Ok(n) => done.push(format!(
                    "killed {n} process(es) of the engine, containers and agent of {name}"
                )),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        for (name, ns, _) in &self.hosts {
            let pids = sys::netns_pids(ns);
            sys::signal(Signal::SIGKILL, &pids);
            sys::signal(Signal::SIGCONT, &pids);
            if !pids.is_empty() {
                done.push(format!("killed {} process(es) on {name}", pids.len()));
            }
        }
        for node in &self.shared_engine_nodes {
            let ids = sys::docker_containers(node);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                match sys::run("docker", &args) {
                    Ok(_) => done.push(format!("removed {} container(s) of {node}", ids.len())),
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
        }
        // Processes must be gone before their namespace is deleted.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .hosts
            .iter()
            .any(|(_, ns, _)| !sys::netns_pids(ns).is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (name, host_dir) in &self.engines {
            match engine::remove_engine(name, host_dir.as_deref()) {
                Ok(()) => done.push(format!(
                    "removed the engine {name} (mounts, cgroups, /run/drover-lab/{name})"
                )),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        for (_, ns, veth) in &self.hosts {
            if sys::netns_exists(ns) {
                match sys::ip(&["netns", "del", ns]) {
                    Ok(_) => done.push(format!("deleted namespace {ns}")),
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
            // Deleting the namespace deletes the pair, asynchronously.
            if sys::link_exists(veth) {
                if let Err(e) = sys::ip(&["link", "del", veth]) {
                    if sys::link_exists(veth) {
                        failures.push(format!("{e:#}"));
                    }
                }
            }
            let peer = format!("{veth}p");
            if sys::link_exists(&peer) {
                let _ = sys::ip(&["link", "del", &peer]);
            }
        }
        if self.forward_rule {
            let _ = sys::run(
                "iptables",
                &[
                    "-D",
                    "FORWARD",
                    "-i",
                    &self.bridge,
                    "-o",
                    &self.bridge,
                    "-j",
                    "ACCEPT",
                ],
            );
        }
        if sys::link_exists(&self.bridge) {
            match sys::ip(&["link", "del", &self.bridge]) {
                Ok(_) => done.push(format!("deleted bridge {}", self.bridge)),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if !failures.is_empty() {
            bail!(
                "lab down left something behind (the state file is kept; run it again):\n{}",
                failures.join("\n")
            );
        }
        Ok(done)
    }
}
