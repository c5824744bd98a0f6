r"""Learned track building: a set transformer over pivot hits and their embedding-space neighbourhoods.

Design (CPU-cheap, runs on top of the frozen hit embedding and GNN):

1. **Pivots**: every hit that has at least one kNN-graph edge (all hits are tried; a pivot network output says
   how likely the pivot is a real particle's hit, so noise pivots drop out).
2. **Candidate set** of a pivot (:func:`candidate_sets`): the hits within a few hops over the confident GNN
   edges (score > ``cluster_cut``; nearest hop first), filled up to ``m`` with its nearest hits in the cosine
   geometry of the hit embedding (faiss exact search); the pivot itself first. Hits of one particle are close
   in both, so the set holds the whole track in most cases (embedding neighbours alone cover ~85% of it).
3. **Set network** (:class:`PivotSetNet`): one token per [pivot, candidates] entry with the GNN node
   representation of the hit, its products / differences with the pivot's, the geometric edge attributes
   pivot -> candidate, the GNN edge score of that pair (0 if it is not a graph edge) and the embedding cosine;
   a few transformer-encoder layers (self-attention within the set, padding masked) and a per-token head
   give the logit "this candidate belongs to the pivot's particle" (the pivot token: "the pivot is not noise").
   Trained with a class-balanced focal loss on truth (:func:`set_loss`).
4. **Overlap resolution** (:func:`resolve_tracks`): pivot confidence = p(pivot real) x sum of the member
   probabilities above the threshold; pivots are accepted greedily by confidence unless an accepted pivot
   already claims them (non-maximum suppression); every hit then joins the accepted pivot that gives it the
   highest probability (a pivot always keeps its own hit); tracks smaller than ``min_hits`` are split.

Why not pure edge-based building: chaining and connected components see one edge at a time, while the set
network judges a candidate against the whole neighbourhood at once (e.g. two hits on one layer compete).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apps.tracking.model import N_EDGE_FEATURES, EdgeGNN, edge_attributes, focal_edge_loss

__all__ = ["candidate_sets", "gnn_node_repr", "set_tokens", "PivotSetNet", "set_loss", "set_labels",
           "resolve_tracks", "cluster_event", "learned_tracks", "N_EXTRA"]

N_EXTRA = N_EDGE_FEATURES + 4  # edge attributes + GNN score + is-graph-edge + cosine + is-pivot


@torch.no_grad()
def candidate_sets(emb: Tensor, pivots: Tensor, m: int, edges: Tensor | None = None, scores: Tensor | None = None,
                   cut: float = 0.5, hops: int = 0) -> Tensor:
    """(P, m') long, m' = min(m, N): for each pivot the m' hits that come first in the order (graph distance,
    -cosine similarity of the embedding): the pivot itself (column 0), then the hits within ``hops`` hops over
    the graph ``edges`` with ``scores`` > ``cut`` (nearest hop first, by decreasing similarity within a hop),
    then the remaining hits by decreasing similarity (faiss exact search). ``hops=0``: embedding neighbours only.
    """
    import faiss
    from scipy.sparse import csr_matrix

    zt = F.normalize(emb.detach().float(), dim=1)
    z = zt.cpu().numpy()
    n = len(z)
    m_eff = min(m, n)
    piv = pivots.cpu().numpy().astype(np.int64)
    p_n = len(piv)
    index = faiss.IndexFlatIP(z.shape[1])
    index.add(z)
    _, nbr = index.search(z[piv], min(m_eff + 1, n))
    rows = [np.repeat(np.arange(p_n), nbr.shape[1]), np.arange(p_n)]
    hits = [nbr.reshape(-1), piv]
    hop = [np.full(nbr.size, hops + 1), np.zeros(p_n, dtype=np.int64)]
    if hops > 0 and edges is not None and edges.shape[1]:
        keep = (scores > cut).cpu().numpy()
        a, b = edges.cpu().numpy()[:, keep]
        adj = csr_matrix((np.ones(2 * len(a)), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n))
        frontier = csr_matrix((np.ones(p_n), (np.arange(p_n), piv)), shape=(p_n, n))
        seen = frontier.copy()
        for h in range(1, hops + 1):
            reach = (frontier @ adj).astype(bool).astype(np.float64)
            new = reach - reach.multiply(seen)
            new.eliminate_zeros()
            if new.nnz == 0:
                break
            r, c = new.nonzero()
            rows.append(r)
            hits.append(c)
            hop.append(np.full(len(r), h))
            seen = seen + new
            frontier = new
    r, c, h = np.concatenate(rows), np.concatenate(hits), np.concatenate(hop)
    ok = c >= 0
    r, c, h = r[ok], c[ok], h[ok]
    cos = (zt[torch.from_numpy(piv[r])] * zt[torch.from_numpy(c)]).sum(1).numpy().astype(np.float64)
    order = np.lexsort((c, -cos, h, r))  # by pivot row, then hop, then similarity
    r, c = r[order], c[order]
    _, idx = np.unique(r * n + c, return_index=True)  # drop repeats of a (row, hit): its first place is its best
    first = np.zeros(len(r), dtype=bool)
    first[idx] = True
    r, c = r[first], c[first]
    start = np.searchsorted(r, np.arange(p_n))
    pos = np.arange(len(r)) - start[r]
    take = pos < m_eff
    out = np.empty((p_n, m_eff), dtype=np.int64)
    out[r[take], pos[take]] = c[take]
    return torch.from_numpy(out)


def gnn_node_repr(gnn: EdgeGNN, feats: Tensor, emb: Tensor, xyz: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    """The GNN's fused node representation z (N, hidden) and edge probabilities (E,) of one event."""
    both = torch.cat([edges, edges.flip(0)], dim=1)
    attr = edge_attributes(xyz, emb, both[0], both[1])
    h = gnn.encode(torch.cat([feats, F.normalize(emb, dim=1)], dim=1))
    outs = [h]
    for conv in gnn.convs:
        h = conv(h, both, attr)
        outs.append(h)
    z = gnn.fuse(torch.cat(outs, dim=1))
    if edges.shape[1] == 0:
        return z, torch.zeros(0)
    a, b = edges  # the edge head exactly as in EdgeGNN.forward (no second message-passing pass)
    d = torch.linalg.norm(xyz, dim=1)
    inner = torch.where(d[a] <= d[b], a, b)
    outer = torch.where(d[a] <= d[b], b, a)
    e_attr = edge_attributes(xyz, emb, inner, outer)
    logits = gnn.head(torch.cat([z[a] * z[b], (z[a] - z[b]).abs(), e_attr], dim=1)).squeeze(1)
    return z, torch.sigmoid(logits)


