//! The HTTP edge's connection handling: the accept loop, the cap on open connections,
//! and the timeouts that keep slow or silent clients from holding sockets forever.
//!
//! Every accepted TCP connection holds one permit of a semaphore (as mini-redis does)
//! for as long as its socket is open, through a WebSocket upgrade too: the permit lives
//! in the socket wrapper ([`Guarded`]) that hyper hands over to the upgraded session.
//! When every permit is taken, the connection that was accepted first among those with
//! no request in progress (a slowloris socket still sending its head, or an idle
//! keep-alive) is closed to make room; when none is idle, the new connection is refused
//! with a bare 503. Either way a warning is logged at most once per interval.
//!
//! Timeouts, each configurable (see docs/CONFIGURATION.md):
//! - header: a request head must be complete this long after the connection opened or
//!   the previous response was sent (hyper's `header_read_timeout`; it is therefore also
//!   the keep-alive idle timeout);
//! - body: the longest gap between two chunks of a request body;
//! - request: from the head to the start of the response (a JSON 408 otherwise);
//! - idle: no byte moved in either direction (a client that stopped reading a
//!   download, a dead peer); WebSockets are kept busy by the server's pings.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutBody;

/// File descriptors kept out of the connection cap for the database, the media socket,
/// listeners, logs and the refused connections' short-lived sockets.
pub const RESERVED_FDS: u64 = 256;
/// How long the accept loop waits for an evicted connection to give its permit back.
const EVICTION_WAIT: Duration = Duration::from_millis(500);
/// How long shutdown waits for in-flight requests before dropping their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused sockets closed gently at once (beyond this they are dropped outright), and for
/// how long: closing with the client's request unread would reset the connection before
/// the client reads the 503.
const REFUSALS_LINGERING: usize = 64;
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Bounds on what one connection may hold.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Open connections at once, HTTP and WebSocket together.
    pub max_connections: usize,
    /// For a complete request head, from connection open or the previous response.
    pub header_timeout: Duration,
    /// Longest gap between two chunks of a request body.
    pub body_timeout: Duration,
    /// From the request head to the start of the response.
    pub request_timeout: Duration,
    /// No byte moving in either direction closes the connection.
    pub idle_timeout: Duration,
    /// The cap-reached warning is logged at most this often.
    pub cap_log_interval: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            cap_log_interval: Duration::from_secs(10),
        }
    }
}

/// Connection counts, read by `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Sockets open now (each holds a permit), WebSockets included.
    pub open: AtomicU64,
    /// The cap in force (the configured one, lowered to fit the file-descriptor limit).
    pub max: AtomicU64,
    pub accepted: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Connections refused at the cap (none was idle).
    pub refused: AtomicU64,
    /// Connections closed because nothing moved for the idle timeout.
    pub idle_closed: AtomicU64,
}

/// Raises the soft limit on open files to the hard limit (every connection is a file
/// descriptor) and returns the soft limit now in force, when it can be read.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open-files limit");
                return Some(hard);
            }
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit"),
        }
    }
    Some(soft)
}

/// The connection cap that fits in `fd_limit` open files.
pub fn effective_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
            configured.min(room.max(1))
        }
        None => configured,
    }
}

/// "At most once per interval" for a log line that could otherwise repeat per connection.
#[derive(Debug)]
pub struct LogEvery {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether to log now; if so, how many occurrences were not logged since the last line.
    pub fn ready(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock();
        match s.0 {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                s.1 += 1;
                None
            }
            _ => {
                let skipped = s.1;
                *s = (Some(now), 0);
                Some(skipped)
            }
        }
    }
}

/// What the accept loop knows of each served connection, to pick one to evict.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    /// By accept order, so the first entry that is idle is the oldest idle one.
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    /// Signalled when the last connection is removed (shutdown waits for it).
    emptied: Notify,
}

#[derive(Default)]
struct ConnState {
    /// Requests whose response has not been completely sent.
    busy: AtomicUsize,
    /// Cancelled to close the connection to make room.
    evict: CancellationToken,
}

impl Registry {
    fn insert(&self) -> (u64, Arc<ConnState>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::default());
        self.conns.lock().insert(id, state.clone());
        (id, state)
    }

    fn remove(&self, id: u64) {
        let mut conns = self.conns.lock();
        conns.remove(&id);
        if conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Completes once no connection is being served.
    async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.conns.lock().is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Closes every connection now (after the drain timeout).
    fn close_all(&self) {
        for c in self.conns.lock().values() {
            c.evict.cancel();
        }
    }

    /// Asks the oldest connection with no request in progress to close; false if none.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.conns.lock();
        for c in conns.values() {
            if c.busy.load(Ordering::Acquire) == 0 && !c.evict.is_cancelled() {
                c.evict.cancel();
                return true;
            }
        }
        false
    }
}

