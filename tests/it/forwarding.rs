//! What the app receives and what comes back: identity headers that cannot
//! be spoofed, cookies, X-Forwarded-*, streamed bodies, WebSocket.

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::browser::Browser;
use crate::support::stack::{Stack, seen, seen_headers};

async fn signed_in() -> (Stack, Browser) {
    let stack = Stack::start().await;
    let browser = Browser::new();
    let nav = stack.login(&browser, "sub-bob", "/").await;
    assert_eq!(nav.last.status, 200);
    (stack, browser)
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_app_in_any_spelling() {
    let (stack, browser) = signed_in().await;
    let spoofs = [
        ("X-Forwarded-User", "mallory"),
        ("x_forwarded_user", "mallory"),
        ("X-FORWARDED-ROLE", "admin"),
        ("x_Forwarded_Role", "admin"),
        ("X-Forwarded-Groups", "bill-tracker-admins"),
        ("x-forwarded_groups", "bill-tracker-admins"),
        ("X_FORWARDED_EMAIL", "mallory@example.com"),
        ("Connection", "X-Forwarded-Role, X-Forwarded-User"),
    ];
    let res = browser
        .request(Method::GET, &stack.url("/admin"), &spoofs, "")
        .await;
    let echo = res.json();

    for (name, value) in seen_headers(&echo) {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        if folded.starts_with("x-forwarded-") {
            assert!(
                !value.contains("mallory") && value != "admin",
                "{name}: {value}"
            );
            assert!(!name.contains('_'), "look-alike {name} reached the app");
        }
    }
    assert_eq!(seen(&echo, "x-forwarded-user"), ["bob@example.com"]);
    assert_eq!(seen(&echo, "x-forwarded-role"), ["user"]);
    assert_eq!(seen(&echo, "x-forwarded-groups"), ["staff"]);
}

#[tokio::test]
async fn billguards_cookies_are_not_forwarded_but_the_apps_are() {
    let (stack, browser) = signed_in().await;
    browser.set_cookie("theme", "dark");
    let echo = browser.get(&stack.url("/settings")).await.json();
    let cookies = seen(&echo, "cookie").join("; ");
    assert!(cookies.contains("theme=dark"), "{cookies}");
    assert!(!cookies.contains("billguard"), "{cookies}");
}

#[tokio::test]
async fn forwarded_headers_describe_the_real_connection() {
    let (stack, browser) = signed_in().await;
    let res = browser
        .request(
            Method::GET,
            &stack.url("/"),
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=203.0.113.9"),
            ],
            "",
        )
        .await;
    let echo = res.json();
    assert_eq!(seen(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["http"]);
    let host = stack.base.trim_start_matches("http://").to_owned();
    assert_eq!(seen(&echo, "x-forwarded-host"), std::slice::from_ref(&host));
    assert_eq!(seen(&echo, "host"), [host]);
    assert!(seen(&echo, "forwarded").is_empty());
}

#[tokio::test]
async fn a_large_upload_streams_through_intact() {
    let (stack, browser) = signed_in().await;
    const CHUNKS: usize = 256;
    const CHUNK: usize = 64 * 1024;
    let mut hasher = Sha256::new();
    let chunks: Vec<Vec<u8>> = (0..CHUNKS)
        .map(|i| {
            let chunk = vec![(i % 251) as u8; CHUNK];
            hasher.update(&chunk);
            chunk
        })
        .collect();
    let expected = hasher.finalize();
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let body = reqwest::Body::wrap_stream(stream);

    let res = browser
        .request(
            Method::POST,
            &stack.url("/upload"),
            &[("content-type", "application/octet-stream")],
            body,
        )
        .await;
    assert_eq!(res.status, 200);
    let echo = res.json();
    assert_eq!(echo["body_bytes"], (CHUNKS * CHUNK) as u64);
    let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(echo["body_sha256"], hex);
}

#[tokio::test]
async fn a_large_download_streams_back_intact() {
    let (stack, browser) = signed_in().await;
    let res = browser.get(&stack.url("/big?bytes=10000000")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body.len(), 10_000_000);
}

#[tokio::test]
async fn websocket_upgrades_pass_through_with_identity() {
    let (stack, browser) = signed_in().await;
    let ws_url = stack.url("/ws").replacen("http://", "ws://", 1);
    let mut request = ws_url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", browser.cookie_header().unwrap().parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket through billguard");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["x-upstream-saw-user"], "bob@example.com");

    socket.send(Message::text("hello")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo: hello");
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_without_a_session_is_refused() {
    let stack = Stack::start().await;
    let ws_url = stack.url("/ws").replacen("http://", "ws://", 1);
    let error = tokio_tungstenite::connect_async(ws_url).await.unwrap_err();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 401),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    assert_eq!(stack.upstream.requests_seen(), 0);
}
