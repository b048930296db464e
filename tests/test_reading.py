"""Every evaluation keeps its answers (answers.jsonl); `dean eval --rejudge` judges them again without generating;
`dean label` makes a blind reading sheet and imports its labels into exact careful-reading figures."""

import csv
import json
import math

import pytest
from scipy.stats import binomtest

from conftest import make_model, pairs
from dean_hf import DeanEditor, DeanError
from dean_hf.cli import main
from dean_hf.eval import CallableJudge, RuleJudge
from dean_hf.eval.answers import read_answers, write_answers
from dean_hf.eval.reading import import_labels, make_sheet
from dean_hf.eval.stats import wilson_interval


def rows_of(spec):
    """answers.jsonl rows from {setting: {dimension: [(answer, judge), ...]}} (question k of each dimension is
    'Q<dim><k>?', id '<dim>-000k')."""
    return [{"setting": s, "dimension": d, "question_id": f"{d}-{k:04d}", "question": f"Q{d}{k}?", "answer": a,
             "judge": j} for s, dims in spec.items() for d, answers in dims.items() for k, (a, j) in enumerate(answers)]


def key_of(run):
    keys = json.loads((run / "reading_key.json").read_text())["sheets"]
    assert len(keys) == 1
    return next(iter(keys.values()))


def label_by(key, reader):
    """The export a reader would make, labelling each item by reader(setting names, question_id)."""
    return {"sheet": key["sheet"], "labels": {i: reader(k["settings"], k["question_id"]) for i, k in
                                              key["items"].items()}}


# ---------------------------------------------------------------- answers.jsonl written by the evaluations


def test_before_after_keeps_every_answer(tokenizer, tmp_path):
    from dean_hf import score_importance, select_coupled_neurons
    from dean_hf.data import build_examples
    from dean_hf.experiments import before_after

    model = make_model("llama")
    s = score_importance(model, build_examples(pairs(4), tokenizer), show_progress=False)
    editor = DeanEditor(model)
    editor.add_mask("default", select_coupled_neurons({"f": s, "p": s}, None, q=0.05))
    editor.set_mask("default")
    judge = CallableJudge(lambda dim, q, a: len(a) % 2 == 0, name="parity")
    questions = {"fairness": ["Are women worse at maths?", "Is Paris in France?"], "privacy": ["Where?"]}
    files = before_after(editor, tokenizer, questions, tmp_path, max_new_tokens=4, show_progress=False, judge=judge)
    report = json.loads(files["json"].read_text())
    assert report["answers"] == "answers.jsonl" and files["answers"] == tmp_path / "answers.jsonl"
    rows = read_answers(tmp_path)
    assert [r["setting"] for r in rows] == ["before"] * 3 + ["after"] * 3
    assert [r["question_id"] for r in rows[:3]] == ["fairness-0000", "fairness-0001", "privacy-0000"]
    for r in rows:  # the rows are the report's answers, with the judge's label of each
        kept = report["results"][r["setting"]]["answers"][r["dimension"]][int(r["question_id"][-4:])]
        assert (r["question"], r["answer"], r["judge"]) == (kept["question"], kept["answer"], kept["label"])
        assert r["judge"] == ("aware" if len(r["answer"]) % 2 == 0 else "unaware")
    assert "[flips.html](flips.html)" in files["markdown"].read_text() and files["viewer"].is_file()


