"""Benchmark fit_lmm against statsmodels MixedLM, mixedlm (PyPI, Rust) and lme4 (through Rscript).

Model: y ~ x1 + x2 + (1 | g), maximum likelihood, about 20 rows per group, on the same seeded generated data at
n = 10^3, 10^4, 10^5, 10^6. Every (peer, n) runs in its own fresh subprocess, which loads the data first and then
measures only the fit:

- time: best of k repeats (k up to 20, fewer when the repeats would add up to more than 10 s; at least one),
  wall clock, ``time.perf_counter`` in Python and ``Sys.time()`` (microsecond resolution) in R;
- peak memory: the rise of the process's peak resident set size (Linux ``VmHWM`` in ``/proc/self/status``) from
  just before the first fit to just after it; the same measure for every peer, R included;
- log-likelihood at the reported optimum (ML).

A peer that is not installed is reported as "missing"; statsmodels is skipped at sizes where its time, extrapolated
linearly from the size before, would exceed 60 s, and reported as "skipped (too slow)". Run from the repository root:

    .venv/bin/python benchmarks/run_benchmarks.py             # -> _build/benchmarks/ (scratch, not tracked)
    .venv/bin/python benchmarks/run_benchmarks.py --update    # -> benchmarks/results/, the tracked results

It writes benchmark.csv, benchmark.md and benchmark.png. Only ``--update`` replaces the tracked files that the README
and notebook 10 show (then run ``tools/build_series.py`` to refresh the README's table, and re-execute notebook 10,
whose stored output nbval compares with them); a run without it leaves them
alone, so trying the benchmark on another machine changes nothing in the repository.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = [10**3, 10**4, 10**5, 10**6]
ROWS_PER_GROUP = 20
BETA = np.array([1.0, 0.5, -0.3])
SIGMA, SIGMA_S = 1.0, 0.8
SEED = 20260425
MAX_REPEATS, REPEAT_BUDGET_S = 20, 10.0
SKIP_ABOVE_S = 60.0
PEERS = ["fit_lmm", "statsmodels", "mixedlm", "lme4"]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"  # tracked: written only with --update
SCRATCH = HERE.parent / "_build" / "benchmarks"  # the default output (_build/ is ignored by git)

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; n <- as.integer(args[2]); max_rep <- as.integer(args[3]); budget <- as.numeric(args[4])
suppressPackageStartupMessages(library(lme4))
rd <- function(f, what) { con <- file(file.path(dir, f), "rb"); on.exit(close(con)); readBin(con, what, n, size = if (what == "integer") 4L else 8L) }
dat <- data.frame(y = rd("y.bin", "double"), x1 = rd("x1.bin", "double"), x2 = rd("x2.bin", "double"),
                  g = factor(rd("g.bin", "integer")))
hwm <- function() { s <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE); as.numeric(gsub("[^0-9]", "", s)) * 1024 }
invisible(gc())
before <- hwm()
times <- c()
repeat {
  t0 <- Sys.time(); fit <- lmer(y ~ x1 + x2 + (1 | g), data = dat, REML = FALSE); t1 <- Sys.time()
  times <- c(times, as.numeric(difftime(t1, t0, units = "secs")))
  if (length(times) == 1) peak <- hwm() - before
  if (length(times) >= max_rep || sum(times) > budget) break
}
cat(jsonlite::toJSON(list(time = min(times), repeats = length(times), peak_bytes = peak,
                          loglik = as.numeric(logLik(fit))), digits = NA, auto_unbox = TRUE))
"""


# ------------------------------------------------------------------------------------------------- data
def make_data(n: int) -> dict[str, np.ndarray]:
    """The benchmark's data at size n: seeded, ``n // 20`` groups drawn at random (about 20 rows each)."""
    rng = np.random.default_rng([SEED, n])
    n_groups = n // ROWS_PER_GROUP
    g = rng.integers(0, n_groups, size=n).astype(np.int32)
    X = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    u = SIGMA_S * rng.standard_normal(n_groups)
    y = X @ BETA + u[g] + SIGMA * rng.standard_normal(n)
    return {"y": y, "X": X, "g": g}


