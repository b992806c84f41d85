"""Several processes on CPU: `sftmerge train sft` under `accelerate launch` with 2 processes over
gloo, once with the shipped ddp.yaml and once with fsdp.yaml (torch's FSDP2; see
tests/distributed_launch.py for the one accelerate device check lifted on CPU). Each launch is
interrupted right after its checkpoint at step 2, runs the same command again and resumes; its
results must be those of one process with the same global batch and no interruption: the weights,
the saved folder, the kept snapshot and the per-sample losses, scored a share per process.
Where deepspeed is importable, zero2.yaml and zero3.yaml are launched the same way (DeepSpeed's
CPU accelerator); the project's environment does not install it, so those tests skip there.

A launch costs 20-35 s on 2 cores (every process imports torch, transformers and TRL), so the
module fixture starts both launches side by side, trains the one-process references meanwhile,
and the tests below only read what they left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.common import REPO, tool
from sftmerge.eval.losses import sample_losses
from sftmerge.train.config import SFTRunConfig, dump_config
from sftmerge.train.sft import run_multi_order

pytestmark = pytest.mark.slow
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install deepspeed)")

ORDER = 1
# 8 samples x 2 epochs: 4 optimizer steps of a global batch of 4 (2 processes x 2, or 1 x 4);
# the resume checkpoint and the kept snapshot are at step 2.
COMMON = dict(data="arith", num_samples=8, orders=2, num_train_epochs=2, learning_rate=1e-3, logging_steps=1,
              max_length=96, save_steps=2)
RUNS = {  # what each one-process reference trains with, besides COMMON
    "ddp": dict(l1=0.01),  # PAFT's L1 delta penalty: whole parameters on every process
    "fsdp": dict(keep_checkpoint_steps=2, sample_losses_at_checkpoints=True),
}
REFERENCE = {"ddp": "ddp", "fsdp": "fsdp", "zero2": "fsdp", "zero3": "fsdp"}  # launch -> its reference's settings
HOOK = {"fsdp": "SFTMERGE_TEST_FSDP_ON_CPU", "zero2": "SFTMERGE_TEST_DEEPSPEED_ON_CPU",
        "zero3": "SFTMERGE_TEST_DEEPSPEED_ON_CPU"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(name: str, base: Path, root: Path) -> subprocess.Popen:
    config = root / f"{name}.yaml"
    config.write_text(dump_config(SFTRunConfig(base=str(base), output_dir=str(root / name),
                                               per_device_train_batch_size=2, **COMMON, **RUNS[REFERENCE[name]])))
    # deepspeed may be importable through PYTHONPATH only; the other launches run without it, as installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" or name.startswith("zero")}
    env.update(OMP_NUM_THREADS="1", SFTMERGE_TEST_STOP_AT="2")
    if name in HOOK:
        env[HOOK[name]] = "1"
    cmd = [tool("accelerate"), "launch", "--config_file", str(REPO / "train" / "accelerate" / f"{name}.yaml"),
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
           str(REPO / "tests" / "distributed_launch.py"), "train", "sft", str(config), "--order", str(ORDER)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(launches: dict, root: Path) -> dict:
    out = {}
    for name, proc in launches.items():
        stdout, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, f"{name}:\n{stderr[-4000:]}"
        out[name] = (root / name, stdout)
    return out


@pytest.fixture(scope="module")
def runs(tiny_chat_model, tmp_path_factory):
    """{name: (run folder, stdout)} for "ddp", "fsdp" (2 processes) and "one-ddp", "one-fsdp" (1 process)."""
    root = tmp_path_factory.mktemp("distributed")
    launches = {name: _launch(name, tiny_chat_model, root) for name in RUNS}
    out = {}
    for name, extra in RUNS.items():
        config = SFTRunConfig(base=str(tiny_chat_model), output_dir=str(root / f"one-{name}"),
                              per_device_train_batch_size=4, **COMMON, **extra)
        run_multi_order(config, only=[ORDER], echo=lambda _: None, score_samples=sample_losses)
        out[f"one-{name}"] = (root / f"one-{name}", "")
    return {**out, **_finish(launches, root)}


@pytest.fixture(scope="module")
def zero_runs(runs, tiny_chat_model, tmp_path_factory):
    """`runs` and "zero2", "zero3" (DeepSpeed, 2 processes)."""
    root = tmp_path_factory.mktemp("deepspeed")
    return {**runs, **_finish({name: _launch(name, tiny_chat_model, root) for name in ("zero2", "zero3")}, root)}


def _order(runs, name) -> Path:
    return runs[name][0] / f"order-{ORDER}"


def _summary(runs, name) -> dict:
    return json.loads((_order(runs, name) / "summary.json").read_text())


def _lines(runs, name, prefix) -> list:
    return [json.loads(ln[len(prefix):]) for ln in runs[name][1].splitlines() if ln.startswith(prefix)]


def _close(a: dict, b: dict, what: str, outliers: int = 0) -> None:
    """Every element within 1e-4 relative and 1e-5 absolute, but for at most `outliers`, which
    stay within the learning rate (1e-3): AdamW moves an element by at most about lr per step."""
    assert a.keys() == b.keys(), what
    off = 0
    for n in a:
        assert a[n].dtype == b[n].dtype and a[n].shape == b[n].shape, (what, n)
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=COMMON["learning_rate"] if outliers else 1e-5,
                                   msg=f"{what}: {n} differs by up to {float((a[n] - b[n]).abs().max()):.2e}")
        off += int((~torch.isclose(a[n], b[n], rtol=1e-4, atol=1e-5)).sum())
    assert off <= outliers, f"{what}: {off} elements off by more than 1e-5"


LAUNCHED = ["ddp", "fsdp", pytest.param("zero2", marks=needs_deepspeed), pytest.param("zero3", marks=needs_deepspeed)]
SHARDED = ["fsdp", pytest.param("zero2", marks=needs_deepspeed), pytest.param("zero3", marks=needs_deepspeed)]


@pytest.fixture
def launched(request, name):
    """The runs that hold launch `name` (the DeepSpeed ones are launched only when asked for)."""
    return request.getfixturevalue("zero_runs" if name.startswith("zero") else "runs")


def _reference(name) -> str:
    return f"one-{REFERENCE[name]}"


@pytest.mark.parametrize("name", LAUNCHED)
def test_parameters_were_held_as_the_strategy_says(launched, name):
    """FSDP2 trained DTensor shards and ZeRO-3 partitions, about half of the elements on each
    process; DDP and ZeRO-2 whole parameters (summary.json, taken at the first step)."""
    got, one = _summary(launched, name)["distributed"], _summary(launched, "one-fsdp")["distributed"]
    n = one["parameters"]
    whole = {"fsdp_version": None, "zero_stage": None, "parameters": n, "sharded_parameters": 0, "sharded_as": None,
             "local_share": 1.0}
    assert one == {"type": "NO", **whole}
    expected = {
        "ddp": {**whole, "type": "MULTI_CPU"},
        "fsdp": {**whole, "type": "FSDP", "fsdp_version": 2, "sharded_parameters": n, "sharded_as": "DTensor"},
        "zero2": {**whole, "type": "DEEPSPEED", "zero_stage": 2},
        "zero3": {**whole, "type": "DEEPSPEED", "zero_stage": 3, "sharded_parameters": n,
                  "sharded_as": "ZeRO-3 partition"},
    }[name]
    share, whole_share = got.pop("local_share"), expected.pop("local_share")
    assert 0.45 < share < 0.55 if expected["sharded_parameters"] else share == whole_share
    assert got == expected


@pytest.mark.parametrize("name", LAUNCHED)
def test_interrupted_run_resumes_to_the_one_process_weights(launched, name, tiny_chat_model):
    [left] = _lines(launched, name, "interrupted: ")
    snapshots = ["step-2"] if RUNS[REFERENCE[name]].get("keep_checkpoint_steps") else []
    assert left == {"orders": [], "checkpoints": ["checkpoint-2"], "snapshots": snapshots}  # nothing published
    s, ref = _summary(launched, name), _summary(launched, _reference(name))
    assert (s["processes"], s["steps"], s["resumed_from_step"]) == (2, 4, 2)
    assert s["initial_weights_fingerprint"] == ref["initial_weights_fingerprint"]  # the base, loaded whole
    assert launched[name][1].count(f"order-{ORDER}:") == 1  # one summary line, from the main process
    one = load_file(str(_order(launched, _reference(name)) / "model.safetensors"))
    # L1's kink at w = w0 (its gradient's sign) turns float noise into a step of the other sign
    # for the odd element that training left at its base value: 2 of 1.6M elements here.
    _close(load_file(str(_order(launched, name) / "model.safetensors")), one, name,
           outliers=8 if name == "ddp" else 0)
    base = load_file(str(tiny_chat_model / "model.safetensors"))
    assert any(not torch.allclose(one[k], base[k]) for k in one)  # training moved the weights
    ours, theirs = (json.loads((_order(launched, n) / "order.json").read_text()) for n in (name, _reference(name)))
    assert ours["epochs"] == theirs["epochs"] and ours["global_batch"] == theirs["global_batch"] == 4


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_runs_save_the_same_folder_and_snapshot_as_one_process(launched, name):
    ours, theirs = _order(launched, name), _order(launched, _reference(name))
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(ours) == files(theirs)
    assert "checkpoints/step-2/model.safetensors" in files(ours)
    for f in ("config.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (ours / f).read_text() == (theirs / f).read_text(), f
    snap = "checkpoints/step-2/model.safetensors"
    _close(load_file(str(ours / snap)), load_file(str(theirs / snap)), f"{name} snapshot step-2")
    assert not (launched[name][0] / f".order-{ORDER}.work").exists()  # work folder gone once published


@pytest.mark.parametrize("name", LAUNCHED)
def test_sample_losses_are_scored_by_every_process_and_gathered(launched, name):
    rows = lambda n: [json.loads(x) for x in (_order(launched, n) / "sample_losses.jsonl").read_text().splitlines()]  # noqa: E731
    ours, theirs = rows(name), rows(_reference(name))
    assert len(ours) == len(theirs) == 8
    keys = ("sample", "id", "position", "tokens")
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() and {k: a[k] for k in keys} == {k: b[k] for k in keys}
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        for step in b.get("loss_at_step", {}):
            assert a["loss_at_step"][step] == pytest.approx(b["loss_at_step"][step], rel=1e-4)
    folders = ["final", "step-2"] if "loss_at_step" in theirs[0] else ["final"]
    scored = sorted((r["folder"], r["rank"], r["rows"]) for r in _lines(launched, name, "scored: "))
    assert scored == sorted((f, rank, 4) for f in folders for rank in (0, 1))  # 4 rows each, never 8 on one


def test_ddp_trains_the_l1_penalty_on_every_process(runs):
    s = _summary(runs, "ddp")
    assert s["l1"] == 0.01
    log = [json.loads(x) for x in (_order(runs, "ddp") / "train_log.jsonl").read_text().splitlines()]
    penalties = [r["l1_penalty"] for r in log if "l1_penalty" in r]
    # Steps 1-2 before the interruption, 3-4 after it; zero at step 1 (the weights start at the base).
    assert len(penalties) == 4 and penalties[0] == 0 and min(penalties[1:]) > 0
    one = [json.loads(x) for x in (_order(runs, "one-ddp") / "train_log.jsonl").read_text().splitlines()]
    for key in ("loss", "l1_penalty"):  # step by step as one process trains, the interruption between 2 and 3
        assert [r[key] for r in log if key in r] == pytest.approx([r[key] for r in one if key in r], rel=1e-5)
    assert (runs["ddp"][0] / "recipes" / "select.yml").is_file()
