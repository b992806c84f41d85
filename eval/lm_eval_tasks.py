"""Tasks run through lm-eval (gsm8k, humaneval, mbpp): task YAMLs and the evaluate call.

GSM8K is lm-eval's own `gsm8k.yaml`, included unchanged; only the dataset location is
overridden when the data is local. HumanEval and MBPP are copies of lm-eval's task
definitions (eval/lm_tasks/) whose scoring is left to the project's sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sftmerge.data.tasks import local_files
from sftmerge.errors import SftmergeError

LM_TASKS_DIR = Path(__file__).with_name("lm_tasks")

def lm_eval_gsm8k_yaml() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml"


def gsm8k_test_rows(data_dir: Optional[Path]) -> Tuple[List[Dict], str]:
    """GSM8K's test split as lm-eval reads it ({question, answer} rows, file order), and its source."""
    if data_dir is not None:
        path = local_files("gsm8k", data_dir)["test"]
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [{"question": r["question"], "answer": r["answer"]} for r in rows], path
    try:
        from datasets import load_dataset

        data = load_dataset("openai/gsm8k", "main", split="test")
    except Exception as e:
        raise SftmergeError(f"task gsm8k_trained: cannot load openai/gsm8k ({type(e).__name__}); "
                            "give a local copy with --data-dir") from None
    return [{"question": r["question"], "answer": r["answer"]} for r in data], "openai/gsm8k (main, test)"


def task_yaml(task: str, data_dir: Optional[Path], generation: Optional[Dict] = None,
              repeats: int = 1, docs: Optional[Path] = None, prompt_field: Optional[str] = None) -> Dict:
    """The YAML (as a dict) of the project's version of `task`.

    data_dir: local data (the json loader over the files) instead of the Hub.
    generation / repeats: sampling overrides for pass@k (code tasks only).
    docs / prompt_field (gsm8k_trained): a JSONL of test docs whose `prompt_field` is the
    prompt as is, scored zero-shot by the rest of lm-eval's gsm8k.yaml.
    """
    if task == "gsm8k_trained":
        return {"include": str(lm_eval_gsm8k_yaml()), "task": "sftmerge_gsm8k_trained",
                "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(docs)}},
                "training_split": None, "fewshot_split": None, "num_fewshot": 0, "doc_to_text": prompt_field}
    base = {"gsm8k": lm_eval_gsm8k_yaml(), "humaneval": LM_TASKS_DIR / "sftmerge_humaneval.yaml",
            "mbpp": LM_TASKS_DIR / "sftmerge_mbpp.yaml"}[task]
    cfg: Dict = {"include": str(base), "task": f"sftmerge_{task}"}
    if data_dir is not None:
        cfg.update(dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": local_files(task, data_dir)})
        if task == "mbpp":
            # One local file holds every task_id; keep the standard test split (11-510).
            cfg["process_docs"] = "!function sftmerge.eval.lm_eval_tasks.mbpp_test_split"
    if generation is not None:
        cfg["generation_kwargs"] = generation
        cfg["repeats"] = repeats
    return cfg


def mbpp_test_split(dataset):
    """MBPP's standard test split, when the data is one local mbpp.jsonl holding all tasks."""
    from sftmerge.data.pairs import MBPP_SPLITS

    return dataset.filter(lambda doc: int(doc["task_id"]) in MBPP_SPLITS["test"])


def write_task_yaml(folder: Path, cfg: Dict) -> None:
    """YAML with `!function` tags left as tags (yaml.dump would quote them)."""
    import yaml

    lines = []
    for key, value in cfg.items():
        if isinstance(value, str) and value.startswith("!function "):
            lines.append(f"{key}: {value}")
        else:
            lines.append(yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False).rstrip())
    (Path(folder) / f"{cfg['task']}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def evaluate(lm, task_name: str, task_dir: Path, limit: Optional[int], seed: int,
             gen_kwargs: Optional[Dict] = None) -> Tuple[Dict, List[Dict], Dict]:
    """Run one registered task; returns (lm-eval's results, its samples, its task config)."""
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    out = simple_evaluate(
        model=lm, tasks=[task_name], task_manager=manager, limit=limit, log_samples=True,
        gen_kwargs=gen_kwargs or None, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    if out is None or task_name not in out.get("results", {}):
        raise SftmergeError(f"lm-eval returned no results for {task_name}")
    config = json.loads(json.dumps(out["configs"][task_name], default=str))
    return out["results"][task_name], out["samples"][task_name], config
