"""The deployment policy holds for every overlay, and objects to manifests that break it."""

from __future__ import annotations

import copy

import pytest

import crd_schemas
import k8s_policy
from deploy_support import OVERLAYS, by_kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_locked_down_limited_probed_and_pinned(rendered, overlay):
    problems = k8s_policy.container_violations(rendered[overlay])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_credential_is_written_in_plain_text(rendered, overlay):
    problems = k8s_policy.plaintext_secret_violations(rendered[overlay])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(rendered, overlay):
    problems = k8s_policy.reference_violations(rendered[overlay])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_replicated_workload_falls_back_to_sqlite(rendered, overlay):
    problems = k8s_policy.scaling_violations(rendered[overlay])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_serves_no_operator_path(rendered, overlay):
    problems = k8s_policy.ingress_violations(rendered[overlay])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_isolate_every_pod_and_allow_only_what_it_needs(rendered, overlay):
    problems = k8s_policy.network_violations(rendered[overlay])
    assert not problems, "\n".join(problems)


# ---- the policy can fail ------------------------------------------------------------------


@pytest.fixture
def prod(rendered) -> list[dict]:
    return copy.deepcopy(rendered["prod"])


def container(docs: list[dict], deployment: str) -> dict:
    return by_kind(docs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]


def env(docs: list[dict], deployment: str) -> list[dict]:
    return container(docs, deployment)["env"]


BREAKAGES = {
    "no memory limit": lambda d: container(d, "payment")["resources"]["limits"].pop("memory"),
    "no resources": lambda d: container(d, "order").pop("resources"),
    "runs as root": lambda d: container(d, "order")["securityContext"].update(runAsNonRoot=False, runAsUser=0),
    "writable root": lambda d: container(d, "manager")["securityContext"].update(readOnlyRootFilesystem=False),
    "escalation": lambda d: container(d, "backend")["securityContext"].pop("allowPrivilegeEscalation"),
    "capabilities kept": lambda d: container(d, "delivery")["securityContext"]["capabilities"].update(drop=[]),
    "latest tag": lambda d: container(d, "inventory").update(image="registry.example.com/marketplace:latest"),
    "no tag": lambda d: container(d, "inventory").update(image="registry.example.com/marketplace"),
    "no liveness probe": lambda d: container(d, "dead-letter").pop("livenessProbe"),
    "readiness on /healthz": lambda d: container(d, "backend")["readinessProbe"]["httpGet"].update(path="/healthz"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_container_policy_catches(prod, breakage):
    BREAKAGES[breakage](prod)
    assert k8s_policy.container_violations(prod), f"{breakage} went unnoticed"


def test_a_literal_password_in_a_url_is_caught(prod):
    amqp = next(e for e in env(prod, "payment") if e["name"] == "AMQP_URL")
    amqp["value"] = "amqp://marketplace:hunter2@marketplace-rabbitmq:5672/%2f"
    assert any("literal password" in p for p in k8s_policy.plaintext_secret_violations(prod))


def test_a_literal_value_for_a_password_variable_is_caught(prod):
    password = next(e for e in env(prod, "manager") if e["name"] == "RABBITMQ_PASSWORD")
    password.pop("valueFrom")
    password["value"] = "hunter2"
    assert k8s_policy.plaintext_secret_violations(prod)


def test_a_committed_secret_is_caught(prod):
    prod.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "x"}})
    assert k8s_policy.plaintext_secret_violations(prod)


def test_a_secret_no_operator_generates_is_caught(prod):
    url = next(e for e in env(prod, "order") if e["name"] == "DATABASE_URL")
    url["valueFrom"]["secretKeyRef"]["name"] = "postgres-credentials"
    assert any("nothing creates" in p for p in k8s_policy.reference_violations(prod))


def test_a_variable_used_before_it_is_defined_is_caught(prod):
    variables = env(prod, "order")
    amqp = next(i for i, e in enumerate(variables) if e["name"] == "AMQP_URL")
    variables.insert(0, variables.pop(amqp))
    assert any("before it is defined" in p for p in k8s_policy.reference_violations(prod))


