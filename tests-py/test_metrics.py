"""Prometheus metrics at /metrics: exact counts after known traffic on an instance of the
test's own, and an answer from every target of a split instance."""

from __future__ import annotations

import re
import time

import requests
from market import unique

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of the text exposition format: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        parsed = {k: re.sub(r"\\(.)", r"\1", v) for k, v in LABEL.findall(labels or "")}
        samples.append((name, parsed, float(value)))
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items()))


def scrape(port_or_url) -> list:
    url = port_or_url if isinstance(port_or_url, str) else f"http://127.0.0.1:{port_or_url}"
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers["content-type"]
    return parse(r.text)


def scrape_until(url: str, what: str, check, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        time.sleep(0.05)


def test_metrics_count_orders_compensations_and_requests_exactly(start_marketplace):
    m = start_marketplace("metrics")
    ids = [m.buy(unique("metrics-ok")) for _ in range(2)]
    ids.append(m.buy(unique("metrics-killed"), kill_payment=True))
    statuses = sorted(m.wait_final(i)["status"] for i in ids)
    assert statuses == ["SUCCESS", "SUCCESS", "UNKNOWN"]
    assert m.get(f"/api/users/{unique('nobody')}").status_code == 404

    s = scrape_until(
        m.url,
        "sagas finished and outboxes drained",
        lambda s: total(s, "marketplace_sagas_in_flight") == 0
        and total(s, "marketplace_outbox_backlog_messages") == 0
        and total(s, "marketplace_orders_total") == 3,
    )
    assert total(s, "marketplace_orders_total", status="SUCCESS") == 2
    assert total(s, "marketplace_orders_total", status="UNKNOWN") == 1
    assert total(s, "marketplace_saga_duration_seconds_count") == 3
    # kill_payment: the charge may have run, so it is refunded; then the order is rejected.
    assert total(s, "marketplace_compensations_total", step="payment.refund") == 1
    assert total(s, "marketplace_compensations_total", step="order.reject") == 1
    assert total(s, "marketplace_compensations_total") == 2
    step = "marketplace_saga_step_duration_seconds_count"
    assert total(s, step, step="payment.charge", outcome="done") == 2
    assert total(s, step, step="payment.charge", outcome="failed") == 1
    assert total(s, step, step="order.complete", outcome="done") == 2
    http = "marketplace_http_requests_total"
    assert total(s, http, method="POST", route="/api/purchase/", status="202") == 3
    assert total(s, http, method="GET", route="/api/users/{username}", status="404") == 1
    assert not any("nobody" in ls.get("route", "") for n, ls, _ in s if n == http)
    assert total(s, "marketplace_consumer_redeliveries_total") == 0
    # Two charges, and the killed one's charge (answered "failed", so acked) and its refund.
    assert total(s, "marketplace_messages_consumed_total", queue="payment", result="ok") == 4


def test_every_target_of_a_split_instance_serves_metrics(split_marketplace):
    m = split_marketplace
    m.wait_final(m.buy(unique("metrics-split")))
    for target, (_, port) in m.procs.items():
        s = scrape(port)
        services = {ls["service"] for n, ls, _ in s if n == "marketplace_outbox_backlog_messages"}
        assert services == {target}, f"{target}: {services}"
        assert total(s, "marketplace_http_requests_total", route="/readyz") >= 1, target
    manager = scrape(m.procs["manager"][1])
    assert total(manager, "marketplace_orders_total", status="SUCCESS") >= 1
    assert any(n == "marketplace_sagas_in_flight" for n, _, _ in manager)
