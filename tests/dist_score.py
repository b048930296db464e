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
    dist.destroy_process_group()
