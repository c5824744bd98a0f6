r"""A MoCo-style FIFO queue of past keys, used as extra negatives.

MoCo (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020)
decouples the number of negatives from the batch size: the keys of the last ``K / B`` batches are
kept in a queue and every query is contrasted with its own key (the positive), the other keys of
the batch, and the ``K`` queued keys:

.. math::
    \ell_i = -\log \frac{e^{q_i \cdot k_i / \tau}}{\sum_j e^{q_i \cdot k_j / \tau}
        + \sum_{l=1}^{K} e^{q_i \cdot n_l / \tau}}

**Order of operations** (the MoCo order): compute the loss with the queue's *current* contents, then
enqueue the batch's keys. The current keys are therefore never among the queued negatives of the step
that produced them, so a key never acts as a negative for itself::

    q = encoder(x1)
    with torch.no_grad():
        ema_update(key_encoder, encoder, momentum)
        k = key_encoder(x2)
    loss = info_nce(q, k, negatives=queue.negatives())  # queue as it was before this batch
    queue.enqueue(k)                                     # then enqueue (after the loss)
    loss.backward()

(``negatives()`` returns a copy, so enqueueing before ``backward`` is safe.) The other published order,
XBM's enqueue-then-compute, needs self-comparison removal and is not what this class does.

Design decisions:

* **Starts empty.** Only the filled part is ever returned, so there are no random-noise negatives at the
  start of training (lightly's history shows what noise banks can do: an un-normalised random bank collapsed
  training, lightly PR #1009). While the queue is empty ``negatives()`` returns ``None`` and the loss uses
  in-batch negatives only.
* **Persistent buffers.** The keys, labels, pointer and fill count are part of ``state_dict()``, so a resumed
  checkpoint continues with the same queue instead of silently restarting with a cold (empty) one.
* **Wrap-around splits the batch.** A batch that crosses the end of the buffer is written in two parts
  (tail, then head); no key is dropped. A batch larger than the queue keeps its last ``K`` keys, exactly as
  if it had been enqueued one key at a time.
* **Distributed.** When ``torch.distributed`` is initialised (and ``gather_distributed=True``), the keys (and
  labels) of every rank are all-gathered *without gradient* in rank order before enqueueing, so every rank
  holds the same queue. Ranks may enqueue batches of different sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.negatives.distributed import all_gather_no_grad

__all__ = ["MemoryQueue"]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class MemoryQueue(nn.Module):
    """Fixed-size FIFO queue of detached keys (and optional labels).

    Args:
        size: capacity ``K`` (number of keys kept).
        dim: feature dimension ``D`` of the keys.
        with_labels: also keep one label per key (e.g. class ids for supervised negatives, or sample ids to
            recognise duplicates).
        label_dtype: dtype of the labels buffer.
        dtype: dtype of the keys buffer (moves with ``.to()`` like any buffer; incoming keys are cast to it).
        gather_distributed: gather keys from every rank before enqueueing when ``torch.distributed`` is
            initialised.

    Buffers (persistent): ``keys`` (K, D), ``labels`` (K,) if ``with_labels``, ``ptr`` (next write slot) and
    ``n_filled`` (number of valid keys, ``<= K``).
    """

    keys: Tensor
    labels: Tensor
    ptr: Tensor
    n_filled: Tensor

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        with_labels: bool = False,
        label_dtype: torch.dtype = torch.long,
        dtype: torch.dtype = torch.float32,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if int(size) < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        if int(dim) < 1:
            raise ValueError(f"queue dim must be >= 1, got {dim}")
        self.size, self.dim = int(size), int(dim)
        self.with_labels = with_labels
        self.gather_distributed = gather_distributed
        self.register_buffer("keys", torch.zeros(self.size, self.dim, dtype=dtype))
        if with_labels:
            self.register_buffer("labels", torch.zeros(self.size, dtype=label_dtype))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.n_filled)

    @property
    def is_full(self) -> bool:
        return len(self) == self.size

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, with_labels={self.with_labels}, filled={len(self)}"

    def _oldest_first(self, buf: Tensor) -> Tensor:
        n = len(self)
        if n < self.size:
            return buf[:n].clone()
        p = int(self.ptr)
        return torch.cat([buf[p:], buf[:p]], 0)

    def negatives(self) -> Tensor | None:
        """The queued keys, oldest first, as a detached copy ((n_filled, D)); ``None`` while empty.

        A copy (not a view of the buffer): the loss's autograd graph may keep it, and the buffer is modified
        in place by :meth:`enqueue` before ``backward`` runs.
        """
        if len(self) == 0:
            return None
        return self._oldest_first(self.keys).detach()

    def negative_labels(self) -> Tensor | None:
        """Labels aligned with :meth:`negatives`; ``None`` while empty."""
        if not self.with_labels:
            raise ValueError("this queue was built with with_labels=False")
        if len(self) == 0:
            return None
        return self._oldest_first(self.labels)

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue (contents are zeroed so no stale key can leak)."""
        self.keys.zero_()
        if self.with_labels:
            self.labels.zero_()
        self.ptr.zero_()
        self.n_filled.zero_()

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor | None = None) -> None:
        """Append ``keys`` (B, D) (and ``labels`` (B,)) FIFO, overwriting the oldest entries once full.

        Call it *after* computing the loss of the batch that produced ``keys`` (see the module docstring).
        Keys are detached and cast to the buffer's dtype/device; with ``torch.distributed`` initialised the
        keys of all ranks are gathered first (rank 0's first).
        """
        if not isinstance(keys, Tensor) or keys.dim() != 2:
            shape = tuple(keys.shape) if isinstance(keys, Tensor) else type(keys).__name__
            raise ValueError(f"keys must be a (B, D) tensor, got {shape}")
        if keys.shape[1] != self.dim:
            raise ValueError(f"keys have feature dimension {keys.shape[1]} but the queue stores dimension {self.dim}")
        if self.with_labels:
            if labels is None:
                raise ValueError("this queue stores labels: pass labels= with the keys")
            if labels.dim() != 1 or labels.shape[0] != keys.shape[0]:
                raise ValueError(f"labels must have shape ({keys.shape[0]},), got {tuple(labels.shape)}")
        elif labels is not None:
            raise ValueError("this queue was built with with_labels=False; pass labels only to a labelled queue")
        keys = keys.detach().to(device=self.keys.device, dtype=self.keys.dtype)
        if labels is not None:
            labels = labels.detach().to(device=self.labels.device, dtype=self.labels.dtype)
        if self.gather_distributed and _distributed():
            keys = all_gather_no_grad(keys)
            if labels is not None:
                labels = all_gather_no_grad(labels)
        n = keys.shape[0]
        if n == 0:
            return
        K = self.size
        start = int(self.ptr)
        if n >= K:
            # The first n - K keys would be overwritten within this same call: keep the last K, written so
            # that the pointer ends where sequential enqueueing would leave it.
            start = (start + n - K) % K
            keys = keys[n - K:]
            labels = labels[n - K:] if labels is not None else None
        m = keys.shape[0]
        first = min(m, K - start)  # part that fits before the end of the buffer
        self.keys[start:start + first] = keys[:first]
        self.keys[: m - first] = keys[first:]
        if labels is not None:
            self.labels[start:start + first] = labels[:first]
            self.labels[: m - first] = labels[first:]
        self.ptr.fill_((start + m) % K)
        self.n_filled.fill_(min(K, int(self.n_filled) + n))
