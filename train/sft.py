"""Multi-order SFT: the same base fine-tuned K times, identical but for the data order.

Each order k trains with TRL's SFTTrainer (loss on the response tokens only) in a work
folder `RUN/.order-k.work/` and only then becomes `RUN/order-k/`, so a folder named
order-k is always a finished model. A rerun of the same command skips finished orders
and resumes an interrupted one from its newest checkpoint. Runs under `accelerate
launch` unchanged: the data order is that of the optimizer steps' global batches, and
only the main process writes the run folder's files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from sftmerge.data.pairs import Pair, load_pairs
from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_json
from sftmerge.train.base import base_dtype, check_base
from sftmerge.train.config import SFTRunConfig, dump_config
from sftmerge.train.l1 import L1Delta
from sftmerge.train.order import EpochOrderSampler, epoch_orders, order_record

SUMMARY = "summary.json"


# ---------------------------------------------------------------------------- helpers

def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def process_state():
    """accelerate's process state; on a machine without CUDA, CPU processes (gloo under torchrun)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def resolve_precision(precision: str) -> str:
    """auto: bf16 where the hardware has it; else fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes (in the model's own dtype and order)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def to_chat_dataset(pairs: Sequence[Pair]):
    """TRL's conversational prompt-completion format: loss on the completion only."""
    from datasets import Dataset

    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": p.prompt}],
         "completion": [{"role": "assistant", "content": p.response}]}
        for p in pairs
    ])


def save_hf_folder(model: torch.nn.Module, folder: Path, dtype: torch.dtype, tokenizer,
                   state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """An HF model folder in `dtype` (the base's), with tokenizer and chat template."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    drop = tied_duplicates(model)
    sd = {k: v.detach().to("cpu", dtype) for k, v in sd.items() if k not in drop}
    model.save_pretrained(folder, state_dict=sd, safe_serialization=True)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(folder)


def tied_duplicates(model: torch.nn.Module) -> set:
    """Parameter names that are the same tensor as an earlier name (tied embeddings): saved once."""
    seen, dups = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            dups.add(name)
        seen.add(id(p))
    return dups


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model as full weights: LoRA adapters merged into a copy (training goes on untouched)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


@torch.no_grad()
def sample_losses(model_dir: Path, dataset, batch_size: int = 16, device: Optional[str] = None) -> List[Dict]:
    """Mean loss over each sample's trained (response) tokens under the model saved in `model_dir`.

    `dataset` is the trainer's prepared one: `input_ids`, and `labels` at -100 on the prompt.
    """
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if device == "cpu" else base_dtype(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    rows = dataset.with_format(None)
    ids, labels = rows["input_ids"], rows["labels"]
    out = []
    for start in tqdm(range(0, len(ids), batch_size), desc=f"sample losses ({model_dir.name})", leave=False):
        chunk = range(start, min(start + batch_size, len(ids)))
        width = max(len(ids[i]) for i in chunk)
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        attn = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(ids[i])
            x[row, :n] = torch.tensor(ids[i])
            y[row, :n] = torch.tensor(labels[i])
            attn[row, :n] = 1
        logits = model(input_ids=x.to(device), attention_mask=attn.to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), y[:, 1:].to(device),
                                                reduction="none", ignore_index=-100).cpu()
        target = y[:, 1:] != -100
        for row in range(len(chunk)):
            n = int(target[row].sum())
            out.append({"loss": float(nll[row][target[row]].sum() / max(n, 1)), "tokens": n})
    del model
    return out


# ---------------------------------------------------------------------------- trainer

def _trainer_class():
    from transformers import TrainerCallback
    from trl import SFTTrainer

    class OrderedSFTTrainer(SFTTrainer):
        """SFTTrainer whose data order is a given permutation per epoch."""

        def __init__(self, *a, epoch_orders: List[List[int]], l1: float = 0.0, **kw):
            self._epoch_orders = epoch_orders
            super().__init__(*a, **kw)
            self._l1 = L1Delta(self.model, l1) if l1 else None  # before any step: the base weights

        def _get_train_sampler(self, train_dataset=None):
            return EpochOrderSampler(self._epoch_orders)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            if self._l1 is None or not model.training:
                return out
            loss = out[0] if return_outputs else out
            penalty = self._l1.penalty()
            # Once per optimizer step in total: share it out when the Trainer will not divide the loss.
            scaled = getattr(self, "loss_is_scaled_for_ga", None)
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) \
                    or self.compute_loss_func is not None
            if scaled:
                penalty = penalty / self.current_gradient_accumulation_steps
            self._metrics["train"]["l1_penalty"].append(float(penalty.detach()))
            loss = loss + penalty
            return (loss, out[1]) if return_outputs else loss

    class Snapshots(TrainerCallback):
        """Model-only snapshots in the base's dtype every `every` steps (kept, unlike checkpoints)."""

        def __init__(self, trainer_ref, folder: Path, every: int, dtype, tokenizer):
            self.trainer_ref, self.folder, self.every, self.dtype, self.tok = trainer_ref, folder, every, dtype, tokenizer

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % self.every or state.global_step == state.max_steps:
                return
            trainer = self.trainer_ref()
            if trainer.accelerator.is_main_process:
                target = self.folder / f"step-{state.global_step}"
                if not target.exists():
                    model = merged_copy(trainer.accelerator.unwrap_model(trainer.model))
                    tmp = target.with_name(target.name + ".tmp")
                    shutil.rmtree(tmp, ignore_errors=True)
                    save_hf_folder(model, tmp, self.dtype, self.tok)
                    tmp.rename(target)
            trainer.accelerator.wait_for_everyone()

    return OrderedSFTTrainer, Snapshots


def common_trainer_args(config, output_dir: Path, precision: str) -> Dict:
    """The TRL/transformers arguments that sftmerge's run configs (SFT, DPO) share, by the same names."""
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=config.logging_steps,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
    )


