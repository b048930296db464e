"""Scoring cost: dean_hf's one-pass hooks vs a bare forward+backward, vs the reference code's per-layer schedule.

Prints ratios measured in one run (absolute seconds are not stable on a shared machine).

    python benchmarks/bench_scoring.py            # SmolLM2-135M-Instruct, reference data, n=16
    python benchmarks/bench_scoring.py --quick    # tiny random model, seconds (CI)
"""

from __future__ import annotations

import argparse

import torch

from _common import Timer, examples, fmt, load, peak_rss_mib
from dean_hf import score_importance
from dean_hf.scoring.engine import _collate, per_sample_loss
from dean_hf.targets import find_target_modules


def bare_loop(model, exs, batch_size: int) -> None:
    """(a) the floor: forward + backward over the same batches, every target weight's gradient, no hooks."""
    targets = {m.weight for m in find_target_modules(model, "all-linear").values()}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(p in targets)
    data = [(e["input_ids"], e["labels"]) for e in exs]
    try:
        for start in range(0, len(data), batch_size):
            ids, labels, mask = _collate(data, list(range(start, min(start + batch_size, len(data)))), 0,
                                         torch.device("cpu"))
            per_sample_loss(model(input_ids=ids, attention_mask=mask).logits, labels).sum().backward()
            model.zero_grad(set_to_none=True)
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)


def reference_schedule(model, exs, layers: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """(c) the reference code's schedule: a full pass over the data per layer, only that layer's weights with
    gradients (so each backward stops at that layer), one backward per sample, |grad| summed."""
    modules = dict(model.named_modules())
    flags = {p: p.requires_grad for p in model.parameters()}
    out = {}
    try:
        for names in layers.values():
            for p in model.parameters():
                p.requires_grad_(False)
            weights = {n: modules[n].weight for n in names}
            for w in weights.values():
                w.requires_grad_(True)
            acc = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
            for e in exs:
                loss = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss
                loss.backward()
                for n, w in weights.items():
                    acc[n] += w.grad.abs()
                    w.grad = None
            out.update({n: acc[n] * w.detach().abs() for n, w in weights.items()})
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model (seconds)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--reference-layers", type=int, default=1, help="decoder layers run with the reference "
                                                                        "schedule, then extrapolated")
    args = parser.parse_args()
    model, tokenizer = load(args.quick, args.model)
    model.eval()
    n = 6 if args.quick else args.n
    exs = examples(tokenizer, "privacy", n)
    fp32_mib = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    bare_loop(model, exs[:2], 1)  # warm-up
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with Timer() as floor:
        bare_loop(model, exs, 1)
    results = {}
    for bs in sizes:
        with Timer() as t:
            results[bs] = score_importance(model, exs, batch_size=bs, show_progress=False)
        print(f"(b) score_importance batch {bs}: {fmt(n / t.seconds)} samples/s; (b)/(a) = {fmt(t.seconds / floor.seconds)}")
        if bs == 1:
            b1 = t.seconds
        else:
            diff = max(((results[bs][k] - results[1][k]).abs().max() / results[1][k].abs().max()).item()
                       for k in results[1])
            print(f"    batch {bs} vs batch 1: max relative score difference {diff:.1e}; speed-up "
                  f"{fmt(b1 / t.seconds)}x")
    targets = list(results[1])
    per_layer = {}
    for name in targets:
        per_layer.setdefault(name.split(".mlp")[0].split(".self_attn")[0], []).append(name)
    # The last layers: their backward is the shortest, so the linear extrapolation is conservative.
    chosen_layers = {k: per_layer[k] for k in list(per_layer)[-args.reference_layers:]}
    chosen = [m for names in chosen_layers.values() for m in names]
    with Timer() as ref:
        ref_scores = reference_schedule(model, exs, chosen_layers)
    extrapolated = ref.seconds / len(chosen_layers) * len(per_layer)
    diff = max(((ref_scores[k] - results[1][k]).abs().max() / results[1][k].abs().max()).item() for k in chosen)
    print(f"(a) bare forward+backward, batch 1: {fmt(n / floor.seconds)} samples/s")
    print(f"(c) reference schedule on {len(chosen_layers)} of {len(per_layer)} layers ({len(chosen)} modules), "
          f"extrapolated linearly to all: (c)/(b) = {fmt(extrapolated / b1)} (extrapolated)")
    print(f"    reference vs dean_hf scores on those modules: max relative difference {diff:.1e}")
    print(f"peak RSS {fmt(peak_rss_mib())} MiB = {fmt(peak_rss_mib() / fp32_mib)} x the model's fp32 size "
          f"({fmt(fp32_mib)} MiB)")


if __name__ == "__main__":
    main()