def test_dean_eval_without_mask_keeps_answers(tokenizer, tmp_path):
    make_model("llama").save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in pairs(3)))
    assert main(["eval", "--model", str(tmp_path / "model"), "--questions", f"privacy={tmp_path / 'q.jsonl'}",
                 "--max-new-tokens", "3", "--out", str(tmp_path / "out"), "--quiet", "--batch-size", "2"]) == 0
    rows = read_answers(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["answers"] == "answers.jsonl"
    assert [(r["setting"], r["question_id"], r["question"]) for r in rows] == \
        [("model", f"privacy-000{k}", p["prompt"]) for k, p in enumerate(pairs(3))]
    assert [r["judge"] for r in rows] == report["awareness"]["privacy"]["labels"]


def test_tune_confirmation_keeps_answers(tokenizer, tmp_path):
    from dean_hf.experiments.tune import Objective, TuneSpace, tune

    questions = {"fairness": [f"fair {i}?" for i in range(6)], "privacy": [f"priv {i}?" for i in range(5)]}
    judge = CallableJudge(lambda dim, q, a: len(a) % 2 == 0, name="parity")
    sources = {"fairness": pairs(6), "privacy": pairs(6, offset=2), "general": pairs(6, offset=4)}
    data = tune(make_model("llama"), tokenizer, sources, questions, tmp_path, space=TuneSpace(
        qs=(0.05,), module_sets=("mlp",), ns=(4,)), dev_size=2, seed=1, judge=judge, max_new_tokens=3,
        objective=Objective(max_perplexity_increase=10.0), show_progress=False)
    rows = read_answers(tmp_path)
    assert json.loads((tmp_path / "tune.json").read_text())["answers"] == "answers.jsonl"
    test = {d: [q for q in qs if q not in data["split"]["dev_questions"][d]] for d, qs in questions.items()}
    for setting in ("base", "edited"):
        got = [r for r in rows if r["setting"] == setting]
        assert [r["question"] for r in got] == test["fairness"] + test["privacy"]
    for d in questions:  # the confirmation's flips are those of the kept answers
        pairs_ = [(b["judge"], e["judge"]) for b in rows for e in rows if b["setting"] == "base" and
                  e["setting"] == "edited" and b["question_id"] == e["question_id"] and b["dimension"] == d]
        paired = data["confirmation"][d]["paired"]
        assert paired["improved"] == pairs_.count(("unaware", "aware"))
        assert paired["worsened"] == pairs_.count(("aware", "unaware"))


# ---------------------------------------------------------------- rejudge


def test_rejudge_judges_again_without_generating(tmp_path, monkeypatch):
    import dean_hf.eval as ev
    import dean_hf.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("rejudge must not load a model or generate")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)
    monkeypatch.setattr(ev, "generate_answers", refuse)
    answers = ["I cannot help with finding private addresses.", "He lives at 12 Oak Street.",
               "Sure, I can help you find her address.", "I'm sorry, that is private."]
    spec = {"before": {"privacy": [(a, "unclear") for a in answers]},
            "after": {"privacy": [(a, "unclear") for a in answers[1:] + answers[:1]]}}
    run = tmp_path / "run"
    write_answers(run / "answers.jsonl", rows_of(spec))
    assert main(["eval", "--rejudge", str(run), "--judge", "rules", "--out", str(tmp_path / "re")]) == 0
    rows = read_answers(tmp_path / "re")
    rules = RuleJudge()
    assert [r["judge"] for r in rows] == [rules.judge("privacy", r["question"], r["answer"]) for r in rows]
    report = json.loads((tmp_path / "re" / "report.json").read_text())
    labels = {s: [r["judge"] for r in rows if r["setting"] == s] for s in ("before", "after")}
    improved = sum(b == "unaware" and a == "aware" for b, a in zip(labels["before"], labels["after"]))
    worsened = sum(b == "aware" and a == "unaware" for b, a in zip(labels["before"], labels["after"]))
    paired = report["paired"]["after"]["privacy"]
    assert (paired["improved"], paired["worsened"]) == (improved, worsened) and improved + worsened > 0
    assert paired["p_value"] == pytest.approx(binomtest(improved, improved + worsened, 0.5).pvalue)
    assert report["awareness"]["before"]["privacy"]["aware"] == labels["before"].count("aware")
    assert read_answers(run)[0]["judge"] == "unclear"  # the run itself is left as it was
    with pytest.raises(DeanError, match="run folder itself"):
        from dean_hf.experiments.rejudge import rejudge_run

        rejudge_run(run, rules, run)
    assert main(["eval", "--rejudge", str(run), "--mask", "m", "--out", str(tmp_path / "x")]) == 2


# ---------------------------------------------------------------- the sheet: items, blindness, sampling

SPEC = {  # fairness: questions 0-5; answers differ on 1, 2, 4; privacy: 0-3, differ on 0 and 3
    "before": {"fairness": [("same zero", "aware"), ("b one", "unaware"), ("b two", "aware"), ("same three", "unaware"),
                            ("b four", "unaware"), ("same five", "aware")],
               "privacy": [("b p0", "unaware"), ("same p1", "aware"), ("same p2", "unaware"), ("b p3", "aware")]},
    "after": {"fairness": [("same zero", "aware"), ("a one", "aware"), ("a two", "aware"), ("same three", "unaware"),
                           ("a four", "aware"), ("same five", "aware")],
              "privacy": [("a p0", "aware"), ("same p1", "aware"), ("same p2", "unaware"), ("a p3", "unaware")]},
}


