"""`score_importance`: one forward+backward per batch collects every target module's scores."""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..errors import DeanError
from ..fingerprint import weight_fingerprint
from ..logging import get_logger
from ..targets import TargetModules, find_target_modules
from .hooks import scoring_hooks
from .loss import forward_loss
from .scorers import get_scorer
from .scores import ImportanceScores

logger = get_logger(__name__)


def _as_list(value: Any, what: str, index: int) -> list[int]:
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise DeanError(f"example {index}: {what} has shape {tuple(value.shape)}, expected a 1-D sequence.")
        return value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise DeanError(f"example {index}: {what} is a {type(value).__name__}, "
                        "expected a list of ints or a 1-D tensor.")
    return [int(v) for v in value]


def _check_examples(examples: Iterable[Mapping[str, Any]]) -> list[tuple[list[int], list[int]]]:
    checked = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, Mapping) or "input_ids" not in ex or "labels" not in ex:
            keys = list(ex) if isinstance(ex, Mapping) else type(ex).__name__
            raise DeanError(f"example {i} has {keys}, expected a dict with 'input_ids' and 'labels' "
                            "(build them with dean_hf.data.build_examples).")
        ids, labels = _as_list(ex["input_ids"], "input_ids", i), _as_list(ex["labels"], "labels", i)
        if len(ids) != len(labels) or not ids:
            raise DeanError(f"example {i}: input_ids ({len(ids)}) and labels ({len(labels)}) must be non-empty "
                            "and of the same length.")
        if all(label == -100 for label in labels[1:]):
            raise DeanError(f"example {i} has no response token to score (every label after the first is -100); "
                            "raise max_length or drop the example.")
        checked.append((ids, labels))
    if not checked:
        raise DeanError("no examples to score: the data set is empty.")
    return checked


