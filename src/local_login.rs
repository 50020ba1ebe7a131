//! Username and password sign-in, next to the provider or instead of it:
//! - `GET /_billguard/sign_in?rd=/path`: the sign-in page, with the
//!   provider's button and, while `local_login.enabled` is on, the form;
//! - `POST /_billguard/sign_in`: the form's submission (refused with 403
//!   while local login is off).
//!
//! Who may sign in is the users file: entries with a `password_hash` (an
//! argon2id PHC string from `billguard hash-password`). A password is
//! checked on the blocking pool, a few at a time, and an unknown user is
//! checked against a dummy hash with the same costs, so the answer and its
//! timing do not tell an unknown user from a wrong password. Failed attempts
//! are counted per username and per client address over a fixed window;
//! past the limit every attempt gets the same 429 until the window ends,
//! whether the username exists or not. The counters survive configuration
//! reloads.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use ipnet::IpNet;
use moka::future::Cache;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::config::{self, KnownUser};
use crate::csrf::Purpose;
use crate::headers::Peer;
use crate::identity::{Identity, Role};
use crate::login::{query_param, safe_return_to, start_href};
use crate::pages::{self, SignIn};
use crate::respond::{self, Body, Failure};

pub const SIGN_IN_PATH: &str = "/_billguard/sign_in";

/// Failed attempts allowed per username in one window.
pub const MAX_FAILURES_PER_USER: u32 = 5;
/// Failed attempts allowed per client address in one window.
pub const MAX_FAILURES_PER_CLIENT: u32 = 20;
/// How long failures are remembered, counted from the first.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Password checks running at once; each takes the hash's memory cost.
const CONCURRENT_CHECKS: usize = 4;
/// How long an attempt waits for a free check before it is turned away.
const CHECK_QUEUE_WAIT: Duration = Duration::from_secs(5);
const MAX_FORM_BYTES: usize = 8 * 1024;
const MAX_USERNAME_BYTES: usize = 256;
const MAX_PASSWORD_BYTES: usize = 1024;

const BAD_CREDENTIALS: &str = "The username or password is not correct.";
const TOO_MANY: &str = "Too many failed sign-in attempts. Wait 15 minutes, then try again.";

/// Local login as the current configuration has it.
pub struct Local {
    pub enabled: bool,
    accounts: Arc<[Account]>,
    guard: Arc<Guard>,
    trusted_proxies: Vec<IpNet>,
}

/// A users-file entry that may sign in with a password.
struct Account {
    username: String,
    email: Option<String>,
    role: Role,
    hash: String,
}

/// Rate limits and the pool of password checks; one per process.
pub struct Guard {
    by_user: Cache<String, Arc<AtomicU32>>,
    by_client: Cache<IpAddr, Arc<AtomicU32>>,
    checks: Semaphore,
    /// The hash an unknown user is checked against, made on first use.
    dummy: OnceLock<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("the password is empty")]
    Empty,
}

// === impl Local ===

impl Local {
    /// Local login for `cfg`, keeping the rate-limit state of `guard`.
    pub fn new(cfg: &config::LocalLogin, trusted_proxies: &[IpNet], guard: Arc<Guard>) -> Self {
        let accounts: Vec<Account> = cfg.users.iter().filter_map(Account::from_user).collect();
        Local {
            enabled: cfg.enabled,
            accounts: accounts.into(),
            guard,
            trusted_proxies: trusted_proxies.to_vec(),
        }
    }

    pub fn guard(&self) -> Arc<Guard> {
        self.guard.clone()
    }

    /// Checks a password off the async threads; `Some` with the account when
    /// it is right.
    async fn check(&self, username: &str, password: &str) -> Result<Option<Identity>, Failure> {
        let permit = tokio::time::timeout(CHECK_QUEUE_WAIT, self.guard.checks.acquire()).await;
        let Ok(Ok(_permit)) = permit else {
            tracing::warn!(target: "billguard::auth", outcome = "busy", "Password sign-in refused: too many checks at once");
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is busy",
                "Too many people are signing in right now. Please try again in a moment.",
            ));
        };

        let accounts = self.accounts.clone();
        let guard = self.guard.clone();
        let (username, password) = (username.to_owned(), password.to_owned());
        let found = tokio::task::spawn_blocking(move || {
            let index = accounts
                .iter()
                .position(|a| a.username.eq_ignore_ascii_case(&username));
            let hash = match index {
                Some(i) => accounts[i].hash.as_str(),
                None => guard.dummy(&accounts),
            };
            let matches = PasswordHash::new(hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            });
            index.filter(|_| matches).map(|i| accounts[i].identity())
        })
        .await;
        found.map_err(|error| {
            tracing::error!(%error, "Password check did not finish");
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in failed",
                "Something went wrong. Please try again.",
            )
        })
    }

    /// The address failures are counted against: the connection's, or the
    /// nearest untrusted hop of `X-Forwarded-For` behind a trusted proxy.
    fn client(&self, headers: &HeaderMap, peer: Peer) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        if !trusted(&peer.ip) {
            return peer.ip;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        hops.into_iter()
            .rev()
            .find(|ip| !trusted(ip))
            .unwrap_or(peer.ip)
    }
}

