"""Debiased / hard-negative InfoNCE, the AUC contrastive loss, kernel uniformity, align + uniform and Poly-View,
against float64 per-anchor loop references written from the papers' formulas (never calling the engine),
with tiled = dense, gradcheck, known identities and input validation. The multi-process (gather / ring)
checks are in ``test_losses_new_distributed.py``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _loss_refs import compare, lse, reduce_ref, sim, unit

from core.losses import (
    AlignUniform,
    AUCContrastive,
    CircleLoss,
    DebiasedInfoNCE,
    KernelUniformity,
    MultiViewDHEL,
    PolyViewInfoNCE,
    align_uniform,
    auc_contrastive,
    circle_loss,
    debiased_info_nce,
    info_nce,
    kernel_uniformity,
    multi_view_dhel,
    nt_xent,
    poly_view_info_nce,
)
from core.metrics import uniformity

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pair(B=6, D=4, seed=0, t=0.5, aligned=False):
    """Random pairs; with ``aligned`` the even rows' keys are close to their queries (high positive logits)."""
    g = _gen(seed)
    q, k = torch.randn(B, D, generator=g, dtype=DT), torch.randn(B, D, generator=g, dtype=DT)
    if aligned:
        k[::2] = q[::2] + 0.2 * k[::2]
    return {"query": q, "key": k, "temperature": torch.tensor(t, dtype=DT)}


# ------------------------------------------------------------------------------------------------ references


def _tau(temperature, i):
    if isinstance(temperature, torch.Tensor) and temperature.dim() == 1 and temperature.numel() > 1:
        return temperature[i]
    return temperature


def ref_debiased(query, key, temperature, tau_plus, beta, two_n=False, similarity="cosine", reduction="mean",
                 hits=None):
    """Chuang et al. 2020 / Robinson et al. 2021, straight in exp space:
    Ng = max((N sum e^{(1+b)x} / sum e^{bx} - tau+ N e^p) / (1 - tau+), N e^{-1/t}), l = -log(e^p / (e^p + Ng))."""
    B = query.shape[0]
    if two_n:
        z = [*query, *key]
        pairs = [(a, (a + B) % (2 * B), [j for j in range(2 * B) if j not in (a, (a + B) % (2 * B))])
                 for a in range(2 * B)]
        if isinstance(temperature, torch.Tensor) and temperature.dim() == 1 and temperature.numel() == B:
            temperature = torch.cat([temperature, temperature])
        anchors, cands = z, z
    else:
        pairs = [(i, i, [j for j in range(B) if j != i]) for i in range(B)]
        anchors, cands = list(query), list(key)
    out = []
    for a, p, negs in pairs:
        t = _tau(temperature, a)
        pos = torch.exp(sim(anchors[a], cands[p], similarity) / t)
        x = torch.stack([sim(anchors[a], cands[j], similarity) / t for j in negs])
        N = len(negs)
        ng = (N * torch.exp((1 + beta) * x).sum() / torch.exp(beta * x).sum() - tau_plus * N * pos) / (1 - tau_plus)
        floor = N * torch.exp(-1.0 / torch.as_tensor(t, dtype=DT))
        if hits is not None:
            hits.append(bool(ng < floor))
        ng = torch.maximum(ng, floor)
        out.append(-torch.log(pos / (pos + ng)))
    return reduce_ref(torch.stack(out), reduction)


def ref_auc(query, key, temperature, similarity="cosine", reduction="mean"):
    out = []
    B = query.shape[0]
    for i in range(B):
        t = _tau(temperature, i)
        s_ii = sim(query[i], key[i], similarity)
        terms = [torch.log1p(torch.exp((sim(query[i], key[j], similarity) - s_ii) / t)) for j in range(B) if j != i]
        out.append(torch.stack(terms).mean())
    return reduce_ref(torch.stack(out), reduction)


def ref_kernel_uniformity(views, gamma):
    B, V, _ = views.shape
    mu = [torch.stack([unit(views[i, v]) for v in range(V)]).mean(0) for i in range(B)]
    terms = [-gamma * ((mu[i] - mu[j]) ** 2).sum() for i in range(B) for j in range(B) if i != j]
    return lse(terms) - math.log(B * (B - 1))


