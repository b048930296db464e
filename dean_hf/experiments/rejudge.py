"""`dean eval --rejudge RUN`: judge a run's kept answers again with another judge, without generating again, and
write a new report (rates, judge-corrected rates, paired changes with the baseline) into another folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DeanError, quote
from ..eval.agreement import agreement_of, judge_note
from ..eval.answers import ANSWERS_FILE, by_question, read_answers, rejudge_rows, settings_of
from ..eval.figures import compare_with_baseline, rate_figures
from ..eval.judges import Judge
from ..eval.report import plot_awareness, write_report
from ..eval.stats import as_outcomes, corrected_rate
from ..eval.viewer import answers_note, save_run_answers
from .common import change_text, corrected_text, rate_text


def _outcomes(questions, setting, qids):
    return as_outcomes([questions[q][setting]["judge"] for q in qids])


def rejudge_run(run_dir: str | Path, judge: Judge, out_dir: str | Path) -> dict[str, Path]:
    """Judge every answer of `run_dir`'s answers.jsonl with `judge` and write answers.jsonl, report.json/.md (and
    flips.html when the run compares settings) into `out_dir`, which must be another folder."""
    run, out = Path(run_dir), Path(out_dir)
    rows = read_answers(run)
    if out.resolve() == run.resolve():
        raise DeanError(f"--out {quote(str(out))} is the run folder itself: its answers and report are kept as "
                        "they are; pick another output folder for the re-judged report.")
    rows = rejudge_rows(rows, judge)
    settings = settings_of(rows)
    questions = by_question(rows)
    dims = list(dict.fromkeys(r["dimension"] for r in rows))
    agreement = agreement_of(judge) or {}
    figures: dict[str, dict[str, Any]] = {}
    for s in settings:
        figures[s] = {}
        for d in dims:
            outcomes = _outcomes(questions, s, [q for q, a in questions.items() if s in a and a[s]["dimension"] == d])
            figures[s][d] = rate_figures(outcomes)
            if d in agreement:
                figures[s][d]["corrected"] = corrected_rate(outcomes, agreement[d]).to_dict()
    pairs = {}
    for s in settings[1:]:
        pairs[s] = {}
        for d in dims:
            qids = [q for q, a in questions.items() if settings[0] in a and s in a and a[s]["dimension"] == d]
            pairs[s][d] = (_outcomes(questions, settings[0], qids), _outcomes(questions, s, qids))
    paired = compare_with_baseline(pairs)
    kept = save_run_answers(out, rows)
    rates = [[s, d, rate_text(f), corrected_text(f)] for s in settings for d, f in figures[s].items()]
    tables = [("Awareness by the judge", ["setting", "dimension", "judge's rate [95% CI]", "corrected [95% CI]"],
               rates)]
    if paired:
        tables.append((f"Paired change with the baseline ({settings[0]}), same questions",
                       ["setting", "dimension", "change [paired 95% CI]; flips; McNemar p (Holm over dimensions)",
                        "detectable change", "verdict"],
                       [[s, d, change_text({"paired": c}), f"{c['detectable']:.3f}", c["verdict"]]
                        for s, dims_ in paired.items() for d, c in dims_.items()]))
    plot = plot_awareness([{"setting": s, "dimension": d, **f} for s in settings for d, f in figures[s].items()],
                          out / "awareness.png", "awareness by the judge")
    data = {"rejudged_from": str(run / ANSWERS_FILE), "judge": judge.name, "baseline": settings[0],
            "settings": settings, "awareness": figures, "paired": paired, "answers": ANSWERS_FILE,
            "judge_agreement": {d: a.to_dict() for d, a in agreement.items()}}
    notes = [f"Re-judged from {run / ANSWERS_FILE} without generating again.", judge_note(judge), answers_note(kept)]
    return write_report(out, "report", data, title=f"Re-judged by {judge.name}", tables=tables, notes=notes,
                        plots=[plot]) | kept
