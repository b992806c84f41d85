"""Dropping merged inputs' mapped pages: lossless, and only where it is lossless."""

from __future__ import annotations

import pytest
import safetensors
import torch
from safetensors.torch import save_file

from sftmerge.plugins import page_release


def _rss_file_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile"))


@pytest.fixture
def mapped(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "shard.safetensors"
    save_file({"a": torch.randn(2048, 2048, generator=g), "b": torch.randn(2048, 2048, generator=g)}, str(path))
    handle = safetensors.safe_open(str(path), framework="pt", device="cpu")  # as mergekit opens shards
    return handle


def test_clean_file_pages_are_dropped_and_read_back_unchanged(mapped):
    a = mapped.get_tensor("a")
    expected = a.clone()
    float(a.sum())  # read every page
    before = _rss_file_kib()
    dropped = page_release.release([a])
    assert dropped >= a.numel() * 4 - 2 * page_release.PAGE
    assert _rss_file_kib() < before - dropped // 1024 // 2  # gone from the resident set
    assert torch.equal(a, expected)  # read again from the page cache


def test_written_mapped_pages_and_anonymous_memory_are_left_alone(mapped):
    b = mapped.get_tensor("b")
    b[0, :1500] = 1.0  # a private copy of the first pages: dropping them would lose it
    written = b.clone()
    anon = torch.randn(1024, 1024)
    anon_copy = anon.clone()
    assert page_release.release([b, anon, None]) == 0
    assert torch.equal(b, written) and torch.equal(anon, anon_copy)


def test_can_be_turned_off(mapped, monkeypatch):
    monkeypatch.setenv("SFTMERGE_KEEP_INPUT_PAGES", "1")
    a = mapped.get_tensor("a")
    float(a.sum())
    assert page_release.release([a]) == 0
