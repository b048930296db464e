"""The fused per-sample |gradient| kernel (scoring/fused_abs_grad.py) and its dispatch.

The kernel tests run it on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1) and skip where triton is
not installed; the dispatch tests run everywhere."""

import importlib.util

import pytest
import torch

from conftest import make_model, random_examples
from dean_hf import DeanError, score_importance
from dean_hf.plan import _module_transient, estimate_memory
from dean_hf.scoring.scores import rank_order
from dean_hf.targets import find_target_modules

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def reference(a, b, lengths):
    """sum_i |a_i^T b_i| over each sample's real tokens, in float64."""
    out = torch.zeros(a.shape[2], b.shape[2], dtype=torch.float64)
    for i, n in enumerate(lengths):
        out += (a[i, :n].double().T @ b[i, :n].double()).abs()
    return out


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def max_rel(a, b):
    return max(rel(a[n], b[n]) for n in b)


@needs_triton
@pytest.mark.floors  # with the gpu extra's floor triton too
@pytest.mark.parametrize("dtype,batch,tokens,m,n,lengths,blocks", [
    (torch.float32, 3, 37, 40, 50, [37, 20, 5], (32, 32, 16, 4, 1)),  # ragged; partial tiles in every direction
    (torch.bfloat16, 3, 37, 40, 50, [37, 20, 5], (32, 32, 16, 4, 1)),
    (torch.float16, 2, 16, 40, 24, [16, 16], (32, 16, 16, 4, 1)),      # equal lengths: no lengths tensor
    (torch.float32, 1, 9, 33, 17, [9], None),                          # one sample, the default tile
    (torch.float32, 2, 9, 200, 20, [9, 4], (16, 16, 16, 1, 1)),        # 13 row tiles: a full group of 8, a partial
])
def test_kernel_equals_per_sample_products(interpreter, dtype, batch, tokens, m, n, lengths, blocks):
    from dean_hf.scoring.fused_abs_grad import accumulate_abs_grad

    g = torch.Generator().manual_seed(batch * tokens)
    a = torch.randn(batch, tokens, m, generator=g).to(dtype)
    b = torch.randn(batch, n, tokens, generator=g).to(dtype).transpose(1, 2)  # strided, as a gradient can be
    for i, length in enumerate(lengths):  # padding holds NaN: it must never be read
        a[i, length:] = float("nan")
        b[i, length:] = float("nan")
    # acc is a window of a larger buffer whose border (a tile wide) holds a sentinel: a store outside (m, n) lands
    # there instead of corrupting memory, and the window's row stride is not n.
    pad = 64
    buffer = torch.full((m + 2 * pad, n + 2 * pad), 7.0)
    acc = buffer[pad:pad + m, pad:pad + n]
    acc.copy_(torch.rand(m, n, generator=g))  # accumulates onto what is there
    expected = reference(a, b, lengths) + acc.double()
    accumulate_abs_grad(acc, a, b, lengths, blocks=blocks)
    assert torch.isfinite(acc).all()
    assert rel(acc, expected) <= 1e-6  # 16-bit products are exact in fp32: fp32 sums either way
    acc.fill_(7.0)
    assert torch.equal(buffer, torch.full_like(buffer, 7.0))  # nothing written outside (m, n)


# A few modules of each kind: the interpreter takes about a second per launch.
TARGETS = {"llama": ["q_proj", "down_proj"], "gpt2": ["attn.c_attn", "mlp.c_proj"]}


@needs_triton
@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # Linear (out x in) and GPT-2 Conv1D (in x out)
def test_scores_with_the_kernel_equal_the_batched_products(interpreter, arch):
    model = make_model(arch)
    examples = random_examples(4)  # ragged lengths, a prompt of -100 labels: the response-only loss
    kwargs = dict(batch_size=3, keep=1.0, target_modules=TARGETS[arch], show_progress=False)
    off = score_importance(model, examples, fused_kernel="off", **kwargs)
    on = score_importance(model, examples, fused_kernel="on", **kwargs)
    assert len(on) == 4 and max_rel(on, off) <= 1e-6
    if arch == "llama":  # the backward stopped below each pass's layers
        per_pass = score_importance(model, examples, fused_kernel="on", layers_per_pass=1, **kwargs)
        assert max_rel(per_pass, off) <= 1e-6


