"""Each app's quick mode on one process and on two (``--accelerator cpu --devices 2 --strategy ddp``, gloo), side
by side in one run: the headline metric (seeds 0, 1 and 2 on one process give the seed noise) and the wall time.

    python -m tools.bench_app_devices                      # every app; writes tools/results/app_devices.{md,json}
    python -m tools.bench_app_devices --apps regression rl-online --out /tmp/x

Every run uses ``--threads 1`` (two processes on a 2-core machine) and its own temporary run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> (module, extra arguments of the quick run, per-device batch flags halved: the same global batch and
# steps per epoch on two processes as on one; None where the app has no batch to halve)
APPS: dict[str, tuple[str, list[str], list[str] | None]] = {
    "anomaly": ("apps.anomaly", [], ["--batch-size", "32", "--pretrain-batch-size", "128"]),
    "regression": ("apps.regression", [], ["--batch-size", "128", "--supremix-batch-size", "32"]),
    "speaker": ("apps.speaker", [], ["--batch-size", "16"]),
    "tracking": ("apps.tracking", [], None),  # one event per step: two processes take half the steps
    "recommendation": ("apps.recommendation", [], ["--batch-size", "32"]),
    "rl-offline": ("apps.rl", [], ["--pretrain-batch-size", "24"]),
    "rl-online": ("apps.rl", ["--env", "Pendulum-v1", "--aux", "taco"], ["--batch-size", "16"]),
}
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
RUNS = [("1 process, seed 0", 0, [], False), ("1 process, seed 1", 1, [], False), ("1 process, seed 2", 2, [], False),
        ("2 processes (DDP), seed 0", 0, DDP, False), ("2 processes, batch halved, seed 0", 0, DDP, True)]


def headline(report: dict) -> tuple[str, str, float | None]:
    """(method, metric, value) of the report's first non-baseline method on its first data set."""
    rows = [r for r in report["rows"] if r["method"] not in report.get("baselines", [])]
    if not rows:
        return "", report["metric"], None
    first = rows[0]
    same = [r for r in rows if r["method"] == first["method"] and r.get("dataset") == first.get("dataset")]
    v = same[0]["metrics"].get(report["metric"])
    return first["method"] + (f" ({first['dataset']})" if first.get("dataset") else ""), report["metric"], v


def run_one(module: str, extra: list[str], seed: int, hw: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", module, "run", "--quick", "--seed", str(seed), "--threads", "1", "--no-progress",
           "--run-dir", str(run_dir), *extra, *hw]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MUJOCO_GL": os.environ.get("MUJOCO_GL",
                                                                                                     "egl")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    out = {"command": " ".join(cmd[1:]), "seconds": seconds, "returncode": proc.returncode}
    if proc.returncode != 0:
        out["error"] = proc.stderr[-1500:]
        return out
    report = json.loads((run_dir / "report.json").read_text())
    out["method"], out["metric"], out["value"] = headline(report)
    out["higher_is_better"] = report["higher_is_better"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--apps", nargs="+", default=list(APPS), choices=list(APPS))
    p.add_argument("--out", default=str(REPO / "tools" / "results"), help="folder of app_devices.md / .json")
    a = p.parse_args(argv)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.apps:
            module, extra, halved = APPS[name]
            results[name] = []
            for label, seed, hw, halve in RUNS:
                if halve and halved is None:
                    continue
                r = run_one(module, extra + (halved if halve else []), seed, hw,
                            Path(tmp) / f"{name}-{len(results[name])}")
                r["run"] = label
                results[name].append(r)
                print(f"{name:15s} {label:28s} {r.get('value')} {r['seconds']:.0f} s"
                      + (f"  ERROR {r['error'][-300:]}" if "error" in r else ""), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "app_devices.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Quick mode on one process and on two (DDP, gloo)", "",
             f"`python -m tools.bench_app_devices`; {os.cpu_count()} CPU cores, every process `--threads 1`.", "",
             "Seed noise: the largest difference between seeds 0, 1 and 2 on one process; a two-process run is "
             "within it when its difference from seed 0 (same seed) is no larger. `--batch-size` is per device "
             "(Lightning's convention), so two processes train on twice the global batch with half the steps per "
             "epoch; the last value column halves the per-device batch to keep the one-process schedule.", "",
             "| app | headline (method: metric) | seeds 0 / 1 / 2 | 2 processes, seed 0 | 2 processes, batch halved "
             "| within seed noise | wall s: 1 process / 2 processes |", "|---|---|---|---|---|---|---|"]
    for name, rs in results.items():
        vals = [r.get("value") for r in rs]
        if any(v is None for v in vals):
            lines.append(f"| {name} | failed: {next((r.get('error', '')[-80:] for r in rs if 'error' in r), '')!r}"
                         " | | | | | |")
            continue
        seeds, two = vals[:3], vals[3:]
        noise = max(seeds) - min(seeds)
        verdict = ", ".join(("yes" if abs(v - seeds[0]) <= noise else f"no ({v - seeds[0]:+.4f})") for v in two)
        halved_cell = f"{two[1]:.4f}" if len(two) > 1 else "n/a"
        lines.append(f"| {name} | {rs[0]['method']}: {rs[0]['metric']} "
                     f"({'higher' if rs[0]['higher_is_better'] else 'lower'} is better) | "
                     f"{' / '.join(f'{v:.4f}' for v in seeds)} | {two[0]:.4f} | {halved_cell} | {verdict} | "
                     f"{rs[0]['seconds']:.0f} / {rs[3]['seconds']:.0f} |")
    (out / "app_devices.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
