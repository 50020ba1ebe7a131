//! The authorization code flow with PKCE, from the provider's side: the
//! authorization URL, the code exchange, the ID token checks and userinfo.
//!
//! ID token checks (OIDC Core §3.1.3.7): the signature against the JWKS
//! with an allow-list of algorithms (`none` never, HS* only when configured
//! and then keyed with the client secret), `iss` exactly, `aud` containing
//! the client id and `azp` when there are several audiences, `exp` with a
//! minute of clock skew, `iat` not in the future, and the `nonce` of this
//! login. A token signed with an unknown `kid` triggers one rate-limited
//! JWKS reload and one retry.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreErrorResponseType, CoreIdToken, CoreIdTokenClaims,
    CoreIdTokenVerifier,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RequestTokenError, Scope, TokenResponse,
};
use serde_json::{Map, Value};
use url::Url;

use super::{Discovered, Provider};
use crate::config::TokenAuthMethod;
use crate::errors::chain;
use crate::identity::Claims;

/// Accepted difference between billguard's clock and the provider's.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A login that was sent to the provider.
pub struct Started {
    pub url: Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// A login the provider completed and billguard verified.
pub struct Completed {
    pub claims: Claims,
    /// The raw ID token, for `id_token_hint` at sign-out.
    pub id_token: String,
    /// The provider's session id (`sid`), when it sends one.
    pub sid: Option<String>,
    pub grant: Grant,
}

/// The tokens of a code exchange or a refresh.
pub struct Grant {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// `expires_in` of the access token, when the provider says.
    pub expires_in: Option<Duration>,
}

/// A refresh the provider accepted, with the user's current claims.
pub struct Refreshed {
    pub claims: Claims,
    /// A new ID token, when the provider issued one.
    pub id_token: Option<String>,
    pub grant: Grant,
}

/// What the token endpoint said to a code that cannot be valid.
#[derive(Debug)]
pub enum Probe {
    /// `invalid_grant`: the client was authenticated, the code refused.
    Accepted,
    /// `invalid_client` or `unauthorized_client`: the credentials, or the
    /// way they were sent, were refused.
    Rejected(String),
    /// Anything else, which says nothing certain about the credentials.
    Unclear(String),
}

/// Why a login could not be completed. Messages are for the log; they never
/// contain a token, a code or the client secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("provider metadata is not loaded yet")]
    NotReady,
    /// The provider refused the code (expired, used, or not ours).
    #[error("token endpoint refused the code: {0}")]
    CodeRejected(String),
    /// The provider refused billguard's client credentials.
    #[error("token endpoint refused the client credentials: {0}")]
    ClientRejected(String),
    #[error("token endpoint failed: {0}")]
    Exchange(String),
    #[error("token response has no id_token")]
    NoIdToken,
    #[error("ID token rejected: {0}")]
    IdToken(String),
    #[error("ID token nonce does not match this login")]
    Nonce,
    #[error("userinfo: {0}")]
    Userinfo(String),
    /// The provider refused the refresh token (expired, revoked, reused).
    #[error("token endpoint refused the refresh token: {0}")]
    RefreshRejected(String),
}

// === impl Provider ===