@needs_triton
def test_bf16_scores_with_the_kernel_select_the_same_weights(interpreter):
    model = make_model("llama", dtype=torch.bfloat16)
    examples = random_examples(6, seed=3)
    kwargs = dict(batch_size=4, keep=1.0, target_modules=["v_proj", "up_proj"], show_progress=False)
    off = score_importance(model, examples, fused_kernel="off", **kwargs)
    on = score_importance(model, examples, fused_kernel="on", **kwargs)
    assert max_rel(on, off) <= 1e-5
    for name in off:
        flat_on, flat_off = on[name].reshape(-1), off[name].reshape(-1)
        k = flat_off.numel() // 10
        a, b = set(rank_order(flat_on, k).tolist()), set(rank_order(flat_off, k).tolist())
        kth = flat_off[rank_order(flat_off, k)[-1]]
        # Ties aside: a weight in one top set only must score within rounding of the k-th value.
        assert all(abs(flat_off[i] - kth) <= 1e-5 * kth for i in a ^ b), name


def test_auto_on_the_cpu_takes_the_batched_products(monkeypatch):
    import dean_hf.scoring.fused_abs_grad as fused

    def fail(*args, **kwargs):
        raise AssertionError("the fused kernel ran")

    monkeypatch.setattr(fused, "accumulate_abs_grad", fail)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # 'auto' never takes the (slow) interpreter
    model = make_model("llama")
    examples = random_examples(4)
    auto = score_importance(model, examples, batch_size=2, keep=1.0, show_progress=False)
    off = score_importance(model, examples, batch_size=2, keep=1.0, fused_kernel="off", show_progress=False)
    assert all(torch.equal(auto[n], off[n]) for n in off)  # the same code path: bit-exact


def test_off_is_the_batched_products_bit_exactly(monkeypatch):
    """fused_kernel='off' never reaches the kernel, even where it could run, and gives the scores of the batched
    per-sample products bit for bit (those of the CPU, where nothing else runs)."""
    import dean_hf.scoring.fused_abs_grad as fused

    model = make_model("gpt2")
    examples = random_examples(5)
    cpu = score_importance(model, examples, batch_size=3, keep=1.0, show_progress=False)

    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the fused kernel ran")

    monkeypatch.setattr(fused, "fused_kernel_unavailable", lambda *a, **k: None)  # "it could run here"
    monkeypatch.setattr(fused, "accumulate_abs_grad", fail)
    off = score_importance(model, examples, batch_size=3, keep=1.0, fused_kernel="off", show_progress=False)
    assert all(torch.equal(off[n], cpu[n]) for n in cpu) and not calls
    score_importance(model, examples, batch_size=3, keep=1.0, show_progress=False)
    assert calls  # and "auto" would have taken it


def test_on_where_the_kernel_cannot_run_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = make_model("llama")
    flags = [p.requires_grad for p in model.parameters()]
    examples = random_examples(2)
    why = "triton cannot be imported" if importlib.util.find_spec("triton") is None else "not a CUDA device"
    with pytest.raises(DeanError, match=f"fused_kernel='on' but the fused kernel cannot run: .*{why}"):
        score_importance(model, examples, fused_kernel="on", show_progress=False)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(DeanError, match="has no fused kernel"):
        score_importance(model, examples, scorer="wanda", fused_kernel="on", show_progress=False)
    with pytest.raises(DeanError, match="fused_kernel='yes'"):
        score_importance(model, examples, fused_kernel="yes", show_progress=False)


def test_on_without_triton_says_how_to_install(monkeypatch):
    import dean_hf.scoring.fused_abs_grad as fused

    monkeypatch.setattr(fused, "triton", None)
    monkeypatch.setattr(fused, "_TRITON_ERROR", "triton cannot be imported (No module named 'triton')")
    with pytest.raises(DeanError, match=r"pip install 'dean_hf\[gpu\]'"):
        score_importance(make_model("llama"), random_examples(2), fused_kernel="on", show_progress=False)


def test_plan_drops_the_per_sample_transient_with_the_kernel():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)
    plain = estimate_memory(config, dtype="bfloat16", batch_size=4, max_length=256)
    fused = estimate_memory(config, dtype="bfloat16", batch_size=4, max_length=256, fused_kernel=True)
    from dean_hf.plan import meta_model

    targets = find_target_modules(meta_model(config, torch.bfloat16))
    module_peak = max(_module_transient(m, 4, 256) for m in targets.values())
    assert module_peak > 0 and plain.transient["device"] == module_peak  # the per-sample block dominates here
    assert fused.transient["device"] < plain.transient["device"]
    assert plain.total("scoring_peak") - fused.total("scoring_peak") == module_peak - fused.transient["device"]
    assert fused.total("weights") == plain.total("weights") and fused.total("activations") == plain.total("activations")


