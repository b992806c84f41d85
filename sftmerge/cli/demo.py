"""`sftmerge demo`: the whole pipeline in one resumable command (what `make demo` runs)."""

from __future__ import annotations

import click

from sftmerge.cli.config_options import config_options, take_overrides
from sftmerge.pipelines.multi_order import MERGES
from sftmerge.train.config import SFTRunConfig

TRAIN_FLAGS_LEFT_OUT = ("seed",)  # --seed is the paired bootstrap's seed here


@click.command("demo")
@click.option("--config", default=None, type=click.Path(dir_okay=False),
              help="Training config (default: the embedded train/configs/arith.yaml).")
@click.option("--merges", default=",".join(MERGES), show_default=True, help="Recipes of RUN/recipes/ to merge.")
@click.option("--limit", "eval_limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="Evaluation problems per model (0: all).")
@click.option("--max-new-tokens", type=int, default=None, help="Generation length (default: the task's).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Local evaluation data (gsm8k/, mbpp/, alpaca_eval/) instead of the Hub.")
@click.option("--backend", type=click.Choice(["auto", "vllm", "hf"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=100, show_default=True,
              help="Evaluation batch size (>= 1); DemoSettings.batch_size.")
@click.option("--allow-code-execution", is_flag=True, help="Needed for data=code (MBPP runs model-written code).")
@click.option("--allow-weak-sandbox", is_flag=True,
              help="Run model-written code even without bubblewrap (weaker isolation; docs/security.md).")
@click.option("--seed", default=0, show_default=True, help="Seed of the paired bootstrap intervals.")
@click.option("--ensemble/--no-ensemble", default=True, show_default=True,
              help="Score the output ensemble of the K sub-models (mean next-token log-probabilities) as a row.")
@click.option("--merge-seeds", type=int, default=3, show_default=True,
              help="Recipe seeds for select and resample (42, 43, ...): the merge-seed spread (1: one seed).")
@click.option("--compute-matched/--no-compute-matched", default=False, show_default=True,
              help="Also train one data order for K x the epochs (doubles the training) and score it as a row.")
# Training: the config's fields (`--k`/--orders, --epochs, --out, --checkpoint-steps: snapshots and figure 4, ...);
# the training seed is the config's `seed` key, since --seed is the bootstrap's.
@config_options(SFTRunConfig, exclude=TRAIN_FLAGS_LEFT_OUT)
def demo_command(config, merges, eval_limit, max_new_tokens, data_dir, backend, batch_size, allow_code_execution,
                 allow_weak_sandbox, seed, ensemble, merge_seeds, compute_matched, **knobs) -> None:
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
        overrides=take_overrides(SFTRunConfig, knobs, exclude=TRAIN_FLAGS_LEFT_OUT),
        merges=chosen, eval_limit=eval_limit or None, max_new_tokens=max_new_tokens, data_dir=data_dir, backend=backend,
        batch_size=batch_size, allow_code_execution=allow_code_execution,
        allow_weak_sandbox=allow_weak_sandbox, seed=seed, ensemble=ensemble, merge_seeds=merge_seeds,
        compute_matched=compute_matched,
    )
    report = run_demo(settings, echo=click.echo)
    click.echo(f"report: {report}")
