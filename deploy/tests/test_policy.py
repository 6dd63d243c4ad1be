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
