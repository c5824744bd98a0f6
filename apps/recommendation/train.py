"""Training data, loaders and the ``fit`` stage (one model per method and seed, early stopping on validation
NDCG@10, resumable).

Run-directory layout (``RUN_DIR``, one setting per folder: the runner's ``settings.json`` refuses others)::

    <method>/seed<S>/model.pt          weights of the best validation NDCG@10 (written when the run ends)
    <method>/seed<S>/fit.json          epochs run, best epoch, wall time, validation history
    <method>/seed<S>/history.jsonl     one line per epoch (train seconds, validation metrics when evaluated)
    <method>/seed<S>/checkpoints/      last.ckpt (resume point) + the latest epoch; best/ holds the best one

A method whose ``model.pt`` exists is skipped, so re-running ``fit`` after an interruption continues where it
stopped (mid-run from ``last.ckpt`` through :func:`core.training.fit_with_resume`); a method stopped by the
``--max-minutes`` cap is continued from its last checkpoint when ``fit`` runs again.

With ``--devices N`` (DDP) every rank trains on its share of the length-bucketed batches
(:class:`LengthBucketSampler` shards them by rank: Lightning cannot put its distributed sampler into a custom
batch sampler) and validates on every user (the ranks then agree on early stopping and the best model).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from apps.recommendation.config import RecConfig
from apps.recommendation.data import SequenceData, load_sequences, sample_users
from apps.recommendation.model import SeqRecModule
from core.app import InputError, current, is_main_process, load_torch, read_json, save_torch, write_json
from core.training import MovableCheckpoint, default_callbacks, fit_with_resume, seed_everything, stopped_by_deadline

__all__ = ["Experiment", "prepare", "TrainBatches", "EvalBatches", "fit_method", "load_model", "build_module",
           "train_windows", "train_prefixes", "best_of", "LengthBucketSampler", "train_loader", "eval_loader",
           "read_fit"]


@dataclass
class Experiment:
    data: SequenceData
    train_rows: list[tuple[np.ndarray, np.ndarray]]  # (inputs, next-item targets) windows
    prefixes: dict[int, np.ndarray]  # target item -> (k, 2) array of (user index, end position) of train prefixes
    train_seqs: list[np.ndarray]  # per user: s[:-2]


def train_windows(train: np.ndarray, max_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """All-position training rows of one training sequence: inputs ``train[:-1]``, targets ``train[1:]``, cut
    from the end into windows of at most ``max_len`` targets so every target is trained exactly once."""
    x, y = train[:-1], train[1:]
    rows = []
    end = len(y)
    while end > 0:
        start = max(0, end - max_len)
        rows.append((x[start:end], y[start:end]))
        end = start
    return rows


def train_prefixes(train: np.ndarray, max_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The papers' (RecBole's) training samples of one training sequence: one row per prefix ``train[:p]`` (its
    last ``max_len`` items), whose only target is the next item ``train[p]`` (the other target slots are 0, so
    the loss and the contrastive views see exactly one sample per prefix)."""
    rows = []
    for p in range(1, len(train)):
        x = train[max(0, p - max_len): p]
        y = np.zeros_like(x)
        y[-1] = train[p]
        rows.append((x, y))
    return rows


def keep_popular_items(data: SequenceData, k: int) -> SequenceData:
    """The ``k`` most frequent items only (ties: smaller id), re-numbered 1..k in their old order; users left
    with fewer than 3 interactions are dropped. A small dense problem for quick runs."""
    counts = np.bincount(np.concatenate(data.sequences), minlength=data.n_items + 1)
    counts[0] = -1
    keep = np.sort(np.argsort(-counts, kind="stable")[:k])
    new_id = np.zeros(data.n_items + 1, dtype=np.int64)
    new_id[keep] = np.arange(1, len(keep) + 1)
    seqs = [new_id[s][new_id[s] > 0] for s in data.sequences]
    ok = [i for i, s in enumerate(seqs) if len(s) >= 3]
    if not ok:
        raise InputError(f"max_items={k} leaves no user with >= 3 interactions")
    return SequenceData(name=f"{data.name}_top{k}items", users=[data.users[i] for i in ok],
                        sequences=[seqs[i] for i in ok], item_labels=[data.item_labels[i - 1] for i in keep],
                        dropped_users=data.dropped_users + len(seqs) - len(ok), source=data.source,
                        sample=data.sample)


