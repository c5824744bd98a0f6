"""Epoch selection on validation MAE (``--select-epoch best_val``): the kept weights are those of the epoch with the
lowest validation MAE, the earliest on a tie, and survive an interrupted-and-resumed fit."""

from __future__ import annotations

import csv
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from apps.regression.__main__ import main
from apps.regression.config import RegressionSettings, switches
from apps.regression.data import load_data
from apps.regression.train import BestValidation, build_regressor
from core.app import load_torch

SCRIPT = [0.50, 0.30, 0.40, 0.30, math.nan, 0.35]  # lowest 0.30 at epochs 1 and 3 (0-based); NaN never wins


class _Scripted(L.LightningModule):
    """A parameter that holds ``epoch + 1`` during epoch ``epoch``; validation MAE read off :data:`SCRIPT`."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def on_train_epoch_start(self) -> None:
        with torch.no_grad():
            self.w.fill_(self.current_epoch + 1)

    def training_step(self, batch, batch_idx):
        return self.w * 0.0

    def validation_step(self, batch, batch_idx):
        self.log("val/mae", torch.tensor(SCRIPT[self.current_epoch]), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _loader():
    return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4)


def test_best_validation_keeps_the_earliest_lowest_epoch():
    cb = BestValidation("val/mae")
    trainer = L.Trainer(max_epochs=len(SCRIPT), callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        accelerator="cpu", devices=1)
    module = _Scripted()
    trainer.fit(module, _loader(), _loader())
    assert cb.best_epoch == 1 and cb.best_score == pytest.approx(0.30)
    assert float(cb.best_state["w"]) == 2.0  # the weights of epoch 1, not the final ones
    assert float(module.w.detach()) == len(SCRIPT)
    restored = BestValidation()
    restored.load_state_dict(cb.state_dict())
    assert restored.best_epoch == 1 and torch.equal(restored.best_state["w"], cb.best_state["w"])


def _csv(path, n=300):
    rng = np.random.default_rng(1)
    y = np.floor(rng.exponential(3.0, n)) + 1
    x = np.stack([y + rng.normal(0, 1.5, n), rng.normal(size=n)], 1)
    path.write_text("f1,f2,y\n" + "\n".join(f"{a:.3f},{b:.3f},{t:g}" for (a, b), t in zip(x, y)) + "\n")
    return path


def _val_curve(folder):
    rows = []
    for f in sorted((folder / "logs").glob("version_*/metrics.csv")):
        with open(f) as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("val/mae")]
    return {int(r["epoch"]): float(r["val/mae"]) for r in rows}


@pytest.mark.parametrize("select", ["best_val", "last"])
def test_fit_keeps_the_selected_epoch(tmp_path, select):
    """``model.pt`` holds the weights whose validation MAE, recomputed here in float64, is the lowest logged one
    (``best_val``) or the last one (``last``)."""
    data = _csv(tmp_path / "toy.csv")
    args = ["fit", "--methods", "lds", "--data", str(data), "--target", "y", "--epochs", "6", "--batch-size", "32",
            "--hidden", "16", "--feature-dim", "8", "--lr", "0.03", "--select-epoch", select, "--no-progress",
            "--threads", "1", "--run-dir", str(tmp_path / "run")]
    assert main(args) == 0
    out = tmp_path / "run" / "lds" / "seed0"
    curve = _val_curve(out)
    assert sorted(curve) == list(range(6))
    state = load_torch(out / "model.pt")
    s = RegressionSettings(data=str(data), target="y", hidden=[16], feature_dim=8, lr=0.03)
    d = load_data(s)
    model = build_regressor(s, switches(s, "lds"), d)
    model.load_state_dict(state["state_dict"])
    pred = model.predict(torch.from_numpy(d.x["val"])).numpy().astype(np.float64)
    mae = float(np.abs(pred - d.y["val"].astype(np.float64)).mean())
    values = np.array([curve[e] for e in range(6)])
    want = int(np.argmin(values)) if select == "best_val" else 5
    assert state["epoch_kept"] == want + 1 and state["epochs_done"] == 6
    assert mae == pytest.approx(values[want], abs=1e-5)
    if select == "best_val":
        assert want != 5  # this toy case has its lowest validation MAE before the last epoch
