"""Command line of the RL app, on the core app runner (custom training loops on Lightning Fabric).

    python -m apps.rl run      --quick                             # offline TACO / CPC vs a random encoder
    python -m apps.rl fit      [--data PATH] ...                   # offline: pre-train TACO / CPC on rollouts
    python -m apps.rl evaluate [--data PATH] ...                   # probes + behaviour cloning, report, plots
    python -m apps.rl run      --env cartpole_swingup --aux none taco           # online DrQ-v2 vs DrQ-v2+TACO
    python -m apps.rl sweep    --env cartpole_swingup --seeds 0 1  # every seed; one report, mean ± std

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags.
Re-running an interrupted command resumes from the run directory's checkpoints, exactly. Bad input prints
``error: ...`` and exits with status 2, writing nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from apps.rl.settings import RLSettings
from core.app import App, Run, Verb

__all__ = ["APP", "main", "fit", "evaluate", "fit_and_evaluate"]


def fit(run: Run) -> None:
    from apps.rl.evaluate import fit_offline, fit_online

    (fit_online if run.settings.env else fit_offline)(run)


def evaluate(run: Run) -> None:
    from apps.rl.evaluate import evaluate_offline, evaluate_online

    (evaluate_online if run.settings.env else evaluate_offline)(run)


def fit_and_evaluate(run: Run) -> None:
    if not run.settings.score_only:
        fit(run.child("fit"))
    evaluate(run.child("evaluate"))


APP = App(
    "rl", "State and action representations for RL: TACO and CPC offline on expert rollouts, and online on a "
          "DrQ-v2 agent.", RLSettings, {
              "fit": Verb(fit, "offline: pre-train TACO / CPC encoders on the rollouts (--data); with --env: train "
                               "the online agents (--aux)"),
              "evaluate": Verb(evaluate, "offline: state probe + behaviour cloning of the encoders and a random "
                                         "encoder; with --env: score the online agents; report.json / report.md "
                                         "and plots"),
              "run": Verb(fit_and_evaluate, "fit, then evaluate (--score-only: evaluate only)"),
          }, sweep=True, epilog=__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
