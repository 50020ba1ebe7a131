//! Where each configuration value comes from, and every way it can be wrong.
//!
//! Precedence, highest first: a command-line flag, a non-empty value in the
//! configuration file, the environment variable (`OIDC_*` for `[oidc]`,
//! `BILLGUARD_<TABLE>__<KEY>` for the rest), the built-in default. An empty
//! string in the file counts as unset, so a file can name a key and still
//! leave it to the environment.
//!
//! figment merges the layers and remembers which layer gave each key. The
//! values are then read one key at a time by small typed parsers, and every
//! problem is collected before loading fails, so an operator sees all of them
//! in one run. A problem names the key, where its value came from and what is
//! allowed; it never repeats a secret. This is the only module that reads the
//! process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use hyper::header::HeaderName;
use ipnet::IpNet;
use url::Url;

use super::*;

/// The raw material a configuration is built from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub file: Option<PathBuf>,
    /// Only `OIDC_*` and `BILLGUARD_*` variables matter.
    pub env: BTreeMap<String, String>,
    pub listen_flag: Option<String>,
    pub upstream_flag: Option<String>,
}

/// A configuration with the report of where each value came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub entries: Vec<Entry>,
    /// Not fatal, but worth an operator's attention (logged at start).
    pub warnings: Vec<String>,
}

/// One effective setting, as `billguard config` prints it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: &'static str,
    /// The value as text, or `********` for a secret that is set.
    pub value: String,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub source: String,
    pub message: String,
}

/// Every problem found in one load.
#[derive(Clone, Debug)]
pub struct Problems(pub Vec<Problem>);

/// Which layer supplied a value.
#[derive(Clone, Debug)]
enum Origin {
    Flag(&'static str),
    File(PathBuf),
    Env(String),
    Default,
}

/// The settings that name a provider; with local login on and none of
/// them given, billguard runs without one.
const PROVIDER_KEYS: [&str; 4] = [
    "oidc.issuer_url",
    "oidc.client_id",
    "oidc.client_secret",
    "oidc.redirect_uri",
];

/// Settings whose values are never shown.
const SECRETS: &[&str] = &[
    "oidc.client_secret",
    "session.secret",
    "session.redis_url",
    "session.redis_password",
];

/// Every key the file may contain, by table ("" is the top level).
const KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "listen",
            "upstream",
            "upstream_timeout",
            "metrics_listen",
            "upstream_connect_timeout",
            "upstream_ca_file",
        ],
    ),
    (
        "oidc",
        &[
            "provider_name",
            "issuer_url",
            "client_id",
            "client_secret",
            "token_auth_method",
            "redirect_uri",
            "scopes",
            "admin_group",
            "auto_provision",
            "groups_claim",
            "id_token_algs",
            "post_logout_redirect_uri",
            "allowed_groups",
            "ca_file",
            "request_timeout",
        ],
    ),
    (
        "session",
        &[
            "store",
            "redis_url",
            "ttl",
            "idle_timeout",
            "max_sessions",
            "secret",
            "redis_password",
            "redis_cache_ttl",
            "persist_file",
            "refresh_interval",
        ],
    ),
    (
        "headers",
        &["user", "email", "groups", "role", "trusted_proxies"],
    ),
    ("local_login", &["enabled", "users_file"]),
    (
        "bearer",
        &[
            "enabled",
            "audiences",
            "introspection_url",
            "introspection_cache",
            "forward_authorization",
        ],
    ),
    (
        "statement",
        &["enabled", "alg", "key_file", "header", "ttl", "audience"],
    ),
    ("access_token", &["forward", "header"]),
    (
        "tls",
        &[
            "cert_file",
            "key_file",
            "handshake_timeout",
            "reload_interval",
        ],
    ),
    (
        "limits",
        &["header_read_timeout", "max_header_bytes", "max_connections"],
    ),
    ("shutdown", &["delay", "grace"]),
];

/// The keys of one `[[routes]]` table.
const ROUTE_KEYS: &[&str] = &["path", "methods", "access"];

/// Environment variables that configure the CLI rather than a setting.
const CLI_ENV: &[&str] = &["BILLGUARD_CONFIG", "BILLGUARD_LOG_FORMAT", "BILLGUARD_LOG"];

// === impl Inputs ===

impl Inputs {
    /// Inputs from the real process environment.
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place that reads the environment"
    )]
    pub fn from_process(file: Option<PathBuf>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("OIDC_") || k.starts_with("BILLGUARD_"))
            .collect();
        Inputs {
            file,
            env,
            ..Inputs::default()
        }
    }
}

/// Builds the configuration, or returns every problem found.
pub fn load(inputs: &Inputs) -> Result<Loaded, Problems> {
    let mut warnings = Vec::new();
    let mut problems = Vec::new();

    // Layers are merged lowest first: later merges win.
    let env = EnvLayer::new(&inputs.env, &mut warnings);
    let mut fig = Figment::from(env);
    if let Some(path) = &inputs.file {
        match FileLayer::read(path) {
            Ok(file) => {
                problems.extend(file.unknown_keys());
                fig = fig.merge(file);
            }
            // Without the file every value it holds would be reported as
            // missing; the one true problem is the file itself.
            Err(problem) => return Err(Problems(vec![problem])),
        }
    }
    fig = fig.merge(FlagLayer::new(inputs));

    let mut reader = Reader {
        fig,
        problems,
        entries: Vec::new(),
    };
    let config = reader.config(&mut warnings);
    if !reader.problems.is_empty() {
        return Err(Problems(reader.problems));
    }
    let config = config.expect("a config is built whenever no problem was recorded");
    Ok(Loaded {
        config,
        entries: reader.entries,
        warnings,
    })
}

/// The environment variable that backs a key.
pub fn env_name(key: &str) -> String {
    match key.strip_prefix("oidc.") {
        Some(rest) => format!("OIDC_{}", rest.to_ascii_uppercase()),
        None => format!("BILLGUARD_{}", key.replace('.', "__").to_ascii_uppercase()),
    }
}

// === impl Reader ===

/// Reads typed values out of the merged layers, recording sources and
/// problems as it goes.
struct Reader {
    fig: Figment,
    problems: Vec<Problem>,
    entries: Vec<Entry>,
}

