//! Everything a request handler needs, built from the configuration and
//! shared by all connections.
//!
//! [`Live`] holds the [`App`] in force. A configuration reload builds a new
//! App and swaps it in as a whole; requests in flight finish on the old
//! one. What must outlive a reload is carried over from the previous App:
//! the session store (so nobody is signed out), the login-state cookies'
//! key, the CSRF key and the password rate limits. The provider handle, and
//! its background discovery, is kept when the `[oidc]` settings did not
//! change, and replaced when they did.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bearer;
use crate::config::{self, Config, Entry};
use crate::csrf::Csrf;
use crate::forward::Upstream;
use crate::headers::Rewriter;
use crate::identity::Policy;
use crate::local_login::{Guard, Local};
use crate::login::Logins;
use crate::oidc::{self, Provider};
use crate::policy::Routes;
use crate::refresh::Refresher;
use crate::session::{self, Store};
use crate::statement::Statements;

pub struct App {
    /// `None` when no provider is configured (local login alone).
    pub provider: Option<Provider>,
    pub sessions: Store,
    /// Keeps sessions in step with the provider (see `refresh`).
    pub refresher: Refresher,
    pub logins: Arc<Logins>,
    pub local: Local,
    pub csrf: Csrf,
    pub policy: Policy,
    pub rewriter: Rewriter,
    pub upstream: Upstream,
    /// The path of `oidc.redirect_uri`, served by the login callback.
    pub callback_path: Option<String>,
    pub routes: Routes,
    /// `None` without a provider: there are no keys to check tokens with.
    pub bearer: Option<bearer::Verifier>,
    /// Pass the client's `Authorization` header to the app.
    pub forward_authorization: bool,
    pub statements: Statements,
    pub access_token: config::AccessToken,
    /// Set when shutdown begins; shared with the server.
    pub draining: crate::health::Draining,
    /// The configuration this App was built from.
    pub config: Config,
    /// Each effective setting with its source, secrets masked.
    pub settings: Vec<Entry>,
    /// Shared by every App of this process.
    pub reloads: Arc<watch::Sender<Reloads>>,
    discovery: Option<Arc<Discovery>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] oidc::reqwest_error::BuildError),
    #[error(transparent)]
    Sessions(#[from] session::Error),
}

/// The App in force; cheap to clone.
#[derive(Clone)]
pub struct Live {
    current: Arc<ArcSwap<App>>,
}

/// An App as the requests of one connection hold it.
///
/// A request keeps the App it started on until it ends. Kept as an
/// `Arc<App>`, every request on every serving thread would add to and take
/// from that one count, and its cache line would move between the cores
/// on each; a `Held` is counted per connection, and made anew when a
/// reload puts another App in force. Between requests the connection
/// keeps the App of its last one.
#[derive(Clone)]
#[expect(
    clippy::redundant_allocation,
    reason = "the outer count, one per connection, is the point"
)]
pub struct Held(Arc<Arc<App>>);

