"""A memory plan for scoring and applying, from a model's config alone, before anything runs.

The model is built on the meta device (accelerate's `init_empty_weights`: no memory), and one forward pass at the
planned batch size and length is traced there: every tensor autograd saves for the backward pass and every input
the scoring hooks hold is counted, by the layer that made it. Attention is counted as a fused kernel keeps it (no
tokens x tokens matrix: the GPU and recent CPU kernels never store it). Weights, one set of fp32 accumulators, the
loss's vocabulary-sized buffers and the largest per-module temporary complete the plan. Placement over devices is
accelerate's `infer_auto_device_map`, with room kept for the accumulators and activations.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .errors import DeanError, quote
from .logging import get_logger
from .modules import decoder_blocks
from .scoring.loss import _keeps_logits
from .targets import TargetModules, find_target_modules, is_conv1d

logger = get_logger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The per-sample gradient block of the SNIP scorer is at most this many fp32 elements (see scoring/scorers.py).
_SNIP_BLOCK_ELEMENTS = 64 * 1024 * 1024
GIB = 1024 ** 3


def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise DeanError(f"dtype={quote(dtype)}: expected one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def load_config(model: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """A transformers config from a `config.json` file, a folder holding one, 'default', or a Hub id (online)."""
    from transformers import AutoConfig

    from .models import DEFAULT_ALIASES, _check_model_name, resolve_model_path

    text = str(model)
    path = Path(text)
    if path.is_file():
        from .io import read_json

        data = read_json(path, "model config")
        if "model_type" not in data:
            raise DeanError(f"{quote(text)} has no 'model_type': it is not a transformers config.json.")
        return AutoConfig.for_model(**data)
    if text.lower() in DEFAULT_ALIASES:
        text = resolve_model_path(text)
    _check_model_name(text)
    try:
        return AutoConfig.from_pretrained(text, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise DeanError(f"could not read the config of {quote(text)} ({quote(str(err), 200)}): pass a local "
                        "config.json or folder, or a Hub id while online.") from None


def meta_model(config: Any, dtype: torch.dtype) -> nn.Module:
    """The model of `config` with every weight on the meta device (no memory is allocated)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


@dataclass
class _Trace:
    per_block: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # -1: outside the blocks
    logits_elements: int = 0


def trace_activations(model: nn.Module, targets: Mapping[str, nn.Module], batch_size: int, length: int,
                      response_tokens: int) -> _Trace:
    """Bytes that stay alive from the forward pass into the backward pass, per decoder block: tensors autograd
    saves (parameters and buffers excluded) and the module inputs the scoring hooks hold; on a meta model."""
    params = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    blocks = decoder_blocks(model)
    index = {id(b): i for i, b in enumerate(blocks)}
    current = [-1]
    counted: set[int] = set()
    trace = _Trace()

    def base(t: torch.Tensor) -> torch.Tensor:
        while t._base is not None:
            t = t._base
        return t

    def count(t: torch.Tensor) -> None:
        b = base(t)
        if id(b) in params or id(b) in counted or b.device.type != "meta":
            return
        counted.add(id(b))
        keep.append(b)  # keep the object alive, so that its id is not reused by another tensor
        shape = tuple(b.shape)
        if len(shape) >= 2 and shape[-1] == shape[-2] == length and length > 1:
            # tokens x tokens attention weights: a fused kernel keeps one fp32 log-sum-exp per row instead
            trace.per_block[current[0]] += math.prod(shape[:-1]) * 4
            return
        trace.per_block[current[0]] += b.numel() * b.element_size()

    keep: list[torch.Tensor] = []
    handles = []

    def enter(i: int):
        def hook(module, args):
            current[0] = i
        return hook

    def leave(module, args, output):
        current[0] = -1

    for block in blocks:
        handles.append(block.register_forward_pre_hook(enter(index[id(block)])))
        handles.append(block.register_forward_hook(leave))
    for module in targets.values():
        handles.append(module.register_forward_hook(lambda m, args, out: count(args[0])))
    embeddings = model.get_input_embeddings()
    handles.append(embeddings.register_forward_hook(lambda m, a, out: out.requires_grad_(True)))
    ids = torch.zeros((batch_size, length), dtype=torch.long, device="meta")
    # A 4-D mask keeps transformers' mask preparation (which reads values) out of the meta pass.
    mask = torch.ones((batch_size, 1, length, length), dtype=torch.bool, device="meta")
    positions = torch.arange(length - response_tokens - 1, length - 1, device="meta")
    kwargs = {"logits_to_keep": positions} if _keeps_logits(model) else {}
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (count(t), t)[1], lambda t: t):
            with torch.enable_grad():
                out = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - an architecture whose forward reads values cannot be traced
        raise DeanError(f"{type(model).__name__} cannot be traced on the meta device ({type(err).__name__}: "
                        f"{quote(str(err), 200)}); its memory cannot be planned from the config alone.") from None
    finally:
        for handle in handles:
            handle.remove()
    trace.logits_elements = out.logits.numel()
    return trace