impl Provider {
    /// Builds the authorization URL for a new login: fresh `state`, `nonce`
    /// and PKCE S256 challenge (RFC 7636 §4.2).
    pub fn begin(&self) -> Result<Started, Error> {
        let found = self.discovered().ok_or(Error::NotReady)?;
        let cfg = self.config();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let redirect = openidconnect::RedirectUrl::from_url(cfg.redirect_uri.clone());

        let mut request = found
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .set_pkce_challenge(challenge);
        for scope in cfg.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        // OIDC Core §11: a refresh token for offline use needs consent; Authentik
        // answers `consent_required` without this prompt.
        if cfg.scopes.iter().any(|s| s == "offline_access") {
            request = request.add_prompt(openidconnect::core::CoreAuthPrompt::Consent);
        }
        let (url, state, nonce) = request.url();
        Ok(Started {
            url,
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges the code and verifies everything the provider returned.
    pub async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Completed, Error> {
        let found = self.discovered().ok_or(Error::NotReady)?;
        let cfg = self.config();
        let auth_type = match cfg.token_auth_method {
            TokenAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
            TokenAuthMethod::ClientSecretPost => AuthType::RequestBody,
        };
        let client = found
            .client
            .clone()
            .set_auth_type(auth_type)
            .set_redirect_uri(openidconnect::RedirectUrl::from_url(
                cfg.redirect_uri.clone(),
            ));

        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| Error::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.token_client())
            .await
            .map_err(exchange_error)?;

        let id_token = response.id_token().ok_or(Error::NoIdToken)?.clone();
        let claims = self.verify(&found, &id_token, Some(nonce)).await?;
        let raw = id_token.to_string();
        let extra = payload(&raw);
        let sid = extra.get("sid").and_then(Value::as_str).map(str::to_owned);

        let mut claims = Claims {
            subject: claims.subject().as_str().to_owned(),
            preferred_username: claims.preferred_username().map(|u| u.as_str().to_owned()),
            email: claims.email().map(|e| e.as_str().to_owned()),
            groups: extra.get(&cfg.groups_claim).cloned(),
        };

        self.fill_gaps(
            found.userinfo.as_ref(),
            response.access_token().secret(),
            &mut claims,
        )
        .await?;
        Ok(Completed {
            claims,
            id_token: raw,
            sid,
            grant: grant_of(&response),
        })
    }

    /// Finds out, without any user, whether the token endpoint at
    /// `token_url` accepts the client credentials: a made-up code is sent
    /// the way a real login sends one (RFC 6749 §4.1.3), and the provider's
    /// error tells credentials refused (`invalid_client`, §5.2) from code
    /// refused (`invalid_grant`).
    pub async fn probe_credentials(&self, token_url: &Url) -> Probe {
        let cfg = self.config();
        let auth_type = match cfg.token_auth_method {
            TokenAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
            TokenAuthMethod::ClientSecretPost => AuthType::RequestBody,
        };
        let Ok(issuer) = openidconnect::IssuerUrl::new(cfg.issuer_url.clone()) else {
            return Probe::Unclear(format!("`{}` is not a URL", cfg.issuer_url));
        };
        let client = openidconnect::core::CoreClient::new(
            ClientId::new(cfg.client_id.clone()),
            issuer,
            openidconnect::JsonWebKeySet::new(Vec::new()),
        )
        .set_client_secret(ClientSecret::new(cfg.client_secret.expose().to_owned()))
        .set_token_uri(openidconnect::TokenUrl::from_url(token_url.clone()))
        .set_redirect_uri(openidconnect::RedirectUrl::from_url(
            cfg.redirect_uri.clone(),
        ))
        .set_auth_type(auth_type);
        let (_, verifier) = PkceCodeChallenge::new_random_sha256();
        let result = client
            .exchange_code(AuthorizationCode::new(format!(
                "billguard-check-invalid-code-{}",
                URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
            )))
            .set_pkce_verifier(verifier)
            .request_async(&self.token_client())
            .await;
        match result.map_err(exchange_error) {
            Err(Error::CodeRejected(_)) => Probe::Accepted,
            Err(Error::ClientRejected(detail)) => Probe::Rejected(detail),
            Err(other) => Probe::Unclear(other.to_string()),
            Ok(_) => Probe::Unclear("the token endpoint accepted a made-up code".into()),
        }
    }

    /// Redeems a refresh token (RFC 6749 §6) and gathers the user's current
    /// claims from the new ID token and, where it lacks them, userinfo. A
    /// new ID token must name the same user (OIDC Core §12.2).
    pub async fn refresh(&self, refresh_token: &str, subject: &str) -> Result<Refreshed, Error> {
        let found = self.discovered().ok_or(Error::NotReady)?;
        let auth_type = match self.config().token_auth_method {
            TokenAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
            TokenAuthMethod::ClientSecretPost => AuthType::RequestBody,
        };
        let client = found.client.clone().set_auth_type(auth_type);
        let token = openidconnect::RefreshToken::new(refresh_token.to_owned());
        let response = client
            .exchange_refresh_token(&token)
            .map_err(|e| Error::Exchange(e.to_string()))?
            .request_async(&self.token_client())
            .await
            .map_err(|e| match exchange_error(e) {
                Error::CodeRejected(detail) => Error::RefreshRejected(detail),
                other => other,
            })?;

        let mut claims = Claims {
            subject: subject.to_owned(),
            ..Claims::default()
        };
        let mut raw = None;
        if let Some(id_token) = response.id_token() {
            // A refreshed ID token carries no nonce (OIDC Core §12.2).
            let verified = self.verify(&found, id_token, None).await?;
            if verified.subject().as_str() != subject {
                return Err(Error::IdToken(
                    "the refreshed ID token names another subject".into(),
                ));
            }
            let text = id_token.to_string();
            let extra = payload(&text);
            claims.preferred_username =
                verified.preferred_username().map(|u| u.as_str().to_owned());
            claims.email = verified.email().map(|e| e.as_str().to_owned());
            claims.groups = extra.get(&self.config().groups_claim).cloned();
            raw = Some(text);
        }
        self.fill_gaps(
            found.userinfo.as_ref(),
            response.access_token().secret(),
            &mut claims,
        )
        .await?;
        Ok(Refreshed {
            claims,
            id_token: raw,
            grant: grant_of(&response),
        })
    }

    /// The user's current claims from userinfo (OIDC Core §5.3), for
    /// sessions without a refresh token.
    pub async fn userinfo(&self, access_token: &str, subject: &str) -> Result<Claims, Error> {
        let found = self.discovered().ok_or(Error::NotReady)?;
        let url = found
            .userinfo
            .as_ref()
            .ok_or_else(|| Error::Userinfo("the provider has no userinfo endpoint".into()))?;
        let mut claims = Claims {
            subject: subject.to_owned(),
            ..Claims::default()
        };
        self.complete_from_userinfo(url, access_token, &mut claims)
            .await?;
        Ok(claims)
    }

    /// The provider's end-session URL for RP-initiated logout, if it has one.
    pub fn logout_url(&self, id_token_hint: Option<&str>) -> Option<Url> {
        let found = self.discovered()?;
        let mut url = found.end_session.clone()?;
        let cfg = self.config();
        {
            let mut query = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                query.append_pair("id_token_hint", hint);
            }
            query.append_pair("client_id", &cfg.client_id);
            query.append_pair(
                "post_logout_redirect_uri",
                cfg.post_logout_redirect_uri.as_str(),
            );
        }
        Some(url)
    }

    async fn verify(
        &self,
        found: &Discovered,
        id_token: &CoreIdToken,
        nonce: Option<&str>,
    ) -> Result<CoreIdTokenClaims, Error> {
        let check = |found: &Discovered| match nonce {
            Some(nonce) => id_token
                .claims(&self.verifier(found), &Nonce::new(nonce.to_owned()))
                .cloned(),
            None => id_token
                .claims(&self.verifier(found), |_: Option<&Nonce>| Ok(()))
                .cloned(),
        };
        match check(found) {
            Ok(claims) => Ok(claims),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) if self.refetch_jwks().await => {
                let found = self.discovered().ok_or(Error::NotReady)?;
                check(&found).map_err(verification_error)
            }
            Err(e) => Err(verification_error(e)),
        }
    }

