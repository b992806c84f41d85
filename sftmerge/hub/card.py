"""`sftmerge card`: the model card (README.md) of a merged model folder.

Front matter comes from huggingface_hub's ModelCardData (base_model, tags, license,
model-index), never hand-written YAML, and every card is parsed back with ModelCard
before it replaces the old one, so what is on disk is what the Hub will read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import click

from sftmerge.errors import SftmergeError
from sftmerge.io.layout import RECIPE_NAME, REPORT_NAME
from sftmerge.io.sources import looks_like_hub_id

CARD_NAME = "README.md"
CARD_TAGS = ("merge", "mergekit", "sftmerge")
LIBRARY = "transformers"
# A model inside the Hub's download cache: .../models--ORG--NAME/snapshots/<commit>
_CACHE_SNAPSHOT = re.compile(r"/models--([^/]+)--([^/]+)/snapshots/[^/]+$")


@dataclass
class MergeFolder:
    """What a merge output says about itself: the recipe as merged and the merge report."""

    path: Path
    recipe_text: str
    merge_method: str
    parameters: dict
    base: Optional[str]
    models: List[str]
    report: dict = field(default_factory=dict)


def parse_recipe_text(text: str, where: str):
    """mergekit's MergeConfiguration of a recipe's text; errors name `where`."""
    import yaml

    from mergekit.config import MergeConfiguration

    try:
        return MergeConfiguration.model_validate(yaml.safe_load(text))
    except Exception as e:  # YAML or schema errors, shown as one line
        raise SftmergeError(f"{where} is not a valid mergekit recipe: {(str(e).splitlines() or [e])[0]}") from None


def read_merge_folder(folder: str | Path) -> MergeFolder:
    from sftmerge.merge.driver import recipe_inputs

    folder = Path(folder)
    if not folder.is_dir():
        raise SftmergeError(f"{folder} is not a folder")
    recipe_path = folder / RECIPE_NAME
    if not recipe_path.is_file():
        raise SftmergeError(f"{folder} has no {RECIPE_NAME} (not the output of a merge)")
    text = recipe_path.read_text(encoding="utf-8")
    config = parse_recipe_text(text, str(recipe_path))
    base = str(config.base_model) if config.base_model else None
    models = list(dict.fromkeys(m for m, _, _ in recipe_inputs(config) if m != base))
    report_path = folder / REPORT_NAME
    try:
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    except (UnicodeDecodeError, ValueError):
        raise SftmergeError(f"{report_path} is not valid JSON") from None
    if not isinstance(report, dict):
        raise SftmergeError(f"{report_path} is not a JSON object")
    return MergeFolder(folder, text, config.merge_method, dict(config.parameters or {}), base, models, report)


def hub_id_of(path: str, hub_ids: Dict[str, str]) -> Optional[str]:
    """The Hub id of an input, or None for a local folder of unknown origin."""

    local = Path(path).expanduser()
    for given, repo_id in hub_ids.items():
        if given == path or (local.exists() and Path(given).expanduser().resolve() == local.resolve()):
            return repo_id
    if local.exists():
        found = _CACHE_SNAPSHOT.search(local.resolve().as_posix())
        return f"{found[1]}/{found[2]}" if found else None
    return path if looks_like_hub_id(path) else None


def license_of(path: str) -> Dict[str, str]:
    """license (+ license_name/link for `other`) from the model's own card or config, if any."""
    readme = _local_file(path, CARD_NAME)
    if readme is not None:
        from huggingface_hub import ModelCard

        try:
            data = ModelCard(readme.read_text(encoding="utf-8"), ignore_metadata_errors=True).data
        except (ValueError, OSError):  # a malformed card says nothing about the license
            data = None
        if data is not None and data.get("license"):
            keys = ("license", "license_name", "license_link")
            return {k: str(data.get(k)) for k in keys if data.get(k)}
    config = _local_file(path, "config.json")
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("license") if config else None
    except (OSError, ValueError, AttributeError):  # unreadable: no license known
        value = None
    return {"license": value} if isinstance(value, str) and value else {}


