//! What happens to a request, from arrival to response.
//!
//! 1. **Path.** The path is normalized (see `policy::path`); an ambiguous
//!    spelling such as `%2F` is a 400. Everything below sees the normalized
//!    path, and the app receives it re-encoded.
//! 2. **Own paths.** The callback (the path of `oidc.redirect_uri`) and
//!    everything under `/_billguard/` are served here and never reach the
//!    app; an unknown `/_billguard/` path is a 404.
//! 3. **Rules.** The first `[[routes]]` rule that matches the method and
//!    path decides: `public`, `authenticated` (also when none matches) or
//!    `admin` (see `policy`).
//! 4. **Credentials.** A public path needs none. Any other needs a session,
//!    found by the session cookie and refreshed first when the provider must
//!    be asked again (see `refresh`), or else a valid `Authorization:
//!    Bearer` token (see `bearer`); a refused token is a 401
//!    `invalid_token`. A session store that cannot be reached gives 503:
//!    nobody is let through unchecked.
//! 5. **No credentials.** A browser navigation is sent to the sign-in page
//!    while local login is on, else straight to the provider, and comes back
//!    to the same page after login; a script (fetch, XHR, API client) gets
//!    401 `application/problem+json` with the sign-in URL, never a redirect
//!    it cannot follow.
//! 6. **Role.** An admin path for anyone but an admin is a 403.
//! 7. **Rewrite.** Hop-by-hop headers, look-alike identity headers and
//!    billguard's cookies go; `X-Forwarded-*` and the identity headers are
//!    set (see `headers`). `Authorization` goes unless
//!    `bearer.forward_authorization`; the access token and the signed
//!    statement are added when configured (see `statement`).
//! 8. **Forward.** The request streams to the app; its response streams
//!    back, or an upgrade is spliced (see `forward`).
//! 9. **Log.** One access-log line per request on `billguard::access`, and
//!    the request counted in `metrics`. Every log line of the request carries
//!    its id (see `request_id`), which the app and the client also receive.

use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::admin;
use crate::app::{App, Held};
use crate::backchannel;
use crate::bearer::{self, Credential};
use crate::forward;
use crate::headers::{IdentityValues, Peer};
use crate::health;
use crate::identity::{Identity, Refusal, Role};
use crate::local_login::{self, sign_in_href};
use crate::login::{self, query_param, safe_return_to, start_href};
use crate::metrics;
use crate::policy::{self, Access, Normalized};
use crate::request_id::{self, RequestId};
use crate::respond::{self, Body, Failure};
use crate::session::Session;
use crate::telemetry;

const OWN_PREFIX: &str = "/_billguard/";

/// Serves one request and writes its access-log line.
pub async fn handle(
    app: Held,
    req: Request<Incoming>,
    peer: Peer,
    drain: forward::DrainGuard,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // A cheap handle on the request's bytes, not a copy of the path.
    let uri = req.uri().clone();
    let path = uri.path();
    let id = RequestId::from_headers(req.headers());
    let kind = if Some(path) == app.callback_path.as_deref() || path.starts_with(OWN_PREFIX) {
        metrics::RouteKind::Owned
    } else {
        metrics::RouteKind::Proxied
    };

    // Each level of the request's path pins its callee's future where it
    // is made and awaits it through the pin: awaited by value, the future
    // would be copied into this one first (a thousand instructions per
    // request over the whole path).
    let served = pin!(telemetry::in_request(
        &id,
        route(&app, req, path, peer, &id, drain)
    ));
    let (mut res, caller) = served.await;
    metrics::request(kind, res.status());
    res.headers_mut().insert(request_id::HEADER, id.0.clone());

    telemetry::access(&telemetry::Served {
        request_id: id.as_str(),
        method: method.as_str(),
        path,
        status: res.status().as_u16(),
        latency_us: started.elapsed().as_micros() as u64,
        user: caller.as_ref().map_or("-", |c| c.identity().user.as_str()),
        client: peer.ip_text(),
    });
    res
}

/// Whom a request was served for.
enum Caller {
    Session(Arc<Session>),
    /// An API client, with the token it sent.
    Bearer(Arc<bearer::Caller>, String),
}

/// `path` is the request's path as sent, borrowed from the caller so that
/// it outlives the request, which moves on.
async fn route(
    app: &App,
    req: Request<Incoming>,
    path: &str,
    peer: Peer,
    id: &RequestId,
    drain: forward::DrainGuard,
) -> (Response<Body>, Option<Caller>) {
    let navigation = is_navigation(&req);
    let normalized = match policy::normalize(path) {
        Ok(normalized) => normalized,
        Err(error) => {
            tracing::debug!(%error, "Request path refused");
            let failure = Failure::bad_request("This address cannot be served.");
            return (failure.into_response(navigation), None);
        }
    };
    let path = &*normalized.decoded;

    if Some(path) == app.callback_path.as_deref() {
        if !is_read(req.method()) {
            return (method_not_allowed(), None);
        }
        // Boxed, like `own` below: their futures are large (token exchange,
        // pages), and unboxed they would make every proxied request's
        // future as large, copied whenever hyper moves it.
        return (
            Box::pin(login::callback(app, req.headers(), req.uri().query())).await,
            None,
        );
    }
    if path == backchannel::PATH {
        return (Box::pin(backchannel::handle(app, req)).await, None);
    }
    if let Some(endpoint) = path.strip_prefix(OWN_PREFIX) {
        let endpoint = endpoint.to_owned();
        let (res, session) = Box::pin(own(app, &endpoint, req, peer, navigation)).await;
        return (res, session.map(Caller::Session));
    }
    let sent = forward::Sending { id, drain };
    let proxied = pin!(proxy(app, req, peer, navigation, normalized, sent));
    proxied.await
}

