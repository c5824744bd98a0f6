"""Suite-wide settings.

Torch and BLAS run with one intra-op thread in tests: the tensors here are tiny, and two threads on two shared
cores made small ops 6-25x slower under load (thread hand-off dominates). Benchmarks in ``tools/`` set their
own thread counts.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

# Triton chooses its CPU interpreter once per process, when it is first imported (by whichever module comes
# first: torch, lightning or core.kernels). Without a GPU, choose it before anything loads Triton, so the fused
# kernel tests (tests/core/test_fused_kernels.py) run in the whole suite and not only when run alone.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
