//! A new cluster's PKI, made in one place for `droverctl pki init`, `lab up`
//! and the test harness.
//!
//! ```text
//!  DIR/ca.crt, DIR/ca.key                                 the cluster CA
//!  DIR/controller-NAME/{ca.crt,ca.key,tls.crt,tls.key}    one per controller: --tls-dir
//!  DIR/admin-admin/{ca.crt,tls.crt,tls.key}               the admin's client certificate
//! ```
//!
//! Controllers get the CA key too: they sign the certificates of joining agents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use drover_pki::{self as pki, Ca, CertRequest, Identity, Role, Security, TlsDir, TlsMaterial};

/// A cluster CA on disk and what it issues.
pub struct ClusterPki {
    /// Holds `ca.crt` and `ca.key`.
    pub dir: PathBuf,
    pub ca: Ca,
    ca_key: String,
    /// The admin's tls dir (`DIR/admin-admin`).
    pub admin: TlsDir,
}

impl ClusterPki {
    /// A new CA named after `dir` in `dir` (refused if one is there), and the
    /// admin's client certificate, valid for `validity`.
    pub fn create(dir: &Path, validity: Duration) -> anyhow::Result<ClusterPki> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "drover".into());
        ClusterPki::create_named(dir, &name, validity)
    }

    /// [`ClusterPki::create`] with the CA named `cluster_name`.
    pub fn create_named(
        dir: &Path,
        cluster_name: &str,
        validity: Duration,
    ) -> anyhow::Result<ClusterPki> {
        let root = TlsDir::new(dir);
        if root.ca_key().exists() {
            bail!(
                "{} already holds a CA: remove it first or choose another --dir",
                dir.display()
            );
        }
        pki::create_private_dir(dir)?;
        let (ca, ca_key) = Ca::generate(cluster_name)?;
        pki::write_secret(&root.ca_key(), &ca_key)?;
        pki::write_public(&root.ca_cert(), ca.cert_pem())?;
        let pki = ClusterPki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
            admin: TlsDir::new(dir.join("admin-admin")),
        };
        pki.issue(
            &pki.admin,
            Identity::new(Role::Admin, "admin"),
            vec![],
            validity,
        )?;
        Ok(pki)
    }

    /// Issue a certificate for `identity` (and `hosts`) into `into`; a
    /// controller's dir gets the CA key too, to sign joiners.
    pub fn issue(
        &self,
        into: &TlsDir,
        identity: Identity,
        hosts: Vec<String>,
        validity: Duration,
    ) -> anyhow::Result<()> {
        let ca_key = (identity.role == Role::Controller).then_some(self.ca_key.as_str());
        let issued = self.ca.issue(&CertRequest {
            identity,
            hosts,
            validity,
        })?;
        into.write(self.ca.cert_pem(), &issued, ca_key)?;
        Ok(())
    }

    /// Controller `name`'s tls dir, `DIR/controller-NAME`, issued for `host`.
    pub fn issue_controller(
        &self,
        name: &str,
        host: &str,
        validity: Duration,
    ) -> anyhow::Result<TlsDir> {
        let dir = controller_dir(&self.dir, name);
        self.issue(
            &dir,
            Identity::new(Role::Controller, name),
            vec![host.to_string()],
            validity,
        )?;
        Ok(dir)
    }

    pub fn ca_cert(&self) -> PathBuf {
        TlsDir::new(&self.dir).ca_cert()
    }
}

/// `DIR/controller-NAME`.
pub fn controller_dir(dir: &Path, name: &str) -> TlsDir {
    TlsDir::new(dir.join(format!("controller-{name}")))
}

/// How a client holding the certificate in `dir` connects.
pub fn security(dir: &TlsDir) -> anyhow::Result<Security> {
    let material = TlsMaterial::read_dir(dir).map_err(|e| {
        anyhow::anyhow!("cannot read the credentials in {}: {e}", dir.path.display())
    })?;
    Ok(Security::tls(material))
}
