//! One probe attempt against a running replica: `exec`, `httpGet` or
//! `tcpSocket`, cut off after `timeoutSeconds`.
//!
//! - `exec` runs through [`Runtime::exec`] (docker exec, or a child process
//!   in the replica's environment for the process runtime); exit code 0 passes.
//! - `httpGet` speaks plain HTTP/1.1 over a [`TcpStream`] to the address the
//!   runtime gives for the port ([`Runtime::probe_address`]); a status from
//!   200 to 399 passes, redirects are not followed. Headers from the manifest
//!   are sent and replace the defaults of the same name (`Host`,
//!   `User-Agent`, `Accept`), as kubelet does. `scheme: HTTPS` speaks the
//!   same over TLS without checking the replica's certificate, as kubelet does.
//! - `tcpSocket` passes when a TCP connection opens.
//!
//! A named port is looked up among the container's `ports[].name`; a name
//! that is not found but reads as a number is used as that number
//! (Kubernetes' IntOrString behaviour).

use std::net::SocketAddr;
use std::time::Duration;

use drover_manifest::{Container, HttpHeader, HttpScheme, PortRef, ProbeHandler};
use drover_proto::duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ProbeResult;
use crate::error::AgentError;
use crate::runtime::Runtime;

/// How much of an HTTP response is read looking for the status line.
const MAX_STATUS_LINE: usize = 8 * 1024;
/// How much exec output a failure message quotes.
const MAX_QUOTED_OUTPUT: usize = 256;

/// Run `handler` once against `replica` (whose spec is `container`).
pub async fn run<R: Runtime>(
    runtime: &R,
    replica: &str,
    container: &Container,
    handler: &ProbeHandler,
    timeout: Duration,
) -> ProbeResult {
    let attempt = async {
        match handler {
            ProbeHandler::Exec { command } => exec(runtime, replica, command, timeout).await,
            ProbeHandler::TcpSocket { port } => {
                let addr = address(runtime, replica, container, port).await?;
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("dial tcp {addr}: {e}"))?;
                Ok(())
            }
            ProbeHandler::HttpGet {
                path,
                port,
                scheme,
                http_headers,
            } => {
                let addr = address(runtime, replica, container, port).await?;
                http_get(addr, path, http_headers, *scheme == HttpScheme::Https).await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => ProbeResult::Success,
        Ok(Err(message)) => ProbeResult::Failure(message),
        Err(_) => ProbeResult::Failure(format!(
            "probe timed out after {}",
            duration::short(timeout)
        )),
    }
}

async fn exec<R: Runtime>(
    runtime: &R,
    replica: &str,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    match runtime.exec(replica, command, timeout).await {
        Ok(out) if out.exit_code == 0 => Ok(()),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.output);
            let text = text.trim();
            let mut quoted: String = text.chars().take(MAX_QUOTED_OUTPUT).collect();
            if quoted.len() < text.len() {
                quoted.push('…');
            }
            Err(if quoted.is_empty() {
                format!("command {command:?} exited with code {}", out.exit_code)
            } else {
                format!(
                    "command {command:?} exited with code {}: {quoted}",
                    out.exit_code
                )
            })
        }
        Err(AgentError::Timeout { after, .. }) => Err(format!(
            "command {command:?} timed out after {}",
            duration::short(after)
        )),
        Err(e) => Err(format!("command {command:?} could not run: {e}")),
    }
}

/// Where the probe connects for `port`.
async fn address<R: Runtime>(
    runtime: &R,
    replica: &str,
    container: &Container,
    port: &PortRef,
) -> Result<SocketAddr, String> {
    let port = resolve_port(container, port)?;
    runtime
        .probe_address(replica, port)
        .await
        .map_err(|e| format!("cannot find the replica's address: {e}"))
}

