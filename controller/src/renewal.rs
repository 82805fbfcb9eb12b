//! A controller renews its own certificate before it expires, as agents do.
//!
//! ```text
//!  two thirds into tls.crt's lifetime:
//!    new key + CSR ──mTLS as controller/<id>── Security.Renew ──▶ a current member that signs
//!                                               (itself first, then the others)
//!    tls dir ◀── written (the pinned ca.crt kept) ── watch<Security> ──▶ listener restarts with it
//!                                                                    ──▶ raft senders, forwarding
//!                                                                        channels connect again
//! ```
//!
//! Renew accepts a controller only while it is a member, so a removed
//! controller's certificate simply runs out. A failed attempt (no member
//! that can sign is reachable) is retried every second; the certificate in
//! use stays valid until its own expiry meanwhile.

use std::time::{Duration, SystemTime};

use drover_pki::{self as pki, Identity, Issued, Role, Security, TlsDir, TlsMaterial};
use drover_proto::pb;
use drover_proto::pb::security_client::SecurityClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Cluster;

/// Renew the certificate in `dir` for as long as the controller runs,
/// publishing each new one on `tx`.
pub async fn keep_renewed(
    cluster: Cluster,
    dir: TlsDir,
    tx: watch::Sender<Security>,
    shutdown: CancellationToken,
) {
    let id = cluster.handle.id();
    let mut current = tx.borrow().clone();
    loop {
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
        let wait = pki::renew_at(info.not_before, info.not_after)
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match renew_once(&cluster, &current, &dir, id).await {
            Ok(next) => {
                info!(id, "renewed the controller certificate");
                current = next.clone();
                let _ = tx.send(next);
            }
            Err(reason) => {
                warn!(id, error = %reason, "renewing the controller certificate failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// One renewal: this controller first (it signs when its tls dir holds
/// `ca.key`), then every other member.
async fn renew_once(
    cluster: &Cluster,
    current: &Security,
    dir: &TlsDir,
    id: u64,
) -> Result<Security, String> {
    let Security::Tls(material) = current else {
        return Err("renewing needs TLS".to_string());
    };
    let identity = Identity::new(Role::Controller, id.to_string());
    let (csr, key_pem) = pki::new_csr(&identity).map_err(|e| e.to_string())?;
    let request = pb::RenewRequest {
        csr_pem: csr,
        address: cluster.self_address.clone(),
    };
    let mut addresses = vec![cluster.self_address.clone()];
    let members = cluster.store.member_addresses();
    addresses.extend(
        members
            .into_iter()
            .filter(|(m, _)| *m != id)
            .map(|(_, a)| a),
    );
    let mut last = String::from("no members");
    for address in addresses {
        let endpoint = match current.endpoint(&address, &pki::Server::Controller) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10)),
            Err(e) => {
                last = format!("{address}: {e}");
                continue;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                last = format!("{address}: {e}");
                continue;
            }
        };
        match SecurityClient::new(channel).renew(request.clone()).await {
            Ok(resp) => {
                let issued = Issued {
                    cert_pem: resp.into_inner().cert_pem,
                    key_pem,
                };
                let got = pki::cert_info(&issued.cert_pem)
                    .map_err(|e| format!("{address} answered with a bad certificate: {e}"))?
                    .identity;
                if got.as_ref() != Some(&identity) {
                    return Err(format!(
                        "{address} answered with a certificate for {}, not {identity}",
                        got.map_or("no drover identity".to_string(), |i| i.to_string())
                    ));
                }
                // The pinned CA stays: an answer never replaces it.
                dir.write(&material.ca_pem, &issued, None)
                    .map_err(|e| format!("storing the renewed certificate: {e}"))?;
                let renewed = TlsMaterial::read_dir(dir)
                    .map_err(|e| format!("loading the renewed certificate: {e}"))?;
                return Ok(Security::tls(renewed));
            }
            Err(status) => last = format!("{address}: {}", status.message()),
        }
    }
    Err(last)
}
