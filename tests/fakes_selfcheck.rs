//! Proves the integration-test fakes work on their own, before any billguard test leans on them.
//!
//! The fake provider is driven by openidconnect's client exactly as a relying party would
//! (discovery, authorization with PKCE, code exchange, ID-token verification, userinfo), and
//! every misbehave switch is shown to make that client fail while a reset makes it pass again.
//! The echo upstream is checked for streamed bodies, big responses and WebSocket echo, and the
//! browser for its cookie jar and redirect walking, against a small cookie-setting server here.

#[path = "it/support/browser.rs"]
pub mod browser;
#[path = "it/support/provider.rs"]
pub mod provider;
#[path = "it/support/upstream.rs"]
pub mod upstream;

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _, stream};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields,
    IdTokenVerifier, IssuerUrl, Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, RedirectUrl,
    RequestTokenError, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse, SubjectIdentifier, TokenResponse as _, UserInfoError,
};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use browser::Browser;
use provider::{AuthMethod, Misbehave, Provider, ProviderOptions};
use upstream::Upstream;

const CALLBACK: &str = "http://127.0.0.1:9/_billguard/callback";

// === provider ===

#[tokio::test]
async fn code_flow_signs_in_alice_with_her_groups() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    let login = rp.login().await.expect("code exchange succeeds");
    let claims = login
        .claims(&rp.client.id_token_verifier())
        .expect("ID token verifies");

    assert_eq!(claims.issuer().as_str(), provider.issuer());
    assert!(provider.issuer().ends_with("/application/o/bill-tracker/"));
    assert_eq!(claims.subject().as_str(), "sub-alice");
    assert_eq!(claims.audiences()[0].as_str(), "billguard-test");
    assert_eq!(
        claims.email().map(|e| e.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(claims.email_verified(), Some(true));
    let username = claims.preferred_username().map(|u| u.as_str());
    assert_eq!(username, Some("alice"));
    assert_eq!(
        claims.additional_claims().groups,
        json!(["bill-tracker-admins", "staff"])
    );
    assert_eq!(login.kid(), "billguard-test-key-1");

    let authorize = provider.last_authorize().expect("authorize was recorded");
    assert_eq!(authorize["code_challenge_method"], "S256");
    assert_eq!(authorize["redirect_uri"], CALLBACK);
    assert_eq!(authorize["nonce"], login.nonce.secret().as_str());
    assert_eq!(authorize["scope"], "openid email profile groups");
    assert_eq!(provider.token_auth_methods_seen(), [AuthMethod::Basic]);
    assert_eq!(provider.jwks_fetches(), 1);
    assert_eq!(provider.discovery_fetches(), 1);

    let userinfo = rp
        .userinfo(&login, "sub-alice")
        .await
        .expect("userinfo answers");
    assert_eq!(
        userinfo.email().map(|e| e.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(
        userinfo.additional_claims().groups,
        json!(["bill-tracker-admins", "staff"])
    );
}

#[tokio::test]
async fn login_as_switches_the_user_and_groups_keep_their_shape() {
    let mut opts = ProviderOptions::default();
    opts.users[1].groups = json!("staff");
    let provider = Provider::start(opts).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    provider.login_as("bob");
    let login = rp.login().await.expect("code exchange succeeds");
    let claims = login
        .claims(&rp.client.id_token_verifier())
        .expect("ID token verifies");

    assert_eq!(claims.subject().as_str(), "sub-bob");
    assert_eq!(claims.preferred_username(), None);
    assert_eq!(claims.additional_claims().groups, json!("staff"));
}

#[tokio::test]
async fn token_endpoint_accepts_only_the_configured_client_auth_method() {
    let opts = ProviderOptions {
        auth_method: AuthMethod::Post,
        ..ProviderOptions::default()
    };
    let provider = Provider::start(opts).await;

    let basic = RelyingParty::discover(&provider, AuthType::BasicAuth).await;
    let error = basic.login().await.expect_err("Basic is refused");
    assert_eq!(error, Refused::Oauth(CoreErrorResponseType::InvalidClient));

    let post = RelyingParty::discover(&provider, AuthType::RequestBody).await;
    let login = post.login().await.expect("client_secret_post is accepted");
    login
        .claims(&post.client.id_token_verifier())
        .expect("ID token verifies");

    let seen = provider.token_auth_methods_seen();
    assert_eq!(seen, [AuthMethod::Basic, AuthMethod::Post]);
}

#[tokio::test]
async fn codes_are_single_use_and_bound_to_the_pkce_verifier() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    let (code, verifier) = rp.authorize().await;
    let replayed_verifier = PkceCodeChallenge::new_random_sha256().1;
    let wrong = rp.exchange(code.clone(), replayed_verifier).await;
    assert_eq!(
        wrong.err(),
        Some(Refused::Oauth(CoreErrorResponseType::InvalidGrant))
    );

    // The failed attempt used the code up, like any other redemption.
    let again = rp.exchange(code, verifier).await;
    assert_eq!(
        again.err(),
        Some(Refused::Oauth(CoreErrorResponseType::InvalidGrant))
    );

    let (code, verifier) = rp.authorize().await;
    let secret = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
    assert_eq!(
        provider.last_authorize().unwrap()["code_challenge"],
        secret.as_str()
    );
    rp.exchange(code.clone(), verifier)
        .await
        .expect("the first redemption works");
    let replay = rp
        .exchange(code, PkceCodeChallenge::new_random_sha256().1)
        .await;
    assert_eq!(
        replay.err(),
        Some(Refused::Oauth(CoreErrorResponseType::InvalidGrant))
    );
}

#[tokio::test]
async fn authorize_rejects_requests_without_pkce_or_openid() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let browser = Browser::new();
    let base = format!(
        "{}/application/o/authorize/?client_id=billguard-test&response_type=code\
         &redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&state=s",
        provider.url()
    );

    let no_pkce = browser.get(&format!("{base}&scope=openid")).await;
    assert_eq!(no_pkce.status, 400);
    assert!(
        no_pkce.text().contains("code_challenge_method"),
        "{}",
        no_pkce.text()
    );
    assert_eq!(provider.last_authorize().unwrap()["state"], "s");

    let pkce = "&code_challenge_method=S256&code_challenge=abc";
    let no_openid = browser.get(&format!("{base}&scope=email{pkce}")).await;
    assert_eq!(no_openid.status, 400);

    let unknown = browser
        .get(&format!("{base}&scope=openid{pkce}").replace("billguard-test", "nobody"))
        .await;
    assert_eq!(unknown.status, 400);

    let good = browser.get(&format!("{base}&scope=openid{pkce}")).await;
    assert_eq!(good.status, 302);
    let location = good.location_url().expect("a redirect back");
    assert_eq!(location.path(), "/cb");
}

#[tokio::test]
async fn denied_login_redirects_back_with_the_error_and_state() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    provider.deny_next_login("access_denied");
    let (url, csrf) = rp.authorize_url();
    let resp = rp.browser.get(url.as_str()).await;

    assert_eq!(resp.status, 302);
    let query = query_of(&resp.location_url().expect("a redirect back"));
    assert_eq!(
        query.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert!(query.contains_key("error_description"));
    assert_eq!(query.get("state"), Some(csrf.secret()));
    assert!(!query.contains_key("code"));

    // Only the next login is denied.
    rp.login().await.expect("the login after a denial works");
}

#[tokio::test]
async fn state_with_reserved_characters_comes_back_exactly() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let browser = Browser::new();
    let state = "a b&c=d/é+%";
    let url = url::Url::parse_with_params(
        &format!("{}/application/o/authorize/", provider.url()),
        &[
            ("client_id", "billguard-test"),
            ("response_type", "code"),
            ("scope", "openid"),
            ("redirect_uri", "http://127.0.0.1:9/cb?keep=1"),
            ("code_challenge_method", "S256"),
            ("code_challenge", "abc"),
            ("state", state),
        ],
    )
    .unwrap();

    let resp = browser.get(url.as_str()).await;

    let back = query_of(&resp.location_url().expect("a redirect back"));
    assert_eq!(back.get("state").map(String::as_str), Some(state));
    assert_eq!(back.get("keep").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn each_misbehaviour_makes_verification_fail_until_reset() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    for (how, expected) in [
        (Misbehave::BadSignature, "SignatureVerification(CryptoError"),
        (Misbehave::AlgNone, "SignatureVerification(NoSignature"),
        (Misbehave::Hs256, "SignatureVerification(DisallowedAlg"),
        (Misbehave::WrongIssuer, "InvalidIssuer"),
        (Misbehave::WrongAudience, "InvalidAudience"),
        (Misbehave::Expired, "Expired"),
        (Misbehave::NonceMismatch, "InvalidNonce"),
    ] {
        provider.misbehave(how);
        let login = rp.login().await.expect("the token endpoint still answers");
        let error = login
            .claims(&rp.client.id_token_verifier())
            .expect_err(&format!("{how:?} must fail verification"));
        let error = format!("{error:?}");
        assert!(
            error.starts_with(expected),
            "{how:?}: got {error}, want {expected}"
        );

        provider.reset();
        let login = rp
            .login()
            .await
            .expect("code exchange succeeds after reset");
        let verified = login.claims(&rp.client.id_token_verifier());
        assert!(
            verified.is_ok(),
            "{how:?} still on after reset: {verified:?}"
        );
    }
}

#[tokio::test]
async fn hs256_tokens_are_signed_with_the_client_secret() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    provider.misbehave(Misbehave::Hs256);
    let login = rp.login().await.expect("code exchange succeeds");
    let verifier = rp
        .client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::HmacSha256]);

    let claims = login
        .claims(&verifier)
        .expect("HS256 verifies with the client secret");
    assert_eq!(claims.subject().as_str(), "sub-alice");
}

