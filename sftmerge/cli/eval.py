"""`sftmerge eval`: score model folders on the tasks of sftmerge.data.tasks."""

from __future__ import annotations

import click

from sftmerge.data.tasks import TASKS
from sftmerge.errors import SftmergeError

# Numeric flags are checked by sftmerge.eval.tasks.check_settings (one `error:` line,
# exit 1) before any model is loaded, as for `sftmerge demo`.


@click.command("eval")
@click.option("--models", "models", multiple=True,
              help="Model folders (repeat the option or give several after it).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="A training run: evaluate RUN/order-*/ and RUN/merged/*/ (besides any --models).")
@click.argument("more_models", nargs=-1, type=click.Path())
@click.option("--tasks", default="arith", show_default=True,
              help=f"Comma-separated: {', '.join(TASKS)}; or `auto` with --run: every task the run's data supports "
                   "(code tasks only with --allow-code-execution).")
@click.option("--backend", type=click.Choice(["auto", "vllm", "hf"]), default="auto", show_default=True,
              help="auto: vLLM when it can run here, else Hugging Face transformers.")
@click.option("--limit", type=int, default=None, help="First N examples of each task (default: all; arith 300).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Local data (gsm8k/, humaneval/, mbpp/, alpaca_eval/) instead of the Hugging Face Hub.")
@click.option("--out", default="results/eval", show_default=True, type=click.Path(file_okay=False))
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--max-new-tokens", type=int, default=None, help="Override every task's generation length.")
@click.option("--seed", default=1234, show_default=True, help="lm-eval seeds (few-shot choice, sampling).")
@click.option("--arith-seed", default=0, show_default=True, help="Seed of the arith problem generator.")
@click.option("--allow-code-execution", is_flag=True,
              help="Run model-written programs (humaneval, mbpp) in the sandbox. Required for those tasks.")
@click.option("--allow-weak-sandbox", is_flag=True,
              help="Where bubblewrap cannot run: accept the weaker sandbox (docs/security.md).")
@click.option("--code-samples", type=int, default=1, show_default=True,
              help="Samples per problem for pass@k (1: greedy pass@1).")
@click.option("--code-temperature", type=float, default=0.8, show_default=True)
@click.option("--code-timeout", type=float, default=10.0, show_default=True, help="Seconds per program (> 0).")
@click.option("--code-workers", type=int, default=4, show_default=True, help="Programs run in parallel (>= 1).")
@click.option("--cpu-workers", type=int, default=None,
              help="HF backend without a GPU: models evaluated side by side in this many processes "
                   "(default: by cores and memory; 1: one after the other).")
@click.option("--judge", type=click.Path(file_okay=False), default=None,
              help="Local judge model folder for the alpaca win rates (without a judge: outputs and lengths only).")
@click.option("--judge-url", default=None,
              help="Or an OpenAI-compatible judge endpoint, e.g. http://127.0.0.1:8000/v1 (a vLLM server).")
@click.option("--judge-model", default=None, help="The model name sent to --judge-url.")
@click.option("--with-base", is_flag=True, help="With --run: the run's base model (its config.yaml) as a row too.")
@click.option("--vllm-tp", type=int, default=1, show_default=True, help="vLLM tensor-parallel size (GPUs per engine).")
@click.option("--vllm-gpu-memory", type=float, default=0.8, show_default=True,
              help="Fraction of each GPU's memory vLLM may take.")
@click.option("--vllm-max-model-len", type=int, default=None, help="vLLM's max_model_len (default: the model's).")
@click.option("--vllm-dtype", default=None, help="auto, float16, bfloat16 or float32 (default: auto on GPU, "
                                                 "float32 on the CPU build).")
@click.option("--vllm-arg", "vllm_args", multiple=True, metavar="KEY=VALUE", help="Any other vllm.LLM argument.")
@click.option("--gpus", default=None, help="GPU numbers, e.g. 0,1,2,3: one vLLM engine per --vllm-tp GPUs, "
                                          "the models queued over them (one worker process per GPU set).")
@click.option("--worker", is_flag=True, hidden=True)
def eval_command(models, more_models, run_dir, tasks, backend, limit, data_dir, out, batch_size, max_new_tokens, seed,
                 arith_seed, allow_code_execution, allow_weak_sandbox, code_samples, code_temperature, code_timeout,
                 code_workers, cpu_workers, judge, judge_url, judge_model, with_base, vllm_tp, vllm_gpu_memory,
                 vllm_max_model_len, vllm_dtype, vllm_args, gpus, worker) -> None:
    """Evaluate model folders; writes OUT/<model>/<task>.json (+ samples) and OUT/summary.{md,png,json}.

    Examples: sftmerge eval --models runs/r1/order-0 runs/r1/merged/select --tasks arith,gsm8k --limit 50;
    sftmerge eval --run runs/r1 --tasks arith (every sub-model and merge of the run).
    """
    import time
    from pathlib import Path

    from sftmerge.eval.backends import resolve_backend
    from sftmerge.eval.runner import check_inputs, evaluate_models, run_models
    from sftmerge.eval.tasks import EvalSettings, parse_tasks

    from sftmerge.eval.runner import run_base, run_tasks
    from sftmerge.eval.vllm_options import parse_vllm_options

    t0 = time.time()
    vllm = parse_vllm_options(vllm_tp, vllm_gpu_memory, vllm_max_model_len, vllm_dtype, vllm_args)
    all_models = [*models, *more_models]
    if run_dir:
        all_models += [*([run_base(run_dir)] if with_base else []), *run_models(run_dir)]
    if not all_models:
        raise SftmergeError("no models: give --models DIR [DIR ...] or --run RUN")
    if tasks.strip().lower() == "auto":
        if not run_dir:
            raise SftmergeError("--tasks auto needs --run (the tasks come from the run's training data)")
        tasks = ",".join(run_tasks(run_dir, allow_code_execution))
    task_list = parse_tasks(tasks)
    settings = EvalSettings(
        limit=limit, data_dir=Path(data_dir) if data_dir else None, seed=seed, batch_size=batch_size,
        max_new_tokens=max_new_tokens, arith_seed=arith_seed, allow_code_execution=allow_code_execution,
        allow_weak_sandbox=allow_weak_sandbox, code_samples=code_samples, code_temperature=code_temperature,
        code_timeout=code_timeout, code_workers=code_workers, cpu_workers=cpu_workers, judge=judge,
        judge_url=judge_url, judge_model=judge_model, vllm=vllm,
    )
    check_inputs(all_models, task_list, settings)
    chosen = resolve_backend(backend)
    if gpus and not worker:
        failures = _on_gpu_sets(all_models, gpus, vllm, chosen, {
            "--tasks": ",".join(task_list), "--limit": limit, "--data-dir": data_dir, "--out": out,
            "--batch-size": batch_size, "--max-new-tokens": max_new_tokens, "--seed": seed, "--arith-seed": arith_seed,
            "--allow-code-execution": allow_code_execution, "--allow-weak-sandbox": allow_weak_sandbox,
            "--code-samples": code_samples, "--code-temperature": code_temperature, "--code-timeout": code_timeout,
            "--code-workers": code_workers, "--judge": judge, "--judge-url": judge_url, "--judge-model": judge_model})
    else:
        failures = evaluate_models(all_models, task_list, settings, chosen, Path(out), echo=click.echo,
                                   summary=not worker)
    if run_dir and not worker:
        from sftmerge.eval.paired_table import write_paired
        from sftmerge.io.layout import RunLayout

        run = RunLayout(run_dir)
        write_paired(Path(out), [p.name for p in run.orders()], [p.name for p in run.merges()], seed=0)
    done = len(all_models) * len(task_list) - len(failures)
    click.echo(f"evaluated {done}/{len(all_models) * len(task_list)} model-task pairs with {chosen} "
               f"in {time.time() - t0:.0f}s; summary: {Path(out) / 'summary.md'}")
    if failures:
        raise SftmergeError(f"{len(failures)} failed: " + "; ".join(failures))


def eval_flags(values: dict) -> list:
    """Option values back to `sftmerge eval` flags (None and False left out), for worker command lines."""
    out = []
    for flag, value in values.items():
        if value is None or value is False:
            continue
        out += [flag] if value is True else [flag, str(value)]
    return out


def _on_gpu_sets(models, gpus, vllm, backend, values) -> list:
    """Every model on the GPU sets of --gpus (eval/gpu_schedule.py); the summary once, at the end."""
    from pathlib import Path

    from sftmerge.eval.gpu_schedule import parse_gpus, run_workers, workers
    from sftmerge.eval.summary import write_summary

    args = [*eval_flags(values), "--backend", backend, *vllm.cli_args()]
    failures = run_workers(workers(models, parse_gpus(gpus), vllm.tensor_parallel, args), echo=click.echo)
    write_summary(Path(values["--out"]))
    return failures
