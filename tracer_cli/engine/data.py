"""Data loading: a resumable, rank-aware stream of training batches, evaluation loaders, and the
bookkeeping of unreadable items (corrupt or truncated images).

Two properties make a resumed or a distributed run see exactly the data of a plain one:

- **Positions, not iterators.** The order of epoch e is a permutation seeded by (seed, e); a
  checkpoint stores (epoch, batch) and the stream replays the rest of that epoch from there.
- **Per-item randomness.** Each training item is read under its own RNG seed derived from
  (seed, epoch, index), in a forked RNG, so random augmentations do not depend on which process or
  worker reads the item, on how many items were read before it, or on a resume in between, and the
  global RNG of the training loop is left alone.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from tracer_cli.errors import UsageError
from tracer_cli.sdk.contracts import SkippedItem

# Beyond the SkippedItem a dataset plugin returns, an OSError from any dataset (a file that
# vanished, PIL failing to identify an image) is treated as one unreadable item too.
UNREADABLE_ERRORS = (OSError,)
_MAX_EXAMPLES = 20


@dataclass(frozen=True)
class BadItem:
    """An item that could not be read: its index in the dataset, what it is, and why."""

    index: int
    source: str
    reason: str

    def describe(self) -> str:
        return f"{self.source} ({self.reason})"


def read_item(dataset: Dataset, index: int) -> dict[str, Any] | BadItem:
    """``dataset[index]``, or a :class:`BadItem` when the item cannot be read."""
    try:
        item = dataset[index]
    except UNREADABLE_ERRORS as exc:
        return BadItem(index, f"item {index}", f"{type(exc).__name__}: {exc}")
    if isinstance(item, SkippedItem):
        return BadItem(index, item.source, item.reason)
    return item


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, except that list-valued fields stay one list per item.

    A field such as ``captions`` (several per image) or ``answers`` (one per annotator) holds a
    list per item; ``default_collate`` would transpose those lists (and fail on lists of different
    lengths), so the batch keeps ``[item[key] for item in items]`` for them instead.
    """
    listed = {key for key, value in items[0].items() if isinstance(value, (list, tuple))}
    batch = default_collate([{k: v for k, v in item.items() if k not in listed}
                             for item in items]) if len(listed) < len(items[0]) else {}
    for key in items[0]:
        if key in listed:
            batch[key] = [list(item[key]) for item in items]
    return {key: batch[key] for key in items[0]}


def collate_skipping(items: list[Any]) -> tuple[dict[str, Any] | None, list[BadItem]]:
    """Collate the readable items and set the bad ones aside: (batch or None, bad items)."""
    bad = [item for item in items if isinstance(item, BadItem)]
    good = [item for item in items if not isinstance(item, BadItem)]
    return (collate_items(good) if good else None), bad


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for reading item ``index`` in ``epoch`` of a run seeded ``seed``."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the CPU generators of torch, numpy and ``random`` to their state at entry."""
    py_state, np_state = random.getstate(), np.random.get_state()
    # Only the CPU generator, the one fork_rng restores: torch.manual_seed would also seed every
    # CUDA generator (leaving them changed after the block) and, before CUDA is initialised,
    # record a traceback per call (half the cost of reading a 32 px item).
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def seed_all(seed: int) -> None:
    """Seed the CPU generators of torch, numpy and ``random`` with ``seed``."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class _SeededItems(Dataset):
    """Training items keyed by (epoch, index); each is read under :func:`item_seed`."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | BadItem:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, Any] | BadItem]:
        """A whole batch (the DataLoader's batched fetch): every item under its own seed, the
        generators saved and restored once per batch, not per item (numpy's state round trip
        alone cost more than reading a 32 px item)."""
        items = []
        with preserved_rng():
            for epoch, index in keys:
                seed_all(item_seed(self.seed, epoch, index))
                items.append(read_item(self.dataset, index))
        return items


