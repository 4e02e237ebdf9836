"""LengthBucketSampler: every row once an epoch, batches of like lengths, workers in step."""

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from distillery.training.loop import LengthBucketSampler, collate, make_loader


class Rows(torch.utils.data.Dataset):
    """Row i has `lengths[i]` tokens (id i + 1 each), a stand-in with TokenizedRows' item shape."""

    def __init__(self, lengths):
        self.lengths = np.asarray(lengths)

    def __len__(self):
        return len(self.lengths)

    def length_keys(self):
        return self.lengths

    def __getitem__(self, i):
        return {"input_ids": [i + 1] * int(self.lengths[i]), "target": 0.0, "teacher_prob": 0.0, "click": 0.0, "pad_id": 0}


def _lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(5, 60, size=n)


def test_every_row_once_an_epoch_across_workers():
    rows = Rows(_lengths(1000))
    seen = []
    for rank in range(2):
        s = LengthBucketSampler(rows, batch_size=16, num_replicas=2, rank=rank, seed=3, chunk_batches=5)
        got = list(s)
        assert len(got) == len(s) == 500
        seen += got
    assert sorted(seen) == list(range(1000))


def test_uneven_rows_pad_like_distributed_sampler():
    rows = Rows(_lengths(1001))
    shares = [list(LengthBucketSampler(rows, 16, 2, r, seed=0, chunk_batches=4)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 501  # ceil(1001 / 2), one row served twice
    assert set(shares[0]) | set(shares[1]) == set(range(1001))
    assert isinstance(LengthBucketSampler(rows, 16), DistributedSampler)  # Ray's prepare_data_loader keeps it


def test_batches_pad_less_than_a_plain_shuffle_and_ranks_match_widths():
    lengths = _lengths(3200, seed=1)
    rows = Rows(lengths)
    loaders = [make_loader(rows, 16, shuffle=True, seed=0, bucket_batches=50, world_size=2, rank=r) for r in range(2)]
    widths = [[b["input_ids"].shape[1] for b in loader] for loader in loaders]
    assert len(widths[0]) == len(widths[1]) == 100
    bucketed = sum(16 * max(a, b) for a, b in zip(*widths))  # a DDP step waits for the wider rank
    plain = make_loader(rows, 32, shuffle=True, seed=0)
    unbucketed = sum(b["input_ids"].shape[0] * b["input_ids"].shape[1] for b in plain)
    real = int(lengths.sum())
    assert bucketed < 1.02 * real < unbucketed  # lengths 5-59: a random batch of 32 pads to ~58
    assert max(abs(a - b) for a, b in zip(*widths)) <= 2


def test_order_is_seeded_and_changes_with_the_epoch():
    rows = Rows(_lengths(640))
    a, b = LengthBucketSampler(rows, 16, seed=7), LengthBucketSampler(rows, 16, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(list(a)) == sorted(first)
    assert list(LengthBucketSampler(rows, 16, seed=8)) != first


def test_only_the_last_batch_is_short():
    rows = Rows(_lengths(1000))
    loader = make_loader(rows, 16, shuffle=True, bucket_batches=3)
    sizes = [len(b["target"]) for b in loader]
    assert sizes[:-1] == [16] * (len(sizes) - 1) and sizes[-1] == 1000 % 16


def test_bucketing_off_or_without_length_keys_is_a_plain_shuffle():
    rows = Rows(_lengths(100))
    assert not isinstance(make_loader(rows, 16, shuffle=True, bucket_batches=0).sampler, LengthBucketSampler)
    assert not isinstance(make_loader(rows, 16, shuffle=False, bucket_batches=50).sampler, LengthBucketSampler)
    no_keys = torch.utils.data.TensorDataset(torch.arange(100))
    assert not isinstance(make_loader(no_keys, 16, shuffle=True, bucket_batches=50).sampler, LengthBucketSampler)


def test_two_tower_rows_sort_by_ad_then_request_tokens():
    from distillery.training.two_tower_student import TwoTowerRows

    rows = TwoTowerRows.__new__(TwoTowerRows)
    rows.ad_ids, rows.request_ids = [[1] * 5, [1] * 3, [1] * 5], [[1] * 2, [1] * 9, [1] * 1]
    keys = rows.length_keys()
    assert list(np.argsort(keys)) == [1, 2, 0]  # ad 3 first; ad 5 with request 1 before ad 5 with request 2
