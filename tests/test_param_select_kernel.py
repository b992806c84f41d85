"""The selection kernel itself: exact copies, distribution, resampling, determinism."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from sftmerge.plugins.param_select import element_uniforms, select_elements


def _models(k=3, n=60_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) + 10 * i for i in range(k)]  # disjoint value ranges


def _picked(out, tensors):
    """Index of the model each output element came from (-1: none)."""
    which = torch.full(out.shape, -1, dtype=torch.int64)
    for k, t in enumerate(tensors):
        which[out == t] = k
    return which


def test_every_element_is_copied_whole_from_one_model():
    tensors = [t.reshape(200, 300) for t in _models()]
    out = select_elements(tensors, [1, 1, 1], element_uniforms(0, "w", 60_000))
    assert out.shape == (200, 300)
    assert (_picked(out.reshape(-1), [t.reshape(-1) for t in tensors]) >= 0).all()


def test_selection_frequencies_follow_weights():
    tensors = _models()
    weights = [1.0, 2.0, 3.0]
    out = select_elements(tensors, weights, element_uniforms(7, "w", 60_000))
    counts = torch.bincount(_picked(out, tensors), minlength=3).numpy()
    expected = [60_000 * w / 6 for w in weights]
    assert chisquare(counts, expected).pvalue > 1e-4
    # The same counts are far from a uniform choice: the test can tell them apart.
    assert chisquare(counts, [20_000] * 3).pvalue < 1e-12


def test_zero_weight_model_is_never_picked():
    tensors = _models()
    out = select_elements(tensors, [1.0, 0.0, 1.0], element_uniforms(1, "w", 60_000))
    counts = torch.bincount(_picked(out, tensors), minlength=3)
    assert counts[1] == 0 and counts[0] > 0 and counts[2] > 0


def _with_unchanged(n=60_000):
    """Base plus 3 models; model 0 is unchanged on the first half, all are on the last 1000."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(n, generator=g).to(torch.bfloat16)
    models = []
    for k in range(3):
        m = (base.float() + 0.5 + k).to(torch.bfloat16)  # clearly different from base
        models.append(m)
    models[0][: n // 2] = base[: n // 2]
    for m in models:
        m[-1000:] = base[-1000:]
    return base, models


def test_resample_leaves_no_base_equal_element_where_a_model_changed():
    base, models = _with_unchanged()
    u = element_uniforms(5, "w", base.numel())
    plain = select_elements(models, [1, 1, 2], u, base=base)
    assert (plain[: 30_000] == base[: 30_000]).any()  # without resampling some stay at base
    out = select_elements(models, [1, 1, 2], u, base=base, resample=True)
    some_changed = torch.stack([m != base for m in models]).any(0)
    assert not ((out == base) & some_changed).any()
    # Where no model changed anything, the base value stays.
    assert torch.equal(out[-1000:], base[-1000:])
    # Elements whose first draw was a changed model keep that draw.
    kept = plain != base
    assert torch.equal(out[kept], plain[kept])


@pytest.mark.parametrize("weights", [[1.0, 1.0, 2.0], [1.0, 1.0, 1.0], [3.0, 0.5, 0.5]])
def test_resample_redraws_with_renormalised_weights(weights):
    base, models = _with_unchanged()
    out = select_elements(models, weights, element_uniforms(9, "w", base.numel()), base=base, resample=True)
    half = slice(0, 30_000 - 1000)  # model 0 unchanged there; models 1, 2 changed
    which = _picked(out[half].float(), [m[half].float() for m in models])
    counts = torch.bincount(which[which >= 0], minlength=3).numpy()
    # Keeping a changed first draw and redrawing an unchanged one among the changed models
    # gives, overall, P(k) = w_k / (weight of the changed models).
    changed_weight = weights[1] + weights[2]
    n = counts.sum()
    assert counts[0] == 0 and n == 29_000
    assert chisquare(counts[1:], [n * weights[1] / changed_weight, n * weights[2] / changed_weight]).pvalue > 1e-4


def test_same_seed_same_output_other_seed_differs():
    tensors = _models()
    a = select_elements(tensors, [1, 1, 1], element_uniforms(11, "w", 60_000))
    b = select_elements(tensors, [1, 1, 1], element_uniforms(11, "w", 60_000))
    c = select_elements(tensors, [1, 1, 1], element_uniforms(12, "w", 60_000))
    d = select_elements(tensors, [1, 1, 1], element_uniforms(11, "other.weight", 60_000))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)  # the tensor name is part of the draw