impl Reader {
    /// Reads every setting. `None` when at least one problem was recorded.
    fn config(&mut self, warnings: &mut Vec<String>) -> Option<Config> {
        let listen = self.parse("listen", Some(DEFAULT_LISTEN), parse_socket_addr);
        let upstream = self.upstream();
        let local_enabled = self.parse("local_login.enabled", Some("false"), parse_bool);
        let oidc = match local_enabled {
            Some(true) if !self.provider_configured() => {
                self.provider_unset(warnings);
                Some(None)
            }
            _ => self.oidc().map(Some),
        };
        let session = self.session(oidc.as_ref(), listen, warnings);
        let headers = self.headers();
        let local_login = self.local_login(oidc.as_ref(), local_enabled?, warnings);
        let provider = oidc.as_ref().and_then(Option::as_ref);
        let routes = self.routes(provider);
        let bearer = self.bearer(provider);
        let statement = self.statement(provider, warnings);
        let access_token = self.access_token();

        let metrics_listen = self.optional("metrics_listen", parse_socket_addr);
        let tls = self.tls();
        let limits = self.limits();
        let shutdown = self.shutdown();

        Some(Config {
            listen: listen?,
            upstream: upstream?,
            oidc: oidc?,
            session: session?,
            headers: headers?,
            local_login: local_login?,
            routes: routes?,
            bearer: bearer?,
            statement: statement?,
            access_token: access_token?,
            metrics_listen: metrics_listen?,
            tls: tls?,
            limits: limits?,
            shutdown: shutdown?,
        })
    }

