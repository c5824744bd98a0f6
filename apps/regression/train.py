"""``fit``: train one method on one data set in its run directory, resuming an interrupted run.

The run directory holds ``config.json`` (the resolved configuration; a resumed run must match it),
``checkpoints/last.ckpt`` (Lightning, every epoch; ``fit`` continues from it), ``logs/`` (CSV) and, when
training is done, ``model.pt`` (the final weights that ``evaluate`` reads).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from apps.regression.config import ConfigError, RegressionConfig, resolve
from apps.regression.data import DIRData, load_data
from apps.regression.dir import lds_weights
from apps.regression.model import DIRRegressor, SupReMixPretrainer, fit_linear_probe
from core.training import default_callbacks, fit_with_resume, seed_everything

__all__ = ["fit", "build_regressor", "sample_weights"]

_IGNORED_FOR_RESUME = {"quick", "progress", "threads", "out", "run_dir"}


def sample_weights(cfg: RegressionConfig, data: DIRData) -> np.ndarray:
    """Training weights of the configured re-weighting (+ LDS); ones for ``reweight='none'``."""
    return lds_weights(data.bins["train"], data.n_bins, cfg.reweight, cfg.lds, cfg.lds_kernel, cfg.lds_ks,
                       cfg.lds_sigma)


def build_regressor(cfg: RegressionConfig, data: DIRData) -> DIRRegressor:
    """The :class:`DIRRegressor` of a resolved config (also used by ``evaluate`` to load ``model.pt``)."""
    fds = None
    if cfg.fds:
        fds = dict(kernel=cfg.fds_kernel, ks=cfg.fds_ks, sigma=cfg.fds_sigma, momentum=cfg.fds_momentum,
                   start_update=cfg.fds_start_update, start_smooth=cfg.fds_start_smooth)
    conr = None
    if cfg.conr:
        conr = dict(temperature=cfg.conr_temperature, window=cfg.conr_window if cfg.conr_window is not None
                    else data.bin_width, push_scale=cfg.conr_push_scale, denominator=cfg.conr_denominator)
    return DIRRegressor(
        data.in_dim, list(cfg.hidden), cfg.feature_dim, data.n_bins, float(data.y["train"].mean()),
        float(data.y["train"].std()), dropout=cfg.dropout, loss=cfg.loss, fds=fds, conr=conr,
        conr_weight=cfg.conr_weight, use_conr_weights=cfg.reweight != "none", view_noise=cfg.view_noise,
        view_mask=cfg.view_mask, lr=cfg.lr, weight_decay=cfg.weight_decay,
    )


def _loader(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, batch_size: int, shuffle: bool,
            seed: int, drop_last: bool) -> torch.utils.data.DataLoader:
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y),
                                        torch.from_numpy(w.astype(np.float32)), torch.from_numpy(b))
    base = (torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(seed)) if shuffle
            else torch.utils.data.SequentialSampler(ds))
    drop_last = drop_last and len(ds) > batch_size
    sampler = torch.utils.data.BatchSampler(base, batch_size, drop_last)  # whole-batch indexing: no collation
    return torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None)


def _trainer_kwargs(cfg: RegressionConfig, run_dir: Path, epochs: int) -> dict:
    return dict(
        max_epochs=epochs, accelerator="cpu", devices=1, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=10, enable_progress_bar=cfg.progress, check_val_every_n_epoch=1,
        callbacks=default_callbacks(run_dir, every_n_epochs=1, save_top_k=1, progress_bar=cfg.progress),
    )


def _check_resume(run_dir: Path, cfg: RegressionConfig) -> None:
    f = run_dir / "config.json"
    if not f.is_file():
        return
    old = json.loads(f.read_text())
    new = cfg.to_dict()
    diff = sorted(k for k in new if k not in _IGNORED_FOR_RESUME and old.get(k) != new[k])
    trained = any((run_dir / p).exists() for p in ("checkpoints", "pretrain/checkpoints", "model.pt"))
    if diff and trained:
        raise ConfigError(f"{run_dir} holds a run with a different configuration ({', '.join(diff)}); "
                          f"use another --run_dir or delete it")


def fit(cfg: RegressionConfig, data: DIRData | None = None, echo=print) -> Path:
    """Train ``cfg`` (resolved here) and write ``model.pt`` in its run directory, which is returned."""
    cfg = resolve(cfg)
    torch.set_num_threads(cfg.threads)
    data = data or load_data(cfg)
    run_dir = cfg.default_run_dir()
    _check_resume(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    echo(f"[regression] {data.summary()}")
    echo(f"[regression] fit {cfg.method} (seed {cfg.seed}) -> {run_dir}")
    t0 = time.perf_counter()
    w = sample_weights(cfg, data)
    tr = (data.x["train"], data.y["train"], w, data.bins["train"])
    val = _loader(data.x["val"], data.y["val"], np.ones(len(data.y["val"])), data.bins["val"], 4096, False, 0, False)
    seed_everything(cfg.seed)
    model = build_regressor(cfg, data)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a resumed run
        if cfg.supremix:
            epochs = cfg.supremix_epochs or cfg.epochs
            pre = SupReMixPretrainer(
                data.in_dim, list(cfg.hidden), cfg.feature_dim, dropout=cfg.dropout,
                temperature=cfg.supremix_temperature, window=cfg.supremix_window, beta=tuple(cfg.supremix_beta),
                view_noise=cfg.view_noise, view_mask=cfg.view_mask, lr=cfg.lr, weight_decay=cfg.weight_decay)
            loader = _loader(*tr, cfg.supremix_batch_size, True, cfg.seed, True)
            kw = _trainer_kwargs(cfg, run_dir / "pretrain", epochs)
            kw["limit_val_batches"] = 0
            fit_with_resume(kw, pre, loader, run_dir / "pretrain")
            model.encoder.load_state_dict(pre.encoder.state_dict())
            model.eval()
            with torch.no_grad():
                h = model(torch.from_numpy(data.x["train"])).numpy()
            y_std = (data.y["train"] - model.y_mean.item()) / model.y_std.item()
            a, c = fit_linear_probe(h, y_std, w, cfg.probe_ridge)
            with torch.no_grad():
                model.regressor.weight.copy_(torch.from_numpy(a[None, :]).float())
                model.regressor.bias.fill_(c)
        else:
            loader = _loader(*tr, cfg.batch_size, True, cfg.seed, True)
            fit_with_resume(_trainer_kwargs(cfg, run_dir, cfg.epochs), model, (loader, val), run_dir)
    seconds = time.perf_counter() - t0
    torch.save({"state_dict": model.state_dict(), "config": cfg.to_dict(), "fit_seconds": seconds},
               run_dir / "model.pt")
    echo(f"[regression] trained in {seconds:.1f} s; next: python -m apps.regression evaluate --run_dir {run_dir}")
    return run_dir
