//! A fake OpenID Connect provider for the integration tests, shaped like Authentik.
//!
//! It serves Authentik's paths for an application slugged `bill-tracker` (discovery, authorize,
//! token, userinfo, JWKS, end session) from a hyper server on an ephemeral loopback port. There
//! is no login form: the authorize endpoint signs in the user chosen with
//! [`Provider::login_as`] and redirects straight back. ID tokens are signed with the RSA test
//! keys in `keys/` through openidconnect's own signing types, so no JWT crate is involved.
//!
//! Tests steer it from outside: [`Provider::misbehave`] makes the next tokens wrong in one
//! specific way (bad signature, `alg: none`, HS256, wrong issuer or audience, expired, wrong
//! nonce, claims only in userinfo, ...) or takes the whole provider down, and the recorders
//! (`last_authorize`, `token_auth_methods_seen`, `jwks_fetches`, ...) let a test assert what the
//! relying party sent. The fake never panics on what it receives: bad input gets a 4xx answer.
//!
//! For API clients it mints JWT access tokens ([`Provider::access_token`], with the same
//! misbehaviours) and opaque ones ([`Provider::opaque_token`]), and serves an RFC 7662
//! introspection endpoint that knows every opaque token it issued.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openidconnect::core::{
    CoreGenderClaim, CoreHmacKey, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey,
};
use openidconnect::{
    AccessToken, AdditionalClaims, Audience, EndUserEmail, EndUserUsername, IdToken, IdTokenClaims,
    IssuerUrl, JsonWebKeyId, JsonWebKeySet, Nonce, PrivateSigningKey, StandardClaims,
    SubjectIdentifier,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use url::{Url, form_urlencoded};

const APP_PREFIX: &str = "/application/o/bill-tracker/";
const DISCOVERY_PATH: &str = "/application/o/bill-tracker/.well-known/openid-configuration";
const AUTHORIZE_PATH: &str = "/application/o/authorize/";
const TOKEN_PATH: &str = "/application/o/token/";
const USERINFO_PATH: &str = "/application/o/userinfo/";
const JWKS_PATH: &str = "/application/o/bill-tracker/jwks/";
const END_SESSION_PATH: &str = "/application/o/bill-tracker/end-session/";
const INTROSPECT_PATH: &str = "/application/o/introspect/";

const CODE_LIFETIME: Duration = Duration::from_secs(60);
const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
const AN_HOUR: Duration = Duration::from_secs(3600);
const MAX_FORM_BYTES: usize = 64 * 1024;

const KEY_PEMS: [&str; 2] = [
    include_str!("keys/rsa-key-1.pem"),
    include_str!("keys/rsa-key-2.pem"),
];
const KEY_IDS: [&str; 2] = ["billguard-test-key-1", "billguard-test-key-2"];

/// The sub that userinfo reports under [`Misbehave::UserinfoWrongSub`].
pub const WRONG_SUB: &str = "sub-of-somebody-else";

/// A running fake provider; it stops serving when this handle is dropped.
pub struct Provider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Dropping the only sender ends the accept loop, which aborts every connection.
    _shutdown: watch::Sender<()>,
}

/// How the fake is set up: the one client it knows and its users.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    pub client_id: String,
    pub client_secret: String,
    /// The one client authentication method the token endpoint accepts.
    pub auth_method: AuthMethod,
    pub users: Vec<User>,
}

/// Client authentication at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// `client_secret_basic`: an `Authorization: Basic` header.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
}

/// A user the fake can sign in.
#[derive(Clone, Debug)]
pub struct User {
    pub sub: String,
    pub preferred_username: Option<String>,
    pub email: Option<String>,
    /// Sent as-is (an array, a single string, ...); `Value::Null` leaves the claim out.
    pub groups: Value,
}

/// How to shape a logout token; the default is a valid one for nobody in particular.
#[derive(Clone, Debug, Default)]
pub struct LogoutSpec {
    pub sub: Option<String>,
    pub sid: Option<String>,
    /// A fixed `jti`, to replay a token; random when `None`.
    pub jti: Option<String>,
    /// Signed with a key the provider does not publish.
    pub forged: bool,
    pub with_nonce: bool,
    pub without_event: bool,
    pub issued_ago: Duration,
    pub audience: Option<String>,
}

