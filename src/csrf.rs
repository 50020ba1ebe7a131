//! CSRF protection for billguard's own forms: the sign-in form and every
//! state-changing request of the admin panel.
//!
//! A token is an HMAC-SHA256, under a key derived from `session.secret`, of
//! the form's purpose and a value the browser holds in a cookie: for the
//! sign-in form a random `billguard_csrf` cookie (`SameSite=Strict`), for the
//! admin panel the session id itself. A cross-site page can neither read
//! that cookie nor compute the HMAC, and a cookie planted from a sibling
//! domain is useless without the matching token. Tokens are compared in
//! constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac};
use hyper::header::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::config::Secret;
use crate::session::set_cookie_value;

/// Cookie name without the `__Host-` prefix.
const COOKIE_NAME: &str = "billguard_csrf";
/// Keeps tokens of different forms apart.
const LABEL: &[u8] = b"billguard csrf v1";

/// What a token protects.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    SignIn,
    Admin,
}

/// Mints and checks tokens.
#[derive(Clone)]
pub struct Csrf {
    key: Secret,
    secure: bool,
}

// === impl Csrf ===

impl Csrf {
    pub fn new(secret: &Secret, secure: bool) -> Self {
        Csrf {
            key: secret.clone(),
            secure,
        }
    }

    /// The token for a form with this purpose, bound to `binding`.
    pub fn token(&self, purpose: Purpose, binding: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(purpose, binding).finalize().into_bytes())
    }

    /// Whether `token` is the one for `purpose` and `binding`.
    pub fn verify(&self, purpose: Purpose, binding: &str, token: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(token.trim()) else {
            return false;
        };
        // `verify_slice` compares in constant time.
        self.mac(purpose, binding).verify_slice(&given).is_ok()
    }

    /// The browser's sign-in binding, if it sent a well-formed one.
    pub fn cookie(&self, headers: &HeaderMap) -> Option<String> {
        crate::headers::cookie(headers, self.cookie_name())
            .filter(|v| v.len() == 43 && URL_SAFE_NO_PAD.decode(v).is_ok())
            .map(str::to_owned)
    }

    /// A fresh sign-in binding and the `Set-Cookie` that stores it.
    pub fn new_cookie(&self) -> (String, HeaderValue) {
        let value = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let cookie = Cookie::build((self.cookie_name(), value.clone()))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Strict)
            .build();
        (value, set_cookie_value(cookie))
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-billguard_csrf"
        } else {
            COOKIE_NAME
        }
    }

    fn mac(&self, purpose: Purpose, binding: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(LABEL);
        mac.update(match purpose {
            Purpose::SignIn => b"\0sign_in\0",
            Purpose::Admin => b"\0admin\0\0\0",
        });
        mac.update(binding.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header;

    fn csrf(secret: &str) -> Csrf {
        Csrf::new(&Secret::new(secret.repeat(32)), true)
    }

    #[test]
    fn a_token_verifies_only_for_its_purpose_binding_and_key() {
        let c = csrf("a");
        let t = c.token(Purpose::SignIn, "binding");
        assert!(c.verify(Purpose::SignIn, "binding", &t));
        assert!(!c.verify(Purpose::Admin, "binding", &t));
        assert!(!c.verify(Purpose::SignIn, "other", &t));
        assert!(!csrf("b").verify(Purpose::SignIn, "binding", &t));
        assert!(!c.verify(Purpose::SignIn, "binding", ""));
        assert!(!c.verify(Purpose::SignIn, "binding", "not base64!"));
    }

    #[test]
    fn the_cookie_is_strict_and_read_back() {
        let c = csrf("a");
        let (value, set) = c.new_cookie();
        let set = set.to_str().unwrap();
        assert!(set.starts_with("__Host-billguard_csrf="), "{set}");
        assert!(
            set.contains("SameSite=Strict") && set.contains("HttpOnly"),
            "{set}"
        );
        let mut h = HeaderMap::new();
        let cookie = format!("x=1; __Host-billguard_csrf={value}");
        h.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        assert_eq!(c.cookie(&h).as_deref(), Some(value.as_str()));
    }
}
