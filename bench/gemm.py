"""The CPU's measured matrix-multiply rate on a model's own GEMM shapes, for model FLOP utilisation.

Training a decoder spends its arithmetic in the GEMMs of its linear layers: for a layer
(in -> out) on M tokens, the forward (M x in)(in x out), and in the backward the input
gradient (M x out)(out x in) and the weight gradient (out x M)(M x in), 2·M·in·out FLOPs
each; 6 x parameters x tokens counts exactly these. Each distinct shape is timed (best
of a few repetitions, in the training dtype, torch's default threads), giving:

* peak: the fastest shape's FLOP/s, the denominator of model FLOP utilisation;
* mix: all the model's GEMMs of one step, weighted by how often each shape occurs,
  over their summed times (what a perfect trainer with no other work would reach).
"""

from __future__ import annotations

import time
from typing import Dict, List, Tuple

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def linear_shapes(config: Dict) -> List[Tuple[int, int, int]]:
    """(in, out, count) of every linear layer of a Llama-style decoder config, lm_head included."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    per_layer = [(h, heads * head_dim), (h, kv * head_dim), (h, kv * head_dim), (heads * head_dim, h),
                 (h, i), (h, i), (i, h)]
    counts: Dict[Tuple[int, int], int] = {}
    for shape in per_layer:
        counts[shape] = counts.get(shape, 0) + layers
    counts[(h, config["vocab_size"])] = counts.get((h, config["vocab_size"]), 0) + 1
    return [(a, b, n) for (a, b), n in counts.items()]


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, thread pool
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_rates(config: Dict, tokens: int, precision: str = "fp32", repeats: int = 3) -> Dict:
    """Measured GFLOP/s of the model's training GEMMs on `tokens` rows (peak and mix; see the module)."""
    import torch

    dtype = getattr(torch, DTYPES[precision])
    gen = torch.Generator().manual_seed(0)
    rows, total_flops, total_seconds = [], 0.0, 0.0
    for d_in, d_out, count in linear_shapes(config):
        x = torch.randn(tokens, d_in, generator=gen).to(dtype)
        w = torch.randn(d_out, d_in, generator=gen).to(dtype)
        dy = torch.randn(tokens, d_out, generator=gen).to(dtype)

        def step():
            x @ w.t()  # forward
            dy @ w  # gradient of the input
            dy.t() @ x  # gradient of the weight

        seconds = _best_seconds(step, repeats)
        flops = 3 * 2 * tokens * d_in * d_out
        rows.append({"in": d_in, "out": d_out, "count": count, "gflops": flops / seconds / 1e9})
        total_flops += count * flops
        total_seconds += count * seconds
    return {"tokens": tokens, "precision": precision, "threads": torch.get_num_threads(),
            "peak_gflops": max(r["gflops"] for r in rows), "mix_gflops": total_flops / total_seconds / 1e9,
            "shapes": rows}


def parameter_count(model_folder: str) -> int:
    """Parameters of the model (tied weights once), counted on the meta device: nothing is loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_folder))
    return sum(p.numel() for p in model.parameters())
