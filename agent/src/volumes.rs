//! A replica's volumes on this host: the directories the runtimes mount.
//!
//! ```text
//!   <data-dir>/volumes/                       0700 (the data dir is 0700 too)
//!     <replica>/                              0700, removed with the replica
//!       <emptyDir volume>/                    0777, empty at first; a tmpfs of
//!                                             sizeLimit for medium: Memory
//!       <configMap volume>/                   0755        <secret volume>/ 0700
//!         ..data -> ..<sha256 of contents>    swapped atomically on a change
//!         ..<sha256 of contents>/<files>      modes from the volume; a secret's
//!                                             never readable by others
//!         <key> -> ..data/<key>               what the replica reads
//! ```
//!
//! Files are updated in place the way kubelet's atomic writer does it: the new
//! contents go into a fresh directory named by their hash, then the `..data`
//! symlink is renamed over in one step, so a reader sees the old or the new
//! set, never a mix. The same contents are never written twice (the hash
//! names them). `hostPath` volumes live where the manifest says; only their
//! `type` is checked (or the path created) before each start.
//!
//! Every function here returns one sentence on failure, naming the volume
//! and never a file's contents: it becomes the replica's status message.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use drover_manifest::HostPathType;
use sha2::{Digest, Sha256};

use crate::resolve::{File, VolumePlan};

/// The symlink naming the current contents of a files volume.
const DATA: &str = "..data";

/// Where a container sees one of its volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// On the host (the volume, or a `subPath` below it).
    pub source: PathBuf,
    /// In the container: the mount's `mountPath`.
    pub target: String,
    pub read_only: bool,
}

/// The volumes directory of one agent.
#[derive(Debug, Clone)]
pub struct VolumeDirs {
    root: PathBuf,
}

impl VolumeDirs {
    /// `<data_dir>/volumes`; created (0700) on first use.
    pub fn new(data_dir: &Path) -> VolumeDirs {
        VolumeDirs {
            root: data_dir.join("volumes"),
        }
    }

    /// Where the replica's own volumes live.
    pub fn replica_dir(&self, replica: &str) -> PathBuf {
        self.root.join(replica)
    }

    /// Make every volume of the replica ready (create emptyDirs, check or
    /// create hostPaths, write config files) and return each one's host path.
    pub fn prepare(
        &self,
        replica: &str,
        plans: &BTreeMap<String, VolumePlan>,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let dir = self.replica_dir(replica);
        if !plans.is_empty() {
            private_dir(&self.root).map_err(|e| io_sentence("creating", &self.root, &e))?;
            private_dir(&dir).map_err(|e| io_sentence("creating", &dir, &e))?;
        }
        let mut paths = BTreeMap::new();
        for (name, plan) in plans {
            let path = match plan {
                VolumePlan::EmptyDir {
                    memory,
                    size_limit_bytes,
                } => empty_dir(&dir.join(name), *memory, *size_limit_bytes)
                    .map_err(|e| format!("volume {name:?}: {e}"))?,
                VolumePlan::HostPath { path, kind } => host_path(Path::new(path), *kind)
                    .map_err(|e| format!("volume {name:?}: {e}"))?,
                VolumePlan::Files { secret, files } => {
                    let path = dir.join(name);
                    write_files(&path, *secret, files)
                        .map_err(|e| format!("volume {name:?}: {e}"))?;
                    path
                }
            };
            paths.insert(name.clone(), path);
        }
        Ok(paths)
    }

    /// Bring the files volumes of a replica that already has its directory
    /// up to date; returns the names of the volumes whose contents changed.
    /// A replica whose volumes were never prepared is left alone.
    pub fn refresh(
        &self,
        replica: &str,
        plans: &BTreeMap<String, VolumePlan>,
    ) -> Result<Vec<String>, String> {
        let dir = self.replica_dir(replica);
        let mut changed = Vec::new();
        for (name, plan) in plans {
            let VolumePlan::Files { secret, files } = plan else {
                continue;
            };
            let path = dir.join(name);
            if !path.is_dir() {
                continue;
            }
            if write_files(&path, *secret, files).map_err(|e| format!("volume {name:?}: {e}"))? {
                changed.push(name.clone());
            }
        }
        Ok(changed)
    }

