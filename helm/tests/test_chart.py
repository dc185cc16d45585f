"""Tests of the Helm chart helm/ringway with the real Helm library.

- helm-python-sdk binds Helm's own Go SDK (v4): `Chart.render` is `helm
  template`, `lint(strict=True)` is `helm lint --strict`, and both apply
  values.schema.json as the CLI does. No helm binary is involved.
- Every rendered manifest is validated (strict: unknown fields fail) with
  kubernetes-validate against the schemas of the oldest Kubernetes the
  chart supports (Chart.yaml kubeVersion) and of the newest the package
  ships; the schemas are in the package, and the tests run with Python's
  sockets blocked to prove nothing is fetched. The ServiceMonitor and the
  PrometheusRule, prometheus-operator CRDs, are checked against the
  operator's models; the Gateway API HTTPRoute and GRPCRoute against the
  fields of gateway.networking.k8s.io/v1 (kubernetes-validate has no
  schema for them).
- The gateway and coordinator arguments and environment the chart renders
  are given to the real binaries (target/debug) with --check-config, with
  Kubernetes' $(VAR) expansion and the Secret files reproduced (the cluster
  secret included: the binaries read it and refuse one under 32 bytes).
  The cert-manager Certificate, a CRD, is checked against the fields of
  cert-manager.io/v1.
- The `helm test` script the chart renders is run (with sh, and busybox sh
  when installed: the test image's shell) against a real ringway-gateway
  started here, with connection state recovery off and on.
- The PrometheusRule's expressions and the Grafana dashboard's queries
  name only metrics of docs/OPERATIONS.md's tables.

Run: .venv-test/bin/python -m pytest helm/tests (scripts/test.sh does, after
the cargo tests, which build the binaries).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import promql_parser
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parents[2]
# Daemons live in /usr/sbin on Debian, often not on PATH.
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
CHART = ROOT / "helm" / "ringway"
RELEASE = "ringway"
NAMESPACE = "realtime"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: the
# preStop sleep action) and the newest kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kv_utils.latest_version()]

# An RSA public key (test material only) for the rs256 value sets.
RS256_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAisHRNtLQ1IG4LN1C70Px
0As8fTKYEbir7i45o+kFsB/hsIwJ3dvqg0uLCZd8oLbPPnkFL735S4ITcAO5F5Tp
j6Ai6cf+XQVQ+u01X6sHN/JwzGhgGcdR4DWnryHDGPeikMtkD80+dgG1TcbEfibK
RmNgVf6MXpYYiNfJBojYUzKkgh3MKpXUIKs2h4mFCedXY+vEobtPFDIEfHR9hfbI
dd3iUO7FI8QgAdxvFeFL7Wg0SIA1EknNZZqdyN1q/gx/1i2WL2myzvv3vel5DMPU
H7H3yXToREQbqw5gqjQrzS3VoFqNkjnA4vCCJcEG9oy3+zIHpQWt6oDtYHAVvaJF
zQIDAQAB
-----END PUBLIC KEY-----
"""

# The value sets every test runs over.
VALUE_SETS: dict[str, dict[str, Any]] = {
    # What `helm install ringway helm/ringway` gives.
    "defaults": {},
    # The least: one gateway, no HPA, no PDB, no ServiceAccount of its own,
    # no NetworkPolicy.
    "minimal": {
        "autoscaling": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "serviceAccount": {"create": False},
        "networkPolicy": {"enabled": False},
        "gateway": {"replicas": 1, "antiAffinity": "none"},
    },
    # Trying it out: the embedded single Redis, with its NetworkPolicy.
    "embedded-redis": {
        "redis": {"embedded": {"enabled": True}},
        "networkPolicy": {"enabled": True},
        "auth": {"apiTokens": {"tokens": ["dev-token"]}},
    },
    # Production-like: Ingress (WebSocket timeouts, TLS), the Push-only API
    # Ingress, NetworkPolicy, ServiceMonitor, HPA on CPU and sessions per
    # pod, PDB, created Secrets (API tokens, RS256 key), Redis password from
    # an existing Secret, telemetry, CORS, hard anti-affinity, a LoadBalancer
    # Service, a standby coordinator.
    # Redis Cluster over TLS with a client certificate and a password.
    "redis-cluster-tls": {
        "redis": {
            "mode": "cluster",
            "url": "rediss://redis-0.redis.data.svc:6379",
            "extraUrls": ["rediss://redis-1.redis.data.svc:6379", "rediss://redis-2.redis.data.svc:6379"],
            "auth": {"existingSecret": "redis-auth"},
            "tls": {"existingSecret": "redis-tls", "certKey": "tls.crt", "keyKey": "tls.key"},
        },
    },
    # A primary behind three Sentinels.
    "redis-sentinel": {
        "redis": {
            "mode": "sentinel",
            "url": "redis://sentinel-0.data.svc:26379",
            "extraUrls": ["redis://sentinel-1.data.svc:26379", "redis://sentinel-2.data.svc:26379"],
            "sentinelMaster": "ringway",
            "waitReplicas": 1,
            "auth": {"existingSecret": "redis-auth", "username": "ringway"},
        },
    },
    "production": {
        "image": {"repository": "registry.example.com/ringway", "tag": "0.1.0"},
        "logLevel": "info,ringway_gateway=debug",
        "telemetry": {
            "otlpEndpoint": "http://otel-collector.observability:4317",
            "resourceAttributes": {"deployment.environment": "prod"},
        },
        "redis": {
            "url": "redis://redis-primary.data.svc:6379/2",
            "auth": {"existingSecret": "redis-credentials", "username": "ringway"},
        },
        "auth": {
            "apiTokens": {"tokens": ["token-a", "token-b"]},
            "jwt": {
                "algorithm": "rs256",
                "rs256PublicKey": RS256_PUBLIC_KEY,
                "audiences": ["chat"],
                "issuers": ["https://id.example.com"],
            },
        },
        "gateway": {
            "config": {
                "namespaces": ["/", "/chat"],
                "corsOrigins": ["https://app.example.com", "https://admin.example.com"],
            },
            "antiAffinity": "hard",
            "extraArgs": ["--max-poll-packets=32"],
        },
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
        "ingress": {
            "enabled": True,
            "hosts": ["rt.example.com"],
            "tls": [{"secretName": "rt-tls", "hosts": ["rt.example.com"]}],
        },
        "apiIngress": {
            "enabled": True,
            "host": "push.example.com",
            "tlsSecretName": "push-tls",
        },
        "autoscaling": {
            "minReplicas": 4,
            "maxReplicas": 40,
            "sessionsPerPod": {"enabled": True, "averageValue": "25000"},
        },
        "podDisruptionBudget": {"maxUnavailable": "25%"},
        "coordinator": {"replicas": 2},
        "networkPolicy": {
            "enabled": True,
            "clients": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
            ],
            "prometheus": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
            "redis": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            "otlp": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
            ],
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "alertLabels": {"team": "realtime"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Ringway"}},
    },
    # What operators add: Gateway API routes instead of Ingresses, the
    # PrometheusRule (tuned) and the dashboard in Grafana's namespace,
    # topology spread, startup probes tuned, escape hatches (volumes,
    # sidecars, init containers) on both components, a restricted client
    # NetworkPolicy (the test pod gets its own rule), HPA off.
    "operators": {
        "autoscaling": {"enabled": False},
        "gateway": {
            "replicas": 4,
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
                {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
                 "matchLabelKeys": ["pod-template-hash"]},
            ],
            "startupProbe": {"periodSeconds": 1, "failureThreshold": 90},
            "extraVolumes": [{"name": "shared-logs", "emptyDir": {}},
                             {"name": "vector-config", "configMap": {"name": "vector"}}],
            "extraVolumeMounts": [{"name": "shared-logs", "mountPath": "/var/log/ringway"}],
            "extraContainers": [{
                "name": "log-shipper", "image": "timberio/vector:0.41.1-distroless-static",
                "args": ["--config-dir", "/etc/vector"],
                "volumeMounts": [{"name": "shared-logs", "mountPath": "/var/log/ringway", "readOnly": True},
                                 {"name": "vector-config", "mountPath": "/etc/vector"}],
                "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True},
            }],
            "initContainers": [
                {"name": "wait-for-redis", "image": "busybox:1.36",
                 "command": ["sh", "-c", "until nc -z redis 6379; do sleep 1; done"]},
                {"name": "proxy", "image": "envoyproxy/envoy:v1.31.2", "restartPolicy": "Always"},
            ],
        },
        "coordinator": {
            "replicas": 2,
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
            ],
            "extraVolumes": [{"name": "extra-ca", "configMap": {"name": "corporate-ca"}}],
            "extraVolumeMounts": [{"name": "extra-ca", "mountPath": "/etc/ssl/extra", "readOnly": True}],
            "extraContainers": [{"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "infinity"]}],
            "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["true"]}],
        },
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
            "hostnames": ["rt.example.com"],
            "timeouts": {"request": "0s"},
            "annotations": {"example.com/owner": "realtime"},
        },
        "grpcRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "grpc", "port": 443}],
            "hostnames": ["push.example.com"],
            "labels": {"exposure": "partners"},
        },
        "auth": {"apiTokens": {"tokens": ["t"]}},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {
            "enabled": True,
            "interval": "30s",
            "expectedMembers": 3,
            "runbookBaseUrl": "https://git.example.com/ringway/blob/v0.1.0/docs",
            "alerts": {
                "slowConsumers": {"threshold": 0.5, "for": "30m"},
                "limitsRefusals": {"enabled": False},
                "clusterAuthRefusals": {"severity": "page"},
            },
            "extraRules": [{"record": "ringway:sessions:sum", "expr": "sum(ringway_sessions)"}],
        },
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring", "label": "grafana.com/dashboard",
                             "labelValue": "ringway", "labels": {"team": "realtime"}},
        "networkPolicy": {
            "clients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway-system"}}}],
            "apiClients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway-system"}}}],
        },
        "tests": {"podAnnotations": {"sidecar.istio.io/inject": "false"}, "timeoutSeconds": 120},
    },
    # Every secret from Secrets the user manages (the cluster secret too);
    # HS256 JWT.
    "existing-secrets": {
        "cluster": {"secret": {"existingSecret": "ringway-cluster-credential", "existingSecretKey": "secret"}},
        "redis": {"auth": {"existingSecret": "redis-auth", "passwordKey": "password"}},
        "auth": {
            "apiTokens": {"existingSecret": "ringway-push-tokens", "existingSecretKey": "tokens.txt"},
            "jwt": {
                "algorithm": "hs256",
                "existingSecret": "ringway-jwt",
                "existingSecretKey": "secret",
                "leewaySeconds": 10,
            },
        },
    },
    # A backend's Upstream hooks, behind a NetworkPolicy, embedded Redis
    # with a password.
    "upstream": {
        "upstream": {"url": "http://chat-backend.apps:50051", "timeoutMs": 3000},
        "redis": {"embedded": {"enabled": True}, "auth": {"existingSecret": "redis-auth"}},
        "networkPolicy": {"enabled": True, "upstream": [{"podSelector": {"matchLabels": {"app": "chat-backend"}}}]},
        "auth": {"apiTokens": {"existingSecret": "push-tokens"}},
    },
    # Mutual TLS (with the shared secret) from a cert-manager Certificate;
    # /metrics on its own port, scraped by the ServiceMonitor.
    "mtls-cert-manager": {
        "cluster": {"tls": {"enabled": True, "certManager": {"issuerRef": {"name": "ringway-ca", "kind": "ClusterIssuer"}}}},
        "gateway": {"ports": {"metrics": 9090}},
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"prometheus": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]},
    },
    # Mutual TLS alone (no shared secret), from the user's Secret and server
    # name; other ports.
    "mtls-only": {
        "cluster": {
            "secret": {"enabled": False},
            "tls": {"enabled": True, "existingSecret": "ringway-members-tls", "serverName": "members.ringway.internal"},
        },
        "gateway": {"ports": {"http": 8080, "node": 9100, "api": 9200}},
        "apiService": {"port": 9200},
        "auth": {"apiTokens": {"tokens": ["t"]}},
    },
    # No credential at all: an explicit opt-in, for experiments.
    "insecure": {"cluster": {"insecure": True}},
}

# The example values files of the docs (helm/examples) are tested too.
EXAMPLES = ROOT / "helm" / "examples"
for _path in sorted(EXAMPLES.glob("*-values.yaml")):
    VALUE_SETS["example-" + _path.name.removesuffix("-values.yaml")] = yaml.safe_load(_path.read_text())

# The coordinator dashboard is on by default; these values turn it off
# (and the NetworkPolicies on, to check the dashboard port's rule both ways).
NO_DASHBOARD = {"coordinator": {"dashboard": {"enabled": False}}, "networkPolicy": {"enabled": True}}


