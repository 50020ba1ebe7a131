//! The whole arrangement a test runs against: the fake provider, the echo
//! app, and the real billguard server on ephemeral loopback ports, with
//! billguard configured through a real configuration file.

use std::io::Write as _;

use billguard::config::{self, Inputs};
use billguard::server::{self, Running};
use tokio::net::TcpListener;

use super::browser::{Browser, Navigation};
use super::provider::{AuthMethod, Provider, ProviderOptions};
use super::upstream::Upstream;

pub const ADMIN_GROUP: &str = "bill-tracker-admins";
pub const CALLBACK_PATH: &str = "/api/auth/oidc/callback";

/// How to set the arrangement up.
pub struct StackOptions {
    pub provider: ProviderOptions,
    /// Extra TOML appended to the generated configuration; a `[table]`
    /// written here must not repeat one the stack writes (`[oidc]`,
    /// `[session]`). `{provider}` becomes the fake provider's base URL.
    pub extra_toml: String,
    /// Extra lines inside `[oidc]`.
    pub oidc_toml: String,
    /// Overrides the upstream URL (to point at a closed port, say).
    pub upstream_url: Option<String>,
    /// The provider answers 503 when billguard starts.
    pub provider_down_at_start: bool,
    pub admin_group: Option<&'static str>,
    /// Time the app has for response headers. Generous by default: a large
    /// upload must finish within it on a loaded machine.
    pub upstream_timeout: &'static str,
    /// Leave `[oidc]` out entirely (local login alone; needs `[local_login]`
    /// in `extra_toml`).
    pub without_oidc: bool,
    /// Extra lines inside `[session]`.
    pub session_toml: String,
    /// `oidc.scopes`, when not the default `openid email profile groups`.
    pub scopes: Option<String>,
}

pub struct Stack {
    pub provider: Provider,
    pub upstream: Upstream,
    pub proxy: Running,
    pub base: String,
    config: tempfile::NamedTempFile,
    inputs: Inputs,
    oidc_table: String,
}

/// One more billguard with the same configuration, as another replica.
pub struct Replica {
    pub proxy: Running,
    pub base: String,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            provider: ProviderOptions::default(),
            extra_toml: String::new(),
            oidc_toml: String::new(),
            upstream_url: None,
            provider_down_at_start: false,
            admin_group: Some(ADMIN_GROUP),
            upstream_timeout: "20s",
            without_oidc: false,
            session_toml: String::new(),
            scopes: None,
        }
    }
}

// === impl Replica ===

impl Replica {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

// === impl Stack ===

impl Stack {
    pub async fn start() -> Stack {
        Stack::with(StackOptions::default()).await
    }

    pub async fn with(opts: StackOptions) -> Stack {
        trace_init();
        let provider = Provider::start(opts.provider.clone()).await;
        if opts.provider_down_at_start {
            provider.misbehave(super::provider::Misbehave::Unavailable);
        }
        let upstream = Upstream::start().await;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        let base = format!("http://{}", listener.local_addr().unwrap());

        let method = match opts.provider.auth_method {
            AuthMethod::Basic => "client_secret_basic",
            AuthMethod::Post => "client_secret_post",
        };
        let oidc_table = format!(
            r#"
[oidc]
provider_name = "Test provider"
issuer_url = "{issuer}"
client_id = "{client_id}"
client_secret = "{client_secret}"
token_auth_method = "{method}"
redirect_uri = "{base}{CALLBACK_PATH}"
scopes = "{scopes}"
{admin_group}
{oidc_extra}
"#,
            issuer = provider.issuer(),
            client_id = provider.client_id(),
            client_secret = provider.client_secret(),
            oidc_extra = opts.oidc_toml,
            scopes = opts
                .scopes
                .as_deref()
                .unwrap_or("openid email profile groups"),
            admin_group = opts
                .admin_group
                .map(|g| format!("admin_group = \"{g}\""))
                .unwrap_or_default(),
        );
        let toml = format!(
            r#"
listen = "127.0.0.1:0"
upstream = "{upstream}"
upstream_timeout = "{upstream_timeout}"
{oidc}
[session]
secret = "a-test-secret-that-is-long-enough-for-the-key"
{session_extra}
{extra}
"#,
            upstream = opts.upstream_url.clone().unwrap_or_else(|| upstream.url()),
            oidc = if opts.without_oidc {
                ""
            } else {
                oidc_table.as_str()
            },
            extra = opts.extra_toml.replace("{provider}", &provider.url()),
            upstream_timeout = opts.upstream_timeout,
            session_extra = opts.session_toml,
        );
        let mut file = tempfile::NamedTempFile::new().expect("temp config file");
        file.write_all(toml.as_bytes()).expect("write config");

        let inputs = Inputs {
            file: Some(file.path().to_owned()),
            ..Inputs::default()
        };
        let loaded = config::load(&inputs).unwrap_or_else(|p| panic!("test config rejected:\n{p}"));
        let proxy =
            server::start_reloading(loaded, inputs.clone(), listener).expect("start billguard");
        if !opts.provider_down_at_start {
            proxy.wait_ready().await;
        }
        Stack {
            provider,
            upstream,
            proxy,
            base,
            config: file,
            inputs,
            oidc_table,
        }
    }

    /// Starts another billguard with the same configuration on a new port.
    pub async fn replica(&self) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind replica port");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let proxy = self.launch(listener);
        proxy.wait_ready().await;
        Replica { proxy, base }
    }

    /// Shuts billguard down (as on SIGTERM) and starts it again with the same configuration,
    /// on a new port (`base` follows).
    pub async fn restart(self) -> Stack {
        let Stack {
            provider,
            upstream,
            proxy,
            config,
            inputs,
            oidc_table,
            ..
        } = self;
        proxy.shutdown().await;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stack = Stack {
            provider,
            upstream,
            proxy: launch(&inputs, listener),
            base,
            config,
            inputs,
            oidc_table,
        };
        stack.proxy.wait_ready().await;
        stack
    }

    fn launch(&self, listener: TcpListener) -> Running {
        launch(&self.inputs, listener)
    }

    /// The `[oidc]` table for the fake provider, as the stack wrote it.
    pub fn oidc_table(&self) -> &str {
        &self.oidc_table
    }

    /// The configuration file the running proxy reloads from.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.config.path()).expect("read the config file")
    }

    /// Replaces the configuration file in place, as an operator's editor
    /// would; the proxy notices the change by itself.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.config.path(), toml).expect("write the config file");
    }

    pub fn config_path(&self) -> &std::path::Path {
        self.config.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs `user` in through the whole redirect dance, starting at `path`.
    pub async fn login(&self, browser: &Browser, user: &str, path: &str) -> Navigation {
        self.provider.login_as(user);
        browser.navigate(&self.url(path)).await
    }

    /// The name of the session cookie (plain http on loopback: no prefix).
    pub fn session_cookie(&self) -> &'static str {
        "billguard_session"
    }
}

fn launch(inputs: &Inputs, listener: TcpListener) -> Running {
    let loaded = config::load(inputs).unwrap_or_else(|p| panic!("test config rejected:\n{p}"));
    server::start_reloading(loaded, inputs.clone(), listener).expect("start billguard")
}

/// Routes billguard's logs into the test output, so a failing test shows
/// what the proxy said.
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("billguard=debug")
        .try_init();
}

/// The headers the echo app received, as (name, value) pairs.
pub fn seen_headers(echo: &serde_json::Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .expect("echo has headers")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every value of a header the echo app received (names compared
/// case-insensitively).
pub fn seen(echo: &serde_json::Value, name: &str) -> Vec<String> {
    seen_headers(echo)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}
