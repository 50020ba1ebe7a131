//! Signing in and out: the happy paths, the return path, several tabs.

use serde_json::json;

use crate::support::browser::Browser;
use crate::support::provider::{AuthMethod, Misbehave, ProviderOptions, User};
use crate::support::stack::{ADMIN_GROUP, CALLBACK_PATH, Stack, StackOptions, seen};

#[tokio::test]
async fn admin_signs_in_and_lands_on_the_first_page_with_admin_role() {
    let stack = Stack::start().await;
    let browser = Browser::new();

    let nav = stack.login(&browser, "alice", "/bills?month=2026-12").await;

    // browser -> billguard (302) -> provider (302) -> callback (302) -> app
    assert_eq!(nav.hops.len(), 3, "{:?}", nav.urls());
    assert!(
        nav.hops[0]
            .location()
            .unwrap()
            .starts_with(&stack.provider.url())
    );
    assert_eq!(nav.hops[2].url.path(), CALLBACK_PATH);
    assert_eq!(nav.hops[2].location(), Some("/bills?month=2026-12"));
    assert_eq!(nav.last.status, 200);
    let echo = nav.last.json();
    assert_eq!(echo["path"], "/bills?month=2026-12");
    assert_eq!(seen(&echo, "x-forwarded-user"), ["alice"]);
    assert_eq!(seen(&echo, "x-forwarded-email"), ["alice@example.com"]);
    assert_eq!(
        seen(&echo, "x-forwarded-groups"),
        [format!("{ADMIN_GROUP},staff")]
    );
    assert_eq!(seen(&echo, "x-forwarded-role"), ["admin"]);
}

#[tokio::test]
async fn authorization_request_carries_state_nonce_pkce_scopes_and_redirect_uri() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;

    let params = stack
        .provider
        .last_authorize()
        .expect("an authorization request");
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], stack.provider.client_id());
    assert_eq!(params["redirect_uri"], stack.url(CALLBACK_PATH));
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["code_challenge"].len(), 43);
    assert!(params["state"].len() >= 22);
    assert!(params["nonce"].len() >= 22);
    let scopes: Vec<&str> = params["scope"].split(' ').collect();
    for scope in ["openid", "email", "profile", "groups"] {
        assert!(
            scopes.contains(&scope),
            "scope {scope} missing from {scopes:?}"
        );
    }
}

#[tokio::test]
async fn user_outside_the_admin_group_gets_user_role() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    let nav = stack.login(&browser, "sub-bob", "/").await;
    let echo = nav.last.json();
    assert_eq!(seen(&echo, "x-forwarded-role"), ["user"]);
    // No preferred_username: the user header falls back to the email.
    assert_eq!(seen(&echo, "x-forwarded-user"), ["bob@example.com"]);
}

