r"""Triton kernels of :mod:`core.kernels.contrast` (imported only when a fused loss runs).

Two kernels over an anchors x candidates matrix ``x_ij = s a_i . c_j`` that is never written to memory:

* :func:`_lse_rows` -- per anchor row, the log-sum-exp over every candidate of the denominator logits
  (the positive ``j = pos[i]`` shifted by ``-s m`` for an additive margin, or dropped when decoupled; the
  column ``j = self[i]`` dropped; with top-K thresholds only the negatives with ``x_ij > thr_i`` kept). The
  column statistics of a symmetric loss are the same kernel with the roles of the two inputs swapped (the
  positive map inverted, the thresholds read per column).
* :func:`_grad_rows` -- per anchor row, ``s sum_j G_ij c_j`` with
  ``G_ij = g_i exp(x_ij - L_i) [+ h_j exp(x_ij - M_j)]`` recomputed tile by tile on chip from the saved row
  (and column) log-sum-exp totals ``L`` (``M``) and upstream gradients ``g`` (``h``). The candidate gradient
  is the same kernel with the roles swapped.

One program handles ``BLOCK_M`` rows and walks the candidates in ``BLOCK_N`` columns; the logit product runs
over the feature dimension in ``BLOCK_K`` chunks (``ONE_K``: one chunk covers ``D``, the anchor tile is loaded
once and stays on chip, and in the gradient kernel the candidate tile serves both products). Statistics and
accumulators are float32 whatever the input dtype (``UPCAST``: bfloat16 operands converted to float32 before
each product, for the interpreter, whose ``tl.dot`` is wrong on bfloat16; the products are the same, bf16 x bf16
is exact in float32). In the gradient kernel a second grid axis splits the output features in ``BLOCK_O`` chunks
(each such program recomputes the logits; one chunk when ``BLOCK_O`` covers ``D``). ``G`` enters its product in
the input dtype, multiplied by ``PSCALE`` (a power of two, ``1 / max(|g| + |h|)`` rounded, so that float16 does not
flush the small entries of ``G`` -- about ``1 / (B N)`` under a mean -- to zero) and divided back in float32.

The kernels are compiled for CUDA tensors (``triton.jit``) or, when the process imported Triton with
``TRITON_INTERPRET=1``, run by Triton's interpreter on CPU tensors (slow; the tests).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

NEG_INF = tl.constexpr(float("-inf"))  # a constexpr: kernels may read only constexpr globals


def _lse_rows(A, C, POS, SELF, THR, SCALE, OUT, n_rows, n_cols, dim, stride_a, stride_c, margin,
              HAS_SELF: tl.constexpr, THR_MODE: tl.constexpr, DECOUPLED: tl.constexpr, IEEE: tl.constexpr,
              UPCAST: tl.constexpr, ONE_K: tl.constexpr, BIG: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < n_rows
    if BIG:  # 64-bit offsets when an input passes 2^31 elements (they cost registers: only then)
        a_off = rows.to(tl.int64) * stride_a
    else:
        a_off = rows * stride_a
    ks = tl.arange(0, BLOCK_K)
    scale = tl.load(SCALE).to(tl.float32)
    pos = tl.load(POS + rows, mask=rmask, other=-1)
    if HAS_SELF:
        slf = tl.load(SELF + rows, mask=rmask, other=-1)
    if THR_MODE == 1:
        thr_r = tl.load(THR + rows, mask=rmask, other=0.0)
    if ONE_K:  # the whole feature dimension in one chunk: the anchor tile stays on chip for the column walk
        a_all = tl.load(A + a_off[:, None] + ks[None, :], mask=rmask[:, None] & (ks < dim)[None, :],
                        other=0.0)
        if UPCAST:
            a_all = a_all.to(tl.float32)
    m_i = tl.full([BLOCK_M], NEG_INF, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < n_cols
        if BIG:
            c_off = cols.to(tl.int64) * stride_c
        else:
            c_off = cols * stride_c
        if ONE_K:
            c = tl.load(C + c_off[:, None] + ks[None, :], mask=cmask[:, None] & (ks < dim)[None, :],
                        other=0.0)
            if UPCAST:
                c = c.to(tl.float32)
            if IEEE:
                x = tl.dot(a_all, tl.trans(c), input_precision="ieee")
            else:
                x = tl.dot(a_all, tl.trans(c))
        else:
            x = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for k0 in range(0, dim, BLOCK_K):
                kk = k0 + ks
                kmask = kk < dim
                a = tl.load(A + a_off[:, None] + kk[None, :], mask=rmask[:, None] & kmask[None, :],
                            other=0.0)
                c = tl.load(C + c_off[:, None] + kk[None, :], mask=cmask[:, None] & kmask[None, :],
                            other=0.0)
                if UPCAST:  # the interpreter's dot is wrong on bfloat16: the same exact products in float32
                    a = a.to(tl.float32)
                    c = c.to(tl.float32)
                if IEEE:
                    x += tl.dot(a, tl.trans(c), input_precision="ieee")
                else:
                    x += tl.dot(a, tl.trans(c))
        x = x * scale
        is_pos = cols[None, :] == pos[:, None]
        if THR_MODE == 1:  # top-K: only the negatives above the anchor's threshold (and the positive) stay
            x = tl.where(is_pos | (x > thr_r[:, None]), x, NEG_INF)
        if THR_MODE == 2:  # the same, thresholds per column (the swapped orientation)
            thr_c = tl.load(THR + cols, mask=cmask, other=0.0)
            x = tl.where(is_pos | (x > thr_c[None, :]), x, NEG_INF)
        if DECOUPLED:
            x = tl.where(is_pos, NEG_INF, x)
        else:
            x = tl.where(is_pos, x - margin * scale, x)
        if HAS_SELF:
            x = tl.where(cols[None, :] == slf[:, None], NEG_INF, x)
        x = tl.where(cmask[None, :], x, NEG_INF)
        m_new = tl.maximum(m_i, tl.max(x, 1))
        m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), 1)
        m_i = m_new
    out = tl.where(l_i > 0.0, m_i + tl.log(tl.where(l_i > 0.0, l_i, 1.0)), NEG_INF)
    tl.store(OUT + rows, out, mask=rmask)


def _grad_rows(A, C, POS, SELF, THR, SCALE, PSCALE, ROW_LSE, ROW_G, COL_LSE, COL_G, OUT, n_rows, n_cols, dim,
               stride_a, stride_c, stride_o, margin,
               HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_SELF: tl.constexpr, THR_MODE: tl.constexpr,
               DECOUPLED: tl.constexpr,
               IEEE: tl.constexpr, UPCAST: tl.constexpr, ONE_K: tl.constexpr, BIG: tl.constexpr,
               BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr):
    pid = tl.program_id(0)
    pid_o = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < n_rows
    if BIG:  # 64-bit offsets when an input passes 2^31 elements (they cost registers: only then)
        a_off = rows.to(tl.int64) * stride_a
    else:
        a_off = rows * stride_a
    ks = tl.arange(0, BLOCK_K)
    os_ = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    omask = os_ < dim
    scale = tl.load(SCALE).to(tl.float32)
    pscale = tl.load(PSCALE).to(tl.float32)
    pos = tl.load(POS + rows, mask=rmask, other=-1)
    if HAS_SELF:
        slf = tl.load(SELF + rows, mask=rmask, other=-1)
    if THR_MODE == 1:
        thr_r = tl.load(THR + rows, mask=rmask, other=0.0)
    if HAS_ROW:
        lse_r = tl.load(ROW_LSE + rows, mask=rmask, other=0.0)
        g_r = tl.load(ROW_G + rows, mask=rmask, other=0.0)
    if ONE_K:
        a_all = tl.load(A + a_off[:, None] + ks[None, :], mask=rmask[:, None] & (ks < dim)[None, :],
                        other=0.0)
        if UPCAST:
            a_all = a_all.to(tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_O], tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < n_cols
        if BIG:
            c_off = cols.to(tl.int64) * stride_c
        else:
            c_off = cols * stride_c
        if ONE_K:
            c = tl.load(C + c_off[:, None] + ks[None, :], mask=cmask[:, None] & (ks < dim)[None, :],
                        other=0.0)
            if UPCAST:
                c = c.to(tl.float32)
            if IEEE:
                x = tl.dot(a_all, tl.trans(c), input_precision="ieee")
            else:
                x = tl.dot(a_all, tl.trans(c))
        else:
            x = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for k0 in range(0, dim, BLOCK_K):
                kk = k0 + ks
                kmask = kk < dim
                a = tl.load(A + a_off[:, None] + kk[None, :], mask=rmask[:, None] & kmask[None, :],
                            other=0.0)
                c = tl.load(C + c_off[:, None] + kk[None, :], mask=cmask[:, None] & kmask[None, :],
                            other=0.0)
                if UPCAST:
                    a = a.to(tl.float32)
                    c = c.to(tl.float32)
                if IEEE:
                    x += tl.dot(a, tl.trans(c), input_precision="ieee")
                else:
                    x += tl.dot(a, tl.trans(c))
        x = x * scale
        is_pos = cols[None, :] == pos[:, None]
        if THR_MODE == 1:  # top-K: only the negatives above the anchor's threshold (and the positive) stay
            x = tl.where(is_pos | (x > thr_r[:, None]), x, NEG_INF)
        if THR_MODE == 2:  # the same, thresholds per column (the swapped orientation)
            thr_c = tl.load(THR + cols, mask=cmask, other=0.0)
            x = tl.where(is_pos | (x > thr_c[None, :]), x, NEG_INF)
        if DECOUPLED:
            x = tl.where(is_pos, NEG_INF, x)
        else:
            x = tl.where(is_pos, x - margin * scale, x)
        if HAS_SELF:
            x = tl.where(cols[None, :] == slf[:, None], NEG_INF, x)
        live = cmask[None, :] & rmask[:, None] & (x != NEG_INF)
        p = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if HAS_ROW:
            p += g_r[:, None] * tl.exp(tl.where(live, x - lse_r[:, None], NEG_INF))
        if HAS_COL:
            lse_c = tl.load(COL_LSE + cols, mask=cmask, other=0.0)
            g_c = tl.load(COL_G + cols, mask=cmask, other=0.0)
            p += g_c[None, :] * tl.exp(tl.where(live, x - lse_c[None, :], NEG_INF))
        if ONE_K and BLOCK_O == BLOCK_K:  # one output chunk, the candidate tile already on chip
            c_o = c
        else:
            c_o = tl.load(C + c_off[:, None] + os_[None, :], mask=cmask[:, None] & omask[None, :],
                          other=0.0)
        p = (p * pscale).to(C.dtype.element_ty)  # pscale: a power of two that keeps fp16 G from underflowing
        if UPCAST:
            p = p.to(tl.float32)
            c_o = c_o.to(tl.float32)
        if IEEE:
            acc += tl.dot(p, c_o, input_precision="ieee")
        else:
            acc += tl.dot(p, c_o)
    acc = acc * (scale / pscale)
    if BIG:
        o_off = rows.to(tl.int64) * stride_o
    else:
        o_off = rows * stride_o
    tl.store(OUT + o_off[:, None] + os_[None, :], acc, mask=rmask[:, None] & omask[None, :])


def interpreter_mode() -> bool:
    """Whether Triton runs its interpreter in this process: decided once, by ``TRITON_INTERPRET`` when
    ``triton.language`` is first imported (its own library functions are built for one mode only)."""
    return isinstance(tl.sum, InterpretedFunction)


_wrap = InterpretedFunction if interpreter_mode() else triton.jit
#: the kernels, compiled for CUDA or (interpreter mode) run by the interpreter on CPU tensors
KERNELS = {"lse_rows": _wrap(_lse_rows), "grad_rows": _wrap(_grad_rows)}
