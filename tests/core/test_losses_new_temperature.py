"""Per-anchor / learnable temperatures, top-K hard negatives and the class-prior SupCon, against float64
per-anchor loop references written from the formulas (never calling the engine), with tiled = dense and
gradcheck. The multi-process (gather / ring) checks are in ``test_losses_new_distributed.py``."""

from __future__ import annotations

import math

import pytest
import torch
from _loss_refs import compare, lse, reduce_ref, sim, views_major

from core.losses import (
    InfoNCE,
    NTXent,
    PerSampleTemperature,
    SupCon,
    TemperatureNet,
    info_nce,
    nt_xent,
    sup_con,
)

DT = torch.float64


def _t(temperature, i):
    """Temperature of anchor i: a per-anchor tensor's entry, or the scalar."""
    if isinstance(temperature, torch.Tensor) and temperature.dim() == 1 and temperature.numel() > 1:
        return temperature[i]
    return temperature


# ------------------------------------------------------------------------------------------------ references


def _ref_info_direction(anchors, cands, extra, temperature, decoupled, similarity, top_k):
    out = []
    for i in range(anchors.shape[0]):
        t = _t(temperature, i)
        pos = sim(anchors[i], cands[i], similarity) / t
        negs = [sim(anchors[i], cands[j], similarity) / t for j in range(cands.shape[0]) if j != i]
        if extra is not None:
            negs += [sim(anchors[i], n, similarity) / t for n in extra]
        if top_k is not None:
            negs = list(torch.topk(torch.stack(negs), top_k).values)
        terms = negs if decoupled else negs + [pos]
        out.append(lse(terms) - pos)
    return torch.stack(out)


def ref_info_nce(query, key, temperature, symmetric=False, decoupled=False, similarity="cosine", negatives=None,
                 top_k=None, reduction="mean"):
    per = _ref_info_direction(query, key, negatives, temperature, decoupled, similarity, top_k)
    if symmetric:
        per = 0.5 * (per + _ref_info_direction(key, query, None, temperature, decoupled, similarity, top_k))
    return reduce_ref(per, reduction)


def ref_nt_xent(z1, z2, temperature, reduction="mean"):
    n = z1.shape[0]
    z = [*z1, *z2]
    if isinstance(temperature, torch.Tensor) and temperature.dim() == 1 and temperature.numel() == n:
        temperature = torch.cat([temperature, temperature])
    out = []
    for a in range(2 * n):
        t = _t(temperature, a)
        p = (a + n) % (2 * n)
        pos = sim(z[a], z[p]) / t
        terms = [sim(z[a], z[k]) / t for k in range(2 * n) if k not in (a, p)] + [pos]
        out.append(lse(terms) - pos)
    return reduce_ref(torch.stack(out), reduction)


def ref_sup_con(features, labels, temperature, base_temperature=0.07, variant="out", class_prior=None,
                anchor_mask=None, reduction="mean"):
    """SupCon (Khosla et al. 2020) with per-anchor tau_a and the column log-weights -log pi_{y_k}."""
    B, V, _ = features.shape
    z = views_major(features)
    y = [int(labels[b]) for _ in range(V) for b in range(B)]
    if isinstance(temperature, torch.Tensor) and temperature.dim() == 1 and temperature.numel() == B:
        temperature = temperature.repeat(V)
    out = []
    for a in range(B * V):
        if anchor_mask is not None and not bool(anchor_mask[a % B]):
            continue
        t = _t(temperature, a)
        logits = {}
        for k in range(B * V):
            if k == a:
                continue
            logits[k] = sim(z[a], z[k]) / t
            if class_prior is not None:
                logits[k] = logits[k] - torch.log(class_prior[y[k]])
        log_den = lse(list(logits.values()))
        log_probs = torch.stack([logits[p] - log_den for p in logits if y[p] == y[a]])
        loss = -log_probs.mean() if variant == "out" else -torch.log(torch.exp(log_probs).mean())
        out.append(loss * (t / base_temperature))
    return reduce_ref(torch.stack(out), reduction)


# --------------------------------------------------------------------------------------------------- inputs


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pair(B=6, D=4, seed=0, per_anchor=True):
    g = _gen(seed)
    x = {"query": torch.randn(B, D, generator=g, dtype=DT), "key": torch.randn(B, D, generator=g, dtype=DT)}
    x["temperature"] = (0.2 + torch.rand(B, generator=g, dtype=DT)) if per_anchor else torch.tensor(0.3, dtype=DT)
    return x


