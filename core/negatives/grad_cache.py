r"""Gradient caching: contrastive batches larger than the encoder's activation memory.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP 2021
(arXiv 2101.06983). The loss :math:`L(r_1, \dots, r_B)` couples every sample, but its parameter gradient
factorises through the representations :math:`r_b = f_\theta(x_b)`:

.. math::
    \frac{\partial L}{\partial \theta} = \sum_b \frac{\partial L}{\partial r_b}\,
        \frac{\partial r_b}{\partial \theta}
    = \sum_{\text{chunks } c} \frac{\partial}{\partial \theta}
        \Big\langle f_\theta(x_c),\ \underbrace{\tfrac{\partial L}{\partial r_c}}_{\text{cached}} \Big\rangle

so the batch is processed in three passes:

1. encode every chunk under ``no_grad`` (no activations kept), saving the RNG state before each chunk;
2. compute the loss on the detached representations (``requires_grad=True``) and its gradient ``G`` with
   respect to them (the *gradient cache*; the loss graph is freed right after);
3. re-encode each chunk with a graph under its saved RNG state and back-propagate the surrogate
   ``sum(f(x_c) * G_c)``; parameter gradients accumulate over chunks.

Memory: one chunk's activations + the representations and their gradients + the loss graph (use a tiled loss,
``tile_size=``, to bound the latter too). Cost: one extra encoder forward.

**Dropout / randomness.** Step 3 replays the CPU RNG state (and every CUDA device's state when CUDA is
initialised) captured before each chunk in step 1, so dropout masks are identical in both passes; the global RNG
stream is left where step 1 + the loss left it. Python's ``random`` and NumPy are not replayed: encoders must not
draw from them.

**Batch norm** in train mode normalises each *chunk* with its own statistics ("ghost" batch norm, ghost batch =
chunk), so the result equals a full-batch forward only when statistics do not depend on the batch composition.
Options:

* eval-mode / frozen batch norm (or LayerNorm / GroupNorm): gradients equal full-batch back-propagation exactly;
* accept ghost batch norm: gradients equal those of the full batch pushed through the encoder chunk by chunk
  (each chunk normalised on its own), which is what :func:`grad_cache_step` computes exactly.

The running statistics are updated once per chunk (in step 1); step 3's re-encoding would update them a second
time, so by default (``restore_buffers=True``) every buffer is restored after step 3.

**Distributed.** A ``DistributedDataParallel``-wrapped encoder back-propagates all but its last chunk inside
``no_sync()``, so gradients are all-reduced once per step. The loss decides the normalisation (use a loss that
gathers candidates with gradient, ``gather=True``, and returns the mean over local anchors: DDP's mean of the
per-rank gradients is then the global gradient).

**Lightning.** With manual optimisation pass ``backward_fn=self.manual_backward``::

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.encoder = ...

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            loss = grad_cache_step(self.encoder, batch, lambda a, b: nt_xent(a, b), chunk_size=256,
                                   backward_fn=self.manual_backward)
            opt.step()
            self.log("loss", loss)

Under Lightning's DDP strategy the encoder is not itself DDP-wrapped (the whole module is), so pass the
wrapper's context, ``no_sync=self.trainer.strategy.model.no_sync``: every ``manual_backward`` but the last then
skips the all-reduce (Lightning prepares the DDP reducer inside ``manual_backward`` unless ``no_sync`` is active).

Every parameter gradient, including the loss's own parameters (a learnable temperature found in the loss graph),
reaches ``backward_fn`` through the surrogates, each exactly once, so a gradient scaler applied by ``backward_fn``
scales all of them consistently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GradCache", "RngState", "grad_cache_step"]


class RngState:
    """The CPU RNG state (and all CUDA devices' states when CUDA is initialised) at construction time."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        cuda_on = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda = torch.cuda.get_rng_state_all() if cuda_on else None

    def _set(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body from this state, then put the RNG back where it was before entering."""
        current = RngState()
        self._set()
        try:
            yield
        finally:
            current._set()


def _split(x: Any, chunk_size: int) -> list[Any]:
    """Split a tensor, or a dict / list / tuple of tensors, along the batch dimension."""
    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise ValueError("cannot split a 0-d tensor into chunks")
        return list(x.split(chunk_size, 0))
    if isinstance(x, Mapping):
        parts = {k: _split(v, chunk_size) for k, v in x.items()}
        counts = {len(p) for p in parts.values()}
        if len(counts) != 1:
            raise ValueError("all tensors of one input must have the same batch size")
        return [{k: p[i] for k, p in parts.items()} for i in range(counts.pop())]
    if isinstance(x, (list, tuple)):
        parts_l = [_split(v, chunk_size) for v in x]
        counts = {len(p) for p in parts_l}
        if len(counts) != 1:
            raise ValueError("all tensors of one input must have the same batch size")
        return [type(x)(p[i] for p in parts_l) for i in range(counts.pop())]
    raise TypeError(f"cannot split an input of type {type(x).__name__}; use a tensor, dict, list or tuple")


def _call(encoder: nn.Module, chunk: Any) -> Any:
    if isinstance(chunk, Mapping):
        return encoder(**chunk)
    if isinstance(chunk, tuple):
        return encoder(*chunk)
    return encoder(chunk)


def _default_rep(out: Any) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"the encoder returned {type(out).__name__}; pass get_rep= to pick the representation")
    return out


def _loss_leaves(loss: Tensor, exclude: Sequence[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad reached by ``loss``'s graph (the loss's own parameters), except ``exclude``."""
    skip = {id(t) for t in exclude}
    leaves: list[Tensor] = []
    seen_leaf: set[int] = set()
    seen: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)  # AccumulateGrad node of a leaf
        if var is not None:
            if id(var) not in skip and id(var) not in seen_leaf:
                seen_leaf.add(id(var))
                leaves.append(var)
            continue
        stack.extend(fn for fn, _ in node.next_functions)
    return leaves


def grad_cache_step(
    encoders: nn.Module | Sequence[nn.Module],
    inputs: Sequence[Any],
    loss_fn: Callable[..., Tensor],
    *,
    chunk_size: int | Sequence[int],
    backward_fn: Callable[[Tensor], Any] | None = None,
    no_sync: bool | Callable[[], contextlib.AbstractContextManager] = True,
    replay_rng: bool = True,
    restore_buffers: bool = True,
    get_rep: Callable[[Any], Tensor] | None = None,
) -> Tensor:
    """One gradient-cached forward/backward; gradients are left in ``.grad``; returns the detached loss.

    Args:
        encoders: one module shared by every input (e.g. two augmented views), or one module per input
            (e.g. a query tower and a document tower).
        inputs: one batch per representation passed to ``loss_fn``: a tensor, or a dict (called as
            ``encoder(**chunk)``), tuple (``encoder(*chunk)``) or list of tensors sharing the batch dimension.
        loss_fn: ``loss_fn(*reps) -> scalar``, e.g. ``lambda q, k: info_nce(q, k, temperature=0.07)``.
        chunk_size: samples per encoder call (one for all inputs, or one per input).
        backward_fn: how to back-propagate a scalar (default ``Tensor.backward``); pass
            ``LightningModule.manual_backward`` under Lightning manual optimisation.
        no_sync: ``True``: DDP-wrapped encoders run all but their last chunk in ``encoder.no_sync()``;
            ``False``: never; a callable returning a context manager: entered for every chunk but the very
            last (e.g. Lightning's ``self.trainer.strategy.model.no_sync``).
        replay_rng: replay each chunk's RNG state in the second pass (needed for dropout; ``False`` only to
            demonstrate the mismatch).
        restore_buffers: restore the encoders' buffers after the second pass (batch-norm running statistics are
            then updated once per chunk, not twice).
        get_rep: maps an encoder output to the (chunk, D) representation (default: the output itself).
    """
    inputs = list(inputs)
    if not inputs:
        raise ValueError("grad_cache_step needs at least one input")
    if isinstance(encoders, nn.Module):
        enc_list = [encoders] * len(inputs)
    else:
        enc_list = list(encoders)
        if len(enc_list) != len(inputs):
            raise ValueError(f"got {len(enc_list)} encoders for {len(inputs)} inputs; pass one module to share it")
    sizes = [chunk_size] * len(inputs) if isinstance(chunk_size, int) else list(chunk_size)
    if len(sizes) != len(inputs) or any(int(s) < 1 for s in sizes):
        raise ValueError(f"chunk_size must be a positive int or one per input, got {chunk_size!r}")
    backward = backward_fn if backward_fn is not None else (lambda t: t.backward())
    rep_of = get_rep if get_rep is not None else _default_rep

    # Pass 1: representations without a graph; one RNG snapshot per chunk.
    jobs: list[tuple[int, nn.Module, Any, RngState | None]] = []
    for i, (enc, x) in enumerate(zip(enc_list, inputs)):
        for chunk in _split(x, int(sizes[i])):
            jobs.append((i, enc, chunk, None))
    chunk_reps: list[list[Tensor]] = [[] for _ in inputs]
    with torch.no_grad():
        for j, (i, enc, chunk, _) in enumerate(jobs):
            state = RngState() if replay_rng else None
            jobs[j] = (i, enc, chunk, state)
            chunk_reps[i].append(rep_of(_call(enc, chunk)).detach())
    reps = [torch.cat(rs, 0).requires_grad_(True) for rs in chunk_reps]

    unique = list({id(e): e for e in enc_list}.values())
    saved = [(b, b.detach().clone()) for e in unique for b in e.buffers()] if restore_buffers else []

    # Pass 2: the loss and the gradient cache dL/dr (plus the gradient of the loss's own parameters).
    with torch.enable_grad():
        loss = loss_fn(*reps)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on the representations")
    params = _loss_leaves(loss, reps)
    grads = torch.autograd.grad(loss, [*reps, *params], allow_unused=True)
    cache = [torch.zeros_like(r) if g is None else g for r, g in zip(reps, grads[: len(reps)])]
    param_grads = [(p, g) for p, g in zip(params, grads[len(reps):]) if g is not None]
    loss = loss.detach()
    del reps, grads
    cache_chunks = [list(g.split(int(sizes[i]), 0)) for i, g in enumerate(cache)]

    # Pass 3: re-encode with a graph under the saved RNG state; back-propagate <f(x_c), G_c>.
    last_of = {id(enc): j for j, (_, enc, _, _) in enumerate(jobs)}
    seen_chunks = [0] * len(inputs)
    for j, (i, enc, chunk, state) in enumerate(jobs):
        g = cache_chunks[i][seen_chunks[i]]
        seen_chunks[i] += 1
        last = j == len(jobs) - 1
        if no_sync is True:
            wrapped = isinstance(enc, nn.parallel.DistributedDataParallel)
            sync_ctx = enc.no_sync() if wrapped and j != last_of[id(enc)] else contextlib.nullcontext()
        elif no_sync is False or last:
            sync_ctx = contextlib.nullcontext()
        else:
            sync_ctx = no_sync()
        with sync_ctx:
            with state.replay() if state is not None else contextlib.nullcontext():
                r = rep_of(_call(enc, chunk))
            if r.shape != g.shape:
                raise RuntimeError(f"re-encoded chunk has shape {tuple(r.shape)}, first pass gave {tuple(g.shape)}")
            surrogate = (r * g.to(r.dtype)).sum()
            if last:
                # The loss's own parameters get their gradient through the same backward_fn, exactly once.
                for p, gp in param_grads:
                    surrogate = surrogate + (p * gp).sum()
            backward(surrogate)

    with torch.no_grad():
        for b, value in saved:
            b.copy_(value)
    return loss


class GradCache:
    """Configured :func:`grad_cache_step`: ``GradCache(encoders, loss_fn, chunk_size).step(*inputs)``."""

    def __init__(
        self,
        encoders: nn.Module | Sequence[nn.Module],
        loss_fn: Callable[..., Tensor],
        chunk_size: int | Sequence[int],
        *,
        backward_fn: Callable[[Tensor], Any] | None = None,
        no_sync: bool | Callable[[], contextlib.AbstractContextManager] = True,
        replay_rng: bool = True,
        restore_buffers: bool = True,
        get_rep: Callable[[Any], Tensor] | None = None,
    ) -> None:
        self.encoders, self.loss_fn, self.chunk_size = encoders, loss_fn, chunk_size
        self.backward_fn, self.no_sync, self.replay_rng = backward_fn, no_sync, replay_rng
        self.restore_buffers, self.get_rep = restore_buffers, get_rep

    def step(self, *inputs: Any) -> Tensor:
        """Gradient-cached step over ``inputs``; returns the detached loss (gradients are in ``.grad``)."""
        return grad_cache_step(
            self.encoders, inputs, self.loss_fn, chunk_size=self.chunk_size, backward_fn=self.backward_fn,
            no_sync=self.no_sync, replay_rng=self.replay_rng, restore_buffers=self.restore_buffers,
            get_rep=self.get_rep,
        )

    __call__ = step
