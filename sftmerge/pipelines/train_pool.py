"""The multi-order pipeline's trainings side by side on a CPU machine (eval/cpu_pool.py's workers).

A CPU training step of a small model spends much of its time in operations that gain little
from a second thread; trainings side by side with one thread each keep every core busy.
Measured 2026-11-26 on the idle 2-core machine, SmolLM2-135M, batches of 8 arith samples: one
training on 2 threads 7.4-7.8 s per step; 2 side by side 13.3 s per step each (6.65 s per step
together); 3 side by side 19.6 s each (6.5 s together). So every order still to train, and the
compute-matched single, start on worker processes of one thread each, handed out longest first:
as many workers as give the shortest estimated wall time (`workers`), up to 2 per core and as many
as memory holds. A compute-matched single is K orders long: with 2 cores and 1 + K jobs, 2 workers
(the single on one, the orders one after the other on the other) end together, where more workers
would share its core and leave it running alone at the end. On a GPU, one core or a small model they
train one after the other.

Each order's weights are those of a one-thread run (float sums in another order than on 2
threads); the thread count is recorded in its summary.json.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from sftmerge.errors import SftmergeError
from sftmerge.io.layout import order_name
from sftmerge.pipelines.controls import COMPUTE_MATCHED, train_compute_matched

# fp32 weights, gradients and AdamW's two moments (16 bytes a parameter), activations and logits
# besides: 6 times the model's fp32 bytes per training
TRAIN_BYTES_PER_FP32_BYTE = 6


def wall_time(lengths: Sequence[float], workers: int, cores: int) -> float:
    """Estimated wall time of jobs of `lengths` (steps at one core's speed) handed out in order
    to `workers` one-thread workers sharing `cores` equally."""
    pending, running, now = list(lengths), [], 0.0
    while pending or running:
        while pending and len(running) < workers:
            running.append(pending.pop(0))
        rate = min(1.0, cores / len(running))
        step = min(running) / rate
        now += step
        running = [left - step * rate for left in running if left - step * rate > 1e-9]
    return now


def workers(base: str, lengths: Sequence[float], requested: Optional[int] = None) -> int:
    """How many trainings of `lengths` (relative steps, longest first) run side by side (0: one
    after the other in this process)."""
    import torch

    from sftmerge.eval.cpu_pool import MIN_POOLED_BYTES, bounded, cores, fp32_bytes

    jobs = len(lengths)
    if jobs < 2 or torch.cuda.is_available():
        return 0
    if requested is not None:
        return min(requested, jobs) if requested >= 2 else 0
    try:
        size = fp32_bytes(base)
    except Exception:  # not a local model folder: no estimate, no pool
        return 0
    if cores() < 2 or size < MIN_POOLED_BYTES:  # a worker's start would cost more than it saves
        return 0
    return fastest(lengths, bounded(jobs, TRAIN_BYTES_PER_FP32_BYTE * size, per_core=2), cores())


def fastest(lengths: Sequence[float], most: int, cores: int) -> int:
    """The fewest workers (2 to `most`; less memory) of the shortest estimated wall time; 0 if none."""
    return min(range(2, most + 1), key=lambda n: (round(wall_time(lengths, n, cores), 6), n), default=0)


def train_order(config, k: int, echo: Callable[[str], None]) -> List[str]:
    """A worker's job: order k of `config`, with its per-sample losses."""
    from sftmerge.eval.losses import sample_losses
    from sftmerge.train.sft import run_multi_order

    run_multi_order(config, only=[k], echo=echo, score_samples=sample_losses)
    return []


def train_matched(config, echo: Callable[[str], None]) -> List[str]:
    """A worker's job: the compute-matched single of `config`."""
    train_compute_matched(config, echo)
    return []


def train_side_by_side(config, todo: Sequence[int], compute_matched: bool, echo: Callable[[str], None],
                       requested: Optional[int] = None) -> bool:
    """Train orders `todo` (and the compute-matched single) on worker processes; False, with
    nothing done, where this machine or model is not one for it."""
    from sftmerge.eval import cpu_pool
    from sftmerge.eval.losses import sample_losses
    from sftmerge.train.run_folder import prepare_run
    from sftmerge.train.sft import check_inputs

    jobs = [(COMPUTE_MATCHED, cpu_pool.Call(f"{__name__}:train_matched", (config,)))] if compute_matched else []
    jobs += [(order_name(k), cpu_pool.Call(f"{__name__}:train_order", (config, k))) for k in todo]
    lengths = [config.orders] * compute_matched + [1] * len(todo)  # in orders' steps
    n = workers(config.base, lengths, requested)
    if n < 2:
        return False
    check_inputs(config, None, sample_losses)  # a bad input is one line here, not one per worker
    prepare_run(config, echo)
    failures = cpu_pool.run(jobs, n, echo, doing="training", unit="run")
    if failures:
        raise SftmergeError(f"training failed: {'; '.join(failures)}")
    return True
