"""Interaction data: the S3-Rec text format, CSV interaction logs, and the chronological leave-one-out split.

Standard formats read by :func:`load_sequences`:

* **S3-Rec text** (``.txt``; the format of the S3-Rec / CL4SRec / DuoRec / MCLRec data): one line per user,
  ``user_id item_1 item_2 ... item_n`` separated by spaces, items in chronological order;
* **SASRec text** (``.txt``; the format of the SASRec data release): one interaction per line, ``user_id item``,
  each user's lines in chronological order. Recognised when users repeat and every line has exactly two columns;
  each user's items are then grouped in file order;
* **CSV** (``.csv``): one interaction per row with the columns ``user,item,timestamp`` (a header row naming
  them is required, other columns are ignored); each user's items are ordered by timestamp (ties keep the
  file order).

Item labels are mapped to contiguous ids ``1..n_items`` (0 is the padding id) in the order of their numeric
value when every label is an integer (so the S3-Rec files keep their own ids), else in lexicographic order.

Leave-one-out (Kang & McAuley 2018; RecBole ``TO_LS``): for a user with items ``s_1..s_n`` the **test** case
is ``s_1..s_{n-1} -> s_n``, the **validation** case ``s_1..s_{n-2} -> s_{n-1}``, and the training sequence is
``s_1..s_{n-2}`` (next-item targets at every position). Users with fewer than 3 interactions have no
training item and are dropped (counted in :attr:`SequenceData.dropped_users`).
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.app import InputError

__all__ = ["SequenceData", "load_sequences", "resolve_data_path", "EMBEDDED", "DATA_DIR",
           "leave_one_out", "sample_users"]

DATA_DIR = Path(__file__).resolve().parents[2] / "shared_data" / "recommendation"
#: embedded default data sets: name -> file
EMBEDDED = {"beauty": "Beauty.txt", "toys": "Toys_and_Games.txt"}


@dataclass
class SequenceData:
    """Chronological item sequences of every user (item ids 1..n_items, 0 = padding)."""

    name: str
    users: list[str]
    sequences: list[np.ndarray]  # int64 item ids, oldest first
    item_labels: list[str]  # item_labels[i - 1] is the original label of item id i
    dropped_users: int = 0
    source: str = ""
    #: what a user sample kept (:func:`sample_users`): users / items / interactions kept and total, the seed
    sample: dict | None = None
    _label_to_id: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_labels)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_id(self, label: str) -> int:
        """Internal id of an original item label (raises :class:`InputError` for an unknown label)."""
        if not self._label_to_id:
            self._label_to_id = {lab: i + 1 for i, lab in enumerate(self.item_labels)}
        try:
            return self._label_to_id[str(label)]
        except KeyError:
            raise InputError(f"unknown item {label!r}: not among the {self.n_items} items of data set {self.name!r} "
                             f"({self.source})") from None

    def split_checksum(self) -> str:
        """sha256 (first 16 hex digits) of the leave-one-out split: train sequences, validation and test items."""
        h = hashlib.sha256()
        for s in self.sequences:
            h.update(np.asarray(s, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]


def leave_one_out(seq: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(train, valid_item, test_item)`` of one chronological sequence of length >= 3."""
    if len(seq) < 3:
        raise InputError(f"leave-one-out needs >= 3 interactions, got {len(seq)}")
    return seq[:-2], int(seq[-2]), int(seq[-1])


def sample_users(data: SequenceData, n: int, seed: int) -> SequenceData:
    """A random sample of ``n`` users (``numpy.random.default_rng(seed)``, without replacement, kept in file order)
    with their whole sequences and **every** item any of them touched: the items are re-numbered ``1..k`` in their
    old order and nothing else is dropped, so a full ranking over the ``k`` items is the papers' protocol on a
    smaller user base. ``n >= `` the number of users keeps all of them (the sample is still recorded)."""
    total = len(data.sequences)
    if n < total:
        keep = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    else:
        keep = np.arange(total)
    seqs = [data.sequences[i] for i in keep]
    touched = np.unique(np.concatenate(seqs))  # old ids, ascending
    new_id = np.zeros(data.n_items + 1, dtype=np.int64)
    new_id[touched] = np.arange(1, len(touched) + 1)
    sample = {"users": len(keep), "users_total": total, "items": len(touched), "items_total": data.n_items,
              "interactions": int(sum(len(s) for s in seqs)), "interactions_total": data.n_interactions,
              "seed": int(seed)}
    return SequenceData(name=f"{data.name}_{len(keep)}users" if len(keep) < total else data.name,
                        users=[data.users[i] for i in keep], sequences=[new_id[s] for s in seqs],
                        item_labels=[data.item_labels[i - 1] for i in touched], dropped_users=data.dropped_users,
                        source=data.source, sample=sample)


