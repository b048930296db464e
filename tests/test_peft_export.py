"""`save_pretrained(dir, save_format="peft")`: a PEFT SHiRA adapter that plain PEFT loads, in a process that never
imports dean_hf, giving the DEAN-edited model's logits and merged weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import IDS, logits, make_model, weights
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dean_hf import DeanConfig, DeanEditor, NeuronMask
from dean_hf.errors import DeanError

pytestmark = pytest.mark.floors

# Masked entries per module: up_proj drives r (ceil(100 / (32 + 48)) = 2); the others get padded with zero deltas.
COUNTS = {"model.layers.0.mlp.up_proj": 100, "model.layers.1.self_attn.q_proj": 30,
          "model.layers.1.self_attn.k_proj": 5}

PEFT_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    cases = json.loads(sys.argv[1])
    ids = torch.tensor(cases.pop("ids"))
    for case in cases.values():
        base = AutoModelForCausalLM.from_pretrained(case["base"], dtype=getattr(torch, case["dtype"]))
        model = PeftModel.from_pretrained(base, case["adapter"])
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids).logits
        merged = model.merge_and_unload()
        save_file({"logits": out.contiguous(), **{k: v.contiguous() for k, v in merged.state_dict().items()
                                                  if k != "lm_head.weight"}}, case["result"])
    assert "dean_hf" not in sys.modules, "the PEFT side imported dean_hf"
    print("peft", type(model).__name__)
""")


def _mask(model, counts=COUNTS, scale=0.0, seed=3):
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    shapes = {n: tuple(modules[n].weight.shape) for n in counts}
    indices = {n: torch.randperm(math.prod(shapes[n]), generator=g)[:k].sort().values for n, k in counts.items()}
    return NeuronMask(indices, shapes, scale=scale)


def _run_peft(tmp_path, cases):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-c", PEFT_SCRIPT, json.dumps({"ids": IDS.tolist(), **cases})], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "peft PeftModelForCausalLM" in done.stdout
    return {name: load_file(case["result"]) for name, case in cases.items()}


def test_plain_peft_loads_the_export_with_the_same_logits_and_merged_weights(tmp_path):
    cases, expected = {}, {}
    for name, dtype, scale in (("zero32", torch.float32, 0.0), ("zero16", torch.bfloat16, 0.0),
                               ("scaled16", torch.bfloat16, 0.3), ("scaled32", torch.float32, 0.3)):
        make_model("llama", seed=1, dtype=dtype).save_pretrained(tmp_path / f"base-{name}")
        # loaded as the PEFT side loads it (from_pretrained keeps e.g. the rotary buffers in float32)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / f"base-{name}", dtype=dtype).eval()
        editor = DeanEditor(model)
        editor.add_adapter("default", _mask(model, scale=scale), DeanConfig(base_model_name_or_path="org/tiny-llama"),
                           check_base_model=False)
        editor.set_adapter("default")
        expected[name] = (logits(editor), weights(model))
        editor.save_pretrained(tmp_path / f"adapter-{name}", save_format="peft")
        assert weights(model).keys() == expected[name][1].keys()  # exporting left the applied mask as it was
        assert all(torch.equal(v, expected[name][1][k]) for k, v in weights(model).items())
        cases[name] = {"base": str(tmp_path / f"base-{name}"), "adapter": str(tmp_path / f"adapter-{name}"),
                       "dtype": str(dtype).split(".")[1], "result": str(tmp_path / f"result-{name}.safetensors")}
    results = _run_peft(tmp_path, cases)
    for name in ("zero32", "zero16", "scaled16"):  # bit for bit, logits and merged weights
        assert torch.equal(results[name]["logits"], expected[name][0]), name
        for key, value in expected[name][1].items():
            if key != "lm_head.weight":
                assert torch.equal(results[name][key], value), (name, key)
    scaled_logits, scaled_weights = expected["scaled32"]
    torch.testing.assert_close(results["scaled32"]["logits"], scaled_logits, rtol=1e-5, atol=1e-5)
    original = load_file(str(tmp_path / "base-scaled32" / "model.safetensors"))
    for key, value in scaled_weights.items():  # float32, scale < 0.5: within one unit in the last place of W
        if key != "lm_head.weight":
            w = original[key].abs()
            ulp = torch.nextafter(w, torch.full_like(w, math.inf)) - w
            assert bool(((results["scaled32"][key] - value).abs() <= ulp).all()), key
    # the export changes what the mask selects, and nothing else
    base = load_file(str(tmp_path / "base-zero32" / "model.safetensors"))
    changed = {k for k, v in results["zero32"].items() if k in base and not torch.equal(v, base[k])}
    assert changed == {f"{n}.weight" for n in COUNTS}


