"""`score_importance`: one forward+backward per batch collects every target module's scores."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import DeanError
from ..fingerprint import weight_fingerprint
from ..logging import get_logger
from ..logging import show_progress as _bars_wanted
from ..modules import decoder_blocks, unwrap_model
from ..targets import TargetModules, find_target_modules
from .hooks import BatchState, scoring_hooks
from .loss import forward_loss, host_loss_positions
from .fused_abs_grad import fused_kernel_unavailable, fused_kernel_unavailable_here
from .scorers import Scorer, cannot_run_error, check_fused_kernel, get_scorer
from .scores import DEFAULT_KEEP, ImportanceScores, check_keep, scores_from_accumulators

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
    # One host tensor and one copy: pinned and asynchronous to a GPU (a pageable copy waits for the stream).
    batch = torch.empty((3, len(idx), width), dtype=torch.long, pin_memory=device.type == "cuda")
    ids, labels, mask = batch[0].fill_(pad_id), batch[1].fill_(-100), batch[2].zero_()
    for row, i in enumerate(idx):  # right padding keeps every real token at its unpadded position
        n = len(examples[i][0])
        ids[row, :n] = torch.tensor(examples[i][0])
        labels[row, :n] = torch.tensor(examples[i][1])
        mask[row, :n] = 1
    return batch.to(device, non_blocking=True).unbind(0)


def _input_device(model: nn.Module) -> torch.device:
    from ..offload import offload_hook

    plain = unwrap_model(model)  # DDP, torch.compile and PEFT wrappers hold the model that has the embeddings
    embeddings = plain.get_input_embeddings() if hasattr(plain, "get_input_embeddings") else None
    hook = offload_hook(embeddings) if embeddings is not None else None
    if hook is not None and hook.execution_device is not None:  # offloaded: inputs go where it computes
        return torch.device(hook.execution_device)
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
              description: str, grad_from: Optional[nn.Module] = None) -> int:
    """One pass over this process's samples with hooks on `modules`; returns the response tokens seen.

    A batch reads one value from the device, however many modules are hooked: whether its losses and every
    hooked gradient were finite (lengths and token counts come from the host-side examples)."""
    num_tokens = 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    trim = trim_logits and not any(m is head for m in modules.values())  # a scored LM head sees every position
    with scoring_hooks(model, modules, score_fn, accumulators, grad_from=grad_from) as state:
        batches = [[shard[i] for i in b] for b in _batches([data[i] for i in shard], batch_size, group_by_length)]
        for idx in tqdm(batches, desc=description, unit="batch", disable=not show_progress):
            ids, labels, mask = _collate(data, idx, pad_id, device)
            state.begin(len(idx), mask, [len(data[i][0]) for i in idx])
            grad_ctx = torch.enable_grad() if score_fn.needs_backward else torch.no_grad()
            with grad_ctx:
                positions = torch.tensor(host_loss_positions([data[i][1] for i in idx]), dtype=torch.long)
                losses = forward_loss(model, ids, labels, mask, trim_logits=trim,  # holds no reference to the logits
                                      positions=positions.pin_memory() if device.type == "cuda" else positions)
                finite = torch.isfinite(losses.detach()).all()
                if score_fn.needs_backward:
                    losses.sum().backward()
                losses = losses.detach()  # frees the graph
            gradients_finite = state.all_finite(finite.device)
            if not bool(finite if gradients_finite is None else finite & gradients_finite):  # the batch's one sync
                _raise_nonfinite(losses, idx, state)
            num_tokens += sum(label != -100 for i in idx for label in data[i][1][1:])
    return num_tokens


def _raise_nonfinite(losses: torch.Tensor, idx: list[int], state: BatchState) -> None:
    """The error of a batch whose loss or some hooked gradient was not finite (reads values: error path only)."""
    bad = ~torch.isfinite(losses)
    if bad.any():
        raise DeanError(f"the loss of sample {idx[int(bad.nonzero()[0])]} is {losses[bad][0].item()}: "
                        "the model overflows on it (try float32) or the sample is broken.")
    raise DeanError(f"non-finite gradient at module {state.first_nonfinite()!r} while scoring sample(s) {idx}: "
                    "the model overflows (fp16?); score in float32 or bfloat16, or drop those samples.")


def _groups(model: nn.Module, names: list[str], layers_per_pass: Optional[int],
            modules_per_pass: Optional[int]) -> list[tuple[list[str], Optional[nn.Module]]]:
    """The passes: (module names, the decoder block where the backward may stop, or None for a full backward)."""
    if layers_per_pass is None:
        size = modules_per_pass or len(names)
        return [(names[i:i + size], None) for i in range(0, len(names), size)]
    from ..mask import layer_index

    blocks = decoder_blocks(model)
    by_layer: dict[Optional[int], list[str]] = {}
    for name in names:
        index = layer_index(name)
        by_layer.setdefault(index if index is not None and index < len(blocks) else None, []).append(name)
    layers = sorted(k for k in by_layer if k is not None)
    groups: list[tuple[list[str], Optional[nn.Module]]] = []
    for start in range(0, len(layers), layers_per_pass):
        chunk = layers[start:start + layers_per_pass]
        groups.append(([n for layer in chunk for n in by_layer[layer]], blocks[chunk[0]] if chunk[0] > 0 else None))
    if None in by_layer:  # modules outside the numbered blocks need the whole backward
        groups.append((by_layer[None], None))
    return groups


def score_importance(
    model: nn.Module,
    examples: Any,
    *,
    tokenizer: Any = None,
    target_modules: TargetModules = "all-linear",
    scorer: str = "snip",
    batch_size: int = 1,
    keep: float = DEFAULT_KEEP,
    layers_per_pass: Optional[int | str] = None,
    modules_per_pass: Optional[int] = None,
    group_by_length: bool = True,
    trim_logits: bool = True,
    distributed: Optional[bool] = None,
    fused_kernel: str = "auto",
    show_progress: bool = True,
    description: str = "scoring",
    **data_options: Any,
) -> ImportanceScores:
    """Score every weight of the target modules on `examples`, in one forward+backward per batch.

    `examples` are tokenized dicts with `input_ids` and `labels` (-100 on prompt tokens), or, with `tokenizer`,
    any data `dean_hf.data.as_examples` takes ("embedded:privacy", a CSV path, records, a `datasets.Dataset`);
    `data_options` (n, seed, max_length, chat_template, prompt_column, ...) go to it. The "snip" score is
    `|W| * sum_i |dL_i/dW|` with L_i sample i's mean response-token NLL; "wanda" is `|W| * ||X||_2` of the
    inputs. Padded batches give the scores of `batch_size=1`. The model is left as it was: parameters'
    `requires_grad` and `.grad`, train/eval mode, no hooks.

    The accumulators (fp32, one per target weight) live on each weight's device. When a pass is done they are
    reduced to each matrix's top `keep` fraction (default 1e-2: selection then works for every q, p up to
    1e-2 and gives exactly the dense result) and moved to the CPU; `keep=1.0` keeps dense scores (26 GB for a
    7B model). `layers_per_pass=k` scores k decoder layers per pass, with only their accumulators alive and the
    backward stopped below them (one forward+backward per batch per pass); "auto" picks k from the memory plan
    (`dean plan`) and the accelerators' free memory, or one pass where everything fits. `modules_per_pass`
    splits the modules into passes without stopping the backward. `group_by_length` batches samples of similar
    length together (less padding; same scores). `trim_logits` computes logits only at the positions the loss
    reads, for models whose forward takes `logits_to_keep`. Under torch.distributed (`distributed=None`
    detects it), each process scores its share of the samples and the accumulators are summed with one
    all-reduce: every rank gets the single-process scores. `fused_kernel` ("auto", "on", "off") chooses how the
    SNIP scorer sums |per-sample gradients|: "auto" uses the fused Triton kernel (`scoring/fused_abs_grad.py`: no
    per-sample matrix, the cost of one weight-gradient product) where it runs (CUDA, triton installed, float32,
    bfloat16 or float16 activations) and the batched per-sample products elsewhere; "on" always uses it (a
    DeanError where it cannot run); "off" never. The scores are the same either way (fp32 sums).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DeanError(f"batch_size={batch_size!r}: expected a positive integer.")
    for option, value in (("modules_per_pass", modules_per_pass),
                          ("layers_per_pass", None if layers_per_pass == "auto" else layers_per_pass)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DeanError(f"{option}={value!r}: expected a positive integer or None.")
    if layers_per_pass is not None and modules_per_pass is not None:
        raise DeanError("pass layers_per_pass or modules_per_pass, not both.")
    keep = check_keep(keep)
    score_fn = get_scorer(scorer)
    score_fn.fused_kernel = check_fused_kernel(fused_kernel)
    if tokenizer is not None or isinstance(examples, (str, os.PathLike)):
        from ..data import as_examples

        if tokenizer is None:
            raise DeanError(f"examples={examples!r} is a data name: pass tokenizer=... to tokenize it.")
        examples = as_examples(examples, tokenizer, **data_options)
    elif data_options:
        raise DeanError(f"{sorted(data_options)} are options for data that needs tokenizing: pass tokenizer=....")
    data = _check_examples(examples)
    modules = find_target_modules(model, target_modules)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    pad_id = pad_id if isinstance(pad_id, int) else 0
    device = _input_device(model)
    if fused_kernel == "on":  # before any work: say why it cannot run
        _check_fused_kernel_runs(score_fn, scorer, device, next(iter(modules.values())).weight.dtype)
    fingerprint = weight_fingerprint(modules)
    rank, world = _distributed(distributed)
    shard = list(range(rank, len(data), world))
    if layers_per_pass == "auto":  # from the memory plan and the accelerators' free memory (None on the CPU)
        from ..memory import auto_layers_per_pass

        longest = max(len(ids) for ids, _ in data)
        response = max(sum(label != -100 for label in labels) for _, labels in data)
        dtype = next(iter(modules.values())).weight.dtype
        fused = score_fn.has_fused_kernel and fused_kernel != "off" and fused_kernel_unavailable(
            device, dtype, allow_interpreter=fused_kernel == "on") is None
        layers_per_pass = auto_layers_per_pass(model, batch_size=batch_size, max_length=longest,
                                               response_tokens=response, target_modules=target_modules,
                                               fused_kernel=fused)
        if layers_per_pass:
            logger.info("layers_per_pass='auto': one set of accumulators does not fit beside the model; scoring "
                        "%d layers per pass", layers_per_pass)
    groups = _groups(model, list(modules), layers_per_pass, modules_per_pass)
    scores: dict[str, ImportanceScores] = {}
    accumulators: dict[str, torch.Tensor] = {}
    num_tokens = 0
    try:
        for number, (group, grad_from) in enumerate(groups):
            sub = {n: modules[n] for n in group}
            accumulators = {n: score_fn.init(m) for n, m in sub.items()}
            desc = description if len(groups) == 1 else f"{description} ({number + 1}/{len(groups)})"
            tokens = _run_pass(model, data, shard, sub, score_fn, accumulators, batch_size=batch_size,
                               group_by_length=group_by_length, trim_logits=trim_logits, pad_id=pad_id, device=device,
                               show_progress=_bars_wanted(show_progress) and rank == 0, description=desc,
                               grad_from=grad_from)
            num_tokens = tokens if number == 0 else num_tokens
            if world > 1:
                _all_reduce(accumulators)
            finished = {n: score_fn.finalize(sub[n], accumulators.pop(n)) for n in group}
            _check_finite_scores(finished)
            scores[str(number)] = scores_from_accumulators(finished, {}, keep)  # on the CPU, reduced to `keep`
            del finished
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
        "keep": keep,
        "fused_kernel": fused_kernel,
        "dean_hf_version": __version__,
    }
    logger.info("scored %d modules on %d samples (%d response tokens)", len(modules), len(data), num_tokens)
    return ImportanceScores.merge(list(scores.values()), metadata, order=list(modules))


