//! Everything a request handler needs, built once from the configuration
//! and shared by all connections.

use crate::config::Config;
use crate::forward::Upstream;
use crate::headers::Rewriter;
use crate::identity::Policy;
use crate::login::Logins;
use crate::oidc::{self, Provider};
use crate::session::Store;

pub struct App {
    pub provider: Provider,
    pub sessions: Store,
    pub logins: Logins,
    pub policy: Policy,
    pub rewriter: Rewriter,
    pub upstream: Upstream,
    /// The path of `oidc.redirect_uri`, served by the login callback.
    pub callback_path: String,
}

// === impl App ===

impl App {
    pub fn new(config: &Config) -> Result<Self, oidc::reqwest_error::BuildError> {
        Ok(App {
            provider: Provider::new(config.oidc.clone())?,
            sessions: Store::new(&config.session),
            logins: Logins::new(&config.session),
            policy: Policy {
                admin_group: config.oidc.admin_group.clone(),
                auto_provision: config.oidc.auto_provision,
                users: config.local_login.users.clone(),
            },
            rewriter: Rewriter::new(config.headers.clone()),
            upstream: Upstream::new(&config.upstream),
            callback_path: config.oidc.redirect_uri.path().to_owned(),
        })
    }
}
