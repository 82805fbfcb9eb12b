//! Controller processes and the clients that talk to them.
//!
//! Finding binaries, the PKI bootstrap, waiting for a leader and for Ready
//! nodes, connecting, and killing processes come from `drover-lab`, the
//! cluster launcher `droverctl lab` uses too; this file only adds what is
//! particular to tests (loopback addresses, child processes, droverctl run
//! as a user).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use drover_lab::pki::ClusterPki;
use drover_lab::sys::{self, Signal};
use drover_pki::{self as pki, Identity, Role, Security, TlsDir, TlsMaterial};
use drover_proto::pb;
use drover_proto::pb::control_client::ControlClient;
use tonic::transport::Channel;

pub use drover_lab::cluster::connect;
pub use drover_lab::sys::kill_processes_under;

/// Path of a drover binary built in the same cargo profile as the running
/// test (or in `DROVER_BIN_DIR`), as `droverctl lab` finds them.
pub fn bin(name: &str) -> PathBuf {
    drover_lab::built_binary(name).unwrap_or_else(|e| {
        panic!("{e:#} (or run cargo test --workspace, which builds every binary)")
    })
}

/// A free TCP port on `ip` (bound and released: another process could take it
/// in between, which a start-up failure would show plainly).
/// A port for a daemon the harness starts, from 20000–29999: below Linux's
/// ephemeral range (32768–60999 by default), so no `bind(:0)` and no
/// outgoing connection of a parallel test can take it between this check and
/// the daemon's own bind (the ports the kernel picked used to, now and then:
/// a controller that could not bind made a "no leader" test failure). Each
/// test process starts at an offset of its own and hands ports out in turn;
/// one found in use is skipped.
/// The controllers' log filter: `DROVER_TEST_LOG` when set (e.g.
/// `info,drover_controller::leader=debug` with `DROVER_KEEP_TEST_DIR=1`
/// for a post-mortem of a run), else info without raft's and sled's chatter.
fn controller_log_filter() -> String {
    std::env::var("DROVER_TEST_LOG").unwrap_or_else(|_| "info,raft=info,sled=warn,h2=warn".into())
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (base + n) % SPAN) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on {ip} between {LOW} and {}", LOW + SPAN - 1)
}

