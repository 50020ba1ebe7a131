//! The Redis backend: one store shared by every replica.
//!
//! Keys (each name an HMAC under a key derived from `session.secret`, see
//! `seal`):
//! - `bg:sess:<h(id)>`: the sealed session; its TTL is set on every write
//!   and renewed on every read to the idle timeout, never past the
//!   absolute expiry, so Redis forgets ended sessions by itself;
//! - `bg:sub:<h(sub)>`, `bg:sid:<h(sid)>`, `bg:user:<h(user name)>`: sets
//!   of session key names, so every session of a user or a provider
//!   session can be ended from any replica (members may outlive their sessions; deleting a missing key is
//!   harmless);
//! - `bg:lock:<h(id)>`: held for a few seconds by the replica that is
//!   refreshing that session;
//! - `bg:once:<h(jti)>`: a logout token already used.
//!
//! A local moka cache (`session.redis_cache_ttl`, default 2s) keeps the hot
//! path off the network; an entry is served for at most that long, which
//! bounds how long a session ended on another replica is still honoured
//! here. Ending a session on this replica drops it from the cache at once.
//!
//! Availability is tracked by a monitor task: a failed command or ping
//! marks Redis down (logged once), requests then fail fast with
//! [`Error::Unavailable`] instead of waiting on timeouts, and the monitor
//! pings with back-off (250 ms up to 5 s) until Redis answers again (logged
//! once). The connection manager reconnects by itself.

use std::sync::{Arc, Weak};
use std::time::Duration;

use moka::future::Cache;
use moka::policy::EvictionPolicy;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, IntoConnectionInfo as _};
use tokio::sync::{Notify, watch};

use super::record::Record;
use super::{Error, Sealer, Session, SessionId, time_to_live};
use crate::config;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(800);
const PING_EVERY: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// How long a refresh lock is held at most; a refresh takes well under it.
const LOCK_TIME: Duration = Duration::from_secs(15);

/// Which secondary index to end sessions by.
#[derive(Clone, Copy, Debug)]
pub(super) enum Index {
    Subject,
    Sid,
    User,
}

pub(super) struct Redis {
    shared: Arc<Shared>,
}

struct Shared {
    conn: ConnectionManager,
    local: Option<Cache<SessionId, Arc<Session>>>,
    sealer: Arc<Sealer>,
    idle: Duration,
    ttl: Duration,
    up: watch::Sender<bool>,
    /// Wakes the monitor early after a failed command.
    trouble: Notify,
    /// Names the lock values this replica holds, so it releases only its own.
    owner: String,
}

// === impl Redis ===

