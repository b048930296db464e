"""The main job's stages strung together: data sets -> scores (cached) -> mask and the config that records it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

from .config import DeanConfig
from .data import build_examples, load_records
from .errors import DeanError
from .fingerprint import weight_fingerprint
from .logging import get_logger
from .mask import NeuronMask
from .provenance import environment
from .scoring import ImportanceScores, data_fingerprint, score_importance
from .selection import select_coupled_neurons
from .targets import find_target_modules

logger = get_logger(__name__)


def scoring_keep(config: DeanConfig) -> float:
    """The fraction of each matrix the scores must keep for this config's selection: dense for neuron granularity
    (whole rows and columns are summed), else at least every fraction the selection asks for (q, p, an
    expression's fractions) and `config.keep`. Decided before scoring, so a mismatch never shows up after it."""
    if config.granularity == "neuron":
        return 1.0
    fractions = [config.keep, config.q, config.p, *(config.selection_fractions or {}).values()]
    return min(1.0, max(fractions))


def _cache_key(model: nn.Module, fingerprint: str, config: DeanConfig) -> str:
    cfg = getattr(model, "config", None)
    weights = weight_fingerprint(find_target_modules(model, config.target_modules))  # a fine-tuned copy differs
    parts = {"model": getattr(cfg, "_name_or_path", None) or type(model).__name__,
             "revision": getattr(cfg, "_commit_hash", None), "weights": weights, "data": fingerprint,
             "scorer": config.scorer, "target_modules": config.target_modules, "keep": scoring_keep(config)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_score_files(out_dir: str | os.PathLike, names: list[str]) -> None:
    """Refuse (DeanError, before any scoring) to write `out_dir/NAME.safetensors` over a file that is not a
    dean_hf score file: only dean_hf's own files are ever replaced."""
    from .io import META_KEY

    for name in names:
        path = Path(out_dir) / f"{name}.safetensors"
        if not path.exists():
            continue
        try:
            meta = ImportanceScores.load(path, lazy=True).metadata
        except DeanError:
            meta = None
        if meta is None:
            raise DeanError(f"{str(path)!r} exists and is not a dean_hf score file (no {META_KEY!r} scores header): "
                            "it is left untouched. Pick another output folder or data set name.")


def score_datasets_cached(model: nn.Module, tokenizer: Any, records: Mapping[str, Any], config: DeanConfig,
                          out_dir: Optional[str | os.PathLike] = None, *, show_progress: bool = True,
                          reused: Optional[list[str]] = None) -> dict[str, ImportanceScores]:
    """Score each named set of drawn records (see `load_records`).

    With `out_dir`, each set goes to `out_dir/NAME.safetensors` as soon as it is scored and is returned
    lazily loaded (one set of scores in memory at a time); a file made from the same model, tokenized data
    and options is reused instead of recomputed (its name is appended to `reused`). A file there that dean_hf
    did not write is never replaced (DeanError before any scoring). Without `out_dir`, scores stay in memory.
    """
    from .scoring.engine import _distributed

    rank, world = _distributed(None)
    if out_dir is not None:
        check_score_files(out_dir, list(records))
    results = {}
    for name, drawn in records.items():
        examples = build_examples(drawn, tokenizer, chat_template=config.chat_template, max_length=config.max_length)
        key = _cache_key(model, data_fingerprint([(e["input_ids"], e["labels"]) for e in examples]), config)
        path = Path(out_dir) / f"{name}.safetensors" if out_dir is not None else None
        # Rank 0 alone reads and writes the cache, under a file lock against other runs on the same folder; it
        # tells the other ranks whether to score, so that every rank takes part in the same all-reduces.
        with _cache_lock(path) if path is not None and rank == 0 else nullcontext():
            cached = _cached(path, key) if path is not None and rank == 0 else None
            if world > 1:
                cached = _share_decision(cached, path)
            if cached is not None:
                logger.info("reusing %s (same model, data and options)", path)
                results[name] = cached
                if reused is not None:
                    reused.append(name)
                continue
            scores = score_importance(model, examples, target_modules=config.target_modules, scorer=config.scorer,
                                      batch_size=config.batch_size, keep=scoring_keep(config),
                                      layers_per_pass=config.layers_per_pass, fused_kernel=config.fused_kernel,
                                      show_progress=show_progress,
                                      description=f"scoring {name}")
            meta = {**scores.metadata, "dataset": name, "cache_key": key, "num_truncated": examples.num_truncated,
                    "num_dropped": examples.num_dropped, "seed": config.seed, "max_length": config.max_length,
                    "chat_template": config.chat_template, "batch_size": config.batch_size,
                    "environment": environment(model)}
            scores = scores.with_metadata(meta)
            if path is None or rank != 0:
                results[name] = scores
                continue
            scores.save(path)
            del scores
            results[name] = ImportanceScores.load(path, lazy=True)
    return results


def _cache_lock(path: Path):
    """A file lock for one cache file, kept in dean_hf's own cache folder (as huggingface_hub keeps its `.locks`),
    so that the output folder holds only the score files."""
    from filelock import FileLock

    from .models import cache_dir

    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:32]
    return FileLock(str(locks / f"{digest}.lock"))


def _cached(path: Path, key: str) -> Optional[ImportanceScores]:
    if not path.is_file():
        return None
    try:
        cached = ImportanceScores.load(path, lazy=True)
    except DeanError:
        return None
    return cached if cached.metadata.get("cache_key") == key else None


def _share_decision(cached: Optional[ImportanceScores], path: Optional[Path]) -> Optional[ImportanceScores]:
    """Rank 0's cache decision on every rank: reuse (others load the file rank 0 checked) or score."""
    import torch.distributed as dist

    decision = [cached is not None]
    dist.broadcast_object_list(decision, src=0)
    if not decision[0]:
        return None
    return cached if cached is not None else ImportanceScores.load(path, lazy=True)


def score_datasets(model: nn.Module, tokenizer: Any, targets: Mapping[str, Any], general: Optional[Any],
                   config: DeanConfig, *, show_progress: bool = True,
                   cache_dir: Optional[str | os.PathLike] = None) -> dict[str, ImportanceScores]:
    """Draw `config.num_samples` records of every target data set and (under `config.general_dataset`) the
    general one, and score the model on each."""
    if not isinstance(targets, Mapping) or not targets:
        raise DeanError("targets is empty: pass {'fairness': data, 'privacy': data}.")
    sources = dict(targets)
    if general is not None:
        key = config.general_dataset or "general"
        if key in sources:
            raise DeanError(f"a target data set is named {key!r}, the name of the general data set: rename it.")
        sources[key] = general
    # Every data set is read (and checked) before any scoring starts.
    records = {name: load_records(src, n=config.num_samples, seed=config.seed) for name, src in sources.items()}
    return score_datasets_cached(model, tokenizer, records, config, cache_dir, show_progress=show_progress)


def mask_and_config(targets: Mapping[str, ImportanceScores], general: Optional[ImportanceScores], config: DeanConfig,
                    *, general_name: Optional[str] = None,
                    sources: Optional[Mapping[str, Any]] = None) -> tuple[NeuronMask, DeanConfig]:
    """Scores -> (mask, config): select `(T_1 ∩ ... ∩ T_n) \\ G` with `config`'s q, p and legacy rule, and the
    DeanConfig that records the edit (data sets, scoring options and base-model fingerprint from the scores'
    metadata, the mask's digest). The one place where a mask and its config are made."""
    if not isinstance(targets, Mapping) or not targets:
        raise DeanError("targets is empty: pass {'fairness': scores, 'privacy': scores}.")
    if config.selection_expression:  # a set expression over the named score sets (targets and the general set)
        from .selection import select_by_expression

        named = {**targets, **({general_name or config.general_dataset or "general": general} if general else {})}
        mask = select_by_expression(config.selection_expression, named, fractions=config.selection_fractions or {},
                                    granularity=config.granularity, scale=config.scale)
    else:
        mask = select_coupled_neurons(targets, general, q=config.q, p=config.p if general is not None else None,
                                      legacy=config.legacy, granularity=config.granularity, scale=config.scale)
    meta = next(iter(targets.values())).metadata
    fingerprint = meta.get("base_model_fingerprint")
    if isinstance(fingerprint, Mapping) and isinstance(fingerprint.get("probes"), Mapping):
        fingerprint = {"probes": {n: v for n, v in fingerprint["probes"].items() if n in mask}}
    else:
        fingerprint = config.base_model_fingerprint
    named_sources = {str(k): _source_text(v) for k, v in (sources or {}).items() if isinstance(v, (str, os.PathLike))}
    recorded_general = (general_name or config.general_dataset or "general") if general is not None else None
    recorded = dataclasses.replace(
        config,
        target_datasets=list(targets),
        general_dataset=recorded_general,
        target_modules=meta.get("target_modules", config.target_modules),
        scorer=meta.get("scorer", config.scorer),
        num_samples=int(meta.get("num_samples", config.num_samples)),
        seed=int(meta.get("seed", config.seed)),
        max_length=int(meta.get("max_length", config.max_length)),
        chat_template=bool(meta.get("chat_template", config.chat_template)),
        base_model_name_or_path=config.base_model_name_or_path or meta.get("model_name"),
        revision=config.revision or meta.get("revision"),
        batch_size=int(meta.get("batch_size", config.batch_size)),
        fused_kernel=meta["fused_kernel"] if meta.get("fused_kernel") in ("auto", "on", "off") else config.fused_kernel,
        keep=float(meta.get("keep", config.keep)),
        base_model_fingerprint=fingerprint,
        dataset_sources=named_sources or config.dataset_sources,
        provenance=_provenance({**targets, **({recorded_general: general} if general is not None else {})}),
        mask_digest=mask.digest(),
    )
    return mask, recorded


def _source_text(source: str | os.PathLike) -> str:
    """A data source as recorded in a config: a local file as its absolute path (so that a card rendered elsewhere
    never takes "data/fair.csv" for a Hub data set id), anything else as given."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


def _provenance(scores: Mapping[str, ImportanceScores]) -> dict[str, Any]:
    """What ran, from the score sets' metadata: the environment and, per data set, what was scored."""
    data = {}
    environment_seen = None
    for name, s in scores.items():
        meta = s.metadata
        environment_seen = environment_seen or meta.get("environment")
        data[name] = {k: meta[k] for k in ("data_fingerprint", "num_samples", "num_tokens", "num_truncated",
                                           "num_dropped") if isinstance(meta.get(k), (str, int))}
    out: dict[str, Any] = {"data": data}
    if isinstance(environment_seen, Mapping):
        out["environment"] = {str(k): v for k, v in environment_seen.items() if isinstance(v, (str, int, float))}
    return out
