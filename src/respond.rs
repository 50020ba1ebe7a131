//! The only place where a failure becomes an HTTP response.
//!
//! Handlers decide *whether* something failed and log the precise reason
//! once; this module decides how it looks. The status follows from who is
//! at fault: the browser (4xx), the provider (502), the app (502, or 504 on
//! a timeout), or billguard being not ready (503). A browser navigation gets
//! an HTML page in plain words with a way forward; anything else gets
//! `application/problem+json` (RFC 9457). Neither ever carries a token, a
//! code, a cookie or an internal error text.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::bearer::Rejection;
use crate::identity::Refusal;
use crate::pages;

/// Every response body billguard sends: the app's, streamed, or its own.
pub type Body = Either<crate::forward::Body, Full<Bytes>>;

/// A request that could not be served, as the user will see it.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    /// A short heading: "Sign-in failed".
    pub title: &'static str,
    /// One or two sentences for the user; never internal details.
    pub detail: Cow<'static, str>,
    /// Where "Try again" leads, if trying again can help.
    pub retry: Option<String>,
}

// === impl Failure ===

impl Failure {
    pub fn new(
        status: StatusCode,
        title: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Failure {
            status,
            title,
            detail: detail.into(),
            retry: None,
        }
    }

    pub fn with_retry(mut self, href: impl Into<String>) -> Self {
        self.retry = Some(href.into());
        self
    }

    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    pub fn not_found() -> Self {
        Failure::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing at this address.",
        )
    }

    /// The app could not be reached or broke the connection.
    pub fn bad_gateway() -> Self {
        Failure::new(
            StatusCode::BAD_GATEWAY,
            "The app is not responding",
            "The bills service could not be reached. Please try again in a moment.",
        )
    }

    /// The app took too long to answer.
    pub fn gateway_timeout() -> Self {
        Failure::new(
            StatusCode::GATEWAY_TIMEOUT,
            "The app took too long",
            "The bills service did not answer in time. Please try again in a moment.",
        )
    }

    /// The sign-in service is not reachable yet.
    pub fn provider_unavailable() -> Self {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable",
            "The sign-in service cannot be reached right now. Please try again in a moment.",
        )
    }

    /// The user signed in at the provider but may not use this service. The
    /// page names no group or rule: those are for the log.
    pub fn refused(refusal: &Refusal) -> Self {
        match refusal {
            Refusal::NotProvisioned { .. } => Failure::new(
                StatusCode::FORBIDDEN,
                "Not provisioned",
                "Your account is not set up for this service. Ask an administrator to add you.",
            ),
            Refusal::NotAllowed { .. } => Failure::new(
                StatusCode::FORBIDDEN,
                "Access not allowed",
                "Your account may not use this service. Ask an administrator for access.",
            ),
        }
    }

    /// A signed-in user who is not an admin asked for an admin-only path.
    pub fn admins_only() -> Self {
        Failure::new(
            StatusCode::FORBIDDEN,
            "Admins only",
            "This page is for administrators of this service.",
        )
    }

    /// The session store (Redis) cannot be reached: nobody's session can
    /// be checked, so nobody is let through.
    pub fn sessions_unavailable() -> Self {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "Sessions cannot be checked right now. Please try again in a moment.",
        )
    }

    /// Renders the failure for a browser page or a script.
    pub fn into_response(self, navigation: bool) -> Response<Body> {
        if navigation {
            let html = pages::error(&self);
            return html_response(self.status, html);
        }
        let mut body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(retry) = &self.retry {
            body["retry"] = json!(retry);
        }
        problem_json(self.status, &body)
    }
}

/// A bearer token that was refused: 401 `invalid_token` (RFC 6750 §3.1)
/// with a short reason, 403 for a user who may not come in, 503 when the
/// token cannot be checked now. Never a redirect, never a page: the caller
/// is a program.
pub fn bearer_rejection(rejection: &Rejection) -> Response<Body> {
    match rejection {
        Rejection::Invalid(reason) => {
            let mut res = problem_json(
                StatusCode::UNAUTHORIZED,
                &json!({
                    "type": "about:blank",
                    "title": "Invalid token",
                    "status": 401,
                    "detail": format!("The bearer token was not accepted: {reason}."),
                }),
            );
            let challenge = format!(
                "Bearer realm=\"billguard\", error=\"invalid_token\", error_description=\"{reason}\""
            );
            // The reasons are fixed ASCII strings without quotes.
            if let Ok(value) = HeaderValue::try_from(challenge) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, value);
            }
            res
        }
        Rejection::Refused(refusal) => Failure::refused(refusal).into_response(false),
        Rejection::Unavailable(_) => Failure::provider_unavailable().into_response(false),
    }
}

/// `application/problem+json` with the given body.
pub fn problem_json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut res = full(status, Bytes::from(body.to_string()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

/// An OAuth-style error answer for a server-to-server endpoint (the
/// back-channel logout endpoint, OIDC Back-Channel Logout §2.8).
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut res = full(status, Bytes::from(body.to_string()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

pub fn html_response(status: StatusCode, html: String) -> Response<Body> {
    let mut res = full(status, Bytes::from(html));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Pages billguard renders never need to be framed or run others' code.
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    res.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// A 302 to `location`, never cached.
pub fn redirect(location: &str) -> Response<Body> {
    let mut res = full(StatusCode::FOUND, Bytes::new());
    match HeaderValue::from_str(location) {
        Ok(value) => {
            res.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => {
            // Locations are built from validated parts; a bad one is a bug,
            // and sending the user home is the safe answer.
            res.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/"));
        }
    }
    res
}

pub fn text(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut res = full(status, Bytes::from_static(text.as_bytes()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A response with billguard's own body, marked uncacheable: everything
/// billguard itself says depends on who is asking.
pub fn full(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Either::Right(Full::new(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
