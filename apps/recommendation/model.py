r"""SASRec backbone, sequence augmentations, the contrastive terms of CL4SRec / DuoRec / MCLRec, and the
Lightning module that trains all four methods with one recommendation loss.

Backbone (SASRec, Kang & McAuley, ICDM 2018, in the RecBole form used by DuoRec and MCLRec): item embedding
:math:`M \in R^{(|I|+1) \times d}` (row 0 = padding), learned positions, LayerNorm + dropout on the input, a
causal post-LN Transformer (GELU, inner size 4d), and :math:`h_t` = the hidden state at position ``t``.
Sequences are right-padded, so the causal mask alone keeps every valid position away from padding.

Recommendation loss (every method): full-softmax cross-entropy over all items,
:math:`L_{rec} = -\log \operatorname{softmax}(h_t M^\top)[s_{t+1}]`, at **every** position of the training
sequence (all-position training: one pass serves the n-1 next-item targets of a sequence that the prefix
formulation of the papers would feed as n-1 samples). The logits are :math:`H M^\top` on the valid positions
only, never a B x |I| x d tensor.

Contrastive terms on the last-position representation :math:`h` of a sequence (dot product, tau = 1):

* CL4SRec (Xie et al., ICDE 2022): two views from two different operators of {crop, mask, reorder};
  :math:`L = L_{rec} + \lambda\,\text{NT-Xent}(\tilde h_1, \tilde h_2)` (:func:`core.losses.nt_xent`).
* DuoRec (Qiu et al., WSDM 2022): an unsupervised dropout view of the sequence (a second forward pass) and a
  supervised view, another training prefix with the same next item; the loss is SupCon-style over the 2B
  views with the target item as label, so same-target rows are positives and never negatives (false-negative
  masking): :func:`supervised_dot_contrast`, i.e. :func:`core.losses.sup_con` with dot similarity.
* MCLRec (Qin et al., SIGIR 2023): learnable augmenters :math:`w_{\phi_1}, w_{\phi_2}` (64 -> 32 -> 16 -> 64,
  GELU, L2-normalised), :math:`L_{cl1} = L_{con}(\tilde h_1, \tilde h_2)`,
  :math:`L_{cl2} = L_{con}(\tilde z_1, \tilde z_2) + L_{con}(\tilde h_1, \tilde z_2) + L_{con}(\tilde h_2, \tilde z_1)`
  and the regulariser :math:`R` (:func:`mclrec_regularizer`); encoder loss
  :math:`L_0 = L_{rec} + \lambda L_{cl1} + \beta (L_{cl2} + 0.1 R)`, augmenter loss :math:`L_{cl2} + 0.1 R`,
  three optimiser steps per batch (encoder, augmenters, encoder).

``contrast_loss`` swaps the objective of the NT-Xent term of CL4SRec / MCLRec (:meth:`SeqRecModule._con`) for
another :mod:`core.losses` objective on the same views: ``debiased`` / ``hard_negative``
(:func:`core.losses.debiased_info_nce`, 2N form), ``auc`` (:func:`core.losses.auc_contrastive`, both directions)
or ``tempnet`` (NT-Xent with per-view temperatures from a :class:`core.losses.TemperatureNet`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.losses import TemperatureNet, auc_contrastive, debiased_info_nce, nt_xent, sup_con
from core.training import ContrastiveModule

__all__ = ["SASRec", "FastDropout", "Augmenter", "augment_views", "crop", "mask", "reorder", "supervised_dot_contrast",
           "mclrec_regularizer", "SeqRecModule", "METHODS", "CONTRAST_LOSSES", "last_hidden"]

METHODS = ("sasrec", "cl4srec", "duorec", "mclrec")
#: objectives of the sequence-level contrastive term (:meth:`SeqRecModule._con`); ``nt_xent`` is the papers'
CONTRAST_LOSSES = ("nt_xent", "debiased", "hard_negative", "auc", "tempnet")
#: debiased / hard-negative InfoNCE: class prior tau+ (Chuang et al. 2020) and hardness beta (Robinson et al. 2021)
DEBIASED_TAU_PLUS, HARD_NEGATIVE_BETA = 0.1, 1.0
#: TemperatureNet bounds: [TEMPNET_MIN, TEMPNET_MAX_FACTOR * tau], starting at tau
TEMPNET_MIN, TEMPNET_MAX_FACTOR = 0.05, 2.0


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask is drawn with ``torch.rand`` (~3x faster than the ``bernoulli_`` that
    ``F.dropout`` uses on the CPU, which took 40 % of a DuoRec training step there); the same distribution and
    scaling. Other devices use ``F.dropout`` (fused there)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p >= 1.0:
            return F.dropout(x, self.p, True, self.inplace)
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))


class SASRec(nn.Module):
    """Causal self-attention sequence encoder; ``forward(items (B, L)) -> hidden states (B, L, d)``."""

    def __init__(self, n_items: int, dim: int = 64, layers: int = 2, heads: int = 2, max_len: int = 50,
                 dropout: float = 0.5, inner: int | None = None) -> None:
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        layer = nn.TransformerEncoderLayer(dim, heads, inner or 4 * dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=False, layer_norm_eps=1e-12)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.drop = FastDropout(dropout)
        for block in self.blocks.layers:  # the residual and feed-forward dropouts (attention dropout stays in SDPA)
            block.dropout, block.dropout1, block.dropout2 = (FastDropout(dropout) for _ in range(3))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # RecBole / BERT initialisation: N(0, 0.02) weights, zero biases
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def forward(self, items: Tensor) -> Tensor:
        L = items.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        x = self.item_emb(items) + self.pos_emb.weight[:L]
        x = self.drop(self.norm(x))
        causal = torch.triu(torch.full((L, L), float("-inf"), device=items.device), diagonal=1)
        return self.blocks(x, mask=causal, is_causal=True)

    def forward_last(self, items: Tensor, lengths: Tensor) -> Tensor:
        """The hidden state at each row's last valid position, ``(B, d)`` == ``forward(items)[b, lengths[b] - 1]``,
        with the last block computed for those positions only (its other outputs are never read there).

        The last block's query is each row's last position and its keys / values every position of the row (the
        causal mask of that position is the row's padding mask), then the same residual, post-LN and feed-forward
        as the block: exact, and about 40 % fewer FLOPs than a full pass with two blocks. Columns past the longest
        row are cut first."""
        if lengths.numel() == 0 or int(lengths.min()) < 1 or int(lengths.max()) > items.shape[1]:
            raise ValueError(f"lengths must lie in [1, {items.shape[1]}], got {lengths.tolist()}")
        L = int(lengths.max())
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        x = self.item_emb(items[:, :L]) + self.pos_emb.weight[:L]
        x = self.drop(self.norm(x))
        *first, last = self.blocks.layers
        if first:
            causal = torch.triu(torch.full((L, L), float("-inf"), device=items.device), diagonal=1)
            for block in first:
                x = block(x, src_mask=causal, is_causal=True)
        rows = torch.arange(x.shape[0], device=x.device)
        q = x[rows, lengths - 1][:, None]  # (B, 1, d)
        padding = torch.arange(L, device=x.device)[None] >= lengths[:, None]  # keys the last query may not see
        sa = last.self_attn(q, x, x, key_padding_mask=padding, need_weights=False)[0]
        h = last.norm1(q + last.dropout1(sa))
        h = last.norm2(h + last.dropout2(last.linear2(last.dropout(last.activation(last.linear1(h))))))
        return h[:, 0]

    def item_weights(self) -> Tensor:
        """The output embedding table M (tied with the input), (|I| + 1, d)."""
        return self.item_emb.weight


def last_hidden(hidden: Tensor, lengths: Tensor) -> Tensor:
    """Hidden state at the last valid position of each right-padded sequence: (B, L, d) -> (B, d)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]