def write_data(data: dict[str, np.ndarray], folder: Path) -> None:
    np.save(folder / "y.npy", data["y"])
    np.save(folder / "X.npy", data["X"])
    np.save(folder / "g.npy", data["g"])
    for name, arr in [("y", data["y"]), ("x1", data["X"][:, 1]), ("x2", data["X"][:, 2]), ("g", data["g"] + 1)]:
        np.ascontiguousarray(arr).tofile(folder / f"{name}.bin")  # raw little-endian doubles / int32 for R


# ----------------------------------------------------------------------------------------------- worker
def _hwm() -> int:
    """Peak resident set size of this process in bytes (Linux VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found")


def worker(peer: str, folder: Path) -> dict:
    """Run one peer on the data in ``folder`` and return time, repeats, peak memory rise and log-likelihood."""
    y, X, g = (np.load(folder / f"{k}.npy") for k in ("y", "X", "g"))
    if peer == "fit_lmm":
        from lmm_helpers import fit_lmm

        def fit():
            return fit_lmm(y, X, g, "ML").loglik
    elif peer == "statsmodels":
        import statsmodels.api as sm

        def fit():
            return float(sm.MixedLM(y, X, groups=g).fit(reml=False).llf)
    elif peer == "mixedlm":
        import pandas as pd
        from mixedlm import lmer

        df = pd.DataFrame({"y": y, "x1": X[:, 1], "x2": X[:, 2], "g": pd.Categorical(g)})

        def fit():
            return float(lmer("y ~ x1 + x2 + (1 | g)", df, REML=False).logLik().value)
    else:
        raise ValueError(f"peer must be one of {PEERS[:3]}, got {peer!r}")
    timing, loglik = _time_fits(fit)
    return {**timing, "loglik": loglik}


def _time_fits(fit) -> tuple[dict, object]:
    """Call ``fit()`` until MAX_REPEATS calls or REPEAT_BUDGET_S seconds: best time, repeats, the first call's
    peak memory rise, and the last call's result."""
    before = _hwm()
    times, peak, res = [], 0, None
    while True:
        t0 = time.perf_counter()
        res = fit()
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            peak = _hwm() - before
        if len(times) >= MAX_REPEATS or sum(times) > REPEAT_BUDGET_S:
            break
    return {"time": min(times), "repeats": len(times), "peak_bytes": peak}, res


# ----------------------------------------------------------------------------------------------- driver
def available(peer: str) -> bool:
    if peer == "lme4":
        if shutil.which("Rscript") is None:
            return False
        ok = subprocess.run(["Rscript", "-e", "library(lme4); library(jsonlite)"], capture_output=True)
        return ok.returncode == 0
    module = {"fit_lmm": "lmm_helpers", "statsmodels": "statsmodels", "mixedlm": "mixedlm"}[peer]
    ok = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return ok.returncode == 0


