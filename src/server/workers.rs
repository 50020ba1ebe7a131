//! The serving threads: one single-threaded runtime per core, as nginx
//! has one worker process per core.
//!
//! Every thread accepts on its own handle of the one listening socket and
//! serves the connections it accepted to their end: a request never moves
//! between threads, and its wake-ups stay on the core that polls it.
//! Tokio's work-stealing scheduler would move tasks to whichever thread is
//! free, at the price of cross-thread wake-ups and shared queues on every
//! request; for many small, independent connections that price is the
//! larger one.
//!
//! The kernel wakes every thread waiting on the socket when a client
//! connects, and the first to call `accept` gets it, so a thread that is
//! busy serving takes fewer new connections than an idle one.
//!
//! The process's main runtime keeps everything that is not a connection:
//! signals, configuration reloads, the provider's discovery, the metrics
//! listener and the store's housekeeping.

use std::cell::Cell;
use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};

use super::{Serving, accept_loop};
use crate::telemetry;

thread_local! {
    /// This thread's number among the serving threads, from 1; 0 on any
    /// other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// This thread's number among the serving threads (from 1), or 0 on a
/// thread that serves no connections. Per-thread resources, such as the
/// app's idle connections, are kept under it.
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many serving threads a process starts: one per core it may use
/// (a cgroup's CPU quota, such as a Kubernetes CPU limit, counts).
pub(crate) fn count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Starts `count` serving threads on `listener`. They accept once `open`
/// turns true, and stop accepting when `stopped` does.
pub(super) fn start(
    serving: Arc<Serving>,
    listener: TcpListener,
    count: usize,
    open: watch::Receiver<bool>,
    stopped: watch::Receiver<bool>,
) -> io::Result<Workers> {
    let listener = listener.into_std()?;
    let permits = Arc::new(Semaphore::new(serving.max_connections));
    let mut closed = Vec::with_capacity(count);
    let mut finished = Vec::with_capacity(count);
    for n in 1..=count {
        let socket = listener.try_clone()?;
        let (closing, on_close) = oneshot::channel();
        let (done, on_done) = oneshot::channel::<()>();
        let serving = serving.clone();
        let permits = permits.clone();
        let (open, stopped) = (open.clone(), stopped.clone());
        std::thread::Builder::new()
            .name(format!("billguard-serve-{n}"))
            .spawn(move || {
                INDEX.with(|i| i.set(n));
                run(n, serving, socket, permits, (open, stopped), closing);
                telemetry::flush_thread();
                drop(done);
            })?;
        closed.push(on_close);
        finished.push(on_done);
    }
    Ok(Workers { closed, finished })
}

/// The serving threads of one listener.
pub(super) struct Workers {
    closed: Vec<oneshot::Receiver<()>>,
    finished: Vec<oneshot::Receiver<()>>,
}

// === impl Workers ===

impl Workers {
    /// Resolves once no thread accepts any more.
    pub(super) async fn closed(&mut self) {
        for closed in self.closed.drain(..) {
            let _ = closed.await;
        }
    }

    /// Resolves once every thread has drained its connections and stopped.
    pub(super) async fn finished(self) {
        for finished in self.finished {
            // A sender dropped (the thread ended) is the signal.
            let _ = finished.await;
        }
    }
}

fn run(
    n: usize,
    serving: Arc<Serving>,
    socket: std::net::TcpListener,
    permits: Arc<Semaphore>,
    (mut open, stopped): (watch::Receiver<bool>, watch::Receiver<bool>),
    closing: oneshot::Sender<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(telemetry::worker_idle)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, thread = n, "Cannot start a serving thread's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        // An error: the proxy stopped before it opened.
        if open.wait_for(|open| *open).await.is_err() {
            return;
        }
        match TcpListener::from_std(socket) {
            Ok(listener) => accept_loop(serving, listener, permits, stopped, closing).await,
            Err(error) => {
                tracing::error!(%error, thread = n, "Listener could not be registered with a serving thread");
            }
        }
    });
}
