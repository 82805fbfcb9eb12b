//! `drover.v1.Security`: join tokens and node certificates.
//!
//! ```text
//!  admin ──CreateToken(role, ttl)──▶ raft: token/<id> {sha256(secret), role, expiry}
//!                 ◀── drover-1-<ca sha256>-<id>-<secret>  (shown once)
//!  new agent ──TLS, no client cert── Join(token, node, CSR) ──▶ any controller
//!        linearizable read of token/<id>; hash, expiry, revocation checked
//!                 ◀── certificate for drover://agent/<node>, signed here
//!  agent ──mTLS as agent/<node>── Renew(CSR) ──▶ a fresh certificate, same node
//! ```
//!
//! Secrets never reach a log line or an error message: only token ids do.

use std::sync::Arc;
use std::time::Duration;

use drover_pki::authz::Caller;
use drover_pki::token::{hashes_equal, JoinToken};
use drover_pki::{self as pki, Ca, CertRequest, Identity, Role};
use drover_proto::{names, pb};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::cluster::{now_unix_ms, Cluster};
use crate::store::{Command, TokenRecord, Write};

/// Tokens live this long unless `--ttl` says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What this controller signs with, when its tls dir holds `ca.key`.
pub struct Signer {
    pub ca: Ca,
    pub fingerprint: String,
    pub node_validity: Duration,
}

pub struct SecurityService {
    pub cluster: Cluster,
    /// None: this controller cannot sign (no ca.key, or --insecure).
    pub signer: Option<Arc<Signer>>,
}

impl SecurityService {
    fn signer(&self) -> Result<&Signer, Status> {
        self.signer.as_deref().ok_or_else(|| {
            Status::failed_precondition(format!(
                "controller {} cannot sign certificates: its --tls-dir has no ca.key (or it runs --insecure)",
                self.cluster.handle.id()
            ))
        })
    }

