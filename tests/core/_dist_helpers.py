"""Helpers for the distributed tests: a pool of gloo CPU processes and the tasks they run.

The pool is started once per test module (spawn context; workers import this module by name, so the
task functions live here rather than in the test file) and every test sends it a task. Each task
returns plain Python / numpy values; the single-process references are computed in the pytest process,
which never initialises ``torch.distributed``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DTYPE = torch.float64


# --------------------------------------------------------------------------------------------- pool


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain(x):
    """Tensors -> numpy (pickled by value), recursively."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


def _worker_main(rank: int, world: int, port: int, tasks, results) -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    while True:
        item = tasks.get()
        if item is None:
            break
        name, args = item
        try:
            out = (True, _plain(globals()[name](rank, world, *args)))
        except BaseException:  # noqa: BLE001 -- report everything back to the test
            out = (False, traceback.format_exc())
        results.put((rank, out))
    dist.destroy_process_group()
    results.close()
    results.join_thread()
    # Skip the interpreter's slow teardown of torch / Lightning state (seconds per process); every result
    # has been flushed above.
    sys.stdout.flush()
    os._exit(0)


def finish_spawned_worker() -> None:
    """End a ``torch.multiprocessing.spawn`` gloo worker whose results are already saved.

    Waits for every rank, tears the process group down, then leaves with ``os._exit(0)``: the
    interpreter's own teardown of gloo / DDP threads can abort with "terminate called without an active
    exception" (seen once in CI), which would fail a test whose results were correct.
    """
    import gc

    import torch.distributed as dist

    dist.barrier()
    gc.collect()  # drop DDP reducers and pending work handles before the group goes
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class DistPool:
    """``world`` processes in one gloo group, each running tasks by name (functions of this module)."""

    def __init__(self, world: int, timeout: float = 120.0) -> None:
        ctx = mp.get_context("spawn")
        self.world, self.timeout = world, timeout
        port = free_port()
        self.tasks = [ctx.Queue() for _ in range(world)]
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(target=_worker_main, args=(r, world, port, self.tasks[r], self.results), daemon=True)
            for r in range(world)
        ]
        for p in self.procs:
            p.start()

    def run(self, name: str, *args) -> list:
        """Run task ``name(rank, world, *args)`` on every rank; per-rank results, rank order."""
        for q in self.tasks:
            q.put((name, args))
        out: list = [None] * self.world
        errors = []
        deadline = time.monotonic() + self.timeout
        for _ in range(self.world):
            while True:
                try:
                    rank, (ok, value) = self.results.get(timeout=0.5)
                    break
                except queue.Empty:
                    dead = [r for r, p in enumerate(self.procs) if not p.is_alive()]
                    if dead or time.monotonic() > deadline:
                        self.close(force=True)
                        why = f"ranks {dead} died" if dead else f"timed out after {self.timeout} s"
                        raise AssertionError(f"task {name}: {why}; pool terminated") from None
            if ok:
                out[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
        if errors:
            raise AssertionError(f"task {name} failed\n" + "\n".join(errors))
        return out

    def close(self, force: bool = False) -> None:
        if not force:
            for q in self.tasks:
                q.put(None)
            for p in self.procs:
                p.join(timeout=20)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


# -------------------------------------------------------------------------------- loss test cases


@dataclass(frozen=True)
class Case:
    """One loss configuration, run with ``gather`` / ``tile_size`` on ranks holding ``sizes`` samples."""

    loss: str
    kwargs: dict = field(default_factory=dict)
    sizes: tuple[int, ...] = (3, 5)
    gather: bool | str = True
    tile_size: int | None = None
    dim: int = 6
    temperature: float = 0.3
    seed: int = 0
    dtype: str = "float64"


@dataclass(frozen=True)
class LossAdapter:
    """How to make global inputs for a loss, call it, and find the anchors that belong to a rank.

    ``make(n, dim, gen, dtype)`` returns ``{name: tensor}``; every tensor is split by rows among the ranks
    except those named in ``fixed`` (shared constants); ``diff`` names the differentiable inputs.
    ``call(inputs, temperature, **kw)`` runs the loss; ``anchor_rows(n, rows)`` maps the sample rows of a
    rank to the positions of its anchors in the ``reduction="none"`` output.
    """

    make: Callable
    call: Callable
    anchor_rows: Callable = staticmethod(lambda n, rows: rows)
    diff: tuple[str, ...] = ("x", "y")
    fixed: tuple[str, ...] = ()
    function: str = ""  # the core.losses function it needs (default: the adapter's name)


def _two_views(n, dim, gen, dtype):
    x = torch.randn(n, dim, generator=gen, dtype=dtype)
    return {"x": x, "y": x + 0.7 * torch.randn(n, dim, generator=gen, dtype=dtype)}


def _three_views(n, dim, gen, dtype):
    out = _two_views(n, dim, gen, dtype)
    out["z"] = out["x"] + 0.7 * torch.randn(n, dim, generator=gen, dtype=dtype)
    return out


def _labelled(n, dim, gen, dtype):
    out = _two_views(n, dim, gen, dtype)
    out["labels"] = torch.randint(0, 3, (n,), generator=gen)
    return out


def _regression(n, dim, gen, dtype):
    out = _two_views(n, dim, gen, dtype)
    out["labels"] = torch.rand(n, generator=gen, dtype=dtype)
    out["preds"] = out["labels"] + 0.3 * torch.randn(n, generator=gen, dtype=dtype)
    return out


def _centred(n, dim, gen, dtype):
    out = _two_views(n, dim, gen, dtype)
    out["center"] = 0.5 * torch.nn.functional.normalize(torch.randn(dim, generator=gen, dtype=dtype), dim=0)
    return out


def _weighted(n, dim, gen, dtype):
    """CWCL's intra-modal weights: the global (n, n) matrix (1 + cos(u_i, u_j)) / 2 of a frozen modality;
    each rank gets its rows, (B_r, n), as cwcl(gather=...) expects."""
    out = _two_views(n, dim, gen, dtype)
    u = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=dtype), dim=1)
    out["w"] = 0.5 * (1.0 + u @ u.T)
    return out


