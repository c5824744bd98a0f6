"""Evaluation: reconstruct every test event with the learned pipeline and the baselines; write the report.

The headline method of the report is the one of ``--builder`` (default ``road_gnn``); the others are its
baselines.
Data sets: ``sim-pu<level>`` (``eval_events`` fresh simulated events per ``eval_pileup`` level, seeds disjoint
from training) and the real events of ``--data`` (default: the embedded TrackML subset). With ``--eval-data``
only those events are scored, and the report goes to ``<run-dir>/eval/<name>/``. Methods:

* ``gnn``: embedding -> kNN graph -> GNN edge scores -> best-neighbour chaining
  (:func:`apps.tracking.model.chain_tracks`);
* ``gnn_cc``: the same edge scores, edge-score cut + connected components (the standard baseline builder);
* ``gnn_learned`` (``--builder learned``): the same GNN, then the learned clusterer (set transformer over
  pivots, :mod:`apps.tracking.cluster`), when the run directory has one;
* ``dbscan``: DBSCAN on the TrackML starter-kit helix-transformed coordinates, eps tuned on training events;
* ``road``: classical road following (:mod:`apps.tracking.road`: triplet seeds, helix extension layer by layer),
  cuts tuned on training events;
* ``road_gnn`` (``--builder road_gnn``, the default): the same road following steered by the GNN's edge
  scores (seeds and extensions across low-score graph edges vetoed, low-score candidates dropped, the selected
  tracks grown along high-score edges onto unassigned hits, then chaining on the hits still unassigned;
  :func:`apps.tracking.road.hybrid_tracks`), cuts tuned on training events, when the model folder has them.

Metrics per data set (means over events): ``trackml_score``, ``efficiency``, ``fake_rate`` (see
:mod:`apps.tracking.metrics`), ``edge_efficiency`` / ``edge_purity`` of the edges kept after the score cut,
``graph_edge_efficiency`` / ``graph_edge_purity`` of the kNN graph, ``seconds_per_event`` and
``seconds_per_10k_hits`` of the learned pipeline (inference, this CPU). ``report.json`` has the schema of
:mod:`core.app.report` (one row per data set x method; ``extra.per_dataset`` keeps every metric).
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from apps.tracking.config import TrackingSettings  # noqa: E402
from apps.tracking.data import Event, dataset_name, find_detectors, find_events, read_event  # noqa: E402
from apps.tracking.metrics import (  # noqa: E402
    as_singletons,
    edge_metrics,
    efficiency_vs_pt,
    track_metrics,
    tracking_rates,
    trackml_score,
    uniform_weights,
)
from apps.tracking.model import (  # noqa: E402
    EdgeGNN,
    HitEmbedding,
    chain_tracks,
    connected_components_tracks,
    dbscan_tracks,
    edge_auc,
    hit_features,
    knn_graph,
    reachable_share,
)
from apps.tracking.road import FAKE_MARGIN, RoadConfig, hybrid_tracks, road_tracks  # noqa: E402
from apps.tracking.simulate import Geometry, simulate_event  # noqa: E402
from core.app import InputError, Run  # noqa: E402
from core.app.files import save_figure  # noqa: E402

__all__ = ["reconstruct", "evaluate_events", "evaluate", "scored_events", "EVAL_SEED", "PT_BINS", "METHOD_NAMES",
           "BUILDER_METHOD", "REPORT_METRICS"]

EVAL_SEED = 2_000_000
PT_BINS = np.array([0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0])
METHOD_NAMES = {"gnn": "GNN + chaining", "gnn_cc": "GNN + cut/CC", "gnn_learned": "GNN + learned clusterer",
                "dbscan": "DBSCAN (helix coords)", "road": "road following (triplet seeds + helix roads)",
                "road_gnn": "road following grown and completed along GNN edges"}
BUILDER_METHOD = {"chain": "gnn", "cc": "gnn_cc", "learned": "gnn_learned", "road_gnn": "road_gnn"}


@torch.no_grad()
def reconstruct(embed: HitEmbedding, gnn: EdgeGNN, xyz: np.ndarray, k: int, cut: float,
                min_hits: int = 3, cc_cut: float | None = None, clusterer: tuple | None = None,
                candidates: int = 32, cluster_cut: float = 0.5, cluster_hops: int = 0) -> dict:
    """The learned pipeline on one event's hit positions (mm): edges, scores, track ids of the builders
    (``tracks_learned`` with ``clusterer`` = (net, threshold)), and the wall time of each stage."""
    t = [time.perf_counter()]
    feats = hit_features(xyz)
    emb = embed(feats)
    t.append(time.perf_counter())
    edges = knn_graph(emb, k)
    t.append(time.perf_counter())
    x = torch.as_tensor(np.asarray(xyz, dtype=np.float32))
    if clusterer is not None:
        from apps.tracking.cluster import gnn_node_repr

        z, scores_t = gnn_node_repr(gnn, feats, emb, x, edges)
        scores = scores_t.numpy()
    else:
        scores = torch.sigmoid(gnn(feats, emb, x, edges)).numpy() if edges.shape[1] else np.zeros(0)
    t.append(time.perf_counter())
    e = edges.numpy()
    tracks = chain_tracks(len(xyz), e, scores, np.asarray(xyz), cut, min_hits)
    t.append(time.perf_counter())
    tracks_cc = connected_components_tracks(len(xyz), e, scores, cut if cc_cut is None else cc_cut, min_hits)
    stages = {"embed": t[1] - t[0], "graph": t[2] - t[1], "gnn": t[3] - t[2], "build": t[4] - t[3]}
    out = {"edges": e, "scores": scores, "tracks": tracks, "tracks_cc": tracks_cc, "stages": stages,
           "seconds": t[4] - t[0]}
    if clusterer is not None:
        from apps.tracking.cluster import cluster_event, resolve_tracks

        t5 = time.perf_counter()
        cand, prob = cluster_event(clusterer[0], z, emb, x, edges, scores_t, candidates, cluster_cut, cluster_hops)
        out["tracks_learned"] = resolve_tracks(len(xyz), cand, prob, clusterer[1], min_hits)
        stages["cluster"] = time.perf_counter() - t5
        out["seconds_learned"] = t[3] - t[0] + stages["cluster"]
    return out


def _pt_map(ev: Event) -> dict | None:
    if ev.particles is None:
        return None
    p = ev.particles
    return dict(zip(p["particle_id"].to_numpy().tolist(), np.hypot(p["px"], p["py"]).to_numpy().tolist()))


def evaluate_events(events: list[Event], embed: HitEmbedding, gnn: EdgeGNN, tuning: dict, cfg: TrackingSettings,
                    keep_first: bool = True, clusterer: tuple | None = None) -> dict:
    """Per-method mean metrics over ``events`` plus efficiency-vs-pT counts and the first event's tracks."""
    methods = [m for m in METHOD_NAMES if (m != "gnn_learned" or clusterer is not None)
               and (m != "road" or "road" in tuning) and (m != "road_gnn" or tuning.get("hybrid") is not None)]
    per = {m: [] for m in methods}
    weights_used: set[str] = set()
    eff_pt = {m: [np.zeros(len(PT_BINS) - 1), np.zeros(len(PT_BINS) - 1)] for m in methods}
    display = None
    for ev in events:
        pid = ev.particle_ids()
        w, used = ev.score_weights(getattr(cfg, "weights", "auto"))
        w_uniform = uniform_weights(pid)
        weights_used.add(used)
        xyz = ev.hits[["x", "y", "z"]].to_numpy(dtype=np.float64)
        r, z = np.hypot(xyz[:, 0], xyz[:, 1]), xyz[:, 2]
        cut = tuning["edge_cut"]
        rec = reconstruct(embed, gnn, xyz, cfg.k, cut, cfg.min_hits, tuning["cc_cut"], clusterer,
                          cfg.cluster_candidates, cfg.cluster_cut, cfg.cluster_hops)
        t0 = time.perf_counter()
        db = dbscan_tracks(xyz, tuning["dbscan_eps"])
        t_db = time.perf_counter() - t0
        t0 = time.perf_counter()
        road = road_tracks(xyz, _surfaces(ev), RoadConfig(**tuning["road"])) if "road" in tuning else None
        t_road = time.perf_counter() - t0
        hyb, t_hyb = None, 0.0
        if "road_gnn" in methods:
            h = tuning["hybrid"]
            t0 = time.perf_counter()
            hyb = hybrid_tracks(xyz, _surfaces(ev), RoadConfig(**tuning["road"]), rec["edges"], rec["scores"], **h)
            t_hyb = time.perf_counter() - t0 + rec["stages"]["embed"] + rec["stages"]["graph"] + rec["stages"]["gnn"]
        graph = edge_metrics(rec["edges"], pid, r, z)
        kept = edge_metrics(rec["edges"][:, rec["scores"] > cut], pid, r, z)
        stage = {"gnn_edge_auc": edge_auc(rec["edges"], rec["scores"], pid),
                 "graph_reachable": reachable_share(len(pid), rec["edges"], pid),
                 "cut_reachable": reachable_share(len(pid), rec["edges"][:, rec["scores"] > cut], pid)}
        pts = _pt_map(ev)
        runs = [("gnn", rec["tracks"], rec["seconds"]), ("gnn_cc", rec["tracks_cc"], rec["seconds"]),
                ("dbscan", db, t_db)]
        if clusterer is not None:
            runs.insert(2, ("gnn_learned", rec["tracks_learned"], rec["seconds_learned"]))
        if road is not None:
            runs.append(("road", as_singletons(road, road == 0), t_road))  # 0 = unassigned
        if hyb is not None:
            runs.append(("road_gnn", as_singletons(hyb, hyb == 0), t_hyb))
        for m, tracks, secs in runs:
            row = {"trackml_score": trackml_score(tracks, pid, w), **track_metrics(tracks, pid),
                   "score_uniform": trackml_score(tracks, pid, w_uniform), **tracking_rates(tracks, pid),
                   "seconds_per_event": secs, "seconds_per_10k_hits": secs / len(pid) * 1e4, "hits": len(pid)}
            if m not in ("dbscan", "road", "road_gnn"):
                row.update(edge_efficiency=kept["edge_efficiency"], edge_purity=kept["edge_purity"],
                           graph_edge_efficiency=graph["edge_efficiency"], graph_edge_purity=graph["edge_purity"],
                           edges_per_hit=graph["n_edges"] / len(pid), **stage)
            per[m].append(row)
            mat, tot = efficiency_vs_pt(tracks, pid, pts, PT_BINS)
            eff_pt[m][0] += mat
            eff_pt[m][1] += tot
        if display is None and keep_first:
            head = BUILDER_METHOD[cfg.builder]
            shown = as_singletons(hyb, hyb == 0) if head == "road_gnn" and hyb is not None else \
                rec.get(head.replace("gnn", "tracks"), rec["tracks"])
            display = {"xyz": xyz, "pid": pid, "gnn": shown,
                       "dbscan": db, "name": ev.name, "label": METHOD_NAMES[BUILDER_METHOD[cfg.builder]]}
    out = {}
    for m, rows in per.items():
        keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
        out[m] = {k: float(np.nanmean([row[k] for row in rows])) for k in keys}
        out[m]["events"] = len(rows)
    return {"metrics": out, "eff_pt": eff_pt, "display": display, "weights": sorted(weights_used)}


