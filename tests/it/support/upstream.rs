//! A stand-in for the protected app: it echoes every request back as JSON.
//!
//! Each request gets 200 `application/json` describing what arrived: method, path and query,
//! HTTP version, the headers, and the body's length and SHA-256, read as a stream so uploads of
//! any size and without `Content-Length` work. `GET /big?bytes=N` streams N bytes of `x` back.
//! A request with `Upgrade: websocket` is switched to a WebSocket that echoes each message
//! (text prefixed with `echo: `); its 101 carries `x-upstream-saw-user` with the
//! `x-forwarded-user` the upgrade request had, so tests can see identity reach the app.
//! Everything stops when the [`Upstream`] handle is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _, stream};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

const BIG_CHUNK: usize = 64 * 1024;

/// A running echo app; it stops, open WebSockets included, when this handle is dropped.
pub struct Upstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    // Dropping the only sender ends the accept loop and every WebSocket echo.
    _shutdown: watch::Sender<()>,
}

type Body = BoxBody<Bytes, Infallible>;

// === impl Upstream ===

impl Upstream {
    /// Starts the echo app on an ephemeral loopback port.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral loopback port for the upstream");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let requests = Arc::new(AtomicUsize::new(0));

        let (shutdown, stopped) = watch::channel(());
        tokio::spawn(serve(listener, requests.clone(), stopped));
        Upstream {
            addr,
            requests,
            _shutdown: shutdown,
        }
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far, WebSocket upgrades included.
    pub fn requests_seen(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(
    listener: TcpListener,
    requests: Arc<AtomicUsize>,
    mut stopped: watch::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Shutdown first, so nothing is accepted once the handle is gone.
            biased;
            _ = stopped.changed() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let requests = requests.clone();
                let stopped = stopped.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let stopped = stopped.clone();
                        async move { Ok::<_, Infallible>(respond(req, stopped).await) }
                    });
                    // A client hanging up mid-request is its own business.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        }
    }
}

async fn respond(req: Request<Incoming>, stopped: watch::Receiver<()>) -> Response<Body> {
    let is_websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_websocket {
        return websocket(req, stopped);
    }
    if req.uri().path() == "/big" {
        return big(req.uri().query().unwrap_or_default());
    }
    echo(req).await
}

/// Describes the request as JSON, reading the body frame by frame as it arrives.
async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            [name.as_str().to_owned(), value]
        })
        .collect();

    let mut bytes = 0u64;
    let mut hasher = Sha256::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return text(StatusCode::BAD_REQUEST, "the request body broke off");
        };
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
            hasher.update(data);
        }
    }

    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let description = json!({
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": bytes,
        "body_sha256": hex(&hasher.finalize()),
    });
    let mut resp = Response::new(full(description.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Streams `bytes=N` bytes of `x` in chunks, with no `Content-Length`.
fn big(query: &str) -> Response<Body> {
    let size = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "bytes")
        .and_then(|(_, value)| value.parse::<usize>().ok());
    let Some(size) = size else {
        return text(StatusCode::BAD_REQUEST, "want /big?bytes=N");
    };

    let chunk = Bytes::from(vec![b'x'; BIG_CHUNK]);
    let chunks = (0..size.div_ceil(BIG_CHUNK)).map(move |i| {
        let len = BIG_CHUNK.min(size - i * BIG_CHUNK);
        Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
    });
    let body = BodyExt::boxed(StreamBody::new(stream::iter(chunks)));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// Answers the upgrade (RFC 6455 §4.2.2), then echoes on the upgraded connection.
fn websocket(mut req: Request<Incoming>, mut stopped: watch::Receiver<()>) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let saw_user = req.headers().get("x-forwarded-user").cloned();

    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None);
        tokio::select! {
            _ = stopped.changed() => {}
            () = echo_messages(socket.await) => {}
        }
    });

    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(user) = saw_user {
        headers.insert("x-upstream-saw-user", user);
    }
    resp
}

async fn echo_messages<S>(mut socket: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(message)) = socket.next().await {
        let reply = match message {
            Message::Text(text) => Message::text(format!("echo: {}", text.as_str())),
            Message::Binary(data) => Message::Binary(data),
            // tungstenite answers pings and the closing handshake itself when the loop
            // reads on; the stream then ends.
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
