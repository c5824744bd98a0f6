"""The training stages: tasks from the protocol, NT-Xent pre-training, MSC and compactness fine-tuning.

Run-directory layout (``RUN_DIR/<dataset>/``)::

    config.json                     settings the artefacts were made with (a re-run with others is refused)
    pretrain/encoder.pt             the pre-trained encoder (images: one for all classes)
    <table>/pretrain/encoder.pt     (tables: one per table)
    <task>/msc/encoder.pt           MSC fine-tuned encoder of a normal class / table
    <task>/compact/encoder.pt       compactness fine-tuned encoder (baseline)
    */checkpoints/last.ckpt         Lightning checkpoints: an interrupted stage resumes from here

A stage whose ``encoder.pt`` exists is skipped, so re-running ``fit`` after an interruption continues where
it stopped (mid-stage from ``last.ckpt``, through :func:`core.training.fit_with_resume`).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from apps.anomaly.config import AnomalyConfig
from apps.anomaly.data import (
    DataError,
    ImageData,
    Table,
    image_protocol,
    load_data,
    resolve_data_path,
    standardize,
    table_protocol,
)
from apps.anomaly.model import (
    CompactnessModule,
    MeanShiftedModule,
    TabularCorruption,
    build_encoder,
    embed,
    image_augment,
    load_encoder_checkpoint,
    normal_center,
)
from core.encoders import ProjectionHead
from core.metrics.knn import knn_scores
from core.training import SimCLRModule, default_callbacks, fit_with_resume, seed_everything

__all__ = ["Task", "Experiment", "prepare", "pretrain", "finetune", "fit", "roc_auc"]

# settings that do not change the trained artefacts (may differ between fit and evaluate)
_NON_ARTEFACT = ("run_dir", "normal", "k", "normalize_scores", "isolation_forest", "threads", "progress")


@dataclass
class Task:
    """One one-class problem: a normal class of an image set, or one table."""

    name: str
    kind: str  # "image" or "table"
    x_train: np.ndarray  # model inputs of the normal training samples
    x_test: np.ndarray
    y_test: np.ndarray  # 1 = anomaly
    raw_train: np.ndarray  # flattened raw inputs (Isolation Forest, raw kNN)
    raw_test: np.ndarray
    pretrain_dir: Path
    x_pool: np.ndarray  # the pre-training pool of this task's encoder
    dir: Path


@dataclass
class Experiment:
    dataset: str
    kind: str
    root: Path
    tasks: list[Task]
    protocol: str


def _select(names: list[str], wanted: list[str] | None, what: str, quick: bool) -> list[str]:
    if wanted is None:
        return names[:1] if quick else names
    wanted = [str(w) for w in wanted]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise DataError(f"unknown {what} {unknown}; available: {names}")
    return wanted


def prepare(cfg: AnomalyConfig, quick: bool = False) -> Experiment:
    """Load the data, apply the one-class protocol and lay out the run directory."""
    cfg.validate()
    name, _ = resolve_data_path(cfg.data)
    data = load_data(cfg.data)
    root = Path(cfg.run_dir) / name
    if isinstance(data, ImageData):
        pool_idx, split = image_protocol(data.y, cfg.pretrain_fraction, cfg.train_fraction, cfg.seed,
                                         cfg.max_images)
        classes = _select(data.classes, cfg.normal, "normal class", quick)
        flat = data.x.reshape(len(data.x), -1)
        x_pool = data.x[pool_idx]
        tasks = []
        for cname in classes:
            tr, te, lab = split[data.classes.index(cname)]
            tasks.append(Task(cname, "image", data.x[tr], data.x[te], lab, flat[tr], flat[te],
                              root / "pretrain", x_pool, root / f"class_{cname}"))
        subset = "" if cfg.max_images is None else f" of a stratified {cfg.max_images}-image subset"
        protocol = (f"pre-training pool: {len(pool_idx)} unlabelled images (stratified "
                    f"{cfg.pretrain_fraction:.0%}{subset}); per normal class: {cfg.train_fraction:.0%} of its other "
                    f"images to train, the rest plus every other class's non-pool images to test")
        _check_k(cfg, tasks)
        return Experiment(name, "image", root, tasks, protocol)
    tables = {t.name: t for t in data}
    chosen = _select(list(tables), cfg.normal, "table", quick)
    tasks = []
    for tname in chosen:
        t: Table = tables[tname]
        tr, te = table_protocol(t.y, cfg.train_fraction, cfg.seed)
        x_tr, x_te = standardize(t.x[tr], t.x[te])
        tasks.append(Task(tname, "table", x_tr, x_te, t.y[te], t.x[tr], t.x[te], root / tname / "pretrain",
                          x_tr, root / tname))
    _check_k(cfg, tasks)
    protocol = (f"per table: {cfg.train_fraction:.0%} of the normal rows to train (and to pre-train on), the "
                f"rest plus all anomalies to test; features z-scored with training statistics")
    return Experiment(name, "table", root, tasks, protocol)


def _check_k(cfg: AnomalyConfig, tasks: list[Task]) -> None:
    for t in tasks:
        if len(t.x_train) < max(cfg.k, 2):
            raise DataError(f"{t.name}: {len(t.x_train)} normal training samples, fewer than k={cfg.k} (or 2)")


def check_run_dir(cfg: AnomalyConfig, exp: Experiment, write: bool) -> None:
    """Refuse to mix artefacts of different settings in one run directory."""
    want = {k: v for k, v in cfg.to_dict().items() if k not in _NON_ARTEFACT}
    path = exp.root / "config.json"
    if path.is_file():
        have = json.loads(path.read_text())
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            raise DataError(f"{exp.root} holds a run made with other settings ({', '.join(diff)}); "
                            f"pass another --run-dir or delete it")
    elif write:
        exp.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(want, indent=2))


def _trainer_kwargs(cfg: AnomalyConfig, run_dir: Path, epochs: int) -> dict:
    return dict(max_epochs=epochs, accelerator="cpu", devices=1, log_every_n_steps=1,
                enable_model_summary=False, enable_progress_bar=cfg.progress,
                callbacks=default_callbacks(run_dir, save_top_k=1, progress_bar=cfg.progress))


def _loader(x: np.ndarray, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    bs = min(batch_size, len(x))
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(x)), batch_size=bs, shuffle=True,
        drop_last=len(x) > bs, generator=torch.Generator().manual_seed(seed))


def _fit(cfg: AnomalyConfig, module: nn.Module, x: np.ndarray, batch_size: int, run_dir: Path, epochs: int) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" banners per stage
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*_pytree.*")
        fit_with_resume(_trainer_kwargs(cfg, run_dir, epochs), module, _loader(x, batch_size, cfg.seed), run_dir)


def _new_encoder(cfg: AnomalyConfig, task: Task) -> nn.Module:
    return build_encoder(task.kind, task.x_train.shape[1:], cfg.width, cfg.feature_dim, tuple(cfg.hidden_dims))


def _views(cfg: AnomalyConfig, task: Task, pool: np.ndarray, strength: str = "strong") -> nn.Module:
    if task.kind == "image":
        return image_augment(task.x_train.shape[-2], strength)
    return TabularCorruption(torch.as_tensor(pool), cfg.corruption_rate, cfg.corruption_mode)


def _save(encoder: nn.Module, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(encoder.state_dict(), tmp)
    tmp.replace(path)


def _load(cfg: AnomalyConfig, task: Task, path: Path) -> nn.Module:
    try:
        return load_encoder_checkpoint(_new_encoder(cfg, task), path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from e


def pretrain(cfg: AnomalyConfig, task: Task, log=print) -> nn.Module:
    """The task's pre-trained encoder: ``--encoder`` if given, else NT-Xent on its pool (cached on disk)."""
    if cfg.encoder is not None:
        return _load(cfg, task, Path(cfg.encoder))
    out = task.pretrain_dir / "encoder.pt"
    if out.is_file():
        return _load(cfg, task, out)
    task.pretrain_dir.mkdir(parents=True, exist_ok=True)
    log(f"[anomaly] pre-training ({cfg.pretrain_epochs} epochs of NT-Xent) on {len(task.x_pool)} "
        f"unlabelled samples -> {out}")
    seed_everything(cfg.seed)
    encoder = _new_encoder(cfg, task)
    head = ProjectionHead(cfg.feature_dim, hidden_dim=cfg.feature_dim, out_dim=cfg.projection_dim)
    steps = max(1, len(task.x_pool) // min(cfg.pretrain_batch_size, len(task.x_pool)))
    module = SimCLRModule(encoder, head, temperature=cfg.pretrain_temperature, augment=_views(cfg, task, task.x_pool),
                          lr=cfg.pretrain_lr, weight_decay=1e-4, scheduler="cosine",
                          warmup_steps=min(50, steps * cfg.pretrain_epochs // 10))
    t0 = time.perf_counter()
    _fit(cfg, module, task.x_pool, cfg.pretrain_batch_size, task.pretrain_dir, cfg.pretrain_epochs)
    _save(encoder, out)
    log(f"[anomaly] pre-training done in {time.perf_counter() - t0:.0f} s")
    return encoder


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def knn_auroc(cfg: AnomalyConfig, encoder: nn.Module, task: Task) -> float:
    """ROC-AUC of kNN scores of ``encoder``'s features on the task's test split."""
    norm = cfg.knn_normalize(task.kind)
    return roc_auc(task.y_test, knn_scores(embed(encoder, task.x_test, norm), embed(encoder, task.x_train, norm),
                                           k=cfg.k, normalize=norm))


def finetune(cfg: AnomalyConfig, task: Task, pretrained: nn.Module, method: str, log=print) -> nn.Module:
    """MSC (``method="msc"``) or compactness (``"compact"``) fine-tuning of a copy of ``pretrained``."""
    out_dir = task.dir / method
    out = out_dir / "encoder.pt"
    if out.is_file():
        return _load(cfg, task, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    encoder = _new_encoder(cfg, task)
    encoder.load_state_dict(pretrained.state_dict())
    center = normal_center(encoder, task.x_train, normalize_center=cfg.angular_weight > 0 or method == "compact")
    optim = dict(optimizer="adam", lr=cfg.finetune_lr(task.kind), weight_decay=cfg.weight_decay, scheduler="constant")
    if method == "msc":
        module: nn.Module = MeanShiftedModule(encoder, center, _views(cfg, task, task.x_train, "mild"),
                                              temperature=cfg.temperature, angular_weight=cfg.angular_weight,
                                              **optim)
        epochs = cfg.epochs
    elif method == "compact":
        module, epochs = CompactnessModule(encoder, center, **optim), cfg.compact_epochs
    else:
        raise ValueError(f"unknown method {method!r}")
    t0 = time.perf_counter()
    _fit(cfg, module, task.x_train, cfg.batch_size, out_dir, epochs)
    _save(encoder, out)
    log(f"[anomaly] {task.name}: {method} fine-tuning ({epochs} epochs, {len(task.x_train)} normal samples) "
        f"done in {time.perf_counter() - t0:.0f} s")
    return encoder


def iter_fit(cfg: AnomalyConfig, exp: Experiment, log=print) -> Iterator[tuple[Task, dict[str, nn.Module]]]:
    """Pre-train (if needed), print the epoch-0 sanity AUROC, fine-tune; yields each task's encoders."""
    check_run_dir(cfg, exp, write=True)
    for task in exp.tasks:
        pretrained = pretrain(cfg, task, log)
        sanity = knn_auroc(cfg, pretrained, task)
        log(f"[anomaly] {task.name}: epoch-0 sanity ROC-AUC of kNN on pre-trained features = {sanity:.4f}"
            + ("  (WARNING: near 0.5, the set-up looks broken)" if sanity < 0.6 else ""))
        encoders = {"pretrained": pretrained, "msc": finetune(cfg, task, pretrained, "msc", log)}
        if cfg.compact_epochs > 0:
            encoders["compact"] = finetune(cfg, task, pretrained, "compact", log)
        log(f"[anomaly] {task.name}: MSC ROC-AUC = {knn_auroc(cfg, encoders['msc'], task):.4f}")
        yield task, encoders


def fit(cfg: AnomalyConfig, exp: Experiment, log=print) -> None:
    """Run every stage of every task (see :func:`iter_fit`)."""
    for _ in iter_fit(cfg, exp, log):
        pass


def pretrain_only(cfg: AnomalyConfig, exp: Experiment, log=print) -> list[Path]:
    """The ``pretrain`` verb: pre-train each distinct encoder of the experiment; returns their paths."""
    if cfg.encoder is not None:
        raise DataError("pretrain with --encoder makes no sense: the checkpoint replaces pre-training")
    check_run_dir(cfg, exp, write=True)
    done: list[Path] = []
    for task in exp.tasks:
        if task.pretrain_dir / "encoder.pt" not in done:
            pretrain(cfg, task, log)
            done.append(task.pretrain_dir / "encoder.pt")
    return done


def load_fitted(cfg: AnomalyConfig, exp: Experiment, task: Task) -> dict[str, nn.Module]:
    """The encoders ``fit`` saved for ``task`` (raises :class:`DataError` naming what is missing)."""
    check_run_dir(cfg, exp, write=False)
    paths = {"pretrained": Path(cfg.encoder) if cfg.encoder else task.pretrain_dir / "encoder.pt",
             "msc": task.dir / "msc" / "encoder.pt"}
    if cfg.compact_epochs > 0:
        paths["compact"] = task.dir / "compact" / "encoder.pt"
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"nothing fitted for {task.name!r} in {exp.root} (missing {missing}); run `fit` first "
                        f"with the same --data / --run-dir / settings")
    return {k: _load(cfg, task, p) for k, p in paths.items()}