def data_fingerprint(examples: Sequence[tuple[list[int], list[int]]]) -> str:
    """A SHA-256 of the tokenized examples (input ids and labels), in order."""
    h = hashlib.sha256()
    for ids, labels in examples:
        h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
        h.update(torch.tensor(labels, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def _batches(examples, batch_size: int, group_by_length: bool) -> list[list[int]]:
    order = list(range(len(examples)))
    if group_by_length:
        order.sort(key=lambda i: len(examples[i][0]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _collate(examples, idx: list[int], pad_id: int, device: torch.device):
    width = max(len(examples[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):  # right padding keeps every real token at its unpadded position
        n = len(examples[i][0])
        ids[row, :n] = torch.tensor(examples[i][0])
        labels[row, :n] = torch.tensor(examples[i][1])
        mask[row, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def _distributed(distributed: Optional[bool]) -> tuple[int, int]:
    """(rank, world size) when scoring is spread over torch.distributed processes, else (0, 1)."""
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not active:
        raise DeanError("distributed=True but torch.distributed is not initialized with several processes: "
                        "launch with torchrun or accelerate launch.")
    if active and distributed is not False:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _run_pass(model, data, shard: list[int], modules, score_fn, accumulators, *, batch_size: int,
              group_by_length: bool, trim_logits: bool, pad_id: int, device, show_progress: bool,
              description: str) -> int:
    """One pass over this process's samples with hooks on `modules`; returns the response tokens seen."""
    num_tokens = 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    trim = trim_logits and not any(m is head for m in modules.values())  # a scored LM head sees every position
    with scoring_hooks(model, modules, score_fn, accumulators) as state:
        batches = [[shard[i] for i in b] for b in _batches([data[i] for i in shard], batch_size, group_by_length)]
        for idx in tqdm(batches, desc=description, unit="batch", disable=not show_progress):
            ids, labels, mask = _collate(data, idx, pad_id, device)
            state.batch_size, state.token_mask, state.lengths = len(idx), mask, mask.sum(1).tolist()
            grad_ctx = torch.enable_grad() if score_fn.needs_backward else torch.no_grad()
            with grad_ctx:
                losses = forward_loss(model, ids, labels, mask, trim_logits=trim)  # holds no reference to the logits
                bad = ~torch.isfinite(losses)
                if bad.any():
                    raise DeanError(f"the loss of sample {idx[int(bad.nonzero()[0])]} is {losses[bad][0].item()}: "
                                    "the model overflows on it (try float32) or the sample is broken.")
                if score_fn.needs_backward:
                    losses.sum().backward()
                del losses
            if state.nonfinite is not None:
                raise DeanError(f"non-finite gradient at module {state.nonfinite!r} while scoring sample(s) {idx}: "
                                "the model overflows (fp16?); score in float32 or bfloat16, or drop those samples.")
            num_tokens += int((labels[:, 1:] != -100).sum())
    return num_tokens


def score_importance(
    model: nn.Module,
    examples: Iterable[Mapping[str, Any]],
    *,
    target_modules: TargetModules = "all-linear",
    scorer: str = "snip",
    batch_size: int = 1,
    group_by_length: bool = True,
    modules_per_pass: Optional[int] = None,
    trim_logits: bool = True,
    distributed: Optional[bool] = None,
    show_progress: bool = True,
    description: str = "scoring",
) -> ImportanceScores:
    """Score every weight of the target modules on `examples`, in one forward+backward per batch.

    `examples` are dicts with `input_ids` and `labels` (-100 on prompt tokens). The "snip" score is
    `|W| * sum_i |dL_i/dW|` with L_i sample i's mean response-token NLL; "wanda" is
    `|W| * ||X||_2` of the inputs. Padded batches give the scores of `batch_size=1`. The model is
    left as it was: parameters' `requires_grad` and `.grad`, train/eval mode, no hooks.

    `group_by_length` batches samples of similar length together (less padding; same scores).
    `modules_per_pass` is the low-memory path: that many modules' accumulators at a time, one pass
    over the data per group, each group's scores moved to the CPU when done. `trim_logits` computes
    logits only at the positions the loss reads, for models whose forward takes `logits_to_keep` (set it
    to False for a model that reads that argument its own way). Under torch.distributed
    (`distributed=None` detects it), each process scores its share of the samples and the
    accumulators are summed with one all-reduce: every rank gets the single-process scores.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DeanError(f"batch_size={batch_size!r}: expected a positive integer.")
    if modules_per_pass is not None and (not isinstance(modules_per_pass, int) or modules_per_pass < 1):
        raise DeanError(f"modules_per_pass={modules_per_pass!r}: expected a positive integer or None.")
    score_fn = get_scorer(scorer)
    data = _check_examples(examples)
    modules = find_target_modules(model, target_modules)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    pad_id = pad_id if isinstance(pad_id, int) else 0
    device = _input_device(model)
    fingerprint = weight_fingerprint(modules)
    rank, world = _distributed(distributed)
    shard = list(range(rank, len(data), world))
    names = list(modules)
    size = modules_per_pass or len(names)
    groups = [names[i:i + size] for i in range(0, len(names), size)]
    scores: dict[str, torch.Tensor] = {}
    accumulators: dict[str, torch.Tensor] = {}
    num_tokens = 0
    try:
        for number, group in enumerate(groups):
            sub = {n: modules[n] for n in group}
            accumulators = {n: score_fn.init(m) for n, m in sub.items()}
            desc = description if len(groups) == 1 else f"{description} ({number + 1}/{len(groups)})"
            tokens = _run_pass(model, data, shard, sub, score_fn, accumulators, batch_size=batch_size,
                               group_by_length=group_by_length, trim_logits=trim_logits, pad_id=pad_id, device=device,
                               show_progress=show_progress and rank == 0, description=desc)
            num_tokens = tokens if number == 0 else num_tokens
            if world > 1:
                _all_reduce(accumulators)
            for n in group:
                score = score_fn.finalize(sub[n], accumulators.pop(n))
                if not bool(torch.isfinite(score).all()):
                    raise DeanError(f"the scores of module {n!r} contain NaN or inf: its weights or inputs are "
                                    "not finite; check the model in float32.")
                scores[n] = score if len(groups) == 1 else score.cpu()
    except BaseException:
        accumulators.clear()
        scores.clear()
        raise
    if world > 1:
        num_tokens = int(_all_reduce({"t": torch.tensor(float(num_tokens), device=device)})["t"])
    config = getattr(model, "config", None)
    metadata = {
        "model_name": getattr(config, "_name_or_path", None) or type(model).__name__,
        "revision": getattr(config, "_commit_hash", None),
        "scorer": scorer,
        "num_samples": len(data),
        "num_tokens": num_tokens,
        "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules),
        "data_fingerprint": data_fingerprint(data),
        "base_model_fingerprint": fingerprint,
        "dean_hf_version": __version__,
    }
    logger.info("scored %d modules on %d samples (%d response tokens)", len(scores), len(data), num_tokens)
    return ImportanceScores(scores, metadata)


def _all_reduce(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import torch.distributed as dist

    for t in tensors.values():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tensors
