"""After everything the session did to each shared instance: every order is final, and no
credit or token was created or lost (ARCHITECTURE.md, "Invariants"). Runs last."""

from __future__ import annotations

from collections import defaultdict

import pytest
from market import FAULT_FLAGS, FINAL_STATUSES, unique

pytestmark = pytest.mark.last

INSTANCES = ["marketplace", "pg_marketplace", "split_marketplace", "fault_off_marketplace"]


def every_order(m) -> dict[str, dict]:
    """Each order the session placed (by id) and each one the API lists, waiting (bounded)
    for any still running."""
    orders = {o["id"]: o for o in m.list_orders()}
    for t in m.all_transactions():
        orders.setdefault(t["id"], t)
    for order_id in set(m.placed) | set(orders):
        if orders.get(order_id, {}).get("status") not in FINAL_STATUSES or "phase" not in orders[order_id]:
            orders[order_id] = m.wait_final(order_id, timeout=10)
    return orders


@pytest.mark.parametrize("instance", INSTANCES)
def test_every_order_is_final(request, instance):
    m = request.getfixturevalue(instance)
    orders = every_order(m)
    assert set(m.placed) <= set(orders)
    not_final = {i: o["status"] for i, o in orders.items() if o["status"] not in FINAL_STATUSES}
    assert not not_final
    for o in orders.values():
        assert o["phase"] == "done", o


@pytest.mark.parametrize("instance", INSTANCES)
def test_no_credit_or_token_is_created_or_lost(request, instance):
    m = request.getfixturevalue(instance)
    orders = every_order(m)

    charged = defaultdict(int)
    sold = 0
    users = set()
    for o in orders.values():
        users.add(o["username"])
        if o["status"] == "SUCCESS":
            charged[o["username"]] += o["price"] * o["amount"]
            sold += o["amount"]

    stock = m.stock()
    assert stock >= 0
    assert stock == m.initial_stock - sold, f"stock {stock}, but {sold} tokens were sold of {m.initial_stock}"

    wrong = {}
    for user in users:
        credits = m.credits(user)
        if credits is None:
            if charged[user]:
                wrong[user] = f"no account but {charged[user]} charged"
            continue
        if credits != m.initial_credits - charged[user]:
            wrong[user] = f"credits {credits}, expected {m.initial_credits - charged[user]}"
        assert credits >= 0, user
    assert not wrong, f"{len(wrong)} of {len(users)} users have wrong balances: {dict(list(wrong.items())[:20])}"


def test_no_fault_flag_reached_the_instance_without_fault_injection(fault_off_marketplace):
    m = fault_off_marketplace
    for flag in FAULT_FLAGS:
        r = m.post("/api/purchase/", json={"username": unique("off"), "price": 1, "amount": 1, flag: True})
        assert r.status_code == 403, f"{flag}: {r.status_code} {r.text}"
    for o in every_order(m).values():
        assert o["status"] == "SUCCESS", f"an order on the fault-free instance did not succeed: {o}"
