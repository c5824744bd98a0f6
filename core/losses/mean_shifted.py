r"""Mean-shifted contrastive loss (MSC) for one-class anomaly detection.

Features are L2-normalised, :math:`\phi(x) = f(x)/\lVert f(x)\rVert`, and shifted by the centre
:math:`c` of the normal training set (computed once with the pretrained model and kept fixed); the
mean-shifted view is re-normalised:

.. math::
    \theta(x) = \frac{\phi(x) - c}{\lVert \phi(x) - c \rVert}.

MSC is NT-Xent over the 2B mean-shifted views (each view's positive is the other view of its image; the
denominator holds the 2B - 1 other views, the positive included, the view itself excluded):

.. math::
    \ell^{msc}_a = -\log \frac{e^{\theta_a \cdot \theta_{p(a)}/\tau}}{\sum_{k \ne a} e^{\theta_a \cdot \theta_k/\tau}} .

Optional angular centre term (``angular_weight`` = :math:`\lambda`), in the form of the authors'
public code, which adds the squared distance of each (unshifted) normalised view to the centre, averaged
over the batch, for both views:

.. math::
    L = \frac{1}{2B}\sum_a \ell^{msc}_a
        + \lambda \Big(\frac{1}{B}\sum_i \lVert\phi(x_i) - c\rVert^2
        + \frac{1}{B}\sum_i \lVert\phi(x'_i) - c\rVert^2\Big),

i.e. per view :math:`a` the loss is :math:`\ell^{msc}_a + 2\lambda\lVert\phi_a - c\rVert^2` (what
``reduction="none"`` returns). For a unit-norm centre (the code normalises :math:`c` when the angular
term is on) :math:`\lVert\phi - c\rVert^2 = 2 - 2\,\phi\cdot c`, the paper's angular loss
:math:`-\phi\cdot c` up to a factor 2 and a constant. ``angular_weight=1`` reproduces the code's
``--angular`` run; the default 0 is MSC alone.

Reference:
    Reiss & Hoshen, "Mean-Shifted Contrastive Loss for Anomaly Detection", AAAI 2023 (arXiv:2106.03844).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.losses._checks import check_pair, check_reduction, check_temperature, full_validation, normalize_rows, reduce
from core.losses.nt_xent import nt_xent
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["mean_shifted", "MeanShifted"]


@agree_on_input_errors
def mean_shifted(
    z1: Tensor,
    z2: Tensor,
    center: Tensor,
    *,
    temperature: float | Tensor = 0.25,
    angular_weight: float = 0.0,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """MSC loss (Reiss & Hoshen 2023) of two views ``z1``, ``z2`` (B, D) around ``center`` (D,): NT-Xent over
    ``theta = normalize(normalize(z) - c)`` plus ``angular_weight * (mean ||phi1 - c||^2 + mean ||phi2 - c||^2)``.

    Args:
        z1, z2: unnormalised features of two augmentations of the same B images.
        center: (D,) centre of the normalised features of the normal training set (fixed; pass it
            L2-normalised when ``angular_weight > 0``, as the authors do).
        temperature: tau > 0 (the paper: 0.25).
        angular_weight: lambda >= 0 of the angular centre term (0 = off).
        reduction: ``"mean"`` over the 2B views, ``"sum"``, or ``"none"`` ((2B,), view-1 anchors first).
        tile_size, gather: execution mode of the NT-Xent part, as in :func:`core.losses.nt_xent`.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    check_pair("z1", z1, "z2", z2)
    check_temperature("temperature", temperature)
    check_reduction(reduction)
    if not isinstance(center, Tensor):
        raise ValueError(f"center must be a torch.Tensor, got {type(center).__name__}")
    if center.dim() != 1 or center.shape[0] != z1.shape[1]:
        raise ValueError(f"center must have shape ({z1.shape[1]},), got {tuple(center.shape)}")
    if full_validation() and not bool(torch.isfinite(center.detach()).all()):
        raise ValueError("center contains NaN or infinite values")
    if not math.isfinite(angular_weight) or angular_weight < 0:
        raise ValueError(f"angular_weight must be finite and >= 0, got {angular_weight}")
    phi1, phi2 = normalize_rows(z1, "z1"), normalize_rows(z2, "z2")
    c = center.to(phi1.dtype)
    theta1, theta2 = F.normalize(phi1 - c, dim=-1), F.normalize(phi2 - c, dim=-1)
    # theta is unit-norm already: "dot" avoids a second normalisation
    per_anchor = nt_xent(theta1, theta2, temperature=temperature, similarity="dot", reduction="none",
                         tile_size=tile_size, gather=gather)
    if angular_weight > 0:
        phi = torch.cat([phi1, phi2], 0)
        per_anchor = per_anchor + 2.0 * angular_weight * (phi - c).pow(2).sum(1)
    return reduce(per_anchor, reduction)


class MeanShifted(nn.Module):
    """Module form of :func:`mean_shifted`; ``forward(z1, z2, center=None)`` (``center`` defaults to the
    one given at construction, kept as a buffer)."""

    def __init__(
        self,
        center: Tensor | None = None,
        temperature: float = 0.25,
        angular_weight: float = 0.0,
        reduction: str = "mean",
        tile_size: int | str | tuple[int, int] | None = None,
        gather: bool | str | None = None,
    ) -> None:
        super().__init__()
        check_temperature("temperature", temperature)
        self.register_buffer("center", None if center is None else center.detach().clone())
        self.temperature, self.angular_weight = temperature, angular_weight
        self.reduction, self.tile_size, self.gather = reduction, tile_size, gather

    def forward(self, z1: Tensor, z2: Tensor, center: Tensor | None = None) -> Tensor:
        c = center if center is not None else self.center
        if c is None:
            raise ValueError("no center: pass one to MeanShifted(...) or to forward()")
        return mean_shifted(z1, z2, c, temperature=self.temperature, angular_weight=self.angular_weight,
                            reduction=self.reduction, tile_size=self.tile_size, gather=self.gather)
