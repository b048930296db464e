"""Scoring at 7B scale: throughput against a bare forward+backward and the device's matrix-product roofline, and
peak memory against the plan (`dean plan`). A random-weight model built from a shipped config (nothing to
download), synthetic samples of one length. Prints ratios measured in one run: scoring with the fused per-sample
kernel (scoring/fused_abs_grad.py) and without it (the batched per-sample products), and a transformers training
step on the same batches.

    python benchmarks/bench_scale.py --device cuda                       # Llama-2-7B config, bf16, batch 4 x 512
    python benchmarks/bench_scale.py --device cuda --config ../tests/fixtures/configs/qwen2-7b.json
    python benchmarks/bench_scale.py --device cuda --kernel on           # only with the kernel (or: off)
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
from dean_hf.scoring.fused_abs_grad import fused_kernel_unavailable  # noqa: E402

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


# Device kernels by what they do in scoring, matched on their names (first match wins).
KINDS = [("fused |grad| kernel", ("_abs_grad_kernel",)),
         ("reduction to keep (topk, sort, nonzero)", ("topk", "sort", "radix", "nonzero", "cub::", "gather")),
         ("matrix products", ("gemm", "cutlass", "xmma", "nvjet", "wgmma", "bmm", "matmul", "sm90_", "sm80_", "aten::mm",
                              "addmm")),
         ("attention", ("flash", "fmha", "attention", "sdpa")),
         ("copies and casts", ("copy", "memcpy", "memset", "cast", "to_copy")),
         ("elementwise and reductions", ("elementwise", "reduce", "vectorized", "abs", "mul", "add"))]


def save(path, figures: dict) -> None:
    """Write the figures so far (with the command) to `path`, if given: each stage's results survive a timeout."""
    figures["command"] = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    if path:
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")


