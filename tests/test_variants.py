"""Three variants of DEAN's edit: a `scale` in [0, 1) instead of zeroing, `granularity="neuron"` (whole rows or
columns), and selection by a set expression over named score sets. Each: a mask computed by hand on a tiny case, the
editor's model equal to one edited by hand, exact restore, and the options recorded and checked in artifacts."""

import copy
import json
import math
import struct

import pytest
import torch

from conftest import logits, make_model, random_examples, weights
from conftest import same_weights as bit_identical
from dean_hf import DeanConfig, DeanEditor, DeanError, ImportanceScores, NeuronMask, score_importance
from dean_hf.hub import render_card
from dean_hf.selection import expression_names, neuron_axis, select_by_expression, select_coupled_neurons

MASK_FILE = "dean_mask.safetensors"


def ranked(top, numel=10):
    """Scores of one flat matrix whose top-k set is exactly `top` (in that order of importance)."""
    s = torch.zeros(numel)
    for rank, i in enumerate(top):
        s[i] = 100.0 - rank
    return s


def scaled_by_hand(model, mask, scale):
    """`model` with `mask`'s weights multiplied by `scale` (zeroed for 0) without dean_hf."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, idx in mask.items():
            flat = modules[name].weight.view(-1)
            flat[idx] = flat[idx] * scale if scale else 0
    return model


def rewrite_header(path, change):
    """Rewrite the dean_hf JSON of a mask file's safetensors header with `change(meta)` (the tensors are kept)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["dean_hf"])
    change(meta)
    header["__metadata__"]["dean_hf"] = json.dumps(meta)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


@pytest.fixture(scope="module")
def llama_scores():
    """Dense scores of the tiny Llama on three data sets."""
    model = make_model("llama")
    return {name: score_importance(model, random_examples(4, seed=seed), keep=1.0, show_progress=False)
            for name, seed in (("fairness", 1), ("privacy", 2), ("general", 3))}


# =============================================================================================== 1. scale
def test_mask_scale_is_validated_stored_and_digested():
    idx, shapes = {"model.layers.0.mlp.up_proj": torch.tensor([0, 5, 7])}, {"model.layers.0.mlp.up_proj": (3, 4)}
    zero, half = NeuronMask(idx, shapes), NeuronMask(idx, shapes, scale=0.5)
    assert zero.scale == 0.0 and half.scale == 0.5 and "scale=0.5" in repr(half)
    assert NeuronMask(idx, shapes, scale=-0.0).scale == 0.0 and NeuronMask(idx, shapes, scale=0).scale == 0.0
    # A changed factor changes the digest; scale 0 keeps the digest masks had before scale existed (dean_hf 0.2.0).
    assert len({zero.digest(), half.digest(), NeuronMask(idx, shapes, scale=0.25).digest()}) == 3
    old = NeuronMask({"model.layers.0.mlp.up_proj": torch.tensor([0, 5, 7]),
                      "model.layers.1.mlp.down_proj": torch.tensor([3])},
                     {"model.layers.0.mlp.up_proj": (3, 4), "model.layers.1.mlp.down_proj": (4, 3)}, scale=0.0)
    assert old.digest() == "207f7529de2688cc9ae6036d0450bff9feb7c62b0b5b141727039456f46a7e65"
    for bad in (1.0, 1.5, -0.1, float("nan"), float("inf"), 10**400, -10**400, True, "0.5", None, [0.5]):
        with pytest.raises(DeanError, match=r"scale=.*expected a finite number in \[0, 1\)"):
            NeuronMask(idx, shapes, scale=bad)


def test_select_stores_scale_on_the_mask():
    f, p, g = {"m": ranked([1, 2, 5, 7])}, {"m": ranked([2, 5, 8, 7])}, {"m": ranked([2, 9])}
    mask = select_coupled_neurons({"fairness": f, "privacy": p}, g, q=0.4, p=0.2, scale=0.25)
    assert mask["m"].tolist() == [5, 7] and mask.scale == 0.25  # (F ∩ P) \ G as for zeroing
    with pytest.raises(DeanError, match="scale=1.0"):
        select_coupled_neurons({"fairness": f}, None, q=0.4, scale=1.0)