def test_the_adapter_folder_is_standard_peft(tmp_path):
    model = make_model("llama", seed=1)
    editor = DeanEditor(model)
    editor.add_adapter("default", _mask(model), DeanConfig(base_model_name_or_path="org/tiny-llama"),
                       check_base_model=False)
    editor.add_adapter("second", _mask(model, counts={"model.layers.0.mlp.down_proj": 7}, seed=5),
                       check_base_model=False)
    editor.set_adapter("default")
    editor.save_pretrained(tmp_path, save_format="peft")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json",
                                                          "adapter_model.safetensors", "second"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "SHIRA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 2 and sorted(config["target_modules"]) == sorted(COUNTS)
    assert config["base_model_name_or_path"] == "org/tiny-llama"
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    for name, count in COUNTS.items():
        module = dict(model.named_modules())[name]
        idx = tensors[f"base_model.model.{name}.shira_indices"]
        values = tensors[f"base_model.model.{name}.shira_weight"]
        assert idx.dtype == torch.int32 and values.dtype == torch.float32
        assert idx.shape == (2, 2 * (module.in_features + module.out_features))  # one r for every module
        assert int((values != 0).sum()) == count  # unused slots carry a zero delta
        flat = idx[0].long() * module.in_features + idx[1].long()
        assert len(set(flat.tolist())) == flat.numel()  # distinct positions
        selected = editor.masks["default"][name]
        assert torch.equal(flat[values != 0].sort().values, selected)
    from huggingface_hub.repocard import metadata_load

    meta = metadata_load(tmp_path / "README.md")
    assert meta["library_name"] == "peft" and meta["base_model"] == "org/tiny-llama"
    second = json.loads((tmp_path / "second" / "adapter_config.json").read_text())
    assert second["target_modules"] == ["model.layers.0.mlp.down_proj"] and second["r"] == 1


def test_conv1d_is_refused_and_nothing_is_written(tmp_path):
    model = make_model("gpt2")
    editor = DeanEditor(model)
    editor.add_adapter("default", _mask(model, counts={"transformer.h.0.mlp.c_fc": 10}), check_base_model=False)
    editor.set_adapter("default")
    with pytest.raises(DeanError, match="Conv1D.*Linear|Linear.*Conv1D"):
        editor.save_pretrained(tmp_path / "out", save_format="peft")
    assert not (tmp_path / "out").exists()


def test_a_mask_too_dense_for_shira_and_an_unknown_format_are_refused(tmp_path):
    model = make_model("llama")
    editor = DeanEditor(model)
    # k_proj: 16 x 32 = 512 weights, in + out = 48: 500 masked entries need r = 11, and 11 * 48 > 512
    editor.add_adapter("default", _mask(model, counts={"model.layers.0.self_attn.k_proj": 500}), check_base_model=False)
    with pytest.raises(DeanError, match="too dense|exceeds"):
        editor.save_pretrained(tmp_path / "dense", save_format="peft")
    with pytest.raises(DeanError, match="save_format"):
        editor.save_pretrained(tmp_path / "x", save_format="lora")
    assert not (tmp_path / "dense").exists() and not (tmp_path / "x").exists()
    editor.save_pretrained(tmp_path / "dean")  # dean_hf's own format stays the default, for any mask
    assert sorted(p.name for p in (tmp_path / "dean").iterdir()) == ["README.md", "dean_config.json",
                                                                     "dean_mask.safetensors"]


def test_an_export_never_replaces_an_adapter_dean_hf_did_not_write(tmp_path):
    model = make_model("llama", seed=1)
    editor = DeanEditor(model)
    editor.add_adapter("default", _mask(model), check_base_model=False)
    editor.set_adapter("default")
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"a user's LoRA")
    with pytest.raises(DeanError, match="did not export"):
        editor.save_pretrained(tmp_path, save_format="peft")
    assert (tmp_path / "adapter_config.json").read_text() == '{"peft_type": "LORA"}'
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == b"a user's LoRA"
    out = tmp_path / "ours"
    editor.save_pretrained(out, save_format="peft")
    editor.save_pretrained(out, save_format="peft")  # an export of ours is replaced
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("save_format", ["peft", "dean"])
def test_a_save_refused_for_one_adapter_writes_none(tmp_path, save_format):
    """Several adapters: every folder is checked before the first is written, so a refusal for the second
    ("other", in its subfolder) leaves the first ("default", at the root) unwritten too."""
    model = make_model("llama", seed=1)
    editor = DeanEditor(model)
    editor.add_adapter("default", _mask(model), check_base_model=False)
    editor.add_adapter("other", _mask(model, seed=4), check_base_model=False)
    editor.set_adapter("default")
    if save_format == "peft":  # a user's own adapter where "other" would go
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        refused = "did not export"
    else:  # a file where "other"'s folder would go
        (tmp_path / "other").write_text("mine")
        refused = "is a file"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(DeanError, match=refused):
        editor.save_pretrained(tmp_path, save_format=save_format)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    editor.save_pretrained(tmp_path / "elsewhere", save_format=save_format)  # both, where nothing stands in the way
    assert (tmp_path / "elsewhere" / "other").is_dir() and len(list((tmp_path / "elsewhere").iterdir())) == 4
