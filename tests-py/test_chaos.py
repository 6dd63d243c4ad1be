"""Chaos: a split marketplace (one process per target) under a steady load of purchases, while
processes are SIGKILLed, RabbitMQ restarts, garbage and poison messages arrive, and real
messages are delivered twice. After each case: the load stops, every accepted order must
become final, and the five invariants of ARCHITECTURE.md must hold (GET /api/audit, plus
the read models' own balance and stock as a cross-check).

Each case prints and appends to target/chaos-report.txt one line:
`CHAOS case=... accepted=... final=... violations=... recovery_s=... quiesce_s=...`.

The two broker cases restart the machine's RabbitMQ, so this module runs after every other
test (marker `chaos`); `MARKETPLACE_CHAOS_BROKER=0` skips just those two (while developing,
when others share the broker).
"""

from __future__ import annotations

import json
import os
import time
import uuid

import chaos
import pytest
from chaos import CaseResult, Load, Publisher, Tap
from market import SPLIT_TARGETS

pytestmark = [pytest.mark.last, pytest.mark.chaos, pytest.mark.timeout(180)]

broker_cases = pytest.mark.skipif(
    os.environ.get("MARKETPLACE_CHAOS_BROKER", "1") == "0", reason="MARKETPLACE_CHAOS_BROKER=0"
)

WARMUP_S = 1.5


def test_sigkill_each_target_mid_load_and_restart_it(chaos_marketplace):
    m = chaos_marketplace
    result = CaseResult("sigkill-each-target")
    recoveries = {}
    with Load(m) as load:
        time.sleep(WARMUP_S)
        for target in SPLIT_TARGETS:
            t_fault = time.monotonic()
            m.kill_target(target)
            time.sleep(1.0)  # down while the load goes on
            m.restart_target(target)
            chaos.wait_ready(m)
            recoveries[target] = chaos.probe_flow(m) - t_fault
        time.sleep(1.0)
    t_stop = time.monotonic()
    result.recovery_s = max(recoveries.values())
    result.extra["recovery_by_target"] = ",".join(f"{t}:{s:.2f}" for t, s in recoveries.items())
    # While the backend is down, a purchase gets no answer at all; nothing else is allowed.
    unexpected = load.unexpected({None})
    chaos.settle_and_audit(m, load, result, t_stop)
    assert not unexpected, f"unexpected answers: {unexpected[:10]}"


def broker_outage(m, result: CaseResult, stop, start, outage_s: float = 3.0) -> None:
    """Load, then RabbitMQ down (`stop`) for a while and up again (`start`), then settle."""
    load = Load(m).start()
    broker_stopped = False
    try:
        time.sleep(WARMUP_S)
        t_fault = time.monotonic()
        broker_stopped = True
        stop()
        states = chaos.wait_readyz_status(m, 503, timeout=20)
        t_down = time.monotonic()
        time.sleep(max(0.0, outage_s - (t_down - t_fault)))
        start()
        broker_stopped = False
        t_back = time.monotonic()
        result.extra["broker_back_s"] = f"{t_back - t_fault:.2f}"
        chaos.wait_ready(m, timeout=90)
        t_flow = chaos.probe_flow(m, timeout=90)
        result.recovery_s = t_flow - t_fault
        result.extra["after_broker_s"] = f"{t_flow - t_back:.2f}"
        time.sleep(1.0)
    finally:
        load.stop()
        if broker_stopped:
            chaos.ensure_broker_running()
    t_stop = time.monotonic()
    during = [a for a in load.attempts if t_fault <= a.at <= t_fault + outage_s]
    result.extra["during_outage"] = ",".join(
        f"{s}:{sum(1 for a in during if str(a.status) == s)}" for s in sorted({str(a.status) for a in during})
    )
    chaos.settle_and_audit(m, load, result, t_stop)
    assert all(s == 503 for s in states.values()), f"/readyz while RabbitMQ was down: {states}"
    # During the outage a purchase is accepted into the outbox (202, finished later: checked
    # above) or refused with 503; never anything else.
    unexpected = load.unexpected({503})
    assert not unexpected, f"unexpected answers: {unexpected[:10]}"


