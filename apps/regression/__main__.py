"""Command line of the regression app (deep imbalanced regression with LDS / FDS, ConR and SupReMix).

    python -m apps.regression run      [--quick] [--methods vanilla conr ...] [--data PATH --target NAME] ...
    python -m apps.regression fit      (the same options: trains every method, resumable)
    python -m apps.regression evaluate (the same options: tests the trained methods, writes the report)
    python -m apps.regression sweep    --seeds 0 1 2 [options]   (run once per seed; mean ± std over seeds)
    python -m apps.regression prepare  abalone|sts_b_dir --src DOWNLOADED --output FILE

Every option of :class:`apps.regression.config.RegressionSettings` is a flag (``--help`` of a verb lists them);
``--config`` reads them from YAML (``apps/regression/configs/``); flags win over YAML. Bad input prints
``error: ...`` and exits with status 2, writing nothing.
"""

from __future__ import annotations

import sys

from apps.regression.config import RegressionSettings
from apps.regression.evaluate import evaluate
from apps.regression.prepare import arguments as prepare_arguments
from apps.regression.prepare import prepare
from apps.regression.train import fit
from core.app import App, Run, Verb


def run(ctx: Run) -> None:
    """Fit, then evaluate, every method of ``--methods`` at ``--seed``."""
    fit(ctx.child("fit"))
    evaluate(ctx.child("evaluate"))


APP = App(
    "regression",
    "Deep imbalanced regression (DIR protocol): vanilla, re-weighting, LDS, FDS, ConR and SupReMix on skewed "
    "targets; MAE / MSE / GM overall and per shot group on balanced test splits.",
    RegressionSettings,
    {
        "fit": Verb(fit, "train every method of --methods (each in <run-dir>/<method>/seed<S>; resumes)"),
        "evaluate": Verb(evaluate, "test the trained methods: report.json / report.md, per-bin error and "
                                   "label-histogram plots"),
        "run": Verb(run, "fit, then evaluate"),
        "prepare": Verb(prepare, "turn a downloaded release (UCI abalone.data, STS-B-DIR TSVs) into the app's "
                                 "format", arguments=prepare_arguments, settings=False),
    },
    sweep=True,
    epilog="Quick mode: python -m apps.regression run --quick (abalone, 12 epochs, vanilla / lds_conr / supremix).\n"
           "Full mode: python -m apps.regression sweep --config apps/regression/configs/abalone.yaml --seeds 0 1 2\n"
           "See docs/apps/regression.md.",
)


def main(argv=None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
