"""Evaluate models x tasks, writing each result the moment it exists.

Inputs are checked before any model is loaded; afterwards a model that fails to load,
or a task that fails, is reported and skipped, and the others still run and are kept.
"""

from __future__ import annotations

import gc
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

from sftmerge.data.tasks import TRAINING, local_files, task as task_spec
from sftmerge.errors import SftmergeError
from sftmerge.eval.backends import load_model, model_name
from sftmerge.eval.summary import write_summary
from sftmerge.eval.tasks import EvalSettings, TaskResult, check_settings, runner
from sftmerge.io.fsutil import write_json, write_jsonl
from sftmerge.io.layout import MODEL_CONFIG, ResultsLayout, RunLayout, is_model_folder


def run_models(run_dir: str) -> List[str]:
    """The models of a training run: RUN/order-*/ (sub-models), then RUN/merged/*/ (merges)."""
    run = RunLayout(run_dir)
    if not run.root.is_dir():
        raise SftmergeError(f"run folder {run_dir} not found")
    found = run.orders() + run.merges()
    if not found:
        raise SftmergeError(f"run folder {run_dir} has no models (sub-models or merges with a {MODEL_CONFIG})")
    return [str(p) for p in found]


def _run_config(run_dir: str) -> dict:
    import yaml

    path = RunLayout(run_dir).config
    if not path.is_file():
        raise SftmergeError(f"run folder {run_dir} has no {path.name} (the run's settings)")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def run_base(run_dir: str) -> str:
    """The base model the run was trained from (its config.yaml), as a local folder."""
    from sftmerge.io.sources import looks_like_hub_id

    base = str(_run_config(run_dir).get("base") or "")
    if not base or looks_like_hub_id(base) or not Path(base).is_dir():
        raise SftmergeError(f"--with-base: the run's base {base!r} is not a local model folder "
                            "(give it with --models DIR)")
    return base


def run_tasks(run_dir: str, allow_code_execution: bool) -> List[str]:
    """`--tasks auto`: every task the run's training data supports (code tasks only when allowed)."""
    data = str(_run_config(run_dir).get("data") or "arith").split(":")[0]
    if data not in TRAINING:
        raise SftmergeError(f"run {run_dir}: no evaluation tasks for data {data!r} (known: {', '.join(TRAINING)})")
    tasks = [t for t in TRAINING[data].eval_tasks if allow_code_execution or not task_spec(t).executes_code]
    if not tasks:
        raise SftmergeError(f"run {run_dir}: the tasks of data {data!r} run model-written code; "
                            "add --allow-code-execution")
    return tasks


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def check_inputs(models: Sequence[str], tasks: Sequence[str], settings: EvalSettings) -> None:
    """Every problem a user can fix, as one line, before anything slow starts."""
    names: Dict[str, str] = {}
    for m in models:
        path = Path(m)
        if not path.is_dir():
            raise SftmergeError(f"model {m} not found")
        if not is_model_folder(path):
            raise SftmergeError(f"model {m} is not a model folder (no {MODEL_CONFIG})")
        if not _has_weights(path):
            raise SftmergeError(f"model {m} has no weights (no *.safetensors or pytorch_model*.bin)")
        name = model_name(m)
        if name in names:
            raise SftmergeError(f"models {names[name]} and {m} share the folder name {name!r}; "
                                "results are stored by folder name")
        names[name] = m
    check_settings(settings)
    if settings.data_dir is not None and not Path(settings.data_dir).is_dir():
        raise SftmergeError(f"--data-dir {settings.data_dir} not found")
    for task in tasks:
        spec = task_spec(task)
        if spec.executes_code:
            from sftmerge.eval.sandbox import require_opt_in

            require_opt_in(settings.allow_code_execution, task, settings.allow_weak_sandbox)
        if settings.data_dir is not None and spec.local_files:
            local_files(task, settings.data_dir)
    if any(task_spec(t).trained_format for t in tasks):
        from sftmerge.eval.trained_format import trained_format

        for m in models:
            trained_format(m)  # a model whose training format cannot be told fails now, not mid-run
    if settings.judge is not None and not is_model_folder(settings.judge):
        raise SftmergeError(f"--judge {settings.judge} is not a model folder (no {MODEL_CONFIG})")
    if settings.judge is not None and settings.judge_url is not None:
        raise SftmergeError("give one judge: --judge (a local model) or --judge-url (an endpoint), not both")
    if settings.judge_url is not None and "alpaca" in tasks:
        from sftmerge.eval.alpaca_endpoint import check_endpoint

        check_endpoint(settings.judge_url)


