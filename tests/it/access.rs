//! Access policy through the real server: route rules, allowed groups,
//! bearer tokens (JWT and opaque), access-token forwarding and the signed
//! statement.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::JsonWebKey as _;
use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::browser::Browser;
use crate::support::provider::Misbehave;
use crate::support::stack::{ADMIN_GROUP, Stack, StackOptions, seen};

/// BillTracker's example rules from the README.
const ROUTES: &str = r#"
[[routes]]
path = "/api/health"
methods = ["GET"]
access = "public"

[[routes]]
path = '/static/.+\.(js|css|png)'
methods = ["GET"]
access = "public"

[[routes]]
path = '/calendar/[A-Za-z0-9_-]+\.ics'
access = "public"

[[routes]]
path = "/admin(/.*)?"
access = "admin"
"#;

async fn stack_with(extra: &str) -> Stack {
    Stack::with(StackOptions {
        extra_toml: extra.to_owned(),
        ..StackOptions::default()
    })
    .await
}

/// Sends `raw_target` byte for byte (no client-side URL cleanup) and
/// returns the status and body.
async fn raw_get(stack: &Stack, raw_target: &str, extra_headers: &str) -> (u16, String) {
    let addr = stack.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {raw_target} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\
         {extra_headers}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// --- routes ---

#[tokio::test]
async fn a_public_route_is_forwarded_without_a_session_and_without_identity() {
    let stack = stack_with(ROUTES).await;
    let browser = Browser::new();
    let res = browser
        .request(
            Method::GET,
            &stack.url("/api/health?probe=1"),
            &[
                ("x-forwarded-user", "mallory"),
                ("X_Forwarded_Role", "admin"),
                ("authorization", "Bearer not-checked-here"),
            ],
            "",
        )
        .await;
    assert_eq!(res.status, 200);
    let echo = res.json();
    assert_eq!(echo["path"], "/api/health?probe=1");
    for name in ["x-forwarded-user", "x_forwarded_role", "x-forwarded-role"] {
        assert!(seen(&echo, name).is_empty(), "{name} reached the app");
    }
    assert!(seen(&echo, "authorization").is_empty());
    assert!(seen(&echo, "x-billguard-statement").is_empty());

    // The same path with another method is not public.
    let res = browser
        .request(Method::POST, &stack.url("/api/health"), &[], "")
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(stack.upstream.requests_seen(), 1);
}

#[tokio::test]
async fn encoding_tricks_never_reach_a_protected_path_through_a_public_rule() {
    let stack = stack_with(ROUTES).await;
    // Resolved to /admin/users: needs a session, so 401 and nothing forwarded.
    for target in [
        "/static/../admin/users",
        "/static/%2e%2e/admin/users",
        "/static/%2E%2E/%61dmin/users",
        "/api/health/../../admin",
        "//admin/users",
        "/ADMIN/users",
        "/calendar/../admin/x.ics",
    ] {
        let (status, _) = raw_get(&stack, target, "").await;
        assert_eq!(status, 401, "{target}");
    }
    // Ambiguous spellings are refused outright.
    for target in [
        "/static/..%2Fadmin/users",
        "/static/..%5Cadmin",
        "/static/..;/admin",
        "/static/%252e%252e/admin",
        "/admin./users",
        "/static/a%00.js",
    ] {
        let (status, _) = raw_get(&stack, target, "").await;
        assert_eq!(status, 400, "{target}");
    }
    assert_eq!(stack.upstream.requests_seen(), 0);

    // A public path reaches the app as the normalized path that matched.
    let (status, body) = raw_get(&stack, "//static/./img/../app.js?v=/../admin", "").await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["path"], "/static/app.js?v=/../admin");
}

