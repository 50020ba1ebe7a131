//! OpenID Connect Back-Channel Logout: the provider ends sessions server to server, on every
//! replica; forged, replayed and malformed logout tokens change nothing.

use std::time::Duration;

use reqwest::Method;

use crate::replicas::redis_stack;
use crate::support::browser::{Browser, Resp};
use crate::support::provider::LogoutSpec;
use crate::support::redis::RedisServer;
use crate::support::stack::Stack;

const PATH: &str = "/_billguard/backchannel_logout";

async fn post_logout(browser: &Browser, url: &str, token: &str) -> Resp {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish();
    // The provider's request carries no cookie; the test browser's jar must not help.
    browser
        .request(
            Method::POST,
            url,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", "x=y"),
            ],
            body,
        )
        .await
}

async fn whoami(browser: &Browser, url: &str) -> u16 {
    browser.fetch(url).await.status.as_u16()
}

#[tokio::test]
async fn a_logout_token_ends_the_session_on_both_replicas() {
    let redis = RedisServer::start().await;
    // No local cache, so the other replica sees the logout at once rather than within 2s.
    let stack = redis_stack(&redis, "0s").await;
    let replica = stack.replica().await;
    replica.proxy.wait_sessions(true).await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    assert_eq!(
        whoami(&browser, &replica.url("/_billguard/whoami")).await,
        200
    );

    let token = stack.provider.logout_token(LogoutSpec {
        sid: stack.provider.sid_of("alice"),
        sub: Some(stack.provider.sub_of("alice")),
        ..LogoutSpec::default()
    });
    let res = post_logout(&browser, &replica.url(PATH), &token).await;

    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(
        whoami(&browser, &stack.url("/_billguard/whoami")).await,
        401
    );
    assert_eq!(
        whoami(&browser, &replica.url("/_billguard/whoami")).await,
        401
    );
}

#[tokio::test]
async fn a_logout_token_with_only_sub_ends_every_session_of_the_user() {
    let stack = Stack::start().await;
    let (first, second, bob) = (Browser::new(), Browser::new(), Browser::new());
    stack.login(&first, "alice", "/").await;
    stack.login(&second, "alice", "/").await;
    stack.login(&bob, "bob", "/").await;

    let token = stack.provider.logout_token(LogoutSpec {
        sub: Some(stack.provider.sub_of("alice")),
        ..LogoutSpec::default()
    });
    let res = post_logout(&first, &stack.url(PATH), &token).await;

    assert_eq!(res.status, 200, "{}", res.text());
    let me = stack.url("/_billguard/whoami");
    assert_eq!(whoami(&first, &me).await, 401);
    assert_eq!(whoami(&second, &me).await, 401);
    assert_eq!(whoami(&bob, &me).await, 200, "other users stay signed in");
}

#[tokio::test]
async fn forged_replayed_and_malformed_logout_tokens_are_refused() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    let provider = &stack.provider;
    let valid = || LogoutSpec {
        sid: provider.sid_of("alice"),
        ..LogoutSpec::default()
    };
    let url = stack.url(PATH);

    let bad = [
        (
            "forged",
            LogoutSpec {
                forged: true,
                ..valid()
            },
        ),
        (
            "nonce",
            LogoutSpec {
                with_nonce: true,
                ..valid()
            },
        ),
        (
            "no event",
            LogoutSpec {
                without_event: true,
                ..valid()
            },
        ),
        (
            "too old",
            LogoutSpec {
                issued_ago: Duration::from_secs(3600),
                ..valid()
            },
        ),
        (
            "other audience",
            LogoutSpec {
                audience: Some("another-client".into()),
                ..valid()
            },
        ),
        ("no sub, no sid", LogoutSpec::default()),
    ];
    for (what, spec) in bad {
        let res = post_logout(&browser, &url, &provider.logout_token(spec)).await;
        assert_eq!(res.status, 400, "{what}: {}", res.text());
        assert_eq!(res.json()["error"], "invalid_request", "{what}");
    }
    for junk in ["", "a.b.c", "not-a-jwt"] {
        let res = post_logout(&browser, &url, junk).await;
        assert_eq!(res.status, 400, "{junk:?}");
    }
    assert_eq!(
        whoami(&browser, &stack.url("/_billguard/whoami")).await,
        200
    );

    let once = provider.logout_token(LogoutSpec {
        jti: Some("jti-1".into()),
        ..valid()
    });
    assert_eq!(post_logout(&browser, &url, &once).await.status, 200);
    let replay = post_logout(&browser, &url, &once).await;
    assert_eq!(replay.status, 400);
    assert!(replay.text().contains("already used"), "{}", replay.text());
}

#[tokio::test]
async fn the_logout_endpoint_takes_only_a_form_post() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    let get = browser.fetch(&stack.url(PATH)).await;
    assert_eq!(get.status, 405);
    let json = browser
        .request(
            Method::POST,
            &stack.url(PATH),
            &[("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(json.status, 400);
}
