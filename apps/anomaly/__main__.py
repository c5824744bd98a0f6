"""Command line of the anomaly app, on the core app runner (:mod:`core.app`).

    python -m apps.anomaly pretrain [--data PATH] [--quick] ...   # NT-Xent pre-training only
    python -m apps.anomaly fit      [--data PATH] [--quick] ...   # pre-train if needed, MSC + baseline fine-tunes
    python -m apps.anomaly evaluate [--data PATH] [--quick] ...   # scores, baselines, report.json/.md, plots
    python -m apps.anomaly run      [--data PATH] [--quick] ...   # fit, then evaluate
    python -m apps.anomaly sweep --seeds 0 1 2 [...]              # run once per seed; one report over the seeds

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags. One data set
per run directory (default ``runs/anomaly``, ``runs/anomaly_quick`` with ``--quick``). Re-running an interrupted
command resumes from the run directory's checkpoints. Exit status: 0; 2 and ``error: ...`` for bad input; 3 when
``--max-minutes`` stopped the training first (re-run to resume); 130 on Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from apps.anomaly.config import AnomalySettings
from apps.anomaly.evaluate import evaluate
from apps.anomaly.train import Experiment, TimeCapReached, fit, prepare, pretrain_only
from core.app import CAPPED, App, InputError, Run, Verb

__all__ = ["APP", "main"]


def _prepare(run: Run) -> Experiment:
    exp = prepare(run.settings, run.run_dir, quick=run.quick)  # type: ignore[arg-type]
    run.log(f"{run.verb} on {exp.dataset} ({exp.kind}, {len(exp.tasks)} task(s)); run dir {run.run_dir.path}")
    return exp


def _capped(run: Run, e: TimeCapReached) -> int:
    run.log(str(e))
    return CAPPED


def pretrain_verb(run: Run) -> int | None:
    if run.settings.encoder_checkpoint is not None:  # type: ignore[attr-defined]
        raise InputError("pretrain with --encoder-checkpoint makes no sense: the checkpoint replaces pre-training")
    exp = _prepare(run)
    run.claim()
    try:
        for p in pretrain_only(run.settings, exp, run.log):  # type: ignore[arg-type]
            run.log(f"pre-trained encoder: {p}")
    except TimeCapReached as e:
        return _capped(run, e)
    return None


def fit_verb(run: Run) -> int | None:
    exp = _prepare(run)
    run.claim()
    try:
        fit(run.settings, exp, run.log)  # type: ignore[arg-type]
    except TimeCapReached as e:
        return _capped(run, e)
    run.log("fitted; next: python -m apps.anomaly evaluate with the same options")
    return None


def evaluate_verb(run: Run) -> None:
    evaluate(run, _prepare(run))


def run_verb(run: Run) -> int | None:
    rc = fit_verb(run.child("fit"))
    if rc is not None:
        return rc
    evaluate_verb(run.child("evaluate"))
    return None


APP = App(
    "anomaly",
    "One-class anomaly detection with the mean-shifted contrastive loss (Reiss & Hoshen 2023): NT-Xent "
    "pre-training, MSC fine-tuning on the normal class (BatchNorm frozen, epoch chosen on held-out normals), and "
    "the default score msc_raw (z-normalised kNN on raw inputs and on MSC features, weighted per task without "
    "labels), against raw kNN, PyOD "
    "(kNN, LOF, OCSVM, ECOD, COPOD), Isolation Forest and deep kNN baselines. Data formats and full mode: "
    "docs/apps/anomaly.md.",
    AnomalySettings,
    {
        "pretrain": Verb(pretrain_verb, "self-supervised NT-Xent pre-training of the encoder(s) on the unlabelled "
                                        "pool"),
        "fit": Verb(fit_verb, "pre-train if needed, print the epoch-0 sanity ROC-AUC, fine-tune with MSC (and the "
                              "compactness baseline) per normal class / table"),
        "evaluate": Verb(evaluate_verb, "score the test splits with MSC and every baseline; write report.json, "
                                        "report.md and plots"),
        "run": Verb(run_verb, "fit, then evaluate"),
    },
    sweep=True,
    epilog=__doc__,
)


def main(argv: Sequence[str] | None = None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
