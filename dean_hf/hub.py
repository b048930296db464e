"""Save, load and push DEAN artifacts (config + mask + model card), and merged checkpoints, in one place.

Every save writes dean_hf's own files into the folder, one at a time and atomically, and leaves every other
file as it was: an artifact can sit beside a checkpoint, as a PEFT adapter does.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlparse

from .config import CONFIG_NAME, DeanConfig
from .errors import DeanError, quote
from .io import PICKLE_SUFFIXES, atomic_write_text, check_writable, is_regular_file, staged_files
from .logging import get_logger
from .mask import NeuronMask, check_digest

logger = get_logger(__name__)
MASK_NAME = "dean_mask.safetensors"
CARD_NAME = "README.md"
LIBRARY_TAG = "dean_hf"
_UNSAFE_SUFFIXES = PICKLE_SUFFIXES
# Files that make up a transformers checkpoint's weights: a stale one left beside a new save would be loaded.
_WEIGHT_FILE = re.compile(r"(?:model|pytorch_model)(?:-\d{5}-of-\d{5})?\.(?:safetensors|bin)(?:\.index\.json)?")


def _template_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "model_cards" / "dean_mask.md", here.parent / "model_cards" / "dean_mask.md"):
        if candidate.is_file():
            return candidate
    raise DeanError("the model card template model_cards/dean_mask.md is missing from this dean_hf install; "
                    "reinstall dean_hf.")


def is_hub_id(name: str) -> bool:
    """True for a string shaped as a Hub repo id (`user/name`) that is not a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or name.count("/") != 1 or name.startswith((".", "/")) or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def render_card(config: DeanConfig, mask: NeuronMask, *, repo_id: Optional[str] = None, merged: bool = False,
                evaluation: Optional[str] = None, eval_results: Optional[list] = None,
                datasets: Optional[list[str]] = None) -> str:
    """The model card (Markdown with YAML metadata) of a mask or of a merged checkpoint.

    The card shows how the weights are edited (zeroed, or multiplied by the mask's scale), the selection (DEAN's
    (F ∩ P) \\ G, the legacy rule, or the config's selection expression and its fractions) and its granularity
    (single weights or whole neurons). `evaluation` is the Markdown of the Evaluation section; `eval_results`
    (huggingface_hub `EvalResult`s) go into the card metadata as `model-index`, which the Hub shows. Raises
    DeanError if the config holds a value that cannot be written (rendered before any file is)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = config.base_model_name_or_path or "unknown"
    base_is_hub_id = is_hub_id(base)
    if datasets is None and isinstance(config.dataset_sources, dict):
        datasets = sorted({str(v) for v in config.dataset_sources.values() if is_hub_id(str(v))}) or None
    title = f"DEAN {'edited ' if merged else 'mask for '}{base.split('/')[-1]}"
    try:
        card_data = ModelCardData(
            base_model=base if base_is_hub_id else None,
            library_name="transformers" if merged else LIBRARY_TAG,
            tags=[LIBRARY_TAG, "dean", "model-editing", "fairness", "privacy"] + (["merged"] if merged else []),
            datasets=datasets or None,
            pipeline_tag="text-generation" if merged else None,
            model_name=title if eval_results else None,
            eval_results=eval_results or None,
        )
        frac = mask.num_masked / mask.num_weights if mask.num_weights else 0.0
        kinds = sorted(mask.counts_per_kind().items(), key=lambda kv: -kv[1])
        # The mask's own scale is the one applied (the config records it); the selection comes from the config.
        selection = "reference code (legacy, position-wise AND)" if config.legacy else \
            f"`{config.selection_expression}`" if config.selection_expression else "(F ∩ P) \\ G"
        selection = selection.replace("|", "\\|")  # a table cell: GitHub's Markdown splits cells at a bare |
        card = ModelCard.from_template(
            card_data,
            template_path=str(_template_path()),
            title=title,
            base_model=base,
            base_model_url=f"https://huggingface.co/{base}" if base_is_hub_id else None,
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
            selection=selection,
            expression=config.selection_expression,
            fractions=", ".join(f"{k}: {v:g}" for k, v in (config.selection_fractions or {}).items()) or None,
            granularity=("whole neurons (rows of up/gate and attention projections, columns of down projections)"
                         if config.granularity == "neuron" else "single weights"),
            scale=mask.scale,
            edit=f"multiplied by {mask.scale:g}" if mask.scale else "zeroed",
            per_kind=kinds,
            evaluation=evaluation or "Not evaluated yet: run `dean eval --mask` on this folder to add the figures.",
            version=config.dean_hf_version,
        )
        text = str(card)
        text.encode("utf-8")
    except DeanError:
        raise
    except Exception as err:  # noqa: BLE001 - a value the card cannot hold (a lone surrogate, a broken type)
        raise DeanError(f"the model card cannot be written from this config ({type(err).__name__}: "
                        f"{quote(str(err))}); nothing was written.") from None
    return text


def card_is_ours(path: str | os.PathLike) -> bool:
    """True if the Markdown file at `path` is a card dean_hf wrote (its metadata tags include dean_hf)."""
    from huggingface_hub.repocard import metadata_load

    try:
        meta = metadata_load(path) or {}
    except Exception:  # noqa: BLE001 - an unreadable or foreign card is simply not ours
        return False
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return isinstance(tags, list) and LIBRARY_TAG in tags


def write_card(directory: str | os.PathLike, text: str) -> bool:
    """Write README.md into `directory` unless a README.md that dean_hf did not write is there (kept, with a
    warning). Returns whether the card was written."""
    path = Path(directory) / CARD_NAME
    if path.exists() and not card_is_ours(path):
        logger.warning("%s exists and was not written by dean_hf: it is kept as it is, and the DEAN model card is "
                       "not written there (save into another folder to get the card).", path)
        return False
    atomic_write_text(path, text)
    return True


def save_artifact(directory: str | os.PathLike, config: DeanConfig, mask: NeuronMask, *,
                  card: Optional[str] = None) -> Path:
    """Write `dean_mask.safetensors`, `dean_config.json` (with the mask's digest) and `README.md` into
    `directory`. Each file is written atomically; other files in the folder are left exactly as they were."""
    directory = Path(directory)
    config = dataclasses.replace(config, mask_digest=mask.digest())
    config_text = config.to_json_string()  # every value is checked before any file is written
    card = card if card is not None else render_card(config, mask)
    check_writable(directory, "artifact folder")
    mask.save(directory / MASK_NAME)
    atomic_write_text(directory / CONFIG_NAME, config_text)
    write_card(directory, card)
    return directory


def _refuse_pickles(directory: Path) -> None:
    unsafe = sorted(p.name for p in directory.iterdir() if p.suffix in _UNSAFE_SUFFIXES)
    if unsafe:
        raise DeanError(f"{quote(str(directory))} holds no {MASK_NAME} but pickle-based files {unsafe[:5]}. dean_hf "
                        "never unpickles (it can run arbitrary code): ask for a safetensors artifact, or convert one "
                        "you trust yourself.")


def _what_is(path: Path) -> str:
    """What stands at `path` where a regular file was expected, for error messages."""
    import stat

    if path.is_symlink() and not path.exists():
        return f"is a dangling symlink (to {quote(os.readlink(path))})"
    try:
        mode = path.stat().st_mode
    except OSError:
        return "is missing"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return "is present"


def _local_folder(path: Path) -> Optional[Path]:
    try:
        return path if path.is_dir() else None
    except (OSError, ValueError):
        return None


def resolve_artifact(dir_or_repo_id: str | os.PathLike, *, revision: Optional[str] = None,
                     token: Optional[str] = None, subfolder: Optional[str] = None, cache_dir: Optional[str] = None,
                     local_files_only: bool = False) -> Path:
    """The local folder holding the artifact: `dir_or_repo_id` (/ `subfolder`), or its Hub download (cached)."""
    if subfolder is not None and not isinstance(subfolder, (str, os.PathLike)):
        raise DeanError(f"subfolder={quote(subfolder)} ({type(subfolder).__name__}): expected a string, the name of "
                        "a folder inside the artifact (e.g. subfolder='privacy'), or None.")
    subfolder = None if subfolder is None else os.fspath(subfolder)
    text = str(dir_or_repo_id)
    folder = _local_folder(Path(text))
    if folder is not None:
        if subfolder:
            folder = _local_folder(folder / subfolder)
            if folder is None:
                raise DeanError(f"{quote(text)} has no subfolder {quote(subfolder)}.")
        missing = [n for n in (CONFIG_NAME, MASK_NAME) if not is_regular_file(folder / n)]
        if missing:
            inside = sorted(p.name for p in folder.iterdir() if is_regular_file(p / CONFIG_NAME))
            if inside:
                raise DeanError(f"{quote(str(folder))} holds masks in subfolders {inside[:10]} (masks other than "
                                f"'default' are saved under their name): pass subfolder={inside[0]!r} "
                                f"(CLI: --mask {Path(text) / inside[0]}).")
            if MASK_NAME in missing:
                _refuse_pickles(folder)
            what = "; ".join(f"{n} {_what_is(folder / n)}" for n in missing)
            raise DeanError(f"{quote(str(folder))} is not a dean_hf artifact: {what}. "
                            "Write one with DeanEditor.save_pretrained or `dean select`.")
        return folder
    if not is_hub_id(text):
        raise DeanError(f"{quote(text)} does not exist as a folder here ({quote(str(Path(text).absolute()))}) and is "
                        "not a Hub repo id (user/name): check the path.")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    files = {}
    for name in (CONFIG_NAME, MASK_NAME):
        try:
            files[name] = hf_hub_download(text, name, subfolder=subfolder, revision=revision, token=token,
                                          cache_dir=cache_dir, local_files_only=local_files_only)
        except LocalEntryNotFoundError:
            raise DeanError(f"folder {quote(text)} does not exist here ({quote(str(Path(text).absolute()))}); as a Hub "
                            f"repo id its {name} is not in the local cache while the Hub cannot be reached "
                            "(offline?): check the path, or download the repo once while online.") from None
        except EntryNotFoundError:
            raise DeanError(f"Hub repo {quote(text)} has no {name}"
                            f"{f' in {subfolder!r}' if subfolder else ''}: it is not a dean_hf artifact "
                            "(or an incomplete upload).") from None
        except RevisionNotFoundError:
            raise DeanError(f"Hub repo {quote(text)} has no revision {quote(revision)}.") from None
        except RepositoryNotFoundError:
            raise DeanError(f"Hub repo {quote(text)} not found (or private: pass token=...).") from None
        except (HfHubHTTPError, OSError, ValueError) as err:
            raise DeanError(f"could not download {name} from {quote(text)}: {quote(str(err))}") from None
    folders = {Path(f).parent for f in files.values()}
    if len(folders) != 1:  # pragma: no cover - hf_hub_download puts a revision's files in one snapshot
        raise DeanError(f"{quote(text)}: files came from different snapshots; pass an explicit revision.")
    return folders.pop()


def load_artifact(dir_or_repo_id: str | os.PathLike, **kwargs: Any) -> tuple[DeanConfig, NeuronMask]:
    """Read (config, mask) from a local folder or a Hub repo (see `resolve_artifact` for the options); the
    mask must match the config's digest."""
    folder = resolve_artifact(dir_or_repo_id, **kwargs)
    config = DeanConfig.from_pretrained(folder)
    mask = NeuronMask.load(folder / MASK_NAME)
    check_digest(mask, config.mask_digest, quote(str(dir_or_repo_id)))
    return config, mask


def check_hub_reachable(timeout: float = 5.0) -> None:
    """Raise DeanError at once if the Hub cannot be reached (offline mode, no DNS, no route), instead of
    letting an upload retry for minutes."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise DeanError("cannot reach the Hub: HF_HUB_OFFLINE is set. Unset it to push, or keep the folder local.")
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise DeanError(f"cannot reach the Hub at {constants.ENDPOINT} ({err.__class__.__name__}: "
                        f"{quote(str(err), 80)}): check the network (or HF_ENDPOINT) and try again.") from None


def upload(folder: str | os.PathLike, repo_id: str, *, commit_message: str, private: Optional[bool] = None,
           token: Optional[str] = None, revision: Optional[str] = None, create_pr: bool = False):
    """Create the repo if needed and upload `folder` in one commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not is_hub_id(repo_id):
        raise DeanError(f"repo {quote(repo_id)} is not a Hub repo id: expected user/name.")
    check_hub_reachable()
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 revision=revision, create_pr=create_pr)
    except HfHubHTTPError as err:
        raise DeanError(f"the Hub refused the upload to {quote(repo_id)}: {quote(str(err), 300)}") from None


