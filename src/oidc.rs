//! The OpenID provider as billguard sees it: its metadata, its keys, and
//! whether it is reachable.
//!
//! Discovery runs in the background. A provider that is down at start does
//! not stop the proxy: `/_billguard/ready` answers 503 until the first
//! discovery succeeds, retries back off from one second to a minute, and a
//! login attempt in the meantime wakes the retry early. Once loaded, the
//! metadata is refreshed hourly; a failed refresh keeps the old metadata, so
//! the proxy stays ready and signed-in users never notice the provider is
//! away (their sessions do not need it).
//!
//! This module never sees a browser: the login handlers call [`flow`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use openidconnect::core::{CoreClient, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::{
    ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    ProviderMetadataWithLogout,
};
use tokio::sync::{Notify, watch};
use url::Url;

use crate::config;

pub mod flow;
pub mod logout;
mod resend;

pub use flow::{Completed, Error as FlowError, Grant, Probe, Refreshed, Started};

/// The client type once discovery has set the endpoints.
pub type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// At most one JWKS refetch for an unknown `kid` in this long.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// A cheap, shared handle to the provider.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: config::Oidc,
    http: openidconnect::reqwest::Client,
    algs: Vec<CoreJwsSigningAlgorithm>,
    discovered: ArcSwapOption<Discovered>,
    ready: watch::Sender<bool>,
    wake: Notify,
    /// Milliseconds since `epoch` of the last JWKS refetch.
    last_jwks_fetch: AtomicU64,
    epoch: Instant,
}

/// What discovery found.
pub struct Discovered {
    pub client: Client,
    pub issuer: IssuerUrl,
    pub jwks: CoreJsonWebKeySet,
    pub jwks_uri: Url,
    pub userinfo: Option<Url>,
    pub end_session: Option<Url>,
    pub scopes_supported: Option<Vec<String>>,
    pub auth_methods_supported: Option<Vec<String>>,
    pub algs_supported: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("issuer URL {0}: {1}")]
    Issuer(String, String),
    #[error("discovery at {url}: {reason}")]
    Fetch { url: String, reason: String },
}

// === impl Provider ===

