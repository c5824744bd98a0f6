r"""Fused (Triton) InfoNCE-family statistics: the logit matrix is recomputed on chip, never written to memory.

With anchors ``a`` (B, D), candidates ``c`` (N, D), a scale ``s = 1/tau`` and one index positive ``p(i)`` per
anchor, the logits of the denominator are

.. math::
    x_{ij} = s\, a_i \cdot c_j \quad (j \ne p(i)), \qquad x_{i,p(i)} = s\,(a_i \cdot c_{p(i)} - m)

(the additive margin ``m`` on the positive only; ``decoupled`` drops the positive, ``self_id`` drops the
pair ``(i, self(i))``, top-K thresholds drop the negatives with ``x_ij <= thr_i``). :func:`contrast_lse` returns
the row log-sum-exp ``L_i = log sum_j e^{x_ij}`` and, for a symmetric loss, the column one
``M_j = log sum_i e^{x_ij}``. Its backward recomputes each tile from the saved totals,
``G_ij = g_i e^{x_ij - L_i} + h_j e^{x_ij - M_j}``, and returns

.. math::
    \partial a_i = s \sum_j G_{ij} c_j, \quad \partial c_j = s \sum_i G_{ij} a_i, \quad
    \partial s = \tfrac{1}{s}\sum_i a_i \cdot \partial a_i - m \sum_i G_{i,p(i)}

so no B x N block is ever stored: memory is O((B + N) D). Work: one logit product per direction forward, two per
gradient kernel backward (recompute, then ``G @ c``): 5 (one direction, both gradients) or 6 (symmetric) products
of the B x N x D size where a dense loss needs 3 plus its passes over the stored B x N matrices. The positive logit is
O(B D) and stays ordinary PyTorch (autograd).

Wiring a loss to the kernels (``backend="triton"``): either call :func:`contrast_lse` for the denominator and
subtract the positive logit, as :func:`fused_info_nce` does, or hand the engine :class:`FusedContrastBlockFn(spec)
<FusedContrastBlockFn>` in place of ``ContrastBlockFn(spec)`` inside :func:`core.losses.engine.run_contrast`. The
block function then serves every execution mode of :func:`core.losses.engine.reduce_pairs`: dense (one block,
autograd through :class:`_ContrastLSE`), tiled and ``gather="ring"`` (the block walk's no-grad forward plus
``direct_grad``), ``gather=True`` (one block over the gathered candidates); with the kernels a tile no longer
bounds memory, so ``tile_size=None`` is the natural choice (a block per rank's shard under the ring).

Entry points:

* :func:`fused_info_nce` / :func:`fused_nt_xent` -- the losses of :func:`core.losses.info_nce` and
  :func:`core.losses.nt_xent` (additive margin, decoupled, symmetric, per-anchor temperature, extra negatives)
  on the kernels;
* :func:`contrast_lse` -- the differentiable denominator statistics, for a loss to call;
* :class:`FusedContrastBlockFn` -- the per-block reducer: a drop-in for
  :class:`core.losses.engine.ContrastBlockFn` (same ``__call__`` and ``direct_grad``), so tiled and distributed
  execution (``gather=True`` / ``"ring"``) can run every block on the kernels;
* :func:`triton_unavailable_reason` / :func:`check_triton` -- whether the kernels can run for a device.

Kernels run on CUDA tensors (compiled) or, when ``TRITON_INTERPRET=1`` was in the environment as Triton was first
imported, on CPU tensors (Triton's interpreter: slow, for tests). Inputs may be float32, bfloat16 or float16;
every statistic and accumulator is float32 (float32 products in IEEE precision unless
``torch.backends.cuda.matmul.allow_tf32``), the statistics come back as float32 and the gradients in the input dtype.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from core.app.errors import InputError

__all__ = ["FusedContrastBlockFn", "check_triton", "contrast_lse", "fused_info_nce", "fused_nt_xent",
           "triton_unavailable_reason"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ENV_BLOCKS = "CORE_KERNELS_BLOCKS"  # "BM,BN,BK,BO[,warps[,stages]]": override the block shape (benchmarks)


# ----------------------------------------------------------------------------------------------------------------
# can the kernels run?


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _interpreter_mode() -> bool:
    """Triton's interpreter is on in this process (``TRITON_INTERPRET=1`` when Triton was first imported)."""
    from core.kernels._triton_contrast import interpreter_mode

    return interpreter_mode()


