//! TLS for tonic, from a tls dir: the server side of every drover listener and
//! the client side of every connection.
//!
//! A client checks more than the chain and the server name: the server's
//! certificate must carry the role URI of what it dialled
//! (`drover://controller/*` for a controller, `drover://agent/<node>` for a
//! node's logs). A certificate the CA signed for an agent is never accepted as
//! a controller's, whatever DNS names it carries.

use std::fmt;
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use super::files::read;
use super::{
    agent_server_name, cert_info, identity_of, PkiError, Result, Role, TlsDir,
    CONTROLLER_SERVER_NAME,
};

/// What a client expects to reach: the server name it verifies and the role
/// (and, for agents, the node) the server's certificate must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// Any controller of the cluster: `controller.drover`, `drover://controller/*`.
    Controller,
    /// One node's agent: `<node>.agent.drover`, `drover://agent/<node>`.
    Agent(String),
}

impl Server {
    /// The agent of `node`, whose name must fit a certificate server name.
    pub fn agent(node: &str) -> Result<Server> {
        agent_server_name(node)?;
        Ok(Server::Agent(node.to_string()))
    }

    /// The DNS name the server's certificate must carry.
    pub fn name(&self) -> Result<String> {
        match self {
            Server::Controller => Ok(CONTROLLER_SERVER_NAME.to_string()),
            Server::Agent(node) => agent_server_name(node),
        }
    }

    /// Whether a certificate's identity is the one this server must have.
    pub fn accepts(&self, identity: Option<&super::Identity>) -> bool {
        match (self, identity) {
            (Server::Controller, Some(id)) => id.role == Role::Controller,
            (Server::Agent(node), Some(id)) => id.role == Role::Agent && &id.name == node,
            (_, None) => false,
        }
    }
}

/// The usual chain and name checks, then the role URI of [`Server`].
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect: Server,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, TlsError> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.expect.accepts(identity_of(end_entity).as_ref()) {
            Ok(verified)
        } else {
            // `Other` shows our sentence; `InvalidCertificate` would show Debug.
            Err(TlsError::Other(tokio_rustls::rustls::OtherError(Arc::new(
                WrongRole(self.expect.clone()),
            ))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server's certificate is the CA's but not of the role dialled.
#[derive(Debug)]
struct WrongRole(Server);

impl fmt::Display for WrongRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Server::Controller => {
                f.write_str("the server's certificate is not a controller's (no drover://controller/ identity)")
            }
            Server::Agent(node) => write!(
                f,
                "the server's certificate is not node {node:?}'s agent (no drover://agent/{node} identity)"
            ),
        }
    }
}

impl std::error::Error for WrongRole {}

/// The PEM material one process authenticates with.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    /// Absent for a client that has no certificate yet (an agent joining).
    pub identity: Option<(String, String)>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// `ca.crt`, `tls.crt` and `tls.key` of a tls dir, checked to parse.
    pub fn read_dir(dir: &TlsDir) -> Result<TlsMaterial> {
        TlsMaterial::read_files(&dir.ca_cert(), Some((&dir.cert(), &dir.key())))
    }

    /// A CA file and optionally a certificate and key file.
    pub fn read_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<TlsMaterial> {
        let ca_pem = read(ca)?;
        cert_info(&ca_pem).map_err(|e| PkiError::File {
            path: ca.display().to_string(),
            reason: e.to_string(),
        })?;
        let identity = match identity {
            Some((cert, key)) => {
                let cert_pem = read(cert)?;
                cert_info(&cert_pem).map_err(|e| PkiError::File {
                    path: cert.display().to_string(),
                    reason: e.to_string(),
                })?;
                let key_pem = read(key)?;
                if !key_pem.contains("PRIVATE KEY") {
                    return Err(PkiError::File {
                        path: key.display().to_string(),
                        reason: "holds no PEM private key".into(),
                    });
                }
                Some((cert_pem, key_pem))
            }
            None => None,
        };
        Ok(TlsMaterial { ca_pem, identity })
    }

    /// For a server: our certificate, and client certificates checked against
    /// the CA but optional (unauthenticated callers reach only the join RPC).
    /// A client that does not finish its handshake within
    /// [`TLS_HANDSHAKE_TIMEOUT`] is dropped.
    pub fn server_config(&self) -> Result<ServerTlsConfig> {
        let (cert, key) = self
            .identity
            .as_ref()
            .ok_or_else(|| PkiError::Invalid("a server needs a certificate and key".into()))?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(TLS_HANDSHAKE_TIMEOUT))
    }

    /// For a client talking to a server whose certificate names `server_name`
    /// (the CA and the role are checked by [`Self::verifier`]).
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().domain_name(server_name);
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }

    /// Checks a server's chain against our CA, its name, and its role URI.
    pub fn verifier(&self, expect: &Server) -> Result<Arc<dyn ServerCertVerifier>> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| PkiError::Invalid(format!("the CA file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| PkiError::Invalid(format!("the CA certificate: {e}")))?;
        }
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(default_provider()),
        )
        .build()
        .map_err(|e| PkiError::Invalid(format!("the CA certificate: {e}")))?;
        Ok(Arc::new(RoleVerifier {
            inner,
            expect: expect.clone(),
        }))
    }
}

/// How long a server waits for a client to finish its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A tonic server builder with the limits every drover listener uses (tonic
/// leaves them unset): streams per connection, HTTP/2 keep-alive (a silent
/// peer is dropped), TCP keep-alive, header size and h2's reset-stream
/// limits (the "rapid reset" floods). Connections per listener are capped
/// by [`crate::limit::limit_connections`] around the listener.
pub fn server_builder() -> tonic::transport::Server {
    use std::time::Duration;
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(256))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_max_header_list_size(Some(64 * 1024))
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(256))
}

/// How a client reaches a drover server: mutual TLS, or plaintext with `--insecure`.
#[derive(Clone, Debug)]
pub enum Security {
    Insecure,
    Tls(Arc<TlsMaterial>),
}

impl Security {
    pub fn tls(material: TlsMaterial) -> Security {
        Security::Tls(Arc::new(material))
    }

    pub fn is_insecure(&self) -> bool {
        matches!(self, Security::Insecure)
    }

    /// Whether both are the same credentials (the same loaded material, not
    /// merely equal files): after a renewal they are not.
    pub fn same_as(&self, other: &Security) -> bool {
        match (self, other) {
            (Security::Insecure, Security::Insecure) => true,
            (Security::Tls(a), Security::Tls(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// An endpoint for `address` (HOST:PORT) whose server must be `server`.
    pub fn endpoint(&self, address: &str, server: &Server) -> Result<Endpoint> {
        let invalid = |e: tonic::transport::Error| {
            PkiError::Invalid(format!("{address:?} is not a valid HOST:PORT ({e})"))
        };
        match self {
            Security::Insecure => {
                Endpoint::from_shared(format!("http://{address}")).map_err(invalid)
            }
            Security::Tls(m) => Endpoint::from_shared(format!("https://{address}"))
                .map_err(invalid)?
                .tls_config_with_verifier(m.client_config(&server.name()?), m.verifier(server)?)
                .map_err(|e| PkiError::Invalid(format!("TLS settings for {address}: {e}"))),
        }
    }
}