def test_uniforms_are_splitmix64_and_do_not_depend_on_thread_count(monkeypatch):
    import numpy as np

    from sftmerge.plugins import workers
    from sftmerge.plugins.uniforms import splitmix64_bits, uniforms_numpy

    # SplitMix64's published first output from state 0.
    assert int(splitmix64_bits(0, np.arange(1))[0]) == 0xE220A8397B1DCDAF
    stream = element_uniforms(3, "x", 1_000_003)
    monkeypatch.setattr(workers, "BLOCK", 40_009)  # many blocks, none aligned to anything
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = stream.tensor()
        torch.set_num_threads(3)
        many = stream.tensor()
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)
    assert torch.equal(one, torch.from_numpy(uniforms_numpy(stream.key, stream.numel)))
    assert 0 <= float(one.min()) and float(one.max()) < 1 and abs(float(one.mean()) - 0.5) < 2e-3


@pytest.mark.parametrize(
    "weights, message",
    [([1, -1, 1], ">= 0"), ([0, 0, 0], "not all be 0")],
)
def test_bad_weights_are_rejected(weights, message):
    with pytest.raises(ValueError, match=message):
        select_elements(_models(), weights, element_uniforms(0, "w", 60_000))


def test_resample_without_base_is_rejected():
    with pytest.raises(ValueError, match="base"):
        select_elements(_models(), [1, 1, 1], element_uniforms(0, "w", 60_000), resample=True)


@pytest.mark.parametrize("resample", [False, True])
def test_reported_counts_are_the_true_origins(resample):
    from sftmerge.plugins.stats import SELECTION_STATS

    base, models = _with_unchanged()
    SELECTION_STATS.clear()
    out = select_elements(models, [1, 0.5, 2], element_uniforms(4, "t", base.numel()), base=base,
                          resample=resample, tensor_name="t", model_ids=["a", "b", "c"])
    row = SELECTION_STATS.tensors["t"]
    # Origins: the first model (in order) whose value equals the output; models have distinct values
    # except where they equal the base, and there every candidate equals the output.
    stacked = torch.stack([m == out for m in models])
    first = stacked.to(torch.int8).argmax(0)
    at_base = out == base
    assert row.equal_base_after == int(at_base.sum())
    distinct = ~at_base
    truth = torch.bincount(first[distinct], minlength=3).tolist()
    reported = [row.picks[k] for k in "abc"]
    # Base-equal elements are attributed to whichever model was drawn; compare the rest exactly.
    assert sum(reported) == base.numel()
    assert all(r >= t for r, t in zip(reported, truth))
    assert sum(reported) - sum(truth) == int(at_base.sum())