    fn upstream(&mut self) -> Option<Upstream> {
        let url = self.required("upstream", None, false, parse_upstream_url);
        let timeout = self.parse(
            "upstream_timeout",
            Some(DEFAULT_UPSTREAM_TIMEOUT),
            parse_duration,
        );
        let connect_timeout = self.parse(
            "upstream_connect_timeout",
            Some(DEFAULT_UPSTREAM_CONNECT_TIMEOUT),
            parse_duration,
        );
        let ca = self.optional("upstream_ca_file", parse_ca_file);
        let url = url?;
        let authority = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(80)
        );
        Some(Upstream {
            url,
            authority,
            timeout: timeout?,
            connect_timeout: connect_timeout?,
            ca: ca?,
        })
    }

    /// Whether any of the settings that name a provider is given.
    fn provider_configured(&self) -> bool {
        PROVIDER_KEYS.iter().any(|key| self.raw(key).is_some())
    }

    /// Local login alone: the provider keys are reported as unset, and any
    /// other `[oidc]` value is pointed out as having no effect.
    fn provider_unset(&mut self, warnings: &mut Vec<String>) {
        for key in PROVIDER_KEYS {
            self.record(key, "(unset: local login only)".into(), &Origin::Default);
        }
        let (_, names) = KEYS
            .iter()
            .find(|(t, _)| *t == "oidc")
            .expect("[oidc] is listed");
        for name in names.iter() {
            let key = format!("oidc.{name}");
            if let Some((_, origin)) = self.raw(&key) {
                warnings.push(format!(
                    "{key} ({origin}) has no effect: no provider is configured \
                     (oidc.issuer_url, oidc.client_id, oidc.client_secret, oidc.redirect_uri), \
                     so only local login signs users in"
                ));
            }
        }
    }

    fn oidc(&mut self) -> Option<Oidc> {
        let provider_name = self.parse(
            "oidc.provider_name",
            Some(DEFAULT_PROVIDER_NAME),
            parse_text,
        );
        let issuer_url = self.required("oidc.issuer_url", None, false, parse_issuer);
        let client_id = self.required("oidc.client_id", None, false, parse_text);
        let client_secret = self.required("oidc.client_secret", None, true, |s| {
            Ok(Secret::new(s.to_owned()))
        });
        let token_auth_method = self.parse(
            "oidc.token_auth_method",
            Some(DEFAULT_TOKEN_AUTH_METHOD),
            parse_auth_method,
        );
        let redirect_uri = self.required("oidc.redirect_uri", None, false, |s| {
            parse_browser_url(s, "the callback URL registered at the provider")
        });
        let scopes = self.list("oidc.scopes", DEFAULT_SCOPES, parse_scope);
        let admin_group = self.optional("oidc.admin_group", parse_text);
        let auto_provision = self.parse("oidc.auto_provision", Some("true"), parse_bool);
        let groups_claim = self.parse("oidc.groups_claim", Some(DEFAULT_GROUPS_CLAIM), parse_text);
        let id_token_algs = self.list("oidc.id_token_algs", DEFAULT_ID_TOKEN_ALGS, parse_alg);
        let post_logout = self.optional("oidc.post_logout_redirect_uri", |s| {
            parse_browser_url(s, "the page the provider returns to after sign-out")
        });
        let allowed_groups = self.groups("oidc.allowed_groups");
        let request_timeout = self.parse(
            "oidc.request_timeout",
            Some(DEFAULT_PROVIDER_TIMEOUT),
            parse_duration,
        );
        let ca = self.optional("oidc.ca_file", parse_ca_file);

        if let Some(scopes) = &scopes
            && !scopes.iter().any(|s| s == "openid")
        {
            let origin = self.origin_of("oidc.scopes");
            self.problem(
                "oidc.scopes",
                &origin,
                "must include `openid`; for example \"openid email profile groups\"".into(),
            );
            return None;
        }

        let redirect_uri = redirect_uri?;
        let post_logout_redirect_uri = match post_logout? {
            Some(url) => url,
            None => {
                let mut home = redirect_uri.clone();
                home.set_path("/");
                home
            }
        };
        Some(Oidc {
            provider_name: provider_name?,
            issuer_url: issuer_url?,
            client_id: client_id?,
            client_secret: client_secret?,
            token_auth_method: token_auth_method?,
            redirect_uri,
            scopes: scopes?,
            admin_group: admin_group?,
            auto_provision: auto_provision?,
            groups_claim: groups_claim?,
            id_token_algs: id_token_algs?,
            post_logout_redirect_uri,
            allowed_groups: allowed_groups?,
            request_timeout: request_timeout?,
            ca: ca?,
        })
    }

    fn session(
        &mut self,
        oidc: Option<&Option<Oidc>>,
        listen: Option<SocketAddr>,
        warnings: &mut Vec<String>,
    ) -> Option<Session> {
        let store = self.parse("session.store", Some("memory"), |s| match s {
            "memory" => Ok(false),
            "redis" => Ok(true),
            other => Err(format!(
                "`{other}` is not a session store; allowed: memory, redis"
            )),
        });
        let redis_url = self.optional("session.redis_url", parse_redis_url);
        let redis_password =
            self.optional("session.redis_password", |s| Ok(Secret::new(s.to_owned())));
        let cache_ttl = self.parse(
            "session.redis_cache_ttl",
            Some(DEFAULT_REDIS_CACHE_TTL),
            |s| match humantime::parse_duration(s) {
                Ok(d) if d <= Duration::from_secs(60) => Ok(d),
                _ => Err(format!(
                    "`{s}` is not a duration of at most 60s; for example 2s, or 0s for no \
                     local cache"
                )),
            },
        );
        let persist_file = self.optional("session.persist_file", |s| Ok(PathBuf::from(s)));
        let refresh_interval = self.parse(
            "session.refresh_interval",
            Some(DEFAULT_REFRESH_INTERVAL),
            |s| match parse_duration(s)? {
                d if d < Duration::from_secs(1) => {
                    Err(format!("`{s}` is too short; at least 1s, for example 5m"))
                }
                d => Ok(d),
            },
        );
        let ttl = self.parse("session.ttl", Some(DEFAULT_SESSION_TTL), parse_duration);
        let idle_timeout = self.parse(
            "session.idle_timeout",
            Some(DEFAULT_IDLE_TIMEOUT),
            parse_duration,
        );
        let max_sessions =
            self.parse(
                "session.max_sessions",
                Some(DEFAULT_MAX_SESSIONS),
                |s| match s.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!(
                        "`{s}` is not a positive whole number; for example 100000"
                    )),
                },
            );
        let secret = self.optional("session.secret", |s| {
            if s.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "is {} bytes long; it must be at least {MIN_SECRET_LEN} random bytes, \
                     for example the output of `openssl rand -base64 48`",
                    s.len()
                ));
            }
            Ok(Secret::new(s.to_owned()))
        });

        let secret = secret?;
        let store = match (store?, redis_url?) {
            (false, url) => {
                if url.is_some() {
                    warnings.push(
                        "session.redis_url is set but session.store is memory; \
                         the URL is not used"
                            .into(),
                    );
                }
                StoreKind::Memory
            }
            (true, None) => {
                let origin = self.origin_of("session.store");
                self.problem(
                    "session.redis_url",
                    &origin,
                    "is required when session.store is redis; for example \
                     redis://redis:6379/0 or rediss://user@redis.example.com:6380/0"
                        .into(),
                );
                return None;
            }
            (true, Some(url)) => StoreKind::Redis(Redis {
                url,
                password: redis_password?,
                cache_ttl: cache_ttl?,
            }),
        };
        let persist_file = persist_file?;
        let needs_key = match (&store, &persist_file) {
            (StoreKind::Redis(_), _) => Some(("session.store", "every replica must share it")),
            (StoreKind::Memory, Some(_)) => Some((
                "session.persist_file",
                "the file must be readable after a restart",
            )),
            (StoreKind::Memory, None) => None,
        };
        if let (Some((key, why)), None) = (needs_key, &secret) {
            self.problem(
                "session.secret",
                &Origin::Default,
                format!(
                    "must be set when {key} is used: {why}; for example the output of \
                     `openssl rand -base64 48`"
                ),
            );
            return None;
        }
        let (secret, secret_generated) = match secret {
            Some(secret) => (secret, false),
            None => {
                warnings.push(
                    "session.secret is not set: a random key was generated, so logins in \
                     progress are lost on restart; set session.secret (or \
                     BILLGUARD_SESSION__SECRET)"
                        .into(),
                );
                (Secret::new(random_secret()), true)
            }
        };
        // Plain-http cookies only where the browser reaches billguard on
        // loopback: told by the redirect URI, or, with local login alone, by
        // the listen address.
        let secure_cookies = match (oidc, listen) {
            (Some(Some(oidc)), _) => {
                !(oidc.redirect_uri.scheme() == "http" && is_loopback_host(&oidc.redirect_uri))
            }
            (Some(None), Some(listen)) => !listen.ip().is_loopback(),
            _ => true,
        };
        Some(Session {
            ttl: ttl?,
            idle_timeout: idle_timeout?,
            max_sessions: max_sessions?,
            secret,
            secret_generated,
            secure_cookies,
            store,
            persist_file,
            refresh_interval: refresh_interval?,
        })
    }

    fn headers(&mut self) -> Option<Headers> {
        let user = self.parse("headers.user", Some(DEFAULT_USER_HEADER), parse_header_name);
        let email = self.parse(
            "headers.email",
            Some(DEFAULT_EMAIL_HEADER),
            parse_header_name,
        );
        let groups = self.parse(
            "headers.groups",
            Some(DEFAULT_GROUPS_HEADER),
            parse_header_name,
        );
        let role = self.parse("headers.role", Some(DEFAULT_ROLE_HEADER), parse_header_name);
        let trusted_proxies = self.list("headers.trusted_proxies", "", parse_net);

        let (user, email, groups, role) = (user?, email?, groups?, role?);
        let names = [&user, &email, &groups, &role];
        for (i, a) in names.iter().enumerate() {
            if names[i + 1..]
                .iter()
                .any(|b| crate::headers::same_name(a, b))
            {
                let origin = self.origin_of("headers");
                self.problem(
                    "headers",
                    &origin,
                    format!("`{a}` is used for two identity headers; each needs its own name"),
                );
                return None;
            }
        }
        Some(Headers {
            user,
            email,
            groups,
            role,
            trusted_proxies: trusted_proxies?,
        })
    }

    fn local_login(
        &mut self,
        oidc: Option<&Option<Oidc>>,
        enabled: bool,
        warnings: &mut Vec<String>,
    ) -> Option<LocalLogin> {
        let users_file = self.optional("local_login.users_file", |s| Ok(PathBuf::from(s)));

        if enabled && matches!(users_file, Some(None)) {
            let origin = self.origin_of("local_login.enabled");
            self.problem(
                "local_login.enabled",
                &origin,
                "is true, but no users file lists who may sign in; set \
                 local_login.users_file (users with a password_hash from \
                 `billguard hash-password`)"
                    .into(),
            );
            return None;
        }
        let users_file = users_file?;
        let needs_users = matches!(oidc, Some(Some(o)) if !o.auto_provision);
        let users = match (&users_file, needs_users) {
            (Some(path), _) => match read_users(path) {
                Ok(users) => users,
                Err(message) => {
                    let origin = self.origin_of("local_login.users_file");
                    self.problem("local_login.users_file", &origin, message);
                    return None;
                }
            },
            (None, true) => {
                let origin = self.origin_of("oidc.auto_provision");
                self.problem(
                    "oidc.auto_provision",
                    &origin,
                    "is false, so only known users may sign in, but no \
                     local_login.users_file lists them; set local_login.users_file"
                        .into(),
                );
                return None;
            }
            (None, false) => Vec::new(),
        };
        if enabled && !users.iter().any(|u| u.password_hash.is_some()) {
            warnings.push(
                "local_login.enabled is true, but no user in the users file has a \
                 password_hash, so nobody can sign in with a password"
                    .into(),
            );
        }
        Some(LocalLogin {
            enabled,
            users_file,
            users,
        })
    }

    /// `[[routes]]`: only from the file, compiled and checked in order.
    fn routes(&mut self, oidc: Option<&Oidc>) -> Option<crate::policy::Routes> {
        use crate::policy::{Access, Routes, Rule};

        let Some((value, origin)) = self.raw("routes") else {
            self.record("routes", "(none)".into(), &Origin::Default);
            return Some(Routes::default());
        };
        let Value::Array(_, tables) = value else {
            self.problem(
                "routes",
                &origin,
                "must be a list of [[routes]] tables, each with `path` and `access`".into(),
            );
            return None;
        };
        let mut rules = Vec::with_capacity(tables.len());
        let mut failed = false;
        for (i, table) in tables.iter().enumerate() {
            let at = format!("routes[{}]", i + 1);
            let Value::Dict(_, dict) = table else {
                self.problem(&at, &origin, "must be a [[routes]] table".into());
                failed = true;
                continue;
            };
            for key in dict.keys().filter(|k| !ROUTE_KEYS.contains(&k.as_str())) {
                self.problem(
                    &format!("{at}.{key}"),
                    &origin,
                    format!(
                        "unknown setting; allowed in [[routes]]: {}",
                        ROUTE_KEYS.join(", ")
                    ),
                );
                failed = true;
            }
            let text = |key: &str| dict.get(key).and_then(value_text);
            let Some(pattern) = text("path") else {
                self.problem(
                    &format!("{at}.path"),
                    &origin,
                    "is required: a regular expression for the whole path, such as \
                     `/api/health` or `/static/.*`"
                        .into(),
                );
                failed = true;
                continue;
            };
            let access = match text("access").as_deref().map(Access::parse) {
                Some(Ok(access)) => access,
                Some(Err(e)) => {
                    self.problem(&format!("{at}.access"), &origin, e.to_string());
                    failed = true;
                    continue;
                }
                None => {
                    self.problem(
                        &format!("{at}.access"),
                        &origin,
                        "is required; allowed: public, authenticated, admin".into(),
                    );
                    failed = true;
                    continue;
                }
            };
            let methods = match dict.get("methods") {
                None => None,
                Some(Value::Array(_, items)) => {
                    match items.iter().map(value_text).collect::<Option<Vec<_>>>() {
                        Some(names) => Some(names),
                        None => {
                            self.problem(
                                &format!("{at}.methods"),
                                &origin,
                                "must be a list of method names such as [\"GET\", \"HEAD\"]".into(),
                            );
                            failed = true;
                            continue;
                        }
                    }
                }
                Some(other) => value_text(other).map(|t| split_list(&t)),
            };
            let rule = Rule::new(&pattern, methods.as_deref(), access).and_then(|rule| {
                let callback = oidc.map_or("/api/auth/oidc/callback", |o| o.redirect_uri.path());
                rule.check_public(callback).map(|()| rule)
            });
            match rule {
                Ok(rule) => rules.push(rule),
                Err(e) => {
                    let key = match e {
                        crate::policy::RuleError::Method(_) => "methods",
                        _ => "path",
                    };
                    self.problem(&format!("{at}.{key}"), &origin, e.to_string());
                    failed = true;
                }
            }
        }
        let shown = rules
            .iter()
            .map(|r| format!("{} {} {}", r.methods_text(), r.pattern, r.access))
            .collect::<Vec<_>>()
            .join("; ");
        self.record("routes", shown, &origin);
        (!failed).then(|| Routes::new(rules))
    }

    fn bearer(&mut self, oidc: Option<&Oidc>) -> Option<Bearer> {
        // Without a provider there are no keys to check tokens against.
        let default_enabled = if oidc.is_some() { "true" } else { "false" };
        let enabled = self.parse("bearer.enabled", Some(default_enabled), parse_bool);
        let client_id = oidc.map(|o| o.client_id.clone()).unwrap_or_default();
        let audiences = self.list("bearer.audiences", &client_id, parse_text);
        let introspection_url = self.optional("bearer.introspection_url", |s| {
            parse_browser_url(s, "the provider's token introspection endpoint")
        });
        let introspection_cache = self.parse(
            "bearer.introspection_cache",
            Some(DEFAULT_INTROSPECTION_CACHE),
            parse_duration,
        );
        let forward_authorization =
            self.parse("bearer.forward_authorization", Some("false"), parse_bool);
        if enabled == Some(true) && audiences.as_ref().is_some_and(Vec::is_empty) {
            let origin = self.origin_of("bearer.audiences");
            self.problem(
                "bearer.audiences",
                &origin,
                "is empty, so no token could ever be accepted; name at least one audience \
                 (such as the client ID), or set bearer.enabled = false"
                    .into(),
            );
            return None;
        }
        Some(Bearer {
            enabled: enabled?,
            audiences: audiences?,
            introspection_url: introspection_url?,
            introspection_cache: introspection_cache?,
            forward_authorization: forward_authorization?,
        })
    }

    fn statement(&mut self, oidc: Option<&Oidc>, warnings: &mut Vec<String>) -> Option<Statement> {
        use crate::statement::{Alg, Signer};

        let enabled = self.parse("statement.enabled", Some("false"), parse_bool);
        let alg = self.parse("statement.alg", Some(DEFAULT_STATEMENT_ALG), Alg::parse);
        let key_file = self.optional("statement.key_file", |s| Ok(PathBuf::from(s)));
        let header = self.parse(
            "statement.header",
            Some(DEFAULT_STATEMENT_HEADER),
            parse_header_name,
        );
        let ttl = self.parse("statement.ttl", Some(DEFAULT_STATEMENT_TTL), parse_duration);
        let audience = self.parse(
            "statement.audience",
            Some(DEFAULT_STATEMENT_AUDIENCE),
            parse_text,
        );

        let (enabled, alg, key_file) = (enabled?, alg?, key_file?);
        let signer = match (enabled, &key_file) {
            (false, _) => None,
            (true, Some(path)) => {
                let loaded = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|pem| {
                        Signer::from_pem(alg, &pem).map_err(|e| {
                            format!(
                                "{}: {e}; create one with `openssl genpkey -algorithm {}`",
                                path.display(),
                                match alg {
                                    Alg::Es256 => "EC -pkeyopt ec_paramgen_curve:P-256",
                                    Alg::EdDsa => "ed25519",
                                }
                            )
                        })
                    });
                match loaded {
                    Ok(signer) => Some(signer),
                    Err(message) => {
                        let origin = self.origin_of("statement.key_file");
                        self.problem("statement.key_file", &origin, message);
                        return None;
                    }
                }
            }
            (true, None) => match Signer::generate(alg) {
                Ok(signer) => {
                    warnings.push(
                        "statement.key_file is not set: a statement key was generated for \
                         this run; apps must fetch /_billguard/jwks.json again after a restart"
                            .into(),
                    );
                    Some(signer)
                }
                Err(e) => {
                    self.problem("statement.enabled", &Origin::Default, e.to_string());
                    return None;
                }
            },
        };
        let issuer = oidc
            .map(|o| o.redirect_uri.origin().ascii_serialization())
            .unwrap_or_default();
        Some(Statement {
            signer: signer.map(std::sync::Arc::new),
            header: header?,
            ttl: ttl?,
            issuer,
            audience: audience?,
        })
    }

    fn access_token(&mut self) -> Option<AccessToken> {
        let forward = self.parse("access_token.forward", Some("false"), parse_bool);
        let header = self.optional("access_token.header", |s| {
            let name = HeaderName::from_bytes(s.as_bytes())
                .map_err(|_| format!("`{s}` is not a valid HTTP header name"))?;
            if name != hyper::header::AUTHORIZATION && crate::headers::is_reserved(&name) {
                return Err(format!(
                    "`{s}` is a header billguard or HTTP itself manages; allowed: \
                     Authorization or a header of your own such as X-Access-Token"
                ));
            }
            Ok(name)
        });
        Some(AccessToken {
            forward: forward?,
            header: header?.unwrap_or(hyper::header::AUTHORIZATION),
        })
    }

    /// Group names: a list, or one string split on commas (names may hold
    /// spaces).
    fn groups(&mut self, key: &'static str) -> Option<Vec<String>> {
        let (items, origin) = match self.raw(key) {
            None => (Vec::new(), Origin::Default),
            Some((Value::Array(_, values), origin)) => {
                match values.iter().map(value_text).collect::<Option<Vec<_>>>() {
                    Some(items) => (items, origin),
                    None => {
                        self.problem(key, &origin, "must be a list of group names".into());
                        return None;
                    }
                }
            }
            Some((value, origin)) => match value_text(&value) {
                Some(text) => (text.split(',').map(str::to_owned).collect(), origin),
                None => {
                    self.problem(key, &origin, "must be a list of group names".into());
                    return None;
                }
            },
        };
        let mut groups = Vec::new();
        for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            match parse_text(item) {
                Ok(g) => groups.push(g),
                Err(message) => {
                    self.problem(key, &origin, message);
                    return None;
                }
            }
        }
        let shown = if groups.is_empty() {
            "(none: every user the provider admits)".to_owned()
        } else {
            groups.join(", ")
        };
        self.record(key, shown, &origin);
        Some(groups)
    }

    fn tls(&mut self) -> Option<Option<Tls>> {
        let cert_file = self.optional("tls.cert_file", |s| Ok(PathBuf::from(s)));
        let key_file = self.optional("tls.key_file", |s| Ok(PathBuf::from(s)));
        let handshake_timeout = self.parse(
            "tls.handshake_timeout",
            Some(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            parse_duration,
        );
        let reload_interval = self.parse(
            "tls.reload_interval",
            Some(DEFAULT_TLS_RELOAD_INTERVAL),
            parse_duration,
        );

        let (cert_file, key_file) = match (cert_file?, key_file?) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => return Some(None),
            (Some(_), None) | (None, Some(_)) => {
                let (given, missing) = if self.raw("tls.cert_file").is_some() {
                    ("tls.cert_file", "tls.key_file")
                } else {
                    ("tls.key_file", "tls.cert_file")
                };
                let origin = self.origin_of(given);
                self.problem(
                    missing,
                    &origin,
                    format!("is required when {given} is set; give both PEM files, or neither"),
                );
                return None;
            }
        };
        // Check the pair now, so a bad certificate fails the start (exit 2)
        // and `billguard config` reports it.
        if let Err(error) = crate::tls::load_identity(&cert_file, &key_file) {
            let key = if error.file() == Some(key_file.as_path()) {
                "tls.key_file"
            } else {
                "tls.cert_file"
            };
            let origin = self.origin_of(key);
            self.problem(key, &origin, error.to_string());
            return None;
        }
        Some(Some(Tls {
            cert_file,
            key_file,
            handshake_timeout: handshake_timeout?,
            reload_interval: reload_interval?,
        }))
    }

    fn limits(&mut self) -> Option<Limits> {
        let header_read_timeout = self.parse(
            "limits.header_read_timeout",
            Some(DEFAULT_HEADER_READ_TIMEOUT),
            parse_duration,
        );
        let max_header_bytes = self.parse(
            "limits.max_header_bytes",
            Some(DEFAULT_MAX_HEADER_BYTES),
            |s| match s.parse::<usize>() {
                Ok(n) if (MIN_HEADER_BYTES..=16 << 20).contains(&n) => Ok(n),
                _ => Err(format!(
                    "`{s}` is not a size in bytes between {MIN_HEADER_BYTES} and 16777216; \
                     for example 65536"
                )),
            },
        );
        let max_connections = self.parse(
            "limits.max_connections",
            Some(DEFAULT_MAX_CONNECTIONS),
            |s| match s.parse::<usize>() {
                Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
                _ => Err(format!(
                    "`{s}` is not a whole number between 1 and 1048576; for example 10000"
                )),
            },
        );
        Some(Limits {
            header_read_timeout: header_read_timeout?,
            max_header_bytes: max_header_bytes?,
            max_connections: max_connections?,
        })
    }

    fn shutdown(&mut self) -> Option<Shutdown> {
        let delay = self.parse(
            "shutdown.delay",
            Some(DEFAULT_SHUTDOWN_DELAY),
            parse_duration_or_zero,
        );
        let grace = self.parse(
            "shutdown.grace",
            Some(DEFAULT_SHUTDOWN_GRACE),
            parse_duration_or_zero,
        );
        Some(Shutdown {
            delay: delay?,
            grace: grace?,
        })
    }

    // --- primitives ---

    /// The merged value of a key and the layer it came from.
    fn raw(&self, key: &str) -> Option<(Value, Origin)> {
        let value = self.fig.find_value(key).ok()?;
        let origin = match self.fig.find_metadata(key) {
            Some(meta) => origin_from(meta, key),
            None => Origin::Default,
        };
        Some((value, origin))
    }

    fn origin_of(&self, key: &str) -> Origin {
        self.raw(key).map(|(_, o)| o).unwrap_or(Origin::Default)
    }

    /// A value that has a default.
    fn parse<T>(
        &mut self,
        key: &'static str,
        default: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.text(key, default) {
            Some((text, origin)) => self.finish(key, &text, origin, parse),
            None => None,
        }
    }

    /// A value without a default whose absence is fine.
    fn optional<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match self.text(key, None) {
            Some((text, origin)) => self.finish(key, &text, origin, parse).map(Some),
            None => {
                self.record(key, "(unset)".into(), &Origin::Default);
                Some(None)
            }
        }
    }

    /// A value that must be given.
    fn required<T>(
        &mut self,
        key: &'static str,
        default: Option<&str>,
        _secret: bool,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.text(key, default) {
            Some((text, origin)) => self.finish(key, &text, origin, parse),
            None => {
                let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
                let place = if table.is_empty() {
                    format!("`{name}` at the top of the config file")
                } else {
                    format!("`{name}` under [{table}] in the config file")
                };
                self.problems.push(Problem {
                    key: key.into(),
                    source: "unset".into(),
                    message: format!(
                        "is required; set {place} or the environment variable {}",
                        env_name(key)
                    ),
                });
                None
            }
        }
    }

    /// A list given as an array or as a string split on spaces and commas.
    fn list<T>(
        &mut self,
        key: &'static str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let (items, origin): (Vec<String>, Origin) = match self.raw(key) {
            Some((Value::Array(_, values), origin)) => {
                let mut items = Vec::new();
                for value in values {
                    match value_text(&value) {
                        Some(text) => items.push(text),
                        None => {
                            self.problem(key, &origin, "must be a list of strings".into());
                            return None;
                        }
                    }
                }
                (items, origin)
            }
            Some((value, origin)) => match value_text(&value) {
                Some(text) => (split_list(&text), origin),
                None => {
                    self.problem(key, &origin, "must be a string or a list of strings".into());
                    return None;
                }
            },
            None => (split_list(default), Origin::Default),
        };

        let mut parsed = Vec::with_capacity(items.len());
        let mut failed = false;
        for item in &items {
            match parse(item) {
                Ok(v) => parsed.push(v),
                Err(message) => {
                    self.problem(key, &origin, message);
                    failed = true;
                }
            }
        }
        let shown = if items.is_empty() {
            "(none)".to_owned()
        } else {
            items.join(" ")
        };
        self.record(key, shown, &origin);
        (!failed).then_some(parsed)
    }

    fn text(&mut self, key: &'static str, default: Option<&str>) -> Option<(String, Origin)> {
        match self.raw(key) {
            Some((value, origin)) => match value_text(&value) {
                Some(text) => Some((text, origin)),
                None => {
                    self.problem(
                        key,
                        &origin,
                        "must be a single value, not a table or list".into(),
                    );
                    None
                }
            },
            None => default.map(|d| (d.to_owned(), Origin::Default)),
        }
    }

    fn finish<T>(
        &mut self,
        key: &'static str,
        text: &str,
        origin: Origin,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let shown = if SECRETS.contains(&key) {
            "********".to_owned()
        } else {
            text.to_owned()
        };
        self.record(key, shown, &origin);
        match parse(text.trim()) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(key, &origin, message);
                None
            }
        }
    }

    fn record(&mut self, key: &'static str, value: String, origin: &Origin) {
        self.entries.push(Entry {
            key,
            value,
            source: origin.to_string(),
        });
    }

    fn problem(&mut self, key: &str, origin: &Origin, message: String) {
        self.problems.push(Problem {
            key: key.into(),
            source: origin.to_string(),
            message,
        });
    }
}