def sft_args(config: SFTRunConfig, output_dir: Path, precision: str):
    from trl import SFTConfig

    return SFTConfig(
        **common_trainer_args(config, output_dir, precision),
        gradient_checkpointing=config.gradient_checkpointing,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        completion_only_loss=True,
        packing=False,
        **config.sft_args,
    )


def _last_checkpoint(folder: Path) -> Optional[str]:
    if not folder.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder))


def train_order(config: SFTRunConfig, k: int, pairs: Sequence[Pair], run: Path,
                callbacks: Sequence = ()) -> Dict:
    """Train order k into RUN/order-k/ (resuming its work folder if there is one)."""
    import weakref

    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = process_state()
    work, final = run / f".order-{k}.work", run / f"order-{k}"
    staged = work / "final"
    if state.is_main_process:
        staged.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    precision = resolve_precision(config.precision)
    saved_dtype = base_dtype(config.base)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=torch.float32)
    fingerprint = weights_fingerprint(model)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")

    global_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * state.num_processes
    orders = epoch_orders(len(pairs), config.num_train_epochs, config.order_seed, k, config.order_mode,
                          global_batch, config.reshuffle_each_epoch)
    OrderedSFTTrainer, Snapshots = _trainer_class()
    trainer = OrderedSFTTrainer(
        model=model,
        args=sft_args(config, work / "trainer", precision),
        train_dataset=to_chat_dataset(pairs),
        processing_class=tokenizer,
        peft_config=peft_config,
        epoch_orders=orders,
        l1=config.l1,
        callbacks=list(callbacks),
    )
    if len(trainer.train_dataset) != len(pairs):
        raise SftmergeError(f"order {k}: {len(pairs)} pairs became {len(trainer.train_dataset)} training rows")
    snapshots = staged / "checkpoints"
    if config.keep_checkpoint_steps:
        trainer.add_callback(Snapshots(weakref.ref(trainer), snapshots, config.keep_checkpoint_steps,
                                       saved_dtype, tokenizer))

    resume = _last_checkpoint(work / "trainer")
    start_step = int(Path(resume).name.split("-")[-1]) if resume else 0
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0

    full_sd = trainer.accelerator.get_state_dict(trainer.model)  # collective under FSDP/DeepSpeed
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    if state.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if config.lora:
            save_hf_folder(merged_copy(model), staged, saved_dtype, tokenizer)
        else:
            save_hf_folder(model, staged, saved_dtype, tokenizer, state_dict=full_sd)
        _write_records(config, k, pairs, trainer, orders, global_batch, staged, snapshots,
                       fingerprint, precision, saved_dtype, lengths, result, seconds, start_step)
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
        shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    return json.loads((final / SUMMARY).read_text())


