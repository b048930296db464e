import json

import pytest

from conftest import pairs
from dean_hf import DeanError
from dean_hf.data import build_examples, load_records


def test_labels_mask_prompt_with_chat_template(tokenizer):
    record = {"prompt": "What is the capital of France?", "response": "Paris is the capital of France."}
    ex = build_examples([record], tokenizer)[0]
    prompt_text = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}], tokenize=False,
                                                add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    response = tokenizer.decode(ex["input_ids"][n_prompt:])
    assert response.startswith(record["response"]) and "<|im_end|>" in response
    assert tokenizer.decode(ex["input_ids"]).startswith("<|im_start|>user\n")


def test_raw_concatenation(tokenizer):
    record = {"prompt": "Write a haiku", "response": "Red leaves drift"}
    ex = build_examples([record], tokenizer, chat_template=False)[0]
    n_prompt = len(tokenizer(record["prompt"])["input_ids"])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["input_ids"][-1] == tokenizer.eos_token_id
    assert "<|im_start|>" not in tokenizer.decode(ex["input_ids"])


def test_truncation_counted_and_prompt_only_dropped(tokenizer):
    short = pairs(1)[0]
    limit = len(build_examples([short], tokenizer)[0]["input_ids"])
    long_prompt = {"prompt": "word " * 200, "response": "ok"}
    long_response = {"prompt": "hi", "response": "the capital " * 100}
    out = build_examples([long_prompt, long_response, short], tokenizer, max_length=limit)
    assert out.num_truncated == 2 and out.num_dropped == 1 and len(out) == 2
    assert [len(e["input_ids"]) for e in out] == [limit, limit]
    with pytest.raises(DeanError, match="max_length"):
        build_examples([long_prompt], tokenizer, max_length=limit)


def test_sources(tmp_path, tokenizer):
    import datasets

    rows = pairs(5)
    csv = tmp_path / "d.csv"
    datasets.Dataset.from_list(rows).to_csv(str(csv))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"q": r["prompt"], "a": r["response"]}) + "\n" for r in rows))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    for ds in (load_records(rows), load_records(str(csv)), load_records(jsonl, prompt_column="q", response_column="a"),
               load_records(saved), load_records(datasets.Dataset.from_list(rows)),
               load_records(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}))):
        assert ds.column_names == ["prompt", "response"] and ds[0] == rows[0]


