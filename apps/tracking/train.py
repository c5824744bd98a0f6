"""Training: simulate (or read) events, train the hit embedding, build kNN graphs, train the GNN.

Run-directory layout (``RUN_DIR/``)::

    config.json                   settings the models were trained with (a re-run with others is refused)
    embed/embed.pt                the trained hit embedding (stage done)
    gnn/gnn.pt                    the trained GNN edge classifier (stage done)
    tuning.json                   edge-score cuts and the DBSCAN eps chosen on (up to 6) training events
    cluster/cluster.pt            the trained learned clusterer (set transformer over pivots; stage done)
    cluster/tuning.json           its membership threshold chosen on (up to 4) training events
    */checkpoints/last.ckpt       Lightning checkpoints: an interrupted stage resumes from here

A stage whose ``.pt`` file exists is skipped, so re-running ``fit`` after an interruption continues where it
stopped (mid-stage from ``last.ckpt``, through :func:`core.training.fit_with_resume`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from apps.tracking.config import TrackingConfig
from apps.tracking.data import DataError, Event, find_detectors, find_events, read_event
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
from core.training import fit_with_resume, seed_everything

__all__ = ["prepare_event", "data_split", "training_events", "EmbedModule", "GNNModule", "ClusterModule", "fit",
           "load_models", "load_clusterer", "TRAIN_SEED"]

TRAIN_SEED = 1_000_000  # simulated training events use seeds TRAIN_SEED + seed * 10_000 + i
# settings that do not change the trained artefacts (may differ between fit and evaluate)
_NON_ARTEFACT = ("data", "run_dir", "eval_pileup", "eval_events", "edge_cut", "min_hits", "threads",
                 "progress", "builder", "cluster_threshold")


def prepare_event(ev: Event) -> dict:
    """Tensors of one event: positions, features, particle ids and weights (when known), surface ids."""
    xyz = ev.hits[["x", "y", "z"]].to_numpy(dtype=np.float64)
    out = {"name": ev.name, "xyz": torch.tensor(xyz, dtype=torch.float32), "feats": hit_features(xyz),
           "surface": (ev.hits["volume_id"].to_numpy() * 1000 + ev.hits["layer_id"].to_numpy())}
    if ev.truth is not None:
        out["pid"] = torch.tensor(ev.particle_ids(), dtype=torch.long)
        out["weight"] = torch.tensor(ev.weights(), dtype=torch.float32)
    return out


def data_split(cfg: TrackingConfig) -> tuple[list[Path], list[Path]]:
    """Event prefixes of ``--data`` to train on and to evaluate on. With ``train_source='data'`` the last
    ``max(1, n // 5)`` events (in file-name order) are held out for evaluation; otherwise all are evaluated."""
    prefixes = find_events(cfg.data)
    if cfg.train_source != "data":
        return [], prefixes
    if len(prefixes) < 2:
        raise DataError(f"train_source 'data' needs at least 2 events in {cfg.data} (the last fifth, at least one, "
                        f"is held out for evaluation); found {len(prefixes)}")
    n_test = max(1, len(prefixes) // 5)
    return prefixes[:-n_test], prefixes[-n_test:]


def training_events(cfg: TrackingConfig, geo: Geometry) -> list[Event]:
    """Simulated training events (``train_source='sim'``) or the truth-bearing events of ``--data``."""
    if cfg.train_source == "data":
        return [read_event(p, require_truth=True) for p in data_split(cfg)[0]]
    levels = list(cfg.train_pileup)
    return [simulate_event(geo, cfg.sim(levels[i % len(levels)]), seed=TRAIN_SEED + cfg.seed * 10_000 + i,
                           name=f"event{i:09d}") for i in range(cfg.train_events)]


class _Loader(DataLoader):
    """One event per step, reshuffled every epoch."""

    def __init__(self, items: list[dict], seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        super().__init__(items, batch_size=None, shuffle=True, generator=g, collate_fn=lambda x: x)


def _cosine(opt: torch.optim.Optimizer, total: int) -> dict:
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class EmbedModule(L.LightningModule):
    """Stage 1: contrastive hit embedding (:func:`apps.tracking.model.hit_contrastive_loss`)."""

    def __init__(self, cfg: TrackingConfig, total_steps: int) -> None:
        super().__init__()
        self.cfg, self.total_steps = cfg, total_steps
        self.net = HitEmbedding(cfg.embed_dim, cfg.embed_hidden, cfg.embed_depth)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        emb = self.net(batch["feats"])
        loss = hit_contrastive_loss(emb, batch["pid"], temperature=self.cfg.embed_temperature,
                                    max_anchors=self.cfg.embed_anchors,
                                    tile_size=4096 if len(emb) > 20_000 else None)
        self.log("loss", loss, prog_bar=True, batch_size=1)
        return loss

    def configure_optimizers(self):
        return _cosine(torch.optim.AdamW(self.parameters(), lr=self.cfg.embed_lr, weight_decay=1e-4), self.total_steps)


class GNNModule(L.LightningModule):
    """Stage 2: GNN edge classifier with the focal and per-particle edge contrastive losses."""

    def __init__(self, cfg: TrackingConfig, total_steps: int) -> None:
        super().__init__()
        self.cfg, self.total_steps = cfg, total_steps
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
        return _cosine(torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=1e-4), self.total_steps)


class ClusterModule(L.LightningModule):
    """Stage 3: the learned clusterer (:mod:`apps.tracking.cluster`) on the frozen embedding and GNN: random
    pivots per event, their candidate sets, focal BCE on "candidate is of the pivot's particle"."""

    def __init__(self, cfg: TrackingConfig, total_steps: int) -> None:
        super().__init__()
        from apps.tracking.cluster import PivotSetNet

        self.cfg, self.total_steps = cfg, total_steps
        self.net = PivotSetNet(cfg.gnn_hidden, cfg.cluster_dim, cfg.cluster_layers)
        self.gen = torch.Generator().manual_seed(cfg.seed + 2)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        from apps.tracking.cluster import candidate_sets, set_labels, set_loss, set_tokens

        pool = batch["pivot_pool"]
        pick = pool[torch.randperm(len(pool), generator=self.gen)[: self.cfg.cluster_pivots]]
        cand = candidate_sets(batch["emb"], pick, self.cfg.cluster_candidates, batch["edges"], batch["scores"],
                              self.cfg.cluster_cut, self.cfg.cluster_hops)
        tok = set_tokens(batch["z"], batch["emb"], batch["xyz"], batch["edges"], batch["scores"], cand)
        loss = set_loss(self.net(tok), set_labels(batch["pid"], cand), self.cfg.focal_gamma)
        self.log("loss", loss, prog_bar=True, batch_size=1)
        return loss

    def configure_optimizers(self):
        return _cosine(torch.optim.AdamW(self.parameters(), lr=self.cfg.cluster_lr, weight_decay=1e-4),
                       self.total_steps)


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
def tune_cluster_threshold(cfg: TrackingConfig, net, inputs: list[dict]) -> dict:
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


def load_clusterer(cfg: TrackingConfig, required: bool = False):
    """The trained learned clusterer and its threshold (``--cluster-threshold`` wins), or None when this run
    directory has none (``required``: raise instead)."""
    from apps.tracking.cluster import PivotSetNet

    root = Path(cfg.run_dir) / "cluster"
    pt, tj = root / "cluster.pt", root / "tuning.json"
    if not (pt.is_file() and tj.is_file()):
        if required:
            raise DataError(f"no trained learned clusterer in {root}: run `python -m apps.tracking fit` with the "
                            "same options first")
        return None
    net = PivotSetNet(cfg.gnn_hidden, cfg.cluster_dim, cfg.cluster_layers)
    net.load_state_dict(torch.load(pt, weights_only=True))
    thr = json.loads(tj.read_text())["cluster_threshold"]
    if cfg.cluster_threshold is not None:
        thr = cfg.cluster_threshold
    return net.eval(), float(thr)


def _trainer_kwargs(cfg: TrackingConfig, epochs: int) -> dict:
    return {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "enable_progress_bar": cfg.progress,
            "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 10,
            "gradient_clip_val": 1.0}


def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*torch.jit.script.*")


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_config(cfg: TrackingConfig, root: Path) -> None:
    """Refuse to mix artefacts trained with other settings into this run directory."""
    path = root / "config.json"
    mine = {k: v for k, v in cfg.to_dict().items() if k not in _NON_ARTEFACT}
    if path.is_file():
        full = json.loads(path.read_text())
        old = {k: v for k, v in full.items() if k not in _NON_ARTEFACT}
        # options added after the run directory was made (absent from its config.json) only concern later stages
        diff = sorted(k for k in old if old.get(k) != mine.get(k))
        if diff:
            raise DataError(f"{root} holds models trained with other settings ({', '.join(diff)}); use another "
                            "--run-dir or delete that directory")
        new = {k: v for k, v in cfg.to_dict().items() if k not in full}
        if new:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**full, **new}, indent=2))
            os.replace(tmp, path)
    else:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
        os.replace(tmp, path)


