"""Settings of an app: one dataclass whose field metadata carries the help text, the valid range or choices and
whether the field changes the trained model.

An app declares its settings as a subclass of :class:`AppSettings` (the flags every app shares) with one
:func:`option` per field::

    @dataclass
    class MySettings(AppSettings):
        epochs: int = option(10, help="training epochs", low=1)
        temperature: float = option(0.1, help="InfoNCE temperature", low=0, low_open=True)
        report_plots: bool = option(True, help="draw plots", model=False)

The runner turns every field into a flag (``--epochs``; bools as ``--x/--no-x``; lists as ``nargs="+"``), layers
the values (the dataclass defaults or the app's quick preset, then a ``--config`` YAML file, then flags) and
checks them against the metadata before anything is written. Fields with ``model=True`` (the default) form the
run directory's fingerprint: a run directory holds models of one fingerprint only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import yaml

from core.app.errors import InputError

__all__ = ["AppSettings", "option", "field_type", "load_yaml", "layer", "fingerprint_fields", "fingerprint",
           "ACCELERATORS", "STRATEGIES", "PRECISIONS"]

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true", "fsdp")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true", "64")


def option(default: Any = MISSING, *, help: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, choices: Sequence[Any] | None = None,
           model: bool = True, default_factory: Any = MISSING, flag: bool = True) -> Any:
    """A settings field with its metadata.

    Args:
        default / default_factory: the default value (a factory for lists).
        help: one line for ``--help``.
        low, high: valid range of a number (or of every element of a list); inclusive unless ``low_open`` /
            ``high_open``. ``None`` values are always allowed for ``Optional`` fields.
        choices: the allowed values (of the field, or of every element of a list).
        model: whether the field changes the trained model (part of the run fingerprint). Paths of outputs,
            threads, progress bars and hardware flags do not.
        flag: expose the field as a command-line flag (``False``: YAML only).
    """
    if isinstance(default, (list, dict, set)):
        value = default
        default, default_factory = MISSING, lambda: type(value)(value)
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open,
            "choices": tuple(choices) if choices is not None else None, "model": model, "flag": flag}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def field_type(cls: type, f: dataclasses.Field) -> tuple[type, bool, bool]:
    """(element type, is_list, is_optional) of a dataclass field."""
    hint = typing.get_type_hints(cls)[f.name]
    optional = False
    args = typing.get_args(hint)
    if type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional


def _check_value(name: str, value: Any, typ: type, meta: Mapping[str, Any]) -> Any:
    """One (scalar) value against its type and metadata; returns it converted (int -> float)."""
    if typ is bool:
        if not isinstance(value, bool):
            raise InputError(f"{name} must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name} must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"{name} must be finite, got {value!r}")
    elif typ is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # YAML reads `normal: 0` as an int
        if not isinstance(value, str):
            raise InputError(f"{name} must be a string, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        raise InputError(f"{name} must be {'>' if meta.get('low_open') else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if meta.get("high_open") else value > high):
        raise InputError(f"{name} must be {'<' if meta.get('high_open') else '<='} {high}, got {value!r}")
    return value


@dataclass
class AppSettings:
    """The settings every app shares (one spelling everywhere). Subclass it and add the app's fields."""

    data: str = option("", help="data: a path in the app's format (see docs/apps/<app>.md) or an embedded "
                                "dataset name")
    run_dir: str = option("", help="run directory (checkpoints, fit histories, report); a re-run resumes there",
                          model=False)
    seed: int = option(0, help="seed of initialisation, data order and augmentation (each seed's models live in "
                               "their own folder of the run directory)", low=0, model=False)
    threads: int | None = option(None, help="torch CPU threads per process (default: the idle cores divided by "
                                            "the processes started, printed at start)", low=1, model=False)
    max_minutes: float | None = option(None, help="wall-clock cap on the verb's training, in minutes; a capped run "
                                                  "resumes when re-run with a larger cap",
                                       low=0, low_open=True, model=False)
    progress: bool = option(True, help="show progress bars", model=False)
    accelerator: str = option("auto", help="Lightning accelerator", choices=ACCELERATORS, model=False)
    devices: int = option(1, help="devices (processes) per node; > 1 trains data-parallel with negatives "
                                  "gathered from every device", low=1, model=False)
    num_nodes: int = option(1, help="machines (started by torchrun / SLURM on each node)", low=1, model=False)
    strategy: str = option("auto", help="Lightning strategy ('auto' is DDP when devices x nodes > 1)",
                           choices=STRATEGIES, model=False)
    precision: str = option("32-true", help="Lightning precision", choices=PRECISIONS, model=False)

    def check(self) -> None:
        """Cross-field checks of an app (raise :class:`InputError`); the per-field metadata is checked before."""

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def validate(self) -> AppSettings:
        """Check every field against its type and metadata, then :meth:`check`; returns ``self``."""
        for f in dataclasses.fields(self):
            typ, is_list, optional = field_type(type(self), f)
            value = getattr(self, f.name)
            if value is None:
                if not optional:
                    raise InputError(f"{f.name} must be set")
                continue
            if is_list:
                if isinstance(value, tuple):
                    value = list(value)
                if not isinstance(value, list):
                    raise InputError(f"{f.name} must be a list, got {value!r}")
                value = [_check_value(f.name, v, typ, f.metadata) for v in value]
            elif typ in (bool, int, float, str):
                value = _check_value(f.name, value, typ, f.metadata)
            setattr(self, f.name, value)
        self.check()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain JSON value."""
        return _json_values(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> AppSettings:
        return dataclasses.replace(self, **changes)


def _json_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(values), default=str))


def fingerprint_fields(settings: AppSettings) -> dict[str, Any]:
    """The fields that change the trained model (``model=True``), as plain JSON values."""
    return _json_values({f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
                         if f.metadata.get("model", True)})


def fingerprint(settings: AppSettings) -> str:
    """A short hash of :func:`fingerprint_fields` (stable across runs and machines)."""
    blob = json.dumps(fingerprint_fields(settings), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a YAML file of ``cls`` field values (underscores or dashes); errors name the file (and line) for a
    missing file, invalid YAML, a non-mapping or unknown keys."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of option: value, got {type(raw).__name__}")
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise InputError(f"{path}: unknown option(s) {unknown}")
    return raw


def layer(base: AppSettings, *updates: Mapping[str, Any]) -> AppSettings:
    """``base`` updated by each mapping in turn (``None`` values of a mapping of flags mean "not given")."""
    merged: dict[str, Any] = {}
    for u in updates:
        merged.update(u)
    return dataclasses.replace(base, **merged)
