"""The fused Triton kernels of :mod:`core.kernels` against the dense PyTorch losses.

Runs on the CPU under Triton's interpreter, which a process chooses once (``TRITON_INTERPRET=1`` when Triton is
first imported: this module does that unless Triton is already loaded, then restores the environment, and sets
the variable again around each test). If Triton was loaded compiled earlier in the process, the tests run on CUDA
instead (or skip without a GPU). Small ragged shapes: batch sizes that are not multiples of the 16-row / 16-column
blocks and a feature dimension (20) that spans two 16-wide chunks of the logit product and of the gradient's
output features (``SMALL`` blocks), and the default interpreter blocks (one chunk: the on-chip anchor tile path).
References: :func:`core.losses.info_nce` and :func:`core.losses.nt_xent` in float64 (loss, query / key gradients,
learnable temperature gradient), the engine's own per-block reducer (:class:`core.losses.engine.ContrastBlockFn`)
for the tiled walk, and explicit log-sum-exp / softmax formulas for the low-level statistics.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Triton picks its interpreter once per process, when triton.language is first imported: choose it here (and
# build the kernels) unless Triton is already loaded, then put the environment back as it was.
if "triton" not in sys.modules:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton", reason="Triton is not installed (the fused kernels need it)")
        import core.kernels._triton_contrast  # noqa: F401
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before
pytest.importorskip("triton", reason="Triton is not installed (the fused kernels need it)")

from core.app.errors import InputError  # noqa: E402
from core.kernels import (  # noqa: E402
    FusedContrastBlockFn,
    contrast_lse,
    fused_info_nce,
    fused_nt_xent,
    triton_unavailable_reason,
)
from core.kernels.contrast import _interpreter_mode  # noqa: E402
from core.losses import info_nce, nt_xent  # noqa: E402
from core.losses.engine import ContrastBlockFn, ContrastSpec  # noqa: E402
from core.negatives import pair_reduce  # noqa: E402

SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_O": 16}  # several ragged blocks in every direction
B, D = 37, 20

# CPU tensors under the interpreter; CUDA tensors if Triton was loaded compiled earlier in this process
DEVICE = "cpu" if _interpreter_mode() else "cuda"


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    """The interpreter reads TRITON_INTERPRET while it runs (lazy imports): set for these tests only."""
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    why = triton_unavailable_reason(DEVICE)
    if why is not None:
        pytest.skip(why)


def _inputs(n=B, d=D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g).to(dtype).to(DEVICE) for _ in range(2)]


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t.requires_grad])


def _close(got, want, rtol=2e-5, atol=2e-6):
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("symmetric,margin,similarity,decoupled", [
    (False, 0.0, "cosine", False),
    (True, 0.0, "cosine", False),
    (False, 0.25, "cosine", False),
    (True, 0.3, "dot", False),
    (True, 0.2, "cosine", True),
])
def test_info_nce_matches_dense(symmetric, margin, similarity, decoupled):
    q, k = _inputs()
    if similarity == "dot":
        q, k = 0.3 * q, 0.3 * k
    q.requires_grad_(), k.requires_grad_()
    t = torch.tensor(0.1, requires_grad=True)
    loss = fused_info_nce(q, k, temperature=t, symmetric=symmetric, margin=margin, similarity=similarity,
                          decoupled=decoupled, blocks=SMALL)
    got = _grads(loss, (q, k, t))
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    t64 = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    ref = info_nce(q64, k64, temperature=t64, symmetric=symmetric, margin=margin, similarity=similarity,
                   decoupled=decoupled)
    want = _grads(ref, (q64, k64, t64))
    assert loss.dtype == torch.float32
    _close(loss, ref)
    for g, w in zip(got, want):
        _close(g, w)


def test_reductions_negatives_and_partial_grads():
    """reduction none / sum, a queue of extra negatives, and gradients asked for only some inputs (the key and
    the temperature: the scale's gradient then comes from the key-side kernel)."""
    q, k = _inputs(29, 20, seed=1)
    (negs,) = _inputs(11, 20, seed=2)[:1]
    per = fused_info_nce(q, k, temperature=0.07, negatives=negs, reduction="none", blocks=SMALL)
    ref = info_nce(q.double(), k.double(), temperature=0.07, negatives=negs.double(), reduction="none")
    _close(per, ref)
    _close(fused_info_nce(q, k, temperature=0.2, reduction="sum", blocks=SMALL),
           info_nce(q.double(), k.double(), temperature=0.2, reduction="sum"))
    k.requires_grad_()
    t = torch.tensor(0.15, requires_grad=True)
    loss = fused_info_nce(q, k, temperature=t, symmetric=True, margin=0.1, blocks=SMALL)
    gk, gt = _grads(loss, (q, k, t))
    k64, t64 = k.detach().double().requires_grad_(), torch.tensor(0.15, dtype=torch.float64, requires_grad=True)
    gk_ref, gt_ref = _grads(info_nce(q.double(), k64, temperature=t64, symmetric=True, margin=0.1), (k64, t64))
    _close(gk, gk_ref)
    _close(gt, gt_ref)


def test_per_anchor_temperature():
    q, k = _inputs(21, 20, seed=3)
    q.requires_grad_(), k.requires_grad_()
    t = (0.05 + 0.2 * torch.rand(21, generator=torch.Generator().manual_seed(4))).requires_grad_()
    loss = fused_info_nce(q, k, temperature=t, symmetric=True, blocks=SMALL)
    got = _grads(loss, (q, k, t))
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    t64 = t.detach().double().requires_grad_()
    ref = info_nce(q64, k64, temperature=t64, symmetric=True)
    _close(loss, ref)
    for g, w in zip(got, _grads(ref, (q64, k64, t64))):
        _close(g, w)


@pytest.mark.parametrize("margin,decoupled,per_sample_t", [(0.2, False, False), (0.0, True, True)])
def test_nt_xent_matches_dense(margin, decoupled, per_sample_t):
    z1, z2 = _inputs(19, 20, seed=5)
    z1.requires_grad_(), z2.requires_grad_()
    t = (0.1 + 0.3 * torch.rand(19, generator=torch.Generator().manual_seed(6)) if per_sample_t
         else torch.tensor(0.2)).requires_grad_()
    loss = fused_nt_xent(z1, z2, temperature=t, margin=margin, decoupled=decoupled, blocks=SMALL)
    got = _grads(loss, (z1, z2, t))
    a64, b64 = z1.detach().double().requires_grad_(), z2.detach().double().requires_grad_()
    t64 = t.detach().double().requires_grad_()
    ref = nt_xent(a64, b64, temperature=t64, margin=margin, decoupled=decoupled)
    _close(loss, ref)
    for g, w in zip(got, _grads(ref, (a64, b64, t64))):
        _close(g, w)


@pytest.mark.parametrize("dtype,tol,blocks", [(torch.bfloat16, 2e-2, None), (torch.float16, 4e-3, SMALL)])
def test_half_precision_inputs(dtype, tol, blocks):
    """16-bit inputs, float32 statistics: the loss and gradients stay within the input precision of the float64
    loss of the same (rounded) inputs (bfloat16 with the default blocks: the on-chip anchor tile path)."""
    q, k = _inputs(33, 20, seed=7, dtype=dtype)
    q.requires_grad_(), k.requires_grad_()
    loss = fused_info_nce(q, k, temperature=0.1, symmetric=True, margin=0.1, blocks=blocks)
    gq, gk = _grads(loss, (q, k))
    assert loss.dtype == torch.float32 and gq.dtype == dtype and gk.dtype == dtype
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    ref = info_nce(q64, k64, temperature=0.1, symmetric=True, margin=0.1)
    _close(loss, ref, rtol=tol, atol=tol)
    for g, w in zip((gq, gk), _grads(ref, (q64, k64))):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=tol * float(w.abs().max()))


