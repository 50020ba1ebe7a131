//! `POST /_billguard/backchannel_logout`: the provider ends sessions
//! server to server (OpenID Connect Back-Channel Logout 1.0).
//!
//! The body is `application/x-www-form-urlencoded` with one
//! `logout_token` (§2.5). The token is verified in `oidc::logout`; its
//! `jti` may be used once, across every replica sharing the store, for as
//! long as its `iat` is acceptable. Then every session of that provider
//! session (`sid`) ends; a token with only `sub`, or whose `sid` matches no
//! session here, ends every session of that user. The answer is 200 with
//! an empty body, or 400 with an OAuth error (§2.8); nothing a browser
//! sends can reach a session through here.

use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::oidc::logout::{self, Logout};
use crate::respond::{self, Body, Failure};

pub const PATH: &str = "/_billguard/backchannel_logout";
/// Form body limit: the token plus a little.
const MAX_BODY: usize = logout::MAX_LEN + 1024;

pub async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        let mut res = respond::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return refused("body must be application/x-www-form-urlencoded");
    }
    let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
        return refused("body too large or unreadable");
    };
    let body = body.to_bytes();
    let mut tokens = url::form_urlencoded::parse(&body).filter(|(k, _)| k == "logout_token");
    let (Some((_, token)), None) = (tokens.next(), tokens.next()) else {
        return refused("exactly one logout_token is required");
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let Some(provider) = &app.provider else {
        return respond::oauth_error(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            "no provider is configured",
        );
    };
    let logout = match provider.verify_logout_token(&token, now).await {
        Ok(logout) => logout,
        Err(error) => {
            tracing::warn!(target: "billguard::auth", outcome = "refused", reason = "logout_token_invalid", %error, "Back-channel logout refused");
            return refused(&format!("logout token rejected: {error}"));
        }
    };

    // Remembered twice as long as an `iat` is accepted, so a replay is
    // refused here or by the age check.
    match app
        .sessions
        .first_use("jti", &logout.jti, logout::MAX_AGE * 2)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(target: "billguard::auth", outcome = "refused", reason = "logout_token_replayed", "Back-channel logout refused");
            return refused("logout token already used");
        }
        Err(error) => {
            tracing::error!(%error, "Back-channel logout failed: session store unavailable");
            return Failure::sessions_unavailable().into_response(false);
        }
    }

    match end_sessions(app, &logout).await {
        Ok(ended) => {
            tracing::info!(
                target: "billguard::auth",
                outcome = "backchannel_logout",
                sessions = ended,
                by = if logout.sid.is_some() { "sid" } else { "sub" },
                "Sessions ended by the provider"
            );
            respond::full(StatusCode::OK, bytes::Bytes::new())
        }
        Err(error) => {
            tracing::error!(%error, "Back-channel logout failed: session store unavailable");
            Failure::sessions_unavailable().into_response(false)
        }
    }
}

async fn end_sessions(app: &App, logout: &Logout) -> Result<u64, crate::session::Error> {
    let mut ended = 0;
    if let Some(sid) = &logout.sid {
        ended = app.sessions.remove_sid(sid).await?;
    }
    if ended == 0
        && let Some(sub) = &logout.sub
    {
        ended = app.sessions.remove_subject(sub).await?;
    }
    Ok(ended)
}

fn refused(description: &str) -> Response<Body> {
    respond::oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}
