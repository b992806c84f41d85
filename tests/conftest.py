"""Shared fixtures: tiny synthetic Llama families written once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (CI), or wherever SFTMERGE_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("SFTMERGE_SHARED_DATA", REPO.parent / "shared" / "data"))
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """bf16 base + 3 sub-models with ~70% of elements changed (rest exactly equal)."""
    from sftmerge.synthetic import FamilySpec, write_family

    out = tmp_path_factory.mktemp("family")
    write_family(out, FamilySpec(k=3, seed=0, dtype="bfloat16"))
    return out


@pytest.fixture(scope="session")
def other_family(tmp_path_factory):
    """A family of a different width, for shape-mismatch errors."""
    from sftmerge.synthetic import FamilySpec, write_family

    out = tmp_path_factory.mktemp("wide")
    write_family(out, FamilySpec(k=2, seed=1, hidden_size=96, intermediate_size=160))
    return out


def tool(name: str) -> str:
    """Path of a console script installed beside this interpreter (the venv's)."""
    path = BIN / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}"
    return str(path)


@pytest.fixture
def clean_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env
