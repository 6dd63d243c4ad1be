#!/usr/bin/env bash
# Sweep `marketplace loadgen` over several open-loop rates against a running marketplace,
# one JSON report per rate appended to a JSONL file (for benches/plot.py).
#
#   benches/sweep.sh OUT.jsonl RATE...
#   LABEL="sqlite all-in-one" benches/sweep.sh /tmp/sqlite.jsonl 50 100 200 400
#
# Environment:
#   URL       the marketplace                      [default: http://127.0.0.1:8000]
#   DURATION  posting time of each run             [default: 10s]
#   BIN       the marketplace binary               [default: <repo>/target/release/marketplace]
#   PAUSE     seconds of rest between runs         [default: 3]
#   LABEL     "label" field added to each line     [default: run]
#
# Plain purchases only (--mix none). The marketplace needs enough stock for the whole
# sweep (loadgen warns when it does not), or later runs end INSUFFICIENT_INVENTORY.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
URL="${URL:-http://127.0.0.1:8000}"
DURATION="${DURATION:-10s}"
BIN="${BIN:-$ROOT/target/release/marketplace}"
PAUSE="${PAUSE:-3}"
LABEL="${LABEL:-run}"

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
    usage >&2
    exit 2
fi
OUT="$1"
shift
for rate in "$@"; do
    if ! [[ "$rate" =~ ^[0-9]+([.][0-9]+)?$ ]] || [[ "$rate" =~ ^0+([.]0+)?$ ]]; then
        echo "sweep.sh: rate '$rate' is not a positive number" >&2
        exit 2
    fi
done
if ! [[ "$PAUSE" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "sweep.sh: PAUSE '$PAUSE' is not a number of seconds" >&2
    exit 2
fi
if [[ ! -x "$BIN" ]]; then
    echo "sweep.sh: no executable at $BIN (cargo build --release, or set BIN)" >&2
    exit 1
fi
command -v python3 >/dev/null || { echo "sweep.sh: python3 is needed" >&2; exit 1; }

# Reads a report on stdin, appends it to argv[1] as one line with "label" first, and prints
# the one-line summary.
APPEND="$(cat <<'PY'
import json, os, sys

r = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"label": os.environ["LABEL"], **r}, separators=(",", ":")) + "\n")

def num(v, fmt):
    return "-" if v is None else format(v, fmt)

lat = r.get("latency_ms") or {}
done = num(r.get("completed_per_s"), ".1f")
p50, p99 = num(lat.get("p50"), ".0f"), num(lat.get("p99"), ".0f")
statuses = " ".join(f"{k}={v}" for k, v in sorted((r.get("statuses") or {}).items()))
extra = "".join(f" {k}={r[k]}" for k in ("not_final", "errors", "refused", "skipped") if r.get(k))
rate = os.environ["RATE"]
print(f"rate {rate:>6}/s  completed {done:>7}/s  p50 {p50:>5} ms  p99 {p99:>5} ms  "
      f"{statuses or 'no final orders'}{extra}")
PY
)"

echo "sweep.sh: label '$LABEL', $# rate(s) of $DURATION against $URL, into $OUT" >&2
n=0
for rate in "$@"; do
    if (( n > 0 )); then sleep "$PAUSE"; fi
    n=$((n + 1))
    status=0
    report="$("$BIN" loadgen --url "$URL" --rate "$rate" --duration "$DURATION" \
        --mix none --json --no-progress)" || status=$?
    if (( status != 0 )); then
        echo "sweep.sh: loadgen failed at rate $rate (exit $status); runs so far are in $OUT" >&2
        exit 1
    fi
    # The report is pretty-printed: compact it to one line with the label, append it, and
    # print a summary.
    printf '%s' "$report" | LABEL="$LABEL" RATE="$rate" python3 -c "$APPEND" "$OUT"
done
