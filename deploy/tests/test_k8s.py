"""The Kubernetes manifests render, validate against the API schemas, and say what we mean."""

from __future__ import annotations

import kubernetes_validate
import pytest

import crd_schemas
from deploy_support import K8S, OVERLAYS, TARGETS, WORKERS, by_kind, kustomize

# The oldest Kubernetes we support (the native preStop `sleep` is on by default from 1.30) and
# the newest schema kubernetes-validate ships: a field must exist in both.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
OTEL_ENDPOINT = "http://signoz-otel-collector.platform.svc.cluster.local:4317"


def config(docs: list[dict]) -> dict[str, str]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("marketplace-config")]
    return cm["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_kind_matches_its_kubernetes_schema_strictly(rendered, overlay):
    problems = []
    for doc in rendered[overlay]:
        if crd_schemas.is_custom(doc):
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                problems.append(f"{version} {doc['kind']}/{doc['metadata']['name']}: {getattr(e, 'message', e)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_custom_resource_has_its_required_fields(rendered, overlay):
    custom = [d for d in rendered[overlay] if crd_schemas.is_custom(d)]
    assert {d["kind"] for d in custom} == {"RabbitmqCluster", "Cluster", "IngressRoute"}
    problems = [p for d in custom for p in crd_schemas.validate(d)]
    assert not problems, "\n".join(problems)


def test_the_strict_schema_check_rejects_a_misspelt_field():
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {
            "replica": 2,  # for replicas
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_the_root_kustomization_is_the_dev_overlay(rendered):
    assert kustomize(K8S) == rendered["dev"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_target_has_one_deployment_and_one_service_from_the_same_image(rendered, overlay):
    docs = rendered[overlay]
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    assert set(deployments) == set(TARGETS)
    assert set(services) == set(TARGETS)
    images = set()
    for name, d in deployments.items():
        (container,) = d["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [name], f"{name} runs target {container['args']}"
        images.add(container["image"])
    assert len(images) == 1, f"one image for every target, got {images}"
    assert all(d["metadata"]["namespace"] == "marketplace" for d in docs if d["kind"] != "Namespace")
    assert set(by_kind(docs, "Namespace")) == {"marketplace"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_autoscale_on_cpu_and_the_rest_have_fixed_replicas(rendered, overlay):
    docs = rendered[overlay]
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == set(WORKERS)
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= (2 if overlay == "prod" else 1)
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    deployments = by_kind(docs, "Deployment")
    assert deployments["backend"]["spec"]["replicas"] == 2
    assert deployments["dead-letter"]["spec"]["replicas"] == 1


def test_manager_runs_one_replica_in_dev_and_two_in_prod(rendered):
    assert by_kind(rendered["dev"], "Deployment")["manager"]["spec"]["replicas"] == 1
    assert by_kind(rendered["prod"], "Deployment")["manager"]["spec"]["replicas"] == 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backend_manager_and_workers_have_disruption_budgets(rendered, overlay):
    pdbs = by_kind(rendered[overlay], "PodDisruptionBudget")
    assert {"backend", "manager", *WORKERS} <= set(pdbs)
    assert pdbs["backend"]["spec"]["minAvailable"] == 1


def test_prod_replicates_the_broker_and_the_database_and_turns_faults_off(rendered):
    prod = rendered["prod"]
    assert by_kind(prod, "RabbitmqCluster")["marketplace-rabbitmq"]["spec"]["replicas"] == 3
    database = by_kind(prod, "Cluster")["marketplace-pg"]["spec"]
    assert database["instances"] == 3 and database.get("enablePDB", True)
    assert database["postgresql"]["synchronous"]["number"] >= 1, "a commit survives losing the primary"
    assert "marketplace-rabbitmq" in by_kind(prod, "PodDisruptionBudget")
    assert config(prod)["FAULT_INJECTION"] == "off"
    assert config(rendered["dev"])["FAULT_INJECTION"] == "on"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_telemetry_goes_to_the_signoz_collector(rendered, overlay):
    docs = rendered[overlay]
    assert config(docs)["OTEL_EXPORTER_OTLP_ENDPOINT"] == OTEL_ENDPOINT
    for d in by_kind(docs, "Deployment").values():
        env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["OTEL_SERVICE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.labels['app.kubernetes.io/component']")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_exposes_the_api_and_swagger_and_nothing_else(rendered, overlay):
    (route,) = by_kind(rendered[overlay], "IngressRoute").values()
    (rule,) = [r for r in route["spec"]["routes"] if r["services"][0]["name"] == "backend"]
    for prefix in ("/api", "/api-docs", "/docs"):
        assert f"PathPrefix(`{prefix}`)" in rule["match"]
    assert "/metrics" not in rule["match"] and "/healthz" not in rule["match"]
    assert [s["name"] for s in rule["services"]] == ["backend"]
    if overlay == "prod":
        assert route["spec"]["entryPoints"] == ["websecure"] and "tls" in route["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_sends_dead_letters_to_the_dead_letter_service_on_the_same_host(rendered, overlay):
    (route,) = by_kind(rendered[overlay], "IngressRoute").values()
    routes = route["spec"]["routes"]
    assert sorted(s["name"] for r in routes for s in r["services"]) == ["backend", "dead-letter"]
    (api,) = [r for r in routes if r["services"][0]["name"] == "backend"]
    (dead,) = [r for r in routes if r["services"][0]["name"] == "dead-letter"]
    assert dead["match"].endswith("PathPrefix(`/api/dead-letters`)")
    assert "/metrics" not in dead["match"] and "/healthz" not in dead["match"]
    host = api["match"].split(" && ")[0]
    assert host.startswith("Host(") and dead["match"].startswith(host + " && "), (api["match"], dead["match"])
    # Traefik ranks a rule without a priority by its length: the narrower prefix must win
    # over the backend's /api.
    assert dead.get("priority", len(dead["match"])) > api.get("priority", len(api["match"]))
    assert dead["services"][0]["port"] == "http"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned(rendered, overlay):
    from k8s_policy import image_is_pinned

    images = [d["spec"]["image"] for d in rendered[overlay] if d["kind"] == "RabbitmqCluster"]
    images += [d["spec"]["imageName"] for d in rendered[overlay] if d["kind"] == "Cluster"]
    images += [c["image"] for d in rendered[overlay] if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"]]
    assert images and all(image_is_pinned(i) for i in images), images
