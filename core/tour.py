"""The tour's registry: every app adds its quick-mode run here, and the tour runs and reports them all.

An app registers one function in ``apps/<name>/tour.py``::

    from core.tour import register_tour

    @register_tour("myapp")
    def tour(out_dir: Path, quick: bool) -> list[dict]:
        ...  # train in quick mode on the embedded default data, evaluate, save plots in out_dir
        return [{"app": "myapp", "dataset": "...", "metric": "...", "value": 0.93,
                 "baseline": 0.71, "baseline_name": "...", "seconds": 42.0, "plots": ["out_dir/x.png"]}]

``python -m tools.tour`` imports every ``apps.<name>.tour`` module (plus the core demo), calls the
registered functions with a fresh ``out_dir`` each, prints one table and writes
``runs/tour/<timestamp>/report.md``, ``report.json`` and ``summary.png``. Nothing else needs editing.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TourFn",
    "TourResult",
    "ROW_KEYS",
    "register_tour",
    "registered_tours",
    "unregister_tour",
    "validate_rows",
    "run_tour",
    "format_table",
    "write_report",
]

TourFn = Callable[[Path, bool], list[dict]]
#: keys every result row must have; ``plots`` (list of paths) is optional
ROW_KEYS = ("app", "dataset", "metric", "value", "baseline", "baseline_name", "seconds")

_REGISTRY: dict[str, TourFn] = {}


def register_tour(name: str) -> Callable[[TourFn], TourFn]:
    """Decorator: register ``fn(out_dir: Path, quick: bool) -> list[dict]`` as tour entry ``name``."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"tour name must be a non-empty string usable as a directory name, got {name!r}")

    def decorator(fn: TourFn) -> TourFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            old = _REGISTRY[name]
            if (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) != (
                getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
            ):
                raise ValueError(f"tour entry {name!r} is already registered by {old.__module__}")
        _REGISTRY[name] = fn
        return fn

    return decorator


def registered_tours() -> dict[str, TourFn]:
    """A copy of the registry, in registration order."""
    return dict(_REGISTRY)


def unregister_tour(name: str) -> None:
    """Remove an entry (no error if absent)."""
    _REGISTRY.pop(name, None)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_rows(name: str, rows: Any) -> list[dict]:
    """Check that ``rows`` is a non-empty list of dicts with :data:`ROW_KEYS`; numbers where numbers go."""
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"tour entry {name!r} must return a non-empty list of dicts, got {rows!r}")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise ValueError(f"tour entry {name!r}: row {i} is not a dict")
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"tour entry {name!r}: row {i} lacks {missing}")
        if not _is_number(r["value"]) or not _is_number(r["seconds"]):
            raise ValueError(f"tour entry {name!r}: row {i} needs numeric 'value' and 'seconds'")
        if r["baseline"] is not None and not _is_number(r["baseline"]):
            raise ValueError(f"tour entry {name!r}: row {i} 'baseline' must be a number or None")
    return [dict(r) for r in rows]


