//! A cap on the connections one listener serves at once.
//!
//! ```text
//!  TcpIncoming ──▶ limit_connections(max) ──▶ tonic server
//!                  a permit per connection, returned when it closes;
//!                  at the cap, accepting waits (the kernel's backlog holds
//!                  the rest) instead of spending memory on more peers
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Connections a drover listener serves at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// A connection holding one of its listener's permits until it is dropped.
pub struct Limited {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Limited {
    // The TCP info, so the TLS layer's peer info keeps its usual type.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// `incoming`, serving at most `max` connections at once.
pub fn limit_connections(
    incoming: TcpIncoming,
    max: usize,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(max.max(1)));
    futures_util::stream::unfold((incoming, permits), |(mut incoming, permits)| async move {
        let permit = permits.clone().acquire_owned().await.ok()?;
        let next = incoming.next().await?;
        let item = next.map(|inner| Limited {
            inner,
            _permit: permit,
        });
        Some((item, (incoming, permits)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn at_the_cap_accepting_waits_until_a_connection_closes() {
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = incoming.local_addr().expect("addr");
        let mut limited = Box::pin(limit_connections(incoming, 2));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let first = limited.next().await.expect("one").expect("ok");
        let _second = limited.next().await.expect("two").expect("ok");
        let third = tokio::time::timeout(Duration::from_millis(300), limited.next()).await;
        assert!(third.is_err(), "a third connection waits at the cap");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(2), limited.next())
            .await
            .expect("accepted once one closed");
        assert!(matches!(third, Some(Ok(_))));
    }
}