impl Redis {
    pub(super) fn new(
        cfg: &config::Session,
        redis: &config::Redis,
        sealer: Arc<Sealer>,
    ) -> Result<Self, Error> {
        let setup = |reason: String| Error::Setup {
            url: masked(redis.url.expose()),
            reason,
        };
        let mut info = redis
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| setup(e.to_string()))?;
        if info.redis_settings().password().is_none()
            && let Some(password) = &redis.password
        {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| setup(e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| setup(e.to_string()))?;

        let local = (!redis.cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .name("sessions-local")
                .max_capacity(cfg.max_sessions)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_live(redis.cache_ttl)
                .build()
        });
        let (up, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            conn,
            local,
            sealer,
            idle: cfg.idle_timeout,
            ttl: cfg.ttl,
            up,
            trouble: Notify::new(),
            owner: format!("{:032x}", rand::random::<u128>()),
        });
        tokio::spawn(monitor(Arc::downgrade(&shared), masked(redis.url.expose())));
        Ok(Redis { shared })
    }

    pub(super) async fn load(
        &self,
        id: &SessionId,
        fresh: bool,
    ) -> Result<Option<Arc<Session>>, Error> {
        let s = &self.shared;
        // Known down: refuse even what the local cache holds (fail closed).
        s.check()?;
        if !fresh
            && let Some(local) = &s.local
            && let Some(hit) = local.get(id).await
        {
            return Ok(Some(hit));
        }

        let key = s.session_key(id);
        let raw: Option<Vec<u8>> = s.run(s.conn.clone().get(&key)).await?;
        let Some(raw) = raw else {
            s.forget(id).await;
            return Ok(None);
        };
        let session = s
            .sealer
            .open(key.as_bytes(), &raw)
            .and_then(|plain| Record::from_bytes(&plain))
            .map(|r| Arc::new(r.into_session()));
        let Some(session) = session else {
            // Another secret or a damaged value: it can never be used.
            tracing::warn!("Session in Redis cannot be opened (other session.secret?); removed");
            let _: Result<u64, _> = s.run(s.conn.clone().del(&key)).await;
            return Ok(None);
        };

        // Renew the idle timeout without making the request wait for it.
        let ttl = time_to_live(&session, s.idle);
        let mut conn = s.conn.clone();
        tokio::spawn(async move {
            let _: Result<bool, _> = conn
                .pexpire(&key, i64::try_from(millis(ttl)).unwrap_or(i64::MAX))
                .await;
        });
        if let Some(local) = &s.local {
            local.insert(*id, session.clone()).await;
        }
        Ok(Some(session))
    }

    pub(super) async fn save(
        &self,
        id: &SessionId,
        session: Arc<Session>,
        new: bool,
    ) -> Result<(), Error> {
        let s = &self.shared;
        s.check()?;
        let key = s.session_key(id);
        let sealed = s
            .sealer
            .seal(key.as_bytes(), &Record::of(&session).to_bytes());
        let ttl = millis(time_to_live(&session, s.idle).max(Duration::from_millis(1)));

        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(sealed)
            .arg("PX")
            .arg(ttl)
            .ignore();
        if new {
            let mut indexes = vec![
                s.index_key(Index::Subject, &session.identity.subject),
                s.index_key(Index::User, &session.identity.user),
            ];
            if let Some(sid) = &session.sid {
                indexes.push(s.index_key(Index::Sid, sid));
            }
            for index in indexes {
                pipe.cmd("SADD").arg(&index).arg(&key).ignore();
                pipe.cmd("PEXPIRE").arg(&index).arg(millis(s.ttl)).ignore();
            }
        }
        let _: () = s.run(pipe.query_async(&mut s.conn.clone())).await?;
        if let Some(local) = &s.local {
            local.insert(*id, session).await;
        }
        Ok(())
    }

    pub(super) async fn remove(&self, id: &SessionId) -> Result<(), Error> {
        let s = &self.shared;
        s.forget(id).await;
        s.check()?;
        let _: u64 = s.run(s.conn.clone().del(s.session_key(id))).await?;
        Ok(())
    }

    pub(super) async fn remove_indexed(&self, index: Index, value: &str) -> Result<u64, Error> {
        let s = &self.shared;
        s.check()?;
        let index_key = s.index_key(index, value);
        let members: Vec<String> = s.run(s.conn.clone().smembers(&index_key)).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(&members).arg(&index_key);
        let deleted: (u64,) = if members.is_empty() {
            let _: u64 = s.run(s.conn.clone().del(&index_key)).await?;
            (0,)
        } else {
            let (n,): (u64,) = s.run(pipe.query_async(&mut s.conn.clone())).await?;
            // The index key itself was one of the deleted keys.
            (n.saturating_sub(1),)
        };

        // This replica's cache forgets them now; others within their bound.
        if let Some(local) = &s.local {
            let doomed: Vec<SessionId> = local
                .iter()
                .filter(|(_, session)| match index {
                    Index::Subject => session.identity.subject == value,
                    Index::Sid => session.sid.as_deref() == Some(value),
                    Index::User => session.identity.user == value,
                })
                .map(|(id, _)| *id)
                .collect();
            for id in doomed {
                local.invalidate(&id).await;
            }
        }
        Ok(deleted.0)
    }

    pub(super) async fn count(&self) -> Result<u64, Error> {
        let s = &self.shared;
        s.check()?;
        let mut conn = s.conn.clone();
        let mut cursor: u64 = 0;
        let mut total = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = s
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg("bg:sess:*")
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            total += keys.len() as u64;
            if next == 0 {
                return Ok(total);
            }
            cursor = next;
        }
    }

    pub(super) fn cached(&self) -> u64 {
        self.shared
            .local
            .as_ref()
            .map(|l| l.entry_count())
            .unwrap_or(0)
    }

    pub(super) fn is_available(&self) -> bool {
        *self.shared.up.borrow()
    }

    pub(super) async fn wait_available(&self, up: bool) {
        let mut rx = self.shared.up.subscribe();
        // The sender lives in `shared`, which `self` keeps alive.
        let _ = rx.wait_for(|now| *now == up).await;
    }

    pub(super) async fn lock(&self, id: &SessionId) -> Result<bool, Error> {
        let s = &self.shared;
        s.check()?;
        let set: Option<String> = s
            .run(
                redis::cmd("SET")
                    .arg(s.lock_key(id))
                    .arg(&s.owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(LOCK_TIME))
                    .query_async(&mut s.conn.clone()),
            )
            .await?;
        Ok(set.is_some())
    }

    pub(super) async fn unlock(&self, id: &SessionId) {
        let s = &self.shared;
        // Delete the lock only if this replica still holds it.
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let mut conn = s.conn.clone();
        let released: Result<u64, _> = s
            .run(
                script
                    .key(s.lock_key(id))
                    .arg(&s.owner)
                    .invoke_async(&mut conn),
            )
            .await;
        if let Err(error) = released {
            tracing::debug!(%error, "Refresh lock not released; it expires by itself");
        }
    }

    pub(super) async fn first_use(
        &self,
        kind: &str,
        token_id: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let s = &self.shared;
        s.check()?;
        let key = format!("bg:once:{}", s.sealer.name(kind, token_id.as_bytes()));
        let set: Option<String> = s
            .run(
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut s.conn.clone()),
            )
            .await?;
        Ok(set.is_some())
    }

    pub(super) async fn housekeeping(&self) {
        if let Some(local) = &self.shared.local {
            local.run_pending_tasks().await;
        }
    }
}