def _pair_scores(n: int, edges: Tensor, scores: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """GNN score of the (undirected) pairs (a, b) and whether they are graph edges (sorted-key lookup)."""
    key = torch.minimum(edges[0], edges[1]) * n + torch.maximum(edges[0], edges[1])
    order = torch.argsort(key)
    key, sc = key[order], scores[order]
    q = torch.minimum(a, b) * n + torch.maximum(a, b)
    if len(key) == 0:
        return torch.zeros_like(q, dtype=torch.float32), torch.zeros_like(q, dtype=torch.float32)
    pos = torch.searchsorted(key, q).clamp_max(len(key) - 1)
    hit = (key[pos] == q) & (a != b)
    return torch.where(hit, sc[pos], torch.zeros_like(sc[pos])), hit.float()


def set_tokens(z: Tensor, emb: Tensor, xyz: Tensor, edges: Tensor, scores: Tensor, cand: Tensor) -> Tensor:
    """(P, m, 3*hidden + N_EXTRA) token features of the candidate sets ``cand`` (pivot in column 0)."""
    p_n, m = cand.shape
    piv = cand[:, :1].expand(p_n, m).reshape(-1)
    c = cand.reshape(-1)
    zp, zc = z[piv], z[c]
    attr = edge_attributes(xyz, emb, piv, c)
    attr = torch.where((piv == c).unsqueeze(1), torch.zeros_like(attr), attr)
    s, is_edge = _pair_scores(len(z), edges, scores, piv, c)
    en = F.normalize(emb, dim=1)
    cos = (en[piv] * en[c]).sum(1)
    is_piv = (piv == c).float()
    tok = torch.cat([zc, zp * zc, (zp - zc).abs(), attr, s[:, None], is_edge[:, None], cos[:, None],
                     is_piv[:, None]], dim=1)
    return tok.reshape(p_n, m, -1)


class PivotSetNet(nn.Module):
    """Token MLP -> ``layers`` transformer-encoder layers (self-attention within each set) -> logit per token."""

    def __init__(self, gnn_hidden: int, dim: int = 32, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(3 * gnn_hidden + N_EXTRA, dim), nn.LayerNorm(dim), nn.SiLU(),
                                 nn.Linear(dim, dim))
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(layers)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.inp(tokens)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h).squeeze(-1)


def set_labels(pid: Tensor, cand: Tensor) -> Tensor:
    """(P, m) truth: candidate has the pivot's (non-noise) particle id; the pivot entry: pivot is not noise."""
    pp = pid[cand[:, :1]]
    return ((pid[cand] == pp) & (pp != 0)).float()


