"""Command line of the RL app (a small argparse front: the training loops are custom, on Lightning Fabric).

    python -m apps.rl fit      [--data PATH] [--quick] ...        # offline TACO / CPC pre-training on rollouts
    python -m apps.rl evaluate [--data PATH] [--quick] ...        # probes + behaviour cloning, report.json/.md, PNGs
    python -m apps.rl run      [--data PATH] [--quick] ...        # fit, then evaluate
    python -m apps.rl fit      --env cartpole_swingup --aux taco  # online DrQ-v2 (+TACO / CPC) agent
    python -m apps.rl evaluate --env cartpole_swingup --aux taco  # its returns, curve and state probe
    python -m apps.rl compare  --env cartpole_swingup --seeds 0 1 # DrQ-v2 vs DrQ-v2+TACO, curves + report

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags.
Re-running an interrupted command resumes from the run directory's checkpoints. Bad input prints
``error: ...`` and exits with status 2, writing no report.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from apps.rl.config import HELP, RLConfig, load_yaml
from apps.rl.data import DataError
from core.training.options import add_dataclass_options, options_from_args, run_command

VERBS = {
    "fit": "offline: pre-train TACO / CPC encoders on the rollouts (--data); with --env: train an online agent",
    "evaluate": "offline: state probe + behaviour cloning of TACO, CPC and a random encoder; with --env: score the "
                "online agent; writes report.json, report.md and plots",
    "run": "fit, then evaluate",
    "compare": "online: train (resuming) and compare --compare-aux agents over --seeds on --env",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.rl",
        description="State and action representations for RL: TACO and CPC on DrQ-v2, offline probes.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")
    defaults, quick = RLConfig(), RLConfig.quick()
    for verb, text in VERBS.items():
        p = sub.add_parser(verb, help=text, description=text)
        p.add_argument("--config", help="YAML file of options (keys as below, with underscores)")
        p.add_argument("--quick", action="store_true", default=False,
                       help="quick preset (embedded Pendulum rollouts, short pre-training; < 2 min on 2 CPU cores)")
        if verb == "compare":
            p.add_argument("--score-only", action="store_true", default=False,
                           help="score and report the runs as they are (no further training)")
        add_dataclass_options(p, RLConfig, HELP, defaults, quick)
    return parser


def config_from_args(args: argparse.Namespace) -> RLConfig:
    cfg = RLConfig.quick() if args.quick else RLConfig()
    cfg = options_from_args(args, cfg, load_yaml(args.config) if args.config else None)
    return cfg.validate()


def _run(args: argparse.Namespace, t0: float) -> None:
    import torch

    from apps.rl import evaluate as ev

    cfg = config_from_args(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if args.verb == "compare":
        if cfg.env is None:
            raise DataError("compare needs --env (a DMC task such as cartpole_swingup)")
        from apps.rl.compare import compare_online

        compare_online(cfg, train=not args.score_only, started=t0)
    elif cfg.env is not None:
        print(f"[rl] {args.verb} online agent ({cfg.aux}) on {cfg.env}, seed {cfg.seed}; run dir {cfg.run_dir}")
        if args.verb in ("fit", "run"):
            print(f"[rl] trained: {ev.fit_online(cfg)}")
        if args.verb in ("evaluate", "run"):
            ev.evaluate_online_report(cfg, started=t0)
    else:
        print(f"[rl] {args.verb} offline on {cfg.data or 'the embedded rollouts'}; run dir {cfg.run_dir}")
        if args.verb == "fit":
            for out in ev.fit_offline(cfg):
                print(f"[rl] pre-trained encoders in {out}")
            print("[rl] fitted; next: python -m apps.rl evaluate with the same options")
        else:
            ev.evaluate_offline_report(cfg, started=t0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    return run_command("rl", lambda: _run(args, t0), started=t0)


if __name__ == "__main__":
    sys.exit(main())
