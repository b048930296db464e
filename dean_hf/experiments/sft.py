"""The SFT baseline: LoRA fine-tuning with peft on privacy-safe (or mixed) data, measured in the same harness."""

from __future__ import annotations

import copy
import random
from typing import Any, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import build_examples
from ..logging import show_progress as _bars_wanted


def lora_finetune(model: nn.Module, tokenizer: Any, records: Any, *, r: int = 8, lr: float = 2e-4, epochs: int = 1,
                  max_length: int = 256, target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                          "gate_proj", "up_proj", "down_proj"),
                  seed: int = 0, show_progress: bool = True) -> nn.Module:
    """A copy of `model` fine-tuned with LoRA (batch 1, AdamW, loss on responses) and merged back."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    tuned = copy.deepcopy(model)
    peft_model = get_peft_model(tuned, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                                  target_modules=list(target_modules)))
    examples = build_examples(records, tokenizer, max_length=max_length)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    peft_model.train()
    order = list(range(len(examples)))
    rng = random.Random(seed)
    device = params[0].device
    for _ in range(epochs):
        rng.shuffle(order)
        for i in tqdm(order, desc="LoRA fine-tuning", disable=not _bars_wanted(show_progress)):
            ex = examples[i]
            loss = peft_model(input_ids=torch.tensor([ex["input_ids"]], device=device),
                              labels=torch.tensor([ex["labels"]], device=device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


def mix(*record_sets: Any, seed: int = 0) -> list[dict]:
    """Records of several data sets shuffled together."""
    rows = [dict(r) for records in record_sets for r in records]
    random.Random(seed).shuffle(rows)
    return rows


def finetune_variants(model: nn.Module, tokenizer: Any, privacy: Any, fairness: Optional[Any] = None,
                      **kwargs: Any) -> dict[str, nn.Module]:
    """'sft_privacy' (privacy-safe data) and, given fairness data, 'sft_mixed' (both, shuffled)."""
    out = {"sft_privacy": lora_finetune(model, tokenizer, privacy, **kwargs)}
    if fairness is not None:
        out["sft_mixed"] = lora_finetune(model, tokenizer, mix(privacy, fairness), **kwargs)
    return out
