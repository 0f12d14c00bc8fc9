"""Tables and the benchmark page, written from a results file only.

``bench/results.md`` is the plain table; ``docs/benchmarks.md`` embeds the chart, the issue's
"Must show" ratios with PASS/FAIL (:mod:`bench.goals`), the table, the machine, versions and
command. Nothing here is typed in by hand: rerun ``make bench`` (or ``python -m bench.report
bench/results.json``) to refresh it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.goals import TIMES, evaluate
from bench.workloads import BY_ID, LABELS, WORKLOADS

Data = Mapping[str, Any]


def _number(value: float | None, *, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def baseline_ratio(
    row: Mapping[str, Any], rows: Mapping[tuple[str, str], Mapping[str, Any]]
) -> float | None:
    """This row's keys/s over its workload baseline's (None when either is missing)."""
    workload = BY_ID.get(row["workload"])
    if workload is None or workload.baseline is None or not row.get("available"):
        return None
    base = rows.get(workload.baseline)
    if base is None or not base.get("available") or not base.get("keys_per_second"):
        return None
    return float(row["keys_per_second"]) / float(base["keys_per_second"])


def results_table(results: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = {(r["workload"], r["contender"]): r for r in results}
    lines = [
        "| workload | contender | keys/s | p50 µs | p99 µs | keys/s vs baseline | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        workload = BY_ID[r["workload"]].label if r["workload"] in BY_ID else r["workload"]
        ratio = baseline_ratio(r, rows)
        extra = []
        if r.get("queries") is not None:
            q = r["queries"]
            extra.append(f"{q:g} {'query' if q == 1 else 'queries'} per run")
        if r["workload"] == "cold_herd_500" and r.get("wall_ms") is not None:
            extra.append(f"{r['wall_ms']:g} ms for all")
        note = "; ".join([*extra, r.get("note") or ""]).strip("; ")
        keys = "n/a" if r.get("keys_per_second") is None else f"{r['keys_per_second']:,}"
        lines.append(
            f"| {workload} | {r.get('label') or LABELS[r['contender']]} | {keys} | "
            f"{_number(r.get('p50_us'))} | {_number(r.get('p99_us'))} | "
            f"{'' if ratio is None else f'{ratio:.2f}{TIMES}'} | {note.replace('|', '/')} |"
        )
    return lines


def summary_line(data: Data) -> str:
    meta = data["meta"]
    machine = meta["machine"]
    s = meta["settings"]
    return (
        f"Run `{meta['command']}` on {meta['date']}: "
        f"{machine['cores']} cores, {machine['cpu_model']}, "
        f"{machine['python']}, event loop {s['event_loop']}; {meta['servers']}. "
        f"Median of {s['repeat']} interleaved rounds of {s['ops']} operations."
    )


def write_results_md(data: Data, path: Path) -> None:
    lines = [summary_line(data), "", *results_table(data["results"])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def goals_table(results: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| goal | measured | target | result | from |", "|---|---:|---:|:---:|---|"]
    for check in evaluate(results):
        goal = check.goal
        if check.value is None:
            measured = "n/a"
        elif goal.against is None:
            measured = f"{check.value:g}"
        else:
            measured = f"{check.value:.2f}{TIMES}"
        target = f"{goal.op} {goal.target:g}{'' if goal.against is None else TIMES}"
        status = f"**{check.status}**" if check.status == "FAIL" else check.status
        if check.status == "N/A":
            status += f" ({check.detail})"
        lines.append(f"| {goal.text} | {measured} | {target} | {status} | {goal.source} |")
    return lines


def machine_lines(data: Data) -> list[str]:
    meta = data["meta"]
    m = meta["machine"]
    v = meta["versions"]
    installed = ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
    absent = ", ".join(k for k, val in v.items() if val is None)
    lines = [
        f"- CPU: {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} usable); "
        f"{m['platform']}",
        f"- Load average at start {m['load_average_at_start']}, at end "
        f"{meta.get('load_average_at_end')} (the machine is shared: ratios within the run "
        "are what count, not absolute figures)",
        f"- {m['python']}; redis-py reply parser: {m['redis_parser']}",
        f"- Servers: {meta['servers']}",
        f"- Versions: {installed}",
    ]
    if absent:
        lines.append(f"- Not installed: {absent}")
    return lines


def method_lines(data: Data) -> list[str]:
    s = data["meta"]["settings"]
    http = data["meta"].get("http") or {}
    lines = [
        "- One process, one data set: every contender reads the same "
        f"{s['keys']:,} seeded scores from the same Redis and PostgreSQL; the hit workloads "
        f"cycle over {s['hot_keys']:,} keys already cached, the miss workloads over keys "
        "never read before in the run, made cold (outside the timing) before each round.",
        "- Contenders of a workload run in interleaved rounds (A B C, then B C A, ...), "
        "each after an untimed warm-up; keys/s is the median over rounds, p50/p99 are over "
        "the calls of all rounds. Ratios within one run are what count.",
        f"- Event loop: {s['event_loop']} for every async contender (one loop, one process); "
        f"the sync twin runs on {s['sync_twin_loop']}.",
        "- The floor is bare redis-py (its defaults: no socket timeout) plus orjson decoding, "
        "with no validation and no record type; peers return plain dicts, securecache "
        "returns validated records (Redis is untrusted).",
        f'- "{s["concurrency"]} tasks" runs that many tasks at once, each calling one key '
        f"after another; get_many reads {s['batch']} keys per call (ops/10 calls per round).",
        f"- The herd: {s['herd']} gets of one cold key at the same moment; PostgreSQL "
        "statements counted by the library's `securecache.db.queries` counter (an in-memory "
        "OpenTelemetry reader) and by hand for the naive cache-aside.",
        "- Near cache: `Settings(local_cache_size=10000, local_cache_ttl_seconds=1.0)`, "
        "filled before each round; compared with the floor's lone GET.",
    ]
    if http.get("tool"):
        lines.append(
            f"- HTTP: `{http.get('command')}` ({http.get('tool')}) against each server in "
            f"turn, after a warm-up, in {http.get('rounds', 1)} interleaved round(s) with a "
            "fresh server each time (each figure the median of its rounds); servers started "
            f"as {http.get('launch')}. Tracing: {http.get('tracing')}. wrk runs on the same "
            "machine as the server."
        )
    elif http.get("note"):
        lines.append(f"- HTTP: not measured in this run ({http['note']}).")
    return lines


def write_docs(data: Data, path: Path, chart_name: str) -> None:
    meta = data["meta"]
    results = data["results"]
    missing = [r for r in results if not r.get("available")]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/report.py from bench/results.json (`make bench`); "
        "do not edit by hand. -->",
        "",
        "securecache beside bare redis-py (the floor), a naive cache-aside, other Python "
        "caches and a constant-JSON HTTP endpoint, measured in one run on the same data. "
        "Generated by `make bench`; the figures below come from the results file of that run, "
        "and the ratios are computed from it. The raw figures are in "
        "[bench/results.json](../bench/results.json); `python -m bench.report` and "
        "`python -m bench.chart` redraw this page and the chart from that file, and "
        "`nox -s bench -- --help` lists the options of a run.",
        "",
        summary_line(data),
        "",
        f"![keys/s per workload and ratios to the baseline]({chart_name})",
        "",
        "## Must show (issue 10)",
        "",
        "Ratios of one run. PASS/FAIL against the issue's goals; N/A where a contender could "
        "not run here.",
        "",
        *goals_table(results),
        "",
        "## Results",
        "",
        "Baselines: the bare client for hits (the lone GET for near-cache hits), the naive "
        "cache-aside for misses, the constant-JSON endpoint for HTTP.",
        "",
        *results_table(results),
        "",
        "## Workloads",
        "",
        *[f"- **{w.label}**: {w.description}" for w in WORKLOADS],
        "",
        "## How it is measured",
        "",
        *method_lines(data),
        "",
        "## Machine, versions, command",
        "",
        *machine_lines(data),
        "",
        "```sh",
        meta["command"],
        "```",
        "",
    ]
    if missing:
        lines += ["## Not available in this run", ""]
        lines += [f"- {r['workload']} / {r['label']}: {r['note']}" for r in missing]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the tables and page from a results file.")
    parser.add_argument("results", type=Path, nargs="?", default=Path("bench/results.json"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text(encoding="utf-8"))
    write_results_md(data, args.results.with_suffix(".md"))
    write_docs(data, args.docs / "benchmarks.md", "benchmarks.svg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