#[tokio::test]
async fn token_error_answers_invalid_grant() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    provider.misbehave(Misbehave::TokenError);
    let error = rp.login().await.expect_err("the token endpoint refuses");

    assert_eq!(error, Refused::Oauth(CoreErrorResponseType::InvalidGrant));
}

#[tokio::test]
async fn claims_only_in_userinfo_leaves_the_id_token_bare() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    provider.misbehave(Misbehave::ClaimsOnlyInUserinfo);
    let login = rp.login().await.expect("code exchange succeeds");
    let claims = login
        .claims(&rp.client.id_token_verifier())
        .expect("ID token verifies");

    assert_eq!(claims.email(), None);
    assert_eq!(claims.preferred_username(), None);
    assert_eq!(claims.additional_claims().groups, Value::Null);
    let payload = login.payload();
    let mut names: Vec<&str> = payload
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["at_hash", "aud", "exp", "iat", "iss", "nonce", "sid", "sub"]
    );

    let userinfo = rp
        .userinfo(&login, "sub-alice")
        .await
        .expect("userinfo answers");
    assert_eq!(
        userinfo.email().map(|e| e.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(
        userinfo.preferred_username().map(|u| u.as_str()),
        Some("alice")
    );
    assert_eq!(
        userinfo.additional_claims().groups,
        json!(["bill-tracker-admins", "staff"])
    );
}

#[tokio::test]
async fn userinfo_wrong_sub_is_caught_by_the_client() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;
    let login = rp.login().await.expect("code exchange succeeds");

    provider.misbehave(Misbehave::UserinfoWrongSub);
    let error = rp
        .userinfo(&login, "sub-alice")
        .await
        .expect_err("the sub differs");

    let UserInfoError::ClaimsVerification(ClaimsVerificationError::InvalidSubject(_)) = error
    else {
        panic!("want InvalidSubject, got {error:?}");
    };
}

