"""Invalid configuration stops the start at once, with a message naming the variable; an
unknown target is refused too. Nothing here needs a broker: the process must not get that far."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest
from market import binary, free_port


def run(args, **env):
    with tempfile.TemporaryDirectory(prefix="mkt-config-") as tmp:
        full = {
            **os.environ,
            "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/mkt-config-never-created",
            "HTTP_ADDR": f"127.0.0.1:{free_port()}",
            "DATA_DIR": os.path.join(tmp, "data"),
            "NO_COLOR": "1",
            **env,
        }
        if "DATABASE_URL" not in env:
            full.pop("DATABASE_URL", None)
        try:
            return subprocess.run(
                [str(binary()), *args], check=False, env=full, cwd=tmp, capture_output=True, text=True, timeout=10
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{args} {env} did not exit within 10 s: {e.stdout!r} {e.stderr!r}") from None


@pytest.mark.parametrize(
    "variable,value",
    [
        ("STEP_TIMEOUT_MS", "soon"),
        ("STEP_TIMEOUT_MS", "-5"),
        ("INITIAL_CREDITS", "-1"),
        ("INITIAL_STOCK", "lots"),
        ("FAULT_INJECTION", "maybe"),
        ("HTTP_ADDR", "not-an-address"),
        ("AMQP_URL", "http://127.0.0.1:5672/"),
        ("DATABASE_URL", "mysql://localhost/db"),
    ],
)
def test_an_invalid_variable_stops_the_start_naming_it(variable, value):
    done = run(["all"], **{variable: value})
    assert done.returncode != 0, f"{variable}={value!r} was accepted"
    assert variable in done.stdout + done.stderr, f"output does not name {variable}: {done.stdout}{done.stderr}"


def test_an_unknown_target_is_refused():
    done = run(["shop"])
    assert done.returncode != 0
    assert "shop" in done.stdout + done.stderr


def test_help_lists_every_target_and_variable():
    done = run(["--help"])
    assert done.returncode == 0, done.stderr
    for word in (
        "all",
        "backend",
        "manager",
        "order",
        "payment",
        "inventory",
        "delivery",
        "dead-letter",
        "AMQP_URL",
        "HTTP_ADDR",
        "DATA_DIR",
        "DATABASE_URL",
        "STEP_TIMEOUT_MS",
        "INITIAL_CREDITS",
        "INITIAL_STOCK",
        "FAULT_INJECTION",
    ):
        assert word in done.stdout, f"--help does not mention {word}"