def ref_align_uniform(z1, z2, alpha, t, weight):
    B = z1.shape[0]
    u1, u2 = [unit(r) for r in z1], [unit(r) for r in z2]
    align = torch.stack([torch.sqrt(((a - b) ** 2).sum()) ** alpha for a, b in zip(u1, u2)]).mean()

    def unif(u):
        return lse([-t * ((u[i] - u[j]) ** 2).sum() for i in range(B) for j in range(i + 1, B)]) - math.log(
            B * (B - 1) / 2)

    return align + weight * 0.5 * (unif(u1) + unif(u2))


def ref_poly_view(views, temperature, aggregation="arithmetic", reduction="mean"):
    """Per view alpha of sample i: -F(i alpha, i) + log sum_j e^{F(i alpha, j)}, F the arithmetic (log-mean-exp)
    or geometric (mean) aggregate of s(z_{i alpha}, z_{j beta}) over beta != alpha."""
    B, M, _ = views.shape
    out = []
    for a in range(M):  # view-major, as the loss returns it
        for i in range(B):
            def critic(j, i=i, a=a):
                s = torch.stack([sim(views[i, a], views[j, b]) / temperature for b in range(M) if b != a])
                if aggregation == "arithmetic":
                    return torch.logsumexp(s, 0) - math.log(M - 1)
                return s.mean()

            out.append(-critic(i) + lse([critic(j) for j in range(B)]))
    return reduce_ref(torch.stack(out), reduction)


# ------------------------------------------------------------------------------------------- debiased / hard


DEBIASED = {
    "debiased": {"tau_plus": 0.1, "beta": 0.0},
    "hard": {"tau_plus": 0.1, "beta": 1.0},
    "hard-only": {"tau_plus": 0.0, "beta": 0.5},
    "floor": {"tau_plus": 0.5, "beta": 0.0},
    "2n-debiased": {"tau_plus": 0.1, "beta": 0.0, "two_n": True},
    "2n-hard-floor": {"tau_plus": 0.45, "beta": 2.0, "two_n": True},
    "dot": {"tau_plus": 0.05, "beta": 0.5, "similarity": "dot"},
}


@pytest.mark.parametrize("name", list(DEBIASED))
def test_debiased_matches_reference_and_tiled_equals_dense(name):
    opts = DEBIASED[name]
    x = _pair(B=6, seed=1, t=0.5 if opts.get("similarity") != "dot" else 2.0, aligned=True)
    compare(lambda **k: debiased_info_nce(**k, **opts, reduction="none"),
            lambda **k: ref_debiased(**k, **opts, reduction="none"), x)
    for tile in (2, (4, 5)):
        compare(lambda tile=tile, **k: debiased_info_nce(**k, **opts, tile_size=tile),
                lambda **k: ref_debiased(**k, **opts), x)


def test_debiased_floor_branch_is_exercised_both_ways():
    # the "floor" settings clip some anchors to N e^{-1/t} and leave others: both branches are under test
    for opts in (DEBIASED["floor"], DEBIASED["2n-hard-floor"]):
        hits: list[bool] = []
        ref_debiased(**_pair(B=6, seed=1, aligned=True), **opts, hits=hits)
        assert any(hits) and not all(hits)


def test_debiased_per_anchor_temperature():
    x = _pair(B=5, seed=2)
    x["temperature"] = 0.3 + torch.rand(5, generator=_gen(3), dtype=DT)
    for opts in (DEBIASED["hard"], DEBIASED["2n-hard-floor"]):
        compare(lambda opts=opts, **k: debiased_info_nce(**k, **opts, tile_size=2),
                lambda opts=opts, **k: ref_debiased(**k, **opts), x)


