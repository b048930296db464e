"""The guards that keep bad JSON out, at their boundaries: nesting depth 64 and 65 (the depth scan is the guard,
not json's RecursionError near 1,000), brackets inside strings, the 64 MiB size limit, non-finite numbers."""

import json

import pytest

import dean_hf.io as io
from dean_hf import DeanError
from dean_hf.io import MAX_JSON_BYTES, parse_json, read_json

DEEP = "nests deeper than 64 levels"


def nested(depth: int) -> str:
    """`depth` levels: objects and arrays alternating, a number at the bottom."""
    text = "1"
    for level in range(depth):
        text = f'{{"k{level}": {text}}}' if level % 2 else f"[{text}, 0]"
    return text


def test_depth_64_parses_and_65_is_refused_by_the_depth_guard():
    value = parse_json(nested(64), "x")
    for level in reversed(range(64)):  # 64 levels down to the number
        value = value[f"k{level}"] if level % 2 else value[0]
    assert value == 1
    assert parse_json("[" * 64 + "]" * 64, "x") is not None
    for depth in (65, 66, 100, 300, 900):  # all below json's own recursion limit: only the guard refuses them
        json.loads(nested(depth))
        with pytest.raises(DeanError, match=DEEP):
            parse_json(nested(depth), "the config")
        with pytest.raises(DeanError, match=DEEP):
            parse_json("[" * depth + "]" * depth, "the config")
    with pytest.raises(DeanError, match=DEEP):  # deeper than json can parse: still the guard's message
        parse_json("[" * 100_000 + "]" * 100_000, "the config")


def test_brackets_inside_strings_do_not_count_and_escapes_are_followed():
    inside = '{"a": "\\" ' + "[" * 100 + '", "b": "{{{{\\\\", "c": ["\\\\\\"[[["]}'
    assert parse_json(inside, "x") == {"a": '" ' + "[" * 100, "b": "{{{{\\", "c": ['\\"[[[']}
    # A string that ends in an escaped backslash ends there: the brackets after it are real nesting.
    deep_after = '["\\\\", ' + "[" * 64 + "]" * 64 + "]"
    with pytest.raises(DeanError, match=DEEP):
        parse_json(deep_after, "x")
    assert parse_json('["\\\\", ' + "[" * 63 + "]" * 63 + "]", "x")[0] == "\\"
    # An escaped quote does not end a string: the brackets after it are text.
    assert parse_json('"\\"' + "[" * 70 + '"', "x") == '"' + "[" * 70
    assert parse_json('{"k\\"[[": "]]]]"}', "x") == {'k"[[': "]]]]"}


class CountingPattern:
    """Wraps the depth scan's pattern and counts the matches it hands out."""

    def __init__(self, pattern):
        self.pattern, self.taken = pattern, 0

    def finditer(self, text):
        for match in self.pattern.finditer(text):
            self.taken += 1
            yield match


def test_depth_scan_stops_reading_at_the_first_bracket_past_the_limit(monkeypatch, tmp_path):
    from safetensors.torch import save_file
    import torch

    counter = CountingPattern(io._STRUCTURE)
    monkeypatch.setattr(io, "_STRUCTURE", counter)
    with pytest.raises(DeanError, match=DEEP):
        parse_json("[" * 1_000_000, "x")
    assert counter.taken == 65  # not a million
    counter.taken = 0
    config = tmp_path / "dean_config.json"
    config.write_text("[" * (8 << 20))  # 8 MiB of "[": refused after 65 of them
    with pytest.raises(DeanError, match=DEEP):
        read_json(config, "dean config")
    assert counter.taken == 65
    counter.taken = 0
    mask = tmp_path / "dean_mask.safetensors"
    save_file({"m": torch.zeros(1, dtype=torch.int64)}, str(mask), metadata={"dean_hf": "[" * (4 << 20)})
    with pytest.raises(DeanError, match=DEEP):
        io.read_safetensors(mask, "mask")
    assert counter.taken == 65


def test_size_guard_at_exactly_64_mib_and_one_byte_more(tmp_path):
    path = tmp_path / "config.json"
    with open(path, "wb") as f:
        f.truncate(MAX_JSON_BYTES)  # sparse: no disk used; NUL bytes are UTF-8 but not JSON
    with pytest.raises(DeanError, match="is not valid JSON"):  # read and parsed: not refused by its size
        read_json(path, "config")
    with open(path, "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(DeanError, match=f"is {MAX_JSON_BYTES + 1} bytes, over the {MAX_JSON_BYTES}"):
        read_json(path, "config")
    assert MAX_JSON_BYTES == 64 * 1024 * 1024


@pytest.mark.parametrize("text", ["-Infinity", "Infinity", "NaN", "-1e400", "1e400", '{"a": [-1E+999]}'])
def test_non_finite_numbers_are_refused(text):
    with pytest.raises(DeanError, match="corrupt"):
        parse_json(text, "x")
    assert parse_json("-1.7976931348623157e308", "x") == -1.7976931348623157e308  # the largest finite float passes


def test_messages_name_the_file_the_value_and_the_type(tmp_path):
    from safetensors.torch import save_file
    import torch

    path = tmp_path / "dean_config.json"
    path.write_text("[1, 2]")
    with pytest.raises(DeanError, match=rf"^config '{tmp_path}/dean_config.json' holds a JSON list, expected an"):
        read_json(path, "config")
    path.write_text("[" * 65)
    with pytest.raises(DeanError, match=rf"^config '{tmp_path}/dean_config.json' nests deeper"):
        read_json(path, "config")
    with pytest.raises(DeanError, match=r"holds the number '-1e400', outside the range of a float"):
        parse_json('{"a": -1e400}', "x")
    mask = tmp_path / "dean_mask.safetensors"
    save_file({"m": torch.zeros(1, dtype=torch.int64)}, str(mask), metadata={"dean_hf": "[1"})
    with pytest.raises(DeanError, match=rf"^the header of mask file '{mask}' is not valid JSON"):
        io.read_safetensors(mask, "mask")
    too_long = tmp_path / ("n" * 300)  # the OS refuses the name: "does not exist", not a read error
    with pytest.raises(DeanError, match="does not exist"):
        read_json(too_long, "config")
