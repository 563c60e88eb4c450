"""Compile the fused Triton kernels for a GPU architecture without a GPU; report their resources.

For each kernel variant (forward, ``∂L/∂x``, parameter gradients; dense or with a neighbour
list; float32 or bfloat16 activations) and each autotuning tile shape, this runs Triton's
compiler down to a cubin for ``--arch`` (default 90: H100) with the ``ptxas`` shipped in
Triton's wheel, then reads from ``cuobjdump``: registers per thread, local memory (bytes of
register spills per thread), shared memory, and how many warpgroup MMA (``HGMMA``) / MMA
(``HMMA``) and ``MUFU.EX2`` instructions the code holds. It catches compile errors and
spilling tile shapes on any machine.

Usage::

    python benchmarks/fused_compile_check.py                   # every autotuning shape, D = 3
    python benchmarks/fused_compile_check.py --dim 2 --quick   # one shape per kernel
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _tools() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_variant(
    name: str, constants: dict[str, object], warps: int, stages: int, arch: int, bf16: bool
) -> dict[str, object]:
    """Compile one kernel variant; return its resource usage and instruction counts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from particlesim.kernels import fused

    fn = fused._build()["raw"][name]
    types: dict[str, str] = {}
    for arg in fn.arg_names:
        if arg in constants:
            types[arg] = "constexpr"
        elif arg in ("ptr_ptr", "idx_ptr", "pair_m_ptr", "pair_n_ptr"):
            types[arg] = "*i32"
        elif arg in ("x_ptr", "gy_ptr", "y_ptr", "gx_ptr"):
            types[arg] = "*bf16" if bf16 else "*fp32"
        elif arg.endswith("_ptr"):
            types[arg] = "*fp32"
        elif arg in ("r_cut2", "r_on2"):
            types[arg] = "fp32"
        else:
            types[arg] = "i32"
    compiled = triton.compile(
        ASTSource(fn, types, constexprs=constants),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": warps, "num_stages": stages},
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run(
            [str(_tools() / "cuobjdump"), "--dump-resource-usage", handle.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sass = subprocess.run(
            [str(_tools() / "cuobjdump"), "--dump-sass", handle.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    found = re.search(r"REG:(\d+).*?LOCAL:(\d+)", usage)
    if found is None:
        raise RuntimeError(f"cannot read cuobjdump's resource usage:\n{usage}")
    registers, local = (int(v) for v in found.groups())
    return {
        "registers": registers,
        "local_bytes": local,
        "shared_bytes": compiled.metadata.shared,
        "hgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "hmma": len(re.findall(r"\bHMMA\b", sass)),
        "ex2": len(re.findall(r"MUFU\.EX2", sass)),
    }


def variants(dim: int, quick: bool) -> list[tuple[str, dict[str, object], int, int, bool]]:
    """``(kernel, constexprs, warps, stages, bf16)`` for the autotuning tables at ``dim``."""
    from particlesim.kernels import fused

    base = {
        "D": dim, "C": 1, "KID": 0, "HAS_Q": True, "HAS_MOD": False, "HAS_CUT": False,
        "SPARSE": False, "TF32": True, "LOWP": False,
    }  # fmt: skip
    grads = {
        "NEED_Q": True, "NEED_MOD": False, "NEED_RH": True, "NEED_RJ": True, "NEED_W": True,
        "GROUP_M": 8,
    }  # fmt: skip
    sparse = {**base, "SPARSE": True, "HAS_CUT": True}
    tile_m, tile_n = fused.SPARSE_TILES
    forward = fused._FORWARD_CONFIGS[:1] if quick else fused._FORWARD_CONFIGS
    params = fused._PARAMS_CONFIGS[:1] if quick else fused._PARAMS_CONFIGS
    out = []
    for bb, bm, bn, warps, stages in forward:
        tiles = {"BLOCK_B": bb, "BLOCK_M": bm, "BLOCK_N": bn}
        out.append(("forward", {**base, **tiles}, warps, stages, False))
        swapped = {"BLOCK_B": bb, "BLOCK_M": bn, "BLOCK_N": bm}
        out.append(("grad_x", {**base, **swapped}, warps, stages, False))
    for bb, bm, bn, warps, stages in params:
        tiles = {"BLOCK_B": bb, "BLOCK_M": bm, "BLOCK_N": bn}
        out.append(("grad_params", {**base, **grads, **tiles}, warps, stages, False))
    for bb, warps, stages in (
        fused._SPARSE_FORWARD_CONFIGS[-1:] if quick else fused._SPARSE_FORWARD_CONFIGS
    ):
        tiles = {"BLOCK_B": bb, "BLOCK_M": tile_m, "BLOCK_N": tile_n}
        out.append(("forward", {**sparse, **tiles}, warps, stages, False))
        out.append(("grad_x", {**sparse, **tiles}, warps, stages, False))
    for bb, warps, stages in (
        fused._SPARSE_PARAMS_CONFIGS[:1] if quick else fused._SPARSE_PARAMS_CONFIGS
    ):
        tiles = {"BLOCK_B": bb, "BLOCK_M": tile_m, "BLOCK_N": tile_n}
        out.append(("grad_params", {**sparse, **grads, **tiles}, warps, stages, False))
    bb, bm, bn, warps, stages = fused._FORWARD_CONFIGS[0]
    low = {**base, "LOWP": True, "TF32": False, "BLOCK_B": bb, "BLOCK_M": bm, "BLOCK_N": bn}
    out.append(("forward", low, warps, stages, True))
    return out


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10")
    parser.add_argument("--dim", type=int, default=3, help="position dimension D")
    parser.add_argument("--quick", action="store_true", help="one tile shape per kernel")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    rows = []
    print(f"sm_{args.arch}, D = {args.dim}")
    header = (
        f"  {'kernel':<12} {'sparse':>6} {'bf16':>5} {'tiles (B, M, N) x warps':<24} "
        f"{'regs':>5} {'spill B':>8} {'smem':>7} {'HGMMA':>6} {'HMMA':>5} {'EX2':>4}"
    )
    print(header)
    for name, constants, warps, stages, bf16 in variants(args.dim, args.quick):
        report = compile_variant(name, constants, warps, stages, args.arch, bf16)
        tiles = (
            f"({constants['BLOCK_B']}, {constants['BLOCK_M']}, {constants['BLOCK_N']}) x {warps}"
        )
        print(
            f"  {name:<12} {constants['SPARSE']!s:>6} {bf16!s:>5} {tiles:<24} "
            f"{report['registers']:>5} {report['local_bytes']:>8} {report['shared_bytes']:>7} "
            f"{report['hgmma']:>6} {report['hmma']:>5} {report['ex2']:>4}",
            flush=True,
        )
        rows.append({"kernel": name, "warps": warps, "stages": stages, **constants, **report})
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
