"""GradCache: parameter gradients equal full-batch back-propagation (float64)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.multiprocessing as mp
from _dist_helpers import finish_spawned_worker
from torch import nn

from core.losses import info_nce, nt_xent
from core.negatives.grad_cache import GradCache, RngState, grad_cache_step

B, D_IN, D_OUT, CHUNK = 12, 8, 6, 5  # B not divisible by the chunk size
EXACT = {"rtol": 1e-10, "atol": 1e-13}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (CPU batch norm takes ~40 ms a call on a busy box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _dropout_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, D_OUT)).double()


def _bn_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, D_OUT)).double()


def _data(seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(B, D_IN, dtype=torch.float64, generator=g)
    return x1, x1 + 0.3 * torch.randn(B, D_IN, dtype=torch.float64, generator=g)


class Setup:
    """A loss with its encoder layout: info_nce on two towers, nt_xent on one encoder shared by two views."""

    def __init__(self, loss: str, make) -> None:
        self.loss = loss
        self.log_t = nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))  # learnable log-temperature
        if loss == "info_nce":
            self.encoders: nn.Module | list[nn.Module] = [make(1), make(2)]
        else:
            self.encoders = make(1)

    def modules(self) -> list[nn.Module]:
        return self.encoders if isinstance(self.encoders, list) else [self.encoders]

    def per_input(self) -> list[nn.Module]:
        return self.encoders if isinstance(self.encoders, list) else [self.encoders] * 2

    def loss_fn(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        t = self.log_t.exp()
        if self.loss == "info_nce":
            return info_nce(a, b, temperature=t, symmetric=True)
        return nt_xent(a, b, temperature=t)

    def params(self) -> list[nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters()] + [self.log_t]

    def zero_grad(self) -> None:
        for p in self.params():
            p.grad = None

    def grads(self) -> list[torch.Tensor]:
        return [p.grad.clone() for p in self.params()]


def _reference(setup: Setup, inputs, chunked: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Ordinary back-propagation of the whole batch. ``chunked``: the encoder is applied chunk by chunk (same
    calls in the same order, hence the same dropout draws / ghost batch-norm statistics), all in one graph."""
    setup.zero_grad()
    reps = []
    for enc, x in zip(setup.per_input(), inputs):
        reps.append(torch.cat([enc(c) for c in x.split(CHUNK)]) if chunked else enc(x))
    loss = setup.loss_fn(*reps)
    loss.backward()
    return loss.detach(), setup.grads()


def _cached(setup: Setup, inputs, **kw) -> tuple[torch.Tensor, list[torch.Tensor]]:
    setup.zero_grad()
    loss = grad_cache_step(setup.encoders, inputs, setup.loss_fn, chunk_size=CHUNK, **kw)
    return loss, setup.grads()


def _assert_all_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **EXACT)


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


LOSSES = ["info_nce", "nt_xent"]


@pytest.mark.parametrize("loss", LOSSES)
def test_dropout_train_mode_equals_full_batch_with_rng_replay(loss):
    setup = Setup(loss, _dropout_mlp)
    inputs = _data()
    torch.manual_seed(7)
    ref_loss, ref = _reference(setup, inputs, chunked=True)
    torch.manual_seed(7)  # same RNG stream: pass 1 draws the same masks as the reference
    loss_gc, got = _cached(setup, inputs)
    torch.testing.assert_close(loss_gc, ref_loss, **EXACT)
    _assert_all_close(got, ref)
    assert setup.log_t.grad is not None and setup.log_t.grad.abs() > 0  # the loss's own parameter


@pytest.mark.parametrize("loss", LOSSES)
def test_dropout_without_rng_replay_differs(loss):
    setup = Setup(loss, _dropout_mlp)
    inputs = _data()
    torch.manual_seed(7)
    _, ref = _reference(setup, inputs, chunked=True)
    torch.manual_seed(7)
    _, got = _cached(setup, inputs, replay_rng=False)
    assert _max_diff(got, ref) > 1e-4  # new dropout masks in the second pass: wrong gradients