@dataclass
class TourResult:
    """Outcome of one entry: its rows, wall time and, if it raised, the traceback."""

    name: str
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if _is_number(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return str(v)


def _table_rows(results: Iterable[TourResult]) -> list[list[str]]:
    out = []
    for res in results:
        if res.error is not None:
            last = res.error.strip().splitlines()[-1] if res.error.strip() else "error"
            out.append([res.name, "-", "FAILED", last[:80], "-", f"{res.seconds:.1f}"])
            continue
        for r in res.rows:
            base = _fmt(r["baseline"]) + (f" ({r['baseline_name']})" if r["baseline"] is not None else "")
            out.append([str(r["app"]), str(r["dataset"]), str(r["metric"]), _fmt(r["value"]), base,
                        f"{float(r['seconds']):.1f}"])
    return out


_HEADER = ["app", "dataset", "metric", "value", "baseline", "seconds"]


def format_table(results: Iterable[TourResult]) -> str:
    """Fixed-width text table: app, dataset, metric, value, baseline (name), seconds."""
    rows = _table_rows(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(_HEADER)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(_HEADER), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return _json_safe(v.item())
    return v


def _relative_plots(row: Mapping[str, Any], report_dir: Path, entry_dir: Path) -> list[str]:
    plots = []
    for p in row.get("plots") or []:
        p = Path(p)
        if not p.is_absolute() and not p.exists():
            p = entry_dir / p
        try:
            plots.append(str(p.resolve().relative_to(report_dir.resolve())))
        except ValueError:
            plots.append(str(p))
    return plots


def _summary_plot(path: Path, results: list[TourResult]) -> Path | None:
    rows = [r for res in results for r in res.rows if res.error is None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        names, vals = ["value"], [float(r["value"])]
        if r["baseline"] is not None:
            names.append(str(r["baseline_name"])[:18])
            vals.append(float(r["baseline"]))
        bars = ax.bar(names, vals, color=["tab:blue", "tab:gray"][: len(vals)])
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_title(f"{r['app']}\n{r['metric']}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report_dir: Path, results: list[TourResult], meta: Mapping[str, Any] | None = None) -> None:
    """Write ``report.md``, ``report.json`` and ``summary.png`` into ``report_dir``."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    entries = []
    for res in results:
        rows = []
        for r in res.rows:
            row = {k: v for k, v in r.items() if k != "plots"}
            row["plots"] = _relative_plots(r, report_dir, report_dir / res.name)
            rows.append(row)
        entries.append({"name": res.name, "seconds": res.seconds, "error": res.error, "rows": rows})
    summary = _summary_plot(report_dir / "summary.png", results)
    doc = {"meta": meta, "entries": entries, "summary_plot": summary.name if summary else None}
    (report_dir / "report.json").write_text(json.dumps(_json_safe(doc), indent=2))

    md = ["# Tour report", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    md += ["", "| app | dataset | metric | value | baseline | seconds |", "|---|---|---|---|---|---|"]
    for cells in _table_rows(results):
        md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    md.append("")
    if summary:
        md += ["![summary](summary.png)", ""]
    for e in entries:
        plots = sorted({p for r in e["rows"] for p in r["plots"]})
        if plots or e["error"]:
            md += [f"## {e['name']}", ""]
        for p in plots:
            md += [f"![{Path(p).stem}]({p})", ""]
        if e["error"]:
            md += ["```", e["error"].rstrip(), "```", ""]
    (report_dir / "report.md").write_text("\n".join(md))


def _new_report_dir(out_root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d, k = out_root / stamp, 1
    while d.exists():
        d, k = out_root / f"{stamp}-{k}", k + 1
    d.mkdir(parents=True)
    return d


def run_tour(
    out_root: str | Path = "runs/tour",
    *,
    only: Iterable[str] | None = None,
    quick: bool = True,
    entries: Mapping[str, TourFn] | None = None,
    echo: Callable[[str], None] | None = print,
) -> tuple[Path, list[TourResult]]:
    """Run registered entries (or ``entries``), each in ``<out_root>/<timestamp>/<name>/``, and report.

    An entry that raises is recorded as failed (traceback in the report) and the others still run.

    Args:
        out_root: parent of the timestamped report directory.
        only: names to run (default: all).
        quick: passed to every entry (quick mode: minutes on CPU).
        entries: run these instead of the registry.
        echo: progress printer (``None``: silent).

    Returns:
        ``(report_dir, results)``.
    """
    todo = dict(entries if entries is not None else _REGISTRY)
    if only is not None:
        only = list(only)
        unknown = [n for n in only if n not in todo]
        if unknown:
            raise ValueError(f"unknown tour entries {unknown}; available: {sorted(todo)}")
        todo = {n: todo[n] for n in only}
    report_dir = _new_report_dir(Path(out_root))
    results: list[TourResult] = []
    t_all = time.perf_counter()
    for name, fn in todo.items():
        if echo:
            echo(f"[tour] {name} ...")
        entry_dir = report_dir / name
        entry_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            rows = validate_rows(name, fn(entry_dir, quick))
            results.append(TourResult(name, rows, time.perf_counter() - t0))
        except Exception:  # one failing app must not hide the others' results
            results.append(TourResult(name, [], time.perf_counter() - t0, traceback.format_exc()))
            if echo:
                echo(results[-1].error or "")
        if echo:
            status = "FAILED" if results[-1].error else "done"
            echo(f"[tour] {name} {status} in {results[-1].seconds:.1f} s")
    meta = {"quick": quick, "entries": list(todo), "total_seconds": round(time.perf_counter() - t_all, 1),
            "started": report_dir.name}
    write_report(report_dir, results, meta)
    return report_dir, results
