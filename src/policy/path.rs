//! How a request path is read before any route rule sees it, and what the
//! app receives instead of the raw path.
//!
//! The path (never the query) is percent-decoded exactly once, `.` and `..`
//! segments are resolved (RFC 3986 §5.2.4, `%2e` counts as a dot), and runs
//! of slashes collapse into one. Rules match that decoded text. The app then
//! receives the same path re-encoded, not the bytes the client sent, so
//! whatever the app makes of it means what the rule matched:
//! `/static/%2e%2e/admin` is matched *and forwarded* as `/admin`.
//!
//! Some spellings mean different things to different servers. Rather than
//! guess which reading the app uses, these are refused with 400:
//! - `%2F` (an encoded slash: a separator to some routers, a character to
//!   others) and `\` or `%5C` (a separator on some servers);
//! - a `%` that still introduces an escape after decoding (`%252e`), which
//!   an app that decodes twice would read as a dot;
//! - `;` anywhere in the path (Java servlet containers drop `;...` from a
//!   segment, so `/static/..;/admin` would be `/admin` to them);
//! - a segment that ends in a dot other than `.` and `..` (`/admin.`),
//!   which Windows-style servers read without the dot;
//! - control characters, malformed escapes, and bytes that are not UTF-8.
//!
//! Re-encoding keeps RFC 3986 equivalence: unreserved characters are sent
//! plain, a reserved character is escaped exactly when the client escaped
//! it, and anything not allowed in a path is escaped.

use std::borrow::Cow;
use std::fmt::Write as _;

/// A path as the rules see it and as the app will receive it: the request's
/// own text when it is already in normal form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// Decoded once, dot segments resolved, duplicate slashes collapsed.
    pub decoded: Cow<'a, str>,
    /// `decoded`, percent-encoded again for the request to the app.
    pub encoded: Cow<'a, str>,
}

impl Normalized<'_> {
    /// Whether the app gets the path exactly as the client sent it.
    pub fn is_unchanged(&self) -> bool {
        matches!(self.encoded, Cow::Borrowed(_))
    }

    pub fn into_owned(self) -> Normalized<'static> {
        Normalized {
            decoded: Cow::Owned(self.decoded.into_owned()),
            encoded: Cow::Owned(self.encoded.into_owned()),
        }
    }
}

/// Why a path was refused. Each reading is ambiguous between servers or
/// malformed; the request gets a 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("a `%` is not followed by two hex digits")]
    BadEscape,
    #[error("an encoded slash (`%2F`)")]
    EncodedSlash,
    #[error("a backslash (`\\` or `%5C`)")]
    Backslash,
    #[error("a `;` path parameter")]
    Semicolon,
    #[error("double percent-encoding (`%25` followed by hex digits)")]
    DoubleEncoded,
    #[error("a control character")]
    Control,
    #[error("bytes that are not UTF-8 after decoding")]
    NotUtf8,
    #[error("a segment that ends in a dot")]
    TrailingDot,
}

/// One byte of the decoded path and whether the client escaped it.
#[derive(Clone, Copy)]
struct Unit {
    byte: u8,
    escaped: bool,
}

/// Normalizes the path part of a request target (without the query).
pub fn normalize(raw: &str) -> Result<Normalized<'_>, PathError> {
    if is_plain(raw) {
        return Ok(Normalized {
            decoded: Cow::Borrowed(raw),
            encoded: Cow::Borrowed(raw),
        });
    }
    normalize_any(raw)
}

/// Whether `raw` is already in normal form, as most API paths are: only
/// letters, digits, `-`, `_`, `~` and single slashes after the first. There
/// is nothing to decode, no dot segment to resolve, nothing to escape, and
/// every segment but a trailing empty one is kept, so [`normalize_any`]
/// would return `raw` both ways.
fn is_plain(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.first() == Some(&b'/')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'~'))
        && !raw.contains("//")
}