def test_debiased_without_correction_is_info_nce_and_nt_xent():
    # tau+ = 0, beta = 0: Ng = sum_j e^{x_j} >= N e^{-1/t} with cosine similarity, so the floor never binds
    x = _pair(B=7, seed=4, t=0.2)
    q, k, t = x["query"], x["key"], x["temperature"]
    torch.testing.assert_close(debiased_info_nce(q, k, temperature=t, tau_plus=0.0, reduction="none"),
                               info_nce(q, k, temperature=t, reduction="none"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(debiased_info_nce(q, k, temperature=t, tau_plus=0.0, two_n=True),
                               nt_xent(q, k, temperature=t), rtol=1e-12, atol=1e-12)


def test_debiasing_moves_the_loss_towards_the_positive_and_hardness_raises_it():
    # (S - tau+ N e^p) / (1 - tau+) < S  <=>  e^p > mean_j e^{x_j}: debiasing lowers the loss exactly for the
    # anchors whose positive beats the average negative (no floor binds at tau+ = 0.1 here)
    x = _pair(B=8, seed=5, aligned=True)
    plain = debiased_info_nce(**x, tau_plus=0.0, reduction="none")
    debiased = debiased_info_nce(**x, tau_plus=0.1, reduction="none")
    hard = debiased_info_nce(**x, tau_plus=0.0, beta=1.0, reduction="none")
    logits = F.normalize(x["query"], dim=1) @ F.normalize(x["key"], dim=1).T / x["temperature"]
    off = ~torch.eye(8, dtype=torch.bool)
    beats = logits.diag().exp() > (logits.exp() * off).sum(1) / 7
    assert bool(beats.any()) and not bool(beats.all())
    assert torch.equal(debiased < plain, beats)
    # reweighting towards the larger logits raises the weighted mean of e^{x}
    assert bool((hard >= plain - 1e-15).all()) and bool((hard > plain).any())


def test_debiased_gradcheck():
    x = _pair(B=4, D=3, seed=6)
    keys = list(x)
    inputs = tuple(x[k].clone().requires_grad_() for k in keys)
    for opts in ({"tau_plus": 0.1, "beta": 0.5}, {"tau_plus": 0.2, "beta": 1.0, "two_n": True, "tile_size": 3}):
        assert torch.autograd.gradcheck(lambda *t, opts=opts: debiased_info_nce(**dict(zip(keys, t)), **opts), inputs)


@pytest.mark.parametrize("kwargs,match", [
    ({"tau_plus": 1.0}, "tau_plus"), ({"tau_plus": -0.1}, "tau_plus"), ({"tau_plus": "0.1"}, "tau_plus"),
    ({"beta": -1.0}, "beta"), ({"beta": float("nan")}, "beta"), ({"temperature": 0.0}, "> 0"),
    ({"temperature": torch.full((5,), 0.5)}, r"\(6,\)"), ({"similarity": "l2"}, "similarity"),
])
def test_debiased_rejects_bad_input(kwargs, match):
    g = _gen(7)
    with pytest.raises(ValueError, match=match):
        debiased_info_nce(torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g), **kwargs)
    with pytest.raises(ValueError, match="negatives"):
        debiased_info_nce(torch.randn(1, 3), torch.randn(1, 3))


# ------------------------------------------------------------------------------------------------------- AUC


@pytest.mark.parametrize("opts", [{}, {"similarity": "dot"}, {"per_anchor": True}])
def test_auc_matches_reference_and_tiled_equals_dense(opts):
    opts = dict(opts)
    x = _pair(B=6, seed=8, t=0.1 if opts.get("similarity") != "dot" else 1.5)
    if opts.pop("per_anchor", False):
        x["temperature"] = 0.05 + torch.rand(6, generator=_gen(9), dtype=DT)
    compare(lambda **k: auc_contrastive(**k, **opts, reduction="none"),
            lambda **k: ref_auc(**k, **opts, reduction="none"), x)
    for tile in (1, (4, 3)):
        compare(lambda tile=tile, **k: auc_contrastive(**k, **opts, tile_size=tile),
                lambda **k: ref_auc(**k, **opts), x)


def test_auc_approaches_the_misranking_rate_at_low_temperature():
    # t -> 0: t * softplus(d / t) -> max(d, 0), and the loss / (1/t) counts how far negatives rank above
    x = _pair(B=8, seed=10)
    q, k = F.normalize(x["query"], dim=1), F.normalize(x["key"], dim=1)
    s = q @ k.T
    d = s - s.diag()[:, None]
    off = ~torch.eye(8, dtype=torch.bool)
    want = (d.clamp_min(0) * off).sum(1) / 7
    got = 1e-4 * auc_contrastive(x["query"], x["key"], temperature=1e-4, reduction="none")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * math.log(2) + 1e-12)


