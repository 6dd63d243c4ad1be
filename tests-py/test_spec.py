"""The OpenAPI document is the truth: schemathesis generates requests from
`/api-docs/openapi.json` (valid ones, invalid ones, and sequences that follow its links) and
checks every answer against it with `--checks all`: no 5xx, every status and body as
documented, every schema-valid request accepted and every schema-violating one refused,
and the operator endpoints' bearer scheme enforced (the instance runs with ADMIN_TOKEN).

A bounded, deterministic budget: a fixed seed and example count per operation. The
endless Server-Sent Events streams are left out (see the command).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOKEN = "spec-token-0123456789abcdef"
EXAMPLES = 25


def schemathesis() -> Path:
    exe = Path(sys.executable).parent / "schemathesis"
    if not exe.exists():
        pytest.fail(f"schemathesis is not installed in {exe.parent}: pip install -r tests-py/requirements.txt")
    return exe


@pytest.mark.timeout(600)
def test_schemathesis_finds_nothing_against_the_openapi_document(start_marketplace, tmp_path):
    # Enough credits and stock that generated purchases are decided, not refused for funds.
    m = start_marketplace(
        "spec",
        env={"ADMIN_TOKEN": TOKEN, "INITIAL_CREDITS": "1000000000", "INITIAL_STOCK": "1000000000"},
    )
    report = tmp_path / "schemathesis.txt"
    cmd = [
        str(schemathesis()),
        "run",
        f"{m.url}/api-docs/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "20261201",
        "--generation-deterministic",
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--request-timeout",
        "10",
        # The Server-Sent Events streams never end, so a request to one only ends at the
        # timeout; their behaviour (events, filters, resume, slow clients) has its own tests.
        "--exclude-path-regex",
        "/stream$",
        "--no-color",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=540, check=False)
    report.write_text(done.stdout + done.stderr)
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-120:])
    assert done.returncode == 0, f"schemathesis found problems (exit {done.returncode}):\n{tail}\n{m.log_tail(20)}"
