//! Keeping sessions in step with the provider: refresh tokens are redeemed
//! before the access token runs out, and groups and role are taken again
//! from the provider at least every `session.refresh_interval`.
//!
//! On each request [`Refresher::current`] decides (see [`due`]):
//! - nothing to do: the session is used as it is;
//! - the access token expires within [`EARLY`]: the request goes on with the
//!   session as it is and a refresh runs in the background;
//! - the role is older than the interval, or the access token has expired:
//!   the request waits for the refresh, so a demoted admin is never served
//!   as admin past the interval.
//!
//! Exactly one refresh runs per session. In this process, concurrent
//! requests join one flight (moka's coalescing insert) and all get its
//! result. Across replicas, the flight takes a short lock in Redis; a
//! replica that finds it taken waits until the session in Redis changes.
//! Every flight first rereads the session from the store and returns early
//! when someone else refreshed it already, so a rotated refresh token is
//! never redeemed twice.
//!
//! Outcomes: the provider accepts, and the session gets the new tokens and
//! the role the new claims give; the provider refuses the refresh token (or
//! the user is no longer admitted), and the session ends; the provider
//! cannot be asked, and the session carries on as a regular `user` (never
//! `admin`) until it can. Without a refresh token, userinfo is asked with
//! the access token while that is valid; after that the role falls back to
//! `user`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::header::HeaderMap;
use moka::future::Cache;

use crate::identity::{Claims, Policy, Role};
use crate::oidc::{FlowError, Grant, Provider};
use crate::session::{self, Session, SessionId, Store, Tokens};

/// Refresh this long before the access token expires.
pub const EARLY: Duration = Duration::from_secs(60);
/// After the provider could not be asked, try again after this long.
const RETRY: Duration = Duration::from_secs(30);
/// Longest wait for another replica's refresh of the same session.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(15);
const POLL_OTHER: Duration = Duration::from_millis(100);

/// What a request gets to work with.
#[derive(Clone, Debug)]
pub enum Outcome {
    Current(Arc<Session>),
    /// The session ended (refused refresh, user no longer admitted, or
    /// gone from the store).
    Ended,
    /// The store could not be asked.
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    No,
    Background,
    Now,
}

#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` with local login alone: nothing to refresh from.
    provider: Option<Provider>,
    store: Store,
    policy: Policy,
    interval: Duration,
    /// `access_token.forward`: the access token is kept for the app.
    keep_access: bool,
    flights: Cache<SessionId, Outcome>,
}

/// When `session` needs the provider again, at `now`.
pub fn due(session: &Session, now: SystemTime, interval: Duration) -> Due {
    let role_stale = now >= session.checked + interval;
    let refreshable = session.tokens.refresh.is_some();
    let expires = session.tokens.access_expires;
    let expired = refreshable && expires.is_some_and(|e| now >= e);
    let expiring = refreshable && expires.is_some_and(|e| now + EARLY >= e);
    if role_stale || expired {
        Due::Now
    } else if expiring {
        Due::Background
    } else {
        Due::No
    }
}

// === impl Refresher ===

impl Refresher {
    pub fn new(
        provider: Option<Provider>,
        store: Store,
        policy: Policy,
        interval: Duration,
        keep_access: bool,
    ) -> Self {
        Refresher {
            inner: Arc::new(Inner {
                provider,
                store,
                policy,
                interval,
                keep_access,
                flights: Cache::builder().max_capacity(100_000).build(),
            }),
        }
    }

