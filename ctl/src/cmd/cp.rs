//! `droverctl cp REPLICA:PATH LOCAL` and `droverctl cp LOCAL REPLICA:PATH`
//!
//! ```text
//!  from a replica: exec `tar cf - -C DIR NAME` ──stdout──▶ tar reader ──▶ LOCAL
//!  to a replica:   LOCAL ──▶ tar writer ──stdin──▶ exec `tar xf - -C DIR` (entries named NAME)
//!                  (DIR and NAME: PATH's parent and last part)
//! ```
//!
//! As kubectl does, the replica needs a `tar` (busybox's will do); the
//! archive on this side is the `tar` crate's, run on a blocking thread fed
//! through a bounded channel, so a large copy holds a few chunks in memory,
//! never the whole file. Entries that would land outside the destination
//! (absolute paths, `..`) are refused.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use drover_proto::pb;
use tokio::sync::mpsc;

use super::exec::{ended, ExecCall};
use super::logs::ReplicaAgent;
use super::Env;

#[derive(Debug, Args)]
pub struct CpArgs {
    /// REPLICA:PATH or a local path
    #[arg(value_name = "SRC")]
    pub src: String,
    /// REPLICA:PATH or a local path (one of the two is in a replica)
    #[arg(value_name = "DEST")]
    pub dest: String,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Local(PathBuf),
    Replica { replica: String, path: String },
}

/// `web-1:/etc/hosts` is in a replica; `./a:b`, `/tmp/x` and `file` are local.
pub fn parse_place(arg: &str) -> anyhow::Result<Place> {
    match arg.split_once(':') {
        Some((replica, path)) if !replica.is_empty() && !replica.contains('/') => {
            if path.is_empty() {
                bail!("{arg:?} names no path in replica {replica:?} (REPLICA:PATH)");
            }
            Ok(Place::Replica {
                replica: replica.to_string(),
                path: path.to_string(),
            })
        }
        _ if arg.is_empty() => bail!("an empty path cannot be copied"),
        _ => Ok(Place::Local(PathBuf::from(arg))),
    }
}

/// A remote path as tar's `-C DIR` and entry NAME.
fn split_remote(path: &str) -> anyhow::Result<(String, String)> {
    let trimmed = path.trim_end_matches('/');
    let (dir, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => (".", trimmed),
    };
    if name.is_empty() || name == "." || name == ".." {
        bail!("{path:?} names no file or directory to copy (give its full path, e.g. /tmp/data)");
    }
    Ok((dir.to_string(), name.to_string()))
}

pub async fn run(env: &Env, args: CpArgs) -> anyhow::Result<()> {
    match (parse_place(&args.src)?, parse_place(&args.dest)?) {
        (Place::Replica { replica, path }, Place::Local(local)) => {
            download(env, &replica, &path, &local).await
        }
        (Place::Local(local), Place::Replica { replica, path }) => {
            upload(env, &local, &replica, &path).await
        }
        (Place::Local(_), Place::Local(_)) => {
            bail!("one side of droverctl cp must be REPLICA:PATH (both are local paths)")
        }
        (Place::Replica { .. }, Place::Replica { .. }) => {
            bail!("droverctl cp copies between this machine and one replica, not between two replicas")
        }
    }
}

async fn open(
    env: &Env,
    replica: &str,
    command: Vec<String>,
    stdin: bool,
) -> anyhow::Result<(ReplicaAgent, ExecCall)> {
    let target = ReplicaAgent::find(env, "cp", replica).await?;
    let start = pb::ExecStart {
        replica: target.id.clone(),
        command,
        stdin,
        tty: false,
        size: None,
    };
    let what = format!("copy files in replica {:?}", target.name);
    let call = ExecCall::open(&target, start, env.global.request_timeout.0, &what).await?;
    Ok((target, call))
}

/// The failed tar's own words, as one sentence.
fn tar_failed(what: &str, code: i32, stderr: &[u8]) -> anyhow::Error {
    let text = String::from_utf8_lossy(stderr);
    let said = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if said.is_empty() {
        anyhow!("{what}: tar in the replica exited with code {code}")
    } else {
        anyhow!("{what}: {said}")
    }
}

