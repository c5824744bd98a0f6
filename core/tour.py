"""The tour's registry: every app adds its quick-mode run here, and the tour runs and reports them all.

An app registers one function in ``apps/<name>/tour.py``::

    from core.tour import register_tour

    @register_tour("myapp")
    def tour(out_dir: Path, quick: bool) -> list[dict]:
        ...  # train in quick mode on the embedded default data, evaluate, save plots in out_dir
        return [{"app": "myapp", "dataset": "...", "metric": "...", "value": 0.93,
                 "baseline": 0.71, "baseline_name": "...", "seconds": 42.0, "plots": ["out_dir/x.png"],
                 "higher_is_better": True, "full_mode_ref": "docs/apps/myapp.md"}]

Optional row keys: ``plots`` (paths of the entry's own plots, linked from the report as they are),
``higher_is_better`` (default: inferred from the metric's name, see :func:`higher_is_better`) and
``full_mode_ref`` (the page that documents the full-mode figure; the report points there when quick mode
does not show the method's benefit). The **first row is the entry's headline**: the summary plot shows,
per data set, its method's value beside the best baseline among the rows with the same app and metric.

``python -m tools.tour`` imports every ``apps.<name>.tour`` module (plus the core demo), calls the
registered functions with a fresh ``out_dir`` each, prints one table and writes
``runs/tour/<timestamp>/report.md``, ``report.json`` and ``summary.png`` (one panel per entry). Every row
of the report carries the mode it ran in (``quick`` / ``full``) and whether the method wins, loses or ties
against the row's baseline. Nothing else needs editing.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
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
    "FULL_MODE_REFS",
    "TIE_RTOL",
    "mode_name",
    "higher_is_better",
    "compare_to_baseline",
    "row_note",
    "headline",
    "summary_figure",
]

TourFn = Callable[[Path, bool], list[dict]]
#: keys every result row must have; ``plots`` (list of paths) is optional
ROW_KEYS = ("app", "dataset", "metric", "value", "baseline", "baseline_name", "seconds")
#: where the full-mode figures of built-in entries are documented, for rows that do not carry
#: ``full_mode_ref`` themselves (apps set it in their ``tour.py``)
FULL_MODE_REFS = {"core": "docs/core.md"}
#: a method within this relative distance of its baseline ties it (no benefit shown)
TIE_RTOL = 1e-3

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
        if "higher_is_better" in r and not isinstance(r["higher_is_better"], bool):
            raise ValueError(f"tour entry {name!r}: row {i} 'higher_is_better' must be True or False")
        ref = r.get("full_mode_ref")
        if ref is not None and (not isinstance(ref, str) or not ref.strip()):
            raise ValueError(f"tour entry {name!r}: row {i} 'full_mode_ref' must be a non-empty string or None")
        if r.get("mode", "quick") not in ("quick", "full"):
            raise ValueError(f"tour entry {name!r}: row {i} 'mode' must be 'quick' or 'full'")
    return [dict(r) for r in rows]


def mode_name(quick: bool) -> str:
    """``"quick"`` or ``"full"``: the mode column of the report."""
    return "quick" if quick else "full"


_LOWER_WORDS = re.compile(
    r"(?<![a-z])(eer|mae|mse|rmse|error|errors|loss|nll|fpr|fnr|far|frr|perplexity|latency|regret)(?![a-z])")
_DIRECTION_TEXT = re.compile(r"\s*[,;]?\s*\(?\s*(lower|higher) is better\s*\)?", re.IGNORECASE)


def higher_is_better(row: Mapping[str, Any]) -> bool:
    """Whether a larger ``value`` is better: the row's ``higher_is_better`` key, else inferred from the metric.

    The metric's name decides when the key is absent: "lower is better" / "higher is better" in it, else error-
    like names (EER, MAE, MSE, RMSE, error, loss, ...) are lower-is-better and everything else (accuracy, AUC,
    R^2, HR@k, scores, ...) higher-is-better.
    """
    if isinstance(row.get("higher_is_better"), bool):
        return row["higher_is_better"]
    metric = str(row.get("metric", "")).lower()
    said = _DIRECTION_TEXT.search(metric)
    if said:
        return said.group(1).lower() == "higher"
    return not _LOWER_WORDS.search(metric)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def compare_to_baseline(value: Any, baseline: Any, higher_better: bool = True, rtol: float = TIE_RTOL) -> str | None:
    """``"wins"``, ``"loses"`` or ``"ties"`` (within ``rtol`` relative); ``None`` without a finite pair."""
    if not _finite(value) or not _finite(baseline):
        return None
    value, baseline = float(value), float(baseline)
    if abs(value - baseline) <= rtol * max(abs(value), abs(baseline)) + 1e-12:
        return "ties"
    return "wins" if (value > baseline) == higher_better else "loses"


def row_note(row: Mapping[str, Any], mode: str = "quick") -> str:
    """What the report says next to a row: empty when the method beats its baseline.

    In quick mode a loss or a tie reads "quick mode does not show the benefit; full mode: <full_mode_ref>".
    """
    outcome = compare_to_baseline(row.get("value"), row.get("baseline"), higher_is_better(row))
    if outcome not in ("loses", "ties"):
        return ""
    if mode == "quick":
        ref = row.get("full_mode_ref")
        return "quick mode does not show the benefit; " + (f"full mode: {ref}" if ref else "no full-mode page given")
    return f"{'loses to' if outcome == 'loses' else 'ties'} the baseline in full mode"


def headline(rows: list[Mapping[str, Any]]) -> list[dict]:
    """The entry's headline: per data set, the first row's method beside its best baseline.

    The first row names the headline (app and metric); the rows sharing both are grouped by data set, and each
    group's best baseline (by :func:`higher_is_better`) is kept. Returns one dict per data set with ``app``,
    ``dataset``, ``metric``, ``higher_is_better``, ``value``, ``baseline``, ``baseline_name``, ``vs_baseline``
    and ``full_mode_ref``.
    """
    if not rows:
        return []
    first = rows[0]
    hib = higher_is_better(first)
    pairs: dict[str, dict] = {}
    for r in rows:
        if r["app"] != first["app"] or r["metric"] != first["metric"]:
            continue
        p = pairs.setdefault(str(r["dataset"]), {
            "app": str(r["app"]), "dataset": str(r["dataset"]), "metric": str(r["metric"]), "higher_is_better": hib,
            "value": r["value"], "baseline": None, "baseline_name": None,
            "full_mode_ref": r.get("full_mode_ref") or first.get("full_mode_ref")})
        b = r["baseline"]
        if not _finite(b):
            continue
        if p["baseline"] is None or (b > p["baseline"] if hib else b < p["baseline"]):
            p["baseline"], p["baseline_name"] = b, str(r["baseline_name"])
    for p in pairs.values():
        p["vs_baseline"] = compare_to_baseline(p["value"], p["baseline"], hib)
    return list(pairs.values())


@dataclass
class TourResult:
    """Outcome of one entry: its rows, wall time, the mode it ran in and, if it raised, the traceback."""

    name: str
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    mode: str | None = None  # "quick" / "full"; None: the report's default (quick unless meta says otherwise)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if _is_number(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return str(v)


def _row_mode(res: TourResult, row: Mapping[str, Any] | None, default: str) -> str:
    return str((row or {}).get("mode") or res.mode or default)


def _report_row(res: TourResult, row: Mapping[str, Any], default_mode: str) -> dict:
    """A row as the report shows it: the entry's keys plus mode, direction, outcome and note."""
    out = dict(row)
    out["mode"] = _row_mode(res, row, default_mode)
    out["higher_is_better"] = higher_is_better(row)
    if out.get("full_mode_ref") is None and res.name in FULL_MODE_REFS:
        out["full_mode_ref"] = FULL_MODE_REFS[res.name]
    out["vs_baseline"] = compare_to_baseline(row["value"], row["baseline"], out["higher_is_better"])
    out["note"] = row_note(out, out["mode"]) or None
    return out