/// One way to get things wrong; each applies to every token issued until [`Provider::reset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Misbehave {
    /// A valid token with one signature byte flipped.
    BadSignature,
    /// Header `alg: none` and an empty signature.
    AlgNone,
    /// HMAC-SHA256 with the client secret as key, as Authentik does without a signing key.
    Hs256,
    WrongIssuer,
    WrongAudience,
    /// `exp` and `iat` an hour in the past.
    Expired,
    NonceMismatch,
    /// The token endpoint answers 400 `invalid_grant`.
    TokenError,
    /// The ID token holds only iss/sub/aud/exp/iat/nonce; the rest comes from userinfo.
    ClaimsOnlyInUserinfo,
    /// Userinfo answers with [`WRONG_SUB`].
    UserinfoWrongSub,
    /// Every endpoint, discovery included, answers 503.
    Unavailable,
    /// HMAC-SHA256 keyed with the provider's public RSA key (the JWK as JSON): the classic
    /// algorithm-confusion forgery. Only for [`Provider::access_token`].
    Hs256WithPublicKey,
    /// Discovery lists only the token endpoint auth method the fake accepts.
    StrictAuthMethods,
    /// The next token request gets no answer: its connection is closed, as
    /// when a server drops a keep-alive connection just as it is reused.
    /// Then it turns itself off.
    CutNextTokenRequest,
    /// The same for the next userinfo request.
    CutNextUserinfoRequest,
}

// === impl Provider ===

