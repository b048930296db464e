"""`dean tune`: a reproducible, disjoint, stratified split; trials measured on development questions only; the
chosen setting confirmed once on the test questions."""

import json

import pytest

from conftest import make_model, pairs
from dean_hf import DeanError
from dean_hf.eval import CallableJudge
from dean_hf.experiments import tune as tune_module
from dean_hf.experiments.tune import Objective, Setting, TuneSpace, split_questions, tune

QUESTIONS = {"fairness": [f"fair {i}?" for i in range(40)], "privacy": [f"priv {i}?" for i in range(25)]}


def test_split_is_disjoint_reproducible_and_stratified():
    cats = {"fairness": ["a"] * 30 + ["b"] * 10, "privacy": ["x"] * 25}
    dev, test = split_questions(QUESTIONS, dev_size={"fairness": 8, "privacy": 5}, seed=3, categories=cats)
    again, _ = split_questions(QUESTIONS, dev_size={"fairness": 8, "privacy": 5}, seed=3, categories=cats)
    other, _ = split_questions(QUESTIONS, dev_size={"fairness": 8, "privacy": 5}, seed=4, categories=cats)
    assert dev == again and dev != other
    for dim in QUESTIONS:
        assert not set(dev[dim]) & set(test[dim]) and sorted(dev[dim] + test[dim]) == sorted(QUESTIONS[dim])
    assert (len(dev["fairness"]), len(dev["privacy"])) == (8, 5)
    in_b = [q for q in dev["fairness"] if int(q.split()[1].rstrip("?")) >= 30]
    assert len(in_b) == 2  # category b holds a quarter of the fairness questions, so a quarter of the dev part
    with pytest.raises(DeanError, match="dev_size"):
        split_questions(QUESTIONS, dev_size=40)


def test_objective_is_the_smaller_gain_within_the_perplexity_budget():
    objective = Objective(max_perplexity_increase=0.03)
    assert objective.value({"gains": {"fairness": 0.1, "privacy": -0.02}, "perplexity_change": 0.01}) == -0.02
    assert objective.value({"gains": {"fairness": 0.1, "privacy": 0.2}, "perplexity_change": 0.05}) == float("-inf")
    assert "+3%" in objective.describe()
    assert len(TuneSpace(qs=(0.1, 0.2), module_sets=("mlp",), variants=("zero", "scale"),
                         scales=(0.5, 0.25)).settings()) == 6


def test_search_never_reads_the_test_questions(tokenizer, tmp_path, monkeypatch):
    """Every trial is measured on development questions only; test questions appear once, after the search."""
    calls = []
    real = tune_module.measure

    def spy(model, tok, questions, **kwargs):
        calls.append({d: list(q) for d, q in questions.items()})
        return real(model, tok, questions, **kwargs)

    monkeypatch.setattr(tune_module, "measure", spy)
    judge = CallableJudge(lambda dim, q, a: int(q.split()[1].rstrip("?")) % 3 != 0, name="by question")
    sources = {"fairness": pairs(6), "privacy": pairs(6, offset=2), "general": pairs(6, offset=4)}
    space = TuneSpace(qs=(0.05, 0.2), module_sets=("mlp",), variants=("zero",), ns=(4,))
    data = tune(make_model("llama"), tokenizer, sources, QUESTIONS, tmp_path, space=space, dev_size=6, seed=1,
                judge=judge, max_new_tokens=2, objective=Objective(max_perplexity_increase=10.0),
                show_progress=False)
    dev = data["split"]["dev_questions"]
    test = {d: [q for q in QUESTIONS[d] if q not in dev[d]] for d in QUESTIONS}
    search, confirm = calls[:-2], calls[-2:]
    assert len(search) == 1 + len(data["trials"])  # the base model and each trial, on the development part
    for call in search:
        assert call == dev and not any(set(call[d]) & set(test[d]) for d in call)
    assert confirm == [test, test]  # base and chosen setting, once each, on the test part only
    assert len(data["trials"]) == 2 and all("objective" in r for r in data["trials"])
    assert data["confirmation"]["setting"] == data["chosen"]
    assert data["confirmation"]["verdict"] == "could not be told apart from the base model"  # labels by question
    report = json.loads((tmp_path / "tune.json").read_text())
    assert report["objective"].startswith("maximise min(gain") and (tmp_path / "trials.png").stat().st_size > 0
    assert "never saw a test question" in (tmp_path / "tune.md").read_text()


