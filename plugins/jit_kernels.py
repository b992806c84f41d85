"""The numba-compiled parts of `param_select`: its stream of uniforms and its CPU kernel.

Kept apart so that importing the method (which every mergekit command does once sftmerge
is installed) does not import numba; `uniforms.py` and `select_kernel.py` import this
module on first use. The rule these functions implement is described in
`select_kernel.py`; the stream in `uniforms.py`.

Each function is serial, works on one range of elements [start, stop) and releases the
GIL: `workers.py` runs it over blocks of a tensor on several threads. Written for LLVM's
loop vectoriser:
- indices into the inputs are unsigned (a signed index gets numba's negative-index
  check, which stops vectorisation);
- every load comes before the select that uses it, and the passes have no branches;
- error_model="numpy": with numba's default ("python") a division checks for zero and
  may raise, and that branch kept the resampling loop scalar (3x slower);
- no integer counters in the loops: numba widens integer arithmetic to 64 bits, which
  limits a whole loop to 4 lanes; slots and counts are float32, flags are stored per
  element and summed after the pass.
Without a base, the stream's uniform is computed where it is used, in the pass that
reads the inputs (a separate pass left the arithmetic and the memory traffic
unoverlapped: about 20% more time); the longer resampling loop reads it from a buffer.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sftmerge.plugins.splitmix import GAMMA, MIX1, MIX2, SCALE

# Elements per chunk: a chunk's slots (two bytes per element) stay in cache between the
# pass that writes them and the count that reads them.
CHUNK = 1 << 16


@njit(inline="always")
def uniform_at(key, i):
    """Element i's uniform; `key` is a numpy uint64. Same values as `uniforms_numpy`."""
    z = key + (np.uint64(i) + np.uint64(1)) * np.uint64(GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    z = z ^ (z >> np.uint64(31))
    return np.float32(z >> np.uint64(40)) * np.float32(SCALE)


@njit(nogil=True, cache=True, error_model="numpy")
def fill_uniforms(key, out, start, stop):
    """out[i] = element i's uniform for i in [start, stop)."""
    st = np.uint64(start)
    for j in range(stop - start):
        i = st + np.uint64(j)
        out[i] = uniform_at(key, i)


@njit(inline="always")
def _uniform(has_u, u, key, i):
    # `has_u` is the same for the whole loop: LLVM unswitches it into two vectorised loops.
    return u[i] if has_u else uniform_at(key, i)


@njit(inline="always")
def _eq(a, b, abs_mask, inf_bits):
    # IEEE equality on float bit patterns (NaN equals nothing, +0 equals -0), without
    # branches: the outcome is data-dependent and would be mispredicted.
    a_abs = a & abs_mask
    return (a_abs <= inf_bits) & ((a == b) | ((a_abs | (b & abs_mask)) == 0))


@njit(inline="always")
def _first_pick(models, i, ui, edges):
    """Value and slot (a float32 count) of the model whose interval holds ui, without branches."""
    v = models[0][i]
    s = np.float32(0.0)
    for p in range(1, len(models)):
        take = ui >= edges[p]
        s = np.float32(s + np.float32(take))
        w = models[p][i]
        v = w if take else v
    return v, s


@njit(inline="always")
def _plain_pass(models, has_u, u, key, start, m, out, origin, edges):
    st = np.uint64(start)
    for j in range(m):
        i = st + np.uint64(j)
        v, s = _first_pick(models, i, _uniform(has_u, u, key, i), edges)
        out[i] = v
        origin[j] = np.int16(s)


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
def _base_pass(models, base, resample, u_buf, start, m, out, origin, edges, width, redraw_w, equal_w, abs_mask,
               inf_bits):
    n_pos = len(models)
    n_pos32 = np.float32(n_pos)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    one_minus = np.float32(1.0) - np.float32(2.0**-23)
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
        u2e = np.float32(ui * n_pos32) - s
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
        chosen = zero
        for p in range(n_pos):
            w_p = redraw_w[p]
            changed = not _eq(models[p][i], b, abs_mask, inf_bits)
            running = np.float32(running + (w_p if changed else zero))
            chosen = np.float32(chosen + (one if running <= threshold else zero))
        redo = need & resample
        slot = chosen if redo else s
        r = b  # slot == n_pos: no model changed the element, the base value stays
        for p in range(n_pos):
            w = models[p][i]
            r = w if slot == np.float32(p) else r
        out[i] = r
        moved = redo & (chosen < n_pos32)
        origin[j] = np.int16(slot if moved else s) | (np.int16(need) << 8) | (np.int16(moved) << 9)


@njit(inline="always")
def _count(origin, m, has_base, picks, equal_counts):
    """Add the chunk's elements per slot to `picks` (slot 0 gets the rest: one pass fewer)
    and, with a base, its base-equal first picks and those still base-equal after the redraw."""
    rest = 0
    for p in range(1, picks.shape[0]):
        hits = 0
        slot = np.int16(p)
        for j in range(m):
            hits += (origin[j] & np.int16(0xFF)) == slot
        picks[p] += hits
        rest += hits
    picks[0] += m - rest
    if has_base:
        need = 0
        moved = 0
        for j in range(m):
            need += (origin[j] >> 8) & 1
            moved += (origin[j] >> 9) & 1
        equal_counts[0] += need
        equal_counts[1] += need - moved


@njit(nogil=True, cache=True, error_model="numpy")
def select_range(models, base, has_base, resample, has_u, u, key, out, start, stop, edges, width, redraw_w,
                 equal_w, abs_mask, inf_bits, picks, equal_counts):
    """Elements [start, stop) of the output; adds their picks per model to `picks` and the
    base-equal counts before and after resampling to `equal_counts`."""
    # Per element of a chunk: the slot it came from (low byte), whether its first pick
    # equalled the base (bit 8), whether the redraw moved it (bit 9).
    origin = np.empty(CHUNK, dtype=np.int16)
    u_buf = np.empty(CHUNK if has_base else 0, dtype=np.float32)
    for c in range(start, stop, CHUNK):
        m = min(c + CHUNK, stop) - c
        if has_base:
            # Read from a buffer here: computed inline, the stream made this long loop slower.
            _fill_chunk_uniforms(has_u, u, key, c, m, u_buf)
            _base_pass(models, base, resample, u_buf, c, m, out, origin, edges, width, redraw_w, equal_w, abs_mask,
                       inf_bits)
        else:
            _plain_pass(models, has_u, u, key, c, m, out, origin, edges)
        # Counted apart: a histogram update inside the passes would stop them vectorising.
        _count(origin, m, has_base, picks, equal_counts)
