"""Peak memory of a three-data-set scoring run, relative to the model's fp32 size, and the cost of the
low-memory path (`modules_per_pass`). Each configuration runs in a fresh process so its peak RSS is its own.
A third run counts tensor memory alone (torch's memory profiler): its peak against one data set's accumulators
plus the model (the three sets are scored one after another, each reduced to its top `keep` on the CPU), the
sparse score files against dense ones, and the memory plan (`dean plan`) against the measured peak.

    python benchmarks/bench_memory.py                     # SmolLM2-135M-Instruct, n=8 per data set
    python benchmarks/bench_memory.py --dtype bfloat16    # the same, scored in bfloat16
    python benchmarks/bench_memory.py --quick             # tiny random model (CI)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def child(quick: bool, n: int, modules_per_pass: int | None, dtype: str) -> None:
    from _common import data_source, load_model, load_tokenizer, peak_rss_mib
    from dean_hf.config import DeanConfig
    from dean_hf.data import build_examples, load_records
    from dean_hf.pipeline import score_datasets_cached
    from dean_hf.scoring import score_importance

    # The runtime first (Python, torch, transformers, datasets, the tokenizer and the drawn data), then the model.
    tokenizer = load_tokenizer(quick)
    records = {name: load_records(data_source(name), n=n, seed=0) for name in ("fairness", "privacy", "general")}
    runtime = current_rss_mib()
    model = load_model(quick, dtype=dtype)
    fp32_mib = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    for p in model.parameters():  # make every weight resident (weights load memory-mapped)
        float(p.detach().sum())
    with_model = current_rss_mib()
    config = DeanConfig(num_samples=n, max_length=256)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if modules_per_pass is None:
            score_datasets_cached(model, tokenizer, records, config, tmp, show_progress=False)
        else:  # the low-memory path, one data set after another
            for name, drawn in records.items():
                ex = build_examples(drawn, tokenizer, max_length=256)
                score_importance(model, ex, modules_per_pass=modules_per_pass, show_progress=False).save(
                    f"{tmp}/{name}.safetensors")
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib(), "runtime_mib": runtime,
                      "with_model_mib": with_model, "fp32_mib": fp32_mib}))


def tensors_child(quick: bool, n: int, dtype: str) -> None:
    import math
    from pathlib import Path

    from _common import data_source, load_model, load_tokenizer
    from dean_hf.config import DeanConfig
    from dean_hf.data import build_examples, load_records
    from dean_hf.pipeline import score_datasets_cached
    from dean_hf.plan import estimate_memory, measure_peak
    from dean_hf.targets import find_target_modules

    tokenizer = load_tokenizer(quick)
    records = {name: load_records(data_source(name), n=n, seed=0) for name in ("fairness", "privacy", "general")}
    model = load_model(quick, dtype=dtype)
    config = DeanConfig(num_samples=n, max_length=256)
    targets = find_target_modules(model, config.target_modules)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    one_set = sum(4 * m.weight.numel() for m in targets.values())
    examples = [build_examples(r, tokenizer, max_length=256) for r in records.values()]
    longest = max(len(e["input_ids"]) for ex in examples for e in ex)
    response = max(sum(x != -100 for x in e["labels"]) for ex in examples for e in ex)
    with tempfile.TemporaryDirectory() as tmp:
        _, peak = measure_peak(lambda: score_datasets_cached(model, tokenizer, records, config, tmp,
                                                             show_progress=False))
        sparse = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
    dense = 3 * sum(4 * math.prod(m.weight.shape) for m in targets.values())
    plan = estimate_memory(model.config, dtype=dtype, batch_size=config.batch_size, max_length=longest,
                           response_tokens=response)
    print(json.dumps({"peak": peak, "weights": weights, "one_set": one_set, "sparse_bytes": sparse,
                      "dense_bytes": dense, "plan": plan.total("scoring_peak")}))


def run(quick: bool, n: int, modules_per_pass: int | None, dtype: str, tensors: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--dtype", dtype] + (["--quick"] if quick else [])
    cmd += ["--tensors"] if tensors else []
    if modules_per_pass:
        cmd += ["--modules-per-pass", str(modules_per_pass)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--modules-per-pass", type=int, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tensors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.tensors:
            tensors_child(args.quick, args.n, args.dtype)
        else:
            child(args.quick, args.n, args.modules_per_pass, args.dtype)
        return
    n = 2 if args.quick else args.n
    full = run(args.quick, n, None, args.dtype)
    group = args.modules_per_pass or (3 if args.quick else 70)
    low = run(args.quick, n, group, args.dtype)
    print(f"model in {args.dtype}; ratios are to the model's fp32 size ({full['fp32_mib']:.2f} MiB)")
    for label, r in (("one pass (default)", full), (f"low-memory path, {group} modules per pass", low)):
        x = r["fp32_mib"]
        print(f"{label}: peak RSS {r['peak_mib']:.0f} MiB = {r['peak_mib'] / x:.2f} x; the runtime before the model "
              f"(Python, torch, transformers, datasets, tokenizer, data) {r['runtime_mib'] / x:.2f} x; "
              f"runtime + model {r['with_model_mib'] / x:.2f} x; peak above the runtime "
              f"{(r['peak_mib'] - r['runtime_mib']) / x:.2f} x")
    print(f"low-memory path time / one pass: {low['seconds'] / full['seconds']:.2f}")
    t = run(args.quick, n, None, args.dtype, tensors=True)
    print(f"tensor memory of the three-data-set run: peak {t['peak'] / 2**20:.0f} MiB = "
          f"{t['peak'] / (t['weights'] + t['one_set']):.2f} x (model + one set of fp32 accumulators, "
          f"{(t['weights'] + t['one_set']) / 2**20:.0f} MiB)")
    print(f"sparse score files (keep=1e-2): {t['sparse_bytes'] / 2**20:.1f} MiB, dense ones would be "
          f"{t['dense_bytes'] / 2**20:.0f} MiB: {t['dense_bytes'] / t['sparse_bytes']:.0f}x smaller")
    print(f"memory plan {t['plan'] / 2**20:.0f} MiB vs measured peak: plan / measured = {t['plan'] / t['peak']:.2f}")


if __name__ == "__main__":
    main()
