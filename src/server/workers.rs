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
//! connects, and the first to call `accept` gets it. In a burst (a load
//! balancer or a browser opening many connections at once) one thread
//! would take most of them, and with keep-alive it would serve them for
//! their whole life while another core idles. So a thread that accepts a
//! connection while it serves more than another serving thread hands the
//! connection to the thread with the fewest ([`Balance`]); the connection
//! counts are kept even.
//!
//! The process's main runtime keeps everything that is not a connection:
//! signals, configuration reloads, the provider's discovery, the metrics
//! listener and the store's housekeeping.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

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

/// Where each serving thread stands: its open connections, and how to
/// hand it one.
pub(super) struct Balance {
    /// This thread's place in `open` and `inboxes` (its number minus one).
    me: usize,
    shared: Arc<Shared>,
    inbox: mpsc::UnboundedReceiver<Handoff>,
}

struct Shared {
    open: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

/// An accepted connection with the place it holds in
/// `limits.max_connections` and in its serving thread's count: on its way
/// to that thread (`S` a std socket, which no runtime watches), or
/// registered with it (a tokio socket).
pub(super) struct Conn<S> {
    pub(super) stream: S,
    pub(super) remote: SocketAddr,
    pub(super) permit: OwnedSemaphorePermit,
    pub(super) counted: Counted,
}

type Handoff = Conn<std::net::TcpStream>;

/// One open connection in a serving thread's count, for as long as it is
/// kept.
pub(super) struct Counted {
    shared: Arc<Shared>,
    thread: usize,
}

// === impl Balance ===

impl Balance {
    fn all(count: usize) -> Vec<Balance> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let shared = Arc::new(Shared {
            open: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders.into(),
        });
        receivers
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| Balance {
                me,
                shared: shared.clone(),
                inbox,
            })
            .collect()
    }

    /// A connection another thread handed to this one, registered with
    /// this thread's runtime; `None` if it could not be.
    pub(super) async fn handed(&mut self) -> Option<Option<Conn<TcpStream>>> {
        let handed = self.inbox.recv().await?;
        Some(register(handed))
    }

    /// A connection this thread accepted: `Some` to serve it here, `None`
    /// when it went to a thread with fewer connections (or was lost on
    /// the way).
    pub(super) fn admit(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> Option<Conn<TcpStream>> {
        let (thread, counted) = match self.place() {
            Ok(counted) => {
                return Some(Conn {
                    stream,
                    remote,
                    permit,
                    counted,
                });
            }
            Err(elsewhere) => elsewhere,
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, client = %remote, "Connection lost before it was handed on");
                return None;
            }
        };
        let handoff = Conn {
            stream,
            remote,
            permit,
            counted,
        };
        match self.shared.inboxes[thread].send(handoff) {
            Ok(()) => None,
            // That thread stopped accepting (it is shutting down): serve
            // the connection here.
            Err(mpsc::error::SendError(back)) => register(back),
        }
    }

    /// Decides where a connection this thread accepted is served: `Ok`
    /// here, counted, or `Err` with the thread it is handed to.
    fn place(&self) -> Result<Counted, (usize, Counted)> {
        let open = &self.shared.open;
        let mine = open[self.me].load(Ordering::Relaxed);
        let (fewest, theirs) = open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, n)| n)
            .unwrap_or((self.me, mine));
        if theirs < mine {
            Err((fewest, self.count(fewest)))
        } else {
            Ok(self.count(self.me))
        }
    }

    fn count(&self, thread: usize) -> Counted {
        self.shared.open[thread].fetch_add(1, Ordering::Relaxed);
        Counted {
            shared: self.shared.clone(),
            thread,
        }
    }
}

/// `conn` registered with this thread's runtime.
fn register(conn: Handoff) -> Option<Conn<TcpStream>> {
    match TcpStream::from_std(conn.stream) {
        Ok(stream) => Some(Conn {
            stream,
            remote: conn.remote,
            permit: conn.permit,
            counted: conn.counted,
        }),
        Err(error) => {
            tracing::debug!(%error, client = %conn.remote, "Handed connection could not be registered");
            None
        }
    }
}

