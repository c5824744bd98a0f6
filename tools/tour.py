"""The tour: run every app in quick mode on its embedded data and report one results table.

    python -m tools.tour                 # everything: the core demo + every apps/<name>/tour.py
    python -m tools.tour --only core     # one entry (repeatable)
    python -m tools.tour --list          # what would run
    python -m tools.tour --full          # full mode (long)

Writes ``<out>/<timestamp>/report.md``, ``report.json``, ``summary.png`` (one panel per entry: the headline
method beside its best baseline) and each entry's plots in ``<out>/<timestamp>/<name>/``. Every row says the
mode it ran in; where quick mode does not show a method's benefit, the row names the full-mode page. Exits
non-zero if an entry failed. Apps join by registering a function with :func:`core.tour.register_tour` in
``apps/<name>/tour.py``; this file never changes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
import time
import traceback

from core import tour as registry

BUILTIN_TOURS = ("core.demo",)


def _register_import_failure(name: str, module: str, tb: str) -> None:
    def failed(out_dir, quick):  # noqa: ARG001 — signature of a tour entry
        raise ImportError(f"could not import {module}:\n{tb}")

    registry.unregister_tour(name)
    registry.register_tour(name)(failed)


def discover_tours() -> list[str]:
    """Import the built-in tour modules and every ``apps.<name>.tour``; return the registered names.

    An app whose tour module fails to import (e.g. a missing optional dependency) is registered as a
    failing entry, so the report shows it instead of the tour crashing.
    """
    for mod in BUILTIN_TOURS:
        importlib.import_module(mod)
    import apps

    for info in sorted(pkgutil.iter_modules(apps.__path__), key=lambda m: m.name):
        if not info.ispkg or info.name.startswith("_"):
            continue
        module = f"apps.{info.name}.tour"
        fresh = module not in sys.modules
        before = set(registry.registered_tours())
        try:
            if importlib.util.find_spec(module) is None:
                continue
            importlib.import_module(module)
        except Exception:
            _register_import_failure(info.name, module, traceback.format_exc())
            continue
        if fresh and not set(registry.registered_tours()) - before:
            print(f"[tour] warning: {module} registered no entry", file=sys.stderr)
    return list(registry.registered_tours())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.tour", description="Run every app's quick mode.")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="run only this entry (repeatable, or comma-separated)")
    p.add_argument("--out", default="runs/tour", help="parent directory of the timestamped report")
    p.add_argument("--full", action="store_true", help="full mode instead of quick mode")
    p.add_argument("--list", action="store_true", help="list the entries and exit")
    a = p.parse_args(argv)
    names = discover_tours()
    if a.list:
        print("\n".join(names))
        return 0
    only = [n for o in a.only for n in o.split(",") if n] if a.only else None
    t0 = time.perf_counter()
    report_dir, results = registry.run_tour(a.out, only=only, quick=not a.full)
    print()
    print(registry.format_table(results))
    print(f"\n[tour] {len(results)} entr{'y' if len(results) == 1 else 'ies'} in "
          f"{time.perf_counter() - t0:.1f} s; report: {report_dir / 'report.md'}")
    mode = registry.mode_name(not a.full)
    behind = [r.name for r in results if any(p["vs_baseline"] in ("loses", "ties") for p in registry.headline(r.rows))]
    if behind:
        print(f"[tour] {mode} mode does not show the headline's benefit in: {', '.join(behind)} "
              "(see the notes; full-mode figures are on the pages they name)")
    failed = [r.name for r in results if r.error]
    if failed:
        print(f"[tour] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
