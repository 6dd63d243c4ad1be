"""Fixtures for the deployment tests (deploy/tests): no Docker engine, no cluster, no network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The helper modules beside this file import under any --import-mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_support import K8S, OVERLAYS, kustomize  # noqa: E402


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Each overlay's manifests, rendered once per session."""
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
