"""The careful-reading figures of a run, from a reader's unblinded labels, and where they are written.

Per compared setting and dimension: the reader's rates (only when every question of the dimension was read), the
paired change with the baseline by the reader's labels (exact McNemar on the flips, paired bootstrap interval,
detectable change, Holm over dimensions), the automatic judge's agreement with the reader on this run's answers,
and judge-corrected rates that use that agreement as the judge's calibration."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import DeanError, quote
from ..io import atomic_write_text, is_regular_file, read_json
from .answers import ANSWERS_FILE, by_question
from .figures import compare_with_baseline, rate_figures
from .stats import JudgeAgreement, as_outcomes, corrected_rate
from .viewer import VIEWER_FILE, check_ours, write_viewer

READING_FILE = "reading.json"
_START, _END = "<!-- careful reading -->", "<!-- /careful reading -->"
_REPORT_MARK = "dean_hf report"


def unblind(key: Mapping[str, Any], labels: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """(setting, question_id) -> the reader's label, for every labelled item."""
    return {(s, key["items"][item]["question_id"]): label for item, label in labels.items()
            for s in key["items"][item]["settings"]}


def _paired_outcomes(questions, reader, base, setting, part) -> tuple[list, list, dict[str, int]]:
    """The baseline's and the setting's outcomes on the questions compared (those read, and identical answers as
    ties), and how many questions were read, tied unread, or left out unread."""
    before, after = [], []
    counts = {"read": 0, "ties": 0, "unread": 0}
    for qid in [q for q in part["questions"] if q in set(part["read"]) | set(part["ties"])]:
        answers = questions[qid]
        if base not in answers or setting not in answers:
            continue
        labels = (reader.get((base, qid)), reader.get((setting, qid)))
        if None not in labels:
            counts["read"] += 1
            b, a = as_outcomes(labels)
        elif answers[base]["answer"] == answers[setting]["answer"]:
            counts["ties"] += 1  # identical text cannot flip: a tie, whatever its label would be
            b = a = 0
        else:
            counts["unread"] += 1
            continue
        before.append(b)
        after.append(a)
    return before, after, counts


def reading_figures(rows: Sequence[Mapping[str, Any]], key: Mapping[str, Any],
                    labels: Mapping[str, str]) -> dict[str, Any]:
    """Every careful-reading figure (see the module docstring) as a JSON-ready dict."""
    questions = by_question(rows)
    reader = unblind(key, labels)
    settings, base = key["settings"], key["settings"][0]
    sample = {d: {**part, "questions": [q for q, a in questions.items()
                                        if next(iter(a.values()))["dimension"] == d]}
              for d, part in key["sample"].items()}
    rates: dict[str, dict[str, Any]] = {}
    for s in settings:
        rates[s] = {}
        for d, part in sample.items():
            answered = [q for q in part["questions"] if s in questions[q]]
            got = [reader.get((s, q)) for q in answered]
            rates[s][d] = rate_figures(as_outcomes(got)) if None not in got else \
                {"rate": None, "why": f"{got.count(None)} of {len(got)} answers unread: rates need every question "
                                      "read (`dean label --all`)"}
    pairs, counts = {}, {}
    for s in settings[1:]:
        pairs[s], counts[s] = {}, {}
        for d, part in sample.items():
            before, after, counts[s][d] = _paired_outcomes(questions, reader, base, s, part)
            pairs[s][d] = (before, after)
    paired = compare_with_baseline(pairs)
    for s, dims in paired.items():
        for d, c in dims.items():
            c.update(counts[s][d])
            if c["ties"]:  # the tied questions' own labels are unknown: only the change is measured
                c["before"] = c["after"] = None
    agreement = {}
    for d in sample:
        read = [(labels[i], questions[k["question_id"]][k["settings"][0]]["judge"]) for i, k in key["items"].items()
                if i in labels and k["dimension"] == d]
        read = [(r, j) for r, j in read if j is not None]
        if read:
            agreement[d] = JudgeAgreement.from_labels(d, [r for r, _ in read], [j for _, j in read],
                                                      source=f"careful reading of this run (sheet {key['sheet']})")
    corrected: dict[str, dict[str, Any]] = {}
    for s in settings:
        corrected[s] = {}
        for d, a in agreement.items():
            judge = [questions[q][s]["judge"] for q in sample[d]["questions"] if s in questions[q]]
            if a.n and None not in judge:
                corrected[s][d] = corrected_rate(as_outcomes(judge), a).to_dict()
    return {"sheet": key["sheet"], "baseline": base, "settings": settings, "options": key["options"],
            "items": len(key["items"]), "read": len(labels), "unread": len(key["items"]) - len(labels),
            "rates": rates, "paired": paired, "judge_agreement": {d: a.to_dict() for d, a in agreement.items()},
            "corrected": corrected,
            "labels": [{"item": i, **key["items"][i], "reader": label} for i, label in labels.items()]}