    /// The request's session, refreshed first when it must be.
    pub async fn session_for(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(SessionId, Arc<Session>)>, session::Error> {
        let Some((id, session)) = self.inner.store.find(headers).await? else {
            return Ok(None);
        };
        match self.current(id, session).await {
            Outcome::Current(session) => Ok(Some((id, session))),
            Outcome::Ended => Ok(None),
            Outcome::Unavailable => Err(session::Error::Unavailable(
                "session store failed during refresh".into(),
            )),
        }
    }

    /// What to serve `session` as now.
    pub async fn current(&self, id: SessionId, session: Arc<Session>) -> Outcome {
        // Sessions of local login (no provider tokens, no provider) stand
        // as they are.
        if self.inner.provider.is_none() {
            return Outcome::Current(session);
        }
        match due(&session, SystemTime::now(), self.inner.interval) {
            Due::No => Outcome::Current(session),
            Due::Background => {
                let this = self.clone();
                tokio::spawn(async move { this.flight(id).await });
                Outcome::Current(session)
            }
            // Boxed: the refresh (a token request) is rare, and inline it
            // would make every request's future as large.
            Due::Now => Box::pin(self.flight(id)).await,
        }
    }

    /// Joins the one refresh of this session in this process.
    async fn flight(&self, id: SessionId) -> Outcome {
        let this = self.clone();
        let entry = self
            .inner
            .flights
            .entry(id)
            .or_insert_with(async move { this.run(id).await })
            .await;
        if entry.is_fresh() {
            // Later requests start a new flight, which rereads the store
            // and finds this one's result.
            self.inner.flights.invalidate(&id).await;
        }
        entry.into_value()
    }

    async fn run(&self, id: SessionId) -> Outcome {
        let store = &self.inner.store;
        let session = match store.load_fresh(&id).await {
            Ok(Some(session)) => session,
            Ok(None) => return Outcome::Ended,
            Err(_) => return Outcome::Unavailable,
        };
        if due(&session, SystemTime::now(), self.inner.interval) == Due::No {
            return Outcome::Current(session);
        }
        match store.lock_refresh(&id).await {
            Ok(true) => {}
            Ok(false) => return self.wait_for_other(id, session).await,
            Err(_) => return Outcome::Unavailable,
        }
        // Another replica may have refreshed and let go of the lock
        // between the read above and taking it: read again under the lock,
        // or its rotated refresh token would be redeemed a second time (and
        // refused, ending the session).
        let outcome = match store.load_fresh(&id).await {
            Ok(Some(session))
                if due(&session, SystemTime::now(), self.inner.interval) == Due::No =>
            {
                Outcome::Current(session)
            }
            Ok(Some(session)) => self.renew(id, &session).await,
            Ok(None) => Outcome::Ended,
            Err(_) => Outcome::Unavailable,
        };
        store.unlock_refresh(&id).await;
        outcome
    }

    /// Another replica holds the lock: wait until its result is in the
    /// store.
    async fn wait_for_other(&self, id: SessionId, before: Arc<Session>) -> Outcome {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL_OTHER).await;
            match self.inner.store.load_fresh(&id).await {
                Ok(Some(now)) if now.checked != before.checked => {
                    return Outcome::Current(now);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Outcome::Ended,
                Err(_) => return Outcome::Unavailable,
            }
        }
        Outcome::Current(Arc::new(demoted(&before)))
    }

    async fn renew(&self, id: SessionId, session: &Session) -> Outcome {
        let Some(provider) = &self.inner.provider else {
            return Outcome::Current(Arc::new(session.clone()));
        };
        let subject = &session.identity.subject;
        if let Some(refresh_token) = &session.tokens.refresh {
            return match provider.refresh(refresh_token, subject).await {
                Ok(refreshed) => {
                    self.apply(
                        id,
                        session,
                        refreshed.claims,
                        Some(refreshed.grant),
                        refreshed.id_token,
                    )
                    .await
                }
                Err(FlowError::RefreshRejected(detail)) => {
                    tracing::info!(
                        target: "billguard::auth",
                        outcome = "session_ended",
                        reason = "refresh_refused",
                        user = %session.identity.user,
                        %detail,
                        "Session ended: the provider refused the refresh token"
                    );
                    self.end(id).await
                }
                Err(error) => self.cannot_ask(id, session, &error.to_string()).await,
            };
        }

        let now = SystemTime::now();
        let access = session
            .tokens
            .access
            .as_deref()
            .filter(|_| session.tokens.access_expires.is_none_or(|e| now < e));
        let Some(access) = access else {
            return self
                .cannot_ask(
                    id,
                    session,
                    "no refresh token, and the access token has expired",
                )
                .await;
        };
        match provider.userinfo(access, subject).await {
            Ok(claims) => self.apply(id, session, claims, None, None).await,
            Err(error) => self.cannot_ask(id, session, &error.to_string()).await,
        }
    }