# ------------------------------------------------------------------------------------------- augmentations
# All three act on a right-padded batch (B, L) with lengths (B,), vectorised (no per-sequence Python loop), and
# return (items, lengths). Rates as in CL4SRec / MCLRec: crop keeps floor(eta L), mask zeroes floor(gamma L),
# reorder shuffles a span of floor(beta L); a sequence of length 1 is left unchanged.

def _positions(items: Tensor) -> Tensor:
    return torch.arange(items.shape[1], device=items.device).expand_as(items)


def crop(items: Tensor, lengths: Tensor, eta: float = 0.5, generator: torch.Generator | None = None
         ) -> tuple[Tensor, Tensor]:
    """Keep a random contiguous span of ``max(1, floor(eta L))`` items, moved to the front."""
    keep = torch.clamp((eta * lengths.double()).floor().long(), min=1)
    start = (torch.rand(lengths.shape, generator=generator, device=items.device) * (lengths - keep + 1)).long()
    pos = _positions(items)
    src = (start[:, None] + pos).clamp(max=items.shape[1] - 1)
    out = torch.where(pos < keep[:, None], items.gather(1, src), torch.zeros_like(items))
    return out, keep


def mask(items: Tensor, lengths: Tensor, gamma: float = 0.5, generator: torch.Generator | None = None
         ) -> tuple[Tensor, Tensor]:
    """Set ``floor(gamma L)`` random positions to the padding id 0 (no [mask] token, as in MCLRec)."""
    n_mask = (gamma * lengths.double()).floor().long()
    pos = _positions(items)
    r = torch.rand(items.shape, generator=generator, device=items.device)
    r = torch.where(pos < lengths[:, None], r, torch.full_like(r, 2.0))  # padding never chosen
    rank = r.argsort(1).argsort(1)
    return torch.where(rank < n_mask[:, None], torch.zeros_like(items), items), lengths


