"""Contrastive losses on one engine (see :mod:`core.losses.engine`).

Every loss takes unnormalised embeddings, returns the mean over anchors unless ``reduction`` says
otherwise, and (for the InfoNCE family) accepts ``tile_size=`` and ``gather=`` to pick the execution
mode of :mod:`core.negatives`.

Losses (all also as ``nn.Module`` classes; every one but ``sup_re_mix`` runs dense, tiled and distributed):

* :func:`info_nce` -- InfoNCE / CLIP with decoupled (DCL) and margin (NT-Xent-AM / AAM) variants;
* :func:`nt_xent` -- SimCLR's 2N formulation;
* :func:`sup_con` -- supervised contrastive (Khosla et al. 2020), "out" and "in";
* :func:`sig_lip` -- pairwise sigmoid loss (Zhai et al. 2023);
* :func:`cwcl` -- continuously weighted contrastive loss (Srinivasa et al. 2023);
* :func:`multi_view_info_nce` -- MV-InfoNCE, one term per sample over V views (Koromilas et al. 2025);
* :func:`mean_shifted` -- mean-shifted contrastive loss with the angular centre term (Reiss & Hoshen 2023);
* :func:`con_r` -- ConR for continuous labels of any dimension (Keramati et al. 2024);
* :func:`cpc` -- CPC's InfoNCE summed over K prediction steps (van den Oord et al. 2018);
* :func:`sup_re_mix` -- SupReMix with mixture hard negatives / positives ("Mixup Your Own Pairs"), anchor
  blocks recomputed in backward (no ``tile_size`` / ``gather``).
"""

from core.losses.con_r import ConR, con_r
from core.losses.cpc import CPC, cpc
from core.losses.cwcl import CWCL, cwcl
from core.losses.info_nce import InfoNCE, info_nce
from core.losses.mean_shifted import MeanShifted, mean_shifted
from core.losses.multi_view import MultiViewInfoNCE, multi_view_info_nce
from core.losses.nt_xent import NTXent, nt_xent
from core.losses.sig_lip import SigLIP, sig_lip
from core.losses.sup_con import SupCon, sup_con
from core.losses.sup_re_mix import SupReMix, sup_re_mix

__all__ = [
    "info_nce", "InfoNCE",
    "nt_xent", "NTXent",
    "sup_con", "SupCon",
    "sig_lip", "SigLIP",
    "cwcl", "CWCL",
    "multi_view_info_nce", "MultiViewInfoNCE",
    "mean_shifted", "MeanShifted",
    "con_r", "ConR",
    "sup_re_mix", "SupReMix",
    "cpc", "CPC",
]