def _num(x: Optional[float], fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _rate(entry: Mapping[str, Any]) -> str:
    if entry.get("rate") is None:
        return "needs `--all`"
    return f"{_num(entry['rate'])} [{_num(entry['ci95'][0], '.2f')}, {_num(entry['ci95'][1], '.2f')}] " \
           f"(n={entry['aware'] + entry['unaware']})"


def _corrected(c: Mapping[str, Any]) -> str:
    if c["corrected"] is None:
        return "n/a (the judge does no better than chance on this reading)"
    return f"{_num(c['corrected'])} [{_num(c['ci95'][0], '.2f')}, {_num(c['ci95'][1], '.2f')}]"


def markdown(figures: Mapping[str, Any], viewer: bool) -> str:
    """The report's careful-reading section."""
    base = figures["baseline"]
    lines = [_START, "## Careful reading", "",
             f"A reader labelled {figures['read']} of the {figures['items']} answers of blind sheet "
             f"`{figures['sheet']}` ({figures['unread']} unread), without knowing which setting wrote which. Answers "
             "identical as text in two settings cannot flip: they enter the paired change as ties.", ""]
    for s, dims in figures["paired"].items():
        lines += [f"### {base} -> {s}, by careful reading", "",
                  f"| dimension | reader's rate, {base} | reader's rate, {s} | change [paired 95% CI] | flips | "
                  "McNemar p (Holm over dimensions) | detectable change | questions: read / ties / unread |",
                  "|---|---|---|---|---|---|---|---|"]
        for d, c in dims.items():
            lines.append(f"| {d} | {_rate(figures['rates'][base][d])} | {_rate(figures['rates'][s][d])} | "
                         f"{_num(c['difference'], '+.3f')} [{_num(c['ci95'][0], '+.2f')}, {_num(c['ci95'][1], '+.2f')}]"
                         f" | +{c['improved']}/-{c['worsened']} | {_num(c['p_value'], '.3g')} "
                         f"({_num(c['p_adjusted'], '.3g')}) | {_num(c['detectable'])} | {c['read']} / {c['ties']} / "
                         f"{c['unread']} |")
        lines.append("")
    if len(figures["settings"]) == 1:
        s = figures["settings"][0]
        lines += ["| dimension | reader's rate [95% CI] |", "|---|---|"]
        lines += [f"| {d} | {_rate(e)} |" for d, e in figures["rates"][s].items()] + [""]
    if figures["judge_agreement"]:
        lines += ["### The automatic judge against the reader, on this run's answers", "",
                  "| dimension | n | accuracy | kappa | sensitivity | specificity |", "|---|---|---|---|---|---|"]
        lines += [f"| {d} | {a['n']} | {_num(a['accuracy'])} | {_num(a['kappa'])} | {_num(a['sensitivity'])} | "
                  f"{_num(a['specificity'])} |" for d, a in figures["judge_agreement"].items()] + [""]
        rows = [f"| {s} | {d} | {_num(c['raw'])} | {_corrected(c)} |"
                for s, dims in figures["corrected"].items() for d, c in dims.items()]
        if rows:
            lines += ["### Judge-corrected rates, calibrated on this reading", "",
                      "| setting | dimension | judge's rate | corrected [95% CI] |", "|---|---|---|---|"] + rows + [""]
    lines += ["Rates are aware / (aware + unaware) with 95% Wilson intervals. The change is the paired difference "
              "on the same questions; McNemar's exact test counts the flips; a change under the detectable one is "
              "below what this reading can tell apart (80% power, 5% level). The judge's agreement is measured on "
              "the answers read (each distinct answer once, 'unclear' readings left out); the corrected rates undo "
              "the judge's error measured that way (Rogan-Gladen, with the uncertainty of the calibration). Figures "
              f"for scripts: `{READING_FILE}`."]
    if viewer:
        lines.append(f"Flipped answers with both labels: [{VIEWER_FILE}]({VIEWER_FILE}).")
    return "\n".join(lines + ["", _END, ""])


def _clean(value: Any) -> Any:
    """JSON-ready: NaN as null, tuples as lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _report_of(run: Path) -> Optional[tuple[Path, Path]]:
    """The run's own report (report or tune, .json and .md) that refers to its answers.jsonl, if any."""
    for name in ("report", "tune"):
        json_path, md_path = run / f"{name}.json", run / f"{name}.md"
        if is_regular_file(json_path) and is_regular_file(md_path):
            data = read_json(json_path, "report")
            if data.get("answers") == ANSWERS_FILE and data.get("written_by") == _REPORT_MARK:
                return json_path, md_path
    return None


def write_reading(run_dir: str | Path, rows: Sequence[Mapping[str, Any]], key: Mapping[str, Any],
                  labels: Mapping[str, str], figures: Mapping[str, Any]) -> dict[str, Path]:
    """Write `reading.json`, the careful-reading section of the run's report (or `reading.md` when the run has no
    dean_hf report) and the flips viewer with the reader's labels; every text is built before the first write."""
    run = Path(run_dir)
    clean = _clean({k: v for k, v in figures.items() if k != "files"})
    viewer = len(key["settings"]) > 1
    section = markdown(clean, viewer)
    report = _report_of(run)
    writes: list[tuple[str, Path, str]] = [("reading", run / READING_FILE, json.dumps(clean, indent=2) + "\n")]
    if report:
        data = read_json(report[0], "report")
        data["careful_reading"] = {k: v for k, v in clean.items() if k != "labels"} | {"file": READING_FILE}
        md = report[1].read_text(encoding="utf-8")
        if _REPORT_MARK not in md[:2000]:
            raise DeanError(f"{quote(str(report[1]))} is not a dean_hf report: it is left as it is.")
        start, end = md.find(_START), md.find(_END)
        md = md[:start] + section + md[end + len(_END):].lstrip("\n") if 0 <= start < end else \
            md.rstrip("\n") + "\n\n" + section
        writes += [("report_json", report[0], json.dumps(data, indent=2, default=str) + "\n"),
                   ("report", report[1], md)]
    else:
        writes.append(("report", run / "reading.md", f"<!-- dean_hf report -->\n# {run.name}\n\n" + section))
    check_ours(run / READING_FILE, '"sheet":')  # never replace a reading.json / reading.md dean_hf did not write
    if not report:
        check_ours(run / "reading.md", "<!-- dean_hf report -->")
    files = {name: atomic_write_text(path, text) for name, path, text in writes}
    if viewer:
        files["viewer"] = write_viewer(run, rows, unblind(key, labels))
    return files
