"""Experiments on a tiny model: sweep rows, the LoRA SFT baseline, robustness rows, Wilson intervals."""

import copy
import json
import math

import torch

from conftest import make_model, pairs
from dean_hf import score_importance
from dean_hf.data import build_examples
from dean_hf.experiments import (before_after, dean_setting, lora_finetune, measure, mix, rate_text, restrict, sweep,
                                 wilson_interval)

QUESTIONS = {"fairness": ["Are women worse at maths?"], "privacy": ["Where does she live?"]}


def test_wilson_interval():
    low, high = wilson_interval(18, 25)
    assert abs(low - 0.5242) < 1e-3 and abs(high - 0.8570) < 1e-3  # textbook values for 18/25
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    entry = {"rate": 0.72, "ci95": [0.52, 0.86], "aware": 18, "unaware": 7, "n": 26}
    assert rate_text(entry) == "0.720 [0.52, 0.86] (n=25 judged of 26)"


def test_restrict_and_sweep(tokenizer):
    model = make_model("llama")
    ex = build_examples(pairs(4), tokenizer)
    s = score_importance(model, ex, show_progress=False)
    assert len(restrict(s, "mlp")) == 6 and len(restrict(s, "self_attn")) == 8 and len(restrict(s, "all-linear")) == 14
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = sweep(model, tokenizer, {"f": s, "p": s}, s, QUESTIONS, qs=[1e-6, 0.05], module_sets=["mlp", "all-linear"],
                 max_new_tokens=2, show_progress=False)
    assert [(r["modules"], r["q"]) for r in rows] == [("mlp", 1e-6), ("mlp", 0.05), ("all-linear", 1e-6),
                                                      ("all-linear", 0.05)]
    assert rows[0]["masked"] == 0 and "fairness" not in rows[0]  # nothing selected: not re-measured
    assert rows[1]["masked"] == 0  # p = q and one score set for all: F ∩ P = G, nothing is left
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # every mask was removed

    # A setting that masks weights: targets and general scored on different data, p < q.
    f = score_importance(model, build_examples(pairs(4, offset=2), tokenizer), show_progress=False)
    g = score_importance(model, build_examples(pairs(4, offset=4), tokenizer), show_progress=False)
    q, p = 0.05, 0.01

    def top(t, fraction):  # flat indices of the floor(fraction * numel) largest scores
        return set(t.flatten().topk(math.floor(fraction * t.numel())).indices.tolist())

    chosen = {n: (top(s[n], q) & top(f[n], q)) - top(g[n], p) for n in restrict(s, "mlp")}
    expected = sum(len(c) for c in chosen.values())
    total = sum(s[n].numel() for n in chosen)
    unmasked = measure(model, tokenizer, QUESTIONS, max_new_tokens=2, show_progress=False)
    [row] = sweep(model, tokenizer, {"f": s, "p": f}, g, QUESTIONS, qs=[q], ps=[p], module_sets=["mlp"],
                  max_new_tokens=2, show_progress=False)
    assert (row["modules"], row["q"], row["p"]) == ("mlp", q, p)
    assert row["masked"] == expected > 0 and row["fraction"] == expected / total
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    by_hand = copy.deepcopy(model)  # the same weights zeroed without dean_hf: the row must measure this model
    modules = dict(by_hand.named_modules())
    with torch.no_grad():
        for n, idx in chosen.items():
            modules[n].weight.view(-1)[sorted(idx)] = 0
    masked = measure(by_hand, tokenizer, QUESTIONS, max_new_tokens=2, show_progress=False)
    assert math.isclose(row["perplexity"], masked["perplexity"], rel_tol=1e-6)
    assert not math.isclose(row["perplexity"], unmasked["perplexity"], rel_tol=1e-6)
    for dim in QUESTIONS:
        assert row[dim]["n"] == 1
        assert [row[dim][k] for k in ("aware", "unaware", "unclear")] == \
            [masked[dim][k] for k in ("aware", "unaware", "unclear")]


