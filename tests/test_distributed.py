"""Data-parallel scoring (2 CPU processes, gloo), device_map splits, and the low-memory path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_model, random_examples
from dean_hf import DeanError, ImportanceScores, score_importance


def max_rel(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max()).item() for n in b)


def test_two_process_scoring_equals_single_process(tmp_path):
    out = tmp_path / "dist.safetensors"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29533", str(Path(__file__).parent / "dist_score.py"), str(out),
                           str(tmp_path / "cache")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    distributed = ImportanceScores.load(out)
    single = score_importance(make_model("llama"), random_examples(7), batch_size=2, show_progress=False)
    assert max_rel(distributed, single) < 1e-5
    assert distributed.metadata["num_tokens"] == single.metadata["num_tokens"]
    assert distributed.metadata["data_fingerprint"] == single.metadata["data_fingerprint"]
    # The cached pipeline: rank 0 wrote both files once, rank 1 none; the second run reused them on both ranks.
    assert (tmp_path / "cache" / "rank0.txt").read_text() == "2 2"
    assert (tmp_path / "cache" / "rank1.txt").read_text() == "0 2"
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.safetensors")) == ["general.safetensors",
                                                                                 "privacy.safetensors"]


def test_distributed_true_without_process_group():
    with pytest.raises(DeanError, match="torchrun"):
        score_importance(make_model("llama"), random_examples(1), distributed=True, show_progress=False)


def test_modules_per_pass_equals_one_pass():
    model = make_model("gpt2")
    examples = random_examples(4)
    one = score_importance(model, examples, batch_size=2, show_progress=False)
    grouped = score_importance(model, examples, batch_size=2, modules_per_pass=3, show_progress=False)
    assert list(grouped) == list(one) and max_rel(grouped, one) < 1e-6
    with pytest.raises(DeanError, match="modules_per_pass"):
        score_importance(model, examples, modules_per_pass=0)


def test_concurrent_runs_on_one_cache_folder_score_once(tmp_path, monkeypatch, tokenizer):
    """Two runs on the same --out folder: the file lock makes the second wait and reuse the first one's scores."""
    import threading
    import time

    import dean_hf.pipeline as pipeline
    from conftest import pairs
    from dean_hf import DeanConfig

    real, calls = pipeline.score_importance, []

    def slow_score(*args, **kwargs):
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # both runs are inside the cache step together
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "score_importance", slow_score)
    config = DeanConfig(num_samples=4, max_length=64, keep=1.0)
    model = make_model("llama")
    results = {}

    def run(label):
        reused = []
        pipeline.score_datasets_cached(model, tokenizer, {"privacy": pairs(4)}, config, tmp_path,
                                       show_progress=False, reused=reused)
        results[label] = reused

    threads = [threading.Thread(target=run, args=(label,), name=label) for label in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(len(r) for r in results.values()) == [0, 1]
