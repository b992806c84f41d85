"""The data sets' own solutions pass the sandbox: the split into a program process and a
tests process, with only literals between them, changes no verdict. All of them in the
strongest mode this machine offers, a sample in the others."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sftmerge.eval import sandbox_bwrap
from sftmerge.eval.code import load_local_docs, reference_job
from sftmerge.eval.sandbox import Limits, run_jobs

STRONG_OK = sandbox_bwrap.problem() is None
BEST = "bubblewrap" if STRONG_OK else "weak"
OTHERS = ["weak"] if STRONG_OK else []  # the modes the full runs below do not use


def reference_data() -> Path:
    repo = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("SFTMERGE_SHARED_DATA", repo.parent / "shared" / "data"))
    if not (data / "humaneval").is_dir():
        pytest.skip(f"no shared data at {data}")
    return data


@pytest.mark.slow
def test_humaneval_reference_solutions_all_pass():
    docs = load_local_docs("humaneval", reference_data())
    outcomes = run_jobs([reference_job("humaneval", d) for d in docs], Limits(timeout_s=10), progress=False, mode=BEST)
    assert len(docs) == 164
    assert [d["task_id"] for d, o in zip(docs, outcomes) if not o.passed] == []


@pytest.mark.slow
def test_mbpp_reference_solutions_pass():
    # Every 5th task plus the ones that need the wire's special cases; all 500 with
    # SFTMERGE_FULL_REFERENCE=1 (about 25 s on 2 cores; docs/security.md quotes that run).
    docs = load_local_docs("mbpp", reference_data())
    assert len(docs) == 500
    if os.environ.get("SFTMERGE_FULL_REFERENCE") != "1":
        docs = [d for d in docs if d["task_id"] % 5 == 0 or d["task_id"] in (40, 88, 123, 367)]
    outcomes = run_jobs([reference_job("mbpp", d) for d in docs], Limits(timeout_s=5), progress=False, mode=BEST)
    failed = [d["task_id"] for d, o in zip(docs, outcomes) if not o.passed]
    print(f"MBPP test split ({BEST}): {len(docs) - len(failed)}/{len(docs)} pass; failing: {failed}")
    # Task 123 (amicable numbers below 9999) needs more than 5 s; all others pass.
    assert set(failed) <= {123}


@pytest.mark.parametrize("mode", OTHERS)
def test_a_sample_passes_in_the_other_modes(mode):
    data = reference_data()
    # MBPP 40 and 88 return Counters, 367 builds its inputs in set-up code
    docs = [("humaneval", d) for d in load_local_docs("humaneval", data)[::12]]
    docs += [("mbpp", d) for d in load_local_docs("mbpp", data)
             if d["task_id"] % 20 == 0 or d["task_id"] in (40, 88, 367)]
    outcomes = run_jobs([reference_job(t, d) for t, d in docs], Limits(timeout_s=10), progress=False, mode=mode)
    assert [d["task_id"] for (_, d), o in zip(docs, outcomes) if not o.passed] == []


@pytest.mark.parametrize("task", ["humaneval", "mbpp"])
def test_a_wrong_solution_fails(task):
    doc = load_local_docs(task, reference_data())[0]
    job = reference_job(task, {**doc, "canonical_solution": "    return None\n", "code": "def nothing():\n    pass\n"})
    assert run_jobs([job], Limits(timeout_s=5), progress=False, mode=BEST)[0].status == "failed"
