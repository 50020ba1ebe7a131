//! The demo OpenID provider: just enough of an Authentik-shaped provider for
//! `billguard demo`, and never for anything else.
//!
//! It knows one confidential client (billguard, with a secret made at start)
//! and the demo users in [`USERS`]. Its sign-in page lets anyone pick a user
//! without a password, and says so. Everything billguard checks is real: an
//! RS256 key generated at start signs the ID tokens and is published in the
//! JWKS, discovery states the exact issuer, the token endpoint authenticates
//! the client (`client_secret_basic`), redeems each code once, within a
//! minute, for the redirect URI it was issued to, and only with the PKCE
//! verifier of its challenge.
//!
//! Routes (Authentik's, for an application slugged `bill-tracker`):
//! - `GET  /` — what this is;
//! - `GET  /application/o/bill-tracker/.well-known/openid-configuration`;
//! - `GET  /application/o/authorize/` — the sign-in page; `POST` picks a user;
//! - `POST /application/o/token/`, `GET|POST /application/o/userinfo/`;
//! - `GET  /application/o/bill-tracker/jwks/`, `.../end-session/`.
//!
//! It binds loopback addresses only: [`Provider::start`] refuses others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use askama::Template;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use openidconnect::core::{
    CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::{
    AccessToken, AdditionalClaims, Audience, EndUserEmail, EndUserName, EndUserUsername, IdToken,
    IdTokenClaims, IssuerUrl, JsonWebKeyId, JsonWebKeySet, LocalizedClaim, Nonce,
    PrivateSigningKey, StandardClaims, SubjectIdentifier,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::{Url, form_urlencoded};

use super::{Error, bind_loopback, serve_http};

pub const CLIENT_ID: &str = "billguard-demo";
pub const ADMIN_GROUP: &str = "bill-tracker-admins";

const ISSUER_PATH: &str = "/application/o/bill-tracker/";
const DISCOVERY_PATH: &str = "/application/o/bill-tracker/.well-known/openid-configuration";
const AUTHORIZE_PATH: &str = "/application/o/authorize/";
const TOKEN_PATH: &str = "/application/o/token/";
const USERINFO_PATH: &str = "/application/o/userinfo/";
const JWKS_PATH: &str = "/application/o/bill-tracker/jwks/";
const END_SESSION_PATH: &str = "/application/o/bill-tracker/end-session/";

const CODE_LIFETIME: Duration = Duration::from_secs(60);
const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Codes and access tokens kept at most; the oldest go first.
const MAX_GRANTS: usize = 1000;
const RSA_BITS: usize = 2048;

/// A demo user: anyone may sign in as any of them.
pub struct User {
    pub username: &'static str,
    pub name: &'static str,
    pub email: &'static str,
    pub groups: &'static [&'static str],
}

pub const USERS: &[User] = &[
    User {
        username: "ada",
        name: "Ada Admin",
        email: "ada@example.com",
        groups: &[ADMIN_GROUP, "staff"],
    },
    User {
        username: "bob",
        name: "Bob User",
        email: "bob@example.com",
        groups: &["staff"],
    },
    User {
        username: "carol",
        name: "Carol Guest",
        email: "carol@example.com",
        groups: &[],
    },
];

/// A running demo provider; it stops when dropped.
pub(super) struct Provider {
    issuer: String,
    client_secret: String,
    task: JoinHandle<()>,
}

/// The client the provider knows: billguard, where it runs.
#[derive(Clone, Debug)]
pub(super) struct Client {
    pub(super) redirect_uri: String,
    pub(super) post_logout_redirect_uri: String,
}

// === impl Provider ===

