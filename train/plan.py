"""Memory and time of one fine-tuning order, planned from the model's config alone.

Per device, in bytes, for each way of spreading the work over N devices:

* weights: the copy the forward pass computes with; gradients; AdamW's two moments;
  fp32 master weights where the compute copy is bf16/fp16 (mixed precision);
* DDP replicates all four; ZeRO-2 shards gradients, master weights and moments; FSDP (full
  shard) and ZeRO-3 shard all four and gather one decoder block at a time (two in flight);
* activations of the per-device batch at max_length (`plan_activations.py`);
* a fixed runtime reserve (CUDA context, communication buffers, allocator slack) that only
  the "fits" verdict adds.

The constants are stated where they are used; docs/scale.md compares the sum with a
measured run (bench/plan_check.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional

from sftmerge.errors import SftmergeError
from sftmerge.train.plan_activations import activation_bytes
from sftmerge.train.plan_model import Architecture

GiB = 2**30
STRATEGIES = ("ddp", "zero2", "fsdp", "zero3")
SHARDED = {  # which states each strategy splits over the N devices
    "ddp": set(),
    "zero2": {"gradients", "master", "optimizer"},
    "fsdp": {"weights", "gradients", "master", "optimizer"},
    "zero3": {"weights", "gradients", "master", "optimizer"},
}
# CUDA context (~0.5 GiB), NCCL buffers and allocator fragmentation; only the "fits" test adds it.
RUNTIME_RESERVE_GIB = 2.0


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each state, and of the saved activations."""

    name: str
    weights: int  # the compute copy
    master: int  # fp32 master copy (0: the weights are the master)
    gradients: int
    optimizer: int  # AdamW: exp_avg + exp_avg_sq
    activation: int  # matmul inputs/outputs
    residual: int  # the residual stream between blocks (what checkpointing keeps)


PRECISIONS = {
    # fp32 everywhere: weights, gradients and moments in fp32.
    "fp32": Precision("fp32", weights=4, master=0, gradients=4, optimizer=8, activation=4, residual=4),
    # bf16/fp16 compute over fp32 master weights, fp32 gradients and moments. `sftmerge train sft`
    # keeps an fp32 model under autocast, whose bf16 casts of the weights are saved for the
    # backward pass; DeepSpeed keeps bf16 weights + an fp32 master: the same bytes. An upper
    # bound for DDP: the casts and the full gradients are not all live at one moment. The
    # residual stream stays fp32 under autocast (fp32 embeddings, fp32 adds).
    "mixed": Precision("mixed", weights=2, master=4, gradients=4, optimizer=8, activation=2, residual=4),
    # bf16 parameters and no master (bench/plan_check.py): torch AdamW keeps its moments in the
    # parameters' dtype.
    "bf16": Precision("bf16", weights=2, master=0, gradients=2, optimizer=4, activation=2, residual=2),
}


def precision_of(config_precision: str) -> str:
    """A training config's `precision` as planned: auto resolves to bf16 on GPUs that have it."""
    return {"fp32": "fp32", "bf16": "bf16", "auto": "bf16"}.get(config_precision, "mixed")


@dataclass(frozen=True)
class Setup:
    devices: int
    batch: int  # per device
    max_length: int
    precision: str = "mixed"
    checkpointing: bool = False

    def __post_init__(self):
        for name in ("devices", "batch", "max_length"):
            if getattr(self, name) < 1:
                raise SftmergeError(f"{name.replace('_', ' ')} must be at least 1 (got {getattr(self, name)})")
        if self.precision not in PRECISIONS:
            raise SftmergeError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")


