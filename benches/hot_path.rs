//! Micro-benchmarks of the request hot path: what billguard does for every
//! proxied request before the bytes go upstream.
//!
//! - `session/*`: finding the session named by the request's cookie in the
//!   in-memory store, with a few and with many live sessions, and a miss;
//! - `headers/*`: the upstream rewrite of a browser request (hop-by-hop,
//!   look-alike identity headers, own cookie, `X-Forwarded-*`, identity);
//! - `routes/*`: telling a navigation from a script request.
//!
//! Run with `cargo bench --bench hot_path`. They catch regressions before the
//! load test (`benches/run.sh`) does; absolute numbers depend on the machine.

use std::collections::BTreeMap;
use std::hint::black_box;

use billguard::config::{self, Config, Inputs};
use billguard::headers::{IdentityValues, Peer, Rewriter};
use billguard::identity::{Identity, Role};
use billguard::routes::is_navigation;
use billguard::session::Store;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request};

criterion_group!(hot_path, session_lookup, header_rewrite, classification);
criterion_main!(hot_path);

fn session_lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let cfg = config();

    for live in [10_usize, 100_000] {
        let store = Store::new(&cfg.session).expect("a memory store");
        let ids = rt.block_on(async {
            let mut ids = Vec::with_capacity(live);
            for n in 0..live {
                ids.push(store.create(identity(n), None).await);
            }
            store.housekeeping().await;
            ids
        });
        let requests: Vec<HeaderMap> = ids
            .iter()
            .step_by((live / 10).max(1))
            .map(|id| browser_headers(&format!("theme=dark; {}={id}", store.cookie_name())))
            .collect();

        let mut next = 0;
        c.bench_function(&format!("session/lookup_hit_{live}_live"), |b| {
            b.to_async(&rt).iter(|| {
                next = (next + 1) % requests.len();
                let headers = &requests[next];
                let store = &store;
                async move { black_box(store.lookup(black_box(headers)).await.is_some()) }
            })
        });
    }

    let store = Store::new(&cfg.session).expect("a memory store");
    let stranger = browser_headers(&format!(
        "theme=dark; {}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        store.cookie_name()
    ));
    c.bench_function("session/lookup_miss", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.lookup(black_box(&stranger)).await.is_none()) })
    });
}

fn header_rewrite(c: &mut Criterion) {
    let cfg = config();
    let rewriter = Rewriter::new(cfg.headers.clone());
    let identity = IdentityValues::new(&identity(7));
    let peer = Peer::new("127.0.0.1".parse().expect("an IP address"), "http");
    let request = browser_headers("theme=dark; __Host-billguard_session=abc; lang=en");

    c.bench_function("headers/upstream_request", |b| {
        b.iter_batched_ref(
            || request.clone(),
            |h| rewriter.upstream_request(h, peer, Some(&identity), None),
            BatchSize::SmallInput,
        )
    });

    let mut spoofed = request.clone();
    spoofed.insert("x_forwarded_user", HeaderValue::from_static("mallory"));
    spoofed.insert("x-forwarded-role", HeaderValue::from_static("admin"));
    c.bench_function("headers/upstream_request_spoofed", |b| {
        b.iter_batched_ref(
            || spoofed.clone(),
            |h| rewriter.upstream_request(h, peer, Some(&identity), None),
            BatchSize::SmallInput,
        )
    });

    let mut response = HeaderMap::new();
    response.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1024"));
    response.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    c.bench_function("headers/downstream_response", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |h| rewriter.downstream_response(h, None),
            BatchSize::SmallInput,
        )
    });
}

fn classification(c: &mut Criterion) {
    let navigation = request(&[
        ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
    ]);
    let script = request(&[
        ("accept", "application/json"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-dest", "empty"),
    ]);
    let legacy = request(&[("accept", "*/*")]);

    c.bench_function("routes/is_navigation_browser", |b| {
        b.iter(|| is_navigation(black_box(&navigation)))
    });
    c.bench_function("routes/is_navigation_fetch", |b| {
        b.iter(|| is_navigation(black_box(&script)))
    });
    c.bench_function("routes/is_navigation_no_fetch_metadata", |b| {
        b.iter(|| is_navigation(black_box(&legacy)))
    });
}

/// The configuration an operator would start with, through the real loader.
fn config() -> Config {
    let env: BTreeMap<String, String> = [
        ("BILLGUARD_UPSTREAM", "http://127.0.0.1:8080"),
        (
            "OIDC_ISSUER_URL",
            "https://auth.example.com/application/o/bills/",
        ),
        ("OIDC_CLIENT_ID", "billguard"),
        ("OIDC_CLIENT_SECRET", "bench-secret"),
        (
            "OIDC_REDIRECT_URI",
            "https://bills.example.com/api/auth/oidc/callback",
        ),
        ("OIDC_ADMIN_GROUP", "bill-tracker-admins"),
        (
            "BILLGUARD_SESSION__SECRET",
            "bench-secret-of-at-least-32-bytes!!",
        ),
        ("BILLGUARD_SESSION__MAX_SESSIONS", "200000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let inputs = Inputs {
        env,
        ..Inputs::default()
    };
    match config::load(&inputs) {
        Ok(loaded) => loaded.config,
        Err(problems) => panic!("the benchmark configuration is invalid: {problems:?}"),
    }
}

fn identity(n: usize) -> Identity {
    Identity {
        subject: format!("subject-{n}"),
        user: format!("user{n}"),
        email: Some(format!("user{n}@example.com")),
        groups: vec!["staff".into(), "bill-tracker-admins".into()],
        role: Role::Admin,
    }
}

/// What a browser sends for a page of the app.
fn browser_headers(cookie: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "bills.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-site", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        header::COOKIE,
        HeaderValue::from_str(cookie).expect("a valid cookie header"),
    );
    h
}

fn request(headers: &[(&'static str, &'static str)]) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, HeaderValue::from_static(value));
    }
    req
}