impl Provider {
    /// Starts the fake on an ephemeral loopback port.
    pub async fn start(opts: ProviderOptions) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral loopback port for the fake provider");
        Provider::start_on(listener, opts)
    }

    /// Starts the fake on a listener the test bound itself (to know the port up front).
    pub fn start_on(listener: TcpListener, opts: ProviderOptions) -> Provider {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        assert!(
            !opts.users.is_empty(),
            "the fake provider needs at least one user"
        );
        let keys = KEY_PEMS.iter().zip(KEY_IDS).map(|(pem, kid)| {
            CoreRsaPrivateSigningKey::from_pem(pem, Some(JsonWebKeyId::new(kid.to_owned())))
                .expect("the committed test keys are PKCS#1 PEM")
        });
        let shared = Arc::new(Shared {
            base: format!("http://{addr}"),
            issuer: format!("http://{addr}{APP_PREFIX}"),
            keys: keys.collect(),
            opts,
            state: Mutex::new(State::default()),
        });

        let (shutdown, stopped) = watch::channel(());
        tokio::spawn(serve(listener, shared.clone(), stopped));
        Provider {
            addr,
            shared,
            _shutdown: shutdown,
        }
    }

    /// The issuer, with Authentik's trailing slash:
    /// `http://127.0.0.1:<port>/application/o/bill-tracker/`.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        self.shared.base.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn client_id(&self) -> String {
        self.shared.opts.client_id.clone()
    }

    pub fn client_secret(&self) -> String {
        self.shared.opts.client_secret.clone()
    }

    /// Chooses who the next authorizations sign in: `name` is matched against each user's
    /// `sub`, `preferred_username`, `email`, and the part of the email before `@`.
    pub fn login_as(&self, name: &str) {
        let users = &self.shared.opts.users;
        let index = users
            .iter()
            .position(|user| user.answers_to(name))
            .unwrap_or_else(|| panic!("the fake provider has no user {name:?}"));
        self.shared.state().login_as = index;
    }

    /// Makes the next authorization fail with this OAuth error code instead of a code.
    pub fn deny_next_login(&self, error: &str) {
        self.shared.state().deny_next = Some(error.to_owned());
    }

    /// Turns one misbehaviour on, on top of any already on.
    pub fn misbehave(&self, how: Misbehave) {
        self.shared.state().misbehaving.insert(how);
    }

    /// Turns every misbehaviour off and forgets a pending denial; key rotation stays.
    pub fn reset(&self) {
        let mut state = self.shared.state();
        state.misbehaving.clear();
        state.deny_next = None;
    }

    /// Signs from now on with the second key; the JWKS then serves both.
    pub fn rotate_key(&self) {
        self.shared.state().rotated = true;
    }

    /// The key id tokens are currently signed with.
    pub fn current_kid(&self) -> String {
        KEY_IDS[usize::from(self.shared.state().rotated)].to_owned()
    }

    /// The query parameters of the latest authorization request, valid or not.
    pub fn last_authorize(&self) -> Option<HashMap<String, String>> {
        self.shared.state().last_authorize.clone()
    }

    /// The query parameters of the latest end-session request.
    pub fn last_end_session(&self) -> Option<HashMap<String, String>> {
        self.shared.state().last_end_session.clone()
    }

    /// The client authentication method of every token request, in order, accepted or not.
    pub fn token_auth_methods_seen(&self) -> Vec<AuthMethod> {
        self.shared.state().token_auth_methods_seen.clone()
    }

    /// JWKS requests so far, including those answered 503.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.state().jwks_fetches
    }

    /// Changes a user's groups at the provider, as an administrator would in Authentik: later
    /// tokens, refreshes and userinfo answers carry the new groups.
    pub fn set_groups(&self, name: &str, groups: Value) {
        let sub = self.user(name).sub;
        self.shared.state().groups.insert(sub, groups);
    }

    /// Sets `expires_in` of the access tokens issued from now on.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.shared.state().access_lifetime = Some(lifetime);
    }

    /// Refresh grants accepted so far.
    pub fn refreshes(&self) -> usize {
        self.shared.state().refreshes
    }

    /// Forgets every refresh token, as when the provider revokes the user's sessions.
    pub fn revoke_refresh_tokens(&self) {
        self.shared.state().refresh_tokens.clear();
    }

    /// The provider session id (`sid`) of the user's latest login.
    pub fn sid_of(&self, name: &str) -> Option<String> {
        let sub = self.user(name).sub;
        self.shared.state().sids.get(&sub).cloned()
    }

    /// The `sub` of a user.
    pub fn sub_of(&self, name: &str) -> String {
        self.user(name).sub
    }

    /// A logout token for OIDC Back-Channel Logout, shaped by `spec`.
    pub fn logout_token(&self, spec: LogoutSpec) -> String {
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_secs()
            - spec.issued_ago.as_secs();
        let mut claims = json!({
            "iss": self.shared.issuer,
            "aud": spec.audience.unwrap_or_else(|| self.shared.opts.client_id.clone()),
            "iat": now,
            "exp": now + 120,
            "jti": spec.jti.unwrap_or_else(random_token),
        });
        if !spec.without_event {
            claims["events"] = json!({ "http://schemas.openid.net/event/backchannel-logout": {} });
        }
        if let Some(sub) = spec.sub {
            claims["sub"] = json!(sub);
        }
        if let Some(sid) = spec.sid {
            claims["sid"] = json!(sid);
        }
        if spec.with_nonce {
            claims["nonce"] = json!("n-0S6_WzA2Mj");
        }
        // A forged token is signed with the second key, which the JWKS does not publish
        // until the provider rotates.
        let key = if spec.forged {
            1
        } else {
            usize::from(self.shared.state().rotated)
        };
        let header = json!({ "alg": "RS256", "typ": "logout+jwt", "kid": KEY_IDS[key] });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.shared.keys[key]
            .sign(
                &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                input.as_bytes(),
            )
            .expect("the test key signs");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Discovery requests so far, including those answered 503.
    pub fn discovery_fetches(&self) -> usize {
        self.shared.state().discovery_fetches
    }

    /// A JWT access token for `name` (matched as in [`Provider::login_as`]), audience the
    /// client, signed with the current key and spoiled by each of `how`.
    pub fn access_token(&self, name: &str, how: &[Misbehave]) -> String {
        let user = self.user(name);
        let issue = Issue {
            misbehaving: how.iter().copied().collect(),
            key: usize::from(self.shared.state().rotated),
        };
        access_jwt(&self.shared, &user, &issue)
            .unwrap_or_else(|e| panic!("the fake cannot mint an access token: {e}"))
    }

    /// An opaque access token for `name` that the introspection endpoint knows.
    pub fn opaque_token(&self, name: &str) -> String {
        let user = self.user(name);
        let token = random_token();
        self.shared
            .state()
            .access_tokens
            .insert(token.clone(), user);
        token
    }

    /// The RFC 7662 introspection endpoint.
    pub fn introspection_url(&self) -> String {
        format!("{}{INTROSPECT_PATH}", self.shared.base)
    }

    /// Introspection requests so far, answered or refused.
    pub fn introspections(&self) -> usize {
        self.shared.state().introspections
    }

    /// The access token of the latest successful code exchange.
    pub fn last_access_token(&self) -> Option<String> {
        self.shared.state().last_access_token.clone()
    }

    fn user(&self, name: &str) -> User {
        self.shared
            .opts
            .users
            .iter()
            .find(|user| user.answers_to(name))
            .cloned()
            .unwrap_or_else(|| panic!("the fake provider has no user {name:?}"))
    }
}

