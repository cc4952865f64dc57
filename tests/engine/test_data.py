"""The training stream (positions, rank slices, per-item randomness) and unreadable items."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from tracer_cli.engine.data import (BadDataLog, BadItem, TrainStream, _SeededItems, eval_loader,
                                    item_seed)
from tracer_cli.errors import UsageError
from tracer_cli.sdk.contracts import SkippedItem


class Items(Dataset):
    """Item i: its index and a random draw (a stand-in for a random augmentation)."""

    def __init__(self, n: int, bad: dict[int, str] | None = None):
        self.n, self.bad = n, bad or {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.bad.get(i) == "skip":
            return SkippedItem(f"file{i}.jpg", "OSError: image file is truncated")
        if self.bad.get(i) == "raise":
            raise FileNotFoundError(f"file{i}.jpg vanished")
        return {"image": torch.rand(2), "label": i}


def _take(stream: TrainStream, n: int) -> list:
    batches = iter(stream)
    return [next(batches) for _ in range(n)]


@pytest.mark.numerics
def test_rank_slices_reassemble_the_single_process_batches():
    one = _take(TrainStream(Items(40), 8, seed=3), 7)  # crosses into the second epoch
    ranks = [_take(TrainStream(Items(40), 8, seed=3, rank=r, world_size=2), 7) for r in (0, 1)]
    for (single, _), (first, _), (second, _) in zip(one, *ranks):
        assert single["label"].tolist() == first["label"].tolist() + second["label"].tolist()
        # Per-item seeds: the same augmentation whichever process reads the item.
        assert torch.equal(single["image"], torch.cat([first["image"], second["image"]]))


def test_global_batch_must_split_evenly():
    with pytest.raises(UsageError, match="multiple of the number of processes"):
        TrainStream(Items(40), 8, seed=0, world_size=3)
    with pytest.raises(UsageError, match="fewer than one batch"):
        TrainStream(Items(4), 8, seed=0)


def test_position_replays_and_global_rng_is_untouched():
    stream = TrainStream(Items(24), 4, seed=1)
    reference = _take(stream, 9)
    resumed = TrainStream(Items(24), 4, seed=1)
    resumed.load_state_dict({"epoch": 1, "batch": 2})  # batch 8 of the run
    before = torch.get_rng_state()
    again = _take(resumed, 1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(again[0][0]["image"], reference[8][0]["image"])
    assert resumed.state_dict() == {"epoch": 1, "batch": 3}


def test_item_draws_are_those_of_the_item_seed_and_leave_cuda_generators_alone(monkeypatch):
    """An item reads under the CPU generator seeded with its item seed (the same draws as
    ``torch.manual_seed(item_seed)``), and never seeds the CUDA generators, which the block
    would not restore (and which cost a recorded traceback per item before CUDA starts)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    batch, _ = _take(TrainStream(Items(8), 4, seed=5), 1)[0]
    assert calls == []
    for image, index in zip(batch["image"], batch["label"].tolist()):
        expected = torch.Generator().manual_seed(item_seed(5, 0, index))
        assert torch.equal(image, torch.rand(2, generator=expected))


class ThreeDraws(Dataset):
    """Item i: one draw from each of torch, numpy and ``random`` (augmentations use all three)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        return {"draws": (torch.rand(1).item(), float(np.random.rand()), random.random()), "i": i}


def test_a_batched_fetch_reads_every_item_as_a_single_fetch_does():
    """``__getitems__`` (one save/restore of the generators per batch) gives each item exactly
    the draws it gets when fetched alone, reseeds per item (not once per batch), and leaves all
    three generators as they were."""
    items = _SeededItems(ThreeDraws(), seed=4)
    keys = [(0, 3), (0, 3), (1, 3), (0, 9), (2, 0)]
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    batched = items.__getitems__(keys)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert batched == [items[key] for key in keys]
    assert batched[0] == batched[1] and batched[0] != batched[2]  # keyed by (epoch, index)


def test_item_seeds_differ_by_seed_epoch_and_index():
    seeds = {item_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2**63 for s in seeds)


def test_unreadable_items_are_dropped_and_named():
    stream = TrainStream(Items(8, {1: "skip", 5: "raise"}), 8, seed=0)
    (batch, bad), = _take(stream, 1)
    assert sorted(batch["label"].tolist()) == [0, 2, 3, 4, 6, 7]
    by_index = {b.index: b for b in bad}
    assert by_index[1] == BadItem(1, "file1.jpg", "OSError: image file is truncated")
    assert "FileNotFoundError: file5.jpg vanished" in by_index[5].reason


def test_a_batch_with_nothing_readable_is_none():
    (batch, bad), = _take(TrainStream(Items(2, {0: "skip", 1: "skip"}), 2, seed=0), 1)
    assert batch is None and len(bad) == 2


def test_eval_loader_skips_and_remembers_the_last_pass():
    loader = eval_loader(Items(5, {0: "skip", 1: "skip", 4: "raise"}), batch_size=2)
    labels = [batch["label"].tolist() for batch in loader]
    assert labels == [[2, 3]]  # the all-bad first batch is left out
    assert [b.index for b in loader.bad] == [0, 1, 4]
    list(loader)
    assert len(loader.bad) == 3  # per pass, not accumulated


def test_bad_data_log_counts_distinct_items_against_the_limit():
    log = BadDataLog(dataset_size=200, max_fraction=0.01)
    item = BadItem(7, "a.jpg", "OSError: truncated")
    log.add([item, item, BadItem(9, "b.jpg", "x")])
    assert (log.skipped, len(log.items), log.exceeded()) == (3, 2, False)  # 2 <= 1% of 200
    assert [i.index for i in log.unreported()] == [7, 9] and log.unreported() == []
    log.add([BadItem(11, "c.jpg", "x")])
    assert log.exceeded()
    assert "3 of 200 training items (1.50%)" in log.message()
    assert "data.max_bad_fraction = 0.01" in log.message() and "a.jpg" in log.message()
    again = BadDataLog(200, 0.01)
    again.load_state_dict(log.state_dict())
    assert again.summary() == log.summary() and again.reported == log.reported
    assert BadDataLog(10, 0.0).exceeded() is False


class Captioned(Dataset):
    """Caption / VQA style items: list-valued fields of different lengths per item."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return {"image": torch.full((2,), float(i)), "label": i, "caption": f"c{i}",
                "captions": [f"c{i}.{j}" for j in range(i + 1)], "answers": (f"a{i}",)}


def test_list_fields_stay_one_list_per_item():
    from tracer_cli.engine.distributed import merge_meta

    [batch] = list(eval_loader(Captioned(), 4))
    assert list(batch) == ["image", "label", "caption", "captions", "answers"]  # item order
    assert batch["image"].shape == (4, 2) and batch["label"].tolist() == [0, 1, 2, 3]
    assert batch["caption"] == ["c0", "c1", "c2", "c3"]
    assert batch["captions"] == [["c0.0"], ["c1.0", "c1.1"], ["c2.0", "c2.1", "c2.2"],
                                 ["c3.0", "c3.1", "c3.2", "c3.3"]]
    assert batch["answers"] == [["a0"], ["a1"], ["a2"], ["a3"]]
    [(train, bad)] = _take(TrainStream(Captioned(), 2, seed=0), 1)
    assert not bad and all(len(c) == int(i) + 1 for c, i in zip(train["captions"],
                                                                  train["label"]))
    # Under DDP the ranks' metadata is concatenated item by item, lists of lists included.
    meta = [{"captions": batch["captions"][:1]}, {"captions": batch["captions"][1:]}]
    assert merge_meta(meta)["captions"] == batch["captions"]