pub struct Controller {
    pub id: u64,
    pub address: String,
    /// Where its /metrics listener is (`--metrics-listen`).
    pub metrics: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Controller {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Extra flags every controller of a cluster starts with.
#[derive(Clone, Default)]
pub struct Options {
    pub extra_args: Vec<String>,
    /// Run every process with `--insecure` (plaintext, no PKI) instead of
    /// mutual TLS under a CA made for this cluster.
    pub insecure: bool,
}

/// This cluster's CA and the admin credentials clients use (made as
/// `droverctl pki init` and `lab up` make theirs): `dir`, `ca` and `admin`
/// are the [`ClusterPki`]'s.
pub struct Pki {
    cluster: ClusterPki,
}

impl std::ops::Deref for Pki {
    type Target = ClusterPki;

    fn deref(&self) -> &ClusterPki {
        &self.cluster
    }
}

impl Pki {
    fn create(dir: &Path) -> anyhow::Result<Pki> {
        Ok(Pki {
            cluster: ClusterPki::create_named(dir, "test", pki::DEFAULT_VALIDITY)?,
        })
    }

    /// Issue a certificate into `into` (with the CA key for controllers, which sign).
    pub fn issue(
        &self,
        into: &TlsDir,
        identity: Identity,
        hosts: Vec<String>,
    ) -> anyhow::Result<()> {
        self.cluster
            .issue(into, identity, hosts, pki::DEFAULT_VALIDITY)
    }

    /// A client identity of `role` named `name`, in its own tls dir under the PKI dir.
    pub fn client(&self, role: Role, name: &str) -> anyhow::Result<TlsDir> {
        let dir = TlsDir::new(self.dir.join(format!("{role}-{name}")));
        self.issue(&dir, Identity::new(role, name), vec![])?;
        Ok(dir)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub controllers: Vec<Controller>,
    pub agents: Vec<Agent>,
    /// None with [`Options::insecure`].
    pub pki: Option<Pki>,
    /// How the harness's own clients connect (the admin's certificate).
    pub security: Security,
    options: Options,
    peers: String,
}

/// A drover-agent process, on 127.0.1.<n>.
pub struct Agent {
    pub name: String,
    pub address: String,
    /// Where its /metrics listener is (`--metrics-listen`).
    pub metrics: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub runtime: String,
    child: Option<Child>,
}

impl Agent {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Cluster {
    /// Start `n` controllers on 127.0.0.1..n and wait until they elected a leader.
    pub async fn start(n: u64) -> anyhow::Result<Cluster> {
        Cluster::start_with(n, Options::default()).await
    }

    pub async fn start_with(n: u64, options: Options) -> anyhow::Result<Cluster> {
        let mut dir = tempfile::Builder::new().prefix("drover-test-").tempdir()?;
        // DROVER_KEEP_TEST_DIR=1 keeps data dirs and logs for a post-mortem.
        if std::env::var_os("DROVER_KEEP_TEST_DIR").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping test dir {}", dir.path().display());
        }
        let mut controllers = Vec::new();
        for id in 1..=n {
            let ip = format!("127.0.0.{id}");
            let port = free_port(&ip)?;
            controllers.push(Controller {
                id,
                address: format!("{ip}:{port}"),
                metrics: format!("{ip}:{}", free_port(&ip)?),
                data_dir: dir.path().join(format!("controller-{id}")),
                log: dir.path().join(format!("controller-{id}.log")),
                child: None,
            });
        }
        let peers = controllers
            .iter()
            .map(|c| format!("{}={}", c.id, c.address))
            .collect::<Vec<_>>()
            .join(",");
        let pki = if options.insecure {
            None
        } else {
            Some(Pki::create(&dir.path().join("pki"))?)
        };
        let security = match &pki {
            Some(p) => Security::tls(TlsMaterial::read_dir(&p.admin)?),
            None => Security::Insecure,
        };
        let mut cluster = Cluster {
            dir,
            controllers,
            agents: Vec::new(),
            pki,
            security,
            options,
            peers,
        };
        for i in 0..cluster.controllers.len() {
            cluster.spawn(i, &[])?;
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize, extra: &[String]) -> anyhow::Result<()> {
        let tls = match &self.pki {
            Some(pki) => {
                let c = &self.controllers[i];
                let dir = TlsDir::new(self.dir.path().join(format!("tls-controller-{}", c.id)));
                // A controller given a --join-token gets its certificate itself.
                let joins = extra.iter().any(|a| a.starts_with("--join-token"));
                if !joins && !dir.has_identity() {
                    let host = c.address.rsplit_once(':').map_or("", |(h, _)| h);
                    pki.issue(
                        &dir,
                        Identity::new(Role::Controller, c.id.to_string()),
                        vec![host.to_string()],
                    )?;
                }
                vec!["--tls-dir".to_string(), dir.path.display().to_string()]
            }
            None => vec!["--insecure".to_string()],
        };
        let c = &mut self.controllers[i];
        let log = File::options().create(true).append(true).open(&c.log)?;
        let mut cmd = Command::new(bin("drover-controller"));
        cmd.arg("--id")
            .arg(c.id.to_string())
            .arg("--listen")
            .arg(&c.address)
            .arg("--data-dir")
            .arg(&c.data_dir)
            .args(&tls)
            .args(&self.options.extra_args)
            .args(extra)
            .env("DROVER_LOG", controller_log_filter())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !extra.iter().any(|a| a == "--join") {
            cmd.arg("--peers").arg(&self.peers);
        }
        // Options may turn metrics off (`--metrics-listen=`); given twice,
        // the flag is refused.
        let own_metrics = self
            .options
            .extra_args
            .iter()
            .any(|a| a.starts_with("--metrics-listen"));
        if !own_metrics {
            cmd.arg("--metrics-listen").arg(&c.metrics);
        }
        c.child = Some(cmd.spawn().context("starting drover-controller")?);
        Ok(())
    }

    /// Start a brand-new controller that joins the cluster (after `cluster add`).
    pub fn spawn_joiner(&mut self, id: u64) -> anyhow::Result<usize> {
        self.spawn_joiner_with(id, &[])
    }

    /// [`Cluster::spawn_joiner`] with extra flags (e.g. `--join-token=...`).
    pub fn spawn_joiner_with(&mut self, id: u64, extra: &[String]) -> anyhow::Result<usize> {
        let ip = format!("127.0.0.{id}");
        let port = free_port(&ip)?;
        self.controllers.push(Controller {
            id,
            address: format!("{ip}:{port}"),
            metrics: format!("{ip}:{}", free_port(&ip)?),
            data_dir: self.dir.path().join(format!("controller-{id}")),
            log: self.dir.path().join(format!("controller-{id}.log")),
            child: None,
        });
        let i = self.controllers.len() - 1;
        let mut flags = vec!["--join".to_string()];
        flags.extend(extra.iter().cloned());
        self.spawn(i, &flags)?;
        Ok(i)
    }

    /// The address a joiner would get, before it starts: reserve it.
    pub fn addresses(&self) -> Vec<String> {
        self.controllers.iter().map(|c| c.address.clone()).collect()
    }

    /// `--server` value naming every controller.
    pub fn servers(&self) -> String {
        self.addresses().join(",")
    }

    /// SIGKILL controller `i`: no shutdown, no flush.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.controllers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM controller `i` and wait for it to exit.
    pub fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.controllers[i].child.take() {
            sys::signal(Signal::SIGTERM, &[child.id()]);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "controller {} ignored SIGTERM for 10s",
                        self.controllers[i].id
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Start controller `i` again from its data dir.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let joined = self.controllers[i].id > self.peers.split(',').count() as u64;
        let extra = if joined {
            vec!["--join".to_string()]
        } else {
            vec![]
        };
        self.spawn(i, &extra)
    }

    pub async fn client(&self, i: usize) -> anyhow::Result<ControlClient<Channel>> {
        connect(&self.controllers[i].address, &self.security).await
    }

    /// Status as controller `i` sees itself (through `cluster status`).
    pub async fn member_status(&self, i: usize) -> anyhow::Result<pb::MemberStatus> {
        let c = &self.controllers[i];
        let s = drover_lab::cluster::member_status(&c.address, &self.security).await?;
        if s.id != c.id {
            bail!("controller {} answered as member {}", c.id, s.id);
        }
        Ok(s)
    }

    /// Addresses of the controllers running now.
    fn running_addresses(&self) -> Vec<String> {
        self.controllers
            .iter()
            .filter(|c| c.is_running())
            .map(|c| c.address.clone())
            .collect()
    }

    /// Wait until one running controller is leader and the others agree; returns its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let id = drover_lab::cluster::wait_for_leader(
            &self.running_addresses(),
            &self.security,
            timeout,
        )
        .await?;
        self.controllers
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| {
                anyhow!("the leader is member {id}, not one of this cluster's controllers")
            })
    }

    /// Wait until every running controller applied the same index with the same state hash.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<(u64, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for (i, c) in self.controllers.iter().enumerate() {
                if c.is_running() {
                    seen.push(
                        self.member_status(i)
                            .await
                            .map(|s| (s.applied_index, s.state_hash))
                            .ok(),
                    );
                }
            }
            if let Some(Some(first)) = seen.first() {
                if seen.iter().all(|s| s.as_ref() == Some(first)) {
                    return Ok(first.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("controllers did not converge within {timeout:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Credentials for an in-process agent named `node`: a node certificate
    /// issued into `dir` (or plaintext in an insecure cluster).
    pub fn agent_security(&self, node: &str, dir: &Path) -> anyhow::Result<Security> {
        let Some(pki) = &self.pki else {
            return Ok(Security::Insecure);
        };
        let dir = TlsDir::new(dir);
        pki.issue(&dir, Identity::new(Role::Agent, node), vec![])?;
        Ok(Security::tls(TlsMaterial::read_dir(&dir)?))
    }

    /// The droverctl flags for the admin's credentials (or `--insecure`).
    pub fn ctl_credentials(&self) -> Vec<String> {
        match &self.pki {
            Some(p) => Ctl::tls_args(&p.admin),
            None => vec!["--insecure".to_string()],
        }
    }

    /// droverctl against every controller of this cluster.
    pub fn ctl(&self) -> Ctl {
        Ctl {
            server: self.servers(),
            home: self.dir.path().to_path_buf(),
            credentials: self.ctl_credentials(),
        }
    }

    /// droverctl against one controller only.
    pub fn ctl_at(&self, i: usize) -> Ctl {
        Ctl {
            server: self.controllers[i].address.clone(),
            home: self.dir.path().to_path_buf(),
            credentials: self.ctl_credentials(),
        }
    }

    /// Start an agent named `name` with `runtime` (`process`, `docker`, `sim`)
    /// and the given extra flags; returns its index.
    pub fn start_agent(
        &mut self,
        name: &str,
        runtime: &str,
        extra: &[&str],
    ) -> anyhow::Result<usize> {
        let n = self.agents.len() + 1;
        let ip = format!("127.0.1.{n}");
        let port = free_port(&ip)?;
        self.agents.push(Agent {
            name: name.to_string(),
            address: format!("{ip}:{port}"),
            metrics: format!("{ip}:{}", free_port(&ip)?),
            data_dir: self.dir.path().join(format!("agent-{name}")),
            log: self.dir.path().join(format!("agent-{name}.log")),
            runtime: runtime.to_string(),
            child: None,
        });
        let i = self.agents.len() - 1;
        self.spawn_agent(i, extra)?;
        Ok(i)
    }

    fn spawn_agent(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let servers = self.servers();
        let mut tls: Vec<String> = Vec::new();
        match &self.pki {
            // An agent given a --join-token (or its own --tls-dir) gets its
            // certificate itself; the others get one issued here, as an
            // operator would with `droverctl pki client --role agent`.
            Some(pki) => {
                let a = &self.agents[i];
                let dir = TlsDir::new(a.data_dir.join("tls"));
                let own = extra
                    .iter()
                    .any(|x| x.starts_with("--join-token") || x.starts_with("--tls-dir"));
                if !own && !dir.has_identity() {
                    let host = a.address.rsplit_once(':').map_or("", |(h, _)| h);
                    pki.issue(
                        &dir,
                        Identity::new(Role::Agent, a.name.clone()),
                        vec![host.to_string()],
                    )?;
                }
            }
            None => tls.push("--insecure".to_string()),
        }
        let a = &mut self.agents[i];
        let log = File::options().create(true).append(true).open(&a.log)?;
        let child = Command::new(bin("drover-agent"))
            .arg("--name")
            .arg(&a.name)
            .arg("--controllers")
            .arg(&servers)
            .arg("--runtime")
            .arg(&a.runtime)
            .arg("--data-dir")
            .arg(&a.data_dir)
            .arg("--listen")
            .arg(&a.address)
            .arg("--metrics-listen")
            .arg(&a.metrics)
            .args(&tls)
            .args(extra)
            .env("DROVER_LOG", "info,h2=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting drover-agent")?;
        a.child = Some(child);
        Ok(())
    }

    /// SIGKILL agent `i` (its replicas keep running, as on a real host whose
    /// agent crashed).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A host failure: SIGKILL agent `i` and everything it ran: every replica
    /// process it started (process runtime) or every running container
    /// labelled with its node (Docker). Returns how many were killed.
    pub fn kill_agent_host(&mut self, i: usize) -> usize {
        self.kill_agent(i);
        let a = &self.agents[i];
        if a.runtime == "docker" {
            let running = containers_of(&a.name, false);
            if !running.is_empty() {
                let _ = Command::new("docker").arg("kill").args(&running).output();
            }
            running.len()
        } else {
            kill_processes_under(&a.data_dir)
        }
    }

    pub fn restart_agent(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        self.kill_agent(i);
        self.spawn_agent(i, extra)
    }

    /// A deployment's replicas in `default`, once exactly `want` exist and all
    /// are Running (asked of the first running controller); `Err` says what is
    /// still missing, for [`Cluster::wait_for`].
    pub async fn running_replicas(
        &self,
        deployment: &str,
        want: usize,
    ) -> Result<Vec<pb::Replica>, String> {
        let up = (0..self.controllers.len())
            .find(|i| self.controllers[*i].is_running())
            .ok_or("no controller running")?;
        let mut client = self.client(up).await.map_err(|e| e.to_string())?;
        let replicas = list_replicas(&mut client, deployment, false).await?;
        for r in &replicas {
            let s = r.status.clone().unwrap_or_default();
            if s.state() != pb::ReplicaState::Running {
                return Err(format!(
                    "{} is {:?} on {:?} ({} {} {})",
                    r.name,
                    s.state(),
                    r.node,
                    r.pending_reason,
                    s.reason,
                    s.message
                ));
            }
        }
        if replicas.len() == want {
            Ok(replicas)
        } else {
            Err(format!("{} of {want} replicas", replicas.len()))
        }
    }

    /// [`Cluster::running_replicas`] as replica name → (node, container id).
    pub async fn running_placements(
        &self,
        deployment: &str,
        want: usize,
    ) -> Result<std::collections::BTreeMap<String, (String, String)>, String> {
        let replicas = self.running_replicas(deployment, want).await?;
        Ok(replicas
            .into_iter()
            .map(|r| {
                let id = r.status.map(|s| s.container_id).unwrap_or_default();
                (r.name, (r.node, id))
            })
            .collect())
    }

    /// Node name → replicas of `deployment` Running there, once exactly
    /// `want` run in total ([`Cluster::running_replicas`]).
    pub async fn placement(
        &self,
        deployment: &str,
        want: usize,
    ) -> Result<std::collections::BTreeMap<String, usize>, String> {
        let mut per_node = std::collections::BTreeMap::new();
        for r in self.running_replicas(deployment, want).await? {
            *per_node.entry(r.node).or_default() += 1;
        }
        Ok(per_node)
    }

    /// Wait until `n` nodes are Ready: replicas applied before every agent
    /// registered all land on the first ones.
    pub async fn wait_nodes_ready(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        drover_lab::cluster::wait_for_nodes(&self.running_addresses(), &self.security, n, timeout)
            .await
    }

    /// `controllers` controllers and one agent per name (4 CPUs, 4 GiB each)
    /// with `runtime`, every node Ready.
    pub async fn with_agents<S: AsRef<str>>(
        controllers: u64,
        runtime: &str,
        names: &[S],
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster::start(controllers).await?;
        for name in names {
            c.start_agent(name.as_ref(), runtime, &["--cpu", "4", "--memory", "4Gi"])?;
        }
        c.wait_nodes_ready(names.len(), Duration::from_secs(60))
            .await?;
        Ok(c)
    }

    /// Poll `check` every 50 ms until it returns `Some`, or fail after `timeout`
    /// with the last value it saw.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            match check().await {
                Ok(v) => return Ok(v),
                Err(last) if Instant::now() > deadline => {
                    bail!("{what}: not reached within {timeout:?}; last: {last}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn dump_logs(&self) {
        for a in &self.agents {
            let mut text = String::new();
            if let Ok(mut f) = File::open(&a.log) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = f.seek(SeekFrom::Start(len.saturating_sub(6000)));
                let _ = f.read_to_string(&mut text);
            }
            let _ = writeln!(
                std::io::stderr(),
                "----- agent {} log (tail) -----\n{text}",
                a.name
            );
        }
        for c in &self.controllers {
            let mut text = String::new();
            if let Ok(mut f) = File::open(&c.log) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = f.seek(SeekFrom::Start(len.saturating_sub(6000)));
                let _ = f.read_to_string(&mut text);
            }
            let _ = writeln!(
                std::io::stderr(),
                "----- controller {} log (tail) -----\n{text}",
                c.id
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
        for i in 0..self.controllers.len() {
            self.kill(i);
        }
        // Process-runtime replicas outlive their agent by design; whatever
        // still runs inside this cluster's dir belongs to this test.
        kill_processes_under(self.dir.path());
    }
}

/// How many processes have their working directory inside `dir`.
pub fn processes_under(dir: &Path) -> usize {
    sys::pids_under(dir).len()
}

/// Runs `droverctl` as a user would, with its own empty config home.
pub struct Ctl {
    pub server: String,
    home: PathBuf,
    /// `--ca/--cert/--key` of the admin, or `--insecure`.
    pub credentials: Vec<String>,
}

impl Ctl {
    /// The flags that make droverctl use the certificate in `dir`.
    pub fn tls_args(dir: &TlsDir) -> Vec<String> {
        vec![
            "--ca".into(),
            dir.ca_cert().display().to_string(),
            "--cert".into(),
            dir.cert().display().to_string(),
            "--key".into(),
            dir.key().display().to_string(),
        ]
    }

    /// The same droverctl, as the holder of another certificate.
    pub fn as_identity(&self, dir: &TlsDir) -> Ctl {
        Ctl {
            server: self.server.clone(),
            home: self.home.clone(),
            credentials: Ctl::tls_args(dir),
        }
    }

    /// The same droverctl with these credential flags instead (none, wrong CA...).
    pub fn with_credentials(&self, credentials: Vec<String>) -> Ctl {
        Ctl {
            server: self.server.clone(),
            home: self.home.clone(),
            credentials,
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    /// The droverctl command line for `args`, as a user would type it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("droverctl"));
        cmd.arg("--server")
            .arg(&self.server)
            .args(&self.credentials)
            .args(args)
            .env("HOME", &self.home)
            .env("DROVERCONFIG", self.home.join("droverctl-config.yaml"))
            .env_remove("DROVER_SERVER");
        cmd
    }

    /// Start a long-running droverctl (`get events -w`, `logs -f`) whose
    /// output is collected as it comes; it is killed when dropped.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("droverctl starts");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                let mut lines = std::io::BufReader::new(stream);
                let mut line = String::new();
                while matches!(std::io::BufRead::read_line(&mut lines, &mut line), Ok(n) if n > 0) {
                    output
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&line);
                    line.clear();
                }
            }));
        }
        Running { child, output }
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("droverctl starts");
        if let (Some(data), Some(mut input)) = (stdin, child.stdin.take()) {
            let _ = input.write_all(data);
        }
        child.wait_with_output().expect("droverctl runs")
    }
}

