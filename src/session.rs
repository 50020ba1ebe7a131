//! Signed-in sessions: the id in the browser's cookie, the data in a store.
//!
//! The cookie holds only a 256-bit random id; everything else stays
//! server-side, in one of two backends behind the same [`Store`] handle:
//!
//! - `memory` (the default, one replica): a table in this process,
//!   optionally written to `session.persist_file` on shutdown and read back
//!   at start, so a restart signs nobody out;
//! - `redis` (several replicas): every replica reads and writes the same
//!   Redis, values sealed with `session.secret`, with a short-lived local
//!   cache in front (see `redis`).
//!
//! Both honour an absolute lifetime (`session.ttl`), an idle timeout
//! (`session.idle_timeout`), ending one session, every session of a user
//! (`sub`) or of a provider session (`sid`), and counting. A login always
//! creates a fresh id, so an id planted before login is worthless after.
//!
//! A store that cannot be reached fails closed: [`Store::find`] and friends
//! return [`Error::Unavailable`] and the request gets a 503, never the
//! benefit of the doubt.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use hyper::header::{HeaderMap, HeaderValue};

use crate::config;
use crate::headers::IdentityValues;
use crate::identity::Identity;

mod memory;
mod persist;
mod record;
mod redis;
mod seal;

pub(crate) use seal::Sealer;

/// Cookie name without the `__Host-` prefix.
const COOKIE_NAME: &str = "billguard_session";

/// One signed-in user.
#[derive(Clone, Debug)]
pub struct Session {
    pub identity: Identity,
    /// The raw ID token, kept as `id_token_hint` for sign-out.
    pub id_token: Option<String>,
    /// The provider's session id (`sid` claim), for back-channel logout.
    pub sid: Option<String>,
    pub tokens: Tokens,
    pub created: SystemTime,
    /// The absolute end of the session.
    pub expires: SystemTime,
    /// When groups and role were last taken from the provider.
    pub checked: SystemTime,
}

/// What billguard keeps of the provider's tokens. Its `Debug` never shows
/// them.
#[derive(Clone, Default)]
pub struct Tokens {
    pub refresh: Option<String>,
    /// Kept when there is no refresh token, to ask userinfo again, and
    /// when `access_token.forward` sends it to the app.
    pub access: Option<String>,
    pub access_expires: Option<SystemTime>,
}

/// What a login hands over to start a session.
#[derive(Debug)]
pub struct NewSession {
    pub identity: Identity,
    pub id_token: Option<String>,
    pub sid: Option<String>,
    pub tokens: Tokens,
}

/// A session id: 32 random bytes, base64url in the cookie.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 32]);

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The shared store cannot be reached; nothing about the session is
    /// known, so the request must be refused.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store at {url}: {reason}")]
    Setup { url: String, reason: String },
}

/// All live sessions. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    ttl: Duration,
    cookie: CookieSpec,
    persist_file: Option<PathBuf>,
    sealer: Arc<Sealer>,
}

enum Backend {
    Memory(memory::Memory),
    Redis(redis::Redis),
}

/// How the session cookie is named and flagged.
#[derive(Clone, Debug)]
pub struct CookieSpec {
    pub secure: bool,
    pub max_age: Duration,
}

// === impl Store ===

