"""GSM8K in two labelled variants, both scored by lm-eval's own `gsm8k` task definition.

- `gsm8k`: lm-eval's standard task unchanged (5-shot `Question: ... Answer:`, no chat
  template): the number that compares with published results.
- `gsm8k_trained`: the same test problems, zero-shot, each question in the format the
  model was fine-tuned with (`eval/trained_format.py`: its chat template, or the run's
  text template). Only the prompt changes: lm-eval's generation settings, stop
  sequences, strict-match/flexible-extract regexes and exact-match rule are the
  standard task's, because the task YAML includes lm-eval's gsm8k.yaml.

A third, `gsm8k_heldout`, is scored as the built-in arith task is (eval/arith.py): the same
test problems zero-shot in the training format, greedy strict `#### N` exact match, and the
held-out loss of each reference solution (the training data's form of it, calculator
annotations removed): the measure that still moves where a small model's accuracy is near 0.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from sftmerge.eval.backends import LoadedModel
from sftmerge.eval.lm_eval_tasks import evaluate, gsm8k_test_rows, task_yaml, write_task_yaml
from sftmerge.eval.stats import summarize_proportion
from sftmerge.eval.tasks import EvalSettings, TaskResult
from sftmerge.eval.trained_format import trained_format

FILTERS = {"strict-match": "strict_match", "flexible-extract": "flexible_extract"}
PROMPT_FIELD = "sftmerge_prompt"  # the formatted question in the trained variant's docs


def _score(model: LoadedModel, settings: EvalSettings, workdir, cfg) -> tuple:
    write_task_yaml(workdir, cfg)
    gen = {"max_gen_toks": settings.max_new_tokens} if settings.max_new_tokens is not None else None
    t0 = time.time()
    results, raw_samples, config = evaluate(model.lm, cfg["task"], workdir, settings.limit, settings.seed, gen)
    by_doc = defaultdict(dict)
    for s in raw_samples:
        row = by_doc[s["doc_id"]]
        row.setdefault("id", f"gsm8k-test-{s['doc_id']}")  # the same id in both variants: pairable
        row.setdefault("question", s["doc"]["question"])
        row.setdefault("prompt", s["arguments"][0][0])
        row.setdefault("response", s["resps"][0][0])
        row.setdefault("target", s["target"])
        key = FILTERS[s["filter"]]
        row[f"{key}_answer"] = s["filtered_resps"][0]
        row[key] = float(s["exact_match"])
    samples = [by_doc[k] for k in sorted(by_doc, key=int)]
    metrics = {name: summarize_proportion([r[name] for r in samples]) for name in FILTERS.values()}
    settings_doc = {"limit": settings.limit, "num_fewshot": config.get("num_fewshot"),
                    "fewshot_seed": settings.seed, "generation_kwargs": config.get("generation_kwargs"),
                    "generation_seconds": round(time.time() - t0, 2)}
    return metrics, settings_doc, samples, {"lm_eval_results": results}, config


def run(model: LoadedModel, settings: EvalSettings, workdir) -> TaskResult:
    """lm-eval's standard gsm8k (5-shot, plain text): the published-comparable number."""
    cfg = task_yaml("gsm8k", settings.data_dir)
    metrics, doc, samples, extra, config = _score(model, settings, workdir, cfg)
    doc.update(lm_eval_task="gsm8k.yaml included unchanged" + (", dataset from --data-dir" if settings.data_dir else ""),
               data=str(config.get("dataset_kwargs") or config.get("dataset_path")), chat_template=False,
               variant="standard")
    return TaskResult(metrics=metrics, settings=doc, samples=samples, extra=extra)


def run_trained(model: LoadedModel, settings: EvalSettings, workdir) -> TaskResult:
    """Zero-shot, each question in the model's training format; lm-eval's answer rule."""
    fmt = trained_format(model.path, model.tokenizer)
    rows, source = gsm8k_test_rows(settings.data_dir)
    docs = Path(workdir) / "gsm8k_trained_docs.jsonl"
    with open(docs, "w", encoding="utf-8") as f:
        for r in rows:
            doc = {"question": r["question"], "answer": r["answer"],
                   PROMPT_FIELD: fmt.prompt(model.tokenizer, r["question"])}
            f.write(json.dumps(doc) + "\n")
    cfg = task_yaml("gsm8k_trained", None, docs=docs, prompt_field=PROMPT_FIELD)
    metrics, doc, samples, extra, _ = _score(model, settings, workdir, cfg)
    doc.update(lm_eval_task="gsm8k.yaml included; zero-shot, prompt = the question in the training format",
               data=source, chat_template=fmt.kind == "chat", variant="trained", **fmt.record())
    return TaskResult(metrics=metrics, settings=doc, samples=samples, extra=extra)


HELDOUT_MAX_NEW_TOKENS = 256  # lm-eval's gsm8k generation length


def run_heldout(model: LoadedModel, settings: EvalSettings, workdir) -> TaskResult:
    """Zero-shot in the training format: strict exact match and the reference solutions' held-out loss."""
    from sftmerge.data.pairs import load_pairs
    from sftmerge.data.tasks import local_files
    from sftmerge.eval.arith import score_pairs
    from sftmerge.eval.tasks import default_max_new_tokens

    fmt = trained_format(model.path, model.tokenizer)
    # The registry's local copy (a missing file is a one-line error), read by the training data's loader.
    spec = f"gsm8k:{Path(local_files('gsm8k_heldout', settings.data_dir)['test']).parent}" if settings.data_dir \
        else "gsm8k"
    pairs = load_pairs(spec, "test", settings.limit)
    texts = [fmt.prompt(model.tokenizer, p.prompt) for p in pairs]
    return score_pairs(model, pairs, texts, default_max_new_tokens(settings, HELDOUT_MAX_NEW_TOKENS),
                       {"limit": settings.limit, "num_fewshot": 0, "data": spec, "variant": "held-out",
                        "chat_template": fmt.kind == "chat", **fmt.record()})
