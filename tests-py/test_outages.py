"""Losing RabbitMQ or the database is survived: /readyz says so while it lasts, and the
marketplace reconnects, re-declares its topology and takes orders again."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
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


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_purchases_accepted_during_a_broker_outage_are_all_completed_after_it(start_marketplace, store):
    """A POST while RabbitMQ is unreachable is 202 (kept in the backend's outbox, in the
    order's own transaction) or 503; never 202 and then lost. Only this instance loses its
    broker: its vhost is deleted, RabbitMQ itself keeps running for everyone else."""
    m = start_marketplace("outage-buy", postgres=store == "postgres")
    user = unique("outage-buy")
    assert m.wait_final(m.buy(user, price=1, amount=1))["status"] == "SUCCESS"

    delete_vhost(m.vhost)
    wait_status(m, "/readyz", 503, timeout=10)
    answers = [m.purchase(user, 2, 1) for _ in range(8)]
    # A retry with an Idempotency-Key while the broker is away finds the order it placed.
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"username": user, "price": 3, "amount": 1}
    keyed = [m.post("/api/purchase/", json=body, headers=key) for _ in range(2)]
    for r in answers + keyed:
        assert r.status_code in (202, 503), f"{r.status_code} {r.text}"
        if r.status_code == 503:
            assert r.json()["error"] == "unavailable", r.text
    accepted = [r.json()["order_id"] for r in answers if r.status_code == 202]
    keyed_ids = {r.json()["order_id"] for r in keyed if r.status_code == 202}
    assert len(keyed_ids) <= 1, f"one key, several orders: {keyed_ids}"
    for i in keyed_ids:
        m.record(i)
    # Nothing can run without the broker: what was accepted is still waiting.
    still = [m.order(i).json()["status"] for i in accepted + sorted(keyed_ids)]
    assert still == ["PROCESSING"] * len(still), still

    create_vhost(m.vhost)
    wait_status(m, "/readyz", 200, timeout=30)
    finals = {i: m.wait_final(i, timeout=30)["status"] for i in accepted + sorted(keyed_ids)}
    assert set(finals.values()) <= {"SUCCESS"}, finals
    charged = 1 + 2 * len(accepted) + 3 * len(keyed_ids)
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - charged, timeout=10)
    m.wait_until("stock", m.stock, m.initial_stock - 1 - len(accepted) - len(keyed_ids), timeout=10)
    assert sorted(o["id"] for o in m.list_orders(username=user) if o["price"] > 1) == sorted(finals)
