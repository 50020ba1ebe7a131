//! The provider test: one clear line per problem, and a pass against the
//! test provider; `billguard check` exits 0, 1 or 2 and speaks JSON.

use std::io::Write as _;
use std::process::Output;

use billguard::check::{self, Report, Status};
use billguard::config::{self, Inputs};

use crate::support::provider::{AuthMethod, Misbehave, Provider, ProviderOptions};
use crate::support::stack::{ADMIN_GROUP, trace_init};

/// A configuration file for `provider`, with `tweak` applied to the
/// `[oidc]` lines.
fn config_file(provider: &Provider, tweak: impl Fn(String) -> String) -> tempfile::NamedTempFile {
    let oidc = tweak(format!(
        "issuer_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
         redirect_uri = \"http://127.0.0.1:4180/api/auth/oidc/callback\"\n\
         scopes = \"openid email profile groups\"\nadmin_group = \"{ADMIN_GROUP}\"\n",
        provider.issuer(),
        provider.client_id(),
        provider.client_secret(),
    ));
    let toml = format!("upstream = \"http://127.0.0.1:8080\"\n[oidc]\n{oidc}");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    file
}

async fn run(provider: &Provider, tweak: impl Fn(String) -> String) -> Report {
    trace_init();
    let file = config_file(provider, tweak);
    let inputs = Inputs {
        file: Some(file.path().to_owned()),
        ..Inputs::default()
    };
    let loaded = config::load(&inputs).unwrap_or_else(|p| panic!("{p}"));
    check::run(loaded.config.oidc.as_ref()).await
}

fn line<'a>(report: &'a Report, name: &str) -> &'a check::Outcome {
    report
        .outcomes
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no {name} line in {report:#?}"))
}

fn failures(report: &Report) -> Vec<&'static str> {
    report
        .outcomes
        .iter()
        .filter(|o| o.status == Status::Fail)
        .map(|o| o.name)
        .collect()
}

#[tokio::test]
async fn every_check_passes_against_the_test_provider() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let report = run(&provider, |t| t).await;

    let names: Vec<&str> = report.outcomes.iter().map(|o| o.name).collect();
    assert_eq!(
        names,
        [
            "configuration",
            "redirect_uri",
            "discovery",
            "issuer",
            "jwks",
            "auth_method",
            "scopes",
            "admin_group",
            "credentials"
        ]
    );
    for outcome in &report.outcomes {
        assert_eq!(outcome.status, Status::Pass, "{outcome}");
        assert!(outcome.fix.is_none());
    }
    assert!(
        line(&report, "credentials")
            .detail
            .contains("invalid_grant")
    );
}

#[tokio::test]
async fn a_wrong_secret_fails_the_credentials_check_with_the_fix() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let secret = provider.client_secret();
    let report = run(&provider, |t| t.replace(&secret, "not-the-secret")).await;

    assert_eq!(failures(&report), ["credentials"]);
    let outcome = line(&report, "credentials");
    assert!(outcome.detail.contains("invalid_client"), "{outcome}");
    assert!(
        outcome
            .fix
            .as_deref()
            .unwrap()
            .contains("client ID and secret")
    );
    assert!(
        !outcome.to_string().contains("not-the-secret"),
        "never the secret"
    );
}

#[tokio::test]
async fn an_issuer_without_the_trailing_slash_is_named_as_such() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let issuer = provider.issuer();
    let bare = issuer.trim_end_matches('/').to_owned();
    let report = run(&provider, |t| t.replace(&issuer, &bare)).await;

    assert!(failures(&report).contains(&"issuer"), "{report:#?}");
    let outcome = line(&report, "issuer");
    assert!(
        outcome.detail.contains("differ only by a trailing slash"),
        "{outcome}"
    );
    assert_eq!(
        outcome.fix.as_deref(),
        Some(format!("set oidc.issuer_url = \"{issuer}\"").as_str())
    );
}

#[tokio::test]
async fn an_issuer_the_provider_does_not_serve_fails_discovery_with_its_status() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let issuer = provider.issuer();
    let report = run(&provider, |t| {
        t.replace(&issuer, &format!("{issuer}../other-app/"))
    })
    .await;
    // The other app's discovery does not exist at the fake.
    assert!(failures(&report).contains(&"discovery"), "{report:#?}");
    assert!(line(&report, "discovery").detail.contains("404"));
}

