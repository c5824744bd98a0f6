"""Full-ranking evaluation, the popularity baseline, the report (``report.json``, ``report.md``, PNG plots) and
``recommend``.

Protocol: chronological leave-one-out; each user's test case ranks **all** items (no sampled negatives) for
the input ``s_1..s_{n-1}`` (its last ``max_len`` items), with the items of the input removed from the ranking
(``exclude_seen``, the S3-Rec / CL4SRec convention); the rank of the held-out item ``s_n`` gives
HR@k = [rank < k] and NDCG@k = [rank < k] / log2(rank + 2), averaged over users, k in {5, 10, 20}.
Methods: ``sasrec``, ``cl4srec``, ``duorec``, ``mclrec`` (:mod:`apps.recommendation.model`), plus ``pop``
(items ranked by their number of training interactions) as a sanity baseline. The report's headline method is
MCLRec (the first contrastive method of ``--methods`` when MCLRec is not among them); Pop and SASRec (the encoder
without a contrastive term) are its baselines, so the report says where the contrastive method wins and loses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from apps.recommendation.config import RecConfig
from apps.recommendation.model import SeqRecModule, ranking_metrics, target_ranks
from apps.recommendation.train import Experiment, eval_loader, eval_split, load_model, read_fit
from core.app import InputError, Report
from core.app.files import save_figure

__all__ = ["evaluate_methods", "heldout_ranks", "pop_ranks", "recommend", "best_fitted_method", "PAPER", "METRICS",
           "HEADLINE", "HEADLINE_METHOD", "headline_method", "sample_note"]

METRICS = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20")
#: the report's headline metric (the tour's too); models are selected on validation NDCG@10
HEADLINE = "hr@10"
#: the report's headline method (the app's own paper), compared with the baselines Pop and SASRec
HEADLINE_METHOD = "mclrec"
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


def _save(fig, path: Path) -> None:
    save_figure(fig, path)


def _plots(out: Path, results: dict[str, dict[str, float]], paper: dict | None, histories: dict) -> list[str]:
    """``test_metrics.png`` (HR / NDCG at 5, 10, 20 per method, the paper's Table 3 as ticks) and
    ``validation_ndcg10.png`` (each method's validation curve) in ``out``; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, fam in zip(axes, ("hr", "ndcg")):
        names = [f"{fam}@{k}" for k in (5, 10, 20)]
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            x = np.arange(3) + i * width - 0.4 + width / 2
            ax.bar(x, [results[m][n] for n in names], width, label=NAMES.get(m, m))
            if paper and m in paper:
                vals = dict(zip(METRICS, paper[m]))
                ax.scatter(x, [vals[n] for n in names], marker="_", s=120, color="k", zorder=3,
                           label="paper (Table 3)" if i == 0 else None)
        ax.set_xticks(np.arange(3), [n.upper() for n in names])
        ax.set_title(f"{fam.upper()}@k, test (full ranking)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "test_metrics.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (m, hist) in enumerate(histories.items()):
        pts = [(h["epoch"], h["val"]["ndcg@10"]) for h in hist if "val" in h]
        if pts:
            ax.plot(*zip(*pts), color=f"C{i}", marker="o", ms=3, lw=1.2, label=NAMES.get(m, m))
    ax.set(xlabel="epoch", ylabel="validation NDCG@10", title="Validation NDCG@10")
    if histories:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "validation_ndcg10.png")
    return ["test_metrics.png", "validation_ndcg10.png"]


def headline_method(methods: list[str]) -> str | None:
    """The report's headline among ``methods``: MCLRec, else the first contrastive method, else none (SASRec
    alone is only a baseline)."""
    contrastive = [m for m in methods if m != "sasrec"]
    if not contrastive:
        return None
    return HEADLINE_METHOD if HEADLINE_METHOD in contrastive else contrastive[0]


def sample_note(data) -> str | None:
    """The report's line on a ``--max-users`` sample (what was kept of what, and the seed), or ``None``."""
    s = data.sample
    if not s:
        return None
    return (f"user sample (--max-users {s['users']}, --sample-seed {s['seed']}): {s['users']:,} of "
            f"{s['users_total']:,} users, with every item they touched: {s['items']:,} of {s['items_total']:,} items, "
            f"{s['interactions']:,} of {s['interactions_total']:,} interactions"
            + (f"; then --max-items kept {data.n_items:,} items and {len(data.sequences):,} users"
               if data.n_items != s["items"] or len(data.sequences) != s["users"] else
               f"; every user is ranked against all {s['items']:,} items"))


def check_fitted(cfg: RecConfig, folders: dict[str, Path]) -> None:
    """Raise :class:`InputError` naming the first method of ``folders`` with no ``model.pt``."""
    for method, folder in folders.items():
        if not (folder / "model.pt").is_file():
            raise InputError(f"nothing fitted for {method} (seed {cfg.seed}) in {folder.parent.parent} (missing "
                             f"{folder / 'model.pt'}); run `fit` first with the same --data / --run-dir / --seed / "
                             "settings")


def evaluate_methods(cfg: RecConfig, exp: Experiment, folders: dict[str, Path], report: Report, out: Path,
                     log=print) -> Report:
    """Test every method of ``folders`` (method -> its ``<method>/seed<S>`` folder) and the popularity baseline:
    one row each in ``report`` (the six test metrics and the best validation NDCG@10; epochs and times in
    ``report.extra["fit"]``; Pop and, next to a contrastive method, SASRec are baselines of the headline method
    :func:`headline_method`, set as ``report.headline``), the user sample (:func:`sample_note`), the
    protocol, data statistics, fit summaries and the paper's figures in ``report.extra`` / ``report.notes``, and
    the two plots written to ``out`` (listed in ``report.plots``)."""
    check_fitted(cfg, folders)
    head = headline_method(list(folders))
    if head is not None:
        report.headline = head
    results: dict[str, dict[str, float]] = {}
    histories: dict[str, list] = {}
    fits: dict[str, dict] = {}
    for method, folder in folders.items():
        module = load_model(cfg, exp, folder, method)
        metrics = ranking_metrics(heldout_ranks(module, exp, cfg))
        results[method] = metrics
        info = read_fit(folder)
        extra = {}
        if info is not None:
            histories[method] = info.get("history", [])
            fits[method] = {k: v for k, v in info.items() if k != "history"}
            extra = {"val_ndcg@10": info.get("best_val_ndcg@10")}
        report.add(method, {**metrics, **{k: v for k, v in extra.items() if v is not None}}, seed=cfg.seed,
                   baseline=method == "sasrec" and head is not None)
        log(f"{NAMES[method]}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in METRICS))
    pop = ranking_metrics(pop_ranks(exp, cfg))
    report.add("pop", pop, seed=cfg.seed, baseline=True)
    paper_rows = PAPER.get(exp.data.name)
    protocol = ("chronological leave-one-out (last item test, second-to-last validation); full ranking over all "
                f"{exp.data.n_items} items{' minus the items of the input sequence' if cfg.exclude_seen else ''}; "
                "HR and NDCG at 5, 10, 20; each model is the epoch of its best validation NDCG@10")
    stats = {"users": len(exp.data.sequences), "items": exp.data.n_items,
             "interactions": exp.data.n_interactions, "dropped_users": exp.data.dropped_users}
    sampled = sample_note(exp.data)
    if sampled:
        report.notes.append(sampled)
    report.notes += [f"{exp.data.name}: {stats['users']:,} users, {stats['items']:,} items, "
                     f"{stats['interactions']:,} interactions; split checksum {exp.data.split_checksum()}",
                     f"protocol: {protocol}"]
    scored = {m: f["best_val_ndcg@10"] for m, f in fits.items() if f.get("best_val_ndcg@10") is not None}
    if scored:
        top = max(scored, key=scored.get)
        report.notes.append(f"best validated method: {top} (validation NDCG@10 {scored[top]:.4f}); `recommend` "
                            "answers with it by default")
    if paper_rows:
        report.notes.append("MCLRec paper, Table 3 (Beauty; RecBole, 100 epochs, patience 10), HR@5/10/20, "
                            "NDCG@5/10/20: " + "; ".join(f"{NAMES[m]} " + " ".join(f"{x:.4f}" for x in v)
                                                         for m, v in paper_rows.items()))
    report.extra.update({"dataset": exp.data.name, "protocol": protocol, "stats": stats, "sample": exp.data.sample,
                         "split_checksum": exp.data.split_checksum(), "fit": fits,
                         "paper": {m: dict(zip(METRICS, v)) for m, v in paper_rows.items()} if paper_rows else None})
    report.plots += _plots(out, {**results, "pop": pop}, paper_rows, histories)
    return report


def best_fitted_method(cfg: RecConfig, folders: dict[str, Path]) -> tuple[str, dict[str, float | None]]:
    """The fitted method (``model.pt`` in its folder) with the best validation NDCG@10 in its ``fit.json``, and
    the score of every fitted method (``None``: never validated). A tie keeps the earlier method of ``folders``."""
    scores: dict[str, float | None] = {}
    for method, folder in folders.items():
        if (folder / "model.pt").is_file():
            info = read_fit(folder) or {}
            scores[method] = info.get("best_val_ndcg@10")
    if not scores:
        raise InputError(f"nothing fitted for any of {list(folders)} (seed {cfg.seed}) in "
                         f"{next(iter(folders.values())).parent.parent}; run `fit` first with the same --data / "
                         "--run-dir / --seed / settings")
    best = max(scores, key=lambda m: -np.inf if scores[m] is None else scores[m])
    return best, scores


def recommend(cfg: RecConfig, exp: Experiment, folder: Path, method: str, *, history: list[str] | None = None,
              user: str | None = None, k: int = 10) -> list[tuple[str, float]]:
    """Top-``k`` items (original labels, scores) for a history of item labels or a user of the data set, never
    an item of that history, by the model of ``method`` saved in ``folder``. A user's whole sequence (train +
    validation + test items) is the history."""
    if (history is None) == (user is None):
        raise InputError("give exactly one of --items (a history of item ids) or --user (a user of the data set)")
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if user is not None:
        try:
            seq = exp.data.sequences[exp.data.users.index(str(user))]
        except ValueError:
            raise InputError(f"unknown user {user!r}: not among the {len(exp.data.users)} users of data set "
                             f"{exp.data.name!r} ({exp.data.source})") from None
    else:
        if not history:
            raise InputError("--items is empty: give at least one item id")
        seq = np.array([exp.data.item_id(h) for h in history], dtype=np.int64)
    if k > exp.data.n_items - len(set(seq.tolist())):
        raise InputError(f"k={k} exceeds the {exp.data.n_items - len(set(seq.tolist()))} items not in the history")
    module = load_model(cfg, exp, folder, method)
    inp = torch.from_numpy(seq[-cfg.max_len:])[None]
    scores = module.score_all(inp, torch.tensor([inp.shape[1]]), torch.from_numpy(seq)[None])[0]
    top = torch.topk(scores, k)
    return [(exp.data.item_labels[int(i) - 1], float(s)) for s, i in zip(top.values, top.indices)]

