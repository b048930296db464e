"""`dean score`: score a model's weights on named data sets (cached)."""

from __future__ import annotations

from pathlib import Path

from ._args import (
    DATA_HELP,
    fraction,
    layers_per_pass,
    load_model_and_tokenizer,
    model_options,
    named_sources,
    positive,
    target_modules,
)


def cmd_score(args) -> None:
    from ..config import DeanConfig
    from ..data import load_records
    from ..io import check_writable
    from ..pipeline import check_score_files, score_datasets_cached

    check_writable(args.out, "--out")
    config = DeanConfig(num_samples=args.n, seed=args.seed, max_length=args.max_length, batch_size=args.batch_size,
                        keep=args.keep, layers_per_pass=layers_per_pass(args.layers_per_pass),
                        fused_kernel=args.fused_kernel,
                        scorer=args.scorer, target_modules=target_modules(args.target_modules),
                        chat_template=not args.no_chat_template)
    if config.fused_kernel == "on":  # no triton, or no GPU it runs on: said before the data and the model are read
        from ..scoring.engine import check_fused_kernel_on

        check_fused_kernel_on(config.scorer, _device_of(args.device_map))
    load_kwargs = {"split": args.split, "prompt_column": args.prompt_column, "response_column": args.response_column}
    # Every data set is read (and checked) before the model is loaded.
    records = {name: load_records(src, n=config.num_samples, seed=config.seed, **load_kwargs)
               for name, src in named_sources(args.data).items()}
    check_score_files(args.out, list(records))
    model, tokenizer = load_model_and_tokenizer(args)
    reused: list[str] = []
    scores = score_datasets_cached(model, tokenizer, records, config, args.out, show_progress=not args.quiet,
                                   reused=reused)
    for name, s in scores.items():
        how = "reused (same model, data and options)" if name in reused else "->"
        print(f"{name}: {len(s)} modules, {s.metadata['num_samples']} samples, {s.metadata['num_tokens']} response "
              f"tokens {how} {Path(args.out) / (name + '.safetensors')}")


def _device_of(device_map):
    """The one device a --device-map places the model on (the CPU by default), or None for a strategy ('auto',
    ...) that spreads it over the devices it finds."""
    import torch

    from ..models import DEVICE_MAP_STRATEGIES

    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return None if device_map in DEVICE_MAP_STRATEGIES else torch.device(device_map)


def register(sub) -> None:
    """Add the `score` subcommand to `sub`."""
    p = sub.add_parser("score", help="score a model's weights on named data sets (cached)")
    model_options(p)
    p.add_argument("--data", action="append", required=True, help=DATA_HELP)
    p.add_argument("--n", type=positive, default=128, help="samples drawn from each data set (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample draw")
    p.add_argument("--out", default="scores", help="output folder: one NAME.safetensors per data set")
    p.add_argument("--split", default="train", help="split of a Hub data set")
    p.add_argument("--prompt-column", default="prompt", help="column holding the prompts")
    p.add_argument("--response-column", default="response", help="column holding the responses")
    p.add_argument("--target-modules", default="all-linear", help="'all-linear', 'mlp', 'self_attn', a comma list of "
                                                                   "name suffixes, or a regex")
    p.add_argument("--scorer", default="snip", help="importance scorer: snip or wanda")
    p.add_argument("--batch-size", type=positive, default=1, help="samples per forward/backward pass")
    p.add_argument("--layers-per-pass", default="auto", help="decoder layers scored per pass: 'auto' (from the "
                                                              "memory plan and the GPUs' free memory), or a number")
    p.add_argument("--fused-kernel", choices=["auto", "on", "off"], default="auto",
                   help="how |per-sample gradients| are summed: 'auto' (the fused Triton kernel on CUDA GPUs of "
                        "compute capability 8.0+, the batched products elsewhere), 'on' (always; an error where it "
                        "cannot run), 'off' (never); the scores are the same")
    p.add_argument("--keep", type=fraction, default=1e-2, help="fraction of each matrix's scores kept (their top "
                                                               "entries): any q, p up to it select exactly; 1 keeps "
                                                               "dense scores (default 1e-2)")
    p.add_argument("--max-length", type=positive, default=512, help="tokens kept per example")
    p.add_argument("--no-chat-template", action="store_true", help="concatenate prompt and response as plain text")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_score)