// === impl ProviderOptions ===

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            client_id: "billguard-test".to_owned(),
            client_secret: "test-secret-of-sufficient-length".to_owned(),
            auth_method: AuthMethod::Basic,
            users: vec![
                User {
                    sub: "sub-alice".to_owned(),
                    preferred_username: Some("alice".to_owned()),
                    email: Some("alice@example.com".to_owned()),
                    groups: json!(["bill-tracker-admins", "staff"]),
                },
                User {
                    sub: "sub-bob".to_owned(),
                    preferred_username: None,
                    email: Some("bob@example.com".to_owned()),
                    groups: json!(["staff"]),
                },
            ],
        }
    }
}

// === impl User ===

impl User {
    fn answers_to(&self, name: &str) -> bool {
        let email = self.email.as_deref();
        let local_part = email
            .and_then(|e| e.split_once('@'))
            .map(|(local, _)| local);
        [
            Some(self.sub.as_str()),
            self.preferred_username.as_deref(),
            email,
            local_part,
        ]
        .contains(&Some(name))
    }

    /// The claims userinfo reports for this user.
    fn userinfo(&self) -> Value {
        let mut claims = json!({ "sub": self.sub });
        if let Some(email) = &self.email {
            claims["email"] = json!(email);
            claims["email_verified"] = json!(true);
        }
        if let Some(name) = &self.preferred_username {
            claims["preferred_username"] = json!(name);
        }
        if !self.groups.is_null() {
            claims["groups"] = self.groups.clone();
        }
        claims
    }
}

// === server ===

struct Shared {
    opts: ProviderOptions,
    base: String,
    issuer: String,
    keys: Vec<CoreRsaPrivateSigningKey>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    login_as: usize,
    deny_next: Option<String>,
    misbehaving: HashSet<Misbehave>,
    rotated: bool,
    codes: HashMap<String, Grant>,
    access_tokens: HashMap<String, User>,
    last_authorize: Option<HashMap<String, String>>,
    last_end_session: Option<HashMap<String, String>>,
    token_auth_methods_seen: Vec<AuthMethod>,
    jwks_fetches: usize,
    discovery_fetches: usize,
    introspections: usize,
    last_access_token: Option<String>,
    /// Groups changed by the test, by `sub`; they apply to every later token and userinfo.
    groups: HashMap<String, Value>,
    /// Live refresh tokens; each is used once (rotation, as Authentik does).
    refresh_tokens: HashMap<String, Grant>,
    refreshes: usize,
    /// `expires_in` of the next access tokens, when the test changed it.
    access_lifetime: Option<Duration>,
    /// The provider session id of each user's latest login, by `sub`.
    sids: HashMap<String, String>,
}

/// What an authorization code (or a refresh token) stands for until it is redeemed.
#[derive(Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    user: User,
    issued: Instant,
    scope: String,
    sid: String,
}

type Resp = Response<Full<Bytes>>;

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test must not turn every later request into a second panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Shutdown first, so nothing is accepted once the handle is gone.
            biased;
            _ = stopped.changed() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move {
                            // An error from the service makes hyper close the
                            // connection without an answer.
                            let cut = match req.uri().path() {
                                TOKEN_PATH => Some(Misbehave::CutNextTokenRequest),
                                USERINFO_PATH => Some(Misbehave::CutNextUserinfoRequest),
                                _ => None,
                            };
                            if cut.is_some_and(|how| shared.state().misbehaving.remove(&how)) {
                                return Err(std::io::Error::other("connection cut"));
                            }
                            Ok(route(&shared, req).await)
                        }
                    });
                    // A client hanging up mid-request is its own business.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    {
        let mut state = shared.state();
        match path {
            DISCOVERY_PATH => state.discovery_fetches += 1,
            JWKS_PATH => state.jwks_fetches += 1,
            _ => {}
        }
        if state.misbehaving.contains(&Misbehave::Unavailable) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "provider unavailable");
        }
    }

    match (req.method(), path) {
        (&Method::GET, DISCOVERY_PATH) => discovery(shared),
        (&Method::GET, AUTHORIZE_PATH) => authorize(shared, &query(&req)),
        (&Method::POST, TOKEN_PATH) => token(shared, req).await,
        (&Method::GET | &Method::POST, USERINFO_PATH) => userinfo(shared, req.headers()),
        (&Method::GET, JWKS_PATH) => jwks(shared),
        (&Method::GET, END_SESSION_PATH) => end_session(shared, &query(&req)),
        (&Method::POST, INTROSPECT_PATH) => introspect(shared, req).await,
        (
            _,
            DISCOVERY_PATH | AUTHORIZE_PATH | TOKEN_PATH | JWKS_PATH | END_SESSION_PATH
            | INTROSPECT_PATH,
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

// === endpoints ===

fn discovery(shared: &Shared) -> Resp {
    let base = &shared.base;
    let methods = if shared
        .state()
        .misbehaving
        .contains(&Misbehave::StrictAuthMethods)
    {
        match shared.opts.auth_method {
            AuthMethod::Basic => json!(["client_secret_basic"]),
            AuthMethod::Post => json!(["client_secret_post"]),
        }
    } else {
        json!(["client_secret_basic", "client_secret_post"])
    };
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": shared.issuer,
            "authorization_endpoint": format!("{base}{AUTHORIZE_PATH}"),
            "token_endpoint": format!("{base}{TOKEN_PATH}"),
            "userinfo_endpoint": format!("{base}{USERINFO_PATH}"),
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "end_session_endpoint": format!("{base}{END_SESSION_PATH}"),
            "introspection_endpoint": format!("{base}{INTROSPECT_PATH}"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "backchannel_logout_supported": true,
            "backchannel_logout_session_supported": true,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": methods,
            "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub", "iss", "aud", "exp", "iat", "nonce", "email", "email_verified",
                "preferred_username", "groups",
            ],
        }),
    )
}

