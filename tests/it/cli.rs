//! The binary as an operator runs it: `billguard config` and bad
//! configuration.

use std::io::Write as _;
use std::process::{Command, Output};

const SECRET: &str = "s3cr3t-client-value-that-must-never-print";
const SESSION_SECRET: &str = "session-secret-that-must-never-print-0123456789";

fn billguard(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_billguard"));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run billguard")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn config_file(toml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    file
}

/// The line `billguard config` printed for `key`.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{out}"))
}

const BASE_ENV: &[(&str, &str)] = &[
    (
        "OIDC_ISSUER_URL",
        "https://auth.example.com/application/o/bill-tracker/",
    ),
    ("OIDC_CLIENT_ID", "12345"),
    ("OIDC_CLIENT_SECRET", SECRET),
    (
        "OIDC_REDIRECT_URI",
        "https://bills.example.com/api/auth/oidc/callback",
    ),
    ("BILLGUARD_UPSTREAM", "http://127.0.0.1:8080"),
    ("BILLGUARD_SESSION__SECRET", SESSION_SECRET),
];

#[test]
fn config_prints_every_value_with_its_source_and_masks_secrets() {
    let file = config_file(
        "listen = \"127.0.0.1:9000\"\n[oidc]\nclient_id = \"\"\nscopes = [\"openid\", \"groups\"]\nadmin_group = \"bill-tracker-admins\"\n",
    );
    let path = file.path().to_str().unwrap();
    let mut env = BASE_ENV.to_vec();
    env.push(("OIDC_SCOPES", "openid email"));
    env.push(("OIDC_AUTO_PROVISION", "yes"));
    env.push(("BILLGUARD_LISTEN", "127.0.0.1:1"));
    let out = billguard(
        &[
            "config",
            "--config",
            path,
            "--upstream",
            "http://127.0.0.1:9999",
        ],
        &env,
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");

    // flag > file > env > default
    assert!(line(&all, "upstream").ends_with("flag --upstream"), "{all}");
    assert!(line(&all, "listen").contains("127.0.0.1:9000"));
    assert!(line(&all, "listen").ends_with(&format!("file {path}")));
    // An empty file value falls through to the environment; numbers stay text.
    assert!(line(&all, "oidc.client_id").contains("12345"));
    assert!(line(&all, "oidc.client_id").ends_with("env OIDC_CLIENT_ID"));
    assert!(line(&all, "oidc.scopes").contains("openid groups"));
    assert!(line(&all, "oidc.auto_provision").ends_with("env OIDC_AUTO_PROVISION"));
    assert!(line(&all, "oidc.groups_claim").ends_with("default"));
    assert!(line(&all, "oidc.client_secret").contains("********"));
    assert!(line(&all, "session.secret").contains("********"));
    assert!(
        !all.contains(SECRET) && !all.contains(SESSION_SECRET),
        "{all}"
    );
}

#[test]
fn scopes_from_the_environment_are_space_separated() {
    let mut env = BASE_ENV.to_vec();
    env.push(("OIDC_SCOPES", "openid email profile groups"));
    let out = billguard(&["config"], &env);
    let all = text(&out);
    assert!(
        line(&all, "oidc.scopes").contains("openid email profile groups"),
        "{all}"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_key_source_and_what_is_allowed() {
    let file = config_file(
        "upstream = \"ftp://app\"\nsurprise = 1\n[oidc]\ntoken_auth_method = \"private_key_jwt\"\nclient_secret = \"short\"\n[session]\nttl = \"forever\"\nsecret = \"tooshort\"\n",
    );
    let path = file.path().to_str().unwrap();
    let env = [
        ("OIDC_AUTO_PROVISION", "maybe"),
        ("OIDC_SCOPES", "email profile"),
    ];
    let out = billguard(&["config", "--config", path], &env);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    for expected in [
        format!("upstream (file {path}): `ftp://app` uses ftp"),
        format!("surprise (file {path}): unknown setting"),
        format!("oidc.token_auth_method (file {path}): `private_key_jwt` is not supported; allowed: client_secret_basic, client_secret_post"),
        "oidc.auto_provision (env OIDC_AUTO_PROVISION): `maybe` is not a boolean; allowed: true, false, 1, 0, yes, no".to_owned(),
        "oidc.scopes (env OIDC_SCOPES): must include `openid`".to_owned(),
        format!("session.ttl (file {path}): `forever` is not a duration"),
        format!("session.secret (file {path}): is 8 bytes long"),
        "oidc.issuer_url (unset): is required".to_owned(),
        "oidc.client_id (unset): is required; set `client_id` under [oidc] in the config file or the environment variable OIDC_CLIENT_ID".to_owned(),
        "oidc.redirect_uri (unset): is required".to_owned(),
    ] {
        assert!(all.contains(&expected), "missing {expected:?} in:\n{all}");
    }
    assert!(
        !all.contains("tooshort") && !all.contains("\"short\""),
        "a secret was echoed:\n{all}"
    );
}

#[test]
fn a_toml_syntax_error_names_the_line_but_not_its_text() {
    let file = config_file("[oidc]\nclient_secret = \"unterminated-secret-value\n");
    let out = billguard(
        &["config", "--config", file.path().to_str().unwrap()],
        BASE_ENV,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(all.contains("not valid TOML at line 2"), "{all}");
    assert!(!all.contains("unterminated-secret-value"), "{all}");
}

#[test]
fn a_missing_config_file_is_a_configuration_error() {
    let out = billguard(
        &["config", "--config", "/nonexistent/billguard.toml"],
        BASE_ENV,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("cannot read the config file"));
}

#[test]
fn the_config_file_can_come_from_billguard_config() {
    let file = config_file("listen = \"127.0.0.1:7000\"\n");
    let mut env = BASE_ENV.to_vec();
    env.push(("BILLGUARD_CONFIG", file.path().to_str().unwrap()));
    let out = billguard(&["config"], &env);
    let all = text(&out);
    assert!(line(&all, "listen").contains("127.0.0.1:7000"), "{all}");
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = billguard(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn serve_refuses_a_bad_configuration_with_exit_2() {
    let out = billguard(&["serve"], &[("BILLGUARD_UPSTREAM", "not a url")]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("upstream (env BILLGUARD_UPSTREAM)"), "{all}");
}
