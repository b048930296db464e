"""`dean tune`: choose a DEAN setting on one part of the evaluation questions, confirm it once on the other.

The questions are split by a seed into a development part and a test part, stratified by dimension (and by
category where the data has one). Every trial is measured on the development part only, against the base model on
the same questions; the objective is stated before anything runs (by default: the smaller of the two awareness
gains, with perplexity within +3%). The chosen setting is then measured once on the test part, compared pairwise
with the base model (exact McNemar per dimension, Holm-adjusted), with judge-corrected rates and perplexity, and
the report says whether the edit helped, hurt, or could not be told apart. Every trial is kept in the table.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch import nn
from tqdm.auto import tqdm

from ..config import DeanConfig
from ..data import load_records
from ..editor import DeanEditor
from ..errors import DeanError
from ..eval.answers import ANSWERS_FILE, answer_rows
from ..eval.judges import Judge, RuleJudge
from ..eval.stats import as_outcomes, compare_paired, holm
from ..eval.viewer import answers_note, save_run_answers
from ..logging import get_logger
from ..logging import show_progress as _bars_wanted
from ..pipeline import score_datasets_cached
from .common import corrected_text, measure, restrict

logger = get_logger(__name__)
CONTRASTIVE = "(unsafe_fairness & unsafe_privacy) - (fairness | privacy | general)"
VARIANTS = ("zero", "scale", "neuron", "contrastive")


def split_questions(questions: Mapping[str, Sequence[str]], *, dev_size: int | Mapping[str, int], seed: int = 0,
                    categories: Optional[Mapping[str, Sequence[str]]] = None) -> tuple[dict, dict]:
    """(development, test) questions per dimension: a seeded, stratified split (by dimension, and by category when
    `categories` gives one per question). `dev_size` is the development part's size per dimension (an int for
    all); each category contributes in proportion. The two parts are disjoint and the split is reproducible."""
    dev, test = {}, {}
    for dim, qs in questions.items():
        size = dev_size[dim] if isinstance(dev_size, Mapping) else dev_size
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size < len(qs):
            raise DeanError(f"dev_size={size!r} for {dim!r}: expected a number of questions between 1 and "
                            f"{len(qs) - 1} (the {dim} set holds {len(qs)}), so that both parts hold questions.")
        cats = list(categories[dim]) if categories and dim in categories else [""] * len(qs)
        strata: dict[str, list[int]] = {}
        for i, c in enumerate(cats):
            strata.setdefault(c, []).append(i)
        rng = random.Random(f"{seed}:{dim}")
        chosen: set[int] = set()
        remainders = []
        for c, idx in sorted(strata.items()):
            rng.shuffle(idx)
            exact = size * len(idx) / len(qs)
            take = math.floor(exact)
            chosen.update(idx[:take])
            remainders.append((exact - take, c, idx[take:]))
        for _, _, rest in sorted(remainders, key=lambda r: (-r[0], r[1])):  # largest remainders first
            if len(chosen) < size and rest:
                chosen.add(rest[0])
        dev[dim] = [qs[i] for i in sorted(chosen)]
        test[dim] = [qs[i] for i in range(len(qs)) if i not in chosen]
    return dev, test


@dataclass
class Setting:
    """One trial: which modules, q, p, variant, scorer and scoring data size."""

    modules: str = "mlp"
    q: float = 1e-3
    p: float = 1e-3
    variant: str = "zero"
    scale: float = 0.0
    scorer: str = "snip"
    n: int = 128

    def label(self) -> str:
        variant = f"scale {self.scale:g}" if self.variant == "scale" else self.variant
        return f"{self.modules}, q={self.q:g}, p={self.p:g}, {variant}, {self.scorer}, n={self.n}"


@dataclass
class TuneSpace:
    """The grid searched (every combination is a trial)."""

    qs: Sequence[float] = (1e-4, 1e-3, 1e-2)
    ps: Optional[Sequence[float]] = None  # None: p = q
    module_sets: Sequence[str] = ("mlp", "self_attn", "all-linear")
    variants: Sequence[str] = ("zero",)
    scales: Sequence[float] = (0.5,)
    scorers: Sequence[str] = ("snip",)
    ns: Sequence[int] = (128,)

    def settings(self) -> list[Setting]:
        """Every combination, each value checked first (before a model is loaded or a question answered)."""
        from ..mask import validate_scale
        from ..scoring import get_scorer
        from ..selection import _check_fraction
        from ..targets import SPECIAL

        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise DeanError(f"variants {unknown}: expected some of {list(VARIANTS)}.")
        for value in [*self.qs, *(self.ps or [])]:
            _check_fraction("q/p", value)
        for scale in self.scales:
            validate_scale(scale)
        for scorer in self.scorers:
            get_scorer(scorer)
        for n in self.ns:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise DeanError(f"ns contains {n!r}: expected positive numbers of scoring samples.")
        for modules in self.module_sets:
            if not isinstance(modules, str) or modules.lower() not in SPECIAL:
                raise DeanError(f"module set {modules!r}: expected one of {list(SPECIAL)}.")
        if not (self.qs and self.module_sets and self.variants and self.scorers and self.ns):
            raise DeanError("the tune grid is empty: give at least one q, module set, variant, scorer and n.")
        out = []
        for scorer, n, modules, q in itertools.product(self.scorers, self.ns, self.module_sets, self.qs):
            for p in (self.ps or [q]):
                for variant in self.variants:
                    for scale in (self.scales if variant == "scale" else [0.0]):
                        out.append(Setting(modules, q, p, variant, scale, scorer, n))
        return out


@dataclass
class Objective:
    """What the search maximises, stated before it runs: the smaller of the two awareness gains on the
    development part (each the paired change against the base model), among settings whose perplexity rises by
    at most `max_perplexity_increase`; the others score minus infinity."""

    max_perplexity_increase: float = 0.03
    dimensions: Sequence[str] = ("fairness", "privacy")

    def describe(self) -> str:
        return (f"maximise min(gain in {' and '.join(self.dimensions)} awareness) on the development questions, "
                f"subject to perplexity within +{100 * self.max_perplexity_increase:g}% of the base model's")

    def value(self, row: Mapping[str, Any]) -> float:
        if "gains" not in row or row["perplexity_change"] > self.max_perplexity_increase:
            return -math.inf
        gains = [row["gains"][d] for d in self.dimensions]
        return min(gains) if all(g == g for g in gains) else -math.inf


def choose(trials: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The trial with the highest objective; among equal objectives, the one that changes fewer weights (the
    smaller edit); among those, the first in grid order."""
    return max(trials, key=lambda r: (r["objective"], -r["masked"]))