@broker_cases
def test_rabbitmq_stop_app_and_start_app_mid_load(chaos_marketplace):
    broker_outage(chaos_marketplace, CaseResult("broker-stop-app"), chaos.stop_app, chaos.start_app)


@broker_cases
def test_rabbitmq_full_shutdown_and_restart_mid_load(chaos_marketplace):
    broker_outage(
        chaos_marketplace, CaseResult("broker-shutdown"), chaos.shutdown_server, chaos.start_server, outage_s=2.0
    )


def garbage_for(queue: str) -> list[tuple[str, bytes, bool]]:
    """(what, body, with a message id) of each bad message for `queue`."""
    huge = b'{"type":"step_reply","padding":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    wrong = {
        "manager": {"type": "step_reply", "order_id": "not-a-uuid"},
        "manager.orders": {"type": "place_order", "order_id": "not-a-uuid"},
        "backend.events": {"type": "stock_changed", "product": 7},
        "dead-letter": {"anything": True},
    }.get(queue, {"order_id": str(uuid.uuid4()), "step": "payment.steal", "terms": None})
    return [
        ("not-json", b"\x00\xff this is not JSON {", True),
        ("wrong-json", json.dumps(wrong).encode(), True),
        ("array", b"[1, 2, 3]", True),
        ("huge", huge, True),
        ("no-message-id", b'{"type":"place_order"}', False),
    ]


def test_garbage_and_over_limit_messages_are_dead_lettered_and_the_rest_flows(chaos_marketplace):
    m = chaos_marketplace
    result = CaseResult("garbage-and-poison")
    sent: dict[str, tuple[str, str]] = {}  # message id -> (queue, what)
    without_id: dict[str, int] = {}
    with Load(m) as load:
        time.sleep(WARMUP_S)
        t_fault = time.monotonic()
        with Publisher(m.vhost) as pub:
            for queue in chaos.QUEUES:
                for what, body, with_id in garbage_for(queue):
                    message_id = f"chaos-{what}-{uuid.uuid4()}" if with_id else None
                    pub.publish(body, routing_key=queue, message_id=message_id)
                    if message_id:
                        sent[message_id] = (queue, what)
                    else:
                        without_id[queue] = without_id.get(queue, 0) + 1
        result.recovery_s = chaos.probe_flow(m) - t_fault

        # Over the delivery limit: a stalled payment step holds its command unacked; killing
        # the payment worker returns it to the queue, again and again, until the quorum queue
        # dead-letters it.
        poison = m.buy(chaos.unique("poison"), price=1, amount=1, timeout_payment=True)
        kills = 0
        for _ in range(chaos.DELIVERY_LIMIT + 3):
            wait_step_sent(m, poison, "payment.charge")
            time.sleep(0.6)  # the worker has it and stalls (FAULT_STALL_MS = 2 s)
            m.kill_target("payment")
            kills += 1
            m.restart_target("payment")
            chaos.wait_ready(m)
            if kills > chaos.DELIVERY_LIMIT and poison_dead_lettered(m, poison):
                break
        result.extra["payment_kills"] = kills
        chaos.probe_flow(m)
        time.sleep(1.0)
    t_stop = time.monotonic()
    chaos.quiesce(m, load.accepted)
    problems = dead_letter_problems(m, sent, without_id, poison, kills)
    result.extra["dead_letters_missing"] = len(problems)
    try:
        chaos.settle_and_audit(m, load, result, t_stop)
    finally:
        assert not problems, "\n".join(problems)