/// billguard's own endpoints, listed in the module doc of each handler.
async fn own(
    app: &App,
    endpoint: &str,
    req: Request<Incoming>,
    peer: Peer,
    navigation: bool,
) -> (Response<Body>, Option<Arc<Session>>) {
    let read = is_read(req.method());
    let post = req.method() == Method::POST;
    if post && endpoint == "sign_in" {
        return (local_login::submit(app, req, peer).await, None);
    }
    if post && endpoint == "admin" {
        return (admin::act(app, req).await, None);
    }
    let req = &req;
    let headers = req.headers();
    let res = match endpoint {
        "sign_in" if read => local_login::page(app, headers, req.uri().query()),
        "admin" if read => admin::panel(app, headers).await,
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
        "jwks.json" if read => match app.statements.signer() {
            Some(signer) => respond::json(StatusCode::OK, &signer.jwks()),
            None => Failure::not_found().into_response(navigation),
        },
        "health" | "ready" | "whoami" | "start" | "sign_out" | "jwks.json" | "sign_in"
        | "admin" => method_not_allowed(),
        _ => Failure::not_found().into_response(navigation),
    };
    (res, None)
}

/// Everything that is not billguard's goes to the app, as the rules say.
async fn proxy(
    app: &App,
    mut req: Request<Incoming>,
    peer: Peer,
    navigation: bool,
    normalized: Normalized<'_>,
    sending: forward::Sending<'_>,
) -> (Response<Body>, Option<Caller>) {
    let decision = app.routes.decide(req.method(), &normalized.decoded);
    if !normalized.is_unchanged() && !set_path(&mut req, &normalized.encoded) {
        let failure = Failure::bad_request("This address cannot be served.");
        return (failure.into_response(navigation), None);
    }

    let caller = match decision.access {
        Access::Public => None,
        Access::Authenticated | Access::Admin => match authenticate(app, &req, navigation).await {
            Ok(caller) => Some(caller),
            Err(res) => return (res, None),
        },
    };
    if decision.access == Access::Admin
        && let Some(caller) = &caller
        && caller.identity().role != Role::Admin
    {
        tracing::warn!(
            target: "billguard::auth",
            outcome = "refused",
            reason = "admin_only",
            user = %caller.identity().user,
            rule = decision.rule.map(|(i, _)| i).unwrap_or_default(),
            "Admin-only path refused"
        );
        return (
            Failure::admins_only().into_response(navigation),
            Some(caller.clone()),
        );
    }

    let upgrade = forward::requested_upgrade(&req);
    let headers = req.headers_mut();
    app.rewriter.upstream_request(
        headers,
        peer,
        caller.as_ref().map(Caller::headers).as_ref(),
        upgrade.clone(),
    );
    if !app.forward_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    if app.access_token.forward
        && let Some(token) = caller.as_ref().and_then(Caller::access_token)
    {
        let value = if app.access_token.header == header::AUTHORIZATION {
            format!("Bearer {token}")
        } else {
            token.to_owned()
        };
        // Tokens are ASCII (RFC 6750 §2.1); anything else is not forwarded.
        if let Ok(value) = header::HeaderValue::try_from(value) {
            headers.insert(app.access_token.header.clone(), value);
        }
    }
    app.statements
        .apply(headers, caller.as_ref().map(|c| (c.identity(), c.kind())));

    let forwarded = pin!(app.upstream.forward(req, upgrade.clone(), sending));
    let res = match forwarded.await {
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
            let user = caller
                .as_ref()
                .map(|c| c.identity().user.as_str())
                .unwrap_or("-");
            tracing::error!(%error, user, "Upstream request failed");
            failure.into_response(navigation)
        }
    };
    (res, caller)
}

