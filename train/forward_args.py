"""What a model's forward takes: asked of the model itself (a PEFT model's base), because names
changed within transformers 5 and not every model takes every argument."""

from __future__ import annotations

import inspect


def base_of(model):
    """The model a PEFT wrapper holds; any other model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def accepts_positions(model) -> bool:
    """Whether the forward takes `logits_to_keep` (vocabulary logits at chosen positions only)."""
    return "logits_to_keep" in inspect.signature(base_of(model).forward).parameters


def cache_arg(model) -> str:
    """The name the forward gives the KV cache (`past_key_values` became `cache`)."""
    return "cache" if "cache" in inspect.signature(base_of(model).forward).parameters else "past_key_values"
