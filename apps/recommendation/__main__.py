"""Command line of the recommendation app (a small argparse front: MCLRec's three-step update is a custom loop).

    python -m apps.recommendation fit       [--data PATH] [--quick] ...  # train every method (resumable)
    python -m apps.recommendation evaluate  [--data PATH] [--quick] ...  # full-ranking test, report.json/.md, plots
    python -m apps.recommendation run       [--data PATH] [--quick] ...  # fit, then evaluate
    python -m apps.recommendation recommend --items 12 7 33 [--k 10] ... # top-k items for a history (or --user U)

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags.
Re-running an interrupted command resumes from the run directory's checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from apps.recommendation.config import HELP, RecConfig, load_yaml
from apps.recommendation.data import DataError
from core.training.options import add_dataclass_options, options_from_args, run_command

VERBS = {
    "fit": "train SASRec / CL4SRec / DuoRec / MCLRec (each method and seed; early stopping on validation NDCG@10)",
    "evaluate": "full-ranking test of every fitted method and the popularity baseline; write report.json, report.md "
                "and plots",
    "run": "fit, then evaluate",
    "recommend": "top-k items for a history of item ids (--items) or a user of the data (--user), excluding the "
                 "items already seen",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.recommendation",
        description="Sequential recommendation with contrastive learning: SASRec, CL4SRec, DuoRec and MCLRec "
                    "(Qin et al., SIGIR 2023) with one full-softmax loss and one full-ranking evaluation.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")
    defaults, quick = RecConfig(), RecConfig.quick()
    for verb, text in VERBS.items():
        p = sub.add_parser(verb, help=text, description=text, argument_default=None)
        p.add_argument("--config", help="YAML file of options (keys as below, with underscores)")
        p.add_argument("--quick", action="store_true", default=False,
                       help="quick preset (2,000 Beauty users, few epochs; < 2 min on 2 CPU cores)")
        if verb == "recommend":
            p.add_argument("--items", nargs="+", default=None, metavar="ITEM",
                           help="the history, oldest first, as item ids of the data file")
            p.add_argument("--user", default=None,
                           help="a user id of the data file (its whole sequence is the history)")
            p.add_argument("--k", type=int, default=10, help="how many items to return (default: 10)")
            p.add_argument("--method", default=None,
                           help="which fitted model answers (default: the last of --methods)")
        add_dataclass_options(p, RecConfig, HELP, defaults, quick)
    return parser


def config_from_args(args: argparse.Namespace) -> RecConfig:
    cfg = RecConfig.quick() if args.quick else RecConfig()
    cfg = options_from_args(args, cfg, load_yaml(args.config) if args.config else None)
    return cfg.validate()


def _run(args: argparse.Namespace, t0: float) -> int | None:
    import torch

    from apps.recommendation.evaluate import evaluate, recommend
    from apps.recommendation.train import fit, prepare

    cfg = config_from_args(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    exp = prepare(cfg)
    if args.verb == "recommend":
        method = args.method or cfg.methods[-1]
        if method not in cfg.methods:
            raise DataError(f"--method {method!r} is not one of --methods {cfg.methods}")
        recs = recommend(cfg, exp, method=method, seed=cfg.seeds[0], history=args.items, user=args.user, k=args.k)
        print(f"[recommendation] top-{args.k} of {method} (seed {cfg.seeds[0]}) on {exp.data.name}:")
        for rank, (item, score) in enumerate(recs, 1):
            print(f"{rank:3d}  item {item}  score {score:.4f}")
        return 0
    print(f"[recommendation] {args.verb} on {exp.data.name} ({len(exp.data.sequences)} users, "
          f"{exp.data.n_items} items); run dir {exp.root}")
    if args.verb == "fit":
        fit(cfg, exp)
        print("[recommendation] fitted; next: python -m apps.recommendation evaluate with the same options")
    else:
        evaluate(cfg, exp, train=args.verb == "run", started=t0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    return run_command("recommendation", lambda: _run(args, t0), started=t0)


if __name__ == "__main__":
    sys.exit(main())
