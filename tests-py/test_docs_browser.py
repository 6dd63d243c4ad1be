"""The Swagger UI at /docs, rendered by a real browser (headless Chromium): the page's
scripts load from the binary itself (no network) and list every documented operation."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (test.sh installs Debian's `chromium` when it can)")
def test_swagger_ui_renders_every_operation_in_a_real_browser(marketplace):
    spec = marketplace.get("/api-docs/openapi.json").json()
    documented = set(spec["paths"])
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            # Lets Swagger UI's scripts fetch the spec and render before the DOM is dumped.
            "--virtual-time-budget=10000",
            f"{marketplace.url}/docs/",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rendered = set(re.findall(r'data-path="([^"]+)"', out.stdout))
    assert rendered == documented, f"rendered {sorted(rendered)}, documented {sorted(documented)}"
    assert "Late-token marketplace" in out.stdout
    for path in ("/api/purchase/", "/api/audit", "/api/dead-letters/{id}/replay"):
        assert path in rendered
