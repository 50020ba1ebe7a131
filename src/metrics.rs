//! Prometheus metrics: the process's one registry, the one-line recording
//! calls the rest of the code uses, and the `/metrics` text.
//!
//! The registry is per process, like the tracing subscriber: a pod runs one
//! billguard, and call sites stay one line (`metrics::request(kind, status)`)
//! without threading a handle through every constructor. Logins are not
//! recorded by the login code at all: [`AuthEvents`] counts the events on
//! the `billguard::auth` log target by their `outcome` and `reason` fields,
//! so the counters and the auth log can never disagree.
//!
//! Serving `/metrics` on its own listener (`metrics_listen`) is the server's
//! business; this module only renders the text.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `billguard_requests_total` | counter | `kind` (`proxied`, `owned`), `class` (`2xx`…) |
//! | `billguard_upstream_response_seconds` | histogram | time until the app's response headers |
//! | `billguard_logins_total` | counter | `outcome`, `reason` (as in the auth log) |
//! | `billguard_sessions_active` | gauge | sessions held by this process |
//! | `billguard_provider_up` | gauge | 1 once the provider metadata is loaded |
//! | `billguard_session_store_errors_total` | counter | `op` |
//! | `billguard_upstream_bypass` | gauge | 1 when the app answers on a non-loopback address |
//! | `billguard_connections_open` | gauge | downstream connections being served |
//! | `billguard_tls_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `billguard_build_info` | gauge | `version` |

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The `Content-Type` of the `/metrics` body.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// At most this many distinct (outcome, reason) pairs get their own series;
/// the rest are counted under `other`.
const MAX_LOGIN_SERIES: usize = 64;

/// Which part of billguard answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A path of the app (forwarded, or refused for want of a session).
    Proxied,
    /// The callback or a path under `/_billguard/`.
    Owned,
}

mod latency;
mod per_thread;

use latency::Latency;

/// A counter that each serving thread adds to in memory of its own.
type ThreadCounter = Counter<u64, per_thread::PerThread<1>>;

impl RouteKind {
    fn label(self) -> &'static str {
        match self {
            RouteKind::Proxied => "proxied",
            RouteKind::Owned => "owned",
        }
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// The counters of `billguard_requests_total`, by kind and then class (1xx to 5xx),
    /// made up front: counting a response is then one atomic addition to
    /// the serving thread's own share (see `per_thread`), without the
    /// family's lock and hash lookup.
    by_kind_class: [[ThreadCounter; 5]; 2],
    upstream_latency: Latency,
    logins: Family<LoginLabels, Counter>,
    /// Distinct login label pairs seen, for the bound.
    login_series: AtomicUsize,
    sessions_active: Gauge,
    provider_up: Gauge,
    store_errors: Family<OpLabels, Counter>,
    bypass: Gauge,
    connections: Gauge,
    tls_reloads: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LoginLabels {
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Counts one response.
pub fn request(kind: RouteKind, status: StatusCode) {
    get().request(kind, status);
}

/// Records how long the app took to send response headers.
pub fn upstream_latency(elapsed: Duration) {
    get().upstream_latency.observe(elapsed);
}

/// Counts one login event; [`AuthEvents`] calls this for every event on
/// `billguard::auth`.
pub fn login(outcome: &str, reason: &str) {
    get().login(outcome, reason);
}

pub fn sessions_active(count: u64) {
    get()
        .sessions_active
        .set(i64::try_from(count).unwrap_or(i64::MAX));
}

pub fn provider_up(up: bool) {
    get().provider_up.set(i64::from(up));
}

/// Counts a failed call to the session store (`op`: `get`, `set`, ...).
pub fn session_store_error(op: &'static str) {
    get().store_errors.get_or_create(&OpLabels { op }).inc();
}

pub fn upstream_bypass(detected: bool) {
    get().bypass.set(i64::from(detected));
}

pub fn tls_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    get()
        .tls_reloads
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// Counts a downstream connection until the guard is dropped.
pub fn connection() -> ConnectionGuard {
    get().connections.inc();
    ConnectionGuard(())
}

/// Marks one open connection; see [`connection`].
pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        get().connections.dec();
    }
}

/// The OpenMetrics text of every metric.
pub fn render() -> String {
    get().render()
}

// === impl Metrics ===

impl Metrics {
    fn request(&self, kind: RouteKind, status: StatusCode) {
        let kind = match kind {
            RouteKind::Proxied => 0,
            RouteKind::Owned => 1,
        };
        self.by_kind_class[kind][class_index(status)].inc();
    }

