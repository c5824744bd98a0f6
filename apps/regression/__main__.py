"""Command line of the regression app (deep imbalanced regression with ConR and SupReMix).

    python -m apps.regression fit      [--config FILE] [--data PATH --target NAME] [--method M] [--quick] ...
    python -m apps.regression evaluate --run_dir DIR   (or the same options as fit: the run they name)
    python -m apps.regression compare  [--methods a,b,...] [--seeds 0,1,2] [--quick] ...

Every option of :class:`apps.regression.config.RegressionConfig` is a flag (``--help`` lists them);
``--config`` reads them from YAML (e.g. ``apps/regression/configs/abalone.yaml``); flags win over YAML.
Bad input prints ``error: ...`` and exits with status 2, writing no report.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence

from apps.regression.config import QUICK, ConfigError, RegressionConfig, load_yaml
from core.training.options import run_command

_VERBS = {
    "fit": "train one method (resumes from <run_dir>/checkpoints/last.ckpt), then evaluate it",
    "evaluate": "evaluate a trained run: report.json, report.md, per-bin error and label-histogram plots",
    "compare": "fit + evaluate several methods x seeds on one data set; one mean +- std table",
}


def _arg_type(tp: typing.Any):
    base = tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        base = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(base) is list:
        inner = typing.get_args(base)[0]
        return lambda s: [inner(v) for v in s.split(",") if v.strip()]
    if base is bool:
        return lambda s: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[s.lower()]
    return base


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apps.regression", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True, metavar="{fit,evaluate,compare}")
    hints = typing.get_type_hints(RegressionConfig)
    for verb, text in _VERBS.items():
        s = sub.add_parser(verb, help=text, description=text)
        s.add_argument("--config", help="YAML file of options (see apps/regression/configs/)")
        if verb == "compare":
            s.add_argument("--methods", default="vanilla,lds,fds,lds_fds,conr,lds_conr,supremix",
                           help="comma-separated method presets [default: %(default)s]")
            s.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds [default: %(default)s]")
            s.add_argument("--focus", default=None, help="method whose metrics fill report.json 'metrics' "
                           "(default: the first one that is not vanilla); the others are its baselines")
        for f in dataclasses.fields(RegressionConfig):
            tp = hints[f.name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            h = f.metadata.get("help", "") + f" [default: {default}]"
            if tp is bool or (typing.get_args(tp) and set(typing.get_args(tp)) == {bool, type(None)}):
                s.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None, help=h)
            else:
                conv = _arg_type(tp)
                if "list" in str(tp):
                    h += " (comma-separated)"
                s.add_argument(f"--{f.name}", type=conv, default=None, help=h)
    return p


def config_from_args(a: argparse.Namespace) -> RegressionConfig:
    values: dict = {}
    if a.config:
        values.update({k: v for k, v in load_yaml(a.config).items() if k not in ("methods", "seeds", "focus")})
    quick = a.quick if a.quick is not None else values.get("quick", False)
    if quick:
        values.update(QUICK)
        values["quick"] = True
    for f in dataclasses.fields(RegressionConfig):
        v = getattr(a, f.name, None)
        if v is not None:
            values[f.name] = v
    try:
        return RegressionConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def _run(a: argparse.Namespace) -> None:
    cfg = config_from_args(a)
    if a.verb == "fit":
        from apps.regression.evaluate import evaluate
        from apps.regression.train import fit

        evaluate(fit(cfg))
    elif a.verb == "evaluate":
        from apps.regression.config import resolve
        from apps.regression.evaluate import evaluate

        evaluate(resolve(cfg).default_run_dir())
    else:
        from apps.regression.compare import compare

        y = load_yaml(a.config) if a.config else {}
        methods = y.get("methods") if a.methods == build_parser_default("methods") and "methods" in y else a.methods
        seeds = y.get("seeds") if a.seeds == build_parser_default("seeds") and "seeds" in y else a.seeds
        methods = methods.split(",") if isinstance(methods, str) else list(methods)
        seeds = [int(s) for s in seeds.split(",")] if isinstance(seeds, str) else [int(s) for s in seeds]
        compare(cfg, [m.strip() for m in methods if m.strip()], seeds, focus=a.focus or y.get("focus"))


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return run_command("regression", lambda: _run(a))


def build_parser_default(name: str) -> str:
    return {"methods": "vanilla,lds,fds,lds_fds,conr,lds_conr,supremix", "seeds": "0,1,2"}[name]


if __name__ == "__main__":
    sys.exit(main())
