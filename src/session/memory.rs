//! The in-memory backend: a moka cache in this process.
//!
//! Each session is kept in its stored form (the compact record also written
//! to Redis, unsealed: it never leaves the process) in one allocation, and
//! decoded on lookup. Keeping the decoded form of every session would cost
//! a dozen small allocations per session, which is most of what a session
//! weighs (see the memory figures in the README). Instead each thread
//! keeps the sessions it decoded lately (see [`Recent`]), so the browser
//! that sends many requests in a row pays for one decoding, not one per
//! request.
//!
//! Bounded by `session.max_sessions` with least-recently-used eviction
//! (moka's LRU policy, so a new login is never refused by an admission
//! filter, the oldest unused session goes instead). Each entry ends at the
//! session's absolute lifetime (`session.ttl` after its last write; a
//! read past the session's own expiry finds nothing either way) or after
//! `session.idle_timeout` without use, whichever comes first. Ending every session of a user or a provider
//! session walks the cache: it is rare (admin action, back-channel logout)
//! and keeps the per-session cost free of index entries.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::future::Cache;
use moka::policy::EvictionPolicy;

use super::record::Record;
use super::{Session, SessionId};
use crate::config;

pub(super) struct Memory {
    cache: Cache<SessionId, Arc<[u8]>>,
    /// One-time token ids (logout `jti`s) with their own expiry.
    seen: Cache<String, Instant>,
}

// === impl Memory ===

impl Memory {
    pub(super) fn new(cfg: &config::Session) -> Self {
        let cache = Cache::builder()
            .name("sessions")
            .max_capacity(cfg.max_sessions)
            .eviction_policy(EvictionPolicy::lru())
            // Cache-wide timers rather than one per entry: cheaper per
            // session. `Store::load` checks each session's own expiry.
            .time_to_live(cfg.ttl)
            .time_to_idle(cfg.idle_timeout)
            .build();
        let seen = Cache::builder()
            .max_capacity(100_000)
            .expire_after(UntilInstant)
            .build();
        Memory { cache, seen }
    }

    pub(super) async fn load(&self, id: &SessionId) -> Option<Arc<Session>> {
        let stored = self.cache.get(id).await?;
        Recent::decoded(id, stored)
    }

    pub(super) async fn save(&self, id: SessionId, session: &Session) {
        let stored: Arc<[u8]> = Record::of(session).to_bytes().into();
        self.cache.insert(id, stored).await;
    }

    pub(super) async fn remove(&self, id: &SessionId) {
        self.cache.invalidate(id).await;
    }

    pub(super) async fn remove_where(&self, matches: impl Fn(&Session) -> bool) -> u64 {
        let doomed: Vec<SessionId> = self
            .cache
            .iter()
            .filter(|(_, s)| decode(s).is_some_and(|s| matches(&s)))
            .map(|(id, _)| *id)
            .collect();
        for id in &doomed {
            self.cache.invalidate(id).await;
        }
        doomed.len() as u64
    }

    pub(super) async fn count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    pub(super) fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    pub(super) async fn first_use(&self, name: &str, ttl: Duration) -> bool {
        self.seen
            .entry(name.to_owned())
            .or_insert(Instant::now() + ttl)
            .await
            .is_fresh()
    }

    pub(super) async fn all(&self) -> Vec<(SessionId, Session)> {
        let now = SystemTime::now();
        self.cache
            .iter()
            .filter_map(|(id, s)| Some((*id, decode(&s)?)))
            .filter(|(_, s)| s.expires > now)
            .collect()
    }

    pub(super) async fn housekeeping(&self) {
        self.cache.run_pending_tasks().await;
        self.seen.run_pending_tasks().await;
    }
}

fn decode(stored: &[u8]) -> Option<Session> {
    Record::from_bytes(stored).map(Record::into_session)
}

/// The sessions this thread decoded lately, each beside the stored bytes
/// it was decoded from: a slot per first byte of the session id (ids are
/// random), [`Recent::SLOTS`] slots per thread.
///
/// A decoded session is used again only while the cache still holds the
/// very allocation it came from. A session that was replaced (refreshed,
/// re-saved) has new bytes; one that was removed is not found in the cache
/// to begin with. So this never serves anything the cache would not.
struct Recent([Option<Decoded>; Recent::SLOTS]);

/// A stored record and the session decoded from it.
type Decoded = (Arc<[u8]>, Arc<Session>);

thread_local! {
    static RECENT: RefCell<Recent> = const { RefCell::new(Recent([const { None }; Recent::SLOTS])) };
}

// === impl Recent ===

impl Recent {
    const SLOTS: usize = 64;

    /// `stored`, the cache's entry for `id`, decoded.
    fn decoded(id: &SessionId, stored: Arc<[u8]>) -> Option<Arc<Session>> {
        let slot = usize::from(id.0[0]) % Self::SLOTS;
        RECENT.with_borrow_mut(|recent| {
            if let Some((bytes, session)) = &recent.0[slot]
                && Arc::ptr_eq(bytes, &stored)
            {
                return Some(session.clone());
            }
            let session = Arc::new(decode(&stored)?);
            recent.0[slot] = Some((stored, session.clone()));
            Some(session)
        })
    }
}

/// Keeps a seen token id until the instant stored with it.
struct UntilInstant;

impl Expiry<String, Instant> for UntilInstant {
    fn expire_after_create(&self, _: &String, until: &Instant, now: Instant) -> Option<Duration> {
        Some(until.saturating_duration_since(now))
    }
}