def _edge_case_inputs(dtype, n_models, n=20_011, seed=0):
    """Base and models with unchanged elements, exact and signed zeros, and NaNs."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g).to(dtype)
    base[::97] = 0.0
    base[5::101] = float("nan")
    # The NaN with the smallest payload, just above +inf's bit pattern.
    bits = base.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[base.element_size()])
    bits[7::103] = torch.tensor(float("inf"), dtype=dtype).view(bits.dtype) + 1
    models = []
    for _ in range(n_models):
        moved = (base.double() + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype)
        m = torch.where(torch.rand(n, generator=g) < 0.4, base, moved)
        flip_zero = (torch.rand(n, generator=g) < 0.3) & (base == 0)
        models.append(torch.where(flip_zero, torch.zeros((), dtype=dtype).neg(), m))  # -0 == +0 for torch
    return base, models


def _edge_uniforms(weights, n, seed=0):
    """Uniforms including each interval edge in float32 and its two neighbours."""
    from sftmerge.plugins.param_select import _interval_edges

    u = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    edges = torch.tensor(_interval_edges(weights)[1:-1], dtype=torch.float32)
    near = torch.cat([edges, torch.nextafter(edges, torch.zeros(())), torch.nextafter(edges, torch.ones(()))])
    u[: near.numel() * 50] = near.repeat(50)
    return u


@pytest.mark.parametrize(
    "dtype, weights",
    [
        (torch.bfloat16, [1, 1, 1]),
        (torch.bfloat16, [1.0, 2.0, 3.0]),
        (torch.bfloat16, [0.3, 0, 0.7]),
        (torch.bfloat16, [0.1, 0.2, 0.3, 0.15, 0.25]),
        (torch.float16, [2, 0, 0, 1]),
        (torch.float32, [1, 1, 1]),
        (torch.float64, [1, 2]),
    ],
)
def test_fused_cpu_kernel_is_bit_identical_to_the_torch_path(dtype, weights):
    """The fused kernel runs on CPU, the torch path on GPUs: same bits, same report, in every mode."""
    from sftmerge.plugins import select_kernel
    from sftmerge.plugins.stats import SELECTION_STATS

    if not select_kernel.available():
        pytest.skip("numba is not installed")
    base, models = _edge_case_inputs(dtype, len(weights))
    int_view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[base.element_size()]
    # Explicit uniforms on the interval edges, and the stream computed inside the kernel.
    for u, with_base, resample in itertools.product(
        (_edge_uniforms(weights, base.numel()), element_uniforms(1, "t", base.numel())),
        (False, True), (False, True),
    ):
        if resample and not with_base:
            continue
        results = {}
        for kernel in ("torch", "cpu"):
            SELECTION_STATS.clear()
            out = select_elements(models, weights, u, base=base if with_base else None, resample=resample,
                                  tensor_name="t", kernel=kernel)
            results[kernel] = (out.view(int_view), SELECTION_STATS.tensors["t"])
        assert torch.equal(results["torch"][0], results["cpu"][0]), (with_base, resample)
        assert results["torch"][1] == results["cpu"][1], (with_base, resample)
    # The inputs exercise the resampling rule: some elements redrawn, some left at the base.
    row = results["cpu"][1]
    assert row.equal_base_before > row.equal_base_after > 0


@pytest.mark.parametrize("threads, block", [(1, None), (2, 997), (3, 4_096), (2, 70_000)])
def test_fused_kernel_does_not_depend_on_threads_or_blocks(monkeypatch, threads, block):
    """Blocks of any size on any number of threads: the same bits and the same report."""
    from sftmerge.plugins import select_kernel, workers
    from sftmerge.plugins.stats import SELECTION_STATS

    if not select_kernel.available():
        pytest.skip("numba is not installed")
    base, models = _edge_case_inputs(torch.bfloat16, 3, n=150_001)
    weights = [1.0, 2.0, 3.0]
    u = element_uniforms(2, "t", base.numel())
    results = []
    old = torch.get_num_threads()
    try:
        for n_threads, size in ((1, None), (threads, block)):
            torch.set_num_threads(n_threads)
            if size:
                monkeypatch.setattr(workers, "BLOCK", size)
            for with_base, resample in ((False, False), (True, False), (True, True)):
                SELECTION_STATS.clear()
                out = select_elements(models, weights, u, base=base if with_base else None, resample=resample,
                                      tensor_name="t", kernel="cpu")
                results.append((n_threads, size, out.view(torch.int16), SELECTION_STATS.tensors["t"]))
    finally:
        torch.set_num_threads(old)
    single, split = results[:3], results[3:]
    for a, b in zip(single, split):
        assert torch.equal(a[2], b[2]) and a[3] == b[3]


def test_a_failing_block_fails_the_call_and_leaves_the_threads_usable():
    from sftmerge.plugins import workers

    done = []

    def fn(start, stop, slot):
        if start == 30:
            raise RuntimeError("block at 30")
        done.append((start, stop))

    with pytest.raises(RuntimeError, match="block at 30"):
        workers.run_blocks(100, fn, threads=2, block=10)
    assert (30, 40) not in done
    seen = []
    workers.run_blocks(95, lambda start, stop, slot: seen.append((start, stop, slot)), threads=2, block=10)
    assert sorted(s[:2] for s in seen) == [(i, min(i + 10, 95)) for i in range(0, 95, 10)]
    assert {s[2] for s in seen} <= {0, 1}


def test_populate_allocates_a_fresh_buffers_pages_and_keeps_written_contents():
    import ctypes
    import mmap

    from sftmerge.plugins import page_release

    def rss_anon_kib():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon"))

    size = 32 << 20
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # no page allocated yet
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    buf[:5] = b"kept!"  # one page written before
    before = rss_anon_kib()
    if not page_release.populate(address, size):
        pytest.skip("MADV_POPULATE_WRITE is not available (Linux < 5.14)")
    assert rss_anon_kib() - before > 0.9 * size // 1024  # the whole range is resident now
    assert buf[:5] == b"kept!" and buf[size - 1] == 0
    assert not page_release.populate(address + 1, 100)  # no whole page inside: nothing to do
    del address
    buf.close()
