"""Scoring, baselines and the report (``report.json``, ``report.md``, PNG plots).

Every method scores the task's test split; higher = more anomalous:

* ``msc_raw`` (the default method, the report's headline) -- the weighted sum ``(1 - w) z_raw + w z_msc`` of
  two z-normalised kNN scores: on the raw inputs (as ``knn_raw``) and on the MSC fine-tuned features (as
  ``msc``). Each score is standardised with the mean and standard deviation of the leave-one-out kNN scores of
  the normal training samples (each one's k nearest *other* training samples), so neither feature space
  dominates and no test sample or label enters the normalisation (:func:`zscore_knn_sum`). The weight ``w``
  (``--msc-weight``, default ``auto``) is chosen per task from {0, 0.25, 0.5, 0.75, 1} without labels: the
  normal training samples that MSC fine-tuning held out, and Gaussian-perturbed copies of them as synthetic
  anomalies, are scored against the other training samples, and the ``w`` that separates the two best wins
  (ROC-AUCs within 0.001 tie, and the tie goes to the ``w`` closest to 0.5; :func:`choose_msc_weight`);
* ``msc`` -- kNN (k = 2, squared L2; normalised features for images, unnormalised for tables) to the normal
  training features of the MSC fine-tuned encoder;
* ``knn_pretrained`` -- the same kNN on the pre-trained encoder (PANDA without fine-tuning; also the epoch-0
  sanity check);
* ``compactness`` -- the same kNN after the compactness (Deep-SVDD-like) fine-tune;
* ``knn_bn_adapted`` -- (images) the pre-trained encoder with its BatchNorm statistics re-estimated on the
  normal training images, no weight change: an ablation separating MSC's gradient from the BatchNorm shift
  that any train-mode fine-tune on one class causes;
* ``knn_raw`` -- kNN on the raw inputs (pixels / z-scored table features, not normalised);
* ``isolation_forest`` -- scikit-learn's Isolation Forest (200 trees) fitted on the raw normal training inputs;
* ``pyod_knn``, ``pyod_lof``, ``pyod_ocsvm``, ``pyod_ecod``, ``pyod_copod`` -- PyOD's classical detectors
  with their default settings (kNN: largest distance to the 5th neighbour; LOF: 20 neighbours; OCSVM: RBF,
  nu = 0.5), fitted on the normal training inputs (pixels; z-scored table features) and scoring the test
  split; only when PyOD is installed (the ``anomaly`` extra) and ``--pyod`` is on.

Metrics per task: ROC-AUC (``roc_auc``, the headline) and average precision with anomalies as positives
(``average_precision``). ``report.json`` (the schema of every app) has one row per method and task (``dataset``:
``class <c>`` or the table's name); the headline (``msc_raw``) against each baseline per task is the
report's ``versus`` section, and the means over the tasks are in ``extra.mean``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apps.anomaly.config import AnomalySettings
from apps.anomaly.model import bn_adapted, embed
from apps.anomaly.train import Experiment, Task, holdout_split, load_fitted
from core.app import Run
from core.app.files import save_figure
from core.metrics.knn import knn_scores

__all__ = ["task_scores", "summarize", "evaluate", "zscore_knn_sum", "synthetic_anomalies", "choose_msc_weight",
           "msc_weight", "pyod_scores", "METHOD_NAMES", "SHORT_NAMES", "MEAN", "HEADLINE", "WEIGHT_GRID"]

#: the key of the means over the tasks (``extra.mean`` of the report)
MEAN = "mean"
#: the default method: the report's headline
HEADLINE = "msc_raw"
#: the weights of the MSC-feature term that the label-free choice tries (:func:`choose_msc_weight`)
WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Gaussian noise of the synthetic anomalies, in units of the normal data's nearest-neighbour distance
NOISE_SCALE = 2.0
#: Gaussian-perturbed copies of each held-out normal sample
COPIES = 10
#: ROC-AUC differences on the synthetic anomalies within this count as ties (won by the weight closest to 0.5)
TIE = 1e-3

METHOD_NAMES = {
    "msc_raw": "MSC features + raw inputs: weighted sum (1 - w) z_raw + w z_msc of the two kNN scores, each "
               "z-normalised by the leave-one-out scores of the normal training samples, w chosen per task "
               "without labels (held-out normals vs synthetic anomalies) or fixed by --msc-weight (default)",
    "msc": "MSC (mean-shifted contrastive) + kNN",
    "knn_pretrained": "kNN on pre-trained features (PANDA w/o fine-tune)",
    "compactness": "compactness fine-tune (Deep-SVDD-like) + kNN",
    "knn_bn_adapted": "kNN on pre-trained features, BatchNorm statistics re-estimated on the normal class "
                      "(ablation: MSC without its gradient)",
    "knn_raw": "kNN on raw inputs",
    "isolation_forest": "Isolation Forest on raw inputs",
    "pyod_knn": "PyOD kNN (largest distance, 5 neighbours) on raw inputs",
    "pyod_lof": "PyOD LOF (20 neighbours) on raw inputs",
    "pyod_ocsvm": "PyOD one-class SVM (RBF) on raw inputs",
    "pyod_ecod": "PyOD ECOD on raw inputs",
    "pyod_copod": "PyOD COPOD on raw inputs",
}


SHORT_NAMES = {
    "msc_raw": "MSC + raw kNN", "msc": "MSC", "knn_pretrained": "kNN, pre-trained (PANDA w/o fine-tune)",
    "compactness": "compactness fine-tune",
    "knn_bn_adapted": "kNN, BN re-estimated (ablation)", "knn_raw": "kNN, raw inputs",
    "isolation_forest": "Isolation Forest, raw inputs", "pyod_knn": "PyOD kNN, raw inputs",
    "pyod_lof": "PyOD LOF, raw inputs", "pyod_ocsvm": "PyOD OCSVM, raw inputs", "pyod_ecod": "PyOD ECOD, raw inputs",
    "pyod_copod": "PyOD COPOD, raw inputs",
}


def _zscored(test: Any, train: Any, k: int, normalize: bool) -> np.ndarray:
    """kNN score of ``test`` against ``train``, z-normalised by the training samples' leave-one-out scores."""
    s = knn_scores(test, train, k=k, normalize=normalize)
    loo = knn_scores(train, train, k=k + 1, normalize=normalize)
    sd = float(loo.std())
    return (s - float(loo.mean())) / (sd if sd > 0 else 1.0)