/// Counts a request as in progress until its response body is dropped (sent or aborted).
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: Arc<ConnState>) -> Self {
        state.busy.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection marked busy while it is being sent.
struct BusyBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl HttpBody for BusyBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket that holds its connection permit and closes itself once nothing has
/// moved in either direction for the idle timeout.
struct Guarded<S = TcpStream> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnStats>,
    idle: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, permit: OwnedSemaphorePermit, stats: Arc<ConnStats>, idle: Duration) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        Self {
            inner,
            _permit: permit,
            stats,
            idle,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// Ready with an error once the connection has been idle too long; otherwise the
    /// timer is armed for the current deadline.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_activity + self.idle;
            if Instant::now() >= deadline {
                self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    fn pending_or_idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.poll_idle(cx) {
            Poll::Ready(e) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending_or_idle(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending_or_idle(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending_or_idle(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.pending_or_idle(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Adds the request timeout to `app`: a handler that has not started its response in
/// time gets a JSON 408 (counted by the metrics like any other response).
pub fn with_request_timeout(app: Router, timeout: Duration) -> Router {
    app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(resp) => resp,
                Err(_) => request_timeout_response(),
            }
        },
    ))
}

fn request_timeout_response() -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"code":"request_timeout","message":"The request took too long"}"#,
    )
        .into_response()
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish (bounded by [`DRAIN_TIMEOUT`]).
pub fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stats: Arc<ConnStats>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    stats
        .max
        .store(limits.max_connections as u64, Ordering::Relaxed);
    tokio::spawn(accept_loop(listener, app, limits, stats, shutdown))
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stats: Arc<ConnStats>,
    shutdown: CancellationToken,
) {
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let lingering = Arc::new(Semaphore::new(REFUSALS_LINGERING));
    let cap_log = LogEvery::new(limits.cap_log_interval);
    let accept_error_log = LogEvery::new(limits.cap_log_interval);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or memory: back off briefly rather than
                    // spin, and say so without flooding the log.
                    if let Some(skipped) = accept_error_log.ready(Instant::now()) {
                        tracing::error!(error = %e, skipped, "accept failed");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                    }
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let admitted = admit_at_cap(&permits, &registry).await;
                let (evicted, refused) = match &admitted {
                    Some(_) => (stats.evicted.fetch_add(1, Ordering::Relaxed) + 1, 0),
                    None => (0, stats.refused.fetch_add(1, Ordering::Relaxed) + 1),
                };
                if let Some(skipped) = cap_log.ready(Instant::now()) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        evicted_total = stats.evicted.load(Ordering::Relaxed).max(evicted),
                        refused_total = stats.refused.load(Ordering::Relaxed).max(refused),
                        skipped,
                        "connection cap reached: closing idle connections, refusing when none \
                         is idle (MAX_CONNECTIONS)"
                    );
                }
                match admitted {
                    Some(p) => p,
                    None => {
                        refuse(tcp, &lingering);
                        continue;
                    }
                }
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Signaling sends small messages back to back (`joined`, then the `offer`):
        // without TCP_NODELAY the second waits for the client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (id, state) = registry.insert();
        let io = Guarded::new(tcp, permit, stats.clone(), limits.idle_timeout);
        tokio::spawn(serve_connection(
            io,
            peer,
            app.clone(),
            limits.clone(),
            state,
            id,
            registry.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, registry.wait_empty())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after the drain timeout; closing them");
        registry.close_all();
        registry.wait_empty().await;
    }
}

