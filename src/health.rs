//! Endpoints for probes and for checking who you are:
//! - `/_billguard/health`: 200 while the process serves requests;
//! - `/_billguard/ready`: 200 once the provider metadata is loaded and the
//!   session store answers, else 503; also 503 from the moment a shutdown
//!   begins (see [`Draining`]), so Kubernetes stops routing here while
//!   in-flight requests finish;
//! - `/_billguard/whoami`: the current identity and why its role is what it
//!   is, or 401 without a session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::login::start_href;
use crate::respond::{self, Body, Failure};

pub fn health() -> Response<Body> {
    respond::text(StatusCode::OK, "ok\n")
}

/// Set once a shutdown has begun; readiness fails from then on.
#[derive(Clone, Debug, Default)]
pub struct Draining(Arc<AtomicBool>);

// === impl Draining ===

impl Draining {
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn ready(app: &App) -> Response<Body> {
    if app.draining.is_draining() {
        return respond::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "provider": "shutting down"}),
        );
    }
    let (provider, provider_text) = match &app.provider {
        None => (true, "none (local login only)"),
        Some(p) if p.is_ready() => (true, "loaded"),
        Some(p) => {
            p.wake();
            (false, "metadata not loaded yet")
        }
    };
    let sessions = app.sessions.is_available();
    let status = if provider && sessions {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond::json(
        status,
        &json!({
            "ready": provider && sessions,
            "provider": provider_text,
            "sessions": if sessions {
                app.sessions.kind()
            } else {
                "unreachable"
            },
        }),
    )
}

pub async fn whoami(app: &App, headers: &HeaderMap) -> Response<Body> {
    let found = match app.refresher.session_for(headers).await {
        Ok(found) => found,
        Err(error) => {
            tracing::error!(%error, "whoami refused: sessions cannot be checked");
            return Failure::sessions_unavailable().into_response(false);
        }
    };
    let Some((_, session)) = found else {
        return respond::problem_json(
            StatusCode::UNAUTHORIZED,
            &json!({
                "type": "about:blank",
                "title": "Not signed in",
                "status": 401,
                "detail": "There is no session for this request.",
                "sign_in": start_href("/"),
            }),
        );
    };
    let identity = &session.identity;
    let created = session
        .created
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    respond::json(
        StatusCode::OK,
        &json!({
            "user": identity.user,
            "email": identity.email,
            "subject": identity.subject,
            "groups": identity.groups,
            "role": identity.role,
            "role_reason": app.policy.explain(identity),
            "session_created": created,
        }),
    )
}
