"""The training stages: tasks from the protocol, NT-Xent pre-training, MSC and compactness fine-tuning.

Run-directory layout (one data set per run directory; ``<S>`` is ``--seed``)::

    settings.json                         the settings that change the models (a re-run with others is refused)
    pretrain/seed<S>/encoder.pt           the pre-trained encoder (images: one for every normal class)
    pretrain/seed<S>/<table>/encoder.pt   (tables: one per table)
    msc/seed<S>/<task>/encoder.pt         MSC fine-tuned encoder of a normal class (``class_<c>``) or a table
    compact/seed<S>/<task>/encoder.pt     compactness fine-tuned encoder (baseline)
    */checkpoints/last.ckpt               Lightning checkpoints: an interrupted stage resumes from here
    report.json, report.md, *.png         written by ``evaluate`` / ``run`` (``sweep``: seed<S>/report.* too)

A stage whose ``encoder.pt`` exists is skipped, so re-running ``fit`` after an interruption continues where
it stopped (mid-stage from ``last.ckpt``, through :func:`core.training.fit_with_resume`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from apps.anomaly.config import AnomalySettings
from apps.anomaly.data import (
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
    HeldOutSelection,
    MeanShiftedModule,
    TabularCorruption,
    bn_adapted,
    build_encoder,
    embed,
    image_augment,
    load_encoder_checkpoint,
    normal_center,
)
from core.app import CAPPED, InputError, RunDir, current, save_torch
from core.app.hardware import barrier
from core.encoders import ProjectionHead
from core.metrics.knn import knn_scores
from core.training import SimCLRModule, default_callbacks, fit_with_resume, seed_everything, stopped_by_deadline

__all__ = ["Task", "Experiment", "TimeCapReached", "prepare", "pretrain", "finetune", "fit", "iter_fit",
           "pretrain_only", "load_fitted", "knn_auroc", "roc_auc", "holdout_split", "METHODS", "CAPPED"]

#: the trained stages, each in ``<run-dir>/<stage>/seed<S>/``
METHODS = ("pretrain", "msc", "compact")


Log = Callable[[str], None]


class TimeCapReached(Exception):
    """``--max-minutes`` stopped a training stage before its last step; its ``last.ckpt`` resumes it."""


def _print(msg: str) -> None:
    print(f"[anomaly] {msg}", flush=True)


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
    folder: str  # the task's sub-folder of every fine-tuning stage: class_<c> or the table's name

    @property
    def label(self) -> str:
        """The task's name in reports: ``class <c>`` or the table's name."""
        return f"class {self.name}" if self.kind == "image" else self.name


@dataclass
class Experiment:
    dataset: str
    kind: str
    run_dir: RunDir
    tasks: list[Task]
    protocol: str

    def stage_dir(self, method: str, task: Task) -> Path:
        """``<run-dir>/<method>/seed<S>/<task>``: where a fine-tuning stage of ``task`` lives."""
        return self.run_dir.method_dir(method) / task.folder


def _select(names: list[str], wanted: list[str] | None, what: str, quick: bool) -> list[str]:
    if wanted is None:
        return names[:1] if quick else names
    wanted = [str(w) for w in wanted]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise InputError(f"unknown {what} {unknown}; available: {names}")
    return wanted


def prepare(s: AnomalySettings, run_dir: RunDir, quick: bool = False) -> Experiment:
    """Load the data and apply the one-class protocol (reads only; raises :class:`InputError` for bad data or a
    missing ``--encoder-checkpoint``)."""
    if s.encoder_checkpoint is not None and not Path(s.encoder_checkpoint).is_file():
        raise InputError(f"encoder checkpoint {s.encoder_checkpoint} does not exist")
    name, _ = resolve_data_path(s.data)
    data = load_data(s.data)
    pretrain_root = run_dir.method_dir("pretrain")
    if isinstance(data, ImageData):
        pool_idx, split = image_protocol(data.y, s.pretrain_fraction, s.train_fraction, s.seed, s.max_images)
        classes = _select(data.classes, s.normal, "normal class", quick)
        flat = data.x.reshape(len(data.x), -1)
        x_pool = data.x[pool_idx]
        tasks = []
        for cname in classes:
            tr, te, lab = split[data.classes.index(cname)]
            tasks.append(Task(cname, "image", data.x[tr], data.x[te], lab, flat[tr], flat[te], pretrain_root, x_pool,
                              f"class_{cname}"))
        subset = "" if s.max_images is None else f" of a stratified {s.max_images}-image subset"
        protocol = (f"pre-training pool: {len(pool_idx)} unlabelled images (stratified "
                    f"{s.pretrain_fraction:.0%}{subset}); per normal class: {s.train_fraction:.0%} of its other "
                    f"images to train, the rest plus every other class's non-pool images to test")
        _check_k(s, tasks)
        return Experiment(name, "image", run_dir, tasks, protocol)
    tables = {t.name: t for t in data}
    chosen = _select(list(tables), s.normal, "table", quick)
    tasks = []
    for tname in chosen:
        t: Table = tables[tname]
        tr, te = table_protocol(t.y, s.train_fraction, s.seed)
        x_tr, x_te = standardize(t.x[tr], t.x[te])
        tasks.append(Task(tname, "table", x_tr, x_te, t.y[te], t.x[tr], t.x[te], pretrain_root / tname, x_tr, tname))
    _check_k(s, tasks)
    protocol = (f"per table: {s.train_fraction:.0%} of the normal rows to train (and to pre-train on), the "
                f"rest plus all anomalies to test; features z-scored with training statistics")
    return Experiment(name, "table", run_dir, tasks, protocol)


def _check_k(s: AnomalySettings, tasks: list[Task]) -> None:
    for t in tasks:
        if len(t.x_train) < max(s.k + 1, 2):
            raise InputError(f"{t.name}: {len(t.x_train)} normal training samples, fewer than k={s.k} plus one "
                             f"(the combined score needs each training sample's k nearest other samples)")


def _trainer_kwargs(s: AnomalySettings, run_dir: Path, epochs: int) -> dict:
    """Lightning Trainer arguments of one stage; the hardware (accelerator, devices, strategy, precision, time cap)
    comes from the runner through :func:`core.training.fit_with_resume`."""
    return dict(max_epochs=epochs, log_every_n_steps=1, enable_model_summary=False, enable_progress_bar=s.progress,
                callbacks=default_callbacks(run_dir, save_top_k=1, progress_bar=s.progress))


def _loader(x: np.ndarray, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    """Shuffled batches of ``x``. ``batch_size`` is per device (Lightning's convention): each of ``W`` processes
    takes batches of its ``1/W`` share of the data (Lightning's distributed sampler), and the losses gather the
    negatives of every process, so one step sees ``W x batch_size`` samples."""
    local = -(-len(x) // current().world_size)
    bs = min(batch_size, local)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(x)), batch_size=bs, shuffle=True,
        drop_last=local > bs, generator=torch.Generator().manual_seed(seed))


def _fit(s: AnomalySettings, module: nn.Module, x: np.ndarray, batch_size: int, run_dir: Path, epochs: int,
         what: str, callbacks: tuple = ()) -> None:
    """Fit (resuming from ``run_dir``); raises :class:`TimeCapReached` when ``--max-minutes`` stopped it first."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" banners per stage
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*_pytree.*")
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        trainer = fit_with_resume(_trainer_kwargs(s, run_dir, epochs), module, _loader(x, batch_size, s.seed),
                                  run_dir, extra_callbacks=callbacks)
    if stopped_by_deadline(trainer):
        raise TimeCapReached(f"{what}: stopped by --max-minutes after {trainer.current_epoch} of {epochs} epochs; "
                             f"re-run the command (with a larger --max-minutes) to resume from "
                             f"{run_dir / 'checkpoints' / 'last.ckpt'}")


def _new_encoder(s: AnomalySettings, task: Task) -> nn.Module:
    return build_encoder(task.kind, task.x_train.shape[1:], s.width, s.feature_dim, tuple(s.hidden_dims))


def _views(s: AnomalySettings, task: Task, pool: np.ndarray, strength: str = "strong") -> nn.Module:
    if task.kind == "image":
        return image_augment(task.x_train.shape[-2], strength)
    return TabularCorruption(torch.as_tensor(pool), s.corruption_rate, s.corruption_mode)


def _save(encoder: nn.Module, path: Path) -> None:
    """Write the encoder's weights atomically (main process), then wait for every process: a later stage or a
    re-run on any rank sees the file."""
    save_torch(path, encoder.state_dict())
    barrier()


def _load(s: AnomalySettings, task: Task, path: Path) -> nn.Module:
    return load_encoder_checkpoint(_new_encoder(s, task), path)


def pretrain(s: AnomalySettings, task: Task, log: Log = _print) -> nn.Module:
    """The task's pre-trained encoder: ``--encoder-checkpoint`` if given, else NT-Xent on its pool (cached)."""
    if s.encoder_checkpoint is not None:
        return _load(s, task, Path(s.encoder_checkpoint))
    out = task.pretrain_dir / "encoder.pt"
    if out.is_file():
        return _load(s, task, out)
    log(f"pre-training ({s.pretrain_epochs} epochs of NT-Xent) on {len(task.x_pool)} unlabelled samples -> {out}")
    seed_everything(s.seed)
    encoder = _new_encoder(s, task)
    head = ProjectionHead(s.feature_dim, hidden_dim=s.feature_dim, out_dim=s.projection_dim)
    steps = max(1, len(task.x_pool) // min(s.pretrain_batch_size, len(task.x_pool)))
    module = SimCLRModule(encoder, head, temperature=s.pretrain_temperature, augment=_views(s, task, task.x_pool),
                          lr=s.pretrain_lr, weight_decay=1e-4, scheduler="cosine",
                          warmup_steps=min(50, steps * s.pretrain_epochs // 10))
    t0 = time.perf_counter()
    _fit(s, module, task.x_pool, s.pretrain_batch_size, task.pretrain_dir, s.pretrain_epochs, "pre-training")
    _save(encoder, out)
    log(f"pre-training done in {time.perf_counter() - t0:.0f} s")
    return encoder


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def knn_auroc(s: AnomalySettings, encoder: nn.Module, task: Task) -> float:
    """ROC-AUC of kNN scores of ``encoder``'s features on the task's test split."""
    norm = s.knn_normalize(task.kind)
    return roc_auc(task.y_test, knn_scores(embed(encoder, task.x_test, norm), embed(encoder, task.x_train, norm),
                                           k=s.k, normalize=norm))


def finetune(s: AnomalySettings, exp: Experiment, task: Task, pretrained: nn.Module, method: str,
             log: Log = _print) -> nn.Module:
    """MSC (``method="msc"``) or compactness (``"compact"``) fine-tuning of a copy of ``pretrained``."""
    if method not in ("msc", "compact"):
        raise ValueError(f"unknown method {method!r}")
    out_dir = exp.stage_dir(method, task)
    out = out_dir / "encoder.pt"
    if out.is_file():
        return _load(s, task, out)
    seed_everything(s.seed)
    encoder = _new_encoder(s, task)
    encoder.load_state_dict(pretrained.state_dict())
    if method == "msc" and s.freeze_bn:  # BatchNorm statistics of the normal class, estimated once, then fixed
        encoder.load_state_dict(bn_adapted(pretrained, task.x_train).state_dict())
    center = normal_center(encoder, task.x_train, normalize_center=s.angular_weight > 0 or method == "compact")
    optim = dict(optimizer="adam", lr=s.finetune_lr(task.kind), weight_decay=s.weight_decay, scheduler="constant")
    x_fit, callbacks, selection = task.x_train, (), None
    if method == "msc":
        fit_idx, hold_idx = holdout_split(len(task.x_train), s.holdout_fraction, s.seed)
        x_fit = task.x_train[fit_idx]
        module: nn.Module = MeanShiftedModule(encoder, center, _views(s, task, x_fit, "mild"),
                                              temperature=s.temperature, angular_weight=s.angular_weight,
                                              freeze_bn=s.freeze_bn, **optim)
        epochs = s.epochs
        if len(hold_idx):
            selection = HeldOutSelection(task.x_train[hold_idx], s.batch_size, s.patience, s.seed)
            callbacks = (selection,)
    else:
        module, epochs = CompactnessModule(encoder, center, **optim), s.compact_epochs
    t0 = time.perf_counter()
    _fit(s, module, x_fit, s.batch_size, out_dir, epochs, f"{task.name}: {method} fine-tuning", callbacks)
    chosen = ""
    if selection is not None and selection.best_state is not None:
        encoder.load_state_dict(selection.best_state)
        chosen = (f"; epoch {selection.best_epoch} chosen (lowest MSC loss on {len(task.x_train) - len(x_fit)} "
                  f"held-out normal samples: " + " ".join(f"{v:.3f}" for v in selection.history) + ")")
    _save(encoder, out)
    log(f"{task.name}: {method} fine-tuning (up to {epochs} epochs, {len(x_fit)} normal samples) "
        f"done in {time.perf_counter() - t0:.0f} s{chosen}")
    return encoder


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_idx, holdout_idx)``: a seeded random share ``fraction`` of ``n`` samples held out (none when
    ``fraction`` is 0 or fewer than 2 would be held out; at least 2 always stay to fit on)."""
    n_hold = int(round(fraction * n))
    if n_hold < 2 or n - n_hold < 2:
        return np.arange(n), np.arange(0)
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def iter_fit(s: AnomalySettings, exp: Experiment, log: Log = _print) -> Iterator[tuple[Task, dict[str, nn.Module]]]:
    """Pre-train (if needed), print the epoch-0 sanity AUROC, fine-tune; yields each task's encoders."""
    for task in exp.tasks:
        pretrained = pretrain(s, task, log)
        sanity = knn_auroc(s, pretrained, task)
        log(f"{task.name}: epoch-0 sanity ROC-AUC of kNN on pre-trained features = {sanity:.4f}"
            + ("  (WARNING: near 0.5, the set-up looks broken)" if sanity < 0.6 else ""))
        encoders = {"pretrained": pretrained, "msc": finetune(s, exp, task, pretrained, "msc", log)}
        if s.compact_epochs > 0:
            encoders["compact"] = finetune(s, exp, task, pretrained, "compact", log)
        log(f"{task.name}: MSC ROC-AUC = {knn_auroc(s, encoders['msc'], task):.4f}")
        yield task, encoders


def fit(s: AnomalySettings, exp: Experiment, log: Log = _print) -> None:
    """Run every stage of every task (see :func:`iter_fit`)."""
    for _ in iter_fit(s, exp, log):
        pass


def pretrain_only(s: AnomalySettings, exp: Experiment, log: Log = _print) -> list[Path]:
    """The ``pretrain`` verb: pre-train each distinct encoder of the experiment; returns their paths."""
    if s.encoder_checkpoint is not None:
        raise InputError("pretrain with --encoder-checkpoint makes no sense: the checkpoint replaces pre-training")
    done: list[Path] = []
    for task in exp.tasks:
        if task.pretrain_dir / "encoder.pt" not in done:
            pretrain(s, task, log)
            done.append(task.pretrain_dir / "encoder.pt")
    return done


def load_fitted(s: AnomalySettings, exp: Experiment, task: Task) -> dict[str, nn.Module]:
    """The encoders ``fit`` saved for ``task`` (raises :class:`InputError` naming what is missing)."""
    paths = {"pretrained": Path(s.encoder_checkpoint) if s.encoder_checkpoint else task.pretrain_dir / "encoder.pt",
             "msc": exp.stage_dir("msc", task) / "encoder.pt"}
    if s.compact_epochs > 0:
        paths["compact"] = exp.stage_dir("compact", task) / "encoder.pt"
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"nothing fitted for {task.name!r} in {exp.run_dir.path} (missing {missing}); run `fit` "
                         f"first with the same --data / --run-dir / --seed / settings")
    return {k: _load(s, task, p) for k, p in paths.items()}