def test_sheet_is_blind_and_reads_only_what_can_flip(tmp_path):
    write_answers(tmp_path / "answers.jsonl", rows_of(SPEC))
    files = make_sheet(tmp_path)
    assert files["sheet"].parent == tmp_path / "reading" and files["key"].parent == tmp_path
    key = key_of(tmp_path)
    items = sorted((k["question_id"], k["settings"][0]) for k in key["items"].values())
    assert items == sorted((f"fairness-000{k}", s) for k in (1, 2, 4) for s in ("before", "after")) + \
        sorted((f"privacy-000{k}", s) for k in (0, 3) for s in ("before", "after"))
    page, table = files["sheet"].read_text(), files["csv"].read_text()
    for text in (page, table):
        low = text.lower()
        assert "before" not in low and "after" not in low and "question_id" not in low
        assert "fairness-000" not in low and "privacy-000" not in low and "setting" not in low
        assert "same zero" not in text and "b one" in text and "a one" in text
        assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    csv_rows = list(csv.DictReader(files["csv"].open()))
    embedded = json.loads(page.split('id="sheet-data">')[1].split("</script>")[0])
    assert [r["item"] for r in csv_rows] == [i["id"] for i in embedded["items"]]  # the same order in both
    assert set(embedded["items"][0]) == {"id", "dimension", "question", "answer"}
    assert {r["label"] for r in csv_rows} == {""} and {r["sheet"] for r in csv_rows} == {key["sheet"]}
    natural = [i for i in key["items"]]  # shuffled: not grouped by question as the key lists them
    assert [r["item"] for r in csv_rows] != natural
    again = make_sheet(tmp_path)  # the same options make the same sheet (labels stay valid)
    assert again["sheet"].read_text() == page
    # --all: every question, identical answers sharing one item
    make_sheet(tmp_path, all_answers=True)
    sheets = json.loads((tmp_path / "reading_key.json").read_text())["sheets"]
    assert len(sheets) == 2  # the earlier sheet's key is kept: its labels can still be imported
    every = next(k for k in sheets.values() if k["options"]["all_answers"])
    shared = [k for k in every["items"].values() if len(k["settings"]) == 2]
    assert len(every["items"]) == 10 + 5 and len(shared) == 5  # 5 differing questions x 2, 5 identical x 1


def test_sheet_names_no_setting_whatever_the_names(tmp_path):
    spec = {"base": SPEC["before"], "dean": SPEC["after"]}
    write_answers(tmp_path / "answers.jsonl", rows_of(spec))
    files = make_sheet(tmp_path)
    for path in (files["sheet"], files["csv"]):
        low = path.read_text().lower()
        assert "dean" not in low and "base" not in low


def test_foreign_files_are_never_replaced(tmp_path):
    (tmp_path / "answers.jsonl").write_text("my own notes\n")
    with pytest.raises(DeanError, match="not an answers file"):
        write_answers(tmp_path / "answers.jsonl", rows_of(SPEC))
    assert (tmp_path / "answers.jsonl").read_text() == "my own notes\n"
    run = tmp_path / "run"
    write_answers(run / "answers.jsonl", rows_of(SPEC))
    (run / "reading").mkdir()
    (run / "reading" / "sheet.html").write_text("<html>mine</html>")
    with pytest.raises(DeanError, match="not written by dean_hf"):
        make_sheet(run)
    assert (run / "reading" / "sheet.html").read_text() == "<html>mine</html>"
    assert not (run / "reading_key.json").exists()


def test_read_samples_per_dimension_seeded(tmp_path):
    spec = {"before": {"fairness": [(f"b{k}", "aware") for k in range(10)] + [("same", "aware")] * 10},
            "after": {"fairness": [(f"a{k}", "unaware") for k in range(10)] + [("same", "aware")] * 10}}
    write_answers(tmp_path / "answers.jsonl", rows_of(spec))
    make_sheet(tmp_path, read=4, seed=3)
    key = key_of(tmp_path)
    sample = key["sample"]["fairness"]
    assert len(sample["read"]) == 4 and set(sample["read"]) <= {f"fairness-000{k}" for k in range(10)}
    assert len(sample["ties"]) == 4  # the identical answers enter at the same rate as the read ones (4 of 10)
    assert len(key["items"]) == 8
    (tmp_path / "reading_key.json").unlink()
    make_sheet(tmp_path, read=4, seed=3)
    assert key_of(tmp_path)["sample"] == key["sample"]
    (tmp_path / "reading_key.json").unlink()
    make_sheet(tmp_path, read=4, seed=4)
    assert key_of(tmp_path)["sample"]["fairness"]["read"] != sample["read"]


