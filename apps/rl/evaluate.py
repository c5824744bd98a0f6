"""Evaluation entry points: the offline comparison (TACO / CPC / random encoder) and one online agent."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from apps.rl.config import RLConfig
from apps.rl.data import load_rollouts, resolve_data
from apps.rl.offline import evaluate_offline, offline_dir
from apps.rl.online import online_run_dir, score_online, train_online
from apps.rl.report import plt, write_report

__all__ = ["fit_offline", "evaluate_offline_report", "fit_online", "evaluate_online_report"]

LABELS = {"taco": "TACO", "cpc": "CPC", "random": "random encoder"}


def _methods(cfg: RLConfig) -> list[str]:
    return [m for m in cfg.methods if m != "random"] + ["random"]


def _datasets(cfg: RLConfig):
    return [load_rollouts(p, cfg.max_episodes) for p in resolve_data(cfg.data)]


def fit_offline(cfg: RLConfig) -> list[Path]:
    """Pre-train every method on every data set (resuming); returns the data sets' run directories."""
    from apps.rl.offline import prepare_offline, pretrain

    outs = []
    for ro in _datasets(cfg):
        out = offline_dir(cfg.run_dir, ro.name)
        seq_len = cfg.cpc_seq_len if "cpc" in cfg.methods else 0
        data = prepare_offline(ro, cfg.image_size, cfg.test_fraction, cfg.multistep, cfg.nstep, cfg.gamma,
                               seq_len, cfg.seed)
        for m in cfg.methods:
            if m != "random":
                pretrain(m, data, cfg, out)
        outs.append(out)
    return outs


def evaluate_offline_report(cfg: RLConfig, started: float | None = None) -> dict:
    """Pre-train if needed, probe + BC every encoder on every data set, write report.json/.md and plots."""
    t0 = started or time.perf_counter()
    rollouts = _datasets(cfg)  # load (and validate) everything before writing anything
    methods = _methods(cfg)
    per: dict[str, dict] = {}
    for ro in rollouts:
        per[ro.name] = evaluate_offline(cfg, ro, methods, offline_dir(cfg.run_dir, ro.name))
    out = Path(cfg.run_dir) / "offline"
    main = methods[0]
    single = len(per) == 1

    def metrics_of(method: str) -> dict:
        m: dict[str, float] = {}
        for name, res in per.items():
            r, d = res[method], res["_dataset"]
            vals = {"return_mean": r.get("bc_return_mean", float("nan")),
                    "return_std": r.get("bc_return_std", float("nan")),
                    "env_steps": d["steps"], "state_probe_r2": r["state_probe_r2"]}
            m.update(vals if single else {f"{name}/{k}": v for k, v in vals.items()})
        if not single:
            m["state_probe_r2"] = float(np.mean([res[method]["state_probe_r2"] for res in per.values()]))
        return m

    plots = [_plot_bars(out, per, methods), _plot_losses(out, per, methods)]
    report = {"app": "rl", "dataset": "+".join(per), "method": main, "metrics": metrics_of(main),
              "baselines": {m: metrics_of(m) for m in methods[1:]},
              "seconds": time.perf_counter() - t0, "config": cfg.to_dict(),
              "datasets": {k: v["_dataset"] for k, v in per.items()},
              "per_dim_r2": {k: {m: v[m]["state_probe_r2_per_dim"] for m in methods} for k, v in per.items()},
              "plots": [str(p) for p in plots]}
    notes = ["state_probe_r2: ridge probe from the frozen 50-d latent z = G(f(o_t)) (3 rendered frames) to the "
             "true state, fitted on training episodes, R^2 = 1 - MSE/Var on held-out episodes, mean over state "
             "dimensions",
             "return_mean / return_std: behaviour-cloning policy (MLP on the frozen z) rolled out in the "
             f"gymnasium task from rendered frames, {cfg.bc_episodes} episodes; the dataset's expert return: "
             + ", ".join(f"{k} {v['_dataset']['expert_return']:.1f}" for k, v in per.items()),
             "env_steps: transitions in the data set"]
    write_report(out, report, "Offline representations: " + " vs ".join(LABELS[m] for m in methods), notes)
    print(f"[rl] report: {out / 'report.json'}")
    return report


