"""The CPU kernel of `param_select`: selection and resampling element by element.

The torch path in `param_select.py` (used on GPUs) makes one elementwise pass per step of
the rule; with resampling that is dozens of passes over the base-equal elements. This
kernel (compiled in `jit_kernels.py`) walks each range of elements in ONE pass without
branches: it computes the first pick and the redraw for every element and keeps the
redraw where the first pick equals the base. Without branches LLVM vectorises the loop
(AVX2/AVX-512), which is several times faster than redrawing only the base-equal
elements one by one. It is bit-identical to the torch path: every comparison and every
float operation is done in float32 in the same order, and values are copied, never
computed. Values are handled as their bit patterns (one compiled kernel per width),
compared with IEEE equality (+0 == -0, NaN != NaN) as torch's `==` does. Blocks of
elements run on several threads (`workers.py`).

The rule, per element with uniform u (float32):
1. slot s = number of positive-weight models p >= 1 with u >= edge[p]: the first pick.
2. Without a base, or where the pick differs from the base: keep it.
3. With `resample` and a base-equal pick: u2 = u rescaled inside slot s's interval;
   redraw the first model (in order) whose running sum of weights over the models that
   changed the element exceeds u2 * their total; none changed it: keep the base value.
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from sftmerge.plugins import page_release, workers
from sftmerge.plugins.uniforms import Uniforms

# numba is a dependency; without it (e.g. an unsupported platform) the torch path runs.
# The compiled code lives in jit_kernels.py and is imported on first use.
_HAS_NUMBA = importlib.util.find_spec("numba") is not None

# Per dtype: the same-size integer view, and the bit pattern of +inf (NaNs are above it).
_BITS = {
    torch.bfloat16: (torch.int16, 0x7F80),
    torch.float16: (torch.int16, 0x7C00),
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}


# Each element's origin is kept in one byte while its chunk is counted.
MAX_MODELS = 127


def available() -> bool:
    return _HAS_NUMBA


def supports(tensor: torch.Tensor) -> bool:
    return (
        _HAS_NUMBA
        and tensor.device.type == "cpu"
        and tensor.dtype in _BITS
    )


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    flat = t.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return flat.view(_BITS[flat.dtype][0]).numpy()


def select_positive(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    edges: Sequence[float],
    uniforms: Union[Uniforms, torch.Tensor],
    base: Optional[torch.Tensor],
    resample: bool,
) -> Tuple[torch.Tensor, list, Optional[int], Optional[int]]:
    """Run the kernel over the positive-weight models `tensors` (weights > 0, in order).

    `edges[p]` is the start of model p's interval. Returns the flat output, elements
    taken per model, and the base-equal counts before and after resampling (None without
    a base).
    """
    from sftmerge.plugins.jit_kernels import select_range

    if len(tensors) > MAX_MODELS:
        raise ValueError(f"the CPU kernel takes at most {MAX_MODELS} models with weight > 0 (got {len(tensors)})")
    dtype = tensors[0].dtype
    models = tuple(_as_numpy(t) for t in tensors)
    out_t = torch.empty(tensors[0].numel(), dtype=dtype)
    out = _as_numpy(out_t)
    has_base = base is not None
    base_np = _as_numpy(base) if has_base else models[0][:0]
    # A stream is computed element by element inside the kernel; explicit values are read.
    has_u = not isinstance(uniforms, Uniforms)
    u = uniforms.reshape(-1).cpu().numpy() if has_u else np.empty(0, dtype=np.float32)
    key = np.uint64(0 if has_u else uniforms.key)
    n_pos = len(tensors)
    total = float(sum(weights))
    edges32 = np.array(edges, dtype=np.float32)
    width = np.array([w / total for w in weights], dtype=np.float32)
    equal_w = all(w == weights[0] for w in weights)
    # Equal weights redraw uniformly: the renormalised weights are counts (exact in float32).
    redraw_w = np.ones(n_pos, dtype=np.float32) if equal_w else np.array(weights, dtype=np.float32)
    threads = workers.threads_for(out.size)
    counts = np.zeros((threads, n_pos), dtype=np.int64)  # one row per thread: no shared counter
    equal_counts = np.zeros((threads, 2), dtype=np.int64)
    int_type = out.dtype.type
    abs_mask, inf_bits = int_type(np.iinfo(out.dtype).max), int_type(_BITS[dtype][1])

    address, size = out_t.data_ptr(), out_t.element_size()

    def block(start: int, stop: int, slot: int) -> None:
        page_release.populate(address + start * size, (stop - start) * size)
        select_range(models, base_np, has_base, resample, has_u, u, key, out, start, stop, edges32, width, redraw_w,
                     equal_w, abs_mask, inf_bits, counts[slot], equal_counts[slot])

    workers.run_blocks(out.size, block, threads)
    picks = counts.sum(axis=0).tolist()
    before, after = (int(x) for x in equal_counts.sum(axis=0)) if has_base else (None, None)
    return out_t, picks, before, after
