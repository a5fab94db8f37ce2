"""The one place a torch DataLoader is built: worker seeding, pinned memory and persistent workers on GPU hosts,
and skipping (and reporting) an image that fails to decode in a worker instead of crashing the epoch."""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from edgetl.data.skipped import BadImage

# Batches each worker keeps ready on a GPU host: decode time varies from file to file (and from disk to disk),
# a deeper queue rides out the slow ones so the GPU does not wait.
GPU_PREFETCH_FACTOR = 4


def collate_skipping(samples: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[BadImage]]:
    """(images, labels, bad): the BadImage markers a dataset returned are taken out of the batch and passed on,
    so the loss averages over the real images only; (None, None, bad) when the whole batch was unreadable."""
    good = [s for s in samples if not isinstance(s, BadImage)]
    bad = [s for s in samples if isinstance(s, BadImage)]
    if not good:
        return None, None, bad
    x, y = default_collate(good)
    return x, y, bad


class SkippingLoader(DataLoader):
    """A DataLoader yielding (images, labels) whose batches have had their unreadable images removed; each
    batch's removed images go to `on_skip` (called in this process, where the run's list is kept)."""

    def __init__(self, *args, on_skip: Callable[[list[BadImage]], None] | None = None, **kwargs):
        super().__init__(*args, collate_fn=collate_skipping, **kwargs)
        self.on_skip = on_skip

    def __iter__(self):
        for x, y, bad in super().__iter__():
            if bad and self.on_skip is not None:
                self.on_skip(bad)
            if x is not None:
                yield x, y


def seed_worker(worker_id: int) -> None:
    """Each worker gets a distinct, reproducible seed derived from the loader's generator (numpy, random and the
    albumentations pipeline: with fork they would otherwise repeat the parent's stream in every worker)."""
    import torch.utils.data

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def make_loader(dataset, batch_size: int, *, shuffle: bool, workers: int, device: torch.device | str, seed: int,
                sampler=None, drop_last: bool = False,
                on_skip: Callable[[list[BadImage]], None] | None = None) -> SkippingLoader:
    """A loader over `dataset` (items: (image, label) or BadImage). The order and every worker's seed follow
    `seed`; with `sampler` (e.g. a DistributedSampler) the sampler decides the order and `shuffle` is unused.

    On a CUDA device: pinned memory (asynchronous host-to-device copies) and, with workers, persistent workers
    (no re-spawn when the same loader is iterated again, e.g. a val loader every epoch) and a deeper prefetch."""
    cuda = torch.device(device).type == "cuda"
    extra = {}
    if workers > 0:
        extra.update(worker_init_fn=seed_worker, persistent_workers=cuda)
        if cuda:
            extra["prefetch_factor"] = GPU_PREFETCH_FACTOR
    return SkippingLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                          sampler=sampler, num_workers=workers, drop_last=drop_last, pin_memory=cuda,
                          generator=torch.Generator().manual_seed(seed), on_skip=on_skip, **extra)
