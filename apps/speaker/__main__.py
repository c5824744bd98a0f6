"""Command line of the speaker app (a small argparse front).

    python -m apps.speaker fit      [--data PATH] [--quick] [--loss am_sym] ...  # self-supervised training
    python -m apps.speaker evaluate [--data PATH] [--eval-data PATH] [--trials FILE] ...  # EER / minDCF report
    python -m apps.speaker run      [...]     # fit, then evaluate
    python -m apps.speaker ablation [...]     # run every loss variant, then one comparison table
    python -m apps.speaker embed FILE_OR_DIR ... --out emb.npy [--checkpoint encoder.pt]

Settings are layered: defaults (or the ``--quick`` preset), then ``--config FILE.yaml``, then flags.
Re-running an interrupted command resumes from the run directory's last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from collections.abc import Sequence

from apps.speaker.config import HELP, VARIANTS, SpeakerConfig, load_yaml
from core.training.options import run_command

VERBS = {
    "fit": "self-supervised training of the encoder (two crops per utterance, margin NT-Xent); resumable",
    "evaluate": "EER / minDCF of the trained encoder and the baselines; writes report.json, report.md, plots",
    "run": "fit, then evaluate",
    "ablation": "fit and evaluate every loss variant (" + ", ".join(VARIANTS) + "), then write ablation.md/json",
}


def _field_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(SpeakerConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.speaker",
        description="Self-supervised speaker verification with margin contrastive losses (Lepage & Dehak).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join([*VERBS, "embed"]) + "}")
    defaults, quick = SpeakerConfig(), SpeakerConfig.quick()
    for verb, text in VERBS.items():
        p = sub.add_parser(verb, help=text, description=text)
        p.add_argument("--config", help="YAML file of options (keys as below, with underscores)")
        p.add_argument("--quick", action="store_true", default=False,
                       help="quick preset (small ECAPA, few epochs on the embedded data; < 2 min on 2 CPU cores)")
        for f in dataclasses.fields(SpeakerConfig):
            typ = _field_type(f)
            d, q = getattr(defaults, f.name), getattr(quick, f.name)
            help_text = HELP[f.name] + f" (default: {d}" + (f"; --quick: {q})" if q != d else ")")
            flag = "--" + f.name.replace("_", "-")
            if typ is bool:
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                p.add_argument(flag, type=typ, default=None, help=help_text, metavar=f.name.upper())
    e = sub.add_parser("embed", help="audio files in, embeddings out (.npy)",
                       description="Embed audio files with a trained encoder: writes OUT (N, D) float32 and OUT "
                                   "with .txt listing the N files in row order.")
    e.add_argument("inputs", nargs="+", help="audio files (.wav/.flac/.ogg) or folders searched recursively")
    e.add_argument("--out", required=True, help="output .npy file")
    e.add_argument("--checkpoint", default=None,
                   help="encoder.pt written by fit (default: RUN_DIR/LOSS/encoder.pt)")
    e.add_argument("--run-dir", default=defaults.run_dir, help="run directory of the default checkpoint")
    e.add_argument("--loss", default=defaults.loss, help="loss variant of the default checkpoint")
    e.add_argument("--max-seconds", type=float, default=None, help="cut longer files to this length")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> SpeakerConfig:
    cfg = SpeakerConfig.quick() if args.quick else SpeakerConfig()
    updates = load_yaml(args.config) if args.config else {}
    for f in dataclasses.fields(SpeakerConfig):
        v = getattr(args, f.name)
        if v is not None:
            updates[f.name] = v
    return dataclasses.replace(cfg, **updates).validate()


def _run(args: argparse.Namespace, t0: float) -> int | None:
    import torch

    if args.verb == "embed":
        from apps.speaker.embed import embed_files

        if args.threads:
            torch.set_num_threads(args.threads)
        embed_files(args.inputs, args.out, checkpoint=args.checkpoint, run_dir=args.run_dir, loss=args.loss,
                    max_seconds=args.max_seconds, progress=args.progress)
        return 0
    from apps.speaker.evaluate import evaluate
    from apps.speaker.train import fit, prepare

    cfg = config_from_args(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if args.verb == "ablation":
        from apps.speaker.ablation import ablation

        ablation(cfg, started=t0)
    else:
        exp = prepare(cfg)
        print(f"[speaker] {args.verb} on {exp.dataset} ({len(exp.train.speakers)} training speakers, "
              f"{len(exp.heldout.speakers) if exp.heldout else 0} held out); run dir {exp.root}")
        if args.verb == "fit":
            fit(cfg, exp)
            print("[speaker] fitted; next: python -m apps.speaker evaluate with the same options")
        else:
            evaluate(cfg, exp, train=args.verb == "run", started=t0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    return run_command("speaker", lambda: _run(args, t0), started=t0)


if __name__ == "__main__":
    sys.exit(main())
