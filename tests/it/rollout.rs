//! Changing the configuration of a running proxy: reloads that keep the
//! sessions, a bad edit that is rejected while the proxy keeps serving, and
//! the safe rollout from the design as one scenario.

use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::local::{
    LocalUser, SIGN_IN, eventually, hidden_field, local_table, sign_in, users_file,
};
use crate::support::stack::{ADMIN_GROUP, CALLBACK_PATH, Stack, StackOptions, seen};

const CAROL: LocalUser<'static> = LocalUser {
    username: "carol",
    password: Some("carol's long passphrase"),
    role: "admin",
    email: Some("carol@example.com"),
};

/// Waits until the running proxy has rejected `n` reloads in all.
async fn rejected(stack: &Stack, n: u64) -> String {
    let mut reloads = stack.proxy.live().reloads();
    let wait = reloads.wait_for(|r| r.rejected >= n);
    let seen = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the bad edit is noticed within ten seconds")
        .expect("the proxy is running");
    seen.last_rejection.clone().unwrap_or_default()
}

#[tokio::test]
async fn a_bad_edit_is_rejected_and_the_proxy_keeps_serving_the_old_configuration() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;

    let good = stack.config_text();
    stack.write_config(&good.replace(
        "token_auth_method = \"client_secret_basic\"",
        "token_auth_method = \"private_key_jwt\"",
    ));
    let reason = rejected(&stack, 1).await;
    assert!(reason.contains("oidc.token_auth_method"), "{reason}");
    assert!(reason.contains("private_key_jwt"), "{reason}");

    // Still serving, with the session and the old settings.
    let res = browser.get(&stack.url("/bills")).await;
    assert_eq!(res.status, 200);
    assert_eq!(seen(&res.json(), "x-forwarded-role"), ["admin"]);
    let fresh = Browser::new();
    let nav = stack.login(&fresh, "bob", "/").await;
    assert_eq!(nav.last.status, 200, "logins still work");

    // Broken TOML is rejected the same way, without echoing the file.
    stack.write_config(&format!("{good}\nclient_secret = \"oops\" = 1\n"));
    let reason = rejected(&stack, 2).await;
    assert!(reason.contains("not valid TOML"), "{reason}");
    assert!(!reason.contains("oops"), "{reason}");
    assert!(
        !reason.contains("is required"),
        "only the real problem: {reason}"
    );
    assert_eq!(browser.get(&stack.url("/bills")).await.status, 200);
}

#[tokio::test]
async fn a_valid_edit_takes_effect_and_sessions_survive() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;

    stack.write_config(&stack.config_text().replace(
        "provider_name = \"Test provider\"",
        "provider_name = \"Authentik\"",
    ));
    let page = Browser::new();
    eventually("the sign-in page names the new provider", || async {
        page.get(&stack.url(SIGN_IN))
            .await
            .text()
            .contains("Sign in with Authentik")
    })
    .await;

    let who = browser.fetch(&stack.url("/_billguard/whoami")).await;
    assert_eq!(who.status, 200, "the session survived the reload");
    assert_eq!(who.json()["user"], "alice");
}