    fn verifier<'a>(&'a self, found: &Discovered) -> CoreIdTokenVerifier<'a> {
        let cfg = self.config();
        CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(cfg.client_id.clone()),
            ClientSecret::new(cfg.client_secret.expose().to_owned()),
            found.issuer.clone(),
            found.jwks.clone(),
        )
        .set_allowed_algs(self.inner.algs.clone())
        .set_time_fn(|| chrono::Utc::now() - CLOCK_SKEW)
        .set_issue_time_verifier_fn(|iat| {
            if iat > chrono::Utc::now() + CLOCK_SKEW {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        })
    }

    /// Providers that keep claims out of the ID token serve them at
    /// userinfo (OIDC Core §5.3): asked only when a claim is missing, and
    /// its `sub` must be the same user.
    async fn fill_gaps(
        &self,
        userinfo: Option<&Url>,
        access_token: &str,
        claims: &mut Claims,
    ) -> Result<(), Error> {
        let incomplete = claims.email.is_none()
            || claims.groups.is_none()
            || claims.preferred_username.is_none();
        match userinfo {
            Some(url) if incomplete => self.complete_from_userinfo(url, access_token, claims).await,
            _ => Ok(()),
        }
    }

    async fn complete_from_userinfo(
        &self,
        url: &Url,
        access_token: &str,
        claims: &mut Claims,
    ) -> Result<(), Error> {
        let request = self
            .http()
            .get(url.clone())
            .bearer_auth(access_token)
            .header("accept", "application/json");
        let response = super::resend::send_built(request)
            .await
            .map_err(|e| Error::Userinfo(format!("request to {url}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Userinfo(format!("{url} answered {status}")));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::Userinfo(format!("reading the answer of {url}: {e}")))?;
        let info: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
            Error::Userinfo(format!(
                "{url} sent no JSON object ({:?} error)",
                e.classify()
            ))
        })?;

        match info.get("sub").and_then(Value::as_str) {
            Some(sub) if sub == claims.subject => {}
            _ => {
                return Err(Error::Userinfo(
                    "its sub differs from the ID token's sub".into(),
                ));
            }
        }
        let text = |key: &str| info.get(key).and_then(Value::as_str).map(str::to_owned);
        if claims.preferred_username.is_none() {
            claims.preferred_username = text("preferred_username");
        }
        if claims.email.is_none() {
            claims.email = text("email");
        }
        if claims.groups.is_none() {
            claims.groups = info.get(&self.config().groups_claim).cloned();
        }
        Ok(())
    }
}

