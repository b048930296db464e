import pytest
import torch

from dean_hf import DeanError, NeuronMask
from dean_hf.mask import layer_index, module_kind


def make_mask():
    return NeuronMask(
        {"model.layers.0.mlp.up_proj": torch.tensor([0, 5, 7]), "model.layers.1.mlp.up_proj": torch.tensor([3]),
         "model.layers.1.self_attn.q_proj": torch.tensor([], dtype=torch.int64)},
        {"model.layers.0.mlp.up_proj": (3, 4), "model.layers.1.mlp.up_proj": (3, 4),
         "model.layers.1.self_attn.q_proj": (2, 2)},
        {"q": 0.1},
    )


def test_counts():
    mask = make_mask()
    assert mask.num_masked == 4
    assert mask.num_weights == 28
    assert mask.counts_per_layer() == {0: 3, 1: 1}
    assert mask.counts_per_kind() == {"mlp.up_proj": 4, "self_attn.q_proj": 0}
    assert mask.counts_per_module()["model.layers.0.mlp.up_proj"] == 3
    assert mask.to_bool("model.layers.0.mlp.up_proj").nonzero().tolist() == [[0, 0], [1, 1], [1, 3]]
    assert layer_index("transformer.h.11.attn.c_attn") == 11 and layer_index("lm_head") is None
    assert module_kind("transformer.h.11.attn.c_attn") == "attn.c_attn"


def test_round_trip(tmp_path):
    mask = make_mask()
    mask.save(tmp_path / "m.safetensors")
    loaded = NeuronMask.load(tmp_path / "m.safetensors")
    assert loaded.shapes == mask.shapes
    assert dict(loaded.metadata) == {"q": 0.1}
    for name in mask:
        assert torch.equal(loaded[name], mask[name])


@pytest.mark.parametrize("indices,match", [
    (torch.tensor([0, 12]), "outside"), (torch.tensor([-1, 2]), "outside"), (torch.tensor([3, 3]), "duplicated"),
    (torch.tensor([4, 2]), "unsorted"), (torch.tensor([1, 2], dtype=torch.int32), "int64"),
    (torch.tensor([[1, 2]]), "1-D"), ([1, 2], "list"),
])
def test_bad_indices(indices, match):
    with pytest.raises(DeanError, match=match):
        NeuronMask({"a": indices}, {"a": (3, 4)})


def test_missing_shape():
    with pytest.raises(DeanError, match="no weight shape"):
        NeuronMask({"a": torch.tensor([1])}, {})