#[tokio::test]
async fn an_admin_route_is_403_for_a_user_and_open_to_an_admin() {
    let stack = stack_with(ROUTES).await;
    let bob = Browser::new();
    stack.login(&bob, "sub-bob", "/").await;
    let res = bob.get(&stack.url("/admin/users")).await;
    assert_eq!(res.status, 403);
    assert!(res.text().contains("Admins only"), "{}", res.text());
    let res = bob.fetch(&stack.url("/Admin")).await;
    assert_eq!(res.status, 403);
    assert_eq!(res.json()["status"], 403);
    let before = stack.upstream.requests_seen();

    let alice = Browser::new();
    let nav = stack.login(&alice, "alice", "/admin/users").await;
    assert_eq!(nav.last.status, 200);
    assert_eq!(seen(&nav.last.json(), "x-forwarded-role"), ["admin"]);
    assert_eq!(stack.upstream.requests_seen(), before + 1);
}

// --- allowed groups ---

#[tokio::test]
async fn a_user_outside_the_allowed_groups_is_refused_and_admins_always_pass() {
    let stack = Stack::with(StackOptions {
        oidc_toml: "allowed_groups = [\"family\", \"bill-tracker-users\"]".into(),
        ..StackOptions::default()
    })
    .await;

    let bob = Browser::new();
    let nav = stack.login(&bob, "sub-bob", "/bills").await;
    assert_eq!(nav.last.status, 403);
    let page = nav.last.text();
    assert!(page.contains("Access not allowed"), "{page}");
    for internal in ["family", "bill-tracker-users", "staff", "allowed_groups"] {
        assert!(!page.contains(internal), "the page names {internal}");
    }
    assert!(bob.cookie(stack.session_cookie()).is_none());
    assert_eq!(stack.upstream.requests_seen(), 0);

    // alice is in none of the allowed groups, but she is an admin.
    let alice = Browser::new();
    let nav = stack.login(&alice, "alice", "/bills").await;
    assert_eq!(nav.last.status, 200);
    assert_eq!(seen(&nav.last.json(), "x-forwarded-role"), ["admin"]);
}

#[tokio::test]
async fn allowed_groups_also_bind_bearer_tokens() {
    let stack = Stack::with(StackOptions {
        oidc_toml: "allowed_groups = \"family\"".into(),
        ..StackOptions::default()
    })
    .await;
    let token = stack.provider.access_token("sub-bob", &[]);
    let res = Browser::new()
        .request(
            Method::GET,
            &stack.url("/api/bills"),
            &[("authorization", &bearer(&token))],
            "",
        )
        .await;
    assert_eq!(res.status, 403);
    assert_eq!(stack.upstream.requests_seen(), 0);
}

// --- bearer tokens ---

#[tokio::test]
async fn a_valid_bearer_token_authenticates_without_a_session() {
    let stack = Stack::start().await;
    let token = stack.provider.access_token("alice", &[]);
    let res = Browser::new()
        .request(
            Method::POST,
            &stack.url("/api/bills"),
            &[("authorization", &bearer(&token))],
            "{}",
        )
        .await;
    assert_eq!(res.status, 200);
    let echo = res.json();
    assert_eq!(seen(&echo, "x-forwarded-user"), ["alice"]);
    assert_eq!(seen(&echo, "x-forwarded-role"), ["admin"]);
    assert_eq!(
        seen(&echo, "x-forwarded-groups"),
        [format!("{ADMIN_GROUP},staff")]
    );
    assert!(
        seen(&echo, "authorization").is_empty(),
        "Authorization is not forwarded by default"
    );
    assert!(res.header("set-cookie").is_none(), "no session is created");
}