    /// Takes the provider's current word on the user.
    async fn apply(
        &self,
        id: SessionId,
        session: &Session,
        mut claims: Claims,
        grant: Option<Grant>,
        id_token: Option<String>,
    ) -> Outcome {
        let old = &session.identity;
        if claims.preferred_username.is_none() && claims.email.is_none() {
            claims.preferred_username = Some(old.user.clone());
        }
        if claims.email.is_none() {
            claims.email = old.email.clone();
        }
        let identity = match self.inner.policy.admit(claims) {
            Ok(identity) => identity,
            Err(refusal) => {
                tracing::info!(target: "billguard::auth", outcome = "session_ended", reason = "no_longer_admitted", %refusal, "Session ended at refresh");
                return self.end(id).await;
            }
        };
        if identity.role != old.role {
            tracing::info!(
                target: "billguard::auth",
                outcome = "role_changed",
                user = %identity.user,
                from = ?old.role,
                to = ?identity.role,
                "Role changed after asking the provider"
            );
        }

        let now = SystemTime::now();
        let tokens = match grant {
            Some(grant) => tokens_of(
                grant,
                session.tokens.refresh.clone(),
                self.inner.keep_access,
                now,
            ),
            None => session.tokens.clone(),
        };
        let renewed = Session {
            identity,
            id_token: id_token.or_else(|| session.id_token.clone()),
            sid: session.sid.clone(),
            tokens,
            created: session.created,
            expires: session.expires,
            checked: now,
        };
        self.save(id, renewed).await
    }

    /// The provider could not be asked: carry on as `user`, try again soon.
    async fn cannot_ask(&self, id: SessionId, session: &Session, reason: &str) -> Outcome {
        let now = SystemTime::now();
        let interval = self.inner.interval;
        let role_stale = now >= session.checked + interval;
        tracing::warn!(
            target: "billguard::auth",
            outcome = "refresh_failed",
            user = %session.identity.user,
            reason,
            demoted = role_stale && session.identity.role == Role::Admin,
            "Could not ask the provider about a session; trying again later"
        );
        let mut next = if role_stale {
            demoted(session)
        } else {
            session.clone()
        };
        let retry = RETRY.min(interval);
        if session.tokens.refresh.is_some() {
            // Try again in `retry`, not on every request.
            next.checked = now + retry - interval;
            next.tokens.access_expires = Some(now + retry + EARLY);
        } else {
            // Nothing to ask with until the next login.
            next.checked = now;
        }
        self.save(id, next).await
    }

    async fn save(&self, id: SessionId, session: Session) -> Outcome {
        let session = Arc::new(session);
        match self
            .inner
            .store
            .replace(&id, Session::clone(&session))
            .await
        {
            Ok(()) => Outcome::Current(session),
            Err(_) => Outcome::Unavailable,
        }
    }

    async fn end(&self, id: SessionId) -> Outcome {
        match self.inner.store.end(&id).await {
            Ok(()) => Outcome::Ended,
            Err(_) => Outcome::Unavailable,
        }
    }
}

/// Tokens after a grant: a refresh token replaces the old one (Authentik
/// rotates them); the access token is kept only without a refresh token,
/// or when it is forwarded to the app (`keep_access`).
pub fn tokens_of(
    grant: Grant,
    old_refresh: Option<String>,
    keep_access: bool,
    now: SystemTime,
) -> Tokens {
    let refresh = grant.refresh_token.or(old_refresh);
    Tokens {
        access: (keep_access || refresh.is_none()).then_some(grant.access_token),
        access_expires: grant.expires_in.map(|d| now + d),
        refresh,
    }
}