def test_a_service_selecting_nothing_is_caught(prod):
    by_kind(prod, "Service")["payment"]["spec"]["selector"]["app.kubernetes.io/component"] = "payments"
    assert k8s_policy.reference_violations(prod)


def test_replicas_beside_an_autoscaler_are_caught(prod):
    by_kind(prod, "Deployment")["order"]["spec"]["replicas"] = 2
    assert any("HPA owns" in p for p in k8s_policy.reference_violations(prod))


def test_a_manager_without_postgres_is_caught(prod):
    variables = env(prod, "manager")
    variables[:] = [e for e in variables if e["name"] != "DATABASE_URL"]
    assert any("SQLite" in p for p in k8s_policy.scaling_violations(prod))


def test_a_custom_resource_missing_a_required_field_is_caught(prod):
    route = copy.deepcopy(by_kind(prod, "IngressRoute")["marketplace"])
    del route["spec"]["routes"][0]["match"]
    assert crd_schemas.validate(route)
    cluster = copy.deepcopy(by_kind(prod, "Cluster")["marketplace-pg"])
    del cluster["spec"]["instances"]
    assert crd_schemas.validate(cluster)
    rabbit = copy.deepcopy(by_kind(prod, "RabbitmqCluster")["marketplace-rabbitmq"])
    rabbit["spec"]["replicas"] = 2
    rabbit["spec"]["persistance"] = {"storage": "1Gi"}
    assert len(crd_schemas.validate(rabbit)) == 2


# ---- the operator token ------------------------------------------------------------------


def pod(docs: list[dict], deployment: str) -> dict:
    return by_kind(docs, "Deployment")[deployment]["spec"]["template"]["spec"]


def test_a_token_file_outside_any_mounted_secret_is_caught(prod):
    token = next(e for e in env(prod, "backend") if e["name"] == "ADMIN_TOKEN_FILE")
    token["value"] = "/tmp/token"
    assert any("no mounted Secret" in p for p in k8s_policy.plaintext_secret_violations(prod))


def test_a_token_file_whose_volume_is_gone_is_caught(prod):
    pod(prod, "dead-letter")["volumes"] = [v for v in pod(prod, "dead-letter")["volumes"] if "secret" not in v]
    assert any("no mounted Secret" in p for p in k8s_policy.plaintext_secret_violations(prod))
    assert any("lacks" in p for p in k8s_policy.reference_violations(prod))


def test_a_literal_admin_token_is_caught(prod):
    env(prod, "backend").append({"name": "ADMIN_TOKEN", "value": "0123456789abcdef0123"})
    assert any("ADMIN_TOKEN holds a literal" in p for p in k8s_policy.plaintext_secret_violations(prod))


def test_a_token_secret_nothing_creates_or_a_missing_key_is_caught(prod):
    (volume,) = [v for v in pod(prod, "backend")["volumes"] if "secret" in v]
    volume["secret"]["items"][0]["key"] = "password"
    assert any("absent from marketplace-admin-token" in p for p in k8s_policy.reference_violations(prod))
    volume["secret"]["secretName"] = "admin-token"
    assert any("nothing creates" in p for p in k8s_policy.reference_violations(prod))


# ---- the ingress -------------------------------------------------------------------------


def routes(docs: list[dict]) -> list[dict]:
    return by_kind(docs, "IngressRoute")["marketplace"]["spec"]["routes"]


def operator_route(middlewares: list[str] | None = None) -> dict:
    route = {"kind": "Rule", "match": "Host(`marketplace.example.com`) && PathPrefix(`/api/dead-letters`)",
             "services": [{"kind": "Service", "name": "dead-letter", "port": "http"}]}
    if middlewares is not None:
        route["middlewares"] = [{"name": m} for m in middlewares]
    return route


def middleware(name: str, spec: dict) -> dict:
    return {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
            "metadata": {"name": name, "namespace": "marketplace"}, "spec": spec}


