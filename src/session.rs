//! Signed-in sessions: the id in the browser's cookie, the data in memory.
//!
//! The cookie holds only a 256-bit random id; everything else stays
//! server-side in a moka cache with an absolute lifetime (`session.ttl`), an
//! idle timeout (`session.idle_timeout`) and a bound on the number of
//! entries (`session.max_sessions`). A login always creates a fresh id, so an
//! id planted before login is worthless afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use hyper::header::{HeaderMap, HeaderValue};
use moka::Expiry;
use moka::future::Cache;

use crate::config;
use crate::headers::IdentityValues;
use crate::identity::Identity;

/// Cookie name without the `__Host-` prefix.
const COOKIE_NAME: &str = "billguard_session";

/// One signed-in user.
#[derive(Debug)]
pub struct Session {
    pub identity: Identity,
    /// Prebuilt header values for the request path.
    pub headers: IdentityValues,
    /// The raw ID token, kept as `id_token_hint` for sign-out.
    pub id_token: Option<String>,
    /// The provider's access token, kept only when `access_token.forward`
    /// is on; the request path forwards whatever is here, so a token
    /// refresh stores the new token by replacing the session.
    pub access_token: Option<config::Secret>,
    pub created: SystemTime,
    expires: Instant,
}

/// A session id: 32 random bytes, base64url in the cookie.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 32]);

/// All live sessions.
#[derive(Clone)]
pub struct Store {
    cache: Cache<SessionId, Arc<Session>>,
    ttl: Duration,
    cookie: CookieSpec,
}

/// How the session cookie is named and flagged.
#[derive(Clone, Debug)]
pub struct CookieSpec {
    pub secure: bool,
    pub max_age: Duration,
}

// === impl Store ===

impl Store {
    pub fn new(cfg: &config::Session) -> Self {
        let cache = Cache::builder()
            .name("sessions")
            .max_capacity(cfg.max_sessions)
            .time_to_idle(cfg.idle_timeout)
            .expire_after(AbsoluteExpiry)
            .build();
        Store {
            cache,
            ttl: cfg.ttl,
            cookie: CookieSpec {
                secure: cfg.secure_cookies,
                max_age: cfg.ttl,
            },
        }
    }

    /// Starts a session under a fresh id.
    pub async fn create(&self, identity: Identity, id_token: Option<String>) -> SessionId {
        self.create_with(identity, id_token, None).await
    }

    /// Starts a session that also keeps the access token for forwarding.
    pub async fn create_with(
        &self,
        identity: Identity,
        id_token: Option<String>,
        access_token: Option<String>,
    ) -> SessionId {
        let id = SessionId(rand::random());
        let session = Session {
            headers: IdentityValues::new(&identity),
            identity,
            id_token,
            access_token: access_token.map(config::Secret::new),
            created: SystemTime::now(),
            expires: Instant::now() + self.ttl,
        };
        self.cache.insert(id, Arc::new(session)).await;
        id
    }

    /// The session named by the request's cookie, if it is still alive.
    pub async fn lookup(&self, headers: &HeaderMap) -> Option<(SessionId, Arc<Session>)> {
        let id = self.cookie_id(headers)?;
        let session = self.cache.get(&id).await?;
        Some((id, session))
    }

    pub async fn remove(&self, id: &SessionId) {
        self.cache.invalidate(id).await;
    }

    /// Live sessions, exactly: pending expiries are applied first.
    pub async fn count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// Ends every session of `user` (the name in `X-Forwarded-User`,
    /// compared exactly) and returns how many there were.
    pub async fn end_user(&self, user: &str) -> usize {
        let ids: Vec<SessionId> = self
            .cache
            .iter()
            .filter(|(_, session)| session.identity.user == user)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.cache.invalidate(id).await;
        }
        ids.len()
    }

    /// Live sessions (approximate until housekeeping runs).
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Expiry and eviction run inside cache calls only; call this now and
    /// then so counts stay true on an idle proxy.
    pub async fn housekeeping(&self) {
        self.cache.run_pending_tasks().await;
    }

    pub fn cookie_name(&self) -> &'static str {
        if self.cookie.secure {
            "__Host-billguard_session"
        } else {
            COOKIE_NAME
        }
    }

    /// `Set-Cookie` for a new session.
    pub fn set_cookie(&self, id: &SessionId) -> HeaderValue {
        let cookie = Cookie::build((self.cookie_name(), id.to_string()))
            .path("/")
            .http_only(true)
            .secure(self.cookie.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(
                self.cookie.max_age.as_secs().try_into().unwrap_or(i64::MAX),
            ));
        set_cookie_value(cookie.build())
    }

    /// `Set-Cookie` that deletes the session cookie.
    pub fn clear_cookie(&self) -> HeaderValue {
        let cookie = Cookie::build((self.cookie_name(), ""))
            .path("/")
            .http_only(true)
            .secure(self.cookie.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::ZERO);
        set_cookie_value(cookie.build())
    }

    fn cookie_id(&self, headers: &HeaderMap) -> Option<SessionId> {
        let name = self.cookie_name();
        headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| SessionId::parse(v))
    }
}

