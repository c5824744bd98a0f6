"""Full-ranking HR / NDCG against a brute-force per-user loop, on hand-computed cases and a tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.recommendation.config import RecConfig
from apps.recommendation.evaluate import heldout_ranks, pop_ranks
from apps.recommendation.model import SeqRecModule, ranking_metrics, target_ranks
from apps.recommendation.train import build_module, eval_split, prepare


def _brute_force(scores: np.ndarray, target: np.ndarray, seen: list[list[int]], ks=(5, 10, 20)) -> dict:
    """Per user: sort the candidate items (not padding, not seen) by score, find the target's position."""
    hr = {k: [] for k in ks}
    ndcg = {k: [] for k in ks}
    for u in range(len(target)):
        cands = [i for i in range(1, scores.shape[1]) if i not in seen[u] or i == -1]
        ranked = sorted(cands, key=lambda i: (-scores[u, i], i != target[u]))  # ties: target first
        r = ranked.index(target[u]) if target[u] in ranked else len(scores[u])
        for k in ks:
            hr[k].append(float(r < k))
            ndcg[k].append(1.0 / math.log2(r + 2) if r < k else 0.0)
    return {**{f"hr@{k}": float(np.mean(hr[k])) for k in ks}, **{f"ndcg@{k}": float(np.mean(ndcg[k])) for k in ks}}


def test_hand_computed_case() -> None:
    # items 1..4; user 0: target 3 scored 2nd -> rank 1; user 1: target 1 scored best -> rank 0
    scores = torch.tensor([[-1e9, 0.9, 0.1, 0.5, 0.2], [-1e9, 0.8, 0.3, 0.1, 0.7]])
    ranks = target_ranks(scores, torch.tensor([3, 1]))
    assert ranks.tolist() == [1, 0]
    m = ranking_metrics(ranks, ks=(1, 2))
    assert m["hr@1"] == 0.5 and m["hr@2"] == 1.0
    assert m["ndcg@1"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1.0 / math.log2(3) + 1.0) / 2)


def test_vectorised_ranks_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 60
    scores = rng.normal(size=(n_users, n_items + 1)).round(1)  # rounding makes ties
    target = rng.integers(1, n_items + 1, n_users)
    seen = [rng.choice(np.arange(1, n_items + 1), 5, replace=False).tolist() for _ in range(n_users)]
    seen = [[i for i in s if i != t] for s, t in zip(seen, target)]
    s = torch.tensor(scores)
    s[:, 0] = float("-inf")
    for u, items in enumerate(seen):
        s[u, items] = float("-inf")
    got = ranking_metrics(target_ranks(s, torch.tensor(target)))
    want = _brute_force(scores, target, seen)
    assert got == pytest.approx(want, abs=1e-12)


def test_seen_target_is_a_miss() -> None:
    s = torch.tensor([[float("-inf"), 0.1, float("-inf"), 0.3]])
    assert target_ranks(s, torch.tensor([2])).item() == 4


def _tiny_data(tmp_path: Path, n_users: int = 30, n_items: int = 25, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        n = int(rng.integers(3, 70))  # some longer than max_len: the input is the last max_len items
        lines.append(" ".join(map(str, [u, *rng.integers(1, n_items + 1, n)])))
    p = tmp_path / "tiny.txt"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_model_evaluation_matches_per_user_loop(tmp_path: Path, split: str) -> None:
    cfg = RecConfig(data=_tiny_data(tmp_path), run_dir=str(tmp_path / "r"), dim=16, heads=2, max_len=20,
                    eval_batch_size=7)
    exp = prepare(cfg)
    torch.manual_seed(0)
    module: SeqRecModule = build_module(cfg, exp, "sasrec").eval()
    got = heldout_ranks(module, exp, cfg, split)
    inputs, targets = eval_split(exp, split)
    W = module.encoder.item_weights().detach().numpy()
    want = []
    with torch.no_grad():
        for seq, t in zip(inputs, targets):  # one user at a time, no padding, no batching
            h = module.encoder(torch.from_numpy(seq[-cfg.max_len:])[None])[0, -1].numpy()
            sc = W @ h
            cands = [i for i in range(1, exp.data.n_items + 1) if i not in set(seq.tolist())]
            want.append(sum(sc[i] > sc[t] for i in cands) if t in cands else exp.data.n_items + 1)
    assert got.tolist() == want


def test_pop_baseline_matches_counting(tmp_path: Path) -> None:
    cfg = RecConfig(data=_tiny_data(tmp_path, seed=1), run_dir=str(tmp_path / "r"), eval_batch_size=4)
    exp = prepare(cfg)
    counts = np.zeros(exp.data.n_items + 1)
    for s in exp.data.sequences:
        for i in s[:-2]:
            counts[i] += 1
    inputs, targets = eval_split(exp, "test")
    want = [sum(counts[i] > counts[t] for i in range(1, len(counts)) if i not in seq) if t not in seq
            else exp.data.n_items + 1 for seq, t in zip(inputs, targets)]
    assert pop_ranks(exp, cfg).tolist() == want