def prepare(cfg: RecConfig) -> Experiment:
    """Load the data (optionally a user subset), split it leave-one-out and build the training rows."""
    cfg.validate()
    data = load_sequences(cfg.data)
    if cfg.max_users is not None:
        data = sample_users(data, cfg.max_users, cfg.sample_seed)
    if cfg.max_items is not None and cfg.max_items < data.n_items:
        data = keep_popular_items(data, cfg.max_items)
    train_seqs = [s[:-2] for s in data.sequences]
    make_rows = train_windows if cfg.training == "all_positions" else train_prefixes
    rows = [r for t in train_seqs if len(t) >= 2 for r in make_rows(t, cfg.max_len)]
    if not rows:
        raise InputError(f"{data.source}: no user has 4+ interactions, so there is nothing to train on")
    users, ends, targets = [], [], []
    for u, t in enumerate(train_seqs):
        for p in range(1, len(t)):
            users.append(u)
            ends.append(p)
            targets.append(int(t[p]))
    order = np.argsort(targets, kind="stable")
    tg = np.asarray(targets)[order]
    pairs = np.stack([np.asarray(users)[order], np.asarray(ends)[order]], 1)
    cuts = np.flatnonzero(np.diff(tg)) + 1
    prefixes = {int(g[0]): p for g, p in zip(np.split(tg, cuts), np.split(pairs, cuts))}
    return Experiment(data, rows, prefixes, train_seqs)


def _pad(seqs: list[np.ndarray], width: int | None = None) -> torch.Tensor:
    width = width or max(1, max(len(s) for s in seqs))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


