"""Output ensemble of K models, scored like any single model and written in the same result files.

The ensemble is an lm-eval `LM`, so the task runners (eval/arith.py, eval/gsm8k.py) use it
unchanged:

- generation: greedy decoding where each next token is the argmax of the MEAN over the K
  models of their next-token log-probabilities (log-softmax), one KV cache per model, by
  eval/hf_direct.py as for a single model (through the backend, the LM's `direct_members`;
  lm-eval's own requests through `generate_until`): each member runs its own pass over prompt
  and reference, the members' caches then decode together, and a sequence leaves the batch at
  its EOS token or stop string;
- log-likelihood: the mean over the K models of each request's log-likelihood, so a task's
  per-sample loss (-log-likelihood / tokens) is the mean of the K models' own losses on that
  sample (from the same passes as their own evaluations), and paired tests pair it problem
  by problem.

Each member is loaded by the HF backend (eval/backends.py `load_model`); a request scored
alone goes through the backend's own `continuation_logprobs` per member (`loglikelihood`).
The ensemble's backend is `hf-ensemble`, and its LM has no `model` attribute: a task that
bypassed the backend's functions fails instead of silently scoring one member. Tasks that
sample (code pass@k) or judge (alpaca) are not supported, nor members whose generation
config changes greedy decoding (a repetition penalty, ...).
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
SUPPORTED = ("arith", "gsm8k", "gsm8k_trained", "gsm8k_heldout")  # greedy generation and log-likelihoods only
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
            self.direct_members = self.members  # decoded together by eval/hf_direct.py (eval/backends.py)
            self.lead = self.members[0]  # tokenizes for all (members share one tokenizer)
            self.batch_size = batch_size

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
            """lm-eval's generation requests (tasks run by lm-eval's evaluator, such as gsm8k), grouped
            by their generation settings, decoded by eval/hf_direct.py as the backend decodes."""
            import json

            from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

            from sftmerge.eval.hf_direct import direct_greedy_ok, generate

            lead = self.lead
            if not all(direct_greedy_ok(m.model) for m in self.members):
                raise SftmergeError("the output ensemble decodes by the plain argmax of its members' mean "
                                    "log-probabilities: a member's generation config changes greedy decoding")
            eos = lead.tok_decode(lead.eot_token_id, skip_special_tokens=False)
            groups: dict = {}
            for i, request in enumerate(requests):
                groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
            out: List[str] = [""] * len(requests)
            for indices in groups.values():
                kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], lead.max_gen_toks)
                if kwargs.get("do_sample"):
                    raise SftmergeError("the output ensemble decodes greedily; this task samples (do_sample)")
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                texts = generate(self.members, [requests[i].args[0] for i in indices], kwargs.pop("max_gen_toks"),
                                 until, self.batch_size)
                for i, text in zip(indices, texts):
                    out[i] = text
            return out

    return EnsembleLM


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
    from sftmerge.data.tasks import TASKS

    if any(TASKS[t].trained_format for t in tasks):  # one prompt per problem for all members
        _check_same_format(members)
    model = load_ensemble(members, settings.batch_size, settings.seed, name)
    Path(out).mkdir(parents=True, exist_ok=True)
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
