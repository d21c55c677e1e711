"""Time the whole series and measure its memory: every notebook run top to bottom in a fresh kernel.

The series' targets (issues 2 and 4): all notebooks together execute in under 60 s, and no notebook's kernel
needs more than 1.5 GB (Binder gives 1-2 GB). Run from the repository root:

    .venv/bin/python benchmarks/run_series.py             # -> _build/benchmarks/ (scratch, not tracked)
    .venv/bin/python benchmarks/run_series.py --update    # -> benchmarks/results/, the tracked results

Each notebook is executed in memory (the files are not rewritten) by nbclient in its own child process, so
that the child's ``RUSAGE_CHILDREN`` peak resident set size is that notebook's kernel alone. Wall time
includes starting the kernel, as a student who presses *Restart Kernel and Run All* waits for it too.
Writes ``series.csv``, ``series.md`` and ``series.png``. Only ``--update`` replaces the tracked files that the README
shows (then run ``tools/build_series.py``); without it they are left alone.

The budget is a time on one machine, and machines differ (the same notebooks ran more than twice as slowly on
the 2-core machine of a later session as on the one the budget was set on). So the script also times a *yardstick*: the
notebooks 00-10 and the helper exactly as they were at ``YARDSTICK_COMMIT``, when the budget was set and their
total recorded in that commit's ``benchmarks/results/series.csv`` (extracted by ``git archive`` into a scratch
folder and imported from there, so today's code does not change them). The budget on the machine at hand is the
60 s scaled by (yardstick here) / (yardstick recorded); time it on a quiet machine, as the series itself.
``--no-yardstick`` skips it (then the 60 s stands). The yardstick needs the git history (a clone, not an archive).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"  # tracked: written only with --update
SCRATCH = ROOT / "_build" / "benchmarks"  # the default output (_build/ is ignored by git)
TIME_BUDGET_S = 60.0
MEMORY_BUDGET_MB = 1536.0
# The commit whose tracked series.csv recorded the yardstick's time on the machine the budget was set on.
YARDSTICK_COMMIT = "f45690e5f3b4f710a19575d20ba5aef6c3469ac2"

# Runs in a child process: execute one notebook, report wall time and the kernel's peak memory as JSON.
_CHILD = r"""
import json, resource, sys, time
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
start = time.perf_counter()
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
wall = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall_s": wall, "kernel_peak_mb": peak_kib / 1024}))
"""


def run_one(path: Path, pythonpath: Path | None = None) -> dict:
    """Execute one notebook in a fresh kernel; return its wall time and the kernel's peak memory.

    With ``pythonpath``, the kernel imports ``lmm_helpers`` from there (ahead of the installed one).
    """
    env = dict(os.environ, PYTHONPATH=str(pythonpath)) if pythonpath else None
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(path.parent)], capture_output=True,
                          text=True, check=False, cwd=path.parent, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def yardstick() -> tuple[float, float, int]:
    """Time the notebooks of ``YARDSTICK_COMMIT`` here; return (seconds here, seconds recorded there, notebooks)."""
    recorded = subprocess.run(["git", "show", f"{YARDSTICK_COMMIT}:benchmarks/results/series.csv"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    names = {r["notebook"]: float(r["wall_s"]) for r in csv.DictReader(recorded.splitlines())}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", YARDSTICK_COMMIT, "notebooks", "lmm_helpers", "data",
                                  "benchmarks"],
                                 cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        here = 0.0
        for name in names:
            here += run_one(Path(tmp) / "notebooks" / name, pythonpath=Path(tmp))["wall_s"]
    return here, sum(names.values()), len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--update", action="store_true",
                       help=f"write the tracked results in {RESULTS.relative_to(ROOT)}/")
    where.add_argument("--out", type=Path, default=SCRATCH,
                       help=f"output folder (default: {SCRATCH.relative_to(ROOT)}/, not tracked)")
    parser.add_argument("--no-yardstick", action="store_true",
                        help=f"do not time the yardstick (the notebooks of {YARDSTICK_COMMIT[:7]}); the budget "
                             f"stays {TIME_BUDGET_S:.0f} s")
    args = parser.parse_args(argv)
    out = RESULTS if args.update else args.out
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    rows = []
    for path in paths:
        r = run_one(path.resolve())
        rows.append({"notebook": path.name, "wall_s": r["wall_s"], "kernel_peak_mb": r["kernel_peak_mb"]})
        print(f"{path.name:42s} {r['wall_s']:6.2f} s {r['kernel_peak_mb']:7.0f} MB", flush=True)
    total = sum(r["wall_s"] for r in rows)
    peak = max(r["kernel_peak_mb"] for r in rows)
    budget, note = TIME_BUDGET_S, f"Budget {TIME_BUDGET_S:.0f} s as set (no yardstick timed)."
    if not args.no_yardstick:
        here, there, count = yardstick()
        budget = TIME_BUDGET_S * here / there
        note = (f"Budget: {TIME_BUDGET_S:.0f} s on the machine it was set on, where the yardstick (notebooks 00-"
                f"{count - 1:02d} and the helper as at commit {YARDSTICK_COMMIT[:7]}) took {there:.1f} s; here it took "
                f"{here:.1f} s, so the budget here is {TIME_BUDGET_S:.0f} s x {here:.1f} / {there:.1f} = "
                f"{budget:.0f} s.")
        print(f"yardstick {here:.1f} s here, {there:.1f} s recorded: budget here {budget:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "series.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["notebook", "wall_s", "kernel_peak_mb"])
        w.writeheader()
        w.writerows({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# The series: run time and memory, each notebook in a fresh kernel",
        "",
        "Made by `.venv/bin/python benchmarks/run_series.py --update`. Wall time includes starting the kernel;",
        "memory is the peak resident set size of that notebook's kernel.",
        "",
        "| notebook | wall time (s) | kernel peak memory (MB) |",
        "|---|---:|---:|",
        *[f"| {r['notebook']} | {r['wall_s']:.1f} | {r['kernel_peak_mb']:.0f} |" for r in rows],
        f"| **all {len(rows)}** | **{total:.1f}** (budget {budget:.0f}) | **{peak:.0f}** at most "
        f"(budget {MEMORY_BUDGET_MB:.0f}) |",
        "",
        note,
        "",
        f"Machine: cpus {os.cpu_count()}, python {platform.python_version()}, load average at the end {load:.2f}.",
    ]
    (out / "series.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(rows, out / "series.png", budget)
    ok = total <= budget and peak <= MEMORY_BUDGET_MB
    print(f"total {total:.1f} s (budget {budget:.0f}), peak {peak:.0f} MB (budget {MEMORY_BUDGET_MB:.0f}):"
          f" {'within budget' if ok else 'OVER BUDGET'}; wrote series.csv, series.md and series.png in {out}")
    return 0 if ok else 1


def _plot(rows: list[dict], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["notebook"].split("_")[0] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    cumulative = [sum(r["wall_s"] for r in rows[: k + 1]) for k in range(len(rows))]
    a1.bar(names, [r["wall_s"] for r in rows], color="#1f77b4", label="this notebook")
    a1.plot(names, cumulative, "o-", color="#d62728", label="series so far")
    a1.axhline(budget, ls="--", color="0.3", label=f"budget here {budget:.0f} s")
    a1.set_xlabel("notebook")
    a1.set_ylabel("wall time (s)")
    a1.set_title("Run time, fresh kernel each")
    a1.legend(fontsize=8)
    a2.bar(names, [r["kernel_peak_mb"] for r in rows], color="#2ca02c", label="kernel peak")
    a2.axhline(MEMORY_BUDGET_MB, ls="--", color="0.3", label=f"budget {MEMORY_BUDGET_MB:.0f} MB")
    a2.set_xlabel("notebook")
    a2.set_ylabel("peak memory (MB)")
    a2.set_title("Memory per notebook")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
