//! A test HTTP client that behaves enough like a browser to walk a sign-in.
//!
//! It never follows redirects by itself: [`Browser::navigate`] does, hop by hop, so a test can
//! inspect every response on the way to the provider and back. It keeps its own cookie jar,
//! keyed by cookie name only, since every test server lives on 127.0.0.1 (browsers do not
//! separate cookies by port either). Path and Domain are ignored and `Secure` cookies are kept
//! over plain http so the tests can run without TLS; the raw `Set-Cookie` headers are recorded
//! for tests that assert the attributes. Requests carry the headers Chromium sends for a
//! top-level navigation ([`Browser::get`]) or for a script's `fetch()` ([`Browser::fetch`]).
//! Transport failures panic with the URL, since in a test they are the failure.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode, Url};

const MAX_REDIRECTS: usize = 10;
// A safety net so a wedged server fails the test instead of hanging it; not a sync point.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
    (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 billguard-test";

/// What Chromium sends for a top-level navigation.
const NAVIGATION_HEADERS: &[(&str, &str)] = &[
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,\
         image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    ),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-user", "?1"),
    ("upgrade-insecure-requests", "1"),
];

/// What Chromium sends for a script's `fetch()` with default options.
const FETCH_HEADERS: &[(&str, &str)] = &[
    ("accept", "*/*"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-dest", "empty"),
];

/// A browser with its own cookie jar. Methods take `&self`, so it can be shared.
pub struct Browser {
    client: reqwest::Client,
    jar: Mutex<Jar>,
}

/// One response, with the body read in full.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The URL this response answered.
    pub url: Url,
}

/// Where a navigation went: every redirect response in order, then the page it ended on.
#[derive(Clone, Debug)]
pub struct Navigation {
    pub hops: Vec<Resp>,
    pub last: Resp,
}

/// One `Set-Cookie` header, split into its parts; attribute names are matched case-insensitively.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub max_age: Option<i64>,
    pub expires: Option<String>,
}

#[derive(Default)]
struct Jar {
    cookies: BTreeMap<String, Stored>,
    set_cookie_headers: Vec<String>,
}

struct Stored {
    value: String,
    expires: Option<SystemTime>,
    set_by: Option<SetCookie>,
}

// === impl Browser ===

impl Browser {
    pub fn new() -> Browser {
        let client = reqwest::Client::builder()
            .redirect(Policy::none())
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .expect("a plain reqwest client builds");
        Browser {
            client,
            jar: Mutex::default(),
        }
    }

    /// A top-level navigation to `url`, without following redirects.
    pub async fn get(&self, url: &str) -> Resp {
        self.expect(Method::GET, url, NAVIGATION_HEADERS, None)
            .await
    }

    /// What `fetch(url)` in a page would send, without following redirects.
    pub async fn fetch(&self, url: &str) -> Resp {
        self.expect(Method::GET, url, FETCH_HEADERS, None).await
    }