def triton_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """``None`` when the fused kernels can run on ``device``; otherwise why not, in one sentence.

    CUDA tensors need an importable Triton and a CUDA device; CPU tensors need Triton's interpreter, which is
    chosen once per process: ``TRITON_INTERPRET=1`` in the environment before Triton is first imported (slow,
    meant for tests).
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                           else "cpu")
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"Triton is not importable ({e}); install the triton package that matches torch"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available for the Triton kernels"
        return None
    if device.type == "cpu":
        if _interpreter_mode():
            if _interpret_env():
                return None
            return ("Triton was imported with its interpreter (TRITON_INTERPRET=1) but the variable is no longer "
                    "set; keep TRITON_INTERPRET=1 in the environment while the fused kernels run on the CPU")
        if _interpret_env():
            return ("TRITON_INTERPRET=1 was set after Triton was imported in this process; Triton's interpreter "
                    "(the fused kernels on CPU tensors) must be chosen before the first import of triton")
        return ("the fused Triton kernels need a CUDA device; on the CPU they run only under Triton's interpreter "
                "(set TRITON_INTERPRET=1 in the environment before Python starts: slow, for tests)")
    return f"the fused Triton kernels run on CUDA (or on the CPU under TRITON_INTERPRET=1), not on {device.type!r}"


def check_triton(device: torch.device | str | None = None) -> None:
    """Raise ``RuntimeError`` saying why the fused kernels cannot run on ``device`` (nothing when they can)."""
    why = triton_unavailable_reason(device)
    if why is not None:
        raise RuntimeError(why)


def _kernels(device: torch.device):
    check_triton(device)
    from core.kernels._triton_contrast import KERNELS

    return KERNELS


# ----------------------------------------------------------------------------------------------------------------
# launch


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _blocks(dim: int, dtype: torch.dtype, interpreted: bool, grad: bool = False) -> dict:
    """Block shape of one launch (``grad``: of the gradient kernel): rows, columns, feature chunk of the logit
    product, output feature chunk, warps, pipeline stages."""
    dp = max(16, _pow2(dim))
    env = os.environ.get(_ENV_BLOCKS, "").strip()
    if env:
        v = [int(t) for t in env.split(",")]
        if len(v) < 4 or any(x < 16 or x & (x - 1) for x in v[:4]):
            raise InputError(f"{_ENV_BLOCKS} must be 'BM,BN,BK,BO[,warps[,stages]]' with powers of two >= 16, "
                             f"got {env!r}")
        return {"BLOCK_M": v[0], "BLOCK_N": v[1], "BLOCK_K": min(v[2], dp), "BLOCK_O": min(v[3], dp),
                "num_warps": v[4] if len(v) > 4 else 4, "num_stages": v[5] if len(v) > 5 else 2}
    if interpreted:  # few, large programs: the interpreter pays per program and per loop step
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": min(dp, 128), "BLOCK_O": min(dp, 128)}
    # Not timed on a GPU yet (CORE_KERNELS_BLOCKS overrides); chosen so that ptxas reports no register spills for
    # sm_90 (python -m core.kernels.aot). 16-bit inputs (tensor cores): up to D = 256 the anchor tile stays on chip
    # and one candidate tile serves both products of the gradient. float32 (IEEE products on the FMA units, which
    # need registers): the feature dimension in 32- or 64-wide chunks. The gradient's output features are split
    # in 256-wide chunks beyond D = 256 (each chunk recomputes the logits).
    def cfg(bm, bn, bk, bo, warps):
        return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_O": bo, "num_warps": warps, "num_stages": 2}

    if dtype != torch.float32:
        if dp <= 256:
            return cfg(64, 128 if dp <= 128 else 64, dp, dp, 4 if dp <= 64 else 8)
        return cfg(32 if grad else 64, 64, 64, 256, 8)
    if dp <= 128:
        return cfg(32, 64, min(dp, 32), dp, 8) if grad else cfg(64, 64, min(dp, 32), dp, 8)
    return cfg(32, 64, 32, 256, 8) if grad else cfg(32, 64, 64, 256, 8)


def _ieee(dtype: torch.dtype) -> bool:
    """float32 products in IEEE precision unless PyTorch itself allows TF32 for matrix products."""
    return dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


def _upcast(a: Tensor) -> bool:
    """bfloat16 operands go through float32 products under the interpreter (its ``tl.dot`` is wrong on them)."""
    return a.dtype == torch.bfloat16 and _interpreter_mode()


def _launch_cfg(a: Tensor, blocks: dict | None, out_chunks: bool = False, big: bool = False) -> tuple[dict, dict]:
    interp = _interpreter_mode()
    cfg = dict(blocks) if blocks is not None else _blocks(a.shape[1], a.dtype, interp, grad=out_chunks)
    meta = {k: cfg.pop(k) for k in ("num_warps", "num_stages") if k in cfg}
    cfg["ONE_K"] = cfg["BLOCK_K"] >= a.shape[1]
    cfg["BIG"] = big
    if not out_chunks:
        cfg.pop("BLOCK_O", None)
    return cfg, ({} if interp else meta)


def _big(a: Tensor, c: Tensor) -> bool:
    """Some element offset of the inputs or the gradient does not fit in int32."""
    return max(a.shape[0] * a.stride(0), c.shape[0] * c.stride(0), a.shape[0] * a.shape[1]) >= 2**31 - 1


def _row_lse(a: Tensor, c: Tensor, scale: Tensor, pos: Tensor, self_id: Tensor | None, margin: float,
             decoupled: bool, blocks: dict | None = None, thr: Tensor | None = None, thr_mode: int = 0) -> Tensor:
    """Row log-sum-exp (float32, (B,)) of the denominator logits of ``a`` against ``c``."""
    B, N, D = a.shape[0], c.shape[0], a.shape[1]
    out = torch.empty(B, dtype=torch.float32, device=a.device)
    cfg, meta = _launch_cfg(a, blocks, big=_big(a, c))
    k = _kernels(a.device)["lse_rows"]
    grid = (triton_cdiv(B, cfg["BLOCK_M"]),)
    k[grid](a, c, pos, pos if self_id is None else self_id, out if thr is None else thr, scale, out, B, N, D,
            a.stride(0), c.stride(0), float(margin), HAS_SELF=self_id is not None,
            THR_MODE=thr_mode if thr is not None else 0, DECOUPLED=bool(decoupled),
            IEEE=_ieee(a.dtype), UPCAST=_upcast(a), **cfg, **meta)
    return out


def _grad_rows(a: Tensor, c: Tensor, scale: Tensor, pos: Tensor, self_id: Tensor | None,
               row_lse: Tensor | None, row_g: Tensor | None, col_lse: Tensor | None, col_g: Tensor | None,
               margin: float, decoupled: bool, blocks: dict | None = None, thr: Tensor | None = None,
               thr_mode: int = 0) -> Tensor:
    """``s sum_j G_ij c_j`` (float32, (B, D)) with ``G`` from the row and / or column totals."""
    B, N, D = a.shape[0], c.shape[0], a.shape[1]
    out = torch.empty(B, D, dtype=torch.float32, device=a.device)
    cfg, meta = _launch_cfg(a, blocks, out_chunks=True, big=_big(a, c))
    k = _kernels(a.device)["grad_rows"]
    grid = (triton_cdiv(B, cfg["BLOCK_M"]), triton_cdiv(D, cfg["BLOCK_O"]))
    dummy = out  # never read when the matching HAS_* flag is off
    k[grid](a, c, pos, pos if self_id is None else self_id, dummy if thr is None else thr, scale,
            _pscale(row_g, col_g, a.device),
            dummy if row_lse is None else row_lse, dummy if row_g is None else row_g,
            dummy if col_lse is None else col_lse, dummy if col_g is None else col_g,
            out, B, N, D, a.stride(0), c.stride(0), out.stride(0), float(margin),
            HAS_ROW=row_g is not None, HAS_COL=col_g is not None, HAS_SELF=self_id is not None,
            THR_MODE=thr_mode if thr is not None else 0, DECOUPLED=bool(decoupled), IEEE=_ieee(a.dtype),
            UPCAST=_upcast(a), **cfg, **meta)
    return out


def _pscale(row_g: Tensor | None, col_g: Tensor | None, device: torch.device) -> Tensor:
    """``2^-floor(log2(max|g| + max|h|))`` as a (1,) float32 tensor (1 when both are zero); no host sync."""
    m = torch.zeros((), dtype=torch.float32, device=device)
    for g in (row_g, col_g):
        if g is not None:
            m = m + g.abs().amax().float()
    e = torch.where(m > 0, torch.floor(torch.log2(torch.where(m > 0, m, 1.0))), 0.0).clamp(-100, 100)
    return torch.exp2(-e).reshape(1)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _invert(ids: Tensor, n: int) -> Tensor:
    """``inv[j] = i`` where ``ids[i] == j`` (``-1`` where no anchor points at ``j``); ids in range must be unique."""
    B = ids.shape[0]
    valid = (ids >= 0) & (ids < n)
    inv = torch.full((n,), -1, dtype=torch.int64, device=ids.device)
    rows = torch.arange(B, device=ids.device)
    inv[ids[valid]] = rows[valid]
    if not bool((inv[ids[valid]] == rows[valid]).all()):
        raise InputError("column statistics need distinct positive / self ids (two anchors share a column)")
    return inv


# ----------------------------------------------------------------------------------------------------------------
# the statistics and their gradient


def _den_backward(a: Tensor, c: Tensor, scale: Tensor, pos: Tensor, self_id: Tensor | None, pos_inv, self_inv,
                  row_lse: Tensor | None, g_row: Tensor | None, col_lse: Tensor | None, g_col: Tensor | None,
                  margin: float, decoupled: bool, need: tuple[bool, bool, bool], blocks: dict | None = None,
                  thr: Tensor | None = None):
    """Gradients (float32) of ``sum_i g_i L_i + sum_j h_j M_j`` w.r.t. anchors, candidates and the scale.

    ``pos_inv`` / ``self_inv``: the inverted id maps (computed when ``None`` and the candidate gradient is needed).
    """
    need_a, need_c, need_s = need
    s = scale.reshape(())
    if g_row is not None:
        g_row = g_row.float().contiguous()
    if g_col is not None:
        g_col = g_col.float().contiguous()
    da = dc = ds = None
    if need_a or (need_s and not need_c):
        da = _grad_rows(a, c, scale, pos, self_id, row_lse, g_row, col_lse, g_col, margin, decoupled, blocks,
                        thr, 1)
    if need_c:
        N = c.shape[0]
        if pos_inv is None:
            pos_inv = _invert(pos, N)
        if self_id is not None and self_inv is None:
            self_inv = _invert(self_id, N)
        dc = _grad_rows(c, a, scale, pos_inv, self_inv, col_lse, g_col, row_lse, g_row, margin, decoupled, blocks,
                        thr, 2)
    if need_s:
        ds = (a.float() * da).sum() / s if da is not None else (c.float() * dc).sum() / s
        if margin != 0.0 and not decoupled:
            # the margin's -s m on each positive logit: d/ds of that entry is (a.c - m), not x / s
            N = c.shape[0]
            inside = (pos >= 0) & (pos < N)
            if self_id is not None:
                inside = inside & (pos != self_id)
            pc = pos.clamp(0, N - 1)
            x = s * ((a.float() * c[pc].float()).sum(1) - margin)
            g_ip = torch.zeros_like(x)
            if g_row is not None:
                g_ip = g_ip + g_row * torch.exp(x - row_lse)
            if g_col is not None:
                g_ip = g_ip + g_col[pc] * torch.exp(x - col_lse[pc])
            ds = ds - margin * torch.where(inside, g_ip, torch.zeros_like(g_ip)).sum()
    return (da if need_a else None), dc, ds


class _ContrastLSE(torch.autograd.Function):
    """Row (and column) log-sum-exp of the denominator logits, recomputed tile by tile in backward (once
    differentiable: no ``create_graph`` through the kernels)."""

    @staticmethod
    def forward(ctx, a, c, scale, pos, self_id, pos_inv, self_inv, thr, margin, decoupled, column_stats, blocks):
        row = _row_lse(a, c, scale, pos, self_id, margin, decoupled, blocks, thr, 1)
        col = None
        if column_stats:
            if pos_inv is None:
                pos_inv = _invert(pos, c.shape[0])
            if self_id is not None and self_inv is None:
                self_inv = _invert(self_id, c.shape[0])
            col = _row_lse(c, a, scale, pos_inv, self_inv, margin, decoupled, blocks, thr, 2)
        ctx.save_for_backward(a, c, scale, pos, self_id, pos_inv, self_inv, thr, row, col)
        ctx.margin, ctx.decoupled, ctx.blocks = margin, decoupled, blocks
        return row, (col if col is not None else row.new_empty(0))

    @staticmethod
    @once_differentiable
    def backward(ctx, g_row, g_col):
        a, c, scale, pos, self_id, pos_inv, self_inv, thr, row, col = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        if col is None or (g_col is not None and g_col.numel() == 0):
            g_col = None
        da, dc, ds = _den_backward(a, c, scale, pos, self_id, pos_inv, self_inv, row, g_row, col, g_col,
                                   ctx.margin, ctx.decoupled, need, ctx.blocks, thr)
        return (None if da is None else da.to(a.dtype), None if dc is None else dc.to(c.dtype),
                None if ds is None else ds.to(scale.dtype).reshape(scale.shape),
                None, None, None, None, None, None, None, None, None)


def _ids(x: Tensor | None, device: torch.device) -> Tensor | None:
    return None if x is None else x.to(device=device, dtype=torch.int64).contiguous()


def contrast_lse(
    anchors: Tensor,
    candidates: Tensor,
    scale: Tensor | float,
    *,
    pos_id: Tensor,
    self_id: Tensor | None = None,
    margin: float = 0.0,
    decoupled: bool = False,
    column_stats: bool = False,
    neg_thr: Tensor | None = None,
    pos_inv: Tensor | None = None,
    self_inv: Tensor | None = None,
    blocks: dict | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Denominator log-sum-exp statistics on the fused kernels, differentiable w.r.t. all three inputs.

    Args:
        anchors: (B, D), already normalised for cosine similarity (and divided by a per-anchor temperature).
        candidates: (N, D), same dtype and device.
        scale: ``1 / tau`` (a Python number or a one-element tensor; a tensor that requires grad gets one).
        pos_id: (B,) integer column of each anchor's positive (out of ``[0, N)``: no positive in this block).
        self_id: (B,) column dropped from each row (NT-Xent's anchor itself), or ``None``.
        margin / decoupled: additive margin on the positive / drop the positive (DCL).
        column_stats: also return the column log-sum-exp (the key -> query direction of a symmetric loss);
            the positive (self) ids in range must then be distinct.
        neg_thr: (B,) top-K thresholds (no gradient): only the negatives with ``x_ij > neg_thr[i]`` stay in row
            ``i``'s denominator (the positive always does), as the engine's ``ContrastSpec.neg_threshold``.
        pos_inv / self_inv: (N,) inverted id maps when the caller knows them (saves a check that syncs).
        blocks: block shape override (tests, tuning).

    Returns:
        ``(row_lse (B,), col_lse (N,) or None)``, float32.
    """
    dev = anchors.device
    if candidates.device != dev:
        raise InputError(f"anchors and candidates must be on one device, got {dev} and {candidates.device}")
    if anchors.dtype not in SUPPORTED_DTYPES or candidates.dtype != anchors.dtype:
        raise InputError(f"the fused kernels take float32, bfloat16 or float16 anchors and candidates of one dtype, "
                         f"got {anchors.dtype} and {candidates.dtype}")
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise InputError(f"anchors (B, D) and candidates (N, D) must share D, got {tuple(anchors.shape)} and "
                         f"{tuple(candidates.shape)}")
    if pos_id.shape != (anchors.shape[0],) or (self_id is not None and self_id.shape != pos_id.shape):
        raise InputError(f"pos_id / self_id must have shape ({anchors.shape[0]},)")
    if not isinstance(scale, Tensor):
        scale = torch.tensor(float(scale))
    scale = scale.reshape(1).to(device=dev, dtype=torch.float32)
    check_triton(dev)
    if neg_thr is not None:
        if neg_thr.shape != pos_id.shape:
            raise InputError(f"neg_thr must have shape ({anchors.shape[0]},), got {tuple(neg_thr.shape)}")
        neg_thr = neg_thr.detach().to(device=dev, dtype=torch.float32).contiguous()
    row, col = _ContrastLSE.apply(anchors.contiguous(), candidates.contiguous(), scale, _ids(pos_id, dev),
                                  _ids(self_id, dev), _ids(pos_inv, dev), _ids(self_inv, dev), neg_thr, float(margin),
                                  bool(decoupled), bool(column_stats), blocks)
    return row, (col if column_stats else None)