#[tokio::test]
async fn an_auth_method_the_provider_does_not_offer_fails_with_the_one_it_does() {
    let provider = Provider::start(ProviderOptions {
        auth_method: AuthMethod::Basic,
        ..ProviderOptions::default()
    })
    .await;
    provider.misbehave(Misbehave::StrictAuthMethods);
    let report = run(&provider, |t| {
        format!("{t}token_auth_method = \"client_secret_post\"\n")
    })
    .await;

    let outcome = line(&report, "auth_method");
    assert_eq!(outcome.status, Status::Fail, "{outcome}");
    assert!(
        outcome.detail.contains("supports only client_secret_basic"),
        "{outcome}"
    );
    assert_eq!(
        outcome.fix.as_deref(),
        Some("set oidc.token_auth_method = \"client_secret_basic\"")
    );
    // The token endpoint agrees: the credentials sent that way are refused.
    assert_eq!(line(&report, "credentials").status, Status::Fail);
}

#[tokio::test]
async fn an_unreachable_provider_fails_discovery_and_stops_there() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let provider = Provider::start(ProviderOptions::default()).await;
    let issuer = provider.issuer();
    let report = run(&provider, |t| {
        t.replace(
            &issuer,
            &format!("http://{closed}/application/o/bill-tracker/"),
        )
    })
    .await;

    assert_eq!(failures(&report), ["discovery"]);
    let outcome = report.outcomes.last().unwrap();
    assert_eq!(outcome.name, "discovery");
    assert!(outcome.detail.contains("cannot reach"), "{outcome}");
    assert!(outcome.fix.as_deref().unwrap().contains("oidc.issuer_url"));
}

#[tokio::test]
async fn a_provider_without_usable_keys_fails_the_jwks_check() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let report = run(&provider, |t| format!("{t}id_token_algs = \"ES256\"\n")).await;
    let outcome = line(&report, "jwks");
    assert_eq!(outcome.status, Status::Fail, "{outcome}");
    assert!(outcome.detail.contains("RS256"), "{outcome}");
}

#[tokio::test]
async fn a_missing_admin_group_is_a_warning() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let report = run(&provider, |t| {
        t.replace(&format!("admin_group = \"{ADMIN_GROUP}\"\n"), "")
    })
    .await;
    assert_eq!(line(&report, "admin_group").status, Status::Warn);
    assert!(failures(&report).is_empty());
}

// --- the binary ---

async fn billguard_check(args: &[&str], file: &std::path::Path) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_billguard"));
    cmd.arg("check")
        .args(args)
        .arg("--config")
        .arg(file)
        .env_clear();
    tokio::task::spawn_blocking(move || cmd.output().expect("run billguard"))
        .await
        .unwrap()
}

#[tokio::test]
async fn billguard_check_exits_0_when_all_pass_and_1_when_one_fails() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let good = config_file(&provider, |t| t);
    let out = billguard_check(&[], good.path()).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("pass")).count(),
        10,
        "{text}"
    );
    assert!(
        text.contains("billguard check: 0 failed, 0 warning(s), 10 passed"),
        "{text}"
    );

    let secret = provider.client_secret();
    let bad = config_file(&provider, |t| t.replace(&secret, "wrong-secret"));
    let out = billguard_check(&[], bad.path()).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let fail = text
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .expect("a FAIL line");
    assert!(
        fail.contains("credentials") && fail.contains("; fix: "),
        "{fail}"
    );
    assert!(!text.contains("wrong-secret"));

    let out = billguard_check(&["--json"], bad.path()).await;
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["result"], "fail");
    let credentials = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "credentials")
        .unwrap();
    assert_eq!(credentials["status"], "fail");
    assert!(credentials["fix"].as_str().is_some());
}

#[tokio::test]
async fn billguard_check_exits_2_without_provider_settings() {
    let users = crate::support::local::users_file(&[]);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "upstream = \"http://127.0.0.1:8080\"\n[local_login]\nenabled = true\nusers_file = \"{}\"\n",
        users.path().display()
    )
    .unwrap();
    let out = billguard_check(&[], file.path()).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.starts_with("FAIL  configuration"), "{text}");

    let mut broken = tempfile::NamedTempFile::new().unwrap();
    writeln!(broken, "upstream = 5").unwrap();
    let out = billguard_check(&["--json"], broken.path()).await;
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["result"], "config_error");
}
