"""What deploy/ passes to the binary is what the binary takes: its targets and its variables.

Read from the source (the services' names in contracts/src/targets.rs, VARIABLES in
common/src/config/variables.rs), so a renamed target or variable fails here instead of in a
cluster.
"""

from __future__ import annotations

import re

import pytest

from deploy_support import REPO, TARGETS, by_kind, compose_config

# Standard OpenTelemetry SDK variables, read by the exporter rather than by our Config.
OTEL = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"}
# Set only to build other values through $(VAR) expansion in the pod spec.
HELPERS = {"POD_NAME", "POD_NAMESPACE", "NODE_NAME", "DEPLOYMENT_ENVIRONMENT",
           "RABBITMQ_USERNAME", "RABBITMQ_PASSWORD", "RABBITMQ_HOST", "RABBITMQ_PORT"}


def const_block(path: str, name: str) -> str:
    text = (REPO / path).read_text()
    m = re.search(rf"pub const {name}\b[^=]*=\s*&\[(.*?)\n\];", text, re.S)
    assert m, f"{name} not found in {path}"
    return m[1]


def binary_targets() -> set[str]:
    """`all` and every service's name, as `Service::name` spells them."""
    text = (REPO / "contracts/src/targets.rs").read_text()
    m = re.search(r"pub const fn name\(self\) -> &'static str \{(.*?)\n    \}", text, re.S)
    assert m, "Service::name not found in contracts/src/targets.rs"
    names = set(re.findall(r'Service::\w+ => "([a-z][a-z-]*)"', m[1]))
    assert names, "no service name found in Service::name"
    return names | {"all"}


def binary_variables() -> set[str]:
    return set(re.findall(r'\(\s*"([A-Z][A-Z0-9_]*)",', const_block("common/src/config/variables.rs", "VARIABLES")))


def test_deploy_runs_every_service_target_the_binary_has():
    services = binary_targets() - {"all", "healthcheck"}
    assert services == set(TARGETS)


def test_every_variable_kubernetes_sets_is_one_the_binary_reads(rendered):
    known = binary_variables() | OTEL | HELPERS
    for overlay, docs in rendered.items():
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
        unknown = set(cm["data"]) - known
        for d in by_kind(docs, "Deployment").values():
            unknown |= {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]} - known
        assert not unknown, f"{overlay}: the binary reads none of {sorted(unknown)}"


def test_every_variable_compose_sets_is_one_the_binary_reads():
    known = binary_variables() | OTEL
    for target in TARGETS:
        unknown = set(compose_config()["services"][target]["environment"]) - known
        assert not unknown, f"{target}: the binary reads none of {sorted(unknown)}"


def _serve_readyz(status):
    """A throwaway HTTP server answering /readyz with `status`; returns (server, port)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(status if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.mark.skipif(not (REPO / "target" / "release" / "marketplace").exists(),
                    reason="needs the release binary (./test.sh builds it first)")
@pytest.mark.parametrize("status, expected_exit", [(200, 0), (503, 1), (None, 1)])
def test_the_healthcheck_command_compose_runs_reflects_readyz(status, expected_exit):
    import socket
    import subprocess

    if status is None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = None
    else:
        server, port = _serve_readyz(status)
    try:
        done = subprocess.run(
            [str(REPO / "target" / "release" / "marketplace"), "healthcheck"],
            env={"HTTP_ADDR": f"127.0.0.1:{port}", "PATH": "/usr/bin:/bin"},
            timeout=10,
        )
        assert done.returncode == expected_exit
    finally:
        if server:
            server.shutdown()