/// The authorization endpoint: no form, the chosen user is signed in at once.
fn authorize(shared: &Shared, params: &HashMap<String, String>) -> Resp {
    let mut state = shared.state();
    state.last_authorize = Some(params.clone());

    let param = |name: &str| params.get(name).map(String::as_str);
    if param("client_id") != Some(shared.opts.client_id.as_str()) {
        return text(StatusCode::BAD_REQUEST, "unknown client_id");
    }
    let Some(redirect_uri) = param("redirect_uri") else {
        return text(StatusCode::BAD_REQUEST, "missing redirect_uri");
    };
    let Ok(mut redirect) = Url::parse(redirect_uri) else {
        return text(
            StatusCode::BAD_REQUEST,
            "redirect_uri is not an absolute URL",
        );
    };
    if param("response_type") != Some("code") {
        return text(StatusCode::BAD_REQUEST, "response_type must be code");
    }
    if !param("scope").is_some_and(|s| s.split_ascii_whitespace().any(|s| s == "openid")) {
        return text(StatusCode::BAD_REQUEST, "scope must contain openid");
    }
    if param("code_challenge_method") != Some("S256") {
        return text(
            StatusCode::BAD_REQUEST,
            "code_challenge_method must be S256",
        );
    }
    let Some(code_challenge) = param("code_challenge") else {
        return text(StatusCode::BAD_REQUEST, "missing code_challenge");
    };

    // OIDC Core §3.1.2.6: errors go back to the client with the state it sent.
    if let Some(error) = state.deny_next.take() {
        redirect
            .query_pairs_mut()
            .append_pair("error", &error)
            .append_pair(
                "error_description",
                "the fake provider was told to deny this login",
            );
        if let Some(csrf) = param("state") {
            redirect.query_pairs_mut().append_pair("state", csrf);
        }
        return found(redirect.as_str());
    }

    let code = random_token();
    let user = shared.opts.users[state.login_as].clone();
    let sid = random_token();
    state.sids.insert(user.sub.clone(), sid.clone());
    let grant = Grant {
        client_id: shared.opts.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        code_challenge: code_challenge.to_owned(),
        nonce: param("nonce").map(str::to_owned),
        user,
        issued: Instant::now(),
        scope: param("scope").unwrap_or_default().to_owned(),
        sid,
    };
    state.codes.insert(code.clone(), grant);
    redirect.query_pairs_mut().append_pair("code", &code);
    if let Some(csrf) = param("state") {
        redirect.query_pairs_mut().append_pair("state", csrf);
    }
    found(redirect.as_str())
}

