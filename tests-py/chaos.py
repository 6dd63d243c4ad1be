"""The harness of the chaos tests (test_chaos.py): a steady background load of purchases,
SIGKILL and restart of one target of a split instance, RabbitMQ restarts, publishing raw
messages with pika (garbage, copies of real ones), waiting for quiescence, and the audit.

Everything here talks to loopback only, and every wait has a bound.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pika
import requests
from market import AMQP_HOST, FINAL_STATUSES, REPO, Marketplace, unique

EXCHANGE = "marketplace"
EVENTS_EXCHANGE = "marketplace.events"
QUEUES = ("manager", "manager.orders", "order", "payment", "inventory", "inventory.restock", "delivery", "backend.events", "dead-letter")
# x-delivery-limit of every quorum queue (common/src/topology.rs).
DELIVERY_LIMIT = 5

REPORT = REPO / "target" / "chaos-report.txt"


# ---- the background load -------------------------------------------------------------------


@dataclass
class Attempt:
    at: float
    kind: str
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    order_id: str | None
    detail: str = ""


# What the load sends, with its weight: plain orders mostly, and some that fail on purpose.
MIX = (
    ("plain", 70, {}),
    ("insufficient_funds", 10, {}),
    ("timeout_payment", 7, {"timeout_payment": True}),
    ("kill_inventory", 7, {"kill_inventory": True}),
    ("kill_deliver", 6, {"kill_deliver": True}),
)


class Load:
    """Purchases at about `rate` per second from `threads` threads over a handful of users,
    until `stop()`. Every answer is recorded; the accepted ones (202) must all end final."""

    def __init__(self, m: Marketplace, rate: float = 15.0, users: int = 6, threads: int = 4) -> None:
        self.m = m
        self.rate = rate
        self.users = [unique("chaos") for _ in range(users)]
        self.threads = threads
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._rng = random.Random(os.getpid())
        self._kinds = [k for k, w, _ in MIX for _ in range(w)]
        self._flags = {k: f for k, _, f in MIX}

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"chaos-load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=30)
        self._workers = []

    def _run(self, index: int) -> None:
        interval = self.threads / self.rate
        session = requests.Session()
        nxt = time.monotonic() + index * interval / self.threads
        while not self._stop.is_set():
            with self._lock:
                kind = self._rng.choice(self._kinds)
                user = self._rng.choice(self.users)
            body: dict[str, Any] = {"username": user, "price": 1, "amount": 1, **self._flags[kind]}
            if kind == "insufficient_funds":
                body["price"] = self.m.initial_credits + 1
            at = time.monotonic()
            try:
                r = session.post(self.m.url + "/api/purchase/", json=body, timeout=5)
                order_id = None
                if r.status_code == 202:
                    order_id = r.json()["order_id"]
                    self.m.record(order_id)
                attempt = Attempt(at, kind, r.status_code, order_id, "" if r.status_code == 202 else r.text[:200])
            except requests.RequestException as e:
                session = requests.Session()
                attempt = Attempt(at, kind, None, None, type(e).__name__)
            with self._lock:
                self.attempts.append(attempt)
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                nxt = time.monotonic()

    # ---- what happened -------------------------------------------------------------------

    @property
    def accepted(self) -> list[str]:
        with self._lock:
            return [a.order_id for a in self.attempts if a.order_id]

    def statuses(self) -> Counter:
        with self._lock:
            return Counter(a.status for a in self.attempts)

    def unexpected(self, allowed: set[int | None]) -> list[Attempt]:
        """Answers other than 202 and `allowed` (e.g. {503} during a broker outage, {None}
        while the backend is down)."""
        with self._lock:
            return [a for a in self.attempts if a.status != 202 and a.status not in allowed]

    def accepted_since(self, t: float) -> list[str]:
        with self._lock:
            return [a.order_id for a in self.attempts if a.order_id and a.at >= t]


# ---- processes of a split instance -------------------------------------------------------------


def target_url(m: Marketplace, target: str) -> str:
    return f"http://127.0.0.1:{m.procs[target][1]}"


def dead_letter_url(m: Marketplace) -> str:
    """Where the dead-letter API is served: the dead-letter process (split) or the one port."""
    return target_url(m, "dead-letter") if "dead-letter" in m.procs else m.url


def readyz(m: Marketplace, target: str) -> int | str:
    try:
        return requests.get(target_url(m, target) + "/readyz", timeout=2).status_code
    except requests.RequestException as e:
        return type(e).__name__


def wait_ready(m: Marketplace, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {t: readyz(m, t) for t in m.procs}
        if all(s == 200 for s in states.values()):
            return
        for t, (p, _) in m.procs.items():
            assert p.poll() is None, f"{m.name} ({t}) exited with {p.returncode}\n{m.log_tail()}"
        assert time.monotonic() < deadline, f"{m.name} not ready within {timeout}s: {states}\n{m.log_tail()}"
        time.sleep(0.1)


def wait_readyz_status(m: Marketplace, status: int, timeout: float) -> dict[str, Any]:
    """Waits until /readyz of every target answers `status`; returns what each answered."""
    deadline = time.monotonic() + timeout
    while True:
        states = {t: readyz(m, t) for t in m.procs}
        if all(s == status for s in states.values()) or time.monotonic() >= deadline:
            return states
        time.sleep(0.1)


def probe_flow(m: Marketplace, timeout: float = 60.0) -> float:
    """Places purchases until one is accepted and reaches SUCCESS; returns when it did."""
    user = unique("probe")
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = m.purchase(user, 1, 1)
            if r.status_code == 202:
                m.wait_final(r.json()["order_id"], timeout=max(1.0, deadline - time.monotonic()))
                return time.monotonic()
            last = f"{r.status_code} {r.text[:200]}"
        except requests.RequestException as e:
            last = repr(e)
        assert time.monotonic() < deadline, f"orders do not flow within {timeout}s (last: {last})\n{m.log_tail()}"
        time.sleep(0.1)


# ---- RabbitMQ as a whole (affects the whole machine: only in the broker cases) ----------------


def rabbitmqctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False)


def broker_up() -> bool:
    return rabbitmqctl("-q", "status", timeout=30).returncode == 0


def ensure_broker_running() -> None:
    """Brings RabbitMQ back whatever state a case left it in (used in `finally`)."""
    if rabbitmqctl("-q", "await_startup", timeout=30).returncode == 0:
        return
    if rabbitmqctl("-q", "start_app", timeout=120).returncode != 0:
        subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, timeout=60, check=False)
    done = rabbitmqctl("-q", "await_startup", timeout=180)
    assert done.returncode == 0, f"RabbitMQ did not come back: {done.stdout}{done.stderr}"


def stop_app() -> None:
    done = rabbitmqctl("-q", "stop_app")
    assert done.returncode == 0, f"rabbitmqctl stop_app: {done.stdout}{done.stderr}"


def start_app() -> None:
    done = rabbitmqctl("-q", "start_app")
    assert done.returncode == 0, f"rabbitmqctl start_app: {done.stdout}{done.stderr}"
    done = rabbitmqctl("-q", "await_startup")
    assert done.returncode == 0, f"rabbitmqctl await_startup: {done.stdout}{done.stderr}"


def shutdown_server() -> None:
    done = rabbitmqctl("-q", "shutdown")
    assert done.returncode == 0, f"rabbitmqctl shutdown: {done.stdout}{done.stderr}"


def start_server() -> None:
    subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, timeout=60, check=False)
    deadline = time.monotonic() + 180
    while True:
        done = rabbitmqctl("-q", "await_startup", timeout=60)
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, f"RabbitMQ did not start: {done.stdout}{done.stderr}"
        time.sleep(0.5)


# ---- raw AMQP -------------------------------------------------------------------------------


def amqp_params(vhost: str) -> pika.ConnectionParameters:
    host, _, port = AMQP_HOST.partition(":")
    return pika.ConnectionParameters(
        host=host,
        port=int(port or 5672),
        virtual_host=vhost,
        credentials=pika.PlainCredentials("guest", "guest"),
        heartbeat=30,
        blocked_connection_timeout=30,
    )


class Publisher:
    """A pika connection to the instance's vhost, with publisher confirms."""

    def __init__(self, vhost: str) -> None:
        self.conn = pika.BlockingConnection(amqp_params(vhost))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass

    def publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: dict | None = None,
        content_type: str | None = "application/json",
        msg_type: str | None = None,
    ) -> None:
        props = pika.BasicProperties(
            delivery_mode=2,
            message_id=message_id,
            correlation_id=correlation_id,
            headers=headers,
            content_type=content_type,
            type=msg_type,
        )
        self.ch.basic_publish(exchange=exchange, routing_key=routing_key, body=body, properties=props, mandatory=True)


