//! The in-memory backend: a table in this process, split into shards that
//! each have their own lock, held for a lookup and never across an await.
//!
//! Each session is kept in its stored form (the record's compact binary
//! encoding) in one allocation, and decoded on lookup. Keeping the decoded
//! form of every session would cost a dozen small allocations per session,
//! which is most of what a session weighs (see the memory figures in the
//! README). Instead each thread keeps the sessions it decoded lately (see
//! [`Recent`]), so the browser that sends many requests in a row pays for
//! one decoding, not one per request. A table entry is the id, the
//! pointer to those bytes and two times: 64 bytes.
//!
//! Bounded by `session.max_sessions`: a login past it evicts the least
//! recently used session of its shard (a new login is never refused). A
//! bound under [`PER_SHARD`] sessions gets a single shard, so eviction is
//! exactly least-recently-used there; above it, each shard holds a random
//! share of the sessions and its oldest stands for the oldest overall.
//!
//! A session ends at its absolute lifetime (`session.ttl` after the login)
//! or after `session.idle_timeout` without use, whichever comes first: a
//! lookup past either finds nothing, and [`Memory::housekeeping`] removes
//! such entries. Ending every session of a user or a provider session walks
//! the table: it is rare (admin action, back-channel logout) and keeps the
//! per-session cost free of index entries.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::future::Cache;

use super::record::{Record, unix};
use super::{Session, SessionId};
use crate::config;

/// Sessions per shard, at the bound, that decide the shard count.
const PER_SHARD: u64 = 4096;
const MAX_SHARDS: u64 = 64;

pub(super) struct Memory {
    shards: Box<[Mutex<Shard>]>,
    /// Entries across all shards.
    held: AtomicU64,
    max: u64,
    /// Nanoseconds without use after which a session ends.
    idle: u64,
    /// Where [`Memory::clock`] counts from.
    epoch: Instant,
    /// One-time token ids (logout `jti`s) with their own expiry.
    seen: Cache<String, Instant>,
}

type Shard = HashMap<SessionId, Entry>;

struct Entry {
    stored: Arc<[u8]>,
    /// The session's absolute end, in Unix seconds.
    expires: u64,
    /// The last use, by [`Memory::clock`].
    used: u64,
}

// === impl Memory ===

