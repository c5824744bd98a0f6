"""TrackML readers: the embedded real event, and clear errors (file and line) on bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from apps.tracking.data import EMBEDDED, SHARED, dataset_name, find_detectors, find_events, read_detectors, read_event
from core.app import InputError

HITS = "hit_id,x,y,z,volume_id,layer_id,module_id\n"
TRUTH = "hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz,weight\n"


def test_embedded_real_event() -> None:
    (prefix,) = find_events(None)
    ev = read_event(prefix, require_truth=True)
    assert ev.n_hits == 5527
    pid = ev.particle_ids()
    assert int((pid == 0).sum()) == 829 and len(np.unique(pid[pid != 0])) == 468
    assert ev.particles is not None and len(ev.particles) == 548
    det = read_detectors(find_detectors(None))
    assert len(det) == 18728


def write(folder: Path, hits: str, truth: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "event000000001-hits.csv").write_text(hits)
    if truth is not None:
        (folder / "event000000001-truth.csv").write_text(truth)
    return folder


@pytest.mark.parametrize(
    "hits, truth, match",
    [
        (HITS + "1,1.0,2.0,3.0,8,2,1\n2,1.0,abc,3.0,8,2,1\n", None, r"event000000001-hits.csv line 3: column 'y'"),
        (HITS + "1,1.0,2.0,nan,8,2,1\n", None, r"hits.csv line 2: column 'z' has a value that is not a finite"),
        ("hit_id,x,y\n1,2,3\n", None, r"hits.csv line 1: missing column"),
        (HITS, None, r"no rows after the header"),
        (HITS + "1,1,2,3,8,2,1\n1,1,2,3,8,2,1\n", None, r"line 3: duplicate hit_id"),
        (HITS + "1,1,2,3,8,2,1\n", TRUTH + "1,5,1,2,3,0,0,0,inf\n", r"truth.csv line 2: column 'weight'"),
        (HITS + "1,1,2,3,8,2,1\n", TRUTH + "2,5,1,2,3,0,0,0,1\n", r"hit_id values do not match"),
        (HITS + "1,1,2,3,8,2,1\n", TRUTH + "1,5,1,2,3,0,0,0,-1\n", r"line 2: negative hit weight"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, hits: str, truth: str | None, match: str) -> None:
    folder = write(tmp_path / "d", hits, truth)
    with pytest.raises(InputError, match=match):
        read_event(find_events(folder)[0])


def test_missing_and_empty_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        find_events(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no TrackML event files"):
        find_events(tmp_path / "empty")
    (tmp_path / "event000000001-hits.csv").write_text("")
    with pytest.raises(InputError, match="is empty"):
        read_event(tmp_path / "event000000001")
    folder = write(tmp_path / "nt", HITS + "1,1,2,3,8,2,1\n")
    with pytest.raises(InputError, match="truth"):
        read_event(find_events(folder)[0], require_truth=True)


def test_event_prefix_and_file_paths_resolve(tmp_path: Path) -> None:
    for f in SHARED.glob("event000000001-*"):
        shutil.copy(f, tmp_path / f.name)
    assert find_events(tmp_path / "event000000001") == [tmp_path / "event000000001"]
    assert find_events(tmp_path / "event000000001-hits.csv.gz") == [tmp_path / "event000000001"]
    # no detectors.csv next to the copy: the embedded geometry is used
    assert find_detectors(tmp_path) == SHARED / "detectors.csv.gz"


def test_embedded_data_set_by_name(tmp_path: Path) -> None:
    assert find_events(EMBEDDED) == find_events(None) == [SHARED / "event000000001"]
    assert find_detectors(EMBEDDED) == SHARED / "detectors.csv.gz"
    assert dataset_name(EMBEDDED) == dataset_name(None) == EMBEDDED
    assert dataset_name(tmp_path / "my_events") == "my_events"
    with pytest.raises(InputError, match="empty"):
        find_events(" ")
