"""Bad input gets a ValueError that names the problem, for every loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.losses import (
    con_r,
    cpc,
    cwcl,
    info_nce,
    mean_shifted,
    multi_view_info_nce,
    nt_xent,
    sig_lip,
    sup_con,
    sup_re_mix,
)

g = torch.Generator().manual_seed(0)
X = torch.randn(4, 3, generator=g)
Y = torch.randn(4, 3, generator=g)
F3 = torch.randn(4, 2, 3, generator=g)
LAB = torch.tensor([0, 1, 0, 1])
REG = torch.tensor([0.0, 1.0, 3.0, 6.0])
W = torch.full((4, 4), 0.5)
C = torch.zeros(3)
NAN = X.clone()
NAN[1, 2] = float("nan")
INF = X.clone()
INF[0, 0] = float("inf")
PRED = [nn.Linear(3, 3)]


def _seq(x):  # (B, T, D) sequences for cpc
    return x[:, None, :].expand(-1, 3, -1).contiguous()


# one valid call per loss, parameterised by the embedding(s) and temperature
PAIRWISE = {
    "info_nce": lambda a, b, t=0.1: info_nce(a, b, temperature=t),
    "nt_xent": lambda a, b, t=0.1: nt_xent(a, b, temperature=t),
    "sig_lip": lambda a, b, t=10.0: sig_lip(a, b, logit_scale=t, logit_bias=-1.0),
    "cwcl": lambda a, b, t=0.1: cwcl(a, b, weights=torch.full((a.shape[0], b.shape[0]), 0.5), temperature=t),
    "mean_shifted": lambda a, b, t=0.1: mean_shifted(a, b, torch.zeros(a.shape[1]), temperature=t),
}
SINGLE = {
    **{k: (lambda f, k=k: lambda a, t=0.1: f(a, a.flip(0), t))(v) for k, v in PAIRWISE.items()},
    "sup_con": lambda a, t=0.1: sup_con(torch.stack([a, a.flip(0)], 1), torch.arange(a.shape[0]) % 2,
                                        temperature=t),
    "multi_view": lambda a, t=0.1: multi_view_info_nce(torch.stack([a, a.flip(0)], 1), temperature=t),
    "con_r": lambda a, t=0.1: con_r(a, torch.arange(a.shape[0]).double(), torch.zeros(a.shape[0]), temperature=t),
    "sup_re_mix": lambda a, t=0.1: sup_re_mix(a, torch.arange(a.shape[0]).double(), temperature=t),
    "cpc": lambda a, t=0.1: cpc(_seq(a), _seq(a), predictors=PRED, temperature=t),
}


def test_every_valid_call_works():
    for name, fn in SINGLE.items():
        assert torch.isfinite(fn(X)), name


@pytest.mark.parametrize("name", list(SINGLE))
@pytest.mark.parametrize("bad,match", [(NAN, "NaN or infinite"), (INF, "NaN or infinite")])
def test_non_finite_embeddings(name, bad, match):
    with pytest.raises(ValueError, match=match):
        SINGLE[name](bad)


@pytest.mark.parametrize("name", list(SINGLE))
def test_empty_batch(name):
    with pytest.raises(ValueError, match="empty"):
        SINGLE[name](X[:0])


@pytest.mark.parametrize("name", list(SINGLE))
@pytest.mark.parametrize("t", [0.0, -0.5, float("nan"), float("inf")])
def test_temperature_must_be_positive_and_finite(name, t):
    with pytest.raises(ValueError, match="(temperature|logit_scale) must be finite and > 0|must be finite"):
        SINGLE[name](X, t)


@pytest.mark.parametrize("name", list(SINGLE))
def test_a_batch_with_no_negatives(name):
    x = X[:1] if name not in ("sup_con", "sup_re_mix") else X
    if name == "sup_con":
        fn = lambda: sup_con(torch.stack([X, Y], 1), torch.zeros(4, dtype=torch.long))  # noqa: E731
    elif name == "sup_re_mix":
        fn = lambda: sup_re_mix(X, torch.ones(4))  # noqa: E731
    elif name == "cpc":
        fn = lambda: cpc(X[:1, None], X[:1, None], predictors=PRED)  # noqa: E731  (one step: no candidate)
    else:
        fn = lambda: SINGLE[name](x)  # noqa: E731
    with pytest.raises(ValueError, match="no negatives|T > K"):
        fn()


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_mismatched_batch_sizes(name):
    with pytest.raises(ValueError, match="same batch size"):
        PAIRWISE[name](X, Y[:3])


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_mismatched_dims(name):
    with pytest.raises(ValueError, match="same feature dimension"):
        PAIRWISE[name](X, torch.randn(4, 5))


@pytest.mark.parametrize("call", [
    lambda: sup_con(F3, LAB[:3]),
    lambda: sup_con(F3, torch.zeros(4, 1)),
    lambda: con_r(X, REG[:3], REG[:3]),
    lambda: con_r(F3, REG[:2], REG[:2]),
    lambda: sup_re_mix(F3, REG[:3]),
    lambda: sup_re_mix(X, torch.zeros(4, 2)),
], ids=["sup_con-short", "sup_con-2d", "con_r-short", "con_r-views", "sup_re_mix-short", "sup_re_mix-2d"])
def test_labels_of_the_wrong_length(call):
    with pytest.raises(ValueError, match="labels must have shape"):
        call()


def test_other_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="preds must have"):
        con_r(X, REG, REG[:3])
    with pytest.raises(ValueError, match="sample_weights must have shape"):
        con_r(X, REG, REG, sample_weights=torch.ones(3))
    with pytest.raises(ValueError, match="weights must have shape"):
        cwcl(X, Y, weights=torch.ones(4, 3), temperature=0.1)
    with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]"):
        cwcl(X, Y, weights=torch.full((4, 4), 2.0), temperature=0.1)
    with pytest.raises(ValueError, match="positive total weight"):
        cwcl(X, Y, weights=torch.zeros(4, 4), temperature=0.1)
    with pytest.raises(ValueError, match="center must have shape"):
        mean_shifted(X, Y, torch.zeros(5))
    with pytest.raises(ValueError, match="V >= 2"):
        multi_view_info_nce(F3[:, :1], temperature=0.1)
    with pytest.raises(ValueError, match="same shape"):
        multi_view_info_nce([X, Y[:, :2]], temperature=0.1)
    with pytest.raises(ValueError, match="T > K"):
        cpc(_seq(X), _seq(X), predictors=PRED * 3)
    with pytest.raises(ValueError, match=r"predictor 1 must map"):
        cpc(_seq(X), _seq(Y[:, :2]), predictors=PRED)
    with pytest.raises(ValueError, match="share"):
        cpc(_seq(X), _seq(Y)[:2], predictors=PRED)
    with pytest.raises(ValueError, match="mix_alpha must"):
        sup_re_mix(X, REG, mix_alpha=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="negatives must have feature dimension"):
        info_nce(X, Y, negatives=torch.randn(2, 5))


def test_anchors_without_positives():
    with pytest.raises(ValueError, match="no positive"):
        sup_con(X[:, None], torch.tensor([0, 1, 1, 2]))


@pytest.mark.parametrize("call,match", [
    (lambda: info_nce(X, Y, reduction="avg"), "reduction"),
    (lambda: sup_con(F3, LAB, variant="both"), "variant"),
    (lambda: info_nce(X, Y, margin=-0.1), "margin"),
    (lambda: info_nce(X, Y, margin_type="arc"), "margin_type"),
    (lambda: info_nce(X, Y, similarity="l2"), "similarity"),
    (lambda: con_r(X, REG, REG, push="quadratic"), "push"),
    (lambda: con_r(X, REG, REG, denominator="code"), "denominator"),
    (lambda: sup_re_mix(X, REG, distance_weight="l3"), "distance_weight"),
    (lambda: info_nce(X, Y, tile_size="big"), "tile_size"),
    (lambda: info_nce(X, Y, gather="all"), "gather"),
], ids=["reduction", "variant", "margin", "margin_type", "similarity", "push", "denominator", "weight", "tile",
        "gather"])
def test_bad_options(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("fn", [info_nce, nt_xent])
def test_angular_margin_needs_cosine_similarity(fn):
    with pytest.raises(ValueError, match="angular margin needs cosine"):
        fn(X, Y, margin=0.1, margin_type="angular", similarity="dot")
    fn(X, Y, margin=0.1, margin_type="additive", similarity="dot")  # additive margins are fine with dot
