"""Starting a fresh marketplace process for the tests, and talking to it over HTTP.

Every instance gets its own RabbitMQ vhost, its own DATA_DIR (or its own PostgreSQL
database), and a free port, so instances never see each other's messages or rows and the
suite can run beside a developer's own marketplace.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / "target" / "release" / "marketplace"

AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1:5672")
PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("TEST_PG_PORT", "5432")
PG_USER = os.environ.get("TEST_PG_USER", "postgres")

FINAL_STATUSES = {"SUCCESS", "INSUFFICIENT_FUND", "INSUFFICIENT_INVENTORY", "TIMEOUT", "UNKNOWN"}
FAULT_FLAGS = (
    "kill_create",
    "kill_payment",
    "timeout_payment",
    "kill_inventory",
    "timeout_inventory",
    "kill_deliver",
    "timeout_deliver",
)

# Headless Chromium for the browser tests (the dashboard, /docs). Without it they are
# skipped, unless REQUIRE_BROWSER=1 (test.sh sets it, and installs Debian's `chromium`):
# then a missing browser fails them, so that a run that drove no browser cannot pass.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BROWSER_REQUIRED = os.environ.get("REQUIRE_BROWSER") == "1"
NO_BROWSER = "no Chromium on this machine (test.sh installs Debian's `chromium` and sets REQUIRE_BROWSER=1)"

HTTP_TIMEOUT = 10
READY_TIMEOUT = 30
STOP_TIMEOUT = 15

# Instances alive right now, so a failing test can show the tail of their logs.
RUNNING: list[Marketplace] = []


def binary() -> Path:
    return Path(os.environ.get("MARKETPLACE_BIN", str(DEFAULT_BIN)))


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses: balances start from scratch."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout}{done.stderr}")


def create_vhost(name: str) -> None:
    _run(["rabbitmqctl", "-q", "add_vhost", name])
    _run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"])


def delete_vhost(name: str) -> None:
    try:
        _run(["rabbitmqctl", "-q", "delete_vhost", name])
    except RuntimeError as e:
        if "does not exist" not in str(e):
            raise


def create_database(name: str) -> str:
    _run(["createdb", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, name])
    return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_database(name: str) -> None:
    _run(["dropdb", "--if-exists", "--force", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, name])


def _die_with_parent() -> None:
    """A killed pytest must not leave marketplaces running (Linux: PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)
    except OSError:
        pass


class StartupError(RuntimeError):
    pass


SPLIT_TARGETS = ("backend", "manager", "order", "payment", "inventory", "delivery", "dead-letter")