#[tokio::test]
async fn userinfo_refuses_unknown_access_tokens() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let browser = Browser::new();
    let url = format!("{}/application/o/userinfo/", provider.url());

    let resp = browser
        .request(
            Method::GET,
            &url,
            &[("authorization", "Bearer made-up")],
            "",
        )
        .await;

    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["error"], "invalid_token");
}

#[tokio::test]
async fn unavailable_provider_fails_discovery_until_reset() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let http = http_client();
    let issuer = IssuerUrl::new(provider.issuer()).unwrap();

    provider.misbehave(Misbehave::Unavailable);
    let down = CoreProviderMetadata::discover_async(issuer.clone(), &http).await;
    assert!(
        down.is_err(),
        "discovery must fail while the provider is down"
    );
    let token = Browser::new()
        .request(
            Method::POST,
            &format!("{}/application/o/token/", provider.url()),
            &[],
            "",
        )
        .await;
    assert_eq!(token.status, 503);

    provider.reset();
    CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .expect("discovery works again after reset");
    assert_eq!(provider.discovery_fetches(), 2);
}

#[tokio::test]
async fn rotated_key_signs_new_tokens_and_the_jwks_serves_both() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let rp = RelyingParty::discover(&provider, AuthType::BasicAuth).await;

    provider.rotate_key();
    let login = rp.login().await.expect("code exchange succeeds");
    assert_eq!(login.kid(), "billguard-test-key-2");
    assert_eq!(provider.current_kid(), "billguard-test-key-2");

    // The client still holds the JWKS from discovery, which lacks the new key.
    let stale = login.claims(&rp.client.id_token_verifier());
    let Err(ClaimsVerificationError::SignatureVerification(
        SignatureVerificationError::NoMatchingKey,
    )) = stale
    else {
        panic!("want NoMatchingKey with the old JWKS, got {stale:?}");
    };

    let jwks_url = rp.metadata.jwks_uri().clone();
    let jwks: CoreJsonWebKeySet = CoreJsonWebKeySet::fetch_async(&jwks_url, &http_client())
        .await
        .expect("the JWKS is served");
    assert_eq!(jwks.keys().len(), 2);
    assert_eq!(provider.jwks_fetches(), 2);
    let verifier = IdTokenVerifier::new_confidential_client(
        ClientId::new(provider.client_id()),
        ClientSecret::new(provider.client_secret()),
        IssuerUrl::new(provider.issuer()).unwrap(),
        jwks,
    );
    login
        .claims(&verifier)
        .expect("the refetched JWKS verifies the new key");
}

