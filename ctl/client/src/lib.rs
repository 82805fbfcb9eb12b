//! drover's gRPC client (droverctl's and the lab's): failover across the
//! configured controllers and turning every failure into one sentence.
//!
//! ```text
//!  call ──▶ server 1 ──connect failed / died mid-call──▶ server 2 ──▶ ... ──▶ Unreachable
//!              │                                            │
//!              └─ "no leader" (Unavailable from the server) ─┴──▶ next round after a
//!                                                                 short backoff, until
//!                                                                 --request-timeout
//! ```
//!
//! Any controller can answer any call (followers forward writes to the
//! leader), so the first one that connects is used. A server-side
//! `Unavailable` (an election in progress) is retried on the others and then
//! again after a backoff; every other answer from a controller is final.
//! Retried writes are safe: apply and scale set a desired state, so doing
//! one twice lands in the same place.

use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use drover_pki::{self as pki, Security};
use drover_proto::pb::control_client::ControlClient;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long to wait for one TCP + HTTP/2 connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 ping interval and how long a ping may go unanswered.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// Largest answer accepted (a long `get deployments -A`).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One server that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub server: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No configured server accepted a connection (or each died mid-call).
    #[error("no controller reachable at {}{}", list_attempts(.0), hint(.0))]
    Unreachable(Vec<Attempt>),
    /// Servers were reachable but none answered within the request timeout.
    #[error("no answer from the controllers within {}: {}", seconds(*.timeout), list_attempts(.attempts))]
    TimedOut {
        timeout: Duration,
        attempts: Vec<Attempt>,
    },
    /// A controller answered with an error; its message is already a sentence.
    #[error("{}", status_sentence(.0))]
    Api(Status),
}

impl ClientError {
    /// The gRPC code of a controller's answer, if the failure was one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Api(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// A connection to whichever configured controller answers.
pub struct Client {
    servers: Vec<String>,
    timeout: Option<Duration>,
    connected: Option<(usize, Channel)>,
    security: Security,
}

impl Client {
    /// `servers` are checked `HOST:PORT`s; `timeout` bounds each call (None: no bound).
    pub fn new(servers: Vec<String>, timeout: Option<Duration>, security: Security) -> Client {
        Client {
            servers,
            timeout,
            connected: None,
            security,
        }
    }

    /// Let calls run at least `at_least` (for a request the controller
    /// knowingly takes long over, such as `cluster add` waiting for the new
    /// member to catch up); no bound stays no bound.
    pub fn allow_at_least(&mut self, at_least: Duration) {
        if let Some(t) = &mut self.timeout {
            *t = (*t).max(at_least);
        }
    }

    /// How this client connects (droverctl logs reuses it for agents).
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The server the last successful call went to.
    pub fn server(&self) -> Option<&str> {
        self.connected
            .as_ref()
            .and_then(|(i, _)| self.servers.get(*i))
            .map(String::as_str)
    }

    /// Run one RPC against the first controller that can answer it.
    ///
    /// `rpc` is called once per attempt with a fresh handle and builds its
    /// request anew each time (a tonic request is consumed by the call).
    pub async fn call<T, F, Fut>(&mut self, rpc: F) -> Result<T, ClientError>
    where
        F: FnMut(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_with(control_client, rpc).await
    }

