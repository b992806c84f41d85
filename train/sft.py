"""Multi-order SFT: the same base fine-tuned K times, identical but for the data order.

Each order k trains with TRL's SFTTrainer (loss on the response tokens only) in a work
folder `RUN/.order-k.work/` and only then becomes `RUN/order-k/`, so a folder named
order-k is always a finished model. A rerun of the same command skips finished orders
and resumes an interrupted one from its newest complete checkpoint. Runs under
`accelerate launch` unchanged: the data order is that of the optimizer steps' global
batches, and only the main process writes the run folder's files.

Per-sample losses are an evaluation: the caller hands in `score_samples`
(sftmerge.eval.losses.sample_losses) and training calls it on each finished order, from
the saved folder; under several processes each scores a share of the samples and the main
process gathers them. Under FSDP/DeepSpeed the saved model and the kept snapshots are
gathered by every process (collective) and written by the main one.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from sftmerge.data.pairs import Pair, load_pairs
from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import fsync_dir, fsync_tree
from sftmerge.io.layout import RunLayout, number_of, order_name
from sftmerge.train.base import base_dtype, check_base
from sftmerge.train.bf16_gemm import bf16_gemms
from sftmerge.train.checkpoints import resume_point
from sftmerge.train.config import SFTRunConfig
from sftmerge.train.fingerprint import weights_fingerprint
from sftmerge.train.hardware import check_precision, process_state, resolve_precision, weights_dtype
from sftmerge.train.order import epoch_orders
from sftmerge.train.records import OrderOutcome, Scorer, score_order, write_records
from sftmerge.train.run_folder import prepare_run, write_run_recipes
from sftmerge.train.saving import merged_copy, save_hf_folder
from sftmerge.train.strategy import check_strategy
from sftmerge.train.trainer_inputs import sft_args, training_dataset

STAGED = "final"  # RUN/.order-k.work/final/: the order's folder until it is renamed into place


def _lora_config(config: SFTRunConfig):
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")


def _tidy_staged(staged: Path) -> None:
    """Drop what a killed run left half-written in the staged folder; finished snapshots stay
    (training resumes past the steps that wrote them)."""
    if not staged.is_dir():
        return
    snapshots = RunLayout.snapshots(staged)
    for p in staged.iterdir():
        if p != snapshots:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if snapshots.is_dir():
        for p in snapshots.iterdir():
            if number_of(p) is None:  # step-N.tmp: a snapshot that was being written
                shutil.rmtree(p, ignore_errors=True)


def _publish(staged: Path, final: Path, work: Path) -> None:
    """Make the staged folder RUN/order-k/ (on disk first), then drop the work folder."""
    fsync_tree(staged)
    if final.exists():
        shutil.rmtree(final)
    staged.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(work, ignore_errors=True)


def train_order(config: SFTRunConfig, k: int, pairs: Sequence[Pair], run: RunLayout, callbacks: Sequence = (),
                score_samples: Optional[Scorer] = None, echo: Callable[[str], None] = print) -> Dict:
    """Train order k into RUN/order-k/ (resuming its work folder if there is one)."""
    state = process_state()
    work, final = run.order_work(k), run.order(k)
    staged = work / STAGED
    if state.is_main_process:
        _tidy_staged(staged)
        staged.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    outcome, dataset = _fit(config, k, pairs, work, staged, callbacks, echo, state)
    # Each process loads the saved folder and scores a share of the samples; the main process gets them all.
    _whole_models_again()
    scores = score_order(score_samples, staged, dataset, config.sample_losses_at_checkpoints, state) \
        if score_samples else None
    if state.is_main_process:
        write_records(outcome, staged, scores)
        _publish(staged, final, work)
    state.wait_for_everyone()
    return json.loads(RunLayout.summary(final).read_text())


def _whole_models_again() -> None:
    """Release what a finished trainer left (its model, shards and optimizer state are unreferenced
    by then), and stop transformers from partitioning the models it loads next: once a ZeRO-3
    trainer has run in this process, DeepSpeed's config stays registered and from_pretrained
    would load the base (its fingerprint included) and the scorer's model as empty ZeRO-3
    partitions. A fresh process loads them whole; so does this one after an earlier order or
    an interrupted run. Each trainer registers the config again for its own training."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    unset_hf_deepspeed_config()


