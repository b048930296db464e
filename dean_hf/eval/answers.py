"""`answers.jsonl`: every answer an evaluation measured, one JSON object per line, so that a report can be audited,
re-judged and read by a person.

    {"setting": "before", "dimension": "fairness", "question_id": "fairness-0007", "question": "...",
     "answer": "...", "judge": "aware"}

`setting` names the model state that answered; the first setting in the file is the baseline, every other one is
compared with it on the same questions. `question_id` is the same for one question in every setting of a run.
`judge` is the automatic judge's label (aware, unaware, unclear) or null when no judge ran.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import DeanError, quote
from ..io import atomic_write_text, is_regular_file, parse_json
from .judges import LABELS, Judge

ANSWERS_FILE = "answers.jsonl"
FIELDS = ("setting", "dimension", "question_id", "question", "answer", "judge")


def question_id(dimension: str, index: int) -> str:
    """The id of a dimension's `index`-th question (0-based): 'fairness-0007'."""
    return f"{dimension}-{index:04d}"


def answer_rows(setting: str, answers: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of one setting from its judged records per dimension (each {"question", "answer", "label"}, in the
    order of the questions)."""
    return [{"setting": setting, "dimension": dim, "question_id": question_id(dim, i), "question": r["question"],
             "answer": r["answer"], "judge": r.get("label")}
            for dim, records in answers.items() for i, r in enumerate(records)]


def check_rows(rows: Sequence[Mapping[str, Any]], what: str = "answers") -> None:
    """Raise DeanError unless `rows` follow the schema: every field there, labels known, one row per (setting,
    question_id), and each question_id the same question and dimension in every setting."""
    seen: set[tuple[str, str]] = set()
    questions: dict[str, tuple[str, str]] = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, Mapping):
            raise DeanError(f"{what}: line {n} is not a JSON object.")
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise DeanError(f"{what}: line {n} lacks {missing}; expected the fields {list(FIELDS)}.")
        if not all(isinstance(row[f], str) for f in FIELDS[:5]):
            raise DeanError(f"{what}: line {n}: setting, dimension, question_id, question and answer must be text.")
        if row["judge"] is not None and row["judge"] not in LABELS:
            raise DeanError(f"{what}: line {n} has judge label {quote(row['judge'])}; expected one of "
                            f"{list(LABELS)} or null.")
        key = (row["setting"], row["question_id"])
        if key in seen:
            raise DeanError(f"{what}: line {n} repeats question {row['question_id']!r} for setting "
                            f"{row['setting']!r}; each setting answers each question once.")
        seen.add(key)
        same = questions.setdefault(row["question_id"], (row["dimension"], row["question"]))
        if same != (row["dimension"], row["question"]):
            raise DeanError(f"{what}: line {n}: question_id {row['question_id']!r} names another question or "
                            "dimension than in an earlier line; a question id must mean one question in every setting.")


def write_answers(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write `rows` (see the module docstring) to `path` as JSON lines, atomically; returns the path."""
    check_rows(rows, f"answers for {quote(str(path))}")
    if Path(path).exists():  # only an answers file is ever replaced
        try:
            read_answers(path)
        except DeanError:
            raise DeanError(f"{quote(str(path))} exists and is not an answers file of dean_hf: it is left as it is. "
                            "Pick another output folder.") from None
    text = "".join(json.dumps({f: row[f] for f in FIELDS}, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(path, text)


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an answers.jsonl (a file, or a run folder holding one), checked against the schema."""
    path = Path(path)
    if path.is_dir():
        path = path / ANSWERS_FILE
    if not is_regular_file(path):
        raise DeanError(f"{quote(str(path))} does not exist: a run folder of `dean eval`, `dean demo` or `dean tune` "
                        f"holds an {ANSWERS_FILE}; pass that folder.")
    what = quote(str(path))
    rows = [parse_json(line, f"line {n} of {what}") for n, line in
            enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if not rows:
        raise DeanError(f"{what} holds no answers.")
    check_rows(rows, what)
    return rows


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (ties a reading key to the answers it was made from)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def settings_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The settings in order of first appearance: the first is the baseline."""
    return list(dict.fromkeys(r["setting"] for r in rows))


def by_question(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """question_id -> setting -> row, questions in order of first appearance."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["question_id"], {})[r["setting"]] = r
    return out


def rejudge_rows(rows: Sequence[Mapping[str, Any]], judge: Judge,
                 cache: Optional[dict[tuple[str, str, str], str]] = None) -> list[dict[str, Any]]:
    """The same rows with `judge`'s labels; an answer given in several settings is judged once."""
    cache = {} if cache is None else cache
    out = []
    for r in rows:
        key = (r["dimension"], r["question"], r["answer"])
        if key not in cache:
            cache[key] = judge.judge(r["dimension"], r["question"], r["answer"])
        out.append({**r, "judge": cache[key]})
    return out