def _two_view_rows(n, rows):
    return torch.cat([rows, n + rows])


def _losses():
    import core.losses as L

    return L


def _stack(d, keys=("x", "y")):
    return torch.stack([d[k] for k in keys], 1)


ADAPTERS: dict[str, LossAdapter] = {
    "info_nce": LossAdapter(_two_views, lambda d, t, **kw: _losses().info_nce(d["x"], d["y"], temperature=t, **kw)),
    "nt_xent": LossAdapter(
        _two_views, lambda d, t, **kw: _losses().nt_xent(d["x"], d["y"], temperature=t, **kw), _two_view_rows
    ),
    # SupCon on two views with class labels: anchors are the 2N views (view-major).
    "sup_con": LossAdapter(
        _labelled, lambda d, t, **kw: _losses().sup_con(_stack(d), d["labels"], temperature=t, **kw), _two_view_rows
    ),
    # SupCon without labels (SimCLR): one class per sample, ids made unique across ranks by the loss.
    "sup_con_instance": LossAdapter(
        _two_views, lambda d, t, **kw: _losses().sup_con(_stack(d), None, temperature=t, **kw), _two_view_rows,
        function="sup_con",
    ),
    # ConR on two views with continuous labels and predictions.
    "con_r": LossAdapter(
        _regression,
        lambda d, t, **kw: _losses().con_r(_stack(d), d["labels"], d["preds"], temperature=t, **kw),
        _two_view_rows,
    ),
    "sig_lip": LossAdapter(
        _two_views, lambda d, t, **kw: _losses().sig_lip(d["x"], d["y"], logit_scale=1.0 / t, logit_bias=-1.0, **kw)
    ),
    "mean_shifted": LossAdapter(
        _centred,
        lambda d, t, **kw: _losses().mean_shifted(d["x"], d["y"], d["center"], temperature=t, **kw),
        _two_view_rows,
        fixed=("center",),
    ),
    "multi_view": LossAdapter(
        _three_views,
        lambda d, t, **kw: _losses().multi_view_info_nce(_stack(d, ("x", "y", "z")), temperature=t, **kw),
        diff=("x", "y", "z"),
        function="multi_view_info_nce",
    ),
    "cwcl": LossAdapter(
        _weighted, lambda d, t, **kw: _losses().cwcl(d["x"], d["y"], weights=d["w"], temperature=t, **kw)
    ),
}