def test_auc_gradcheck_and_module():
    x = _pair(B=4, D=3, seed=11, t=0.3)
    keys = list(x)
    inputs = tuple(x[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(lambda *t: auc_contrastive(**dict(zip(keys, t)), tile_size=3), inputs)
    torch.testing.assert_close(AUCContrastive(temperature=0.3)(x["query"], x["key"]),
                               auc_contrastive(x["query"], x["key"], temperature=0.3))


# -------------------------------------------------------------------------------------------- uniformity


@pytest.mark.parametrize("V,gamma", [(1, 2.0), (3, 0.7)])
def test_kernel_uniformity_matches_reference_and_tiled_equals_dense(V, gamma):
    x = {"views": torch.randn(7, V, 4, generator=_gen(12), dtype=DT)}
    compare(lambda **k: kernel_uniformity(**k, gamma=gamma), lambda **k: ref_kernel_uniformity(**k, gamma=gamma), x)
    for tile in (2, (3, 5)):
        compare(lambda tile=tile, **k: kernel_uniformity(**k, gamma=gamma, tile_size=tile),
                lambda **k: ref_kernel_uniformity(**k, gamma=gamma), x)


def test_kernel_uniformity_with_one_view_is_wang_isola_uniformity():
    z = torch.randn(9, 5, generator=_gen(13), dtype=DT)
    torch.testing.assert_close(kernel_uniformity(z, gamma=2.0), uniformity(z, t=2.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(KernelUniformity(gamma=2.0)(z[:, None]), uniformity(z, t=2.0), rtol=1e-12,
                               atol=1e-12)


def test_kernel_uniformity_ignores_view_spread_around_the_centroid():
    # views spread symmetrically about the same direction: the centroids (hence the loss) only move in norm,
    # and identical centroids give the maximum, 0
    base = F.normalize(torch.randn(6, 4, generator=_gen(14), dtype=DT), dim=1)
    same = base[:1].expand(6, 4)[:, None].expand(6, 2, 4)
    torch.testing.assert_close(kernel_uniformity(same), torch.tensor(0.0, dtype=DT), rtol=0, atol=1e-12)
    assert float(kernel_uniformity(base[:, None])) < -0.5


def test_kernel_uniformity_gradcheck():
    v = torch.randn(4, 2, 3, generator=_gen(15), dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: kernel_uniformity(a, gamma=1.5, tile_size=3), (v,))


@pytest.mark.parametrize("alpha,t,weight", [(2.0, 2.0, 1.0), (1.0, 0.5, 0.3)])
def test_align_uniform_matches_reference(alpha, t, weight):
    g = _gen(16)
    x = {"z1": torch.randn(6, 4, generator=g, dtype=DT), "z2": torch.randn(6, 4, generator=g, dtype=DT)}
    compare(lambda **k: align_uniform(**k, alpha=alpha, t=t, weight=weight),
            lambda **k: ref_align_uniform(**k, alpha=alpha, t=t, weight=weight), x)
    torch.testing.assert_close(AlignUniform(alpha, t, weight)(x["z1"], x["z2"]),
                               align_uniform(x["z1"], x["z2"], alpha=alpha, t=t, weight=weight))


@pytest.mark.parametrize("call,match", [
    (lambda: kernel_uniformity(torch.randn(1, 2, 3)), "at least 2"),
    (lambda: kernel_uniformity(torch.randn(4, 2, 3), gamma=0.0), "gamma"),
    (lambda: kernel_uniformity(torch.randn(4, 0, 3)), "no views"),
    (lambda: kernel_uniformity(torch.full((4, 2, 3), float("nan"))), "NaN"),
    (lambda: align_uniform(torch.randn(4, 3), torch.randn(4, 3), weight=-1.0), "weight"),
    (lambda: align_uniform(torch.randn(4, 3), torch.randn(5, 3)), "shape"),
])
def test_uniformity_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------------------- Poly-View


@pytest.mark.parametrize("aggregation", ["arithmetic", "geometric"])
@pytest.mark.parametrize("M", [2, 4])
def test_poly_view_matches_reference_and_tiled_equals_dense(M, aggregation):
    x = {"views": torch.randn(5, M, 4, generator=_gen(17 + M), dtype=DT), "temperature": torch.tensor(0.4, dtype=DT)}
    compare(lambda **k: poly_view_info_nce(**k, aggregation=aggregation, reduction="none"),
            lambda **k: ref_poly_view(**k, aggregation=aggregation, reduction="none"), x)
    compare(lambda **k: poly_view_info_nce(**k, aggregation=aggregation, tile_size=(3, 4)),
            lambda **k: ref_poly_view(**k, aggregation=aggregation), x)


def test_poly_view_with_two_views_is_symmetric_info_nce():
    v = torch.randn(6, 2, 4, generator=_gen(20), dtype=DT)
    want = info_nce(v[:, 0], v[:, 1], temperature=0.3, symmetric=True)
    for agg in ("arithmetic", "geometric"):
        torch.testing.assert_close(poly_view_info_nce(v, temperature=0.3, aggregation=agg), want, rtol=1e-12,
                                   atol=1e-12)
    torch.testing.assert_close(PolyViewInfoNCE(0.3)(list(v.unbind(1))), want, rtol=1e-12, atol=1e-12)


def test_poly_view_gradcheck():
    v = torch.randn(3, 3, 3, generator=_gen(21), dtype=DT, requires_grad=True)
    t = torch.tensor(0.5, dtype=DT, requires_grad=True)
    for agg in ("arithmetic", "geometric"):
        assert torch.autograd.gradcheck(lambda a, b, agg=agg: poly_view_info_nce(a, temperature=b, aggregation=agg,
                                                                                 tile_size=2), (v, t))


@pytest.mark.parametrize("call,match", [
    (lambda: poly_view_info_nce(torch.randn(4, 1, 3)), "M >= 2"),
    (lambda: poly_view_info_nce(torch.randn(4, 2, 3), aggregation="harmonic"), "aggregation"),
    (lambda: poly_view_info_nce(torch.randn(1, 3, 3)), "negatives"),
    (lambda: poly_view_info_nce(torch.randn(4, 3)), "3 dimensions"),
    (lambda: poly_view_info_nce(torch.randn(4, 2, 3), temperature=-1.0), "> 0"),
])
def test_poly_view_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_debiased_module_equals_function():
    with pytest.raises(ValueError, match="tau_plus"):
        DebiasedInfoNCE(tau_plus=1.5)
    x = _pair(seed=22)
    m = DebiasedInfoNCE(temperature=0.5, tau_plus=0.2, beta=0.3, two_n=True)
    torch.testing.assert_close(m(x["query"], x["key"]),
                               debiased_info_nce(x["query"], x["key"], temperature=0.5, tau_plus=0.2, beta=0.3,
                                                 two_n=True))


# ------------------------------------------------------------------------------------------------- circle loss


def ref_circle(query, key, labels=None, margin=0.25, gamma=256.0, reduction="mean"):
    """Sun et al. 2020, Eq. 4 with the self-paced weights as constants (detached), per query."""
    B = query.shape[0]
    out = []
    for i in range(B):
        pos_terms, neg_terms = [], []
        for j in range(B):
            s = sim(query[i], key[j])
            positive = (j == i) if labels is None else bool(labels[j] == labels[i])
            if positive:
                ap = torch.clamp(1 + margin - s.detach(), min=0)
                pos_terms.append(torch.exp(-gamma * ap * (s - (1 - margin))))
            else:
                an = torch.clamp(s.detach() + margin, min=0)
                neg_terms.append(torch.exp(gamma * an * (s - margin)))
        out.append(torch.log1p(torch.stack(neg_terms).sum() * torch.stack(pos_terms).sum()))
    return reduce_ref(torch.stack(out), reduction)


@pytest.mark.parametrize("opts", [{"gamma": 8.0}, {"gamma": 32.0, "margin": 0.4}, {"gamma": 16.0, "labels": True}])
def test_circle_loss_matches_reference_and_tiled_equals_dense(opts):
    opts = dict(opts)
    x = {k: v for k, v in _pair(B=6, seed=23, aligned=True).items() if k != "temperature"}
    if opts.pop("labels", False):
        x["labels"] = torch.tensor([0, 1, 0, 2, 1, 2])
    compare(lambda **k: circle_loss(**k, **opts, reduction="none"),
            lambda **k: ref_circle(**k, **opts, reduction="none"), x)
    for tile in (2, (4, 5)):
        compare(lambda tile=tile, **k: circle_loss(**k, **opts, tile_size=tile), lambda **k: ref_circle(**k, **opts), x)


def test_circle_loss_at_the_paper_scale_is_finite_and_module_matches():
    x = _pair(B=8, seed=24, aligned=True)
    q, k = x["query"].float().requires_grad_(), x["key"].float()
    loss = circle_loss(q, k)  # gamma = 256 in float32: computed in log space, no overflow
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(q.grad).all())
    torch.testing.assert_close(loss.double(), ref_circle(x["query"], x["key"]), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(CircleLoss(gamma=8.0)(x["query"], x["key"]), circle_loss(x["query"], x["key"],
                                                                                      gamma=8.0))


@pytest.mark.parametrize("call,match", [
    (lambda: circle_loss(torch.randn(4, 3), torch.randn(4, 3), margin=1.0), "margin"),
    (lambda: circle_loss(torch.randn(4, 3), torch.randn(4, 3), gamma=0.0), "gamma"),
    (lambda: circle_loss(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 0, 0, 0])), "no negatives"),
    (lambda: circle_loss(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1])), r"shape \(4,\)"),
])
def test_circle_loss_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------------ MV-DHEL


