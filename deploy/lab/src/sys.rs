//! The host's plumbing, by the standard tools: `ip` (network namespaces,
//! veth pairs, a bridge, addresses, routes), `iptables` inside a namespace
//! (partitions), `docker` (containers of a Docker-runtime agent), `apt-get`
//! (busybox); and by system calls: signals (`nix`) and `/proc` (process
//! state, working directories).
//!
//! Every function runs one command and turns its failure into one sentence
//! naming the command and what it printed.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// Run `program args...`; its stdout on success, else an error quoting stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed and on PATH?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            err.trim().lines().next().unwrap_or("no message")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip args...`.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// `ip netns exec NS program args...`.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    ip(&all)
}

/// Why this process cannot build a lab, or None when it can: root, `ip` with
/// netns support, and `iptables`.
pub fn missing_prerequisite() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(
            "lab needs root to create network namespaces, veth pairs and a bridge: run it with sudo (or as root)"
                .into(),
        );
    }
    if let Err(e) = ip(&["netns", "list"]) {
        return Some(format!(
            "lab needs iproute2 with network namespace support (`ip netns`): {e:#}"
        ));
    }
    if let Err(e) = run("iptables", &["--version"]) {
        return Some(format!(
            "lab needs iptables to drop traffic for partitions: {e:#}"
        ));
    }
    None
}

/// Whether a network interface of this name exists in the root namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether a named network namespace exists.
pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// The pids of every process in a network namespace (empty when it is gone).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    if !netns_exists(ns) {
        return Vec::new();
    }
    ip(&["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The state of a process as `/proc/PID/stat` has it (`R`, `S`, `T`, `Z`...),
/// if it exists and lives in network namespace `ns`, so a recycled pid is not
/// taken for ours.
pub fn process_state(pid: u32, ns: &str) -> Option<char> {
    let ns_ino = std::fs::metadata(Path::new("/run/netns").join(ns))
        .ok()?
        .ino();
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let link = link.to_string_lossy();
    let ino: u64 = link
        .strip_prefix("net:[")
        .and_then(|l| l.strip_suffix(']'))
        .and_then(|n| n.parse().ok())?;
    if ino != ns_ino {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) STATE ...: comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    let state = after.split_whitespace().next()?.chars().next()?;
    (state != 'Z' && state != 'X').then_some(state)
}

pub use nix::sys::signal::Signal;

/// Send `sig` to pids; those already gone are ignored.
pub fn signal(sig: Signal, pids: &[u32]) {
    for &pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }
}

/// The pids of every process whose working directory is inside `dir`.
pub fn pids_under(dir: &Path) -> Vec<u32> {
    cwds_under(dir).into_iter().map(|(pid, _)| pid).collect()
}

/// Every process whose working directory is inside `dir`, with that
/// directory (a replica's work dir names the replica).
pub fn cwds_under(dir: &Path) -> Vec<(u32, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cwd = std::fs::read_link(entry.path().join("cwd")).ok()?;
            cwd.starts_with(dir).then_some((pid, cwd))
        })
        .collect()
}

/// SIGKILL every process whose working directory is inside `dir`, and its
/// process group (a replica's children). Returns how many were found.
pub fn kill_processes_under(dir: &Path) -> usize {
    let pids = pids_under(dir);
    for &pid in &pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let pid = nix::unistd::Pid::from_raw(raw);
        if let Ok(group) = nix::unistd::getpgid(Some(pid)) {
            if group.as_raw() > 1 {
                let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
            }
        }
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    pids.len()
}

/// Start `argv` inside namespace `ns`, detached: its own session, stdin from
/// /dev/null, stdout and stderr appended to `log`, re-parented to init (so it
/// outlives droverctl and never becomes our zombie). Returns its pid.
pub fn spawn_detached(
    ns: &str,
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<u32> {
    // sh forks the job and prints its pid; setsid and `ip netns exec` both
    // exec in place, so that pid is the daemon's.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!"#)
        .arg("sh")
        .arg(log)
        .args(["setsid", "ip", "netns", "exec", ns])
        .args(argv)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .context("cannot run sh to start a lab process")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("starting {} printed no pid: {text:?}", argv.join(" ")))
}

/// Whether the Docker engine answers.
pub fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Ids of the containers (running or not) labelled `drover.node=<node>`.
pub fn docker_containers(node: &str) -> Vec<String> {
    run(
        "docker",
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label=drover.node={node}"),
        ],
    )
    .map(|out| out.split_whitespace().map(str::to_string).collect())
    .unwrap_or_default()
}

/// `apt-get install PACKAGE` (non-interactive), after `apt-get update` when
/// the first try fails (a fresh machine has no package lists).
pub fn apt_install(package: &str) -> anyhow::Result<()> {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let out = install().context("cannot run apt-get")?;
    if out.status.success() {
        return Ok(());
    }
    let _ = run("apt-get", &["update", "-q"]);
    let out = install().context("cannot run apt-get")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`apt-get install {package}` failed: {}",
            err.trim().lines().last().unwrap_or("no message")
        );
    }
    Ok(())
}

/// Whether `program` is an executable file in a directory of PATH (or
/// /usr/sbin and /sbin, where dockerd lives and a user's PATH may not go).
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .any(|p| {
            std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Like [`spawn_detached`], but entering only the network namespace
/// (`nsenter --net`: `ip netns exec` remounts /sys, hiding the cgroup tree
/// dockerd needs) and moving the process into the cgroup whose
/// `cgroup.procs` is `procs` before it execs, so everything it starts is
/// in that cgroup too.
pub fn spawn_in_cgroup(
    ns: &str,
    procs: &Path,
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<u32> {
    let netns = Path::new("/run/netns").join(ns);
    // The inner sh writes its own pid, then execs setsid, which execs
    // nsenter, which execs the daemon: one pid throughout.
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            r#"log=$1; procs=$2; shift 2; sh -c 'echo $$ >"$0" && exec "$@"' "$procs" "$@" >>"$log" 2>&1 </dev/null & echo $!"#,
        )
        .arg("sh")
        .arg(log)
        .arg(procs)
        .arg("setsid")
        .arg("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(argv)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PATH", sbin_path(env))
        .stdin(Stdio::null())
        .output()
        .context("cannot run sh to start a lab process")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("starting {} printed no pid: {text:?}", argv.join(" ")))
}

/// PATH (from `env` if it sets one) with /usr/sbin and /sbin appended.
fn sbin_path(env: &[(String, String)]) -> String {
    let base = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/bin:/bin".into());
    format!("{base}:/usr/sbin:/sbin")
}
