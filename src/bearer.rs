//! API clients: `Authorization: Bearer <token>` instead of a session.
//!
//! A JWT access token is checked here, against the provider's keys from
//! discovery (an unknown `kid` reloads the JWKS once, rate-limited, as for
//! ID tokens):
//! - the signature, with an asymmetric algorithm from `oidc.id_token_algs`:
//!   `none` is never accepted, and neither is any HS* algorithm, so a
//!   provider's public key can never be used as an HMAC secret;
//! - `iss` exactly, `exp` and `nbf` with a minute of clock skew, `iat` not
//!   in the future;
//! - `aud` containing one of `bearer.audiences` (default: the client ID).
//!
//! An opaque token (anything that is not a JWS) is sent to the provider's
//! introspection endpoint (RFC 7662) with billguard's client credentials
//! when `bearer.introspection_url` is set, and the answer is cached for
//! `bearer.introspection_cache` (never past the token's `exp`); without that
//! URL it is refused. Either way the identity comes from the token's claims
//! with the same rules as a browser login (`identity`): user name, groups,
//! admin group, allowed groups, auto-provisioning.
//!
//! A token that fails any check is a 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"`, never a redirect. The token itself is never
//! logged; the cache is keyed by its SHA-256.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::header::{self, HeaderMap};
use moka::Expiry;
use moka::future::Cache;
use openidconnect::core::{
    CoreIdToken, CoreIdTokenClaims, CoreIdTokenVerifier, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    ClaimsVerificationError, ClientId, JsonWebTokenType, JwsSigningAlgorithm as _, Nonce,
    SignatureVerificationError,
};
use serde_json::{Map, Value};

use crate::config::{self, TokenAuthMethod};
use crate::headers::IdentityValues;
use crate::identity::{Claims, Identity, Policy, Refusal};
use crate::oidc::{Discovered, Provider};

/// Accepted difference between billguard's clock and the provider's.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Introspection answers kept at once.
const CACHE_ENTRIES: u64 = 10_000;

/// Checks bearer tokens.
pub struct Verifier {
    provider: Provider,
    cfg: config::Bearer,
    algs: Vec<CoreJwsSigningAlgorithm>,
    cache: Cache<[u8; 32], Cached>,
}

/// A request authenticated by its token.
#[derive(Debug)]
pub struct Caller {
    pub identity: Identity,
    pub headers: IdentityValues,
}

/// Why a token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// 401 `invalid_token`; the text is safe to show the client.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The token is fine but its user may not come in: 403.
    #[error("{0}")]
    Refused(Refusal),
    /// The provider's keys or introspection endpoint cannot be reached: 503.
    #[error("the token cannot be checked now: {0}")]
    Unavailable(String),
}

/// What the `Authorization` header holds.
pub enum Credential<'a> {
    /// No `Authorization`, or another scheme.
    None,
    Bearer(&'a str),
    /// `Bearer` with nothing usable after it, or several headers.
    Malformed,
}

/// An introspection answer and until when it may be reused.
#[derive(Clone)]
struct Cached {
    outcome: Result<Arc<Caller>, Rejection>,
    until: Instant,
}

// === impl Verifier ===

impl Verifier {
    pub fn new(provider: Provider, cfg: &config::Bearer) -> Self {
        let algs = provider
            .config()
            .id_token_algs
            .iter()
            .filter_map(|a| serde_json::from_value(Value::String(a.clone())).ok())
            .filter(|a: &CoreJwsSigningAlgorithm| {
                !a.uses_shared_secret() && *a != CoreJwsSigningAlgorithm::None
            })
            .collect();
        Verifier {
            provider,
            cfg: cfg.clone(),
            algs,
            cache: Cache::builder()
                .name("introspection")
                .max_capacity(CACHE_ENTRIES)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// Checks a token and builds the caller's identity.
    pub async fn verify(&self, token: &str, policy: &Policy) -> Result<Arc<Caller>, Rejection> {
        if looks_like_jws(token) {
            let claims = self.verify_jwt(token).await?;
            return admit(policy, claims);
        }
        if self.cfg.introspection_url.is_none() {
            return Err(Rejection::Invalid(
                "not a JWT, and this service cannot introspect opaque tokens",
            ));
        }
        self.introspect_cached(token, policy).await
    }

    async fn verify_jwt(&self, token: &str) -> Result<Claims, Rejection> {
        let found = self.discovered()?;
        let parsed: CoreIdToken = token
            .parse()
            .map_err(|_| Rejection::Invalid("malformed or missing claims"))?;
        let verified = match self.check(&found, &parsed) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if self.provider.refetch_jwks().await => {
                let found = self.discovered()?;
                self.check(&found, &parsed)
            }
            other => other,
        };
        let claims = verified.map_err(|e| {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            tracing::debug!(error = %e, cause = cause.as_deref().unwrap_or("-"), "Bearer token refused");
            Rejection::Invalid(describe(&e))
        })?;

        let audiences_ok = claims
            .audiences()
            .iter()
            .any(|aud| self.cfg.audiences.iter().any(|a| a == aud.as_str()));
        if !audiences_ok {
            return Err(Rejection::Invalid("not issued for this service (audience)"));
        }
        // Verified above, so the payload is the provider's.
        let extra = payload(token);
        check_not_before(&extra)?;
        Ok(Claims {
            subject: claims.subject().as_str().to_owned(),
            preferred_username: claims.preferred_username().map(|u| u.as_str().to_owned()),
            email: claims.email().map(|e| e.as_str().to_owned()),
            groups: extra.get(&self.provider.config().groups_claim).cloned(),
        })
    }

    fn check(
        &self,
        found: &Discovered,
        token: &CoreIdToken,
    ) -> Result<CoreIdTokenClaims, ClaimsVerificationError> {
        let cfg = self.provider.config();
        let types = ["JWT", "at+jwt", "application/jwt", "application/at+jwt"]
            .into_iter()
            .filter_map(|t| JsonWebTokenType::new(t.to_owned()).normalize().ok());
        // A public-client verifier has no secret, so HS* cannot verify at
        // all; the audience is checked against the configured list after.
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(cfg.client_id.clone()),
            found.issuer.clone(),
            found.jwks.clone(),
        )
        .require_audience_match(false)
        .set_allowed_algs(self.algs.clone())
        .set_allowed_jose_types(types)
        .set_time_fn(|| chrono::Utc::now() - CLOCK_SKEW)
        .set_issue_time_verifier_fn(|iat| {
            if iat > chrono::Utc::now() + CLOCK_SKEW {
                Err("issued in the future".to_owned())
            } else {
                Ok(())
            }
        });
        // Access tokens carry no nonce; there is no login to match.
        token.claims(&verifier, |_: Option<&Nonce>| Ok(())).cloned()
    }

