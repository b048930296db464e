"""Careful reading, blind: a sheet a person labels in a browser (or a spreadsheet), and the import of their labels.

`make_sheet(run)` reads the run's answers.jsonl and writes `run/reading/sheet.html` (self-contained: inline CSS and
script, no network) and `run/reading/sheet.csv`, the same answers in the same shuffled order. Each item is one
distinct answer text to one question; answers that several settings gave word for word share an item, so one
label covers them. Nothing in the sheet names a setting: item ids are hashes of the sheet, the question and the
answer text. The key that unblinds them (item -> settings, dimension, question id) is kept in
`run/reading_key.json`, outside the folder handed to readers.

`import_labels(run, labels)` checks the labels against the key and adds the careful-reading figures to the run's
report (see `careful.py`)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import DeanError, quote
from ..io import atomic_write_json, atomic_write_text, is_regular_file, read_json
from .answers import ANSWERS_FILE, by_question, file_digest, read_answers, settings_of
from .judges import LABELS
from .viewer import check_ours, template

SHEET_DIR = "reading"
KEY_FILE = "reading_key.json"
CSV_COLUMNS = ("item", "dimension", "question", "answer", "label", "sheet")
_MARK = "dean_hf reading key"


def _hash(*parts: Any, size: int = 12) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).hexdigest()[:size]


def _sample(rows: list[dict[str, Any]], *, read: Optional[int], seed: int, all_answers: bool) -> dict[str, Any]:
    """Per dimension: the questions to read, the candidates they were drawn from, and the questions every setting
    answered word for word alike that enter the paired change as ties (all of them, or, when only a sample of the
    candidates is read, a seeded sample at the same rate)."""
    questions = by_question(rows)
    out: dict[str, Any] = {}
    for dim in dict.fromkeys(r["dimension"] for r in rows):
        qids = [q for q, a in questions.items() if next(iter(a.values()))["dimension"] == dim]
        differ = [q for q in qids if len({r["answer"] for r in questions[q].values()}) > 1]
        candidates = qids if all_answers else differ
        selected = candidates
        if read is not None and read < len(candidates):
            chosen = set(random.Random(f"{seed}:{dim}").sample(candidates, read))
            selected = [q for q in candidates if q in chosen]
        alike = [q for q in qids if q not in set(candidates)]
        rate = len(selected) / len(candidates) if candidates else 1.0
        ties = alike if rate == 1.0 else \
            sorted(random.Random(f"{seed}:ties:{dim}").sample(alike, round(rate * len(alike))), key=qids.index)
        out[dim] = {"questions": qids, "candidates": candidates, "read": selected, "ties": ties}
    return out


def make_sheet(run_dir: str | Path, *, read: Optional[int] = None, seed: int = 0,
               all_answers: bool = False) -> dict[str, Path]:
    """Write the blind reading sheet of a run (see the module docstring); returns {"sheet", "csv", "key"}.

    By default only the questions whose answers differ as text between the baseline and another setting are read
    (identical answers cannot flip); `all_answers=True` reads every question (rates, not only changes). `read=N`
    samples N of those questions per dimension, seeded by `seed` (which also shuffles the order)."""
    if read is not None and (isinstance(read, bool) or not isinstance(read, int) or read < 1):
        raise DeanError(f"read={read!r}: expected a positive number of questions per dimension (or None for all).")
    run = Path(run_dir)
    rows = read_answers(run)
    digest = file_digest(run / ANSWERS_FILE)
    sheet = _hash(digest, read, seed, all_answers)
    sample = _sample(rows, read=read, seed=seed, all_answers=all_answers)
    questions = by_question(rows)
    items: list[dict[str, Any]] = []
    for dim, part in sample.items():
        for qid in part["read"]:
            texts: dict[str, list[str]] = {}
            for setting, row in questions[qid].items():
                texts.setdefault(row["answer"], []).append(setting)
            for answer, settings in texts.items():
                items.append({"id": _hash(sheet, qid, answer, size=10), "dimension": dim, "question_id": qid,
                              "question": questions[qid][settings[0]]["question"], "answer": answer,
                              "settings": settings})
    random.Random(f"{seed}:order").shuffle(items)
    key = {"sheet": sheet, "answers_sha256": digest, "settings": settings_of(rows),
           "options": {"read": read, "seed": seed, "all_answers": all_answers},
           "sample": {d: {k: v for k, v in part.items() if k != "questions"} for d, part in sample.items()},
           "items": {it["id"]: {"dimension": it["dimension"], "question_id": it["question_id"],
                                "settings": it["settings"]} for it in items}}
    blind = [{"id": it["id"], "dimension": it["dimension"], "question": it["question"], "answer": it["answer"]}
             for it in items]
    page = template("sheet.html").replace("__STYLE__", template("style.css"))
    page = page.replace("__SHEET_DATA__", json.dumps({"sheet": sheet, "items": blind}, ensure_ascii=False)
                        .replace("<", "\\u003c"))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows([it["id"], it["dimension"], it["question"], it["answer"], "", sheet] for it in blind)
    keys = _read_keys(run) if is_regular_file(run / KEY_FILE) else {"written_by": _MARK, "sheets": {}}
    keys["sheets"][sheet] = key
    folder = run / SHEET_DIR
    check_ours(folder / "sheet.html", "<!-- blind reading sheet -->")
    check_ours(folder / "sheet.csv", ",".join(CSV_COLUMNS))
    return {"sheet": atomic_write_text(folder / "sheet.html", page),
            "csv": atomic_write_text(folder / "sheet.csv", table.getvalue()),
            "key": atomic_write_json(run / KEY_FILE, keys)}


def _read_keys(run: Path) -> dict[str, Any]:
    path = run / KEY_FILE
    if not is_regular_file(path):
        raise DeanError(f"{quote(str(path))} does not exist: make a reading sheet first (`dean label {run}`), then "
                        "import its labels.")
    keys = read_json(path, "reading key")
    if keys.get("written_by") != _MARK or not isinstance(keys.get("sheets"), dict):
        raise DeanError(f"{quote(str(path))} is not a reading key written by dean_hf: it is left as it is.")
    return keys


def read_labels_file(path: str | Path) -> dict[str, Any]:
    """Labels from the sheet's JSON export ({"sheet": id, "labels": {item: label}}) or from its CSV with the label
    column filled (empty cells are unread)."""
    path = Path(path)
    if not is_regular_file(path):
        raise DeanError(f"labels file {quote(str(path))} does not exist: pass the JSON the sheet exported or the "
                        "filled CSV.")
    if path.suffix.lower() != ".csv":
        return read_json(path, "labels file")
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DeanError(f"labels file {quote(str(path))} is not a readable CSV ({err}).") from None
    missing = [c for c in ("item", "label", "sheet") if rows and c not in rows[0]]
    if missing or not rows:
        raise DeanError(f"labels file {quote(str(path))} lacks the columns {missing or list(CSV_COLUMNS)}: fill the "
                        "label column of the sheet.csv `dean label` wrote and keep its other columns.")
    sheets = {r["sheet"] for r in rows}
    if len(sheets) != 1:
        raise DeanError(f"labels file {quote(str(path))} mixes rows of sheets {sorted(sheets)}: one file per sheet.")
    return {"sheet": sheets.pop(), "labels": {r["item"]: r["label"] for r in rows}}


_SHORT = {"a": "aware", "u": "unaware", "c": "unclear"}


def check_labels(run_dir: str | Path, labels: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the sheet's key, item -> label) after checking `labels` against the run's key: the sheet must be one of
    this run's, made from its current answers, every item id known, every label aware, unaware or unclear (a, u,
    c; empty = unread). Raises DeanError otherwise."""
    run = Path(run_dir)
    keys = _read_keys(run)
    if not isinstance(labels, Mapping) or not isinstance(labels.get("labels"), Mapping):
        raise DeanError('labels: expected {"sheet": "<sheet id>", "labels": {"<item id>": "aware", ...}}, as the '
                        "sheet exports them.")
    sheet = labels.get("sheet")
    if sheet not in keys["sheets"]:
        raise DeanError(f"labels are for sheet {quote(sheet)}, which is not a sheet of {quote(str(run))} (its sheets: "
                        f"{sorted(keys['sheets'])}): import them into the run their sheet was made from.")
    key = keys["sheets"][sheet]
    if file_digest(run / ANSWERS_FILE) != key["answers_sha256"]:
        raise DeanError(f"{quote(str(run / ANSWERS_FILE))} changed since sheet {sheet} was made: its labels no longer "
                        "match the answers. Make a new sheet and read it.")
    unknown = [i for i in labels["labels"] if i not in key["items"]]
    if unknown:
        raise DeanError(f"labels name {len(unknown)} item(s) that sheet {sheet} does not hold (e.g. "
                        f"{quote(unknown[0])}): they belong to another sheet or were edited.")
    out = {}
    for item, value in labels["labels"].items():
        text = value.strip().lower() if isinstance(value, str) else value
        text = _SHORT.get(text, text)
        if text in ("", None):
            continue
        if text not in LABELS:
            raise DeanError(f"item {quote(item)} has label {quote(value)}; expected one of {list(LABELS)} (or a, u, c; "
                            "empty for unread).")
        out[item] = text
    return key, out


def import_labels(run_dir: str | Path, labels: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Unblind a reader's labels with the run's key and add the careful-reading figures to the run's report
    (report.md/.json, or tune.md/.json) and to `reading.json`; refresh the flips viewer with the reader's labels.
    `labels` is the sheet's export (a dict) or a path to it (JSON, or the filled CSV). Nothing is written when
    the labels do not match the key. Returns the figures, with the paths written under "files"."""
    from .careful import reading_figures, write_reading

    if isinstance(labels, (str, Path)):
        labels = read_labels_file(labels)
    key, checked = check_labels(run_dir, labels)
    rows = read_answers(run_dir)
    figures = reading_figures(rows, key, checked)
    figures["files"] = write_reading(run_dir, rows, key, checked, figures)
    return figures
