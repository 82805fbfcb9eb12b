//! TLS for tonic, from a tls dir: the server side of every drover listener and
//! the client side of every connection.

use std::fmt;
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use super::files::read;
use super::{cert_info, PkiError, Result, TlsDir};

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
    pub fn server_config(&self) -> Result<ServerTlsConfig> {
        let (cert, key) = self
            .identity
            .as_ref()
            .ok_or_else(|| PkiError::Invalid("a server needs a certificate and key".into()))?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true))
    }

    /// For a client talking to a server whose certificate names `server_name`.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(server_name);
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
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

    /// An endpoint for `address` (HOST:PORT) whose server must be `server_name`.
    pub fn endpoint(&self, address: &str, server_name: &str) -> Result<Endpoint> {
        let invalid = |e: tonic::transport::Error| {
            PkiError::Invalid(format!("{address:?} is not a valid HOST:PORT ({e})"))
        };
        match self {
            Security::Insecure => {
                Endpoint::from_shared(format!("http://{address}")).map_err(invalid)
            }
            Security::Tls(m) => Endpoint::from_shared(format!("https://{address}"))
                .map_err(invalid)?
                .tls_config(m.client_config(server_name))
                .map_err(|e| PkiError::Invalid(format!("TLS settings for {address}: {e}"))),
        }
    }
}
