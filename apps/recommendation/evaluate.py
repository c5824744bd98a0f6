"""Full-ranking evaluation, the popularity baseline, the report (``report.json``, ``report.md``, PNG plots) and
``recommend``.

Protocol: chronological leave-one-out; each user's test case ranks **all** items (no sampled negatives) for
the input ``s_1..s_{n-1}`` (its last ``max_len`` items), with the items of the input removed from the ranking
(``exclude_seen``, the S3-Rec / CL4SRec convention); the rank of the held-out item ``s_n`` gives
HR@k = [rank < k] and NDCG@k = [rank < k] / log2(rank + 2), averaged over users, k in {5, 10, 20}.
Methods: ``sasrec``, ``cl4srec``, ``duorec``, ``mclrec`` (:mod:`apps.recommendation.model`), plus ``pop``
(items ranked by their number of training interactions) as a sanity baseline.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from apps.recommendation.config import RecConfig
from apps.recommendation.data import DataError
from apps.recommendation.model import SeqRecModule, ranking_metrics, target_ranks
from apps.recommendation.train import (
    Experiment,
    best_of,
    check_run_dir,
    eval_loader,
    eval_split,
    fit_method,
    load_model,
    method_dir,
)

__all__ = ["evaluate", "heldout_ranks", "pop_ranks", "recommend", "PAPER", "METRICS", "write_report"]

METRICS = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20")
NAMES = {"sasrec": "SASRec", "cl4srec": "CL4SRec", "duorec": "DuoRec", "mclrec": "MCLRec", "pop": "Pop"}

#: MCLRec paper (Qin et al., SIGIR 2023), Table 3, Beauty; HR@5/10/20, NDCG@5/10/20
PAPER = {"beauty": {
    "sasrec": (0.0377, 0.0624, 0.0894, 0.0241, 0.0342, 0.0386),
    "cl4srec": (0.0401, 0.0642, 0.0974, 0.0268, 0.0345, 0.0428),
    "duorec": (0.0559, 0.0825, 0.1193, 0.0340, 0.0425, 0.0518),
    "mclrec": (0.0581, 0.0871, 0.1243, 0.0352, 0.0446, 0.0539),
}}


@torch.no_grad()
def heldout_ranks(module: SeqRecModule, exp: Experiment, cfg: RecConfig, split: str = "test") -> np.ndarray:
    """0-based full-ranking rank of every user's held-out item (in user order)."""
    module.eval()
    loader = eval_loader(exp, split, cfg)
    out = np.empty(len(exp.data.sequences), dtype=np.int64)
    order = np.asarray(loader.dataset)
    pos = 0
    for batch in loader:
        seen = batch["seen"] if cfg.exclude_seen else None
        r = target_ranks(module.score_all(batch["items"], batch["lengths"], seen), batch["target"]).numpy()
        out[order[pos: pos + len(r)]] = r
        pos += len(r)
    return out


def pop_ranks(exp: Experiment, cfg: RecConfig, split: str = "test") -> np.ndarray:
    """Ranks under the popularity baseline: score = training interactions of the item."""
    counts = np.bincount(np.concatenate(exp.train_seqs), minlength=exp.data.n_items + 1).astype(np.float64)
    inputs, targets = eval_split(exp, split)
    scores = torch.from_numpy(np.tile(counts, (1, 1)))
    ranks = np.empty(len(targets), dtype=np.int64)
    for a in range(0, len(targets), cfg.eval_batch_size):
        idx = range(a, min(a + cfg.eval_batch_size, len(targets)))
        s = scores.expand(len(idx), -1).clone()
        s[:, 0] = float("-inf")
        if cfg.exclude_seen:
            for j, i in enumerate(idx):
                s[j, torch.from_numpy(inputs[i])] = float("-inf")
        ranks[a: a + len(idx)] = target_ranks(s, torch.from_numpy(targets[list(idx)])).numpy()
    return ranks