fn origin_from(meta: &Metadata, key: &str) -> Origin {
    match meta.name.as_ref() {
        "flag" => Origin::Flag(match key {
            "listen" => "--listen",
            _ => "--upstream",
        }),
        "file" => match &meta.source {
            Some(figment::Source::File(path)) => Origin::File(path.clone()),
            _ => Origin::Default,
        },
        _ => Origin::Env(env_name(key)),
    }
}

/// The text of a scalar value; `None` for tables and lists.
fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(_, s) => Some(s.clone()),
        Value::Char(_, c) => Some(c.to_string()),
        Value::Bool(_, b) => Some(b.to_string()),
        Value::Num(_, n) => {
            if let Some(i) = n.to_i128() {
                Some(i.to_string())
            } else {
                n.to_f64().map(|f| f.to_string())
            }
        }
        Value::Empty(..) | Value::Dict(..) | Value::Array(..) => None,
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn random_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 48] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn read_users(path: &Path) -> Result<Vec<KnownUser>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct UsersFile {
        #[serde(default)]
        users: Vec<KnownUser>,
    }

    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
    let file: UsersFile = toml::from_str(&text).map_err(|e| {
        format!(
            "users file {}{}: {}",
            path.display(),
            line_of(&text, e.span()),
            e.message()
        )
    })?;
    for (i, user) in file.users.iter().enumerate() {
        if user.username.trim().is_empty() {
            return Err(format!(
                "users file {}: user #{} has an empty username",
                path.display(),
                i + 1
            ));
        }
        if let Some(hash) = &user.password_hash
            && let Err(reason) = check_password_hash(hash)
        {
            return Err(format!(
                "users file {}: user `{}` has a password_hash that {reason}; create one \
                 with `billguard hash-password`",
                path.display(),
                user.username
            ));
        }
        if let Some(role) = &user.role
            && role != "admin"
            && role != "user"
        {
            return Err(format!(
                "users file {}: user `{}` has role `{role}`; allowed: admin, user",
                path.display(),
                user.username
            ));
        }
    }
    Ok(file.users)
}

