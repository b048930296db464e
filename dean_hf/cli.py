"""The `dean` command line: each subcommand parses its options and calls one library function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import DeanError

DATA_HELP = ("NAME=SOURCE, repeatable. SOURCE is a CSV or JSONL file, a saved `datasets` folder or a Hub data set id "
             "with prompt/response columns; 'embedded:fairness' (privacy, general) names the data shipped with dean_hf.")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected a fraction in (0, 1], e.g. 5e-7") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]: it is the fraction of each weight matrix kept")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _named_sources(items: Sequence[str]) -> dict[str, str]:
    from .data import resolve_source

    out = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise DeanError(f"--data {item!r}: expected NAME=SOURCE, e.g. --data fairness=fair.csv")
        if name in out:
            raise DeanError(f"--data names {name!r} twice.")
        out[name] = str(resolve_source(source))
    return out


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct, embedded), a local folder or "
                                                       "a Hub model id")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto' (default: CPU)")
    p.add_argument("--revision", default=None, help="model revision (branch, tag or commit) of a Hub model")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code (off: safer)")


def _load(args):
    from .models import load_model, load_tokenizer

    return (load_model(args.model, dtype=args.dtype, device_map=args.device_map, revision=args.revision,
                       trust_remote_code=args.trust_remote_code),
            load_tokenizer(args.model, trust_remote_code=args.trust_remote_code, revision=args.revision))


def cmd_score(args) -> None:
    from .config import DeanConfig
    from .pipeline import check_score_files, score_datasets_cached

    from .data import load_records
    from .io import check_writable

    check_writable(args.out, "--out")
    config = DeanConfig(num_samples=args.n, seed=args.seed, max_length=args.max_length, batch_size=args.batch_size,
                        keep=args.keep, layers_per_pass=_layers(args.layers_per_pass),
                        scorer=args.scorer, target_modules=_targets(args.target_modules),
                        chat_template=not args.no_chat_template)
    load_kwargs = {"split": args.split, "prompt_column": args.prompt_column, "response_column": args.response_column}
    # Every data set is read (and checked) before the model is loaded.
    records = {name: load_records(src, n=config.num_samples, seed=config.seed, **load_kwargs)
               for name, src in _named_sources(args.data).items()}
    check_score_files(args.out, list(records))
    model, tokenizer = _load(args)
    reused: list[str] = []
    scores = score_datasets_cached(model, tokenizer, records, config, args.out, show_progress=not args.quiet,
                                   reused=reused)
    for name, s in scores.items():
        how = "reused (same model, data and options)" if name in reused else "->"
        print(f"{name}: {len(s)} modules, {s.metadata['num_samples']} samples, {s.metadata['num_tokens']} response "
              f"tokens {how} {Path(args.out) / (name + '.safetensors')}")


def _layers(text: str):
    if text == "auto":
        return "auto"
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise DeanError(f"--layers-per-pass {text!r}: expected 'auto' or a positive integer.") from None


def _targets(text: str):
    return text.split(",") if "," in text else text


def cmd_select(args) -> None:
    from .config import DeanConfig
    from .hub import fraction_text, save_artifact
    from .io import check_writable
    from .pipeline import mask_and_config
    from .scoring import ImportanceScores

    check_writable(args.out, "--out")
    folder = Path(args.scores)
    names = [n for n in args.targets.split(",") if n]
    load = lambda n: ImportanceScores.load(folder / f"{n}.safetensors", lazy=True)  # noqa: E731
    targets = {n: load(n) for n in names}
    general = load(args.general) if args.general else None
    config = DeanConfig(q=args.q, p=args.p, target_datasets=names, general_dataset=args.general or None,
                        legacy=args.legacy)
    mask, config = mask_and_config(targets, general, config, general_name=args.general or None)
    save_artifact(args.out, config, mask)
    print(f"masked {fraction_text(mask)} -> {args.out}")
    print("per layer: " + ", ".join(f"{k}: {v}" for k, v in sorted(mask.counts_per_layer().items(),
                                                                   key=lambda kv: (kv[0] is None, kv[0] or 0))))
    print("per module type: " + ", ".join(f"{k}: {v}" for k, v in sorted(mask.counts_per_kind().items())))


def cmd_apply(args) -> None:
    from .editor import DeanEditor
    from .hub import check_merged_target, render_card, save_merged
    from .models import resolve_model_path

    source = resolve_model_path(args.model)
    check_merged_target(args.out, source=source, overwrite=args.overwrite)  # before minutes of loading
    model, tokenizer = _load(args)
    editor = DeanEditor.from_pretrained(model, args.mask, check_base_model=not args.skip_base_model_check)
    config, mask = editor.dean_config, editor.masks[editor.active_adapter]
    card = render_card(config, mask, merged=True)  # rendered (and checked) before anything is written
    merged = editor.merge_and_unload()
    save_merged(merged, args.out, tokenizer=tokenizer, card=card, source=source, overwrite=args.overwrite)
    print(f"edited model ({mask.num_masked} weights zeroed) -> {args.out}")


def cmd_push(args) -> None:
    from .hub import load_artifact, push_artifact, upload

    if bool(args.mask) == bool(args.merged):
        raise DeanError("pass exactly one of --mask DIR (the mask artifact) or --merged DIR (an edited checkpoint).")
    if args.mask:
        config, mask = load_artifact(args.mask)
        url = push_artifact(args.repo, config, mask, private=args.private, token=args.token)
    else:
        folder = Path(args.merged)
        if not (folder / "config.json").is_file():
            raise DeanError(f"{str(folder)!r} is not a saved model folder (no config.json): make one with dean apply.")
        url = upload(folder, args.repo, commit_message="Upload DEAN-edited model", private=args.private,
                     token=args.token)
    print(f"pushed -> {url}")


def cmd_eval(args) -> None:
    import time

    from .data import load_records
    from .editor import DeanEditor
    from .eval import get_judge, judge_note
    from .eval.generate import generation_batch_size
    from .eval.report import write_report
    from .experiments import before_after, embedded_questions, measure, rate_text
    from .io import check_writable
    from .provenance import environment

    check_writable(args.out, "--out")
    eval_n = None if args.eval_n in (None, "all") else _positive(args.eval_n)
    questions = embedded_questions()
    if args.questions:  # every question file is read (and checked) before the model is loaded
        questions = {n: load_records(s, prompt_column=args.prompt_column, response_column=None,
                                     n=eval_n, seed=args.seed, show_progress=not args.quiet)["prompt"]
                     for n, s in _named_sources(args.questions).items()}
    elif eval_n:
        questions = {d: q[:eval_n] for d, q in questions.items()}
    judge = get_judge(args.judge)
    model, tokenizer = _load(args)
    batch = generation_batch_size(model, args.max_new_tokens) if args.batch_size == "auto" else \
        _positive(args.batch_size)
    chat = args.prompt_format == "chat"
    start = time.perf_counter()
    settings = {"questions": {d: len(q) for d, q in questions.items()}, "max_new_tokens": args.max_new_tokens,
                "generation_batch_size": batch, "prompt_format": args.prompt_format, "judge": judge.name,
                "environment": environment(model)}
    if args.mask:
        editor = DeanEditor.from_pretrained(model, args.mask)
        files = before_after(editor, tokenizer, questions, args.out, judge=judge, max_new_tokens=args.max_new_tokens,
                             batch_size=batch, show_progress=not args.quiet, chat_template=chat, extra=settings)
        _write_evaluation_into_card(args, editor, files, judge)
        _print_paired_summary(files)
    else:
        figures = measure(model, tokenizer, questions, judge=judge, max_new_tokens=args.max_new_tokens,
                          batch_size=batch, show_progress=not args.quiet, keep_answers=True, chat_template=chat)
        from .experiments import corrected_text

        rows = [[d, rate_text(figures[d]), corrected_text(figures[d]), figures[d]["unclear"]] for d in questions]
        files = write_report(args.out, "report", {"awareness": figures, **settings},
                             title=f"Awareness of {args.model}",
                             tables=[("Awareness", ["dimension", "judge's rate [95% CI]", "corrected [95% CI]",
                                                    "unclear"], rows)],
                             notes=[judge_note(judge), f"Perplexity on the embedded text: {figures['perplexity']:.2f}"])
        for row in rows:
            print(f"{row[0]}: {row[1]}; judge-corrected {row[2]}")
    seconds = time.perf_counter() - start
    total = sum(len(q) for q in questions.values()) * (2 if args.mask else 1)
    print(f"{total} answers in {seconds / 60:.1f} min ({seconds / max(1, total):.2f} s per answer, batch {batch})")
    print(f"report -> {files['markdown']}")


def _print_paired_summary(files) -> None:
    """One line per dimension: before -> after, the paired change with its interval, flips and McNemar p."""
    import json

    from .experiments import change_text, corrected_text, rate_text

    results = json.loads(Path(files["json"]).read_text())["results"]
    for dim, paired in results["paired"].items():
        before, after = results["before"]["awareness"][dim], results["after"]["awareness"][dim]
        line = f"{dim}: {rate_text(before)} -> {rate_text(after)}; change {change_text({'paired': paired})}"
        if "corrected" in before:
            line += f"; judge-corrected {corrected_text(before)} -> {corrected_text(after)}"
        print(line)


def _write_evaluation_into_card(args, editor, files, judge) -> None:
    """`dean eval --mask DIR`: the measured figures go into DIR's model card (Evaluation section and `model-index`
    metadata), when DIR is a local artifact whose card dean_hf wrote."""
    import json

    from .experiments.demo import card_evaluation
    from .hub import CARD_NAME, card_is_ours, render_card, write_card

    folder = Path(args.mask)
    if not folder.is_dir() or (folder / CARD_NAME).exists() and not card_is_ours(folder / CARD_NAME):
        return
    questions = ", ".join(f"{k}={v}" for k, v in _named_sources(args.questions).items()) or "embedded questions"
    evaluation, results = card_evaluation(json.loads(Path(files["json"]).read_text()), judge=judge,
                                          how=f"`dean eval` ({questions}; greedy decoding, {args.max_new_tokens} "
                                              f"new tokens, judge: {judge.name})")
    name = editor.active_adapter
    write_card(folder, render_card(editor.peft_config[name], editor.masks[name], evaluation=evaluation,
                                   eval_results=results))
    print(f"evaluation written into {folder / CARD_NAME}")


def cmd_plan(args) -> None:
    from .plan import estimate_memory

    max_memory = None
    if args.max_memory:
        max_memory = {}
        for item in args.max_memory.split(","):
            key, sep, size = item.partition("=")
            if not sep or not key or not size:
                raise DeanError(f"--max-memory {item!r}: expected DEVICE=SIZE pairs, e.g. 0=80GiB,1=80GiB,cpu=200GiB")
            max_memory[int(key) if key.isdigit() else key] = size
    plan = estimate_memory(args.model, dtype=args.dtype, batch_size=args.batch_size, max_length=args.max_length,
                           response_tokens=args.response_tokens, target_modules=_targets(args.target_modules),
                           max_memory=max_memory, fused_kernel=args.fused_kernel)
    print(plan.to_text())
    if args.json:
        import json

        from .io import atomic_write_json

        atomic_write_json(args.json, json.loads(json.dumps(plan.to_dict(), default=str)))


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise DeanError(f"{what} {text!r}: expected comma-separated numbers, e.g. 1e-4,1e-3") from None


def _read_trials(path: str) -> list[dict]:
    from .io import parse_json

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DeanError(f"--resume {path!r} cannot be read ({err.strerror}).") from None
    return [parse_json(line, f"--resume {path!r}") for line in lines if line.strip()]


def cmd_tune(args) -> None:
    from .data import load_records
    from .eval import get_judge
    from .eval.generate import generation_batch_size
    from .experiments.tune import Objective, TuneSpace, tune
    from .io import check_writable

    check_writable(args.out, "--out")
    sources = _named_sources(args.data)
    questions = {n: load_records(s, prompt_column=args.prompt_column, response_column=None,
                                 show_progress=not args.quiet)["prompt"]
                 for n, s in _named_sources(args.questions).items()}
    space = TuneSpace(qs=_floats(args.qs, "--qs"), ps=_floats(args.ps, "--ps") if args.ps else None,
                      module_sets=[m for m in args.modules.split(",") if m],
                      variants=[v for v in args.variants.split(",") if v], scales=_floats(args.scales, "--scales"),
                      scorers=[x for x in args.scorers.split(",") if x],
                      ns=[_positive(x) for x in args.ns.split(",") if x])
    settings = space.settings()  # the grid is checked before the model is loaded
    judge = get_judge(args.judge)
    model, tokenizer = _load(args)
    batch = generation_batch_size(model, args.max_new_tokens) if args.batch_size == "auto" else \
        _positive(args.batch_size)
    dev_size = _positive(args.dev_size)
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


def cmd_demo(args) -> None:
    from .experiments import run_demo

    files = run_demo(args.out, model_name=args.model, n=args.n, q=args.q, p=args.p, target_modules=args.target_modules,
                     max_new_tokens=args.max_new_tokens, show_progress=not args.quiet)
    print(f"run folder: {files['run']}")
    print(f"  report:   {files['markdown']} (and {files['json'].name})")
    print(f"  mask:     {files['mask']}")
    print(f"  scores:   {files['scores']}")
    print("  plots:    " + ", ".join(str(p) for p in files["plots"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dean", description="DEAN coupled-neuron editing for Hugging Face causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score a model's weights on named data sets (cached)")
    _model_options(p)
    p.add_argument("--data", action="append", required=True, help=DATA_HELP)
    p.add_argument("--n", type=_positive, default=128, help="samples drawn from each data set (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample draw")
    p.add_argument("--out", default="scores", help="output folder: one NAME.safetensors per data set")
    p.add_argument("--split", default="train", help="split of a Hub data set")
    p.add_argument("--prompt-column", default="prompt", help="column holding the prompts")
    p.add_argument("--response-column", default="response", help="column holding the responses")
    p.add_argument("--target-modules", default="all-linear", help="'all-linear', 'mlp', 'self_attn', a comma list of "
                                                                   "name suffixes, or a regex")
    p.add_argument("--scorer", default="snip", help="importance scorer: snip or wanda")
    p.add_argument("--batch-size", type=_positive, default=1, help="samples per forward/backward pass")
    p.add_argument("--layers-per-pass", default="auto", help="decoder layers scored per pass: 'auto' (from the "
                                                              "memory plan and the GPUs' free memory), or a number")
    p.add_argument("--keep", type=_fraction, default=1e-2, help="fraction of each matrix's scores kept (their top "
                                                               "entries): any q, p up to it select exactly; 1 keeps "
                                                               "dense scores (default 1e-2)")
    p.add_argument("--max-length", type=_positive, default=512, help="tokens kept per example")
    p.add_argument("--no-chat-template", action="store_true", help="concatenate prompt and response as plain text")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("select", help="select the coupled neurons (T1 ∩ T2) \\ G and write the mask artifact")
    p.add_argument("--scores", required=True, help="folder written by dean score")
    p.add_argument("--targets", default="fairness,privacy", help="comma list of target data set names")
    p.add_argument("--general", default="general", help="general data set name ('' for none)")
    p.add_argument("--q", type=_fraction, default=5e-7, help="top fraction per target set (paper: 5e-7)")
    p.add_argument("--p", type=_fraction, default=5e-7, help="top fraction of the general set (paper: 5e-7)")
    p.add_argument("--legacy", action="store_true", help="reproduce the reference code's position-wise AND (a defect)")
    p.add_argument("--out", default="mask", help="output folder for the artifact")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("apply", help="apply a mask and save the merged checkpoint with its model card")
    _model_options(p)
    p.add_argument("--mask", required=True, help="mask artifact folder or Hub repo id")
    p.add_argument("--out", required=True, help="output folder for the edited model")
    p.add_argument("--skip-base-model-check", action="store_true", help="apply even if the weights differ from the "
                                                                         "mask's base model")
    p.add_argument("--overwrite", action="store_true", help="allow --out to be the base model's folder or a folder "
                                                            "that holds a model (its files are replaced)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("push", help="push a mask artifact or an edited checkpoint to the Hub (one commit)")
    p.add_argument("--mask", help="mask artifact folder")
    p.add_argument("--merged", help="edited checkpoint folder (from dean apply)")
    p.add_argument("--repo", required=True, help="Hub repo id, user/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("eval", help="awareness (and before/after with --mask), perplexity, report")
    _model_options(p)
    p.add_argument("--mask", default=None, help="mask artifact: evaluate before and after it")
    p.add_argument("--questions", action="append", default=[], help="DIMENSION=SOURCE of questions (default: embedded)")
    p.add_argument("--prompt-column", default="prompt", help="column holding the questions")
    p.add_argument("--eval-n", "--n", dest="eval_n", default="all", help="questions per dimension: 'all' (default) "
                                                                           "or a number (drawn with --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the question draw")
    p.add_argument("--prompt-format", choices=["chat", "raw"], default="chat",
                   help="the question in the model's chat template (default), or bare, as the reference code did")
    p.add_argument("--judge", default="rules", help="'rules' (offline) or a judge model id (MD-Judge, Llama Guard)")
    p.add_argument("--max-new-tokens", type=_positive, default=64, help="tokens generated per answer")
    p.add_argument("--batch-size", default="auto", help="questions per generation batch: 'auto' (chosen from memory) "
                                                        "or a number")
    p.add_argument("--out", default="eval_report", help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tune", help="search DEAN settings on development questions, confirm the best on test ones")
    _model_options(p)
    p.add_argument("--data", action="append", required=True, help="scoring data NAME=SOURCE: fairness, privacy, "
                                                                   "general (and unsafe_fairness, unsafe_privacy for "
                                                                   "the contrastive variant)")
    p.add_argument("--questions", action="append", required=True, help="DIMENSION=SOURCE of evaluation questions")
    p.add_argument("--prompt-column", default="prompt", help="column holding the questions")
    p.add_argument("--dev-size", default="150", help="development questions per dimension (the rest is the test part)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the scoring draws")
    p.add_argument("--qs", default="1e-4,1e-3,1e-2", help="q values tried")
    p.add_argument("--ps", default=None, help="p values tried (default: p = q)")
    p.add_argument("--modules", default="mlp,self_attn,all-linear", help="module sets tried")
    p.add_argument("--variants", default="zero", help="zero, scale, neuron, contrastive (comma list)")
    p.add_argument("--scales", default="0.5", help="factors tried by the scale variant")
    p.add_argument("--scorers", default="snip", help="scorers tried (snip, wanda)")
    p.add_argument("--ns", default="128", help="scoring samples per data set tried")
    p.add_argument("--max-perplexity-increase", type=float, default=0.03, help="the objective's constraint")
    p.add_argument("--judge", default="rules", help="'rules' (offline) or a judge model id")
    p.add_argument("--max-new-tokens", type=_positive, default=64, help="tokens generated per answer")
    p.add_argument("--batch-size", default="auto", help="generation batch: 'auto' or a number")
    p.add_argument("--prompt-format", choices=["chat", "raw"], default="chat", help="chat template or bare question")
    p.add_argument("--out", default="tune_report", help="report folder")
    p.add_argument("--resume", default=None, help="trials.jsonl of an interrupted search (same grid, split, seed): "
                                                  "measure only the missing settings, then confirm")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("plan", help="memory needed to score and apply, per device, from a model's config alone")
    p.add_argument("model", help="a config.json, a model folder, 'default', or a Hub id (online)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--batch-size", type=_positive, default=1, help="samples per forward/backward pass")
    p.add_argument("--max-length", type=_positive, default=512, help="tokens per sample")
    p.add_argument("--response-tokens", type=_positive, default=None,
                   help="positions the loss reads per sample (default: all of --max-length)")
    p.add_argument("--target-modules", default="all-linear", help="modules scored (as dean score)")
    p.add_argument("--max-memory", default=None, help="devices and their memory, e.g. 0=80GiB,1=80GiB,cpu=200GiB: "
                                                      "suggests a device_map and layers per pass")
    p.add_argument("--fused-kernel", action="store_true", help="plan for the fused per-sample kernel (scoring on "
                                                               "CUDA with triton): no per-sample temporaries")
    p.add_argument("--json", default=None, help="also write the plan as JSON to this file")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("demo", help="score -> select -> apply -> evaluate on the embedded model and data")
    p.add_argument("--model", default="default", help="model (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", default=None, help="run folder (default: dean_runs/demo-TIME)")
    p.add_argument("--n", type=_positive, default=32, help="samples per scoring set (embedded sets hold 36)")
    p.add_argument("--q", type=_fraction, default=1e-3, help="top fraction per target set")
    p.add_argument("--p", type=_fraction, default=1e-3, help="top fraction of the general set")
    p.add_argument("--target-modules", default="mlp", help="modules to edit (paper: MLP)")
    p.add_argument("--max-new-tokens", type=_positive, default=64, help="tokens generated per answer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `dean` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from .logging import disable_progress_bars

        disable_progress_bars()
    try:
        args.func(args)
    except DeanError as err:
        print(f"dean: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk or the network failed under us: say what, without a traceback
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"dean: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dean: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
