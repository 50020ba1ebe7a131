//! Everything that should fail, failing safely: bad tokens, bad state,
//! provider errors, open redirects, a provider or an app that is down.

use reqwest::Method;

use crate::support::browser::Browser;
use crate::support::provider::Misbehave;
use crate::support::stack::{Stack, StackOptions};

/// Runs one login with the provider misbehaving; returns the final page.
async fn login_with(how: Misbehave) -> (Stack, Browser, crate::support::browser::Resp) {
    login_misbehaving(&[how], "/bills").await
}

/// Runs one login to `path` with the provider misbehaving in every way given.
async fn login_misbehaving(
    hows: &[Misbehave],
    path: &str,
) -> (Stack, Browser, crate::support::browser::Resp) {
    let stack = Stack::start().await;
    for how in hows {
        stack.provider.misbehave(*how);
    }
    let browser = Browser::new();
    let nav = stack.login(&browser, "alice", path).await;
    (stack, browser, nav.last)
}

#[tokio::test]
async fn invalid_id_tokens_never_create_a_session() {
    for how in [
        Misbehave::BadSignature,
        Misbehave::AlgNone,
        Misbehave::Hs256,
        Misbehave::WrongIssuer,
        Misbehave::WrongAudience,
        Misbehave::Expired,
    ] {
        let (stack, browser, last) = login_with(how).await;
        assert_eq!(last.status, 502, "{how:?}");
        let page = last.text();
        assert!(page.contains("Sign-in failed"), "{how:?}: {page}");
        assert!(
            page.contains("/_billguard/start?rd=%2Fbills"),
            "{how:?}: retry link"
        );
        assert!(
            !page.contains("eyJ"),
            "{how:?}: a token leaked into the page"
        );
        assert!(browser.cookie(stack.session_cookie()).is_none(), "{how:?}");
        assert_eq!(
            browser.fetch(&stack.url("/bills")).await.status,
            401,
            "{how:?}"
        );
        assert_eq!(stack.upstream.requests_seen(), 0, "{how:?}");
    }
}

#[tokio::test]
async fn a_nonce_mismatch_is_refused() {
    let (stack, browser, last) = login_with(Misbehave::NonceMismatch).await;
    assert_eq!(last.status, 400);
    assert!(browser.cookie(stack.session_cookie()).is_none());
}

#[tokio::test]
async fn a_failed_code_exchange_shows_a_page_and_creates_no_session() {
    let (stack, browser, last) = login_with(Misbehave::TokenError).await;
    assert_eq!(last.status, 400);
    assert!(last.text().contains("Try again"));
    assert!(browser.cookie(stack.session_cookie()).is_none());
}

#[tokio::test]
async fn a_code_exchange_whose_connection_is_cut_is_sent_once_more_and_the_login_completes() {
    let (stack, browser, last) = login_with(Misbehave::CutNextTokenRequest).await;
    assert_eq!(last.status, 200, "{}", last.text());
    assert!(browser.cookie(stack.session_cookie()).is_some());
    // The cut request never reached the token handler; the one sent again did.
    assert_eq!(stack.provider.token_auth_methods_seen().len(), 1);
}

#[tokio::test]
async fn a_userinfo_request_whose_connection_is_cut_is_sent_once_more() {
    let hows = [
        Misbehave::ClaimsOnlyInUserinfo,
        Misbehave::CutNextUserinfoRequest,
    ];
    let (stack, browser, last) = login_misbehaving(&hows, "/").await;
    assert_eq!(last.status, 200, "{}", last.text());
    assert!(browser.cookie(stack.session_cookie()).is_some());
}

#[tokio::test]
async fn userinfo_for_another_subject_is_refused() {
    let hows = [Misbehave::ClaimsOnlyInUserinfo, Misbehave::UserinfoWrongSub];
    let (stack, browser, last) = login_misbehaving(&hows, "/").await;
    assert_eq!(last.status, 502);
    assert!(browser.cookie(stack.session_cookie()).is_none());
}

#[tokio::test]
async fn a_provider_error_is_explained_with_a_retry_link() {
    let stack = Stack::start().await;
    stack.provider.deny_next_login("access_denied");
    let browser = Browser::new();
    let last = stack.login(&browser, "alice", "/bills").await.last;
    assert_eq!(last.status, 403);
    let page = last.text();
    assert!(page.contains("refused"), "{page}");
    assert!(page.contains("/_billguard/start?rd=%2Fbills"), "{page}");
    assert!(browser.cookie(stack.session_cookie()).is_none());
}

/// Starts a login and stops at the provider's redirect back, returning the
/// callback URL and the name of the login cookie.
async fn callback_url(stack: &Stack, browser: &Browser) -> (String, String) {
    stack.provider.login_as("alice");
    let start = browser.get(&stack.url("/_billguard/start?rd=/")).await;
    let back = browser.get(start.location().unwrap()).await;
    let header = browser.cookie_header().unwrap();
    let name = header
        .split("; ")
        .find(|c| c.starts_with("billguard_login_"))
        .and_then(|c| c.split_once('='))
        .map(|(n, _)| n.to_owned())
        .expect("a login cookie");
    (back.location().unwrap().to_owned(), name)
}

#[tokio::test]
async fn a_replayed_callback_is_refused_even_with_the_login_cookie() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    let (callback, name) = callback_url(&stack, &browser).await;
    let login_cookie = browser.cookie(&name).unwrap();

    let first = browser.get(&callback).await;
    assert_eq!(first.status, 302);
    assert_eq!(first.location(), Some("/"));

    // An attacker who captured both the callback URL and the cookie.
    let attacker = Browser::new();
    attacker.set_cookie(&name, &login_cookie);
    let replay = attacker.get(&callback).await;
    assert_eq!(replay.status, 400, "{}", replay.text());
    assert!(replay.text().contains("already used"));
    assert!(attacker.cookie(stack.session_cookie()).is_none());
}