fn normalize_any(raw: &str) -> Result<Normalized<'static>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let units = decode(raw.as_bytes())?;

    for unit in &units {
        match unit.byte {
            b'/' if unit.escaped => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            0x00..=0x1f | 0x7f => return Err(PathError::Control),
            _ => {}
        }
    }
    // A raw `%` always starts an escape, so every `%` left here was `%25`.
    let double = units.windows(3).any(|w| {
        w[0].byte == b'%' && w[1].byte.is_ascii_hexdigit() && w[2].byte.is_ascii_hexdigit()
    });
    if double {
        return Err(PathError::DoubleEncoded);
    }
    let plain: Vec<u8> = units.iter().map(|u| u.byte).collect();
    if std::str::from_utf8(&plain).is_err() {
        return Err(PathError::NotUtf8);
    }

    let segments = resolve(&units)?;
    let mut decoded = Vec::with_capacity(plain.len());
    let mut encoded = String::with_capacity(raw.len());
    for segment in &segments.kept {
        decoded.push(b'/');
        encoded.push('/');
        for unit in *segment {
            decoded.push(unit.byte);
            encode(*unit, &mut encoded);
        }
    }
    if segments.kept.is_empty() || segments.trailing_slash {
        decoded.push(b'/');
        encoded.push('/');
    }
    // Joining whole UTF-8 segments with `/` keeps the text valid UTF-8.
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    Ok(Normalized {
        decoded: Cow::Owned(decoded),
        encoded: Cow::Owned(encoded),
    })
}

fn decode(raw: &[u8]) -> Result<Vec<Unit>, PathError> {
    let mut units = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = raw.get(i + 1).and_then(|b| hex_value(*b));
            let lo = raw.get(i + 2).and_then(|b| hex_value(*b));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            units.push(Unit {
                byte: hi << 4 | lo,
                escaped: true,
            });
            i += 3;
        } else {
            units.push(Unit {
                byte: raw[i],
                escaped: false,
            });
            i += 1;
        }
    }
    Ok(units)
}

struct Segments<'a> {
    kept: Vec<&'a [Unit]>,
    trailing_slash: bool,
}

/// Splits on `/` (every slash is a real one by now), drops empty segments,
/// and resolves `.` and `..`; `..` never climbs above the root.
fn resolve(units: &[Unit]) -> Result<Segments<'_>, PathError> {
    let parts: Vec<&[Unit]> = units.split(|u| u.byte == b'/').skip(1).collect();
    let mut kept: Vec<&[Unit]> = Vec::with_capacity(parts.len());
    let mut trailing_slash = false;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let dots = part.iter().all(|u| u.byte == b'.');
        match (part.len(), dots) {
            (0, _) | (1, true) => trailing_slash = last,
            (2, true) => {
                kept.pop();
                trailing_slash = last;
            }
            _ if part.last().is_some_and(|u| u.byte == b'.') => {
                return Err(PathError::TrailingDot);
            }
            _ => {
                kept.push(part);
                trailing_slash = false;
            }
        }
    }
    Ok(Segments {
        kept,
        trailing_slash,
    })
}