def zscore_knn_sum(parts: list[tuple[Any, Any, bool]], k: int, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted sum over ``parts`` = ``[(test, train, normalize), ...]`` of the kNN score of ``test`` against
    ``train`` (:func:`core.metrics.knn.knn_scores`), each z-normalised by the leave-one-out scores of the training
    samples: ``(s - mean(s_loo)) / std(s_loo)`` where ``s_loo`` is the sum over each training sample's ``k``
    nearest other training samples (``k + 1`` neighbours of the training bank, the first being the sample itself
    at distance 0). A constant leave-one-out score (std 0) counts as std 1. ``weights`` (one per part) default
    to 1 each."""
    if not parts:
        raise ValueError("zscore_knn_sum needs at least one (test, train, normalize) part")
    weights = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
    if len(weights) != len(parts):
        raise ValueError(f"zscore_knn_sum: {len(weights)} weights for {len(parts)} parts")
    total = None
    for (test, train, normalize), w in zip(parts, weights):
        z = w * _zscored(test, train, k, normalize)
        total = z if total is None else total + z
    return total


def synthetic_anomalies(x: np.ndarray, bank: np.ndarray, seed: int, scale: float = NOISE_SCALE,
                        clip: tuple[float, float] | None = None, copies: int = 1) -> np.ndarray:
    """``copies`` Gaussian-perturbed copies of each sample of ``x`` (``copies * len(x)`` rows, copy-major):
    ``x + sigma * N(0, I)``, optionally clipped to ``clip``, with ``sigma = scale * sqrt(median_i d_i / D)``
    where ``d_i`` is the squared L2 distance of bank row ``i`` to its nearest other bank row (the median over
    the rows with ``d_i > 0``) and ``D`` the number of input values: the noise moves a sample by about ``scale``
    times the typical nearest-neighbour distance of the normal data."""
    flat = np.asarray(bank, np.float32).reshape(len(bank), -1)
    if len(flat) < 2:
        raise ValueError("synthetic_anomalies needs a bank of at least 2 samples")
    nn1 = knn_scores(flat, flat, k=2, normalize=False)  # the sample itself (0) + its nearest other sample
    nn1 = nn1[nn1 > 0]
    sigma = scale * math.sqrt(float(np.median(nn1)) / flat.shape[1]) if len(nn1) else 0.0
    x = np.asarray(x, np.float64)
    noise = np.random.default_rng([seed, 104729]).standard_normal((copies, *x.shape))
    out = (x[None] + sigma * noise).reshape(copies * len(x), *x.shape[1:])
    if clip is not None:
        out = np.clip(out, *clip)
    return out.astype(np.float32)


def choose_msc_weight(x_train: np.ndarray, features: Callable[[np.ndarray], Any], holdout_idx: np.ndarray, *,
                      k: int, normalize: bool, seed: int, clip: tuple[float, float] | None = None,
                      grid: Sequence[float] = WEIGHT_GRID, scale: float = NOISE_SCALE, copies: int = COPIES,
                      tie: float = TIE) -> tuple[float, dict]:
    """Label-free weight ``w`` of the feature term in ``(1 - w) z_raw + w z_feat`` (:func:`zscore_knn_sum`).

    ``x_train`` are the normal training samples (model inputs; their flattened values are the raw inputs),
    ``features`` maps model inputs to the features of the second term, ``holdout_idx`` are training samples the
    encoder was not fitted on. The others form the kNN bank (and the z-normalisation); the held-out samples and
    Gaussian-perturbed copies of them (:func:`synthetic_anomalies`) are scored against it, and ``w`` is the grid
    value whose combined score separates the copies from the originals best (ROC-AUC). Differences within
    ``TIE`` count as ties, won by the weight closest to 0.5 (the equal-weight sum). No test sample and no label
    is used. Returns ``(w, {w: ROC-AUC on held-out normals vs synthetic anomalies})``; with fewer than 2
    held-out samples ``(0.5, {})``."""
    from sklearn.metrics import roc_auc_score

    grid = [float(w) for w in grid]
    if not grid or any(not 0.0 <= w <= 1.0 for w in grid):
        raise ValueError(f"weights must lie in [0, 1], got {grid}")
    hold = np.asarray(holdout_idx, dtype=np.int64)
    if len(hold) < 2:
        return 0.5, {}
    keep = np.setdiff1d(np.arange(len(x_train)), hold)
    if len(keep) < k + 1:
        raise ValueError(f"choose_msc_weight: {len(keep)} bank samples, fewer than k + 1 = {k + 1}")
    x_bank, x_hold = np.asarray(x_train[keep]), np.asarray(x_train[hold])
    x_syn = synthetic_anomalies(x_hold, x_bank, seed, scale, clip, copies)
    flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)  # noqa: E731
    queries = np.concatenate([x_hold, x_syn])
    z_raw = _zscored(flat(queries), flat(x_bank), k, False)
    feat = lambda a: np.asarray(features(a), np.float32)  # noqa: E731
    z_feat = _zscored(feat(queries), feat(x_bank), k, normalize)
    label = np.r_[np.zeros(len(x_hold)), np.ones(len(x_syn))]
    aucs = {w: float(roc_auc_score(label, (1 - w) * z_raw + w * z_feat)) for w in grid}
    best = max(aucs.values())
    tied = [w for w in grid if aucs[w] >= best - tie]
    return min(tied, key=lambda w: (abs(w - 0.5), w)), aucs


def pyod_scores(x_train: np.ndarray, x_test: np.ndarray) -> dict[str, np.ndarray]:
    """Test scores of PyOD's kNN, LOF, OCSVM, ECOD and COPOD fitted on ``x_train`` (default settings; the
    neighbour counts capped at ``len(x_train) - 1``); ``{}`` when PyOD is not installed."""
    try:
        from pyod.models.copod import COPOD
        from pyod.models.ecod import ECOD
        from pyod.models.knn import KNN
        from pyod.models.lof import LOF
        from pyod.models.ocsvm import OCSVM
    except ImportError:
        return {}
    nb = len(x_train) - 1
    detectors = {"pyod_knn": KNN(n_neighbors=min(5, nb)), "pyod_lof": LOF(n_neighbors=min(20, nb)),
                 "pyod_ocsvm": OCSVM(), "pyod_ecod": ECOD(), "pyod_copod": COPOD()}
    xtr, xte = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    return {name: np.asarray(d.fit(xtr).decision_function(xte), np.float64) for name, d in detectors.items()}


def msc_weight(s: AnomalySettings, task: Task, encoder: Any) -> tuple[float, dict]:
    """The weight of the MSC-feature term of ``msc_raw`` for ``task``: ``--msc-weight`` if it is a number, else
    (``auto``) :func:`choose_msc_weight` on the normal training samples that MSC fine-tuning held out (the same
    seeded split, :func:`apps.anomaly.train.holdout_split`)."""
    fixed = s.fixed_msc_weight()
    if fixed is not None:
        return fixed, {}
    norm = s.knn_normalize(task.kind)
    _, hold = holdout_split(len(task.x_train), s.holdout_fraction, s.seed)
    return choose_msc_weight(task.x_train, lambda x: embed(encoder, x, norm), hold, k=s.k, normalize=norm,
                             seed=s.seed, clip=(0.0, 1.0) if task.kind == "image" else None)


def task_scores(s: AnomalySettings, task: Task, encoders: dict,
                chosen: dict[str, tuple[float, dict]] | None = None) -> dict[str, np.ndarray]:
    """Test-split scores of every method for one task (the weight of ``msc_raw``'s MSC term and its selection
    ROC-AUCs go to ``chosen[task.label]`` when given)."""
    scores: dict[str, np.ndarray] = {}
    norm = s.knn_normalize(task.kind)
    raw_tr, raw_te = (task.raw_train, task.raw_test) if task.kind == "image" else (task.x_train, task.x_test)
    if "msc" in encoders:
        enc = encoders["msc"]
        w, aucs = msc_weight(s, task, enc)
        if chosen is not None:
            chosen[task.label] = (w, aucs)
        scores[HEADLINE] = zscore_knn_sum([(raw_te, raw_tr, False),
                                           (embed(enc, task.x_test, norm), embed(enc, task.x_train, norm), norm)],
                                          k=s.k, weights=(1.0 - w, w))
    for key, name in (("msc", "msc"), ("pretrained", "knn_pretrained"), ("compact", "compactness")):
        if key in encoders:
            enc = encoders[key]
            scores[name] = knn_scores(embed(enc, task.x_test, norm), embed(enc, task.x_train, norm), k=s.k,
                                      normalize=norm)
    if task.kind == "image" and "pretrained" in encoders:
        enc = bn_adapted(encoders["pretrained"], task.x_train)
        scores["knn_bn_adapted"] = knn_scores(embed(enc, task.x_test, norm), embed(enc, task.x_train, norm), k=s.k,
                                              normalize=norm)
    scores["knn_raw"] = knn_scores(raw_te, raw_tr, k=s.k, normalize=False)
    if s.isolation_forest:
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(n_estimators=200, random_state=s.seed, n_jobs=1).fit(task.raw_train)
        scores["isolation_forest"] = -forest.score_samples(task.raw_test)
    if s.pyod:
        scores.update(pyod_scores(raw_tr, raw_te))
    return scores


def _metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(y, s)), "average_precision": float(average_precision_score(y, s))}


def summarize(per_task: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """``{method: {"roc_auc": mean, "average_precision": mean, "per_class": {task: {...}}}}``."""
    methods = list(next(iter(per_task.values())))
    out = {}
    for m in methods:
        rows = {t: per_task[t][m] for t in per_task}
        out[m] = {"roc_auc": float(np.mean([r["roc_auc"] for r in rows.values()])),
                  "average_precision": float(np.mean([r["average_precision"] for r in rows.values()])),
                  "per_class": rows}
    return out




def _plots(out: Path, summary: dict, scores: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray],
           kind: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    tasks = list(labels)
    methods = list(summary)
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.25 * len(tasks) * len(methods) + 2)), 4.5))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [summary[m]["per_class"][t]["roc_auc"] for t in tasks]
        ax.bar(np.arange(len(tasks)) + i * width - 0.4 + width / 2, vals, width,
               label=f"{m} (mean {summary[m]['roc_auc']:.3f})")
    tilt = kind == "table"
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    low = min(summary[m]["per_class"][t]["roc_auc"] for m in methods for t in tasks)
    ax.set(ylabel="ROC-AUC", ylim=(max(0.0, min(0.5, low) - 0.05), 1.0),
           title=f"ROC-AUC per {'normal class' if kind == 'image' else 'table'}")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    p = out / "per_class_roc_auc.png"
    save_figure(fig, p)
    plt.close(fig)
    paths.append(p)

    shown = tasks[:10]
    cols = min(5, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.5, 3.2 * cols), 2.6 * rows + 0.4), squeeze=False)
    for ax, t in zip(axes.flat, shown):
        s, y = scores[t][HEADLINE], labels[t]
        bins = np.linspace(s.min(), s.max(), 40)
        ax.hist(s[y == 0], bins, alpha=0.6, density=True, label="normal")
        ax.hist(s[y == 1], bins, alpha=0.6, density=True, label="anomaly")
        ax.set_title(f"{t}: AUC {summary[HEADLINE]['per_class'][t]['roc_auc']:.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{HEADLINE} scores (MSC + raw kNN), test split (higher = more anomalous)", fontsize=9)
    fig.tight_layout()
    p = out / "msc_score_histograms.png"
    save_figure(fig, p)
    plt.close(fig)
    paths.append(p)
    return paths


def evaluate(run: Run, exp: Experiment) -> dict:
    """Score every task with MSC and the baselines (the encoders ``fit`` saved) and write ``report.json`` /
    ``report.md`` and the plots to the run's report folder (main process). Returns the report object."""
    s: AnomalySettings = run.settings  # type: ignore[assignment]
    per_task, scores, labels, sanity, chosen = {}, {}, {}, {}, {}
    for task in exp.tasks:
        encoders = load_fitted(s, exp, task)
        sc = task_scores(s, task, encoders, chosen)
        scores[task.label], labels[task.label] = sc, task.y_test
        per_task[task.label] = {m: _metrics(task.y_test, v) for m, v in sc.items()}
        sanity[task.label] = per_task[task.label]["knn_pretrained"]["roc_auc"]
        w, aucs = chosen[task.label]
        if s.fixed_msc_weight() is not None:
            how = "fixed by --msc-weight"
        elif not aucs:
            how = "no held-out normal samples to choose it on (--holdout-fraction 0 or too few): equal weights"
        else:
            how = ("chosen label-free; ROC-AUC on held-out normals vs synthetic anomalies "
                   + " ".join(f"w={k:g}: {v:.3f}" for k, v in aucs.items()))
        run.log(f"{task.name}: msc_raw weight of the MSC term w = {w:g} ({how})")
        run.log(f"{task.name}: " + ", ".join(f"{m} {r['roc_auc']:.4f}" for m, r in per_task[task.label].items()))
    summary = summarize(per_task)
    how_w = ("fixed by --msc-weight" if s.fixed_msc_weight() is not None
             else "chosen label-free on held-out normals vs synthetic anomalies")
    report = run.report("roc_auc", higher_is_better=True, title=f"Anomaly detection (MSC): {exp.dataset}")
    for t in per_task:
        for m, metrics in per_task[t].items():
            report.add(m, metrics, seed=s.seed, dataset=t, baseline=m != HEADLINE)
    report.headline = HEADLINE
    means = {m: {"roc_auc": v["roc_auc"], "average_precision": v["average_precision"]} for m, v in summary.items()}
    report.notes += [
        f"mean ROC-AUC over the {len(per_task)} task(s): "
        + ", ".join(f"{m} {v['roc_auc']:.4f}" for m, v in sorted(means.items(), key=lambda kv: -kv[1]["roc_auc"])),
        f"one-class protocol on {exp.dataset}: {exp.protocol}",
        f"scores: kNN (k = {s.k}) squared L2 distance to the normal training features "
        f"({'L2-normalised' if s.knn_normalize(exp.kind) else 'unnormalised'}); fine-tuning lr "
        f"{s.finetune_lr(exp.kind):g}, angular weight {s.angular_weight:g}, BatchNorm statistics "
        f"{'frozen' if s.freeze_bn else 'updated'}, epoch chosen by the MSC loss on "
        f"{s.holdout_fraction:.0%} held-out normal training samples (patience {s.patience})",
        "methods: " + "; ".join(f"`{m}` = {METHOD_NAMES.get(m, m)}" for m in summary),
        "epoch-0 sanity ROC-AUC (kNN on pre-trained features, printed before fine-tuning): "
        + ", ".join(f"{t}: {v:.3f}" for t, v in sanity.items()),
        f"msc_raw = (1 - w) z(raw kNN) + w z(MSC kNN); w per task ({how_w}): "
        + ", ".join(f"{t}: {w:g}" for t, (w, _) in chosen.items()),
    ]
    report.extra = {"dataset": exp.dataset, "kind": exp.kind, "protocol": exp.protocol,
                    "tasks": [t.name for t in exp.tasks], "finetune_lr": s.finetune_lr(exp.kind),
                    "epoch0_sanity_roc_auc": sanity, MEAN: means,
                    "msc_weight": {t: w for t, (w, _) in chosen.items()},
                    "msc_weight_selection_roc_auc": {t: {f"{k:g}": v for k, v in a.items()}
                                                     for t, (_, a) in chosen.items()}}
    folder = run.report_dir or run.run_dir.path
    if run.is_main:
        report.plots = [p.name for p in _plots(folder, summary, scores, labels, exp.kind)]
    out = run.write_report(report, folder)
    run.log("mean ROC-AUC: " + ", ".join(f"{m} {v['roc_auc']:.4f}" for m, v in summary.items()))
    run.log(f"report: {folder / 'report.json'}, {folder / 'report.md'}")
    return out
