//! Authorising every RPC from the caller's verified certificate.
//!
//! ```text
//!  TLS handshake (chain checked against the CA; a client cert is optional)
//!     └─▶ AuthorizeLayer: path ──policy──▶ Rule ──▶ the caller's Identity fits? ──no──▶ PermissionDenied + log
//!                                                        │yes
//!                                                        ▼
//!                                  handler (reads the [`Caller`] extension for finer checks)
//! ```
//!
//! The layer runs before any handler and so before any request body is
//! decoded: a raft message from a non-controller never reaches the raft
//! crate's protobuf 2 decoder.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tracing::warn;

use super::{identity_of, Identity, Role};

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone who completed the TLS handshake, with or without a certificate.
    Anyone,
    /// A certificate with one of these roles.
    Roles(&'static [Role]),
}

/// Maps a gRPC path (`/drover.v1.Control/Apply`) to its rule.
pub type Policy = fn(&str) -> Rule;

/// Who made a call, as the handler sees it (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server runs with `--insecure`: nobody is authenticated.
    Insecure,
    /// A TLS client without a certificate (only [`Rule::Anyone`] lets it through).
    Anonymous,
    Verified(Identity),
}

impl Caller {
    /// The caller of a request that passed an [`AuthorizeLayer`].
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous)
    }
}

/// Checks every call against a policy; with `enforce` false (an `--insecure`
/// server) it only marks calls as [`Caller::Insecure`].
#[derive(Clone, Copy)]
pub struct AuthorizeLayer {
    policy: Policy,
    enforce: bool,
}

