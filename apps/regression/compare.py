"""``compare``: several methods x several seeds on one data set -> one mean +- std table.

Each (method, seed) is an ordinary run (``<out>/<dataset>/<method>-seed<seed>``, resumable; a run that
already has its ``report.json`` for the same configuration is not redone). The summary goes to
``<out>/<dataset>/compare/``: ``table.md`` / ``table.csv`` (mean +- std over seeds), ``report.json``
(``metrics`` = the focus method's means, ``baselines`` = the other methods' means, ``table`` = every
mean and std), ``report.md``, ``per_bin_error.png`` (seed-averaged test MAE per bin, one line per
method) and ``label_histogram.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from pathlib import Path

import numpy as np

from apps.regression.config import ConfigError, RegressionConfig, resolve
from apps.regression.data import load_data
from apps.regression.evaluate import evaluate, json_safe, plot_histogram, plot_per_bin, shots_info, write_atomic
from apps.regression.train import fit

__all__ = ["compare", "TABLE_METRICS"]

TABLE_METRICS = ("mae_all", "mae_many", "mae_medium", "mae_few", "gm_all", "gm_many", "gm_medium", "gm_few")


def _done(run_dir: Path, cfg: RegressionConfig) -> dict | None:
    f = run_dir / "report.json"
    if not f.is_file():
        return None
    r = json.loads(f.read_text())
    keep = ("quick", "progress", "threads", "out", "run_dir")
    same = {k: v for k, v in r.get("config", {}).items() if k not in keep} == \
        {k: v for k, v in cfg.to_dict().items() if k not in keep}
    return r if same else None


def _fmt(mean: float, std: float) -> str:
    return "-" if mean is None or not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def compare(cfg: RegressionConfig, methods: list[str], seeds: list[int], focus: str | None = None,
            echo=print) -> dict:
    """Run and summarise ``methods`` x ``seeds``; returns the summary report."""
    if not methods or not seeds:
        raise ConfigError("compare needs at least one method and one seed")
    if focus is not None and focus not in methods:
        raise ConfigError(f"--focus {focus!r} is not among --methods {methods}")
    cfgs = [resolve(dataclasses.replace(cfg, method=m, seed=s, run_dir=None)) for m in methods for s in seeds]
    t0 = time.perf_counter()
    data = load_data(cfgs[0])
    reports: dict[str, list[dict]] = {m: [] for m in methods}
    for i, c in enumerate(cfgs):
        echo(f"[compare] {i + 1}/{len(cfgs)}: {c.method} seed {c.seed}")
        r = _done(c.default_run_dir(), c)
        if r is None:
            r = evaluate(fit(c, data, echo=echo), data, echo=echo)
        reports[c.method].append(r)
    table: dict[str, dict[str, dict[str, float]]] = {}
    names = list(TABLE_METRICS) + ["mse_all", "n_many", "n_medium", "n_few"]
    if data.correlations:
        names += ["pearson", "spearman"]
    for m, rs in reports.items():
        table[m] = {}
        for k in names:
            v = np.array([np.nan if r["metrics"].get(k) is None else r["metrics"][k] for r in rs], dtype=float)
            table[m][k] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
    focus = focus or next((m for m in methods if m != "vanilla"), methods[0])
    out_dir = Path(cfg.out) / data.name / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = list(TABLE_METRICS) + (["pearson", "spearman"] if data.correlations else [])
    md = [f"Test split of {data.name}, mean ± std over seeds {seeds}; shot groups: {shots_info(data)['rule']} "
          f"(test samples many/medium/few = {int(table[methods[0]]['n_many']['mean'])}/"
          f"{int(table[methods[0]]['n_medium']['mean'])}/{int(table[methods[0]]['n_few']['mean'])}).", "",
          "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method"] + [f"{k}_{s}" for k in cols for s in ("mean", "std")])
    for m in methods:
        md.append(f"| {m} | " + " | ".join(_fmt(table[m][k]["mean"], table[m][k]["std"]) for k in cols) + " |")
        w.writerow([m] + [f"{table[m][k][s]:.6g}" for k in cols for s in ("mean", "std")])
    vanilla = table.get("vanilla")
    if vanilla:
        md += ["", "Change vs vanilla (negative = better): few-shot MAE / many-shot MAE", ""]
        for m in methods:
            if m == "vanilla":
                continue
            few = table[m]["mae_few"]["mean"] / vanilla["mae_few"]["mean"] - 1
            many = table[m]["mae_many"]["mean"] / vanilla["mae_many"]["mean"] - 1
            md.append(f"- {m}: few {few:+.1%}, many {many:+.1%}")
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)  # bins without test samples stay NaN
        curves = {m: np.nanmean(np.array([[np.nan if v is None else v for v in r["per_bin"]] for r in rs], float), 0)
                  for m, rs in reports.items()}
    summary = json_safe({
        "app": "regression", "dataset": data.name, "method": focus,
        "metrics": {k: v["mean"] for k, v in table[focus].items()},
        "baselines": {m: {k: v["mean"] for k, v in table[m].items()} for m in methods if m != focus},
        # training + evaluation time of every run (also of runs reused from an earlier compare) + this summary
        "seconds": sum(float(r.get("seconds") or 0) for rs in reports.values() for r in rs) + time.perf_counter() - t0,
        "config": {**cfg.to_dict(), "methods": methods, "seeds": seeds},
        "table": table, "shots": shots_info(data),
    })
    table_md = "\n".join(md) + "\n"
    report_md = (f"# Regression compare: {data.name}\n\n{table_md}\n![per-bin error](per_bin_error.png)\n\n"
                 "![training labels](label_histogram.png)\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of bins without test samples
        write_atomic({
            out_dir / "per_bin_error.png": plot_per_bin(
                data, curves, f"{data.name}: test MAE per bin, mean over seeds"),
            out_dir / "label_histogram.png": plot_histogram(data),
            out_dir / "table.md": table_md, out_dir / "table.csv": buf.getvalue(),
            out_dir / "report.md": report_md, out_dir / "report.json": json.dumps(summary, indent=2),
        })
    echo(table_md)
    echo(f"[compare] wrote {out_dir}/report.md")
    return summary
