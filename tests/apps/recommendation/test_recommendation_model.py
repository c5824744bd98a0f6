"""Backbone, augmentations and loss terms against naive references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from apps.recommendation.model import (
    SASRec,
    SeqRecModule,
    augment_views,
    crop,
    last_hidden,
    mask,
    mclrec_regularizer,
    reorder,
    supervised_dot_contrast,
)


def _batch(lengths: list[int], L: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L = L or max(lengths)
    items = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        items[i, :n] = torch.randperm(1000, generator=g)[:n] + 1  # distinct ids: positions are traceable
    return items, torch.tensor(lengths)


LENGTHS = [1, 2, 3, 5, 8, 13, 20, 20]


def test_crop_keeps_a_contiguous_half() -> None:
    items, lengths = _batch(LENGTHS)
    out, new_len = crop(items, lengths, 0.5, generator=torch.Generator().manual_seed(1))
    for i, n in enumerate(lengths.tolist()):
        keep = max(1, math.floor(0.5 * n))
        assert new_len[i] == keep
        seq, got = items[i, :n].tolist(), out[i, :keep].tolist()
        s = seq.index(got[0])
        assert seq[s: s + keep] == got and (out[i, keep:] == 0).all()


def test_mask_zeroes_half_of_the_valid_positions() -> None:
    items, lengths = _batch(LENGTHS)
    out, new_len = mask(items, lengths, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(new_len, lengths)
    for i, n in enumerate(lengths.tolist()):
        zeroed = (out[i, :n] == 0).sum().item()
        assert zeroed == math.floor(0.5 * n)
        kept = out[i, :n] != 0
        assert torch.equal(out[i, :n][kept], items[i, :n][kept]) and (out[i, n:] == 0).all()


def test_reorder_permutes_one_span() -> None:
    items, lengths = _batch(LENGTHS)
    out, _ = reorder(items, lengths, 0.8, generator=torch.Generator().manual_seed(3))
    for i, n in enumerate(lengths.tolist()):
        span = math.floor(0.8 * n)
        a, b = items[i].tolist(), out[i].tolist()
        assert sorted(a) == sorted(b)
        diff = [j for j in range(len(a)) if a[j] != b[j]]
        if diff:  # every moved item stays inside one window of `span` positions
            assert diff[-1] - diff[0] < span and all(j < n for j in diff)


def test_augment_views_use_two_different_operators() -> None:
    torch.manual_seed(0)
    items, lengths = _batch([10] * 200)
    (v1, l1), (v2, l2) = augment_views(items, lengths)

    def op(v: torch.Tensor, n: torch.Tensor, i: int) -> str:
        if n[i] < 10:
            return "crop"
        return "mask" if (v[i] == 0).any() else "reorder"

    ops = [(op(v1, l1, i), op(v2, l2, i)) for i in range(200)]
    assert all(a != b for a, b in ops)
    assert {a for a, _ in ops} == {"crop", "mask", "reorder"}


def test_sasrec_is_causal_and_padding_free() -> None:
    torch.manual_seed(0)
    enc = SASRec(50, dim=16, layers=2, heads=2, max_len=12, dropout=0.3).eval()
    seq = torch.tensor([[3, 7, 9, 11, 2, 5]])
    h = enc(seq)
    changed = seq.clone()
    changed[0, 4:] = torch.tensor([40, 41])
    assert torch.allclose(enc(changed)[0, :4], h[0, :4], atol=1e-6)  # future items do not leak backwards
    padded = torch.cat([seq, torch.zeros(1, 6, dtype=torch.long)], 1)
    assert torch.allclose(last_hidden(enc(padded), torch.tensor([6])), h[:, -1], atol=1e-6)


def test_rec_loss_is_full_softmax_ce_over_valid_positions() -> None:
    torch.manual_seed(0)
    m = SeqRecModule(30, "sasrec", dim=16, heads=2, max_len=10, dropout=0.0)
    hidden = torch.randn(3, 5, 16)
    targets = torch.tensor([[2, 3, 0, 0, 0], [5, 6, 7, 8, 9], [1, 0, 0, 0, 0]])
    W = m.encoder.item_weights()
    naive = []
    for b in range(3):
        for t in range(5):
            if targets[b, t] > 0:
                logits = hidden[b, t] @ W[1:].T  # items 1..30 only: the padding id is not a class
                naive.append(-F.log_softmax(logits, 0)[targets[b, t] - 1])
    assert torch.allclose(m.rec_loss(hidden, targets), torch.stack(naive).mean(), atol=1e-5)


def _naive_supcon_dot(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = len(z)
    total = 0.0
    for a in range(n):
        others = [k for k in range(n) if k != a]
        log_den = torch.logsumexp(torch.stack([z[a] @ z[k] for k in others]), 0)
        pos = [k for k in others if y[k] == y[a]]
        total = total + sum(log_den - z[a] @ z[p] for p in pos) / len(pos)
    return total / n


def test_duorec_term_matches_naive_formula() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.tensor([4, 9, 4, 1, 2, 9])  # rows 0/2 and 1/5 share a target: positives, never negatives
    got = supervised_dot_contrast(z1, z2, labels)
    assert torch.allclose(got, _naive_supcon_dot(torch.cat([z1, z2]), labels.repeat(2)), atol=1e-5)


def test_mclrec_regularizer_matches_naive_loop() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    z = torch.cat([a, b])
    n = len(z)
    r_pos, r_neg, n_neg = 0.0, 0.0, 0
    for i in range(n):
        p = (i + 5) % n
        pos = float(z[i] @ z[p])
        negs = [float(z[i] @ z[k]) for k in range(n) if k not in (i, p)]
        o_min, o_max = min(pos, max(negs)), max(pos, max(negs))
        r_pos += max(0.0, pos - o_min)
        r_neg += sum(max(0.0, o_max - s) for s in negs)
        n_neg += len(negs)
    assert mclrec_regularizer(a, b).item() == pytest.approx(r_pos / n + r_neg / n_neg, rel=1e-5)


@pytest.mark.parametrize("method", ["sasrec", "cl4srec", "duorec"])
def test_training_step_reduces_loss_on_a_fixed_batch(method: str) -> None:
    torch.manual_seed(0)
    m = SeqRecModule(20, method, dim=16, heads=2, max_len=8, dropout=0.0, lam=0.1)
    items, lengths = _batch([4, 6, 8, 3, 5, 7], seed=1)
    items = items % 20 + (items > 0).long()
    targets = torch.where(items > 0, (items % 20) + 1, torch.zeros_like(items))
    batch = {"items": items, "targets": targets, "lengths": lengths, "same_items": items.flip(0),
             "same_lengths": lengths.flip(0), "last_target": torch.tensor([1, 2, 1, 3, 4, 5])}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    torch.manual_seed(1)
    first = m.contrastive_step(batch)["rec"].item()
    for _ in range(30):
        out = m.contrastive_step(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert m.contrastive_step(batch)["rec"].item() < first


def test_mclrec_three_step_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per batch: encoder step (augmenters frozen), augmenter step (encoder untouched), encoder step."""
    torch.manual_seed(0)
    m = SeqRecModule(20, "mclrec", dim=16, heads=2, max_len=8, dropout=0.1, lam=0.0, beta=0.05)
    opt_enc, opt_aug = m.configure_optimizers()
    enc_ids = {id(p) for p in m.encoder.parameters()}
    assert {id(p) for g in opt_enc.param_groups for p in g["params"]} == enc_ids
    assert not {id(p) for g in opt_aug.param_groups for p in g["params"]} & enc_ids
    events = []

    def snapshot() -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([p.detach().flatten() for p in m.encoder.parameters()]),
                torch.cat([p.detach().flatten() for p in [*m.aug1.parameters(), *m.aug2.parameters()]]))

    for name, opt in (("encoder", opt_enc), ("augmenters", opt_aug)):
        step = opt.step

        def wrapped(*a, _step=step, _name=name, **k):
            before = snapshot()
            out = _step(*a, **k)
            after = snapshot()
            events.append((_name, not torch.equal(before[0], after[0]), not torch.equal(before[1], after[1])))
            return out

        monkeypatch.setattr(opt, "step", wrapped)
    monkeypatch.setattr(m, "optimizers", lambda: (opt_enc, opt_aug))
    monkeypatch.setattr(m, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    items, lengths = _batch([4, 6, 8, 3, 5, 7], seed=1)
    items = items % 20 + (items > 0).long()
    targets = torch.where(items > 0, (items % 20) + 1, torch.zeros_like(items))
    m.training_step({"items": items, "targets": targets, "lengths": lengths}, 0)
    # (which optimiser, encoder moved, augmenters moved)
    assert events == [("encoder", True, False), ("augmenters", False, True), ("encoder", True, False)]


def test_duorec_all_positions_contrasts_every_prefix_state_by_next_item() -> None:
    # without dropout the two passes agree, so the term is the naive SupCon over [H_valid; H_valid] with the next
    # item as label: every prefix state is an anchor, same-target prefixes (here items 3 and 7 recur) positives
    torch.manual_seed(0)
    m = SeqRecModule(12, "duorec", dim=8, heads=2, max_len=6, dropout=0.0, lam=1.0, cl_positions="all")
    items = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 2, 3, 6, 7, 0], [8, 9, 7, 0, 0, 0]])
    targets = torch.tensor([[2, 3, 4, 9, 0, 0], [2, 3, 6, 7, 3, 0], [9, 7, 3, 0, 0, 0]])
    batch = {"items": items, "targets": targets, "lengths": torch.tensor([4, 5, 3])}
    out = m.contrastive_step(batch)
    hidden = m.encoder(items)
    valid = targets > 0
    h, y = hidden[valid], targets[valid]
    assert h.shape[0] == 12
    naive = _naive_supcon_dot(torch.cat([h, h]), y.repeat(2))
    assert torch.allclose(out["cl"], naive, atol=1e-5)
    assert torch.allclose(out["loss"], out["rec"] + naive, atol=1e-5)
    with pytest.raises(ValueError, match="cl_positions"):
        SeqRecModule(12, "duorec", cl_positions="first")


