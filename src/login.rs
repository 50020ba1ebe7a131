//! Signing in and out: `/_billguard/start`, the callback at the path of
//! `oidc.redirect_uri`, and `/_billguard/sign_out`.
//!
//! A login in progress lives in a cookie of its own, one per attempt, named
//! after the first characters of its `state` so that several tabs can sign
//! in at once. The cookie is encrypted and authenticated (AES-256-GCM with
//! the cookie name bound in), expires after ten minutes, and carries the
//! state, nonce, PKCE verifier and the page to return to. At most
//! [`MAX_PENDING`] exist at a time; starting another drops the oldest, so
//! they never pile up into an oversized `Cookie` header.
//!
//! The ID token, needed only as `id_token_hint` at sign-out, is not kept
//! with the session (it is most of a session's weight): it goes back to the
//! browser in its own encrypted cookie, `billguard_hint`, whose `Path` is
//! the sign-out endpoint, so the browser sends it there and nowhere else.
//!
//! The callback reads top to bottom: provider error, state and its cookie,
//! replay check, code exchange and token checks (in `oidc`), admission,
//! fresh session, redirect to the page first asked for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cookie::{Cookie, CookieJar, Key, SameSite};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::config;
use crate::identity::Refusal;
use crate::oidc::FlowError;
use crate::refresh;
use crate::respond::{self, Body, Failure};
use crate::session::{NewSession, set_cookie_value};

mod consumed;

use consumed::Consumed;

/// Pending logins allowed at once per browser.
pub const MAX_PENDING: usize = 3;
/// How long a login may take at the provider.
const PENDING_LIFETIME: Duration = Duration::from_secs(600);
const LOGIN_COOKIE: &str = "billguard_login_";
/// Holds the ID token for `id_token_hint`; sent only to sign-out.
const HINT_COOKIE: &str = "billguard_hint";
const SIGN_OUT_PATH: &str = "/_billguard/sign_out";
/// Set when a stale callback restarts the login, so a broken setup cannot
/// bounce the browser between billguard and the provider forever.
const RETRY_COOKIE: &str = "billguard_retry";
/// Characters of `state` used in the login cookie's name.
const NAME_CHARS: usize = 12;

pub const START_PATH: &str = "/_billguard/start";

/// Login-state cookies and the record of states already used.
pub struct Logins {
    key: Key,
    secure: bool,
    /// Lifetime of the hint cookie: that of the session.
    session_ttl: Duration,
    /// States whose callback already ran, so a replayed callback fails even
    /// if the browser still had the cookie.
    consumed: Consumed,
}

/// What a login cookie holds.
#[derive(Serialize, Deserialize)]
struct Pending {
    #[serde(rename = "s")]
    state: String,
    #[serde(rename = "n")]
    nonce: String,
    #[serde(rename = "v")]
    pkce_verifier: String,
    #[serde(rename = "r")]
    return_to: String,
    /// Unix seconds at creation.
    #[serde(rename = "t")]
    created: u64,
}

// === impl Logins ===

impl Logins {
    pub fn new(cfg: &config::Session) -> Self {
        Logins {
            // The secret is at least 32 bytes (checked in config).
            key: Key::derive_from(cfg.secret.expose().as_bytes()),
            secure: cfg.secure_cookies,
            session_ttl: cfg.ttl,
            consumed: Consumed::new(PENDING_LIFETIME),
        }
    }

    fn cookie_name(&self, state: &str) -> String {
        let short: String = state.chars().take(NAME_CHARS).collect();
        let prefix = if self.secure { "__Host-" } else { "" };
        format!("{prefix}{LOGIN_COOKIE}{short}")
    }