#[tokio::test]
async fn without_an_admin_group_nobody_is_admin() {
    let stack = Stack::with(StackOptions {
        admin_group: None,
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    let nav = stack.login(&browser, "alice", "/").await;
    assert_eq!(seen(&nav.last.json(), "x-forwarded-role"), ["user"]);
}

#[tokio::test]
async fn a_single_string_groups_claim_counts_as_one_group() {
    let mut provider = ProviderOptions::default();
    provider.users[0].groups = json!(ADMIN_GROUP);
    let stack = Stack::with(StackOptions {
        provider,
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    let echo = stack.login(&browser, "alice", "/").await.last.json();
    assert_eq!(seen(&echo, "x-forwarded-groups"), [ADMIN_GROUP]);
    assert_eq!(seen(&echo, "x-forwarded-role"), ["admin"]);
}

#[tokio::test]
async fn group_names_with_commas_are_percent_encoded() {
    let mut provider = ProviderOptions::default();
    provider.users[0].groups = json!(["a,b", "50%", ADMIN_GROUP]);
    let stack = Stack::with(StackOptions {
        provider,
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    let echo = stack.login(&browser, "alice", "/").await.last.json();
    assert_eq!(
        seen(&echo, "x-forwarded-groups"),
        [format!("a%2Cb,50%25,{ADMIN_GROUP}")]
    );
}

#[tokio::test]
async fn client_secret_post_is_used_when_configured() {
    let stack = Stack::with(StackOptions {
        provider: ProviderOptions {
            auth_method: AuthMethod::Post,
            ..ProviderOptions::default()
        },
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    let nav = stack.login(&browser, "alice", "/").await;
    assert_eq!(nav.last.status, 200);
    assert_eq!(stack.provider.token_auth_methods_seen(), [AuthMethod::Post]);
}

#[tokio::test]
async fn client_secret_basic_is_the_default() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    assert_eq!(stack.login(&browser, "alice", "/").await.last.status, 200);
    assert_eq!(
        stack.provider.token_auth_methods_seen(),
        [AuthMethod::Basic]
    );
}

#[tokio::test]
async fn session_cookie_is_http_only_lax_and_fresh_at_every_login() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    // A planted session id must not survive login (no fixation).
    let planted = "A".repeat(43);
    browser.set_cookie(stack.session_cookie(), &planted);
    stack.login(&browser, "alice", "/").await;

    let first = browser
        .cookie(stack.session_cookie())
        .expect("session cookie");
    assert_ne!(first, planted);
    let set = browser.cookie_set_by(stack.session_cookie()).unwrap();
    assert!(set.http_only);
    assert_eq!(set.same_site.as_deref(), Some("Lax"));
    assert_eq!(set.path.as_deref(), Some("/"));
    assert_eq!(set.max_age, Some(12 * 3600));

    browser.navigate(&stack.url("/_billguard/start?rd=/")).await;
    let second = browser.cookie(stack.session_cookie()).unwrap();
    assert_ne!(first, second);
}

#[tokio::test]
async fn claims_missing_from_the_id_token_come_from_userinfo() {
    let stack = Stack::start().await;
    stack.provider.misbehave(Misbehave::ClaimsOnlyInUserinfo);
    let browser = Browser::new();
    let echo = stack.login(&browser, "alice", "/").await.last.json();
    assert_eq!(seen(&echo, "x-forwarded-user"), ["alice"]);
    assert_eq!(seen(&echo, "x-forwarded-email"), ["alice@example.com"]);
    assert_eq!(seen(&echo, "x-forwarded-role"), ["admin"]);
}

#[tokio::test]
async fn hs256_tokens_are_accepted_only_when_the_operator_allows_them() {
    let refused = Stack::start().await;
    refused.provider.misbehave(Misbehave::Hs256);
    let browser = Browser::new();
    let nav = refused.login(&browser, "alice", "/").await;
    assert_eq!(nav.last.status, 502);

    let allowed = Stack::with(StackOptions {
        oidc_toml: "id_token_algs = [\"RS256\", \"HS256\"]".into(),
        ..StackOptions::default()
    })
    .await;
    allowed.provider.misbehave(Misbehave::Hs256);
    let browser = Browser::new();
    let nav = allowed.login(&browser, "alice", "/").await;
    assert_eq!(nav.last.status, 200);
    assert_eq!(seen(&nav.last.json(), "x-forwarded-role"), ["admin"]);
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_once_and_accepted() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    let fetched = stack.provider.jwks_fetches();

    stack.provider.rotate_key();
    let other = Browser::new();
    let nav = stack.login(&other, "alice", "/").await;
    assert_eq!(nav.last.status, 200);
    assert_eq!(stack.provider.jwks_fetches(), fetched + 1);
}

#[tokio::test]
async fn several_tabs_can_sign_in_at_the_same_time() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.provider.login_as("alice");

    // Two tabs start a login before either comes back.
    let first = browser.get(&stack.url("/_billguard/start?rd=/one")).await;
    let second = browser.get(&stack.url("/_billguard/start?rd=/two")).await;
    let to_provider = |r: &crate::support::browser::Resp| r.location().unwrap().to_owned();

    let back_second = browser.get(&to_provider(&second)).await;
    let back_first = browser.get(&to_provider(&first)).await;
    let done_second = browser.get(back_second.location().unwrap()).await;
    let done_first = browser.get(back_first.location().unwrap()).await;
    assert_eq!(done_second.location(), Some("/two"));
    assert_eq!(done_first.location(), Some("/one"));
}

#[tokio::test]
async fn pending_login_cookies_are_bounded() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    for i in 0..6 {
        let res = browser
            .get(&stack.url(&format!("/_billguard/start?rd=/{i}")))
            .await;
        assert_eq!(res.status, 302);
    }
    let header = browser.cookie_header().unwrap_or_default();
    let pending = header.matches("billguard_login_").count();
    assert!(pending <= 3, "{pending} login cookies: {header}");
    assert!(pending >= 1);
}

#[tokio::test]
async fn sign_out_ends_the_session_and_continues_at_the_provider() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    assert_eq!(
        browser.fetch(&stack.url("/_billguard/whoami")).await.status,
        200
    );

    let res = browser.get(&stack.url("/_billguard/sign_out")).await;
    assert_eq!(res.status, 302);
    let location = res.location_url().unwrap();
    assert!(location.path().ends_with("/end-session/"), "{location}");
    let query: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert!(query["id_token_hint"].split('.').count() == 3);
    assert_eq!(query["client_id"], stack.provider.client_id());
    assert_eq!(query["post_logout_redirect_uri"], stack.url("/"));
    assert!(browser.cookie(stack.session_cookie()).is_none());

    // The old id is dead on the server too, not just forgotten by the browser.
    assert_eq!(
        browser.fetch(&stack.url("/_billguard/whoami")).await.status,
        401
    );
}

#[tokio::test]
async fn a_session_id_is_useless_after_sign_out() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    let id = browser.cookie(stack.session_cookie()).unwrap();
    browser.get(&stack.url("/_billguard/sign_out")).await;

    let thief = Browser::new();
    thief.set_cookie(stack.session_cookie(), &id);
    assert_eq!(thief.fetch(&stack.url("/bills")).await.status, 401);
}

#[tokio::test]
async fn whoami_explains_the_role() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "sub-bob", "/").await;
    let who = browser.fetch(&stack.url("/_billguard/whoami")).await.json();
    assert_eq!(who["role"], "user");
    assert_eq!(who["groups"], json!(["staff"]));
    assert_eq!(who["role_reason"]["admin_group"], ADMIN_GROUP);
    assert_eq!(who["role_reason"]["member"], false);
    assert!(
        who["role_reason"]["explanation"]
            .as_str()
            .unwrap()
            .contains(ADMIN_GROUP)
    );
}

