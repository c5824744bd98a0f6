"""``fit``: train every method of ``--methods`` at ``--seed``, each in ``<run-dir>/<method>/seed<S>``, resuming an
interrupted run.

A method's folder holds ``checkpoints/last.ckpt`` (Lightning, every epoch; ``fit`` continues from it; SupReMix:
``pretrain/checkpoints/``), ``logs/`` (CSV) and, when training is done, ``model.pt`` (the weights that ``evaluate``
reads: a plain state dict with the method name, the epochs trained and the epoch kept). The run directory's
``settings.json`` (written by the runner) refuses a re-run with other model settings.

Epoch selection (``--select-epoch``): with ``best_val`` (the default) the networks trained end to end keep the
weights of the epoch with the lowest validation MAE (:class:`BestValidation`; the earliest such epoch on a tie),
as the trees baseline keeps the number of boosting rounds with the lowest validation MAE; with ``last`` they keep
the final weights. SupReMix has no regression head while it pre-trains (its linear probe is fitted in closed form
once, on the final encoder), so it always keeps its last epoch.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from apps.regression.config import RegressionSettings, Switches, switches
from apps.regression.data import DIRData, load_data
from apps.regression.dir import lds_weights
from apps.regression.model import DIRRegressor, SupReMixPretrainer, fit_linear_probe
from core.app import Run, save_torch
from core.app.hardware import barrier
from core.training import default_callbacks, fit_with_resume, seed_everything

__all__ = ["fit", "fit_method", "build_regressor", "sample_weights", "BestValidation"]


class BestValidation(Callback):
    """Keeps a copy of the module's weights at the end of the validation epoch with the lowest ``monitor`` value
    (strictly lower than every earlier one, so a tie keeps the earliest epoch).

    ``best_epoch`` (0-based), ``best_score`` and ``best_state`` (CPU tensors) travel in Lightning checkpoints
    (:meth:`state_dict`), so a resumed fit keeps the selection of the interrupted one. A non-finite score never
    becomes the best.
    """

    def __init__(self, monitor: str = "val/mae") -> None:
        self.monitor = monitor
        self.best_epoch: int | None = None
        self.best_score = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return f"BestValidation[{self.monitor}]"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if math.isfinite(score) and score < self.best_score:
            self.best_epoch, self.best_score = int(trainer.current_epoch), score
            self.best_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best_epoch": self.best_epoch, "best_score": self.best_score,
                "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_epoch, self.best_score = state_dict["best_epoch"], float(state_dict["best_score"])
        self.best_state = state_dict["best_state"]


def sample_weights(s: RegressionSettings, sw: Switches, data: DIRData) -> np.ndarray:
    """Training weights of the method's re-weighting (+ LDS); ones for ``reweight='none'``."""
    return lds_weights(data.bins["train"], data.n_bins, sw.reweight, sw.lds, s.lds_kernel, s.lds_ks, s.lds_sigma)


def build_regressor(s: RegressionSettings, sw: Switches, data: DIRData) -> DIRRegressor:
    """The :class:`DIRRegressor` of a method (also used by ``evaluate`` to load ``model.pt``)."""
    fds = None
    if sw.fds:
        fds = dict(kernel=s.fds_kernel, ks=s.fds_ks, sigma=s.fds_sigma, momentum=s.fds_momentum,
                   start_update=s.fds_start_update, start_smooth=s.fds_start_smooth)
    conr = None
    if sw.conr:
        conr = dict(temperature=s.conr_temperature, window=s.conr_window if s.conr_window is not None
                    else data.bin_width, push_scale=s.conr_push_scale, denominator=s.conr_denominator)
    return DIRRegressor(
        data.in_dim, list(s.hidden), s.feature_dim, data.n_bins, float(data.y["train"].mean()),
        float(data.y["train"].std()), cardinalities=data.cardinalities, dropout=s.dropout, loss=sw.loss, fds=fds,
        conr=conr,
        conr_weight=s.conr_weight, use_conr_weights=sw.reweight != "none", view_noise=s.view_noise,
        view_mask=s.view_mask, lr=s.lr, weight_decay=s.weight_decay,
    )


