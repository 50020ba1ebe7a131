//! Header rewriting between the browser and the app: pure functions on
//! `HeaderMap`, no I/O.
//!
//! On the way upstream, in this order:
//! 1. hop-by-hop headers go, including every name the `Connection` header
//!    lists (RFC 9110 §7.6.1) — done first, so a client cannot use
//!    `Connection` to remove a header billguard adds later;
//! 2. anything that looks like an identity header goes: names are compared
//!    case-insensitively with `_` read as `-`, because WSGI and PHP fold
//!    `X_Forwarded_User` into the same variable as `X-Forwarded-User`;
//! 3. billguard's own cookies are removed from `Cookie`;
//! 4. `X-Forwarded-For`, `-Proto` and `-Host` are set from the real
//!    connection; what the client sent is believed only from a trusted proxy;
//! 5. the identity of the session is injected.
//!
//! On the way back, hop-by-hop headers of the app's response are removed.

use std::net::IpAddr;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::config;
use crate::identity::{Identity, Role};

/// Cookie names billguard sets all start with this (after an optional
/// `__Host-` or `__Secure-` prefix).
pub const COOKIE_PREFIX: &str = "billguard_";

/// Characters escaped in identity values: controls and `%` always, so the
/// value decodes back unambiguously; non-ASCII is always escaped as UTF-8.
const VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');
/// Group names also escape `,`, the list separator.
const GROUP_ESCAPES: &AsciiSet = &VALUE_ESCAPES.add(b',');

/// RFC 9110 §7.6.1 and RFC 9112: headers meaningful only for one connection.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
// Names as `HeaderName` constants: a `&str` name is parsed again on every
// map operation, and these are used on every request.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The identity headers as the app will receive them, built once per
/// session so the request path only clones `HeaderValue`s.
#[derive(Clone, Debug)]
pub struct IdentityValues {
    pub user: HeaderValue,
    pub email: Option<HeaderValue>,
    pub groups: HeaderValue,
    pub role: HeaderValue,
}

/// Rewrites request and response headers with the configured names.
#[derive(Clone, Debug)]
pub struct Rewriter {
    names: config::Headers,
    /// The identity header names in their compare form, for spoof checks.
    folded: [String; 4],
}

/// What the proxy knows about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub ip: IpAddr,
    /// `https` when billguard's listener terminated TLS.
    pub proto: &'static str,
    /// The address as text (an IPv4-mapped IPv6 address as IPv4), written
    /// once per connection instead of for every request's
    /// `X-Forwarded-For` and log line.
    text: IpText,
}

/// An IP address's text without a heap allocation, so `Peer` stays `Copy`.
#[derive(Clone, Copy)]
struct IpText {
    buf: [u8; IP_TEXT_MAX],
    len: u8,
}

/// The longest IPv6 text (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const IP_TEXT_MAX: usize = 45;

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        use std::io::Write as _;
        let mut text = IpText {
            buf: [0; IP_TEXT_MAX],
            len: 0,
        };
        let mut rest = &mut text.buf[..];
        // Always fits: no address is longer than IP_TEXT_MAX.
        let _ = write!(rest, "{ip}");
        let left = rest.len();
        text.len = u8::try_from(IP_TEXT_MAX - left).unwrap_or(0);
        text
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("-")
    }
}

// === impl Peer ===

impl Peer {
    pub fn new(ip: IpAddr, proto: &'static str) -> Self {
        Peer {
            ip,
            proto,
            text: IpText::new(canonical(ip)),
        }
    }

    /// The client's address as text, IPv4-mapped addresses as IPv4.
    pub fn ip_text(&self) -> &str {
        self.text.as_str()
    }
}

// === impl Rewriter ===

impl Rewriter {
    pub fn new(names: config::Headers) -> Self {
        let folded =
            [&names.user, &names.email, &names.groups, &names.role].map(|n| fold(n.as_str()));
        Rewriter { names, folded }
    }

