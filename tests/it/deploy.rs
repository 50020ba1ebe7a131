//! What ships besides the binary: the Kubernetes manifests (validated
//! against the real Kubernetes schemas, then checked for the sidecar's
//! rules) and the container image's build steps (run here, since there is
//! no container engine to build the image itself).
//!
//! Needs `kubernetes-validate` (PyPI, which ships the schemas and PyYAML);
//! `.ci/run` installs the pinned version.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const VALIDATOR: &str = "kubernetes-validate";
const INSTALL: &str = "pip install kubernetes-validate==1.37.0 (.ci/run does this)";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Kubernetes manifest under `deploy/` (the compose try-out is not one).
fn manifests() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["deploy", "deploy/replicated"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                found.push(path);
            }
        }
    }
    found.sort();
    assert!(found.len() >= 10, "manifests missing: {found:?}");
    found
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new(VALIDATOR)
        .args(["--strict", "--quiet", "--kubernetes-version", "1.33.0"])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {VALIDATOR} ({e}); install it: {INSTALL}"))
}

/// The YAML documents of a file as JSON, read by PyYAML (which comes with
/// the validator).
fn documents(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install it and {INSTALL}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn one(path: &str) -> Value {
    documents(&repo().join(path)).remove(0)
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let out = validate(&manifests());
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The schemas really are applied: a wrong type is caught, not just
    // unparsable YAML.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("deployment.yaml");
    let text = std::fs::read_to_string(repo().join("deploy/deployment.yaml")).unwrap();
    std::fs::write(
        &broken,
        text.replacen(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: \"yes\"",
            1,
        ),
    )
    .unwrap();
    let out = validate(&[broken]);
    assert!(
        !out.status.success(),
        "a string for a boolean passed validation"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("readOnlyRootFilesystem"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_pod_keeps_the_app_behind_billguard() {
    for dir in ["deploy", "deploy/replicated"] {
        let deployment = one(&format!("{dir}/deployment.yaml"));
        let pod = &deployment["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().unwrap();
        let by_name = |name: &str| {
            containers
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("{dir}: no {name} container"))
        };
        let app = by_name("billtracker");
        let guard = by_name("billguard");

        // The app exposes nothing and is told to bind loopback.
        assert!(app["ports"].is_null(), "{dir}: the app declares ports");
        assert!(
            app["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["value"] == "127.0.0.1"),
            "{dir}: the app is not bound to loopback"
        );

        // The Service reaches billguard's port and nothing else.
        let service = one(&format!("{dir}/service.yaml"));
        for port in service["spec"]["ports"].as_array().unwrap() {
            assert_eq!(port["targetPort"], "http", "{dir}");
        }
        let http = guard["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "http")
            .unwrap();
        assert_eq!(http["containerPort"], 4180);

        assert_eq!(
            guard["livenessProbe"]["httpGet"]["path"],
            "/_billguard/health"
        );
        assert_eq!(
            guard["readinessProbe"]["httpGet"]["path"],
            "/_billguard/ready"
        );
        assert!(
            guard["resources"]["requests"]["memory"].is_string(),
            "{dir}"
        );
        assert!(guard["resources"]["limits"]["memory"].is_string(), "{dir}");

        for container in containers {
            let sc = &container["securityContext"];
            let name = &container["name"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{dir} {name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{dir} {name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{dir} {name}"
            );
        }
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{dir}");
        // shutdown.delay 5s + shutdown.grace 20s must fit.
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 25,
            "{dir}"
        );
    }
}

#[test]
fn the_shipped_configurations_load() {
    for dir in ["deploy", "deploy/replicated"] {
        let config = one(&format!("{dir}/configmap.yaml"));
        let toml = config["data"]["billguard.toml"].as_str().unwrap();
        let secret = one(&format!("{dir}/secret.yaml"));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), toml).unwrap();

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_billguard"));
        cmd.args(["config", "--config"])
            .arg(file.path())
            .env_clear();
        for (name, value) in secret["stringData"].as_object().unwrap() {
            cmd.env(name, value.as_str().unwrap());
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            continue;
        }
        // Until this build has the Redis store, that is the only problem the
        // replicated variant may have.
        let problems: Vec<&str> = stderr.lines().skip(1).collect();
        assert!(
            dir == "deploy/replicated"
                && problems.len() == 1
                && problems[0].trim_start().starts_with("session.store")
                && problems[0].contains("memory only"),
            "{dir}: the shipped configuration does not load:\n{stderr}"
        );
    }

    let compose = repo().join("deploy/compose/billguard.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_billguard"))
        .args(["config", "--config"])
        .arg(&compose)
        .env_clear()
        .envs([
            ("OIDC_CLIENT_ID", "compose"),
            ("OIDC_CLIENT_SECRET", "compose-secret"),
            (
                "BILLGUARD_SESSION__SECRET",
                "compose-session-key-of-at-least-32-bytes",
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_build_steps_lay_out_a_working_filesystem() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for line in [
        "RUN deploy/build-image-steps.sh --pgo --out /out",
        "COPY --from=build /out/ /",
        "USER 65532:65532",
        r#"ENTRYPOINT ["/usr/local/bin/billguard", "serve"]"#,
    ] {
        assert!(dockerfile.contains(line), "Dockerfile lacks {line:?}");
    }

    // The steps themselves, with the binary cargo test already built in
    // place of the release build (CI runs the profile-guided build once).
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("deploy/build-image-steps.sh"))
        .arg("--out")
        .arg(out_dir.path())
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_billguard"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let root = out_dir.path();
    assert!(root.join("usr/local/bin/billguard").is_file());
    assert!(root.join("etc/billguard/billguard.toml").is_file());
}
