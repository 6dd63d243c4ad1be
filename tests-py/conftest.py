"""Fixtures: fresh marketplace processes on their own vhost, data dir and port.

- `marketplace` / `base_url`: the session's main instance (SQLite, FAULT_INJECTION=on).
- `pg_marketplace`: the same on a fresh PostgreSQL database.
- `split_marketplace`: one process per service (SQLite), as deployed in containers.
- `backend_marketplace`: parametrized over the three, for the core scenarios.
- `fault_off_marketplace`: FAULT_INJECTION=off (fault flags must be refused).
- `chaos_marketplace`: a split instance for the chaos module (test_chaos.py).
- `start_marketplace`: a factory for one test's own instances (custom env, restarts);
  they are stopped at the end of that test.

Every instance is stopped with SIGTERM at teardown and must exit 0 within 15 s.
Logs go to $MARKETPLACE_LOG_DIR (default: a pytest temp dir); a failing test shows the
tail of the log of every instance running at the time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import market
from market import Marketplace, MarketplaceFactory


def pytest_configure(config):
    config.addinivalue_line("markers", "chaos: kills processes and restarts RabbitMQ; runs after everything else")


def _order(item) -> int:
    if item.get_closest_marker("chaos"):
        return 2
    return 1 if item.get_closest_marker("last") else 0


def pytest_collection_modifyitems(config, items):
    """Tests marked `last` (the session-wide invariants) run after everything else, and the
    chaos tests (which restart the machine's RabbitMQ) after those."""
    items.sort(key=_order)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for m in list(market.RUNNING):
            report.sections.append((f"marketplace log: {m.name}", m.log_tail(60)))


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    configured = os.environ.get("MARKETPLACE_LOG_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("marketplace-logs")


def pytest_terminal_summary(terminalreporter):
    logs = sorted({str(m.log_path.parent) for m in _ALL_STARTED})
    if logs:
        terminalreporter.write_line(f"marketplace logs: {', '.join(logs)}")


_ALL_STARTED: list[Marketplace] = []


class _TrackingFactory(MarketplaceFactory):
    def start(self, *args, **kwargs) -> Marketplace:
        m = super().start(*args, **kwargs)
        _ALL_STARTED.append(m)
        return m


@pytest.fixture(scope="session")
def session_factory(log_dir):
    factory = _TrackingFactory(log_dir)
    yield factory
    problems = factory.close()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="session")
def marketplace(session_factory) -> Marketplace:
    return session_factory.start("main-sqlite")


@pytest.fixture(scope="session")
def base_url(marketplace) -> str:
    return marketplace.url


@pytest.fixture(scope="session")
def pg_marketplace(session_factory) -> Marketplace:
    return session_factory.start("main-postgres", postgres=True)


@pytest.fixture(scope="session")
def split_marketplace(session_factory) -> Marketplace:
    """One process per service (`marketplace backend`, `marketplace payment`, ...)."""
    return session_factory.start("main-split", split=True)


@pytest.fixture(scope="session", params=["sqlite", "postgres", "split"])
def backend_marketplace(request) -> Marketplace:
    """The core scenarios run on both storage backends, and split into one process per
    service as well as all-in-one."""
    return request.getfixturevalue(
        {"sqlite": "marketplace", "postgres": "pg_marketplace", "split": "split_marketplace"}[request.param]
    )


@pytest.fixture(scope="session")
def fault_off_marketplace(session_factory) -> Marketplace:
    return session_factory.start("fault-off", env={"FAULT_INJECTION": "off"})


@pytest.fixture
def start_marketplace(log_dir, request):
    """`start_marketplace(name, env=..., postgres=..., reuse=...)`: instances for one test."""
    factory = _TrackingFactory(log_dir)
    test = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")

    def start(name: str = "custom", **kwargs) -> Marketplace:
        return factory.start(f"{test}-{name}", **kwargs)

    yield start
    problems = factory.close()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="module")
def chaos_marketplace(log_dir):
    """A split instance (one process per target) for the chaos module, stopped at its end.
    A large stock, so that the load never runs out of tokens across the cases."""
    factory = _TrackingFactory(log_dir)
    m = factory.start("chaos-split", split=True, env={"INITIAL_STOCK": "1000000"})
    yield m
    problems = factory.close()
    assert not problems, "\n\n".join(problems)
