"""The run folder's shared files: RUN/config.yaml and RUN/recipes/, safe for concurrent jobs.

config.yaml is written on the first run and checked on every rerun. A rerun with other
settings is refused once the run has something to lose (a finished order, or a work
folder holding a resume checkpoint), since its orders must differ only in the data
order. Before that (a first attempt that failed early, say, on a wrong `max_length`),
the new settings replace the stored ones and the abandoned work folders are removed, so
a corrected command is never locked out by a failed one.

Several `--order k` jobs may start on one run folder at the same moment (one per GPU
group or SLURM task). Each checks and writes the shared files while holding an exclusive
lock on RUN/.sftmerge.lock (fcntl.flock: released by the kernel if the job dies), writes
a file only when it is absent or different (an identical file is left alone), and always
through a temp file and a rename, so a reader outside the lock never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import yaml

from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_text
from sftmerge.io.layout import SUMMARY_NAME, RunLayout
from sftmerge.train.checkpoints import has_progress
from sftmerge.train.common_config import dump_config
from sftmerge.train.config import SFTRunConfig


@contextlib.contextmanager
def run_lock(run: RunLayout) -> Iterator[None]:
    """Exclusive hold on the run's shared files (blocks until other jobs let go)."""
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` atomically unless `path` already holds exactly it; True if written."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def prepare_run(config: SFTRunConfig, echo: Callable[[str], None] = print) -> RunLayout:
    """Create RUN/ with config.yaml, or check an existing run's settings against `config`."""
    run = RunLayout(config.output_dir)
    with run_lock(run):
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
        from sftmerge.train.hardware import emulation_note, resolve_precision

        note = emulation_note(resolve_precision(config.precision))
        if note:  # once, when the run is set up: bf16 there is computed in software
            echo(note)
        write_if_changed(run.config, dump_config(config))
    return run


def write_run_recipes(run: RunLayout, config: SFTRunConfig) -> None:
    """RUN/recipes/<method>.yml for the K orders (K >= 2), each written only where it is
    missing or differs, under the run's lock."""
    from sftmerge.merge.recipes import DEFAULT_SEED, METHODS

    made_by = f"Made by `sftmerge train sft` for the run {run.root} (K = {config.orders})."
    _write_recipes(run, config, {m: (m, DEFAULT_SEED) for m in METHODS}, made_by)


def write_seed_recipes(run: RunLayout, config: SFTRunConfig, methods: Sequence[str],
                       seeds: Sequence[int]) -> List[str]:
    """RUN/recipes/<method>-seed<s>.yml: each seeded method of `methods` with each seed of
    `seeds` other than the default recipes' (which RUN/recipes/<method>.yml already has).
    Returns the recipe names, method by method."""
    from sftmerge.merge.recipes import SEEDED_METHODS, seeded_name

    named = {seeded_name(m, s): (m, s) for m in methods if m in SEEDED_METHODS for s in seeds}
    named = {n: ms for n, ms in named.items() if n != ms[0]}
    made_by = f"Made by `sftmerge demo` for the run {run.root} (K = {config.orders}): merge-seed spread."
    _write_recipes(run, config, named, made_by)
    return list(named)


def _write_recipes(run: RunLayout, config: SFTRunConfig, named: Dict[str, Tuple[str, int]], made_by: str) -> None:
    """RUN/recipes/<name>.yml = (method, seed) over the K orders, each written only where it is
    missing or differs, under the run's lock; nothing for K < 2."""
    from sftmerge.merge.recipes import render

    if config.orders < 2:
        return
    models = [str(run.order(i)) for i in range(config.orders)]
    with run_lock(run):
        run.recipes.mkdir(parents=True, exist_ok=True)
        for name, (method, seed) in named.items():
            path = run.recipe(name)
            write_if_changed(path, render(method, config.base, models, seed, made_by=made_by, path=str(path)))


def settings_differ(run: RunLayout, config: SFTRunConfig) -> List[str]:
    """Keys whose stored value differs from `config`'s (K aside: a run may grow)."""
    old = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
    old.pop("orders", None)
    # Keys added after a run was made (l1, format, ...) hold their default there.
    old = {**{f.name: f.default for f in fields(config) if f.name != "orders"}, **old}
    new = config.identity()
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
