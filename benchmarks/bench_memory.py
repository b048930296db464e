"""Peak memory of a three-data-set scoring run, relative to the model's fp32 size, and the cost of the
low-memory path (`modules_per_pass`). Each configuration runs in a fresh process so its peak RSS is its own.

    python benchmarks/bench_memory.py            # SmolLM2-135M-Instruct, n=8 per data set
    python benchmarks/bench_memory.py --quick    # tiny random model (CI)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from _common import fmt, load, peak_rss_mib


def child(quick: bool, n: int, modules_per_pass: int | None) -> None:
    from dean_hf.config import DeanConfig
    from dean_hf.data import load_records
    from dean_hf.pipeline import score_datasets_cached

    from _common import data_source

    model, tokenizer = load(quick)
    fp32_mib = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    after_load = peak_rss_mib()
    config = DeanConfig(num_samples=n, max_length=256)
    records = {name: load_records(data_source(name), n=n, seed=0) for name in ("fairness", "privacy", "general")}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if modules_per_pass is None:
            score_datasets_cached(model, tokenizer, records, config, tmp, show_progress=False)
        else:  # the low-memory path, one data set after another
            from dean_hf.data import build_examples
            from dean_hf.scoring import score_importance

            for name, drawn in records.items():
                ex = build_examples(drawn, tokenizer, max_length=256)
                score_importance(model, ex, modules_per_pass=modules_per_pass, show_progress=False).save(
                    f"{tmp}/{name}.safetensors")
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib(), "after_load_mib": after_load,
                      "fp32_mib": fp32_mib}))


def run(quick: bool, n: int, modules_per_pass: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--n", str(n)] + (["--quick"] if quick else [])
    if modules_per_pass:
        cmd += ["--modules-per-pass", str(modules_per_pass)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--modules-per-pass", type=int, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.quick, args.n, args.modules_per_pass)
        return
    n = 2 if args.quick else args.n
    full = run(args.quick, n, None)
    group = args.modules_per_pass or (3 if args.quick else 70)
    low = run(args.quick, n, group)
    for label, r in (("one pass (default)", full), (f"low-memory path, {group} modules per pass", low)):
        print(f"{label}: peak RSS {fmt(r['peak_mib'])} MiB = {fmt(r['peak_mib'] / r['fp32_mib'])} x the fp32 model "
              f"({fmt(r['fp32_mib'])} MiB); after loading the model alone: "
              f"{fmt(r['after_load_mib'] / r['fp32_mib'])} x")
    print(f"low-memory path time / one pass: {fmt(low['seconds'] / full['seconds'])}")


if __name__ == "__main__":
    main()
