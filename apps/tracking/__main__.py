"""Command line of the tracking app (a small argparse front: the pipeline is a multi-stage custom loop).

    python -m apps.tracking fit      [--data PATH] [--quick] ...   # simulate, train embedding + GNN, tune DBSCAN
    python -m apps.tracking evaluate [--data PATH] [--quick] ...   # TrackML score etc.; report.json/.md, plots
    python -m apps.tracking run      [--data PATH] [--quick] ...   # fit, then evaluate
    python -m apps.tracking simulate --out DIR [--events N] [--pileup MU] ...  # write TrackML-format events
    python -m apps.tracking scale    [--hits 2000 10000 ...] ...   # inference time / peak memory vs hits

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags.
Re-running an interrupted command resumes from the run directory's checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from collections.abc import Sequence

from apps.tracking.config import HELP, TrackingConfig, load_yaml
from apps.tracking.data import DataError
from core.training.options import run_command

VERBS = {
    "fit": "simulate training events on the detector geometry (or read --data with --train-source data), train "
           "the contrastive hit embedding, then the GNN edge classifier, then the learned clusterer (set transformer "
           "over pivots) on the frozen GNN; tune the edge cuts, the clusterer threshold and the DBSCAN baseline",
    "evaluate": "reconstruct simulated test events at each --eval-pileup level and the --data events with the GNN "
                "pipeline and the baselines; write report.json, report.md and plots into --run-dir",
    "run": "fit, then evaluate",
    "simulate": "write simulated TrackML-format events (hits, truth, particles + detectors.csv) into --out",
    "scale": "inference time and peak memory of the trained pipeline per event vs number of hits (simulated "
             "events of growing pile-up); writes scaling.json / scaling.png into --run-dir",
}


def _field_type(f: dataclasses.Field) -> tuple[type, bool]:
    hint = typing.get_type_hints(TrackingConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is not list and args else hint
    if typing.get_origin(base) is list:
        return typing.get_args(base)[0], True
    return base, False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.tracking",
        description="Particle tracking on TrackML-format events: contrastive hit embedding + kNN graph + GNN "
                    "edge classifier (HyperTrack losses) + track building, scored with the official TrackML score.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")
    defaults, quick = TrackingConfig(), TrackingConfig.quick()
    for verb, text in VERBS.items():
        p = sub.add_parser(verb, help=text, description=text, argument_default=None)
        p.add_argument("--config", help="YAML file of options (keys as below, with underscores)")
        p.add_argument("--quick", action="store_true", default=False,
                       help="quick preset (8 small simulated training events, few epochs; < 2 min on 2 CPU cores)")
        if verb == "simulate":
            p.add_argument("--out", required=True, help="output folder for eventXXXXXXXXX-*.csv.gz and detectors.csv")
            p.add_argument("--events", type=int, default=1, help="number of events to write (default: 1)")
            p.add_argument("--pileup", type=float, default=10.0, help="pile-up level of the events (default: 10)")
            p.add_argument("--first-seed", type=int, default=0, help="seed of the first event; +1 per event")
            p.add_argument("--plain", action="store_true", help="write plain .csv instead of .csv.gz")
        if verb == "scale":
            p.add_argument("--hits", type=int, nargs="+", default=[2000, 5000, 10000, 25000, 50000, 100000],
                           help="approximate hits per event to measure (default: 2k ... 100k)")
            p.add_argument("--repeats", type=int, default=2, help="timed repetitions per size (best is kept)")
        for f in dataclasses.fields(TrackingConfig):
            typ, is_list = _field_type(f)
            d, q = getattr(defaults, f.name), getattr(quick, f.name)
            help_text = HELP[f.name] + f" (default: {d}" + (f"; --quick: {q})" if q != d else ")")
            flag = "--" + f.name.replace("_", "-")
            if typ is bool:
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            elif is_list:
                p.add_argument(flag, nargs="*" if f.name == "eval_pileup" else "+", type=typ, default=None,
                               help=help_text, metavar=f.name.upper())
            else:
                p.add_argument(flag, type=typ, default=None, help=help_text, metavar=f.name.upper())
    return parser


def config_from_args(args: argparse.Namespace) -> TrackingConfig:
    cfg = TrackingConfig.quick() if args.quick else TrackingConfig()
    updates = load_yaml(args.config) if args.config else {}
    for f in dataclasses.fields(TrackingConfig):
        v = getattr(args, f.name)
        if v is not None:
            updates[f.name] = v
    return dataclasses.replace(cfg, **updates).validate()


def _simulate(cfg: TrackingConfig, args: argparse.Namespace) -> None:
    import shutil
    from pathlib import Path

    from apps.tracking.data import find_detectors, write_event
    from apps.tracking.simulate import Geometry, simulate_event

    if args.events < 1:
        raise DataError(f"--events must be >= 1, got {args.events}")
    out = Path(args.out)
    det = find_detectors(cfg.data)
    geo = Geometry.from_file(det)
    sim = cfg.sim(args.pileup).validate()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(det, out / det.name)
    for i in range(args.events):
        ev = simulate_event(geo, sim, seed=args.first_seed + i, name=f"event{args.first_seed + i:09d}")
        write_event(out / ev.name, ev, compress=not args.plain)
        print(f"[tracking] {out / ev.name}: {ev.n_hits} hits, {len(ev.particles)} particles")


def _run(args: argparse.Namespace, t0: float) -> None:
    import torch

    cfg = config_from_args(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if args.verb == "simulate":
        _simulate(cfg, args)
    elif args.verb == "scale":
        from apps.tracking.scaling import scaling

        scaling(cfg, args.hits, args.repeats)
    elif args.verb == "fit":
        from apps.tracking.data import read_event
        from apps.tracking.train import data_split, fit

        train_p, test_p = data_split(cfg)  # validate --data before any training
        for p in train_p + test_p:
            read_event(p, require_truth=cfg.train_source == "data")
        root = fit(cfg)
        print(f"[tracking] fitted in {root}; next: python -m apps.tracking evaluate with the same options")
    else:
        from apps.tracking.evaluate import evaluate

        evaluate(cfg, train=args.verb == "run", started=t0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    return run_command("tracking", lambda: _run(args, t0), started=t0)


if __name__ == "__main__":
    sys.exit(main())
