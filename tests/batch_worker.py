"""A batch whose rows draw random numbers from their own generator; run in-process or under torchrun
(tests/test_core_batch.py)."""

import sys

import pandas as pd
import torch

from sciar.batch import run_batch

ROWS = pd.DataFrame({"x": list(range(11)), "name": [f"r{i}" for i in range(11)]})


def row_fn(seed: int):
    def fn(row):
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(row["row_id"]))
        if row["x"] == 3:
            raise ValueError("row three is bad")
        return [{"draw": float(torch.rand(1, generator=g)), "k": k} for k in range(int(row["x"]) % 3 + 1)]

    return fn


if __name__ == "__main__":
    run_batch(ROWS, row_fn(int(sys.argv[2])), output=sys.argv[1], chunk_size=2, progress=False)