pub(crate) fn set_cookie_value(cookie: Cookie<'_>) -> HeaderValue {
    HeaderValue::try_from(cookie.encoded().to_string())
        .expect("an encoded cookie is a valid header value")
}

// === impl SessionId ===

impl SessionId {
    fn parse(text: &str) -> Option<Self> {
        // 32 bytes are exactly 43 base64url characters without padding.
        if text.len() != 43 {
            return None;
        }
        // Decoded on the stack: this runs on every request. The decoder
        // wants room for its estimate (33 bytes), the id is exactly 32.
        let mut buf = [0u8; 33];
        let len = URL_SAFE_NO_PAD.decode_slice(text, &mut buf).ok()?;
        Some(SessionId(buf.get(..len)?.try_into().ok()?))
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the id itself: it is a bearer credential.
        f.write_str("SessionId(..)")
    }
}

// === impl AbsoluteExpiry ===

/// Ends every session at its absolute expiry, whatever its activity.
struct AbsoluteExpiry;

impl Expiry<SessionId, Arc<Session>> for AbsoluteExpiry {
    fn expire_after_create(
        &self,
        _id: &SessionId,
        session: &Arc<Session>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(session.expires.saturating_duration_since(created_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn store(ttl: Duration, idle: Duration) -> Store {
        Store::new(&config::Session {
            ttl,
            idle_timeout: idle,
            max_sessions: 100,
            secret: config::Secret::new("x".repeat(32)),
            secret_generated: false,
            secure_cookies: true,
        })
    }

    fn who() -> Identity {
        Identity {
            subject: "s".into(),
            user: "alice".into(),
            email: None,
            groups: vec![],
            role: Role::User,
        }
    }

    fn cookie_headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(hyper::header::COOKIE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[tokio::test]
    async fn a_session_is_found_by_its_cookie_and_gone_after_removal() {
        let s = store(Duration::from_secs(60), Duration::from_secs(60));
        let id = s.create(who(), None).await;
        let h = cookie_headers(&format!("a=b; __Host-billguard_session={id}"));
        let (found, session) = s.lookup(&h).await.expect("session");
        assert_eq!(found, id);
        assert_eq!(session.identity.user, "alice");
        s.remove(&id).await;
        assert!(s.lookup(&h).await.is_none());
    }

    #[tokio::test]
    async fn every_login_gets_a_fresh_id() {
        let s = store(Duration::from_secs(60), Duration::from_secs(60));
        let a = s.create(who(), None).await;
        let b = s.create(who(), None).await;
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn malformed_or_foreign_ids_find_nothing() {
        let s = store(Duration::from_secs(60), Duration::from_secs(60));
        let id = s.create(who(), None).await;
        for value in [
            format!("billguard_session={id}"),
            "__Host-billguard_session=short".to_owned(),
            format!("__Host-billguard_session={id}x"),
            format!("__Host-billguard_session={}", SessionId([7; 32])),
        ] {
            assert!(s.lookup(&cookie_headers(&value)).await.is_none(), "{value}");
        }
    }

    #[tokio::test]
    async fn the_absolute_lifetime_ends_a_session() {
        let s = store(Duration::from_millis(1), Duration::from_secs(60));
        let id = s.create(who(), None).await;
        let h = cookie_headers(&format!("__Host-billguard_session={id}"));
        // Expiry is checked against moka's clock on every read; wait for the
        // deadline to pass rather than sleeping a fixed time.
        let deadline = Instant::now() + Duration::from_millis(1);
        while Instant::now() <= deadline {
            tokio::task::yield_now().await;
        }
        assert!(s.lookup(&h).await.is_none());
    }

    #[tokio::test]
    async fn ending_a_users_sessions_leaves_the_others() {
        let s = store(Duration::from_secs(60), Duration::from_secs(60));
        let mut bob = who();
        bob.user = "bob".into();
        let a1 = s.create(who(), None).await;
        s.create(who(), None).await;
        let b = s.create(bob, None).await;
        assert_eq!(s.count().await, 3);

        assert_eq!(s.end_user("alice").await, 2);
        assert_eq!(s.count().await, 1);
        let h = |id: SessionId| cookie_headers(&format!("__Host-billguard_session={id}"));
        assert!(s.lookup(&h(a1)).await.is_none());
        assert!(s.lookup(&h(b)).await.is_some());
        assert_eq!(s.end_user("nobody").await, 0);
    }

    #[test]
    fn session_cookie_is_host_prefixed_http_only_lax_and_secure() {
        let s = store(Duration::from_secs(3600), Duration::from_secs(60));
        let v = s.set_cookie(&SessionId([1; 32]));
        let v = v.to_str().unwrap();
        assert!(v.starts_with("__Host-billguard_session="), "{v}");
        for attr in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/",
            "Max-Age=3600",
        ] {
            assert!(v.contains(attr), "{v} lacks {attr}");
        }
    }
}
