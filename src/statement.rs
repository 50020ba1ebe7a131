//! The signed statement: a short-lived JWT that billguard adds to every
//! authenticated request so the app can check, with billguard's public key,
//! that the identity headers really came from billguard.
//!
//! The key is ES256 (P-256) or EdDSA (Ed25519), read from a PKCS#8 PEM file
//! or generated at start (then it changes with every restart, and the app
//! should fetch `/_billguard/jwks.json` again when it meets an unknown
//! `kid`). The `kid` is the key's RFC 7638 thumbprint.
//!
//! Signing uses ring, the crypto library billguard's TLS already runs on:
//! it signs both algorithms, generates PKCS#8 keys, and adds no code to the
//! build.
//!
//! Claims: `iss` (billguard's public origin), `aud` (`statement.audience`),
//! `sub`, `iat`, `nbf`, `exp` (`statement.ttl` later), `jti`, and the
//! identity as the headers carry it: `user`, `email`, `groups`, `role`, plus
//! `auth` (`session` or `bearer`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use crate::config;
use crate::identity::Identity;

/// The algorithms a statement can be signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Es256,
    EdDsa,
}

/// A signing key and its public JWK.
pub struct Signer {
    alg: Alg,
    kid: String,
    key: Key,
    jwk: Value,
    rng: SystemRandom,
}

enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// What is wrong with a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM `PRIVATE KEY` (PKCS#8) block")]
    Pem,
    #[error("not a PKCS#8 {0} private key ({1})")]
    Pkcs8(&'static str, String),
    #[error("the key could not be generated")]
    Generate,
    #[error("signing failed")]
    Sign,
}

/// Adds statements to requests, as configured.
#[derive(Clone, Debug)]
pub struct Statements {
    cfg: config::Statement,
}

// === impl Alg ===

impl Alg {
    pub fn parse(text: &str) -> Result<Alg, String> {
        match text {
            "ES256" => Ok(Alg::Es256),
            "EdDSA" => Ok(Alg::EdDsa),
            other => Err(format!(
                "`{other}` is not a statement algorithm; allowed: ES256, EdDSA"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

// === impl Signer ===

impl Signer {
    /// A fresh key, kept only in this process.
    pub fn generate(alg: Alg) -> Result<Signer, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Alg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
            Alg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|_| KeyError::Generate)?;
        Signer::from_pkcs8(alg, pkcs8.as_ref())
    }

    /// A key from a PEM file's contents (`openssl genpkey` output).
    pub fn from_pem(alg: Alg, pem: &[u8]) -> Result<Signer, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| KeyError::Pem)?;
        Signer::from_pkcs8(alg, der.secret_pkcs8_der())
    }

    fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<Signer, KeyError> {
        let rng = SystemRandom::new();
        let (key, jwk) = match alg {
            Alg::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|e| KeyError::Pkcs8("P-256", e.to_string()))?;
                // An uncompressed point: 0x04, then x and y, 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) = point[1..].split_at(32);
                let jwk = json!({
                    "crv": "P-256",
                    "kty": "EC",
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                });
                (Key::Es256(pair), jwk)
            }
            Alg::EdDsa => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| KeyError::Pkcs8("Ed25519", e.to_string()))?;
                let jwk = json!({
                    "crv": "Ed25519",
                    "kty": "OKP",
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                });
                (Key::EdDsa(pair), jwk)
            }
        };
        let kid = thumbprint(&jwk);
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(alg.as_str());
        Ok(Signer {
            alg,
            kid,
            key,
            jwk,
            rng,
        })
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK Set served at `/_billguard/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// A compact JWS over `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, KeyError> {
        let header = json!({"alg": self.alg.as_str(), "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.key {
            Key::Es256(pair) => pair
                .sign(&self.rng, input.as_bytes())
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
            Key::EdDsa(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// RFC 7638: SHA-256 over the required members in lexicographic order,
/// without whitespace; the callers build them in that order.
fn thumbprint(required: &Value) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, required.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

// === impl Statements ===

impl Statements {
    pub fn new(cfg: &config::Statement) -> Self {
        Statements { cfg: cfg.clone() }
    }

    pub fn signer(&self) -> Option<&Signer> {
        self.cfg.signer.as_deref()
    }

    /// Removes any statement header the client sent and, when statements
    /// are on and there is an identity, adds a fresh one.
    pub fn apply(&self, headers: &mut HeaderMap, identity: Option<(&Identity, &str)>) {
        let name = &self.cfg.header;
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|n| crate::headers::same_name(n, name))
            .cloned()
            .collect();
        for n in spoofed {
            headers.remove(n);
        }
        let (Some(signer), Some((identity, via))) = (self.signer(), identity) else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let claims = json!({
            "iss": self.cfg.issuer,
            "aud": self.cfg.audience,
            "sub": identity.subject,
            "iat": now,
            "nbf": now,
            "exp": now + self.cfg.ttl.as_secs(),
            "jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
            "user": identity.user,
            "email": identity.email,
            "groups": identity.groups,
            "role": identity.role,
            "auth": via,
        });
        match signer.sign(&claims).map(HeaderValue::try_from) {
            Ok(Ok(value)) => {
                headers.insert(name.clone(), value);
            }
            // base64url text is always a valid header value; a signing
            // failure leaves the request without a statement, and the app
            // that relies on one refuses it.
            _ => tracing::error!("Could not sign the identity statement"),
        }
    }
}

#[cfg(test)]
mod tests {
    use openidconnect::JsonWebKey as _;
    use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};

    use super::*;

    /// Verifies with openidconnect's JWK code, independent of ring.
    fn verify(signer: &Signer, token: &str, alg: CoreJwsSigningAlgorithm) -> Value {
        let jwk: CoreJsonWebKey = serde_json::from_value(signer.jwks()["keys"][0].clone()).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        jwk.verify_signature(&alg, input.as_bytes(), &sig)
            .expect("signature verifies");
        let payload = input.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn es256_and_eddsa_statements_verify_with_the_published_key() {
        let claims = json!({"sub": "s", "role": "admin"});
        for (alg, core) in [
            (Alg::Es256, CoreJwsSigningAlgorithm::EcdsaP256Sha256),
            (Alg::EdDsa, CoreJwsSigningAlgorithm::EdDsa),
        ] {
            let signer = Signer::generate(alg).unwrap();
            let token = signer.sign(&claims).unwrap();
            assert_eq!(verify(&signer, &token, core), claims);
            let jwk = &signer.jwks()["keys"][0];
            assert_eq!(jwk["kid"], signer.kid());
            assert_eq!(jwk["alg"], alg.as_str());
            assert!(
                jwk.get("d").is_none(),
                "the private part is never published"
            );
        }
    }

    #[test]
    fn keys_load_from_pkcs8_pem_and_wrong_kinds_are_refused() {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der.as_ref())
        );
        let signer = Signer::from_pem(Alg::Es256, pem.as_bytes()).unwrap();
        assert_eq!(signer.alg(), Alg::Es256);
        assert!(matches!(
            Signer::from_pem(Alg::EdDsa, pem.as_bytes()),
            Err(KeyError::Pkcs8(..))
        ));
        assert!(matches!(
            Signer::from_pem(Alg::Es256, b"not a key"),
            Err(KeyError::Pem)
        ));
    }
}