def reorder(items: Tensor, lengths: Tensor, beta: float = 0.8, generator: torch.Generator | None = None
            ) -> tuple[Tensor, Tensor]:
    """Shuffle a random contiguous span of ``floor(beta L)`` items (sorting random keys inside the span)."""
    span = (beta * lengths.double()).floor().long()
    start = (torch.rand(lengths.shape, generator=generator, device=items.device) * (lengths - span + 1)).long()
    pos = _positions(items)
    inside = (pos >= start[:, None]) & (pos < (start + span)[:, None])
    # inside keys lie in (start - 1/2, start + span - 1/2): they sort among themselves, outside keys stay put
    u = torch.rand(items.shape, generator=generator, device=items.device)
    key = torch.where(inside, start[:, None].double() - 0.5 + u.double() * span[:, None].double(), pos.double())
    return items.gather(1, key.argsort(1)), lengths


_OPS = (crop, mask, reorder)


def augment_views(items: Tensor, lengths: Tensor, eta: float = 0.5, gamma: float = 0.5, beta: float = 0.8,
                  generator: torch.Generator | None = None) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Two views per sequence from two *different* operators of {crop, mask, reorder} (drawn per sequence)."""
    B = items.shape[0]
    choice = torch.rand(B, 3, generator=generator, device=items.device).argsort(1)[:, :2]  # 2 distinct ops
    rates = (eta, gamma, beta)
    views = []
    for v in range(2):
        out_items, out_len = items.clone(), lengths.clone()
        for k, op in enumerate(_OPS):
            sel = choice[:, v] == k
            if sel.any():
                a, b = op(items[sel], lengths[sel], rates[k], generator=generator)
                out_items[sel], out_len[sel] = a, b
        views.append((out_items, out_len))
    return views[0], views[1]


# ------------------------------------------------------------------------------------------- contrastive terms
def supervised_dot_contrast(z1: Tensor, z2: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    r"""DuoRec's contrastive term: SupCon structure over the 2B views ``[z1; z2]`` with dot-product similarity.

    For anchor ``a`` with label :math:`y_a` (the next item), positives :math:`P(a) = \{p \ne a: y_p = y_a\}`
    (its other view and any same-target row), candidates every view but itself:

    .. math::
        \ell_a = -\frac{1}{|P(a)|}\sum_{p\in P(a)}
            \log\frac{e^{z_a\cdot z_p/\tau}}{\sum_{k\ne a} e^{z_a\cdot z_k/\tau}}

    so a same-target row is never a negative (DuoRec's false-negative masking): :func:`core.losses.sup_con`
    with dot-product similarity over the two views.
    """
    return sup_con(torch.stack([z1, z2], 1), labels, temperature=temperature, base_temperature=temperature,
                   similarity="dot")


def mclrec_regularizer(a: Tensor, b: Tensor) -> Tensor:
    r"""MCLRec's contrastive regulariser R (Eqs. 11-13), per anchor row as in the authors' code.

    Scores :math:`\sigma = [a; b][a; b]^\top` (dot product); for each of the 2B anchors, :math:`\sigma^+` its
    partner's score and :math:`\sigma^-` the 2B - 2 others (self excluded),
    :math:`o_{min} = \min(\sigma^+, \max\sigma^-)`, :math:`o_{max} = \max(\sigma^+, \max\sigma^-)`,
    :math:`R = \operatorname{mean}[\sigma^+ - o_{min}]_+ + \operatorname{mean}[o_{max} - \sigma^-]_+`.
    """
    z = torch.cat([a, b])
    n = z.shape[0]
    sim = z @ z.T
    idx = torch.arange(n, device=z.device)
    partner = (idx + n // 2) % n
    pos = sim[idx, partner]
    neg_mask = torch.ones_like(sim, dtype=torch.bool)
    neg_mask[idx, idx] = False
    neg_mask[idx, partner] = False
    neg = sim.masked_fill(~neg_mask, float("-inf"))
    max_neg = neg.max(1).values
    o_min = torch.minimum(pos, max_neg)
    o_max = torch.maximum(pos, max_neg)
    r_pos = F.relu(pos - o_min).mean()
    r_neg = (F.relu(o_max[:, None] - sim) * neg_mask).sum() / neg_mask.sum()
    return r_pos + r_neg


class Augmenter(nn.Module):
    """MCLRec's learnable model augmenter: d -> 32 -> 16 -> d with GELU after the first two layers, L2-normalised."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, 16), nn.GELU(), nn.Linear(16, dim))

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.net(h), dim=-1)