/// Ids of the Docker containers labelled with `node` (`all`: stopped ones too).
pub fn containers_of(node: &str, all: bool) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.arg("ps").arg("-q");
    if all {
        cmd.arg("-a");
    }
    let out = cmd
        .arg("--filter")
        .arg(format!("label=drover.node={node}"))
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// A droverctl still running, and what it printed so far (stdout and stderr).
pub struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Running {
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Its process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it exited already, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stdout of a successful droverctl run; panics with its stderr otherwise.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "droverctl failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of a failed droverctl run; panics if it succeeded.
pub fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "droverctl should have failed:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A Deployment manifest with one busybox container.
pub fn manifest(name: &str, replicas: u32) -> String {
    manifest_noted(name, replicas, "")
}

/// The same manifest with an annotation that differs per `note`: each new
/// note is a real change to store, without touching the replica count.
pub fn manifest_noted(name: &str, replicas: u32, note: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations:
    drover.io/note: "{note}"
  labels:
    app: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "while true; do echo hi; sleep 1; done"]
        resources:
          requests:
            cpu: 100m
            memory: 16Mi
"#
    )
}

/// Apply one manifest through the gRPC API, as droverctl would.
pub async fn apply(
    client: &mut ControlClient<Channel>,
    name: &str,
    replicas: u32,
) -> Result<pb::ApplyResponse, tonic::Status> {
    apply_noted(client, name, replicas, "").await
}

