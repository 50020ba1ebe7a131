//! The typed configuration billguard runs with.
//!
//! Every value here has already been parsed and checked: nothing downstream
//! sees a raw string from a file or the environment. Where the values come
//! from (flag, file, environment variable, default) and how problems are
//! reported is the business of [`source`]; this module only names the shape
//! and the defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hyper::header::HeaderName;
use ipnet::IpNet;
use url::Url;

pub mod reload;
pub mod source;

pub use source::{Entry, Inputs, Loaded, Problem, Problems, load};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:4180";
pub const DEFAULT_UPSTREAM_TIMEOUT: &str = "60s";
pub const DEFAULT_PROVIDER_NAME: &str = "Single sign-on";
pub const DEFAULT_SCOPES: &str = "openid email profile";
pub const DEFAULT_TOKEN_AUTH_METHOD: &str = "client_secret_basic";
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";
pub const DEFAULT_ID_TOKEN_ALGS: &str = "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA";
pub const DEFAULT_SESSION_TTL: &str = "12h";
pub const DEFAULT_IDLE_TIMEOUT: &str = "1h";
pub const DEFAULT_MAX_SESSIONS: &str = "100000";
pub const DEFAULT_REDIS_CACHE_TTL: &str = "2s";
pub const DEFAULT_REFRESH_INTERVAL: &str = "5m";
pub const DEFAULT_USER_HEADER: &str = "X-Forwarded-User";
pub const DEFAULT_EMAIL_HEADER: &str = "X-Forwarded-Email";
pub const DEFAULT_GROUPS_HEADER: &str = "X-Forwarded-Groups";
pub const DEFAULT_ROLE_HEADER: &str = "X-Forwarded-Role";
pub const DEFAULT_INTROSPECTION_CACHE: &str = "30s";
pub const DEFAULT_STATEMENT_HEADER: &str = "X-Billguard-Statement";
pub const DEFAULT_STATEMENT_TTL: &str = "60s";
pub const DEFAULT_STATEMENT_AUDIENCE: &str = "billtracker";
pub const DEFAULT_STATEMENT_ALG: &str = "ES256";
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: &str = "5s";
pub const DEFAULT_PROVIDER_TIMEOUT: &str = "10s";
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
pub const DEFAULT_MAX_HEADER_BYTES: &str = "65536";
pub const DEFAULT_MAX_CONNECTIONS: &str = "10000";
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: &str = "10s";
pub const DEFAULT_TLS_RELOAD_INTERVAL: &str = "30s";
pub const DEFAULT_SHUTDOWN_DELAY: &str = "5s";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "20s";
/// hyper refuses a read buffer below this, so it is the floor for
/// `limits.max_header_bytes`.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Shortest accepted `session.secret`, in bytes: the key derivation needs 256
/// bits of input.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    /// `None` only when local login is on and no provider setting is given:
    /// then local login alone signs users in.
    pub oidc: Option<Oidc>,
    pub session: Session,
    pub headers: Headers,
    pub local_login: LocalLogin,
    /// `[[routes]]`, compiled, in order.
    pub routes: crate::policy::Routes,
    pub bearer: Bearer,
    pub statement: Statement,
    pub access_token: AccessToken,
    /// Where `/metrics` is served; `None` serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// When set, `listen` speaks HTTPS (HTTP/2 or HTTP/1.1 by ALPN).
    pub tls: Option<Tls>,
    pub limits: Limits,
    pub shutdown: Shutdown,
}

/// The HTTPS listener's certificate. Checked at load (readable, and the key
/// matches the certificate); re-read every `reload_interval`.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub handshake_timeout: Duration,
    pub reload_interval: Duration,
}

/// Bounds on what one client can hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head (request line, headers, cookies).
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// What happens on SIGTERM.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// Readiness fails, but requests are still served for this long, so
    /// Kubernetes stops routing here before the listener closes.
    pub delay: Duration,
    /// How long in-flight requests and WebSockets may run after the
    /// listener closes.
    pub grace: Duration,
}

/// PEM certificates trusted in addition to the built-in web roots.
#[derive(Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

// A reload compares provider settings to keep the provider handle.
impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.certs == other.certs
    }
}

impl Eq for CaBundle {}

