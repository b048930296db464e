"""Data -> examples: load prompt/response records and tokenize them with the loss on the response only.

Every way of naming data goes through `load_records` (records) and `as_examples` (tokenized examples):
'embedded:NAME' (the files shipped in dean_hf/resources), a CSV/JSONL/JSON/Parquet file, a saved `datasets`
folder, a `datasets.Dataset`/`DatasetDict`, a list of dict records or a Hub data set id.
"""

from __future__ import annotations

import codecs
import os
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import DeanError, quote
from .logging import get_logger, progress_bars
from .logging import show_progress as _bars_wanted

logger = get_logger(__name__)
IGNORE_INDEX = -100
EMBEDDED_PREFIX = "embedded:"
_TEXT_SUFFIXES = (".csv", ".jsonl", ".json")
_CHUNK = 1 << 20


class Examples(list):
    """A list of tokenized examples (`input_ids`, `labels`) with counts of what was cut or dropped."""

    num_truncated: int = 0
    num_dropped: int = 0


def embedded_names() -> list[str]:
    """The data sets shipped with dean_hf, usable as 'embedded:NAME' (fairness, privacy, general, eval_*)."""
    folder = resources.files("dean_hf").joinpath("resources")
    return sorted(f.name[:-len(".jsonl")] for f in folder.iterdir() if f.name.endswith(".jsonl"))


def resolve_source(text: str) -> str | Path:
    """The path of 'embedded:NAME' (a data file shipped with dean_hf); any other source is returned unchanged."""
    if not isinstance(text, str) or not text.startswith(EMBEDDED_PREFIX):
        return text
    name, names = text[len(EMBEDDED_PREFIX):], embedded_names()
    if name not in names:
        raise DeanError(f"{text!r} names no embedded data set: choose one of "
                        f"{', '.join(EMBEDDED_PREFIX + n for n in names)}.")
    return Path(str(resources.files("dean_hf").joinpath(f"resources/{name}.jsonl")))


