"""`DeanConfig`: every option of a DEAN edit, saved as `dean_config.json` beside the mask."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from .errors import DeanError
from .io import read_json
from .logging import get_logger

logger = get_logger(__name__)
CONFIG_NAME = "dean_config.json"


def _version() -> str:
    from . import __version__

    return __version__


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for piece in str(v).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclass
class DeanConfig:
    """Options of a DEAN edit: what is scored on which data, and how the coupled neurons are selected."""

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
    legacy: bool = field(default=False, metadata={"help": "Reproduce the reference code's selection, including its "
                                                          "position-by-position AND of the two sets (a defect)."})
    base_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "The model the mask was made for."})
    revision: Optional[str] = field(default=None, metadata={"help": "Revision (commit) of the base model."})
    base_model_fingerprint: Optional[dict] = field(
        default=None, metadata={"help": "Probe values of the base model's target weights, checked on load."})
    dean_hf_version: str = field(default_factory=_version, metadata={"help": "dean_hf version that wrote this."})

    def __post_init__(self) -> None:
        for name in ("p", "q"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise DeanError(f"{name}={value!r} is outside (0, 1]: it is the fraction of each weight matrix kept, "
                                "for example 5e-7 (the paper) or 1e-3.")
        for name in ("num_samples", "max_length", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DeanError(f"{name}={value!r}: expected a positive integer.")
        if not self.target_datasets:
            raise DeanError("target_datasets is empty: name at least one, e.g. ['fairness', 'privacy'].")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeanConfig":
        """Build from a dict; unknown keys are dropped with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("dropping unknown DeanConfig keys %s (written by another dean_hf version?)", unknown)
        written = data.get("dean_hf_version")
        if written is not None and _version_tuple(written)[:2] > _version_tuple(_version())[:2]:
            raise DeanError(f"this config was written by dean_hf {written}, newer than the installed {_version()}: "
                            "upgrade dean_hf (pip install -U dean_hf).")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise DeanError(f"invalid DeanConfig: {err}") from None

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `dean_config.json` into `directory`."""
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "DeanConfig":
        """Read `dean_config.json` from a local folder."""
        return cls.from_dict(read_json(Path(directory) / CONFIG_NAME, "DEAN config"))