/// The session as a regular user.
fn demoted(session: &Session) -> Session {
    let mut next = session.clone();
    next.identity.role = Role::User;
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    const INTERVAL: Duration = Duration::from_secs(300);

    fn session(checked_ago: u64, refresh: bool, expires_in: Option<i64>) -> (Session, SystemTime) {
        let now = SystemTime::now();
        let identity = Identity {
            subject: "s".into(),
            user: "u".into(),
            email: None,
            groups: vec![],
            role: Role::Admin,
        };
        let access_expires = expires_in.map(|s| {
            if s >= 0 {
                now + Duration::from_secs(s as u64)
            } else {
                now - Duration::from_secs((-s) as u64)
            }
        });
        let s = Session {
            identity,
            id_token: None,
            sid: None,
            tokens: Tokens {
                refresh: refresh.then(|| "rt".to_owned()),
                access: None,
                access_expires,
            },
            created: now,
            expires: now + Duration::from_secs(3600),
            checked: now - Duration::from_secs(checked_ago),
        };
        (s, now)
    }

    #[test]
    fn refresh_is_due_by_role_age_and_token_expiry() {
        let cases = [
            // checked ago, refresh token, access token expires in, due
            (0, true, Some(3600), Due::No),
            (0, true, Some(30), Due::Background),
            (0, true, Some(0), Due::Now),
            (0, true, Some(-5), Due::Now),
            (300, true, Some(3600), Due::Now),
            (299, false, Some(-5), Due::No),
            (300, false, None, Due::Now),
            (0, false, Some(30), Due::No),
        ];
        for (ago, refresh, expires, want) in cases {
            let (s, now) = session(ago, refresh, expires);
            assert_eq!(due(&s, now, INTERVAL), want, "{ago} {refresh} {expires:?}");
        }
    }

    #[test]
    fn a_demoted_session_is_a_regular_user_with_matching_headers() {
        let (s, _) = session(0, true, None);
        let d = demoted(&s);
        assert_eq!(d.identity.role, Role::User);
        assert_eq!(Arc::new(d).headers().role, "user");
    }

    #[test]
    fn header_values_made_for_a_session_never_reach_its_replacement() {
        let (s, _) = session(0, true, None);
        let admin = Arc::new(s);
        assert_eq!(admin.headers().role, "admin");
        // The same session again, now from the values made before.
        assert_eq!(admin.headers().role, "admin");
        let user = Arc::new(demoted(&admin));
        assert_eq!(user.headers().role, "user");
        assert_eq!(admin.headers().role, "admin");
        assert_eq!(user.headers().role, "user");

        // More live sessions than a thread keeps values for, admins and
        // users in turn: sessions that share a place must not share values.
        let many: Vec<Arc<Session>> = (0..300)
            .map(|i| {
                if i % 2 == 0 {
                    admin.clone()
                } else {
                    Arc::new(demoted(&admin))
                }
            })
            .map(|s| Arc::new((*s).clone()))
            .collect();
        for _ in 0..2 {
            for s in &many {
                let role = if s.identity.role == Role::Admin {
                    "admin"
                } else {
                    "user"
                };
                assert_eq!(s.headers().role, role);
            }
        }
    }

    #[test]
    fn the_access_token_is_kept_only_without_a_refresh_token() {
        let now = SystemTime::now();
        let grant = |rt: Option<&str>| Grant {
            access_token: "at".into(),
            refresh_token: rt.map(str::to_owned),
            expires_in: Some(Duration::from_secs(300)),
        };
        let t = tokens_of(grant(Some("new")), Some("old".into()), false, now);
        assert_eq!(t.refresh.as_deref(), Some("new"));
        assert!(t.access.is_none());
        let t = tokens_of(grant(Some("new")), None, true, now);
        assert_eq!(t.access.as_deref(), Some("at"), "kept to be forwarded");
        let t = tokens_of(grant(None), Some("old".into()), false, now);
        assert_eq!(t.refresh.as_deref(), Some("old"), "kept when not rotated");
        let t = tokens_of(grant(None), None, false, now);
        assert_eq!(t.access.as_deref(), Some("at"));
        assert_eq!(t.access_expires, Some(now + Duration::from_secs(300)));
    }
}
