//! The admin panel: admins only, settings with sources and masked secrets,
//! the provider test, ending a user's sessions, CSRF on every POST.

use reqwest::Method;

use crate::support::browser::Browser;
use crate::support::local::{LocalUser, hidden_field, local_table, users_file};
use crate::support::stack::{Stack, StackOptions};

const ADMIN: &str = "/_billguard/admin";

async fn post(stack: &Stack, browser: &Browser, fields: &[(&str, &str)]) -> (u16, String) {
    let nav = browser.submit(&stack.url(ADMIN), fields).await;
    (nav.last.status.as_u16(), nav.last.text())
}

#[tokio::test]
async fn only_admins_see_the_panel() {
    let stack = Stack::start().await;

    let nobody = Browser::new();
    let res = nobody.get(&stack.url(ADMIN)).await;
    assert_eq!(res.status, 401);

    let bob = Browser::new();
    stack.login(&bob, "bob", "/").await;
    let res = bob.get(&stack.url(ADMIN)).await;
    assert_eq!(res.status, 403);
    assert!(!res.text().contains("Effective settings"));
    let (status, _) = post(
        &stack,
        &bob,
        &[("action", "end_sessions"), ("user", "alice")],
    )
    .await;
    assert_eq!(status, 403);

    let alice = Browser::new();
    stack.login(&alice, "alice", "/").await;
    let res = alice.get(&stack.url(ADMIN)).await;
    assert_eq!(res.status, 200);
    assert!(res.text().contains("Signed in as <strong>alice</strong>"));
}

#[tokio::test]
async fn the_panel_shows_settings_with_sources_and_never_a_secret() {
    let stack = Stack::start().await;
    let alice = Browser::new();
    stack.login(&alice, "alice", "/").await;

    let html = alice.get(&stack.url(ADMIN)).await.text();
    let file = format!("file {}", stack.config_path().display());
    assert!(
        html.contains("<code>oidc.client_secret</code></td><td>********</td>"),
        "{html}"
    );
    assert!(!html.contains(&stack.provider.client_secret()), "{html}");
    assert!(
        !html.contains("a-test-secret-that-is-long-enough"),
        "{html}"
    );
    assert!(
        html.contains(&format!(
            "<code>oidc.client_id</code></td><td>billguard-test</td><td>{file}</td>"
        )),
        "{html}"
    );
    assert!(
        html.contains("<code>oidc.groups_claim</code></td><td>groups</td><td>default</td>"),
        "{html}"
    );
    assert!(
        html.contains("Local login (username and password): <strong>off</strong>"),
        "{html}"
    );
    assert!(
        html.contains("Active sessions: <strong>1</strong>"),
        "{html}"
    );
}

#[tokio::test]
async fn the_provider_test_runs_from_the_panel() {
    let stack = Stack::start().await;
    let alice = Browser::new();
    stack.login(&alice, "alice", "/").await;
    let html = alice.get(&stack.url(ADMIN)).await.text();
    let csrf = hidden_field(&html, "csrf").unwrap();

    let (status, html) = post(&stack, &alice, &[("csrf", &csrf), ("action", "check")]).await;
    assert_eq!(status, 200);
    assert!(html.contains("<td>pass</td><td>credentials</td>"), "{html}");
    assert!(!html.contains("<td>FAIL</td>"), "{html}");

    // Without the token nothing runs.
    let (status, html) = post(&stack, &alice, &[("action", "check")]).await;
    assert_eq!(status, 403);
    assert!(!html.contains("credentials"));
}

#[tokio::test]
async fn an_admin_ends_every_session_of_a_user() {
    let users = users_file(&[LocalUser {
        username: "bob@example.com",
        password: Some("bob's passphrase"),
        role: "user",
        email: None,
    }]);
    let stack = Stack::with(StackOptions {
        extra_toml: local_table(users.path(), true),
        ..StackOptions::default()
    })
    .await;
    let (bob1, bob2, alice) = (Browser::new(), Browser::new(), Browser::new());
    stack.provider.login_as("bob");
    bob1.navigate(&stack.url("/_billguard/start?rd=%2F")).await;
    crate::support::local::sign_in(&stack, &bob2, "bob@example.com", "bob's passphrase", "/").await;
    stack.provider.login_as("alice");
    alice.navigate(&stack.url("/_billguard/start?rd=%2F")).await;
    for b in [&bob1, &bob2, &alice] {
        assert_eq!(b.fetch(&stack.url("/_billguard/whoami")).await.status, 200);
    }

    let html = alice.get(&stack.url(ADMIN)).await.text();
    assert!(
        html.contains("Active sessions: <strong>3</strong>"),
        "{html}"
    );
    let csrf = hidden_field(&html, "csrf").unwrap();
    let (status, html) = post(
        &stack,
        &alice,
        &[
            ("csrf", &csrf),
            ("action", "end_sessions"),
            ("user", "bob@example.com"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Ended 2 session(s) of `bob@example.com`."),
        "{html}"
    );
    assert!(
        html.contains("Active sessions: <strong>1</strong>"),
        "{html}"
    );

    for b in [&bob1, &bob2] {
        assert_eq!(b.fetch(&stack.url("/_billguard/whoami")).await.status, 401);
    }
    assert_eq!(
        alice.fetch(&stack.url("/_billguard/whoami")).await.status,
        200
    );

    // A token minted for another session does not work.
    let bob3 = Browser::new();
    stack.provider.login_as("bob");
    bob3.navigate(&stack.url("/_billguard/start?rd=%2F")).await;
    let forged = alice
        .request(
            Method::POST,
            &stack.url(ADMIN),
            &[("content-type", "application/x-www-form-urlencoded")],
            "action=end_sessions&user=alice&csrf=AAAA",
        )
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(
        alice.fetch(&stack.url("/_billguard/whoami")).await.status,
        200
    );
}
