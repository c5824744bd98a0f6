"""Command line of the anomaly app (a small argparse front: the pipeline is a multi-stage custom loop).

    python -m apps.anomaly pretrain [--data PATH] [--quick] ...   # NT-Xent pre-training only
    python -m apps.anomaly fit      [--data PATH] [--quick] ...   # pre-train if needed, MSC + baseline fine-tunes
    python -m apps.anomaly evaluate [--data PATH] [--quick] ...   # scores, baselines, report.json/.md, plots
    python -m apps.anomaly run      [--data PATH] [--quick] ...   # fit, then evaluate

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags.
Re-running an interrupted command resumes from the run directory's checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from apps.anomaly.config import HELP, AnomalyConfig, load_yaml
from core.training.options import add_dataclass_options, options_from_args, run_command

VERBS = {
    "pretrain": "self-supervised NT-Xent pre-training of the encoder(s) on the unlabelled pool",
    "fit": "pre-train if needed, print the epoch-0 sanity ROC-AUC, fine-tune with MSC (and the compactness "
           "baseline) per normal class / table",
    "evaluate": "score the test splits with MSC and every baseline; write report.json, report.md and plots",
    "run": "fit, then evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.anomaly",
        description="One-class anomaly detection with the mean-shifted contrastive loss (Reiss & Hoshen 2023).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")
    defaults, quick = AnomalyConfig(), AnomalyConfig.quick()
    for verb, text in VERBS.items():
        p = sub.add_parser(verb, help=text, description=text,
                           argument_default=None)
        p.add_argument("--config", help="YAML file of options (keys as below, with underscores)")
        p.add_argument("--quick", action="store_true", default=False,
                       help="quick preset (one digit / one table, small subset, few epochs; < 2 min on 2 CPU cores)")
        add_dataclass_options(p, AnomalyConfig, HELP, defaults, quick)
    return parser


def config_from_args(args: argparse.Namespace) -> AnomalyConfig:
    cfg = AnomalyConfig.quick() if args.quick else AnomalyConfig()
    cfg = options_from_args(args, cfg, load_yaml(args.config) if args.config else None)
    if cfg.normal is not None:
        cfg.normal = [str(n) for n in cfg.normal]
    return cfg.validate()


def _run(args: argparse.Namespace, t0: float) -> None:
    import torch

    from apps.anomaly.evaluate import evaluate
    from apps.anomaly.train import fit, prepare, pretrain_only

    cfg = config_from_args(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    exp = prepare(cfg, quick=args.quick)
    print(f"[anomaly] {args.verb} on {exp.dataset} ({exp.kind}, {len(exp.tasks)} task(s)); run dir {exp.root}")
    if args.verb == "pretrain":
        for p in pretrain_only(cfg, exp):
            print(f"[anomaly] pre-trained encoder: {p}")
    elif args.verb == "fit":
        fit(cfg, exp)
        print("[anomaly] fitted; next: python -m apps.anomaly evaluate with the same options")
    else:
        evaluate(cfg, exp, train=args.verb == "run", started=t0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    return run_command("anomaly", lambda: _run(args, t0), started=t0)


if __name__ == "__main__":
    sys.exit(main())