# ----------------------------------------------------------------------------------------------------------------
# the losses


def _as_input_error(fn, *args) -> None:
    try:
        fn(*args)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(str(e)) from e


def _check_common(names, tensors, temperature, n_sizes, margin, similarity, reduction) -> bool:
    from core.losses._checks import check_choice, check_pair, check_reduction, check_temperature

    _as_input_error(check_pair, names[0], tensors[0], names[1], tensors[1])
    per_t = False

    def _t():
        nonlocal per_t
        per_t = check_temperature("temperature", temperature, n_sizes)

    _as_input_error(_t)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin) or margin < 0:
        raise InputError(f"margin must be a finite number >= 0, got {margin!r}")
    if per_t and margin != 0.0:
        raise InputError("a per-anchor temperature cannot be combined with a margin")
    _as_input_error(check_choice, "similarity", similarity, ("cosine", "dot"))
    _as_input_error(check_reduction, reduction)
    for name, x in zip(names, tensors):
        if x.dtype not in SUPPORTED_DTYPES:
            raise InputError(f"{name} has dtype {x.dtype}; the fused kernels take float32, bfloat16 or float16")
    if tensors[0].dtype != tensors[1].dtype or tensors[0].device != tensors[1].device:
        raise InputError(f"{names[0]} and {names[1]} must share dtype and device, got "
                         f"{tensors[0].dtype}/{tensors[0].device} and {tensors[1].dtype}/{tensors[1].device}")
    return per_t


