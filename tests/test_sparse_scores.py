"""Sparse scores: each matrix's top `keep` entries in selection's rank order give exactly the dense masks."""

import math

import pytest
import torch

from conftest import make_model, random_examples
from dean_hf import DeanError, ImportanceScores, score_importance, select_coupled_neurons
from dean_hf.scoring.scores import MIN_KEPT, keep_count, rank_order


def random_scores(seed, shapes, ties=False):
    g = torch.Generator().manual_seed(seed)
    make = (lambda s: torch.randint(0, 4, s, generator=g).float()) if ties else (lambda s: torch.rand(s, generator=g))
    return ImportanceScores({n: make(s) for n, s in shapes.items()})


SHAPES = {"model.layers.0.mlp.up_proj": (96, 128), "model.layers.1.mlp.down_proj": (64, 200)}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("legacy", [False, True])
def test_selection_from_sparse_equals_dense(monkeypatch, ties, legacy):
    monkeypatch.setattr("dean_hf.scoring.scores.MIN_KEPT", 0)  # make the keep fraction bind on these small matrices
    dense = {k: random_scores(i, SHAPES, ties) for i, k in enumerate(("f", "p", "g"))}
    keep = 0.2
    sparse = {k: v.sparsify(keep) for k, v in dense.items()}
    assert all(s.is_sparse and s.keep == keep for s in sparse.values())
    for q in (0.001, 0.01, 0.05, 0.1, 0.2):
        for p in (0.01, 0.1, 0.2):
            if legacy and p != q:
                continue
            a = select_coupled_neurons({"f": dense["f"], "p": dense["p"]}, dense["g"], q=q, p=p, legacy=legacy)
            b = select_coupled_neurons({"f": sparse["f"], "p": sparse["p"]}, sparse["g"], q=q, p=p, legacy=legacy)
            assert a.digest() == b.digest(), (q, p)
    with pytest.raises(DeanError, match="rescore with keep >= 0.3"):
        select_coupled_neurons({"f": sparse["f"], "p": sparse["p"]}, sparse["g"], q=0.3, p=0.1)


def test_rank_order_breaks_ties_by_index():
    flat = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert rank_order(flat, 4).tolist() == [1, 2, 4, 3]
    assert rank_order(flat, 2).tolist() == [1, 2]


def test_sparse_file_is_small_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr("dean_hf.scoring.scores.MIN_KEPT", 0)
    shapes = {"a": (512, 1024), "b": (256, 512)}
    dense = random_scores(0, shapes)
    dense.save(tmp_path / "dense.safetensors")
    sparse = dense.sparsify(0.01)
    sparse.save(tmp_path / "sparse.safetensors")
    ratio = (tmp_path / "dense.safetensors").stat().st_size / (tmp_path / "sparse.safetensors").stat().st_size
    assert ratio > 45  # int32 indices + fp32 values for 1% of the entries: 1/(2 keep) = 50x
    for lazy in (False, True):
        loaded = ImportanceScores.load(tmp_path / "sparse.safetensors", lazy=lazy)
        assert loaded.keep == 0.01 and loaded.shapes == dense.shapes
        for name, shape in shapes.items():
            k = keep_count(0.01, math.prod(shape))
            assert torch.equal(loaded.top(name, k), dense.top(name, k))


def test_dense_files_of_dean_hf_0_1_still_load(tmp_path):
    from safetensors.torch import save_file
    import json

    t = torch.rand(8, 4)
    save_file({"m": t}, tmp_path / "old.safetensors",
              metadata={"dean_hf": json.dumps({"format": "dean_hf.importance_scores", "format_version": 1,
                                                "modules": ["m"], "scorer": "snip"})})
    old = ImportanceScores.load(tmp_path / "old.safetensors")
    assert not old.is_sparse and torch.equal(old["m"], t) and old.metadata["scorer"] == "snip"


def test_score_importance_returns_sparse_cpu_scores_and_selects_as_dense():
    model = make_model("llama")
    examples = random_examples(4)
    dense = score_importance(model, examples, keep=1.0, show_progress=False)
    sparse = score_importance(model, examples, keep=0.01, show_progress=False)
    assert not dense.is_sparse and sparse.is_sparse and sparse.metadata["keep"] == 0.01
    for name in dense:  # tiny matrices keep all their entries (at least MIN_KEPT)
        numel = math.prod(dense.shapes[name])
        assert keep_count(0.01, numel) == min(numel, MIN_KEPT)
        assert torch.equal(sparse.top(name, 50), dense.top(name, 50))
        assert sparse[name].device.type == "cpu"


def test_layers_per_pass_equals_one_pass_and_stops_the_backward():
    model = make_model("llama")  # 2 decoder layers
    examples = random_examples(4)
    one = score_importance(model, examples, keep=1.0, show_progress=False)
    seen = []
    block0 = model.model.layers[0]
    handle = block0.register_forward_hook(lambda m, a, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).requires_grad))
    try:
        split = score_importance(model, examples, keep=1.0, layers_per_pass=1, show_progress=False)
    finally:
        handle.remove()
    for name in one:
        assert torch.allclose(split[name], one[name], rtol=1e-5, atol=1e-12), name
    # Pass 1 (layer 0) needs its graph; pass 2 (layer 1) starts the backward at layer 1's input: layer 0 records
    # no graph at all.
    assert seen == [True] * 4 + [False] * 4


def test_data_names_in_the_python_api(tokenizer):
    model = make_model("llama")
    by_name = score_importance(model, "embedded:privacy", tokenizer=tokenizer, n=3, max_length=64, keep=1.0,
                               show_progress=False)
    from dean_hf.data import as_examples

    by_hand = score_importance(model, as_examples("embedded:privacy", tokenizer, n=3, max_length=64), keep=1.0,
                               show_progress=False)
    assert all(torch.equal(by_name[n], by_hand[n]) for n in by_hand)
    with pytest.raises(DeanError, match="tokenizer"):
        score_importance(model, "embedded:privacy")
