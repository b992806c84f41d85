"""Many models over several GPUs: one vLLM engine per GPU set, models queued per set.

`--gpus 0,1,2,3 --vllm-tp 2` makes the GPU sets [0,1] and [2,3]; the models are dealt
round-robin to the sets, and each set gets one worker process (`sftmerge eval` on its
models, CUDA_VISIBLE_DEVICES set to its GPUs) that evaluates them one after another
into the same output folder. Result files are per model and task, so workers never
write the same file; the summary is written once, by the parent, when all are done.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from sftmerge.errors import SftmergeError

WORKER_FLAG = "--worker"  # a worker leaves the summary to the parent


def parse_gpus(text: str) -> List[str]:
    """`0,1,2,3` -> ["0", "1", "2", "3"]: distinct non-negative integers."""
    ids = [g.strip() for g in str(text).split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise SftmergeError(f"--gpus {text!r} is not a comma-separated list of GPU numbers (e.g. 0,1,2,3)")
    if len(set(ids)) != len(ids):
        raise SftmergeError(f"--gpus {text!r} names a GPU twice")
    return ids


def gpu_sets(gpus: Sequence[str], per_set: int) -> List[List[str]]:
    """Consecutive groups of `per_set` GPUs (the tensor-parallel size); leftovers are an error."""
    if per_set < 1 or len(gpus) % per_set:
        raise SftmergeError(f"{len(gpus)} GPUs do not split into sets of {per_set} (--vllm-tp)")
    return [list(gpus[i:i + per_set]) for i in range(0, len(gpus), per_set)]


def deal(models: Sequence[str], n_sets: int) -> List[List[str]]:
    """Models dealt round-robin to the sets, in order; sets left without a model are dropped."""
    queues: List[List[str]] = [[] for _ in range(n_sets)]
    for i, m in enumerate(models):
        queues[i % n_sets].append(m)
    return [q for q in queues if q]


@dataclass(frozen=True)
class Worker:
    gpus: List[str]
    models: List[str]
    argv: List[str]

    @property
    def env(self) -> Dict[str, str]:
        return {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(self.gpus)}


def workers(models: Sequence[str], gpus: Sequence[str], per_set: int, eval_args: Sequence[str]) -> List[Worker]:
    """One worker command line per GPU set: this interpreter running `sftmerge eval` on its models."""
    sets = gpu_sets(gpus, per_set)
    out = []
    for gpu_set, queue in zip(sets, deal(models, len(sets))):
        argv = [sys.executable, "-m", "sftmerge.cli.main", "eval", "--models", *queue, *eval_args, WORKER_FLAG]
        out.append(Worker(gpu_set, list(queue), argv))
    return out


def run_workers(jobs: Sequence[Worker], echo: Callable[[str], None] = print) -> List[str]:
    """Start every worker, wait for all; returns one failure line per worker that failed."""
    procs = []
    for job in jobs:
        echo(f"GPUs {','.join(job.gpus)}: {len(job.models)} model(s)")
        procs.append((job, subprocess.Popen(job.argv, env=job.env)))
    failures = []
    for job, proc in procs:
        if proc.wait() != 0:
            failures.append(f"worker on GPUs {','.join(job.gpus)} exited with status {proc.returncode}")
    return failures
