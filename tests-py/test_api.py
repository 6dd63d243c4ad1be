"""The read API around the purchase: order listing with filters and cursors, users,
inventory, health, and the API's own documentation."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from market import FINAL_STATUSES, unique


def when(stamp):
    """created_at as a sortable value, whether an RFC 3339 string or epoch milliseconds."""
    if isinstance(stamp, (int, float)):
        return float(stamp)
    return datetime.fromisoformat(stamp).timestamp()


ORDER_KEYS = {"id", "username", "price", "amount", "total", "status", "phase", "created_at", "updated_at"}


@pytest.fixture(scope="module")
def history(marketplace):
    """One user with 5 successful and 2 failed orders, placed one after the other."""
    user = unique("pages")
    ids = []
    for i in range(7):
        flags = {"kill_payment": True} if i in (2, 5) else {}
        order_id = marketplace.buy(user, price=1, amount=1, **flags)
        marketplace.wait_final(order_id)
        ids.append(order_id)
    return user, ids


def test_a_purchase_is_answered_202_processing_with_an_order_id(marketplace):
    r = marketplace.purchase(unique("api"), 1, 1)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "PROCESSING"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", body["order_id"])
    marketplace.wait_final(body["order_id"])


def test_orders_of_a_user_are_listed_newest_first(marketplace, history):
    user, ids = history
    r = marketplace.get("/api/orders", params={"username": user})
    assert r.status_code == 200
    page = r.json()
    assert [o["id"] for o in page["orders"]] == list(reversed(ids))
    assert page["next_cursor"] is None
    for o in page["orders"]:
        assert ORDER_KEYS <= o.keys(), o
        assert o["username"] == user
        assert o["status"] in FINAL_STATUSES
        assert o["total"] == o["price"] * o["amount"]


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_a_limit_pages_through_every_order_once(marketplace, history, limit):
    user, ids = history
    seen = []
    cursor = None
    pages = 0
    while True:
        params = {"username": user, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        r = marketplace.get("/api/orders", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["orders"]) <= limit
        seen.extend(o["id"] for o in page["orders"])
        cursor = page["next_cursor"]
        pages += 1
        assert pages <= len(ids) + 1, "pagination does not end"
        if cursor is None:
            break
        assert page["orders"], "an empty page with a next cursor"
    assert seen == list(reversed(ids))
    assert pages in (-(-len(ids) // limit), -(-len(ids) // limit) + 1)


def test_the_status_filter_keeps_only_that_status(marketplace, history):
    user, ids = history
    unknown = marketplace.get("/api/orders", params={"username": user, "status": "UNKNOWN"}).json()["orders"]
    assert [o["id"] for o in unknown] == [ids[5], ids[2]]
    success = marketplace.get("/api/orders", params={"username": user, "status": "SUCCESS"}).json()["orders"]
    assert [o["id"] for o in success] == [ids[6], ids[4], ids[3], ids[1], ids[0]]
    timeout = marketplace.get("/api/orders", params={"username": user, "status": "TIMEOUT"}).json()["orders"]
    assert timeout == []


def test_the_status_filter_pages_too(marketplace, history):
    user, ids = history
    first = marketplace.get("/api/orders", params={"username": user, "status": "SUCCESS", "limit": 3}).json()
    assert [o["id"] for o in first["orders"]] == [ids[6], ids[4], ids[3]]
    assert first["next_cursor"]
    second = marketplace.get(
        "/api/orders",
        params={"username": user, "status": "SUCCESS", "limit": 3, "cursor": first["next_cursor"]},
    ).json()
    assert [o["id"] for o in second["orders"]] == [ids[1], ids[0]]
    assert second["next_cursor"] is None


@pytest.mark.usefixtures("history")
def test_orders_without_filters_are_newest_first_across_users(marketplace):
    r = marketplace.get("/api/orders", params={"limit": 3})
    assert r.status_code == 200
    page = r.json()
    assert len(page["orders"]) == 3
    stamps = [when(o["created_at"]) for o in page["orders"]]
    assert stamps == sorted(stamps, reverse=True), stamps


def test_an_unknown_username_lists_no_orders(marketplace):
    r = marketplace.get("/api/orders", params={"username": unique("nobody")})
    assert r.status_code == 200
    assert r.json() == {"orders": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params", [{"status": "NOT_A_STATUS"}, {"limit": "-1"}, {"limit": "many"}, {"cursor": "%%%garbage"}]
)
def test_bad_list_parameters_are_400_or_422(marketplace, params):
    r = marketplace.get("/api/orders", params=params)
    assert r.status_code in (400, 422), f"{params}: {r.status_code} {r.text[:300]}"
    assert "error" in r.json()


def test_all_transaction_is_oldest_first(marketplace, history):
    _, ids = history
    listed = marketplace.all_transactions()
    positions = {t["id"]: i for i, t in enumerate(listed)}
    assert [positions[i] for i in ids] == sorted(positions[i] for i in ids)
    for t in listed:
        assert {"id", "username", "price", "amount", "status", "created_at"} <= t.keys(), t
    stamps = [when(t["created_at"]) for t in listed]
    assert stamps == sorted(stamps)


def test_an_order_by_id_has_a_timeline(marketplace, history):
    _, ids = history
    order = marketplace.order(ids[0]).json()
    assert ORDER_KEYS | {"timeline"} <= order.keys()
    assert [e["seq"] for e in order["timeline"]] == list(range(1, len(order["timeline"]) + 1))


def test_a_user_never_seen_is_404(marketplace):
    r = marketplace.get(f"/api/users/{unique('ghost')}")
    assert r.status_code == 404
    assert "error" in r.json()


def test_a_user_has_a_name_and_credits(marketplace, history):
    user, _ = history
    r = marketplace.get(f"/api/users/{user}")
    assert r.status_code == 200
    assert r.json() == {"username": user, "credits": marketplace.initial_credits - 5}


def test_the_inventory_lists_late_token_with_its_stock(marketplace):
    r = marketplace.get("/api/inventory")
    assert r.status_code == 200
    items = r.json()
    assert isinstance(items, list) and len(items) == 1, items
    assert set(items[0]) == {"product", "stock", "price"}
    assert items[0]["product"] == "late_token"
    assert items[0]["price"] is None  # the buyer names the price (the compatibility contract)
    assert isinstance(items[0]["stock"], int) and 0 <= items[0]["stock"] <= marketplace.initial_stock


def test_health_and_readiness_are_200(marketplace):
    assert marketplace.get("/healthz").status_code == 200
    assert marketplace.get("/readyz").status_code == 200


def test_docs_serve_swagger_ui_as_html(marketplace):
    r = marketplace.get("/docs")
    assert r.status_code == 200, r.status_code
    assert "text/html" in r.headers.get("content-type", "")
    assert "swagger" in r.text.lower()


def test_openapi_lists_every_path(marketplace):
    r = marketplace.get("/api-docs/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec.get("openapi", "").startswith("3.")
    paths = {re.sub(r"\{[^}]*\}", "{}", p) for p in spec["paths"]}
    expected = {
        "/api/all-transaction",
        "/api/orders",
        "/api/orders/{}",
        "/api/users/{}",
        "/api/inventory",
        "/healthz",
        "/readyz",
    }
    missing = expected - paths
    assert not missing, f"missing from openapi.json: {sorted(missing)} (has {sorted(paths)})"
    assert {"/api/purchase", "/api/purchase/"} & paths, sorted(paths)


def test_an_unknown_path_is_404(marketplace):
    assert marketplace.get("/api/nothing-here").status_code == 404


@pytest.mark.parametrize(
    "name",
    ["zoë-ünï", "名前", "john doe", "a/b", "50%off", "q?x=1&y", "emoji🎉", "#hash", "back\\slash", "'quote\""],
)
def test_any_printable_username_works_end_to_end(marketplace, name):
    user = f"{name}-{unique('u')}"
    order_id = marketplace.buy(user, price=2, amount=1)
    order = marketplace.wait_final(order_id)
    assert order["status"] == "SUCCESS"
    assert order["username"] == user
    assert marketplace.credits(user) == marketplace.initial_credits - 2
    r = marketplace.get("/api/orders", params={"username": user})
    assert [o["id"] for o in r.json()["orders"]] == [order_id]