def _module_transient(module: nn.Module, batch_size: int, length: int, fused_kernel: bool = False) -> int:
    """Bytes of the SNIP scorer's temporaries for one module: fp32 copies of its input and output gradient and
    the per-sample gradient block; none with the fused kernel (scoring/fused_abs_grad.py), which reads the
    activations as they are and keeps its sums in registers."""
    if fused_kernel:
        return 0
    shape = tuple(module.weight.shape)
    in_f, out_f = (shape[0], shape[1]) if is_conv1d(module) else (shape[1], shape[0])
    numel = in_f * out_f
    per_block = max(1, _SNIP_BLOCK_ELEMENTS // max(1, numel))
    return 4 * (batch_size * length * (in_f + out_f) + min(batch_size, per_block) * numel)


@dataclass
class MemoryPlan:
    """What scoring and applying a mask need, in bytes, per device (see `estimate_memory`)."""

    model: str
    dtype: str
    batch_size: int
    max_length: int
    num_parameters: int
    num_target_weights: int
    weights: dict[str, int]
    accumulators: dict[str, int]
    activations: dict[str, int]
    transient: dict[str, int]
    scoring_peak: dict[str, int]
    apply_peak: dict[str, int]
    device_map: Optional[dict[str, Any]] = None
    max_memory: Optional[dict[str, int]] = None
    layers_per_pass: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    def total(self, part: str) -> int:
        """The sum over devices of one part ('weights', 'scoring_peak', ...)."""
        return sum(getattr(self, part).values())

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def to_text(self) -> str:
        """A table per device, in GiB, with the suggested placement."""
        def gib(n: int) -> str:
            return f"{n / GIB:.2f}"

        rows = [("device", "weights", "accumulators", "activations", "transient", "scoring peak", "apply peak")]
        for dev in self.weights:
            rows.append((dev, gib(self.weights[dev]), gib(self.accumulators.get(dev, 0)),
                         gib(self.activations.get(dev, 0)), gib(self.transient.get(dev, 0)),
                         gib(self.scoring_peak[dev]), gib(self.apply_peak[dev])))
        if len(self.weights) > 1:
            rows.append(("total", gib(self.total("weights")), gib(self.total("accumulators")),
                         gib(self.total("activations")), gib(self.total("transient")), gib(self.total("scoring_peak")),
                         gib(self.total("apply_peak"))))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Memory plan for {self.model} ({self.dtype}, batch {self.batch_size} x {self.max_length} tokens; "
                 f"{self.num_parameters / 1e9:.2f}B parameters, {self.num_target_weights / 1e9:.2f}B scored), GiB:"]
        lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
        if self.device_map is not None:
            placed = defaultdict(int)
            for where in self.device_map.values():
                placed[str(where)] += 1
            lines.append("Suggested device_map (accelerate's infer_auto_device_map, room kept for scoring): "
                         + ", ".join(f"{n} module group(s) on {d}" for d, n in placed.items()))
            lines.append("  load with: AutoModelForCausalLM.from_pretrained(..., device_map='auto', "
                         f"max_memory={ {k: f'{v / GIB:.0f}GiB' for k, v in (self.max_memory or {}).items()} })")
        if self.layers_per_pass:
            lines.append(f"One set of accumulators does not fit beside the model: score with "
                         f"layers_per_pass={self.layers_per_pass}.")
        lines += self.notes
        return "\n".join(lines)


def _parse_memory(max_memory: Optional[Mapping[Any, Any]]) -> Optional[dict[Any, int]]:
    if max_memory is None:
        return None
    from accelerate.utils import convert_file_size_to_int

    out = {}
    for key, value in max_memory.items():
        try:
            out[int(key) if str(key).isdigit() else str(key)] = convert_file_size_to_int(value)
        except (ValueError, TypeError):
            raise DeanError(f"max_memory[{key!r}]={quote(value)}: expected a size such as '80GiB'.") from None
    return out


def estimate_memory(model: Union[str, os.PathLike, Any], *, dtype: Union[str, torch.dtype] = "bfloat16",
                    batch_size: int = 1, max_length: int = 512, response_tokens: Optional[int] = None,
                    target_modules: TargetModules = "all-linear",
                    max_memory: Optional[Mapping[Any, Any]] = None, fused_kernel: bool = False) -> MemoryPlan:
    """Plan the memory of scoring (one data set's fp32 accumulators, as `fit` holds them) and of applying a mask,
    from a model's config alone: `model` is a config, a `config.json` path or folder, 'default', or a Hub id.

    `response_tokens` is the number of positions the loss reads per sample (default: all of `max_length`).
    With `max_memory` ({0: "80GiB", 1: "80GiB", "cpu": "200GiB"}), the plan places the model with accelerate's
    `infer_auto_device_map`, keeping room on each device for its accumulators and activations, and says how
    many layers to score per pass if even one set of accumulators cannot fit. `fused_kernel=True` plans for the
    fused per-sample kernel (CUDA with triton: `score_importance(fused_kernel="auto")` there), which has no
    per-sample transient."""
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DeanError(f"{name}={quote(value)}: expected a positive integer.")
    torch_dtype = _dtype(dtype)
    config = model if hasattr(model, "model_type") else load_config(model)
    name = getattr(config, "_name_or_path", None) or (type(config).__name__ if hasattr(model, "model_type")
                                                      else str(model))
    meta = meta_model(config, torch_dtype)
    targets = find_target_modules(meta, target_modules)
    response = max_length - 1 if response_tokens is None else min(int(response_tokens), max_length - 1)
    trace = trace_activations(meta, targets, batch_size, max_length, max(2, response))
    vocab = trace.logits_elements // max(1, batch_size * max(2, response))
    element = torch.finfo(torch_dtype).bits // 8
    logits_peak = trace.logits_elements * (element + (4 if element != 4 else 0) + 4)  # logits, fp32 copy, gradient
    module_peak = max(_module_transient(m, batch_size, max_length, fused_kernel) for m in targets.values())

    blocks = decoder_blocks(meta)
    block_of = {}
    for i, block in enumerate(blocks):
        for sub in block.modules():
            block_of[id(sub)] = i
    max_memory_int = _parse_memory(max_memory)
    device_map = None
    placement: dict[str, str] = {}
    acc_ratio = _accumulator_ratio(meta, blocks, targets, element)
    if max_memory_int:
        device_map = _suggest_device_map(meta, max_memory_int, torch_dtype, acc_ratio, trace, logits_peak + module_peak)
        for module_name, module in meta.named_modules():
            placement[module_name] = _device_of(module_name, device_map)
    devices = list(dict.fromkeys(placement.values())) if placement else ["device"]

    def device_for(module_name: str) -> str:
        return placement.get(module_name, devices[0]) if placement else "device"

    weights: dict[str, int] = defaultdict(int)
    accumulators: dict[str, int] = defaultdict(int)
    for module_name, module in meta.named_modules():
        own = sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
        weights[device_for(module_name)] += own
    for target_name, module in targets.items():
        accumulators[device_for(_find_name(meta, module))] += module.weight.numel() * 4
    activations: dict[str, int] = defaultdict(int)
    accelerators = [d for d in devices if d not in ("cpu", "disk", "device")]

    def runs_on(module_name: str) -> str:
        """Where a module computes: offloaded modules (cpu/disk) run on the first accelerator, as accelerate
        dispatches them; their activations and temporaries live there."""
        dev = device_for(module_name)
        return accelerators[0] if dev in ("cpu", "disk") and accelerators else dev

    first = runs_on(_find_name(meta, meta.get_input_embeddings()))
    head = meta.get_output_embeddings()
    last = runs_on(_find_name(meta, head)) if head is not None else devices[-1]
    block_device = [runs_on(_find_name(meta, b)) for b in blocks]
    for i, nbytes in trace.per_block.items():
        activations[block_device[i] if i >= 0 and i < len(block_device) else first] += nbytes
    transient: dict[str, int] = defaultdict(int)
    transient[last] = max(transient[last], logits_peak)
    for target_name, module in targets.items():
        dev = runs_on(_find_name(meta, module))
        transient[dev] = max(transient[dev], module_peak if dev != last else max(logits_peak, module_peak))
    all_devices = list(dict.fromkeys(list(weights) + list(activations) + list(transient)))
    scoring_peak = {d: weights[d] + accumulators[d] + activations[d] + transient[d] for d in all_devices}
    # Applying a mask holds the weights and, per masked entry, its index and original value (a few MiB at most).
    apply_peak = {d: weights[d] for d in all_devices}
    plan = MemoryPlan(model=str(name), dtype=str(torch_dtype).replace("torch.", ""), batch_size=batch_size,
                      max_length=max_length, num_parameters=sum(p.numel() for p in meta.parameters()),
                      num_target_weights=sum(m.weight.numel() for m in targets.values()),
                      weights={d: weights[d] for d in all_devices}, accumulators={d: accumulators[d] for d in all_devices},
                      activations={d: activations[d] for d in all_devices},
                      transient={d: transient[d] for d in all_devices}, scoring_peak=scoring_peak,
                      apply_peak=apply_peak, device_map=device_map,
                      max_memory={str(k): v for k, v in max_memory_int.items()} if max_memory_int else None)
    if vocab:
        plan.notes.append(f"The loss holds {trace.logits_elements / 1e6:.1f}M logits ({vocab} per position) at once; "
                          "fewer response tokens per batch lower the transient column.")
    if max_memory_int:
        plan.layers_per_pass = _layers_per_pass(plan, max_memory_int, blocks, targets, meta)
    return plan


def _accumulator_ratio(meta: nn.Module, blocks: list[nn.Module], targets: Mapping[str, nn.Module],
                       element: int) -> float:
    """The largest ratio, over decoder blocks, of a block's fp32 accumulators to its weights: the room a device
    needs per byte of weights placed on it."""
    target_ids = {id(m) for m in targets.values()}
    ratios = []
    for block in blocks or [meta]:
        weights = sum(p.numel() * element for p in block.parameters())
        acc = sum(4 * m.weight.numel() for m in block.modules() if id(m) in target_ids)
        ratios.append(acc / max(1, weights))
    return max(ratios)


def _find_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    return ""


def _device_of(module_name: str, device_map: Mapping[str, Any]) -> str:
    best, where = -1, None
    for prefix, dev in device_map.items():
        if prefix == "" or module_name == prefix or module_name.startswith(prefix + "."):
            if len(prefix) > best:
                best, where = len(prefix), dev
    return str(where) if where is not None else "cpu"


def _suggest_device_map(meta: nn.Module, max_memory: dict[Any, int], dtype: torch.dtype, acc_ratio: float,
                        trace: _Trace, transient: int) -> dict[str, Any]:
    """accelerate's `infer_auto_device_map`, with each device's budget shrunk so that the weights placed there
    leave room for their fp32 accumulators and activations."""
    from accelerate import infer_auto_device_map

    activations = sum(trace.per_block.values())
    accelerators = [k for k in max_memory if k not in ("cpu", "disk")]
    share = (activations + transient) / max(1, len(accelerators))
    budget = {}
    for key, value in max_memory.items():
        room = value - share if key in accelerators else value
        budget[key] = max(0, int(room / (1 + acc_ratio)))
    no_split = getattr(meta, "_no_split_modules", None) or []
    quiet = logging.getLogger("accelerate.utils.modeling")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # planning for devices this machine does not have is the point
    try:
        return infer_auto_device_map(meta, max_memory=budget, no_split_module_classes=list(no_split), dtype=dtype)
    finally:
        quiet.setLevel(level)


def _layers_per_pass(plan: MemoryPlan, max_memory: dict[Any, int], blocks: list[nn.Module],
                     targets: Mapping[str, nn.Module], meta: nn.Module) -> Optional[int]:
    """None when one set of accumulators fits beside the model; else the number of decoder layers to score per
    pass so that their accumulators fit in what the weights and activations leave free."""
    capacity = sum(v for k, v in max_memory.items() if k != "disk")
    needed = plan.total("scoring_peak")
    if needed <= capacity or not blocks:
        return None
    free = capacity - plan.total("weights") - plan.total("activations") - max(plan.transient.values())
    per_layer = plan.total("accumulators") / len(blocks)
    if free < per_layer:
        plan.notes.append("Even one layer's accumulators do not fit beside the model: add devices or offload "
                          "weights to the CPU (the hooks need activations, not weights).")
        return 1
    return max(1, int(free // per_layer))


def measure_peak(fn: Any, device: Union[str, torch.device] = "cpu") -> tuple[Any, int]:
    """Run `fn()` and return (its result, the peak bytes of tensor memory while it ran) on `device`, to check a
    plan: on CUDA `torch.cuda.max_memory_allocated`; on the CPU torch's memory profiler (its timeline counts the
    tensors the run allocates or reads, the weights included)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device)
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        result = fn()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(device)
    return result, int(max((sum(row) for row in sizes), default=0))


def auto_layers_per_pass(model: nn.Module, *, batch_size: int, max_length: int, response_tokens: int,
                         target_modules: TargetModules = "all-linear", margin: float = 0.9,
                         fused_kernel: bool = False) -> Optional[int]:
    """`layers_per_pass` for scoring `model` where it is now: None when one set of accumulators fits in the free
    memory of its accelerators (or it runs on the CPU), else how many decoder layers fit per pass, from the plan
    of its config at this batch size and length."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    config = getattr(model, "config", None)
    if not devices or config is None:
        return None
    dtype = next(p.dtype for p in model.parameters() if p.device.type == "cuda")
    plan = estimate_memory(config, dtype=dtype, batch_size=batch_size, max_length=max_length,
                           response_tokens=response_tokens, target_modules=target_modules,
                           fused_kernel=fused_kernel)
    layers = len(decoder_blocks(model)) or 1
    # A pass holds contiguous layers, whose accumulators live on those layers' own GPU: every GPU must hold a
    # pass's share, so the tightest one decides (activations and temporaries counted on each, conservatively).
    fits = [layers_that_fit(plan, torch.cuda.mem_get_info(d)[0] * margin, layers, per_device=len(devices))
            for d in sorted(devices, key=str)]
    return None if all(k is None for k in fits) else min(k for k in fits if k is not None)


def layers_that_fit(plan: MemoryPlan, free: float, layers: int, per_device: int = 1) -> Optional[int]:
    """None when the plan's accumulators (split over `per_device` devices), activations and temporaries fit in
    `free` bytes of one device (beside the weights, already loaded), else how many of the `layers` decoder
    layers' accumulators fit per pass on it."""
    rest = plan.total("activations") + max(plan.transient.values())
    if plan.total("accumulators") / per_device + rest <= free:
        return None
    per_layer = plan.total("accumulators") / layers
    if free - rest < per_layer:
        raise DeanError(f"even one decoder layer's accumulators ({per_layer / GIB:.1f} GiB) do not fit in the "
                        f"{free / GIB:.1f} GiB free beside the model: offload weights to the CPU (device_map with "
                        "'cpu'), lower batch_size or max_length, or add devices (see `dean plan`).")
    return max(1, int((free - rest) // per_layer))
