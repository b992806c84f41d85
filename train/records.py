"""The files that describe a finished order beside its weights: order.json, config.yaml,
train_log.jsonl, sample_losses.jsonl (when a scorer is given) and summary.json.

Under several processes the per-sample losses are scored by all of them, a share of the rows
each, and gathered; only the main process writes files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from sftmerge.data.pairs import Pair
from sftmerge.io.fsutil import write_json, write_text
from sftmerge.io.layout import SAMPLE_LOSSES_NAME, STEP_PREFIX, SUMMARY_NAME, RunLayout, number_of, numbered
from sftmerge.train.common_config import dump_config
from sftmerge.train.config import SFTRunConfig
from sftmerge.train.order import order_record

# score_samples(model folder, prepared dataset) -> [{"loss": mean NLL over the response tokens, "tokens": n}]
# per dataset row, in row order. Evaluation provides it (sftmerge.eval.losses.sample_losses);
# training only calls it, so the train layer never imports evaluation.
Scorer = Callable[[Path, object], List[Dict]]


@dataclass
class OrderOutcome:
    """One order's training as it ended: what its records are made of."""

    config: SFTRunConfig
    order: int
    pairs: Sequence[Pair]
    epoch_orders: List[List[int]]
    global_batch: int
    fingerprint: str  # of the starting weights
    precision: str
    saved_dtype: torch.dtype
    row_lengths: List[int]  # tokens of each training row
    log_history: List[Dict]
    steps: int
    max_steps: int
    train_seconds: float
    start_step: int  # the step training resumed from (0: a fresh start)
    processes: int
    distributed: Optional[Dict] = None  # how the main process held the parameters (trainers.parameter_layout)
    packed_batches: int = 0  # batches trained through train/packed_rows.py (this session, if resumed)


@dataclass
class SampleScores:
    """Each training row's loss under the final model, and under each kept snapshot (by step)."""

    final: List[Dict]
    at_step: Dict[str, List[Dict]]


def score_on_every_process(score_samples: Scorer, folder: Path, dataset, state) -> List[Dict]:
    """score_samples over `dataset`, each process taking a contiguous share of the rows; every
    process gets all rows back, in row order. `folder` must be complete on every process's view."""
    n, world, rank = len(dataset), state.num_processes, state.process_index
    if world == 1:
        return score_samples(folder, dataset)
    from accelerate.utils import gather_object

    lo, hi = rank * n // world, (rank + 1) * n // world
    mine = score_samples(folder, dataset.select(range(lo, hi))) if hi > lo else []
    rows = gather_object(mine)  # rank order, so row order
    if len(rows) != n:
        raise RuntimeError(f"{n} rows were scored as {len(rows)} across {world} processes")
    return rows


def score_order(score_samples: Scorer, folder: Path, dataset, at_checkpoints: bool, state) -> SampleScores:
    """The final model's losses and, with `at_checkpoints`, each kept snapshot's: collective (every
    process calls it and scores its share); call it after the folder and its snapshots are written."""
    final = score_on_every_process(score_samples, folder, dataset, state)
    at_step = {}
    snapshots = RunLayout.snapshots(folder)
    if at_checkpoints and snapshots.is_dir():
        for snap in numbered(snapshots, STEP_PREFIX):
            at_step[str(number_of(snap))] = score_on_every_process(score_samples, snap, dataset, state)
    return SampleScores(final, at_step)


def write_records(outcome: OrderOutcome, folder: Path, scores: Optional[SampleScores]) -> Dict:
    """Write every record of `outcome` into the order's model folder; returns the summary."""
    c, k = outcome.config, outcome.order
    write_json(folder / "order.json", order_record(outcome.epoch_orders, c.order_seed, k, c.order_mode,
                                                   outcome.global_batch, [p.id for p in outcome.pairs]))
    write_text(folder / "config.yaml", dump_config(c))
    write_text(folder / "train_log.jsonl", "".join(json.dumps(row) + "\n" for row in outcome.log_history))
    losses = scores.final if scores else None
    if scores:
        write_sample_losses(outcome, folder, scores)

    steps_done = outcome.steps - outcome.start_step
    tokens = sum(outcome.row_lengths) * c.num_train_epochs * steps_done / max(outcome.max_steps, 1)
    seconds = outcome.train_seconds
    train_losses = [r["loss"] for r in outcome.log_history if "loss" in r]
    summary = {
        "order": k,
        "steps": outcome.steps,
        "resumed_from_step": outcome.start_step or None,
        "samples": len(outcome.pairs),
        "epochs": c.num_train_epochs,
        "tokens_per_epoch": sum(outcome.row_lengths),
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "mean_sample_loss": sum(r["loss"] for r in losses) / len(losses) if losses else None,
        "precision": outcome.precision,
        "saved_dtype": str(outcome.saved_dtype).removeprefix("torch."),
        "processes": outcome.processes,
        "threads": torch.get_num_threads(),  # float sums (so the last bits of the weights) depend on it
        "distributed": outcome.distributed,
        "initial_weights_fingerprint": outcome.fingerprint,
        "packed_batches": outcome.packed_batches,
        "lora": c.lora,
        "l1": c.l1,
        # How each pair became text, so evaluation can present prompts the same way.
        "format": c.format,
        "text_template": c.text_template if c.format == "text" else None,
    }
    write_json(folder / SUMMARY_NAME, summary)
    return summary


def write_sample_losses(outcome: OrderOutcome, folder: Path, scores: SampleScores) -> None:
    """sample_losses.jsonl: each training sample's loss under the final model, by its first-epoch position."""
    position = {idx: pos for pos, idx in enumerate(outcome.epoch_orders[0])}
    rows = []
    for i, (pair, row) in enumerate(zip(outcome.pairs, scores.final)):
        rec = {"sample": i, "id": pair.id, "position": position[i], "loss": row["loss"], "tokens": row["tokens"]}
        if scores.at_step:
            rec["loss_at_step"] = {step: vals[i]["loss"] for step, vals in scores.at_step.items()}
        rows.append(rec)
    write_text(folder / SAMPLE_LOSSES_NAME, "".join(json.dumps(r) + "\n" for r in rows))
