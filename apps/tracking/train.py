"""Training: simulate (or read) events, train the hit embedding, build kNN graphs, train the GNN, then the
learned clusterer; tune the cuts, the clusterer threshold and the DBSCAN eps.

Run-directory layout (``<run-dir>/``, see :class:`core.app.RunDir`)::

    settings.json                          settings the models were trained with (a re-run with others is refused)
    pipeline/seed<S>/embed/embed.pt        the trained hit embedding (stage done)
    pipeline/seed<S>/gnn/gnn.pt            the trained GNN edge classifier (stage done)
    pipeline/seed<S>/tuning.json           edge-score cuts and the DBSCAN eps chosen on (up to 6) training events
    pipeline/seed<S>/road.json             the road-following baseline's cuts, chosen on training events
    pipeline/seed<S>/hybrid.json           the cuts of road following steered by the GNN (road_gnn), ditto
    pipeline/seed<S>/cluster/cluster.pt    the trained learned clusterer (set transformer over pivots; stage done)
    pipeline/seed<S>/cluster/tuning.json   its membership threshold chosen on (up to 4) training events
    pipeline/seed<S>/*/checkpoints/        Lightning checkpoints: an interrupted stage resumes from last.ckpt
    report.json, report.md, *.png          the report of ``evaluate`` / ``run`` (``eval/<data>/``: on other data)

A stage whose ``.pt`` file exists is skipped, so re-running ``fit`` after an interruption continues where it
stopped (mid-stage from ``last.ckpt``, through :func:`core.training.fit_with_resume`).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from apps.tracking.config import TrackingSettings
from apps.tracking.data import Event, find_detectors, find_events, read_event
from apps.tracking.metrics import trackml_score
from apps.tracking.model import (
    EdgeGNN,
    HitEmbedding,
    dbscan_tracks,
    edge_contrastive_loss,
    focal_edge_loss,
    hit_contrastive_loss,
    hit_features,
    knn_graph,
)
from apps.tracking.simulate import Geometry, simulate_event
from core.app import InputError, Run, load_torch, read_json, save_torch, write_json
from core.app.hardware import barrier
from core.training import fit_with_resume, seed_everything, stopped_by_deadline

__all__ = ["prepare_event", "data_split", "training_events", "event_loader", "EmbedModule", "GNNModule",
           "ClusterModule", "check_data", "fit", "model_dir", "load_models", "load_clusterer", "TRAIN_SEED",
           "PIPELINE", "planar_events", "load_road", "tune_road_baseline", "tune_hybrid_cuts", "load_hybrid",
           "road_inputs", "split_by_particles", "real_events"]

TRAIN_SEED = 1_000_000  # simulated training events use seeds TRAIN_SEED + seed * 10_000 + i
PIPELINE = "pipeline"  # the method folder of the trained models: <run-dir>/pipeline/seed<S>


def prepare_event(ev: Event) -> dict:
    """Tensors of one event: positions, features, particle ids and weights (when known), surface ids."""
    xyz = ev.hits[["x", "y", "z"]].to_numpy(dtype=np.float64)
    out = {"name": ev.name, "xyz": torch.tensor(xyz, dtype=torch.float32), "feats": hit_features(xyz),
           "surface": (ev.hits["volume_id"].to_numpy() * 1000 + ev.hits["layer_id"].to_numpy())}
    if ev.truth is not None:
        out["pid"] = torch.tensor(ev.particle_ids(), dtype=torch.long)
        out["weight"] = torch.tensor(ev.weights(), dtype=torch.float32)
    return out


def data_split(cfg: TrackingSettings) -> tuple[list[Path], list[Path]]:
    """Event prefixes of ``--data`` to train on and to evaluate on. With ``train_source='data'`` the last
    ``max(1, n // 5)`` events (in file-name order) are held out for evaluation; otherwise all are evaluated."""
    prefixes = find_events(cfg.data)
    if getattr(cfg, "particle_split", 0.0) > 0:  # every event gives a training and a test part
        return (prefixes if cfg.train_source == "data" else []), prefixes
    if cfg.train_source != "data":
        return [], prefixes
    if len(prefixes) < 2:
        raise InputError(f"train_source 'data' needs at least 2 events in {cfg.data} (the last fifth, at least one, "
                         f"is held out for evaluation); found {len(prefixes)}")
    n_test = max(1, len(prefixes) // 5)
    return prefixes[:-n_test], prefixes[-n_test:]


def split_by_particles(ev: Event, share: float, seed: int = 0) -> tuple[Event, Event]:
    """Two events from one: a random ``share`` of the particles (all their hits) plus that share of the noise
    hits, and the rest. The truth weights are kept (the score renormalises them within each part)."""
    pid = ev.particle_ids()
    rng = np.random.default_rng(seed)
    parts = np.unique(pid[pid != 0])
    take = set(parts[rng.random(len(parts)) < share].tolist())
    first = np.isin(pid, list(take)) | ((pid == 0) & (rng.random(len(pid)) < share))
    out = []
    for mask, tag in ((first, "a"), (~first, "b")):
        sub = Event(f"{ev.name}{tag}", ev.hits[mask].reset_index(drop=True), ev.truth[mask].reset_index(drop=True),
                    None if ev.particles is None else
                    ev.particles[ev.particles["particle_id"].isin(np.unique(pid[mask]))].reset_index(drop=True),
                    {**ev.meta, "split_of": ev.name, "part": tag})
        out.append(sub)
    return out[0], out[1]


def real_events(cfg: TrackingSettings, train: bool) -> list[Event]:
    """The events of ``--data`` to train on (``train``) or to score. With ``--particle-split S`` every event is
    split by :func:`split_by_particles` (the training part: a share S of its particles and noise; the scored
    part: the rest), so that both come from one event but share no hit."""
    paths = data_split(cfg)[0 if train else 1]
    events = [read_event(p, require_truth=True) for p in paths]
    if cfg.particle_split > 0:
        events = [split_by_particles(ev, cfg.particle_split, seed=cfg.seed)[0 if train else 1] for ev in events]
    return events


def planar_events(cfg: TrackingSettings, seed: int, n: int) -> list[Event]:
    """``n`` simulated straight-track events (``--straight``) on the planar detector inferred from the hits of
    ``--data`` (:meth:`apps.tracking.planar.PlanarDetector.from_events`); event i has seed ``seed + i``."""
    from apps.tracking.planar import PlanarDetector, simulate_planar_event

    det = PlanarDetector.from_events([read_event(p) for p in find_events(cfg.data)])
    return [simulate_planar_event(det, seed=seed + i, name=f"event{i:09d}") for i in range(n)]


def training_events(cfg: TrackingSettings, geo: Geometry | None) -> list[Event]:
    """Simulated training events (``train_source='sim'``: helices on ``geo``, or with ``--straight`` straight
    tracks on the planar detector of the data) or the truth-bearing events of ``--data``."""
    if cfg.train_source == "data":
        return real_events(cfg, train=True)
    if cfg.straight:
        return planar_events(cfg, TRAIN_SEED + cfg.seed * 10_000, cfg.train_events)
    levels = list(cfg.train_pileup)
    return [simulate_event(geo, cfg.sim(levels[i % len(levels)]), seed=TRAIN_SEED + cfg.seed * 10_000 + i,
                           name=f"event{i:09d}") for i in range(cfg.train_events)]


def _one_event(item: dict) -> dict:
    return item


def event_loader(items: list[dict]) -> DataLoader:
    """One event per step, reshuffled every epoch: a plain DataLoader (no batching), so that
    :func:`core.training.fit_with_resume` gives it an epoch-seeded order on one process and, under ``--devices N``,
    Lightning's distributed sampler gives every rank its share of the events (seeded by ``--seed`` and the epoch)."""
    return DataLoader(items, batch_size=None, shuffle=True, collate_fn=_one_event)


class _Stage(L.LightningModule):
    """A training stage: one event per step; the schedule spans the stage's optimiser steps on this hardware."""

    cfg: TrackingSettings

    def _total_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)


def _cosine(opt: torch.optim.Optimizer, total: int) -> dict:
    total = max(1, int(total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class EmbedModule(_Stage):
    """Stage 1: contrastive hit embedding (:func:`apps.tracking.model.hit_contrastive_loss`)."""

    def __init__(self, cfg: TrackingSettings) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = HitEmbedding(cfg.embed_dim, cfg.embed_hidden, cfg.embed_depth)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        emb = self.net(batch["feats"])
        loss = hit_contrastive_loss(emb, batch["pid"], temperature=self.cfg.embed_temperature,
                                    max_anchors=self.cfg.embed_anchors,
                                    tile_size=4096 if len(emb) > 20_000 else None)
        self.log("loss", loss, prog_bar=True, batch_size=1)
        return loss

    def configure_optimizers(self):
        return _cosine(torch.optim.AdamW(self.parameters(), lr=self.cfg.embed_lr, weight_decay=1e-4),
                       self._total_steps())


class GNNModule(_Stage):
    """Stage 2: GNN edge classifier with the focal and per-particle edge contrastive losses."""

    def __init__(self, cfg: TrackingSettings) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = EdgeGNN(cfg.embed_dim, cfg.gnn_hidden, cfg.gnn_layers, cfg.gnn_aggr)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["feats"], batch["emb"], batch["xyz"], batch["edges"])
        pid, e = batch["pid"], batch["edges"]
        y = (pid[e[0]] == pid[e[1]]) & (pid[e[0]] != 0)
        focal = focal_edge_loss(logits, y, self.cfg.focal_gamma)
        con = edge_contrastive_loss(torch.sigmoid(logits), e, pid, batch["weight"], self.cfg.edge_tau)
        loss = self.cfg.beta_focal * focal + self.cfg.beta_contrastive * con
        self.log_dict({"loss": loss, "focal": focal, "contrastive": con}, prog_bar=True, batch_size=1)
        return loss

    def configure_optimizers(self):
        return _cosine(torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=1e-4), self._total_steps())


class ClusterModule(_Stage):
    """Stage 3: the learned clusterer (:mod:`apps.tracking.cluster`) on the frozen embedding and GNN: random
    pivots per event, their candidate sets, focal BCE on "candidate is of the pivot's particle"."""

    def __init__(self, cfg: TrackingSettings) -> None:
        super().__init__()
        from apps.tracking.cluster import PivotSetNet

        self.cfg = cfg
        self.net = PivotSetNet(cfg.gnn_hidden, cfg.cluster_dim, cfg.cluster_layers)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        from apps.tracking.cluster import candidate_sets, set_labels, set_loss, set_tokens

        pool = batch["pivot_pool"]
        # the global generator: seeded from (seed, step, rank) at every step, so a resumed run draws the same
        # pivots and every rank its own
        pick = pool[torch.randperm(len(pool))[: self.cfg.cluster_pivots]]
        cand = candidate_sets(batch["emb"], pick, self.cfg.cluster_candidates, batch["edges"], batch["scores"],
                              self.cfg.cluster_cut, self.cfg.cluster_hops)
        tok = set_tokens(batch["z"], batch["emb"], batch["xyz"], batch["edges"], batch["scores"], cand)
        loss = set_loss(self.net(tok), set_labels(batch["pid"], cand), self.cfg.focal_gamma)
        self.log("loss", loss, prog_bar=True, batch_size=1)
        return loss

    def configure_optimizers(self):
        return _cosine(torch.optim.AdamW(self.parameters(), lr=self.cfg.cluster_lr, weight_decay=1e-4),
                       self._total_steps())


@torch.no_grad()
def cluster_inputs(gnn: EdgeGNN, graph: dict) -> dict:
    """Add the frozen GNN's node representation, edge probabilities and the pivot pool to an event graph."""
    from apps.tracking.cluster import gnn_node_repr

    z, scores = gnn_node_repr(gnn, graph["feats"], graph["emb"], graph["xyz"], graph["edges"])
    has = torch.zeros(len(z), dtype=torch.bool)
    has[graph["edges"].reshape(-1)] = True
    pool = torch.nonzero(has).squeeze(1)
    return {**graph, "z": z, "scores": scores, "pivot_pool": pool if len(pool) else torch.arange(len(z))}


CLUSTER_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@torch.no_grad()
def tune_cluster_threshold(cfg: TrackingSettings, net, inputs: list[dict]) -> dict:
    """Membership threshold of the learned clusterer with the best mean TrackML score on (up to 4) events."""
    from apps.tracking.cluster import cluster_event, resolve_tracks

    res = {t: [] for t in CLUSTER_THRESHOLDS}
    for g in inputs[:4]:
        cand, prob = cluster_event(net, g["z"], g["emb"], g["xyz"], g["edges"], g["scores"], cfg.cluster_candidates,
                                   cfg.cluster_cut, cfg.cluster_hops)
        for t in CLUSTER_THRESHOLDS:
            lab = resolve_tracks(len(g["z"]), cand, prob, t, cfg.min_hits)
            res[t].append(trackml_score(lab, g["pid"].numpy(), g["weight"].numpy()))
    mean = {t: float(np.mean(v)) for t, v in res.items()}
    return {"cluster_threshold": max(mean, key=mean.get), "threshold_scores": {str(t): v for t, v in mean.items()}}


def load_clusterer(s: TrackingSettings, folder: Path, required: bool = False):
    """The trained learned clusterer in ``folder`` (a model folder, :func:`model_dir`) and its threshold
    (``--cluster-threshold`` wins), or None when there is none (``required``: raise instead)."""
    from apps.tracking.cluster import PivotSetNet

    root = Path(folder) / "cluster"
    pt, tj = root / "cluster.pt", root / "tuning.json"
    if not (pt.is_file() and tj.is_file()):
        if required:
            raise InputError(f"no trained learned clusterer in {root}: run `python -m apps.tracking fit` with the "
                             "same options first")
        return None
    net = PivotSetNet(s.gnn_hidden, s.cluster_dim, s.cluster_layers)
    net.load_state_dict(load_torch(pt))
    thr = read_json(tj, "clusterer tuning")["cluster_threshold"]
    if s.cluster_threshold is not None:
        thr = s.cluster_threshold
    return net.eval(), float(thr)


def _trainer_kwargs(s: TrackingSettings, epochs: int) -> dict:
    """Trainer arguments of a stage; the hardware (accelerator, devices, strategy, precision, ``max_time``) comes
    from the runner through :func:`core.training.fit_with_resume`."""
    return {"max_epochs": epochs, "enable_progress_bar": s.progress, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "log_every_n_steps": 10, "gradient_clip_val": 1.0}


def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*torch.jit.script.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")


@torch.no_grad()
def embed_and_graph(embed: HitEmbedding, item: dict, k: int) -> dict:
    """Add the embedding and the kNN edges to a prepared event."""
    embed.eval()
    emb = embed(item["feats"])
    return {**item, "emb": emb, "edges": knn_graph(emb, k)}


def model_dir(run: Run) -> Path:
    """Where the trained pipeline of this run and seed lives: ``<run-dir>/pipeline/seed<S>``."""
    return run.run_dir.method_dir(PIPELINE)


def load_models(s: TrackingSettings, folder: Path) -> tuple[HitEmbedding, EdgeGNN, dict]:
    """The trained embedding and GNN in ``folder`` (:func:`model_dir`), and the tuning (``edge_cut``,
    ``cc_cut``, ``dbscan_eps``; a ``--edge-cut`` given by the user replaces both cuts)."""
    root = Path(folder)
    paths = [root / "embed" / "embed.pt", root / "gnn" / "gnn.pt", root / "tuning.json"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"no trained model in {root} ({', '.join(missing)} missing): run "
                         "`python -m apps.tracking fit` with the same options first")
    embed = HitEmbedding(s.embed_dim, s.embed_hidden, s.embed_depth)
    embed.load_state_dict(load_torch(paths[0]))
    gnn = EdgeGNN(s.embed_dim, s.gnn_hidden, s.gnn_layers, s.gnn_aggr)
    gnn.load_state_dict(load_torch(paths[1]))
    tuning = read_json(paths[2], "tuning")
    if s.edge_cut is not None:
        tuning.update(edge_cut=s.edge_cut, cc_cut=s.edge_cut)
    return embed.eval(), gnn.eval(), tuning


def tune_dbscan(cfg: TrackingSettings, items: list[dict]) -> tuple[float, dict]:
    """The eps of ``cfg.dbscan_eps`` with the best mean TrackML score on (up to 6) training events."""
    scores = {}
    for eps in cfg.dbscan_eps:
        s = [trackml_score(dbscan_tracks(it["xyz"].numpy().astype(np.float64), eps), it["pid"].numpy(),
                           it["weight"].numpy()) for it in items[:6]]
        scores[float(eps)] = float(np.mean(s))
    best = max(scores, key=scores.get)
    return best, scores


CUTS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


@torch.no_grad()
def tune_cuts(cfg: TrackingSettings, gnn: EdgeGNN, graphs: list[dict]) -> dict:
    """Edge-score cuts of the chaining builder (``edge_cut``) and of cut + connected components (``cc_cut``)
    with the best mean TrackML score on (up to 4) training events."""
    from apps.tracking.model import chain_tracks, connected_components_tracks

    res = {"chain": {c: [] for c in CUTS}, "cc": {c: [] for c in CUTS}}
    for g in graphs[:4]:
        scores = torch.sigmoid(gnn(g["feats"], g["emb"], g["xyz"], g["edges"])).numpy()
        e, n = g["edges"].numpy(), len(g["xyz"])
        pid, w = g["pid"].numpy(), g["weight"].numpy()
        for c in CUTS:
            res["chain"][c].append(trackml_score(chain_tracks(n, e, scores, g["xyz"].numpy(), c, cfg.min_hits), pid, w))
            res["cc"][c].append(trackml_score(connected_components_tracks(n, e, scores, c, cfg.min_hits), pid, w))
    mean = {b: {c: float(np.mean(v)) for c, v in r.items()} for b, r in res.items()}
    return {"edge_cut": max(mean["chain"], key=mean["chain"].get), "cc_cut": max(mean["cc"], key=mean["cc"].get),
            "cut_scores": {b: {str(c): v for c, v in m.items()} for b, m in mean.items()}}


def road_inputs(it: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(xyz, surface, particle id, weight) of a prepared event, the input of :func:`apps.tracking.road.tune_road`."""
    return (it["xyz"].numpy().astype(np.float64), np.asarray(it["surface"]), it["pid"].numpy(),
            it["weight"].numpy().astype(np.float64))


def tune_road_baseline(s: TrackingSettings, items: list[dict]) -> dict:
    """Cuts of the road-following baseline with the best mean TrackML score on ``--road-tune-events`` training
    events (the field of the settings, ``--bfield``, fixes its curvature bound)."""
    from apps.tracking.road import RoadConfig, tune_road

    best, scores = tune_road([road_inputs(it) for it in items[: s.road_tune_events]], RoadConfig(bfield=s.bfield))
    return {"road": best.to_dict(), "road_scores": scores}


@torch.no_grad()
def tune_hybrid_cuts(s: TrackingSettings, gnn: EdgeGNN, graphs: list[dict], road: dict) -> dict:
    """Cuts of road following steered by the GNN's edge scores (``road_gnn``, :func:`apps.tracking.road.
    hybrid_tracks`) with the best mean TrackML score on ``--road-tune-events`` training events, on the road
    cuts ``road`` (those of the baseline)."""
    from apps.tracking.road import RoadConfig, tune_hybrid

    events = []
    for g in graphs[: s.road_tune_events]:
        scores = torch.sigmoid(gnn(g["feats"], g["emb"], g["xyz"], g["edges"])).numpy().astype(np.float64)
        events.append((*road_inputs(g), g["edges"].numpy(), scores))
    best, scores = tune_hybrid(events, RoadConfig(**road))
    return {"hybrid": best, "hybrid_scores": scores}


def load_hybrid(folder: Path) -> dict | None:
    """The tuned cuts of ``road_gnn`` in a model folder (None when it has none)."""
    p = Path(folder) / "hybrid.json"
    return read_json(p, "road+GNN tuning")["hybrid"] if p.is_file() else None


def load_road(s: TrackingSettings, folder: Path):
    """The tuned road-following cuts of a model folder; the defaults (with ``--bfield``) when it has none."""
    from apps.tracking.road import RoadConfig

    p = Path(folder) / "road.json"
    if p.is_file():
        return RoadConfig(**read_json(p, "road-following tuning")["road"])
    return RoadConfig(bfield=s.bfield)


def check_data(s: TrackingSettings) -> None:
    """Read every event of ``--data`` (with truth when it is trained on), so bad data fails before training."""
    train_p, test_p = data_split(s)
    for p in train_p + test_p:
        read_event(p, require_truth=s.train_source == "data")


def _train_stage(run: Run, name: str, module: L.LightningModule, items: list[dict], epochs: int,
                 folder: Path, out: Path) -> bool:
    """Train one stage (resuming from ``folder/checkpoints``) and save its network to ``out`` (main process);
    False when ``--max-minutes`` stopped it first (the checkpoint stays; a re-run continues)."""
    trainer = fit_with_resume(_trainer_kwargs(run.settings, epochs), module, event_loader(items), folder)
    if stopped_by_deadline(trainer):
        run.log(f"{name}: stopped by --max-minutes after {trainer.current_epoch} of {epochs} epochs; re-run the "
                "same command (with a larger cap) to continue from its checkpoint")
        return False
    save_torch(out, module.net.state_dict())
    barrier()  # every rank goes on with the saved weights (rank 0's BatchNorm statistics)
    return True


def fit(run: Run) -> bool:
    """Train the three stages (resuming where an earlier run stopped) into :func:`model_dir` and tune the cuts,
    the clusterer threshold and the DBSCAN eps; False when ``--max-minutes`` stopped it.

    Under ``--devices N`` every rank trains on its share of the events (Lightning's distributed sampler over the
    event loader); the tuning runs on the main process only."""
    s = run.settings
    _quiet()
    check_data(s)
    geo = None if s.straight or s.train_source == "data" else Geometry.from_file(find_detectors(s.data))
    run.claim()
    root = model_dir(run)
    embed_pt, gnn_pt, db_json = root / "embed" / "embed.pt", root / "gnn" / "gnn.pt", root / "tuning.json"
    cl_pt, cl_json = root / "cluster" / "cluster.pt", root / "cluster" / "tuning.json"
    road_json, hybrid_json = root / "road.json", root / "hybrid.json"
    # every rank decides which stages are done before anything of this call is written
    done = {p: p.is_file() for p in (embed_pt, gnn_pt, db_json, cl_pt, cl_json, road_json, hybrid_json)}
    if all(done.values()):
        run.log(f"models already trained in {root}")
        return True
    seed_everything(s.seed)
    events = training_events(s, geo)
    items = [prepare_event(ev) for ev in events]
    n_hits = sum(len(it["xyz"]) for it in items)
    run.log(f"{len(items)} training events ({s.train_source}), {n_hits} hits; models in {root}")
    if not done[embed_pt] and not _train_stage(run, "embedding", EmbedModule(s), items, s.embed_epochs,
                                                root / "embed", embed_pt):
        return False
    embed = HitEmbedding(s.embed_dim, s.embed_hidden, s.embed_depth)
    embed.load_state_dict(load_torch(embed_pt))
    graphs = [embed_and_graph(embed, it, s.k) for it in items]
    if not done[gnn_pt] and not _train_stage(run, "GNN", GNNModule(s), graphs, s.gnn_epochs, root / "gnn",
                                              gnn_pt):
        return False
    gnn = EdgeGNN(s.embed_dim, s.gnn_hidden, s.gnn_layers, s.gnn_aggr)
    gnn.load_state_dict(load_torch(gnn_pt))
    gnn.eval()
    if not done[db_json] and run.is_main:
        eps, scores = tune_dbscan(s, items)
        write_json(db_json, {**tune_cuts(s, gnn, graphs), "dbscan_eps": eps, "dbscan_scores": scores})
    if not done[road_json] and run.is_main:
        write_json(road_json, tune_road_baseline(s, items))
    if not done[hybrid_json] and run.is_main:
        write_json(hybrid_json, tune_hybrid_cuts(s, gnn, graphs, load_road(s, root).to_dict()))
    if not (done[cl_pt] and done[cl_json]):
        inputs = [cluster_inputs(gnn, g) for g in graphs]
        if not done[cl_pt] and not _train_stage(run, "clusterer", ClusterModule(s), inputs, s.cluster_epochs,
                                                 root / "cluster", cl_pt):
            return False
        if run.is_main:
            net = ClusterModule(s).net
            net.load_state_dict(load_torch(cl_pt))
            write_json(cl_json, tune_cluster_threshold(s, net.eval(), inputs))
    barrier()
    return True

