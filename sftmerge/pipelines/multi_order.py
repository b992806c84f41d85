"""The main job end to end: base -> K order runs -> stock mergekit-yaml merges -> eval -> diagnostics -> REPORT.md.

Every stage checks what already exists and skips it, so a rerun resumes where the last
one stopped: training skips finished orders (and resumes an interrupted one), a merge
folder appears only when mergekit finished it, an evaluation result file only when its
task finished. Stage times are kept in RUN/stages.json; the report is rewritten last.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_json

MERGES = ("average", "select", "resample", "ties")  # recipe names from sftmerge.merge.recipes
TASK_FOR_DATA = {"arith": "arith", "gsm8k": "gsm8k", "alpaca": "alpaca", "code": "mbpp"}
# Where a --data-dir holds each training set (the layout of ../shared/data).
DATA_SUBDIR = {"gsm8k": "gsm8k", "alpaca": "alpaca", "code": "mbpp"}
STAGES = ("base", "train", "merge", "eval", "imbalance", "report")


@dataclass
class DemoSettings:
    config: str  # training config YAML (train/configs/arith.yaml by default)
    overrides: Dict = field(default_factory=dict)  # CLI knobs over the config (orders, base, data, ...)
    merges: tuple = MERGES
    eval_limit: Optional[int] = None
    max_new_tokens: Optional[int] = None
    data_dir: Optional[str] = None
    backend: str = "auto"
    batch_size: int = 16
    allow_code_execution: bool = False
    seed: int = 0  # paired bootstrap seed (recorded in the report)


def stage_base(config) -> str:
    from sftmerge.train.base import BASES, make_base

    if config.base == BASES["smollm2"]["default_out"]:
        record = make_base("smollm2", config.base)
        return "already there" if record["cached"] else "written"
    if not (Path(config.base) / "config.json").is_file():
        raise SftmergeError(f"base {config.base} is not a model folder (no config.json)")
    return "given"


def stage_train(config, echo) -> str:
    from sftmerge.train.sft import run_multi_order

    run = Path(config.output_dir)
    before = sum((run / f"order-{k}" / "summary.json").is_file() for k in range(config.orders))
    run_multi_order(config, echo=echo)
    return f"{config.orders - before} new, {before} already there"


def stage_merge(run: Path, merges, echo) -> str:
    """Each recipe of RUN/recipes/ through the stock mergekit-yaml into RUN/merged/<name>/."""
    from tqdm.auto import tqdm

    from sftmerge.merge.stock import mergekit_yaml

    done = 0
    for name in tqdm(merges, desc="merging (mergekit-yaml)", unit="merge"):
        t0 = time.time()
        target = run / "merged" / name
        if mergekit_yaml(run / "recipes" / f"{name}.yml", target):
            done += 1
            echo(f"merged {name} in {time.time() - t0:.0f}s -> {target}")
    return f"{done} new, {len(merges) - done} already there"


def models_of(run: Path, merges) -> List[str]:
    singles = sorted((p for p in run.glob("order-*") if (p / "config.json").is_file()),
                     key=lambda p: int(p.name.split("-")[1]))
    return [str(p) for p in singles] + [str(run / "merged" / m) for m in merges]


def stage_eval(run: Path, task: str, settings: DemoSettings, base: str, echo) -> str:
    from sftmerge.eval.backends import resolve_backend
    from sftmerge.eval.runner import evaluate_models
    from sftmerge.eval.summary import write_summary
    from sftmerge.eval.tasks import EvalSettings

    out = run / "eval"
    ev = EvalSettings(limit=settings.eval_limit, data_dir=Path(settings.data_dir) if settings.data_dir else None,
                      batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                      allow_code_execution=settings.allow_code_execution)
    # The base on the same problems: the reference that shows what fine-tuning bought.
    models = [base, *models_of(run, settings.merges)]
    todo = [m for m in models if not _evaluated(out / Path(m).name / f"{task}.json", ev)]
    if todo:
        failures = evaluate_models(todo, [task], ev, resolve_backend(settings.backend), out, echo=echo)
        if failures:
            raise SftmergeError(f"evaluation failed: {'; '.join(failures)}")
    write_summary(out)
    return f"{len(todo)} evaluated, {len(models) - len(todo)} already there"


def _evaluated(result: Path, ev) -> bool:
    """A result file exists and was made with the requested problem count and generation length."""
    if not result.is_file():
        return False
    done = json.loads(result.read_text()).get("settings", {})
    return ((ev.limit is None or done.get("limit") == ev.limit)
            and (ev.max_new_tokens is None or done.get("max_new_tokens") == ev.max_new_tokens))


def stage_imbalance(run: Path, merges, config, limit: Optional[int]) -> str:
    """Figures 1 and 3; figure 4 too when the run kept same-step snapshots."""
    from sftmerge.eval.imbalance import imbalance

    out = run / "imbalance"
    merged = [str(run / "merged" / m) for m in merges]
    done = out / "imbalance.json"
    did = []
    if not (done.is_file() and json.loads(done.read_text())["merged"] == merged):
        imbalance(run, merged, out)
        did.append("figures 1, 3")
    if config.keep_checkpoint_steps and not (run / "steps" / "steps.json").is_file():
        from sftmerge.pipelines.steps import step_curves

        step_curves(run, run / "steps", "select", limit or 100)
        did.append("figure 4")
    return f"{' and '.join(did)} written" if did else "already there"


def run_demo(settings: DemoSettings, echo: Callable[[str], None] = print) -> Path:
    """All stages in order; returns the report's path."""
    from sftmerge.pipelines.report import machine, write_report
    from sftmerge.train.config import load_config

    config = load_config(settings.config, settings.overrides)
    if config.orders < 2:
        raise SftmergeError(f"the demo merges sub-models: K must be at least 2 (got {config.orders})")
    data_name = config.data.split(":")[0]
    if settings.data_dir and ":" not in config.data and data_name in DATA_SUBDIR:
        config.data = f"{data_name}:{Path(settings.data_dir) / DATA_SUBDIR[data_name]}"
    task = TASK_FOR_DATA.get(data_name)
    if task is None:
        raise SftmergeError(f"no evaluation task for data {config.data!r} (known: {', '.join(TASK_FOR_DATA)})")
    run = Path(config.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    times_path = run / "stages.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    steps = {
        "base": lambda: stage_base(config),
        "train": lambda: stage_train(config, echo),
        "merge": lambda: stage_merge(run, settings.merges, echo),
        "eval": lambda: stage_eval(run, task, settings, config.base, echo),
        "imbalance": lambda: stage_imbalance(run, settings.merges, config, settings.eval_limit),
        "report": lambda: str(write_report(run, task, settings, times, machine())),
    }
    for i, stage in enumerate(STAGES, 1):
        echo(f"[{i}/{len(STAGES)}] {stage} ...")
        t0 = time.time()
        what = steps[stage]()
        seconds = time.time() - t0
        # A stage that found everything done keeps the time of the run that did the work.
        idle = what == "already there" or what.startswith(("0 new", "0 evaluated"))
        if stage not in times or not idle:
            times[stage] = {"seconds": round(seconds, 1), "result": what}
        write_json(times_path, times)
        echo(f"[{i}/{len(STAGES)}] {stage}: {what} ({seconds:.1f}s)")
    return run / "REPORT.md"