def push_artifacts(repo_id: str, artifacts: Mapping[str, tuple[DeanConfig, NeuronMask]], **kwargs: Any):
    """Upload several masks to `repo_id` in one commit: "default" at the root, the others in subfolders named
    after them (PEFT's layout; load one with `subfolder=`)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, mask) in artifacts.items():
            save_artifact(artifact_folder(tmp, name), config, mask, card=render_card(config, mask, repo_id=repo_id))
        masked = sum(mask.num_masked for _, mask in artifacts.values())
        kwargs.setdefault("commit_message", f"Add DEAN mask(s) {list(artifacts)} ({masked} weights)")
        return upload(tmp, repo_id, **kwargs)


def push_artifact(repo_id: str, config: DeanConfig, mask: NeuronMask, **kwargs: Any):
    """Upload one mask, its config and model card to `repo_id` in one commit."""
    return push_artifacts(repo_id, {"default": (config, mask)}, **kwargs)


def artifact_folder(directory: str | os.PathLike, adapter_name: str) -> Path:
    """Where the mask `adapter_name` lives in a saved folder: the folder itself for "default", else a subfolder
    (as PEFT saves adapters)."""
    return Path(directory) if adapter_name == "default" else Path(directory) / adapter_name


def _holds_model(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(p.name == "config.json" or _WEIGHT_FILE.fullmatch(p.name)
                                       for p in folder.iterdir())
    except OSError:
        return False


def check_merged_target(out: str | os.PathLike, *, source: Optional[str | os.PathLike] = None,
                        overwrite: bool = False) -> Path:
    """Refuse (DeanError) to write a merged model where it would replace another model: into the source model's
    folder (or below it) or into a folder that already holds a model, unless `overwrite`. Also checks that
    `out` is writable. Creates nothing."""
    out = Path(out)
    if not overwrite:
        if source is not None and _local_folder(Path(source)) is not None:
            src, dst = Path(source).resolve(), out.resolve()
            if dst == src or src in dst.parents:
                raise DeanError(f"--out {quote(str(out))} is the base model's folder {quote(str(source))} (or "
                                "inside it): the merged weights would replace the base model. Pick another folder, "
                                "or pass --overwrite (overwrite=True) if that is what you want.")
        if _holds_model(out):
            raise DeanError(f"{quote(str(out))} already holds a model (config.json or weight files): pick an empty "
                            "or new folder, or pass --overwrite (overwrite=True) to replace that model's files.")
    return check_writable(out)


def save_merged(model: Any, out: str | os.PathLike, *, tokenizer: Any = None, card: Optional[str] = None,
                source: Optional[str | os.PathLike] = None, overwrite: bool = False) -> Path:
    """Save a merged model (and tokenizer, and card) into `out`, checked by `check_merged_target` first.

    The files are written to a staging folder and moved into `out` one at a time, so an error leaves `out` as
    it was, and files of `out` that the save does not write stay untouched; with `overwrite`, weight files of
    the replaced model that the new save did not write are removed, since transformers would load them."""
    out = check_merged_target(out, source=source, overwrite=overwrite)
    keep_card = card is not None and (out / CARD_NAME).exists() and not card_is_ours(out / CARD_NAME)
    with staged_files(out) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if card is not None and not keep_card:
            atomic_write_text(staging / CARD_NAME, card)
        written = {p.name for p in staging.iterdir()}
    if keep_card:
        logger.warning("%s was not written by dean_hf and is kept; the merged model's card was not written.",
                       out / CARD_NAME)
    if overwrite:
        for stale in sorted(p for p in out.iterdir() if p.is_file() and _WEIGHT_FILE.fullmatch(p.name)
                            and p.name not in written):
            logger.warning("removing %s: a weight file of the replaced model (overwrite=True)", stale)
            stale.unlink()
    return out


def fraction_text(mask: NeuronMask) -> str:
    """'N of M (f)' for reports."""
    frac = mask.num_masked / mask.num_weights if mask.num_weights else math.nan
    return f"{mask.num_masked} of {mask.num_weights} ({frac:.3g})"


def eval_results_for_card(rows: Sequence[Mapping[str, Any]], dataset_name: str) -> list:
    """huggingface_hub `EvalResult`s (one data set per dimension, as the Hub groups them) from rows of
    (dimension, setting, rate, n, low, high)."""
    import re

    from huggingface_hub import EvalResult

    slug = re.sub(r"[^a-z0-9]+", "-", dataset_name.lower()).strip("-")
    return [EvalResult(task_type="text-generation", dataset_type=f"{slug}-{row['dimension']}",
                       dataset_name=f"{dataset_name} ({row['dimension']})", metric_type="awareness",
                       metric_name=f"{row['dimension']} awareness ({row['setting']}, n={row['n']}, 95% CI "
                                   f"{row['low']:.2f}-{row['high']:.2f})",
                       metric_value=round(float(row["rate"]), 4)) for row in rows if math.isfinite(row["rate"])]
