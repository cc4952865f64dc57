"""Data loading: a resumable stream of training batches and plain evaluation loaders."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from tracer_cli.errors import UsageError


class TrainStream:
    """Endless shuffled batches with a position (epoch, batch) that a checkpoint can restore.

    Each epoch's order is a permutation seeded by (seed, epoch), so resuming at a position replays
    exactly the batches an uninterrupted run would have seen. Incomplete last batches are dropped:
    the contrastive loss wants full batches of negatives.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0,
                 pin_memory: bool = False):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.batches_per_epoch = len(dataset) // batch_size
        if self.batches_per_epoch == 0:
            raise UsageError(f"the training set has {len(dataset)} examples, fewer than one batch "
                             f"(train.batch_size = {batch_size})")
        self.epoch, self.batch = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def _epoch_batches(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=gen).tolist()
        n = self.batches_per_epoch * self.batch_size
        return [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            batches = self._epoch_batches()[self.batch:]
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                pin_memory=self.pin_memory)
            for item in loader:
                self.batch += 1
                yield item
            self.epoch, self.batch = self.epoch + 1, 0


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)
