"""One report format for every app: ``report.json`` (machine-readable) and ``report.md`` (a table to read).

``report.json`` schema (``schema: 1``)::

    app, verb, mode ("quick" | "full"), data, command, machine, seconds, fingerprint, settings,
    metric (the headline metric's key), higher_is_better,
    rows: [{method, seed, dataset, metrics: {name: value}}],          one per method x seed (x dataset)
    summary: [{method, dataset, seeds, metrics: {name: {mean, std}}}], rows grouped over seeds
    baselines: [method names that are baselines], notes: [str], plots: [relative paths]
    headline: the app's default method (or null), versus: [{dataset, baseline, headline, baseline_value,
      difference, outcome}] (the headline method against each baseline per data set, on ``metric``; see
      :meth:`Report.versus`), versus_summary: [{baseline, wins, ties, losses, datasets, headline_mean,
      baseline_mean}]
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

__all__ = ["Report", "summarize", "machine_description", "outcome", "SCHEMA", "TIE_RTOL"]

SCHEMA = 1
#: two values within this relative distance tie (one seed each)
TIE_RTOL = 1e-3


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


def outcome(value: float, baseline: float, higher_is_better: bool = True, *, spread: float = 0.0,
            rtol: float = TIE_RTOL) -> str:
    """``"wins"``, ``"ties"`` or ``"loses"``: ``value`` against ``baseline``.

    A tie is a difference within ``rtol`` of the larger magnitude or within ``spread`` (the noise of the two
    figures, e.g. the larger of their standard deviations over seeds).
    """
    diff = float(value) - float(baseline)
    if abs(diff) <= max(rtol * max(abs(value), abs(baseline)) + 1e-12, spread):
        return "ties"
    return "wins" if (diff > 0) == higher_is_better else "loses"


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
    #: the app's default method: the report then says, per data set, where it wins and loses against each
    #: baseline (:meth:`versus`)
    headline: str | None = None

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

    def versus(self) -> list[dict[str, Any]]:
        """The headline method against each baseline on the headline metric, one entry per (data set, baseline)
        where both have the metric: ``dataset, baseline, headline, baseline_value, difference`` (headline minus
        baseline, means over seeds) and ``outcome`` (``wins`` / ``ties`` / ``loses``; with several seeds a
        difference within the larger standard deviation over seeds is a tie)."""
        if not self.headline or not self.baselines:
            return []
        summ = {(s["method"], s["dataset"]): s for s in summarize(self.rows)}
        out = []
        for (method, dataset), h in summ.items():
            if method != self.headline or self.metric not in h["metrics"]:
                continue
            for b in self.baselines:
                bs = summ.get((b, dataset))
                if bs is None or self.metric not in bs["metrics"]:
                    continue
                hm, bm = h["metrics"][self.metric], bs["metrics"][self.metric]
                if not all(math.isfinite(float(v)) for v in (hm["mean"], bm["mean"])):
                    continue
                spread = max(hm["std"], bm["std"]) if len(h["seeds"]) > 1 or len(bs["seeds"]) > 1 else 0.0
                out.append({"dataset": dataset, "baseline": b, "headline": hm["mean"], "baseline_value": bm["mean"],
                            "difference": hm["mean"] - bm["mean"],
                            "outcome": outcome(hm["mean"], bm["mean"], self.higher_is_better, spread=spread)})
        return out

    def versus_summary(self, versus: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Per baseline: wins / ties / losses of the headline method over the data sets, and both means."""
        versus = self.versus() if versus is None else versus
        out = []
        for b in self.baselines:
            vs = [v for v in versus if v["baseline"] == b]
            if not vs:
                continue
            count = {k: sum(v["outcome"] == o for v in vs) for k, o in (("wins", "wins"), ("ties", "ties"),
                                                                             ("losses", "loses"))}
            out.append({"baseline": b, **count, "datasets": len(vs),
                        "headline_mean": sum(v["headline"] for v in vs) / len(vs),
                        "baseline_mean": sum(v["baseline_value"] for v in vs) / len(vs)})
        return out

    def to_dict(self, *, settings: Mapping[str, Any] | None = None, fingerprint: str = "",
                seconds: float | None = None, command: str | None = None) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "app": self.app, "verb": self.verb, "mode": self.mode, "data": self.data,
            "command": command if command is not None else current_command(),
            "machine": machine_description(), "seconds": seconds, "fingerprint": fingerprint,
            "settings": dict(settings or {}), "metric": self.metric, "higher_is_better": self.higher_is_better,
            "rows": self.rows, "summary": summarize(self.rows), "baselines": self.baselines, "notes": self.notes,
            "plots": self.plots, "headline": self.headline, "versus": (versus := self.versus()),
            "versus_summary": self.versus_summary(versus), **({"extra": self.extra} if self.extra else {}),
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
        lines += self._versus_markdown(report)
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.plots:
            lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in self.plots]
        return "\n".join(lines) + "\n"

    def _versus_markdown(self, report: Mapping[str, Any]) -> list[str]:
        versus, summary = report.get("versus") or [], report.get("versus_summary") or []
        if not versus:
            return []
        sign = {"wins": "wins", "ties": "ties", "loses": "LOSES"}
        lines = ["", f"## {self.headline} against each baseline ({self.metric})", "",
                 "| baseline | wins | ties | losses | data sets | mean " + self.headline + " | mean baseline |",
                 "|---|---|---|---|---|---|---|"]
        for s in summary:
            lines.append(f"| {s['baseline']} | {s['wins']} | {s['ties']} | {s['losses']} | {s['datasets']} | "
                         f"{_fmt(s['headline_mean'])} | {_fmt(s['baseline_mean'])} |")
        datasets = list(dict.fromkeys(v["dataset"] for v in versus))
        if len(datasets) > 1 or datasets != [None]:
            baselines = [s["baseline"] for s in summary]
            cell = {(v["dataset"], v["baseline"]): v for v in versus}
            lines += ["", "| dataset | " + " | ".join(baselines) + " |", "|" + "---|" * (len(baselines) + 1)]
            for d in datasets:
                cells = []
                for b in baselines:
                    v = cell.get((d, b))
                    cells.append("" if v is None else f"{sign[v['outcome']]} ({v['difference']:+.4g})")
                lines.append(f"| {d} | " + " | ".join(cells) + " |")
        arrow = "higher" if self.higher_is_better else "lower"
        lines += ["", f"Difference = {self.headline} minus baseline ({arrow} is better); a difference within the "
                  "larger standard deviation over seeds (or 0.1 % with one seed) is a tie."]
        return lines

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
