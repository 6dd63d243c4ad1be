"""The dead-letter API over HTTP against the release binary: garbage published into a
worker queue (with pika, into the instance's own vhost) is stored with its original queue,
listed, filtered, paged, shown whole, replayed with its original message id and resolved."""

from __future__ import annotations

import json
import time
import uuid

import pika
import pytest
from market import AMQP_HOST

LETTER_KEYS = {
    "id",
    "message_id",
    "original_queue",
    "exchange",
    "routing_key",
    "reason",
    "delivery_count",
    "times_seen",
    "order_id",
    "status",
    "first_seen_ms",
    "last_seen_ms",
    "resolved_at_ms",
    "replays",
    "replayed_at_ms",
    "payload_preview",
}


def publish(m, queue: str, body: bytes, message_id: str | None) -> None:
    """Publishes `body` straight into `queue` (default exchange), waiting for the confirm."""
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@{AMQP_HOST}/{m.vhost}"))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(message_id=message_id, delivery_mode=2),
            mandatory=True,
        )
    finally:
        conn.close()


def api(m) -> str:
    """Where `/api/dead-letters` is served: by `all`, or by the dead-letter process when split
    (a deployment routes the path to it; see deploy/k8s/base/ingressroute.yaml)."""
    if "dead-letter" in m.procs:
        return f"http://127.0.0.1:{m.procs['dead-letter'][1]}"
    return m.url


def call(m, method: str, path: str, **kw):
    return m.http.request(method, f"{api(m)}{path}", timeout=10, **kw)


def letters(m, **params) -> list[dict]:
    """Every letter matching `params`, following the cursor."""
    out, cursor = [], None
    while True:
        query = {"limit": 500, **params, **({"cursor": cursor} if cursor else {})}
        r = call(m, "GET", "/api/dead-letters", params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


def wait_letter(m, message_id: str, timeout: float = 10.0, **expect) -> dict:
    """The letter of `message_id` once it is stored (and matches `expect`)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [item for item in letters(m, status="all") if item["message_id"] == message_id]
        if found and all(found[0][k] == v for k, v in expect.items()):
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"dead letter {message_id} {expect} not within {timeout} s: {found}"
        time.sleep(0.05)


def garbage(m, queue: str = "payment", body: bytes = b"\x00 not json") -> dict:
    message_id = f"garbage-{uuid.uuid4().hex}"
    publish(m, queue, body, message_id)
    return wait_letter(m, message_id)


def test_garbage_in_a_worker_queue_is_stored_with_its_original_queue(marketplace):
    letter = garbage(marketplace, "inventory", b"{\"what\": \"garbage\"}")
    assert LETTER_KEYS <= letter.keys(), letter
    assert letter["original_queue"] == "inventory"
    assert letter["exchange"] == ""
    assert letter["reason"] == "rejected"
    assert letter["status"] == "open"
    assert letter["times_seen"] == 1 and letter["replays"] == 0
    assert letter["order_id"] is None
    assert letter["payload_preview"] == "{\"what\": \"garbage\"}"
    assert [item["id"] for item in letters(marketplace, queue="inventory")].count(letter["id"]) == 1
    assert letter["id"] not in [item["id"] for item in letters(marketplace, queue="order")]
    assert letter["id"] not in [item["id"] for item in letters(marketplace, reason="expired")]


def test_a_letter_shows_its_headers_and_whole_body(marketplace):
    body = json.dumps({"filler": "x" * 500}).encode()
    letter = garbage(marketplace, "delivery", body)
    assert len(letter["payload_preview"]) < len(body)
    r = call(marketplace, "GET", f"/api/dead-letters/{letter['id']}")
    assert r.status_code == 200, r.text
    whole = r.json()
    assert whole["payload"] == body.decode()
    assert whole["headers"]["x-first-death-queue"] == "delivery"
    assert whole["headers"]["x-death"][0]["queue"] == "delivery"


def test_resolving_is_idempotent_and_a_resolved_letter_is_not_replayed(marketplace):
    letter = garbage(marketplace)
    first = call(marketplace, "DELETE", f"/api/dead-letters/{letter['id']}")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "resolved"
    again = call(marketplace, "DELETE", f"/api/dead-letters/{letter['id']}")
    assert again.status_code == 200
    assert again.json()["resolved_at_ms"] == first.json()["resolved_at_ms"]
    assert letter["id"] not in [item["id"] for item in letters(marketplace)]
    assert letter["id"] in [item["id"] for item in letters(marketplace, status="resolved")]
    r = call(marketplace, "POST", f"/api/dead-letters/{letter['id']}/replay")
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "conflict"


def test_a_replay_republishes_with_the_original_message_id(marketplace):
    letter = garbage(marketplace, "order")
    r = call(marketplace, "POST", f"/api/dead-letters/{letter['id']}/replay")
    assert r.status_code == 202, r.text
    assert r.json()["replays"] == 1
    # Still garbage: it dies again under the same message id, so it is the same letter,
    # seen twice, and open.
    again = wait_letter(marketplace, letter["message_id"], times_seen=2)
    assert again["id"] == letter["id"]
    assert again["replays"] == 1 and again["replayed_at_ms"] is not None
    assert again["original_queue"] == "order"
    assert again["status"] == "open"


def test_pages_are_newest_first_and_cover_every_letter_once(start_marketplace):
    m = start_marketplace("pages")
    ids = [garbage(m, "payment", f"garbage {i}".encode())["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        r = call(m, "GET", "/api/dead-letters", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


@pytest.mark.parametrize(
    "params, name",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"status": "closed"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"order_id": "42"}, "order_id"),
    ],
)
def test_a_bad_parameter_is_400_naming_it(marketplace, params, name):
    r = call(marketplace, "GET", "/api/dead-letters", params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "bad_request"
    assert body["detail"].startswith(name), body


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("DELETE", ""), ("POST", "/replay")])
def test_unknown_and_malformed_ids(marketplace, method, suffix):
    unknown = call(marketplace, method, f"/api/dead-letters/{uuid.uuid4()}{suffix}")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"] == "not_found"
    malformed = call(marketplace, method, f"/api/dead-letters/nope{suffix}")
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["error"] == "bad_request"


def test_split_the_dead_letter_target_serves_the_api_and_the_backend_documents_it(split_marketplace):
    m = split_marketplace
    letter = garbage(m, "order")
    r = call(m, "GET", f"/api/dead-letters/{letter['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["original_queue"] == "order"
    doc = m.get("/api-docs/openapi.json").json()
    for path in ("/api/dead-letters", "/api/dead-letters/{id}", "/api/dead-letters/{id}/replay"):
        assert path in doc["paths"], path
