"""The main job end to end: base -> K order runs -> stock mergekit-yaml merges -> eval -> diagnostics -> REPORT.md.

Every stage checks what already exists and skips it, so a rerun resumes where the last
one stopped: training skips finished orders (and resumes an interrupted one), a merge
folder appears only when mergekit finished it, an evaluation result file only when its
task finished. Stage times are kept in RUN/stages.json; the report is rewritten last.
Beside the merges, the controls of pipelines/controls.py: the output ensemble, the
merge-seed spread, and (when asked for) the compute-matched single model.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from sftmerge.data.tasks import TASKS, TRAINING
from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_json
from sftmerge.io.layout import MODEL_CONFIG, RunLayout, is_model_folder
from sftmerge.merge.recipes import DEMO_METHODS, METHODS
from sftmerge.pipelines.controls import (COMPUTE_MATCHED, compute_matched_done, ensemble_call, eval_controls,
                                         evaluated, record_stock_merge, seed_merges, train_compute_matched)

MERGES = DEMO_METHODS  # recipe names of sftmerge.merge.recipes
STAGES = ("base", "train", "merge", "eval", "imbalance", "report")
# Stock mergekit-yaml runs at once: each spends much of its time importing torch and mergekit
# on one core, so two overlap well on a small machine.
STOCK_WORKERS = 2


@dataclass
class DemoSettings:
    config: str  # training config YAML (train/configs/arith.yaml by default)
    overrides: Dict = field(default_factory=dict)  # CLI knobs over the config (orders, base, data, ...)
    merges: tuple = MERGES
    eval_limit: Optional[int] = None
    max_new_tokens: Optional[int] = None
    data_dir: Optional[str] = None
    backend: str = "auto"
    # One batch for the demo's 100 problems: sequences leave it as they end, so fewer decoding steps
    # than two batches of 50 (one SmolLM2 model on one thread: 50 s against 62 s, same answers).
    batch_size: int = 100  # `sftmerge demo --batch-size`'s default too
    allow_code_execution: bool = False
    allow_weak_sandbox: bool = False  # run code without bubblewrap (docs/security.md)
    seed: int = 0  # paired bootstrap seed (recorded in the report)
    ensemble: bool = True  # the output ensemble of the K sub-models as a row
    merge_seeds: int = 3  # recipe seeds of each seeded merge (select, resample): 42, 43, ...
    compute_matched: bool = False  # one order trained K x the epochs (doubles the training)

    def all_merges(self) -> List[str]:
        """The merges, then the seed-spread merges of the seeded ones."""
        return [*self.merges, *seed_merges(self.merges, self.merge_seeds)]

    def eval_settings(self):
        from sftmerge.eval.tasks import EvalSettings

        return EvalSettings(limit=self.eval_limit, data_dir=Path(self.data_dir) if self.data_dir else None,
                            batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                            allow_code_execution=self.allow_code_execution,
                            allow_weak_sandbox=self.allow_weak_sandbox)


@dataclass(frozen=True)
class StageResult:
    """What a stage did: `did_work` False when it found everything already done."""

    did_work: bool
    message: str


def stage_base(config) -> StageResult:
    from sftmerge.train.base import BASES, make_base

    if config.base == BASES["smollm2"]["default_out"]:
        record = make_base("smollm2", config.base)
        return StageResult(False, "already there") if record["cached"] else StageResult(True, "written")
    if not is_model_folder(config.base):
        raise SftmergeError(f"base {config.base} is not a model folder (no {MODEL_CONFIG})")
    return StageResult(False, "given")


def stage_train(config, echo, compute_matched: bool = False) -> StageResult:
    """The K orders (and the compute-matched single): side by side on a CPU (pipelines/train_pool.py),
    else one after the other."""
    from sftmerge.eval.losses import sample_losses
    from sftmerge.pipelines.train_pool import train_side_by_side
    from sftmerge.train.sft import run_multi_order

    run = RunLayout(config.output_dir)
    todo = [k for k in range(config.orders) if not run.order_summary(k).is_file()]
    matched = compute_matched and not compute_matched_done(config)
    if not train_side_by_side(config, todo, matched, echo):
        run_multi_order(config, echo=echo, score_samples=sample_losses)
        if matched:
            train_compute_matched(config, echo)
    message = f"{len(todo)} new, {config.orders - len(todo)} already there"
    if compute_matched:
        message += f"; {COMPUTE_MATCHED}: {'trained' if matched else 'already there'}"
    return StageResult(bool(todo) or matched, message)


def stage_merge(run: RunLayout, merges, echo, in_process=()) -> StageResult:
    """Each recipe of RUN/recipes/ through the stock mergekit-yaml into RUN/merged/<name>/, up to
    STOCK_WORKERS at once; those of `in_process` (the seed spread) by the merge driver in this process."""
    from concurrent.futures import ThreadPoolExecutor

    from sftmerge.merge.stock import mergekit_yaml
    from sftmerge.pipelines.controls import MERGEKIT_RANDOM_SEED, merge_in_process

    def timed(merge, name: str):
        t0 = time.time()
        return name, merge(name), time.time() - t0

    def stock(name: str) -> bool:
        made = mergekit_yaml(run.recipe(name), run.merged(name), random_seed=MERGEKIT_RANDOM_SEED)
        record_stock_merge(run, name)
        return made

    # mergekit's ties recipes sparsify every tensor by magnitude: the longest stock merges here
    # (2026-11-26 demos: ties 23-33 s, the others 8-23 s), so they start first.
    outside = sorted((m for m in merges if m not in in_process), key=lambda m: "ties" not in m)
    workers = max(1, min(STOCK_WORKERS, os.cpu_count() or 1, len(outside)))
    echo(f"merging {len(merges)} recipes: {len(outside)} by the stock mergekit-yaml ({workers} at a time), "
         f"{len(merges) - len(outside)} in this process")
    # The in-process merges run while the stock ones start their interpreters (seconds of imports
    # each); a failure surfaces once the running merges end.
    with ThreadPoolExecutor(workers) as pool:
        stock_runs = pool.map(lambda name: timed(stock, name), outside)
        finished = [timed(lambda name: merge_in_process(run.recipe(name), run.merged(name)), m)
                    for m in merges if m in in_process]
        finished = list(stock_runs) + finished
    done = 0
    for name, made, seconds in finished:
        if made:
            done += 1
            how = "the merge driver, in this process" if name in in_process else "mergekit-yaml"
            echo(f"merged {name} by {how} in {seconds:.0f}s -> {run.merged(name)}")
    return StageResult(done > 0, f"{done} new, {len(merges) - done} already there")


def models_of(run: RunLayout, merges) -> List[str]:
    return [str(p) for p in run.orders()] + [str(run.merged(m)) for m in merges]


def stage_eval(run: RunLayout, task: str, settings: DemoSettings, config, echo) -> StageResult:
    from sftmerge.eval.backends import resolve_backend
    from sftmerge.eval.runner import evaluate_models
    from sftmerge.eval.summary import write_summary

    ev = settings.eval_settings()
    backend = resolve_backend(settings.backend)
    # The base on the same problems: the reference that shows what fine-tuning bought.
    models = [config.base, *models_of(run, settings.all_merges())]
    todo = [m for m in models if not evaluated(run.eval_result(Path(m).name, task), ev)]
    calls = ensemble_call(run, task, settings, config) if todo else []  # beside the models, when pooled
    if todo:
        failures = evaluate_models(todo, [task], ev, backend, run.eval_root, echo=echo, summary=False, calls=calls,
                                   tail=pool_tail(run, settings.merges, config.base))
        if failures:
            raise SftmergeError(f"evaluation failed: {'; '.join(failures)}")
    controls = [name for name, _ in calls] + eval_controls(run, task, settings, config, backend, echo)
    write_summary(run.eval_root)
    n = len(todo) + len(controls)
    return StageResult(n > 0, f"{n} evaluated, {len(models) + len(_controls(settings, task)) - n} already there")


def pool_tail(run: RunLayout, merges, base: str) -> list:
    """[(name, job)] for the imbalance stage, run at the evaluation pool's end, where short jobs
    fill the workers' last minutes instead of a stage of their own on a cold interpreter: the
    merged models' per-sample training losses (figure 3), the sub-models' base-equal shares."""
    from sftmerge.eval.cpu_pool import Call
    from sftmerge.eval.imbalance import losses_to_score

    todo = losses_to_score(run.root, [str(run.merged(m)) for m in merges])
    calls = [(f"{Path(d).name} (figure 3)", Call("sftmerge.eval.imbalance:score_merged", (str(run.root), d)))
             for d in todo]
    if not run.base_equal.is_file():
        calls.append(("base-equal shares", Call("sftmerge.eval.sparsity:write_base_equal", (str(run.root), base))))
    return calls


def _controls(settings: DemoSettings, task: str) -> List[str]:
    from sftmerge.eval.ensemble import ENSEMBLE, supports

    return [m for m, on in ((ENSEMBLE, settings.ensemble and supports(task)),
                            (COMPUTE_MATCHED, settings.compute_matched)) if on]


def stage_imbalance(run: RunLayout, merges, config, limit: Optional[int]) -> StageResult:
    """Figures 1 and 3, the sub-models' shares of base-equal elements; figure 4 too when the run
    kept same-step snapshots."""
    from sftmerge.eval.imbalance import imbalance, is_current

    merged = [str(run.merged(m)) for m in merges]
    did = []
    if not is_current(run.imbalance, merged):
        imbalance(run.root, merged, run.imbalance)
        did.append("figures 1, 3")
    if not run.base_equal.is_file():  # normally written by the evaluation pool (`pool_tail`)
        from sftmerge.eval.sparsity import write_base_equal

        write_base_equal(str(run.root), config.base, echo=lambda _: None)
        did.append("base-equal shares")
    if config.keep_checkpoint_steps and not (run.steps / "steps.json").is_file():
        from sftmerge.pipelines.steps import step_curves

        step_curves(run.root, run.steps, "select", limit or 100)
        did.append("figure 4")
    return StageResult(bool(did), f"{' and '.join(did)} written" if did else "already there")


def _with_seed_recipes(run: RunLayout, config, settings: DemoSettings) -> List[str]:
    """RUN/recipes/ gets the seed-spread recipes; returns every merge to make."""
    from sftmerge.merge.recipes import spread_seeds
    from sftmerge.train.run_folder import write_seed_recipes

    write_seed_recipes(run, config, settings.merges, spread_seeds(settings.merge_seeds))
    return settings.all_merges()


def run_demo(settings: DemoSettings, echo: Callable[[str], None] = print) -> Path:
    """All stages in order; returns the report's path."""
    from sftmerge.pipelines.report import cpu_times, machine, steal_share, write_report
    from sftmerge.train.config import load_config

    from sftmerge.eval.tasks import check_settings

    config = load_config(settings.config, settings.overrides)
    if config.orders < 2:
        raise SftmergeError(f"the demo merges sub-models: K must be at least 2 (got {config.orders})")
    check_settings(settings.eval_settings())  # bad evaluation flags fail now, not after training
    unknown = [m for m in settings.merges if m not in METHODS]
    if unknown:
        raise SftmergeError(f"unknown merge {unknown[0]!r} (known: {', '.join(METHODS)})")
    if settings.merge_seeds < 1:
        raise SftmergeError(f"--merge-seeds must be at least 1 (got {settings.merge_seeds})")
    data_name = config.data.split(":")[0]
    if data_name not in TRAINING:
        raise SftmergeError(f"no evaluation task for data {config.data!r} (known: {', '.join(TRAINING)})")
    data = TRAINING[data_name]
    if settings.data_dir and ":" not in config.data and data.local_dir:
        config.data = f"{data_name}:{Path(settings.data_dir) / data.local_dir}"
    task = data.eval_task
    if TASKS[task].executes_code:  # refused now, not after training
        from sftmerge.eval.sandbox import require_opt_in

        require_opt_in(settings.allow_code_execution, task, settings.allow_weak_sandbox)
    run = RunLayout(config.output_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    times = json.loads(run.stages.read_text()) if run.stages.is_file() else {}
    steps = {
        "base": lambda: stage_base(config),
        "train": lambda: stage_train(config, echo, settings.compute_matched),
        "merge": lambda: stage_merge(run, _with_seed_recipes(run, config, settings), echo,
                                     in_process=seed_merges(settings.merges, settings.merge_seeds)),
        "eval": lambda: stage_eval(run, task, settings, config, echo),
        "imbalance": lambda: stage_imbalance(run, settings.merges, config, settings.eval_limit),
        "report": lambda: StageResult(True, str(write_report(run.root, task, settings, times, machine(), config))),
    }
    for i, stage in enumerate(STAGES, 1):
        echo(f"[{i}/{len(STAGES)}] {stage} ...")
        t0, cpu0 = time.time(), cpu_times()
        result = steps[stage]()
        seconds = time.time() - t0
        # A stage that found everything done keeps the time of the run that did the work.
        if stage not in times or result.did_work:
            times[stage] = {"seconds": round(seconds, 1), "result": result.message}
            steal = steal_share(cpu0, cpu_times())
            if steal is not None:
                times[stage]["cpu_steal"] = steal
        write_json(run.stages, times)
        echo(f"[{i}/{len(STAGES)}] {stage}: {result.message} ({seconds:.1f}s)")
    return run.report
