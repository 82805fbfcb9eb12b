//! The process runtime's log files, rotated like Docker's `json-file`
//! driver (`max-size`, `max-file`), and the log shim that writes them.
//!
//! ```text
//!  replica ──stdout pipe──▶ log shim (drover-agent __log-shim) ──▶ C.stdout   (≤ max_size)
//!          ──stderr pipe──▶ log shim                              C.stdout.1 (older)
//!                                                                 ...        (max_files in all)
//! ```
//!
//! A replica never writes its log files itself: each of its two streams is a
//! pipe read by a small process of its own (the agent binary run as
//! `drover-agent __log-shim PATH MAX_SIZE MAX_FILES`, as conmon or
//! containerd's shims do for containers). The shim writes at most `max_size`
//! bytes per file; past that it renames `PATH.k` to `PATH.k+1` (dropping the
//! oldest), `PATH` to `PATH.1`, and starts a new `PATH`. It leads its own
//! process group, so stopping the replica's group does not stop it, and it
//! holds nothing of the agent's, so it outlives an agent restart as the
//! replica does; it exits once every writer of the pipe is gone (the
//! replica's whole process tree), after writing everything it read.
//!
//! Readers take the files oldest first (`PATH.(max_files-1)` ... `PATH`); a
//! reader following `PATH` notices a rotation when the name points at a new
//! file, finishes the one it holds open (complete: the shim renames only
//! between writes) and goes on from the start of the new one.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Docker's `json-file` defaults: 10 MiB per file, three files.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MAX_FILES: u32 = 3;

/// The first argument that makes the agent binary a log shim.
pub const SHIM_ARG: &str = "__log-shim";

/// How large a replica's log grows on disk: `max_files` files of at most
/// `max_size` bytes per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> LogLimits {
        LogLimits {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

impl LogLimits {
    /// Limits from the agent's flags, or a sentence saying what is wrong.
    pub fn new(max_size: u64, max_files: u32) -> Result<LogLimits, String> {
        if max_size < 4096 {
            return Err(format!(
                "--log-max-size must be at least 4Ki (4096 bytes), not {max_size}"
            ));
        }
        if max_files == 0 {
            return Err("--log-max-file must be 1 or more".to_string());
        }
        Ok(LogLimits {
            max_size,
            max_files,
        })
    }
}

/// `path.k`: the k-th older file of a log (`path` itself for 0).
pub fn rotated(path: &Path, k: u32) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// The files of a log that exist, oldest first (the current one last).
pub fn segments(path: &Path, max_files: u32) -> Vec<PathBuf> {
    (0..max_files.max(1))
        .rev()
        .map(|k| rotated(path, k))
        .filter(|p| p.exists())
        .collect()
}

/// Remove every file of a log.
pub fn remove_all(path: &Path, max_files: u32) {
    for k in 0..max_files.max(1) {
        let _ = std::fs::remove_file(rotated(path, k));
    }
}

/// A log file that rotates itself past `max_size`.
pub struct RotatingFile {
    path: PathBuf,
    limits: LogLimits,
    file: std::fs::File,
    size: u64,
}

impl RotatingFile {
    /// Open `path` for appending (a shim started again goes on where the file is).
    pub fn open(path: &Path, limits: LogLimits) -> std::io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            limits,
            file,
            size,
        })
    }

    /// Write all of `data`, splitting it where a file reaches `max_size`.
    pub fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.size >= self.limits.max_size {
                self.rotate()?;
            }
            let room = (self.limits.max_size - self.size).min(data.len() as u64) as usize;
            self.file.write_all(&data[..room])?;
            self.size += room as u64;
            data = &data[room..];
        }
        Ok(())
    }

    /// `PATH.k` → `PATH.k+1` from the oldest kept down, `PATH` → `PATH.1`
    /// (with one file only, `PATH` starts over), then a new `PATH`.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.limits.max_files;
        if keep > 1 {
            let _ = std::fs::remove_file(rotated(&self.path, keep - 1));
            for k in (1..keep - 1).rev() {
                let from = rotated(&self.path, k);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, k + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Copy `input` into the rotating log at `path` until it ends. A failed
/// write (a full disk, or the container removed meanwhile) drops what was
/// read rather than stop reading, which would block the replica on a full
/// pipe; writing resumes while `path` still exists (it is never created
/// again once removed).
pub fn copy_rotating(mut input: impl Read, path: &Path, limits: LogLimits) -> std::io::Result<u64> {
    let mut out = Some(RotatingFile::open(path, limits)?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if out.is_none() && path.exists() {
            out = RotatingFile::open(path, limits).ok();
        }
        if let Some(file) = &mut out {
            if file.write_all(&buf[..n]).is_err() {
                out = None;
            }
        }
    }
}

/// `drover-agent __log-shim PATH MAX_SIZE MAX_FILES`, stdin being the pipe:
/// the log shim's whole life. Returns the process exit code.
pub fn run_shim(args: &[OsString]) -> i32 {
    let parsed = (|| {
        let [path, size, files] = args else {
            return None;
        };
        let size: u64 = size.to_str()?.parse().ok()?;
        let files: u32 = files.to_str()?.parse().ok()?;
        Some((PathBuf::from(path), LogLimits::new(size, files).ok()?))
    })();
    let Some((path, limits)) = parsed else {
        eprintln!("error: usage: drover-agent {SHIM_ARG} PATH MAX_SIZE MAX_FILES (the process runtime starts it)");
        return 2;
    };
    match copy_rotating(std::io::stdin().lock(), &path, limits) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("error: writing the log {}: {e}", path.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_size: u64, max_files: u32) -> LogLimits {
        LogLimits {
            max_size,
            max_files,
        }
    }

    #[test]
    fn files_are_cut_at_max_size_and_the_oldest_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.stdout");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let n = copy_rotating(&data[..], &path, limits(1000, 3)).expect("copy");
        assert_eq!(n, 10_000);
        let files = segments(&path, 3);
        assert_eq!(files, [rotated(&path, 2), rotated(&path, 1), path.clone()]);
        let kept: Vec<u8> = files
            .iter()
            .flat_map(|f| std::fs::read(f).expect("read"))
            .collect();
        assert_eq!(kept, data[7_000..], "the newest 3 files, in order");
        for f in &files {
            assert_eq!(std::fs::metadata(f).expect("stat").len(), 1000);
        }
        assert!(!rotated(&path, 3).exists());
    }

    #[test]
    fn one_file_starts_over_and_a_restarted_shim_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.stderr");
        copy_rotating(&b"abcdefgh"[..], &path, limits(5, 1)).expect("copy");
        assert_eq!(std::fs::read(&path).expect("read"), b"fgh");
        assert_eq!(segments(&path, 1), std::slice::from_ref(&path));
        copy_rotating(&b"ij"[..], &path, limits(5, 1)).expect("copy");
        assert_eq!(std::fs::read(&path).expect("read"), b"fghij");
        remove_all(&path, 1);
        assert!(segments(&path, 1).is_empty());
    }

    #[test]
    fn limits_refuse_nonsense_with_a_sentence() {
        assert!(LogLimits::new(100, 3)
            .unwrap_err()
            .contains("--log-max-size"));
        assert!(LogLimits::new(1 << 20, 0)
            .unwrap_err()
            .contains("--log-max-file"));
        assert_eq!(LogLimits::new(1 << 20, 2), Ok(limits(1 << 20, 2)));
    }
}