def _loader(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, batch_size: int, train: bool) -> DataLoader:
    """A plain shuffling loader: :func:`~core.training.fit_with_resume` makes its order a function of (seed,
    epoch) (exact resume), and under DDP Lightning shards it by rank with an epoch-seeded sampler."""
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w.astype(np.float32)),
                       torch.from_numpy(b))
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train and len(ds) > batch_size)


def _trainer_kwargs(s: RegressionSettings, run_dir: Path, epochs: int) -> dict[str, Any]:
    return dict(
        max_epochs=epochs, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10,
        enable_progress_bar=s.progress, check_val_every_n_epoch=1,
        callbacks=default_callbacks(run_dir, every_n_epochs=1, save_top_k=1, progress_bar=s.progress),
    )


def fit_method(s: RegressionSettings, method: str, data: DIRData, out: Path) -> dict[str, Any]:
    """Train ``method`` at ``s.seed`` in ``out`` (resuming) and write ``out/model.pt``; returns its contents."""
    sw = switches(s, method)
    t0 = time.perf_counter()
    w = sample_weights(s, sw, data)
    tr = (data.x["train"], data.y["train"], w, data.bins["train"])
    seed_everything(s.seed)
    model = build_regressor(s, sw, data)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a resumed run
        if sw.supremix:
            epochs = s.supremix_epochs or s.epochs
            pre = SupReMixPretrainer(
                data.in_dim, list(s.hidden), s.feature_dim, cardinalities=data.cardinalities, dropout=s.dropout,
                temperature=s.supremix_temperature, window=s.supremix_window, beta=tuple(s.supremix_beta),
                view_noise=s.view_noise, view_mask=s.view_mask, lr=s.lr, weight_decay=s.weight_decay)
            kw = _trainer_kwargs(s, out / "pretrain", epochs)
            kw["limit_val_batches"] = 0
            trainer = fit_with_resume(kw, pre, _loader(*tr, s.supremix_batch_size, True), out / "pretrain")
            model.encoder.load_state_dict(pre.encoder.cpu().state_dict())
            model.eval()
            with torch.no_grad():
                h = model(torch.from_numpy(data.x["train"])).numpy()
            y_std = (data.y["train"] - model.y_mean.item()) / model.y_std.item()
            a, c = fit_linear_probe(h, y_std, w, s.probe_ridge)
            with torch.no_grad():
                model.regressor.weight.copy_(torch.from_numpy(a[None, :]).float())
                model.regressor.bias.fill_(c)
            kept = done = min(int(trainer.current_epoch), epochs)
        else:
            epochs = s.epochs
            val = _loader(data.x["val"], data.y["val"], np.ones(len(data.y["val"])), data.bins["val"], 4096, False)
            kw = _trainer_kwargs(s, out, epochs)
            best = BestValidation("val/mae")
            kw["callbacks"].append(best)
            trainer = fit_with_resume(kw, model, (_loader(*tr, s.batch_size, True), val), out)
            kept = done = min(int(trainer.current_epoch), epochs)
            if s.select_epoch == "best_val" and best.best_state is not None:
                model.load_state_dict(best.best_state)
                kept = best.best_epoch + 1
    state = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "method": method,
             "seed": int(s.seed), "epochs": int(epochs), "epochs_done": done, "epoch_kept": int(kept),
             "fit_seconds": float(time.perf_counter() - t0)}
    save_torch(out / "model.pt", state)
    return state


def fit(run: Run) -> None:
    """The ``fit`` verb: read and check the data, claim the run directory, train every method."""
    s: RegressionSettings = run.settings
    data = load_data(s)
    run.claim()
    run.log(data.summary())
    for i, method in enumerate(s.methods):
        out = run.run_dir.method_dir(method)
        run.log(f"fit {method} ({i + 1} of {len(s.methods)}, seed {s.seed}) -> {out}")
        state = fit_method(s, method, data, out)
        if state["epochs_done"] < state["epochs"]:
            run.log(f"{method}: stopped after {state['epochs_done']} of {state['epochs']} epochs (--max-minutes); "
                    "re-run the same command to continue")
        else:
            run.log(f"{method}: trained in {state['fit_seconds']:.1f} s")
    barrier()  # every rank sees every model.pt before anything reads it