async fn download(env: &Env, replica: &str, path: &str, local: &Path) -> anyhow::Result<()> {
    let (dir, name) = split_remote(path)?;
    let command = ["tar", "cf", "-", "-C", &dir, &name]
        .map(String::from)
        .to_vec();
    let (target, call) = open(env, replica, command, false).await?;
    let dest = if local.is_dir() {
        local.join(&name)
    } else {
        local.to_path_buf()
    };
    let what = format!("cannot copy {replica}:{path} to {}", local.display());
    // Chunks of the archive go to the unpacking thread through a bounded channel.
    let (chunks, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
    let unpack = {
        let (dest, name) = (dest.clone(), name.clone());
        tokio::task::spawn_blocking(move || unpack(ChannelReader::new(rx), &name, &dest))
    };
    let ExecCall { input, mut output } = call;
    let mut stderr = Vec::new();
    let mut code = None;
    let mut chunks = Some(chunks);
    loop {
        match output.message().await {
            Ok(Some(out)) => match out.kind {
                Some(pb::exec_output::Kind::Stdout(data)) => {
                    let sent = match &chunks {
                        Some(tx) => {
                            let tx = tx.clone();
                            tokio::task::spawn_blocking(move || tx.send(data).is_ok())
                                .await
                                .unwrap_or(false)
                        }
                        None => false,
                    };
                    if !sent {
                        // The unpacker stopped: its error says why.
                        chunks = None;
                    }
                }
                Some(pb::exec_output::Kind::Stderr(data)) if stderr.len() < 64 * 1024 => {
                    stderr.extend_from_slice(&data);
                }
                Some(pb::exec_output::Kind::Exit(e)) => code = Some(e.code),
                Some(pb::exec_output::Kind::Stderr(_)) | None => {}
            },
            Ok(None) => break,
            Err(status) => return Err(ended(&target, &status).context(what)),
        }
    }
    drop(input);
    drop(chunks);
    let unpacked = unpack.await.map_err(|e| anyhow!("{what}: {e}"))?;
    match code {
        Some(0) => unpacked.with_context(|| what.clone()),
        Some(code) => Err(tar_failed(&what, code, &stderr)),
        None => bail!("{what}: the agent ended the copy without tar's exit code"),
    }
}

/// Unpack an archive whose top entry is `name` as `dest`.
fn unpack(reader: impl Read, name: &str, dest: &Path) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    let mut count = 0usize;
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let path = entry
            .path()
            .context("reading an entry's name")?
            .into_owned();
        let mut parts = path.components().filter(|c| *c != Component::CurDir);
        if parts.next() != Some(Component::Normal(name.as_ref())) {
            bail!("the archive holds {} outside {name:?}", path.display());
        }
        let rest: PathBuf = parts
            .map(|c| match c {
                Component::Normal(p) => Ok(p),
                _ => Err(anyhow!(
                    "the archive entry {} leaves its directory",
                    path.display()
                )),
            })
            .collect::<anyhow::Result<_>>()?;
        // (joining an empty path would add a trailing slash)
        let out = if rest.as_os_str().is_empty() {
            dest.to_path_buf()
        } else {
            dest.join(rest)
        };
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        entry
            .unpack(&out)
            .with_context(|| format!("writing {}", out.display()))?;
        count += 1;
    }
    if count == 0 {
        bail!("the replica sent an empty archive");
    }
    Ok(())
}