def _plot_bars(out: Path, per: dict, methods: list[str]) -> Path:
    """Probe R^2 per data set and method; then one panel per data set with the BC returns and the expert's."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(per)
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(4.5 * (1 + len(names)), 4))
    w = 0.8 / len(methods)
    for j, m in enumerate(methods):
        x = np.arange(len(names)) + j * w
        axes[0].bar(x, [per[n][m]["state_probe_r2"] for n in names], w, label=LABELS[m])
    axes[0].set_xticks(np.arange(len(names)) + 0.4 - w / 2, names)
    axes[0].set_title("state-probe R^2 (held-out episodes)")
    axes[0].legend()
    axes[0].grid(alpha=0.3, axis="y")
    for ax, n in zip(axes[1:], names, strict=True):
        vals = [per[n][m].get("bc_return_mean", np.nan) for m in methods]
        errs = [per[n][m].get("bc_return_std", 0.0) for m in methods]
        ax.bar(range(len(methods)), vals, yerr=errs, color=[f"C{j}" for j in range(len(methods))])
        ax.axhline(per[n]["_dataset"]["expert_return"], ls="--", color="k", label="expert (data)")
        ax.set_xticks(range(len(methods)), [LABELS[m] for m in methods])
        ax.set_title(f"{n}: behaviour-cloning return")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = out / "offline_probe_bc.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_losses(out: Path, per: dict, methods: list[str]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, res in per.items():
        for m in methods:
            losses = res[m].get("loss_curve")
            if losses:
                k = max(len(losses) // 50, 1)
                sm = np.convolve(losses, np.ones(k) / k, mode="valid")
                ax.plot(sm, label=f"{n} {LABELS[m]}")
    ax.set(xlabel="pre-training step", ylabel="loss (smoothed)", title="offline pre-training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "offline_pretrain_loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fit_online(cfg: RLConfig) -> Path:
    return train_online(cfg, cfg.aux, cfg.seed)


def evaluate_online_report(cfg: RLConfig, started: float | None = None) -> dict:
    """Score one trained online agent (``--env --aux --seed``): returns, probe vs a random encoder, curve."""
    t0 = started or time.perf_counter()
    run = online_run_dir(cfg, cfg.aux, cfg.seed)
    if not (run / "last.pt").exists():
        raise FileNotFoundError(f"no trained agent in {run}: run `python -m apps.rl fit --env {cfg.env}` first")
    s = score_online(cfg, run)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["frames"] for p in s["curve"]], [p["return_mean"] for p in s["curve"]], "-o", label="evaluation")
    ax.plot([p["frames"] for p in s["train_returns"]], [p["return"] for p in s["train_returns"]], ".",
            label="training episodes")
    ax.set(xlabel="environment frames", ylabel="return", title=f"{cfg.env} ({cfg.aux})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plot = run / "learning_curve.png"
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    metrics = {k: s[k] for k in ("return_mean", "return_std", "env_steps", "state_probe_r2",
                                 "env_steps_per_second")}
    name = {"none": "drqv2", "taco": "drqv2+taco", "cpc": "drqv2+cpc"}[cfg.aux]
    report = {"app": "rl", "dataset": cfg.env, "method": name, "metrics": metrics,
              "baselines": {"random_encoder": {"state_probe_r2": s["state_probe_r2_random_encoder"]}},
              "seconds": time.perf_counter() - t0, "config": cfg.to_dict(), "curve": s["curve"],
              "plots": [str(plot)]}
    write_report(run, report, f"Online {cfg.env}: {name}, seed {cfg.seed}",
                 ["env_steps counts frames (action repeat included); env_steps_per_second is training wall time "
                  "on this machine"])
    print(f"[rl] report: {run / 'report.json'}")
    return report