/// At the cap: closes the oldest idle connection and takes its permit, or None.
async fn admit_at_cap(
    permits: &Arc<Semaphore>,
    registry: &Registry,
) -> Option<OwnedSemaphorePermit> {
    if !registry.evict_oldest_idle() {
        return None;
    }
    tokio::time::timeout(EVICTION_WAIT, permits.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Tells a refused client why, if its socket takes the bytes right away, and closes it:
/// gently (its request read and discarded, briefly) while few refusals are pending,
/// outright beyond that so refusals cannot pile up.
fn refuse(tcp: TcpStream, lingering: &Arc<Semaphore>) {
    let _ = tcp.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\
          Content-Type: application/json\r\nContent-Length: 65\r\n\r\n\
          {\"code\":\"overloaded\",\"message\":\"Too many connections, try again\"}",
    );
    let Ok(slot) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _slot = slot;
        let mut tcp = tcp;
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    });
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    io: Guarded,
    peer: SocketAddr,
    app: Router,
    limits: Arc<HttpLimits>,
    state: Arc<ConnState>,
    id: u64,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let svc_state = state.clone();
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::new(svc_state.clone());
        let mut req = req.map(|b| axum::body::Body::new(TimeoutBody::new(body_timeout, b)));
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let resp = match tower::ServiceExt::oneshot(app, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(
                resp.map(|inner| axum::body::Body::new(BusyBody { inner, _busy: busy })),
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                break;
            }
            _ = state.evict.cancelled() => {
                tracing::debug!(%peer, "connection closed by the server's limits");
                break;
            }
            // Shutdown: finish the request in flight, then close (keep-alive off).
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    registry.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_every_logs_once_per_interval_and_counts_the_rest() {
        let log = LogEvery::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.ready(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(log.ready(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(log.ready(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(log.ready(t0 + Duration::from_secs(11)), None);
        assert_eq!(log.ready(t0 + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn the_cap_leaves_room_for_the_servers_own_files() {
        assert_eq!(
            effective_cap(10_000, Some(1024)),
            1024 - RESERVED_FDS as usize
        );
        assert_eq!(effective_cap(64, Some(1024)), 64);
        assert_eq!(effective_cap(64, None), 64);
        assert_eq!(effective_cap(64, Some(10)), 1);
        assert_eq!(effective_cap(64, Some(u64::MAX)), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_where_nothing_moves_is_closed_after_the_idle_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let idle = Duration::from_secs(60);
        let (mut client, server) = tokio::io::duplex(64);
        let permits = Arc::new(Semaphore::new(1));
        let stats = Arc::new(ConnStats::default());
        let permit = permits.clone().try_acquire_owned().expect("a permit");
        let mut conn = Guarded::new(server, permit, stats.clone(), idle);
        assert_eq!(stats.open.load(Ordering::Relaxed), 1);
        let start = Instant::now();
        // Traffic every 40 s keeps it open past the timeout...
        let mut byte = [0u8; 1];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            client.write_all(b"x").await.expect("write");
            conn.read_exact(&mut byte).await.expect("still open");
        }
        tokio::time::sleep(Duration::from_secs(40)).await;
        conn.write_all(b"y")
            .await
            .expect("writes count as activity");
        let last = Instant::now();
        // ...silence closes it, counted from the last byte in either direction.
        let err = conn
            .read(&mut byte)
            .await
            .expect_err("idle connection closed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - last, idle);
        assert!(Instant::now() - start >= Duration::from_secs(160 + 60));
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
        drop(conn);
        assert_eq!(
            permits.available_permits(),
            1,
            "the permit goes with the socket"
        );
        assert_eq!(stats.open.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_does_not_answer_in_time_gets_a_json_408() {
        use tower::ServiceExt;
        let app = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            )
            .route("/fast", axum::routing::get(|| async { "ok" }));
        let app = with_request_timeout(app, Duration::from_secs(5));
        let get = |path: &str| {
            axum::http::Request::builder()
                .uri(path)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let started = Instant::now();
        let resp = app.clone().oneshot(get("/slow")).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(Instant::now() - started, Duration::from_secs(5));
        let body = axum::body::to_bytes(resp.into_body(), 1024)
            .await
            .expect("body");
        assert!(body.starts_with(br#"{"code":"request_timeout""#));
        let resp = app.oneshot(get("/fast")).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[test]
    fn eviction_picks_the_oldest_connection_without_a_request() {
        let r = Registry::default();
        let (_, a) = r.insert();
        let (_, b) = r.insert();
        let (c_id, c) = r.insert();
        let busy = Busy::new(a.clone());
        assert!(r.evict_oldest_idle());
        assert!(!a.evict.is_cancelled(), "a request is in progress on a");
        assert!(b.evict.is_cancelled());
        r.remove(c_id);
        assert!(!r.evict_oldest_idle(), "b is already going; a is busy");
        assert!(!c.evict.is_cancelled());
        drop(busy);
        assert!(r.evict_oldest_idle());
        assert!(a.evict.is_cancelled());
    }
}
