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
              help=f"Comma-separated: {', '.join(TASKS)}.")
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
@click.option("--judge", type=click.Path(file_okay=False), default=None,
              help="Local judge model folder for the alpaca win rate (without it: outputs and lengths only).")
def eval_command(models, more_models, run_dir, tasks, backend, limit, data_dir, out, batch_size, max_new_tokens, seed,
                 arith_seed, allow_code_execution, allow_weak_sandbox, code_samples, code_temperature, code_timeout,
                 code_workers, judge) -> None:
    """Evaluate model folders; writes OUT/<model>/<task>.json (+ samples) and OUT/summary.{md,png,json}.

    Examples: sftmerge eval --models runs/r1/order-0 runs/r1/merged/select --tasks arith,gsm8k --limit 50;
    sftmerge eval --run runs/r1 --tasks arith (every sub-model and merge of the run).
    """
    import time
    from pathlib import Path

    from sftmerge.eval.backends import resolve_backend
    from sftmerge.eval.runner import check_inputs, evaluate_models, run_models
    from sftmerge.eval.tasks import EvalSettings, parse_tasks

    t0 = time.time()
    all_models = [*models, *more_models, *(run_models(run_dir) if run_dir else [])]
    if not all_models:
        raise SftmergeError("no models: give --models DIR [DIR ...] or --run RUN")
    task_list = parse_tasks(tasks)
    settings = EvalSettings(
        limit=limit, data_dir=Path(data_dir) if data_dir else None, seed=seed, batch_size=batch_size,
        max_new_tokens=max_new_tokens, arith_seed=arith_seed, allow_code_execution=allow_code_execution,
        allow_weak_sandbox=allow_weak_sandbox, code_samples=code_samples, code_temperature=code_temperature,
        code_timeout=code_timeout, code_workers=code_workers, judge=judge,
    )
    check_inputs(all_models, task_list, settings)
    chosen = resolve_backend(backend)
    failures = evaluate_models(all_models, task_list, settings, chosen, Path(out), echo=click.echo)
    done = len(all_models) * len(task_list) - len(failures)
    click.echo(f"evaluated {done}/{len(all_models) * len(task_list)} model-task pairs with {chosen} "
               f"in {time.time() - t0:.0f}s; summary: {Path(out) / 'summary.md'}")
    if failures:
        raise SftmergeError(f"{len(failures)} failed: " + "; ".join(failures))