def test_float16_gradient_weights_are_rescaled():
    """Upstream gradients of 2^-20 (as a mean over ~10^6 anchors gives): the tile weights g * softmax (~4e-8) are
    below float16's subnormal steps; the kernel scales them by a power of two before the float16 product and back
    after, so its float32 output keeps the precision of the inputs."""
    from core.kernels.contrast import _grad_rows

    a, c = (torch.nn.functional.normalize(x.float(), dim=1).half() for x in _inputs(25, 20, seed=12))
    scale = torch.tensor([10.0], device=DEVICE)
    pos = torch.arange(25, device=DEVICE)
    row, _ = contrast_lse(a, c, scale, pos_id=pos, blocks=SMALL)
    g = torch.full((25,), 2.0**-20, device=DEVICE)
    got = _grad_rows(a, c, scale, pos, None, row, g, None, None, 0.0, False, SMALL)
    x = 10.0 * a.double() @ c.double().T
    want = 10.0 * (g.double()[:, None] * torch.softmax(x, 1)) @ c.double()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=5e-3 * float(want.abs().max()))


def test_large_logits_stay_finite():
    """dot similarity at a small temperature: logits in the thousands; the online log-sum-exp must not overflow."""
    q, k = _inputs(23, 20, seed=8)
    q.requires_grad_()
    loss = fused_info_nce(q, k, temperature=0.01, similarity="dot", blocks=SMALL)
    (gq,) = _grads(loss, (q,))
    q64 = q.detach().double().requires_grad_()
    ref = info_nce(q64, k.double(), temperature=0.01, similarity="dot")
    (gq_ref,) = _grads(ref, (q64,))
    assert torch.isfinite(loss) and torch.isfinite(gq).all()
    _close(loss, ref, rtol=1e-5, atol=1e-3)
    _close(gq, gq_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("spec", [
    ContrastSpec(positive="index", margin=0.2, column_stats=True),
    ContrastSpec(positive="index", exclude_self=True, decoupled=True),
    ContrastSpec(positive="index", margin=0.1, neg_threshold=True),
])
def test_block_reducer_in_the_tiled_walk(spec):
    """:class:`FusedContrastBlockFn` as the block function of ``pair_reduce``, tiled (statistics merged over
    blocks, gradients from ``direct_grad``) and dense (autograd through the kernels), against the engine's
    PyTorch block function run dense: CLIP's fused column statistics with a margin, NT-Xent's self exclusion
    (decoupled), and top-K thresholds (the 5 largest negatives of each row kept)."""
    n = 26 if spec.exclude_self else 37
    a, c = (torch.nn.functional.normalize(x, dim=1) for x in _inputs(n, 20, seed=9))
    ids = torch.arange(n, device=DEVICE)
    meta = {"pos_id": (ids + n // 2) % n, "self_id": ids} if spec.exclude_self else {"pos_id": ids}
    if spec.neg_threshold:  # midway between the 5th and 6th largest negative logit of each row
        x = (8.0 * a.double() @ c.double().T).fill_diagonal_(float("-inf"))
        top = x.topk(6, dim=1).values
        meta["neg_thr"] = (0.5 * (top[:, 4] + top[:, 5])).float()

    def run(block_fn, tile, dtype):
        a_ = a.to(dtype).requires_grad_()
        c_ = c.to(dtype).requires_grad_()
        s = torch.tensor(8.0, dtype=dtype, requires_grad=True)
        m = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in meta.items()}
        row, col = pair_reduce(a_, c_, block_fn, row_kinds=spec.row_kinds, col_kinds=spec.col_kinds, params=(s,),
                               row_meta=m, tile_size=tile)
        loss = (row[:, 0] - row[:, 1]).mean() + (col[:, 0].mean() if spec.column_stats else 0.0)
        return (loss, row[:, 2:], *_grads(loss, (a_, c_, s)))

    ref = run(ContrastBlockFn(spec), None, torch.float64)
    for tile in ((16, 24), None):
        got = run(FusedContrastBlockFn(spec), tile, torch.float32)
        for g, w in zip(got, ref):
            _close(g, w)


@pytest.mark.parametrize("loss,kwargs", [
    ("info_nce", {"symmetric": True, "margin": 0.1, "tile_size": (16, 24)}),
    ("info_nce", {"top_k": 5, "tile_size": None}),
    ("nt_xent", {"decoupled": True, "tile_size": 16}),
])
def test_backend_triton_in_the_losses(loss, kwargs, monkeypatch):
    """``backend="triton"`` on :func:`info_nce` / :func:`nt_xent` (the engine's block reducer is the fused
    kernel, never its PyTorch fallback) against the same call with the PyTorch backend in float64: loss, input
    and temperature gradients, tiled and dense."""
    fn = {"info_nce": info_nce, "nt_xent": nt_xent}[loss]

    supports = FusedContrastBlockFn.supports

    def must_support(self, a):
        assert supports(self, a), "the fused block would fall back to PyTorch"
        return True

    monkeypatch.setattr(FusedContrastBlockFn, "supports", must_support)

    def run(backend, dtype):
        q, k = (x.to(dtype).requires_grad_() for x in _inputs(29, 20, seed=4))
        t = torch.tensor(0.2, dtype=dtype, device=DEVICE, requires_grad=True)
        out = fn(q, k, temperature=t, backend=backend, **kwargs)
        return (out, *_grads(out, (q, k, t)))

    for g, w in zip(run("triton", torch.float32), run("torch", torch.float64)):
        _close(g, w)
    with pytest.raises(ValueError, match="backend"):
        fn(*_inputs(4, 8), backend="cuda")


def test_contrast_lse_matches_logsumexp():
    """The low-level statistics: row and column log-sum-exp of a non-square block with positives outside it and
    a margin, against torch.logsumexp of the explicit logit matrix."""
    a, c = _inputs(19, 20, seed=10)
    c = torch.cat([c, _inputs(9, 20, seed=11)[0]])
    pos = torch.arange(19, device=DEVICE) + 5
    pos[-3:] = 40  # no positive in this block (28 columns) for the last three anchors
    row, col = contrast_lse(a, c, 0.5, pos_id=pos, margin=0.3, column_stats=True, blocks=SMALL)
    x = 0.5 * a.double() @ c.double().T
    inside = pos < c.shape[0]
    x[torch.arange(19, device=DEVICE)[inside], pos[inside]] -= 0.5 * 0.3
    _close(row, torch.logsumexp(x, 1))
    _close(col, torch.logsumexp(x, 0))


def test_bad_inputs_raise_input_errors():
    q, k = _inputs(8, 20)
    with pytest.raises(InputError, match="NaN"):
        fused_info_nce(q.clone().fill_(float("nan")), k)
    with pytest.raises(InputError, match="temperature"):
        fused_info_nce(q, k, temperature=0.0)
    with pytest.raises(InputError, match="batch size"):
        fused_info_nce(q, k[:5])
    with pytest.raises(InputError, match="feature dimension"):
        fused_info_nce(q, k[:, :7])
    with pytest.raises(InputError, match="float64"):
        fused_info_nce(q.double(), k.double())
    with pytest.raises(InputError, match="similarity"):
        fused_info_nce(q, k, similarity="euclid")
    with pytest.raises(InputError, match="margin"):
        fused_info_nce(q, k, margin=-0.1)
    with pytest.raises(InputError, match="no negatives"):
        fused_nt_xent(q[:1], k[:1])
    import core.losses._checks as checks

    if hasattr(checks, "normalize_rows"):  # the losses' own zero-row check, reused for cosine similarity
        q0 = q.clone()
        q0[3] = 0.0
        with pytest.raises(InputError, match="query .*row"):
            fused_info_nce(q0, k)


def test_says_when_triton_cannot_run(monkeypatch):
    """CPU tensors without the interpreter: a clear error naming TRITON_INTERPRET (and whether it came too late);
    the block reducer then falls back to the PyTorch engine."""
    import core.kernels.contrast as kc

    q, k = (x.cpu() for x in _inputs(8, 20))
    if DEVICE == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        assert "no longer set" in triton_unavailable_reason("cpu")
    monkeypatch.setattr(kc, "_interpreter_mode", lambda: False)
    why = triton_unavailable_reason("cpu")
    assert why is not None and "TRITON_INTERPRET=1" in why and "CUDA" in why
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused_info_nce(q, k)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "before the first import of triton" in triton_unavailable_reason("cpu")
    spec = ContrastSpec(positive="index")
    s, ids = torch.tensor(2.0), torch.arange(8)
    row, _ = pair_reduce(q, k, FusedContrastBlockFn(spec), row_kinds=spec.row_kinds, params=(s,),
                         row_meta={"pos_id": ids})
    ref, _ = pair_reduce(q, k, ContrastBlockFn(spec), row_kinds=spec.row_kinds, params=(s,), row_meta={"pos_id": ids})
    _close(row, ref)


def test_gpu_benchmark_reports_fused_and_matmul_ratios(tmp_path):
    """The GPU benchmark's table: the fused rows and the multiple-of-matmul ratios (records, no GPU)."""
    import json

    from tools import bench_negatives_gpu as bench

    recs = [{"impl": i, "B": 4096, "D": 128, "dtype": "bf16", "device": "Fake", "status": "ok", "median_s": t,
             "delta_peak_mb": m} for i, t, m in (("ours_dense:clip", 0.010, 400.0), ("ours_tiled:clip", 0.020, 20.0),
                                                 ("ours_fused:clip", 0.008, 2.0), ("matmul:clip", 0.002, 0.0))]
    out, md = tmp_path / "r.jsonl", tmp_path / "t.md"
    out.write_text("\n".join(json.dumps(r) for r in recs))
    assert bench.main(["--render-only", "--out", str(out), "--md", str(md), "--png", ""]) == 0
    text = md.read_text()
    assert "## D = 128, bf16" in text and "| clip | ours_fused | 8.0 ms / 2 MB |" in text
    assert "fused/dense 0.80x; fused/tiled 0.40x; x matmul (2.0 ms): dense 5.0x, tiled 10.0x, fused 4.0x" in text


def test_gpu_benchmark_check_of_the_fused_kernels():
    """``--check-fused`` (run on a GPU before the timings) on this device at a small ragged shape: it compares
    with the dense float64 losses and passes; and it would flag a wrong kernel (a temperature off by 1 %)."""
    from tools import bench_negatives_gpu as bench

    recs = bench.check_fused(shapes=((19, 20),), dtypes=("fp32",), device=DEVICE)
    assert [r["check"] for r in recs] == ["ours_fused:clip", "ours_fused:ntxent"]
    assert all(r["ok"] for r in recs), recs
    import core.kernels

    real = core.kernels.fused_nt_xent

    def off(z1, z2, *, temperature, **kw):
        return real(z1, z2, temperature=temperature * 1.01, **kw)

    try:
        core.kernels.fused_nt_xent = off
        bad = bench.check_fused(shapes=((19, 20),), dtypes=("fp32",), device=DEVICE)
    finally:
        core.kernels.fused_nt_xent = real
    assert [r["ok"] for r in bad] == [True, False]


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills():
    """The compiled (non-interpreted) kernels at the launcher's block shapes build for an H100 / H200 (sm_90) with
    Triton's ptxas, with no register spills and shared memory within a program's limit; no GPU needed."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "core.kernels.aot", "--dims", "128,512", "--dtypes", "fp32,bf16"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("0 B spilled") == 8
