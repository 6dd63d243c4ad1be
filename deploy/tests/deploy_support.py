"""Paths, the command-line tools the requirements install, and rendering of the overlays."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1]
REPO = DEPLOY.parent
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
OVERLAYS = ("dev", "prod")

# Every target of the `marketplace` binary but `all` (every service in one process).
TARGETS = ("backend", "manager", "order", "payment", "inventory", "delivery", "dead-letter")
WORKERS = ("order", "payment", "inventory", "delivery")


def tool(name: str) -> str:
    """The tool installed beside this interpreter (the venv), else on PATH; fail if absent.

    The venv's copy comes first: a system kubectl may carry an older kustomize.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -r deploy/tests/requirements.txt")
    return found


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)


def kustomize(path: Path) -> list[dict]:
    out = run(tool("kubectl"), "kustomize", str(path))
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def compose_config(path: Path = COMPOSE, **variables: str) -> dict:
    """The model `docker compose config` resolves, with only the given variables set."""
    env = {k: v for k, v in os.environ.items() if not re.match(r"(OTEL_|RABBITMQ_|POSTGRES_|COMPOSE_)", k)}
    out = run(tool("docker-compose"), "-f", str(path), "config", "--format", "json", env=env | variables)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
