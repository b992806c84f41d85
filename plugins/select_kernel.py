"""The CPU kernel of `param_select`: selection and resampling in one pass over the elements.

The torch path in `param_select.py` (used on GPUs) makes one elementwise pass per step of
the rule; with resampling that is dozens of passes over the base-equal elements. This
kernel applies the same rule to each element in turn, reading each input once, and is
bit-identical to the torch path: every comparison and every float operation is done in
float32 in the same order, and values are copied, never computed. Values are handled as
their bit patterns (one compiled kernel per width), compared with IEEE equality
(+0 == -0, NaN != NaN) as torch's `==` does.

The rule, per element with uniform u (float32):
1. slot s = number of positive-weight models p >= 1 with u >= edge[p]: the first pick.
2. Without a base, or where the pick differs from the base: keep it.
3. With `resample` and a base-equal pick: u2 = u rescaled inside slot s's interval;
   redraw the first model (in order) whose running sum of weights over the models that
   changed the element exceeds u2 * their total; none changed it: keep the base value.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from sftmerge.plugins.uniforms import NUMBA_LOCK, Uniforms

try:  # numba is a dependency; without it (e.g. an unsupported platform) the torch path runs.
    import numba
    from numba import njit, prange

    from sftmerge.plugins.uniforms import uniform_at
except ImportError:  # pragma: no cover
    numba = None

# Elements per parallel chunk: large enough to amortise scheduling, small enough to balance.
CHUNK = 1 << 16

# Per dtype: the same-size integer view, and the bit pattern of +inf (NaNs are above it).
_BITS = {
    torch.bfloat16: (torch.int16, 0x7F80),
    torch.float16: (torch.int16, 0x7C00),
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}


def available() -> bool:
    return numba is not None


def supports(tensor: torch.Tensor) -> bool:
    return (
        numba is not None
        and tensor.device.type == "cpu"
        and tensor.dtype in _BITS
    )


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    flat = t.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return flat.view(_BITS[flat.dtype][0]).numpy()


if numba is not None:

    @njit(inline="always")
    def _eq(a, b, abs_mask, inf_bits):
        # IEEE equality on float bit patterns (NaN equals nothing, +0 equals -0), without
        # branches: the outcome is data-dependent and would be mispredicted.
        a_abs = a & abs_mask
        return (a_abs <= inf_bits) & ((a == b) | ((a_abs | (b & abs_mask)) == 0))

    @njit(inline="always")
    def _first_pick(models, i, ui, edges):
        """Value and slot of the model whose interval holds ui, without branches."""
        v = models[0][i]
        s = 0
        for p in range(1, len(models)):
            take = ui >= edges[p]
            s += take
            w = models[p][i]
            v = w if take else v
        return v, s

    @njit(inline="always")
    def _redraw(models, i, b, u2, weights, equal_w, abs_mask, inf_bits):
        """Slot of the redrawn model among the changed ones; len(models) when none changed."""
        n_pos = len(models)
        chosen = 0
        if equal_w:
            # Integers: the first model whose running count of changed models exceeds
            # floor(u2 * number changed).
            n_changed = 0
            for p in range(n_pos):
                n_changed += not _eq(models[p][i], b, abs_mask, inf_bits)
            threshold = int(np.float32(u2 * np.float32(n_changed)))
            running = 0
            for p in range(n_pos):
                running += not _eq(models[p][i], b, abs_mask, inf_bits)
                chosen += running <= threshold
        else:
            total = np.float32(0.0)
            for p in range(n_pos):
                if not _eq(models[p][i], b, abs_mask, inf_bits):
                    total = np.float32(total + weights[p])
            threshold32 = np.float32(u2 * total)
            running32 = np.float32(0.0)
            for p in range(n_pos):
                if not _eq(models[p][i], b, abs_mask, inf_bits):
                    running32 = np.float32(running32 + weights[p])
                chosen += running32 <= threshold32
        return chosen

    @njit(parallel=True, nogil=True, cache=True)
    def _kernel(models, base, has_base, has_u, u, key, out, edges, width, weights, equal_w, resample, abs_mask,
                inf_bits, counts, equal_counts):
        n = out.shape[0]
        n_pos = len(models)  # a compile-time constant: the loops over models unroll
        n_chunks = (n + CHUNK - 1) // CHUNK
        n_workers = counts.shape[0]
        one_minus = np.float32(1.0) - np.float32(2.0**-23)
        n_pos32 = np.float32(n_pos)
        # One iteration per worker thread, which takes every n_workers-th chunk: its buffer
        # and counters are allocated once, not per chunk.
        for t in prange(n_workers):
            # Phase 2 needs each base-equal element's offset, uniform and first pick.
            equal_at = np.empty(CHUNK if has_base else 0, dtype=np.int32)
            u_at = np.empty(CHUNK if has_base else 0, dtype=np.float32)
            s_at = np.empty(CHUNK if has_base else 0, dtype=np.int32)
            picks = np.zeros(n_pos, dtype=np.int64)
            equal_before = 0
            redrawn = 0
            for c in range(t, n_chunks, n_workers):
                start = c * CHUNK
                stop = min(start + CHUNK, n)
                # Phase 1, every element, branch-free: the first pick, and the offsets of
                # the picks that equal the base.
                n_equal = 0
                if not has_base:  # separate loops: the one without a base stays minimal
                    for i in range(start, stop):
                        ui = u[i] if has_u else uniform_at(key, i)
                        v, s = _first_pick(models, i, ui, edges)
                        out[i] = v
                        picks[s] += 1
                    continue
                for i in range(start, stop):
                    ui = u[i] if has_u else uniform_at(key, i)
                    v, s = _first_pick(models, i, ui, edges)
                    out[i] = v
                    picks[s] += 1
                    # Unconditional stores; the slot is kept only when the pick equals the base.
                    equal_at[n_equal] = i - start
                    u_at[n_equal] = ui
                    s_at[n_equal] = s
                    n_equal += _eq(v, base[i], abs_mask, inf_bits)
                equal_before += n_equal
                if not resample:
                    continue
                # Phase 2, base-equal picks only: redraw among the models that changed the
                # element, with the uniform rescaled inside the first pick's interval.
                for j in range(n_equal):
                    i = start + equal_at[j]
                    ui = u_at[j]
                    s = s_at[j]
                    if equal_w:
                        u2 = np.float32(ui * n_pos32) - np.float32(s)
                    else:
                        u2 = np.float32(ui - edges[s]) / width[s]
                    u2 = min(max(u2, np.float32(0.0)), one_minus)
                    b = base[i]
                    chosen = _redraw(models, i, b, u2, weights, equal_w, abs_mask, inf_bits)
                    # Branch-free choice (the redraw is random): chosen == n_pos, no model
                    # changed the element, keeps the base value and the first pick's count.
                    v = b
                    for p in range(n_pos):
                        w = models[p][i]
                        v = w if chosen == p else v
                    out[i] = v
                    moved = chosen < n_pos
                    picks[s] -= moved
                    picks[min(chosen, n_pos - 1)] += moved
                    redrawn += moved
            counts[t, :] = picks
            equal_counts[t, 0] = equal_before
            equal_counts[t, 1] = equal_before - redrawn


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
    weights32 = np.array(weights, dtype=np.float32)
    equal_w = all(w == weights[0] for w in weights)
    n_workers = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    counts = np.zeros((n_workers, n_pos), dtype=np.int64)
    equal_counts = np.zeros((n_workers, 2), dtype=np.int64)
    int_type = out.dtype.type
    abs_mask, inf_bits = int_type(np.iinfo(out.dtype).max), int_type(_BITS[dtype][1])
    with NUMBA_LOCK:
        numba.set_num_threads(n_workers)
        _kernel(models, base_np, has_base, has_u, u, key, out, edges32, width, weights32, equal_w, resample, abs_mask,
                inf_bits, counts, equal_counts)
    picks = counts.sum(axis=0).tolist()
    before, after = (int(x) for x in equal_counts.sum(axis=0)) if has_base else (None, None)
    return out_t, picks, before, after
