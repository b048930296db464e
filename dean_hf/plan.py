"""`dean plan`: where to load a model and how to score it, from its config alone, before anything runs.

The sizes are dean_hf/memory.py's (the arithmetic scoring shares); this module gives the advice, with one placement
model: the device_map the plan shows is the one `AutoModelForCausalLM.from_pretrained(..., device_map='auto',
max_memory=<the printed budgets>)` makes (transformers' balanced budgets, then accelerate's
`infer_auto_device_map`), and `layers_per_pass` is the largest number of decoder layers whose accumulators fit, pass
by pass, beside that map on every device. The budgets keep room for scoring: first for one whole pass with every
weight on the accelerators; if that cannot be, for as many layers per pass as fit beside all the weights; and only
where even one layer cannot, the weights that do not fit are offloaded (to the CPU, else to disk).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import OrderedDict, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from .errors import DeanError, quote
from .logging import get_logger
from .models import check_config, load_config  # noqa: F401 - re-exported: they lived here
from .memory import (  # noqa: F401 - re-exported: the arithmetic lived here before dean_hf/memory.py
    _DTYPES, _SNIP_BLOCK_ELEMENTS, GIB, OFFLOADED, MemoryEstimate, ScoringSizes, _dtype, _module_transient, _Trace,
    auto_layers_per_pass, check_shape, device_of, estimate_scoring, layers_that_fit, measure_peak, meta_model,
    scoring_sizes, trace_activations)
from .targets import TargetModules

logger = get_logger(__name__)
MIB = 1024 ** 2
_device_of = device_of
# Memory of common single accelerators, GiB: the advice without max_memory names the smallest that fits.
_GPU_SIZES = (16, 24, 40, 48, 80, 94, 141, 192)
def parse_max_memory(text: str) -> dict[Union[int, str], str]:
    """`--max-memory` text ('0=80GiB,1=80GiB,cpu=200GiB') as the `max_memory` mapping (checked by
    `estimate_memory`)."""
    out: dict[Union[int, str], str] = {}
    for item in text.split(","):
        key, sep, size = item.strip().partition("=")
        if not sep or not key or not size:
            raise DeanError(f"--max-memory {quote(item, 60)}: expected DEVICE=SIZE pairs, e.g. "
                            "0=80GiB,1=80GiB,cpu=200GiB")
        out[int(key) if key.isdigit() and len(key) <= 4 else key] = size
    return out


def _parse_memory(max_memory: Optional[Mapping[Any, Any]]) -> Optional[dict[Union[int, str], int]]:
    """Device -> bytes: GPU indices as ints, 'cpu', 'disk' and 'mps' as named; sizes as accelerate reads them."""
    if max_memory is None:
        return None
    from accelerate.utils import convert_file_size_to_int

    out: dict[Union[int, str], int] = {}
    for key, value in max_memory.items():
        name = int(key) if isinstance(key, int) or (isinstance(key, str) and key.isdigit() and len(key) <= 4) else key
        gpu = isinstance(name, int) and not isinstance(name, bool) and 0 <= name < 10_000
        if not (gpu or name in ("cpu", "disk", "mps")):
            raise DeanError(f"max_memory device {quote(key, 60)}: expected a GPU index (0, 1, ...), 'cpu', 'disk' "
                            "or 'mps'.")
        try:
            size = convert_file_size_to_int(value)
        except (ValueError, TypeError, OverflowError):
            size = None
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < 2 ** 60:
            raise DeanError(f"max_memory[{quote(key, 60)}]={quote(value, 60)}: expected a size from 1 byte to 1 EiB "
                            "such as '80GiB'.")
        out[name] = size
    if not any(k not in OFFLOADED for k in out):
        raise DeanError(f"max_memory names no accelerator ({sorted(map(str, out))}): add one, e.g. 0=80GiB.")
    return out


@dataclass
class MemoryPlan(MemoryEstimate):
    """What scoring and applying a mask need, in bytes, per device, and where to load the model (see
    `estimate_memory`): `max_memory` holds the budgets to load with (they give `device_map`), `memory_limits` the
    devices' sizes the plan was asked for."""

    device_map: Optional[dict[str, Any]] = None
    max_memory: Optional[dict[Union[int, str], int]] = None
    memory_limits: Optional[dict[Union[int, str], int]] = None
    layers_per_pass: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    def load_arguments(self) -> str:
        """The `from_pretrained` arguments that give `device_map` (sizes in whole MiB, exact)."""
        budgets = {k: f"{v // MIB}MiB" for k, v in (self.max_memory or {}).items()}
        return f"device_map='auto', max_memory={budgets}"

    def to_text(self) -> str:
        """A table per device, in GiB, with the placement and the advice."""
        def gib(n: int) -> str:
            return f"{n / GIB:.2f}"

        parts = ("weights", "accumulators", "activations", "transient", "scoring_peak", "apply_peak")
        rows = [("device", "weights", "accumulators", "activations", "transient", "scoring peak", "apply peak")]
        for dev in self.weights:
            rows.append((dev, *(gib(getattr(self, p).get(dev, 0)) for p in parts)))
        if len(self.weights) > 1:
            rows.append(("total", *(gib(self.total(p)) for p in parts)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Memory plan for {self.model} ({self.dtype}, batch {self.batch_size} x {self.max_length} tokens; "
                 f"{self.num_parameters / 1e9:.2f}B parameters, {self.num_target_weights / 1e9:.2f}B scored), GiB:"]
        lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
        if self.device_map is not None:
            placed: dict[str, int] = defaultdict(int)
            for where in self.device_map.values():
                placed[str(where)] += 1
            groups = ", ".join(f"{n} module group(s) on {d}" for d, n in placed.items())
            lines.append("device_map (what from_pretrained makes with the arguments below: accelerate's "
                         f"infer_auto_device_map): {groups}")
            lines.append(f"  load with: AutoModelForCausalLM.from_pretrained(..., {self.load_arguments()})  "
                         "(budgets for the weights: the rest of each device is kept for scoring)")
            if self.layers_per_pass is None:
                lines.append("One set of accumulators fits beside the model: score in one pass (layers_per_pass=None).")
            else:
                lines.append(f"One set of accumulators does not fit beside the model: score with "
                             f"layers_per_pass={self.layers_per_pass} (or layers_per_pass='auto', which reads the "
                             "GPUs' free memory when scoring starts).")
        lines += self.notes
        return "\n".join(lines)


def estimate_memory(model: Union[str, os.PathLike, Any], *, dtype: Union[str, torch.dtype] = "bfloat16",
                    batch_size: int = 1, max_length: int = 512, response_tokens: Optional[int] = None,
                    target_modules: TargetModules = "all-linear",
                    max_memory: Optional[Mapping[Any, Any]] = None, fused_kernel: bool = False) -> MemoryPlan:
    """Plan the memory of scoring (one data set's fp32 accumulators, as `fit` holds them) and of applying a mask,
    from a model's config alone: `model` is a config, a `config.json` path or folder, 'default', or a Hub id.

    `response_tokens` is the number of positions the loss reads per sample (default: all of `max_length`).
    With `max_memory` ({0: "80GiB", 1: "80GiB", "cpu": "200GiB"}: the devices' sizes), the plan gives the budgets
    to load with, the device_map they make, and `layers_per_pass` for that map; without it, the smallest single GPU
    that scores the model, and what to do below it."""
    check_shape(batch_size, max_length)
    torch_dtype = _dtype(dtype)
    limits = _parse_memory(max_memory)
    config = model if hasattr(model, "model_type") else load_config(model)
    check_config(config)
    name = getattr(config, "_name_or_path", None) or (type(config).__name__ if hasattr(model, "model_type")
                                                      else str(model))
    meta, sizes = _sized(config, str(name), torch_dtype, batch_size, max_length, response_tokens, target_modules,
                         fused_kernel)
    plan = _place(meta, sizes, limits) if limits else _single_device(sizes)
    if sizes.logits_elements:
        plan.notes.append(f"The loss holds {sizes.logits_elements / 1e6:.1f}M logits ({_vocab(meta)} per position) "
                          "at once; fewer response tokens per batch lower the transient column.")
    return plan


# The last models built and traced (on the meta device: no memory), so that plans for several sets of devices
# build each model once.
_SIZED: OrderedDict[tuple, tuple[nn.Module, ScoringSizes]] = OrderedDict()


def _sized(config: Any, name: str, dtype: torch.dtype, batch_size: int, max_length: int,
           response_tokens: Optional[int], target_modules: TargetModules,
           fused_kernel: bool = False) -> tuple[nn.Module, ScoringSizes]:
    try:
        text = config.to_json_string(use_diff=False)
    except (AttributeError, TypeError, ValueError):
        text = None
    key = (text, name, str(dtype), batch_size, max_length, response_tokens,
           target_modules if isinstance(target_modules, str) else tuple(target_modules), fused_kernel)
    if text is not None and key in _SIZED:
        _SIZED.move_to_end(key)
        return _SIZED[key]
    meta = meta_model(config, dtype)
    sizes = scoring_sizes(meta, name=name, dtype=dtype, batch_size=batch_size, max_length=max_length,
                          response_tokens=response_tokens, target_modules=target_modules, fused_kernel=fused_kernel)
    if text is not None:
        _SIZED[key] = (meta, sizes)
        while len(_SIZED) > 2:
            _SIZED.popitem(last=False)
    return meta, sizes


def _vocab(meta: nn.Module) -> int:
    head = meta.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None and getattr(head, "weight", None) is not None else 0


def _held(sizes: ScoringSizes, device_map: Optional[Mapping[str, Any]]) -> dict[Optional[int], dict[str, int]]:
    """Accumulator bytes by decoder layer (None: modules outside the layers) and by the device that keeps them
    (the CPU for offloaded modules, as the scorer keeps them)."""
    held: dict[Optional[int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for n, nbytes in sizes.accumulators.items():
        dev = device_of(n, device_map)
        held[sizes.layer_of.get(n)]["cpu" if dev in OFFLOADED else dev] += nbytes
    return held


def _most_per_pass(held: Mapping[Optional[int], Mapping[str, int]], k: Optional[int]) -> dict[str, int]:
    """Per device, the accumulators of the pass that holds the most there, with the passes the scoring engine makes
    for `layers_per_pass=k` (None: one pass; else k layers at a time, then the modules outside the layers)."""
    layers = sorted(layer for layer in held if layer is not None)
    passes = [list(held)] if k is None else [layers[i:i + k] for i in range(0, len(layers), k)] + [[None]]
    most: dict[str, int] = defaultdict(int)
    for chunk in passes:
        total: dict[str, int] = defaultdict(int)
        for layer in chunk:
            for dev, nbytes in held.get(layer, {}).items():
                total[dev] += nbytes
        for dev, nbytes in total.items():
            most[dev] = max(most[dev], nbytes)
    return dict(most)


def _layers_per_pass(plan: MemoryEstimate, held: Mapping[Optional[int], Mapping[str, int]],
                     limits: Mapping[str, int]) -> tuple[Optional[int], dict[str, int]]:
    """(None: one pass fits; k: the most layers per pass that fit; 0: not even one) and the accumulators per device
    of the fullest pass at that k (at k=1 when none fits), against `limits` (device -> bytes; 'disk' has none)."""
    def fits(most: Mapping[str, int]) -> bool:
        return all(plan.weights.get(d, 0) + plan.activations.get(d, 0) + plan.transient.get(d, 0) + most.get(d, 0)
                   <= v for d, v in limits.items() if d != "disk")

    most = _most_per_pass(held, None)
    if fits(most):
        return None, most
    for k in range(sum(layer is not None for layer in held), 0, -1):
        most = _most_per_pass(held, k)
        if fits(most):
            return k, most
    return 0, most


def _with_pass(plan: MemoryPlan, most: Mapping[str, int]) -> MemoryPlan:
    """The plan's accumulators and scoring peak as the fullest pass holds them."""
    plan.accumulators = {d: most.get(d, 0) for d in plan.weights}
    plan.scoring_peak = {d: plan.weights[d] + plan.accumulators[d] + plan.activations[d] + plan.transient[d]
                         for d in plan.weights}
    return plan


def _balanced(meta: nn.Module, budget: Mapping[Any, int], no_split: list[str]) -> dict[Any, int]:
    """The budgets from_pretrained(device_map='auto') gives accelerate for `budget` (transformers' balanced
    memory), in whole MiB: balancing them again changes nothing, so printing them is exact."""
    try:
        from transformers.integrations.accelerate import get_balanced_memory
    except ImportError:  # pragma: no cover - older transformers used accelerate's
        from accelerate.utils import get_balanced_memory
    balanced = get_balanced_memory(meta, max_memory=dict(budget), no_split_module_classes=no_split)
    return {k: int(v) // MIB * MIB for k, v in balanced.items()}


def _device_map(meta: nn.Module, budget: Mapping[Any, int], no_split: list[str]) -> dict[str, Any]:
    from accelerate import infer_auto_device_map

    return infer_auto_device_map(meta, max_memory=dict(budget), no_split_module_classes=no_split)


@contextmanager
def _quiet() -> Iterator[None]:
    """Planning for devices this machine does not have is the point: accelerate's warnings about them (and
    its advice on a trial map's offloaded buffers) are not the user's."""
    quiet = logging.getLogger("accelerate.utils.modeling")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        quiet.setLevel(level)


def _place(meta: nn.Module, sizes: ScoringSizes, limits: dict[Union[int, str], int]) -> MemoryPlan:
    """The plan on the devices of `limits`: budgets, the device_map they give, and layers_per_pass for it."""
    no_split = list(getattr(meta, "_no_split_modules", None) or [])
    named = {str(k): v for k, v in limits.items()}
    accelerators = [k for k in limits if k not in OFFLOADED]
    rest = (sum(sizes.activations.values()) + max(sizes.logits_peak, sizes.module_peak)) / len(accelerators)
    one_layer = max(_most_per_pass(_held(sizes, None), 1).values())
    blocks = [sum(v for n, v in sizes.module_weights.items() if n.startswith(b + ".")) for b in sizes.block_names]
    ratio = sum(sizes.accumulators.values()) / max(1, sum(sizes.module_weights.values()))  # per byte of weights
    # accelerate keeps room for the largest layer on the first GPU (to load offloaded ones into): a budget that
    # should hold every weight gets that much on top, which stays unused when nothing is offloaded.
    reserve = max(blocks + list(sizes.module_weights.values())) + MIB
    with _quiet():
        for one_pass in (True, False):
            room = {k: reserve + ((v - rest) / (1 + ratio) if one_pass else v - rest - one_layer)
                    for k, v in limits.items()}
            budget = {k: max(0, int(room[k])) if k in accelerators else v for k, v in limits.items()}
            for _ in range(16):
                load = _balanced(meta, budget, no_split)
                device_map = _device_map(meta, load, no_split)
                plan = estimate_scoring(sizes, device_map, cls=MemoryPlan, main=str(accelerators[0]))
                k, most = _layers_per_pass(plan, _held(sizes, device_map), named)
                where = {str(d) for d in device_map.values()}
                offloaded = sorted(where & set(OFFLOADED))
                if one_pass and (offloaded or k is not None):
                    break  # a pass with every accumulator needs weights offloaded: keep the weights instead
                if k != 0 and where - set(OFFLOADED):  # it fits, and the accelerators hold weights
                    plan = _with_pass(plan, most)
                    plan.device_map, plan.max_memory, plan.memory_limits = dict(device_map), load, dict(limits)
                    plan.layers_per_pass = k
                    plan.notes += _placement_notes(sizes, k, offloaded, "cpu" in limits)
                    return plan
                peak = {d: plan.weights.get(d, 0) + plan.activations.get(d, 0) + plan.transient.get(d, 0)
                        + most.get(d, 0) for d in named}
                over = {key: peak[str(key)] - v for key, v in limits.items() if key != "disk"}
                if not any(x > 0 for x in over.values()):
                    break
                for key, x in over.items():
                    if x > 0:
                        budget[key] = max(0, budget[key] - x - MIB)
    plan = _single_device(sizes, advice=False)
    plan.memory_limits = dict(limits)
    plan.notes.append(f"Scoring does not fit in {_sizes_text(limits)}, not even one layer per pass with the other "
                      "weights offloaded: lower --batch-size or --max-length, or add devices.")
    return plan


def _placement_notes(sizes: ScoringSizes, k: Optional[int], offloaded: list[str], cpu_planned: bool) -> list[str]:
    notes = []
    if k is not None:
        notes.append(f"The accumulators column is the fullest pass; one whole set is "
                     f"{sum(sizes.accumulators.values()) / GIB:.2f} GiB.")
    if offloaded:
        notes.append("The weights do not all fit on the accelerators: the rest are offloaded "
                     f"({', '.join(offloaded)}); "
                     "their layers compute on the first GPU and their accumulators are kept in CPU RAM"
                     + ("." if cpu_planned else " (add cpu=SIZE to plan it)."))
    return notes


def _up(nbytes: float) -> str:
    """GiB rounded up to a tenth: a size to buy or set aside is never printed below what is needed."""
    return f"{math.ceil(nbytes / GIB * 10) / 10:.1f}"


def _sizes_text(limits: Mapping[Any, int]) -> str:
    return ", ".join(f"{k}={v / GIB:.0f}GiB" for k, v in limits.items())


def _single_device(sizes: ScoringSizes, advice: bool = True) -> MemoryPlan:
    """The plan on one device, with the smallest single GPU that scores the model and what to do below it."""
    plan = estimate_scoring(sizes, cls=MemoryPlan)
    if not advice:
        return plan
    one = plan.total("scoring_peak")
    least = plan.total("scoring_peak") - plan.total("accumulators") + _most_per_pass(_held(sizes, None), 1)["device"]
    common = next((g for g in _GPU_SIZES if g * GIB >= one), None)
    smallest = f" (the smallest common size: {common} GiB)." if common else "."
    lines = [f"One GPU of {_up(one)} GiB or more scores it in one pass{smallest}"]
    if least < one:
        lines.append(f"From {_up(least)} GiB, score a few layers per pass (layers_per_pass='auto'); "
                     "`--max-memory 0=SIZE` gives the number for a GPU.")
    lines.append(f"Below {_up(least)} GiB, offload weights: plan with `--max-memory 0=GPU_SIZE,cpu=RAM_SIZE` "
                 "(or several GPUs: 0=..,1=..) for the device_map and layers_per_pass.")
    plan.notes += lines
    return plan