def run_one(peer: str, n: int, folder: Path, timeout: float) -> dict:
    if peer == "lme4":
        script = folder / "fit_lme4.R"
        script.write_text(R_SCRIPT)
        cmd = ["Rscript", str(script), str(folder), str(n), str(MAX_REPEATS), str(REPEAT_BUDGET_S)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", peer, str(folder)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"status": f"skipped (too slow: over {timeout:.0f} s)"}
    except subprocess.CalledProcessError as err:
        return {"status": "failed: " + err.stderr.strip().splitlines()[-1][:200]}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["status"] = "ok"
    return res


def machine() -> dict:
    import pandas as pd
    import scipy
    import statsmodels

    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "pandas": pd.__version__,
            "statsmodels": statsmodels.__version__}
    try:
        from importlib.metadata import version

        info["mixedlm"] = version("mixedlm")
    except Exception:  # noqa: BLE001 - not installed
        info["mixedlm"] = "missing"
    try:
        cmd = 'cat(R.version$major, ".", R.version$minor, " / lme4 ", as.character(packageVersion("lme4")), sep="")'
        info["R / lme4"] = subprocess.run(["Rscript", "-e", cmd], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        info["R / lme4"] = "missing"
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    return info


def main(sizes: list[int], out: Path = SCRATCH) -> None:
    """Run every peer at every size; write benchmark.csv, benchmark.md and benchmark.png into ``out``."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]  # other work on the machine makes every time longer
    have = {peer: available(peer) for peer in PEERS}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / str(n)
            folder.mkdir()
            data = make_data(n)
            write_data(data, folder)
            input_bytes = data["y"].nbytes + data["X"].nbytes + data["g"].nbytes
            for peer in PEERS:
                row = {"n": n, "groups": n // ROWS_PER_GROUP, "peer": peer, "input_bytes": input_bytes}
                if not have[peer]:
                    row["status"] = "missing"
                else:
                    timeout = 600.0
                    if peer == "statsmodels":
                        prev = [r for r in rows if r["peer"] == peer and r.get("status") == "ok"]
                        if prev and prev[-1]["time"] * n / prev[-1]["n"] > SKIP_ABOVE_S:
                            row["status"] = "skipped (too slow)"
                            rows.append(row)
                            continue
                        timeout = 3 * SKIP_ABOVE_S
                    row.update(run_one(peer, n, folder, timeout))
                rows.append(row)
                print(n, peer, row.get("status"), f"{row.get('time', float('nan')):.4f}", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "benchmark.csv", index=False)
    write_markdown(df, machine() | {"load average at start": f"{load_at_start:.2f}"}, out / "benchmark.md")
    plot(df, out / "benchmark.png", PEERS, "y ~ x1 + x2 + (1 | g), ML: time against n")
    print(f"wrote benchmark.csv, benchmark.md and benchmark.png in {out}")


def write_markdown(df, info: dict, path: Path) -> None:
    """The Markdown table: time, memory, log-likelihood, and each peer against fit_lmm."""
    ours = df[df.peer == "fit_lmm"].set_index("n")
    lines = ["| n | groups | peer | time (s) | × fit_lmm time | peak memory (MB) | memory / input | logLik | "
             "logLik − fit_lmm |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for _, r in df.iterrows():
        head = f"| {r.n:,} | {r.groups:,} | {r.peer} |"
        if r.status != "ok":
            lines.append(head + f" {r.status} | | | | | |")
            continue
        ratio = r.time / ours.loc[r.n, "time"]
        dll = r.loglik - ours.loc[r.n, "loglik"]
        lines.append(head + f" {r.time:.4f} | {ratio:.1f} | {r.peak_bytes / 1e6:.1f} | "
                     f"{r.peak_bytes / r.input_bytes:.2f} | {r.loglik:.4f} | {dll:.2e} |")
    ok = df[df.status == "ok"]
    reps = ", ".join(f"{p} " + "/".join(str(int(k)) for k in ok[ok.peer == p].repeats)
                     for p in PEERS if (ok.peer == p).any())
    machine_line = ", ".join(f"{k} {v}" for k, v in info.items())
    text = [
        "# Benchmark: y ~ x1 + x2 + (1 | g), maximum likelihood, about 20 rows per group",
        "",
        "Made by `.venv/bin/python benchmarks/run_benchmarks.py --update`. Time: best of k repeats of the fit alone, data already in "
        f"memory (k by size, smallest n first: {reps}). Peak memory: rise of the process's peak resident set size (VmHWM) during the first "
        "fit; input = y, X (n × 3) and the group codes. \"× fit_lmm time\" is the peer's time over fit_lmm's; "
        "\"logLik − fit_lmm\" is negative when the peer stopped short of fit_lmm's maximum; differences below about "
        "1e-13 of |logLik| are rounding (sums of 10^6 terms).",
        "",
        *lines,
        "",
        f"Machine: {machine_line}.",
        "",
    ]
    path.write_text("\n".join(text))


def plot(df, path: Path, peers: list, title: str) -> None:
    """Fit time against n on log-log axes, one line per peer (the rows with status ok)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=96)
    for peer, marker in zip(peers, "osD^"):
        sub = df[(df.peer == peer) & (df.status == "ok")]
        if len(sub):
            ax.plot(sub.n, sub.time, marker=marker, label=peer)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows n (about 20 per group)")
    ax.set_ylabel("time to fit (s, best of k)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


# ------------------------------------------------------------------------------------- crossed factors (issue 11)
CROSSED_FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"
CROSSED_PEERS = ["lmm", "mixedlm", "lme4"]
CROSSED_REPEATS, CROSSED_BUDGET_S = 5, 20.0
CROSSED_R = r"""
args <- commandArgs(trailingOnly = TRUE)
max_rep <- as.integer(args[2]); budget <- as.numeric(args[3])
suppressPackageStartupMessages(library(lme4))
dat <- read.csv(args[1], colClasses = c(y = "numeric", s = "factor", d = "factor", dept = "factor",
                                        service = "factor"))
times <- c()
repeat {
  t0 <- Sys.time()
  fit <- lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept:service), data = dat, REML = FALSE)
  times <- c(times, as.numeric(difftime(Sys.time(), t0, units = "secs")))
  if (length(times) >= max_rep || sum(times) > budget) break
}
cat(jsonlite::toJSON(list(time = min(times), repeats = length(times), loglik = as.numeric(logLik(fit))),
                     digits = NA, auto_unbox = TRUE))
"""


def crossed_worker(peer: str, path: Path) -> dict:
    """Fit InstEval's crossed model with one Python peer; best of up to 5 fits (20 s budget), ML log-likelihood."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"s": str, "d": str, "dept": str, "service": str})
    if peer == "lmm":
        from lmm_helpers import lmm

        def fit():
            return lmm(CROSSED_FORMULA, df, "ML").loglik
    elif peer == "mixedlm":
        from mixedlm import lmer

        cat = df.astype({c: "category" for c in ("s", "d", "dept", "service")})

        def fit():
            return float(lmer(CROSSED_FORMULA, cat, REML=False).logLik().value)
    else:
        raise ValueError(f"peer must be one of {CROSSED_PEERS[:2]}, got {peer!r}")
    times, loglik = [], float("nan")
    while len(times) < CROSSED_REPEATS and sum(times) <= CROSSED_BUDGET_S:
        t0 = time.perf_counter()
        loglik = fit()
        times.append(time.perf_counter() - t0)
    return {"time": min(times), "repeats": len(times), "loglik": loglik}


def crossed_benchmark(out: Path = SCRATCH) -> None:
    """InstEval (lme4's 73,421 ratings; students 2972 x lecturers 1128, dept:service 28), crossed, ML: lmm against
    mixedlm and lme4 in one run, each in a fresh subprocess; writes results/crossed.csv and crossed.md."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    path = HERE.parent / "data" / "insteval.csv"
    load_at_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for peer in CROSSED_PEERS:
            if peer == "lme4":
                script = Path(tmp) / "crossed.R"
                script.write_text(CROSSED_R)
                cmd = ["Rscript", str(script), str(path), str(CROSSED_REPEATS), str(CROSSED_BUDGET_S)]
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--crossed-worker", peer, str(path)]
            row = {"peer": peer}
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]), status="ok")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as err:
                row["status"] = "failed: " + str(getattr(err, "stderr", "") or err).strip()[-200:]
            rows.append(row)
            print(peer, row.get("status"), f"{row.get('time', float('nan')):.3f}", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "crossed.csv", index=False)
    ours = df.set_index("peer").loc["lmm"]
    info = machine() | {"load average at start": f"{load_at_start:.2f}"}
    lines = [f"InstEval, `{CROSSED_FORMULA}`, ML (73,421 rows). Best of up to {CROSSED_REPEATS} fits "
             f"({CROSSED_BUDGET_S:.0f} s budget), each peer in a fresh process.", "",
             "| peer | time (s) | × lmm time | fits | logLik | logLik − lmm's |", "|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        if r.status != "ok":
            lines.append(f"| {r.peer} | {r.status} | | | | |")
            continue
        lines.append(f"| {r.peer} | {r.time:.3f} | {r.time / ours.time:.1f} | {int(r.repeats)} | "
                     f"{r.loglik:.6f} | {r.loglik - ours.loglik:.2e} |")
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items())]
    (out / "crossed.md").write_text("\n".join(lines) + "\n")


