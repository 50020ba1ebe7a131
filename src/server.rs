//! The listeners: the public one (plain HTTP/1.1, or HTTPS with HTTP/2 or
//! HTTP/1.1 chosen by ALPN) and the optional metrics one, their limits,
//! and the shutdown sequence.
//!
//! Plain-HTTP listeners speak HTTP/1.1 only. Browsers never use cleartext
//! HTTP/2, and hyper's protocol auto-detection would keep a connection that
//! sends nothing open forever; with HTTP/1.1 alone the header-read timeout
//! bounds every connection, idle or slow. Over TLS the handshake has its
//! own timeout, and ALPN says which protocol follows.
//!
//! Connections are served by one single-threaded runtime per core, each
//! accepting on the same socket (see `workers`); the main runtime keeps
//! the signals, reloads and background work.
//!
//! Limits: `limits.max_connections` connections are served at once, by
//! all serving threads together (the rest wait in the kernel's accept
//! queue), each request head must arrive
//! within `limits.header_read_timeout` and fit in `limits.max_header_bytes`.
//!
//! Shutdown, on SIGTERM: readiness fails at once, requests are still served
//! for `shutdown.delay` so Kubernetes can take the pod out of its endpoints,
//! then the listener closes and in-flight requests and upgraded connections
//! (WebSockets) get up to `shutdown.grace` to finish before the process
//! exits 0. Ctrl-C skips the delay.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::app::{App, Live};
use crate::config::{self, Config, Entry, Inputs, Loaded};
use crate::forward::DrainGuard;
use crate::headers::Peer;
use crate::health::Draining;
use crate::oidc;
use crate::{bypass, metrics, routes, tls};

mod workers;

pub(crate) use workers::{count as serving_threads, index as serving_thread};

const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
const H2_MAX_STREAMS: u32 = 250;
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics_listen {addr}: {source}")]
    MetricsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("start the serving threads: {source}")]
    Threads { source: std::io::Error },
    #[error(transparent)]
    Client(#[from] oidc::reqwest_error::BuildError),
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error(transparent)]
    App(#[from] crate::app::Error),
}

/// A proxy that is accepting connections.
pub struct Running {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    live: Live,
    draining: Draining,
    sessions: crate::session::Store,
    stop: watch::Sender<bool>,
    /// Fires once the listener is closed.
    closed: Option<oneshot::Receiver<()>>,
    task: JoinHandle<()>,
}

/// Which signal asked billguard to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
}