def _local_file(path: str, filename: str) -> Optional[Path]:
    """`filename` of a local model folder, or of a Hub model already in the download cache."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(path, filename)
    except HFValidationError:
        return None
    return Path(cached) if isinstance(cached, str) else None


def _license(merge: MergeFolder) -> Dict[str, str]:
    # The base's license binds the merge; without a base, only a license all inputs share.
    if merge.base:
        return license_of(merge.base)
    found = [license_of(m) for m in merge.models]
    return found[0] if found and all(f == found[0] for f in found) else {}


def _pipeline_tag(folder: Path) -> Optional[str]:
    try:
        archs = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return None
    return "text-generation" if any(a.endswith("ForCausalLM") for a in archs) else None


def build_card(folder: str | Path, name: Optional[str] = None, results_dir: Optional[str | Path] = None,
               hub_ids: Optional[Dict[str, str]] = None):
    """The card of a merge output folder as a huggingface_hub ModelCard (not yet written)."""
    from huggingface_hub import ModelCard, ModelCardData

    from sftmerge.hub.card_results import eval_results, read_results

    merge = read_merge_folder(folder)
    name = name or merge.path.name
    inputs = ([merge.base] if merge.base else []) + merge.models
    hub_ids = hub_ids or {}
    ids = [hub_id_of(p, hub_ids) for p in inputs]
    on_hub = list(dict.fromkeys(h for h in ids if h))
    rows = read_results(results_dir, merge.path.name) if results_dir is not None else []
    data = ModelCardData(
        base_model=on_hub or None,
        tags=[*CARD_TAGS, merge.merge_method],
        library_name=LIBRARY,
        pipeline_tag=_pipeline_tag(merge.path),
        **_license(merge),
        model_name=name if rows else None,
        eval_results=eval_results(rows) or None,
    )
    body = _body(merge, name, rows, local_only=None in ids)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    check_card(card, data, merge.recipe_text)
    return card


def _body(merge: MergeFolder, name: str, rows, local_only: bool) -> str:
    from sftmerge.hub.card_results import results_table
    from sftmerge.hub.card_text import MERGEKIT_URL, base_share_line, inputs_table, method_section, yaml_block

    base_text = f" on the base `{merge.base}`" if merge.base else ""
    parts = [
        f"# {name}",
        f"A merge of {len(merge.models)} fine-tuned models{base_text} with `{merge.merge_method}`,"
        f" made with `sftmerge` on top of [mergekit]({MERGEKIT_URL}).",
        "## Method",
        method_section(merge.merge_method, merge.parameters),
        "## Inputs",
        inputs_table(merge.base, merge.models, merge.report),
    ]
    share = base_share_line(merge.report)
    if share:
        parts.append(share)
    if local_only:
        parts.append("Inputs that were local folders, not models on the Hub, are listed here but not in `base_model`.")
    parts += [
        "## Recipe",
        f"The recipe exactly as merged (`{RECIPE_NAME}` in this repository):",
        yaml_block(merge.recipe_text),
    ]
    seed = _seed_line(merge)
    if seed:
        parts.append(seed)
    parts.append(
        "To rerun it: `sftmerge recipe pull <this repo id>`, then"
        f" `sftmerge merge recipes/<name>.yml OUT{_seed_option(merge)}`"
        " (the inputs must be reachable at the paths the recipe names)."
    )
    if rows:
        parts += [
            "## Evaluation",
            results_table(rows),
            "Value: the metric over n examples; stderr: its standard error; 95% CI: its confidence interval.",
        ]
    return "\n\n".join(parts) + "\n"


def _seed_line(merge: MergeFolder) -> Optional[str]:
    if merge.merge_method == "param_select":
        if "seed" in merge.parameters:
            return f"Seed: {merge.parameters['seed']}; the same recipe and inputs give the same weights, bit for bit."
        return "The recipe sets no seed, so the method's default seed 0 was used."
    seed = merge.report.get("random_seed")
    if seed is None:  # merged before sftmerge recorded mergekit's seed
        return None
    return (f"Random seed: {seed} (mergekit's global seed, `--random-seed`, recorded in `{REPORT_NAME}`);"
            " the same recipe, inputs and seed give the same weights, bit for bit, with `sftmerge merge`"
            f" or `mergekit-yaml {RECIPE_NAME} OUT --random-seed {seed}`.")


def _seed_option(merge: MergeFolder) -> str:
    """The --random-seed a rerun needs: none where the recipe's own seed is the seed."""
    seed = merge.report.get("random_seed")
    return f" --random-seed {seed}" if seed is not None and "seed" not in merge.parameters else ""


