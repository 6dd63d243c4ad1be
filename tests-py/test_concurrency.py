"""Many purchases at once: every one finishes, and no credit or token is created or lost
(the old system oversold 526 tokens of 500 and lost updates under concurrency)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from market import unique

# (flags, price, expected status) cycled over the 50 buyers: mostly successes, and every
# failure kind, so compensations run concurrently with forward steps.
MIX = [
    ({}, 10, "SUCCESS"),
    ({}, 20, "SUCCESS"),
    ({"kill_payment": True}, 10, "UNKNOWN"),
    ({}, 30, "SUCCESS"),
    ({"kill_inventory": True}, 10, "UNKNOWN"),
    ({}, 501, "INSUFFICIENT_FUND"),
    ({"kill_deliver": True}, 10, "UNKNOWN"),
    ({}, 40, "SUCCESS"),
    ({"timeout_inventory": True}, 10, "TIMEOUT"),
    ({"kill_create": True}, 10, "UNKNOWN"),
]


def in_parallel(fn, args, workers=50):
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, args))


@pytest.mark.parametrize("n", [50])
def test_fifty_concurrent_buyers_all_finish_with_exact_balances(backend_marketplace, n):
    m = backend_marketplace
    stock_before = m.stock()
    buyers = [(unique(f"conc{i}"), *MIX[i % len(MIX)]) for i in range(n)]

    def place(buyer):
        user, flags, price, _ = buyer
        return m.buy(user, price=price, amount=1, **flags)

    ids = in_parallel(place, buyers)
    assert len(set(ids)) == n, "two purchases got the same order id"
    orders = in_parallel(lambda i: m.wait_final(i, timeout=20), ids)

    wrong = [
        (user, expected, o["status"]) for (user, _, _, expected), o in zip(buyers, orders) if o["status"] != expected
    ]
    assert not wrong, f"unexpected statuses (user, expected, got): {wrong}"

    sold = sum(1 for o in orders if o["status"] == "SUCCESS")
    m.wait_until("stock", m.stock, stock_before - sold)
    for (user, _, price, expected), o in zip(buyers, orders):
        want = m.initial_credits - price if expected == "SUCCESS" else m.initial_credits
        got = m.credits(user)
        if got is None:
            assert expected != "SUCCESS" and o["status"] == "UNKNOWN", f"{user} has no account: {o}"
        else:
            assert got == want, f"{user}: credits {got}, expected {want} ({expected})"


def test_a_small_stock_is_never_oversold(start_marketplace):
    m = start_marketplace("stock20", env={"INITIAL_STOCK": "20"})
    assert m.stock() == 20
    users = [unique(f"rush{i}") for i in range(50)]
    ids = in_parallel(lambda u: m.buy(u, price=5, amount=1), users)
    orders = in_parallel(lambda i: m.wait_final(i, timeout=20), ids)
    statuses = Counter(o["status"] for o in orders)
    assert statuses == {"SUCCESS": 20, "INSUFFICIENT_INVENTORY": 30}, statuses
    m.wait_until("stock", m.stock, 0)
    for user, o in zip(users, orders):
        want = m.initial_credits - 5 if o["status"] == "SUCCESS" else m.initial_credits
        assert m.credits(user) == want, f"{user} ({o['status']})"


def test_one_user_buying_concurrently_never_overspends(backend_marketplace):
    m = backend_marketplace
    user = unique("spender")
    stock_before = m.stock()
    # 20 purchases of 50 from a balance of 500: exactly 10 can be paid for.
    ids = in_parallel(lambda _: m.buy(user, price=50, amount=1), range(20), workers=20)
    orders = in_parallel(lambda i: m.wait_final(i, timeout=20), ids, workers=20)
    statuses = Counter(o["status"] for o in orders)
    assert statuses == {"SUCCESS": 10, "INSUFFICIENT_FUND": 10}, statuses
    m.wait_until("credits", lambda: m.credits(user), 0)
    m.wait_until("stock", m.stock, stock_before - 10)