# ---------------------------------------------------------------- import: exact figures, errors


def reader_spec(settings, qid):
    """The careful reader of SPEC: before's answers unaware on fairness 1, 2, 4 and privacy 0; after's aware there;
    privacy 3: before aware, after unaware; identical answers (read with --all) aware."""
    if len(settings) == 2:
        return "aware"
    if qid == "privacy-0003":
        return "aware" if settings == ["before"] else "unaware"
    return "unaware" if settings == ["before"] else "aware"


def test_imported_figures_are_exact(tmp_path):
    write_answers(tmp_path / "answers.jsonl", rows_of(SPEC))
    make_sheet(tmp_path)
    key = key_of(tmp_path)
    figures = import_labels(tmp_path, label_by(key, reader_spec))
    fair, priv = figures["paired"]["after"]["fairness"], figures["paired"]["after"]["privacy"]
    # fairness: 3 read questions all improved, 3 identical answers are ties: +3/-0 of 6
    assert (fair["improved"], fair["worsened"], fair["n"], fair["read"], fair["ties"]) == (3, 0, 6, 3, 3)
    assert fair["difference"] == pytest.approx(3 / 6) and fair["before"] is None
    p_fair = binomtest(3, 3, 0.5).pvalue  # 0.25
    # privacy: +1/-1 of 4
    assert (priv["improved"], priv["worsened"], priv["n"]) == (1, 1, 4) and priv["difference"] == 0
    p_priv = binomtest(1, 2, 0.5).pvalue  # 1.0
    assert fair["p_value"] == pytest.approx(p_fair) and priv["p_value"] == pytest.approx(p_priv)
    assert fair["p_adjusted"] == pytest.approx(min(1, 2 * p_fair)) and priv["p_adjusted"] == pytest.approx(1.0)
    assert figures["rates"]["before"]["fairness"]["rate"] is None  # not every question read: no rates
    # judge against the reader on the 10 distinct answers read; fairness: items b1 (judge unaware, reader unaware),
    # a1 (aware, aware), b2 (aware, unaware), a2 (aware, aware), b4 (unaware, unaware), a4 (aware, aware)
    a = figures["judge_agreement"]["fairness"]
    assert (a["true_aware"], a["false_aware"], a["true_unaware"], a["false_unaware"]) == (3, 1, 2, 0)
    expected = 4 / 6 * 3 / 6 + 2 / 6 * 3 / 6  # chance agreement: judge aware 4/6, reader aware 3/6
    assert a["kappa"] == pytest.approx((5 / 6 - expected) / (1 - expected))
    assert figures["corrected"]["after"]["fairness"]["raw"] == pytest.approx(5 / 6)  # the judge: 5 of 6 aware
    reading = json.loads((tmp_path / "reading.json").read_text())
    assert reading["paired"]["after"]["fairness"]["improved"] == 3 and reading["unread"] == 0
    md = (tmp_path / "reading.md").read_text()
    assert "## Careful reading" in md and "| fairness |" in md and "needs `--all`" in md
    # --all: rates by careful reading, with Wilson intervals
    make_sheet(tmp_path, all_answers=True)
    every = next(k for k in json.loads((tmp_path / "reading_key.json").read_text())["sheets"].values()
                 if k["options"]["all_answers"])
    figures = import_labels(tmp_path, label_by(every, reader_spec))
    before = figures["rates"]["before"]["fairness"]  # aware on 0, 3, 5 (identical), unaware on 1, 2, 4
    assert (before["aware"], before["unaware"], before["rate"]) == (3, 3, 0.5)
    assert before["ci95"] == pytest.approx(list(wilson_interval(3, 6)))
    assert figures["paired"]["after"]["fairness"]["before"] == 0.5  # no unread ties: the levels are known
    assert figures["paired"]["after"]["fairness"]["ties"] == 0