def ref_mv_dhel(views, temperature, reduction="mean"):
    """Koromilas et al. 2025: -log sum_{l<m} e^{s(il, im)} + sum_l log sum_{j != i} e^{s(il, jl)}."""
    B, V, _ = views.shape
    out = []
    for i in range(B):
        align = lse([sim(views[i, a], views[i, b]) / temperature for a in range(V) for b in range(a + 1, V)])
        energy = sum(lse([sim(views[i, v], views[j, v]) / temperature for j in range(B) if j != i]) for v in range(V))
        out.append(energy - align)
    return reduce_ref(torch.stack(out), reduction)


@pytest.mark.parametrize("V", [2, 3])
def test_mv_dhel_matches_reference_and_tiled_equals_dense(V):
    x = {"views": torch.randn(6, V, 4, generator=_gen(30 + V), dtype=DT), "temperature": torch.tensor(0.3, dtype=DT)}
    compare(lambda **k: multi_view_dhel(**k, reduction="none"), lambda **k: ref_mv_dhel(**k, reduction="none"), x)
    for tile in (2, (4, 5)):
        compare(lambda tile=tile, **k: multi_view_dhel(**k, tile_size=tile), lambda **k: ref_mv_dhel(**k), x)


def test_mv_dhel_alignment_is_decoupled_from_the_energy():
    # moving the second view of every sample changes only the alignment term and that view's own energy: the
    # first view's energy (the other samples' first views) is untouched, unlike InfoNCE's coupled denominator
    v = torch.randn(5, 2, 4, generator=_gen(33), dtype=DT)
    w = v.clone()
    w[:, 1] = v[:, 0]  # perfectly aligned pairs, same layout as view 0
    t = 0.3
    got = multi_view_dhel(w, temperature=t, reduction="none")
    z = F.normalize(v[:, 0], dim=1)
    s = z @ z.T / t
    energy = torch.logsumexp(s.masked_fill(torch.eye(5, dtype=torch.bool), float("-inf")), 1)
    torch.testing.assert_close(got, 2 * energy - 1 / t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(MultiViewDHEL(t)(list(w.unbind(1))), got.mean(), rtol=1e-12, atol=1e-12)


def test_mv_dhel_gradcheck_and_validation():
    v = torch.randn(3, 3, 3, generator=_gen(34), dtype=DT, requires_grad=True)
    t = torch.tensor(0.5, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: multi_view_dhel(a, temperature=b, tile_size=2), (v, t))
    with pytest.raises(ValueError, match="V >= 2"):
        multi_view_dhel(torch.randn(4, 1, 3))
    with pytest.raises(ValueError, match="negatives"):
        multi_view_dhel(torch.randn(1, 2, 3))
