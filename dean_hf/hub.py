"""Save, load and push DEAN artifacts (config + mask + model card) in one place."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from .config import CONFIG_NAME, DeanConfig
from .errors import DeanError
from .io import atomic_dir
from .logging import get_logger
from .mask import NeuronMask

logger = get_logger(__name__)
MASK_NAME = "dean_mask.safetensors"
CARD_NAME = "README.md"
_UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _template_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "model_cards" / "dean_mask.md", here.parent / "model_cards" / "dean_mask.md"):
        if candidate.is_file():
            return candidate
    raise DeanError("the model card template model_cards/dean_mask.md is missing from this dean_hf install; "
                    "reinstall dean_hf.")


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/")) and not os.path.exists(name)


def render_card(config: DeanConfig, mask: NeuronMask, *, repo_id: Optional[str] = None, merged: bool = False,
                evaluation: Optional[str] = None, datasets: Optional[list[str]] = None):
    """The model card (a `huggingface_hub.ModelCard`) of a mask or of a merged checkpoint."""
    from huggingface_hub import ModelCard, ModelCardData

    base = config.base_model_name_or_path or "unknown"
    is_hub_id = _is_hub_id(base)
    if datasets is None and isinstance(config.dataset_sources, dict):
        datasets = sorted({str(v) for v in config.dataset_sources.values() if _is_hub_id(str(v))}) or None
    card_data = ModelCardData(
        base_model=base if is_hub_id else None,
        library_name="transformers" if merged else "dean_hf",
        tags=["dean_hf", "dean", "model-editing", "fairness", "privacy"] + (["merged"] if merged else []),
        datasets=datasets or None,
        pipeline_tag="text-generation" if merged else None,
    )
    frac = mask.num_masked / mask.num_weights if mask.num_weights else 0.0
    kinds = sorted(mask.counts_per_kind().items(), key=lambda kv: -kv[1])
    return ModelCard.from_template(
        card_data,
        template_path=str(_template_path()),
        title=f"DEAN {'edited ' if merged else 'mask for '}{base.split('/')[-1]}",
        base_model=base,
        base_model_url=f"https://huggingface.co/{base}" if is_hub_id else base,
        repo_id=repo_id or "path/to/this/folder",
        merged=merged,
        num_masked=mask.num_masked,
        num_weights=mask.num_weights,
        fraction=f"{frac:.3g}",
        num_modules=len(mask),
        targets=", ".join(config.target_datasets),
        general=config.general_dataset or "none",
        q=config.q,
        p=config.p,
        scorer=config.scorer,
        num_samples=config.num_samples,
        seed=config.seed,
        target_modules=config.target_modules,
        selection="reference code (legacy, position-wise AND)" if config.legacy else "(F ∩ P) \\ G",
        per_kind=kinds,
        evaluation=evaluation or "Not evaluated yet: run `dean eval` and add its report here.",
        version=config.dean_hf_version,
    )


def save_artifact(directory: str | os.PathLike, config: DeanConfig, mask: NeuronMask, *,
                  card: Any = None) -> Path:
    """Write `dean_config.json`, `dean_mask.safetensors` and `README.md` into `directory`, atomically."""
    directory = Path(directory)
    card = card if card is not None else render_card(config, mask)
    with atomic_dir(directory) as tmp:
        config.save_pretrained(tmp)
        mask.save(tmp / MASK_NAME)
        card.save(str(tmp / CARD_NAME))
    return directory


def _refuse_pickles(directory: Path) -> None:
    unsafe = sorted(p.name for p in directory.iterdir() if p.suffix in _UNSAFE_SUFFIXES)
    if unsafe:
        raise DeanError(f"{str(directory)!r} holds no {MASK_NAME} but pickle-based files {unsafe}. dean_hf never "
                        "unpickles (it can run arbitrary code): ask for a safetensors artifact, or convert one you "
                        "trust yourself.")


def resolve_artifact(dir_or_repo_id: str | os.PathLike, *, revision: Optional[str] = None,
                     token: Optional[str] = None) -> Path:
    """The local folder holding the artifact: `dir_or_repo_id` itself, or its Hub download (cached)."""
    path = Path(dir_or_repo_id)
    if path.is_dir():
        missing = [n for n in (CONFIG_NAME, MASK_NAME) if not (path / n).is_file()]
        if missing:
            if MASK_NAME in missing:
                _refuse_pickles(path)
            raise DeanError(f"{str(path)!r} is not a dean_hf artifact: {missing} missing. "
                            "Write one with DeanEditor.save_pretrained or `dean select`.")
        return path
    repo_id = str(dir_or_repo_id)
    if repo_id.count("/") != 1 or path.exists():
        raise DeanError(f"{repo_id!r} is neither a folder nor a Hub repo id (user/name).")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, \
        RepositoryNotFoundError

    files = {}
    for name in (CONFIG_NAME, MASK_NAME):
        try:
            files[name] = hf_hub_download(repo_id, name, revision=revision, token=token)
        except LocalEntryNotFoundError:
            raise DeanError(f"{name} of {repo_id!r} is not in the local cache and the Hub cannot be reached "
                            "(offline?): download it once while online, or pass a local folder.") from None
        except EntryNotFoundError:
            raise DeanError(f"Hub repo {repo_id!r} has no {name}: it is not a dean_hf artifact "
                            "(or an incomplete upload).") from None
        except RepositoryNotFoundError:
            raise DeanError(f"Hub repo {repo_id!r} not found (or private: pass token=...).") from None
        except HfHubHTTPError as err:
            raise DeanError(f"could not download {name} from {repo_id!r}: {err}") from None
    folders = {Path(f).parent for f in files.values()}
    if len(folders) != 1:  # pragma: no cover - hf_hub_download puts a revision's files in one snapshot
        raise DeanError(f"{repo_id!r}: files came from different snapshots; pass an explicit revision.")
    return folders.pop()


def load_artifact(dir_or_repo_id: str | os.PathLike, *, revision: Optional[str] = None,
                  token: Optional[str] = None) -> tuple[DeanConfig, NeuronMask]:
    """Read (config, mask) from a local folder or a Hub repo."""
    folder = resolve_artifact(dir_or_repo_id, revision=revision, token=token)
    config = DeanConfig.from_pretrained(folder)
    mask = NeuronMask.load(folder / MASK_NAME)
    return config, mask


def upload(folder: str | os.PathLike, repo_id: str, *, commit_message: str, private: Optional[bool] = None,
           token: Optional[str] = None, revision: Optional[str] = None, create_pr: bool = False):
    """Create the repo if needed and upload `folder` in one commit."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                             revision=revision, create_pr=create_pr)


def push_artifact(repo_id: str, config: DeanConfig, mask: NeuronMask, **kwargs: Any):
    """Upload mask, config and model card to `repo_id` in one commit."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "artifact"
        save_artifact(out, config, mask, card=render_card(config, mask, repo_id=repo_id))
        kwargs.setdefault("commit_message", f"Add DEAN mask ({mask.num_masked} weights)")
        return upload(out, repo_id, **kwargs)


def fraction_text(mask: NeuronMask) -> str:
    """'N of M (f)' for reports."""
    frac = mask.num_masked / mask.num_weights if mask.num_weights else math.nan
    return f"{mask.num_masked} of {mask.num_weights} ({frac:.3g})"
