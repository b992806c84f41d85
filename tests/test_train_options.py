"""The training options are generated from the config classes, and make passes only the knobs set."""

from __future__ import annotations

import shutil
import subprocess

import click
import pytest

from tests.common import REPO
from sftmerge.cli.config_options import take_overrides
from sftmerge.train.common_config import knobs
from sftmerge.train.config import SFTRunConfig
from sftmerge.train.dpo_config import DPORunConfig


def _commands():
    from sftmerge.cli.demo import TRAIN_FLAGS_LEFT_OUT, demo_command
    from sftmerge.cli.train import dpo, sft

    return [(sft, SFTRunConfig, ()), (dpo, DPORunConfig, ()), (demo_command, SFTRunConfig, TRAIN_FLAGS_LEFT_OUT)]


def _options(command):
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


@pytest.mark.parametrize("index", range(3))
def test_every_scalar_field_is_an_option_with_its_help_and_default(index):
    command, cls, left_out = _commands()[index]
    options = _options(command)
    fields = knobs(cls, left_out)
    assert {"learning_rate", "save_steps", "precision"} <= {k.name for k in fields}
    for knob in fields:
        option = options[knob.name]
        assert option.default is None, knob.name  # unset: the config file decides
        assert knob.help in option.help and f"config key {knob.name}" in option.help
        assert f"--{knob.name.replace('_', '-')}" in option.opts
    spellings = [s for p in command.params for s in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])]
    assert len(spellings) == len(set(spellings)), "an option spelling is used twice"


def test_historic_spellings_still_parse():
    from sftmerge.cli.demo import TRAIN_FLAGS_LEFT_OUT, demo_command
    from sftmerge.cli.train import dpo, sft

    args = ["c.yaml", "--orders", "2", "--epochs", "1", "--out", "r", "--base", "b", "--data", "gsm8k:d",
            "--num-samples", "5", "--l1", "0.1", "--order", "1"]
    params = sft.make_context("sft", args).params
    assert params["only"] == (1,)
    set_ = {k: v for k, v in take_overrides(SFTRunConfig, dict(params)).items() if v is not None}
    assert set_ == dict(orders=2, num_train_epochs=1, output_dir="r", base="b", data="gsm8k:d", num_samples=5, l1=0.1)
    params = demo_command.make_context("demo", ["--k", "4", "--checkpoint-steps", "3", "--seed", "7"]).params
    assert params["seed"] == 7  # the bootstrap's seed, not the training seed
    set_ = {k: v for k, v in take_overrides(SFTRunConfig, dict(params), TRAIN_FLAGS_LEFT_OUT).items() if v is not None}
    assert set_ == dict(orders=4, keep_checkpoint_steps=3)
    params = dpo.make_context("dpo", ["c.yaml", "--loss", "orpo", "--no-gradient-checkpointing"]).params
    assert params["loss"] == "orpo" and params["gradient_checkpointing"] is False and params["beta"] is None


def test_dpo_and_sft_share_the_optimisation_fields_and_their_checks():
    shared = {k.name for k in knobs(DPORunConfig)} & {k.name for k in knobs(SFTRunConfig)}
    assert {"learning_rate", "num_train_epochs", "max_length", "save_steps", "precision"} <= shared
    with pytest.raises(ValueError, match="per_device_train_batch_size must be at least 1"):
        DPORunConfig(per_device_train_batch_size=0)
    assert DPORunConfig().learning_rate == 5e-6 and SFTRunConfig().learning_rate == 5e-5


@pytest.mark.parametrize("on", [False, True])
def test_activation_checkpointing_is_what_the_config_says(on, tmp_path):
    """TRL's configs default it to True: the trainers must get the config's value either way."""
    import warnings

    from trl import DPOConfig

    from sftmerge.train.dpo import _args
    from sftmerge.train.trainer_inputs import sft_args

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # and by its current name
        sft = sft_args(SFTRunConfig(gradient_checkpointing=on), tmp_path, "fp32")
        dpo = DPOConfig(**_args(DPORunConfig(gradient_checkpointing=on), tmp_path, "fp32"))
    for args in (sft, dpo):
        assert args.activation_checkpointing is on and args.gradient_checkpointing is on


def _make(*args: str) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    proc = subprocess.run([make, "-n", "-s", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_passes_only_the_knobs_the_user_set():
    train = [ln for ln in _make("train").splitlines() if "sftmerge train sft" in ln][0]
    assert train.split() == [".venv/bin/sftmerge", "train", "sft", "train/configs/arith.yaml"]
    train = [ln for ln in _make("train", "K=5", "EPOCHS=1", "OUT=runs/x").splitlines() if "train sft" in ln][0]
    assert train.split()[4:] == ["--orders", "5", "--epochs", "1", "--out", "runs/x"]
    demo = [ln for ln in _make("demo").splitlines() if "sftmerge demo" in ln][0]
    assert demo.split()[2:] == ["--config", "train/configs/arith.yaml"]
    repro = [ln for ln in _make("reproduce", "DATA=gsm8k").splitlines() if "sftmerge demo" in ln][0]
    assert "--data gsm8k" in repro and "--out runs/reproduce-gsm8k" in repro and "--orders" not in repro
    paft = _make("paft")
    assert "--base" not in paft and "--l1" not in paft