    fn is_login_cookie(&self, name: &str) -> bool {
        let prefix = if self.secure { "__Host-" } else { "" };
        name.strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(LOGIN_COOKIE))
    }

    fn jar(&self, headers: &HeaderMap) -> CookieJar {
        let mut jar = CookieJar::new();
        for value in headers.get_all(header::COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for cookie in Cookie::split_parse_encoded(text).flatten() {
                jar.add_original(cookie.into_owned());
            }
        }
        jar
    }

    fn build<'c>(&self, name: String, value: String, max_age: Duration) -> Cookie<'c> {
        Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64))
            .build()
    }

    fn removal(&self, name: String) -> HeaderValue {
        set_cookie_value(self.build(name, String::new(), Duration::ZERO))
    }

    fn hint_name(&self) -> &'static str {
        // `__Host-` would force `Path=/`; `__Secure-` allows the narrow path.
        if self.secure {
            "__Secure-billguard_hint"
        } else {
            HINT_COOKIE
        }
    }

    fn hint_cookie<'c>(&self, id_token: String, max_age: Duration) -> Cookie<'c> {
        let mut cookie = self.build(self.hint_name().to_owned(), id_token, max_age);
        cookie.set_path(SIGN_OUT_PATH);
        cookie
    }

    /// `Set-Cookie` carrying the ID token, encrypted.
    fn set_hint(&self, id_token: String) -> Vec<HeaderValue> {
        let mut jar = CookieJar::new();
        jar.private_mut(&self.key)
            .add(self.hint_cookie(id_token, self.session_ttl));
        jar.delta().map(|c| set_cookie_value(c.clone())).collect()
    }

    /// The ID token from the hint cookie, if the request carries a valid one.
    fn hint(&self, headers: &HeaderMap) -> Option<String> {
        let jar = self.jar(headers);
        let cookie = jar.private(&self.key).get(self.hint_name())?;
        Some(cookie.value().to_owned())
    }

    fn clear_hint(&self) -> HeaderValue {
        set_cookie_value(self.hint_cookie(String::new(), Duration::ZERO))
    }
}

/// Sends the browser to the provider, remembering `return_to`.
pub async fn start(app: &App, headers: &HeaderMap, return_to: &str) -> Response<Body> {
    let Some(provider) = &app.provider else {
        tracing::warn!(target: "billguard::auth", outcome = "refused", reason = "no_provider", "Login refused: no provider is configured");
        return Failure::new(
            StatusCode::NOT_FOUND,
            "Single sign-on is not set up",
            "This service has no single sign-on yet. Sign in with your username and password.",
        )
        .with_retry(crate::local_login::sign_in_href(return_to))
        .into_response(true);
    };
    let Ok(started) = provider.begin() else {
        provider.wake();
        tracing::warn!(target: "billguard::auth", outcome = "unavailable", "Login refused: provider metadata not loaded");
        return Failure::provider_unavailable()
            .with_retry(start_href(return_to))
            .into_response(true);
    };
    let logins = &app.logins;

    let pending = Pending {
        state: started.state.clone(),
        nonce: started.nonce,
        pkce_verifier: started.pkce_verifier,
        return_to: return_to.to_owned(),
        created: unix_now(),
    };
    let value = serde_json::to_string(&pending).expect("the pending login serializes");
    let mut jar = logins.jar(headers);
    jar.private_mut(&logins.key).add(logins.build(
        logins.cookie_name(&started.state),
        value,
        PENDING_LIFETIME,
    ));

    let mut res = respond::redirect(started.url.as_str());
    let delta: Vec<HeaderValue> = jar.delta().map(|c| set_cookie_value(c.clone())).collect();
    for value in delta {
        res.headers_mut().append(header::SET_COOKIE, value);
    }
    for name in stale_logins(logins, headers) {
        res.headers_mut()
            .append(header::SET_COOKIE, logins.removal(name));
    }
    res
}

/// Names of login cookies to drop so that, with the new one, at most
/// [`MAX_PENDING`] remain: unreadable or expired first, then the oldest.
fn stale_logins(logins: &Logins, headers: &HeaderMap) -> Vec<String> {
    let jar = logins.jar(headers);
    let private = jar.private(&logins.key);
    let mut found: Vec<(u64, String)> = jar
        .iter()
        .filter(|c| logins.is_login_cookie(c.name()))
        .map(|c| {
            let created = private
                .decrypt(c.clone())
                .and_then(|c| serde_json::from_str::<Pending>(c.value()).ok())
                .map(|p| p.created)
                .filter(|t| unix_now().saturating_sub(*t) < PENDING_LIFETIME.as_secs())
                .unwrap_or(0);
            (created, c.name().to_owned())
        })
        .collect();
    found.sort();
    let excess = (found.len() + 1).saturating_sub(MAX_PENDING);
    let expired = found.iter().take_while(|(t, _)| *t == 0).count();
    found
        .into_iter()
        .take(excess.max(expired))
        .map(|(_, name)| name)
        .collect()
}