// === impl Counted ===

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared.open[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
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
    for (balance, n) in Balance::all(count).into_iter().zip(1..) {
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
                run(
                    n,
                    serving,
                    socket,
                    (permits, balance),
                    (open, stopped),
                    closing,
                );
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
    (permits, balance): (Arc<Semaphore>, Balance),
    (mut open, stopped): (watch::Receiver<bool>, watch::Receiver<bool>),
    closing: oneshot::Sender<()>,
) {
    schedule_as_batch(n);
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
            Ok(listener) => {
                accept_loop(serving, listener, permits, balance, stopped, closing).await;
            }
            Err(error) => {
                tracing::error!(%error, thread = n, "Listener could not be registered with a serving thread");
            }
        }
    });
}

/// Tells the kernel that this thread works through queues of events
/// (Linux's `SCHED_BATCH`): it gets the same share of the CPU as before,
/// but being woken up no longer lets it take the core from whatever runs
/// there. Without this, on a busy core a serving thread is woken for each
/// event that arrives while it sleeps, handles that one event, and goes
/// back to sleep, paying two context switches for a request or two; under
/// load the kernel instead lets events gather, and the thread handles them
/// together when its turn comes, as an nginx worker, which rarely sleeps,
/// does. On an idle core a woken thread runs at once, as before.
///
/// Where the system refuses (not Linux, or a sandbox that forbids it), the
/// thread is scheduled as usual.
fn schedule_as_batch(n: usize) {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
    };
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    // The niceness stays the process's default (0).
    let priority = ThreadPriority::Os(ThreadPriorityOsValue::default());
    match thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        priority,
        batch,
    ) {
        Ok(()) => tracing::debug!(thread = n, "Serving thread scheduled as a batch thread"),
        Err(error) => {
            tracing::debug!(
                ?error,
                thread = n,
                "Serving thread keeps the usual scheduling"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each of `n` connections accepted by thread 0 is served.
    fn placed(balance: &[Balance], n: usize) -> (Vec<usize>, Vec<Counted>) {
        let mut kept = Vec::new();
        let threads = (0..n)
            .map(|_| match balance[0].place() {
                Ok(counted) | Err((_, counted)) => {
                    let thread = counted.thread;
                    kept.push(counted);
                    thread
                }
            })
            .collect();
        (threads, kept)
    }

    #[test]
    fn a_burst_on_one_thread_is_spread_evenly() {
        let balance = Balance::all(3);
        let (threads, mut kept) = placed(&balance, 7);
        assert_eq!(threads, [0, 1, 2, 0, 1, 2, 0]);

        // Thread 2's connections close: it gets the next ones.
        kept.retain(|c| c.thread != 2);
        let (threads, _more) = placed(&balance, 3);
        assert_eq!(threads, [2, 2, 1]);
    }

    /// The scheduling policy of the calling thread, as Linux reports it
    /// (field 41 of its `stat`: 0 normal, 3 batch).
    #[cfg(target_os = "linux")]
    fn policy() -> String {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name (field 2) may hold spaces; fields after it don't.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(41 - 3).unwrap().to_owned()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_serving_thread_is_a_batch_thread() {
        std::thread::spawn(|| {
            // Normal first, whatever the test runner's own policy is.
            thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                thread_priority::ThreadPriority::Os(Default::default()),
                thread_priority::ThreadSchedulePolicy::Normal(
                    thread_priority::NormalThreadSchedulePolicy::Other,
                ),
            )
            .unwrap();
            assert_eq!(policy(), "0");
            schedule_as_batch(1);
            assert_eq!(policy(), "3");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn one_thread_keeps_everything() {
        let balance = Balance::all(1);
        let (threads, _kept) = placed(&balance, 3);
        assert_eq!(threads, [0, 0, 0]);
    }
}
