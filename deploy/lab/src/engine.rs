//! A Docker-runtime lab host's own Docker engine: containerd and dockerd
//! inside the host's network namespace, so its containers, bridge, port
//! bindings and iptables rules are the host's alone, as on a real machine.
//!
//! ```text
//!  netns drv<ID>-n1 (eth0 10.213.<ID>.101)      cgroup drv<ID>-n1 (freezer)
//!    containerd --config /run/drover-lab/drv<ID>-n1/containerd.toml   ─┐ host/
//!    dockerd -H unix:///run/drover-lab/drv<ID>-n1/docker.sock          │ (daemons,
//!            --containerd …/containerd.sock --cgroup-parent /drv<ID>-n1│  shims,
//!    drover-agent (DOCKER_HOST=unix://…/docker.sock)                  ─┘  agent)
//!      └─ containers: bridge docker0 in the netns, cgroups drv<ID>-n1/<id>
//!
//!  <lab dir>/n1/docker, <lab dir>/n1/containerd   data roots: a host's "disk",
//!                                                 kept across a kill
//!  /run/drover-lab/drv<ID>-n1/                    exec root, sockets, state:
//!                                                 its "/run", wiped at the next start
//! ```
//!
//! Every process of the host (agent, daemons, shims, containers) lives under
//! one cgroup, so `pause` is one write to the freezer and `kill` (a power
//! loss) freezes the tree, SIGKILLs every task in it and thaws it. Starting
//! an engine after a kill first does what a reboot does: unmounts what the
//! dead engine left mounted and empties its run dir.
//!
//! The engine's containerd is started by the lab (`--containerd`), never
//! found by dockerd at `/run/containerd/containerd.sock`: two engines never
//! share one. Images come from this machine's engine: `docker save` once per
//! image id into [`IMAGE_CACHE`], `docker load` into each host's engine.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::sys::{self, Signal};

/// Where engines keep what a real host keeps in /run.
pub const RUN_ROOT: &str = "/run/drover-lab";
/// `docker save` tarballs of this machine's images, one per image id.
pub const IMAGE_CACHE: &str = "/var/tmp/drover-lab/images";
/// How long an engine may take to answer after its start.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// One host's engine as the state file records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    /// `drv<ID>-<host>`: the name of its cgroup and of its run dir.
    pub name: String,
    /// The host's data dir: `docker/` and `containerd/` (its disk) live here.
    pub host_dir: PathBuf,
    /// overlay2, fuse-overlayfs or vfs (see [`storage_driver`]).
    pub storage_driver: String,
    pub containerd_pid: Option<u32>,
    pub dockerd_pid: Option<u32>,
    pub containerd_log: PathBuf,
    pub dockerd_log: PathBuf,
}

impl Engine {
    pub fn new(name: String, host_dir: PathBuf, logs: &Path, host: &str, driver: &str) -> Engine {
        Engine {
            containerd_log: logs.join(format!("{host}.containerd.log")),
            dockerd_log: logs.join(format!("{host}.dockerd.log")),
            name,
            host_dir,
            storage_driver: driver.to_string(),
            containerd_pid: None,
            dockerd_pid: None,
        }
    }