    /// Any request with exactly these extra headers. A `Cookie` among them replaces the jar's.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Resp {
        self.expect(method, url, headers, Some(body.into())).await
    }

    /// Like [`Browser::request`], but hands back transport errors instead of panicking.
    pub async fn try_request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Result<Resp> {
        let url = parse_url(url);
        self.send(method, url, headers, Some(body.into())).await
    }

    /// Navigates to `url` and follows redirects, across hosts, as a browser would.
    pub async fn navigate(&self, url: &str) -> Navigation {
        self.follow(Method::GET, parse_url(url), None).await
    }

    /// Submits a form (`POST`, urlencoded) as a navigation and follows the redirects.
    pub async fn submit(&self, url: &str, fields: &[(&str, &str)]) -> Navigation {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.follow(Method::POST, parse_url(url), Some(Bytes::from(form)))
            .await
    }

    /// The value of the cookie `name`, if the jar holds a live one.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let now = SystemTime::now();
        let jar = self.jar();
        let stored = jar.cookies.get(name)?;
        stored.live_at(now).then(|| stored.value.clone())
    }

    /// The `Set-Cookie` that put `name` in the jar, parsed; `None` if it was set by hand.
    pub fn cookie_set_by(&self, name: &str) -> Option<SetCookie> {
        self.jar().cookies.get(name)?.set_by.clone()
    }

    /// Puts a cookie in the jar by hand, as if a server had set it without attributes.
    pub fn set_cookie(&self, name: &str, value: &str) {
        let stored = Stored {
            value: value.to_owned(),
            expires: None,
            set_by: None,
        };
        self.jar().cookies.insert(name.to_owned(), stored);
    }

    pub fn remove_cookie(&self, name: &str) {
        self.jar().cookies.remove(name);
    }

    pub fn clear_cookies(&self) {
        self.jar().cookies.clear();
    }

    /// The `Cookie` header the next request will carry, or `None` with an empty jar.
    pub fn cookie_header(&self) -> Option<String> {
        let now = SystemTime::now();
        let jar = self.jar();
        let pairs: Vec<String> = jar
            .cookies
            .iter()
            .filter(|(_, stored)| stored.live_at(now))
            .map(|(name, stored)| format!("{name}={}", stored.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    /// Every raw `Set-Cookie` header received so far, in order.
    pub fn set_cookie_headers_seen(&self) -> Vec<String> {
        self.jar().set_cookie_headers.clone()
    }

    async fn follow(&self, method: Method, url: Url, body: Option<Bytes>) -> Navigation {
        let (mut method, mut url, mut body) = (method, url, body);
        let mut hops = Vec::new();
        loop {
            let mut headers = NAVIGATION_HEADERS.to_vec();
            let origin = url.origin().ascii_serialization();
            if body.is_some() {
                headers.push(("content-type", "application/x-www-form-urlencoded"));
                headers.push(("origin", &origin));
            }
            let resp = self
                .expect(
                    method.clone(),
                    url.as_str(),
                    &headers,
                    body.clone().map(Into::into),
                )
                .await;

            let redirect = matches!(resp.status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let Some(location) = resp.location().filter(|_| redirect) else {
                return Navigation { hops, last: resp };
            };
            let next = resp
                .url
                .join(location)
                .unwrap_or_else(|e| panic!("{} redirected to {location:?}: {e}", resp.url));
            // Fetch spec §4.4: 307 and 308 repeat the request; the others turn a POST into a GET.
            if !matches!(resp.status.as_u16(), 307 | 308) {
                method = Method::GET;
                body = None;
            }
            url = next;
            hops.push(resp);
            assert!(
                hops.len() <= MAX_REDIRECTS,
                "more than {MAX_REDIRECTS} redirects, through {:?}",
                hops.iter().map(|h| h.url.as_str()).collect::<Vec<_>>()
            );
        }
    }

    async fn expect(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<reqwest::Body>,
    ) -> Resp {
        let target = parse_url(url);
        match self.send(method.clone(), target, headers, body).await {
            Ok(resp) => resp,
            Err(error) => panic!("{method} {url}: {}", billguard::errors::chain(&error)),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: &[(&str, &str)],
        body: Option<reqwest::Body>,
    ) -> reqwest::Result<Resp> {
        let mut req = self.client.request(method, url.clone());
        let has_cookie = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("cookie"));
        if let Some(cookies) = self.cookie_header().filter(|_| !has_cookie) {
            req = req.header(header::COOKIE, cookies);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }

        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        self.store_cookies(&headers);
        Ok(Resp {
            status,
            headers,
            body,
            url,
        })
    }

    /// RFC 6265 §5.3, reduced to what a single-host test needs: name, value and expiry.
    fn store_cookies(&self, headers: &HeaderMap) {
        let now = SystemTime::now();
        let mut jar = self.jar();
        for value in headers.get_all(header::SET_COOKIE) {
            let raw = String::from_utf8_lossy(value.as_bytes()).into_owned();
            jar.set_cookie_headers.push(raw.clone());
            let Some(cookie) = SetCookie::parse(&raw) else {
                continue;
            };

            // §5.3 step 3: Max-Age wins over Expires; a time not in the future deletes.
            let expires = match cookie.max_age {
                Some(secs) if secs <= 0 => Some(UNIX_EPOCH),
                Some(secs) => Some(now + Duration::from_secs(secs.unsigned_abs())),
                None => cookie.expires.as_deref().and_then(http_date),
            };
            if expires.is_some_and(|at| at <= now) {
                jar.cookies.remove(&cookie.name);
                continue;
            }
            let stored = Stored {
                value: cookie.value.clone(),
                expires,
                set_by: Some(cookie.clone()),
            };
            jar.cookies.insert(cookie.name, stored);
        }
    }

    fn jar(&self) -> MutexGuard<'_, Jar> {
        // A panicking test must not make the next jar access panic too.
        self.jar.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

// === impl Resp ===

impl Resp {
    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} from {} is not JSON ({e}): {}",
                self.status,
                self.url,
                self.text()
            )
        })
    }

    /// The first value of header `name`, if it is valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    /// The `Location` resolved against this response's URL.
    pub fn location_url(&self) -> Option<Url> {
        self.url.join(self.location()?).ok()
    }
}