def profile(fn, device: torch.device) -> dict:
    """Device time of one call of `fn` by kind of kernel (and the ten largest kernels), from torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        fn()
        sync(device)
    rows = []
    for event in prof.key_averages():
        us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if us > 0 and (device.type != "cuda" or event.device_type.name == "CUDA"):
            rows.append((event.key, us / 1e3))
    total = sum(ms for _, ms in rows) or 1.0
    kinds: dict[str, float] = {}
    for name, ms in rows:
        lower = name.lower()
        kind = next((k for k, words in KINDS if any(w in lower for w in words)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
    top = sorted(rows, key=lambda r: -r[1])[:10]
    print(f"profile ({'device' if device.type == 'cuda' else 'CPU'} time {total:.1f} ms): " + "; ".join(
        f"{k} {ms / total:.1%}" for k, ms in sorted(kinds.items(), key=lambda kv: -kv[1])))
    for name, ms in top:
        print(f"    {ms:9.2f} ms  {ms / total:6.1%}  {name[:110]}")
    return {"total_ms": total, "by_kind_ms": kinds, "top": [{"name": n, "ms": ms} for n, ms in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIGS / "llama-2-7b.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--n", type=int, default=32, help="samples")
    parser.add_argument("--quick", action="store_true", help="a scaled-down config on the CPU (CI smoke)")
    parser.add_argument("--kernel", choices=["both", "on", "off"], default="both",
                        help="time scoring with the fused kernel, without it (the batched products), or both; the "
                             "kernel only where it runs (CUDA, triton)")
    parser.add_argument("--skip-checks", action="store_true", help="skip the equality checks (kernel vs products, "
                                                                    "16-bit vs fp32 products): dense 7B scores are "
                                                                    "26 GB each on the host")
    parser.add_argument("--profile", action="store_true", help="also profile one scoring run per mode (torch "
                                                                "profiler): where the device time goes")
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

    why_not = fused_kernel_unavailable(device, dtype, allow_interpreter=False)
    modes = [m for m in (("on", "off") if args.kernel == "both" else (args.kernel,)) if m == "off" or why_not is None]
    if why_not is not None and args.kernel != "off":
        print(f"fused kernel not timed: {why_not}")
    if not modes:
        raise SystemExit("--kernel on, but the fused kernel cannot run here")
    one = [{"input_ids": i, "labels": l} for i, l in data[: args.batch_size]]
    exs = [{"input_ids": i, "labels": l} for i, l in data]

    def score(examples, mode, **kwargs):
        return score_importance(model, examples, batch_size=args.batch_size, fused_kernel=mode, show_progress=False,
                                **kwargs)

    bare_step(model, data[: args.batch_size], args.batch_size, device, hf_loss=False)  # warm-up (and compiling)
    for mode in modes:
        score(one, mode)
    roofline = matmul_tflops(device, dtype)
    t_hf = timed(lambda: bare_step(model, data, args.batch_size, device, hf_loss=True), device)
    t_floor = timed(lambda: bare_step(model, data, args.batch_size, device, hf_loss=False), device)
    t_score = {mode: timed(lambda: score(exs, mode), device) for mode in modes}
    # The kernel does the multiply-adds of the products (one weight-gradient product per sample), which the
    # counter counts; it cannot count a Triton kernel.
    flops_score = count_flops(lambda: score(one, "off"))
    flops_floor = count_flops(lambda: bare_step(model, data[: args.batch_size], args.batch_size, device,
                                                hf_loss=False))
    batches = -(-args.n // args.batch_size)
    response = args.length - args.length // 4
    figures = {
        "model": name, "device": device_name, "dtype": args.dtype, "parameters": params, "samples": args.n,
        "length": args.length, "batch_size": args.batch_size,
        "kernel_not_timed": why_not if "on" not in modes else None,
        "tokens_per_s": {"bare_fused_loss": tokens / t_floor, "training_step_hf_loss": tokens / t_hf},
        "matmul_roofline_tflops": roofline, "bare_tflops": flops_floor * batches / t_floor / 1e12,
        "scoring_flops_over_bare_flops": flops_score / flops_floor,
    }
    figures["bare_fraction_of_roofline"] = figures["bare_tflops"] / roofline
    for mode in modes:
        key = "kernel" if mode == "on" else "products"
        _, peak = measure_peak(lambda: score(one, mode), device)
        plan = estimate_memory(config, dtype=args.dtype, batch_size=args.batch_size, max_length=args.length,
                               response_tokens=response, fused_kernel=mode == "on")
        tflops = flops_score * batches / t_score[mode] / 1e12
        figures[key] = {"tokens_per_s": tokens / t_score[mode], "over_bare": t_score[mode] / t_floor,
                        "over_training_step": t_score[mode] / t_hf, "tflops": tflops,
                        "fraction_of_roofline": tflops / roofline, "peak_memory_gib": peak / GIB,
                        "plan_gib": plan.total("scoring_peak") / GIB,
                        "peak_over_plan": peak / plan.total("scoring_peak")}
    save(args.json, figures)  # the timings are kept even if a check below runs out of time
    if "on" in modes and "off" in modes and not args.skip_checks:  # the same scores: the kernel's sums against the batched products'
        fast, slow = score(one, "on", keep=1.0), score(one, "off", keep=1.0)
        figures["kernel_vs_products_max_relative_difference"] = max(
            ((fast[n] - slow[n]).abs().max() / slow[n].abs().max()).item() for n in slow)
        print(f"fused kernel vs batched products: max relative score difference "
              f"{figures['kernel_vs_products_max_relative_difference']:.1e}")
        del fast, slow
    if device.type == "cuda" and dtype != torch.float32 and "off" in modes and not args.skip_checks:  # 16-bit, fp32 out
        import dean_hf.scoring.scorers as scorers

        fast = score(one, "off", keep=1.0)
        real = scorers._fp32_product
        scorers._fp32_product = lambda x: torch.bmm
        try:
            slow = score(one, "off", keep=1.0)
        finally:
            scorers._fp32_product = real
        figures["products_max_relative_difference"] = max(
            ((fast[n] - slow[n]).abs().max() / slow[n].abs().max()).item() for n in fast)
        print(f"16-bit products with fp32 output vs fp32 products: max relative score difference "
              f"{figures['products_max_relative_difference']:.1e}")
        del fast, slow
    print(f"tokens/s: bare forward+backward (same loss) {tokens / t_floor:.0f}, training step (HF loss) "
          f"{tokens / t_hf:.0f}; matrix-product roofline {roofline:.3g} TFLOP/s, the bare step runs "
          f"{figures['bare_tflops']:.3g} ({figures['bare_fraction_of_roofline']:.2f} of it); scoring counts "
          f"{flops_score / flops_floor:.2f}x the bare step's FLOPs")
    for key, label in (("kernel", "with the fused kernel"), ("products", "with the batched products")):
        if key in figures:
            f = figures[key]
            print(f"scoring {label}: {f['tokens_per_s']:.0f} tokens/s; / bare = {f['over_bare']:.2f}; / training "
                  f"step = {f['over_training_step']:.2f}; {f['tflops']:.3g} TFLOP/s = {f['fraction_of_roofline']:.2f} "
                  f"of the roofline; peak memory {f['peak_memory_gib']:.2f} GiB, plan {f['plan_gib']:.2f} GiB: "
                  f"measured / plan = {f['peak_over_plan']:.2f}")
    if args.profile:  # four batches (the reduction to keep, once per run, weighs more here than in a whole run)
        few = exs[: 4 * args.batch_size]
        figures["profile"] = {"batches": -(-len(few) // args.batch_size)}
        for mode in modes:
            figures["profile"]["kernel" if mode == "on" else "products"] = profile(lambda: score(few, mode), device)
            save(args.json, figures)
    save(args.json, figures)
    if args.results:
        write_results(args.results, [figures])


def _modes(run: dict) -> dict[str, dict]:
    """A run's per-mode figures ('kernel', 'products'); runs saved before the kernel had the products only."""
    if "products" in run or "kernel" in run:
        return {k: run[k] for k in ("kernel", "products") if k in run}
    return {"products": {"tokens_per_s": run["tokens_per_s"]["scoring"], "over_bare": run["scoring_over_bare"],
                         "over_training_step": run["scoring_over_training_step"],
                         "fraction_of_roofline": run.get("scoring_fraction_of_roofline"),
                         "peak_memory_gib": run["peak_memory_gib"], "plan_gib": run["plan_gib"],
                         "peak_over_plan": run["peak_over_plan"]}}