def test_missing_data_for_a_variant_is_found_before_any_work(tokenizer, tmp_path):
    with pytest.raises(DeanError, match="unsafe_fairness"):
        tune(make_model("llama"), tokenizer, {"fairness": pairs(4), "privacy": pairs(4), "general": pairs(4)},
             QUESTIONS, tmp_path, space=TuneSpace(variants=("contrastive",)), dev_size=5)
    assert Setting(variant="scale", scale=0.5).label().endswith("scale 0.5, snip, n=128")


def test_an_interrupted_search_is_resumed_without_measuring_again(tokenizer, tmp_path, monkeypatch):
    judge = CallableJudge(lambda dim, q, a: int(q.split()[1].rstrip("?")) % 3 != 0, name="by question")
    sources = {"fairness": pairs(6), "privacy": pairs(6, offset=2), "general": pairs(6, offset=4)}
    space = TuneSpace(qs=(0.05, 0.2), module_sets=("mlp",), variants=("zero",), ns=(4,))
    kwargs = dict(space=space, dev_size=6, seed=1, judge=judge, max_new_tokens=2, show_progress=False,
                  objective=Objective(max_perplexity_increase=10.0))
    first = tune(make_model("llama"), tokenizer, sources, QUESTIONS, tmp_path / "a", **kwargs)
    rows = [json.loads(line) for line in (tmp_path / "a" / "trials.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in first["trials"]]
    calls = []
    real = tune_module.measure
    monkeypatch.setattr(tune_module, "measure", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    resumed = tune(make_model("llama"), tokenizer, sources, QUESTIONS, tmp_path / "b", resume=rows, **kwargs)
    dev = first["split"]["dev_questions"]
    assert len(calls) == 2 and all(c != dev for c in calls)  # only the confirmation, on the test part
    assert resumed["chosen"] == first["chosen"] and resumed["resumed"] is True
    assert resumed["confirmation"]["fairness"]["paired"] == first["confirmation"]["fairness"]["paired"]
    other = dict(rows[0], label="self_attn, q=0.5, p=0.5, zero, snip, n=4")
    with pytest.raises(DeanError, match="not made with this grid"):
        tune(make_model("llama"), tokenizer, sources, QUESTIONS, tmp_path / "c", resume=[other], **kwargs)
    with pytest.raises(DeanError, match="earlier search"):  # an interrupted search's trials are never overwritten
        tune(make_model("llama"), tokenizer, sources, QUESTIONS, tmp_path / "a", **kwargs)
    calls.clear()  # a partial resume measures only the missing setting (and the base model) on the dev part
    partial = tune(make_model("llama"), tokenizer, sources, QUESTIONS, tmp_path / "d", resume=rows[:1], **kwargs)
    assert [c == dev for c in calls] == [True, True, False, False] and partial["chosen"] == first["chosen"]


@pytest.mark.parametrize("space,match", [
    (dict(module_sets=("mlpp",)), "module set"), (dict(scorers=("nope",)), "scorer"),
    (dict(variants=("scale",), scales=(2.0,)), "scale"), (dict(qs=(5.0,)), "q/p"), (dict(ns=(0,)), "ns"),
])
def test_a_bad_grid_is_refused_before_any_work(space, match):
    with pytest.raises(DeanError, match=match):
        TuneSpace(**space).settings()


def test_confirmation_report_shows_judge_corrected_rates(tmp_path):
    """The confirmation table carries the judge-corrected rates (with intervals) beside the judge's own rate."""
    paired = {"before": 0.7, "after": 0.75, "difference": 0.05, "ci95": [0.01, 0.09], "improved": 30, "worsened": 20,
              "p_adjusted": 0.04, "verdict": "higher"}
    corrected = [{"raw": 0.7, "corrected": 0.612, "ci95": [0.41, 0.83], "n": 200},
                 {"raw": 0.75, "corrected": 0.705, "ci95": [0.52, 0.9], "n": 200}]
    confirmation = {"setting": "s", "perplexity": [15.0, 15.2], "verdict": "helped",
                    "fairness": {"paired": paired, "corrected": corrected, "detectable": 0.03},
                    "privacy": {"paired": paired, "corrected": [None, None], "detectable": 0.05}}
    trial = {"label": "s", "masked": 3, "objective": 0.05}
    data = {"objective": "o", "split": {"seed": 0, "dev": {}, "test": {}}, "confirmation": confirmation}
    tune_module._write(tmp_path, data, [trial])
    text = (tmp_path / "tune.md").read_text()
    assert "judge-corrected base -> edited" in text
    assert "0.612 [0.41, 0.83] -> 0.705 [0.52, 0.90]" in text and "n/a -> n/a" in text
