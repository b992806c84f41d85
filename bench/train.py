"""`make bench-train`: training throughput of `sftmerge train sft` against plain TRL.

Both train one order of the same config (model, data, settings; a reduced sample count
and epochs so a run takes about a minute on a 2-core CPU), each in its own process with
the same environment, interleaved A B B A ... so drift in machine load hits both alike.
Throughput is response+prompt tokens of the prepared dataset x epochs over the
Trainer's train_runtime, counted the same way for both. Prints the medians, and last the
ratio sftmerge / plain (target: at least 0.95).

    python -m bench.train [--config CFG] [--runs N] [--num-samples N] [--epochs E]
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from sftmerge.train.config import DEFAULT_CONFIG, load_config

BIN = Path(sys.executable).parent


def _run(cmd, env) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"bench: command failed: {' '.join(map(str, cmd))}")
    return proc.stdout


def run_sftmerge(cfg: Path, out: Path, env) -> dict:
    _run([BIN / "sftmerge", "train", "sft", str(cfg), "--orders", "1", "--out", str(out)], env)
    summary = json.loads((out / "order-0" / "summary.json").read_text())
    return {"tokens_per_second": summary["tokens_per_second"], "train_seconds": summary["train_seconds"],
            "steps": summary["steps"]}


def run_plain(cfg: Path, out: Path, env) -> dict:
    lines = _run([sys.executable, "-m", "bench.train_plain", str(cfg), str(out)], env).strip().splitlines()
    return json.loads(lines[-1])


@click.command()
@click.option("--config", "config_path", default=str(DEFAULT_CONFIG), show_default=True)
@click.option("--runs", default=3, show_default=True, help="Runs of each, interleaved.")
@click.option("--num-samples", default=48, show_default=True)
@click.option("--epochs", default=1, show_default=True)
@click.option("--work", default=".bench-cache/train", show_default=True)
def main(config_path: str, runs: int, num_samples: int, epochs: int, work: str) -> None:
    config = load_config(config_path, {"num_samples": num_samples, "num_train_epochs": epochs, "orders": 1,
                                       "keep_checkpoint_steps": None, "sample_losses_at_checkpoints": False})
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    results = {"sftmerge": [], "plain": []}
    order = []
    for i in range(runs):
        order += [("sftmerge", "plain"), ("plain", "sftmerge")][i % 2]
    for n, name in enumerate(order):
        out = work / f"{name}-{n}"
        start = time.time()
        r = (run_sftmerge if name == "sftmerge" else run_plain)(cfg, out, env)
        r["wall_seconds"] = round(time.time() - start, 1)
        results[name].append(r)
        click.echo(f"{name:9s} run {len(results[name])}: {r['tokens_per_second']:8.1f} tokens/s "
                   f"(train {r['train_seconds']:.1f}s, {r['steps']} steps, process {r['wall_seconds']}s)")
        shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(x["tokens_per_second"] for x in v) for k, v in results.items()}
    ratio = med["sftmerge"] / med["plain"]
    record = {
        "config": config.to_dict(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_end": os.getloadavg(),
        "runs": results,
        "median_tokens_per_second": med,
        "ratio": ratio,
    }
    (work / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    click.echo(f"median tokens/s: sftmerge {med['sftmerge']:.1f}, plain TRL {med['plain']:.1f} "
               f"({config.num_samples} samples x {epochs} epoch, {config.base}); details in {work / 'bench.json'}")
    click.echo(f"ratio sftmerge/plain tokens/s: {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
