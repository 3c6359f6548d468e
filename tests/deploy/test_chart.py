"""The Helm chart: it lints, renders objects valid on several Kubernetes versions, and gives
the pods what production needs (non-root, probes, one receipt secret, rolling checksums)."""

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "broker-gateway"
# The chart's floor (Chart.yaml kubeVersion), two later ones and the newest bundled.
KUBE_VERSIONS = ("1.29.0", "1.32.0", "1.35.0", "1.37.0")
KUBE_VERSION = KUBE_VERSIONS[-1]
VALUES_FILES = ("", *sorted(p.name for p in (CHART / "ci").glob("*-values.yaml")))
RELEASE = "gw"
FULLNAME = "gw-broker-gateway"

Doc = dict[str, Any]


@functools.cache
def _helm() -> str:
    found = os.environ.get("HELM") or (
        str(ROOT / ".tools/bin/helm")
        if (ROOT / ".tools/bin/helm").is_file()
        else shutil.which("helm")
    )
    if not found:
        pytest.fail("helm not found: `make test-deploy` installs it in .tools/bin (or set HELM)")
    return found


def _values_args(values_file: str, settings: dict[str, Any]) -> list[str]:
    args = ["-f", str(CHART / "ci" / values_file)] if values_file else []
    for key, value in settings.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def _helm_run(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_helm(), command, *args], check=False, capture_output=True, text=True, timeout=60
    )


def _template(
    values_file: str = "", kube_version: str = KUBE_VERSION, **settings: Any
) -> subprocess.CompletedProcess[str]:
    return _helm_run(
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        kube_version,
        *_values_args(values_file, settings),
    )


def _render(values_file: str = "", kube_version: str = KUBE_VERSION, **settings: Any) -> list[Doc]:
    result = _template(values_file, kube_version, **settings)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _one(docs: list[Doc], kind: str, name: str = FULLNAME) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def _pod_specs(docs: list[Doc]) -> list[Doc]:
    """Every pod template: the gateway's and the manifests Job's."""
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container["env"]}


