"""GSM8K through lm-eval's own `gsm8k` task: 5-shot, strict-match and flexible-extract."""

from __future__ import annotations

import time
from collections import defaultdict

from sftmerge.eval.backends import LoadedModel
from sftmerge.eval.lm_eval_tasks import evaluate, task_yaml, write_task_yaml
from sftmerge.eval.stats import summarize_proportion
from sftmerge.eval.tasks import EvalSettings, TaskResult

FILTERS = {"strict-match": "strict_match", "flexible-extract": "flexible_extract"}


def run(model: LoadedModel, settings: EvalSettings, workdir) -> TaskResult:
    cfg = task_yaml("gsm8k", settings.data_dir)
    write_task_yaml(workdir, cfg)
    gen = {"max_gen_toks": settings.max_new_tokens} if settings.max_new_tokens is not None else None
    t0 = time.time()
    results, raw_samples, config = evaluate(model.lm, cfg["task"], workdir, settings.limit, settings.seed, gen)
    by_doc = defaultdict(dict)
    for s in raw_samples:
        row = by_doc[s["doc_id"]]
        row.setdefault("id", f"gsm8k-test-{s['doc_id']}")
        row.setdefault("question", s["doc"]["question"])
        row.setdefault("prompt", s["arguments"][0][0])
        row.setdefault("response", s["resps"][0][0])
        row.setdefault("target", s["target"])
        key = FILTERS[s["filter"]]
        row[f"{key}_answer"] = s["filtered_resps"][0]
        row[key] = float(s["exact_match"])
    samples = [by_doc[k] for k in sorted(by_doc, key=int)]
    metrics = {name: summarize_proportion([r[name] for r in samples]) for name in FILTERS.values()}
    return TaskResult(
        metrics=metrics,
        settings={"limit": settings.limit, "num_fewshot": config.get("num_fewshot"),
                  "fewshot_seed": settings.seed, "generation_kwargs": config.get("generation_kwargs"),
                  "lm_eval_task": "gsm8k.yaml included unchanged" + (", dataset from --data-dir" if settings.data_dir else ""),
                  "data": str(config.get("dataset_kwargs") or config.get("dataset_path")),
                  "chat_template": False, "generation_seconds": round(time.time() - t0, 2)},
        samples=samples,
        extra={"lm_eval_results": results},
    )