/// The token endpoint: client authentication, then the code grant with PKCE.
async fn token(shared: &Shared, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, MAX_FORM_BYTES).collect().await else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body.to_bytes())
        .into_owned()
        .collect();

    let client = match client_credentials(&parts.headers, &form) {
        Ok(Some(client)) => client,
        Ok(None) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
        Err(status) => return oauth_error(status, "invalid_request"),
    };
    let (grant, issue) = {
        let (method, id, secret) = client;
        let mut state = shared.state();
        state.token_auth_methods_seen.push(method);
        let opts = &shared.opts;
        if method != opts.auth_method || id != opts.client_id || secret != opts.client_secret {
            return invalid_client(method);
        }
        if state.misbehaving.contains(&Misbehave::TokenError) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
        if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
            // RFC 6749 §6: a used or unknown refresh token is invalid_grant.
            let grant = form
                .get("refresh_token")
                .and_then(|t| state.refresh_tokens.remove(t));
            let Some(mut grant) = grant.filter(|g| g.client_id == id) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            state.refreshes += 1;
            grant.nonce = None;
            let issue = Issue {
                misbehaving: state.misbehaving.clone(),
                key: usize::from(state.rotated),
            };
            drop(state);
            return issue_tokens(shared, grant, &issue);
        }
        if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
        }

        // Codes are single-use: take it out before checking anything about it.
        let grant = form.get("code").and_then(|code| state.codes.remove(code));
        let Some(grant) = grant else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        };
        let fresh = grant.issued.elapsed() < CODE_LIFETIME;
        let same_client = grant.client_id == id;
        let same_redirect = form.get("redirect_uri") == Some(&grant.redirect_uri);
        // RFC 7636 §4.6: BASE64URL(SHA256(code_verifier)) must equal the challenge.
        let pkce = form
            .get("code_verifier")
            .is_some_and(|v| URL_SAFE_NO_PAD.encode(Sha256::digest(v)) == grant.code_challenge);
        if !(fresh && same_client && same_redirect && pkce) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }

        let issue = Issue {
            misbehaving: state.misbehaving.clone(),
            key: usize::from(state.rotated),
        };
        (grant, issue)
    };

    issue_tokens(shared, grant, &issue)
}

/// Access token, ID token, and a refresh token when `offline_access` was granted.
fn issue_tokens(shared: &Shared, mut grant: Grant, issue: &Issue) -> Resp {
    let (lifetime, groups) = {
        let state = shared.state();
        (
            state.access_lifetime.unwrap_or(TOKEN_LIFETIME),
            state.groups.get(&grant.user.sub).cloned(),
        )
    };
    if let Some(groups) = groups {
        grant.user.groups = groups;
    }
    let access_token = random_token();
    let id_token = match id_token(shared, &grant, &access_token, issue) {
        Ok(token) => token,
        Err(_) => return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    let offline = grant
        .scope
        .split_ascii_whitespace()
        .any(|s| s == "offline_access");
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "id_token": id_token,
    });
    {
        let mut state = shared.state();
        state
            .access_tokens
            .insert(access_token.clone(), grant.user.clone());
        state.last_access_token = Some(access_token.clone());
        if offline {
            let refresh_token = random_token();
            body["refresh_token"] = json!(refresh_token);
            state.refresh_tokens.insert(refresh_token, grant);
        }
    }
    let mut resp = json_response(StatusCode::OK, &body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn userinfo(shared: &Shared, headers: &HeaderMap) -> Resp {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let state = shared.state();
    let Some(user) = bearer.and_then(|token| state.access_tokens.get(token.trim())) else {
        let mut resp = oauth_error(StatusCode::UNAUTHORIZED, "invalid_token");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return resp;
    };

    let mut user = user.clone();
    if let Some(groups) = state.groups.get(&user.sub) {
        user.groups = groups.clone();
    }
    let mut claims = user.userinfo();
    if state.misbehaving.contains(&Misbehave::UserinfoWrongSub) {
        claims["sub"] = json!(WRONG_SUB);
    }
    json_response(StatusCode::OK, &claims)
}

fn jwks(shared: &Shared) -> Resp {
    let rotated = shared.state().rotated;
    let keys: Vec<CoreJsonWebKey> = if rotated {
        vec![
            shared.keys[1].as_verification_key(),
            shared.keys[0].as_verification_key(),
        ]
    } else {
        vec![shared.keys[0].as_verification_key()]
    };
    match serde_json::to_value(JsonWebKeySet::new(keys)) {
        Ok(set) => json_response(StatusCode::OK, &set),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot serialize the JWKS",
        ),
    }
}

/// RP-initiated logout: record the request, then go back to the client if it asked to.
fn end_session(shared: &Shared, params: &HashMap<String, String>) -> Resp {
    shared.state().last_end_session = Some(params.clone());

    let Some(target) = params.get("post_logout_redirect_uri") else {
        return text(StatusCode::OK, "signed out");
    };
    let Ok(mut target) = Url::parse(target) else {
        return text(
            StatusCode::BAD_REQUEST,
            "post_logout_redirect_uri is not a URL",
        );
    };
    if let Some(csrf) = params.get("state") {
        target.query_pairs_mut().append_pair("state", csrf);
    }
    found(target.as_str())
}