def _surfaces(ev: Event) -> np.ndarray | None:
    """volume_id * 1000 + layer_id per hit (None when the hits do not say)."""
    h = ev.hits
    if "volume_id" in h and "layer_id" in h:
        return h["volume_id"].to_numpy(dtype=np.int64) * 1000 + h["layer_id"].to_numpy(dtype=np.int64)
    return None


def _sim_events(cfg: TrackingSettings, geo: Geometry | None, level: float) -> list[Event]:
    seed = EVAL_SEED + cfg.seed * 10_000 + int(level * 10) * 100
    if cfg.straight:  # straight tracks on the data's planar detector (its density: the detector's, not the level)
        from apps.tracking.train import planar_events

        return planar_events(cfg, seed, cfg.eval_events)
    return [simulate_event(geo, cfg.sim(level), seed=EVAL_SEED + cfg.seed * 10_000 + int(level * 10) * 100 + i,
                           name=f"event{i:09d}") for i in range(cfg.eval_events)]


def _event_display(d: dict, path: Path, title: str) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 11))
    xyz = d["xyz"]
    r = np.hypot(xyz[:, 0], xyz[:, 1])
    for row, (key, label) in enumerate((("gnn", d.get("label", "GNN + chaining")), ("dbscan", "DBSCAN"))):
        lab = d[key]
        u, inv, cnt = np.unique(lab, return_inverse=True, return_counts=True)
        is_track = cnt[inv] >= 4
        rng = np.random.default_rng(0)
        colours = rng.random((len(u), 3)) * 0.85
        for ax, (a, b, xl, yl) in zip(axes[row], ((xyz[:, 0], xyz[:, 1], "x [mm]", "y [mm]"),
                                                  (xyz[:, 2], r, "z [mm]", "r [mm]"))):
            ax.scatter(a[~is_track], b[~is_track], s=1, c="0.8", lw=0)
            ax.scatter(a[is_track], b[is_track], s=2, c=colours[inv[is_track]], lw=0)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(f"{label}: {int((cnt >= 4).sum())} tracks (grey: unassigned)")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _eff_pt_plot(results: dict, path: Path) -> None:
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    centres = np.sqrt(PT_BINS[:-1] * PT_BINS[1:])
    for ax, name in zip(axes[0], names):
        for m, style in (("gnn", "o-"), ("gnn_cc", "s--"), ("gnn_learned", "d-."), ("dbscan", "^:"),
                         ("road", "v-"), ("road_gnn", "x-")):
            if m not in results[name]["eff_pt"]:
                continue
            mat, tot = results[name]["eff_pt"][m]
            ok = tot > 0
            ax.plot(centres[ok], mat[ok] / tot[ok], style, label=METHOD_NAMES[m])
        ax.set_xscale("log")
        ax.set_xlim(PT_BINS[0], PT_BINS[-1])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("particle pT [GeV]")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("track efficiency (double majority)")
    # one legend under the panels: inside the first panel it hid its low-efficiency curves
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    save_figure(fig, path)


