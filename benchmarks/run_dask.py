"""lmm() through Dask against lmm() in memory on the same Parquet data: time and peak memory (issue 12).

    python benchmarks/run_dask.py                      # 2x10^7 rows, 10^6 groups (needs the dask extra)
    python benchmarks/run_dask.py --rows 2000000 --groups 100000   # a quicker run

The data (``y ~ x1 + x2 + x3 + (1 | g)``: three covariates beside the intercept, standard normal; group labels
drawn at random, so about rows/groups rows per group; beta = (1, 0.5, -0.3, 0.2), sigma_s = 0.8, sigma = 1;
seeded) are written chunk by chunk as Parquet files to a temporary folder, never held in memory whole. Each route
then runs in a fresh process that starts from the files:

- **Dask**: ``lmm(formula, dd.read_parquet(folder))``: one pass of per-partition sums, a tree of merges, the
  in-memory optimiser (Dask's default threaded scheduler, one thread per core);
- **in memory**: ``lmm(formula, pd.read_parquet(folder))``.

Time is the wall clock of the fit, reading the files included for both routes (Dask reads them inside the fit;
the in-memory route's ``read_parquet`` is timed with it). Peak memory is how far the process's peak resident set
size (Linux ``VmHWM``) rises above what it was after the imports. One run each (the large size leaves no room for
repeats). Writes ``dask.csv``, ``dask.md`` and ``dask.png`` into ``_build/benchmarks/`` (scratch, not tracked), or with
``--update`` into ``benchmarks/results/``, the tracked files the README and notebook 13 show (then run
``tools/build_series.py`` and re-execute notebook 13, whose stored output nbval compares with them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"  # tracked: written only with --update
SCRATCH = ROOT / "_build" / "benchmarks"
FORMULA = "y ~ x1 + x2 + x3 + (1 | g)"


def _vmhwm() -> float:
    """Peak resident set size of this process, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so the peak counts from here."""
    Path("/proc/self/clear_refs").write_text("5")


def write_data(folder: Path, rows: int, groups: int, partitions: int, seed: int = 12) -> None:
    """Write the data set as ``partitions`` Parquet files, one chunk of rows at a time."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 0.8, groups)
    beta = np.array([1.0, 0.5, -0.3, 0.2])
    for i, chunk in enumerate(np.array_split(np.arange(rows), partitions)):
        m = chunk.size
        g = rng.integers(0, groups, m)
        x = rng.normal(size=(m, 3))
        y = beta[0] + x @ beta[1:] + u[g] + rng.normal(0.0, 1.0, m)
        pd.DataFrame({"y": y, "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "g": g}).to_parquet(
            folder / f"part-{i:04d}.parquet", index=False)


def child(route: str, folder: str) -> None:
    """Fit one route in this (fresh) process and print time, peak memory and the fit's numbers as JSON."""
    import lmm_helpers as lh

    if route == "dask":
        import dask.dataframe as dd

        dd.read_parquet(folder)  # import and warm Parquet machinery before the peak is reset
    _reset_hwm()
    base = _vmhwm()
    t0 = time.perf_counter()
    if route == "dask":
        fit = lh.lmm(FORMULA, dd.read_parquet(folder))
    else:
        fit = lh.lmm(FORMULA, pd.read_parquet(folder))
    seconds = time.perf_counter() - t0
    print(json.dumps({"route": route, "seconds": seconds, "peak_mb": _vmhwm() - base, "loglik": fit.loglik,
                      "beta": list(map(float, fit.beta)), "sigma": fit.sigma,
                      "sigma_s": float(fit.varcorr.sdcor[0])}))


def run(route: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", route, str(folder)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{route} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--groups", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=40)
    ap.add_argument("--update", action="store_true", help="write the tracked results in benchmarks/results/")
    ap.add_argument("--child", nargs=2, metavar=("ROUTE", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    out = RESULTS if args.update else SCRATCH
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_data(folder, args.rows, args.groups, args.partitions)
        print(f"wrote {args.rows:,} rows in {args.partitions} Parquet files in {time.perf_counter() - t0:.1f} s",
              flush=True)
        results = [run("dask", folder), run("memory", folder)]
    dask_fit, mem_fit = results
    rel = abs(dask_fit["loglik"] / mem_fit["loglik"] - 1.0)
    table = pd.DataFrame({
        "route": ["Dask (Parquet partitions, one pass of sums)", "in memory (pandas DataFrame)"],
        "rows": args.rows, "groups": args.groups, "partitions": [args.partitions, 1],
        "seconds": [r["seconds"] for r in results], "peak_mb": [r["peak_mb"] for r in results],
        "loglik": [r["loglik"] for r in results],
    })
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "dask.csv", index=False)
    md = ["| route | rows | groups | time (s) | peak memory (MB) |", "|---|---:|---:|---:|---:|"]
    for r in table.itertuples():
        md.append(f"| {r.route} | {r.rows:,} | {r.groups:,} | {r.seconds:.1f} | {r.peak_mb:,.0f} |")
    md.append("")
    md.append(f"`{FORMULA}` by ML on this machine ({os.cpu_count()} cpus, load average {load_at_start:.2f} at the "
              f"start), one run each; log-likelihoods equal to {rel:.0e} relative.")
    (out / "dask.md").write_text("\n".join(md) + "\n")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(ROOT))
    from lmm_helpers.plotting import use_style

    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = ["Dask", "in memory"]
    axes[0].bar(names, table.seconds, color=["C0", "C1"])
    axes[0].set(ylabel="seconds", title="Time of the fit (reading included)")
    axes[1].bar(names, table.peak_mb / 1024, color=["C0", "C1"])
    axes[1].axhline(1.5, color="k", ls="--", lw=1, label="1.5 GB")
    axes[1].set(ylabel="GB", title="Peak memory above the imports")
    axes[1].legend()
    fig.suptitle(f"{args.rows:,} rows, {args.groups:,} groups, {FORMULA}")
    fig.tight_layout()
    fig.savefig(out / "dask.png", dpi=110)
    print((out / "dask.md").read_text())


if __name__ == "__main__":
    main()
