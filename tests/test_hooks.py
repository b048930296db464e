"""The scoring hooks read nothing on the host per module: one device read per batch, however many modules."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from conftest import make_model, random_examples, tiny_config
from dean_hf import DeanError, score_importance
from dean_hf.scoring.hooks import BatchState

# Every host read of a tensor value (`.item()`, `bool(t)`, `int(t)`) ends in the first op; `nonzero` must read its
# output size. On a GPU each is a synchronisation.
SYNCS = ("aten::_local_scalar_dense", "aten::nonzero")


def count_syncs(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key in SYNCS)


def syncs_per_batch(model, target_modules, scorer="snip") -> int:
    """Host reads per batch of `score_importance` (batch_size 1; one example repeated: every batch is the same)."""
    example = random_examples(1, seed=3)[0]

    def run(n):
        return count_syncs(lambda: score_importance(model, [example] * n, target_modules=target_modules,
                                                    scorer=scorer, show_progress=False))

    one, three = run(1), run(3)
    assert (three - one) % 2 == 0
    return (three - one) // 2


def four_layer_llama():
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("scorer", ["snip", "wanda"])
def test_syncs_per_batch_are_a_constant_independent_of_modules(scorer):
    small = syncs_per_batch(make_model("llama"), "mlp", scorer)  # 6 modules
    every = syncs_per_batch(make_model("llama"), "all-linear", scorer)  # 14 modules
    deeper = syncs_per_batch(four_layer_llama(), "all-linear", scorer)  # 28 modules
    assert small == every == deeper
    # dean_hf's own check is one read; the rest is the forward (the mask check of SDPA) and the loss positions.
    assert 1 <= every <= 3


def test_batch_state_flags_stay_on_device():
    state = BatchState()
    state.begin(2)
    assert state.all_finite(torch.device("cpu")) is None
    state.record("a", torch.ones(2, 3))
    state.record("b", torch.tensor([1.0, float("inf")]))
    state.record("c", torch.tensor([float("nan")]))
    assert count_syncs(lambda: state.all_finite(torch.device("cpu"))) == 0
    flag = state.all_finite(torch.device("cpu"))
    assert flag.dim() == 0 and flag.dtype == torch.bool and not bool(flag)
    assert state.first_nonfinite() == "b"  # the first in backward order: nearest the loss
    state.begin(2)
    assert state.flags == [] and state.first_nonfinite() is None
    off = BatchState(check_finite=False)
    off.record("a", torch.tensor([float("nan")]))
    assert off.flags == [] and off.all_finite(torch.device("cpu")) is None


def test_nonfinite_gradient_names_the_module_where_it_starts():
    model = make_model("llama")
    target = model.model.layers[1].mlp.down_proj

    def poison(module, args, output):
        output.register_hook(lambda g: g * float("inf"))

    handle = target.register_forward_hook(poison)
    try:
        # Every module below it sees non-finite gradients too: the message names the first, nearest the loss.
        with pytest.raises(DeanError, match=r"non-finite gradient at module 'model\.layers\.1\.mlp\.down_proj' while "
                                            r"scoring sample\(s\) \[\d"):
            score_importance(model, random_examples(2), show_progress=False)
    finally:
        handle.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_nan_loss_is_named_before_gradients():
    model = make_model("llama")
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))  # the gradients are NaN as well: the loss is the cause
    for scorer in ("snip", "wanda"):
        with pytest.raises(DeanError, match=r"the loss of sample [0-9]+ is nan"):
            score_importance(model, random_examples(2), scorer=scorer, show_progress=False)
