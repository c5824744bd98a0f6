"""MoCHi hard negative mixing and the per-query synthetic-negative loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.losses import info_nce, info_nce_with_mixing, info_nce_with_synthetic
from core.negatives.mixing import hardest_negatives, mix_hard_negatives

B, K, D = 7, 20, 5
EXACT = {"rtol": 1e-10, "atol": 1e-12}


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, D, dtype=torch.float64, generator=g)
    k = q + 0.5 * torch.randn(B, D, dtype=torch.float64, generator=g)
    negs = torch.randn(K, D, dtype=torch.float64, generator=g)
    return q, k, negs


def _coefficients(target: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least-squares coefficients of ``target`` (D,) in the span of ``basis`` (n, D), and the residual norm."""
    sol = torch.linalg.lstsq(basis.T, target[:, None]).solution[:, 0]
    return sol, float((basis.T @ sol - target).norm())


def test_shapes_normalised_and_detached():
    q, _, negs = _data()
    q.requires_grad_(True)
    negs.requires_grad_(True)
    out = mix_hard_negatives(q, negs, n_hard=5, s=4, s_prime=3)
    assert out.shape == (B, 7, D)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(B, 7, dtype=torch.float64))
    assert not out.requires_grad  # no gradient through the synthetic points (neither query nor pool)
    assert mix_hard_negatives(q, negs, n_hard=5, s=0, s_prime=0).shape == (B, 0, D)
    assert mix_hard_negatives(q, negs, n_hard=5, s=2, s_prime=0).shape == (B, 2, D)


def test_hardest_first_selection_matches_brute_force():
    q, _, negs = _data(1)
    idx = hardest_negatives(q, negs, 6)
    for i in range(B):
        sims = [float(F.cosine_similarity(q[i], negs[j], dim=0)) for j in range(K)]
        brute = sorted(range(K), key=lambda j: -sims[j])[:6]
        assert idx[i].tolist() == brute


def test_pair_mixes_are_convex_mixes_of_two_hardest_negatives():
    q, _, negs = _data(2)
    out = mix_hard_negatives(q, negs, n_hard=2, s=5, s_prime=0, generator=torch.Generator().manual_seed(0))
    idx = hardest_negatives(q, negs, 2)
    pool = F.normalize(negs, dim=1)
    for i in range(B):
        for h in out[i]:
            coef, res = _coefficients(h, pool[idx[i]])
            assert res < 1e-10  # in the span of the two hardest (and only those)
            assert (coef > 0).all()  # a proper mix of two distinct hard negatives: both weights positive


def test_query_mixes_are_dominated_by_the_hard_negative():
    q, _, negs = _data(3)
    out = mix_hard_negatives(q, negs, n_hard=1, s=0, s_prime=6, generator=torch.Generator().manual_seed(0))
    idx = hardest_negatives(q, negs, 1)
    qn, pool = F.normalize(q, dim=1), F.normalize(negs, dim=1)
    for i in range(B):
        for h in out[i]:
            coef, res = _coefficients(h, torch.stack([qn[i], pool[idx[i, 0]]]))
            assert res < 1e-10
            assert 0 <= coef[0] < coef[1]  # beta < 0.5 <= 1 - beta


