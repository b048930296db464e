"""What scoring holds in memory, in bytes, from a model's config alone: the arithmetic that scoring's
`layers_per_pass='auto'` and the advice of `dean plan` (dean_hf/plan.py) share.

The model is built on the meta device (accelerate's `init_empty_weights`: no memory), and one forward pass at the
planned batch size and length is traced there: every tensor autograd saves for the backward pass and every input
the scoring hooks hold is counted, by the layer that made it. Attention is counted as a fused kernel keeps it (no
tokens x tokens matrix: the GPU and recent CPU kernels never store it). Weights, one set of fp32 accumulators, the
loss's vocabulary-sized buffers and the largest per-module temporary complete the estimate, per device of a
`device_map` (or on one "device" when there is none).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .errors import DeanError, quote
from .modules import decoder_blocks, is_conv1d, keeps_logits
from .targets import TargetModules, find_target_modules

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The per-sample gradient block of the SNIP scorer is at most this many fp32 elements (see scoring/scorers.py).
_SNIP_BLOCK_ELEMENTS = 64 * 1024 * 1024
GIB = 1024 ** 3
OFFLOADED = ("cpu", "disk")


def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise DeanError(f"dtype={quote(dtype)}: expected one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def meta_model(config: Any, dtype: torch.dtype) -> nn.Module:
    """The model of `config` with every weight on the meta device (no memory is allocated)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError) as err:
        raise DeanError(f"a {type(config).__name__} with these values cannot build a model ({type(err).__name__}: "
                        f"{quote(' '.join(str(err).split()), 200)}): check the config's sizes.") from None
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
    kwargs = {"logits_to_keep": positions} if keeps_logits(model) else {}
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


def check_shape(batch_size: int, max_length: int) -> None:
    """Both positive integers, or a DeanError naming the bad one."""
    for what, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DeanError(f"{what}={quote(value)}: expected a positive integer.")


@dataclass
class ScoringSizes:
    """The bytes scoring a model holds at one batch shape, by module, before any placement (see `scoring_sizes`)."""

    model: str
    dtype: torch.dtype
    batch_size: int
    max_length: int
    module_weights: dict[str, int]  # each module's own parameters, by module name
    accumulators: dict[str, int]  # each scored module's fp32 accumulators
    layer_of: dict[str, int]  # scored module -> its decoder block (modules outside the blocks are absent)
    block_names: list[str]
    activations: dict[int, int]  # per decoder block; -1: outside the blocks
    input_module: str
    head_module: Optional[str]
    logits_elements: int
    logits_peak: int
    module_peak: int
    num_parameters: int
    num_target_weights: int


def scoring_sizes(meta: nn.Module, *, name: str, dtype: torch.dtype, batch_size: int, max_length: int,
                  response_tokens: Optional[int] = None, target_modules: TargetModules = "all-linear",
                  fused_kernel: bool = False) -> ScoringSizes:
    """Trace `meta` (a model on the meta device, see `meta_model`) at `batch_size` x `max_length`, the loss reading
    `response_tokens` positions per sample (default: all), and size every part that scoring holds (`fused_kernel`:
    scoring with the fused per-sample kernel, which has no per-sample transient)."""
    check_shape(batch_size, max_length)
    targets = find_target_modules(meta, target_modules)
    response = max_length - 1 if response_tokens is None else min(int(response_tokens), max_length - 1)
    trace = trace_activations(meta, targets, batch_size, max_length, max(2, response))
    element = torch.finfo(dtype).bits // 8
    names = {id(m): n for n, m in meta.named_modules()}
    blocks = decoder_blocks(meta)
    layer = {}
    for i, block in enumerate(blocks):
        for sub in block.modules():
            layer[id(sub)] = i
    head = meta.get_output_embeddings()
    return ScoringSizes(
        model=name, dtype=dtype, batch_size=batch_size, max_length=max_length,
        module_weights={n: sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
                        for n, m in meta.named_modules()},
        accumulators={names[id(m)]: 4 * m.weight.numel() for m in targets.values()},
        layer_of={names[id(m)]: layer[id(m)] for m in targets.values() if id(m) in layer},
        block_names=[names[id(b)] for b in blocks], activations=dict(trace.per_block),
        input_module=names[id(meta.get_input_embeddings())], head_module=names[id(head)] if head is not None else None,
        logits_elements=trace.logits_elements,
        logits_peak=trace.logits_elements * (element + (4 if element != 4 else 0) + 4),  # logits, fp32 copy, gradient
        module_peak=max(_module_transient(m, batch_size, max_length, fused_kernel) for m in targets.values()),
        num_parameters=sum(p.numel() for p in meta.parameters()),
        num_target_weights=sum(m.weight.numel() for m in targets.values()))


def device_of(module_name: str, device_map: Optional[Mapping[str, Any]]) -> str:
    """The device a `device_map` (accelerate's: module-name prefixes -> device) gives a module ("device" if None)."""
    if device_map is None:
        return "device"
    best, where = -1, None
    for prefix, dev in device_map.items():
        if prefix == "" or module_name == prefix or module_name.startswith(prefix + "."):
            if len(prefix) > best:
                best, where = len(prefix), dev
    return str(where) if where is not None else "cpu"


