//! What happens to a request, from arrival to response.
//!
//! 1. **Own paths.** The callback (the path of `oidc.redirect_uri`) and
//!    everything under `/_billguard/` are served here and never reach the
//!    app; an unknown `/_billguard/` path is a 404.
//! 2. **Session.** Any other path needs a session, looked up by the
//!    session cookie.
//! 3. **No session.** A browser navigation is sent to the provider and comes
//!    back to the same page after login; a script (fetch, XHR, API client)
//!    gets 401 `application/problem+json` with the sign-in URL, never a
//!    redirect it cannot follow.
//! 4. **Rewrite.** Hop-by-hop headers, look-alike identity headers and
//!    billguard's cookies go; `X-Forwarded-*` and the identity headers are
//!    set (see `headers`).
//! 5. **Forward.** The request streams to the app; its response streams
//!    back, or an upgrade is spliced (see `forward`).
//! 6. **Log.** One access-log line per request on `billguard::access`.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::forward;
use crate::headers::Peer;
use crate::health;
use crate::login::{self, safe_return_to, start_href};
use crate::respond::{self, Body, Failure};
use crate::session::Session;

const OWN_PREFIX: &str = "/_billguard/";

/// Serves one request and writes its access-log line.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();

    let (res, session) = route(&app, req, peer).await;

    tracing::info!(
        target: "billguard::access",
        %method,
        path,
        status = res.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        user = session.as_ref().map(|s| s.identity.user.as_str()).unwrap_or("-"),
        client = %peer.ip,
    );
    res
}

async fn route(
    app: &App,
    req: Request<Incoming>,
    peer: Peer,
) -> (Response<Body>, Option<Arc<Session>>) {
    let path = req.uri().path();
    let navigation = is_navigation(&req);

    if path == app.callback_path {
        if !is_read(req.method()) {
            return (method_not_allowed(), None);
        }
        return (
            login::callback(app, req.headers(), req.uri().query()).await,
            None,
        );
    }
    if let Some(endpoint) = path.strip_prefix(OWN_PREFIX) {
        return own(app, endpoint, &req, navigation).await;
    }
    proxy(app, req, peer, navigation).await
}

/// billguard's own endpoints, listed in the module doc of each handler.
async fn own(
    app: &App,
    endpoint: &str,
    req: &Request<Incoming>,
    navigation: bool,
) -> (Response<Body>, Option<Arc<Session>>) {
    let headers = req.headers();
    let read = is_read(req.method());
    let res = match endpoint {
        "health" if read => health::health(),
        "ready" if read => health::ready(app),
        "whoami" if read => health::whoami(app, headers).await,
        "start" if read => {
            let rd = query_param(req.uri().query(), "rd");
            let return_to = rd.as_deref().and_then(safe_return_to);
            if rd.is_some() && return_to.is_none() {
                tracing::warn!(target: "billguard::auth", outcome = "failure", reason = "unsafe_return_to", "Login not started: return path leaves this site");
                return (
                    Failure::bad_request("This sign-in link points outside this site.")
                        .with_retry(start_href("/"))
                        .into_response(navigation),
                    None,
                );
            }
            login::start(app, headers, return_to.as_deref().unwrap_or("/")).await
        }
        "sign_out" if read || req.method() == Method::POST => login::sign_out(app, headers).await,
        "health" | "ready" | "whoami" | "start" | "sign_out" => method_not_allowed(),
        _ => Failure::not_found().into_response(navigation),
    };
    (res, None)
}

/// Everything that is not billguard's goes to the app, with a session.
async fn proxy(
    app: &App,
    mut req: Request<Incoming>,
    peer: Peer,
    navigation: bool,
) -> (Response<Body>, Option<Arc<Session>>) {
    let Some((_, session)) = app.sessions.lookup(req.headers()).await else {
        return (unauthenticated(app, &req, navigation).await, None);
    };

    let upgrade = forward::requested_upgrade(&req);
    app.rewriter.upstream_request(
        req.headers_mut(),
        peer,
        Some(&session.headers),
        upgrade.clone(),
    );

    let res = match app.upstream.forward(req, upgrade.clone()).await {
        Ok(mut res) => {
            let switched = res.status() == StatusCode::SWITCHING_PROTOCOLS;
            app.rewriter
                .downstream_response(res.headers_mut(), upgrade.filter(|_| switched));
            res.map(http_body_util::Either::Left)
        }
        Err(error) => {
            let failure = match &error {
                forward::Error::Timeout { .. } => Failure::gateway_timeout(),
                forward::Error::Target(_) => Failure::bad_request("This address cannot be served."),
                _ => Failure::bad_gateway(),
            };
            tracing::error!(%error, user = %session.identity.user, "Upstream request failed");
            failure.into_response(navigation)
        }
    };
    (res, Some(session))
}

/// No session: browsers go to the provider, scripts get a 401.
async fn unauthenticated(app: &App, req: &Request<Incoming>, navigation: bool) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let return_to = safe_return_to(target).unwrap_or_else(|| "/".to_owned());
    if navigation {
        return login::start(app, req.headers(), &return_to).await;
    }
    let mut res = respond::problem_json(
        StatusCode::UNAUTHORIZED,
        &json!({
            "type": "about:blank",
            "title": "Not signed in",
            "status": 401,
            "detail": "This request needs a session. Sign in with a browser first.",
            "sign_in": start_href(&return_to),
        }),
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Cookie realm=\"billguard\""),
    );
    res
}

/// A top-level browser navigation, told apart from scripted requests the
/// way browsers allow: Fetch Metadata when sent, else `X-Requested-With`
/// and `Accept`. Only GET and HEAD are navigations that may be redirected.
pub fn is_navigation<B>(req: &Request<B>) -> bool {
    if !is_read(req.method()) {
        return false;
    }
    let headers = req.headers();
    if let Some(mode) = header_str(headers, "sec-fetch-mode") {
        return mode.eq_ignore_ascii_case("navigate")
            && header_str(headers, "sec-fetch-dest").is_none_or(|d| {
                d.eq_ignore_ascii_case("document") || d.eq_ignore_ascii_case("iframe")
            });
    }
    if headers.contains_key("x-requested-with") {
        return false;
    }
    header_str(headers, "accept").is_some_and(|a| a.contains("text/html"))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn method_not_allowed() -> Response<Body> {
    respond::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/bills");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn navigations_are_told_from_scripts() {
        let html = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        type Case<'a> = (Method, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            (
                Method::GET,
                &[
                    html,
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-dest", "document"),
                ],
                true,
            ),
            (Method::HEAD, &[html], true),
            (Method::GET, &[html], true),
            (
                Method::GET,
                &[
                    html,
                    ("sec-fetch-mode", "cors"),
                    ("sec-fetch-dest", "empty"),
                ],
                false,
            ),
            (
                Method::GET,
                &[
                    html,
                    ("sec-fetch-mode", "navigate"),
                    ("sec-fetch-dest", "image"),
                ],
                false,
            ),
            (
                Method::GET,
                &[html, ("x-requested-with", "XMLHttpRequest")],
                false,
            ),
            (Method::GET, &[("accept", "application/json")], false),
            (Method::GET, &[], false),
            (Method::POST, &[html, ("sec-fetch-mode", "navigate")], false),
        ];
        for (method, headers, expected) in cases {
            assert_eq!(
                is_navigation(&req(method.clone(), headers)),
                *expected,
                "{method} {headers:?}"
            );
        }
    }
}