impl Store {
    /// A store as configured. A Redis store connects lazily and in the
    /// background; until Redis answers, [`Store::is_available`] is false.
    pub fn new(cfg: &config::Session) -> Result<Self, Error> {
        let sealer = Arc::new(Sealer::new(cfg.secret.expose().as_bytes()));
        let backend = match &cfg.store {
            config::StoreKind::Memory => Backend::Memory(memory::Memory::new(cfg)),
            config::StoreKind::Redis(redis) => {
                Backend::Redis(redis::Redis::new(cfg, redis, sealer.clone())?)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                ttl: cfg.ttl,
                cookie: CookieSpec {
                    secure: cfg.secure_cookies,
                    max_age: cfg.ttl,
                },
                persist_file: cfg.persist_file.clone(),
                sealer,
            }),
        })
    }

    /// `memory` or `redis`, for logs.
    pub fn kind(&self) -> &'static str {
        match &self.inner.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Starts a session under a fresh id.
    pub async fn open(&self, new: NewSession) -> Result<SessionId, Error> {
        let id = SessionId(rand::random());
        let now = SystemTime::now();
        let session = Session {
            identity: new.identity,
            id_token: new.id_token,
            sid: new.sid,
            tokens: new.tokens,
            created: now,
            expires: now + self.inner.ttl,
            checked: now,
        };
        self.save(&id, Arc::new(session), true).await?;
        Ok(id)
    }

    /// Starts a session without provider tokens. A store failure is logged
    /// and leaves the browser without a session; callers that can show a
    /// 503 use [`Store::open`].
    pub async fn create(&self, identity: Identity, id_token: Option<String>) -> SessionId {
        let new = NewSession {
            identity,
            id_token,
            sid: None,
            tokens: Tokens::default(),
        };
        match self.open(new).await {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(%error, "Session not stored");
                SessionId(rand::random())
            }
        }
    }

    /// Starts a session without provider tokens beyond the access token to
    /// forward; see [`Store::create`] for how failures are handled.
    pub async fn create_with(
        &self,
        identity: Identity,
        id_token: Option<String>,
        access_token: Option<String>,
    ) -> SessionId {
        let new = NewSession {
            identity,
            id_token,
            sid: None,
            tokens: Tokens {
                access: access_token,
                ..Tokens::default()
            },
        };
        match self.open(new).await {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(%error, "Session not stored");
                SessionId(rand::random())
            }
        }
    }

    /// The session named by the request's cookie, if it is still alive.
    pub async fn find(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(SessionId, Arc<Session>)>, Error> {
        let Some(id) = self.cookie_id(headers) else {
            return Ok(None);
        };
        Ok(self.load(&id).await?.map(|s| (id, s)))
    }

    /// Like [`Store::find`], with an unreachable store read as "no session"
    /// (fail closed).
    pub async fn lookup(&self, headers: &HeaderMap) -> Option<(SessionId, Arc<Session>)> {
        self.find(headers).await.ok().flatten()
    }

    /// The session under `id`, possibly from a local cache.
    pub async fn load(&self, id: &SessionId) -> Result<Option<Arc<Session>>, Error> {
        let found = match &self.inner.backend {
            Backend::Memory(m) => m.load(id).await,
            // Boxed so that the Redis client's future does not enlarge the
            // request's when sessions are in memory.
            Backend::Redis(r) => Box::pin(r.load(id, false)).await?,
        };
        Ok(found.filter(|s| s.expires > SystemTime::now()))
    }

    /// The session under `id` as the shared store has it now, bypassing
    /// any local cache.
    pub async fn load_fresh(&self, id: &SessionId) -> Result<Option<Arc<Session>>, Error> {
        let found = match &self.inner.backend {
            Backend::Memory(m) => m.load(id).await,
            Backend::Redis(r) => r.load(id, true).await?,
        };
        Ok(found.filter(|s| s.expires > SystemTime::now()))
    }

    /// Stores a changed session (after a refresh) under its id.
    pub async fn replace(&self, id: &SessionId, session: Session) -> Result<(), Error> {
        self.save(id, Arc::new(session), false).await
    }

    async fn save(&self, id: &SessionId, session: Arc<Session>, new: bool) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::Memory(m) => {
                m.save(*id, &session).await;
                Ok(())
            }
            Backend::Redis(r) => r.save(id, session, new).await,
        }
    }

    /// Ends one session.
    pub async fn end(&self, id: &SessionId) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::Memory(m) => {
                m.remove(id).await;
                Ok(())
            }
            Backend::Redis(r) => r.remove(id).await,
        }
    }

    /// Ends one session; a store failure is logged.
    pub async fn remove(&self, id: &SessionId) {
        if let Err(error) = self.end(id).await {
            tracing::error!(%error, "Session not removed");
        }
    }

    /// Ends every session of `user` (the name in `X-Forwarded-User`,
    /// compared exactly); returns how many.
    pub async fn remove_user(&self, user: &str) -> Result<u64, Error> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.remove_where(|s| s.identity.user == user).await),
            Backend::Redis(r) => r.remove_indexed(redis::Index::User, user).await,
        }
    }

    /// Like [`Store::remove_user`]; a store failure is logged and counts as
    /// none ended.
    pub async fn end_user(&self, user: &str) -> usize {
        match self.remove_user(user).await {
            Ok(n) => n as usize,
            Err(error) => {
                tracing::error!(%error, "Sessions not ended");
                0
            }
        }
    }

    /// Ends every session of the user with this `sub`; returns how many.
    pub async fn remove_subject(&self, subject: &str) -> Result<u64, Error> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.remove_where(|s| s.identity.subject == subject).await),
            Backend::Redis(r) => r.remove_indexed(redis::Index::Subject, subject).await,
        }
    }

    /// Ends every session that belongs to this provider session (`sid`).
    pub async fn remove_sid(&self, sid: &str) -> Result<u64, Error> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.remove_where(|s| s.sid.as_deref() == Some(sid)).await),
            Backend::Redis(r) => r.remove_indexed(redis::Index::Sid, sid).await,
        }
    }

    /// Live sessions across every replica sharing the store; 0 (logged)
    /// when the store cannot be asked. See [`Store::try_count`].
    pub async fn count(&self) -> u64 {
        match self.try_count().await {
            Ok(n) => n,
            Err(error) => {
                tracing::error!(%error, "Sessions not counted");
                0
            }
        }
    }

    /// Live sessions across every replica sharing the store.
    pub async fn try_count(&self) -> Result<u64, Error> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.count().await),
            Backend::Redis(r) => r.count().await,
        }
    }

    /// Sessions held in this process (approximate until housekeeping
    /// runs; with Redis, only the local cache).
    pub fn len(&self) -> u64 {
        match &self.inner.backend {
            Backend::Memory(m) => m.len(),
            Backend::Redis(r) => r.cached(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether requests that need a session can be served now.
    pub fn is_available(&self) -> bool {
        match &self.inner.backend {
            Backend::Memory(_) => true,
            Backend::Redis(r) => r.is_available(),
        }
    }

    /// Resolves once [`Store::is_available`] equals `up`.
    pub async fn wait_available(&self, up: bool) {
        match &self.inner.backend {
            Backend::Memory(_) if up => {}
            Backend::Memory(_) => std::future::pending().await,
            Backend::Redis(r) => r.wait_available(up).await,
        }
    }

    /// Takes the right to refresh this session, across replicas with Redis.
    /// `Ok(false)`: somebody else is refreshing it right now.
    pub async fn lock_refresh(&self, id: &SessionId) -> Result<bool, Error> {
        match &self.inner.backend {
            // In one process the single-flight in `refresh` is the lock.
            Backend::Memory(_) => Ok(true),
            Backend::Redis(r) => r.lock(id).await,
        }
    }

    pub async fn unlock_refresh(&self, id: &SessionId) {
        if let Backend::Redis(r) = &self.inner.backend {
            r.unlock(id).await;
        }
    }

    /// Records a one-time token id (a logout token's `jti`) for `ttl`;
    /// `Ok(false)` when it was already seen, on any replica.
    pub async fn first_use(
        &self,
        kind: &str,
        token_id: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m
                .first_use(&self.inner.sealer.name(kind, token_id.as_bytes()), ttl)
                .await),
            Backend::Redis(r) => r.first_use(kind, token_id, ttl).await,
        }
    }

    /// Removes what has expired: lookups only skip it. Call this now and
    /// then so memory is given back and counts stay true on an idle proxy.
    pub async fn housekeeping(&self) {
        match &self.inner.backend {
            Backend::Memory(m) => m.housekeeping().await,
            Backend::Redis(r) => r.housekeeping().await,
        }
    }

    /// Reads the persistence file of the memory store, if configured, and
    /// deletes it (a file left behind must never resurrect sessions that
    /// ended after it was read).
    pub async fn restore(&self) {
        let (Backend::Memory(m), Some(path)) = (&self.inner.backend, &self.inner.persist_file)
        else {
            return;
        };
        let restored = persist::read(path, &self.inner.sealer);
        let now = SystemTime::now();
        let mut count = 0usize;
        for (id, session) in restored {
            if session.expires > now {
                m.save(id, &session).await;
                count += 1;
            }
        }
        if count > 0 {
            tracing::info!(sessions = count, path = %path.display(), "Sessions restored");
        }
    }

    /// Writes the memory store's sessions to the persistence file, if
    /// configured. Called once, on shutdown.
    pub async fn persist(&self) {
        let (Backend::Memory(m), Some(path)) = (&self.inner.backend, &self.inner.persist_file)
        else {
            return;
        };
        let sessions = m.all().await;
        match persist::write(path, &self.inner.sealer, &sessions) {
            Ok(()) => {
                tracing::info!(sessions = sessions.len(), path = %path.display(), "Sessions saved for the next start")
            }
            Err(error) => {
                tracing::error!(%error, path = %path.display(), "Sessions could not be saved; they end with this process")
            }
        }
    }

    pub fn cookie_name(&self) -> &'static str {
        if self.inner.cookie.secure {
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
            .secure(self.inner.cookie.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(
                self.inner
                    .cookie
                    .max_age
                    .as_secs()
                    .try_into()
                    .unwrap_or(i64::MAX),
            ));
        set_cookie_value(cookie.build())
    }

    /// `Set-Cookie` that deletes the session cookie.
    pub fn clear_cookie(&self) -> HeaderValue {
        let cookie = Cookie::build((self.cookie_name(), ""))
            .path("/")
            .http_only(true)
            .secure(self.inner.cookie.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::ZERO);
        set_cookie_value(cookie.build())
    }

    fn cookie_id(&self, headers: &HeaderMap) -> Option<SessionId> {
        crate::headers::cookie(headers, self.cookie_name()).and_then(SessionId::parse)
    }
}

