"""Models evaluated side by side in worker processes (eval/cpu_pool.py) give what one process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from tests.common import REPO, tiny_llama
from sftmerge.cli.main import main
from sftmerge.eval import cpu_pool


@pytest.fixture(scope="module")
def two_models(tiny_chat_model, tmp_path_factory):
    other = tiny_llama(tmp_path_factory.mktemp("pool") / "tiny-seed-1", seed=1)
    return [tiny_chat_model, other]


def _eval(models, out, *extra):
    args = ["eval", "--models", *map(str, models), "--tasks", "arith", "--limit", "4", "--max-new-tokens", "8",
            "--backend", "hf", "--out", str(out), *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.slow
def test_two_workers_give_the_results_of_one_process_and_a_failure_is_a_line(two_models, tmp_path):
    """Two models, one that cannot be read and a further job (the demo's output ensemble, a
    `Call`) on 2 workers: each result is what one process gives, the failure is a line."""
    from sftmerge.eval.cpu_pool import Call
    from sftmerge.eval.ensemble import evaluate_ensemble
    from sftmerge.eval.runner import evaluate_models
    from sftmerge.eval.tasks import EvalSettings

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in two_models[0].iterdir():  # a complete-looking folder whose weights cannot be read
        (broken / f.name).write_bytes(b"not safetensors" if f.suffix == ".safetensors" else f.read_bytes())
    members, pooled = [str(m) for m in two_models], tmp_path / "pooled"
    settings = EvalSettings(limit=4, max_new_tokens=8, cpu_workers=2)
    ensemble = Call("sftmerge.eval.ensemble:evaluate_ensemble", (members, ["arith"], settings, pooled),
                    dict(name="ens", summary=False), models=2)
    lines = []
    failures = evaluate_models([*members, str(broken)], ["arith"], settings, "hf", pooled, echo=lines.append,
                               check=False, calls=[("ens", ensemble)])
    assert any("on 2 worker processes" in line for line in lines), lines
    assert len(failures) == 1 and "broken" in failures[0], failures
    assert not (pooled / "broken" / "arith.json").exists()
    alone = _eval(two_models, tmp_path / "alone", "--cpu-workers", "1")
    assert alone.exit_code == 0 and "worker processes" not in alone.output, alone.output
    assert evaluate_ensemble(members, ["arith"], settings, tmp_path / "alone", name="ens", echo=lambda _: None) == []
    for name in [m.name for m in two_models] + ["ens"]:  # the others are evaluated all the same, as in one process
        a, b = ((tmp_path / x / name / "arith.samples.jsonl").read_text() for x in ("pooled", "alone"))
        assert a == b and a.count("\n") == 4, name
        metrics = [json.loads((tmp_path / x / name / "arith.json").read_text())["metrics"] for x in ("pooled", "alone")]
        assert metrics[0] == metrics[1]
    summary = json.loads((pooled / "summary.json").read_text())
    assert summary["models"] == ["ens", *(m.name for m in two_models)]
    assert (pooled / "summary.png").stat().st_size > 1000


def test_plan_pools_only_large_models_several_on_the_hf_backend(two_models):
    assert cpu_pool.plan(two_models, "hf", None) == 0  # tiny: a worker's start costs more than it saves
    assert cpu_pool.plan(two_models, "hf", 2) == 2
    assert cpu_pool.plan(two_models[:1], "hf", 2) == 0  # one model: nothing to share
    assert cpu_pool.plan(two_models, "vllm", 2) == 0


def _state(pid: int) -> str:
    """The process's state letter from /proc ('' once it is gone; 'Z': exited, not yet reaped)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_in_the_middle_of_a_job_ends_when_its_run_is_killed(tmp_path):
    """`kill -9` of the run (no `finally` runs) ends a worker that is busy with a long job, which
    would otherwise go on writing into the run's folder beside the rerun that resumes it."""
    (tmp_path / "napping.py").write_text(
        "import os, time\n"
        "def nap(seconds, echo):\n"
        "    echo(f'worker {os.getpid()}')\n"
        "    time.sleep(seconds)\n"
        "    return []\n")
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "from sftmerge.eval import cpu_pool\n"
         "cpu_pool.run([('nap', cpu_pool.Call('napping:nap', (120,)))], 1, echo=lambda s: print(s, flush=True))"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        worker = next(int(line.split()[1]) for line in parent.stdout if line.startswith("worker "))
        assert _state(worker) not in ("", "Z")
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _state(worker) not in ("", "Z") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _state(worker) in ("", "Z"), "the worker outlived its killed run"
    finally:
        parent.kill()
