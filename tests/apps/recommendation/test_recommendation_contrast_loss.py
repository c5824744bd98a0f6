"""``--contrast-loss``: the objective of the sequence-level contrastive term (CL4SRec, MCLRec) from core.losses."""

from __future__ import annotations

import math

import pytest
import torch

from apps.recommendation.config import RecConfig
from apps.recommendation.model import CONTRAST_LOSSES, SeqRecModule
from core.app import InputError
from core.app.settings import fingerprint
from core.losses import auc_contrastive, debiased_info_nce, nt_xent


def _batch() -> dict:
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([4, 6, 8, 3, 5, 7])
    items = torch.zeros(6, 8, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        items[i, :n] = torch.randint(1, 20, (n,), generator=g)
    targets = torch.where(items > 0, (items % 19) + 1, torch.zeros_like(items))
    return {"items": items, "targets": targets, "lengths": lengths}


def _module(loss: str, method: str = "cl4srec", tau: float = 1.0) -> SeqRecModule:
    torch.manual_seed(0)
    return SeqRecModule(20, method, dim=16, heads=2, layers=1, max_len=8, dropout=0.0, lam=1.0, beta=0.05, tau=tau,
                        contrast_loss=loss)


def _cl_and_views(m: SeqRecModule, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's contrastive term and the two view states it was computed on (same augmentation seed)."""
    torch.manual_seed(7)
    out = m.contrastive_step(batch)
    torch.manual_seed(7)
    with torch.no_grad():
        h1, h2 = m._views(batch)
    return out["cl"], h1, h2


def test_default_is_the_papers_nt_xent_on_the_same_views() -> None:
    assert RecConfig().contrast_loss == "nt_xent"
    m = _module("nt_xent", tau=0.7)
    batch = _batch()
    cl, h1, h2 = _cl_and_views(m, batch)
    torch.testing.assert_close(cl, nt_xent(h1, h2, temperature=0.7, similarity="dot"), rtol=0, atol=0)
    # and NT-Xent itself by hand: 2B anchors, partner positive, the other 2B - 2 views negatives, dot / tau
    z = torch.cat([h1, h2]).double()
    s = z @ z.T / 0.7
    n = len(h1)
    naive = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        others = [s[i, k] for k in range(2 * n) if k != i]
        naive += -(s[i, p] - torch.logsumexp(torch.stack(others), 0)).item()
    assert cl.item() == pytest.approx(naive / (2 * n), rel=1e-5)


def test_each_choice_calls_its_core_objective_with_the_paper_defaults() -> None:
    batch = _batch()
    cl, h1, h2 = _cl_and_views(_module("debiased"), batch)
    torch.testing.assert_close(cl, debiased_info_nce(h1, h2, temperature=1.0, tau_plus=0.1, beta=0.0, two_n=True,
                                                     similarity="dot"))
    cl, h1, h2 = _cl_and_views(_module("hard_negative"), batch)
    torch.testing.assert_close(cl, debiased_info_nce(h1, h2, temperature=1.0, tau_plus=0.1, beta=1.0, two_n=True,
                                                     similarity="dot"))
    assert not torch.allclose(cl, debiased_info_nce(h1, h2, temperature=1.0, tau_plus=0.1, two_n=True,
                                                    similarity="dot"))
    cl, h1, h2 = _cl_and_views(_module("auc"), batch)
    # symmetrised AUC loss by hand: mean over anchors of mean_{j != i} log(1 + exp(s_ij - s_ii)), both directions
    naive = 0.0
    for a, b in ((h1, h2), (h2, h1)):
        s = (a @ b.T).double()
        n = len(a)
        naive += sum(math.log1p(math.exp(s[i, j] - s[i, i])) for i in range(n) for j in range(n) if j != i) / (
            n * (n - 1))
    assert cl.item() == pytest.approx(naive / 2, rel=1e-5)
    torch.testing.assert_close(cl, 0.5 * (auc_contrastive(h1, h2, temperature=1.0, similarity="dot")
                                          + auc_contrastive(h2, h1, temperature=1.0, similarity="dot")))


def test_tempnet_starts_at_the_app_temperature_within_its_bounds() -> None:
    m = _module("tempnet", tau=0.5)
    assert (m.tempnet.tau_min, m.tempnet.tau_max) == (0.05, 1.0)
    batch = _batch()
    cl, h1, h2 = _cl_and_views(m, batch)
    t = m.tempnet(torch.cat([h1, h2]))
    assert t.shape == (12,) and torch.allclose(t, torch.full_like(t, 0.5), atol=1e-6)
    # at initialisation every view's temperature is tau: the plain NT-Xent
    torch.testing.assert_close(cl, nt_xent(h1, h2, temperature=0.5, similarity="dot"), rtol=1e-5, atol=1e-6)
    assert _module("tempnet", method="duorec").tempnet is None  # DuoRec keeps its SupCon term
    with pytest.raises(ValueError, match="contrast_loss"):
        _module("infonce")


@pytest.mark.parametrize("loss", CONTRAST_LOSSES)
def test_one_training_step_per_choice_is_finite_and_reaches_the_model(loss: str) -> None:
    m = _module(loss)
    batch = _batch()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    out = m.contrastive_step(batch)
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["cl"])
    opt.zero_grad()
    out["loss"].backward()
    # the contrastive term alone reaches the encoder (the rec term is checked elsewhere)
    m.zero_grad()
    torch.manual_seed(7)
    m._con(*m._views(batch)).backward()
    g = m.encoder.item_emb.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    if loss == "tempnet":
        grads = [p.grad for p in m.tempnet.parameters()]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
        assert m.tempnet.out.weight.grad.abs().sum() > 0
        before = [p.detach().clone() for p in m.tempnet.parameters()]
        opt.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, m.tempnet.parameters()))
    else:
        assert not any("tempnet" in n for n, _ in m.named_parameters())


def test_mclrec_tempnet_trains_with_the_encoder() -> None:
    m = _module("tempnet", method="mclrec")
    opt_enc, opt_aug = m.configure_optimizers()
    enc = {id(p) for p in m.encoder.parameters()} | {id(p) for p in m.tempnet.parameters()}
    assert {id(p) for g in opt_enc.param_groups for p in g["params"]} == enc
    assert not {id(p) for g in opt_aug.param_groups for p in g["params"]} & enc
    torch.manual_seed(1)
    l_cl1, l_cl2, reg = m._mcl_terms(m._augment(_batch()))
    l_cl2.backward()
    assert m.tempnet.out.weight.grad.abs().sum() > 0


def test_the_setting_enters_the_fingerprint_and_is_checked() -> None:
    prints = {fingerprint(RecConfig(contrast_loss=loss)) for loss in CONTRAST_LOSSES}
    assert len(prints) == len(CONTRAST_LOSSES)
    RecConfig(contrast_loss="tempnet", tau=0.1).check()
    with pytest.raises(InputError, match="tempnet"):
        RecConfig(contrast_loss="tempnet", tau=0.05).check()
