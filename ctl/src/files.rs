//! Reading `-f` inputs: files, directories (`-R` to recurse) and `-` for stdin.
//!
//! Every input is named as the user would recognise it (`web.yaml`,
//! `manifests/api.yml`, `-`), because manifest errors quote that name. Sizes
//! are checked before contents are read: a 50 MiB file is refused from its
//! metadata, and a file that lies about its size (`/dev/zero`, a FIFO) is cut
//! off one byte past the limit.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::io_reason;

/// One manifest file as read: (name, content), the shape `parse_files` takes.
pub type ManifestFile = (String, String);

/// File extensions read from directories, as kubectl's.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilesError {
    #[error("the path {0:?} does not exist")]
    NotFound(String),
    #[error("cannot read {name}: {reason}")]
    Unreadable { name: String, reason: String },
    #[error("{name} is {size}; one apply accepts at most {}", human_bytes(*.limit as u64))]
    TooLarge {
        name: String,
        size: Size,
        limit: usize,
    },
    #[error("the files together are {size}; one apply accepts at most {}", human_bytes(*.limit as u64))]
    TotalTooLarge { size: Size, limit: usize },
    #[error("{0} is not UTF-8 text")]
    NotUtf8(String),
    #[error("- (stdin) can be given only once")]
    StdinTwice,
    #[error("no manifests (*.yaml, *.yml, *.json) in {0}")]
    NoManifests(String),
}

/// A size known exactly (from metadata) or only as "more than" (read was cut off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Exact(u64),
    MoreThan(u64),
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Exact(n) => f.write_str(&human_bytes_ceil(*n)),
            Size::MoreThan(n) => write!(f, "more than {}", human_bytes(*n)),
        }
    }
}