def _mask_for(setting: Setting, scores: Mapping[str, Any]):
    from ..selection import select_by_expression, select_coupled_neurons

    targets = {k: restrict(scores[k], setting.modules) for k in ("fairness", "privacy")}
    general = restrict(scores["general"], setting.modules)
    if setting.variant == "contrastive":
        named = {k: restrict(v, setting.modules) for k, v in scores.items()}
        fractions = {"unsafe_fairness": setting.q, "unsafe_privacy": setting.q, "fairness": setting.p,
                     "privacy": setting.p, "general": setting.p}
        return select_by_expression(CONTRASTIVE, named, fractions=fractions)
    return select_coupled_neurons(targets, general, q=setting.q, p=setting.p,
                                  granularity="neuron" if setting.variant == "neuron" else "weight",
                                  scale=setting.scale)


def tune(model: nn.Module, tokenizer: Any, sources: Mapping[str, Any], questions: Mapping[str, Sequence[str]],
         out_dir: str | Path, *, space: Optional[TuneSpace] = None, objective: Optional[Objective] = None,
         dev_size: int | Mapping[str, int] = 150, seed: int = 0, judge: Optional[Judge] = None,
         categories: Optional[Mapping[str, Sequence[str]]] = None, max_new_tokens: int = 64, batch_size: int = 8,
         chat_template: bool = True, show_progress: bool = True,
         resume: Optional[Sequence[Mapping[str, Any]]] = None) -> dict[str, Any]:
    """Search `space` on the development questions, confirm the best setting once on the test questions, and
    write a report (table of every trial, confirmation, plot) into `out_dir`; returns the report's data.

    `sources` names the scoring data: "fairness", "privacy", "general", and for the contrastive variant
    "unsafe_fairness" and "unsafe_privacy" (anything `load_records` takes). `resume` takes the trial rows of an
    interrupted run (its `trials.jsonl`, same grid, split and seed): only the settings it lacks are measured, then
    the best trial is confirmed. Without `resume`, an existing `trials.jsonl` in `out_dir` is refused, never
    overwritten."""
    from ..extras import require_plots

    require_plots("tune (its plot)")  # before hours of trials, not at the report
    space, objective, judge = space or TuneSpace(), objective or Objective(), judge or RuleJudge()
    settings = space.settings()
    needed = {"fairness", "privacy", "general"} | ({"unsafe_fairness", "unsafe_privacy"}
                                                   if "contrastive" in space.variants else set())
    missing = sorted(needed - set(sources))
    if missing:
        raise DeanError(f"tune needs scoring data named {missing} (for {sorted(needed)}): pass them in sources.")
    dev, test = split_questions(questions, dev_size=dev_size, seed=seed, categories=categories)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(judge=judge, max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=False,
              keep_answers=True, chat_template=chat_template)
    records = {}
    for n in sorted(set(space.ns)):  # every data set is read (and checked) before any scoring
        records[n] = {k: load_records(v, n=n, seed=seed) for k, v in sources.items() if k in needed}
    scores_for: dict[tuple[str, int], Any] = {}

    def scores_of(setting: Setting) -> Any:
        key = (setting.scorer, setting.n)
        if key not in scores_for:
            keep = 1.0 if "neuron" in space.variants else max(max(space.qs), max(space.ps or space.qs))
            config = DeanConfig(scorer=setting.scorer, num_samples=setting.n, seed=seed, max_length=256,
                                keep=min(1.0, keep))
            scores_for[key] = score_datasets_cached(model, tokenizer, records[setting.n], config,
                                                    out / "scores" / f"{setting.scorer}-{setting.n}",
                                                    show_progress=show_progress)
        return scores_for[key]

    done = {r.get("label"): dict(r) for r in (resume or [])}
    unknown = sorted(set(done) - {s.label() for s in settings})
    if unknown:
        raise DeanError(f"resume: {len(unknown)} trial(s) were not made with this grid (e.g. {unknown[0]!r}): pass "
                        "the same space, split and seed.")
    if resume is None and (out / "trials.jsonl").exists():
        raise DeanError(f"{str(out / 'trials.jsonl')!r} holds the trials of an earlier search: resume it "
                        "(resume= / --resume) or pick another output folder; it is not overwritten.")
    todo = [s for s in settings if s.label() not in done]
    base_dev = None
    if todo:
        measured = _search(model, tokenizer, dev, todo, scores_of, objective, out, kw, show_progress)
        base_dev = measured.pop()
        done.update({r["label"]: r for r in measured})
    trials = [done[s.label()] for s in settings]
    for row in trials:  # the stated objective decides, also for resumed rows
        row["objective"] = objective.value(row)
    chosen = choose(trials)
    confirmation, answers = _confirm(model, tokenizer, test, chosen, scores_of, kw) \
        if chosen["objective"] > -math.inf else (None, [])
    data = {"objective": objective.describe(), "split": {"seed": seed, "dev": {d: len(q) for d, q in dev.items()},
                                                        "test": {d: len(q) for d, q in test.items()},
                                                        "dev_questions": dev},
            "base_dev": {d: {k: base_dev[d][k] for k in ("rate", "aware", "unaware", "unclear", "n")} for d in dev}
            if base_dev else None, "resumed": resume is not None,
            "base_dev_perplexity": base_dev["perplexity"] if base_dev else None, "trials": trials,
            "chosen": chosen["label"],
            "confirmation": confirmation}
    kept = save_run_answers(out, answers) if answers else {}
    if kept:
        data["answers"] = ANSWERS_FILE
    _write(out, data, trials, kept)
    return data