// === impl Account ===

impl Account {
    fn from_user(user: &KnownUser) -> Option<Account> {
        Some(Account {
            username: user.username.clone(),
            email: user.email.clone().filter(|e| !e.is_empty()),
            role: match user.role.as_deref() {
                Some("admin") => Role::Admin,
                _ => Role::User,
            },
            hash: user.password_hash.as_deref()?.trim().to_owned(),
        })
    }

    fn identity(&self) -> Identity {
        Identity::local(&self.username, self.email.clone(), self.role)
    }
}

// === impl Guard ===

impl Guard {
    pub fn new() -> Self {
        Guard {
            by_user: failure_counts(),
            by_client: failure_counts(),
            checks: Semaphore::new(CONCURRENT_CHECKS),
            dummy: OnceLock::new(),
        }
    }

    async fn blocked(&self, user: &str, client: IpAddr) -> bool {
        let count = |c: Option<Arc<AtomicU32>>| c.map_or(0, |n| n.load(Ordering::Relaxed));
        count(self.by_user.get(user).await) >= MAX_FAILURES_PER_USER
            || count(self.by_client.get(&client).await) >= MAX_FAILURES_PER_CLIENT
    }

    async fn failed(&self, user: &str, client: IpAddr) {
        let zero = || async { Arc::new(AtomicU32::new(0)) };
        let by_user = self.by_user.get_with(user.to_owned(), zero()).await;
        by_user.fetch_add(1, Ordering::Relaxed);
        let by_client = self.by_client.get_with(client, zero()).await;
        by_client.fetch_add(1, Ordering::Relaxed);
    }

    async fn succeeded(&self, user: &str) {
        self.by_user.invalidate(user).await;
    }

    /// A hash of a random password with the costs of the configured hashes,
    /// so an unknown user takes as long to refuse as a wrong password.
    fn dummy(&self, accounts: &[Account]) -> &str {
        self.dummy.get_or_init(|| {
            let params = accounts
                .iter()
                .find_map(|a| Params::try_from(&PasswordHash::new(&a.hash).ok()?).ok())
                .unwrap_or_default();
            let random: [u8; 32] = rand::random();
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(&random)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
    }
}

/// Counters that forget a key one window after its first failure.
fn failure_counts<K>() -> Cache<K, Arc<AtomicU32>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(100_000)
        .time_to_live(FAILURE_WINDOW)
        .build()
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

/// An argon2id hash of `password` for the users file, with the crate's
/// default costs (19 MiB, two passes, one lane).
pub fn hash_password(password: &str) -> Result<String, Error> {
    if password.is_empty() {
        return Err(Error::Empty);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

/// `/_billguard/sign_in?rd=...` for a return path.
pub fn sign_in_href(return_to: &str) -> String {
    let rd = start_href(return_to);
    let query = rd.split_once('?').map(|(_, q)| q).unwrap_or_default();
    format!("{SIGN_IN_PATH}?{query}")
}

/// The sign-in page.
pub fn page(app: &App, headers: &HeaderMap, query: Option<&str>) -> Response<Body> {
    let return_to = query_param(query, "rd")
        .as_deref()
        .and_then(safe_return_to)
        .unwrap_or_else(|| "/".to_owned());
    let (binding, set_cookie) = match app.csrf.cookie(headers) {
        Some(binding) => (binding, None),
        None => {
            let (binding, set) = app.csrf.new_cookie();
            (binding, Some(set))
        }
    };
    let mut res = render(app, &return_to, &binding, None, StatusCode::OK);
    if let Some(set) = set_cookie {
        res.headers_mut().append(header::SET_COOKIE, set);
    }
    res
}

/// The form's submission.
pub async fn submit(app: &App, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let local = &app.local;
    if !local.enabled {
        tracing::warn!(target: "billguard::auth", outcome = "refused", reason = "local_login_off", "Password sign-in refused: local login is off");
        return Failure::new(
            StatusCode::FORBIDDEN,
            "Password sign-in is off",
            "This service signs you in through single sign-on only.",
        )
        .with_retry(start_href("/"))
        .into_response(true);
    }

    // 1. A small urlencoded form, with a valid CSRF token.
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Bad request",
            "The sign-in form must be sent as a web form.",
        )
        .into_response(true);
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, MAX_FORM_BYTES).collect().await else {
        return Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Bad request",
            "The sign-in form was too large.",
        )
        .into_response(true);
    };
    let form = Form::parse(&body.to_bytes());
    let return_to = form
        .rd
        .as_deref()
        .and_then(safe_return_to)
        .unwrap_or_else(|| "/".to_owned());
    let binding = app.csrf.cookie(&parts.headers);
    let csrf_ok = binding
        .as_deref()
        .is_some_and(|b| app.csrf.verify(Purpose::SignIn, b, &form.csrf));
    let Some(binding) = binding.filter(|_| csrf_ok) else {
        tracing::warn!(target: "billguard::auth", outcome = "failure", reason = "csrf", "Password sign-in refused: missing or wrong CSRF token");
        return Failure::new(
            StatusCode::FORBIDDEN,
            "The sign-in form expired",
            "Open the sign-in page again and retry.",
        )
        .with_retry(sign_in_href(&return_to))
        .into_response(true);
    };

    // 2. Over the limit, every attempt gets the same answer.
    let user_key = form.username.trim().to_lowercase();
    let client = local.client(&parts.headers, peer);
    if local.guard.blocked(&user_key, client).await {
        tracing::warn!(target: "billguard::auth", outcome = "rate_limited", %client, "Password sign-in refused: too many failures");
        let mut res = render(
            app,
            &return_to,
            &binding,
            Some(TOO_MANY),
            StatusCode::TOO_MANY_REQUESTS,
        );
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(FAILURE_WINDOW.as_secs()),
        );
        return res;
    }

