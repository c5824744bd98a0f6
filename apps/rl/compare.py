"""Online comparison: DrQ-v2 vs DrQ-v2 + TACO (or CPC) on one task, several seeds; curves, probe, report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from apps.rl.config import RLConfig
from apps.rl.online import online_run_dir, score_online, train_online
from apps.rl.report import plt, write_report

__all__ = ["compare_online", "NAMES"]

NAMES = {"none": "drqv2", "taco": "drqv2+taco", "cpc": "drqv2+cpc"}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def compare_online(cfg: RLConfig, train: bool = True, started: float | None = None) -> dict:
    """Train (resuming) every ``compare_aux`` x ``seeds`` run, seed-interleaved, then score and report."""
    t0 = started or time.perf_counter()
    runs = [(aux, seed) for seed in cfg.seeds for aux in cfg.compare_aux]
    if train:
        for aux, seed in runs:
            train_online(cfg, aux, seed)
    for aux, seed in runs:
        if not (online_run_dir(cfg, aux, seed) / "last.pt").exists():
            raise FileNotFoundError(f"no trained run {online_run_dir(cfg, aux, seed)}: run the compare verb to train")
    out = Path(cfg.run_dir) / "online" / f"compare_{cfg.env}"
    out.mkdir(parents=True, exist_ok=True)
    scores: dict[str, list[dict]] = {aux: [] for aux in cfg.compare_aux}
    for aux, seed in runs:
        cache = online_run_dir(cfg, aux, seed) / "score.json"
        s = json.loads(cache.read_text()) if cache.exists() else None
        if s is None or s.get("env_steps") != _steps(online_run_dir(cfg, aux, seed), cfg.action_repeat):
            s = score_online(cfg, online_run_dir(cfg, aux, seed))
            cache.write_text(json.dumps(s))
        scores[aux].append({**s, "seed": seed})
    summary = {}
    for aux, ss in scores.items():
        rm, _ = _mean_std([s["return_mean"] for s in ss])
        summary[NAMES[aux]] = {
            "return_mean": rm, "return_std": float(np.std([s["return_mean"] for s in ss])),
            "env_steps": int(np.mean([s["env_steps"] for s in ss])),
            "state_probe_r2": _mean_std([s["state_probe_r2"] for s in ss])[0],
            "state_probe_r2_random_encoder": _mean_std([s["state_probe_r2_random_encoder"] for s in ss])[0],
            "env_steps_per_second": _mean_std([s["env_steps_per_second"] for s in ss])[0],
            "seeds": len(ss),
            "per_seed_return": [s["return_mean"] for s in ss],
        }
    plots = [_plot_curves(out, cfg, scores)]
    main = NAMES[cfg.compare_aux[-1]]
    report = {"app": "rl", "dataset": cfg.env, "method": main,
              "metrics": {k: v for k, v in summary[main].items() if not isinstance(v, list)},
              "baselines": {m: {k: v for k, v in s.items() if not isinstance(v, list)}
                            for m, s in summary.items() if m != main},
              "seconds": time.perf_counter() - t0, "config": cfg.to_dict(), "per_seed": summary,
              "plots": [str(p) for p in plots]}
    notes = [f"return_mean / return_std: mean and std over {len(cfg.seeds)} seeds of each seed's mean return over "
             f"{cfg.eval_episodes} evaluation episode(s); env_steps counts frames (action repeat "
             f"{cfg.action_repeat})",
             "state_probe_r2: ridge probe from the agent's 50-d latent state (critic trunk) to the DMC state "
             "(positions, velocities), held-out evaluation steps; random encoder = an untrained agent's trunk",
             "env_steps_per_second: training wall time incl. updates and rendering; accelerator "
             f"{cfg.accelerator!r}" + (f", {cfg.threads} torch thread(s)" if cfg.threads else "")]
    write_report(out, report, f"Online {cfg.env}: " + " vs ".join(NAMES[a] for a in cfg.compare_aux), notes)
    print(f"[rl] report: {out / 'report.json'}")
    return report


def _steps(run: Path, action_repeat: int) -> int | None:
    try:
        c = json.loads((run / "curve.json").read_text())
        return int(c["agent_steps"]) * action_repeat
    except (OSError, KeyError, IndexError, ValueError):
        return None


def _plot_curves(out: Path, cfg: RLConfig, scores: dict[str, list[dict]]) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"none": "tab:blue", "taco": "tab:red", "cpc": "tab:green"}
    for aux, ss in scores.items():
        for i, s in enumerate(ss):
            f = [p["frames"] for p in s["curve"]]
            r = [p["return_mean"] for p in s["curve"]]
            axes[0].plot(f, r, "-o", color=colors[aux], alpha=0.8, label=NAMES[aux] if i == 0 else None)
            tr = s["train_returns"]
            axes[1].plot([p["frames"] for p in tr], [p["return"] for p in tr], "-", color=colors[aux], alpha=0.8,
                         label=NAMES[aux] if i == 0 else None)
    axes[0].set(xlabel="environment frames", ylabel="evaluation return", title=f"{cfg.env}: evaluation")
    axes[1].set(xlabel="environment frames", ylabel="training episode return", title="training episodes")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
