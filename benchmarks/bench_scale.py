"""Scoring at 7B scale: throughput against a bare forward+backward and the device's matrix-product roofline, and
peak memory against the plan (`dean plan`). A random-weight model built from a shipped config (nothing to
download), synthetic samples of one length. Prints ratios measured in one run.

    python benchmarks/bench_scale.py --device cuda                       # Llama-2-7B config, bf16, batch 4 x 512
    python benchmarks/bench_scale.py --device cuda --config ../tests/fixtures/configs/qwen2-7b.json
    python benchmarks/bench_scale.py --quick                             # a scaled-down config on the CPU (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import bare_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dean_hf import score_importance  # noqa: E402
from dean_hf.plan import GIB, estimate_memory, load_config, measure_peak  # noqa: E402
from dean_hf.scoring.engine import _check_examples  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "configs"
SMALL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=8000)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's achievable dense matrix-product rate in this dtype (the roofline), measured."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    reps = 10 if device.type == "cuda" else 3
    seconds = timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n ** 3 * reps / seconds / 1e12


def examples(vocab: int, n: int, length: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    prompt = length // 4
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def count_flops(fn) -> float:
    """FLOPs of `fn` as torch's FlopCounterMode counts them (NaN where it cannot count an op)."""
    from torch.utils.flop_counter import FlopCounterMode

    import dean_hf.scoring.scorers as scorers

    real = scorers._fp32_product
    scorers._fp32_product = lambda x: torch.bmm  # the counter cannot count bmm(out_dtype=); same FLOPs
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except (AssertionError, RuntimeError, TypeError):  # e.g. grouped-query SDPA in some torch versions
        return float("nan")
    finally:
        scorers._fp32_product = real
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIGS / "llama-2-7b.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--n", type=int, default=32, help="samples")
    parser.add_argument("--quick", action="store_true", help="a scaled-down config on the CPU (CI smoke)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--results", default=None, help="write the scale section of this Markdown file (RESULTS.md) "
                                                         "from the figures of this run, or of --from-json files")
    parser.add_argument("--from-json", nargs="*", default=None, help="figures saved by earlier runs (--json): only "
                                                                     "write --results from them")
    args = parser.parse_args()
    if args.from_json is not None:
        write_results(args.results, [json.loads(Path(f).read_text()) for f in args.from_json])
        return
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = load_config(args.config)
    scaled = args.quick or device.type == "cpu"
    if scaled:  # the same code path at a size this machine can run
        for key, value in SMALL.items():
            setattr(config, key, value)
        args.n, args.length, args.batch_size = (4, 64, 2) if args.quick else (8, 256, 4)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    data = _check_examples(examples(config.vocab_size, args.n, args.length))
    tokens = args.n * args.length
    name = f"{Path(args.config).stem}{' (scaled down)' if scaled else ''}"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}: {params / 1e9:.2f}B parameters, {args.dtype} on {device_name}; {args.n} samples x {args.length} "
          f"tokens, batch {args.batch_size}")

    warm = data[: args.batch_size]
    bare_step(model, warm, args.batch_size, device, hf_loss=False)
    score_importance(model, [{"input_ids": i, "labels": l} for i, l in warm], batch_size=args.batch_size,
                     show_progress=False)
    exs = [{"input_ids": i, "labels": l} for i, l in data]
    roofline = matmul_tflops(device, dtype)
    t_hf = timed(lambda: bare_step(model, data, args.batch_size, device, hf_loss=True), device)
    t_floor = timed(lambda: bare_step(model, data, args.batch_size, device, hf_loss=False), device)
    t_score = timed(lambda: score_importance(model, exs, batch_size=args.batch_size, show_progress=False), device)
    one = exs[: args.batch_size]
    flops_score = count_flops(lambda: score_importance(model, one, batch_size=args.batch_size, show_progress=False))
    flops_floor = count_flops(lambda: bare_step(model, data[: args.batch_size], args.batch_size, device,
                                                hf_loss=False))
    batches = -(-args.n // args.batch_size)
    _, peak = measure_peak(lambda: score_importance(model, one, batch_size=args.batch_size, show_progress=False),
                           device)
    plan = estimate_memory(config, dtype=args.dtype, batch_size=args.batch_size, max_length=args.length,
                           response_tokens=args.length - args.length // 4)
    figures = {
        "model": name, "device": device_name, "dtype": args.dtype, "parameters": params, "samples": args.n,
        "length": args.length, "batch_size": args.batch_size,
        "tokens_per_s": {"scoring": tokens / t_score, "bare_fused_loss": tokens / t_floor,
                         "training_step_hf_loss": tokens / t_hf},
        "scoring_over_bare": t_score / t_floor, "scoring_over_training_step": t_score / t_hf,
        "matmul_roofline_tflops": roofline,
        "scoring_tflops": flops_score * batches / t_score / 1e12, "bare_tflops": flops_floor * batches / t_floor / 1e12,
        "scoring_flops_over_bare_flops": flops_score / flops_floor,
        "peak_memory_gib": peak / GIB, "plan_gib": plan.total("scoring_peak") / GIB,
    }
    if device.type == "cuda" and dtype != torch.float32:  # the 16-bit products with fp32 output vs fp32 inputs
        import dean_hf.scoring.scorers as scorers

        fast = score_importance(model, one, batch_size=args.batch_size, keep=1.0, show_progress=False)
        real = scorers._fp32_product
        scorers._fp32_product = lambda x: torch.bmm
        try:
            slow = score_importance(model, one, batch_size=args.batch_size, keep=1.0, show_progress=False)
        finally:
            scorers._fp32_product = real
        figures["products_max_relative_difference"] = max(
            ((fast[n] - slow[n]).abs().max() / slow[n].abs().max()).item() for n in fast)
        print(f"16-bit products with fp32 output vs fp32 products: max relative score difference "
              f"{figures['products_max_relative_difference']:.1e}")
        del fast, slow
    figures["scoring_fraction_of_roofline"] = figures["scoring_tflops"] / roofline
    figures["bare_fraction_of_roofline"] = figures["bare_tflops"] / roofline
    figures["peak_over_plan"] = peak / plan.total("scoring_peak")
    print(f"tokens/s: scoring {tokens / t_score:.0f}, bare forward+backward (same loss) {tokens / t_floor:.0f}, "
          f"training step (HF loss) {tokens / t_hf:.0f}")
    print(f"scoring / bare = {t_score / t_floor:.2f}; scoring / training step = {t_score / t_hf:.2f}")
    print(f"matrix-product roofline {roofline:.3g} TFLOP/s; scoring runs {figures['scoring_tflops']:.3g} TFLOP/s "
          f"({figures['scoring_fraction_of_roofline']:.2f} of it), the bare step {figures['bare_tflops']:.3g} "
          f"({figures['bare_fraction_of_roofline']:.2f}); scoring counts {flops_score / flops_floor:.2f}x the bare "
          "step's FLOPs")
    print(f"peak memory {peak / GIB:.2f} GiB, plan {plan.total('scoring_peak') / GIB:.2f} GiB: measured / plan = "
          f"{figures['peak_over_plan']:.2f}")
    figures["command"] = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if args.results:
        write_results(args.results, [figures])


def write_results(path: str, runs: list[dict]) -> None:
    """The scale section of RESULTS.md: one row per run (model, device), from the figures the runs printed."""
    from _common import write_section

    def cell(value, spec=".2f"):
        return "n/a" if value is None or value != value else format(value, spec)

    lines = ["## Scale: 7B-class models on a GPU (`bench_scale.py`)", "",
             "Random weights from the shipped configs, bf16, synthetic samples of one length, a quarter of each a "
             "prompt. Ratios from one run; the bare step is a forward+backward over the same batches with every "
             "target weight's gradient (dean_hf's loss), the training step the same with transformers' loss "
             "(`model(..., labels=...)`).", "",
             "| model | device | batch x tokens | scoring tokens/s | scoring / bare step | scoring / training step "
             "| scoring, fraction of the matmul roofline | bare step, same | peak memory / plan (GiB) | "
             "16-bit vs fp32 products |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['model']} | {r['device']} | {r['batch_size']} x {r['length']} | "
                     f"{r['tokens_per_s']['scoring']:.0f} | {cell(r['scoring_over_bare'])} | "
                     f"{cell(r['scoring_over_training_step'])} | {cell(r.get('scoring_fraction_of_roofline'))} of "
                     f"{r['matmul_roofline_tflops']:.0f} TFLOP/s | {cell(r.get('bare_fraction_of_roofline'))} | "
                     f"{r['peak_memory_gib']:.2f} / {r['plan_gib']:.2f} = {cell(r['peak_over_plan'])} | "
                     f"{cell(r.get('products_max_relative_difference'), '.1e')} |")
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in runs if r.get("command"))]
    write_section(path, "scale", "\n".join(lines))


if __name__ == "__main__":
    main()
