//! The app's keep-alive connections.
//!
//! A request takes the connection that went idle last (its socket is the
//! warmest), or opens a new one. The connection comes back when the
//! response body has been read to its end; a body dropped halfway takes
//! its connection with it, because what is left of it would be read as
//! the next response. A connection the app upgraded (WebSocket) never
//! comes back. Idle connections are dropped after [`IDLE_TIMEOUT`], and
//! at most [`MAX_IDLE`] are kept.
//!
//! A request that a pooled connection could not take (the app had closed
//! it, and hyper hands the request back unsent) goes to the next
//! connection, or a new one: an app that closes idle connections early
//! (Node.js does after 5 s) costs no failed request. A request that was
//! sent is never sent twice.
//!
//! Each serving thread keeps its own idle connections (see
//! `server::workers`): a connection is opened, driven and reused on one
//! thread, so its wake-ups never cross to another core, and the lock
//! around a thread's list is never contended. Each request costs that
//! lock held for a push or a pop, and nothing is spawned per request: the
//! connection's own task is the only one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

use super::Error;
use crate::errors::chain;
use crate::server::serving_thread;

/// An idle connection older than this is closed.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many idle connections are kept per serving thread.
pub(super) const MAX_IDLE: usize = 256;
/// A connection's read buffer grows to this for large responses and no
/// further: a few more reads per large body, instead of every connection
/// that once carried one keeping hundreds of KiB.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// Connections to one app, for requests with bodies of type `B`.
#[derive(Debug)]
pub(super) struct Pool<B> {
    connector: HttpsConnector<HttpConnector>,
    /// Where the connector connects (scheme and authority).
    target: Uri,
    /// Per serving thread (index 0 for any other thread), oldest first.
    idle: Box<[Mutex<VecDeque<Idle<B>>>]>,
}

#[derive(Debug)]
struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

// === impl Pool ===

impl<B> Pool<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool for `threads` serving threads.
    pub(super) fn new(
        connector: HttpsConnector<HttpConnector>,
        target: Uri,
        threads: usize,
    ) -> Arc<Self> {
        Arc::new(Pool {
            connector,
            target,
            idle: (0..=threads).map(|_| Mutex::default()).collect(),
        })
    }

    /// This thread's idle connections.
    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle<B>>> {
        let list = &self.idle[serving_thread() % self.idle.len()];
        list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection or
    /// a new one.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<B>,
    ) -> Result<Response<Body<B>>, Error> {
        while let Some(mut sender) = self.take() {
            // One that has just delivered its last response may still be
            // finishing it; it is ready in a moment, or reports closed.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(self.track(res, sender)),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(self.request_error(failed.error())),
                },
            }
        }
        // Boxed: opening a connection is rare, and its future (which
        // holds a TLS client's state) would otherwise make every request's
        // future larger, and every request copies its future around.
        let mut sender = Box::pin(self.connect()).await?;
        match sender.send_request(req).await {
            Ok(res) => Ok(self.track(res, sender)),
            Err(e) => Err(self.request_error(&e)),
        }
    }

    /// Opens a connection and starts its task.
    async fn connect(&self) -> Result<SendRequest<B>, Error> {
        let mut connector = self.connector.clone();
        let connected = async {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
            connector.call(self.target.clone()).await
        };
        let io = connected.await.map_err(|e| Error::Connect {
            authority: self.authority(),
            reason: chain(&*e),
        })?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(READ_BUFFER_MAX)
            .handshake(io)
            .await
            .map_err(|e| Error::Connect {
                authority: self.authority(),
                reason: chain(&e),
            })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "Upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The response, with its body holding the connection until the end.
    fn track(
        self: &Arc<Self>,
        res: Response<Incoming>,
        sender: SendRequest<B>,
    ) -> Response<Body<B>> {
        let back = (res.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Back {
            sender,
            pool: self.clone(),
        });
        let (parts, inner) = res.into_parts();
        let mut body = Body { inner, back };
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    fn take(&self) -> Option<SendRequest<B>> {
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|oldest| oldest.since.elapsed() > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        idle.pop_back().map(|i| i.sender)
    }

    fn put(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Idle connections kept now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle().len()
    }

    fn authority(&self) -> String {
        self.target
            .authority()
            .map_or_else(String::new, |a| a.to_string())
    }

    fn request_error(&self, e: &hyper::Error) -> Error {
        Error::Request {
            authority: self.authority(),
            reason: chain(e),
        }
    }
}

/// The connection a response body gives back when it is done.
#[derive(Debug)]
struct Back<B> {
    sender: SendRequest<B>,
    pool: Arc<Pool<B>>,
}

/// The app's response body, streamed as it arrives.
#[derive(Debug)]
pub struct Body<B> {
    inner: Incoming,
    back: Option<Back<B>>,
}

// === impl Body ===

impl<B> Body<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn release(&mut self) {
        if let Some(Back { sender, pool }) = self.back.take() {
            pool.put(sender);
        }
    }
}

impl<B> hyper::body::Body for Body<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken body leaves a connection nobody can trust.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use hyper::body::Bytes;
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    /// An app on loopback that counts the connections it accepted and
    /// answers `/` with `body`; `/close` answers and closes.
    async fn app(body: &'static [u8]) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let mut res =
                            Response::new(http_body_util::Full::new(Bytes::from_static(body)));
                        if req.uri().path() == "/close" {
                            res.headers_mut()
                                .insert(hyper::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(res)
                    });
                    let _ = server::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{addr}").parse().unwrap(), accepted)
    }

    type Empty = http_body_util::Empty<Bytes>;

    fn pool(target: &Uri) -> Arc<Pool<Empty>> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(None))
            .https_or_http()
            .enable_http1()
            .wrap_connector(HttpConnector::new());
        Pool::new(connector, target.clone(), 1)
    }

    /// A request in origin form with `Host`, as `forward` builds it.
    fn get(target: &Uri, path: &str) -> Request<Empty> {
        Request::builder()
            .uri(path)
            .header(hyper::header::HOST, target.authority().unwrap().as_str())
            .body(Empty::new())
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_was_read() {
        let (target, accepted) = app(b"hello").await;
        let pool = pool(&target);
        for _ in 0..3 {
            let res = pool.send(get(&target, "/")).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_halfway_takes_its_connection_along() {
        let (target, accepted) = app(&[b'x'; 200_000]).await;
        let pool = pool(&target);
        let res = pool.send(get(&target, "/")).await.unwrap();
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| d.len() < 200_000));
        drop(body);
        assert_eq!(pool.idle_count(), 0);
        let res = pool.send(get(&target, "/")).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 200_000);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_not_used_again() {
        let (target, accepted) = app(b"bye").await;
        let pool = pool(&target);
        let res = pool.send(get(&target, "/close")).await.unwrap();
        let _ = res.into_body().collect().await.unwrap();
        let res = pool.send(get(&target, "/")).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"bye");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let err = pool(&target).send(get(&target, "/")).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }
}
