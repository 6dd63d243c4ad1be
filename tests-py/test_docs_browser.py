"""The Swagger UI at /docs, rendered by a real browser (headless Chromium): the page's
scripts load from the binary itself (no network) and list every documented operation."""

from __future__ import annotations

import re
import subprocess

import pytest
from market import BROWSER_REQUIRED, CHROMIUM, NO_BROWSER


@pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED, reason=NO_BROWSER)
def test_swagger_ui_renders_every_operation_in_a_real_browser(marketplace):
    assert CHROMIUM is not None, NO_BROWSER
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