fn grant_of<R: OAuth2TokenResponse>(response: &R) -> Grant {
    Grant {
        access_token: response.access_token().secret().clone(),
        refresh_token: response.refresh_token().map(|t| t.secret().clone()),
        expires_in: response.expires_in(),
    }
}

/// The payload of a JWT whose signature has already been verified, for
/// claims the typed parser does not know (the configurable groups claim).
fn payload(jwt: &str) -> Map<String, Value> {
    jwt.split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn verification_error(error: openidconnect::ClaimsVerificationError) -> Error {
    match error {
        openidconnect::ClaimsVerificationError::InvalidNonce(_) => Error::Nonce,
        other => Error::IdToken(other.to_string()),
    }
}

fn exchange_error<RE: std::error::Error + 'static>(
    error: RequestTokenError<RE, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
) -> Error {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let kind = response.error().to_string();
            let detail = response
                .error_description()
                .map(|d| format!("{kind} ({d})"))
                .unwrap_or(kind);
            match response.error() {
                CoreErrorResponseType::InvalidGrant => Error::CodeRejected(detail),
                CoreErrorResponseType::InvalidClient
                | CoreErrorResponseType::UnauthorizedClient => Error::ClientRejected(detail),
                _ => Error::Exchange(detail),
            }
        }
        RequestTokenError::Request(e) => Error::Exchange(chain(&e)),
        // The body may contain tokens: name the parse failure only.
        RequestTokenError::Parse(e, _body) => Error::Exchange(format!(
            "unreadable token response at `{}` ({:?} error)",
            e.path(),
            e.inner().classify()
        )),
        RequestTokenError::Other(text) => Error::Exchange(text),
    }
}