#[tokio::test]
async fn a_callback_whose_state_does_not_match_is_refused() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    let (callback, _) = callback_url(&stack, &browser).await;
    let mut url = url::Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let tampered: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| {
            if k == "state" {
                // Same prefix (same cookie), different state.
                let mut v = v;
                let last = v.pop().unwrap();
                v.push(if last == 'A' { 'B' } else { 'A' });
                (k, v)
            } else {
                (k, v)
            }
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(tampered);
    let res = browser.get(url.as_str()).await;
    assert_eq!(res.status, 400);
    assert!(browser.cookie(stack.session_cookie()).is_none());
}

#[tokio::test]
async fn a_callback_from_another_browser_restarts_once_then_stops() {
    let stack = Stack::start().await;
    let victim = Browser::new();
    let (callback, _) = callback_url(&stack, &victim).await;

    // Login CSRF: the attacker's callback lands in a browser without the
    // login cookie. It must not sign that browser in.
    let other = Browser::new();
    let res = other.get(&callback).await;
    assert_eq!(res.status, 302);
    assert_eq!(res.location(), Some("/_billguard/start?rd=%2F"));
    assert!(other.cookie(stack.session_cookie()).is_none());

    // The same again right away: no redirect loop, a page instead.
    let again = other.get(&callback).await;
    assert_eq!(again.status, 400);
    assert!(other.cookie(stack.session_cookie()).is_none());
}

#[tokio::test]
async fn open_redirect_targets_are_refused() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    for rd in [
        "//evil.example/",
        "/\\evil.example",
        "https://evil.example/",
        "%2F%2Fevil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "/%09/evil.example",
        "%20//evil.example",
        "javascript:alert(1)",
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        let res = browser
            .get(&stack.url(&format!("/_billguard/start?rd={encoded}")))
            .await;
        assert_eq!(res.status, 400, "rd={rd:?} got {}", res.status);
        assert!(res.location().is_none(), "rd={rd:?}");
    }
}

#[tokio::test]
async fn a_scheme_relative_first_page_is_not_restored() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    // "//evil.example/x" as a request path: the app would see the path, but
    // after login the browser must not be sent off-site.
    let nav = stack.login(&browser, "alice", "//evil.example/x").await;
    for hop in &nav.hops {
        let location = hop.location().unwrap();
        assert!(!location.starts_with("//"), "{location}");
    }
}

#[tokio::test]
async fn scripts_without_a_session_get_401_problem_json_not_a_redirect() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    let res = browser.fetch(&stack.url("/api/bills")).await;
    assert_eq!(res.status, 401);
    assert!(res.location().is_none());
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    let body = res.json();
    assert_eq!(body["sign_in"], "/_billguard/start?rd=%2Fapi%2Fbills");

    let xhr = browser
        .request(
            Method::GET,
            &stack.url("/api/bills"),
            &[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest"),
            ],
            "",
        )
        .await;
    assert_eq!(xhr.status, 401);

    let post = browser
        .request(
            Method::POST,
            &stack.url("/api/bills"),
            &[("accept", "text/html")],
            "x=1",
        )
        .await;
    assert_eq!(post.status, 401);
    assert_eq!(stack.upstream.requests_seen(), 0);
}

#[tokio::test]
async fn provider_down_at_start_is_not_ready_then_recovers() {
    let stack = Stack::with(StackOptions {
        provider_down_at_start: true,
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();

    let ready = browser.fetch(&stack.url("/_billguard/ready")).await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        browser.fetch(&stack.url("/_billguard/health")).await.status,
        200
    );
    let page = browser.get(&stack.url("/bills")).await;
    assert_eq!(page.status, 503);
    assert!(page.text().contains("Try again"));

    stack.provider.reset();
    stack.proxy.wait_ready().await;
    assert_eq!(
        browser.fetch(&stack.url("/_billguard/ready")).await.status,
        200
    );
    let nav = stack.login(&browser, "alice", "/bills").await;
    assert_eq!(nav.last.status, 200);
}

#[tokio::test]
async fn signed_in_users_keep_working_while_the_provider_is_away() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    stack.provider.misbehave(Misbehave::Unavailable);
    let res = browser.get(&stack.url("/bills")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["path"], "/bills");
}

#[tokio::test]
async fn an_unreachable_app_gives_502() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let stack = Stack::with(StackOptions {
        upstream_url: Some(url),
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    let nav = stack.login(&browser, "alice", "/bills").await;
    assert_eq!(nav.last.status, 502);
    assert!(nav.last.text().contains("could not be reached"));
    let api = browser.fetch(&stack.url("/api/bills")).await;
    assert_eq!(api.status, 502);
    assert_eq!(api.header("content-type"), Some("application/problem+json"));
}

#[tokio::test]
async fn a_silent_app_gives_504() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let stack = Stack::with(StackOptions {
        upstream_url: Some(url),
        upstream_timeout: "1s",
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    let nav = stack.login(&browser, "alice", "/bills").await;
    assert_eq!(nav.last.status, 504);
    hold.abort();
}

#[tokio::test]
async fn unknown_own_paths_are_404_and_never_reach_the_app() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    let before = stack.upstream.requests_seen();
    let res = browser.fetch(&stack.url("/_billguard/nope")).await;
    assert_eq!(res.status, 404);
    assert_eq!(stack.upstream.requests_seen(), before);
}