/// Apply [`manifest_noted`].
pub async fn apply_noted(
    client: &mut ControlClient<Channel>,
    name: &str,
    replicas: u32,
    note: &str,
) -> Result<pb::ApplyResponse, tonic::Status> {
    client
        .apply(pb::ApplyRequest {
            files: vec![pb::ManifestFile {
                name: format!("{name}.yaml"),
                content: manifest_noted(name, replicas, note),
            }],
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Replicas of one deployment in `default` (or of all, for `""`), stale or
/// linearizable, read 5,000 a page (100,000 do not fit one message).
pub async fn list_replicas(
    client: &mut ControlClient<Channel>,
    deployment: &str,
    stale: bool,
) -> Result<Vec<pb::Replica>, String> {
    let mut replicas = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_replicas(pb::ListReplicasRequest {
                namespace: "default".into(),
                deployment: deployment.into(),
                read: Some(pb::ReadOptions { stale }),
                limit: 5_000,
                continue_token: token,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("listing replicas: {}", s.message()))?
            .into_inner();
        replicas.extend(page.replicas);
        if page.continue_token.is_empty() {
            return Ok(replicas);
        }
        token = page.continue_token;
    }
}

/// Deployment names as one controller sees them.
pub async fn names(
    client: &mut ControlClient<Channel>,
    stale: bool,
) -> anyhow::Result<Vec<String>> {
    let list = client
        .list_deployments(pb::ListDeploymentsRequest {
            namespace: String::new(),
            read: Some(pb::ReadOptions { stale }),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(list.deployments.into_iter().map(|d| d.name).collect())
}
