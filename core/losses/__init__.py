"""Contrastive losses on one engine (see :mod:`core.losses.engine`).

Every loss takes unnormalised embeddings, returns the mean over anchors unless ``reduction`` says
otherwise, and (for the InfoNCE family) accepts ``tile_size=`` and ``gather=`` to pick the execution
mode of :mod:`core.negatives`.
"""

from core.losses.info_nce import InfoNCE, info_nce
from core.losses.nt_xent import NTXent, nt_xent

__all__ = ["info_nce", "InfoNCE", "nt_xent", "NTXent"]
