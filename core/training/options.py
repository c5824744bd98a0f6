"""Configuration of the apps whose command line is a small argparse front over a settings dataclass.

The convention (``apps/anomaly``, ``apps/speaker``, ``apps/rl``, ``apps/tracking``, ``apps/recommendation``):
settings are layered -- the dataclass defaults (or its ``quick()`` preset), then a YAML file (``--config``), then
command-line flags -- and every field is a flag whose help text states its default and its quick value.

* :func:`load_yaml_options` -- read a YAML mapping of field names; errors name the file (and line);
* :func:`add_dataclass_options` -- one flag per field (``--field-name``; bools as ``--x / --no-x``, lists as
  ``nargs="+"``);
* :func:`options_from_args` -- the layered settings from parsed arguments;
* :func:`run_command` -- run a verb with the apps' exit convention (0; 2 and ``error: ...`` for bad input; 130 on
  Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["add_dataclass_options", "check_run_limits", "field_type", "load_yaml_options", "options_from_args",
           "run_command"]

INTERRUPTED = "interrupted: re-run the same command to resume from the last checkpoint"


def run_command(app: str, body: Callable[[], object], *, started: float | None = None,
                errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)) -> int:
    """Run one verb of an app's command line and turn its outcome into the exit code.

    Bad input (any of ``errors``: the apps' ``DataError`` / ``ConfigError`` are ``ValueError`` s) prints
    ``error: <message>`` on stderr and returns 2 (the verb raises before it writes a partial report); Ctrl-C
    prints how to resume and returns 130; an int returned by ``body`` is the exit code as it is; otherwise 0,
    after ``[app] done in N s`` when ``started`` (a ``perf_counter`` value) is given.
    """
    try:
        rc = body()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    if isinstance(rc, int):  # a verb that sets its own exit code (and prints no timing line)
        return rc
    if started is not None:
        print(f"[{app}] done in {time.perf_counter() - started:.0f} s")
    return 0


def load_yaml_options(path: str | Path, cls: type, error: type[Exception] = ValueError) -> dict[str, Any]:
    """Read a YAML file of ``cls`` (a dataclass) field values; raises ``error`` naming the file (and the line
    of a syntax error) for a missing file, invalid YAML, a non-mapping or unknown keys."""
    path = Path(path)
    if not path.is_file():
        raise error(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping of option: value, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise error(f"{path}: unknown option(s) {unknown}")
    return raw


def field_type(cls: type, f: dataclasses.Field) -> tuple[type, bool]:
    """(element type, is_list) of a dataclass field, seen through ``Optional[...]``."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is not list and args else hint
    if typing.get_origin(base) is list:
        return typing.get_args(base)[0], True
    return base, False


def add_dataclass_options(
    parser: argparse.ArgumentParser, cls: type, help_texts: Mapping[str, str], defaults: Any, quick: Any | None = None,
) -> None:
    """Add one flag per field of ``cls`` to ``parser`` (every default ``None`` = "not given", so the layering of
    :func:`options_from_args` can tell a flag from a default); the help text shows the default and the quick
    value where it differs."""
    for f in dataclasses.fields(cls):
        typ, is_list = field_type(cls, f)
        d = getattr(defaults, f.name)
        q = getattr(quick, f.name) if quick is not None else d
        help_text = help_texts.get(f.name, "") + f" (default: {d}" + (f"; --quick: {q})" if q != d else ")")
        flag = "--" + f.name.replace("_", "-")
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif is_list:
            parser.add_argument(flag, nargs="+", type=typ, default=None, help=help_text, metavar=f.name.upper())
        else:
            parser.add_argument(flag, type=typ, default=None, help=help_text, metavar=f.name.upper())


def options_from_args(args: argparse.Namespace, base: Any, yaml_options: Mapping[str, Any] | None = None) -> Any:
    """``base`` (defaults or the quick preset) updated by ``yaml_options`` and then by every flag given."""
    updates = dict(yaml_options or {})
    for f in dataclasses.fields(base):
        v = getattr(args, f.name, None)
        if v is not None:
            updates[f.name] = v
    return dataclasses.replace(base, **updates)


ACCELERATORS = ("cpu", "cuda", "gpu", "auto")


def check_run_limits(accelerator: str, max_minutes: float | None, error: type[Exception] = ValueError) -> None:
    """Validate the two options every app's training shares: a Lightning accelerator name and an optional
    wall-clock cap in minutes; raises ``error`` naming the option."""
    if accelerator not in ACCELERATORS:
        raise error(f"accelerator must be {' / '.join(ACCELERATORS)}, got {accelerator!r}")
    if max_minutes is not None and (isinstance(max_minutes, bool) or not isinstance(max_minutes, (int, float))
                                    or not max_minutes > 0):
        raise error(f"max_minutes must be a positive number or unset, got {max_minutes!r}")
