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
  blocks recomputed in backward (no ``tile_size`` / ``gather``);
* :func:`debiased_info_nce` -- debiased (Chuang et al. 2020) and hard-negative (Robinson et al. 2021) InfoNCE;
* :func:`auc_contrastive` -- the Mann-Whitney / AUC pairwise logistic loss;
* :func:`kernel_uniformity` -- kernel (decoupled) uniformity of view centroids (Dufumier et al. 2023);
* :func:`align_uniform` -- alignment + uniformity as a training loss (Wang & Isola 2020; dense only);
* :func:`poly_view_info_nce` -- Poly-View contrastive loss, arithmetic / geometric (Shidani et al. 2024);
* :func:`circle_loss` -- circle loss with index or label positives (Sun et al. 2020);
* :func:`multi_view_dhel` -- MV-DHEL, alignment decoupled from per-view energy (Koromilas et al. 2025);
* :func:`cacr` -- contrastive attraction and contrastive repulsion, distance-weighted (Zheng et al. 2021);
* :func:`info_nce_with_mixing` / :func:`info_nce_with_synthetic` -- MoCHi hard-negative mixing (Kalantidis et al.
  2020; the loss in :mod:`core.losses.mixing`, the mining in :mod:`core.negatives.mixing`).

``info_nce``, ``nt_xent`` and ``sup_con`` (and ``debiased_info_nce``, ``auc_contrastive``) accept a per-anchor
temperature tensor; :class:`TemperatureNet` (TempNet) and :class:`PerSampleTemperature` (iSogCLR) produce one,
:func:`alignment_temperature` (MACL) one per step from the batch's alignment.
``info_nce(top_k=K)`` keeps the K hardest negatives; ``sup_con(class_prior=pi)`` adds ``-log pi_y`` per column.

float16 / bfloat16 inputs are computed in float32 and the loss is returned in float32 (see
:mod:`core.losses._checks`). :func:`validation` ``("full" | "shapes")`` switches the host-synchronising value
checks and the cross-rank error agreement on or off (see :mod:`core.negatives.validation`).
"""

from core.losses.auc import AUCContrastive, auc_contrastive
from core.losses.cacr import CACR, cacr
from core.losses.circle import CircleLoss, circle_loss
from core.losses.con_r import ConR, con_r
from core.losses.cpc import CPC, cpc
from core.losses.cwcl import CWCL, cwcl
from core.losses.debiased import DebiasedInfoNCE, debiased_info_nce
from core.losses.info_nce import InfoNCE, info_nce
from core.losses.mean_shifted import MeanShifted, mean_shifted
from core.losses.mixing import info_nce_with_mixing, info_nce_with_synthetic
from core.losses.multi_view import MultiViewInfoNCE, multi_view_info_nce
from core.losses.mv_dhel import MultiViewDHEL, multi_view_dhel
from core.losses.nt_xent import NTXent, nt_xent
from core.losses.poly_view import PolyViewInfoNCE, poly_view_info_nce
from core.losses.sig_lip import SigLIP, sig_lip
from core.losses.sup_con import SupCon, sup_con
from core.losses.sup_re_mix import SupReMix, sup_re_mix
from core.losses.temperature import PerSampleTemperature, TemperatureNet, alignment_temperature
from core.losses.uniformity import AlignUniform, KernelUniformity, align_uniform, kernel_uniformity
from core.negatives.validation import validation, validation_mode

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
    "debiased_info_nce", "DebiasedInfoNCE",
    "auc_contrastive", "AUCContrastive",
    "kernel_uniformity", "KernelUniformity",
    "align_uniform", "AlignUniform",
    "poly_view_info_nce", "PolyViewInfoNCE",
    "circle_loss", "CircleLoss",
    "multi_view_dhel", "MultiViewDHEL",
    "cacr", "CACR",
    "TemperatureNet", "PerSampleTemperature", "alignment_temperature",
    "info_nce_with_mixing", "info_nce_with_synthetic",
    "validation", "validation_mode",
]
