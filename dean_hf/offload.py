"""Weights that accelerate offloads (`cpu_offload`, `disk_offload`, a `device_map` with "cpu" or "disk"): read,
score and mask them without keeping them on the accelerator.

accelerate keeps an offloaded module's weight on the meta device and loads it onto the execution device for each
forward call (its `AlignDevicesHook`), from a `weights_map` in CPU memory or on disk. Scoring needs activations
and output gradients, not weight gradients, so such a model is scored as accelerate streams it: while scoring,
autograd keeps a reference to an offloaded weight instead of the weight itself and loads it again for the
backward pass. A mask is applied by a hook that zeroes the masked entries each time the weight is loaded.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import torch
from accelerate.hooks import ModelHook
from torch import nn


def offload_hook(module: nn.Module) -> Any:
    """The offloading `AlignDevicesHook` of `module` (also inside a chain of hooks), or None."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return None
    from accelerate.hooks import AlignDevicesHook

    return next((h for h in _flat_hooks(hook) if isinstance(h, AlignDevicesHook) and h.offload), None)


def _flat_hooks(hook: Any) -> list[Any]:
    """A hook, or the hooks of a (possibly nested) `SequentialHook`, in order."""
    from accelerate.hooks import SequentialHook

    if isinstance(hook, SequentialHook):
        return [h for inner in hook.hooks for h in _flat_hooks(inner)]
    return [hook]


def is_offloaded(module: nn.Module) -> bool:
    """True when accelerate offloads this module's own weights (to the CPU or to disk)."""
    return offload_hook(module) is not None


@contextmanager
def loaded(module: nn.Module, device: Optional[torch.device] = None) -> Iterator[nn.Module]:
    """Within the block, an offloaded module's weights are real tensors (on `device`, default the CPU); other
    modules are left as they are."""
    hook = offload_hook(module)
    if hook is None:
        yield module
        return
    previous = hook.execution_device
    hook.execution_device = torch.device(device or "cpu")
    try:
        hook.pre_forward(module)
        yield module
    finally:
        hook.post_forward(module, None)
        hook.execution_device = previous


def readable(module: nn.Module):
    """A context in which `module.weight` can be read: `loaded(module)` for offloaded modules."""
    return loaded(module) if is_offloaded(module) else nullcontext(module)


def storage_device(module: nn.Module) -> torch.device:
    """Where the module's weight is kept: the weights_map's side (the CPU) for offloaded modules."""
    if is_offloaded(module):
        return torch.device("cpu")
    return module.weight.device


@dataclass
class _Reference:
    """What autograd keeps instead of an offloaded weight: where to load it from, and the view it saved."""

    module: nn.Module
    name: str
    device: torch.device
    dtype: torch.dtype
    view: Optional[tuple]  # (size, stride, storage_offset) when autograd saved a view of the weight


@contextmanager
def stream_saved_weights(model: nn.Module) -> Iterator[None]:
    """While active, autograd saves a reference to each offloaded weight it needs for the backward pass (a Linear
    saves its weight to compute the input's gradient) and loads it again when the backward pass reaches it, so an
    offloaded model's weights are on the accelerator one module at a time, as in its forward pass."""
    offloaded = [m for m in model.modules() if is_offloaded(m)]
    if not offloaded:
        yield
        return
    running: list[nn.Module] = []

    def enter(module, args):
        running.append(module)

    def leave(module, args, output):
        if running and running[-1] is module:
            running.pop()

    def pack(tensor: torch.Tensor) -> Any:
        if not running:
            return tensor
        module = running[-1]
        for name, param in module.named_parameters(recurse=False):
            if tensor is param or tensor._base is param:
                view = None if tensor is param else (tuple(tensor.size()), tuple(tensor.stride()),
                                                     tensor.storage_offset())
                return _Reference(module, name, tensor.device, tensor.dtype, view)
        return tensor

    def unpack(saved: Any) -> torch.Tensor:
        if not isinstance(saved, _Reference):
            return saved
        value = offload_hook(saved.module).weights_map[saved.name].to(saved.device, saved.dtype)
        return value if saved.view is None else value.as_strided(*saved.view)

    handles = [h for m in offloaded for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for handle in handles:
            handle.remove()


class _ZeroMasked(ModelHook):
    """Chained after accelerate's offloading hook: zeroes the masked entries of the weight it has just loaded, or
    multiplies them by `scale` (a mask's factor in (0, 1)). Each load is a fresh copy of the stored weight, so the
    factor applies once to the original values.

    When the loaded weight is the stored tensor itself (weights kept in CPU memory, computed on the CPU), it is
    copied first: the store is never changed, so removing the hook restores the original weights."""

    def __init__(self, indices: torch.Tensor, stored: Optional[torch.Tensor], scale: float = 0.0):
        self.indices, self.stored, self.scale = indices, stored, scale
        self._on: dict[torch.device, torch.Tensor] = {}

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any):
        weight = module.weight
        if self.stored is not None and weight.data_ptr() == self.stored.data_ptr():
            weight = module.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        flat = weight.data.view(-1)
        idx = self._on.get(flat.device)
        if idx is None:
            idx = self._on[flat.device] = self.indices.to(flat.device)
        flat[idx] = flat[idx] * self.scale if self.scale else 0
        return args, kwargs


def _stored_in_memory(module: nn.Module) -> Optional[torch.Tensor]:
    """The stored weight when accelerate keeps it as one tensor in memory (CPU offloading), None when it is read
    from disk at each load; found without loading anything."""
    weights_map = offload_hook(module).weights_map
    dataset, prefix = getattr(weights_map, "dataset", weights_map), getattr(weights_map, "prefix", "")
    held = dataset if isinstance(dataset, dict) else getattr(dataset, "state_dict", None)
    if isinstance(held, dict) and f"{prefix}weight" in held:
        return held[f"{prefix}weight"]
    return None


def stored_on_disk(module: nn.Module) -> bool:
    """True when accelerate reads this offloaded module's weight from its files at each load."""
    return is_offloaded(module) and _stored_in_memory(module) is None


def attach_mask(module: nn.Module, indices: torch.Tensor, scale: float = 0.0) -> None:
    """Zero `indices` of an offloaded module's weight at every load, or multiply them by `scale` (reversible with
    `detach_mask`)."""
    from accelerate.hooks import SequentialHook

    hooks = _flat_hooks(module._hf_hook)  # flat, so that a later detach finds every hook
    module._hf_hook = SequentialHook(*hooks, _ZeroMasked(indices, _stored_in_memory(module), scale))


def detach_mask(module: nn.Module) -> None:
    """Undo `attach_mask`: the module loads its stored weight unchanged again."""
    from accelerate.hooks import SequentialHook

    hooks = _flat_hooks(module._hf_hook)
    kept = [h for h in hooks if not isinstance(h, _ZeroMasked)]
    if len(kept) != len(hooks):
        module._hf_hook = kept[0] if len(kept) == 1 else SequentialHook(*kept)


def write_zeros(module: nn.Module, indices: torch.Tensor, scale: float = 0.0) -> bool:
    """Zero `indices` (or multiply them by `scale`) in the stored (offloaded) weight itself, where it is a tensor
    kept in memory (CPU offloading). Returns False for storage that loads a fresh copy each time (disk)."""
    stored = _stored_in_memory(module)
    if stored is None:
        return False
    with torch.no_grad():
        flat, idx = stored.view(-1), indices.to(stored.device)
        flat[idx] = flat[idx] * scale if scale else 0
    return True


def any_offloaded(modules: Iterable[nn.Module]) -> bool:
    """True if one of `modules` is offloaded."""
    return any(is_offloaded(m) for m in modules)