def _mean_std(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    mean = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
    std = {m: float(np.std([r[m] for r in rows])) for m in METRICS}
    return mean, std


def _plots(out: Path, results: dict, paper: dict | None, histories: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    methods = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, fam in zip(axes, ("hr", "ndcg")):
        names = [f"{fam}@{k}" for k in (5, 10, 20)]
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            x = np.arange(3) + i * width - 0.4 + width / 2
            ax.bar(x, [results[m]["mean"][n] for n in names], width, yerr=[results[m]["std"][n] for n in names],
                   label=NAMES.get(m, m))
            if paper and m in paper:
                vals = dict(zip(METRICS, paper[m]))
                ax.scatter(x, [vals[n] for n in names], marker="_", s=120, color="k", zorder=3,
                           label="paper (Table 3)" if i == 0 else None)
        ax.set_xticks(np.arange(3), [n.upper() for n in names])
        ax.set_title(f"{fam.upper()}@k, test (full ranking)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    p = out / "test_metrics.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (m, runs) in enumerate(histories.items()):
        for j, (seed, hist) in enumerate(runs):  # one colour per method; the first seed solid, the others dashed
            pts = [(h["epoch"], h["val"]["ndcg@10"]) for h in hist if "val" in h]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i}", ls="-" if j == 0 else "--", marker="o" if j == 0 else None,
                        ms=3, lw=1.2, label=f"{NAMES.get(m, m)} (seed {seed})")
    ax.set(xlabel="epoch", ylabel="validation NDCG@10", title="Validation NDCG@10 (every seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "validation_ndcg10.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def _markdown(report: dict, plots: list[Path]) -> str:
    res = report["results"]
    lines = [f"# Sequential recommendation: {report['dataset']}", "", report["protocol"], "",
             f"Users {report['stats']['users']}, items {report['stats']['items']}, interactions "
             f"{report['stats']['interactions']}; split checksum `{report['split_checksum']}`. Wall time of this "
             f"command: {report['seconds']:.0f} s.", "",
             "| method | " + " | ".join(m.upper() for m in METRICS) + " | epochs | train s / epoch | seeds |",
             "|---|" + "---|" * (len(METRICS) + 3)]
    for m, r in res.items():
        vals = " | ".join(f"{r['mean'][k]:.4f}" + (f" ± {r['std'][k]:.4f}" if len(r["per_seed"]) > 1 else "")
                          for k in METRICS)
        fit = r.get("fit", [])
        ep = ", ".join(str(f["epochs_run"]) for f in fit) or "-"
        per_ep = (f"{np.mean([f['train_seconds_total'] / max(1, f['epochs_run']) for f in fit]):.0f}"
                  if fit else "-")
        seeds = [str(x["seed"]) for x in r["per_seed"] if "seed" in x]
        seeds_col = f"{len(r['per_seed'])}" + (f" ({', '.join(seeds)})" if seeds else "")
        lines.append(f"| {NAMES.get(m, m)} | {vals} | {ep} | {per_ep} | {seeds_col} |")
    if report.get("paper"):
        lines += ["", "MCLRec paper, Table 3 (Beauty; RecBole, 100 epochs, patience 10):", "",
                  "| method | " + " | ".join(m.upper() for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for m, v in report["paper"].items():
            lines.append(f"| {NAMES[m]} (paper) | " + " | ".join(f"{x:.4f}" for x in v.values()) + " |")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict, markdown: str) -> None:
    """Write ``report.json`` and ``report.md`` atomically (no partial report if anything failed before)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("report.json", json.dumps(report, indent=2)), ("report.md", markdown)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def evaluate(cfg: RecConfig, exp: Experiment, *, train: bool = False, log=print, started: float | None = None) -> dict:
    """Test every method of ``cfg.methods`` (each seed) and the popularity baseline; write the report into
    ``exp.root``. With ``train=True`` missing models are fitted first. Returns the report dict."""
    t0 = started if started is not None else time.perf_counter()
    check_run_dir(cfg, exp, write=train)
    results: dict[str, dict] = {}
    histories: dict[str, list] = {}
    for method in cfg.methods:
        per_seed, fits = [], []
        for seed in cfg.seeds:
            if train:
                fit_method(cfg, exp, method, seed, log)
            elif cfg.missing_seeds == "skip" and not (method_dir(exp, method, seed) / "model.pt").is_file():
                log(f"[recommendation] {NAMES[method]}: nothing fitted for seed {seed}; skipped (--missing-seeds skip)")
                continue
            module = load_model(cfg, exp, method, seed)
            t = time.perf_counter()
            ranks = heldout_ranks(module, exp, cfg)
            eval_s = time.perf_counter() - t
            per_seed.append({**ranking_metrics(ranks), "seed": seed, "eval_seconds": eval_s})
            info_path = method_dir(exp, method, seed) / "fit.json"
            if info_path.is_file():
                info = json.loads(info_path.read_text())
                info.update(best_of(info["history"]))  # older fit.json files: a stale score
                fits.append({k: info[k] for k in ("epochs_run", "best_epoch", "best_val_ndcg@10", "train_seconds_total",
                                                  "val_seconds_total", "stopped_early", "history")})
                histories.setdefault(method, []).append((seed, info["history"]))
        if not per_seed:
            raise DataError(f"nothing fitted for {method} in {exp.root} for any of seeds {cfg.seeds}; run `fit` first")
        mean, std = _mean_std(per_seed)
        results[method] = {"mean": mean, "std": std, "per_seed": per_seed, "fit": fits}
        log(f"[recommendation] {NAMES[method]}: " + ", ".join(f"{k} {mean[k]:.4f}" for k in METRICS))
    pop = ranking_metrics(pop_ranks(exp, cfg))
    results["pop"] = {"mean": pop, "std": dict.fromkeys(METRICS, 0.0), "per_seed": [pop], "fit": []}
    main = cfg.methods[-1]
    paper_rows = PAPER.get(exp.data.name)
    paper = {m: dict(zip(METRICS, v)) for m, v in paper_rows.items()} if paper_rows else None
    report = {
        "app": "recommendation",
        "dataset": exp.data.name,
        "method": main,
        "metrics": results[main]["mean"],
        "baselines": {m: r["mean"] for m, r in results.items() if m != main},
        "seconds": time.perf_counter() - t0,
        "config": cfg.to_dict(),
        "protocol": "Chronological leave-one-out (last item test, second-to-last validation); full ranking over all "
                    f"{exp.data.n_items} items{' minus the items of the input sequence' if cfg.exclude_seen else ''};"
                    " HR and NDCG at 5, 10, 20; model selection by validation NDCG@10.",
        "stats": {"users": len(exp.data.sequences), "items": exp.data.n_items,
                  "interactions": exp.data.n_interactions, "dropped_users": exp.data.dropped_users},
        "split_checksum": exp.data.split_checksum(),
        "results": {m: {**r, "fit": [{k: v for k, v in f.items() if k != "history"} for f in r["fit"]]}
                    for m, r in results.items()},
        "paper": paper,
    }
    plots = _plots(exp.root, results, paper_rows, histories)
    write_report(exp.root, report, _markdown(report, plots))
    report["plots"] = [str(p) for p in plots]
    log(f"[recommendation] report: {exp.root / 'report.json'}, {exp.root / 'report.md'}")
    return report


def recommend(cfg: RecConfig, exp: Experiment, *, method: str, seed: int, history: list[str] | None = None,
              user: str | None = None, k: int = 10) -> list[tuple[str, float]]:
    """Top-``k`` items (original labels, scores) for a history of item labels or a user of the data set, never
    an item of that history. A user's whole sequence (train + validation + test items) is the history."""
    if (history is None) == (user is None):
        raise DataError("give exactly one of --items (a history of item ids) or --user (a user of the data set)")
    if not isinstance(k, int) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}")
    if user is not None:
        try:
            seq = exp.data.sequences[exp.data.users.index(str(user))]
        except ValueError:
            raise DataError(f"unknown user {user!r}: not among the {len(exp.data.users)} users of data set "
                            f"{exp.data.name!r} ({exp.data.source})") from None
    else:
        if not history:
            raise DataError("--items is empty: give at least one item id")
        seq = np.array([exp.data.item_id(h) for h in history], dtype=np.int64)
    if k > exp.data.n_items - len(set(seq.tolist())):
        raise DataError(f"k={k} exceeds the {exp.data.n_items - len(set(seq.tolist()))} items not in the history")
    module = load_model(cfg, exp, method, seed)
    inp = torch.from_numpy(seq[-cfg.max_len:])[None]
    scores = module.score_all(inp, torch.tensor([inp.shape[1]]), torch.from_numpy(seq)[None])[0]
    top = torch.topk(scores, k)
    return [(exp.data.item_labels[int(i) - 1], float(s)) for s, i in zip(top.values, top.indices)]
