"""What a result needs to be reproduced from its files alone: library versions and the device it ran on."""

from __future__ import annotations

import platform
from typing import Any, Optional

from torch import nn


def environment(model: Optional[nn.Module] = None) -> dict[str, Any]:
    """Versions of dean_hf, torch, transformers and Python, and the device (and dtype) of `model`'s weights."""
    import torch
    import transformers

    from ._version import __version__

    env: dict[str, Any] = {"dean_hf": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version(), "machine": platform.machine()}
    if model is not None:
        params = [p for p in model.parameters() if p.device.type != "meta"]
        if params:
            devices = sorted({str(p.device) for p in params})
            env["device"] = ", ".join(devices)
            env["dtype"] = str(params[0].dtype).replace("torch.", "")
            if params[0].device.type == "cuda":
                env["device_name"] = torch.cuda.get_device_name(params[0].device)
    return env