@torch.no_grad()
def embed_and_graph(embed: HitEmbedding, item: dict, k: int) -> dict:
    """Add the embedding and the kNN edges to a prepared event."""
    embed.eval()
    emb = embed(item["feats"])
    return {**item, "emb": emb, "edges": knn_graph(emb, k)}


def load_models(cfg: TrackingConfig) -> tuple[HitEmbedding, EdgeGNN, dict]:
    """The trained embedding and GNN, and the tuning (``edge_cut``, ``cc_cut``, ``dbscan_eps``; a
    ``--edge-cut`` given by the user replaces both cuts)."""
    root = Path(cfg.run_dir)
    paths = [root / "embed" / "embed.pt", root / "gnn" / "gnn.pt", root / "tuning.json"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"no trained model in {root} ({', '.join(missing)} missing): run "
                        "`python -m apps.tracking fit` with the same options first")
    _check_config(cfg, root)
    embed = HitEmbedding(cfg.embed_dim, cfg.embed_hidden, cfg.embed_depth)
    embed.load_state_dict(torch.load(paths[0], weights_only=True))
    gnn = EdgeGNN(cfg.embed_dim, cfg.gnn_hidden, cfg.gnn_layers, cfg.gnn_aggr)
    gnn.load_state_dict(torch.load(paths[1], weights_only=True))
    tuning = json.loads(paths[2].read_text())
    if cfg.edge_cut is not None:
        tuning.update(edge_cut=cfg.edge_cut, cc_cut=cfg.edge_cut)
    return embed.eval(), gnn.eval(), tuning


