"""`make bench-merge` (`python -m bench.merge`): param_select (with and without resampling) against mergekit
`linear` and against the I/O floor.

A synthetic ~1.1B-parameter bf16 Llama family (base + 3 sub-models) is generated once
and cached. Each merge runs in its own process (so peak RSS is that merge's alone);
the methods are interleaved round by round, rotating which goes first, and medians
are reported. Two more rows are the I/O floor (bench/io_floor.py) of the 3 models and
of the 3 models + base: reading every input tensor a method reads and writing the
output with the same shard layout, no arithmetic. Printed last: each method's wall
time over its floor, and the ratios against `linear`.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import click
import yaml


# Plain selection reads the same 3 models as linear; resampling also needs the base.
# The last variant keeps the inputs' mapped pages resident (plugins/page_release.py), as
# mergekit's own methods do, to show what dropping them saves.
FLOOR_3, FLOOR_4 = "I/O floor, 3 models", "I/O floor, 3 + base"
METHODS = {
    "linear": {"merge_method": "linear", "parameters": {"normalize": True}},
    "param_select": {"merge_method": "param_select", "parameters": {"seed": 42, "resample": False}},
    "param_select+resample": {
        "merge_method": "param_select", "base": True, "parameters": {"seed": 42, "resample": True},
    },
    "resample, pages kept": {
        "merge_method": "param_select", "base": True, "parameters": {"seed": 42, "resample": True},
        "env": {"SFTMERGE_KEEP_INPUT_PAGES": "1"},
    },
    # The floors: the recipe only names the inputs (bench/io_floor.py merges nothing).
    FLOOR_3: {"merge_method": "linear", "parameters": {}, "floor": True},
    FLOOR_4: {"merge_method": "linear", "base": True, "parameters": {}, "floor": True},
}
# Each method against the floor of the inputs it reads, and the target for that ratio.
FLOOR_OF = {"linear": (FLOOR_3, None), "param_select": (FLOOR_3, 1.2), "param_select+resample": (FLOOR_4, 1.3),
            "resample, pages kept": (FLOOR_4, None)}


def ensure_family(cache: Path, spec) -> Path:
    """Generate the family unless the cache already holds exactly this spec."""
    from sftmerge.data.synthetic import write_family

    folder = cache / "family-1b"
    marker = folder / "family.json"
    if marker.exists() and json.loads(marker.read_text()) == asdict(spec):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    tmp = cache / "family-1b.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    click.echo(f"generating the benchmark family once into {folder} (4 x ~2.2 GB)...")
    write_family(tmp, spec, progress=True)
    os.replace(tmp, folder)
    return folder


def write_recipes(family: Path, folder: Path) -> Dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, method in METHODS.items():
        recipe = {
            "merge_method": method["merge_method"],
            "models": [{"model": str(family / f"order-{k}"), "parameters": {"weight": 1.0}} for k in range(3)],
            "parameters": method["parameters"],
        }
        if method.get("base"):
            recipe["base_model"] = str(family / "base")
        paths[name] = folder / (re.sub(r"[^A-Za-z0-9_]+", "-", name) + ".yml")
        paths[name].write_text(yaml.safe_dump(recipe, sort_keys=False))
    return paths


def run_once(recipe: Path, scratch: Path, env: Optional[Dict[str, str]] = None, floor: bool = False) -> Dict[str, float]:
    """One merge (or floor) in a fresh process; returns its wall time and peak RSS."""
    out = Path(tempfile.mkdtemp(prefix="merge-", dir=scratch))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.merge", "--worker", str(recipe), str(out), *(["floor"] if floor else [])],
            capture_output=True, text=True, check=False, env={**os.environ, **(env or {})},
        )
        if proc.returncode != 0:
            raise click.ClickException(f"benchmark merge of {recipe.name} failed: {proc.stderr.strip()[-500:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def warm_kernel_cache() -> None:
    """Compile param_select's kernel for the benchmark's inputs (bf16, 3 models) into numba's
    on-disk cache, so no timed merge includes a one-off compilation (after an edit of the
    kernel, or on a fresh install); each merge still loads it, as every real merge does."""
    import torch

    from sftmerge.plugins.param_select import element_uniforms, select_elements

    models = [torch.full((4096,), float(k), dtype=torch.bfloat16) for k in range(3)]
    select_elements(models, [1.0] * 3, element_uniforms(0, "warm-up", 4096), base=models[0], resample=True,
                    kernel="cpu")


def run_benchmark(cache: Path, runs: int) -> Dict[str, List[Dict[str, float]]]:
    from tqdm import tqdm

    from sftmerge.data.synthetic import BENCH_1B, FamilySpec

    spec = FamilySpec(k=3, seed=0, dtype="bfloat16", **BENCH_1B)
    family = ensure_family(cache, spec)
    recipes = write_recipes(family, cache / "recipes")
    warm_kernel_cache()
    names = list(METHODS)
    results: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    with tqdm(total=runs * len(names), desc="merges") as bar:
        for r in range(runs):
            for name in names[r % len(names):] + names[: r % len(names)]:
                results[name].append(run_once(recipes[name], cache, METHODS[name].get("env"), METHODS[name].get("floor", False)))
                bar.update()
    return results


def summarize(results: Dict[str, List[Dict[str, float]]]) -> str:
    keys = ("seconds", "cpu_seconds", "peak_rss_gib", "peak_anon_gib", "peak_file_gib")
    med = {n: {k: statistics.median(x.get(k, float("nan")) for x in rows) for k in keys} for n, rows in results.items()}
    lines = [f"{'method':<24}{'wall s':>10}{'CPU s':>8}{'peak RSS GiB':>14}{'anon GiB':>10}{'file GiB':>10}{'runs':>6}"
             "  (medians)"]
    for n, m in med.items():
        lines.append(f"{n:<24}{m['seconds']:>10.1f}{m['cpu_seconds']:>8.1f}{m['peak_rss_gib']:>14.2f}"
                     f"{m['peak_anon_gib']:>10.2f}{m['peak_file_gib']:>10.2f}{len(results[n]):>6}")
    ref = med["linear"]
    ratios = [
        f"{n} wall {m['seconds'] / ref['seconds']:.3f}x, RSS {m['peak_rss_gib'] / ref['peak_rss_gib']:.3f}x"
        for n, m in med.items() if n != "linear" and not METHODS[n].get("floor")
    ]
    lines.append("ratios vs linear (targets: wall <= 1.15x, RSS <= 1.2x): " + "; ".join(ratios))
    floors = [
        f"{n} {med[n]['seconds'] / med[floor]['seconds']:.2f}x"
        + (f" (target <= {target}x)" if target else "") + f" of {med[floor]['seconds']:.1f} s"
        + f" [round by round: median {_paired_ratio(results[n], results[floor]):.2f}x]"
        for n, (floor, target) in FLOOR_OF.items() if n in med and floor in med
    ]
    lines.append("wall time vs the I/O floor of the same inputs: " + "; ".join(floors))
    return "\n".join(lines)


def _paired_ratio(rows: List[Dict[str, float]], floor_rows: List[Dict[str, float]]) -> float:
    """Median over rounds of a method's time over its floor's in the same round (drift in load cancels)."""
    return statistics.median(a["seconds"] / b["seconds"] for a, b in zip(rows, floor_rows))


@click.command("merge")
@click.option("--runs", default=3, show_default=True, help="Rounds; each round runs every method once.")
@click.option("--cache", default=".bench-cache", show_default=True, type=click.Path(file_okay=False),
              help="Where the synthetic family is generated once and kept.")
def bench_merge(runs: int, cache: str) -> None:
    """Merge a synthetic ~1.1B bf16 family (K=3 + base) with linear, param_select, param_select+resample; I/O floors."""
    cache_path = Path(cache).resolve()
    cache_path.mkdir(parents=True, exist_ok=True)
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    results = run_benchmark(cache_path, runs)
    (cache_path / "bench-merge.json").write_text(json.dumps(results, indent=2))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    click.echo(f"machine: {os.cpu_count()} CPUs, torch threads default, load average {load_before} at the start, "
               f"{load} at the end; raw runs in {cache_path / 'bench-merge.json'}")
    click.echo(summarize(results))


def _worker(recipe: str, out: str, floor: bool = False) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    import sftmerge.plugins.param_select  # noqa: F401  (registers the method)
    from bench.io_floor import copy_floor

    config = MergeConfiguration.model_validate(yaml.safe_load(Path(recipe).read_text()))
    sampler = MemorySampler()
    sampler.start()
    cpu = os.times()
    start = time.perf_counter()
    if floor:
        copy_floor(recipe, out)
    else:
        run_merge(config, out, options=MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    seconds = time.perf_counter() - start
    cpu_seconds = sum(os.times()[:2]) - sum(cpu[:2])  # user + system, every thread of the process
    sampler.stop()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_gib": peak_kib / 1024**2,
                      "peak_anon_gib": sampler.peak_gib("RssAnon"), "peak_file_gib": sampler.peak_gib("RssFile")}))


class MemorySampler(threading.Thread):
    """Peak anonymous and file-backed RSS, sampled every 20 ms from /proc/self/status.

    Peak RSS (VmHWM, exact) is their sum at its highest; the split shows whether memory
    is the merge's own allocations (anonymous) or pages of mapped files.
    """

    FIELDS = ("RssAnon", "RssFile")

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kib = dict.fromkeys(self.FIELDS, 0)
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(0.02):
            self._sample()

    def _sample(self):
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in self.peak_kib:
                    self.peak_kib[key] = max(self.peak_kib[key], int(line.split()[1]))

    def stop(self):
        self._halt.set()
        self.join()
        self._sample()

    def peak_gib(self, field: str) -> float:
        return self.peak_kib[field] / 1024**2


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(*sys.argv[2:4], floor=sys.argv[4:5] == ["floor"])
    else:
        bench_merge()