def loss_available(name: str) -> bool:
    return callable(getattr(_losses(), ADAPTERS[name].function or name, None))


def global_inputs(case: Case) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(case.seed)
    return ADAPTERS[case.loss].make(sum(case.sizes), case.dim, gen, getattr(torch, case.dtype))


def rank_rows(sizes: Sequence[int], rank: int) -> torch.Tensor:
    start = sum(sizes[:rank])
    return torch.arange(start, start + sizes[rank])


def _temperature(case: Case) -> torch.Tensor:
    return torch.tensor(case.temperature, dtype=getattr(torch, case.dtype), requires_grad=True)


def loss_task(rank: int, world: int, case: Case) -> dict:
    """Distributed side: this rank's loss and the gradients its backward leaves on its local inputs."""
    assert world == len(case.sizes)
    adapter = ADAPTERS[case.loss]
    rows = rank_rows(case.sizes, rank)
    local = {k: (v if k in adapter.fixed else v[rows].clone()) for k, v in global_inputs(case).items()}
    for k in adapter.diff:
        local[k].requires_grad_()
    t = _temperature(case)
    loss = adapter.call(local, t, gather=case.gather, tile_size=case.tile_size, **case.kwargs)
    loss.backward()
    grads = {k: local[k].grad for k in adapter.diff}
    return {"loss": loss, "grads": grads, "t_grad": t.grad}


def loss_reference(case: Case) -> list[dict]:
    """Single process on the concatenated global batch, split into what each rank must produce.

    Rank ``r``'s loss is the mean of the global per-anchor losses over its anchors (``l_r``); its
    input gradients are those of ``sum_r l_r`` (every rank's loss reaches every candidate); its
    temperature gradient is that of ``l_r`` alone.
    """
    adapter = ADAPTERS[case.loss]
    data = global_inputs(case)
    inputs = {k: (v.clone().requires_grad_() if k in adapter.diff else v) for k, v in data.items()}
    t = _temperature(case)
    per_anchor = adapter.call(inputs, t, reduction="none", **case.kwargs)
    n = sum(case.sizes)
    rank_losses = [per_anchor[adapter.anchor_rows(n, rank_rows(case.sizes, r))].mean() for r in range(len(case.sizes))]
    total_grads = torch.autograd.grad(sum(rank_losses), [inputs[k] for k in adapter.diff], retain_graph=True)
    out = []
    for r, lr in enumerate(rank_losses):
        (t_grad,) = torch.autograd.grad(lr, t, retain_graph=True)
        rows = rank_rows(case.sizes, r)
        out.append({"loss": lr, "grads": {k: g[rows] for k, g in zip(adapter.diff, total_grads)}, "t_grad": t_grad})
    return out


# ------------------------------------------------------------------- sup_con with an anchor mask


def _masked_sup_con_data(sizes: Sequence[int], seed: int = 3):
    """Two views, 3 classes, dot similarity; every third sample is not an anchor (noise-like: candidate only)."""
    n = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=DTYPE)
    y = x + 0.6 * torch.randn(n, 5, generator=gen, dtype=DTYPE)
    labels = torch.randint(0, 3, (n,), generator=gen)
    mask = torch.arange(n) % 3 != 1
    return x, y, labels, mask


def masked_sup_con_task(rank: int, world: int, sizes: Sequence[int], gather, tile_size) -> dict:
    """This rank's summed loss over its masked-in anchors and the gradient left on its local inputs."""
    from core.losses import sup_con

    x, y, labels, mask = _masked_sup_con_data(sizes)
    rows = rank_rows(sizes, rank)
    xl, yl = x[rows].clone().requires_grad_(), y[rows].clone().requires_grad_()
    loss = sup_con(torch.stack([xl, yl], 1), labels[rows], temperature=0.5, base_temperature=0.5, similarity="dot",
                   anchor_mask=mask[rows], reduction="sum", gather=gather, tile_size=tile_size)
    loss.backward()
    return {"loss": loss, "gx": xl.grad, "gy": yl.grad}


