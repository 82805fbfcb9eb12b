//! Getting and keeping a node certificate.
//!
//! ```text
//!  first start, --join-token T --ca ca.crt:
//!    check ca.crt is the CA T was made for (T pins its SHA-256)
//!    new key + CSR ──TLS (no client cert)── Security.Join(T, node, CSR) ──▶ a controller
//!    ◀── certificate for drover://agent/<node>; key 0600 and cert into the tls dir
//!  later starts: the tls dir is enough, no token
//!
//!  running: at 2/3 of the certificate's lifetime
//!    new key + CSR ──mTLS as agent/<node>── Security.Renew ──▶ a controller
//!    ◀── fresh certificate; files replaced; new sessions and the logs server use it
//! ```

use std::time::{Duration, SystemTime};

use drover_pki::token::JoinToken;
use drover_pki::{self as pki, Identity, Issued, Role, Security, TlsDir, TlsMaterial};
use drover_proto::pb;
use drover_proto::pb::security_client::SecurityClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{info, warn};

use crate::error::{AgentError, Result};
use crate::session::error_chain;

/// How long joining keeps trying unreachable controllers before giving up.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// A join the agent must do before it starts.
#[derive(Clone)]
pub struct JoinPlan {
    pub token: JoinToken,
    pub ca_pem: String,
    pub dir: TlsDir,
}

impl std::fmt::Debug for JoinPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinPlan")
            .field("token", &self.token)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl JoinPlan {
    /// Check the token's form and that `ca_pem` is the CA it pins.
    pub fn new(token: &str, ca_pem: String, ca_path: &str, dir: TlsDir) -> Result<JoinPlan> {
        let token = JoinToken::parse(token).map_err(|e| AgentError::Config(e.to_string()))?;
        let fingerprint = pki::ca_fingerprint(&ca_pem)
            .map_err(|e| AgentError::Config(format!("--ca {ca_path}: {e}")))?;
        if fingerprint != token.ca_fingerprint {
            return Err(AgentError::Config(format!(
                "the CA in {ca_path} is not the one the join token was made for: use the cluster's ca.crt"
            )));
        }
        Ok(JoinPlan { token, ca_pem, dir })
    }
}

/// Join: returns the node's credentials, written to the plan's tls dir.
pub async fn join(
    plan: &JoinPlan,
    node: &str,
    address: &str,
    controllers: &[String],
    shutdown: &CancellationToken,
) -> Result<Security> {
    let (csr, key_pem) = pki::new_csr(&Identity::new(Role::Agent, node))
        .map_err(|e| AgentError::Config(format!("creating a key: {e}")))?;
    let anonymous = Security::tls(TlsMaterial {
        ca_pem: plan.ca_pem.clone(),
        identity: None,
    });
    let request = pb::JoinRequest {
        token: plan.token.reveal(),
        node: node.to_string(),
        csr_pem: csr,
        address: address.to_string(),
    };
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    let mut last = String::new();
    loop {
        for addr in controllers {
            match call(&anonymous, addr, |mut c| {
                let r = request.clone();
                async move { c.join(r).await }
            })
            .await
            {
                Ok(resp) => {
                    let issued = Issued {
                        cert_pem: resp.cert_pem,
                        key_pem: key_pem.clone(),
                    };
                    // The CA stays the one the token pinned, whatever the answer says.
                    plan.dir.write(&plan.ca_pem, &issued, None).map_err(|e| {
                        AgentError::Config(format!("storing the node certificate: {e}"))
                    })?;
                    info!(node = %node, token = %plan.token.id, tls_dir = %plan.dir.path.display(), "joined the cluster: node certificate stored");
                    return crate::config::load_node_tls(&plan.dir, node);
                }
                Err(Failure::Refused(message)) => {
                    return Err(AgentError::Config(format!(
                        "the cluster refused to let this agent join: {message}"
                    )))
                }
                Err(Failure::Unreachable(reason)) => last = format!("{addr}: {reason}"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Config(format!(
                "could not join: no controller answered within {}s (last: {last})",
                JOIN_PATIENCE.as_secs()
            )));
        }
        warn!(last = %last, "no controller answered the join; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Err(AgentError::Config("stopped while joining".into())),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

enum Failure {
    /// The controller answered no: retrying does not help.
    Refused(String),
    Unreachable(String),
}

async fn call<T, F, Fut>(security: &Security, addr: &str, rpc: F) -> std::result::Result<T, Failure>
where
    F: FnOnce(SecurityClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let endpoint = security
        .endpoint(addr, &pki::Server::Controller)
        .map_err(|e| Failure::Refused(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::Unreachable(error_chain(&e)))?;
    match rpc(SecurityClient::new(channel)).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s)
            if matches!(
                s.code(),
                Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
            ) =>
        {
            Err(Failure::Refused(s.message().to_string()))
        }
        Err(s) => Err(Failure::Unreachable(s.message().to_string())),
    }
}

/// When a certificate should be renewed: two thirds into its lifetime
/// (controllers renew theirs on the same schedule).
pub use drover_pki::renew_at;

/// Renew the node certificate in `dir` before it expires, for as long as the
/// agent runs; every new certificate is published on `tx`.
pub async fn keep_renewed(
    dir: TlsDir,
    node: String,
    address: String,
    controllers: Vec<String>,
    tx: watch::Sender<Security>,
    shutdown: CancellationToken,
) {
    loop {
        let current = tx.borrow().clone();
        let Security::Tls(material) = &current else {
            return;
        };
        let Some(info) = material
            .identity
            .as_ref()
            .and_then(|(cert, _)| pki::cert_info(cert).ok())
        else {
            return;
        };
        let due = renew_at(info.not_before, info.not_after);
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match renew_once(&current, &dir, &node, &address, &controllers).await {
            Ok(next) => {
                info!(node = %node, "renewed the node certificate");
                let _ = tx.send(next);
            }
            Err(reason) => {
                warn!(node = %node, error = %reason, "renewing the node certificate failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

async fn renew_once(
    current: &Security,
    dir: &TlsDir,
    node: &str,
    address: &str,
    controllers: &[String],
) -> std::result::Result<Security, String> {
    let (csr, key_pem) =
        pki::new_csr(&Identity::new(Role::Agent, node)).map_err(|e| e.to_string())?;
    let request = pb::RenewRequest {
        csr_pem: csr,
        address: address.to_string(),
    };
    let mut last = String::from("no controllers");
    for addr in controllers {
        match call(current, addr, |mut c| {
            let r = request.clone();
            async move { c.renew(r).await }
        })
        .await
        {
            Ok(resp) => {
                let issued = Issued {
                    cert_pem: resp.cert_pem,
                    key_pem,
                };
                // The pinned CA stays: an answer never replaces it.
                let Security::Tls(material) = current else {
                    return Err("renewing needs TLS".to_string());
                };
                dir.write(&material.ca_pem, &issued, None)
                    .map_err(|e| e.to_string())?;
                return crate::config::load_node_tls(dir, node).map_err(|e| e.to_string());
            }
            Err(Failure::Refused(m)) | Err(Failure::Unreachable(m)) => {
                last = format!("{addr}: {m}")
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let end = start + Duration::from_secs(300);
        assert_eq!(renew_at(start, end), start + Duration::from_secs(200));
        assert_eq!(
            renew_at(end, start),
            end,
            "a backwards certificate is due at once"
        );
    }
}
