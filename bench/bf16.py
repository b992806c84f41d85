"""`make bench-bf16`: a bf16 training step on a CPU without bf16 instructions, against fp32.

One forward and backward pass of the model (default SmolLM2-135M, batch 8 x 96 tokens, one
thread, the same tokens every time), timed in three ways, interleaved round by round so drift
in machine load hits each alike:

* fp32: the floor, what `precision: auto` trains in on such a CPU;
* bf16: bf16 weights under bf16 autocast, its GEMMs as fp32 ones (train/bf16_gemm.py), which
  is how `sftmerge train` computes `precision: bf16` there;
* bf16, torch's kernel (`--torch-kernel`, slow): the same without the fp32 route.

Prints each one's median seconds and its ratio to fp32's in the same run, and how many elements
of one GEMM of the model's shapes the fp32 route gives bitwise equal to torch's bf16 kernel.

    python -m bench.bf16 [--model DIR] [--runs N] [--batch B] [--tokens T] [--torch-kernel]
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import click
import torch

from sftmerge.train.bf16_gemm import Bf16GemmsInFp32
from sftmerge.train.hardware import has_bf16

WAYS = {  # name: (weights dtype, autocast to bf16, fp32 route)
    "fp32": (torch.float32, False, False),
    "bf16": (torch.bfloat16, True, True),
    "bf16, torch's kernel": (torch.bfloat16, True, False),
}


def step_seconds(model, input_ids, autocast: bool, route: bool) -> float:
    """One forward and backward pass, timed."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with Bf16GemmsInFp32() if route else nullcontext():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
    return time.perf_counter() - t0


def bitwise_equal_share(rows: int, inner: int, cols: int) -> float:
    """The share of a bf16 GEMM's elements the fp32 route gives exactly as torch's kernel does."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=g).bfloat16()
    b = torch.randn(inner, cols, generator=g).bfloat16()
    with Bf16GemmsInFp32():
        routed = a @ b
    return (routed == a @ b).float().mean().item()


@click.command()
@click.option("--model", default="models/smollm2-135m-instruct", show_default=True, help="HF model folder.")
@click.option("--runs", default=3, show_default=True, help="Timed rounds (each way once per round).")
@click.option("--batch", default=8, show_default=True)
@click.option("--tokens", default=96, show_default=True, help="Tokens per sequence.")
@click.option("--threads", default=1, show_default=True)
@click.option("--torch-kernel", is_flag=True, help="Also time torch's own bf16 kernel (14x-18x fp32 on AVX2).")
def main(model: str, runs: int, batch: int, tokens: int, threads: int, torch_kernel: bool) -> None:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"CPU: torch capability {capability}, bf16 instructions: {'yes' if has_bf16() else 'no'}; "
          f"{model}, batch {batch} x {tokens} tokens, {threads} thread(s), {runs} round(s)")
    ways = [w for w in WAYS if torch_kernel or w != "bf16, torch's kernel"]
    models = {w: AutoModelForCausalLM.from_pretrained(model, dtype=WAYS[w][0]) for w in ways}
    vocab = models["fp32"].config.vocab_size
    input_ids = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))
    times = {w: [] for w in ways}
    for w in ways:  # warm-up: allocations, thread pool
        step_seconds(models[w], input_ids, *WAYS[w][1:])
    for r in range(runs):
        for w in (ways if r % 2 == 0 else ways[::-1]):
            times[w].append(step_seconds(models[w], input_ids, *WAYS[w][1:]))
    floor = statistics.median(times["fp32"])
    for w in ways:
        median = statistics.median(times[w])
        print(f"{w}: median {median:.2f} s of {[round(t, 2) for t in times[w]]}; {median / floor:.2f}x fp32")
    hidden = models["fp32"].config.hidden_size
    inner = models["fp32"].config.intermediate_size
    print(f"fp32 route vs torch's bf16 kernel, one ({batch * tokens} x {inner}) x ({inner} x {hidden}) GEMM: "
          f"{bitwise_equal_share(batch * tokens, inner, hidden):.2%} of elements bitwise equal")


if __name__ == "__main__":
    main()
