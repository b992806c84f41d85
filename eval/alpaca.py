"""AlpacaEval: answers to the 805 prompts, AlpacaEval's file formats, and judged win rates.

The answers are written as `alpaca_eval/model_outputs.json` (a list of {instruction,
output, generator, dataset}), ready for the official `alpaca_eval --model_outputs`; with
a judge, its verdicts as `alpaca_eval/annotations.json` (AlpacaEval's annotation format),
scored by alpaca-eval's own win rate and length-controlled win rate (alpaca_winrate.py).
The judge is the user's: a local model (--judge) or an OpenAI-compatible endpoint
(--judge-url, alpaca_endpoint.py); the number is the judge's, not the GPT-4 leaderboard's.
The judge (either kind) compares
each answer with the reference output in both orders (A/B, then B/A) by the
log-probability of the letters "A" and "B"; a prompt scores 1 if the model's answer
wins in both orders, 0.5 if in one, 0 if in none, which cancels a judge's position bias.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

from sftmerge.data.tasks import TASKS, local_files
from sftmerge.errors import SftmergeError
from sftmerge.eval.backends import LoadedModel, chat_prompt, continuation_logprobs, generate, load_model
from sftmerge.eval.stats import summarize
from sftmerge.eval.tasks import EvalSettings, TaskResult, default_max_new_tokens

MAX_NEW_TOKENS = 512
# In a sub-folder: OUT/<model>/*.json are result files only (the model card reads them all).
MODEL_OUTPUTS = "alpaca_eval/model_outputs.json"
ANNOTATIONS = "alpaca_eval/annotations.json"
HUB_REPO = TASKS["alpaca"].hub
HUB_PROMPTS, HUB_REFERENCE = "alpaca_eval.json", "alpaca_eval_gpt4_baseline.json"

JUDGE_TEMPLATE = (
    "Compare two responses to the same instruction and decide which one is more helpful, "
    "accurate and complete.\n\n"
    "### Instruction:\n{instruction}\n\n### Response A:\n{a}\n\n### Response B:\n{b}\n\n"
    "Which response is better? Answer with a single letter, A or B."
)

_judges: Dict[tuple, LoadedModel] = {}  # loaded once per run, shared by every model judged


def load_prompts_and_references(data_dir: Optional[Path]) -> tuple:
    """(prompts [{instruction, dataset}], references [{instruction, output, generator}]), same order."""
    if data_dir is not None:
        files = local_files("alpaca", data_dir)
        with open(files["prompts"], encoding="utf-8") as f:
            prompts = [json.loads(line) for line in f if line.strip()]
        references = json.loads(Path(files["references"]).read_text(encoding="utf-8"))
        source = f"{files['prompts']}; references {files['references']}"
    else:
        prompts = _hub_json(HUB_PROMPTS)
        references = _hub_json(HUB_REFERENCE)
        source = f"hf://datasets/{HUB_REPO}/{HUB_PROMPTS}; references {HUB_REFERENCE}"
    by_instruction = {r["instruction"]: r for r in references}
    missing = [p["instruction"] for p in prompts if p["instruction"] not in by_instruction]
    if missing:
        raise SftmergeError(f"task alpaca: {len(missing)} prompts have no reference output")
    return prompts, [by_instruction[p["instruction"]] for p in prompts], source


def _hub_json(filename: str) -> List[Dict]:
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(HUB_REPO, filename, repo_type="dataset")
    except Exception as e:
        raise SftmergeError(f"task alpaca: cannot download {filename} from {HUB_REPO} ({type(e).__name__}); "
                            "give a local copy with --data-dir") from None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def judge_model(settings: EvalSettings, backend: str) -> LoadedModel:
    key = (settings.judge, backend)
    if key not in _judges:
        _judges[key] = load_model(settings.judge, backend, settings.batch_size, settings.seed, vllm=settings.vllm)
    return _judges[key]


def judge(judge_lm: LoadedModel, instructions: List[str], outputs: List[str], references: List[str]) -> List[Dict]:
    """Per prompt: the model's wins in both orders, and its mean probability of winning."""
    contexts = []
    for ins, out, ref in zip(instructions, outputs, references):
        contexts.append(chat_prompt(judge_lm.tokenizer, JUDGE_TEMPLATE.format(instruction=ins, a=out, b=ref)))
        contexts.append(chat_prompt(judge_lm.tokenizer, JUDGE_TEMPLATE.format(instruction=ins, a=ref, b=out)))
    scored = continuation_logprobs(judge_lm, [(c, letter) for c in contexts for letter in ("A", "B")])
    rows = []
    for i in range(len(instructions)):
        (a1, _), (b1, _), (a2, _), (b2, _) = scored[4 * i: 4 * i + 4]
        # Order 1: the model is A; order 2: the model is B.
        p1 = _softmax2(a1, b1)
        p2 = _softmax2(b2, a2)
        wins = [float(a1 > b1), float(b2 > a2)]
        rows.append({"win_model_first": wins[0], "win_model_second": wins[1], "score": sum(wins) / 2,
                     "p_win": (p1 + p2) / 2})
    return rows