    /// [`Client::call`] for another service on the controllers: `make` wraps
    /// the channel in that service's client.
    pub async fn call_with<C, T, F, Fut>(
        &mut self,
        make: fn(Channel) -> C,
        mut rpc: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let n = self.servers.len();
        let mut backoff = FIRST_BACKOFF;
        // A controller's own "no leader" answer outranks a later attempt that
        // merely ran out of time: it says what is wrong.
        let mut last_busy: Option<Status> = None;
        loop {
            let mut attempts: Vec<Attempt> = Vec::new();
            let mut busy: Option<Status> = None;
            let mut timed_out = false;
            let start = self.connected.as_ref().map_or(0, |(i, _)| *i);
            for k in 0..n {
                let i = (start + k) % n;
                let server = self.servers[i].clone();
                let left = remaining(deadline);
                if left.is_some_and(|d| d.is_zero()) {
                    timed_out = true;
                    break;
                }
                let client = match self.connection(i, left).await {
                    Ok(c) => make(c),
                    Err(reason) => {
                        let reason = self.plaintext_hint(reason);
                        attempts.push(Attempt { server, reason });
                        continue;
                    }
                };
                // Leave time for the other servers when this one hangs (a
                // stopped or partitioned controller accepts TCP and never answers).
                let budget = remaining(deadline).map(|d| {
                    if k + 1 < n {
                        (d / 2).max(CONNECT_TIMEOUT).min(d)
                    } else {
                        d
                    }
                });
                let answer = match budget {
                    Some(b) => match tokio::time::timeout(b, rpc(client)).await {
                        Ok(answer) => answer,
                        Err(_) => {
                            self.connected = None;
                            timed_out = true;
                            attempts.push(Attempt {
                                server,
                                reason: format!("no answer within {}", seconds(b)),
                            });
                            continue;
                        }
                    },
                    None => rpc(client).await,
                };
                match answer {
                    Ok(response) => return Ok(response.into_inner()),
                    Err(status) if is_transport_failure(&status) => {
                        self.connected = None;
                        attempts.push(Attempt {
                            server,
                            reason: self.plaintext_hint(transport_reason(&status)),
                        });
                    }
                    Err(status) if not_grpc(&status).is_some() => {
                        self.connected = None;
                        attempts.push(Attempt {
                            server,
                            reason: not_grpc(&status).unwrap_or_default(),
                        });
                    }
                    Err(status) if status.code() == Code::Unavailable => {
                        attempts.push(Attempt {
                            server,
                            reason: status_sentence(&status),
                        });
                        busy = Some(status);
                    }
                    Err(status) => return Err(ClientError::Api(status)),
                }
            }
            let timeout = self.timeout.unwrap_or_default();
            match busy {
                // Someone is up but has no leader: wait for the election.
                Some(status) => {
                    last_busy = Some(status.clone());
                    let left = remaining(deadline);
                    if left.is_some_and(|d| d <= backoff) {
                        return Err(ClientError::Api(status));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                None if timed_out => {
                    return Err(match last_busy {
                        Some(status) => ClientError::Api(status),
                        None => ClientError::TimedOut { timeout, attempts },
                    })
                }
                None => return Err(ClientError::Unreachable(attempts)),
            }
        }
    }

    /// A TLS server hangs up on a plaintext client without a word: say so.
    fn plaintext_hint(&self, reason: String) -> String {
        let hung_up = reason == "connection closed"
            || reason == "connection reset"
            || reason.contains("frame with invalid size");
        if self.security.is_insecure() && hung_up {
            "TLS: the connection was closed, as a TLS server does to a plaintext client; \
             pass --ca, --cert and --key instead of --insecure"
                .to_string()
        } else {
            reason
        }
    }

    /// The cached connection to server `i`, or a new one.
    async fn connection(&mut self, i: usize, left: Option<Duration>) -> Result<Channel, String> {
        if let Some((j, c)) = &self.connected {
            if *j == i {
                return Ok(c.clone());
            }
        }
        let wait = left.map_or(CONNECT_TIMEOUT, |l| l.min(CONNECT_TIMEOUT));
        let client = connect(&self.servers[i], wait, &self.security).await?;
        self.connected = Some((i, client.clone()));
        Ok(client)
    }
}

/// Open a channel to `server` (HOST:PORT), giving up after `wait`.
fn control_client(channel: Channel) -> ControlClient<Channel> {
    ControlClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .max_encoding_message_size(usize::MAX)
}

async fn connect(server: &str, wait: Duration, security: &Security) -> Result<Channel, String> {
    let endpoint = security
        .endpoint(server, &pki::Server::Controller)
        .map_err(|e| e.to_string())?
        .connect_timeout(wait)
        .tcp_nodelay(true)
        // A stopped controller (SIGSTOP, a hung host) accepts TCP and then never
        // answers; unanswered HTTP/2 pings reveal it in about two seconds.
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    // The outer timeout also covers name resolution, which connect_timeout does not.
    match tokio::time::timeout(wait + Duration::from_millis(100), endpoint.connect()).await {
        Err(_) => Err("timed out".to_string()),
        Ok(Err(e)) => Err(error_chain_reason(&e)),
        Ok(Ok(channel)) => Ok(channel),
    }
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// True when the call failed in the connection, not in the controller: such a
/// `Status` carries the transport error as its source, while one sent by a
/// controller arrives in trailers with none.
pub fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some()
        && matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        )
}

/// Something that speaks HTTP/2 but not gRPC (a proxy, another service) answered.
pub fn not_grpc(status: &Status) -> Option<String> {
    let message = status.message();
    if !message.starts_with("grpc-status header missing") {
        return None;
    }
    let http = message
        .rsplit_once("HTTP status code ")
        .map(|(_, code)| format!(" (it answered HTTP {code})"))
        .unwrap_or_default();
    Some(format!("not a drover controller{http}"))
}

pub fn transport_reason(status: &Status) -> String {
    match status.source() {
        Some(source) => error_chain_reason(source),
        None => status_sentence(status),
    }
}

/// A TLS handshake failure as what to fix; every such reason starts with "TLS: ".
pub fn tls_reason(text: &str) -> Option<String> {
    let reason = if text.contains("invalid peer certificate: UnknownIssuer")
        || text.contains("invalid peer certificate: BadSignature")
    {
        "TLS: the server's certificate is not signed by the CA given with --ca; use this cluster's ca.crt"
            .to_string()
    } else if text.contains("invalid peer certificate: Expired") {
        "TLS: the server's certificate has expired; renew it (droverctl pki client --role ...)"
            .to_string()
    } else if text.contains("NotValidForName") {
        "TLS: the server's certificate is not for this kind of server (a controller's or this node's); check the address".to_string()
    } else if let Some((_, rest)) = text.split_once("other error: the server's certificate ") {
        // drover_pki's role check: a CA-signed certificate of the wrong role.
        format!("TLS: the server's certificate {rest}; check the address")
    } else if let Some((_, rest)) = text.split_once("invalid peer certificate: ") {
        format!(
            "TLS: the server's certificate was refused ({})",
            words(rest)
        )
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        "TLS: the server does not speak TLS; if the cluster runs --insecure, pass --insecure"
            .to_string()
    } else if let Some((_, alert)) = text.split_once("received fatal alert: ") {
        format!(
            "TLS: the server refused your client certificate ({alert}); use one issued by this cluster's CA"
        )
    } else {
        return None;
    };
    Some(reason)
}

/// rustls names its reasons in CamelCase (`NotValidYet`); people read words.
fn words(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.trim().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The most telling reason in an error chain: `connection refused`,
/// `timed out`, `dns lookup failed: ...`, else the innermost message.
pub fn error_chain_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut dns = false;
    let mut innermost = err.to_string();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if let Some(reason) = tls_reason(&text) {
            return reason;
        }
        if text.starts_with("dns error") {
            dns = true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let reason = io_error_reason(io);
            return if dns {
                let reason = reason
                    .strip_prefix("failed to lookup address information: ")
                    .unwrap_or(&reason);
                format!("dns lookup failed: {}", lowercase_first(reason))
            } else {
                reason
            };
        }
        // hyper's keep-alive failure: the peer took the connection but never answered.
        if e.downcast_ref::<tonic::TimeoutExpired>().is_some() || text == "operation timed out" {
            return "timed out".to_string();
        }
        if !text.is_empty() {
            innermost = text;
        }
        current = e.source();
    }
    if dns {
        format!("dns lookup failed: {innermost}")
    } else {
        innermost
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn io_error_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let fixed = match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused",
        ErrorKind::ConnectionReset => "connection reset",
        ErrorKind::ConnectionAborted => "connection aborted",
        ErrorKind::NotConnected => "not connected",
        ErrorKind::TimedOut => "timed out",
        ErrorKind::AddrNotAvailable => "address not available",
        ErrorKind::HostUnreachable => "host unreachable",
        ErrorKind::NetworkUnreachable => "network unreachable",
        ErrorKind::BrokenPipe => "connection closed",
        ErrorKind::UnexpectedEof => "connection closed",
        ErrorKind::PermissionDenied => "permission denied",
        _ => return io_reason(e),
    };
    fixed.to_string()
}

/// A controller's message, or a sentence for the code when it sent none.
pub fn status_sentence(status: &Status) -> String {
    let message = status.message().trim();
    if !message.is_empty() {
        return message.to_string();
    }
    let what = match status.code() {
        Code::Unavailable => "the controller is unavailable",
        Code::DeadlineExceeded => "the controller did not finish in time",
        Code::NotFound => "not found",
        Code::PermissionDenied | Code::Unauthenticated => "permission denied",
        Code::Unimplemented => "the controller does not support this request (version skew?)",
        Code::ResourceExhausted => "the request is too large or the controller is overloaded",
        _ => "the controller failed without saying why",
    };
    format!("{what} ({})", code_name(status.code()))
}

fn code_name(code: Code) -> String {
    // Code's Debug is its variant name (`NotFound`), which is what people search for.
    format!("{code:?}")
}

/// `a, b (connection refused)` when every reason is the same, else `a (x), b (y)`.
fn list_attempts(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no servers".to_string();
    }
    let servers: Vec<&str> = attempts.iter().map(|a| a.server.as_str()).collect();
    if attempts.iter().all(|a| a.reason == attempts[0].reason) {
        return format!("{} ({})", servers.join(", "), attempts[0].reason);
    }
    attempts
        .iter()
        .map(|a| format!("{} ({})", a.server, a.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "is the cluster up?" unless the failures were TLS, which says what to fix.
fn hint(attempts: &[Attempt]) -> &'static str {
    if attempts.iter().any(|a| a.reason.starts_with("TLS: ")) {
        ""
    } else {
        "; is the cluster up?"
    }
}

fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// An I/O error as a short lowercase reason, without `(os error N)`.
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => "no such file or directory".to_string(),
        ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => {
            let text = e.to_string();
            let text = match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => format!("{:?}", e.kind()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::pb;

    fn attempt(server: &str, reason: &str) -> Attempt {
        Attempt {
            server: server.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn unreachable_lists_servers_with_their_reasons() {
        let same = ClientError::Unreachable(vec![
            attempt("127.0.0.1:7001", "connection refused"),
            attempt("127.0.0.2:7001", "connection refused"),
        ]);
        assert_eq!(
            same.to_string(),
            "no controller reachable at 127.0.0.1:7001, 127.0.0.2:7001 (connection refused); is the cluster up?"
        );
        let mixed = ClientError::Unreachable(vec![
            attempt("a:1", "connection refused"),
            attempt("b:1", "timed out"),
        ]);
        assert_eq!(
            mixed.to_string(),
            "no controller reachable at a:1 (connection refused), b:1 (timed out); is the cluster up?"
        );
    }

    #[test]
    fn a_controller_error_prints_as_its_message_only() {
        let e = ClientError::Api(Status::invalid_argument(
            "web.yaml[1]: spec.replicas: must be ≥ 0",
        ));
        assert_eq!(e.to_string(), "web.yaml[1]: spec.replicas: must be ≥ 0");
        let e = ClientError::Api(Status::new(Code::Internal, ""));
        assert_eq!(
            e.to_string(),
            "the controller failed without saying why (Internal)"
        );
    }

    #[test]
    fn a_server_that_is_not_grpc_is_named_as_such() {
        let s = Status::new(
            Code::Unimplemented,
            "grpc-status header missing, mapped from HTTP status code 404",
        );
        assert_eq!(
            not_grpc(&s).as_deref(),
            Some("not a drover controller (it answered HTTP 404)")
        );
        assert_eq!(not_grpc(&Status::unavailable("no leader")), None);
    }

    #[test]
    fn io_errors_become_short_reasons() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(error_chain_reason(&refused), "connection refused");
    }

    fn free_port() -> u16 {
        // Bind and drop: nothing listens there afterwards.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn refused_connections_on_every_server_say_so() {
        let servers = vec![
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        ];
        let mut client = Client::new(
            servers.clone(),
            Some(Duration::from_secs(5)),
            Security::Insecure,
        );
        let e = client
            .call(|mut c| async move { c.version(pb::VersionRequest {}).await })
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no controller reachable at {}, {} (connection refused); is the cluster up?",
                servers[0], servers[1]
            )
        );
    }

    #[test]
    fn tls_failures_say_what_to_fix() {
        let reason = |t: &str| tls_reason(t).expect("a TLS reason");
        assert!(reason("invalid peer certificate: UnknownIssuer").contains("--ca"));
        assert!(
            reason("received corrupt message of type InvalidContentType")
                .contains("pass --insecure")
        );
        assert!(reason("received fatal alert: CertificateExpired")
            .contains("refused your client certificate"));
        assert!(reason("invalid peer certificate: Expired").contains("expired"));
        assert!(reason("invalid peer certificate: BadSignature").contains("--ca"));
        assert_eq!(
            reason("invalid peer certificate: NotValidYet"),
            "TLS: the server's certificate was refused (not valid yet)"
        );
        assert_eq!(tls_reason("connection refused"), None);
        let tls = ClientError::Unreachable(vec![attempt(
            "a:1",
            &reason("invalid peer certificate: UnknownIssuer"),
        )]);
        assert!(
            !tls.to_string().contains("is the cluster up"),
            "a TLS failure is not a down cluster: {tls}"
        );
    }

    #[tokio::test]
    async fn unresolvable_names_say_dns() {
        let mut client = Client::new(
            vec!["no-such-host.invalid:7001".into()],
            Some(Duration::from_secs(5)),
            Security::Insecure,
        );
        let e = client
            .call(|mut c| async move { c.version(pb::VersionRequest {}).await })
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "no controller reachable at no-such-host.invalid:7001 (dns lookup failed"
            ),
            "{text}"
        );
    }
}
