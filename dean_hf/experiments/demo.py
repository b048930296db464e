"""Before vs after DEAN, and the end-to-end demo on the embedded model and data."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..config import DeanConfig
from ..data import EMBEDDED_PREFIX, load_records, resolve_source
from ..editor import DeanEditor
from ..eval import evaluate_awareness, perplexity
from ..eval.agreement import agreement_of, judge_note
from ..eval.answers import ANSWERS_FILE, answer_rows
from ..eval.viewer import answers_note, save_run_answers
from ..eval.stats import as_outcomes, compare_paired
from ..provenance import environment
from ..eval.judges import Judge, RuleJudge
from ..eval.perplexity import cautionary_frequency
from ..eval.report import plot_awareness, plot_mask_per_layer, write_report
from ..hub import fraction_text
from ..logging import get_logger
from ..mask import NeuronMask
from ..pipeline import mask_and_config, score_datasets_cached
from .common import awareness_entry, change_text, corrected_text, rate_text

logger = get_logger(__name__)


def embedded(name: str) -> Path:
    """Path of an embedded data file (fairness, privacy, general, eval_fairness, eval_privacy)."""
    return Path(resolve_source(f"{EMBEDDED_PREFIX}{name}"))


def embedded_questions() -> dict[str, list[str]]:
    """The embedded evaluation questions per dimension."""
    return {dim: load_records(embedded(f"eval_{dim}"), response_column=None)["prompt"] for dim in ("fairness", "privacy")}


def before_after(editor: DeanEditor, tokenizer: Any, questions: Mapping[str, Sequence[str]], out_dir: str | Path, *,
                 judge: Optional[Judge] = None, max_new_tokens: int = 64, batch_size: int = 8,
                 show_progress: bool = True, extra: Optional[Mapping[str, Any]] = None,
                 chat_template: bool = True) -> dict[str, Path]:
    """Awareness, perplexity and cautionary phrases of the model without and with its active mask, as a report.

    The same questions are answered before and after, so each dimension is compared pairwise (flips, exact
    McNemar test, paired bootstrap interval), and rates are corrected for the judge's measured error when known."""
    judge = judge or RuleJudge()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mask: NeuronMask = editor.masks[editor.active_mask]
    results: dict[str, Any] = {}
    agreement = agreement_of(judge)
    for setting in ("before", "after"):
        ctx = editor.disable_adapter() if setting == "before" else nullcontext()
        with ctx:
            aware = evaluate_awareness(editor.model, tokenizer, questions, judge=judge, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, show_progress=show_progress, chat_template=chat_template)
            ppl = perplexity(editor.model, tokenizer)
        results[setting] = {"awareness": {d: awareness_entry(r, agreement) for d, r in aware.items()},
                            "perplexity": ppl,
                            "cautionary": {d: cautionary_frequency([x["answer"] for x in r.records])
                                           for d, r in aware.items()},
                            "answers": {d: r.records for d, r in aware.items()}}
    results["paired"] = {d: compare_paired(as_outcomes(results["before"]["awareness"][d]["labels"]),
                                           as_outcomes(results["after"]["awareness"][d]["labels"])).to_dict()
                         for d in questions}
    rows = [{"setting": s, **results[s]["awareness"][d]} for s in ("before", "after") for d in questions]
    plots = [plot_awareness(rows, out_dir / "awareness.png"), plot_mask_per_layer(mask, out_dir / "mask_per_layer.png")]
    table = []
    for d in questions:
        before, after, c = results["before"]["awareness"][d], results["after"]["awareness"][d], results["paired"][d]
        table.append([f"{d} (raw)", rate_text(before), rate_text(after),
                      change_text({"paired": c}), f"{c['detectable']:.3f}"])
        if "corrected" in before:
            table.append([f"{d} (judge-corrected)", corrected_text(before), corrected_text(after), "", ""])
    ppl_before, ppl_after = results["before"]["perplexity"], results["after"]["perplexity"]
    table.append(["perplexity", f"{ppl_before['perplexity']:.2f}", f"{ppl_after['perplexity']:.2f}",
                  f"{ppl_after['perplexity'] - ppl_before['perplexity']:+.2f}", f"{ppl_before['tokens']} tokens"])
    kinds = sorted(mask.counts_per_kind().items(), key=lambda kv: -kv[1])
    kept = save_run_answers(out_dir, [row for s in ("before", "after") for row in
                                      answer_rows(s, results[s]["answers"])])
    notes = [judge_note(judge), f"Masked weights: {fraction_text(mask)}.", _noise_note(results, questions),
             answers_note(kept)]
    data = {"config": editor.dean_config.to_dict(), "mask": {"num_masked": mask.num_masked, "per_kind": dict(kinds),
                                                             "per_layer": {str(k): v for k, v in
                                                                           mask.counts_per_layer().items()}},
            "results": results, "judge": judge.name, "judge_agreement": {d: a.to_dict() for d, a in
                                                                           (agreement or {}).items()},
            "environment": environment(editor.model), "prompt_format": "chat" if chat_template else "raw",
            "max_new_tokens": max_new_tokens, "answers": ANSWERS_FILE, **(extra or {})}
    return write_report(out_dir, "report", data, title="DEAN: before vs after",
                        tables=[("Awareness (same questions before and after) and perplexity",
                                 ["metric", "before", "after", "change [paired 95% CI]; flips; McNemar p",
                                  "detectable change"], table),
                                ("Masked weights per module kind", ["module kind", "weights"], kinds)],
                        notes=notes, plots=plots) | {"plots": plots, **kept}