def test_generator_makes_draws_reproducible():
    q, _, negs = _data()
    a = mix_hard_negatives(q, negs, n_hard=4, s=3, s_prime=2, generator=torch.Generator().manual_seed(5))
    b = mix_hard_negatives(q, negs, n_hard=4, s=3, s_prime=2, generator=torch.Generator().manual_seed(5))
    c = mix_hard_negatives(q, negs, n_hard=4, s=3, s_prime=2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _naive(q, k, negs, syn, tau, decoupled=False, margin=0.0):
    """Per query, concatenate [keys, shared negatives, its own synthetic negatives] and apply cross-entropy."""
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    losses = []
    for i in range(q.shape[0]):
        cands = [kn]
        if negs is not None:
            cands.append(F.normalize(negs, dim=1))
        cands.append(F.normalize(syn[i], dim=1))
        logits = (qn[i] @ torch.cat(cands).T) / tau
        pos = (qn[i] @ kn[i] - margin) / tau
        # the positive (with its margin) stays in the denominator unless decoupled
        logits = torch.cat([logits[:i], logits[i + 1:]] if decoupled else [logits[:i], pos[None], logits[i + 1:]])
        losses.append(torch.logsumexp(logits, 0) - pos)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("tile_size", [None, 3])
@pytest.mark.parametrize("variant", [{}, {"decoupled": True}, {"margin": 0.2}])
@pytest.mark.parametrize("with_queue", [True, False])
def test_loss_equals_naive_concatenated_reference(tile_size, variant, with_queue):
    q, k, negs = _data(4)
    syn = mix_hard_negatives(q, negs, n_hard=6, s=4, s_prime=2, generator=torch.Generator().manual_seed(1))
    shared = negs if with_queue else None
    tau = 0.2
    q1, k1 = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    got = info_nce_with_synthetic(q1, k1, syn, temperature=tau, negatives=shared, tile_size=tile_size, **variant)
    got.backward()
    q2, k2 = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    ref = _naive(q2, k2, shared, syn, tau, **variant)
    ref.backward()
    torch.testing.assert_close(got, ref, **EXACT)
    torch.testing.assert_close(q1.grad, q2.grad, **EXACT)
    torch.testing.assert_close(k1.grad, k2.grad, **EXACT)


def test_learnable_temperature_and_no_synthetics_reduce_to_info_nce():
    q, k, negs = _data(5)
    t1 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    t2 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    got = info_nce_with_synthetic(q, k, q.new_zeros(B, 0, D), temperature=t1, negatives=negs)
    ref = info_nce(q, k, temperature=t2, negatives=negs)
    got.backward()
    ref.backward()
    torch.testing.assert_close(got, ref, **EXACT)
    torch.testing.assert_close(t1.grad, t2.grad, **EXACT)


def test_info_nce_with_mixing_uses_queue_as_pool_and_negatives():
    q, k, negs = _data(6)
    got = info_nce_with_mixing(q, k, negs, n_hard=5, s=3, s_prime=2, temperature=0.2,
                               generator=torch.Generator().manual_seed(3))
    syn = mix_hard_negatives(q, negs, n_hard=5, s=3, s_prime=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, _naive(q, k, negs, syn, 0.2), **EXACT)
    # harder negatives raise the loss relative to plain InfoNCE with the queue
    assert got > info_nce(q, k, temperature=0.2, negatives=negs)


def test_errors():
    q, k, negs = _data()
    with pytest.raises(ValueError, match="n_hard"):
        mix_hard_negatives(q, negs, n_hard=K + 1, s=1, s_prime=1)
    with pytest.raises(ValueError, match="feature dimension"):
        mix_hard_negatives(q, negs[:, :3], n_hard=2, s=1, s_prime=1)
    with pytest.raises(ValueError, match=r"\(B, M, D\)"):
        info_nce_with_synthetic(q, k, torch.zeros(B + 1, 2, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="no negatives"):
        info_nce_with_synthetic(q[:1], k[:1], q.new_zeros(1, 0, D))


def test_the_loss_lives_in_core_losses_and_the_old_paths_still_resolve():
    import subprocess
    import sys

    import core.losses.mixing as losses_mixing
    import core.negatives
    import core.negatives.mixing as negatives_mixing

    assert info_nce_with_synthetic.__module__ == "core.losses.mixing"
    for name in ("info_nce_with_mixing", "info_nce_with_synthetic", "synthetic_logits"):
        assert getattr(negatives_mixing, name) is getattr(losses_mixing, name)
        assert getattr(core.negatives, name) is getattr(losses_mixing, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        core.negatives.no_such_name  # noqa: B018
    # the mining package does not need core.losses: importing it loads none of it
    code = "import sys, core.negatives.mixing; assert not any(m.startswith('core.losses') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
