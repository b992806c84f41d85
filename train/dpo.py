"""Preference training (DPO, or ORPO) of one base with TRL, for PAFT's parallel branch.

Independent of any SFT run: it needs only the base and the preference data, so it runs
beside `sftmerge train sft` (another command, job or machine). The output folder has
the same layout as an SFT order folder (HF model in the base's dtype with tokenizer and
chat template, config.yaml, train_log.jsonl, summary.json) and appears only when complete.
Like an SFT order it trains in a work folder beside the output (`.OUT.work/`) with a
resume checkpoint every `save_steps` steps, so a rerun of the same command resumes from
the newest complete checkpoint (train/checkpoints.py).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Sequence

from sftmerge.data.preference import load_preferences, to_dpo_dataset
from sftmerge.io.fsutil import atomic_output_dir, check_output_dir, clean_stale, write_json, write_text
from sftmerge.io.layout import SUMMARY_NAME, work_folder
from sftmerge.train.base import base_dtype, check_base
from sftmerge.train.bf16_gemm import bf16_gemms
from sftmerge.train.checkpoints import resume_point
from sftmerge.train.common_config import dump_config
from sftmerge.train.dpo_config import DPORunConfig
from sftmerge.train.fingerprint import weights_fingerprint
from sftmerge.train.hardware import check_precision, resolve_precision, weights_dtype
from sftmerge.train.saving import save_hf_folder
from sftmerge.train.trainer_inputs import checkpoint_args, common_trainer_args

SUMMARY = SUMMARY_NAME
WORK_CONFIG = "config.yaml"  # the settings the work folder's checkpoints were made with
# What a finished run's folder held before outputs carried fsutil's marker: such a folder may be overwritten.
LEGACY_MARKS = (SUMMARY, "config.yaml", "train_log.jsonl")


def _prepare_work(config: DPORunConfig, work: Path, echo: Callable[[str], None]) -> None:
    """The work folder for these settings: an interrupted run's is kept (to resume) unless its settings differ."""
    stored = work / WORK_CONFIG
    if work.is_dir() and (not stored.is_file() or stored.read_text(encoding="utf-8") != dump_config(config)):
        echo(f"{work}: left by a run with other settings; starting afresh")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_text(stored, dump_config(config))


def _args(config: DPORunConfig, work: Path, precision: str) -> Dict:
    return dict(common_trainer_args(config, work / "trainer", precision), **checkpoint_args(config), beta=config.beta)


def _trainer(config: DPORunConfig, model, tokenizer, dataset, work: Path, precision: str, callbacks: Sequence):
    if config.loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(model=model, args=ORPOConfig(**_args(config, work, precision)),
                           train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks))
    from trl import DPOConfig, DPOTrainer

    # ref_model None: TRL loads the starting model again from its folder as the frozen reference.
    return DPOTrainer(model=model, args=DPOConfig(**_args(config, work, precision)),
                      train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks))


def _summary(config: DPORunConfig, trainer, pairs: int, seconds: float, start_step: int, precision: str,
             saved_dtype, fingerprint: str) -> Dict:
    log = trainer.state.log_history
    losses = [r["loss"] for r in log if "loss" in r]
    margins = [r["rewards/margins"] for r in log if "rewards/margins" in r]
    return {
        "loss_type": config.loss,
        "steps": trainer.state.global_step,
        "resumed_from_step": start_step or None,
        "pairs": pairs,
        "epochs": config.num_train_epochs,
        "train_seconds": round(seconds, 2),
        "final_train_loss": losses[-1] if losses else None,
        "final_reward_margin": margins[-1] if margins else None,
        "precision": precision,
        "saved_dtype": str(saved_dtype).removeprefix("torch."),
        "base": config.base,
        "initial_weights_fingerprint": fingerprint,
        "data": config.data,
        "data_seed": config.data_seed,
        "seed": config.seed,
    }


def run_dpo(config: DPORunConfig, overwrite: bool = False, echo: Callable[[str], None] = print,
            callbacks: Sequence = ()) -> Dict:
    """Train config.base on config.data into config.output_dir; returns the summary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(config.output_dir)
    work = work_folder(out)
    if (out / SUMMARY).is_file() and not overwrite:
        echo(f"{out}: already finished, skipped")
        return json.loads((out / SUMMARY).read_text())
    # Before anything is loaded: the base, the data, and whether OUT may be written at all.
    check_precision(resolve_precision(config.precision), config.allow_emulated_bf16)
    check_base(config.base)
    prefs = load_preferences(config.data, "train", config.num_samples, config.data_seed)
    clean_stale(out)  # temp folders of a run killed while writing OUT
    # An unfinished or foreign OUT is not replaced silently.
    check_output_dir(out, overwrite, inputs=[config.base], legacy_marks=LEGACY_MARKS)
    _prepare_work(config, work, echo)

    precision = resolve_precision(config.precision)
    saved_dtype = base_dtype(config.base)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=weights_dtype(precision))
    fingerprint = weights_fingerprint(model)
    trainer = _trainer(config, model, tokenizer, to_dpo_dataset(prefs), work, precision, callbacks)
    resume, start_step = resume_point(work / "trainer", echo=echo)
    t0 = time.time()
    with bf16_gemms(precision):
        result = trainer.train(resume_from_checkpoint=resume)
    seconds = result.metrics.get("train_runtime", time.time() - t0)

    with atomic_output_dir(out, overwrite=overwrite, inputs=[config.base], legacy_marks=LEGACY_MARKS) as tmp:
        save_hf_folder(trainer.accelerator.unwrap_model(trainer.model), tmp, saved_dtype, tokenizer)
        write_text(tmp / "config.yaml", dump_config(config))
        write_text(tmp / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in trainer.state.log_history))
        summary = _summary(config, trainer, len(prefs), seconds, start_step, precision, saved_dtype, fingerprint)
        write_json(tmp / SUMMARY, summary)
    shutil.rmtree(work, ignore_errors=True)
    loss = f"{summary['final_train_loss']:.4f}" if summary["final_train_loss"] is not None else "n/a"
    resumed = f", resumed at step {start_step}" if start_step else ""
    echo(f"{config.loss}: {summary['train_seconds']:.1f}s, final loss {loss}, {summary['steps']} steps{resumed} -> {out}")
    return summary