# ==============================================================================================================
# Random slopes (issue 10): y ~ x + (x | g) by ML, lmm() against mixedlm and lme4 in the same run.
# A section of its own (its data, worker, R script, table and plot), run with --slopes.
SLOPES_SIZES = [10**5, 10**6]
SLOPES_ROWS_PER_GROUP = 20
SLOPES_BETA = np.array([1.0, 0.5])
SLOPES_D_CHOL = np.array([[0.8, 0.0], [0.12, 0.38]])  # SDs 0.8 and 0.4, correlation 0.3
SLOPES_PEERS = ["lmm", "mixedlm", "lme4"]
SLOPES_R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; n <- as.integer(args[2]); max_rep <- as.integer(args[3]); budget <- as.numeric(args[4])
suppressPackageStartupMessages(library(lme4))
rd <- function(f, what) { con <- file(file.path(dir, f), "rb"); on.exit(close(con)); readBin(con, what, n, size = if (what == "integer") 4L else 8L) }
dat <- data.frame(y = rd("y.bin", "double"), x = rd("x.bin", "double"), g = factor(rd("g.bin", "integer")))
hwm <- function() { s <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE); as.numeric(gsub("[^0-9]", "", s)) * 1024 }
invisible(gc())
before <- hwm()
times <- c()
repeat {
  t0 <- Sys.time(); fit <- suppressWarnings(lmer(y ~ x + (x | g), data = dat, REML = FALSE)); t1 <- Sys.time()
  times <- c(times, as.numeric(difftime(t1, t0, units = "secs")))
  if (length(times) == 1) peak <- hwm() - before
  if (length(times) >= max_rep || sum(times) > budget) break
}
conv <- is.null(fit@optinfo$conv$lme4$messages)
cat(jsonlite::toJSON(list(time = min(times), repeats = length(times), peak_bytes = peak,
                          loglik = as.numeric(logLik(fit)), converged = conv), digits = NA, auto_unbox = TRUE))
