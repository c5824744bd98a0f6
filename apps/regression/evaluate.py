"""``evaluate``: test-set metrics of a trained run -> ``report.json``, ``report.md`` and plots.

``report.json`` = ``{"app", "dataset", "method", "metrics", "baselines", "seconds", "config"}`` plus
``per_bin`` (test MAE per label bin), ``shots`` (thresholds and bin groups) and ``val_metrics`` (the same
metrics on the balanced validation split, for choosing hyperparameters without looking at test). Metric names:
``mae_all``, ``mae_many``, ``mae_medium``, ``mae_few``, ``gm_*``, ``mse_*`` (and ``pearson``,
``spearman`` for STS-B). ``baselines`` always holds ``train_median`` (a constant prediction) and the
test metrics of every other method already evaluated next to this run (``<out>/<dataset>/*/report.json``,
same seed). Files are written only once everything is computed, so a failure leaves no partial report.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apps.regression.config import ConfigError, RegressionConfig
from apps.regression.data import DIRData, load_data
from apps.regression.metrics import correlations, per_bin_error, shot_metrics
from apps.regression.train import build_regressor

__all__ = ["evaluate", "compute_metrics", "plot_per_bin", "plot_histogram", "json_safe", "write_atomic"]

APP = "regression"


def json_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    if isinstance(v, np.generic):
        return json_safe(v.item())
    return v


def write_atomic(files: dict[Path, bytes | str]) -> None:
    """Write every file to a temporary name first, then rename them all (no half-written report)."""
    tmps = []
    for path, content in files.items():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        (tmp.write_bytes if isinstance(content, bytes) else tmp.write_text)(content)
        tmps.append((tmp, path))
    for tmp, path in tmps:
        os.replace(tmp, path)


def compute_metrics(preds: np.ndarray, data: DIRData, split: str = "test") -> dict[str, float]:
    m = shot_metrics(preds, data.y[split], data.bins[split], data.groups)
    if data.correlations:
        m.update(correlations(preds, data.y[split]))
    return m


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _shade_groups(ax, data: DIRData) -> None:
    colors = {"many": "tab:green", "medium": "tab:orange", "few": "tab:red"}
    centers = data.bin_centers()
    for g, c in colors.items():
        for x in centers[data.groups == g]:
            ax.axvspan(x - data.bin_width / 2, x + data.bin_width / 2, color=c, alpha=0.07, lw=0)


def plot_per_bin(data: DIRData, curves: dict[str, np.ndarray], title: str) -> bytes:
    """Test MAE per label bin, one line per method, shot groups shaded (green many, orange medium, red few)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    _shade_groups(ax, data)
    x = data.bin_centers()
    for name, err in curves.items():
        err = np.asarray(err, dtype=float)
        ok = np.isfinite(err)
        ax.plot(x[ok], err[ok], marker="o", ms=3, lw=1.2, label=name)
    ax.set(xlabel="label", ylabel="test MAE in bin", title=title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _png(fig)


def plot_histogram(data: DIRData) -> bytes:
    """Training label histogram, bars coloured by shot group, with the val / test counts as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"many": "tab:green", "medium": "tab:orange", "few": "tab:red"}
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = data.bin_centers()
    for g, c in colors.items():
        sel = data.groups == g
        ax.bar(x[sel], data.train_counts[sel], width=data.bin_width * 0.9, color=c, label=f"train, {g}-shot bins")
    for split, style in (("val", "--"), ("test", ":")):
        cnt = np.bincount(data.bins[split], minlength=data.n_bins)
        ax.step(x, cnt, where="mid", color="k", ls=style, lw=1, label=f"{split} (balanced)")
    ax.axhline(data.many, color="gray", lw=0.6)
    ax.axhline(data.few, color="gray", lw=0.6)
    ax.set(xlabel="label", ylabel="samples per bin", yscale="symlog",
           title=f"{data.name}: label histogram (many > {data.many}, few < {data.few})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _sibling_reports(run_dir: Path, seed: int, method: str) -> dict[str, dict]:
    out = {}
    for f in sorted(run_dir.parent.glob("*/report.json")):
        if f.parent == run_dir:
            continue
        try:
            r = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if r.get("config", {}).get("seed") == seed and r.get("method") not in (None, method, "compare"):
            out[r["method"]] = r
    return out


def _markdown(report: dict) -> str:
    names = ["mae_all", "mae_many", "mae_medium", "mae_few", "gm_all", "gm_many", "gm_medium", "gm_few", "mse_all"]
    if "pearson" in report["metrics"]:
        names += ["pearson", "spearman"]
    rows = {report["method"]: report["metrics"], **report["baselines"]}
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"  # noqa: E731
    md = [f"# Regression report: {report['dataset']}, {report['method']}", "",
          f"Test split; shot groups from the training histogram ({report['shots']['rule']}).", "",
          "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, m in rows.items():
        md.append(f"| {name} | " + " | ".join(fmt(m.get(k)) for k in names) + " |")
    md += ["", f"Seconds: {report['seconds']:.1f}", "", "![per-bin error](per_bin_error.png)", "",
           "![training labels](label_histogram.png)", ""]
    return "\n".join(md)


def shots_info(data: DIRData) -> dict:
    return {"many": data.many, "few": data.few,
            "rule": f"many > {data.many}, few < {data.few} training samples per bin of width {data.bin_width:g}",
            "bins": {g: int((data.groups == g).sum()) for g in ("many", "medium", "few")}}


def evaluate(run_dir: str | Path, data: DIRData | None = None, echo=print) -> dict:
    """Evaluate the run in ``run_dir`` on its test split; writes the report files there and returns the report."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    model_file = run_dir / "model.pt"
    if not model_file.is_file():
        raise ConfigError(f"{run_dir} has no trained model (model.pt); run `python -m apps.regression fit` first")
    ckpt = torch.load(model_file, map_location="cpu", weights_only=False)
    cfg = RegressionConfig(**ckpt["config"])
    data = data or load_data(cfg)
    model = build_regressor(cfg, data)
    model.load_state_dict(ckpt["state_dict"])
    preds = model.predict(torch.from_numpy(data.x["test"])).numpy()
    metrics = compute_metrics(preds, data)
    val_metrics = compute_metrics(model.predict(torch.from_numpy(data.x["val"])).numpy(), data, "val")
    median = np.full(len(data.y["test"]), float(np.median(data.y["train"])))
    baselines = {"train_median": compute_metrics(median, data)}
    curves = {cfg.method: per_bin_error(preds, data.y["test"], data.bins["test"], data.n_bins)}
    for name, r in _sibling_reports(run_dir, cfg.seed, cfg.method).items():
        baselines[name] = r["metrics"]
        if r.get("per_bin"):
            curves[name] = np.array([np.nan if v is None else v for v in r["per_bin"]], dtype=float)
    curves["train_median"] = per_bin_error(median, data.y["test"], data.bins["test"], data.n_bins)
    report = {
        "app": APP, "dataset": data.name, "method": cfg.method, "metrics": metrics, "baselines": baselines,
        "seconds": float(ckpt.get("fit_seconds", 0.0)) + time.perf_counter() - t0, "config": cfg.to_dict(),
        "per_bin": curves[cfg.method], "shots": shots_info(data), "val_metrics": val_metrics,
    }
    report = json_safe(report)
    files = {
        run_dir / "per_bin_error.png": plot_per_bin(data, curves, f"{data.name}: test MAE per label bin"),
        run_dir / "label_histogram.png": plot_histogram(data),
        run_dir / "report.md": _markdown(report),
        run_dir / "report.json": json.dumps(report, indent=2),
    }
    write_atomic(files)
    m = metrics
    echo(f"[regression] {data.name} {cfg.method}: MAE all/many/med/few = {m['mae_all']:.3f}/{m['mae_many']:.3f}/"
         f"{m['mae_medium']:.3f}/{m['mae_few']:.3f}; report in {run_dir}/report.md")
    return report
