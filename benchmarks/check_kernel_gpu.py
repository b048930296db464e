"""The fused per-sample |gradient| kernel alone, at the shapes of 7B models: equal to the batched per-sample
products, and its time against one weight-gradient product (what a training step computes for that matrix) and
against the products path. Prints ratios measured in one run; `--sweep` times other tile shapes too.

    python benchmarks/check_kernel_gpu.py --device cuda --json kernel.json          # on an H100/H200
    python benchmarks/check_kernel_gpu.py --quick                                   # the same code, tiny, on the CPU
                                                                                    # through Triton's interpreter

Equality: fp32 inputs within a relative 1e-6 of the products (the issue's bound); 16-bit inputs: the same top
`keep` weights per matrix as the products select, ties aside (a weight in one top set only scores within fp32
rounding of the k-th score). The limit of the kernel's time is one weight-gradient product (`over_product` ~1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Shapes (out, in) of the target matrices, as nn.Linear stores them.
SHAPES = {
    "llama-2-7b": {"q_proj": (4096, 4096), "up_proj": (11008, 4096), "down_proj": (4096, 11008)},
    "qwen2-7b": {"k_proj": (512, 3584), "up_proj": (18944, 3584), "down_proj": (3584, 18944)},
}
QUICK_SHAPES = {"tiny": {"up_proj": (48, 40), "down_proj": (40, 48)}}
SWEEP = [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 32, 8, 4), (128, 256, 64, 8, 3),
         (256, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (64, 256, 64, 8, 3)]


def lengths_for(batch: int, length: int, ragged: bool) -> list[int]:
    """Right-padded samples as group_by_length makes them (similar lengths), or all of one length."""
    if not ragged:
        return [length] * batch
    return [length - (length // 16) * i for i in range(batch)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, reps: int) -> float:
    """Median wall time of `fn` in ms (CUDA events on a GPU), after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def products(acc: torch.Tensor, g: torch.Tensor, x: torch.Tensor, lengths: list[int]) -> None:
    """The scorer's path without the kernel (fused_kernel='off'): batched per-sample products, |.|, a sum."""
    from dean_hf.scoring.scorers import SnipScorer

    scorer = SnipScorer()
    scorer.fused_kernel = "off"
    scorer.on_backward(nn.Linear(1, 1, bias=False, device="meta"), acc, x, g, lengths)


def same_selection(fast: torch.Tensor, slow: torch.Tensor, keep: float) -> tuple[float, bool]:
    """Share of the products' top-`keep` weights the kernel's scores also select, and whether every weight in one
    set only scores within fp32 rounding of the k-th score (a tie)."""
    from dean_hf.scoring.scores import rank_order

    flat_fast, flat_slow = fast.reshape(-1), slow.reshape(-1)
    k = max(1, int(flat_slow.numel() * keep))
    a, b = rank_order(flat_fast, k), rank_order(flat_slow, k)
    kth = flat_slow[b[-1]].item()
    overlap = torch.isin(a, b).sum().item() / k
    differ = torch.cat([a[~torch.isin(a, b)], b[~torch.isin(b, a)]])
    ties = bool(((flat_slow[differ] - kth).abs() <= 1e-5 * abs(kth)).all()) if differ.numel() else True
    return overlap, ties


def check(device: torch.device, dtype: torch.dtype, shape: tuple[int, int], batch: int, length: int, ragged: bool,
          reps: int, blocks=None) -> dict:
    from dean_hf.scoring.fused_abs_grad import LengthsOnDevice, accumulate_abs_grad

    out_features, in_features = shape
    lengths = lengths_for(batch, length, ragged)
    gen = torch.Generator(device=device).manual_seed(batch * 1000 + out_features)
    x = torch.randn(batch, length, in_features, device=device, dtype=dtype, generator=gen)
    g = torch.randn(batch, length, out_features, device=device, dtype=dtype, generator=gen) * 1e-3
    for i, n in enumerate(lengths):  # padding the kernel must never read
        x[i, n:] = float("nan")
        g[i, n:] = float("nan")
    fast = torch.zeros(out_features, in_features, device=device)
    slow = torch.zeros_like(fast)
    accumulate_abs_grad(fast, g, x, lengths, blocks=blocks)
    products(slow, g, x, lengths)
    sync(device)
    row = {"shape": list(shape), "batch": batch, "length": length, "ragged": ragged, "dtype": str(dtype)[6:],
           "tokens": sum(lengths), "finite": bool(torch.isfinite(fast).all()),
           "max_relative_difference": ((fast - slow).abs().max() / slow.abs().max()).item()}
    row["selection_overlap"], row["differences_are_ties"] = same_selection(fast, slow, 1e-2)
    del slow
    acc = torch.zeros_like(fast)
    # The training step's weight gradient over the same real tokens (packed: padding would add work the kernel
    # skips)
    flat_x = torch.cat([x[i, :n] for i, n in enumerate(lengths)])
    flat_g = torch.cat([g[i, :n] for i, n in enumerate(lengths)])
    cache = LengthsOnDevice()  # one upload of the lengths per batch, as the scorer does
    row["kernel_ms"] = median_ms(lambda: accumulate_abs_grad(acc, g, x, lengths, cache, blocks=blocks), device,
                                 reps)
    row["product_ms"] = median_ms(lambda: flat_g.T @ flat_x, device, reps)  # one weight-gradient product
    row["products_ms"] = median_ms(lambda: products(acc, g, x, lengths), device, reps)
    flops = 2 * sum(lengths) * out_features * in_features
    row["kernel_tflops"] = flops / row["kernel_ms"] / 1e9
    row["over_product"] = row["kernel_ms"] / row["product_ms"]
    row["products_over_kernel"] = row["products_ms"] / row["kernel_ms"]
    return row