#[tokio::test]
async fn with_auto_provision_off_only_listed_users_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        "[[users]]\nusername = \"someone\"\nemail = \"BOB@example.com\"\nrole = \"user\"\n",
    )
    .unwrap();
    let stack = Stack::with(StackOptions {
        oidc_toml: "auto_provision = false".into(),
        extra_toml: format!("[local_login]\nusers_file = \"{}\"\n", users.display()),
        ..StackOptions::default()
    })
    .await;

    let alice = Browser::new();
    let nav = stack.login(&alice, "alice", "/").await;
    assert_eq!(nav.last.status, 403);
    assert!(
        nav.last.text().contains("not set up"),
        "{}",
        nav.last.text()
    );
    assert!(alice.cookie(stack.session_cookie()).is_none());

    let bob = Browser::new();
    let nav = stack.login(&bob, "sub-bob", "/").await;
    assert_eq!(nav.last.status, 200);
}

#[tokio::test]
async fn user_without_groups_claim_is_a_plain_user() {
    let mut provider = ProviderOptions::default();
    provider.users.push(User {
        sub: "sub-carol".into(),
        preferred_username: Some("carol".into()),
        email: Some("carol@example.com".into()),
        groups: serde_json::Value::Null,
    });
    let stack = Stack::with(StackOptions {
        provider,
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    let echo = stack.login(&browser, "carol", "/").await.last.json();
    assert_eq!(seen(&echo, "x-forwarded-role"), ["user"]);
    assert_eq!(seen(&echo, "x-forwarded-groups"), [""]);
}