def endpoint_verdicts(settings: EvalSettings, instructions: List[str], outputs: List[str],
                      references: List[str]) -> List[Dict]:
    """The same two-order judgement through an OpenAI-compatible endpoint (--judge-url)."""
    from sftmerge.eval.alpaca_endpoint import p_first

    prompts = []
    for ins, out, ref in zip(instructions, outputs, references):
        prompts.append(JUDGE_TEMPLATE.format(instruction=ins, a=out, b=ref))
        prompts.append(JUDGE_TEMPLATE.format(instruction=ins, a=ref, b=out))
    p = p_first(settings.judge_url, settings.judge_model or "judge", prompts)
    rows = []
    for i in range(len(instructions)):
        p1, p2 = p[2 * i], 1.0 - p[2 * i + 1]  # the model's probability of winning in each order
        wins = [float(p1 > 0.5), float(p2 > 0.5)]
        rows.append({"win_model_first": wins[0], "win_model_second": wins[1], "score": sum(wins) / 2,
                     "p_win": (p1 + p2) / 2})
    return rows


def lc_metric(official: Dict) -> Dict:
    """alpaca-eval's length-controlled win rate (percent) as a 0-1 metric cell; absent below 5 prompts."""
    lc, se = official["length_controlled_winrate"], official.get("lc_standard_error")
    if lc is None:
        return {}
    ci = [max(0.0, (lc - 1.96 * se) / 100), min(1.0, (lc + 1.96 * se) / 100)] if se is not None else None
    return {"lc_win_rate": {"value": lc / 100, "stderr": se / 100 if se is not None else None, "ci95": ci}}


def _softmax2(x: float, y: float) -> float:
    import math

    m = max(x, y)
    return math.exp(x - m) / (math.exp(x - m) + math.exp(y - m))


def _lengths(texts: List[str]) -> Dict:
    chars = [len(t) for t in texts]
    return {"mean_chars": statistics.fmean(chars), "median_chars": statistics.median(chars),
            "mean_words": statistics.fmean(len(t.split()) for t in texts)}


def run(model: LoadedModel, settings: EvalSettings, workdir) -> TaskResult:
    prompts, references, source = load_prompts_and_references(settings.data_dir)
    if settings.limit:
        prompts, references = prompts[: settings.limit], references[: settings.limit]
    max_new = default_max_new_tokens(settings, MAX_NEW_TOKENS)
    texts = [chat_prompt(model.tokenizer, p["instruction"]) for p in prompts]
    t0 = time.time()
    outputs = [o.strip() for o in generate(model, texts, max_new, until=[])]
    gen_seconds = time.time() - t0
    model_outputs = [{"instruction": p["instruction"], "output": o, "generator": model.name,
                      "dataset": p.get("dataset", "")} for p, o in zip(prompts, outputs)]
    samples = [{"id": f"alpaca-{i}", "instruction": p["instruction"], "prompt": t, "output": o,
                "reference_generator": r["generator"], "output_chars": len(o), "reference_chars": len(r["output"])}
               for i, (p, t, o, r) in enumerate(zip(prompts, texts, outputs, references))]
    metrics = {"output_chars": summarize([len(o) for o in outputs], bounds=None)}
    extra = {"lengths": {"model": _lengths(outputs), "reference": _lengths([r["output"] for r in references])},
             "judge": None}
    if settings.judge or settings.judge_url:
        from sftmerge.eval.alpaca_winrate import annotations, win_rates

        t1 = time.time()
        args = ([p["instruction"] for p in prompts], outputs, [r["output"] for r in references])
        if settings.judge_url:
            verdicts = endpoint_verdicts(settings, *args)
            judge_name = f"{settings.judge_model or 'judge'} at {settings.judge_url}"
        else:
            verdicts = judge(judge_model(settings, model.backend), *args)
            judge_name = settings.judge
        for s, v in zip(samples, verdicts):
            s.update(v)
            s["correct"] = v["score"]
        records = annotations(args[0], outputs, references, model.name, [v["p_win"] for v in verdicts], judge_name)
        official = win_rates(records)  # alpaca-eval's own code: win rate and length-controlled win rate
        metrics = {"win_rate": summarize([v["score"] for v in verdicts]), **lc_metric(official),
                   "win_prob": summarize([v["p_win"] for v in verdicts]), **metrics}
        extra["alpaca_eval"] = official
        extra["annotations"] = records  # moved to its own file below
        extra["judge"] = {"model": judge_name, "method": "pairwise, both orders, log-prob of 'A' vs 'B'",
                          "reference_generator": references[0]["generator"] if references else None,
                          "seconds": round(time.time() - t1, 2),
                          "note": "the chosen judge's verdicts; not the AlpacaEval leaderboard's GPT-4 judge"}
    return TaskResult(
        metrics=metrics,
        settings={"limit": settings.limit, "n_prompts": len(prompts), "max_new_tokens": max_new,
                  "decoding": "greedy", "chat_template": True, "data": source,
                  "judge": settings.judge, "judge_url": settings.judge_url, "generation_seconds": round(gen_seconds, 2)},
        samples=samples,
        extra=extra,
        files={MODEL_OUTPUTS: model_outputs, **({ANNOTATIONS: extra.pop("annotations")} if extra["judge"] else {})},
    )