    /// Signs `csr` for `identity`. The certificate's names come from the
    /// identity (`<node>.agent.drover`, `controller.drover`), never from the
    /// caller: of `address` only an IP address is kept, as an IP SAN, which
    /// no client takes for a role (they check the DNS name and role URI).
    fn sign(&self, csr: &str, identity: Identity, address: &str) -> Result<String, Status> {
        let signer = self.signer()?;
        let host = address_ip(address);
        signer
            .ca
            .sign_csr(
                csr,
                &CertRequest {
                    identity,
                    hosts: host.map(|ip| ip.to_string()).into_iter().collect(),
                    validity: signer.node_validity,
                },
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// The IP address of a `HOST:PORT` a member reported, if HOST is one (and
/// not unspecified); host names are dropped.
fn address_ip(address: &str) -> Option<std::net::IpAddr> {
    let (host, _) = address.rsplit_once(':')?;
    let ip: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    (!ip.is_unspecified()).then_some(ip)
}

impl SecurityService {
    /// Whether `name` is the member id of a current controller member.
    fn is_member(&self, name: &str) -> Result<bool, Status> {
        let members = self.cluster.store.members();
        Ok(members.iter().any(|m| m.id.to_string() == name))
    }

    /// A token makes new members, never a second certificate for an existing
    /// one: a registered node or a current controller member keeps its name
    /// (there is no `droverctl delete node` yet, so a node name is taken for
    /// good once registered).
    fn check_name_is_free(&self, role: Role, name: &str, token: &str) -> Result<(), Status> {
        let taken = match role {
            Role::Agent => self.cluster.store.node(name).is_some(),
            Role::Controller => self.is_member(name)?,
            Role::Admin | Role::Viewer => true,
        };
        if !taken {
            return Ok(());
        }
        warn!(token = %token, node = %name, role = %role, "refused a join: the name is taken");
        Err(Status::permission_denied(match role {
            Role::Controller => format!(
                "controller {name} is already a member: remove it with droverctl cluster remove before it joins again"
            ),
            _ => format!(
                "node {name:?} is already registered: a join token cannot take over its name; join a rebuilt host under a new name"
            ),
        }))
    }
}

fn info_of(t: &TokenRecord) -> pb::JoinToken {
    pb::JoinToken {
        id: t.id.clone(),
        role: t.role.clone(),
        created_unix_ms: t.created_unix_ms,
        expires_unix_ms: t.expires_unix_ms,
        revoked: t.revoked,
    }
}

#[tonic::async_trait]
impl pb::security_server::Security for SecurityService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let req = request.into_inner();
        // First, so that no log line below carries an unchecked name.
        names::check_name("node name", &req.node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let signer = self.signer()?;
        if token.ca_fingerprint != signer.fingerprint {
            return Err(Status::permission_denied(
                "the join token was made for another cluster (its CA fingerprint differs)",
            ));
        }
        // Linearizable: a revocation acknowledged anywhere is seen here.
        self.cluster.read_barrier(None).await?;
        let record = self
            .cluster
            .store
            .token(&token.id)
            .filter(|r| hashes_equal(r.secret_hash(), &token.secret_hash()));
        let Some(record) = record else {
            warn!(token = %token.id, node = %req.node, "refused a join: unknown token");
            return Err(Status::permission_denied(
                "the join token is not valid for this cluster: create one with droverctl token create",
            ));
        };
        if record.revoked {
            warn!(token = %record.id, node = %req.node, "refused a join: revoked token");
            return Err(Status::permission_denied(format!(
                "join token {} has been revoked: create a new one with droverctl token create",
                record.id
            )));
        }
        if record.expires_unix_ms <= now_unix_ms() {
            warn!(token = %record.id, node = %req.node, "refused a join: expired token");
            return Err(Status::permission_denied(format!(
                "join token {} expired: create a new one with droverctl token create",
                record.id
            )));
        }
        let role: Role = record
            .role
            .parse()
            .map_err(|e: pki::PkiError| Status::internal(e.to_string()))?;
        if !matches!(role, Role::Agent | Role::Controller) {
            warn!(token = %record.id, role = %role, "refused a join: a token of a role joins never issue");
            return Err(Status::permission_denied(format!(
                "join token {} is for role {role}: joins issue agent and controller certificates only",
                record.id
            )));
        }
        self.check_name_is_free(role, &req.node, &record.id)?;
        let cert_pem = self.sign(
            &req.csr_pem,
            Identity::new(role, req.node.clone()),
            &req.address,
        )?;
        info!(token = %record.id, node = %req.node, role = %role, "issued a certificate to a joining member");
        Ok(Response::new(pb::JoinResponse {
            cert_pem,
            ca_pem: signer.ca.cert_pem().to_string(),
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let identity = match Caller::of(&request) {
            Caller::Verified(id) if id.role == Role::Agent => id,
            // A controller renews only while it is a member.
            Caller::Verified(id)
                if id.role == Role::Controller && self.is_member(&id.name)? =>
            {
                id
            }
            _ => {
                return Err(Status::permission_denied(
                    "only an agent or a current controller member renews its own certificate here; issue others with droverctl pki client",
                ))
            }
        };
        let req = request.into_inner();
        let cert_pem = self.sign(&req.csr_pem, identity.clone(), &req.address)?;
        info!(role = %identity.role, name = %identity.name, "renewed a certificate");
        Ok(Response::new(pb::JoinResponse {
            cert_pem,
            ca_pem: self.signer()?.ca.cert_pem().to_string(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = request.into_inner();
        let role = match req.role.as_str() {
            "agent" => Role::Agent,
            "controller" => Role::Controller,
            other => {
                return Err(Status::invalid_argument(format!(
                    "a join token's role is agent or controller, not {other:?}"
                )))
            }
        };
        let fingerprint = match &self.signer {
            Some(s) => s.fingerprint.clone(),
            None => {
                return Err(self
                    .signer()
                    .err()
                    .unwrap_or_else(|| Status::internal("no signer")))
            }
        };
        let ttl = if req.ttl_seconds == 0 {
            DEFAULT_TOKEN_TTL
        } else {
            Duration::from_secs(req.ttl_seconds)
        };
        let token = JoinToken::generate(&fingerprint);
        let now = now_unix_ms();
        let record = TokenRecord {
            id: token.id.clone(),
            role: role.as_str().to_string(),
            secret_sha256: token.secret_hash(),
            created_unix_ms: now,
            expires_unix_ms: now.saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64),
            revoked: false,
        };
        self.cluster
            .write(Write::Command(Command::CreateToken {
                token: record.clone(),
            }))
            .await?;
        info!(token = %record.id, role = %record.role, "created a join token");
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.reveal(),
            info: Some(info_of(&record)),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.cluster.read_barrier(None).await?;
        let tokens = self.cluster.store.tokens();
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(info_of).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id = request.into_inner().id;
        self.cluster
            .write(Write::Command(Command::RevokeToken { id: id.clone() }))
            .await?;
        self.cluster.read_barrier(None).await?;
        let token = self.cluster.store.token(&id);
        info!(token = %id, "revoked a join token");
        Ok(Response::new(pb::RevokeTokenResponse {
            token: token.as_ref().map(info_of),
        }))
    }
}
