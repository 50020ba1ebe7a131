//! `billguard demo`: billguard between a built-in demo OpenID provider and a
//! stand-in app, all on loopback, for trying billguard in one command. Never
//! for production: the demo provider lets anyone sign in as any demo user.
//!
//! The proxy in the middle is the real one, reached through the same calls
//! as `serve`: the settings go through `config::load` (as environment
//! values that the demo writes itself, so none of the operator's `OIDC_*`
//! or `BILLGUARD_*` variables leak in) and the server is `server::start`.
//! Nothing about the proxy is relaxed for the demo; the provider signs real
//! RS256 tokens and checks the client secret, the redirect URI and PKCE.
//! Plain http is accepted because every address is loopback, which is what
//! the configuration rules allow anyway.
//!
//! Every listener here binds loopback only: [`bind_loopback`] refuses any
//! other address.

mod app;
mod provider;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::config::{self, Inputs, Problems};
use crate::server::{self, Running};

pub use provider::{ADMIN_GROUP, CLIENT_ID, USERS, User};

const CALLBACK_PATH: &str = "/api/auth/oidc/callback";
const EPHEMERAL_LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what} may listen on loopback only, got {addr}; allowed: 127.0.0.1:PORT or [::1]:PORT \
         (the demo is never for a network)"
    )]
    NotLoopback {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot make the demo provider's signing key: {0}")]
    Key(String),
    #[error("the demo configuration was refused:\n{0}")]
    Config(Problems),
    #[error(transparent)]
    Server(#[from] server::Error),
}

impl Error {
    /// Whether the user asked for something the demo does not allow (exit
    /// 2), rather than something going wrong (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::NotLoopback { .. })
    }
}

/// The three parts, running.
pub struct Demo {
    pub proxy: Running,
    url: String,
    provider: provider::Provider,
    app: app::App,
}

// === impl Demo ===

impl Demo {
    /// The page to open: billguard's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn issuer(&self) -> &str {
        self.provider.issuer()
    }

    pub fn app_url(&self) -> &str {
        self.app.url()
    }

    /// What to tell the person who started the demo.
    pub fn banner(&self) -> String {
        let mut text = format!(
            "\nbillguard demo is running (loopback only; never for production).\n\n  \
             Open {url}/ in a browser.\n\n\
             The demo provider lets you sign in as any of these users, no password:\n",
            url = self.url
        );
        for user in USERS {
            let role = if user.groups.contains(&ADMIN_GROUP) {
                "admin"
            } else {
                "user"
            };
            let groups = if user.groups.is_empty() {
                "no groups".to_owned()
            } else {
                user.groups.join(", ")
            };
            text.push_str(&format!(
                "  {:6} {:18} role {:5}  ({groups})\n",
                user.username, user.email, role
            ));
        }
        text.push_str(&format!(
            "\n  demo provider  {issuer}\n  stand-in app   {app} (billguard forwards to it with the identity headers)\n\
             \n  {url}/_billguard/whoami shows who you are; {url}/_billguard/sign_out signs you out.\n\
             Press Ctrl-C to stop.\n",
            issuer = self.issuer(),
            app = self.app.url(),
            url = self.url,
        ));
        text
    }

    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
    }
}

/// Starts the demo with billguard on `listen` (loopback only; port 0 picks
/// one) and the provider and app on ephemeral loopback ports.
pub async fn start(listen: SocketAddr) -> Result<Demo, Error> {
    let listener = bind_loopback(listen, "billguard").await?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: listen,
        source,
    })?;
    let url = format!("http://{addr}");
    let client = provider::Client {
        redirect_uri: format!("{url}{CALLBACK_PATH}"),
        post_logout_redirect_uri: format!("{url}/"),
    };

    let provider = provider::Provider::start(EPHEMERAL_LOOPBACK, client.clone()).await?;
    let app = app::App::start(EPHEMERAL_LOOPBACK).await?;

    let inputs = inputs(&addr, &client, &provider, &app);
    let loaded = config::load(&inputs).map_err(Error::Config)?;
    let proxy = server::start(loaded.config, listener)?;
    Ok(Demo {
        proxy,
        url,
        provider,
        app,
    })
}

/// Runs the demo until SIGTERM or Ctrl-C, printing where to go.
pub async fn run(listen: SocketAddr) -> Result<(), Error> {
    let demo = start(listen).await?;
    demo.proxy.wait_ready().await;
    tracing::info!(url = %demo.url(), issuer = %demo.issuer(), "Demo ready");
    println!("{}", demo.banner());

    server::shutdown_signal().await;
    demo.shutdown().await;
    tracing::info!("Demo stopped");
    Ok(())
}

/// The demo's settings, in the shape the environment would give them.
fn inputs(
    addr: &SocketAddr,
    client: &provider::Client,
    provider: &provider::Provider,
    app: &app::App,
) -> Inputs {
    let secret = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 48]>());
    let env: BTreeMap<String, String> = [
        ("BILLGUARD_UPSTREAM", app.url().to_owned()),
        ("BILLGUARD_SESSION__SECRET", secret),
        ("OIDC_PROVIDER_NAME", "Demo provider".to_owned()),
        ("OIDC_ISSUER_URL", provider.issuer().to_owned()),
        ("OIDC_CLIENT_ID", CLIENT_ID.to_owned()),
        ("OIDC_CLIENT_SECRET", provider.client_secret().to_owned()),
        ("OIDC_TOKEN_AUTH_METHOD", "client_secret_basic".to_owned()),
        ("OIDC_REDIRECT_URI", client.redirect_uri.clone()),
        (
            "OIDC_POST_LOGOUT_REDIRECT_URI",
            client.post_logout_redirect_uri.clone(),
        ),
        ("OIDC_SCOPES", "openid email profile groups".to_owned()),
        ("OIDC_ADMIN_GROUP", ADMIN_GROUP.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Inputs {
        file: None,
        env,
        listen_flag: Some(addr.to_string()),
        upstream_flag: None,
    }
}

/// Binds `addr` if it is a loopback address, and refuses anything else.
async fn bind_loopback(addr: SocketAddr, what: &'static str) -> Result<TcpListener, Error> {
    if !addr.ip().is_loopback() {
        return Err(Error::NotLoopback { what, addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves HTTP/1.1 on `listener` with `handle` until the task is aborted.
async fn serve_http<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: let connections close first.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            // A client hanging up mid-request is its own business.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_demo_listener_refuses_non_loopback_addresses() {
        for addr in ["0.0.0.0:0", "192.0.2.1:4180", "[::]:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let error = bind_loopback(addr, "billguard").await.unwrap_err();
            assert!(
                matches!(error, Error::NotLoopback { .. }),
                "{addr}: {error}"
            );
            assert!(error.is_usage());
        }
        let error = start("0.0.0.0:4180".parse().unwrap()).await.err().unwrap();
        assert!(error.to_string().contains("loopback only"), "{error}");
    }
}