    fn new() -> Self {
        let mut registry = Registry::with_prefix("billguard");
        let requests = Family::<RequestLabels, ThreadCounter>::default();
        registry.register(
            "requests",
            "Responses sent, by route kind and status class",
            requests.clone(),
        );
        // 5 ms to about 41 s.
        let upstream_latency = Latency::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "upstream_response_seconds",
            "Time until the app sent response headers",
            upstream_latency.clone(),
        );
        let logins = Family::<LoginLabels, Counter>::default();
        registry.register(
            "logins",
            "Login events by outcome and reason, as logged on billguard::auth",
            logins.clone(),
        );
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Sessions held by this process",
            sessions_active.clone(),
        );
        let provider_up = Gauge::default();
        registry.register(
            "provider_up",
            "1 once the provider metadata is loaded, else 0",
            provider_up.clone(),
        );
        let store_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "session_store_errors",
            "Failed session store operations",
            store_errors.clone(),
        );
        let bypass = Gauge::default();
        registry.register(
            "upstream_bypass",
            "1 when the app answers on a non-loopback address of this pod, so it can be \
             reached around billguard",
            bypass.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections_open",
            "Downstream connections being served",
            connections.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Changed TLS certificate files seen, by whether they loaded",
            tls_reloads.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running version", build);

        let by_kind_class = [RouteKind::Proxied, RouteKind::Owned].map(|kind| {
            CLASSES.map(|class| {
                requests
                    .get_or_create(&RequestLabels {
                        kind: kind.label(),
                        class,
                    })
                    .clone()
            })
        });

        Metrics {
            registry,
            by_kind_class,
            upstream_latency,
            logins,
            login_series: AtomicUsize::new(0),
            sessions_active,
            provider_up,
            store_errors,
            bypass,
            connections,
            tls_reloads,
        }
    }

    fn login(&self, outcome: &str, reason: &str) {
        let mut labels = LoginLabels {
            outcome: label_value(outcome),
            reason: label_value(reason),
        };
        // Reasons are fixed words in the code, but a bound keeps a mistake
        // from growing the registry without limit.
        if self.logins.get(&labels).is_none()
            && self.login_series.fetch_add(1, Ordering::Relaxed) >= MAX_LOGIN_SERIES
        {
            labels.reason = "other".into();
        }
        self.logins.get_or_create(&labels).inc();
    }

    fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A tracing layer that counts events on `billguard::auth` in
/// `billguard_logins_total`, labelled with their `outcome` and `reason`
/// fields.
pub struct AuthEvents;

/// The log target whose events are logins.
pub const AUTH_TARGET: &str = "billguard::auth";

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuthEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != AUTH_TARGET {
            return;
        }
        let mut fields = AuthFields::default();
        event.record(&mut fields);
        login(
            fields.outcome.as_deref().unwrap_or("unknown"),
            fields.reason.as_deref().unwrap_or("none"),
        );
    }
}

#[derive(Default)]
struct AuthFields {
    outcome: Option<String>,
    reason: Option<String>,
}

impl Visit for AuthFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "outcome" => self.outcome = Some(value.to_owned()),
            "reason" => self.reason = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "outcome" | "reason") {
            self.record_str(field, format!("{value:?}").trim_matches('"'));
        }
    }
}

/// The `class` label values, in the order of [`class_index`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Where `status` is counted in [`CLASSES`]; a code past 599 counts as
/// 5xx.
fn class_index(status: StatusCode) -> usize {
    (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1
}

/// A label value made of `[a-z0-9_]`, at most 40 characters; anything else
/// becomes `other`.
fn label_value(text: &str) -> String {
    let ok = !text.is_empty()
        && text.len() <= 40
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { text.to_owned() } else { "other".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_kind_and_class() {
        let metrics = Metrics::new();
        metrics.request(RouteKind::Proxied, StatusCode::BAD_GATEWAY);
        metrics.request(RouteKind::Proxied, StatusCode::from_u16(999).unwrap());
        metrics.request(RouteKind::Owned, StatusCode::SWITCHING_PROTOCOLS);
        metrics.request(RouteKind::Owned, StatusCode::FOUND);
        let text = metrics.render();
        for line in [
            r#"billguard_requests_total{kind="proxied",class="5xx"} 2"#,
            r#"billguard_requests_total{kind="proxied",class="2xx"} 0"#,
            r#"billguard_requests_total{kind="owned",class="1xx"} 1"#,
            r#"billguard_requests_total{kind="owned",class="3xx"} 1"#,
            r#"billguard_build_info{version=""#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn upstream_latency_is_a_cumulative_histogram_in_seconds() {
        let metrics = Metrics::new();
        for ms in [1, 7, 7, 60_000] {
            metrics.upstream_latency.observe(Duration::from_millis(ms));
        }
        let text = metrics.render();
        for line in [
            r#"billguard_upstream_response_seconds_bucket{le="0.005"} 1"#,
            r#"billguard_upstream_response_seconds_bucket{le="0.01"} 3"#,
            r#"billguard_upstream_response_seconds_bucket{le="40.96"} 3"#,
            r#"billguard_upstream_response_seconds_bucket{le="+Inf"} 4"#,
            "billguard_upstream_response_seconds_count 4",
            "billguard_upstream_response_seconds_sum 60.015",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn login_labels_are_bounded() {
        let metrics = Metrics::new();
        metrics.login("failure", "state_mismatch");
        metrics.login("failure", "Robert'); DROP TABLE");
        for i in 0..(MAX_LOGIN_SERIES + 10) {
            metrics.login("failure", &format!("r{i}"));
        }
        let text = metrics.render();
        assert!(text.contains(r#"outcome="failure",reason="state_mismatch"} 1"#));
        assert!(text.contains(r#"reason="other""#));
        let series = text
            .lines()
            .filter(|l| l.starts_with("billguard_logins_total{"))
            .count();
        assert!(series <= MAX_LOGIN_SERIES + 1, "{series} series");
    }

    #[test]
    fn auth_events_become_login_counts() {
        use tracing_subscriber::layer::SubscriberExt as _;

        let subscriber = tracing_subscriber::registry().with(AuthEvents);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "billguard::auth", outcome = "failure", reason = "unit_test_reason", "Login failed");
            tracing::warn!(target: "billguard::other", outcome = "failure", reason = "unit_test_elsewhere", "Not a login");
        });
        let text = render();
        assert!(
            text.contains(
                r#"billguard_logins_total{outcome="failure",reason="unit_test_reason"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("unit_test_elsewhere"), "{text}");
    }
}
