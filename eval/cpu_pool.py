"""Several models on a CPU machine: one worker process per core share, each with its own torch threads.

On a CPU, one process spreading a small model's many small operations over all cores waits at
every operation for the slowest core; when anything else runs on the machine, a core is often
taken away mid-operation and the waits dominate (SmolLM2-135M, 2 cores, two arith runs of 50
problems while other jobs ran: 370 s one after the other on 2 threads, 89 s side by side on 1
thread each, with identical answers; on the idle machine, four SmolLM2 models on 100 problems:
191 s against 136 s). So models are evaluated side by side: W worker
processes (`python -m sftmerge.eval.cpu_pool`), each with cores / W threads, each handed its
next job when it has finished the last: a model, or a `Call` the caller adds (the output
ensemble, handed out first as the longest). Result files are per model and task, so workers
never write the same file; the summary is written by the parent whenever a job is done.

Used for the HF backend without a GPU and at least two large models; W is bounded by the cores, the
models, and the memory a float32 copy of the largest model needs (`EvalSettings.cpu_workers`
overrides it). The multi-order pipeline trains its K orders on the same pool
(pipelines/train_pool.py).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import queue as queue_module
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

MEMORY_SHARE = 0.6  # of the available memory, for all workers together
PER_MODEL_OVERHEAD = 2.0  # a worker holds the fp32 weights plus activations, logits and KV cache
# A worker first imports torch, transformers and lm-eval (about 8 s on 2 cores): models smaller
# than this (fp32 bytes; SmolLM2-135M has 540 MB) are done sooner in this process.
MIN_POOLED_BYTES = 200_000_000


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fp32_bytes(model_dir: str) -> int:
    from sftmerge.io.checkpoint import shapes

    try:
        return 4 * sum(math.prod(s) for s in shapes(model_dir).values())
    except Exception:  # not safetensors: weights stored in at most 4 bytes per value, loaded in 4
        return 4 * sum(p.stat().st_size for p in Path(model_dir).glob("pytorch_model*.bin")) // 2


@dataclass(frozen=True)
class Call:
    """A job (an evaluation, a training run) by the import name of its function ("module:function")
    and its arguments, run in a worker or in this process alike; the function takes `echo=` and
    returns failure lines. `models` is how many models it holds at once (for the memory bound)."""

    target: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    models: int = 1

    def __call__(self, echo: Callable[[str], None]) -> List[str]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)(*self.args, echo=echo, **self.kwargs)


def plan(models: Sequence[str], backend: str, requested: Optional[int], jobs: Optional[int] = None,
         held: int = 1) -> int:
    """How many worker processes evaluate `models` (0 or 1: none, this process does it all); `jobs`
    (default: one per model) are handed out, the largest of them holding `held` models at once."""
    import torch

    jobs = len(models) if jobs is None else jobs
    if backend != "hf" or torch.cuda.is_available() or jobs < 2 or not models:
        return 0
    if requested is not None:
        return min(requested, jobs)
    sizes = [fp32_bytes(m) for m in models]
    # Worth a worker's start: two jobs of large models at least (a further call holds large ones).
    if sum(size >= MIN_POOLED_BYTES for size in sizes) + jobs - len(models) < 2:
        return 0
    return bounded(jobs, PER_MODEL_OVERHEAD * max(sizes) * max(1, held))


def bounded(jobs: int, bytes_per_worker: float, per_core: int = 1) -> int:
    """Workers for `jobs`: at most `per_core` per core and as many as MEMORY_SHARE of the available
    memory holds at `bytes_per_worker` each; 0 when fewer than 2."""
    workers = min(jobs, per_core * cores())
    memory = available_memory()
    if memory is not None:
        workers = min(workers, int(memory * MEMORY_SHARE // bytes_per_worker))
    return workers if workers >= 2 else 0


def _send(stream, event: dict) -> None:
    stream.write(json.dumps(event) + "\n")
    stream.flush()


def _exit_with_parent(parent: int) -> None:
    """A worker must not outlive the run that started it. An idle worker ends at its input's end,
    but one in the middle of a job (an hour of training) would go on writing into the run's folder
    beside the rerun that resumes it; a `kill` of the run, unlike Ctrl-C, runs no `finally`.
    Linux sends the worker SIGTERM when its parent dies; a parent already gone is checked once."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: only the parent's `finally` ends the workers
        pass
    if os.getppid() != parent:
        sys.exit(1)


