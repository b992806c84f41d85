"""HumanEval and MBPP: generation through lm-eval, pass@k by the project's sandbox.

The parts are those lm-eval's code tasks hand to `code_eval`, kept apart so that the
sandbox runs model code and test code in separate processes:
HumanEval: program = prompt + completion; tests = the test and `check(entry_point)`;
MBPP: program = the generated code (+ the set-up code); tests = the three asserts.
"""

from __future__ import annotations

import time
from typing import Dict, List

from sftmerge.eval import sandbox
from sftmerge.eval.backends import LoadedModel
from sftmerge.eval.lm_eval_tasks import evaluate, task_yaml, write_task_yaml
from sftmerge.eval.stats import pass_at_k, summarize, summarize_proportion
from sftmerge.eval.tasks import EvalSettings, TaskResult


def humaneval_job(doc: Dict, completion: str) -> sandbox.Job:
    return sandbox.Job(program=f"{doc['prompt']}{completion}\n",
                       tests=f"{doc['test']}\ncheck({doc['entry_point']})\n")


def mbpp_job(doc: Dict, code: str) -> sandbox.Job:
    setup = (doc.get("test_setup_code") or "").strip()
    return sandbox.Job(program=f"{code}\n", tests="\n".join(doc["test_list"]) + "\n",
                       setup=f"{setup}\n" if setup else "")


JOB = {"humaneval": humaneval_job, "mbpp": mbpp_job}


def reference_job(task: str, doc: Dict) -> sandbox.Job:
    """The data set's own solution as a job (the executor's sanity check)."""
    if task == "humaneval":
        return humaneval_job(doc, doc["canonical_solution"])
    return mbpp_job(doc, doc["code"])


def load_local_docs(task: str, data_dir) -> List[Dict]:
    """The test problems from --data-dir (MBPP: task_ids 11-510), for checks of the executor."""
    import gzip
    import json

    from sftmerge.data.tasks import local_files

    path = local_files(task, data_dir)["test"]
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    if task == "mbpp":
        from sftmerge.data.pairs import MBPP_SPLITS

        docs = [d for d in docs if int(d["task_id"]) in MBPP_SPLITS["test"]]
    return docs


def ks_for(n: int) -> List[int]:
    return [k for k in (1, 5, 10, 100) if k <= n]


def runner(task: str):
    def run(model: LoadedModel, settings: EvalSettings, workdir) -> TaskResult:
        mode = sandbox.require_opt_in(settings.allow_code_execution, task, settings.allow_weak_sandbox)
        n = settings.code_samples
        generation = None
        if n > 1:
            generation = {"until": _until(task), "do_sample": True, "temperature": settings.code_temperature,
                          "max_gen_toks": settings.max_new_tokens or (1024 if task == "humaneval" else 256)}
        cfg = task_yaml(task, settings.data_dir, generation=generation, repeats=n)
        write_task_yaml(workdir, cfg)
        gen = {"max_gen_toks": settings.max_new_tokens} if settings.max_new_tokens is not None and n == 1 else None
        t0 = time.time()
        _, raw, config = evaluate(model.lm, cfg["task"], workdir, settings.limit, settings.seed, gen)
        gen_seconds = time.time() - t0
        raw = sorted(raw, key=lambda s: int(s["doc_id"]))
        jobs = [JOB[task](s["doc"], r) for s in raw for r in s["resps"][0][:n]]
        limits = sandbox.Limits(timeout_s=settings.code_timeout)
        outcomes = sandbox.run_jobs(jobs, limits, workers=settings.code_workers,
                                    progress=f"{task}: running programs", mode=mode)
        samples, per_k = [], {k: [] for k in ks_for(n)}
        for i, s in enumerate(raw):
            mine = outcomes[i * n:(i + 1) * n]
            c = sum(o.passed for o in mine)
            for k in per_k:
                per_k[k].append(pass_at_k(n, c, k))
            samples.append({
                "id": f"{task}-{s['doc'].get('task_id', s['doc_id'])}", "prompt": s["arguments"][0][0],
                "completions": s["resps"][0][:n], "passed": [o.passed for o in mine],
                "status": [o.status for o in mine], "detail": [o.detail[-500:] for o in mine],
                "correct": c / n,
            })
        return TaskResult(
            # One greedy sample per problem: each pass@1 is 0 or 1, a proportion.
            metrics={f"pass@{k}": (summarize_proportion if n == 1 else summarize)(v) for k, v in per_k.items()},
            settings={"limit": settings.limit, "num_fewshot": config.get("num_fewshot"),
                      "samples_per_problem": n, "generation_kwargs": config.get("generation_kwargs"),
                      "fewshot_seed": settings.seed, "decoding": "greedy" if n == 1 else "sampling",
                      "data": str(config.get("dataset_kwargs") or config.get("dataset_path")),
                      "split": "test" + (" (task_ids 11-510)" if task == "mbpp" else ""),
                      "chat_template": False, "sandbox_mode": mode, "sandbox": sandbox.isolation_description(mode),
                      "timeout_s": settings.code_timeout, "memory_bytes": limits.memory_bytes,
                      "generation_seconds": round(gen_seconds, 2)},
            samples=samples,
        )

    return run


run_humaneval = runner("humaneval")
run_mbpp = runner("mbpp")


def _until(task: str) -> List[str]:
    import yaml

    from sftmerge.eval.lm_eval_tasks import LM_TASKS_DIR

    text = (LM_TASKS_DIR / f"sftmerge_{task}.yaml").read_text()
    # The YAML has a `!function` tag (mbpp); read generation_kwargs without resolving it.
    loader = type("L", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda l, node: l.construct_scalar(node))
    return yaml.load(text, Loader=loader)["generation_kwargs"]["until"]
