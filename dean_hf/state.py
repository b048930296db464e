"""`MaskState`: the one owner of a model's DEAN masks: which are loaded, which is applied, the original values.

Every change of a model's masked weights goes through the `MaskState` of that model. There is one per model
(`state_for`), so two editors on the same model share it and neither can take edited weights for originals.
"""

from __future__ import annotations

import dataclasses
import weakref
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import nn

from .config import DeanConfig
from .errors import DeanError, quote
from .mask import NeuronMask
from .logging import get_logger
from .modules import is_tied_head, resolve_modules, unwrap_model
from .offload import attach_mask, detach_mask, is_offloaded, stored_on_disk, write_zeros

logger = get_logger(__name__)
_STATES: "weakref.WeakKeyDictionary[nn.Module, MaskState]" = weakref.WeakKeyDictionary()


def state_for(model: nn.Module) -> "MaskState":
    """The mask state of `model` (seen through torch.compile / PEFT / DDP wrappers), created on first use."""
    plain = unwrap_model(model)
    state = _STATES.get(plain)
    if state is None:
        state = _STATES[plain] = MaskState(plain)
    return state


class MaskState:
    """Named masks of one model, at most one applied, and the original values of the applied mask's weights.

    Applying a mask sets its weights to `original * mask.scale` (exactly 0 for scale 0). The original values are
    kept on each weight's device, in its dtype: restoring them is exact."""

    def __init__(self, model: nn.Module):
        self._model = weakref.ref(model)  # the registry's key must not be kept alive by its value
        self.masks: dict[str, NeuronMask] = {}
        self.configs: dict[str, DeanConfig] = {}
        self.active: Optional[str] = None
        self._originals: dict[str, torch.Tensor] = {}
        self._disabled = 0

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:  # pragma: no cover - the editor holds the model
            raise DeanError("the model of this mask state no longer exists.")
        return model

    # ------------------------------------------------------------------ checks
    def check_changeable(self, operation: str) -> None:
        """Refuse to change the masks while the original weights are swapped in by `disabled()`."""
        if self._disabled:
            raise DeanError(f"{operation} inside `disable_adapter()`/`disable_mask()` is not allowed: the original "
                            "weights are swapped in until the block ends. Call it after the block.")

    def modules_of(self, mask: NeuronMask) -> dict[str, nn.Module]:
        """The model's modules for `mask`, checked: names, types, shapes, devices, tied weights."""
        modules = resolve_modules(self.model, list(mask))
        for name, module in modules.items():
            weight = module.weight
            if tuple(weight.shape) != tuple(mask.shapes[name]):
                raise DeanError(f"module {quote(name)} has weight shape {tuple(weight.shape)}, the mask expects "
                                f"{tuple(mask.shapes[name])}: it was made for another model size.")
            if weight.device.type == "meta" and not is_offloaded(module):
                raise DeanError(f"the weight of {quote(name)} is on the meta device (offloaded by accelerate, or "
                                "built with init_empty_weights): load the model onto real devices (no offloading) "
                                "before applying a mask, or merge the mask into a saved checkpoint with `dean apply`.")
            if not weight.is_contiguous():
                raise DeanError(f"the weight of {quote(name)} is not contiguous; call .contiguous() on it (or "
                                "model.to(...)) before applying a mask.")
            if mask[name].numel() and is_tied_head(self.model, module):
                raise DeanError(f"module {quote(name)} is the output head and shares its weight with the input "
                                "embeddings (tie_word_embeddings): zeroing it would change the embeddings too. Leave "
                                "it out of target_modules, or untie first: `model.config.tie_word_embeddings = "
                                "False; model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone())`.")
        return modules

    # ------------------------------------------------------------------ registry of masks
    def check_new_name(self, name: Any, operation: str = "adding a mask") -> None:
        """DeanError unless `name` can name a new mask now (also the subfolder it is saved in)."""
        self.check_changeable(operation)
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise DeanError(f"adapter_name={quote(name)}: expected a non-empty name without '/' (it is also the "
                            "subfolder the mask is saved in).")
        if name in self.masks:
            raise DeanError(f"a mask named {quote(name)} exists already: delete_adapter({name!r}) first or pick "
                            "another adapter_name.")

    def add(self, name: str, mask: NeuronMask, config: DeanConfig) -> dict[str, nn.Module]:
        """Register `mask` under `name` (checked against the model; not applied)."""
        self.check_new_name(name)
        modules = self.modules_of(mask)
        if config.scale != mask.scale:  # the mask's scale is what is applied (and digested): the record follows it
            if config.scale:
                logger.warning("the config of mask %r records scale=%g, the mask itself %g: the mask's scale is "
                               "applied and recorded.", name, config.scale, mask.scale)
            config = dataclasses.replace(config, scale=mask.scale)
        self.masks[name], self.configs[name] = mask, config
        return modules

    def delete(self, name: str) -> None:
        """Forget mask `name`, restoring the weights first if it is applied."""
        self.check_changeable("deleting a mask")
        self.require(name)
        if name == self.active:
            self._restore()
        del self.masks[name], self.configs[name]

    def require(self, name: str) -> None:
        """Raise DeanError unless a mask `name` is loaded."""
        if name not in self.masks:
            raise DeanError(f"no mask named {quote(name)}; loaded: {list(self.masks)}.")

    # ------------------------------------------------------------------ applying
    def activate(self, name: str) -> None:
        """Apply mask `name` (the applied one, if any, is restored first). All checks run before any write."""
        self.check_changeable("switching masks")
        self.require(name)
        modules = self.modules_of(self.masks[name])
        self._restore()
        self._apply(name, modules)

    @torch.no_grad()
    def _apply(self, name: str, modules: dict[str, nn.Module]) -> None:
        mask = self.masks[name]
        resident = {n: m for n, m in modules.items() if not is_offloaded(m)}
        flats = {n: m.weight.data.view(-1) for n, m in resident.items()}
        indices = {n: mask[n].to(flat.device, non_blocking=True) for n, flat in flats.items()}
        originals = {n: flat[indices[n]].clone() for n, flat in flats.items()}
        scale = mask.scale
        for n, flat in flats.items():  # everything is read before anything is written
            flat[indices[n]] = originals[n] * scale if scale else 0
        self._originals, self.active = originals, name  # from here on, _restore undoes whatever was done
        for n, module in modules.items():
            if n not in resident:  # accelerate loads it for each forward: edit the entries at each load
                attach_mask(module, mask[n], scale)

    @torch.no_grad()
    def _restore(self) -> None:
        if self.active is None:
            return
        mask = self.masks[self.active]
        modules = resolve_modules(self.model, list(mask))
        for n, module in modules.items():
            if is_offloaded(module):
                detach_mask(module)
            elif n in self._originals:
                flat = module.weight.data.view(-1)
                flat[mask[n].to(flat.device, non_blocking=True)] = self._originals[n].to(flat.device, flat.dtype)
        self._originals, self.active = {}, None

    def deactivate(self) -> None:
        """Restore the original weights; no mask stays applied."""
        self.check_changeable("unloading")
        self._restore()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Original weights inside the block, the applied mask again after it; masks cannot change inside."""
        active = self.active
        self._restore()
        self._disabled += 1
        try:
            yield
        finally:
            self._disabled -= 1
            if active is not None:  # in nested blocks only the outermost had a mask to re-apply
                self._apply(active, self.modules_of(self.masks[active]))

    def _check_mergeable(self) -> None:
        """Refuse (before any change) to merge into weights that accelerate reads from its offload files at each
        load: the edit could not be kept there, and a save would write the unedited weights."""
        mask = self.masks[self.active]
        on_disk = [n for n, m in resolve_modules(self.model, list(mask)).items() if stored_on_disk(m)]
        if on_disk:
            raise DeanError(f"merge_and_unload cannot keep the edit of {len(on_disk)} module(s) offloaded to disk "
                            f"(e.g. {quote(on_disk[0])}): accelerate reads them from its offload files at each load. "
                            "Keep the editor (the mask is applied at each load), or load the model without disk "
                            "offloading (CPU offloading or a larger max_memory) to merge or save it.")

    def _merge_offloaded(self) -> None:
        """Write the active mask's edit (zeros, or scaled values) into accelerate's stored weights kept in memory
        (CPU offloading) and drop the hooks: the model is plain again."""
        mask = self.masks[self.active]
        for n, module in resolve_modules(self.model, list(mask)).items():
            if is_offloaded(module):
                write_zeros(module, mask[n], mask.scale)
                detach_mask(module)

    # ------------------------------------------------------------------ leaving
    def clear(self, *, keep_edits: bool) -> None:
        """Forget every mask: restore the original weights first, or (`keep_edits`) keep the applied edit."""
        self.check_changeable("unload/merge_and_unload")
        if not keep_edits:
            self._restore()
        elif self.active is not None:
            self._check_mergeable()
            self._merge_offloaded()
        self._originals, self.active = {}, None
        self.masks.clear()
        self.configs.clear()