// === impl Running ===

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Resolves once the provider metadata is loaded (at once without a
    /// provider).
    pub async fn wait_ready(&self) {
        if let Some(provider) = &self.live.load().provider {
            provider.wait_ready().await;
        }
    }

    /// The App in force, which a configuration reload replaces.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Resolves once the session store's availability equals `up`.
    pub async fn wait_sessions(&self, up: bool) {
        self.sessions.wait_available(up).await;
    }

    /// The first step of a shutdown: readiness fails from now on, while
    /// requests are still served.
    pub fn begin_shutdown(&self) {
        self.draining.begin();
    }

    /// Closes the listener: new connections are refused from the moment
    /// this returns. Requests in flight carry on.
    pub async fn close(&mut self) {
        self.draining.begin();
        self.stop.send_replace(true);
        if let Some(closed) = self.closed.take() {
            let _ = closed.await;
        }
    }

    /// Stops accepting, lets in-flight requests and upgraded connections
    /// finish (up to `shutdown.grace`), and returns when done.
    pub async fn shutdown(mut self) {
        self.close().await;
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves until SIGTERM or Ctrl-C, reloading the
/// configuration from `inputs` on SIGHUP and when its files change.
pub async fn serve(loaded: Loaded, inputs: Inputs) -> Result<(), Error> {
    let addr = loaded.config.listen;
    let listener = listen(addr).map_err(|source| Error::Bind { addr, source })?;
    let shutdown = loaded.config.shutdown.clone();
    let https = loaded.config.tls.is_some();
    let mut running = start_reloading(loaded, inputs, listener)?;
    tracing::info!(addr = %running.addr(), https, "Listening");
    if let Some(addr) = running.metrics_addr() {
        tracing::info!(%addr, "Serving metrics at /metrics");
    }

    let signal = shutdown_signal().await;
    running.begin_shutdown();
    if signal == Signal::Terminate && !shutdown.delay.is_zero() {
        tracing::info!(delay = ?shutdown.delay, "Shutting down: readiness fails; still serving while Kubernetes stops routing here");
        tokio::time::sleep(shutdown.delay).await;
    }
    running.close().await;
    tracing::info!(grace = ?shutdown.grace, "Shutting down: listener closed; draining in-flight requests");
    running.shutdown().await;
    tracing::info!("Stopped");
    Ok(())
}

/// Serves on an already bound listener (tests bind port 0 first), with
/// this configuration for good.
pub fn start(config: Config, listener: TcpListener) -> Result<Running, Error> {
    launch(config, Vec::new(), None, listener)
}

/// Serves on an already bound listener and reloads the configuration from
/// `inputs` on SIGHUP and when its files change.
pub fn start_reloading(
    loaded: Loaded,
    inputs: Inputs,
    listener: TcpListener,
) -> Result<Running, Error> {
    launch(loaded.config, loaded.entries, Some(inputs), listener)
}

fn launch(
    config: Config,
    settings: Vec<Entry>,
    reload: Option<Inputs>,
    listener: TcpListener,
) -> Result<Running, Error> {
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let live = Live::new(App::build(config.clone(), settings, None)?);
    let draining = live.load().draining.clone();
    let sessions = live.load().sessions.clone();
    let (stop, stopped) = watch::channel(false);
    let mut background = Vec::new();

    if let Some(inputs) = reload {
        let (live, also) = (live.clone(), live.clone());
        let apply = move |loaded: Loaded| {
            live.replace(loaded.config, loaded.entries)
                .map_err(|e| e.to_string())
        };
        let reject = move |reason| also.rejected(reason);
        let users_file = config.local_login.users_file.clone();
        background.push(tokio::spawn(config::reload::run(
            inputs, users_file, apply, reject,
        )));
    }

    let tls = match &config.tls {
        Some(cfg) => {
            let (server_config, certs) = tls::server_config(cfg)?;
            background.push(tokio::spawn(certs.watch(cfg.reload_interval)));
            Some(TlsAcceptor::from(server_config))
        }
        None => None,
    };
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let metrics = bind_std(addr).map_err(|source| Error::MetricsBind { addr, source })?;
            let bound = metrics
                .local_addr()
                .map_err(|source| Error::MetricsBind { addr, source })?;
            background.push(tokio::spawn(serve_metrics(
                metrics,
                live.clone(),
                stopped.clone(),
            )));
            Some(bound)
        }
        None => None,
    };

    // The provider's discovery runs with the App (see `app`).
    background.push(tokio::spawn(housekeeping(live.clone())));
    background.push(tokio::spawn(bypass::watch(config.upstream.url.clone())));

    let serving = Arc::new(Serving::new(live.clone(), &config, tls));
    let (open, opened) = watch::channel(false);
    let mut workers = workers::start(serving, listener, workers::count(), opened, stopped)
        .map_err(|source| Error::Threads { source })?;
    let (closing, closed) = oneshot::channel();
    let task = tokio::spawn({
        let sessions = sessions.clone();
        async move {
            // Restored before the first request is accepted; connections
            // wait in the listen backlog meanwhile.
            sessions.restore().await;
            open.send_replace(true);
            workers.closed().await;
            let _ = closing.send(());
            workers.finished().await;
            for task in background {
                task.abort();
            }
            sessions.persist().await;
        }
    });
    Ok(Running {
        addr,
        metrics_addr,
        live,
        draining,
        sessions,
        stop,
        closed: Some(closed),
        task,
    })
}

