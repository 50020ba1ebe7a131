//! Operating billguard: metrics after real traffic, request ids, the HTTPS
//! listener, limits on slow and oversized clients, and the shutdown
//! sequence, against the real server (in process, or the binary itself where
//! a signal or the process's own metrics registry matter).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use reqwest::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

use crate::support::browser::Browser;
use crate::support::process::{self, Process};
use crate::support::provider::{Provider, ProviderOptions};
use crate::support::stack::{CALLBACK_PATH, Stack, StackOptions, seen, trace_init};
use crate::support::upstream::Upstream;

const SESSION_SECRET: &str = "a-test-secret-that-is-long-enough-for-the-key";

/// The configuration of a billguard process between `provider` and `app`.
fn process_config(provider: &Provider, app: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:{port}"
upstream = "{app}"
metrics_listen = "127.0.0.1:0"

[oidc]
issuer_url = "{issuer}"
client_id = "{client_id}"
client_secret = "{client_secret}"
redirect_uri = "http://127.0.0.1:{port}{CALLBACK_PATH}"
scopes = "openid email profile groups"

[session]
secret = "{SESSION_SECRET}"
{extra}
"#,
        issuer = provider.issuer(),
        client_id = provider.client_id(),
        client_secret = provider.client_secret(),
    )
}

/// The value of one sample in OpenMetrics text, `None` when absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(url: &str) -> String {
    let res = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    res.text().await.unwrap()
}