impl Provider {
    /// Binds `addr` (loopback only), makes a signing key and a client
    /// secret, and serves.
    pub(super) async fn start(addr: SocketAddr, client: Client) -> Result<Provider, Error> {
        let listener = bind_loopback(addr, "the demo provider").await?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let key = tokio::task::spawn_blocking(signing_key)
            .await
            .map_err(|e| Error::Key(e.to_string()))??;

        let shared = Arc::new(Shared {
            base: format!("http://{local}"),
            issuer: format!("http://{local}{ISSUER_PATH}"),
            client_secret: random_token(),
            client,
            key,
            state: Mutex::new(State::default()),
        });
        let issuer = shared.issuer.clone();
        let client_secret = shared.client_secret.clone();
        let task = tokio::spawn(serve(listener, shared));
        Ok(Provider {
            issuer,
            client_secret,
            task,
        })
    }

    /// `http://127.0.0.1:<port>/application/o/bill-tracker/`.
    pub(super) fn issuer(&self) -> &str {
        &self.issuer
    }

    pub(super) fn client_secret(&self) -> &str {
        &self.client_secret
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === server ===

struct Shared {
    base: String,
    issuer: String,
    client_secret: String,
    client: Client,
    key: CoreRsaPrivateSigningKey,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    codes: HashMap<String, Grant>,
    access_tokens: HashMap<String, (&'static User, Instant)>,
}

/// What an authorization code stands for until it is redeemed.
struct Grant {
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    user: &'static User,
    issued: Instant,
}

type Resp = Response<Full<Bytes>>;

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    serve_http(listener, move |req| {
        let shared = shared.clone();
        async move { route(&shared, req).await }
    })
    .await;
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Resp {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/") => html(StatusCode::OK, render(&HomePage { users: USERS })),
        (Method::GET, DISCOVERY_PATH) => discovery(shared),
        (Method::GET, AUTHORIZE_PATH) => authorize_page(shared, &query(&req)),
        (Method::POST, AUTHORIZE_PATH) => match read_form(req).await {
            Ok(form) => authorize(shared, &form),
            Err(resp) => resp,
        },
        (Method::POST, TOKEN_PATH) => token(shared, req).await,
        (Method::GET | Method::POST, USERINFO_PATH) => userinfo(shared, req.headers()),
        (Method::GET, JWKS_PATH) => jwks(shared),
        (Method::GET, END_SESSION_PATH) => end_session(shared, &query(&req)),
        (_, DISCOVERY_PATH | AUTHORIZE_PATH | TOKEN_PATH | JWKS_PATH | END_SESSION_PATH) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

// === endpoints ===

fn discovery(shared: &Shared) -> Resp {
    let base = &shared.base;
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": shared.issuer,
            "authorization_endpoint": format!("{base}{AUTHORIZE_PATH}"),
            "token_endpoint": format!("{base}{TOKEN_PATH}"),
            "userinfo_endpoint": format!("{base}{USERINFO_PATH}"),
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "end_session_endpoint": format!("{base}{END_SESSION_PATH}"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub", "iss", "aud", "exp", "iat", "nonce", "at_hash", "email",
                "email_verified", "name", "preferred_username", "groups",
            ],
        }),
    )
}

/// The sign-in page: the authorization request must be valid before any
/// user can be picked, and each choice re-submits it.
fn authorize_page(shared: &Shared, params: &HashMap<String, String>) -> Resp {
    let request = match AuthRequest::parse(shared, params) {
        Ok(request) => request,
        Err(reason) => return bad_request(reason),
    };
    let page = SignInPage {
        action: AUTHORIZE_PATH,
        fields: request.fields(),
        users: USERS,
    };
    html(StatusCode::OK, render(&page))
}

/// The chosen user is signed in: a single-use code goes back to the client.
fn authorize(shared: &Shared, form: &HashMap<String, String>) -> Resp {
    let request = match AuthRequest::parse(shared, form) {
        Ok(request) => request,
        Err(reason) => return bad_request(reason),
    };
    let chosen = form.get("user").map(String::as_str);
    let Some(user) = USERS.iter().find(|u| Some(u.username) == chosen) else {
        return bad_request("pick one of the demo users");
    };

    let code = random_token();
    {
        let mut state = shared.state();
        prune(&mut state.codes, |g| g.issued);
        state.codes.insert(
            code.clone(),
            Grant {
                redirect_uri: request.redirect_uri.clone(),
                code_challenge: request.code_challenge.clone(),
                nonce: request.nonce.clone(),
                user,
                issued: Instant::now(),
            },
        );
    }

    // RFC 9207: `iss` tells the client which provider answered.
    let mut target = request.redirect;
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &request.state)
        .append_pair("iss", &shared.issuer);
    found(target.as_str())
}

