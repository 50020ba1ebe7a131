//! Cookie and id handling of the session store; the behaviour of both
//! backends is checked by the store conformance suite in the integration
//! tests.

use std::time::Instant;

use super::*;
use crate::identity::Role;

fn store(ttl: Duration, idle: Duration) -> Store {
    bounded(ttl, idle, 100)
}

fn bounded(ttl: Duration, idle: Duration, max_sessions: u64) -> Store {
    Store::new(&config::Session {
        ttl,
        idle_timeout: idle,
        max_sessions,
        secret: config::Secret::new("x".repeat(32)),
        secret_generated: false,
        secure_cookies: true,
        store: config::StoreKind::Memory,
        persist_file: None,
        refresh_interval: Duration::from_secs(300),
    })
    .expect("a memory store")
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

/// The request headers of a browser holding the session cookie for `id`.
fn cookie_for(id: &SessionId) -> HeaderMap {
    cookie_headers(&format!("__Host-billguard_session={id}"))
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
    let h = cookie_for(&id);
    // Expiry is checked on every read; wait for the deadline to pass
    // rather than sleeping a fixed time.
    let deadline = Instant::now() + Duration::from_millis(1);
    while Instant::now() <= deadline {
        tokio::task::yield_now().await;
    }
    assert!(s.lookup(&h).await.is_none());
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

#[tokio::test]
async fn requests_in_a_row_share_one_decoding_and_see_a_replacement_at_once() {
    let s = store(Duration::from_secs(60), Duration::from_secs(60));
    let id = s.create(who(), None).await;
    let h = cookie_for(&id);
    let (_, first) = s.lookup(&h).await.expect("session");
    let (_, again) = s.lookup(&h).await.expect("session");
    assert!(
        Arc::ptr_eq(&first, &again),
        "decoded again for the same bytes"
    );

    let mut changed = (*first).clone();
    changed.identity.user = "bob".into();
    s.replace(&id, changed).await.expect("replaced");
    let (_, after) = s.lookup(&h).await.expect("session");
    assert_eq!(after.identity.user, "bob");

    s.remove(&id).await;
    assert!(s.lookup(&h).await.is_none());
}

#[tokio::test]
async fn a_session_unused_for_the_idle_timeout_ends_and_use_keeps_it_alive() {
    let s = store(Duration::from_secs(60), Duration::from_millis(30));
    let kept = s.create(who(), None).await;
    let idle = s.create(who(), None).await;
    let deadline = Instant::now() + Duration::from_millis(60);
    while Instant::now() <= deadline {
        assert!(
            s.lookup(&cookie_for(&kept)).await.is_some(),
            "in use, never idle"
        );
        tokio::task::yield_now().await;
    }
    assert!(s.lookup(&cookie_for(&idle)).await.is_none());
    assert!(s.lookup(&cookie_for(&kept)).await.is_some());
    s.housekeeping().await;
    assert_eq!(s.try_count().await.unwrap(), 1, "the idle one is gone");
}

#[tokio::test]
async fn past_the_bound_on_several_shards_the_oldest_go_and_recent_ones_stay() {
    let max = 10_000;
    let s = bounded(Duration::from_secs(60), Duration::from_secs(60), max);
    let mut ids = Vec::new();
    for _ in 0..max {
        ids.push(s.create(who(), None).await);
    }
    // The first hundred are used again: now the most recently used.
    for id in &ids[..100] {
        assert!(s.lookup(&cookie_for(id)).await.is_some());
    }
    let mut newer = Vec::new();
    for _ in 0..200 {
        newer.push(s.create(who(), None).await);
    }
    assert_eq!(s.try_count().await.unwrap(), max);
    for id in ids[..100].iter().chain(&newer) {
        assert!(
            s.lookup(&cookie_for(id)).await.is_some(),
            "recently used or new"
        );
    }
    let mut gone = 0;
    for id in &ids[100..300] {
        gone += usize::from(s.lookup(&cookie_for(id)).await.is_none());
    }
    assert!(gone >= 150, "evicted from the oldest: {gone} of 200");
}