#[tokio::test]
async fn end_session_records_the_request_and_redirects_back() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let browser = Browser::new();
    let end_session = format!("{}/application/o/bill-tracker/end-session/", provider.url());

    let back_to = "post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fbye";
    let query = format!("id_token_hint=tok&{back_to}&state=xyz");
    let back = browser.get(&format!("{end_session}?{query}")).await;
    assert_eq!(back.status, 302);
    assert_eq!(back.location(), Some("http://127.0.0.1:9/bye?state=xyz"));
    let recorded = provider
        .last_end_session()
        .expect("end session was recorded");
    assert_eq!(recorded["id_token_hint"], "tok");

    let plain = browser.get(&end_session).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.text(), "signed out");
}

#[tokio::test]
async fn dropped_fakes_stop_serving() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let upstream = Upstream::start().await;
    let discovery = format!("{}.well-known/openid-configuration", provider.issuer());
    let echo = upstream.url();
    let browser = Browser::new();
    assert_eq!(browser.fetch(&discovery).await.status, 200);
    assert_eq!(browser.fetch(&echo).await.status, 200);

    drop(provider);
    drop(upstream);

    // A fresh client, so no pooled connection can hide a closed listener.
    let empty = Browser::new();
    let none = [];
    let down = empty.try_request(Method::GET, &discovery, &none, "").await;
    assert!(down.is_err(), "the provider still answered: {down:?}");
    let down = empty.try_request(Method::GET, &echo, &none, "").await;
    assert!(down.is_err(), "the upstream still answered: {down:?}");
}

// === upstream ===

#[tokio::test]
async fn upstream_echoes_a_streamed_body_and_repeated_headers() {
    let upstream = Upstream::start().await;
    let chunks: Vec<Result<Bytes, Infallible>> = (0..40u8)
        .map(|i| Ok(Bytes::from(vec![i; 32 * 1024 + 7])))
        .collect();
    let mut digest = Sha256::new();
    chunks.iter().flatten().for_each(|c| digest.update(c));
    let body = reqwest::Body::wrap_stream(stream::iter(chunks));

    let resp = reqwest::Client::new()
        .put(format!("{}/upload/it?name=a%20b&x=1", upstream.url()))
        .header("x-dup", "one")
        .header("x-other", "between")
        .header("x-dup", "two")
        .header("x-bytes", &b"caf\xe9"[..])
        .body(body)
        .send()
        .await
        .expect("the upstream answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = resp.bytes().await.expect("the echo arrives");
    let echo: Value = serde_json::from_slice(&body).expect("the echo is JSON");

    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/upload/it?name=a%20b&x=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["body_bytes"], 40 * (32 * 1024 + 7));
    assert_eq!(echo["body_sha256"], hex(&digest.finalize()));
    assert_eq!(header_values(&echo, "x-dup"), ["one", "two"]);
    assert_eq!(header_values(&echo, "x-bytes"), ["caf\u{fffd}"]);
    assert_eq!(header_values(&echo, "transfer-encoding"), ["chunked"]);
    assert_eq!(upstream.requests_seen(), 1);
}