pub(crate) fn set_cookie_value(cookie: Cookie<'_>) -> HeaderValue {
    HeaderValue::try_from(cookie.encoded().to_string())
        .expect("an encoded cookie is a valid header value")
}

/// The time left until `session` must end: its absolute expiry or its
/// idle timeout, whichever comes first.
fn time_to_live(session: &Session, idle: Duration) -> Duration {
    session
        .expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .min(idle)
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |t: &Option<String>| if t.is_some() { "********" } else { "-" };
        f.debug_struct("Tokens")
            .field("refresh", &shown(&self.refresh))
            .field("access", &shown(&self.access))
            .field("access_expires", &self.access_expires)
            .finish()
    }
}

// === impl Session ===

impl Session {
    /// The identity as header values, made once per session this thread
    /// used lately rather than for every request (percent-encoding, and an
    /// allocation per value that each request's copy would share).
    ///
    /// A session is never changed once shared (a refresh stores a new
    /// one), so values made for the very same `Arc` are still its own.
    pub fn headers(self: &Arc<Self>) -> IdentityValues {
        const SLOTS: usize = 64;
        type Made = (Arc<Session>, IdentityValues);
        thread_local! {
            static MADE: RefCell<[Option<Made>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
        }
        // Allocations are at least 16-byte aligned: the bits above pick
        // the slot.
        let slot = (Arc::as_ptr(self).addr() >> 4) % SLOTS;
        MADE.with_borrow_mut(|made| {
            if let Some((session, values)) = &made[slot]
                && Arc::ptr_eq(session, self)
            {
                return values.clone();
            }
            let values = IdentityValues::new(&self.identity);
            made[slot] = Some((self.clone(), values.clone()));
            values
        })
    }
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

    fn bytes(&self) -> &[u8; 32] {
        &self.0
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

#[cfg(test)]
mod tests;
