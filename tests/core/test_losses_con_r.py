"""con_r against an independent loop reference (both denominators, both pushes, vector labels), gradcheck
and identities."""

from __future__ import annotations

import pytest
import torch
from _loss_refs import compare, ref_con_r

from core.losses import ConR, con_r


def _flat(x, V):
    """(B, V, ...) -> (V B, ...) view-major."""
    return x.transpose(0, 1).reshape(V * x.shape[0], *x.shape[2:])


def _regression(N, D, L=None, seed=0, dtype=torch.float64):
    """Integer-valued labels (exact window ties) and predictions partly collapsed towards the mean."""
    g = torch.Generator().manual_seed(seed)
    shape = (N,) if L is None else (N, L)
    y = torch.randint(0, 6, shape, generator=g).to(dtype)
    p = 0.4 * y + 1.5 + 0.5 * torch.randn(shape, generator=g, dtype=dtype)
    f = torch.randn(N, D, generator=g, dtype=dtype)
    return f, y, p


CASES = {
    "paper-exp": {},
    "official-exp": {"denominator": "official"},
    "linear": {"push": "linear", "push_scale": 0.2, "window": 0.5},
    "official-linear": {"push": "linear", "push_scale": 0.2, "denominator": "official"},
    "weights": {"weights": True, "push_scale": 0.3},
    "wide-window": {"window": 2.0, "push_scale": 0.05},
}


@pytest.mark.parametrize("N,D,L", [(4, 3, None), (9, 5, None), (12, 4, None), (10, 6, 2)])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_con_r_matches_loop_reference(N, D, L, case, reduction):
    f, y, p = _regression(N, D, L, seed=N * 3 + D)
    kw = dict(CASES[case], reduction=reduction)
    if kw.pop("weights", False):
        kw["sample_weights"] = torch.rand(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    x = {"features": f, "temperature": torch.tensor(0.2, dtype=torch.float64)}
    ours = lambda **k: con_r(labels=y, preds=p, **k, **kw)  # noqa: E731
    ref = lambda **k: ref_con_r(labels=y, preds=p, **k, **kw)  # noqa: E731
    if case == "paper-exp" and reduction == "mean":
        # the test data must exercise the rule: some anchors with negatives, some without
        per = con_r(f, y, p, reduction="none")
        assert bool((per != 0).any())
    compare(ours, ref, x)


@pytest.mark.parametrize("per_view_preds", [False, True])
def test_con_r_three_dim_features(per_view_preds):
    B, V, D = 6, 2, 4
    g = torch.Generator().manual_seed(5)
    f = torch.randn(B, V, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (B,), generator=g).double()
    p = (0.3 * y + 1.0)[:, None] + 0.3 * torch.randn(B, V, generator=g, dtype=torch.float64)
    w = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    if not per_view_preds:
        p = p[:, 0]
    flat_p = _flat(p, V) if per_view_preds else p.repeat(V)
    compare(lambda features: con_r(features, y, p, sample_weights=w, reduction="none"),
            lambda features: ref_con_r(_flat(features, V), y.repeat(V), flat_p, sample_weights=w.repeat(V),
                                       reduction="none"),
            {"features": f})


def test_con_r_gradcheck():
    f, y, p = _regression(6, 3, seed=2)
    for denominator in ("paper", "official"):
        fn = lambda f, t, d=denominator: con_r(f, y, p, temperature=t, denominator=d)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (f.clone().requires_grad_(), torch.tensor(0.3, dtype=torch.float64,
                                                                                       requires_grad=True)))


def test_anchors_without_negatives_contribute_zero_and_mean_is_over_all_anchors():
    # predictions that agree with the labels: no collapse candidates, so no anchor contributes
    f, y, _ = _regression(8, 4, seed=3)
    assert float(con_r(f, y, 10 * y)) == 0.0
    # one anchor with a negative: the mean divides by all N anchors
    per = con_r(f, y, torch.where(y == y[0], y, 10 * y), reduction="none")
    torch.testing.assert_close(con_r(f, y, torch.where(y == y[0], y, 10 * y)), per.sum() / 8)


def test_official_denominator_adds_one_per_non_positive_column():
    f, y, p = _regression(9, 4, seed=4)
    paper = con_r(f, y, p, reduction="none")
    official = con_r(f, y, p, denominator="official", reduction="none")
    # official: the denominator grows, so every contributing anchor's loss grows
    active = paper != 0
    assert bool(active.any()) and bool((official[active] > paper[active]).all())
    assert bool((official[~active] == 0).all())


def test_module_equals_function():
    f, y, p = _regression(8, 4, seed=6)
    torch.testing.assert_close(ConR(temperature=0.07, denominator="official")(f, y, p),
                               con_r(f, y, p, temperature=0.07, denominator="official"))
