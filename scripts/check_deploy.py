#!/usr/bin/env python3
"""Offline checks of deploy/: what CI can prove about the manifests without a cluster.

1. Renders the Kustomize overlays (`kubectl kustomize`, the renderer this machine has; the
   commands are the README's) and the Helm chart (`helm-python-sdk` from PyPI: Helm's own Go
   SDK behind a C ABI, so no helm binary), for CPU and GPU.
2. Validates every rendered object strictly (unknown fields are errors) against the
   Kubernetes 1.30 schemas and the newest ones `kubernetes-validate` ships, through its Python
   API, so an unknown kind fails instead of being skipped. Custom resources are checked
   against schemas from registry packages: ServiceMonitor and PrometheusRule against
   prometheus-operator's CRD models (`cloudcoil-models-prometheus-operator`, PyPI), made strict;
   KServe's ClusterServingRuntime against the `kserve` SDK's models (its PyPI wheel, fields
   walked strictly; the containers inside through the Kubernetes Pod schema).
3. Checks the Helm chart renders the same objects as the Kustomize CPU overlay, and the
   drain invariants (grace period > shutdown delay + exit timeout; shutdown delay > readiness
   probe period; Triton's named ports and probe paths).
4. `--live-metrics URL`: every metric name the dashboard, the HPA/adapter rule and the alert
   rules use appears on a live /metrics page (`--start-server` starts NEREID_BIN for it).

Prints what it checked and the kinds (and contents) it could not check.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KSERVE_VERSION = "0.21.0"
K8S_OLDEST = "1.30.0"

# The commands the README gives; the test renders exactly these.
KUSTOMIZE_COMMANDS = {
    "cpu": ["kubectl", "kustomize", "deploy/kustomize/overlays/cpu"],
    "gpu": ["kubectl", "kustomize", "deploy/kustomize/overlays/gpu"],
}
# The README's `helm template` commands, as values (the SDK renders the same templates).
HELM_VALUES = {
    # helm template nereid deploy/helm/nereid
    "cpu": {},
    # helm template nereid deploy/helm/nereid --set gpu.enabled=true --set image.tag=gpu
    "gpu": {"image": {"tag": "gpu"}, "gpu": {"enabled": True}},
}

# Not schema-checked: the prometheus-adapter rule and the Grafana dashboard are ConfigMap
# data (checked here only as YAML/JSON and by the live metric-name check).
UNCHECKED_CONTENT = [
    "ConfigMap nereid-prometheus-adapter-rules data (prometheus-adapter's config format: YAML parsed, metric names checked live)",
    "ConfigMap nereid-grafana-dashboard data (Grafana's dashboard JSON: parsed, metric names checked live)",
    "PrometheusRule expressions (PromQL: metric names checked live, syntax not parsed)",
]


def fail(msg: str) -> None:
    print(f"check_deploy: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render_kustomize(flavour: str) -> list[dict]:
    cmd = KUSTOMIZE_COMMANDS[flavour]
    try:
        out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        fail("kubectl is not installed (its `kustomize` renders the overlays offline)")
    except subprocess.CalledProcessError as e:
        fail(f"{' '.join(cmd)}: {e.stderr}")
    return docs(out.stdout)


def render_helm(flavour: str) -> list[dict]:
    import helm_python as helm

    chart = helm.Chart.load(str(DEPLOY / "helm" / "nereid"))
    lint = helm.lint(str(DEPLOY / "helm" / "nereid"))
    if lint.get("errors"):
        fail(f"helm lint: {lint['errors']}")
    rendered = chart.render(HELM_VALUES[flavour], name="nereid", namespace="default")
    out = []
    for path in sorted(rendered):
        out.extend(docs(rendered[path]))
    return out


# ---- strict schemas of custom resources ---------------------------------------------------


def strict_json_schema(schema: dict) -> dict:
    """`additionalProperties: false` on every object schema that lists its properties."""

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    schema = copy.deepcopy(schema)
    walk(schema)
    return schema


def prometheus_operator_validator():
    """ServiceMonitor and PrometheusRule from prometheus-operator's CRD models (pydantic),
    as strict JSON schemas (the models themselves ignore unknown fields)."""
    import jsonschema
    from cloudcoil.models.prometheus_operator import v1

    schemas = {}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        model = getattr(v1, kind)
        schema = strict_json_schema(model.model_json_schema(by_alias=True, mode="validation"))
        schemas[kind] = (model, jsonschema.Draft202012Validator(schema))

    def validate(obj: dict) -> None:
        model, validator = schemas[obj["kind"]]
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            raise ValueError(f"{'/'.join(map(str, e.path))}: {e.message}")
        model.model_validate(obj)  # the models' own checks (patterns, enums, literals)

    return validate


def kserve_models(cache: Path):
    """The kserve SDK's generated models, from its PyPI wheel (pure Python), without the
    server half of the package and its dependencies."""
    wheel = next(cache.glob(f"kserve-{KSERVE_VERSION}-*.whl"), None)
    if wheel is None:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "-d", str(cache), f"kserve=={KSERVE_VERSION}"],
            check=True,
        )
        wheel = next(cache.glob(f"kserve-{KSERVE_VERSION}-*.whl"))
    src = cache / "src"
    if not (src / "kserve" / "models").is_dir():
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("kserve/models/") or name == "kserve/configuration.py":
                    z.extract(name, src)
    pkg = types.ModuleType("kserve")
    pkg.__path__ = [str(src / "kserve")]
    sys.modules["kserve"] = pkg
    return importlib.import_module("kserve.models")


def kserve_validator(cache: Path, k8s_validate):
    models = kserve_models(cache)

    def check(value, type_name: str, path: str) -> None:
        if value is None:
            return
        m = re.fullmatch(r"list\[(.+)\]", type_name)
        if m:
            if not isinstance(value, list):
                raise ValueError(f"{path}: expected a list")
            for i, v in enumerate(value):
                check(v, m.group(1), f"{path}/{i}")
            return
        m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
        if m:
            if not isinstance(value, dict):
                raise ValueError(f"{path}: expected a map")
            for k, v in value.items():
                check(v, m.group(1), f"{path}/{k}")
            return
        plain = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
        if type_name in plain:
            if not isinstance(value, plain[type_name]) or (
                type_name == "int" and isinstance(value, bool)
            ):
                raise ValueError(f"{path}: expected {type_name}, got {value!r}")
            return
        cls = getattr(models, type_name, None)
        if cls is None:
            # A Kubernetes core type (V1Container, V1ObjectMeta, ...): the strict core schemas.
            wrap = {
                "V1Container": lambda v: {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                                          "spec": {"containers": [v]}},
                "V1ObjectMeta": lambda v: {"apiVersion": "v1", "kind": "ConfigMap", "metadata": v},
            }.get(type_name)
            if wrap is None:
                raise ValueError(f"{path}: {type_name} has no schema here")
            k8s_validate(wrap(value))
            return
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object ({type_name})")
        by_key = {json_key: attr for attr, json_key in cls.attribute_map.items()}
        for key, v in value.items():
            if key not in by_key:
                raise ValueError(f"{path}: unknown field '{key}' in {type_name}")
            check(v, cls.openapi_types[by_key[key]], f"{path}/{key}")

    def validate(obj: dict) -> None:
        if obj.get("apiVersion") != "serving.kserve.io/v1alpha1":
            raise ValueError(f"unexpected apiVersion {obj.get('apiVersion')}")
        check(obj, "V1alpha1ClusterServingRuntime", "")

    return validate


def validate_all(objects: list[dict], versions: list[str], custom: dict) -> list[str]:
    import kubernetes_validate

    checked = []
    for obj in objects:
        kind = obj["kind"]
        name = obj["metadata"]["name"]
        try:
            if kind in custom:
                custom[kind](obj)
                checked.append(f"{kind} (CRD schema)")
                continue
            for v in versions:
                kubernetes_validate.validate(obj, v, strict=True)
            checked.append(f"{kind} (Kubernetes {' and '.join(versions)}, strict)")
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            fail(f"{kind}/{name}: {type(e).__name__}: {e}")
    return checked


# ---- Helm and Kustomize agree; drain invariants ---------------------------------------------


def keyed(objects: list[dict]) -> dict:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def without_labels(obj: dict) -> dict:
    o = copy.deepcopy(obj)
    o["metadata"].pop("labels", None)
    return o


def compare(kustomize: list[dict], helm: list[dict], flavour: str) -> None:
    k, h = keyed(kustomize), keyed(helm)
    if set(k) != set(h):
        fail(f"{flavour}: Kustomize and Helm render different objects: only Kustomize "
             f"{sorted(set(k) - set(h))}, only Helm {sorted(set(h) - set(k))}")
    for key in k:
        a, b = without_labels(k[key]), without_labels(h[key])
        if a != b:
            fail(f"{flavour}: {key} differs between Kustomize and Helm:\n"
                 f"{yaml.safe_dump(a)}\n---\n{yaml.safe_dump(b)}")


def flag(args: list[str], name: str) -> int:
    for a in args:
        if a.startswith(f"--{name}="):
            return int(a.split("=", 1)[1])
    fail(f"the container does not set --{name}")


def check_deployment(objects: list[dict], flavour: str) -> None:
    dep = keyed(objects)[("Deployment", "nereid")]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    delay, exit_timeout = flag(c["args"], "shutdown-delay-secs"), flag(c["args"], "exit-timeout-secs")
    grace = pod["terminationGracePeriodSeconds"]
    if not grace > delay + exit_timeout:
        fail(f"terminationGracePeriodSeconds {grace} <= shutdown delay {delay} + exit timeout {exit_timeout}")
    period = c["readinessProbe"]["periodSeconds"]
    if not delay > period:
        fail(f"shutdown delay {delay} s is not longer than the readiness period {period} s")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports != {"http": 8000, "grpc": 8001, "metrics": 8002}:
        fail(f"ports {ports}")
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        if c[probe]["httpGet"]["path"] != path:
            fail(f"{probe} path {c[probe]['httpGet']['path']}")
    sc = c["securityContext"]
    if not (sc.get("readOnlyRootFilesystem") and sc.get("runAsNonRoot") and pod["securityContext"]["runAsNonRoot"]):
        fail("the container must run as non-root with a read-only root filesystem")
    if not any("emptyDir" in v for v in pod["volumes"]):
        fail("no emptyDir for the model cache")
    if "requests" not in c["resources"]:
        fail("no resource requests")
    gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu")
    if (flavour == "gpu") != (gpus is not None):
        fail(f"{flavour}: nvidia.com/gpu limit {gpus}")


# ---- metric names --------------------------------------------------------------------------

METRIC = re.compile(r"\b((?:nv|nereid)_[a-z0-9_]+)")


def used_metric_names(objects: list[dict]) -> dict[str, set[str]]:
    k = keyed(objects)
    used: dict[str, set[str]] = {}
    dash = json.loads(k[("ConfigMap", "nereid-grafana-dashboard")]["data"]["nereid-dashboard.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), str)]
    used["dashboard"] = {m for e in exprs for m in METRIC.findall(e)}
    hpa = k[("HorizontalPodAutoscaler", "nereid")]
    used["hpa"] = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    adapter = yaml.safe_load(k[("ConfigMap", "nereid-prometheus-adapter-rules")]["data"]["config.yaml"])
    used["adapter"] = {
        m for r in adapter["rules"] for f in (r["seriesQuery"], r["metricsQuery"], r["name"]["as"])
        for m in METRIC.findall(f)
    }
    rules = k[("PrometheusRule", "nereid")]
    used["alerts"] = {m for g in rules["spec"]["groups"] for r in g["rules"] for m in METRIC.findall(r["expr"])}
    for what, names in used.items():
        if not names:
            fail(f"no metric name found in the {what}")
    return used


def exposed_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def start_server() -> tuple[subprocess.Popen, str]:
    binary = os.environ.get("NEREID_BIN") or str(ROOT / "target" / "debug" / "nereid")
    log = tempfile.NamedTemporaryFile(prefix="nereid-deploy-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, f"--model-repository={ROOT / 'model_repository'}", "--model-control-mode=explicit",
         "--load-model=simple", "--http-port=0", "--grpc-port=0", "--metrics-port=0",
         "--metrics-address=127.0.0.1", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = Path(log.name).read_text(errors="replace")
        m = re.search(r"Started Metrics Service at ([0-9.:]+)", text)
        if m and "Started HTTPService" in text:
            return proc, f"http://{m.group(1)}/metrics"
        if proc.poll() is not None:
            fail(f"the server exited: {text}")
        time.sleep(0.1)
    proc.kill()
    fail("the server did not start in 120 s")


def check_live(objects: list[dict], url: str) -> None:
    with urllib.request.urlopen(url, timeout=20) as r:
        page = r.read().decode()
    exposed = exposed_names(page)
    used = used_metric_names(objects)
    missing = {what: sorted(n - exposed) for what, n in used.items() if n - exposed}
    if missing:
        fail(f"metric names not on the live /metrics page: {missing}")
    total = set().union(*used.values())
    print(f"metric names: all {len(total)} used by the dashboard, HPA/adapter rule and alerts are on {url}: {sorted(total)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--live-metrics", metavar="URL", help="compare metric names against this /metrics page")
    ap.add_argument("--start-server", action="store_true", help="start NEREID_BIN and use its /metrics page")
    ap.add_argument("--skip-schemas", action="store_true", help="only the metric-name check")
    ap.add_argument("--cache", default=str(ROOT / ".venv" / "deploy-schemas"), help="where the kserve wheel is kept")
    args = ap.parse_args()

    rendered = {}
    for flavour in ("cpu", "gpu"):
        k = render_kustomize(flavour)
        h = render_helm(flavour)
        rendered[flavour] = k
        compare(k, h, flavour)
        check_deployment(k, flavour)
        print(f"{flavour}: `{' '.join(KUSTOMIZE_COMMANDS[flavour])}` and the Helm chart render the same "
              f"{len(k)} objects: {', '.join(sorted(o['kind'] for o in k))}")

    if not args.skip_schemas:
        import kubernetes_validate
        from kubernetes_validate.utils import latest_version

        versions = [K8S_OLDEST, latest_version()]

        def k8s(obj):
            for v in versions:
                kubernetes_validate.validate(obj, v, strict=True)

        po = prometheus_operator_validator()
        custom = {"ServiceMonitor": po, "PrometheusRule": po,
                  "ClusterServingRuntime": kserve_validator(Path(args.cache), k8s)}
        for flavour, objects in rendered.items():
            checked = validate_all(objects, versions, custom)
            print(f"{flavour}: validated {len(checked)} objects: {sorted(set(checked))}")
        self_test(versions, custom, rendered["cpu"])
        print("not schema-checked:")
        for what in UNCHECKED_CONTENT:
            print(f"  - {what}")

    url = args.live_metrics
    proc = None
    if args.start_server:
        proc, url = start_server()
    try:
        if url:
            check_live(rendered["cpu"], url)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print("check_deploy: ok")


def self_test(versions: list[str], custom: dict, objects: list[dict]) -> None:
    """The validators must reject what they are meant to: an unknown field in each kind, and
    an unknown kind."""
    import kubernetes_validate

    for obj in objects:
        bad = copy.deepcopy(obj)
        target = bad.get("spec", bad.get("data"))
        target["notAField"] = 1 if "spec" in bad else None
        if "data" in bad and "spec" not in bad:
            bad["notAField"] = "x"
        try:
            if bad["kind"] in custom:
                custom[bad["kind"]](bad)
            else:
                for v in versions:
                    kubernetes_validate.validate(bad, v, strict=True)
        except Exception:  # noqa: BLE001
            continue
        fail(f"self-test: an unknown field in {obj['kind']} was accepted")
    try:
        kubernetes_validate.validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
                                     versions[0], strict=True)
    except Exception:  # noqa: BLE001
        print("self-test: an unknown field in each kind and an unknown kind are rejected")
        return
    fail("self-test: an unknown kind was accepted")


if __name__ == "__main__":
    main()
