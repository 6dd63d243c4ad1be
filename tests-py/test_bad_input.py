"""Bad requests are refused with the right status and a JSON error naming the field, and
create nothing: no order listed, no user, no credits or stock change."""

from __future__ import annotations

import json

import pytest
import requests
from market import FAULT_FLAGS, unique


@pytest.fixture
def nothing_created(marketplace):
    """Snapshots what a rejected request must not change, and checks it afterwards."""
    users: list[str] = []
    before_tx = len(marketplace.all_transactions())
    before_orders = [o["id"] for o in marketplace.get("/api/orders", params={"limit": 5}).json()["orders"]]
    before_stock = marketplace.stock()
    yield users
    assert len(marketplace.all_transactions()) == before_tx, "a rejected request created an order"
    after_orders = [o["id"] for o in marketplace.get("/api/orders", params={"limit": 5}).json()["orders"]]
    assert after_orders == before_orders, "a rejected request created an order"
    assert marketplace.stock() == before_stock
    for user in users:
        assert marketplace.credits(user) is None, f"a rejected request created user {user!r}"
        assert marketplace.get("/api/orders", params={"username": user}).json()["orders"] == []


def assert_error(r: requests.Response, status: int | tuple[int, ...], field: str | tuple[str, ...] | None):
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, f"expected {statuses}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if field is not None:
        fields = field if isinstance(field, tuple) else (field,)
        assert any(f in body["detail"] for f in fields), f"detail does not name {fields}: {body}"
    return body


def valid(user: str, **changes) -> dict:
    body = {"username": user, "price": 1, "amount": 1}
    body.update(changes)
    return body


def post_raw(m, data: bytes | str, content_type: str = "application/json"):
    return m.post("/api/purchase/", data=data, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    "raw",
    ['{"username": "bob", "price": 1,', "not json", "[1, 2", '{"username": "bob" "price": 1}'],
    ids=["truncated", "not-json", "unclosed-array", "missing-comma"],
)
def test_malformed_json_is_400(marketplace, nothing_created, raw):
    assert_error(post_raw(marketplace, raw), 400, None)


@pytest.mark.parametrize("missing", ["username", "price", "amount"])
def test_a_missing_field_is_422_naming_it(marketplace, nothing_created, missing):
    user = unique("bad")
    nothing_created.append(user)
    body = valid(user)
    del body[missing]
    assert_error(marketplace.post("/api/purchase/", json=body), 422, missing)


@pytest.mark.parametrize(
    "field_name,value",
    [
        ("price", "ten"),
        ("price", 1.5),
        ("price", None),
        ("price", 2**63),
        ("amount", "1"),
        ("amount", 2.5),
        ("amount", [1]),
        ("username", 123),
        ("username", None),
        ("kill_payment", "yes"),
        ("timeout_deliver", 1),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_a_wrongly_typed_field_is_422_naming_it(marketplace, nothing_created, field_name, value):
    user = unique("bad")
    nothing_created.append(user)
    body = valid(user, **{field_name: value})
    assert_error(marketplace.post("/api/purchase/", json=body), 422, field_name)


def test_a_body_that_is_not_an_object_is_rejected(marketplace, nothing_created):
    assert_error(post_raw(marketplace, "[]"), (400, 422), None)
    assert_error(post_raw(marketplace, '"purchase"'), (400, 422), None)


@pytest.mark.parametrize("amount", [0, -1, -(2**63)])
def test_an_amount_not_above_zero_is_422(marketplace, nothing_created, amount):
    user = unique("bad")
    nothing_created.append(user)
    assert_error(marketplace.post("/api/purchase/", json=valid(user, amount=amount)), 422, "amount")


@pytest.mark.parametrize("price", [-1, -(2**63)])
def test_a_negative_price_is_422(marketplace, nothing_created, price):
    user = unique("bad")
    nothing_created.append(user)
    assert_error(marketplace.post("/api/purchase/", json=valid(user, price=price)), 422, "price")


@pytest.mark.parametrize("price,amount", [(2**62, 4), (2**63 - 1, 2), (3_037_000_500, 3_037_000_500)])
def test_a_total_overflowing_i64_is_422(marketplace, nothing_created, price, amount):
    user = unique("bad")
    nothing_created.append(user)
    r = marketplace.post("/api/purchase/", json=valid(user, price=price, amount=amount))
    assert_error(r, 422, ("price", "amount", "total"))


@pytest.mark.parametrize(
    "username",
    ["", " ", "a" * 65, "é" * 65, "bob\n", "bob\x00", "tab\there", "bell\x07", "del\x7f"],
    ids=["empty", "blank", "65-ascii", "65-accented", "newline", "nul", "tab", "bell", "del"],
)
def test_a_bad_username_is_422(marketplace, nothing_created, username):
    if username.strip():
        nothing_created.append(username)
    assert_error(marketplace.post("/api/purchase/", json=valid(username)), 422, "username")


def test_a_username_of_64_characters_is_accepted(marketplace):
    user = unique("u64")
    user = user + "x" * (64 - len(user))
    assert len(user) == 64
    order_id = marketplace.buy(user, price=1, amount=1)
    assert marketplace.wait_final(order_id)["status"] == "SUCCESS"
    assert marketplace.credits(user) == marketplace.initial_credits - 1


def test_a_body_over_64_kib_is_413(marketplace, nothing_created):
    user = unique("big")
    nothing_created.append(user)
    body = json.dumps(valid(user, padding="x" * (65 * 1024)))
    assert_error(post_raw(marketplace, body), 413, None)


def test_a_large_body_under_64_kib_is_judged_on_its_fields(marketplace, nothing_created):
    # 60 KiB of username: refused for its length (422), not for its size.
    r = marketplace.post("/api/purchase/", json=valid("y" * (60 * 1024)))
    assert_error(r, 422, "username")


@pytest.mark.parametrize(
    "path", ["/api/orders/00000000-0000-0000-0000-000000000000", "/api/orders/0190f0e0-0000-7000-8000-000000000001"]
)
def test_an_unknown_order_is_404(marketplace, path):
    assert_error(marketplace.get(path), 404, None)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "0190f0e0-0000-7000-8000-00000000000g"])
def test_a_malformed_order_id_is_400_or_422(marketplace, bad_id):
    assert_error(marketplace.get(f"/api/orders/{bad_id}"), (400, 422), None)


@pytest.mark.parametrize("flag", FAULT_FLAGS)
def test_a_fault_flag_is_403_when_fault_injection_is_off(fault_off_marketplace, flag):
    m = fault_off_marketplace
    user = unique("off")
    before = len(m.all_transactions())
    r = m.post("/api/purchase/", json=valid(user, **{flag: True}))
    assert_error(r, 403, flag)
    assert len(m.all_transactions()) == before
    assert m.credits(user) is None
    assert m.get("/api/orders", params={"username": user}).json()["orders"] == []


def test_false_fault_flags_are_accepted_when_fault_injection_is_off(fault_off_marketplace):
    m = fault_off_marketplace
    user = unique("off-ok")
    r = m.post("/api/purchase/", json=valid(user, **{flag: False for flag in FAULT_FLAGS}))
    assert r.status_code == 202, r.text
    m.record(r.json()["order_id"])
    assert m.wait_final(r.json()["order_id"])["status"] == "SUCCESS"
