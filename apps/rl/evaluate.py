"""The verbs' work: fit / evaluate the offline encoders (TACO / CPC / random) or the online agents, and their
reports (the runner's ``report.json`` / ``report.md``) with plots beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from apps.rl.data import load_rollouts, resolve_data
from apps.rl.envs import make_env
from apps.rl.offline import OfflineData, evaluate_encoder, load_encoder, prepare_offline, pretrain
from apps.rl.online import agent_dir, score_agent, train_agent
from apps.rl.probe import MIN_PROBE_EPISODES
from apps.rl.settings import AGENT_NAMES, RLSettings
from core.app import Run, read_json, write_json
from core.app.files import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["fit_offline", "evaluate_offline", "fit_online", "evaluate_online", "LABELS"]

LABELS = {"taco": "TACO", "cpc": "CPC", "random": "random encoder"}


def _methods(s: RLSettings) -> list[str]:
    """The methods of the offline comparison: the chosen ones, then the random encoder (the baseline)."""
    return [m for m in s.methods if m != "random"] + ["random"]


def _offline_data(s: RLSettings) -> list[OfflineData]:
    """Every data set, read, checked, rendered and split (before anything is written)."""
    out = []
    for path in resolve_data(s.data):
        ro = load_rollouts(path, s.max_episodes)
        out.append(prepare_offline(ro, s.image_size, s.test_fraction, s.multistep, s.nstep, s.gamma,
                                   s.cpc_seq_len, s.seed))
    names = [d.rollouts.name for d in out]
    if len(set(names)) != len(names):
        from core.app import InputError

        raise InputError(f"data sets with the same name {sorted(names)}: rename the files")
    return out


def _report_dir(run: Run) -> Path:
    return Path(run.report_dir or run.run_dir.path)


# ---- offline ------------------------------------------------------------------------------------------------
def fit_offline(run: Run) -> None:
    """Pre-train every method on every data set (resuming)."""
    s = run.settings
    datasets = _offline_data(s)
    run.claim()
    fabric = run.hardware.fabric()
    for data in datasets:
        for m in s.methods:
            if m != "random":
                pretrain(run, fabric, m, data)
                run.log(f"pre-trained {m} on {data.rollouts.name}: {run.run_dir.method_dir(m) / data.rollouts.name}")


def evaluate_offline(run: Run) -> None:
    """Probe + behaviour-cloning of every frozen encoder on every data set; the report and its plots."""
    s = run.settings
    datasets = _offline_data(s)
    if not run.is_main:
        return
    methods = _methods(s)
    per: dict[str, dict[str, Any]] = {}
    for data in datasets:
        res: dict[str, Any] = {}
        for m in methods:
            model, history = load_encoder(run, m, data)
            res[m] = {**evaluate_encoder(s, model, data), "pretrain_steps": history["step"],
                      "loss_curve": history["losses"]}
        ro = data.rollouts
        res["_dataset"] = {"episodes": len(ro.episodes), "steps": ro.steps, "train_episodes": len(data.train_ids),
                           "test_episodes": len(data.test_ids),
                           "expert_return": float(np.mean([e.rewards.sum() for e in ro.episodes])),
                           "task": ro.task, "discrete": ro.discrete}
        per[ro.name] = res
    folder = _report_dir(run)
    report = run.report("state_probe_r2", higher_is_better=True,
                        title="rl offline: " + " vs ".join(LABELS[m] for m in methods))
    refused = set()
    for name, res in per.items():
        d = res["_dataset"]
        for m in methods:
            r = res[m]
            metrics = {"state_probe_r2": r["state_probe_r2"]}
            if "bc_return_mean" in r:
                metrics.update(return_mean=r["bc_return_mean"], return_std=r["bc_return_std"])
            metrics.update(env_steps=d["steps"], pretrain_steps=r["pretrain_steps"])
            report.add(m, metrics, seed=s.seed, dataset=name, baseline=m == "random")
            if r["probe_refused"]:
                refused.add(f"{name}: {r['probe_refused']}")
    report.plots = [_plot_bars(folder, per, methods), _plot_losses(folder, per, methods)]
    report.extra = {"datasets": {k: v["_dataset"] for k, v in per.items()},
                    "state_probe_r2_per_dim": {k: {m: v[m]["state_probe_r2_per_dim"] for m in methods}
                                               for k, v in per.items()},
                    "bc_returns": {k: {m: v[m].get("bc_returns") for m in methods} for k, v in per.items()}}
    report.notes += [
        "state_probe_r2: ridge probe from the frozen latent z = G(f(o_t)) (3 rendered frames) to the true state, "
        "fitted on the training episodes, R^2 = 1 - MSE/Var on the held-out episodes, mean over state dimensions "
        f"(not reported below {MIN_PROBE_EPISODES} episodes or with fewer training samples than 2 x features)",
        "return_mean / return_std: behaviour-cloning policy (MLP on the frozen z) rolled out in the gymnasium task "
        f"from rendered frames, {s.bc_episodes} episode(s); the data set's expert return: "
        + ", ".join(f"{k} {v['_dataset']['expert_return']:.1f}" for k, v in per.items()),
        "env_steps: transitions in the data set; pretrain_steps: TACO / CPC pre-training steps reached "
        "(the random encoder is untrained)",
        *sorted(refused)]
    run.write_report(report, folder)
    run.log(f"report: {folder / 'report.md'}")


def _plot_bars(out: Path, per: dict, methods: list[str]) -> str:
    """Probe R^2 per data set and method; then one panel per data set with the BC returns and the expert's."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(per)
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(4.5 * (1 + len(names)), 4))
    w = 0.8 / len(methods)
    for j, m in enumerate(methods):
        x = np.arange(len(names)) + j * w
        axes[0].bar(x, [per[n][m]["state_probe_r2"] if per[n][m]["state_probe_r2"] is not None else np.nan
                        for n in names], w, label=LABELS[m])
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
    save_figure(fig, out / "offline_probe_bc.png")
    return "offline_probe_bc.png"


