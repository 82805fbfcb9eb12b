//! A tls dir on disk: `ca.crt`, `tls.crt`, `tls.key`, optionally `ca.key`.
//! Keys are written with mode 0600 and directories with mode 0700, through a
//! temporary file renamed over the old one so a crash never leaves half a key.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{Issued, PkiError, Result};

pub(crate) const CA_CERT: &str = "ca.crt";
pub(crate) const CA_KEY: &str = "ca.key";
const CERT: &str = "tls.crt";
const KEY: &str = "tls.key";

/// The files one drover process authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDir {
    pub path: PathBuf,
}

impl TlsDir {
    pub fn new(path: impl Into<PathBuf>) -> TlsDir {
        TlsDir { path: path.into() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.path.join(CA_CERT)
    }
    pub fn ca_key(&self) -> PathBuf {
        self.path.join(CA_KEY)
    }
    pub fn cert(&self) -> PathBuf {
        self.path.join(CERT)
    }
    pub fn key(&self) -> PathBuf {
        self.path.join(KEY)
    }

    /// True when the dir holds a certificate and key (an agent that joined).
    pub fn has_identity(&self) -> bool {
        self.cert().exists() && self.key().exists() && self.ca_cert().exists()
    }

    /// True when this dir can sign certificates (holds the CA key).
    pub fn can_sign(&self) -> bool {
        self.ca_key().exists()
    }

    /// Write a CA certificate, an issued certificate and key, and optionally the CA key.
    pub fn write(&self, ca_pem: &str, issued: &Issued, ca_key_pem: Option<&str>) -> Result<()> {
        create_private_dir(&self.path)?;
        write_public(&self.ca_cert(), ca_pem)?;
        // The key first: a certificate without its key is useless, the other
        // way round a retry fixes it.
        write_secret(&self.key(), &issued.key_pem)?;
        write_public(&self.cert(), &issued.cert_pem)?;
        if let Some(k) = ca_key_pem {
            write_secret(&self.ca_key(), k)?;
        }
        Ok(())
    }
}

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| PkiError::File {
        path: path.display().to_string(),
        reason: io_reason(&e),
    })
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

fn file_error(path: &Path, e: std::io::Error) -> PkiError {
    PkiError::File {
        path: path.display().to_string(),
        reason: io_reason(&e),
    }
}

/// Create `dir` (and parents) and restrict it to its owner.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| file_error(dir, e))?;
    }
    Ok(())
}

/// Write a secret (a private key) readable by its owner only.
pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    write_with_mode(path, contents, 0o600)
}

/// Write a certificate (public): mode 0644.
pub fn write_public(path: &Path, contents: &str) -> Result<()> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover from a crash (or a link someone planted) goes first; the
    // new file is then created exclusively (O_CREAT|O_EXCL, which never
    // follows a symbolic link), so a secret is never written through one.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(file_error(&tmp, e)),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let _ = mode;
    let mut f = options.open(&tmp).map_err(|e| file_error(&tmp, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The umask may have narrowed the mode open(2) applied.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| file_error(&tmp, e))?;
    }
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}