def resolve_data_path(data: str | None) -> tuple[str, Path]:
    """``(dataset name, file)`` of ``--data``: an embedded name (``beauty``, ``toys``) or a path."""
    if data is None or data in EMBEDDED:
        name = data or "beauty"
        return name, DATA_DIR / EMBEDDED[name]
    path = Path(data)
    if not path.exists():
        raise InputError(f"data path {path} does not exist (embedded defaults: {', '.join(EMBEDDED)})")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".csv"))
        if len(files) != 1:
            raise InputError(f"data folder {path} must hold exactly one .txt (S3-Rec) or .csv file, found "
                             f"{[p.name for p in files]}")
        path = files[0]
    return path.stem, path


def _order_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _read_txt(path: Path) -> tuple[list[str], list[list[str]]]:
    """Users and their item sequences of an S3-Rec file (one line per user) or a SASRec file (one ``user item``
    pair per line, chronological per user: users repeat and every line has exactly two columns; grouped in file
    order). Any other file in which a user repeats is refused, naming the user and both lines."""
    users, seqs, linenos = [], [], []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise InputError(f"{path} line {lineno}: expected 'user item1 item2 ...', got {line.strip()!r}")
            for tok in parts[1:]:
                try:
                    v = float(tok)
                except ValueError:
                    raise InputError(f"{path} line {lineno}: item {tok!r} is not a number (S3-Rec format: "
                                     "space-separated integer ids)") from None
                if not math.isfinite(v) or v != int(v) or v < 0:
                    raise InputError(f"{path} line {lineno}: item {tok!r} is not a non-negative integer id")
            users.append(parts[0])
            seqs.append([str(int(float(t))) for t in parts[1:]])
            linenos.append(lineno)
    first: dict[str, int] = {}
    repeated = None
    for i, u in enumerate(users):
        if u in first:
            repeated = (u, linenos[first[u]], linenos[i])
            break
        first[u] = i
    if repeated is None:
        return users, seqs
    if all(len(s) == 1 for s in seqs):  # SASRec format: one interaction per line
        grouped: dict[str, list[str]] = {}
        for u, s in zip(users, seqs):
            grouped.setdefault(u, []).extend(s)
        return list(grouped), list(grouped.values())
    u, a, b = repeated
    raise InputError(f"{path}: user {u!r} appears on more than one line (lines {a} and {b}); use one line per user "
                     "('user item1 item2 ...') or one 'user item' pair on every line (SASRec format)")


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise InputError(f"{path} is empty") from None
        missing = [c for c in ("user", "item", "timestamp") if c not in header]
        if missing:
            raise InputError(f"{path} line 1: header must name the columns user,item,timestamp; missing {missing} "
                             f"(got {header})")
        iu, ii, it = header.index("user"), header.index("item"), header.index("timestamp")
        rows: dict[str, list[tuple[float, int, str]]] = {}
        for lineno, row in enumerate(reader, 2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max(iu, ii, it):
                raise InputError(f"{path} line {lineno}: expected {len(header)} columns, got {len(row)}")
            user, item, ts = row[iu].strip(), row[ii].strip(), row[it].strip()
            if not user or not item:
                raise InputError(f"{path} line {lineno}: empty user or item")
            try:
                t = float(ts)
            except ValueError:
                raise InputError(f"{path} line {lineno}: timestamp {ts!r} is not a number") from None
            if not math.isfinite(t):
                raise InputError(f"{path} line {lineno}: timestamp {ts!r} is not finite")
            rows.setdefault(user, []).append((t, lineno, item))
    users = list(rows)
    seqs = [[item for _, _, item in sorted(rows[u])] for u in users]
    return users, seqs


def load_sequences(data: str | None = None, min_length: int = 3) -> SequenceData:
    """Read ``--data`` (embedded name, S3-Rec ``.txt`` or ``.csv``) into chronological id sequences.

    Raises:
        InputError: missing or empty file, unknown extension, a malformed line (named), no usable user.
    """
    name, path = resolve_data_path(data)
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"data file {path} is empty")
    if path.suffix == ".txt":
        users, seqs = _read_txt(path)
    elif path.suffix == ".csv":
        users, seqs = _read_csv(path)
    else:
        raise InputError(f"{path}: unknown format {path.suffix!r}; use an S3-Rec .txt (user item1 item2 ...) or a "
                         ".csv with columns user,item,timestamp")
    keep = [i for i, s in enumerate(seqs) if len(s) >= min_length]
    if not keep:
        raise InputError(f"{path}: no user has >= {min_length} interactions (leave-one-out needs a training item, "
                         "a validation item and a test item)")
    labels = _order_labels({it for i in keep for it in seqs[i]})
    to_id = {lab: k + 1 for k, lab in enumerate(labels)}
    sequences = [np.array([to_id[it] for it in seqs[i]], dtype=np.int64) for i in keep]
    return SequenceData(name=name, users=[users[i] for i in keep], sequences=sequences, item_labels=labels,
                        dropped_users=len(seqs) - len(keep), source=str(path), _label_to_id=to_id)
