//! Logout tokens of OpenID Connect Back-Channel Logout 1.0: the provider
//! tells billguard, server to server, that a user's provider session ended.
//!
//! Checks (Back-Channel Logout §2.6): the JWS signature against the
//! provider's JWKS with the same algorithm allow-list as ID tokens (a key
//! id not in the cached set triggers one rate-limited reload); `iss`
//! exactly; `aud` containing the client id; `iat` present, not in the
//! future and not older than [`MAX_AGE`]; `exp` when present; an `events`
//! object holding the back-channel logout event; `sub` or `sid`; a `jti`;
//! and no `nonce` (§2.4: a logout token must never pass for an ID token).
//! Whether the `jti` was seen before is the caller's check (it needs the
//! shared store).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey as _, JwsSigningAlgorithm as _};
use serde_json::{Map, Value};

use super::Provider;

/// The event a logout token must carry (Back-Channel Logout §2.4).
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Oldest `iat` accepted; a `jti` must be remembered at least this long.
pub const MAX_AGE: Duration = Duration::from_secs(300);
const CLOCK_SKEW: i64 = 60;
/// Largest logout token accepted, in bytes.
pub const MAX_LEN: usize = 16 * 1024;

/// What a valid logout token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logout {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
}

/// Why a logout token was refused; for the log and a 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("provider metadata is not loaded yet")]
    NotReady,
    #[error("not a signed JWT")]
    Malformed,
    #[error("signed with `{0}`, which oidc.id_token_algs does not allow")]
    Algorithm(String),
    #[error("signature does not verify with any provider key")]
    Signature,
    #[error("issuer `{0}` is not the provider's")]
    Issuer(String),
    #[error("audience does not contain this client")]
    Audience,
    #[error("iat missing, in the future or older than {}s", MAX_AGE.as_secs())]
    IssuedAt,
    #[error("expired")]
    Expired,
    #[error("events claim lacks the back-channel logout event")]
    Events,
    #[error("neither sub nor sid")]
    NoSubject,
    #[error("no jti")]
    NoJti,
    #[error("carries a nonce, so it may be an ID token")]
    Nonce,
}

// === impl Provider ===

impl Provider {
    /// Verifies a logout token; `now` is Unix seconds.
    pub async fn verify_logout_token(&self, token: &str, now: i64) -> Result<Logout, Error> {
        if token.len() > MAX_LEN {
            return Err(Error::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(Error::Malformed)?;
        let (header, body) = signed.split_once('.').ok_or(Error::Malformed)?;
        let header = decode_object(header)?;
        let claims = decode_object(body)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Error::Malformed)?;

        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("none");
        let alg: CoreJwsSigningAlgorithm =
            serde_json::from_value(Value::String(alg_name.to_owned()))
                .map_err(|_| Error::Algorithm(alg_name.to_owned()))?;
        if alg == CoreJwsSigningAlgorithm::None || !self.inner.algs.contains(&alg) {
            return Err(Error::Algorithm(alg_name.to_owned()));
        }
        let kid = header.get("kid").and_then(Value::as_str);
        if !self.signature_verifies(&alg, kid, signed.as_bytes(), &signature)? {
            let reloaded = self.refetch_jwks().await;
            if !(reloaded && self.signature_verifies(&alg, kid, signed.as_bytes(), &signature)?) {
                return Err(Error::Signature);
            }
        }
        self.check_logout_claims(&claims, now)
    }

    fn signature_verifies(
        &self,
        alg: &CoreJwsSigningAlgorithm,
        kid: Option<&str>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, Error> {
        let found = self.discovered().ok_or(Error::NotReady)?;
        if alg.uses_shared_secret() {
            // HS* is keyed with the client secret (OIDC Core §10.1).
            let key = CoreJsonWebKey::new_symmetric(
                self.config().client_secret.expose().as_bytes().to_vec(),
            );
            return Ok(key.verify_signature(alg, message, signature).is_ok());
        }
        Ok(found
            .jwks
            .keys()
            .iter()
            .filter(|k| kid.is_none() || k.key_id().map(|id| id.as_str()) == kid)
            .any(|k| k.verify_signature(alg, message, signature).is_ok()))
    }

    fn check_logout_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<Logout, Error> {
        let text = |key: &str| claims.get(key).and_then(Value::as_str).map(str::to_owned);

        let issuer = text("iss").unwrap_or_default();
        if issuer != self.config().issuer_url {
            return Err(Error::Issuer(issuer));
        }
        let client_id = &self.config().client_id;
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == client_id,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(client_id)),
            _ => false,
        };
        if !audience_ok {
            return Err(Error::Audience);
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_i64)
            .ok_or(Error::IssuedAt)?;
        if iat > now + CLOCK_SKEW || iat < now - MAX_AGE.as_secs() as i64 {
            return Err(Error::IssuedAt);
        }
        if let Some(exp) = claims.get("exp") {
            let exp = exp.as_i64().ok_or(Error::Expired)?;
            if exp + CLOCK_SKEW < now {
                return Err(Error::Expired);
            }
        }
        let event = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|events| events.get(EVENT));
        if !event.is_some_and(Value::is_object) {
            return Err(Error::Events);
        }
        if claims.contains_key("nonce") {
            return Err(Error::Nonce);
        }
        let sub = text("sub").filter(|s| !s.is_empty());
        let sid = text("sid").filter(|s| !s.is_empty());
        if sub.is_none() && sid.is_none() {
            return Err(Error::NoSubject);
        }
        let jti = text("jti").filter(|s| !s.is_empty()).ok_or(Error::NoJti)?;
        Ok(Logout { sub, sid, jti })
    }
}

fn decode_object(part: &str) -> Result<Map<String, Value>, Error> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| Error::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Error::Malformed)
}
