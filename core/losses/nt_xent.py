r"""NT-Xent: SimCLR's 2N formulation (the "symmetric contrastive loss" of Lepage & Dehak).

With :math:`z = [z^{(1)}; z^{(2)}]` (2N views, L2-normalised), every view :math:`a` is an anchor, its
other view :math:`p(a)` the positive and the remaining 2N - 2 views the negatives:

.. math::
    \ell_a = -\log \frac{e^{\phi(s_{a,p(a)})/\tau}}{e^{\phi(s_{a,p(a)})/\tau}\,[\text{not decoupled}]
        + \sum_{k \notin \{a, p(a)\}} e^{s_{ak}/\tau}}, \qquad L = \frac{1}{2N}\sum_a \ell_a

with the positive-only margin :math:`\phi` of :func:`core.losses.info_nce`. A per-anchor temperature
replaces :math:`\tau` by :math:`\tau_a` in row a: ``temperature`` of shape (N,) (one per sample, shared by
its two views) or (2N,) (one per view, ``z1``'s first).

References:
    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
    Yeh et al., "Decoupled Contrastive Learning", ECCV 2022.
    Lepage & Dehak, "Additive Margin in Contrastive Self-Supervised Frameworks to Learn Discriminative
    Speaker Representations", 2024.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.losses._checks import check_choice, check_pair, check_reduction, check_temperature, reduce
from core.losses._module import loss_module
from core.losses.engine import BACKENDS, ContrastSpec, prepare, run_contrast, scale_anchors
from core.losses.info_nce import check_margin
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["nt_xent", "NTXent"]


@agree_on_input_errors
def nt_xent(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float | Tensor = 0.5,
    decoupled: bool = False,
    margin: float = 0.0,
    margin_type: str = "additive",
    similarity: str = "cosine",
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
    backend: str = "torch",
) -> Tensor:
    """NT-Xent over the 2N views ``cat([z1, z2])``.

    Args:
        z1, z2: (N, D) two views of the same N samples.
        temperature: as in :func:`core.losses.info_nce`; per anchor: a tensor of shape (N,) (one per sample,
            both views) or (2N,) (one per view, ``z1``'s first).
        decoupled, margin, margin_type, similarity, tile_size, gather, backend: as in
            :func:`core.losses.info_nce`.
        reduction: ``"mean"`` over the 2N anchors, ``"sum"``, or ``"none"`` ((2N,), view-1 anchors first).
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    check_choice("backend", backend, BACKENDS)
    check_pair("z1", z1, "z2", z2)
    per_t = check_temperature("temperature", temperature, (z1.shape[0], 2 * z1.shape[0]))
    check_margin(margin, margin_type)
    if per_t and margin != 0.0:
        raise ValueError("a per-anchor temperature cannot be combined with a margin")
    check_choice("similarity", similarity, ("cosine", "dot"))
    if margin_type == "angular" and margin != 0.0 and similarity != "cosine":
        raise ValueError("an angular margin needs cosine similarity (it acts on the angle); got similarity='dot'")
    check_reduction(reduction)
    N = z1.shape[0]
    if N * mode.world < 2:
        raise ValueError("the batch has no negatives: NT-Xent needs at least 2 samples")
    z = prepare(torch.cat([z1, z2], 0), similarity, "torch.cat([z1, z2])")
    idx = torch.arange(2 * N, device=z.device)
    meta = {"pos_id": (idx + N) % (2 * N), "self_id": idx}
    spec = ContrastSpec(positive="index", exclude_self=True, decoupled=decoupled, margin=margin,
                        margin_type=margin_type)
    if per_t and temperature.shape[0] == N:
        temperature = temperature.repeat(2)
    za, scale = scale_anchors(z, temperature, per_t)
    row, _ = run_contrast(spec, za, z, scale, row_meta=meta, mode=mode,
                          backend=backend)
    return reduce(row[:, 0] - row[:, 1], reduction)


def _check_options(*, temperature, margin, margin_type, backend, **_) -> None:
    check_temperature("temperature", temperature)
    check_margin(margin, margin_type)
    check_choice("backend", backend, BACKENDS)


#: Module form of :func:`nt_xent`; ``forward(z1, z2, temperature=None)`` (a ``temperature`` given to ``forward``,
#: e.g. per sample, replaces the constructor's for that call).
NTXent = loss_module(nt_xent, "NTXent", overrides=("temperature",), check=_check_options)
