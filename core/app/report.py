"""One report format for every app: ``report.json`` (machine-readable) and ``report.md`` (a table to read).

``report.json`` schema (``schema: 1``)::

    app, verb, mode ("quick" | "full"), data, command, machine, seconds, fingerprint, settings,
    metric (the headline metric's key), higher_is_better,
    rows: [{method, seed, dataset, metrics: {name: value}}],          one per method x seed (x dataset)
    summary: [{method, dataset, seeds, metrics: {name: {mean, std}}}], rows grouped over seeds
    baselines: [method names that are baselines], notes: [str], plots: [relative paths]
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.app.files import write_json, write_text

__all__ = ["Report", "summarize", "machine_description", "SCHEMA"]

SCHEMA = 1


def machine_description() -> str:
    """One line: CPU cores (and GPUs) of this machine, the OS and the torch version."""
    import torch

    from core.app.threads import available_cores

    gpus = ""
    if torch.cuda.is_available():
        gpus = f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return (f"{available_cores()} CPU cores{gpus}, {platform.system()} {platform.machine()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)")


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group rows by (method, dataset) and give each metric's mean and (sample) standard deviation over seeds."""
    groups: dict[tuple[str, str | None], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r.get("dataset")), []).append(r)
    out = []
    for (method, dataset), rs in groups.items():
        names = sorted({k for r in rs for k in r["metrics"]}, key=lambda k: list(rs[0]["metrics"]).index(k)
                       if k in rs[0]["metrics"] else 1 << 20)
        metrics = {}
        for k in names:
            vals = [float(r["metrics"][k]) for r in rs if r["metrics"].get(k) is not None]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            if all(isinstance(r["metrics"].get(k), int) and not isinstance(r["metrics"].get(k), bool) for r in rs
                   if r["metrics"].get(k) is not None) and mean == int(mean):
                mean = int(mean)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            metrics[k] = {"mean": mean, "std": std}
        out.append({"method": method, "dataset": dataset, "seeds": sorted(r.get("seed") for r in rs
                                                                            if r.get("seed") is not None),
                    "metrics": metrics})
    return out


def _plain_number(v: Any) -> Any:
    """A metric as a JSON value: ints stay ints, other numbers (numpy / torch scalars) become floats."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, int):
        return v
    return float(v)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4f}"
    return str(v)


@dataclass
class Report:
    """A report being built: add rows, notes and plots, then :meth:`write`."""

    app: str
    metric: str
    higher_is_better: bool = True
    verb: str = "evaluate"
    mode: str = "full"
    data: str = ""
    title: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, method: str, metrics: Mapping[str, Any], *, seed: int | None = None, dataset: str | None = None,
            baseline: bool = False) -> None:
        """One row: ``metrics`` of ``method`` (with ``seed`` / ``dataset`` when the app has several)."""
        self.rows.append({"method": method, "seed": seed, "dataset": dataset,
                          "metrics": {k: _plain_number(v) for k, v in metrics.items()}})
        if baseline and method not in self.baselines:
            self.baselines.append(method)

    def best(self, baselines: bool = False) -> dict[str, Any] | None:
        """The best summary entry on the headline metric among the methods (or the baselines)."""
        cands = [s for s in summarize(self.rows) if (s["method"] in self.baselines) == baselines
                 and self.metric in s["metrics"]]
        if not cands:
            return None
        sign = 1 if self.higher_is_better else -1
        return max(cands, key=lambda s: sign * s["metrics"][self.metric]["mean"])

    def to_dict(self, *, settings: Mapping[str, Any] | None = None, fingerprint: str = "",
                seconds: float | None = None, command: str | None = None) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "app": self.app, "verb": self.verb, "mode": self.mode, "data": self.data,
            "command": command if command is not None else current_command(),
            "machine": machine_description(), "seconds": seconds, "fingerprint": fingerprint,
            "settings": dict(settings or {}), "metric": self.metric, "higher_is_better": self.higher_is_better,
            "rows": self.rows, "summary": summarize(self.rows), "baselines": self.baselines, "notes": self.notes,
            "plots": self.plots, **({"extra": self.extra} if self.extra else {}),
        }

    def markdown(self, report: Mapping[str, Any]) -> str:
        summary = report["summary"]
        names: list[str] = []
        for s in summary:
            names += [k for k in s["metrics"] if k not in names]
        if self.metric in names:
            names.remove(self.metric)
            names.insert(0, self.metric)
        several_seeds = any(len(s["seeds"]) > 1 for s in summary)
        with_dataset = any(s["dataset"] for s in summary)
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        lines = [f"# {self.title or self.app}: {self.verb} ({self.mode} mode)", "",
                 f"- data: {self.data or '-'}", f"- command: `{report['command']}`",
                 f"- machine: {report['machine']}"]
        if report.get("seconds") is not None:
            lines.append(f"- wall time: {report['seconds']:.0f} s")
        lines += [f"- headline metric: {self.metric} ({arrow})", ""]
        head = (["dataset"] if with_dataset else []) + ["method"] + (["seeds"] if several_seeds else []) + names
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in summary:
            cells = ([s["dataset"] or ""] if with_dataset else [])
            cells.append(s["method"] + (" (baseline)" if s["method"] in self.baselines else ""))
            if several_seeds:
                cells.append(str(len(s["seeds"])))
            for k in names:
                m = s["metrics"].get(k)
                if m is None:
                    cells.append("")
                elif len(s["seeds"]) > 1:
                    cells.append(f"{_fmt(m['mean'])} ± {_fmt(m['std'])}")
                else:
                    cells.append(_fmt(m["mean"]))
            lines.append("| " + " | ".join(cells) + " |")
        if several_seeds:
            lines += ["", "Mean ± sample standard deviation over seeds."]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.plots:
            lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in self.plots]
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path, **kwargs: Any) -> dict[str, Any]:
        """Write ``folder/report.json`` and ``folder/report.md`` atomically (main process only); returns the
        JSON object."""
        folder = Path(folder)
        report = self.to_dict(**kwargs)
        write_json(folder / "report.json", report)
        write_text(folder / "report.md", self.markdown(report))
        return report



def current_command() -> str:
    """The command line of this process as a user would type it (``python -m pkg ...``)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        head = ["python", "-m", name]
    else:
        head = ["python", os.path.relpath(sys.argv[0])] if sys.argv and sys.argv[0] else ["python"]
    return shlex.join(head + sys.argv[1:])