#[tokio::test]
async fn upstream_streams_big_responses() {
    let upstream = Upstream::start().await;
    let browser = Browser::new();
    let size = 3 * 64 * 1024 + 123;

    let big = browser
        .fetch(&format!("{}/big?bytes={size}", upstream.url()))
        .await;
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), size);
    assert!(big.body.iter().all(|&b| b == b'x'));
    assert_eq!(big.header("content-length"), None);

    let empty = browser
        .fetch(&format!("{}/big?bytes=0", upstream.url()))
        .await;
    assert_eq!(empty.body.len(), 0);
    let bad = browser
        .fetch(&format!("{}/big?bytes=lots", upstream.url()))
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn upstream_echoes_websocket_messages_and_reports_the_user() {
    let upstream = Upstream::start().await;
    let url = format!("ws://{}/socket", upstream.addr());
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-user", "alice".parse().unwrap());

    let (mut socket, resp) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-upstream-saw-user"], "alice");

    socket.send(Message::text("hello")).await.unwrap();
    let reply = socket.next().await.expect("a reply").unwrap();
    assert_eq!(reply, Message::text("echo: hello"));

    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let reply = socket.next().await.expect("a reply").unwrap();
    assert_eq!(reply, Message::binary(vec![0u8, 1, 2, 255]));

    socket.close(None).await.unwrap();
    let closing = socket.next().await.expect("the close reply").unwrap();
    assert!(closing.is_close(), "want a close frame, got {closing:?}");
    assert_eq!(upstream.requests_seen(), 1);
}

// === browser ===

#[tokio::test]
async fn browser_keeps_secure_cookies_and_honours_deletions() {
    let server = CookieServer::start("http://unused.invalid").await;
    let browser = Browser::new();

    browser.get(&format!("{}/set", server.url)).await;
    assert_eq!(browser.cookie("session").as_deref(), Some("s1"));
    assert_eq!(browser.cookie("short").as_deref(), Some("2"));
    assert_eq!(browser.cookie("until2099").as_deref(), Some("3"));
    assert_eq!(browser.cookie("old").as_deref(), None);
    assert_eq!(browser.cookie("baddate").as_deref(), Some("5"));
    let session = browser.cookie_set_by("session").expect("set by the server");
    assert!(session.secure && session.http_only);
    assert_eq!(session.same_site.as_deref(), Some("Lax"));
    assert_eq!(session.path.as_deref(), Some("/"));
    assert_eq!(browser.set_cookie_headers_seen()[0], SET_COOKIES[0]);
    assert_eq!(browser.set_cookie_headers_seen().len(), SET_COOKIES.len());

    browser.set_cookie("manual", "m");
    assert_eq!(
        browser.cookie_header().as_deref(),
        Some("baddate=5; manual=m; session=s1; short=2; until2099=3")
    );

    browser.get(&format!("{}/delete", server.url)).await;
    assert_eq!(browser.cookie("session"), None);
    assert_eq!(browser.cookie("short"), None);
    assert_eq!(browser.cookie("until2099"), None);
    assert_eq!(
        browser.cookie_header().as_deref(),
        Some("baddate=5; manual=m")
    );

    browser.clear_cookies();
    assert_eq!(browser.cookie_header(), None);
}

#[tokio::test]
async fn browser_follows_redirects_across_hosts_carrying_cookies() {
    let upstream = Upstream::start().await;
    let server = CookieServer::start(&upstream.url()).await;
    let browser = Browser::new();

    let nav = browser.navigate(&format!("{}/hop", server.url)).await;

    let paths: Vec<String> = nav.urls().iter().map(|u| u.path().to_owned()).collect();
    assert_eq!(paths, ["/hop", "/hop2", "/landing"]);
    assert_eq!(nav.hops[0].status, 302);
    assert_eq!(nav.hops[1].status, 303);
    assert_eq!(nav.last.status, 200);
    assert_eq!(nav.last.url.port(), Some(upstream.addr().port()));
    let echo = nav.last.json();
    assert_eq!(echo["path"], "/landing?from=hop2");
    assert_eq!(header_values(&echo, "cookie"), ["hopped=yes"]);
    assert_eq!(header_values(&echo, "sec-fetch-mode"), ["navigate"]);
    assert_eq!(header_values(&echo, "sec-fetch-dest"), ["document"]);
}