class TrainBatches:
    """Collate function of training rows: right-padded inputs / targets, plus DuoRec's same-target prefixes."""

    def __init__(self, exp: Experiment, max_len: int, same_target: bool, seed: int) -> None:
        self.exp, self.max_len, self.same_target, self.seed = exp, max_len, same_target, seed

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.exp.train_rows[i] for i in idx]
        batch = {"items": _pad([r[0] for r in rows]), "targets": _pad([r[1] for r in rows]),
                 "lengths": torch.tensor([len(r[0]) for r in rows])}
        if self.same_target:
            # the partners are drawn from (seed, the batch's rows): the same batch gets the same partners whatever
            # came before it, so a run resumed from a checkpoint (or a loader worker) draws what an unbroken run
            # draws; the shuffled batches of each epoch differ, and so do their draws
            rng = np.random.default_rng([self.seed, 7919, *map(int, idx)])
            last = np.array([int(r[1][-1]) for r in rows])
            same = []
            for r, g in zip(rows, last):
                cand = self.exp.prefixes[int(g)]
                u, p = cand[rng.integers(len(cand))]
                seq = self.exp.train_seqs[u][max(0, p - self.max_len): p]
                # a row whose target has a single training occurrence is its own (dropout-view) partner
                same.append(seq if len(cand) > 1 else r[0])
            batch["same_items"] = _pad(same)
            batch["same_lengths"] = torch.tensor([len(s) for s in same])
            batch["last_target"] = torch.from_numpy(last)
        return batch


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of rows of similar length (a shuffled order, sorted by length inside pools of ``pool`` batches,
    then the batches shuffled): padding to the batch's longest row wastes little compute. Deterministic per
    (seed, epoch); Lightning calls :meth:`set_epoch` (the loader of :func:`train_loader` passes this sampler as its
    ``sampler``, which Lightning sets; a ``batch_sampler`` it would leave at epoch 0).

    Under DDP each rank takes every ``world``-th batch of the same epoch order (``batches[rank::world]``, all ranks
    the same number), like Lightning's distributed sampler: ``batch_size`` is per device. ``rank`` / ``world``
    default to the initialised process group's (one process: 0 / 1)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, pool: int = 50, drop_last: bool = True,
                 rank: int | None = None, world: int | None = None):
        self.lengths, self.batch_size, self.seed, self.pool = np.asarray(lengths), batch_size, seed, pool
        self.drop_last, self.epoch = drop_last and len(lengths) > batch_size, 0
        self._rank, self._world = rank, world

    def _rank_world(self) -> tuple[int, int]:
        if self._world is not None:
            return int(self._rank or 0), int(self._world)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.lengths))
        step = self.batch_size * self.pool
        batches = []
        for a in range(0, len(perm), step):
            chunk = perm[a: a + step]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[b: b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        rank, world = self._rank_world()
        batches = self._batches()
        mine = batches[rank::world][: len(batches) // world] if world > 1 else batches
        return iter([b.tolist() for b in mine])

    def _total(self) -> int:
        n = len(self.lengths)
        if self.drop_last:
            return sum((min(n - a, self.batch_size * self.pool)) // self.batch_size
                       for a in range(0, n, self.batch_size * self.pool))
        return sum(-(-min(n - a, self.batch_size * self.pool) // self.batch_size)
                   for a in range(0, n, self.batch_size * self.pool))

    def __len__(self) -> int:
        return self._total() // self._rank_world()[1]


class _RowIndex(torch.utils.data.Dataset):
    """The dataset of :func:`train_loader`: an item is a batch's list of row indices (collated by
    :class:`TrainBatches`)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: list[int]) -> list[int]:
        return idx


class EvalBatches:
    """Collate function of evaluation users: last ``max_len`` items in, target, and the items to exclude."""

    def __init__(self, inputs: list[np.ndarray], targets: np.ndarray, max_len: int) -> None:
        self.inputs, self.targets, self.max_len = inputs, targets, max_len

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        seqs = [self.inputs[i][-self.max_len:] for i in idx]
        return {"items": _pad(seqs), "lengths": torch.tensor([len(s) for s in seqs]),
                "target": torch.from_numpy(self.targets[idx]), "seen": _pad([self.inputs[i] for i in idx])}

    def __len__(self) -> int:
        return len(self.inputs)


def eval_split(exp: Experiment, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(input sequences, target items) of the ``"valid"`` or ``"test"`` case of every user."""
    if split == "valid":
        return [s[:-2] for s in exp.data.sequences], np.array([s[-2] for s in exp.data.sequences])
    if split == "test":
        return [s[:-1] for s in exp.data.sequences], np.array([s[-1] for s in exp.data.sequences])
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def eval_loader(exp: Experiment, split: str, cfg: RecConfig) -> torch.utils.data.DataLoader:
    """Users sorted by input length (little padding); metrics are order-free. ``loader.dataset`` is the order."""
    inputs, targets = eval_split(exp, split)
    collate = EvalBatches(inputs, targets, cfg.max_len)
    order = np.argsort([min(len(s), cfg.max_len) for s in inputs], kind="stable").tolist()
    return torch.utils.data.DataLoader(order, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=collate)


def train_loader(cfg: RecConfig, exp: Experiment, method: str, seed: int) -> torch.utils.data.DataLoader:
    """Length-bucketed training batches. The :class:`LengthBucketSampler` yields whole batches as the loader's
    ``sampler`` (``batch_size=None``), so Lightning calls its ``set_epoch`` (a new order every epoch); under DDP it
    yields this rank's share."""
    sampler = LengthBucketSampler(np.array([len(r[0]) for r in exp.train_rows]),
                                  min(cfg.batch_size, len(exp.train_rows)), seed, pool=cfg.bucket_pool)
    return torch.utils.data.DataLoader(_RowIndex(len(exp.train_rows)), sampler=sampler, batch_size=None,
                                       collate_fn=TrainBatches(exp, cfg.max_len, method == "duorec", seed))


def build_module(cfg: RecConfig, exp: Experiment, method: str) -> SeqRecModule:
    return SeqRecModule(exp.data.n_items, method, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
                        max_len=cfg.max_len, dropout=cfg.dropout, reg_weight=cfg.reg_weight, tau=cfg.tau,
                        eta=cfg.crop_eta, gamma=cfg.mask_gamma, reorder_beta=cfg.reorder_beta, lr=cfg.lr,
                        weight_decay=cfg.weight_decay, exclude_seen=cfg.exclude_seen, cl_positions=cfg.cl_positions,
                        contrast_loss=cfg.contrast_loss,
                        **cfg.method_weights(method))


class History(Callback):
    """Appends one JSON line per epoch (train seconds, validation metrics when evaluated) to ``history.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path, self.t0 = path, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0, self.val = time.perf_counter(), None

    # Lightning validates at the end of the epoch's last batch, before on_train_epoch_end
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.v0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.val = (time.perf_counter() - self.v0, m)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        total = time.perf_counter() - self.t0
        rec: dict = {"epoch": trainer.current_epoch + 1}
        if self.val is not None:
            rec.update(train_seconds=total - self.val[0], val_seconds=self.val[0], val=self.val[1])
        else:
            rec["train_seconds"] = total
        self._write(rec)

    def _write(self, rec: dict) -> None:
        if not is_main_process():  # DDP: rank 0 writes
            return
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    recs: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            recs[r["epoch"]] = r  # a resumed run may repeat an epoch: keep the latest record
    return [recs[k] for k in sorted(recs)]


def best_of(history: list[dict]) -> dict:
    """``{"best_val_ndcg@10", "best_epoch"}`` of a run's history: the first epoch with the highest validation
    NDCG@10, the one the best-model checkpoint keeps (it saves on strict improvement); None without validation."""
    best = max((h for h in history if "val" in h), key=lambda h: h["val"].get("ndcg@10", -1), default=None)
    if best is None:
        return {"best_val_ndcg@10": None, "best_epoch": None}
    return {"best_val_ndcg@10": float(best["val"]["ndcg@10"]), "best_epoch": best["epoch"]}


def read_fit(folder: Path) -> dict | None:
    """The ``fit.json`` of a method's folder (``None`` if it has none); its best-epoch fields recomputed from the
    history (older files may carry a stale score)."""
    path = Path(folder) / "fit.json"
    if not path.is_file():
        return None
    info = read_json(path, "fit summary")
    info.update(best_of(info.get("history", [])))
    return info


def _stopped_by_time(folder: Path) -> bool:
    try:
        return bool((read_fit(folder) or {}).get("stopped_by_time", False))
    except InputError:
        return False


def fit_method(cfg: RecConfig, exp: Experiment, method: str, out: Path, seed: int | None = None, log=print) -> Path:
    """Train one method into ``out`` (``<run-dir>/<method>/seed<S>``); returns the path of ``model.pt``.

    Skipped if its ``model.pt`` exists, unless that run was stopped by the ``--max-minutes`` cap (the runner's
    deadline, which :func:`core.training.fit_with_resume` applies at epoch ends): then it continues from its
    last checkpoint. The hardware (accelerator, devices, strategy, precision) comes from the runner too."""
    seed = cfg.seed if seed is None else seed
    out = Path(out)
    model_path = out / "model.pt"
    if model_path.is_file():
        if not _stopped_by_time(out):
            return model_path
        log(f"{method} (seed {seed}) was stopped by the time cap: continuing from its last checkpoint")
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    module = build_module(cfg, exp, method)
    loader = train_loader(cfg, exp, method, seed)
    # weights only (3.5 MB on Beauty instead of 11 MB with Adam's state): it is only ever loaded as weights
    best = MovableCheckpoint(dirpath=out / "checkpoints" / "best", filename="best", monitor="val/ndcg@10", mode="max",
                           save_top_k=1, save_last=False, save_weights_only=True)
    # `best` first: Lightning runs checkpoint callbacks in list order at each epoch end, and last.ckpt stores every
    # callback's state; after the resumable one, `best` would be stored with the previous epoch's best score, and a
    # continued run would then overwrite best.ckpt with any weights above that older score (test)
    callbacks = [best, *default_callbacks(out, save_top_k=1, progress_bar=cfg.progress),
                 EarlyStopping(monitor="val/ndcg@10", mode="max", patience=cfg.patience,
                               check_on_train_epoch_end=False),
                 History(out / "history.jsonl")]
    # no accelerator / devices / time cap here: fit_with_resume takes them from the runner (--accelerator,
    # --devices, --max-minutes). use_distributed_sampler=False: the training sampler shards itself by rank and
    # every rank validates on every user
    trainer_kwargs = dict(max_epochs=cfg.epochs, log_every_n_steps=max(1, min(20, len(loader))),
                          enable_model_summary=False, enable_progress_bar=cfg.progress, use_distributed_sampler=False,
                          check_val_every_n_epoch=cfg.eval_every, num_sanity_val_steps=0, callbacks=callbacks)
    hardware = current()
    if method == "mclrec" and hardware.distributed and hardware.resolved_strategy() == "ddp":
        # MCLRec's three steps per batch each leave one parameter group out of the loss (the augmenters in the
        # encoder steps, the encoder in the augmenter step): DDP must look for unused parameters at each backward
        trainer_kwargs["strategy"] = "ddp_find_unused_parameters_true"
    log(f"fit {method} (seed {seed}) on {len(exp.train_rows)} training rows, "
        f"{sum(int((r[1] > 0).sum()) for r in exp.train_rows)} next-item targets, {exp.data.n_items} items -> {out}")
    t0 = time.perf_counter()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*_pytree.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        trainer = fit_with_resume(trainer_kwargs, module, (loader, eval_loader(exp, "valid", cfg)), out)
    seconds = time.perf_counter() - t0
    hist = read_history(out / "history.jsonl")
    if best.best_model_path:
        module.load_state_dict(load_torch(best.best_model_path)["state_dict"])
    info = {"method": method, "seed": seed, "epochs_run": trainer.current_epoch,
            "stopped_early": trainer.current_epoch < cfg.epochs, "accelerator": str(trainer.strategy.root_device),
            "devices": trainer.world_size,
            "stopped_by_time": stopped_by_deadline(trainer),
            **best_of(hist),
            "fit_seconds_this_attempt": seconds,
            "train_seconds_total": sum(h["train_seconds"] for h in hist),
            "val_seconds_total": sum(h.get("val_seconds", 0.0) for h in hist),
            "history": hist}
    write_json(out / "fit.json", info)
    save_torch(model_path, {k: v.detach().cpu() for k, v in module.state_dict().items()})
    best_txt = ("no validation before the stop (the last weights are kept)" if info["best_val_ndcg@10"] is None
                else f"best validation NDCG@10 {info['best_val_ndcg@10']:.4f} at epoch {info['best_epoch']}")
    stop = ", stopped by the time cap (re-run to continue)" if info["stopped_by_time"] else ""
    log(f"{method} (seed {seed}): {info['epochs_run']} epochs, {best_txt}, {seconds:.0f} s{stop}")
    return model_path


def load_model(cfg: RecConfig, exp: Experiment, folder: Path, method: str) -> SeqRecModule:
    """The model ``fit`` saved in ``folder`` (raises :class:`InputError` naming what is missing)."""
    path = Path(folder) / "model.pt"
    if not path.is_file():
        raise InputError(f"nothing fitted for {method} in {Path(folder).parent.parent} (missing {path}); run `fit` "
                         "first with the same --data / --run-dir / --seed / settings")
    module = build_module(cfg, exp, method)
    module.load_state_dict(load_torch(path))
    return module.eval()
