//! The stand-in app of `billguard demo`: where BillTracker would be. Every
//! page greets the user named in the identity headers billguard sent and
//! lists the `X-Forwarded-*` headers it received, so a newcomer sees exactly
//! what the real app would be told. It trusts those headers as the real app
//! does, which is safe only because billguard is the sole way in: it binds
//! loopback only, on a port nobody is told about.

use std::net::SocketAddr;

use askama::Template;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::task::JoinHandle;

use super::{Error, bind_loopback, serve_http};

/// The running stand-in app; it stops when dropped.
pub(super) struct App {
    url: String,
    task: JoinHandle<()>,
}

// === impl App ===

impl App {
    pub(super) async fn start(addr: SocketAddr) -> Result<App, Error> {
        let listener = bind_loopback(addr, "the stand-in app").await?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let task = tokio::spawn(serve_http(listener, |req| async move { page(&req) }));
        Ok(App {
            url: format!("http://{local}"),
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub(super) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Template)]
#[template(path = "demo/app.html")]
struct AppPage<'a> {
    user: &'a str,
    role: &'a str,
    path: &'a str,
    headers: Vec<(String, String)>,
}

fn page(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-forwarded-"))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    headers.sort();

    let view = AppPage {
        user: header("x-forwarded-user"),
        role: header("x-forwarded-role"),
        path: req.uri().path(),
        headers,
    };
    let body = view
        .render()
        .unwrap_or_else(|_| "<!doctype html><title>demo app</title><p>Page error.</p>".into());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}