    /// `/run/drover-lab/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        Path::new(RUN_ROOT).join(&self.name)
    }

    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("docker.sock")
    }

    /// `unix://<socket>`: the agent's DOCKER_HOST, and `docker -H`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn containerd_socket(&self) -> PathBuf {
        self.run_dir().join("containerd.sock")
    }

    pub fn data_root(&self) -> PathBuf {
        self.host_dir.join("docker")
    }

    fn containerd_root(&self) -> PathBuf {
        self.host_dir.join("containerd")
    }

    pub fn cgroup(&self) -> anyhow::Result<Cgroup> {
        Cgroup::named(&self.name)
    }

    /// `docker -H unix://<socket> ARGS`.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let host = self.docker_host();
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        sys::run("docker", &all)
    }

    /// Whether dockerd answers `GET /_ping` on its socket.
    pub fn answers(&self) -> bool {
        ping(&self.socket())
    }

    /// Start containerd, then dockerd, in network namespace `ns`, inside the
    /// host's cgroup; returns once the engine answers. After a kill the
    /// leftovers of the dead engine (mounts, run dir) are removed first, as
    /// a reboot would.
    pub fn start(&mut self, ns: &str) -> anyhow::Result<()> {
        self.spawn_containerd(ns)?;
        self.wait_containerd(START_LIMIT)?;
        self.spawn_dockerd(ns)?;
        self.wait_dockerd(START_LIMIT)
    }

    /// "Reboot" cleanup and containerd's spawn: the first half of [`Engine::start`],
    /// for starting several engines side by side.
    pub fn spawn_containerd(&mut self, ns: &str) -> anyhow::Result<()> {
        self.reboot_cleanup()?;
        let run = self.run_dir();
        std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
        std::fs::create_dir_all(&self.host_dir)
            .with_context(|| format!("creating {}", self.host_dir.display()))?;
        // Orphan cleanup (`lab down --id`) finds the data roots from here.
        let link = run.join("host-dir");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&self.host_dir, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        let toml = run.join("containerd.toml");
        std::fs::write(
            &toml,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = {sock:?}\n\n[ttrpc]\n  address = {ttrpc:?}\n\n[debug]\n  address = \"\"\n",
                root = self.containerd_root().display().to_string(),
                state = run.join("containerd").display().to_string(),
                sock = self.containerd_socket().display().to_string(),
                ttrpc = format!("{}.ttrpc", self.containerd_socket().display()),
            ),
        )
        .with_context(|| format!("writing {}", toml.display()))?;
        // The machine's /etc/docker/daemon.json (data-root, ...) must not apply.
        std::fs::write(run.join("daemon.json"), "{}\n")
            .with_context(|| format!("writing {}", run.join("daemon.json").display()))?;
        let cgroup = self.cgroup()?;
        cgroup.create()?;
        let argv = vec!["containerd".to_string(), "--config".into(), path_str(&toml)];
        let pid = sys::spawn_in_cgroup(
            ns,
            &cgroup.daemons_procs(),
            &argv,
            &[],
            &self.containerd_log,
        )?;
        self.containerd_pid = Some(pid);
        Ok(())
    }

    /// Wait for containerd's socket.
    pub fn wait_containerd(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let sock = self.containerd_socket();
        loop {
            if UnixStream::connect(&sock).is_ok() {
                return Ok(());
            }
            if !self.containerd_pid.is_some_and(alive) {
                bail!(
                    "containerd of {} exited at its start: see {}",
                    self.name,
                    self.containerd_log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd of {} did not open {} within {}s: see {}",
                    self.name,
                    sock.display(),
                    limit.as_secs(),
                    self.containerd_log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Start dockerd (containerd must answer).
    pub fn spawn_dockerd(&mut self, ns: &str) -> anyhow::Result<()> {
        let run = self.run_dir();
        let argv: Vec<String> = [
            "dockerd",
            "--config-file",
            &path_str(&run.join("daemon.json")),
            "--data-root",
            &path_str(&self.data_root()),
            "--exec-root",
            &path_str(&run.join("exec")),
            "--pidfile",
            &path_str(&run.join("dockerd.pid")),
            "-H",
            &self.docker_host(),
            "--containerd",
            &path_str(&self.containerd_socket()),
            "--cgroup-parent",
            &format!("/{}", self.name),
            "--storage-driver",
            &self.storage_driver,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cgroup = self.cgroup()?;
        let pid = sys::spawn_in_cgroup(ns, &cgroup.daemons_procs(), &argv, &[], &self.dockerd_log)?;
        self.dockerd_pid = Some(pid);
        Ok(())
    }

    /// Wait until dockerd answers on its socket.
    pub fn wait_dockerd(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.answers() {
                return Ok(());
            }
            if !self.dockerd_pid.is_some_and(alive) {
                bail!(
                    "dockerd of {} exited at its start: see {}",
                    self.name,
                    self.dockerd_log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd of {} did not answer on {} within {}s: see {}",
                    self.name,
                    self.socket().display(),
                    limit.as_secs(),
                    self.dockerd_log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether both daemons run.
    pub fn running(&self) -> bool {
        self.containerd_pid.is_some_and(alive) && self.dockerd_pid.is_some_and(alive)
    }

    /// Make `image` (present in this machine's engine) present in this
    /// engine: `docker load` of its cached `docker save` tarball, unless the
    /// engine has that image id already.
    pub fn load_image(&self, image: &str, cached: &CachedImage) -> anyhow::Result<bool> {
        if let Ok(id) = self.docker(&["image", "inspect", "--format", "{{.Id}}", image]) {
            if id.trim() == cached.id {
                return Ok(false);
            }
        }
        self.docker(&["load", "-q", "-i", &path_str(&cached.tarball)])
            .with_context(|| format!("loading {image} into the engine of {}", self.name))?;
        Ok(true)
    }

    /// What a reboot does for a dead engine: unmount whatever it left
    /// mounted (overlays, network namespaces, its data root's bind mount)
    /// and empty its run dir. Refuses while a daemon of it still runs.
    fn reboot_cleanup(&mut self) -> anyhow::Result<()> {
        if self.containerd_pid.is_some_and(alive) || self.dockerd_pid.is_some_and(alive) {
            bail!(
                "the engine of {} still runs (containerd {:?}, dockerd {:?}): kill the host first",
                self.name,
                self.containerd_pid,
                self.dockerd_pid
            );
        }
        unmount_under(&[self.run_dir(), self.host_dir.clone()])?;
        let run = self.run_dir();
        if run.exists() {
            std::fs::remove_dir_all(&run).with_context(|| format!("emptying {}", run.display()))?;
        }
        self.containerd_pid = None;
        self.dockerd_pid = None;
        Ok(())
    }

    /// Everything the engine made outside the lab dir, after its processes
    /// are gone: mounts (also those in the lab dir), cgroups, the run dir.
    pub fn remove(&self) -> anyhow::Result<()> {
        remove_engine(&self.name, Some(&self.host_dir))
    }
}

/// Unmount, remove cgroups and run dir of engine `name` (processes must be
/// dead). `host_dir`: its data dir, if known (else read from the run dir's
/// `host-dir` link).
pub fn remove_engine(name: &str, host_dir: Option<&Path>) -> anyhow::Result<()> {
    let run = Path::new(RUN_ROOT).join(name);
    let mut roots = vec![run.clone()];
    match host_dir {
        Some(d) => roots.push(d.to_path_buf()),
        None => {
            if let Ok(d) = std::fs::read_link(run.join("host-dir")) {
                roots.push(d);
            }
        }
    }
    unmount_under(&roots)?;
    Cgroup::named(name)?.remove()?;
    if run.exists() {
        std::fs::remove_dir_all(&run).with_context(|| format!("removing {}", run.display()))?;
    }
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after
                .split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// `GET /_ping` on a Docker API socket answers `OK`.
pub fn ping(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
}

/// An image of this machine's engine, saved once for every lab.
#[derive(Debug, Clone)]
pub struct CachedImage {
    /// `sha256:…`, as `docker image inspect` prints it.
    pub id: String,
    pub tarball: PathBuf,
    /// Whether this call wrote the tarball (else it was cached).
    pub saved: bool,
}

/// `docker save` of `image` from this machine's engine into
/// [`IMAGE_CACHE`]/`<image>@<id>.tar`, unless that file exists; a tarball
/// of an older id of the same image is removed then (a rebuilt image does
/// not pile up tarballs).
pub fn cache_image(image: &str) -> anyhow::Result<CachedImage> {
    let id = sys::run(
        "docker",
        &["image", "inspect", "--format", "{{.Id}}", image],
    )
    .with_context(|| format!("{image} is not in this machine's Docker engine"))?
    .trim()
    .to_string();
    let digest = id.trim_start_matches("sha256:");
    if digest.is_empty() || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("docker printed {id:?} as the id of {image}, not a sha256 digest");
    }
    let stem: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = Path::new(IMAGE_CACHE);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = format!("{stem}@{digest}.tar");
    let tarball = dir.join(&name);
    if tarball.is_file() {
        return Ok(CachedImage {
            id,
            tarball,
            saved: false,
        });
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    sys::run("docker", &["save", "-o", &path_str(&tmp), image])?;
    std::fs::rename(&tmp, &tarball).with_context(|| format!("writing {}", tarball.display()))?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{stem}@")) && n != name {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(CachedImage {
        id,
        tarball,
        saved: true,
    })
}

/// The storage driver for data roots in `dir`, and why: overlay2 on a
/// filesystem overlayfs accepts as its upper layer; on overlayfs itself
/// (a lab inside a container) fuse-overlayfs when installed, else vfs
/// (which copies every layer: slow, but correct).
pub fn storage_driver(dir: &Path) -> (String, String) {
    let fs = fs_type(dir).unwrap_or_else(|| "unknown".into());
    let fuse = sys::on_path("fuse-overlayfs") && Path::new("/dev/fuse").exists();
    pick_storage_driver(dir, &fs, fuse)
}

/// [`storage_driver`]'s decision for a data root in `dir` on filesystem
/// `fs`, `fuse` telling whether fuse-overlayfs can run.
fn pick_storage_driver(dir: &Path, fs: &str, fuse: bool) -> (String, String) {
    match fs {
        "overlay" => {
            if fuse {
                (
                    "fuse-overlayfs".into(),
                    format!(
                        "{} is on overlayfs, which overlay2 cannot stack on",
                        dir.display()
                    ),
                )
            } else {
                (
                    "vfs".into(),
                    format!(
                        "{} is on overlayfs and fuse-overlayfs is not installed (apt-get install fuse-overlayfs makes it faster)",
                        dir.display()
                    ),
                )
            }
        }
        _ => ("overlay2".into(), format!("{} is on {fs}", dir.display())),
    }
}

/// The filesystem type of the mount holding `path` (from /proc/self/mountinfo).
pub fn fs_type(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    mounts()
        .into_iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
        .map(|m| m.fstype)
}

struct Mount {
    point: PathBuf,
    fstype: String,
}

/// This mount namespace's mounts.
fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = unescape(fields.get(4)?);
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(dash + 1)?.to_string();
            Some(Mount {
                point: PathBuf::from(point),
                fstype,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmount every mount at or below any of `roots`, deepest first.
pub fn unmount_under(roots: &[PathBuf]) -> anyhow::Result<()> {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.point)
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let s = path_str(&p);
        if let Err(e) = sys::run("umount", &["-l", &s]) {
            // Gone meanwhile (a parent's lazy unmount took it) is fine.
            if mounts().iter().any(|m| m.point == p) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A host's cgroup: cgroup v1's freezer hierarchy, or the v2 unified one.
/// The daemons sit in its `host` child; dockerd puts each container in a
/// child of its own (`--cgroup-parent`).
#[derive(Debug, Clone)]
pub struct Cgroup {
    name: String,
    path: PathBuf,
    v2: bool,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Cgroup {
    pub fn named(name: &str) -> anyhow::Result<Cgroup> {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return Ok(Cgroup {
                name: name.into(),
                path: root.join(name),
                v2: true,
            });
        }
        if root.join("freezer").join("freezer.state").exists() || root.join("freezer").is_dir() {
            return Ok(Cgroup {
                name: name.into(),
                path: root.join("freezer").join(name),
                v2: false,
            });
        }
        bail!("{}", NO_FREEZER)
    }

    pub fn create(&self) -> anyhow::Result<()> {
        let host = self.path.join("host");
        std::fs::create_dir_all(&host)
            .with_context(|| format!("creating the cgroup {}", host.display()))
    }

    /// `cgroup.procs` of the daemons' cgroup.
    pub fn daemons_procs(&self) -> PathBuf {
        self.path.join("host").join("cgroup.procs")
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Freeze (or thaw) every process of the host.
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let (file, value) = if self.v2 {
            ("cgroup.freeze", if frozen { "1" } else { "0" })
        } else {
            ("freezer.state", if frozen { "FROZEN" } else { "THAWED" })
        };
        let path = self.path.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))
    }

    /// Whether the host's tree is frozen (or freezing).
    pub fn frozen(&self) -> bool {
        if self.v2 {
            std::fs::read_to_string(self.path.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
        } else {
            std::fs::read_to_string(self.path.join("freezer.state"))
                .is_ok_and(|s| s.trim() != "THAWED")
        }
    }

    /// Every process in the tree.
    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        out
    }

    /// A power loss: freeze the tree (nothing forks or exits meanwhile),
    /// SIGKILL every task, thaw, wait until the tree is empty. Returns how
    /// many processes were killed.
    pub fn kill_all(&self, limit: Duration) -> anyhow::Result<usize> {
        if !self.exists() {
            return Ok(0);
        }
        self.freeze(true)?;
        let pids = self.pids();
        sys::signal(Signal::SIGKILL, &pids);
        self.freeze(false)?;
        let deadline = Instant::now() + limit;
        while !self.pids().is_empty() {
            if Instant::now() > deadline {
                bail!(
                    "processes of {} survived SIGKILL for {}s: {:?}",
                    self.name,
                    limit.as_secs(),
                    self.pids()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(pids.len())
    }

    /// Remove the tree (empty by now), and with cgroup v1 the container
    /// cgroups dockerd made in the other hierarchies.
    pub fn remove(&self) -> anyhow::Result<()> {
        let mut tops = vec![self.path.clone()];
        if !self.v2 {
            if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
                for e in entries.flatten() {
                    let top = e.path().join(&self.name);
                    if top != self.path && top.is_dir() {
                        tops.push(top);
                    }
                }
            }
        }
        for top in tops {
            if !top.is_dir() {
                continue;
            }
            // Depth first: children before parents.
            let mut all = vec![top.clone()];
            let mut i = 0;
            while i < all.len() {
                if let Ok(entries) = std::fs::read_dir(&all[i]) {
                    all.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
                i += 1;
            }
            for dir in all.iter().rev() {
                std::fs::remove_dir(dir)
                    .with_context(|| format!("removing the cgroup {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

const NO_FREEZER: &str = "--runtime docker needs the cgroup freezer (cgroup v2, or v1 with /sys/fs/cgroup/freezer) to pause and kill a host's containers with it";

/// Why this machine cannot run an engine per lab host, or None.
pub fn missing_prerequisite() -> Option<String> {
    missing(sys::on_path, Cgroup::named("probe").is_ok())
}

/// [`missing_prerequisite`] with `found(program)` and whether a cgroup
/// freezer is there.
fn missing(found: impl Fn(&str) -> bool, freezer: bool) -> Option<String> {
    for (program, package) in [
        ("dockerd", "docker.io"),
        ("containerd", "containerd"),
        ("docker", "docker.io"),
        ("nsenter", "util-linux"),
        ("umount", "mount"),
    ] {
        if !found(program) {
            return Some(format!(
                "--runtime docker runs a Docker engine per lab host and needs {program} on PATH (Debian package {package}); use --runtime process without it"
            ));
        }
    }
    if !freezer {
        return Some(NO_FREEZER.into());
    }
    None
}

/// Every engine of lab `id` that has a run dir or a cgroup: their names.
pub fn engines_of_lab(id: u32) -> Vec<String> {
    let prefix = format!("drv{id}-");
    let mut names = Vec::new();
    let mut dirs = vec![PathBuf::from(RUN_ROOT)];
    if let Ok(cg) = Cgroup::named("x") {
        if let Some(parent) = cg.path.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn overlay2_unless_the_data_root_is_on_overlayfs() {
        let dir = Path::new("/labs/x");
        assert_eq!(pick_storage_driver(dir, "ext4", false).0, "overlay2");
        assert_eq!(pick_storage_driver(dir, "xfs", true).0, "overlay2");
        let (driver, why) = pick_storage_driver(dir, "overlay", true);
        assert_eq!(driver, "fuse-overlayfs");
        assert!(why.contains("/labs/x is on overlayfs"), "{why}");
        let (driver, why) = pick_storage_driver(dir, "overlay", false);
        assert_eq!(driver, "vfs");
        assert!(why.contains("apt-get install fuse-overlayfs"), "{why}");
    }

    #[test]
    fn a_machine_without_an_engine_per_host_is_refused_naming_what_is_missing() {
        assert_eq!(missing(|_| true, true), None);
        let no_dockerd = missing(|p| p != "dockerd", true).expect("refused");
        assert!(
            no_dockerd.contains("needs dockerd on PATH (Debian package docker.io)"),
            "{no_dockerd}"
        );
        let no_containerd = missing(|p| p != "containerd", true).expect("refused");
        assert!(
            no_containerd.contains("containerd on PATH"),
            "{no_containerd}"
        );
        let no_nsenter = missing(|p| p != "nsenter", true).expect("refused");
        assert!(no_nsenter.contains("util-linux"), "{no_nsenter}");
        let no_freezer = missing(|_| true, false).expect("refused");
        assert!(no_freezer.contains("cgroup freezer"), "{no_freezer}");
    }

    #[test]
    fn an_engine_keeps_its_sockets_in_its_run_dir() {
        let e = Engine::new(
            "drv3-n1".into(),
            PathBuf::from("/labs/x/n1"),
            Path::new("/labs/x"),
            "n1",
            "overlay2",
        );
        assert_eq!(
            e.docker_host(),
            "unix:///run/drover-lab/drv3-n1/docker.sock"
        );
        assert_eq!(e.data_root(), PathBuf::from("/labs/x/n1/docker"));
        assert_eq!(e.dockerd_log, PathBuf::from("/labs/x/n1.dockerd.log"));
    }
}
