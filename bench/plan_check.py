"""`sftmerge plan` against a measured run: peak memory of real training steps on this CPU.

A synthetic ~1.1B Llama (TinyLlama-1.1B's shape, tests/fixtures/plan/tinyllama-1.1b, random
bf16 weights, built in memory) trains a few steps in a child process: AdamW on bf16
parameters, activation checkpointing on, batch 1 of random tokens. The child reports its
peak resident memory (`ru_maxrss`). A second child runs the same code on a 2-layer,
64-wide model: its peak, less that model's own planned bytes, is the process baseline
(Python, torch, transformers, kernel scratch). The plan for the same setup (one device,
DDP, precision bf16) plus the baseline is compared with the measured peak.

    python -m bench.plan_check [--max-length 128] [--steps 3] [--tolerance 0.2]

Needs about 10 GiB of free memory and a few minutes on 2 cores. Exit 1 when the plan is
off by more than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIG = REPO / "tests" / "fixtures" / "plan" / "tinyllama-1.1b" / "config.json"
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}


def child(config: dict, batch: int, max_length: int, steps: int) -> dict:
    """Train `steps` steps in this process; its peak RSS and per-step seconds."""
    import resource

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        ids = torch.randint(0, cfg.vocab_size, (batch, max_length))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"peak_rss_bytes": peak, "step_seconds": seconds,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype)}


def run_child(config: dict, args) -> dict:
    cmd = [sys.executable, "-m", "bench.plan_check", "--child", json.dumps(config), "--max-length",
           str(args.max_length), "--batch", str(args.batch), "--steps", str(args.steps)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def planned_bytes(config: dict, args) -> dict:
    """The plan's bytes by part for this setup: one device, DDP, bf16 parameters, checkpointing."""
    from sftmerge.train.plan import Setup, memory_per_device
    from sftmerge.train.plan_model import architecture_from_dict

    arch = architecture_from_dict(config, "bench")
    setup = Setup(devices=1, batch=args.batch, max_length=args.max_length, precision="bf16", checkpointing=True)
    return memory_per_device(arch, setup, "ddp")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.2)
    ap.add_argument("--timeout", type=int, default=1500, help="Seconds per child.")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.batch, args.max_length, args.steps)))
        return
    big = json.loads(BIG.read_text())
    tiny = run_child(TINY, args)
    baseline = tiny["peak_rss_bytes"] - planned_bytes(TINY, args)["total"]
    measured = run_child(big, args)
    parts = planned_bytes(big, args)
    expected = baseline + parts["total"]
    error = (expected - measured["peak_rss_bytes"]) / measured["peak_rss_bytes"]
    gib = 2**30
    result = {
        "model": "synthetic TinyLlama-1.1B shape", "parameters": measured["parameters"], "dtype": measured["dtype"],
        "batch": args.batch, "max_length": args.max_length, "steps": args.steps,
        "step_seconds": [round(s, 1) for s in measured["step_seconds"]],
        "baseline_gib": round(baseline / gib, 2), "plan_gib": {k: round(v / gib, 3) for k, v in parts.items()},
        "planned_peak_gib": round(expected / gib, 2), "measured_peak_gib": round(measured["peak_rss_bytes"] / gib, 2),
        "plan_error": round(error, 3),
    }
    print(json.dumps(result, indent=1))
    if abs(error) > args.tolerance:
        sys.exit(f"plan off by {error:+.1%} (tolerance {args.tolerance:.0%})")
    print(f"plan within {args.tolerance:.0%}: {error:+.1%}")


if __name__ == "__main__":
    main()
