import math

import pytest
import torch

from conftest import make_model, random_examples
from dean_hf import DeanError, ImportanceScores, score_importance
from dean_hf.scoring import available_scorers, forward_loss, loss_positions, per_sample_loss
from dean_hf.targets import find_target_modules, is_conv1d


def direct_snip(model, examples, names):
    """One backward per sample through HF's own loss; |grad| summed; times |W|."""
    modules = dict(model.named_modules())
    acc = {n: torch.zeros_like(modules[n].weight, dtype=torch.float32) for n in names}
    for ex in examples:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
        out.loss.backward()
        for n in names:
            acc[n] += modules[n].weight.grad.float().abs()
    model.zero_grad(set_to_none=True)
    return {n: acc[n] * modules[n].weight.detach().float().abs() for n in names}


def max_rel(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max()).item() for n in b)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma"])
def test_snip_equals_direct_loop_and_batching(arch):
    model = make_model(arch)
    examples = random_examples(6)
    s1 = score_importance(model, examples, batch_size=1, show_progress=False, keep=1.0)
    expected = direct_snip(model, examples, list(s1))
    assert max_rel(s1, expected) < 1e-5
    s4 = score_importance(model, examples, batch_size=4, show_progress=False, keep=1.0)
    assert max_rel(s4, s1) < 1e-5
    grouped = score_importance(model, examples, batch_size=3, group_by_length=True, show_progress=False, keep=1.0)
    assert max_rel(grouped, s1) < 1e-5
    assert all(t.dtype == torch.float32 for t in s1.values())
    assert s1.metadata["num_samples"] == 6
    assert s1.metadata["num_tokens"] == sum(sum(1 for x in e["labels"][1:] if x != -100) for e in examples)


def test_gpt2_conv1d_is_targeted():
    model = make_model("gpt2")
    modules = find_target_modules(model)
    assert any(is_conv1d(m) for m in modules.values())
    assert "lm_head" not in modules


def test_abs_is_taken_per_sample():
    model = make_model("llama")
    examples = random_examples(4)
    per_sample = score_importance(model, examples, batch_size=4, show_progress=False, keep=1.0)
    modules = dict(model.named_modules())
    # |sum of grads| (what a naive batched backward gives) is strictly smaller somewhere.
    model.zero_grad(set_to_none=True)
    for ex in examples:
        model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss.backward()
    name = next(iter(per_sample))
    summed = modules[name].weight.grad.abs() * modules[name].weight.detach().abs()
    model.zero_grad(set_to_none=True)
    assert torch.all(summed <= per_sample[name] * (1 + 1e-5) + 1e-12)
    assert (summed < per_sample[name] * 0.99).any()


def test_wanda_equals_activation_norm():
    model = make_model("llama")
    examples = random_examples(5)
    scores = score_importance(model, examples, scorer="wanda", batch_size=2, show_progress=False, keep=1.0)
    name = "model.layers.1.mlp.down_proj"
    module = dict(model.named_modules())[name]
    sumsq = torch.zeros(module.weight.shape[1])
    def record(m, args, output):
        sumsq.add_((args[0][0] ** 2).sum(0))

    handle = module.register_forward_hook(record)
    with torch.no_grad():
        for ex in examples:
            model(input_ids=torch.tensor([ex["input_ids"]]))
    handle.remove()
    expected = module.weight.detach().abs() * sumsq.sqrt()[None, :]
    torch.testing.assert_close(scores[name], expected, rtol=1e-5, atol=1e-7)
    assert "snip" in available_scorers() and "wanda" in available_scorers()


