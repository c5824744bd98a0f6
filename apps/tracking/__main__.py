"""Command line of the tracking app, on the core app runner (:mod:`core.app`).

    python -m apps.tracking fit      [--data PATH] [--quick] ...   # simulate, train embedding + GNN + clusterer, tune
    python -m apps.tracking evaluate [--data PATH] [--quick] ...   # TrackML score etc.; report.json/.md, plots
    python -m apps.tracking run      [--data PATH] [--quick] ...   # fit, then evaluate
    python -m apps.tracking sweep --seeds 0 1 2 [--quick] ...      # run once per seed; one report over the seeds
    python -m apps.tracking simulate --output DIR [--events N] [--pileup MU] ...  # write TrackML-format events
    python -m apps.tracking scale    [--hits 2000 10000 ...] ...   # inference time / peak memory vs hits
    python -m apps.tracking convert --input EVENT.json --output DIR  # per-module JSON -> generic hit files
    python -m apps.tracking simulate-planar --output DIR [--events N]  # straight tracks, forward planes (generic)

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags.
Re-running an interrupted command resumes from the run directory's checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from apps.tracking.config import SimulateSettings, TrackingSettings
from apps.tracking.formats import ConvertSettings
from apps.tracking.planar import PlanarSettings
from core.app import App, Run, Verb

DESCRIPTION = ("Particle tracking on TrackML-format events: contrastive hit embedding + kNN graph + GNN edge "
               "classifier (HyperTrack losses) + track building, scored with the official TrackML score.")


def fit(run: Run) -> int | None:
    from apps.tracking.train import fit as fit_models
    from apps.tracking.train import model_dir

    if fit_models(run):
        run.log(f"fitted in {model_dir(run)}; next: python -m apps.tracking evaluate with the same options")
    return None


def evaluate(run: Run) -> None:
    from apps.tracking.evaluate import evaluate as evaluate_models

    evaluate_models(run)


def run_(run: Run) -> None:
    from apps.tracking.evaluate import evaluate as evaluate_models
    from apps.tracking.evaluate import scored_events
    from apps.tracking.train import fit as fit_models

    real = scored_events(run.settings)  # bad test data fails before any training
    if fit_models(run.child("fit")):
        evaluate_models(run.child("evaluate"), real)


def simulate(run: Run) -> None:
    from pathlib import Path

    from apps.tracking.data import find_detectors, write_event
    from apps.tracking.simulate import Geometry, simulate_event
    from core.app.files import atomic_write

    s = run.settings
    det = find_detectors(s.data)
    geo = Geometry.from_file(det)
    sim = s.sim(s.pileup).validate()
    out = Path(s.output)
    atomic_write(out / det.name, lambda f: f.write(det.read_bytes()))
    sims = []
    for i in range(s.events):
        ev = simulate_event(geo, sim, seed=s.seed + i, name=f"event{s.seed + i:09d}")
        write_event(out / ev.name, ev, compress=not s.plain)
        run.log(f"{out / ev.name}: {ev.n_hits} hits, {len(ev.particles)} particles")
        sims.append(ev)
    if s.compare:
        _compare(s.data, sims)


def _compare(data: str, sims: list) -> None:
    """Print the simulator's event statistics beside those of the real events (means over events)."""
    import numpy as np

    from apps.tracking.data import dataset_name, find_events, read_event
    from apps.tracking.simulate import STAT_NAMES, event_statistics

    real = [event_statistics(read_event(p, require_truth=True)) for p in find_events(data)]
    sim = [event_statistics(ev) for ev in sims]
    print(f"| statistic | {dataset_name(data)} ({len(real)} events) | simulated ({len(sim)} events) |")
    print("|---|---|---|")
    for k, label in STAT_NAMES.items():
        a, b = np.mean([r[k] for r in real]), np.mean([r[k] for r in sim])
        print(f"| {label} | " + " | ".join(f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in (a, b)) + " |")


def convert(run: Run) -> None:
    from apps.tracking.formats import convert_path

    s = run.settings
    for path in convert_path(s.input, s.output, s.format):
        run.log(f"{path}")


def simulate_planar(run: Run) -> None:
    from apps.tracking.formats import write_generic
    from apps.tracking.planar import simulate_planar_event

    s = run.settings
    det = s.detector()
    for i in range(s.events):
        ev = simulate_planar_event(det, seed=s.seed + i, name=f"event{s.seed + i:09d}")
        write_generic(s.output, ev, s.format)
        run.log(f"{s.output}/{ev.name}.hits.{s.format}: {ev.n_hits} hits, {len(ev.particles)} particles")


def _scale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hits", type=int, nargs="+", default=[2000, 5000, 10000, 25000, 50000, 100000],
                   help="approximate hits per event to measure (default: 2k ... 100k)")
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions per size (the best is kept; default: 2)")


def scale(run: Run) -> None:
    from apps.tracking.scaling import check_arguments, scaling

    check_arguments(run.args.hits, run.args.repeats)
    scaling(run, run.args.hits, run.args.repeats)


APP = App("tracking", DESCRIPTION, TrackingSettings, {
    "fit": Verb(fit, "simulate training events on the detector geometry (or read --data with --train-source data), "
                     "train the contrastive hit embedding, then the GNN edge classifier, then the learned clusterer "
                     "(set transformer over pivots) on the frozen GNN; tune the edge cuts, the clusterer threshold "
                     "and the DBSCAN baseline"),
    "evaluate": Verb(evaluate, "reconstruct simulated test events at each --eval-pileup level and the --data events "
                               "(or --eval-data) with the GNN pipeline and the baselines; write report.json, "
                               "report.md and plots"),
    "run": Verb(run_, "fit, then evaluate"),
    "simulate": Verb(simulate, "write simulated TrackML-format events (hits, truth, particles + detectors.csv) into "
                               "--output", settings=SimulateSettings, trains=False),
    "scale": Verb(scale, "inference time and peak memory of the trained pipeline per event vs number of hits "
                         "(simulated events of growing pile-up); writes scaling.json / scaling.png into --run-dir",
                  arguments=_scale_arguments),
    "convert": Verb(convert, "convert per-module JSON events (a file or a folder of *.json) into the generic hit "
                             "format (NAME.hits.csv) in --output", settings=ConvertSettings, trains=False),
    "simulate-planar": Verb(simulate_planar, "write simulated straight-track events of a forward detector (planes "
                                             "at fixed z, no field) in the generic hit format into --output",
                            settings=PlanarSettings, trains=False),
}, sweep=True, epilog=__doc__, eval_data_field="eval_data")


def main(argv: Sequence[str] | None = None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
