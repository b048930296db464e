"""Scoring cost: dean_hf's one-pass hooks vs a bare forward+backward, vs the reference code's per-layer schedule.

Prints ratios measured in one run (absolute seconds are not stable on a shared machine).

    python benchmarks/bench_scoring.py            # SmolLM2-135M-Instruct, reference data, n=16
    python benchmarks/bench_scoring.py --quick    # tiny random model, seconds (CI)
    python benchmarks/bench_scoring.py --arch qwen2-7b --device cuda --dtype bfloat16 --n 64
                                                  # a 7B-class model from its config, random weights
"""

from __future__ import annotations

import argparse

import torch

from _common import ARCHS, Timer, bare_step, examples, fmt, load, load_arch, peak_rss_mib, synthetic_examples
from dean_hf import score_importance
from dean_hf.scoring.engine import _check_examples
from dean_hf.scoring.scores import DEFAULT_KEEP
from dean_hf.targets import find_target_modules


def reference_schedule(model, exs, layers: dict[str, list[str]], device) -> dict[str, torch.Tensor]:
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
                ids, labels = (torch.tensor([e[k]], device=device) for k in ("input_ids", "labels"))
                model(input_ids=ids, labels=labels).loss.backward()
                for n, w in weights.items():
                    acc[n] += w.grad.float().abs()
                    w.grad = None
            out.update({n: acc[n] * w.detach().float().abs() for n, w in weights.items()})
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
    return out


def max_relative_difference(a, b, names) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model (seconds); with --arch, a shrunken one")
    parser.add_argument("--model", default="default", help="a model name or folder (ignored with --arch)")
    parser.add_argument("--arch", choices=sorted(ARCHS), default=None,
                        help="build this architecture from its config with random weights; synthetic data")
    parser.add_argument("--layers", type=int, default=None, help="with --arch: this many decoder layers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--reference-layers", type=int, default=1, help="decoder layers run with the reference "
                                                                        "schedule, then extrapolated")
    args = parser.parse_args()
    n = 6 if args.quick else args.n
    if args.arch:
        model = load_arch(args.arch, dtype=args.dtype, device=args.device, layers=args.layers, quick=args.quick)
        exs = synthetic_examples(model.config.vocab_size, n, min_len=16 if args.quick else 64,
                                 max_len=64 if args.quick else 256)
    else:
        model, tokenizer = load(args.quick, args.model)
        model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
        exs = examples(tokenizer, "privacy", n)
    device = torch.device(args.device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.arch or args.model}{' (quick)' if args.quick else ''}, {params / 1e6:.1f}M parameters, "
          f"{args.dtype} on {device}; {n} samples of {min(len(e['input_ids']) for e in exs)}-"
          f"{max(len(e['input_ids']) for e in exs)} tokens")
    data = _check_examples(exs)
    bare_step(model, data[:2], 1, device, hf_loss=False)  # warm-up
    score_importance(model, exs[:2], show_progress=False)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    names = list(find_target_modules(model, "all-linear"))
    per_layer: dict[str, list[str]] = {}
    for name in names:
        per_layer.setdefault(name.split(".mlp")[0].split(".self_attn")[0], []).append(name)
    # The last layers: their backward is the shortest, so the linear extrapolation is conservative.
    chosen_layers = {k: per_layer[k] for k in list(per_layer)[-args.reference_layers:]}
    chosen = [m for names_ in chosen_layers.values() for m in names_]
    kept = chosen + [m for m in per_layer[next(iter(per_layer))] if m not in chosen]
    results, seconds = {}, {}
    for bs in sizes:
        with Timer(device) as hf_step:
            bare_step(model, data, bs, device, hf_loss=True)
        with Timer(device) as floor:
            bare_step(model, data, bs, device, hf_loss=False)
        with Timer(device) as t:
            scores = score_importance(model, exs, batch_size=bs, keep=1.0, show_progress=False)  # dense: compared
        results[bs] = {k: scores[k] for k in kept}  # the rest is freed now (a 7B model's scores are 26 GB)
        del scores
        seconds[bs] = t.seconds
        print(f"batch {bs}: (b) score_importance {fmt(n / t.seconds)} samples/s, (a) bare forward+backward "
              f"{fmt(n / floor.seconds)} samples/s; (b)/(a) = {fmt(t.seconds / floor.seconds)}; (b) / a plain "
              f"training step (transformers' loss, same batches) = {fmt(t.seconds / hf_step.seconds)}; page faults "
              f"{t.faults} / {floor.faults}, system CPU {fmt(t.sys_seconds)} s / {fmt(floor.sys_seconds)} s")
    first = sizes[0]
    with Timer(device) as hf_step:
        bare_step(model, data, first, device, hf_loss=True)
    with Timer(device) as sparse:
        score_importance(model, exs, batch_size=first, show_progress=False)  # the default keep: reduced per matrix
    with Timer(device) as dense:
        score_importance(model, exs, batch_size=first, keep=1.0, show_progress=False)
    print(f"batch {first}, scoring / a plain training step: default keep ({DEFAULT_KEEP:g}) "
          f"{fmt(sparse.seconds / hf_step.seconds)}, keep=1 (dense, no reduction) "
          f"{fmt(dense.seconds / hf_step.seconds)}")
    for bs in sizes[1:]:
        print(f"    batch {bs} vs batch {first}: samples/s x{fmt(seconds[first] / seconds[bs])}; max relative score "
              f"difference {max_relative_difference(results[bs], results[first], kept):.1e}")
    with Timer(device) as ref:
        ref_scores = reference_schedule(model, exs, chosen_layers, device)
    extrapolated = ref.seconds / len(chosen_layers) * len(per_layer)
    print(f"(c) reference schedule on {len(chosen_layers)} of {len(per_layer)} layers ({len(chosen)} modules), "
          f"extrapolated linearly to all: (c)/(b) = {fmt(extrapolated / seconds[first])} (extrapolated, "
          f"against batch {first})")
    print(f"    reference vs dean_hf scores on those modules: max relative difference "
          f"{max_relative_difference(ref_scores, results[first], chosen):.1e}")
    if device.type == "cuda":
        print(f"peak GPU memory {fmt(torch.cuda.max_memory_allocated(device) / 2**30)} GiB; "
              f"{torch.cuda.get_device_name(device)}")
    fp32_mib = params * 4 / 2**20
    peak = peak_rss_mib()
    print(f"peak RSS of this process (every batch size, the bare loop's weight gradients included; see "
          f"bench_memory.py for the memory target) {fmt(peak)} MiB = {fmt(peak / fp32_mib)} x the model's fp32 "
          f"size ({fmt(fp32_mib)} MiB)")


if __name__ == "__main__":
    main()
