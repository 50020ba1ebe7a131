//! The admin panel, for sessions with the `admin` role only (everyone else
//! gets 403, and a request without a session 401):
//! - `GET /_billguard/admin`: the effective authentication settings with
//!   each value's source (secrets masked), whether local login is on, the
//!   number of active sessions, and the forms below;
//! - `POST /_billguard/admin` with `action=check`: runs the provider test
//!   (see `check`) and shows its lines;
//! - `POST /_billguard/admin` with `action=end_sessions&user=<name>`: ends
//!   every session of that user.
//!
//! Every POST carries a CSRF token bound to the admin's session id.

use std::sync::Arc;

use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};

use crate::app::App;
use crate::check;
use crate::csrf::Purpose;
use crate::identity::Role;
use crate::local_login::sign_in_href;
use crate::pages::{self, AdminPanel, CheckLine, Setting};
use crate::respond::{self, Body, Failure};
use crate::session::{Session, SessionId};

pub const ADMIN_PATH: &str = "/_billguard/admin";
const MAX_FORM_BYTES: usize = 4 * 1024;
/// Settings shown on the panel: the ones that decide who gets in.
const SHOWN_TABLES: &[&str] = &["oidc.", "local_login.", "session."];

/// The panel.
pub async fn panel(app: &App, headers: &HeaderMap) -> Response<Body> {
    let (id, session) = match admin_session(app, headers).await {
        Ok(found) => found,
        Err(res) => return res,
    };
    render(app, &id, &session, None, None).await
}

/// A state-changing request from the panel.
pub async fn act(app: &App, req: Request<Incoming>) -> Response<Body> {
    let (id, session) = match admin_session(app, req.headers()).await {
        Ok(found) => found,
        Err(res) => return res,
    };
    let Ok(body) = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
    else {
        return Failure::bad_request("The form was too large.").into_response(true);
    };
    let body = body.to_bytes();
    let field = |name: &str| {
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };

    if !app
        .csrf
        .verify(Purpose::Admin, &id.to_string(), &field("csrf"))
    {
        tracing::warn!(admin = %session.identity.user, "Admin request refused: missing or wrong CSRF token");
        return Failure::new(
            StatusCode::FORBIDDEN,
            "The form expired",
            "Open the admin panel again and retry.",
        )
        .with_retry(ADMIN_PATH)
        .into_response(true);
    }

    match field("action").as_str() {
        "check" => {
            let report = check::run(app.config.oidc.as_ref()).await;
            tracing::info!(
                admin = %session.identity.user,
                failed = report.failed(),
                warnings = report.warned(),
                "Provider test run from the admin panel"
            );
            render(app, &id, &session, Some(&report), None).await
        }
        "end_sessions" => {
            let user = field("user");
            let user = user.trim();
            if user.is_empty() {
                return Failure::bad_request("Name the user whose sessions should end.")
                    .with_retry(ADMIN_PATH)
                    .into_response(true);
            }
            let ended = app.sessions.end_user(user).await;
            tracing::info!(admin = %session.identity.user, %user, ended, "Sessions ended from the admin panel");
            let notice = format!("Ended {ended} session(s) of `{user}`.");
            render(app, &id, &session, None, Some(&notice)).await
        }
        _ => Failure::bad_request("Unknown admin action.")
            .with_retry(ADMIN_PATH)
            .into_response(true),
    }
}

/// The caller's session when it is an admin's; else the refusal.
async fn admin_session(
    app: &App,
    headers: &HeaderMap,
) -> Result<(SessionId, Arc<Session>), Response<Body>> {
    let Some((id, session)) = app.sessions.lookup(headers).await else {
        let href = if app.local.enabled {
            sign_in_href(ADMIN_PATH)
        } else {
            crate::login::start_href(ADMIN_PATH)
        };
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "The admin panel needs a session with the admin role.",
        )
        .with_retry(href)
        .into_response(true));
    };
    if session.identity.role != Role::Admin {
        tracing::warn!(user = %session.identity.user, "Admin panel refused: not an admin");
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "Admins only",
            "The admin panel is only for users with the admin role.",
        )
        .into_response(true));
    }
    Ok((id, session))
}

async fn render(
    app: &App,
    id: &SessionId,
    session: &Session,
    report: Option<&check::Report>,
    notice: Option<&str>,
) -> Response<Body> {
    let settings: Vec<Setting<'_>> = app
        .settings
        .iter()
        .filter(|e| SHOWN_TABLES.iter().any(|t| e.key.starts_with(t)))
        .map(|e| Setting {
            key: e.key,
            value: &e.value,
            source: &e.source,
        })
        .collect();
    let lines: Option<Vec<CheckLine>> = report.map(|r| {
        r.outcomes
            .iter()
            .map(|o| CheckLine {
                status: match o.status {
                    check::Status::Pass => "pass",
                    check::Status::Warn => "warn",
                    check::Status::Fail => "FAIL",
                },
                name: o.name,
                detail: &o.detail,
                fix: o.fix.as_deref(),
            })
            .collect()
    });
    let csrf = app.csrf.token(Purpose::Admin, &id.to_string());
    let reloads = app.reloads.borrow().clone();
    let view = AdminPanel {
        reloads_applied: reloads.applied,
        reloads_rejected: reloads.rejected,
        last_rejection: reloads.last_rejection.as_deref(),
        admin: &session.identity.user,
        provider: app
            .provider
            .as_ref()
            .map(|p| p.config().provider_name.as_str()),
        local: app.local.enabled,
        sessions: app.sessions.count().await,
        settings,
        check: lines,
        notice,
        csrf: &csrf,
        action: ADMIN_PATH,
    };
    respond::html_response(StatusCode::OK, pages::admin(&view))
}
