//! Several replicas sharing Redis, restarts, and Redis going away: the session store as
//! operators meet it.

use crate::support::browser::Browser;
use crate::support::redis::{PASSWORD, RedisServer};
use crate::support::stack::{Stack, StackOptions};

/// `[session]` lines for a Redis store; the password comes through its own key, as an
/// operator would pass it from a Kubernetes secret.
pub fn redis_toml(redis: &RedisServer, cache_ttl: &str) -> String {
    format!(
        "store = \"redis\"\nredis_url = \"{}\"\nredis_password = \"{PASSWORD}\"\nredis_cache_ttl = \"{cache_ttl}\"\n",
        redis.url()
    )
}

pub async fn redis_stack(redis: &RedisServer, cache_ttl: &str) -> Stack {
    let stack = Stack::with(StackOptions {
        session_toml: redis_toml(redis, cache_ttl),
        ..StackOptions::default()
    })
    .await;
    stack.proxy.wait_sessions(true).await;
    stack
}

#[tokio::test]
async fn a_session_made_on_one_replica_is_honoured_by_another() {
    let redis = RedisServer::start().await;
    let stack = redis_stack(&redis, "2s").await;
    let replica = stack.replica().await;
    replica.proxy.wait_sessions(true).await;
    let browser = Browser::new();

    stack.login(&browser, "alice", "/").await;

    let me = browser.fetch(&replica.url("/_billguard/whoami")).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["user"], "alice");
    assert_eq!(me.json()["role"], "admin");
    let app = browser.fetch(&replica.url("/bills")).await;
    assert_eq!(app.status, 200);
}

#[tokio::test]
async fn a_restart_keeps_the_session_with_redis() {
    let redis = RedisServer::start().await;
    let stack = redis_stack(&redis, "2s").await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;

    let stack = stack.restart().await;
    stack.proxy.wait_sessions(true).await;

    let me = browser.fetch(&stack.url("/_billguard/whoami")).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["user"], "alice");
}

#[tokio::test]
async fn a_restart_keeps_the_session_with_the_persistence_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessions.bin");
    let stack = Stack::with(StackOptions {
        session_toml: format!("persist_file = \"{}\"\n", file.display()),
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;

    let stack = stack.restart().await;

    let me = browser.fetch(&stack.url("/_billguard/whoami")).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["user"], "alice");
    assert!(!file.exists(), "the file is deleted once read");
}

#[tokio::test]
async fn a_damaged_persistence_file_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessions.bin");
    std::fs::write(&file, b"\x01not a sealed session file at all").unwrap();
    let stack = Stack::with(StackOptions {
        session_toml: format!("persist_file = \"{}\"\n", file.display()),
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    // Once the server answers, the file has been read (before the first accept).
    let me = browser.fetch(&stack.url("/_billguard/whoami")).await;
    assert_eq!(me.status, 401);
    assert!(!file.exists(), "the unusable file is removed");
    let nav = stack.login(&browser, "alice", "/").await;
    assert_eq!(nav.last.status, 200);
}

#[tokio::test]
async fn redis_down_gives_503_and_recovery_follows_its_return() {
    let mut redis = RedisServer::start().await;
    let stack = redis_stack(&redis, "2s").await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;

    redis.stop();
    stack.proxy.wait_sessions(false).await;

    let api = browser.fetch(&stack.url("/bills")).await;
    assert_eq!(api.status, 503);
    assert_eq!(api.json()["status"], 503);
    let page = browser.get(&stack.url("/bills")).await;
    assert_eq!(page.status, 503);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let ready = browser.fetch(&stack.url("/_billguard/ready")).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["sessions"], "unreachable");
    let me = browser.fetch(&stack.url("/_billguard/whoami")).await;
    assert_eq!(me.status, 503, "no 401: the session may well exist");

    redis.restart().await;
    stack.proxy.wait_sessions(true).await;

    let ready = browser.fetch(&stack.url("/_billguard/ready")).await;
    assert_eq!(ready.status, 200);
    let api = browser.fetch(&stack.url("/bills")).await;
    assert_eq!(
        api.status, 200,
        "the session kept in Redis is honoured again"
    );
}

#[tokio::test]
async fn redis_unreachable_at_start_is_not_ready_and_refuses_logins() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    redis.stop();
    let stack = Stack::with(StackOptions {
        session_toml: format!(
            "store = \"redis\"\nredis_url = \"{url}\"\nredis_password = \"{PASSWORD}\"\n"
        ),
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();

    let ready = browser.fetch(&stack.url("/_billguard/ready")).await;
    assert_eq!(ready.status, 503);
    let nav = stack.login(&browser, "alice", "/").await;
    assert_eq!(nav.last.status, 503, "{}", nav.last.text());
}

#[tokio::test]
async fn the_id_token_waits_for_sign_out_in_its_own_cookie() {
    let redis = RedisServer::start().await;
    let stack = redis_stack(&redis, "2s").await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;

    let hint = browser
        .cookie_set_by("billguard_hint")
        .expect("a hint cookie");
    assert_eq!(hint.path.as_deref(), Some("/_billguard/sign_out"));
    assert!(hint.http_only);
    assert_eq!(hint.value.split('.').count(), 1, "encrypted, not the JWT");
    // Nothing in Redis holds the ID token.
    let keys = redis.command("KEYS bg:sess:*").await;
    let key = keys.lines().find(|l| l.starts_with("bg:sess:")).unwrap();
    let value = redis.command(&format!("STRLEN {key}")).await;
    let len: usize = value.trim().trim_start_matches(':').parse().unwrap();
    assert!(len < 600, "a session in Redis is small: {len} bytes");

    let nav = browser.get(&stack.url("/_billguard/sign_out")).await;
    let location = nav.location_url().expect("to the provider");
    let hint = location
        .query_pairs()
        .find(|(k, _)| k == "id_token_hint")
        .expect("id_token_hint");
    assert_eq!(hint.1.split('.').count(), 3);
}