@dataclass
class Captured:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    correlation_id: str | None
    headers: dict
    content_type: str | None
    msg_type: str | None

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


COPY_HEADER = "x-chaos-copy"


class Tap:
    """Copies of every message the services publish, from a queue of our own bound to both
    topic exchanges (the services' queues are untouched). Copies we publish ourselves carry
    COPY_HEADER and are not captured."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.messages: list[Captured] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conn: pika.BlockingConnection | None = None
        self._ch = None
        self._thread = threading.Thread(target=self._run, name="chaos-tap", daemon=True)

    def __enter__(self) -> Tap:
        self._thread.start()
        assert self._ready.wait(30), "the tap did not start"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._conn and self._conn.is_open:
            try:
                self._conn.add_callback_threadsafe(self._ch.stop_consuming)
            except Exception:  # noqa: BLE001
                pass
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self._conn = pika.BlockingConnection(amqp_params(self.vhost))
            self._ch = self._conn.channel()
            q = self._ch.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
            self._ch.queue_bind(q, EXCHANGE, routing_key="#")
            self._ch.queue_bind(q, EVENTS_EXCHANGE, routing_key="#")
            self._ch.basic_consume(q, self._on_message, auto_ack=True)
        except BaseException as e:  # noqa: BLE001 - reported by __enter__
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._ch.start_consuming()
        finally:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass

    def _on_message(self, _ch, method, props, body) -> None:
        headers = dict(props.headers or {})
        if COPY_HEADER in headers:
            return
        with self._lock:
            self.messages.append(
                Captured(
                    exchange=method.exchange,
                    routing_key=method.routing_key,
                    body=body,
                    message_id=props.message_id,
                    correlation_id=props.correlation_id,
                    headers=headers,
                    content_type=props.content_type,
                    msg_type=props.type,
                )
            )

    def snapshot(self) -> list[Captured]:
        with self._lock:
            return list(self.messages)


def republish(pub: Publisher, msg: Captured, fresh_id: bool) -> str:
    """A copy of a real message, to the exchange and routing key it went to, with its own
    message id (a redelivery) or a new one (a duplicate the inbox cannot recognise)."""
    message_id = str(uuid.uuid4()) if fresh_id or not msg.message_id else msg.message_id
    pub.publish(
        msg.body,
        exchange=msg.exchange,
        routing_key=msg.routing_key,
        message_id=message_id,
        correlation_id=msg.correlation_id,
        headers={**msg.headers, COPY_HEADER: "fresh" if fresh_id else "same"},
        content_type=msg.content_type,
        msg_type=msg.msg_type,
    )
    return message_id


# ---- dead letters, audit, quiescence -----------------------------------------------------------


class ApiMissing(AssertionError):
    """An API of issue 3 that is not there yet (404/405 on its route)."""


def dead_letters(m: Marketplace, **params: Any) -> list[dict]:
    """Every dead letter matching `params` (status defaults to all), following the cursor."""
    url = dead_letter_url(m) + "/api/dead-letters"
    query: dict[str, Any] = {"status": "all", "limit": 100, **params}
    out: list[dict] = []
    for _ in range(1000):
        r = requests.get(url, params=query, timeout=10)
        if r.status_code in (404, 405) and "items" not in r.text:
            raise ApiMissing(f"GET /api/dead-letters is not served yet ({r.status_code} {r.text[:200]})")
        assert r.status_code == 200, f"GET /api/dead-letters {query}: {r.status_code} {r.text[:300]}"
        page = r.json()
        out.extend(page["items"])
        if not page.get("next_cursor"):
            return out
        query["cursor"] = page["next_cursor"]
    raise AssertionError("/api/dead-letters never ended its pagination")


def audit(m: Marketplace, grace_ms: int = 0) -> dict:
    r = m.get("/api/audit", params={"grace_ms": grace_ms}, timeout=60)
    if r.status_code in (404, 405):
        raise ApiMissing(f"GET /api/audit is not served yet ({r.status_code} {r.text[:200]})")
    assert r.status_code == 200, f"GET /api/audit: {r.status_code} {r.text[:500]}"
    return r.json()


def violations(report: dict) -> list[str]:
    out = []
    for inv in report["invariants"]:
        for v in inv.get("violations", []):
            out.append(f"invariant {inv['id']} ({inv['name']}): {v.get('detail')} orders={v.get('orders', [])[:10]}")
        if inv.get("unlisted"):
            out.append(f"invariant {inv['id']} ({inv['name']}): {inv['unlisted']} more violation(s) not listed")
        if not inv["ok"] and not inv.get("violations") and not inv.get("unlisted"):
            out.append(f"invariant {inv['id']} ({inv['name']}) not ok, no violation listed")
    return out


def queue_depths(vhost: str) -> dict[str, int]:
    """Messages ready or unacknowledged in each of the instance's queues."""
    done = rabbitmqctl("-q", "list_queues", "-p", vhost, "name", "messages", timeout=60)
    assert done.returncode == 0, f"rabbitmqctl list_queues: {done.stdout}{done.stderr}"
    depths = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in QUEUES and parts[1].isdigit():
            depths[parts[0]] = int(parts[1])
    return depths


