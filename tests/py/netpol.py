#!/usr/bin/env python3
"""Evaluates Kubernetes NetworkPolicies the way the cluster does, over the
rendered manifests of deploy/k8s, and checks the connectivity breakglass needs
(and the flows that must stay closed). Prints one line per wrong flow and exits
1 if there is any.

usage: netpol.py REPO_ROOT

The semantics (networking.k8s.io/v1, as K3s' policy controller enforces them):
- a policy applies to pods of its own namespace that its podSelector selects;
- a pod is isolated for ingress (egress) once any policy selecting it lists
  Ingress (Egress) in policyTypes (default: Ingress, plus Egress when the
  policy has an egress section); a pod no policy isolates allows everything
  in that direction;
- an isolated pod allows what the union of the selecting policies' rules
  allows; a connection needs the source's egress AND the destination's
  ingress;
- a rule's peers: podSelector alone = pods of the policy's namespace,
  namespaceSelector alone = every pod of the selected namespaces, both = the
  selected pods in the selected namespaces, ipBlock = cidr minus except
  (pod IPs count as IPs too: the conservative reading for "must stay closed");
  no peers = everyone;
- a rule's ports: none = every port; a numbered port (with endPort, a range);
  a named port is resolved against the destination pod's container ports
  (and so never matches a destination outside the cluster); protocol
  defaults to TCP.
"""
import ipaddress
import os
import sys

import yaml

# Where the manifests are installed (kustomization.yaml sets no namespace).
NAMESPACE = "breakglass"


class Pod:
    """A pod (or, with no namespace, an address outside the cluster)."""

    def __init__(self, name, namespace, labels, ip, ports=()):
        self.name = name
        self.namespace = namespace
        self.labels = dict(labels or {})
        self.ip = ipaddress.ip_address(ip)
        # [(name or None, number, protocol)]
        self.ports = list(ports)

    def __repr__(self):
        return self.name


class World:
    """Namespaces (name -> labels), pods and policies."""

    def __init__(self, namespaces, pods, policies):
        self.namespaces = {}
        for name, labels in namespaces.items():
            labels = dict(labels or {})
            # The API server sets this label on every namespace (1.21+).
            labels["kubernetes.io/metadata.name"] = name
            self.namespaces[name] = labels
        self.pods = {pod.name: pod for pod in pods}
        self.policies = policies  # [(namespace, policy dict)]

    # --- selectors -------------------------------------------------------
    @staticmethod
    def selects(selector, labels):
        if selector is None:
            return False
        for key, value in (selector.get("matchLabels") or {}).items():
            if labels.get(key) != value:
                return False
        for expr in selector.get("matchExpressions") or []:
            key, op, values = expr["key"], expr["operator"], expr.get("values") or []
            if op == "In" and labels.get(key) not in values:
                return False
            if op == "NotIn" and key in labels and labels[key] in values:
                return False
            if op == "Exists" and key not in labels:
                return False
            if op == "DoesNotExist" and key in labels:
                return False
            if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
                raise ValueError(f"unknown selector operator {op}")
        return True

    def peer_matches(self, peer, policy_namespace, other):
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            if other.ip not in ipaddress.ip_network(block["cidr"]):
                return False
            return not any(other.ip in ipaddress.ip_network(e) for e in block.get("except") or [])
        if other.namespace is None:
            return False  # pod and namespace selectors only match pods
        if "namespaceSelector" in peer:
            if not self.selects(peer["namespaceSelector"], self.namespaces[other.namespace]):
                return False
        elif other.namespace != policy_namespace:
            return False
        if "podSelector" in peer:
            return self.selects(peer["podSelector"], other.labels)
        return True

    @staticmethod
    def port_matches(rule_ports, target, port, protocol):
        if not rule_ports:
            return True
        for rule in rule_ports:
            if rule.get("protocol", "TCP") != protocol:
                continue
            want = rule.get("port")
            if want is None:
                return True
            if isinstance(want, str):
                # A named port: the destination container's port of that name.
                if target.namespace is None:
                    continue
                numbers = [n for (name, n, proto) in target.ports if name == want and proto == protocol]
                if port in numbers:
                    return True
                continue
            end = rule.get("endPort", want)
            if want <= port <= end:
                return True
        return False

    @staticmethod
    def types(policy):
        spec = policy["spec"]
        if "policyTypes" in spec:
            return set(spec["policyTypes"])
        return {"Ingress"} | ({"Egress"} if "egress" in spec else set())

    def selecting(self, pod, direction):
        return [
            (ns, p)
            for ns, p in self.policies
            if ns == pod.namespace
            and direction in self.types(p)
            and self.selects(p["spec"].get("podSelector", {}), pod.labels)
        ]

    def direction_allows(self, pod, other, port, protocol, direction, target):
        """Whether `pod`'s policies let it talk with `other` in `direction`;
        `target` is whichever of the two receives (named ports resolve there)."""
        if pod.namespace is None:
            return True  # outside the cluster: no policy
        policies = self.selecting(pod, direction)
        if not policies:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for ns, policy in policies:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self.peer_matches(p, ns, other) for p in peers):
                    continue
                if self.port_matches(rule.get("ports"), target, port, protocol):
                    return True
        return False

    def allowed(self, source, destination, port, protocol="TCP"):
        src, dst = self.pods[source], self.pods[destination]
        if dst.namespace and not any(n == port and p == protocol for _, n, p in dst.ports):
            raise ValueError(f"{destination} does not listen on {port}/{protocol}")
        return self.direction_allows(src, dst, port, protocol, "Egress", dst) and self.direction_allows(
            dst, src, port, protocol, "Ingress", dst
        )


