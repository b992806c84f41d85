"""The trainer sftmerge trains orders with, and its snapshot callback (imports TRL: load lazily)."""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path
from typing import Dict, List

import torch
from accelerate.utils import DistributedType
from transformers import TrainerCallback
from trl import SFTTrainer

from sftmerge.io.layout import RunLayout
from sftmerge.train.l1 import L1Delta
from sftmerge.train.order import EpochOrderSampler
from sftmerge.train.packed_rows import packable, packed_nll
from sftmerge.train.forward_args import accepts_positions
from sftmerge.train.response_logits import IGNORE, response_logits, token_nll
from sftmerge.train.saving import merged_copy, save_hf_folder


class OrderedSFTTrainer(SFTTrainer):
    """SFTTrainer whose data order is a given permutation per epoch, with PAFT's optional L1 penalty."""

    def __init__(self, *a, epoch_orders: List[List[int]], l1: float = 0.0, pack_rows: bool = False, **kw):
        self._epoch_orders = epoch_orders
        super().__init__(*a, **kw)
        self._l1 = L1Delta(self.model, l1) if l1 else None  # before any step: the base weights
        self._pack_rows = pack_rows
        self.packed_batches = 0  # batches whose loss came from train/packed_rows.py (summary.json)

    def _get_train_sampler(self, train_dataset=None):
        return EpochOrderSampler(self._epoch_orders)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.accelerator.device.type == "cpu":
            out = self._response_logits_loss(model, inputs, return_outputs, num_items_in_batch)
        else:
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

    def _response_logits_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """The cross-entropy summed over the response tokens and divided by `num_items_in_batch`
        (TRL's loss), with vocabulary logits only at the positions that are trained, for CPUs.

        TRL's fused LM head never builds the full logits; without Triton (on a CPU) it scores every
        position in torch tiles, with entropy and top-1 metrics, which made training steps about 3x
        slower than one full-logits cross-entropy for SmolLM2's 49k vocabulary; logits at the
        response positions only (train/response_logits.py) take a further share off. On GPUs TRL's
        own loss stays.
        """
        labels = inputs.get("labels")
        if labels is None:
            outputs = model(**{**inputs, "use_cache": False}, num_items_in_batch=num_items_in_batch)
            loss = outputs.loss
        else:
            packed = None if return_outputs else self._packed_nll(model, inputs, labels)
            if packed is not None:
                outputs, (total, trained) = None, packed
                self.packed_batches += 1
            else:
                rest = {k: v for k, v in inputs.items() if k != "labels"}
                positions = accepts_positions(self.accelerator.unwrap_model(model))
                outputs, logits, targets = response_logits(model, rest, labels, positions)
                total, trained = token_nll(logits, targets).sum(), (targets != IGNORE).sum()
            count = num_items_in_batch if num_items_in_batch is not None else trained
            loss = total / (count.to(total.device) if torch.is_tensor(count) else count)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as TRL and Trainer: DDP averages the gradients
        if model.training and "attention_mask" in inputs:  # TRL's token count, kept in the logs
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def _packed_nll(self, model, inputs, labels):
        """train/packed_rows.py's loss terms where they apply: asked for, one process (a wrapped model
        takes one forward per step), a plain batch (ids, mask, labels) and a model that runs packs."""
        if not self._pack_rows or self.accelerator.distributed_type != DistributedType.NO:
            return None
        if set(inputs) != {"input_ids", "attention_mask", "labels"} or not packable(model):
            return None
        return packed_nll(model, inputs["input_ids"], inputs["attention_mask"], labels)


class Snapshots(TrainerCallback):
    """Model-only snapshots `model/checkpoints/step-N/` in the base's dtype every `every` steps
    (kept, unlike the resume checkpoints). Holds the trainer weakly: the trainer holds it."""

    def __init__(self, trainer, model_folder: Path, every: int, dtype, tokenizer):
        self.trainer_ref = weakref.ref(trainer)
        self.model_folder, self.every, self.dtype, self.tok = model_folder, every, dtype, tokenizer

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.every or state.global_step == state.max_steps:
            return
        trainer = self.trainer_ref()
        acc = trainer.accelerator
        target = RunLayout.snapshot(self.model_folder, state.global_step)
        done = target.exists()  # the same answer on every process: a shared folder
        # Under FSDP/DeepSpeed the gather is collective: every process takes part, the main one saves.
        sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        full_sd = acc.get_state_dict(trainer.model_wrapped) if sharded and not done else None
        if acc.is_main_process and not done:
            model = merged_copy(acc.unwrap_model(trainer.model))
            tmp = partial_snapshot(target)
            shutil.rmtree(tmp, ignore_errors=True)
            save_hf_folder(model, tmp, self.dtype, self.tok, state_dict=full_sd)
            tmp.rename(target)
        acc.wait_for_everyone()


class ParameterLayout(TrainerCallback):
    """How this process held the parameters it trained, taken at the run's first optimizer step:
    whole tensors, FSDP2's DTensor shards or ZeRO-3 partitions. summary.json records it, so a run
    says whether it really trained sharded (accelerate runs an FSDP launch as DDP where it cannot shard)."""

    def __init__(self, accelerator):
        self.accelerator, self.layout = accelerator, None

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.layout is None:
            self.layout = parameter_layout(model, self.accelerator)


def parameter_layout(model, accelerator) -> Dict:
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    dtensors = [p for p in params if isinstance(p, DTensor)]
    partitions = [p for p in params if hasattr(p, "ds_tensor")]  # ZeRO-3: p itself is an empty placeholder
    total = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else
                p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    state = accelerator.state
    plugin = getattr(state, "fsdp_plugin", None)  # set under FSDP only
    ds_plugin = getattr(state, "deepspeed_plugin", None)
    return {
        "type": str(accelerator.distributed_type.value),  # NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED
        "fsdp_version": getattr(plugin, "fsdp_version", None),
        "zero_stage": getattr(ds_plugin, "zero_stage", None),
        "parameters": len(params),
        "sharded_parameters": len(dtensors) + len(partitions),
        "sharded_as": "DTensor" if dtensors else "ZeRO-3 partition" if partitions else None,
        "local_share": round(local / max(total, 1), 4),  # of all parameter elements, on this process
    }


def partial_snapshot(target: Path) -> Path:
    """Where snapshot `target` is written before it is renamed into place."""
    return target.with_name(target.name + ".tmp")
