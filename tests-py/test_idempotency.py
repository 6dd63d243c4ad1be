"""Idempotency-Key on POST /api/purchase/: a retried purchase finds the order it already
placed (same answer, `Idempotent-Replayed: true`) and is charged once; the same key with a
different body is 409; a bad key is 400; concurrent requests with one key place one order."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from market import FAULT_FLAGS, unique

PATHS = ["/api/purchase/", "/api/purchase"]


def new_key() -> str:
    return str(uuid.uuid4())


def post(m, key, body, path="/api/purchase/"):
    """POSTs `body` (a dict, or a str sent as is) with `key` (a str, bytes, or None for no
    header); remembers an accepted order for the session's invariant checks."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = body if isinstance(body, str) else json.dumps(body)
    r = m.post(path, data=data, headers=headers)
    if r.status_code == 202:
        m.record(r.json()["order_id"])
    return r


def orders_of(m, user):
    return m.list_orders(username=user)


def assert_error(r, status, code, names):
    assert r.status_code == status, f"{r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["error"] == code, body
    assert body["detail"].startswith(f"{names}: "), body


@pytest.mark.parametrize("path", PATHS)
def test_a_retried_purchase_answers_the_first_order_and_charges_once(backend_marketplace, path):
    m = backend_marketplace
    user, key = unique("idem"), new_key()
    body = {"username": user, "price": 7, "amount": 2}
    first = post(m, key, body, path)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    order_id = first.json()["order_id"]

    for _ in range(3):
        again = post(m, key, body, path)
        assert again.status_code == 202, again.text
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.content == first.content, "a replay is the first answer, byte for byte"
        assert again.headers.get("Location") == first.headers.get("Location") == f"/api/orders/{order_id}"

    assert m.wait_final(order_id)["status"] == "SUCCESS"
    # After the saga, a retry still answers the first answer (it does not follow the order).
    late = post(m, key, body, path)
    assert late.status_code == 202 and late.content == first.content, late.text
    assert [o["id"] for o in orders_of(m, user)] == [order_id]
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - 14)


def test_the_same_request_written_differently_is_a_repeat(marketplace):
    m = marketplace
    user, key = unique("idem-form"), new_key()
    first = post(m, key, f'{{"username":"{user}","price":1,"amount":3}}')
    assert first.status_code == 202, first.text
    variants = [
        f'{{\n  "amount": 3,\n  "price": 1,\n  "username": "{user}"\n}}',
        json.dumps({"username": user, "price": 1, "amount": 3, **dict.fromkeys(FAULT_FLAGS, False)}),
        json.dumps({"amount": 3, "username": user, "price": 1, "kill_payment": None}),
    ]
    for raw in variants:
        again = post(m, key, raw)
        assert again.status_code == 202, f"{raw}: {again.text}"
        assert again.headers.get("Idempotent-Replayed") == "true", raw
        assert again.json() == first.json(), raw
    assert m.wait_final(first.json()["order_id"])["status"] == "SUCCESS"
    assert len(orders_of(m, user)) == 1
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - 3)


def test_the_same_key_with_a_different_body_is_409_and_places_nothing(backend_marketplace):
    m = backend_marketplace
    user, key = unique("idem-409"), new_key()
    body = {"username": user, "price": 2, "amount": 1}
    first = post(m, key, body)
    assert first.status_code == 202, first.text
    for change in ({"amount": 2}, {"price": 3}, {"username": unique("idem-other")}, {"kill_payment": True}):
        r = post(m, key, {**body, **change})
        assert_error(r, 409, "conflict", "Idempotency-Key")
        assert "Idempotent-Replayed" not in r.headers
    assert m.wait_final(first.json()["order_id"])["status"] == "SUCCESS"
    assert len(orders_of(m, user)) == 1
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - 2)


@pytest.mark.parametrize(
    "key",
    [b"", b"k" * 256, b"two words", "cl\u00e9".encode(), b"\x80\xff"],
    ids=["empty", "256-chars", "space", "non-ascii", "not-utf8"],
)
def test_an_invalid_key_is_400_naming_the_header_and_places_nothing(marketplace, key):
    m = marketplace
    user = unique("idem-bad")
    r = post(m, key, {"username": user, "price": 1, "amount": 1})
    assert_error(r, 400, "bad_request", "Idempotency-Key")
    assert orders_of(m, user) == []
    assert m.credits(user) is None, "a refused request reached payment"


def test_a_key_of_255_visible_characters_is_accepted(marketplace):
    m = marketplace
    user = unique("idem-long")
    key = ("".join(chr(c) for c in range(0x21, 0x7F)) * 3)[:255]
    body = {"username": user, "price": 1, "amount": 1}
    first = post(m, key, body)
    assert first.status_code == 202, first.text
    again = post(m, key, body)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    m.wait_final(first.json()["order_id"])


def test_without_a_key_or_with_new_keys_every_post_is_a_new_order(marketplace):
    m = marketplace
    user = unique("idem-none")
    body = {"username": user, "price": 1, "amount": 1}
    ids = [post(m, k, body).json()["order_id"] for k in (None, None, new_key(), new_key())]
    assert len(set(ids)) == 4
    for i in ids:
        m.wait_final(i)
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - 4)


def test_concurrent_retries_with_one_key_place_one_order(backend_marketplace):
    m = backend_marketplace
    user, key = unique("idem-race"), new_key()
    body = {"username": user, "price": 5, "amount": 1}
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: post(m, key, body), range(32)))
    assert all(r.status_code == 202 for r in answers), [(r.status_code, r.text) for r in answers]
    ids = {r.json()["order_id"] for r in answers}
    assert len(ids) == 1, ids
    assert sum(1 for r in answers if "Idempotent-Replayed" not in r.headers) == 1
    (order_id,) = ids
    assert m.wait_final(order_id)["status"] == "SUCCESS"
    assert [o["id"] for o in orders_of(m, user)] == [order_id]
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - 5)


def test_the_api_documents_the_header_and_the_409(marketplace):
    spec = marketplace.get("/api-docs/openapi.json").json()
    op = spec["paths"]["/api/purchase/"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in op["parameters"])
    assert "409" in op["responses"]
    assert "idempotent-replayed" in op["responses"]["202"]["headers"]


def test_a_key_is_forgotten_after_its_ttl(start_marketplace):
    """IDEMPOTENCY_KEY_TTL_MS bounds how long a key is remembered: within it a retry is a
    replay; after it (the backend sweeps a few times per TTL) the same key places a new
    order."""
    m = start_marketplace("idem-ttl", env={"IDEMPOTENCY_KEY_TTL_MS": "400"})
    user, key = unique("ttl"), new_key()
    body = {"username": user, "price": 1, "amount": 1}
    first = post(m, key, body)
    assert first.status_code == 202, first.text
    # Right away: a replay (the TTL has not passed, whatever the sweep's phase).
    again = post(m, key, body)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["order_id"] == first.json()["order_id"]

    deadline = time.monotonic() + 10
    while True:
        later = post(m, key, body)
        assert later.status_code == 202, later.text
        if "Idempotent-Replayed" not in later.headers:
            break
        assert time.monotonic() < deadline, "the key was never forgotten"
        time.sleep(0.1)
    assert later.json()["order_id"] != first.json()["order_id"]
    for order_id in (first.json()["order_id"], later.json()["order_id"]):
        assert m.wait_final(order_id)["status"] == "SUCCESS"
    m.wait_until("credits", lambda: m.credits(user), m.initial_credits - 2)
