"""The run directory: one folder per setting, with its fingerprint, and the layout of methods and seeds.

    <run-dir>/settings.json          the settings that change the model (written once, on claim)
    <run-dir>/<method>/seed<S>/      one trained model per method and seed (checkpoints/, fit.json, model.pt)
    <run-dir>/report.json, report.md the report of `evaluate` / `run` (of `sweep`: every seed, mean ± std)
    <run-dir>/eval/<data>/           the report of `evaluate` on other data (never overwrites the run's own)

Nothing is written before the settings are validated and the verb has read its data: :meth:`RunDir.check` only
reads; :meth:`RunDir.claim` writes ``settings.json`` (main process only).
"""

from __future__ import annotations

import re
from pathlib import Path

from core.app.errors import InputError
from core.app.files import read_json, write_json
from core.app.settings import AppSettings, fingerprint, fingerprint_fields

__all__ = ["RunDir", "slug"]

SETTINGS_FILE = "settings.json"


def slug(text: str) -> str:
    """A folder name for a data path or name (``../x/events.csv.gz`` -> ``events.csv.gz``)."""
    name = Path(str(text).rstrip("/")).name or str(text)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


class RunDir:
    """A run directory for one setting (its fingerprint: the fields with ``model=True``)."""

    def __init__(self, path: str | Path, settings: AppSettings) -> None:
        self.path = Path(path)
        self.settings = settings

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    def check(self) -> None:
        """Raise :class:`InputError` when the folder holds a run made with other settings (naming them)."""
        path = self.path / SETTINGS_FILE
        if not path.is_file():
            return
        stored = read_json(path, "run settings")
        if not isinstance(stored, dict) or "settings" not in stored:
            raise InputError(f"{path} is not a run settings file; delete it or pass another --run-dir")
        have = stored["settings"]
        want = fingerprint_fields(self.settings)
        # a setting added after the run was made counts as its default value
        defaults = fingerprint_fields(type(self.settings)())
        have = {**{k: v for k, v in defaults.items() if k not in have}, **have}
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            shown = ", ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in diff[:4])
            more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
            raise InputError(f"{self.path} holds a run made with other settings ({shown}{more}); pass another "
                             f"--run-dir or delete it")

    def claim(self) -> None:
        """Check, then record the settings in ``settings.json`` if the folder has none (main process only)."""
        self.check()
        path = self.path / SETTINGS_FILE
        if not path.is_file():
            write_json(path, {"fingerprint": self.fingerprint, "settings": fingerprint_fields(self.settings),
                              "app_settings_class": type(self.settings).__qualname__})

    def method_dir(self, method: str | None = None, seed: int | None = None) -> Path:
        """``<run-dir>/<method>/seed<S>`` (``method`` and ``seed`` default to none / the settings' seed)."""
        seed = self.settings.seed if seed is None else seed
        base = self.path / method if method else self.path
        return base / f"seed{seed}"

    def eval_dir(self, data: str) -> Path:
        """Where `evaluate` on data other than the run's writes its report: ``<run-dir>/eval/<data>``."""
        return self.path / "eval" / slug(data)

