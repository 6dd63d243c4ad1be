"""Losing RabbitMQ or the database is survived: /readyz says so while it lasts, and the
marketplace reconnects, re-declares its topology and takes orders again."""

from __future__ import annotations

import subprocess
import time

from market import PG_HOST, PG_PORT, PG_USER, create_vhost, delete_vhost, unique


def wait_status(m, path, status, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert m.alive, f"{m.name} exited\n{m.log_tail()}"
        try:
            last = m.get(path, timeout=2).status_code
        except Exception as e:  # noqa: BLE001 - a refused connection is an answer too
            last = repr(e)
        if last == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} not {status} within {timeout}s (last: {last})")


def test_readyz_reports_a_lost_broker_and_the_marketplace_recovers(start_marketplace):
    m = start_marketplace("broker")
    user = unique("outage")
    assert m.wait_final(m.buy(user, price=1, amount=1))["status"] == "SUCCESS"

    # Deleting the vhost closes every connection to it and removes all its queues.
    delete_vhost(m.vhost)
    wait_status(m, "/readyz", 503, timeout=10)
    assert m.get("/healthz").status_code == 200, "liveness must not depend on the broker"

    create_vhost(m.vhost)
    wait_status(m, "/readyz", 200, timeout=30)
    deadline = time.monotonic() + 20
    while True:
        r = m.purchase(user, 1, 1)
        if r.status_code == 202:
            break
        assert time.monotonic() < deadline, f"purchases still refused after reconnect: {r.status_code} {r.text}"
        time.sleep(0.2)
    assert m.wait_final(r.json()["order_id"], timeout=15)["status"] == "SUCCESS"
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - 2)


def test_a_dropped_postgres_connection_is_survived(start_marketplace):
    m = start_marketplace("pg-drop", postgres=True)
    user = unique("pgdrop")
    assert m.wait_final(m.buy(user, price=1, amount=1))["status"] == "SUCCESS"
    db = m.database_url.rsplit("/", 1)[1]
    subprocess.run(
        [
            "psql",
            "-h",
            PG_HOST,
            "-p",
            PG_PORT,
            "-U",
            PG_USER,
            "-d",
            "postgres",
            "-qAtc",
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    wait_status(m, "/readyz", 200, timeout=30)
    deadline = time.monotonic() + 20
    while True:
        r = m.purchase(user, 1, 1)
        if r.status_code == 202:
            break
        assert time.monotonic() < deadline, f"purchases refused after the drop: {r.status_code} {r.text}"
        time.sleep(0.2)
    assert m.wait_final(r.json()["order_id"], timeout=15)["status"] == "SUCCESS"
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - 2)
