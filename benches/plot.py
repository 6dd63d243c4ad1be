#!/usr/bin/env python3
"""Latency against throughput, from the JSONL files benches/sweep.sh writes.

    python3 benches/plot.py OUT.png FILE.jsonl...
    python3 benches/plot.py --note "8 cores, RabbitMQ on another host" OUT.png a.jsonl b.jsonl

One curve per "label" (several labels may share a file, and a label may span files):
x = completed orders/s, y = POST→final latency in ms on a log scale, p50 solid and p99
dashed, points in the order of the offered rate. Runs without a display (Agg backend).
Needs matplotlib: pip install -r benches/requirements.txt
"""

import json
import sys

NOTE = "2 cores shared by RabbitMQ, the marketplace and the load generator"
USAGE = "usage: python3 benches/plot.py [--note TEXT] OUT.png FILE.jsonl..."


def load(paths):
    """{label: [report, ...]} in the order labels first appear, each sorted by offered load."""
    runs = {}
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"plot.py: {path}:{n}: not a JSON line ({e})")
                runs.setdefault(r.get("label", "run"), []).append(r)
    for reports in runs.values():
        reports.sort(key=lambda r: (r.get("params") or {}).get("rate")
                     or (r.get("params") or {}).get("concurrency") or 0)
    return runs


def points(reports, key):
    """(completed/s, latency) pairs of the reports that have both; warns about the others."""
    xy = []
    for r in reports:
        x, y = r.get("completed_per_s"), (r.get("latency_ms") or {}).get(key)
        if x is None or not y:
            what = "completed_per_s" if x is None else f"latency_ms.{key}"
            print(f"plot.py: {r.get('label', 'run')} run {r.get('run_id')}: no {what}, "
                  f"left out of {key}", file=sys.stderr)
        else:
            xy.append((x, y))
    return xy


def main(argv):
    note = NOTE
    if len(argv) >= 2 and argv[0] == "--note":
        note, argv = argv[1], argv[2:]
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        import matplotlib
    except ImportError:
        print("plot.py needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator

    out, paths = argv[0], argv[1:]
    try:
        runs = load(paths)
    except OSError as e:
        print(f"plot.py: {e}", file=sys.stderr)
        return 1
    if not runs:
        print("plot.py: no runs in " + ", ".join(paths), file=sys.stderr)
        return 1

    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, (label, reports) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        for key, style in (("p50", "-"), ("p99", "--")):
            xy = points(reports, key)
            if xy:
                ax.plot(*zip(*xy), style, marker="o", color=color, markersize=5)
        handles.append(Line2D([], [], color=color, marker="o", label=label))
    handles += [
        Line2D([], [], color="black", linestyle="-", label="p50"),
        Line2D([], [], color="black", linestyle="--", label="p99"),
    ]

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(left=0)
    ax.set_xlabel("completed orders/s")
    ax.set_ylabel("POST → final latency (ms, log scale)")
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", alpha=0.15)
    fig.suptitle("Latency against throughput", fontsize=14, fontweight="bold")
    ax.set_title(note, fontsize=10, color="dimgray")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
              frameon=False)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"plot.py: wrote {out} ({', '.join(f'{k}: {len(v)} runs' for k, v in runs.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
