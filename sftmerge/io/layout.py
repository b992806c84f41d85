"""Where everything of a run lives: one object owns every path of a run folder.

A run folder (made by `sftmerge train sft`, `sftmerge demo`, `make reproduce`):

    RUN/config.yaml                 settings of the run (checked on every rerun)
    RUN/recipes/<name>.yml          merge recipes over the K orders
    RUN/order-<k>/                  finished sub-model k (summary.json, sample_losses.jsonl,
                                    checkpoints/step-<n>/ model-only snapshots)
    RUN/.order-<k>.work/            order k while it trains (resumable; `work_folder`)
    RUN/merged/<name>/              merged models
    RUN/eval/<model>/<task>.json    evaluation results (+ <task>.samples.jsonl)
    RUN/imbalance/, RUN/steps/      diagnostics
    RUN/paired.json, RUN/stages.json, RUN/REPORT.md

Modules never spell these names themselves; they ask a `RunLayout`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

ORDER_PREFIX = "order-"
STEP_PREFIX = "step-"
CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
SAMPLE_LOSSES_NAME = "sample_losses.jsonl"
MODEL_CONFIG = "config.json"  # present in every finished Hugging Face model folder
REPORT_NAME = "merge_report.json"  # written next to every merged model
RECIPE_NAME = "mergekit_config.yml"  # the name mergekit gives the recipe in its outputs

_NUMBERED = re.compile(r"^(?:order|step)-(\d+)$")


def number_of(path: str | os.PathLike) -> Optional[int]:
    """k of `order-k`, n of `step-n`; None for any other name."""
    m = _NUMBERED.match(Path(path).name)
    return int(m.group(1)) if m else None


def order_name(k: int) -> str:
    return f"{ORDER_PREFIX}{k}"


def step_name(n: int) -> str:
    return f"{STEP_PREFIX}{n}"


def is_order_name(name: str) -> bool:
    """`order-k`: a sub-model's folder name (as evaluation results name it)."""
    return name.startswith(ORDER_PREFIX) and number_of(name) is not None


def work_folder(final: str | os.PathLike) -> Path:
    """`.<name>.work/` beside `final`: where a training run works until `final` is complete."""
    final = Path(final)
    return final.parent / f".{final.name}.work"


def is_model_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / MODEL_CONFIG).is_file()


def numbered(folder: Path, prefix: str, marker: str = MODEL_CONFIG) -> List[Path]:
    """`folder/<prefix>N` folders holding `marker`, in N order."""
    found = [p for p in folder.glob(prefix + "*") if number_of(p) is not None and (p / marker).is_file()]
    return sorted(found, key=number_of)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # --- training -----------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def lock(self) -> Path:
        """Held (flock) by a training job while it writes or checks the run's shared files."""
        return self.root / ".sftmerge.lock"

    def order(self, k: int) -> Path:
        return self.root / order_name(k)

    def order_work(self, k: int) -> Path:
        return work_folder(self.order(k))

    def order_works(self) -> List[Path]:
        """Work folders of orders that started and have not finished (resumable)."""
        return sorted(p for p in self.root.glob(f".{ORDER_PREFIX}*.work") if p.is_dir())

    def order_summary(self, k: int) -> Path:
        return self.order(k) / SUMMARY_NAME

    def orders(self, marker: str = MODEL_CONFIG) -> List[Path]:
        """Finished order folders (those holding `marker`), in k order."""
        return numbered(self.root, ORDER_PREFIX, marker)

    @staticmethod
    def summary(model: Path) -> Path:
        return model / SUMMARY_NAME

    @staticmethod
    def sample_losses(model: Path) -> Path:
        return model / SAMPLE_LOSSES_NAME

    @staticmethod
    def snapshots(model: Path) -> Path:
        return model / "checkpoints"

    @staticmethod
    def snapshot(model: Path, step: int) -> Path:
        return model / "checkpoints" / step_name(step)

    # --- merging ------------------------------------------------------------------------
    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    def recipe(self, name: str) -> Path:
        return self.recipes / f"{name}.yml"

    @property
    def merged_root(self) -> Path:
        return self.root / "merged"

    def merged(self, name: str) -> Path:
        return self.merged_root / name

    def merges(self) -> List[Path]:
        return sorted(p for p in self.merged_root.glob("*") if is_model_folder(p))

    # --- evaluation and reports ---------------------------------------------------------
    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    @property
    def results(self) -> "ResultsLayout":
        return ResultsLayout(self.eval_root)

    def eval_result(self, model: str, task: str) -> Path:
        return self.results.result(model, task)

    def eval_samples(self, model: str, task: str) -> Path:
        return self.results.samples(model, task)

    @property
    def imbalance(self) -> Path:
        return self.root / "imbalance"

    def merged_losses(self, name: str) -> Path:
        """A merged model's per-sample losses on this run's training data (figure 3)."""
        return self.imbalance / "losses" / f"{name}.jsonl"

    @property
    def base_equal(self) -> Path:
        """The sub-models' shares of elements equal to the base (what `resample` redraws)."""
        return self.imbalance / "base_equal.json"

    @property
    def steps(self) -> Path:
        return self.root / "steps"

    @property
    def paired(self) -> Path:
        return self.root / "paired.json"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def report(self) -> Path:
        return self.root / "REPORT.md"


@dataclass(frozen=True)
class ResultsLayout:
    """An evaluation output folder (`sftmerge eval --out OUT`, or RUN/eval):

    OUT/<model>/<task>.json, <task>.samples.jsonl, <task>.error.txt; OUT/summary.{json,md,png}.
    """

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    def model(self, name: str) -> Path:
        return self.root / name

    def result(self, model: str, task: str) -> Path:
        return self.model(model) / f"{task}.json"

    @staticmethod
    def samples_name(task: str) -> str:
        return f"{task}.samples.jsonl"

    def samples(self, model: str, task: str) -> Path:
        return self.model(model) / self.samples_name(task)

    def error_log(self, model: str, task: str) -> Path:
        return self.model(model) / f"{task}.error.txt"

    def results(self) -> List[Path]:
        """Every OUT/<model>/<name>.json (result files and side files alike; callers filter by task)."""
        return sorted(self.root.glob("*/*.json"))

    def summary(self, suffix: str) -> Path:
        return self.root / f"summary.{suffix}"

    def paired(self, suffix: str) -> Path:
        """OUT/paired.{json,md}: merges against single models (`sftmerge eval --run`)."""
        return self.root / f"paired.{suffix}"