/// Read every input in order. `stdin` stands for `-`.
pub fn collect(
    inputs: &[String],
    recursive: bool,
    stdin: &mut dyn Read,
    limit: usize,
) -> Result<Vec<ManifestFile>, FilesError> {
    let mut paths: Vec<Source> = Vec::new();
    let mut seen_stdin = false;
    for input in inputs {
        if input == "-" {
            if seen_stdin {
                return Err(FilesError::StdinTwice);
            }
            seen_stdin = true;
            paths.push(Source::Stdin);
            continue;
        }
        let path = Path::new(input);
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FilesError::NotFound(input.clone()))
            }
            Err(e) => {
                return Err(FilesError::Unreadable {
                    name: input.clone(),
                    reason: io_reason(&e),
                })
            }
        };
        if meta.is_dir() {
            let before = paths.len();
            walk(path, recursive, &mut paths)?;
            if paths.len() == before {
                return Err(FilesError::NoManifests(input.clone()));
            }
        } else {
            paths.push(Source::File(path.to_path_buf(), meta.len()));
        }
    }

    // Refuse from metadata before reading anything.
    let mut declared: u64 = 0;
    for source in &paths {
        if let Source::File(path, len) = source {
            if *len > limit as u64 {
                return Err(FilesError::TooLarge {
                    name: display(path),
                    size: Size::Exact(*len),
                    limit,
                });
            }
            declared = declared.saturating_add(*len);
        }
    }
    if declared > limit as u64 {
        return Err(FilesError::TotalTooLarge {
            size: Size::Exact(declared),
            limit,
        });
    }

    let mut out = Vec::with_capacity(paths.len());
    let mut total: u64 = 0;
    for source in paths {
        let (name, bytes) = match source {
            Source::Stdin => ("-".to_string(), read_limited("-", stdin, limit)?),
            Source::File(path, _) => {
                let name = display(&path);
                let mut f = std::fs::File::open(&path).map_err(|e| FilesError::Unreadable {
                    name: name.clone(),
                    reason: io_reason(&e),
                })?;
                let bytes = read_limited(&name, &mut f, limit)?;
                (name, bytes)
            }
        };
        total += bytes.len() as u64;
        if total > limit as u64 {
            return Err(FilesError::TotalTooLarge {
                size: Size::Exact(total),
                limit,
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| FilesError::NotUtf8(name.clone()))?;
        out.push((name, text));
    }
    Ok(out)
}

enum Source {
    Stdin,
    /// A path and its size from metadata.
    File(PathBuf, u64),
}

/// Append a directory's manifest files in name order; subdirectories too with `recursive`.
/// Symbolic links to directories are not followed, so a link loop cannot trap the walk.
fn walk(dir: &Path, recursive: bool, out: &mut Vec<Source>) -> Result<(), FilesError> {
    let unreadable = |e: std::io::Error| FilesError::Unreadable {
        name: display(dir),
        reason: io_reason(&e),
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort();
    for path in entries {
        let Ok(link_meta) = std::fs::symlink_metadata(&path) else {
            continue; // vanished while listing
        };
        if link_meta.is_dir() {
            if recursive {
                walk(&path, recursive, out)?;
            }
            continue;
        }
        let has_manifest_ext = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        if !has_manifest_ext {
            continue;
        }
        // Follow a link to a file; skip links to directories and dangling links.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => out.push(Source::File(path, meta.len())),
            _ => continue,
        }
    }
    Ok(())
}

/// Read at most `limit` bytes; one more means the input is too large.
fn read_limited(name: &str, r: &mut dyn Read, limit: usize) -> Result<Vec<u8>, FilesError> {
    let mut buf = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| FilesError::Unreadable {
            name: name.to_string(),
            reason: io_reason(&e),
        })?;
    if buf.len() > limit {
        return Err(FilesError::TooLarge {
            name: name.to_string(),
            size: Size::MoreThan(limit as u64),
            limit,
        });
    }
    Ok(buf)
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

/// `4 MiB`, `1.5 KiB`, `300 bytes`: exact units without decimals.
pub fn human_bytes(n: u64) -> String {
    for (unit, size) in UNITS {
        if n >= size {
            return if n % size == 0 {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} bytes")
}

/// `50.0 MiB`: one decimal, rounded up so that a size just over a limit never
/// prints as the limit itself.
pub fn human_bytes_ceil(n: u64) -> String {
    for (unit, size) in UNITS {
        if n >= size {
            let tenths = (n as u128 * 10).div_ceil(size as u128);
            return format!("{}.{} {unit}", tenths / 10, tenths % 10);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 4 * 1024 * 1024;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn names(files: &[ManifestFile], root: &Path) -> Vec<String> {
        let prefix = format!("{}/", root.display());
        files
            .iter()
            .map(|(n, _)| n.strip_prefix(&prefix).unwrap_or(n).to_string())
            .collect()
    }

    fn no_stdin() -> impl Read {
        std::io::empty()
    }

    #[test]
    fn a_directory_gives_its_manifests_in_name_order() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "b.yml", "b");
        write(tmp.path(), "a.yaml", "a");
        write(tmp.path(), "c.json", "c");
        write(tmp.path(), "README.md", "no");
        write(tmp.path(), "sub/d.yaml", "d");
        let root = tmp.path().to_string_lossy().into_owned();

        let files = collect(std::slice::from_ref(&root), false, &mut no_stdin(), LIMIT).unwrap();
        assert_eq!(names(&files, tmp.path()), ["a.yaml", "b.yml", "c.json"]);
        assert_eq!(files[0].1, "a");

        let files = collect(&[root], true, &mut no_stdin(), LIMIT).unwrap();
        assert_eq!(
            names(&files, tmp.path()),
            ["a.yaml", "b.yml", "c.json", "sub/d.yaml"]
        );
    }

    #[test]
    fn stdin_is_read_once_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a.yaml", "from file");
        let a = tmp.path().join("a.yaml").to_string_lossy().into_owned();
        let mut stdin = std::io::Cursor::new(b"from stdin".to_vec());
        let files = collect(&["-".into(), a.clone()], false, &mut stdin, LIMIT).unwrap();
        assert_eq!(files[0], ("-".to_string(), "from stdin".to_string()));
        assert_eq!(files[1], (a, "from file".to_string()));

        let e = collect(&["-".into(), "-".into()], false, &mut no_stdin(), LIMIT).unwrap_err();
        assert_eq!(e, FilesError::StdinTwice);
    }

    #[test]
    fn missing_paths_empty_directories_and_binary_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.yaml").to_string_lossy().into_owned();
        let e = collect(
            std::slice::from_ref(&missing),
            false,
            &mut no_stdin(),
            LIMIT,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the path {missing:?} does not exist")
        );

        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let empty = empty.to_string_lossy().into_owned();
        let e = collect(std::slice::from_ref(&empty), true, &mut no_stdin(), LIMIT).unwrap_err();
        assert_eq!(e, FilesError::NoManifests(empty));

        std::fs::write(tmp.path().join("bin.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        let bin = tmp.path().join("bin.yaml").to_string_lossy().into_owned();
        let e = collect(std::slice::from_ref(&bin), false, &mut no_stdin(), LIMIT).unwrap_err();
        assert_eq!(e, FilesError::NotUtf8(bin));
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let big = tmp.path().join("web.yaml");
        // A sparse 50 MiB file: refusing it must not need its contents.
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(50 * 1024 * 1024).unwrap();
        let big = big.to_string_lossy().into_owned();
        let e = collect(std::slice::from_ref(&big), false, &mut no_stdin(), LIMIT).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{big} is 50.0 MiB; one apply accepts at most 4 MiB")
        );
    }

    #[test]
    fn files_that_fit_alone_may_not_exceed_the_limit_together() {
        let tmp = tempfile::tempdir().unwrap();
        let chunk = "x".repeat(3 * 1024 * 1024);
        write(tmp.path(), "a.yaml", &chunk);
        write(tmp.path(), "b.yaml", &chunk);
        let root = tmp.path().to_string_lossy().into_owned();
        let e = collect(&[root], false, &mut no_stdin(), LIMIT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the files together are 6.0 MiB; one apply accepts at most 4 MiB"
        );
    }

    #[test]
    fn endless_stdin_is_cut_off_past_the_limit() {
        let mut endless = std::io::repeat(b'x');
        let e = collect(&["-".into()], false, &mut endless, 1024).unwrap_err();
        assert_eq!(
            e.to_string(),
            "- is more than 1 KiB; one apply accepts at most 1 KiB"
        );
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(4 * 1024 * 1024), "4 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
        assert_eq!(human_bytes_ceil(50 * 1024 * 1024), "50.0 MiB");
        assert_eq!(human_bytes_ceil(4 * 1024 * 1024 + 1), "4.1 MiB");
        assert_eq!(human_bytes_ceil(1 << 30), "1.0 GiB");
    }
}
