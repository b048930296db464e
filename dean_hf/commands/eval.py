"""`dean eval`: awareness (before/after with --mask), perplexity and the report; --rejudge judges kept answers again."""

from __future__ import annotations

from pathlib import Path

from ..errors import DeanError
from ._args import (
    auto_or_positive,
    count_or_all,
    judge_options,
    load_judge,
    load_model_and_tokenizer,
    model_options,
    named_sources,
    positive,
)


def cmd_eval(args) -> None:
    import time

    from ..data import load_records
    from ..editor import DeanEditor
    from ..eval import judge_note
    from ..eval.generate import generation_batch_size
    from ..eval.report import write_report
    from ..experiments import before_after, embedded_questions, measure, rate_text
    from ..io import check_writable
    from ..provenance import environment

    check_writable(args.out, "--out")
    if args.rejudge:
        return _rejudge(args)
    eval_n = None if args.eval_n in (None, "all") else args.eval_n
    questions = embedded_questions()
    if args.questions:  # every question file is read (and checked) before the model is loaded
        questions = {n: load_records(s, prompt_column=args.prompt_column, response_column=None,
                                     n=eval_n, seed=args.seed, show_progress=not args.quiet)["prompt"]
                     for n, s in named_sources(args.questions).items()}
    elif eval_n:
        questions = {d: q[:eval_n] for d, q in questions.items()}
    judge = load_judge(args)
    model, tokenizer = load_model_and_tokenizer(args)
    batch = generation_batch_size(model, args.max_new_tokens) if args.batch_size == "auto" else \
        args.batch_size
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
        from ..eval.answers import ANSWERS_FILE, answer_rows
        from ..eval.viewer import answers_note, save_run_answers
        from ..experiments import corrected_text, unclear_text

        kept = save_run_answers(args.out, answer_rows("model", {d: figures[d]["answers"] for d in questions}))
        rows = [[d, rate_text(figures[d]), corrected_text(figures[d]), unclear_text(figures[d])] for d in questions]
        files = write_report(args.out, "report", {"awareness": figures, **settings, "answers": ANSWERS_FILE},
                             title=f"Awareness of {args.model}",
                             tables=[("Awareness", ["dimension", "judge's rate [95% CI]", "corrected [95% CI]",
                                                    "unclear"], rows)],
                             notes=[judge_note(judge), f"Perplexity on the embedded text: {figures['perplexity']:.2f}",
                                    answers_note(kept)])
        for row in rows:
            print(f"{row[0]}: {row[1]}; judge-corrected {row[2]}")
    seconds = time.perf_counter() - start
    total = sum(len(q) for q in questions.values()) * (2 if args.mask else 1)
    print(f"{total} answers in {seconds / 60:.1f} min ({seconds / max(1, total):.2f} s per answer, batch {batch})")
    print(f"report -> {files['markdown']}")


def _rejudge(args) -> None:
    """`dean eval --rejudge RUN --judge NAME`: the run's answers judged again; nothing is generated."""
    from ..eval.answers import read_answers
    from ..experiments.rejudge import rejudge_run

    given = [flag for flag, value in (("--mask", args.mask), ("--questions", args.questions)) if value]
    if given:
        raise DeanError(f"--rejudge judges the answers kept in {args.rejudge!r} again and generates nothing: drop "
                        f"{' and '.join(given)}.")
    read_answers(args.rejudge)  # checked before a judge model is loaded
    files = rejudge_run(args.rejudge, load_judge(args), args.out)
    print(f"re-judged {args.rejudge} with {args.judge}")
    print(f"report -> {files['markdown']}")


def _print_paired_summary(files) -> None:
    """One line per dimension: before -> after, the paired change with its interval, flips and McNemar p."""
    import json

    from ..experiments import change_text, corrected_text, rate_text

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

    from ..experiments.demo import card_evaluation
    from ..hub import CARD_NAME, card_is_ours, render_card, write_card

    folder = Path(args.mask)
    if not folder.is_dir() or (folder / CARD_NAME).exists() and not card_is_ours(folder / CARD_NAME):
        return
    questions = ", ".join(f"{k}={v}" for k, v in named_sources(args.questions).items()) or "embedded questions"
    evaluation, results = card_evaluation(json.loads(Path(files["json"]).read_text()), judge=judge,
                                          how=f"`dean eval` ({questions}; greedy decoding, {args.max_new_tokens} "
                                              f"new tokens, judge: {judge.name})")
    name = editor.active_adapter
    write_card(folder, render_card(editor.peft_config[name], editor.masks[name], evaluation=evaluation,
                                   eval_results=results))
    print(f"evaluation written into {folder / CARD_NAME}")


def register(sub) -> None:
    """Add the `eval` subcommand to `sub`."""
    p = sub.add_parser("eval", help="awareness (and before/after with --mask), perplexity, report")
    model_options(p)
    p.add_argument("--mask", default=None, help="mask artifact: evaluate before and after it")
    p.add_argument("--questions", action="append", default=[], help="DIMENSION=SOURCE of questions (default: embedded)")
    p.add_argument("--prompt-column", default="prompt", help="column holding the questions")
    p.add_argument("--eval-n", "--n", dest="eval_n", default="all", type=count_or_all,
                   help="questions per dimension: 'all' (default) "
                                                                           "or a number (drawn with --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the question draw")
    p.add_argument("--prompt-format", choices=["chat", "raw"], default="chat",
                   help="the question in the model's chat template (default), or bare, as the reference code did")
    judge_options(p)
    p.add_argument("--max-new-tokens", type=positive, default=64, help="tokens generated per answer")
    p.add_argument("--batch-size", default="auto", type=auto_or_positive,
                   help="questions per generation batch: 'auto' (chosen from memory) "
                                                        "or a number")
    p.add_argument("--out", default="eval_report", help="report folder")
    p.add_argument("--rejudge", default=None, metavar="RUN", help="judge the answers kept in RUN (a folder with "
                                                                  "answers.jsonl) again with --judge, without "
                                                                  "generating; the new report goes into --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)