/// The token endpoint: client authentication, then the code grant with PKCE.
async fn token(shared: &Shared, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let form = match read_body_form(body).await {
        Ok(form) => form,
        Err(resp) => return resp,
    };

    // RFC 6749 §2.3.1: the client authenticates with HTTP Basic.
    let authenticated = basic_credentials(&parts.headers).is_some_and(|(id, secret)| {
        id == CLIENT_ID && bool::from(secret.as_bytes().ct_eq(shared.client_secret.as_bytes()))
    });
    if !authenticated {
        let mut resp = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"bill-tracker\""),
        );
        return resp;
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }

    // Codes are single-use: take it out before checking anything about it.
    let grant = form
        .get("code")
        .and_then(|code| shared.state().codes.remove(code));
    let Some(grant) = grant else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let fresh = grant.issued.elapsed() < CODE_LIFETIME;
    let same_redirect = form.get("redirect_uri") == Some(&grant.redirect_uri);
    let pkce = form
        .get("code_verifier")
        .is_some_and(|verifier| pkce_matches(verifier, &grant.code_challenge));
    if !(fresh && same_redirect && pkce) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }

    let access_token = random_token();
    let Ok(id_token) = id_token(shared, &grant, &access_token) else {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    {
        let mut state = shared.state();
        prune(&mut state.access_tokens, |(_, issued)| *issued);
        state
            .access_tokens
            .insert(access_token.clone(), (grant.user, Instant::now()));
    }
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME.as_secs(),
            "id_token": id_token,
        }),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn userinfo(shared: &Shared, headers: &HeaderMap) -> Resp {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let user = bearer.and_then(|token| {
        let state = shared.state();
        let (user, issued) = state.access_tokens.get(token)?;
        (issued.elapsed() < TOKEN_LIFETIME).then_some(*user)
    });
    let Some(user) = user else {
        let mut resp = oauth_error(StatusCode::UNAUTHORIZED, "invalid_token");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return resp;
    };
    json_response(
        StatusCode::OK,
        &json!({
            "sub": subject(user),
            "email": user.email,
            "email_verified": true,
            "name": user.name,
            "preferred_username": user.username,
            "groups": user.groups,
        }),
    )
}

fn jwks(shared: &Shared) -> Resp {
    let set = JsonWebKeySet::new(vec![shared.key.as_verification_key()]);
    match serde_json::to_value(set) {
        Ok(set) => json_response(StatusCode::OK, &set),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot serialize the JWKS",
        ),
    }
}

/// RP-initiated logout: a page that says so, with the way back to the app
/// when the client asked for its registered address.
fn end_session(shared: &Shared, params: &HashMap<String, String>) -> Resp {
    let back = params
        .get("post_logout_redirect_uri")
        .filter(|uri| **uri == shared.client.post_logout_redirect_uri)
        .map(String::as_str);
    html(StatusCode::OK, render(&SignedOutPage { back }))
}

// === the authorization request ===

/// A checked authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3).
struct AuthRequest {
    redirect_uri: String,
    redirect: Url,
    state: String,
    nonce: Option<String>,
    scope: String,
    code_challenge: String,
}

impl AuthRequest {
    fn parse(shared: &Shared, params: &HashMap<String, String>) -> Result<Self, &'static str> {
        let param = |name: &str| params.get(name).map(String::as_str);