def test_dean_plan_fused_kernel_flag(capsys):
    from pathlib import Path

    from dean_hf.cli import main

    config = Path(__file__).parent / "fixtures" / "configs" / "llama-2-7b.json"
    tables = []
    for flag in ([], ["--fused-kernel"]):
        # few response tokens: the loss's logits are small, and the per-sample block is the largest temporary
        assert main(["plan", str(config), "--batch-size", "4", "--max-length", "512", "--response-tokens", "8",
                     *flag]) == 0
        tables.append(capsys.readouterr().out)
    transient = [float(t.splitlines()[2].split()[4]) for t in tables]  # the device row's transient column
    assert transient[1] < transient[0]



@needs_triton
@pytest.mark.parametrize("capability,runs", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_auto_takes_the_kernel_from_compute_capability_8_0(monkeypatch, capability, runs):
    """sm_75 compiles the 16-bit tiles without tensor cores and spills (test_fused_kernel_compile.py): not there."""
    from dean_hf.scoring.fused_abs_grad import fused_kernel_unavailable

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    why = fused_kernel_unavailable(torch.device("cuda", 0), torch.bfloat16, allow_interpreter=False)
    if runs:
        assert why is None
        # on a GPU it runs on, only the three dtypes Triton's products take
        assert fused_kernel_unavailable(torch.device("cuda", 0), torch.float64, allow_interpreter=False) == (
            "the activations are float64, expected float32, bfloat16 or float16")
    else:
        assert why == ("cuda:0 has compute capability 7.5; the kernel needs 8.0 or newer (Ampere, Ada, Hopper, "
                       "Blackwell)")


def test_auto_falls_back_to_the_products_when_the_kernel_fails(monkeypatch, dean_log):
    """A kernel Triton cannot compile or launch on this GPU (an old driver, too little shared memory) costs 'auto'
    one warning, not the run: the scores are those of the products. 'on' raises the error itself."""
    import dean_hf.scoring.fused_abs_grad as fused

    calls = []

    def broken(acc, *args, **kwargs):
        calls.append(1)
        raise RuntimeError("PTX .version 9.4 does not support .target sm_90a\nmore detail")

    model = make_model("llama")
    examples = random_examples(5)
    kwargs = dict(batch_size=2, keep=1.0, show_progress=False)
    off = score_importance(model, examples, fused_kernel="off", **kwargs)
    import dean_hf.scoring.engine as engine

    monkeypatch.setattr(fused, "fused_kernel_unavailable", lambda *a, **k: None)  # "it could run here"
    monkeypatch.setattr(engine, "fused_kernel_unavailable", lambda *a, **k: None)  # (the engine's check for 'on')
    monkeypatch.setattr(fused, "accumulate_abs_grad", broken)
    auto = score_importance(model, examples, **kwargs)
    assert all(torch.equal(auto[n], off[n]) for n in off)
    assert len(calls) == 1  # tried once, then never again in this run
    warnings = [m for m in dean_log.messages if "fused kernel failed" in m]
    assert len(warnings) == 1 and "RuntimeError: PTX .version 9.4 does not support .target sm_90a" in warnings[0]
    assert "more detail" not in warnings[0]
    with pytest.raises(RuntimeError, match="PTX .version 9.4"):
        score_importance(model, examples, fused_kernel="on", **kwargs)


@pytest.mark.parametrize("choice,kernel_tried", [("auto", True), ("off", False)])
def test_dean_score_and_the_config_carry_the_switch(monkeypatch, tmp_path, tokenizer, choice, kernel_tried):
    """`dean score --fused-kernel` -> DeanConfig.fused_kernel -> score_importance: 'off' never reaches the kernel,
    'auto' does where it could run (here: told it could, then failing, so the products finish the run)."""
    import datasets

    import dean_hf.models as models
    import dean_hf.scoring.fused_abs_grad as fused
    from conftest import pairs
    from dean_hf.cli import main

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no GPU here")

    monkeypatch.setattr(fused, "fused_kernel_unavailable", lambda *a, **k: None)
    monkeypatch.setattr(fused, "accumulate_abs_grad", broken)
    model = make_model("llama")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: tokenizer)
    datasets.Dataset.from_list(pairs(4)).to_csv(str(tmp_path / "fair.csv"))
    assert main(["score", "--model", "tiny", "--data", f"fairness={tmp_path / 'fair.csv'}", "--n", "2",
                 "--out", str(tmp_path / "scores"), "--max-length", "48", "--quiet", "--fused-kernel", choice]) == 0
    assert bool(calls) == kernel_tried
    assert (tmp_path / "scores" / "fairness.safetensors").is_file()


