"""The `sftmerge` command line under `accelerate launch`, for tests/test_distributed.py:

    accelerate launch [...] tests/distributed_launch.py train sft CONFIG --order K

Each process runs `sftmerge.cli.main` with these arguments. Test-only hooks, from the environment:

SFTMERGE_TEST_FSDP_ON_CPU=1: accelerate 1.15 makes an FSDP launch FSDP only for GPU-like
    processes; CPU processes (MULTI_CPU) silently run it as DDP. This lifts that one device check:
    AcceleratorState then does for MULTI_CPU what it does for MULTI_GPU with an FSDP plugin, so
    torch's FSDP2 (`fully_shard`) shards the model over gloo and sftmerge's own code runs under
    DistributedType.FSDP, as on GPUs. Nothing else of accelerate, transformers or sftmerge changes.
SFTMERGE_TEST_DEEPSPEED_ON_CPU=1: accelerate takes DeepSpeed only for processes that are not
    CPU-only (the Trainer asks for CPU processes where there is no GPU); this hands AcceleratorState
    cpu=False, so DeepSpeed runs on its own CPU accelerator over gloo. Needs deepspeed importable.
SFTMERGE_TEST_STOP_AT=N: every process raises right after the Trainer has saved checkpoint-N
    (what a kill at that moment leaves on disk), the main process prints one `interrupted: {...}`
    line with what the run folder then holds, and the same command runs again in the same
    processes: the rerun must resume from checkpoint-N.

Every call of the per-sample scorer prints `scored: {...}` (process, rows, model folder), so the
test sees which process scored what.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


class Interrupted(Exception):
    pass


def fsdp_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def patched(self, *a, fsdp_plugin=None, **kw):
        init(self, *a, fsdp_plugin=fsdp_plugin, **kw)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = patched


def deepspeed_on_cpu() -> None:
    from accelerate.state import AcceleratorState

    init = AcceleratorState.__init__

    def patched(self, *a, cpu=False, **kw):
        init(self, *a, cpu=False, **kw)

    AcceleratorState.__init__ = patched


def log_scoring() -> None:
    import sftmerge.eval.losses as losses

    score = losses.sample_losses

    def logged(model_dir, dataset, **kw):
        rows = score(model_dir, dataset, **kw)
        line = {"rank": int(os.environ.get("RANK", 0)), "rows": len(rows), "folder": Path(model_dir).name}
        print("scored: " + json.dumps(line), flush=True)
        return rows

    losses.sample_losses = logged  # the CLI imports it when the command runs


def run_folder_now(config_path: str) -> dict:
    """What an interrupted run left: finished orders, resume checkpoints, kept snapshots."""
    from sftmerge.train.config import load_config

    run = Path(load_config(config_path).output_dir)
    names = lambda pattern: sorted(p.name for p in run.glob(pattern) if p.is_dir())  # noqa: E731
    return {"orders": names("order-*"), "checkpoints": names(".order-*.work/trainer/checkpoint-*"),
            "snapshots": names(".order-*.work/final/checkpoints/step-*")}


def main(argv) -> None:
    from transformers import TrainerCallback

    import sftmerge.train.sft as sft
    from sftmerge.cli.main import main as cli

    if os.environ.get("SFTMERGE_TEST_FSDP_ON_CPU") == "1":
        fsdp_on_cpu()
    if os.environ.get("SFTMERGE_TEST_DEEPSPEED_ON_CPU") == "1":
        deepspeed_on_cpu()
    log_scoring()
    stop_at = int(os.environ.get("SFTMERGE_TEST_STOP_AT", "0"))
    if stop_at:
        class StopAfterCheckpoint(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                if state.global_step == stop_at:
                    raise Interrupted(f"stopped after checkpoint-{stop_at}")

        unpatched = sft.run_multi_order
        sft.run_multi_order = lambda *a, **kw: unpatched(*a, **{**kw, "callbacks": [StopAfterCheckpoint()]})
        try:
            cli(argv, standalone_mode=False)
            sys.exit(f"the run finished without reaching checkpoint-{stop_at}")
        except Interrupted:
            pass
        sft.run_multi_order = unpatched
        if int(os.environ.get("RANK", 0)) == 0:
            print("interrupted: " + json.dumps(run_folder_now(argv[2])), flush=True)
    cli(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
