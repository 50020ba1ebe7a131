//! Encryption at rest for everything the session store writes outside
//! this process (Redis values, the persistence file), and the keyed hashes
//! that name Redis keys.
//!
//! Both keys come from `session.secret` through HKDF-SHA256 (RFC 5869) with
//! their own `info` labels, so they are independent of each other and of
//! the login-state cookie key. Values are sealed with AES-256-GCM under a
//! fresh random 96-bit nonce, with the place they are stored at (the Redis
//! key, the file's purpose) as associated data: a value copied to another
//! key does not open. Key names are HMAC-SHA256 of the session id, `sub` or
//! `sid`, so a Redis dump names no user and no usable session id.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Format tag in front of every sealed value; a new format gets a new tag.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const SALT: &[u8] = b"billguard session store";

pub(crate) struct Sealer {
    cipher: Aes256Gcm,
    index_key: [u8; 32],
}

// === impl Sealer ===

impl Sealer {
    pub(crate) fn new(secret: &[u8]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(SALT), secret);
        let mut enc = [0u8; 32];
        let mut index_key = [0u8; 32];
        // 32 bytes are far below HKDF-SHA256's limit of 255 * 32.
        hkdf.expand(b"encryption v1", &mut enc)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(b"key names v1", &mut index_key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Sealer {
            cipher: Aes256Gcm::new(&enc.into()),
            index_key,
        }
    }

    /// `VERSION || nonce || ciphertext+tag`.
    pub(crate) fn seal(&self, place: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: place,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext, or `None` when the value was sealed under another key,
    /// for another place, or damaged.
    pub(crate) fn open(&self, place: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: place,
                },
            )
            .ok()
    }

    /// A keyed hash of `data` in hex, domain-separated by `kind`.
    pub(crate) fn name(&self, kind: &str, data: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.index_key)
            .expect("HMAC accepts a key of any length");
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        hex(&mac.finalize().into_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-test-secret-that-is-long-enough-for-the-key";

    #[test]
    fn a_sealed_value_opens_only_with_the_same_key_and_place() {
        let a = Sealer::new(SECRET);
        let sealed = a.seal(b"bg:sess:1", b"hello");
        assert_eq!(
            a.open(b"bg:sess:1", &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(a.open(b"bg:sess:2", &sealed), None, "moved to another key");
        let b = Sealer::new(b"another-secret-that-is-long-enough-for-the-key");
        assert_eq!(b.open(b"bg:sess:1", &sealed), None, "another key");
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(a.open(b"bg:sess:1", &damaged), None, "damaged");
        assert_eq!(a.open(b"bg:sess:1", &[]), None, "empty");
        assert_eq!(a.open(b"bg:sess:1", &[VERSION, 1, 2]), None, "short");
    }

    #[test]
    fn sealing_twice_gives_different_bytes_and_no_plaintext() {
        let a = Sealer::new(SECRET);
        let one = a.seal(b"p", b"alice@example.com");
        let two = a.seal(b"p", b"alice@example.com");
        assert_ne!(one, two);
        assert!(!one.windows(5).any(|w| w == b"alice"));
    }

    #[test]
    fn names_are_keyed_and_separated_by_kind() {
        let a = Sealer::new(SECRET);
        let b = Sealer::new(b"another-secret-that-is-long-enough-for-the-key");
        assert_eq!(a.name("sub", b"alice"), a.name("sub", b"alice"));
        assert_ne!(a.name("sub", b"alice"), a.name("sid", b"alice"));
        assert_ne!(a.name("sub", b"alice"), b.name("sub", b"alice"));
        assert_eq!(a.name("sub", b"alice").len(), 64);
    }
}