def _score_plot(metrics: dict, path: Path) -> None:
    names = list(metrics)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 4.4))
    methods = [m for m in METHOD_NAMES if m in metrics[names[0]]]
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * w, [metrics[n][m]["trackml_score"] for n in names], w,
               label=METHOD_NAMES[m])
    ax.set_xticks(x, names)
    ax.set_ylabel("TrackML score")
    ax.set_ylim(0, 1)
    # below the axes: inside, it hides the bars of the middle data sets
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)




REPORT_METRICS = ("trackml_score", "efficiency", "fake_rate", "score_uniform", "efficiency_70", "fake_rate_70",
                  "clone_rate_70", "edge_efficiency", "edge_purity", "graph_edge_efficiency", "graph_edge_purity",
                  "gnn_edge_auc", "graph_reachable", "cut_reachable", "seconds_per_10k_hits")
BUILDER_TEXT = {"gnn": "chaining", "gnn_cc": "cut + connected components",
                "gnn_learned": "learned clusterer (set transformer over pivots)",
                "road_gnn": "road following (triplet seeds + helix roads) whose tracks grow along the GNN edges, "
                            "plus GNN chains on the hits it leaves"}


def scored_events(s: TrackingSettings) -> tuple[str, list[Event]]:
    """The real data set the report scores (name, events with truth): ``--eval-data``, else the events of ``--data``
    (with ``--train-source data``: its held-out last fifth). Read before anything is trained or written."""
    from apps.tracking.train import real_events

    if s.eval_data:
        return dataset_name(s.eval_data), [read_event(p, require_truth=True) for p in find_events(s.eval_data)]
    name = dataset_name(s.data) + (f"-split{1 - s.particle_split:g}" if s.particle_split > 0 else "")
    return name, real_events(s, train=False)


