"""Wall time of ``python -m apps.recommendation run --quick`` with the runner's default thread count (the idle
cores) against ``--threads 1``: the two runs one after the other, each in a fresh run directory, then the ratio
and whether their test metrics agree.

    python -m tools.bench_threads                 # extra flags go to both runs: ... -- --seed 1
    python -m tools.bench_threads --keep --root runs/bench_threads
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(run_dir: Path, threads: list[str], extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "apps.recommendation", "run", "--quick", "--no-progress", "--run-dir", str(run_dir),
           *threads, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = re.search(r"(\d+) torch thread\(s\) per process", proc.stdout)
    report = json.loads((run_dir / "report.json").read_text())
    metrics = {r["method"]: r["metrics"] for r in report["rows"]}
    return {"seconds": seconds, "threads": int(m.group(1)) if m else None, "metrics": metrics,
            "headline": report["metric"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="folder of the two run directories (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    p.add_argument("extra", nargs="*", help="flags passed to both runs (after --)")
    a = p.parse_args(argv)
    root = Path(a.root) if a.root else Path(tempfile.mkdtemp(prefix="bench_threads_"))
    dirs = {"default": root / "default_threads", "one": root / "threads1"}
    for d in dirs.values():
        if d.exists():
            sys.exit(f"{d} exists: pass another --root (each run must start from scratch)")
    try:
        default = run_once(dirs["default"], [], a.extra)
        one = run_once(dirs["one"], ["--threads", "1"], a.extra)
    finally:
        if not a.keep:
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)
            if not a.root:
                shutil.rmtree(root, ignore_errors=True)
    key = default["headline"]
    diff = max(abs(default["metrics"][m][k] - one["metrics"][m][k]) for m in one["metrics"]
               for k in one["metrics"][m] if k in default["metrics"].get(m, {}))
    print("| threads | wall s | " + " | ".join(f"{m} {key}" for m in one["metrics"]) + " |")
    print("|---|---|" + "---|" * len(one["metrics"]))
    for r in (default, one):
        print(f"| {r['threads']} | {r['seconds']:.1f} | "
              + " | ".join(f"{r['metrics'][m][key]:.4f}" for m in one["metrics"]) + " |")
    print(f"ratio default / 1 thread: {default['seconds'] / one['seconds']:.2f} (default = {default['threads']} "
          f"thread(s)); largest metric difference {diff:.2g}"
          + (" (identical)" if diff == 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
