"""Writing report.json / report.md and the plots of a run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["write_report", "plt", "clean"]


def clean(x: Any) -> Any:
    """NaN/inf -> None recursively (report.json stays valid JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_report(out: Path, report: dict, title: str, notes: list[str] | None = None) -> None:
    """report.json (the project's schema) and report.md (metric table, baselines, plots) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report = clean(report)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "report.json")
    names = list(report["metrics"])
    lines = [f"# {title}", "", f"dataset: `{report['dataset']}` - {report['seconds']:.0f} s", "",
             "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
             f"| **{report['method']}** | " + " | ".join(_fmt(report["metrics"][n]) for n in names) + " |"]
    for m, vals in report["baselines"].items():
        lines.append(f"| {m} | " + " | ".join(_fmt(vals.get(n, "")) for n in names) + " |")
    lines += [""] + [f"- {n}" for n in notes or []] + [""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in report.get("plots", [])]
    (out / "report.md").write_text("\n".join(lines) + "\n")
