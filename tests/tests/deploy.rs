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

/// Every series name the services' `/metrics` can show, from the code's own
/// registry (the process-wide one every service serves): counters as
/// `_total`, histograms as `_bucket`, `_sum`, `_count`, gauges as named.
fn exported_metric_names() -> std::collections::BTreeSet<String> {
    use breakglass_telemetry::metrics::{DestinationLabel, StageLabel, StageOutcome, StatusLabel};
    // The registry encodes a labelled family only once it has a series:
    // give each one a series (a metric missing here can only make the
    // check fail, never pass wrongly — the names come from the encoding).
    let m = breakglass_telemetry::metrics::metrics();
    let destination = DestinationLabel {
        destination: "test".into(),
    };
    let status = StatusLabel {
        status: "test".into(),
    };
    m.message("test", "ok", 0.1);
    m.stage_seconds
        .get_or_create(&StageLabel {
            stage: "test".into(),
        })
        .observe(0.1);
    m.messages
        .get_or_create(&StageOutcome {
            stage: "test".into(),
            outcome: "ok".into(),
        })
        .inc();
    m.runs_started.get_or_create(&status).inc();
    m.runs_finished.get_or_create(&status).inc();
    m.upload_retries.get_or_create(&destination).inc();
    m.upload_seconds.get_or_create(&destination).observe(0.1);
    m.last_success.get_or_create(&destination).set(1.0);
    m.drill_last_success.get_or_create(&destination).set(1.0);
    m.drill_last_failure.get_or_create(&destination).set(1.0);
    let text = m.encode();
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(
        names.contains("breakglass_last_success_timestamp_seconds"),
        "{text}"
    );
    names
}

/// Metrics the expressions may use that other exporters provide.
const EXTERNAL_METRICS: [&str; 1] = ["kube_job_status_failed"];

/// The PromQL expressions of the Grafana dashboard and the alert rules.
fn expressions(root: &Path) -> Vec<(String, String)> {
    fn walk(value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("expr", serde_json::Value::String(expr)) => {
                            out.push(("breakglass.json".into(), expr.clone()));
                        }
                        _ => walk(inner, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/breakglass.json")).unwrap(),
    )
    .unwrap();
    walk(&dashboard, &mut out);
    let rules = std::fs::read_to_string(root.join("deploy/alerts/breakglass-rules.yml")).unwrap();
    for line in rules.lines() {
        if let Some(expr) = line.trim_start().strip_prefix("expr:") {
            out.push(("breakglass-rules.yml".into(), expr.trim().to_owned()));
        }
    }
    out
}

/// The metric names an expression uses that nobody exports.
fn unknown_metrics(root: &Path) -> Vec<String> {
    let exported = exported_metric_names();
    let mut unknown = Vec::new();
    for (file, expr) in expressions(root) {
        let mut found = 0;
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if token.starts_with("breakglass_") || token.starts_with("kube_") {
                found += 1;
                if !exported.contains(token) && !EXTERNAL_METRICS.contains(&token) {
                    unknown.push(format!("{file}: {token} in `{expr}`"));
                }
            }
        }
        if found == 0 {
            unknown.push(format!("{file}: `{expr}` names no metric"));
        }
    }
    unknown
}

#[test]
fn the_dashboard_and_the_alerts_use_only_metrics_the_code_exports() {
    let expressions = expressions(&repo());
    assert!(
        expressions
            .iter()
            .filter(|(f, _)| f == "breakglass.json")
            .count()
            >= 10,
        "{expressions:?}"
    );
    let unknown = unknown_metrics(&repo());
    assert!(unknown.is_empty(), "{unknown:#?}");
}

#[test]
fn the_metric_check_catches_a_misspelt_metric() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "deploy/grafana/breakglass.json",
        "deploy/alerts/breakglass-rules.yml",
    ] {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo().join(file), to).unwrap();
    }
    let dashboard = dir.path().join("deploy/grafana/breakglass.json");
    let text = std::fs::read_to_string(&dashboard).unwrap();
    std::fs::write(
        &dashboard,
        text.replace(
            "breakglass_upload_retries_total",
            "breakglass_upload_retries",
        ),
    )
    .unwrap();
    let unknown = unknown_metrics(dir.path());
    assert_eq!(unknown.len(), 1, "{unknown:#?}");
    assert!(
        unknown[0].contains("breakglass_upload_retries in"),
        "{unknown:?}"
    );
}

/// The shipped NATS configuration (the ConfigMap in deploy/k8s/nats.yaml)
/// holds exactly what `breakglass nats-config` generates from the code's
/// subject names, and nats-server accepts it with the passwords the
/// Secret provides.
#[test]
fn the_shipped_nats_permissions_are_the_generated_ones_and_nats_accepts_them() {
    let output = Command::new(breakglass_e2e::bin("breakglass"))
        .args(["nats-config", "--prefix", "breakglass"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let generated = String::from_utf8(output.stdout).unwrap();
    assert!(generated.contains("authorization {"), "{generated}");
    let indented: String = generated
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    let manifest = std::fs::read_to_string(repo().join("deploy/k8s/nats.yaml")).unwrap();
    assert!(
        manifest.contains(&indented),
        "deploy/k8s/nats.yaml differs from `breakglass nats-config`; paste its output into the ConfigMap:\n{generated}"
    );
    // The ConfigMap's nats.conf: the lines after `nats.conf: |`, de-indented.
    let conf: String = manifest
        .lines()
        .skip_while(|l| !l.contains("nats.conf: |"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats.conf");
    std::fs::write(&file, &conf).unwrap();
    let mut check = Command::new("/usr/sbin/nats-server");
    check.arg("-t").arg("-c").arg(&file);
    for role in breakglass_bus::permissions::Role::ALL {
        check.env(role.password_env(), "a-test-password");
    }
    // Each node's server_name is its pod's name, set by the StatefulSet.
    check.env("POD_NAME", "nats-0");
    assert!(
        manifest.contains("- name: POD_NAME\n              valueFrom: {fieldRef: {fieldPath: metadata.name}}"),
        "the StatefulSet sets POD_NAME from the pod's name"
    );
    let checked = check.output().unwrap();
    assert!(
        checked.status.success(),
        "{}{}\n{conf}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Every password variable the server reads is one the StatefulSet sets
    // from the Secret.
    for role in breakglass_bus::permissions::Role::ALL {
        assert!(
            manifest.contains(&format!("- name: {}\n", role.password_env())),
            "{}",
            role.password_env()
        );
    }
}
