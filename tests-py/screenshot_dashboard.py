"""Takes docs/dashboard.png (and close-ups of two panels beside it, docs/dashboard-timeline.png
and docs/dashboard-feed.png): a fresh marketplace (own vhost, data dir and port, as the tests
start them) with two products, a few minutes of orders (successes, insufficient funds, a
compensated delivery failure, a payment timeout), the dashboard open in headless Chromium
the whole time, then the compensated order's timeline opened and the page captured.

    MARKETPLACE_BIN=target/release/marketplace .venv/bin/python tests-py/screenshot_dashboard.py [out.png] [--minutes N]

Seeded, so two runs place the same orders (their timings differ).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from market import REPO, MarketplaceFactory  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BUYERS = ["ann", "bob", "chen", "dana", "emeka", "fatima", "goran", "hana"]


def place_orders(m, rng: random.Random, minutes: float) -> dict[str, str]:
    """A trickle of orders for `minutes` (so that the per-minute chart has several bars);
    returns the ids of the special ones by name."""
    special = {}
    deadline = time.monotonic() + minutes * 60
    n = 0
    while True:
        n += 1
        buyer = rng.choice(BUYERS)
        if rng.random() < 0.3:
            m.buy(buyer, price=5, amount=rng.randint(1, 3), product="early_token")
        elif rng.random() < 0.1:
            m.purchase(buyer, price=m.initial_credits, amount=2)  # more than any balance
        else:
            m.buy(buyer, price=rng.randint(1, 4), amount=rng.randint(1, 4))
        if n == 5:
            special["timeout"] = m.buy("ivan", price=2, amount=1, timeout_payment=True)
        if n == 9:
            special["compensated"] = m.buy("julia", price=3, amount=2, kill_deliver=True)
        if time.monotonic() >= deadline and "compensated" in special:
            return special
        time.sleep(rng.uniform(1.0, 3.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=str(REPO / "docs" / "dashboard.png"))
    parser.add_argument("--minutes", type=float, default=3.0, help="how long orders trickle in (default 3)")
    args = parser.parse_args()
    if CHROMIUM is None:
        print("no Chromium found (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    factory = MarketplaceFactory(Path(tempfile.mkdtemp(prefix="dashboard-shot-")))
    try:
        m = factory.start(
            "dashboard-screenshot",
            env={
                "PRODUCTS": "late_token=500,early_token=200@5",
                "TRACE_UI_URL": "https://signoz.example/trace/{trace_id}",
            },
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(m.url + "/")
            page.wait_for_selector("#feed-source.live", timeout=20_000)
            special = place_orders(m, random.Random(20261201), args.minutes)
            for order_id in special.values():
                m.wait_final(order_id, timeout=30)
            page.fill("#timeline-id", special["compensated"])
            page.click("#timeline-form button")
            page.wait_for_function(
                "id => document.querySelector('#timeline-order-id')?.textContent === id "
                "&& document.querySelector('#timeline .facts .badge')?.textContent === 'UNKNOWN'",
                arg=special["compensated"],
                timeout=20_000,
            )
            # The figures follow their stream; give the last event a moment to be drawn.
            page.wait_for_function(
                "() => document.querySelectorAll('#sales-chart rect.bar').length > 0", timeout=20_000
            )
            page.wait_for_timeout(2_500)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            # Close-ups beside it: the compensated order's timeline, and the live feed.
            out = Path(args.out)
            for card, name in (("#timeline-card", "timeline"), ("#feed-card", "feed")):
                close_up = out.with_name(f"{out.stem}-{name}{out.suffix}")
                page.locator(card).screenshot(path=str(close_up))
                print(f"wrote {close_up}")
            browser.close()
        print(f"wrote {args.out}")
        return 0
    finally:
        problems = factory.close()
        for problem in problems:
            print(problem, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
