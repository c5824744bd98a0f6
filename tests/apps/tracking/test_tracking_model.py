"""Model pieces against naive references: losses, kNN graph, GNN symmetry, track builders, DBSCAN baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apps.tracking.model import (
    EdgeGNN,
    HitEmbedding,
    chain_tracks,
    connected_components_tracks,
    dbscan_tracks,
    edge_contrastive_loss,
    edge_contrastive_loss_reference,
    focal_edge_loss,
    hit_contrastive_loss,
    hit_features,
    knn_graph,
)


def naive_supcon(z: torch.Tensor, pid: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    z = F.normalize(z, dim=1)
    losses = []
    for a in anchors.tolist():
        logits = z[a] @ z.T / tau
        others = [k for k in range(len(z)) if k != a]
        lse = torch.logsumexp(logits[others], 0)
        pos = [k for k in others if pid[k] == pid[a] and pid[a] != 0]
        losses.append(-(logits[pos] - lse).mean())
    return torch.stack(losses).mean()


def test_hit_contrastive_loss_matches_naive_and_tiled() -> None:
    g = torch.Generator().manual_seed(0)
    pid = torch.tensor([1, 1, 1, 2, 2, 3, 0, 0, 4, 5, 5])  # 4 has one hit: never an anchor; 0 = noise
    z = torch.randn(len(pid), 5, generator=g, requires_grad=True)
    got = hit_contrastive_loss(z, pid, temperature=0.2, max_anchors=100)
    anchors = torch.tensor([0, 1, 2, 3, 4, 9, 10])
    ref = naive_supcon(z, pid, anchors, 0.2)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    tiled = hit_contrastive_loss(z, pid, temperature=0.2, max_anchors=100, tile_size=3)
    assert tiled.item() == pytest.approx(ref.item(), rel=1e-5)
    (gr,) = torch.autograd.grad(got, z)
    (gn,) = torch.autograd.grad(ref, z)
    assert torch.allclose(gr, gn, atol=1e-5)


def test_edge_contrastive_loss_matches_per_particle_loop() -> None:
    g = torch.Generator().manual_seed(1)
    pid = torch.tensor([1, 1, 1, 1, 2, 2, 2, 3, 3, 0, 0, 4])
    w = torch.rand(len(pid), generator=g)
    w[pid == 0] = 0
    edges = torch.randint(0, len(pid), (2, 60), generator=g)
    edges = edges[:, edges[0] != edges[1]]
    s = torch.rand(edges.shape[1], generator=g, requires_grad=True)
    got = edge_contrastive_loss(s, edges, pid, w, tau=0.3)
    ref = edge_contrastive_loss_reference(s, edges, pid, w, tau=0.3)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    (ga,) = torch.autograd.grad(got, s)
    (gb,) = torch.autograd.grad(ref, s)
    assert torch.allclose(ga, gb, atol=1e-6)
    # raising a true edge's score or lowering a cross edge's score lowers the loss
    pos = (pid[edges[0]] == pid[edges[1]]) & (pid[edges[0]] != 0)
    assert (ga[pos] < 0).all() and (ga[~pos & (pid[edges[0]] != pid[edges[1]])] >= 0).all()


def test_focal_loss_reference() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0])
    y = torch.tensor([1, 0, 1, 0, 0])
    p = torch.sigmoid(logits)
    terms = []
    for yi, pi in zip(y.tolist(), p.tolist()):
        pt = pi if yi else 1 - pi
        w = 0.5 / 2 if yi else 0.5 / 3
        terms.append(w * (1 - pt) * -np.log(pt))
    assert focal_edge_loss(logits, y, gamma=1.0).item() == pytest.approx(sum(terms), rel=1e-5)
    bal = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none")
    ref0 = 0.5 * bal[y == 1].mean() + 0.5 * bal[y == 0].mean()
    assert focal_edge_loss(logits, y, gamma=0.0).item() == pytest.approx(ref0.item(), rel=1e-5)


def test_knn_graph_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(60, 4, generator=g)
    k = 5
    got = {tuple(e) for e in knn_graph(z, k).T.tolist()}
    zn = F.normalize(z, dim=1)
    sim = zn @ zn.T
    sim.fill_diagonal_(-2)
    nbr = sim.topk(k, dim=1).indices
    ref = {(min(i, j), max(i, j)) for i in range(60) for j in nbr[i].tolist()}
    assert got == ref


def test_gnn_edge_logits_are_symmetric() -> None:
    torch.manual_seed(0)
    xyz = torch.randn(30, 3) * 300
    feats = hit_features(xyz.numpy())
    emb = HitEmbedding(6, 16, 2)(feats)
    edges = knn_graph(emb, 4)
    gnn = EdgeGNN(6, 16, 2).eval()
    with torch.no_grad():
        a = gnn(feats, emb, xyz, edges)
        b = gnn(feats, emb, xyz, edges.flip(0))
    assert a.shape == (edges.shape[1],)
    assert torch.allclose(a, b, atol=1e-5)


def test_track_builders_by_hand() -> None:
    # hits 0-3 one track (increasing radius), hits 4-6 another; one weak wrong edge (3, 4)
    xyz = np.array([[30, 0, 0], [70, 0, 0], [110, 0, 0], [170, 0, 0], [30, 5, 0], [70, 6, 0], [110, 7, 0.0]])
    edges = np.array([[0, 1, 2, 4, 5, 3, 2], [1, 2, 3, 5, 6, 4, 4]])
    scores = np.array([0.9, 0.95, 0.8, 0.9, 0.9, 0.6, 0.55])
    cc = connected_components_tracks(7, edges, scores, 0.5)
    assert len(set(cc)) == 1  # the cut lets the wrong edges merge both tracks
    cc_hi = connected_components_tracks(7, edges, scores, 0.7)
    assert cc_hi[0] == cc_hi[3] and cc_hi[4] == cc_hi[6] and cc_hi[0] != cc_hi[4]
    ch = chain_tracks(7, edges, scores, xyz, 0.5)
    # hit 4's best inward / outward edges are true ones, hit 3 keeps (2,3): the tracks stay apart
    assert ch[0] == ch[1] == ch[2] == ch[3] and ch[4] == ch[5] == ch[6] and ch[0] != ch[4]
    # components below min_hits become single hits
    small = connected_components_tracks(4, np.array([[0], [1]]), np.array([0.9]), 0.5, min_hits=3)
    assert len(set(small.tolist())) == 4


def test_dbscan_separates_two_straight_tracks() -> None:
    r = np.array([30.0, 70, 110, 170, 260, 360])
    a = np.stack([r, np.zeros(6), r * 0.5], axis=1)
    b = np.stack([r * np.cos(1.0), r * np.sin(1.0), -r * 0.8], axis=1)
    lab = dbscan_tracks(np.concatenate([a, b]), eps=0.05)
    assert len(set(lab[:6])) == 1 and len(set(lab[6:])) == 1 and lab[0] != lab[6]
