"""The run folder's settings: RUN/config.yaml, written on the first run, checked on every rerun.

A rerun with other settings is refused once the run has something to lose (a finished
order, or a work folder holding a resume checkpoint), since its orders must differ only
in the data order. Before that (a first attempt that failed early, say, on a wrong
`max_length`), the new settings replace the stored ones and the abandoned work folders
are removed, so a corrected command is never locked out by a failed one.
"""

from __future__ import annotations

import shutil
from dataclasses import fields
from typing import Callable, List

import yaml

from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_text
from sftmerge.io.layout import SUMMARY_NAME, RunLayout
from sftmerge.train.checkpoints import has_progress
from sftmerge.train.common_config import dump_config
from sftmerge.train.config import SFTRunConfig


def prepare_run(config: SFTRunConfig, echo: Callable[[str], None] = print) -> RunLayout:
    """Create RUN/ with config.yaml, or check an existing run's settings against `config`."""
    run = RunLayout(config.output_dir)
    if run.config.is_file():
        differs = settings_differ(run, config)
        if not differs:
            return run
        said = ", ".join(differs)
        if run.orders(marker=SUMMARY_NAME) or any(has_progress(w) for w in run.order_works()):
            raise SftmergeError(f"{run.root} was started with other settings (differs in: {said}); "
                                "use another output_dir or remove that run")
        echo(f"{run.root}: no order finished or saved a checkpoint under the old settings; "
             f"replacing them (differed in: {said})")
        for work in run.order_works():
            shutil.rmtree(work)
    run.root.mkdir(parents=True, exist_ok=True)
    write_text(run.config, dump_config(config))
    return run


def settings_differ(run: RunLayout, config: SFTRunConfig) -> List[str]:
    """Keys whose stored value differs from `config`'s (K aside: a run may grow)."""
    old = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
    old.pop("orders", None)
    # Keys added after a run was made (l1, ...) hold their default there.
    old = {**{f.name: f.default for f in fields(config) if f.name != "orders"}, **old}
    new = config.identity()
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
