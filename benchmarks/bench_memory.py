"""Peak memory of a three-data-set scoring run, relative to the model's fp32 size, and the cost of the
low-memory path (`modules_per_pass`). Each configuration runs in a fresh process so its peak RSS is its own.

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


def run(quick: bool, n: int, modules_per_pass: int | None, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--dtype", dtype] + (["--quick"] if quick else [])
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
    args = parser.parse_args()
    if args.child:
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


if __name__ == "__main__":
    main()