def _table_rows(results: Iterable[TourResult], default_mode: str = "quick") -> list[list[str]]:
    out = []
    for res in results:
        if res.error is not None:
            last = res.error.strip().splitlines()[-1] if res.error.strip() else "error"
            out.append([res.name, "-", "FAILED", _row_mode(res, None, default_mode), last[:80], "-", "-",
                        f"{res.seconds:.1f}", ""])
            continue
        for raw in res.rows:
            r = _report_row(res, raw, default_mode)
            base = _fmt(r["baseline"]) + (f" ({r['baseline_name']})" if r["baseline"] is not None else "")
            out.append([str(r["app"]), str(r["dataset"]), str(r["metric"]), r["mode"], _fmt(r["value"]), base,
                        r["vs_baseline"] or "-", f"{float(r['seconds']):.1f}", r["note"] or ""])
    return out


_HEADER = ["app", "dataset", "metric", "mode", "value", "baseline", "vs baseline", "seconds", "note"]


def format_table(results: Iterable[TourResult]) -> str:
    """Fixed-width text table: app, dataset, metric, mode, value, baseline (name), vs baseline, seconds, note."""
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


#: characters per line of the summary plot's labels (longer labels wrap, never get cut)
LABEL_WIDTH = 34
_WIN, _LOSE, _BASE = "tab:blue", "tab:red", "tab:gray"


