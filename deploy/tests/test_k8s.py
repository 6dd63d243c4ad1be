"""The Kubernetes manifests render, validate against the API schemas, and say what we mean."""

from __future__ import annotations

import kubernetes_validate
import pytest

import crd_schemas
import k8s_policy
import traefik_rules
from deploy_support import DEPLOY, K8S, OVERLAYS, TARGETS, WORKERS, by_kind, kustomize

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


HOSTS = {"dev": "marketplace.localhost", "prod": "marketplace.example.com"}
# The targets that serve operator endpoints: backend (/api/audit), dead-letter (/api/dead-letters).
OPERATOR_TARGETS = ("backend", "dead-letter")
ADMIN_TOKEN_SECRET = "marketplace-admin-token"


def routes_for(docs: list[dict], host: str, method: str, path: str) -> list[dict]:
    request = traefik_rules.Request(host, path, method)
    return [r for d in by_kind(docs, "IngressRoute").values() for r in d["spec"]["routes"]
            if traefik_rules.matches(r["match"], request)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_sends_every_public_path_to_the_backend(rendered, overlay):
    docs = rendered[overlay]
    for method, path in k8s_policy.PUBLIC_REQUESTS:
        routes = routes_for(docs, HOSTS[overlay], method, path)
        assert routes, f"{method} {path} is not routed"
        for route in routes:
            assert route["services"] == [{"kind": "Service", "name": "backend", "port": "http"}], (path, route)
            assert not route.get("middlewares"), f"the public API goes through no middleware: {route}"
    (route,) = by_kind(docs, "IngressRoute").values()
    if overlay == "prod":
        assert route["spec"]["entryPoints"] == ["websecure"] and "tls" in route["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_routes_no_operator_health_metrics_or_unlisted_path(rendered, overlay):
    # The design (deploy/README.md): operator endpoints are not routed at all, not even behind
    # a middleware; operators use kubectl port-forward.
    docs = rendered[overlay]
    for method, path in k8s_policy.OPERATOR_REQUESTS + k8s_policy.UNLISTED_REQUESTS:
        for host in (HOSTS[overlay], "unlisted.example"):
            assert not routes_for(docs, host, method, path), f"{method} {host}{path} is routed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_backend_is_behind_the_ingress(rendered, overlay):
    docs = rendered[overlay]
    backends = {s["name"] for d in by_kind(docs, "IngressRoute").values()
                for r in d["spec"]["routes"] for s in r["services"]}
    assert backends == {"backend"}, "the dead-letter service and the workers are not routed"
    assert not by_kind(docs, "Middleware"), "no middleware: nothing operator-only is routed"
    for route in by_kind(docs, "IngressRoute").values():
        for rule in route["spec"]["routes"]:
            assert traefik_rules.hosts(rule["match"]) == {HOSTS[overlay]}, rule["match"]


def test_the_rule_evaluator_reads_traefik_rules_as_traefik_does():
    rule = "Host(`a.example`) && (Path(`/x`) || PathRegexp(`^/y/[^/]+$`)) && !Method(`DELETE`)"
    request = traefik_rules.Request
    assert traefik_rules.matches(rule, request("a.example", "/x"))
    assert traefik_rules.matches(rule, request("A.example", "/y/1", "POST"))
    assert not traefik_rules.matches(rule, request("a.example", "/y/1/2"))
    assert not traefik_rules.matches(rule, request("a.example", "/x", "DELETE"))
    assert not traefik_rules.matches(rule, request("b.example", "/x"))
    # && binds tighter than ||, and PathRegexp is unanchored unless the pattern anchors it.
    assert traefik_rules.matches("Host(`a`) && Path(`/p`) || Path(`/q`)", request("b", "/q"))
    assert traefik_rules.matches("PathRegexp(`/audit`)", request("h", "/api/audit"))
    assert traefik_rules.matches('PathPrefix("/api")', request("h", "/api/audit"))
    with pytest.raises(traefik_rules.RuleError):
        traefik_rules.matches("Header(`X`, `y`)", request("h", "/"))
    with pytest.raises(traefik_rules.RuleError):
        traefik_rules.parse("Path(`/x`) &&")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_operator_token_is_a_mounted_secret_file_in_backend_and_dead_letter_only(rendered, overlay):
    for name, d in by_kind(rendered[overlay], "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "ADMIN_TOKEN" not in env, "the token comes from a file, never an env value"
        mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        if name not in OPERATOR_TARGETS:
            assert "ADMIN_TOKEN_FILE" not in env and ADMIN_TOKEN_SECRET not in mounted, name
            continue
        path = env["ADMIN_TOKEN_FILE"]["value"]
        assert k8s_policy.secret_file(pod, container, path) == (ADMIN_TOKEN_SECRET, "token"), (name, path)
        (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == ADMIN_TOKEN_SECRET]
        assert not volume["secret"].get("optional"), "without the token the pod must not start"
        assert volume["secret"]["defaultMode"] & 0o007 == 0, "not world-readable"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True


def test_every_secret_made_by_hand_is_documented_with_the_command_that_makes_it():
    readme = (DEPLOY / "README.md").read_text()
    for name, keys in k8s_policy.OUT_OF_BAND_SECRETS.items():
        assert f"create secret generic {name}" in readme, name
        for key in keys:
            assert f"--from-literal={key}=" in readme or f"--from-file={key}=" in readme, (name, key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_isolate_exactly_our_pods(rendered, overlay):
    docs = rendered[overlay]
    policies = by_kind(docs, "NetworkPolicy")
    assert set(policies) == {"marketplace-default-deny", "marketplace-ingress-from-traefik",
                             "marketplace-ingress-metrics-scrape", "marketplace-egress"}
    deny = policies["marketplace-default-deny"]["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny and "egress" not in deny
    app_pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in by_kind(docs, "Deployment").items()}
    assert set(app_pods) == set(TARGETS)
    for name, policy in policies.items():
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector["app.kubernetes.io/name"] == "marketplace", name  # never the operators' pods
        chosen = {t for t, labels in app_pods.items() if all(labels.get(k) == v for k, v in selector.items())}
        assert chosen == ({"backend"} if name == "marketplace-ingress-from-traefik" else set(TARGETS)), (name, chosen)
    (traefik,) = policies["marketplace-ingress-from-traefik"]["spec"]["ingress"][0]["from"]
    assert traefik["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "traefik"}
    assert traefik["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "traefik"}
    # The RabbitMQ and PostgreSQL pods the egress names are the ones the operators label.
    egress = policies["marketplace-egress"]["spec"]["egress"]
    peers = [p.get("podSelector", {}).get("matchLabels") for r in egress for p in r["to"]]
    assert {"app.kubernetes.io/name": "marketplace-rabbitmq"} in peers
    assert {"cnpg.io/cluster": "marketplace-pg"} in peers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned(rendered, overlay):
    from k8s_policy import image_is_pinned

    images = [d["spec"]["image"] for d in rendered[overlay] if d["kind"] == "RabbitmqCluster"]
    images += [d["spec"]["imageName"] for d in rendered[overlay] if d["kind"] == "Cluster"]
    images += [c["image"] for d in rendered[overlay] if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"]]
    assert images and all(image_is_pinned(i) for i in images), images