def _write_records(config, k, pairs, trainer, orders, global_batch, staged: Path, snapshots: Path,
                   fingerprint, precision, saved_dtype, lengths, result, seconds, start_step) -> None:
    write_json(staged / "order.json", order_record(orders, config.order_seed, k, config.order_mode, global_batch,
                                                   [p.id for p in pairs]))
    (staged / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    log = trainer.state.log_history
    with open(staged / "train_log.jsonl", "w", encoding="utf-8") as f:
        for row in log:
            f.write(json.dumps(row) + "\n")

    losses = sample_losses(staged, trainer.train_dataset)
    at_steps = {}
    if config.sample_losses_at_checkpoints and snapshots.is_dir():
        for snap in sorted(snapshots.iterdir(), key=lambda p: int(p.name.split("-")[1])):
            at_steps[snap.name.split("-")[1]] = sample_losses(snap, trainer.train_dataset)
    position = {idx: pos for pos, idx in enumerate(orders[0])}
    with open(staged / "sample_losses.jsonl", "w", encoding="utf-8") as f:
        for i, (pair, row) in enumerate(zip(pairs, losses)):
            rec = {"sample": i, "id": pair.id, "position": position[i], "loss": row["loss"], "tokens": row["tokens"]}
            if at_steps:
                rec["loss_at_step"] = {step: vals[i]["loss"] for step, vals in at_steps.items()}
            f.write(json.dumps(rec) + "\n")

    steps_done = trainer.state.global_step - start_step
    tokens = sum(lengths) * config.num_train_epochs * steps_done / max(trainer.state.max_steps, 1)
    train_seconds = result.metrics.get("train_runtime", seconds)
    train_losses = [r["loss"] for r in log if "loss" in r]
    summary = {
        "order": k,
        "steps": trainer.state.global_step,
        "resumed_from_step": start_step or None,
        "samples": len(pairs),
        "epochs": config.num_train_epochs,
        "tokens_per_epoch": sum(lengths),
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(tokens / train_seconds, 1) if train_seconds else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "mean_sample_loss": sum(r["loss"] for r in losses) / len(losses),
        "precision": precision,
        "saved_dtype": str(saved_dtype).removeprefix("torch."),
        "processes": trainer.accelerator.num_processes,
        "initial_weights_fingerprint": fingerprint,
        "lora": config.lora,
        "l1": config.l1,
    }
    write_json(staged / SUMMARY, summary)


# ---------------------------------------------------------------------------- the run

def summary_line(s: Dict, folder: Path) -> str:
    resumed = f", resumed at step {s['resumed_from_step']}" if s.get("resumed_from_step") else ""
    loss = f"{s['final_train_loss']:.4f}" if s.get("final_train_loss") is not None else "n/a"
    return (f"order-{s['order']}: {s['train_seconds']:.1f}s, {s['tokens_per_second'] or 0:,.0f} tokens/s, "
            f"final loss {loss}, {s['steps']} steps{resumed} -> {folder}")


def prepare_run(config: SFTRunConfig) -> Path:
    """Create RUN/ with config.yaml, or check that an existing run used the same settings."""
    import yaml

    run = Path(config.output_dir)
    stored = run / "config.yaml"
    if stored.is_file():
        old = yaml.safe_load(stored.read_text(encoding="utf-8")) or {}
        old.pop("orders", None)
        old.setdefault("l1", 0.0)  # runs from before the l1 key
        new = config.identity()
        differs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if differs:
            raise SftmergeError(
                f"{run} was started with other settings (differs in: {', '.join(differs)}); "
                "use another output_dir or remove that run"
            )
    else:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    return run


def run_multi_order(config: SFTRunConfig, only: Optional[Sequence[int]] = None,
                    echo: Callable[[str], None] = print, callbacks: Sequence = ()) -> List[Dict]:
    """Train the orders of `config` (all K, or `only` those), skipping finished ones."""
    from sftmerge.merge.recipes import write_recipe_set

    state = process_state()
    K = config.orders
    todo = list(range(K)) if only is None else list(only)
    bad = [k for k in todo if not 0 <= k < K]
    if bad:
        raise SftmergeError(f"--order {bad[0]} is outside 0..{K - 1} (K = {K})")
    check_base(config.base)
    pairs = load_pairs(config.data, "train", config.num_samples, config.data_seed)
    if not pairs:
        raise SftmergeError(f"data {config.data}: no training samples")
    run = prepare_run(config) if state.is_main_process else Path(config.output_dir)
    state.wait_for_everyone()

    if state.is_main_process and K >= 2:
        write_recipe_set(
            run / "recipes",
            base=config.base,
            models=[f"{run}/order-{i}" for i in range(K)],
            made_by=f"Made by `sftmerge train sft` for the run {run} (K = {K}).",
        )
    summaries = []
    for k in todo:
        final = run / f"order-{k}"
        if (final / SUMMARY).is_file():
            s = json.loads((final / SUMMARY).read_text())
            echo(f"order-{k}: already finished, skipped ({final})")
        else:
            s = train_order(config, k, pairs, run, callbacks)
            if state.is_main_process:
                echo(summary_line(s, final))
        summaries.append(s)
    return summaries