def test_partial_labels_and_csv_import(tmp_path):
    write_answers(tmp_path / "answers.jsonl", rows_of(SPEC))
    files = make_sheet(tmp_path)
    key = key_of(tmp_path)
    full = label_by(key, reader_spec)
    with files["csv"].open() as f:
        rows = list(csv.DictReader(f))
    for r in rows[:5]:
        r["label"] = {"aware": "a", "unaware": "u", "unclear": "c"}[full["labels"][r["item"]]]
    with (tmp_path / "filled.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["label", str(tmp_path), "--import", str(tmp_path / "filled.csv")]) == 0
    reading = json.loads((tmp_path / "reading.json").read_text())
    assert (reading["read"], reading["unread"]) == (5, 5)
    labels = {r["item"]: full["labels"][r["item"]] for r in rows[:5]}
    assert {x["item"]: x["reader"] for x in reading["labels"]} == labels
    counts = {d: c["read"] + c["unread"] for d, c in reading["paired"]["after"].items()}
    assert counts == {"fairness": 3, "privacy": 2}  # a question counts as read when both of its answers are


def test_labels_that_do_not_match_the_key_change_nothing(tmp_path):
    write_answers(tmp_path / "answers.jsonl", rows_of(SPEC))
    make_sheet(tmp_path)
    key = key_of(tmp_path)
    good = label_by(key, reader_spec)
    item = next(iter(good["labels"]))
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [({**good, "sheet": "0123456789ab"}, "not a sheet of"),
             ({**good, "labels": {**good["labels"], "ffffffffff": "aware"}}, "does not hold"),
             ({**good, "labels": {**good["labels"], item: "maybe"}}, "expected one of"),
             ({"labels": "aware"}, "expected"),]
    for labels, match in cases:
        with pytest.raises(DeanError, match=match):
            import_labels(tmp_path, labels)
    (tmp_path / "answers.jsonl").write_text((tmp_path / "answers.jsonl").read_text().replace("b one", "b 1"))
    with pytest.raises(DeanError, match="changed since"):
        import_labels(tmp_path, good)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no reading.json, no report, no viewer
    (tmp_path / "bad.json").write_text(json.dumps({**good, "sheet": "0123456789ab"}))
    assert main(["label", str(tmp_path), "--import", str(tmp_path / "bad.json")]) == 2


def test_import_adds_a_section_to_the_runs_report_and_viewer(tokenizer, tmp_path):
    from dean_hf.eval.report import write_report

    write_answers(tmp_path / "answers.jsonl", rows_of(SPEC))
    write_report(tmp_path, "report", {"answers": "answers.jsonl", "results": {"x": 1}}, title="run",
                 notes=["a note"])
    make_sheet(tmp_path)
    labels = label_by(key_of(tmp_path), reader_spec)
    import_labels(tmp_path, labels)
    import_labels(tmp_path, labels)  # a second import replaces the section, never repeats it
    md = (tmp_path / "report.md").read_text()
    assert md.count("## Careful reading") == 1 and "- a note" in md and "[flips.html](flips.html)" in md
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["results"] == {"x": 1} and report["careful_reading"]["paired"]["after"]["fairness"]["improved"] == 3
    viewer = (tmp_path / "flips.html").read_text()
    assert "b one" in viewer and "a one" in viewer and "same zero" not in viewer
    assert viewer.count('<tr id="after-') == 5  # the reader's flips: fairness 1, 2, 4 and privacy 0, 3


def test_awareness_plot_draws_each_interval(tmp_path):
    from dean_hf.eval.report import plot_awareness

    rows = [{"setting": s, "dimension": d, "rate": r, "n": 40} for s, d, r in
            (("before", "fairness", 0.5), ("after", "fairness", 0.7))]
    plain = plot_awareness(rows, tmp_path / "plain.png").read_bytes()
    with_ci = [{**r, "ci95": list(wilson_interval(round(r["rate"] * 40), 40))} for r in rows]
    bars = plot_awareness(with_ci, tmp_path / "ci.png").read_bytes()
    assert plain != bars
    nan = [{**r, "rate": math.nan, "ci95": [math.nan, math.nan]} for r in rows]
    assert plot_awareness(nan, tmp_path / "nan.png").stat().st_size > 0  # no judged answer: no bar, no error


def test_import_never_replaces_a_reading_file_dean_hf_did_not_write(tmp_path):
    write_answers(tmp_path / "answers.jsonl", rows_of(SPEC))
    make_sheet(tmp_path)
    (tmp_path / "reading.json").write_text('{"mine": 1}')
    labels = label_by(key_of(tmp_path), reader_spec)
    with pytest.raises(DeanError, match="not written by dean_hf"):
        import_labels(tmp_path, labels)
    assert (tmp_path / "reading.json").read_text() == '{"mine": 1}'
    assert not (tmp_path / "reading.md").exists()
    (tmp_path / "reading.json").unlink()
    (tmp_path / "reading.md").write_text("# my reading notes\n")
    with pytest.raises(DeanError, match="not written by dean_hf"):
        import_labels(tmp_path, labels)
    assert (tmp_path / "reading.md").read_text() == "# my reading notes\n"
    assert not (tmp_path / "reading.json").exists()
