"""Settings of the tracking app: :class:`TrackingSettings` (fit / evaluate / run / scale / sweep) and
:class:`SimulateSettings` (``simulate``), dataclasses of :func:`core.app.option` fields with a quick preset;
the runner (:mod:`core.app`) turns them into flags, layers ``--config`` YAML files and checks every value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from apps.tracking.data import EMBEDDED
from apps.tracking.simulate import SimConfig
from core.app import AppSettings, InputError, option

__all__ = ["TrackingSettings", "SimulateSettings", "CONFIG_DIR", "GNN_AGGREGATIONS"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GNN_AGGREGATIONS = ("mean", "max", "sum", "min")

_DATA_HELP = ("TrackML data: a folder of eventXXXX-{hits,truth,particles}.csv[.gz] files (+ detectors.csv[.gz] "
              "there or in its parent) or one event prefix (folder/event000000001); 'trackml-subset' is the "
              "embedded 5,527-hit subset of TrackML event 1 (shared_data/tracking/)")


@dataclass
class _SimulatorOptions:
    """The simulator's physics (:class:`apps.tracking.simulate.SimConfig`), shared by both settings classes."""

    particles_per_vertex: float = option(50.0, help="simulator: mean charged particles per collision (TrackML ~50)",
                                         low=0, low_open=True)
    pt_min: float = option(0.1, help="simulator: lowest pT (GeV)", low=0, low_open=True)
    pt_max: float = option(50.0, help="simulator: highest pT (GeV)", low=0, low_open=True)
    pt_alpha: float = option(3.0, help="simulator: dN/dpT ~ pT^-alpha", low=1, low_open=True)
    eta_max: float = option(4.0, help="simulator: |eta| <= eta_max", low=0, low_open=True,
                            high=5)
    realistic: bool = option(True, help="simulator: TrackML-like pT, eta, double hits, secondaries, "
                                        "errors")
    pt_median: float = option(0.42, help="simulator: median pT of the log-normal spectrum (GeV)", low=0,
                              low_open=True, flag=False)
    pt_sigma: float = option(0.75, help="simulator: width of ln pT of the log-normal spectrum", low=0, low_open=True,
                             flag=False)
    eta_sigma: float = option(2.1, help="simulator: Gaussian width of eta (inside |eta| <= eta_max); 0: uniform",
                              low=0, flag=False)
    double_hit_rate: float = option(0.25, help="simulator: share of layer crossings that leave a second hit (an "
                                               "overlapping module a few mm further along the track)", low=0, high=1,
                                    flag=False)
    secondary_fraction: float = option(0.2, help="simulator: share of particles born at a displaced vertex", low=0,
                                       high=1, flag=False)
    secondary_radius: float = option(100.0, help="simulator: mean displacement of the secondaries' vertices (mm, "
                                                 "exponential)", low=0, low_open=True, flag=False)
    bfield: float = option(2.0, help="simulator: field (tesla)", low=0, low_open=True)
    hit_resolution: float = option(0.05, help="simulator: hit error (mm)", low=0)
    noise_fraction: float = option(0.15, help="simulator: share of all hits that are noise", low=0, high=1,
                                   high_open=True)
    multiple_scattering: bool = option(True, help="simulator: Highland scattering")
    material: float = option(0.02, help="simulator: sensor x/X0",
                             low=0, low_open=True, high=1, high_open=True)

    def sim(self, pileup: float) -> SimConfig:
        """The simulator's settings; ``realistic`` False switches the calibrated extras off (the plain helix
        model: power-law pT, uniform eta, no double hits or secondaries, ``hit_resolution`` everywhere)."""
        r = self.realistic
        return SimConfig(pileup=pileup, particles_per_vertex=self.particles_per_vertex, pt_min=self.pt_min,
                         pt_max=self.pt_max, pt_alpha=self.pt_alpha, eta_max=self.eta_max, bfield=self.bfield,
                         hit_resolution=self.hit_resolution, noise_fraction=self.noise_fraction,
                         multiple_scattering=self.multiple_scattering, material=self.material,
                         pt_spectrum="lognormal" if r else "power", pt_median=self.pt_median, pt_sigma=self.pt_sigma,
                         eta_sigma=self.eta_sigma if r else 0.0, double_hit_rate=self.double_hit_rate if r else 0.0,
                         secondary_fraction=self.secondary_fraction if r else 0.0,
                         secondary_radius=self.secondary_radius, pitch_resolution=r)

    def _check_physics(self) -> None:
        if self.pt_min >= self.pt_max:
            raise InputError(f"pt_min must be below pt_max, got {self.pt_min} and {self.pt_max}")