def test_model_state_restored():
    model = make_model("llama")
    model.train()
    model.model.layers[0].mlp.train(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.model.embed_tokens.weight.requires_grad_(False)
    flags["model.embed_tokens.weight"] = False
    marker = torch.full_like(model.model.layers[0].mlp.up_proj.weight, 7.0)
    model.model.layers[0].mlp.up_proj.weight.grad = marker
    modes = {n: m.training for n, m in model.named_modules()}
    score_importance(model, random_examples(3), batch_size=2, show_progress=False, keep=1.0)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert model.model.layers[0].mlp.up_proj.weight.grad is marker
    assert all(p.grad is None for n, p in model.named_parameters() if n != "model.layers.0.mlp.up_proj.weight")
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_interrupt_restores_model():
    model = make_model("llama")
    model.train()
    calls = {"n": 0}

    def interrupt(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    handle = model.model.norm.register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        score_importance(model, random_examples(4), show_progress=False, keep=1.0)
    handle.remove()
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_accumulates_in_fp32(dtype):
    model32 = make_model("llama")
    model = make_model("llama", dtype=dtype)
    examples = random_examples(3)
    low = score_importance(model, examples, show_progress=False, keep=1.0)
    ref = score_importance(model32, examples, show_progress=False, keep=1.0)
    for name, t in low.items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
        # Same ranking signal: strongly correlated with the fp32 scores.
        corr = torch.corrcoef(torch.stack([t.flatten(), ref[name].flatten()]))[0, 1]
        assert corr > 0.9

    # The sum over samples is exact to fp32 rounding: compare with a float64 sum of the per-sample terms
    # |g_i^T x_i|, built from the very activations and gradients (in `dtype`) that the scorer sees.
    # 64 samples: a `dtype` accumulator (8 or 11 significant bits) would lose mass at every addition.
    examples = random_examples(64, seed=5)
    modules = {n: m for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))}
    terms = {n: [] for n in modules}

    def capture(name):
        def hook(module, args, output):
            x = args[0].detach()[0].double()
            output.register_hook(lambda g: terms[name].append((g[0].double().T @ x).abs()))
        return hook

    handles = [m.register_forward_hook(capture(n)) for n, m in modules.items()]
    try:
        scores = score_importance(model, examples, batch_size=1, show_progress=False, keep=1.0)
    finally:
        for h in handles:
            h.remove()
    for name, module in modules.items():
        assert len(terms[name]) == 64
        stacked = torch.stack(terms[name])
        weight = module.weight.detach().double().abs()
        exact = stacked.sum(0) * weight
        low_sum = torch.zeros_like(stacked[0], dtype=dtype)
        for term in stacked:
            low_sum += term.to(dtype)
        lost = ((low_sum.double() * weight - exact).abs().max() / exact.max()).item()
        assert lost > 1e-4, "the case must be one where low-precision accumulation loses mass"
        error = ((scores[name].double() - exact).abs().max() / exact.max()).item()
        assert error < 1e-5, (name, error, lost)


@pytest.mark.parametrize("targets,expected", [
    ("all-linear", 14), ("mlp", 6), ("self_attn", 8), ("attention", 8), (["up_proj", "down_proj"], 4),
    (r".*layers\.1\..*_proj", 7),
])
def test_target_modules(targets, expected):
    model = make_model("llama")
    found = find_target_modules(model, targets)
    assert len(found) == expected
    assert "lm_head" not in found


def test_target_modules_matching_nothing_lists_modules():
    with pytest.raises(DeanError, match="q_proj"):
        find_target_modules(make_model("llama"), ["nonexistent"])


def test_per_sample_loss_is_hf_loss():
    model = make_model("qwen2")
    ex = random_examples(1)[0]
    ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        mine = per_sample_loss(out.logits, labels)
    assert math.isclose(mine.item(), out.loss.item(), rel_tol=1e-6)


def test_per_sample_loss_large_vocab():
    # A real-size vocabulary: torch's (B, V, T) cross-entropy drifts by ~1e-4 here; ours must not.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 91, 49152, generator=g) * 4
    labels = torch.randint(0, 49152, (2, 91), generator=g)
    labels[:, :30] = -100
    labels[1, 80:] = -100
    mine = per_sample_loss(logits, labels)
    for i in range(2):
        hf = torch.nn.functional.cross_entropy(logits[i, :-1], labels[i, 1:], ignore_index=-100)
        assert abs(mine[i].item() - hf.item()) < 1e-6 * hf.item()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma"])