def memory_per_device(arch: Architecture, setup: Setup, strategy: str) -> Dict[str, int]:
    """Bytes per device by part, under one strategy; 'total' excludes the runtime reserve."""
    if strategy not in STRATEGIES:
        raise SftmergeError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    p = PRECISIONS[setup.precision]
    n_params = arch.parameters()
    parts = {}
    for state in ("weights", "master", "gradients", "optimizer"):
        full = n_params * getattr(p, state)
        parts[state] = -(-full // setup.devices) if state in SHARDED[strategy] and setup.devices > 1 else full
    # Sharded weights are gathered one block at a time; the next one is prefetched, and the
    # block's full gradient exists until it is reduce-scattered.
    gathered = 0
    if "weights" in SHARDED[strategy] and setup.devices > 1:
        gathered = arch.largest_unit() * (2 * p.weights + p.gradients)
    parts["gathered"] = gathered
    parts["activations"] = activation_bytes(arch, setup.batch, setup.max_length, p.activation, p.residual,
                                            setup.checkpointing)
    parts["total"] = sum(parts.values())
    return parts


def fits(total: int, gpu_memory_gib: float) -> bool:
    return total + RUNTIME_RESERVE_GIB * GiB <= gpu_memory_gib * GiB


# Train-split sizes of the Hub data sets the `data:` names load (when the config has no num_samples).
KNOWN_SAMPLES = {"gsm8k": 7473, "alpaca": 52002, "code": 374, "arith": 2000}


@dataclass(frozen=True)
class Tokens:
    samples: int
    samples_from: str
    mean_tokens: float
    mean_from: str
    epochs: int

    @property
    def per_order(self) -> float:
        return self.samples * self.mean_tokens * self.epochs


def tokens_per_order(data: str, num_samples: Optional[int], max_length: Optional[int], epochs: int,
                     samples: Optional[int] = None, mean_tokens: Optional[float] = None) -> Tokens:
    """samples x mean tokens x epochs. Options win; else the config, else the data set's known
    size and max_length (an upper bound: every sample as long as allowed)."""
    if samples is not None and samples < 1:
        raise SftmergeError(f"--samples must be at least 1 (got {samples})")
    if mean_tokens is not None and mean_tokens <= 0:
        raise SftmergeError(f"--mean-tokens must be > 0 (got {mean_tokens})")
    if epochs < 1:
        raise SftmergeError(f"epochs must be at least 1 (got {epochs})")
    name = data.split(":", 1)[0]
    if samples is not None:
        n, n_from = samples, "--samples"
    elif num_samples is not None:
        n, n_from = num_samples, "config num_samples"
    elif name in KNOWN_SAMPLES:
        n, n_from = KNOWN_SAMPLES[name], f"{name} train split"
    else:
        raise SftmergeError(f"unknown sample count for data {data!r}: give --samples")
    if mean_tokens is not None:
        mean, mean_from = float(mean_tokens), "--mean-tokens"
    elif max_length is not None:
        mean, mean_from = float(max_length), "max_length (upper bound)"
    else:
        raise SftmergeError("no max_length in the config: give --mean-tokens")
    if max_length is not None:
        mean = min(mean, float(max_length))  # longer samples are truncated
    return Tokens(n, n_from, mean, mean_from, epochs)


def plan(arch: Architecture, setup: Setup, gpu_memory_gib: float, strategies=STRATEGIES,
         tokens: Optional[Tokens] = None, tokens_per_second: Optional[float] = None,
         orders: int = 1) -> Dict:
    """Everything `sftmerge plan` prints, as one JSON-ready mapping."""
    if gpu_memory_gib <= 0:
        raise SftmergeError(f"--gpu-memory must be > 0 (got {gpu_memory_gib})")
    if tokens_per_second is not None and tokens_per_second <= 0:
        raise SftmergeError(f"--tokens-per-second must be > 0 (got {tokens_per_second})")
    if orders < 1:
        raise SftmergeError(f"orders must be at least 1 (got {orders})")
    rows = {}
    for s in strategies:
        parts = memory_per_device(arch, setup, s)
        rows[s] = {**parts, "fits": fits(parts["total"], gpu_memory_gib)}
    out = {
        "model": arch.name, "architecture": asdict(arch), "parameters": arch.parameters(),
        "setup": asdict(setup), "gpu_memory_gib": gpu_memory_gib, "runtime_reserve_gib": RUNTIME_RESERVE_GIB,
        "per_device_bytes": rows, "orders": orders,
    }
    if tokens is not None:
        out["tokens"] = {**asdict(tokens), "per_order": tokens.per_order}
        if tokens_per_second is not None:
            seconds = tokens.per_order / tokens_per_second
            out["time"] = {"tokens_per_second": tokens_per_second, "seconds_per_order": seconds,
                           "seconds_all_orders": seconds * orders}
    return out
