"""The dashboard at `/`, driven in a real browser (headless Chromium through Playwright):
it loads with no console error and no failed request, its charts draw once orders have
finished, a purchase placed from its form shows up in the live feed (from the order stream)
and opens its timeline, a purchase with a fault flag shows its compensations, and the
operator panel asks for the token, then replays and resolves a dead letter with it.

Every wait is bounded and waits for an outcome, never for a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from market import BROWSER_REQUIRED, CHROMIUM, FORWARD, NO_BROWSER, Marketplace, MarketplaceFactory, unique
from test_dead_letters import garbage

if BROWSER_REQUIRED:
    from playwright import sync_api  # a missing package fails the run
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -r tests-py/requirements.txt")

pytestmark = pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED, reason=NO_BROWSER)

# Bounds on waiting for the page: a saga takes milliseconds, figures are counted
# asynchronously, and the machine is shared.
WAIT_MS = 20_000
TOKEN = "dashboard-token-0123456789"
TRACE_UI = "http://trace-ui.invalid/trace/{trace_id}?from=dashboard"


class Dashboard:
    """One page of the dashboard and everything that went wrong in it."""

    def __init__(self, page, url: str) -> None:
        self.page = page
        self.url = url
        self.problems: list[str] = []
        # Answers a test provoked on purpose, as (status, path prefix).
        self.expected: set[tuple[int, str]] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"uncaught exception: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message) -> None:
        if message.type not in ("error", "warning"):
            return
        # The browser also logs every 4xx answer; those a test provoked are not problems.
        status = re.search(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        if status and self._expected(int(status[1]), message.location.get("url", "")):
            return
        self.problems.append(f"console {message.type}: {message.text} ({message.location.get('url')})")

    def _expected(self, status: int, url: str) -> bool:
        path = url.removeprefix(self.url)
        return any(status == s and path.startswith(prefix) for s, prefix in self.expected)

    def _failed(self, request) -> None:
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response) -> None:
        if response.status < 400:
            return
        if not self._expected(response.status, response.url):
            self.problems.append(f"{response.status} {response.request.method} {response.url}")

    def open(self) -> Dashboard:
        self.page.goto(self.url + "/")
        # Both streams connected: nothing the page shows comes from a fallback.
        self.page.wait_for_selector("#feed-source.live", timeout=WAIT_MS)
        self.page.wait_for_selector("#analytics-source.live", timeout=WAIT_MS)
        # The inventory answered: the product list and the stock chart are filled.
        self.page.wait_for_selector("#stock-chart rect.bar", state="attached", timeout=WAIT_MS)
        return self

    def wait_for(self, script: str, arg=None) -> None:
        self.page.wait_for_function(script, arg=arg, timeout=WAIT_MS)

    def buy(self, username: str, price: int, amount: int, *flags: str) -> str:
        """Places a purchase through the form; returns the order id the page shows."""
        page = self.page
        page.fill("#p-username", username)
        page.select_option("#p-product", "late_token")
        page.fill("#p-price", str(price))
        page.fill("#p-amount", str(amount))
        for flag in flags:
            page.check(f"#flag-{flag}")
        page.click("#p-submit")
        result = page.wait_for_selector("#purchase-result[data-order-id]", timeout=WAIT_MS)
        order_id = result.get_attribute("data-order-id")
        assert result.get_attribute("data-status") == "202", result.inner_text()
        assert order_id in result.inner_text()
        for flag in flags:
            page.uncheck(f"#flag-{flag}")
        return order_id

    def wait_timeline(self, order_id: str, status: str) -> list[tuple[str, str]]:
        """Waits until the timeline shows `order_id` with its final `status`; returns its
        (step, event) rows."""
        self.wait_for(
            """([id, status]) => document.querySelector('#timeline-order-id')?.textContent === id
                && document.querySelector('#timeline .facts .badge')?.textContent === status""",
            [order_id, status],
        )
        rows = self.page.eval_on_selector_all(
            "#timeline-table tbody tr", "rows => rows.map(r => [r.dataset.step, r.dataset.event])"
        )
        return [tuple(r) for r in rows]

    def assert_clean(self) -> None:
        banner = self.page.locator("#page-error")
        assert banner.is_hidden(), banner.inner_text()
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    assert CHROMIUM is not None, NO_BROWSER
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@contextmanager
def new_dashboard(browser, m: Marketplace) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        yield Dashboard(context.new_page(), m.url)
    finally:
        context.close()


@pytest.fixture
def dashboard(browser, marketplace) -> Iterator[Dashboard]:
    with new_dashboard(browser, marketplace) as d:
        yield d


@pytest.fixture(scope="module")
def operator_marketplace(log_dir) -> Iterator[Marketplace]:
    """An instance with an operator token and a trace UI: the page must ask for the one
    and link to the other."""
    factory = MarketplaceFactory(log_dir)
    m = factory.start("dashboard-operator", env={"ADMIN_TOKEN": TOKEN, "TRACE_UI_URL": TRACE_UI})
    # The test's own requests (placing garbage, checking letters) are the operator's.
    m.http.headers["Authorization"] = f"Bearer {TOKEN}"
    yield m
    problems = factory.close()
    assert not problems, "\n\n".join(problems)


def test_the_page_loads_its_assets_and_every_panel_without_an_error(dashboard, marketplace):
    for path, kind in [("/", "text/html"), ("/dashboard/app.js", "text/javascript"), ("/dashboard/app.css", "text/css")]:
        r = marketplace.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (path, r.headers)
        assert r.headers["cache-control"] == "no-cache"
    dashboard.open()
    page = dashboard.page
    assert page.title().startswith("Late-token marketplace")
    assert "late_token" in page.eval_on_selector_all("#p-product option", "os => os.map(o => o.value)")
    # The figures and the operator panel answered (this client is on loopback).
    dashboard.wait_for("() => /^[0-9,]+$/.test(document.querySelector('#kpi-inflight').textContent)")
    dashboard.wait_for("() => !!document.querySelector('#dead-note').textContent || !!document.querySelector('#dead-table tbody tr')")
    assert page.locator(".note.error").count() == 0, page.locator(".note.error").all_inner_texts()
    dashboard.assert_clean()


def test_the_charts_draw_once_orders_have_finished(dashboard, marketplace):
    buyers = [unique("dash-chart") for _ in range(3)]
    placed = [marketplace.buy(b, price=3, amount=2) for b in buyers]
    placed.append(marketplace.buy(unique("dash-poor"), price=marketplace.initial_credits + 1, amount=1))
    statuses = sorted(marketplace.wait_final(o)["status"] for o in placed)
    assert statuses == ["INSUFFICIENT_FUND", "SUCCESS", "SUCCESS", "SUCCESS"]

    dashboard.open()
    # Outcomes: a bar for each final status that happened, as wide as its count allows.
    for status in ("SUCCESS", "INSUFFICIENT_FUND"):
        dashboard.wait_for(
            "s => Number(document.querySelector(`#outcomes-chart rect.bar[data-key='${s}']`)?.getAttribute('width')) > 0",
            status,
        )
    # Sales per minute: this minute's bar has a height.
    dashboard.wait_for(
        "() => [...document.querySelectorAll('#sales-chart rect.bar')].some(r => Number(r.getAttribute('height')) > 0)"
    )
    # The tables of customers and products are filled.
    dashboard.wait_for("() => document.querySelectorAll('#customers-table tbody tr').length > 0")
    dashboard.wait_for(
        "() => [...document.querySelectorAll('#products-table tbody td:first-child')].some(td => td.textContent === 'late_token')"
    )
    dashboard.wait_for("() => Number(document.querySelector('#stock-chart rect.bar').getAttribute('width')) > 0")
    dashboard.assert_clean()


def test_a_purchase_from_the_form_shows_in_the_live_feed_and_opens_its_timeline(dashboard, marketplace):
    dashboard.open()
    buyer = unique("dash-form")
    order_id = dashboard.buy(buyer, price=2, amount=3)
    marketplace.record(order_id)

    # The feed shows the order with the final status the order stream itself sent.
    row = f"#feed li[data-order-id='{order_id}'][data-stream-status='SUCCESS']"
    dashboard.page.wait_for_selector(row, timeout=WAIT_MS)
    assert buyer in dashboard.page.inner_text(row)

    rows = dashboard.wait_timeline(order_id, "SUCCESS")
    for step in FORWARD:
        assert (step, "sent") in rows and (step, "done") in rows, rows
    assert not [r for r in rows if r[0] in {"delivery.cancel", "inventory.release", "payment.refund"}], rows
    # A bar per step in the chart, and each outcome says how long its step took.
    assert dashboard.page.locator("#timeline-gantt rect.span").count() == len(FORWARD)
    took = dashboard.page.eval_on_selector_all(
        "#timeline-table tbody tr[data-event='done'] td:nth-child(6)", "tds => tds.map(td => td.textContent)"
    )
    assert len(took) == len(FORWARD) and all(re.fullmatch(r"\d+ ms|[\d.]+ s", t) for t in took), took

    order = marketplace.wait_final(order_id)
    assert (order["status"], order["username"], order["amount"], order["price"]) == ("SUCCESS", buyer, 3, 2)
    dashboard.assert_clean()


def test_a_purchase_whose_delivery_is_killed_shows_its_compensations(dashboard, marketplace):
    dashboard.open()
    order_id = dashboard.buy(unique("dash-kill"), 1, 1, "kill_deliver")
    marketplace.record(order_id)

    dashboard.page.wait_for_selector(
        f"#feed li[data-order-id='{order_id}'][data-stream-status='UNKNOWN']", timeout=WAIT_MS
    )
    rows = dashboard.wait_timeline(order_id, "UNKNOWN")
    assert ("delivery.schedule", "failed") in rows, rows
    for compensation in ("delivery.cancel", "inventory.release", "payment.refund", "order.reject"):
        assert (compensation, "done") in rows, rows
    assert ("order.complete", "sent") not in rows, rows
    # Compensations are marked as such, in the table and in the chart.
    comp_rows = dashboard.page.locator("#timeline-table tbody tr.comp")
    assert comp_rows.count() >= 8, comp_rows.all_inner_texts()
    # One bar per attempt: a compensation past its deadline is sent again.
    assert dashboard.page.locator("#timeline-gantt rect.span.comp").count() >= 4
    assert dashboard.page.locator("#timeline-gantt rect.span.ev-failed").count() == 1
    assert marketplace.wait_final(order_id)["status"] == "UNKNOWN"
    dashboard.assert_clean()


def test_an_order_typed_in_opens_and_an_unknown_one_says_so(dashboard, marketplace):
    order_id = marketplace.buy(unique("dash-typed"), price=1, amount=1)
    marketplace.wait_final(order_id)
    dashboard.open()
    missing = "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f"
    dashboard.expected.add((404, f"/api/orders/{missing}"))
    dashboard.page.fill("#timeline-id", missing)
    dashboard.page.click("#timeline-form button")
    error = dashboard.page.wait_for_selector("#timeline-error", timeout=WAIT_MS)
    assert "404" in error.inner_text() and "not found" in error.inner_text()
    dashboard.page.fill("#timeline-id", order_id)
    dashboard.page.click("#timeline-form button")
    rows = dashboard.wait_timeline(order_id, "SUCCESS")
    assert ("order.complete", "done") in rows
    dashboard.assert_clean()


def test_the_operator_panel_asks_for_the_token_then_replays_and_resolves(browser, operator_marketplace):
    m = operator_marketplace
    letters = [garbage(m, "payment", b"dashboard: not json") for _ in range(2)]
    order_id = m.buy(unique("dash-trace"), price=1, amount=1)
    m.wait_final(order_id)
    with new_dashboard(browser, m) as dashboard:
        page = dashboard.page
        # Without the token: a 401, said as such, and no letter shown.
        dashboard.expected.add((401, "/api/dead-letters"))
        dashboard.open()
        dashboard.wait_for("() => document.querySelector('#dead-note').classList.contains('auth')")
        assert "401" in page.inner_text("#dead-note") and "operator token" in page.inner_text("#dead-note")
        # A wrong token: a 403.
        dashboard.expected.add((403, "/api/dead-letters"))
        page.fill("#token-input", "wrong-token-0123456789")
        page.click("#token-form button[type=submit]")
        dashboard.wait_for("() => /403/.test(document.querySelector('#dead-note').textContent)")
        # The right one: the letters, and their buttons work.
        page.fill("#token-input", TOKEN)
        page.click("#token-form button[type=submit]")
        for letter in letters:
            page.wait_for_selector(f"#dead-table tr[data-letter-id='{letter['id']}']", timeout=WAIT_MS)
        first, second = (f"#dead-table tr[data-letter-id='{letter['id']}']" for letter in letters)
        page.click(f"{first} button.replay")
        dashboard.wait_for("() => /^Replayed .* \\(202\\)/.test(document.querySelector('#dead-note').textContent)")
        page.click(f"{second} button.resolve")
        dashboard.wait_for("() => /^Resolved .* \\(200\\)/.test(document.querySelector('#dead-note').textContent)")
        page.wait_for_selector(second, state="detached", timeout=WAIT_MS)
        assert m.get(f"/api/dead-letters/{letters[1]['id']}").json()["status"] == "resolved"

        # The trace id is a link into the trace UI, `{trace_id}` replaced.
        page.fill("#timeline-id", order_id)
        page.click("#timeline-form button")
        dashboard.wait_timeline(order_id, "SUCCESS")
        trace_id = m.order(order_id).json()["trace_id"]
        assert trace_id, "the order has no trace id"
        href = page.get_attribute("#trace-link", "href")
        assert href == TRACE_UI.replace("{trace_id}", trace_id)
        dashboard.assert_clean()


@pytest.fixture(scope="module")
def slow_marketplace(log_dir) -> Iterator[Marketplace]:
    """Steps with a 60 s deadline, and a stalled step held 25 s before it runs: a saga
    whose payment stalls stays in flight, unmoving, long enough to be stuck (10 s), and
    then finishes."""
    factory = MarketplaceFactory(log_dir)
    m = factory.start("dashboard-slow", env={"STEP_TIMEOUT_MS": "60000", "FAULT_STALL_MS": "25000"})
    yield m
    problems = factory.close()
    assert not problems, "\n\n".join(problems)


def test_a_saga_that_stops_moving_is_marked_stuck_however_many_move(browser, slow_marketplace):
    m = slow_marketplace
    stuck = m.buy(unique("dash-stuck"), price=1, amount=1, timeout_payment=True)
    with new_dashboard(browser, m) as dashboard:
        dashboard.open()
        # It is listed in flight at once, and marked stuck once it has not moved for 10 s,
        # by the server's idle filter (not only when it is among the newest sagas).
        dashboard.page.wait_for_selector(f"#inflight-table tr[data-order-id='{stuck}']", timeout=WAIT_MS)
        dashboard.page.wait_for_selector(f"#inflight-table tr.stuck[data-order-id='{stuck}']", timeout=30_000)
        assert dashboard.page.inner_text("#kpi-stuck") == "1"
        assert "1 stuck" in dashboard.page.inner_text("#inflight-summary")
        # Sagas that move are not stuck.
        moving = m.buy(unique("dash-moving"), price=1, amount=1)
        assert m.wait_final(moving)["status"] == "SUCCESS"
        assert dashboard.page.locator("#inflight-table tr.stuck").count() == 1
        dashboard.assert_clean()
    # The stalled step runs in the end: the saga finishes, nothing is left behind.
    assert m.wait_final(stuck, timeout=40)["status"] == "SUCCESS"