    fn discovered(&self) -> Result<Arc<Discovered>, Rejection> {
        self.provider.discovered().ok_or_else(|| {
            self.provider.wake();
            Rejection::Unavailable("provider metadata not loaded".into())
        })
    }

    async fn introspect_cached(
        &self,
        token: &str,
        policy: &Policy,
    ) -> Result<Arc<Caller>, Rejection> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        if let Some(hit) = self.cache.get(&key).await
            && hit.until > Instant::now()
        {
            return hit.outcome;
        }

        let (outcome, exp) = match self.introspect(token).await {
            Ok((claims, exp)) => (admit(policy, claims), exp),
            Err(Rejection::Unavailable(reason)) => return Err(Rejection::Unavailable(reason)),
            Err(rejection) => (Err(rejection), None),
        };
        let mut until = Instant::now() + self.cfg.introspection_cache;
        if let Some(exp) = exp {
            let left = exp.saturating_sub(unix_now());
            until = until.min(Instant::now() + Duration::from_secs(left));
        }
        self.cache
            .insert(
                key,
                Cached {
                    outcome: outcome.clone(),
                    until,
                },
            )
            .await;
        outcome
    }

    /// RFC 7662 §2: POST the token with billguard's client credentials.
    async fn introspect(&self, token: &str) -> Result<(Claims, Option<u64>), Rejection> {
        let Some(url) = &self.cfg.introspection_url else {
            return Err(Rejection::Invalid("opaque tokens are not accepted"));
        };
        let cfg = self.provider.config();
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let mut request = self.provider.http().post(url.clone());
        match cfg.token_auth_method {
            TokenAuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: the id and secret are form-encoded first.
                let id: String =
                    url::form_urlencoded::byte_serialize(cfg.client_id.as_bytes()).collect();
                let secret: String =
                    url::form_urlencoded::byte_serialize(cfg.client_secret.expose().as_bytes())
                        .collect();
                request = request.basic_auth(id, Some(secret));
            }
            TokenAuthMethod::ClientSecretPost => {
                form.push(("client_id", &cfg.client_id));
                form.push(("client_secret", cfg.client_secret.expose()));
            }
        }
        let response = request
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| Rejection::Unavailable(format!("introspection at {url}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            tracing::warn!(%url, %status, "Token introspection refused billguard's request");
            return Err(Rejection::Unavailable(format!(
                "introspection at {url} answered {status}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Rejection::Unavailable(format!("introspection at {url}: {e}")))?;
        let info: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|_| Rejection::Unavailable(format!("introspection at {url}: not JSON")))?;
        self.read_introspection(&info)
    }

    fn read_introspection(
        &self,
        info: &Map<String, Value>,
    ) -> Result<(Claims, Option<u64>), Rejection> {
        if info.get("active") != Some(&Value::Bool(true)) {
            return Err(Rejection::Invalid("not active"));
        }
        let cfg = self.provider.config();
        let text = |key: &str| info.get(key).and_then(Value::as_str).map(str::to_owned);
        if let Some(iss) = info.get("iss")
            && iss.as_str() != Some(cfg.issuer_url.as_str())
        {
            return Err(Rejection::Invalid("issued by another provider"));
        }
        // `aud` is optional in RFC 7662; when present it must name us.
        if let Some(aud) = info.get("aud") {
            let audiences = match aud {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !audiences
                .iter()
                .any(|a| self.cfg.audiences.iter().any(|ours| ours == a))
            {
                return Err(Rejection::Invalid("not issued for this service (audience)"));
            }
        }
        let now = unix_now();
        let exp = info.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|exp| exp + CLOCK_SKEW.as_secs() <= now) {
            return Err(Rejection::Invalid("expired"));
        }
        check_not_before(info)?;
        let Some(subject) = text("sub").filter(|s| !s.is_empty()) else {
            return Err(Rejection::Invalid("no subject"));
        };
        let claims = Claims {
            subject,
            preferred_username: text("preferred_username").or_else(|| text("username")),
            email: text("email"),
            groups: info.get(&cfg.groups_claim).cloned(),
        };
        Ok((claims, exp))
    }
}

/// Reads the `Authorization` header (RFC 6750 §2.1).
pub fn credential(headers: &HeaderMap) -> Credential<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Credential::None;
    };
    let Ok(text) = first.to_str() else {
        return Credential::Malformed;
    };
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Credential::None;
    }
    let token = rest.trim();
    // token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !valid || values.next().is_some() {
        return Credential::Malformed;
    }
    Credential::Bearer(token)
}

