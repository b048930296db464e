"""A sweep over q, p and the target modules: the trade-off a user picks a setting from."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from torch import nn

from ..editor import DeanEditor
from ..eval.judges import Judge
from ..scoring import ImportanceScores
from ..selection import select_coupled_neurons
from .common import measure, restrict


def sweep(model: nn.Module, tokenizer: Any, targets: Mapping[str, ImportanceScores], general: ImportanceScores,
          questions: Mapping[str, Sequence[str]], *, qs: Sequence[float], ps: Optional[Sequence[float]] = None,
          module_sets: Sequence[str] = ("mlp", "self_attn", "all-linear"), judge: Optional[Judge] = None,
          max_new_tokens: int = 64, batch_size: int = 8, show_progress: bool = True, keep_answers: bool = False,
          chat_template: bool = True) -> list[dict[str, Any]]:
    """One row per (target modules, q, p): weights masked and the measurements with that mask applied.

    The scores are computed once (on all linear modules) and restricted per module set. `ps` defaults
    to p = q. Settings that select nothing are reported without re-measuring the unchanged model.
    """
    rows = []
    editor = DeanEditor(model)
    for modules in module_sets:
        sub_targets = {k: restrict(v, modules) for k, v in targets.items()}
        sub_general = restrict(general, modules)
        for q in qs:
            for p in (ps or [q]):
                mask = select_coupled_neurons(sub_targets, sub_general, q=q, p=p)
                row: dict[str, Any] = {"modules": modules, "q": q, "p": p, "masked": mask.num_masked,
                                       "fraction": mask.num_masked / max(1, mask.num_weights)}
                if mask.num_masked:
                    editor.add_mask("sweep", mask, check_base_model=False)
                    editor.set_mask("sweep")
                    row.update(measure(editor.model, tokenizer, questions, judge=judge,
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=show_progress,
                                       keep_answers=keep_answers, chat_template=chat_template))
                    editor.delete_mask("sweep")
                rows.append(row)
    return rows
