"""CACR (Zheng et al. 2021) against a float64 per-anchor loop of the paper's formula: loss and gradients dense,
tiled and through the single-process gather / ring paths, gradcheck, and input validation."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from core.losses import CACR, cacr

EXACT = {"rtol": 1e-10, "atol": 1e-12}
B, D = 9, 5


def _data(seed: int = 0, b: int = B):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, D, generator=g, dtype=torch.float64)
    k = q + 0.7 * torch.randn(b, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1][:b])
    return q, k, labels


def ref_cacr(query, key, labels=None, t_pos=1.0, t_neg=1.0, similarity="cosine", reduction="mean"):
    """The paper's formula, one anchor at a time: d_ij = ||f(q_i) - f(k_j)||^2, pi+ ~ exp(+t_pos d) over the
    positives, pi- ~ exp(-t_neg d) over the negatives, loss_i = E_pi+[d] - E_pi-[d]."""
    f = (lambda x: x / x.norm(dim=1, keepdim=True)) if similarity == "cosine" else (lambda x: x)
    fq, fk = f(query), f(key)
    per = []
    for i in range(query.shape[0]):
        pos, neg = [], []
        for j in range(key.shape[0]):
            d = ((fq[i] - fk[j]) ** 2).sum()
            is_pos = (j == i) if labels is None else bool(labels[j] == labels[i])
            (pos if is_pos else neg).append(d)
        dp, dn = torch.stack(pos), torch.stack(neg)
        wp = torch.softmax(t_pos * dp, 0)
        wn = torch.softmax(-t_neg * dn, 0)
        per.append((wp * dp).sum() - (wn * dn).sum())
    per = torch.stack(per)
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


def _loss_and_grads(fn, q, k, **kw):
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    out = fn(q, k, **kw)
    gq, gk = torch.autograd.grad(out.sum(), (q, k))
    return out.detach(), gq, gk


SETTINGS = [
    {},
    {"t_pos": 2.0, "t_neg": 3.0},
    {"t_neg": 0.0},
    {"labels": True, "t_pos": 1.5, "t_neg": 2.0},
    {"labels": True, "t_pos": 0.0, "t_neg": 0.5, "similarity": "dot"},
    {"similarity": "dot", "t_neg": 0.3, "reduction": "none"},
    {"labels": True, "reduction": "sum"},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "default")
@pytest.mark.parametrize("tile_size", [None, 4, (2, 3)])
def test_matches_the_per_anchor_reference(settings, tile_size):
    q, k, labels = _data()
    kw = dict(settings)
    if kw.pop("labels", False):
        kw["labels"] = labels
    want = _loss_and_grads(ref_cacr, q, k, **kw)
    got = _loss_and_grads(cacr, q, k, tile_size=tile_size, **kw)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **EXACT)


@pytest.mark.parametrize("gather", [True, "ring"])
def test_single_process_gather_paths_equal_dense(gather):
    q, k, labels = _data(1)
    for kw in ({}, {"labels": labels, "t_pos": 1.5}):
        want = _loss_and_grads(cacr, q, k, **kw)
        got = _loss_and_grads(cacr, q, k, gather=gather, tile_size=(3, 4), **kw)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **EXACT)


def test_one_positive_makes_the_attraction_the_positive_distance():
    q, k, _ = _data(2)
    qn, kn = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    d = torch.cdist(qn, kn) ** 2
    off = ~torch.eye(B, dtype=torch.bool)
    # t_neg = 0: the repulsion is the plain mean distance to the negatives; t_pos has no effect
    want = d.diagonal() - (d * off).sum(1) / (B - 1)
    for t_pos in (0.0, 5.0):
        torch.testing.assert_close(cacr(q, k, t_pos=t_pos, t_neg=0.0, reduction="none"), want, **EXACT)
    # a large t_neg weighs only the closest negative
    closest = d.masked_fill(~off, math.inf).min(1).values
    torch.testing.assert_close(cacr(q, k, t_neg=1e4, reduction="none"), d.diagonal() - closest, rtol=1e-6, atol=1e-8)


def test_gradcheck():
    q, k, labels = _data(3, b=5)
    for kw in ({"t_pos": 1.0, "t_neg": 2.0}, {"labels": labels[:5], "t_pos": 1.5, "t_neg": 0.7},
               {"similarity": "dot", "t_neg": 0.2, "tile_size": 2}):
        assert torch.autograd.gradcheck(lambda a, b, kw=kw: cacr(a, b, **kw),
                                        (q.clone().requires_grad_(), k.clone().requires_grad_()))


def test_float32_and_identical_embeddings_are_finite():
    q, k, _ = _data(4)
    x = q.float().requires_grad_()
    loss = cacr(x, x.detach().clone(), t_neg=2.0)  # d_ii = 0: the log1p shift keeps the gradient finite
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    want = ref_cacr(q, q, t_neg=2.0)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)


def test_module_and_errors():
    q, k, labels = _data(5)
    torch.testing.assert_close(CACR(t_pos=2.0, t_neg=0.5)(q, k, labels), cacr(q, k, labels, t_pos=2.0, t_neg=0.5))
    with pytest.raises(ValueError, match="t_neg"):
        cacr(q, k, t_neg=-1.0)
    with pytest.raises(ValueError, match="t_pos"):
        CACR(t_pos=float("nan"))
    with pytest.raises(ValueError, match="similarity"):
        cacr(q, k, similarity="l2")
    with pytest.raises(ValueError, match="no negatives"):
        cacr(q, k, torch.zeros(B, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        cacr(q[:1], k[:1])
    with pytest.raises(ValueError, match="labels"):
        cacr(q, k, labels[:4])


@pytest.mark.parametrize("kw", [{}, {"labels": True, "t_pos": 1.5, "t_neg": 2.0}, {"similarity": "dot", "t_neg": 0.4}])
def test_hand_written_tile_gradient_equals_the_autograd_replay(kw, monkeypatch):
    module = importlib.import_module("core.losses.cacr")  # the module (core.losses.cacr is also the function)

    q, k, labels = _data(6)
    kw = dict(kw)
    if kw.pop("labels", False):
        kw["labels"] = labels
    calls = []
    direct = module._CACRBlock.direct_grad

    def counting(self, *args):
        calls.append(1)
        return direct(self, *args)

    monkeypatch.setattr(module._CACRBlock, "direct_grad", counting)
    by_hand = _loss_and_grads(cacr, q, k, tile_size=(4, 3), **kw)
    assert len(calls) == 3 * 3  # every tile of the 9 x 9 matrix in (4, 3) tiles
    monkeypatch.delattr(module._CACRBlock, "direct_grad")
    replayed = _loss_and_grads(cacr, q, k, tile_size=(4, 3), **kw)
    for g, w in zip(by_hand, replayed):
        torch.testing.assert_close(g, w, **EXACT)
