//! drover's PKI: one CA, certificates that carry a role and a name, join
//! tokens, the TLS settings every drover link is built from, the per-RPC
//! authorization layer ([`authz`]) and the tls-dir files with their modes.
//!
//! **What it may depend on:** `drover-proto` (names), the crypto crates
//! (rcgen, x509-parser, pem, sha2, rand), tonic and tower for TLS settings and
//! the authorization layer, axum for the plaintext metrics listener
//! ([`exposition`]), and the filesystem for tls dirs only. Never the
//! manifest library, the controller or the agent.
//!
//! ```text
//!   droverctl pki init ──▶ ca.crt + ca.key ──signs──▶ controller certs (tls dirs)
//!                                    │                 admin / viewer client certs
//!                                    └── on controllers: signs agents' CSRs (join, renew)
//!
//!   every link:  client ──TLS, client cert──▶ server
//!                server: rustls checks the chain against ca.crt (a client may also
//!                        come without a certificate: only the join RPC admits it);
//!                        then every RPC is authorised from the peer's [`Identity`]
//!                client: checks the server's chain and its role's server name
//!                        (`controller.drover`, `<node>.agent.drover`)
//! ```
//!
//! **Identity.** A certificate says who holds it with one SAN URI
//! `drover://<role>/<name>` (also written as O=<role>, CN=<name> for humans
//! reading `openssl x509 -text`). Only the URI is trusted: the CA never copies
//! names from a CSR, it writes the role and name it decided itself.
//!
//! **A tls dir** holds `ca.crt`, `tls.crt`, `tls.key` and, on controllers that
//! sign agents' certificates, `ca.key`. Keys are written with mode 0600 and
//! directories with mode 0700.

pub mod authz;
pub mod exposition;
mod files;
pub mod limit;
mod tls;
pub mod token;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use drover_proto::names;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

pub use files::{create_private_dir, write_public, write_secret, TlsDir};
pub use tls::{server_builder, Security, Server, TlsMaterial, TLS_HANDSHAKE_TIMEOUT};

/// The server name every controller certificate carries; clients verify it.
pub const CONTROLLER_SERVER_NAME: &str = "controller.drover";

/// The server name an agent's certificate carries: `<node>.agent.drover`, so
/// droverctl knows it reached the node it asked for.
///
/// TLS takes it as a DNS name, so a node name must leave it one: every
/// dot-separated part of the node name at most 63 characters, and the node
/// name at most 240 (253 with the suffix). Checked here, where the name is
/// built, and by the agent at start-up; every other place takes node names by
/// [`drover_proto::names::check_name`].
pub fn agent_server_name(node: &str) -> Result<String> {
    let name = format!("{node}.agent.drover");
    names::check_dns_name(&name).map_err(|reason| {
        PkiError::Invalid(format!(
            "node name {node:?} does not fit the agent's certificate server name {name:?}: {reason}"
        ))
    })?;
    Ok(name)
}

/// CA certificates live this long.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Controller and client certificates from `pki init` / `pki client`.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Agents' node certificates (renewed automatically well before this).
pub const DEFAULT_NODE_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Everything that can go wrong in the PKI, each a sentence.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("creating or signing a certificate failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Name(#[from] names::NameError),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read-only: get, describe, logs, events.
    Viewer,
    /// One node's agent: its own session only.
    Agent,
    /// A controller: raft, forwarded writes, peer status.
    Controller,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Viewer, Role::Agent, Role::Controller];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
            Role::Controller => "controller",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                PkiError::Invalid(format!(
                    "unknown role {s:?}: expected admin, viewer, agent or controller"
                ))
            })
    }
}

/// Who a verified certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Identity {
        Identity {
            role,
            name: name.into(),
        }
    }

    /// The SAN URI that carries this identity.
    pub fn uri(&self) -> String {
        format!("drover://{}/{}", self.role, self.name)
    }

    fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("drover://")?;
        let (role, name) = rest.split_once('/')?;
        let role = role.parse().ok()?;
        check_holder_name(name).ok()?;
        Some(Identity::new(role, name))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

/// Checks a certificate holder's name: the one rule for node and object
/// names, [`drover_proto::names::check_name`].
fn check_holder_name(name: &str) -> Result<()> {
    Ok(names::check_name("certificate name", name)?)
}

/// The identity in a verified peer certificate (DER). `None` when it carries
/// no drover identity (a certificate from the CA but not made by drover).
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => Identity::from_uri(uri),
        _ => None,
    })
}

/// Facts about a certificate file, for messages and renewal.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub identity: Option<Identity>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// When a certificate should be renewed: two thirds into its lifetime (at
/// once for one whose end comes before its start).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(std::time::Duration::ZERO);
    not_before + life * 2 / 3
}

/// Read a PEM certificate's identity and validity.
pub fn cert_info(pem: &str) -> Result<CertInfo> {
    let der = first_pem_der(pem, "CERTIFICATE")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Invalid(format!("not a valid certificate: {e}")))?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok(CertInfo {
        identity: identity_of(&der),
        not_before: at(cert.validity().not_before.timestamp()),
        not_after: at(cert.validity().not_after.timestamp()),
    })
}

/// A time as RFC 3339 UTC, seconds precision (`2026-11-29T01:52:24Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (unix seconds)"))
}

fn first_pem_der(pem: &str, label: &str) -> Result<Vec<u8>> {
    let parsed = pem::parse_many(pem)
        .map_err(|e| PkiError::Invalid(format!("not PEM ({e})")))?
        .into_iter()
        .find(|p| p.tag() == label)
        .ok_or_else(|| PkiError::Invalid(format!("holds no {label}")))?;
    Ok(parsed.into_contents())
}

