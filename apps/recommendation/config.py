"""Settings of the recommendation app: one :class:`core.app.AppSettings` dataclass (help, valid range and whether
a field changes the trained models live in each field's :func:`core.app.option`), a quick preset, YAML configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.recommendation.model import CONTRAST_LOSSES, METHODS, TEMPNET_MIN
from core.app import AppSettings, InputError, option
from core.app.settings import load_yaml as _load_yaml

__all__ = ["RecConfig", "load_yaml", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class RecConfig(AppSettings):
    """Every option of ``python -m apps.recommendation`` (the common ones come from :class:`AppSettings`)."""

    data: str = option("beauty", help="interactions: an embedded data set ('beauty' = Amazon Beauty, 'toys' = Amazon "
                                      "Toys and Games, S3-Rec preprocessing), a .txt file (S3-Rec: one line per "
                                      "user 'user item1 item2 ...'; or SASRec: one 'user item' pair per line, "
                                      "chronological) or a .csv with columns user,item,timestamp")
    methods: list[str] = option(list(METHODS), help="methods to fit / evaluate (each in <run-dir>/<method>/seed<S>)",
                                choices=METHODS, model=False)
    max_users: int | None = option(None, help="keep a random sample of this many users (quick mode) with every item "
                                              "they touched: the ranking is over all of those items", low=2)
    sample_seed: int = option(0, help="seed of the --max-users sample (the same users for every --seed)", low=0)
    max_items: int | None = option(None, help="then keep only this many most frequent items (users left with < 3 "
                                              "interactions are dropped; not the papers' full ranking)", low=2)
    max_len: int = option(50, help="maximum sequence length n (longer training sequences are cut into windows of "
                                   "n targets)", low=1)
    dim: int = option(64, help="embedding / hidden size d", low=1)
    layers: int = option(2, help="Transformer layers", low=1)
    heads: int = option(2, help="attention heads", low=1)
    dropout: float = option(0.5, help="hidden and attention dropout (the MCLRec paper: 0.5 on Amazon data)",
                            low=0, high=1, high_open=True)
    batch_size: int = option(256, help="training sequences per batch and device (the in-batch negatives of the "
                                       "contrastive terms; with --devices N they are gathered from every device)",
                             low=2)
    bucket_pool: int = option(50, help="training batches are drawn from pools of this many batches sorted by "
                                       "sequence length (less padding, faster); 1 = plain random batches", low=1)
    lr: float = option(1e-3, help="Adam learning rate (encoder and MCLRec augmenters)", low=0, low_open=True)
    weight_decay: float = option(0.0, help="Adam weight decay", low=0)
    epochs: int = option(100, help="maximum training epochs per method (early stopping usually ends a run before; "
                                   "a larger value continues a run stopped by --max-minutes, or a finished one whose "
                                   "model.pt was deleted, from its last checkpoint)", low=1, model=False)
    eval_every: int = option(2, help="full-ranking validation every this many epochs", low=1)
    patience: int = option(5, help="early stopping: stop after this many validations without a better validation "
                                   "NDCG@10", low=1, model=False)
    cl4srec_lambda: float = option(0.1, help="CL4SRec: weight of the NT-Xent term", low=0)
    duorec_lambda: float = option(0.1, help="DuoRec: weight of the contrastive regulariser", low=0)
    mclrec_lambda: float = option(0.0, help="MCLRec: weight lambda of L_cl1 (NT-Xent of the two augmented views; "
                                            "Beauty script: 0)", low=0)
    mclrec_beta: float = option(0.05, help="MCLRec: weight beta of L_cl2 (+ reg_weight * R) in the encoder loss "
                                           "(Beauty script: 0.05)", low=0)
    reg_weight: float = option(0.1, help="MCLRec: weight of the regulariser R inside the beta term and the "
                                         "augmenter loss (code: 0.1)", low=0)
    tau: float = option(1.0, help="temperature of every contrastive term (dot-product similarity; the papers' "
                                  "code: 1)", low=0, low_open=True)
    contrast_loss: str = option("nt_xent", help="objective of the sequence-level contrastive term (CL4SRec's, "
                                                "MCLRec's L_cl1 / L_cl2; DuoRec keeps SupCon), core.losses: 'nt_xent' "
                                                "(the papers'), 'debiased' (Chuang et al. 2020, tau_plus 0.1), "
                                                "'hard_negative' (Robinson et al. 2021, tau_plus 0.1, beta 1), 'auc' "
                                                "(AUC / Mann-Whitney, symmetrised), 'tempnet' (NT-Xent with a "
                                                "TemperatureNet temperature per view in [0.05, 2 tau], starting at "
                                                "tau)", choices=CONTRAST_LOSSES)
    cl_positions: str = option("last", help="DuoRec's contrastive term on the last position of each sequence "
                                            "('last': the paper's) or on every position ('all': every training "
                                            "prefix of the batch, two dropout views)", choices=("last", "all"))
    training: str = option("all_positions", help="training samples: 'all_positions' (one row per sequence, the loss "
                                                 "at every position: fast) or 'prefixes' (the papers' RecBole form: "
                                                 "one row per prefix, loss and views on its last position)",
                           choices=("all_positions", "prefixes"))
    crop_eta: float = option(0.5, help="crop keeps floor(eta * L) items", low=0, high=1)
    mask_gamma: float = option(0.5, help="mask sets floor(gamma * L) items to padding", low=0, high=1)
    reorder_beta: float = option(0.8, help="reorder shuffles a span of floor(beta * L) items", low=0, high=1)
    exclude_seen: bool = option(True, help="validation and test: items already in the user's input sequence are "
                                           "not ranked (S3-Rec convention)", model=False)
    eval_batch_size: int = option(1024, help="users per batch of full-ranking evaluation", low=1, model=False)

    @classmethod
    def quick(cls) -> RecConfig:
        """A random sample of 3,000 Beauty users (``sample_seed`` 0) with every item they touched (8,877 items: the
        full ranking is over all of them), 6 epochs per method: all four methods fit and evaluate in about two
        minutes on one CPU thread."""
        return cls(max_users=3000, epochs=6, eval_every=3, patience=100, dropout=0.2, lr=2e-3, batch_size=64)

    def check(self) -> None:
        if self.dim % self.heads:
            raise InputError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not self.methods:
            raise InputError("methods is empty")
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"methods lists a method twice: {self.methods}")
        if self.cl_positions == "all" and self.training == "prefixes":
            raise InputError("cl_positions='all' needs training='all_positions' (a prefix row has one target)")
        if self.contrast_loss == "tempnet" and self.tau <= TEMPNET_MIN:
            raise InputError(f"contrast_loss='tempnet' starts its TemperatureNet at tau, which must exceed its lower "
                             f"bound {TEMPNET_MIN}; got tau={self.tau}")

    def method_weights(self, method: str) -> dict[str, float]:
        """(lam, beta) of a method: the weight of its contrastive term(s)."""
        return {"sasrec": dict(lam=0.0, beta=0.0), "cl4srec": dict(lam=self.cl4srec_lambda, beta=0.0),
                "duorec": dict(lam=self.duorec_lambda, beta=0.0),
                "mclrec": dict(lam=self.mclrec_lambda, beta=self.mclrec_beta)}[method]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config of :class:`RecConfig` fields; errors name the file (and line)."""
    return _load_yaml(path, RecConfig)