        if param("client_id") != Some(CLIENT_ID) {
            return Err("unknown client_id");
        }
        // Exact match with the registered redirect URI, before anything is
        // sent back to it.
        let Some(redirect_uri) = param("redirect_uri") else {
            return Err("missing redirect_uri");
        };
        if redirect_uri != shared.client.redirect_uri {
            return Err("redirect_uri is not the one registered for this client");
        }
        let redirect = Url::parse(redirect_uri).map_err(|_| "redirect_uri is not a URL")?;
        if param("response_type") != Some("code") {
            return Err("response_type must be code");
        }
        let scope = param("scope").unwrap_or_default();
        if !scope.split_ascii_whitespace().any(|s| s == "openid") {
            return Err("scope must contain openid");
        }
        if param("code_challenge_method") != Some("S256") {
            return Err("code_challenge_method must be S256 (PKCE is required)");
        }
        let code_challenge = param("code_challenge").unwrap_or_default();
        if code_challenge.len() != 43 {
            return Err("code_challenge must be a base64url SHA-256 digest");
        }
        let Some(state) = param("state").filter(|s| !s.is_empty()) else {
            return Err("missing state");
        };
        Ok(AuthRequest {
            redirect_uri: redirect_uri.to_owned(),
            redirect,
            state: state.to_owned(),
            nonce: param("nonce").map(str::to_owned),
            scope: scope.to_owned(),
            code_challenge: code_challenge.to_owned(),
        })
    }

    /// The request again, as hidden form fields of the sign-in page.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("client_id", CLIENT_ID.to_owned()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("response_type", "code".to_owned()),
            ("scope", self.scope.clone()),
            ("state", self.state.clone()),
            ("code_challenge", self.code_challenge.clone()),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if let Some(nonce) = &self.nonce {
            fields.push(("nonce", nonce.clone()));
        }
        fields
    }
}

// === tokens ===

#[derive(Clone, Debug, Deserialize, Serialize)]
struct GroupsClaim {
    groups: Vec<String>,
}

impl AdditionalClaims for GroupsClaim {}

type DemoIdToken = IdToken<
    GroupsClaim,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

fn id_token(shared: &Shared, grant: &Grant, access_token: &str) -> Result<String, String> {
    let user = grant.user;
    let now = SystemTime::now();
    let standard = StandardClaims::new(SubjectIdentifier::new(subject(user)))
        .set_email(Some(EndUserEmail::new(user.email.to_owned())))
        .set_email_verified(Some(true))
        .set_name(Some(LocalizedClaim::from(EndUserName::new(
            user.name.to_owned(),
        ))))
        .set_preferred_username(Some(EndUserUsername::new(user.username.to_owned())));
    let groups = GroupsClaim {
        groups: user.groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    let claims = IdTokenClaims::new(
        IssuerUrl::new(shared.issuer.clone()).map_err(|e| e.to_string())?,
        vec![Audience::new(CLIENT_ID.to_owned())],
        (now + TOKEN_LIFETIME).into(),
        now.into(),
        standard,
        groups,
    )
    .set_nonce(grant.nonce.clone().map(Nonce::new));

    let access_token = AccessToken::new(access_token.to_owned());
    DemoIdToken::new(
        claims,
        &shared.key,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        Some(&access_token),
        None,
    )
    .map(|token| token.to_string())
    .map_err(|e| e.to_string())
}

/// A fresh RSA key for this run; the demo's tokens verify against nothing
/// else. Slow in debug builds, so it runs on a blocking thread.
fn signing_key() -> Result<CoreRsaPrivateSigningKey, Error> {
    use rsa::pkcs1::{EncodeRsaPrivateKey as _, LineEnding};

    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
        .map_err(|e| Error::Key(e.to_string()))?;
    let pem = key
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| Error::Key(e.to_string()))?;
    let kid = JsonWebKeyId::new(format!("demo-{}", &random_token()[..8]));
    CoreRsaPrivateSigningKey::from_pem(&pem, Some(kid)).map_err(Error::Key)
}

