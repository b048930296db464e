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