# --- the rendered manifests ---------------------------------------------------


def render(k8s_dir):
    """What `kubectl kustomize` renders for a kustomization that only lists
    resources (anything else is refused rather than misread)."""
    with open(os.path.join(k8s_dir, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources"}
    if unsupported:
        raise ValueError(f"kustomization.yaml uses {sorted(unsupported)}: teach netpol.py to render it")
    docs = []
    for resource in kustomization["resources"]:
        with open(os.path.join(k8s_dir, resource)) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d is not None)
    return docs


def pod_templates(docs):
    for doc in docs:
        kind = doc["kind"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]
        elif kind == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]


def container_ports(template):
    ports = []
    for container in template["spec"]["containers"]:
        for p in container.get("ports") or []:
            ports.append((p.get("name"), p["containerPort"], p.get("protocol", "TCP")))
    return ports


# The neighbours the policies name (docs/KUBERNETES.md, "Network flows").
MAVIS_NS = "mavis"
MONITORING_NS = "monitoring"
OUTSIDE = [
    Pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.42.9.10", [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]),
    Pod("prometheus", MONITORING_NS, {"app.kubernetes.io/name": "prometheus"}, "10.42.9.20", [("web", 9090, "TCP")]),
    Pod("mavis-core", MAVIS_NS, {"app.kubernetes.io/name": "mavis-core"}, "10.42.9.30", [("http", 8080, "TCP")]),
    Pod("mavis-db", MAVIS_NS, {"app.kubernetes.io/name": "mavis-db"}, "10.42.9.31", [("postgres", 5432, "TCP")]),
    # Any other pod of the cluster, e.g. a compromised web app.
    Pod("intruder", "default", {"app": "web"}, "10.42.9.40", [("http", 8080, "TCP")]),
    # A pod of breakglass's own namespace that is not breakglass's.
    Pod("neighbour", NAMESPACE, {"app": "other"}, "10.42.9.41", [("http", 8080, "TCP")]),
    # Object storage on the internet (S3, Azure Blob) and any other host there.
    Pod("storage", None, {}, "52.216.1.1", [("https", 443, "TCP")]),
]


def world_of(docs):
    pods = list(OUTSIDE)
    for i, (name, template) in enumerate(pod_templates(docs)):
        labels = template["metadata"]["labels"]
        pods.append(Pod(name, NAMESPACE, labels, f"10.42.1.{i + 1}", container_ports(template)))
    policies = [
        (doc["metadata"].get("namespace", NAMESPACE), doc) for doc in docs if doc["kind"] == "NetworkPolicy"
    ]
    namespaces = {NAMESPACE: {}, "kube-system": {}, MONITORING_NS: {}, MAVIS_NS: {}, "default": {}}
    return World(namespaces, pods, policies)


SERVICES = ["breakglass-scheduler", "breakglass-collector", "breakglass-renderer", "breakglass-uploader"]
BREAKGLASS = SERVICES + ["nats", "breakglass-postgres", "breakglass-drill"]
EVERYONE = BREAKGLASS + ["mavis-core", "mavis-db", "prometheus", "intruder", "neighbour"]