def _search(model, tokenizer, dev, settings, scores_of, objective, out, kw, show_progress) -> list[dict[str, Any]]:
    """Every setting measured on the development questions against the base model (paired); the base model's
    figures come last in the returned list. Rows are appended to `trials.jsonl` as they are measured."""
    base_dev = measure(model, tokenizer, dev, **kw)
    trials = []
    for setting in tqdm(settings, desc="tune: trials", unit="trial", disable=not _bars_wanted(show_progress)):
        mask = _mask_for(setting, scores_of(setting))
        row: dict[str, Any] = {"setting": asdict(setting), "label": setting.label(), "masked": mask.num_masked}
        if mask.num_masked:
            editor = DeanEditor(model)
            editor.add_adapter("tune", mask, check_base_model=False)
            editor.set_adapter("tune")
            try:
                measured = measure(model, tokenizer, dev, **kw)
            finally:
                editor.unload()
            row["gains"] = {}
            for d in dev:
                c = compare_paired(as_outcomes(base_dev[d]["labels"]), as_outcomes(measured[d]["labels"]))
                row["gains"][d] = c.difference
                row[d] = {"rate": measured[d]["rate"], "paired": c.to_dict()}
            row["perplexity"] = measured["perplexity"]
            row["perplexity_change"] = measured["perplexity"] / base_dev["perplexity"] - 1
        row["objective"] = objective.value(row)
        trials.append(row)
        with open(out / "trials.jsonl", "a", encoding="utf-8") as f:  # a long search keeps what it measured so far
            f.write(json.dumps(row, default=str) + "\n")
    return trials + [base_dev]