/// The SHA-256 of the CA certificate (DER), hex: pinned by join tokens.
pub fn ca_fingerprint(ca_pem: &str) -> Result<String> {
    let der = first_pem_der(ca_pem, "CERTIFICATE")?;
    Ok(hex(&Sha256::digest(&der)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// The cluster CA: signs every drover certificate.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// What one certificate is for.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub identity: Identity,
    /// Extra server names: DNS names or IP addresses.
    pub hosts: Vec<String>,
    pub validity: Duration,
}

impl Ca {
    /// A new CA, returned with its key (the caller stores both).
    pub fn generate(cluster: &str) -> Result<(Ca, String)> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "drover");
        dn.push(DnType::CommonName, format!("drover cluster CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok((
            Ca {
                cert_pem,
                issuer: Issuer::new(params, key),
            },
            key_pem,
        ))
    }

    /// The CA from its PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::Invalid(format!("the CA key is not a valid key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| PkiError::Invalid(format!("the CA certificate is not valid: {e}")))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// Read `ca.crt` and `ca.key` from a directory.
    pub fn read_from(dir: &Path) -> Result<Ca> {
        let cert = files::read(&dir.join(files::CA_CERT))?;
        let key = files::read(&dir.join(files::CA_KEY))?;
        Ca::load(&cert, &key)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A new key and a certificate for it.
    pub fn issue(&self, req: &CertRequest) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let params = leaf_params(req)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Sign the public key of a CSR (PEM). Everything else in the CSR — its
    /// names, extensions — is ignored: the certificate says what `req` says.
    pub fn sign_csr(&self, csr_pem: &str, req: &CertRequest) -> Result<String> {
        self.sign_csr_at_epoch(csr_pem, req, 0)
    }

    /// [`Ca::sign_csr`], the certificate's serial carrying `epoch` (see
    /// [`serial_epoch`]): how many times its holder's node name was deleted
    /// before it was issued.
    pub fn sign_csr_at_epoch(
        &self,
        csr_pem: &str,
        req: &CertRequest,
        epoch: u64,
    ) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::Invalid(format!("the certificate signing request is not valid: {e}"))
        })?;
        let mut params = leaf_params(req)?;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial(epoch)));
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.pem())
    }
}

/// A new private key and a CSR for it (the CA decides what the certificate says).
pub fn new_csr(identity: &Identity) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.name.clone());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

fn leaf_params(req: &CertRequest) -> Result<CertificateParams> {
    check_holder_name(&req.identity.name)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, req.identity.role.as_str());
    dn.push(DnType::CommonName, req.identity.name.clone());
    params.distinguished_name = dn;
    let uri = req
        .identity
        .uri()
        .try_into()
        .map_err(|e| PkiError::Invalid(format!("identity URI: {e}")))?;
    params.subject_alt_names.push(SanType::URI(uri));
    let server_name = match req.identity.role {
        Role::Controller => Some(CONTROLLER_SERVER_NAME.to_string()),
        Role::Agent => Some(agent_server_name(&req.identity.name)?),
        Role::Admin | Role::Viewer => None,
    };
    let mut hosts: Vec<String> = server_name.into_iter().collect();
    if matches!(req.identity.role, Role::Controller | Role::Agent) {
        hosts.extend(req.hosts.iter().cloned());
    }
    for (i, host) in hosts.iter().enumerate() {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // The role's own server name comes first; extra DNS names may
                // never make one role look like another.
                if i > 0 {
                    check_extra_dns_name(host)?;
                }
                SanType::DnsName(host.as_str().try_into().map_err(|e| {
                    PkiError::Invalid(format!("{host:?} is not a valid host name: {e}"))
                })?)
            }
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match req.identity.role {
        Role::Controller | Role::Agent => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Admin | Role::Viewer => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, req.validity);
    Ok(params)
}

/// An extra DNS name for a certificate: never under `.drover`, whose names
/// say a role (`controller.drover`, `<node>.agent.drover`). Other names are
/// for whoever holds the CA key (`droverctl pki client --host`); the
/// controllers' signer never passes any (see the controller's `Join`).
fn check_extra_dns_name(host: &str) -> Result<()> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower == "drover" || lower.ends_with(".drover") {
        return Err(PkiError::Invalid(format!(
            "{host:?} is in drover's own name zone, which only the CA assigns"
        )));
    }
    Ok(())
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that differ between hosts (a quarter of a
    // short lifetime at most, so renewal at 2/3 still comes before expiry).
    let secs = validity.as_secs().max(1) as i64;
    params.not_before = now - time::Duration::seconds((secs / 4).min(300));
    params.not_after = now + time::Duration::seconds(secs);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial(0)));
}

/// The first byte of a serial that carries an epoch.
const SERIAL_FORMAT: u8 = 0x01;

/// A certificate serial: the format byte (which keeps it positive), the
/// epoch (big-endian), then 56 random bits.
fn serial(epoch: u64) -> [u8; 16] {
    let mut b: [u8; 16] = rand::random();
    b[0] = SERIAL_FORMAT;
    b[1..9].copy_from_slice(&epoch.to_be_bytes());
    b
}

/// The epoch a certificate (DER) was issued at: 0 for one of no epoch
/// (issued by `pki init`/`pki client`). A controller refuses a node
/// certificate whose epoch is older than the node name's current one: the
/// name was deleted since (`droverctl delete node`), which revokes it.
/// Certificates from before serials carried epochs have random serials, and
/// one in 128 of them reads as some epoch.
pub fn serial_epoch(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let raw = cert.raw_serial();
    if raw.len() != 16 || raw[0] != SERIAL_FORMAT {
        return Some(0);
    }
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&raw[1..9]);
    Some(u64::from_be_bytes(epoch))
}

#[cfg(test)]
mod tests;