def _plot_losses(out: Path, per: dict, methods: list[str]) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, res in per.items():
        for m in methods:
            losses = res[m].get("loss_curve")
            if losses:
                k = max(len(losses) // 50, 1)
                ax.plot(np.convolve(losses, np.ones(k) / k, mode="valid"), label=f"{n} {LABELS[m]}")
    ax.set(xlabel="pre-training step", ylabel="loss (smoothed)", title="offline pre-training")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "offline_pretrain_loss.png")
    return "offline_pretrain_loss.png"


# ---- online -------------------------------------------------------------------------------------------------
def _check_env(s: RLSettings) -> None:
    """Build the environment once (a gymnasium task with discrete actions, a broken renderer ... fail here,
    before anything is written)."""
    make_env(s.env, s.seed, frame_stack=s.frame_stack, action_repeat=s.action_repeat).close()


def fit_online(run: Run) -> None:
    """Train (resuming) one online agent per ``--aux`` for ``--seed``."""
    s = run.settings
    _check_env(s)
    run.claim()
    fabric = run.hardware.fabric()
    for aux in s.aux:
        run.log(f"online {AGENT_NAMES[aux]} on {s.env}, seed {s.seed}")
        out = train_agent(run, fabric, aux)
        run.log(f"trained: {out}")


def evaluate_online(run: Run) -> None:
    """Score every ``--aux`` agent of ``--seed`` (return, state probe vs an untrained encoder), plot the learning
    curves, write the report."""
    s = run.settings
    missing = [agent_dir(run, a) for a in s.aux if not (agent_dir(run, a) / "last.pt").is_file()
               and not (agent_dir(run, a) / "last.prev.pt").is_file()]
    if missing:
        from core.app import InputError

        raise InputError(f"no trained agent in {missing[0]}: run `python -m apps.rl fit --env {s.env}` with the "
                         "same options first")
    if not run.is_main:
        return
    scores = {aux: _cached_score(s, agent_dir(run, aux)) for aux in s.aux}
    folder = _report_dir(run)
    report = run.report("return_mean", higher_is_better=True,
                        title=f"rl online {s.env}: " + " vs ".join(AGENT_NAMES[a] for a in s.aux))
    report.data = s.env
    refused = set()
    for aux, sc in scores.items():
        report.add(AGENT_NAMES[aux], {k: sc[k] for k in (
            "return_mean", "return_std", "env_steps", "state_probe_r2", "state_probe_r2_random_encoder",
            "env_steps_per_second")}, seed=s.seed, dataset=s.env, baseline=aux == "none" and len(s.aux) > 1)
        if sc["probe_refused"]:
            refused.add(sc["probe_refused"])
    report.plots = [_plot_curves(folder, s, scores)]
    report.extra = {"curves": {AGENT_NAMES[a]: sc["curve"] for a, sc in scores.items()},
                    "state_probe_r2_per_dim": {AGENT_NAMES[a]: sc["state_probe_r2_per_dim"]
                                               for a, sc in scores.items()},
                    "updates": {AGENT_NAMES[a]: sc["updates"] for a, sc in scores.items()}}
    report.notes += [
        f"return_mean / return_std: the deterministic policy over {s.eval_episodes} evaluation episode(s); "
        f"env_steps counts frames (action repeat {s.action_repeat}) reached in training",
        f"state_probe_r2: ridge probe from the agent's latent state (critic trunk) to the task's state (positions, "
        f"velocities) over the steps of {s.probe_episodes} episodes of the trained policy, fitted on three "
        f"quarters of the episodes, R^2 on the rest; random encoder = an untrained agent's trunk on the same "
        f"observations; not reported below {MIN_PROBE_EPISODES} episodes",
        f"env_steps_per_second: training wall time incl. updates and rendering, {run.hardware.world_size} "
        "process(es)",
        *sorted(refused)]
    run.write_report(report, folder)
    run.log(f"report: {folder / 'report.md'}")


def _cached_score(s: RLSettings, out: Path) -> dict:
    """:func:`score_agent`, cached in ``score.json`` for the same checkpoint step and evaluation options."""
    from apps.rl.online import load_agent

    _, ck = load_agent(out / "last.pt")
    key = {"agent_steps": ck["counters"]["step"], "updates": ck["counters"]["updates"],
           "eval_episodes": s.eval_episodes, "probe_episodes": s.probe_episodes}
    cache = out / "score.json"
    if cache.is_file():
        try:
            got = read_json(cache)
            if got.get("key") == key:
                return got["score"]
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed
            pass
    score = score_agent(s, out)
    write_json(cache, {"key": key, "score": score})
    return score


def _plot_curves(out: Path, s: RLSettings, scores: dict[str, dict]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"none": "tab:blue", "taco": "tab:red", "cpc": "tab:green"}
    for aux, sc in scores.items():
        axes[0].plot([p["frames"] for p in sc["curve"]], [p["return_mean"] for p in sc["curve"]], "-o",
                     color=colors[aux], label=AGENT_NAMES[aux])
        tr = sc["train_returns"]
        axes[1].plot([p["frames"] for p in tr], [p["return"] for p in tr], "-", color=colors[aux],
                     label=AGENT_NAMES[aux])
    axes[0].set(xlabel="environment frames", ylabel="evaluation return", title=f"{s.env}: evaluation, seed {s.seed}")
    axes[1].set(xlabel="environment frames", ylabel="training episode return", title="training episodes")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "learning_curves.png")
    return "learning_curves.png"
