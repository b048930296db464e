"""`dean plan`: the memory needed to score and apply, per device, from a model's config alone."""

from __future__ import annotations

from ._args import positive, target_modules


def cmd_plan(args) -> None:
    from ..plan import estimate_memory, parse_max_memory

    max_memory = parse_max_memory(args.max_memory) if args.max_memory else None
    plan = estimate_memory(args.model, dtype=args.dtype, batch_size=args.batch_size, max_length=args.max_length,
                           response_tokens=args.response_tokens, target_modules=target_modules(args.target_modules),
                           max_memory=max_memory,
                           fused_kernel=args.fused_kernel)
    print(plan.to_text())
    if args.json:
        import json

        from ..io import atomic_write_json

        atomic_write_json(args.json, json.loads(json.dumps(plan.to_dict(), default=str)))


def register(sub) -> None:
    """Add the `plan` subcommand to `sub`."""
    p = sub.add_parser("plan", help="memory needed to score and apply, per device, from a model's config alone")
    p.add_argument("model", help="a config.json, a model folder, 'default', or a Hub id (online)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--batch-size", type=positive, default=1, help="samples per forward/backward pass")
    p.add_argument("--max-length", type=positive, default=512, help="tokens per sample")
    p.add_argument("--response-tokens", type=positive, default=None,
                   help="positions the loss reads per sample (default: all of --max-length)")
    p.add_argument("--target-modules", default="all-linear", help="modules scored (as dean score)")
    p.add_argument("--max-memory", default=None, help="devices and their memory, e.g. 0=80GiB,1=80GiB,cpu=200GiB: "
                                                      "suggests a device_map and layers per pass")
    p.add_argument("--fused-kernel", action="store_true", help="plan for the fused per-sample kernel (scoring on "
                                                               "CUDA with triton): no per-sample temporaries")
    p.add_argument("--json", default=None, help="also write the plan as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no library logging below errors")
    p.set_defaults(func=cmd_plan)