impl Provider {
    /// A provider handle with nothing discovered yet.
    pub fn new(cfg: config::Oidc) -> Result<Self, reqwest_error::BuildError> {
        let mut http = openidconnect::reqwest::Client::builder()
            // Following redirects from the provider would let it point
            // billguard at arbitrary hosts.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
            .timeout(cfg.request_timeout)
            .user_agent(concat!("billguard/", env!("CARGO_PKG_VERSION")));
        // A self-hosted provider behind a private CA (`oidc.ca_file`).
        for cert in cfg.ca.iter().flat_map(|ca| &ca.certs) {
            let cert = openidconnect::reqwest::Certificate::from_der(cert)
                .map_err(reqwest_error::BuildError)?;
            http = http.add_root_certificate(cert);
        }
        let http = http.build().map_err(reqwest_error::BuildError)?;
        let algs = cfg
            .id_token_algs
            .iter()
            .filter_map(|a| serde_json::from_value(serde_json::Value::String(a.clone())).ok())
            .collect();
        let (ready, _) = watch::channel(false);
        Ok(Provider {
            inner: Arc::new(Inner {
                cfg,
                http,
                algs,
                discovered: ArcSwapOption::empty(),
                ready,
                wake: Notify::new(),
                last_jwks_fetch: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        })
    }

    pub fn config(&self) -> &config::Oidc {
        &self.inner.cfg
    }

    pub fn http(&self) -> &openidconnect::reqwest::Client {
        &self.inner.http
    }

    /// The client for token-endpoint requests (see `resend`).
    fn token_client(&self) -> resend::Resending<'_> {
        resend::Resending(&self.inner.http)
    }

    /// The metadata, once discovery has succeeded.
    pub fn discovered(&self) -> Option<Arc<Discovered>> {
        self.inner.discovered.load_full()
    }

    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Resolves once the provider metadata is loaded.
    pub async fn wait_ready(&self) {
        let mut rx = self.inner.ready.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Asks the background discovery to retry now rather than after its
    /// back-off.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs discovery until the process ends: first until it succeeds, with
    /// back-off, then hourly.
    pub async fn run(self) {
        let mut delay = FIRST_RETRY;
        let mut failing = false;
        loop {
            match self.discover().await {
                Ok(found) => {
                    let news = failing || !self.is_ready();
                    let end_session = found.end_session.is_some();
                    self.warn_about_algs(&found);
                    self.inner.discovered.store(Some(Arc::new(found)));
                    self.inner.ready.send_replace(true);
                    // Logged once it is true, so whoever reads it can rely on it.
                    if news {
                        tracing::info!(
                            issuer = %self.inner.cfg.issuer_url,
                            end_session,
                            "Provider metadata loaded"
                        );
                    }
                    failing = false;
                    delay = FIRST_RETRY;
                    tokio::time::sleep(REFRESH_EVERY).await;
                }
                Err(error) => {
                    // Log once per change of state, not at every retry.
                    if !failing {
                        tracing::warn!(
                            %error,
                            retry_in = ?delay,
                            ready = self.is_ready(),
                            "Provider discovery failed; retrying with back-off"
                        );
                    } else {
                        tracing::debug!(%error, retry_in = ?delay, "Provider discovery failed again");
                    }
                    failing = true;
                    let started = Instant::now();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.inner.wake.notified() => {
                            // A wake-up never retries faster than once a second.
                            let spent = started.elapsed();
                            if spent < FIRST_RETRY {
                                tokio::time::sleep(FIRST_RETRY - spent).await;
                            }
                        }
                    }
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// Fetches the discovery document and the keys.
    pub async fn discover(&self) -> Result<Discovered, DiscoveryError> {
        let cfg = &self.inner.cfg;
        let issuer = IssuerUrl::new(cfg.issuer_url.clone())
            .map_err(|e| DiscoveryError::Issuer(cfg.issuer_url.clone(), e.to_string()))?;
        let url = discovery_url(&cfg.issuer_url);

        // OIDC Discovery §4.3: the metadata's issuer must equal the
        // configured one exactly; the library enforces it.
        let meta = ProviderMetadataWithLogout::discover_async(issuer.clone(), &self.inner.http)
            .await
            .map_err(|e| DiscoveryError::Fetch {
                url: url.clone(),
                reason: crate::errors::chain(&e),
            })?;

        let end_session = meta
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.url().clone());
        let found = Discovered {
            issuer: meta.issuer().clone(),
            jwks: meta.jwks().clone(),
            jwks_uri: meta.jwks_uri().url().clone(),
            userinfo: meta.userinfo_endpoint().map(|u| u.url().clone()),
            end_session,
            scopes_supported: meta
                .scopes_supported()
                .map(|s| s.iter().map(|s| s.to_string()).collect()),
            auth_methods_supported: meta.token_endpoint_auth_methods_supported().map(|m| {
                m.iter()
                    .filter_map(|m| serde_json::to_value(m).ok())
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            }),
            algs_supported: meta
                .id_token_signing_alg_values_supported()
                .iter()
                .filter_map(|a| serde_json::to_value(a).ok())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            client: CoreClient::from_provider_metadata(
                meta,
                ClientId::new(cfg.client_id.clone()),
                Some(ClientSecret::new(cfg.client_secret.expose().to_owned())),
            ),
        };
        Ok(found)
    }

    /// Refetches the JWKS after an unknown `kid`, at most once per interval.
    /// Returns whether new keys were loaded.
    pub(crate) async fn refetch_jwks(&self) -> bool {
        let Some(current) = self.discovered() else {
            return false;
        };
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        let last = self.inner.last_jwks_fetch.load(Ordering::Relaxed);
        let interval = JWKS_REFETCH_INTERVAL.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < interval {
            tracing::debug!("JWKS refetch skipped: rate limited");
            return false;
        }
        if self
            .inner
            .last_jwks_fetch
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }

        let jwks_url = openidconnect::JsonWebKeySetUrl::from_url(current.jwks_uri.clone());
        match CoreJsonWebKeySet::fetch_async(&jwks_url, &self.inner.http).await {
            Ok(jwks) => {
                tracing::info!(
                    keys = jwks.keys().len(),
                    "Provider keys reloaded after an unknown key id"
                );
                let updated = Discovered {
                    client: current.client.clone(),
                    issuer: current.issuer.clone(),
                    jwks,
                    jwks_uri: current.jwks_uri.clone(),
                    userinfo: current.userinfo.clone(),
                    end_session: current.end_session.clone(),
                    scopes_supported: current.scopes_supported.clone(),
                    auth_methods_supported: current.auth_methods_supported.clone(),
                    algs_supported: current.algs_supported.clone(),
                };
                self.inner.discovered.store(Some(Arc::new(updated)));
                true
            }
            Err(error) => {
                tracing::warn!(error = %error, url = %current.jwks_uri, "Provider keys could not be reloaded");
                false
            }
        }
    }

    fn warn_about_algs(&self, found: &Discovered) {
        let allowed = &self.inner.cfg.id_token_algs;
        if !found.algs_supported.is_empty()
            && !found.algs_supported.iter().any(|a| allowed.contains(a))
        {
            tracing::warn!(
                provider_algs = ?found.algs_supported,
                allowed_algs = ?allowed,
                "The provider signs ID tokens only with algorithms oidc.id_token_algs does not \
                 allow; logins will fail. An Authentik provider without a signing key uses \
                 HS256: select a signing key there, or add HS256 to oidc.id_token_algs"
            );
        }
    }
}

/// `<issuer>/.well-known/openid-configuration`, with exactly one slash
/// whether or not the issuer ends in one (Authentik's does).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Wraps the HTTP client's build error so callers need not name reqwest.
pub mod reqwest_error {
    #[derive(Debug, thiserror::Error)]
    #[error("building the provider HTTP client: {0}")]
    pub struct BuildError(pub openidconnect::reqwest::Error);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_has_one_slash_with_or_without_trailing_slash() {
        assert_eq!(
            discovery_url("https://auth.example.com/application/o/bills/"),
            "https://auth.example.com/application/o/bills/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://idp.example.com"),
            "https://idp.example.com/.well-known/openid-configuration"
        );
    }
}