/// What every connection of the public listener shares.
struct Serving {
    live: Live,
    tls: Option<TlsAcceptor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    max_connections: usize,
    grace: Duration,
}

// === impl Serving ===

impl Serving {
    fn new(live: Live, config: &Config, tls: Option<TlsAcceptor>) -> Self {
        let limits = &config.limits;
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_MAX_STREAMS)
            .keep_alive_interval(H2_KEEP_ALIVE);
        Serving {
            live,
            tls,
            http1: h1,
            http2: h2,
            handshake_timeout: config
                .tls
                .as_ref()
                .map_or(Duration::ZERO, |t| t.handshake_timeout),
            max_connections: limits.max_connections,
            grace: config.shutdown.grace,
        }
    }
}

/// One serving thread's accept loop: serves what it accepts, or hands it
/// to a thread with fewer connections, and what other threads hand it,
/// until told to stop; then drains its own connections.
async fn accept_loop(
    serving: Arc<Serving>,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    mut balance: workers::Balance,
    mut stopped: watch::Receiver<bool>,
    closing: oneshot::Sender<()>,
) {
    // Every connection task (and every upgraded connection) holds a sender;
    // when all are dropped, the receiver sees the channel close and the
    // drain is complete.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    // The connections of this thread watch a stop signal of its own: each
    // wake-up of a connection polls it, which takes the signal's lock, and
    // one signal for all threads would move that lock between the cores
    // on every request.
    let (stop_here, stopped_here) = watch::channel(false);

    loop {
        let admitted = tokio::select! {
            accepted = accept(&listener, &permits) => match accepted {
                Some(Ok((stream, remote, permit))) => balance.admit(stream, remote, permit),
                Some(Err(error)) => {
                    // Usually out of file descriptors: back off briefly
                    // instead of spinning.
                    tracing::warn!(%error, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => break,
            },
            Some(handed) = balance.handed() => handed,
            _ = until_stopped(&mut stopped) => break,
        };
        let Some(workers::Conn {
            stream,
            remote,
            permit,
            counted,
        }) = admitted
        else {
            continue;
        };

        let serving = serving.clone();
        let stop = stopped_here.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _held = (permit, counted);
            let _open = metrics::connection();
            connection(&serving, stream, remote, stop, alive).await;
        });
    }

    stop_here.send_replace(true);
    drop(listener);
    let _ = closing.send(());
    drop(alive);
    tokio::select! {
        _ = all_closed.recv() => {}
        _ = tokio::time::sleep(serving.grace) => {
            tracing::warn!(grace = ?serving.grace, "Grace period over; closing remaining connections");
        }
    }
}

/// The next connection, once `limits.max_connections` has room for it (at
/// the limit, new clients wait in the backlog). `None` when the limit is
/// gone (never while serving).
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<std::io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)>> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    Some(listener.accept().await.map(|(stream, remote)| {
        let _ = stream.set_nodelay(true);
        (stream, remote, permit)
    }))
}

/// Serves one downstream connection to its end.
async fn connection(
    serving: &Serving,
    stream: TcpStream,
    remote: SocketAddr,
    stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let Some(acceptor) = &serving.tls else {
        let peer = Peer::new(remote.ip(), "http");
        return serve_http1(serving, TokioIo::new(stream), peer, remote, stop, alive).await;
    };

    let stream =
        match tokio::time::timeout(serving.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%error, client = %remote, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %remote, "TLS handshake timed out");
                return;
            }
        };
    let peer = Peer::new(remote.ip(), "https");
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    if h2 {
        serve_http2(serving, io, peer, remote, stop, alive).await;
    } else {
        serve_http1(serving, io, peer, remote, stop, alive).await;
    }
}

async fn serve_http1<I>(
    serving: &Serving,
    io: I,
    peer: Peer,
    remote: SocketAddr,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service(serving.live.clone(), peer, alive.clone(), Keep::Connection);
    let conn = serving.http1.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = until_stopped(&mut stop) => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    drop(alive);
    if let Err(error) = result {
        tracing::debug!(%error, client = %remote, "Connection ended with an error");
    }
}