def _confirm(model, tokenizer, test, chosen, scores_of, kw) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chosen setting, once, on the test questions: paired against the base model, Holm over dimensions.
    Returns the figures and every answer (answers.jsonl rows, settings "base" and "edited")."""
    setting = Setting(**chosen["setting"])
    base = measure(model, tokenizer, test, **kw)
    editor = DeanEditor(model)
    editor.add_adapter("tune", _mask_for(setting, scores_of(setting)), check_base_model=False)
    editor.set_adapter("tune")
    try:
        edited = measure(model, tokenizer, test, **kw)
    finally:
        editor.unload()
    comparisons = {d: compare_paired(as_outcomes(base[d]["labels"]), as_outcomes(edited[d]["labels"])) for d in test}
    for c, adjusted in zip(comparisons.values(), holm([c.p_value for c in comparisons.values()])):
        c.p_adjusted = adjusted
    out: dict[str, Any] = {"setting": chosen["label"], "perplexity": [base["perplexity"], edited["perplexity"]]}
    for d, c in comparisons.items():
        out[d] = {"paired": {**c.to_dict(), "verdict": c.verdict()},
                  "corrected": [base[d].get("corrected"), edited[d].get("corrected")],
                  "detectable": c.detectable}
    verdicts = {c.verdict() for c in comparisons.values()}
    out["verdict"] = ("helped" if verdicts == {"higher"} else "hurt" if "lower" in verdicts and "higher" not in verdicts
                      else "mixed" if verdicts >= {"higher", "lower"} else
                      "helped on one dimension, the other not distinguishable" if "higher" in verdicts else
                      "could not be told apart from the base model")
    answers = [row for setting, measured in (("base", base), ("edited", edited))
               for row in answer_rows(setting, {d: measured[d]["answers"] for d in test})]
    return out, answers


def _write(out: Path, data: Mapping[str, Any], trials: Sequence[Mapping[str, Any]],
           kept: Optional[Mapping[str, Path]] = None) -> None:
    from ..eval.report import write_report

    rows = [[r["label"], r["masked"],
             *(f"{r[d]['rate']:.3f} ({r['gains'][d]:+.3f})" if "gains" in r else "" for d in ("fairness", "privacy")),
             f"{r['perplexity_change']:+.1%}" if "perplexity_change" in r else "", f"{r['objective']:.3f}"
             if r["objective"] > -math.inf else "excluded"] for r in trials]
    tables = [("Every trial (development questions; gain = paired change against the base model)",
               ["setting", "weights changed", "fairness rate (gain)", "privacy rate (gain)", "perplexity change",
                "objective"], rows)]
    notes = [f"Objective, fixed before the search: {data['objective']}.",
             f"Split (seed {data['split']['seed']}): development {data['split']['dev']}, test {data['split']['test']}; "
             "the search never saw a test question."]
    c = data["confirmation"]
    if c:
        conf_rows = [[d, f"{c[d]['paired']['before']:.3f} -> {c[d]['paired']['after']:.3f}",
                      f"{c[d]['paired']['difference']:+.3f} [{c[d]['paired']['ci95'][0]:+.2f}, "
                      f"{c[d]['paired']['ci95'][1]:+.2f}]", f"+{c[d]['paired']['improved']}/-{c[d]['paired']['worsened']}",
                      f"{c[d]['paired']['p_adjusted']:.3g}", f"{c[d]['detectable']:.3f}", c[d]["paired"]["verdict"],
                      " -> ".join(corrected_text({"corrected": x}) for x in c[d].get("corrected") or [None, None])]
                     for d in ("fairness", "privacy")]
        tables.append((f"Confirmation on the test questions: {c['setting']}",
                       ["dimension", "base -> edited (judge's rate)", "change [paired 95% CI]", "flips",
                        "McNemar p (Holm)", "detectable change", "verdict", "judge-corrected base -> edited [95% CI]"],
                       conf_rows))
        notes.append(f"Verdict: {c['verdict']}. Perplexity {c['perplexity'][0]:.2f} -> {c['perplexity'][1]:.2f}.")
        notes.append("The verdict is about the judge's rate. Judge-corrected rates undo the judge's measured error "
                     "(Rogan-Gladen, with the uncertainty of that measurement); an interval near [0, 1] means the "
                     "judge agrees too little with a careful reader on that dimension to say what the true rate is.")
        if kept:
            notes.append(answers_note(kept))
    else:
        notes.append("No setting met the objective's constraint: nothing was confirmed.")
    plots = [_plot(trials, out / "trials.png")]
    write_report(out, "tune", data, title="dean tune", tables=tables, notes=notes, plots=plots)


def _plot(trials: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Every trial: gain in fairness against gain in privacy, coloured by the change in perplexity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in trials if "gains" in r]
    fig, ax = plt.subplots(figsize=(5, 4))
    if measured:
        points = ax.scatter([r["gains"]["fairness"] for r in measured], [r["gains"]["privacy"] for r in measured],
                            c=[100 * r["perplexity_change"] for r in measured], cmap="viridis")
        fig.colorbar(points, ax=ax, label="perplexity change (%)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("gain in fairness awareness (dev)")
    ax.set_ylabel("gain in privacy awareness (dev)")
    ax.set_title(f"dean tune: {len(trials)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["CONTRASTIVE", "Objective", "Setting", "TuneSpace", "VARIANTS", "choose", "split_questions", "tune"]