def test_encode_last_cut_and_chunked_equal_the_full_padded_pass() -> None:
    torch.manual_seed(0)
    m = SeqRecModule(1000, "duorec", dim=16, heads=2, max_len=30, dropout=0.3).eval()
    items, lengths = _batch([3, 1, 7, 2, 9, 4, 5, 1, 6, 2], L=30, seed=4)  # padded far past the longest row
    full = last_hidden(m.encoder(items), lengths)
    torch.testing.assert_close(m.encode_last(items, lengths), full, rtol=1e-5, atol=1e-6)
    chunked = m.encode_last(items, lengths, chunks=3)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    chunked.sum().backward()  # the scattered chunks keep the graph
    assert m.encoder.item_emb.weight.grad is not None


def test_fast_dropout_keeps_the_expectation_and_rate() -> None:
    from apps.recommendation.model import FastDropout

    torch.manual_seed(0)
    d = FastDropout(0.3)
    x = torch.ones(200_000)
    y = d(x)
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01 and abs(y.mean().item() - 1.0) < 0.01
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7)
    assert torch.equal(d.eval()(x), x)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_forward_last_equals_the_full_pass_at_the_last_positions(layers: int) -> None:
    # float64, train mode with dropout 0 (the python path of every block) and eval mode (the fused path)
    torch.manual_seed(layers)
    enc = SASRec(1000, dim=16, layers=layers, heads=2, max_len=30, dropout=0.0).double()
    items, lengths = _batch([3, 1, 7, 2, 9, 4, 5, 1, 6, 2], L=30, seed=5)
    for mode in (enc.train, enc.eval):
        mode()
        full = last_hidden(enc(items), lengths)
        fast = enc.forward_last(items, lengths)
        torch.testing.assert_close(fast, full, rtol=1e-10, atol=1e-12)
    # the same gradient for every parameter
    enc.train()
    w = torch.randn(len(lengths), 16, dtype=torch.float64)
    g_full = torch.autograd.grad((last_hidden(enc(items), lengths) * w).sum(), list(enc.parameters()))
    g_fast = torch.autograd.grad((enc.forward_last(items, lengths) * w).sum(), list(enc.parameters()),
                                 allow_unused=True)
    for a, b in zip(g_full, g_fast):
        torch.testing.assert_close(b if b is not None else torch.zeros_like(a), a, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="lengths"):
        enc.forward_last(items, torch.zeros_like(lengths))


