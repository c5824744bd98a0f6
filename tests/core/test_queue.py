"""MemoryQueue (MoCo FIFO of keys) and momentum encoders."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
from _dist_helpers import finish_spawned_worker
from torch import nn

from core.losses import info_nce
from core.negatives.momentum import MomentumEncoder, cosine_momentum, ema_update
from core.negatives.queue import MemoryQueue, all_gather_no_grad


def _keys(start: int, n: int, dim: int = 3) -> torch.Tensor:
    """Rows whose every entry is the row's global id: easy to read back."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, dim)


def _ids(x: torch.Tensor) -> list[int]:
    return x[:, 0].long().tolist()


# ----------------------------------------------------------------------------------------------- queue


def test_starts_empty_and_returns_only_filled_part():
    q = MemoryQueue(5, 3)
    assert len(q) == 0 and q.negatives() is None
    q.enqueue(_keys(0, 2))
    neg = q.negatives()
    assert neg.shape == (2, 3) and _ids(neg) == [0, 1]


def test_fifo_order_over_many_enqueues_matches_reference_deque():
    K, total = 7, 0
    q = MemoryQueue(K, 3)
    reference: list[int] = []
    for n in [3, 2, 4, 1, 6, 7, 2, 9, 5]:  # crosses the end several times, includes n == K and n > K
        q.enqueue(_keys(total, n))
        reference = (reference + list(range(total, total + n)))[-K:]
        total += n
        assert _ids(q.negatives()) == reference  # oldest first, exactly the last K keys
        assert len(q) == len(reference)
        assert int(q.ptr) == total % K


def test_wrap_around_splits_the_batch_without_dropping_keys():
    q = MemoryQueue(5, 3)
    q.enqueue(_keys(0, 4))  # slots 0..3, ptr 4
    q.enqueue(_keys(4, 3))  # slot 4 gets id 4, slots 0, 1 get ids 5, 6
    assert _ids(q.keys) == [5, 6, 2, 3, 4]
    assert int(q.ptr) == 2
    assert _ids(q.negatives()) == [2, 3, 4, 5, 6]


def test_batch_larger_than_queue_keeps_last_k_like_sequential_enqueue():
    a, b = MemoryQueue(4, 3), MemoryQueue(4, 3)
    a.enqueue(_keys(0, 3))
    b.enqueue(_keys(0, 3))
    a.enqueue(_keys(3, 10))
    for i in range(3, 13):
        b.enqueue(_keys(i, 1))
    assert torch.equal(a.keys, b.keys) and int(a.ptr) == int(b.ptr) and len(a) == len(b) == 4
    assert _ids(a.negatives()) == [9, 10, 11, 12]


def test_labels_follow_keys():
    q = MemoryQueue(4, 3, with_labels=True)
    total = 0
    for n in [3, 3, 2]:
        q.enqueue(_keys(total, n), labels=torch.arange(total, total + n) * 10)
        total += n
    assert _ids(q.negatives()) == [4, 5, 6, 7]
    assert q.negative_labels().tolist() == [40, 50, 60, 70]


def test_negatives_is_a_detached_copy():
    q = MemoryQueue(4, 3)
    k = _keys(0, 2).requires_grad_(True)
    q.enqueue(k * 1.0)
    neg = q.negatives()
    assert not neg.requires_grad
    neg.zero_()
    assert _ids(q.negatives()) == [0, 1]


