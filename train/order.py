"""The data order of one run: per-epoch permutations, and the sampler that follows them.

`sample` mode: each epoch is a seeded permutation of all samples, drawn from
(order_seed, order, epoch). `batch` mode (the paper's ablation): the samples are cut
into batches once, identically for every order (from order_seed alone), and only the
order of those batches is permuted per (order_seed, order, epoch). The batch is the
optimizer step's: per-device batch x gradient accumulation x processes; a final short
batch stays last so batch boundaries never shift.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List

import numpy as np
import torch


def _rng(*key) -> np.random.Generator:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def epoch_orders(n: int, epochs: int, order_seed: int, order: int, mode: str = "sample",
                 global_batch: int = 1, reshuffle_each_epoch: bool = True) -> List[List[int]]:
    """Sample indices in training order, one list per epoch."""
    out = []
    if mode == "batch":
        fixed = _rng(order_seed, "batches").permutation(n)
        full = n // global_batch
        batches = [fixed[i * global_batch:(i + 1) * global_batch] for i in range(full)]
        tail = fixed[full * global_batch:]
    for epoch in range(epochs):
        e = epoch if reshuffle_each_epoch else 0
        if mode == "sample":
            out.append(_rng(order_seed, order, e).permutation(n).tolist())
        elif mode == "batch":
            which = _rng(order_seed, order, e, "batch-order").permutation(full)
            seq = [batches[i] for i in which] + [tail]
            out.append(np.concatenate(seq).tolist() if seq else [])
        else:
            raise ValueError(f"unknown order mode {mode!r}")
    return out


def order_record(orders: List[List[int]], order_seed: int, order: int, mode: str, global_batch: int,
                 ids: List[str]) -> Dict:
    """What `order.json` holds: enough to reproduce and to plot against positions."""
    return {
        "order": order,
        "order_seed": order_seed,
        "mode": mode,
        "global_batch": global_batch,
        "num_samples": len(ids),
        "sample_ids": ids,
        "epochs": orders,
    }


class EpochOrderSampler(torch.utils.data.Sampler):
    """Yields the given permutation of the current epoch; the Trainer calls `set_epoch`."""

    def __init__(self, orders: List[List[int]]):
        self.orders = orders
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.orders[0])

    def __iter__(self):
        return iter(self.orders[min(self.epoch, len(self.orders) - 1)])