def test_the_config_refuses_an_unknown_switch():
    from dean_hf import DeanConfig

    assert DeanConfig(fused_kernel="off").fused_kernel == "off"
    assert DeanConfig.from_dict(DeanConfig(fused_kernel="on").to_dict()).fused_kernel == "on"
    for bad in ("yes", True, None, "ON"):
        with pytest.raises(DeanError, match=r"fused_kernel=.*expected 'auto', 'on' or 'off'"):
            DeanConfig(fused_kernel=bad)


def test_the_launch_gets_contiguous_features(monkeypatch):
    """The kernel's loads are vectorised and pipelined only for unit feature strides (what the offline compile
    test compiles for): strided inputs are copied first, others passed as they are."""
    import dean_hf.scoring.fused_abs_grad as fused

    if fused._load_triton() is not None:
        pytest.skip("triton is not installed")
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(args)

    monkeypatch.setattr(fused, "_kernel", lambda: Recorder())
    a = torch.randn(2, 40, 6).transpose(1, 2)  # (2, 6, 40) with feature stride 6
    b = torch.randn(2, 6, 24)
    fused.accumulate_abs_grad(torch.zeros(40, 24), a, b, [6, 4])
    args = launches[0]
    assert args[10] == 1 and args[13] == 1  # stride_am, stride_bn
    assert torch.equal(args[0], a) and args[0].is_contiguous() and args[1] is b  # the same values; b not copied
    # Inputs of two dtypes (a 16-bit layer's input, an fp32 gradient) reach tl.dot in one, the wider: Triton
    # refuses a product of two dtypes, and the fallback computes in the wider one too.
    fused.accumulate_abs_grad(torch.zeros(40, 24), a.contiguous().bfloat16(), b, [6, 4])
    args = launches[1]
    assert args[0].dtype == args[1].dtype == torch.float32
    assert torch.equal(args[0], a.bfloat16().float()) and args[1] is b


def test_running_out_of_memory_is_not_taken_for_a_kernel_failure(monkeypatch):
    """The products need more memory than the kernel: an OOM in its launch is raised, not 'fallen back' from."""
    import dean_hf.scoring.fused_abs_grad as fused

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(fused, "fused_kernel_unavailable", lambda *a, **k: None)
    monkeypatch.setattr(fused, "accumulate_abs_grad", oom)
    with pytest.raises(torch.OutOfMemoryError):
        score_importance(make_model("llama"), random_examples(2), show_progress=False)


def test_the_mask_config_records_how_its_scores_were_summed():
    from dean_hf import DeanConfig
    from dean_hf.pipeline import mask_and_config

    model = make_model("llama")
    kwargs = dict(target_modules=["up_proj"], keep=1.0, show_progress=False)
    sets = [score_importance(model, random_examples(3, seed=s), fused_kernel="off", **kwargs) for s in (1, 2, 3)]
    assert sets[0].metadata["fused_kernel"] == "off"
    _, config = mask_and_config({"fairness": sets[0], "privacy": sets[1]}, sets[2], DeanConfig(q=0.1, p=0.1))
    assert config.fused_kernel == "off"  # from the scores, not the select-time config's default


def test_where_the_kernel_runs_is_asked_once_per_device_and_dtype(monkeypatch):
    """Not once per module per batch: the answer reads the device's properties, on the backward's hot path."""
    import dean_hf.scoring.fused_abs_grad as fused

    asked = []
    monkeypatch.setattr(fused, "fused_kernel_unavailable", lambda device, dtype, **k: asked.append(dtype) or "no")
    model = make_model("llama")
    score_importance(model, random_examples(5), batch_size=2, show_progress=False)  # 3 batches x 14 modules
    assert asked == [torch.float32]


