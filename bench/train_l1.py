"""The cost of the L1 delta penalty: `sftmerge train sft` with and without `--l1`.

Each run trains one order of the same config in its own process (same environment),
interleaved plain, l1, l1, plain, ... so drift in machine load hits both alike. Reports
the Trainer's train_runtime (from summary.json) and the process's peak RSS (ru_maxrss),
medians per variant, then the ratios l1 / plain.

    python -m bench.train_l1 --config CFG --base BASE [--runs 3] [--num-samples 32] [--l1 1e-4]
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from sftmerge.train.config import DEFAULT_CONFIG, load_config


def _one(config: str, base: str, num_samples: int, l1: float, out: str) -> None:
    """Child process: train one order, print seconds and peak RSS as JSON."""
    from sftmerge.train.sft import run_multi_order

    cfg = load_config(config, dict(base=base, num_samples=num_samples, orders=1, num_train_epochs=1,
                                   output_dir=out, l1=l1))
    summary = run_multi_order(cfg, echo=lambda s: None)[0]
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"train_seconds": summary["train_seconds"], "steps": summary["steps"], "rss_mib": rss_mib}))


@click.command()
@click.option("--config", default=str(DEFAULT_CONFIG), show_default=True)
@click.option("--base", required=True)
@click.option("--runs", default=3, show_default=True)
@click.option("--num-samples", default=32, show_default=True)
@click.option("--l1", "l1", default=1e-4, show_default=True)
@click.option("--child", type=float, default=None, hidden=True)
@click.option("--out", default=None, hidden=True)
def main(config, base, runs, num_samples, l1, child, out) -> None:
    if child is not None:
        return _one(config, base, num_samples, child, out)
    rows = {"plain": [], "l1": []}
    order = [v for i in range(runs) for v in (("plain", "l1") if i % 2 == 0 else ("l1", "plain"))]
    for variant in order:
        tmp = tempfile.mkdtemp(prefix="bench-l1-")
        strength = 0.0 if variant == "plain" else l1
        cmd = [sys.executable, "-m", "bench.train_l1", "--config", config, "--base", base,
               "--num-samples", str(num_samples), "--child", str(strength), "--out", str(Path(tmp) / "run")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit("bench_l1: a run failed")
        rows[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        click.echo(f"{variant}: {rows[variant][-1]}")
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("train_seconds", "rss_mib")} for v, rs in rows.items()}
    click.echo(json.dumps(med))
    click.echo(f"ratio l1/plain: train time {med['l1']['train_seconds'] / med['plain']['train_seconds']:.3f}, "
               f"peak RSS {med['l1']['rss_mib'] / med['plain']['rss_mib']:.3f}")


if __name__ == "__main__":
    main()
