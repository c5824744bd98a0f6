"""Settings of the tracking app: one dataclass, a quick preset, YAML overrides, validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.tracking.data import DataError
from apps.tracking.simulate import SimConfig
from core.training.options import load_yaml_options

__all__ = ["TrackingConfig", "HELP", "load_yaml", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class TrackingConfig:
    """Every option of ``python -m apps.tracking`` (see :data:`HELP`)."""

    data: str | None = None
    run_dir: str = "runs/tracking"
    train_source: str = "sim"
    train_events: int = 80
    train_pileup: list[float] = field(default_factory=lambda: [5.0, 10.0])
    eval_pileup: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0])
    eval_events: int = 5
    particles_per_vertex: float = 50.0
    pt_min: float = 0.4
    pt_max: float = 50.0
    pt_alpha: float = 3.0
    eta_max: float = 3.0
    bfield: float = 2.0
    hit_resolution: float = 0.05
    noise_fraction: float = 0.1
    multiple_scattering: bool = True
    material: float = 0.02
    embed_dim: int = 12
    embed_hidden: int = 128
    embed_depth: int = 3
    embed_epochs: int = 6
    embed_temperature: float = 0.1
    embed_anchors: int = 1024
    embed_lr: float = 1e-3
    k: int = 12
    gnn_hidden: int = 32
    gnn_layers: int = 3
    gnn_aggr: str = "mean+max"
    gnn_epochs: int = 20
    lr: float = 3e-3
    edge_tau: float = 0.3
    focal_gamma: float = 1.0
    beta_focal: float = 0.2
    beta_contrastive: float = 1.0
    edge_cut: float | None = None
    min_hits: int = 3
    builder: str = "learned"
    cluster_candidates: int = 32
    cluster_hops: int = 6
    cluster_cut: float = 0.5
    cluster_dim: int = 32
    cluster_layers: int = 2
    cluster_pivots: int = 512
    cluster_epochs: int = 6
    cluster_lr: float = 2e-3
    cluster_threshold: float | None = None
    dbscan_eps: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.03, 0.05, 0.08])
    seed: int = 0
    threads: int | None = None
    progress: bool = True

    @classmethod
    def quick(cls) -> TrackingConfig:
        """Few small simulated events and epochs, one thread: trains and evaluates in under 2 minutes on 2 CPU cores."""
        return cls(run_dir="runs/tracking_quick", train_events=12, train_pileup=[5.0], eval_events=1,
                   embed_epochs=2, embed_hidden=64, gnn_epochs=8, gnn_hidden=24, gnn_layers=2,
                   cluster_epochs=8, cluster_pivots=256, cluster_dim=24, cluster_candidates=24,
                   dbscan_eps=[0.02, 0.05], threads=1)

    def sim(self, pileup: float) -> SimConfig:
        return SimConfig(pileup=pileup, particles_per_vertex=self.particles_per_vertex, pt_min=self.pt_min,
                         pt_max=self.pt_max, pt_alpha=self.pt_alpha, eta_max=self.eta_max, bfield=self.bfield,
                         hit_resolution=self.hit_resolution, noise_fraction=self.noise_fraction,
                         multiple_scattering=self.multiple_scattering, material=self.material)

    def validate(self) -> TrackingConfig:
        """Raise :class:`DataError` for settings that cannot work."""
        for name in ("train_events", "eval_events", "embed_dim", "embed_hidden", "embed_depth", "embed_epochs",
                     "embed_anchors", "k", "gnn_hidden", "gnn_layers", "gnn_epochs", "min_hits",
                     "cluster_candidates", "cluster_dim", "cluster_layers", "cluster_pivots", "cluster_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{name} must be a positive integer, got {v!r}")
        if not self.gnn_aggr or any(a not in ("mean", "max", "sum", "min") for a in self.gnn_aggr.split("+")):
            raise DataError(f"gnn_aggr must be mean, max, sum, min or a '+'-joined combination, got {self.gnn_aggr!r}")
        if self.builder not in ("chain", "cc", "learned"):
            raise DataError(f"builder must be 'chain', 'cc' or 'learned', got {self.builder!r}")
        if self.cluster_candidates < 2:
            raise DataError(f"cluster_candidates must be >= 2, got {self.cluster_candidates}")
        if self.cluster_dim % 4:
            raise DataError(f"cluster_dim must be a multiple of 4 (4 attention heads), got {self.cluster_dim}")
        if not isinstance(self.cluster_hops, int) or self.cluster_hops < 0:
            raise DataError(f"cluster_hops must be an integer >= 0, got {self.cluster_hops!r}")
        if not 0 <= self.cluster_cut < 1:
            raise DataError(f"cluster_cut must be in [0, 1), got {self.cluster_cut}")
        if self.cluster_threshold is not None and not 0 < self.cluster_threshold < 1:
            raise DataError(f"cluster_threshold must be in (0, 1), got {self.cluster_threshold}")
        if self.train_source not in ("sim", "data"):
            raise DataError(f"train_source must be 'sim' or 'data', got {self.train_source!r}")
        if self.embed_dim < 2:
            raise DataError(f"embed_dim must be >= 2, got {self.embed_dim}")
        if self.gnn_hidden < 2:
            raise DataError(f"gnn_hidden must be >= 2, got {self.gnn_hidden}")
        for name in ("lr", "embed_lr", "embed_temperature", "edge_tau", "cluster_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise DataError(f"{name} must be a positive number, got {v!r}")
        for name in ("focal_gamma", "beta_focal", "beta_contrastive"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise DataError(f"{name} must be a number >= 0, got {v!r}")
        if self.beta_focal == 0 and self.beta_contrastive == 0:
            raise DataError("beta_focal and beta_contrastive are both 0: the GNN would have no loss")
        if self.edge_cut is not None and not 0 < self.edge_cut < 1:
            raise DataError(f"edge_cut must be in (0, 1), got {self.edge_cut}")
        if not self.dbscan_eps or any(not (isinstance(e, (int, float)) and math.isfinite(e) and e > 0)
                                      for e in self.dbscan_eps):
            raise DataError(f"dbscan_eps must be a non-empty list of positive numbers, got {self.dbscan_eps}")
        if not self.train_pileup:
            raise DataError("train_pileup must list at least one pile-up level")
        for p in list(self.train_pileup) + list(self.eval_pileup):
            self.sim(p).validate()
        if self.threads is not None and self.threads < 1:
            raise DataError(f"threads must be >= 1, got {self.threads}")
        if self.data is not None and str(self.data).strip() == "":
            raise DataError("the data path is empty")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HELP: dict[str, str] = {
    "data": "TrackML data: a folder of eventXXXX-{hits,truth,particles}.csv[.gz] files (+ detectors.csv[.gz] "
            "there or in its parent) or one event prefix (folder/event000000001); evaluated as the 'real' data "
            "set, and its geometry is the one simulated. Default: the embedded 5,527-hit subset of TrackML "
            "event 1 in shared_data/tracking/",
    "run_dir": "run directory (models, checkpoints, report.json/report.md/plots); a re-run resumes there",
    "train_source": "'sim': train on simulated events on the data's detector geometry; 'data': train on the "
                    "events of --data (they need truth files), holding out the last fifth (at least one) for "
                    "evaluation",
    "train_events": "number of simulated training events (split evenly over --train-pileup)",
    "train_pileup": "pile-up levels (mean number of collisions per event) of the training events",
    "eval_pileup": "pile-up levels of the simulated test events (one data set each; empty = real data only)",
    "eval_events": "simulated test events per pile-up level (seeds disjoint from the training events)",
    "particles_per_vertex": "mean charged particles per collision (TrackML: ~50, so pile-up 200 ~ 10k particles, "
                            "~110k hits)",
    "pt_min": "simulator: lowest transverse momentum (GeV)",
    "pt_max": "simulator: highest transverse momentum (GeV)",
    "pt_alpha": "simulator: pT spectrum dN/dpT ~ pT^-alpha",
    "eta_max": "simulator: pseudo-rapidity range |eta| <= eta_max",
    "bfield": "simulator: solenoid field (tesla; TrackML ~2)",
    "hit_resolution": "simulator: Gaussian hit smearing in the sensor plane (mm)",
    "noise_fraction": "simulator: share of all hits that are noise (random points on the sensors)",
    "multiple_scattering": "simulator: Highland multiple scattering at each sensor crossing",
    "material": "simulator: thickness of each sensor layer in radiation lengths (x/X0)",
    "embed_dim": "dimension of the hit embedding (metric space of the kNN graph)",
    "embed_hidden": "width of the hit-embedding MLP",
    "embed_depth": "hidden layers of the hit-embedding MLP",
    "embed_epochs": "epochs of contrastive (SupCon with particle-id labels) embedding training",
    "embed_temperature": "temperature of the embedding's contrastive loss",
    "embed_anchors": "anchor hits sampled per event for the embedding loss (candidates: all hits)",
    "k": "neighbours per hit in the embedding kNN graph",
    "gnn_hidden": "width of the GNN (node and message MLPs)",
    "gnn_layers": "message-passing layers of the GNN",
    "gnn_aggr": "neighbour aggregation of the GNN layers: 'mean' (HyperTrack), 'max', 'sum' or a '+'-joined "
                "combination such as 'mean+max' (concatenated)",
    "gnn_epochs": "epochs of GNN edge-classifier training",
    "lr": "AdamW learning rate of the GNN (linear warm-up over the first 5 percent of the steps, then cosine decay)",
    "embed_lr": "AdamW learning rate of the hit embedding (same schedule)",
    "edge_tau": "temperature of HyperTrack's per-particle edge contrastive loss (the paper: 0.3)",
    "focal_gamma": "gamma of the class-balanced focal edge loss (the paper: 1)",
    "beta_focal": "weight of the focal edge loss (the paper: 0.2)",
    "beta_contrastive": "weight of the per-particle edge contrastive loss (the paper: 1.0)",
    "edge_cut": "edge-score cut for track building (both builders); default: the cuts with the best TrackML score "
                "on training events, chosen by fit from 0.3 ... 0.9",
    "min_hits": "smallest reconstructed track; smaller clusters are split into single hits",
    "builder": "track builder of the headline method in the report: 'chain' (best-neighbour chaining), 'cc' "
               "(edge-score cut + connected components) or 'learned' (the set-transformer pivot clusterer); all "
               "three are always evaluated, the others are reported as baselines",
    "cluster_candidates": "learned clusterer: candidate set size per pivot (the pivot + its nearest hits in the "
                          "embedding)",
    "cluster_hops": "learned clusterer: candidates are first the hits within this many hops over the GNN edges "
                    "with score > --cluster-cut (then the nearest hits in the embedding); 0 = embedding only",
    "cluster_cut": "learned clusterer: GNN edge-score cut of the graph the candidate sets are grown on",
    "cluster_dim": "learned clusterer: width of the set transformer (a multiple of 4)",
    "cluster_layers": "learned clusterer: self-attention layers of the set transformer",
    "cluster_pivots": "learned clusterer: random pivots per training event and step",
    "cluster_epochs": "learned clusterer: training epochs (on the frozen embedding and GNN)",
    "cluster_lr": "learned clusterer: AdamW learning rate (same schedule as the other stages)",
    "cluster_threshold": "learned clusterer: membership probability threshold; default: the best of 0.1 ... 0.8 "
                         "on training events, chosen by fit",
    "dbscan_eps": "DBSCAN eps values tried on the training events; the best one is used for the baseline",
    "seed": "seed of the simulation, initialisation and sampling",
    "threads": "torch CPU threads (default: torch's choice)",
    "progress": "show progress bars",
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config of :class:`TrackingConfig` fields; errors name the file (and line)."""
    return load_yaml_options(path, TrackingConfig, DataError)
