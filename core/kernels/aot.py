"""Compile the fused kernels for a GPU architecture without a GPU, and report what ptxas says about them.

For every feature width and dtype, the block shape the launcher would pick (:func:`core.kernels.contrast._blocks`)
is compiled for ``sm_<capability>`` (Triton's own ``ptxas``), and the register use, spills and shared memory per
program are printed. Exit status 1 when a kernel spills registers or needs more shared memory than one program
may use (227 KiB on sm_90): a block shape to change before a GPU run. Needs Triton in compiled mode (not
``TRITON_INTERPRET=1``); no CUDA device, driver or GPU time.

    python -m core.kernels.aot --capability 90 --dims 64,128,256,512 --dtypes fp32,bf16
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

SMEM_LIMIT = {90: 232448, 80: 166912, 89: 101376, 86: 101376, 100: 232448}
_TYPES = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


def compile_report(dims=(64, 128, 256, 512), dtypes=("fp32", "bf16"), capability: int = 90) -> list[dict]:
    """One record per (dtype, dim, kernel): block shape, registers, spill bytes, shared memory."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from core.kernels._triton_contrast import KERNELS, interpreter_mode
    from core.kernels.contrast import _blocks

    if interpreter_mode():
        raise RuntimeError("Triton runs its interpreter in this process (TRITON_INTERPRET=1); compile in a process "
                           "without it")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    target = GPUTarget("cuda", capability, 32)
    out = []
    for dt in dtypes:
        tdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
        for dim in dims:
            for name in ("lse_rows", "grad_rows"):
                cfg = _blocks(dim, tdt, False, grad=name == "grad_rows")
                warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                k = KERNELS[name]
                sig = {n: "i32" for n in k.arg_names}
                sig.update(A=_TYPES[dt], C=_TYPES[dt], POS="*i64", SELF="*i64", margin="fp32")
                for n in ("THR", "SCALE", "PSCALE", "OUT", "ROW_LSE", "ROW_G", "COL_LSE", "COL_G"):
                    if n in sig:
                        sig[n] = "*fp32"
                # the heaviest variant below 2^31 elements: self exclusion, top-K thresholds, row + column terms
                const = dict(cfg, ONE_K=cfg["BLOCK_K"] >= dim, HAS_SELF=True, THR_MODE=1, BIG=False, DECOUPLED=False,
                             IEEE=dt == "fp32", UPCAST=False)
                if name == "lse_rows":
                    const.pop("BLOCK_O")
                else:
                    const.update(HAS_ROW=True, HAS_COL=True)
                sig.update({n: "constexpr" for n in const})
                src = ASTSource(fn=k, signature=sig, constexprs={(k.arg_names.index(n),): v for n, v in const.items()})
                c = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
                with tempfile.TemporaryDirectory() as tmp:
                    ptx = os.path.join(tmp, "k.ptx")
                    with open(ptx, "w") as f:
                        f.write(c.asm["ptx"])
                    r = subprocess.run([ptxas, f"-arch={arch}", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")],
                                       capture_output=True, text=True, check=True)
                regs = re.search(r"Used (\d+) registers", r.stderr)
                spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
                out.append({"dtype": dt, "dim": dim, "kernel": name, "warps": warps, "stages": stages,
                            **{k2: v for k2, v in cfg.items()}, "registers": int(regs.group(1)) if regs else None,
                            "spill_bytes": int(spill.group(1)) + int(spill.group(2)) if spill else None,
                            "shared_bytes": int(c.metadata.shared)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capability", type=int, default=90, help="compute capability (90: H100 / H200)")
    p.add_argument("--dims", default="64,128,256,512")
    p.add_argument("--dtypes", default="fp32,bf16")
    args = p.parse_args(argv)
    recs = compile_report([int(d) for d in args.dims.split(",")], args.dtypes.split(","), args.capability)
    limit = SMEM_LIMIT.get(args.capability, 101376)
    bad = 0
    for r in recs:
        flag = ""
        if r["spill_bytes"] or r["shared_bytes"] > limit:
            bad += 1
            flag = "  <-- spills" if r["spill_bytes"] else "  <-- shared memory over the limit"
        print(f"{r['dtype']:4s} D={r['dim']:4d} {r['kernel']:9s} BM={r['BLOCK_M']} BN={r['BLOCK_N']} "
              f"BK={r['BLOCK_K']} BO={r['BLOCK_O']} warps={r['warps']}: {r['registers']} registers, "
              f"{r['spill_bytes']} B spilled, {r['shared_bytes']} B shared{flag}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