def result_document(model, task: str, result: TaskResult, settings: EvalSettings, seconds: float) -> Dict:
    n = len(result.samples)
    doc = {
        "model": model.path, "model_name": model.name, "task": task, "backend": model.backend, "n": n,
        "metrics": result.metrics,
        "settings": {**result.settings, "seed": settings.seed, "batch_size": settings.batch_size,
                     "model_settings": model.settings},
        "seconds": round(seconds, 2),
        "per_sample": ResultsLayout.samples_name(task),
    }
    doc.update(result.extra)
    return doc


def write_result(out: Path, model, task: str, result: TaskResult, settings: EvalSettings, seconds: float) -> Dict:
    layout = ResultsLayout(out)
    folder = layout.model(model.name)
    folder.mkdir(parents=True, exist_ok=True)
    # Samples and side files first: a result JSON always has its samples beside it.
    write_jsonl(layout.samples(model.name, task), result.samples)
    for name, data in result.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_json(folder / name, data)
    doc = result_document(model, task, result, settings, seconds)
    write_json(layout.result(model.name, task), doc)
    layout.error_log(model.name, task).unlink(missing_ok=True)  # from an earlier failed attempt
    return doc


def headline(doc: Dict) -> str:
    metric, cell = next(iter(doc["metrics"].items()))
    return f"{doc['model_name']}/{doc['task']}: {metric} {cell['value']:.3f} (n={doc['n']}, {doc['seconds']:.0f}s)"


def evaluate_models(models: Sequence[str], tasks: Sequence[str], settings: EvalSettings, backend: str,
                    out: Path, echo=print, summary: bool = True, progress: bool = True,
                    check: bool = True, calls: Sequence[Tuple[str, Callable]] = (),
                    tail: Sequence[Tuple[str, Callable]] = ()) -> List[str]:
    """Run everything; returns the failure lines (empty when all went well).

    Each model is loaded once for all its tasks. On the HF backend without a GPU, several models
    are evaluated side by side in worker processes (eval/cpu_pool.py).
    summary: False in a worker (eval/gpu_schedule.py, eval/cpu_pool.py), whose parent writes it.
    progress: False for no progress bar; check: False when the caller has checked the inputs.
    calls: further (name, evaluation) jobs, such as the output ensemble, run first: in the worker
    processes when there are any, else in this process. tail: further short jobs, run last (they
    fill the pool's end).
    """
    from tqdm.auto import tqdm

    from sftmerge.eval import cpu_pool

    if check:
        check_inputs(models, tasks, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    held = max([1, *(c.models for _, c in [*calls, *tail])])
    workers = cpu_pool.plan(models, backend, settings.cpu_workers, jobs=len(models) + len(calls) + len(tail),
                            held=held)
    if workers >= 2:
        each = dict(summary=False, progress=False, check=False)
        jobs = [*calls, *((Path(m).name, cpu_pool.Call(f"{__name__}:evaluate_models",
                                                        ([m], tasks, settings, backend, out), each)) for m in models),
                *tail]
        failures = cpu_pool.run(jobs, workers, echo, unit="job" if calls or tail else "model",
                                on_done=(lambda: write_summary(out, with_chart=False)) if summary else (lambda: None))
        if summary:
            write_summary(out)
        return failures
    failures: List[str] = []
    for _name, call in calls:
        failures += call(echo=echo)
    bar = tqdm(total=len(models) * len(tasks), desc="evaluating", unit="task", disable=not progress)
    for m in models:
        try:
            model = load_model(m, backend, settings.batch_size, settings.seed, vllm=settings.vllm)
        except SftmergeError as e:
            failures.append(str(e))
            echo(f"error: {e}")
            bar.update(len(tasks))
            continue
        for task in tasks:
            bar.set_postfix_str(f"{model.name}/{task}")
            t0 = time.time()
            try:
                with tempfile.TemporaryDirectory(prefix="sftmerge-eval-") as workdir:
                    result = runner(task)(model, settings, Path(workdir))
                doc = write_result(out, model, task, result, settings, time.time() - t0)
                echo(headline(doc))
            except SftmergeError as e:
                failures.append(f"{model.name}/{task}: {e}")
                echo(f"error: {model.name}/{task}: {e}")
            except Exception as e:  # one task's crash must not lose the other results
                first = str(e).splitlines()[0][:300] if str(e) else ""
                log = ResultsLayout(out).error_log(model.name, task)
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(traceback.format_exc(), encoding="utf-8")
                failures.append(f"{model.name}/{task}: {type(e).__name__}: {first}")
                echo(f"error: {model.name}/{task}: {type(e).__name__}: {first} (traceback in {log})")
            bar.update(1)
        del model
        gc.collect()
        if summary and m != models[-1]:  # so an interrupted run still has one; the last one below, with the chart
            write_summary(out, with_chart=False)
    bar.close()
    for _name, call in tail:
        failures += call(echo=echo)
    if summary:
        write_summary(out)
    return failures