@dataclass
class TrackingSettings(_SimulatorOptions, AppSettings):
    """Every option of ``python -m apps.tracking fit | evaluate | run | scale | sweep``."""

    data: str = option(EMBEDDED, help=_DATA_HELP + ". Evaluated as the 'real' data set; its geometry is the one "
                                                   "simulated")
    eval_data: str = option("", help="evaluate on these TrackML events instead (with truth files; same forms as "
                                     "--data); the report goes to <run-dir>/eval/<name>/ and the run's own report "
                                     "is kept", model=False)
    train_source: str = option("sim", help="'sim': train on simulated events on the data's detector geometry; "
                                           "'data': train on the events of --data (they need truth files), holding "
                                           "out the last fifth (at least one) for evaluation", choices=("sim", "data"))
    particle_split: float = option(0.0, help="split every event of --data by particles: this share of its particles "
                                             "(all their hits) and of its noise hits is the training part (with "
                                             "--train-source data), the rest is scored; both parts come from one "
                                             "event; 0: off", low=0, high=1, high_open=True)
    train_events: int = option(80, help="number of simulated training events (split evenly over --train-pileup)",
                               low=1)
    straight: bool = option(False, help="--train-source sim: simulate straight tracks (no magnetic field) through "
                                        "the planar forward detector inferred from the planes of --data's hits "
                                        "(apps/tracking/planar.py) instead of helices in the TrackML geometry")
    train_pileup: list[float] = option([5.0, 10.0], help="pile-up levels (mean number of collisions per event) of "
                                                         "the training events", low=0, low_open=True)
    eval_pileup: list[float] = option([5.0, 10.0, 20.0], help="pile-up levels of the simulated test events (one "
                                                              "data set each)", low=0, low_open=True, model=False)
    eval_events: int = option(5, help="simulated test events per pile-up level (seeds disjoint from the training "
                                      "events); 0: the real data only", low=0, model=False)
    embed_dim: int = option(12, help="dimension of the hit embedding (metric space of the kNN graph)", low=2)
    embed_hidden: int = option(128, help="width of the hit-embedding MLP", low=1)
    embed_depth: int = option(3, help="hidden layers of the hit-embedding MLP", low=1)
    embed_epochs: int = option(6, help="epochs of contrastive (SupCon with particle-id labels) embedding training",
                               low=1)
    embed_temperature: float = option(0.1, help="temperature of the embedding's contrastive loss", low=0,
                                      low_open=True)
    embed_anchors: int = option(1024, help="anchor hits sampled per event for the embedding loss (candidates: all "
                                           "hits)", low=1)
    embed_lr: float = option(1e-3, help="AdamW learning rate of the hit embedding (same schedule as --lr)", low=0,
                             low_open=True)
    k: int = option(12, help="neighbours per hit in the embedding kNN graph", low=1)
    gnn_hidden: int = option(32, help="width of the GNN (node and message MLPs)", low=2)
    gnn_layers: int = option(3, help="message-passing layers of the GNN", low=1)
    gnn_aggr: str = option("mean+max", help="neighbour aggregation of the GNN layers: 'mean' (HyperTrack), 'max', "
                                            "'sum', 'min' or a '+'-joined combination such as 'mean+max' "
                                            "(concatenated)")
    gnn_epochs: int = option(20, help="epochs of GNN edge-classifier training", low=1)
    lr: float = option(3e-3, help="AdamW learning rate of the GNN (linear warm-up over the first 5% of the steps, "
                                  "then cosine decay)", low=0, low_open=True)
    edge_tau: float = option(0.3, help="temperature of HyperTrack's per-particle edge contrastive loss (the paper: "
                                       "0.3)", low=0, low_open=True)
    focal_gamma: float = option(1.0, help="gamma of the class-balanced focal edge loss (the paper: 1)", low=0)
    beta_focal: float = option(0.2, help="weight of the focal edge loss (the paper: 0.2)", low=0)
    beta_contrastive: float = option(1.0, help="weight of the per-particle edge contrastive loss (the paper: 1.0)",
                                     low=0)
    edge_cut: float | None = option(None, help="edge-score cut for track building (both builders); default: the "
                                               "cuts with the best TrackML score on training events, chosen by fit "
                                               "from 0.3 ... 0.9", low=0, low_open=True, high=1, high_open=True,
                                    model=False)
    min_hits: int = option(3, help="smallest reconstructed track; smaller clusters are split into single hits",
                           low=1, model=False)
    builder: str = option("road_gnn", help="track builder of the headline method in the report: 'road_gnn' (road "
                                           "following whose tracks the GNN edges grow, plus GNN chains on the hits "
                                           "it leaves), 'chain' (best-neighbour chaining), 'cc' (edge-score cut + "
                                           "connected components) or 'learned' (the set-transformer pivot "
                                           "clusterer); all are evaluated, the others are reported as baselines",
                          choices=("road_gnn", "chain", "cc", "learned"), model=False)
    cluster_candidates: int = option(32, help="learned clusterer: candidate set size per pivot (the pivot + its "
                                              "nearest hits)", low=2)
    cluster_hops: int = option(6, help="learned clusterer: candidates are first the hits within this many hops over "
                                       "the GNN edges with score > --cluster-cut (then the nearest hits in the "
                                       "embedding); 0 = embedding only", low=0)
    cluster_cut: float = option(0.5, help="learned clusterer: GNN edge-score cut of the graph the candidate sets "
                                          "are grown on", low=0, high=1, high_open=True)
    cluster_dim: int = option(32, help="learned clusterer: width of the set transformer (a multiple of 4)", low=4)
    cluster_layers: int = option(2, help="learned clusterer: self-attention layers of the set transformer", low=1)
    cluster_pivots: int = option(512, help="learned clusterer: random pivots per training event and step", low=1)
    cluster_epochs: int = option(6, help="learned clusterer: training epochs (on the frozen embedding and GNN)",
                                 low=1)
    cluster_lr: float = option(2e-3, help="learned clusterer: AdamW learning rate (same schedule as the other "
                                          "stages)", low=0, low_open=True)
    cluster_threshold: float | None = option(None, help="learned clusterer: membership probability threshold; "
                                                        "default: the best of 0.1 ... 0.8 on training events, "
                                                        "chosen by fit", low=0, low_open=True, high=1,
                                             high_open=True, model=False)
    dbscan_eps: list[float] = option([0.01, 0.02, 0.03, 0.05, 0.08], help="DBSCAN eps values tried on the "
                                                                          "training events; the best one is used "
                                                                          "for the baseline", low=0, low_open=True)
    road_tune_events: int = option(3, help="road-following baseline: training events its cuts are tuned on (a few "
                                           "variants of the windows and seed cuts; the best mean TrackML score "
                                           "wins)", low=1)
    weights: str = option("auto", help="hit weights of the TrackML score: 'file' (the truth's weight column), "
                                       "'official' (recomputed from truth with the TrackML recipe), 'uniform' "
                                       "(every hit of a particle with 4+ hits alike) or 'auto' (file weights when "
                                       "every hit has one, else official when the particles' momenta are known, "
                                       "else uniform); the report says which were used",
                          choices=("auto", "file", "official", "uniform"), model=False)

    @classmethod
    def quick(cls) -> TrackingSettings:
        """12 small simulated training events and few epochs: trains and evaluates in about a minute on a CPU."""
        return cls(train_events=12, train_pileup=[5.0], eval_events=1, embed_epochs=2, embed_hidden=64,
                   gnn_epochs=8, gnn_hidden=24, gnn_layers=2, cluster_epochs=8, cluster_pivots=256, cluster_dim=24,
                   cluster_candidates=24, dbscan_eps=[0.02, 0.05], road_tune_events=1)

    def check(self) -> None:
        self._check_physics()
        if not self.gnn_aggr or any(a not in GNN_AGGREGATIONS for a in self.gnn_aggr.split("+")):
            raise InputError(f"gnn_aggr must be {', '.join(GNN_AGGREGATIONS)} or a '+'-joined combination, got "
                             f"{self.gnn_aggr!r}")
        if self.cluster_dim % 4:
            raise InputError(f"cluster_dim must be a multiple of 4 (4 attention heads), got {self.cluster_dim}")
        if self.beta_focal == 0 and self.beta_contrastive == 0:
            raise InputError("beta_focal and beta_contrastive are both 0: the GNN would have no loss")
        for name in ("train_pileup", "dbscan_eps"):
            if not getattr(self, name):
                raise InputError(f"{name} must list at least one value")
        if str(self.data).strip() == "":
            raise InputError("the data path is empty")


@dataclass
class SimulateSettings(_SimulatorOptions, AppSettings):
    """The options of ``python -m apps.tracking simulate``: the simulator's, and the common flags of every verb
    (the hardware and thread flags have no effect on this numpy generator); no training options."""

    data: str = option(EMBEDDED, help="TrackML events whose detectors.csv[.gz] (beside them or in their parent) "
                                      "gives the geometry; 'trackml-subset': the embedded one")
    seed: int = option(0, help="seed of the first event (event i: seed + i; its file name carries the seed)", low=0)
    output: str = option("", help="folder to write the events into (TrackML files + detectors.csv); required")
    events: int = option(1, help="number of events to write", low=1)
    pileup: float = option(10.0, help="pile-up level of the events (mean number of collisions per event)", low=0,
                           low_open=True)
    plain: bool = option(False, help="write plain .csv instead of .csv.gz")
    compare: bool = option(False, help="compare with --data's statistics")
    run_dir: str = option("", help="not used by simulate (it writes only into --output)", model=False)

    def check(self) -> None:
        self._check_physics()
        if not self.output.strip():
            raise InputError("simulate needs --output DIR (the folder to write the events into)")
        if str(self.data).strip() == "":
            raise InputError("the data path is empty")
