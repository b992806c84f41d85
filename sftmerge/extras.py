"""Optional dependencies: which extra of the package installs which module, and the error when one is missing.

The core install is the merge method and `sftmerge merge`; training, evaluation and
vLLM are extras (pyproject.toml, [project.optional-dependencies]).
"""

from __future__ import annotations

import importlib.util
from typing import List, Optional, Sequence

from sftmerge.errors import SftmergeError

# Top-level modules that only an extra installs (everything else the package imports
# comes with the core install, mergekit's own dependencies included). In this order
# the extras are named.
EXTRA_OF_MODULE = {
    "trl": "train",
    "gguf": "train",
    "lm_eval": "eval",
    "matplotlib": "eval",
    "vllm": "vllm",
}


class MissingExtra(SftmergeError):
    """Modules of extras that are not installed; the message says what to install."""

    def __init__(self, modules: Sequence[str], what: str = "this command"):
        self.modules = list(modules)
        self.extras = list(dict.fromkeys(EXTRA_OF_MODULE[m] for m in self.modules))
        named = ", ".join(f"'{e}'" for e in self.extras)
        super().__init__(f"{what} needs {', '.join(self.modules)}, from the extra{'s' if len(self.extras) > 1 else ''} "
                         f"{named}: pip install 'sftmerge[{','.join(self.extras)}]' "
                         "(or 'sftmerge[all]' for every command)")


def extra_for(module_name: Optional[str]) -> Optional[str]:
    """The extra that installs `module_name` (a dotted name is looked up by its top level), or None."""
    if not module_name:
        return None
    return EXTRA_OF_MODULE.get(module_name.partition(".")[0])


def missing_extra(error: ModuleNotFoundError, what: str = "this command") -> Optional[MissingExtra]:
    """The MissingExtra that an import failure means, or None when the module belongs to no extra."""
    return MissingExtra([error.name.partition(".")[0]], what) if extra_for(error.name) else None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package missing, or an import hook hiding the module
        return False


def lacking(modules: Sequence[str]) -> List[str]:
    """Those of `modules` (keys of EXTRA_OF_MODULE) that cannot be imported; none is imported."""
    return [m for m in modules if not _installed(m)]


def require(*modules: str, what: str = "this command") -> None:
    """Raise MissingExtra unless every one of `modules` can be imported."""
    if missing := lacking(modules):
        raise MissingExtra(missing, what)
