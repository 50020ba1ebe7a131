//! The request id: one per request, on every log line of that request, sent
//! to the app as `X-Request-Id` and back to the client.
//!
//! A client (or an ingress in front of billguard) may send its own id; it is
//! kept when it is short and made of safe characters, so one id follows the
//! request through every hop. Anything else is replaced by a fresh random id.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-sent id that is kept.
const MAX_LEN: usize = 128;

/// The id of one request, stored in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

// === impl RequestId ===

impl RequestId {
    /// The client's id when it is valid, else a new one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut sent = headers.get_all(&HEADER).iter();
        match (sent.next(), sent.next()) {
            (Some(id), None) if is_valid(id.as_bytes()) => RequestId(id.clone()),
            _ => RequestId::fresh(),
        }
    }

    fn fresh() -> Self {
        // Hex by hand into one buffer: this runs for most requests, and a
        // format! per byte was sixteen allocations.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let bytes: [u8; 16] = rand::random();
        let mut hex = Vec::with_capacity(32);
        for b in bytes {
            hex.push(DIGITS[usize::from(b >> 4)]);
            hex.push(DIGITS[usize::from(b & 0x0f)]);
        }
        RequestId(
            HeaderValue::from_maybe_shared(bytes::Bytes::from(hex))
                .expect("hex digits are a valid header value"),
        )
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from checked bytes or hex digits.
        self.0.to_str().unwrap_or("-")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Letters, digits and `-_.:@+=/`: enough for UUIDs, ULIDs, trace ids and the
/// ids ingress controllers generate, and nothing that could split a log line.
fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@+=/".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(sent: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for v in sent {
            headers.append(&HEADER, HeaderValue::from_str(v).unwrap());
        }
        RequestId::from_headers(&headers).to_string()
    }

    #[test]
    fn a_valid_client_id_is_kept() {
        let uuid = "0b9f7a52-6f7e-4c1e-9b1e-3d8f0a7c2e11";
        assert_eq!(id_for(&[uuid]), uuid);
    }

    #[test]
    fn invalid_missing_or_repeated_ids_are_replaced() {
        for sent in [
            &[][..],
            &[""],
            &["has space"],
            &["quote\"inside"],
            &["a", "b"],
            &[&"x".repeat(MAX_LEN + 1) as &str],
        ] {
            let id = id_for(sent);
            assert_eq!(id.len(), 32, "{sent:?} gave {id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!sent.contains(&id.as_str()));
        }
    }
}