INGRESS_BREAKAGES = {
    "all of /api": lambda d: routes(d)[0].update(
        match="Host(`marketplace.example.com`) && (PathPrefix(`/api`) || PathPrefix(`/docs`))"),
    "a prefix over a public path": lambda d: routes(d)[0].update(
        match="Host(`marketplace.example.com`) && PathPrefix(`/api/orders`)"),
    "an unanchored regexp": lambda d: routes(d)[0].update(
        match="Host(`marketplace.example.com`) && PathRegexp(`/api/users/.+`)"),
    "Swagger's prefix": lambda d: routes(d)[1].update(
        match="Host(`marketplace.example.com`) && PathPrefix(`/docs`)"),
    "any host": lambda d: routes(d).append({**operator_route(), "match": "PathPrefix(`/metrics`)"}),
    "dead letters, unguarded": lambda d: routes(d).append(operator_route()),
    "dead letters, missing middleware": lambda d: routes(d).append(operator_route(["operators-only"])),
    "dead letters, basic auth": lambda d: (
        routes(d).append(operator_route(["operators-only"])),
        d.append(middleware("operators-only", {"basicAuth": {"secret": "marketplace-operator-basic-auth"}}))),
    "dead letters, allow-list open to all": lambda d: (
        routes(d).append(operator_route(["operators-only"])),
        d.append(middleware("operators-only", {"ipAllowList": {"sourceRange": ["10.0.0.0/8", "0.0.0.0/0"]}}))),
    "a matcher it cannot judge": lambda d: routes(d)[0].update(
        match="Host(`marketplace.example.com`) && HeaderRegexp(`X-Op`, `.*`)"),
}


# What each breakage must be reported as (not merely some complaint).
INGRESS_EXPECTED = {
    "all of /api": "serves operator paths",
    "a prefix over a public path": "GET /api/orders/../audit",
    "an unanchored regexp": "GET /api/users/a/../../audit",
    "Swagger's prefix": "GET /docs/../api/audit",
    "any host": "GET /metrics",
    "dead letters, unguarded": "it has no middleware",
    "dead letters, missing middleware": "Middleware operators-only does not exist",
    "dead letters, basic auth": "basic auth takes the Authorization header",
    "dead letters, allow-list open to all": "allows every address",
    "a matcher it cannot judge": "cannot evaluate",
}


@pytest.mark.parametrize("breakage", INGRESS_BREAKAGES)
def test_the_ingress_policy_catches(prod, breakage):
    INGRESS_BREAKAGES[breakage](prod)
    problems = k8s_policy.ingress_violations(prod)
    assert any(INGRESS_EXPECTED[breakage] in p for p in problems), f"{breakage} went unnoticed: {problems}"


def test_the_ingress_policy_accepts_an_operator_route_behind_a_narrow_allow_list(prod):
    routes(prod).append(operator_route(["operators-only"]))
    prod.append(middleware("operators-only", {"ipAllowList": {"sourceRange": ["10.20.0.0/16"]}}))
    assert not k8s_policy.ingress_violations(prod)


def test_a_middleware_that_does_not_exist_is_caught(prod):
    routes(prod)[0]["middlewares"] = [{"name": "secure-headers"}]
    assert any("Middleware secure-headers does not exist" in p for p in k8s_policy.reference_violations(prod))


# ---- network policies --------------------------------------------------------------------


def policy(docs: list[dict], name: str) -> dict:
    return by_kind(docs, "NetworkPolicy")[name]["spec"]


def egress_rule(docs: list[dict], port: int) -> dict:
    return next(r for r in policy(docs, "marketplace-egress")["egress"] if r["ports"][0]["port"] == port)


def drop_policies(docs: list[dict], *names: str) -> None:
    docs[:] = [d for d in docs if not (d["kind"] == "NetworkPolicy" and d["metadata"]["name"] in names)]