# ------------------------------------------------------------------------------------------- lightning module
class SeqRecModule(ContrastiveModule):
    """One module for SASRec, CL4SRec, DuoRec and MCLRec (``method``); the same CE loss and evaluation.

    Batches (from :class:`apps.recommendation.train.TrainBatches`): ``items`` (B, L) right-padded inputs,
    ``targets`` (B, L) next items (0 = none), ``lengths`` (B,); DuoRec adds ``same_items`` / ``same_lengths``
    (a training prefix with the same last target per row) and ``last_target`` (B,).
    Validation batches: ``items``, ``lengths``, ``target`` (B,), ``seen`` (B, L') items to exclude.
    """

    _hparams_ignore = ("encoder", "projection_head", "pop")

    def __init__(self, n_items: int, method: str = "sasrec", *, dim: int = 64, layers: int = 2, heads: int = 2,
                 max_len: int = 50, dropout: float = 0.5, lam: float = 0.1, beta: float = 0.05,
                 reg_weight: float = 0.1, tau: float = 1.0, eta: float = 0.5, gamma: float = 0.5,
                 reorder_beta: float = 0.8, lr: float = 1e-3, weight_decay: float = 0.0,
                 exclude_seen: bool = True, ks: tuple[int, ...] = (5, 10, 20), cl_positions: str = "last",
                 contrast_loss: str = "nt_xent") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if contrast_loss not in CONTRAST_LOSSES:
            raise ValueError(f"contrast_loss must be one of {CONTRAST_LOSSES}, got {contrast_loss!r}")
        if contrast_loss == "tempnet" and not TEMPNET_MIN < tau < TEMPNET_MAX_FACTOR * tau:
            raise ValueError(f"contrast_loss='tempnet' needs tau > {TEMPNET_MIN} (its lower bound), got {tau}")
        if cl_positions not in ("last", "all"):
            raise ValueError(f"cl_positions must be 'last' or 'all', got {cl_positions!r}")
        super().__init__(SASRec(n_items, dim, layers, heads, max_len, dropout), None, optimizer="adam", lr=lr,
                         weight_decay=weight_decay, scheduler="constant", log_diagnostics=False)
        self.method, self.lam, self.beta, self.reg_weight, self.tau = method, lam, beta, reg_weight, tau
        self.cl_positions, self.contrast_loss = cl_positions, contrast_loss
        # TempNet: a per-view temperature predicted from the view's state (trained with the encoder)
        self.tempnet = (TemperatureNet(dim, tau_min=TEMPNET_MIN, tau_max=TEMPNET_MAX_FACTOR * tau, init=tau)
                        if contrast_loss == "tempnet" and method in ("cl4srec", "mclrec") else None)
        self.rates = (eta, gamma, reorder_beta)
        self.exclude_seen, self.ks = exclude_seen, tuple(ks)
        if method == "mclrec":
            self.aug1, self.aug2 = Augmenter(dim), Augmenter(dim)
            self.automatic_optimization = False
        self._val: list[Tensor] = []

    # --------------------------------------------------------------------------------------------- pieces
    def rec_loss(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """Full-softmax CE at every valid position: logits (n_valid, |I| + 1) = H M^T, padding column masked.
        ``hidden`` is (B, L, d) with ``targets`` (B, L), or already the valid states (n, d) with their (n,)."""
        if hidden.dim() == 3:
            valid = targets > 0
            hidden, targets = hidden[valid], targets[valid]
        logits = hidden @ self.encoder.item_weights().T
        logits[:, 0] = float("-inf")
        return F.cross_entropy(logits, targets)

    def rec_states(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(hidden states, next items) of the batch's valid targets, one encoder pass. When every target sits at
        its row's last position (the papers' prefix samples), only those states are computed
        (:meth:`SASRec.forward_last`); otherwise the whole (B, L) pass."""
        items, targets, lengths = batch["items"], batch["targets"], batch["lengths"]
        valid = targets > 0
        rows = torch.arange(len(lengths), device=items.device)
        at_last = valid[rows, lengths - 1]
        if bool(at_last.all()) and int(valid.sum()) == len(lengths):
            return self.encoder.forward_last(items, lengths), targets[rows, lengths - 1]
        return self.encoder(items)[valid], targets[valid]

    def encode_last(self, items: Tensor, lengths: Tensor, chunks: int = 1) -> Tensor:
        """Last-position states of right-padded sequences. Columns past the longest sequence are cut first
        (a crop view is half as long as its batch); with ``chunks > 1`` the rows are encoded in ``chunks``
        groups of similar length, each cut to its own longest row (DuoRec's same-target partners have any
        length up to max_len). Causal attention and right padding make both exact."""
        if chunks > 1 and len(lengths) >= 2 * chunks:
            order = lengths.argsort()
            out = torch.empty(len(lengths), self.encoder.item_emb.embedding_dim, device=items.device,
                              dtype=self.encoder.item_emb.weight.dtype)
            for part in order.chunk(chunks):
                out = out.index_copy(0, part, self.encode_last(items[part], lengths[part]))
            return out
        return self.encoder.forward_last(items, lengths)

    def _augment(self, batch: dict) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        return augment_views(batch["items"], batch["lengths"], *self.rates)

    def _encode_views(self, views: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        (i1, l1), (i2, l2) = views
        return self.encode_last(i1, l1), self.encode_last(i2, l2)

    def _views(self, batch: dict) -> tuple[Tensor, Tensor]:
        return self._encode_views(self._augment(batch))

    def _con(self, a: Tensor, b: Tensor) -> Tensor:
        """The sequence-level contrastive term of two views (dot similarity), objective ``contrast_loss``."""
        kind = self.contrast_loss
        if kind == "nt_xent":
            return nt_xent(a, b, temperature=self.tau, similarity="dot")
        if kind in ("debiased", "hard_negative"):
            return debiased_info_nce(a, b, temperature=self.tau, tau_plus=DEBIASED_TAU_PLUS, two_n=True,
                                     beta=HARD_NEGATIVE_BETA if kind == "hard_negative" else 0.0, similarity="dot")
        if kind == "auc":  # both directions, as NT-Xent's 2N anchors
            return 0.5 * (auc_contrastive(a, b, temperature=self.tau, similarity="dot")
                          + auc_contrastive(b, a, temperature=self.tau, similarity="dot"))
        # tempnet: one temperature per anchor view of the 2N form
        return nt_xent(a, b, temperature=self.tempnet(torch.cat([a, b])), similarity="dot")

    def _mcl_terms(self, views: tuple) -> tuple[Tensor, Tensor, Tensor]:
        """(L_cl1, L_cl2, R) of MCLRec on the batch's augmented sequences ``views``."""
        h1, h2 = self._encode_views(views)
        z1, z2 = self.aug1(h1), self.aug2(h2)
        l_cl1 = self._con(h1, h2) if self.lam > 0 else h1.new_zeros(())
        l_cl2 = self._con(z1, z2) + self._con(h1, z2) + self._con(h2, z1)
        reg = mclrec_regularizer(h1, z2) + mclrec_regularizer(h2, z1) + mclrec_regularizer(z1, z2)
        return l_cl1, l_cl2, reg

    # --------------------------------------------------------------------------------------------- training
    def contrastive_step(self, batch: dict) -> dict[str, Tensor]:
        hidden, targets = self.rec_states(batch)
        loss = self.rec_loss(hidden, targets)
        out = {"rec": loss.detach()}
        if self.method == "cl4srec" and self.lam > 0:
            h1, h2 = self._views(batch)
            cl = self._con(h1, h2)
            loss = loss + self.lam * cl
            out["cl"] = cl.detach()
        elif self.method == "duorec" and self.lam > 0 and self.cl_positions == "all":
            # every training prefix at once: the causal state at position t is the prefix x_1..t's representation;
            # views = this pass and a second dropout pass, labels = the next item (same-target states in the
            # batch are positives, never negatives)
            z2, _ = self.rec_states(batch)
            cl = supervised_dot_contrast(hidden, z2, targets, self.tau)
            loss = loss + self.lam * cl
            out["cl"] = cl.detach()
        elif self.method == "duorec" and self.lam > 0:
            z1 = self.encode_last(batch["items"], batch["lengths"])  # unsupervised: another dropout mask
            z2 = self.encode_last(batch["same_items"], batch["same_lengths"], chunks=4)  # supervised: same target
            cl = supervised_dot_contrast(z1, z2, batch["last_target"], self.tau)
            loss = loss + self.lam * cl
            out["cl"] = cl.detach()
        out["loss"] = loss
        return out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        if self.method != "mclrec":
            out = self.contrastive_step(batch)
            self.log("train/rec", out["rec"], on_step=True, prog_bar=False)
            if "cl" in out:
                self.log("train/cl", out["cl"], on_step=True, prog_bar=False)
            return self._log_step("train", out)
        opt_enc, opt_aug = self.optimizers()
        aug_params = list(self.aug1.parameters()) + list(self.aug2.parameters())
        views = self._augment(batch)  # one pair of augmented sequences per batch, re-encoded at every step

        def encoder_step() -> Tensor:
            for p in aug_params:
                p.requires_grad_(False)
            l_cl1, l_cl2, reg = self._mcl_terms(views)
            rec = self.rec_loss(*self.rec_states(batch))
            loss = rec + self.lam * l_cl1 + self.beta * (l_cl2 + self.reg_weight * reg)
            opt_enc.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_enc.step()
            for p in aug_params:
                p.requires_grad_(True)
            return loss

        encoder_step()
        # augmenter step: views recomputed with the updated encoder; only phi_1, phi_2 move. The encoder's
        # gradient from this loss would be discarded (its optimiser does not step), so it is not computed.
        with torch.no_grad():
            h1, h2 = self._encode_views(views)
        z1, z2 = self.aug1(h1), self.aug2(h2)
        l_cl2 = self._con(z1, z2) + self._con(h1, z2) + self._con(h2, z1)
        reg = mclrec_regularizer(h1, z2) + mclrec_regularizer(h2, z1) + mclrec_regularizer(z1, z2)
        opt_aug.zero_grad(set_to_none=True)
        self.manual_backward(l_cl2 + self.reg_weight * reg)
        opt_aug.step()
        loss = encoder_step()
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True)
        self.log("train/aug_loss", (l_cl2 + self.reg_weight * reg).detach(), on_step=True)
        return None

    def configure_optimizers(self) -> Any:
        if self.method != "mclrec":
            return super().configure_optimizers()
        wd = self.optim_config["weight_decay"]
        enc_params = list(self.encoder.parameters())
        if self.tempnet is not None:
            enc_params += list(self.tempnet.parameters())
        enc = torch.optim.Adam(enc_params, lr=self.optim_config["lr"], weight_decay=wd)
        aug = torch.optim.Adam(list(self.aug1.parameters()) + list(self.aug2.parameters()),
                               lr=self.optim_config["lr"], weight_decay=wd)
        return [enc, aug]

    # --------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def score_all(self, items: Tensor, lengths: Tensor, seen: Tensor | None = None) -> Tensor:
        """Full-ranking scores (B, |I| + 1) of every item; padding and (optionally) ``seen`` items get -inf."""
        scores = self.encode_last(items, lengths) @ self.encoder.item_weights().T
        scores[:, 0] = float("-inf")
        if seen is not None:
            scores.scatter_(1, seen, float("-inf"))
            scores[:, 0] = float("-inf")
        return scores

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        seen = batch["seen"] if self.exclude_seen else None
        self._val.append(target_ranks(self.score_all(batch["items"], batch["lengths"], seen), batch["target"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        ranks = torch.cat(self._val)
        self._val = []
        for name, v in ranking_metrics(ranks, self.ks).items():
            # every rank validates on every user (the identical value; sync_dist keeps Lightning's DDP check quiet)
            self.log(f"val/{name}", v, prog_bar=name == "ndcg@10", sync_dist=True)


def target_ranks(scores: Tensor, target: Tensor) -> Tensor:
    """0-based rank of each target among all items: the number of items scored strictly higher (ties favour
    the target, as a stable sort would). A target masked to -inf (a seen item) gets rank |I| (a miss)."""
    t = scores.gather(1, target[:, None])
    rank = (scores > t).sum(1)
    return torch.where(torch.isfinite(t[:, 0]), rank, torch.full_like(rank, scores.shape[1]))


def ranking_metrics(ranks: Tensor | np.ndarray, ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """HR@k = P(rank < k) and NDCG@k = E[1/log2(rank + 2) if rank < k] (one relevant item per user)."""
    r = torch.as_tensor(ranks).double()
    out = {}
    for k in ks:
        out[f"hr@{k}"] = float((r < k).double().mean())
    for k in ks:
        out[f"ndcg@{k}"] = float(torch.where(r < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).mean())
    return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