// === impl Navigation ===

impl Navigation {
    /// Every URL visited, the final one included.
    pub fn urls(&self) -> Vec<Url> {
        let hops = self.hops.iter().map(|hop| hop.url.clone());
        hops.chain([self.last.url.clone()]).collect()
    }
}

// === impl SetCookie ===

impl SetCookie {
    /// Splits a `Set-Cookie` value; `None` when it has no `name=value` pair (RFC 6265 §5.2).
    pub fn parse(raw: &str) -> Option<SetCookie> {
        let mut parts = raw.split(';');
        let (name, value) = parts.next()?.split_once('=')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }

        let mut cookie = SetCookie {
            name: name.to_owned(),
            value: value.trim().to_owned(),
            ..SetCookie::default()
        };
        for attribute in parts {
            let (key, value) = attribute.split_once('=').unwrap_or((attribute, ""));
            let value = value.trim().to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "secure" => cookie.secure = true,
                "httponly" => cookie.http_only = true,
                "samesite" => cookie.same_site = Some(value),
                "path" => cookie.path = Some(value),
                "domain" => cookie.domain = Some(value),
                // §5.2.2: a Max-Age that is not a number is ignored.
                "max-age" => cookie.max_age = value.parse().ok().or(cookie.max_age),
                "expires" => cookie.expires = Some(value),
                _ => {}
            }
        }
        Some(cookie)
    }
}

// === impl Stored ===

impl Stored {
    fn live_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

// === helpers ===

fn parse_url(url: &str) -> Url {
    Url::parse(url).unwrap_or_else(|e| panic!("{url:?} is not an absolute URL: {e}"))
}

/// Parses an HTTP date such as `Wed, 21 Oct 2015 07:28:00 GMT` (RFC 9110 §5.6.7), also in the
/// older `21-Oct-2015` form; `None` for anything else, which a browser would ignore.
fn http_date(text: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let text = text.replace('-', " ");
    let mut fields = text
        .split_ascii_whitespace()
        .skip_while(|f| f.ends_with(','));
    let day: i64 = fields.next()?.parse().ok()?;
    let month = fields.next()?.to_ascii_lowercase();
    let month = MONTHS.iter().position(|m| month.starts_with(m))? as i64 + 1;
    let year: i64 = fields.next()?.parse().ok()?;
    let mut clock = fields.next()?.split(':').map(|f| f.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);

    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let since_epoch = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    Some(UNIX_EPOCH + since_epoch)
}

/// Days since 1970-01-01 of a proleptic Gregorian date, counting eras of 400 years.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Start the year in March so the leap day falls last.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}