"""


def make_slopes_data(n: int) -> dict[str, np.ndarray]:
    """``y = 1 + 0.5 x + b0[g] + b1[g] x + e``: seeded, ``n // 20`` groups drawn at random (rows in random order)."""
    rng = np.random.default_rng([SEED, n, 10])
    n_groups = n // SLOPES_ROWS_PER_GROUP
    g = rng.integers(0, n_groups, size=n).astype(np.int32)
    x = rng.standard_normal(n)
    b = rng.standard_normal((n_groups, 2)) @ SLOPES_D_CHOL.T
    y = SLOPES_BETA[0] + SLOPES_BETA[1] * x + b[g, 0] + b[g, 1] * x + SIGMA * rng.standard_normal(n)
    return {"y": y, "x": x, "g": g}


def slopes_worker(peer: str, folder: Path) -> dict:
    """One peer on the slopes data in ``folder``: time (best of k), peak memory rise, log-likelihood."""
    import pandas as pd

    y, x, g = (np.load(folder / f"{k}.npy") for k in ("y", "x", "g"))
    extra = {}
    if peer == "lmm":
        from lmm_helpers import lmm

        df = pd.DataFrame({"y": y, "x": x, "g": g})

        def fit():
            return lmm("y ~ x + (x | g)", df, "ML")
    elif peer == "mixedlm":
        from mixedlm import lmer

        df = pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})

        def fit():
            return lmer("y ~ x + (x | g)", df, REML=False)
    else:
        raise ValueError(f"peer must be one of {SLOPES_PEERS[:2]}, got {peer!r}")
    timing, res = _time_fits(fit)
    if peer == "lmm":
        t0 = time.perf_counter()
        res.df  # noqa: B018 - Satterthwaite's df are computed on first use; timed apart (no peer computes them)
        extra = {"df_time": time.perf_counter() - t0, "converged": bool(res.converged)}
        loglik = float(res.loglik)
    else:
        loglik = float(res.logLik().value)
        extra = {"converged": bool(res.converged)}
    return {**timing, "loglik": loglik, **extra}


