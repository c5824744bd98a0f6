"""Command line of the speaker app (the core app runner).

    python -m apps.speaker fit      [--data PATH] [--quick] [--losses am_sym ...]   # self-supervised training
    python -m apps.speaker evaluate [same options] [--eval-data OTHER] [--trials FILE]   # EER / minDCF report
    python -m apps.speaker run      [same options]                 # fit, then evaluate (--losses all: the ablation)
    python -m apps.speaker sweep    --seeds 0 1 2 [same options]   # run once per seed; mean +- std
    python -m apps.speaker embed    FILE_OR_DIR ... --output emb.npy [--checkpoint encoder.pt]
    python -m apps.speaker prepare  --librispeech DIR --fsdd DIR --output DIR   # full mode's data

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags. Re-running an
interrupted command resumes from the last checkpoint of each loss in the run directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from apps.speaker.config import VARIANTS, SpeakerSettings
from core.app import App, InputError, Run, Verb

__all__ = ["APP", "main"]


def _load(run: Run):
    from apps.speaker.train import load_experiment

    s = run.settings
    exp = load_experiment(s)
    run.log(f"{run.verb} on {exp.dataset}: {len(exp.train.speakers)} training speakers, "
            f"{len(exp.heldout.speakers) if exp.heldout else 0} held out; losses {', '.join(s.losses)}; "
            f"seed {s.seed}")
    return exp


def _fit_all(run: Run, exp) -> bool:
    """Fit every loss of ``--losses``; False when ``--max-minutes`` stopped one before its end."""
    from apps.speaker.train import fit_loss

    s = run.settings
    for loss in s.losses:
        if fit_loss(s, exp, loss, run.run_dir.method_dir(loss), run.log) is None:
            return False
    return True


def fit(run: Run) -> None:
    exp = _load(run)
    run.claim()
    if _fit_all(run, exp):
        run.log("fitted; next: python -m apps.speaker evaluate with the same options")


def evaluate(run: Run) -> None:
    from apps.speaker.evaluate import eval_sets, evaluate_encoders

    exp = _load(run)
    evaluate_encoders(run, exp, eval_sets(run.settings, exp), run.log)


def run_(run: Run) -> None:
    from apps.speaker.evaluate import eval_sets, evaluate_encoders

    exp = _load(run)
    sets = eval_sets(run.settings, exp)  # before training: a bad evaluation set or trial list fails at once
    run.claim()
    if not _fit_all(run.child("fit"), exp):
        run.log("not evaluated: training is not finished")
        return
    evaluate_encoders(run, exp, sets, run.log)  # the report of verb "run"


def _embed_arguments(p: argparse._ArgumentGroup) -> None:
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                   help="audio files (.wav/.flac/.ogg) or folders searched recursively")
    p.add_argument("--output", required=True, metavar="FILE.npy",
                   help="the (N, D) float32 embeddings; FILE.txt beside it lists the N files in row order")
    p.add_argument("--checkpoint", default=None, metavar="encoder.pt",
                   help="encoder written by fit (default: RUN_DIR/LOSS/seedSEED/encoder.pt)")
    p.add_argument("--run-dir", default="runs/speaker", help="run directory of the default checkpoint "
                                                             "(default: runs/speaker)")
    p.add_argument("--loss", default="am_sym", choices=tuple(VARIANTS),
                   help="loss variant of the default checkpoint (default: am_sym)")
    p.add_argument("--seed", type=int, default=0, help="seed of the default checkpoint (default: 0)")
    p.add_argument("--max-seconds", type=float, default=None, help="cut longer files to this length")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the idle cores)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")


def embed(run: Run) -> None:
    import torch

    from apps.speaker.embed import embed_files
    from core.app import default_threads

    a = run.args
    if a.threads is not None and a.threads < 1:
        raise InputError(f"--threads must be >= 1, got {a.threads}")
    torch.set_num_threads(a.threads or default_threads())  # a verb without settings: the runner sets none
    checkpoint = a.checkpoint or Path(a.run_dir) / a.loss / f"seed{a.seed}" / "encoder.pt"
    embed_files(a.inputs, a.output, checkpoint, max_seconds=a.max_seconds, progress=a.progress, log=run.log)


def _prepare_arguments(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--librispeech", metavar="DIR", default=None,
                   help="LibriSpeech train-clean-100 as extracted from OpenSLR's train-clean-100.tar.gz (or "
                        "Resemblyzer's audio_data/librispeech_train-clean-100/)")
    p.add_argument("--fsdd", metavar="DIR", default=None,
                   help="a clone of the Free Spoken Digit Dataset (or its recordings/ folder)")
    p.add_argument("--output", dest="out", metavar="DIR", required=True,
                   help="output folder: OUT/librispeech/<speaker>/ and OUT/fsdd/<speaker>/")
    p.add_argument("--fsdd-max-index", type=int, default=45,
                   help="keep FSDD recordings with index below this (default: 45, the 2,700 of the results table)")


def prepare(run: Run) -> None:
    from apps.speaker.prepare import prepare_fsdd, prepare_librispeech

    a = run.args
    if a.librispeech is None and a.fsdd is None:
        raise InputError("nothing to prepare: pass --librispeech DIR and / or --fsdd DIR")
    out = Path(a.out)
    if a.librispeech is not None:
        prepare_librispeech(a.librispeech, out / "librispeech", log=run.log)
    if a.fsdd is not None:
        prepare_fsdd(a.fsdd, out / "fsdd", a.fsdd_max_index, log=run.log)
    run.log(f"full mode: python -m apps.speaker run --config apps/speaker/configs/full.yaml --data {out}/librispeech "
            f"--test-data {out}/fsdd")


APP = App(
    "speaker",
    "Self-supervised speaker verification with margin contrastive losses (Lepage & Dehak): EER / minDCF of "
    "encoders trained without labels, against MFCC and untrained-encoder baselines.",
    SpeakerSettings,
    {
        "fit": Verb(fit, "self-supervised training of one encoder per loss (two crops per utterance, margin "
                         "NT-Xent); resumable"),
        "evaluate": Verb(evaluate, "EER / minDCF of the trained encoders and the baselines: report.json, report.md, "
                                   "plots (with --eval-data: in <run-dir>/eval/<name>/)"),
        "run": Verb(run_, "fit, then evaluate (--losses all: the papers' ablation of the six losses)"),
        "embed": Verb(embed, "audio files in, embeddings out (.npy)", arguments=_embed_arguments, settings=False,
                      trains=False),
        "prepare": Verb(prepare, "copy the downloaded LibriSpeech / FSDD releases into the folders full mode reads",
                        arguments=_prepare_arguments, settings=False, trains=False),
    },
    sweep=True,
    epilog=__doc__,
    eval_data_field="eval_data",
)


def main(argv: Sequence[str] | None = None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