def check_card(card, data, recipe_text: str) -> None:
    """Parse the rendered card back and compare it with what was meant; a mismatch is a bug here."""
    from huggingface_hub import ModelCard

    parsed = ModelCard(str(card)).data
    for key in ("base_model", "tags", "library_name", "license", "pipeline_tag"):
        if parsed.get(key) != data.get(key):
            raise SftmergeError(f"model card check failed: {key} reads back as {parsed.get(key)!r}")
    wanted = [(r.dataset_type, r.metric_type, r.metric_value) for r in data.eval_results or []]
    got = [(r.dataset_type, r.metric_type, r.metric_value) for r in parsed.eval_results or []]
    if got != wanted:
        raise SftmergeError("model card check failed: model-index does not read back as the results")
    if recipe_text.rstrip("\n") not in card.text:
        raise SftmergeError("model card check failed: the recipe block differs from the recipe")


def write_card(folder: str | Path, name: Optional[str] = None, results_dir: Optional[str | Path] = None,
               hub_ids: Optional[Dict[str, str]] = None) -> Path:
    """Build, check and atomically (re)write FOLDER/README.md; returns its path."""
    from sftmerge.io.fsutil import write_text

    card = build_card(folder, name=name, results_dir=results_dir, hub_ids=hub_ids)
    path = Path(folder) / CARD_NAME
    write_text(path, str(card))
    return path


def merge_with_card(recipe, out: str | Path, options, overwrite: bool = False) -> dict:
    """Run a recipe (`merge.driver.run_recipe`) and write this project's card into the output
    before it is declared complete (unless mergekit's `--no-write-model-card` was given)."""
    from sftmerge.merge.driver import run_recipe

    finish = (lambda tmp: write_card(tmp, name=Path(out).name)) if options.write_model_card else None
    return run_recipe(recipe, out, options, overwrite=overwrite, finish=finish)


def parse_hub_ids(pairs: Sequence[str]) -> Dict[str, str]:
    from huggingface_hub.utils import validate_repo_id
    from huggingface_hub.errors import HFValidationError

    out = {}
    for pair in pairs:
        path, sep, repo_id = pair.partition("=")
        if not sep or not path or not repo_id:
            raise SftmergeError(f"--hub-id takes PATH=REPO_ID; got {pair!r}")
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise SftmergeError(f"--hub-id {pair}: {e}") from None
        out[path] = repo_id
    return out


@click.command("card")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--results", type=click.Path(file_okay=False), default=None,
              help="Evaluation RESULTS folder; adds RESULTS/<folder name of OUT>/<task>.json to the card.")
@click.option("--name", default=None, help="Title and model-index name (default: the folder name of OUT).")
@click.option("--hub-id", "hub_ids", multiple=True, metavar="PATH=REPO_ID",
              help="Hub id of an input the recipe names by local path, so base_model can list it. Repeatable.")
def card_command(out: str, results: Optional[str], name: Optional[str], hub_ids: Sequence[str]) -> None:
    """(Re)write OUT/README.md, the model card of a merged model folder.

    Without --results the card has no evaluation section, even if the old card had one.
    """
    from huggingface_hub import ModelCard

    path = write_card(out, name=name, results_dir=results, hub_ids=parse_hub_ids(hub_ids))
    data = ModelCard.load(path).data
    n = len(data.eval_results or [])
    click.echo(f"wrote {path} (base_model: {', '.join(data.base_model or []) or 'none on the Hub'}; {n} results)")