def _fit(config: SFTRunConfig, k: int, pairs: Sequence[Pair], work: Path, staged: Path, callbacks: Sequence,
         echo: Callable[[str], None], state) -> Tuple[OrderOutcome, object]:
    """Train (or resume) order k and save the model into `staged` (gathered by every process,
    written by the main one); returns the outcome and the prepared training dataset."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftmerge.train.trainers import OrderedSFTTrainer, ParameterLayout, Snapshots, parameter_layout

    _whole_models_again()
    precision = resolve_precision(config.precision)
    saved_dtype = base_dtype(config.base)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    # In the dtype training updates (transformers 5 always loads through the meta device:
    # one copy of the weights in host memory, never a random init first).
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=weights_dtype(precision))
    fingerprint = weights_fingerprint(model)

    global_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * state.num_processes
    orders = epoch_orders(len(pairs), config.num_train_epochs, config.order_seed, k, config.order_mode,
                          global_batch, config.reshuffle_each_epoch)
    trainer = OrderedSFTTrainer(
        model=model,
        args=sft_args(config, work / "trainer", precision),
        train_dataset=training_dataset(config, pairs),
        processing_class=tokenizer,
        peft_config=_lora_config(config),
        epoch_orders=orders,
        l1=config.l1,
        pack_rows=config.pack_rows,
        callbacks=list(callbacks),
    )
    if len(trainer.train_dataset) != len(pairs):
        raise SftmergeError(f"order {k}: {len(pairs)} pairs became {len(trainer.train_dataset)} training rows")
    if config.keep_checkpoint_steps:
        trainer.add_callback(Snapshots(trainer, staged, config.keep_checkpoint_steps, saved_dtype, tokenizer))
    layout = ParameterLayout(trainer.accelerator)
    trainer.add_callback(layout)

    resume, start_step = resume_point(work / "trainer", tidy=state.is_main_process, echo=echo)
    state.wait_for_everyone()
    t0 = time.time()
    with bf16_gemms(precision):
        result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0

    # Collective under FSDP/DeepSpeed; DeepSpeed needs its engine (model_wrapped), not the module.
    full_sd = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if state.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if config.lora:
            save_hf_folder(merged_copy(model), staged, saved_dtype, tokenizer)
        else:
            save_hf_folder(model, staged, saved_dtype, tokenizer, state_dict=full_sd)
    del full_sd
    outcome = OrderOutcome(
        config=config, order=k, pairs=pairs, epoch_orders=orders, global_batch=global_batch,
        fingerprint=fingerprint, precision=precision, saved_dtype=saved_dtype,
        row_lengths=[len(x) for x in trainer.train_dataset["input_ids"]],
        log_history=trainer.state.log_history, steps=trainer.state.global_step,
        max_steps=trainer.state.max_steps, train_seconds=result.metrics.get("train_runtime", seconds),
        start_step=start_step, processes=trainer.accelerator.num_processes,
        distributed=layout.layout or parameter_layout(trainer.model, trainer.accelerator),
        packed_batches=trainer.packed_batches,
    )
    state.wait_for_everyone()  # the folder is complete before any process reads it back
    return outcome, trainer.train_dataset


def summary_line(s: Dict, folder: Path) -> str:
    resumed = f", resumed at step {s['resumed_from_step']}" if s.get("resumed_from_step") else ""
    loss = f"{s['final_train_loss']:.4f}" if s.get("final_train_loss") is not None else "n/a"
    return (f"{order_name(s['order'])}: {s['train_seconds']:.1f}s, {s['tokens_per_second'] or 0:,.0f} tokens/s, "
            f"final loss {loss}, {s['steps']} steps{resumed} -> {folder}")


def check_inputs(config: SFTRunConfig, only: Optional[Sequence[int]], score_samples: Optional[Scorer]) -> List[Pair]:
    """Everything that can be wrong with the input, before a model is loaded or a file written."""
    K = config.orders
    bad = [k for k in (only or ()) if not 0 <= k < K]
    if bad:
        raise SftmergeError(f"--order {bad[0]} is outside 0..{K - 1} (K = {K})")
    if config.sample_losses_at_checkpoints and score_samples is None:
        raise SftmergeError("sample_losses_at_checkpoints needs a sample scorer (score_samples)")
    check_precision(resolve_precision(config.precision), config.allow_emulated_bf16)
    check_strategy(config)
    template_file = config.sft_args.get("chat_template_path")
    if config.format == "chat" and template_file and not Path(template_file).is_file():
        raise SftmergeError(f"sft_args: chat_template_path {template_file} not found")
    check_base(config.base, chat=config.format == "chat" and not template_file)
    pairs = load_pairs(config.data, "train", config.num_samples, config.data_seed)
    if not pairs:
        raise SftmergeError(f"data {config.data}: no training samples")
    return pairs


def run_multi_order(config: SFTRunConfig, only: Optional[Sequence[int]] = None,
                    echo: Callable[[str], None] = print, callbacks: Sequence = (),
                    score_samples: Optional[Scorer] = None) -> List[Dict]:
    """Train the orders of `config` (all K, or `only` those), skipping finished ones.

    score_samples(model folder, prepared dataset) gives each training sample's loss for
    sample_losses.jsonl (sftmerge.eval.losses.sample_losses); None: that file is not written.
    """
    state = process_state()
    K = config.orders
    todo = list(range(K)) if only is None else list(only)
    pairs = check_inputs(config, only, score_samples)
    run = prepare_run(config, echo) if state.is_main_process else RunLayout(config.output_dir)
    state.wait_for_everyone()

    if state.is_main_process:
        write_run_recipes(run, config)
    summaries = []
    for k in todo:
        final = run.order(k)
        if run.order_summary(k).is_file():
            s = json.loads(run.order_summary(k).read_text())
            if state.is_main_process:  # killed between publishing the order and removing its work folder
                shutil.rmtree(run.order_work(k), ignore_errors=True)
            echo(f"{order_name(k)}: already finished, skipped ({final})")
        else:
            s = train_order(config, k, pairs, run, callbacks, score_samples, echo)
            if state.is_main_process:
                echo(summary_line(s, final))
        summaries.append(s)
    return summaries
