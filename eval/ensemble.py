"""Output ensemble of K models, scored like any single model and written in the same result files.

The ensemble is an lm-eval `LM`, so the task runners (eval/arith.py, eval/gsm8k.py) use it
unchanged:

- `generate_until`: greedy decoding where each next token is the argmax of the MEAN over
  the K models of their next-token log-probabilities (log-softmax), one KV cache per model,
  prompts batched as lm-eval's HF backend batches them (sorted by length, left-padded); a
  sequence leaves the batch at its EOS token or stop string, and the text is cut as
  lm-eval cuts it.
- `loglikelihood`: the mean over the K models of each request's log-likelihood, so a
  task's per-sample loss (-log-likelihood / tokens) is the mean of the K models' losses on
  that sample, and paired tests pair it problem by problem.

Each member is loaded by the HF backend (eval/backends.py `load_model`) and scored by the
backend's own `continuation_logprobs`, so its log-likelihoods are those of its own
evaluation. The ensemble's backend is `hf-ensemble`, which the backend's direct HF paths
leave alone, and its LM has no `model` attribute: a task that bypassed `generate_until` /
`loglikelihood` fails instead of silently scoring one member. Tasks that sample (code
pass@k) or judge (alpaca) are not supported.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, List, Sequence

from sftmerge.errors import SftmergeError
from sftmerge.eval.backends import LoadedModel, continuation_logprobs, load_model
from sftmerge.eval.tasks import EvalSettings, runner

ENSEMBLE = "ensemble"  # the result folder name of the demo's ensemble row
BACKEND = "hf-ensemble"
SUPPORTED = ("arith", "gsm8k", "gsm8k_trained")  # greedy generation and log-likelihoods only
RULE = "greedy argmax of the mean of the members' next-token log-softmax; loss: mean of the members' losses"


def supports(task: str) -> bool:
    return task in SUPPORTED


def _lm_class():
    from lm_eval.api.model import LM

    class EnsembleLM(LM):
        """K models loaded by the HF backend behind one LM: mean log-probabilities, greedy decoding."""

        def __init__(self, members: Sequence[LoadedModel], batch_size: int):
            super().__init__()
            self.loaded = list(members)
            self.members = [m.lm for m in self.loaded]  # lm-eval HFLMs
            self.lead = self.members[0]  # tokenizes and decodes for all (members share one tokenizer)
            self.batch_size = batch_size
            config = self.lead.model.generation_config
            eos = config.eos_token_id if config.eos_token_id is not None else self.lead.tokenizer.eos_token_id
            self.eos_ids = {eos} if isinstance(eos, int) else set(eos)

        def tok_encode(self, string: str, **kwargs):
            return self.lead.tok_encode(string, **kwargs)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            pairs = [tuple(r.args) for r in requests]
            per_member = [[lp for lp, _n in continuation_logprobs(m, pairs)] for m in self.loaded]
            # lm-eval's second field (is the continuation the greedy one?) is not asked for here.
            return [(sum(lps[i] for lps in per_member) / len(per_member), False) for i in range(len(pairs))]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise SftmergeError("the output ensemble scores continuations only (no rolling log-likelihood)")

        def generate_until(self, requests, disable_tqdm: bool = False):
            from lm_eval.models.utils import (Collator, handle_stop_sequences, normalize_gen_kwargs,
                                              postprocess_generated_text)

            lead = self.lead
            # As lm-eval's HFLM.generate_until: longest prompts first, grouped by generation settings.
            order = Collator([r.args for r in requests], sort_fn=lambda r: (-len(lead.tok_encode(r[0])), r[0]),
                             group_by="gen_kwargs", group_fn=lambda r: r[1])
            eos = lead.tok_decode(lead.eot_token_id, skip_special_tokens=False)
            out = []
            for chunk in order.get_batched(n=self.batch_size):
                contexts, all_kwargs = zip(*chunk)
                kwargs = normalize_gen_kwargs(all_kwargs[0], lead.max_gen_toks)
                if kwargs.get("do_sample"):
                    raise SftmergeError("the output ensemble decodes greedily; this task samples (do_sample)")
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_new = kwargs.pop("max_gen_toks")
                ids, mask = lead.tok_batch_encode(list(contexts), left_truncate_len=lead.max_length - max_new,
                                                  truncation=lead.truncation)
                for row in self.greedy(ids, mask, max_new, until):
                    out.append(postprocess_generated_text(lead.tok_decode(row), until, None))
            return order.get_original(out)

        def greedy(self, ids, mask, max_new: int, until: List[str]) -> List[List[int]]:
            """Each row's new tokens, greedy on the members' mean log-probabilities; a row leaves the
            batch (and every member's KV cache) the step it emits an EOS id or completes a stop string."""
            import torch

            lead = self.lead
            ids, mask = ids.to(lead.device), mask.to(lead.device)
            # Positions and mask as transformers' generate sets them for left-padded prompts.
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            attention = None if bool(mask.all()) else mask
            stops = _StopStrings(lead.tokenizer, until)
            key = _cache_argument(lead.model)
            caches: list = [None] * len(self.members)
            alive = list(range(ids.shape[0]))
            out: List[List[int]] = [[] for _ in alive]
            step = ids
            with torch.no_grad():
                for _ in range(max_new):
                    total = None
                    for i, m in enumerate(self.members):
                        res = m.model(input_ids=step, attention_mask=attention, position_ids=positions,
                                      use_cache=True, logits_to_keep=1, **{key: caches[i]})
                        caches[i] = res[key]
                        logp = torch.log_softmax(res.logits[:, -1].float(), dim=-1)
                        total = logp if total is None else total + logp
                    nxt = total.argmax(-1)  # the argmax of the sum is the argmax of the mean
                    stay = []
                    for j, row in enumerate(alive):
                        out[row].append(int(nxt[j]))
                        if out[row][-1] not in self.eos_ids and not stops.hit(out[row]):
                            stay.append(j)
                    if not stay:
                        break
                    if len(stay) < len(alive):
                        keep = torch.tensor(stay, device=nxt.device)
                        for cache in caches:
                            cache.batch_select_indices(keep)
                        alive, nxt, positions = [alive[j] for j in stay], nxt[keep], positions[keep]
                        attention = attention[keep] if attention is not None else None
                    step, positions = nxt[:, None], positions[:, -1:] + 1
                    if attention is not None:
                        attention = torch.cat([attention, attention.new_ones(len(alive), 1)], dim=1)
            return out

    return EnsembleLM


class _StopStrings:
    """lm-eval's stop-string test (MultiTokenEOSCriteria), one row at a time: a stop string counts
    once it is in the decoded last (its token count + 2) generated tokens."""

    def __init__(self, tokenizer, until: Sequence[str]):
        self.tokenizer = tokenizer
        self.strings = [(s, len(tokenizer.encode(s, add_special_tokens=False)) + 2) for s in until if s]

    def hit(self, generated: List[int]) -> bool:
        return any(s in self.tokenizer.decode(generated[-n:]) for s, n in self.strings)


def _cache_argument(model) -> str:
    """The forward's KV-cache argument: `cache` (transformers 5), `past_key_values` before it."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def check_members(members: Sequence[str]) -> None:
    if len(members) < 2:
        raise SftmergeError(f"an ensemble needs at least 2 models (got {len(members)})")
    resolved = [str(Path(m).resolve()) for m in members]
    if len(set(resolved)) != len(resolved):
        raise SftmergeError("an ensemble member is given twice")


def load_ensemble(members: Sequence[str], batch_size: int, seed: int, name: str = ENSEMBLE) -> LoadedModel:
    """The K member folders as one model (HF backend) for the task runners."""
    check_members(members)
    loaded = [load_model(m, "hf", batch_size, seed) for m in members]
    vocab = loaded[0].tokenizer.get_vocab()
    for m in loaded[1:]:
        if m.tokenizer.get_vocab() != vocab:
            raise SftmergeError(f"ensemble members {members[0]} and {m.path} have different tokenizers")
    lm = _lm_class()(loaded, batch_size)
    lead = loaded[0]
    settings = {**lead.settings, "backend": BACKEND, "ensemble_of": [str(m) for m in members], "ensemble_rule": RULE}
    # The path is the first member's: a trained-format task prompts in its (shared) training format.
    return LoadedModel(path=str(members[0]), name=name, backend=BACKEND, lm=lm, tokenizer=lead.tokenizer,
                       settings=settings)


def run_tasks(model: LoadedModel, tasks: Sequence[str], settings: EvalSettings, out: Path,
              echo: Callable[[str], None] = print) -> List[str]:
    """Each task on a loaded model, results written as eval/runner.py writes them; the failure lines."""
    from sftmerge.eval.runner import headline, write_result
    from sftmerge.io.layout import ResultsLayout

    failures = []
    for task in tasks:
        t0 = time.time()
        try:
            with tempfile.TemporaryDirectory(prefix="sftmerge-eval-") as workdir:
                result = runner(task)(model, settings, Path(workdir))
            echo(headline(write_result(Path(out), model, task, result, settings, time.time() - t0)))
        except SftmergeError as e:
            failures.append(f"{model.name}/{task}: {e}")
        except Exception as e:  # keep the traceback, report one line
            log = ResultsLayout(out).error_log(model.name, task)
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc(), encoding="utf-8")
            first = str(e).splitlines()[0][:300] if str(e) else ""
            failures.append(f"{model.name}/{task}: {type(e).__name__}: {first} (traceback in {log})")
    return failures


def evaluate_ensemble(members: Sequence[str], tasks: Sequence[str], settings: EvalSettings, out: Path,
                      name: str = ENSEMBLE, echo: Callable[[str], None] = print,
                      summary: bool = True) -> List[str]:
    """Score the output ensemble of `members` on `tasks` into OUT/<name>/; returns the failure lines."""
    from sftmerge.eval.runner import check_inputs

    check_members(members)
    unsupported = [t for t in tasks if not supports(t)]
    if unsupported:
        raise SftmergeError(f"the output ensemble cannot run task {unsupported[0]} (it runs: {', '.join(SUPPORTED)})")
    check_inputs(members, tasks, settings)
    if any(t == "gsm8k_trained" for t in tasks):
        _check_same_format(members)
    model = load_ensemble(members, settings.batch_size, settings.seed, name)
    failures = run_tasks(model, tasks, settings, out, echo)
    if summary:
        from sftmerge.eval.summary import write_summary

        write_summary(Path(out))
    return failures


def _check_same_format(members: Sequence[str]) -> None:
    from sftmerge.eval.trained_format import trained_format

    kinds = {(f.kind, f.template) for f in map(trained_format, members)}
    if len(kinds) > 1:
        raise SftmergeError("ensemble members were trained in different formats; no single trained format applies")
