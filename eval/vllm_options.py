"""vLLM engine options (`--vllm-*` flags): parsed and checked here, handed to the engine as keywords.

`--vllm-arg KEY=VALUE` passes any other `vllm.LLM` argument (the value is read as YAML:
`enforce_eager=true`, `swap_space=8`, `kv_cache_dtype=fp8`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

from sftmerge.errors import SftmergeError

DTYPES = ("auto", "float16", "bfloat16", "float32")
DEFAULT_GPU_MEMORY = 0.8  # the fraction the backend always used before the option existed


@dataclass(frozen=True)
class VllmOptions:
    tensor_parallel: int = 1
    gpu_memory: float = DEFAULT_GPU_MEMORY
    max_model_len: Optional[int] = None
    dtype: Optional[str] = None  # None: bf16/auto on a GPU, float32 on the CPU build
    extra: Dict = field(default_factory=dict)

    def engine_kwargs(self, on_gpu: bool) -> Dict:
        """Keywords for lm-eval's VLLM class (which hands the unknown ones to `vllm.LLM`)."""
        dtype = self.dtype or ("auto" if on_gpu else "float32")
        kwargs = {"tensor_parallel_size": self.tensor_parallel, "gpu_memory_utilization": self.gpu_memory,
                  "dtype": dtype, **self.extra}
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        return kwargs

    def cli_args(self) -> list:
        """The same options as `sftmerge eval` flags (for worker command lines)."""
        args = ["--vllm-tp", str(self.tensor_parallel), "--vllm-gpu-memory", str(self.gpu_memory)]
        if self.max_model_len is not None:
            args += ["--vllm-max-model-len", str(self.max_model_len)]
        if self.dtype is not None:
            args += ["--vllm-dtype", self.dtype]
        for key, value in self.extra.items():
            args += ["--vllm-arg", f"{key}={_yaml_scalar(value)}"]
        return args


def _yaml_scalar(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def parse_vllm_options(tp: int = 1, gpu_memory: float = DEFAULT_GPU_MEMORY, max_model_len: Optional[int] = None,
                       dtype: Optional[str] = None, args: Sequence[str] = ()) -> VllmOptions:
    """The `--vllm-*` flags, each bad value as one line."""
    import yaml

    if tp < 1:
        raise SftmergeError(f"--vllm-tp must be at least 1 (got {tp})")
    if not 0 < gpu_memory <= 1:
        raise SftmergeError(f"--vllm-gpu-memory is a fraction in (0, 1] (got {gpu_memory})")
    if max_model_len is not None and max_model_len < 1:
        raise SftmergeError(f"--vllm-max-model-len must be at least 1 (got {max_model_len})")
    if dtype is not None and dtype not in DTYPES:
        raise SftmergeError(f"--vllm-dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    extra: Dict = {}
    owned = {"tensor_parallel_size": "--vllm-tp", "gpu_memory_utilization": "--vllm-gpu-memory",
             "max_model_len": "--vllm-max-model-len", "dtype": "--vllm-dtype"}
    for item in args:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise SftmergeError(f"--vllm-arg {item!r} is not KEY=VALUE")
        if key in owned:
            raise SftmergeError(f"--vllm-arg {key}: use {owned[key]}")
        try:
            extra[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise SftmergeError(f"--vllm-arg {item!r}: the value is not a YAML scalar") from None
    return VllmOptions(tp, gpu_memory, max_model_len, dtype, extra)