@dataclass
class MemoryEstimate:
    """What scoring and applying a mask need, in bytes, per device (see `estimate_scoring`)."""

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

    def total(self, part: str) -> int:
        """The sum over devices of one part ('weights', 'scoring_peak', ...)."""
        return sum(getattr(self, part).values())

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def estimate_scoring(sizes: ScoringSizes, device_map: Optional[Mapping[str, Any]] = None,
                     cls: type = MemoryEstimate, main: Optional[str] = None) -> Any:
    """`sizes` placed by `device_map` (None: all on one "device"), as a `cls` (a `MemoryEstimate`). Weights of
    offloaded modules (cpu/disk) compute on the first accelerator, as accelerate dispatches them: their activations,
    temporaries and (the largest one at a time) their weights count there; their accumulators are kept in CPU RAM,
    where the scorer keeps them. `main` is the accelerator they compute on when the map puts none there."""
    named = {n for n, nbytes in sizes.module_weights.items() if nbytes} | set(sizes.block_names) | {sizes.input_module}
    place = {n: device_of(n, device_map) for n in sizes.module_weights if n in named}
    devices = list(dict.fromkeys(place.values()))
    accelerators = [d for d in devices if d not in OFFLOADED] or ([main] if main else [])

    def runs_on(module_name: str) -> str:
        dev = place.get(module_name, devices[0])
        return accelerators[0] if dev in OFFLOADED and accelerators else dev

    weights: dict[str, int] = defaultdict(int)
    accumulators: dict[str, int] = defaultdict(int)
    activations: dict[str, int] = defaultdict(int)
    transient: dict[str, int] = defaultdict(int)
    for module_name, nbytes in sizes.module_weights.items():
        if nbytes:
            weights[place[module_name]] += nbytes
    for module_name, nbytes in sizes.accumulators.items():
        accumulators["cpu" if place[module_name] in OFFLOADED else place[module_name]] += nbytes
    first = runs_on(sizes.input_module)
    last = runs_on(sizes.head_module) if sizes.head_module is not None else devices[-1]
    block_device = [runs_on(b) for b in sizes.block_names]
    for i, nbytes in sizes.activations.items():
        activations[block_device[i] if 0 <= i < len(block_device) else first] += nbytes
    transient[last] = sizes.logits_peak
    for module_name in sizes.accumulators:
        dev = runs_on(module_name)
        transient[dev] = max(transient[dev], sizes.module_peak)
    offloaded = _offloaded_groups(sizes, device_map)
    if offloaded and accelerators:  # accelerate loads one offloaded group's weights at a time onto the accelerator
        transient[accelerators[0]] += max(offloaded.values())
    all_devices = list(dict.fromkeys(accelerators + devices + list(accumulators) + list(activations) + list(transient)))
    scoring_peak = {d: weights[d] + accumulators[d] + activations[d] + transient[d] for d in all_devices}
    # Applying a mask holds the weights and, per masked entry, its index and original value (a few MiB at most).
    return cls(model=sizes.model, dtype=str(sizes.dtype).replace("torch.", ""), batch_size=sizes.batch_size,
               max_length=sizes.max_length, num_parameters=sizes.num_parameters,
               num_target_weights=sizes.num_target_weights, weights={d: weights[d] for d in all_devices},
               accumulators={d: accumulators[d] for d in all_devices},
               activations={d: activations[d] for d in all_devices}, transient={d: transient[d] for d in all_devices},
               scoring_peak=scoring_peak, apply_peak={d: weights[d] for d in all_devices})


def _offloaded_groups(sizes: ScoringSizes, device_map: Optional[Mapping[str, Any]]) -> dict[str, int]:
    """The weights of each module group a `device_map` puts on cpu/disk."""
    if not device_map:
        return {}
    out = {}
    for prefix, dev in device_map.items():
        if str(dev) in OFFLOADED:
            out[prefix] = sum(v for n, v in sizes.module_weights.items()
                              if prefix == "" or n == prefix or n.startswith(prefix + "."))
    return out


def estimate_config(config: Any, *, dtype: Union[str, torch.dtype] = "bfloat16", batch_size: int = 1,
                    max_length: int = 512, response_tokens: Optional[int] = None,
                    target_modules: TargetModules = "all-linear", fused_kernel: bool = False) -> MemoryEstimate:
    """The memory of scoring a model of `config` on one device (see `scoring_sizes`)."""
    torch_dtype = _dtype(dtype)
    sizes = scoring_sizes(meta_model(config, torch_dtype), name=str(getattr(config, "_name_or_path", "") or
                                                                        type(config).__name__),
                          dtype=torch_dtype, batch_size=batch_size, max_length=max_length,
                          response_tokens=response_tokens, target_modules=target_modules,
                          fused_kernel=fused_kernel)
    return estimate_scoring(sizes)


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
    memory of its accelerators (or it runs on the CPU), else how many decoder layers fit per pass, from the
    estimate of its config at this batch size and length."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    config = getattr(model, "config", None)
    if not devices or config is None:
        return None
    dtype = next(p.dtype for p in model.parameters() if p.device.type == "cuda")
    estimate = estimate_config(config, dtype=dtype, batch_size=batch_size, max_length=max_length,
                               response_tokens=response_tokens, target_modules=target_modules,
                               fused_kernel=fused_kernel)
    layers = len(decoder_blocks(model)) or 1
    # A pass holds contiguous layers, whose accumulators live on those layers' own GPU: every GPU must hold a
    # pass's share, so the tightest one decides (activations and temporaries counted on each, conservatively).
    fits = [layers_that_fit(estimate, torch.cuda.mem_get_info(d)[0] * margin, layers, per_device=len(devices))
            for d in sorted(devices, key=str)]
    return None if all(k is None for k in fits) else min(k for k in fits if k is not None)


def layers_that_fit(plan: MemoryEstimate, free: float, layers: int, per_device: int = 1) -> Optional[int]:
    """None when the estimate's accumulators (split over `per_device` devices), activations and temporaries fit
    in `free` bytes of one device (beside the weights, already loaded), else how many of the `layers` decoder
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
