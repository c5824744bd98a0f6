"""``evaluate``: test-set metrics of every method of ``--methods`` at ``--seed`` -> one ``report.json`` /
``report.md`` (the runner's schema) and two plots.

One row per method and two baselines: ``hgb_l1`` (gradient-boosted trees with the L1 loss on the same inputs,
:mod:`apps.regression.baselines`) and ``train_median`` (a constant prediction); headline metric ``mae_all``
(lower is better), headline method :data:`apps.regression.config.DEFAULT_METHOD` when it is among ``--methods``;
metric names ``mae_*``, ``mse_*``, ``gm_*`` for ``all``, ``many``, ``medium``, ``few`` (and
``pearson``, ``spearman`` for sentence pairs). ``extra`` holds ``per_bin`` (test MAE per label bin of every
method), ``bin_centers``, ``shots`` (thresholds, bin groups, test samples per group), ``val_metrics`` (the same
metrics on the balanced validation split, for choosing hyper-parameters without looking at test) and ``fit``
(epochs trained, the epoch whose weights were kept, seconds). Plots: ``per_bin_error.png``,
``label_histogram.png`` next to the report. Nothing is written before every model has loaded and every metric is
computed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from apps.regression.baselines import HGB_NAME, hgb_baseline
from apps.regression.config import DEFAULT_METHOD, RegressionSettings, switches
from apps.regression.data import DIRData, load_data
from apps.regression.metrics import METRIC_NAMES, correlations, per_bin_error, shot_metrics
from apps.regression.train import build_regressor
from core.app import InputError, Run, load_torch
from core.app.files import save_figure

__all__ = ["evaluate", "compute_metrics", "plot_per_bin", "plot_histogram", "json_safe", "shots_info"]

HEADLINE = "mae_all"


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


def compute_metrics(preds: np.ndarray, data: DIRData, split: str = "test") -> dict[str, float]:
    m = shot_metrics(preds, data.y[split], data.bins[split], data.groups)
    if data.correlations:
        m.update(correlations(preds, data.y[split]))
    return m


def _shade_groups(ax, data: DIRData) -> None:
    colors = {"many": "tab:green", "medium": "tab:orange", "few": "tab:red"}
    centers = data.bin_centers()
    for g, c in colors.items():
        for x in centers[data.groups == g]:
            ax.axvspan(x - data.bin_width / 2, x + data.bin_width / 2, color=c, alpha=0.07, lw=0)


def plot_per_bin(data: DIRData, curves: dict[str, np.ndarray], title: str) -> Any:
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
    return fig


def plot_histogram(data: DIRData) -> Any:
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
    return fig


def shots_info(data: DIRData) -> dict:
    return {"many": data.many, "few": data.few,
            "rule": f"many > {data.many}, few < {data.few} training samples per bin of width {data.bin_width:g}",
            "bins": {g: int((data.groups == g).sum()) for g in ("many", "medium", "few")}}


def _row(metrics: dict[str, float]) -> dict[str, float | None]:
    """The report row of a metrics dict: MAE / MSE / GM (+ correlations), NaN as ``None``."""
    names = list(METRIC_NAMES) + [k for k in ("pearson", "spearman") if k in metrics]
    return {k: json_safe(float(metrics[k])) for k in names}


def evaluate(run: Run) -> None:
    """The ``evaluate`` verb: load every method's ``model.pt``, test it, write the report and plots."""
    s: RegressionSettings = run.settings
    files = {m: run.run_dir.method_dir(m) / "model.pt" for m in s.methods}
    missing = [m for m, f in files.items() if not f.is_file()]
    if missing:
        raise InputError(f"{run.run_dir.path} has no trained model of {', '.join(missing)} (seed {s.seed}); run "
                         f"`python -m apps.regression fit` with the same settings first")
    data = load_data(s)
    report = run.report(HEADLINE, higher_is_better=False, title=f"regression: {data.name}")
    median = np.full(len(data.y["test"]), float(np.median(data.y["train"])))
    curves: dict[str, np.ndarray] = {}
    val_metrics, fits, results = {}, {}, {}
    for m, f in files.items():
        state = load_torch(f)
        model = build_regressor(s, switches(s, m), data)
        try:
            model.load_state_dict(state["state_dict"])
        except (KeyError, TypeError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{f} does not hold a model of these settings ({msg}); delete it and re-run fit") \
                from None
        preds = model.predict(torch.from_numpy(data.x["test"])).numpy()
        results[m] = compute_metrics(preds, data)
        val_metrics[m] = _row(compute_metrics(model.predict(torch.from_numpy(data.x["val"])).numpy(), data, "val"))
        curves[m] = per_bin_error(preds, data.y["test"], data.bins["test"], data.n_bins)
        fits[m] = {k: state.get(k) for k in ("epochs", "epochs_done", "epoch_kept", "fit_seconds")}
    t0 = time.perf_counter()
    hgb = hgb_baseline(data, threads=torch.get_num_threads(), cache=run.run_dir.path / HGB_NAME / "predictions.pt")
    fits[HGB_NAME] = {"boosting_rounds": hgb["iterations"], "fit_seconds": time.perf_counter() - t0}
    trees = compute_metrics(hgb["test"], data)
    val_metrics[HGB_NAME] = _row(compute_metrics(hgb["val"], data, "val"))
    curves[HGB_NAME] = per_bin_error(hgb["test"], data.y["test"], data.bins["test"], data.n_bins)
    base = compute_metrics(median, data)
    curves["train_median"] = per_bin_error(median, data.y["test"], data.bins["test"], data.n_bins)
    for m, metrics in results.items():
        report.add(m, _row(metrics), seed=s.seed)
    report.add(HGB_NAME, _row(trees), seed=s.seed, baseline=True)
    report.add("train_median", _row(base), seed=s.seed, baseline=True)
    if DEFAULT_METHOD in results:
        report.headline = DEFAULT_METHOD
    counts = {g: int(base[f"n_{g}"]) for g in ("many", "medium", "few")}
    shots = {**shots_info(data), "test_samples": counts}
    report.notes.append(f"{data.summary()}")
    report.notes.append(f"test split; shot groups from the training histogram ({shots['rule']}); test samples "
                        f"many/medium/few = {counts['many']}/{counts['medium']}/{counts['few']}")
    report.notes.append(f"{HGB_NAME}: HistGradientBoostingRegressor(loss='absolute_error') on the networks' inputs "
                        f"(categorical columns as native categories), {hgb['iterations']} boosting rounds chosen by "
                        f"validation MAE; few-shot MAE {trees['mae_few']:.3f}")
    if "vanilla" in results:
        van = results["vanilla"]
        for m, r in results.items():
            if m != "vanilla" and van["mae_few"] > 0 and van["mae_many"] > 0:
                report.notes.append(f"{m} vs vanilla (negative = better): few-shot MAE "
                                    f"{r['mae_few'] / van['mae_few'] - 1:+.1%}, many-shot MAE "
                                    f"{r['mae_many'] / van['mae_many'] - 1:+.1%}")
    for m, fit in fits.items():
        if fit.get("epochs_done") is not None and fit["epochs_done"] < fit["epochs"]:
            report.notes.append(f"{m}: trained {fit['epochs_done']} of {fit['epochs']} epochs (stopped by "
                                f"--max-minutes); re-run fit to finish")
    report.extra = json_safe({"dataset": data.name, "per_bin": curves, "bin_centers": data.bin_centers(),
                              "shots": shots, "val_metrics": val_metrics, "fit": fits})
    folder = run.report_dir or run.run_dir.path
    if run.is_main:
        save_figure(plot_per_bin(data, curves, f"{data.name}: test MAE per label bin"), folder / "per_bin_error.png")
        save_figure(plot_histogram(data), folder / "label_histogram.png")
    report.plots = ["per_bin_error.png", "label_histogram.png"]
    run.write_report(report, folder)
    for m, r in {**results, HGB_NAME: trees}.items():
        run.log(f"{data.name} {m}: MAE all/many/med/few = {r['mae_all']:.3f}/{r['mae_many']:.3f}/"
                f"{r['mae_medium']:.3f}/{r['mae_few']:.3f}")
    run.log(f"report: {folder / 'report.md'}")
