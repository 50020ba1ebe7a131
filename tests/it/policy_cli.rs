//! Route rules as an operator meets them: `billguard routes` and the
//! start-up refusals of rules that cannot be used.

use std::io::Write as _;
use std::process::{Command, Output};

const ENV: &[(&str, &str)] = &[
    (
        "OIDC_ISSUER_URL",
        "https://auth.example.com/application/o/bill-tracker/",
    ),
    ("OIDC_CLIENT_ID", "bill-tracker"),
    (
        "OIDC_CLIENT_SECRET",
        "a-client-secret-that-must-never-print",
    ),
    (
        "OIDC_REDIRECT_URI",
        "https://bills.example.com/api/auth/oidc/callback",
    ),
    ("BILLGUARD_UPSTREAM", "http://127.0.0.1:8080"),
];

const ROUTES: &str = r#"
[[routes]]
path = "/api/health"
methods = ["GET"]
access = "public"

[[routes]]
path = "/admin(/.*)?"
access = "admin"
"#;

fn run(toml: &str, args: &[&str]) -> (Output, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_billguard"));
    cmd.args(args)
        .arg("--config")
        .arg(file.path())
        .env_clear()
        .envs(ENV.iter().copied());
    let out = cmd.output().expect("run billguard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn routes_prints_the_rule_the_normalized_path_and_the_action() {
    let (out, text) = run(
        ROUTES,
        &["routes", "GET", "/static/%2e%2e//admin/users?x=1"],
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("normalized path:  /admin/users"), "{text}");
    assert!(
        text.contains("rule:             #2: path = \"/admin(/.*)?\""),
        "{text}"
    );
    assert!(text.contains("access:           admin"), "{text}");
    assert!(
        text.contains("action:           forward only for the admin role"),
        "{text}"
    );

    let (out, text) = run(ROUTES, &["routes", "head", "/api/health"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("access:           public"), "{text}");

    let (_, text) = run(ROUTES, &["routes", "GET", "/a%2Fb"]);
    assert!(text.contains("refuse with 400"), "{text}");
}

#[test]
fn rules_that_would_open_billguard_or_the_root_stop_the_start() {
    let cases = [
        ("/.*", "`/`"),
        ("/api/auth/.*", "/api/auth/oidc/callback"),
        ("/_billguard/.*", "/_billguard/"),
    ];
    for (pattern, named) in cases {
        let toml = format!("[[routes]]\npath = \"{pattern}\"\naccess = \"public\"\n");
        let (out, text) = run(&toml, &["serve"]);
        assert_eq!(out.status.code(), Some(2), "{pattern}: {text}");
        assert!(text.contains("routes[1].path (file "), "{text}");
        assert!(text.contains(named), "{pattern}: {text}");
        assert!(text.contains("narrower pattern"), "{text}");
        assert!(!text.contains("a-client-secret"), "{text}");
    }
}

#[test]
fn bad_rules_are_reported_each_with_how_to_write_them() {
    let toml = r#"
[[routes]]
path = "/static/(.*"
access = "public"

[[routes]]
path = "/x"
access = "everyone"

[[routes]]
path = "/y"
methods = ["GE T"]
access = "admin"
colour = "red"

[[routes]]
access = "admin"
"#;
    let (out, text) = run(toml, &["config"]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for expected in [
        "routes[1].path",
        "not a valid regular expression",
        "routes[2].access",
        "allowed: public, authenticated, admin",
        "routes[3].methods",
        "routes[3].colour",
        "routes[4].path",
        "is required",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn allowed_groups_come_from_the_environment_split_on_commas() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_billguard"))
        .args(["config", "--config"])
        .arg(file.path())
        .env_clear()
        .envs(ENV.iter().copied())
        .env("OIDC_ALLOWED_GROUPS", "Bill Tracker Users, family")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("oidc.allowed_groups"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("Bill Tracker Users, family"), "{line}");
    assert!(line.contains("env OIDC_ALLOWED_GROUPS"), "{line}");
}
