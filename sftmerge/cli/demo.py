"""`sftmerge demo`: the whole pipeline in one resumable command (what `make demo` runs)."""

from __future__ import annotations

import click

from sftmerge.pipelines.multi_order import MERGES


@click.command("demo")
@click.option("--config", default=None, type=click.Path(dir_okay=False),
              help="Training config (default: the embedded train/configs/arith.yaml).")
@click.option("--k", "orders", type=int, default=None, help="K: how many data orders (default: the config's, 3).")
@click.option("--base", default=None, help="Base model folder (default: the config's; SmolLM2 is written if absent).")
@click.option("--data", default=None, help="Training data spec name[:path]: arith, gsm8k, alpaca, code.")
@click.option("--epochs", "num_train_epochs", type=int, default=None, help="Epochs (overrides the config).")
@click.option("--num-samples", type=int, default=None, help="Training pairs (overrides the config).")
@click.option("--out", "output_dir", default=None, help="Run folder (default: the config's, runs/demo).")
@click.option("--merges", default=",".join(MERGES), show_default=True, help="Recipes of RUN/recipes/ to merge.")
@click.option("--limit", "eval_limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="Evaluation problems per model (0: all).")
@click.option("--max-new-tokens", type=int, default=None, help="Generation length (default: the task's).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Local evaluation data (gsm8k/, mbpp/, alpaca_eval/) instead of the Hub.")
@click.option("--backend", type=click.Choice(["auto", "vllm", "hf"]), default="auto", show_default=True)
@click.option("--batch-size", default=50, show_default=True, help="Evaluation batch size.")
@click.option("--allow-code-execution", is_flag=True, help="Needed for data=code (MBPP runs model-written code).")
@click.option("--checkpoint-steps", "keep_checkpoint_steps", type=int, default=None,
              help="Keep snapshots every N steps and plot loss vs step with same-step merges (figure 4).")
@click.option("--seed", default=0, show_default=True, help="Seed of the paired bootstrap intervals.")
def demo_command(config, orders, base, data, num_train_epochs, num_samples, output_dir, merges, eval_limit,
                 max_new_tokens, data_dir, backend, batch_size, allow_code_execution, keep_checkpoint_steps,
                 seed) -> None:
    """Base -> K order runs -> merges (stock mergekit-yaml) -> evaluation -> diagnostics -> RUN/REPORT.md.

    A rerun skips finished stages (and finished orders, merges and evaluations inside them).
    """
    from sftmerge.pipelines.multi_order import DemoSettings, run_demo
    from sftmerge.errors import SftmergeError
    from sftmerge.train.config import DEFAULT_CONFIG

    chosen = tuple(m.strip() for m in merges.split(",") if m.strip())
    if not chosen:
        raise SftmergeError("--merges is empty")
    settings = DemoSettings(
        config=config or str(DEFAULT_CONFIG),
        overrides=dict(orders=orders, base=base, data=data, num_train_epochs=num_train_epochs,
                       num_samples=num_samples, output_dir=output_dir,
                       keep_checkpoint_steps=keep_checkpoint_steps),
        merges=chosen, eval_limit=eval_limit or None, max_new_tokens=max_new_tokens, data_dir=data_dir, backend=backend,
        batch_size=batch_size, allow_code_execution=allow_code_execution, seed=seed,
    )
    report = run_demo(settings, echo=click.echo)
    click.echo(f"report: {report}")
