"""`sftmerge train dpo` checkpoints and resumes like an SFT order (tiny random Llama, a few steps)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.common import tiny_llama
from sftmerge.train.dpo import run_dpo
from sftmerge.train.dpo_config import DPORunConfig


pytestmark = pytest.mark.slow  # every test trains DPO steps (seconds each on a CPU)


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("dpo-tiny") / "base", dtype="bfloat16")


def dpo_config(base, out, **kw) -> DPORunConfig:
    # 6 pairs in batches of 2: 3 steps, a resume checkpoint at step 2 (DPO steps cost seconds on a CPU)
    d = dict(base=str(base), data="arith", num_samples=6, per_device_train_batch_size=2, learning_rate=1e-3,
             logging_steps=1, max_length=128, save_steps=2, output_dir=str(out))
    d.update(kw)
    return DPORunConfig(**d)


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3:  # the last step: after the checkpoint, before the model is saved
            raise KeyboardInterrupt


def test_dpo_resumes_from_its_checkpoint_with_the_uninterrupted_weights(tiny_bf16, tmp_path):
    whole = tmp_path / "whole"
    run_dpo(dpo_config(tiny_bf16, whole), echo=lambda s: None)
    assert json.loads((whole / "summary.json").read_text())["steps"] == 3

    out = tmp_path / "dpo"
    with pytest.raises(KeyboardInterrupt):
        run_dpo(dpo_config(tiny_bf16, out), callbacks=[Crash()])
    assert not out.exists()  # nothing that looks finished
    assert (tmp_path / ".dpo.work" / "trainer" / "checkpoint-2" / "trainer_state.json").is_file()
    lines = []
    summary = run_dpo(dpo_config(tiny_bf16, out), echo=lines.append)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 3
    assert "resumed at step 2" in lines[-1]
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".dpo.work").exists()
    assert run_dpo(dpo_config(tiny_bf16, out), echo=lines.append) == summary and "already finished" in lines[-1]


def test_dpo_work_folder_of_other_settings_is_not_resumed(tiny_bf16, tmp_path):
    out = tmp_path / "dpo"
    with pytest.raises(KeyboardInterrupt):
        run_dpo(dpo_config(tiny_bf16, out), callbacks=[Crash()])
    lines = []
    summary = run_dpo(dpo_config(tiny_bf16, out, beta=0.2), echo=lines.append)
    assert "left by a run with other settings; starting afresh" in lines[0]
    assert summary["resumed_from_step"] is None and summary["steps"] == 3
