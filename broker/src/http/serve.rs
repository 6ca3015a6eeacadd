//! Serving the HTTP API ([`crate::http::router`]) with limits of its own,
//! so that HTTP clients can neither hold connections open forever nor take
//! the descriptors MQTT needs: a cap on connections at once
//! (`limits.http_max_connections`, live streams included), a header
//! timeout (`limits.http_header_timeout_ms`, which hyper also applies to an
//! idle keep-alive connection) and an idle timeout on connections where
//! nothing moves (`limits.http_idle_timeout_ms`). hyper's HTTP/1 server is
//! used directly: `axum::serve` has neither timeout nor cap.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Limits;
use crate::net::descriptors::{Acceptor, Episode};
use crate::session::stopped;

/// Connections past the cap answered 503 at once; beyond these they are
/// closed unanswered (each answer holds a descriptor for up to
/// [`REFUSAL_TIME`]).
pub(crate) const REFUSALS_AT_ONCE: usize = 16;
/// How long a refused connection is given to take its answer.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// The answer past the cap, in the API's error format.
const BUSY_BODY: &str = r#"{"error":"too many HTTP connections; retry shortly"}"#;

type Connection = http1::Connection<TokioIo<Watched>, TowerToHyperService<Router>>;

/// Serves `app` on `listener` until shutdown, within `limits`' `http_*`.
pub async fn serve(listener: TcpListener, app: Router, limits: &Limits, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.http_max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let idle = Duration::from_millis(limits.http_idle_timeout_ms);
    let mut http = http1::Builder::new();
    // hyper's header timeout needs a timer; without one it is off.
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(limits.http_header_timeout_ms));
    let mut acceptor = Acceptor::new(listener, "http");
    let mut at_cap = Episode::default();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            (stream, peer) = acceptor.accept() => {
                if let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                    if let Some((lasted, refused)) = at_cap.end() {
                        tracing::info!(refused, lasted_ms = lasted.as_millis(), "HTTP connections below the limit again");
                    }
                    let (io, activity) = Watched::new(stream);
                    let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
                    connections.spawn(run(connection, activity, idle, shutdown.clone(), permit));
                    continue;
                }
                if at_cap.begin() {
                    tracing::warn!(
                        %peer,
                        max = limits.http_max_connections,
                        "HTTP connection limit reached (limits.http_max_connections): new connections are answered 503"
                    );
                }
                at_cap.count();
                match Arc::clone(&refusals).try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(refuse(stream, permit));
                    }
                    Err(_) => drop(stream),
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    // Stop accepting; answers under way finish (live streams end on shutdown).
    drop(acceptor);
    while connections.join_next().await.is_some() {}
}

/// Drives one connection, holding its slot, until it ends, has been idle
/// for `idle`, or has finished its answer after shutdown.
async fn run(
    connection: Connection,
    activity: Activity,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    // Header timeouts and clients gone mid-request land here.
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(activity.last() + idle) => {
                if activity.last() + idle <= Instant::now() {
                    tracing::debug!(idle_ms = idle.as_millis(), "closing an HTTP connection where nothing moved");
                    return;
                }
            }
            () = stopped(&mut shutdown), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection past the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream, _refusal: OwnedSemaphorePermit) {
    let answer = async {
        let busy = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             retry-after: 1\r\nconnection: close\r\n\r\n{BUSY_BODY}",
            BUSY_BODY.len()
        );
        stream.write_all(busy.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes too: a socket closed
        // with unread input is reset, and the reset can destroy the answer
        // before the client reads it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, answer).await;
}

/// When bytes last moved on a connection.
struct Activity {
    start: Instant,
    /// Milliseconds from `start`.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A connection's socket that notes when bytes move either way.
struct Watched {
    stream: TcpStream,
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Watched {
    fn new(stream: TcpStream) -> (Self, Activity) {
        let start = Instant::now();
        let last_ms = Arc::new(AtomicU64::new(0));
        (Self { stream, start, last_ms: Arc::clone(&last_ms) }, Activity { start, last_ms })
    }

    fn moved(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Notes a read or write that moved bytes.
    fn note<T>(&self, result: Poll<io::Result<T>>, moved: impl FnOnce(&T) -> bool) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(value)) = &result
            && moved(value)
        {
            self.moved();
        }
        result
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        let after = buf.filled().len();
        this.note(result, |()| after > before)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note(result, |&n| n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note(result, |&n| n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