/// Where the app listens: plain HTTP over loopback in a pod, or HTTPS when
/// the app is elsewhere.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub url: Url,
    /// `host:port`, what the pooled client connects to.
    pub authority: String,
    /// How long the app may take to send response headers.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra roots for an `https://` upstream.
    pub ca: Option<CaBundle>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Oidc {
    pub provider_name: String,
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub token_auth_method: TokenAuthMethod,
    pub redirect_uri: Url,
    pub scopes: Vec<String>,
    pub admin_group: Option<String>,
    pub auto_provision: bool,
    pub groups_claim: String,
    /// JWS algorithms an ID token may be signed with.
    pub id_token_algs: Vec<String>,
    /// Where the provider sends the browser after sign-out.
    pub post_logout_redirect_uri: Url,
    /// When not empty, only members of one of these groups (or of the admin
    /// group) are admitted.
    pub allowed_groups: Vec<String>,
    /// Limit for each request to the provider (discovery, JWKS, token,
    /// userinfo).
    pub request_timeout: Duration,
    /// Extra roots for the provider's certificate (a private CA).
    pub ca: Option<CaBundle>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenAuthMethod {
    /// RFC 6749 §2.3.1: HTTP Basic with the form-encoded id and secret.
    ClientSecretBasic,
    /// RFC 6749 §2.3.1: `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub ttl: Duration,
    pub idle_timeout: Duration,
    pub max_sessions: u64,
    /// Key material for the login-state cookie. Generated at start when the
    /// operator set none (then pending logins do not survive a restart).
    pub secret: Secret,
    pub secret_generated: bool,
    /// `Secure` cookies with the `__Host-` prefix; off only when the
    /// redirect URI is plain http on a loopback address.
    pub secure_cookies: bool,
    pub store: StoreKind,
    /// Where the in-memory store writes its sessions on shutdown and reads
    /// them back at start; `None` keeps them in memory only.
    pub persist_file: Option<PathBuf>,
    /// How often the role is re-evaluated from the provider (by refresh
    /// when there is a refresh token, else by userinfo).
    pub refresh_interval: Duration,
}

/// Where sessions live.
#[derive(Clone, Debug)]
pub enum StoreKind {
    /// In this process only: one replica.
    Memory,
    /// Shared by every replica.
    Redis(Redis),
}

#[derive(Clone, Debug)]
pub struct Redis {
    /// `redis://` or `rediss://` (TLS); may carry a user and password.
    pub url: Secret,
    /// Used when the URL carries no password.
    pub password: Option<Secret>,
    /// How long a replica may serve a session from its local cache before
    /// asking Redis again: the bound on how long a session ended elsewhere
    /// can still be honoured here. Zero disables the local cache.
    pub cache_ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct Headers {
    pub user: HeaderName,
    pub email: HeaderName,
    pub groups: HeaderName,
    pub role: HeaderName,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Clone, Debug)]
pub struct LocalLogin {
    /// Username and password sign-in on the sign-in page.
    pub enabled: bool,
    pub users_file: Option<PathBuf>,
    /// The users file: who may sign in with a password (those with a
    /// `password_hash`), and who is admitted when `oidc.auto_provision` is
    /// off.
    pub users: Vec<KnownUser>,
}

/// API clients that send `Authorization: Bearer <token>` instead of a
/// session cookie.
#[derive(Clone, Debug)]
pub struct Bearer {
    pub enabled: bool,
    /// A token's `aud` must contain one of these (default: the client ID).
    pub audiences: Vec<String>,
    /// Where opaque (non-JWT) tokens are checked (RFC 7662); without it they
    /// are refused.
    pub introspection_url: Option<Url>,
    /// How long an introspection answer is reused.
    pub introspection_cache: Duration,
    /// Pass the client's `Authorization` header on to the app.
    pub forward_authorization: bool,
}

/// The signed statement of who the user is, for the app to verify.
#[derive(Clone, Debug)]
pub struct Statement {
    /// `None` when no statement is sent.
    pub signer: Option<std::sync::Arc<crate::statement::Signer>>,
    pub header: HeaderName,
    pub ttl: Duration,
    /// `iss` of the statement: the origin users reach billguard at.
    pub issuer: String,
    /// `aud` of the statement.
    pub audience: String,
}

/// Forwarding the user's access token to the app.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub forward: bool,
    /// `Authorization` gets `Bearer <token>`; any other header the bare token.
    pub header: HeaderName,
}

/// One entry of the users file.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownUser {
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    /// An argon2id PHC string (`$argon2id$v=19$...`), as printed by
    /// `billguard hash-password`; checked when the file is loaded.
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// A value that must never be printed: its `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

// === impl Secret ===

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(********)")
    }
}

// === impl CaBundle ===

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CaBundle({}, {} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

/// True for `localhost` and loopback addresses, where plain http is safe
/// enough for the browser-to-billguard leg.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}