def _wrap(text: str, width: int = LABEL_WIDTH) -> str:
    return "\n".join(textwrap.wrap(str(text), width=width, break_on_hyphens=False)) or str(text)


def _metric_title(metric: str, higher_better: bool) -> str:
    bare = _DIRECTION_TEXT.sub("", str(metric)).strip(" ,;") or str(metric)
    return f"{bare} ({'higher' if higher_better else 'lower'} is better)"


def _entry_headlines(results: list[TourResult]) -> list[tuple[TourResult, list[dict]]]:
    out = []
    for res in results:
        rows = [] if res.error is not None else [_report_row(res, r, res.mode or "quick") for r in res.rows]
        out.append((res, headline(rows)))
    return out


def _draw_panel(ax: Any, res: TourResult, pairs: list[dict], mode: str) -> None:
    if res.error is not None or not pairs:
        last = res.error.strip().splitlines()[-1] if res.error and res.error.strip() else "no result rows"
        ax.set_axis_off()
        ax.set_title(_wrap(f"{res.name}: FAILED", 2 * LABEL_WIDTH), fontsize=9, color=_LOSE, loc="left")
        ax.text(0.0, 0.5, _wrap(last, 2 * LABEL_WIDTH), transform=ax.transAxes, fontsize=8, va="center")
        return
    hib = pairs[0]["higher_is_better"]
    labels, values, colors, texts = [], [], [], []
    positions, y = [], 0.0
    for p in pairs:
        lost = p["vs_baseline"] in ("loses", "ties")
        labels.append(_wrap(f"{p['app']} on {p['dataset']}"))
        values.append(float(p["value"]) if _finite(p["value"]) else 0.0)
        colors.append(_LOSE if lost else _WIN)
        verdict = {"loses": "  LOSES to baseline", "ties": "  TIES baseline"}.get(p["vs_baseline"] or "", "")
        texts.append(_fmt(p["value"]) + verdict)
        positions.append(y)
        y += 1
        if p["baseline"] is not None:
            labels.append(_wrap(f"best baseline: {p['baseline_name']}"))
            values.append(float(p["baseline"]))
            colors.append(_BASE)
            texts.append(_fmt(p["baseline"]))
            positions.append(y)
            y += 1
        y += 0.5  # gap between data sets
    bars = ax.barh(positions, values, color=colors, height=0.8)
    for bar, color in zip(bars, colors):
        if color == _LOSE:
            bar.set_hatch("//")
            bar.set_edgecolor("black")
    for pos, v, text in zip(positions, values, texts):  # right of the bar, or of zero for a negative one
        ax.annotate(text, (max(v, 0.0), pos), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(positions, labels)
    ax.tick_params(axis="y", labelsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.invert_yaxis()
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    ax.set_xlim(lo - (0.05 * span if lo < 0 else 0.0), hi + 0.6 * span)  # room for the value labels
    ax.axvline(0.0, color="black", linewidth=0.6)
    title = f"{res.name}: {_metric_title(pairs[0]['metric'], hib)}"
    losing = [p for p in pairs if p["vs_baseline"] in ("loses", "ties")]
    if losing:
        ref = losing[0].get("full_mode_ref")
        what = f"{mode} mode does not show the benefit" + (f"; full mode: {ref}" if ref and mode == "quick" else "")
        title += "\n" + _wrap("LOSES: " + what, 2 * LABEL_WIDTH)
        for side in ax.spines.values():
            side.set_edgecolor(_LOSE)
            side.set_linewidth(1.5)
    ax.set_title(title, fontsize=9, loc="left", color=_LOSE if losing else "black")


def summary_figure(results: Iterable[TourResult], default_mode: str = "quick") -> Any:
    """The summary plot: one panel (axes) per entry, its headline method's value beside its best baseline.

    Horizontal bars; labels wrap instead of being cut; each panel's title names the metric and whether higher or
    lower is better; a headline that loses to (or ties) its best baseline is drawn red and hatched, and the title
    says so. A failed entry gets a panel with its error. Returns a :class:`matplotlib.figure.Figure` (not attached
    to pyplot), or ``None`` without entries.
    """
    results = list(results)
    if not results:
        return None
    from matplotlib.figure import Figure

    panels = _entry_headlines(results)
    n = len(panels)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)

    def height(res: TourResult, pairs: list[dict]) -> float:
        lines = sum(_wrap(f"{p['app']} on {p['dataset']}").count("\n") + 1 + (p["baseline"] is not None) * 2
                    for p in pairs)
        return 1.0 + 0.17 * max(lines, 3) + 0.25 * len(pairs)

    heights = [max(height(*panels[i]) for i in range(r * ncols, min(n, (r + 1) * ncols))) for r in range(nrows)]
    fig = Figure(figsize=(8.0 * ncols, sum(heights) + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (res, pairs) in zip(axes.flat, panels):
        _draw_panel(ax, res, pairs, res.mode or default_mode)
    for ax in list(axes.flat)[n:]:
        fig.delaxes(ax)
    fig.suptitle(f"Tour summary ({default_mode} mode): headline method vs best baseline per entry", fontsize=11)
    return fig


def _summary_plot(path: Path, results: list[TourResult], default_mode: str = "quick") -> Path | None:
    fig = summary_figure(results, default_mode)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    return path


def write_report(report_dir: Path, results: list[TourResult], meta: Mapping[str, Any] | None = None) -> None:
    """Write ``report.md``, ``report.json`` and ``summary.png`` into ``report_dir``.

    Every row carries its ``mode`` (``quick`` / ``full``: the entry's :attr:`TourResult.mode`, else ``meta["mode"]``
    or ``meta["quick"]``, else quick), ``higher_is_better``, ``vs_baseline`` (wins / loses / ties) and a ``note``
    where the method does not beat its baseline (in quick mode: the page with the full-mode figure).
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    default_mode = str(meta.get("mode") or mode_name(bool(meta.get("quick", True))))
    results = [res if res.mode else TourResult(res.name, res.rows, res.seconds, res.error, default_mode)
               for res in results]
    entries = []
    for res, pairs in _entry_headlines(results):
        rows = []
        for r in res.rows:
            row = {k: v for k, v in _report_row(res, r, default_mode).items() if k != "plots"}
            row["plots"] = _relative_plots(r, report_dir, report_dir / res.name)
            rows.append(row)
        entries.append({"name": res.name, "mode": res.mode, "seconds": res.seconds, "error": res.error,
                        "headline": pairs, "rows": rows})
    summary = _summary_plot(report_dir / "summary.png", results, default_mode)
    doc = {"meta": meta, "entries": entries, "summary_plot": summary.name if summary else None}
    (report_dir / "report.json").write_text(json.dumps(_json_safe(doc), indent=2))

    md = ["# Tour report", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    if default_mode == "quick":
        md += ["", "Quick mode trains for minutes on CPU to show that each app runs end to end; it is not meant to "
               "reproduce the methods' gains. Where a row's method does not beat its baseline, the note names the "
               "page with the full-mode figure."]
    md += ["", "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    for cells in _table_rows(results, default_mode):
        md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    md.append("")
    if summary:
        md += ["![summary](summary.png)", ""]
    heads = []
    for e in entries:
        for p in e["headline"]:
            base = f"{_fmt(p['baseline'])} ({p['baseline_name']})" if p["baseline"] is not None else "no baseline"
            line = (f"- **{e['name']}**, {_metric_title(p['metric'], p['higher_is_better'])} on {p['dataset']}: "
                    f"{p['app']} {_fmt(p['value'])} vs best baseline {base}: {p['vs_baseline'] or '-'}")
            note = row_note(p, e["mode"])
            heads.append(line + (f"; {note}" if note else ""))
    if heads:
        md += ["## Headlines", "", *heads, ""]
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
        quick: passed to every entry (quick mode: minutes on CPU); every row gets ``mode`` quick / full.
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
    mode = mode_name(quick)
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
            for r in rows:  # the tour knows how it called the entry
                r["mode"] = mode
                if r.get("full_mode_ref") is None and name in FULL_MODE_REFS:
                    r["full_mode_ref"] = FULL_MODE_REFS[name]
            results.append(TourResult(name, rows, time.perf_counter() - t0, mode=mode))
        except Exception:  # one failing app must not hide the others' results
            results.append(TourResult(name, [], time.perf_counter() - t0, traceback.format_exc(), mode))
            if echo:
                echo(results[-1].error or "")
        if echo:
            status = "FAILED" if results[-1].error else "done"
            echo(f"[tour] {name} {status} in {results[-1].seconds:.1f} s")
    meta = {"quick": quick, "mode": mode, "entries": list(todo), "total_seconds": round(time.perf_counter() - t_all, 1),
            "started": report_dir.name}
    write_report(report_dir, results, meta)
    return report_dir, results