def save(path, device: torch.device, rows: list[dict]) -> None:
    """Write the rows so far to `path`, if given: a run stopped by its time limit keeps what it measured."""
    if path:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (interpreter)"
        Path(path).write_text(json.dumps({"device": name, "rows": rows}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU through Triton's interpreter")
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--sweep", action="store_true", help="also time other tile shapes on the largest matrix")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.quick:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        args.device, args.length, shapes, reps = "cpu", 24, QUICK_SHAPES, 1
    else:
        shapes, reps = SHAPES, 20
    from dean_hf.scoring.fused_abs_grad import fused_kernel_unavailable

    device = torch.device(args.device)
    why = fused_kernel_unavailable(device, torch.bfloat16)
    if why is not None:
        raise SystemExit(f"the fused kernel cannot run here: {why}")
    if device.type == "cuda":
        print(f"{torch.cuda.get_device_name(device)}, compute capability "
              f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}; torch {torch.__version__}")
    rows = []
    batches = [int(b) for b in args.batch_sizes.split(",")]
    for model, modules in shapes.items():
        for module, shape in modules.items():
            for batch in batches:
                row = {"model": model, "module": module,
                       **check(device, torch.bfloat16, shape, batch, args.length, True, reps)}
                rows.append(row)
                save(args.json, device, rows)
                print(f"{model} {module} {shape[0]}x{shape[1]} bf16 batch {batch}x{args.length} (ragged, "
                      f"{row['tokens']} tokens): kernel {row['kernel_ms']:.3f} ms = {row['over_product']:.2f}x one "
                      f"weight-gradient product ({row['kernel_tflops']:.0f} TFLOP/s); products path "
                      f"{row['products_over_kernel']:.2f}x the kernel; max rel. diff "
                      f"{row['max_relative_difference']:.1e}, top 1e-2 overlap {row['selection_overlap']:.4f}"
                      f"{'' if row['differences_are_ties'] else ' (NOT ties)'}", flush=True)
    # fp32 inputs: IEEE products, the 1e-6 bound; one shape, even and ragged lengths
    model, modules = next(iter(shapes.items()))
    module, shape = next(iter(modules.items()))
    for ragged in (False, True):
        row = {"model": model, "module": module, **check(device, torch.float32, shape, batches[0],
                                                         args.length // 2 or 1, ragged, max(1, reps // 4))}
        rows.append(row)
        save(args.json, device, rows)
        print(f"{model} {module} fp32 batch {batches[0]} ({'ragged' if ragged else 'even'}): max rel. diff "
              f"{row['max_relative_difference']:.1e} (bound 1e-6); kernel {row['over_product']:.2f}x the fp32 "
              f"product", flush=True)
    if args.sweep and not args.quick:
        model, modules = list(shapes.items())[-1]
        module, shape = max(modules.items(), key=lambda kv: kv[1][0] * kv[1][1])
        for blocks in SWEEP:
            try:
                row = check(device, torch.bfloat16, shape, batches[-1], args.length, True, reps, blocks=blocks)
            except Exception as err:  # a tile that does not fit this GPU's shared memory or registers
                print(f"tile {blocks}: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
                continue
            rows.append({"model": model, "module": module, "blocks": list(blocks), **row})
            save(args.json, device, rows)
            print(f"tile {blocks} on {model} {module} batch {batches[-1]}: {row['kernel_ms']:.3f} ms = "
                  f"{row['over_product']:.2f}x the product", flush=True)
    bad = [r for r in rows if not r["finite"] or (r["dtype"] == "float32" and r["max_relative_difference"] > 1e-6)
           or not r["differences_are_ties"]]
    print("equality: " + ("every check passed" if not bad else f"{len(bad)} FAILED: {bad}"))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
