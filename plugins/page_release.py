"""Drop a merged tensor's input pages from the process once they have been read.

mergekit reads safetensors inputs as views of a private mapping of each shard file. A
page, once read, stays in the process's resident set until the shard is closed at the
end of the merge, so a merge's peak RSS grows to the size of every input read, and the
OOM killer counts those pages too. `param_select` reads each input tensor once; after
the merge of a tensor it tells the kernel it no longer needs the tensor's pages
(`madvise(MADV_DONTNEED)`). They stay in the page cache: a later read (another method,
a tied weight) maps them again from there, with the file's contents.

That is lossless only for pages that are still the file's (or shared memory's): a page
the process wrote (a private copy), or one swapped out, would be discarded. So
`/proc/self/pagemap` is read first, and a tensor with any such page in its range is
left alone, as is anything not on the CPU, not contiguous, or on a system without
pagemap. Only whole pages inside the tensor are dropped, never a neighbour's.
Set SFTMERGE_KEEP_INPUT_PAGES=1 to turn this off (the benchmark compares both).

The other direction, `populate`: the kernel's output is a fresh buffer that it writes
whole, page after page, each first write a page fault (about 540,000 for a 1B-parameter
bf16 model). Asking for a range's pages in one call (`MADV_POPULATE_WRITE`, Linux 5.14+)
does the same allocation and zeroing without the faults, measured at about half the
system time.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Iterable, Optional

import numpy as np
import torch

PAGE = mmap.PAGESIZE
MADV_DONTNEED = 4
MADV_POPULATE_WRITE = 23
# /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
_PRESENT = np.uint64(1 << 63)
_SWAPPED = np.uint64(1 << 62)
_FILE_OR_SHARED = np.uint64(1 << 61)

_madvise = None
_pagemap_fd: Optional[int] = None


def enabled() -> bool:
    return os.environ.get("SFTMERGE_KEEP_INPUT_PAGES", "") in ("", "0")


def _libc_madvise():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_populate = None


def populate(address: int, nbytes: int) -> bool:
    """Allocate the whole pages inside [address, address + nbytes) of a private anonymous
    buffer in one call; their contents do not change. False where the system cannot
    (the pages then come one fault at a time, as before)."""
    global _populate
    if _populate is None:
        try:
            _populate = _libc_madvise()
        except (OSError, AttributeError, TypeError):
            _populate = False
    start = -(-address // PAGE) * PAGE
    end = (address + nbytes) // PAGE * PAGE
    if not _populate or end <= start:
        return False
    if _populate(start, end - start, MADV_POPULATE_WRITE) != 0:  # e.g. EINVAL before Linux 5.14
        _populate = False
        return False
    return True


def _open() -> bool:
    global _madvise, _pagemap_fd
    if _madvise is None:
        try:
            fn = _libc_madvise()
            _pagemap_fd = os.open("/proc/self/pagemap", os.O_RDONLY)
            _madvise = fn
        except (OSError, AttributeError, TypeError):  # no libc madvise or no pagemap (not Linux)
            _madvise = False
    return bool(_madvise)


def _page_range(t: torch.Tensor):
    """Whole pages inside the tensor's bytes, as (start address, length); None if none."""
    begin = t.data_ptr()
    start = -(-begin // PAGE) * PAGE
    end = (begin + t.numel() * t.element_size()) // PAGE * PAGE
    return (start, end - start) if end > start else None


def _only_clean_file_pages(start: int, length: int) -> bool:
    entries = np.frombuffer(os.pread(_pagemap_fd, length // PAGE * 8, start // PAGE * 8), dtype=np.uint64)
    if entries.size != length // PAGE:
        return False
    private = ((entries & _PRESENT) != 0) & ((entries & _FILE_OR_SHARED) == 0)
    return not (private.any() or ((entries & _SWAPPED) != 0).any())


def release(tensors: Iterable[Optional[torch.Tensor]]) -> int:
    """Drop the clean mapped pages of `tensors` from the process; returns the bytes dropped."""
    if not enabled() or not _open():
        return 0
    dropped = 0
    for t in tensors:
        if t is None or t.device.type != "cpu" or not t.is_contiguous():
            continue
        span = _page_range(t)
        if span is None:
            continue
        try:
            if _only_clean_file_pages(*span) and _madvise(span[0], span[1], MADV_DONTNEED) == 0:
                dropped += span[1]
        except OSError:
            continue
    return dropped