#[tokio::test]
async fn invalid_bearer_tokens_get_401_invalid_token_and_never_a_redirect() {
    let stack = Stack::start().await;
    let provider = &stack.provider;
    let cases = [
        (
            "expired",
            provider.access_token("alice", &[Misbehave::Expired]),
        ),
        (
            "wrong audience",
            provider.access_token("alice", &[Misbehave::WrongAudience]),
        ),
        (
            "wrong issuer",
            provider.access_token("alice", &[Misbehave::WrongIssuer]),
        ),
        (
            "alg none",
            provider.access_token("alice", &[Misbehave::AlgNone]),
        ),
        (
            "HS256 keyed with the public key",
            provider.access_token("alice", &[Misbehave::Hs256WithPublicKey]),
        ),
        (
            "HS256 keyed with the client secret",
            provider.access_token("alice", &[Misbehave::Hs256]),
        ),
        (
            "bad signature",
            provider.access_token("alice", &[Misbehave::BadSignature]),
        ),
        (
            "opaque without introspection",
            provider.opaque_token("alice"),
        ),
        ("garbage", "a.b.c".to_owned()),
    ];
    let browser = Browser::new();
    for (what, token) in cases {
        // A browser-like Accept header must not turn this into a redirect.
        let res = browser
            .request(
                Method::GET,
                &stack.url("/bills"),
                &[
                    ("authorization", &bearer(&token)),
                    ("accept", "text/html"),
                    ("sec-fetch-mode", "navigate"),
                ],
                "",
            )
            .await;
        assert_eq!(res.status, 401, "{what}");
        let challenge = res.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert!(res.location().is_none(), "{what}");
        assert!(!res.text().contains(&token), "{what}: the token is echoed");
    }
    assert_eq!(stack.upstream.requests_seen(), 0);
}