NETWORK_BREAKAGES = {
    "no ingress isolation": lambda d: drop_policies(
        d, "marketplace-default-deny", "marketplace-ingress-metrics-scrape"),
    "no egress isolation": lambda d: drop_policies(d, "marketplace-default-deny", "marketplace-egress"),
    "every pod of the namespace": lambda d: policy(d, "marketplace-default-deny").update(podSelector={}),
    "a policy selecting nothing": lambda d: policy(d, "marketplace-egress")["podSelector"].update(
        matchLabels={"app.kubernetes.io/name": "market-place"}),
    "egress anywhere": lambda d: policy(d, "marketplace-egress")["egress"].append(
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
    "egress to every destination on 443": lambda d: policy(d, "marketplace-egress")["egress"].append(
        {"ports": [{"protocol": "TCP", "port": 443}]}),
    "every port of RabbitMQ": lambda d: egress_rule(d, 5672).pop("ports"),
    "the management UI": lambda d: egress_rule(d, 5672)["ports"].append({"protocol": "TCP", "port": 15672}),
    "the Kubernetes API": lambda d: policy(d, "marketplace-egress")["egress"].append(
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}}],
         "ports": [{"protocol": "TCP", "port": 443}]}),
    "egress to each other": lambda d: policy(d, "marketplace-egress")["egress"].append(
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "marketplace"}}}],
         "ports": [{"protocol": "TCP", "port": 8000}]}),
    "no way to PostgreSQL": lambda d: policy(d, "marketplace-egress")["egress"].remove(egress_rule(d, 5432)),
    "no way to DNS": lambda d: policy(d, "marketplace-egress")["egress"].remove(egress_rule(d, 53)),
    "no way to the collector": lambda d: policy(d, "marketplace-egress")["egress"].remove(egress_rule(d, 4317)),
    "Traefik to the dead letters": lambda d: policy(d, "marketplace-ingress-from-traefik")["podSelector"][
        "matchLabels"].update({"app.kubernetes.io/component": "dead-letter"}),
    "Traefik to every pod": lambda d: policy(d, "marketplace-ingress-from-traefik")["podSelector"][
        "matchLabels"].pop("app.kubernetes.io/component"),
    "Traefik cut off from the backend": lambda d: drop_policies(d, "marketplace-ingress-from-traefik"),
    "Traefik on another port": lambda d: policy(d, "marketplace-ingress-from-traefik")["ingress"][0].update(
        ports=[{"protocol": "TCP", "port": 9000}]),
    "ingress from each other": lambda d: policy(d, "marketplace-ingress-metrics-scrape")["ingress"][0]["from"].append(
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "marketplace"}}}),
    "ingress from any namespace": lambda d: policy(d, "marketplace-ingress-metrics-scrape")["ingress"][0][
        "from"].append({"namespaceSelector": {}}),
    "ingress from everywhere": lambda d: policy(d, "marketplace-ingress-metrics-scrape")["ingress"][0].pop("from"),
}


NETWORK_EXPECTED = {
    "no ingress isolation": "restricts its ingress",
    "no egress isolation": "restricts its egress",
    "every pod of the namespace": "the operators' RabbitMQ and PostgreSQL too",
    "a policy selecting nothing": "selects none of our pods",
    "egress anywhere": "to the addresses",
    "egress to every destination on 443": "allows every destination",
    "every port of RabbitMQ": "allows every port",
    "the management UI": "allows RabbitMQ on [('TCP', 15672)] too",
    "the Kubernetes API": "which is not RabbitMQ",
    "egress to each other": "which is not RabbitMQ",
    "no way to PostgreSQL": "cannot reach PostgreSQL",
    "no way to DNS": "cannot reach DNS",
    "no way to the collector": "cannot reach the OTLP collector",
    "Traefik to the dead letters": "lets Traefik reach Deployment/dead-letter",
    "Traefik to every pod": "lets Traefik reach Deployment/order",
    "Traefik cut off from the backend": "but may not connect",
    "Traefik on another port": "on {9000}",
    "ingress from each other": "pods of its own namespace",
    "ingress from any namespace": "admits the namespace *",
    "ingress from everywhere": "admits every source",
}


@pytest.mark.parametrize("breakage", NETWORK_BREAKAGES)
def test_the_network_policy_catches(prod, breakage):
    NETWORK_BREAKAGES[breakage](prod)
    problems = k8s_policy.network_violations(prod)
    assert any(NETWORK_EXPECTED[breakage] in p for p in problems), f"{breakage} went unnoticed: {problems}"
