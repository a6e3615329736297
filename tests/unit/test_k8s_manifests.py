"""The Kubernetes and KServe files of deploy/k8s validate offline against the schemas of their kinds and
agree with the code: container args parse with the cloud's real CLI parser, ports match the probes and
Services, and the preStop pause plus the drain fit in the termination grace period.

Schemas: the core kinds against ``kubernetes-validate``'s strict schemas (unknown fields refused) for
the oldest Kubernetes the files need (1.30: the preStop ``sleep`` action) and the newest it ships; the
KServe kinds against ``k8s_schemas/kserve-*.schema.json``, derived from the KServe SDK's model classes
(``k8s_schemas/derive_kserve_schema.py`` says why the SDK itself is not installed), whose embedded
Kubernetes types (containers, probes, metadata) resolve into the same strict Kubernetes schemas.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from fogline.cloud.cli import build_parser
from fogline.cloud.metrics import CloudMetrics
from fogline.cloud.settings import ServingSettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CLOUD_DEPLOYMENTS = ("cloud.yaml", "cloud-gpu.yaml", "cloud-tls.yaml")
KSERVE_SCHEMA = next((Path(__file__).parent / "k8s_schemas").glob("kserve-*.schema.json"))


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _all_manifests() -> list[tuple[str, dict]]:
    return [(str(path.relative_to(K8S)), doc) for path in sorted(K8S.rglob("*.yaml"))
            if path.name != "prometheus-adapter-values.yaml" for doc in _docs(str(path.relative_to(K8S)))]


def _by_kind(name: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for doc in _docs(name):
        found.setdefault(doc["kind"], []).append(doc)
    return found


def _cloud_args(argv: list[str]):
    return build_parser("fogline cloud").parse_args(["serve", *argv])


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------- schemas

def test_every_file_under_deploy_k8s_is_covered():
    kinds = {doc["kind"] for _, doc in _all_manifests()}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ServingRuntime", "InferenceService"} <= kinds


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name,doc", [(n, d) for n, d in _all_manifests()
                                      if not d["apiVersion"].startswith("serving.kserve.io/")],
                         ids=lambda v: v if isinstance(v, str) else v.get("kind", "?"))
def test_core_manifests_validate_strictly(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field


def _kserve_validator(kind: str) -> jsonschema.Validator:
    schema = json.loads(KSERVE_SCHEMA.read_text())
    version_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    latest = kubernetes_validate.utils.latest_version()
    k8s_defs = json.loads((version_dir / f"v{latest}-local-strict" / "_definitions.json").read_text())
    registry = Registry().with_resource(k8s_defs["$id"], Resource.from_contents(k8s_defs))
    root = {**schema, **schema["roots"][kind]}
    return jsonschema.Draft202012Validator(root, registry=registry)


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in _all_manifests()
                                      if d["apiVersion"].startswith("serving.kserve.io/")],
                         ids=lambda v: v if isinstance(v, str) else v.get("kind", "?"))
def test_kserve_manifests_validate_against_the_sdk_models(name, doc):
    expected_api = {"ServingRuntime": "serving.kserve.io/v1alpha1",
                    "InferenceService": "serving.kserve.io/v1beta1"}[doc["kind"]]
    assert doc["apiVersion"] == expected_api
    errors = sorted(_kserve_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_kserve_schema_catches_mistakes():
    good = _docs("kserve/servingruntime.yaml")[0]
    validator = _kserve_validator("ServingRuntime")
    assert not list(validator.iter_errors(good))
    typo = json.loads(json.dumps(good))
    typo["spec"]["supportedModelFormat"] = typo["spec"].pop("supportedModelFormats")
    assert list(validator.iter_errors(typo))  # unknown field (and required `containers` kept)
    bad_probe = json.loads(json.dumps(good))
    bad_probe["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 8001
    assert list(validator.iter_errors(bad_probe))  # the Kubernetes Container schema, strict
    no_containers = json.loads(json.dumps(good))
    del no_containers["spec"]["containers"]
    assert list(validator.iter_errors(no_containers))


# ------------------------------------------------------------------------------------ consistency

@pytest.mark.parametrize("name", CLOUD_DEPLOYMENTS)
def test_cloud_deployment_agrees_with_the_cli_and_the_services(name):
    (dep,) = _by_kind(name)["Deployment"]
    services = _by_kind("cloud-services.yaml")["Service"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    args = _cloud_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert _port(args.listen) == ports["grpc"] and args.metrics_port == ports["metrics"]
    for svc in services:
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    (headless,) = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert [p["targetPort"] for p in headless["spec"]["ports"]] == ["grpc"]
    assert any(s["spec"].get("clusterIP") != "None" for s in services)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if "grpc" in spec:
            assert spec["grpc"]["port"] == ports["grpc"]
        else:  # cloud-tls.yaml: a Check over mutual TLS, in Python, on the serving port
            script = spec["exec"]["command"][-1]
            compile(script, f"{name}:{probe}", "exec")
            assert f'"127.0.0.1:{ports["grpc"]}"' in script
    # a drain, once started, ends before the kubelet's SIGKILL; a draining pod is not restarted
    drain = args.grace_s if args.grace_s is not None else ServingSettings().grace_s
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + drain + 10
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > drain
    assert args.max_connection_age_s and args.max_connection_age_s > 0
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _secret_files(dep: dict) -> dict[str, str]:
    """mount path -> Secret name, for the Secret volumes of a Deployment's container."""
    pod = dep["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    (container,) = pod["containers"]
    return {m["mountPath"]: secrets[m["name"]] for m in container["volumeMounts"] if m["name"] in secrets}


@pytest.mark.parametrize("name", CLOUD_DEPLOYMENTS)
def test_security_files_come_from_a_mounted_secret(name):
    (dep,) = _by_kind(name)["Deployment"]
    args = _cloud_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    mounts = _secret_files(dep)
    files = [args.tokens_file, args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file]
    assert args.tokens_file is not None
    for path in filter(None, files):
        assert str(path.parent) in mounts, f"{path} is not on a Secret volume"
    if name == "cloud-tls.yaml":
        assert None not in files
        script = dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"][-1]
        for needed in re.findall(r'd \+ "([\w.]+)"', script):  # the probe's files sit in the same Secret
            assert needed in (K8S / name).read_text().split("kubectl -n fogline create secret")[1].split("\n#\n")[0]


def test_gpu_variant_asks_for_a_gpu_and_cuda():
    (dep,) = _by_kind("cloud-gpu.yaml")["Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert _cloud_args(container["args"]).device == "cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (cpu,) = _by_kind("cloud.yaml")["Deployment"]
    assert dep["metadata"]["name"] == cpu["metadata"]["name"]  # an alternative: same Services, PDB, HPA


def test_disruption_budget_and_autoscalers_target_the_cloud():
    (dep,) = _by_kind("cloud.yaml")["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    (pdb,) = _by_kind("cloud-pdb.yaml")["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("cloud-hpa.yaml", "cloud-hpa-inflight.yaml"):
        (hpa,) = _by_kind(name)["HorizontalPodAutoscaler"]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": dep["metadata"]["name"]}
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # with one pod allowed to go, the minimum still leaves a replica to reconnect to
        assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1


def test_inflight_autoscaler_reads_the_clouds_real_gauge_through_the_adapter_rule():
    (hpa,) = _by_kind("cloud-hpa-inflight.yaml")["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rules = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.search(rule["name"]["matches"], series)
    gauges = {m.name: m.type for m in CloudMetrics().registry.collect()}
    assert gauges.get(series) == "gauge"
    assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])


def test_kserve_runtime_runs_the_cloud_image_on_its_grpc_port():
    (runtime,) = _by_kind("kserve/servingruntime.yaml")["ServingRuntime"]
    (isvc,) = _by_kind("kserve/inferenceservice.yaml")["InferenceService"]
    (dep,) = _by_kind("cloud.yaml")["Deployment"]
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == dep["spec"]["template"]["spec"]["containers"][0]["image"]
    args = _cloud_args(container["args"])
    (port,) = container["ports"]
    assert port["name"] == "h2c" and port["containerPort"] == _port(args.listen)  # h2c: gRPC
    assert runtime["spec"]["grpcEndpoint"] == f"port:{_port(args.listen)}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == _port(args.listen)
    assert {"grpc-v2", "v2"} <= set(runtime["spec"]["protocolVersions"])
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "grpc-v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    drain = args.grace_s if args.grace_s is not None else ServingSettings().grace_s
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert predictor["terminationGracePeriodSeconds"] >= pre_stop + drain + 10
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_the_strict_kubernetes_schemas_catch_mistakes():
    (dep,) = _by_kind("cloud.yaml")["Deployment"]
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 8001
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[-1], strict=True)
