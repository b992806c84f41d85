"""Preference training (DPO, or ORPO) of one base with TRL, for PAFT's parallel branch.

Independent of any SFT run: it needs only the base and the preference data, so it runs
beside `sftmerge train sft` (another command, job or machine). The output folder has
the same layout as an SFT order folder (HF model in the base's dtype with tokenizer and
chat template, config.yaml, train_log.jsonl, summary.json) and appears only when complete.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict

import torch

from sftmerge.io.fsutil import atomic_output_dir, write_json
from sftmerge.data.preference import load_preferences, to_dpo_dataset
from sftmerge.train.base import base_dtype, check_base
from sftmerge.train.config import dump_config
from sftmerge.train.dpo_config import DPORunConfig
from sftmerge.train.sft import common_trainer_args, resolve_precision, save_hf_folder, weights_fingerprint

SUMMARY = "summary.json"


def _args(config: DPORunConfig, work: Path, precision: str) -> Dict:
    return dict(common_trainer_args(config, work / "trainer", precision), beta=config.beta, save_strategy="no")


def _trainer(config: DPORunConfig, model, tokenizer, dataset, work: Path, precision: str):
    if config.loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(model=model, args=ORPOConfig(**_args(config, work, precision)),
                           train_dataset=dataset, processing_class=tokenizer)
    from trl import DPOConfig, DPOTrainer

    # ref_model None: TRL loads the starting model again from its folder as the frozen reference.
    return DPOTrainer(model=model, args=DPOConfig(**_args(config, work, precision)),
                      train_dataset=dataset, processing_class=tokenizer)


def run_dpo(config: DPORunConfig, overwrite: bool = False, echo: Callable[[str], None] = print) -> Dict:
    """Train config.base on config.data into config.output_dir; returns the summary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(config.output_dir)
    if (out / SUMMARY).is_file() and not overwrite:
        echo(f"{out}: already finished, skipped")
        return json.loads((out / SUMMARY).read_text())
    check_base(config.base)
    prefs = load_preferences(config.data, "train", config.num_samples, config.data_seed)
    precision = resolve_precision(config.precision)
    saved_dtype = base_dtype(config.base)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=torch.float32)
    fingerprint = weights_fingerprint(model)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:  # an unfinished or foreign folder is not replaced silently
        trainer = _trainer(config, model, tokenizer, to_dpo_dataset(prefs), tmp, precision)
        t0 = time.time()
        result = trainer.train()
        seconds = time.time() - t0
        save_hf_folder(trainer.accelerator.unwrap_model(trainer.model), tmp, saved_dtype, tokenizer)
        (tmp / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        log = trainer.state.log_history
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
        losses = [r["loss"] for r in log if "loss" in r]
        margins = [r[k] for r in log for k in ("rewards/margins",) if k in r]
        summary = {
            "loss_type": config.loss,
            "steps": trainer.state.global_step,
            "pairs": len(prefs),
            "epochs": config.num_train_epochs,
            "train_seconds": round(result.metrics.get("train_runtime", seconds), 2),
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
        write_json(tmp / SUMMARY, summary)
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
    loss = f"{summary['final_train_loss']:.4f}" if summary["final_train_loss"] is not None else "n/a"
    echo(f"{config.loss}: {summary['train_seconds']:.1f}s, final loss {loss}, {summary['steps']} steps -> {out}")
    return summary