def tune_dbscan(cfg: TrackingConfig, items: list[dict]) -> tuple[float, dict]:
    """The eps of ``cfg.dbscan_eps`` with the best mean TrackML score on (up to 6) training events."""
    scores = {}
    for eps in cfg.dbscan_eps:
        s = [trackml_score(dbscan_tracks(it["xyz"].numpy().astype(np.float64), eps), it["pid"].numpy(),
                           it["weight"].numpy()) for it in items[:6]]
        scores[float(eps)] = float(np.mean(s))
    best = max(scores, key=scores.get)
    return best, scores


CUTS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def tune_cuts(cfg: TrackingConfig, gnn: EdgeGNN, graphs: list[dict]) -> dict:
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


def fit(cfg: TrackingConfig) -> Path:
    """Train both stages (resuming where an earlier run stopped); returns the run directory."""
    cfg.validate()
    _quiet()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(cfg.run_dir)
    _check_config(cfg, root)
    seed_everything(cfg.seed)
    geo = Geometry.from_file(find_detectors(cfg.data))
    embed_pt, gnn_pt, db_json = root / "embed" / "embed.pt", root / "gnn" / "gnn.pt", root / "tuning.json"
    cl_pt, cl_json = root / "cluster" / "cluster.pt", root / "cluster" / "tuning.json"
    if all(p.is_file() for p in (embed_pt, gnn_pt, db_json, cl_pt, cl_json)):
        print(f"[tracking] models already trained in {root}")
        return root
    events = training_events(cfg, geo)
    items = [prepare_event(ev) for ev in events]
    n_hits = sum(len(it["xyz"]) for it in items)
    print(f"[tracking] {len(items)} training events ({cfg.train_source}), {n_hits} hits")
    if not embed_pt.is_file():
        module = EmbedModule(cfg, cfg.embed_epochs * len(items))
        fit_with_resume(_trainer_kwargs(cfg, cfg.embed_epochs), module, _Loader(items, cfg.seed), root / "embed")
        embed_pt.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(module.net.state_dict(), embed_pt)
    embed = HitEmbedding(cfg.embed_dim, cfg.embed_hidden, cfg.embed_depth)
    embed.load_state_dict(torch.load(embed_pt, weights_only=True))
    graphs = [embed_and_graph(embed, it, cfg.k) for it in items]
    if not gnn_pt.is_file():
        module = GNNModule(cfg, cfg.gnn_epochs * len(graphs))
        fit_with_resume(_trainer_kwargs(cfg, cfg.gnn_epochs), module, _Loader(graphs, cfg.seed + 1), root / "gnn")
        gnn_pt.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(module.net.state_dict(), gnn_pt)
    if not db_json.is_file():
        eps, scores = tune_dbscan(cfg, items)
        gnn = GNNModule(cfg, 1).net
        gnn.load_state_dict(torch.load(gnn_pt, weights_only=True))
        cuts = tune_cuts(cfg, gnn.eval(), graphs)
        tmp = db_json.with_suffix(".tmp")
        tmp.write_text(json.dumps({**cuts, "dbscan_eps": eps, "dbscan_scores": scores}, indent=2))
        os.replace(tmp, db_json)
    if not (cl_pt.is_file() and cl_json.is_file()):
        gnn = GNNModule(cfg, 1).net
        gnn.load_state_dict(torch.load(gnn_pt, weights_only=True))
        inputs = [cluster_inputs(gnn.eval(), g) for g in graphs]
        if not cl_pt.is_file():
            module = ClusterModule(cfg, cfg.cluster_epochs * len(inputs))
            fit_with_resume(_trainer_kwargs(cfg, cfg.cluster_epochs), module, _Loader(inputs, cfg.seed + 2),
                            root / "cluster")
            cl_pt.parent.mkdir(parents=True, exist_ok=True)
            _save_atomic(module.net.state_dict(), cl_pt)
        net = ClusterModule(cfg, 1).net
        net.load_state_dict(torch.load(cl_pt, weights_only=True))
        tmp = cl_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(tune_cluster_threshold(cfg, net.eval(), inputs), indent=2))
        os.replace(tmp, cl_json)
    return root