def test_prefix_batches_take_the_last_position_path_with_the_same_loss() -> None:
    # prefix samples (one target per row, at its last position) and all-position rows give the loss of the full
    # pass; the prefix path computes only the last states
    torch.manual_seed(0)
    m = SeqRecModule(1000, "duorec", dim=16, heads=2, max_len=20, dropout=0.0, cl_positions="all").double()
    items, lengths = _batch([3, 1, 7, 2, 9, 4], L=9, seed=6)
    prefix_targets = torch.zeros_like(items)
    prefix_targets[torch.arange(6), lengths - 1] = torch.arange(6) + 11
    all_targets = torch.where(items > 0, (items % 997) + 1, torch.zeros_like(items))
    for targets in (prefix_targets, all_targets):
        batch = {"items": items, "targets": targets, "lengths": lengths}
        hidden = m.encoder(items)
        valid = targets > 0
        naive = m.rec_loss(hidden, targets)
        h, y = m.rec_states(batch)
        torch.testing.assert_close(h, hidden[valid], rtol=1e-10, atol=1e-12)
        assert torch.equal(y, targets[valid])
        out = m.contrastive_step(batch)
        torch.testing.assert_close(out["rec"], naive, rtol=1e-10, atol=1e-12)
        expect = naive + 0.1 * supervised_dot_contrast(hidden[valid], hidden[valid], targets[valid])
        torch.testing.assert_close(out["loss"], expect, rtol=1e-10, atol=1e-12)