@pytest.mark.parametrize("loss", LOSSES)
def test_batchnorm_eval_mode_equals_true_full_batch(loss):
    setup = Setup(loss, _bn_mlp)
    warm = torch.randn(32, D_IN, dtype=torch.float64)
    for m in setup.modules():
        m(warm)  # non-trivial running statistics
        m.eval()
    inputs = _data()
    ref_loss, ref = _reference(setup, inputs, chunked=False)  # one call on the whole batch
    loss_gc, got = _cached(setup, inputs)
    torch.testing.assert_close(loss_gc, ref_loss, **EXACT)
    _assert_all_close(got, ref)


@pytest.mark.parametrize("loss", LOSSES)
def test_batchnorm_train_mode_equals_ghost_batchnorm_reference(loss):
    """Documented behaviour: in train mode every chunk is normalised with its own statistics ("ghost" BN), so
    the gradients equal back-propagation through the chunk-by-chunk forward, not through one full-batch call."""
    inputs = _data()
    setup = Setup(loss, _bn_mlp)
    ref_loss, ref = _reference(setup, inputs, chunked=True)
    ref_stats = [b.clone() for m in setup.modules() for b in m.buffers()]
    _, full = _reference(Setup(loss, _bn_mlp), inputs, chunked=False)

    setup = Setup(loss, _bn_mlp)  # fresh running statistics
    loss_gc, got = _cached(setup, inputs)
    torch.testing.assert_close(loss_gc, ref_loss, **EXACT)
    _assert_all_close(got, ref)
    assert _max_diff(got, full) > 1e-4  # and indeed not the full-batch-statistics gradient
    # running statistics were updated once per chunk (pass 1), as by the reference forward
    _assert_all_close([b for m in setup.modules() for b in m.buffers()], ref_stats)

    setup = Setup(loss, _bn_mlp)
    _cached(setup, inputs, restore_buffers=False)  # the re-encoding would update them a second time
    assert _max_diff([b.double() for m in setup.modules() for b in m.buffers()],
                     [b.double() for b in ref_stats]) > 1e-6


def test_composes_with_tiled_loss_and_learnable_temperature():
    """GradCache + tiled loss (spec 6.2: the pair that bounds both activation and loss memory)."""
    inputs = _data()
    setup = Setup("info_nce", _dropout_mlp)
    for m in setup.modules():
        m.eval()
    _, ref = _reference(setup, inputs, chunked=False)
    setup.zero_grad()
    grad_cache_step(setup.encoders, inputs,
                    lambda a, b: info_nce(a, b, temperature=setup.log_t.exp(), symmetric=True, tile_size=4),
                    chunk_size=CHUNK)
    _assert_all_close(setup.grads(), ref)


def test_chunk_size_larger_than_batch_and_dict_inputs():
    setup = Setup("info_nce", _dropout_mlp)
    for m in setup.modules():
        m.eval()
    x1, x2 = _data()
    _, ref = _reference(setup, (x1, x2), chunked=False)

    class Wrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return {"emb": self.inner(x)}

    wraps = [Wrap(m) for m in setup.modules()]
    setup.zero_grad()
    gc = GradCache(wraps, setup.loss_fn, chunk_size=[100, 3], get_rep=lambda out: out["emb"])
    gc.step({"x": x1}, {"x": x2})
    _assert_all_close(setup.grads(), ref)


def test_custom_no_sync_context_entered_for_all_but_last_chunk():
    setup = Setup("nt_xent", _dropout_mlp)
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(1)
        yield

    _cached(setup, _data(), no_sync=no_sync)
    n_chunks = 2 * -(-B // CHUNK)
    assert len(entered) == n_chunks - 1


def test_rng_state_replay_restores_outer_stream():
    torch.manual_seed(0)
    state = RngState()
    a = torch.rand(3)
    after = torch.get_rng_state()
    with state.replay():
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), after)