def orders_by_id(m: Marketplace) -> dict[str, dict]:
    return {o["id"]: o for o in m.list_orders(limit=200)}


# A step stalled by a `timeout_<step>` fault (FAULT_STALL_MS, 2 x STEP_TIMEOUT_MS = 2 s by
# default) keeps running after its saga ended TIMEOUT, and writes its late reply to its outbox
# when it wakes. The broker's queue depths cannot show that stalled delivery: RabbitMQ
# refreshes a quorum queue's counters only every few seconds. So quiescence must hold for
# longer than a stall before the audit looks at the outboxes.
STALL_S = 2.0


def quiesce(
    m: Marketplace, accepted: list[str], timeout: float = 90.0, stable_s: float = STALL_S + 1.0
) -> dict[str, dict]:
    """Waits until every accepted order and every order the API lists is final (phase done),
    and, once the audit is served, until it sees nothing in flight and no outbox backlog,
    without interruption for `stable_s`. Returns the orders by id."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        orders = orders_by_id(m)
        pending = [i for i in accepted if orders.get(i, {}).get("status") not in FINAL_STATUSES]
        pending += [i for i, o in orders.items() if o["status"] not in FINAL_STATUSES or o.get("phase") != "done"]
        busy = ""
        if not pending:
            queued = queue_depths(m.vhost)
            if any(queued.values()):
                busy = f"messages still queued: {queued}"
        if not pending and not busy:
            try:
                a = audit(m, grace_ms=0)
                backlog = {k: v for k, v in a.get("outbox_backlog", {}).items() if v}
                if a["orders"]["in_flight"] or backlog:
                    busy = f"audit: in_flight={a['orders']['in_flight']} backlog={backlog}"
            except ApiMissing:
                pass
            if not busy:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= stable_s:
                    return orders
        if pending or busy:
            quiet_since = None
        if time.monotonic() >= deadline:
            sample = {i: orders.get(i, {}).get("status", "missing") for i in sorted(set(pending))[:20]}
            raise AssertionError(
                f"not quiescent within {timeout}s: {len(set(pending))} orders not final {sample} {busy}\n{m.log_tail()}"
            )
        time.sleep(0.25)


def books_balance(m: Marketplace, orders: dict[str, dict], users: list[str]) -> list[str]:
    """The read models' own view of invariants 2 and 3 (a cross-check of the audit): each
    user's balance is its initial credits less its SUCCESS orders, the stock is the initial
    stock less every SUCCESS order's tokens."""
    problems = []
    sold = sum(o["amount"] for o in orders.values() if o["status"] == "SUCCESS")
    stock = m.stock()
    if stock != m.initial_stock - sold:
        problems.append(f"stock {stock}, but {sold} tokens sold of {m.initial_stock}")
    for user in users:
        charged = sum(
            o["price"] * o["amount"] for o in orders.values() if o["username"] == user and o["status"] == "SUCCESS"
        )
        credits = m.credits(user)
        expected = m.initial_credits - charged
        if credits is None and charged:
            problems.append(f"{user}: no account but {charged} charged")
        elif credits is not None and credits != expected:
            problems.append(f"{user}: credits {credits}, expected {expected}")
    return problems