class TrainStream:
    """Endless shuffled batches with a position (epoch, batch) that a checkpoint can restore.

    ``batch_size`` is the global batch; with ``world_size`` ranks each takes its contiguous slice
    of ``batch_size / world_size`` items of every global batch (same permutation on all ranks).
    Iterating yields ``(batch, bad)``: the collated readable items of this rank's slice (None when
    none was readable) and the :class:`BadItem` s dropped from it. Incomplete last batches are
    dropped: the contrastive loss wants full batches of negatives.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0,
                 pin_memory: bool = False, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise UsageError(f"train.batch_size = {batch_size} (the global batch) must be a "
                             f"multiple of the number of processes ({world_size})")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.rank, self.local_batch = rank, batch_size // world_size
        self.batches_per_epoch = len(dataset) // batch_size
        if self.batches_per_epoch == 0:
            raise UsageError(f"the training set has {len(dataset)} examples, fewer than one batch "
                             f"(train.batch_size = {batch_size})")
        self.epoch, self.batch = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def _epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's slice of every global batch of ``epoch``, as (epoch, index) keys."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=gen).tolist()
        start = self.rank * self.local_batch
        return [[(epoch, i) for i in order[b + start:b + start + self.local_batch]]
                for b in range(0, self.batches_per_epoch * self.batch_size, self.batch_size)]

    def keys_from(self, epoch: int, batch: int) -> Iterator[list[tuple[int, int]]]:
        """Batches of item keys from position (epoch, batch) on, across epoch boundaries."""
        while True:
            yield from self._epoch_batches(epoch)[batch:]
            epoch, batch = epoch + 1, 0

    def __iter__(self) -> Iterator[tuple[dict[str, Any] | None, list[BadItem]]]:
        # One loader for the whole run: its workers start once and keep prefetching across epoch
        # boundaries instead of being restarted, with the pipeline drained, every epoch. Each
        # item's augmentation is seeded by its key, so which worker reads it does not matter.
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        loader = DataLoader(_SeededItems(self.dataset, self.seed),
                            batch_sampler=_KeyBatches(self, self.epoch, self.batch),
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            collate_fn=collate_skipping, generator=gen)
        for item in loader:
            self.batch += 1
            if self.batch == self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            yield item


class _KeyBatches:
    """The endless batch sampler of :class:`TrainStream`, starting at a fixed position."""

    def __init__(self, stream: TrainStream, epoch: int, batch: int):
        self.stream, self.epoch, self.batch = stream, epoch, batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.stream.keys_from(self.epoch, self.batch)


class _IndexedItems(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | BadItem:
        return read_item(self.dataset, index)


class SkippingLoader:
    """An evaluation loader that drops unreadable items; ``bad`` lists those of the last pass."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.dataset = loader.dataset.dataset
        self.bad: list[BadItem] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.bad = []
        for batch, bad in self.loader:
            self.bad.extend(bad)
            if batch is not None:
                yield batch


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0,
                pin_memory: bool = False) -> SkippingLoader:
    """In order, unreadable items dropped; its own generator, so that evaluating (or not) before
    training leaves the global RNG, and with it the training run, unchanged."""
    return SkippingLoader(DataLoader(
        _IndexedItems(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=num_workers > 0, collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(0)))


class BadDataLog:
    """Unreadable training items met so far, and the limit ``data.max_bad_fraction`` sets.

    Items are counted once each (by dataset index) for the limit, however many epochs meet them
    again; ``skipped`` counts every time one was dropped from a batch.
    """

    def __init__(self, dataset_size: int, max_fraction: float):
        self.dataset_size, self.max_fraction = dataset_size, max_fraction
        self.items: dict[int, BadItem] = {}
        self.skipped = 0
        self.reported = 0  # how many of ``items`` have been written to metrics.jsonl

    def add(self, bad: Iterable[BadItem]) -> None:
        for item in bad:
            self.skipped += 1
            self.items.setdefault(item.index, item)

    @property
    def fraction(self) -> float:
        return len(self.items) / max(1, self.dataset_size)

    def exceeded(self) -> bool:
        return len(self.items) > math.floor(self.max_fraction * self.dataset_size)

    def unreported(self) -> list[BadItem]:
        """Items not yet written to metrics.jsonl (and from now on counted as written)."""
        new = list(self.items.values())[self.reported:]
        self.reported = len(self.items)
        return new

    def summary(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "distinct": len(self.items),
                "fraction": round(self.fraction, 6), "max_bad_fraction": self.max_fraction,
                "examples": [i.describe() for i in list(self.items.values())[:_MAX_EXAMPLES]]}

    def message(self) -> str:
        first = "; ".join(i.describe() for i in list(self.items.values())[:3])
        return (f"{len(self.items)} of {self.dataset_size} training items "
                f"({100 * self.fraction:.2f}%) could not be read, more than data.max_bad_fraction "
                f"= {self.max_fraction} allows; first: {first}. Repair or remove those files, or "
                "raise data.max_bad_fraction")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "reported": self.reported,
                "items": [[i.index, i.source, i.reason] for i in self.items.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped, self.reported = int(state["skipped"]), int(state["reported"])
        self.items = {int(i): BadItem(int(i), str(s), str(r)) for i, s, r in state["items"]}
