"""The per-element random stream of `param_select`: one float32 uniform per element.

Element i of a tensor gets the i-th output of SplitMix64 (Steele, Lea and Flood, 2014)
started from a 64-bit key hashed from (seed, tensor name), keeping its top 24 bits:
u = (bits >> 40) * 2**-24, in [0, 1). The stream is counter-based, so any element's
uniform is computed on its own: thread count, chunking and execution order cannot change
it, and the fused CPU kernel computes it where it is used instead of storing 4 bytes per
element. The torch path (GPUs) gets the same values from `Uniforms.tensor()`, computed on
the CPU and moved to the device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from sftmerge.plugins.splitmix import GAMMA, MIX1, MIX2, SCALE


def stream_key(seed: int, tensor_name: Optional[str]) -> int:
    """A 64-bit key for one tensor, stable across processes and platforms."""
    key = f"sftmerge.param_select:{seed}:{tensor_name or ''}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def splitmix64_bits(key: int, index: np.ndarray) -> np.ndarray:
    """The raw 64-bit outputs for `index` (numpy reference; uint64 arithmetic wraps)."""
    z = np.uint64(key) + (index.astype(np.uint64) + np.uint64(1)) * np.uint64(GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def uniforms_numpy(key: int, numel: int) -> np.ndarray:
    bits = splitmix64_bits(key, np.arange(numel, dtype=np.uint64))
    return (bits >> np.uint64(40)).astype(np.float32) * np.float32(SCALE)


@dataclass(frozen=True)
class Uniforms:
    """The stream of one tensor: `numel` uniforms under `key`, materialised only on demand."""

    key: int
    numel: int

    def tensor(self) -> torch.Tensor:
        """All `numel` uniforms as a float32 CPU tensor."""
        try:
            from sftmerge.plugins.jit_kernels import fill_uniforms
        except ImportError:  # pragma: no cover  (numba missing: the numpy reference, slower)
            return torch.from_numpy(uniforms_numpy(self.key, self.numel))
        from sftmerge.plugins import workers

        out = np.empty(self.numel, dtype=np.float32)
        key = np.uint64(self.key)
        workers.run_blocks(self.numel, lambda start, stop, _slot: fill_uniforms(key, out, start, stop),
                           workers.threads_for(self.numel))
        return torch.from_numpy(out)


def element_uniforms(seed: int, tensor_name: Optional[str], numel: int) -> Uniforms:
    return Uniforms(stream_key(seed, tensor_name), numel)
