"""DataLoader assembly: reproducible per-worker seeding, class-balanced sampling, DDP sharding.

Augmentation randomness lives in each dataset copy's ``rng``; without reseeding, every worker
would start from the same state and produce the same "random" augmentations in lock-step.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, WeightedRandomSampler, get_worker_info

from .dataset import collate


def _seed_worker(worker_id: int, seed: int) -> None:
    """Seed numpy, ``random`` and the dataset's own ``rng`` from (seed, worker id, torch's worker seed).

    ``torch.initial_seed()`` inside a worker is the loader's per-iterator base seed plus the worker
    id; the base seed comes from the loader's seeded generator, so runs repeat exactly while each
    new iterator (a new epoch without persistent workers) gets fresh streams.
    """
    sequence = np.random.SeedSequence([seed, worker_id, torch.initial_seed()])
    state = sequence.generate_state(2, dtype=np.uint32)
    np.random.seed(int(state[0]))
    random.seed(int(state[0]))
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(int(state[1]))


def build_dataloader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int,
    sampler: Sampler | None = None,
    distributed: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding ``collate`` batches.

    With ``distributed`` a seeded ``DistributedSampler`` shards the data (the trainer must call
    ``loader.sampler.set_epoch(epoch)`` for a new order each epoch); it cannot be combined with
    a custom ``sampler``. Workers are started afresh every epoch (not persistent), so that their
    augmentation streams follow the loader's generator, which the trainer reseeds per epoch: that
    is what makes a resumed run repeat the uninterrupted one. Memory is pinned only when CUDA is
    there to benefit from it.
    """
    if distributed and sampler is not None:
        raise ValueError("build_dataloader: a custom sampler cannot be combined with distributed=True")
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator()
    generator.manual_seed(seed)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(worker_init_fn=functools.partial(_seed_worker, seed=seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        **kwargs,
    )


def weighted_sampler(
    dataset: Any, class_weights: np.ndarray, num_samples: int | None = None, seed: int = 0
) -> WeightedRandomSampler:
    """Sample images (with replacement) in proportion to ``dataset.image_weights(class_weights)``.

    Images holding rare classes come up more often; ``num_samples`` defaults to one epoch's worth.
    """
    weights = np.asarray(dataset.image_weights(class_weights), dtype=np.float64)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=len(weights) if num_samples is None else num_samples,
        replacement=True,
        generator=generator,
    )


def class_weights_from_counts(
    counts: np.ndarray, mode: str = "median", clip: tuple[float, float] = (0.1, 10.0)
) -> np.ndarray:
    """Median-frequency balancing: ``w_c = median(freq) / freq_c`` over the classes present, clipped.

    Absent classes get 1.0: there is nothing to rebalance, and an infinite weight would only
    matter if a label appeared later. The clip keeps one ultra-rare class from dominating the loss.
    """
    if mode != "median":
        raise ValueError(f"class_weights_from_counts: unknown mode {mode!r} (only 'median')")
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    weights = np.ones_like(counts)
    present = counts > 0
    if present.any():
        freq = counts[present] / counts[present].sum()
        weights[present] = np.clip(np.median(freq) / freq, clip[0], clip[1])
    return weights
