"""The old Python system's suite, in its own style: purchase, fixed sleep, read the list.

These deliberately keep the old fixed waits (0.5 s, 2 s for timeouts): they are the
compatibility contract's promise of how soon a final status is visible.
"""

import time

import pytest
import requests
from market import unique

FAST = 0.5
SLOW = 2.0


def purchase(base_url, path="/api/purchase/", **flags):
    username = unique("compat")
    body = {"username": username, "price": 10, "amount": 1}
    body.update(flags)
    r = requests.post(base_url + path, json=body, timeout=10)
    assert r.ok, f"{r.status_code} {r.text}"
    return username, r.json()["order_id"]


def last_transaction(base_url):
    r = requests.get(base_url + "/api/all-transaction", timeout=10)
    assert r.status_code == 200
    transactions = r.json()
    assert transactions, "all-transaction is empty"
    return transactions[-1]


def check_last(base_url, username, order_id, status):
    last = last_transaction(base_url)
    assert last["username"] == username, f"last listed order is not ours: {last}"
    assert last["id"] == order_id
    assert last["status"] == status, f"order {order_id}: {last}"
    for key in ("id", "username", "amount", "status"):
        assert key in last


def test_success_is_listed_as_success(base_url, marketplace):
    username, order_id = purchase(base_url)
    marketplace.record(order_id)
    time.sleep(FAST)
    check_last(base_url, username, order_id, "SUCCESS")


def test_purchase_without_trailing_slash_works_too(base_url, marketplace):
    username, order_id = purchase(base_url, path="/api/purchase")
    marketplace.record(order_id)
    time.sleep(FAST)
    check_last(base_url, username, order_id, "SUCCESS")


@pytest.mark.parametrize("flag", ["kill_payment", "kill_inventory", "kill_deliver"])
def test_a_killed_step_is_listed_as_unknown(base_url, marketplace, flag):
    username, order_id = purchase(base_url, **{flag: True})
    marketplace.record(order_id)
    time.sleep(FAST)
    check_last(base_url, username, order_id, "UNKNOWN")


@pytest.mark.parametrize("flag", ["timeout_payment", "timeout_inventory", "timeout_deliver"])
def test_a_stalled_step_is_listed_as_timeout(base_url, marketplace, flag):
    username, order_id = purchase(base_url, **{flag: True})
    marketplace.record(order_id)
    time.sleep(SLOW)
    check_last(base_url, username, order_id, "TIMEOUT")


def test_a_killed_create_is_not_listed(base_url, marketplace):
    username, order_id = purchase(base_url, kill_create=True)
    marketplace.record(order_id)
    time.sleep(FAST)
    r = requests.get(base_url + "/api/all-transaction", timeout=10)
    assert r.status_code == 200
    listed = [t for t in r.json() if t["username"] == username or t["id"] == order_id]
    assert listed == []


def test_a_purchase_above_the_balance_is_listed_as_insufficient_fund(base_url, marketplace):
    username = unique("compat")
    r = requests.post(base_url + "/api/purchase/", json={"username": username, "price": 501, "amount": 1}, timeout=10)
    assert r.ok
    order_id = r.json()["order_id"]
    marketplace.record(order_id)
    time.sleep(FAST)
    check_last(base_url, username, order_id, "INSUFFICIENT_FUND")