/// Largest argon2 memory cost accepted from the users file, in KiB: every
/// password check allocates this much.
const MAX_HASH_MEMORY_KIB: u32 = 256 * 1024;
const MAX_HASH_PASSES: u32 = 16;
const MAX_HASH_LANES: u32 = 8;

/// A `password_hash` must be an argon2id PHC string with bounded costs, so
/// that no entry can make a sign-in attempt arbitrarily expensive.
fn check_password_hash(text: &str) -> Result<(), String> {
    use argon2::password_hash::phc::PasswordHash;

    if ["$2a$", "$2b$", "$2y$", "$apr1$", "$1$", "$5$", "$6$"]
        .iter()
        .any(|p| text.trim().starts_with(p))
    {
        return Err("is not argon2id (it looks like bcrypt or crypt); allowed: argon2id".into());
    }
    let hash = PasswordHash::new(text.trim())
        .map_err(|_| "is not a PHC string such as $argon2id$v=19$m=19456,t=2,p=1$...".to_owned())?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "uses `{}`; allowed: argon2id",
            hash.algorithm.as_str()
        ));
    }
    let params =
        argon2::Params::try_from(&hash).map_err(|_| "has invalid argon2 parameters".to_owned())?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("lacks a salt or a hash value".into());
    }
    if params.m_cost() > MAX_HASH_MEMORY_KIB
        || params.t_cost() > MAX_HASH_PASSES
        || params.p_cost() > MAX_HASH_LANES
    {
        return Err(format!(
            "has costs above the accepted bounds (m at most {MAX_HASH_MEMORY_KIB}, t at most \
             {MAX_HASH_PASSES}, p at most {MAX_HASH_LANES})"
        ));
    }
    Ok(())
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" at line {line}")
        }
        None => String::new(),
    }
}