def masked_sup_con_reference(sizes: Sequence[int]) -> list[dict]:
    """One process on the global batch: rank r's loss = the sum over the anchors it holds (the global mask
    restricted to its rows); every rank's input gradient = that of the sum over all anchors, at its rows."""
    from core.losses import sup_con

    x, y, labels, mask = _masked_sup_con_data(sizes)
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()

    def loss(m):
        return sup_con(torch.stack([x, y], 1), labels, temperature=0.5, base_temperature=0.5, similarity="dot",
                       anchor_mask=m, reduction="sum")

    gx, gy = torch.autograd.grad(loss(mask), (x, y))
    out = []
    for r in range(len(sizes)):
        rows = rank_rows(sizes, r)
        own = torch.zeros_like(mask)
        own[rows] = mask[rows]
        out.append({"loss": loss(own).detach(), "gx": gx[rows], "gy": gy[rows]})
    return out


# ----------------------------------------------------------------------------- primitive gathers


def gather_task(rank: int, world: int, sizes: Sequence[int]) -> dict:
    """all_gather_with_grad / gather_candidates on rows of unequal length per rank."""
    from core.negatives import all_gather_with_grad, gather_candidates, gather_sizes, rank_offset

    x = torch.full((sizes[rank], 2), float(rank + 1), dtype=DTYPE, requires_grad=True)
    g = all_gather_with_grad(x)
    # rank r weighs the gathered rows by (r + 1) * global row index: d/dx_r sums every rank's weights
    w = (rank + 1) * torch.arange(g.shape[0], dtype=DTYPE)[:, None].expand_as(g)
    (g * w).sum().backward()
    labels = torch.arange(sizes[rank]) + 100 * rank
    mask = torch.arange(sizes[rank]) % 2 == 0
    c, meta, offset = gather_candidates(x.detach(), {"label": labels, "flag": mask})
    return {"gathered": g, "grad": x.grad, "offset": offset, "labels": meta["label"], "flags": meta["flag"],
            "c": c, "sizes": gather_sizes(sizes[rank]), "rank_offset": rank_offset(sizes[rank])}


# --------------------------------------------------------------------- DDP / plain-dist convention