// The test thread blocks on the child's log, so the fakes need workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_logins_and_upstream_latency() {
    trace_init();
    let provider = Provider::start(ProviderOptions::default()).await;
    let app = Upstream::start().await;
    let port = process::free_port();
    let mut billguard = Process::serve(&process_config(&provider, &app.url(), port, ""));
    let metrics = billguard.metrics.clone().expect("metrics_listen is set");
    // Ready means the provider metadata is loaded.
    billguard.wait_for_log("Provider metadata loaded");

    // One login that works and lands on the app, one the provider refuses.
    let alice = Browser::new();
    provider.login_as("alice");
    let landed = alice.navigate(&billguard.url("/bills")).await.last;
    assert_eq!(landed.status, 200, "{}", landed.text());
    provider.deny_next_login("access_denied");
    let denied = Browser::new().navigate(&billguard.url("/bills")).await.last;
    assert!(denied.status.is_client_error() || denied.status.is_server_error());

    // One more proxied request, one owned, one refused for want of a session.
    assert_eq!(alice.fetch(&billguard.url("/api/bills")).await.status, 200);
    assert_eq!(
        alice
            .fetch(&billguard.url("/_billguard/health"))
            .await
            .status,
        200
    );
    assert_eq!(
        Browser::new()
            .fetch(&billguard.url("/api/bills"))
            .await
            .status,
        401
    );

    let text = scrape(&metrics).await;
    let get =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        get(r#"billguard_logins_total{outcome="success",reason="none"}"#),
        1.0
    );
    assert_eq!(
        get(r#"billguard_logins_total{outcome="failure",reason="provider_error"}"#),
        1.0
    );
    // Every request the app saw was timed, and each was a 2xx.
    let upstream_requests = app.requests_seen() as f64;
    assert_eq!(upstream_requests, 2.0);
    assert_eq!(
        get("billguard_upstream_response_seconds_count"),
        upstream_requests
    );
    assert_eq!(
        get(r#"billguard_requests_total{kind="proxied",class="2xx"}"#),
        upstream_requests
    );
    assert_eq!(
        get(r#"billguard_requests_total{kind="proxied",class="4xx"}"#),
        1.0
    );
    assert!(get(r#"billguard_requests_total{kind="owned",class="2xx"}"#) >= 1.0);
    assert!(get(r#"billguard_requests_total{kind="owned",class="3xx"}"#) >= 1.0);
    assert_eq!(get("billguard_sessions_active"), 1.0);
    assert_eq!(get("billguard_provider_up"), 1.0);
    assert_eq!(get("billguard_upstream_bypass"), 0.0);

    // The public port never serves metrics.
    let public = Browser::new().fetch(&billguard.url("/metrics")).await;
    assert_eq!(public.status, 401);
    assert!(!public.text().contains("billguard_"));
}

// The test thread blocks on the child's log, so the fakes need workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_then_lets_a_slow_response_finish_and_exits_0() {
    trace_init();
    let provider = Provider::start(ProviderOptions::default()).await;
    let app = SlowApp::start().await;
    let port = process::free_port();
    let extra = "[shutdown]\ndelay = \"10s\"\ngrace = \"60s\"\n";
    let mut billguard = Process::serve(&process_config(&provider, &app.url(), port, extra));
    billguard.wait_for_log("Provider metadata loaded");

    let browser = Arc::new(Browser::new());
    provider.login_as("alice");
    assert_eq!(browser.navigate(&billguard.url("/")).await.last.status, 200);

    // A request the app is slow to answer is in flight when SIGTERM comes.
    let slow = tokio::spawn({
        let (browser, url) = (browser.clone(), billguard.url("/slow"));
        async move { browser.fetch(&url).await }
    });
    app.arrived
        .lock()
        .await
        .recv()
        .await
        .expect("the slow request reached the app");
    billguard.terminate();

    // First readiness fails while billguard still serves...
    billguard.wait_for_log("Shutting down: readiness fails");
    assert_eq!(
        browser
            .fetch(&billguard.url("/_billguard/ready"))
            .await
            .status,
        503
    );
    assert_eq!(
        browser
            .fetch(&billguard.url("/_billguard/health"))
            .await
            .status,
        200
    );

    // ...then the listener closes, and the slow response still completes.
    billguard.wait_for_log("Shutting down: listener closed");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "still accepting"
    );
    app.release.notify_one();
    let res = slow.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "finally");

    let status = billguard.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", billguard.log());
}

#[tokio::test]
async fn request_ids_reach_the_app_and_the_client() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;

    let sent = "0b9f7a52-6f7e-4c1e-9b1e-3d8f0a7c2e11";
    let res = browser
        .request(Method::GET, &stack.url("/a"), &[("x-request-id", sent)], "")
        .await;
    assert_eq!(seen(&res.json(), "x-request-id"), [sent]);
    assert_eq!(res.header("x-request-id"), Some(sent));

    // An id that could break a log line is replaced by a fresh one.
    let res = browser
        .request(
            Method::GET,
            &stack.url("/a"),
            &[("x-request-id", "a b\"c")],
            "",
        )
        .await;
    let fresh = seen(&res.json(), "x-request-id");
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].len(), 32);
    assert_eq!(res.header("x-request-id"), Some(fresh[0].as_str()));

    // A client cannot use Connection to strip it.
    let res = browser
        .request(
            Method::GET,
            &stack.url("/a"),
            &[("connection", "x-request-id")],
            "",
        )
        .await;
    assert_eq!(seen(&res.json(), "x-request-id").len(), 1);
}

#[tokio::test]
async fn readiness_fails_as_soon_as_shutdown_begins() {
    let stack = Stack::start().await;
    let browser = Browser::new();
    assert_eq!(
        browser.fetch(&stack.url("/_billguard/ready")).await.status,
        200
    );
    stack.proxy.begin_shutdown();
    assert_eq!(
        browser.fetch(&stack.url("/_billguard/ready")).await.status,
        503
    );
    assert_eq!(
        browser.fetch(&stack.url("/_billguard/health")).await.status,
        200
    );
}

