"""Helper run by tests/test_distributed.py under torchrun: score a tiny model data-parallel, rank 0 saves."""

import sys

import torch.distributed as dist

from conftest import make_model, random_examples
from dean_hf import score_importance

if __name__ == "__main__":
    dist.init_process_group("gloo")
    scores = score_importance(make_model("llama"), random_examples(7), batch_size=2, show_progress=False)
    if dist.get_rank() == 0:
        scores.save(sys.argv[1])
    dist.barrier()  # every rank waits for rank 0's file before the group is torn down
    if len(sys.argv) > 2:  # the cached pipeline: rank 0 alone writes; each rank records its writes
        from pathlib import Path

        from conftest import pairs, tokenizer_for_scripts
        from dean_hf import DeanConfig, ImportanceScores
        from dean_hf.pipeline import score_datasets_cached

        saves = []
        real_save = ImportanceScores.save
        ImportanceScores.save = lambda self, path: saves.append(str(path)) or real_save(self, path)
        records = {"privacy": pairs(6), "general": pairs(6, offset=4)}
        config = DeanConfig(num_samples=6, max_length=64, keep=1.0)
        out = Path(sys.argv[2])
        for _ in range(2):  # the second run reuses the cache on every rank
            reused = []
            got = score_datasets_cached(make_model("llama"), tokenizer_for_scripts(), records, config, out,
                                        show_progress=False, reused=reused)
        (out / f"rank{dist.get_rank()}.txt").write_text(f"{len(saves)} {len(reused)}")
    dist.barrier()
    dist.destroy_process_group()