def test_the_kernel_sums_into_the_accumulator_itself_and_shares_the_lengths_of_a_batch(monkeypatch):
    """SnipScorer.on_backward's kernel path: the accumulator itself goes to the kernel where it lives with the
    activations (no temporary the size of the weight); a fresh zero one on the activations' device where it does
    not (an offloaded weight's accumulator, kept off the GPU: the meta device stands in for it here); and one
    lengths cache serves every module, so the lengths go to the device once per batch, not once per module."""
    from torch import nn

    import dean_hf.scoring.fused_abs_grad as fused
    from dean_hf.scoring.scorers import SnipScorer

    calls = []

    def record(acc, a, b, lengths, lengths_cache=None, blocks=None):
        calls.append((acc, acc.clone(), lengths_cache))

    monkeypatch.setattr(fused, "fused_kernel_unavailable", lambda *a, **k: None)
    monkeypatch.setattr(fused, "accumulate_abs_grad", record)
    scorer = SnipScorer()
    scorer.fused_kernel = "on"
    x, g = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    first, second = torch.ones(4, 6), torch.ones(4, 6)
    scorer.on_backward(nn.Linear(6, 4), first, x, g, [5, 3])
    scorer.on_backward(nn.Linear(6, 4), second, x, g, [5, 3])
    assert calls[0][0] is first and calls[1][0] is second
    assert isinstance(calls[0][2], fused.LengthsOnDevice) and calls[1][2] is calls[0][2]
    offloaded = torch.zeros(4, 6, device="meta")
    scorer.on_backward(nn.Linear(6, 4), offloaded, x, g, [5, 3])
    total, at_launch, _ = calls[2]
    assert total.device == x.device and torch.equal(at_launch, torch.zeros(4, 6))


def test_the_products_sum_into_the_accumulator_itself_where_it_lives(monkeypatch):
    """The fallback's ragged path likewise: no temporary the size of the weight beside an accumulator that lives
    with the activations; a zero one on the activations' device for an offloaded weight's (meta here)."""
    from torch import nn

    from dean_hf.scoring.scorers import SnipScorer

    made = []
    real = torch.zeros_like
    monkeypatch.setattr(torch, "zeros_like", lambda t, **k: made.append(k.get("device")) or real(t, **k))
    scorer = SnipScorer()
    scorer.fused_kernel = "off"
    x, g = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    acc = torch.zeros(4, 6)
    scorer.on_backward(nn.Linear(6, 4), acc, x, g, [5, 3])  # ragged: one product per sample, over its tokens
    expected = (g[0, :5].T @ x[0, :5]).abs() + (g[1, :3].T @ x[1, :3]).abs()
    assert torch.allclose(acc, expected, rtol=1e-6, atol=0) and made == []
    scorer.on_backward(nn.Linear(6, 4), torch.zeros(4, 6, device="meta"), x, g, [5, 3])
    assert made == [x.device]


def test_dean_score_fused_kernel_on_where_it_cannot_run_fails_before_loading_anything(monkeypatch, tmp_path, capsys):
    """The model placed on the CPU (the default --device-map), no GPU it runs on for 'auto', or a scorer without a
    kernel: one line and exit 2 before the data sets are read and the model is loaded (minutes for a 7B model)."""
    import dean_hf.data as data
    import dean_hf.models as models
    from dean_hf.cli import main

    def never(*args, **kwargs):
        raise AssertionError("read or loaded before the check")

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as here, also on a machine with GPUs
    monkeypatch.setattr(models, "load_model", never)
    monkeypatch.setattr(data, "load_records", never)
    no_triton = importlib.util.find_spec("triton") is None
    cases = [([], "triton cannot be imported" if no_triton else "the activations are on cpu, not a CUDA device"),
             (["--device-map", "auto"], "triton cannot be imported" if no_triton else "no CUDA GPU is visible"),
             (["--scorer", "wanda"], "scorer='wanda' has no fused kernel")]
    for extra, expected in cases:
        assert main(["score", "--model", "tiny", "--data", f"fairness={tmp_path / 'fair.csv'}", "--out",
                     str(tmp_path / "scores"), "--fused-kernel", "on", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "scores").exists()


def _raise(*args, **kwargs):
    raise RuntimeError("CUDA driver initialization failed")


@needs_triton
@pytest.mark.parametrize("capabilities,why", [([], "no CUDA GPU is visible"), ([(7, 5)], "compute capability 7.5;"),
                                              ([(7, 5), (8, 0)], None), ("raise", "CUDA driver initialization failed")])
def test_whether_the_kernel_can_run_here_reads_every_visible_gpu(monkeypatch, capabilities, why):
    from dean_hf.scoring.fused_abs_grad import fused_kernel_unavailable_here

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(capabilities))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        _raise if capabilities == "raise" else lambda d=None: capabilities[torch.device(d).index])
    found = fused_kernel_unavailable_here()
    assert found is None if why is None else why in found
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert fused_kernel_unavailable_here() is None  # the interpreter runs it on the CPU