def test_forward_loss_computes_logits_only_where_the_loss_reads(arch):
    model = make_model(arch)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0]])
    labels = torch.tensor([[-100, -100, -100, -100, 9, 10, 11], [-100, -100, 14, 15, 16, -100, -100]])
    assert loss_positions(labels).tolist() == [1, 2, 3, 4, 5]  # before a response token of either sample
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    try:
        with torch.no_grad():
            trimmed = forward_loss(model, ids, labels, mask)
            full = forward_loss(model, ids, labels, mask, trim_logits=False)
            reference = per_sample_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
    finally:
        hook.remove()
    assert seen[:2] == [5, 7]
    torch.testing.assert_close(trimmed, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(full, reference, rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale", [4.0, 12.0])
def test_fused_loss_gradient_is_exact(scale):
    from dean_hf.scoring.loss import _CHUNK_ELEMENTS, _FusedTokenNLL

    g = torch.Generator().manual_seed(0)
    rows = 2 * _CHUNK_ELEMENTS // 49152 + 7  # several chunks, the last one partial
    logits = (torch.randn(rows, 49152, generator=g) * scale).requires_grad_(True)
    targets = torch.randint(0, 49152, (rows,), generator=g)
    targets[1::2] = logits.detach()[1::2].argmax(1)  # confident rows: softmax - 1 loses precision easily
    targets[::5] = -100
    weights = torch.rand(rows, generator=g)
    exact = logits.detach().double().requires_grad_(True)
    expected = torch.nn.functional.cross_entropy(exact, targets, ignore_index=-100, reduction="none")
    (expected_grad,) = torch.autograd.grad((expected * weights.double()).sum(), exact)
    mine = _FusedTokenNLL.apply(logits, targets)
    (grad,) = torch.autograd.grad((mine * weights).sum(), logits, retain_graph=True)
    torch.testing.assert_close(mine.double(), expected, rtol=1e-6, atol=1e-5)
    assert (grad.double() - expected_grad).abs().max().item() < 1e-6  # torch's own fp32 CE is off by ~1e-5 here
    assert bool((grad[::5] == 0).all())
    with pytest.raises(RuntimeError, match="one backward"):
        torch.autograd.grad((mine * weights).sum(), logits)


def test_forward_loss_with_a_model_that_mishandles_logits_to_keep():
    inner = make_model("llama")

    class Keeps(torch.nn.Module):
        def __init__(self, how):
            super().__init__()
            self.inner, self.how = inner, how

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, attention_mask=None, use_cache=None, logits_to_keep=0):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            if self.how == "last-two" and isinstance(logits_to_keep, torch.Tensor):  # reads it its own way
                out.logits = out.logits[:, -2:]
            return out

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    labels = torch.tensor([[-100, -100, -100, 8, 9, 10]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = per_sample_loss(inner(input_ids=ids).logits, labels)
        torch.testing.assert_close(forward_loss(Keeps("ignores"), ids, labels, mask), expected)  # every position
        with pytest.raises(DeanError, match="returned logits for 2 positions when asked for 3 of 6"):
            forward_loss(Keeps("last-two"), ids, labels, mask)
    model = make_model("llama")
    examples = random_examples(3)
    wrapped = Keeps("last-two")
    wrapped.inner = model
    with pytest.raises(DeanError, match="trim_logits=False"):
        score_importance(wrapped, examples, target_modules=["inner.model.layers.0.mlp.up_proj"], show_progress=False, keep=1.0)
    untrimmed = score_importance(wrapped, examples, target_modules=["inner.model.layers.0.mlp.up_proj"],
                                 trim_logits=False, show_progress=False, keep=1.0)
    plain = score_importance(model, examples, target_modules=["model.layers.0.mlp.up_proj"], show_progress=False, keep=1.0)
    torch.testing.assert_close(untrimmed["inner.model.layers.0.mlp.up_proj"], plain["model.layers.0.mlp.up_proj"])


def test_scored_lm_head_sees_every_position():
    model = make_model("llama")
    examples = random_examples(3)
    names = ["lm_head", "model.layers.0.mlp.down_proj"]
    scores = score_importance(model, examples, target_modules=names, scorer="wanda", show_progress=False, keep=1.0)
    x = []
    hook = model.lm_head.register_forward_hook(lambda m, a, out: x.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    try:
        with torch.no_grad():
            for ex in examples:
                model(input_ids=torch.tensor([ex["input_ids"]]))
    finally:
        hook.remove()
    norms = torch.cat(x).pow(2).sum(0).sqrt()
    torch.testing.assert_close(scores["lm_head"], model.lm_head.weight.detach().abs() * norms[None, :])


def test_scores_round_trip(tmp_path):
    model = make_model("llama")
    scores = score_importance(model, random_examples(2), show_progress=False, keep=1.0)
    scores.save(tmp_path / "s.safetensors")
    loaded = ImportanceScores.load(tmp_path / "s.safetensors")
    assert dict(loaded.metadata) == dict(scores.metadata)
    for name in scores:
        assert torch.equal(loaded[name], scores[name])
    with pytest.raises(TypeError):
        scores["x"] = torch.zeros(1)  # read-only mapping
    lazy = ImportanceScores.load(tmp_path / "s.safetensors", lazy=True)
    assert list(lazy) == list(scores) and dict(lazy.metadata) == dict(scores.metadata)
    assert all(torch.equal(lazy[n], scores[n]) for n in scores) and lazy.shapes == scores.shapes


@pytest.mark.parametrize("bad,match", [
    ([], "empty"), ([{"input_ids": [1, 2, 3]}], "labels"), ([{"input_ids": [1, 2], "labels": [1]}], "same length"),
    ([{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}], "no response token"),
])
def test_bad_examples(bad, match):
    with pytest.raises(DeanError, match=match):
        score_importance(make_model("llama"), bad, show_progress=False, keep=1.0)


def test_bad_options():
    model = make_model("llama")
    with pytest.raises(DeanError, match="batch_size"):
        score_importance(model, random_examples(1), batch_size=0)
    with pytest.raises(DeanError, match="scorer"):
        score_importance(model, random_examples(1), scorer="magic")


def test_nan_loss_names_sample():
    model = make_model("llama")
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(DeanError, match=r"the loss of sample [0-9]+ is nan"):
        score_importance(model, random_examples(2), show_progress=False, keep=1.0)
