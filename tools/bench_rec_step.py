"""Training-step time of the recommendation methods on prefix samples: the last-position pass
(:meth:`apps.recommendation.model.SASRec.forward_last`, what training uses) against the full (B, L) pass it
replaced, side by side in one process on the same batches (blocks alternate, so load changes hit both).

    python -m tools.bench_rec_step --config apps/recommendation/configs/beauty_prefix.yaml \
        --out tools/results/bench_rec_step.md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from apps.recommendation import model as M
from apps.recommendation import train as T
from apps.recommendation.config import RecConfig, load_yaml


def _full_last(self: M.SASRec, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    width = int(lengths.max())
    return M.last_hidden(self(items[:, :width]), lengths)


def _full_states(self: M.SeqRecModule, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    valid = batch["targets"] > 0
    return self.encoder(batch["items"])[valid], batch["targets"][valid]


def _stepper(mod: M.SeqRecModule, method: str):
    if method == "mclrec":  # manual optimisation outside a Trainer
        opts = mod.configure_optimizers()
        mod.optimizers = lambda: opts
        mod.manual_backward = lambda loss: loss.backward()
        mod.log = lambda *a, **k: None
        return lambda b: mod.training_step(b, 0)
    opt = torch.optim.Adam(mod.parameters(), 1e-3)

    def step(b: dict) -> None:
        out = mod.contrastive_step(b)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="apps/recommendation/configs/beauty_prefix.yaml")
    p.add_argument("--methods", nargs="+", default=list(M.METHODS))
    p.add_argument("--steps", type=int, default=14, help="timed steps per block (two blocks per variant)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the markdown table here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = RecConfig(**load_yaml(a.config))
    exp = T.prepare(cfg)
    variants = {"full (B, L) pass": (_full_last, _full_states),
                "last-position pass": (M.SASRec.forward_last, M.SeqRecModule.rec_states)}
    rows = []
    try:
        for method in a.methods:
            torch.manual_seed(0)
            mod = T.build_module(cfg, exp, method).train()
            it = iter(T.train_loader(cfg, exp, method, 0))
            batches = [next(it) for _ in range(a.steps + 2)]
            step = _stepper(mod, method)
            for b in batches[:2]:
                step(b)
            total = dict.fromkeys(variants, 0.0)
            for _ in range(2):
                for name, (fl, rs) in variants.items():
                    M.SASRec.forward_last, M.SeqRecModule.rec_states = fl, rs
                    t = time.perf_counter()
                    for b in batches[2:]:
                        step(b)
                    total[name] += time.perf_counter() - t
            full, last = (total[k] / (2 * a.steps) * 1000 for k in variants)
            rows.append(f"| {method} | {full:.0f} | {last:.0f} | {last / full:.2f} |")
            print(rows[-1], flush=True)
    finally:
        M.SASRec.forward_last, M.SeqRecModule.rec_states = variants["last-position pass"]
    table = "\n".join([f"Training step on prefix samples ({a.config}, batch {cfg.batch_size}, {a.threads} thread(s)), "
                       "ms per step:", "", "| method | full (B, L) pass | last-position pass | ratio |",
                       "|---|---|---|---|", *rows, ""])
    print(table)
    if a.out:
        Path(a.out).write_text(table)


if __name__ == "__main__":
    main()
