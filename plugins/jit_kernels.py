"""The numba-compiled parts of `param_select`: its stream of uniforms and its CPU kernel.

Kept apart so that importing the method (which every mergekit command does once sftmerge
is installed) does not import numba; `uniforms.py` and `select_kernel.py` import this
module on first use. The rule these functions implement is described in
`select_kernel.py`; the stream in `uniforms.py`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sftmerge.plugins.uniforms import GAMMA, MIX1, MIX2, SCALE

# Elements per chunk of the kernel: small enough for a chunk's inputs to stay in cache
# between its two phases, large enough to amortise the loop set-up.
CHUNK = 1 << 16


@njit(inline="always")
def uniform_at(key, i):
    """Element i's uniform; `key` is a numpy uint64. Same values as `uniforms_numpy`."""
    z = key + (np.uint64(i) + np.uint64(1)) * np.uint64(GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    z = z ^ (z >> np.uint64(31))
    return np.float32(z >> np.uint64(40)) * np.float32(SCALE)


@njit(parallel=True, nogil=True, cache=True)
def fill_uniforms(key, out):
    for i in prange(out.shape[0]):
        out[i] = uniform_at(key, i)


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
def select_and_resample(models, base, has_base, has_u, u, key, out, edges, width, weights, equal_w, resample, abs_mask,
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