    /// Delete the replica's volumes (unmounting its tmpfs ones).
    pub fn remove(&self, replica: &str) -> io::Result<()> {
        let dir = self.replica_dir(replica);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_mount_point(&path) {
                unmount(&path)?;
            }
        }
        fs::remove_dir_all(&dir)
    }

    /// Delete the volumes of every replica not in `keep`; returns their names.
    pub fn collect_garbage(&self, keep: &BTreeSet<&str>) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(name.as_str()) {
                continue;
            }
            if self.remove(&name).is_ok() {
                removed.push(name);
            }
        }
        removed
    }
}

/// `dir` with mode 0700 (created if missing; an existing one is tightened).
fn private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

fn io_sentence(what: &str, path: &Path, e: &io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

fn empty_dir(path: &Path, memory: bool, size_limit: Option<u64>) -> Result<PathBuf, String> {
    if !memory && size_limit.is_some() {
        return Err(
            "sizeLimit is enforced only for medium: Memory here (a tmpfs of that size); drop \
             sizeLimit or use medium: Memory"
                .into(),
        );
    }
    match fs::DirBuilder::new().mode(0o777).create(path) {
        Ok(()) => {
            // Whatever the umask: any user of the container may write, as in Kubernetes.
            fs::set_permissions(path, fs::Permissions::from_mode(0o777))
                .map_err(|e| io_sentence("setting the mode of", path, &e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_sentence("creating", path, &e)),
    }
    if memory && !is_mount_point(path) {
        mount_tmpfs(path, size_limit)?;
    }
    Ok(path.to_path_buf())
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (
        fs::symlink_metadata(path),
        path.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    me.is_dir() && me.dev() != parent.dev()
}

fn mount_tmpfs(path: &Path, size_limit: Option<u64>) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let options = match size_limit {
        Some(bytes) => format!("mode=0777,size={bytes}"),
        None => "mode=0777".to_string(),
    };
    let (Ok(target), Ok(fstype), Ok(data)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new("tmpfs"),
        CString::new(options),
    ) else {
        return Err("the volume path holds a NUL byte".into());
    };
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call; mount(2) reads them and keeps none.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(format!(
            "cannot mount a tmpfs for medium: Memory ({e}); the agent needs CAP_SYS_ADMIN (run \
             it as root) for memory-backed emptyDir volumes"
        ))
    }
}

fn unmount(path: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("the path holds a NUL byte"))?;
    // SAFETY: `target` is a valid NUL-terminated string for the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Check (or create) a hostPath per its `type`, as kubelet does before a start.
fn host_path(path: &Path, kind: HostPathType) -> Result<PathBuf, String> {
    let meta = fs::metadata(path);
    let found = |what: &str| {
        format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        )
    };
    match kind {
        HostPathType::Unset => {}
        HostPathType::DirectoryOrCreate => match &meta {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(found("a directory")),
            Err(_) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(|e| io_sentence("creating", path, &e))?,
        },
        HostPathType::Directory => {
            if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                return Err(found("a directory"));
            }
        }
        HostPathType::FileOrCreate => match &meta {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(found("a file")),
            Err(_) => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_sentence("creating", parent, &e))?;
                }
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(path)
                    .map_err(|e| io_sentence("creating", path, &e))?;
            }
        },
        HostPathType::File => {
            if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                return Err(found("a file"));
            }
        }
        HostPathType::Socket => {
            if !meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) {
                return Err(found("a socket"));
            }
        }
        HostPathType::CharDevice => {
            if !meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) {
                return Err(found("a character device"));
            }
        }
        HostPathType::BlockDevice => {
            if !meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) {
                return Err(found("a block device"));
            }
        }
    }
    Ok(path.to_path_buf())
}

/// The name of the directory holding exactly these files.
fn contents_name(files: &[File]) -> String {
    let mut hash = Sha256::new();
    let mut sorted: Vec<&File> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for f in sorted {
        hash.update((f.path.len() as u64).to_le_bytes());
        hash.update(f.path.as_bytes());
        hash.update(f.mode.to_le_bytes());
        hash.update((f.bytes.len() as u64).to_le_bytes());
        hash.update(&f.bytes);
    }
    let digest: String = hash
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("..{digest}")
}