def test_draw_n_with_seed():
    rows = pairs(8)
    a, b = load_records(rows, n=4, seed=3), load_records(rows, n=4, seed=3)
    assert a["prompt"] == b["prompt"] and len(a) == 4
    assert load_records(rows, n=8, seed=1)["prompt"] != rows and sorted(load_records(rows, n=8)["prompt"]) == \
        sorted(r["prompt"] for r in rows)


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt_column": "question"}, r"\['prompt', 'response'\]"), ({"n": 99}, "holds 8 rows"), ({"n": 0}, "n=0"),
])
def test_bad_requests(kwargs, match):
    with pytest.raises(DeanError, match=match):
        load_records(pairs(8), **kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(DeanError, match="does not exist"):
        load_records(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DeanError, match="empty"):
        load_records(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("prompt,response\n")
    with pytest.raises(DeanError, match="empty"):
        load_records(tmp_path / "header.csv")
    with pytest.raises(DeanError, match="non-empty string"):
        load_records([{"prompt": "a", "response": None}, {"prompt": "b", "response": "c"}])
    with pytest.raises(DeanError, match="non-empty string"):
        load_records([{"prompt": 3, "response": "x"}])
    with pytest.raises(DeanError, match="cannot load data"):
        load_records(42)


def test_tokenizer_without_chat_template_falls_back(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    ex = build_examples(pairs(1), plain)[0]
    assert "<|im_start|>" not in plain.decode(ex["input_ids"])


def test_reference_csv_loads(reference_data):
    ds = load_records(reference_data / "beaver_train330k_privacy_safe_1k.csv", n=8, seed=0)
    assert len(ds) == 8
    questions = load_records(reference_data / "salad_privacy.csv", prompt_column="questions", response_column=None)
    assert questions.column_names == ["prompt"] and len(questions) == 657


def test_embedded_names_load_like_their_files(tokenizer):
    from dean_hf.data import as_examples, embedded_names, resolve_source

    assert embedded_names() == ["eval_fairness", "eval_privacy", "fairness", "general", "privacy"]
    path = resolve_source("embedded:fairness")
    assert path.name == "fairness.jsonl" and path.is_file()
    assert resolve_source("fair.csv") == "fair.csv"
    assert load_records("embedded:fairness", n=4, seed=1)[:] == load_records(path, n=4, seed=1)[:]
    assert load_records("embedded:eval_privacy", response_column=None).column_names == ["prompt"]
    examples = as_examples("embedded:general", tokenizer, n=3, max_length=64)
    assert len(examples) == 3 and all(len(e["input_ids"]) <= 64 for e in examples)
    with pytest.raises(DeanError, match="embedded:fairness, embedded:general, embedded:privacy"):
        load_records("embedded:fairnes")


def test_as_examples_from_every_source(tmp_path, tokenizer):
    import datasets

    from dean_hf.data import as_examples

    rows = pairs(4)
    csv = tmp_path / "d.csv"
    datasets.Dataset.from_list(rows).to_csv(str(csv))
    expected = build_examples(rows, tokenizer, max_length=32)
    for source in (rows, csv, str(csv), datasets.Dataset.from_list(rows),
                   datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})):
        assert as_examples(source, tokenizer, max_length=32) == expected
    renamed = [{"q": r["prompt"], "a": r["response"]} for r in rows]
    assert as_examples(renamed, tokenizer, max_length=32, prompt_column="q", response_column="a") == expected
    assert len(as_examples(rows, tokenizer, n=2, seed=5)) == 2
    assert as_examples(expected, tokenizer) is expected  # already tokenized: unchanged
    tokenized = datasets.Dataset.from_list(list(expected))
    assert as_examples(tokenized, tokenizer) is tokenized
    with pytest.raises(DeanError, match="not a mix"):
        as_examples([expected[0], rows[0]], tokenizer)


@pytest.mark.parametrize("suffix,encoding,text", [
    (".csv", "cp1252", 'prompt,response\n"Caf\u00e9 or cr\u00e8me br\u00fbl\u00e9e?","Cr\u00e8me br\u00fbl\u00e9e."\n'),
    (".jsonl", "latin-1", '{"prompt": "Na\u00efve caf\u00e9?", "response": "Tr\u00e8s na\u00eff."}\n'),
    (".csv", "utf-16", "prompt,response\nWhat is \u00c4?,\u00c4 is a letter.\n"),
])
def test_non_utf8_file_is_one_clear_error(tmp_path, monkeypatch, suffix, encoding, text):
    import datasets

    path = tmp_path / f"data{suffix}"
    path.write_bytes(text.encode(encoding))
    offset = next(i for i, byte in enumerate(path.read_bytes()) if byte >= 0x80)  # the first non-ASCII byte

    def must_not_parse(*args, **kwargs):
        raise AssertionError("datasets parsed a file that is not UTF-8")

    monkeypatch.setattr(datasets, "load_dataset", must_not_parse)
    with pytest.raises(DeanError) as err:
        load_records(path)
    message = str(err.value)
    assert "data.csv" in message or "data.jsonl" in message
    assert "not UTF-8" in message and f"at offset {offset}" in message and "Re-save it as UTF-8" in message
    assert "appears to be" in message
    if encoding == "utf-16":
        assert "utf_16" in message and offset == 0
    monkeypatch.setitem(__import__("sys").modules, "charset_normalizer", None)  # not installed: offset only
    with pytest.raises(DeanError, match=f"could not be recognised.*at offset {offset}.*Re-save it as UTF-8"):
        load_records(path)


def test_quiet_switch_silences_datasets_bars(tmp_path, capfd):
    import datasets

    from dean_hf.logging import (disable_progress_bars, enable_progress_bars, progress_bars_enabled,
                                 show_progress)

    def fresh_csv(name):  # a new file each time: `datasets` cannot reuse a cached build
        path = tmp_path / f"{name}.csv"
        datasets.Dataset.from_list(pairs(3)).to_csv(str(path))
        capfd.readouterr()
        return path

    try:
        disable_progress_bars()
        assert not progress_bars_enabled() and not show_progress(True) and not show_progress(False)
        assert load_records(fresh_csv("off"))["prompt"] == [r["prompt"] for r in pairs(3)]
        assert capfd.readouterr().err == ""
        assert datasets.utils.are_progress_bars_disabled()
        from huggingface_hub.utils import are_progress_bars_disabled
        from transformers.utils.logging import is_progress_bar_enabled

        assert are_progress_bars_disabled() and not is_progress_bar_enabled()
    finally:
        enable_progress_bars()
    assert progress_bars_enabled() and show_progress(True) and not show_progress(False)
    state = datasets.utils.are_progress_bars_disabled()  # False unless HF_DATASETS_DISABLE_PROGRESS_BARS=1
    load_records(fresh_csv("local_off"), show_progress=False)  # one call silenced, the switch left as it was
    assert capfd.readouterr().err == ""
    assert datasets.utils.are_progress_bars_disabled() == state
    if not state:
        load_records(fresh_csv("on"))
        assert "Generating train split" in capfd.readouterr().err
