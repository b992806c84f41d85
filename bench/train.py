"""`make bench-train`: training throughput of `sftmerge train sft` against plain TRL.

Both train one order of the same config (model, data, settings; a reduced sample count
and epochs so a run takes about a minute on a 2-core CPU) on the same batches (the plain
script follows order 0's sample order: bench/train_plain.py), each in its own process with
the same environment, interleaved A B B A ... so drift in machine load hits both alike.
Throughput is response+prompt tokens of the prepared dataset x epochs over the
Trainer's train_runtime, counted the same way for both. After every run the CPU's
matrix-multiply rate on the model's own GEMM shapes is measured in this process
(bench/gemm.py: same dtype, a micro-batch's tokens as rows), so it sees the same load;
its best is the peak. Prints the medians, the model FLOP utilisation of each
(6 x parameters x tokens/s over that peak), and last the ratio sftmerge / plain
(target: at least 1.0).

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

from bench.gemm import gemm_rates, parameter_count
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
            "steps": summary["steps"], "precision": summary.get("precision", "fp32"),
            "tokens": summary["tokens_per_second"] * summary["train_seconds"]}


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
    shapes = json.loads((Path(config.base) / "config.json").read_text())
    parameters = parameter_count(config.base)
    results = {"sftmerge": [], "plain": []}
    gemms = []
    order = []
    for i in range(runs):
        order += [("sftmerge", "plain"), ("plain", "sftmerge")][i % 2]
    for n, name in enumerate(order):
        out = work / f"{name}-{n}"
        start = time.time()
        r = (run_sftmerge if name == "sftmerge" else run_plain)(cfg, out, env)
        r["wall_seconds"] = round(time.time() - start, 1)
        results[name].append(r)
        rows = max(1, round(r["tokens"] / (r["steps"] * config.gradient_accumulation_steps)))
        gemms.append(gemm_rates(shapes, rows, r["precision"]))
        click.echo(f"{name:9s} run {len(results[name])}: {r['tokens_per_second']:8.1f} tokens/s "
                   f"(train {r['train_seconds']:.1f}s, {r['steps']} steps, process {r['wall_seconds']}s); "
                   f"GEMMs after it: peak {gemms[-1]['peak_gflops']:.1f}, mix {gemms[-1]['mix_gflops']:.1f} GFLOP/s")
        shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(x["tokens_per_second"] for x in v) for k, v in results.items()}
    ratio = med["sftmerge"] / med["plain"]
    peak = max(g["peak_gflops"] for g in gemms) * 1e9
    mfu = {k: 6 * parameters * v / peak for k, v in med.items()}
    record = {
        "config": config.to_dict(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_end": os.getloadavg(),
        "runs": results,
        "median_tokens_per_second": med,
        "ratio": ratio,
        "parameters": parameters,
        "gemm_peak_gflops": peak / 1e9,
        "model_flop_utilisation": mfu,
        "gemms": gemms,
    }
    (work / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    click.echo(f"median tokens/s: sftmerge {med['sftmerge']:.1f}, plain TRL {med['plain']:.1f} "
               f"({config.num_samples} samples x {epochs} epoch, {config.base}); details in {work / 'bench.json'}")
    click.echo(f"model FLOP utilisation (6 x {parameters / 1e6:.1f}M parameters x tokens/s over the measured "
               f"{gemms[0]['precision']} GEMM peak of {peak / 1e9:.1f} GFLOP/s, {gemms[0]['threads']} threads; "
               f"load average {os.getloadavg()[0]:.1f}): sftmerge {mfu['sftmerge']:.1%}, plain TRL {mfu['plain']:.1%}")
    click.echo(f"ratio sftmerge/plain tokens/s: {ratio:.3f} (target >= 1.0)")


if __name__ == "__main__":
    main()
