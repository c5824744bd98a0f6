r"""The learned pipeline: hit features -> metric embedding -> kNN graph -> GNN edge scores -> tracks.

1. **Hit embedding** (:class:`HitEmbedding`): an MLP from the hit's cylindrical coordinates to a unit vector;
   trained with the supervised contrastive loss (Khosla et al. 2020) with particle ids as labels
   (:func:`hit_contrastive_loss`, :func:`core.losses.sup_con` with an anchor mask, tiled for large events) so
   hits of one particle are close and other hits far.
2. **Graph** (:func:`knn_graph`): every hit linked to its k nearest neighbours in that space (faiss exact
   inner-product search; PyG's ``knn_graph`` needs torch-cluster, which does not install here), symmetrised.
3. **GNN** (:class:`EdgeGNN`): HyperTrack-style message passing. Each :class:`SuperEdgeConv` layer computes
   :math:`m_{ij} = \mathrm{MLP}([x_i, x_j - x_i, x_i \odot x_j, \|x_j - x_i\|, a_{ij}])`, averages it over the
   neighbours and updates :math:`x_i \leftarrow x_i + \mathrm{MLP}([x_i, \bar m_i])`; the outputs of all layers
   are fused into a node representation :math:`z`, and an edge's logit is
   :math:`\mathrm{MLP}([z_i \odot z_j, |z_i - z_j|, a_{ij}])` (symmetric in i, j).
4. **Losses** on edges: a class-balanced focal loss (:func:`focal_edge_loss`, gamma = 1) and HyperTrack's
   per-particle edge contrastive loss (:func:`edge_contrastive_loss`).
5. **Track building**: best-neighbour chaining (:func:`chain_tracks`; the learned clusterer, the full method,
   is in :mod:`apps.tracking.cluster`) and edge-score cut +
   connected components (:func:`connected_components_tracks`, the baseline builder); the DBSCAN baseline
   (:func:`dbscan_tracks`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from apps.tracking.metrics import as_singletons
from core.losses import sup_con

__all__ = [
    "hit_features", "HitEmbedding", "hit_contrastive_loss", "knn_graph", "edge_attributes", "SuperEdgeConv",
    "EdgeGNN", "focal_edge_loss", "edge_contrastive_loss", "edge_contrastive_loss_reference",
    "connected_components_tracks", "chain_tracks", "dbscan_features", "dbscan_tracks", "edge_auc", "reachable_share",
    "N_HIT_FEATURES", "N_EDGE_FEATURES",
]

N_HIT_FEATURES = 7
N_EDGE_FEATURES = 7


def hit_features(xyz: np.ndarray | Tensor) -> Tensor:
    """(N, 7) float32: r/1000, z/1000, cos phi, sin phi, asinh(z/r)/3, r/d, z/d (mm; d = |xyz|)."""
    x = torch.as_tensor(np.array(xyz, dtype=np.float64))
    r = torch.hypot(x[:, 0], x[:, 1]).clamp_min(1e-3)
    d = torch.linalg.norm(x, dim=1).clamp_min(1e-3)
    phi = torch.atan2(x[:, 1], x[:, 0])
    f = torch.stack([r / 1000, x[:, 2] / 1000, torch.cos(phi), torch.sin(phi), torch.asinh(x[:, 2] / r) / 3,
                     r / d, x[:, 2] / d], dim=1)
    return f.float()


def _mlp(sizes: list[int], norm: bool = True, last_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_act:
            if norm:
                layers.append(nn.LayerNorm(sizes[i + 1]))
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class HitEmbedding(nn.Module):
    """MLP hit features -> R^dim (unnormalised; the loss and the graph use the cosine geometry)."""

    def __init__(self, dim: int = 12, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.net = _mlp([N_HIT_FEATURES] + [hidden] * depth + [dim])

    def forward(self, feats: Tensor) -> Tensor:
        return self.net(feats)


def hit_contrastive_loss(emb: Tensor, particle_id: Tensor, *, temperature: float = 0.1, max_anchors: int = 2048,
                         tile_size: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    r"""SupCon "out" over hits with particle-id labels, anchors = up to ``max_anchors`` random non-noise hits
    whose particle has another hit, candidates = every hit of the event:

    .. math::  \ell_a = -\frac{1}{|P(a)|} \sum_{p \in P(a)} \log \frac{e^{s_{ap}/\tau}}{\sum_{k \ne a} e^{s_{ak}/\tau}}

    with cosine similarities :math:`s`. Noise hits (``particle_id`` 0) are only negatives. This is
    :func:`core.losses.sup_con` with an ``anchor_mask`` (so noise hits and single-hit particles take part as
    negatives only); ``tile_size`` bounds the memory to anchors x tile. The loss is one event's: it never
    gathers hits from other ranks under data-parallel training (particle ids of different events would collide).
    """
    pid = particle_id.to(emb.device).long()
    n = len(pid)
    _, inv, cnt = torch.unique(pid, return_inverse=True, return_counts=True)
    ok = (pid != 0) & (cnt[inv] >= 2)
    cand = torch.nonzero(ok).squeeze(1)
    if len(cand) == 0:
        return emb.sum() * 0.0
    if len(cand) > max_anchors:
        cand = cand[torch.randperm(len(cand), generator=generator)[:max_anchors].to(cand.device)]
    # noise hits get unique negative labels so they are never positives
    labels = torch.where(pid == 0, -1 - torch.arange(n, device=pid.device), pid)
    anchor_mask = torch.zeros(n, dtype=torch.bool, device=emb.device)
    anchor_mask[cand] = True
    return sup_con(emb[:, None, :], labels, temperature=temperature, base_temperature=temperature,
                   anchor_mask=anchor_mask, tile_size=tile_size, gather=False)


@torch.no_grad()
def knn_graph(emb: Tensor, k: int) -> Tensor:
    """Undirected kNN edges (2, E), i < j, in cosine space: faiss exact inner-product search."""
    import faiss

    z = F.normalize(emb.detach().float(), dim=1).cpu().numpy()
    n = len(z)
    k_eff = min(k + 1, n)
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.long)
    index = faiss.IndexFlatIP(z.shape[1])
    index.add(z)
    _, nbr = index.search(z, k_eff)
    src = np.repeat(np.arange(n), k_eff)
    dst = nbr.reshape(-1)
    keep = (dst >= 0) & (dst != src)
    a, b = src[keep], dst[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo.astype(np.int64) * n + hi)
    return torch.from_numpy(np.stack([key // n, key % n])).long()


def edge_attributes(xyz: Tensor, emb: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """(E, 7) geometric attributes of directed edges src -> dst: dr, dz, dphi (wrapped), d(pseudo-eta), the
    cosine distance in the embedding, the z-intercept at r = 0 of the line through both hits (in the r-z
    plane; compatible with the beam spot for true edges) and the signed curvature of the circle through the
    origin and both hits (transverse plane; it is 1/R of the particle for true edges)."""
    r = torch.hypot(xyz[:, 0], xyz[:, 1]).clamp_min(1e-3)
    phi = torch.atan2(xyz[:, 1], xyz[:, 0])
    eta = torch.asinh(xyz[:, 2] / r)
    dphi = torch.remainder(phi[dst] - phi[src] + math.pi, 2 * math.pi) - math.pi
    zn = F.normalize(emb, dim=1)
    cos = (zn[src] * zn[dst]).sum(1)
    dr = r[dst] - r[src]
    dz = xyz[dst, 2] - xyz[src, 2]
    safe = torch.where(dr.abs() < 1e-3, torch.full_like(dr, 1e-3), dr)
    z0 = torch.where(dr.abs() < 1e-3, torch.zeros_like(dr), xyz[src, 2] - r[src] * dz / safe).clamp(-1000, 1000)
    x1, y1, x2, y2 = xyz[src, 0], xyz[src, 1], xyz[dst, 0], xyz[dst, 1]
    chord = torch.hypot(x2 - x1, y2 - y1).clamp_min(1e-3)
    kappa = 2 * (x1 * y2 - x2 * y1) / (r[src] * r[dst] * chord)  # 1/mm
    return torch.stack([dr / 300, dz / 300, dphi * 3, eta[dst] - eta[src], (1 - cos) * 3, z0 / 200,
                        (kappa * 500).clamp(-5, 5)], dim=1).float()


class SuperEdgeConv(MessagePassing):
    r"""One HyperTrack-style layer: :math:`m_{ij} = \mathrm{MLP}([x_i, x_j - x_i, x_i \odot x_j,
    \|x_j - x_i\|, a_{ij}])`, aggregated over neighbours j (``aggr``: "mean" as HyperTrack, or e.g. "mean+max",
    concatenated), then :math:`x_i + \mathrm{MLP}([x_i, \bar m_i])`."""

    def __init__(self, dim: int, edge_dim: int = N_EDGE_FEATURES, aggr: str = "mean") -> None:
        aggrs = aggr.split("+")
        super().__init__(aggr=aggrs if len(aggrs) > 1 else aggrs[0])
        self.msg = _mlp([3 * dim + 1 + edge_dim, dim, dim], last_act=True)
        self.upd = _mlp([(1 + len(aggrs)) * dim, dim, dim])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        m = self.propagate(edge_index, x=x, edge_attr=edge_attr)
        return self.norm(x + self.upd(torch.cat([x, m], dim=1)))

    def message(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor) -> Tensor:  # noqa: D102 (PyG hook)
        d = x_j - x_i
        return self.msg(torch.cat([x_i, d, x_i * x_j, d.norm(dim=1, keepdim=True), edge_attr], dim=1))


class EdgeGNN(nn.Module):
    """Node encoder + ``layers`` :class:`SuperEdgeConv` + fusion MLP + symmetric edge head."""

    def __init__(self, embed_dim: int, hidden: int = 64, layers: int = 4, aggr: str = "mean") -> None:
        super().__init__()
        self.encode = _mlp([N_HIT_FEATURES + embed_dim, hidden, hidden], last_act=True)
        self.convs = nn.ModuleList([SuperEdgeConv(hidden, aggr=aggr) for _ in range(layers)])
        self.fuse = _mlp([hidden * (layers + 1), hidden, hidden])
        self.head = _mlp([2 * hidden + N_EDGE_FEATURES, hidden, hidden // 2, 1])

    def forward(self, feats: Tensor, emb: Tensor, xyz: Tensor, edges: Tensor) -> Tensor:
        """Edge logits (E,) for undirected ``edges`` (2, E)."""
        both = torch.cat([edges, edges.flip(0)], dim=1)
        attr = edge_attributes(xyz, emb, both[0], both[1])
        # messages flow j -> i along (source=j, target=i): PyG convention edge_index[0] = source
        h = self.encode(torch.cat([feats, F.normalize(emb, dim=1)], dim=1))
        outs = [h]
        for conv in self.convs:
            h = conv(h, both, attr)
            outs.append(h)
        z = self.fuse(torch.cat(outs, dim=1))
        a, b = edges
        # canonical direction (inner -> outer by distance from the origin) makes the head symmetric
        d = torch.linalg.norm(xyz, dim=1)
        inner = torch.where(d[a] <= d[b], a, b)
        outer = torch.where(d[a] <= d[b], b, a)
        e_attr = edge_attributes(xyz, emb, inner, outer)
        return self.head(torch.cat([z[a] * z[b], (z[a] - z[b]).abs(), e_attr], dim=1)).squeeze(1)


def focal_edge_loss(logits: Tensor, target: Tensor, gamma: float = 1.0) -> Tensor:
    r"""Class-balanced focal loss: :math:`\sum_e w_e (1 - p_{t,e})^\gamma \mathrm{BCE}_e` with
    :math:`w_e = 1 / (2 n_{y_e})`, so true and false edges weigh one half each."""
    y = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p = torch.sigmoid(logits)
    pt = torch.where(y > 0.5, p, 1 - p)
    n_pos, n_neg = y.sum().clamp_min(1), (1 - y).sum().clamp_min(1)
    w = torch.where(y > 0.5, 0.5 / n_pos, 0.5 / n_neg)
    return (w * (1 - pt).pow(gamma) * bce).sum()


def edge_contrastive_loss(scores: Tensor, edges: Tensor, particle_id: Tensor, hit_weight: Tensor,
                          tau: float = 0.3) -> Tensor:
    r"""HyperTrack's per-particle edge contrastive loss. For each particle P (non-noise):
    :math:`E^+_P` = edges with both ends in P, :math:`E^-_P` = edges with exactly one end in P,

    .. math::  \ell_P = -\frac{1}{|E^+_P|} \sum_{e \in E^+_P} \log \frac{e^{s_e/\tau}}{e^{s_e/\tau} +
               \sum_{e' \in E^-_P} e^{s_{e'}/\tau}},
               \qquad L = \frac{\sum_P W_P \ell_P}{\sum_P W_P} \Big/ \overline{|P|},

    over particles with :math:`E^+_P \ne \emptyset`; :math:`W_P` the summed hit weights of P,
    :math:`\overline{|P|}` their mean hit count, ``scores`` s the edge probabilities. Computed with segment
    sums over edges, O(E). (This is a contrast of scalar edge scores grouped per particle, not of embedding
    pairs, so it does not map onto the core engine's anchor x candidate similarity.)
    """
    pid = particle_id.long()
    _, inv, cnt = torch.unique(pid, return_inverse=True, return_counts=True)
    a, b = edges
    pa, pb = pid[a], pid[b]
    ia, ib = inv[a], inv[b]
    n_p = len(cnt)
    logit = scores / tau
    pos = (pa == pb) & (pa != 0)
    neg = pa != pb
    # sum over E^-_P of exp(s/tau): each cross edge is a negative of both of its (non-noise) particles
    ex = torch.exp(logit)
    neg_sum = torch.zeros(n_p, dtype=scores.dtype, device=scores.device)
    ma, mb = neg & (pa != 0), neg & (pb != 0)
    neg_sum = neg_sum.index_add(0, ia[ma], ex[ma]).index_add(0, ib[mb], ex[mb])
    if not bool(pos.any()):
        return scores.sum() * 0.0
    ip = ia[pos]
    term = torch.log1p(neg_sum[ip] / ex[pos])  # -log(e^s / (e^s + N)) = log(1 + N e^-s)
    n_pos = torch.zeros(n_p, dtype=scores.dtype, device=scores.device).index_add(0, ip, torch.ones_like(term))
    ell = torch.zeros(n_p, dtype=scores.dtype, device=scores.device).index_add(0, ip, term)
    has = n_pos > 0
    ell = ell[has] / n_pos[has]
    w_p = torch.zeros(n_p, dtype=scores.dtype, device=scores.device).index_add(0, inv, hit_weight.to(scores.dtype))
    w = w_p[has]
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    mean_size = cnt[has].to(scores.dtype).mean()
    return (w * ell).sum() / w.sum() / mean_size


def edge_contrastive_loss_reference(scores: Tensor, edges: Tensor, particle_id: Tensor, hit_weight: Tensor,
                                    tau: float = 0.3) -> Tensor:
    """Naive per-particle loop of :func:`edge_contrastive_loss` (the test reference)."""
    pid = particle_id.tolist()
    a, b = edges.tolist()
    ells, ws, sizes = [], [], []
    for p in sorted(set(pid) - {0}):
        pos = [e for e in range(len(a)) if pid[a[e]] == p and pid[b[e]] == p]
        neg = [e for e in range(len(a)) if (pid[a[e]] == p) != (pid[b[e]] == p)]
        if not pos:
            continue
        terms = []
        for e in pos:
            num = torch.exp(scores[e] / tau)
            den = num + sum((torch.exp(scores[f] / tau) for f in neg), torch.zeros(()))
            terms.append(-torch.log(num / den))
        ells.append(torch.stack(terms).mean())
        ws.append(sum(float(hit_weight[i]) for i in range(len(pid)) if pid[i] == p))
        sizes.append(sum(1 for q in pid if q == p))
    w = torch.tensor(ws, dtype=scores.dtype)
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    return (w * torch.stack(ells)).sum() / w.sum() / (sum(sizes) / len(sizes))


def connected_components_tracks(n: int, edges: np.ndarray, scores: np.ndarray, cut: float,
                                min_hits: int = 3) -> np.ndarray:
    """Track id per hit: connected components of the edges with score > ``cut``; components smaller than
    ``min_hits`` are split into single hits (each its own track id)."""
    keep = scores > cut
    e = edges[:, keep]
    g = coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    size = np.bincount(lab)
    small = size[lab] < min_hits
    return as_singletons(lab, small)


def chain_tracks(n: int, edges: np.ndarray, scores: np.ndarray, xyz: np.ndarray, cut: float,
                 min_hits: int = 3) -> np.ndarray:
    """Best-neighbour chaining: every hit keeps only its highest-scoring edge (score > ``cut``) towards a hit
    farther from the origin and the one towards a hit closer to it; connected components of the kept edges.
    A single wrong edge can then only merge two tracks if it beats every true edge of a hit."""
    keep = scores > cut
    e, s = edges[:, keep], scores[keep]
    if e.shape[1] == 0:
        return np.arange(n, dtype=np.int64)
    d = np.linalg.norm(xyz, axis=1)
    inner = np.where(d[e[0]] <= d[e[1]], e[0], e[1])
    outer = np.where(d[e[0]] <= d[e[1]], e[1], e[0])
    chosen = np.zeros(e.shape[1], dtype=bool)
    for node in (inner, outer):  # best outward edge of each inner hit, best inward edge of each outer hit
        order = np.lexsort((-s, node))
        first = np.ones(len(order), dtype=bool)
        first[1:] = node[order][1:] != node[order][:-1]
        chosen[order[first]] = True
    return connected_components_tracks(n, e[:, chosen], s[chosen], -np.inf, min_hits)


def dbscan_features(xyz: np.ndarray) -> np.ndarray:
    """The TrackML starter-kit transform: (x/d, y/d, z/r), standardised (d = |xyz|, r = transverse radius)."""
    r = np.hypot(xyz[:, 0], xyz[:, 1])
    d = np.linalg.norm(xyz, axis=1)
    f = np.stack([xyz[:, 0] / d, xyz[:, 1] / d, xyz[:, 2] / r], axis=1)
    return (f - f.mean(0)) / f.std(0).clip(1e-9)


def dbscan_tracks(xyz: np.ndarray, eps: float, min_samples: int = 1) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    lab = DBSCAN(eps=eps, min_samples=min_samples, algorithm="kd_tree").fit_predict(dbscan_features(xyz))
    return as_singletons(lab, lab < 0)


def edge_auc(edges: np.ndarray, scores: np.ndarray, particle_id: np.ndarray) -> float:
    """ROC AUC of edge scores for "both hits are of one (non-noise) particle"; NaN if one class is missing.
    Ties count one half (the Mann-Whitney statistic)."""
    from scipy.stats import rankdata

    pid = np.asarray(particle_id)
    y = (pid[edges[0]] == pid[edges[1]]) & (pid[edges[0]] != 0)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reachable_share(n: int, edges: np.ndarray, particle_id: np.ndarray, min_hits: int = 4) -> float:
    """Share of the particles with ``min_hits`` or more hits that a perfect track builder could still find from
    these edges: more than half of the particle's hits joined by its own edges (one connected component of the
    edges between two of its hits). Compare with the track efficiency to see what the builder loses."""
    pid = np.asarray(particle_id)
    cnt = np.bincount(np.unique(pid[pid != 0], return_inverse=True)[1]) if (pid != 0).any() else np.zeros(0)
    parts = np.unique(pid[pid != 0])
    big = parts[cnt >= min_hits]
    if len(big) == 0:
        return float("nan")
    e = edges[:, (pid[edges[0]] == pid[edges[1]]) & (pid[edges[0]] != 0)] if edges.size else np.zeros((2, 0), int)
    g = coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    hit = pid != 0
    # largest component per particle: count (particle, component) pairs
    pairs, sizes = np.unique(np.stack([pid[hit], lab[hit]]), axis=1, return_counts=True)
    best = {}
    for p, s in zip(pairs[0].tolist(), sizes.tolist()):
        best[p] = max(best.get(p, 0), s)
    tot = dict(zip(parts.tolist(), cnt.tolist()))
    return float(np.mean([2 * best.get(p, 0) > tot[p] for p in big.tolist()]))
