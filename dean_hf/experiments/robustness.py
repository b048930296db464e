"""Robustness of DEAN: scored on few samples, and on only the unsafe ("malicious") answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from ..config import DeanConfig
from ..data import load_records
from ..editor import DeanEditor
from ..eval.judges import Judge
from ..pipeline import score_datasets_cached
from ..selection import select_coupled_neurons
from .common import measure, restrict


def dean_setting(model: nn.Module, tokenizer: Any, sources: Mapping[str, Any], questions: Mapping[str, Sequence[str]],
                 cache_dir: str | Path, *, n: int, q: float, p: float, target_modules: str = "mlp",
                 judge: Optional[Judge] = None, max_new_tokens: int = 64, batch_size: int = 8,
                 show_progress: bool = True, seed: int = 0, keep_answers: bool = False,
                 chat_template: bool = True) -> dict[str, Any]:
    """Score `sources` (fairness, privacy, general) on n samples, select with q/p among `target_modules`, and
    measure with the mask on. All linear modules are scored (and cached), so other settings reuse the files."""
    config = DeanConfig(q=q, p=p, num_samples=n, seed=seed, max_length=256)
    records = {k: load_records(v, n=n, seed=seed) for k, v in sources.items()}
    scores = score_datasets_cached(model, tokenizer, records, config, cache_dir, show_progress=show_progress)
    general = restrict(scores.pop("general"), target_modules)
    mask = select_coupled_neurons({k: restrict(v, target_modules) for k, v in scores.items()}, general, q=q, p=p)
    row: dict[str, Any] = {"n": n, "q": q, "p": p, "modules": target_modules, "masked": mask.num_masked}
    if mask.num_masked:
        editor = DeanEditor(model)
        editor.add_adapter("default", mask, check_base_model=False)
        editor.set_adapter("default")
        row.update(measure(model, tokenizer, questions, judge=judge, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, show_progress=show_progress, keep_answers=keep_answers,
                           chat_template=chat_template))
        editor.unload()
    return row


def robustness(model: nn.Module, tokenizer: Any, safe: Mapping[str, Any], unsafe: Mapping[str, Any],
               questions: Mapping[str, Sequence[str]], cache_dir: str | Path, *, ns: Sequence[int] = (8, 32, 128),
               q: float, p: float, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows for DEAN scored on each n in `ns` (safe data) and on n = max(ns) of the unsafe data."""
    cache = Path(cache_dir)
    rows = [{"data": "safe", **dean_setting(model, tokenizer, safe, questions, cache / f"safe-{n}", n=n, q=q, p=p,
                                            **kwargs)} for n in ns]
    rows.append({"data": "unsafe only", **dean_setting(model, tokenizer, unsafe, questions, cache / "unsafe",
                                                       n=max(ns), q=q, p=p, **kwargs)})
    return rows
