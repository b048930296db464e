"""The fused per-sample |gradient| kernel compiled for each NVIDIA architecture, on this machine (no GPU needed):
registers and spilled bytes per thread, shared memory per block, and which products it uses. Prints a Markdown
table; benchmarks/README.md holds its output.

    python benchmarks/kernel_resources.py                       # the shipped tiles, sm_75 to sm_120
    python benchmarks/kernel_resources.py --blocks 128,256,64,8,3 --capabilities 90
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = {75: "T4", 80: "A100", 86: "A10, RTX 3090", 89: "L4, L40S, RTX 4090", 90: "H100, H200", 100: "B200",
         120: "RTX 5090"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capabilities", default=",".join(map(str, NAMES)))
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--blocks", default=None, help="a tile shape BLOCK_M,BLOCK_N,BLOCK_K,warps,stages to try "
                                                       "instead of the shipped one")
    args = parser.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    from dean_hf.scoring.fused_abs_grad import MIN_CAPABILITY, launch_constants
    from dean_hf.scoring.fused_abs_grad_aot import compile_for

    blocks = tuple(int(v) for v in args.blocks.split(",")) if args.blocks else None
    print(f"triton {triton.__version__}; the kernel is chosen from compute capability "
          f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}\n")
    print("| GPU | sm | inputs | tile (M x N x K, warps, stages) | registers | spilled bytes | shared memory | "
          "products |")
    print("|---|---|---|---|---|---|---|---|")
    for capability in (int(c) for c in args.capabilities.split(",")):
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            c, o = launch_constants(dtype, True, blocks)
            tile = f"{c['BLOCK_M']} x {c['BLOCK_N']} x {c['BLOCK_K']}, {o['num_warps']}, {o['num_stages']}"
            try:
                r = compile_for(capability, dtype, blocks=blocks)
            except Exception as err:  # a tile this architecture cannot hold
                print(f"| {NAMES.get(capability, '')} | {capability} | {str(dtype)[6:]} | {tile} | failed: "
                      f"{type(err).__name__} | | | |")
                continue
            products = {"none": "FMA (IEEE fp32)" if dtype == torch.float32 else "FMA (no tensor cores)"}.get(
                r.products, f"tensor cores ({r.products})")
            print(f"| {NAMES.get(capability, '')} | {capability} | {r.dtype} | {tile} | {r.registers} | "
                  f"{r.spill_bytes} | {r.shared_bytes // 1024} KiB | {products} |")


if __name__ == "__main__":
    main()