def _prepare(x: Tensor, similarity: str, name: str) -> Tensor:
    """Cosine: L2-normalised in float32 (as the losses do; a zero row raises under full validation), then back in
    the input dtype for the kernels. Dot: as is."""
    if similarity != "cosine":
        return x
    try:
        from core.losses._checks import normalize_rows
    except ImportError:  # an older core.losses: plain normalisation
        return F.normalize(x.float(), dim=-1).to(x.dtype)
    y = None

    def _norm():
        nonlocal y
        y = normalize_rows(x, name)

    _as_input_error(_norm)
    return y.to(x.dtype)


def _scale_of(temperature: float | Tensor, device: torch.device) -> Tensor:
    if isinstance(temperature, Tensor):
        return 1.0 / temperature.reshape(()).to(device=device, dtype=torch.float32)
    return torch.tensor(1.0 / float(temperature), dtype=torch.float32, device=device)


def _reduce(per_anchor: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_anchor.mean()
    if reduction == "sum":
        return per_anchor.sum()
    return per_anchor


def _pos_logit(a: Tensor, c: Tensor, scale: Tensor, margin: float) -> Tensor:
    """``s (a_i . c_i - m)`` in float32 (ordinary autograd; O(B D))."""
    return scale * ((a.float() * c.float()).sum(1) - margin)


def fused_info_nce(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    symmetric: bool = False,
    decoupled: bool = False,
    margin: float = 0.0,
    similarity: str = "cosine",
    negatives: Tensor | None = None,
    reduction: str = "mean",
    blocks: dict | None = None,
) -> Tensor:
    """:func:`core.losses.info_nce` (additive margin) on the fused kernels; the same value and gradients.

    Args:
        query, key: (B, D) anchors and their positives (row ``i`` of ``key`` is the positive of ``query[i]``;
            every other key is a negative), float32 / bfloat16 / float16, CUDA (or CPU under
            ``TRITON_INTERPRET=1``).
        temperature: > 0; a tensor keeps the graph (learnable); a (B,) tensor is one temperature per anchor
            (no margin then; in the key -> query direction key ``i`` uses ``tau_i``).
        symmetric: average of the query -> key and key -> query directions (CLIP).
        decoupled: drop the positive from the denominator (DCL).
        margin: additive margin on the positive logit, ``(s_ii - m) / tau`` (numerator and denominator).
        similarity: ``"cosine"`` (normalise inside) or ``"dot"``.
        negatives: (K, D) extra negatives of the query -> key direction (a queue).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((B,)).
        blocks: block shape override (tests, tuning).

    Returns:
        The loss, float32 (scalar unless ``reduction="none"``).
    """
    per_t = _check_common(("query", "key"), (query, key), temperature, (query.shape[0],), margin, similarity,
                          reduction)
    B = query.shape[0]
    if negatives is not None:
        _as_input_error(_check_negatives, negatives, query)
    if B - 1 + (0 if negatives is None else negatives.shape[0]) < 1:
        raise InputError("the batch has no negatives: InfoNCE needs at least 2 samples or extra negatives")
    check_triton(query.device)
    q, k = _prepare(query, similarity, "query"), _prepare(key, similarity, "key")
    cand = k if negatives is None else torch.cat([k, _prepare(negatives, similarity, "negatives").to(k.dtype)], 0)
    ids = torch.arange(B, device=q.device)
    if per_t:
        t = temperature.to(device=q.device, dtype=torch.float32)
        one = torch.ones((), dtype=torch.float32, device=q.device)
        qa = (q.float() / t[:, None]).to(q.dtype)
        row, _ = contrast_lse(qa, cand, one, pos_id=ids, decoupled=decoupled, blocks=blocks)
        per_anchor = row - _pos_logit(qa, k, one, 0.0)
        if symmetric:
            ka = (k.float() / t[:, None]).to(k.dtype)
            row_r, _ = contrast_lse(ka, q, one, pos_id=ids, decoupled=decoupled, blocks=blocks)
            per_anchor = 0.5 * (per_anchor + row_r - _pos_logit(ka, q, one, 0.0))
        return _reduce(per_anchor, reduction)
    scale = _scale_of(temperature, q.device)
    pos = _pos_logit(q, k, scale, margin)
    inv = torch.full((cand.shape[0],), -1, dtype=torch.int64, device=q.device)
    inv[:B] = ids
    row, col = contrast_lse(q, cand, scale, pos_id=ids, margin=margin, decoupled=decoupled, column_stats=symmetric,
                            pos_inv=inv, blocks=blocks)
    per_anchor = row - pos
    if symmetric:
        per_anchor = 0.5 * (per_anchor + col[:B] - pos)
    return _reduce(per_anchor, reduction)


def _check_negatives(negatives: Tensor, query: Tensor) -> None:
    from core.losses._checks import check_embeddings

    check_embeddings("negatives", negatives)
    if negatives.shape[1] != query.shape[1]:
        raise ValueError(f"negatives must have feature dimension {query.shape[1]}, got {negatives.shape[1]}")
    if negatives.device != query.device:
        raise ValueError(f"negatives must be on {query.device}, got {negatives.device}")


def fused_nt_xent(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float | Tensor = 0.5,
    decoupled: bool = False,
    margin: float = 0.0,
    similarity: str = "cosine",
    reduction: str = "mean",
    blocks: dict | None = None,
) -> Tensor:
    """:func:`core.losses.nt_xent` (SimCLR's 2N form, additive margin) on the fused kernels.

    Every view of ``cat([z1, z2])`` is an anchor; its other view is the positive, the anchor itself is dropped.
    ``temperature``: a number or a tensor; per anchor (N,) (both views of a sample) or (2N,).
    ``reduction="none"`` gives (2N,), view-1 anchors first. Returns float32.
    """
    N = z1.shape[0]
    per_t = _check_common(("z1", "z2"), (z1, z2), temperature, (N, 2 * N), margin, similarity, reduction)
    if N < 2:
        raise InputError("the batch has no negatives: NT-Xent needs at least 2 samples")
    check_triton(z1.device)
    z = _prepare(torch.cat([z1, z2], 0), similarity, "cat([z1, z2])")
    idx = torch.arange(2 * N, device=z.device)
    pos = (idx + N) % (2 * N)
    if per_t:
        t = temperature.to(device=z.device, dtype=torch.float32)
        t = t.repeat(2) if t.shape[0] == N else t
        za = (z.float() / t[:, None]).to(z.dtype)
        scale = torch.ones((), dtype=torch.float32, device=z.device)
    else:
        za, scale = z, _scale_of(temperature, z.device)
    row, _ = contrast_lse(za, z, scale, pos_id=pos, self_id=idx, margin=margin, decoupled=decoupled,
                          pos_inv=pos, self_inv=idx, blocks=blocks)
    return _reduce(row - _pos_logit(za, z[pos], scale, margin), reduction)


# ----------------------------------------------------------------------------------------------------------------
# the per-block reducer


class FusedContrastBlockFn:
    """Per-block reducer of the engine on the fused kernels: a drop-in for
    :class:`core.losses.engine.ContrastBlockFn` (``__call__(a, c, params, blk)`` -> ``(row_stats, col_stats)``,
    ``direct_grad(...)`` -> ``(da, dc, [ds])``).

    Covers index positives over all candidates (InfoNCE, CLIP, NT-Xent; ``exclude_self``, ``decoupled``, additive
    margins, ``column_stats``, top-K ``neg_threshold``) when the kernels can run on the block's device; every other
    spec (labels, windows, angular margins, class-prior weights, ...), dtype or device goes to ``ContrastBlockFn``
    unchanged. Used as the block
    function of :func:`core.negatives.pair_reduce` / ``ring_pair_reduce``, each (tile x shard) block becomes two
    kernel launches forward and two or three backward, with no B x N intermediate, so the tiles can be as large
    as the whole local matrix.
    """

    def __init__(self, spec) -> None:
        from core.losses.engine import ContrastBlockFn

        self.spec = spec
        self.fallback = ContrastBlockFn(spec)

    def supports(self, a: Tensor) -> bool:
        s = self.spec
        return (s.positive == "index" and s.negatives_rule == "all" and not getattr(s, "col_log_weight", False)
                and (s.margin == 0.0 or s.margin_type == "additive") and a.dtype in SUPPORTED_DTYPES
                and triton_unavailable_reason(a.device) is None)

    def _ids(self, blk, C: int):
        c0 = blk.col_ids[0]
        li = blk.row["pos_id"] - c0
        ls = blk.row["self_id"] - c0 if self.spec.exclude_self else None
        return li, ls

    def _thr(self, blk) -> Tensor | None:
        return blk.row["neg_thr"] if getattr(self.spec, "neg_threshold", False) else None

    def __call__(self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk):
        if not self.supports(a):
            return self.fallback(a, c, params, blk)
        spec, scale = self.spec, params[0]
        T, C = a.shape[0], c.shape[0]
        li, ls = self._ids(blk, C)
        row, col = contrast_lse(a, c, scale, pos_id=li, self_id=ls, margin=spec.margin, decoupled=spec.decoupled,
                                column_stats=spec.column_stats, neg_thr=self._thr(blk))
        dt = a.dtype
        inside = (li >= 0) & (li < C)
        pos_sim = (a * c[li.clamp(0, C - 1)]).sum(1)
        pos_logit = (pos_sim - spec.margin) * scale
        pos_val = torch.where(inside, pos_logit, torch.zeros_like(pos_logit))
        n_pos = inside.to(dt)
        n_neg = C - n_pos
        if ls is not None:
            n_neg = n_neg - ((ls >= 0) & (ls < C)).to(dt)
        zeros = torch.zeros(T, dtype=dt, device=a.device)
        col_stats = [col.to(dt)] if spec.column_stats else []
        return [row.to(dt), pos_val, n_pos, n_neg, zeros], col_stats

    def direct_grad(self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk, row_tot: Tensor, col_tot: Tensor,
                    g_row: Tensor, g_col: Tensor, need):
        if not self.supports(a):
            return self.fallback.direct_grad(a, c, params, blk, row_tot, col_tot, g_row, g_col, need)
        spec = self.spec
        need_a, need_c, need_p = need
        need_s = bool(need_p) and bool(need_p[0])
        scale_t = params[0].detach()
        scale = scale_t.reshape(1).to(device=a.device, dtype=torch.float32)
        s = scale.reshape(())
        C = c.shape[0]
        li, ls = self._ids(blk, C)
        li, ls = _ids(li, a.device), _ids(ls, a.device)
        a_, c_ = a.detach().contiguous(), c.detach().contiguous()
        cs = spec.column_stats
        thr = self._thr(blk)
        if thr is not None:
            thr = thr.detach().to(device=a.device, dtype=torch.float32).contiguous()
        da, dc, ds = _den_backward(
            a_, c_, scale, li, ls, None, None, row_tot[:, 0].float().contiguous(), g_row[:, 0],
            col_tot[:, 0].float().contiguous() if cs else None, g_col[:, 0] if cs else None,
            spec.margin, spec.decoupled, (need_a, need_c, need_s), thr=thr)
        with torch.no_grad():
            inside = (li >= 0) & (li < C)
            li_c = li.clamp(0, C - 1)
            gp = torch.where(inside, g_row[:, 1].float(), torch.zeros_like(g_row[:, 1].float()))
            if need_a:
                da = (da + s * gp[:, None] * c_[li_c].float()).to(a.dtype)
            if need_c:
                dc.index_add_(0, li_c[inside], s * gp[inside][:, None] * a_[inside].float())
                dc = dc.to(c.dtype)
            if need_s:
                pos_sim = (a_.float() * c_[li_c].float()).sum(1)
                ds = (ds + (gp * (pos_sim - spec.margin)).sum()).to(scale_t.dtype).reshape(params[0].shape)
        return (da if need_a else None), (dc if need_c else None), [ds if need_s else None]
