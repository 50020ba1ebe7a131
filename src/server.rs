//! The listener: accepts connections, serves HTTP/1.1 on each (with
//! upgrades), and drains in-flight requests on shutdown.
//!
//! Plain-HTTP listeners speak HTTP/1.1 only. Browsers never use cleartext
//! HTTP/2, and hyper's protocol auto-detection would keep a connection that
//! sends nothing open forever; with HTTP/1.1 alone the header-read timeout
//! bounds every connection, idle or slow.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;
use crate::headers::Peer;
use crate::oidc::{self, Provider};
use crate::routes;

/// Time a client has to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (request line, headers, cookies).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long in-flight requests may run after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] oidc::reqwest_error::BuildError),
}

/// A proxy that is accepting connections.
pub struct Running {
    addr: SocketAddr,
    provider: Provider,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

// === impl Running ===

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves once the provider metadata is loaded.
    pub async fn wait_ready(&self) {
        self.provider.wait_ready().await;
    }

    /// Stops accepting, lets in-flight requests finish (up to a grace
    /// period), and returns when done.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Binds `config.listen` and serves until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> Result<(), Error> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let running = start(config, listener)?;
    tracing::info!(addr = %running.addr(), "Listening");

    shutdown_signal().await;
    tracing::info!(grace = ?DRAIN_TIMEOUT, "Shutting down: draining in-flight requests");
    running.shutdown().await;
    tracing::info!("Stopped");
    Ok(())
}

/// Serves on an already bound listener (tests bind port 0 first).
pub fn start(config: Config, listener: TcpListener) -> Result<Running, Error> {
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let app = Arc::new(App::new(&config)?);
    let provider = app.provider.clone();
    let (stop, stopped) = watch::channel(false);

    let discovery = tokio::spawn(provider.clone().run());
    let housekeeping = tokio::spawn({
        let sessions = app.sessions.clone();
        async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
            loop {
                tick.tick().await;
                sessions.housekeeping().await;
            }
        }
    });
    let task = tokio::spawn(async move {
        accept_loop(app, listener, stopped).await;
        discovery.abort();
        housekeeping.abort();
    });
    Ok(Running {
        addr,
        provider,
        stop,
        task,
    })
}

async fn accept_loop(app: Arc<App>, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
    // Every connection task holds a sender; when all are dropped, the
    // receiver sees the channel close and the drain is complete.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);

    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Usually out of file descriptors: back off briefly
                    // instead of spinning.
                    tracing::warn!(%error, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = until_stopped(&mut stopped) => break,
        };
        let _ = stream.set_nodelay(true);

        let peer = Peer {
            ip: remote.ip(),
            proto: "http",
        };
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(routes::handle(app, req, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stopped.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = until_stopped(&mut stop) => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, client = %remote, "Connection ended with an error");
            }
        });
    }

    drop(listener);
    drop(alive);
    tokio::select! {
        _ = all_closed.recv() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("Grace period over; closing remaining connections");
        }
    }
}

async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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
        _ = ctrl_c => {}
        _ = term => {}
    }
}
