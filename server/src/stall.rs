//! The write-stall bound on every accepted connection: a client that stops
//! reading leaves the kernel's send buffer full, so writes stay pending;
//! past `--slow-client-ms` of one pending write the connection fails with
//! `TimedOut` and hyper (or the WebSocket) drops it. Reads are not bounded:
//! an SSE client never writes after its request, and idle is healthy.
//! Without this, a stalled client of an SSE stream kept its socket and
//! hyper's buffers for ever after its producer gave up on it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::metrics::{DropReason, Metrics};

/// A [`TcpListener`] whose connections are [`StallGuard`]ed.
pub struct StallListener {
    inner: TcpListener,
    limit: Duration,
    metrics: std::sync::Arc<Metrics>,
}

impl StallListener {
    /// Guards every connection `inner` accepts with `limit`; a connection
    /// dropped for it counts as `write_stall` in `metrics`.
    pub fn new(inner: TcpListener, limit: Duration, metrics: std::sync::Arc<Metrics>) -> Self {
        Self {
            inner,
            limit,
            metrics,
        }
    }
}

impl axum::serve::Listener for StallListener {
    type Io = StallGuard;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((s, addr)) => {
                    let _ = s.set_nodelay(true);
                    return (StallGuard::new(s, self.limit, self.metrics.clone()), addr);
                }
                // Out of file descriptors and the like: as axum's own listener does, wait a little.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection whose writes may stay pending for at most `limit`.
pub struct StallGuard {
    io: TcpStream,
    limit: Duration,
    /// Armed when a write went pending; cleared by the next write that completes.
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: std::sync::Arc<Metrics>,
}

impl StallGuard {
    fn new(io: TcpStream, limit: Duration, metrics: std::sync::Arc<Metrics>) -> Self {
        Self {
            io,
            limit,
            stalled: None,
            metrics,
        }
    }

    /// The outcome of a write-side poll: progress clears the stall, a
    /// pending one arms it, and an expired one is an error.
    fn guard<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(v) => {
                self.stalled = None;
                Poll::Ready(v)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.metrics.dropped(DropReason::WriteStall);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
