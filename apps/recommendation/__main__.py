"""Command line of the recommendation app (on the core app runner, :mod:`core.app`).

    python -m apps.recommendation fit       [--data PATH] [--quick] [--seed S] ...  # train every method (resumable)
    python -m apps.recommendation evaluate  [--data PATH] [--quick] [--seed S] ...  # full-ranking test, report, plots
    python -m apps.recommendation run       [--data PATH] [--quick] [--seed S] ...  # fit, then evaluate
    python -m apps.recommendation sweep     --seeds 0 1 2 [--quick] ...              # run per seed; mean ± std report
    python -m apps.recommendation recommend --items 12 7 33 [--k 10] [--method M]    # top-k items for a history

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags. Each method x
seed lives in ``<run-dir>/<method>/seed<S>/``; re-running an interrupted command resumes from its checkpoints.
``recommend`` answers with the fitted method of the best validation NDCG@10 unless ``--method`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apps.recommendation.config import RecConfig
from apps.recommendation.model import METHODS
from core.app import App, Run, Verb

EXAMPLES = """examples:
  python -m apps.recommendation run --quick --threads 1
  python -m apps.recommendation sweep --quick --seeds 0 1 --threads 1
  python -m apps.recommendation fit --config apps/recommendation/configs/beauty_prefix.yaml --methods sasrec
  python -m apps.recommendation recommend --quick --items 84 85 87 --k 10
"""


def _folders(run: Run, methods: list[str] | None = None) -> dict[str, Path]:
    """method -> ``<run-dir>/<method>/seed<S>`` for the run's seed."""
    return {m: run.run_dir.method_dir(m) for m in (methods or run.settings.methods)}


def _prepare(run: Run):
    from apps.recommendation.train import prepare

    exp = prepare(run.settings)
    run.log(f"{run.verb} on {exp.data.name} ({len(exp.data.sequences):,} users, {exp.data.n_items:,} items, "
            f"seed {run.settings.seed}); run dir {run.run_dir.path}")
    return exp


def _fit(run: Run, exp) -> None:
    from apps.recommendation.train import fit_method
    from core.app.hardware import barrier

    run.claim()
    for method, folder in _folders(run).items():
        fit_method(run.settings, exp, method, folder, log=run.log)
        barrier()  # DDP: model.pt (written by rank 0) exists for every rank before it moves on


def _evaluate(run: Run, exp) -> None:
    from apps.recommendation.evaluate import HEADLINE, check_fitted, evaluate_methods

    folders = _folders(run)
    check_fitted(run.settings, folders)
    if not run.is_main:  # DDP: rank 0 tests and writes; the others wait at the runner's barrier
        return
    out = run.report_dir or run.run_dir.path
    report = run.report(HEADLINE, title=f"Sequential recommendation: {exp.data.name}")
    evaluate_methods(run.settings, exp, folders, report, out, log=run.log)
    run.write_report(report)
    run.log(f"report: {out / 'report.md'}")


def fit(run: Run) -> None:
    _fit(run, _prepare(run))
    run.log("fitted; next: python -m apps.recommendation evaluate with the same options")


def evaluate(run: Run) -> None:
    _evaluate(run, _prepare(run))


def run_(run: Run) -> None:
    exp = _prepare(run)
    _fit(run.child("fit"), exp)
    _evaluate(run.child("evaluate"), exp)


def recommend(run: Run) -> None:
    from apps.recommendation.evaluate import NAMES, best_fitted_method
    from apps.recommendation.evaluate import recommend as top_k
    from apps.recommendation.train import prepare

    s, a = run.settings, run.args
    exp = prepare(s)
    if a.method:
        method, why = a.method, "--method"
    else:
        method, scores = best_fitted_method(s, _folders(run))
        shown = ", ".join(f"{NAMES[m]} {'-' if v is None else f'{v:.4f}'}" for m, v in scores.items())
        why = f"best validation NDCG@10 of the fitted methods: {shown}"
    recs = top_k(s, exp, run.run_dir.method_dir(method), method, history=a.items, user=a.user, k=a.k)
    print(f"[recommendation] top-{a.k} of {method} (seed {s.seed}; {why}) on {exp.data.name}:")
    for rank, (item, score) in enumerate(recs, 1):
        print(f"{rank:3d}  item {item}  score {score:.4f}")


def _recommend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", nargs="+", default=None, metavar="ITEM",
                   help="the history, oldest first, as item ids of the data file")
    p.add_argument("--user", default=None, help="a user id of the data file (its whole sequence is the history)")
    p.add_argument("--k", type=int, default=10, help="how many items to return (default: 10)")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="which fitted model answers (default: the fitted method with the best validation NDCG@10)")


APP = App("recommendation", "Sequential recommendation with contrastive learning: SASRec, CL4SRec, DuoRec and MCLRec "
                            "(Qin et al., SIGIR 2023) with one full-softmax loss and one full-ranking evaluation.",
          RecConfig, {
              "fit": Verb(fit, "train SASRec / CL4SRec / DuoRec / MCLRec (each method; early stopping on validation "
                               "NDCG@10; resumable)"),
              "evaluate": Verb(evaluate, "full-ranking test of every fitted method; MCLRec (the headline) against the "
                                         "baselines Pop and SASRec; write report.json, report.md and plots"),
              "run": Verb(run_, "fit, then evaluate"),
              "recommend": Verb(recommend, "top-k items for a history of item ids (--items) or a user of the data "
                                           "(--user), excluding the items already seen", arguments=_recommend_arguments,
                                trains=False),
          }, sweep=True, epilog=EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