fn subject(user: &User) -> String {
    format!("demo-{}", user.username)
}

/// RFC 7636 §4.6: BASE64URL(SHA256(code_verifier)) equals the challenge.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    // §4.1: 43 to 128 characters.
    if !(43..=128).contains(&verifier.len()) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

/// Reads HTTP Basic client credentials; RFC 6749 §2.3.1 form-encodes the id
/// and secret before they are joined and base64-encoded.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// Drops expired entries, then the oldest, so the map stays bounded.
fn prune<V>(map: &mut HashMap<String, V>, issued: impl Fn(&V) -> Instant) {
    map.retain(|_, v| issued(v).elapsed() < TOKEN_LIFETIME);
    while map.len() >= MAX_GRANTS {
        let oldest = map
            .iter()
            .min_by_key(|(_, v)| issued(v))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(key) => map.remove(&key),
            None => break,
        };
    }
}

// === pages ===

#[derive(Template)]
#[template(path = "demo/provider_home.html")]
struct HomePage {
    users: &'static [User],
}

#[derive(Template)]
#[template(path = "demo/sign_in.html")]
struct SignInPage {
    action: &'static str,
    fields: Vec<(&'static str, String)>,
    users: &'static [User],
}

#[derive(Template)]
#[template(path = "demo/signed_out.html")]
struct SignedOutPage<'a> {
    back: Option<&'a str>,
}

fn render(page: &impl Template) -> String {
    page.render()
        .unwrap_or_else(|_| "<!doctype html><title>demo provider</title><p>Page error.</p>".into())
}

// === helpers ===

async fn read_form(req: Request<Incoming>) -> Result<HashMap<String, String>, Resp> {
    read_body_form(req.into_body()).await
}

async fn read_body_form(body: Incoming) -> Result<HashMap<String, String>, Resp> {
    let Ok(body) = Limited::new(body, MAX_FORM_BYTES).collect().await else {
        return Err(text(StatusCode::BAD_REQUEST, "form too large or cut short"));
    };
    Ok(form_urlencoded::parse(&body.to_bytes())
        .into_owned()
        .collect())
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    let query = req.uri().query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(component: &str) -> String {
    // An encoded component holds no raw `=` or `&`, so it parses as one key.
    form_urlencoded::parse(component.as_bytes())
        .next()
        .map(|(key, _)| key.into_owned())
        .unwrap_or_default()
}

/// 32 random bytes, base64url: codes, access tokens, the client secret.
pub(super) fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn bad_request(reason: &'static str) -> Resp {
    text(StatusCode::BAD_REQUEST, reason)
}

fn oauth_error(status: StatusCode, error: &str) -> Resp {
    json_response(status, &json!({ "error": error }))
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    respond(status, "application/json", body.to_string())
}

fn html(status: StatusCode, body: String) -> Resp {
    respond(status, "text/html; charset=utf-8", body)
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn found(location: &str) -> Resp {
    let Ok(location) = HeaderValue::from_str(location) else {
        return text(
            StatusCode::BAD_REQUEST,
            "redirect target is not a valid header value",
        );
    };
    let mut resp = text(StatusCode::FOUND, "");
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_accepts_only_the_verifier_of_the_challenge() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK",
            challenge
        ));
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches("short", challenge));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("billguard-demo:a%2Bb+c");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("billguard-demo".to_owned(), "a+b c".to_owned()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&headers), None);
    }

    #[test]
    fn demo_users_cover_admin_and_plain_users() {
        assert!(USERS.iter().any(|u| u.groups.contains(&ADMIN_GROUP)));
        assert!(USERS.iter().any(|u| !u.groups.contains(&ADMIN_GROUP)));
    }
}