#[tokio::test]
async fn a_slow_or_silent_client_is_cut_off_after_the_header_timeout() {
    let stack = Stack::with(StackOptions {
        extra_toml: "[limits]\nheader_read_timeout = \"1s\"\n".into(),
        ..StackOptions::default()
    })
    .await;
    let addr = stack.proxy.addr();

    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /_billguard/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let silent = TcpStream::connect(addr).await.unwrap();

    for (what, stream) in [("partial head", partial), ("nothing sent", silent)] {
        assert!(
            closed_by_server(stream).await,
            "{what}: the connection stayed open"
        );
    }

    // A prompt client on the same listener is served.
    let res = Browser::new().fetch(&stack.url("/_billguard/health")).await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    // One connection for all serving threads together.
    let stack = Stack::with(StackOptions {
        extra_toml: "[limits]\nmax_connections = 1\n".into(),
        ..StackOptions::default()
    })
    .await;
    let addr = stack.proxy.addr();
    let request = b"GET /_billguard/health HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(request).await.unwrap();
    assert!(status_line(&mut first).await.starts_with("HTTP/1.1 200"));

    // The kernel completes the second handshake, but nobody reads it while
    // the first connection stays open.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(request).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), status_line(&mut second)).await;
    assert!(early.is_err(), "served over the limit: {early:?}");

    drop(first);
    let answer = tokio::time::timeout(process::DEADLINE, status_line(&mut second))
        .await
        .expect("the waiting connection is served once the first closes");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The first line of the response that `stream` receives.
async fn status_line(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let stack = Stack::with(StackOptions {
        extra_toml: "[limits]\nmax_header_bytes = 16384\n".into(),
        ..StackOptions::default()
    })
    .await;
    let big = "x".repeat(20_000);
    let res = Browser::new()
        .try_request(
            Method::GET,
            &stack.url("/_billguard/health"),
            &[("x-big", &big)],
            "",
        )
        .await;
    match res {
        Ok(res) => assert_eq!(res.status, 431),
        // hyper may close before the client reads the 431.
        Err(error) => assert!(error.is_request() || error.is_connect(), "{error}"),
    }
    let ok = Browser::new()
        .request(
            Method::GET,
            &stack.url("/_billguard/health"),
            &[("x-small", "y")],
            "",
        )
        .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn the_https_listener_serves_http2_and_http1_by_alpn() {
    let cert = TestCert::new("localhost");
    let (_dir, cert_file, key_file) = cert.files();
    let stack = Stack::with(StackOptions {
        extra_toml: format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval = \"1s\"\n",
            cert_file.display(),
            key_file.display()
        ),
        ..StackOptions::default()
    })
    .await;
    let url = format!(
        "https://localhost:{}/_billguard/ready",
        stack.proxy.addr().port()
    );

    let h2 = https_client(&cert.cert_pem, false)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);

    let h1 = https_client(&cert.cert_pem, true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);

    // Plain HTTP on the HTTPS port is not served.
    let plain = reqwest::get(format!(
        "http://127.0.0.1:{}/_billguard/ready",
        stack.proxy.addr().port()
    ))
    .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    // A renewed certificate is picked up without a restart.
    let renewed = TestCert::new("localhost");
    std::fs::write(&key_file, &renewed.key_pem).unwrap();
    std::fs::write(&cert_file, &renewed.cert_pem).unwrap();
    let until = std::time::Instant::now() + process::DEADLINE;
    loop {
        let client = https_client(&renewed.cert_pem, false);
        if client.get(&url).send().await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_a_configuration_error() {
    let cert = TestCert::new("localhost");
    let other = TestCert::new("localhost");
    let (dir, cert_file, key_file) = cert.files();
    std::fs::write(&key_file, &other.key_pem).unwrap();
    let missing = dir.path().join("missing.pem");

    for (key, expect_key, expect_text) in [
        (
            &key_file,
            "tls.key_file",
            "does not belong to the certificate",
        ),
        (&missing, "tls.key_file", "cannot read"),
    ] {
        let mut config = tempfile::NamedTempFile::new().unwrap();
        write!(
            config,
            "upstream = \"http://127.0.0.1:8080\"\n[oidc]\nissuer_url = \"https://auth.example.com/\"\n\
             client_id = \"x\"\nclient_secret = \"y\"\nredirect_uri = \"https://bills.example.com/cb\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert_file.display(),
            key.display()
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_billguard"))
            .args(["serve", "--config"])
            .arg(config.path())
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(expect_key))
            .unwrap_or_else(|| panic!("no {expect_key} problem in:\n{stderr}"));
        assert!(line.contains(expect_text), "{line}");
        assert!(line.contains(&key.display().to_string()), "{line}");
    }
}

// --- helpers ---

/// Reads until the server closes the connection; false if it is still open
/// when the deadline passes.
async fn closed_by_server(mut stream: TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // hyper may answer 408 before closing.
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(process::DEADLINE, read_all)
        .await
        .is_ok()
}

struct TestCert {
    cert_pem: String,
    key_pem: String,
}

impl TestCert {
    fn new(name: &str) -> TestCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec![name.to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn files(&self) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (dir, cert, key)
    }
}

fn https_client(root_pem: &str, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// An app whose `/slow` answers only when the test says so; every other
/// path answers at once.
struct SlowApp {
    addr: SocketAddr,
    arrived: tokio::sync::Mutex<mpsc::Receiver<()>>,
    release: Arc<Notify>,
}

impl SlowApp {
    async fn start() -> SlowApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrive, arrived) = mpsc::channel(4);
        let release = Arc::new(Notify::new());
        let gate = release.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (arrive, gate) = (arrive.clone(), gate.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (arrive, gate) = (arrive.clone(), gate.clone());
                        async move {
                            if req.uri().path() == "/slow" {
                                let _ = arrive.send(()).await;
                                gate.notified().await;
                                return Ok::<_, std::convert::Infallible>(Response::new(
                                    Full::new(Bytes::from_static(b"finally")),
                                ));
                            }
                            Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        SlowApp {
            addr,
            arrived: tokio::sync::Mutex::new(arrived),
            release,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test]
async fn the_provider_test_reports_an_app_reachable_around_billguard() {
    let exposed = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = exposed.local_addr().unwrap().port();
    let url = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let outcome = serde_json::to_value(billguard::check::bypass(&url).await).unwrap();
    let host_has_ipv4 = if_addrs_has_ipv4();
    assert_eq!(outcome["name"], "bypass");
    if host_has_ipv4 {
        assert_eq!(outcome["status"], "fail", "{outcome}");
        assert!(
            outcome["fix"].as_str().unwrap().contains("127.0.0.1"),
            "{outcome}"
        );
    }

    let private = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}", private.local_addr().unwrap())).unwrap();
    let outcome = serde_json::to_value(billguard::check::bypass(&url).await).unwrap();
    assert_eq!(outcome["status"], "pass", "{outcome}");
}

/// Whether this host has a non-loopback IPv4 address to be reached on.
fn if_addrs_has_ipv4() -> bool {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .is_ok_and(|a| !a.ip().is_loopback() && !a.ip().is_unspecified())
}

#[tokio::test]
async fn a_websocket_keeps_working_after_the_listener_closes_and_the_drain_waits_for_it() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    // A grace period far beyond the test's deadline: the drain can only end
    // in time because the WebSocket closed.
    let mut stack = Stack::with(StackOptions {
        extra_toml: "[shutdown]\ngrace = \"600s\"\n".into(),
        ..StackOptions::default()
    })
    .await;
    let browser = Browser::new();
    stack.login(&browser, "alice", "/").await;
    let mut request = stack
        .url("/ws")
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", browser.cookie_header().unwrap().parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    // Shutdown begins: no new connections...
    stack.proxy.close().await;
    assert!(
        TcpStream::connect(stack.proxy.addr()).await.is_err(),
        "still accepting"
    );

    // ...but the open WebSocket still carries messages.
    socket.send(Message::text("still there?")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo: still there?");

    // The drain ends once the WebSocket closes.
    let drained = tokio::spawn(stack.proxy.shutdown());
    socket.send(Message::text("draining")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo: draining");
    assert!(
        !drained.is_finished(),
        "the drain did not wait for the WebSocket"
    );
    socket.close(None).await.unwrap();
    drop(socket);
    tokio::time::timeout(process::DEADLINE, drained)
        .await
        .expect("the drain finished once the WebSocket closed")
        .unwrap();
}