def _linear_problem(world: int, b: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    enc = torch.nn.Linear(5, 4, dtype=DTYPE)
    with torch.no_grad():
        enc.weight.copy_(torch.randn(4, 5, generator=gen, dtype=DTYPE))
        enc.bias.copy_(torch.randn(4, generator=gen, dtype=DTYPE))
    x = torch.randn(world * b, 5, generator=gen, dtype=DTYPE)
    y = x + 0.5 * torch.randn(world * b, 5, generator=gen, dtype=DTYPE)
    return enc, x, y


class _EncoderWithTemperature(torch.nn.Module):
    def __init__(self, enc: torch.nn.Module) -> None:
        super().__init__()
        self.enc = enc
        self.log_t = torch.nn.Parameter(torch.tensor(math.log(0.2), dtype=DTYPE))

    def forward(self, x, y, **kw):
        from core.losses import info_nce

        return info_nce(self.enc(x), self.enc(y), temperature=self.log_t.exp(), **kw)


def ddp_linear_task(rank: int, world: int, b: int, gather, tile_size) -> dict:
    """Per-rank grads of a linear encoder + learnable temperature: raw (what backward leaves), after a
    manual all-reduce-mean (plain torch.distributed), and under DDP."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    enc, x, y = _linear_problem(world, b)
    rows = slice(rank * b, (rank + 1) * b)
    model = _EncoderWithTemperature(enc)
    loss = model(x[rows], y[rows], gather=gather, tile_size=tile_size)
    loss.backward()
    raw = {k: p.grad.clone() for k, p in model.named_parameters()}
    manual = {}
    for k, g in raw.items():
        g = g.clone()
        dist.all_reduce(g)
        manual[k] = g / world
    model.zero_grad()
    ddp = DDP(model)
    ddp_loss = ddp(x[rows], y[rows], gather=gather, tile_size=tile_size)
    ddp_loss.backward()
    via_ddp = {k.removeprefix("module."): p.grad.clone() for k, p in ddp.named_parameters()}
    return {"loss": loss, "raw": raw, "manual": manual, "ddp": via_ddp}


def ddp_linear_reference(world: int, b: int) -> dict:
    enc, x, y = _linear_problem(world, b)
    model = _EncoderWithTemperature(enc)
    loss = model(x, y)
    loss.backward()
    return {"loss": loss, "grads": {k: p.grad for k, p in model.named_parameters()}}


# ------------------------------------------------------------------------ large logit scale (ring)


def _aligned(world: int, b: int, dtype):
    """Positives with cosine ~ 1 - 1e-6 (logit ~ 100 at scale 100: exp overflows float32) and, on every
    other rank, hard negatives with cosine ~ 1 - 3e-3, so the softmax (and the gradient) is not trivial."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(b, 16, generator=gen, dtype=dtype).repeat(world, 1)
    x = base + 0.05 * torch.randn(world * b, 16, generator=gen, dtype=dtype)
    return x, x + 1e-3 * torch.randn(world * b, 16, generator=gen, dtype=dtype)


def stability_task(rank: int, world: int, b: int, temperature: float, tile_size) -> dict:
    """float32 ring with logit scale 1/temperature and near-identical positives (cos ~ 1)."""
    from core.losses import info_nce

    x, y = _aligned(world, b, torch.float32)
    rows = slice(rank * b, (rank + 1) * b)
    q, k = x[rows].clone().requires_grad_(), y[rows].clone().requires_grad_()
    loss = info_nce(q, k, temperature=temperature, gather="ring", tile_size=tile_size, symmetric=True)
    loss.backward()
    return {"loss": loss, "q": q.grad, "k": k.grad}


def stability_reference(world: int, b: int, temperature: float) -> dict:
    """The same in float64, one process; rank-r loss and grads of sum_r l_r (see loss_reference)."""
    from core.losses import info_nce

    x, y = _aligned(world, b, torch.float32)
    q, k = x.double().requires_grad_(), y.double().requires_grad_()
    per = info_nce(q, k, temperature=temperature, symmetric=True, reduction="none")
    losses = [per[r * b: (r + 1) * b].mean() for r in range(world)]
    gq, gk = torch.autograd.grad(sum(losses), (q, k))
    return {"losses": torch.stack(losses), "q": gq, "k": gk}


# ------------------------------------------------------------------------------- Lightning DDP


LIGHTNING_STEPS, LIGHTNING_B, LIGHTNING_LR = 3, 4, 0.5


def _lightning_data(world: int):
    gen = torch.Generator().manual_seed(7)
    n = LIGHTNING_STEPS * world * LIGHTNING_B
    x = torch.randn(n, 5, generator=gen, dtype=DTYPE)
    y = x + 0.5 * torch.randn(n, 5, generator=gen, dtype=DTYPE)
    return x.view(LIGHTNING_STEPS, world * LIGHTNING_B, 5), y.view(LIGHTNING_STEPS, world * LIGHTNING_B, 5)


def _fresh_model() -> _EncoderWithTemperature:
    enc, _, _ = _linear_problem(1, 1, seed=11)
    return _EncoderWithTemperature(enc)


def lightning_task(rank: int, world: int, gather) -> dict:
    """A few SGD steps under Lightning's DDP strategy (processes launched externally, as torchrun does)."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _fresh_model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.net(x, y, gather=gather)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LIGHTNING_LR)

    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", RANK=str(rank), WORLD_SIZE=str(world))
    xs, ys = _lightning_data(world)
    rows = slice(rank * LIGHTNING_B, (rank + 1) * LIGHTNING_B)
    shards = [(xs[s, rows], ys[s, rows]) for s in range(LIGHTNING_STEPS)]
    loader = torch.utils.data.DataLoader(shards, batch_size=None, shuffle=False)
    module = Module()
    trainer = L.Trainer(
        accelerator="cpu", devices=world, num_nodes=1, strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=LIGHTNING_STEPS, max_epochs=1, precision="64-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)
    for key in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE"):
        os.environ.pop(key, None)
    return {k: v for k, v in module.net.state_dict().items()}


def lightning_reference(world: int) -> dict:
    """The same steps in one process on the concatenated global batch (plain loop, same SGD)."""
    model = _fresh_model()
    opt = torch.optim.SGD(model.parameters(), lr=LIGHTNING_LR)
    xs, ys = _lightning_data(world)
    for s in range(LIGHTNING_STEPS):
        opt.zero_grad()
        model(xs[s], ys[s]).backward()
        opt.step()
    return dict(model.state_dict())


def as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else torch.as_tensor(x)


def late_error_task(rank: int, world: int, gather) -> dict:
    """SupCon with one view: rank 1 holds a label no other sample has, which only shows once the candidates
    are gathered (an anchor with no positive). Rank 1 raises that; every other rank must raise too rather
    than go on into backward's collectives; then the group must still work."""
    from core.losses import info_nce, sup_con

    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(4, 3, generator=gen, dtype=DTYPE)
    labels = torch.tensor([0, 1, 0, 99 if rank == 1 else 1])
    try:
        loss = sup_con(x[:, None], labels, gather=gather)
        loss.backward() if loss.requires_grad else None
        error = None
    except ValueError as e:
        error = f"{type(e).__name__}: {e}"
    ok = info_nce(torch.randn(4, 3, generator=gen, dtype=DTYPE), torch.randn(4, 3, generator=gen, dtype=DTYPE),
                  gather=gather)
    return {"error": error, "after": float(ok)}


def bad_input_task(rank: int, world: int, loss: str, gather, bad_rank: int) -> dict:
    """Call a loss with ``gather`` where only ``bad_rank``'s input is invalid (a NaN); every rank must
    raise (instead of the valid ranks waiting in a collective), then the group must still work."""
    from core.losses import info_nce, sup_con

    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(4, 3, generator=gen, dtype=DTYPE), torch.randn(4, 3, generator=gen, dtype=DTYPE)
    if rank == bad_rank:
        x[1, 2] = float("nan")
    try:
        if loss == "info_nce":
            info_nce(x, y, gather=gather)
        else:
            sup_con(torch.stack([x, y], 1), torch.tensor([0, 1, 0, 1]), gather=gather)
        error = None
    except ValueError as e:
        error = str(e)
    # the process group is still usable afterwards: a valid call completes on every rank
    ok = info_nce(torch.randn(4, 3, generator=gen, dtype=DTYPE), torch.randn(4, 3, generator=gen, dtype=DTYPE),
                  gather=gather)
    return {"error": error, "after": float(ok)}


# ------------------------------------------------------- newer objectives: per-anchor temperature and others


def _with_tau(make):
    """Inputs plus one positive temperature factor per sample (split among the ranks like the samples);
    the loss gets ``t * tau``, so the scalar ``t`` and every per-sample entry both carry gradients."""

    def inner(n, dim, gen, dtype):
        out = make(n, dim, gen, dtype)
        out["tau"] = 0.5 + torch.rand(n, generator=gen, dtype=dtype)
        return out

    return inner


def _with_views(n, rows, m):
    return torch.cat([rows + v * n for v in range(m)])


ADAPTERS.update({
    "info_nce_tau": LossAdapter(
        _with_tau(_two_views), lambda d, t, **kw: _losses().info_nce(d["x"], d["y"], temperature=t * d["tau"], **kw),
        diff=("x", "y", "tau"), function="info_nce",
    ),
    "nt_xent_tau": LossAdapter(
        _with_tau(_two_views), lambda d, t, **kw: _losses().nt_xent(d["x"], d["y"], temperature=t * d["tau"], **kw),
        _two_view_rows, diff=("x", "y", "tau"), function="nt_xent",
    ),
    "sup_con_tau": LossAdapter(
        _with_tau(_labelled),
        lambda d, t, **kw: _losses().sup_con(_stack(d), d["labels"], temperature=t * d["tau"], **kw),
        _two_view_rows, diff=("x", "y", "tau"), function="sup_con",
    ),
    "debiased": LossAdapter(
        _two_views, lambda d, t, **kw: _losses().debiased_info_nce(d["x"], d["y"], temperature=t, **kw),
        function="debiased_info_nce",
    ),
    "debiased_2n": LossAdapter(
        _two_views,
        lambda d, t, **kw: _losses().debiased_info_nce(d["x"], d["y"], temperature=t, two_n=True, **kw),
        _two_view_rows, function="debiased_info_nce",
    ),
    "auc": LossAdapter(
        _two_views, lambda d, t, **kw: _losses().auc_contrastive(d["x"], d["y"], temperature=t, **kw),
        function="auc_contrastive",
    ),
    "circle": LossAdapter(
        _labelled, lambda d, t, **kw: _losses().circle_loss(d["x"], d["y"], d["labels"], gamma=8.0 / t, **kw),
        function="circle_loss",
    ),
    # CACR has no temperature: the loss is scaled by t so the harness's temperature gradient is its value
    "cacr": LossAdapter(
        _two_views, lambda d, t, **kw: t * _losses().cacr(d["x"], d["y"], t_pos=1.5, t_neg=2.0, **kw),
        function="cacr",
    ),
    "cacr_labels": LossAdapter(
        _labelled, lambda d, t, **kw: t * _losses().cacr(d["x"], d["y"], d["labels"], t_pos=1.5, t_neg=2.0, **kw),
        function="cacr",
    ),
    "mv_dhel": LossAdapter(
        _three_views,
        lambda d, t, **kw: _losses().multi_view_dhel(_stack(d, ("x", "y", "z")), temperature=t, **kw),
        diff=("x", "y", "z"), function="multi_view_dhel",
    ),
    "poly_view": LossAdapter(
        _three_views,
        lambda d, t, **kw: _losses().poly_view_info_nce(_stack(d, ("x", "y", "z")), temperature=t, **kw),
        lambda n, rows: _with_views(n, rows, 3), diff=("x", "y", "z"), function="poly_view_info_nce",
    ),
})


def kernel_uniformity_task(rank: int, world: int, sizes: Sequence[int], gather, tile_size) -> dict:
    """Each rank's value of kernel_uniformity(gather=...) and the gradient left on its local views."""
    from core.losses import kernel_uniformity

    views = torch.randn(sum(sizes), 2, 4, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    local = views[rank_rows(sizes, rank)].clone().requires_grad_()
    loss = kernel_uniformity(local, gamma=1.5, gather=gather, tile_size=tile_size)
    loss.backward()
    return {"loss": loss, "grad": local.grad}


def kernel_uniformity_reference(sizes: Sequence[int]) -> dict:
    """One process: the global value L (every rank's) and W * dL/dviews (what the ranks' backward leaves
    together: DDP's mean of the ranks' parameter gradients is then dL)."""
    from core.losses import kernel_uniformity

    views = torch.randn(sum(sizes), 2, 4, generator=torch.Generator().manual_seed(5), dtype=DTYPE).requires_grad_()
    loss = kernel_uniformity(views, gamma=1.5)
    (grad,) = torch.autograd.grad(loss, views)
    return {"loss": loss.detach(), "grad": len(sizes) * grad}


def alignment_temperature_task(rank: int, world: int, sizes: Sequence[int], gather) -> dict:
    """Each rank's MACL temperature from its own rows of one global batch."""
    from core.losses import alignment_temperature

    g = torch.Generator().manual_seed(9)
    q, k = torch.randn(sum(sizes), 5, generator=g, dtype=DTYPE), torch.randn(sum(sizes), 5, generator=g, dtype=DTYPE)
    rows = rank_rows(sizes, rank)
    return {"tau": alignment_temperature(q[rows], k[rows], tau0=0.2, alpha=0.5, a0=0.1, gather=gather)}


def alignment_temperature_reference(sizes: Sequence[int]) -> list[float]:
    """The global batch's temperature, then each rank's from its own rows only."""
    g = torch.Generator().manual_seed(9)
    q, k = torch.randn(sum(sizes), 5, generator=g, dtype=DTYPE), torch.randn(sum(sizes), 5, generator=g, dtype=DTYPE)

    def tau(rows):
        a = sum(float(q[i] @ k[i]) / math.sqrt(float(q[i] @ q[i]) * float(k[i] @ k[i])) for i in rows) / len(rows)
        return 0.2 * (1 + 0.5 * (a - 0.1))

    return [tau(range(sum(sizes)))] + [tau(rank_rows(sizes, r).tolist()) for r in range(len(sizes))]
