"""The learned clusterer: candidate sets vs brute force, overlap resolution vs a literal reference and a hand case,
and a few training steps on a simulated event that lower the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apps.tracking.cluster import (
    PivotSetNet,
    candidate_sets,
    gnn_node_repr,
    resolve_tracks,
    set_labels,
    set_loss,
    set_tokens,
)
from apps.tracking.data import SHARED
from apps.tracking.model import EdgeGNN, HitEmbedding, knn_graph
from apps.tracking.simulate import Geometry, SimConfig, simulate_event
from apps.tracking.train import cluster_inputs, prepare_event


def partition(labels: np.ndarray) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for i, lab in enumerate(labels.tolist()):
        groups.setdefault(lab, set()).add(i)
    return {frozenset(g) for g in groups.values()}


def resolve_reference(n: int, cand: list[list[int]], prob: list[list[float]], thr: float,
                      min_hits: int) -> set[frozenset[int]]:
    """The rule of resolve_tracks written out with Python loops, sets and dicts."""
    pivots = []
    for i, (c, p) in enumerate(zip(cand, prob)):
        if p[0] <= thr:
            continue
        members = {c[j]: p[j] for j in range(len(c)) if p[j] > thr}
        pivots.append((p[0] * sum(members.values()), i, c[0], members))
    pivots.sort(key=lambda t: (-t[0], t[1]))
    claimed: set[int] = set()
    accepted = []
    for conf, _, hit, members in pivots:
        if conf > 0 and hit not in claimed:
            accepted.append((hit, members))
            claimed |= set(members)
    owner = {}
    for h in range(n):
        best = None
        for rank, (hit, members) in enumerate(accepted):
            p = 2.0 if h == hit else members.get(h)
            if p is not None and (best is None or p > best[0]):
                best = (p, rank)
        if best is not None:
            owner[h] = best[1]
    tracks: dict[int, set[int]] = {}
    for h, r in owner.items():
        tracks.setdefault(r, set()).add(h)
    out = {frozenset(t) for t in tracks.values() if len(t) >= min_hits}
    used = set().union(*out) if out else set()
    return out | {frozenset({h}) for h in range(n) if h not in used}


def test_resolve_hand_case() -> None:
    cand = np.array([[0, 1, 2, 3], [1, 0, 2, 4], [5, 6, 7, 4], [3, 2, 1, 0], [6, 5, 7, 4]])
    prob = np.array([[0.9, 0.8, 0.7, 0.2],    # conf 0.9 * 2.4 = 2.16, pivot 0 claimed by row 1 -> dropped
                     [0.95, 0.9, 0.6, 0.55],  # conf 0.95 * 3.0 = 2.85 -> accepted first: claims 1, 0, 2, 4
                     [0.8, 0.9, 0.9, 0.9],    # conf 0.8 * 3.5 = 2.8 -> accepted: claims 5, 6, 7, 4
                     [0.4, 0.9, 0.9, 0.9],    # pivot 3 judged noise -> never a pivot
                     [0.9, 0.9, 0.9, 0.3]])   # conf 2.43, pivot 6 already claimed -> dropped
    # hit 4: 0.55 from pivot 1, 0.9 from pivot 5 -> joins 5; hit 3 is nobody's member
    got = partition(resolve_tracks(8, cand, prob, 0.5, 3))
    assert got == {frozenset({0, 1, 2}), frozenset({4, 5, 6, 7}), frozenset({3})}
    got4 = partition(resolve_tracks(8, cand, prob, 0.5, 4))
    assert got4 == {frozenset({4, 5, 6, 7}), frozenset({0}), frozenset({1}), frozenset({2}), frozenset({3})}
    assert got == resolve_reference(8, cand.tolist(), prob.tolist(), 0.5, 3)


@pytest.mark.parametrize("seed", range(6))
def test_resolve_matches_reference_on_random_sets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, p_n, m = 30, 18, 6
    piv = rng.choice(n, p_n, replace=False)
    cand = np.stack([np.concatenate([[p], rng.choice(np.setdiff1d(np.arange(n), [p]), m - 1, replace=False)])
                     for p in piv])
    prob = rng.random((p_n, m))
    for thr, mh in ((0.5, 3), (0.3, 2), (0.7, 1)):
        got = partition(resolve_tracks(n, cand, prob, thr, mh))
        assert got == resolve_reference(n, cand.tolist(), prob.tolist(), thr, mh)


def test_candidate_sets_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(60, 5, generator=g)
    pivots = torch.tensor([0, 7, 13, 59, 30])
    got = candidate_sets(emb, pivots, 10)
    z = F.normalize(emb.double(), dim=1)
    sim = z @ z.T
    for row, p in zip(got.tolist(), pivots.tolist()):
        others = sorted((k for k in range(60) if k != p), key=lambda k: -float(sim[p, k]))
        assert row == [p] + others[:9]
    assert candidate_sets(emb[:4], pivots[:2] % 4, 10).shape == (2, 4)  # fewer hits than m


@pytest.mark.parametrize("hops", [1, 2, 4])
def test_graph_candidate_sets_match_breadth_first_search(hops: int) -> None:
    g = torch.Generator().manual_seed(hops)
    n, m, cut = 50, 12, 0.5
    emb = torch.randn(n, 4, generator=g)
    edges = torch.randint(0, n, (2, 80), generator=g)
    edges = edges[:, edges[0] != edges[1]]
    scores = torch.rand(edges.shape[1], generator=g)
    pivots = torch.tensor([0, 3, 17, 49, 25, 8])
    got = candidate_sets(emb, pivots, m, edges, scores, cut, hops)
    z = F.normalize(emb.double(), dim=1)
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for (a, b), s in zip(edges.T.tolist(), scores.tolist()):
        if s > cut:
            adj[a].add(b)
            adj[b].add(a)
    for row, p in zip(got.tolist(), pivots.tolist()):
        dist, frontier = {p: 0}, [p]
        for h in range(1, hops + 1):
            frontier = [v for u in frontier for v in adj[u] if v not in dist]
            for v in frontier:
                dist.setdefault(v, h)
            frontier = sorted(set(frontier))
        order = sorted(range(n), key=lambda k: (dist.get(k, hops + 1), -float(z[p] @ z[k]), k))
        assert row == order[:m]
    # hops = 0 ignores the graph
    assert torch.equal(candidate_sets(emb, pivots, m, edges, scores, cut, 0), candidate_sets(emb, pivots, m))


def test_labels_and_tokens() -> None:
    pid = torch.tensor([0, 5, 5, 7, 5])
    cand = torch.tensor([[1, 2, 3, 0], [0, 1, 2, 4], [3, 1, 0, 2]])
    lab = set_labels(pid, cand)
    want = [[1.0 if int(pid[c]) == int(pid[r[0]]) and int(pid[r[0]]) != 0 else 0.0 for c in r] for r in cand.tolist()]
    assert lab.tolist() == want


def test_training_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    geo = Geometry.from_file(SHARED / "detectors.csv.gz")
    item = prepare_event(simulate_event(geo, SimConfig(pileup=1), seed=3, name="event000000003"))
    embed = HitEmbedding(8, 16, 1).eval()
    with torch.no_grad():
        emb = embed(item["feats"])
    gnn = EdgeGNN(8, 8, 1, "mean").eval()
    graph = cluster_inputs(gnn, {**item, "emb": emb, "edges": knn_graph(emb, 6)})
    with torch.no_grad():  # the node representation and scores are the GNN's own
        assert torch.allclose(graph["scores"], torch.sigmoid(gnn(item["feats"], emb, item["xyz"], graph["edges"])))
        z, _ = gnn_node_repr(gnn, item["feats"], emb, item["xyz"], graph["edges"])
        assert torch.equal(z, graph["z"])
    cand = candidate_sets(emb, graph["pivot_pool"][:200], 12)
    tok = set_tokens(graph["z"], emb, graph["xyz"], graph["edges"], graph["scores"], cand)
    assert tok.shape == (len(cand), 12, 3 * 8 + 11) and torch.isfinite(tok).all()
    y = set_labels(graph["pid"], cand)
    net = PivotSetNet(8, 16, 1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(set_loss(net(tok), y))
    for _ in range(40):
        opt.zero_grad()
        loss = set_loss(net(tok), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(set_loss(net(tok), y))
    assert after < 0.7 * before