def check_fused_kernel_on(scorer: str, device: Optional[torch.device] = None) -> None:
    """For `fused_kernel='on'`, before a model is loaded: DeanError if it cannot work whatever the model (the scorer
    has no fused kernel, triton is missing, the kernel cannot run on `device`, where the model will be; None: on
    any device of this process, for a device map that places the model itself)."""
    _check_fused_kernel_runs(get_scorer(scorer), scorer, device, None if device is None else torch.float32)


def _check_fused_kernel_runs(score_fn: Scorer, scorer: str, device: Optional[torch.device],
                             dtype: Optional[torch.dtype]) -> None:
    """DeanError unless `score_fn` has a fused kernel and it runs for `dtype` activations on `device` (None, None:
    on some device of this process)."""
    if not score_fn.has_fused_kernel:
        raise DeanError(f"fused_kernel='on' but scorer={scorer!r} has no fused kernel (it sums no per-sample "
                        "gradients; only 'snip' has one): use fused_kernel='auto'.")
    why = fused_kernel_unavailable_here() if device is None else fused_kernel_unavailable(device, dtype)
    if why is not None:
        raise cannot_run_error(why)


def _check_finite_scores(scores: Mapping[str, torch.Tensor]) -> None:
    """One read for all modules of a pass (not one per module): are the finished scores finite?"""
    flags = torch.stack([torch.isfinite(s).all().to(next(iter(scores.values())).device) for s in scores.values()])
    if not bool(flags.all()):
        bad = next(n for n, s in scores.items() if not bool(torch.isfinite(s).all()))
        raise DeanError(f"the scores of module {bad!r} contain NaN or inf: its weights or inputs are not finite; "
                        "check the model in float32.")


def _all_reduce(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import torch.distributed as dist

    for t in tensors.values():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tensors