def test_errors():
    enc = _dropout_mlp(0)
    x1, x2 = _data()
    with pytest.raises(ValueError, match="encoders"):
        grad_cache_step([enc], [x1, x2], lambda a, b: (a * b).sum(), chunk_size=4)
    with pytest.raises(ValueError, match="scalar"):
        grad_cache_step(enc, [x1, x2], lambda a, b: a * b, chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        grad_cache_step(enc, [x1, x2], lambda a, b: (a * b).sum(), chunk_size=0)


# ----------------------------------------------------------------------------------------------- Lightning


def test_lightning_manual_optimisation_matches_full_batch_training(tmp_path):
    lightning = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    n_batches, lr = 3, 0.1
    data = torch.randn(n_batches * B, D_IN, dtype=torch.float64)
    noise = 0.3 * torch.randn_like(data)

    def make_encoder() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(D_IN, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, D_OUT))

    class GradCacheModule(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.encoder = make_encoder()
            self.log_t = nn.Parameter(torch.tensor(-2.0))

        def training_step(self, batch, batch_idx):
            x, eps = batch
            opt = self.optimizers()
            opt.zero_grad()
            loss = grad_cache_step(
                self.encoder, (x, x + eps), lambda a, b: nt_xent(a, b, temperature=self.log_t.exp()),
                chunk_size=CHUNK, backward_fn=self.manual_backward,
            )
            opt.step()
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    module = GradCacheModule()
    loader = DataLoader(TensorDataset(data, noise), batch_size=B, shuffle=False)
    trainer = lightning.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, precision="64-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    assert trainer.global_step == n_batches

    # plain full-batch training loop with the same initialisation
    enc = make_encoder().double()
    log_t = nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))
    opt = torch.optim.SGD([*enc.parameters(), log_t], lr=lr)
    for i in range(n_batches):
        x, eps = data[i * B:(i + 1) * B], noise[i * B:(i + 1) * B]
        opt.zero_grad()
        nt_xent(enc(x), enc(x + eps), temperature=log_t.exp()).backward()
        opt.step()
    for p, q in zip(module.encoder.parameters(), enc.parameters()):
        torch.testing.assert_close(p, q, **EXACT)
    torch.testing.assert_close(module.log_t, log_t, **EXACT)
    assert not torch.equal(module.encoder[0].weight, make_encoder()[0].weight.double())  # it did train


# ----------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on a small CPU box: avoid oversubscription
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        enc = nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, D_OUT)).double()
        ddp = nn.parallel.DistributedDataParallel(enc)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own local batch
        x1 = torch.randn(B, D_IN, dtype=torch.float64, generator=g)
        x2 = x1 + 0.3 * torch.randn(B, D_IN, dtype=torch.float64, generator=g)

        def loss_fn(a, b):
            return info_nce(a, b, temperature=0.2)

        grad_cache_step([ddp, ddp], (x1, x2), loss_fn, chunk_size=CHUNK)  # no_sync on all but the last chunk
        got = [p.grad.clone() for p in enc.parameters()]
        # reference: the local full-batch gradient, averaged over ranks (what DDP computes)
        enc.zero_grad()
        loss_fn(enc(x1), enc(x2)).backward()
        ref = [p.grad.clone() for p in enc.parameters()]
        for r in ref:
            torch.distributed.all_reduce(r)
            r /= world
        torch.save({"got": got, "ref": ref}, os.path.join(out_dir, f"rank{rank}.pt"))
        del ddp
    except BaseException:
        torch.distributed.destroy_process_group()
        raise
    finish_spawned_worker()


@pytest.mark.distributed
def test_ddp_encoder_gradients_equal_rank_average_of_full_batch(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt")
        _assert_all_close(out["got"], out["ref"])