async fn serve_http2<I>(
    serving: &Serving,
    io: I,
    peer: Peer,
    remote: SocketAddr,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service(serving.live.clone(), peer, alive.clone(), Keep::Request);
    let conn = serving.http2.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = until_stopped(&mut stop) => {
            // GOAWAY: streams in flight finish, no new ones start.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    drop(alive);
    if let Err(error) = result {
        tracing::debug!(%error, client = %remote, "Connection ended with an error");
    }
}

/// How long a connection's service keeps the App in force (see
/// [`app::Held`](crate::app::Held)).
#[derive(Clone, Copy)]
enum Keep {
    /// From one request to the next: an HTTP/1 connection, which closes
    /// after `limits.header_read_timeout` without a request, so an App
    /// that a reload replaced is let go of soon.
    Connection,
    /// For one request: an HTTP/2 connection may stay open and idle for
    /// hours, and would keep a replaced App (and its provider's discovery)
    /// alive all that time.
    Request,
}

/// The per-connection service: hands each request to `routes`.
fn service(
    live: Live,
    peer: Peer,
    alive: mpsc::Sender<()>,
    keep: Keep,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<crate::respond::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<crate::respond::Body>, Infallible>> + Send,
> + Clone {
    let held = std::cell::RefCell::new(live.held());
    service_fn(move |mut req: Request<Incoming>| {
        // Each request runs on the App in force when it arrives.
        let app = match keep {
            Keep::Connection => live.hold(&mut held.borrow_mut()),
            Keep::Request => live.held(),
        };
        // HTTP/2 carries the host in the :authority pseudo-header only;
        // the header rewrite and the app expect `Host`.
        if !req.headers().contains_key(header::HOST)
            && let Some(host) = req
                .uri()
                .authority()
                .and_then(|a| header::HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        // An upgraded connection outlives its request; it keeps this so
        // the drain waits for it too.
        let drain = DrainGuard(alive.clone());
        async move {
            // Pinned in place rather than copied (see `routes::handle`).
            let handled = std::pin::pin!(routes::handle(app, req, peer, drain));
            Ok::<_, Infallible>(handled.await)
        }
    })
}

/// Refreshes what is measured rather than counted, and runs the session
/// store's housekeeping.
async fn housekeeping(live: Live) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        tick.tick().await;
        let app = live.load();
        app.sessions.housekeeping().await;
        refresh_gauges(&app);
    }
}

fn refresh_gauges(app: &App) {
    metrics::sessions_active(app.sessions.len());
    metrics::provider_up(app.is_ready());
}

/// The metrics listener: `GET /metrics` and nothing else.
async fn serve_metrics(
    listener: std::net::TcpListener,
    live: Live,
    mut stopped: watch::Receiver<bool>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        tracing::error!("Metrics listener could not be registered with the runtime");
        return;
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = until_stopped(&mut stopped) => return,
        };
        let live = live.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let app = live.load();
            async move { Ok::<_, Infallible>(metrics_response(&app, &req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn metrics_response(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            // The session count is exact only after pending evictions run.
            app.sessions.housekeeping().await;
            refresh_gauges(app);
            (StatusCode::OK, metrics::CONTENT_TYPE, metrics::render())
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    res
}

/// How many connections the kernel may hold for billguard before it
/// accepts them. The system default (128) overflows when a few hundred
/// clients connect at once, such as a load balancer opening its pool or
/// browsers coming back after a restart: each connection over it loses
/// its SYN and waits a second for the retry. The kernel caps this at
/// `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: u32 = 4096;

/// The public listener: `addr` bound with address reuse (a restart need
/// not wait out old connections) and a backlog of [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves on SIGTERM or Ctrl-C, saying which.
pub async fn shutdown_signal() -> Signal {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => Signal::Interrupt,
        _ = term => Signal::Terminate,
    }
}