/// Appends one byte in its canonical form (RFC 3986 §6.2.2).
fn encode(unit: Unit, out: &mut String) {
    let b = unit.byte;
    let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let allowed_plain = matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    );
    if unreserved || (allowed_plain && !unit.escaped) {
        out.push(char::from(b));
    } else {
        // Writing to a String cannot fail.
        let _ = write!(out, "%{b:02X}");
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, String) {
        let n = normalize(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        (n.decoded.into_owned(), n.encoded.into_owned())
    }

    #[test]
    fn only_a_path_in_normal_form_goes_to_the_app_as_sent() {
        assert!(normalize("/api/bills/2024-x_y~z").unwrap().is_unchanged());
        for raw in ["/a//b", "/a/./b", "/a/b/..", "/%61", "/a%2Db"] {
            let n = normalize(raw).unwrap();
            assert!(!n.is_unchanged(), "{raw}");
            assert_ne!(n.encoded, raw, "{raw}");
        }
    }

    #[test]
    fn plain_paths_take_the_short_way_to_the_same_result() {
        let plain = [
            "/",
            "/bills",
            "/bills/",
            "/api/v2/bills/42",
            "/A-b_c~/x",
            "/~user/",
        ];
        for raw in plain {
            assert!(is_plain(raw), "{raw}");
            assert_eq!(normalize(raw), normalize_any(raw), "{raw}");
            assert_eq!(ok(raw), (raw.to_owned(), raw.to_owned()), "{raw}");
        }
        let not_plain = [
            "", "bills", "//", "/a//b", "/./a", "/a.b", "/a%41", "/a;b", "/a b", "/é",
        ];
        for raw in not_plain {
            assert!(!is_plain(raw), "{raw}");
        }
    }

    #[test]
    fn dot_segments_and_duplicate_slashes_are_resolved() {
        let cases = [
            ("/", "/", "/"),
            ("//", "/", "/"),
            ("/bills", "/bills", "/bills"),
            ("/bills/", "/bills/", "/bills/"),
            ("//admin//users", "/admin/users", "/admin/users"),
            ("/static/../admin", "/admin", "/admin"),
            ("/static/%2e%2e/admin", "/admin", "/admin"),
            ("/static/%2E%2e/admin", "/admin", "/admin"),
            ("/static/.%2e/admin", "/admin", "/admin"),
            ("/a/./b/.", "/a/b/", "/a/b/"),
            ("/a/b/..", "/a/", "/a/"),
            ("/../../admin", "/admin", "/admin"),
            ("/a/..", "/", "/"),
            ("/.hidden/x", "/.hidden/x", "/.hidden/x"),
            ("/report.v2.pdf", "/report.v2.pdf", "/report.v2.pdf"),
        ];
        for (raw, decoded, encoded) in cases {
            assert_eq!(ok(raw), (decoded.to_owned(), encoded.to_owned()), "{raw}");
        }
    }

    #[test]
    fn reencoding_keeps_what_the_client_escaped_and_decodes_unreserved() {
        let cases = [
            ("/%41%62c", "/Abc", "/Abc"),
            ("/caf%c3%a9", "/café", "/caf%C3%A9"),
            ("/a%20b", "/a b", "/a%20b"),
            ("/q%3Fx", "/q?x", "/q%3Fx"),
            ("/h%23x", "/h#x", "/h%23x"),
            ("/100%25", "/100%", "/100%25"),
            ("/a+b", "/a+b", "/a+b"),
            ("/a%2Bb", "/a+b", "/a%2Bb"),
            ("/user@host:1", "/user@host:1", "/user@host:1"),
        ];
        for (raw, decoded, encoded) in cases {
            assert_eq!(ok(raw), (decoded.to_owned(), encoded.to_owned()), "{raw}");
        }
    }

    /// Every combination of up to four tricky pieces: whatever is accepted,
    /// the forwarded path decodes once to exactly the matched path, and
    /// normalizing it again changes nothing, so an app that decodes or
    /// normalizes the path itself sees what the rules saw.
    #[test]
    fn the_forwarded_path_means_the_matched_path() {
        const PIECES: &[&str] = &[
            "/", ".", "..", "%2e", "%2E%2e", "a", "%41", "%25", "%20", "%C3%A9", "+", "%2B", "%3F",
            "~", "@",
        ];
        let mut checked = 0;
        // (path so far, pieces used)
        let mut stack = vec![(String::from("/"), 0)];
        while let Some((raw, used)) = stack.pop() {
            assert_eq!(normalize(&raw), normalize_any(&raw), "{raw}");
            if let Ok(n) = normalize(&raw) {
                checked += 1;
                let once = percent_encoding::percent_decode_str(&n.encoded)
                    .decode_utf8()
                    .expect("the forwarded path is UTF-8 once decoded");
                assert_eq!(once, n.decoded, "{raw}");
                assert_eq!(normalize(&n.encoded).as_ref(), Ok(&n), "{raw}");
                assert!(!n.decoded.contains("//"), "{raw}");
                let segments: Vec<&str> = n.decoded.split('/').collect();
                assert!(
                    !segments.contains(&".") && !segments.contains(&".."),
                    "{raw}"
                );
            }
            if used < 4 {
                for piece in PIECES {
                    stack.push((format!("{raw}{piece}"), used + 1));
                }
            }
        }
        assert!(checked > 10_000, "only {checked} paths checked");
    }

    #[test]
    fn ambiguous_or_malformed_paths_are_refused() {
        let cases = [
            ("bills", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/static%2F..%2Fadmin", PathError::EncodedSlash),
            ("/static/..%2fadmin", PathError::EncodedSlash),
            ("/static\\..\\admin", PathError::Backslash),
            ("/static/..%5Cadmin", PathError::Backslash),
            ("/static/..;/admin", PathError::Semicolon),
            ("/admin;jsessionid=1", PathError::Semicolon),
            ("/static/%252e%252e/admin", PathError::DoubleEncoded),
            ("/%252F", PathError::DoubleEncoded),
            ("/a%00b", PathError::Control),
            ("/a%0d%0aSet-Cookie", PathError::Control),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/%ff%fe", PathError::NotUtf8),
            ("/admin.", PathError::TrailingDot),
            ("/admin./users", PathError::TrailingDot),
            ("/admin%2e/users", PathError::TrailingDot),
            ("/x/...", PathError::TrailingDot),
        ];
        for (raw, error) in cases {
            assert_eq!(normalize(raw), Err(error), "{raw}");
        }
    }
}
