"""The memory plan's arithmetic, column by column, against the formula written out by hand: the loss's logits
(with their fp32 copy and gradient), the scorer's per-module temporaries, and how many layers fit per pass."""

import pytest
import torch
from torch import nn

from dean_hf import DeanError
from dean_hf.plan import GIB, MemoryPlan, _layers_per_pass, _module_transient, estimate_memory, layers_that_fit


def tiny_llama(hidden: int, intermediate: int, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=512,
                       tie_word_embeddings=False)


def snip_temporaries(batch: int, length: int, in_f: int, out_f: int) -> int:
    """fp32 copies of a module's input and output gradient, plus the per-sample gradient block (batch x weight
    while that stays under 64 Mi elements)."""
    return 4 * (batch * length * (in_f + out_f) + batch * in_f * out_f)


@pytest.mark.parametrize("dtype,element", [("bfloat16", 2), ("float32", 4)])
def test_transient_is_the_logits_with_their_fp32_copy_and_gradient(dtype, element):
    # 32,000 logits per position dominate: batch 2 x 24 response positions x 32,000 values, each held in the
    # model's dtype, as an fp32 copy (unless already fp32) and as an fp32 gradient.
    plan = estimate_memory(tiny_llama(64, 128, 32000), dtype=dtype, batch_size=2, max_length=64, response_tokens=24)
    logits = 2 * 24 * 32000
    per_value = element + (4 if element != 4 else 0) + 4
    assert plan.transient == {"device": logits * per_value}
    assert logits * per_value > snip_temporaries(2, 64, 64, 128)
    assert "1.5M logits (32000 per position)" in plan.to_text()


def test_transient_is_the_largest_module_temporaries_when_they_dominate():
    # A small vocabulary: the widest module (gate/up/down, 256 <-> 1024) decides the transient column.
    plan = estimate_memory(tiny_llama(256, 1024, 100), dtype="bfloat16", batch_size=2, max_length=128,
                           response_tokens=8)
    module = snip_temporaries(2, 128, 256, 1024)
    assert plan.transient == {"device": module} and module > 2 * 8 * 100 * 10
    assert plan.scoring_peak == {"device": plan.weights["device"] + plan.accumulators["device"]
                                 + plan.activations["device"] + module}
    assert plan.apply_peak == plan.weights


def test_module_temporaries_cap_the_per_sample_block_at_64_mi_elements():
    with torch.device("meta"):
        small = nn.Linear(256, 1024)  # 262,144 elements: the whole batch fits in one block
        square = nn.Linear(4096, 4096)  # 16 Mi elements: four samples per block
        huge = nn.Linear(16384, 8192)  # 128 Mi elements: one sample per block
    assert _module_transient(small, 8, 16) == 4 * (8 * 16 * (256 + 1024) + 8 * 256 * 1024)
    assert _module_transient(square, 8, 16) == 4 * (8 * 16 * 8192 + 4 * 4096 * 4096)
    assert _module_transient(square, 3, 16) == 4 * (3 * 16 * 8192 + 3 * 4096 * 4096)
    assert _module_transient(huge, 8, 16) == 4 * (8 * 16 * (16384 + 8192) + 1 * 16384 * 8192)


def hand_plan(weights: float, accumulators: float, activations: float, transient: float) -> MemoryPlan:
    """A one-device plan with the given columns, in GiB."""
    cols = {k: {"0": int(v * GIB)} for k, v in (("weights", weights), ("accumulators", accumulators),
                                                 ("activations", activations), ("transient", transient))}
    peak = {"0": sum(c["0"] for c in cols.values())}
    return MemoryPlan(model="hand", dtype="bfloat16", batch_size=1, max_length=512, num_parameters=0,
                      num_target_weights=0, scoring_peak=peak, apply_peak=dict(cols["weights"]), **cols)


def test_layers_that_fit_splits_the_accumulators_over_the_devices():
    plan = hand_plan(weights=10, accumulators=32, activations=2, transient=1)  # rest = 3 GiB; 1 GiB per layer
    assert layers_that_fit(plan, 20 * GIB, 32) == 17  # (20 - 3) // 1
    assert layers_that_fit(plan, 20 * GIB, 32, per_device=2) is None  # 32 / 2 + 3 = 19 GiB fit in 20
    assert layers_that_fit(plan, 19 * GIB, 32, per_device=2) is None  # exactly at the limit
    assert layers_that_fit(plan, 18.5 * GIB, 32, per_device=2) == 15  # (18.5 - 3) // 1
    assert layers_that_fit(plan, 35 * GIB, 32) is None and layers_that_fit(plan, 34.9 * GIB, 32) == 31
    assert layers_that_fit(plan, 4 * GIB, 32) == 1  # exactly one layer's accumulators beside the rest
    with pytest.raises(DeanError, match="even one decoder layer's accumulators"):
        layers_that_fit(plan, 3.9 * GIB, 32)


def test_layers_per_pass_is_the_free_memory_over_one_layers_accumulators():
    plan = hand_plan(weights=10, accumulators=32, activations=2, transient=1)  # 13 GiB besides the accumulators
    held = {layer: {"0": GIB} for layer in range(32)}  # 1 GiB of accumulators per decoder layer
    k, most = _layers_per_pass(plan, held, {"0": 30 * GIB, "disk": 500 * GIB})
    assert (k, most["0"]) == (17, 17 * GIB)  # (30 - 13) over 1 GiB; the disk holds no accumulators
    assert _layers_per_pass(plan, held, {"0": 45 * GIB})[0] is None  # exactly fits in one pass
    assert _layers_per_pass(plan, held, {"0": 44 * GIB})[0] == 31
    assert _layers_per_pass(plan, held, {"0": 14 * GIB})[0] == 1  # one layer, just
    assert _layers_per_pass(plan, held, {"0": int(13.5 * GIB)})[0] == 0  # not even one
    uneven = {**held, 5: {"0": 3 * GIB}}  # the fullest pass decides
    assert _layers_per_pass(plan, uneven, {"0": 30 * GIB})[0] == 15
