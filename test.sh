#!/usr/bin/env bash
# The one command that runs every test: builds the release binary, runs the Rust tests,
# then the pytest suites against fresh marketplace processes (tests-py/, and deploy/tests/
# when it exists). Starts RabbitMQ and PostgreSQL when they are down. Works from any cwd.
#
# Every step runs even when an earlier one failed (except that nothing runs against a
# binary that failed to build), and a summary closes the output. Exit status: 0 only when
# every step passed.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
ROOT=$PWD
VENV="$ROOT/.venv"
STARTED=$(date +%s)

declare -a SUMMARY=()
FAILED=0

# run_step NAME COMMAND...: runs the command, records ok/FAILED and its duration.
run_step() {
    local name=$1
    shift
    local t0 rc
    t0=$(date +%s)
    echo
    echo "==> $name: $*"
    if "$@"; then rc=0; else rc=$?; fi
    local took=$(($(date +%s) - t0))
    if [[ $rc -eq 0 ]]; then
        SUMMARY+=("ok       $name (${took}s)")
    else
        SUMMARY+=("FAILED   $name (exit $rc, ${took}s)")
        FAILED=1
    fi
    return $rc
}

skip_step() {
    SUMMARY+=("skipped  $1 ($2)")
    FAILED=1
}

ensure_rabbitmq() {
    if rabbitmqctl -q status >/dev/null 2>&1; then
        return 0
    fi
    echo "RabbitMQ is down: starting it"
    rabbitmq-server -detached
    timeout 120 rabbitmqctl -q await_startup
}

ensure_postgres() {
    if pg_isready -q -h 127.0.0.1; then
        return 0
    fi
    echo "PostgreSQL is down: starting it"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 && return 0
        sleep 0.5
    done
    echo "PostgreSQL did not become ready" >&2
    return 1
}

# Headless Chromium renders /docs in tests-py/test_docs_browser.py and drives the dashboard
# in tests-py/test_dashboard_browser.py. Installed when missing (as root, with apt); the
# browser tests then run with REQUIRE_BROWSER=1, so without a browser they fail rather than
# skip: a run that drove no browser does not pass.
ensure_chromium() {
    command -v chromium >/dev/null && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get install -y -q chromium >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
            || echo "could not install chromium" >&2
    fi
    command -v chromium >/dev/null || {
        echo "no chromium: the browser tests will fail (install Debian's chromium)" >&2
        return 1
    }
}

cargo_build() {
    if [[ -f Cargo.lock ]]; then
        cargo build --release --locked
    else
        cargo build --release
    fi
}

setup_venv() {
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" || return 1
    "$VENV/bin/pip" install -q --disable-pip-version-check -r tests-py/requirements.txt || return 1
    if [[ -f deploy/tests/requirements.txt ]]; then
        "$VENV/bin/pip" install -q --disable-pip-version-check -r deploy/tests/requirements.txt
    fi
}

# pytest_suite NAME DIR: runs one pytest suite and keeps its closing line for the summary.
declare -a PYTEST_LINES=()
pytest_suite() {
    local dir=$1 log rc
    log=$(mktemp)
    # pipefail: the pipeline's status is pytest's.
    if "$VENV/bin/python" -m pytest "$dir" 2>&1 | tee "$log"; then rc=0; else rc=$?; fi
    PYTEST_LINES+=("$dir: $(grep -E '^=+ .* in [0-9.]+s' "$log" | tail -n1 | tr -d '=' | sed 's/^ *//;s/ *$//')")
    rm -f "$log"
    if [[ $rc -eq 5 ]]; then
        echo "pytest collected no test in $dir" >&2
    fi
    return "$rc"
}

services_ok=1
run_step "start RabbitMQ if down" ensure_rabbitmq || services_ok=0
run_step "start PostgreSQL if down" ensure_postgres || services_ok=0

built=0
run_step "cargo build --release" cargo_build && built=1 || true
run_step "cargo test --workspace" cargo test --workspace --no-fail-fast || true
# The house rules: rustfmt, and clippy with the workspace's lints ([workspace.lints]).
run_step "cargo fmt --check" cargo fmt --all --check || true
run_step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings || true

venv_ok=0
run_step "python venv (.venv)" setup_venv && venv_ok=1 || true
run_step "chromium for the browser tests" ensure_chromium || true

export MARKETPLACE_BIN="$ROOT/target/release/marketplace"
export REQUIRE_BROWSER=1
if [[ $built -eq 1 && $venv_ok -eq 1 ]]; then
    run_step "pytest tests-py" pytest_suite tests-py || true
    if [[ -d deploy/tests ]]; then
        run_step "pytest deploy/tests" pytest_suite deploy/tests || true
    fi
else
    skip_step "pytest tests-py" "needs the build and the venv"
    [[ -d deploy/tests ]] && skip_step "pytest deploy/tests" "needs the build and the venv"
fi
[[ $services_ok -eq 1 ]] || echo "warning: RabbitMQ or PostgreSQL could not be started" >&2

echo
echo "==================== test.sh summary ===================="
for line in "${SUMMARY[@]}"; do
    echo "  $line"
done
for line in "${PYTEST_LINES[@]+"${PYTEST_LINES[@]}"}"; do
    echo "  pytest $line"
done
echo "  total time: $(($(date +%s) - STARTED))s"
if [[ $FAILED -eq 0 ]]; then
    echo "  result: ALL PASSED"
else
    echo "  result: FAILED"
fi
exit "$FAILED"