/// The provider sends the browser back here.
pub async fn callback(app: &App, headers: &HeaderMap, query: Option<&str>) -> Response<Body> {
    let params = parse_query(query);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let logins = &app.logins;

    // 1. Find the login this callback belongs to.
    let Some(state) = param("state").filter(|s| !s.is_empty()) else {
        return auth_failure(
            "missing_state",
            "callback without state",
            Failure::bad_request("This sign-in link is incomplete.").with_retry(start_href("/")),
        );
    };
    let name = logins.cookie_name(state);
    let jar = logins.jar(headers);
    let pending = jar
        .private(&logins.key)
        .get(&name)
        .and_then(|c| serde_json::from_str::<Pending>(c.value()).ok())
        .filter(|p| unix_now().saturating_sub(p.created) < PENDING_LIFETIME.as_secs());
    let Some(pending) = pending else {
        return restart(logins, headers, &name);
    };
    if !bool::from(pending.state.as_bytes().ct_eq(state.as_bytes())) {
        return auth_failure(
            "state_mismatch",
            "state does not match the login cookie",
            Failure::bad_request("This sign-in link does not belong to this browser.")
                .with_retry(start_href(&pending.return_to)),
        );
    }

    // 2. Each state completes once.
    let mut res = if !logins.consumed.first_use(&pending.state) {
        auth_failure(
            "replayed_state",
            "callback for a login that already completed",
            Failure::bad_request("This sign-in link was already used.")
                .with_retry(start_href(&pending.return_to)),
        )
    } else if let Some(error) = param("error") {
        provider_refusal(error, param("error_description"), &pending.return_to)
    } else if let Some(code) = param("code").filter(|c| !c.is_empty()) {
        complete(app, code, &pending).await
    } else {
        auth_failure(
            "missing_code",
            "callback without code or error",
            Failure::bad_request("This sign-in link is incomplete.")
                .with_retry(start_href(&pending.return_to)),
        )
    };

    // The login is over either way: its cookie and any retry guard go.
    res.headers_mut()
        .append(header::SET_COOKIE, logins.removal(name));
    if jar.get(&retry_cookie_name(logins)).is_some() {
        res.headers_mut().append(
            header::SET_COOKIE,
            logins.removal(retry_cookie_name(logins)),
        );
    }
    res
}

/// Exchanges the code, admits the user, and opens a session.
async fn complete(app: &App, code: &str, pending: &Pending) -> Response<Body> {
    let retry = start_href(&pending.return_to);
    let Some(provider) = &app.provider else {
        return flow_failure(&FlowError::NotReady, retry);
    };
    let completed = match provider
        .finish(code, &pending.pkce_verifier, &pending.nonce)
        .await
    {
        Ok(completed) => completed,
        Err(error) => return flow_failure(&error, retry),
    };

    let identity = match app.policy.admit(completed.claims) {
        Ok(identity) => identity,
        Err(refusal) => {
            let (reason, user) = match &refusal {
                Refusal::NotProvisioned { user } => ("not_provisioned", user),
                Refusal::NotAllowed { user } => ("not_in_allowed_groups", user),
            };
            tracing::warn!(target: "billguard::auth", outcome = "refused", reason, %user, "Login refused");
            return Failure::refused(&refusal).into_response(true);
        }
    };

    tracing::info!(
        target: "billguard::auth",
        outcome = "success",
        user = %identity.user,
        role = ?identity.role,
        groups = identity.groups.len(),
        "Login succeeded"
    );
    // The access token is kept when the app is to receive it, or when
    // without a refresh token it is the one way to ask userinfo again.
    let tokens = refresh::tokens_of(
        completed.grant,
        None,
        app.access_token.forward,
        std::time::SystemTime::now(),
    );
    let new = NewSession {
        identity,
        id_token: None,
        sid: completed.sid,
        tokens,
    };
    let id = match app.sessions.open(new).await {
        Ok(id) => id,
        Err(error) => {
            tracing::error!(target: "billguard::auth", outcome = "failure", reason = "session_store", %error, "Login failed: session not stored");
            return Failure::sessions_unavailable()
                .with_retry(retry)
                .into_response(true);
        }
    };
    let mut res = respond::redirect(&pending.return_to);
    res.headers_mut()
        .append(header::SET_COOKIE, app.sessions.set_cookie(&id));
    for value in app.logins.set_hint(completed.id_token) {
        res.headers_mut().append(header::SET_COOKIE, value);
    }
    res
}