// === impl Shared ===

impl Shared {
    fn check(&self) -> Result<(), Error> {
        if *self.up.borrow() {
            Ok(())
        } else {
            Err(Error::Unavailable("redis is not reachable".into()))
        }
    }

    /// Runs one command; a failure marks Redis down until the monitor sees
    /// it answer again.
    async fn run<T>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        match command.await {
            Ok(value) => Ok(value),
            Err(error) => {
                if self.up.send_replace(false) {
                    tracing::error!(
                        error = %describe(&error),
                        "Session store unreachable: requests that need a session get 503 \
                         until Redis answers again"
                    );
                }
                self.trouble.notify_one();
                Err(Error::Unavailable(describe(&error)))
            }
        }
    }

    async fn forget(&self, id: &SessionId) {
        if let Some(local) = &self.local {
            local.invalidate(id).await;
        }
    }

    fn session_key(&self, id: &SessionId) -> String {
        format!("bg:sess:{}", self.sealer.name("sess", id.bytes()))
    }

    fn index_key(&self, index: Index, value: &str) -> String {
        match index {
            Index::Subject => format!("bg:sub:{}", self.sealer.name("sub", value.as_bytes())),
            Index::Sid => format!("bg:sid:{}", self.sealer.name("sid", value.as_bytes())),
            Index::User => format!("bg:user:{}", self.sealer.name("user", value.as_bytes())),
        }
    }

    fn lock_key(&self, id: &SessionId) -> String {
        format!("bg:lock:{}", self.sealer.name("lock", id.bytes()))
    }
}

/// Pings Redis: now and then while it answers, with back-off while it
/// does not. Ends when the store is dropped.
async fn monitor(shared: Weak<Shared>, url: String) {
    let mut delay = FIRST_RETRY;
    let mut first = true;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let mut conn = s.conn.clone();
        let answer: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        let was_up = *s.up.borrow();
        match answer {
            Ok(_) => {
                if !was_up {
                    if first {
                        tracing::info!(redis = %url, "Session store connected");
                    } else {
                        tracing::warn!(redis = %url, "Session store reachable again");
                    }
                    s.up.send_replace(true);
                }
                delay = FIRST_RETRY;
            }
            Err(error) => {
                if was_up || first {
                    tracing::error!(
                        redis = %url,
                        error = %describe(&error),
                        "Session store unreachable: requests that need a session get 503 \
                         until Redis answers again"
                    );
                    s.up.send_replace(false);
                }
                delay = (delay * 2).min(LAST_RETRY);
            }
        }
        first = false;
        let wait = if *s.up.borrow() { PING_EVERY } else { delay };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.trouble.notified() => {}
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A Redis URL without its password, for logs.
fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("********"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

fn describe(error: &redis::RedisError) -> String {
    // The error text names the command at most, never its arguments.
    error.to_string()
}
