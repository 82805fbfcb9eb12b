//! `droverctl pki init --dir DIR --controller NAME=HOST ...` and
//! `droverctl pki client --dir DIR --role ROLE --name NAME`.
//!
//! ```text
//!  DIR/ca.crt, DIR/ca.key                 the cluster CA (keep ca.key safe)
//!  DIR/controller-NAME/{ca.crt,ca.key,tls.crt,tls.key}   one per controller: --tls-dir
//!  DIR/admin-admin/{ca.crt,tls.crt,tls.key}              droverctl's admin credentials
//! ```
//!
//! Controllers get the CA key too: they sign the certificates of joining agents.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use drover_lab::pki::ClusterPki;
use drover_pki::{Ca, CertRequest, Identity, Role, TlsDir};
use drover_proto::names;

use super::print;
use crate::cli::{PkiClientArgs, PkiCommand, PkiInitArgs};

pub fn run(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init(args) => init(args),
        PkiCommand::Client(args) => client(args),
    }
}

/// `NAME=HOST[:PORT]` → (name, host).
fn parse_controller(s: &str) -> anyhow::Result<(String, String)> {
    let (name, addr) = s
        .split_once('=')
        .with_context(|| format!("--controller {s:?} is not NAME=HOST[:PORT]"))?;
    names::check_name("controller name", name)
        .map_err(|e| anyhow::anyhow!("--controller {s:?}: {e}"))?;
    let host = if let Some(v6) = addr.strip_prefix('[') {
        v6.split_once(']').map(|(h, _)| h).unwrap_or(v6)
    } else {
        match addr.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => addr,
        }
    };
    if host.is_empty() {
        bail!("--controller {s:?} has no host");
    }
    Ok((name.to_string(), host.to_string()))
}

fn init(args: PkiInitArgs) -> anyhow::Result<()> {
    let controllers = args
        .controllers
        .iter()
        .map(|c| parse_controller(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = create(&args.dir, &controllers, args.validity)?;
    print(&out)
}

/// Create a CA in `dir`, a certificate per controller `(name, host)` and the
/// admin's client certificate (`pki init`), with the [`ClusterPki`] the lab
/// and the test harness use too.
/// Returns what was written, for the user.
pub fn create(
    dir: &Path,
    controllers: &[(String, String)],
    validity: std::time::Duration,
) -> anyhow::Result<String> {
    let pki = ClusterPki::create(dir, validity)?;
    let mut out = format!("CA written to {}\n", pki.ca_cert().display());
    for (name, host) in controllers {
        let cdir = pki.issue_controller(name, host, validity)?;
        out.push_str(&format!(
            "controller {name}: drover-controller --tls-dir {}\n",
            cdir.path.display()
        ));
    }
    let admin = &pki.admin.path;
    out.push_str(&format!(
        "admin client certificate in {}:\n  droverctl config set-context NAME --server HOST:PORT,... --ca {} --cert {} --key {}\n",
        admin.display(),
        admin.join("ca.crt").display(),
        admin.join("tls.crt").display(),
        admin.join("tls.key").display()
    ));
    Ok(out)
}

fn client(args: PkiClientArgs) -> anyhow::Result<()> {
    let role: Role = args.role.parse()?;
    names::check_name("certificate name", &args.name)?;
    let root = TlsDir::new(&args.dir);
    let ca = Ca::read_from(&args.dir)
        .map_err(|e| anyhow::anyhow!("cannot use the CA in {}: {e}", args.dir.display()))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.dir.join(format!("{role}-{}", args.name)));
    let ca_key = if role == Role::Controller {
        Some(
            std::fs::read_to_string(root.ca_key())
                .with_context(|| format!("reading {}", root.ca_key().display()))?,
        )
    } else {
        None
    };
    let dir = issue_into(
        &ca,
        Identity::new(role, args.name.clone()),
        args.hosts.clone(),
        args.validity,
        &out,
        ca_key.as_deref(),
    )?;
    print(&format!(
        "{role} certificate for {:?} written to {} (ca.crt, tls.crt, tls.key)\n",
        args.name,
        dir.display()
    ))
}

fn issue_into(
    ca: &Ca,
    identity: Identity,
    hosts: Vec<String>,
    validity: std::time::Duration,
    dir: &Path,
    ca_key: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let issued = ca.issue(&CertRequest {
        identity,
        hosts,
        validity,
    })?;
    TlsDir::new(dir).write(ca.cert_pem(), &issued, ca_key)?;
    Ok(dir.to_path_buf())
}
