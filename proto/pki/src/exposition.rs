//! The metrics listener: the one drover listener with no TLS and no
//! authorization, so it serves nothing but `GET /metrics`.
//!
//! ```text
//!   Prometheus ──GET /metrics──▶ --metrics-listen ADDR ──▶ render() ──▶ text 0.0.4
//!              ──anything else─▶ 404 (other paths) / 405 (other methods)
//! ```
//!
//! Controllers and agents each own their registry (`controller::metrics`,
//! `agent::metrics`) and hand this module a `render` function. It lives in
//! the PKI crate because it is the exception to that crate's rule that every
//! listener authenticates: what it may expose (counts and timings, never
//! object contents, names of secrets or tokens) is decided by the registries,
//! and that it can only be read is decided here.

use std::future::Future;
use std::net::SocketAddr;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

/// The `Content-Type` of the Prometheus text format (version 0.0.4).
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A `--metrics-listen` value: an address, or off (an empty value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<MetricsListen, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(MetricsListen(None));
        }
        text.parse::<SocketAddr>().map(|a| MetricsListen(Some(a))).map_err(|_| {
            format!("--metrics-listen {text:?} is not IP:PORT (give an empty value to turn metrics off)")
        })
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("off"),
        }
    }
}

/// Bind the metrics listener, with the sentence a person needs when it fails.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen for metrics on {addr}: {e} (choose another --metrics-listen, or an empty one to turn metrics off)"
        )
    })
}

/// Serve `GET /metrics` on `listener` until `shutdown` completes. `render`
/// produces the whole exposition for one scrape.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    render: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { ([(CONTENT_TYPE, TEXT_FORMAT)], render().await) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_value_turns_metrics_off_and_a_bad_one_is_named() {
        assert_eq!("".parse::<MetricsListen>(), Ok(MetricsListen(None)));
        assert_eq!(
            "127.0.0.1:9464".parse::<MetricsListen>(),
            Ok(MetricsListen(Some(SocketAddr::from((
                [127, 0, 0, 1],
                9464
            )))))
        );
        assert_eq!(
            "localhost:9464".parse::<MetricsListen>(),
            Err("--metrics-listen \"localhost:9464\" is not IP:PORT (give an empty value to turn metrics off)".into())
        );
    }

    /// A real listener: the exposition on GET /metrics, nothing else.
    #[tokio::test]
    async fn serves_only_get_metrics() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("address");
        let stop = stop_signal();
        let server = tokio::spawn(serve(
            listener,
            || async { "drover_up 1\n".to_string() },
            stop.1,
        ));
        let ask = |request: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            s.write_all(request.as_bytes()).await.expect("writes");
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.expect("reads");
            answer
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains(TEXT_FORMAT), "{ok}");
        assert!(ok.ends_with("drover_up 1\n"), "{ok}");
        let other = ask("GET /debug HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = ask(
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let _ = stop.0.send(());
        server.await.expect("joins").expect("stops cleanly");
    }

    fn stop_signal() -> (
        tokio::sync::oneshot::Sender<()>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }
}
