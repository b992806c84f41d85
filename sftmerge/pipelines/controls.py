"""The demo's controls beside the merges: output ensemble, merge-seed spread, compute-matched single.

- Output ensemble (`ensemble`, eval/ensemble.py): the K sub-models decoding together, each
  next token the argmax of their mean log-probabilities; what a merge tries to get in one model.
- Merge-seed spread: `select` and `resample` merged again with the next recipe seeds
  (`select-seed43`, ... by `sftmerge.merge.recipes.seeded_name`), so a method's effect can be
  told from its random draw's; merged in this process by `sftmerge merge`'s driver (the
  demo's other merges go through the stock mergekit-yaml, one interpreter each).
- Compute-matched single (`compute-matched`): one data order trained for K x the epochs, the
  optimizer steps of the K orders together, in its own run folder RUN/compute-matched/
  (config.yaml, order-0/) and scored under that name.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Optional

from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_json
from sftmerge.io.layout import RECIPE_NAME, REPORT_NAME, RunLayout, is_model_folder
from sftmerge.merge.recipes import SEEDED_METHODS, seeded_name, spread_seeds

COMPUTE_MATCHED = "compute-matched"
MERGEKIT_RANDOM_SEED = 42  # mergekit's global seed for the stock mergekit-yaml (sftmerge.merge.stock)


def evaluated(result: Path, ev) -> bool:
    """A result file exists and was made with the requested problem count and generation length."""
    if not result.is_file():
        return False
    done = json.loads(result.read_text()).get("settings", {})
    # lm-eval's tasks (gsm8k) record the generation length as lm-eval spells it
    length = done.get("max_new_tokens", (done.get("generation_kwargs") or {}).get("max_gen_toks"))
    return ((ev.limit is None or done.get("limit") == ev.limit)
            and (ev.max_new_tokens is None or length == ev.max_new_tokens))


# ------------------------------------------------------------------ merge-seed spread

def seed_variants(merges, n_seeds: int) -> dict:
    """{seeded method of `merges`: [its merges with the 2nd, 3rd, ... seed]}."""
    seeds = spread_seeds(n_seeds)[1:]
    return {m: [seeded_name(m, s) for s in seeds] for m in merges if m in SEEDED_METHODS}


def seed_merges(merges, n_seeds: int) -> List[str]:
    return [v for variants in seed_variants(merges, n_seeds).values() for v in variants]


def merge_in_process(recipe: Path, target: Path) -> bool:
    """`recipe` merged into `target` by `sftmerge merge`'s driver: mergekit's own run_merge in this
    process (the same weights as the stock mergekit-yaml, without a new interpreter importing torch
    and mergekit for each merge), with merge_report.json recording the seed. False if already there."""
    from mergekit.options import MergeOptions

    from sftmerge.hub.card import merge_with_card
    from sftmerge.merge.driver import load_recipe

    if is_model_folder(target):
        return False
    merge_with_card(load_recipe(recipe), target, MergeOptions(copy_tokenizer=True))
    return True


def record_stock_merge(run: RunLayout, name: str) -> None:
    """RUN/merged/<name>/merge_report.json for a merge made by the stock mergekit-yaml (which
    writes none): the recipe, its inputs, param_select's recipe seed and mergekit's global seed."""
    import yaml

    folder = run.merged(name)
    if (folder / REPORT_NAME).is_file():
        return
    recipe = yaml.safe_load((folder / RECIPE_NAME).read_text(encoding="utf-8")) or {}
    params = recipe.get("parameters") or {}
    models = [m["model"] for m in recipe.get("models") or []]
    report = {"recipe": str(run.recipe(name)), "merged_by": "mergekit-yaml (stock)",
              "merge_method": recipe.get("merge_method"), "base_model": recipe.get("base_model"),
              "models": models, "random_seed": MERGEKIT_RANDOM_SEED}
    if recipe.get("merge_method") == "param_select":
        report.update(seed=params.get("seed", 0), resample=bool(params.get("resample", False)),
                      weights={m["model"]: (m.get("parameters") or {}).get("weight", 1.0)
                               for m in recipe.get("models") or []})
    write_json(folder / REPORT_NAME, report)


def merge_seed(run: RunLayout, name: str) -> Optional[int]:
    """param_select's recipe seed of a finished merge, as recorded in its merge_report.json."""
    path = run.merged(name) / REPORT_NAME
    return json.loads(path.read_text(encoding="utf-8")).get("seed") if path.is_file() else None


# ------------------------------------------------------------------ compute-matched single

def compute_matched_config(config):
    """The run's settings with one order trained for K x the epochs, in RUN/compute-matched/
    (training length is epochs only: `max_steps` is not a setting runs may pass)."""
    return replace(config, orders=1, num_train_epochs=config.num_train_epochs * config.orders,
                   output_dir=str(Path(config.output_dir) / COMPUTE_MATCHED), keep_checkpoint_steps=None,
                   sample_losses_at_checkpoints=False)


def compute_matched_model(run: RunLayout) -> Path:
    return RunLayout(run.root / COMPUTE_MATCHED).order(0)


def compute_matched_done(config) -> bool:
    return RunLayout(compute_matched_config(config).output_dir).order_summary(0).is_file()


def train_compute_matched(config, echo: Callable[[str], None]) -> bool:
    """Train the compute-matched single unless it is finished; True if it trained."""
    from sftmerge.train.sft import run_multi_order

    if compute_matched_done(config):
        return False
    cm = compute_matched_config(config)
    echo(f"{COMPUTE_MATCHED}: one order, {cm.num_train_epochs} epochs (K = {config.orders} x "
         f"{config.num_train_epochs}) -> {cm.output_dir}")
    run_multi_order(cm, echo=echo)
    return True


# ------------------------------------------------------------------ evaluation of the controls

def ensemble_call(run: RunLayout, task: str, settings, config) -> list:
    """[(name, evaluation)] of the output ensemble when asked for and not done, for evaluate_models
    to run beside the single models (eval/cpu_pool.py `Call`); else []."""
    from sftmerge.eval.cpu_pool import Call
    from sftmerge.eval.ensemble import ENSEMBLE, supports

    ev = settings.eval_settings()
    if not (settings.ensemble and supports(task)) or evaluated(run.eval_result(ENSEMBLE, task), ev):
        return []
    members = [str(run.order(k)) for k in range(config.orders)]
    return [(ENSEMBLE, Call("sftmerge.eval.ensemble:evaluate_ensemble", (members, [task], ev, run.eval_root),
                            dict(name=ENSEMBLE, summary=False), models=len(members)))]


def eval_controls(run: RunLayout, task: str, settings, config, backend: str,
                  echo: Callable[[str], None]) -> List[str]:
    """Score the ensemble and the compute-matched single where asked for and not done; their names."""
    from sftmerge.eval.ensemble import run_tasks

    ev = settings.eval_settings()
    done, failures = [], []
    for name, call in ensemble_call(run, task, settings, config):  # when the models' pool did not run it
        failures += call(echo=echo)
        done.append(name)
    if settings.compute_matched and not evaluated(run.eval_result(COMPUTE_MATCHED, task), ev):
        from sftmerge.eval.backends import load_model

        model = load_model(str(compute_matched_model(run)), backend, ev.batch_size, ev.seed, vllm=ev.vllm)
        failures += run_tasks(replace(model, name=COMPUTE_MATCHED), [task], ev, run.eval_root, echo)
        done.append(COMPUTE_MATCHED)
    if failures:
        raise SftmergeError(f"evaluation failed: {'; '.join(failures)}")
    return done
