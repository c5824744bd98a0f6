"""core.training: the base module trains and logs, schedules, seeding, the CLI, and resuming a killed run."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from core.app import load_torch
from core.encoders import MLPEncoder, ProjectionHead
from core.metrics import alignment
from core.training import (
    AtomicCheckpointIO,
    ContrastiveModule,
    SimCLRModule,
    default_callbacks,
    fit_with_resume,
    seed_everything,
    warmup_cosine,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one thread is as fast, and immune to oversubscribed CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# The training script of the resume test. It runs as a subprocess (to be killed) and is imported in-process
# (to resume), so both attempts build exactly the same model and data.
TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    import lightning as L
    import torch
    from torch import nn

    from core.encoders import MLPEncoder, ProjectionHead
    from core.training import SimCLRModule, default_callbacks, fit_with_resume, seed_everything

    TARGET_STEPS = 40
    EVERY = 5


    class Noise(nn.Module):
        def forward(self, x):
            return x + 0.1 * torch.randn_like(x)


    class Slow(L.Callback):
        def __init__(self, seconds):
            self.seconds = seconds

        def on_train_batch_end(self, *args):
            time.sleep(self.seconds)


    def train(run_dir, sleep=0.0, extra_callbacks=()):
        torch.set_num_threads(1)
        seed_everything(0)
        module = SimCLRModule(MLPEncoder(8, (16,), 8), ProjectionHead(8, 16, 4), augment=Noise(), lr=1e-2)
        data = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)))
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
        callbacks = default_callbacks(run_dir, every_n_train_steps=EVERY, progress_bar=False)
        return fit_with_resume(
            dict(max_steps=TARGET_STEPS, accelerator="cpu", devices=1, enable_progress_bar=False,
                 enable_model_summary=False, log_every_n_steps=1, callbacks=callbacks),
            module, loader, run_dir, extra_callbacks=[Slow(sleep), *extra_callbacks],
        )


    if __name__ == "__main__":
        train(Path(sys.argv[1]), float(sys.argv[2]))
    """
)


class Noise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)


