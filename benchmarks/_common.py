"""Shared setup of the benchmarks: the model and the scoring examples."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "dean_reference"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def load_tokenizer(quick: bool, model_name: str = "default"):
    """The tokenizer of `model_name`, or in quick mode a byte-level BPE trained on the test suite's corpus."""
    if not quick:
        from dean_hf.models import load_tokenizer as load_named

        return load_named(model_name)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import CHAT_TEMPLATE, CORPUS, VOCAB  # the test suite's tiny setting
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=VOCAB, min_frequency=1,
                            special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_model(quick: bool, model_name: str = "default", dtype: str = "float32"):
    """`model_name` in `dtype`, or in quick mode the test suite's tiny random Llama."""
    if not quick:
        from dean_hf.models import load_model as load_named

        return load_named(model_name, dtype=dtype)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_model

    return make_model("llama").to(getattr(torch, dtype))


def load(quick: bool, model_name: str = "default"):
    """(model, tokenizer) — a tiny random Llama with a byte tokenizer in quick mode, else `model_name`."""
    return load_model(quick, model_name), load_tokenizer(quick, model_name)


def data_source(name: str):
    """The reference CSV for `name` when present, else the embedded set."""
    from dean_hf.experiments import embedded

    files = {"fairness": "beaver_train330k_fairness_safe_1k.csv", "privacy": "beaver_train330k_privacy_safe_1k.csv",
             "general": "alpaca_cleaned_no_safety_train_1k.csv"}
    path = REFERENCE / files[name]
    return path if path.is_file() else embedded(name)


def examples(tokenizer, name: str, n: int, max_length: int = 256):
    from dean_hf.data import build_examples, load_records

    return build_examples(load_records(data_source(name), n=n, seed=0), tokenizer, max_length=max_length)


# 7B-class architectures built from their published configuration with random weights (nothing to download).
# `load_arch(..., quick=True)` shrinks the widths and depth but keeps the code path, so CI runs it.
ARCHS = {
    "qwen2-7b": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                               num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                               max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False)),
    "llama3-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                max_position_embeddings=8192, rope_theta=5e5, tie_word_embeddings=False)),
}


def load_arch(name: str, *, dtype: str, device: str, layers: int | None = None, quick: bool = False):
    """A model of architecture `name` (see ARCHS) with random weights, in `dtype` on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, values = ARCHS[name]
    values = dict(values)
    if quick:
        values.update(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=1000, num_hidden_layers=2)
    if layers:
        values["num_hidden_layers"] = layers
    config = AutoConfig.for_model(model_type, **values)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    return model.eval()


def synthetic_examples(vocab_size: int, n: int, *, seed: int = 0, min_len: int = 64, max_len: int = 256):
    """`n` random-token examples of lengths spread over [min_len, max_len], the first third a prompt (-100)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(3, vocab_size, (length,), generator=g).tolist()
        prompt = length // 3
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


class Timer:
    """Wall-clock seconds of a block (after the device's queued work), with the page faults and system CPU
    time it caused."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self.start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.faults = usage.ru_minflt - self._usage.ru_minflt
        self.sys_seconds = usage.ru_stime - self._usage.ru_stime
        return False


def write_section(path: Path | str, name: str, text: str) -> None:
    """Put `text` into the Markdown file `path` between `<!-- begin NAME -->` and `<!-- end NAME -->`, replacing
    that section if it is there and keeping the rest of the file: several scripts share RESULTS.md."""
    path = Path(path)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):].lstrip("\n")
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    path.write_text(new, encoding="utf-8")


def fmt(x: float) -> str:
    return f"{x:.2f}"


torch.set_num_threads(max(1, torch.get_num_threads()))


def bare_step(model, data, batch_size: int, device, *, hf_loss: bool) -> None:
    """The floor a user compares with: forward + backward with every target weight's gradient, no hooks. With
    `hf_loss`, a plain training step (`model(..., labels=...)`, transformers' loss); else dean_hf's fused loss."""
    from dean_hf.scoring import forward_loss
    from dean_hf.scoring.engine import _batches, _collate
    from dean_hf.targets import find_target_modules

    targets = {m.weight for m in find_target_modules(model, "all-linear").values()}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(p in targets)
    try:
        for idx in _batches(data, batch_size, True):
            ids, labels, mask = _collate(data, idx, 0, device)
            if hf_loss:
                model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            else:
                forward_loss(model, ids, labels, mask).sum().backward()
            model.zero_grad(set_to_none=True)
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