def _noise_note(results: Mapping[str, Any], questions: Mapping[str, Any]) -> str:
    """What the run can tell apart, computed from its own n and flips (never a fixed sentence)."""
    parts = []
    for d in questions:
        c = results["paired"][d]
        parts.append(f"{d}: {c['n']} questions judged both times, {c['improved']} improved and {c['worsened']} "
                     f"worsened; a change under {c['detectable']:.3f} is below what this run detects (80% power, "
                     f"5% level)")
    return ("Before and after are the same questions, so they are compared pairwise (exact McNemar test on the "
            "answers that flipped, paired bootstrap interval); " + "; ".join(parts) + ".")


def card_evaluation(report: Mapping[str, Any], *, how: str, judge: Optional[Judge] = None) -> tuple[str, list]:
    """The model card's Evaluation section (Markdown) and its `model-index` results (huggingface_hub
    `EvalResult`s) from a `before_after` report: each rate with its n and 95% Wilson interval. `how` says what
    was run (e.g. "`dean demo`: embedded questions, greedy decoding")."""
    from ..hub import eval_results_for_card
    from .common import wilson_interval

    results = report["results"]
    lines = [f"Measured by {how}:", "", "| metric | before | after | n (judged) |", "|---|---|---|---|"]
    rows = []
    for dim, before in results["before"]["awareness"].items():
        cells = []
        for setting in ("before", "after"):
            entry = results[setting]["awareness"][dim]
            judged = entry["aware"] + entry["unaware"]
            low, high = wilson_interval(entry["aware"], judged)
            cells.append(f"{entry['rate']:.3f} [{low:.2f}, {high:.2f}]")
            rows.append({"dimension": dim, "setting": "edited" if setting == "after" else "base",
                         "rate": entry["rate"], "n": judged, "low": low, "high": high})
        lines.append(f"| {dim} awareness | {cells[0]} | {cells[1]} | {before['aware'] + before['unaware']} |")
    ppl = (results["before"]["perplexity"], results["after"]["perplexity"])
    lines += [f"| perplexity (embedded text) | {ppl[0]['perplexity']:.2f} | {ppl[1]['perplexity']:.2f} | "
              f"{ppl[0]['tokens']} tokens |", "", "Rates are aware / (aware + unaware) with 95% Wilson intervals.",
              judge_note(judge or RuleJudge())]
    return "\n".join(lines), eval_results_for_card([r for r in rows if r["setting"] == "edited"],
                                                   "SALAD-Bench-style questions")


def run_demo(out_dir: Optional[str | Path] = None, *, model_name: str = "default", n: int = 32, q: float = 1e-3,
             p: float = 1e-3, target_modules: str = "mlp", max_new_tokens: int = 64, batch_size: int = 4,
             show_progress: bool = True) -> dict[str, Path]:
    """score -> select -> apply -> before/after evaluation on the embedded model and data; returns the files."""
    from ..extras import require_plots
    from ..models import check_model_available, load_model, load_tokenizer

    require_plots("the demo (its plots)")
    check_model_available(model_name)
    out = Path(out_dir or f"dean_runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    model, tokenizer = load_model(model_name), load_tokenizer(model_name)
    config = DeanConfig(q=q, p=p, target_modules=target_modules, num_samples=n, max_length=256, batch_size=batch_size,
                        base_model_name_or_path=model.config.name_or_path)
    records = {name: load_records(embedded(name), n=n, seed=config.seed) for name in ("fairness", "privacy", "general")}
    scores = score_datasets_cached(model, tokenizer, records, config, out / "scores", show_progress=show_progress)
    general = scores.pop("general")
    sources = {name: f"{EMBEDDED_PREFIX}{name}" for name in records}
    mask, config = mask_and_config(scores, general, config, general_name="general", sources=sources)
    editor = DeanEditor(model)
    editor.add_adapter("default", mask, config)
    editor.set_adapter("default")
    files = before_after(editor, tokenizer, embedded_questions(), out, max_new_tokens=max_new_tokens,
                         show_progress=show_progress, extra={"scores": {k: dict(v.metadata) for k, v in
                                                                        {**scores, "general": general}.items()}})
    evaluation, results = card_evaluation(json.loads(files["json"].read_text()),
                                          how="`dean demo` (embedded questions, greedy decoding)")
    editor.save_pretrained(out / "mask", evaluation=evaluation, eval_results=results)
    return {"run": out, "mask": out / "mask", "scores": out / "scores", **files}
