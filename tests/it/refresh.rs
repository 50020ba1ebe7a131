//! Sessions follow the provider: refresh tokens, changed groups, refused refreshes, and one
//! refresh for many concurrent requests, on one replica and across two.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::replicas::redis_toml;
use crate::support::browser::Browser;
use crate::support::redis::RedisServer;
use crate::support::stack::{Stack, StackOptions, seen};

const OFFLINE: &str = "openid email profile groups offline_access";

async fn offline_stack(session_toml: String) -> Stack {
    let stack = Stack::with(StackOptions {
        scopes: Some(OFFLINE.into()),
        session_toml,
        ..StackOptions::default()
    })
    .await;
    stack.proxy.wait_sessions(true).await;
    stack
}

/// Signs alice in with access tokens that are expired when issued, so every request must
/// refresh; tokens issued after this returns live an hour. Returns the refreshes so far (the
/// landing page after the login already needed one).
async fn login_with_expired_token(stack: &Stack, browser: &Browser) -> usize {
    stack.provider.set_access_token_lifetime(Duration::ZERO);
    let nav = stack.login(browser, "alice", "/").await;
    assert_eq!(seen(&nav.last.json(), "x-forwarded-role"), ["admin"]);
    stack
        .provider
        .set_access_token_lifetime(Duration::from_secs(3600));
    stack.provider.refreshes()
}

#[tokio::test]
async fn offline_access_asks_for_consent() {
    let stack = offline_stack(String::new()).await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    let params = stack.provider.last_authorize().unwrap();
    assert_eq!(params["prompt"], "consent");
}

#[tokio::test]
async fn a_refresh_takes_the_new_groups_and_demotes_the_admin() {
    let stack = offline_stack(String::new()).await;
    let browser = Browser::new();
    let before = login_with_expired_token(&stack, &browser).await;

    stack.provider.set_groups("alice", json!(["staff"]));
    let app = browser.fetch(&stack.url("/bills")).await;

    assert_eq!(app.status, 200);
    assert_eq!(seen(&app.json(), "x-forwarded-role"), ["user"]);
    assert_eq!(seen(&app.json(), "x-forwarded-groups"), ["staff"]);
    assert_eq!(stack.provider.refreshes(), before + 1);
    // The new token is good for an hour: no refresh on the next request.
    let me = browser.fetch(&stack.url("/_billguard/whoami")).await;
    assert_eq!(me.json()["role"], "user");
    assert_eq!(stack.provider.refreshes(), before + 1);
}

#[tokio::test]
async fn a_refused_refresh_ends_the_session() {
    let stack = offline_stack(String::new()).await;
    let browser = Browser::new();
    login_with_expired_token(&stack, &browser).await;

    stack.provider.revoke_refresh_tokens();
    let app = browser.fetch(&stack.url("/bills")).await;

    assert_eq!(app.status, 401);
    let again = browser.fetch(&stack.url("/_billguard/whoami")).await;
    assert_eq!(
        again.status, 401,
        "the session is gone, not just refused once"
    );
}

#[tokio::test]
async fn an_unreachable_provider_keeps_the_session_and_is_not_asked_on_every_request() {
    let stack = offline_stack(String::new()).await;
    let browser = Browser::new();
    let before = login_with_expired_token(&stack, &browser).await;

    stack
        .provider
        .misbehave(crate::support::provider::Misbehave::Unavailable);
    let app = browser.fetch(&stack.url("/bills")).await;
    // The role was checked within the interval, so it stands; past the interval it would
    // fall back to user (see refresh::tests).
    assert_eq!(app.status, 200);
    assert_eq!(seen(&app.json(), "x-forwarded-role"), ["admin"]);

    stack.provider.reset();
    let again = browser.fetch(&stack.url("/bills")).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        stack.provider.refreshes(),
        before,
        "retried later, not at once"
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_refresh() {
    let stack = offline_stack(String::new()).await;
    let browser = Browser::new();
    let before = login_with_expired_token(&stack, &browser).await;
    stack.provider.set_groups("alice", json!(["staff"]));

    let url = stack.url("/bills");
    let answers = join_all((0..12).map(|_| browser.fetch(&url))).await;

    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(seen(&answer.json(), "x-forwarded-role"), ["user"]);
    }
    assert_eq!(
        stack.provider.refreshes(),
        before + 1,
        "Authentik rotates refresh tokens"
    );
}

#[tokio::test]
async fn concurrent_requests_on_two_replicas_share_one_refresh() {
    let redis = RedisServer::start().await;
    let stack = offline_stack(redis_toml(&redis, "2s")).await;
    let replica = stack.replica().await;
    replica.proxy.wait_sessions(true).await;
    let browser = Browser::new();
    let before = login_with_expired_token(&stack, &browser).await;
    stack.provider.set_groups("alice", json!(["staff"]));

    let urls: Vec<String> = (0..12)
        .map(|n| {
            if n % 2 == 0 {
                stack.url("/bills")
            } else {
                replica.url("/bills")
            }
        })
        .collect();
    let answers = join_all(urls.iter().map(|u| browser.fetch(u))).await;

    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(seen(&answer.json(), "x-forwarded-role"), ["user"]);
    }
    assert_eq!(
        stack.provider.refreshes(),
        before + 1,
        "one refresh across both replicas"
    );
}

#[tokio::test]
async fn without_a_refresh_token_nothing_is_refreshed() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    for _ in 0..3 {
        let me = browser.fetch(&stack.url("/_billguard/whoami")).await;
        assert_eq!(me.json()["role"], "admin");
    }
    assert_eq!(stack.provider.refreshes(), 0);
}
