//! One conformance suite for the session store, run against both backends: the in-memory
//! moka store and Redis (a real `redis-server`, started here).

use std::sync::Arc;
use std::time::Duration;

use billguard::config::{self, Secret};
use billguard::identity::{Identity, Role};
use billguard::session::{NewSession, Store, Tokens};

use crate::support::redis::{PASSWORD, RedisServer};
use crate::support::stack::trace_init;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-the-key";

fn settings(store: config::StoreKind) -> config::Session {
    config::Session {
        ttl: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(600),
        max_sessions: 1000,
        secret: Secret::new(SECRET.into()),
        secret_generated: false,
        secure_cookies: true,
        store,
        persist_file: None,
        refresh_interval: Duration::from_secs(300),
    }
}

fn memory() -> Store {
    Store::new(&settings(config::StoreKind::Memory)).expect("a memory store")
}

async fn redis(server: &RedisServer, cache_ttl: Duration) -> Store {
    let store = Store::new(&settings(config::StoreKind::Redis(config::Redis {
        url: Secret::new(server.url()),
        password: Some(Secret::new(PASSWORD.into())),
        cache_ttl,
    })))
    .expect("a redis store");
    store.wait_available(true).await;
    store
}

fn person(sub: &str, role: Role) -> Identity {
    Identity {
        subject: sub.into(),
        user: format!("{sub}-name"),
        email: Some(format!("{sub}@example.com")),
        groups: vec!["staff".into()],
        role,
    }
}

fn new(sub: &str, sid: Option<&str>) -> NewSession {
    NewSession {
        identity: person(sub, Role::Admin),
        id_token: Some("header.payload.signature".into()),
        sid: sid.map(str::to_owned),
        tokens: Tokens {
            refresh: Some("refresh-token".into()),
            access: None,
            access_expires: None,
        },
    }
}