@dataclass
class CaseResult:
    name: str
    accepted: int = 0
    final: int = 0
    violations: int = 0
    recovery_s: float | None = None
    quiesce_s: float | None = None
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        rec = "n/a" if self.recovery_s is None else f"{self.recovery_s:.2f}"
        qui = "n/a" if self.quiesce_s is None else f"{self.quiesce_s:.2f}"
        more = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"CHAOS case={self.name} accepted={self.accepted} final={self.final} "
            f"violations={self.violations} recovery_s={rec} quiesce_s={qui}{more}"
        )


def report(result: CaseResult) -> None:
    line = result.line()
    print(line, flush=True)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT, "a") as f:
        f.write(line + "\n")


def settle_and_audit(m: Marketplace, load: Load, result: CaseResult, t_stop: float) -> None:
    """After a case: the load is stopped at `t_stop`; wait for quiescence, then check that
    no accepted order is missing and that the five invariants hold (audit and read models).
    Fills `result`, reports it, and fails the test on any problem."""
    accepted = load.accepted
    result.accepted = len(accepted)
    orders = quiesce(m, accepted)
    result.quiesce_s = time.monotonic() - t_stop
    result.final = sum(1 for i in accepted if orders.get(i, {}).get("status") in FINAL_STATUSES)
    problems = []
    missing = [i for i in accepted if i not in orders]
    if missing:
        problems.append(f"{len(missing)} accepted orders missing: {missing[:10]}")
    problems += books_balance(m, orders, load.users)
    audit_missing = None
    try:
        a = audit(m, grace_ms=0)
        problems += violations(a)
        if not a["ok"] and not violations(a):
            problems.append(f"audit not ok: {json.dumps(a)[:1000]}")
        if a["orders"]["in_flight"]:
            problems.append(f"audit: {a['orders']['in_flight']} orders still in flight")
        result.extra["audited"] = a["orders"]["accepted"]
    except ApiMissing as e:
        audit_missing = str(e)
    result.violations = len(problems)
    result.extra["statuses"] = ",".join(
        f"{k}:{v}" for k, v in sorted(Counter(o["status"] for i, o in orders.items() if i in set(accepted)).items())
    )
    report(result)
    assert not problems, "\n".join(problems) + "\n" + m.log_tail(40)
    # Marked: this check starts to bite as soon as the audit API (issue 3) is served.
    assert audit_missing is None, audit_missing
