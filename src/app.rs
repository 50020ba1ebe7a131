//! Everything a request handler needs, built once from the configuration
//! and shared by all connections.

use crate::bearer;
use crate::config::{self, Config};
use crate::forward::Upstream;
use crate::headers::Rewriter;
use crate::identity::Policy;
use crate::login::Logins;
use crate::oidc::{self, Provider};
use crate::policy::Routes;
use crate::session::Store;
use crate::statement::Statements;

pub struct App {
    pub provider: Provider,
    pub sessions: Store,
    pub logins: Logins,
    pub policy: Policy,
    pub rewriter: Rewriter,
    pub upstream: Upstream,
    /// The path of `oidc.redirect_uri`, served by the login callback.
    pub callback_path: String,
    pub routes: Routes,
    pub bearer: bearer::Verifier,
    /// Pass the client's `Authorization` header to the app.
    pub forward_authorization: bool,
    pub statements: Statements,
    pub access_token: config::AccessToken,
    /// Set when shutdown begins; shared with the server.
    pub draining: crate::health::Draining,
}

// === impl App ===

impl App {
    pub fn new(config: &Config) -> Result<Self, oidc::reqwest_error::BuildError> {
        let provider = Provider::new(config.oidc.clone())?;
        Ok(App {
            bearer: bearer::Verifier::new(provider.clone(), &config.bearer),
            provider,
            sessions: Store::new(&config.session),
            logins: Logins::new(&config.session),
            policy: Policy {
                admin_group: config.oidc.admin_group.clone(),
                auto_provision: config.oidc.auto_provision,
                users: config.local_login.users.clone(),
                allowed_groups: config.oidc.allowed_groups.clone(),
            },
            rewriter: Rewriter::new(config.headers.clone()),
            upstream: Upstream::new(&config.upstream),
            callback_path: config.oidc.redirect_uri.path().to_owned(),
            routes: config.routes.clone(),
            forward_authorization: config.bearer.forward_authorization,
            statements: Statements::new(&config.statement),
            access_token: config.access_token.clone(),
            draining: Default::default(),
        })
    }
}
