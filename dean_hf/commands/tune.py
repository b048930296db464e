"""`dean tune`: DEAN settings searched on development questions, the best confirmed on test ones."""

from __future__ import annotations

from pathlib import Path

from ..errors import DeanError
from ._args import (
    auto_or_positive,
    floats,
    judge_options,
    load_judge,
    load_model_and_tokenizer,
    model_options,
    named_sources,
    nonnegative_float,
    positive,
)


def _read_trials(path: str) -> list[dict]:
    from ..io import parse_json

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DeanError(f"--resume {path!r} cannot be read ({err.strerror}).") from None
    return [parse_json(line, f"--resume {path!r}") for line in lines if line.strip()]


def cmd_tune(args) -> None:
    from ..data import load_records
    from ..eval.generate import generation_batch_size
    from ..experiments.tune import Objective, TuneSpace, tune
    from ..io import check_writable

    check_writable(args.out, "--out")
    sources = named_sources(args.data)
    questions = {n: load_records(s, prompt_column=args.prompt_column, response_column=None,
                                 show_progress=not args.quiet)["prompt"]
                 for n, s in named_sources(args.questions).items()}
    space = TuneSpace(qs=floats(args.qs, "--qs"), ps=floats(args.ps, "--ps") if args.ps else None,
                      module_sets=[m for m in args.modules.split(",") if m],
                      variants=[v for v in args.variants.split(",") if v], scales=floats(args.scales, "--scales"),
                      scorers=[x for x in args.scorers.split(",") if x],
                      ns=[positive(x) for x in args.ns.split(",") if x])
    settings = space.settings()  # the grid is checked before the model is loaded
    judge = load_judge(args)
    model, tokenizer = load_model_and_tokenizer(args)
    batch = generation_batch_size(model, args.max_new_tokens) if args.batch_size == "auto" else \
        args.batch_size
    dev_size = args.dev_size
    print(f"{len(settings)} trials on {dev_size} development questions per dimension")
    data = tune(model, tokenizer, sources, questions, args.out, space=space,
                objective=Objective(max_perplexity_increase=args.max_perplexity_increase), dev_size=dev_size,
                seed=args.seed, judge=judge, max_new_tokens=args.max_new_tokens, batch_size=batch,
                chat_template=args.prompt_format == "chat", show_progress=not args.quiet,
                resume=_read_trials(args.resume) if args.resume else None)
    c = data["confirmation"]
    print(f"chosen on the development questions: {data['chosen']}")
    if c:
        for d in ("fairness", "privacy"):
            paired = c[d]["paired"]
            print(f"  test {d}: {paired['before']:.3f} -> {paired['after']:.3f}, change {paired['difference']:+.3f} "
                  f"[{paired['ci95'][0]:+.2f}, {paired['ci95'][1]:+.2f}], +{paired['improved']}/-{paired['worsened']} "
                  f"flips, Holm p = {paired['p_adjusted']:.3g}: {paired['verdict']}")
        print(f"verdict: {c['verdict']}")
    print(f"report -> {Path(args.out) / 'tune.md'}")


def register(sub) -> None:
    """Add the `tune` subcommand to `sub`."""
    p = sub.add_parser("tune", help="search DEAN settings on development questions, confirm the best on test ones")
    model_options(p)
    p.add_argument("--data", action="append", required=True, help="scoring data NAME=SOURCE: fairness, privacy, "
                                                                   "general (and unsafe_fairness, unsafe_privacy for "
                                                                   "the contrastive variant)")
    p.add_argument("--questions", action="append", required=True, help="DIMENSION=SOURCE of evaluation questions")
    p.add_argument("--prompt-column", default="prompt", help="column holding the questions")
    p.add_argument("--dev-size", default=150, type=positive,
                   help="development questions per dimension (the rest is the test part)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the scoring draws")
    p.add_argument("--qs", default="1e-4,1e-3,1e-2", help="q values tried")
    p.add_argument("--ps", default=None, help="p values tried (default: p = q)")
    p.add_argument("--modules", default="mlp,self_attn,all-linear", help="module sets tried")
    p.add_argument("--variants", default="zero", help="zero, scale, neuron, contrastive (comma list)")
    p.add_argument("--scales", default="0.5", help="factors tried by the scale variant")
    p.add_argument("--scorers", default="snip", help="scorers tried (snip, wanda)")
    p.add_argument("--ns", default="128", help="scoring samples per data set tried")
    p.add_argument("--max-perplexity-increase", type=nonnegative_float, default=0.03,
                   help="the objective's constraint")
    judge_options(p)
    p.add_argument("--max-new-tokens", type=positive, default=64, help="tokens generated per answer")
    p.add_argument("--batch-size", default="auto", type=auto_or_positive, help="generation batch: 'auto' or a number")
    p.add_argument("--prompt-format", choices=["chat", "raw"], default="chat", help="chat template or bare question")
    p.add_argument("--out", default="tune_report", help="report folder")
    p.add_argument("--resume", default=None, help="trials.jsonl of an interrupted search (same grid, split, seed): "
                                                  "measure only the missing settings, then confirm")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tune)