impl std::ops::Deref for Held {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

/// What configuration reloads have done so far, for the admin panel (and
/// for tests to wait on).
#[derive(Clone, Debug, Default)]
pub struct Reloads {
    pub applied: u64,
    pub rejected: u64,
    /// Why the latest rejected reload was rejected.
    pub last_rejection: Option<String>,
}

/// The background discovery of one provider handle; stops when the last
/// App using that handle is gone.
struct Discovery(JoinHandle<()>);

// === impl App ===

impl App {
    /// Builds an App for `config`, carrying over what must survive from
    /// `previous`. Starts the provider's discovery when it is new; call
    /// inside the runtime.
    pub fn build(
        config: Config,
        settings: Vec<Entry>,
        previous: Option<&App>,
    ) -> Result<Self, Error> {
        let kept = previous.and_then(|p| {
            let same = p.provider.as_ref()?.config() == config.oidc.as_ref()?;
            same.then(|| (p.provider.clone(), p.discovery.clone()))
        });
        let (provider, discovery) = match (kept, &config.oidc) {
            (Some(kept), _) => kept,
            (None, Some(oidc)) => {
                let provider = Provider::new(oidc.clone())?;
                let discovery = Discovery(tokio::spawn(provider.clone().run()));
                (Some(provider), Some(Arc::new(discovery)))
            }
            (None, None) => (None, None),
        };

        // Session-bound parts are the previous App's: the store, and the
        // keys of cookies browsers already hold.
        let (sessions, logins, csrf, guard, reloads) = match previous {
            Some(p) => (
                p.sessions.clone(),
                p.logins.clone(),
                p.csrf.clone(),
                p.local.guard(),
                p.reloads.clone(),
            ),
            None => (
                Store::new(&config.session)?,
                Arc::new(Logins::new(&config.session)),
                Csrf::new(&config.session.secret, config.session.secure_cookies),
                Arc::new(Guard::new()),
                Arc::new(watch::Sender::new(Reloads::default())),
            ),
        };

        let oidc = config.oidc.as_ref();
        let policy = Policy {
            admin_group: oidc.and_then(|o| o.admin_group.clone()),
            auto_provision: oidc.is_none_or(|o| o.auto_provision),
            users: config.local_login.users.clone(),
            allowed_groups: oidc.map(|o| o.allowed_groups.clone()).unwrap_or_default(),
        };
        // A reload gets a refresher with the new provider and rules; a
        // refresh in flight finishes on the old one, and the store's
        // reread before each refresh keeps them from redeeming a token twice.
        let refresher = Refresher::new(
            provider.clone(),
            sessions.clone(),
            policy.clone(),
            config.session.refresh_interval,
            config.access_token.forward,
        );
        Ok(App {
            policy,
            refresher,
            local: Local::new(&config.local_login, &config.headers.trusted_proxies, guard),
            rewriter: Rewriter::new(config.headers.clone()),
            upstream: Upstream::new(&config.upstream),
            callback_path: oidc.map(|o| o.redirect_uri.path().to_owned()),
            routes: config.routes.clone(),
            bearer: provider
                .as_ref()
                .map(|p| bearer::Verifier::new(p.clone(), &config.bearer)),
            forward_authorization: config.bearer.forward_authorization,
            statements: Statements::new(&config.statement),
            access_token: config.access_token.clone(),
            draining: previous.map(|p| p.draining.clone()).unwrap_or_default(),
            provider,
            discovery,
            sessions,
            logins,
            csrf,
            settings,
            reloads,
            config,
        })
    }

    /// Whether the provider's metadata is loaded, or no provider is needed.
    pub fn is_ready(&self) -> bool {
        self.provider.as_ref().is_none_or(Provider::is_ready)
    }
}

// === impl Live ===

impl Live {
    pub fn new(app: App) -> Self {
        Live {
            current: Arc::new(ArcSwap::from_pointee(app)),
        }
    }

    /// Follows the reload counters.
    pub fn reloads(&self) -> watch::Receiver<Reloads> {
        self.load().reloads.subscribe()
    }

    /// Records a reload that was refused; the running App stays.
    pub fn rejected(&self, reason: String) {
        self.load().reloads.send_modify(|r| {
            r.rejected += 1;
            r.last_rejection = Some(reason);
        });
    }

    /// The App in force now.
    pub fn load(&self) -> Arc<App> {
        self.current.load_full()
    }

    /// The App in force now, for a connection to hold (see [`Held`]).
    pub fn held(&self) -> Held {
        Held(Arc::new(self.load()))
    }

    /// The App in force now, for one request of the connection that holds
    /// `held`; `held` follows a reload first.
    pub fn hold(&self, held: &mut Held) -> Held {
        let now = self.current.load();
        if !Arc::ptr_eq(&now, &held.0) {
            *held = Held(Arc::new(arc_swap::Guard::into_inner(now)));
        }
        held.clone()
    }

    /// Builds an App for a new configuration and puts it in force. On error
    /// the running App stays.
    pub fn replace(&self, config: Config, settings: Vec<Entry>) -> Result<(), Error> {
        let previous = self.load();
        if session_changed(&previous.config.session, &config.session) {
            tracing::warn!(
                "Changed [session] settings take effect at the next restart; the running \
                 sessions and their settings are kept"
            );
        }
        if previous.config.listen != config.listen {
            tracing::warn!(
                listen = %previous.config.listen,
                "A changed listen address takes effect at the next restart"
            );
        }
        let app = match App::build(config, settings, Some(&previous)) {
            Ok(app) => app,
            Err(error) => {
                self.rejected(error.to_string());
                return Err(error);
            }
        };
        self.current.store(Arc::new(app));
        previous.reloads.send_modify(|r| r.applied += 1);
        Ok(())
    }
}

/// Whether a reload changed a `[session]` setting (a generated secret is
/// never the same twice, so it does not count).
fn session_changed(old: &config::Session, new: &config::Session) -> bool {
    old.ttl != new.ttl
        || old.idle_timeout != new.idle_timeout
        || old.max_sessions != new.max_sessions
        || old.secure_cookies != new.secure_cookies
        || (!new.secret_generated && old.secret != new.secret)
}

// === impl Discovery ===

impl Drop for Discovery {
    fn drop(&mut self) {
        self.0.abort();
    }
}