/// Make `dir` hold exactly `files` (see the module docs); false when it
/// already did.
fn write_files(dir: &Path, secret: bool, files: &[File]) -> Result<bool, String> {
    let dir_mode = if secret { 0o700 } else { 0o755 };
    if let Err(e) = fs::DirBuilder::new().mode(dir_mode).create(dir) {
        if !dir.is_dir() {
            return Err(io_sentence("creating", dir, &e));
        }
    }
    let name = contents_name(files);
    let data = dir.join(DATA);
    if fs::read_link(&data).is_ok_and(|target| target == Path::new(&name)) {
        return Ok(false);
    }
    let fresh = dir.join(&name);
    // A leftover of an interrupted write of the same contents.
    if fresh.exists() {
        fs::remove_dir_all(&fresh).map_err(|e| io_sentence("removing", &fresh, &e))?;
    }
    fs::DirBuilder::new()
        .mode(dir_mode)
        .create(&fresh)
        .map_err(|e| io_sentence("creating", &fresh, &e))?;
    for f in files {
        let path = fresh.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode)
                .create(parent)
                .map_err(|e| io_sentence("creating", parent, &e))?;
        }
        write_file(&path, &f.bytes, f.mode).map_err(|e| io_sentence("writing", &path, &e))?;
    }
    // The swap: a new symlink renamed over the old one.
    let swap = dir.join("..data_tmp");
    let _ = fs::remove_file(&swap);
    std::os::unix::fs::symlink(&name, &swap).map_err(|e| io_sentence("linking", &swap, &e))?;
    let previous = fs::read_link(&data).ok();
    fs::rename(&swap, &data).map_err(|e| io_sentence("swapping", &data, &e))?;
    // What the replica reads: one symlink per top-level name, through ..data.
    let visible: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.path.split('/').next().map(str::to_string))
        .collect();
    for top in &visible {
        let link = dir.join(top);
        let target = Path::new(DATA).join(top);
        if fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|e| io_sentence("linking", &link, &e))?;
    }
    // Names no longer there, and the previous contents.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let entry_name = entry.file_name().to_string_lossy().into_owned();
            let stale_link = !entry_name.starts_with("..") && !visible.contains(&entry_name);
            if stale_link {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    if let Some(previous) = previous.filter(|p| p != Path::new(&name)) {
        let old = dir.join(previous);
        if old.starts_with(dir) {
            let _ = fs::remove_dir_all(old);
        }
    }
    Ok(true)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    // The umask may have taken bits away: the mode is the manifest's.
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// The mounts of the replica's container, from its `volumeMounts` and the
/// host paths [`VolumeDirs::prepare`] returned. A `subPath` directory of an
/// emptyDir or hostPath is created when missing, as kubelet does.
pub fn mounts(
    container: &drover_manifest::Container,
    paths: &BTreeMap<String, PathBuf>,
    plans: &BTreeMap<String, VolumePlan>,
) -> Result<Vec<HostMount>, String> {
    let mut out = Vec::new();
    for m in &container.volume_mounts {
        let Some(base) = paths.get(&m.name) else {
            return Err(format!("volumeMount {:?} names no volume", m.name));
        };
        let files = matches!(plans.get(&m.name), Some(VolumePlan::Files { .. }));
        let source = if m.sub_path.is_empty() {
            base.clone()
        } else {
            let sub = base.join(&m.sub_path);
            if !files && fs::symlink_metadata(&sub).is_err() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o777)
                    .create(&sub)
                    .map_err(|e| io_sentence("creating the subPath", &sub, &e))?;
            }
            sub
        };
        out.push(HostMount {
            source,
            target: m.mount_path.clone(),
            // configMap and secret volumes are read-only, as in Kubernetes.
            read_only: m.read_only || files,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str, mode: u32) -> File {
        File {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
            mode,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn files_are_swapped_in_place_and_old_ones_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("conf");
        let v1 = [file("a.txt", "one", 0o644), file("sub/b.txt", "two", 0o600)];
        assert!(write_files(&dir, false, &v1).expect("written"));
        assert_eq!(fs::read_to_string(dir.join("a.txt")).expect("a"), "one");
        assert_eq!(fs::read_to_string(dir.join("sub/b.txt")).expect("b"), "two");
        assert_eq!(mode_of(&dir.join("sub/b.txt")), 0o600);
        assert!(
            !write_files(&dir, false, &v1).expect("same"),
            "unchanged contents are not rewritten"
        );

        let v2 = [file("a.txt", "uno", 0o644)];
        assert!(write_files(&dir, false, &v2).expect("written"));
        assert_eq!(fs::read_to_string(dir.join("a.txt")).expect("a"), "uno");
        assert!(!dir.join("sub").exists(), "a key that left is gone");
        let kept: Vec<String> = fs::read_dir(&dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA)
            .collect();
        assert_eq!(
            kept.len(),
            1,
            "only the current contents are kept: {kept:?}"
        );
    }

    #[test]
    fn secret_files_are_never_readable_by_others() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = VolumeDirs::new(tmp.path());
        let plans = BTreeMap::from([(
            "creds".to_string(),
            VolumePlan::Files {
                secret: true,
                files: vec![file("password", "s3cr3t", 0o400)],
            },
        )]);
        let paths = dirs.prepare("default.web-r-0", &plans).expect("prepared");
        let vol = &paths["creds"];
        assert_eq!(mode_of(&tmp.path().join("volumes")), 0o700);
        assert_eq!(mode_of(&dirs.replica_dir("default.web-r-0")), 0o700);
        assert_eq!(mode_of(vol), 0o700);
        let target = fs::read_link(vol.join(DATA)).expect("..data");
        assert_eq!(mode_of(&vol.join(target)), 0o700);
        assert_eq!(mode_of(&vol.join("password")), 0o400);
        assert_eq!(
            fs::read_to_string(vol.join("password")).expect("read"),
            "s3cr3t"
        );
        dirs.remove("default.web-r-0").expect("removed");
        assert!(!dirs.replica_dir("default.web-r-0").exists());
    }

    #[test]
    fn host_path_types_are_checked_or_created() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("a/b");
        assert!(host_path(&missing, HostPathType::Directory)
            .expect_err("missing")
            .contains("is not a directory"));
        host_path(&missing, HostPathType::DirectoryOrCreate).expect("created");
        assert!(missing.is_dir());
        assert!(host_path(&missing, HostPathType::File).is_err());
        let f = tmp.path().join("c/file");
        host_path(&f, HostPathType::FileOrCreate).expect("created");
        assert!(f.is_file());
        host_path(&f, HostPathType::File).expect("a file");
        assert!(host_path(&f, HostPathType::Socket)
            .expect_err("not a socket")
            .contains("is not a socket"));
        host_path(&tmp.path().join("whatever"), HostPathType::Unset).expect("no check");
    }

    #[test]
    fn empty_dirs_survive_a_second_prepare_and_garbage_is_collected() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = VolumeDirs::new(tmp.path());
        let plans = BTreeMap::from([(
            "scratch".to_string(),
            VolumePlan::EmptyDir {
                memory: false,
                size_limit_bytes: None,
            },
        )]);
        let paths = dirs.prepare("default.a-r-0", &plans).expect("prepared");
        assert_eq!(mode_of(&paths["scratch"]), 0o777);
        fs::write(paths["scratch"].join("kept"), "x").expect("write");
        dirs.prepare("default.a-r-0", &plans).expect("again");
        assert!(
            paths["scratch"].join("kept").exists(),
            "a restart keeps the data"
        );
        dirs.prepare("default.b-r-0", &plans).expect("prepared");
        let removed = dirs.collect_garbage(&BTreeSet::from(["default.a-r-0"]));
        assert_eq!(removed, ["default.b-r-0"]);
        assert!(dirs.replica_dir("default.a-r-0").exists());
        let sized = BTreeMap::from([(
            "scratch".to_string(),
            VolumePlan::EmptyDir {
                memory: false,
                size_limit_bytes: Some(1024),
            },
        )]);
        assert!(dirs
            .prepare("default.c-r-0", &sized)
            .expect_err("refused")
            .contains("sizeLimit is enforced only for medium: Memory"));
    }

    #[test]
    fn a_memory_empty_dir_is_a_tmpfs_of_its_size_limit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = VolumeDirs::new(tmp.path());
        let plans = BTreeMap::from([(
            "cache".to_string(),
            VolumePlan::EmptyDir {
                memory: true,
                size_limit_bytes: Some(1024 * 1024),
            },
        )]);
        let paths = match dirs.prepare("default.m-r-0", &plans) {
            Ok(paths) => paths,
            // Without CAP_SYS_ADMIN the start is refused with the reason.
            Err(e) => {
                assert!(e.contains("needs CAP_SYS_ADMIN"), "{e}");
                return;
            }
        };
        let cache = &paths["cache"];
        assert!(is_mount_point(cache));
        fs::write(cache.join("kept"), "x").expect("write");
        dirs.prepare("default.m-r-0", &plans).expect("again");
        assert!(
            cache.join("kept").exists(),
            "not mounted twice over the data"
        );
        // The size limit is the filesystem's size: 2 MiB do not fit.
        let too_big = fs::write(cache.join("big"), vec![0u8; 2 * 1024 * 1024]);
        assert!(too_big.is_err(), "sizeLimit enforced");
        dirs.remove("default.m-r-0").expect("removed");
        assert!(!dirs.replica_dir("default.m-r-0").exists());
    }
}