INFO_OPTS = {
    "plain": {},
    "symmetric": {"symmetric": True},
    "decoupled": {"decoupled": True},
    "dot": {"similarity": "dot"},
    "negatives": {"negatives": 3},
    "symmetric-negatives": {"symmetric": True, "negatives": 2, "decoupled": True},
}


def _with_negatives(x, opts, seed=5):
    opts = dict(opts)
    if "negatives" in opts:
        x["negatives"] = torch.randn(opts.pop("negatives"), x["query"].shape[1], generator=_gen(seed), dtype=DT)
    return x, opts


# ------------------------------------------------------------------------------ per-anchor temperature: info_nce


@pytest.mark.parametrize("name", list(INFO_OPTS))
def test_info_nce_per_anchor_temperature_matches_reference(name):
    x, opts = _with_negatives(_pair(seed=1), INFO_OPTS[name])
    compare(lambda **k: info_nce(**k, **opts, reduction="none"), lambda **k: ref_info_nce(**k, **opts,
                                                                                       reduction="none"), x)


@pytest.mark.parametrize("tile", [2, (4, 3)])
@pytest.mark.parametrize("name", ["plain", "symmetric", "negatives"])
def test_info_nce_per_anchor_temperature_tiled_equals_dense(name, tile):
    x, opts = _with_negatives(_pair(B=7, seed=2), INFO_OPTS[name])
    compare(lambda **k: info_nce(**k, **opts, tile_size=tile), lambda **k: info_nce(**k, **opts), x)