def _clustered(n: int = 128, dim: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(8, dim, generator=g)
    return centres[torch.randint(0, 8, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)


def _loader(x: torch.Tensor, batch_size: int = 32) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def _quiet_trainer(**kw) -> L.Trainer:
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    return L.Trainer(**{**base, **kw})


class _Record(L.Callback):
    """Records the loop state and weights seen at the start of training, and every logged batch metric."""

    def __init__(self) -> None:
        self.start_step: int | None = None
        self.start_state: dict[str, torch.Tensor] = {}
        self.metrics: list[dict[str, float]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step
        self.start_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


# ------------------------------------------------------------------------------------------- module
def test_simclr_module_trains_and_logs_diagnostics() -> None:
    seed_everything(0)
    x = _clustered()
    module = SimCLRModule(MLPEncoder(8, (32,), 16), ProjectionHead(16, 32, 8), augment=Noise(), lr=3e-3,
                          temperature=0.5)
    with torch.no_grad():
        before = module.contrastive_step(x)["loss"].item()
    rec = _Record()
    _quiet_trainer(max_epochs=15, callbacks=[rec]).fit(module, _loader(x))
    with torch.no_grad():
        module.train()
        torch.manual_seed(1)
        after = module.contrastive_step(x)["loss"].item()
    assert after < before - 0.3, (before, after)
    last = rec.metrics[-1]
    for key in ("train/loss", "train/alignment", "train/uniformity", "train/temperature", "train/lr"):
        assert key in last and math.isfinite(last[key]), key
    assert last["train/temperature"] == pytest.approx(0.5)
    assert 0 <= last["train/alignment"] <= 4
    assert -4 <= last["train/uniformity"] <= 0


def test_logged_alignment_matches_metric_on_the_batch() -> None:
    seed_everything(0)
    module = SimCLRModule(MLPEncoder(8, (), 4), augment=Noise())
    seen = {}

    def step(batch):
        out = SimCLRModule.contrastive_step(module, batch)
        seen["a"] = alignment(out["z1"].detach(), out["z2"].detach()).item()
        return out

    module.contrastive_step = step  # type: ignore[method-assign]
    rec = _Record()
    _quiet_trainer(max_steps=1, callbacks=[rec]).fit(module, _loader(_clustered(32), 32))
    assert rec.metrics[0]["train/alignment"] == pytest.approx(seen["a"], rel=1e-5)


def test_precomputed_views_and_learnable_temperature() -> None:
    module = SimCLRModule(MLPEncoder(8, (), 4), learn_temperature=True, temperature=0.2)
    x = torch.randn(16, 8)
    out = module.contrastive_step((x, x + 0.01 * torch.randn_like(x)))
    out["loss"].backward()
    assert module.log_temperature.grad is not None and module.log_temperature.grad.abs() > 0
    assert float(module.temperature) == pytest.approx(0.2, rel=1e-6)
    with pytest.raises(ValueError):
        SimCLRModule(MLPEncoder(8, (), 4)).contrastive_step(x)  # no augment and a single tensor


def test_base_module_checks() -> None:
    with pytest.raises(NotImplementedError):
        ContrastiveModule(nn.Linear(2, 2)).contrastive_step(torch.zeros(1, 2))
    with pytest.raises(ValueError):
        ContrastiveModule(nn.Linear(2, 2), optimizer="lamb")
    with pytest.raises(ValueError):
        ContrastiveModule(nn.Linear(2, 2), scheduler="step")
    with pytest.raises(ValueError):
        ContrastiveModule(nn.Linear(2, 2), lr=0)
    assert "augment" not in SimCLRModule(nn.Linear(2, 2), augment=Noise()).hparams


def test_warmup_cosine_values() -> None:
    assert warmup_cosine(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_cosine_schedule_decays_to_min_lr(optimizer: str) -> None:
    module = SimCLRModule(MLPEncoder(8, (), 4), augment=Noise(), optimizer=optimizer, lr=0.1, warmup_steps=2,
                          min_lr_ratio=0.1)
    rec = _Record()
    trainer = _quiet_trainer(max_steps=12, callbacks=[rec])
    trainer.fit(module, _loader(torch.randn(64, 8), 16))
    lrs = [m["train/lr"] for m in rec.metrics]
    assert lrs[0] == pytest.approx(0.05)  # warm-up step 1 of 2
    assert lrs[1] == pytest.approx(0.1)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[1:], lrs[2:]))  # monotone decay after warm-up
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)  # min_lr_ratio * lr at the end


def test_seed_everything_reproducible() -> None:
    seed_everything(123)
    a = torch.randn(5)
    seed_everything(123, deterministic=False)
    assert torch.equal(a, torch.randn(5))
    with pytest.raises(ValueError):
        seed_everything(1.5)  # type: ignore[arg-type]


def test_atomic_checkpoint_io_replaces_whole_file(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    io.save_checkpoint({"global_step": 2}, path)
    assert load_torch(path)["global_step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind


# ------------------------------------------------------------------------------------------- resume
def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location("resume_train_script", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_interrupted_run_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "child.log", "wb")
    # 0.1 s per step: 40 steps take >= 4 s, so the kill lands mid-run
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), "0.1"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    step_at_kill = None
    deadline = time.monotonic() + 90
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if last.exists():
                step_at_kill = load_torch(last, map_location="cpu")["global_step"]
                if step_at_kill >= 5:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and step_at_kill is None:
            proc.kill()
        proc.wait()
        log.close()
    child_log = (tmp_path / "child.log").read_text(errors="replace")[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way:\n{child_log}"

    saved = load_torch(last, map_location="cpu")
    step0 = saved["global_step"]
    assert 5 <= step0 < 40 and step0 % 5 == 0, step0
    files_before = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
    assert "epoch=0-step=5.ckpt" in files_before

    rec = _Record()
    mod = _load_script(script)
    trainer = mod.train(run_dir, 0.0, extra_callbacks=[rec])

    assert rec.start_step == step0, "the second attempt did not start from the checkpoint's step"
    for k, v in saved["state_dict"].items():
        assert torch.equal(rec.start_state[k], v), f"weights not restored: {k}"
    assert trainer.global_step == mod.TARGET_STEPS
    files_after = {p.name for p in ckpt_dir.glob("*.ckpt")}
    assert set(files_before) <= files_after, "a finished checkpoint was lost"
    assert {f"epoch={(s - 1) // 8}-step={s}.ckpt" for s in range(5, 41, 5)} <= files_after
    assert load_torch(last, map_location="cpu")["global_step"] == mod.TARGET_STEPS
    assert len(list((run_dir / "logs").glob("version_*"))) == 2  # the interrupted attempt's logs are kept

    # a finished run re-run is a no-op that keeps its final state
    again = mod.train(run_dir, 0.0)
    assert again.global_step == mod.TARGET_STEPS


def test_fit_with_resume_starts_fresh_without_checkpoint(tmp_path: Path) -> None:
    module = SimCLRModule(MLPEncoder(8, (), 4), augment=Noise())
    rec = _Record()
    trainer = fit_with_resume(dict(max_steps=3, accelerator="cpu", enable_progress_bar=False, log_every_n_steps=1,
                                   enable_model_summary=False), module, _loader(torch.randn(32, 8), 8), tmp_path,
                              extra_callbacks=[rec])
    assert rec.start_step == 0 and trainer.global_step == 3
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").exists()


class _ScriptedVal(L.LightningModule):
    """Logs a scripted validation score per epoch; its weights change every step."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.scores = scores

    def training_step(self, batch, batch_idx):
        return ((self.w - 1.0) ** 2).sum() + 0.0 * batch[0].sum()

    def validation_step(self, batch, batch_idx):
        self.log("val", float(self.scores[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_movable_checkpoint_keeps_the_best_score_when_the_run_dir_moves(tmp_path: Path) -> None:
    import shutil
    import warnings

    from core.training import MovableCheckpoint

    scores = [0.5, 0.9, 0.3, 0.2]
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)

    def fit(run_dir: Path, epochs: int) -> MovableCheckpoint:
        best = MovableCheckpoint(dirpath=run_dir / "best", filename="best", monitor="val", mode="max",
                                 save_top_k=1, save_weights_only=True)
        kw = dict(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0, callbacks=[best, *default_callbacks(run_dir, progress_bar=False)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_with_resume(kw, _ScriptedVal(scores), (data, data), run_dir)
        return best

    fit(tmp_path / "a", 2)  # best at epoch 1 (0.9)
    saved = load_torch(tmp_path / "a" / "best" / "best.ckpt")["state_dict"]["w"]
    shutil.move(tmp_path / "a", tmp_path / "b")
    best = fit(tmp_path / "b", 4)  # epochs 2 and 3 score lower: best.ckpt must stay epoch 1's
    assert best.best_model_score is not None and float(best.best_model_score) == pytest.approx(0.9)
    assert Path(best.best_model_path) == tmp_path / "b" / "best" / "best.ckpt"
    assert torch.equal(load_torch(best.best_model_path)["state_dict"]["w"], saved)
    # plain Lightning would have forgotten the score and written epoch 2's weights (0.3) over it