# (source, destination, port, protocol, why) that must be open.
OPEN = (
    [(s, "nats", 4222, "TCP", "each service talks to the bus") for s in SERVICES]
    + [("mavis-core", "nats", 4222, "TCP", "the Mavis core publishes triggers")]
    + [("nats", "nats", 6222, "TCP", "the NATS nodes route to each other (JetStream cluster)")]
    + [(s, "kube-dns", 53, p, "names resolve") for s in SERVICES + ["breakglass-drill"] for p in ("UDP", "TCP")]
    + [
        ("breakglass-collector", "mavis-db", 5432, "TCP", "the collector reads the inventory"),
        ("breakglass-scheduler", "breakglass-postgres", 5432, "TCP", "the scheduler writes the run log"),
        ("breakglass-drill", "breakglass-postgres", 5432, "TCP", "the drill records its result"),
        ("breakglass-uploader", "storage", 443, "TCP", "the uploader reaches object storage"),
        ("breakglass-drill", "storage", 443, "TCP", "the drill reads the newest backup"),
        ("mavis-core", "breakglass-scheduler", 50051, "TCP", "the run history / config API"),
        ("mavis-core", "breakglass-uploader", 50052, "TCP", "the destination Test"),
    ]
    + [("prometheus", s, 9090, "TCP", "Prometheus scrapes /metrics") for s in SERVICES]
)

# (source, destination, port, protocol, why) that must stay closed.
CLOSED = (
    [(s, "storage", 443, "TCP", "only the uploader and the drill reach the internet")
     for s in ("breakglass-collector", "breakglass-renderer", "breakglass-scheduler", "nats", "breakglass-postgres")]
    + [(s, "breakglass-postgres", 5432, "TCP", "only the scheduler and the drill use the run log")
       for s in EVERYONE if s not in ("breakglass-scheduler", "breakglass-drill", "breakglass-postgres")]
    + [("breakglass-renderer", d, port, "TCP", "the renderer talks only to NATS and DNS")
       for d, port in (("mavis-db", 5432), ("breakglass-postgres", 5432), ("breakglass-uploader", 50052),
                       ("breakglass-scheduler", 50051), ("mavis-core", 8080), ("intruder", 8080),
                       ("breakglass-collector", 9090), ("storage", 443))]
    + [(s, "mavis-db", 5432, "TCP", "only the collector reads the inventory")
       for s in BREAKGLASS if s != "breakglass-collector"]
    + [(s, "nats", 4222, "TCP", "only breakglass's services and the Mavis core use the bus")
       for s in ("intruder", "neighbour", "prometheus", "breakglass-drill", "breakglass-postgres")]
    + [(s, d, port, "TCP", "only the Mavis core calls the gRPC APIs")
       for s in ("intruder", "neighbour", "breakglass-collector", "breakglass-renderer")
       for d, port in (("breakglass-scheduler", 50051), ("breakglass-uploader", 50052))]
    + [("intruder", s, 9090, "TCP", "only Prometheus scrapes") for s in SERVICES]
    + [(s, "nats", 6222, "TCP", "only NATS nodes join the cluster")
       for s in EVERYONE if s != "nats"]
    + [(s, "intruder", 8080, "TCP", "breakglass pods reach no other pod") for s in BREAKGLASS]
    + [("breakglass-uploader", "breakglass-postgres", 5432, "TCP", "the uploader holds no run-log access")]
)


def check(root):
    world = world_of(render(os.path.join(root, "deploy", "k8s")))
    problems = []
    for source, destination, port, protocol, why in OPEN:
        if not world.allowed(source, destination, port, protocol):
            problems.append(f"DENIED but needed: {source} -> {destination}:{port}/{protocol} ({why})")
    for source, destination, port, protocol, why in CLOSED:
        if world.allowed(source, destination, port, protocol):
            problems.append(f"ALLOWED but must stay closed: {source} -> {destination}:{port}/{protocol} ({why})")
    # The renderer holds decrypted rows: it talks to NATS and DNS, nothing else.
    for destination in world.pods.values():
        for _, port, protocol in destination.ports:
            if (destination.name, port) in (("nats", 4222), ("kube-dns", 53)):
                continue
            if world.allowed("breakglass-renderer", destination.name, port, protocol):
                problems.append(f"ALLOWED but must stay closed: breakglass-renderer -> {destination.name}:{port}/{protocol}")
    return problems


if __name__ == "__main__":
    found = check(sys.argv[1])
    for line in found:
        print(line)
    print(f"{len(OPEN)} needed flows, {len(CLOSED)} closed flows checked; {len(found)} wrong")
    sys.exit(1 if found else 0)