/// RFC 7662: client authentication as at the token endpoint, then what the token stands for.
async fn introspect(shared: &Shared, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    shared.state().introspections += 1;
    let Ok(body) = Limited::new(body, MAX_FORM_BYTES).collect().await else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body.to_bytes())
        .into_owned()
        .collect();
    let opts = &shared.opts;
    match client_credentials(&parts.headers, &form) {
        Ok(Some((_, id, secret))) if id == opts.client_id && secret == opts.client_secret => {}
        Ok(_) => return invalid_client(AuthMethod::Basic),
        Err(status) => return oauth_error(status, "invalid_request"),
    }
    let user = form
        .get("token")
        .and_then(|token| shared.state().access_tokens.get(token).cloned());
    let Some(user) = user else {
        return json_response(StatusCode::OK, &json!({ "active": false }));
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = user.userinfo();
    claims["active"] = json!(true);
    claims["iss"] = json!(shared.issuer);
    claims["aud"] = json!(opts.client_id);
    claims["client_id"] = json!(opts.client_id);
    claims["exp"] = json!(now + TOKEN_LIFETIME.as_secs());
    claims["iat"] = json!(now);
    claims["token_type"] = json!("Bearer");
    json_response(StatusCode::OK, &claims)
}

// === access tokens ===

/// An Authentik-style JWT access token: the ID token's claims without a nonce.
fn access_jwt(shared: &Shared, user: &User, issue: &Issue) -> Result<String, String> {
    let on = |how| issue.misbehaving.contains(&how);
    let now = SystemTime::now();
    let issued_at = if on(Misbehave::Expired) {
        now - AN_HOUR
    } else {
        now
    };
    let issuer = if on(Misbehave::WrongIssuer) {
        format!("{}/application/o/another-app/", shared.base)
    } else {
        shared.issuer.clone()
    };
    let audience = if on(Misbehave::WrongAudience) {
        "another-client".to_owned()
    } else {
        shared.opts.client_id.clone()
    };
    let standard = StandardClaims::new(SubjectIdentifier::new(user.sub.clone()))
        .set_email(user.email.clone().map(EndUserEmail::new))
        .set_preferred_username(user.preferred_username.clone().map(EndUserUsername::new));
    let claims = IdTokenClaims::new(
        IssuerUrl::new(issuer).map_err(|e| e.to_string())?,
        vec![Audience::new(audience)],
        (issued_at + TOKEN_LIFETIME).into(),
        issued_at.into(),
        standard,
        GroupsClaim {
            groups: Some(user.groups.clone()).filter(|g| !g.is_null()),
            sid: None,
        },
    );

    let token = if on(Misbehave::Hs256WithPublicKey) {
        let public = serde_json::to_vec(&shared.keys[issue.key].as_verification_key())
            .map_err(|e| e.to_string())?;
        let key = CoreHmacKey::new(public);
        FakeIdToken::new(
            claims,
            &key,
            CoreJwsSigningAlgorithm::HmacSha256,
            None,
            None,
        )
    } else if on(Misbehave::Hs256) {
        let key = CoreHmacKey::new(shared.opts.client_secret.as_bytes());
        FakeIdToken::new(
            claims,
            &key,
            CoreJwsSigningAlgorithm::HmacSha256,
            None,
            None,
        )
    } else {
        let key = &shared.keys[issue.key];
        let alg = CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256;
        FakeIdToken::new(claims, key, alg, None, None)
    };
    let token = token.map_err(|e| e.to_string())?.to_string();
    if on(Misbehave::AlgNone) {
        return unsigned(&token);
    }
    if on(Misbehave::BadSignature) {
        return corrupt_signature(&token);
    }
    Ok(token)
}

// === ID tokens ===

/// The `groups` claim, left out entirely when the user has none, and the provider session id.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct GroupsClaim {
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

impl AdditionalClaims for GroupsClaim {}

type FakeIdToken = IdToken<
    GroupsClaim,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// What was switched on when a token was issued, copied out of the lock.
struct Issue {
    misbehaving: HashSet<Misbehave>,
    key: usize,
}

