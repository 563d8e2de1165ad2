//! The deployment files, checked without a cluster: the K3s manifests, the
//! compose file and the alert rules parse, and what they reference agrees
//! with the code (tests/py/check_deploy.py).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::test_python;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn check(root: &Path) -> (bool, String) {
    let output = Command::new(test_python())
        .arg(repo().join("tests/py/check_deploy.py"))
        .arg(root)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Copies what the checker reads into `dir`.
fn copy_inputs(dir: &Path) {
    let copy = |relative: &str| {
        let from = repo().join(relative);
        let to = dir.join(relative);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    for entry in std::fs::read_dir(repo().join("deploy/k8s")).unwrap() {
        copy(&format!(
            "deploy/k8s/{}",
            entry.unwrap().file_name().to_string_lossy()
        ));
    }
    for file in [
        "deploy/alerts/breakglass-rules.yml",
        "docker-compose.yml",
        "crates/breakglass-telemetry/src/metrics.rs",
    ] {
        copy(file);
    }
    std::fs::create_dir_all(dir.join("deploy/compose")).unwrap();
    for entry in std::fs::read_dir(repo().join("deploy/compose")).unwrap() {
        copy(&format!(
            "deploy/compose/{}",
            entry.unwrap().file_name().to_string_lossy()
        ));
    }
}

#[test]
fn the_deployment_files_are_consistent_with_the_code() {
    let (ok, text) = check(&repo());
    assert!(ok, "{text}");
}

#[test]
fn the_shipped_config_files_pass_config_check() {
    let file = "deploy/compose/breakglass.conf";
    let output = Command::new(breakglass_e2e::bin("breakglass"))
        .args(["config", "check"])
        .arg(repo().join(file))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The K3s example Secret's file must parse as well (its values are
    // placeholders, so only the format is checked).
    let secret = std::fs::read_to_string(repo().join("deploy/k8s/secret.example.yaml")).unwrap();
    let body: String = secret
        .lines()
        .skip_while(|l| !l.contains("breakglass.conf: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    breakglass_config::RawConfig::parse(&body, "secret.example.yaml").unwrap();
}

#[test]
fn the_checker_catches_broken_references() {
    let dir = tempfile::tempdir().unwrap();
    copy_inputs(dir.path());
    let uploader = dir.path().join("deploy/k8s/uploader.yaml");
    let text = std::fs::read_to_string(&uploader).unwrap();
    std::fs::write(
        &uploader,
        text.replace("path: /readyz", "path: /ready")
            .replace("secretName: breakglass-config", "secretName: typo"),
    )
    .unwrap();
    let rules = dir.path().join("deploy/alerts/breakglass-rules.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(
        &rules,
        text.replace(
            "breakglass_last_success_timestamp_seconds)",
            "breakglass_last_sucess_timestamp_seconds)",
        ),
    )
    .unwrap();
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(
        text.contains("uploader.yaml: readinessProbe must GET /readyz on port http"),
        "{text}"
    );
    assert!(
        text.contains("uploader.yaml: mounts secret 'typo', which no manifest defines"),
        "{text}"
    );
    assert!(
        text.contains(
            "uses breakglass_last_sucess_timestamp_seconds, which the code does not export"
        ),
        "{text}"
    );
}

fn run_python(script: &str, args: &[&Path]) -> (bool, String) {
    let output = Command::new(test_python())
        .arg(repo().join(script))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The network policies, evaluated as Kubernetes does over the rendered
/// manifests: every flow the pipeline needs is open, the closed ones are
/// closed (tests/py/netpol.py lists both).
#[test]
fn the_network_policies_let_the_pipeline_run_and_nothing_else() {
    let (ok, text) = run_python("tests/py/netpol.py", &[&repo()]);
    assert!(ok, "{text}");
}

#[test]
fn the_network_policy_evaluator_passes_its_own_unit_tests() {
    let (ok, text) = run_python("tests/py/test_netpol.py", &[]);
    assert!(ok, "{text}");
    assert!(text.contains("OK"), "{text}");
}

/// Without the policy that opens NATS to the services, the evaluator sees
/// what the cluster would do: the default policy isolates NATS too.
#[test]
fn the_evaluator_sees_nats_shut_when_its_policy_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    copy_inputs(dir.path());
    let path = dir.path().join("deploy/k8s/networkpolicy.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: breakglass-nats\n"))
        .collect();
    assert_eq!(kept.len() + 1, text.split("\n---\n").count());
    std::fs::write(&path, kept.join("\n---\n")).unwrap();
    let (ok, text) = run_python("tests/py/netpol.py", &[dir.path()]);
    assert!(!ok, "{text}");
    for service in ["scheduler", "collector", "renderer", "uploader"] {
        assert!(
            text.contains(&format!(
                "DENIED but needed: breakglass-{service} -> nats:4222/TCP"
            )),
            "{text}"
        );
    }
}