/// DESIGN.md's safe rollout, on one running proxy.
#[tokio::test]
async fn the_safe_rollout_works_end_to_end() {
    let users = users_file(&[CAROL]);
    let local_on = local_table(users.path(), true);
    let stack = Stack::with(StackOptions {
        without_oidc: true,
        extra_toml: local_on.clone(),
        ..StackOptions::default()
    })
    .await;
    let operator = Browser::new();

    // 0. Local login alone: the operator signs in with a password.
    let nav = sign_in(&stack, &operator, "carol", CAROL.password.unwrap(), "/").await;
    assert_eq!(nav.last.status, 200);
    let page = operator.get(&stack.url(SIGN_IN)).await.text();
    assert!(page.contains("Single sign-on is not set up"));

    // 1. Save the provider settings while local login stays on.
    let with_oidc = format!("{}\n{}", stack.config_text(), stack.oidc_table());
    stack.write_config(&with_oidc);
    eventually("the sign-in page offers the provider", || async {
        operator
            .get(&stack.url(SIGN_IN))
            .await
            .text()
            .contains("Sign in with Test provider")
    })
    .await;
    assert_eq!(
        operator
            .fetch(&stack.url("/_billguard/whoami"))
            .await
            .status,
        200,
        "the operator's password session survived"
    );

    // 2. Run the provider test from the admin panel.
    let html = operator.get(&stack.url("/_billguard/admin")).await.text();
    let csrf = hidden_field(&html, "csrf").unwrap();
    let result = operator
        .submit(
            &stack.url("/_billguard/admin"),
            &[("csrf", &csrf), ("action", "check")],
        )
        .await
        .last
        .text();
    assert!(
        result.contains("<td>pass</td><td>credentials</td>"),
        "{result}"
    );
    assert!(!result.contains("<td>FAIL</td>"), "{result}");

    // 3. Log out and complete a real OIDC login from the sign-in page.
    let out = operator.get(&stack.url("/_billguard/sign_out")).await;
    assert_eq!(out.status, 200);
    let user = Browser::new();
    let first = user.get(&stack.url("/bills")).await;
    assert!(
        first.location().unwrap().starts_with(SIGN_IN),
        "local login is still on"
    );
    let page = user
        .get(first.location_url().unwrap().as_ref())
        .await
        .text();
    let start = page
        .split("href=\"")
        .find_map(|rest| rest.strip_prefix("/_billguard/start"))
        .and_then(|rest| rest.split('"').next())
        .map(|query| format!("/_billguard/start{}", query.replace("&amp;", "&")))
        .expect("a provider button");
    stack.provider.login_as("alice");
    let nav = user.navigate(&stack.url(&start)).await;
    assert!(nav.urls().iter().any(|u| u.path() == CALLBACK_PATH));
    assert_eq!(nav.last.status, 200);
    assert_eq!(nav.last.json()["path"], "/bills");

    // 4. Verify the admin-group mapping with a permitted account.
    let who = user.fetch(&stack.url("/_billguard/whoami")).await.json();
    assert_eq!(who["role"], "admin");
    assert_eq!(who["role_reason"]["admin_group"], ADMIN_GROUP);
    assert_eq!(who["role_reason"]["member"], true);

    // 5. Disable local login.
    stack.write_config(&with_oidc.replace(&local_on, &local_on.replace("true", "false")));
    eventually("the password form is gone", || async {
        !user.get(&stack.url(SIGN_IN)).await.text().contains("<form")
    })
    .await;
    let csrf = operator.cookie("billguard_csrf").unwrap_or_default();
    let refused = operator
        .submit(
            &stack.url(SIGN_IN),
            &[
                ("username", "carol"),
                ("password", CAROL.password.unwrap()),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(refused.last.status, 403);
    assert_eq!(
        user.fetch(&stack.url("/_billguard/whoami")).await.status,
        200,
        "the OIDC session survived"
    );
    let stranger = Browser::new().get(&stack.url("/bills")).await;
    assert!(
        stranger
            .location()
            .unwrap()
            .starts_with(&stack.provider.url()),
        "navigations go straight to the provider"
    );
}

#[tokio::test]
async fn a_changed_users_file_takes_effect_without_a_restart() {
    let users = users_file(&[CAROL]);
    let stack = Stack::with(StackOptions {
        extra_toml: local_table(users.path(), true),
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    let erin = LocalUser {
        username: "erin",
        password: Some("erin's new passphrase"),
        role: "user",
        email: None,
    };
    let before = sign_in(&stack, &browser, "erin", erin.password.unwrap(), "/").await;
    assert_eq!(before.last.status, 401);

    let updated = users_file(&[CAROL, erin]);
    std::fs::copy(updated.path(), users.path()).expect("replace the users file");
    // Polling with sign-ins would trip the rate limit: wait for the reload.
    let mut reloads = stack.proxy.live().reloads();
    let applied = reloads.wait_for(|r| r.applied >= 1);
    tokio::time::timeout(Duration::from_secs(10), applied)
        .await
        .expect("the users file change is noticed within ten seconds")
        .expect("the proxy is running");

    let fresh = Browser::new();
    let after = sign_in(&stack, &fresh, "erin", "erin's new passphrase", "/").await;
    assert_eq!(after.last.status, 200);
}

#[tokio::test]
async fn sighup_reloads_the_configuration_of_the_binary() {
    use crate::support::process::{Process, free_port};

    let users = users_file(&[CAROL]);
    let toml = format!(
        "listen = \"127.0.0.1:{}\"\nupstream = \"http://127.0.0.1:9\"\n{}",
        free_port(),
        local_table(users.path(), true)
    );
    let mut billguard = Process::serve(&toml);
    billguard.hangup();
    let line = billguard.wait_for_log("Configuration reloaded");
    assert_eq!(line["trigger"], "Hangup", "{line}");
    let health = reqwest::get(billguard.url("/_billguard/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "still serving after the reload");
}