fn id_token(
    shared: &Shared,
    grant: &Grant,
    access_token: &str,
    issue: &Issue,
) -> Result<String, String> {
    let on = |how| issue.misbehaving.contains(&how);
    let user = &grant.user;

    let now = SystemTime::now();
    let issued_at = if on(Misbehave::Expired) {
        now - AN_HOUR
    } else {
        now
    };
    let issuer = if on(Misbehave::WrongIssuer) {
        format!("{}/application/o/another-app/", shared.base)
    } else {
        shared.issuer.clone()
    };
    let audience = if on(Misbehave::WrongAudience) {
        "another-client".to_owned()
    } else {
        grant.client_id.clone()
    };
    let nonce = if on(Misbehave::NonceMismatch) {
        Some("not-the-nonce-that-was-sent".to_owned())
    } else {
        grant.nonce.clone()
    };

    let mut standard = StandardClaims::new(SubjectIdentifier::new(user.sub.clone()));
    let mut groups = None;
    if !on(Misbehave::ClaimsOnlyInUserinfo) {
        standard = standard
            .set_email(user.email.clone().map(EndUserEmail::new))
            .set_email_verified(user.email.as_ref().map(|_| true))
            .set_preferred_username(user.preferred_username.clone().map(EndUserUsername::new));
        groups = Some(user.groups.clone()).filter(|g| !g.is_null());
    }
    // openidconnect wants chrono times; `SystemTime` converts into them without naming chrono.
    let claims = IdTokenClaims::new(
        IssuerUrl::new(issuer).map_err(|e| e.to_string())?,
        vec![Audience::new(audience)],
        (issued_at + TOKEN_LIFETIME).into(),
        issued_at.into(),
        standard,
        GroupsClaim {
            groups,
            sid: Some(grant.sid.clone()),
        },
    )
    .set_nonce(nonce.map(Nonce::new));

    let access_token = AccessToken::new(access_token.to_owned());
    let token = if on(Misbehave::Hs256) {
        let key = CoreHmacKey::new(shared.opts.client_secret.as_bytes());
        let alg = CoreJwsSigningAlgorithm::HmacSha256;
        FakeIdToken::new(claims, &key, alg, Some(&access_token), None)
    } else {
        let key = &shared.keys[issue.key];
        let alg = CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256;
        FakeIdToken::new(claims, key, alg, Some(&access_token), None)
    };
    let token = token.map_err(|e| e.to_string())?.to_string();

    if on(Misbehave::AlgNone) {
        return unsigned(&token);
    }
    if on(Misbehave::BadSignature) {
        return corrupt_signature(&token);
    }
    Ok(token)
}

/// The same claims under `{"alg":"none"}` with an empty signature.
fn unsigned(token: &str) -> Result<String, String> {
    let mut parts = token.split('.');
    let payload = parts.nth(1).ok_or("a signed JWT has three parts")?;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    Ok(format!("{header}.{payload}."))
}

/// The same token with one bit of its signature flipped.
fn corrupt_signature(token: &str) -> Result<String, String> {
    let (input, signature) = token
        .rsplit_once('.')
        .ok_or("a signed JWT has three parts")?;
    let mut signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| e.to_string())?;
    let middle = signature.len() / 2;
    let byte = signature.get_mut(middle).ok_or("the signature is empty")?;
    *byte ^= 0x01;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

// === helpers ===

/// Reads client credentials per RFC 6749 §2.3.1: `Ok(None)` when the client sent none, and
/// `Err` when it used both methods at once (or a malformed header), which the RFC forbids.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Option<(AuthMethod, String, String)>, StatusCode> {
    let basic = headers.get(header::AUTHORIZATION).map(|value| {
        let value = value.to_str().ok()?;
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        // The id and secret are form-urlencoded before they are joined and base64-encoded.
        Some((form_decode(id), form_decode(secret)))
    });
    let post = form.get("client_secret");

    match (basic, post) {
        (Some(_), Some(_)) => Err(StatusCode::BAD_REQUEST),
        (Some(None), None) => Err(StatusCode::BAD_REQUEST),
        (Some(Some((id, secret))), None) => {
            if form.get("client_id").is_some_and(|body_id| *body_id != id) {
                return Err(StatusCode::BAD_REQUEST);
            }
            Ok(Some((AuthMethod::Basic, id, secret)))
        }
        (None, Some(secret)) => {
            let id = form.get("client_id").cloned().unwrap_or_default();
            Ok(Some((AuthMethod::Post, id, secret.clone())))
        }
        (None, None) => Ok(None),
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(component: &str) -> String {
    // An encoded component holds no raw `=` or `&`, so it parses as one lone key.
    form_urlencoded::parse(component.as_bytes())
        .next()
        .map(|(key, _)| key.into_owned())
        .unwrap_or_default()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    let query = req.uri().query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// 32 random bytes, base64url: codes and access tokens.
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn invalid_client(attempted: AuthMethod) -> Resp {
    let mut resp = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    // RFC 6749 §5.2: a client that tried Basic gets a matching challenge.
    if attempted == AuthMethod::Basic {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"bill-tracker\""),
        );
    }
    resp
}

fn oauth_error(status: StatusCode, error: &str) -> Resp {
    json_response(status, &json!({ "error": error }))
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
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