def slopes_main(sizes: list[int], out: Path = SCRATCH) -> None:
    """Run the random-slopes comparison and write benchmark_slopes.csv, .md and .png beside the others."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]
    have = {"lmm": available("fit_lmm"), "mixedlm": available("mixedlm"), "lme4": available("lme4")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / str(n)
            folder.mkdir()
            data = make_slopes_data(n)
            for k, arr in data.items():
                np.save(folder / f"{k}.npy", arr)
            for k, arr in [("y", data["y"]), ("x", data["x"]), ("g", data["g"] + 1)]:
                np.ascontiguousarray(arr).tofile(folder / f"{k}.bin")
            input_bytes = sum(a.nbytes for a in data.values())
            for peer in SLOPES_PEERS:
                row = {"n": n, "groups": n // SLOPES_ROWS_PER_GROUP, "peer": peer, "input_bytes": input_bytes}
                if not have[peer]:
                    row["status"] = "missing"
                elif peer == "lme4":
                    script = folder / "fit_lme4_slopes.R"
                    script.write_text(SLOPES_R_SCRIPT)
                    cmd = ["Rscript", str(script), str(folder), str(n), str(MAX_REPEATS), str(REPEAT_BUDGET_S)]
                    row.update(_run_cmd(cmd, 900.0))
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--slopes-worker", peer, str(folder)]
                    row.update(_run_cmd(cmd, 900.0))
                rows.append(row)
                print(n, peer, row.get("status"), f"{row.get('time', float('nan')):.4f}", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "benchmark_slopes.csv", index=False)
    _slopes_markdown(df, machine() | {"load average at start": f"{load_at_start:.2f}"}, out)
    plot(df, out / "benchmark_slopes.png", SLOPES_PEERS, "y ~ x + (x | g), ML: time against n")


def _run_cmd(cmd: list, timeout: float) -> dict:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"status": f"skipped (too slow: over {timeout:.0f} s)"}
    except subprocess.CalledProcessError as err:
        return {"status": "failed: " + err.stderr.strip().splitlines()[-1][:200]}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["status"] = "ok"
    return res


def _slopes_markdown(df, info: dict, out: Path) -> None:
    ours = df[df.peer == "lmm"].set_index("n")
    lines = ["| n | groups | peer | time (s) | × lmm time | peak memory (MB) | logLik | logLik − lmm | converged |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for _, r in df.iterrows():
        head = f"| {r.n:,} | {r.groups:,} | {r.peer} |"
        if r.status != "ok":
            lines.append(head + f" {r.status} | | | | | |")
            continue
        ratio = r.time / ours.loc[r.n, "time"]
        dll = r.loglik - ours.loc[r.n, "loglik"]
        lines.append(head + f" {r.time:.4f} | {ratio:.1f} | {r.peak_bytes / 1e6:.1f} | {r.loglik:.4f} | "
                     f"{dll:.2e} | {'yes' if r.converged else 'no (warning)'} |")
    ok = df[df.status == "ok"]
    reps = ", ".join(f"{p} " + "/".join(str(int(k)) for k in ok[ok.peer == p].repeats)
                     for p in SLOPES_PEERS if (ok.peer == p).any())
    df_times = " and ".join(f"{t:.3f} s (n = {n:,})" for n, t in zip(ours.index, ours.get("df_time", [])))
    text = [
        "# Benchmark: y ~ x + (x | g), maximum likelihood, about 20 rows per group, groups in random order",
        "",
        "Made by `.venv/bin/python benchmarks/run_benchmarks.py --slopes --update`. Time: best of k repeats of the fit from a DataFrame "
        f"already in memory (k by size: {reps}); lmm's time includes parsing the formula and building the design, "
        "as the peers' do. Satterthwaite's df, which lmm computes on first use and neither peer computes, took a "
        f"further {df_times}. \"logLik − lmm\" is negative when the peer stopped short of lmm's maximum.",
        "",
        *lines,
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
    ]
    (out / "benchmark_slopes.md").write_text("\n".join(text))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("PEER", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="row counts (default 1e3 .. 1e6)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--update", action="store_true",
                       help=f"write the tracked results in {RESULTS.relative_to(HERE.parent)}/")
    where.add_argument("--out", type=Path, default=SCRATCH,
                       help=f"output folder (default: {SCRATCH.relative_to(HERE.parent)}/, not tracked)")
    parser.add_argument("--crossed", action="store_true", help="only the crossed-factors benchmark (InstEval)")
    parser.add_argument("--crossed-worker", nargs=2, metavar=("PEER", "CSV"), help=argparse.SUPPRESS)
    parser.add_argument("--slopes", action="store_true", help="run the random-slopes comparison (lmm, mixedlm, lme4)")
    parser.add_argument("--slopes-worker", nargs=2, metavar=("PEER", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.crossed_worker:
        print(json.dumps(crossed_worker(args.crossed_worker[0], Path(args.crossed_worker[1]))))
    elif args.crossed:
        crossed_benchmark(RESULTS if args.update else args.out)
    elif args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]))))
    elif args.slopes_worker:
        print(json.dumps(slopes_worker(args.slopes_worker[0], Path(args.slopes_worker[1]))))
    elif args.slopes:
        slopes_main(args.sizes if args.sizes != SIZES else SLOPES_SIZES, RESULTS if args.update else args.out)
    else:
        main(args.sizes, RESULTS if args.update else args.out)