#[tokio::test]
async fn browser_fetch_and_form_submit_send_their_own_headers() {
    let upstream = Upstream::start().await;
    let browser = Browser::new();

    let fetched = browser
        .fetch(&format!("{}/api", upstream.url()))
        .await
        .json();
    assert_eq!(header_values(&fetched, "accept"), ["*/*"]);
    assert_eq!(header_values(&fetched, "sec-fetch-mode"), ["cors"]);
    assert_eq!(header_values(&fetched, "sec-fetch-dest"), ["empty"]);

    browser.set_cookie("k", "v");
    let forged = browser
        .request(Method::GET, &upstream.url(), &[("cookie", "forged=1")], "")
        .await
        .json();
    assert_eq!(header_values(&forged, "cookie"), ["forged=1"]);

    let nav = browser
        .submit(
            &format!("{}/login", upstream.url()),
            &[("user", "a b"), ("pw", "&")],
        )
        .await;
    let posted = nav.last.json();
    assert_eq!(posted["method"], "POST");
    assert_eq!(posted["body_bytes"], "user=a+b&pw=%26".len());
    assert_eq!(header_values(&posted, "origin"), [upstream.url()]);
    assert_eq!(header_values(&posted, "cookie"), ["k=v"]);
}

// === a relying party, as billguard will be ===

#[derive(Clone, Debug, Deserialize, Serialize)]
struct Groups {
    #[serde(default)]
    groups: Value,
}

impl AdditionalClaims for Groups {}

type RpTokenResponse = StandardTokenResponse<
    IdTokenFields<
        Groups,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type RpClient = openidconnect::Client<
    Groups,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    RpTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

type RpIdTokenClaims = openidconnect::IdTokenClaims<Groups, CoreGenderClaim>;
type RpUserInfo = openidconnect::UserInfoClaims<Groups, CoreGenderClaim>;

struct RelyingParty {
    http: openidconnect::reqwest::Client,
    metadata: CoreProviderMetadata,
    client: RpClient,
    browser: Browser,
}

#[derive(Debug)]
struct Login {
    tokens: RpTokenResponse,
    nonce: Nonce,
}

/// Why a login stopped short of tokens.
#[derive(Debug, PartialEq)]
enum Refused {
    Oauth(CoreErrorResponseType),
    Other(String),
}

impl RelyingParty {
    async fn discover(provider: &Provider, auth: AuthType) -> RelyingParty {
        let http = http_client();
        let issuer = IssuerUrl::new(provider.issuer()).unwrap();
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .expect("discovery succeeds");
        let client = RpClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(provider.client_id()),
            Some(ClientSecret::new(provider.client_secret())),
        )
        .set_redirect_uri(RedirectUrl::new(CALLBACK.to_owned()).unwrap())
        .set_auth_type(auth);
        RelyingParty {
            http,
            metadata,
            client,
            browser: Browser::new(),
        }
    }

    /// Authorizes through the browser and redeems the code.
    async fn login(&self) -> Result<Login, Refused> {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, csrf, nonce) = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(["email", "profile", "groups"].map(|s| Scope::new(s.to_owned())))
            .set_pkce_challenge(challenge)
            .url();
        let code = self.follow_to_callback(url.as_str(), &csrf).await;
        let tokens = self.exchange(code, verifier).await?;
        Ok(Login { tokens, nonce })
    }

    /// Authorizes and hands back the code unredeemed, with its verifier.
    async fn authorize(&self) -> (AuthorizationCode, openidconnect::PkceCodeVerifier) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, csrf, _) = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .url();
        (self.follow_to_callback(url.as_str(), &csrf).await, verifier)
    }

    fn authorize_url(&self) -> (url::Url, CsrfToken) {
        let (challenge, _) = PkceCodeChallenge::new_random_sha256();
        let (url, csrf, _) = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .url();
        (url, csrf)
    }

    async fn follow_to_callback(&self, url: &str, csrf: &CsrfToken) -> AuthorizationCode {
        let resp = self.browser.get(url).await;
        assert_eq!(resp.status, 302, "authorize answered {}", resp.text());
        let back = resp.location_url().expect("authorize redirects back");
        assert!(back.as_str().starts_with(CALLBACK), "redirected to {back}");
        let query = query_of(&back);
        assert_eq!(query.get("state"), Some(csrf.secret()));
        AuthorizationCode::new(query["code"].clone())
    }

    async fn exchange(
        &self,
        code: AuthorizationCode,
        verifier: openidconnect::PkceCodeVerifier,
    ) -> Result<RpTokenResponse, Refused> {
        let request = self
            .client
            .exchange_code(code)
            .expect("the token URL is known");
        let result = request
            .set_pkce_verifier(verifier)
            .request_async(&self.http)
            .await;
        result.map_err(|error| match error {
            RequestTokenError::ServerResponse(body) => Refused::Oauth(body.error().clone()),
            other => Refused::Other(format!("{other:?}")),
        })
    }

    async fn userinfo(
        &self,
        login: &Login,
        sub: &str,
    ) -> Result<RpUserInfo, UserInfoError<openidconnect::HttpClientError<reqwest::Error>>> {
        let subject = SubjectIdentifier::new(sub.to_owned());
        let request = self
            .client
            .user_info(login.tokens.access_token().clone(), Some(subject))
            .expect("the userinfo URL is known");
        request.request_async(&self.http).await
    }
}