def evaluate(run: Run, real: tuple[str, list[Event]] | None = None) -> dict | None:
    """Reconstruct the test events with the trained pipeline and the baselines; write ``report.json`` /
    ``report.md`` and the plots into the report folder (``<run-dir>``, or ``<run-dir>/eval/<data>`` with
    ``--eval-data``). Runs on the main process (the others return None at once); returns the report."""
    from apps.tracking.train import _quiet, load_clusterer, load_hybrid, load_models, load_road, model_dir

    s = run.settings
    _quiet()
    real_name, real_events = real if real is not None else scored_events(s)
    root = model_dir(run)
    embed, gnn, tuning = load_models(s, root)
    tuning = {**tuning, "road": load_road(s, root).to_dict(), "hybrid": load_hybrid(root)}
    clusterer = load_clusterer(s, root, required=s.builder == "learned")
    if s.builder == "road_gnn" and tuning["hybrid"] is None:
        raise InputError(f"no road_gnn cuts (hybrid.json) in {root}: run `python -m apps.tracking fit` with the same "
                         "options first (it tunes them on training events), or choose another --builder")
    if not run.is_main:
        return None
    if clusterer is not None:
        tuning = {**tuning, "cluster_threshold": clusterer[1]}
    folder = run.report_dir or run.run_dir.path
    results = {}
    if not s.eval_data and s.eval_events > 0:  # simulated test sets on the training geometry (the run's own report)
        geo = None if s.straight else Geometry.from_file(find_detectors(s.data))
        for level in s.eval_pileup:
            name = f"sim-pu{level:g}"
            run.log(f"evaluating {name} ({s.eval_events} events)")
            results[name] = evaluate_events(_sim_events(s, geo, level), embed, gnn, tuning, s, clusterer=clusterer)
    run.log(f"evaluating {real_name} ({len(real_events)} events)")
    results[real_name] = evaluate_events(real_events, embed, gnn, tuning, s, clusterer=clusterer)
    per_dataset = _finite({n: r["metrics"] for n, r in results.items()})
    plots = []
    for n, r in results.items():
        if r["display"] is not None and (n == real_name or n == next(iter(results))):
            _event_display(r["display"], folder / f"event_display_{n}.png", f"{n}: {r['display']['name']}")
            plots.append(f"event_display_{n}.png")
    _eff_pt_plot(results, folder / "efficiency_vs_pt.png")
    _score_plot(per_dataset, folder / "trackml_score.png")
    plots += ["efficiency_vs_pt.png", "trackml_score.png"]
    head = BUILDER_METHOD[s.builder]
    report = run.report("trackml_score", higher_is_better=True, title="Particle tracking (TrackML score)")
    report.headline = head
    if s.eval_data:
        report.data = s.eval_data
    for name, per in per_dataset.items():
        for m in [head] + [m for m in METHOD_NAMES if m != head]:
            if m in per:
                report.add(m, {k: per[m][k] for k in REPORT_METRICS if k in per[m]}, seed=s.seed, dataset=name,
                           baseline=m != head)
    description = ("hit embedding (SupCon) + kNN graph + GNN (focal + per-particle edge contrastive) + "
                   + BUILDER_TEXT[head])
    report.notes += [
        f"{head}: {description} (--builder {s.builder}); baselines: "
        + "; ".join(f"{m}: {METHOD_NAMES[m]}" for m in METHOD_NAMES if m != head) + ".",
        f"headline data set: {real_name} (real events); sim-pu<level>: simulated test events at that pile-up.",
        "Edge efficiency: share of consecutive-hit truth edges kept; purity: share of kept edges joining two hits of "
        "one particle. 'edge' = after the GNN score cut, 'graph' = the kNN graph. Per stage: graph_reachable / "
        "cut_reachable = share of particles with 4+ hits that more than half of whose hits are joined by their own "
        "edges in the kNN graph / after the score cut (what a perfect builder could still find); gnn_edge_auc = "
        "ROC AUC of the GNN edge scores on the kNN graph; efficiency / cut_reachable = what the builder keeps.",
        "hit weights of trackml_score: " + "; ".join(f"{n}: {'/'.join(r['weights'])}" for n, r in results.items())
        + " (file: the truth's weight column; official: recomputed with the TrackML recipe; uniform: every hit of "
        "a particle with 4+ hits alike). score_uniform: the score with uniform weights. efficiency_70 / "
        "fake_rate_70 / clone_rate_70: a track (4+ hits) matches a particle when >= 70 % of its hits are the "
        "particle's; efficiency over particles with 4+ hits; fake = unmatched tracks / tracks; clone = matched "
        "tracks beyond the first per particle / matched tracks.",
        "tuned on training events: " + ", ".join(f"{k} {v:g}" for k, v in tuning.items()
                                                  if k in ("edge_cut", "cc_cut", "dbscan_eps", "cluster_threshold")),
        "road: " + ", ".join(f"{k} {v:g}" for k, v in tuning["road"].items()) + " (apps/tracking/road.py; cuts "
        "from road.json in the model folder, tuned on training events, else the defaults).",
    ]
    if tuning["hybrid"] is not None:
        report.notes.append("road_gnn: road following with those cuts, seeds and extensions across kNN-graph edges "
                            "scoring below gnn_cut vetoed, candidates with mean edge score below track_cut dropped, "
                            "the selected tracks grown from their ends along the best edges above extend_cut onto "
                            "unassigned hits (None: not grown), then chaining over edges above fill_cut on the hits "
                            "still unassigned (None: no chaining), keeping chains of fill_min_hits+ hits whose "
                            "helix fit residual is within fill_quality and whose mean internal edge score is at "
                            "least fill_cohesion; tuned on training events (hybrid.json: best score at a fake rate "
                            f"at least {FAKE_MARGIN:g} below plain road following's): "
                            + ", ".join(f"{k} {v}" for k, v in tuning["hybrid"].items()) + ".")
    report.plots = plots
    report.extra = {"headline_dataset": real_name, "method": head, "description": description,
                    "method_names": METHOD_NAMES, "tuned": tuning, "per_dataset": per_dataset,
                    "models": str(root), "weights": {n: r["weights"] for n, r in results.items()}}
    out = run.write_report(report, folder)
    for line in (folder / "report.md").read_text().splitlines():
        if line.startswith("|"):
            print(line)
    run.log(f"report: {folder / 'report.md'}")
    return out


def _finite(obj):
    """NaN / inf -> None, so report.json is valid JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
