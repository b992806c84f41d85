"""`sftmerge merge`: validate a mergekit recipe strictly, run it, report the selection.

mergekit accepts unknown keys and parameters silently; a misspelt `resmaple: true`
would quietly merge without resampling. Here every key is checked against mergekit's
configuration schema and the method's declared parameters before any tensor is read,
and the merge is written to a temporary folder that is renamed only when complete.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

from sftmerge.io import checkpoint
from sftmerge.errors import SftmergeError
from sftmerge.io.layout import RECIPE_NAME, REPORT_NAME, SUMMARY_NAME
from sftmerge.io.sources import looks_like_hub_id


@dataclass
class Recipe:
    path: Path
    source: str
    raw: Dict[str, Any]
    config: Any  # mergekit.config.MergeConfiguration (mergekit's planner rewrites it)
    base: Optional[str] = None
    # (model, its parameters, where in the recipe) per non-base input, read before merging
    inputs: List[Tuple[str, Optional[dict], str]] = field(default_factory=list)
    parameters: Dict[str, Any] = field(default_factory=dict)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Parse and validate a recipe; raises SftmergeError with one line on any problem."""
    from pydantic import ValidationError

    from mergekit.config import MergeConfiguration

    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SftmergeError(f"cannot read recipe {path}: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SftmergeError(f"recipe {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise SftmergeError(f"recipe {path} must be a YAML mapping with merge_method and models")
    _check_keys(raw, MergeConfiguration, "recipe")
    try:
        config = MergeConfiguration.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "recipe"
        raise SftmergeError(f"recipe {path}: {loc}: {err['msg']}") from None
    except (RuntimeError, ValueError) as e:
        raise SftmergeError(f"recipe {path}: {e}") from None
    base = str(config.base_model) if config.base_model else None
    recipe = Recipe(
        path=path,
        source=source,
        raw=raw,
        config=config,
        base=base,
        inputs=[i for i in recipe_inputs(config) if i[0] != base],
        parameters=dict(config.parameters or {}),
    )
    validate_recipe(recipe)
    return recipe


def _check_keys(raw: dict, model_cls, where: str) -> None:
    unknown = sorted(set(raw) - set(model_cls.model_fields))
    if unknown:
        known = ", ".join(sorted(model_cls.model_fields))
        raise SftmergeError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {known})")


def _method(name: str):
    from mergekit import merge_methods

    from sftmerge.plugins.registration import register_all

    register_all()
    try:
        return merge_methods.get(name)
    except RuntimeError:
        known = ", ".join(sorted(m.spec.name for m in merge_methods.registered_methods()))
        raise SftmergeError(f"unknown merge method {name!r} (known: {known})") from None


def recipe_inputs(config) -> List[Tuple[str, Optional[dict], str]]:
    """(model path, its parameters, where) for every non-base input of the recipe."""
    out = []
    for i, m in enumerate(config.models or []):
        out.append((str(m.model), m.parameters, f"models[{i}]"))
    for i, s in enumerate(config.slices or []):
        for j, src in enumerate(s.sources):
            out.append((str(src.model), src.parameters, f"slices[{i}].sources[{j}]"))
    for name, mod in (config.modules or {}).items():
        for i, m in enumerate(mod.models or []):
            out.append((str(m.model), m.parameters, f"modules.{name}.models[{i}]"))
    return out


def _parameter_blocks(config) -> List[Tuple[Optional[dict], str]]:
    blocks = [(config.parameters, "parameters")]
    blocks += [(p, f"{where}.parameters") for _, p, where in recipe_inputs(config)]
    for i, s in enumerate(config.slices or []):
        blocks.append((s.parameters, f"slices[{i}].parameters"))
    return blocks


def validate_recipe(recipe: Recipe) -> None:
    config = recipe.config
    method = _method(config.merge_method)
    names = {p.name for p in method.spec.parameters}
    for block, where in _parameter_blocks(config):
        for key in block or {}:
            if key not in names:
                hint = _closest(key, names)
                raise SftmergeError(
                    f"{where}: unknown parameter {key!r} for {config.merge_method}"
                    + (f" (did you mean {hint!r}?)" if hint else f" (known: {', '.join(sorted(names)) or 'none'})")
                )
    base, inputs = recipe.base, recipe.inputs
    if config.merge_method == "param_select":
        _validate_param_select(config, inputs, base)
    paths = [base] if base else []
    paths += [m for m, _, _ in inputs]
    for p in paths:
        _check_model_exists(p)
    _check_compatible(paths)
    check_same_start([m for m, _, _ in inputs])


def check_same_start(models: List[str]) -> None:
    """Deltas of different bases do not add up: sftmerge runs (SFT orders, DPO) record a hash of
    their starting weights in summary.json, and those must agree."""
    seen = {}
    for m in models:
        summary = Path(m) / SUMMARY_NAME
        if summary.is_file():
            fp = _read_summary(summary).get("initial_weights_fingerprint")
            if fp:
                seen[m] = fp
    if len(set(seen.values())) > 1:
        said = ", ".join(f"{m} from {fp[:12]}" for m, fp in seen.items())
        raise SftmergeError(f"the models were trained from different base weights ({said}); "
                            "their deltas cannot be merged over one base")


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SftmergeError(f"{path} is not valid JSON (a damaged training summary)") from None
    if not isinstance(summary, dict):
        raise SftmergeError(f"{path} is not a JSON object (a damaged training summary)")
    fp = summary.get("initial_weights_fingerprint")
    if fp is not None and not isinstance(fp, str):
        raise SftmergeError(f"{path}: initial_weights_fingerprint must be a string; got {fp!r}")
    return summary


def _closest(key: str, names) -> Optional[str]:
    import difflib

    hits = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return hits[0] if hits else None


def _scalar(setting) -> Optional[float]:
    if isinstance(setting, bool) or not isinstance(setting, (int, float)):
        return None
    return float(setting)


def _validate_param_select(config, inputs, base) -> None:
    if len(inputs) < 2:
        raise SftmergeError(f"param_select needs at least 2 non-base models; got {len(inputs)}")
    resample = (config.parameters or {}).get("resample", False)
    if resample not in (True, False):
        raise SftmergeError(f"parameters.resample must be true or false; got {resample!r}")
    if resample and base is None:
        raise SftmergeError("param_select with resample: true needs a base_model (to know which values are unchanged)")
    seed = (config.parameters or {}).get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SftmergeError(f"parameters.seed must be an integer; got {seed!r}")
    weights = []
    for model, params, where in inputs:
        setting = (params or {}).get("weight", (config.parameters or {}).get("weight", 1.0))
        value = _scalar(setting)
        if value is None:
            # Per-tensor filters or gradients: checked per tensor by the method itself.
            weights.append(None)
            continue
        if value < 0:
            raise SftmergeError(f"{where}: weight must be >= 0; got {value:g} for {model}")
        weights.append(value)
    if weights and all(w == 0 for w in weights):
        raise SftmergeError("param_select weights are all 0: at least one model needs a positive weight")


def _check_model_exists(path: str) -> None:
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise SftmergeError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
        checkpoint.read_config(p)
        return
    if p.exists():
        raise SftmergeError(f"model path {path} is a file, not a model folder")
    if not looks_like_hub_id(path) or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SftmergeError(f"model not found: {path} (no such folder)")


def _local_layout(path: str) -> Optional[Tuple[str, Dict[str, Tuple[int, ...]]]]:
    """(architecture, {tensor: shape}) from config.json and safetensors headers; None if not local."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or not list(folder.glob("*.safetensors")):
        return None
    return checkpoint.architecture(folder), checkpoint.shapes(folder)


def _check_compatible(paths: List[str]) -> None:
    layouts = [(p, _local_layout(p)) for p in paths]
    layouts = [(p, lay) for p, lay in layouts if lay is not None and lay[1]]
    if len(layouts) < 2:
        return
    ref_path, (ref_arch, ref_shapes) = layouts[0]
    for path, (arch, shapes) in layouts[1:]:
        if arch != ref_arch:
            raise SftmergeError(f"architecture mismatch: {path} is {arch}, {ref_path} is {ref_arch}")
        for name, shape in shapes.items():
            other = ref_shapes.get(name)
            if other is not None and other != shape:
                raise SftmergeError(
                    f"tensor shape mismatch for {name}: {path} has {list(shape)}, {ref_path} has {list(other)}"
                )
        missing = sorted(set(ref_shapes) - set(shapes))
        if missing:
            raise SftmergeError(f"{path} lacks tensor {missing[0]} that {ref_path} has ({len(missing)} missing)")


def input_paths(recipe: Recipe) -> List[str]:
    """Every path the merge reads: the recipe file, the base, the models and their LoRAs."""
    paths = [str(recipe.path)]
    for ref in recipe.config.referenced_models():
        paths.append(ref.model.path)
        if ref.lora is not None:
            paths.append(ref.lora.path)
    return paths


def run_recipe(recipe: Recipe, out: str | os.PathLike, options, overwrite: bool = False,
               finish: Optional[Callable[[Path], None]] = None) -> dict:
    """Merge into a temporary folder, write merge_report.json, then rename to `out`.

    `finish(tmp)` writes further files (the model card) before the folder is declared complete.
    `out` must lie outside every input, and replaces only an earlier sftmerge output.
    """
    from mergekit.merge import run_merge

    from sftmerge.io.fsutil import atomic_output_dir, write_json, write_text
    from sftmerge.merge.seed import caller_random_state_kept, random_seed
    from sftmerge.plugins.stats import SELECTION_STATS

    seed = random_seed(recipe.parameters, options.random_seed)
    SELECTION_STATS.clear()
    start = time.perf_counter()
    # Older merges have no marker; their report and recipe show sftmerge wrote them.
    with atomic_output_dir(out, overwrite=overwrite, inputs=input_paths(recipe),
                           legacy_marks=(REPORT_NAME, RECIPE_NAME)) as tmp:
        # mergekit's own card is replaced by sftmerge's, and its Hub look-ups of local
        # paths fail offline: write the recipe (exactly as given) and the card here.
        # run_merge seeds torch, numpy and random with random_seed before any tensor task.
        merge_options = options.model_copy(update={"write_model_card": False, "random_seed": seed})
        try:
            with caller_random_state_kept():
                run_merge(recipe.config, str(tmp), options=merge_options, config_source=recipe.source)
        except SftmergeError:
            raise
        except Exception as e:  # mergekit's own failures, shown as one line
            raise SftmergeError(f"merge failed: {type(e).__name__}: {e}") from e
        report = build_report(recipe, time.perf_counter() - start, seed)
        write_json(tmp / REPORT_NAME, report)
        write_text(tmp / RECIPE_NAME, recipe.source)
        if finish is not None:
            finish(tmp)
    return report


def build_report(recipe: Recipe, seconds: float, seed: int) -> dict:
    from sftmerge.plugins.stats import SELECTION_STATS

    params = recipe.parameters
    models = [m for m, _, _ in recipe.inputs]
    report = {
        "recipe": str(recipe.path),
        "merge_method": recipe.config.merge_method,
        "base_model": recipe.base,
        "models": models,
        "random_seed": seed,
        "seconds": round(seconds, 2),
    }
    if recipe.config.merge_method == "param_select":
        report.update(
            {
                "seed": params.get("seed", 0),
                "resample": bool(params.get("resample", False)),
                "weights": {m: (p or {}).get("weight", params.get("weight", 1.0)) for m, p, _ in recipe.inputs},
                **SELECTION_STATS.summary(models),
            }
        )
    return report
