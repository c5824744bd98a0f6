"""Reading TrackML files in every released layout, the generic hit format, the per-module JSON converter, the
planar straight-track simulator, and a forward-detector event end to end (fit on simulated straight-track
events, evaluate on another) with efficiency / fake / clone rates in the report."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from apps.tracking.__main__ import main
from apps.tracking.data import find_detectors, find_events, read_detectors, read_event, write_event
from apps.tracking.formats import read_generic, read_module_json, write_generic
from apps.tracking.metrics import tracking_rates
from apps.tracking.model import dbscan_tracks
from apps.tracking.planar import PlanarDetector, simulate_planar_event
from core.app import InputError

HITS = "hit_id,x,y,z,volume_id,layer_id,module_id\n" + "".join(
    f"{i},{10.0 * i},1.5,{-5.0 * i},8,2,{i}\n" for i in range(1, 7))
TRUTH = "hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz,weight\n" + "".join(
    f"{i},{p},{10.0 * i},1.5,{-5.0 * i},1,0,0,{w}\n"
    for i, p, w in zip(range(1, 7), [4503599627370496] * 4 + [0, 4503599627370497], [0.4, 0.2, 0.1, 0.3, 0, 0]))
# the challenge's particles layout: no particle_type column
PARTICLES_CHALLENGE = ("particle_id,vx,vy,vz,px,py,pz,q,nhits\n4503599627370496,0,0,0,0.6,0.8,1,1,4\n"
                       "4503599627370497,0,0,0,0.1,0,0,-1,1\n")


def _write(folder: Path, name: str, text: str, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(folder / f"{name}.gz", "wt") as f:
            f.write(text)
    else:
        (folder / name).write_text(text)


@pytest.mark.parametrize("gz", [False, True])
def test_challenge_particles_layout_without_particle_type(tmp_path: Path, gz: bool) -> None:
    for kind, text in (("hits", HITS), ("truth", TRUTH), ("particles", PARTICLES_CHALLENGE)):
        _write(tmp_path, f"event000000007-{kind}.csv", text, gz)
    ev = read_event(find_events(tmp_path)[0], require_truth=True)
    assert "particle_type" not in ev.particles.columns
    assert ev.particles["particle_id"].tolist() == [4503599627370496, 4503599627370497]
    assert np.allclose(ev.particle_pt()[:4], 1.0) and np.isnan(ev.particle_pt()[4])
    w, used = ev.score_weights()
    assert used == "file" and np.allclose(w, [0.4, 0.2, 0.1, 0.3, 0, 0])
    # official weights: order by |tz - vz| = 5, 10, 15, 20 -> profile of 4 hits; pT 1 GeV
    w, used = ev.score_weights("official")
    assert used == "official" and np.allclose(w[:4], np.array([10, 16 / 3, 3, 6]) / (73 / 3))
    # written back: only the columns it has
    out = tmp_path / "copy"
    write_event(out / ev.name, ev, compress=False)
    assert (out / "event000000007-particles.csv").read_text().splitlines()[0] == "particle_id,vx,vy,vz,px,py,pz,q,nhits"
    back = read_event(out / ev.name, require_truth=True)
    assert np.allclose(back.weights(), ev.weights())


def test_release_detectors_layout_without_index_column(tmp_path: Path) -> None:
    cols = ("volume_id,layer_id,module_id,cx,cy,cz,rot_xu,rot_xv,rot_xw,rot_yu,rot_yv,rot_yw,rot_zu,rot_zv,rot_zw,"
            "module_t,module_minhu,module_maxhu,module_hv,pitch_u,pitch_v\n")
    rows = "".join(f"8,2,{m},{32 * np.cos(m)},{32 * np.sin(m)},{-400 + 50 * m},1,0,0,0,1,0,0,0,1,0.15,8.4,8.4,36,"
                   f"0.05,0.05\n" for m in range(1, 4))
    _write(tmp_path, "detectors.csv", cols + rows, gz=True)
    for kind, text in (("hits", HITS), ("truth", TRUTH)):
        _write(tmp_path / "events", f"event000000001-{kind}.csv", text)
    det_path = find_detectors(tmp_path / "events")
    assert det_path == tmp_path / "detectors.csv.gz"
    det = read_detectors(det_path)
    assert det["module_id"].tolist() == [1, 2, 3] and np.allclose(det["cz"], [-350, -300, -250])


def test_optional_truth_columns_cells_and_missing_weights(tmp_path: Path) -> None:
    _write(tmp_path, "event000000001-hits.csv", HITS)
    _write(tmp_path, "event000000001-truth.csv", "hit_id,particle_id\n" + "".join(
        f"{i},{p}\n" for i, p in zip(range(1, 7), [5, 5, 5, 5, 0, 0])))
    _write(tmp_path, "event000000001-cells.csv", "hit_id,ch0,ch1,value\n1,3,4,0.2\n")
    ev = read_event(tmp_path / "event000000001", require_truth=True)
    assert not ev.has_file_weights() and ev.particles is None
    w, used = ev.score_weights()
    assert used == "uniform" and np.allclose(w, [0.25] * 4 + [0, 0])
    # empty weight cells: partial weights -> recomputed; a word in the weight column is an error naming the line
    _write(tmp_path, "event000000001-truth.csv", "hit_id,particle_id,weight\n1,5,0.5\n2,5,\n3,5,0.1\n4,5,0.1\n"
                                                  "5,0,0\n6,0,0\n")
    _write(tmp_path, "event000000001-particles.csv", "particle_id,px,py\n5,3.0,0\n")
    ev = read_event(tmp_path / "event000000001", require_truth=True)
    w, used = ev.score_weights()
    assert used == "official" and np.allclose(w[:4], np.array([10, 16 / 3, 3, 6]) / (73 / 3))  # |z| = 5i: order
    _write(tmp_path, "event000000001-truth.csv", "hit_id,particle_id,weight\n1,5,0.5\n2,5,heavy\n3,5,0\n4,5,0\n"
                                                  "5,0,0\n6,0,0\n")
    with pytest.raises(InputError, match=r"truth.csv line 3: column 'weight'"):
        read_event(tmp_path / "event000000001")
    _write(tmp_path, "event000000001-particles.csv", "px,py\n3.0,0\n")
    _write(tmp_path, "event000000001-truth.csv", "hit_id,particle_id\n" + "".join(f"{i},5\n" for i in range(1, 7)))
    with pytest.raises(InputError, match=r"particles.csv line 1: missing column\(s\) \['particle_id'\]"):
        read_event(tmp_path / "event000000001")


MODULE_EVENT = {
    "event": "fwd0001",
    "modules": [
        {"module_id": 1011, "layer_id": 1, "hits": [
            {"hit_id": 3, "x": 1.0, "y": 2.0, "z": 300.0, "particle_id": 7},
            {"hit_id": 1, "x": -4.0, "y": 0.5, "z": 300.0, "particle_id": 0}]},
        {"module_id": 2011, "layer_id": 2, "hits": [
            {"hit_id": 2, "x": 1.3, "y": 2.6, "z": 400.0, "particle_id": 7}]},
        {"module_id": 3005, "hits": [
            {"hit_id": 9, "x": 1.6, "y": 3.2, "z": 500.0, "particle_id": 7}]},
    ],
    "particles": [{"particle_id": 7, "px": 0.01, "py": 0.02, "pz": 3.0, "vz": 0.0}],
}


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_convert_per_module_json_to_the_generic_format(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "in" / "a.json"
    src.parent.mkdir()
    src.write_text(json.dumps(MODULE_EVENT))
    out = tmp_path / "out"
    assert main(["convert", "--input", str(src.parent), "--output", str(out), "--format", fmt]) == 0
    (path,) = find_events(out)
    assert path.name == f"fwd0001.hits.{fmt}"
    ev = read_event(path, require_truth=True)
    expect = sorted((h["hit_id"], h["x"], h["z"], m["module_id"], m.get("layer_id", m["module_id"]),
                     h["particle_id"]) for m in MODULE_EVENT["modules"] for h in m["hits"])
    got = list(zip(ev.hits.hit_id, ev.hits.x, ev.hits.z, ev.hits.module_id, ev.hits.layer_id,
                   ev.truth.particle_id))
    assert got == expect and ev.name == "fwd0001"
    assert ev.particles["particle_id"].tolist() == [7] and np.isclose(ev.particle_pt()[1], np.hypot(0.01, 0.02))
    w, used = ev.score_weights()  # no weights in the file: official weights (3 hits: too short -> all zero)
    assert used == "official" and np.all(w == 0)


@pytest.mark.parametrize("mutate, match", [
    (lambda e: e["modules"][1].pop("module_id"), r"module 2: needs 'module_id'"),
    (lambda e: e["modules"][0]["hits"][1].pop("x"), r"module 1 \(module_id 1011\), hit 2: missing \['x'\]"),
    (lambda e: e["modules"][2]["hits"][0].pop("particle_id"), r"hit_id 9 has no particle_id"),
    (lambda e: e["modules"][2]["hits"][0].update(hit_id=3), r"duplicate hit_id 3"),
    (lambda e: e["modules"][0]["hits"][0].update(z="far"), r"column 'z' is not a finite number"),
    (lambda e: e.pop("modules"), r"needs a non-empty 'modules' list"),
])
def test_converter_names_the_bad_module_or_hit(tmp_path: Path, mutate, match: str) -> None:
    ev = json.loads(json.dumps(MODULE_EVENT))
    mutate(ev)
    src = tmp_path / "a.json"
    src.write_text(json.dumps(ev))
    with pytest.raises(InputError, match=match):
        read_module_json(src)
    assert main(["convert", "--input", str(src), "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_generic_csv_needs_module_or_layer_and_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "ev1.hits.csv"
    f.write_text("hit_id,x,y,z,module_id\n2,1,2,3,40\n1,4,5,6,41\n")
    ev = read_generic(f)
    assert ev.truth is None and ev.hits.layer_id.tolist() == [41, 40] and ev.hits.hit_id.tolist() == [1, 2]
    with pytest.raises(InputError, match="no particle_id column"):
        read_event(f, require_truth=True)
    f.write_text("hit_id,x,y,z\n1,1,2,3\n")
    with pytest.raises(InputError, match="module_id or layer_id"):
        read_generic(f)
    ev = simulate_planar_event(PlanarDetector(particles=8), seed=4, name="ev2")
    for fmt in ("csv", "json"):
        write_generic(tmp_path / fmt, ev, fmt)
        back = read_event(find_events(tmp_path / fmt)[0], require_truth=True)
        assert np.array_equal(back.hits.module_id, ev.hits.module_id) and np.allclose(back.hits.x, ev.hits.x,
                                                                                       rtol=1e-5)
        assert np.array_equal(back.particle_ids(), ev.particle_ids())
        assert np.allclose(back.weights(), ev.weights(), rtol=1e-4, atol=1e-9)


def test_planar_simulator_makes_straight_tracks_on_the_planes() -> None:
    det = PlanarDetector(particles=30, material=0.0, hit_resolution=0.0, noise_fraction=0.1)
    ev = simulate_planar_event(det, seed=11)
    h, t = ev.hits, ev.truth
    assert set(np.round(h.z, 6)) <= set(det.planes_z)
    assert np.array_equal(h.layer_id.to_numpy(), np.searchsorted(det.planes_z, h.z.to_numpy()) + 1)
    assert np.array_equal(h.module_id, det.modules(h.layer_id.to_numpy() - 1, h.x.to_numpy(), h.y.to_numpy()))
    r = np.hypot(h.x, h.y)
    assert np.all((r >= det.hole_radius) & (np.abs(h.x) <= det.half_width) & (np.abs(h.y) <= det.half_width))
    pid = t.particle_id.to_numpy()
    assert (pid == 0).sum() > 0
    part = ev.particles.set_index("particle_id")
    for p in np.unique(pid[pid > 0]):  # every track lies on the straight line of its vertex and momentum
        m = pid == p
        v, mom = part.loc[p, ["vx", "vy", "vz"]].to_numpy(float), part.loc[p, ["px", "py", "pz"]].to_numpy(float)
        s = (h.z[m].to_numpy() - v[2]) / mom[2]
        assert np.allclose(h[["x", "y"]][m].to_numpy(), v[:2] + s[:, None] * mom[:2], atol=1e-6)
        assert part.loc[p, "nhits"] == m.sum()
    assert np.isclose(ev.weights().sum(), 1.0)


def test_planar_detector_is_inferred_from_recorded_events() -> None:
    det = PlanarDetector(planes_z=[250.0, 330.0, 480.0, 700.0], particles=60, hit_resolution=0.0)
    events = [simulate_planar_event(det, seed=s) for s in range(3)]
    got = PlanarDetector.from_events(events, particles=10)
    assert np.allclose(got.planes_z, det.planes_z) and got.particles == 10
    assert det.half_width * 0.9 < got.half_width <= det.half_width
    assert det.hole_radius <= got.hole_radius < det.hole_radius + 5
    with pytest.raises(InputError, match="at least 2 planes"):
        PlanarDetector.from_events([read_event(find_events(None)[0])])


def test_simulate_planar_like_recorded_events(tmp_path: Path) -> None:
    rec = tmp_path / "recorded"
    assert main(["simulate-planar", "--output", str(rec), "--planes-z", "250", "330", "480", "--particles", "80",
                 "--format", "json"]) == 0
    out = tmp_path / "sim"
    assert main(["simulate-planar", "--output", str(out), "--like", str(rec), "--events", "2", "--seed", "9"]) == 0
    evs = [read_event(p, require_truth=True) for p in find_events(out)]
    assert [e.name for e in evs] == ["event000000009", "event000000010"]
    assert set(np.concatenate([e.hits.z.to_numpy() for e in evs])) <= {250.0, 330.0, 480.0}
    assert main(["simulate-planar", "--output", str(out), "--like", str(tmp_path / "nothing")]) == 2


def test_forward_event_is_reconstructed_and_scored_without_training() -> None:
    """The fast check of the forward-detector path: a planar event, the DBSCAN baseline (its coordinates x/d,
    y/d, z/r are constant along a straight track from the origin), the generic rates."""
    ev = simulate_planar_event(PlanarDetector(particles=40), seed=21)
    pid = ev.particle_ids()
    tracks = dbscan_tracks(ev.hits[["x", "y", "z"]].to_numpy(), 0.05)
    r = tracking_rates(tracks, pid)
    assert r["efficiency_70"] > 0.8 and r["fake_rate_70"] < 0.2 and r["clone_rate_70"] < 0.2


TINY = ["--embed-epochs", "1", "--gnn-epochs", "1", "--embed-hidden", "16", "--embed-depth", "1",
        "--gnn-hidden", "8", "--gnn-layers", "1", "--dbscan-eps", "0.05", "--k", "4", "--no-progress",
        "--threads", "1", "--cluster-epochs", "1", "--cluster-dim", "8", "--cluster-layers", "1",
        "--cluster-pivots", "64", "--cluster-candidates", "8"]


def _forward_run(tmp_path: Path, extra: list[str], events: int = 3) -> dict:
    data = tmp_path / "forward"
    assert main(["simulate-planar", "--output", str(data), "--events", str(events), "--particles", "15"]) == 0
    run_dir = tmp_path / "run"
    assert main(["run", "--data", str(data), "--train-source", "data", "--eval-events", "0",
                 "--run-dir", str(run_dir), *extra]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["extra"]["weights"] == {"forward": ["file"]}
    assert any("clone_rate_70" in n for n in report["notes"])
    return report["extra"]["per_dataset"]["forward"]


def test_forward_detector_end_to_end_tiny(tmp_path: Path) -> None:
    per = _forward_run(tmp_path, TINY)
    for m in ("gnn_learned", "dbscan"):
        for k in ("efficiency_70", "fake_rate_70", "clone_rate_70", "score_uniform", "trackml_score"):
            assert 0 <= per[m][k] <= 1


@pytest.mark.slow
def test_forward_detector_end_to_end_quick_reconstructs_the_tracks(tmp_path: Path) -> None:
    per = _forward_run(tmp_path, ["--quick", "--threads", "1", "--no-progress"], events=5)
    assert per["gnn_learned"]["efficiency_70"] > 0.85 and per["gnn_learned"]["fake_rate_70"] < 0.15
    assert per["gnn_learned"]["trackml_score"] > 0.85


def test_straight_flag_trains_and_tests_on_straight_tracks_of_the_datas_planes(tmp_path: Path) -> None:
    """--straight: the simulated training (and test) events are straight tracks on the planes of --data's hits,
    with seeds disjoint between training and test; TrackML (barrel) data has no planes: a clear error."""
    from apps.tracking.config import TrackingSettings
    from apps.tracking.evaluate import _sim_events
    from apps.tracking.train import training_events

    det = PlanarDetector(planes_z=[250.0, 330.0, 480.0, 700.0], particles=40, hit_resolution=0.0, material=0.0)
    write_generic(tmp_path / "fwd", simulate_planar_event(det, seed=1, name="rec"))
    cfg = TrackingSettings(data=str(tmp_path / "fwd"), straight=True, train_events=2, eval_events=1)
    train, test = training_events(cfg, None), _sim_events(cfg, None, 5.0)
    assert len(train) == 2 and len(test) == 1
    for ev in train + test:
        h, pid = ev.hits, ev.particle_ids()
        assert set(np.round(h.z.to_numpy(), 3)) <= {250.0, 330.0, 480.0, 700.0}
        for p in np.unique(pid[pid > 0]):  # x, y linear in z along every particle (to the 20 um hit resolution)
            m = pid == p
            if m.sum() >= 3:
                z = h.z[m].to_numpy()
                for c in ("x", "y"):
                    fit = np.polyfit(z, h[c][m].to_numpy(), 1)
                    assert np.allclose(np.polyval(fit, z), h[c][m].to_numpy(), atol=0.2)
    assert not np.array_equal(train[0].hits.x.to_numpy()[:5], test[0].hits.x.to_numpy()[:5])
    with pytest.raises(InputError, match="at least 2 planes"):
        training_events(TrackingSettings(straight=True, train_events=1), None)