    // 3. The password, checked in constant time against the users file.
    let sane = !user_key.is_empty()
        && form.username.len() <= MAX_USERNAME_BYTES
        && !form.password.is_empty()
        && form.password.len() <= MAX_PASSWORD_BYTES;
    let identity = if sane {
        match local.check(form.username.trim(), &form.password).await {
            Ok(found) => found,
            Err(failure) => return failure.into_response(true),
        }
    } else {
        None
    };
    let Some(identity) = identity else {
        local.guard.failed(&user_key, client).await;
        tracing::warn!(target: "billguard::auth", outcome = "failure", reason = "bad_credentials", %client, "Password sign-in failed");
        return render(
            app,
            &return_to,
            &binding,
            Some(BAD_CREDENTIALS),
            StatusCode::UNAUTHORIZED,
        );
    };

    // 4. A fresh session, then the page first asked for.
    local.guard.succeeded(&user_key).await;
    tracing::info!(
        target: "billguard::auth",
        outcome = "success",
        method = "password",
        user = %identity.user,
        role = ?identity.role,
        "Login succeeded"
    );
    let id = app.sessions.create(identity, None).await;
    let mut res = respond::redirect(&return_to);
    res.headers_mut()
        .append(header::SET_COOKIE, app.sessions.set_cookie(&id));
    res
}

fn render(
    app: &App,
    return_to: &str,
    binding: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response<Body> {
    let provider = app
        .provider
        .as_ref()
        .map(|p| p.config().provider_name.as_str());
    let start = start_href(return_to);
    let token = app.csrf.token(Purpose::SignIn, binding);
    let view = SignIn {
        provider,
        start: &start,
        local: app.local.enabled,
        action: SIGN_IN_PATH,
        csrf: &token,
        return_to,
        error,
    };
    respond::html_response(status, pages::sign_in(&view))
}

/// The fields of the sign-in form.
#[derive(Default)]
struct Form {
    username: String,
    password: String,
    csrf: String,
    rd: Option<String>,
}

impl Form {
    fn parse(body: &[u8]) -> Form {
        let mut form = Form::default();
        for (key, value) in url::form_urlencoded::parse(body) {
            match key.as_ref() {
                "username" => form.username = value.into_owned(),
                "password" => form.password = value.into_owned(),
                "csrf" => form.csrf = value.into_owned(),
                "rd" => form.rd = Some(value.into_owned()),
                _ => {}
            }
        }
        form
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, password: &str) -> Account {
        let params = Params::new(8, 1, 1, None).unwrap();
        let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string();
        Account {
            username: name.into(),
            email: None,
            role: Role::User,
            hash,
        }
    }

    #[test]
    fn the_dummy_hash_has_the_costs_of_the_users_hashes() {
        let guard = Guard::new();
        let accounts = [account("alice", "pw")];
        let dummy = PasswordHash::new(guard.dummy(&accounts)).unwrap();
        let params = Params::try_from(&dummy).unwrap();
        assert_eq!((params.m_cost(), params.t_cost()), (8, 1));
        assert_eq!(dummy.algorithm.as_str(), "argon2id");
    }

    #[test]
    fn hash_password_makes_a_verifiable_argon2id_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
        assert!(matches!(hash_password(""), Err(Error::Empty)));
    }

    #[tokio::test]
    async fn failures_block_the_username_and_a_success_clears_it() {
        let guard = Guard::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_FAILURES_PER_USER {
            assert!(!guard.blocked("alice", ip).await);
            guard.failed("alice", ip).await;
        }
        assert!(guard.blocked("alice", other).await, "per username");
        assert!(!guard.blocked("bob", ip).await);
        guard.succeeded("alice").await;
        assert!(!guard.blocked("alice", ip).await);
    }

    #[test]
    fn sign_in_href_carries_the_return_path() {
        assert_eq!(
            sign_in_href("/bills?a=1"),
            "/_billguard/sign_in?rd=%2Fbills%3Fa%3D1"
        );
    }
}