# --- helpers -----------------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Block Python-level network access: validation must work offline."""

    def refuse(*_args, **_kwargs):
        raise OSError("network access is blocked in the chart tests")

    saved = (socket.socket.connect, socket.create_connection)
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    yield
    socket.socket.connect, socket.create_connection = saved  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render_docs(chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["_template"] = path
                docs.append(doc)
    return docs


def rendered(chart, name: str) -> list[dict[str, Any]]:
    if name not in _RENDERED:
        _RENDERED[name] = render_docs(chart, VALUE_SETS[name])
    return _RENDERED[name]


def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in doc["metadata"].get("annotations", {})


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc.pop("_template", None)
    if not doc["metadata"].get("annotations"):
        doc["metadata"].pop("annotations", None)
    return doc


def find(docs, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    for c in workload["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def cargo_version() -> str:
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


GATEWAY = f"{RELEASE}-gateway"
COORDINATOR = f"{RELEASE}-coordinator"
TEST = f"{RELEASE}-test"

# --- the chart itself --------------------------------------------------------


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "ringway"
    assert meta["appVersion"] == cargo_version(), "appVersion must track the workspace version"
    files = {t["name"] for t in chart.templates}
    assert "templates/_helpers.tpl" in files and "templates/NOTES.txt" in files
    assert chart.schema is not None


def test_every_value_is_in_the_schema_and_commented():
    """values.yaml and values.schema.json describe the same keys, and every
    leaf of values.yaml has a comment above it (or above its block)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def resolve(node):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        return node

    def walk(value, node, path):
        node = resolve(node)
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            props = node["properties"]
            assert set(value) <= set(props), f"{path}: keys not in the schema: {set(value) - set(props)}"
            for key, sub in value.items():
                walk(sub, props[key], f"{path}.{key}")

    walk(values, schema, "values")
    # Comments: every key has a comment right above it, or sits inside a
    # block whose key has one (e.g. the requests/limits of a commented
    # "resources").
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, commented) of enclosing keys
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z0-9.]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = lines[i - 1].strip() if i else ""
        commented = above.startswith("#") or any(c for _, c in stack)
        nxt = next((n.strip() for n in lines[i + 1:] if n.strip() and not n.strip().startswith("#")), "")
        mapping_block = line.rstrip().endswith(":") and re.match(r"^[A-Za-z0-9.]+:", nxt)
        # A block of keys needs no comment of its own: its keys have theirs.
        assert commented or mapping_block, f"values.yaml line {i + 1} ({line.strip()}) has no comment"
        stack.append((indent, commented))


@pytest.mark.parametrize("name", list(VALUE_SETS) + ["no-dashboard"])
def test_lint_strict(name):
    values = NO_DASHBOARD if name == "no-dashboard" else VALUE_SETS[name]
    for kube in ("v1.30.0", "v" + kv_utils.latest_version()):
        report = helm.lint(str(CHART), copy.deepcopy(values), strict=True, namespace=NAMESPACE, kube_version=kube)
        assert report["total_charts_linted"] == 1
        assert report["errors"] == [], report
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        assert bad == [], bad


@pytest.mark.parametrize("name", list(VALUE_SETS) + ["no-dashboard"])
def test_manifests_pass_kubernetes_schemas(chart, name):
    docs = render_docs(chart, NO_DASHBOARD) if name == "no-dashboard" else rendered(chart, name)
    assert docs
    for doc in docs:
        if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            check_prometheus_operator(doc)
            continue
        if doc["kind"] in ("HTTPRoute", "GRPCRoute"):
            check_gateway_route(doc)
            continue
        if doc["kind"] == "Certificate":
            check_certificate(doc)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip(doc), version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(
                    f"{doc['_template']}: {doc['kind']}/{doc['metadata']['name']} against {version}: {path}: {e.message}",
                    pytrace=False,
                )


def check_prometheus_operator(doc: dict[str, Any]) -> None:
    from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

    body = strip(doc)
    model = {"ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule}[doc["kind"]].model_validate(body)
    # The models ignore unknown fields: a round trip must give every field back.
    again = model.model_dump(by_alias=True, exclude_none=True, mode="json")

    def missing(orig, back, path=""):
        if isinstance(orig, dict):
            for k, v in orig.items():
                assert isinstance(back, dict) and k in back, f"{doc['kind']} field {path}.{k} is unknown"
                missing(v, back[k], f"{path}.{k}")
        elif isinstance(orig, list):
            for i, (a, b) in enumerate(zip(orig, back)):
                missing(a, b, f"{path}[{i}]")

    missing(body, again)


# The fields of a cert-manager.io/v1 Certificate (cert-manager 1.x), for the
# one CRD kubernetes-validate and the installed models do not know.
CERTIFICATE_SPEC_FIELDS = {
    "additionalOutputFormats", "commonName", "dnsNames", "duration", "emailAddresses",
    "encodeUsagesInRequest", "ipAddresses", "isCA", "issuerRef", "keystores", "literalSubject",
    "nameConstraints", "otherNames", "privateKey", "renewBefore", "renewBeforePercentage",
    "revisionHistoryLimit", "secretName", "secretTemplate", "subject", "uris", "usages",
}
CERTIFICATE_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}


def check_certificate(doc: dict[str, Any]) -> None:
    body = strip(doc)
    assert body["apiVersion"] == "cert-manager.io/v1"
    assert set(body) == {"apiVersion", "kind", "metadata", "spec"}
    spec = body["spec"]
    assert set(spec) <= CERTIFICATE_SPEC_FIELDS, set(spec) - CERTIFICATE_SPEC_FIELDS
    assert spec["secretName"] and spec["dnsNames"]
    assert set(spec["issuerRef"]) <= {"name", "kind", "group"} and spec["issuerRef"]["name"]
    assert set(spec["privateKey"]) <= {"algorithm", "encoding", "rotationPolicy", "size"}
    assert spec["privateKey"]["algorithm"] in ("RSA", "ECDSA", "Ed25519")
    assert set(spec["usages"]) <= CERTIFICATE_USAGES
    for key in ("duration", "renewBefore"):
        assert re.fullmatch(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+", spec[key]), spec[key]
    # metadata: what the Kubernetes schemas accept for any object.
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": body["metadata"]}, KUBE_VERSIONS[0], strict=True
    )


def test_counts_per_value_set(chart):
    # The release's resources; `helm test` hooks apart (below).
    kinds = lambda name: sorted(d["kind"] for d in rendered(chart, name) if not is_hook(d))  # noqa: E731
    assert kinds("defaults") == sorted(
        ["Deployment", "Deployment", "Service", "Service", "Service", "Service",
         "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount",
         "Secret", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy"]
    )
    assert kinds("minimal") == sorted(["Deployment", "Deployment", "Service", "Service", "Service", "Service", "Secret"])
    assert sorted(set(kinds("production"))) == sorted(
        ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount",
         "Ingress", "NetworkPolicy", "ServiceMonitor", "Secret", "PrometheusRule", "ConfigMap"]
    )
    assert sorted(set(kinds("operators"))) == sorted(
        ["Deployment", "Service", "PodDisruptionBudget", "ServiceAccount", "HTTPRoute", "GRPCRoute",
         "NetworkPolicy", "ServiceMonitor", "Secret", "PrometheusRule", "ConfigMap"]
    )
    for name in VALUE_SETS:
        hooks = [(d["kind"], d["metadata"]["name"]) for d in rendered(chart, name) if is_hook(d)]
        assert hooks == [("Pod", f"{RELEASE}-test")], (name, hooks)
    # Off by default: the PrometheusRule, the dashboard, the routes.
    assert not {"PrometheusRule", "ConfigMap", "HTTPRoute", "GRPCRoute"} & set(kinds("defaults"))
    assert "StatefulSet" in kinds("embedded-redis")
    assert "Secret" not in kinds("existing-secrets")
    assert "Secret" not in kinds("insecure")
    assert [d["metadata"]["name"] for d in find(rendered(chart, "mtls-only"), "Secret")] == [f"{RELEASE}-auth"]
    assert kinds("mtls-cert-manager").count("Certificate") == 1


# --- content -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_client_service_has_no_session_affinity(chart, name):
    docs = rendered(chart, name)
    for svc in find(docs, "Service"):
        assert svc["spec"].get("sessionAffinity", "None") == "None", svc["metadata"]["name"]
        assert "sessionAffinityConfig" not in svc["spec"]
    client = one(docs, "Service", GATEWAY)
    assert [p["targetPort"] for p in client["spec"]["ports"]] == ["http"]
    for ing in find(docs, "Ingress"):
        for key in ing["metadata"]["annotations"]:
            assert "affinity" not in key and "sticky" not in key, key


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_selectors_match_labels(chart, name):
    docs = rendered(chart, name)
    pods = {w["metadata"]["name"]: pod_labels(w) for w in workloads(docs)}
    port_names = {
        w["metadata"]["name"]: {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for w in workloads(docs)
    }
    for w in workloads(docs):
        sel = w["spec"]["selector"]["matchLabels"]
        assert selects(sel, pod_labels(w)), w["metadata"]["name"]
        # A workload's selector picks its own pods only.
        assert [n for n, labels in pods.items() if selects(sel, labels)] == [w["metadata"]["name"]]
    expected = {
        GATEWAY: GATEWAY, f"{RELEASE}-api": GATEWAY, f"{RELEASE}-peers": GATEWAY,
        f"{RELEASE}-metrics": GATEWAY,
        COORDINATOR: COORDINATOR, f"{RELEASE}-redis": f"{RELEASE}-redis",
    }
    for svc in find(docs, "Service"):
        name_ = svc["metadata"]["name"]
        matched = [n for n, labels in pods.items() if selects(svc["spec"]["selector"], labels)]
        assert matched == [expected[name_]], (name_, matched)
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in port_names[matched[0]], (name_, p)
    for pdb in find(docs, "PodDisruptionBudget"):
        assert [n for n, l in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"], l)] == [GATEWAY]
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", GATEWAY)
        assert "replicas" not in one(docs, "Deployment", GATEWAY)["spec"], "the HPA owns the replica count"
    for ing in find(docs, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = one(docs, "Service", backend["name"])
                assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    monitors = find(docs, "ServiceMonitor")
    scraped = set()
    for sm in monitors:
        services = [s for s in find(docs, "Service") if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(services) == 1, (sm["metadata"]["name"], [s["metadata"]["name"] for s in services])
        scraped.add(services[0]["metadata"]["name"])
        assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
    if monitors:
        values = helm_values(chart, name)
        want = {f"{RELEASE}-metrics"}
        if values["coordinator"]["dashboard"]["enabled"]:
            want.add(COORDINATOR)
        assert scraped == want


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_gateway_pod(chart, name):
    docs = rendered(chart, name)
    values = helm_values(chart, name)
    dep = one(docs, "Deployment", GATEWAY)
    spec = dep["spec"]["template"]["spec"]
    gw = container(dep, "gateway")
    args = gw["args"]
    env = {e["name"]: e for e in gw["env"]}

    # Probes: readiness on /readyz, liveness on /healthz, both on the HTTP port.
    http_port = next(p for p in gw["ports"] if p["name"] == "http")["containerPort"]
    assert flag(args, "--listen") == f"0.0.0.0:{http_port}"
    assert gw["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gw["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    # Node id from the pod name; advertised addresses from the pod IP.
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    ports = {p["name"]: p["containerPort"] for p in gw["ports"]}
    assert flag(args, "--node-id") == "$(POD_NAME)"
    # Three listeners: clients, the node-to-node service, the Push API.
    assert flag(args, "--grpc-listen") == f"0.0.0.0:{ports['node']}"
    assert flag(args, "--advertise-grpc") == f"$(POD_IP):{ports['node']}"
    assert flag(args, "--api-listen") == f"0.0.0.0:{ports['api']}"
    assert len({ports["http"], ports["node"], ports["api"]}) == 3
    if values["gateway"]["ports"]["metrics"]:
        assert flag(args, "--metrics-listen") == f"0.0.0.0:{ports['metrics']}"
    else:
        assert "metrics" not in ports and flag(args, "--metrics-listen") is None
    assert flag(args, "--advertise-http") == f"$(POD_IP):{http_port}"
    assert flag(args, "--coordinator") == f"{COORDINATOR}:{values['coordinator']['port']}"

    # Drain: preStop, then the drain delay, then the shutdown timeout, all
    # inside the grace period; readiness turns off within the drain delay.
    pre_stop = gw["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_ms = int(flag(args, "--drain-delay"))
    shutdown_ms = int(flag(args, "--shutdown-timeout"))
    assert pre_stop > 0 and drain_ms > 0
    assert spec["terminationGracePeriodSeconds"] > pre_stop + (drain_ms + shutdown_ms) / 1000
    rp = gw["readinessProbe"]
    assert drain_ms >= rp["periodSeconds"] * rp["failureThreshold"] * 1000
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    # securityContext: non-root, read-only root, no escalation, no capabilities.
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = gw["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False

    # Resources, anti-affinity across nodes and zones.
    assert gw["resources"]["requests"]["cpu"] and gw["resources"]["limits"]["memory"]
    mode = values["gateway"]["antiAffinity"]
    if mode == "none":
        assert "affinity" not in spec
    else:
        anti = spec["affinity"]["podAntiAffinity"]
        keys = [t["podAffinityTerm"]["topologyKey"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
        keys += [t["topologyKey"] for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])]
        assert set(keys) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        if mode == "hard":
            assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"

    # Secrets never as flags or plain env values.
    for arg in args:
        assert not arg.startswith(("--api-token=", "--jwt-hs256-secret=")), arg
    for e in gw["env"]:
        if e["name"] in ("RINGWAY_API_TOKEN", "RINGWAY_JWT_HS256_SECRET", "RINGWAY_CLUSTER_SECRET_FILE"):
            pytest.fail(f"secret in env: {e}")
    # A cluster credential, or the explicit opt-out, and never both.
    secured = flag(args, "--cluster-secret-file") or flag(args, "--cluster-tls-cert")
    assert bool(secured) != ("--insecure-cluster" in args)
    assert ("--insecure-cluster" in args) == values["cluster"]["insecure"]
    # Redis password (when any) from a Secret, as a mounted file: never in
    # a URL or the environment.
    urls = env["RINGWAY_REDIS_URL"]["value"].split(",")
    assert not any(re.search(r"://[^/@]*:[^/@]*@", u) for u in urls), urls
    assert "REDIS_PASSWORD" not in env
    assert env["RINGWAY_REDIS_MODE"]["value"] == values["redis"]["mode"]
    if values["redis"]["auth"]["existingSecret"]:
        path = env["RINGWAY_REDIS_PASSWORD_FILE"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in gw.get("volumeMounts", [])}
        assert mounts.get(path.rsplit("/", 1)[0]) == "redis-auth", (path, mounts)
    else:
        assert "RINGWAY_REDIS_PASSWORD_FILE" not in env


def helm_values(chart, name: str) -> dict[str, Any]:
    return chart.merge_values(copy.deepcopy(VALUE_SETS[name]))


def test_redis_modes_reach_both_binaries(chart):
    """Cluster and Sentinel URLs, the mode, the password file and the TLS
    files, the same for the gateway and the coordinator."""
    for name, workload, cname in [("redis-cluster-tls", GATEWAY, "gateway"), ("redis-cluster-tls", COORDINATOR, "coordinator"),
                                  ("redis-sentinel", GATEWAY, "gateway"), ("redis-sentinel", COORDINATOR, "coordinator")]:
        docs = rendered(chart, name)
        dep = one(docs, "Deployment", workload)
        c = container(dep, cname)
        env = {e["name"]: e.get("value") for e in c["env"]}
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert env["RINGWAY_REDIS_PASSWORD_FILE"] == "/etc/ringway/redis-auth/redis-password"
        assert volumes["redis-auth"]["secret"]["secretName"] == "redis-auth"
        assert mounts["redis-auth"] == "/etc/ringway/redis-auth"
        if name == "redis-cluster-tls":
            assert env["RINGWAY_REDIS_MODE"] == "cluster"
            assert env["RINGWAY_REDIS_URL"].split(",") == [
                "rediss://redis-0.redis.data.svc:6379", "rediss://redis-1.redis.data.svc:6379",
                "rediss://redis-2.redis.data.svc:6379"]
            assert env["RINGWAY_REDIS_CA_FILE"] == "/etc/ringway/redis-tls/ca.crt"
            assert env["RINGWAY_REDIS_CLIENT_CERT"] == "/etc/ringway/redis-tls/tls.crt"
            assert env["RINGWAY_REDIS_CLIENT_KEY"] == "/etc/ringway/redis-tls/tls.key"
            assert [i["key"] for i in volumes["redis-tls"]["secret"]["items"]] == ["ca.crt", "tls.crt", "tls.key"]
            assert mounts["redis-tls"] == "/etc/ringway/redis-tls"
            assert "RINGWAY_REDIS_SENTINEL_MASTER" not in env
        else:
            assert env["RINGWAY_REDIS_MODE"] == "sentinel"
            assert env["RINGWAY_REDIS_SENTINEL_MASTER"] == "ringway"
            assert env["RINGWAY_REDIS_WAIT_REPLICAS"] == "1"
            assert env["RINGWAY_REDIS_URL"].split(",") == [
                "redis://ringway@sentinel-0.data.svc:26379", "redis://ringway@sentinel-1.data.svc:26379",
                "redis://ringway@sentinel-2.data.svc:26379"]
            assert "redis-tls" not in volumes and "RINGWAY_REDIS_CA_FILE" not in env


def test_production_specifics(chart):
    docs = rendered(chart, "production")
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    args, env = gw["args"], {e["name"]: e.get("value") for e in gw["env"]}
    assert flag(args, "--cors-origin") == "https://app.example.com,https://admin.example.com"
    assert flag(args, "--namespace") == "/,/chat"
    assert flag(args, "--jwt-rs256-public-key") == "/etc/ringway/jwt/rs256-public-key.pem"
    assert flag(args, "--jwt-audience") == "chat"
    assert flag(args, "--api-token-file") == "/etc/ringway/api-tokens/api-tokens"
    assert "--max-poll-packets=32" in args
    assert env["RINGWAY_REDIS_URL"] == "redis://ringway@redis-primary.data.svc:6379/2"
    assert env["RINGWAY_REDIS_PASSWORD_FILE"] == "/etc/ringway/redis-auth/redis-password"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_SERVICE_NAME"] == "ringway-gateway"
    assert "deployment.environment=prod" in env["OTEL_RESOURCE_ATTRIBUTES"]
    assert "k8s.pod.name=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]
    assert container(one(docs, "Deployment", GATEWAY), "gateway")["image"] == "registry.example.com/ringway:0.1.0"

    secret = one(docs, "Secret", f"{RELEASE}-auth")
    assert base64.b64decode(secret["data"]["api-tokens"]).decode() == "token-a\ntoken-b\n"
    assert base64.b64decode(secret["data"]["rs256-public-key.pem"]).decode() == RS256_PUBLIC_KEY

    # Client Ingress: WebSocket timeouts above the ping interval, no affinity.
    ing = one(docs, "Ingress", GATEWAY)
    ann = ing["metadata"]["annotations"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 25
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) > 25
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/socket.io/"
    # API Ingress: the Push service's path only, gRPC to the backend.
    api = one(docs, "Ingress", f"{RELEASE}-api")
    paths = [p["path"] for r in api["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths == ["/ringway.v1.Push"]
    assert api["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"

    # HPA: CPU and sessions per pod.
    hpa = one(docs, "HorizontalPodAutoscaler", GATEWAY)
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "ringway_sessions"
    assert metrics["Pods"]["pods"]["target"] == {"type": "AverageValue", "averageValue": "25000"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60

    svc = one(docs, "Service", GATEWAY)
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local"
    # Never a public gRPC port.
    for s in find(docs, "Service"):
        if s["metadata"]["name"] != GATEWAY:
            assert s["spec"]["type"] == "ClusterIP"
    peers = one(docs, "Service", f"{RELEASE}-peers")
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True

    # A standby coordinator: Recreate, spread over nodes; ready only when
    # acting (/readyz), alive either way (/healthz), on the dashboard port.
    coord = one(docs, "Deployment", COORDINATOR)
    assert coord["spec"]["replicas"] == 2
    assert coord["spec"]["strategy"]["type"] == "Recreate"
    c = container(coord, "coordinator")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "dashboard"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "dashboard"}


@pytest.mark.parametrize("name", [n for n, v in VALUE_SETS.items() if v.get("networkPolicy", {}).get("enabled", True)])
def test_network_policies(chart, name):
    docs = rendered(chart, name)
    values = helm_values(chart, name)
    pods = {w["metadata"]["name"]: pod_labels(w) for w in workloads(docs)}
    # The `helm test` pod has a policy of its own.
    pods.update({p["metadata"]["name"]: p["metadata"]["labels"] for p in find(docs, "Pod")})
    policies = {p["metadata"]["name"]: p for p in find(docs, "NetworkPolicy")}
    embedded = values["redis"]["embedded"]["enabled"]
    tests = values["tests"]["enabled"]
    assert set(policies) == ({GATEWAY, COORDINATOR} | ({f"{RELEASE}-redis"} if embedded else set())
                             | ({TEST} if tests else set()))

    def peer_pods(peer):
        if set(peer) != {"podSelector"}:
            return None  # a namespace or an ipBlock: outside the release
        return sorted(n for n, l in pods.items() if selects(peer["podSelector"].get("matchLabels", {}), l))

    for pname, pol in policies.items():
        assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert [n for n, l in pods.items() if selects(pol["spec"]["podSelector"]["matchLabels"], l)] == [pname]
        # Every rule names its ports: nothing is open on all ports.
        for rule in pol["spec"].get("ingress", []) + pol["spec"].get("egress", []):
            assert rule.get("ports"), (pname, rule)

    gw = policies[GATEWAY]["spec"]
    for rule in gw["ingress"]:
        assert len(rule["ports"]) == 1, rule
    ingress = [(r["ports"][0]["port"], r.get("from")) for r in gw["ingress"]]
    rules = lambda port: [f for p, f in ingress if p == port]  # noqa: E731
    np = values["networkPolicy"]
    ports = values["gateway"]["ports"]
    want_ports = {"http", "node", "api"} | ({"metrics"} if ports["metrics"] else set())
    assert set(p for p, _ in ingress) == want_ports
    assert rules("http")[0] == (np["clients"] or None)
    if np["clients"] and tests:
        # Clients restricted: the test pod gets a rule of its own.
        assert [peer_pods(p) for p in rules("http")[1]] == [[TEST]]
    # The node port: the other gateways, nobody else.
    assert [[[peer_pods(p) for p in f] for f in rules("node")]] == [[[[GATEWAY]]]]
    # The API port: the API clients, nobody else (never the whole world).
    assert rules("api") == [np["apiClients"]]
    # The metrics port (when separate): Prometheus (anyone when unset).
    if ports["metrics"]:
        assert rules("metrics") == [np["prometheus"] or None]

    egress_ports = {p["port"] for r in gw["egress"] for p in r["ports"]}
    allowed = {ports["node"], values["coordinator"]["port"], 53,
               6379 if embedded else values["networkPolicy"]["redisPort"]}
    if values["upstream"]["url"]:
        allowed.add(int(values["upstream"]["url"].rsplit(":", 1)[1]))
    if values["telemetry"]["otlpEndpoint"]:
        allowed.add(int(values["telemetry"]["otlpEndpoint"].rsplit(":", 1)[1]))
    assert egress_ports == allowed
    to = {r["ports"][0]["port"]: r.get("to") for r in gw["egress"]}
    assert [peer_pods(p) for p in to[ports["node"]]] == [[GATEWAY]]
    assert [peer_pods(p) for p in to[values["coordinator"]["port"]]] == [[COORDINATOR]]
    if embedded:
        assert [peer_pods(p) for p in to[6379]] == [[f"{RELEASE}-redis"]]

    coord = policies[COORDINATOR]["spec"]
    # gRPC from the gateways only; the dashboard port (when on) from
    # networkPolicy.dashboard (anyone when empty: the kubelet's probes too).
    want = [("grpc", [[GATEWAY]])]
    if values["coordinator"]["dashboard"]["enabled"]:
        want.append(("dashboard", [peer_pods(p) for p in values["networkPolicy"]["dashboard"]]))
    assert [(r["ports"][0]["port"], [peer_pods(p) for p in r.get("from", [])]) for r in coord["ingress"]] == want
    assert {p["port"] for r in coord["egress"] for p in r["ports"]} <= allowed
    if embedded:
        redis = policies[f"{RELEASE}-redis"]["spec"]
        assert redis["egress"] == []
        assert [peer_pods(p) for p in redis["ingress"][0]["from"]] == [[GATEWAY], [COORDINATOR]]
    if tests:
        # The test pod: nothing in; out to the gateways' http port and DNS.
        test = policies[TEST]["spec"]
        assert test["ingress"] == []
        out = {r["ports"][0]["port"]: [peer_pods(p) for p in r.get("to", [])] for r in test["egress"]}
        assert out.pop(ports["http"]) == [[GATEWAY]]
        assert set(out) == ({53} if np["dns"]["enabled"] else set())


# --- the cluster credential ---------------------------------------------------


def pod_volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}


def mounted_file(workload: dict[str, Any], cname: str, path: str) -> tuple[str, str]:
    """The (Secret, key) a file path of a container comes from."""
    c = container(workload, cname)
    volumes = pod_volumes(workload)
    for m in c.get("volumeMounts", []):
        if path.startswith(m["mountPath"] + "/"):
            rest = path[len(m["mountPath"]) + 1:]
            secret = volumes[m["name"]]["secret"]
            item = next(i for i in secret["items"] if i["path"] == rest)
            assert m["readOnly"] is True
            return secret["secretName"], item["key"]
    raise AssertionError(f"{path} is not mounted in {cname}")


def both(docs) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) of the gateways and the coordinator."""
    return [
        (one(docs, "Deployment", GATEWAY), container(one(docs, "Deployment", GATEWAY), "gateway")),
        (one(docs, "Deployment", COORDINATOR), container(one(docs, "Deployment", COORDINATOR), "coordinator")),
    ]


def checksum(workload: dict[str, Any]) -> str:
    return workload["spec"]["template"]["metadata"]["annotations"]["checksum/cluster"]


def test_default_render_generates_a_cluster_secret_for_both(chart):
    """With no cluster values: a Secret of the release with 48 random
    characters, mounted in the gateways and the coordinator and passed to
    both; no TLS, not insecure; the pods' checksum follows the value."""
    docs = render_docs(chart, {})
    secret = one(docs, "Secret", f"{RELEASE}-cluster")
    value = base64.b64decode(secret["data"]["cluster-secret"])
    assert len(value) >= 32 and re.fullmatch(rb"[A-Za-z0-9]{48}", value)
    for workload, c in both(docs):
        path = flag(c["args"], "--cluster-secret-file")
        assert path == "/etc/ringway/cluster-secret/cluster-secret"
        assert mounted_file(workload, c["name"], path) == (f"{RELEASE}-cluster", "cluster-secret")
        assert "--insecure-cluster" not in c["args"]
        assert not any(a.startswith("--cluster-tls") for a in c["args"])
        # The same value the Secret holds (computed once per render).
        want = "insecure=false\nsecret=" + secret["data"]["cluster-secret"]
        assert checksum(workload) == hashlib.sha256(want.encode()).hexdigest()
    # Without a cluster to look the Secret up in (helm template), each
    # render draws a new value; `helm upgrade` reuses the stored one.
    again = one(render_docs(chart, {}), "Secret", f"{RELEASE}-cluster")
    assert again["data"]["cluster-secret"] != secret["data"]["cluster-secret"]


def test_cluster_secret_from_an_existing_secret(chart):
    docs = rendered(chart, "existing-secrets")
    assert not find(docs, "Secret", f"{RELEASE}-cluster")
    sums = set()
    for workload, c in both(docs):
        path = flag(c["args"], "--cluster-secret-file")
        assert path == "/etc/ringway/cluster-secret/secret"
        assert mounted_file(workload, c["name"], path) == ("ringway-cluster-credential", "secret")
        sums.add(checksum(workload))
    assert len(sums) == 1
    # Another Secret: the pods roll.
    other = {"cluster": {"secret": {"existingSecret": "rotated", "existingSecretKey": "secret"}}}
    assert checksum(one(render_docs(chart, other), "Deployment", GATEWAY)) not in sums


def test_insecure_cluster_is_explicit_and_has_no_credential(chart, tmp_path):
    docs = rendered(chart, "insecure")
    assert not find(docs, "Secret")
    for workload, c in both(docs):
        assert "--insecure-cluster" in c["args"]
        assert not any(a.startswith("--cluster-") for a in c["args"])
        assert not {"cluster-secret", "cluster-tls"} & set(pod_volumes(workload))
    out = chart.render(values=copy.deepcopy(VALUE_SETS["insecure"]), name=RELEASE, namespace=NAMESPACE)
    notes = next(v for k, v in out.items() if k.endswith("NOTES.txt"))
    assert "NONE: cluster.insecure=true" in notes
    # Without it, a release with no credential does not render, and the
    # binaries refuse to start without one either.
    with pytest.raises(helm.HelmRenderError, match="the cluster needs a credential"):
        chart.render(values={"cluster": {"secret": {"enabled": False}}}, name=RELEASE, namespace=NAMESPACE)
    c = container(one(docs, "Deployment", GATEWAY), "gateway")
    stripped = dict(c, args=[a for a in c["args"] if a != "--insecure-cluster"])
    with pytest.raises(AssertionError, match="needs a cluster credential"):
        run_check_config(binary("ringway-gateway"), stripped, pod_env(c), {})


def check_mtls(docs, tls_secret: str, server_name: str) -> None:
    for workload, c in both(docs):
        args = c["args"]
        for f, key in (("--cluster-tls-ca", "ca.crt"), ("--cluster-tls-cert", "tls.crt"), ("--cluster-tls-key", "tls.key")):
            path = flag(args, f)
            assert path == f"/etc/ringway/cluster-tls/{key}"
            assert mounted_file(workload, c["name"], path) == (tls_secret, key)
        assert "--insecure-cluster" not in args
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    assert flag(gw["args"], "--cluster-tls-server-name") == server_name
    # The coordinator has no such flag: it only serves (and is called
    # with the gateways' server name).
    coord = container(one(docs, "Deployment", COORDINATOR), "coordinator")
    assert flag(coord["args"], "--cluster-tls-server-name") is None


def test_mutual_tls_from_cert_manager(chart):
    docs = rendered(chart, "mtls-cert-manager")
    server_name = f"{RELEASE}-cluster.{NAMESPACE}.svc"
    cert = one(docs, "Certificate", f"{RELEASE}-cluster-tls")
    spec = cert["spec"]
    assert spec["secretName"] == f"{RELEASE}-cluster-tls"
    # The name the gateways check is in the certificate.
    assert server_name in spec["dnsNames"]
    assert spec["issuerRef"] == {"name": "ringway-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert {"server auth", "client auth"} <= set(spec["usages"])
    check_mtls(docs, spec["secretName"], server_name)
    # On top of the generated shared secret (both credentials are checked).
    for _, c in both(docs):
        assert flag(c["args"], "--cluster-secret-file")
    # Another server name goes into the certificate too.
    values = copy.deepcopy(VALUE_SETS["mtls-cert-manager"])
    values["cluster"]["tls"]["serverName"] = "members.ringway.internal"
    docs = render_docs(chart, values)
    assert one(docs, "Certificate", f"{RELEASE}-cluster-tls")["spec"]["dnsNames"] == ["members.ringway.internal"]
    check_mtls(docs, f"{RELEASE}-cluster-tls", "members.ringway.internal")


def test_mutual_tls_from_an_existing_secret(chart):
    docs = rendered(chart, "mtls-only")
    assert not find(docs, "Certificate")
    check_mtls(docs, "ringway-members-tls", "members.ringway.internal")
    # mTLS alone: no shared secret, none created.
    assert not find(docs, "Secret", f"{RELEASE}-cluster")
    for workload, c in both(docs):
        assert flag(c["args"], "--cluster-secret-file") is None
        assert "cluster-secret" not in pod_volumes(workload)


# --- ports, Services and policies ----------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_api_service_targets_the_api_port_and_peers_only_the_node_port(chart, name):
    docs = rendered(chart, name)
    values = helm_values(chart, name)
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    ports = {p["name"]: p["containerPort"] for p in gw["ports"]}
    assert ports["node"] == values["gateway"]["ports"]["node"]
    assert ports["api"] == values["gateway"]["ports"]["api"]
    api = one(docs, "Service", f"{RELEASE}-api")
    assert api["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in api["spec"]["ports"]] == [
        ("api", values["apiService"]["port"], "api")
    ]
    peers = one(docs, "Service", f"{RELEASE}-peers")
    assert [(p["name"], p["port"], p["targetPort"]) for p in peers["spec"]["ports"]] == [
        ("node", ports["node"], "node")
    ]
    # No Service but the headless peers one reaches the node port.
    for svc in find(docs, "Service"):
        if svc["metadata"]["name"] != f"{RELEASE}-peers" and selects(svc["spec"]["selector"], pod_labels(one(docs, "Deployment", GATEWAY))):
            assert all(p["targetPort"] not in ("node", ports["node"]) for p in svc["spec"]["ports"]), svc["metadata"]["name"]
    for ing in find(docs, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] != f"{RELEASE}-peers"
    if values["apiIngress"]["enabled"]:
        backend = one(docs, "Ingress", f"{RELEASE}-api")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
        assert backend["service"] == {"name": f"{RELEASE}-api", "port": {"name": "api"}}


def test_network_policy_is_on_by_default(chart):
    """Default values: the node port admits the gateways only, the API port
    only networkPolicy.apiClients, the coordinator's gRPC port only the
    gateways."""
    docs = rendered(chart, "defaults")
    gw = one(docs, "NetworkPolicy", GATEWAY)["spec"]
    by_port = {r["ports"][0]["port"]: r.get("from") for r in gw["ingress"]}
    gateway_sel = one(docs, "Deployment", GATEWAY)["spec"]["selector"]["matchLabels"]
    assert by_port["node"] == [{"podSelector": {"matchLabels": gateway_sel}}]
    assert by_port["api"] == [{"podSelector": {"matchLabels": {"ringway.io/api-client": "true"}}}]
    assert by_port["http"] is None  # clients: anyone, through the Service
    assert set(by_port) == {"http", "node", "api"}
    coord = one(docs, "NetworkPolicy", COORDINATOR)["spec"]
    grpc = next(r for r in coord["ingress"] if r["ports"][0]["port"] == "grpc")
    assert grpc["from"] == [{"podSelector": {"matchLabels": gateway_sel}}]
    # Restricting the API clients replaces the default.
    apps = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
    docs = render_docs(chart, {"networkPolicy": {"apiClients": apps}})
    gw = one(docs, "NetworkPolicy", GATEWAY)["spec"]
    assert [r["from"] for r in gw["ingress"] if r["ports"][0]["port"] == "api"] == [apps]
    # Turned off: none.
    assert not find(rendered(chart, "minimal"), "NetworkPolicy")


def test_separate_metrics_port(chart):
    docs = rendered(chart, "mtls-cert-manager")
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    assert flag(gw["args"], "--metrics-listen") == "0.0.0.0:9090"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in gw["ports"]
    svc = one(docs, "Service", f"{RELEASE}-metrics")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("metrics", 9090, "metrics")]
    sm = one(docs, "ServiceMonitor", GATEWAY)
    assert selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # Without it, the metrics Service points at the HTTP port.
    docs = rendered(chart, "production")
    svc = one(docs, "Service", f"{RELEASE}-metrics")
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("metrics", 3000, "http")]
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    assert flag(gw["args"], "--metrics-listen") is None


def test_embedded_redis_is_marked_not_for_production(chart):
    docs = rendered(chart, "embedded-redis")
    sts = one(docs, "StatefulSet", f"{RELEASE}-redis")
    assert sts["spec"]["replicas"] == 1
    assert "not-for-production" in " ".join(sts["metadata"]["annotations"])
    redis = container(sts, "redis")
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    url = next(e["value"] for e in gw["env"] if e["name"] == "RINGWAY_REDIS_URL")
    assert url == f"redis://{RELEASE}-redis:6379/0"
    notes = chart.render(values=VALUE_SETS["embedded-redis"], name=RELEASE, namespace=NAMESPACE)
    text = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
    assert "NOT FOR PRODUCTION" in text


def test_notes_tell_how_to_connect_and_where_the_dashboard_is(chart):
    for values, expect in (
        ({}, ["port-forward svc/ringway-gateway", "socket.io-client", "port-forward svc/ringway-coordinator 7080:7080",
              "helm test ringway -n realtime --logs", "gets an echo back"]),
        (VALUE_SETS["operators"], ['io("https://rt.example.com"', "GRPCRoute ringway-api (push.example.com)"]),
        (VALUE_SETS["upstream"], ["/readyz and a handshake"]),
        (VALUE_SETS["production"], ['io("https://rt.example.com"', "push.example.com", "ringway-api.realtime.svc:7200"]),
        (NO_DASHBOARD, ["dashboard is off"]),
    ):
        out = chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
        text = next(v for k, v in out.items() if k.endswith("NOTES.txt"))
        for e in expect:
            assert e in text, (e, text)


# --- bad values --------------------------------------------------------------

BAD_VALUES = {
    "string replicas": {"gateway": {"replicas": "3"}},
    "unknown top-level key": {"replicaCount": 3},
    "unknown nested key": {"gateway": {"drain": {"drainDelay": 5000}}},
    "typo in service": {"service": {"sessionAffinity": "ClientIP"}},
    "wrong enum": {"logFormat": "xml"},
    "bool as string": {"ingress": {"enabled": "yes"}},
    "unknown redis mode": {"redis": {"mode": "replicated"}},
    "two urls in one": {"redis": {"url": "redis://a:6379,redis://b:6379"}},
    "sentinel redis url": {"redis": {"url": "redis+sentinel://sentinel:26379/mymaster"}},
    "negative port": {"gateway": {"ports": {"http": -1}}},
    "namespace without slash": {"gateway": {"config": {"namespaces": ["chat"]}}},
    "unknown parser": {"gateway": {"config": {"parser": "json"}}},
    "bad pdb": {"podDisruptionBudget": {"maxUnavailable": "half"}},
    "comma in a resource attribute": {"telemetry": {"resourceAttributes": {"team": "a,b"}}},
    "extra arg that is no flag": {"gateway": {"extraArgs": ["verbose"]}},
    "the old single gRPC port": {"gateway": {"ports": {"grpc": 7100}}},
    "unknown cluster key": {"cluster": {"sharedSecret": "x" * 48}},
    "unknown cluster.secret key": {"cluster": {"secret": {"value": "x" * 48}}},
    "unknown cluster.tls key": {"cluster": {"tls": {"enabled": True, "issuer": "ca"}}},
    "unknown issuerRef key": {"cluster": {"tls": {"certManager": {"issuerRef": {"namespace": "x"}}}}},
    "insecure as a string": {"cluster": {"insecure": "true"}},
    "allowEio3 as a string": {"gateway": {"config": {"allowEio3": "yes"}}},
    "server name with a port": {"cluster": {"tls": {"serverName": "ringway:7100"}}},
    "bad certificate duration": {"cluster": {"tls": {"certManager": {"duration": "90d"}}}},
    "metrics port out of range": {"gateway": {"ports": {"metrics": 70000}}},
    "zero max members": {"coordinator": {"maxMembers": 0}},
    "unknown tests key": {"tests": {"image": "curlimages/curl:8.16.0"}},
    "test timeout too short": {"tests": {"timeoutSeconds": 1}},
    "unknown alert": {"prometheusRule": {"alerts": {"cpuHigh": {"enabled": True}}}},
    "threshold on an alert without one": {"prometheusRule": {"alerts": {"gatewayNotReady": {"threshold": 1}}}},
    "bad alert duration": {"prometheusRule": {"alerts": {"gatewayNotReady": {"for": "1 minute"}}}},
    "runbook url with a trailing slash": {"prometheusRule": {"runbookBaseUrl": "https://x.example.com/docs/"}},
    "bad dashboard namespace": {"grafanaDashboard": {"namespace": "Monitoring"}},
    "dashboard label value not a string": {"grafanaDashboard": {"labelValue": 1}},
    "bad spread policy": {"gateway": {"topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "Never"}]}},
    "spread without topologyKey": {"coordinator": {"topologySpreadConstraints": [
        {"maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"}]}},
    "startup probe typo": {"gateway": {"startupProbe": {"failureTreshold": 3}}},
    "container without a name": {"gateway": {"extraContainers": [{"image": "busybox"}]}},
    "mount without a path": {"coordinator": {"extraVolumeMounts": [{"name": "x"}]}},
    "route hostname with a port": {"httpRoute": {"hostnames": ["rt.example.com:443"]}},
    "unknown parentRef key": {"grpcRoute": {"parentRefs": [{"name": "gw", "listener": "https"}]}},
    "bad route timeout": {"httpRoute": {"timeouts": {"request": "1 hour"}}},
    "route session persistence": {"httpRoute": {"sessionPersistence": {"type": "Cookie"}}},
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_rejects_bad_values(chart, case):
    values = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(copy.deepcopy(values))
    with pytest.raises(helm.HelmValuesError):
        chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    report = helm.lint(str(CHART), copy.deepcopy(values), strict=True)
    assert [m for m in report["messages"] if m["severity"] == 3], report


BAD_COMBINATIONS = {
    "grace period too short": ({"gateway": {"terminationGracePeriodSeconds": 20}}, "terminationGracePeriodSeconds"),
    "upstream and jwt": (
        {"upstream": {"url": "http://b:1"}, "auth": {"jwt": {"algorithm": "hs256", "hs256Secret": "x"}}},
        "cannot be combined",
    ),
    "jwt without key": ({"auth": {"jwt": {"algorithm": "rs256"}}}, "rs256PublicKey"),
    "no redis": ({"redis": {"url": ""}}, "redis.url is required"),
    "sentinel without master": ({"redis": {"mode": "sentinel"}}, "redis.sentinelMaster"),
    "seed urls of one server": ({"redis": {"extraUrls": ["redis://b:6379"]}}, "redis.extraUrls"),
    "redis tls without rediss": ({"redis": {"tls": {"existingSecret": "t"}}}, "rediss://"),
    "ingress timeout below ping": ({"ingress": {"enabled": True, "timeoutSeconds": 20}}, "ingress.timeoutSeconds"),
    "queue below payload": ({"gateway": {"config": {"maxQueuedBytes": 10}}}, "maxQueuedBytes"),
    "no cluster credential": ({"cluster": {"secret": {"enabled": False}}}, "the cluster needs a credential"),
    "insecure with tls": (
        {"cluster": {"insecure": True, "tls": {"enabled": True, "existingSecret": "t"}}},
        "cluster.insecure cannot be combined with cluster.tls.enabled",
    ),
    "insecure with a secret": (
        {"cluster": {"insecure": True, "secret": {"existingSecret": "s"}}},
        "cluster.insecure cannot be combined with cluster.secret.existingSecret",
    ),
    "tls without a certificate": ({"cluster": {"tls": {"enabled": True}}}, "cluster.tls.enabled needs"),
    "tls with two certificates": (
        {"cluster": {"tls": {"enabled": True, "existingSecret": "t", "certManager": {"issuerRef": {"name": "ca"}}}}},
        "either existingSecret or certManager.issuerRef.name",
    ),
    "api on the node port": ({"gateway": {"ports": {"api": 7100}}}, "must be different ports"),
    "metrics on the http port": ({"gateway": {"ports": {"metrics": 3000}}}, "must be different ports"),
    "max members below the HPA": ({"coordinator": {"maxMembers": 10}}, "coordinator.maxMembers (10)"),
    "httpRoute without parentRefs": ({"httpRoute": {"enabled": True}}, "httpRoute.enabled needs httpRoute.parentRefs"),
    "grpcRoute without parentRefs": ({"grpcRoute": {"enabled": True}}, "grpcRoute.enabled needs grpcRoute.parentRefs"),
    "extra volume named as the chart's": (
        {"gateway": {"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}},
        'gateway.extraVolumes: the volume name "tmp" is taken',
    ),
    "extra volume listed twice": (
        {"coordinator": {"extraVolumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]}},
        'coordinator.extraVolumes: the volume name "a" is taken',
    ),
    "mount of a missing volume": (
        {"gateway": {"extraVolumeMounts": [{"name": "nowhere", "mountPath": "/x"}]}},
        'gateway.extraVolumeMounts: no volume "nowhere"',
    ),
    "sidecar named as the gateway": (
        {"gateway": {"extraContainers": [{"name": "gateway", "image": "busybox"}]}},
        'gateway: the container name "gateway" is taken',
    ),
    "init container and sidecar alike": (
        {"coordinator": {"initContainers": [{"name": "x", "image": "busybox"}],
                         "extraContainers": [{"name": "x", "image": "busybox"}]}},
        'coordinator: the container name "x" is taken',
    ),
    "no rule left": (
        {"prometheusRule": {"enabled": True, "alerts": {k: {"enabled": False} for k in (
            "gatewayNotReady", "redisDegraded", "slowConsumers", "peerQueueDrops", "membershipBelowExpected",
            "registrySlow", "clusterAuthRefusals", "limitsRefusals", "noActingCoordinator")}}},
        "prometheusRule.enabled with every alert off and no extraRules",
    ),
}


@pytest.mark.parametrize("case", list(BAD_COMBINATIONS))
def test_bad_combinations_fail_rendering(chart, case):
    values, message = BAD_COMBINATIONS[case]
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


# --- the real binaries accept what the chart renders --------------------------

POD_NAME = "ringway-gateway-5d8f7c9b6-x2kqp"
POD_IP = "10.42.3.17"
SECRET_VALUES = {"REDIS_PASSWORD": "s3cr%40t"}
# The cluster secret of a Secret the user manages (48 bytes and a newline,
# as `head -c 36 /dev/urandom | base64` gives).
CLUSTER_SECRET = "q8Xo1cK7v0rY2m6JtQe4LwZb9HnUs3Df5Ga7Pk1Ri0Vx2Cy4\n"
# Stand-ins for tls.crt, tls.key and ca.crt (from cert-manager or the
# user's Secret): --check-config only checks that the three flags go
# together and does not read the files (the `cryptography` package, which
# could make real ones, is not among the test requirements); the pods read
# them at start.
TLS_FILES = {
    "ca.crt": "-----BEGIN CERTIFICATE-----\nTEST CA (not read by --check-config)\n-----END CERTIFICATE-----\n",
    "tls.crt": "-----BEGIN CERTIFICATE-----\nTEST MEMBER (not read by --check-config)\n-----END CERTIFICATE-----\n",
    "tls.key": "-----BEGIN PRIVATE KEY-----\nTEST KEY (not read by --check-config)\n-----END PRIVATE KEY-----\n",
}


def binary(name: str) -> Path | None:
    base = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = Path(os.environ.get("RINGWAY_BIN_DIR", base / "debug")) / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if os.environ.get("RINGWAY_CHART_REQUIRE_BINARIES") == "1":
        pytest.fail(f"{path} is missing (build the workspace first)")
    pytest.skip(f"{path} is missing: run the cargo tests first (they build it)")
    return None


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables only, $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def pod_env(c: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    fields = {"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE, "status.podIP": POD_IP}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = SECRET_VALUES.get(e["name"], "secret-value")
    return env


def secret_files(docs, workload, c, tmp: Path) -> dict[str, str]:
    """Writes the files of the container's Secret volumes under tmp, from
    the rendered Secret when the chart creates it, else test contents.
    Returns mountPath -> directory."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    mounts = {}
    for m in c.get("volumeMounts", []):
        vol = volumes[m["name"]]
        if "secret" not in vol:
            continue
        d = tmp / m["name"]
        d.mkdir()
        created = find(docs, "Secret", vol["secret"]["secretName"])
        for item in vol["secret"]["items"]:
            if created:
                data = base64.b64decode(created[0]["data"][item["key"]]).decode()
            elif m["name"] == "cluster-secret":
                data = CLUSTER_SECRET
            elif m["name"] in ("cluster-tls", "redis-tls"):
                data = TLS_FILES.get(item["key"], TLS_FILES["ca.crt"])
            elif "rs256" in item["key"] or item["path"].endswith(".pem"):
                data = RS256_PUBLIC_KEY
            elif "token" in item["key"]:
                data = "# Push API tokens\ntoken-one\ntoken-two\n"
            else:
                data = "a-long-shared-hs256-secret\n"
            (d / item["path"]).write_text(data)
        mounts[m["mountPath"]] = str(d)
    return mounts


def run_check_config(exe: Path, c: dict[str, Any], env: dict[str, str], mounts: dict[str, str]):
    args = [expand(a, env) for a in c["args"]]
    for mount, local in mounts.items():
        args = [a.replace(f"={mount}/", f"={local}/") for a in args]
    assert c["command"] == [f"/usr/local/bin/{exe.name}"]
    proc = subprocess.run(
        [str(exe), *args, "--check-config"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, f"{exe.name} refused the chart's configuration:\n{args}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_binaries_accept_rendered_configuration(chart, name, tmp_path):
    docs = rendered(chart, name)
    values = helm_values(chart, name)
    ports = values["gateway"]["ports"]
    dep = one(docs, "Deployment", GATEWAY)
    gw = container(dep, "gateway")
    env = pod_env(gw)
    (tmp_path / "gateway").mkdir()
    out = run_check_config(binary("ringway-gateway"), gw, env, secret_files(docs, dep, gw, tmp_path / "gateway"))
    assert f'node_id: Some(\n        "{POD_NAME}",' in out
    assert f'advertise_grpc: Some(\n        "{POD_IP}:{ports["node"]}",' in out
    assert f"grpc_listen: 0.0.0.0:{ports['node']}," in out
    assert f"api_listen: 0.0.0.0:{ports['api']}," in out
    assert 'coordinator: Some(\n        "ringway-coordinator:7000",' in out
    assert f"insecure_cluster: {str(values['cluster']['insecure']).lower()}," in out
    if ports["metrics"]:
        assert f"metrics_listen: Some(\n        0.0.0.0:{ports['metrics']}," in out
    if "RINGWAY_REDIS_PASSWORD_FILE" in env:
        assert "redis_password_file: Some(" in out
    if helm_values(chart, name)["auth"]["jwt"]["algorithm"] != "none":
        # --check-config loads the key: the mounted file is a valid one.
        assert "jwt_" in out

    coord_dep = one(docs, "Deployment", COORDINATOR)
    coord = container(coord_dep, "coordinator")
    (tmp_path / "coordinator").mkdir()
    mounts = secret_files(docs, coord_dep, coord, tmp_path / "coordinator")
    out = run_check_config(binary("ringway-coordinator"), coord, pod_env(coord), mounts)
    assert "listen: 0.0.0.0:7000" in out
    assert "s3cr" not in out, "the coordinator prints the Redis URL redacted"
    assert f"insecure_cluster: {str(values['cluster']['insecure']).lower()}," in out
    assert f"max_members: {values['coordinator']['maxMembers']}," in out


def test_coordinator_dashboard_flag_and_probes(chart, tmp_path):
    exe = binary("ringway-coordinator")
    docs = render_docs(chart, {})
    coord = container(one(docs, "Deployment", COORDINATOR), "coordinator")
    assert "--http-listen=0.0.0.0:7080" in coord["args"]
    assert coord["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "dashboard"}
    assert coord["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "dashboard"}
    svc = one(docs, "Service", COORDINATOR)
    assert {"grpc", "dashboard"} == {p["name"] for p in svc["spec"]["ports"]}
    dep = one(docs, "Deployment", COORDINATOR)
    run_check_config(exe, coord, pod_env(coord), secret_files(docs, dep, coord, tmp_path))
    # Off: no flag, no port, a TCP readiness check of the gRPC port only.
    docs = render_docs(chart, NO_DASHBOARD)
    coord = container(one(docs, "Deployment", COORDINATOR), "coordinator")
    assert not any(a.startswith("--http-listen") for a in coord["args"])
    assert coord["readinessProbe"]["tcpSocket"]["port"] == "grpc"
    assert "livenessProbe" not in coord
    svc = one(docs, "Service", COORDINATOR)
    assert {"grpc"} == {p["name"] for p in svc["spec"]["ports"]}


def test_parser_reaches_every_gateway(chart):
    """One parser per release: the flag on every gateway, the default
    parser unless set."""
    for values, expected in (({}, "--parser=default"),
                             ({"gateway": {"config": {"parser": "msgpack"}}}, "--parser=msgpack")):
        docs = render_docs(chart, values)
        gw = container(one(docs, "Deployment", GATEWAY), "gateway")
        assert [a for a in gw["args"] if a.startswith("--parser")] == [expected]
    assert helm_values(chart, "defaults")["gateway"]["config"]["parser"] == "default"


def test_recovery_settings_reach_the_gateways(chart):
    docs = render_docs(chart, {})
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    assert "--recovery-window=120000" in gw["args"]
    assert "--recovery-max-log=100000" in gw["args"]
    off = {"gateway": {"config": {"recoveryWindowMs": 0, "recoveryMaxLog": 500}}}
    gw = container(one(render_docs(chart, off), "Deployment", GATEWAY), "gateway")
    assert "--recovery-window=0" in gw["args"] and "--recovery-max-log=500" in gw["args"]


def test_allow_eio3_reaches_the_gateways(chart, tmp_path):
    """gateway.config.allowEio3: on by default (no flag: the binary takes
    Socket.IO v2 clients by default); off, `--allow-eio3=false`, which the
    real binary takes."""
    docs = render_docs(chart, {})
    dep = one(docs, "Deployment", GATEWAY)
    gw = container(dep, "gateway")
    assert not [a for a in gw["args"] if a.startswith("--allow-eio3")]
    out = run_check_config(binary("ringway-gateway"), gw, pod_env(gw), secret_files(docs, dep, gw, tmp_path))
    assert "allow_eio3: true," in out
    docs = render_docs(chart, {"gateway": {"config": {"allowEio3": False}}})
    dep = one(docs, "Deployment", GATEWAY)
    gw = container(dep, "gateway")
    assert gw["args"].count("--allow-eio3=false") == 1
    (tmp_path / "off").mkdir()
    out = run_check_config(binary("ringway-gateway"), gw, pod_env(gw), secret_files(docs, dep, gw, tmp_path / "off"))
    assert "allow_eio3: false," in out


def test_limits_reach_the_gateways(chart, tmp_path):
    docs = render_docs(chart, {})
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    for expected in ["--max-sessions=100000", "--max-sessions-per-ip=1000",
                     "--handshake-rate-per-ip=20", "--body-read-timeout=10000",
                     "--max-rooms-per-socket=1000", "--recovery-max-log-bytes=268435456"]:
        assert expected in gw["args"], (expected, gw["args"])
    assert flag(gw["args"], "--trusted-proxy") is None
    tuned = {"gateway": {"limits": {"trustedProxies": ["10.0.0.0/8", "fd00::/8"],
                                    "maxSessionsPerIp": 0, "handshakeRatePerIp": 2.5}}}
    docs = render_docs(chart, tuned)
    dep = one(docs, "Deployment", GATEWAY)
    gw = container(dep, "gateway")
    assert "--trusted-proxy=10.0.0.0/8,fd00::/8" in gw["args"]
    assert "--max-sessions-per-ip=0" in gw["args"]
    assert "--handshake-rate-per-ip=2.5" in gw["args"]
    # The binary takes them as rendered.
    out = run_check_config(binary("ringway-gateway"), gw, pod_env(gw), secret_files(docs, dep, gw, tmp_path))
    assert "trusted_proxies: [" in out and "handshake_rate_per_ip: 2.5," in out


@pytest.mark.parametrize("name", ["embedded-redis", "upstream"])
def test_embedded_redis_accepts_rendered_arguments(chart, name, tmp_path):
    """The embedded Redis' command line, run by the real redis-server (on a
    free loopback port instead of 6379) and answering PING (with the
    password when one is set)."""
    exe, cli = shutil.which("redis-server", path=PATH), shutil.which("redis-cli", path=PATH)
    if exe is None or cli is None:
        if os.environ.get("RINGWAY_CHART_REQUIRE_BINARIES") == "1":
            pytest.fail("redis-server or redis-cli is missing")
        pytest.skip("redis-server is not installed")
    docs = rendered(chart, name)
    c = container(one(docs, "StatefulSet", f"{RELEASE}-redis"), "redis")
    assert c["command"] == ["redis-server"]
    env = pod_env(c)
    args = [expand(a, env) for a in c["args"]]
    with socket.socket() as s:  # a local bind, not network access
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args[args.index("--port") + 1] = str(port)
    proc = subprocess.Popen(
        [exe, *args, "--bind", "127.0.0.1", "--dir", str(tmp_path), "--daemonize", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    auth = ["-a", env["REDIS_PASSWORD"]] if "REDIS_PASSWORD" in env else []
    answer = ""
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None and "PONG" not in answer:
            time.sleep(0.1)
            answer = subprocess.run(
                [cli, "-p", str(port), "--no-auth-warning", *auth, "ping"],
                capture_output=True, text=True, timeout=5,
            ).stdout
        assert proc.poll() is None, f"redis-server refused the chart's arguments:\n{proc.stdout.read()}"
        assert "PONG" in answer
        if auth:
            denied = subprocess.run([cli, "-p", str(port), "ping"], capture_output=True, text=True, timeout=5)
            assert "NOAUTH" in denied.stdout + denied.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_worked_example_backend_fits_the_release(chart):
    """helm/examples/chat-backend.yaml (docs/KUBERNETES.md) is valid and
    wired to the release of chat-backend-values.yaml: the gateways'
    NetworkPolicy lets its pods call the API and lets the gateways call
    its Upstream port, it dials the API Service, and its token is the
    Secret the gateways read."""
    docs = rendered(chart, "example-chat-backend")
    values = helm_values(chart, "example-chat-backend")
    example = [d for d in yaml.safe_load_all((EXAMPLES / "chat-backend.yaml").read_text()) if d]
    for doc in example:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    backend = next(d for d in example if d["kind"] == "Deployment")
    labels = pod_labels(backend)
    c = backend["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}

    api = one(docs, "Service", f"{RELEASE}-api")
    assert env["CHAT_GATEWAY"]["value"] == f"{api['metadata']['name']}:{api['spec']['ports'][0]['port']}"
    ref = env["CHAT_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (values["auth"]["apiTokens"]["existingSecret"], values["auth"]["apiTokens"]["existingSecretKey"])
    assert any(d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"] for d in example)

    svc = next(d for d in example if d["kind"] == "Service")
    url = values["upstream"]["url"]
    assert url == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    assert selects(svc["spec"]["selector"], labels)
    listen_port = int(env["CHAT_LISTEN"]["value"].rsplit(":", 1)[1])
    assert listen_port == c["ports"][0]["containerPort"]

    policy = one(docs, "NetworkPolicy", GATEWAY)["spec"]
    api_from = [r["from"] for r in policy["ingress"] if r["ports"][0]["port"] == "api"]
    assert any(selects(p["podSelector"]["matchLabels"], labels) for f in api_from for p in f if "podSelector" in p)
    # ...and not on the node port, which is the gateways' alone.
    node_from = [r["from"] for r in policy["ingress"] if r["ports"][0]["port"] == "node"]
    assert not any(selects(p["podSelector"]["matchLabels"], labels) for f in node_from for p in f)
    upstream_rule = next(r for r in policy["egress"] if r["ports"][0]["port"] == listen_port)
    assert any(selects(p["podSelector"]["matchLabels"], labels) for p in upstream_rule["to"])


def test_image_settings_match_the_dockerfile(chart):
    """The image cannot be built here (no Docker engine): check what can be
    checked. The runtime stage puts both binaries where the chart runs them
    and runs as the chart's user; the build context keeps every workspace
    member; the binaries built are the workspace's."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", dockerfile)[1:]
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = stages
    assert build.startswith("rust:") and " AS build" in build.splitlines()[0]
    assert re.search(r"cargo build --release --locked -p ringway-gateway -p ringway-coordinator", build)
    assert "/usr/local/bin/" in re.search(r"(?m)^COPY --from=build .*$", runtime).group(0)
    for binary_name in ("ringway-gateway", "ringway-coordinator"):
        assert f"/out/{binary_name}" in runtime
    user = re.search(r"(?m)^USER (\d+):(\d+)$", runtime)
    assert user and user.group(1) != "0"

    with open(ROOT / "Cargo.toml", "rb") as f:
        members = tomllib.load(f)["workspace"]["members"]
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for member in members:
        for pattern in ignored:
            assert not (member == pattern or member.startswith(pattern + "/")), f"{member} is excluded by {pattern}"
    for package, binary_name in (("gateway", "ringway-gateway"), ("coordinator", "ringway-coordinator")):
        with open(ROOT / package / "Cargo.toml", "rb") as f:
            manifest = tomllib.load(f)
        assert binary_name in [b["name"] for b in manifest["bin"]]
        assert manifest["package"]["name"] == binary_name

    for name in ("defaults", "production"):
        docs = rendered(chart, name)
        for workload, cname in ((GATEWAY, "gateway"), (COORDINATOR, "coordinator")):
            dep = one(docs, "Deployment", workload)
            c = container(dep, cname)
            assert c["command"][0].removeprefix("/usr/local/bin/") in ("ringway-gateway", "ringway-coordinator")
            assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user.group(1))
            assert dep["spec"]["template"]["spec"]["securityContext"]["runAsGroup"] == int(user.group(2))
            tag = c["image"].rsplit(":", 1)[1]
            assert tag == (VALUE_SETS[name].get("image", {}).get("tag") or cargo_version())


# --- docs/OPERATIONS.md: the metrics the rule and the dashboard may use ----------

OPERATIONS = ROOT / "docs" / "OPERATIONS.md"


def documented_metrics() -> dict[str, str]:
    """Prometheus name -> kind, from the metrics tables of OPERATIONS.md."""
    metrics = {}
    for line in OPERATIONS.read_text().splitlines():
        m = re.match(r"^\| `(ringway_[a-z_]+)` \| ([a-z ()]+?) \|", line)
        if m:
            metrics[m.group(1)] = m.group(2)
    return metrics


def fold_histogram(name: str) -> str:
    """A histogram's series under the histogram's name (x_bucket, x_sum,
    x_count -> x)."""
    histograms = {n for n, kind in documented_metrics().items() if kind == "histogram"}
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def mentioned_metrics(text: str) -> set[str]:
    """The ringway metric names in a piece of prose."""
    return {fold_histogram(n) for n in re.findall(r"\bringway_[a-z_]+\b", text)}


# Grafana's variables, replaced by values for parsing the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": NAMESPACE, "$pod": ".*"}


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Parses a PromQL expression (promql-parser: a syntax error fails)
    and returns its vector selectors: (metric, {label: value})."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    try:
        ast = promql_parser.parse(expr)
    except ValueError as e:
        pytest.fail(f"PromQL does not parse: {e}\n{expr}", pytrace=False)
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name: m.value for m in node.matchers.matchers}))

    promql_parser.walk(ast, visit)
    return found


def queried_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads, histogram series folded
    into their histogram."""
    return {fold_histogram(name) for name, _ in selectors(expr)}


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for line in path.read_text().splitlines():
        m = re.match(r"^#+ (.+)$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_operations_tables_are_read():
    metrics = documented_metrics()
    # Both tables (gateways and coordinator), with their kinds.
    assert metrics["ringway_sessions"] == "gauge"
    assert metrics["ringway_registry_duration_seconds"] == "histogram"
    assert metrics["ringway_coordinator_acting"] == "gauge"
    assert len(metrics) >= 35


# --- the PrometheusRule ------------------------------------------------------------

ALERTS = {
    "RingwayGatewayNotReady", "RingwayRedisDegraded", "RingwaySlowConsumers", "RingwayPeerQueueDrops",
    "RingwayMembershipBelowExpected", "RingwayRegistrySlow", "RingwayClusterAuthRefusals",
    "RingwayLimitsRefusals", "RingwayNoActingCoordinator",
}


def rules_of(docs) -> dict[str, dict[str, Any]]:
    rule = one(docs, "PrometheusRule", RELEASE)
    (group,) = rule["spec"]["groups"]
    return {r.get("alert") or r["record"]: r for r in group["rules"]}


def test_prometheus_rule_has_the_documented_alerts(chart):
    docs = rendered(chart, "production")
    rule = one(docs, "PrometheusRule", RELEASE)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = rules_of(docs)
    assert set(alerts) == ALERTS
    documented = documented_metrics()
    read = set()
    anchors = github_anchors(OPERATIONS)
    for name, alert in alerts.items():
        expr = alert["expr"]
        metrics = queried_metrics(expr)
        assert metrics and metrics <= set(documented), (name, metrics - set(documented))
        read |= metrics
        # This release's series only: the ServiceMonitors' jobs (the
        # metrics Service's for the gateways, the coordinator Service's).
        for metric, labels in selectors(expr):
            job = COORDINATOR if metric.startswith("ringway_coordinator_") else f"{RELEASE}-metrics"
            assert labels["namespace"] == NAMESPACE and labels["job"] == job, (name, metric, labels)
        assert re.fullmatch(r"[0-9]+[smh]", alert["for"]), alert["for"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["labels"]["team"] == "realtime"  # alertLabels
        ann = alert["annotations"]
        assert ann["summary"] and ann["description"]
        # Alertmanager templates survive Helm's rendering.
        assert "{{ $labels." in ann["description"] or "{{ $value" in ann["description"], ann["description"]
        page, anchor = ann["runbook_url"].split("#")
        assert page == "docs/OPERATIONS.md" and anchor in anchors, ann["runbook_url"]
    # Every metric of the alerts OPERATIONS.md lists is watched.
    text = OPERATIONS.read_text()
    listed = text[text.index("Alerts worth having"):].split("\n## ")[0]
    wanted = mentioned_metrics(listed) | {"ringway_coordinator_auth_refusals_total", "ringway_coordinator_acting"}
    assert wanted <= read, wanted - read
    # The gateways' job is the Service the ServiceMonitor scrapes, the
    # coordinator's its own.
    services = {s["metadata"]["name"] for s in find(docs, "Service")}
    assert {f"{RELEASE}-metrics", COORDINATOR} <= services
    # Documented thresholds and durations.
    assert alerts["RingwayGatewayNotReady"]["for"] == "1m"
    assert alerts["RingwayGatewayNotReady"]["expr"].endswith("== 0")
    assert "> 0.05" in alerts["RingwayRegistrySlow"]["expr"]
    assert "histogram_quantile(0.99," in alerts["RingwayRegistrySlow"]["expr"]
    assert 'reason="slow consumer"' in alerts["RingwaySlowConsumers"]["expr"]
    assert "ringway_coordinator_auth_refusals_total" in alerts["RingwayClusterAuthRefusals"]["expr"]
    # Expected members: the HPA's minimum (4 in this value set).
    assert re.search(r"\) < 4\s", alerts["RingwayMembershipBelowExpected"]["expr"] + " ")
    assert "absent(ringway_membership_members{" in alerts["RingwayMembershipBelowExpected"]["expr"]


def test_prometheus_rule_values(chart):
    docs = rendered(chart, "operators")
    rule = one(docs, "PrometheusRule", RELEASE)
    group = rule["spec"]["groups"][0]
    assert group["interval"] == "30s"
    alerts = rules_of(docs)
    # Turned off, tuned, extra rules appended.
    assert "RingwayLimitsRefusals" not in alerts
    assert alerts["RingwaySlowConsumers"]["for"] == "30m"
    assert alerts["RingwaySlowConsumers"]["expr"].rstrip().endswith("> 0.5")
    assert alerts["RingwayClusterAuthRefusals"]["labels"]["severity"] == "page"
    assert alerts["ringway:sessions:sum"] == {"record": "ringway:sessions:sum", "expr": "sum(ringway_sessions)"}
    assert re.search(r"\) < 3\s", alerts["RingwayMembershipBelowExpected"]["expr"] + " ")
    for alert in alerts.values():
        if "alert" in alert:
            assert alert["annotations"]["runbook_url"].startswith(
                "https://git.example.com/ringway/blob/v0.1.0/docs/OPERATIONS.md#")

    # Without the HPA and expectedMembers, gateway.replicas; own selectors.
    values = {"prometheusRule": {"enabled": True, "gatewaySelector": 'job="rw-gw"',
                                 "coordinatorSelector": 'job="rw-co"'},
              "autoscaling": {"enabled": False}, "gateway": {"replicas": 5}}
    alerts = rules_of(render_docs(chart, values))
    assert re.search(r"\) < 5\s", alerts["RingwayMembershipBelowExpected"]["expr"] + " ")
    assert 'ringway_ready{job="rw-gw"} == 0' == alerts["RingwayGatewayNotReady"]["expr"]
    assert 'ringway_degraded{job="rw-gw"} == 1' == alerts["RingwayRedisDegraded"]["expr"]
    assert 'ringway_coordinator_acting{job="rw-co"}' in alerts["RingwayNoActingCoordinator"]["expr"]

    # The coordinator's metrics are on its dashboard port: without it, no
    # coordinator alert and no coordinator term.
    alerts = rules_of(render_docs(chart, {"prometheusRule": {"enabled": True}, **NO_DASHBOARD}))
    assert "RingwayNoActingCoordinator" not in alerts
    assert "ringway_coordinator" not in alerts["RingwayClusterAuthRefusals"]["expr"]
    assert set(alerts) == ALERTS - {"RingwayNoActingCoordinator"}


# --- the Grafana dashboard ----------------------------------------------------------

DASHBOARD = CHART / "dashboards" / "ringway.json"


def dashboard_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_is_valid_and_queries_documented_metrics():
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert set(variables) == {"datasource", "namespace", "pod"}
    panels = dashboard_panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    documented = documented_metrics()
    read = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            metrics = queried_metrics(expr)
            assert metrics and metrics <= set(documented), (panel["title"], metrics - set(documented))
            read |= metrics
            # Every series is scoped to the selected namespace (and the
            # gateways' to the selected pods).
            assert 'namespace="$namespace"' in expr
            for metric, labels in selectors(expr):
                assert labels["namespace"] == NAMESPACE, (panel["title"], expr)
                if not metric.startswith("ringway_coordinator_"):
                    assert labels["pod"] == ".*", (panel["title"], expr)
    # What operators look for.
    wanted = {
        "ringway_sessions", "ringway_handshakes_total", "ringway_messages_received_total",
        "ringway_messages_delivered_total", "ringway_forwards_total", "ringway_forward_duration_seconds",
        "ringway_handoffs_total", "ringway_peer_emits_total", "ringway_recoveries_total",
        "ringway_limits_refusals_total", "ringway_cluster_auth_refusals_total",
        "ringway_coordinator_auth_refusals_total", "ringway_registry_duration_seconds",
        "ringway_membership_members", "ringway_membership_epoch", "ringway_ready",
    }
    assert wanted <= read, wanted - read
    sessions = next(p for p in panels if p["title"] == "Sessions by transport")
    assert "by (transport)" in sessions["targets"][0]["expr"]


def test_dashboard_configmap(chart):
    docs = rendered(chart, "production")
    cm = one(docs, "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Ringway"}
    assert json.loads(cm["data"]["ringway.json"]) == json.loads(DASHBOARD.read_text())
    # Label, value, namespace and labels from the values.
    cm = one(rendered(chart, "operators"), "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    labels = cm["metadata"]["labels"]
    assert labels["grafana.com/dashboard"] == "ringway" and "grafana_dashboard" not in labels
    assert labels["team"] == "realtime"


# --- the `helm test` pod --------------------------------------------------------------

SCRIPT = CHART / "files" / "socketio-test.sh"


def hook_pod(docs) -> dict[str, Any]:
    return one(docs, "Pod", TEST)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_test_pod(chart, name):
    docs = rendered(chart, name)
    values = helm_values(chart, name)
    pod = hook_pod(docs)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["annotations"]["helm.sh/hook"] == "test"
    assert meta["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == values["tests"]["timeoutSeconds"] + 30
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    # Pinned image: a tag, never latest.
    repo, tag = c["image"].rsplit(":", 1)
    assert repo == values["tests"]["image"]["repository"] and tag and tag != "latest"
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", tag)
    # Non-root, read-only root filesystem, nothing to escalate; /tmp writable.
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    # The script is the chart's, run by /bin/sh.
    assert c["command"][:2] == ["/bin/sh", "-c"]
    assert c["command"][2] == SCRIPT.read_text()
    env = {e["name"]: e["value"] for e in c["env"]}
    # Through the client Service, on its port, the release namespace.
    svc = one(docs, "Service", GATEWAY)
    assert env["RINGWAY_URL"] == f"http://{GATEWAY}.{NAMESPACE}.svc:{svc['spec']['ports'][0]['port']}"
    assert env["RINGWAY_PATH"] == values["gateway"]["config"]["path"]
    assert env["RINGWAY_NSP"] == values["gateway"]["config"]["namespaces"][0]
    echo = not values["upstream"]["url"] and values["auth"]["jwt"]["algorithm"] == "none"
    assert env["RINGWAY_ECHO"] == ("true" if echo else "false")
    assert env["RINGWAY_TIMEOUT"] == str(values["tests"]["timeoutSeconds"])
    assert env["RINGWAY_PARSER"] == values["gateway"]["config"]["parser"]
    # Nothing of the release selects the test pod (Services, PDB, HPA).
    labels = meta["labels"]
    assert labels["app.kubernetes.io/component"] == "test"
    for s in find(docs, "Service"):
        assert not selects(s["spec"]["selector"], labels), s["metadata"]["name"]
    for pdb in find(docs, "PodDisruptionBudget"):
        assert not selects(pdb["spec"]["selector"]["matchLabels"], labels)
    for w in workloads(docs):
        assert not selects(w["spec"]["selector"]["matchLabels"], labels)
    for key, value in values["tests"]["podAnnotations"].items():
        assert meta["annotations"][key] == value


def test_helm_test_can_be_turned_off(chart):
    docs = render_docs(chart, {"tests": {"enabled": False}})
    assert not find(docs, "Pod")
    assert not find(docs, "NetworkPolicy", TEST)
    # Nor a rule for it in the gateways' policy, clients restricted or not.
    clients = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}}]
    docs = render_docs(chart, {"tests": {"enabled": False}, "networkPolicy": {"clients": clients}})
    gw = one(docs, "NetworkPolicy", GATEWAY)["spec"]
    assert [r.get("from") for r in gw["ingress"] if r["ports"][0]["port"] == "http"] == [clients]


def free_port() -> int:
    with socket.socket() as s:  # a local bind, not network access
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl() -> str:
    exe = shutil.which("curl", path=PATH)
    if exe is None:
        if os.environ.get("RINGWAY_CHART_REQUIRE_BINARIES") == "1":
            pytest.fail("curl is missing")
        pytest.skip("curl is not installed")
    return exe


# Flags of the rendered gateway that matter to a client; the gateway runs
# alone (no coordinator, no Redis): the echo application, in-memory
# registry and recovery log.
CLIENT_FLAGS = ("--path", "--namespace", "--recovery-window", "--recovery-max-log", "--ping-interval",
                "--ping-timeout", "--max-payload", "--max-queued-bytes", "--connect-timeout", "--parser")


class Gateway:
    """A real ringway-gateway on a free loopback port, with the client flags
    of a rendered gateway container."""

    def __init__(self, gateway_args: list[str], tmp: Path):
        self.args = [a for a in gateway_args if a.split("=", 1)[0] in CLIENT_FLAGS]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "gateway.log"
        self.tmp = tmp

    def __enter__(self) -> "Gateway":
        exe = binary("ringway-gateway")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(exe), f"--listen=127.0.0.1:{self.port}", *self.args],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "info"},
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ringway-gateway exited: {self.log.read_text()}")
            ready = subprocess.run([curl(), "-s", "--max-time", "2", f"{self.url}/readyz"],
                                   capture_output=True, text=True)
            if ready.stdout == "ready":
                return self
            time.sleep(0.1)
        self.__exit__()
        pytest.fail(f"ringway-gateway never got ready: {self.log.read_text()}")
        return self

    def __exit__(self, *_exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def shells() -> list[list[str]]:
    """sh, and busybox's sh when installed (curlimages/curl's shell is
    busybox ash)."""
    found = [[shutil.which("sh", path=PATH) or "/bin/sh"]]
    busybox = shutil.which("busybox", path=PATH)
    if busybox:
        found.append([busybox, "sh"])
    return found


def run_test_pod_script(pod: dict[str, Any], url: str, shell: list[str], **override: str):
    """The test container's command, run here as the pod would run it, with
    its environment, the Service URL pointed at a local gateway."""
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    env.update(RINGWAY_URL=url, **override)
    assert c["command"][0] == "/bin/sh" and c["command"][1] == "-c"
    return subprocess.run(
        [*shell, "-c", c["command"][2]],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True, text=True, timeout=int(env["RINGWAY_TIMEOUT"]) + 30,
    )


TEST_SCRIPT_CASES = {
    # Connection state recovery off: the echo comes back as it was sent.
    "recovery-off": ({"gateway": {"config": {"recoveryWindowMs": 0}}}, "--recovery-window=0", "  echo received\n"),
    # On (the default, 120000 ms): the echo carries its offset last.
    "recovery-on": ({}, "--recovery-window=120000", "echo received, with its recovery offset"),
    # Another path, the first namespace not the root one.
    "path-and-namespace": (
        {"gateway": {"config": {"path": "/rt/", "namespaces": ["/chat", "/"]}}},
        "--path=/rt/", "a Socket.IO session on namespace /chat and an echo",
    ),
    # An upstream application: /readyz and a handshake only.
    "upstream": (VALUE_SETS["upstream"], "--upstream=", "PASS: /readyz and an Engine.IO handshake"),
    # The msgpack parser: the script speaks it (binary packets, base64 on
    # polling), recovery on.
    "msgpack": (
        {"gateway": {"config": {"parser": "msgpack"}}}, "--parser=msgpack",
        "echo received (msgpack), with its recovery offset",
    ),
    "msgpack-recovery-off-namespace": (
        {"gateway": {"config": {"parser": "msgpack", "recoveryWindowMs": 0, "namespaces": ["/chat"]}}},
        "--parser=msgpack", "  echo received (msgpack)\nPASS: /readyz, a Socket.IO session on namespace /chat",
    ),
}


@pytest.mark.parametrize("case", list(TEST_SCRIPT_CASES))
def test_helm_test_script_against_a_real_gateway(chart, case, tmp_path):
    values, flag_, expect = TEST_SCRIPT_CASES[case]
    curl()
    docs = render_docs(chart, values)
    gw_args = container(one(docs, "Deployment", GATEWAY), "gateway")["args"]
    assert any(a.startswith(flag_) for a in gw_args), (flag_, gw_args)
    pod = hook_pod(docs)
    with Gateway(gw_args, tmp_path) as gateway:
        for shell in shells():
            proc = run_test_pod_script(pod, gateway.url, shell)
            assert proc.returncode == 0, f"{shell}: {proc.stdout}\n{proc.stderr}"
            assert "PASS: " in proc.stdout and expect in proc.stdout, proc.stdout
            if case == "recovery-off":
                assert "offset" not in proc.stdout


def test_helm_test_script_fails_when_it_should(chart, tmp_path):
    """The script is a real check: a refused CONNECT, a wrong path and an
    unreachable Service fail it."""
    curl()
    docs = render_docs(chart, {})
    pod = hook_pod(docs)
    gw_args = container(one(docs, "Deployment", GATEWAY), "gateway")["args"]
    with Gateway(gw_args, tmp_path) as gateway:
        for shell in shells():
            proc = run_test_pod_script(pod, gateway.url, shell, RINGWAY_NSP="/nobody")
            assert proc.returncode != 0 and 'FAIL: CONNECT refused: 44/nobody,{"message":"Invalid namespace"}' in proc.stderr
            proc = run_test_pod_script(pod, gateway.url, shell, RINGWAY_PATH="/engine/")
            assert proc.returncode != 0 and "FAIL: handshake" in proc.stderr
    proc = run_test_pod_script(pod, f"http://127.0.0.1:{free_port()}", shells()[0], RINGWAY_TIMEOUT="3")
    assert proc.returncode != 0 and "/readyz never answered" in proc.stderr
    # msgpack: a refused CONNECT; and a text client against msgpack
    # gateways (its CONNECT closes the session).
    docs = render_docs(chart, {"gateway": {"config": {"parser": "msgpack"}}})
    pod = hook_pod(docs)
    gw_args = container(one(docs, "Deployment", GATEWAY), "gateway")["args"]
    with Gateway(gw_args, tmp_path) as gateway:
        for shell in shells():
            proc = run_test_pod_script(pod, gateway.url, shell, RINGWAY_NSP="/nobody")
            assert proc.returncode != 0 and "FAIL: CONNECT refused: " in proc.stderr, proc.stderr
            assert "message.Invalid namespace" in proc.stderr
            proc = run_test_pod_script(pod, gateway.url, shell, RINGWAY_PARSER="default", RINGWAY_TIMEOUT="5")
            assert proc.returncode != 0, proc.stdout
            # The session is gone: the close packet, or an unknown sid.
            assert ("FAIL: the server closed the session" in proc.stderr
                    or "Session ID unknown" in proc.stderr), proc.stderr


# --- topology spread, probes, escape hatches -------------------------------------------


def pod_spec(docs, name: str) -> dict[str, Any]:
    return one(docs, "Deployment", name)["spec"]["template"]["spec"]


def test_topology_spread_constraints(chart):
    # Default: none (antiAffinity spreads the gateways).
    for name in (GATEWAY, COORDINATOR):
        assert "topologySpreadConstraints" not in pod_spec(rendered(chart, "defaults"), name)
    docs = rendered(chart, "operators")
    gw = pod_spec(docs, GATEWAY)["topologySpreadConstraints"]
    gateway_sel = one(docs, "Deployment", GATEWAY)["spec"]["selector"]["matchLabels"]
    # The selector is filled in where missing, kept where given.
    assert gw[0] == {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                     "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": gateway_sel}}
    assert gw[1]["labelSelector"] == {"matchLabels": {"app.kubernetes.io/component": "gateway"}}
    assert gw[1]["matchLabelKeys"] == ["pod-template-hash"]
    coord = pod_spec(docs, COORDINATOR)["topologySpreadConstraints"]
    coord_sel = one(docs, "Deployment", COORDINATOR)["spec"]["selector"]["matchLabels"]
    assert coord[0]["labelSelector"] == {"matchLabels": coord_sel}
    # Each selects its own pods only.
    for spec_, dep in ((gw[0], GATEWAY), (coord[0], COORDINATOR)):
        pods = [w["metadata"]["name"] for w in workloads(docs)
                if selects(spec_["labelSelector"]["matchLabels"], pod_labels(w))]
        assert pods == [dep]
    # The anti-affinity is still there beside it.
    assert "affinity" in pod_spec(docs, GATEWAY)


def test_startup_probes(chart):
    docs = rendered(chart, "defaults")
    gw = container(one(docs, "Deployment", GATEWAY), "gateway")
    probe = gw["startupProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "http"}
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 30
    coord = container(one(docs, "Deployment", COORDINATOR), "coordinator")
    assert coord["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "dashboard"}
    # Tuned.
    gw = container(one(rendered(chart, "operators"), "Deployment", GATEWAY), "gateway")
    assert (gw["startupProbe"]["periodSeconds"], gw["startupProbe"]["failureThreshold"]) == (1, 90)
    # Off; and none on a coordinator without its HTTP port (no liveness
    # probe there either).
    docs = render_docs(chart, {"gateway": {"startupProbe": {"enabled": False}},
                               "coordinator": {"startupProbe": {"enabled": False}}})
    assert "startupProbe" not in container(one(docs, "Deployment", GATEWAY), "gateway")
    assert "startupProbe" not in container(one(docs, "Deployment", COORDINATOR), "coordinator")
    docs = render_docs(chart, NO_DASHBOARD)
    assert "startupProbe" not in container(one(docs, "Deployment", COORDINATOR), "coordinator")


def test_escape_hatches(chart):
    docs = rendered(chart, "operators")
    values = helm_values(chart, "operators")
    for name, cname, key in ((GATEWAY, "gateway", "gateway"), (COORDINATOR, "coordinator", "coordinator")):
        spec = pod_spec(docs, name)
        v = values[key]
        names = [c["name"] for c in spec["containers"]]
        # The component's container first, the sidecars after it.
        assert names == [cname] + [c["name"] for c in v["extraContainers"]]
        assert spec["containers"][1:] == v["extraContainers"]
        assert spec["initContainers"] == v["initContainers"]
        volumes = {vol["name"] for vol in spec["volumes"]}
        assert {vol["name"] for vol in v["extraVolumes"]} <= volumes
        mounts = container(one(docs, "Deployment", name), cname)["volumeMounts"]
        for m in v["extraVolumeMounts"]:
            assert m in mounts
        # The chart's own volumes and mounts are all still there.
        for m in mounts:
            assert m["name"] in volumes
    gw_spec = pod_spec(docs, GATEWAY)
    assert "tmp" in {vol["name"] for vol in gw_spec["volumes"]}
    assert "cluster-secret" in {vol["name"] for vol in gw_spec["volumes"]}
    # A native sidecar (restartPolicy Always) among the init containers.
    assert gw_spec["initContainers"][1]["restartPolicy"] == "Always"
    # Defaults: none.
    for name in (GATEWAY, COORDINATOR):
        spec = pod_spec(rendered(chart, "defaults"), name)
        assert len(spec["containers"]) == 1 and "initContainers" not in spec
    # The coordinator with only extra volumes (no cluster credential files).
    docs = render_docs(chart, {"cluster": {"insecure": True},
                               "coordinator": {"extraVolumes": [{"name": "x", "emptyDir": {}}],
                                               "extraVolumeMounts": [{"name": "x", "mountPath": "/x"}]}})
    spec = pod_spec(docs, COORDINATOR)
    assert spec["volumes"] == [{"name": "x", "emptyDir": {}}]
    assert container(one(docs, "Deployment", COORDINATOR), "coordinator")["volumeMounts"] == [
        {"name": "x", "mountPath": "/x"}]


# --- Gateway API routes ----------------------------------------------------------------

# The fields of gateway.networking.k8s.io/v1 HTTPRoute and GRPCRoute
# (standard channel), for the CRDs kubernetes-validate has no schema for.
ROUTE_FIELDS = {
    "spec": {"parentRefs", "hostnames", "rules"},
    "parentRef": {"group", "kind", "namespace", "name", "sectionName", "port"},
    "HTTPRoute.rule": {"name", "matches", "filters", "backendRefs", "timeouts"},
    "HTTPRoute.match": {"path", "headers", "queryParams", "method"},
    "GRPCRoute.rule": {"name", "matches", "filters", "backendRefs"},
    "GRPCRoute.match": {"method", "headers"},
    "backendRef": {"group", "kind", "name", "namespace", "port", "weight", "filters"},
    "timeouts": {"request", "backendRequest"},
}
GW_HOSTNAME = r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
GW_DURATION = r"([0-9]{1,5}(h|m|s|ms)){1,4}"
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def check_gateway_route(doc: dict[str, Any]) -> None:
    body = strip(doc)
    kind = body["kind"]
    assert body["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert set(body) == {"apiVersion", "kind", "metadata", "spec"}
    spec = body["spec"]
    assert set(spec) <= ROUTE_FIELDS["spec"], set(spec) - ROUTE_FIELDS["spec"]
    assert 1 <= len(spec["parentRefs"]) <= 32
    for ref in spec["parentRefs"]:
        assert set(ref) <= ROUTE_FIELDS["parentRef"] and 1 <= len(ref["name"]) <= 253, ref
        if "namespace" in ref:
            assert re.fullmatch(DNS_LABEL, ref["namespace"]), ref
        if "sectionName" in ref:
            assert re.fullmatch(rf"{DNS_LABEL}(\.{DNS_LABEL})*", ref["sectionName"]), ref
        if "port" in ref:
            assert 1 <= ref["port"] <= 65535
    assert len(spec.get("hostnames", [])) <= 16
    for host in spec.get("hostnames", []):
        assert re.fullmatch(GW_HOSTNAME, host) and len(host) <= 253, host
    assert 1 <= len(spec["rules"]) <= 16
    for rule in spec["rules"]:
        assert set(rule) <= ROUTE_FIELDS[f"{kind}.rule"], set(rule) - ROUTE_FIELDS[f"{kind}.rule"]
        for match in rule["matches"]:
            assert set(match) <= ROUTE_FIELDS[f"{kind}.match"], match
            if kind == "HTTPRoute":
                assert match["path"]["type"] in ("Exact", "PathPrefix", "RegularExpression")
                assert match["path"]["value"].startswith("/") and "//" not in match["path"]["value"]
            else:
                method = match["method"]
                assert set(method) <= {"type", "service", "method"} and method["type"] in ("Exact", "RegularExpression")
                assert re.fullmatch(r"\.?[a-zA-Z_][a-zA-Z_0-9]*(\.[a-zA-Z_][a-zA-Z_0-9]*)*", method["service"])
        for backend in rule["backendRefs"]:
            assert set(backend) <= ROUTE_FIELDS["backendRef"], backend
            # A Service backend needs its port.
            assert backend.get("kind", "Service") == "Service" and 1 <= backend["port"] <= 65535
        for key, value in rule.get("timeouts", {}).items():
            assert key in ROUTE_FIELDS["timeouts"] and re.fullmatch(GW_DURATION, value), (key, value)
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": body["metadata"]}, KUBE_VERSIONS[0], strict=True
    )


def test_gateway_api_routes(chart):
    docs = rendered(chart, "operators")
    values = helm_values(chart, "operators")
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}

    http = one(docs, "HTTPRoute", GATEWAY)
    assert http["spec"]["parentRefs"] == values["httpRoute"]["parentRefs"]
    assert http["spec"]["hostnames"] == ["rt.example.com"]
    assert http["metadata"]["annotations"] == {"example.com/owner": "realtime"}
    (rule,) = http["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/socket.io/"}}]
    assert rule["timeouts"] == {"request": "0s"}
    (backend,) = rule["backendRefs"]
    # The client Service, on its port (the http target port).
    assert backend == {"name": GATEWAY, "port": values["service"]["port"]}
    (port,) = services[GATEWAY]["spec"]["ports"]
    assert port["port"] == backend["port"] and port["targetPort"] == "http"

    grpc = one(docs, "GRPCRoute", f"{RELEASE}-api")
    assert grpc["spec"]["parentRefs"][0]["port"] == 443
    assert grpc["spec"]["hostnames"] == ["push.example.com"]
    assert grpc["metadata"]["labels"]["exposure"] == "partners"
    (rule,) = grpc["spec"]["rules"]
    # The Push service only, to the API Service (never the node port).
    assert rule["matches"] == [{"method": {"type": "Exact", "service": "ringway.v1.Push"}}]
    (backend,) = rule["backendRefs"]
    assert backend == {"name": f"{RELEASE}-api", "port": values["apiService"]["port"]}
    (port,) = services[f"{RELEASE}-api"]["spec"]["ports"]
    assert port["port"] == backend["port"] and port["targetPort"] == "api"
    assert port.get("appProtocol") == "kubernetes.io/h2c"
    for route in (http, grpc):
        for backend in route["spec"]["rules"][0]["backendRefs"]:
            assert backend["name"] != f"{RELEASE}-peers"
    # Another path and port follow the values; no hostnames: none rendered.
    docs = render_docs(chart, {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]},
                               "gateway": {"config": {"path": "/rt/"}}, "service": {"port": 8080}})
    http = one(docs, "HTTPRoute", GATEWAY)
    assert "hostnames" not in http["spec"] and "timeouts" not in http["spec"]["rules"][0]
    assert http["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/rt/"
    assert http["spec"]["rules"][0]["backendRefs"][0]["port"] == 8080
    check_gateway_route(http)
