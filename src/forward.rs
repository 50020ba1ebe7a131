//! The pooled upstream client: forwards a request whose headers are already
//! rewritten, streams both bodies, and splices protocol upgrades
//! (WebSocket) once the app agrees to them.
//!
//! Bodies are never buffered: the browser's body is handed to the client as
//! it arrives and the app's body is returned as a stream. The response
//! headers must arrive within `upstream_timeout`, counted from the moment
//! the request (body included) has been sent, so a large upload is not
//! taken for a slow app; the response body may take as long as it needs. The app may be plain HTTP (beside billguard in the pod) or
//! HTTPS (trusting the web roots and `upstream_ca_file`). The request id is
//! set here, after every other header rewrite, so nothing can strip it.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::request_id::{self, RequestId};
use crate::{config, metrics, tls};

mod pool;

use pool::Pool;

/// The app's response body as billguard streams it to the client.
pub type Body = pool::Body<Sent<Incoming>>;

/// Held by each request of a connection the server has not closed yet; an
/// upgraded connection keeps it until it closes, so a shutdown waits for
/// WebSockets too.
#[derive(Clone, Debug)]
pub struct DrainGuard(pub tokio::sync::mpsc::Sender<()>);

/// What the server knows about a request beyond the request itself.
#[derive(Debug)]
pub struct Sending<'a> {
    /// Sent to the app in [`request_id::HEADER`].
    pub id: &'a RequestId,
    pub drain: DrainGuard,
}

/// A handle to the app.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool<Sent<Incoming>>>,
    authority: hyper::http::uri::Authority,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("no response headers from {authority} within {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    #[error("request to {authority}: {reason}")]
    Request { authority: String, reason: String },
    #[error("request target {0} cannot be forwarded")]
    Target(String),
}

// === impl Upstream ===

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(cfg.ca.as_ref()))
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let scheme = if cfg.url.scheme() == "https" {
            hyper::http::uri::Scheme::HTTPS
        } else {
            hyper::http::uri::Scheme::HTTP
        };
        let authority: hyper::http::uri::Authority = cfg
            .authority
            .parse()
            .expect("the upstream authority was validated as host:port");
        let target = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("a scheme and a validated authority make a URI");
        Upstream {
            pool: Pool::new(connector, target, crate::server::serving_threads()),
            authority,
            timeout: cfg.timeout,
        }
    }

    /// Sends the request to the app. When `upgrade` is set and the app
    /// answers 101, the two connections are joined and carry bytes both
    /// ways until either side closes.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        upgrade: Option<HeaderValue>,
        sending: Sending<'_>,
    ) -> Result<Response<Body>, Error> {
        // The browser's path and query in origin form, shared rather than
        // parsed and copied again.
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        if !req.headers().contains_key(header::HOST) {
            let host = HeaderValue::from_str(self.authority.as_str())
                .map_err(|_| Error::Target(self.authority.to_string()))?;
            req.headers_mut().insert(header::HOST, host);
        }
        // The app speaks HTTP/1.1 whatever the browser spoke.
        *req.version_mut() = Version::HTTP_11;

        req.headers_mut()
            .insert(request_id::HEADER, sending.id.0.clone());

        let downstream = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let guard = sending.drain;
        // A request without a body is sent in full as soon as its head is,
        // which is when the wait for the answer starts anyway.
        let (done, body_sent) = if req.body().is_end_stream() {
            (None, None)
        } else {
            let (done, sent) = oneshot::channel();
            (Some(done), Some(sent))
        };
        let req = req.map(|body| Sent { inner: body, done });
        let started = std::time::Instant::now();
        // Pinned in place, not copied into `select!` (see `routes::handle`).
        let response = pin!(self.pool.send(req));
        // The app cannot be expected to answer before it has the request.
        let deadline = pin!(async {
            if let Some(body_sent) = body_sent {
                let _ = body_sent.await;
            }
            tokio::time::sleep(self.timeout).await;
        });
        let sent = tokio::select! {
            res = response => Some(res),
            () = deadline => None,
        };
        metrics::upstream_latency(started.elapsed());
        let mut res = match sent {
            Some(res) => res?,
            None => {
                return Err(Error::Timeout {
                    authority: self.authority.to_string(),
                    timeout: self.timeout,
                });
            }
        };

        if let Some(downstream) = downstream
            && res.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream = hyper::upgrade::on(&mut res);
            tokio::spawn(async move {
                let _guard = guard;
                match tokio::try_join!(downstream, upstream) {
                    Ok((down, up)) => {
                        let mut down = TokioIo::new(down);
                        let mut up = TokioIo::new(up);
                        if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await
                        {
                            tracing::debug!(%error, "Upgraded connection ended with an error");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "Protocol upgrade failed"),
                }
            });
        }
        Ok(res)
    }
}

/// A request body that reports when it has been sent in full (one that
/// was empty from the start has nothing to report).
pub struct Sent<B> {
    inner: B,
    done: Option<oneshot::Sender<()>>,
}

// === impl Sent ===

impl<B> Sent<B> {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Sent<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the request asks to switch protocols (RFC 9110 §7.8), and to
/// which one.
pub fn requested_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks && req.version() == Version::HTTP_11 {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}