def test_per_anchor_temperature_gradcheck():
    x = _pair(B=3, D=3, seed=3)
    keys = list(x)
    inputs = tuple(x[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(lambda *t: info_nce(**dict(zip(keys, t)), symmetric=True), inputs)
    assert torch.autograd.gradcheck(lambda *t: info_nce(**dict(zip(keys, t)), tile_size=2), inputs)
    q, k, t = inputs
    assert torch.autograd.gradcheck(lambda a, b, tt: nt_xent(a, b, temperature=tt, tile_size=2), (q, k, t))
    f = torch.stack([q, k], 1)
    assert torch.autograd.gradcheck(
        lambda ff, tt: sup_con(ff, torch.tensor([0, 1, 0]), temperature=tt, base_temperature=0.5, tile_size=2),
        (f.detach().clone().requires_grad_(), t))


def test_equal_per_anchor_temperatures_equal_the_scalar():
    x = _pair(seed=4)
    same = torch.full((6,), 0.37, dtype=DT)
    for fn, args in ((info_nce, (x["query"], x["key"])), (nt_xent, (x["query"], x["key"])),
                     (sup_con, (torch.stack([x["query"], x["key"]], 1), torch.tensor([0, 1, 2, 0, 1, 2])))):
        torch.testing.assert_close(fn(*args, temperature=same), fn(*args, temperature=0.37), rtol=1e-12, atol=1e-12)


def test_per_anchor_temperature_changes_only_its_anchor():
    x = _pair(seed=6)
    t = torch.full((6,), 0.3, dtype=DT)
    base = info_nce(x["query"], x["key"], temperature=t, reduction="none")
    t2 = t.clone()
    t2[2] = 0.05
    moved = info_nce(x["query"], x["key"], temperature=t2, reduction="none")
    changed = (moved - base).abs() > 1e-12
    assert changed.tolist() == [False, False, True, False, False, False]


# ------------------------------------------------------------------------- per-anchor temperature: nt_xent / sup_con


@pytest.mark.parametrize("per", ["sample", "view"])
def test_nt_xent_per_anchor_temperature_matches_reference(per):
    g = _gen(7)
    z1, z2 = torch.randn(5, 4, generator=g, dtype=DT), torch.randn(5, 4, generator=g, dtype=DT)
    t = 0.2 + torch.rand(5 if per == "sample" else 10, generator=g, dtype=DT)
    x = {"z1": z1, "z2": z2, "temperature": t}
    compare(lambda **k: nt_xent(**k, reduction="none"), lambda **k: ref_nt_xent(**k, reduction="none"), x)
    compare(lambda **k: nt_xent(**k, tile_size=(3, 4)), lambda **k: ref_nt_xent(**k), x)


SUPCON_OPTS = {
    "sample-out": ({"variant": "out"}, "sample"),
    "view-in": ({"variant": "in"}, "view"),
    "prior": ({"class_prior": True}, "scalar"),
    "prior-sample-in-mask": ({"class_prior": True, "variant": "in", "anchor_mask": True}, "sample"),
}


def _sup_inputs(opts, per, seed=8):
    g = _gen(seed)
    B, V = 6, 2
    x = {"features": torch.randn(B, V, 4, generator=g, dtype=DT), "labels": torch.tensor([0, 1, 2, 0, 1, 0])}
    x["temperature"] = {"sample": 0.2 + torch.rand(B, generator=g, dtype=DT),
                        "view": 0.2 + torch.rand(B * V, generator=g, dtype=DT),
                        "scalar": torch.tensor(0.3, dtype=DT)}[per]
    opts = dict(opts)
    if opts.pop("class_prior", False):
        x["class_prior"] = torch.tensor([0.6, 0.3, 0.1], dtype=DT)
    if opts.pop("anchor_mask", False):
        opts["anchor_mask"] = torch.tensor([True, False, True, True, True, False])
    return x, opts


@pytest.mark.parametrize("name", list(SUPCON_OPTS))
def test_sup_con_per_anchor_temperature_and_class_prior_match_reference(name):
    x, opts = _sup_inputs(*SUPCON_OPTS[name])
    grad = ["features", "temperature"]
    compare(lambda **k: sup_con(**k, **opts, base_temperature=0.5, reduction="none"),
            lambda **k: ref_sup_con(**k, **opts, base_temperature=0.5, reduction="none"), x, grad=grad)
    compare(lambda **k: sup_con(**k, **opts, base_temperature=0.5, tile_size=(5, 3)),
            lambda **k: ref_sup_con(**k, **opts, base_temperature=0.5), x, grad=grad)


def test_uniform_class_prior_changes_nothing_and_a_skewed_one_does():
    x, _ = _sup_inputs({}, "scalar")
    plain = sup_con(x["features"], x["labels"], temperature=0.3, reduction="none")
    uniform = sup_con(x["features"], x["labels"], temperature=0.3, class_prior=torch.full((3,), 0.2, dtype=DT),
                      reduction="none")
    torch.testing.assert_close(uniform, plain, rtol=1e-12, atol=1e-12)
    skewed = sup_con(x["features"], x["labels"], temperature=0.3, class_prior=torch.tensor([0.8, 0.15, 0.05],
                     dtype=DT), reduction="none")
    assert (skewed - plain).abs().max() > 1e-3


def test_modules_take_a_per_call_temperature():
    x = _pair(seed=9)
    q, k, t = x["query"], x["key"], x["temperature"]
    torch.testing.assert_close(InfoNCE(temperature=0.5, top_k=3)(q, k, temperature=t),
                               info_nce(q, k, temperature=t, top_k=3))
    torch.testing.assert_close(NTXent()(q, k, temperature=t), nt_xent(q, k, temperature=t))
    f, y = torch.stack([q, k], 1), torch.tensor([0, 1, 0, 1, 2, 2])
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=DT)
    torch.testing.assert_close(SupCon(class_prior=prior)(f, y, temperature=t),
                               sup_con(f, y, temperature=t, class_prior=prior))


# ------------------------------------------------------------------------------------- temperature networks


def test_temperature_net_is_bounded_starts_at_init_and_learns():
    torch.manual_seed(0)
    net = TemperatureNet(4, hidden=8, tau_min=0.05, tau_max=0.5, init=0.2).double()
    x = _pair(B=6, seed=10)
    tau = net(x["query"])
    assert tau.shape == (6,)
    torch.testing.assert_close(tau, torch.full((6,), 0.2, dtype=DT), rtol=1e-6, atol=1e-7)  # float32 init
    loss = info_nce(x["query"], x["key"], temperature=net(x["query"]))
    loss.backward()
    assert net.out.bias.grad is not None and float(net.out.bias.grad.abs()) > 0
    with torch.no_grad():  # extreme weights still give temperatures inside the bounds
        net.out.weight.fill_(100.0)
        net.out.bias.fill_(-50.0)
    far = net(100 * x["query"])
    assert bool((far >= 0.05).all()) and bool((far <= 0.5).all())
    # the gradient reaches the hidden layer once the output layer is non-zero
    net.zero_grad()
    info_nce(x["query"], x["key"], temperature=net(x["query"])).backward()
    assert float(net.hidden.weight.grad.abs().sum()) > 0


def test_per_sample_temperature_indexes_and_is_bounded():
    m = PerSampleTemperature(10, tau_min=0.01, tau_max=1.0, init=0.1).double()
    idx = torch.tensor([3, 7, 3])
    tau = m(idx)
    torch.testing.assert_close(tau, torch.full((3,), 0.1, dtype=DT), rtol=1e-6, atol=1e-7)
    x = _pair(B=3, seed=11)
    info_nce(x["query"], x["key"], temperature=m(idx)).backward()
    g = m.logit.grad
    assert float(g[3].abs()) > 0 and float(g[7].abs()) > 0 and float(g[0]) == 0.0
    with pytest.raises(ValueError, match="index"):
        m(torch.tensor([10]))
    with pytest.raises(ValueError, match="index"):
        m(torch.tensor([0.5]))


@pytest.mark.parametrize("kwargs,match", [
    ({"tau_min": 0.0}, "tau_min"), ({"tau_min": 0.5, "tau_max": 0.2}, "tau_min"), ({"init": 2.0}, "init"),
    ({"hidden": 0}, "hidden"), ({"tau_max": float("inf")}, "tau_max"),
])
def test_temperature_net_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperatureNet(4, **kwargs)


def test_temperature_net_rejects_bad_input():
    net = TemperatureNet(4)
    with pytest.raises(ValueError, match="dimension"):
        net(torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        net(torch.full((3, 4), float("nan")))


# ------------------------------------------------------------------------------------------------------ top-K


TOPK_OPTS = {
    "k1": {"top_k": 1},
    "k3": {"top_k": 3},
    "k4-decoupled": {"top_k": 4, "decoupled": True},
    "k2-symmetric": {"top_k": 2, "symmetric": True},
    "k5-negatives": {"top_k": 5, "negatives": 3},
    "k2-dot-per-anchor": {"top_k": 2, "similarity": "dot", "per_anchor": True},
}


@pytest.mark.parametrize("name", list(TOPK_OPTS))
def test_top_k_matches_reference(name):
    opts = dict(TOPK_OPTS[name])
    x, opts = _with_negatives(_pair(B=7, seed=12, per_anchor=opts.pop("per_anchor", False)), opts)
    compare(lambda **k: info_nce(**k, **opts, reduction="none"),
            lambda **k: ref_info_nce(**k, **opts, reduction="none"), x)
    for tile in (1, 2, (3, 4)):
        compare(lambda tile=tile, **k: info_nce(**k, **opts, tile_size=tile), lambda **k: ref_info_nce(**k, **opts), x)


def test_fewer_hard_negatives_lower_the_loss():
    x = _pair(B=6, seed=13, per_anchor=False)
    full = info_nce(**x, reduction="none")
    losses = [info_nce(**x, top_k=k, reduction="none") for k in (1, 2, 3, 4)]
    for a, b in zip(losses, losses[1:]):
        assert bool((a < b).all())  # every extra negative adds a positive term to the denominator
    assert bool((losses[-1] < full).all())
    # K = all negatives is not allowed (it is plain InfoNCE): the limit is checked
    with pytest.raises(ValueError, match="top_k=5"):
        info_nce(**x, top_k=5)


def test_top_k_gradcheck():
    x = _pair(B=4, D=3, seed=14)
    keys = list(x)
    inputs = tuple(x[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(lambda *t: info_nce(**dict(zip(keys, t)), top_k=2, symmetric=True), inputs)
    assert torch.autograd.gradcheck(lambda *t: info_nce(**dict(zip(keys, t)), top_k=1, tile_size=2), inputs)


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad,match", [
    (torch.full((5,), 0.1), r"shape \(6,\)"),
    (torch.full((6, 1), 0.1), r"shape \(6,\)"),
    (torch.tensor([0.1, 0.2, 0.0, 0.1, 0.1, 0.1]), "> 0"),
    (torch.tensor([0.1, 0.2, float("nan"), 0.1, 0.1, 0.1]), "finite"),
    (torch.tensor([1, 2, 1, 1, 1, 1]), "floating"),
    ("0.1", "number or a torch.Tensor"),
    (True, "number or a torch.Tensor"),
    (-0.5, "> 0"),
])
def test_bad_temperatures_are_rejected(bad, match):
    x = _pair(seed=15)
    for fn in (lambda: info_nce(x["query"], x["key"], temperature=bad),
               lambda: sup_con(torch.stack([x["query"], x["key"]], 1), None, temperature=bad)):
        with pytest.raises(ValueError, match=match):
            fn()


def test_nt_xent_accepts_per_sample_and_per_view_shapes_only():
    x = _pair(seed=16)
    with pytest.raises(ValueError, match=r"\(6,\) or \(12,\)"):
        nt_xent(x["query"], x["key"], temperature=torch.full((7,), 0.2))


def test_per_anchor_temperature_with_margin_is_rejected():
    x = _pair(seed=17)
    with pytest.raises(ValueError, match="margin"):
        info_nce(**x, margin=0.1)


@pytest.mark.parametrize("bad,match", [(0, ">= 1"), (-2, ">= 1"), (6, "smaller than"), (2.0, "int"), (True, "int")])
def test_bad_top_k_is_rejected(bad, match):
    x = _pair(seed=18, per_anchor=False)
    with pytest.raises(ValueError, match=match):
        info_nce(**x, top_k=bad)


def test_symmetric_top_k_checks_the_reverse_direction():
    # with 3 extra negatives the query -> key direction has 8 negatives, the key -> query one only 5
    x = _pair(seed=19, per_anchor=False)
    negs = torch.randn(3, 4, dtype=DT)
    info_nce(**x, top_k=5, negatives=negs)
    with pytest.raises(ValueError, match="top_k=5"):
        info_nce(**x, top_k=5, negatives=negs, symmetric=True)


@pytest.mark.parametrize("prior,labels,match", [
    (torch.tensor([0.5, 0.5]), None, "needs class labels"),
    (torch.tensor([0.5, 0.5]), torch.tensor([0, 1, 2, 0, 1, 2]), r"\[0, 2\)"),
    (torch.tensor([0.5, 0.0, 0.5]), torch.tensor([0, 1, 2, 0, 1, 2]), "> 0"),
    (torch.ones(3, 1), torch.tensor([0, 1, 2, 0, 1, 2]), "1-D"),
    (torch.tensor([0.5, 0.2, 0.3]), torch.tensor([0.0, 1, 2, 0, 1, 2]), "integer"),
])
def test_bad_class_prior_is_rejected(prior, labels, match):
    f = torch.randn(6, 2, 4)
    with pytest.raises(ValueError, match=match):
        sup_con(f, labels, class_prior=prior)


def test_top_k_threshold_is_robust_to_recomputed_tiles_in_float32():
    # float32: the recomputed tile logits differ in the last bits from the threshold pass; the midpoint
    # threshold keeps exactly K negatives, so tiled = dense
    g = _gen(20)
    q, k = torch.randn(33, 16, generator=g), torch.randn(33, 16, generator=g)
    dense = info_nce(q, k, temperature=0.07, top_k=5, reduction="none")
    tiled = info_nce(q, k, temperature=0.07, top_k=5, reduction="none", tile_size=(8, 5))
    torch.testing.assert_close(tiled, dense, rtol=1e-5, atol=1e-5)
    ref = ref_info_nce(q.double(), k.double(), 0.07, top_k=5, reduction="none")
    torch.testing.assert_close(dense.double(), ref, rtol=1e-4, atol=1e-4)
    assert math.isfinite(float(dense.sum()))


def test_alignment_temperature_by_hand_and_as_a_loss_temperature():
    from core.losses import alignment_temperature

    q = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], requires_grad=True)
    k = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # cosines 1, 0, -1: A = 0
    tau = alignment_temperature(q, k, tau0=0.1, alpha=0.5, a0=-0.4)
    assert float(tau) == pytest.approx(0.1 * (1 + 0.5 * (0.0 + 0.4)))  # 0.12
    assert not tau.requires_grad  # MACL's temperature carries no gradient
    assert float(alignment_temperature(q, q.detach(), tau0=0.2, alpha=0.5)) == pytest.approx(0.2 * 1.5)  # A = 1
    assert torch.allclose(info_nce(q, k, temperature=tau), info_nce(q, k, temperature=0.12))
    for kwargs, msg in (({"tau0": 0.0}, "tau0 must be > 0"), ({"alpha": 1.5}, r"alpha must lie in \[0, 1\]"),
                        ({"a0": 2.0}, "a0 must lie in"), ({"alpha": 0.6, "a0": 0.8}, "stays positive"),
                        ({"tau0": float("nan")}, "tau0 must be a finite number")):
        with pytest.raises(ValueError, match=msg):
            alignment_temperature(q, k, **kwargs)
    with pytest.raises(ValueError, match="same batch|batch size"):
        alignment_temperature(q, k[:2])