fn admit(policy: &Policy, claims: Claims) -> Result<Arc<Caller>, Rejection> {
    let identity = policy.admit(claims).map_err(Rejection::Refused)?;
    Ok(Arc::new(Caller {
        headers: IdentityValues::new(&identity),
        identity,
    }))
}

/// Three base64url parts, the first a JSON object with `alg`: a JWS.
fn looks_like_jws(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        .is_some_and(|h| h.contains_key("alg"))
}

fn check_not_before(claims: &Map<String, Value>) -> Result<(), Rejection> {
    match claims.get("nbf") {
        None => Ok(()),
        Some(nbf) => match nbf.as_u64() {
            Some(nbf) if nbf <= unix_now() + CLOCK_SKEW.as_secs() => Ok(()),
            Some(_) => Err(Rejection::Invalid("not valid yet")),
            None => Err(Rejection::Invalid("malformed nbf")),
        },
    }
}

/// A short reason for the client, without echoing the token.
fn describe(error: &ClaimsVerificationError) -> &'static str {
    match error {
        ClaimsVerificationError::Expired(_) => "expired",
        ClaimsVerificationError::InvalidIssuer(_) => "issued by another provider",
        ClaimsVerificationError::InvalidAudience(_) => "not issued for this service (audience)",
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::DisallowedAlg(_) | SignatureVerificationError::NoSignature,
        ) => "signature algorithm not accepted",
        ClaimsVerificationError::SignatureVerification(_) => "signature not valid",
        _ => "not accepted",
    }
}

/// The payload of a JWS whose signature was verified.
fn payload(jwt: &str) -> Map<String, Value> {
    jwt.split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// === impl UntilExpiry ===

/// Drops a cached answer when it may no longer be reused.
struct UntilExpiry;

impl Expiry<[u8; 32], Cached> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Cached,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn auth(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_authorization_header_is_read_strictly() {
        assert!(matches!(credential(&auth(&[])), Credential::None));
        assert!(matches!(
            credential(&auth(&["Basic YTpi"])),
            Credential::None
        ));
        assert!(matches!(
            credential(&auth(&["Bearer abc.def-_~+/=="])),
            Credential::Bearer("abc.def-_~+/==")
        ));
        assert!(matches!(
            credential(&auth(&["bearer abc"])),
            Credential::Bearer("abc")
        ));
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a\"b",
            "Bearer ===",
        ] {
            assert!(
                matches!(credential(&auth(&[bad])), Credential::Malformed),
                "{bad}"
            );
        }
        assert!(matches!(
            credential(&auth(&["Bearer a", "Bearer b"])),
            Credential::Malformed
        ));
    }

    #[test]
    fn jws_are_told_from_opaque_tokens() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        assert!(looks_like_jws(&format!("{header}.e30.c2ln")));
        assert!(!looks_like_jws("2YotnFZFEjr1zCsicMWpAA"));
        assert!(!looks_like_jws("a.b.c"));
        assert!(!looks_like_jws(&format!("{header}.e30.c2ln.x")));
    }

    #[test]
    fn not_before_allows_the_skew_and_no_more() {
        let at = |nbf: Value| {
            let mut m = Map::new();
            m.insert("nbf".into(), nbf);
            check_not_before(&m)
        };
        assert!(at(Value::from(unix_now() + 30)).is_ok());
        assert_eq!(
            at(Value::from(unix_now() + 600)),
            Err(Rejection::Invalid("not valid yet"))
        );
        assert_eq!(
            at(Value::from("soon")),
            Err(Rejection::Invalid("malformed nbf"))
        );
        assert!(check_not_before(&Map::new()).is_ok());
    }
}