// --- value parsers: each says what is allowed ---

fn parse_text(s: &str) -> Result<String, String> {
    if s.chars().any(char::is_control) {
        return Err("contains control characters; allowed: printable text".into());
    }
    Ok(s.to_owned())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "`{s}` is not a boolean; allowed: true, false, 1, 0, yes, no"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "`{s}` is not a duration; allowed: a positive duration such as 90s, 30m, 12h"
        )),
    }
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| format!("`{s}` is not a duration; allowed: a duration such as 0s, 5s, 1m"))
}

fn parse_ca_file(s: &str) -> Result<CaBundle, String> {
    let path = PathBuf::from(s);
    let certs = crate::tls::read_ca_bundle(&path).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(certs.iter().cloned());
    if unusable > 0 {
        return Err(format!(
            "{}: {unusable} of {} certificates are not valid CA certificates; \
             give a PEM bundle of CA certificates",
            path.display(),
            certs.len()
        ));
    }
    Ok(CaBundle { path, certs })
}

fn parse_redis_url(s: &str) -> Result<Secret, String> {
    // Never echo the value: it may carry a password.
    let url = Url::parse(s).map_err(|e| format!("is not a URL ({e})"))?;
    match url.scheme() {
        "redis" | "rediss" if url.host_str().is_some_and(|h| !h.is_empty()) => {
            Ok(Secret::new(s.to_owned()))
        }
        "redis" | "rediss" => Err("has no host; for example redis://redis:6379/0".into()),
        other => Err(format!(
            "has scheme `{other}`; allowed: redis (plain) or rediss (TLS)"
        )),
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not an address; allowed: ip:port such as 0.0.0.0:4180 or [::]:4180")
    })
}

