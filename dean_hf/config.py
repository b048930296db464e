"""`DeanConfig`: every option of a DEAN edit, saved as `dean_config.json` beside the mask."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from .errors import DeanError, quote
from .fingerprint import validate_fingerprint
from .io import atomic_write_text, read_json
from .logging import get_logger

logger = get_logger(__name__)
CONFIG_NAME = "dean_config.json"
MAX_TEXT = 4096  # characters in any string of the config (a path, a Hub id, a regex)
MAX_ITEMS = 100_000  # entries in any list or dict of the config
_COUNT_LIMITS = {"num_samples": 10**9, "max_length": 10**8, "batch_size": 10**6, "layers_per_pass": 10**6}
_SEED_LIMIT = 2**64  # torch.manual_seed and numpy accept seeds in [0, 2**64)
_VERSION = re.compile(r"\d{1,9}(\.\d{1,9}){0,5}[A-Za-z0-9.+_-]{0,40}", re.ASCII)
_DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)


def _version() -> str:
    from ._version import __version__

    return __version__


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(re.match(r"\d*", piece, re.ASCII).group() or 0) for piece in v.split(".")[:3])


def _invalid(name: str, value: Any, expected: str, hint: str = "") -> DeanError:
    return DeanError(f"{name}={quote(value)}: expected {expected}.{' ' + hint if hint else ''} Fix it in the "
                     "DeanConfig(...) call or in dean_config.json (an artifact nobody edited is corrupt: save it "
                     "again).")


def _check_text(name: str, value: Any, *, empty: bool = False) -> None:
    """A str of at most MAX_TEXT characters that UTF-8 can encode (no lone surrogate); non-empty unless `empty`."""
    what = "a string" if empty else "a non-empty string"
    if not isinstance(value, str) or (not empty and not value) or len(value) > MAX_TEXT:
        raise _invalid(name, value, f"{what} of at most {MAX_TEXT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(name, value, "text that UTF-8 can encode (it holds a lone surrogate)") from None


def _check_plain(name: str, value: Any, depth: int = 0) -> None:
    """A small JSON tree of text, numbers, booleans and nulls (a record of what ran, shown in cards)."""
    if depth > 4:
        raise _invalid(name, value, "a JSON object nested at most 4 levels deep")
    if isinstance(value, dict):
        if len(value) > 1000:
            raise _invalid(name, value, "an object of at most 1000 entries")
        for key, item in value.items():
            _check_text(f"{name} key", key)
            _check_plain(f"{name}[{quote(key, 40)}]", item, depth + 1)
    elif isinstance(value, str):
        _check_text(name, value, empty=True)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(name, value, "a finite number")
    elif value is not None and not isinstance(value, (bool, int)):
        raise _invalid(name, value, "text, a number, true/false or null")


def _check_text_list(name: str, value: Any, *, distinct: bool = False) -> None:
    what = f"a non-empty list of {'distinct ' if distinct else ''}non-empty strings"
    if not isinstance(value, list) or not value or len(value) > MAX_ITEMS:
        raise _invalid(name, value, what)
    for i, item in enumerate(value):
        _check_text(f"{name}[{i}]", item)
    if distinct and len(set(value)) != len(value):
        raise _invalid(name, value, what, "A name is listed twice.")


def _check_count(name: str, value: Any) -> None:
    limit = _COUNT_LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise _invalid(name, value, f"a positive integer of at most {limit}")


def _check_fraction(name: str, value: Any) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and \
        (value == 1 if isinstance(value, int) else math.isfinite(value) and 0 < value <= 1)
    if not ok:
        raise _invalid(name, value, "a number in (0, 1]", "It is the fraction of each weight matrix kept, for "
                       "example 5e-7 (the paper) or 1e-3.")


def check_version_string(value: Any) -> None:
    """Raise DeanError unless `value` is a version string such as "0.2.0" or "1.0.0rc1"."""
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise _invalid("dean_hf_version", value, 'a version such as "0.2.0"')


@dataclass
class DeanConfig:
    """Options of a DEAN edit: what is scored on which data, and how the coupled neurons are selected.

    Every field is checked on construction (and so on `from_dict` and `from_pretrained`): a config that
    exists can be saved, rendered into a model card and applied."""

    q: float = field(default=5e-7, metadata={"help": "Fraction of each weight matrix kept as the top set of every "
                                                     "target data set (fairness, privacy). The paper uses 5e-7 on 7B "
                                                     "models; small models need larger values (1e-3 and up)."})
    p: float = field(default=5e-7, metadata={"help": "Fraction of each weight matrix kept as the top set of the "
                                                     "general-utility data; those weights are never zeroed."})
    target_modules: Union[str, list[str]] = field(
        default="all-linear", metadata={"help": "Modules to score and edit: 'all-linear' (never lm_head), 'mlp', "
                                                "'self_attn', a list of name suffixes, or a regex."})
    scorer: str = field(default="snip", metadata={"help": "Importance scorer: 'snip' (|W| * sum |grad|) or 'wanda'."})
    target_datasets: list[str] = field(default_factory=lambda: ["fairness", "privacy"],
                                       metadata={"help": "Names of the target data sets whose top sets intersect."})
    general_dataset: Optional[str] = field(default="general",
                                           metadata={"help": "Name of the general-utility data set (None: none)."})
    dataset_sources: Optional[dict] = field(
        default=None, metadata={"help": "Where each data set came from (file path or Hub data set id); Hub ids are "
                                        "listed in the model card's `datasets` metadata."})
    num_samples: int = field(default=128, metadata={"help": "Samples drawn from each data set for scoring."})
    seed: int = field(default=0, metadata={"help": "Seed of the sample draw."})
    max_length: int = field(default=512, metadata={"help": "Tokens kept per example (prompt + response)."})
    chat_template: bool = field(default=True, metadata={"help": "Format examples with the tokenizer's chat template; "
                                                                "False concatenates prompt and response as the "
                                                                "reference code did."})
    batch_size: int = field(default=1, metadata={"help": "Samples per forward/backward pass while scoring."})
    layers_per_pass: Optional[Union[int, str]] = field(
        default="auto", metadata={"help": "Decoder layers scored per pass: 'auto' (one pass where one set of "
                                          "accumulators fits beside the model on its accelerators, else as many "
                                          "layers as fit, from the memory plan), an integer, or null for one pass."})
    fused_kernel: str = field(
        default="auto", metadata={"help": "How the SNIP scorer sums |per-sample gradients|: 'auto' (the fused Triton "
                                          "kernel on CUDA GPUs of compute capability 8.0 or newer, the batched "
                                          "per-sample products elsewhere), 'on' (always; an error where it cannot "
                                          "run) or 'off' (never). The scores are the same either way."})
    keep: float = field(default=1e-2, metadata={"help": "Fraction of each matrix's scores kept once a data set is "
                                                        "scored (its top entries, in selection's order): selection "
                                                        "works exactly for every q, p up to it; 1 keeps dense scores "
                                                        "(26 GB per data set for a 7B model)."})
    legacy: bool = field(default=False, metadata={"help": "Reproduce the reference code's selection, including its "
                                                          "position-by-position AND of the two sets (a defect)."})
    scale: float = field(default=0.0, metadata={"help": "Factor the selected weights are multiplied by, in [0, 1): 0 "
                                                        "zeroes them (DEAN's edit); 0.5 halves them. The mask file "
                                                        "holds the factor that is applied; this records it."})
    granularity: str = field(default="weight", metadata={"help": "What is ranked and selected: 'weight' (single "
                                                                 "weights, DEAN) or 'neuron' (whole neurons: rows of "
                                                                 "up/gate and attention projections, columns of down "
                                                                 "projections; needs dense scores, keep=1)."})
    selection_expression: Optional[str] = field(
        default=None, metadata={"help": "The set expression the mask was selected by, over named score sets: names, "
                                        "'&' (intersection), '|' (union), '-' (difference) and parentheses, e.g. "
                                        "'(unsafe_fairness & unsafe_privacy) - (safe_fairness | general)'. None: "
                                        "'(target_1 & ... & target_n) - general' with q and p."})
    selection_fractions: Optional[dict] = field(
        default=None, metadata={"help": "With selection_expression: the fraction of each matrix each name of the "
                                        "expression stands for (its top set), e.g. {'unsafe_fairness': 1e-3}."})
    base_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "The model the mask was made for."})
    revision: Optional[str] = field(default=None, metadata={"help": "Revision (commit) of the base model."})
    base_model_fingerprint: Optional[dict] = field(
        default=None, metadata={"help": "Probe values of the base model's target weights, checked on load."})
    provenance: Optional[dict] = field(
        default=None, metadata={"help": "What ran: library versions and device ('environment'), and per data set the "
                                        "tokenized data's fingerprint, samples, response tokens and truncated or "
                                        "dropped samples ('data'), so a mask can be reproduced from its files."})
    mask_digest: Optional[str] = field(
        default=None, metadata={"help": "SHA-256 of the mask's names, shapes and indices (`NeuronMask.digest()`), "
                                        "checked on load so that a mask file that still parses but was altered is "
                                        "refused."})
    dean_hf_version: str = field(default_factory=_version, metadata={"help": "dean_hf version that wrote this."})

    def __post_init__(self) -> None:
        # Tuples are accepted where a list is expected, and stored as the list JSON gives back.
        for name in ("target_modules", "target_datasets"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise DeanError naming the first field whose type or range is wrong."""
        _check_fraction("q", self.q)
        _check_fraction("p", self.p)
        _check_fraction("keep", self.keep)
        if self.layers_per_pass is not None and self.layers_per_pass != "auto":
            _check_count("layers_per_pass", self.layers_per_pass)
        if not isinstance(self.fused_kernel, str) or self.fused_kernel not in ("auto", "on", "off"):
            raise _invalid("fused_kernel", self.fused_kernel, "'auto', 'on' or 'off'")
        if isinstance(self.target_modules, list):
            _check_text_list("target_modules", self.target_modules)
        else:
            _check_text("target_modules", self.target_modules)
        _check_text("scorer", self.scorer)
        _check_text_list("target_datasets", self.target_datasets, distinct=True)
        if self.general_dataset is not None:
            _check_text("general_dataset", self.general_dataset)
        if self.dataset_sources is not None:
            if not isinstance(self.dataset_sources, dict) or len(self.dataset_sources) > MAX_ITEMS:
                raise _invalid("dataset_sources", self.dataset_sources, "null or an object of name -> source strings")
            for key, source in self.dataset_sources.items():
                _check_text("dataset_sources key", key)
                _check_text(f"dataset_sources[{quote(key, 40)}]", source)
        for name in ("num_samples", "max_length", "batch_size"):
            _check_count(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < _SEED_LIMIT:
            raise _invalid("seed", self.seed, "an integer in [0, 2**64)")
        for name in ("chat_template", "legacy"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, getattr(self, name), "true or false")
        self._validate_selection()
        for name in ("base_model_name_or_path", "revision"):
            if getattr(self, name) is not None:
                _check_text(name, getattr(self, name), empty=True)
        if self.base_model_fingerprint is not None:
            validate_fingerprint(self.base_model_fingerprint)
        if self.provenance is not None:
            _check_plain("provenance", self.provenance)
        if self.mask_digest is not None and not (isinstance(self.mask_digest, str)
                                                 and _DIGEST.fullmatch(self.mask_digest)):
            raise _invalid("mask_digest", self.mask_digest, "null or 64 lowercase hex digits (a SHA-256)")
        check_version_string(self.dean_hf_version)

    def _validate_selection(self) -> None:
        """scale, granularity, selection_expression and selection_fractions, alone and with `legacy`."""
        from .selection import GRANULARITIES, expression_names  # noqa: PLC0415 - selection imports torch

        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 0 <= self.scale < 1:
            raise _invalid("scale", self.scale, "a finite number in [0, 1)", "It is the factor the selected weights "
                           "are multiplied by: 0 zeroes them (DEAN), 0.5 halves them.")
        if self.granularity not in GRANULARITIES:
            raise _invalid("granularity", self.granularity, f"one of {list(GRANULARITIES)}")
        names: list[str] = []
        if self.selection_expression is not None:
            _check_text("selection_expression", self.selection_expression)
            try:
                names = expression_names(self.selection_expression)
            except DeanError as err:
                raise _invalid("selection_expression", self.selection_expression, "a valid set expression",
                               str(err)) from None
        if self.selection_fractions is not None:
            if self.selection_expression is None:
                raise _invalid("selection_fractions", self.selection_fractions, "null without a selection_expression")
            if not isinstance(self.selection_fractions, dict) or len(self.selection_fractions) > MAX_ITEMS:
                raise _invalid("selection_fractions", self.selection_fractions, "null or an object of name -> "
                               "fraction in (0, 1]")
            for key, value in self.selection_fractions.items():
                _check_text("selection_fractions key", key)
                _check_fraction(f"selection_fractions[{quote(key, 40)}]", value)
            if set(self.selection_fractions) != set(names):
                raise _invalid("selection_fractions", self.selection_fractions, "a fraction for each name of "
                               f"selection_expression and no other (its names are {quote(names, 200)})")
        if self.legacy and (self.granularity != "weight" or self.selection_expression is not None):
            raise _invalid("legacy", self.legacy, "false with granularity='neuron' or a selection_expression",
                           "legacy=True reproduces the reference code, which selects single weights by "
                           "(F ∩ P) \\ G: leave it off for the other selections.")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeanConfig":
        """Build from a dict (every field checked); unknown keys are dropped with a warning."""
        if not isinstance(data, Mapping):
            raise DeanError(f"a DeanConfig is built from a dict (a JSON object), got a {type(data).__name__} "
                            f"{quote(data)}: pass the object of dean_config.json.")
        known = {f.name for f in fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            logger.warning("dropping unknown DeanConfig keys %s (written by another dean_hf version?)",
                           quote(unknown))
        written = data.get("dean_hf_version")
        if written is not None:
            check_version_string(written)
            if _version_tuple(written)[:2] > _version_tuple(_version())[:2]:
                raise DeanError(f"this config was written by dean_hf {written}, newer than the installed "
                                f"{_version()}: upgrade dean_hf (pip install -U dean_hf).")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json_string(self) -> str:
        """The config as the JSON text of `dean_config.json` (DeanError if a value cannot be written)."""
        self.validate()  # fields may have been assigned since construction
        try:
            text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
            text.encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as err:
            raise DeanError(f"this DeanConfig cannot be written as JSON ({quote(str(err))}).") from None
        return text

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `dean_config.json` into `directory`, atomically; nothing else in the folder is touched."""
        atomic_write_text(Path(directory) / CONFIG_NAME, self.to_json_string())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "DeanConfig":
        """Read `dean_config.json` from a local folder."""
        return cls.from_dict(read_json(Path(directory) / CONFIG_NAME, "DEAN config"))