def write_results(path: str, runs: list[dict]) -> None:
    """The scale section of RESULTS.md: one row per run (model, device) and scoring mode, from the figures the
    runs printed."""
    from _common import write_section

    def cell(value, spec=".2f"):
        return "n/a" if value is None or value != value else format(value, spec)

    lines = ["## Scale: 7B-class models on a GPU (`bench_scale.py`)", "",
             "Random weights from the shipped configs, bf16, synthetic samples of one length, a quarter of each a "
             "prompt. Ratios from one run; the bare step is a forward+backward over the same batches with every "
             "target weight's gradient (dean_hf's loss), the training step the same with transformers' loss "
             "(`model(..., labels=...)`). Scoring runs with the fused per-sample kernel (`fused_kernel='on'`) or "
             "the batched per-sample products (`'off'`); runs without a kernel row predate it.", "",
             "| model | device | batch x tokens | scoring | tokens/s | / bare step | / training step "
             "| fraction of the matmul roofline | bare step, same | peak memory / plan (GiB) | "
             "kernel vs products | 16-bit vs fp32 products |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for mode, f in _modes(r).items():
            lines.append(f"| {r['model']} | {r['device']} | {r['batch_size']} x {r['length']} | "
                         f"{'fused kernel' if mode == 'kernel' else 'batched products'} | {f['tokens_per_s']:.0f} | "
                         f"{cell(f['over_bare'])} | {cell(f['over_training_step'])} | "
                         f"{cell(f.get('fraction_of_roofline'))} of {r['matmul_roofline_tflops']:.0f} TFLOP/s | "
                         f"{cell(r.get('bare_fraction_of_roofline'))} | {f['peak_memory_gib']:.2f} / "
                         f"{f['plan_gib']:.2f} = {cell(f['peak_over_plan'])} | "
                         f"{cell(r.get('kernel_vs_products_max_relative_difference'), '.1e')} | "
                         f"{cell(r.get('products_max_relative_difference'), '.1e')} |")
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in runs if r.get("command"))]
    write_section(path, "scale", "\n".join(lines))


if __name__ == "__main__":
    main()