fn parse_upstream_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| {
        format!("`{s}` is not a URL ({e}); allowed: http://host:port or https://host:port of the app, such as http://127.0.0.1:8080")
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "`{s}` uses {}; allowed: an http:// URL (the app beside billguard) or https://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty)
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "`{s}` must name only a host and port, such as http://127.0.0.1:8080 \
             (requests keep their own path)"
        ));
    }
    Ok(url)
}

fn parse_issuer(s: &str) -> Result<String, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL ({e})"))?;
    let secure = url.scheme() == "https" || (url.scheme() == "http" && is_loopback_host(&url));
    if !secure || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{s}` is not an issuer; allowed: the https:// issuer URL exactly as the provider \
             states it (Authentik: https://auth.example.com/application/o/<slug>/, with the \
             trailing slash); plain http only on loopback"
        ));
    }
    // The issuer is compared as a string (OIDC Discovery §4.3), so keep it as
    // written rather than as the URL parser would normalise it.
    Ok(s.to_owned())
}

fn parse_browser_url(s: &str, what: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL ({e}); it must be {what}"))?;
    let secure = url.scheme() == "https" || (url.scheme() == "http" && is_loopback_host(&url));
    if !secure || url.fragment().is_some() || url.query().is_some() {
        return Err(format!(
            "`{s}` must be {what}: an https:// URL without query or fragment \
             (plain http only on loopback)"
        ));
    }
    Ok(url)
}

fn parse_auth_method(s: &str) -> Result<TokenAuthMethod, String> {
    match s {
        "client_secret_basic" => Ok(TokenAuthMethod::ClientSecretBasic),
        "client_secret_post" => Ok(TokenAuthMethod::ClientSecretPost),
        _ => Err(format!(
            "`{s}` is not supported; allowed: client_secret_basic, client_secret_post"
        )),
    }
}

fn parse_scope(s: &str) -> Result<String, String> {
    // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    let valid = s
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!("`{s}` is not a valid scope name"))
    }
}

/// Signature algorithms an ID token may use. `none` is never allowed.
pub const SUPPORTED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

fn parse_alg(s: &str) -> Result<String, String> {
    if SUPPORTED_ALGS.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not an accepted ID token algorithm; allowed: {}",
            SUPPORTED_ALGS.join(", ")
        ))
    }
}

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| format!("`{s}` is not a valid HTTP header name"))?;
    if crate::headers::is_reserved(&name) {
        return Err(format!(
            "`{s}` is a header billguard or HTTP itself manages; choose another name, \
             such as X-Forwarded-User"
        ));
    }
    Ok(name)
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not an IP address or CIDR range such as 10.0.0.0/8"))
}

// === impl Origin ===

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "flag {name}"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

// === impl Problem ===

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.key, self.source, self.message)
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

// === layers ===

/// `OIDC_*` and `BILLGUARD_*` variables as raw strings: values are never
/// guessed into numbers or lists here, the typed readers decide.
struct EnvLayer {
    dict: Dict,
}

impl EnvLayer {
    fn new(env: &BTreeMap<String, String>, warnings: &mut Vec<String>) -> Self {
        let mut dict = Dict::new();
        for (name, value) in env {
            if CLI_ENV.contains(&name.as_str()) || value.trim().is_empty() {
                continue;
            }
            let key = if let Some(rest) = name.strip_prefix("OIDC_") {
                format!("oidc.{}", rest.to_ascii_lowercase())
            } else if let Some(rest) = name.strip_prefix("BILLGUARD_") {
                rest.to_ascii_lowercase().replace("__", ".")
            } else {
                continue;
            };
            if !is_known(&key) {
                warnings.push(format!(
                    "environment variable {name} does not name a billguard setting; it is ignored"
                ));
                continue;
            }
            insert_path(&mut dict, &key, Value::from(value.clone()));
        }
        EnvLayer { dict }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("env")
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The configuration file, with empty strings dropped so they fall through to
/// the environment.
struct FileLayer {
    path: PathBuf,
    dict: Dict,
    raw: toml::Table,
}

impl FileLayer {
    fn read(path: &Path) -> Result<Self, Problem> {
        let problem = |message: String| Problem {
            key: "--config".into(),
            source: format!("file {}", path.display()),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| problem(format!("cannot read the config file: {e}")))?;
        // The parser's own message would quote the offending line, which may
        // hold a secret: report only the line number and the reason.
        let raw: toml::Table = toml::from_str(&text).map_err(|e| {
            problem(format!(
                "not valid TOML{}: {}",
                line_of(&text, e.span()),
                e.message()
            ))
        })?;
        let mut dict = Dict::new();
        for (k, v) in &raw {
            if let Some(v) = non_empty(v) {
                dict.insert(k.clone(), v);
            }
        }
        Ok(FileLayer {
            path: path.to_owned(),
            dict,
            raw,
        })
    }

    /// Keys the file sets that billguard does not know.
    fn unknown_keys(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let source = format!("file {}", self.path.display());
        for (key, value) in &self.raw {
            match value {
                toml::Value::Table(table) if KEYS.iter().any(|(t, _)| t == key) => {
                    let known = KEYS.iter().find(|(t, _)| t == key).map(|(_, k)| *k);
                    for sub in table.keys() {
                        if !known.unwrap_or_default().contains(&sub.as_str()) {
                            problems.push(Problem {
                                key: format!("{key}.{sub}"),
                                source: source.clone(),
                                message: format!(
                                    "unknown setting; allowed in [{key}]: {}",
                                    known.unwrap_or_default().join(", ")
                                ),
                            });
                        }
                    }
                }
                _ if is_known(key) => {}
                // `[[routes]]` is read, key by key, in `Reader::routes`.
                _ if key == "routes" => {}
                _ => problems.push(Problem {
                    key: key.clone(),
                    source: source.clone(),
                    message: format!(
                        "unknown setting; allowed at the top level: {}; tables: {}, [[routes]]",
                        KEYS[0].1.join(", "),
                        KEYS[1..]
                            .iter()
                            .map(|(t, _)| format!("[{t}]"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
            }
        }
        problems
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from("file", figment::Source::File(self.path.clone()))
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Command-line flags, the highest layer.
struct FlagLayer {
    dict: Dict,
}

impl FlagLayer {
    fn new(inputs: &Inputs) -> Self {
        let mut dict = Dict::new();
        let flags = [
            ("listen", &inputs.listen_flag),
            ("upstream", &inputs.upstream_flag),
        ];
        for (key, value) in flags {
            if let Some(value) = value.as_ref().filter(|v| !v.trim().is_empty()) {
                dict.insert(key.into(), Value::from(value.clone()));
            }
        }
        FlagLayer { dict }
    }
}

impl Provider for FlagLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("flag")
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn is_known(key: &str) -> bool {
    let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
    KEYS.iter()
        .any(|(t, keys)| *t == table && keys.contains(&name))
}

fn insert_path(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        Some((table, rest)) => {
            let entry = dict
                .entry(table.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
        None => {
            dict.insert(key.to_owned(), value);
        }
    }
}

/// The file value as a figment value, with empty and blank strings removed.
fn non_empty(value: &toml::Value) -> Option<Value> {
    Some(match value {
        toml::Value::String(s) if s.trim().is_empty() => return None,
        toml::Value::String(s) => Value::from(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(items) => {
            Value::from(items.iter().filter_map(non_empty).collect::<Vec<_>>())
        }
        toml::Value::Table(table) => {
            let dict: Dict = table
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), non_empty(v)?)))
                .collect();
            Value::from(dict)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_argon2id_hashes_with_bounded_costs_are_accepted() {
        let good = "$argon2id$v=19$m=19456,t=2,p=1$vpG0nGxIU43H1RFuSmkruw$\
                    1XnlVPn4Y45cnynXbF8fgoNDM2jeiFODngSPacPw8Sw";
        assert_eq!(check_password_hash(good), Ok(()));
        let argon2i = good.replacen("argon2id", "argon2i", 1);
        assert!(
            check_password_hash(&argon2i)
                .unwrap_err()
                .contains("argon2i")
        );
        let huge = good.replacen("m=19456", "m=4194304", 1);
        assert!(check_password_hash(&huge).unwrap_err().contains("bounds"));
        let bcrypt = "$2b$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
        assert!(check_password_hash(bcrypt).unwrap_err().contains("bcrypt"));
        assert!(check_password_hash("hunter2").is_err());
        assert!(check_password_hash("$argon2id$v=19$m=19456,t=2,p=1").is_err());
    }
}
