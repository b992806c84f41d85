"""The numba-compiled parts of `param_select`: its stream of uniforms and its CPU kernel.

Kept apart so that importing the method (which every mergekit command does once sftmerge
is installed) does not import numba; `uniforms.py` and `select_kernel.py` import this
module on first use. The rule these functions implement is described in
`select_kernel.py`; the stream in `uniforms.py`.

Written for LLVM's loop vectoriser: indices into the inputs are unsigned (a signed index
gets numba's negative-index check, which stops vectorisation), every load comes before
the select that uses it, and the passes have no branches.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sftmerge.plugins.splitmix import GAMMA, MIX1, MIX2, SCALE

# Elements per chunk of the kernel: small enough for a chunk's uniforms and origins to
# stay in cache between the passes over it, large enough to amortise the loop set-up.
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
def _fill_chunk_uniforms(has_u, u, key, start, m, u_buf):
    st = np.uint64(start)
    if has_u:
        for j in range(m):
            u_buf[j] = u[st + np.uint64(j)]
    else:
        for j in range(m):
            u_buf[j] = uniform_at(key, st + np.uint64(j))


@njit(inline="always")
def _plain_pass(models, u_buf, start, m, out, origin, edges):
    st = np.uint64(start)
    for j in range(m):
        i = st + np.uint64(j)
        v, s = _first_pick(models, i, u_buf[j], edges)
        out[i] = v
        origin[j] = np.int8(s)


@njit(inline="always")
def _base_pass(models, base, resample, u_buf, start, m, out, origin, edges, width, redraw_w, equal_w, abs_mask,
               inf_bits):
    n_pos = len(models)
    n_pos32 = np.float32(n_pos)
    zero = np.float32(0.0)
    one_minus = np.float32(1.0) - np.float32(2.0**-23)
    equal_before = 0
    redrawn = 0
    st = np.uint64(start)
    for j in range(m):
        i = st + np.uint64(j)
        ui = u_buf[j]
        v, s = _first_pick(models, i, ui, edges)
        b = base[i]
        need = _eq(v, b, abs_mask, inf_bits)
        # The redraw is computed for every element (no branches, so the loop vectorises)
        # and kept where the first pick equals the base.
        e_s = edges[0]
        w_s = width[0]
        # Slot s's interval, found again by comparisons rather than read as edges[s]: that
        # indexed load (a gather) made the loop about 4x slower. Every load is made
        # before its select: a load inside a conditional expression stops vectorisation.
        for p in range(1, n_pos):
            e_p = edges[p]
            w_p = width[p]
            take = ui >= e_p
            e_s = e_p if take else e_s
            w_s = w_p if take else w_s
        u2e = np.float32(ui * n_pos32) - np.float32(s)
        u2w = np.float32(ui - e_s) / w_s
        u2 = u2e if equal_w else u2w
        u2 = zero if u2 < zero else u2
        u2 = one_minus if u2 > one_minus else u2
        total = zero
        for p in range(n_pos):
            w_p = redraw_w[p]
            changed = not _eq(models[p][i], b, abs_mask, inf_bits)
            total = np.float32(total + (w_p if changed else zero))
        threshold = np.float32(u2 * total)
        running = zero
        chosen = 0
        for p in range(n_pos):
            w_p = redraw_w[p]
            changed = not _eq(models[p][i], b, abs_mask, inf_bits)
            running = np.float32(running + (w_p if changed else zero))
            chosen += running <= threshold
        redo = need & resample
        slot = chosen if redo else s
        r = b  # slot == n_pos: no model changed the element, the base value stays
        for p in range(n_pos):
            w = models[p][i]
            r = w if slot == p else r
        out[i] = r
        moved = redo & (chosen < n_pos)
        origin[j] = np.int8(slot if moved else s)
        equal_before += need
        redrawn += moved
    return equal_before, redrawn


@njit(parallel=True, nogil=True, cache=True)
def select_chunks(models, base, has_base, resample, has_u, u, key, out, edges, width, redraw_w, equal_w, abs_mask,
                  inf_bits, counts, equal_counts):
    n = out.shape[0]
    n_pos = len(models)  # a compile-time constant: the loops over models unroll
    n_chunks = (n + CHUNK - 1) // CHUNK
    n_workers = counts.shape[0]
    # One iteration per worker thread, which takes every n_workers-th chunk: its buffers
    # and counters are allocated once, not per chunk.
    for t in prange(n_workers):
        u_buf = np.empty(CHUNK, dtype=np.float32)
        origin = np.empty(CHUNK, dtype=np.int8)  # the slot each output element came from
        picks = np.zeros(n_pos, dtype=np.int64)
        equal_before = 0
        redrawn = 0
        for c in range(t, n_chunks, n_workers):
            start = c * CHUNK
            m = min(start + CHUNK, n) - start
            _fill_chunk_uniforms(has_u, u, key, start, m, u_buf)
            if has_base:
                e, r = _base_pass(models, base, resample, u_buf, start, m, out, origin, edges, width, redraw_w,
                                  equal_w, abs_mask, inf_bits)
                equal_before += e
                redrawn += r
            else:
                _plain_pass(models, u_buf, start, m, out, origin, edges)
            # Counted apart: a histogram update inside the passes would stop them vectorising.
            for p in range(n_pos):
                hits = 0
                for j in range(m):
                    hits += origin[j] == p
                picks[p] += hits
        counts[t, :] = picks
        equal_counts[t, 0] = equal_before
        equal_counts[t, 1] = equal_before - redrawn