def _first_bad_utf8_byte(path: Path) -> Optional[int]:
    """Offset of the first byte that is not valid UTF-8 (a truncated last character counts), else None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                return offset - pending + err.start
            if not chunk:
                return None
            offset += len(chunk)


def _check_utf8(path: Path) -> None:
    """A DeanError naming the file, its apparent encoding and the fix if `path` is not UTF-8 text."""
    bad = _first_bad_utf8_byte(path)
    if bad is None:
        return
    with path.open("rb") as f:
        f.seek(max(0, bad - 32 * 1024))
        window = f.read(64 * 1024)
        f.seek(bad)
        byte = f.read(1)
    guess = None
    try:
        import charset_normalizer  # ships with `requests`; optional here
    except ImportError:
        pass
    else:
        best = charset_normalizer.from_bytes(window).best()
        guess = best.encoding if best is not None else None
    found = f"it appears to be {guess}" if guess else "its encoding could not be recognised"
    how = (f"Path(p).write_text(Path(p).read_text(encoding={guess!r}), encoding='utf-8')" if guess else
           "read it with its own encoding and write it back with encoding='utf-8'")
    spreadsheet = "a spreadsheet's 'CSV UTF-8' format, or " if path.suffix.lower() == ".csv" else ""
    raise DeanError(f"data file {quote(str(path))} is not UTF-8 text ({found}; the first byte that is not UTF-8 is "
                    f"0x{byte.hex()} at offset {bad}). Re-save it as UTF-8: {spreadsheet}in Python {how}.")


def _load_source(source: Any, split: str):
    import datasets

    source = resolve_source(source)
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise DeanError(f"split {split!r} not in the data set; it has {list(source)}: pass split=...")
        return source[split]
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        if not all(isinstance(r, dict) for r in source):
            raise DeanError("records must be dicts with prompt and response keys.")
        return datasets.Dataset.from_list(list(source))
    if not isinstance(source, (str, os.PathLike)):
        raise DeanError(f"cannot load data from a {type(source).__name__}: pass records (a list of dicts), a CSV or "
                        "JSONL path, 'embedded:NAME', a saved `datasets` folder, a datasets.Dataset or a Hub data "
                        "set id.")
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise DeanError(f"data file {str(path)!r} does not exist.")
        if path.stat().st_size == 0:
            raise DeanError(f"data file {str(path)!r} is empty.")
        if suffix in _TEXT_SUFFIXES:
            _check_utf8(path)
        builder = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}[suffix]
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as err:  # datasets raises many types for a malformed file
            if "corresponds to no data" in str(err):
                raise DeanError(f"data file {str(path)!r} is empty: it has no rows.") from None
            raise DeanError(f"could not read {str(path)!r} as {builder}: {err}") from None
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:
            raise DeanError(f"{str(path)!r} is not a saved `datasets` folder ({err}).") from None
        return _load_source(loaded, split)
    if path.exists() or str(source).count("/") > 1:
        raise DeanError(f"cannot load {str(source)!r}: expected a .csv/.jsonl/.json/.parquet file, a saved `datasets` "
                        "folder, or a Hub data set id.")
    try:
        return datasets.load_dataset(str(source), split=split)
    except Exception as err:
        raise DeanError(f"could not load the Hub data set {str(source)!r} (split {split!r}): {err}. Offline? "
                        "Pass a local CSV/JSONL file instead.") from None


def load_records(source: Any, *, prompt_column: str = "prompt", response_column: Optional[str] = "response",
                 split: str = "train", n: Optional[int] = None, seed: int = 0, show_progress: bool = True):
    """A `datasets.Dataset` with `prompt` (and `response`) string columns from any supported source.

    `source` is 'embedded:NAME', a CSV/JSONL/JSON/Parquet path, a saved `datasets` folder, a
    `datasets.Dataset`/`DatasetDict` (`split` picks one), a list of dict records or a Hub data set id.
    `n` draws that many records with `seed` (shuffled); more than the data set holds is an error.
    `response_column=None` loads prompts only (evaluation questions). `show_progress=False`, or
    `dean_hf.logging.disable_progress_bars()`, silences the `datasets` bars while loading.
    """
    with nullcontext() if _bars_wanted(show_progress) else progress_bars(False):
        ds = _load_source(source, split)
    wanted = [prompt_column] + ([response_column] if response_column else [])
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DeanError(f"column(s) {missing} not found; the data has columns {ds.column_names}. "
                        "Pass prompt_column=/response_column= (CLI: --prompt-column/--response-column).")
    ds = ds.select_columns(wanted)
    renames = {prompt_column: "prompt", **({response_column: "response"} if response_column else {})}
    ds = ds.rename_columns({k: v for k, v in renames.items() if k != v})
    if len(ds) == 0:
        raise DeanError(f"the data set {_describe(source)} is empty.")
    for column in ds.column_names:
        bad = [i for i, v in enumerate(ds[column]) if not isinstance(v, str) or not v.strip()]
        if bad:
            value = ds[column][bad[0]]
            raise DeanError(f"{column} of row {bad[0]} is {value!r}: every {column} must be a non-empty string "
                            f"({len(bad)} row(s) are not). Clean the data or drop those rows.")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DeanError(f"n={n!r}: expected a positive number of samples.")
        if n > len(ds):
            raise DeanError(f"n={n} but the data set {_describe(source)} holds {len(ds)} rows: "
                            f"pass n <= {len(ds)}.")
        ds = ds.shuffle(seed=seed).select(range(n))
    return ds


def _is_tokenized(data: Any) -> bool:
    """True for a sequence of dicts that all have `input_ids` and `labels` (or a Dataset with those columns)."""
    columns = getattr(data, "column_names", None)
    if isinstance(columns, list):
        return "input_ids" in columns and "labels" in columns
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)) or not data:
        return False
    marked = [isinstance(r, Mapping) and "input_ids" in r and "labels" in r for r in data]
    if any(marked) and not all(marked):
        raise DeanError(f"example {marked.index(False)} has no 'input_ids'/'labels' while others do: pass either "
                        "tokenized examples or prompt/response records, not a mix.")
    return marked[0]


def as_examples(data: Any, tokenizer: Any, *, n: Optional[int] = None, seed: int = 0, chat_template: bool = True,
                max_length: int = 512, prompt_column: str = "prompt", response_column: str = "response",
                split: str = "train", show_progress: bool = True) -> Examples:
    """Tokenized examples (see `build_examples`) from anything `load_records` accepts.

    Already tokenized examples (dicts with `input_ids` and `labels`) are returned unchanged: `n`,
    `seed`, `chat_template`, `max_length` and the column names apply to records only.
    """
    if _is_tokenized(data):
        return data
    records = load_records(data, prompt_column=prompt_column, response_column=response_column, split=split, n=n,
                           seed=seed, show_progress=show_progress)
    return build_examples(records, tokenizer, chat_template=chat_template, max_length=max_length)


def _describe(source: Any) -> str:
    return repr(str(source)) if isinstance(source, (str, os.PathLike)) else f"({type(source).__name__})"


def has_chat_template(tokenizer: Any) -> bool:
    """True if the tokenizer defines a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: str, *, chat_template: bool = True) -> str:
    """The text a model is given for `prompt`: its chat template with the generation prompt, or `prompt`."""
    if chat_template and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def _encode_pair(tokenizer: Any, prompt: str, response: str, chat_template: bool) -> tuple[list[int], list[int]]:
    if chat_template:
        prompt_text = format_prompt(tokenizer, prompt)
        full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(prompt_text):
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            response_ids = tokenizer(full[len(prompt_text):], add_special_tokens=False)["input_ids"]
            return prompt_ids, response_ids
        logger.warning("the chat template does not render the prompt as a prefix of the conversation; "
                       "the response is appended to the templated prompt instead.")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    return prompt_ids, response_ids


def build_examples(records: Any, tokenizer: Any, *, chat_template: bool = True, max_length: int = 512) -> Examples:
    """Tokenize prompt/response records: `labels` is -100 on every prompt token.

    Uses the tokenizer's chat template when it has one and `chat_template` is True (else prompt and
    response are concatenated, as the reference code did). Examples longer than `max_length` are
    cut (counted in `num_truncated`); those left with no response token are dropped (`num_dropped`).
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise DeanError(f"max_length={max_length!r}: expected an integer >= 2.")
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        if not hasattr(records, "column_names"):
            records = load_records(records)
    use_template = chat_template and has_chat_template(tokenizer)
    if chat_template and not use_template:
        logger.warning("the tokenizer has no chat template: prompt and response are concatenated as plain text.")
    out = Examples()
    for i, record in enumerate(records):
        prompt, response = record.get("prompt"), record.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DeanError(f"record {i} needs string 'prompt' and 'response', got {type(prompt).__name__} and "
                            f"{type(response).__name__}.")
        prompt_ids, response_ids = _encode_pair(tokenizer, prompt, response, use_template)
        ids = prompt_ids + response_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
        if len(ids) > max_length:
            out.num_truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            out.num_dropped += 1
            continue
        out.append({"input_ids": ids, "labels": labels})
    if out.num_truncated:
        logger.warning("%d of %d examples were longer than max_length=%d and were truncated (%d dropped: their "
                       "prompt alone fills max_length).", out.num_truncated, len(records), max_length, out.num_dropped)
    if not out:
        raise DeanError(f"no example is left: every prompt is longer than max_length={max_length}; raise max_length.")
    return out