def _check_service_monitor(monitor: Doc, docs: list[Doc]) -> None:
    """A CRD has no bundled schema: check the shape Prometheus Operator needs by hand."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    service = _one(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "http"
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("values_file", ["", "everything-on-values.yaml"])
def test_chart_lints_strictly(values_file: str) -> None:
    result = _helm_run(
        "lint",
        "--strict",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        *_values_args(values_file, {}),
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_rendered_object_is_valid_kubernetes(values_file: str, kube_version: str) -> None:
    docs = _render(values_file, kube_version)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            _check_service_monitor(doc, docs)
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path))
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} at {where}: {exc.message}")


def test_everything_on_renders_every_optional_part() -> None:
    kinds = {d["kind"] for d in _render("everything-on-values.yaml")}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress", "ServiceMonitor"} <= kinds
    assert {"Job", "Secret", "ServiceAccount"} <= kinds


def test_the_dashboard_configmap_carries_the_dashboard_for_grafanas_sidecar() -> None:
    [dashboard] = [
        d
        for d in _render("everything-on-values.yaml")
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    rendered = json.loads(dashboard["data"]["broker-gateway.json"])
    assert rendered == json.loads((CHART / "dashboards" / "broker-gateway.json").read_text())


def test_defaults_render_no_optional_part() -> None:
    kinds = sorted(d["kind"] for d in _render())
    assert kinds == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_pods_run_as_non_root_on_a_read_only_root(values_file: str) -> None:
    specs = _pod_specs(_render(values_file))
    assert specs
    for spec in specs:
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert spec["automountServiceAccountToken"] is False
        [container] = spec["containers"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
        assert "emptyDir" in tmp
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_gateway_probes_livez_readyz_and_waits_for_startup() -> None:
    [container] = _one(_render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["args"] == ["serve"]
    assert container["image"] == "broker-gateway:0.1.0"
    for probe, path in [("startupProbe", "/livez"), ("livenessProbe", "/livez")]:
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = _env(container)
    assert env["GATEWAY_HOST"]["value"] == "0.0.0.0"
    assert env["GATEWAY_PORT"]["value"] == "8000"


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_pod_gets_the_same_receipt_secret(values_file: str) -> None:
    docs = _render(values_file)
    refs = {
        json.dumps(_env(spec["containers"][0])["GATEWAY_RECEIPT_SECRET"]["valueFrom"])
        for spec in _pod_specs(docs)
    }
    assert len(refs) == 1
    ref = json.loads(refs.pop())["secretKeyRef"]
    assert ref["key"] == "receipt-secret"
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if secrets:
        assert ref["name"] == secrets[0]["metadata"]["name"]
        assert "receipt-secret" in secrets[0]["data"]


def test_receipt_secret_given_is_the_same_on_every_render() -> None:
    """Without a value it is generated; only a live install reuses it (lookup), so
    `helm template` would make a new one each time."""
    given = "a-receipt-secret-of-at-least-32-characters"

    def receipt(**settings: Any) -> str:
        secret = _one(_render(**settings), "Secret")
        return str(secret["data"]["receipt-secret"])

    assert receipt(receiptSecret=given) == receipt(receiptSecret=given)
    assert receipt() != receipt()


def test_config_change_rolls_the_pods() -> None:
    def annotations(**settings: Any) -> dict[str, str]:
        deployment = _one(_render(**settings), "Deployment")
        return dict(deployment["spec"]["template"]["metadata"]["annotations"])

    secret = "a-receipt-secret-of-at-least-32-characters"
    hs256 = {"enabled": True, "secret": "an-hs256-secret-of-at-least-32-characters"}
    base = annotations(receiptSecret=secret, auth={"hs256": hs256})
    assert base == annotations(receiptSecret=secret, auth={"hs256": hs256})
    changed = annotations(receiptSecret=secret, auth={"hs256": hs256}, config={"workers": 4})
    assert changed["checksum/config"] != base["checksum/config"]
    assert changed["checksum/secret"] == base["checksum/secret"]
    rotated = annotations(receiptSecret=secret[::-1], auth={"hs256": hs256})
    assert rotated["checksum/secret"] != base["checksum/secret"]


def test_checksums_hash_what_is_rendered() -> None:
    """Generated secrets are made once per render: were the checksum to hash other random
    values than the Secret's, the first upgrade after an install would roll every pod."""
    result = _template()
    sources = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"# Source: broker-gateway/(\S+)\n(.*?)(?=\n---|\Z)", result.stdout, re.S
        )
    }
    deployment = yaml.safe_load(sources["templates/deployment.yaml"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    for name, template in [("config", "configmap.yaml"), ("secret", "secret.yaml")]:
        text = sources[f"templates/{template}"] + "\n"
        assert annotations[f"checksum/{name}"] == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("drain", [1, 25, 40])
def test_grace_period_is_the_shutdown_grace_plus_five(drain: int) -> None:
    docs = _render(shutdownGraceSeconds=drain)
    spec = _one(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == drain + 5
    assert _env(spec["containers"][0])["GATEWAY_SHUTDOWN_GRACE_S"]["value"] == str(drain)


def test_autoscaler_owns_the_replica_count() -> None:
    assert _one(_render(), "Deployment")["spec"]["replicas"] == 2
    docs = _render("hpa-pdb-values.yaml")
    assert "replicas" not in _one(docs, "Deployment")["spec"]
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }


def test_disruption_budget_and_spread_select_the_gateway_pods_only() -> None:
    docs = _render("everything-on-values.yaml")
    deployment = _one(docs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert _one(docs, "Service")["spec"]["selector"] == selector
    job_labels = _one(docs, "Job", f"{FULLNAME}-manifests")["spec"]["template"]["metadata"]
    assert not selector.items() <= job_labels["labels"].items()
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"] == selector
        assert constraint["whenUnsatisfiable"] == "DoNotSchedule"


def test_spread_is_best_effort_by_default() -> None:
    spec = _one(_render(), "Deployment")["spec"]["template"]["spec"]
    assert {c["whenUnsatisfiable"] for c in spec["topologySpreadConstraints"]} == {"ScheduleAnyway"}


def test_existing_secret_replaces_the_charts() -> None:
    docs = _render("existing-secret-values.yaml")
    assert not [d for d in docs if d["kind"] == "Secret"]
    for spec in _pod_specs(docs):
        env = _env(spec["containers"][0])
        for name, key in [
            ("GATEWAY_RECEIPT_SECRET", "receipt-secret"),
            ("GATEWAY_AUTH_HS256_SECRET", "hs256-secret"),
        ]:
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "gateway-credentials", "key": key}
        auth = next(v for v in spec["volumes"] if v["name"] == "auth")["secret"]
        assert auth["secretName"] == "gateway-credentials"
        assert [i["key"] for i in auth["items"]] == ["public-keys.pem", "api-keys.yaml"]
        files = "/etc/broker-gateway/auth"
        assert env["GATEWAY_AUTH_PUBLIC_KEYS_FILE"]["value"] == f"{files}/public-keys.pem"
        assert env["GATEWAY_AUTH_API_KEYS_FILE"]["value"] == f"{files}/api-keys.yaml"
    annotations = _one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def _clusters(docs: list[Doc]) -> list[dict[str, str]]:
    container = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    clusters: list[dict[str, str]] = json.loads(_env(container)["GATEWAY_CLUSTERS"]["value"])
    return clusters


@pytest.mark.parametrize(
    ("settings", "name", "host", "admin_port"),
    [
        ({}, "pulsar", "pulsar-broker", 8080),
        ({"via": "proxy"}, "pulsar", "pulsar-proxy", 80),
        ({"releaseName": "prod"}, "prod-pulsar", "prod-pulsar-broker", 8080),
        ({"releaseName": "pulsar-east", "clusterName": "east"}, "east", "pulsar-east-broker", 8080),
        ({"namespace": "streaming"}, "pulsar", "pulsar-broker.streaming.svc", 8080),
    ],
)
def test_default_cluster_is_the_apache_pulsar_release(
    settings: dict[str, str], name: str, host: str, admin_port: int
) -> None:
    """Service and cluster names as the Apache Pulsar chart makes them for a release."""
    assert _clusters(_render(pulsar=settings)) == [
        {
            "name": name,
            "service_url": f"pulsar://{host}:6650",
            "admin_url": f"http://{host}:{admin_port}",
        }
    ]


def test_pulsar_tokens_come_from_secrets_not_the_config() -> None:
    docs = _render("everything-on-values.yaml")
    for spec in _pod_specs(docs):
        container = spec["containers"][0]
        names = [e["name"] for e in container["env"]]
        assert names.index("PULSAR_TOKEN_1") < names.index("GATEWAY_CLUSTERS")
        env = _env(container)
        assert env["PULSAR_TOKEN_0"]["valueFrom"]["secretKeyRef"] == {
            "name": "pulsar-token-admin",
            "key": "TOKEN",
        }
        assert env["PULSAR_TOKEN_1"]["valueFrom"]["secretKeyRef"] == {
            "name": "west-token",
            "key": "gateway",
        }
    clusters = _clusters(docs)
    assert [c["token"] for c in clusters] == ["$(PULSAR_TOKEN_0)", "$(PULSAR_TOKEN_1)"]
    config = _one(docs, "ConfigMap")["data"]
    assert "GATEWAY_CLUSTERS" not in config
    assert not any("TOKEN" in value for value in config.values())


def test_config_becomes_gateway_variables() -> None:
    docs = _render("everything-on-values.yaml")
    assert _one(docs, "ConfigMap")["data"] == {
        "GATEWAY_AUTH_AUDIENCE": "broker-gateway",
        "GATEWAY_LOG_LEVEL": "debug",
        "GATEWAY_MAX_WAIT_MS": "20000",
        "GATEWAY_TENANT_BYTES_PER_S": "33554432",
        "GATEWAY_TENANT_REQUESTS_PER_S": "250.5",
        "GATEWAY_WORKERS": "2",
    }
    for spec in _pod_specs(docs):
        assert spec["containers"][0]["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]


def test_manifests_job_applies_after_install_and_upgrade() -> None:
    docs = _render("everything-on-values.yaml")
    job = _one(docs, "Job", f"{FULLNAME}-manifests")
    files = _one(docs, "ConfigMap", f"{FULLNAME}-manifests")
    hook = job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == files["metadata"]["annotations"]["helm.sh/hook"]
    assert hook["helm.sh/hook"] == "post-install,post-upgrade"
    assert hook["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert int(files["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        hook["helm.sh/hook-weight"]
    )
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] > 0
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    [container] = spec["containers"]
    assert container["args"][:2] == ["apply", "/manifests"]
    assert "--allow-destructive" in container["args"]
    manifests = next(v for v in spec["volumes"] if v["name"] == "manifests")
    assert manifests["configMap"]["name"] == files["metadata"]["name"]
    assert "acme.yaml" in files["data"]
    deployment = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == deployment["env"]


def test_manifests_job_can_use_an_existing_config_map() -> None:
    docs = _render("existing-secret-values.yaml")
    named = [d["kind"] for d in docs if d["metadata"]["name"] == f"{FULLNAME}-manifests"]
    assert named == ["Job"]
    spec = _one(docs, "Job", f"{FULLNAME}-manifests")["spec"]["template"]["spec"]
    manifests = next(v for v in spec["volumes"] if v["name"] == "manifests")
    assert manifests["configMap"]["name"] == "gateway-manifests"


def test_standard_labels_on_every_object() -> None:
    for doc in _render("everything-on-values.yaml"):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "broker-gateway"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == "0.1.0-ci"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "broker-gateway-0.1.0"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicas": 2}, "'replicas'"),
        ({"shutdownGraceSeconds": -1}, "/shutdownGraceSeconds"),
        ({"service": {"port": 99999}}, "/service/port"),
        ({"service": {"type": "ExternalName"}}, "/service/type"),
        ({"image": {"tag": 1}}, "/image/tag"),
        ({"auth": {"hs256": {"secret": "too-short"}}}, "/auth/hs256/secret"),
        ({"pulsar": {"via": "direct"}}, "/pulsar/via"),
        (
            {"pulsar": {"clusters": [{"name": "east", "serviceUrl": "http://x:6650"}]}},
            "/pulsar/clusters/0",
        ),
        ({"config": {"workers": [1]}}, "/config/workers"),
        ({"config": {"port": 9000}}, "config.port"),
        ({"existingSecret": "mine", "receiptSecret": "r" * 32}, "receiptSecret"),
        ({"manifests": {"enabled": True}}, "manifests.files"),
        ({"auth": {"publicKeys": {"enabled": True}}}, "auth.publicKeys.pem"),
    ],
)
def test_bad_values_are_refused_by_name(settings: dict[str, Any], named: str) -> None:
    result = _template(**settings)
    assert result.returncode != 0
    assert named in result.stderr


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in values.items():
        if isinstance(value, dict) and value:
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text().split("\n## Values\n", 1)[1]
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    assert documented == _leaf_keys(values)