    /// Prepares a request for the app. `upgrade` keeps `Connection: upgrade`
    /// and `Upgrade` for a protocol switch such as WebSocket.
    pub fn upstream_request(
        &self,
        headers: &mut HeaderMap,
        peer: Peer,
        identity: Option<&IdentityValues>,
        upgrade: Option<HeaderValue>,
    ) {
        remove_hop_by_hop(headers);
        self.remove_spoofed(headers);
        remove_own_cookies(headers);
        self.set_forwarded(headers, peer);

        if let Some(id) = identity {
            headers.insert(self.names.user.clone(), id.user.clone());
            if let Some(email) = &id.email {
                headers.insert(self.names.email.clone(), email.clone());
            }
            headers.insert(self.names.groups.clone(), id.groups.clone());
            headers.insert(self.names.role.clone(), id.role.clone());
        }
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
    }

    /// Cleans the app's response before it goes to the browser.
    pub fn downstream_response(&self, headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
        remove_hop_by_hop(headers);
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
    }

    /// Removes every header whose name folds to an identity header name.
    fn remove_spoofed(&self, headers: &mut HeaderMap) {
        // Collecting nothing allocates nothing: the usual request pays only
        // for the comparisons.
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.folded.iter().any(|f| folds_to(name.as_str(), f)))
            .cloned()
            .collect();
        for name in spoofed {
            tracing::debug!(header = %name, "Removed identity header sent by the client");
            headers.remove(&name);
        }
    }

    fn set_forwarded(&self, headers: &mut HeaderMap, peer: Peer) {
        let ip = canonical(peer.ip);
        let trusted = self
            .names
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip));
        let peer_ip =
            HeaderValue::from_str(peer.ip_text()).expect("an IP address is a valid header value");

        if trusted {
            // Append the proxy that talked to us to the chain it sent.
            let chain = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            let value = if chain.is_empty() {
                peer_ip
            } else {
                HeaderValue::from_str(&format!("{chain}, {ip}")).unwrap_or(peer_ip)
            };
            headers.insert(X_FORWARDED_FOR, value);
        } else {
            headers.insert(X_FORWARDED_FOR, peer_ip);
            headers.remove(header::FORWARDED);
        }

        if !trusted || !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(peer.proto));
        }
        if !trusted || !headers.contains_key(X_FORWARDED_HOST) {
            match headers.get(header::HOST).cloned() {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST, host);
                }
                None => {
                    headers.remove(X_FORWARDED_HOST);
                }
            }
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

// === impl IdentityValues ===

impl IdentityValues {
    /// Encodes an identity for headers: CTLs, `%` and non-ASCII are
    /// percent-encoded; in groups `,` is too, so the list always splits back.
    pub fn new(identity: &Identity) -> Self {
        let groups = identity
            .groups
            .iter()
            .map(|g| utf8_percent_encode(g, GROUP_ESCAPES).to_string())
            .collect::<Vec<_>>()
            .join(",");
        IdentityValues {
            user: encoded(&identity.user),
            email: identity.email.as_deref().map(encoded),
            groups: header_value(groups),
            role: HeaderValue::from_static(match identity.role {
                Role::Admin => "admin",
                Role::User => "user",
            }),
        }
    }
}

fn encoded(text: &str) -> HeaderValue {
    header_value(utf8_percent_encode(text, VALUE_ESCAPES).to_string())
}

fn header_value(text: String) -> HeaderValue {
    // Percent-encoding left only visible ASCII and spaces.
    HeaderValue::try_from(text).expect("percent-encoded text is a valid header value")
}

/// Header names compare equal ignoring case and reading `_` as `-`.
pub fn same_name(a: &HeaderName, b: &HeaderName) -> bool {
    // Compared byte by byte: this runs for every request header.
    let (a, b) = (a.as_str(), b.as_str());
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| fold_byte(x) == fold_byte(y))
}