impl AuthorizeLayer {
    pub fn new(policy: Policy, enforce: bool) -> AuthorizeLayer {
        AuthorizeLayer { policy, enforce }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy,
            enforce: self.enforce,
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Policy,
    enforce: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let caller = if self.enforce {
            let path = req.uri().path().to_string();
            let info = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .cloned();
            let identity = info
                .as_ref()
                .and_then(|i| i.peer_certs())
                .and_then(|certs| certs.first().map(|c| identity_of(c)));
            match authorize((self.policy)(&path), &path, identity) {
                Ok(caller) => caller,
                Err((status, who)) => {
                    let remote = info.as_ref().and_then(|i| i.get_ref().remote_addr());
                    warn!(method = %path, caller = %who, remote = ?remote, reason = %status.message(), "refused a call");
                    let response = status.into_http::<R>();
                    return Box::pin(async move { Ok(response) });
                }
            }
        } else {
            Caller::Insecure
        };
        req.extensions_mut().insert(caller);
        // The clone is the ready one's twin; swap so the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

/// `identity`: None without a client certificate; Some(None) for a
/// certificate that carries no drover identity.
fn authorize(
    rule: Rule,
    path: &str,
    identity: Option<Option<Identity>>,
) -> Result<Caller, (Status, String)> {
    let method = path.rsplit('/').next().unwrap_or(path);
    match (rule, identity) {
        (Rule::Anyone, Some(Some(id))) => Ok(Caller::Verified(id)),
        (Rule::Anyone, _) => Ok(Caller::Anonymous),
        (Rule::Roles(roles), None) => Err((
            Status::unauthenticated(format!(
                "{method} needs a client certificate (role {}) signed by this cluster's CA: \
                 pass --ca, --cert and --key (or set them in the context)",
                list(roles)
            )),
            "anonymous".to_string(),
        )),
        (Rule::Roles(_), Some(None)) => Err((
            Status::permission_denied(
                "the client certificate carries no drover identity: issue one with droverctl pki client",
            ),
            "unknown certificate".to_string(),
        )),
        (Rule::Roles(roles), Some(Some(id))) if roles.contains(&id.role) => {
            Ok(Caller::Verified(id))
        }
        (Rule::Roles(roles), Some(Some(id))) => Err((
            Status::permission_denied(format!(
                "permission denied: {id} may not call {method} (it needs role {})",
                list(roles)
            )),
            id.to_string(),
        )),
    }
}

fn list(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Controllers' listener: the Control API for people, raft for peers, the
/// dispatcher for agents, join for newcomers.
pub fn controller_policy(path: &str) -> Rule {
    const ADMIN: &[Role] = &[Role::Admin];
    const READ: &[Role] = &[Role::Admin, Role::Viewer];
    const PEER: &[Role] = &[Role::Controller];
    const AGENT: &[Role] = &[Role::Agent];
    const RENEW: &[Role] = &[Role::Agent, Role::Controller];
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        "drover.v1.Raft" => Rule::Roles(PEER),
        "drover.v1.Dispatcher" => Rule::Roles(AGENT),
        "drover.v1.Security" => match method {
            "Join" => Rule::Anyone,
            "Renew" => Rule::Roles(RENEW),
            _ => Rule::Roles(ADMIN),
        },
        "drover.v1.Control" if is_read(method) => Rule::Roles(READ),
        // Every other call, including ones added later, needs an admin.
        _ => Rule::Roles(ADMIN),
    }
}

/// An agent's listener: logs, for people and controllers; exec and
/// port-forward (a shell in a replica, its unpublished ports) for admins only.
pub fn agent_policy(path: &str) -> Rule {
    const LOGS: &[Role] = &[Role::Admin, Role::Viewer, Role::Controller];
    const ADMIN: &[Role] = &[Role::Admin];
    const NONE: &[Role] = &[];
    match path {
        "/drover.v1.Agent/Logs" => Rule::Roles(LOGS),
        "/drover.v1.Agent/Exec" | "/drover.v1.Agent/PortForward" => Rule::Roles(ADMIN),
        _ => Rule::Roles(NONE),
    }
}

/// Read-only Control methods, which viewers may call.
fn is_read(method: &str) -> bool {
    ["List", "Get", "Watch", "Describe"]
        .iter()
        .any(|p| method.starts_with(p))
        || matches!(method, "ClusterStatus" | "Version" | "Top")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, name: &str) -> Option<Option<Identity>> {
        Some(Some(Identity::new(role, name)))
    }

    #[test]
    fn roles_reach_only_their_methods() {
        let p = controller_policy;
        let ok = |path: &str, who| authorize(p(path), path, who).is_ok();
        assert!(ok("/drover.v1.Control/Apply", id(Role::Admin, "a")));
        assert!(!ok("/drover.v1.Control/Apply", id(Role::Viewer, "v")));
        assert!(ok("/drover.v1.Control/ListReplicas", id(Role::Viewer, "v")));
        assert!(ok(
            "/drover.v1.Control/ClusterStatus",
            id(Role::Viewer, "v")
        ));
        assert!(!ok(
            "/drover.v1.Control/ListReplicas",
            id(Role::Agent, "n1")
        ));
        assert!(ok("/drover.v1.Control/Top", id(Role::Viewer, "v")));
        assert!(!ok("/drover.v1.Control/Top", id(Role::Agent, "n1")));
        assert!(!ok("/drover.v1.Control/Scale", id(Role::Controller, "c1")));
        // A Secret's key names and sizes for viewers, its values for admins only.
        assert!(ok("/drover.v1.Control/ListSecrets", id(Role::Viewer, "v")));
        assert!(ok(
            "/drover.v1.Control/ListConfigMaps",
            id(Role::Viewer, "v")
        ));
        assert!(!ok(
            "/drover.v1.Control/RevealSecrets",
            id(Role::Viewer, "v")
        ));
        assert!(ok("/drover.v1.Control/RevealSecrets", id(Role::Admin, "a")));
        assert!(!ok(
            "/drover.v1.Control/DeleteConfigObjects",
            id(Role::Viewer, "v")
        ));
        assert!(ok("/drover.v1.Control/ListServices", id(Role::Viewer, "v")));
        assert!(ok(
            "/drover.v1.Control/ListEndpoints",
            id(Role::Viewer, "v")
        ));
        assert!(!ok(
            "/drover.v1.Control/DeleteServices",
            id(Role::Viewer, "v")
        ));
        assert!(!ok("/drover.v1.Raft/Step", id(Role::Admin, "a")));
        assert!(!ok("/drover.v1.Raft/Step", None));
        assert!(ok("/drover.v1.Raft/Step", id(Role::Controller, "c1")));
        assert!(!ok("/drover.v1.Dispatcher/Session", id(Role::Admin, "a")));
        assert!(ok("/drover.v1.Dispatcher/Session", id(Role::Agent, "n1")));
        assert!(ok("/drover.v1.Security/Join", None));
        assert!(!ok(
            "/drover.v1.Security/CreateToken",
            id(Role::Viewer, "v")
        ));
        assert!(!ok(
            "/drover.v1.Control/SomethingNew",
            id(Role::Viewer, "v")
        ));
        assert!(!ok("/other.Service/X", id(Role::Viewer, "v")));
        assert!(!ok("/drover.v1.Control/Apply", Some(None)));
        let a = agent_policy;
        assert!(authorize(a("/drover.v1.Agent/Logs"), "", id(Role::Viewer, "v")).is_ok());
        assert!(authorize(a("/drover.v1.Agent/Logs"), "", id(Role::Agent, "n2")).is_err());
        for debug in ["/drover.v1.Agent/Exec", "/drover.v1.Agent/PortForward"] {
            assert!(authorize(a(debug), debug, id(Role::Admin, "a")).is_ok());
            assert!(authorize(a(debug), debug, id(Role::Viewer, "v")).is_err());
            assert!(authorize(a(debug), debug, id(Role::Controller, "c1")).is_err());
        }
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let (s, _) = authorize(
            controller_policy("/drover.v1.Control/Apply"),
            "/drover.v1.Control/Apply",
            None,
        )
        .expect_err("refused");
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(s.message().contains("--cert"), "{}", s.message());
        let (s, who) = authorize(
            controller_policy("/drover.v1.Control/Apply"),
            "/drover.v1.Control/Apply",
            id(Role::Viewer, "ann"),
        )
        .expect_err("refused");
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "permission denied: viewer \"ann\" may not call Apply (it needs role admin)"
        );
        assert_eq!(who, "viewer \"ann\"");
    }
}