def dead_letter_problems(m, sent: dict[str, tuple[str, str]], without_id: dict[str, int], poison: str, kills: int):
    """Each bad message is in the dead-letter store, under the queue it was published to;
    the over-limit command too, and its order ended TIMEOUT (its deadline came first)."""
    problems = []
    letters = wait_dead_letters(m, set(sent))
    by_id = {d["message_id"]: d for d in letters}
    for message_id, (queue, what) in sent.items():
        d = by_id.get(message_id)
        if d is None:
            problems.append(f"{what} into {queue} ({message_id}) not in the dead-letter store")
        elif queue != "dead-letter" and d["original_queue"] != queue:  # the store's own queue has no DLX
            problems.append(f"{what} into {queue}: stored as {d}")
    for queue, n in without_id.items():
        got = [d for d in letters if d["message_id"].startswith("no-id") and d["original_queue"] in (queue, None)]
        if len(got) < n:
            problems.append(
                f"{queue}: {n} messages without a message_id sent, {len(got)} stored (lost: if the log says "
                f'queue="dead-letter" ... "message has no message_id", the dead-letter consumer rejected them '
                f"before storing, and its queue has no DLX)"
            )
    over = [d for d in chaos.dead_letters(m, order_id=poison) if d["original_queue"] == "payment"]
    if not over:
        problems.append(f"the stalled payment command of {poison} was not dead-lettered after {kills} kills")
    elif "delivery_limit" not in over[0]["reason"]:
        problems.append(f"over-limit dead letter with reason {over[0]['reason']!r}: {over[0]}")
    status = m.wait_final(poison)["status"]
    if status != "TIMEOUT":
        problems.append(f"poison order {poison} ended {status}, not TIMEOUT")
    return problems


def wait_step_sent(m, order_id: str, step: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = m.order(order_id)
        if r.status_code == 200 and any(e["step"] == step and e["event"] == "sent" for e in r.json()["timeline"]):
            return
        assert time.monotonic() < deadline, f"{step} of {order_id} never sent: {r.status_code} {r.text[:500]}"
        time.sleep(0.05)


def poison_dead_lettered(m, order_id: str) -> bool:
    try:
        return any(d["original_queue"] == "payment" for d in chaos.dead_letters(m, order_id=order_id))
    except (chaos.ApiMissing, AssertionError, OSError):
        return False


def wait_dead_letters(m, ids: set[str], timeout: float = 30.0) -> list[dict]:
    """Every dead letter, once all of `ids` are stored (or the bound is reached)."""
    deadline = time.monotonic() + timeout
    while True:
        letters = chaos.dead_letters(m)
        if ids <= {d["message_id"] for d in letters} or time.monotonic() >= deadline:
            return letters
        time.sleep(0.25)


def test_duplicate_deliveries_are_not_applied_twice(chaos_marketplace):
    m = chaos_marketplace
    result = CaseResult("duplicates")
    copies = 0
    with Tap(m.vhost) as tap, Publisher(m.vhost) as pub:
        with Load(m) as load:
            time.sleep(WARMUP_S)
            t_fault = time.monotonic()
            # Orders in flight: copies of what was just published, with its own id (as a
            # redelivery would be) and with a fresh one (a duplicate the inbox cannot know).
            seen = 0
            end = time.monotonic() + 5.0
            while time.monotonic() < end:
                batch = tap.snapshot()[seen:]
                seen += len(batch)
                for i, msg in enumerate(batch):
                    if i % 3 == 0:
                        chaos.republish(pub, msg, fresh_id=False)
                        chaos.republish(pub, msg, fresh_id=True)
                        copies += 2
                time.sleep(0.2)
            result.extra["inject_s"] = f"{time.monotonic() - t_fault:.2f}"
            t_fault = time.monotonic()
            result.recovery_s = chaos.probe_flow(m) - t_fault
        t_stop = time.monotonic()
        before = chaos.quiesce(m, load.accepted)
        # Finished orders: copies of every message of a sample of them, both ways.
        captured = tap.snapshot()
        orders = sorted({c.correlation_id for c in captured if c.correlation_id})[::4]
        finished = set(orders)
        for msg in captured:
            if msg.correlation_id in finished:
                chaos.republish(pub, msg, fresh_id=False)
                chaos.republish(pub, msg, fresh_id=True)
                copies += 2
    result.extra["copies"] = copies
    result.extra["kinds"] = ",".join(sorted({c.routing_key for c in captured}))
    time.sleep(1.0)
    chaos.settle_and_audit(m, load, result, t_stop)
    after = chaos.orders_by_id(m)
    changed = {i: (o["status"], after[i]["status"]) for i, o in before.items() if after[i]["status"] != o["status"]}
    assert not changed, f"copies of their messages changed finished orders: {changed}"