#[tokio::test]
async fn a_token_signed_with_a_new_provider_key_reloads_the_keys_once() {
    let stack = Stack::start().await;
    let fetches = stack.provider.jwks_fetches();
    stack.provider.rotate_key();
    let token = stack.provider.access_token("alice", &[]);
    let res = Browser::new()
        .request(
            Method::GET,
            &stack.url("/api/bills"),
            &[("authorization", &bearer(&token))],
            "",
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(stack.provider.jwks_fetches(), fetches + 1);
}

#[tokio::test]
async fn configured_audiences_replace_the_client_id() {
    let stack = stack_with("[bearer]\naudiences = [\"another-client\"]\n").await;
    let provider = &stack.provider;
    let status = |token: String| {
        let url = stack.url("/api/bills");
        async move {
            Browser::new()
                .request(Method::GET, &url, &[("authorization", &bearer(&token))], "")
                .await
                .status
        }
    };
    let other = provider.access_token("alice", &[Misbehave::WrongAudience]);
    assert_eq!(status(other).await, 200);
    assert_eq!(status(provider.access_token("alice", &[])).await, 401);
}

#[tokio::test]
async fn a_session_wins_over_a_bearer_token_the_app_sent_itself() {
    let stack = stack_with("[bearer]\nforward_authorization = true\n").await;
    let browser = Browser::new();
    stack.login(&browser, "sub-bob", "/").await;
    let cookie = browser.cookie_header().unwrap();
    let res = browser
        .request(
            Method::GET,
            &stack.url("/api/bills"),
            &[
                ("cookie", &cookie),
                ("authorization", "Bearer the-apps-own-token"),
            ],
            "",
        )
        .await;
    assert_eq!(res.status, 200);
    let echo = res.json();
    assert_eq!(seen(&echo, "x-forwarded-user"), ["bob@example.com"]);
    assert_eq!(seen(&echo, "authorization"), ["Bearer the-apps-own-token"]);
}

#[tokio::test]
async fn opaque_tokens_are_introspected_and_the_answer_is_cached() {
    let stack =
        stack_with("[bearer]\nintrospection_url = \"{provider}/application/o/introspect/\"\n")
            .await;
    let provider = &stack.provider;
    let call = |token: String| {
        let url = stack.url("/api/bills");
        async move {
            Browser::new()
                .request(Method::GET, &url, &[("authorization", &bearer(&token))], "")
                .await
        }
    };
    let token = provider.opaque_token("sub-bob");
    let first = call(token.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(seen(&first.json(), "x-forwarded-user"), ["bob@example.com"]);
    assert_eq!(seen(&first.json(), "x-forwarded-role"), ["user"]);
    let second = call(token).await;
    assert_eq!(second.status, 200);
    assert_eq!(provider.introspections(), 1, "the answer is reused");

    let unknown = call("an-opaque-token-nobody-issued".into()).await;
    assert_eq!(unknown.status, 401);
    let challenge = unknown.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert_eq!(provider.introspections(), 2);

    // JWTs are checked locally, never introspected.
    let jwt = provider.access_token("alice", &[]);
    assert_eq!(call(jwt).await.status, 200);
    assert_eq!(provider.introspections(), 2);
}

// --- access-token forwarding ---

#[tokio::test]
async fn the_access_token_is_forwarded_only_when_configured() {
    let off = Stack::start().await;
    let browser = Browser::new();
    let nav = off.login(&browser, "alice", "/").await;
    assert!(seen(&nav.last.json(), "authorization").is_empty());

    let on = stack_with("[access_token]\nforward = true\n").await;
    let browser = Browser::new();
    let nav = on.login(&browser, "alice", "/").await;
    let issued = on.provider.last_access_token().unwrap();
    assert_eq!(
        seen(&nav.last.json(), "authorization"),
        [format!("Bearer {issued}")]
    );
    // A client's own Authorization cannot replace it.
    let res = browser
        .request(
            Method::GET,
            &on.url("/x"),
            &[
                ("cookie", &browser.cookie_header().unwrap()),
                ("authorization", "Bearer forged"),
            ],
            "",
        )
        .await;
    assert_eq!(
        seen(&res.json(), "authorization"),
        [format!("Bearer {issued}")]
    );

    let custom = stack_with("[access_token]\nforward = true\nheader = \"X-Access-Token\"\n").await;
    let browser = Browser::new();
    let nav = custom.login(&browser, "alice", "/").await;
    let issued = custom.provider.last_access_token().unwrap();
    let echo = nav.last.json();
    assert_eq!(seen(&echo, "x-access-token"), [issued]);
    assert!(seen(&echo, "authorization").is_empty());
}

// --- the signed statement ---

#[tokio::test]
async fn the_statement_verifies_against_the_published_keys() {
    for alg in ["ES256", "EdDSA"] {
        let stack = stack_with(&format!(
            "{ROUTES}\n[statement]\nenabled = true\nalg = \"{alg}\"\n"
        ))
        .await;
        let browser = Browser::new();
        stack.login(&browser, "alice", "/").await;
        let res = browser
            .request(
                Method::GET,
                &stack.url("/bills"),
                &[
                    ("cookie", &browser.cookie_header().unwrap()),
                    ("x-billguard-statement", "forged"),
                ],
                "",
            )
            .await;
        let statements = seen(&res.json(), "x-billguard-statement");
        assert_eq!(statements.len(), 1, "{alg}");
        let jwks = browser
            .fetch(&stack.url("/_billguard/jwks.json"))
            .await
            .json();
        let claims = verify_statement(&statements[0], &jwks, alg);
        assert_eq!(claims["user"], "alice", "{alg}");
        assert_eq!(claims["role"], "admin");
        assert_eq!(claims["auth"], "session");
        assert_eq!(claims["aud"], "billtracker");
        assert_eq!(claims["iss"], stack.base);
        assert!(claims["exp"].as_u64() > claims["iat"].as_u64());

        // A public path gets no statement, and a forged one is dropped.
        let res = browser
            .request(
                Method::GET,
                &stack.url("/api/health"),
                &[("x-billguard-statement", "forged")],
                "",
            )
            .await;
        assert!(seen(&res.json(), "x-billguard-statement").is_empty());
    }
}

#[tokio::test]
async fn without_statements_there_are_no_published_keys() {
    let stack = Stack::start().await;
    let res = Browser::new()
        .fetch(&stack.url("/_billguard/jwks.json"))
        .await;
    assert_eq!(res.status, 404);
}

fn verify_statement(token: &str, jwks: &Value, alg: &str) -> Value {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(input.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], alg);
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the statement's kid is published");
    let jwk: CoreJsonWebKey = serde_json::from_value(jwk.clone()).unwrap();
    let core_alg = match alg {
        "ES256" => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        _ => CoreJwsSigningAlgorithm::EdDsa,
    };
    jwk.verify_signature(
        &core_alg,
        input.as_bytes(),
        &URL_SAFE_NO_PAD.decode(signature).unwrap(),
    )
    .expect("the statement verifies with the published key");
    let payload = input.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}
