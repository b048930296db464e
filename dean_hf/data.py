"""Data -> examples: load prompt/response records and tokenize them with the loss on the response only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import DeanError
from .logging import get_logger

logger = get_logger(__name__)
IGNORE_INDEX = -100


class Examples(list):
    """A list of tokenized examples (`input_ids`, `labels`) with counts of what was cut or dropped."""

    num_truncated: int = 0
    num_dropped: int = 0


def _load_source(source: Any, split: str):
    import datasets

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
                        "JSONL path, a saved `datasets` folder, a datasets.Dataset or a Hub data set id.")
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise DeanError(f"data file {str(path)!r} does not exist.")
        if path.stat().st_size == 0:
            raise DeanError(f"data file {str(path)!r} is empty.")
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
                 split: str = "train", n: Optional[int] = None, seed: int = 0):
    """A `datasets.Dataset` with `prompt` (and `response`) string columns from any supported source.

    `n` draws that many records with `seed` (shuffled); more than the data set holds is an error.
    `response_column=None` loads prompts only (evaluation questions).
    """
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