/// Every behaviour a backend must have. `a` and `b` share their data (two handles on one
/// Redis, or the same memory store twice).
async fn conformance(a: Store, b: Store) {
    // Opened on one handle, found on the other, with everything it was opened with.
    let id = a.open(new("alice", Some("sid-1"))).await.expect("open");
    let found = b.load(&id).await.expect("load").expect("the session");
    assert_eq!(found.identity, person("alice", Role::Admin));
    assert_eq!(found.sid.as_deref(), Some("sid-1"));
    assert_eq!(found.tokens.refresh.as_deref(), Some("refresh-token"));
    assert_eq!(found.id_token.as_deref(), Some("header.payload.signature"));
    assert_eq!(found.headers().role, "admin");

    // Every login gets its own id.
    let again = a.open(new("alice", Some("sid-2"))).await.expect("open");
    assert_ne!(id, again);
    let bob = a.open(new("bob", None)).await.expect("open");
    assert_eq!(a.try_count().await.expect("count"), 3);

    // A replaced session is what the other handle reads next.
    let mut changed = (*found).clone();
    changed.identity.role = Role::User;
    a.replace(&id, changed).await.expect("replace");
    let reread = b.load_fresh(&id).await.expect("load").expect("the session");
    assert_eq!(reread.identity.role, Role::User);

    // Ending by sid ends exactly that provider session.
    assert_eq!(b.remove_sid("sid-1").await.expect("by sid"), 1);
    assert!(a.load_fresh(&id).await.expect("load").is_none());
    assert!(a.load_fresh(&again).await.expect("load").is_some());

    // Ending by subject ends every session of that user, and nobody else's.
    let third = a.open(new("alice", None)).await.expect("open");
    assert_eq!(b.remove_subject("alice").await.expect("by sub"), 2);
    for gone in [again, third] {
        assert!(a.load_fresh(&gone).await.expect("load").is_none());
    }
    assert!(a.load_fresh(&bob).await.expect("load").is_some());
    assert_eq!(b.remove_subject("nobody").await.expect("by sub"), 0);

    // Ending by user name (the admin panel's "end sessions").
    let carol = a.open(new("carol", None)).await.expect("open");
    assert_eq!(b.remove_user("carol-name").await.expect("by user"), 1);
    assert!(a.load_fresh(&carol).await.expect("load").is_none());

    // Ending one session.
    b.end(&bob).await.expect("end");
    assert!(a.load_fresh(&bob).await.expect("load").is_none());
    assert_eq!(a.try_count().await.expect("count"), 0);

    // A one-time token id is accepted once, on any handle.
    assert!(
        a.first_use("jti", "t-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !b.first_use("jti", "t-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        b.first_use("jti", "t-2", Duration::from_secs(60))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn memory_store_conforms() {
    trace_init();
    let store = memory();
    conformance(store.clone(), store).await;
}

#[tokio::test]
async fn redis_store_conforms() {
    trace_init();
    let server = RedisServer::start().await;
    // Without local caches, so the second handle sees every change at once.
    let a = redis(&server, Duration::ZERO).await;
    let b = redis(&server, Duration::ZERO).await;
    conformance(a, b).await;
}

#[tokio::test]
async fn redis_store_with_local_cache_conforms_on_one_handle() {
    trace_init();
    let server = RedisServer::start().await;
    let a = redis(&server, Duration::from_secs(60)).await;
    conformance(a.clone(), a).await;
}

#[tokio::test]
async fn redis_holds_only_sealed_values_with_a_ttl_and_no_names() {
    trace_init();
    let server = RedisServer::start().await;
    let store = redis(&server, Duration::ZERO).await;
    store.open(new("alice", Some("sid-1"))).await.expect("open");

    let keys = server.command("KEYS *").await;
    assert!(!keys.contains("alice") && !keys.contains("sid-1"), "{keys}");
    let session_key = keys
        .lines()
        .find(|l| l.starts_with("bg:sess:"))
        .unwrap_or_else(|| panic!("no session key in {keys}"))
        .to_owned();
    let value = server.command(&format!("GET {session_key}")).await;
    for secret in ["alice", "refresh-token", "header.payload", "staff"] {
        assert!(!value.contains(secret), "{secret} readable in {value:?}");
    }
    let ttl = server.command(&format!("PTTL {session_key}")).await;
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().expect("a TTL");
    assert!(
        ttl > 0 && ttl <= 600_000,
        "TTL {ttl} ms is not within the idle timeout"
    );
}

#[tokio::test]
async fn a_value_sealed_with_another_secret_is_no_session() {
    trace_init();
    let server = RedisServer::start().await;
    let store = redis(&server, Duration::ZERO).await;
    let id = store.open(new("alice", None)).await.expect("open");

    let mut other = settings(config::StoreKind::Redis(config::Redis {
        url: Secret::new(server.url()),
        password: Some(Secret::new(PASSWORD.into())),
        cache_ttl: Duration::ZERO,
    }));
    other.secret = Secret::new("another-secret-that-is-long-enough-for-the-key".into());
    let other = Store::new(&other).expect("a redis store");
    other.wait_available(true).await;
    // Another secret names keys differently too: the session is simply not there.
    assert!(other.load(&id).await.expect("load").is_none());
}

#[tokio::test]
async fn the_memory_store_evicts_the_least_recently_used_past_max_sessions() {
    trace_init();
    let mut cfg = settings(config::StoreKind::Memory);
    cfg.max_sessions = 3;
    let store = Store::new(&cfg).expect("a memory store");
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(store.open(new(&format!("u{n}"), None)).await.unwrap());
        store.housekeeping().await;
    }
    // Use the oldest, so the second is now the least recently used.
    assert!(store.load(&ids[0]).await.unwrap().is_some());
    store.housekeeping().await;
    let newest = store.open(new("u3", None)).await.unwrap();
    store.housekeeping().await;

    assert_eq!(store.try_count().await.unwrap(), 3);
    assert!(
        store.load(&newest).await.unwrap().is_some(),
        "a new login is never refused"
    );
    assert!(store.load(&ids[0]).await.unwrap().is_some());
    assert!(
        store.load(&ids[1]).await.unwrap().is_none(),
        "the LRU one goes"
    );
}

#[tokio::test]
async fn a_store_handle_is_shareable_across_tasks() {
    trace_init();
    let store = Arc::new(memory());
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.open(new(&format!("u{n}"), None)).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.try_count().await.unwrap(), 20);
}