/// A callback whose login cookie is gone (expired, restart, another
/// browser): start over once, then stop with a page.
fn restart(logins: &Logins, headers: &HeaderMap, name: &str) -> Response<Body> {
    let jar = logins.jar(headers);
    let retry_name = retry_cookie_name(logins);
    if jar.get(&retry_name).is_some() {
        return auth_failure(
            "unknown_state_again",
            "callback for an unknown login right after a restart; not restarting again",
            Failure::bad_request(
                "Signing in did not work. Your browser may be blocking cookies for this site.",
            )
            .with_retry(start_href("/")),
        );
    }
    tracing::info!(target: "billguard::auth", outcome = "restarted", reason = "unknown_state", "Login restarted: no pending login for this callback");
    let mut res = respond::redirect(&start_href("/"));
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie_value(logins.build(retry_name, "1".into(), Duration::from_secs(60))),
    );
    res.headers_mut()
        .append(header::SET_COOKIE, logins.removal(name.to_owned()));
    res
}

fn retry_cookie_name(logins: &Logins) -> String {
    if logins.secure {
        format!("__Host-{RETRY_COOKIE}")
    } else {
        RETRY_COOKIE.to_owned()
    }
}

/// The provider answered the authorization request with an error (RFC 6749
/// §4.1.2.1).
fn provider_refusal(error: &str, description: Option<&str>, return_to: &str) -> Response<Body> {
    let error: String = error
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    let description: String = description
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    tracing::warn!(target: "billguard::auth", outcome = "failure", reason = "provider_error", %error, %description, "Login failed at the provider");
    let failure = match error.as_str() {
        "access_denied" => Failure::new(
            StatusCode::FORBIDDEN,
            "Sign-in was refused",
            "The sign-in service refused the sign-in, or it was cancelled.",
        ),
        "login_required" | "interaction_required" | "consent_required" => Failure::new(
            StatusCode::UNAUTHORIZED,
            "Sign-in needed",
            "The sign-in service needs you to sign in again.",
        ),
        _ => Failure::new(
            StatusCode::BAD_GATEWAY,
            "Sign-in failed",
            "The sign-in service reported a problem.",
        ),
    };
    failure
        .with_retry(start_href(return_to))
        .into_response(true)
}

fn flow_failure(error: &FlowError, retry: String) -> Response<Body> {
    let (reason, failure) = match error {
        FlowError::NotReady => ("provider_unavailable", Failure::provider_unavailable()),
        FlowError::CodeRejected(_) => (
            "code_rejected",
            Failure::bad_request("This sign-in link has expired or was already used."),
        ),
        FlowError::Nonce => (
            "nonce_mismatch",
            Failure::bad_request("This sign-in could not be matched to your browser."),
        ),
        FlowError::ClientRejected(_) => ("client_rejected", provider_broken()),
        FlowError::Exchange(_) => ("exchange_failed", provider_broken()),
        FlowError::NoIdToken => ("no_id_token", provider_broken()),
        FlowError::IdToken(_) => ("id_token_invalid", provider_broken()),
        FlowError::Userinfo(_) => ("userinfo_failed", provider_broken()),
        FlowError::RefreshRejected(_) => ("refresh_rejected", provider_broken()),
    };
    tracing::error!(target: "billguard::auth", outcome = "failure", reason, error = %error, "Login failed");
    failure.with_retry(retry).into_response(true)
}

fn provider_broken() -> Failure {
    Failure::new(
        StatusCode::BAD_GATEWAY,
        "Sign-in failed",
        "The answer from the sign-in service could not be accepted. \
         If this keeps happening, tell your administrator.",
    )
}