def test_scale_file_round_trip_and_old_files(tmp_path):
    mask = NeuronMask({"a": torch.tensor([1, 2])}, {"a": (2, 3)}, {"q": 0.1}, scale=0.75)
    mask.save(tmp_path / "m.safetensors")
    loaded = NeuronMask.load(tmp_path / "m.safetensors")
    assert loaded.scale == 0.75 and loaded.digest() == mask.digest()
    rewrite_header(tmp_path / "m.safetensors", lambda meta: meta.pop("scale"))  # a file written before scale
    assert NeuronMask.load(tmp_path / "m.safetensors").scale == 0.0
    for bad in (1.5, -1, True, "x", None):
        rewrite_header(tmp_path / "m.safetensors", lambda meta: meta.update(scale=bad))
        with pytest.raises(DeanError, match=r"scale=.*The file is corrupt"):
            NeuronMask.load(tmp_path / "m.safetensors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_mask_applies_like_a_hand_edit_and_restores_exactly(llama_scores, dtype):
    mask = select_coupled_neurons({"fairness": llama_scores["fairness"], "privacy": llama_scores["privacy"]},
                                  llama_scores["general"], q=0.05, p=0.05, scale=0.3)
    assert mask.num_masked > 0
    model = make_model("llama", dtype=dtype)
    before, base = weights(model), logits(model)
    editor = DeanEditor(model)
    editor.add_adapter("half", mask)
    editor.set_adapter("half")
    by_hand = scaled_by_hand(make_model("llama", dtype=dtype), mask, 0.3)
    assert torch.equal(logits(model), logits(by_hand))
    modules = dict(model.named_modules())
    name = next(n for n, idx in mask.items() if idx.numel())
    edited = modules[name].weight.view(-1)[mask[name]]
    assert torch.equal(edited, before[f"{name}.weight"].view(-1)[mask[name]] * 0.3) and bool((edited != 0).any())
    with editor.disable_adapter():
        assert torch.equal(logits(model), base)
    editor.unload()
    assert bit_identical(model, before)

    editor = DeanEditor(model)
    editor.add_adapter("half", mask)
    editor.set_adapter("half")
    merged = editor.merge_and_unload()
    assert bit_identical(merged, by_hand.state_dict())


def test_scale_zero_writes_exact_zeros_and_other_scales_keep_the_sign(llama_scores):
    model = make_model("llama")
    with torch.no_grad():  # a negative weight times 0 would be -0.0; zeroing writes +0.0, as before scale existed
        model.model.layers[0].mlp.up_proj.weight.fill_(-1.0)
    for scale, expected in ((0.0, 0.0), (0.5, -0.5)):
        mask = select_coupled_neurons({"f": llama_scores["fairness"], "p": llama_scores["privacy"]}, None, q=0.05,
                                      scale=scale)
        editor = DeanEditor(model)
        editor.add_adapter("m", mask)
        editor.set_adapter("m")
        idx = mask["model.layers.0.mlp.up_proj"]
        edited = model.model.layers[0].mlp.up_proj.weight.view(-1)[idx]
        assert idx.numel() and torch.equal(edited, torch.full_like(edited, expected))
        assert not torch.signbit(edited).any() if scale == 0 else torch.signbit(edited).all()
        editor.unload()
    assert bool((model.model.layers[0].mlp.up_proj.weight == -1.0).all())


def test_scale_survives_save_and_load_and_a_tampered_scale_is_refused(llama_scores, tmp_path):
    mask = select_coupled_neurons({"f": llama_scores["fairness"], "p": llama_scores["privacy"]}, None, q=0.05,
                                  scale=0.5)
    model = make_model("llama")
    editor = DeanEditor(model)
    editor.add_adapter("default", mask)  # the default config records scale 0: the mask's scale is recorded
    assert editor.peft_config["default"].scale == 0.5
    editor.set_adapter("default")
    expected = logits(model)
    editor.save_pretrained(tmp_path / "art")
    config = json.loads((tmp_path / "art" / "dean_config.json").read_text())
    assert config["scale"] == 0.5 and config["mask_digest"] == mask.digest()
    assert "weights multiplied by 0.5" in (tmp_path / "art" / "README.md").read_text()
    editor.unload()

    fresh = make_model("llama")
    before = weights(fresh)
    loaded = DeanEditor.from_pretrained(fresh, tmp_path / "art")
    assert loaded.masks["default"].scale == 0.5 and torch.equal(logits(fresh), expected)
    loaded.unload()
    assert bit_identical(fresh, before)

    rewrite_header(tmp_path / "art" / MASK_FILE, lambda meta: meta.update(scale=0.25))  # still a valid mask file
    assert NeuronMask.load(tmp_path / "art" / MASK_FILE).scale == 0.25
    with pytest.raises(DeanError, match="does not match the mask_digest"):
        DeanEditor.from_pretrained(fresh, tmp_path / "art")
    assert bit_identical(fresh, before)


@pytest.mark.parametrize("kind", ["cpu_offload", "disk_offload"])
def test_offloaded_modules_are_scaled_by_the_hook(llama_scores, kind, tmp_path):
    from accelerate import cpu_offload, disk_offload

    from dean_hf.offload import is_offloaded, offload_hook

    mask = select_coupled_neurons({"f": llama_scores["fairness"], "p": llama_scores["privacy"]}, None, q=0.05,
                                  scale=0.5)
    plain = make_model("llama")
    base = logits(plain)
    expected = logits(scaled_by_hand(make_model("llama"), mask, 0.5))
    model = copy.deepcopy(plain)
    model = cpu_offload(model, execution_device="cpu") if kind == "cpu_offload" else \
        disk_offload(model, str(tmp_path / "offload"), execution_device="cpu")
    assert is_offloaded(model.model.layers[0].mlp.up_proj)
    editor = DeanEditor(model)
    editor.add_adapter("default", mask)
    editor.set_adapter("default")
    assert torch.allclose(logits(model), expected, atol=1e-6)
    assert torch.allclose(logits(model), expected, atol=1e-6)  # scaled once per load, not once more per call
    with editor.disable_adapter():
        assert torch.allclose(logits(model), base, atol=1e-6)
    assert torch.allclose(logits(model), expected, atol=1e-6)
    editor.unload()
    assert torch.allclose(logits(model), base, atol=1e-6)
    if kind == "cpu_offload":  # merging writes the scaled values into the stored weights
        editor = DeanEditor(model)
        editor.add_adapter("default", mask)
        editor.set_adapter("default")
        merged = editor.merge_and_unload()
        assert torch.allclose(logits(merged), expected, atol=1e-6)
        name = next(n for n, idx in mask.items() if idx.numel())
        stored = offload_hook(dict(merged.named_modules())[name]).weights_map["weight"].view(-1)
        original = dict(plain.named_modules())[name].weight.view(-1)
        assert torch.equal(stored[mask[name]], original[mask[name]] * 0.5)


def test_config_scale_field():
    assert DeanConfig().scale == 0.0 and DeanConfig(scale=0.5).scale == 0.5
    assert DeanConfig.from_dict({"q": 0.1}).scale == 0.0  # configs written before scale
    assert DeanConfig.from_dict(DeanConfig(scale=0.25).to_dict()).scale == 0.25
    for bad in (1, 1.0, -0.5, float("nan"), float("inf"), 10**400, True, "0.5", None):
        with pytest.raises(DeanError, match=r"scale=.*a finite number in \[0, 1\)"):
            DeanConfig(scale=bad)


# =============================================================================================== 2. neurons
@pytest.mark.parametrize("name,transposed,axis", [
    ("model.layers.0.mlp.up_proj", False, 0), ("model.layers.0.mlp.gate_proj", False, 0),
    ("model.layers.0.mlp.down_proj", False, 1), ("model.layers.0.self_attn.q_proj", False, 0),
    ("model.layers.0.self_attn.o_proj", False, 0), ("model.decoder.layers.0.fc1", False, 0),
    ("model.decoder.layers.0.fc2", False, 1), ("model.layers.0.block_sparse_moe.experts.0.w1", False, 0),
    ("model.layers.0.block_sparse_moe.experts.0.w3", False, 0),
    ("model.layers.0.block_sparse_moe.experts.0.w2", False, 1),
    ("transformer.h.0.mlp.c_fc", True, 1), ("transformer.h.0.mlp.c_proj", True, 0),
    ("transformer.h.0.attn.c_proj", True, 1), ("transformer.h.0.attn.c_attn", True, 1),
])
def test_neuron_axis(name, transposed, axis):
    assert neuron_axis(name, transposed) == axis


def test_neuron_selection_by_hand():
    up, down, q_proj = "l.0.mlp.up_proj", "l.0.mlp.down_proj", "l.0.self_attn.q_proj"
    t = torch.tensor
    a = {up: t([[1., 1.], [5., 0.], [0., 3.]]),  # (3 hidden, 2 in): row sums 2, 5, 3 -> top 2 rows {1, 2}
         down: t([[1., 0., 2.], [1., 0., 2.]]),  # (2 out, 3 hidden): column sums 2, 0, 4 -> top 2 columns {2, 0}
         q_proj: t([[1., 1.], [0., 0.]])}  # row sums 2, 0 -> top 1 row {0}
    b = {up: t([[4., 0.], [0., 1.], [2., 2.]]),  # row sums 4, 1, 4 -> top 2 {0, 2} (tie: lower index first)
         down: t([[0., 3., 1.], [0., 0., 1.]]),  # column sums 0, 3, 2 -> {1, 2}
         q_proj: t([[3., 0.], [0., 1.]])}  # {0}
    g = {up: t([[0., 0.], [9., 9.], [0., 0.]]),  # top floor(0.34 * 3) = 1 row {1}
         down: t([[9., 0., 0.], [0., 0., 0.]]),  # top 1 column {0}
         q_proj: t([[0., 0.], [0., 9.]])}  # floor(0.34 * 2) = 0 rows
    mask = select_coupled_neurons({"a": a, "b": b}, g, q=0.67, p=0.34, granularity="neuron")
    # up: ({1, 2} ∩ {0, 2}) \ {1} = row 2 -> flat 4, 5; down: ({0, 2} ∩ {1, 2}) \ {0} = column 2 -> flat 2, 5;
    # q_proj: {0} ∩ {0} = row 0 -> flat 0, 1.
    assert {n: mask[n].tolist() for n in mask} == {up: [4, 5], down: [2, 5], q_proj: [0, 1]}
    assert mask.metadata["granularity"] == "neuron"
    weights_only = select_coupled_neurons({"a": a, "b": b}, g, q=0.67, p=0.34)
    assert weights_only[up].tolist() != [4, 5]  # single weights select otherwise

    # GPT-2's Conv1D stores (in, out): c_fc's neurons are columns, the MLP's c_proj's are rows, attention's
    # c_proj's are columns (outputs).
    c_fc, c_proj, attn = "h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.0.attn.c_proj"
    s = {c_fc: t([[0., 2., 1.], [0., 2., 5.]]),  # (2 in, 3 hidden): column sums 0, 4, 6 -> top 1 {2}
         c_proj: t([[1., 1.], [9., 0.], [0., 0.]]),  # (3 hidden, 2 out): row sums 2, 9, 0 -> {1}
         attn: t([[1., 0.], [1., 3.]])}  # (2 in, 2 out): column sums 2, 3 -> {1}
    conv = select_coupled_neurons({"s": s}, None, q=0.5, granularity="neuron")
    assert {n: conv[n].tolist() for n in conv} == {c_fc: [2, 5], c_proj: [2, 3], attn: [1, 3]}
    linear = select_coupled_neurons({"s": s}, None, q=0.5, granularity="neuron", transposed=())
    # read as nn.Linear (out, in): c_fc rows (sums 3, 7) -> row 1; c_proj columns (10, 1) -> column 0; attn rows
    assert {n: linear[n].tolist() for n in linear} == {c_fc: [3, 4, 5], c_proj: [0, 2, 4], attn: [2, 3]}


def test_neuron_granularity_needs_dense_two_dimensional_scores():
    dense = ImportanceScores({"l.0.mlp.up_proj": torch.rand(64, 80, generator=torch.Generator().manual_seed(0))})
    assert select_coupled_neurons({"a": dense}, None, q=0.1, granularity="neuron").num_masked == 6 * 80
    with pytest.raises(DeanError, match="needs dense scores.*keep=0.5.*keep=1"):
        select_coupled_neurons({"a": dense.sparsify(0.5)}, None, q=0.1, granularity="neuron")
    with pytest.raises(DeanError, match="2-D weight"):
        select_coupled_neurons({"a": {"m": torch.rand(2, 3, 4)}}, None, q=0.5, granularity="neuron")
    with pytest.raises(DeanError, match="granularity='rows'.*'weight', 'neuron'"):
        select_coupled_neurons({"a": dense}, None, q=0.1, granularity="rows")
    with pytest.raises(DeanError, match="legacy=True.*single weights"):
        select_coupled_neurons({"a": dense}, None, q=0.1, granularity="neuron", legacy=True)
    with pytest.raises(DeanError, match="transposed="):
        select_coupled_neurons({"a": dense}, None, q=0.1, granularity="neuron", transposed="l.0.mlp.up_proj")


def _expected_neurons(scores, names, general, module, q, p, axis):
    """The selected neurons of one module computed plainly: sums, topk, Python sets."""
    def top(s, f):
        sums = s[module].sum(dim=1 - axis)
        return set(torch.topk(sums, math.floor(f * sums.numel())).indices.tolist())
    chosen = set.intersection(*(top(scores[n], q) for n in names))
    return sorted(chosen - (top(scores[general], p) if general else set()))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_neuron_mask_applies_like_a_hand_edit_of_rows_and_columns(arch):
    model = make_model(arch)
    scores = {name: score_importance(model, random_examples(4, seed=seed), keep=1.0, show_progress=False)
              for name, seed in (("f", 1), ("p", 2), ("g", 3))}
    mask = select_coupled_neurons({"f": scores["f"], "p": scores["p"]}, scores["g"], q=0.3, p=0.1,
                                  granularity="neuron")
    before, by_hand = weights(model), make_model(arch)
    hand_modules = dict(by_hand.named_modules())
    conv = arch == "gpt2"
    with torch.no_grad():
        for name in mask:
            down = name.endswith(("down_proj", "mlp.c_proj"))
            axis = int(down != conv)  # Linear (out, in); GPT-2's Conv1D (in, out)
            units = _expected_neurons(scores, ["f", "p"], "g", name, 0.3, 0.1, axis)
            weight = hand_modules[name].weight
            if axis == 0:
                weight[units, :] = 0
            else:
                weight[:, units] = 0
            assert mask[name].numel() == len(units) * weight.shape[1 - axis]
    assert mask.num_masked > 0
    editor = DeanEditor(model)
    editor.add_adapter("neurons", mask)
    editor.set_adapter("neurons")
    assert torch.equal(logits(model), logits(by_hand))
    # the down projection's neurons are the hidden units: with one removed, its input weights do not matter
    down, up = ("mlp.down_proj", "mlp.up_proj") if arch == "llama" else ("mlp.c_proj", "mlp.c_fc")
    down_name = next(n for n in mask if n.endswith(down) and mask[n].numel())
    up_name = down_name[:-len(down)] + up
    modules = dict(model.named_modules())
    unit = int(mask.to_bool(down_name).all(dim=1 if conv else 0).nonzero()[0])  # a removed hidden unit
    edited = logits(model)
    with torch.no_grad():
        up = modules[up_name].weight
        saved = up.clone()
        if conv:
            up[:, unit] += 1.0
        else:
            up[unit, :] += 1.0
        assert torch.equal(logits(model), edited)
        up.copy_(saved)
    editor.unload()
    assert bit_identical(model, before)


def test_config_granularity_field():
    assert DeanConfig().granularity == "weight" and DeanConfig(granularity="neuron").granularity == "neuron"
    assert DeanConfig.from_dict({"q": 0.1}).granularity == "weight"
    for bad in ("rows", "", None, 1, ["neuron"]):
        with pytest.raises(DeanError, match="granularity="):
            DeanConfig(granularity=bad)
    with pytest.raises(DeanError, match="legacy=True.*granularity='neuron'"):
        DeanConfig(legacy=True, granularity="neuron")


# =============================================================================================== 3. expressions
def test_contrastive_expression_by_hand():
    sets = {"unsafe_fairness": ranked([1, 2, 5, 7]), "unsafe_privacy": ranked([2, 5, 7, 8]),
            "safe_fairness": ranked([7, 0, 3, 4]), "safe_privacy": ranked([9, 0, 3, 4]), "general": ranked([6, 9])}
    scores = {n: {"m": s} for n, s in sets.items()}
    fractions = {"unsafe_fairness": 0.4, "unsafe_privacy": 0.4, "safe_fairness": 0.4, "safe_privacy": 0.4,
                 "general": 0.2}
    mask = select_by_expression("(unsafe_fairness & unsafe_privacy) - (safe_fairness | safe_privacy | general)",
                                scores, fractions=fractions, scale=0.5)
    # {1,2,5,7} ∩ {2,5,7,8} = {2,5,7}; {7,0,3,4} ∪ {9,0,3,4} ∪ {6,9} holds 7: {2, 5}
    assert mask["m"].tolist() == [2, 5] and mask.scale == 0.5
    assert mask.metadata["expression"].startswith("(unsafe_fairness") and mask.metadata["fractions"] == fractions


@pytest.mark.parametrize("expression,expected", [
    ("a - b | c", [0, 2, 3, 4]),  # (a - b) | c: '-' and '|' share a level, left to right
    ("a | b - c", [0, 1]),  # (a | b) - c
    ("a - b - c", [0]),  # (a - b) - c, not a - (b - c) = {0, 2}
    ("a - b & c", [0, 1]),  # a - (b & c): '&' binds tighter
    ("a | b & c", [0, 1, 2, 3]),  # a | (b & c)
    ("(a | b) & c", [2, 3]),
    ("a & (b - c)", [1]),
    ("c", [2, 3, 4]),
    ("((a))", [0, 1, 2]),
])
def test_expression_precedence_by_hand(expression, expected):
    scores = {"a": {"m": ranked([0, 1, 2])}, "b": {"m": ranked([1, 2, 3])}, "c": {"m": ranked([2, 3, 4])}}
    assert select_by_expression(expression, scores, fractions=dict.fromkeys("abc", 0.3))["m"].tolist() == expected


def test_each_name_has_its_own_fraction():
    scores = {"a": {"m": ranked([0, 1, 2])}, "b": {"m": ranked([1, 2, 3])}}
    assert select_by_expression("a - b", scores, fractions={"a": 0.3, "b": 0.1})["m"].tolist() == [0, 2]
    assert select_by_expression("a & b", scores, fractions={"a": 0.3, "b": 0.2})["m"].tolist() == [1, 2]


@pytest.mark.parametrize("expression,match", [
    ("", "is empty"), ("   ", "is empty"),
    ("a &", "position 3: the expression ends after '&'"),
    ("(a | b", "position 0: unbalanced parentheses: this '\\(' is never closed"),
    ("a & (b | (c)", "position 4: unbalanced parentheses"),
    ("a | b)", "position 5: unbalanced parentheses: no '\\(' opens this '\\)'"),
    ("a + b", "position 2: unexpected character '\\+' \\(write '\\|'\\)"),
    ("a ∩ b", "position 2: unexpected character '∩' \\(write '&'\\)"),
    ("a; b", "position 1: unexpected character ';'"),
    ("a b", "position 2: expected '&', '\\|', '-' or the end, found 'b'"),
    ("a & & b", "position 4: expected a name or '\\(', found '&'"),
    ("()", "position 1: expected a name or '\\(', found '\\)'"),
    ("a & x", "position 4: unknown score set 'x' \\(the score sets are \\['a', 'b', 'c'\\]\\)"),
    ("__import__('os')", "position 11: unexpected character \"'\""),  # never evaluated as Python
    ("(" * 70 + "a" + ")" * 70, "position 64: parentheses nested over 64 deep"),
    (None, "expected a string"),
])
def test_expression_errors_name_the_problem_and_the_position(expression, match):
    scores = {n: {"m": ranked([0, 1, 2])} for n in "abc"}
    with pytest.raises(DeanError, match=match):
        select_by_expression(expression, scores, fractions=dict.fromkeys("abc", 0.3))


def test_expression_fractions_and_score_sets_are_checked():
    scores = {"a": {"m": ranked([0, 1, 2])}, "b": {"m": ranked([1, 2, 3])}, "other": {"x": torch.ones(3)}}
    with pytest.raises(DeanError, match=r"fractions has no entry for \['b'\]"):
        select_by_expression("a & b", scores, fractions={"a": 0.3})
    with pytest.raises(DeanError, match=r"fractions\['b'\]=0 is outside \(0, 1\]"):
        select_by_expression("a & b", scores, fractions={"a": 0.3, "b": 0})
    with pytest.raises(DeanError, match="cover other modules"):
        select_by_expression("a & other", scores, fractions={"a": 0.3, "other": 0.3})
    # a score set the expression does not name is not read; extra fractions are ignored
    assert select_by_expression("a & b", scores, fractions={"a": 0.3, "b": 0.3, "z": 2})["m"].tolist() == [1, 2]
    assert expression_names("(b & a) - (a | c)") == ["b", "a", "c"]


@pytest.mark.parametrize("seed", range(6))
def test_expression_equals_select_coupled_neurons(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.layers.0.mlp.up_proj": (12, 8), "model.layers.0.mlp.down_proj": (8, 12),
              "model.layers.0.self_attn.q_proj": (8, 8), "transformer.h.0.mlp.c_fc": (8, 12)}
    n_targets = 2 + seed % 2
    names = [f"t{i}" for i in range(1, n_targets + 1)] + ["general"]
    # quantised scores make ties, which both must break the same way
    dense = {n: {m: torch.randint(0, 6, s, generator=g).float() for m, s in shapes.items()} for n in names}
    q, p = (0.3, 0.15) if seed < 3 else (0.5, 0.5)
    masked = {}
    for granularity in ("weight", "neuron"):
        for form in ("dict", "scores", "sparse"):
            if form == "sparse" and granularity == "neuron":
                continue
            sets = {n: s if form == "dict" else ImportanceScores(s) if form == "scores" else
                    ImportanceScores(s).sparsify(0.6) for n, s in dense.items()}
            targets = {n: sets[n] for n in names[:-1]}
            fractions = {**dict.fromkeys(names[:-1], q), "general": p}
            coupled = select_coupled_neurons(targets, sets["general"], q=q, p=p, granularity=granularity)
            expression = " & ".join(names[:-1]) + " - general"
            by_expression = select_by_expression(expression, sets, fractions=fractions, granularity=granularity)
            assert by_expression.digest() == coupled.digest()
            masked[granularity] = coupled.num_masked
            assert all(torch.equal(by_expression[m], coupled[m]) for m in shapes)
            without = select_coupled_neurons(targets, None, q=q, granularity=granularity)
            assert select_by_expression(" & ".join(names[:-1]), sets, fractions=fractions,
                                        granularity=granularity).digest() == without.digest()
    assert masked["weight"] > 0


def test_expression_mask_applies_like_a_hand_edit(llama_scores):
    scores = dict(llama_scores)
    fractions = {"fairness": 0.05, "privacy": 0.05, "general": 0.02}
    mask = select_by_expression("(fairness | privacy) - general", scores, fractions=fractions)
    model = make_model("llama")
    before = weights(model)
    by_hand = make_model("llama")
    hand_modules = dict(by_hand.named_modules())
    with torch.no_grad():
        for name in mask:
            def top(n):
                s = scores[n][name].reshape(-1)
                return set(torch.topk(s, math.floor(fractions[n] * s.numel())).indices.tolist())
            chosen = sorted((top("fairness") | top("privacy")) - top("general"))
            assert mask[name].tolist() == chosen
            hand_modules[name].weight.view(-1)[chosen] = 0
    editor = DeanEditor(model)
    editor.add_adapter("expr", mask)
    editor.set_adapter("expr")
    assert torch.equal(logits(model), logits(by_hand))
    editor.unload()
    assert bit_identical(model, before)


def test_config_selection_expression_fields_and_card():
    expression = "(unsafe_fairness & unsafe_privacy) - (safe | general)"
    fractions = {"unsafe_fairness": 1e-3, "unsafe_privacy": 1e-3, "safe": 2e-3, "general": 1e-3}
    config = DeanConfig(selection_expression=expression, selection_fractions=fractions, granularity="neuron",
                        scale=0.5)
    assert DeanConfig.from_dict(json.loads(config.to_json_string())) == config
    assert DeanConfig().selection_expression is None and DeanConfig().selection_fractions is None
    with pytest.raises(DeanError, match=r"selection_expression=.*position 2: unexpected character '\+'"):
        DeanConfig(selection_expression="a + b")
    with pytest.raises(DeanError, match="selection_expression="):
        DeanConfig(selection_expression="")
    with pytest.raises(DeanError, match=r"selection_fractions=.*its names are \['a', 'b'\]"):
        DeanConfig(selection_expression="a & b", selection_fractions={"a": 0.1})
    with pytest.raises(DeanError, match="selection_fractions=.*no other"):
        DeanConfig(selection_expression="a", selection_fractions={"a": 0.1, "b": 0.1})
    with pytest.raises(DeanError, match=r"selection_fractions\['a'\]=0"):
        DeanConfig(selection_expression="a", selection_fractions={"a": 0})
    with pytest.raises(DeanError, match="selection_fractions=.*without a selection_expression"):
        DeanConfig(selection_fractions={"a": 0.1})
    with pytest.raises(DeanError, match="legacy=True"):
        DeanConfig(legacy=True, selection_expression="a & b")

    mask = NeuronMask({"model.layers.0.mlp.up_proj": torch.tensor([0, 1])}, {"model.layers.0.mlp.up_proj": (2, 2)},
                      scale=0.5)
    card = render_card(config, mask)
    assert "| selection | `(unsafe_fairness & unsafe_privacy) - (safe \\| general)` |" in card
    assert "| granularity | whole neurons" in card and "| weights multiplied by 0.5 | 2 of 4" in card
    assert "safe: 0.002" in card
    plain = render_card(DeanConfig(), NeuronMask(mask, mask.shapes))
    assert "| weights zeroed | 2 of 4" in plain and "| granularity | single weights |" in plain
    assert "variants of that edit" not in plain


def test_mask_and_config_applies_and_records_the_variants():
    """The config's variant options reach the mask (and are recorded): scale, neuron granularity, expressions."""
    import torch

    from dean_hf import DeanConfig, ImportanceScores
    from dean_hf.pipeline import mask_and_config

    g = torch.Generator().manual_seed(0)
    scores = {n: ImportanceScores({"model.layers.0.mlp.up_proj": torch.rand(8, 6, generator=g)})
              for n in ("fairness", "privacy", "general")}
    general = scores.pop("general")
    mask, config = mask_and_config(scores, general, DeanConfig(q=0.5, p=0.1, scale=0.25, granularity="neuron"))
    assert mask.scale == 0.25 and config.scale == 0.25 and config.granularity == "neuron"
    rows = {int(i) // 6 for i in mask["model.layers.0.mlp.up_proj"]}
    assert mask.num_masked == 6 * len(rows)  # whole output rows
    expr = DeanConfig(q=0.5, p=0.1, selection_expression="fairness | privacy - general",
                      selection_fractions={"fairness": 0.2, "privacy": 0.2, "general": 0.1})
    mask, config = mask_and_config(scores, general, expr)
    assert config.selection_expression == "fairness | privacy - general" and config.mask_digest == mask.digest()


def test_fit_scores_as_densely_as_its_selection_needs(tokenizer, monkeypatch):
    """A neuron-granularity or large-q config is scored with the keep it needs, decided before scoring (it used to
    score every data set sparse and fail afterwards)."""
    import dean_hf.pipeline as pipeline
    from conftest import make_model, pairs
    from dean_hf import DeanConfig, DeanEditor

    seen = []
    real = pipeline.score_importance
    monkeypatch.setattr(pipeline, "score_importance", lambda *a, **k: seen.append(k["keep"]) or real(*a, **k))
    data = {"fairness": pairs(4), "privacy": pairs(4, offset=2)}
    DeanEditor(make_model("llama"), DeanConfig(q=0.2, p=0.05, num_samples=3, max_length=64,
                                               granularity="neuron")).fit(tokenizer, data, pairs(4, offset=4),
                                                                          show_progress=False)
    assert seen == [1.0, 1.0, 1.0]
    seen.clear()
    DeanEditor(make_model("llama"), DeanConfig(q=0.2, p=0.05, num_samples=3, max_length=64)).fit(
        tokenizer, data, pairs(4, offset=4), show_progress=False)
    assert seen == [0.2, 0.2, 0.2]
