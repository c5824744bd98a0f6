"""sup_con against an independent loop reference, gradcheck, and its identities."""

from __future__ import annotations

import pytest
import torch
from _loss_refs import compare, ref_sup_con

from core.losses import SupCon, nt_xent, sup_con


def _inputs(B, V, D, n_classes, seed=0, temperature=0.3):
    g = torch.Generator().manual_seed(seed)
    labels = None
    if n_classes is not None:
        labels = torch.arange(B) % n_classes  # every class present, shuffled
        labels = labels[torch.randperm(B, generator=g)]
    return {"features": torch.randn(B, V, D, generator=g, dtype=torch.float64),
            "temperature": torch.tensor(temperature, dtype=torch.float64)}, labels


@pytest.mark.parametrize("B,V,D,n_classes", [(3, 2, 4, None), (6, 2, 5, 3), (5, 3, 3, 2), (8, 1, 6, 3), (4, 4, 8, 4)])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_sup_con_matches_loop_reference(B, V, D, n_classes, variant, reduction):
    x, labels = _inputs(B, V, D, n_classes, seed=B * V + D)
    kw = {"labels": labels, "variant": variant, "reduction": reduction, "base_temperature": 0.07}
    compare(lambda **k: sup_con(**k, **kw), lambda **k: ref_sup_con(**k, **kw), x)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_sup_con_gradcheck(variant):
    x, labels = _inputs(3, 2, 3, 2, seed=4)
    f, t = x["features"].clone().requires_grad_(), x["temperature"].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda f, t: sup_con(f, labels, temperature=t, variant=variant), (f, t))


@pytest.mark.parametrize("variant", ["out", "in"])
def test_all_distinct_labels_with_two_views_is_nt_xent(variant):
    # one positive per anchor: "in" and "out" coincide, and the 2N formulation is SimCLR's
    x, _ = _inputs(6, 2, 5, None, seed=9)
    f, t = x["features"], 0.2
    labels = torch.tensor([4, 0, 2, 9, 7, 1])
    nt = nt_xent(f[:, 0], f[:, 1], temperature=t, reduction="none")
    for y in (labels, None):
        sc = sup_con(f, y, temperature=t, base_temperature=t, variant=variant, reduction="none")
        torch.testing.assert_close(sc, nt, rtol=1e-12, atol=1e-12)


def test_in_is_a_lower_bound_of_out():
    # Jensen: -log(mean p) <= -mean(log p)
    x, labels = _inputs(8, 2, 4, 3, seed=10)
    out = sup_con(x["features"], labels, reduction="none")
    inn = sup_con(x["features"], labels, variant="in", reduction="none")
    assert bool((inn <= out + 1e-12).all())


def test_temperature_ratio_scales_the_loss():
    x, labels = _inputs(5, 2, 4, 2, seed=11)
    a = sup_con(x["features"], labels, temperature=0.1, base_temperature=0.1)
    b = sup_con(x["features"], labels, temperature=0.1, base_temperature=0.05)
    torch.testing.assert_close(b, 2 * a, rtol=1e-12, atol=0)


def test_module_equals_function():
    x, labels = _inputs(5, 2, 4, 2, seed=12)
    m = SupCon(temperature=0.1, variant="in")
    torch.testing.assert_close(m(x["features"], labels), sup_con(x["features"], labels, temperature=0.1, variant="in"))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_anchor_mask_and_dot_similarity_match_loop_reference(similarity, variant, reduction):
    # samples 5 and 6 are singletons (labels 7 and 8) with one view each: valid only as negatives
    g = torch.Generator().manual_seed(11)
    x = {"features": 0.5 * torch.randn(7, 1, 4, generator=g, dtype=torch.float64),
         "temperature": torch.tensor(0.5, dtype=torch.float64)}
    labels = torch.tensor([0, 1, 0, 1, 0, 7, 8])
    mask = torch.tensor([True, True, True, True, True, False, False])
    kw = {"labels": labels, "variant": variant, "reduction": reduction, "similarity": similarity,
          "anchor_mask": mask}
    compare(lambda **k: sup_con(**k, **kw), lambda **k: ref_sup_con(**k, **kw), x)
    with pytest.raises(ValueError, match="no positive"):
        sup_con(x["features"], labels, similarity=similarity)  # the singletons cannot be anchors


def test_anchor_mask_keeps_the_unmasked_rows_of_the_full_loss():
    x, labels = _inputs(6, 2, 5, 3, seed=3)
    mask = torch.tensor([True, False, True, True, False, True])
    full = sup_con(x["features"], labels, reduction="none")
    part = sup_con(x["features"], labels, anchor_mask=mask, reduction="none")
    torch.testing.assert_close(part, full[mask.repeat(2)], rtol=1e-12, atol=0)


@pytest.mark.parametrize("tile_size", [2, (3, 4)])
def test_anchor_mask_tiled_equals_dense(tile_size):
    x, labels = _inputs(7, 2, 4, 3, seed=5)
    mask = torch.tensor([True, False, True, True, True, False, True])
    kw = {"labels": labels, "anchor_mask": mask, "similarity": "dot", "reduction": "none"}
    compare(lambda **k: sup_con(**k, **kw, tile_size=tile_size), lambda **k: sup_con(**k, **kw), x,
            rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", [torch.tensor([1, 0, 1]), torch.tensor([True, False]),
                                 torch.zeros(3, dtype=torch.bool)])
def test_anchor_mask_is_validated(bad):
    x, labels = _inputs(3, 2, 4, 2, seed=1)
    with pytest.raises(ValueError, match="anchor_mask"):
        sup_con(x["features"], labels, anchor_mask=bad)