def serve(job_file: str) -> None:
    """A worker (`python -m sftmerge.eval.cpu_pool JOB`): runs each job whose index it reads from
    stdin; its lines and finished jobs go to stdout as JSON, everything else it prints to stderr."""
    with open(job_file, "rb") as f:
        job = pickle.load(f)
    _exit_with_parent(job["parent"])
    events = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # libraries' prints and progress bars must not mix into the events
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(job["threads"])
    for line in sys.stdin:
        name, call = job["jobs"][int(line)]
        try:
            failures = call(echo=lambda text: _send(events, {"line": text}))
        except Exception as e:  # evaluate_models reports per task; anything else (a training run's error) is a line
            first = str(e).splitlines()[0][:300] if str(e) else ""
            failures = [f"{name}: {type(e).__name__}: {first}"]
        _send(events, {"job": name, "failures": failures})


def run(jobs: Sequence[Tuple[str, Call]], workers: int, echo: Callable[[str], None],
        on_done: Callable[[], None] = lambda: None, doing: str = "evaluating", unit: str = "model") -> List[str]:
    """Run the (name, call) `jobs` on `workers` processes; returns the failure lines. Each worker
    gets the next job when it has finished the last; `on_done` runs in this process after each.
    `doing` and `unit` word the first line and the progress bar ("training", "run")."""
    import subprocess
    import tempfile
    import threading
    from collections import deque

    from tqdm.auto import tqdm

    threads = max(1, cores() // workers)
    echo(f"{doing} {len(jobs)} {unit}s on {workers} worker processes, {threads} thread(s) each")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    todo, events = deque(range(len(jobs))), queue_module.Queue()
    failures: List[str] = []
    with tempfile.TemporaryDirectory(prefix="sftmerge-cpu-pool-") as tmp:
        job_file = Path(tmp) / "job.pkl"
        with open(job_file, "wb") as f:
            pickle.dump({"jobs": list(jobs), "threads": threads, "parent": os.getpid()}, f)
        procs = [subprocess.Popen([sys.executable, "-m", "sftmerge.eval.cpu_pool", str(job_file)], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(workers)]

        def read(wid: int, proc) -> None:
            for raw in proc.stdout:
                events.put((wid, json.loads(raw)))
            events.put((wid, None))

        readers = [threading.Thread(target=read, args=(wid, p), daemon=True) for wid, p in enumerate(procs)]
        working = {}  # worker -> the job it is on

        def give(wid: int) -> None:
            """The worker's next job, or the end of its input."""
            try:
                if todo:
                    working[wid] = todo.popleft()
                    procs[wid].stdin.write(f"{working[wid]}\n")
                    procs[wid].stdin.flush()
                else:
                    working.pop(wid, None)
                    procs[wid].stdin.close()
            except BrokenPipeError:  # it has died; its end is reported by its reader
                pass

        bar = tqdm(total=len(jobs), desc=doing, unit=unit)
        try:
            for wid, reader in enumerate(readers):
                reader.start()
                give(wid)
            running = set(range(workers))
            while running:
                wid, event = events.get()
                if event is None:  # the worker's output ended: it exited
                    running.discard(wid)
                    if procs[wid].wait() != 0 or wid in working:
                        lost = f" during {jobs[working[wid]][0]}" if wid in working else ""
                        failures.append(f"an evaluation worker exited with status {procs[wid].returncode}{lost}")
                elif "line" in event:
                    echo(event["line"])
                else:
                    failures += event["failures"]
                    bar.update(1)
                    on_done()
                    give(wid)
        finally:
            bar.close()
            for p in procs:
                if p.poll() is None:  # only when interrupted: no worker outlives the call
                    p.terminate()
                p.wait()
    return failures


if __name__ == "__main__":
    serve(sys.argv[1])
