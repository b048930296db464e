"""Before vs after DEAN, and the end-to-end demo on the embedded model and data."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..config import DeanConfig
from ..data import load_records
from ..editor import DeanEditor
from ..eval import evaluate_awareness, judge_note, perplexity
from ..eval.judges import Judge, RuleJudge
from ..eval.perplexity import cautionary_frequency
from ..eval.report import plot_awareness, plot_mask_per_layer, write_report
from ..hub import fraction_text
from ..logging import get_logger
from ..mask import NeuronMask
from ..pipeline import score_datasets_cached
from ..selection import select_coupled_neurons

logger = get_logger(__name__)


def embedded(name: str) -> Path:
    """Path of an embedded data file (fairness, privacy, general, eval_fairness, eval_privacy)."""
    return Path(str(resources.files("dean_hf").joinpath(f"resources/{name}.jsonl")))


def embedded_questions() -> dict[str, list[str]]:
    """The embedded evaluation questions per dimension."""
    return {dim: load_records(embedded(f"eval_{dim}"), response_column=None)["prompt"] for dim in ("fairness", "privacy")}


def before_after(editor: DeanEditor, tokenizer: Any, questions: Mapping[str, Sequence[str]], out_dir: str | Path, *,
                 judge: Optional[Judge] = None, max_new_tokens: int = 64, batch_size: int = 8,
                 show_progress: bool = True, extra: Optional[Mapping[str, Any]] = None) -> dict[str, Path]:
    """Awareness, perplexity and cautionary phrases of the model without and with its active mask, as a report."""
    judge = judge or RuleJudge()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mask: NeuronMask = editor.masks[editor.active_mask]
    results: dict[str, Any] = {}
    for setting in ("before", "after"):
        ctx = editor.disable_mask() if setting == "before" else nullcontext()
        with ctx:
            aware = evaluate_awareness(editor.model, tokenizer, questions, judge=judge, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, show_progress=show_progress)
            ppl = perplexity(editor.model, tokenizer)
        results[setting] = {"awareness": {d: r.summary() for d, r in aware.items()}, "perplexity": ppl,
                            "cautionary": {d: cautionary_frequency([x["answer"] for x in r.records])
                                           for d, r in aware.items()},
                            "answers": {d: r.records for d, r in aware.items()}}
    rows = [{"setting": s, **results[s]["awareness"][d]} for s in ("before", "after") for d in questions]
    plots = [plot_awareness(rows, out_dir / "awareness.png"), plot_mask_per_layer(mask, out_dir / "mask_per_layer.png")]
    table = [[d, results["before"]["awareness"][d]["rate"], results["after"]["awareness"][d]["rate"],
              results["after"]["awareness"][d]["rate"] - results["before"]["awareness"][d]["rate"],
              results["before"]["awareness"][d]["n"],
              f"{results['before']['awareness'][d]['unclear']} / {results['after']['awareness'][d]['unclear']}"]
             for d in questions]
    table.append(["perplexity", results["before"]["perplexity"]["perplexity"],
                  results["after"]["perplexity"]["perplexity"],
                  results["after"]["perplexity"]["perplexity"] - results["before"]["perplexity"]["perplexity"],
                  results["before"]["perplexity"]["tokens"], "-"])
    kinds = sorted(mask.counts_per_kind().items(), key=lambda kv: -kv[1])
    notes = [judge_note(judge), f"Masked weights: {fraction_text(mask)}.",
             "n is the number of questions behind each rate; with n = 25 one answer moves a rate by 0.04, so "
             "differences under about 0.1 are within noise."]
    data = {"config": editor.config.to_dict(), "mask": {"num_masked": mask.num_masked, "per_kind": dict(kinds),
                                                        "per_layer": {str(k): v for k, v in
                                                                      mask.counts_per_layer().items()}},
            "results": results, "judge": judge.name, **(extra or {})}
    return write_report(out_dir, "report", data, title="DEAN: before vs after",
                        tables=[("Awareness and perplexity", ["metric", "before", "after", "change", "n", "unclear"],
                                 table),
                                ("Masked weights per module kind", ["module kind", "weights"], kinds)],
                        notes=notes, plots=plots) | {"plots": plots}


def evaluation_text(report: Mapping[str, Any]) -> str:
    """The model card's evaluation section from a `before_after` report."""
    results = report["results"]
    lines = ["Measured by `dean demo` (embedded questions, offline rule judge, greedy decoding):", "",
             "| metric | before | after | n |", "|---|---|---|---|"]
    for dim, before in results["before"]["awareness"].items():
        lines.append(f"| {dim} awareness | {before['rate']:.3f} | {results['after']['awareness'][dim]['rate']:.3f} "
                     f"| {before['n']} |")
    ppl = (results["before"]["perplexity"], results["after"]["perplexity"])
    lines += [f"| perplexity (embedded text) | {ppl[0]['perplexity']:.2f} | {ppl[1]['perplexity']:.2f} | "
              f"{ppl[0]['tokens']} tokens |", "", judge_note(RuleJudge())]
    return "\n".join(lines)


def run_demo(out_dir: Optional[str | Path] = None, *, model_name: str = "default", n: int = 32, q: float = 1e-3,
             p: float = 1e-3, target_modules: str = "mlp", max_new_tokens: int = 64, batch_size: int = 4,
             show_progress: bool = True) -> dict[str, Path]:
    """score -> select -> apply -> before/after evaluation on the embedded model and data; returns the files."""
    from ..models import load_model, load_tokenizer

    out = Path(out_dir or f"dean_runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    model, tokenizer = load_model(model_name), load_tokenizer(model_name)
    config = DeanConfig(q=q, p=p, target_modules=target_modules, num_samples=n, max_length=256, batch_size=batch_size,
                        base_model_name_or_path=model.config.name_or_path)
    records = {name: load_records(embedded(name), n=n, seed=config.seed) for name in ("fairness", "privacy", "general")}
    scores = score_datasets_cached(model, tokenizer, records, config, out / "scores", show_progress=show_progress)
    general = scores.pop("general")
    mask = select_coupled_neurons(scores, general, q=q, p=p)
    editor = DeanEditor(model, config)
    editor.add_mask("default", mask)
    editor.set_mask("default")
    editor.save_pretrained(out / "mask")
    files = before_after(editor, tokenizer, embedded_questions(), out, max_new_tokens=max_new_tokens,
                         show_progress=show_progress, extra={"scores": {k: dict(v.metadata) for k, v in
                                                                        {**scores, "general": general}.items()}})
    editor.save_pretrained(out / "mask", evaluation=evaluation_text(json.loads(files["json"].read_text())))
    return {"run": out, "mask": out / "mask", "scores": out / "scores", **files}
