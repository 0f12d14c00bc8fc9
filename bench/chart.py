"""The benchmark chart (SVG), drawn from a results file with matplotlib.

Three panels: keys/s of every contender per workload (log scale); each contender's keys/s
over its workload's baseline (log scale, 1 = as fast as the baseline); and the issue's goals,
each as measured ratio over target, oriented so that 1 or more passes.

``python -m bench.chart bench/results.json docs/benchmarks.svg`` redraws it.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.goals import evaluate
from bench.report import baseline_ratio
from bench.workloads import LABELS, WORKLOADS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLORS: Final = {
    "floor": "#8c8c8c",
    "naive": "#8c8c8c",
    "constant": "#8c8c8c",
    "securecache": "#1f5fa8",
    "public_api": "#1f5fa8",
    "securecache_near": "#0b2f5c",
    "public_api_near": "#0b2f5c",
    "public_api_no_metrics": "#7aa6d8",
    "aiocache": "#e8871e",
    "cashews": "#3a9a3a",
    "cashews_client_side": "#9fd89f",
    "dogpile": "#c23b3b",
    "cachetools": "#8e6bbf",
}
LEGEND: Final = {
    "floor": "baseline: bare client / naive / constant app",
    "securecache": "securecache (public API for HTTP)",
    "securecache_near": "securecache near cache",
    "aiocache": LABELS["aiocache"],
    "cashews": LABELS["cashews"],
    "cashews_client_side": LABELS["cashews_client_side"],
    "dogpile": LABELS["dogpile"],
    "cachetools": LABELS["cachetools"],
}


def draw(data: Mapping[str, Any], path: Path) -> None:
    """Write the chart of ``data`` (a parsed results file) to ``path`` as SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Same input, same bytes: no date in the file, fixed ids, text kept as text.
    plt.rcParams["svg.hashsalt"] = "securecache-bench"
    plt.rcParams["svg.fonttype"] = "none"
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(12, 15), gridspec_kw={"height_ratios": [3, 3, 2.4]}
    )
    _bars(data["results"], top, middle)
    _goals(data["results"], bottom)
    meta = data.get("meta", {})
    machine = meta.get("machine", {})
    title = (
        f"securecache benchmarks ({machine.get('cores', '?')} cores, "
        f"{machine.get('python', '')}, {meta.get('date', '')})"
    )
    fig.suptitle(title + "\n" + textwrap.shorten(meta.get("command", ""), 140), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def _bars(results: Sequence[Mapping[str, Any]], top: Axes, middle: Axes) -> None:
    """Keys/s per workload and contender, and the same over the workload's baseline."""
    from matplotlib.patches import Patch

    rows = {(r["workload"], r["contender"]): r for r in results}
    workloads = [w for w in WORKLOADS if any((w.id, c) in rows for c in w.contenders)]
    width = 0.8 / max(len(w.contenders) for w in workloads)
    highest = 1.0
    for x, workload in enumerate(workloads):
        n = len(workload.contenders)
        for k, contender in enumerate(workload.contenders):
            pos = x - 0.4 + width * (k + 0.5) + (0.8 - width * n) / 2
            r = rows.get((workload.id, contender))
            color = COLORS[contender]
            if r is None or not r.get("available"):
                for axis in (top, middle):
                    axis.text(
                        pos,
                        0.02,
                        "n/a",
                        transform=axis.get_xaxis_transform(),
                        ha="center",
                        va="bottom",
                        fontsize=6,
                        rotation=90,
                        color="#666666",
                    )
                continue
            highest = max(highest, float(r["keys_per_second"]))
            top.bar(pos, r["keys_per_second"], width, color=color)
            ratio = baseline_ratio(r, rows)
            if ratio is not None:
                middle.bar(pos, ratio, width, color=color)
    labels = [w.label for w in workloads]
    for axis in (top, middle):
        axis.set_yscale("log")
        axis.set_xticks(range(len(workloads)), labels, rotation=30, ha="right", fontsize=8)
        axis.grid(axis="y", which="major", alpha=0.3)
    top.set_ylim(top=highest * 60)  # room for the legend above the bars
    top.set_ylabel("keys/s (requests/s for HTTP)")
    top.set_title("Throughput per workload (log scale)")
    middle.axhline(1.0, color="black", linewidth=0.8)
    middle.set_ylabel("keys/s / baseline's")
    middle.set_title(
        "Against each workload's baseline (bare client; naive cache-aside; constant endpoint)"
    )
    handles = [Patch(color=COLORS[c], label=text) for c, text in LEGEND.items()]
    top.legend(handles=handles, fontsize=7, loc="upper center", ncols=3)


def _goals(results: Sequence[Mapping[str, Any]], axis: Axes) -> None:
    """Each goal as the factor by which it is met (below 1: missed by that factor)."""
    checks = evaluate(results)
    scores = []
    colors = []
    for check in checks:
        value, target = check.value, check.goal.target
        if value is None or value <= 0 or target <= 0:
            scores.append(0.0)
            colors.append("#cccccc")
            continue
        scores.append(value / target if check.goal.op == ">=" else target / value)
        colors.append("#3a9a3a" if check.status == "PASS" else "#c23b3b")
    ypos = list(range(len(checks)))
    measured = [s for s in scores if s > 0] or [1.0]
    low, high = min(*measured, 1.0) / 3, max(*measured, 1.0) * 6
    drawn = [y for y, check in enumerate(checks) if check.value is not None]
    axis.barh(drawn, [scores[y] for y in drawn], color=[colors[y] for y in drawn])
    for y, (check, score) in enumerate(zip(checks, scores, strict=True)):
        if check.value is None:
            axis.text(low * 1.1, y, f"N/A: {check.detail}", va="center", fontsize=7)
        else:
            axis.text(score * 1.05, y, f"{check.status}  {check.detail}", va="center", fontsize=7)
    axis.set_xlim(low, high)
    axis.set_xscale("log")
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_yticks(ypos, [textwrap.fill(c.goal.text, 42) for c in checks], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("goal met by this factor (1 or more passes; N/A: not measured)")
    axis.set_title("Issue 10: must show")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the benchmark chart from a results file.")
    parser.add_argument("results", type=Path, nargs="?", default=Path("bench/results.json"))
    parser.add_argument("svg", type=Path, nargs="?", default=Path("docs/benchmarks.svg"))
    args = parser.parse_args(argv)
    draw(json.loads(args.results.read_text(encoding="utf-8")), args.svg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
