"""The prompt format a model was fine-tuned with, read from its run's records.

Tasks in their "trained" variant (e.g. `gsm8k_trained`) prompt a model the way it saw its
training prompts, so that a score measures the method and not a format mismatch. The
format is looked up, first match wins:

1. the model folder's `summary.json` (`format`, and `text_template` for a text run);
2. a `config.yaml` in the model folder or beside it (RUN/config.yaml for RUN/order-k/):
   its `format`, "chat" when the key is absent (the trainer's default; every run made
   before the option existed is chat-formatted);
3. a merge (mergekit's recipe `mergekit_config.yml` in the folder): the format of its
   input models, which must agree;
4. a plain model with no record (a base): its chat template when it has one.

Anything else (no record and no chat template, an unknown format, inputs of a merge that
disagree or are gone) is one SftmergeError line, raised before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sftmerge.errors import SftmergeError
from sftmerge.io.layout import CONFIG_NAME, RECIPE_NAME, SUMMARY_NAME

FORMATS = ("chat", "text")
FORMAT_KEY = "format"  # the keys train/records.py writes into summary.json (and config.yaml holds)
TEMPLATE_KEY = "text_template"
RESPONSE = "{response}"


@dataclass(frozen=True)
class PromptFormat:
    kind: str  # "chat" or "text"
    template: Optional[str]  # text runs: the run's text_template, "... {prompt} ... {response}"
    source: str  # where it was read, recorded in the result's settings

    def prompt(self, tokenizer, user_text: str) -> str:
        if self.kind == "text":
            # As training split it (train/trainer_inputs.py): the prompt is the text before
            # {response}, spaces just before it left to the response.
            return self.template[: -len(RESPONSE)].rstrip(" ").format(prompt=user_text)
        from sftmerge.eval.backends import chat_prompt

        return chat_prompt(tokenizer, user_text)

    def record(self) -> dict:
        return {"format": self.kind, "text_template": self.template, "format_source": self.source}


def _from_record(data: dict, source: str, default: Optional[str]) -> Optional[PromptFormat]:
    kind = data.get(FORMAT_KEY, default)
    if kind is None:
        return None
    if kind not in FORMATS:
        raise SftmergeError(f"{source}: unknown training format {kind!r} (known: {', '.join(FORMATS)})")
    template = None
    if kind == "text":
        from sftmerge.train.config import DEFAULT_TEXT_TEMPLATE

        template = data.get(TEMPLATE_KEY) or DEFAULT_TEXT_TEMPLATE  # the trainer's default when not written
        if "{prompt}" not in template or not template.endswith(RESPONSE):
            raise SftmergeError(f"{source}: {TEMPLATE_KEY} {template!r} does not hold {{prompt}} and end with "
                                f"{RESPONSE}")
    return PromptFormat(kind, template, source)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SftmergeError(f"{path}: cannot read ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise SftmergeError(f"{path}: not a mapping")
    return data


def recorded_format(model_dir, _seen: tuple = ()) -> Optional[PromptFormat]:
    """The format in the model's records (steps 1-3 above); None when it has none."""
    model = Path(model_dir).resolve()
    summary = model / SUMMARY_NAME
    if summary.is_file():
        try:
            found = _from_record(json.loads(summary.read_text(encoding="utf-8")), str(summary), None)
        except json.JSONDecodeError:
            raise SftmergeError(f"{summary}: not valid JSON") from None
        if found is not None:
            return found
    for config in (model / CONFIG_NAME, model.parent / CONFIG_NAME):
        if config.is_file():
            return _from_record(_read_yaml(config), str(config), "chat")
    recipe = model / RECIPE_NAME
    if recipe.is_file():
        return _merge_format(model, _read_yaml(recipe), _seen + (model,))
    return None


def _merge_format(model: Path, recipe: dict, seen: tuple) -> PromptFormat:
    inputs = [m["model"] for m in recipe.get("models") or [] if isinstance(m, dict) and isinstance(m.get("model"), str)]
    formats = []
    for ref in inputs:
        path = Path(ref)
        if not path.is_absolute() and not path.is_dir():
            path = model.parent / ref  # a recipe written relative to the merge's folder
        if not path.is_dir() or path.resolve() in seen:
            raise SftmergeError(f"merge {model}: input {ref} not found; its training format cannot be read "
                                "(evaluate the merge where its inputs are, or use the standard task)")
        found = recorded_format(path, seen)
        if found is None:
            raise SftmergeError(f"merge {model}: input {ref} has no recorded training format")
        formats.append(found)
    kinds = {(f.kind, f.template) for f in formats}
    if not formats:
        raise SftmergeError(f"merge {model}: {RECIPE_NAME} names no input models")
    if len(kinds) > 1:
        raise SftmergeError(f"merge {model}: its inputs were trained in different formats "
                            f"({', '.join(sorted(k for k, _ in kinds))}); no single trained format applies")
    first = formats[0]
    return PromptFormat(first.kind, first.template, f"{model / RECIPE_NAME} -> {first.source}")


def trained_format(model_dir, tokenizer=None) -> PromptFormat:
    """The model's training format; a model without records uses its chat template (step 4)."""
    found = recorded_format(model_dir)
    if found is not None:
        return found
    if tokenizer is None:
        from sftmerge.eval.backends import load_tokenizer

        tokenizer = load_tokenizer(str(model_dir))
    if getattr(tokenizer, "chat_template", None):
        return PromptFormat("chat", None, f"{model_dir}: no training record; the tokenizer's chat template")
    raise SftmergeError(f"model {model_dir}: no recorded training format ({SUMMARY_NAME}, {CONFIG_NAME} of its run, "
                        "or a merge recipe) and no chat template; trained-format tasks need one "
                        "(use the standard task, e.g. gsm8k)")