class Marketplace:
    """One marketplace and the resources it runs on: one `marketplace all` process, or
    (split=True) one process per service, as in a container deployment."""

    def __init__(
        self,
        name: str,
        log_path: Path,
        vhost: str,
        data_dir: Path,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        split: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.vhost = vhost
        self.data_dir = data_dir
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.split = split
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # target -> (process, its HTTP port); the backend (or `all`) serves on self.port.
        self.procs: dict[str, tuple[subprocess.Popen, int]] = {}
        self.exit_code: int | None = None
        self.exit_codes: dict[str, int] = {}
        # The environment of the processes, kept for restarting one target (`restart_target`).
        self._env: dict[str, str] = {}
        # Every order id this instance accepted during the session (for the invariants).
        self.placed: list[str] = []
        self._placed_lock = threading.Lock()
        self._local = threading.local()

    # ---- configuration as the instance sees it ------------------------------------------

    @property
    def initial_credits(self) -> int:
        return int(self.extra_env.get("INITIAL_CREDITS", 500))

    @property
    def initial_stock(self) -> int:
        return int(self.extra_env.get("INITIAL_STOCK", 500))

    @property
    def fault_injection(self) -> bool:
        return self.extra_env.get("FAULT_INJECTION", "on") != "off"

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def proc(self) -> subprocess.Popen | None:
        """The process serving the API (kept for tests that poke at it)."""
        entry = self.procs.get("backend") or self.procs.get("all")
        return entry[0] if entry else None

    def start(self) -> Marketplace:
        exe = binary()
        if not exe.exists():
            raise StartupError(
                f"marketplace binary not found at {exe}: run `cargo build --release` or set MARKETPLACE_BIN"
            )
        env = dict(os.environ)
        env.update(
            {
                "AMQP_URL": f"amqp://guest:guest@{AMQP_HOST}/{self.vhost}",
                "DATA_DIR": str(self.data_dir),
                "FAULT_INJECTION": "on",
                "RUST_LOG": os.environ.get("RUST_LOG", "info"),
                # Plain logs: they are read in files and in pytest's failure report.
                "NO_COLOR": "1",
            }
        )
        env.pop("DATABASE_URL", None)
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._env = env
        targets = SPLIT_TARGETS if self.split else ("all",)
        RUNNING.append(self)
        for target in targets:
            port = self.port if target in ("all", "backend") else free_port()
            self._spawn(target, port)
        try:
            self._wait_ready()
        except Exception:
            self.kill()
            raise
        return self

    def _spawn(self, target: str, port: int) -> None:
        exe = binary()
        with open(self.log_path, "ab") as log:
            log.write(f"==== starting {self.name}: {exe} {target} (port {port}, vhost {self.vhost})\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [str(exe), target],
                cwd=str(self.data_dir.parent),
                env={**self._env, "HTTP_ADDR": f"127.0.0.1:{port}"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Only a prctl call, safe after fork even with threads around.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        self.procs[target] = (proc, port)

    def kill_target(self, target: str) -> None:
        """SIGKILL one process of a running instance (it keeps its port for `restart_target`)."""
        proc, port = self.procs[target]
        proc.kill()
        proc.wait()
        with open(self.log_path, "ab") as log:
            log.write(f"==== {self.name} ({target}): SIGKILL\n".encode())

    def restart_target(self, target: str) -> None:
        """Starts one target again, on the same port, data and vhost, after `kill_target`."""
        proc, port = self.procs[target]
        assert proc.poll() is not None, f"{target} is still running"
        self._spawn(target, port)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            for target, (proc, _) in self.procs.items():
                if proc.poll() is not None:
                    raise StartupError(
                        f"{self.name} ({target}) exited with {proc.returncode} during start\n{self.log_tail()}"
                    )
            try:
                not_ready = []
                for target, (_, port) in self.procs.items():
                    r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                    if r.status_code != 200:
                        not_ready.append(f"{target} /readyz: {r.status_code} {r.text[:200]}")
                if not not_ready:
                    inv = requests.get(self.url + "/api/inventory", timeout=2)
                    if inv.status_code == 200 and inv.json():
                        return
                    last = f"/api/inventory: {inv.status_code} {inv.text[:200]}"
                else:
                    last = "; ".join(not_ready)
            except (requests.RequestException, ValueError) as e:
                last = repr(e)
            time.sleep(0.1)
        raise StartupError(f"{self.name} not ready within {READY_TIMEOUT}s (last: {last})\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM to every process, then SIGKILL after `timeout`; returns the worst exit
        code (0 when all exited cleanly; negative: killed by that signal)."""
        if not self.procs:
            return self.exit_code if self.exit_code is not None else 0
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for target, (proc, _) in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                with open(self.log_path, "ab") as log:
                    log.write(f"==== {self.name} ({target}): no exit {timeout}s after SIGTERM, killed\n".encode())
            self.exit_codes[target] = proc.returncode
        self.procs = {}
        self.exit_code = next((c for c in self.exit_codes.values() if c != 0), 0)
        if self in RUNNING:
            RUNNING.remove(self)
        return self.exit_code

    def kill(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs = {}
        if self in RUNNING:
            RUNNING.remove(self)

    @property
    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p, _ in self.procs.values())

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text[-lines:])
        return f"---- last {lines} lines of {self.log_path} ----\n" + re.sub(r"\x1b\[[0-9;]*m", "", tail)

    # ---- HTTP ----------------------------------------------------------------------------

    @property
    def http(self) -> requests.Session:
        """One keep-alive session per thread (a Session is not meant to be shared)."""
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            self._local.session = s
        return s

    def get(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return self.http.get(self.url + path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return self.http.post(self.url + path, **kw)

    def record(self, order_id: str) -> None:
        with self._placed_lock:
            self.placed.append(order_id)

    def purchase(
        self, username: str, price: int, amount: int, path: str = "/api/purchase/", **flags: bool
    ) -> requests.Response:
        """POST a purchase; remembers the order id of an accepted one."""
        body: dict[str, Any] = {"username": username, "price": price, "amount": amount}
        body.update(flags)
        r = self.post(path, json=body)
        if r.status_code in (200, 202):
            try:
                self.record(r.json()["order_id"])
            except (ValueError, KeyError, TypeError):
                pass
        return r

    def buy(self, username: str, price: int = 1, amount: int = 1, **flags: bool) -> str:
        """A purchase that must be accepted; returns its order id."""
        r = self.purchase(username, price, amount, **flags)
        assert r.status_code == 202, f"purchase refused: {r.status_code} {r.text}"
        body = r.json()
        assert body.get("status") == "PROCESSING", body
        return body["order_id"]

    def order(self, order_id: str) -> requests.Response:
        return self.get(f"/api/orders/{order_id}")

    def wait_final(self, order_id: str, timeout: float = 10.0) -> dict:
        """Polls the order until its status is final; fails the test after `timeout`."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            r = self.order(order_id)
            if r.status_code == 200:
                last = r.json()
                if last.get("status") in FINAL_STATUSES:
                    return last
            else:
                last = f"{r.status_code} {r.text[:300]}"
            if time.monotonic() >= deadline:
                raise AssertionError(f"order {order_id} not final within {timeout}s; last seen: {last}")
            time.sleep(0.02)

    def credits(self, username: str) -> int | None:
        """The user's balance, or None for a user the payment service never saw."""
        r = self.get(f"/api/users/{requests.utils.quote(username, safe='')}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"GET user {username}: {r.status_code} {r.text}"
        return r.json()["credits"]

    def stock(self) -> int:
        r = self.get("/api/inventory")
        assert r.status_code == 200, r.text
        items = {i["product"]: i["stock"] for i in r.json()}
        return items["late_token"]

    def all_transactions(self) -> list[dict]:
        r = self.get("/api/all-transaction")
        assert r.status_code == 200, r.text
        return r.json()

    def list_orders(self, limit: int = 100, **filters: str) -> list[dict]:
        """Every order /api/orders lists, following next_cursor to the end."""
        out: list[dict] = []
        cursor = None
        for _ in range(10_000):
            params: dict[str, Any] = {"limit": limit, **filters}
            if cursor:
                params["cursor"] = cursor
            r = self.get("/api/orders", params=params)
            assert r.status_code == 200, f"GET /api/orders {params}: {r.status_code} {r.text}"
            page = r.json()
            out.extend(page["orders"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out
        raise AssertionError("/api/orders never ended its pagination")

    def wait_until(self, what: str, probe, expected, timeout: float = 3.0):
        """Polls `probe()` until it returns `expected` (read models may lag a commit)."""
        deadline = time.monotonic() + timeout
        while True:
            got = probe()
            if got == expected or time.monotonic() >= deadline:
                assert got == expected, f"{what}: expected {expected!r}, got {got!r} (after {timeout}s)"
                return got
            time.sleep(0.02)


class MarketplaceFactory:
    """Starts instances on fresh resources, and cleans all of them up at `close()`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.instances: list[Marketplace] = []
        self.vhosts: list[str] = []
        self.databases: list[str] = []
        self.dirs: list[Path] = []

    def start(
        self,
        name: str,
        env: dict[str, str] | None = None,
        postgres: bool = False,
        reuse: Marketplace | None = None,
        split: bool = False,
    ) -> Marketplace:
        """A new instance; with `reuse`, on the same vhost, data dir and database (a restart)."""
        if reuse is not None:
            vhost, data_dir, database_url = reuse.vhost, reuse.data_dir, reuse.database_url
            env = {**reuse.extra_env, **(env or {})}
        else:
            vhost = unique("mkt-test").replace("-", "_")
            create_vhost(vhost)
            self.vhosts.append(vhost)
            root = Path(tempfile.mkdtemp(prefix=f"mkt-{name}-"))
            self.dirs.append(root)
            data_dir = root / "data"
            database_url = None
            if postgres:
                db = unique("mkt_test").replace("-", "_")
                database_url = create_database(db)
                self.databases.append(db)
        m = Marketplace(
            name=name,
            log_path=self.log_dir / f"{name}.log",
            vhost=vhost,
            data_dir=data_dir,
            database_url=database_url,
            env=env,
            split=split,
        )
        if reuse is not None:
            m.placed = list(reuse.placed)
        self.instances.append(m)
        m.start()
        return m

    def close(self) -> list[str]:
        """Stops every instance still running; returns a complaint per unclean exit."""
        problems = []
        for m in self.instances:
            if not m.procs:
                continue
            code = m.stop()
            if code != 0:
                problems.append(f"{m.name} exited with {m.exit_codes} after SIGTERM\n{m.log_tail(40)}")
        for v in self.vhosts:
            try:
                delete_vhost(v)
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                problems.append(f"deleting vhost {v}: {e}")
        for db in self.databases:
            try:
                drop_database(db)
            except Exception as e:  # noqa: BLE001
                problems.append(f"dropping database {db}: {e}")
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.instances.clear()
        self.vhosts.clear()
        self.databases.clear()
        self.dirs.clear()
        return problems


def timeline_steps(order: dict, event: str | None = None) -> list[str]:
    """The steps of an order's timeline, in order, optionally only those with `event`."""
    return [e["step"] for e in order["timeline"] if event is None or e["event"] == event]


def first_sent_order(order: dict, steps: set[str]) -> list[str]:
    """Each of `steps` once, in the order the saga first sent it."""
    seen: list[str] = []
    for e in order["timeline"]:
        if e["step"] in steps and e["event"] == "sent" and e["step"] not in seen:
            seen.append(e["step"])
    return seen


COMPENSATIONS = {"delivery.cancel", "inventory.release", "payment.refund", "order.reject"}
FORWARD = ["order.create", "payment.charge", "inventory.reserve", "delivery.schedule", "order.complete"]
