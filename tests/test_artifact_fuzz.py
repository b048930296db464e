"""Fuzzing the artifact loader: every mutated artifact is refused with a DeanError or loads as a valid mask, and
a refusal leaves the model's weights bit-identical.

One seeded generator (no hypothesis: a few thousand cases must run in seconds) mutates a real artifact of a
tiny Llama: byte flips and truncations of the safetensors file and of its JSON header, structured mutations of
`dean_config.json` and of the mask header (digit-limit integers, deep nesting, 1e400, NaN, lone surrogates,
wrong types for every field, junk `format_version`, a changed index payload that still parses) and folder cases
(special files, symlinks, very long and missing paths). Targeted tests below pin the messages and warnings.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import struct
from collections import Counter
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from conftest import make_model
from dean_hf import DeanConfig, DeanEditor, DeanError, NeuronMask
from dean_hf.errors import quote
from dean_hf.fingerprint import check_fingerprint, validate_fingerprint, weight_fingerprint
from dean_hf.hub import load_artifact, render_card, save_artifact

SEED = 20240611
MAX_MESSAGE = 1500  # characters: a message names the bad value, it never echoes a whole file
CONFIG, MASK = "dean_config.json", "dean_mask.safetensors"


class Raw(str):
    """JSON text written as it is (`1e400`, a 5,000-digit integer, deep nesting): json.dumps cannot write it."""


def dumps(obj) -> str:
    if isinstance(obj, Raw):
        return str(obj)
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    return json.dumps(obj)


JUNK = [None, True, False, 0, 1, -1, 2, 0.5, 1.5, -0.0, "", "abc", "\ud800", "ok\udfffok", "x" * 200_000, [], [1],
        ["a", "a"], [""], [None], ["\ud800"], {}, {"a": 1}, {"a": "b"}, {"": ""}, Raw("1e400"), Raw("-1e400"),
        Raw("NaN"), Raw("Infinity"), Raw("1" * 5000), Raw("9" * 4000), Raw("-" + "9" * 4000), Raw("1e-400"),
        Raw("[" * 100 + "]" * 100), Raw("[" * 50_000 + "]" * 50_000), Raw('{"a": ' * 80 + "1" + "}" * 80),
        Raw('"\\ud800"'), Raw("18446744073709551616"), Raw("1E+2"), Raw("2.0")]
# Values of the right type, some in range and some just outside: both sides of every check.
PLAUSIBLE = {
    "q": [1e-300, 1, 1.0, 0.999, 1.0000001, 5e-324], "p": [1e-300, 1, 0.5],
    "target_modules": ["mlp", ["up_proj"], "x" * 4096, "x" * 4097, ["mlp", "mlp"], r".*\.(q|v)_proj"],
    "scorer": ["wanda", "snip", " "], "target_datasets": [["a"], ["a", "b", "c"], ["ü", "😀"]],
    "general_dataset": [None, "g"], "dataset_sources": [None, {}, {"x": "user/data"}, {"x": "/tmp/a.csv", "y": "a/b"}],
    "num_samples": [1, 10**9, 10**9 + 1], "max_length": [1, 10**8, 10**8 + 1], "batch_size": [1, 10**6, 10**6 + 1],
    "seed": [0, 2**64 - 1, 2**64, -1], "chat_template": [False], "legacy": [True],
    "base_model_name_or_path": ["", "user/model", "a/b/c", "\n---\nfoo: bar\n---\n", "{{ evil }}", "x" * 4096, "\x00"],
    "revision": ["main", "a" * 40, ""], "dean_hf_version": ["0.1.0", "0.2.5", "0.3.0", "9.0.0", "0.2.0.dev1+g12ab",
                                                            "²", "1" * 5000, "0.2.0\n"],
}


@contextmanager
def watchdog(seconds: float):
    """Fail a case that hangs (a FIFO opened for reading, a read of /dev/zero) instead of hanging the suite."""
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_safetensors(header, data: bytes) -> bytes:
    text = (header if isinstance(header, str) else dumps(header)).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(text)) + text + data


class World:
    """The tiny model, its original artifact, and the checks run on every mutated one."""

    def __init__(self, root: Path):
        self.model = make_model("llama")
        modules = {n: m for n, m in self.model.named_modules() if n.endswith("_proj")}
        g = torch.Generator().manual_seed(SEED)
        indices = {n: torch.randperm(m.weight.numel(), generator=g)[:4].sort().values for n, m in modules.items()}
        self.mask = NeuronMask(indices, {n: tuple(m.weight.shape) for n, m in modules.items()}, {"q": 0.05})
        config = DeanConfig(q=0.05, p=0.05, base_model_name_or_path="tiny-llama",
                            base_model_fingerprint=weight_fingerprint(modules), dataset_sources={"fairness": "u/f"})
        self.original = root / "original"
        save_artifact(self.original, config, self.mask)
        self.config_text = (self.original / CONFIG).read_text()
        self.config = json.loads(self.config_text)
        self.mask_bytes = (self.original / MASK).read_bytes()
        self.header, self.data = split_safetensors(self.mask_bytes)
        self.meta = json.loads(self.header["__metadata__"]["dean_hf"])
        self.before = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.work = root / "work"
        self.work.mkdir()
        self.failures: list[str] = []
        self.counts: Counter = Counter()
        self.cards: dict[str, None] = {}

    def unchanged(self) -> bool:
        return all(torch.equal(v, self.before[k]) for k, v in self.model.state_dict().items())

    def restore(self) -> None:
        self.model.load_state_dict(self.before)

    def fail(self, label: str, why: str) -> None:
        self.failures.append(f"{label}: {why}")

    def files(self, config: bytes | str | None = None, mask: bytes | None = None) -> Path:
        """The work folder holding `config` and `mask` (the original's where None)."""
        for name in (CONFIG, MASK):
            path = self.work / name
            if path.is_symlink() or path.is_file():
                path.unlink()
        config = self.config_text if config is None else config
        (self.work / CONFIG).write_bytes(config.encode("utf-8", "surrogatepass") if isinstance(config, str) else config)
        (self.work / MASK).write_bytes(self.mask_bytes if mask is None else mask)
        return self.work

    def check(self, label: str, folder, expect: str = "any", **kwargs) -> None:
        """Load `folder` onto the model: a DeanError with a short message and the weights untouched, or a valid
        load whose mask is the original (unless the config has no digest), zeroed, reversible, and whose config
        writes back and renders a model card. `expect` is "refuse", "load" or "any"."""
        self.counts["cases"] += 1
        try:
            with watchdog(10):
                editor = DeanEditor.from_pretrained(self.model, folder, **kwargs)
        except DeanError as err:
            self.counts["refused"] += 1
            if len(str(err)) > MAX_MESSAGE:
                self.fail(label, f"DeanError message of {len(str(err))} characters: {quote(str(err))}")
            if expect == "load":
                self.fail(label, f"refused a valid artifact: {quote(str(err), 300)}")
            if not self.unchanged():
                self.fail(label, "weights changed after a refusal")
                self.restore()
            return
        except Exception as err:  # noqa: BLE001 - the point of the test: nothing but DeanError escapes
            self.fail(label, f"{type(err).__name__} instead of DeanError: {quote(str(err), 300)}")
            self.restore()
            return
        self.counts["loaded"] += 1
        try:
            self.check_loaded(label, folder, editor)
        except Exception as err:  # noqa: BLE001
            self.fail(label, f"accepted, then {type(err).__name__}: {quote(str(err), 300)}")
        if expect == "refuse":
            self.fail(label, "a mutation that must be refused was loaded")
        if not self.unchanged():
            self.fail(label, "weights not restored by unload")
            self.restore()

    def check_loaded(self, label: str, folder, editor) -> None:
        config, mask = load_artifact(folder)
        if config.mask_digest is not None and mask.digest() != self.mask.digest():
            self.fail(label, "applied a mask other than the one saved")
        modules = dict(self.model.named_modules())
        if not all(bool((modules[n].weight.view(-1)[idx] == 0).all()) for n, idx in mask.items()):
            self.fail(label, "a masked weight is not zero")
        editor.unload()
        text = config.to_json_string()  # `dean apply` writes this config and its card after the merge
        if DeanConfig.from_dict(json.loads(text)) != config:
            self.fail(label, "the config does not survive a save and load")
        if text not in self.cards:
            render_card(config, mask, merged=True)
            render_card(config, mask)
            self.cards[text] = None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(autouse=True)
def restored(world):
    """Each test starts from the original weights, even after a failed one."""
    yield
    if not world.unchanged():
        world.restore()


def nasty_byte(rng: random.Random) -> int:
    return rng.choice(b'{}[]",:0123456789eE+-.\\ u\x00\x7f\xff') if rng.random() < 0.6 else rng.randrange(256)


def flip(rng: random.Random, raw: bytes, lo: int, hi: int, times: int) -> bytes:
    buf = bytearray(raw)
    for _ in range(times):
        buf[rng.randrange(lo, hi)] = nasty_byte(rng)
    return bytes(buf)


def mask_byte_cases(world: World, rng: random.Random, n: int):
    raw = world.mask_bytes
    end = 8 + struct.unpack("<Q", raw[:8])[0]
    for i in range(n):
        kind = rng.choice(["header", "header", "header", "data", "data", "length", "truncate", "splice", "cut"])
        if kind == "header":
            mutated = flip(rng, raw, 8, end, rng.randint(1, 6))
        elif kind == "data":
            mutated = flip(rng, raw, end, len(raw), rng.randint(1, 4))
        elif kind == "length":
            mutated = flip(rng, raw, 0, 8, 1)
        elif kind == "truncate":
            mutated = raw[:rng.randrange(len(raw))]
        elif kind == "splice":
            at = rng.randrange(len(raw))
            mutated = raw[:at] + bytes(nasty_byte(rng) for _ in range(rng.randint(1, 16))) + raw[at:]
        else:
            at = rng.randrange(len(raw))
            mutated = raw[:at] + raw[at + rng.randint(1, 64):]
        yield f"mask bytes #{i} ({kind})", None, mutated


def config_byte_cases(world: World, rng: random.Random, n: int):
    raw = world.config_text.encode()
    for i in range(n):
        kind = rng.choice(["flip", "flip", "truncate", "splice"])
        if kind == "flip":
            mutated = flip(rng, raw, 0, len(raw), rng.randint(1, 4))
        elif kind == "truncate":
            mutated = raw[:rng.randrange(len(raw))]
        else:
            at = rng.randrange(len(raw))
            mutated = raw[:at] + bytes(nasty_byte(rng) for _ in range(rng.randint(1, 8))) + raw[at:]
        yield f"config bytes #{i} ({kind})", mutated, None


def fingerprint_variants(world: World):
    fp = world.config["base_model_fingerprint"]
    name = sorted(fp["probes"])[0]
    pos = sorted(fp["probes"][name])[0]
    yield "null", None, "load"
    yield "{}", {}, "any"
    yield "no probes", {"probes": {}}, "load"
    yield "extra key", {**fp, "more": 1}, "refuse"
    yield "other weights", {"probes": {**fp["probes"], name: {**fp["probes"][name], pos: 123.0}}}, "refuse"
    yield "probe past the end", {"probes": {**fp["probes"], name: {**fp["probes"][name], "99999999": 1.0}}}, "load"
    for junk in JUNK:
        empty = isinstance(junk, dict) and not junk  # no probes: valid, loads with a warning
        yield f"probes={quote(junk, 30)}", {"probes": junk}, "load" if empty else "refuse"
        yield f"module={quote(junk, 30)}", {"probes": {**fp["probes"], name: junk}}, "load" if empty else "refuse"
        yield f"value={quote(junk, 30)}", {"probes": {**fp["probes"], name: {pos: junk}}}, ("any" if junk in (
            0.5, 1.5, -0.0, Raw("1e-400"), Raw("2.0")) else "refuse")
    for key in ["-1", "007", "1" * 30, "abc", "", "１", " 1", "1.0", "\ud800", "9999999999999999999",
                str(2**63)]:  # 19 digits that overflow int64 too
        yield f"position {key!r}", {"probes": {**fp["probes"], name: {key: 0.0}}}, "refuse"
    yield "position 2**63 - 1", {"probes": {**fp["probes"], name: {str(2**63 - 1): 0.0}}}, "load"  # past the end


def config_cases(world: World, rng: random.Random, n_random: int):
    base = world.config
    names = [f.name for f in fields(DeanConfig)]
    for field in names + ["unknown_key"]:
        yield f"config {field} deleted", {k: v for k, v in base.items() if k != field}, "any"
        for value in JUNK + PLAUSIBLE.get(field, []):
            yield f"config {field}={quote(value, 40)}", {**base, field: value}, "any"
    for label, fp, expect in fingerprint_variants(world):
        yield f"fingerprint {label}", {**base, "base_model_fingerprint": fp}, expect
    digest = base["mask_digest"]
    for value, expect in [(None, "load"), ("0" * 64, "refuse"), (digest.upper(), "refuse"), (digest[:-1], "refuse"),
                          (digest[1:] + digest[0], "refuse"), (digest + "0", "refuse")]:
        yield f"mask_digest={quote(value, 20)}", {**base, "mask_digest": value}, expect
    for whole in [{}, [], None, 1, "x", Raw("[" * 100_000), Raw("[" * (64 << 20)), Raw("[" * 65), Raw("[" * 64),
                  Raw('"\\"' + "[" * 65), Raw("1" * 5000), Raw("1e400"), Raw("NaN"),
                  Raw('"\\ud800"')]:
        yield f"config is {quote(whole, 30)}", whole, "load" if isinstance(whole, dict) and not whole else "any"
    yield "duplicated key", Raw(world.config_text.rstrip()[:-1] + ', "q": 7}'), "refuse"
    for i in range(n_random):  # several fields at once
        data = dict(base)
        for field in rng.sample(names, rng.randint(2, 4)):
            data[field] = rng.choice(JUNK + PLAUSIBLE.get(field, [data[field]]))
        yield f"config random #{i}", data, "any"


def mask_header_cases(world: World):
    """Mutations of the dean_hf JSON inside the safetensors header, and of the safetensors header itself."""
    meta, header, data = world.meta, world.header, world.data

    def with_meta(text: str) -> bytes:
        return join_safetensors({**header, "__metadata__": {"dean_hf": text}}, data)

    name = sorted(meta["shapes"])[0]
    for key in ["format", "format_version", "shapes", "metadata", "unknown"]:
        yield f"meta {key} deleted", with_meta(dumps({k: v for k, v in meta.items() if k != key})), "any"
        for value in JUNK:
            yield f"meta {key}={quote(value, 40)}", with_meta(dumps({**meta, key: value})), (
                "refuse" if key in ("format", "shapes") or (key == "format_version" and value != 1) else "any")
    for value in JUNK + [[48, 32], [32, 48, 1], [1] * 9, [2**40, 2], [10**20, 1], [0, 32], [-1, 32], [True, 32]]:
        yield f"shape={quote(value, 40)}", with_meta(dumps({**meta, "shapes": {**meta["shapes"], name: value}})), \
            "refuse"
    dropped = {k: v for k, v in meta["shapes"].items() if k != name}
    yield "shape dropped", with_meta(dumps({**meta, "shapes": dropped})), "refuse"
    yield "shape added", with_meta(dumps({**meta, "shapes": {**meta["shapes"], "lm_head": [320, 32]}})), "refuse"
    for text in ["", "{", "[]", "null", "1", '"x"', "[" * 100_000, "[" * (16 << 20), "[" * 65 + "]" * 65,
                 "1" * 5000, "NaN", '"\\ud800"', "\ud800"]:
        yield f"meta text {quote(text, 30)}", with_meta(text), "refuse"
    yield "no dean_hf key", join_safetensors({**header, "__metadata__": {}}, data), "refuse"
    yield "no __metadata__", join_safetensors({k: v for k, v in header.items() if k != "__metadata__"}, data), "refuse"
    for value in [1, None, [], "x", {"dean_hf": 1}, {"dean_hf": None}, {"dean_hf": ["x"]}]:
        yield f"__metadata__={quote(value, 30)}", join_safetensors({**header, "__metadata__": value}, data), "refuse"
    entry = header[name]
    a, b = entry["data_offsets"]
    for key, values in {"dtype": ["I32", "F64", "U8", "BOOL", "F8_E4M3", "XYZ", 1, None],
                        "shape": [[len(range(a, b)) // 4], [(b - a) // 8, 1], [], [-1], [10**30], "x", Raw("1e400")],
                        "data_offsets": [[0, 10**30], [b, a], [a, b + 8], [-1, b], [a, b - 8], "x", [a], Raw("1e400")]
                        }.items():
        for value in values:
            mutated = {**header, name: {**entry, key: value}}
            yield f"tensor {key}={quote(value, 30)}", join_safetensors(mutated, data), "refuse"
    yield "header padded", join_safetensors(dumps(header) + " " * 7, data), "load"
    yield "header deep", join_safetensors("[" * 100_000 + "]" * 100_000, data), "refuse"


def payload_cases(world: World, rng: random.Random, n: int):
    """Index tensors changed so that the file still parses (and mostly still makes a valid mask)."""
    from safetensors.torch import save

    tensors = {k: v.clone() for k, v in world.mask.items()}
    text = world.header["__metadata__"]["dean_hf"]
    names = sorted(tensors)
    for i in range(n):
        changed = {k: v.clone() for k, v in tensors.items()}
        name = rng.choice(names)
        idx, numel = changed[name], math.prod(world.mask.shapes[name])
        kind = rng.choice(["shift", "drop", "add", "empty", "swap", "int32", "2d", "unsorted", "range"])
        if kind == "shift":
            values = set(idx.tolist())
            j = rng.randrange(len(idx))
            new = next(v for v in range(int(idx[j]) + 1, numel + numel) if v % numel not in values) % numel
            values.discard(int(idx[j]))
            changed[name] = torch.tensor(sorted(values | {new}), dtype=torch.int64)
        elif kind == "drop":
            changed[name] = torch.cat([idx[:1], idx[2:]])
        elif kind == "add":
            changed[name] = torch.tensor(sorted(set(idx.tolist()) | {rng.randrange(numel)}), dtype=torch.int64)
        elif kind == "empty":
            changed[name] = idx[:0]
        elif kind == "swap":
            other = rng.choice([n for n in names if n != name])
            changed[name], changed[other] = changed[other], changed[name]
        elif kind == "int32":
            changed[name] = idx.to(torch.int32)
        elif kind == "2d":
            changed[name] = idx.view(1, -1)
        elif kind == "unsorted":
            changed[name] = idx.flip(0)
        else:
            changed[name] = torch.cat([idx[:-1], torch.tensor([numel])])
        if torch.equal(changed[name], idx) and kind != "swap":
            continue
        yield f"payload #{i} ({kind} in {name})", save(changed, metadata={"dean_hf": text}), "refuse"


def folder_cases(world: World, root: Path):
    """Special files, symlinks and paths: each is refused (or loads) without hanging."""
    def make(label: str, config=None, mask=None) -> Path:
        folder = root / label
        folder.mkdir()
        for file, spec in ((CONFIG, config), (MASK, mask)):
            path = folder / file
            if spec is None:
                path.write_bytes(world.config_text.encode() if file == CONFIG else world.mask_bytes)
            elif spec == "fifo":
                os.mkfifo(path)
            elif spec == "dir":
                path.mkdir()
            elif spec == "loop":
                path.symlink_to(path)
            elif spec == "sparse":
                with open(path, "wb") as f:
                    f.truncate(65 * 1024 * 1024)
            elif spec != "missing":
                path.symlink_to(spec)
        return folder

    for file in ("config", "mask"):
        for spec in ["/dev/zero", "/dev/null", "fifo", "dir", "loop", "/no/such/target", "missing", "sparse"]:
            label = f"{file}-{Path(spec).name}"
            yield f"folder: {label}", make(label, **{file: spec}), "refuse"
    yield "folder: symlinked artifact files", make("links", config=world.original / CONFIG,
                                                    mask=world.original / MASK), "load"
    long_dir = root
    for _ in range(20):  # a path of over 4,096 characters, made of legal components
        long_dir = long_dir / ("d" * 250)
    yield "folder: path over PATH_MAX", str(long_dir), "refuse"
    yield "folder: component over NAME_MAX", root / ("n" * 300), "refuse"
    yield "folder: relative path that does not exist", "no/such/folder/here", "refuse"
    yield "folder: Hub-shaped id not in the cache", "no-such-user/no-such-dean-mask", "refuse"
    yield "folder: NUL in path", f"{root}/a\0b", "refuse"
    yield "folder: a file, not a folder", world.original / CONFIG, "refuse"


def api_cases(world: World):
    """Keyword arguments of `from_pretrained` of the wrong type or value, on the original artifact."""
    for value in [5, 0, 1.5, True, b"default", ["x"], {"a": 1}, object(), "no-such-subfolder", "x" * 300, "a\0b"]:
        yield f"subfolder={quote(value, 30)}", world.original, "refuse", {"subfolder": value}
    for value in [None, "", "../original", Path(".")]:  # no subfolder, or one that leads back to the artifact
        yield f"subfolder={value!r}", world.original, "load", {"subfolder": value}


def test_fuzz_artifacts_refused_or_loaded_model_unchanged(world, tmp_path):
    """A few thousand mutated artifacts: each is a DeanError (short message, weights bit-identical) or a valid
    load (the saved mask, zeroed and reversible, whose config saves and renders a card)."""
    rng = random.Random(SEED)
    assert world.unchanged()
    for label, config, mask in mask_byte_cases(world, rng, 1300):
        world.check(label, world.files(mask=mask))
    for label, config, mask in config_byte_cases(world, rng, 500):
        world.check(label, world.files(config=config))
    for label, data, expect in config_cases(world, rng, 300):
        world.check(label, world.files(config=dumps(data)), expect)
    for label, mask, expect in mask_header_cases(world):
        world.check(label, world.files(mask=mask), expect)
    for label, mask, expect in payload_cases(world, rng, 150):
        world.check(label, world.files(mask=mask), expect)
    for label, folder, expect in folder_cases(world, tmp_path):
        world.check(label, folder, expect)
    for label, folder, expect, kwargs in api_cases(world):
        world.check(label, folder, expect, **kwargs)
    world.check("the original artifact", world.original, "load")
    counts = world.counts
    assert not world.failures, f"{len(world.failures)} of {counts['cases']} cases failed:\n" + \
        "\n".join(world.failures[:40])
    assert counts["cases"] >= 3000 and counts["loaded"] >= 50 and counts["refused"] >= 2000, counts


# ----------------------------------------------------------------------------------------- targeted checks
def load_refused(world: World, folder, match: str) -> str:
    with pytest.raises(DeanError, match=match) as info:
        DeanEditor.from_pretrained(world.model, folder)
    assert world.unchanged()
    assert len(str(info.value)) <= MAX_MESSAGE
    return str(info.value)


@pytest.mark.parametrize("version", ["abc", None, 1.5, Raw("NaN"), True, 0, -1, "1", [1], Raw("1" * 5000)])
def test_junk_mask_format_version_is_corrupt(world, version):
    mask = join_safetensors({**world.header, "__metadata__": {"dean_hf": dumps({**world.meta,
                                                                                  "format_version": version})}},
                            world.data)
    load_refused(world, world.files(mask=mask), "corrupt" if version != Raw("NaN") else "not a JSON number")


@pytest.mark.parametrize("version", [2, Raw("9" * 4000)])
def test_newer_mask_format_version_asks_for_an_upgrade(world, version):
    mask = join_safetensors({**world.header, "__metadata__": {"dean_hf": dumps({**world.meta,
                                                                                  "format_version": version})}},
                            world.data)
    load_refused(world, world.files(mask=mask), "newer dean_hf")


def test_mask_header_metadata_must_be_an_object(world):
    mask = join_safetensors({**world.header, "__metadata__": {"dean_hf": dumps({**world.meta, "metadata": [1]})}},
                            world.data)
    load_refused(world, world.files(mask=mask), "metadata=")


@pytest.mark.parametrize("field,value", [
    ("target_datasets", 1), ("base_model_name_or_path", [1]), ("base_model_name_or_path", "a\ud800b"),
    ("target_datasets", ["a", "a"]), ("target_datasets", []), ("target_modules", []), ("target_modules", [""]),
    ("scorer", ""), ("general_dataset", ""), ("dataset_sources", {"a": 1}), ("dataset_sources", []),
    ("q", Raw("1e400")), ("q", True), ("p", 0), ("num_samples", Raw("1" * 5000)), ("num_samples", 1.0),
    ("max_length", True), ("batch_size", 10**7), ("seed", -1), ("seed", 1.5), ("chat_template", "yes"),
    ("legacy", 1), ("revision", 7), ("mask_digest", "A" * 64), ("mask_digest", 5), ("dean_hf_version", "abc"),
    ("dean_hf_version", 2), ("base_model_fingerprint", {}), ("base_model_fingerprint", {"probes": []}),
    ("base_model_fingerprint", [1]),
])
def test_every_config_field_is_validated_on_load(world, field, value):
    """The configs the issue found crashing `dean apply` after the merge are refused before any weight changes;
    the message names the field (or the number the JSON reader refused)."""
    data = {**world.config, field: value}
    load_refused(world, world.files(config=dumps(data)), "1e400|not valid JSON" if isinstance(value, Raw) else field)


def test_config_construction_validates_and_quotes():
    with pytest.raises(DeanError, match=r"scorer='xxx.*\(200002 characters\).*expected a non-empty string") as info:
        DeanConfig(scorer="x" * 200_000)
    assert len(str(info.value)) < 600
    with pytest.raises(DeanError, match="q=nan.*expected a number in"):
        DeanConfig(q=float("nan"))
    with pytest.raises(DeanError, match="got a list"):
        DeanConfig.from_dict([1, 2])
    with pytest.raises(DeanError, match="lone surrogate"):
        DeanConfig(target_datasets=["fair\udc80ness"])
    assert DeanConfig(target_modules=("up_proj", "down_proj")).target_modules == ["up_proj", "down_proj"]


def test_bad_config_messages_are_capped(world):
    big = "x" * 200_000
    message = load_refused(world, world.files(config=dumps({**world.config, "scorer": [big]})), "scorer=")
    assert "200" in message and len(message) < 600
    mask = join_safetensors({**world.header, "__metadata__": {"dean_hf": dumps({**world.meta, "format": big})}},
                            world.data)
    assert len(load_refused(world, world.files(mask=mask), "not a dean_hf mask")) < 600


def test_empty_config_and_null_fingerprint_load_with_warnings(world, dean_log):
    editor = DeanEditor.from_pretrained(world.model, world.files(config="{}"))
    editor.unload()
    assert world.unchanged()
    assert "no mask_digest" in dean_log.text and "no base_model_fingerprint" in dean_log.text
    dean_log.clear()
    data = {**world.config, "base_model_fingerprint": None}
    DeanEditor.from_pretrained(world.model, world.files(config=dumps(data))).unload()
    assert "cannot be checked against its base model" in dean_log.text


def test_check_fingerprint_warns_when_nothing_is_compared(world, dean_log):
    modules = {n: m for n, m in world.model.named_modules() if n in world.mask}
    for empty in (None, {}):
        check_fingerprint(empty, modules, world.mask)
        assert "no base_model_fingerprint" in dean_log.text
        dean_log.clear()
    check_fingerprint({"probes": {}}, modules, world.mask)
    assert "could not be checked" in dean_log.text
    dean_log.clear()
    check_fingerprint(weight_fingerprint(modules), modules, world.mask)
    assert dean_log.text == ""


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10**400, "0.5", True, None, [0.5]])
def test_malformed_fingerprint_value_is_a_dean_error(world, value):
    modules = {n: m for n, m in world.model.named_modules() if n in world.mask}
    fingerprint = weight_fingerprint(modules)
    name = sorted(fingerprint["probes"])[0]
    fingerprint["probes"][name] = {"0": value}
    with pytest.raises(DeanError, match="base_model_fingerprint.*expected a finite float"):
        check_fingerprint(fingerprint, modules, world.mask)
    with pytest.raises(DeanError, match="base_model_fingerprint"):
        DeanConfig(base_model_fingerprint=fingerprint)


@pytest.mark.parametrize("position", ["1" * 5000, "-1", "abc", "007", 3, "9999999999999999999", str(2**63)])
def test_malformed_fingerprint_position_is_a_dean_error(world, position):
    modules = {n: m for n, m in world.model.named_modules() if n in world.mask}
    fingerprint = {"probes": {sorted(world.mask)[0]: {position: 0.5}}}
    with pytest.raises(DeanError, match="flat index"):
        validate_fingerprint(fingerprint)
    with pytest.raises(DeanError, match="flat index"):
        check_fingerprint(fingerprint, modules, world.mask)


def test_fingerprint_on_meta_weights_names_the_fix(world):
    modules = {n: m for n, m in world.model.named_modules() if n in world.mask}
    fingerprint = weight_fingerprint(modules)
    with torch.device("meta"):
        empty = make_model("llama")
    meta_modules = {n: m for n, m in empty.named_modules() if n in world.mask}
    with pytest.raises(DeanError, match="meta device.*real device.*check_base_model=False"):
        weight_fingerprint(meta_modules)
    with pytest.raises(DeanError, match="meta device.*real device.*check_base_model=False"):
        check_fingerprint(fingerprint, meta_modules, world.mask)


def test_changed_index_payload_is_refused_by_the_digest(world):
    """A mask file whose indices changed but still form a valid mask: only the digest can tell."""
    from safetensors.torch import save

    name = sorted(world.mask)[0]
    numel = math.prod(world.mask.shapes[name])
    idx = world.mask[name]
    free = next(v for v in range(numel) if v not in set(idx.tolist()))
    changed = {**dict(world.mask.items()), name: torch.tensor(sorted(idx.tolist()[1:] + [free]))}
    payload = save(changed, metadata={"dean_hf": world.header["__metadata__"]["dean_hf"]})
    NeuronMask.load(world.files(mask=payload) / MASK)  # a valid mask on its own
    load_refused(world, world.work, "does not match the mask_digest")


def test_digest_covers_names_shapes_and_indices(world):
    mask = world.mask
    name = sorted(mask)[0]
    indices, shapes = dict(mask.items()), mask.shapes
    renamed = NeuronMask({("x" + n if n == name else n): t for n, t in indices.items()},
                         {("x" + n if n == name else n): s for n, s in shapes.items()})
    reshaped = NeuronMask(indices, {**shapes, name: shapes[name][::-1]})
    moved = NeuronMask({**indices, name: indices[name] + 1}, shapes)
    digests = {mask.digest(), renamed.digest(), reshaped.digest(), moved.digest()}
    assert len(digests) == 4 and all(len(d) == 64 for d in digests)
    assert NeuronMask(indices, shapes, {"other": "metadata"}).digest() == mask.digest()


def test_the_largest_int64_position_is_valid_and_past_the_end(world):
    modules = {n: m for n, m in world.model.named_modules() if n in world.mask}
    fingerprint = weight_fingerprint(modules)
    name = sorted(fingerprint["probes"])[0]
    fingerprint["probes"][name][str(2**63 - 1)] = 0.5  # no weight matrix is that large: not compared
    validate_fingerprint(fingerprint)
    check_fingerprint(fingerprint, modules, world.mask)


@pytest.mark.parametrize("subfolder", [5, 2.0, True, b"privacy", ["privacy"]])
def test_a_subfolder_of_the_wrong_type_is_named(world, subfolder):
    message = str(pytest.raises(DeanError, DeanEditor.from_pretrained, world.model, world.original,
                                subfolder=subfolder).value)
    assert f"subfolder={subfolder!r} ({type(subfolder).__name__}): expected a string" in message
    assert world.unchanged()


def test_the_depth_scan_stops_at_the_limit_in_a_huge_config_and_mask_header(world, monkeypatch):
    """A 64 MiB config of "[" and a 16 MiB mask header of "[" are refused after reading 65 brackets of each."""
    import dean_hf.io as io

    taken = []
    pattern = io._STRUCTURE

    class Counting:
        def finditer(self, text):
            taken.append(0)
            for match in pattern.finditer(text):
                taken[-1] += 1
                yield match

    monkeypatch.setattr(io, "_STRUCTURE", Counting())
    load_refused(world, world.files(config="[" * (64 << 20)), "nests deeper than 64 levels")
    assert taken == [65]
    taken.clear()
    meta = join_safetensors({**world.header, "__metadata__": {"dean_hf": "[" * (16 << 20)}}, world.data)
    load_refused(world, world.files(mask=meta), "nests deeper than 64 levels")
    assert taken[-1] == 65  # the config (read first) is an ordinary one
