"""Batched greedy generation of answers to questions, with left padding."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..data import format_prompt
from ..logging import show_progress as _bars_wanted


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, questions: Sequence[str], *, max_new_tokens: int = 64,
                     batch_size: int = 8, chat_template: bool = True, show_progress: bool = True,
                     description: str = "generating") -> list[str]:
    """Greedy answers (decoded, special tokens dropped) to each question, in order."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    device = model.get_input_embeddings().weight.device
    answers: list[str] = []
    try:
        for start in tqdm(range(0, len(questions), batch_size), desc=description, unit="batch",
                          disable=not _bars_wanted(show_progress)):
            texts = [format_prompt(tokenizer, q, chat_template=chat_template) for q in questions[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat_template).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            answers.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [a.strip() for a in answers]
