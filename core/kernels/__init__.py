"""Fused GPU kernels (Triton) for the InfoNCE family; see :mod:`core.kernels.contrast`.

Importing this package does not import Triton; the kernels are compiled (CUDA) or interpreted (CPU, with
``TRITON_INTERPRET=1``) on first use, and :func:`triton_unavailable_reason` says when they cannot run.
"""

from core.kernels.contrast import (
    FusedContrastBlockFn,
    check_triton,
    contrast_lse,
    fused_info_nce,
    fused_nt_xent,
    triton_unavailable_reason,
)

__all__ = ["FusedContrastBlockFn", "check_triton", "contrast_lse", "fused_info_nce", "fused_nt_xent",
           "triton_unavailable_reason"]
