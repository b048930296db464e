"""The before/after viewer: one self-contained HTML page (`flips.html`) with every question whose label flipped
between the baseline and another setting, the two answers side by side and both labels (the judge's, and the
careful reader's once a reading was imported)."""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..io import atomic_write_text
from .answers import by_question, settings_of

VIEWER_FILE = "flips.html"
MARK = "dean_hf flips viewer"


def check_ours(path: Path, marker: str) -> None:
    """Raise DeanError when `path` exists and does not carry `marker` (a file dean_hf did not write)."""
    from ..errors import DeanError, quote

    if path.exists() and marker not in path.read_text(encoding="utf-8", errors="replace")[:4000]:
        raise DeanError(f"{quote(str(path))} exists and was not written by dean_hf: it is left as it is. Pick another "
                        "folder.")


def template(name: str) -> str:
    """A file of dean_hf/eval/templates (packaged with the wheel)."""
    return resources.files("dean_hf.eval").joinpath("templates", name).read_text(encoding="utf-8")


def flips(rows: Sequence[Mapping[str, Any]], reader: Optional[Mapping[tuple[str, str], str]] = None
          ) -> list[dict[str, Any]]:
    """Every (setting, question) whose judge label or reader label differs from the baseline's, in question order.

    `reader` maps (setting, question_id) to the careful reader's label."""
    reader = reader or {}
    settings = settings_of(rows)
    out = []
    for qid, answers in by_question(rows).items():
        base = answers.get(settings[0])
        if base is None:
            continue
        for setting in settings[1:]:
            other = answers.get(setting)
            if other is None:
                continue
            judge = (base["judge"], other["judge"])
            read = (reader.get((settings[0], qid)), reader.get((setting, qid)))
            judge_flip = None not in judge and judge[0] != judge[1]
            reader_flip = None not in read and read[0] != read[1]
            if judge_flip or reader_flip:
                out.append({"baseline": settings[0], "setting": setting, "question_id": qid,
                            "dimension": base["dimension"], "question": base["question"], "before": base["answer"],
                            "after": other["answer"], "judge": list(judge), "reader": list(read)})
    return out


def _labels(judge: Optional[str], reader: Optional[str]) -> str:
    def badge(label: Optional[str]) -> str:
        return f'<span class="badge label-{label}">{label}</span>' if label else '<span class="badge">&ndash;</span>'
    return f'<span class="muted">judge</span> {badge(judge)} <span class="muted">reader</span> {badge(reader)}'


def render_viewer(rows: Sequence[Mapping[str, Any]], reader: Optional[Mapping[tuple[str, str], str]] = None,
                  title: str = "Flipped answers") -> str:
    """The viewer's HTML (no network, no script)."""
    flipped = flips(rows, reader)
    settings = settings_of(rows)
    e = html.escape
    parts = []
    for setting in settings[1:]:
        for dim in dict.fromkeys(r["dimension"] for r in rows):
            sub = [f for f in flipped if f["setting"] == setting and f["dimension"] == dim]
            parts.append(f"<h2>{e(dim)}: {e(settings[0])} &rarr; {e(setting)} ({len(sub)} flipped)</h2>")
            if not sub:
                continue
            parts.append(f"<table><tr><th>question</th><th>{e(settings[0])}</th><th>{e(setting)}</th></tr>")
            for f in sub:
                parts.append(
                    f'<tr id="{e(setting)}-{e(f["question_id"])}"><td><span class="question">{e(f["question"])}</span>'
                    f'<br><span class="muted">{e(f["question_id"])}</span></td>'
                    f'<td class="answer">{e(f["before"])}<br>{_labels(f["judge"][0], f["reader"][0])}</td>'
                    f'<td class="answer">{e(f["after"])}<br>{_labels(f["judge"][1], f["reader"][1])}</td></tr>')
            parts.append("</table>")
    subtitle = (f"baseline {settings[0]}; {len(flipped)} flips"
                + ("" if reader else " (no reading imported yet)"))
    page = template("viewer.html")
    for key, value in (("__STYLE__", template("style.css")), ("__TITLE__", e(title)), ("__SUBTITLE__", e(subtitle)),
                       ("__BODY__", "\n".join(parts))):
        page = page.replace(key, value)
    return page


def write_viewer(run_dir: str | Path, rows: Sequence[Mapping[str, Any]],
                 reader: Optional[Mapping[tuple[str, str], str]] = None) -> Optional[Path]:
    """Write `flips.html` into `run_dir` (None, and nothing written, when the run has a single setting)."""
    if len(settings_of(rows)) < 2:
        return None
    path = Path(run_dir) / VIEWER_FILE
    check_ours(path, MARK)
    return atomic_write_text(path, render_viewer(rows, reader))


def save_run_answers(run_dir: str | Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write a run's `answers.jsonl` and, when it compares settings, its `flips.html`; returns the files written
    ("answers", and "viewer" when there is one)."""
    from .answers import ANSWERS_FILE, write_answers

    files = {"answers": write_answers(Path(run_dir) / ANSWERS_FILE, rows)}
    viewer = write_viewer(run_dir, rows)
    if viewer:
        files["viewer"] = viewer
    return files


def answers_note(files: Mapping[str, Path]) -> str:
    """The report's sentence pointing to the run's answers and its viewer."""
    note = (f"Every answer with its judge label: `{files['answers'].name}` (`dean label` makes a blind reading sheet "
            "of it; `dean eval --rejudge` judges it again).")
    if "viewer" in files:
        note += f" Flipped answers side by side: [{files['viewer'].name}]({files['viewer'].name})."
    return note
