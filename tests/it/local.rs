//! Local login and the sign-in page: sessions from the users file, answers
//! that never tell an unknown user from a wrong password, rate limits, CSRF,
//! local login switched off, and local login without any provider.

use reqwest::Method;

use crate::support::browser::Browser;
use crate::support::local::{
    LocalUser, SIGN_IN, hidden_field, local_table, sign_in, urlencode, users_file,
};
use crate::support::stack::{Stack, StackOptions, seen};

const CAROL: LocalUser<'static> = LocalUser {
    username: "carol",
    password: Some("carol's long passphrase"),
    role: "admin",
    email: Some("carol@example.com"),
};
const DAVE: LocalUser<'static> = LocalUser {
    username: "dave",
    password: Some("dave's long passphrase"),
    role: "user",
    email: None,
};

async fn stack_with_local(enabled: bool, without_oidc: bool) -> (Stack, tempfile::NamedTempFile) {
    let users = users_file(&[CAROL, DAVE]);
    let stack = Stack::with(StackOptions {
        extra_toml: local_table(users.path(), enabled),
        without_oidc,
        ..StackOptions::default()
    })
    .await;
    (stack, users)
}

#[tokio::test]
async fn a_navigation_without_session_goes_to_the_sign_in_page_while_local_login_is_on() {
    let (stack, _users) = stack_with_local(true, false).await;
    let browser = Browser::new();

    let res = browser.get(&stack.url("/bills?month=12")).await;
    assert_eq!(res.status, 302);
    assert_eq!(
        res.location(),
        Some(format!("{SIGN_IN}?rd={}", urlencode("/bills?month=12")).as_str())
    );

    let page = browser.get(&stack.url(SIGN_IN)).await;
    let html = page.text();
    assert_eq!(page.status, 200);
    assert!(html.contains("Sign in with Test provider"), "{html}");
    assert!(html.contains("/_billguard/start?rd=%2F"), "{html}");
    assert!(html.contains(r#"<label for="username">"#), "{html}");
    assert!(
        html.contains(r#"autocomplete="current-password""#),
        "{html}"
    );
    assert!(hidden_field(&html, "csrf").is_some());

    // Scripts still get a 401, pointing at the sign-in page.
    let api = browser.fetch(&stack.url("/api/bills")).await;
    assert_eq!(api.status, 401);
    assert!(api.json()["sign_in"].as_str().unwrap().starts_with(SIGN_IN));
}

#[tokio::test]
async fn a_password_sign_in_carries_the_users_file_role_and_the_identity_headers() {
    let (stack, _users) = stack_with_local(true, false).await;
    let browser = Browser::new();

    let nav = sign_in(&stack, &browser, "carol", CAROL.password.unwrap(), "/bills").await;
    assert_eq!(nav.hops.len(), 1, "{:?}", nav.urls());
    assert_eq!(nav.hops[0].status, 302);
    assert_eq!(nav.hops[0].location(), Some("/bills"));
    let echo = nav.last.json();
    assert_eq!(seen(&echo, "x-forwarded-user"), ["carol"]);
    assert_eq!(seen(&echo, "x-forwarded-email"), ["carol@example.com"]);
    assert_eq!(seen(&echo, "x-forwarded-role"), ["admin"]);
    assert_eq!(seen(&echo, "x-forwarded-groups"), [""]);
    assert!(
        !echo["headers"].to_string().contains("billguard_csrf"),
        "billguard's cookies never reach the app"
    );

    let who = browser.fetch(&stack.url("/_billguard/whoami")).await.json();
    assert_eq!(who["role"], "admin");
    assert!(
        who["role_reason"]["explanation"]
            .as_str()
            .unwrap()
            .contains("users file"),
        "{who}"
    );

    let other = Browser::new();
    let nav = sign_in(&stack, &other, "DAVE", DAVE.password.unwrap(), "/").await;
    assert_eq!(seen(&nav.last.json(), "x-forwarded-role"), ["user"]);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_answer() {
    let (stack, _users) = stack_with_local(true, false).await;
    let browser = Browser::new();

    let wrong = sign_in(&stack, &browser, "carol", "not her password", "/").await;
    let unknown = sign_in(&stack, &browser, "mallory", "not her password", "/").await;
    let no_hash = sign_in(&stack, &browser, "", "anything", "/").await;

    for nav in [&wrong, &unknown, &no_hash] {
        assert!(nav.hops.is_empty(), "no redirect on failure");
        assert_eq!(nav.last.status, 401);
        assert!(
            nav.last
                .text()
                .contains("The username or password is not correct.")
        );
        assert!(nav.last.headers.get("set-cookie").is_none(), "no session");
    }
    assert_eq!(wrong.last.text(), unknown.last.text());
    assert_eq!(wrong.last.text(), no_hash.last.text());
    assert!(browser.cookie(stack.session_cookie()).is_none());
}

#[tokio::test]
async fn failed_attempts_lock_the_username_whatever_the_password() {
    let (stack, _users) = stack_with_local(true, false).await;
    let browser = Browser::new();

    for _ in 0..billguard::local_login::MAX_FAILURES_PER_USER {
        let nav = sign_in(&stack, &browser, "carol", "guess", "/").await;
        assert_eq!(nav.last.status, 401);
    }
    let right = sign_in(&stack, &browser, "carol", CAROL.password.unwrap(), "/").await;
    assert_eq!(right.last.status, 429);
    assert!(right.last.header("retry-after").is_some());
    assert!(
        right
            .last
            .text()
            .contains("Too many failed sign-in attempts")
    );
    assert!(browser.cookie(stack.session_cookie()).is_none());

    // An unknown name is locked the same way, so the lock reveals nothing.
    for _ in 0..billguard::local_login::MAX_FAILURES_PER_USER {
        sign_in(&stack, &browser, "nobody", "guess", "/").await;
    }
    let unknown = sign_in(&stack, &browser, "nobody", "guess", "/").await;
    assert_eq!(unknown.last.status, 429);
    assert_eq!(unknown.last.text(), right.last.text());

    // Another user is not locked by carol's failures.
    let dave = sign_in(&stack, &browser, "dave", DAVE.password.unwrap(), "/").await;
    assert_eq!(dave.last.status, 200);
}

#[tokio::test]
async fn failed_attempts_lock_the_client_address_across_usernames() {
    let (stack, _users) = stack_with_local(true, false).await;
    let browser = Browser::new();

    for i in 0..billguard::local_login::MAX_FAILURES_PER_CLIENT {
        let nav = sign_in(&stack, &browser, &format!("user{i}"), "guess", "/").await;
        assert_eq!(nav.last.status, 401);
    }
    let dave = sign_in(&stack, &browser, "dave", DAVE.password.unwrap(), "/").await;
    assert_eq!(dave.last.status, 429);
}

#[tokio::test]
async fn the_form_needs_its_csrf_token_and_cookie() {
    let (stack, _users) = stack_with_local(true, false).await;
    let browser = Browser::new();
    let password = CAROL.password.unwrap();

    // No page visited: no cookie, no token.
    let bare = browser
        .submit(
            &stack.url(SIGN_IN),
            &[("username", "carol"), ("password", password)],
        )
        .await;
    assert_eq!(bare.last.status, 403);

    // A token from another browser does not fit this browser's cookie.
    let other = Browser::new();
    let page = other.get(&stack.url(SIGN_IN)).await;
    let foreign = hidden_field(&page.text(), "csrf").unwrap();
    browser.get(&stack.url(SIGN_IN)).await;
    let forged = browser
        .submit(
            &stack.url(SIGN_IN),
            &[
                ("username", "carol"),
                ("password", password),
                ("csrf", &foreign),
            ],
        )
        .await;
    assert_eq!(forged.last.status, 403);
    assert!(browser.cookie(stack.session_cookie()).is_none());

    // A JSON body is not the form.
    let json = browser
        .request(
            Method::POST,
            &stack.url(SIGN_IN),
            &[("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(json.status, 415);
}

#[tokio::test]
async fn with_local_login_off_the_form_is_gone_and_its_post_refused() {
    let (stack, _users) = stack_with_local(false, false).await;
    let browser = Browser::new();

    let page = browser.get(&stack.url(SIGN_IN)).await;
    let html = page.text();
    assert_eq!(page.status, 200);
    assert!(html.contains("Sign in with Test provider"));
    assert!(!html.contains("<form"), "{html}");
    assert!(!html.contains(r#"type="password""#), "{html}");

    let csrf = browser.cookie("billguard_csrf").unwrap_or_default();
    let post = browser
        .submit(
            &stack.url(SIGN_IN),
            &[
                ("username", "carol"),
                ("password", CAROL.password.unwrap()),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(post.last.status, 403);
    assert!(browser.cookie(stack.session_cookie()).is_none());

    // Navigations go straight to the provider, as before.
    let res = browser.get(&stack.url("/bills")).await;
    assert_eq!(res.status, 302);
    assert!(res.location().unwrap().starts_with(&stack.provider.url()));
}

#[tokio::test]
async fn without_a_provider_local_login_alone_works_and_the_page_says_so() {
    let (stack, _users) = stack_with_local(true, true).await;
    let browser = Browser::new();

    let ready = browser.fetch(&stack.url("/_billguard/ready")).await;
    assert_eq!(ready.status, 200);

    let page = browser.get(&stack.url(SIGN_IN)).await;
    let html = page.text();
    assert!(html.contains("Single sign-on is not set up"), "{html}");
    assert!(!html.contains("Sign in with Test provider"), "{html}");
    assert!(!html.contains("/_billguard/start"), "{html}");
    assert!(html.contains("<form"));

    let start = browser.get(&stack.url("/_billguard/start?rd=%2F")).await;
    assert_eq!(start.status, 404);

    let nav = sign_in(&stack, &browser, "dave", DAVE.password.unwrap(), "/bills").await;
    assert_eq!(nav.last.status, 200);
    assert_eq!(seen(&nav.last.json(), "x-forwarded-user"), ["dave"]);

    // Signing out ends the session without a provider to visit.
    let out = browser.get(&stack.url("/_billguard/sign_out")).await;
    assert_eq!(out.status, 200);
    assert!(out.text().contains("You are signed out"));
    let after = browser.fetch(&stack.url("/_billguard/whoami")).await;
    assert_eq!(after.status, 401);
}

#[test]
fn hash_password_prints_an_argon2id_hash_of_stdin() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use argon2::password_hash::PasswordVerifier as _;
    use argon2::password_hash::phc::PasswordHash;

    let mut child = Command::new(env!("CARGO_BIN_EXE_billguard"))
        .arg("hash-password")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run billguard");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let parsed = PasswordHash::new(hash).unwrap();
    let argon = argon2::Argon2::default();
    assert!(
        argon
            .verify_password(b"correct horse battery", &parsed)
            .is_ok()
    );
    assert!(
        argon
            .verify_password(b"correct horse battery\n", &parsed)
            .is_err()
    );

    let empty = Command::new(env!("CARGO_BIN_EXE_billguard"))
        .arg("hash-password")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(2));
}