/// Names an operator may not use for an identity header.
pub fn is_reserved(name: &HeaderName) -> bool {
    let folded = fold(name.as_str());
    HOP_BY_HOP.iter().any(|h| fold(h.as_str()) == folded)
        || [
            "host",
            "cookie",
            "set-cookie",
            "authorization",
            "content-length",
            "content-type",
            "forwarded",
            X_FORWARDED_FOR.as_str(),
            X_FORWARDED_PROTO.as_str(),
            X_FORWARDED_HOST.as_str(),
            KEEP_ALIVE.as_str(),
            PROXY_CONNECTION.as_str(),
        ]
        .contains(&folded.as_str())
}

fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// `fold(name) == folded` without building the folded string. `folded` is
/// already in compare form.
fn folds_to(name: &str, folded: &str) -> bool {
    name.len() == folded.len()
        && name
            .bytes()
            .zip(folded.bytes())
            .all(|(n, f)| fold_byte(n) == f)
}

fn fold_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// An IPv4 peer may arrive as an IPv4-mapped IPv6 address on a dual-stack
/// listener; it is the IPv4 address that trust rules and logs mean.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names notes which are present: most messages carry
    // none, or only `Connection: keep-alive` (every response from nginx),
    // and then cost no removal or one, instead of nine that each hash and
    // probe the map.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // The headers that `Connection` names. `keep-alive`, the usual one,
    // is removed below when present, like the rest of the fixed list.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in listed {
        // `Host` is end-to-end; a client listing it must not make the app
        // see the upstream's authority instead.
        if name != header::HOST {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP
        .iter()
        .chain([&KEEP_ALIVE, &PROXY_CONNECTION])
        .enumerate()
    {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Where `name` is in `HOP_BY_HOP` followed by `Keep-Alive` and
/// `Proxy-Connection`.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    // Each of them starts with one of these letters; most names a message
    // carries do not, and are passed over after one comparison.
    if !matches!(
        name.as_str().as_bytes().first(),
        Some(b'c' | b'k' | b'p' | b't' | b'u')
    ) {
        return None;
    }
    HOP_BY_HOP
        .iter()
        .chain([&KEEP_ALIVE, &PROXY_CONNECTION])
        .position(|h| h == name)
}

/// True for a cookie name billguard itself sets.
pub fn is_own_cookie(name: &str) -> bool {
    name.strip_prefix("__Host-")
        .or_else(|| name.strip_prefix("__Secure-"))
        .unwrap_or(name)
        .starts_with(COOKIE_PREFIX)
}

/// Drops billguard's cookies from every `Cookie` header, keeping the app's
/// in one header.
fn remove_own_cookies(headers: &mut HeaderMap) {
    // One lookup for reading and rewriting: the map is hashed once.
    let header::Entry::Occupied(mut entry) = headers.entry(header::COOKIE) else {
        return;
    };
    // One header without billguard's cookies is left alone (one that is not
    // text is dropped below).
    let mut values = entry.iter();
    if let (Some(only), None) = (values.next(), values.next())
        && only
            .to_str()
            .is_ok_and(|v| !cookie_pairs(v).any(|(name, _)| is_own_cookie(name)))
    {
        return;
    }
    // One string for all the kept pairs, handed to the header without a copy.
    let mut kept = String::new();
    for value in entry.iter() {
        let Ok(value) = value.to_str() else { continue };
        for (name, pair) in cookie_pairs(value) {
            if !is_own_cookie(name) {
                if !kept.is_empty() {
                    kept.push_str("; ");
                }
                kept.push_str(pair);
            }
        }
    }
    match HeaderValue::from_maybe_shared(Bytes::from(kept)) {
        Ok(value) if !value.is_empty() => {
            entry.insert(value);
        }
        _ => {
            entry.remove();
        }
    }
}

/// The value of the first cookie named `name` in the request's `Cookie`
/// headers. Bytes are compared as they are: this runs for every request,
/// and only the value found needs to be text.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let name = name.as_bytes();
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (&pair[..eq] == name).then_some(&pair[eq + 1..])
        })
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The non-empty `name=value` pairs of a `Cookie` header, as (name, pair).
fn cookie_pairs(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
            (name, pair)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_by_its_exact_name_in_any_cookie_header() {
        let mut h = HeaderMap::new();
        let found = |h: &HeaderMap, name| cookie(h, name).map(str::to_owned);
        assert_eq!(found(&h, "s"), None);
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xs=1; s_x=2;;  a=b=c "),
        );
        h.append(header::COOKIE, HeaderValue::from_static("s=first;s=second"));
        assert_eq!(found(&h, "s").as_deref(), Some("first"));
        assert_eq!(
            found(&h, "a").as_deref(),
            Some("b=c"),
            "a value may hold '='"
        );
        assert_eq!(found(&h, "s_x").as_deref(), Some("2"));
        assert_eq!(found(&h, "x"), None, "no name matches by prefix or suffix");
        assert_eq!(found(&h, "b"), None, "a value is not a name");

        // A byte that is not text elsewhere in the header hides nothing;
        // a value that is not text is not returned.
        let mut h = HeaderMap::new();
        let odd = HeaderValue::from_bytes(b"t=\xff\xfe; s=ok").unwrap();
        h.insert(header::COOKIE, odd);
        assert_eq!(found(&h, "s").as_deref(), Some("ok"));
        assert_eq!(found(&h, "t"), None);
    }

    fn rewriter(trusted: &[&str]) -> Rewriter {
        Rewriter::new(config::Headers {
            user: HeaderName::from_static("x-forwarded-user"),
            email: HeaderName::from_static("x-forwarded-email"),
            groups: HeaderName::from_static("x-forwarded-groups"),
            role: HeaderName::from_static("x-forwarded-role"),
            trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
        })
    }

    fn peer(ip: &str) -> Peer {
        Peer::new(ip.parse().unwrap(), "http")
    }

    #[test]
    fn a_peers_address_text_is_written_once_and_mapped_addresses_read_as_ipv4() {
        assert_eq!(peer("203.0.113.9").ip_text(), "203.0.113.9");
        assert_eq!(peer("::ffff:10.0.0.1").ip_text(), "10.0.0.1");
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(peer(longest).ip_text(), longest);
        assert_eq!(peer("2001:db8::1").ip_text(), "2001:db8::1");
    }

    fn alice() -> Identity {
        Identity {
            subject: "1".into(),
            user: "alice".into(),
            email: Some("alice@example.com".into()),
            groups: vec!["staff".into(), "a,b".into(), "100%".into()],
            role: Role::Admin,
        }
    }

    #[test]
    fn spoofed_identity_headers_are_removed_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "X-Forwarded-User",
            "x_forwarded_user",
            "X_FORWARDED_ROLE",
            "x-forwarded_groups",
            "X-FORWARDED-EMAIL",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        rewriter(&[]).upstream_request(&mut h, peer("10.0.0.1"), None, None);
        for name in [
            "x-forwarded-user",
            "x_forwarded_user",
            "x_forwarded_role",
            "x-forwarded_groups",
            "x-forwarded-email",
        ] {
            assert!(h.get(name).is_none(), "{name} survived");
        }
    }

    #[test]
    fn connection_header_cannot_remove_injected_identity() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-forwarded-user, x-forwarded-role, x-app"),
        );
        h.insert("x-app", HeaderValue::from_static("1"));
        let id = IdentityValues::new(&alice());
        rewriter(&[]).upstream_request(&mut h, peer("10.0.0.1"), Some(&id), None);
        assert_eq!(h["x-forwarded-user"], "alice");
        assert_eq!(h["x-forwarded-role"], "admin");
        assert!(h.get("x-app").is_none());
        assert!(h.get(header::CONNECTION).is_none());
    }

    #[test]
    fn connection_cannot_remove_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("bills.example.com"));
        h.insert(header::CONNECTION, HeaderValue::from_static("host"));
        rewriter(&[]).upstream_request(&mut h, peer("10.0.0.1"), None, None);
        assert_eq!(h[header::HOST], "bills.example.com");
        assert_eq!(h["x-forwarded-host"], "bills.example.com");
    }

    #[test]
    fn groups_escape_commas_and_percent_so_the_list_splits_back() {
        let id = IdentityValues::new(&alice());
        assert_eq!(id.groups, "staff,a%2Cb,100%25");
    }

    #[test]
    fn control_characters_and_non_ascii_never_reach_a_value() {
        let mut who = alice();
        who.user = "ev\r\nil\u{7f}é".into();
        let id = IdentityValues::new(&who);
        assert_eq!(id.user, "ev%0D%0Ail%7F%C3%A9");
    }

    #[test]
    fn own_cookies_are_removed_and_the_apps_kept() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("app=1; __Host-billguard_session=abc"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("billguard_login_x=y; theme=dark"),
        );
        rewriter(&[]).upstream_request(&mut h, peer("10.0.0.1"), None, None);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "app=1; theme=dark");
    }

    #[test]
    fn a_cookie_header_without_own_cookies_is_left_alone_and_one_with_only_them_goes() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("app=1;theme=dark"));
        rewriter(&[]).upstream_request(&mut h, peer("10.0.0.1"), None, None);
        assert_eq!(h[header::COOKIE], "app=1;theme=dark");

        h.insert(
            header::COOKIE,
            HeaderValue::from_static("billguard_session=abc; __Host-billguard_login=x"),
        );
        rewriter(&[]).upstream_request(&mut h, peer("10.0.0.1"), None, None);
        assert!(h.get(header::COOKIE).is_none());
    }

    #[test]
    fn every_hop_by_hop_header_goes_with_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Hop"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        for name in HOP_BY_HOP.iter().chain([&KEEP_ALIVE, &PROXY_CONNECTION]) {
            h.append(name.clone(), HeaderValue::from_static("x"));
        }
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("x-app", HeaderValue::from_static("1"));
        rewriter(&[]).downstream_response(&mut h, None);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-app"]);
    }

    #[test]
    fn hop_by_hop_headers_go_even_without_a_connection_header() {
        for name in ["te", "proxy-connection", "keep-alive", "transfer-encoding"] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert("x-app", HeaderValue::from_static("1"));
            rewriter(&[]).downstream_response(&mut h, None);
            assert!(h.get(name).is_none(), "{name} survived");
            assert_eq!(h["x-app"], "1");
        }
    }

    #[test]
    fn folding_in_place_agrees_with_the_folded_string() {
        for (name, folded) in [
            ("x_forwarded_user", "x-forwarded-user"),
            ("X-Forwarded-User", "x-forwarded-user"),
            ("x-forwarded-users", "x-forwarded-user"),
            ("x-forwarded-use", "x-forwarded-user"),
            ("x-forwarded-role", "x-forwarded-user"),
        ] {
            assert_eq!(folds_to(name, folded), fold(name) == folded, "{name}");
            let (a, b) = (
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderName::from_bytes(folded.as_bytes()).unwrap(),
            );
            assert_eq!(same_name(&a, &b), fold(name) == folded, "{name}");
        }
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("bills.example.com"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        rewriter(&[]).upstream_request(&mut h, peer("10.0.0.9"), None, None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "bills.example.com");
        assert!(h.get(header::FORWARDED).is_none());
    }

    #[test]
    fn forwarded_headers_from_trusted_proxies_are_extended() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("internal:4180"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("bills.example.com"),
        );
        rewriter(&["10.0.0.0/8"]).upstream_request(&mut h, peer("::ffff:10.0.0.9"), None, None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "bills.example.com");
    }

    #[test]
    fn upgrade_survives_hop_by_hop_removal_only_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let mut plain = h.clone();
        rewriter(&[]).upstream_request(
            &mut h,
            peer("10.0.0.1"),
            None,
            Some(HeaderValue::from_static("websocket")),
        );
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert!(h.get("keep-alive").is_none());
        rewriter(&[]).upstream_request(&mut plain, peer("10.0.0.1"), None, None);
        assert!(plain.get(header::UPGRADE).is_none());
    }
}
