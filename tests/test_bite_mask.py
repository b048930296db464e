"""A mask file's checks, each message pinned: the shapes it accepts at their edges, a file of another format, a
newer format version, and a shape error named with the file (found by mutation testing: benchmarks/MUTANTS.md)."""

import json

import pytest
import torch

from dean_hf import DeanError, NeuronMask
from dean_hf.io import META_KEY
from dean_hf.mask import validate_shape


def test_shapes_at_their_edges():
    assert validate_shape("m", (5,)) == (5,)  # one dimension (a bias-like vector) is a shape
    assert validate_shape("m", [1, 1]) == (1, 1)
    for bad in ((True, 4), (4, False), (), (0, 4), (4, -1), "44", (4, 2.0)):
        with pytest.raises(DeanError, match=r"the weight shape of 'm' is .*expected a list of 1 to"):
            validate_shape("m", bad)


def write(path, meta: dict, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})


def test_load_messages_name_the_file_and_what_is_wrong(tmp_path):
    path = tmp_path / "dean_mask.safetensors"
    mask = NeuronMask({"m": torch.tensor([0, 3])}, {"m": (2, 2)})
    mask.save(path)
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()[META_KEY])
    tensors = {"m": torch.tensor([0, 3])}
    write(path, {**meta, "format": "lora"}, tensors)
    with pytest.raises(DeanError, match=rf"^'{path}' holds 'lora', not a dean_hf mask \('{meta['format']}'\)\.$"):
        NeuronMask.load(path)
    write(path, {**meta, "format_version": 7}, tensors)
    with pytest.raises(DeanError, match=rf"^'{path}' was written by a newer dean_hf \(mask format 7, this one "
                       r"reads 1\): upgrade dean_hf \(pip install -U dean_hf\)\.$"):
        NeuronMask.load(path)
    write(path, {**meta, "format_version": int("9" * 60)}, tensors)
    with pytest.raises(DeanError, match=r"mask format 9{40}\.\.\. \(60 characters\), this"):  # cut
        NeuronMask.load(path)
    write(path, {**meta, "shapes": {"m": [2, 1]}}, tensors)
    with pytest.raises(DeanError, match=rf"^'{path}': .*\(2, 1\).* The file is corrupt: write it again\.$"):
        NeuronMask.load(path)
    write(path, {**meta, "format_version": 0}, tensors)
    with pytest.raises(DeanError, match=rf"^'{path}' has format_version=0, expected an integer from 1 to 1: the file "
                       r"is corrupt; write it again\.$"):
        NeuronMask.load(path)
    write(path, {**meta, "metadata": [1]}, tensors)
    with pytest.raises(DeanError, match=rf"^'{path}' has metadata=\[1\], expected a JSON object: the file is "
                       r"corrupt; write it again\.$"):
        NeuronMask.load(path)