fn auth_failure(reason: &'static str, detail: &str, failure: Failure) -> Response<Body> {
    tracing::warn!(target: "billguard::auth", outcome = "failure", reason, detail, "Login failed");
    failure.into_response(true)
}

/// Ends the session and, when the provider supports it, signs out there too
/// (OIDC RP-Initiated Logout §2).
pub async fn sign_out(app: &App, headers: &HeaderMap) -> Response<Body> {
    // Signing out works even while the store is unreachable: the cookie
    // goes either way, and the provider is still told.
    let session = app.sessions.lookup(headers).await;
    let (hint, local) = match &session {
        Some((id, session)) => {
            app.sessions.remove(id).await;
            tracing::info!(target: "billguard::auth", outcome = "signed_out", user = %session.identity.user, "Signed out");
            (session.id_token.clone(), session.identity.is_local())
        }
        None => (None, false),
    };
    let hint = hint.or_else(|| app.logins.hint(headers));

    // A password session has nothing to end at the provider.
    let provider_logout = app
        .provider
        .as_ref()
        .filter(|_| !local)
        .and_then(|p| p.logout_url(hint.as_deref()));
    let sign_in = if app.local.enabled {
        crate::local_login::sign_in_href("/")
    } else {
        start_href("/")
    };
    let mut res = match provider_logout {
        Some(url) => respond::redirect(url.as_str()),
        None => respond::html_response(StatusCode::OK, crate::pages::signed_out(&sign_in)),
    };
    res.headers_mut()
        .append(header::SET_COOKIE, app.sessions.clear_cookie());
    res.headers_mut()
        .append(header::SET_COOKIE, app.logins.clear_hint());
    res
}

/// `/_billguard/start?rd=...` for a return path.
pub fn start_href(return_to: &str) -> String {
    format!(
        "{START_PATH}?rd={}",
        utf8_percent_encode(return_to, NON_ALPHANUMERIC)
    )
}

/// A return path is accepted only when it stays on this origin: it starts
/// with exactly one `/`, holds no whitespace, and neither it nor any
/// percent-decoding of it holds a backslash, a control character (browsers
/// drop tabs and newlines, turning `/\t/host` into `//host`) or a leading
/// `//`.
pub fn safe_return_to(raw: &str) -> Option<String> {
    if raw.len() > 2048 {
        return None;
    }
    if raw.chars().any(char::is_whitespace) {
        return None;
    }
    let mut text = raw.to_owned();
    // Decode repeatedly: a target that is later decoded again by someone
    // else must be as safe as this one.
    for _ in 0..4 {
        if !looks_local(&text) {
            return None;
        }
        let decoded = percent_decode_str(&text).decode_utf8().ok()?.into_owned();
        if decoded == text {
            break;
        }
        text = decoded;
    }
    if !looks_local(&text) {
        return None;
    }

    // Belt and braces: resolved against an origin, it must stay there.
    let base = url::Url::parse("https://billguard.invalid/").expect("a valid base URL");
    let joined = base.join(raw).ok()?;
    if joined.origin() != base.origin() {
        return None;
    }
    Some(raw.to_owned())
}

fn looks_local(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_accepted() {
        for ok in [
            "/",
            "/bills?month=2026-12",
            "/a/b#frag",
            "/%E2%82%AC",
            "/search?q=a%20b",
        ] {
            assert_eq!(safe_return_to(ok).as_deref(), Some(ok), "{ok}");
        }
    }

    #[test]
    fn anything_that_could_leave_the_origin_is_refused() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "http:evil.example",
            "evil.example",
            "/%2F%2Fevil.example",
            "/%2fevil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%252F%252Fevil.example",
            "/ /evil.example",
            "/\t/evil.example",
            "/%09/evil.example",
            "/\r\nLocation: x",
            "/%0d%0aSet-Cookie:x",
            "",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_return_to(bad), None, "{bad:?} was accepted");
        }
    }

    #[test]
    fn start_href_round_trips_the_return_path() {
        let href = start_href("/bills?a=1&b=2");
        assert_eq!(href, "/_billguard/start?rd=%2Fbills%3Fa%3D1%26b%3D2");
        let rd = parse_query(href.split_once('?').map(|(_, q)| q));
        assert_eq!(rd[0].1, "/bills?a=1&b=2");
    }
}
