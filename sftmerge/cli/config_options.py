"""Command-line overrides generated from a run config's fields (train/common_config.py).

Every scalar field of the config class becomes `--field-name` (plus the extra spellings
declared with the field, e.g. `--epochs`, `--out`, `--k`), typed as the field, with the
field's help and default in its help line. An option left out is None and the config
file's value stands, so a command passes only what the user typed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import click

from sftmerge.train.common_config import knobs


def config_options(cls, exclude: Sequence[str] = ()) -> Callable:
    """Decorator: one click option per scalar field of `cls` (except `exclude`), named as the field."""

    def decorate(command: Callable) -> Callable:
        for knob in reversed(knobs(cls, exclude)):
            long = "--" + knob.name.replace("_", "-")
            shown = "none" if knob.default is None else str(knob.default).lower() if knob.type is bool else knob.default
            help_line = f"{knob.help} [config key {knob.name}; default {shown}]"
            if knob.type is bool:
                decls = [f"{long}/--no-{knob.name.replace('_', '-')}", knob.name]
                command = click.option(*decls, default=None, help=help_line)(command)
                continue
            kind = click.Choice(knob.choices) if knob.choices else knob.type
            decls = [long, *knob.flags, knob.name]
            command = click.option(*decls, type=kind, default=None, help=help_line)(command)
        return command

    return decorate


def take_overrides(cls, params: Dict[str, Any], exclude: Sequence[str] = ()) -> Dict[str, Any]:
    """Remove the generated options from a command's keyword arguments: {field: value or None}."""
    return {knob.name: params.pop(knob.name) for knob in knobs(cls, exclude)}
