"""Length-bucketed batches of an in-memory dataset, for one process or every DDP rank alike.

    sampler = LengthBucketSampler(rows, batch_size=16, num_replicas=2, rank=0, seed=0, chunk_batches=50)

Streamed rows get the same buckets from `training.stream` (a chunk of batches sorted by length).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["LengthBucketSampler"]


class LengthBucketSampler(DistributedSampler):
    """Each epoch: a seeded shuffle, then every run of `chunk_batches` global batches
    (`batch_size × num_replicas` rows) sorted by `dataset.length_keys()` and cut into global
    batches, whose order is shuffled again; worker `rank` takes every `num_replicas`-th row of each.

    So a batch pads to rows of about its own length (a demo batch of 16 random rows is padded
    ~13% past its real tokens, a bucketed one ~0.4%), and every worker's step-i batch has about
    the same width, so no rank waits for a longer one at the all-reduce. Every row is seen once
    an epoch, as with `DistributedSampler`, whose padding to equal shares, `set_epoch` and `seed`
    this keeps (`prepare_data_loader` leaves a `DistributedSampler` in place).
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, chunk_batches: int = 50):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size, self.chunk_batches = batch_size, max(1, chunk_batches)
        self.keys = np.asarray(dataset.length_keys())

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.keys), generator=g).numpy()
        order = np.resize(order, self.total_size)  # repeats the first rows, as DistributedSampler pads
        global_batch = self.batch_size * self.num_replicas
        chunk = global_batch * self.chunk_batches
        batches = []
        for start in range(0, self.total_size, chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(self.keys[part], kind="stable")]
            batches.extend(part[i:i + global_batch] for i in range(0, len(part), global_batch))
        full = [b for b in batches if len(b) == global_batch]
        short = [b for b in batches if len(b) < global_batch]  # at most one: last, so batch edges stay aligned
        shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()] + short
        mine = [b[self.rank::self.num_replicas] for b in shuffled]
        return iter(np.concatenate(mine).tolist() if mine else [])