def test_clear_errors():
    q = MemoryQueue(4, 3)
    with pytest.raises(ValueError, match="feature dimension 5"):
        q.enqueue(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        q.enqueue(torch.zeros(3))
    with pytest.raises(ValueError, match="with_labels=False"):
        q.enqueue(torch.zeros(2, 3), labels=torch.zeros(2))
    ql = MemoryQueue(4, 3, with_labels=True)
    with pytest.raises(ValueError, match="pass labels"):
        ql.enqueue(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape"):
        ql.enqueue(torch.zeros(2, 3), labels=torch.zeros(3))
    with pytest.raises(ValueError):
        MemoryQueue(0, 3)


def test_moco_step_key_never_a_negative_for_itself():
    """Loss with the queue's current contents, then enqueue: the keys of a step are never among its negatives."""
    torch.manual_seed(0)
    D, B = 8, 4
    enc = nn.Linear(6, D)
    key_enc = MomentumEncoder(enc, momentum=0.9)
    queue = MemoryQueue(10, D)
    for _ in range(6):  # wraps around the 10-slot queue
        x = torch.randn(B, 6)
        q = enc(x + 0.01 * torch.randn_like(x))
        key_enc.update(enc)
        k = key_enc(x)
        negs = queue.negatives()
        if negs is not None:  # no current key is present among the negatives used by this step's loss
            assert not (negs[:, None, :] == k[None, :, :]).all(-1).any()
        loss = info_nce(q, k, temperature=0.1, negatives=negs)
        queue.enqueue(k)
        # ... while after enqueueing they are (so the order is what makes the difference)
        assert (queue.negatives()[:, None, :] == k[None, :, :]).all(-1).any(0).all()
        loss.backward()  # enqueue before backward is safe: negatives() was a copy
        enc.zero_grad()


def test_state_dict_round_trip():
    q = MemoryQueue(5, 3, with_labels=True)
    q.enqueue(_keys(0, 7), labels=torch.arange(7))
    sd = q.state_dict()
    assert set(sd) == {"keys", "labels", "ptr", "n_filled"}  # persistent: a resumed run keeps its queue
    r = MemoryQueue(5, 3, with_labels=True)
    r.load_state_dict(sd)
    assert torch.equal(r.negatives(), q.negatives()) and torch.equal(r.negative_labels(), q.negative_labels())
    r.enqueue(_keys(7, 1), labels=torch.tensor([7]))
    q.enqueue(_keys(7, 1), labels=torch.tensor([7]))
    assert torch.equal(r.keys, q.keys) and int(r.ptr) == int(q.ptr)


def test_reset_and_dtype_cast():
    q = MemoryQueue(3, 2, dtype=torch.float64)
    q.enqueue(torch.ones(2, 2, dtype=torch.float32))
    assert q.negatives().dtype == torch.float64
    q.reset()
    assert len(q) == 0 and q.negatives() is None and int(q.ptr) == 0


def _queue_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on a small CPU box: avoid oversubscription
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        q = MemoryQueue(8, 3, with_labels=True)
        sizes = [2, 3]  # ranks enqueue different batch sizes
        for step in range(3):
            n = sizes[rank]
            start = 100 * step + 10 * rank
            q.enqueue(_keys(start, n), labels=torch.arange(start, start + n))
        # a gathered copy of every rank's queue, to compare inside the test process
        torch.save({"keys": q.negatives(), "labels": q.negative_labels(), "ptr": int(q.ptr),
                    "gathered": all_gather_no_grad(torch.full((rank + 1, 1), float(rank)))},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        torch.distributed.destroy_process_group()
        raise
    finish_spawned_worker()


@pytest.mark.distributed
def test_two_ranks_hold_identical_queues_with_all_keys_in_rank_order(tmp_path):
    world = 2
    mp.spawn(_queue_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(world))
    assert torch.equal(r0["keys"], r1["keys"]) and torch.equal(r0["labels"], r1["labels"])
    assert r0["ptr"] == r1["ptr"]
    # reference: each step enqueues rank 0's keys then rank 1's, FIFO of size 8
    ref: list[int] = []
    for step in range(3):
        ref += [100 * step + i for i in range(2)] + [100 * step + 10 + i for i in range(3)]
    ref = ref[-8:]
    assert _ids(r0["keys"]) == ref and r0["labels"].tolist() == ref
    assert r0["gathered"].flatten().tolist() == [0.0, 1.0, 1.0]  # variable sizes, rank order


# ----------------------------------------------------------------------------------------------- momentum


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (CPU batch norm takes ~40 ms a call on a busy box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()


def test_ema_update_exact_formula_and_buffer_copy():
    torch.manual_seed(0)
    src, tgt = _bn_net(), _bn_net()
    src(torch.randn(8, 4, dtype=torch.float64))  # move the source's running stats
    m = 0.9
    before = {n: p.detach().clone() for n, p in tgt.named_parameters()}
    ema_update(tgt, src, m)
    for n, p in tgt.named_parameters():
        expected = m * before[n] + (1 - m) * dict(src.named_parameters())[n]
        torch.testing.assert_close(p, expected, rtol=1e-15, atol=0)
    for (n, b), (_, sb) in zip(tgt.named_buffers(), src.named_buffers()):
        assert torch.equal(b, sb), n
    # m = 1 freezes, m = 0 copies
    frozen = {n: p.detach().clone() for n, p in tgt.named_parameters()}
    ema_update(tgt, src, 1.0)
    assert all(torch.equal(p, frozen[n]) for n, p in tgt.named_parameters())
    ema_update(tgt, src, 0.0)
    assert all(torch.equal(p, sp) for p, sp in zip(tgt.parameters(), src.parameters()))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update(tgt, src, 1.5)
    with pytest.raises(ValueError, match="differ"):
        ema_update(tgt, nn.Linear(4, 5).double(), 0.5)


def test_momentum_encoder_is_frozen_and_follows_source():
    torch.manual_seed(0)
    src = nn.Linear(4, 3)
    me = MomentumEncoder(src, momentum=0.5)
    assert all(not p.requires_grad for p in me.parameters())
    assert all(p.requires_grad for p in src.parameters())  # the source is untouched
    with torch.no_grad():
        src.weight.add_(1.0)
    old = me.encoder.weight.clone()
    me.update(src)
    torch.testing.assert_close(me.encoder.weight, 0.5 * old + 0.5 * src.weight)
    out = me(torch.randn(2, 4))
    assert not out.requires_grad


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100, base=0.99) == pytest.approx(0.99)
    assert cosine_momentum(100, 100, base=0.99) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, base=0.99) == pytest.approx(0.995)
    assert cosine_momentum(25, 100, base=0.9, final=1.0) == pytest.approx(1 - 0.1 * (1 + math.cos(math.pi / 4)) / 2)
    assert cosine_momentum(500, 100, base=0.99) == pytest.approx(1.0)  # clamped