/// A session wins; without one, a bearer token is checked. A session
/// comes first so that an app whose own pages send their own
/// `Authorization` header keeps working behind billguard.
async fn authenticate(
    app: &App,
    req: &Request<Incoming>,
    navigation: bool,
) -> Result<Caller, Response<Body>> {
    match app.refresher.session_for(req.headers()).await {
        Ok(Some((_, session))) => return Ok(Caller::Session(session)),
        Ok(None) => {}
        Err(error) => {
            tracing::error!(%error, "Request refused: sessions cannot be checked");
            return Err(Failure::sessions_unavailable().into_response(navigation));
        }
    }
    let Some(verifier) = app.bearer.as_ref().filter(|b| b.enabled()) else {
        return Err(Box::pin(unauthenticated(app, req, navigation)).await);
    };
    let token = match bearer::credential(req.headers()) {
        Credential::None => None,
        Credential::Bearer(token) => Some(Ok(token)),
        Credential::Malformed => Some(Err(bearer::Rejection::Invalid("malformed"))),
    };
    let Some(token) = token else {
        return Err(Box::pin(unauthenticated(app, req, navigation)).await);
    };
    let checked = match token {
        // Boxed, as the other cold paths: see `route`.
        Ok(token) => Box::pin(verifier.verify(token, &app.policy))
            .await
            .map(|caller| Caller::Bearer(caller, token.to_owned())),
        Err(rejection) => Err(rejection),
    };
    checked.map_err(|rejection| {
        let reason = match &rejection {
            bearer::Rejection::Invalid(reason) => *reason,
            bearer::Rejection::Refused(Refusal::NotAllowed { .. }) => "not_in_allowed_groups",
            bearer::Rejection::Refused(Refusal::NotProvisioned { .. }) => "not_provisioned",
            bearer::Rejection::Unavailable(_) => "unavailable",
        };
        tracing::warn!(target: "billguard::auth", outcome = "failure", reason, error = %rejection, "Bearer token refused");
        respond::bearer_rejection(&rejection)
    })
}

/// Points the request at the normalized path, keeping the query as sent.
/// False when that cannot be done; the raw path must then never be sent.
fn set_path(req: &mut Request<Incoming>, path: &str) -> bool {
    let target = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    let Ok(target) = target.parse() else {
        return false;
    };
    parts.path_and_query = Some(target);
    match hyper::Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            true
        }
        Err(_) => false,
    }
}

/// No session: browsers go to the sign-in page (local login on) or the
/// provider, scripts get a 401.
async fn unauthenticated(app: &App, req: &Request<Incoming>, navigation: bool) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let return_to = safe_return_to(target).unwrap_or_else(|| "/".to_owned());
    let local = app.local.enabled;
    if navigation && local {
        return respond::redirect(&sign_in_href(&return_to));
    }
    if navigation {
        return login::start(app, req.headers(), &return_to).await;
    }
    let sign_in = if local {
        sign_in_href(&return_to)
    } else {
        start_href(&return_to)
    };
    let mut res = respond::problem_json(
        StatusCode::UNAUTHORIZED,
        &json!({
            "type": "about:blank",
            "title": "Not signed in",
            "status": 401,
            "detail": "This request needs a session. Sign in with a browser first.",
            "sign_in": sign_in,
        }),
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Cookie realm=\"billguard\""),
    );
    if app.bearer.as_ref().is_some_and(|b| b.enabled()) {
        res.headers_mut().append(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"billguard\""),
        );
    }
    res
}

// === impl Caller ===

impl Caller {
    fn identity(&self) -> &Identity {
        match self {
            Caller::Session(session) => &session.identity,
            Caller::Bearer(caller, _) => &caller.identity,
        }
    }

    fn headers(&self) -> IdentityValues {
        match self {
            Caller::Session(session) => session.headers(),
            Caller::Bearer(caller, _) => caller.headers.clone(),
        }
    }

    /// The access token to forward: the session's, or the client's own.
    fn access_token(&self) -> Option<&str> {
        match self {
            Caller::Session(session) => session.tokens.access.as_deref(),
            Caller::Bearer(_, token) => Some(token),
        }
    }

    /// How the caller authenticated, for the signed statement.
    fn kind(&self) -> &'static str {
        match self {
            Caller::Session(_) => "session",
            Caller::Bearer(..) => "bearer",
        }
    }
}

impl Clone for Caller {
    fn clone(&self) -> Self {
        match self {
            Caller::Session(s) => Caller::Session(s.clone()),
            Caller::Bearer(c, t) => Caller::Bearer(c.clone(), t.clone()),
        }
    }
}

/// A top-level browser navigation, told apart from scripted requests the
/// way browsers allow: Fetch Metadata when sent, else `X-Requested-With`
/// and `Accept`. Only GET and HEAD are navigations that may be redirected.
pub fn is_navigation<B>(req: &Request<B>) -> bool {
    if !is_read(req.method()) {
        return false;
    }
    let headers = req.headers();
    if let Some(mode) = header_str(headers, &SEC_FETCH_MODE) {
        return mode.eq_ignore_ascii_case("navigate")
            && header_str(headers, &SEC_FETCH_DEST).is_none_or(|d| {
                d.eq_ignore_ascii_case("document") || d.eq_ignore_ascii_case("iframe")
            });
    }
    if headers.contains_key(&X_REQUESTED_WITH) {
        return false;
    }
    header_str(headers, &header::ACCEPT).is_some_and(|a| a.contains("text/html"))
}

// Constants, so the names are not parsed again on every request.
static SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
static SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
static X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn method_not_allowed() -> Response<Body> {
    respond::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
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