impl Login {
    fn claims<'a>(
        &'a self,
        verifier: &openidconnect::IdTokenVerifier<'_, CoreJsonWebKey>,
    ) -> Result<&'a RpIdTokenClaims, ClaimsVerificationError> {
        let id_token = self
            .tokens
            .id_token()
            .expect("the token response has an ID token");
        id_token.claims(verifier, &self.nonce)
    }

    /// The `kid` of the ID token's header.
    fn kid(&self) -> String {
        let header = self.segment(0);
        header["kid"].as_str().unwrap_or_default().to_owned()
    }

    /// The ID token's claims, decoded without verifying anything.
    fn payload(&self) -> Value {
        self.segment(1)
    }

    fn segment(&self, index: usize) -> Value {
        use base64::Engine as _;
        let token = self.tokens.id_token().unwrap().to_string();
        let part = token.split('.').nth(index).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&json).unwrap()
    }
}

// === a server that sets cookies, for the browser checks ===

const SET_COOKIES: &[&str] = &[
    "session=s1; Path=/; Secure; HttpOnly; SameSite=Lax",
    "short=2; Max-Age=3600",
    "until2099=3; Expires=Wed, 21 Oct 2099 07:28:00 GMT",
    "old=4; Expires=Wed, 21-Oct-2015 07:28:00 GMT",
    "baddate=5; Expires=someday",
];

const DELETE_COOKIES: &[&str] = &[
    "session=; Path=/; Max-Age=0",
    "short=; Max-Age=-1",
    "until2099=gone; Expires=Thu, 01 Jan 1970 00:00:01 GMT",
];

struct CookieServer {
    url: String,
}

impl CookieServer {
    /// Serves `/set`, `/delete`, and `/hop` → `/hop2` (relative) → `{next}/landing`.
    async fn start(next: &str) -> CookieServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let next = next.to_owned();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let next = next.clone();
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = cookie_route(req.uri().path(), &next);
                    async move { Ok::<_, Infallible>(resp) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        CookieServer { url }
    }
}

fn cookie_route(path: &str, next: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::builder();
    match path {
        "/set" => {
            for cookie in SET_COOKIES {
                resp = resp.header("set-cookie", *cookie);
            }
        }
        "/delete" => {
            for cookie in DELETE_COOKIES {
                resp = resp.header("set-cookie", *cookie);
            }
        }
        "/hop" => {
            resp = resp
                .status(302)
                .header("location", "/hop2")
                .header("set-cookie", "hopped=yes");
        }
        "/hop2" => {
            let location = format!("{next}/landing?from=hop2");
            resp = resp.status(303).header("location", location);
        }
        _ => resp = resp.status(404),
    }
    resp.body(Full::new(Bytes::new())).unwrap()
}

// === helpers ===

fn http_client() -> openidconnect::reqwest::Client {
    openidconnect::reqwest::ClientBuilder::new()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

fn query_of(url: &url::Url) -> std::collections::HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn header_values(echo: &Value, name: &str) -> Vec<String> {
    let headers = echo["headers"].as_array().expect("the echo lists headers");
    headers
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