/// The container port a probe names.
pub fn resolve_port(container: &Container, port: &PortRef) -> Result<u16, String> {
    match port {
        PortRef::Number(n) => Ok(*n),
        PortRef::Name(name) => container
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// The request a probe sends, or why the manifest's headers cannot be sent.
pub fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[HttpHeader],
) -> Result<String, String> {
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let unsafe_text = |s: &str| s.chars().any(|c| c == '\r' || c == '\n');
    if unsafe_text(&path) || path.contains(' ') {
        return Err(format!(
            "the probe path {path:?} cannot be sent in a request line"
        ));
    }
    let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("user-agent") {
        req.push_str(&format!(
            "User-Agent: drover-probe/{}\r\n",
            env!("CARGO_PKG_VERSION")
        ));
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for h in headers {
        if h.name.is_empty()
            || unsafe_text(&h.name)
            || h.name.contains(':')
            || unsafe_text(&h.value)
        {
            return Err(format!(
                "the probe header {:?} is not a valid HTTP header",
                h.name
            ));
        }
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("Connection: close\r\n\r\n");
    Ok(req)
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
pub fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then_some(())?;
    code.parse().ok()
}

async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[HttpHeader],
    tls: bool,
) -> Result<(), String> {
    let request = http_request(addr, path, headers)?;
    let scheme = if tls { "https" } else { "http" };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Get \"{scheme}://{addr}{path}\": dial tcp {addr}: {e}"))?;
    if tls {
        let stream = super::insecure_tls::connect(tcp, addr)
            .await
            .map_err(|e| format!("Get \"https://{addr}{path}\": TLS handshake: {e}"))?;
        exchange(stream, addr, &request).await
    } else {
        exchange(tcp, addr, &request).await
    }
}

/// Send the request and judge the status line.
async fn exchange<S>(mut stream: S, addr: SocketAddr, request: &str) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request to {addr}: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    let line = loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            break String::from_utf8_lossy(&buf[..end]).into_owned();
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err(format!("{addr} answered with no HTTP status line"));
        }
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer from {addr}: {e}"))?;
        if n == 0 {
            if buf.is_empty() {
                return Err(format!("{addr} closed the connection without answering"));
            }
            break String::from_utf8_lossy(&buf).into_owned();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    match status_code(&line) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("HTTP probe failed with statuscode: {code}")),
        None => Err(format!(
            "{addr} answered with no HTTP status line: {line:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_manifest::ContainerPort;

    #[test]
    fn named_ports_resolve_through_the_container_ports() {
        let c = Container {
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                host_port: None,
                protocol: Default::default(),
            }],
            ..Default::default()
        };
        assert_eq!(resolve_port(&c, &PortRef::Number(9)), Ok(9));
        assert_eq!(resolve_port(&c, &PortRef::Name("http".into())), Ok(8080));
        assert_eq!(resolve_port(&c, &PortRef::Name("81".into())), Ok(81));
        let missing = resolve_port(&c, &PortRef::Name("metrics".into()));
        assert!(missing.is_err_and(|m| m.contains("metrics")));
    }

    #[test]
    fn requests_carry_manifest_headers_over_the_defaults() {
        let addr: SocketAddr = "10.0.0.5:8080".parse().expect("addr");
        let req = http_request(
            addr,
            "healthz",
            &[
                HttpHeader {
                    name: "X-Probe".into(),
                    value: "yes".into(),
                },
                HttpHeader {
                    name: "host".into(),
                    value: "web.local".into(),
                },
            ],
        )
        .expect("request");
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("X-Probe: yes\r\n"), "{req}");
        assert!(req.contains("host: web.local\r\n"), "{req}");
        assert!(!req.contains("Host: 10.0.0.5"), "{req}");
        assert!(req.contains("User-Agent: drover-probe/"), "{req}");
        assert!(req.ends_with("Connection: close\r\n\r\n"), "{req}");
        let bad = http_request(
            addr,
            "/",
            &[HttpHeader {
                name: "X".into(),
                value: "a\r\nEvil: 1".into(),
            }],
        );
        assert!(bad.is_err());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 302 Found"), Some(302));
        assert_eq!(status_code("HTTP/1.1 500"), Some(500));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code("HTTP/1.1 2000 X"), None);
    }
}
