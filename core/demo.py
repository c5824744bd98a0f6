"""Core demo: SimCLR (NT-Xent) pre-training of a small CNN on scikit-learn's 8x8 digits, then a linear probe.

The whole pipeline of an app in one file, on data bundled with scikit-learn (no download):

1. split the 1,797 digits 50/50 (stratified); pre-train on the training images without labels, two
   random views per image (small affine jitter, brightness, noise, cutout), NT-Xent at ``temperature``,
   through :class:`core.training.SimCLRModule` and :func:`core.training.fit_with_resume`;
2. freeze the encoder and fit a logistic-regression probe on its features of the training split,
   score it on the test split (:func:`core.metrics.linear_probe_accuracy`), with all training labels and
   with ``shots`` labels per class (:func:`core.metrics.few_shot_probe_accuracy`);
3. do the same for a randomly initialised encoder of the same architecture (the baseline), and for the
   raw pixels (a reference: on such a small, clean set a linear model on pixels is already strong);
4. report alignment and uniformity (Wang & Isola 2020) of the projections of two augmented views of the
   test images, and the effective rank (Roy & Vetterli 2007) of the centred representations;
5. plot the loss curve, the probe accuracies and a t-SNE of both encoders' test representations.

Run it alone with ``python -m core.demo [--full]`` or through the tour (``python -m tools.tour``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.encoders import ProjectionHead, SmallCNN
from core.metrics import alignment, effective_rank, few_shot_probe_accuracy, linear_probe_accuracy, uniformity
from core.tour import register_tour
from core.training import SimCLRModule, default_callbacks, fit_with_resume, seed_everything

__all__ = ["DemoConfig", "DigitsAugment", "load_digits_split", "run_core_demo", "core_demo_tour"]

DATASET = "sklearn digits 8x8"


@dataclass
class DemoConfig:
    """Hyperparameters of the core demo (quick mode; :meth:`full` is the longer run)."""

    epochs: int = 150
    batch_size: int = 256
    width: int = 32
    feature_dim: int = 128
    projection_dim: int = 64
    temperature: float = 0.5
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    test_fraction: float = 0.5
    shots: int = 5  # labelled samples per class of the few-label probe
    shot_draws: int = 10  # subsets the few-label probe averages over
    seed: int = 0
    # CPU threads for torch and BLAS during the demo; the model is tiny, so one thread is as fast as two and
    # does not collapse when the cores are shared (OpenMP spin-waits); None keeps the defaults
    threads: int | None = 1
    plot: str = "tsne"  # "tsne", "pca" or "none"
    augment: dict = field(default_factory=dict)  # DigitsAugment keyword overrides

    @classmethod
    def full(cls) -> DemoConfig:
        return cls(epochs=500, warmup_steps=50)


class DigitsAugment(nn.Module):
    """Random views of small grey-scale images, computed batch-wise on the batch's device.

    Per image: an affine jitter (rotation ``+-degrees``, scale in ``scale``, translation ``+-shift``
    pixels, bilinear, zero padding), a brightness factor in ``brightness``, with probability
    ``cutout_p`` a zeroed ``cutout x cutout`` square, and Gaussian noise of std ``noise``; clamped to [0, 1].
    These are the small-image versions of SimCLR's crop / colour / blur family (Chen et al. 2020).
    """

    def __init__(
        self, degrees: float = 15.0, scale: tuple[float, float] = (0.85, 1.15), shift: float = 1.0,
        brightness: tuple[float, float] = (0.6, 1.4), cutout: int = 3, cutout_p: float = 0.5,
        noise: float = 0.1,
    ) -> None:
        super().__init__()
        self.degrees, self.scale, self.shift = degrees, tuple(scale), shift
        self.brightness, self.cutout, self.cutout_p, self.noise = tuple(brightness), cutout, cutout_p, noise

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) images, got {tuple(x.shape)}")
        B, _, H, W = x.shape
        dev, dt = x.device, x.dtype

        def uniform(lo: float, hi: float) -> Tensor:
            return torch.empty(B, device=dev, dtype=dt).uniform_(lo, hi)

        angle = uniform(-self.degrees, self.degrees) * math.pi / 180
        s = uniform(*self.scale)
        tx, ty = uniform(-self.shift, self.shift) * 2 / W, uniform(-self.shift, self.shift) * 2 / H
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out * uniform(*self.brightness).view(B, 1, 1, 1)
        if self.cutout > 0 and self.cutout_p > 0:
            cy = torch.randint(0, H, (B, 1, 1), device=dev)
            cx = torch.randint(0, W, (B, 1, 1), device=dev)
            yy = torch.arange(H, device=dev).view(1, H, 1)
            xx = torch.arange(W, device=dev).view(1, 1, W)
            half = self.cutout // 2
            box = ((yy - cy).abs() <= half) & ((xx - cx).abs() <= half)
            box = box & (torch.rand(B, 1, 1, device=dev) < self.cutout_p)
            out = out.masked_fill(box.unsqueeze(1), 0.0)
        if self.noise > 0:
            out = out + self.noise * torch.randn_like(out)
        return out.clamp(0.0, 1.0)


def load_digits_split(test_fraction: float = 0.5, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scikit-learn's digits as (N, 1, 8, 8) float images in [0, 1], split stratified into train / test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=d.target, random_state=seed
    )
    return x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]


def _build(cfg: DemoConfig) -> tuple[SmallCNN, ProjectionHead]:
    encoder = SmallCNN(in_channels=1, width=cfg.width, out_dim=cfg.feature_dim)
    head = ProjectionHead(cfg.feature_dim, hidden_dim=cfg.feature_dim, out_dim=cfg.projection_dim)
    return encoder, head


@torch.no_grad()
def _embed(module: SimCLRModule, x: Tensor, augment: nn.Module, seed: int) -> dict[str, Tensor]:
    """Representations of ``x`` and projections of two augmented views (eval mode, fixed RNG)."""
    module.eval()
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        h = module(x)
        z1, z2 = module.project(augment(x)), module.project(augment(x))
    return {"h": h, "z1": z1, "z2": z2}


def _diagnostics(emb: dict[str, Tensor]) -> dict[str, float]:
    h = emb["h"]
    return {
        "alignment": float(alignment(emb["z1"], emb["z2"])),
        "uniformity": float(uniformity(emb["z1"])),
        "effective_rank": float(effective_rank(h - h.mean(0))),
    }


def _read_losses(run_dir: Path) -> list[tuple[int, float]]:
    rows: list[tuple[int, float]] = []
    for f in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("train/loss"):
                    rows.append((int(r["step"]), float(r["train/loss"])))
    return rows


def _plot(path: Path, losses: list[tuple[int, float]], acc: dict[str, float], few: dict[str, float], shots: int,
          h_learned: Tensor, h_random: Tensor, y: Tensor, method: str, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if method == "none" else 4
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4))
    ax = axes[0]
    if losses:
        s, v = zip(*losses)
        ax.plot(s, v, lw=1)
    ax.set(title="NT-Xent training loss", xlabel="step", ylabel="loss")
    ax = axes[1]
    names = list(acc)
    pos = np.arange(len(names))
    for k, (label, values) in enumerate((("all labels", acc), (f"{shots} labels / class", few))):
        bars = ax.bar(pos + (k - 0.5) * 0.38, [values[n] for n in names], 0.38, label=label,
                      color=["tab:blue", "tab:orange"][k])
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(pos, names)
    ax.set(title="linear probe, test accuracy", ylim=(0, 1.1))
    ax.legend(loc="lower right", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    if method != "none":
        for ax, h, title in ((axes[2], h_learned, "contrastive"), (axes[3], h_random, "random init")):
            xy = _project_2d(h.numpy(), method, seed)
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=y.numpy(), cmap="tab10", s=4)
            name = {"tsne": "t-SNE", "pca": "PCA"}[method]
            ax.set(title=f"{name} of test representations: {title}", xticks=[], yticks=[])
        fig.colorbar(sc, ax=axes[3], ticks=range(10))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _project_2d(h: np.ndarray, method: str, seed: int) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler

    h = StandardScaler().fit_transform(h)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, init="pca", perplexity=30, max_iter=500, random_state=seed).fit_transform(h)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(h)
    raise ValueError(f"plot must be 'tsne', 'pca' or 'none', got {method!r}")


def run_core_demo(out_dir: str | Path, cfg: DemoConfig | None = None) -> dict:
    """Train, probe and plot; returns a dict of results (also written to ``out_dir/results.json``).

    Keys: ``probe_acc`` and ``few_shot_acc`` (each with ``contrastive``, ``random_init``, ``raw_pixels``),
    ``learned`` / ``random`` (``alignment``, ``uniformity``, ``effective_rank``), ``train_seconds``,
    ``seconds``, ``final_loss``, ``steps``, ``plot`` (path or ``None``), ``config``.
    """
    cfg = cfg or DemoConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.threads:
        return _run(out_dir, cfg)
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with threadpool_limits(limits=cfg.threads):  # NumPy / scikit-learn BLAS and OpenMP pools
            return _run(out_dir, cfg)
    finally:
        torch.set_num_threads(previous)  # the tour runs other apps in this process


def _run(out_dir: Path, cfg: DemoConfig) -> dict:
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(cfg.test_fraction, cfg.seed)
    augment = DigitsAugment(**cfg.augment)

    # the random baseline: same architecture, same seed stream, never trained
    seed_everything(cfg.seed)
    random_module = SimCLRModule(*_build(cfg), temperature=cfg.temperature)
    seed_everything(cfg.seed)
    module = SimCLRModule(
        *_build(cfg), temperature=cfg.temperature, augment=augment, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, scheduler="cosine",
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_tr), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    run_dir = out_dir / "run"
    t_train = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        # a few checkpoints, not one per epoch: the demo's run is short and its directory a by-product
        callbacks = default_callbacks(run_dir, every_n_epochs=max(1, cfg.epochs // 3), progress_bar=False)
        trainer = fit_with_resume(
            dict(max_epochs=cfg.epochs, accelerator="cpu", devices=1, log_every_n_steps=1,
                 enable_model_summary=False, enable_progress_bar=False, callbacks=callbacks),
            module, loader, run_dir,
        )
    train_seconds = time.perf_counter() - t_train

    emb = {name: {split: _embed(m, x, augment, cfg.seed + 1) for split, x in (("train", x_tr), ("test", x_te))}
           for name, m in (("learned", module), ("random", random_module))}
    features = {"contrastive": (emb["learned"]["train"]["h"], emb["learned"]["test"]["h"]),
                "random init": (emb["random"]["train"]["h"], emb["random"]["test"]["h"]),
                "raw pixels": (x_tr.flatten(1), x_te.flatten(1))}
    acc = {k: linear_probe_accuracy(f_tr, y_tr, f_te, y_te) for k, (f_tr, f_te) in features.items()}
    few = {k: few_shot_probe_accuracy(f_tr, y_tr, f_te, y_te, shots=cfg.shots, draws=cfg.shot_draws, seed=cfg.seed)
           for k, (f_tr, f_te) in features.items()}
    diag = {name: _diagnostics(emb[name]["test"]) for name in ("learned", "random")}
    losses = _read_losses(run_dir)
    plot_path = None
    if cfg.plot != "none":
        plot_path = out_dir / "core_demo.png"
        _plot(plot_path, losses, acc, few, cfg.shots, emb["learned"]["test"]["h"], emb["random"]["test"]["h"], y_te,
              cfg.plot, cfg.seed)
    results = {
        "probe_acc": {"contrastive": acc["contrastive"], "random_init": acc["random init"],
                      "raw_pixels": acc["raw pixels"]},
        "few_shot_acc": {"contrastive": few["contrastive"], "random_init": few["random init"],
                         "raw_pixels": few["raw pixels"]},
        "learned": diag["learned"],
        "random": diag["random"],
        "final_loss": losses[-1][1] if losses else float("nan"),
        "steps": int(trainer.global_step),
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - t0,
        "plot": str(plot_path) if plot_path else None,
        "config": asdict(cfg),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


@register_tour("core")
def core_demo_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Tour entry: the core demo as result rows (probe accuracy, alignment, uniformity, effective rank)."""
    r = run_core_demo(out_dir, DemoConfig() if quick else DemoConfig.full())
    common = {"app": "core (SimCLR demo)", "dataset": DATASET, "seconds": r["seconds"]}
    plots = [r["plot"]] if r["plot"] else []
    return [
        {**common, "metric": "linear-probe accuracy (test)", "value": r["probe_acc"]["contrastive"],
         "baseline": r["probe_acc"]["random_init"], "baseline_name": "random-init encoder", "plots": plots},
        {**common, "metric": f"linear-probe accuracy, {r['config']['shots']} labels/class",
         "value": r["few_shot_acc"]["contrastive"], "baseline": r["few_shot_acc"]["random_init"],
         "baseline_name": "random-init encoder"},
        {**common, "metric": "linear-probe accuracy (test)", "value": r["probe_acc"]["contrastive"],
         "baseline": r["probe_acc"]["raw_pixels"], "baseline_name": "raw pixels"},
        {**common, "metric": "alignment, lower is better", "value": r["learned"]["alignment"],
         "baseline": r["random"]["alignment"], "baseline_name": "random-init encoder"},
        {**common, "metric": "uniformity, lower is better", "value": r["learned"]["uniformity"],
         "baseline": r["random"]["uniformity"], "baseline_name": "random-init encoder"},
        {**common, "metric": "effective rank of h", "value": r["learned"]["effective_rank"],
         "baseline": r["random"]["effective_rank"], "baseline_name": "random-init encoder"},
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/core_demo", help="output directory")
    p.add_argument("--full", action="store_true", help="the longer run (DemoConfig.full())")
    p.add_argument("--epochs", type=int, default=None)
    a = p.parse_args()
    cfg = DemoConfig.full() if a.full else DemoConfig()
    if a.epochs is not None:
        cfg.epochs = a.epochs
    r = run_core_demo(Path(a.out) / time.strftime("%Y%m%d-%H%M%S"), cfg)
    print(json.dumps({k: v for k, v in r.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