def set_loss(logits: Tensor, labels: Tensor, gamma: float = 1.0) -> Tensor:
    """Class-balanced focal BCE over all set entries (see :func:`apps.tracking.model.focal_edge_loss`)."""
    return focal_edge_loss(logits.reshape(-1), labels.reshape(-1), gamma)


def resolve_tracks(n: int, cand: np.ndarray, prob: np.ndarray, threshold: float = 0.5,
                   min_hits: int = 3) -> np.ndarray:
    """Track id per hit from candidate sets ``cand`` (P, m; pivot in column 0) and membership probabilities
    ``prob`` (P, m; column 0 = p(pivot real)).

    Members of pivot i = candidates with prob > ``threshold``; confidence_i = prob[i, 0] * (sum of the member
    probabilities). Pivots (with prob[i, 0] > threshold) are visited by decreasing confidence (ties: lower row
    first) and accepted unless their hit is already a member of an accepted pivot. Each hit then joins the
    accepted pivot giving it the highest probability (ties: the earlier accepted one; an accepted pivot's own
    hit always stays with it). Tracks with fewer than ``min_hits`` hits and unclaimed hits become single hits.
    """
    cand = np.asarray(cand, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64).copy()
    p_n = len(cand)
    lab = np.full(n, -1, dtype=np.int64)
    if p_n == 0:
        return np.arange(n, dtype=np.int64)
    prob[:, 0] = np.where(prob[:, 0] > threshold, prob[:, 0], 0.0)
    member = prob > threshold
    conf = prob[:, 0] * np.where(member, prob, 0.0).sum(1)
    order = np.lexsort((np.arange(p_n), -conf))
    claimed = np.zeros(n, dtype=bool)
    accepted = []
    for i in order:
        if conf[i] <= 0:
            break
        if claimed[cand[i, 0]]:
            continue
        accepted.append(i)
        claimed[cand[i, member[i]]] = True
    if not accepted:
        return np.arange(n, dtype=np.int64)
    acc = np.array(accepted)
    rank = np.arange(len(acc))
    pr = prob[acc].copy()
    pr[:, 0] = 2.0  # own hit always wins
    mem = member[acc].copy()
    mem[:, 0] = True
    rows, cols = np.nonzero(mem)
    hits, p, r = cand[acc][rows, cols], pr[rows, cols], rank[rows]
    o = np.lexsort((r, -p, hits))
    first = np.ones(len(o), dtype=bool)
    first[1:] = hits[o][1:] != hits[o][:-1]
    lab[hits[o][first]] = r[o][first]
    size = np.bincount(lab[lab >= 0], minlength=len(acc))
    lab[(lab >= 0) & (size[np.maximum(lab, 0)] < min_hits)] = -1
    free = lab < 0
    lab[free] = len(acc) + np.arange(int(free.sum()))
    return lab


def cluster_event(net: PivotSetNet, z: Tensor, emb: Tensor, xyz: Tensor, edges: Tensor, scores: Tensor, m: int,
                  cut: float = 0.5, hops: int = 0, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Candidate sets of every hit with a graph edge as pivot and their membership probabilities."""
    n = len(z)
    has = torch.zeros(n, dtype=torch.bool)
    if edges.shape[1]:
        has[edges.reshape(-1)] = True
    pivots = torch.nonzero(has).squeeze(1)
    if len(pivots) == 0 or n < 2:
        return np.zeros((0, 1), dtype=np.int64), np.zeros((0, 1))
    cand = candidate_sets(emb, pivots, m, edges, scores, cut, hops)
    probs = []
    with torch.no_grad():
        for s in range(0, len(cand), chunk):
            c = cand[s:s + chunk]
            probs.append(torch.sigmoid(net(set_tokens(z, emb, xyz, edges, scores, c))))
    return cand.numpy(), torch.cat(probs).numpy()


@torch.no_grad()
def learned_tracks(net: PivotSetNet, gnn: EdgeGNN, feats: Tensor, emb: Tensor, xyz: Tensor, edges: Tensor, m: int,
                   threshold: float, min_hits: int = 3, cut: float = 0.5, hops: int = 0) -> np.ndarray:
    """The whole learned builder on one event (GNN node representation -> sets -> resolution)."""
    z, scores = gnn_node_repr(gnn, feats, emb, xyz, edges)
    cand, prob = cluster_event(net, z, emb, xyz, edges, scores, m, cut, hops)
    return resolve_tracks(len(z), cand, prob, threshold, min_hits)
