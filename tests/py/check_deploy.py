#!/usr/bin/env python3
"""Checks the deployment files without a cluster: they parse, and what they
reference exists and agrees with the code (binaries, ports, probe paths,
secret and volume names, metric names). Prints one line per problem and
exits 1 if there is any.

usage: check_deploy.py REPO_ROOT"""
import os, re, sys
import yaml

BINARIES = {"scheduler", "collector", "renderer", "uploader", "breakglass"}
HTTP_PORT = 9090
problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def check_k8s(root):
    k8s = os.path.join(root, "deploy", "k8s")
    kustomization = load_all(os.path.join(k8s, "kustomization.yaml"))[0]
    listed = set(kustomization["resources"])
    files = {f for f in os.listdir(k8s) if f.endswith(".yaml") and f != "kustomization.yaml"}
    for missing in sorted(files - listed):
        problem("kustomization.yaml", f"does not list {missing}")
    for extra in sorted(listed - files):
        problem("kustomization.yaml", f"lists {extra}, which does not exist")
    docs = {}
    for name in sorted(files):
        for doc in load_all(os.path.join(k8s, name)):
            for key in ("apiVersion", "kind", "metadata"):
                if key not in doc:
                    problem(name, f"a document has no {key}")
            docs.setdefault(doc["kind"], []).append((name, doc))
    secrets = {d["metadata"]["name"]: d for _, d in docs.get("Secret", [])}
    for secret in secrets.values():
        conf = secret.get("stringData", {}).get("breakglass.conf", "")
        for line in conf.splitlines():
            if line.strip() and not line.lstrip().startswith("#") and ":" not in line:
                problem("secret", f"config line is not `key: value`: {line!r}")
    services = set()
    for name, deployment in docs.get("Deployment", []):
        spec = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if deployment["spec"]["selector"]["matchLabels"].items() - labels.items():
            problem(name, "selector does not match the pod labels")
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problem(name, "pods must run as non-root")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            command = container.get("command", [])
            binary = os.path.basename(command[0]) if command else ""
            if binary not in BINARIES:
                problem(name, f"runs {binary!r}, which is not a breakglass binary")
            services.add(binary)
            if "--config" in command:
                config = command[command.index("--config") + 1]
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                if os.path.dirname(config) not in mounts:
                    problem(name, f"--config {config} is not on a mounted volume")
                else:
                    volume = volumes.get(mounts[os.path.dirname(config)], {})
                    secret = volume.get("secret", {}).get("secretName")
                    if secret not in secrets:
                        problem(name, f"mounts secret {secret!r}, which no manifest defines")
                    elif os.path.basename(config) not in secrets[secret].get("stringData", {}):
                        problem(name, f"secret {secret} has no key {os.path.basename(config)}")
            if f"0.0.0.0:{HTTP_PORT}" not in command:
                problem(name, f"must pass --http 0.0.0.0:{HTTP_PORT}")
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            if ports.get("http") != HTTP_PORT:
                problem(name, f"port 'http' must be {HTTP_PORT}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                got = container.get(probe, {}).get("httpGet", {})
                if got.get("path") != path or got.get("port") != "http":
                    problem(name, f"{probe} must GET {path} on port http")
            context = container.get("securityContext", {})
            if not context.get("readOnlyRootFilesystem") or context.get("allowPrivilegeEscalation") is not False:
                problem(name, "containers need a read-only root and no privilege escalation")
            limits = container.get("resources", {}).get("limits", {})
            if "memory" not in limits or "cpu" not in limits:
                problem(name, "containers need cpu and memory limits")
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problem(name, f"mounts unknown volume {mount['name']}")
    for wanted in ("scheduler", "collector", "renderer", "uploader"):
        if wanted not in services:
            problem("deploy/k8s", f"no Deployment runs {wanted}")
    open_egress = []
    for name, policy in docs.get("NetworkPolicy", []):
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                    open_egress.append(policy["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/name"))
    if sorted(open_egress) != ["breakglass-drill", "breakglass-uploader"]:
        problem("networkpolicy.yaml", f"only the uploader and the drill may reach the outside, found {open_egress}")
    drills = docs.get("CronJob", [])
    if not drills:
        problem("deploy/k8s", "no CronJob runs the drill")
    for name, job in drills:
        spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problem(name, "the drill must run as non-root")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            command = container.get("command", [])
            if command[:2] != ["/usr/local/bin/breakglass", "drill"]:
                problem(name, f"runs {command[:2]}, not `breakglass drill`")
            context = container.get("securityContext", {})
            if not context.get("readOnlyRootFilesystem") or context.get("allowPrivilegeEscalation") is not False:
                problem(name, "containers need a read-only root and no privilege escalation")
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            for flag in ("--config", "--passphrase-file"):
                if flag not in command:
                    continue
                path = command[command.index(flag) + 1]
                volume = volumes.get(mounts.get(os.path.dirname(path), ""), {})
                secret = volume.get("secret", {}).get("secretName")
                if secret not in secrets:
                    problem(name, f"{flag} {path} is not on a mounted secret")
                elif os.path.basename(path) not in secrets[secret].get("stringData", {}):
                    problem(name, f"secret {secret} has no key {os.path.basename(path)}")


def check_compose(root):
    compose = load_all(os.path.join(root, "docker-compose.yml"))[0]
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not os.path.exists(os.path.join(root, source)):
                problem("docker-compose.yml", f"{name} mounts {source}, which does not exist")
        entrypoint = service.get("entrypoint")
        if entrypoint and os.path.basename(entrypoint[0]) not in BINARIES:
            problem("docker-compose.yml", f"{name} runs {entrypoint[0]}")
    for wanted in ("nats", "postgres", "s3", "azurite", "scheduler", "collector", "renderer", "uploader"):
        if wanted not in compose["services"]:
            problem("docker-compose.yml", f"has no {wanted} service")


def check_alerts(root):
    source = open(os.path.join(root, "crates", "breakglass-telemetry", "src", "metrics.rs")).read()
    registered = {"breakglass_" + m for m in re.findall(r'register\(\s*"([a-z_]+)"', source)}
    counters = {"breakglass_messages", "breakglass_runs_started", "breakglass_runs_finished", "breakglass_upload_retries"}
    known = registered | {c + "_total" for c in counters & registered}
    rules = load_all(os.path.join(root, "deploy", "alerts", "breakglass-rules.yml"))[0]
    for group in rules["groups"]:
        for rule in group["rules"]:
            for metric in re.findall(r"\bbreakglass_[a-z_]+", rule["expr"]):
                if metric not in known:
                    problem("breakglass-rules.yml", f"{rule['alert']} uses {metric}, which the code does not export")
    if "breakglass_last_success_timestamp_seconds" not in registered:
        problem("metrics.rs", "the freshness metric is not registered")


root = sys.argv[1]
check_k8s(root)
check_compose(root)
check_alerts(root)
for line in problems:
    print(line)
sys.exit(1 if problems else 0)
