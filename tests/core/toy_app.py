"""A toy app on the runner, for the runner's tests: SimCLR-like two-view training of an MLP with BatchNorm on
Gaussian blobs, a linear-probe accuracy as its report. ``python -m tests.core.toy_app run --quick``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.app import App, AppSettings, Run, Verb, option
from core.app.files import save_torch
from core.losses import info_nce
from core.negatives.distributed import resolve_gather, world_size
from core.training import ContrastiveModule, fit_with_resume, seed_everything


@dataclass
class ToySettings(AppSettings):
    data: str = option("blobs", help="'blobs' (generated)", choices=("blobs",))
    epochs: int = option(4, help="training epochs", low=1)
    batch_size: int = option(32, help="batch size", low=2)
    temperature: float = option(0.5, help="InfoNCE temperature", low=0, low_open=True)
    methods: list[str] = option(["infonce"], help="methods", choices=("infonce", "identity"))

    @classmethod
    def quick(cls) -> ToySettings:
        return cls(epochs=2)

    def check(self) -> None:
        if self.batch_size > 256:
            from core.app import InputError

            raise InputError("batch_size must be <= 256 for the toy data")


class ToyModule(ContrastiveModule):
    def __init__(self, temperature: float) -> None:
        super().__init__(lr=1e-2, optimizer="adamw")
        self.net = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 16))
        self.tau = temperature
        self.seen_gather: list[object] = []

    def contrastive_step(self, batch):
        x, _ = batch
        z1 = self.net(x + 0.1 * torch.randn_like(x))
        z2 = self.net(x + 0.1 * torch.randn_like(x))
        self.seen_gather.append((resolve_gather(None), world_size()))
        return {"loss": info_nce(z1, z2, temperature=self.tau), "z1": z1, "z2": z2}


def blobs(seed: int = 0, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centres = torch.randn(4, 8, generator=g) * 3
    return centres[y] + torch.randn(n, 8, generator=g), y


def fit(run: Run) -> None:
    s = run.settings
    x, y = blobs()
    run.claim()
    for method in s.methods:
        out = run.run_dir.method_dir(method)
        seed_everything(s.seed)
        module = ToyModule(s.temperature)
        loader = DataLoader(TensorDataset(x, y), batch_size=s.batch_size, shuffle=True, drop_last=True)
        fit_with_resume(dict(max_epochs=s.epochs, logger=False, enable_progress_bar=False,
                             enable_model_summary=False), module, loader, out)
        save_torch(out / "model.pt", module.net.state_dict())
        if run.is_main:
            (out / "gather.json").write_text(json.dumps(sorted({str(g) for g in module.seen_gather})))
        else:
            (out / f"gather_rank{torch.distributed.get_rank()}.json").write_text(
                json.dumps(sorted({str(g) for g in module.seen_gather})))


def evaluate(run: Run) -> None:
    from sklearn.linear_model import LogisticRegression

    from core.app.files import load_torch

    s = run.settings
    x, y = blobs()
    report = run.report("probe_accuracy", headline="infonce")
    for method in s.methods:
        net = ToyModule(s.temperature).net
        net.load_state_dict(load_torch(run.run_dir.method_dir(method) / "model.pt"))
        net.eval()
        with torch.no_grad():
            h = net(x).numpy()
        acc = LogisticRegression(max_iter=500).fit(h[:128], y[:128].numpy()).score(h[128:], y[128:].numpy())
        report.add(method, {"probe_accuracy": acc}, seed=s.seed)
    report.add("raw", {"probe_accuracy": LogisticRegression(max_iter=500).fit(x[:128], y[:128]).score(
        x[128:], y[128:])}, seed=s.seed, baseline=True)
    run.write_report(report)


def run_(run: Run) -> None:
    fit(run.child("fit"))
    evaluate(run.child("evaluate"))


APP = App("toy", "A toy app of the runner's tests.", ToySettings, {
    "fit": Verb(fit, "train"),
    "evaluate": Verb(evaluate, "probe; report"),
    "run": Verb(run_, "fit, then evaluate"),
}, sweep=True)


def main(argv=None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
