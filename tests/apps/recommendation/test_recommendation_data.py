"""Data loading and the leave-one-out split, on hand-made files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from apps.recommendation.config import RecConfig
from apps.recommendation.data import leave_one_out, load_sequences, sample_users
from apps.recommendation.evaluate import pop_ranks, sample_note
from apps.recommendation.train import (
    LengthBucketSampler,
    best_of,
    eval_split,
    prepare,
    train_prefixes,
    train_windows,
)
from core.app import InputError


def _write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_s3rec_text_leave_one_out(tmp_path: Path) -> None:
    path = _write(tmp_path, "toy.txt", "u1 1 2 3 4 5\nu2 3 1 2\nu3 4 5\n\nu4 2 4 1 3\n")
    data = load_sequences(path)
    assert data.users == ["u1", "u2", "u4"]  # u3 has 2 interactions: no training item
    assert data.dropped_users == 1
    assert data.item_labels == ["1", "2", "3", "4", "5"]  # integer labels keep their own ids
    assert [s.tolist() for s in data.sequences] == [[1, 2, 3, 4, 5], [3, 1, 2], [2, 4, 1, 3]]
    train, valid, test = leave_one_out(data.sequences[0])
    assert (train.tolist(), valid, test) == ([1, 2, 3], 4, 5)
    exp = prepare(RecConfig(data=path, run_dir=str(tmp_path / "runs")))
    v_in, v_t = eval_split(exp, "valid")
    t_in, t_t = eval_split(exp, "test")
    assert [s.tolist() for s in v_in] == [[1, 2, 3], [3], [2, 4]] and v_t.tolist() == [4, 1, 1]
    assert [s.tolist() for s in t_in] == [[1, 2, 3, 4], [3, 1], [2, 4, 1]] and t_t.tolist() == [5, 2, 3]
    # training rows: inputs train[:-1], next-item targets train[1:]; u2's training sequence [3] has no target
    rows = [(x.tolist(), y.tolist()) for x, y in exp.train_rows]
    assert rows == [([1, 2], [2, 3]), ([2], [4])]


def test_csv_sorted_by_timestamp_and_labels_remapped(tmp_path: Path) -> None:
    path = _write(tmp_path, "log.csv", "user,item,timestamp,rating\n"
                  "a,x,30,5\nb,y,1,1\na,y,10,2\na,z,20,3\nb,z,2,1\nb,x,3,1\na,x,5,1\n")
    data = load_sequences(path)
    assert data.item_labels == ["x", "y", "z"]
    seqs = dict(zip(data.users, (s.tolist() for s in data.sequences)))
    # a: x@5, y@10, z@20, x@30 ; b: y@1, z@2, x@3
    assert seqs == {"a": [1, 2, 3, 1], "b": [2, 3, 1]}
    assert data.item_id("z") == 3
    with pytest.raises(InputError, match="unknown item"):
        data.item_id("nope")


@pytest.mark.parametrize("text, match", [
    ("u1 1 2 3\nu2 4 x 5\n", r"line 2: item 'x' is not a number"),
    ("u1 1 2 3\nu2\n", r"line 2: expected 'user item1"),
    ("u1 1 2.5 3\n", r"line 1: item '2.5' is not a non-negative integer"),
    ("u1 1 2\nu2 3 4\n", "no user has >= 3 interactions"),
    ("u1 1 2 3\nu1 4 5 6\n", r"user 'u1' appears on more than one line \(lines 1 and 2\)"),
    ("1 1\n1 2\n2 3\n1 4 5\n", r"user '1' appears on more than one line \(lines 1 and 2\)"),  # not all pairs
])
def test_bad_text_files_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_sequences(_write(tmp_path, "bad.txt", text))


def test_sasrec_one_interaction_per_line_is_grouped_in_file_order(tmp_path: Path) -> None:
    """The SASRec release format ('user item' per line, chronological per user): users repeat and every line has
    two columns, so each user's items are grouped in file order (not sorted), the same sequences as the S3-Rec
    one-line-per-user file of the same data."""
    pairs = _write(tmp_path, "pairs.txt", "1 5\n1 3\n2 4\n1 9\n2 1\n\n2 2\n3 7\n1 5\n")
    lines = _write(tmp_path, "lines.txt", "1 5 3 9 5\n2 4 1 2\n3 7\n")
    a, b = load_sequences(pairs), load_sequences(lines)
    assert a.users == b.users == ["1", "2"] and a.dropped_users == b.dropped_users == 1
    assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences]
    assert [[a.item_labels[i - 1] for i in s] for s in a.sequences] == [["5", "3", "9", "5"], ["4", "1", "2"]]
    assert a.item_labels == b.item_labels and a.split_checksum() == b.split_checksum()


def test_the_three_formats_read_into_the_same_sequences(tmp_path: Path) -> None:
    """One data set written as S3-Rec lines, SASRec 'user item' pairs (users interleaved) and a shuffled CSV with
    timestamp ties: all three give the hand-checked sequences below (user 3 has 2 interactions and is dropped)."""
    s3rec = _write(tmp_path, "s3rec.txt", "1 10 20 30 20\n2 30 40 10\n3 50 10\n4 40 50 20 10\n")
    sasrec = _write(tmp_path, "sasrec.txt", "1 10\n2 30\n1 20\n4 40\n2 40\n1 30\n3 50\n4 50\n2 10\n1 20\n3 10\n"
                                            "4 20\n4 10\n")
    # user 1: 30 and 20 share timestamp 9 (30 first in the file); user 4: 20 and 10 share 300 (20 first)
    log = _write(tmp_path, "log.csv", "user,item,timestamp,rating\n2,10,130,1\n1,30,9,4\n4,40,100,2\n1,20,9,5\n"
                                      "3,50,1,1\n1,10,5,3\n4,20,300,1\n2,30,110,2\n1,20,7,2\n4,10,300,1\n"
                                      "2,40,120,5\n3,10,2,1\n4,50,200,3\n")
    want = {"1": ["10", "20", "30", "20"], "2": ["30", "40", "10"], "4": ["40", "50", "20", "10"]}
    for path in (s3rec, sasrec, log):
        data = load_sequences(path)
        got = {u: [data.item_labels[i - 1] for i in s] for u, s in zip(data.users, data.sequences)}
        assert got == want, path
        assert data.item_labels == ["10", "20", "30", "40", "50"] and data.dropped_users == 1, path
        ids = {u: s.tolist() for u, s in zip(data.users, data.sequences)}
        assert ids == {"1": [1, 2, 3, 2], "2": [3, 4, 1], "4": [4, 5, 2, 1]}, path


def test_user_sample_keeps_every_item_its_users_touched(tmp_path: Path) -> None:
    """--max-users keeps whole sequences of a random user sample and every item any kept user touched (each user
    here has one item of its own, so a dropped item would show), re-numbered 1..k in label order; nothing else."""
    rng = np.random.default_rng(5)
    lines = {str(u): [*map(str, rng.integers(1, 30, int(rng.integers(3, 7)))), str(1000 + u)] for u in range(40)}
    path = _write(tmp_path, "u.txt", "".join(f"{u} {' '.join(items)}\n" for u, items in lines.items()))
    full = load_sequences(path)
    data = sample_users(full, 10, seed=3)
    assert len(data.users) == 10 and len(set(data.users)) == 10 and set(data.users) <= set(lines)
    assert data.users == sorted(data.users, key=int)  # file order
    for u, s in zip(data.users, data.sequences):
        assert [data.item_labels[i - 1] for i in s] == lines[u]  # whole sequences, labels intact
    touched = {it for u in data.users for it in lines[u]}
    assert data.item_labels == sorted(touched, key=int) and data.n_items == len(touched)
    assert sorted({i for s in data.sequences for i in s.tolist()}) == list(range(1, len(touched) + 1))
    assert data.sample == {"users": 10, "users_total": 40, "items": len(touched), "items_total": full.n_items,
                           "interactions": sum(len(lines[u]) for u in data.users),
                           "interactions_total": sum(map(len, lines.values())), "seed": 3}
    assert sample_users(full, 10, seed=3).users == data.users and sample_users(full, 10, seed=4).users != data.users
    # through the settings: the model and the full ranking cover exactly the sampled items
    exp = prepare(RecConfig(data=path, run_dir="unused", max_users=10, sample_seed=3))
    assert exp.data.users == data.users and exp.data.item_labels == data.item_labels
    assert len(pop_ranks(exp, RecConfig(data=path, run_dir="unused"))) == 10
    note = sample_note(exp.data)
    assert note.startswith("user sample (--max-users 10, --sample-seed 3): 10 of 40 users")
    assert f"{len(touched)} of {full.n_items} items" in note


@pytest.mark.parametrize("text, match", [
    ("user,item\na,1\n", r"line 1: header must name the columns"),
    ("user,item,timestamp\na,1,5\na,2,nan\n", r"line 3: timestamp 'nan' is not finite"),
    ("user,item,timestamp\na,1,five\n", r"line 2: timestamp 'five' is not a number"),
    ("user,item,timestamp\na,1\n", r"line 2: expected 3 columns"),
])
def test_bad_csv_files_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_sequences(_write(tmp_path, "bad.csv", text))


def test_missing_empty_and_unknown_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_sequences(str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="is empty"):
        load_sequences(_write(tmp_path, "empty.txt", ""))
    with pytest.raises(InputError, match="unknown format"):
        load_sequences(_write(tmp_path, "data.json", "{}"))


@pytest.mark.parametrize("name, counts", [("beauty", (22363, 12101, 198502)), ("toys", (19412, 11924, 167597))])
def test_embedded_data_counts(name: str, counts: tuple[int, int, int]) -> None:
    data = load_sequences(name)
    # the SOURCE.md counts of the S3-Rec preprocessing; every user has >= 5 interactions (5-core)
    assert (len(data.sequences), data.n_items, data.n_interactions) == counts and data.dropped_users == 0
    assert data.item_labels[:3] == ["1", "2", "3"]  # ids 1..n kept as they are
    assert data.item_labels[-1] == str(counts[1])


@pytest.mark.parametrize("n", [2, 5, 50, 51, 52, 130])
def test_train_windows_cover_every_target_once(n: int) -> None:
    train = np.arange(1, n + 1)
    rows = train_windows(train, max_len=50)
    targets = np.concatenate([y for _, y in rows])
    assert sorted(targets.tolist()) == list(range(2, n + 1))
    for x, y in rows:
        assert len(x) == len(y) <= 50
        assert (y == x + 1).all()  # each input position predicts its next item


def test_train_prefixes_one_sample_per_prefix_with_only_its_next_item() -> None:
    train = np.array([7, 3, 9, 4])
    rows = train_prefixes(train, max_len=2)
    # prefixes [7], [7 3] and [7 3 9] (last 2 items: [3 9]); targets 3, 9, 4 at the last slot only
    assert [x.tolist() for x, _ in rows] == [[7], [7, 3], [3, 9]]
    assert [y.tolist() for _, y in rows] == [[3], [0, 9], [0, 4]]
    long = train_prefixes(np.arange(1, 131), max_len=50)
    assert len(long) == 129 and all(len(x) <= 50 and (y > 0).sum() == 1 and y[-1] == x[-1] + 1 for x, y in long)


def test_prefix_training_has_the_same_targets_as_all_positions() -> None:
    from apps.recommendation.config import RecConfig

    base = dict(data="beauty", max_users=300, run_dir="unused")
    a = prepare(RecConfig(**base))
    b = prepare(RecConfig(**base, training="prefixes"))
    ta = sorted(int(t) for _, y in a.train_rows for t in y if t > 0)
    tb = sorted(int(t) for _, y in b.train_rows for t in y if t > 0)
    assert ta == tb and len(b.train_rows) == len(tb) > len(a.train_rows)


def test_length_bucket_sampler_is_a_partition() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    s = LengthBucketSampler(lengths, 64, seed=3, pool=4, drop_last=False)
    batches = list(s)
    assert len(batches) == len(s)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    s.set_epoch(1)
    assert list(s) != batches  # a new order per epoch
    d = LengthBucketSampler(lengths, 64, seed=3, pool=4, drop_last=True)
    assert all(len(b) == 64 for b in d) and len(list(d)) == len(d)


def test_length_bucket_sampler_shards_batches_by_rank() -> None:
    """Under DDP each rank takes every world-th batch of the same epoch order, all ranks the same number: together
    they cover the single-process batches (but the last odd one) exactly once."""
    lengths = np.random.default_rng(1).integers(1, 50, size=1000)
    full = [tuple(b) for b in LengthBucketSampler(lengths, 64, seed=3, pool=4, rank=0, world=1)]
    for world in (2, 3):
        shards = []
        for rank in range(world):
            s = LengthBucketSampler(lengths, 64, seed=3, pool=4, rank=rank, world=world)
            s.set_epoch(0)
            shards.append([tuple(b) for b in s])
            assert len(shards[-1]) == len(s) == len(full) // world
        mine = [b for sh in shards for b in sh]
        assert len(set(mine)) == len(mine) and set(mine) <= set(full)
        assert len(mine) == world * (len(full) // world)
        assert shards[1] == full[1::world][: len(full) // world]
    e1 = LengthBucketSampler(lengths, 64, seed=3, pool=4, rank=1, world=2)
    epoch0 = list(e1)
    e1.set_epoch(1)
    assert list(e1) != epoch0  # a new order per epoch on every rank


def test_best_of_is_the_first_epoch_with_the_highest_validation_ndcg() -> None:
    hist = [{"epoch": 1, "train_seconds": 1.0, "val": {"ndcg@10": 0.02}},
            {"epoch": 2, "train_seconds": 1.0},  # not validated
            {"epoch": 3, "train_seconds": 1.0, "val": {"ndcg@10": 0.05}},
            {"epoch": 4, "train_seconds": 1.0, "val": {"ndcg@10": 0.05}},  # a tie: the checkpoint keeps epoch 3
            {"epoch": 5, "train_seconds": 1.0, "val": {"ndcg@10": 0.04}}]
    assert best_of(hist) == {"best_val_ndcg@10": 0.05, "best_epoch": 3}
    assert best_of(hist[1:2]) == {"best_val_ndcg@10": None, "best_epoch": None}


def test_duorec_partners_depend_on_the_batch_only_so_resume_is_exact(tmp_path: Path) -> None:
    from apps.recommendation.train import TrainBatches

    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(str(int(i)) for i in rng.integers(1, 6, size=12)) for u in range(30)]
    path = _write(tmp_path, "toy.txt", "\n".join(lines) + "\n")
    exp = prepare(RecConfig(data=path, run_dir=str(tmp_path / "runs")))
    first, second = list(range(0, 12)), list(range(12, 28))
    assert len(exp.train_rows) >= 28
    unbroken = TrainBatches(exp, 8, True, seed=3)
    unbroken(first)
    resumed = TrainBatches(exp, 8, True, seed=3)  # a resumed run never saw `first`
    a, b = unbroken(second), resumed(second)
    assert torch.equal(a["same_items"], b["same_items"]) and torch.equal(a["same_lengths"], b["same_lengths"])
    # every partner is a training prefix that ends in the row's own target (or the row itself when it is alone)
    for k, i in enumerate(second):
        target = int(exp.train_rows[i][1][-1])
        partner = a["same_items"][k, : a["same_lengths"][k]].tolist()
        cands = exp.prefixes[target]
        if len(cands) > 1:
            assert any(exp.train_seqs[u][max(0, p - 8): p].tolist() == partner for u, p in cands)
    # other seeds and other batches draw other partners
    draws = {tuple(TrainBatches(exp, 8, True, seed=s)(second)["same_items"].flatten().tolist()) for s in range(6)}
    assert len(draws) > 1