async fn upload(env: &Env, local: &Path, replica: &str, path: &str) -> anyhow::Result<()> {
    let (dir, name) = split_remote(path)?;
    let what = format!("cannot copy {} to {replica}:{path}", local.display());
    let meta =
        std::fs::metadata(local).with_context(|| format!("{what}: reading {}", local.display()))?;
    let command = ["tar", "xf", "-", "-C", &dir].map(String::from).to_vec();
    let (target, call) = open(env, replica, command, true).await?;
    let ExecCall { input, mut output } = call;
    let pack = {
        let (local, name, input) = (local.to_path_buf(), name.clone(), input.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut writer = ChannelWriter::new(input);
            {
                let mut builder = tar::Builder::new(&mut writer);
                builder.follow_symlinks(false);
                if meta.is_dir() {
                    builder.append_dir_all(&name, &local)?;
                } else {
                    builder.append_path_with_name(&local, &name)?;
                }
                builder.finish()?;
            }
            writer.close()
        })
    };
    drop(input);
    let mut stderr = Vec::new();
    let mut code = None;
    loop {
        match output.message().await {
            Ok(Some(out)) => match out.kind {
                Some(pb::exec_output::Kind::Stderr(data)) if stderr.len() < 64 * 1024 => {
                    stderr.extend_from_slice(&data);
                }
                Some(pb::exec_output::Kind::Exit(e)) => code = Some(e.code),
                _ => {}
            },
            Ok(None) => break,
            Err(status) => return Err(ended(&target, &status).context(what)),
        }
    }
    let packed = pack.await.map_err(|e| anyhow!("{what}: {e}"))?;
    match code {
        Some(0) => packed.with_context(|| what.clone()),
        Some(code) => Err(tar_failed(&what, code, &stderr)),
        None => bail!("{what}: the agent ended the copy without tar's exit code"),
    }
}

/// `Read` over chunks arriving on a channel (on a blocking thread).
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `Write` into an exec's stdin, in chunks of 64 KiB (on a blocking thread).
struct ChannelWriter {
    input: mpsc::Sender<pb::ExecInput>,
    buf: Vec<u8>,
}

const WRITE_CHUNK: usize = 64 * 1024;

impl ChannelWriter {
    fn new(input: mpsc::Sender<pb::ExecInput>) -> ChannelWriter {
        ChannelWriter {
            input,
            buf: Vec::with_capacity(WRITE_CHUNK),
        }
    }

    fn send(&self, kind: pb::exec_input::Kind) -> std::io::Result<()> {
        self.input
            .blocking_send(pb::ExecInput { kind: Some(kind) })
            .map_err(|_| std::io::Error::other("the replica stopped reading the archive"))
    }

    /// Send what is buffered, then the end of stdin.
    fn close(mut self) -> anyhow::Result<()> {
        self.flush()?;
        self.send(pb::exec_input::Kind::CloseStdin(pb::StdinClose {}))?;
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
            self.send(pb::exec_input::Kind::Stdin(chunk))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_tell_replicas_from_local_paths() {
        assert_eq!(
            parse_place("web-1:/etc/hosts").unwrap(),
            Place::Replica {
                replica: "web-1".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(parse_place("./a:b").unwrap(), Place::Local("./a:b".into()));
        assert_eq!(
            parse_place("/tmp/x").unwrap(),
            Place::Local("/tmp/x".into())
        );
        assert!(parse_place("web-1:").is_err());
        assert!(parse_place("").is_err());
    }

    #[test]
    fn remote_paths_split_into_directory_and_name() {
        assert_eq!(
            split_remote("/tmp/data").unwrap(),
            ("/tmp".into(), "data".into())
        );
        assert_eq!(split_remote("/data/").unwrap(), ("/".into(), "data".into()));
        assert_eq!(
            split_remote("notes.txt").unwrap(),
            (".".into(), "notes.txt".into())
        );
        assert!(split_remote("/").is_err());
        assert!(split_remote("/tmp/..").is_err());
    }

    #[test]
    fn archives_unpack_under_the_new_name_and_never_outside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = Vec::new();
        {
            let mut b = tar::Builder::new(&mut data);
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "data", &b"hello"[..])
                .expect("append");
            b.finish().expect("finish");
        }
        let dest = dir.path().join("copy");
        unpack(&data[..], "data", &dest).expect("unpacks");
        assert_eq!(std::fs::read(&dest).expect("read"), b"hello");
        let err = unpack(&data[..], "other", &dest).expect_err("wrong top entry");
        assert!(err.to_string().contains("outside"), "{err}");
    }
}