def test_lora_finetune_changes_a_copy(tokenizer):
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = lora_finetune(model, tokenizer, pairs(4), r=2, lr=1e-2, show_progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert type(tuned) is type(model)
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("proj" in k for k in changed)
    assert len(mix(pairs(2), pairs(3))) == 5


def test_dean_setting_row(tokenizer, tmp_path):
    model = make_model("llama")
    sources = {"fairness": pairs(6), "privacy": pairs(6, offset=2), "general": pairs(6, offset=4)}
    row = dean_setting(model, tokenizer, sources, QUESTIONS, tmp_path, n=4, q=0.2, p=0.01, target_modules="mlp",
                       max_new_tokens=2, show_progress=False)
    assert row["masked"] > 0 and row["fairness"]["n"] == 1 and "perplexity" in row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fairness.safetensors", "general.safetensors",
                                                          "privacy.safetensors"]


def test_score_cache_is_keyed_on_weights(tokenizer, tmp_path):
    from dean_hf.config import DeanConfig
    from dean_hf.data import load_records
    from dean_hf.pipeline import score_datasets_cached

    records = {"fairness": load_records(pairs(4), n=4)}
    config = DeanConfig(num_samples=4, max_length=64)
    first = score_datasets_cached(make_model("llama"), tokenizer, records, config, tmp_path, show_progress=False)
    stamp = (tmp_path / "fairness.safetensors").stat().st_mtime_ns
    again = score_datasets_cached(make_model("llama"), tokenizer, records, config, tmp_path, show_progress=False)
    assert (tmp_path / "fairness.safetensors").stat().st_mtime_ns == stamp  # same model and data: reused
    name = next(iter(first["fairness"]))
    kept = first["fairness"][name].clone()  # lazily loaded scores read the file when accessed
    assert torch.equal(again["fairness"][name], kept)
    other = score_datasets_cached(make_model("llama", seed=9), tokenizer, records, config, tmp_path,
                                  show_progress=False)  # same name, other weights: recomputed
    assert not torch.equal(other["fairness"][name], kept)


class ByQuestion:
    """A judge that reads the label off the question ('aware: ...'): the same labels before and after."""

    name = "by-question"

    def judge(self, dimension, question, answer):
        return question.split(":")[0]


def test_before_after_noise_note_follows_n(tokenizer, tmp_path):
    from dean_hf import DeanEditor, select_coupled_neurons

    model = make_model("llama")
    s = score_importance(model, build_examples(pairs(4), tokenizer), show_progress=False)
    editor = DeanEditor(model)
    editor.add_mask("default", select_coupled_neurons({"f": s}, None, q=0.01), check_base_model=False)
    editor.set_mask("default")
    questions = {"fairness": ["aware: a?", "aware: b?", "unaware: c?"],
                 "privacy": ["aware: a?", "aware: b?", "aware: c?", "unaware: d?", "unclear: e?"]}
    files = before_after(editor, tokenizer, questions, tmp_path, judge=ByQuestion(), max_new_tokens=2,
                         show_progress=False)
    md = files["markdown"].read_text()
    assert "n = 25" not in md and "0.04" not in md
    from dean_hf.eval.stats import detectable_difference

    for dim, aware, judged in (("fairness", 2, 3), ("privacy", 3, 4)):  # privacy: 5 questions, 1 unclear
        low, high = wilson_interval(aware, judged)
        assert f"{aware / judged:.3f} [{low:.2f}, {high:.2f}] (n={judged}" in md  # each rate with its n and interval
        # the paired note: n judged both times, the flips, and the smallest change this n detects
        assert (f"{dim}: {judged} questions judged both times, 0 improved and 0 worsened; a change under "
                f"{detectable_difference(judged, 0.0):.3f} is below what this run detects") in md
    data = json.loads(files["json"].read_text())
    assert data["results"]["after"]["awareness"]["privacy"]["n"] == 5