impl Memory {
    pub(super) fn new(cfg: &config::Session) -> Self {
        let shards = (cfg.max_sessions / PER_SHARD).clamp(1, MAX_SHARDS);
        let seen = Cache::builder()
            .max_capacity(100_000)
            .expire_after(UntilInstant)
            .build();
        Memory {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            held: AtomicU64::new(0),
            max: cfg.max_sessions,
            idle: u64::try_from(cfg.idle_timeout.as_nanos()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            seen,
        }
    }

    pub(super) async fn load(&self, id: &SessionId) -> Option<Arc<Session>> {
        let now = self.clock();
        let stored = {
            let mut shard = self.shard(id);
            let entry = shard.get_mut(id)?;
            // Past its absolute end, `Store::load` finds the session's own
            // expiry and the sweep removes it: one clock read less here.
            if self.idle_too_long(entry, now) {
                shard.remove(id);
                self.held.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            entry.used = now;
            // This thread's decoding of exactly these bytes, found without
            // taking a count on them (which both cores would write).
            if let Some(session) = Recent::of(id, &entry.stored) {
                return Some(session);
            }
            entry.stored.clone()
        };
        Recent::decoded(id, stored)
    }

    pub(super) async fn save(&self, id: SessionId, session: &Session) {
        let entry = Entry {
            stored: Record::of(session).to_compact().into(),
            expires: unix(session.expires),
            used: self.clock(),
        };
        let home = self.index(&id);
        let still_over = {
            let mut shard = self.lock(home);
            if shard.insert(id, entry).is_some() {
                return;
            }
            if self.held.fetch_add(1, Ordering::Relaxed) < self.max {
                return;
            }
            !self.evict_oldest(&mut shard, &id)
        };
        // This shard held nothing but the new session: take the oldest of
        // the next shard that has any. One lock at a time.
        if still_over {
            let n = self.shards.len();
            for other in (1..n).map(|k| (home + k) % n) {
                if self.evict_oldest(&mut self.lock(other), &id) {
                    break;
                }
            }
        }
    }

    pub(super) async fn remove(&self, id: &SessionId) {
        if self.shard(id).remove(id).is_some() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) async fn remove_where(&self, matches: impl Fn(&Session) -> bool) -> u64 {
        let mut removed = 0;
        for index in 0..self.shards.len() {
            // Decoded outside the lock: requests for this shard go on.
            let doomed: Vec<SessionId> = self
                .entries(index)
                .into_iter()
                .filter(|(_, stored)| decode(stored).is_some_and(|s| matches(&s)))
                .map(|(id, _)| id)
                .collect();
            let mut shard = self.lock(index);
            for id in &doomed {
                if shard.remove(id).is_some() {
                    self.held.fetch_sub(1, Ordering::Relaxed);
                    removed += 1;
                }
            }
        }
        removed
    }

    pub(super) async fn count(&self) -> u64 {
        self.sweep();
        self.len()
    }

    pub(super) fn len(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
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
        (0..self.shards.len())
            .flat_map(|index| self.entries(index))
            .filter_map(|(id, stored)| Some((id, decode(&stored)?)))
            .filter(|(_, s)| s.expires > now)
            .collect()
    }

    pub(super) async fn housekeeping(&self) {
        self.sweep();
        self.seen.run_pending_tasks().await;
    }

    /// Removes every session past its lifetime or idle timeout.
    fn sweep(&self) {
        let (now, unix_now) = (self.clock(), unix(SystemTime::now()));
        for index in 0..self.shards.len() {
            let mut shard = self.lock(index);
            let before = shard.len();
            shard.retain(|_, entry| !self.ended(entry, now, unix_now));
            let gone = (before - shard.len()) as u64;
            self.held.fetch_sub(gone, Ordering::Relaxed);
        }
    }

    fn ended(&self, entry: &Entry, now: u64, unix_now: u64) -> bool {
        entry.expires < unix_now || self.idle_too_long(entry, now)
    }

    fn idle_too_long(&self, entry: &Entry, now: u64) -> bool {
        now.saturating_sub(entry.used) > self.idle
    }

    /// Removes the least recently used session of `shard` other than
    /// `keep`; false when there is none.
    fn evict_oldest(&self, shard: &mut Shard, keep: &SessionId) -> bool {
        let oldest = shard
            .iter()
            .filter(|(id, _)| *id != keep)
            .min_by_key(|(_, entry)| entry.used)
            .map(|(id, _)| *id);
        let Some(oldest) = oldest else {
            return false;
        };
        shard.remove(&oldest);
        self.held.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// The entries of one shard, copied out so the lock is held briefly.
    fn entries(&self, index: usize) -> Vec<(SessionId, Arc<[u8]>)> {
        self.lock(index)
            .iter()
            .map(|(id, entry)| (*id, entry.stored.clone()))
            .collect()
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, Shard> {
        self.lock(self.index(id))
    }

    fn index(&self, id: &SessionId) -> usize {
        // Ids are random; the table's own hash reads all of it.
        usize::from(u16::from_le_bytes([id.0[30], id.0[31]])) % self.shards.len()
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // Nothing panics while a shard is locked; if something did, the
        // table is still consistent (every change is one map operation).
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Nanoseconds since this store was made (fine enough that two uses
    /// are never taken for one when choosing whom to evict).
    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn decode(stored: &[u8]) -> Option<Session> {
    Record::from_compact(stored).map(Record::into_session)
}

/// The sessions this thread decoded lately, each beside the stored bytes
/// it was decoded from: a slot per first byte of the session id (ids are
/// random), [`Recent::SLOTS`] slots per thread.
///
/// A decoded session is used again only while the table still holds the
/// very allocation it came from. A session that was replaced (refreshed,
/// re-saved) has new bytes; one that was removed is not found in the table
/// to begin with. So this never serves anything the table would not.
struct Recent([Option<Decoded>; Recent::SLOTS]);

/// A stored record and the session decoded from it.
type Decoded = (Arc<[u8]>, Arc<Session>);

thread_local! {
    static RECENT: RefCell<Recent> = const { RefCell::new(Recent([const { None }; Recent::SLOTS])) };
}

// === impl Recent ===

impl Recent {
    const SLOTS: usize = 64;

    /// The session this thread decoded from `stored`, if it still has it.
    fn of(id: &SessionId, stored: &Arc<[u8]>) -> Option<Arc<Session>> {
        RECENT.with_borrow(|recent| match &recent.0[Self::slot(id)] {
            Some((bytes, session)) if Arc::ptr_eq(bytes, stored) => Some(session.clone()),
            _ => None,
        })
    }

    fn slot(id: &SessionId) -> usize {
        usize::from(id.0[0]) % Self::SLOTS
    }

    /// `stored`, the table's entry for `id`, decoded.
    fn decoded(id: &SessionId, stored: Arc<[u8]>) -> Option<Arc<Session>> {
        let slot = Self::slot(id);
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
